"""Reading and writing Core ML specs; the one place coremltools is imported."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dmt_privacy.errors import MissingDependencyError, ModelFileError
from dmt_privacy.files import PRIVATE_FILE_MODE, write_atomically

__all__ = ["import_coremltools", "load_spec", "quiet_third_party", "save_spec", "spec_bytes",
           "spec_from_bytes"]


#: Loggers that warn, while coremltools or executorch is imported, of what no user can act
#: on: coremltools that it cannot predict on Linux; torchao (which both import when executorch
#: is installed) of each CUDA kernel a CPU build cannot load; torch's pytree that torchao
#: registers an enum the old way.
_QUIET_LOGGERS = ("coremltools", "torchao", "torch.utils._pytree")

#: Warnings (category, message regex) that third-party code raises inside :func:`quiet_third_party`,
#: none of them a user's to act on. While executorch is imported (by :func:`import_coremltools`,
#: or by :func:`dmt_model.executorch.import_executorch`): executorch reads its edge dialect with
#: importlib.resources' legacy ``read_text`` (which warns again from ``open_text``), torch.export
#: (which it imports) uses ``torch.jit.script_method``, and its runtime bindings say they are
#: experimental (``ExperimentalWarning``, a ``DeprecationWarning``). While a program is exported
#: (:func:`dmt_model.executorch.program_bytes`): executorch's flatbuffer serializer reads its
#: schema with the legacy ``read_binary``, and torch's pytree deprecates the ``LeafSpec`` that
#: torch.export copies (a ``FutureWarning``, which Python shows by default; Python hides
#: DeprecationWarning outside ``__main__``, but Flower's simulation shows each once). Each is
#: matched exactly, so a new warning still reaches the user.
_THIRD_PARTY_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    (DeprecationWarning, r"read_text is deprecated"),
    (DeprecationWarning, r"open_text is deprecated"),
    (DeprecationWarning, r"`torch\.jit\.script_method` is deprecated"),
    (DeprecationWarning, r"This API is experimental"),
    (DeprecationWarning, r"read_binary is deprecated"),
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
    # Compiling a module whose .pyc is missing (pip install --no-compile): its source's
    # escapes (DeprecationWarning on Python 3.11, SyntaxWarning from 3.12).
    (DeprecationWarning, r"invalid escape sequence"),
    (SyntaxWarning, r"invalid escape sequence"),
)


@contextlib.contextmanager
def quiet_third_party() -> Iterator[None]:
    """Third-party code in the block (importing coremltools or executorch, exporting a program)
    says nothing of :data:`_QUIET_LOGGERS` and :data:`_THIRD_PARTY_WARNINGS`; the loggers'
    levels and the warning filters are restored after, so later warnings, ours or theirs, still
    reach the user."""
    loggers = [logging.getLogger(name) for name in _QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            for category, message in _THIRD_PARTY_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=category)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


#: What ``import coremltools`` imports, when installed, only for converters the SDK never
#: calls (it builds, reads and writes specs): torch and scikit-learn, and executorch with
#: torchao, whose import alone took 5-7 of the 10-13 s coremltools took on a 2-core machine.
_CONVERTER_DEPENDENCIES = ("torch", "sklearn", "executorch", "torchao")


def import_coremltools() -> Any:
    """Import coremltools quietly (:func:`quiet_third_party`), without the converter
    dependencies (:data:`_CONVERTER_DEPENDENCIES`) that are not loaded yet: each is hidden while
    coremltools loads and importable again after it, so coremltools' converters do without
    them in this process. A program that converts models with coremltools in the same process
    (``ct.convert``) imports coremltools before it uses dmt_model."""
    if "coremltools" in sys.modules:
        return sys.modules["coremltools"]
    hidden = [name for name in _CONVERTER_DEPENDENCIES if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # import fails: not installed
    try:
        with quiet_third_party():
            import coremltools
    except ImportError:
        raise MissingDependencyError(
            "coremltools is needed for Core ML models; install it with "
            "`pip install 'dmt-sdk[model]'` (or `make install` in a checkout)."
        ) from None
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
    return coremltools


def spec_from_bytes(data: bytes, *, source: str = "model bytes") -> Any:
    """Parse a ``.mlmodel``'s bytes into a ``Model`` protobuf message."""
    import_coremltools()
    from coremltools.proto import Model_pb2
    from google.protobuf.message import DecodeError

    spec = Model_pb2.Model()
    try:
        spec.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError):
        raise ModelFileError(
            f"{source} is not a valid Core ML model (the file is corrupted or truncated); "
            "export it again with `dmt export`."
        ) from None
    if not spec.specificationVersion or spec.WhichOneof("Type") is None:
        raise ModelFileError(
            f"{source} is not a Core ML model (no specification version or model type); "
            "export it again with `dmt export`."
        )
    return spec


def load_spec(path: str | os.PathLike[str]) -> Any:
    """Read an ``.mlmodel`` file; a missing or corrupted file raises :class:`ModelFileError`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelFileError(f"No Core ML model at {path}.") from None
    except OSError as exc:
        raise ModelFileError(f"Cannot read Core ML model {path}: {exc.strerror}.") from None
    return spec_from_bytes(data, source=str(path))


def spec_bytes(spec: Any) -> bytes:
    """``spec`` serialized deterministically: the same spec gives the same bytes in any process.

    Protobuf writes map fields (the model's ``userDefined`` metadata) in hash order
    unless asked for deterministic output, so the default serialization of one
    spec differs between runs with different ``PYTHONHASHSEED``.
    """
    return bytes(spec.SerializeToString(deterministic=True))


def save_spec(spec: Any, path: str | os.PathLike[str], *, overwrite: bool = False,
              mode: int = PRIVATE_FILE_MODE) -> Path:
    """Write ``spec`` to ``path`` atomically: the old file survives any failure.

    The bytes are reproducible (:func:`spec_bytes`). An existing file is replaced
    only with ``overwrite=True``, otherwise
    :class:`~dmt_privacy.errors.OutputExistsError`. The file is 0600 unless
    ``mode`` says otherwise: a spec may be a personal model; ``export_coreml``
    writes models meant to ship as 0644.
    """
    return write_atomically(path, spec_bytes(spec), mode=mode, overwrite=overwrite,
                            make_parents=True)
