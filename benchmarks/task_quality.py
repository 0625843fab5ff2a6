"""Classification tasks end to end: foundation quality, personalization, and sharing modified data.

Three measurements on each data set of ``dmt_model.datasets.CLASSIFICATION_DATASETS``
(Adult's salary class, scikit-learn's digits as camera pixels, WordNet glosses by topic):

1. **Foundation** (``--parts foundation``): on ``holdout_split`` (75/25, stratified) for
   each seed, the dmt foundation (trained with the data set's ``config``) beside the
   scikit-learn baselines of ``task_baselines.py`` fitted on the same split in the same
   run. Accuracy, macro-F1, log loss.
2. **Personalization** (``--parts personalization``): 20 simulated users
   (``simulate_classifier_users``: a power-law number of records each) under several
   shifts: none, their own label mix (Dirichlet α = 1 and α = 0.3) and, for digits, their
   own hand (a rotation and stroke weight per user). v1 is trained on the proxy records
   (80 %, the rest kept aside as the gate would); each user's updatable model is
   ``personalized()`` on their training records, and every figure is on their test
   records. The oracle is v1 told the user's label mix (its probabilities reweighted by
   Bayes' rule under label shift).
3. **Sharing modified data** (``--parts sharing``): scarce proxy data (5 % of the data,
   ``proxy_fraction=0.05``), 20 users. v1 on the proxy alone; then v2 retrained
   (``retrain_foundation``) on the proxy plus every user's shareable records as shared
   originals, or after the modification devices apply (digits: Gaussian blur of σ pixels;
   text: WordNet synonyms replacing a fraction of the words; Adult: quasi-identifiers
   generalized by a k-anonymity plan fitted on the proxy). Accuracy and log loss on all
   users' test records. Labels are shared exactly here, to isolate the modification; the
   loop (``dmt demo --task``) adds randomized response on them.

Writes ``benchmarks/results/task_quality.{json,md}``; parts not run keep the figures already
in that file (listed under ``carried_over``).
Run: ``NLTK_DATA=nltk_data .venv/bin/python benchmarks/task_quality.py [--seeds 5]
[--parts foundation personalization sharing] [--workers 2] [--personalization-seeds 2]``
(about 40 min on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from task_baselines import models as baseline_models
from task_baselines import scores as baseline_scores

from dmt_model.datasets import CLASSIFICATION_DATASETS, holdout_split
from dmt_model.datasets.classifier_users import simulate_classifier_users

RESULTS = Path(__file__).resolve().parent / "results"
METRICS = ("accuracy", "macro_f1", "log_loss")
SHIFTS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    name: [("no shift", {"alpha": None, "max_rotation": 0.0, "max_stroke": 0.0}),
           ("label mix α=1", {"alpha": 1.0, "max_rotation": 0.0, "max_stroke": 0.0}),
           ("label mix α=0.3", {"alpha": 0.3, "max_rotation": 0.0, "max_stroke": 0.0})]
    for name in CLASSIFICATION_DATASETS}
SHIFTS["digits"].append(("own hand", {"alpha": None}))
MODIFICATIONS = {"digits": [("blur σ=0.5", 0.5), ("blur σ=1", 1.0), ("blur σ=2", 2.0)],
                 "wordnet-topics": [("synonyms 20 %", 0.2), ("synonyms 50 %", 0.5),
                                    ("synonyms 100 %", 1.0)],
                 "adult": [("k-anonymous k=5", 5), ("k-anonymous k=20", 20)]}


def _summary(values: list[float]) -> dict[str, Any]:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "per_seed": values}


# --- 1. foundation beside the baselines --------------------------------------------------
def foundation_run(name: str, seed: int) -> dict[str, dict[str, float]]:
    from dmt_model.foundation import train_foundation

    dataset = CLASSIFICATION_DATASETS[name]
    train, test = holdout_split(dataset.load(), target=dataset.target, seed=seed)
    started = time.perf_counter()
    foundation = train_foundation(train, dataset.schema, dataset.config.__class__(
        **{**dataset.config.__dict__, "seed": seed}))
    metrics = foundation.evaluate(test)
    out = {"dmt foundation": {"accuracy": metrics.accuracy, "macro_f1": metrics.macro_f1,
                              "log_loss": metrics.log_loss,
                              "seconds": time.perf_counter() - started}}
    classes = list(dataset.classes)
    for model_name, fitted in baseline_models(dataset, train, seed).items():
        if model_name == "vocabulary_size":
            continue
        model, inputs = fitted
        out[model_name] = baseline_scores(model, inputs(test), test[dataset.target].to_numpy(),
                                          classes)
    return out


# --- 2. personalization under shifts -------------------------------------------------------
def personalization_run(name: str, shift: str, seed: int) -> dict[str, Any]:
    from dmt_model.coreml import UpdateSettings, build_spec, predict_frame
    from dmt_model.foundation import train_foundation
    from dmt_model.loop import _oracle
    from dmt_model.personalize import personalized
    from dmt_model.server.retrain import validation_split

    dataset = CLASSIFICATION_DATASETS[name]
    options = dict(SHIFTS[name])[shift]
    simulation = simulate_classifier_users(
        dataset.load(), target=dataset.target, n_users=20, image=dataset.style_field,
        n_records=dataset.user_records, seed=seed, **options)
    proxy, _ = validation_split(simulation.proxy, seed=seed)
    config = dataset.config.__class__(**{**dataset.config.__dict__, "seed": seed})
    foundation = train_foundation(proxy, dataset.schema, config)
    spec = build_spec(foundation, updatable=UpdateSettings())
    featurizer = foundation.featurizer
    users = []
    started = time.perf_counter()
    for user in simulation.users:
        y = featurizer.target_values(user.test)
        base = predict_frame(spec, user.test)
        new, result = personalized(spec, user.train, seed=seed)
        stages = {"foundation": base, "personal": predict_frame(new, user.test),
                  "oracle": _oracle(featurizer, base, user, proxy)}
        row: dict[str, Any] = {"user_id": user.user_id, "n_train": len(user.train),
                               "n_test": len(user.test), "kept": result.accepted}
        for stage, predicted in stages.items():
            metrics = featurizer.task.metrics(predicted, y)
            row[stage] = {"accuracy": metrics.accuracy, "log_loss": metrics.log_loss}
        users.append(row)
    kept = [u for u in users if u["kept"]]
    return {
        "seconds_personalizing": time.perf_counter() - started,
        "users": users,
        **{f"{stage}_{metric}": float(np.mean([u[stage][metric] for u in users]))
           for stage in ("foundation", "personal", "oracle") for metric in ("accuracy",
                                                                             "log_loss")},
        "kept": len(kept),
        "kept_raising_log_loss": sum(u["personal"]["log_loss"] > u["foundation"]["log_loss"]
                                     for u in kept),
        "kept_lowering_accuracy": sum(u["personal"]["accuracy"] < u["foundation"]["accuracy"]
                                      for u in kept),
    }


# --- 3. retraining on shared modified data when the proxy is scarce --------------------------
def _modified(name: str, strength: float, records: pd.DataFrame, proxy: pd.DataFrame,
              seed: int) -> tuple[pd.DataFrame, Any]:
    """(shared records as the server receives them, hierarchies for generalized categories)."""
    if name == "digits":
        from dmt_privacy.modify import GaussianBlur

        out = records.copy()
        out["image"] = GaussianBlur(sigma=strength).transform(list(records["image"]))
        return out, None
    if name == "wordnet-topics":
        from dmt_privacy.modify import SynonymReplacer

        out = records.copy()
        out["text"] = list(SynonymReplacer(rate=strength, random_state=seed).transform(
            list(records["text"])))
        return out, None
    from dmt_privacy.anonymity import KAnonymizer

    dataset = CLASSIFICATION_DATASETS[name]
    quasi = list(dataset.quasi_identifiers)
    categorical = {f.name: object for f in dataset.schema.by_kind("categorical")}
    domains = {q: b for q in quasi if (b := dataset.schema[q].bounds) is not None}
    plan = KAnonymizer(quasi, k=int(strength)).fit(proxy.astype(categorical)).plan_.widened(
        domains)
    anonymized = plan.apply(records.astype(categorical))
    # Suppressed records stay on the device, as share() leaves them out of the package.
    return anonymized.data.drop(index=anonymized.suppressed), None


def sharing_run(name: str, seed: int) -> dict[str, Any]:
    from dmt_model.foundation import train_foundation
    from dmt_model.server.retrain import SharedBatch, retrain_foundation

    dataset = CLASSIFICATION_DATASETS[name]
    simulation = simulate_classifier_users(
        dataset.load(), target=dataset.target, n_users=20, image=dataset.style_field,
        proxy_fraction=0.05, n_records=dataset.user_records, alpha=None, max_rotation=0.0,
        max_stroke=0.0, seed=seed)
    config = dataset.config.__class__(**{**dataset.config.__dict__, "seed": seed})
    proxy = simulation.proxy
    test = pd.concat([u.test for u in simulation.users])
    shareable = pd.concat([u.shareable for u in simulation.users])
    v1 = train_foundation(proxy, dataset.schema, config)

    def scored(model: Any) -> dict[str, float]:
        metrics = model.evaluate(test)
        return {"accuracy": metrics.accuracy, "log_loss": metrics.log_loss}

    out: dict[str, Any] = {"proxy_records": len(proxy), "shared_records": len(shareable),
                           "test_records": len(test), "proxy only": scored(v1),
                           "shared as is": scored(retrain_foundation(
                               v1, proxy, [SharedBatch(shareable)], config))}
    for label, strength in MODIFICATIONS[name]:
        records, hierarchies = _modified(name, strength, shareable, proxy, seed)
        out[label] = scored(retrain_foundation(
            v1, proxy, [SharedBatch(records, hierarchies=hierarchies)], config))
        out[label]["records"] = len(records)
    return out


# --- driver ----------------------------------------------------------------------------------
def _call(job: tuple[str, tuple[Any, ...]]) -> Any:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    function, arguments = job
    return globals()[function](*arguments)


def run(seeds: int, parts: list[str], workers: int, names: list[str],
        personalization_seeds: int = 2) -> dict[str, Any]:
    jobs: list[tuple[str, tuple[Any, ...]]] = []
    for name in names:
        if "foundation" in parts:
            jobs += [("foundation_run", (name, seed)) for seed in range(seeds)]
        if "personalization" in parts:
            jobs += [("personalization_run", (name, shift, seed))
                     for shift, _ in SHIFTS[name] for seed in range(personalization_seeds)]
        if "sharing" in parts:
            jobs += [("sharing_run", (name, seed)) for seed in range(min(seeds, 3))]
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(_call, jobs))
    out: dict[str, Any] = {"seeds": seeds, "personalization_seeds": personalization_seeds,
                           "seconds": round(time.perf_counter() - started),
                           "foundation": {}, "personalization": {}, "sharing": {}}
    for (function, arguments), result in zip(jobs, results, strict=True):
        name = arguments[0]
        if function == "foundation_run":
            for model, metrics in result.items():
                for metric, value in metrics.items():
                    out["foundation"].setdefault(name, {}).setdefault(model, {}).setdefault(
                        metric, []).append(value)
        elif function == "personalization_run":
            out["personalization"].setdefault(name, {}).setdefault(arguments[1], []).append(
                result)
        else:
            out["sharing"].setdefault(name, []).append(result)
    for table in out["foundation"].values():
        for metrics in table.values():
            for metric, values in metrics.items():
                metrics[metric] = _summary(values)
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = []
    if result["foundation"]:
        lines += ["### Foundation quality (held-out 25 %, mean ± sd over "
                  f"{result['seeds']} seeds, same splits and run)", "",
                  "| task | model | accuracy | macro-F1 | log loss |", "|---|---|---|---|---|"]
        for name, table in result["foundation"].items():
            for model, metrics in table.items():
                cells = [f"{metrics[m]['mean']:.3f} ± {metrics[m]['std']:.3f}" for m in METRICS]
                lines.append(f"| {name} | {model} | " + " | ".join(cells) + " |")
        lines.append("")
    if result["personalization"]:
        seeds = len(next(iter(next(iter(result["personalization"].values())).values())))
        lines += [f"### Personalization ({seeds} seed{'s' * (seeds != 1)} × 20 users, mean "
                  "per-user test figures)", "",
                  "| task | users' shift | accuracy: v1 → personal (oracle) | "
                  "log loss: v1 → personal (oracle) | kept | kept but log loss rose | "
                  "kept but accuracy fell |", "|---|---|---|---|---|---|---|"]
        for name, shifts in result["personalization"].items():
            for shift, runs in shifts.items():
                def mean(key: str, runs: list[dict[str, Any]] = runs) -> float:
                    return statistics.fmean(r[key] for r in runs)

                lines.append(
                    f"| {name} | {shift} | {mean('foundation_accuracy'):.3f} → "
                    f"{mean('personal_accuracy'):.3f} ({mean('oracle_accuracy'):.3f}) | "
                    f"{mean('foundation_log_loss'):.3f} → {mean('personal_log_loss'):.3f} "
                    f"({mean('oracle_log_loss'):.3f}) | "
                    f"{sum(r['kept'] for r in runs)}/{20 * len(runs)} | "
                    f"{sum(r['kept_raising_log_loss'] for r in runs)} | "
                    f"{sum(r['kept_lowering_accuracy'] for r in runs)} |")
        lines.append("")
    if result["sharing"]:
        lines += ["### Retraining on shared data when the proxy is scarce (5 %): accuracy / "
                  "log loss on all users' test records, mean over seeds", "",
                  "| task | proxy only | + shared as is | + shared modified |", "|---|---|---|---|"]
        for name, runs in result["sharing"].items():
            def cell(key: str, runs: list[dict[str, Any]] = runs) -> str:
                return (f"{statistics.fmean(r[key]['accuracy'] for r in runs):.3f} / "
                        f"{statistics.fmean(r[key]['log_loss'] for r in runs):.3f}")

            modified = "; ".join(f"{label}: {cell(label)}" for label, _ in MODIFICATIONS[name])
            lines.append(f"| {name} ({runs[0]['proxy_records']} proxy, "
                         f"{runs[0]['shared_records']} shared) | {cell('proxy only')} | "
                         f"{cell('shared as is')} | {modified} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--personalization-seeds", type=int, default=2,
                        help="seeds of the personalization part (20 users each; slow)")
    parser.add_argument("--parts", nargs="+", default=["foundation", "personalization",
                                                       "sharing"],
                        choices=["foundation", "personalization", "sharing"])
    parser.add_argument("--datasets", nargs="+", default=list(CLASSIFICATION_DATASETS))
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    names = [n for n in args.datasets if CLASSIFICATION_DATASETS[n].available()]
    result = run(args.seeds, args.parts, args.workers, names, args.personalization_seeds)
    earlier = args.output / "task_quality.json"
    if earlier.exists():  # parts not run this time keep their last measured figures
        previous = json.loads(earlier.read_text())
        for part in {"foundation", "personalization", "sharing"} - set(args.parts):
            result[part] = previous.get(part, {})
            # (the run that measured it: the previous file's own, unless it carried it over)
            result.setdefault("carried_over", {})[part] = previous.get("carried_over", {}).get(
                part) or {key: previous.get(key)
                          for key in ("seeds", "personalization_seeds", "seconds")}
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "task_quality.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.output / "task_quality.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
