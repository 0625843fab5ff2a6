"""Export a foundation model to NeuralNetwork ``.mlmodel`` files, plain or updatable.

The graph takes the *raw* field values, one input of shape ``(1,)`` per field,
and does the featurizer's work itself, so a device cannot preprocess
differently from the server:

* numeric inputs are concatenated and standardized by a fixed ``innerProduct``
  (diagonal weights ``1/scale``, bias ``−mean/scale``): coremltools'
  ``make_updatable`` refuses graphs holding a ``scale`` layer;
* each categorical input is compared (``equal``) with its vocabulary, a
  ``loadConstantND``, giving a one-hot vector (all zeros for an unknown
  value), and an ``innerProduct`` without bias holding the embedding table
  turns it into the embedding; a vocabulary of strings is passed as the
  value's position in it (:func:`dmt_model.features.coded_input`);
* a text input is its ``max_tokens`` token ids, from the tokenizer in the
  model's metadata (:mod:`dmt_privacy.tokens`, run on the device); the graph
  compares them with the ids (``equal``), sums over positions and divides by
  the number of tokens: the mean of their one-hots, whose ``innerProduct``
  with the embedding table is the mean of the tokens' embeddings;
* an image input (a MultiArray of the field's ``shape``, pixels as captured)
  is flattened (``reshapeStatic``) and standardized with the numeric inputs;
* the embeddings and standardized numerics are concatenated and pass through
  the dense layers: ``dense_0`` → ReLU → ``dense_1`` → ReLU → ``dense_2``,
  whose output is the *standardized* target;
* the **personal head**, a 1 → 1 ``innerProduct`` (weight = the target's
  scale, bias = its mean), turns that into the target's units; its output is
  the target field's name.

A classifier (a categorical target, :mod:`dmt_model.tasks`) is a Core ML
``neuralNetworkClassifier``: ``dense_2`` gives one logit per class, reshaped
to ``[C, 1, 1]``; the personal head is a per-class scale and bias (a 1 × 1
``convolution`` with one group per class, the only updatable layer: a full
C × C head overfit a user's few records and raised their log loss, README).
``dense_2`` gives the logits divided by ``K`` and the head's scales start at
``K`` (:data:`dmt_model.tasks.HEAD_LOGIT_SCALE`), so that an update moves the
class biases and barely the scales. A ``softmax`` gives ``<target>Probability``;
Core ML adds the likeliest class label as the output ``<target>``. Its loss
is the categorical cross-entropy of those probabilities, and its training
target is the class label itself (input ``<target>``, an integer or a string
like the model's class labels).

The updatable model carries *all* foundation weights (the reference app copied
only the embeddings) and marks the last ``updatable_layers`` inner-product
layers of ``dense_0, dense_1, dense_2, personal_head`` updatable: a contiguous
suffix ending at the loss, with only ReLU between, as Core ML requires (no
frozen layer after an updatable one, coremltools #1983). Loss: mean squared
error against ``<target>_true``, in the target's raw units, so the device
passes raw values for everything.

Why the personal head alone is updatable by default: its input is unitless
(the standardized prediction) and its parameters are in the target's units,
so an SGD step on it scales exactly with the target: the same update settings
work for a target around 20 or around 20,000. A layer further upstream has
unitless weights but gradients in the target's units, so its step size would
depend on them. See :class:`UpdateSettings` for how the defaults were chosen.

The featurizer and schema JSON travel in the model's metadata
(``dmt.featurizer``, ``dmt.schema``), with ``dmt.format`` and
``dmt.model_version``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from dmt_model.coreml._spec import import_coremltools, save_spec
from dmt_model.features import coded_input
from dmt_model.foundation import Foundation
from dmt_privacy.errors import ValidationError, warn_caller
from dmt_privacy.files import SHARED_FILE_MODE

__all__ = ["UpdateSettings", "build_spec", "export_coreml"]

METADATA_FORMAT = "1"
#: ``userDefined`` key: the classes a classifier's network was fitted on a record of (a JSON
#: list of positions in its classes; :attr:`~dmt_model.foundation.Foundation.classes_trained`),
#: absent where that is not known
CLASSES_TRAINED = "dmt.classes_trained"
DENSE_PREFIX = "dense_"
HEAD = "personal_head"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_))


def _is_whole(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


@dataclass(frozen=True)
class UpdateSettings:
    """How Core ML's ``MLUpdateTask`` trains the updatable model on a device.

    The defaults hold on any regression target and under every loss
    convention a device might use (``benchmarks/model_quality.py``, README
    "Personalization on any data"):

    * only the personal head is updatable (``updatable_layers=1``): its input
      is unitless and its parameters are in the target's units, so a plain SGD
      step scales with the target and the learning rate does not depend on it;
    * mini-batches of one record: Core ML does not document whether its MSE is
      a mean or a sum over the batch, and with one record they are the same
      (a ½ factor only halves the step);
    * SGD at 0.01 for 100 epochs runs the head to the fixed point that
      :func:`dmt_model.personalize.with_prior` sets, so what the update
      converges to does not depend on the step size either. Where a
      device's records lie far past the proxy, the head's inputs are large
      and the step too long to settle there: :func:`~dmt_model.personalize.personalize`
      tries such an update again at a tenth of the rate, then a hundredth.

    ``updatable_layers`` counts inner-product layers back from the output:
    1 is the head; 2 adds ``dense_2`` and so on (whose gradients are in the
    target's units, so their learning rate would have to be tuned per target).
    """

    updatable_layers: int = 1
    optimizer: Literal["sgd", "adam"] = "sgd"
    learning_rate: float = 0.01
    batch_size: int = 1
    epochs: int = 100
    shuffle: bool = True
    seed: int = 0
    momentum: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adam"):
            raise ValidationError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}.")
        rate = self.learning_rate
        if not (_is_number(rate) and 0 < rate <= 1):
            raise ValidationError(
                f"learning_rate must be in (0, 1] (Core ML's range), got {rate!r}."
            )
        for name in ("batch_size", "epochs", "updatable_layers"):
            value = getattr(self, name)
            if not (_is_whole(value) and value >= 1):
                raise ValidationError(f"{name} must be a positive integer, got {value!r}.")
        if not isinstance(self.shuffle, (bool, np.bool_)):
            raise ValidationError(f"shuffle must be True or False, got {self.shuffle!r}.")
        if not (_is_whole(self.seed) and self.seed >= 0):
            raise ValidationError(f"seed must be a non-negative integer, got {self.seed!r}.")
        if not 0 <= self.momentum < 1:
            raise ValidationError(f"momentum must be in [0, 1), got {self.momentum!r}.")


#: How large float32's spacing at a regression target's mean may be against an SGD update's
#: step (the learning rate × the target's spread: its steps scale with the target) before an
#: updatable export warns (:func:`warn_of_rounded_steps`).
ROUNDED_STEP_SHARE = 0.1


def warn_of_rounded_steps(featurizer: Any, settings: UpdateSettings) -> None:
    """Warn (:class:`~dmt_model.features.FloatPrecisionWarning`) when a regression target's
    mean is so far from zero that float32, in which the device holds the personal head's bias
    (the mean, in the target's units), rounds an update's steps of it away.

    helper-112: a target of 4e5 ± 5 (spacing 0.031 there, against steps of 0.01 × 5.5) drew no
    warning, and users drawn like the proxy ended +0.58 % test RMSE at 5 records against
    +0.14 % without the offset; at learning rate 0.1, whose steps float32 holds, +0.07 % both,
    but that rate cost users who differ from the proxy (a per-user factor on the target, 40
    records: -26.4 % against -29.9 % at 0.01), so the remedy is the offset. The featurizer's
    own warning fires only where standardizing loses the spread (1e5 spreads).

    SGD only: Adam's steps are about the learning rate in the target's units whatever the
    target's spread, so a price in dollars would warn at any spread, and an offset would not
    make such steps large enough to matter (helper-118)."""
    from dmt_model.features import FloatPrecisionWarning

    if featurizer.classes_ or settings.optimizer != "sgd":
        return
    mean, spread = float(featurizer.target_mean_), float(featurizer.target_scale_)
    step = settings.learning_rate * spread
    spacing = float(np.spacing(np.float32(abs(mean))))
    if spacing <= ROUNDED_STEP_SHARE * step:
        return
    warn_caller(FloatPrecisionWarning(
        f"{featurizer.target!r} averages {mean:.6g} with a spread (std) of {spread:.3g}: the "
        f"device holds the personal head's bias, that mean, in float32, whose steps there are "
        f"{spacing:.3g}, more than {ROUNDED_STEP_SHARE:.0%} of an update's step (learning "
        f"rate {settings.learning_rate:g} × the spread = {step:.3g}), so updates round away "
        f"and users can end worse off. Subtract an offset from {featurizer.target!r} in the "
        "data first, on the server and on the devices."))


def probabilities_name(target: str) -> str:
    """A classifier's output of class probabilities (Core ML's ``predictedProbabilitiesName``)."""
    return f"{target}Probability"


def class_labels(featurizer: Any) -> list[int] | list[str]:
    """The classes as Core ML labels: integers when every class is one, else strings."""
    classes = featurizer.classes_
    if all(isinstance(c, int) and not isinstance(c, bool) for c in classes):
        return [int(c) for c in classes]
    return [str(c) for c in classes]


def _token_bag(builder: Any, name: str, width: int) -> str:
    """Token ids ``[max_tokens]`` → the mean of their one-hots over ids 1..width (padding, id 0,
    matches none): ``expandDims`` → ``equal`` with the ids → ``reduceSum`` over positions →
    ÷ max(1, number of tokens). Returns the bag's blob."""
    ids = np.arange(1, width + 1, dtype=np.float64)
    builder.add_expand_dims(f"ids_{name}", name, f"ids_{name}", axes=[-1])
    builder.add_load_constant_nd(f"token_ids_{name}", f"token_ids_{name}",
                                 constant_value=ids, shape=ids.shape)
    builder.add_equal(f"tokens_{name}", [f"ids_{name}", f"token_ids_{name}"], f"tokens_{name}")
    builder.add_reduce_sum(f"counts_{name}", f"tokens_{name}", f"counts_{name}", axes=[0],
                           keepdims=False)
    builder.add_reduce_sum(f"length_{name}", f"counts_{name}", f"length_{name}", axes=[0],
                           keepdims=True)
    builder.add_clip(f"length_at_least_1_{name}", f"length_{name}",
                     f"length_at_least_1_{name}", min_value=1.0, max_value=float(2**24))
    builder.add_divide_broadcastable(f"bag_{name}", [f"counts_{name}",
                                                     f"length_at_least_1_{name}"],
                                     f"bag_{name}")
    return f"bag_{name}"


def _dense_weights(foundation: Foundation) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(layer.weight.detach().numpy().astype(np.float32),
             layer.bias.detach().numpy().astype(np.float32))
            for layer in foundation.dense_layers]


def build_spec(foundation: Foundation, *, updatable: UpdateSettings | None = None,
               version: str = "1", description: str = "") -> Any:
    """The Core ML spec of ``foundation``; updatable when ``updatable`` is given."""
    import_coremltools()
    from coremltools.models import datatypes
    from coremltools.models.neural_network import AdamParams, NeuralNetworkBuilder, SgdParams

    featurizer = foundation.featurizer
    target = featurizer.target
    classifier = bool(featurizer.classes_)
    inputs = [(name, datatypes.Array(1)) for name in featurizer.categorical_fields]
    inputs += [(name, datatypes.Array(featurizer.tokenizers_[name].max_tokens))
               for name in featurizer.text_fields]
    inputs += [(name, datatypes.Array(1)) for name in featurizer.numeric_fields]
    inputs += [(name, datatypes.Array(*featurizer.schema[name].shape or ()))
               for name in featurizer.image_fields]
    output = probabilities_name(target) if classifier else target
    builder = NeuralNetworkBuilder(
        inputs, [(output, datatypes.Array(len(featurizer.classes_) if classifier else 1))],
        mode="classifier" if classifier else None, disable_rank5_shape_mapping=True)

    # Standardization of the numeric inputs and image pixels, one diagonal innerProduct.
    numeric = list(featurizer.numeric_fields)
    means, scales = [featurizer.mean_.astype(np.float64)], [featurizer.scale_.astype(np.float64)]
    for name in featurizer.image_fields:
        width = featurizer.image_width(name)
        builder.add_reshape_static(f"flatten_{name}", name, f"pixels_{name}", (width,))
        numeric.append(f"pixels_{name}")
        pixel_mean, pixel_scale = featurizer.image_stats_[name]
        means.append(np.full(width, pixel_mean))
        scales.append(np.full(width, pixel_scale))
    concat_inputs: list[str] = []
    if numeric:
        raw = numeric[0]
        if len(numeric) > 1:
            raw = "numeric_raw"
            builder.add_concat_nd("numeric_raw", numeric, raw, axis=-1)
        mean, scale = np.concatenate(means), np.concatenate(scales)
        builder.add_inner_product(
            "standardize", W=np.diag(1.0 / scale).astype(np.float32),
            b=(-mean / scale).astype(np.float32),
            input_channels=len(scale), output_channels=len(scale), has_bias=True,
            input_name=raw, output_name="numeric_standardized")
        standardized = "numeric_standardized"
        reach = featurizer.input_reach()
        if np.isfinite(reach).any():
            # Each numeric input held within the featurizer's reach (pixels are not held).
            reach = np.minimum(reach, float(np.finfo(np.float32).max)).astype(np.float32)
            for end, limit, layer in (("low", -reach, builder.add_max_broadcastable),
                                      ("high", reach, builder.add_min_broadcastable)):
                builder.add_load_constant_nd(f"numeric_{end}", f"numeric_{end}",
                                             constant_value=limit, shape=limit.shape)
                layer(f"hold_{end}", [standardized, f"numeric_{end}"], f"numeric_held_{end}")
                standardized = f"numeric_held_{end}"
        concat_inputs.append(standardized)

    # Category indexing, token bags and embeddings.
    embedded = []
    for name, embedding in zip(featurizer.bag_fields, foundation.network.embeddings,
                               strict=True):
        if name in featurizer.text_fields:
            one_hot = _token_bag(builder, name, featurizer.bag_width(name))
        else:
            values = featurizer.vocabularies_[name]
            vocabulary = np.arange(len(values), dtype=np.float64) if coded_input(values) \
                else np.asarray(values, dtype=np.float64)
            builder.add_load_constant_nd(f"vocabulary_{name}", f"vocabulary_{name}",
                                         constant_value=vocabulary, shape=vocabulary.shape)
            one_hot = f"one_hot_{name}"
            builder.add_equal(one_hot, [name, f"vocabulary_{name}"], one_hot)
        table = embedding.weight.detach().numpy().astype(np.float32)  # [vocab, dim]
        builder.add_inner_product(
            f"embed_{name}", W=table.T.copy(), b=None, input_channels=table.shape[0],
            output_channels=table.shape[1], has_bias=False, input_name=one_hot,
            output_name=f"embedded_{name}")
        embedded.append(f"embedded_{name}")
    concat_inputs = embedded + concat_inputs
    features = concat_inputs[0]
    if len(concat_inputs) > 1:
        features = "features"
        builder.add_concat_nd("features", concat_inputs, features, axis=-1)

    # Dense layers, then the personal head (the task says what they hold, tasks.py).
    *dense, (head_weight, head_bias) = featurizer.task.personal_layers(
        featurizer, _dense_weights(foundation))
    blob = features
    for i, (weight, bias) in enumerate(dense):
        last = i == len(dense) - 1
        out = f"{DENSE_PREFIX}{i}_out"
        builder.add_inner_product(
            f"{DENSE_PREFIX}{i}", W=weight, b=bias, input_channels=weight.shape[1],
            output_channels=weight.shape[0], has_bias=True, input_name=blob, output_name=out)
        blob = out
        if not last:
            builder.add_activation(f"relu_{i}", "RELU", out, f"relu_{i}_out")
            blob = f"relu_{i}_out"
    if classifier:
        # logits/K [C] → [C, 1, 1] → the personal head, a per-class scale and bias (a 1×1
        # convolution with one group per class; K and 0 at export) → softmax over the classes.
        classes = len(featurizer.classes_)
        builder.add_reshape_static("logits_per_class", blob, "logits_per_class",
                                   (classes, 1, 1))
        builder.add_convolution(
            HEAD, kernel_channels=1, output_channels=classes, height=1, width=1,
            stride_height=1, stride_width=1, border_mode="valid", groups=classes,
            W=head_weight.reshape(1, 1, 1, classes), b=head_bias,
            has_bias=True, input_name="logits_per_class", output_name="personal_logits")
        # Core ML's loss builder wants the classic softmax layer (not softmaxND) here; on a
        # rank-1 blob it normalizes the only axis.
        builder.add_softmax("softmax", "personal_logits", output)
        builder.set_class_labels(class_labels(featurizer), predicted_feature_name=target,
                                 prediction_blob=output)
    else:
        # The standardized prediction → the target's units.
        builder.add_inner_product(
            HEAD, W=head_weight, b=head_bias, input_channels=1,
            output_channels=1, has_bias=True, input_name=blob, output_name=target)
    chain = [f"{DENSE_PREFIX}{i}" for i in range(len(dense))] + [HEAD]

    if updatable is not None:
        if classifier and updatable.updatable_layers > 1:
            raise ValidationError(
                f"updatable_layers={updatable.updatable_layers}, but a classifier updates only its "
                "personal head: Core ML allows no reshape between updatable layers and the "
                "loss, and the head's per-class scale and bias is what a user's own labels "
                "need (README). Use updatable_layers=1.")
        if updatable.updatable_layers > len(chain):
            raise ValidationError(
                f"updatable_layers={updatable.updatable_layers} but the model has only "
                f"{len(chain)} inner-product layers after the embeddings ({', '.join(chain)})."
            )
        trainable = chain[len(chain) - updatable.updatable_layers:]
        warn_of_rounded_steps(featurizer, updatable)
        with contextlib.redirect_stdout(io.StringIO()):  # the builder prints its choices
            builder.make_updatable(trainable)
            if classifier:  # the training target is the class label itself, named `target`
                builder.set_categorical_cross_entropy_loss("loss", input=output)
            else:
                builder.set_mean_squared_error_loss("loss", input_feature=(target,
                                                                           datatypes.Array(1)))
        batch_sizes = sorted({updatable.batch_size, 1, 8, 16, 32, 64})
        if updatable.optimizer == "sgd":
            builder.set_sgd_optimizer(SgdParams(lr=updatable.learning_rate,
                                                batch=updatable.batch_size,
                                                momentum=updatable.momentum))
            builder.nn_spec.updateParams.optimizer.sgdOptimizer.miniBatchSize.set.values[:] = \
                batch_sizes
        else:
            builder.set_adam_optimizer(AdamParams(lr=updatable.learning_rate,
                                                  batch=updatable.batch_size,
                                                  beta1=updatable.beta1, beta2=updatable.beta2,
                                                  eps=updatable.eps))
            builder.nn_spec.updateParams.optimizer.adamOptimizer.miniBatchSize.set.values[:] = \
                batch_sizes
        builder.set_epochs(updatable.epochs, allowed_set=sorted({updatable.epochs, 1, 10, 50,
                                                                 100, 500, 1000}))
        if updatable.shuffle:
            builder.set_shuffle(seed=updatable.seed)
        else:
            builder.nn_spec.updateParams.shuffle.defaultValue = False

    spec = builder.spec
    _describe(spec, foundation, version=version, description=description,
              updatable=updatable is not None)
    return spec


def _describe(spec: Any, foundation: Foundation, *, version: str, description: str,
              updatable: bool) -> None:
    featurizer = foundation.featurizer
    meta = spec.description.metadata
    meta.shortDescription = description or (
        f"dmt foundation model for {featurizer.schema.name!r}"
        + (" (updatable on device)" if updatable else "")
    )
    meta.versionString = version
    meta.author = "dmt"
    meta.userDefined["dmt.format"] = METADATA_FORMAT
    meta.userDefined["dmt.model_version"] = version
    meta.userDefined["dmt.featurizer"] = featurizer.to_json()
    meta.userDefined["dmt.schema"] = featurizer.schema.to_json()
    meta.userDefined["dmt.schema_id"] = featurizer.schema.schema_id
    if foundation.classes_trained is not None:
        meta.userDefined[CLASSES_TRAINED] = json.dumps(list(foundation.classes_trained))
    inputs = {feature.name for feature in spec.description.input}
    for feature in list(spec.description.input) + list(spec.description.trainingInput):
        name = feature.name.removesuffix("_true")
        if name in featurizer.schema:
            text = featurizer.schema[name].description or name
            feature.shortDescription = (
                f"raw value of {name}: {text}" if feature.name in inputs
                else f"true value of {name} for training"
            )
    for feature in spec.description.output:
        feature.shortDescription = f"predicted {feature.name}"


def export_coreml(foundation: Foundation, path: str | os.PathLike[str], *,
                  updatable: UpdateSettings | None = None, version: str = "1",
                  description: str = "", overwrite: bool = False) -> Path:
    """Write ``foundation`` as an ``.mlmodel`` (atomically); validated when updatable.

    The same foundation and settings give the same bytes, in any process. The
    file is 0644: it is meant to ship. An existing ``path`` is replaced only with
    ``overwrite=True``; otherwise :class:`~dmt_privacy.errors.OutputExistsError`
    and nothing is written.
    """
    from dmt_model.coreml.validate import validate_updatable

    spec = build_spec(foundation, updatable=updatable, version=version, description=description)
    if updatable is not None:
        validate_updatable(spec)
    return save_spec(spec, path, overwrite=overwrite, mode=SHARED_FILE_MODE)
