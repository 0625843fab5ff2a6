"""Local differential privacy for records, before they leave a device; estimators on the server.

The recipe layer is :class:`LocalDPPerturber`, a scikit-learn transformer on
DataFrames with a per-field ε allocation that charges a per-user
:class:`PrivacyLedger` (SQLite) on every release and yields a
:class:`ReleaseReceipt`. The privacy unit is the user by default: a release
of n records costs the user n × Σε. ``ledger=UNACCOUNTED`` is the only way
to release without a ledger. Below it, the vectorized mechanisms:
:class:`DiscreteLaplace` and :class:`DiscreteGaussian` for numeric fields
(clamped to the schema's bounds, snapped to its grid, integer noise, outputs
exactly ``k * grid``), :class:`RandomizedResponse` (k-RR) and
:class:`UnaryEncoding` (OUE) for categorical ones. Noise comes from the OS
CSPRNG; ``random_state=<int>`` is NOT secure and exists for tests.

On the server, :func:`estimate_mean` and :func:`estimate_frequencies` are the
unbiased estimators for what was perturbed, and :func:`dp_mean` and
:func:`dp_histogram` (diffprivlib) release central-DP aggregates.

Importing the package is cheap: each name below is imported from its submodule
when first used (:mod:`dmt_privacy._lazy`), so scikit-learn and scipy load only
with a transformer.
"""

from typing import TYPE_CHECKING

from dmt_privacy._lazy import lazy_exports

if TYPE_CHECKING:
    from dmt_privacy.dp.aggregates import dp_histogram, dp_mean
    from dmt_privacy.dp.categorical import RandomizedResponse, UnaryEncoding
    from dmt_privacy.dp.estimators import (
        FrequencyEstimate,
        MeanEstimate,
        estimate_frequencies,
        estimate_mean,
    )
    from dmt_privacy.dp.ledger import UNACCOUNTED, LedgerEntry, PrivacyLedger, Spend, Unaccounted
    from dmt_privacy.dp.numeric import DiscreteGaussian, DiscreteLaplace, grid_units
    from dmt_privacy.dp.perturber import LocalDPPerturber, Release, release_epsilon
    from dmt_privacy.dp.random import (
        InsecureRandomnessWarning,
        RandomSource,
        SeededInsecureSource,
        SystemSource,
    )
    from dmt_privacy.dp.receipt import FieldReceipt, ReleaseReceipt

#: Public name -> the submodule that defines it.
_EXPORTS = {
    "dp_histogram": "aggregates",
    "dp_mean": "aggregates",
    "RandomizedResponse": "categorical",
    "UnaryEncoding": "categorical",
    "FrequencyEstimate": "estimators",
    "MeanEstimate": "estimators",
    "estimate_frequencies": "estimators",
    "estimate_mean": "estimators",
    "UNACCOUNTED": "ledger",
    "LedgerEntry": "ledger",
    "PrivacyLedger": "ledger",
    "Spend": "ledger",
    "Unaccounted": "ledger",
    "DiscreteGaussian": "numeric",
    "DiscreteLaplace": "numeric",
    "grid_units": "numeric",
    "LocalDPPerturber": "perturber",
    "Release": "perturber",
    "release_epsilon": "perturber",
    "InsecureRandomnessWarning": "random",
    "RandomSource": "random",
    "SeededInsecureSource": "random",
    "SystemSource": "random",
    "FieldReceipt": "receipt",
    "ReleaseReceipt": "receipt",
}

__all__ = [
    "UNACCOUNTED",
    "DiscreteGaussian",
    "DiscreteLaplace",
    "FieldReceipt",
    "FrequencyEstimate",
    "InsecureRandomnessWarning",
    "LedgerEntry",
    "LocalDPPerturber",
    "MeanEstimate",
    "PrivacyLedger",
    "RandomSource",
    "RandomizedResponse",
    "Release",
    "ReleaseReceipt",
    "SeededInsecureSource",
    "Spend",
    "SystemSource",
    "Unaccounted",
    "UnaryEncoding",
    "dp_histogram",
    "dp_mean",
    "estimate_frequencies",
    "estimate_mean",
    "grid_units",
    "release_epsilon",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
