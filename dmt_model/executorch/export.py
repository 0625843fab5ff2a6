"""Export a foundation model as a trainable ExecuTorch program (``.pte``).

The program holds the training graph of :mod:`dmt_model.executorch.graph` (the
featurizer's preprocessing inside, raw field values in) with its backward
pass, so ExecuTorch's runtime computes the gradients of the updatable layers
and its SGD steps them: on Android through ``org.pytorch.executorch.training``,
on iOS and Linux through the C++ ``extension/training``, and here from Python
(:mod:`dmt_model.executorch.program`).

The updatable layers and the update settings are the Core ML export's
(:class:`~dmt_model.coreml.UpdateSettings`): the personal head by default,
SGD (ExecuTorch's runtime has no Adam), learning rate, mini-batch size,
epochs, shuffle, seed and momentum.

Methods of the program:

``features``
    ``values`` → the first updatable layer's input ``[n, k]``: the
    featurizer's work and the frozen layers, whose output no update changes,
    so a device computes it once per record (as the Core ML emulation does).
    ``values`` is float32 ``[n, width]``: per record, each field's raw
    numbers at the columns ``metadata["inputs"]`` gives (``column``,
    ``width``, ``shape``): a categorical field its raw number, or the
    position of a string value in its vocabulary (−1 when unknown); a text
    its ``max_tokens`` token ids; a numeric field its value; an image its
    pixels, row-major.
``forward``
    ``(features, target)`` → ``(loss, predictions)``, then the gradients and
    the parameters ExecuTorch's training API reads. ``target`` is ``[n]``
    float32 in the target's units, or int64 class indices into
    ``metadata["classes"]``; the loss is the mean over the batch of
    ``(ŷ − y)²`` or ``−log p(y)``, the predictions the target's values or
    the class probabilities (give any target to predict: a step is taken
    only when the optimizer is called). Any batch from 1 to
    :data:`MAX_BATCH` records.
``dmt_metadata``
    A uint8 tensor holding the metadata JSON: ``format``, ``kind``
    (``"dmt.training_program"``), ``model_version``, ``schema_id``,
    ``featurizer``, ``task``, ``inputs``, ``target``, ``classes``, ``update``
    (the settings) and ``parameters`` (the updatable tensors' names).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dmt_model.coreml._spec import quiet_third_party
from dmt_model.coreml.export import UpdateSettings, warn_of_rounded_steps
from dmt_privacy.errors import MissingDependencyError, ValidationError
from dmt_privacy.files import SHARED_FILE_MODE, write_atomically

__all__ = ["MAX_BATCH", "PROGRAM_FORMAT", "PROGRAM_KIND", "export_executorch",
           "program_bytes"]

PROGRAM_FORMAT = 1
PROGRAM_KIND = "dmt.training_program"
#: The largest batch the program takes in one call (a dynamic dimension needs a bound).
MAX_BATCH = 4096
METADATA_METHOD = "dmt_metadata"
FEATURES_METHOD = "features"


def import_executorch() -> Any:
    """The ExecuTorch package, or :class:`MissingDependencyError` saying how to install it;
    imported quietly (:func:`~dmt_model.coreml._spec.quiet_third_party`)."""
    try:
        with quiet_third_party():
            import executorch.exir
            import executorch.extension.training
    except ImportError:
        raise MissingDependencyError(
            "ExecuTorch is needed for .pte programs; install it with "
            "`pip install 'dmt-sdk[executorch]'` (or `make install` in a checkout).") from None
    return executorch


def updatable_names(chain: list[str], settings: UpdateSettings, *, classifier: bool) -> list[str]:
    """The layers the update trains: the Core ML export's (:class:`UpdateSettings`)."""
    if settings.optimizer != "sgd":
        raise ValidationError(
            f"optimizer={settings.optimizer!r}: ExecuTorch's on-device training offers SGD "
            "only; export with optimizer='sgd' (momentum is supported).")
    if classifier and settings.updatable_layers > 1:
        raise ValidationError(
            f"updatable_layers={settings.updatable_layers}, but a classifier updates only its "
            "personal head, as in the Core ML export; use updatable_layers=1.")
    if settings.updatable_layers > len(chain):
        raise ValidationError(
            f"updatable_layers={settings.updatable_layers} but the model has only {len(chain)} "
            f"inner-product layers after the embeddings ({', '.join(chain)}).")
    return chain[len(chain) - settings.updatable_layers:]


def _metadata(featurizer: Any, settings: UpdateSettings, version: str,
              updatable: list[str]) -> dict[str, Any]:
    from dmt_model.executorch.graph import input_layout

    return {
        "format": PROGRAM_FORMAT,
        "kind": PROGRAM_KIND,
        "model_version": version,
        "schema_id": featurizer.schema.schema_id,
        "featurizer": featurizer.to_dict(),
        "task": featurizer.task.kind,
        "inputs": input_layout(featurizer),
        "target": featurizer.target,
        "classes": list(featurizer.classes_),
        "update": asdict(settings),
        "parameters": [f"{name}.{p}" for name in updatable for p in ("weight", "bias")],
    }


def program_bytes(featurizer: Any, weights: Any, settings: UpdateSettings, *,
                  version: str = "1") -> bytes:
    """The ``.pte`` bytes of the training program for ``featurizer`` and
    :class:`~dmt_model.executorch.graph.FoundationWeights` ``weights``."""
    import_executorch()
    import torch
    from executorch.exir import to_edge
    from torch.export.experimental import _export_forward_backward

    from dmt_model.executorch.graph import (
        FeatureGraph,
        TrainingGraph,
        chain_names,
        graph_inputs,
    )

    chain = chain_names(len(weights.layers) - 1)
    updatable = updatable_names(chain, settings, classifier=bool(featurizer.classes_))
    warn_of_rounded_steps(featurizer, settings)
    graph = TrainingGraph(featurizer, weights, updatable)
    meta = _metadata(featurizer, settings, version, updatable)
    values, example = graph_inputs(graph, 2)
    text = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with quiet_third_party():  # torch's pytree and executorch's serializer warn of their own code
        features = torch.export.export(FeatureGraph(graph), (values,),
                                       dynamic_shapes=({0: batch},), strict=True)
        training = _export_forward_backward(torch.export.export(
            graph, example, dynamic_shapes=({0: batch}, {0: batch}), strict=True))
        edge = to_edge({"forward": training, FEATURES_METHOD: features},
                       constant_methods={METADATA_METHOD: torch.frombuffer(bytearray(text),
                                                                           dtype=torch.uint8)})
        return bytes(edge.to_executorch().buffer)


def export_executorch(foundation: Any, path: str | os.PathLike[str], *,
                      updatable: UpdateSettings | None = None, version: str = "1",
                      overwrite: bool = False) -> Path:
    """Write ``foundation`` as a trainable ExecuTorch program (``.pte``), atomically.

    ``foundation`` is a :class:`~dmt_model.foundation.Foundation` or the arrays
    :func:`~dmt_model.model_file.read_foundation` reads; ``updatable`` the update
    settings (default: :class:`~dmt_model.coreml.UpdateSettings`'s, the Core ML
    export's). The file is 0644: it is meant to ship. An existing ``path`` is
    replaced only with ``overwrite=True``; otherwise
    :class:`~dmt_privacy.errors.OutputExistsError` and nothing is written.
    """
    from dmt_model.executorch.graph import FoundationWeights

    data = program_bytes(foundation.featurizer, FoundationWeights.of(foundation),
                         updatable or UpdateSettings(), version=version)
    return write_atomically(path, data, mode=SHARED_FILE_MODE, overwrite=overwrite)
