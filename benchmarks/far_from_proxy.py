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

A classifier's users (``--tasks classification``) are the same draws labelled "yes" where
x + 0.3 z + N(0, 1) passes the middle of their own records (6.5 for the proxy, d − 1 for a
user): a user far past the proxy splits their records where the foundation, extrapolating,
calls every one "yes" with logits 60 and more apart. There a bias moves at most 0.01 a
step, and 100 epochs fell short: since 7 December an update that leaves more than half the
gap between the class counts it trained on and the model's is tried again ten, then a
hundred, times faster (``dmt_model.personalize._STALLED``). Mean test log loss and
accuracy, with the same two arms.

    python benchmarks/far_from_proxy.py [--seeds 3] [--distances 5 20 40 60 90]
        [--records 5 20] [--tasks regression classification]

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
from dmt_model.personalize import featurizer_of, personalize
from dmt_privacy import Field, Schema

RESULTS = Path(__file__).resolve().parent / "results"
SCHEMA = Schema((Field("x", "numeric", bounds=(0, 100)), Field("z", "numeric", bounds=(0, 10)),
                 Field("y", "numeric", role="target", bounds=(-1000, 1000))))
CLASSIFIER_SCHEMA = Schema((*SCHEMA.fields[:2],
                            Field("y", "categorical", role="target", categories=("no", "yes"))))
USERS, PROXY, TEST = 30, 300, 200
ARMS = {"retried": {}, "as given": {"learning_rate": 0.01}}


def _records(rng: np.random.Generator, low: float, high: float, n: int) -> pd.DataFrame:
    frame = pd.DataFrame({"x": rng.uniform(low, high, n), "z": rng.uniform(0, 10, n)})
    frame["y"] = frame.x + 0.3 * frame.z + rng.normal(0, 1, n)
    return frame


def _rmse(model: Path, frame: pd.DataFrame) -> float:
    predicted = predict_frame(load_spec(model), frame.drop(columns="y"))
    return float(np.sqrt(np.mean((predicted - frame["y"].to_numpy()) ** 2)))


def _labelled(frame: pd.DataFrame, middle: float) -> pd.DataFrame:
    """``frame`` (:func:`_records`) as a classifier's records: "yes" where its target passes
    ``middle``."""
    return frame.assign(y=np.where(frame.y > middle, "yes", "no"))


def _log_loss_accuracy(model: Path, frame: pd.DataFrame) -> tuple[float, float]:
    """A classifier's mean test log loss and accuracy on ``frame`` (its task's metrics)."""
    spec = load_spec(model)
    featurizer = featurizer_of(spec)
    metrics = featurizer.task.metrics(predict_frame(spec, frame.drop(columns="y")),
                                      featurizer.target_values(frame))
    return metrics.log_loss, metrics.accuracy


def run_seed(seed: int, distances: list[float], records: list[int], *,
             classifier: bool = False) -> list[dict[str, Any]]:
    """One seed's rows: each user's foundation and personal test error, each arm and record
    count (a classifier's: log loss, with accuracy beside it)."""
    rng = np.random.default_rng(seed)
    proxy = _records(rng, 0, 10, PROXY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        foundation = (train_foundation(_labelled(proxy, 6.5), CLASSIFIER_SCHEMA) if classifier
                      else train_foundation(proxy, SCHEMA))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        shipped = export_coreml(foundation, Path(tmp) / "shipped.mlmodel",
                                updatable=UpdateSettings())
        for d in distances:
            for user in range(USERS):
                data = _records(rng, d - 5, d, max(records) + TEST)
                if classifier:
                    data = _labelled(data, d - 1)
                test = data.iloc[max(records):]
                base = _log_loss_accuracy(shipped, test) if classifier else (_rmse(shipped, test),)
                for n in records:
                    for arm, overrides in ARMS.items():
                        model = Path(tmp) / f"{arm}.mlmodel"
                        model.write_bytes(shipped.read_bytes())
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            result = personalize(model, data.iloc[:n], seed=seed, **overrides)
                        after = (_log_loss_accuracy(model, test) if classifier
                                 else (_rmse(model, test),))
                        row = {"seed": seed, "distance": d, "user": user, "records": n,
                               "arm": arm, "kept": result.accepted,
                               "learning_rate": result.learning_rate,
                               "foundation": base[0], "personal": after[0]}
                        if classifier:
                            row |= {"foundation_accuracy": base[1], "personal_accuracy": after[1]}
                        rows.append(row)
    return rows


def summarize(rows: list[dict[str, Any]], *, classifier: bool = False) -> list[dict[str, Any]]:
    """Each distance, record count and arm: mean foundation and personal test error (RMSE,
    or a classifier's log loss and accuracy), the share kept, retried at another rate, and
    left worse, and the worst user's change."""
    error = "log_loss" if classifier else "rmse"
    frame = pd.DataFrame(rows)
    frame["change"] = frame.personal / frame.foundation - 1
    out = []
    for (d, n, arm), group in frame.groupby(["distance", "records", "arm"], sort=True):
        row = {"distance": float(d), "records": int(n), "arm": arm,
               f"foundation_{error}": float(group.foundation.mean()),
               f"personal_{error}": float(group.personal.mean()),
               "mean_change": float(group.change.mean()),
               "kept": float(group.kept.mean()),
               "retried": float(group.learning_rate.notna().mean()),
               "worse": float((group.change > 1e-9).mean()),
               "worst_change": float(group.change.max())}
        if classifier:
            row |= {"foundation_accuracy": float(group.foundation_accuracy.mean()),
                    "personal_accuracy": float(group.personal_accuracy.mean())}
        out.append(row)
    return out


def markdown(summary: list[dict[str, Any]], seeds: int, *, classifier: bool = False) -> str:
    if classifier:
        lines = [f"**A classifier's users past the proxy** ({seeds} seeds × {USERS} users a "
                 "distance; labels split at the middle of each one's own records; mean test "
                 "log loss and accuracy, foundation → personal)", "",
                 "| d | records | arm | log loss | accuracy | kept | retried at another rate "
                 "| worse | worst |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for row in summary:
            lines.append(
                f"| {row['distance']:g} | {row['records']} | {row['arm']} | "
                f"{row['foundation_log_loss']:.3f} → {row['personal_log_loss']:.3f} | "
                f"{row['foundation_accuracy']:.3f} → {row['personal_accuracy']:.3f} | "
                f"{row['kept']:.0%} | {row['retried']:.0%} | {row['worse']:.0%} | "
                f"{row['worst_change']:+.1%} |")
        return "\n".join(lines) + "\n"
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


#: Each task's keys in the results file; a task not run keeps the figures already there.
_KEYS = {"regression": ("summary", "rows"),
         "classification": ("classifier_summary", "classifier_rows")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--distances", type=float, nargs="+", default=[5, 20, 40, 60, 90])
    parser.add_argument("--records", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--tasks", nargs="+", choices=list(_KEYS), default=list(_KEYS))
    parser.add_argument("--output", type=Path, default=RESULTS,
                        help="folder for the results (default benchmarks/results)")
    args = parser.parse_args()
    from run_environment import environment  # a sibling, on the path above

    started = time.perf_counter()
    path = args.output / "far_from_proxy.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for task in args.tasks:
        began = time.perf_counter()
        classifier = task == "classification"
        rows = [row for seed in range(args.seeds)
                for row in run_seed(seed, args.distances, args.records, classifier=classifier)]
        summary_key, rows_key = _KEYS[task]
        results |= {summary_key: summarize(rows, classifier=classifier), rows_key: rows,
                    f"{task}_seconds": time.perf_counter() - began}
    done = [task for task, (summary_key, _) in _KEYS.items() if summary_key in results]
    results |= {"environment": environment(), "seeds": args.seeds, "users": USERS,
                "distances": args.distances, "records": args.records, "tasks": done,
                "seconds": sum(results.get(f"{task}_seconds", 0.0) for task in done)}
    args.output.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")
    text = "\n".join(markdown(results[summary_key], args.seeds,
                               classifier=task == "classification")
                      for task, (summary_key, _) in _KEYS.items() if summary_key in results)
    (args.output / "far_from_proxy.md").write_text(text)
    print(text)
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
