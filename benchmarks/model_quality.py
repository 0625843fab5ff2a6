"""Model quality and speed of the device side, on three regression data sets.

Measures, in one run:

1. the foundation's test RMSE/MAE on the reference app's 80/20 split of
   Boston (405 train / 101 test rows), 5 seeds, trained as the SDK trains a
   regression by default (stopped early since 7 December;
   ``benchmarks/foundation_training.py`` sets it beside the reference's 500 fixed
   epochs);
2. how closely the exported plain and updatable Core ML models (run through
   the numpy evaluator on raw inputs) match the torch foundation on all rows;
3. one emulated update with the default settings on 50 records, beside a
   plain-torch fine-tune of the same layer on the same batches (the peer);
4. scale invariance: Boston with its target × 1000 gives the same relative
   per-user result;
5. personalization on the simulated-user protocol (design.md), on Boston,
   star98 and Friedman #2 (``dmt_model.datasets.REGRESSION_DATASETS``), 5
   seeds, h ∈ {0, 0.15, 0.3}: the foundation, the oracle that knows each
   user's factor, and ``personalize()`` with the defaults under the loss
   conventions a device might use (mean over the batch, ½·mean; the sum over
   a batch of one is the mean, checked on seed 0 to be the same update); how
   often a kept update raised the user's test error, how often a discarded
   one would have lowered it, and how often the oracle itself raises it (the
   test sets hold 4–6 records a user);
6. the full loop (``dmt_model.loop.run_loop``: share with k = 5 and the
   target under local DP at ε = 1 per record, ingest, retrain, gate, adopt on
   all local records) against personalizing v1 with nothing shared; on Friedman #2,
   whose function is known, each adopter's expected error before and after adopting
   too (3,000 fresh noiseless records in the user's own range of ``x0``), since a test
   set of about 5 noisy records says little about one user;
7. with ExecuTorch installed (the ``executorch`` extra): the same users
   personalized with the same seeds through a ``.pte`` trained in
   ExecuTorch's runtime, beside the Core ML emulation (mean MSE), user by
   user; and one update of 50 records × 500 epochs timed in both.

v1 is trained on 80 % of the proxy data in every section from 5 on; the
other 20 % is the server's validation data for the gate.

Writes ``model_quality.json``, ``.md`` (the README's tables) and ``.png`` into
``--output`` (default ``benchmarks/results``).
Run: ``.venv/bin/python benchmarks/model_quality.py [--seeds 5] [--workers 2]
[--output DIR]`` (about 20 minutes on 2 cores; ``--seeds 1 --datasets boston
--spreads 0.15`` for a quick check; ``--plot-only`` rewrites the tables and the plot from
the saved JSON; ``--executorch-only`` runs sections 5 and 7 alone, without the loop, into
``model_quality_executorch.json`` and ``.md``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
SPREADS = (0.0, 0.15, 0.3)
USERS = {"boston": 20, "star98": 10, "friedman": 20}
CONVENTIONS = ("mean", "half")


def rmse(predicted, actual) -> float:
    return float(np.sqrt(np.mean((np.asarray(predicted, float) - np.asarray(actual, float)) ** 2)))


def _convention(name: str):
    from dmt_model.personalize import LossConvention

    return {"mean": LossConvention(), "sum": LossConvention(reduction="sum"),
            "half": LossConvention(half=True)}[name]


# --- 1–4: the foundation, parity, speed, scale -------------------------------------------------

def foundation_protocol(seeds: int) -> dict:
    from dmt_model.datasets import BOSTON_SCHEMA, load_boston
    from dmt_model.foundation import TrainingConfig, train_foundation

    data = load_boston()
    rows = []
    for seed in range(seeds):
        order = np.random.default_rng(seed).permutation(len(data))
        train, test = data.iloc[order[:405]], data.iloc[order[405:]]
        started = time.perf_counter()
        model = train_foundation(train, BOSTON_SCHEMA,
                                 TrainingConfig.for_schema(BOSTON_SCHEMA, seed=seed,
                                                           records=len(train)))
        metrics = model.evaluate(test)
        rows.append({"seed": seed, "rmse": metrics.rmse, "mae": metrics.mae,
                     "train_seconds": time.perf_counter() - started})
    out = {"runs": rows,
           "rmse_mean": statistics.mean(r["rmse"] for r in rows),
           "rmse_std": statistics.stdev(r["rmse"] for r in rows) if len(rows) > 1 else 0.0,
           "mae_mean": statistics.mean(r["mae"] for r in rows),
           "reference_app_rmse": 4.36, "target_rmse": 3.3}
    print(f"foundation, Boston 80/20 split, {seeds} seeds: RMSE {out['rmse_mean']:.3f} ± "
          f"{out['rmse_std']:.3f}, MAE {out['mae_mean']:.3f} (reference app 4.36; target ≤ 3.3)")
    return out


def parity() -> dict:
    from dmt_model.coreml import UpdateSettings, export_coreml, load_spec, predict_frame
    from dmt_model.datasets import BOSTON_SCHEMA, load_boston
    from dmt_model.foundation import TrainingConfig, train_foundation

    data = load_boston()
    model = train_foundation(data, BOSTON_SCHEMA, TrainingConfig.for_schema(BOSTON_SCHEMA,
                                                                        records=len(data)))
    expected = model.predict(data)
    out = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, settings in (("plain", None), ("updatable", UpdateSettings())):
            path = export_coreml(model, Path(folder) / f"{name}.mlmodel", updatable=settings)
            got = predict_frame(load_spec(path), data)
            out[name] = float(np.max(np.abs(got - expected) / np.abs(expected)))
    print(f"exported vs torch on 506 rows, max relative difference: plain {out['plain']:.2e}, "
          f"updatable {out['updatable']:.2e} (target ≤ 1e-5)")
    return out


def torch_fine_tune(spec, frame, settings, target: str) -> None:
    """The peer: a plain-torch fine-tune of the same updatable layers on the same batches."""
    import torch

    from dmt_model.coreml import updatable_layers
    from dmt_model.coreml.evaluate import evaluate_spec
    from dmt_model.coreml.weights import get_inner_product
    from dmt_model.personalize import batch_order

    torch.set_num_threads(1)
    names = updatable_layers(spec)
    inputs = {f.name: frame[f.name].to_numpy(float) for f in spec.description.input}
    start = next(la.input[0] for la in spec.neuralNetwork.layers if la.name == names[0])
    (features,) = evaluate_spec(spec, inputs, outputs=[start]).values()
    modules: list = []
    for name in names:
        weight, bias = get_inner_product(spec, name)
        linear = torch.nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(weight))
            linear.bias.copy_(torch.from_numpy(bias))
        modules.append(linear)
        if name.startswith("dense_") and name != "dense_2":
            modules.append(torch.nn.ReLU())
    net = torch.nn.Sequential(*modules)
    optimizer = torch.optim.SGD(net.parameters(), lr=settings.learning_rate)
    x = torch.from_numpy(features)
    y = torch.from_numpy(frame[target].to_numpy(np.float32))
    for batches in batch_order(len(frame), batch_size=settings.batch_size,
                               epochs=settings.epochs, shuffle=True, seed=0):
        for index in batches:
            index = torch.from_numpy(index)
            optimizer.zero_grad()
            torch.mean((net(x[index]).squeeze(1) - y[index]) ** 2).backward()
            optimizer.step()


def update_speed() -> dict:
    from dmt_model.coreml import UpdateSettings, build_spec
    from dmt_model.datasets import BOSTON_SCHEMA, load_boston
    from dmt_model.foundation import TrainingConfig, train_foundation
    from dmt_model.personalize import update_spec

    data = load_boston()
    model = train_foundation(data.iloc[:152], BOSTON_SCHEMA, TrainingConfig(epochs=50))
    settings = UpdateSettings()
    spec = build_spec(model, updatable=settings)
    records = data.iloc[200:250]
    ours, peer = [], []
    for _ in range(5):
        started = time.perf_counter()
        update_spec(spec, records)
        ours.append(time.perf_counter() - started)
        started = time.perf_counter()
        torch_fine_tune(spec, records, settings, "MEDV")
        peer.append(time.perf_counter() - started)
    out = {"records": 50, "epochs": settings.epochs, "batch_size": settings.batch_size,
           "updatable_layers": settings.updatable_layers,
           "dmt_seconds_median": statistics.median(ours),
           "torch_seconds_median": statistics.median(peer), "target_seconds": 0.5}
    out["speedup_vs_torch"] = out["torch_seconds_median"] / out["dmt_seconds_median"]
    print(f"one default update, 50 records × {settings.epochs} epochs (batch "
          f"{settings.batch_size}): dmt {out['dmt_seconds_median']:.3f} s, plain torch "
          f"{out['torch_seconds_median']:.3f} s ({out['speedup_vs_torch']:.1f}× faster; "
          "target < 0.5 s)")
    return out


def executorch_available() -> bool:
    try:
        import executorch.extension.training  # noqa: F401
    except ImportError:
        return False
    return True


def executorch_update_speed(repeats: int = 3) -> dict:
    """One update of 50 records × 500 epochs (otherwise the default settings: the personal
    head, SGD, batch 1) in ExecuTorch's runtime and in the Core ML emulation."""
    from dmt_model.coreml import UpdateSettings, build_spec
    from dmt_model.coreml.weights import get_weights
    from dmt_model.datasets import BOSTON_SCHEMA, load_boston
    from dmt_model.executorch import export_executorch, load_program
    from dmt_model.foundation import TrainingConfig, train_foundation
    from dmt_model.personalize import update_spec

    data = load_boston()
    model = train_foundation(data.iloc[:152], BOSTON_SCHEMA, TrainingConfig(epochs=50))
    settings = UpdateSettings(epochs=500)
    spec = build_spec(model, updatable=settings)
    records = data.iloc[200:250]
    with tempfile.TemporaryDirectory() as folder:
        program = load_program(export_executorch(model, Path(folder) / "v1.pte",
                                                 updatable=settings))
    emulation, runtime = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        emulated, _ = update_spec(spec, records)
        emulation.append(time.perf_counter() - started)
        started = time.perf_counter()
        trained, _ = program.updated(records)
        runtime.append(time.perf_counter() - started)
    weight, bias, _ = get_weights(emulated, "personal_head")
    out = {"records": 50, "epochs": settings.epochs, "batch_size": settings.batch_size,
           "updatable_layers": settings.updatable_layers,
           "emulation_seconds_median": statistics.median(emulation),
           "executorch_seconds_median": statistics.median(runtime),
           "largest_relative_parameter_difference": max(
               float(np.max(np.abs(trained.parameters[f"personal_head.{k}"].reshape(-1)
                                   - v.reshape(-1)) / np.abs(v).max()))
               for k, v in (("weight", weight), ("bias", bias)))}
    out["executorch_over_emulation"] = (out["executorch_seconds_median"]
                                        / out["emulation_seconds_median"])
    print(f"one update, 50 records × 500 epochs (batch 1): ExecuTorch runtime "
          f"{out['executorch_seconds_median']:.3f} s, Core ML emulation "
          f"{out['emulation_seconds_median']:.3f} s (ratio "
          f"{out['executorch_over_emulation']:.2f}, target ≤ 1); parameters agree to "
          f"{out['largest_relative_parameter_difference']:.1e}")
    return out


def scale_invariance() -> dict:
    """Per-user RMSE before and after personalize() on Boston and on Boston with MEDV × 1000."""
    import dataclasses

    from dmt_model.coreml import UpdateSettings, export_coreml, load_spec, predict_frame
    from dmt_model.datasets import BOSTON_SCHEMA, load_boston, simulate_users
    from dmt_model.foundation import TrainingConfig, train_foundation
    from dmt_model.personalize import personalize
    from dmt_privacy.schema import Schema

    scaled_schema = Schema(name="boston-x1000", fields=tuple(
        dataclasses.replace(f, bounds=(0.0, 60_000.0), grid=100.0) if f.name == "MEDV" else f
        for f in BOSTON_SCHEMA))
    sim = simulate_users(load_boston(), spread=0.15, seed=0)
    errors: dict[float, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for factor, schema in ((1.0, BOSTON_SCHEMA), (1000.0, scaled_schema)):
            proxy = sim.proxy.assign(MEDV=sim.proxy["MEDV"] * factor)
            model = train_foundation(proxy, schema,
                                     TrainingConfig.for_schema(schema, records=len(proxy)))
            path = export_coreml(model, Path(folder) / f"v1-{factor:g}.mlmodel",
                                 updatable=UpdateSettings())
            errors[factor] = []
            for user in sim.users:
                personal = Path(folder) / f"user-{factor:g}.mlmodel"
                shutil.copyfile(path, personal)
                personalize(personal, user.train.assign(MEDV=user.train["MEDV"] * factor))
                y = user.test["MEDV"].to_numpy() * factor
                errors[factor].append(
                    (rmse(predict_frame(load_spec(path), user.test), y) / factor,
                     rmse(predict_frame(load_spec(personal), user.test), y) / factor))
    plain, scaled = np.array(errors[1.0]), np.array(errors[1000.0])
    difference = float(np.max(np.abs(plain - scaled) / plain))
    out = {"foundation": float(plain[:, 0].mean()), "personal": float(plain[:, 1].mean()),
           "foundation_x1000": float(scaled[:, 0].mean()) * 1000,
           "personal_x1000": float(scaled[:, 1].mean()) * 1000,
           "max_relative_per_user_difference": difference}
    print(f"scale invariance, Boston seed 0, h = 0.15: mean per-user RMSE foundation → "
          f"personal {out['foundation']:.4f} → {out['personal']:.4f}; with MEDV × 1000 "
          f"{out['foundation_x1000']:.1f} → {out['personal_x1000']:.1f}; largest per-user "
          f"relative difference {difference:.1e}")
    return out


# --- 5–6: personalization and the full loop, one task per data set, spread and seed -----------

def _personalization(dataset, sim, v1_path: Path, folder: Path, seed: int,
                     conventions: tuple[str, ...], pte_path: Path | None = None) -> dict:
    from dmt_model.coreml import load_spec, predict_frame
    from dmt_model.personalize import personalize, update_spec, with_prior

    v1 = load_spec(v1_path)
    out: dict = {c: [] for c in conventions}
    out["users"] = []
    if pte_path is not None:
        out["executorch"] = []
    for user in sim.users:
        y = user.test[dataset.target].to_numpy()
        base = predict_frame(v1, user.test)
        out["users"].append({"foundation": rmse(base, y), "oracle": rmse(base * user.factor, y)})
        for name in conventions:
            personal = folder / f"{name}.mlmodel"
            shutil.copyfile(v1_path, personal)
            started = time.perf_counter()
            result = personalize(personal, user.train, seed=seed, convention=_convention(name))
            seconds = time.perf_counter() - started
            # The update the rule judged, kept or not: the same deterministic run.
            prior = result.prior_records if result.prior_records is not None else 0
            candidate, _ = update_spec(v1, with_prior(v1, user.train, prior),
                                       convention=_convention(name))
            out[name].append({"kept": result.accepted, "prior_records": prior, "seconds": seconds,
                              "rmse": rmse(predict_frame(load_spec(personal), user.test), y),
                              "candidate_rmse": rmse(predict_frame(candidate, user.test), y)})
        if pte_path is not None:
            out["executorch"].append(_executorch_user(pte_path, folder, user, y, seed))
    return out


def _executorch_user(pte_path: Path, folder: Path, user, y, seed: int) -> dict:
    """``personalize()`` on the user's copy of the ``.pte``: trained in ExecuTorch's runtime."""
    from dmt_model.executorch import load_program
    from dmt_model.personalize import personalize

    personal = folder / "personal.pte"
    shutil.copyfile(pte_path, personal)
    started = time.perf_counter()
    result = personalize(personal, user.train, seed=seed)
    return {"kept": result.accepted, "prior_records": result.prior_records,
            "seconds": time.perf_counter() - started,
            "rmse": rmse(load_program(personal).predict(user.test), y)}


def run_task(task: tuple[str, float, int, bool]) -> dict:
    import torch

    from dmt_model.coreml import UpdateSettings, export_coreml
    from dmt_model.datasets import REGRESSION_DATASETS, simulate_users
    from dmt_model.foundation import TrainingConfig, train_foundation
    from dmt_model.loop import run_loop
    from dmt_model.server.retrain import validation_split

    torch.set_num_threads(1)
    name, spread, seed, with_loop = task
    dataset = REGRESSION_DATASETS[name]
    started = time.perf_counter()
    sim = simulate_users(dataset.load(), n_users=USERS[name], spread=spread, seed=seed,
                         location=dataset.location, target=dataset.target)
    proxy, _ = validation_split(sim.proxy, seed=seed)
    config = TrainingConfig.for_schema(dataset.schema, seed=seed, records=len(proxy))
    v1 = train_foundation(proxy, dataset.schema, config)
    folder = Path(tempfile.mkdtemp(prefix="dmt-bench-"))
    try:
        v1_path = export_coreml(v1, folder / "v1.mlmodel", updatable=UpdateSettings())
        pte_path = None
        if executorch_available():
            from dmt_model.executorch import export_executorch

            pte_path = export_executorch(v1, folder / "v1.pte", updatable=UpdateSettings())
        conventions = CONVENTIONS + (("sum",) if seed == 0 else ())
        if not with_loop:
            conventions = ("mean",)
        personalization = _personalization(dataset, sim, v1_path, folder, seed, conventions,
                                           pte_path)
        before_adoption: dict[str, bytes] = {}
        expected: dict[int, tuple[float, float]] = {}
        if with_loop:
            with _kept_before_adoption(before_adoption):
                loop = run_loop(sim, dataset.schema,
                                quasi_identifiers=dataset.quasi_identifiers,
                                workdir=folder / "loop", seed=seed, config=config, foundation=v1)
            if name == "friedman":
                expected = _expected_adoption(sim, loop, before_adoption, seed)
        else:
            loop = None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    out = {"dataset": name, "spread": spread, "seed": seed,
           "seconds": time.perf_counter() - started, "personalization": personalization}
    if loop is None:
        return out
    return {**out,
            "loop": {"v1_validation_rmse": loop.v1_validation_rmse,
                     "v2_validation_rmse": loop.v2_validation_rmse,
                     "v2_published": loop.v2_published,
                     "records_released": loop.records_released,
                     "records_quarantined": loop.records_quarantined,
                     "users": [{**vars(u), **_expected_fields(expected.get(u.user_id))}
                               for u in loop.users]}}


def _expected_fields(pair: tuple[float, float] | None) -> dict:
    return {} if pair is None else {"expected_personal": pair[0], "expected_final": pair[1]}


@contextmanager
def _kept_before_adoption(into: dict[str, bytes]) -> Iterator[None]:
    """While open, every device's personal model is kept (its bytes, by path) as it was
    before ``adopt_new_version`` ran on it: the loop overwrites it when the device adopts.
    (``run_loop`` looks ``adopt_new_version`` up in its module when it runs.)"""
    import dmt_model.personalize as personalize_module

    adopt = personalize_module.adopt_new_version

    def keeping(*args: Any, **kwargs: Any) -> Any:
        personal = args[1] if len(args) > 1 else kwargs["personal_model_path"]
        into[str(personal)] = Path(personal).read_bytes()
        return adopt(*args, **kwargs)

    personalize_module.adopt_new_version = keeping
    try:
        yield
    finally:
        personalize_module.adopt_new_version = adopt


def _expected_adoption(sim: Any, loop: Any, before_adoption: dict[str, bytes], seed: int
                       ) -> dict[int, tuple[float, float]]:
    """Each Friedman #2 user who adopted v2: the RMSE of the personal model before and after
    adopting against the noiseless function (``make_friedman2`` without noise: the user's
    expected error less the data's noise), on 3,000 fresh records in the user's own range
    of ``x0`` (the location users are cut by), the target × the user's factor. A user's test
    set holds about 5 records of noise 60: whether an adoption raised it says little about
    the user's expected error."""
    import pandas as pd
    from sklearn.datasets import make_friedman2

    from dmt_model.coreml import load_spec, predict_frame, spec_from_bytes

    x, y = make_friedman2(n_samples=400_000, noise=0.0, random_state=10_000 + seed)
    fresh = pd.DataFrame(x, columns=["x0", "x1", "x2", "x3"]).assign(y=y)
    out = {}
    for user in sim.users:
        outcome = next(u for u in loop.users if u.user_id == user.user_id)
        if not outcome.adopted:
            continue
        path = str(loop.devices[user.user_id])
        own = pd.concat([user.shareable, user.private, user.test])["x0"]
        pool = fresh[fresh["x0"].between(own.min(), own.max())].iloc[:3000]
        if len(pool) < 3000:
            raise RuntimeError(f"User {user.user_id}: only {len(pool)} of 400,000 fresh records "
                               f"fall in its x0 range [{own.min():.3g}, {own.max():.3g}]; "
                               "draw more (n_samples) or use fewer records per user.")
        pool = pool.assign(y=pool["y"] * user.factor)
        out[user.user_id] = tuple(
            float(np.sqrt(np.mean((predict_frame(model, pool) - pool["y"]) ** 2)))
            for model in (spec_from_bytes(before_adoption[path], source=path),
                          load_spec(path)))
    return out


def summarize(tasks: list[dict]) -> dict:
    """Means over users, then mean ± std over seeds, per data set and spread."""
    summary: dict = {}
    for name in USERS:
        for spread in SPREADS:
            runs = [t for t in tasks if t["dataset"] == name and t["spread"] == spread]
            if not runs:
                continue

            def over_seeds(values: list[float]) -> dict:
                return {"mean": statistics.mean(values),
                        "std": statistics.stdev(values) if len(values) > 1 else 0.0}

            cell: dict = {}
            p = [t["personalization"] for t in runs]
            cell["foundation"] = over_seeds([np.mean([u["foundation"] for u in r["users"]])
                                             for r in p])
            cell["oracle"] = over_seeds([np.mean([u["oracle"] for u in r["users"]]) for r in p])
            with_sum = [r for r in p if "sum" in r]
            if with_sum:  # a summed MSE over a batch of one is the mean: the same update
                cell["sum vs mean, largest per-user difference"] = max(
                    abs(a["rmse"] - b["rmse"]) for r in with_sum
                    for a, b in zip(r["sum"], r["mean"], strict=True))
                cell["sum vs mean, decisions that differ"] = sum(
                    a["kept"] != b["kept"] for r in with_sum
                    for a, b in zip(r["sum"], r["mean"], strict=True))
            for conv in ("mean", "half"):
                have = [r for r in p if conv in r]
                if not have:
                    continue
                cell[f"personalize ({conv})"] = over_seeds(
                    [np.mean([u["rmse"] for u in r[conv]]) for r in have])
                kept = [(u, base) for r in have for u, base in zip(r[conv], r["users"],
                                                                    strict=True) if u["kept"]]
                dropped = [(u, base) for r in have for u, base in zip(r[conv], r["users"],
                                                                      strict=True)
                           if not u["kept"]]
                cell[f"rule ({conv})"] = {
                    "kept": len(kept), "users": len(kept) + len(dropped),
                    "kept_that_raised_test_error": sum(u["rmse"] > b["foundation"]
                                                       for u, b in kept),
                    "discarded_that_would_have_lowered_it": sum(
                        u["candidate_rmse"] < b["foundation"] for u, b in dropped),
                    "discarded": len(dropped)}
            oracle_raised = sum(u["oracle"] > u["foundation"] for r in p for u in r["users"])
            cell["oracle_raised_test_error"] = {"users": oracle_raised,
                                                "of": sum(len(r["users"]) for r in p)}
            if all("executorch" in r for r in p):
                cell.update(_executorch_cells(p, over_seeds))
            if "loop" not in runs[0]:
                summary.setdefault(name, {})[str(spread)] = cell
                continue
            loops = [t["loop"] for t in runs]
            cell["loop: personal v1, nothing shared"] = over_seeds(
                [np.mean([u["personal"] for u in lp["users"]]) for lp in loops])
            cell["loop: after sharing, gate, adoption"] = over_seeds(
                [np.mean([u["final"] for u in lp["users"]]) for lp in loops])
            adoptions = [(u["final"], u["personal"]) for lp in loops for u in lp["users"]
                         if u["adopted"]]
            cell["loop: adoption"] = {
                "v2_published_runs": sum(lp["v2_published"] for lp in loops),
                "runs": len(loops), "adopted": len(adoptions),
                "users": sum(len(lp["users"]) for lp in loops),
                "adoptions_that_raised_test_error": sum(f > p_ for f, p_ in adoptions),
                "largest_raise_relative": max([f / p_ - 1 for f, p_ in adoptions],
                                              default=0.0),
                **_expected_cells([u for lp in loops for u in lp["users"]
                                   if u["adopted"] and "expected_final" in u]),
                "records_released_mean": statistics.mean(lp["records_released"]
                                                         for lp in loops),
                "epsilon_spent_per_user_mean": float(np.mean(
                    [u["epsilon_spent"] for lp in loops for u in lp["users"]]))}
            summary.setdefault(name, {})[str(spread)] = cell
    return summary


def _expected_cells(adopters: list[dict]) -> dict:
    """What adopting did to the adopters' expected error (Friedman #2 only)."""
    if not adopters:
        return {}
    change = [u["expected_final"] / u["expected_personal"] - 1 for u in adopters]
    return {"expected_adopters": len(adopters),
            "adoptions_that_raised_expected_error": sum(c > 0 for c in change),
            "largest_expected_raise_relative": max(change),
            "adopters_expected_change": float(np.mean(
                [u["expected_final"] for u in adopters]) / np.mean(
                [u["expected_personal"] for u in adopters]) - 1)}


def _executorch_cells(p: list[dict], over_seeds) -> dict:
    """ExecuTorch's runtime beside the emulation (mean MSE), the same users and seeds."""
    pairs = [(e, m) for r in p for e, m in zip(r["executorch"], r["mean"], strict=True)]
    return {
        "personalize (executorch)": over_seeds([np.mean([u["rmse"] for u in r["executorch"]])
                                                for r in p]),
        "executorch vs emulation": {
            "users": len(pairs),
            "largest_per_user_rmse_difference": max(abs(e["rmse"] - m["rmse"])
                                                    for e, m in pairs),
            "largest_per_user_relative_difference": max(abs(e["rmse"] / m["rmse"] - 1)
                                                        for e, m in pairs),
            "decisions_that_differ": sum(e["kept"] != m["kept"] for e, m in pairs),
            "priors_that_differ": sum(e["prior_records"] != m["prior_records"]
                                      for e, m in pairs),
            "seconds_per_user_executorch": statistics.mean(e["seconds"] for e, _ in pairs),
            "seconds_per_user_emulation": statistics.mean(m["seconds"] for _, m in pairs)}}


def report(summary: dict) -> None:
    for name, by_spread in summary.items():
        print(f"\n{name}: per-user test RMSE, mean ± std over seeds")
        rows = [m for m in next(iter(by_spread.values())) if isinstance(
            next(iter(by_spread.values()))[m], dict) and "mean" in next(
            iter(by_spread.values()))[m]]
        print(f"{'':<40}" + "".join(f"{'h = ' + h:>18}" for h in by_spread))
        for m in rows:
            print(f"{m:<40}" + "".join(
                f"{by_spread[h][m]['mean']:>10.3f} ± {by_spread[h][m]['std']:<5.2f}"
                for h in by_spread))
        for h, cell in by_spread.items():
            for conv in ("mean", "half"):
                rule = cell.get(f"rule ({conv})")
                if rule:
                    print(f"  h={h} {conv}: kept {rule['kept']}/{rule['users']}, of which "
                          f"{rule['kept_that_raised_test_error']} raised the user's test error; "
                          f"{rule['discarded_that_would_have_lowered_it']} of "
                          f"{rule['discarded']} discarded would have lowered it")
            et = cell.get("executorch vs emulation")
            if et:
                print(f"  h={h} ExecuTorch runtime vs emulation, {et['users']} users: largest "
                      f"per-user RMSE difference {et['largest_per_user_rmse_difference']:.2g} "
                      f"({et['largest_per_user_relative_difference']:.1e} relative), "
                      f"{et['decisions_that_differ']} decisions differ; "
                      f"{et['seconds_per_user_executorch']:.2f} s vs "
                      f"{et['seconds_per_user_emulation']:.2f} s per user")
            if "loop: adoption" not in cell:
                continue
            o = cell["oracle_raised_test_error"]
            a = cell["loop: adoption"]
            print(f"  h={h}: the oracle itself raised the test error of {o['users']}/{o['of']} "
                  f"users; v2 published in {a['v2_published_runs']}/{a['runs']} runs, adopted "
                  f"by {a['adopted']}/{a['users']} users, {a['adoptions_that_raised_test_error']}"
                  f" of them raised their test error"
                  + (f" (largest +{a['largest_raise_relative']:.1%})"
                     if a["adoptions_that_raised_test_error"] else "")
                  + (f"; against the noiseless function on fresh records: adopters "
                     f"{a['adopters_expected_change']:+.1%}, raised for "
                     f"{a['adoptions_that_raised_expected_error']}"
                     + (f" (largest +{a['largest_expected_raise_relative']:.1%})"
                        if a["adoptions_that_raised_expected_error"] else "")
                     if "expected_adopters" in a else ""))


def markdown(result: dict) -> str:
    """The README's tables, from the results (nothing typed in)."""
    summary = result["summary"]
    lines = []
    stages = [("foundation", "foundation v1"), ("oracle", "oracle (v1 × the user's factor)"),
              ("personalize (mean)", "`personalize()`, mean MSE"),
              ("personalize (half)", "`personalize()`, ½·mean MSE"),
              ("personalize (executorch)", "`personalize()` on the `.pte`, ExecuTorch runtime"),
              ("loop: personal v1, nothing shared", "loop: personal v1, nothing shared"),
              ("loop: after sharing, gate, adoption", "loop: after sharing, gate, adoption")]
    for name, by_spread in summary.items():
        spreads = list(by_spread)
        lines += [f"**{name}** — per-user test RMSE, mean ± std over seeds "
                  f"({USERS[name]} users a seed)", "",
                  "| | " + " | ".join(f"h = {h}" for h in spreads) + " |",
                  "|---|" + "---|" * len(spreads)]
        for key, label in stages:
            if key not in by_spread[spreads[0]]:
                continue
            cells = []
            for h in spreads:
                value = by_spread[h][key]
                cell = f"{value['mean']:.3f} ± {value['std']:.2f}"
                if key == "loop: after sharing, gate, adoption":
                    versus = by_spread[h]["loop: personal v1, nothing shared"]["mean"]
                    cell += f" ({value['mean'] / versus - 1:+.1%} vs nothing shared)"
                elif key.startswith(("personalize", "loop")):
                    versus = by_spread[h]["oracle" if h != "0.0" else "foundation"]["mean"]
                    cell += f" ({value['mean'] / versus - 1:+.1%})"
                cells.append(cell)
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        for conv in ("mean", "half"):
            if f"rule ({conv})" not in by_spread[spreads[0]]:
                continue
            rules = [by_spread[h][f"rule ({conv})"] for h in spreads]
            lines.append(f"| kept updates that raised the user's test error ({conv}) | "
                         + " | ".join(f"{r['kept_that_raised_test_error']}/{r['kept']}"
                                      for r in rules) + " |")
            lines.append(f"| discarded updates that would have lowered it ({conv}) | "
                         + " | ".join(
                             f"{r['discarded_that_would_have_lowered_it']}/{r['discarded']}"
                             for r in rules) + " |")
        if "sum vs mean, largest per-user difference" in by_spread[spreads[0]]:
            lines.append("| summed MSE (seed 0): largest difference from mean MSE, decisions "
                         "that differ | " + " | ".join(
                             f"{by_spread[h]['sum vs mean, largest per-user difference']:.1g}, "
                             f"{by_spread[h]['sum vs mean, decisions that differ']}"
                             for h in spreads) + " |")
        lines.append("| users whose test error the oracle itself raises | " + " | ".join(
            f"{by_spread[h]['oracle_raised_test_error']['users']}/"
            f"{by_spread[h]['oracle_raised_test_error']['of']}" for h in spreads) + " |")
        if "executorch vs emulation" in by_spread[spreads[0]]:
            lines.append("| ExecuTorch runtime vs emulation: largest per-user RMSE difference "
                         "(relative), decisions that differ, s per user (ExecuTorch / "
                         "emulation) | " + " | ".join(
                             f"{e['largest_per_user_rmse_difference']:.1g} "
                             f"({e['largest_per_user_relative_difference']:.0e}), "
                             f"{e['decisions_that_differ']}/{e['users']}, "
                             f"{e['seconds_per_user_executorch']:.2f} / "
                             f"{e['seconds_per_user_emulation']:.2f}"
                             for e in (by_spread[h]["executorch vs emulation"]
                                       for h in spreads)) + " |")
        if "loop: adoption" not in by_spread[spreads[0]]:
            lines.append("")
            continue
        lines.append("| loop: v2 published / adopted by / adoptions that raised test error "
                     "(largest) | " + " | ".join(
                         f"{a['v2_published_runs']}/{a['runs']} runs; {a['adopted']}/{a['users']}"
                         f" users; {a['adoptions_that_raised_test_error']}"
                         + (f" (+{a['largest_raise_relative']:.0%})"
                            if a["adoptions_that_raised_test_error"] else "")
                         for a in (by_spread[h]["loop: adoption"] for h in spreads)) + " |")
        if any("expected_adopters" in by_spread[h]["loop: adoption"] for h in spreads):
            lines.append("| loop: adopters' RMSE against the noiseless function (3,000 fresh "
                         "records in their own range), change / adoptions that raised it "
                         "(largest) | " + " | ".join(
                             f"{a['adopters_expected_change']:+.1%} / "
                             f"{a['adoptions_that_raised_expected_error']} of "
                             f"{a['expected_adopters']}"
                             + (f" (+{a['largest_expected_raise_relative']:.0%})"
                                if a["adoptions_that_raised_expected_error"] else "")
                             if "expected_adopters" in a else "—"
                             for a in (by_spread[h]["loop: adoption"] for h in spreads))
                         + " |")
        lines.append("")
    lines.append("In brackets: against the oracle at h > 0 and the foundation at h = 0; the "
                 "loop's end against the same users' personal v1 with nothing shared.")
    if "executorch_update_speed" in result:
        e = result["executorch_update_speed"]
        lines += ["", f"One update of {e['records']} records × {e['epochs']} epochs (batch "
                  f"{e['batch_size']}): ExecuTorch runtime {e['executorch_seconds_median']:.3f} s,"
                  f" Core ML emulation {e['emulation_seconds_median']:.3f} s (ratio "
                  f"{e['executorch_over_emulation']:.2f}); parameters agree to "
                  f"{e['largest_relative_parameter_difference']:.1e} relative."]
    return "\n".join(lines)


def per_user_markdown(runs: list[dict]) -> str:
    """User by user, each data set and spread at its first seed: the emulation's and the
    runtime's test RMSE and decisions."""
    lines = []
    for run in runs:
        p = run["personalization"]
        if run["seed"] != min(r["seed"] for r in runs) or "executorch" not in p:
            continue
        lines += [f"**{run['dataset']}**, h = {run['spread']}, seed {run['seed']}", "",
                  "| user | foundation | emulation (kept) | ExecuTorch runtime (kept) |",
                  "|---|---|---|---|"]
        for i, (base, m, e) in enumerate(zip(p["users"], p["mean"], p["executorch"],
                                             strict=True)):
            lines.append(f"| {i} | {base['foundation']:.4f} | {m['rmse']:.4f} "
                         f"({'yes' if m['kept'] else 'no'}) | {e['rmse']:.4f} "
                         f"({'yes' if e['kept'] else 'no'}) |")
        lines.append("")
    return "\n".join(lines)


def plot(summary: dict, path: Path, seeds: int) -> None:
    """Each method's distance from the oracle in %, one panel per data set, each panel zoomed
    on the personalized methods (the foundation's distance, far larger, is in the x labels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [("personalize (mean)", "personalize(), mean MSE", "o"),
               ("personalize (half)", "personalize(), ½·MSE", "s"),
               ("loop: after sharing, gate, adoption", "after sharing + adopting v2", "D")]
    fig, axes = plt.subplots(1, len(summary), figsize=(max(4.4 * len(summary), 8.0), 4.6))
    axes = np.atleast_1d(axes)
    for ax, (name, by_spread) in zip(axes, summary.items(), strict=True):
        spreads = list(by_spread)

        def above_oracle(key: str, h: str, by: dict = by_spread) -> float:
            return 100 * (by[h][key]["mean"] / by[h]["oracle"]["mean"] - 1)

        for i, (key, label, marker) in enumerate(methods):
            x = np.arange(len(spreads)) + (i - 1) * 0.08
            ax.plot(x, [above_oracle(key, h) for h in spreads], marker=marker, label=label,
                    linewidth=1)
        ax.axhline(0.0, color="black", linewidth=1)
        ax.axhline(3.0, color="gray", linewidth=1, linestyle="--")
        ax.set_xticks(np.arange(len(spreads)))
        ax.set_xticklabels([f"h = {h}\nfoundation {above_oracle('foundation', h):+.1f} %"
                            for h in spreads], fontsize=8)
        ax.set_xlim(-0.5, len(spreads) - 0.5)
        ax.set_title(name)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("mean per-user test RMSE vs the oracle's (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(methods), fontsize=8)
    fig.suptitle(f"Per-user test RMSE above the oracle's (means over {seeds} seed"
                 f"{'' if seeds == 1 else 's'})\nsolid: the oracle, dashed: oracle + 3 %; "
                 "below 0 beats the oracle", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--datasets", default=",".join(USERS))
    parser.add_argument("--spreads", type=float, nargs="+", default=list(SPREADS),
                        help="appraisal spreads h (default 0 0.15 0.3)")
    parser.add_argument("--output", type=Path, default=RESULTS,
                        help="folder for the results (default benchmarks/results)")
    parser.add_argument("--plot-only", action="store_true",
                        help="rewrite model_quality.md and .png from OUTPUT/model_quality.json")
    parser.add_argument("--executorch-only", action="store_true",
                        help="only ExecuTorch's runtime beside the emulation (sections 5 and 7, "
                             "no loop) into OUTPUT/model_quality_executorch.json and .md")
    args = parser.parse_args()
    if args.executorch_only:
        run_executorch_only(args)
        return
    if args.plot_only:
        saved = json.loads((args.output / "model_quality.json").read_text())
        per_user = per_user_markdown(saved["runs"])  # "" for runs without ExecuTorch's
        (args.output / "model_quality.md").write_text(
            markdown(saved) + ("\n\n" + per_user if per_user else ""))
        plot(saved["summary"], args.output / "model_quality.png",
             len({run["seed"] for run in saved["runs"]}))
        print(f"wrote {args.output / 'model_quality.md'} and model_quality.png from the JSON")
        return
    args.output.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result: dict = {"foundation": foundation_protocol(args.seeds), "parity": parity(),
                    "update_speed": update_speed(), "scale_invariance": scale_invariance()}
    if executorch_available():
        result["executorch_update_speed"] = executorch_update_speed()
    tasks = [(name, h, seed, True) for name in args.datasets.split(",") for h in args.spreads
             for seed in range(args.seeds)]
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        runs = []
        for run in pool.map(run_task, tasks):
            print(f"  {run['dataset']} h={run['spread']} seed {run['seed']}: "
                  f"{run['seconds']:.0f} s", flush=True)
            runs.append(run)
    result["runs"] = runs
    result["summary"] = summarize(runs)
    result["seconds"] = time.perf_counter() - started
    report(result["summary"])
    (args.output / "model_quality.json").write_text(json.dumps(result, indent=2))
    (args.output / "model_quality.md").write_text(
        markdown(result) + ("\n\n" + per_user_markdown(runs) if executorch_available() else ""))
    plot(result["summary"], args.output / "model_quality.png", args.seeds)
    print(f"\nwrote {args.output / 'model_quality.json'} and model_quality.png "
          f"in {result['seconds'] / 60:.1f} min")


def run_executorch_only(args: argparse.Namespace) -> None:
    if not executorch_available():
        raise SystemExit("ExecuTorch is not installed: pip install 'dmt-sdk[executorch]' "
                         "(make install)")
    args.output.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result: dict = {"executorch_update_speed": executorch_update_speed()}
    tasks = [(name, h, seed, False) for name in args.datasets.split(",") for h in args.spreads
             for seed in range(args.seeds)]
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        result["runs"] = list(pool.map(run_task, tasks))
    result["summary"] = summarize(result["runs"])
    result["seconds"] = time.perf_counter() - started
    report(result["summary"])
    (args.output / "model_quality_executorch.json").write_text(json.dumps(result, indent=2))
    (args.output / "model_quality_executorch.md").write_text(
        markdown(result) + "\n\n" + per_user_markdown(result["runs"]))
    print(f"\nwrote {args.output / 'model_quality_executorch.json'} and .md in "
          f"{result['seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
