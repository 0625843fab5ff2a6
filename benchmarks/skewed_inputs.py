"""A skewed input with generous bounds, and devices far beyond what the proxy showed.

helper-112's data (5 December): a log-normal income (median 50,000, log-spread 0.8) with
sharing bounds (0, 10⁷), an age on [20, 70], and a target of 3 log(income / 50,000) +
0.05 (age − 45) + N(0, 1). The income spreads by 0.62 % of its bounds' width. A foundation
is trained on 400 proxy records; 30 users a seed hold incomes like the proxy's (median
5e4), 4× richer (2e5) or 20× richer (1e6), with 5 or 40 training records and 200 test
records each, and personalize with the default rule.

Arms, each set through the featurizer's own constants before the foundation is fitted:

* *ignored*: the income is flat, as until 7 December (``FLAT_EVIDENCE = 0``: no narrow
  field is learned);
* *unheld*: learned, no input held (``INPUT_REACH = inf``, a format 1 featurizer);
* *reach r*: learned, every input held within r spreads of the proxy's mean, or the
  power of 2 that covers the proxy's own farthest value (``INPUT_REACH = r``; 10 is the
  default).

A second table retrains: the proxy holds x on [0, 1] of bounds 0-100 (so x is held), 600
shared records x on [1, hi], the target 3x + sin 3x. It reports v1's and v2's test RMSE
where the devices are and on the proxy's own region, held at the default reach and
unheld, since retraining keeps the featurizer and so learns a shared value beyond the
reach as if at it.

    python benchmarks/skewed_inputs.py [--seeds 3] [--reaches 5 10 20] [--workers 2]

Writes ``benchmarks/results/skewed_inputs.json``, ``.md`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from run_environment import environment  # a sibling, on the path above

from dmt_model.features import FLAT_EVIDENCE  # the default, before any arm sets its own

RESULTS = Path(__file__).resolve().parent / "results"
PROXY, USERS, TEST = 400, 30, 200
MEDIANS = (5e4, 2e5, 1e6)
RECORDS = (5, 40)
RETRAIN_HIGHS = (2.0, 5.0)


def _arm_constants(arm: str) -> tuple[float, float]:
    """(FLAT_EVIDENCE, INPUT_REACH) of an arm: the library's own, as imported, but for what
    the arm changes."""
    if arm == "ignored":
        return 0.0, math.inf
    if arm == "unheld":
        return FLAT_EVIDENCE, math.inf
    return FLAT_EVIDENCE, float(arm.removeprefix("reach "))


def _income(n: int, rng: np.random.Generator, median: float = 5e4):
    import pandas as pd

    income = np.exp(rng.normal(np.log(median), 0.8, n))
    age = rng.uniform(20, 70, n)
    y = 3 * np.log(income / 5e4) + 0.05 * (age - 45) + rng.normal(0, 1, n)
    return pd.DataFrame({"income": np.minimum(income, 1e7), "age": age, "y": y})


def personalization(task: tuple[str, int]) -> dict:
    import torch

    from dmt_model import features
    from dmt_model.coreml import UpdateSettings, build_spec, predict_frame
    from dmt_model.foundation import train_foundation
    from dmt_model.personalize import personalized_many
    from dmt_privacy.schema import Field, Schema

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    arm, seed = task
    started = time.perf_counter()
    features.FLAT_EVIDENCE, features.INPUT_REACH = _arm_constants(arm)
    flat = arm == "ignored"
    schema = Schema(name="income", fields=(
        Field("income", "numeric", bounds=(0.0, 1e7)), Field("age", "numeric", bounds=(18.0, 90.0)),
        Field("y", "numeric", role="target")))
    rng = np.random.default_rng(seed)
    foundation = train_foundation(_income(PROXY, rng), schema)
    spec = build_spec(foundation, updatable=UpdateSettings())

    def rmse(model: object, test) -> float:
        return float(np.sqrt(np.mean((predict_frame(model, test) - test["y"]) ** 2)))

    if (foundation.featurizer.flat_fields_ == ("income",)) != flat:
        raise RuntimeError(f"{arm}: the income should be {'flat' if flat else 'learned'}; "
                           f"flat fields {foundation.featurizer.flat_fields_!r}")
    reach = float(np.broadcast_to(foundation.featurizer.reach_, (2,))[0])
    out: dict = {"arm": arm, "seed": seed, "flat": list(foundation.featurizer.flat_fields_),
                 "income_reach": reach if math.isfinite(reach) else None,
                 "cells": []}
    for median in MEDIANS:
        for records in RECORDS:
            users = [(_income(records, rng, median), _income(TEST, rng, median))
                     for _ in range(USERS)]
            kept = personalized_many(spec, [train for train, _ in users])
            before = [rmse(spec, test) for _, test in users]
            after = [rmse(model, test) for (model, _), (_, test) in zip(kept, users, strict=True)]
            out["cells"].append({"median": median, "records": records, "foundation": before,
                                 "personal": after,
                                 "kept": [bool(r.accepted) for _, r in kept]})
    out["seconds"] = time.perf_counter() - started
    return out


def retraining(task: tuple[float, int]) -> dict:
    import pandas as pd
    import torch

    from dmt_model.foundation import TrainingConfig, train_foundation
    from dmt_model.server.retrain import SharedBatch, retrain_foundation
    from dmt_privacy.schema import Field, Schema

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    high, seed = task
    rng = np.random.default_rng(seed)

    def draw(n: int, low: float, top: float) -> pd.DataFrame:
        x = rng.uniform(low, top, n)
        return pd.DataFrame({"x": x, "z": rng.uniform(0, 1, n),
                             "y": 3 * x + np.sin(3 * x) + rng.normal(0, 0.1, n)})

    # x's bounds are wide, so the proxy shows it on a sliver of them, and it is held
    schema = Schema(name="beyond", fields=(
        Field("x", "numeric", bounds=(0.0, 100.0)), Field("z", "numeric", bounds=(0.0, 1.0)),
        Field("y", "numeric", role="target", bounds=(-5.0, 3 * high + 2))))
    proxy, shared, devices, near = draw(300, 0, 1), draw(600, 1, high), draw(2000, 1, high), \
        draw(2000, 0, 1)
    config = TrainingConfig(epochs=60, seed=seed)
    v1 = train_foundation(proxy, schema, config)
    unheld_v1 = train_foundation(proxy, schema, config)
    assert np.isfinite(v1.featurizer.reach_[0])
    unheld_v1.featurizer.reach_ = math.inf

    def rmse(model, test) -> float:
        return float(np.sqrt(np.mean((model.predict(test) - test["y"]) ** 2)))

    held = retrain_foundation(v1, proxy, [SharedBatch(shared)], config)
    unheld = retrain_foundation(unheld_v1, proxy, [SharedBatch(shared)], config)
    featurizer = v1.featurizer
    return {"high": high, "seed": seed,
            "spreads": float((high - featurizer.mean_[0]) / featurizer.scale_[0]),
            "devices": {"v1": rmse(v1, devices), "held": rmse(held, devices),
                        "unheld": rmse(unheld, devices)},
            "proxy": {"v1": rmse(v1, near), "held": rmse(held, near),
                      "unheld": rmse(unheld, near)}}


def summarize(runs: list[dict], arms: list[str]) -> list[dict]:
    rows = []
    for arm in arms:
        for median in MEDIANS:
            for records in RECORDS:
                cells = [c for r in runs if r["arm"] == arm for c in r["cells"]
                         if c["median"] == median and c["records"] == records]
                before = np.concatenate([c["foundation"] for c in cells])
                after = np.concatenate([c["personal"] for c in cells])
                change = after / before - 1
                rows.append({"arm": arm, "median": median, "records": records,
                             "users": len(before), "foundation": float(before.mean()),
                             "personal": float(after.mean()),
                             "worst_change": float(change.max()),
                             "worse_off": float(np.mean(change > 1e-9)),
                             "kept": float(np.mean([k for c in cells for k in c["kept"]]))})
    return rows


def markdown(rows: list[dict], retrained: list[dict], arms: list[str],
             runs: list[dict]) -> str:
    lines = [f"Mean test RMSE of users' foundation and personal model ({USERS} users a seed), "
             "the worst user's change from its foundation, and the share of updates kept. "
             "Target std 2.69 for users like the proxy.", "",
             "| arm | income held at (spreads, per seed) | income median | records | "
             "foundation | personal | worst user | kept |", "|---|---|---|---|---|---|---|---|"]
    held = {arm: ", ".join("-" if r["income_reach"] is None else f"{r['income_reach']:g}"
                           for r in runs if r["arm"] == arm) for arm in arms}
    for row in rows:
        lines.append(f"| {row['arm']} | {held[row['arm']]} | {row['median']:.0e} | "
                     f"{row['records']} | "
                     f"{row['foundation']:.3f} | {row['personal']:.3f} | "
                     f"{row['worst_change']:+.1%} | {row['kept']:.0%} |")
    lines += ["", "Retraining on 600 shared records beyond the proxy's x on [0, 1] (test RMSE; "
              "held at the default reach, and unheld):", "",
              "| shared x | seed | up to (spreads) | devices' region: v1 / v2 held / v2 unheld | "
              "proxy's region: v1 / v2 held / v2 unheld |", "|---|---|---|---|---|"]
    for r in retrained:
        d, p = r["devices"], r["proxy"]
        lines.append(f"| [1, {r['high']:g}] | {r['seed']} | {r['spreads']:.1f} | "
                     f"{d['v1']:.3f} / {d['held']:.3f} / {d['unheld']:.3f} | "
                     f"{p['v1']:.3f} / {p['held']:.3f} / {p['unheld']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], arms: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(RECORDS), figsize=(5.2 * len(RECORDS), 3.8), squeeze=False)
    for ax, records in zip(axes[0], RECORDS, strict=True):
        for arm in arms:
            cell = [r for r in rows if r["arm"] == arm and r["records"] == records]
            ax.plot([r["median"] for r in cell], [r["personal"] for r in cell], "o-", label=arm)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"personalized on {records} records")
        ax.set_xlabel("users' median income (the proxy's: 5e4)")
        ax.set_ylabel("mean test RMSE")
        ax.grid(alpha=0.3, which="both")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--reaches", type=float, nargs="+", default=[5.0, 10.0, 20.0])
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    started = time.perf_counter()
    arms = ["ignored", "unheld", *(f"reach {r:g}" for r in args.reaches)]
    runs, retrained = [], []
    # one task a process: each arm sets the featurizer's constants in its own
    with ProcessPoolExecutor(max_workers=args.workers, max_tasks_per_child=1) as pool:
        for run in pool.map(personalization, [(a, s) for a in arms for s in range(args.seeds)]):
            print(f"  {run['arm']}, seed {run['seed']}: flat {run['flat']}, income held "
                  f"at {run['income_reach']} spreads, "
                  f"{run['seconds']:.0f} s", flush=True)
            runs.append(run)
        retrained = list(pool.map(retraining, [(h, s) for h in RETRAIN_HIGHS
                                               for s in range(args.seeds)]))
    rows = summarize(runs, arms)
    args.output.mkdir(parents=True, exist_ok=True)
    seconds = time.perf_counter() - started
    (args.output / "skewed_inputs.json").write_text(json.dumps(
        {"protocol": {"proxy": PROXY, "users": USERS, "test": TEST, "seeds": args.seeds,
                      "medians": MEDIANS, "records": RECORDS, "arms": arms,
                      "retrain_highs": RETRAIN_HIGHS},
         "summary": rows, "retraining": retrained, "runs": runs, "seconds": seconds,
         "environment": environment()}, indent=1))
    (args.output / "skewed_inputs.md").write_text(markdown(rows, retrained, arms, runs))
    plot(rows, arms, args.output / "skewed_inputs.png")
    print(markdown(rows, retrained, arms, runs))
    print(f"wrote {args.output / 'skewed_inputs.json'}, .md and .png in {seconds / 60:.1f} min")


if __name__ == "__main__":
    main()
