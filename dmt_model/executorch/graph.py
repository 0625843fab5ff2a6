"""The training graph a dmt ExecuTorch program holds, as a torch module.

It is the exported Core ML graph (:mod:`dmt_model.coreml.export`) written in
torch, taking the same *raw* field values and doing the featurizer's work
itself, batched over a leading axis:

* each categorical input (the raw value, or its position in a vocabulary of
  strings: :func:`dmt_model.features.coded_input`) is compared with its
  vocabulary, giving a one-hot row (zeros for an unknown value) whose product
  with the embedding table is the embedding;
* a text input is its ``max_tokens`` token ids; the mean of their one-hots
  over ids 1..width (padding, id 0, matches none) times the table is the mean
  of the tokens' embeddings;
* numeric inputs and image pixels are standardized as ``x · (1/scale) −
  mean/scale`` (the Core ML ``standardize`` layer's float32 constants);
* dense layers with ReLU between them, then the **personal head**: a
  regression's 1 → 1 layer (weight = the target's scale, bias = its mean)
  giving the target in its units, or a classifier's per-class scale and bias
  (1 and 0) before the softmax.

The input is one row of raw numbers per record (:func:`input_layout` says
which columns hold which field). :meth:`TrainingGraph.features` does the
work before the first updatable layer (preprocessing and frozen layers,
computed once per record); ``forward(features, target)`` returns
``(loss, predictions)``: the mean over the batch of ``(ŷ − y)²`` in the
target's units, or of ``−log p(y)`` (the target a class index), and the
target's values ``[n]`` or the class probabilities ``[n, C]``. The same
losses as the Core ML export's, so the same update settings train the same
parameters. The updatable layers are ``torch.nn.Parameter`` s (named after
the Core ML layers, e.g. ``personal_head.weight``), everything else is a
buffer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dmt_model.features import Featurizer, coded_input

__all__ = ["FeatureGraph", "FoundationWeights", "TrainingGraph", "chain_names", "graph_inputs",
           "input_layout"]

HEAD = "personal_head"


def chain_names(dense_layers: int) -> list[str]:
    """The inner-product layers after the embeddings, as the Core ML export names them."""
    return [f"dense_{i}" for i in range(dense_layers)] + [HEAD]


@dataclass(frozen=True)
class FoundationWeights:
    """Every weight of the graph as float32 arrays: embedding tables ``[vocab, dim]`` in the
    featurizer's bag order, then ``(weight [out, in], bias [out])`` per layer of the chain
    (``dense_0`` … ``personal_head``; a classifier's head weight is ``[C]``)."""

    embeddings: tuple[np.ndarray, ...]
    layers: tuple[tuple[np.ndarray, np.ndarray], ...]

    @classmethod
    def of(cls, foundation: Any) -> FoundationWeights:
        """From a :class:`~dmt_model.foundation.Foundation` or a
        :class:`~dmt_model.model_file.FoundationArrays`, with the export's head."""
        featurizer = foundation.featurizer
        tables = tuple(np.asarray(e.weight.detach().numpy(), np.float32)
                       for e in foundation.network.embeddings)
        dense = [(d.weight.detach().numpy(), d.bias.detach().numpy())
                 for d in foundation.dense_layers]
        return cls(tables, tuple(featurizer.task.personal_layers(featurizer, dense)))


class _Layer(torch.nn.Module):
    """A weight and a bias, trainable (parameters) or frozen (buffers)."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray, *, trainable: bool) -> None:
        super().__init__()
        for name, value in (("weight", weight), ("bias", bias)):
            tensor = torch.tensor(np.asarray(value, np.float32))
            if trainable:
                self.register_parameter(name, torch.nn.Parameter(tensor))
            else:
                self.register_buffer(name, tensor)


class TrainingGraph(torch.nn.Module):
    """The trainable program's computation (module docstring)."""

    def __init__(self, featurizer: Featurizer, weights: FoundationWeights,
                 updatable: Sequence[str]) -> None:
        super().__init__()
        self.classifier = bool(featurizer.classes_)
        self.text_fields = list(featurizer.text_fields)
        self.bag_fields = list(featurizer.bag_fields)
        self.token_counts = {n: featurizer.tokenizers_[n].max_tokens for n in self.text_fields}
        self.width = sum(field["width"] for field in input_layout(featurizer))
        image_widths = [featurizer.image_width(n) for n in featurizer.image_fields]
        for i, (name, table) in enumerate(zip(self.bag_fields, weights.embeddings, strict=True)):
            if name in self.text_fields:
                ids = np.arange(1, featurizer.bag_width(name) + 1, dtype=np.float32)
            else:
                values = featurizer.vocabularies_[name]
                ids = np.arange(len(values), dtype=np.float32) if coded_input(values) \
                    else np.asarray(values, dtype=np.float32)
            self.register_buffer(f"vocabulary_{i}", torch.tensor(ids))
            self.register_buffer(f"embedding_{i}", torch.tensor(np.asarray(table, np.float32)))
        means = [featurizer.mean_.astype(np.float64)]
        scales = [featurizer.scale_.astype(np.float64)]
        for name, width in zip(featurizer.image_fields, image_widths, strict=True):
            pixel_mean, pixel_scale = featurizer.image_stats_[name]
            means.append(np.full(width, pixel_mean))
            scales.append(np.full(width, pixel_scale))
        mean, scale = np.concatenate(means), np.concatenate(scales)
        self.register_buffer("inverse_scale", torch.tensor((1.0 / scale).astype(np.float32)))
        self.register_buffer("shift", torch.tensor((-mean / scale).astype(np.float32)))
        reach = featurizer.input_reach()
        self.held = bool(np.isfinite(reach).any())  # else the program holds nothing
        if self.held:
            reach = np.minimum(reach, float(np.finfo(np.float32).max))
            self.register_buffer("reach", torch.tensor(reach.astype(np.float32)))
        self.chain = chain_names(len(weights.layers) - 1)
        for name, (weight, bias) in zip(self.chain, weights.layers, strict=True):
            self.add_module(name, _Layer(weight, bias, trainable=name in updatable))
        self.first_updatable = min(self.chain.index(name) for name in updatable)

    def _dense(self, names: Sequence[str], h: torch.Tensor) -> torch.Tensor:
        """``h`` through the dense layers ``names`` (ReLU after every one but the last)."""
        for name in names:
            layer: Any = getattr(self, name)
            h = h @ layer.weight.t() + layer.bias
            if name in self.chain[:-2]:
                h = torch.relu(h)
        return h

    def features(self, values: torch.Tensor) -> torch.Tensor:
        """Raw ``values [n, width]`` → the first updatable layer's input: the featurizer's
        work and the frozen layers, whose output no update changes."""
        parts = []
        column = 0
        for i, name in enumerate(self.bag_fields):
            vocabulary = getattr(self, f"vocabulary_{i}")
            if name in self.text_fields:  # [n, tokens] ids → mean of their one-hots
                x = values[:, column:column + self.token_counts[name]]
                column += self.token_counts[name]
                counts = (x.unsqueeze(2) == vocabulary).to(torch.float32).sum(dim=1)
                one_hot = counts / torch.clamp(counts.sum(dim=1, keepdim=True), min=1.0)
            else:
                one_hot = (values[:, column:column + 1] == vocabulary).to(torch.float32)
                column += 1
            parts.append(one_hot @ getattr(self, f"embedding_{i}"))
        if column < self.width:  # numeric fields and image pixels, standardized together
            scale: Any = self.inverse_scale
            shift: Any = self.shift
            standardized = values[:, column:] * scale + shift
            if self.held:
                reach: Any = self.reach
                standardized = torch.minimum(torch.maximum(standardized, -reach), reach)
            parts.append(standardized)
        return self._dense(self.chain[:self.first_updatable], torch.cat(parts, dim=1))

    def predictions(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(what the loss reads: the target in its units ``[n]`` or logits ``[n, C]``,
        predictions: the same values, or class probabilities) from :meth:`features`."""
        h = self._dense(self.chain[self.first_updatable:-1], features)
        head: Any = getattr(self, self.chain[-1])
        if self.classifier:
            logits = h * head.weight + head.bias
            return logits, torch.softmax(logits, dim=1)
        value = (h @ head.weight.t() + head.bias).squeeze(1)
        return value, value

    def forward(self, features: torch.Tensor, target: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(:meth:`features` ``[n, k]``, target ``[n]``) → (mean loss, predictions, detached)."""
        out, predicted = self.predictions(features)
        if self.classifier:
            loss = torch.nn.functional.cross_entropy(out, target)
        else:
            loss = torch.mean((out - target) ** 2)
        return loss, predicted.detach()


class FeatureGraph(torch.nn.Module):
    """The program's ``features`` method: :meth:`TrainingGraph.features`."""

    def __init__(self, graph: TrainingGraph) -> None:
        super().__init__()
        self.source = graph  # not ``graph``: torch.fx modules have an attribute of that name

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        return self.source.features(values)


def input_layout(featurizer: Featurizer) -> list[dict[str, Any]]:
    """Where each field's raw values sit in a record's row of the program's input: its
    ``name``, ``shape`` (``[]`` for one number), first ``column`` and ``width``, in the
    featurizer's input order (categorical, texts, numeric, images)."""
    layout, column = [], 0
    for name in featurizer.input_fields:
        if name in featurizer.text_fields:
            shape = [featurizer.tokenizers_[name].max_tokens]
        elif name in featurizer.image_fields:
            shape = list(featurizer.schema[name].shape or ())
        else:
            shape = []
        width = int(np.prod(shape)) if shape else 1
        layout.append({"name": name, "shape": shape, "column": column, "width": width})
        column += width
    return layout


def graph_inputs(graph: TrainingGraph, batch: int
                 ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Example inputs of ``batch`` records (for tracing): raw values for ``features``,
    (features, target) for ``forward``."""
    values = torch.zeros((batch, graph.width), dtype=torch.float32)
    target = torch.zeros(batch, dtype=torch.int64 if graph.classifier else torch.float32)
    with torch.no_grad():
        features = graph.features(values)
    return values, (features, target)
