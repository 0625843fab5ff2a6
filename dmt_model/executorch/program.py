"""A dmt training program (``.pte``), trained in the ExecuTorch runtime itself.

:func:`load_program` reads and checks a file written by
:func:`~dmt_model.executorch.export.export_executorch`; :meth:`TrainingProgram.updated`
trains it on records **inside ExecuTorch's runtime** (its
``forward_backward`` and its SGD, ``executorch.extension.training``), the
way a phone does, with the program's update settings (each can be
overridden, as with Core ML's ``MLUpdateTask``) on the same mini-batches as
the Core ML emulation (:func:`dmt_model.personalize.batch_order`), and
reports the same progress events. :func:`dmt_model.personalize.personalize`
takes a ``.pte`` as it takes an ``.mlmodel`` and calls it, so the
keep-or-discard rule and the atomic replacement are the same.

A trained program is written back (:meth:`TrainingProgram.save`) with its
trained parameters in place of the initial ones (:meth:`TrainingProgram.to_bytes`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dmt_model.coreml.export import UpdateSettings
from dmt_model.executorch.export import (
    FEATURES_METHOD,
    MAX_BATCH,
    METADATA_METHOD,
    PROGRAM_FORMAT,
    PROGRAM_KIND,
    import_executorch,
)
from dmt_model.features import Featurizer
from dmt_privacy.errors import ModelFileError, SchemaError, UpdateRejected, ValidationError
from dmt_privacy.files import PRIVATE_FILE_MODE, write_atomically
from dmt_privacy.schema import row_label

__all__ = ["TrainingProgram", "load_program", "program_from_bytes"]

#: The FlatBuffers file identifier of an ExecuTorch program, at bytes 4..8 ("ET" + version).
_IDENTIFIER = b"ET"


def _quietly(call: Callable[[], Any]) -> Any:
    """Run ``call`` with the C++ runtime's start-up chatter on stderr (CPU probing) hidden."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            return call()
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _training_module(data: bytes) -> Any:
    import_executorch()
    import warnings

    from executorch.extension.training import _load_for_executorch_for_training_from_buffer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the training API is marked experimental
        module = _quietly(lambda: _load_for_executorch_for_training_from_buffer(data))
    module.dmt_buffer = data  # the runtime reads the bytes in place: keep them alive with it
    return module


class _Stepper:
    """One SGD step per call in the runtime: the program's ``forward`` (loss, predictions,
    gradients, parameters) and ExecuTorch's SGD on the parameters it returns.

    What :class:`executorch.extension.training.TrainingModule` does per step, without its
    three look-ups of the output positions and copies of the gradients each call (a few
    records per step on a phone-sized model are dominated by them)."""

    def __init__(self, module: Any, settings: UpdateSettings) -> None:
        model = module.model
        self.model = model
        self.settings = settings
        self.gradients = int(model.run_method("__et_training_gradients_index_forward", ())[0])
        self.first = int(model.run_method("__et_training_parameters_index_forward", ())[0])
        self.names = list(model.run_method("__et_training_fqn_forward", ()))
        self.optimizer: Any = None
        self.module = module

    def __call__(self, values: Any, target: Any) -> float:
        out = self.model.run_method("forward", (values, target), clone_outputs=False)
        if self.optimizer is None:
            import warnings

            from executorch.extension.training import get_sgd_optimizer

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the training API is marked experimental
                self.optimizer = get_sgd_optimizer(
                    dict(zip(self.names, out[self.first:], strict=True)),
                    self.settings.learning_rate, self.settings.momentum, 0, 0, False)
            self.module.named_params = dict(zip(self.names, out[self.first:], strict=True))
        loss = float(out[0])
        if math.isfinite(loss):
            self.optimizer.step(dict(zip(self.names, out[self.gradients:self.first],
                                         strict=True)))
        return loss

    def parameters(self) -> dict[str, np.ndarray]:
        """The trained parameters (copies)."""
        params = self.module.named_params or {}
        return {name: value.detach().numpy().copy() for name, value in params.items()}


@dataclass
class TrainingProgram:
    """A dmt ExecuTorch training program: its bytes, metadata and (once trained) parameters.

    ``source`` names where it came from, for error messages. ``parameters``
    holds the trained values of the updatable tensors after :meth:`updated`
    (``None``: the program's own).
    """

    data: bytes
    metadata: dict[str, Any]
    source: str = "program"
    parameters: dict[str, np.ndarray] | None = None
    _module: Any = field(default=None, repr=False, compare=False)

    @cached_property
    def featurizer(self) -> Featurizer:
        """The featurizer in the metadata (read once: personalize asks for it often)."""
        return Featurizer.from_dict(self.metadata["featurizer"])

    @property
    def settings(self) -> UpdateSettings:
        """The update settings the program was exported with (the Core ML export's)."""
        return UpdateSettings(**self.metadata["update"])

    # --- running ---------------------------------------------------------------
    def _loaded(self) -> Any:
        if self._module is None:
            self._module = _training_module(self.data)
        return self._module

    def values(self, frame: pd.DataFrame) -> Any:
        """The program's input from ``frame``'s raw values: a contiguous float32 tensor
        ``[n, width]``, each field at its columns (``metadata["inputs"]``)."""
        import torch

        featurizer = self.featurizer
        missing = [n for n in featurizer.input_fields if n not in frame.columns]
        if missing:
            raise ValidationError(f"Missing column(s) {missing!r}; the model reads "
                                  f"{featurizer.input_fields!r}.")
        layout = self.metadata["inputs"]
        out = np.empty((len(frame), sum(f["width"] for f in layout)), dtype=np.float32)
        for field_ in layout:
            name, shape = field_["name"], tuple(field_["shape"])
            try:
                if name in featurizer.image_fields:
                    values = np.stack([np.asarray(v, np.float64).reshape(shape)
                                       for v in frame[name].tolist()]) if len(frame) else \
                        np.zeros((0, *shape))
                else:
                    values = featurizer.model_input(name, frame[name])
            except (TypeError, ValueError):
                raise ValidationError(f"Column {name!r} must hold numbers"
                                      + (f" (arrays of shape {shape})" if shape else "")
                                      + ".") from None
            values = np.asarray(values, np.float64).reshape(len(frame), -1)
            finite = np.isfinite(values).all(axis=1)
            if not finite.all():
                row = row_label(frame.index[int((~finite).argmax())])
                raise ValidationError(f"Column {name!r} has NaN or infinity at row {row!r}.")
            out[:, field_["column"]:field_["column"] + field_["width"]] = values
        return torch.from_numpy(out)

    def _target(self, values: np.ndarray) -> Any:
        import torch

        dtype = np.int64 if self.metadata["classes"] else np.float32
        return torch.from_numpy(np.ascontiguousarray(values, dtype=dtype))

    def features(self, frame: pd.DataFrame) -> Any:
        """The program's ``features`` method on ``frame`` in the runtime: the first updatable
        layer's input ``[n, k]`` (preprocessing and frozen layers, once per record)."""
        import torch

        module = self._loaded()
        values = self.values(frame)
        parts = [module.model.run_method(FEATURES_METHOD, (values[start:start + MAX_BATCH],))[0]
                 for start in range(0, len(frame), MAX_BATCH)]
        return torch.cat(parts).contiguous()

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Predictions in the runtime: ``[n]`` target values, or ``[n, classes]`` probabilities.

        The training method's second output, with a placeholder target (the
        gradients it also computes are not applied).
        """
        module = self._loaded()
        features = self.features(frame)
        parts = [module.forward_backward("forward", [
            features[start:start + MAX_BATCH],
            self._target(np.zeros(min(MAX_BATCH, len(frame) - start)))])[1].numpy()
            for start in range(0, len(frame), MAX_BATCH)]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    # --- training ----------------------------------------------------------------
    def updated(
        self,
        frame: pd.DataFrame,
        *,
        learning_rate: float | None = None,
        epochs: int | None = None,
        batch_size: int | None = None,
        shuffle: bool | None = None,
        seed: int | None = None,
        on_event: Callable[[Any], None] | None = None,
        **unsupported: Any,
    ) -> tuple[TrainingProgram, Any]:
        """Train a copy of this program on ``frame`` in the ExecuTorch runtime.

        Returns (the trained program, :class:`~dmt_model.personalize.UpdateHistory`).
        Settings left ``None`` are the program's. The records are checked as
        :func:`~dmt_model.personalize.update_spec` checks them; a loss that
        becomes NaN or infinite raises :class:`UpdateRejected`.
        """
        import torch

        from dmt_model.personalize import UpdateEvent, UpdateHistory, _check_records, batch_order

        if unsupported:
            raise ValidationError(
                f"{sorted(unsupported)!r} cannot be overridden in an ExecuTorch program: its "
                "loss (the mean over the mini-batch) is part of the program. Override "
                "learning_rate, epochs, batch_size, shuffle or seed.")
        given: dict[str, Any] = {k: v for k, v in (
            ("learning_rate", learning_rate), ("epochs", epochs), ("batch_size", batch_size),
            ("shuffle", shuffle), ("seed", seed)) if v is not None}
        s = replace(self.settings, **given)
        if s.batch_size > MAX_BATCH:
            raise ValidationError(f"batch_size={s.batch_size}: the program takes at most "
                                  f"{MAX_BATCH} records per mini-batch.")
        target = self._target(_check_records(self, frame, what="update"))
        records = [self.features(frame), target]
        module = _training_module(self.data)
        history = UpdateHistory()
        if on_event:
            on_event(UpdateEvent("training_begin", 0, 0, math.nan))
        step = _Stepper(module, s)
        for epoch, batches in enumerate(batch_order(len(frame), batch_size=s.batch_size,
                                                    epochs=s.epochs, shuffle=s.shuffle,
                                                    seed=s.seed)):
            # The epoch's order once; each mini-batch is then a contiguous slice of it.
            ordered = [t[torch.from_numpy(np.concatenate(batches))] for t in records]
            total, start = 0.0, 0
            for b, index in enumerate(batches):
                end = start + len(index)
                loss = step(ordered[0][start:end], ordered[1][start:end])
                start = end
                if not math.isfinite(loss):
                    raise UpdateRejected(
                        f"The update diverged (loss {loss}) at epoch {epoch}, mini-batch "
                        f"{b}; lower the learning rate. Nothing was written.")
                total += loss * len(index)
                if on_event:
                    on_event(UpdateEvent("mini_batch_end", epoch, b, loss))
            history.epoch_losses.append(total / len(frame))
            if on_event:
                on_event(UpdateEvent("epoch_end", epoch, len(batches) - 1,
                                     history.epoch_losses[-1]))
        trained = step.parameters()
        if not all(np.isfinite(v).all() for v in trained.values()):
            raise UpdateRejected("The update produced non-finite weights; nothing was written.")
        return TrainingProgram(self.data, self.metadata, self.source, trained, module), history

    # --- writing ---------------------------------------------------------------------
    def _trainable_tensors(self) -> tuple[Any, list[tuple[str, Any, Any]]]:
        """(the deserialized program, each updatable tensor's (name, tensor, its buffer in
        the program's mutable data))."""
        from executorch.exir._serialize._program import deserialize_pte_binary

        pte = deserialize_pte_binary(self.data)
        plans = {plan.name: plan for plan in pte.program.execution_plan}
        forward = plans["forward"]
        start = plans["__et_training_parameters_index_forward"].values[0].val.int_val
        names = [v.val.string_val for v in plans["__et_training_fqn_forward"].values]
        if pte.mutable_data is None or (self.parameters is not None
                                        and set(names) != set(self.parameters)):
            raise ModelFileError(f"{self.source}: its trainable tensors {names!r} are not the "
                                 f"trained ones {sorted(self.parameters or {})!r}.")
        tensors = [forward.values[output].val for output in forward.outputs[start:]]
        return pte, [(name, tensor, pte.mutable_data[tensor.data_buffer_idx])
                     for name, tensor in zip(names, tensors, strict=True)]

    def parameter_values(self) -> dict[str, np.ndarray]:
        """The updatable tensors' values (copies): the trained ones after :meth:`updated`,
        else those the program holds."""
        if self.parameters is not None:
            return {name: value.copy() for name, value in self.parameters.items()}
        _, tensors = self._trainable_tensors()
        return {name: np.frombuffer(bytes(buffer.storage), dtype="<f4").reshape(
            tuple(tensor.sizes)).astype(np.float32) for name, tensor, buffer in tensors}

    def with_parameters(self, values: dict[str, np.ndarray]) -> TrainingProgram:
        """A copy of the program holding ``values`` for its updatable tensors (its bytes
        written again, :meth:`to_bytes`; the runtime loads them when it first runs)."""
        data = replace(self, parameters=values, _module=None).to_bytes()
        return replace(self, data=data, parameters=None, _module=None)

    def to_bytes(self) -> bytes:
        """The program's ``.pte`` bytes, with the trained parameters if it was updated.

        The initial values of the updatable tensors are the program's mutable
        data; they are replaced by the trained ones in the deserialized program,
        which is serialized again (a valid program with the same methods, not
        byte for byte the exporter's layout).
        """
        if self.parameters is None:
            return self.data
        from executorch.exir._serialize._program import serialize_pte_binary

        pte, tensors = self._trainable_tensors()
        for name, tensor, buffer in tensors:
            value = np.ascontiguousarray(self.parameters[name], dtype="<f4")
            if list(tensor.sizes) != list(value.shape) or len(buffer.storage) != value.nbytes:
                raise ModelFileError(f"{self.source}: tensor {name!r} has shape "
                                     f"{list(tensor.sizes)}, the trained one {value.shape}.")
            buffer.storage = value.tobytes()
        return bytes(serialize_pte_binary(pte, extract_delegate_segments=True))

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False,
             mode: int = PRIVATE_FILE_MODE) -> Path:
        """Write the program atomically (0600 by default: it may be a personal model)."""
        return write_atomically(path, self.to_bytes(), mode=mode, overwrite=overwrite)


def program_from_bytes(data: bytes, *, source: str = "program bytes") -> TrainingProgram:
    """Check ``data`` is a dmt training program and read its metadata; anything else raises
    :class:`ModelFileError` naming ``source`` and what to do."""
    def bad(why: str) -> ModelFileError:
        return ModelFileError(
            f"{source} is not a dmt ExecuTorch training program ({why}); write one with "
            "`dmt export FOUNDATION.npz --format executorch -o personal.pte`.")

    if len(data) < 8 or data[4:6] != _IDENTIFIER:
        raise bad("no ExecuTorch program header")
    try:  # the runtime reads the file lazily: damage shows on the first look inside
        module = _training_module(data)
        methods = set(_quietly(module.model.method_names))
    except (RuntimeError, ValueError) as exc:
        raise bad(f"the runtime cannot read it; it is damaged or truncated ({exc})") from None
    if not {METADATA_METHOD, FEATURES_METHOD, "forward"} <= methods:
        raise bad(f"it has the methods {sorted(methods)!r}, not dmt's")
    try:
        (raw,) = _quietly(lambda: module.model.run_method(METADATA_METHOD, ()))
        meta = json.loads(bytes(raw.numpy().astype(np.uint8)).decode())
    except (RuntimeError, ValueError, UnicodeDecodeError) as exc:
        raise bad(f"its metadata does not read; it is damaged ({exc})") from None
    if not isinstance(meta, dict) or meta.get("kind") != PROGRAM_KIND:
        raise bad("its metadata is not a dmt training program's")
    if meta.get("format") != PROGRAM_FORMAT:
        raise ModelFileError(
            f"{source} is a dmt training program of format {meta.get('format')!r}; this SDK "
            f"reads format {PROGRAM_FORMAT}. Upgrade dmt, or export the program again.")
    program = TrainingProgram(data, meta, source)
    try:
        featurizer = program.featurizer
    except (SchemaError, KeyError, TypeError) as exc:
        raise bad(f"its featurizer does not read: {exc}") from None
    if featurizer.schema.schema_id != meta.get("schema_id"):
        raise bad("its schema id does not match its featurizer's schema")
    return program


def load_program(path: str | os.PathLike[str], *,
                 schema_id: str | None = None) -> TrainingProgram:
    """Read the training program at ``path``; with ``schema_id``, refuse one for other records.

    A missing, truncated or foreign file raises
    :class:`~dmt_privacy.errors.ModelFileError` naming the file and what to do.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelFileError(f"No ExecuTorch program at {path}.") from None
    except IsADirectoryError:
        raise ModelFileError(f"{path} is a directory, not an ExecuTorch program.") from None
    except OSError as exc:
        raise ModelFileError(f"Cannot read ExecuTorch program {path}: {exc.strerror}.") \
            from None
    program = program_from_bytes(data, source=str(path))
    if schema_id is not None and program.metadata["schema_id"] != schema_id:
        raise ModelFileError(
            f"{path} was exported for other records (schema {program.metadata['schema_id']}, "
            f"expected {schema_id}); export the program from this schema's foundation.")
    return program
