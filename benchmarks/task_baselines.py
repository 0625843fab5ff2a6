"""scikit-learn baselines for the classification tasks, on the splits the foundation uses.

For each data set of ``dmt_model.datasets.CLASSIFICATION_DATASETS`` and each
seed, ``holdout_split(..., test_fraction=0.25, seed=seed)`` gives the 75/25
stratified split the foundation is measured on. On it:

- ``majority``: the training split's most frequent class (scikit-learn's
  ``DummyClassifier(strategy="prior")``), the floor;
- ``logistic``: ``LogisticRegression`` on standardized numbers and one-hot
  categories (declared by the schema), pixels / 255, or, for text, bag-of-words
  counts of the device tokenizer's ids (``dmt_privacy.tokens.Tokenizer`` fitted
  on the training texts; ``CountVectorizer`` with the tokenizer as analyzer);
- ``hist_gradient_boosting``: ``HistGradientBoostingClassifier`` on the raw
  numbers, category codes (as categorical features) or pixels (not for text).

Metrics on the test split: accuracy, macro-F1, log loss (natural log, over the
schema's classes). Mean ± standard deviation over 5 seeds.

Writes ``benchmarks/results/task_baselines.json`` and ``.md``.
Run: ``.venv/bin/python benchmarks/task_baselines.py [--seeds 5]`` (about a minute on 2 cores
with OMP_NUM_THREADS=1; needs the Adult folder and WordNet, ``make wordnet``, or skips those
data sets).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dmt_model.datasets import CLASSIFICATION_DATASETS, holdout_split
from dmt_model.datasets.classification import ClassificationDataset
from dmt_privacy.schema import Kind
from dmt_privacy.tokens import PAD_ID, Tokenizer

RESULTS = Path(__file__).resolve().parent / "results"
METRICS = ("accuracy", "macro_f1", "log_loss")


def _tabular(dataset: ClassificationDataset, one_hot: bool) -> Any:
    """Numbers standardized (or raw) and categories one-hot (or as codes), per the schema."""
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

    inputs = [f for f in dataset.schema if f.name != dataset.target]
    numeric = [f.name for f in inputs if f.kind is Kind.NUMERIC]
    categorical = [f for f in inputs if f.kind is Kind.CATEGORICAL]
    categories = [list(f.categories or ()) for f in categorical]
    encoder = (OneHotEncoder(categories=categories, handle_unknown="ignore") if one_hot
               else OrdinalEncoder(categories=categories))
    return ColumnTransformer([("numeric", StandardScaler() if one_hot else "passthrough",
                               numeric),
                              ("categorical", encoder, [f.name for f in categorical])])


def _pixels(frame: pd.DataFrame, field: str) -> np.ndarray:
    return np.stack(frame[field].to_numpy()).reshape(len(frame), -1) / 255.0


def models(dataset: ClassificationDataset, train: pd.DataFrame, seed: int) -> dict[str, Any]:
    """name → (fitted model, function turning a frame into that model's input)."""
    from sklearn.dummy import DummyClassifier
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    y = train[dataset.target].to_numpy()
    kinds = {f.kind for f in dataset.schema if f.name != dataset.target}
    fitted: dict[str, Any] = {}
    fitted["majority"] = (DummyClassifier(strategy="prior").fit(np.zeros((len(y), 1)), y),
                          lambda frame: np.zeros((len(frame), 1)))
    if kinds == {Kind.IMAGE}:
        field = next(f.name for f in dataset.schema if f.kind is Kind.IMAGE)
        x = _pixels(train, field)
        fitted["logistic"] = (LogisticRegression(max_iter=3000).fit(x, y),
                              lambda frame: _pixels(frame, field))
        fitted["hist_gradient_boosting"] = (
            HistGradientBoostingClassifier(random_state=seed).fit(x, y),
            lambda frame: _pixels(frame, field))
    elif kinds == {Kind.TEXT}:
        field = next(f.name for f in dataset.schema if f.kind is Kind.TEXT)
        tokenizer = Tokenizer.fit(train[field], min_count=2,
                                  max_tokens=dataset.schema[field].max_tokens or 64, field=field)

        def analyzer(text: str) -> list[int]:
            return [i for i in tokenizer.encode(text) if i != PAD_ID]

        model = make_pipeline(CountVectorizer(analyzer=analyzer),
                              LogisticRegression(max_iter=3000))
        fitted["logistic"] = (model.fit(train[field], y), lambda frame: frame[field])
        fitted["vocabulary_size"] = tokenizer.vocabulary_size
    else:
        columns = [f.name for f in dataset.schema if f.name != dataset.target]
        linear = make_pipeline(_tabular(dataset, one_hot=True), LogisticRegression(max_iter=3000))
        n_categorical = sum(f.kind is Kind.CATEGORICAL for f in dataset.schema
                            if f.name != dataset.target)
        n_numeric = len(columns) - n_categorical
        boosted = make_pipeline(_tabular(dataset, one_hot=False), HistGradientBoostingClassifier(
            categorical_features=[False] * n_numeric + [True] * n_categorical,
            random_state=seed))
        fitted["logistic"] = (linear.fit(train[columns], y), lambda frame: frame[columns])
        fitted["hist_gradient_boosting"] = (boosted.fit(train[columns], y),
                                            lambda frame: frame[columns])
    return fitted


def scores(model: Any, x: Any, y: np.ndarray, classes: list[Any]) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score, log_loss

    probabilities = model.predict_proba(x)
    order = [list(model.classes_).index(c) for c in classes]  # the schema's class order
    probabilities = probabilities[:, order]
    truth = np.array([classes.index(v) for v in y])  # class indices, whatever the labels' type
    predicted = probabilities.argmax(axis=1)
    labels = list(range(len(classes)))
    return {"accuracy": float(accuracy_score(truth, predicted)),
            "macro_f1": float(f1_score(truth, predicted, average="macro", labels=labels,
                                       zero_division=0)),
            "log_loss": float(log_loss(truth, probabilities, labels=labels))}


def run(seeds: int) -> dict[str, Any]:
    split = f"holdout_split(test_fraction=0.25, seed=s), s = 0..{seeds - 1}"
    out: dict[str, Any] = {"split": split, "datasets": {}}
    for name, dataset in CLASSIFICATION_DATASETS.items():
        if not dataset.available():
            print(f"{name}: its data is not on this machine, skipped", file=sys.stderr)
            continue
        frame = dataset.load()
        classes = list(dataset.classes)
        per_seed: dict[str, list[dict[str, float]]] = {}
        info: dict[str, Any] = {"rows": len(frame), "classes": len(classes)}
        started = time.perf_counter()
        for seed in range(seeds):
            train, test = holdout_split(frame, target=dataset.target, seed=seed)
            fitted = models(dataset, train, seed)
            if "vocabulary_size" in fitted:
                info.setdefault("vocabulary_size", []).append(fitted.pop("vocabulary_size"))
            for model_name, (model, inputs) in fitted.items():
                per_seed.setdefault(model_name, []).append(
                    scores(model, inputs(test), test[dataset.target].to_numpy(), classes))
        info["train_rows"], info["test_rows"] = len(train), len(test)
        info["seconds"] = round(time.perf_counter() - started, 1)
        info["models"] = {
            m: {metric: {"mean": statistics.fmean(r[metric] for r in runs),
                         "std": statistics.stdev(r[metric] for r in runs) if seeds > 1 else 0.0,
                         "per_seed": [r[metric] for r in runs]} for metric in METRICS}
            for m, runs in per_seed.items()}
        out["datasets"][name] = info
        print(f"{name}: done in {info['seconds']} s", file=sys.stderr)
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = ["| task | model | accuracy | macro-F1 | log loss |", "|---|---|---|---|---|"]
    for name, info in result["datasets"].items():
        for model, metrics in info["models"].items():
            cells = [f"{metrics[m]['mean']:.3f} ± {metrics[m]['std']:.3f}" for m in METRICS]
            lines.append(f"| {name} | {model} | " + " | ".join(cells) + " |")
    return ("scikit-learn baselines on `holdout_split` (75/25, stratified), mean ± sd over "
            f"seeds ({result['split']}); `benchmarks/task_baselines.py`.\n\n"
            + "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    result = run(args.seeds)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "task_baselines.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.output / "task_baselines.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
