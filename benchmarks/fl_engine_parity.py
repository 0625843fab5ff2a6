"""Does Flower reproduce the hand-written FedAvg / DP-FedAvg loop it replaced? (issue 13, part 2)

The same simulated users (Boston, 20 users, h = 0.15), the same proxy
foundation, the same settings and seeds as ``benchmarks/federated_baseline.py``
(FedAvg over all parameters, 30 rounds, half the users a round; the DP
configuration without noise; DP-FedAvg at user-level ε ∈ {1, 4, 8}, q = 1),
run by both engines: the loop of our own, and Flower's strategies in its Ray
simulation engine. The metric is the global model's mean per-user test RMSE
(personalization after training is the same code on both sides, so it is
left out).

The hand-written loop is gone (Flower reproduced it): its per-seed figures
were measured in the same process as Flower's, on the same seeds, just before
its removal (the loop of commit aa8414e, run through a temporary
``engine="reference"`` switch) and are kept in
``benchmarks/results/federated_engine_parity.json``; this script reruns
Flower and compares with them (``--reference`` to read them elsewhere).

What must match and what may not: local training is seeded per
``(seed, round, client)`` in both, so when every user trains every round and
there is no noise the two engines agree to float32 rounding; FedAvg at half
the users differs only through *which* users Flower samples (its own
``random.sample``), and DP-FedAvg through the noise draws (Flower's generator):
those differences must be within the seed-to-seed spread.

Writes ``federated_engine_parity.json`` into ``--output`` (default
``benchmarks/results``; give another folder to keep the saved reference).
Run: ``.venv/bin/python benchmarks/fl_engine_parity.py [--seeds 5]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from dataclasses import replace
from pathlib import Path

from federated_baseline import CLIP_NORM, DELTA, DP_FEDAVG, EPSILONS, FEDAVG

from dmt_model.datasets import BOSTON_SCHEMA, load_boston, simulate_users
from dmt_model.federated import DPFedAvg, run_federated
from dmt_model.foundation import TrainingConfig, train_foundation

RESULTS = Path(__file__).resolve().parent / "results"
SPREAD = 0.15
REFERENCE = RESULTS / "federated_engine_parity.json"


def methods(seed: int) -> dict:
    out = {"FedAvg": lambda: replace(FEDAVG, seed=seed),
           "FedAvg, DP settings without noise": lambda: replace(DP_FEDAVG, seed=seed)}
    for epsilon in EPSILONS:
        out[f"DP-FedAvg ε={epsilon:g}"] = (
            lambda e=epsilon: DPFedAvg(replace(DP_FEDAVG, seed=seed), clip_norm=CLIP_NORM,
                                       target_epsilon=e, delta=DELTA))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default 5)")
    parser.add_argument("--output", type=Path, default=RESULTS,
                        help="folder for the results (default benchmarks/results)")
    parser.add_argument("--reference", type=Path, default=REFERENCE,
                        help="the hand-written loop's figures (default: the saved run)")
    args = parser.parse_args()
    saved = json.loads(args.reference.read_text())
    if args.seeds > len(saved["protocol"]["seeds"]):
        parser.error(f"the reference has {len(saved['protocol']['seeds'])} seeds; "
                     f"--seeds {args.seeds} asks for more")
    data = load_boston()
    per_seed: dict[str, dict[str, list[float]]] = {}
    seconds: dict[str, float] = {"flower": 0.0}
    epsilon: dict[str, dict[str, list[float]]] = {}
    started = time.perf_counter()
    for seed in range(args.seeds):
        sim = simulate_users(data, spread=SPREAD, seed=seed)
        foundation = train_foundation(sim.proxy, BOSTON_SCHEMA, TrainingConfig(seed=seed))
        for name, make in methods(seed).items():
            reference = saved["per_seed"][name]["reference"][seed]
            per_seed.setdefault(name, {}).setdefault("reference", []).append(reference)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                result = run_federated(sim, make(), foundation=foundation)
            per_seed[name].setdefault("flower", []).append(result.mean_error)
            if result.epsilon is not None:
                epsilon.setdefault(name, {}).setdefault("flower", []).append(result.epsilon)
            seconds["flower"] += result.seconds
        print(f"seed {seed} done ({time.perf_counter() - started:.0f} s)", flush=True)

    def spread(values: list[float]) -> float:
        return statistics.stdev(values) if len(values) > 1 else 0.0

    summary = {}
    print(f"\nmean per-user test RMSE of the global model, mean ± std over {args.seeds} seeds")
    print(f"{'method':<36}{'hand-written':>16}{'Flower':>16}{'paired diff':>18}{'within':>8}")
    for name, runs in per_seed.items():
        ref, flower = runs["reference"], runs["flower"]
        diff = [f - r for f, r in zip(flower, ref, strict=True)]
        noise = max(spread(ref), spread(flower))
        within = abs(statistics.mean(diff)) <= noise
        summary[name] = {
            "reference": {"mean": statistics.mean(ref), "std": spread(ref)},
            "flower": {"mean": statistics.mean(flower), "std": spread(flower)},
            "paired_difference": {"mean": statistics.mean(diff), "std": spread(diff),
                                  "max_abs": max(abs(d) for d in diff)},
            "within_seed_spread": within}
        print(f"{name:<36}{statistics.mean(ref):>9.3f} ± {spread(ref):.2f}"
              f"{statistics.mean(flower):>9.3f} ± {spread(flower):.2f}"
              f"{statistics.mean(diff):>+11.4f} ± {spread(diff):.3f}{'yes' if within else 'NO':>8}")
    result = {
        "protocol": {"seeds": list(range(args.seeds)), "spread": SPREAD, "users": 20,
                     "data": "Boston", "metric": "mean over users of the global model's "
                     "per-user test RMSE; mean ± std over seeds; paired difference Flower − "
                     "hand-written per seed; 'within' = |mean difference| ≤ the larger std"},
        "summary": summary, "per_seed": per_seed, "epsilon_reported": epsilon,
        "seconds_per_engine": seconds, "seconds": time.perf_counter() - started,
        "reference_provenance": saved.get("reference_provenance"),
    }
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "federated_engine_parity.json").write_text(json.dumps(result, indent=1))
    print(f"\nwrote {args.output / 'federated_engine_parity.json'} ({result['seconds']:.0f} s;"
          f" Flower {seconds['flower']:.0f} s)")


if __name__ == "__main__":
    main()
