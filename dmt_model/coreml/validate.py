"""A validator of Core ML's rules for updatable NeuralNetwork models.

Core ML checks these when it compiles a model on a device; this module checks
them on Linux, where Core ML cannot run, so a broken model is caught before it
ships. Each failure raises :class:`UpdatableModelError` saying which rule was
broken, by which layer, and what to do. The rules (from Core ML's published
validator and coremltools' builder):

1. specification version ≥ 4 and ``isUpdatable`` set on the model;
2. updatable layers are ``innerProduct`` or ``convolution`` with their weights
   (and bias) marked updatable and stored as float32, not float16;
3. exactly one loss layer; its input is produced inside the graph and its
   target is a training input (for a classifier's cross-entropy: its class
   label, the ``predictedFeatureName``);
4. between any updatable layer and the loss input only convolution,
   innerProduct, flatten, pooling, batchnorm and ReLU/sigmoid/tanh
   activations may stand (concat, embedding, reshape, add or a linear
   activation there makes the model invalid), and a softmax only as the
   layer whose output a categorical cross-entropy loss reads (Core ML's rule
   for that loss: its input must be a softmax's output);
5. the updatable layers are a contiguous suffix: no non-updatable
   innerProduct/convolution between an updatable layer and the loss
   (coremltools #1983: such a model fails to compile on device);
6. an optimizer (SGD or Adam) whose default learning rate, batch size and
   other values lie in their declared ranges and sets, and a positive epoch
   count within its allowed set.
"""

from __future__ import annotations

from typing import Any

from dmt_model.coreml.weights import _network
from dmt_privacy.errors import UpdatableModelError

__all__ = ["validate_updatable"]

UPDATABLE_TYPES = {"innerProduct", "convolution"}
ALLOWED_AFTER_UPDATABLE = {"convolution", "innerProduct", "flatten", "pooling", "batchnorm"}
ALLOWED_ACTIVATIONS = {"ReLU", "sigmoid", "tanh"}


def _fail(message: str) -> None:
    raise UpdatableModelError(f"Not a valid updatable Core ML model: {message}")


def _check_range(name: str, param: Any) -> None:
    value = param.defaultValue
    kind = param.WhichOneof("AllowedValues")
    if kind == "range":
        if not param.range.minValue <= value <= param.range.maxValue:
            _fail(f"{name} {value} is outside its range [{param.range.minValue}, "
                  f"{param.range.maxValue}]; widen the range or change the value.")
    elif kind == "set":
        if value not in param.set.values:
            _fail(f"{name} {value} is not in its allowed set {list(param.set.values)}.")


def _layer_type(layer: Any) -> str:
    return str(layer.WhichOneof("layer"))


def _allowed_between(layer: Any) -> bool:
    kind = _layer_type(layer)
    if kind == "activation":
        return layer.activation.WhichOneof("NonlinearityType") in ALLOWED_ACTIVATIONS
    return kind in ALLOWED_AFTER_UPDATABLE


def validate_updatable(spec: Any) -> None:
    """Raise :class:`UpdatableModelError` unless ``spec`` obeys Core ML's update rules."""
    if spec.specificationVersion < 4:
        _fail(f"specification version {spec.specificationVersion} is below 4, the first "
              "that supports on-device update; re-export with dmt.")
    if not spec.isUpdatable:
        _fail("the model is not marked updatable (isUpdatable is false).")
    network = _network(spec)
    layers = list(network.layers)
    updatable = [layer for layer in layers if layer.isUpdatable]
    if not updatable:
        _fail("no layer is marked updatable.")
    for layer in updatable:
        kind = _layer_type(layer)
        if kind not in UPDATABLE_TYPES:
            _fail(f"layer {layer.name!r} is a {kind} layer; only innerProduct and "
                  "convolution layers can be updatable.")
        typed = getattr(layer, kind)
        if not typed.weights.isUpdatable:
            _fail(f"layer {layer.name!r} is updatable but its weights are not marked updatable.")
        if typed.hasBias and not typed.bias.isUpdatable:
            _fail(f"layer {layer.name!r} is updatable but its bias is not marked updatable.")
        if len(typed.weights.float16Value) or (typed.hasBias and len(typed.bias.float16Value)):
            _fail(f"layer {layer.name!r} stores float16 weights; updatable layers need float32.")

    params = network.updateParams
    if len(params.lossLayers) != 1:
        _fail(f"there must be exactly one loss layer, found {len(params.lossLayers)}.")
    loss = params.lossLayers[0]
    loss_kind = loss.WhichOneof("LossLayerType")
    typed_loss = getattr(loss, loss_kind)
    produced = {out: layer for layer in layers for out in layer.output}
    if typed_loss.input not in produced:
        _fail(f"loss layer {loss.name!r} reads {typed_loss.input!r}, which no layer produces; "
              "the loss input must be computed inside the graph.")
    training_inputs = {feature.name for feature in spec.description.trainingInput}
    # An updatable classifier learns from its class label: coremltools names the loss's
    # target `<probabilities>_true` but adds the label (predictedFeatureName) as the training
    # input, as in Apple's updatable MNIST classifier.
    target = typed_loss.target
    if spec.WhichOneof("Type") == "neuralNetworkClassifier" and \
            loss_kind == "categoricalCrossEntropyLossLayer":
        target = spec.description.predictedFeatureName
    if target not in training_inputs:
        _fail(f"the loss target {target!r} is not a training input.")

    # Walk back from the loss input: every layer on a path from an updatable
    # layer to the loss must be allowed there, and be updatable if it has weights.
    def upstream_updatable(blob: str, seen: dict[str, bool]) -> bool:
        """Whether an updatable layer lies upstream of ``blob``; checks layers on the way."""
        if blob in seen:
            return seen[blob]
        layer = produced.get(blob)
        if layer is None:
            seen[blob] = False
            return False
        reaches = any(upstream_updatable(name, seen) for name in layer.input)
        if reaches and not layer.isUpdatable:
            if not _allowed_between(layer):
                _fail(f"layer {layer.name!r} ({_layer_type(layer)}) stands between an "
                      "updatable layer and the loss; only convolution, innerProduct, flatten, "
                      "pooling, batchnorm and ReLU/sigmoid/tanh may. Make the layers after it "
                      "non-updatable or restructure the graph.")
            if _layer_type(layer) in UPDATABLE_TYPES:
                _fail(f"layer {layer.name!r} is not updatable but follows an updatable layer; "
                      "updatable layers must be a contiguous suffix ending at the loss "
                      "(coremltools #1983).")
        seen[blob] = reaches or bool(layer.isUpdatable)
        return seen[blob]

    if loss_kind == "categoricalCrossEntropyLossLayer":
        softmax = produced[typed_loss.input]
        if _layer_type(softmax) not in ("softmax", "softmaxND"):
            _fail(f"the categorical cross-entropy loss reads {typed_loss.input!r}, the output of "
                  f"a {_layer_type(softmax)} layer; it must read a softmax's output.")
        # The softmax is allowed between the updatable layers and this loss: start above it.
        loss_inputs = list(softmax.input)
    else:
        loss_inputs = [typed_loss.input]
    if not any([upstream_updatable(blob, {}) for blob in loss_inputs]):
        _fail(f"no updatable layer lies upstream of the loss input {typed_loss.input!r}.")

    optimizer_kind = params.optimizer.WhichOneof("OptimizerType")
    if optimizer_kind is None:
        _fail("no optimizer is set; use SGD or Adam.")
    optimizer = getattr(params.optimizer, optimizer_kind)
    for name in ("learningRate", "miniBatchSize", "momentum", "beta1", "beta2", "eps"):
        if name in optimizer.DESCRIPTOR.fields_by_name and optimizer.HasField(name):
            _check_range(f"{optimizer_kind}.{name}", getattr(optimizer, name))
    if optimizer.learningRate.defaultValue <= 0:
        _fail("the learning rate must be positive.")
    if optimizer.miniBatchSize.defaultValue < 1:
        _fail("the mini-batch size must be at least 1.")
    if not params.HasField("epochs") or params.epochs.defaultValue < 1:
        _fail("the number of epochs must be set and positive.")
    _check_range("epochs", params.epochs)
