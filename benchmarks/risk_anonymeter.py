"""Privacy risk of released records, measured with anonymeter (run in ``.venv-risk``).

anonymeter pins numpy below 1.27, which the SDK's environment does not allow,
so this script runs in its own environment (``make risk-env``) and imports
nothing from dmt. ``benchmarks/privacy_utility.py``'s ``anonymeter_risks``
writes the files and calls it:

    .venv-risk/bin/python benchmarks/risk_anonymeter.py FOLDER CASE...

FOLDER holds ``target.csv`` (the raw records the attacker wants to learn
about: what devices shared, before anonymization), ``control.csv`` (records
from the same population that were never released, anonymeter's baseline),
``received CASE.csv`` for each case, all with the same columns, and
``attack.json``, which says how to attack them::

    {"secret": "MEDV",                  # the column the inference attack guesses
     "categorical": ["CHAS", "RAD"],    # read as labels; a categorical secret is
                                        # guessed as a class (regression=False)
     "link_columns": [["CRIM", ...], ["AGE", ...]],  # the two halves linkability joins
     "n_attacks": 500,                  # cap on the attacks per evaluator, or null
     "seed": 0}                         # singling-out queries and inference targets

Prints a JSON object mapping each case to the number of records released and
its singling-out (univariate), linkability and inference (secret: the
``secret`` column) risk, each ``{"risk": r, "ci": [low, high]}``, plus
``n_attacks``, the attacks each evaluator was asked for.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
from anonymeter.evaluators import (
    InferenceEvaluator,
    LinkabilityEvaluator,
    SinglingOutEvaluator,
)

METRICS = ("singling_out", "linkability", "inference")


_GROUP_BY = pl.DataFrame.group_by


def _group_by_in_order(self: pl.DataFrame, *by: object, maintain_order: bool = True,
                       **named_by: object) -> object:
    """polars' ``group_by``, its groups in the order they first appear unless told
    otherwise. anonymeter's univariate singling-out lists each column's rare values with
    ``group_by(col).len()``, whose order polars draws anew in each process, before its
    seeded shuffle: the same files and seed gave other queries, and singling-out risks that
    moved by about ±0.03, in every run (Boston, ``privacy_utility.py --risk``)."""
    return _GROUP_BY(self, *by, maintain_order=maintain_order, **named_by)


pl.DataFrame.group_by = _group_by_in_order  # type: ignore[method-assign]


def read(path: Path, categorical: list[str]) -> pd.DataFrame:
    """Categorical columns as labels ("0", "1|2"), missing cells left missing."""
    return pd.read_csv(path, dtype=dict.fromkeys(categorical, str))


def as_result(risk) -> dict:
    return {"risk": float(risk.value), "ci": [float(risk.ci[0]), float(risk.ci[1])]}


def attacks_for(target: pd.DataFrame, control: pd.DataFrame, cap: int | None) -> int:
    attacks = min(len(target), len(control)) - 1
    return attacks if cap is None else min(attacks, cap)


def main(folder: Path, cases: list[str]) -> dict:
    attack = json.loads((folder / "attack.json").read_text())
    secret, categorical = attack["secret"], list(attack["categorical"])
    link_columns = tuple(list(group) for group in attack["link_columns"])
    target = read(folder / "target.csv", categorical)
    control = read(folder / "control.csv", categorical)
    attacks = attacks_for(target, control, attack.get("n_attacks"))
    aux = [c for c in target.columns if c != secret]
    out = {}
    for case in cases:
        received = read(folder / f"received {case}.csv", categorical)
        received = received.dropna()  # suppressed or quarantined cells are not released
        if len(received) < 2:
            out[case] = {"released": len(received), "n_attacks": 0, **{
                m: {"risk": 0.0, "ci": [0.0, 0.0]} for m in METRICS}}
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            singling = SinglingOutEvaluator(ori=target, syn=received, control=control,
                                            n_attacks=attacks, max_attempts=20 * attacks,
                                            seed=attack["seed"])
            singling.evaluate(mode="univariate")
            # linkability and inference sample their targets with pandas, from numpy's global
            # state: seeded here, each case draws the same targets whatever the order of cases
            np.random.seed(attack["seed"])  # noqa: NPY002
            linking = LinkabilityEvaluator(ori=target, syn=received, control=control,
                                           n_attacks=attacks, aux_cols=link_columns,
                                           n_neighbors=5)
            linking.evaluate(n_jobs=1)
            inference = InferenceEvaluator(ori=target, syn=received, control=control,
                                           aux_cols=aux, secret=secret,
                                           regression=secret not in categorical,
                                           n_attacks=attacks)
            inference.evaluate(n_jobs=1)
        out[case] = {"released": len(received), "n_attacks": attacks,
                     "singling_out": as_result(singling.risk()),
                     "linkability": as_result(linking.risk()),
                     "inference": as_result(inference.risk())}
    return out


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), sys.argv[2:])))
