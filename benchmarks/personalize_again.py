"""Personalizing again as records arrive: from the personal model, or from the installed version.

An app personalizes each time a few records arrive. Updating the personal model on its own
(``personalize(personal, records)``), each round is another test at the rule's confidence
against what the last chance update left, and nothing pulls the model back; with
``base=`` the version the device installed, each round personalizes that version on all
the records, which is personalizing once (``tests/model/test_personalize_any_data.py::
test_personalizing_again_from_the_base_is_personalizing_once``, byte for byte; this script
checks it again on its first users).

Protocol (helper-97's, 6 December): ``make_friedman1`` (10 inputs, noise 1), a foundation
trained on 300 proxy records, 40 users a seed with 45 training and 200 test records each,
their target × a factor in [1 − h, 1 + h] (h = 0: users drawn like the proxy, nothing to
learn). Records arrive 3 at a time; after each, every user personalizes with the default
rule. Reports, at 6, 15, 30 and 45 records, the users' mean test RMSE change from the
foundation and the share of users worse off, round by round from the personal model
(*own*) and once from the foundation on the same records (*once*, what ``base=`` gives).

    python benchmarks/personalize_again.py [--seeds 4] [--spreads 0 0.3] [--workers 2]

Writes ``benchmarks/results/personalize_again.json``, ``.md`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
USERS, STEP, RECORDS, TEST = 40, 3, 45, 200
REPORTED = (6, 15, 30, 45)
CHECKED = 3  # users whose rounds from base= are compared with once, byte for byte


def run_one(task: tuple[float, int]) -> dict:
    import pandas as pd
    import torch
    from sklearn.datasets import make_friedman1

    from dmt_model.coreml import UpdateSettings, build_spec, predict_frame
    from dmt_model.foundation import TrainingConfig, train_foundation
    from dmt_model.personalize import (
        RepeatedPersonalizationWarning,
        personalized,
        personalized_many,
    )
    from dmt_privacy.schema import Field, Schema

    torch.set_num_threads(1)
    spread, seed = task
    started = time.perf_counter()
    columns = [f"x{i}" for i in range(10)]
    schema = Schema(name="friedman1", fields=(
        *(Field(c, "numeric", bounds=(-1.0, 2.0)) for c in columns),
        Field("y", "numeric", bounds=(-30.0, 60.0), role="target")))

    def friedman(n: int, state: int) -> pd.DataFrame:
        x, y = make_friedman1(n, 10, noise=1.0, random_state=state)
        return pd.DataFrame(x, columns=columns).assign(y=y)

    foundation = build_spec(train_foundation(friedman(300, 1000 + seed), schema,
                                             TrainingConfig(epochs=500, seed=0)),
                            updatable=UpdateSettings())
    factors = np.random.default_rng(seed).uniform(1 - spread, 1 + spread, USERS)
    users = [friedman(RECORDS + TEST, 10_000 * seed + u).assign(y=lambda f, k=k: f["y"] * k)
             for u, k in enumerate(factors)]

    def rmse(model: object, user: pd.DataFrame) -> float:
        test = user.iloc[RECORDS:]
        return float(np.sqrt(np.mean((predict_frame(model, test) - test["y"]) ** 2)))

    out: dict = {"spread": spread, "seed": seed,
                 "foundation": [rmse(foundation, u) for u in users], "own": {}, "once": {}}
    current, kept = [foundation] * USERS, np.zeros(USERS, dtype=int)
    based = [foundation] * CHECKED
    for n in range(STEP, RECORDS + 1, STEP):
        for u in range(USERS):
            with warnings.catch_warnings():  # round by round on its own, as measured
                warnings.simplefilter("ignore", RepeatedPersonalizationWarning)
                model, result = personalized(current[u], users[u].iloc[:n])
            if result.accepted:
                current[u], kept[u] = model, kept[u] + 1
            if u < CHECKED:
                based[u] = personalized(based[u], users[u].iloc[:n], base=foundation)[0]
        if n in REPORTED:
            once = personalized_many(foundation, [u.iloc[:n] for u in users])
            out["own"][n] = [rmse(m, u) for m, u in zip(current, users, strict=True)]
            out["once"][n] = [rmse(m, u) for (m, _), u in zip(once, users, strict=True)]
    out["base_is_once"] = all(
        b.SerializeToString() == m.SerializeToString()
        for b, (m, _) in zip(based, once[:CHECKED], strict=True))
    out["updates_kept_own"] = kept.tolist()
    out["seconds"] = time.perf_counter() - started
    return out


def summarize(runs: list[dict]) -> list[dict]:
    rows = []
    for spread in dict.fromkeys(r["spread"] for r in runs):
        cell = [r for r in runs if r["spread"] == spread]
        for n in REPORTED:
            row = {"spread": spread, "records": n, "seeds": len(cell)}
            for how in ("own", "once"):
                change = [np.mean(r[how][str(n)] if str(n) in r[how] else r[how][n])
                          / np.mean(r["foundation"]) - 1 for r in cell]
                worse = [np.mean(np.array(r[how][str(n)] if str(n) in r[how] else r[how][n])
                                 > np.array(r["foundation"]) * (1 + 1e-9)) for r in cell]
                row[how] = {"change": float(np.mean(change)), "per_seed": change,
                            "worse_off": float(np.mean(worse)),
                            "worse_off_per_seed": worse}
            rows.append(row)
    return rows


def markdown(rows: list[dict], runs: list[dict]) -> str:
    lines = ["Users' mean test RMSE change from the foundation (per seed in brackets) and share "
             f"worse off, {USERS} users a seed; *own*: personalizing the personal model each "
             f"time {STEP} records arrive; *once*: personalizing the foundation once on the "
             "same records (what `base=` gives).", "",
             "| h | records | own | own: worse off | once | once: worse off |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        cells = []
        for how in ("own", "once"):
            seeds = ", ".join(f"{c:+.1%}" for c in row[how]["per_seed"])
            cells += [f"{row[how]['change']:+.2%} ({seeds})",
                      f"{row[how]['worse_off']:.0%}"]
        lines.append(f"| {row['spread']:g} | {row['records']} | " + " | ".join(cells) + " |")
    same = all(r["base_is_once"] for r in runs)
    lines += ["", f"Rounds from `base=` equal one personalization, byte for byte, for the "
              f"first {CHECKED} users of every seed: {'yes' if same else 'NO'}."]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spreads = list(dict.fromkeys(r["spread"] for r in rows))
    fig, axes = plt.subplots(1, len(spreads), figsize=(4.6 * len(spreads), 3.6), squeeze=False)
    for ax, spread in zip(axes[0], spreads, strict=True):
        cell = [r for r in rows if r["spread"] == spread]
        for how, style in (("own", "o-"), ("once", "s--")):
            ax.plot([r["records"] for r in cell], [100 * r[how]["change"] for r in cell],
                    style, label={"own": "again from the personal model",
                                  "once": "from the installed version (base=)"}[how])
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_title(f"h = {spread:g}")
        ax.set_xlabel("records so far")
        ax.set_ylabel("test RMSE vs foundation (%)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--spreads", type=float, nargs="+", default=[0.0, 0.3])
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    started = time.perf_counter()
    tasks = [(h, seed) for h in args.spreads for seed in range(args.seeds)]
    runs = []
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for run in pool.map(run_one, tasks):
            print(f"  h={run['spread']:g} seed {run['seed']}: {run['seconds']:.0f} s, base= is "
                  f"once: {run['base_is_once']}", flush=True)
            runs.append(run)
    rows = summarize(runs)
    args.output.mkdir(parents=True, exist_ok=True)
    seconds = time.perf_counter() - started
    (args.output / "personalize_again.json").write_text(json.dumps(
        {"protocol": {"users": USERS, "step": STEP, "records": RECORDS, "test": TEST,
                      "seeds": args.seeds, "spreads": args.spreads},
         "summary": rows, "runs": runs, "seconds": seconds}, indent=1))
    (args.output / "personalize_again.md").write_text(markdown(rows, runs))
    plot(rows, args.output / "personalize_again.png")
    print(markdown(rows, runs))
    print(f"wrote {args.output / 'personalize_again.json'}, .md and .png in "
          f"{seconds / 60:.1f} min")


if __name__ == "__main__":
    main()
