"""Do users with a few records end worse off after ``personalize()``? The default rule
against the two before it, in one run.

Users drawn like the proxy have nothing to learn: any update kept for them is chance.
Users whose target is scaled by their own factor in [1 − h, 1 + h] have something to
learn. ``make_friedman1`` (10 inputs, noise 1): the foundation is trained on 300 proxy
records (500 epochs); each of 60 users a seed holds ``n`` training records and 100 test
records, and ``personalized_many`` decides every user's update with

* **now**: the defaults, the regression's rule at 90 % and, below 30 records to score,
  the prior grid's strongest prior, or a weaker one better at 99 % on 3 or 4 records and
  at 97.5 % from 5 (``Task.few_records``, ``FEW_RECORDS_CONFIDENCE``);
* **99 %**: the same with a weaker prior better at 99 % at any size from 3 records, the
  first fix of the harm below;
* **before**: the rule at 50 % (``DecisionRule(confidence=0.5)``) and any prior of the
  grid at any size (``few_records`` 0), the defaults until 4 December.

The seeds reported by default, 2 and 3, are not the ones the 97.5 % was chosen on (0
and 1). Reports mean per-user test RMSE of the foundation and of what users hold, the
change, and the share of users worse off. Writes ``benchmarks/results/
personalization_few_records.json`` and ``.md``.

    python benchmarks/personalization_few_records.py [--seeds 2 3] [--records 2 3 5 7 10 20 50]
    python benchmarks/personalization_few_records.py --datasets boston friedman star98

The second form runs the three rules on model_quality's simulated users of other
regression data sets (10 seeds), into ``personalization_few_records_datasets``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import make_friedman1

import dmt_model.personalize as personalize_module
from dmt_model.coreml import UpdateSettings, build_spec, predict_frame
from dmt_model.foundation import TrainingConfig, train_foundation
from dmt_model.personalize import DecisionRule, personalized_many
from dmt_model.tasks import Regression
from dmt_privacy.schema import Field, Schema

RESULTS = Path(__file__).resolve().parent / "results"
N_USERS, N_TEST, N_PROXY = 60, 100, 300
SCHEMA = Schema(name="friedman1", fields=tuple(
    [Field(f"x{i}", "numeric", bounds=(-1.0, 2.0)) for i in range(10)]
    + [Field("y", "numeric", bounds=(-30.0, 60.0), role="target")]))


def users_of(n: int, spread: float, seed: int) -> tuple[pd.DataFrame, list[pd.DataFrame]]:
    """The proxy, and each user's ``n`` training then 100 test records."""
    X, y = make_friedman1(N_PROXY + N_USERS * (n + N_TEST), 10, noise=1.0, random_state=seed)
    frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(10)]).assign(y=y)
    factors = np.random.default_rng(seed).uniform(1 - spread, 1 + spread, N_USERS)
    users = []
    for u in range(N_USERS):
        block = frame.iloc[N_PROXY + u * (n + N_TEST):][:n + N_TEST].copy()
        block["y"] *= factors[u]
        users.append(block)
    return frame.iloc[:N_PROXY], users


def rmse(model, records: pd.DataFrame, target: str = "y") -> float:
    return float(np.sqrt(np.mean((predict_frame(model, records) - records[target]) ** 2)))


#: The rules compared, in the table's order (the module's docstring).
RULES = ("before", "99 %", "now")


def under_rule(name: str, spec, record_sets: list[pd.DataFrame]) -> list:
    """``personalized_many`` under one of :data:`RULES`: *now*; *99 %* (the first fix: the
    strongest prior, a weaker one only at 99 %); *before* (until 4 December: any prior, an
    update kept at 50 %)."""
    default, levels = Regression.few_records, personalize_module.FEW_RECORDS_CONFIDENCE
    rule, few, confidence = {"now": (None, default, levels),
                             "99 %": (None, default, ((3, 0.99),)),
                             "before": (DecisionRule(confidence=0.5), 0, levels)}[name]
    Regression.few_records, personalize_module.FEW_RECORDS_CONFIDENCE = few, confidence
    try:
        return personalized_many(spec, record_sets, rule=rule)
    finally:
        Regression.few_records, personalize_module.FEW_RECORDS_CONFIDENCE = default, levels


def one(n: int, spread: float, seed: int) -> dict[str, dict[str, float]]:
    proxy, users = users_of(n, spread, seed)
    foundation = build_spec(train_foundation(proxy, SCHEMA, TrainingConfig(epochs=500, seed=0)),
                            updatable=UpdateSettings())
    before = np.array([rmse(foundation, u.iloc[n:]) for u in users])
    out = {}
    for name in ("now", "99 %", "before"):
        held = under_rule(name, foundation, [u.iloc[:n] for u in users])
        after = np.array([rmse(model, u.iloc[n:])
                          for (model, _), u in zip(held, users, strict=True)])
        out[name] = {"foundation": float(before.mean()), "personal": float(after.mean()),
                     "change": float(after.mean() / before.mean() - 1),
                     "worse_off": float(np.mean(after > before * (1 + 1e-9))),
                     "kept": float(np.mean([r.accepted for _, r in held]))}
    return out


def on_simulated_users(names: list[str], seeds: int, output: Path) -> None:
    """The rules (:data:`RULES`) on model_quality's simulated users (20 users a seed,
    h = 0, 0.15, 0.3; v1 trained on 80 % of the proxy), mean per-user test RMSE: whether
    the rule chosen on ``make_friedman1`` helps users of the other regression data sets,
    and what it costs users who differ against the rule before 4 December.
    Writes ``personalization_few_records_datasets.json`` and ``.md``."""
    from dmt_model.datasets import REGRESSION_DATASETS, simulate_users
    from dmt_model.server.retrain import validation_split

    started = time.perf_counter()
    rows = []
    for name in names:
        dataset = REGRESSION_DATASETS[name]
        data = dataset.load()
        for spread in (0.0, 0.15, 0.3):
            per_seed: dict[str, list[float]] = {"v1": [], **{rule: [] for rule in RULES}}
            for seed in range(seeds):
                sim = simulate_users(data, n_users=20, spread=spread, seed=seed,
                                     location=dataset.location, target=dataset.target)
                proxy, _ = validation_split(sim.proxy, seed=seed)
                v1 = build_spec(train_foundation(proxy, dataset.schema,
                                                 TrainingConfig(seed=seed)),
                                updatable=UpdateSettings())

                records = [pd.concat([u.shareable, u.private]) for u in sim.users]
                target = dataset.target
                per_seed["v1"].append(float(np.mean([rmse(v1, u.test, target)
                                                     for u in sim.users])))
                for rule in RULES:
                    held = under_rule(rule, v1, records)
                    per_seed[rule].append(float(np.mean(
                        [rmse(model, u.test, target)
                         for (model, _), u in zip(held, sim.users, strict=True)])))
            v1_mean = float(np.mean(per_seed["v1"]))
            row = {"dataset": name, "h": spread, "seeds": seeds, "per_seed": per_seed,
                   **{rule: float(np.mean(per_seed[rule])) / v1_mean - 1 for rule in RULES}}
            rows.append(row)
            print(f"{name} h={spread}: " + ", ".join(f"{rule} {row[rule]:+.1%}"
                                                     for rule in RULES), flush=True)
    output.mkdir(parents=True, exist_ok=True)
    (output / "personalization_few_records_datasets.json").write_text(json.dumps(
        {"rows": rows, "seconds": time.perf_counter() - started}, indent=1))
    lines = ["| data set | h | before: change from v1 | 99 %: change from v1 | "
             "now: change from v1 | seeds where now is worse than 99 % / than before |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        worse = [sum(a > b + 1e-12 for a, b in zip(row["per_seed"]["now"],
                                                   row["per_seed"][rule], strict=True))
                 for rule in ("99 %", "before")]
        lines.append(f"| {row['dataset']} | {row['h']:g} | {row['before']:+.1%} | "
                     f"{row['99 %']:+.1%} | {row['now']:+.1%} | {worse[0]} / {worse[1]} "
                     f"of {row['seeds']} |")
    (output / "personalization_few_records_datasets.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--records", type=int, nargs="+", default=[2, 3, 5, 7, 10, 20, 50])
    parser.add_argument("--spreads", type=float, nargs="+", default=[0.0, 0.3])
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--datasets", nargs="+", metavar="NAME",
                        help="instead: 99 %% against now on model_quality's simulated users "
                             "of these data sets (boston, friedman), 10 seeds")
    args = parser.parse_args()
    if args.datasets:
        on_simulated_users(args.datasets, 10, args.output)
        return
    started = time.perf_counter()
    rows = []
    for spread in args.spreads:
        for n in args.records:
            runs = [one(n, spread, seed) for seed in args.seeds]
            row = {"h": spread, "records": n, "seeds": args.seeds}
            for name in RULES:
                row[name] = {key: float(np.mean([r[name][key] for r in runs]))
                             for key in runs[0][name]}
                row[name]["change_per_seed"] = [r[name]["change"] for r in runs]
            rows.append(row)
            print(f"h={spread} n={n}: foundation {row['now']['foundation']:.3f}; " + "; ".join(
                f"{name} {row[name]['personal']:.3f} ({row[name]['change']:+.1%})"
                for name in RULES), flush=True)
    result = {"rows": rows, "users_per_seed": N_USERS, "test_records": N_TEST,
              "seconds": time.perf_counter() - started}
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "personalization_few_records.json").write_text(json.dumps(result, indent=1))
    lines = ["| h | records a user | foundation | "
             + " | ".join(f"{name}: personal (change; worse off)" for name in RULES)
             + " | change per seed, 99 % → now |",
             "|---" * (4 + len(RULES)) + "|"]
    for row in rows:
        seeds = ", ".join(f"{x:+.1%} → {y:+.1%}" for x, y in
                          zip(row["99 %"]["change_per_seed"], row["now"]["change_per_seed"],
                              strict=True))
        lines.append(f"| {row['h']:g} | {row['records']} | {row['now']['foundation']:.3f} | "
                     + " | ".join(f"{row[name]['personal']:.3f} ({row[name]['change']:+.1%}; "
                                  f"{row[name]['worse_off']:.0%})" for name in RULES)
                     + f" | {seeds} |")
    (args.output / "personalization_few_records.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {args.output / 'personalization_few_records.json'} "
          f"({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
