"""Model quality and speed of the device side of the loop.

Measures, in one run:

1. the foundation's test RMSE/MAE on the reference app's 80/20 split protocol
   (405 train / 101 test rows), 5 seeds;
2. how closely the exported plain and updatable Core ML models (run through
   the numpy evaluator on raw inputs) match the torch foundation on all 506 rows;
3. one emulated update of 50 records × 500 epochs, beside a plain-torch
   fine-tune of the same layers on the same batches (the peer);
4. personalization on the simulated-user protocol (design.md), 5 seeds, at
   appraisal spreads h ∈ {0, 0.15, 0.3}: the foundation, the oracle that knows
   each user's factor, several update settings trained on each user's
   training records, and the SDK's default path (``personalize`` with its
   cross-validated keep-or-discard check).

Writes ``benchmarks/results/model_quality.json`` and ``model_quality.png``.
Run: ``.venv/bin/python benchmarks/model_quality.py`` (about 3 minutes).
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dmt_model.coreml import UpdateSettings, build_spec, export_coreml, load_spec, predict_frame
from dmt_model.coreml.evaluate import evaluate_spec
from dmt_model.coreml.weights import get_inner_product
from dmt_model.datasets import BOSTON_SCHEMA, load_boston, simulate_users
from dmt_model.foundation import TrainingConfig, train_foundation
from dmt_model.personalize import batch_order, personalize, update_spec

RESULTS = Path(__file__).resolve().parent / "results"
SEEDS = range(5)
SPREADS = (0.0, 0.15, 0.3)
CONFIGS = {  # name: (updatable layers, optimizer, learning rate, batch size)
    "last layer, SGD 3e-4": (1, "sgd", 3e-4, 8),
    "last two, SGD 1e-3": (2, "sgd", 1e-3, 8),
    "last two, SGD 3e-4 (default)": (2, "sgd", 3e-4, 8),
    "last layer, Adam 1e-3": (1, "adam", 1e-3, 8),
}


def rmse(predicted, actual) -> float:
    return float(np.sqrt(np.mean((np.asarray(predicted, float) - np.asarray(actual, float)) ** 2)))


def foundation_protocol(data) -> dict:
    rows = []
    for seed in SEEDS:
        order = np.random.default_rng(seed).permutation(len(data))
        train, test = data.iloc[order[:405]], data.iloc[order[405:]]
        started = time.perf_counter()
        model = train_foundation(train, BOSTON_SCHEMA, TrainingConfig(seed=seed))
        metrics = model.evaluate(test)
        rows.append({"seed": seed, "rmse": metrics.rmse, "mae": metrics.mae,
                     "train_seconds": time.perf_counter() - started})
    out = {"runs": rows,
           "rmse_mean": statistics.mean(r["rmse"] for r in rows),
           "rmse_std": statistics.stdev(r["rmse"] for r in rows),
           "mae_mean": statistics.mean(r["mae"] for r in rows),
           "reference_app_rmse": 4.36, "target_rmse": 3.3}
    print(f"foundation, 80/20 split, 5 seeds: RMSE {out['rmse_mean']:.3f} ± {out['rmse_std']:.3f}"
          f", MAE {out['mae_mean']:.3f} (reference app 4.36; target ≤ 3.3)")
    return out


def parity(data) -> dict:
    model = train_foundation(data, BOSTON_SCHEMA, TrainingConfig(seed=0))
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


def torch_fine_tune(spec, frame, settings: UpdateSettings) -> None:
    """The peer: a plain-torch fine-tune of the same layers on the same batches."""
    torch.set_num_threads(1)
    inputs = {f.name: frame[f.name].to_numpy(float) for f in spec.description.input}
    first = f"dense_{3 - settings.updatable_layers}"
    start = next(la.input[0] for la in spec.neuralNetwork.layers if la.name == first)
    (features,) = evaluate_spec(spec, inputs, outputs=[start]).values()
    modules = []
    for i in range(3 - settings.updatable_layers, 3):
        weight, bias = get_inner_product(spec, f"dense_{i}")
        linear = torch.nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(weight))
            linear.bias.copy_(torch.from_numpy(bias))
        modules += [linear, torch.nn.ReLU()]
    net = torch.nn.Sequential(*modules[:-1])
    optimizer = torch.optim.SGD(net.parameters(), lr=settings.learning_rate)
    x = torch.from_numpy(features)
    y = torch.from_numpy(frame["MEDV"].to_numpy(np.float32))
    for batches in batch_order(len(frame), batch_size=settings.batch_size,
                               epochs=settings.epochs, shuffle=True, seed=0):
        for index in batches:
            index = torch.from_numpy(index)
            optimizer.zero_grad()
            torch.mean((net(x[index]).squeeze(1) - y[index]) ** 2).backward()
            optimizer.step()


def update_speed(data) -> dict:
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
        torch_fine_tune(spec, records, settings)
        peer.append(time.perf_counter() - started)
    out = {"records": 50, "epochs": settings.epochs, "batch_size": settings.batch_size,
           "updatable_layers": settings.updatable_layers,
           "dmt_seconds_median": statistics.median(ours),
           "torch_seconds_median": statistics.median(peer), "target_seconds": 0.5}
    out["speedup_vs_torch"] = out["torch_seconds_median"] / out["dmt_seconds_median"]
    print(f"one update, 50 records × 500 epochs: dmt {out['dmt_seconds_median']:.3f} s, "
          f"plain torch {out['torch_seconds_median']:.3f} s "
          f"({out['speedup_vs_torch']:.1f}× faster; target < 0.5 s)")
    return out


def personalization(data) -> dict:
    methods = ["foundation", "oracle", *CONFIGS, "personalize() default, CV-checked"]
    results: dict = {str(h): {m: [] for m in methods} for h in SPREADS}
    accepted: dict = {str(h): [] for h in SPREADS}
    folder = Path(tempfile.mkdtemp())
    try:
        for seed in SEEDS:
            for h in SPREADS:
                sim = simulate_users(data, spread=h, seed=seed)
                model = train_foundation(sim.proxy, BOSTON_SCHEMA, TrainingConfig(seed=seed))
                specs = {name: build_spec(model, updatable=UpdateSettings(
                    updatable_layers=c[0], optimizer=c[1], learning_rate=c[2], batch_size=c[3]))
                    for name, c in CONFIGS.items()}
                default = export_coreml(model, folder / "default.mlmodel",
                                        updatable=UpdateSettings())
                base = specs["last two, SGD 3e-4 (default)"]
                per_user: dict = {m: [] for m in methods}
                kept = 0
                for user in sim.users:
                    y = user.test["MEDV"].to_numpy()
                    before = predict_frame(base, user.test)
                    per_user["foundation"].append(rmse(before, y))
                    per_user["oracle"].append(rmse(before * user.factor, y))
                    for name, spec in specs.items():
                        updated, _ = update_spec(spec, user.train)
                        per_user[name].append(rmse(predict_frame(updated, user.test), y))
                    personal = folder / "personal.mlmodel"
                    shutil.copyfile(default, personal)
                    kept += personalize(personal, user.train, seed=seed).accepted
                    per_user["personalize() default, CV-checked"].append(
                        rmse(predict_frame(load_spec(personal), user.test), y))
                for m in methods:
                    results[str(h)][m].append(float(np.mean(per_user[m])))
                accepted[str(h)].append(kept / len(sim.users))
    finally:
        shutil.rmtree(folder)
    summary = {h: {m: {"mean": statistics.mean(v), "std": statistics.stdev(v)}
                   for m, v in per_method.items()} for h, per_method in results.items()}
    print("\nper-user test RMSE, mean ± std over 5 seeds (simulated users, 20 per seed)")
    print(f"{'method':<38}" + "".join(f"{'h = ' + h:>16}" for h in summary))
    for m in methods:
        print(f"{m:<38}" + "".join(
            f"{summary[h][m]['mean']:>9.3f} ± {summary[h][m]['std']:.2f}" for h in summary))
    print(f"{'share of users whose update was kept':<38}" + "".join(
        f"{statistics.mean(accepted[h]):>16.2f}" for h in summary))
    return {"per_seed": results, "summary": summary, "kept_fraction": accepted}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = result["personalization"]["summary"]
    spreads = list(summary)
    methods = list(summary[spreads[0]])
    fig, ax = plt.subplots(figsize=(10, 4.8))
    width = 0.8 / len(methods)
    for i, m in enumerate(methods):
        means = [summary[h][m]["mean"] for h in spreads]
        stds = [summary[h][m]["std"] for h in spreads]
        ax.bar(np.arange(len(spreads)) + i * width, means, width, yerr=stds, label=m, capsize=2)
    ax.set_xticks(np.arange(len(spreads)) + width * (len(methods) - 1) / 2)
    ax.set_xticklabels([f"appraisal spread h = {h}" for h in spreads])
    ax.set_ylabel("per-user test RMSE ($1000s)")
    ax.set_title("Personalization on simulated Boston users (5 seeds, mean ± std)")
    ax.legend(fontsize=8, ncol=2, loc="upper left")
    ax.set_ylim(0, max(summary[h][m]["mean"] for h in spreads for m in methods) * 1.35)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    data = load_boston()
    RESULTS.mkdir(exist_ok=True)
    result = {
        "foundation": foundation_protocol(data),
        "parity": parity(data),
        "update_speed": update_speed(data),
        "personalization": personalization(data),
    }
    (RESULTS / "model_quality.json").write_text(json.dumps(result, indent=2))
    plot(result, RESULTS / "model_quality.png")
    print(f"\nwrote {RESULTS / 'model_quality.json'} and model_quality.png")


if __name__ == "__main__":
    main()
