"""Reading a foundation model file (``.npz``) without torch: its weights and featurizer.

:meth:`dmt_model.foundation.Foundation.save` writes numpy arrays (the
network's ``state_dict``, keys ``w:<name>``) and a JSON ``meta`` array (the
featurizer, the training configuration, ``format``). Exporting to Core ML
needs only those arrays, so ``dmt export`` reads them here instead of
building a torch network (importing torch costs seconds).
:func:`read_foundation` checks the file (a zip that opens, the meta, one
embedding table per categorical field with a row per category, dense layers
whose shapes chain) and raises :class:`~dmt_privacy.errors.ModelFileError`
naming the file for anything else, a truncated file included.

:class:`FoundationArrays` offers the attributes
:func:`dmt_model.coreml.build_spec` reads from a :class:`Foundation`
(``featurizer``, ``network.embeddings[i].weight``, ``dense_layers[i].weight``
and ``.bias``, each with ``.detach().numpy()``), backed by numpy arrays.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dmt_privacy.errors import ModelFileError, ValidationError

__all__ = ["FoundationArrays", "read_entries", "read_foundation"]

MODEL_FILE_FORMAT = 1
_DENSE = re.compile(r"dense\.(\d+)\.(weight|bias)")
_EMBEDDING = re.compile(r"embeddings\.(\d+)\.weight")


class _Parameter:
    """A weight array behind the two calls build_spec makes on a torch parameter."""

    def __init__(self, array: np.ndarray) -> None:
        self._array = array

    def detach(self) -> _Parameter:
        return self

    def numpy(self) -> np.ndarray:
        return self._array


@dataclass(frozen=True)
class _Layer:
    weight: _Parameter
    bias: _Parameter | None = None


@dataclass(frozen=True)
class _Network:
    embeddings: tuple[_Layer, ...]


@dataclass(frozen=True)
class FoundationArrays:
    """A foundation model file's featurizer and weights, as numpy arrays (no torch)."""

    path: Path
    featurizer: Any
    embedding_tables: tuple[np.ndarray, ...]
    dense: tuple[tuple[np.ndarray, np.ndarray], ...]
    config: Mapping[str, Any]
    #: :attr:`dmt_model.foundation.Foundation.classes_trained`
    classes_trained: tuple[int, ...] | None = None

    @property
    def schema(self) -> Any:
        return self.featurizer.schema

    @property
    def network(self) -> _Network:
        return _Network(tuple(_Layer(_Parameter(t)) for t in self.embedding_tables))

    @property
    def dense_layers(self) -> list[_Layer]:
        return [_Layer(_Parameter(w), _Parameter(b)) for w, b in self.dense]


def read_entries(path: Path) -> dict[str, np.ndarray]:
    """The ``meta`` and ``w:`` entries of the model file (.npz) at ``path``, each read only
    once its header's shape fits the bytes its entry holds (``ValueError`` if not). Every
    entry was read first, whatever it was: an unused one inflating to 128 MiB cost that
    much, and a header declaring 10^14 numbers raised MemoryError (helper-68). Whatever a
    damaged file makes the zip or numpy reader raise (zlib.error, a header that does not
    parse: helper-72) is a ``ValueError`` too; a missing file is ``FileNotFoundError``."""
    arrays: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                name = info.filename.removesuffix(".npy")
                if name != "meta" and not name.startswith("w:"):
                    continue
                with archive.open(info) as entry:
                    version = np.lib.format.read_magic(entry)
                    shape, _, dtype = (np.lib.format.read_array_header_1_0(entry)
                                       if version == (1, 0)
                                       else np.lib.format.read_array_header_2_0(entry))
                    if dtype.hasobject or int(np.prod(shape, dtype=object)) * dtype.itemsize \
                            > info.file_size:
                        raise ValueError(f"its {name!r} entry declares {shape} {dtype} "
                                         f"values, more than its {info.file_size} bytes hold")
                with archive.open(info) as entry:
                    arrays[name] = np.lib.format.read_array(entry, allow_pickle=False)
    except (FileNotFoundError, IsADirectoryError, ValueError):
        raise
    except Exception as exc:  # every other way a damaged file fails to read
        raise ValueError(str(exc) or type(exc).__name__) from None
    return arrays


def read_foundation(path: str | os.PathLike[str]) -> FoundationArrays:
    """The featurizer and weights of the model file at ``path``, checked, without torch."""
    from dmt_model.features import Featurizer

    path = Path(path)

    def bad(why: str) -> ModelFileError:
        return ModelFileError(f"{path} is not a dmt foundation model file ({why}); write one "
                              "with 'dmt train'.")

    try:
        arrays = read_entries(path)
    except FileNotFoundError:
        raise ModelFileError(f"No foundation model at {path}.") from None
    except IsADirectoryError:
        raise ModelFileError(f"{path} is a directory, not a foundation model file.") from None
    except (OSError, ValueError) as exc:  # read_entries: every other failure is a ValueError
        raise bad(f"it is damaged or truncated: {exc}") from None
    if "meta" not in arrays:
        raise bad("no 'meta' entry")
    try:
        meta = json.loads(arrays["meta"].tobytes().decode())
        if meta.get("format") != MODEL_FILE_FORMAT:
            raise bad(f"format {meta.get('format')!r}, this SDK reads {MODEL_FILE_FORMAT}")
        featurizer = Featurizer.from_dict(meta["featurizer"])
        config = dict(meta.get("config", {}))
        classes_trained = checked_classes_trained(featurizer, meta.get("classes_trained"))
    except ModelFileError:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError, KeyError, TypeError,
            ValueError) as exc:
        raise bad(f"its metadata does not read: {exc}") from None
    weights = {k[2:]: v for k, v in arrays.items() if k.startswith("w:")}
    tables: dict[int, np.ndarray] = {}
    dense: dict[int, dict[str, np.ndarray]] = {}
    for key, value in weights.items():
        if m := _EMBEDDING.fullmatch(key):
            tables[int(m.group(1))] = value
        elif m := _DENSE.fullmatch(key):
            dense.setdefault(int(m.group(1)), {})[m.group(2)] = value
    bags = list(featurizer.bag_fields)
    if sorted(tables) != list(range(len(bags))):
        raise bad(f"{len(tables)} embedding tables for {len(bags)} categorical and text fields")
    for i, name in enumerate(bags):
        rows = featurizer.bag_width(name)
        if tables[i].ndim != 2 or tables[i].shape[0] != rows:
            raise bad(f"the embedding of {name!r} has shape {tables[i].shape}, expected "
                      f"{rows} rows (one per category)")
    layers: list[tuple[np.ndarray, np.ndarray]] = []
    for i in sorted(dense):
        entry = dense[i]
        if set(entry) != {"weight", "bias"}:
            raise bad(f"dense layer {i} lacks its {'bias' if 'weight' in entry else 'weight'}")
        weight, bias = entry["weight"], entry["bias"]
        if weight.ndim != 2 or bias.shape != (weight.shape[0],):
            raise bad(f"dense layer {i} has shapes {weight.shape} and {bias.shape}")
        if layers and layers[-1][0].shape[0] != weight.shape[1]:
            raise bad(f"dense layer {i} takes {weight.shape[1]} inputs, the layer before it "
                      f"gives {layers[-1][0].shape[0]}")
        layers.append((weight, bias))
    if not layers:
        raise bad("no dense layers")
    images = getattr(featurizer, "image_fields", ())
    width = (sum(t.shape[1] for t in tables.values()) + len(featurizer.numeric_fields)
             + sum(featurizer.image_width(n) for n in images))
    if layers[0][0].shape[1] != width:
        raise bad(f"the first dense layer takes {layers[0][0].shape[1]} inputs, the "
                  f"featurizer gives {width}")
    return FoundationArrays(path=path, featurizer=featurizer,
                            embedding_tables=tuple(tables[i] for i in range(len(tables))),
                            dense=tuple(layers), config=config,
                            classes_trained=classes_trained)


def checked_classes_trained(featurizer: Any, classes: Sequence[int] | None
                            ) -> tuple[int, ...] | None:
    """``classes`` (:attr:`~dmt_model.foundation.Foundation.classes_trained`) as a sorted
    tuple, checked: distinct positions in ``featurizer``'s classes, and ``None`` for a
    regressor (``ValidationError`` otherwise)."""
    if classes is None:
        return None
    if not featurizer.classes_:
        raise ValidationError("classes_trained names a classifier's classes; this model is a "
                              "regressor: leave it None.")
    if not (isinstance(classes, Sequence) and not isinstance(classes, str) and classes
            and all(type(c) is int and 0 <= c < len(featurizer.classes_) for c in classes)
            and len(set(classes)) == len(classes)):
        raise ValidationError(f"classes_trained must list distinct positions in the model's "
                              f"{len(featurizer.classes_)} classes, at least one (a network is "
                              f"trained on a record of some class), got {classes!r}.")
    return tuple(sorted(classes))
