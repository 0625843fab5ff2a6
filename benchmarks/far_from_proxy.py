"""Users whose records lie far past the proxy: does the default update reach them?

The personal head's SGD step grows with the square of its input, so a device whose records
lie far past what the proxy showed can diverge at the model's own learning rate (0.01)
and keep nothing: the users who need personalization most (helper-124, statsmodels'
randhie). Since 7 December ``personalize`` tries such an update again at a tenth of the
rate, then a hundredth.

Protocol: y = x + 0.3 z + N(0, 1); a foundation on 300 proxy records with x uniform on
[0, 10] (bounds 0-100) and z on [0, 10]; 30 users a seed whose x lies uniform on
[d - 5, d] for each distance d (d = 5: drawn like the proxy), with ``--records`` training
and 200 test records each. Arms, in the same run, on the same users:

* *retried* (the default): ``personalize(model, records)``;
* *as given* (as before 7 December): ``personalize(model, records, learning_rate=0.01)``,
  the model's own rate passed, which is used as given.

    python benchmarks/far_from_proxy.py [--seeds 3] [--distances 5 20 40 60 90]
        [--records 5 20]

Writes ``benchmarks/results/far_from_proxy.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dmt_model.coreml import UpdateSettings, export_coreml
from dmt_model.coreml._spec import load_spec
from dmt_model.coreml.evaluate import predict_frame
from dmt_model.foundation import train_foundation
from dmt_model.personalize import personalize
from dmt_privacy import Field, Schema

RESULTS = Path(__file__).resolve().parent / "results"
SCHEMA = Schema((Field("x", "numeric", bounds=(0, 100)), Field("z", "numeric", bounds=(0, 10)),
                 Field("y", "numeric", role="target", bounds=(-1000, 1000))))
USERS, PROXY, TEST = 30, 300, 200
ARMS = {"retried": {}, "as given": {"learning_rate": 0.01}}


def _records(rng: np.random.Generator, low: float, high: float, n: int) -> pd.DataFrame:
    frame = pd.DataFrame({"x": rng.uniform(low, high, n), "z": rng.uniform(0, 10, n)})
    frame["y"] = frame.x + 0.3 * frame.z + rng.normal(0, 1, n)
    return frame


def _rmse(model: Path, frame: pd.DataFrame) -> float:
    predicted = predict_frame(load_spec(model), frame.drop(columns="y"))
    return float(np.sqrt(np.mean((predicted - frame["y"].to_numpy()) ** 2)))


def run_seed(seed: int, distances: list[float], records: list[int]) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        foundation = train_foundation(_records(rng, 0, 10, PROXY), SCHEMA)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        shipped = export_coreml(foundation, Path(tmp) / "shipped.mlmodel",
                                updatable=UpdateSettings())
        for d in distances:
            for user in range(USERS):
                data = _records(rng, d - 5, d, max(records) + TEST)
                test = data.iloc[max(records):]
                base = _rmse(shipped, test)
                for n in records:
                    for arm, overrides in ARMS.items():
                        model = Path(tmp) / f"{arm}.mlmodel"
                        model.write_bytes(shipped.read_bytes())
                        result = personalize(model, data.iloc[:n], seed=seed, **overrides)
                        rows.append({"seed": seed, "distance": d, "user": user, "records": n,
                                     "arm": arm, "kept": result.accepted,
                                     "learning_rate": result.learning_rate,
                                     "foundation": base, "personal": _rmse(model, test)})
    return rows


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    frame = pd.DataFrame(rows)
    frame["change"] = frame.personal / frame.foundation - 1
    out = []
    for (d, n, arm), group in frame.groupby(["distance", "records", "arm"], sort=True):
        out.append({"distance": float(d), "records": int(n), "arm": arm,
                    "foundation_rmse": float(group.foundation.mean()),
                    "personal_rmse": float(group.personal.mean()),
                    "mean_change": float(group.change.mean()),
                    "kept": float(group.kept.mean()),
                    "retried": float(group.learning_rate.notna().mean()),
                    "worse": float((group.change > 1e-9).mean()),
                    "worst_change": float(group.change.max())})
    return out


def markdown(summary: list[dict[str, Any]], seeds: int) -> str:
    lines = [f"**Users past the proxy** ({seeds} seeds × {USERS} users a distance; proxy x on "
             "[0, 10], users' x on [d − 5, d]; mean test RMSE, foundation → personal)", "",
             "| d | records | arm | foundation → personal | mean change | kept | retried at "
             "a lower rate | worse | worst |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in summary:
        lines.append(
            f"| {row['distance']:g} | {row['records']} | {row['arm']} | "
            f"{row['foundation_rmse']:.2f} → {row['personal_rmse']:.2f} | "
            f"{row['mean_change']:+.1%} | {row['kept']:.0%} | {row['retried']:.0%} | "
            f"{row['worse']:.0%} | {row['worst_change']:+.1%} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--distances", type=float, nargs="+", default=[5, 20, 40, 60, 90])
    parser.add_argument("--records", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--output", type=Path, default=RESULTS,
                        help="folder for the results (default benchmarks/results)")
    args = parser.parse_args()
    from run_environment import environment  # a sibling, on the path above

    started = time.perf_counter()
    rows = [row for seed in range(args.seeds)
            for row in run_seed(seed, args.distances, args.records)]
    summary = summarize(rows)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "far_from_proxy.json").write_text(json.dumps(
        {"environment": environment(), "seeds": args.seeds, "users": USERS,
         "distances": args.distances, "records": args.records, "summary": summary,
         "rows": rows, "seconds": time.perf_counter() - started}, indent=1) + "\n")
    text = markdown(summary, args.seeds)
    (args.output / "far_from_proxy.md").write_text(text)
    print(text)
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
