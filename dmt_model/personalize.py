"""Personalization: an emulation of Core ML's ``MLUpdateTask``, and the safe replacement
of a device's personal model.

On a device, Core ML trains the updatable layers of a ``.mlmodel`` on the
user's records. Core ML does not run on Linux, so this module emulates the
update on the spec itself, in numpy: the layers before the first updatable
layer are evaluated once (they are frozen), then the updatable suffix is
trained with the optimizer, learning rate, mini-batch size, epochs and
shuffle read from the spec (each can be overridden, as on a device), and the
new weights are written back into a copy of the spec.

What Apple does not document, and what this emulation assumes
-------------------------------------------------------------
* **Loss scaling.** The MSE loss is the *mean* over the mini-batch of
  ``(ŷ − y)²`` with *no* ½ factor (:class:`LossConvention` default). If a
  device shows otherwise, pass ``LossConvention(reduction="sum")`` or
  ``half=True``; only the effective learning rate changes.
* **The last partial mini-batch** is used as a smaller batch.
* **Shuffle** permutes the examples at the start of every epoch with numpy's
  PCG64 seeded from the spec's seed; Core ML's own RNG differs, so on a device
  the batches differ (not their distribution).
* **SGD momentum** follows ``v ← μv + g; w ← w − ηv``; **Adam** uses bias
  correction (the usual Kingma & Ba form, as torch does).

How to settle the loss scaling once on a device (from ``docs``): one example,
batch 1, one epoch, SGD with momentum 0 and learning rate η, shuffle off;
read the output bias before and after through ``MLUpdateContext.model``'s
``parameterValue(for: .biases.scoped(to: "dense_2"))`` and compare its change
with ``−2η(ŷ − y)`` (mean MSE) and ``−η(ŷ − y)`` (½·MSE); repeat with batch 4
and four examples to tell a mean from a sum.

Replacing the personal model
----------------------------
:func:`personalize` writes the updated model only if its loss on held-out
records is finite and not worse than the current model's; it writes through
a temporary file and ``os.replace``, so a failure at any point leaves the old
model intact.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from dmt_model.coreml._spec import load_spec, save_spec
from dmt_model.coreml.evaluate import apply_activation, evaluate_spec, predict_frame
from dmt_model.coreml.validate import validate_updatable
from dmt_model.coreml.weights import _network, get_inner_product, set_inner_product
from dmt_model.features import Featurizer
from dmt_privacy.errors import ModelFileError, UpdateRejected, ValidationError

__all__ = [
    "LossConvention",
    "PersonalizationResult",
    "UpdateEvent",
    "UpdateHistory",
    "adopt_new_version",
    "batch_order",
    "featurizer_of",
    "personalize",
    "update_spec",
]


@dataclass(frozen=True)
class LossConvention:
    """How the emulated update scales the MSE loss (see the module docstring)."""

    reduction: Literal["mean", "sum"] = "mean"
    half: bool = False

    def gradient_scale(self, batch: int) -> float:
        """d loss / d ŷ = scale · (ŷ − y)."""
        scale = 2.0 / batch if self.reduction == "mean" else 2.0
        return scale / 2.0 if self.half else scale

    def loss(self, diff: np.ndarray) -> float:
        total = float(np.sum(diff.astype(np.float64) ** 2))
        value = total / diff.shape[0] if self.reduction == "mean" else total
        return value / 2.0 if self.half else value


@dataclass(frozen=True)
class UpdateEvent:
    """A progress event, as ``MLUpdateTask`` reports them."""

    kind: Literal["training_begin", "mini_batch_end", "epoch_end"]
    epoch: int
    mini_batch: int
    loss: float


@dataclass
class UpdateHistory:
    """The mean training loss of each epoch."""

    epoch_losses: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class _Settings:
    optimizer: str
    learning_rate: float
    batch_size: int
    epochs: int
    shuffle: bool
    seed: int
    momentum: float
    beta1: float
    beta2: float
    eps: float


def read_settings(spec: Any) -> _Settings:
    """The update parameters stored in an updatable spec."""
    params = _network(spec).updateParams
    kind = params.optimizer.WhichOneof("OptimizerType")
    if kind is None:
        raise ModelFileError("The model has no optimizer; is it updatable?")
    opt = getattr(params.optimizer, kind)
    return _Settings(
        optimizer="sgd" if kind == "sgdOptimizer" else "adam",
        learning_rate=float(opt.learningRate.defaultValue),
        batch_size=int(opt.miniBatchSize.defaultValue),
        epochs=int(params.epochs.defaultValue),
        shuffle=bool(params.shuffle.defaultValue),
        seed=int(params.seed.defaultValue),
        momentum=float(opt.momentum.defaultValue) if kind == "sgdOptimizer" else 0.0,
        beta1=float(opt.beta1.defaultValue) if kind == "adamOptimizer" else 0.9,
        beta2=float(opt.beta2.defaultValue) if kind == "adamOptimizer" else 0.999,
        eps=float(opt.eps.defaultValue) if kind == "adamOptimizer" else 1e-8,
    )


def batch_order(n: int, *, batch_size: int, epochs: int, shuffle: bool,
                seed: int) -> list[list[np.ndarray]]:
    """The example indices of every mini-batch of every epoch, as the emulation uses them."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(epochs):
        order = rng.permutation(n) if shuffle else np.arange(n)
        out.append([order[s:s + batch_size] for s in range(0, n, batch_size)])
    return out


def featurizer_of(spec: Any) -> Featurizer:
    """The featurizer stored in a dmt model's metadata."""
    text = spec.description.metadata.userDefined.get("dmt.featurizer")
    if not text:
        raise ModelFileError("The model carries no dmt featurizer metadata; export it with dmt.")
    return Featurizer.from_json(text)


def _check_records(spec: Any, frame: pd.DataFrame, *, what: str) -> np.ndarray:
    """Validate ``frame`` against the model's schema; returns the target values."""
    featurizer = featurizer_of(spec)
    columns = [*featurizer.input_fields, featurizer.target]
    if len(frame) == 0:
        raise ValidationError(f"{what}: no records given.")
    featurizer.schema.validate(frame, columns=columns)
    featurizer.schema.check_bounds(frame, columns=columns)
    featurizer.transform(frame)  # unknown categories raise here, naming the field
    return featurizer.target_values(frame)


def _suffix(spec: Any) -> tuple[str, list[Any], str]:
    """(input blob of the first updatable layer, the chain of layers to the loss, loss input)."""
    network = _network(spec)
    layers = list(network.layers)
    first = next(i for i, layer in enumerate(layers) if layer.isUpdatable)
    loss = network.updateParams.lossLayers[0]
    loss_input = getattr(loss, loss.WhichOneof("LossLayerType")).input
    chain = []
    blob = layers[first].input[0]
    start_blob = blob
    for layer in layers[first:]:
        if layer.input[0] != blob:
            continue
        kind = layer.WhichOneof("layer")
        if kind not in ("innerProduct", "activation"):
            raise ModelFileError(f"The emulated update supports innerProduct and activation "
                                 f"layers after the first updatable one, not {kind!r}.")
        chain.append(layer)
        blob = layer.output[0]
        if blob == loss_input:
            break
    if blob != loss_input:
        raise ModelFileError("The updatable layers do not form a chain ending at the loss.")
    return start_blob, chain, loss_input


def _act_backward(kind: str, out: np.ndarray, grad: np.ndarray) -> np.ndarray:
    if kind == "ReLU":
        return grad * (out > 0)
    if kind == "sigmoid":
        return grad * out * (1 - out)
    return grad * (1 - out * out)  # tanh


@np.errstate(over="ignore", invalid="ignore")  # divergence is detected and reported
def update_spec(
    spec: Any,
    frame: pd.DataFrame,
    *,
    learning_rate: float | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    shuffle: bool | None = None,
    seed: int | None = None,
    convention: LossConvention | None = None,
    on_event: Callable[[UpdateEvent], None] | None = None,
) -> tuple[Any, UpdateHistory]:
    """Emulate ``MLUpdateTask`` on ``frame``; returns an updated *copy* of ``spec``.

    Parameters left ``None`` are read from the spec. Raises
    :class:`UpdateRejected` if the loss becomes NaN or infinite.
    """
    validate_updatable(spec)
    target = _check_records(spec, frame, what="update")
    stored = read_settings(spec)
    s = _Settings(
        optimizer=stored.optimizer,
        learning_rate=stored.learning_rate if learning_rate is None else float(learning_rate),
        batch_size=stored.batch_size if batch_size is None else int(batch_size),
        epochs=stored.epochs if epochs is None else int(epochs),
        shuffle=stored.shuffle if shuffle is None else bool(shuffle),
        seed=stored.seed if seed is None else int(seed),
        momentum=stored.momentum, beta1=stored.beta1, beta2=stored.beta2, eps=stored.eps,
    )
    convention = convention or LossConvention()
    start_blob, chain, _ = _suffix(spec)
    inputs = {name: frame[name].to_numpy(dtype=np.float64)
              for name in [f.name for f in spec.description.input]}
    (frozen,) = evaluate_spec(spec, inputs, outputs=[start_blob]).values()
    y = target.reshape(-1, 1).astype(np.float32)

    # Parameters of the updatable innerProduct layers in the chain.
    params: dict[str, list[np.ndarray]] = {}
    for layer in chain:
        if layer.WhichOneof("layer") == "innerProduct":
            weight, bias = get_inner_product(spec, layer.name)
            params[layer.name] = [weight.copy(), (bias if bias is not None else
                                                  np.zeros(weight.shape[0], np.float32)).copy()]
    state = {name: [np.zeros_like(p) for p in ps] for name, ps in params.items()}
    second = {name: [np.zeros_like(p) for p in ps] for name, ps in params.items()}
    step = 0
    history = UpdateHistory()
    if on_event:
        on_event(UpdateEvent("training_begin", 0, 0, math.nan))
    lr, f32 = np.float32(s.learning_rate), np.float32
    for epoch, batches in enumerate(batch_order(len(frame), batch_size=s.batch_size,
                                                epochs=s.epochs, shuffle=s.shuffle,
                                                seed=s.seed)):
        epoch_loss = 0.0
        for b, index in enumerate(batches):
            activations = [frozen[index]]
            for layer in chain:
                x = activations[-1]
                if layer.name in params:
                    w, bias = params[layer.name]
                    activations.append(x @ w.T + bias)
                else:
                    activations.append(apply_activation(layer, x))
            diff = activations[-1] - y[index]
            loss = convention.loss(diff)
            if not math.isfinite(loss):
                raise UpdateRejected(
                    f"The update diverged (loss {loss}) at epoch {epoch}, mini-batch {b}; "
                    "lower the learning rate. Nothing was written."
                )
            epoch_loss += loss * (len(index) if convention.reduction == "mean" else 1)
            grad = (diff * f32(convention.gradient_scale(len(index)))).astype(np.float32)
            step += 1
            for i in range(len(chain) - 1, -1, -1):
                layer, x = chain[i], activations[i]
                if layer.name in params:
                    w, bias = params[layer.name]
                    grads = [grad.T @ x, grad.sum(axis=0)]
                    if i > 0:
                        grad = grad @ w
                    _step(s, params[layer.name], grads, state[layer.name],
                          second[layer.name], step, lr)
                else:
                    kind = layer.activation.WhichOneof("NonlinearityType")
                    grad = _act_backward(kind, activations[i + 1], grad)
            if on_event:
                on_event(UpdateEvent("mini_batch_end", epoch, b, loss))
        mean_loss = epoch_loss / (len(frame) if convention.reduction == "mean" else 1)
        history.epoch_losses.append(mean_loss)
        if on_event:
            on_event(UpdateEvent("epoch_end", epoch, len(batches) - 1, mean_loss))

    updated = copy.deepcopy(spec)
    for name, (weight, bias) in params.items():
        has_bias = get_inner_product(spec, name)[1] is not None
        if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
            raise UpdateRejected("The update produced non-finite weights; nothing was written.")
        set_inner_product(updated, name, weight, bias if has_bias else None)
    return updated, history


def _step(s: _Settings, params: list[np.ndarray], grads: list[np.ndarray],
          velocity: list[np.ndarray], second: list[np.ndarray], step: int,
          lr: np.float32) -> None:
    for p, g, v, m2 in zip(params, grads, velocity, second, strict=True):
        g = g.astype(np.float32)
        if s.optimizer == "sgd":
            if s.momentum:
                v *= np.float32(s.momentum)
                v += g
                g = v
            p -= lr * g
        else:
            b1, b2 = np.float32(s.beta1), np.float32(s.beta2)
            v *= b1
            v += (1 - b1) * g
            m2 *= b2
            m2 += (1 - b2) * g * g
            m_hat = v / np.float32(1 - s.beta1**step)
            v_hat = m2 / np.float32(1 - s.beta2**step)
            p -= lr * m_hat / (np.sqrt(v_hat) + np.float32(s.eps))


@dataclass(frozen=True)
class PersonalizationResult:
    """What :func:`personalize` did. ``accepted`` says whether the model was replaced."""

    accepted: bool
    reason: str
    holdout_loss_before: float
    holdout_loss_after: float
    model_path: Path
    history: UpdateHistory

    def raise_if_rejected(self) -> PersonalizationResult:
        if not self.accepted:
            raise UpdateRejected(self.reason)
        return self


def _mse(spec: Any, frame: pd.DataFrame, target: np.ndarray) -> float:
    return float(np.mean((predict_frame(spec, frame).astype(np.float64) - target) ** 2))


def _checked_update(
    spec: Any,
    baseline: Any,
    records: pd.DataFrame,
    *,
    holdout: pd.DataFrame | None,
    output: Path,
    folds: int,
    seed: int,
    on_event: Callable[[UpdateEvent], None] | None,
    overrides: Mapping[str, Any],
) -> PersonalizationResult:
    """Update ``spec`` on ``records`` and write it to ``output`` only if it beats ``baseline``.

    Both are compared by mean squared error on held-out records: ``holdout``
    if given (the update then trains on all ``records``), otherwise each of
    ``folds`` folds of ``records`` in turn while the update trains on the rest;
    only if the summed held-out error does not rise is the final update
    trained on all records and written (atomically).
    """
    _check_records(spec, records, what="records")
    if holdout is not None:
        checks = [(records, holdout)]
    else:
        if not isinstance(folds, int) or folds < 2:
            raise ValidationError(f"folds must be an integer of at least 2, got {folds!r}.")
        if len(records) < folds:
            raise ValidationError(
                f"{len(records)} record(s) are too few for {folds}-fold cross-validation; "
                "pass holdout= explicitly, lower folds, or give more records.")
        order = np.random.default_rng(seed).permutation(len(records))
        checks = [(records.iloc[np.setdiff1d(order, part)], records.iloc[part])
                  for part in np.array_split(order, folds)]
    before = after = 0.0
    history = UpdateHistory()
    try:
        for train, held in checks:
            held_target = _check_records(spec, held, what="holdout records")
            report = on_event if holdout is not None else None  # events of the final update only
            candidate, history = update_spec(spec, train, on_event=report, **overrides)
            before += _mse(baseline, held, held_target) * len(held)
            after += _mse(candidate, held, held_target) * len(held)
        n_held = sum(len(held) for _, held in checks)
        before, after = before / n_held, after / n_held
        if not math.isfinite(after) or after > before:
            reason = (f"held-out MSE would rise from {before:.3f} to {after:.3f}; "
                      "the personal model was kept as it was.")
            return PersonalizationResult(False, reason, before, after, output, history)
        if holdout is None:
            candidate, history = update_spec(spec, records, on_event=on_event, **overrides)
    except UpdateRejected as exc:
        return PersonalizationResult(False, str(exc), before, math.nan, output, history)
    save_spec(candidate, output)
    how = "on the holdout" if holdout is not None else f"in {len(checks)}-fold cross-validation"
    return PersonalizationResult(True, f"held-out MSE {before:.3f} → {after:.3f} {how}", before,
                                 after, output, history)


def personalize(
    model_path: str | os.PathLike[str],
    records: pd.DataFrame,
    *,
    holdout: pd.DataFrame | None = None,
    output_path: str | os.PathLike[str] | None = None,
    folds: int = 4,
    seed: int = 0,
    on_event: Callable[[UpdateEvent], None] | None = None,
    **overrides: Any,
) -> PersonalizationResult:
    """Update the personal model at ``model_path`` on ``records``, keeping it only if better.

    The check compares mean squared error on held-out records before and after
    the update. With ``holdout`` given, the update trains on all ``records`` and
    is checked on ``holdout``. Without it (the usual case on a device, where a
    user has a dozen records), the check is a ``folds``-fold cross-validation:
    each fold is held out in turn while the update trains on the rest, and the
    summed held-out error must not rise; only then is the final update trained
    on all records. The model is written to ``output_path`` (default:
    ``model_path`` itself) only if the check passes and every loss stayed
    finite; otherwise nothing is written and the result says why. Bad input
    raises before any training. ``overrides`` go to :func:`update_spec`
    (``learning_rate``, ``epochs``, ``batch_size``, ``shuffle``, ``convention``).
    """
    model_path = Path(model_path)
    spec = load_spec(model_path)
    validate_updatable(spec)
    _check_records(spec, records, what="records")
    return _checked_update(spec, spec, records, holdout=holdout,
                           output=Path(output_path) if output_path is not None else model_path,
                           folds=folds, seed=seed, on_event=on_event, overrides=overrides)


def adopt_new_version(
    new_model_path: str | os.PathLike[str],
    personal_model_path: str | os.PathLike[str],
    unshared_records: pd.DataFrame,
    *,
    holdout: pd.DataFrame | None = None,
    folds: int = 4,
    seed: int = 0,
    on_event: Callable[[UpdateEvent], None] | None = None,
    **overrides: Any,
) -> PersonalizationResult:
    """Replace the personal model by a new foundation version, re-personalized.

    The new updatable model is personalized on the records the user never
    shared, and replaces the personal model at ``personal_model_path`` only if
    its held-out error is not worse than the current personal model's (same
    check as :func:`personalize`, with the current personal model as the
    baseline; in cross-validation the current model has seen the held-out
    fold, so the comparison leans toward keeping it). The new model file is
    not modified.
    """
    new_spec = load_spec(new_model_path)
    validate_updatable(new_spec)
    current = load_spec(personal_model_path)
    new_schema = featurizer_of(new_spec).schema.schema_id
    if featurizer_of(current).schema.schema_id != new_schema:
        raise ModelFileError(
            f"{new_model_path} describes different records (schema {new_schema}) from the "
            f"personal model {personal_model_path}; it cannot replace it.")
    return _checked_update(new_spec, current, unshared_records, holdout=holdout,
                           output=Path(personal_model_path), folds=folds, seed=seed,
                           on_event=on_event, overrides=overrides)
