"""A numpy evaluator of NeuralNetwork specs, so exported models are checked on Linux.

Core ML itself runs only on Apple platforms and no package evaluates
NeuralNetwork specs elsewhere. This evaluator runs the layer types the SDK
exports (and a few neighbours), vectorized over a batch of examples: every
blob carries a leading batch axis that the spec's shapes do not mention.
It computes in float32, as Core ML does on the CPU. An unsupported layer type
raises :class:`ModelFileError` naming it rather than guessing.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from dmt_model.coreml.weights import _network, pointwise_groups, weight_values
from dmt_privacy.errors import ModelFileError, ValidationError
from dmt_privacy.schema import refuse_complex, row_label

__all__ = [
    "apply_activation",
    "class_labels_of",
    "evaluate_spec",
    "frame_inputs",
    "grouped_matmul",
    "input_names",
    "predict_frame",
    "softmax",
]

Blobs = dict[str, np.ndarray]

_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _per_example(blob: np.ndarray, batch: int) -> np.ndarray:
    """``blob`` as ``[batch, numbers of one example]`` (``reshape(batch, -1)`` cannot say
    how many when there are no examples)."""
    return blob.reshape(batch, int(np.prod(blob.shape[1:], dtype=np.int64)))


def _batch_axis(axis: int, rank: int) -> int:
    """Map a spec axis (of an unbatched blob of ``rank``) onto the batched array."""
    return axis if axis < 0 else axis + 1


def _inner_product(layer: Any, x: np.ndarray) -> np.ndarray:
    ip = layer.innerProduct
    weight = weight_values(ip.weights, what=f"layer {layer.name!r}").reshape(
        ip.outputChannels, ip.inputChannels)
    if x.shape[-1] != ip.inputChannels:
        raise ModelFileError(f"Layer {layer.name!r} expects {ip.inputChannels} inputs, "
                             f"got a blob of shape {x.shape[1:]}.")
    out = x @ weight.T
    if ip.hasBias:
        out = out + weight_values(ip.bias, what=f"layer {layer.name!r} bias")
    return out.astype(np.float32, copy=False)  # (a new array already)


def grouped_matmul(x: np.ndarray, weight: np.ndarray, groups: int) -> np.ndarray:
    """``x [n, in]`` through ``weight [out, in / groups]`` group by group: ``[n, out]``."""
    n, width = x.shape
    out = weight.shape[0]
    xg = x.reshape(n, groups, width // groups)
    wg = weight.reshape(groups, out // groups, width // groups)
    return np.einsum("ngi,goi->ngo", xg, wg).reshape(n, out).astype(np.float32, copy=False)


def _pointwise_convolution(layer: Any, x: np.ndarray) -> np.ndarray:
    """A 1×1, stride-1 convolution of ``x [batch, C, H, W]`` (others raise)."""
    conv = layer.convolution
    groups = pointwise_groups(layer)
    if x.ndim != 4 or x.shape[1] != conv.kernelChannels * groups:
        raise ModelFileError(f"Layer {layer.name!r} expects [{conv.kernelChannels * groups}, H, "
                             f"W] inputs, got a blob of shape {x.shape[1:]}.")
    weight = weight_values(conv.weights, what=f"layer {layer.name!r}").reshape(
        conv.outputChannels, conv.kernelChannels)
    n, channels, height, width = x.shape
    pixels = x.transpose(0, 2, 3, 1).reshape(-1, channels)
    out = grouped_matmul(pixels, weight, groups)
    if conv.hasBias:
        out = out + weight_values(conv.bias, what=f"layer {layer.name!r} bias")
    return out.reshape(n, height, width, out.shape[-1]).transpose(0, 3, 1, 2).astype(np.float32)


def apply_activation(layer: Any, x: np.ndarray) -> np.ndarray:
    act = layer.activation
    kind = act.WhichOneof("NonlinearityType")
    if kind == "ReLU":
        return np.maximum(x, np.float32(0))
    if kind == "sigmoid":
        return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)
    if kind == "tanh":
        return np.tanh(x)
    if kind == "linear":
        return (act.linear.alpha * x + act.linear.beta).astype(np.float32)
    if kind == "leakyReLU":
        return np.where(x >= 0, x, act.leakyReLU.alpha * x).astype(np.float32)
    raise ModelFileError(f"Layer {layer.name!r}: activation {kind!r} is not supported.")


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """``exp(x) / Σ exp(x)`` along ``axis``, computed stably in float32 (in place, with the
    ufuncs' own reductions: the personal updates call it once a step)."""
    shifted = x - np.maximum.reduce(x, axis=axis, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= np.add.reduce(shifted, axis=axis, keepdims=True)
    return shifted.astype(np.float32, copy=False)


def _load_constant_nd(layer: Any, batch: int) -> np.ndarray:
    const = layer.loadConstantND
    values = weight_values(const.data, what=f"layer {layer.name!r}")
    return np.broadcast_to(values.reshape(tuple(const.shape)), (batch, *const.shape))


def _aligned(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two batched blobs shaped for numpy to broadcast them as Core ML does unbatched: the
    lower-rank one gains unit axes after its batch axis (rank alignment from the right)."""
    if a.ndim < b.ndim:
        a = a.reshape(a.shape[0], *([1] * (b.ndim - a.ndim)), *a.shape[1:])
    elif b.ndim < a.ndim:
        b = b.reshape(b.shape[0], *([1] * (a.ndim - b.ndim)), *b.shape[1:])
    return a, b


def _unary_inputs(layer: Any, blobs: Blobs) -> np.ndarray:
    return blobs[layer.input[0]]


def _run_layer(layer: Any, blobs: Blobs, batch: int) -> np.ndarray:
    kind = layer.WhichOneof("layer")
    if kind == "innerProduct":
        return _inner_product(layer, _unary_inputs(layer, blobs))
    if kind == "convolution":
        return _pointwise_convolution(layer, _unary_inputs(layer, blobs))
    if kind == "activation":
        return apply_activation(layer, _unary_inputs(layer, blobs))
    if kind == "loadConstantND":
        return _load_constant_nd(layer, batch)
    if kind == "concatND":
        parts = [blobs[name] for name in layer.input]
        axis = _batch_axis(layer.concatND.axis, parts[0].ndim - 1)
        return np.concatenate(parts, axis=axis)
    if kind == "equal":
        a, b = _aligned(*(blobs[name] for name in layer.input)) if len(layer.input) == 2 else (
            blobs[layer.input[0]], np.float32(layer.equal.alpha))
        return (a == b).astype(np.float32)
    if kind in ("maxBroadcastable", "minBroadcastable"):
        a, b = _aligned(*(blobs[name] for name in layer.input))
        return np.maximum(a, b) if kind == "maxBroadcastable" else np.minimum(a, b)
    if kind in ("addBroadcastable", "multiplyBroadcastable", "divideBroadcastable"):
        a, b = _aligned(*(blobs[name] for name in layer.input))
        if kind == "divideBroadcastable":
            return (a / b).astype(np.float32)
        return (a + b) if kind == "addBroadcastable" else (a * b)
    if kind == "expandDims":
        x = blobs[layer.input[0]]
        rank = x.ndim - 1 + len(layer.expandDims.axes)
        for axis in sorted(a if a >= 0 else rank + a for a in layer.expandDims.axes):
            x = np.expand_dims(x, axis + 1)
        return x
    if kind == "reduceSum":
        x = blobs[layer.input[0]]
        params = layer.reduceSum
        summed = tuple(range(1, x.ndim)) if params.reduceAll else tuple(
            _batch_axis(a if a >= 0 else x.ndim - 1 + a, x.ndim - 1) for a in params.axes)
        return x.sum(axis=summed, keepdims=params.keepDims).astype(np.float32)
    if kind == "clip":
        return np.clip(blobs[layer.input[0]], layer.clip.minVal, layer.clip.maxVal)
    if kind == "flatten" or kind == "flattenTo2D":
        return _per_example(blobs[layer.input[0]], batch)
    if kind == "reshapeStatic":
        return blobs[layer.input[0]].reshape(batch, *layer.reshapeStatic.targetShape)
    if kind in ("softmax", "softmaxND"):
        x = blobs[layer.input[0]]
        if kind == "softmax":  # the channel axis: −3 from rank 3 up, the last one below
            return softmax(x, -3 if x.ndim - 1 >= 3 else -1)
        return softmax(x, _batch_axis(layer.softmaxND.axis, x.ndim - 1))
    raise ModelFileError(
        f"Layer {layer.name!r} has type {kind!r}, which the numpy evaluator does not support."
    )


def _counted_matches(equal: Any, reduce: Any, blobs: Blobs, read: Counter[str],
                     wanted: Sequence[str]) -> np.ndarray | None:
    """A text model's bag of tokens without its one-hot: ``equal`` of token ids
    ``[batch, positions, 1]`` with a constant row of ids, then ``reduceSum`` over the
    positions, is each id's count, ``[batch, ids]`` in float32 — the same numbers (whole
    counts, exact in float32) without the ``[batch, positions, ids]`` blob between, which
    nothing else reads. ``None`` for any other pair of layers (they run one by one)."""
    if equal.WhichOneof("layer") != "equal" or reduce.WhichOneof("layer") != "reduceSum" \
            or len(equal.input) != 2 or list(reduce.input) != [equal.output[0]] \
            or read[equal.output[0]] != 1 or equal.output[0] in wanted:
        return None
    params = reduce.reduceSum
    tokens, ids = (blobs[name] for name in equal.input)
    if params.reduceAll or list(params.axes) != [0] or params.keepDims or tokens.ndim != 3 \
            or tokens.shape[2] != 1 or ids.ndim != 2 or ids.shape[0] != tokens.shape[0] \
            or not len(ids) or ids.strides[0] != 0:  # (a constant row broadcast over a batch)
        return None
    row = ids[0]
    order = np.argsort(row, kind="stable")
    ordered = row[order]
    if ordered.size == 0 or np.count_nonzero(ordered[1:] == ordered[:-1]):
        return None  # (an id listed twice: counted one by one)
    values = tokens[:, :, 0]
    at = np.minimum(np.searchsorted(ordered, values), ordered.size - 1)
    hit = ordered[at] == values
    batch, width = values.shape[0], ordered.size
    where = np.arange(batch)[:, None] * width + order[at]
    return np.bincount(where[hit], minlength=batch * width).reshape(batch, width).astype(
        np.float32)


def input_names(spec: Any) -> list[str]:
    return [feature.name for feature in spec.description.input]


def evaluate_spec(spec: Any, inputs: Mapping[str, np.ndarray], *,
                  outputs: Sequence[str] | None = None,
                  on_layer: Callable[[Any, Blobs], None] | None = None) -> Blobs:
    """Run the spec's layers on a batch.

    ``inputs`` maps every model input to an array of shape ``[batch, *shape]``
    (a 1-D array is taken as one value per example). Returns the requested
    blobs (the model's outputs by default), each ``[batch, *shape]``.
    """
    network = _network(spec)
    names = input_names(spec)
    missing = [n for n in names if n not in inputs]
    if missing:
        raise ValidationError(f"Missing model input(s) {missing!r}; the model reads {names!r}.")
    blobs: Blobs = {}
    batch = None
    for name in names:
        value = np.asarray(inputs[name], dtype=np.float32)
        if value.ndim == 1:
            value = value[:, None]
        if batch is None:
            batch = value.shape[0]
        elif value.shape[0] != batch:
            raise ValidationError(f"Input {name!r} has {value.shape[0]} examples, "
                                  f"expected {batch}.")
        blobs[name] = value
    assert batch is not None
    wanted = list(outputs) if outputs is not None else [o.name for o in spec.description.output]
    layers = list(network.layers)
    read = Counter(name for layer in layers for name in layer.input)
    at = 0
    while at < len(layers):
        layer = layers[at]
        counts = None if on_layer is not None or at + 1 == len(layers) else _counted_matches(
            layer, layers[at + 1], blobs, read, wanted)
        if counts is not None:  # (the next layer's output, computed with this one)
            blobs[layers[at + 1].output[0]] = counts
            at += 2
            continue
        blobs[layer.output[0]] = _run_layer(layer, blobs, batch)
        if on_layer is not None:
            on_layer(layer, blobs)
        at += 1
    label = spec.description.predictedFeatureName
    if label in wanted and label not in blobs:  # a classifier's label: the likeliest class
        labels = class_labels_of(spec)
        probabilities = _per_example(blobs[spec.description.predictedProbabilitiesName], batch)
        blobs[label] = np.asarray(labels, dtype=object)[probabilities.argmax(axis=1)]
    unknown = [w for w in wanted if w not in blobs]
    if unknown:
        raise ModelFileError(f"The model produces no blob named {unknown!r}.")
    return {w: blobs[w] for w in wanted}


def class_labels_of(spec: Any) -> list[Any]:
    """A classifier's class labels, in the order of its probabilities (``[]`` otherwise)."""
    if spec.WhichOneof("Type") != "neuralNetworkClassifier":
        return []
    network = spec.neuralNetworkClassifier
    kind = network.WhichOneof("ClassLabels")
    return list(getattr(network, kind).vector) if kind else []


def _featurizer(spec: Any) -> Any:
    """The featurizer in ``spec``'s metadata, for :func:`frame_inputs` to read (never to fit:
    one object serves every spec that carries the same JSON)."""
    text = spec.description.metadata.userDefined.get("dmt.featurizer")
    return _parsed_featurizer(text) if text else None


@functools.lru_cache(maxsize=16)
def _parsed_featurizer(text: str) -> Any:
    """``Featurizer.from_json(text)``, parsed once per text: parsing on every prediction
    cost more than the prediction of a small batch."""
    from dmt_model.features import Featurizer

    return Featurizer.from_json(text)


def frame_inputs(spec: Any, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """The model's inputs from ``frame``'s raw values: a number per scalar input, an array per
    image input (``[n, *shape]``); anything missing, non-numeric, non-finite or of the wrong
    shape raises :class:`ValidationError` naming the column and the row."""
    featurizer = _featurizer(spec)
    bags = frozenset(featurizer.bag_fields) if featurizer is not None else frozenset()
    features = list(spec.description.input)
    if not frame.columns.is_unique:
        twice = sorted({str(f.name) for f in features
                        if (frame.columns == f.name).sum() > 1})
        if twice:
            raise ValidationError(f"Column(s) {twice!r} appear more than once; the model reads "
                                  "each input from one column: drop the copies.")
    numbers = _plain_numbers(frame, [f.name for f in features if f.name not in bags and
                                     tuple(f.type.multiArrayType.shape) in ((), (1,))])
    return {f.name: numbers[f.name] if f.name in numbers else
            _column_input(spec, f, featurizer if f.name in bags else None, frame)
            for f in features}


def _plain_numbers(frame: pd.DataFrame, names: list[str]) -> dict[str, np.ndarray]:
    """The scalar inputs ``names`` read from ``frame`` in one conversion, when each is a
    column of plain numbers (bool, integer or float), finite and within float32; else ``{}``
    and each is read, and its fault named, by :func:`_column_input`. The values are those
    ``_column_input`` gives: reading 60 inputs column by column cost a small device's batch
    ten times its prediction."""
    columns = frame.columns
    if not names or not columns.is_unique:
        return {}
    position = {name: i for i, name in enumerate(columns)}
    if not all(name in position for name in names):
        return {}
    plain = [isinstance(dtype, np.dtype) and dtype.kind in "biuf" for dtype in frame.dtypes]
    if all(plain) and len(columns) <= 2 * len(names):  # the whole frame, then its inputs:
        # cheaper than selecting them first, unless it holds many columns besides
        values = frame.to_numpy(dtype=np.float64)[:, [position[name] for name in names]]
    elif all(plain[position[name]] for name in names):
        values = frame[names].to_numpy(dtype=np.float64)
    else:
        return {}
    if not (np.isfinite(values).all() and (np.abs(values) <= _FLOAT32_MAX).all()):
        return {}
    return {name: values[:, i] for i, name in enumerate(names)}


def _column_input(spec: Any, feature: Any, featurizer: Any, frame: pd.DataFrame) -> np.ndarray:
    """Input ``feature`` from its column of ``frame`` (through ``featurizer`` for one that
    feeds an embedding, else ``None``), or the :class:`ValidationError` naming its fault."""
    name = feature.name
    if name not in frame.columns:
        names = input_names(spec)
        raise ValidationError(f"Missing column(s) {[n for n in names if n not in frame]!r}; "
                              f"the model reads {names!r}.")
    shape = tuple(feature.type.multiArrayType.shape)
    if featurizer is None:
        refuse_complex(frame[name], name, "the model reads real ones",
                       cells=shape not in ((), (1,)))
    try:
        if featurizer is not None:
            column = featurizer.model_input(name, frame[name])
        elif shape in ((), (1,)):
            column = frame[name].to_numpy(dtype=np.float64)
        else:
            column = np.stack([np.asarray(v, dtype=np.float64).reshape(shape)
                               for v in frame[name].tolist()]) if len(frame) else \
                np.zeros((0, *shape))
    except (TypeError, ValueError):
        raise ValidationError(
            f"Column {name!r} must hold numbers" + (f" (arrays of shape {shape})"
                                                    if shape not in ((), (1,)) else "")
            + ".") from None
    per_record = tuple(range(1, column.ndim))  # a record's verdict: all its numbers (pixels)
    finite = np.isfinite(column).all(axis=per_record)
    if not finite.all():
        row = row_label(frame.index[int((~finite).argmax())])
        raise ValidationError(f"Column {name!r} has NaN or infinity at row {row!r}.")
    # the model computes in float32: a larger number would become infinity there
    readable = (np.abs(column) <= _FLOAT32_MAX).all(axis=per_record)
    if not readable.all():
        row = row_label(frame.index[int((~readable).argmax())])
        raise ValidationError(
            f"Column {name!r} holds a number beyond what the model reads (float32, "
            f"±{_FLOAT32_MAX:.3g}) at row {row!r}; fix or drop that record.")
    return column


def predict_frame(spec: Any, frame: pd.DataFrame) -> np.ndarray:
    """The model's prediction for each record of ``frame`` (raw field values): ``[n]`` values
    of a regressor, ``[n, classes]`` probabilities of a classifier."""
    if spec.WhichOneof("Type") == "neuralNetworkClassifier":
        name = spec.description.predictedProbabilitiesName
        (output,) = evaluate_spec(spec, frame_inputs(spec, frame), outputs=[name]).values()
        return _per_example(output, len(frame))
    (output,) = evaluate_spec(spec, frame_inputs(spec, frame)).values()
    return output.reshape(len(frame))
