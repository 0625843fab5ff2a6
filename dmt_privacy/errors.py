"""The one error tree of the SDK, rooted at :class:`DMTError`.

Each leaf also subclasses the nearest built-in exception, so callers that
already catch ``ValueError`` or ``RuntimeError`` keep working. The two
integrity failures, :class:`InvalidPackage` and :class:`InvalidBackup`, are
the exception: they carry no reason, so that they cannot become an oracle
for an attacker who feeds altered bytes.
"""

from __future__ import annotations

import sys
import warnings

__all__ = [
    "AnonymizationError",
    "BudgetExceededError",
    "DMTError",
    "InvalidBackup",
    "InvalidPackage",
    "LedgerIntegrityError",
    "MissingDependencyError",
    "ModelFileError",
    "OutputExistsError",
    "SchemaError",
    "StoreIntegrityError",
    "StoreKeyError",
    "StoreLockedError",
    "TooFewRecords",
    "UnknownCategoryError",
    "UpdatableModelError",
    "UpdateRejected",
    "ValidationError",
    "warn_caller",
]


class DMTError(Exception):
    """Root of every error the SDK raises on purpose."""


class SchemaError(DMTError, ValueError):
    """A schema or field definition is inconsistent (bounds, kind, role...)."""


class ValidationError(DMTError, ValueError):
    """Input data does not fit its schema: a missing column, NaN, out of domain..."""


class TooFewRecords(ValidationError):
    """A device has too few distinct records to judge an update or a new version on (fewer
    than 2 to hold out, its shared records never counted): keep the model it has."""


class UnknownCategoryError(ValidationError):
    """A categorical value is not in the field's vocabulary."""


class AnonymizationError(DMTError, ValueError):
    """An anonymization request cannot be satisfied as stated."""


class BudgetExceededError(DMTError, RuntimeError):
    """A release would spend more privacy budget than the ledger allows."""


class LedgerIntegrityError(DMTError, RuntimeError):
    """A privacy ledger fails its integrity check (edited, truncated or corrupted): it refuses
    to spend until it is restored from a good copy."""


class StoreIntegrityError(DMTError, RuntimeError):
    """A device store file fails its check (truncated, altered, corrupted, an older copy put
    back, or sealed under another key): nothing was read from it."""


class StoreKeyError(StoreIntegrityError):
    """A device store was sealed under another key than the one given (or its header was
    altered)."""


class StoreLockedError(DMTError, TimeoutError):
    """Another process held a device store's write lock for longer than the timeout."""


class ModelFileError(DMTError, ValueError):
    """A model file is missing, unreadable, corrupted or not what was expected."""


class OutputExistsError(DMTError, FileExistsError):
    """A writer was asked to write a file that already exists and was not told to replace it:
    nothing was written. Pass ``overwrite=True`` (``--force`` on the command line)."""


class UpdatableModelError(ModelFileError):
    """A Core ML model breaks one of Core ML's rules for updatable models."""


class UpdateRejected(DMTError, RuntimeError):
    """An on-device update diverged or made held-out loss worse; nothing was replaced."""


class MissingDependencyError(DMTError, ImportError):
    """An optional dependency or data file (torch, coremltools, WordNet) is missing."""


class InvalidPackage(DMTError):
    """A sealed share package could not be opened. Deliberately says nothing more."""


class InvalidBackup(DMTError):
    """A backup could not be restored: wrong passphrase or altered bytes. Says nothing more."""


#: The packages whose frames a warning skips to name the caller's line (:func:`warn_caller`):
#: the SDK's, and scikit-learn's, whose set_output wraps the anonymizer's transform.
_SDK_PACKAGES = ("dmt_privacy", "dmt_model", "sklearn")


def warn_caller(message: str | Warning, category: type[Warning] | None = None) -> None:
    """``warnings.warn``, attributed to the first frame outside the SDK: the user's line that
    led to it, however deep inside the SDK it was found (a hand-counted ``stacklevel`` named
    the SDK's own file whenever another of its functions was the caller)."""
    frame = sys._getframe(1)  # the SDK's function that warns: stacklevel 2 (1 is this one)
    level = 2
    while frame.f_back is not None and \
            frame.f_globals.get("__name__", "").partition(".")[0] in _SDK_PACKAGES:
        frame = frame.f_back
        level += 1  # (a stack of SDK frames only, as under `dmt`, names its outermost)
    warnings.warn(message, category, stacklevel=level)
