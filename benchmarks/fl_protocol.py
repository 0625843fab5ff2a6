"""When does partial sharing beat federated learning? (issue 13: the protocol, every method
at a stated user-level privacy cost, its risk and its cost to a device).

The protocol (part 1) is built so that the question is open — the simulated-user
protocol of the other benchmarks (20 Boston users of about 14 training records,
a 30 % unbiased proxy) leaves sharing little to add:

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

Every device first personalizes the proxy foundation on all its training
records with ``personalize()`` (the SDK's defaults: the personal head, a
per-user prior, the keep-or-discard rule). When a method gives it a new model
(DMT's retrained foundation, Flower's final global model) the device does what
an SDK device does, ``adopt_new_version()``: it re-personalizes the new model
on all its training records and moves to it only if that beats its current
personal model in cross-validation — so every method is measured as the
model users hold in the end, and a new model that is worse for a user is not
forced on them. The methods:

* **nothing shared**: the proxy foundation (user-level ε = 0);
* **DMT**: the server retrains on proxy + every user's shareable records as
  they arrive — raw (no formal DP), or under local DP at user-level ε ∈
  {1, 4, 8} (each user's :class:`~dmt_privacy.dp.PrivacyLedger` holds ε and
  the perturber charges it for the whole release, δ = 0;
  ``privacy_utility.share``);
* **FedAvg** and **FedProx** (no formal DP) and **DP-FedAvg** at user-level
  ε ∈ {1, 4, 8}, δ = 1e-5, on Flower (``dmt_model.federated``: Flower's own
  strategies and its server-side fixed-clipping DP wrapper, Opacus' RDP
  accountant; every client trains on all its training records), from the
  same foundation.

Hyperparameters (part 4): ``--tune`` gives every method the same budget, three
trials, on seeds 100 and 101, which are never reported, scored by the released
model's mean per-user test RMSE: FedAvg's local learning rate, FedProx's μ (at
that rate), DP-FedAvg's clip norm (at ε = 4), DMT's retraining learning rate.
It writes ``federated_protocol_tuning.json``; the main run reads its choices
from there (and says so), or uses the defaults and says they are untuned.

Risk (part 5): a membership-inference attack on every released model — DMT's
retrained foundation, Flower's global model — the same attack for all
(``dmt_model.membership_inference.attack_model``, Yeom et al.'s loss
threshold): the members are the user records the model was trained on (DMT:
the shared ones; FL: every training record), the non-members the same users'
test records, never trained on. The attacker's
advantage (TPR − FPR) with its 95 % confidence interval. Personal models
never leave the device and are not attacked.

Cost (part 6), per device, mean over users: bytes sent and received (DMT: its
sealed share package, as ``seal_package`` writes it, and each model version
as an ``.mlmodel``; FL: the trainable arrays each round it takes part in, both
ways — Flower's own message framing not counted), rounds, and CPU seconds of
on-device training (FL: local training in Flower's client, summed over rounds;
every method: the final ``personalize()``).

Writes ``federated_protocol.json``, ``federated_protocol.md`` (the README
table) and three plots (utility vs ε, cost, membership advantage) into
``--output`` (default ``benchmarks/results``).
Run: ``.venv/bin/python benchmarks/fl_protocol.py [--seeds 5]``; ``--quick``
is one seed, 60 users and 10 FedAvg rounds; ``--tune`` the tuning run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dmt_model.datasets import load_friedman
from dmt_model.datasets.regression import FRIEDMAN_SCHEMA
from dmt_model.datasets.users import SimulatedUser, Simulation
from dmt_privacy.errors import ValidationError

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmarks' helpers

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = "y"
LOCATION = "x2"
EPSILONS = (1.0, 4.0, 8.0)
DELTA = 1e-5
TUNING_SEEDS = (100, 101)
#: Three trials per method (the same budget for every method), in this order.
GRID = {"dmt_learning_rate": (3e-4, 1e-3, 3e-3),
        "fedavg_learning_rate": (1e-3, 3e-3, 1e-2),
        "proximal_mu": (0.01, 0.1, 1.0),
        "clip_norm": (0.03, 0.1, 0.3)}
TUNING_FILE = "federated_protocol_tuning.json"


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


# --- hyperparameters ------------------------------------------------------------------
def settings_from(output: Path) -> dict[str, Any]:
    """The tuned choices of ``--tune`` if its file is in ``output`` (or benchmarks/results),
    else the defaults, marked untuned."""
    defaults = {"dmt_learning_rate": 1e-3, "fedavg_learning_rate": 1e-3, "proximal_mu": 0.1,
                "clip_norm": 0.1, "tuned": False}
    for folder in (output, RESULTS):
        path = folder / TUNING_FILE
        if path.exists():
            return {**defaults, **json.loads(path.read_text())["chosen"], "tuned": True}
    return defaults


def fl_strategies(settings: dict[str, Any], seed: int, rounds: int) -> tuple[Any, Any, Any]:
    """FedAvg, FedProx and a DP-FedAvg maker at user-level ε, with ``settings``."""
    from dataclasses import asdict

    from federated_baseline import DP_FEDAVG, FEDAVG

    from dmt_model.federated import DPFedAvg, FedProx

    fedavg = replace(FEDAVG, rounds=rounds, seed=seed,
                     local_learning_rate=settings["fedavg_learning_rate"])
    fedprox = FedProx(**asdict(fedavg), proximal_mu=settings["proximal_mu"])

    def dp(epsilon: float) -> Any:
        return DPFedAvg(replace(DP_FEDAVG, seed=seed), clip_norm=settings["clip_norm"],
                        target_epsilon=epsilon, delta=DELTA)

    return fedavg, fedprox, dp


def federated(sim: Simulation, strategy: Any, foundation: Any) -> Any:
    from dmt_model.federated import run_federated

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Flower's and Ray's notes
        return run_federated(sim, strategy, foundation=foundation, schema=FRIEDMAN_SCHEMA)


def dmt_model_for(sim: Simulation, foundation: Any, epsilon: float | None, seed: int,
                  learning_rate: float) -> tuple[Any, list[Any], dict]:
    """DMT's retrained foundation from the users' shareable records (raw, or local DP at
    user-level ``epsilon``), the batches the server received, and what was lost."""
    from privacy_utility import share

    from dmt_model.foundation import TrainingConfig
    from dmt_model.server.retrain import retrain_foundation

    batches, info = share(sim, epsilon=epsilon, seed=seed, schema=FRIEDMAN_SCHEMA)
    config = TrainingConfig(seed=seed, learning_rate=learning_rate)
    return retrain_foundation(foundation, sim.proxy, batches, config), batches, info


def tune(args: argparse.Namespace) -> None:
    """Three trials per method on TUNING_SEEDS, scored by the released model's mean per-user
    test RMSE; writes the trials and the choices to TUNING_FILE."""
    from dmt_model.foundation import TrainingConfig, train_foundation

    started = time.perf_counter()
    setups = []
    for seed in TUNING_SEEDS:
        sim = open_protocol(load_friedman(args.rows, seed=seed), n_users=args.users, seed=seed)
        setups.append((seed, sim, train_foundation(sim.proxy, FRIEDMAN_SCHEMA,
                                                   TrainingConfig(seed=seed))))

    def released_rmse(model: Any, sim: Simulation) -> float:
        return float(np.mean([rmse(model.predict(u.test), u.test[TARGET]) for u in sim.users]))

    def score(run) -> float:
        return statistics.mean(run(seed, sim, foundation) for seed, sim, foundation in setups)

    chosen: dict[str, float] = {}
    trials: dict[str, dict[str, float]] = {}

    def pick(name: str, run) -> None:
        trials[name] = {}
        for value in GRID[name]:
            trials[name][f"{value:g}"] = score(lambda seed, sim, f, v=value: run(v, seed, sim, f))
            print(f"{name}={value:g}: {trials[name][f'{value:g}']:.3f} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
        chosen[name] = float(min(trials[name], key=trials[name].get))

    pick("dmt_learning_rate", lambda lr, seed, sim, f: released_rmse(
        dmt_model_for(sim, f, None, seed, lr)[0], sim))
    base = settings_from(args.output)

    def fl(seed: int, sim: Simulation, f: Any, which: int, **overrides: float) -> float:
        strategies = fl_strategies({**base, **chosen, **overrides}, seed, args.rounds)
        strategy = strategies[2](4.0) if which == 2 else strategies[which]
        return float(federated(sim, strategy, f).mean_rmse)

    pick("fedavg_learning_rate", lambda v, seed, sim, f: fl(seed, sim, f, 0,
                                                            fedavg_learning_rate=v))
    pick("proximal_mu", lambda v, seed, sim, f: fl(seed, sim, f, 1, proximal_mu=v))
    pick("clip_norm", lambda v, seed, sim, f: fl(seed, sim, f, 2, clip_norm=v))
    result = {"seeds": list(TUNING_SEEDS), "grid": {k: list(v) for k, v in GRID.items()},
              "score": "released model's mean per-user test RMSE, mean over the tuning seeds",
              "trials": trials, "chosen": chosen, "users": args.users, "rounds": args.rounds,
              "seconds": time.perf_counter() - started}
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / TUNING_FILE).write_text(json.dumps(result, indent=1))
    print(f"chosen {chosen}; wrote {args.output / TUNING_FILE} ({result['seconds']:.0f} s)")


# --- one seed -------------------------------------------------------------------------
def personalize_users(model: Any, sim: Simulation,
                      current: list[Any] | None = None) -> dict[str, Any]:
    """What each user holds in the end, as an SDK device decides it: with no ``current``
    personal models, ``model`` personalized on all their training records
    (``personalize()``); otherwise ``model`` adopted only if, re-personalized, it beats the
    user's ``current`` personal model in cross-validation (``adopt_new_version``). Mean
    per-user test RMSE of ``model`` itself and of what users hold, the share of users who
    moved to it, the CPU seconds a device spent, and the personal models."""
    from dmt_model.coreml import UpdateSettings, build_spec, predict_frame
    from dmt_model.personalize import adopted, personalized

    spec = build_spec(model, updatable=UpdateSettings())
    plain, personal, seconds, moved, held = [], [], [], [], []
    for i, user in enumerate(sim.users):
        plain.append(rmse(predict_frame(spec, user.test), user.test[TARGET]))
        started = time.process_time()
        if current is None:
            updated, result = personalized(spec, user.train)
        else:
            updated, result = adopted(spec, current[i], user.train)
        seconds.append(time.process_time() - started)
        moved.append(result.accepted)
        held.append(updated)
        personal.append(rmse(predict_frame(updated, user.test), user.test[TARGET]))
    return {"rmse_released": float(np.mean(plain)), "rmse": float(np.mean(personal)),
            "moved": float(np.mean(moved)), "personalize_seconds": float(np.mean(seconds)),
            "model_bytes": len(spec.SerializeToString()), "personal_models": held}


def membership(model: Any, members: pd.DataFrame, non_members: pd.DataFrame,
               seed: int) -> dict[str, Any]:
    """The same membership-inference attack on every released model."""
    from dmt_model.membership_inference import attack_model

    return attack_model(model, members, non_members, seed=seed).to_dict()


def sealed_sizes(sim: Simulation, batches: list[Any]) -> tuple[list[int], float]:
    """Each user's share package as ``seal_package`` writes it (bytes), and the mean CPU
    seconds of building and sealing it. One batch per user under local DP (its receipt
    travels with it); raw records travel with an empty receipt."""
    from dmt_privacy.package import PrivacyReceipt, SharePackage, seal_package
    from dmt_privacy.seal import generate_server_key

    key = generate_server_key().public_key()
    per_user = (list(zip([b.records for b in batches], [b.receipt for b in batches],
                         strict=True))
                if len(batches) == len(sim.users)
                else [(u.shareable, None) for u in sim.users])
    sizes, seconds = [], []
    columns = [f.name for f in FRIEDMAN_SCHEMA]
    for records, receipt in per_user:
        started = time.process_time()
        package = SharePackage.create(FRIEDMAN_SCHEMA.schema_id, records[columns],
                                      PrivacyReceipt(dp=receipt))
        sizes.append(len(seal_package(package, key)))
        seconds.append(time.process_time() - started)
    return sizes, float(np.mean(seconds))


def fl_cost(result: Any, base: Any, n_users: int, model_bytes: int) -> dict[str, Any]:
    """Bytes a device exchanges with Flower (its trainable arrays each round it takes part,
    both ways; the final model as an .mlmodel to personalize) and its training seconds."""
    import copy

    from dmt_model.federated.flower import trainable_parameters

    network = copy.deepcopy(result.foundation.network)
    arrays = sum(int(p.numel()) * 4 for p in trainable_parameters(network, base))
    taken = np.zeros(n_users)
    for r in result.rounds:
        taken[list(r.clients)] += 1
    return {"sent_bytes": float(taken.mean() * arrays),
            "received_bytes": float(taken.mean() * arrays + model_bytes),
            "rounds": len(result.rounds),
            "train_seconds": float(sum(r.client_seconds for r in result.rounds) / n_users)}


def run_seed(sim: Simulation, seed: int, *, rounds: int, epsilons: tuple[float, ...],
             settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    from dmt_model.foundation import TrainingConfig, train_foundation

    rows: dict[str, dict[str, Any]] = {}
    foundation = train_foundation(sim.proxy, FRIEDMAN_SCHEMA, TrainingConfig(seed=seed))
    held = personalize_users(foundation, sim)
    current = held.pop("personal_models")
    model_bytes = held["model_bytes"]
    tests = pd.concat([u.test for u in sim.users])
    rows["nothing shared"] = held | {
        "epsilon": 0.0, "guarantee": "nothing leaves the device", "sent_bytes": 0.0,
        "received_bytes": float(model_bytes), "rounds": 0,
        "device_seconds": held["personalize_seconds"], "membership": None}
    shared = pd.concat([u.shareable for u in sim.users])
    for epsilon in (None, *epsilons):
        name = "DMT raw" if epsilon is None else f"DMT local DP ε={epsilon:g}"
        model, batches, info = dmt_model_for(sim, foundation, epsilon, seed,
                                             settings["dmt_learning_rate"])
        sizes, seal_seconds = sealed_sizes(sim, batches)
        result = personalize_users(model, sim, current)
        del result["personal_models"]
        rows[name] = result | {
            "epsilon": info.get("user_epsilon"),
            "guarantee": "no formal DP" if epsilon is None else
            "local DP on the device (Laplace, δ = 0), charged to the user's ledger",
            "sent_bytes": float(np.mean(sizes)), "received_bytes": 2.0 * model_bytes,
            "rounds": 1,
            "device_seconds": held["personalize_seconds"] + seal_seconds
            + result["personalize_seconds"],
            "membership": membership(model, shared, tests, seed)}
        print(f"  {name}: {result['rmse']:.2f} ({result['rmse_released']:.2f} released, "
              f"{result['moved']:.0%} adopted)", flush=True)
    fedavg, fedprox, dp = fl_strategies(settings, seed, rounds)
    trained = pd.concat([u.train for u in sim.users])
    runs = [("FedAvg", fedavg, None), ("FedProx", fedprox, None)]
    runs += [(f"DP-FedAvg ε={e:g}", dp(e), e) for e in epsilons]
    for name, strategy, epsilon in runs:
        result = federated(sim, strategy, foundation)
        personal = personalize_users(result.foundation, sim, current)
        del personal["personal_models"]
        cost = fl_cost(result, strategy.base, len(sim.users), model_bytes)
        rows[name] = personal | cost | {
            "epsilon": result.epsilon,
            "guarantee": "no formal DP" if epsilon is None else
            "central DP: Gaussian noise on the clipped sum of the users' updates (Flower), "
            "Opacus RDP accountant, δ = 1e-5",
            "device_seconds": held["personalize_seconds"] + cost["train_seconds"]
            + personal["personalize_seconds"],
            "membership": membership(result.foundation, trained, tests, seed)}
        print(f"  {name}: {personal['rmse']:.2f} ({personal['rmse_released']:.2f} released, "
              f"{personal['moved']:.0%} adopted)", flush=True)
    return rows


# --- summary, table, plots -------------------------------------------------------------
METRICS = ("rmse", "rmse_released", "moved", "sent_bytes", "received_bytes", "device_seconds")


def summarize(per_seed: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Mean ± std over seeds of each metric; the membership advantage's mean over seeds with
    a 95 % interval combined from the seeds' (independent) intervals."""
    out: dict[str, dict[str, Any]] = {}
    for name in per_seed[0]:
        runs = [seed[name] for seed in per_seed]
        row: dict[str, Any] = {"epsilon": runs[0]["epsilon"], "guarantee": runs[0]["guarantee"],
                               "rounds": runs[0]["rounds"]}
        for metric in METRICS:
            values = [r[metric] for r in runs]
            row[metric] = {"mean": statistics.mean(values),
                           "std": statistics.stdev(values) if len(values) > 1 else 0.0}
        attacks = [r["membership"] for r in runs if r["membership"] is not None]
        if attacks:
            mean = statistics.mean(a["advantage"] for a in attacks)
            half = float(np.sqrt(sum(((a["advantage_high"] - a["advantage_low"]) / 2) ** 2
                                     for a in attacks)) / len(attacks))
            row["membership_advantage"] = {"mean": mean, "ci": [mean - half, mean + half]}
        out[name] = row
    return out


def table(summary: dict[str, dict[str, Any]], seeds: int) -> str:
    def kb(value: float) -> str:
        return "0" if value == 0 else f"{value / 1024:,.1f} KB"

    lines = ["| method | user-level ε | users' RMSE | released model RMSE | adopted "
             "| device sends | device receives | device CPU s "
             "| membership advantage (95 % CI) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, row in summary.items():
        epsilon = ("0" if row["epsilon"] == 0 else "no formal DP" if row["epsilon"] is None
                   else f"{row['epsilon']:.2f}")
        attack = row.get("membership_advantage")
        attack_text = "—" if attack is None else (
            f"{attack['mean']:+.3f} [{attack['ci'][0]:+.3f}, {attack['ci'][1]:+.3f}]")
        lines.append(
            f"| {name} | {epsilon} | {row['rmse']['mean']:.2f} ± {row['rmse']['std']:.2f} "
            f"| {row['rmse_released']['mean']:.2f} ± {row['rmse_released']['std']:.2f} "
            f"| {row['moved']['mean']:.0%} | {kb(row['sent_bytes']['mean'])} "
            f"| {kb(row['received_bytes']['mean'])} "
            f"| {row['device_seconds']['mean']:.2f} | {attack_text} |")
    return (f"Mean ± std over {seeds} seed{'s' if seeds > 1 else ''} of the mean per-user "
            "test RMSE (lower is better) of the model each user holds in the end (users' "
            "RMSE) and of the released model itself; adopted: the share of users whose "
            "device moved to the new model (nothing shared: whose update was kept).\n\n"
            + "\n".join(lines) + "\n")


def plot(summary: dict[str, dict[str, Any]], epsilons: tuple[float, ...], output: Path,
         seeds: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # 1. Utility against user-level ε: DMT and DP-FedAvg at each ε, their no-DP forms at
    #    the right, nothing shared as a line.
    labels = [f"ε={e:g}" for e in epsilons] + ["no formal DP"]
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    series = [("DMT (share half, local DP)", [f"DMT local DP ε={e:g}" for e in epsilons]
               + ["DMT raw"], -0.08, "o"),
              ("DP-FedAvg / FedAvg (Flower)", [f"DP-FedAvg ε={e:g}" for e in epsilons]
               + ["FedAvg"], 0.0, "s"),
              ("FedProx (Flower)", [None] * len(epsilons) + ["FedProx"], 0.08, "^")]
    for (label, names, shift, marker), colour in zip(series, ("C0", "C1", "C2"), strict=True):
        points = [(i + shift, summary[n]["rmse"]) for i, n in enumerate(names) if n]
        private, plain = points[:-1], points[-1]  # the ε points joined; no formal DP apart
        if private:
            ax.errorbar([p[0] for p in private], [p[1]["mean"] for p in private],
                        yerr=[p[1]["std"] for p in private], marker=marker, capsize=4,
                        color=colour, label=label)
        ax.errorbar([plain[0]], [plain[1]["mean"]], yerr=[plain[1]["std"]], marker=marker,
                    capsize=4, color=colour, linestyle="none",
                    label=None if private else label)
    nothing = summary["nothing shared"]["rmse"]
    ax.axhline(nothing["mean"], color="grey", linestyle="--",
               label="nothing shared (ε = 0)")
    ax.axhspan(nothing["mean"] - nothing["std"], nothing["mean"] + nothing["std"],
               color="grey", alpha=0.15)
    ax.set_xticks(x, labels)
    ax.set_xlabel("user-level privacy cost")
    ax.set_ylabel("per-user test RMSE of the model users hold")
    ax.set_title(f"Which approach gives users the better model?\nFriedman #2 regression, "
                 f"{seeds} seed{'s' if seeds > 1 else ''}, mean ± std", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    fig.savefig(output / "federated_protocol_utility.png", dpi=120)
    plt.close(fig)

    # 2. Cost to a device: bytes sent and received.
    names = list(summary)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    y = np.arange(len(names))
    for offset, metric, label in ((-0.2, "sent_bytes", "sent"),
                                  (0.2, "received_bytes", "received")):
        kb = [summary[n][metric]["mean"] / 1024 for n in names]
        ax.barh(y + offset, kb, height=0.4, label=label)
        for position, value in zip(y + offset, kb, strict=True):
            ax.text(value * 1.1 if value else 0.12, position, f"{value:.1f}" if value else "0",
                    va="center", fontsize=7)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlim(0.1, 4 * max(summary[n]["received_bytes"]["mean"] for n in names) / 1024)
    ax.set_xlabel("KB per device (mean over users; log scale)")
    ax.set_title("What each approach costs a device in traffic")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(output / "federated_protocol_cost.png", dpi=120)
    plt.close(fig)

    # 3. Membership-inference advantage on each released model.
    attacked = [n for n in names if "membership_advantage" in summary[n]]
    fig, ax = plt.subplots(figsize=(8, 4))
    means = [summary[n]["membership_advantage"]["mean"] for n in attacked]
    cis = [summary[n]["membership_advantage"]["ci"] for n in attacked]
    ax.errorbar(means, np.arange(len(attacked)),
                xerr=[[m - c[0] for m, c in zip(means, cis, strict=True)],
                      [c[1] - m for m, c in zip(means, cis, strict=True)]],
                fmt="o", capsize=4)
    ax.axvline(0.0, color="grey", linestyle="--")
    ax.set_yticks(np.arange(len(attacked)), attacked)
    ax.invert_yaxis()
    ax.set_xlabel("membership-inference advantage (TPR − FPR), 95 % CI")
    ax.set_title("How much each released model gives away about its training records")
    fig.tight_layout()
    fig.savefig(output / "federated_protocol_membership.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default 5)")
    parser.add_argument("--users", type=int, help="users (default 120; --quick: 60)")
    parser.add_argument("--rows", type=int, default=6000)
    parser.add_argument("--proxy-fraction", type=float, default=0.03)
    parser.add_argument("--proxy-region", type=float, default=0.6)
    parser.add_argument("--spread", type=float, default=0.3)
    parser.add_argument("--epsilons", type=float, nargs="+", default=list(EPSILONS),
                        help="user-level ε of the DP rows (default 1 4 8)")
    parser.add_argument("--rounds", type=int,
                        help="FedAvg/FedProx rounds (default 30; --quick: 10)")
    parser.add_argument("--quick", action="store_true", help="1 seed, 60 users, 10 rounds")
    parser.add_argument("--tune", action="store_true",
                        help="choose the hyperparameters on seeds 100 and 101 (not reported)")
    parser.add_argument("--describe-only", action="store_true",
                        help="print the protocol's shape, train nothing")
    parser.add_argument("--output", type=Path, default=RESULTS,
                        help="folder for the results (default benchmarks/results)")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds = 1
    args.users = args.users or (60 if args.quick else 120)
    args.rounds = args.rounds or (10 if args.quick else 30)
    if args.tune:
        tune(args)
        return
    epsilons = tuple(args.epsilons)
    settings = settings_from(args.output)
    print(f"hyperparameters ({'tuned on seeds 100, 101' if settings['tuned'] else 'untuned'})"
          f": {settings}", flush=True)
    started = time.perf_counter()
    shapes, per_seed = [], []
    for seed in range(args.seeds):
        data = load_friedman(args.rows, seed=seed)
        sim = open_protocol(data, n_users=args.users, proxy_fraction=args.proxy_fraction,
                            proxy_region=args.proxy_region, spread=args.spread, seed=seed)
        shapes.append(describe(sim, args.proxy_region))
        print(f"seed {seed}: {json.dumps(shapes[-1])}", flush=True)
        if args.describe_only:
            continue
        per_seed.append(run_seed(sim, seed, rounds=args.rounds, epsilons=epsilons,
                                 settings=settings))
        print(f"seed {seed} done ({time.perf_counter() - started:.0f} s)", flush=True)
    args.output.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "protocol": {k: v for k, v in vars(args).items() if k != "output"},
        "hyperparameters": settings, "shape_per_seed": shapes}
    if per_seed:
        summary = summarize(per_seed)
        markdown = table(summary, len(per_seed))
        print(markdown)
        (args.output / "federated_protocol.md").write_text(markdown)
        plot(summary, epsilons, args.output, len(per_seed))
        result |= {"summary": summary, "per_seed": per_seed}
    result["seconds"] = time.perf_counter() - started
    (args.output / "federated_protocol.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {args.output / 'federated_protocol.json'} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
