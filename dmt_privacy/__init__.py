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
    SchemaError,
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
    "Role",
    "Schema",
    "SchemaError",
    "UnknownCategoryError",
    "UpdatableModelError",
    "UpdateRejected",
    "ValidationError",
]
__version__ = "0.1.0"
