"""How a regression's foundation trains by default, on four data sets.

Until 7 December a regression's foundation trained the reference app's 500 fixed epochs,
tuned on Boston. On data the SDK had never seen (helper-124: statsmodels' randhie, doctor
visits a year) its test RMSE was worse than predicting the proxy's mean. Since then
``TrainingConfig.for_schema`` stops a regression early on 10 % of its records, as it does
a classifier (``REGRESSION_TRAINING``), given ``EARLY_STOPPING_MIN_HELD_OUT`` (20) records
to hold out: with a dozen, stopping came by chance (helper-128).

Arms, in the same run, on the same splits: *reference* (``TrainingConfig(seed=s)``, the
500 fixed epochs), *stopped early* (10 %, patience 20, whatever the size), *default*
(``TrainingConfig.for_schema(schema, seed=s, records=n)``: one of the two), and two peers:
predicting the training records' mean, and scikit-learn's linear regression on the same
columns. Test RMSE on the records not trained on; training sizes a data set:

* Boston, star98, Friedman #2: *large*, an 80/20 split (Boston: 405 rows, the
  reference's protocol); *small*, 24 % of the rows; *loop*, the proxy ``run_loop`` trains
  v1 on (``simulate_users``' proxy less the server's validation part: 24 % of the rows),
  tested on every simulated user's test records pooled (each user's target scaled by its
  factor, h = 0.15; the demo prints the mean of per-user RMSEs);
* randhie (20,190 person-years; families, runs of the family-level plan fields, never
  split): whole families up to about 3,000 rows (*large*) and 800 (*small*), tested on
  every other family.

    python benchmarks/foundation_training.py [--seeds 5] [--datasets boston star98 ...]

Writes ``benchmarks/results/foundation_training.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dmt_model.datasets import REGRESSION_DATASETS
from dmt_model.foundation import REGRESSION_TRAINING, TrainingConfig, train_foundation
from dmt_privacy import Field, Schema

RESULTS = Path(__file__).resolve().parent / "results"
DATASETS = ("boston", "star98", "friedman", "randhie")
RANDHIE_PLAN = ("lncoins", "idp", "lpi", "fmde")  # constant within a family
RANDHIE_ROWS = {"large": 3000, "small": 800}  # rows of whole families in training
LOOP_USERS = {"boston": 20, "star98": 10, "friedman": 20}  # as model_quality's
ARMS = ("reference", "stopped early", "default")


def _randhie() -> tuple[pd.DataFrame, Schema]:
    from statsmodels.datasets import randhie

    data = randhie.load_pandas().data
    families = (data[list(RANDHIE_PLAN)] != data[list(RANDHIE_PLAN)].shift()).any(axis=1)
    data["family"] = families.cumsum()
    bounds = {"mdvis": (0.0, 365.0), "lncoins": (0.0, 4.62), "idp": (0.0, 1.0),
              "lpi": (0.0, 8.0), "fmde": (0.0, 9.0), "physlm": (0.0, 1.0),
              "disea": (0.0, 100.0), "hlthg": (0.0, 1.0), "hlthf": (0.0, 1.0),
              "hlthp": (0.0, 1.0)}
    schema = Schema(tuple(Field(name, "numeric", role="target" if name == "mdvis" else
                                "insensitive", bounds=bound)
                          for name, bound in bounds.items()), name="randhie")
    return data, schema


def _splits(name: str, data: pd.DataFrame, size: str,
            seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    if size == "loop":
        from dmt_model.datasets import simulate_users
        from dmt_model.server.retrain import validation_split

        dataset = REGRESSION_DATASETS[name]
        sim = simulate_users(data, n_users=LOOP_USERS[name], seed=seed,
                             location=dataset.location, target=dataset.target)
        return (validation_split(sim.proxy, seed=seed)[0],
                pd.concat([user.test for user in sim.users]))
    rng = np.random.default_rng(seed)
    if name == "randhie":
        families = data["family"].unique().copy()
        rng.shuffle(families)
        rows = data.groupby("family").size()
        taken = np.cumsum(rows[families].to_numpy())
        chosen = families[:int(np.searchsorted(taken, RANDHIE_ROWS[size])) + 1]
        inside = data["family"].isin(chosen)
        return data[inside].drop(columns="family"), data[~inside].drop(columns="family")
    order = rng.permutation(len(data))
    k = round((0.8 if size == "large" else 0.24) * len(data))
    return data.iloc[order[:k]], data.iloc[order[k:]]


def _rmse(predicted: Any, actual: Any) -> float:
    return float(np.sqrt(np.mean((np.asarray(predicted, float) - np.asarray(actual, float)) ** 2)))


def run(name: str, seeds: int) -> list[dict[str, Any]]:
    from sklearn.linear_model import LinearRegression

    if name == "randhie":
        data, schema = _randhie()
    else:
        data, schema = REGRESSION_DATASETS[name].load(), REGRESSION_DATASETS[name].schema
    target = schema.target.name if schema.target is not None else ""
    rows = []
    for size in ("large", "small") + (("loop",) if name in LOOP_USERS else ()):
        for seed in range(seeds):
            train, test = _splits(name, data, size, seed)
            inputs = [f.name for f in schema if f.name != target]
            row: dict[str, Any] = {
                "dataset": name, "size": size, "seed": seed, "train_rows": len(train),
                "test_rows": len(test),
                "mean": _rmse(np.full(len(test), train[target].mean()), test[target]),
                "linear": _rmse(LinearRegression().fit(train[inputs], train[target])
                                .predict(test[inputs]), test[target])}
            default = TrainingConfig.for_schema(schema, seed=seed, records=len(train))
            row["default_stops_early"] = default.early_stopping is not None
            for arm, config in (("reference", TrainingConfig(seed=seed)),
                                ("stopped early", replace(REGRESSION_TRAINING, seed=seed)),
                                ("default", default)):
                started = time.perf_counter()
                foundation = train_foundation(train, schema, config)
                row[f"{arm}_seconds"] = time.perf_counter() - started
                row[arm] = _rmse(foundation.predict(test), test[target])
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for (name, size), group in pd.DataFrame(rows).groupby(["dataset", "size"], sort=False):
        entry: dict[str, Any] = {"dataset": name, "size": size, "seeds": len(group),
                                 "train_rows": float(group.train_rows.mean())}
        for arm in (*ARMS, "mean", "linear"):
            entry[arm] = {"mean": float(group[arm].mean()),
                          "std": float(group[arm].std()) if len(group) > 1 else 0.0}
        for arm in ARMS:
            entry[f"{arm}_seconds"] = float(group[f"{arm}_seconds"].mean())
        entry["default_stops_early"] = int(group.default_stops_early.sum())
        entry["default_better"] = int((group.default < group.reference).sum())
        out.append(entry)
    return out


def markdown(summary: list[dict[str, Any]]) -> str:
    lines = ["**A regression's foundation, test RMSE** (mean ± std over seeds; *reference*: "
             "500 fixed epochs; *stopped early*: on 10 %, patience 20; *default*: stopped "
             "early given 20 records to hold out, else the reference)", "",
             "| data set | training rows | reference | stopped early | default (stops early "
             "in) | seeds default better | predicting the mean | linear regression | seconds, "
             "reference / stopped early |",
             "|---|---|---|---|---|---|---|---|---|"]

    def cell(row: dict[str, Any], arm: str) -> str:
        return f"{row[arm]['mean']:.3f} ± {row[arm]['std']:.3f}"

    for row in summary:
        lines.append(
            f"| {row['dataset']} | {row['train_rows']:.0f} ({row['size']}) | "
            f"{cell(row, 'reference')} | {cell(row, 'stopped early')} | "
            f"**{cell(row, 'default')}** ({row['default_stops_early']} of {row['seeds']}) | "
            f"{row['default_better']} of {row['seeds']} | {cell(row, 'mean')} | "
            f"{cell(row, 'linear')} | {row['reference_seconds']:.1f} / "
            f"{row['stopped early_seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--output", type=Path, default=RESULTS,
                        help="folder for the results (default benchmarks/results)")
    args = parser.parse_args()
    from run_environment import environment  # a sibling, on the path above

    warnings.simplefilter("ignore", category=UserWarning)  # FlatFieldWarning and the like
    import torch

    torch.set_num_threads(1)
    started = time.perf_counter()
    rows = [row for name in args.datasets for row in run(name, args.seeds)]
    summary = summarize(rows)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "foundation_training.json").write_text(json.dumps(
        {"environment": environment(), "seeds": args.seeds, "summary": summary, "rows": rows,
         "seconds": time.perf_counter() - started}, indent=1) + "\n")
    text = markdown(summary)
    (args.output / "foundation_training.md").write_text(text)
    print(text)
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
