"""A protocol where "share or federate?" is an open question (issue 13, part 1; regression).

The simulated-user protocol of the other benchmarks (20 Boston users of about
14 training records, a 30 % unbiased proxy) leaves sharing little to add: the
proxy already covers the distribution. This one is built so that it does not:

* **data**: Friedman #2 (``dmt_model.datasets.load_friedman``, scikit-learn's
  documented generator), ``--rows`` rows (default 6000) drawn from a seed, so
  the heterogeneity is known and the protocol scales past Boston's 506 rows;
  the target is ``sqrt(x0² + (x1·x2 − 1/(x1·x3))²)`` + noise, driven mostly
  by x1·x2.
* **scarce, biased proxy**: ``--proxy-fraction`` (3 %) of the rows, drawn only
  from rows with ``x2 ≤ --proxy-region`` (0.6): the server never sees the
  40 % of the input space where the targets are largest, which users hold.
* **many users, power-law sizes**: ``--users`` (120) users; user u holds
  ``min(cap, ⌈n_min · U^(−1/α)⌉)`` records (a Pareto tail, α = 1.2, n_min = 3,
  cap = 300, U uniform), as real apps have: most users have a handful of
  records, a few have hundreds.
* **users that differ**: each user holds one neighbourhood (users, in random
  order, take contiguous blocks of the rows sorted by x2, so big and small
  users sit everywhere), and an own scale factor U(1 − h, 1 + h) (h = 0.3)
  multiplies the target on their records.
* each user's records: 25 % test (at least one), of the rest 50 % shareable,
  the others never leave the device — as ``simulate_users`` does.

It returns the same :class:`~dmt_model.datasets.users.Simulation` as
``simulate_users``, so every method of the other benchmarks runs on it
unchanged. This script prints the protocol's shape (records per user, how
much of the users' region the proxy misses) and, unless ``--describe-only``,
compares on it, per-user test RMSE (mean over users, mean ± std over seeds):
the proxy foundation with and without on-device personalization; DMT raw
(retrained on proxy + every user's shareable records, re-personalized on all
local records); FedAvg on Flower with personalization; DP-FedAvg on Flower at
user-level ε = ``--epsilon`` with personalization. DMT's local-DP rows at
user-level ε (``benchmarks/privacy_utility.py``) are not run here yet.

Hyperparameters: those of ``benchmarks/federated_baseline.py`` and the SDK's
defaults, not tuned on this protocol (issue 13, part 4 is open here).

Writes ``federated_protocol.json`` into ``--output`` (default ``benchmarks/results``).
Run: ``.venv/bin/python benchmarks/fl_protocol.py [--seeds 5]``; ``--quick`` is one
seed, 60 users and 10 FedAvg rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from dmt_model.datasets import load_friedman
from dmt_model.datasets.regression import FRIEDMAN_SCHEMA
from dmt_model.datasets.users import SimulatedUser, Simulation
from dmt_privacy.errors import ValidationError

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = "y"
LOCATION = "x2"


def power_law_sizes(n_users: int, rng: np.random.Generator, *, alpha: float = 1.2,
                    n_min: int = 3, cap: int = 300) -> np.ndarray:
    """Records per user: ``min(cap, ⌈n_min · U^(−1/α)⌉)``, a Pareto tail."""
    return np.minimum(cap, np.ceil(n_min * rng.uniform(size=n_users) ** (-1 / alpha))).astype(int)


def open_protocol(data: pd.DataFrame, *, n_users: int = 120, proxy_fraction: float = 0.03,
                  proxy_region: float = 0.6, spread: float = 0.3, test_fraction: float = 0.25,
                  share_fraction: float = 0.5, seed: int = 0) -> Simulation:
    """The users and the server's proxy data of this protocol (see the module doc)."""
    rng = np.random.default_rng(seed)
    shuffled = data.iloc[rng.permutation(len(data))]
    eligible = shuffled[shuffled[LOCATION] <= proxy_region]
    proxy = eligible.iloc[:round(proxy_fraction * len(data))]
    pool = shuffled.drop(index=proxy.index)
    sizes = power_law_sizes(n_users, rng)
    if sizes.sum() > len(pool):
        raise ValidationError(f"{n_users} users need {sizes.sum()} records, the pool has "
                              f"{len(pool)}: generate more rows or use fewer users.")
    # Each user one neighbourhood of x2: users in random order take contiguous blocks of the
    # sorted rows, spread over the whole range.
    order = rng.permutation(n_users)
    stride = len(pool) / sizes.sum()
    ranked = pool.sort_values(LOCATION, kind="stable")
    starts = np.floor(np.concatenate([[0], np.cumsum(sizes[order])[:-1]]) * stride).astype(int)
    users = []
    for user_id, start in zip(order, starts, strict=True):
        records = ranked.iloc[start:start + sizes[user_id]].copy()
        factor = float(rng.uniform(1.0 - spread, 1.0 + spread))
        records[TARGET] = records[TARGET] * factor
        records = records.iloc[rng.permutation(len(records))]
        n_test = max(1, round(test_fraction * len(records)))
        test, train = records.iloc[:n_test], records.iloc[n_test:]
        n_share = round(share_fraction * len(train))
        users.append(SimulatedUser(int(user_id), factor, train.iloc[:n_share],
                                   train.iloc[n_share:], test))
    users.sort(key=lambda u: u.user_id)
    return Simulation(proxy=proxy, users=tuple(users), seed=seed, spread=spread)


def describe(sim: Simulation, proxy_region: float) -> dict:
    sizes = np.array([len(u.train) + len(u.test) for u in sim.users])
    held = pd.concat([u.train for u in sim.users])
    return {
        "users": len(sim.users), "proxy_records": len(sim.proxy),
        "user_records": int(sizes.sum()),
        "records_per_user": {"min": int(sizes.min()), "median": float(np.median(sizes)),
                             "mean": float(sizes.mean()), "max": int(sizes.max()),
                             "share_of_records_in_top_10pct_users": float(
                                 np.sort(sizes)[::-1][:max(1, len(sizes) // 10)].sum()
                                 / sizes.sum())},
        "users_with_at_most_5_records": int((sizes <= 5).sum()),
        "user_training_records_outside_the_proxy_region": float(
            (held[LOCATION] > proxy_region).mean()),
    }


def rmse(predicted, actual) -> float:
    return float(np.sqrt(np.mean((np.asarray(predicted, float) - np.asarray(actual, float)) ** 2)))


def compare(sim: Simulation, seed: int, *, rounds: int, epsilon: float) -> dict[str, float]:
    from federated_baseline import CLIP_NORM, DELTA, DP_FEDAVG, FEDAVG

    from dmt_model.coreml import UpdateSettings, build_spec, predict_frame
    from dmt_model.federated import DPFedAvg, run_federated
    from dmt_model.foundation import TrainingConfig, train_foundation
    from dmt_model.personalize import personalized
    from dmt_model.server.retrain import SharedBatch, retrain_foundation

    config = TrainingConfig(seed=seed)
    foundation = train_foundation(sim.proxy, FRIEDMAN_SCHEMA, config)

    def per_user(model, personalize_on: str | None) -> float:
        spec = build_spec(model, updatable=UpdateSettings())
        scores = []
        for user in sim.users:
            target = spec
            if personalize_on is not None:
                target, _ = personalized(spec, user.train)
            scores.append(rmse(predict_frame(target, user.test), user.test[TARGET]))
        return float(np.mean(scores))

    rows = {"foundation (proxy only)": per_user(foundation, None),
            "foundation, personalized": per_user(foundation, "train")}
    shared = pd.concat([u.shareable for u in sim.users])
    dmt = retrain_foundation(foundation, sim.proxy, [SharedBatch(shared)], config)
    rows["DMT raw (no formal DP), re-personalized on all local records"] = per_user(dmt, "train")
    fl = run_federated(sim, replace(FEDAVG, rounds=rounds, seed=seed), foundation=foundation,
                       schema=FRIEDMAN_SCHEMA, personalize=True)
    rows["FedAvg (no formal DP), personalized"] = fl.mean_personalized_rmse
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dp = run_federated(sim, DPFedAvg(replace(DP_FEDAVG, seed=seed), clip_norm=CLIP_NORM,
                                         target_epsilon=epsilon, delta=DELTA),
                           foundation=foundation, schema=FRIEDMAN_SCHEMA, personalize=True)
    rows[f"DP-FedAvg user-level ε={dp.epsilon:.2f}, personalized"] = dp.mean_personalized_rmse
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default 5)")
    parser.add_argument("--users", type=int, default=120)
    parser.add_argument("--rows", type=int, default=6000)
    parser.add_argument("--proxy-fraction", type=float, default=0.03)
    parser.add_argument("--proxy-region", type=float, default=0.6)
    parser.add_argument("--spread", type=float, default=0.3)
    parser.add_argument("--epsilon", type=float, default=4.0, help="DP-FedAvg's user-level ε")
    parser.add_argument("--rounds", type=int, default=30, help="FedAvg rounds")
    parser.add_argument("--quick", action="store_true", help="1 seed, 60 users, 10 rounds")
    parser.add_argument("--describe-only", action="store_true",
                        help="print the protocol's shape, train nothing")
    parser.add_argument("--output", type=Path, default=RESULTS,
                        help="folder for the results (default benchmarks/results)")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.users, args.rounds = 1, 60, 10
    started = time.perf_counter()
    shapes, per_seed = [], {}
    for seed in range(args.seeds):
        data = load_friedman(args.rows, seed=seed)
        sim = open_protocol(data, n_users=args.users, proxy_fraction=args.proxy_fraction,
                            proxy_region=args.proxy_region, spread=args.spread, seed=seed)
        shapes.append(describe(sim, args.proxy_region))
        print(f"seed {seed}: {json.dumps(shapes[-1])}", flush=True)
        if not args.describe_only:
            for name, value in compare(sim, seed, rounds=args.rounds,
                                       epsilon=args.epsilon).items():
                per_seed.setdefault(name, []).append(value)
            print(f"seed {seed} done ({time.perf_counter() - started:.0f} s)", flush=True)
    summary = {name: {"mean": statistics.mean(v),
                      "std": statistics.stdev(v) if len(v) > 1 else 0.0}
               for name, v in per_seed.items()}
    for name, s in summary.items():
        print(f"{name:<64} {s['mean']:8.2f} ± {s['std']:.2f}")
    args.output.mkdir(parents=True, exist_ok=True)
    result = {"protocol": {k: v for k, v in vars(args).items() if k != "output"},
              "shape_per_seed": shapes, "summary": summary, "per_seed": per_seed,
              "seconds": time.perf_counter() - started}
    (args.output / "federated_protocol.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {args.output / 'federated_protocol.json'} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
