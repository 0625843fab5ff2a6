"""dmt_privacy: the client side of dmt.

Describe records (:mod:`~dmt_privacy.schema`), modify, anonymize and perturb
them before any of them leaves a device, and seal what is shared to the
server's key. Imports only light dependencies: never torch or coremltools.
"""

from dmt_privacy.errors import (
    AnonymizationError,
    BudgetExceededError,
    DMTError,
    InvalidBackup,
    InvalidPackage,
    MissingDependencyError,
    ModelFileError,
    OutputExistsError,
    SchemaError,
    TooFewRecords,
    UnknownCategoryError,
    UpdatableModelError,
    UpdateRejected,
    ValidationError,
)
from dmt_privacy.schema import Field, Kind, Role, Schema

__all__ = [
    "AnonymizationError",
    "BudgetExceededError",
    "DMTError",
    "Field",
    "InvalidBackup",
    "InvalidPackage",
    "Kind",
    "MissingDependencyError",
    "ModelFileError",
    "OutputExistsError",
    "Role",
    "Schema",
    "SchemaError",
    "TooFewRecords",
    "UnknownCategoryError",
    "UpdatableModelError",
    "UpdateRejected",
    "ValidationError",
]


def __getattr__(name: str) -> str:
    """``__version__``: the installed ``dmt-sdk``'s, looked up when first asked for.

    The version is written once, in ``pyproject.toml``; ``0+unknown`` in a source
    tree that was never installed. Looked up lazily because ``importlib.metadata``
    takes longer to import than this package.
    """
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("dmt-sdk")
        except PackageNotFoundError:
            return "0+unknown"
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
