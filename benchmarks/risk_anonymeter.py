"""Privacy risk of released records, measured with anonymeter (run in ``.venv-risk``).

anonymeter pins numpy below 1.27, which the SDK's environment does not allow,
so this script runs in its own environment (``make risk-env``) and imports
nothing from dmt. ``benchmarks/privacy_utility.py --risk`` writes the CSV files
and calls it:

    .venv-risk/bin/python benchmarks/risk_anonymeter.py FOLDER CASE...

FOLDER holds ``target.csv`` (the raw records the attacker wants to learn
about: what devices shared, before anonymization), ``control.csv`` (records
from the same population that were never released, anonymeter's baseline)
and ``received CASE.csv`` for each case. Prints a JSON object mapping each
case to its singling-out (univariate), linkability and inference (secret:
the target column) risk, each ``{"risk": r, "ci": [low, high]}``.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pandas as pd
from anonymeter.evaluators import (
    InferenceEvaluator,
    LinkabilityEvaluator,
    SinglingOutEvaluator,
)

SECRET = "MEDV"
CATEGORICAL = ("CHAS", "RAD")
LINK_COLUMNS = (["CRIM", "ZN", "INDUS", "NOX", "RM", "PTRATIO"],
                ["AGE", "DIS", "TAX", "B", "LSTAT"])


def prepare(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    for column in CATEGORICAL:
        out[column] = out[column].astype(str)
    return out


def as_result(risk) -> dict:
    return {"risk": float(risk.value), "ci": [float(risk.ci[0]), float(risk.ci[1])]}


def main(folder: Path, cases: list[str]) -> dict:
    target = prepare(pd.read_csv(folder / "target.csv"))
    control = prepare(pd.read_csv(folder / "control.csv"))
    attacks = min(len(target), len(control)) - 1
    out = {}
    for case in cases:
        received = prepare(pd.read_csv(folder / f"received {case}.csv"))
        received = received.dropna()  # suppressed or quarantined cells are not released
        if len(received) < 2:
            out[case] = {"released": len(received), **{
                m: {"risk": 0.0, "ci": [0.0, 0.0]}
                for m in ("singling_out", "linkability", "inference")}}
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            singling = SinglingOutEvaluator(ori=target, syn=received, control=control,
                                            n_attacks=attacks, max_attempts=20 * attacks)
            singling.evaluate(mode="univariate")
            linking = LinkabilityEvaluator(ori=target, syn=received, control=control,
                                           n_attacks=attacks, aux_cols=LINK_COLUMNS,
                                           n_neighbors=5)
            linking.evaluate(n_jobs=1)
            aux = [c for c in target.columns if c != SECRET]
            inference = InferenceEvaluator(ori=target, syn=received, control=control,
                                           aux_cols=aux, secret=SECRET, regression=True,
                                           n_attacks=attacks)
            inference.evaluate(n_jobs=1)
        out[case] = {"released": len(received),
                     "singling_out": as_result(singling.risk()),
                     "linkability": as_result(linking.risk()),
                     "inference": as_result(inference.risk())}
    return out


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), sys.argv[2:])))
