"""k-anonymity with l-diversity and t-closeness, as a plan devices can apply.

:class:`KAnonymizer` is a scikit-learn transformer on DataFrames: Mondrian
multidimensional partitioning on integer-coded quasi-identifiers, numeric
fields released as closed intervals, categorical fields as hierarchy nodes
(ARX-format hierarchies) or value sets. ``fit`` learns an
:class:`AnonymizationPlan` that serializes to JSON and that a device applies
to its own records; :class:`ReleaseRule` is the server's gate: it releases
a class's records only in cohorts that meet k, l and t over distinct
contributors (:func:`release_classes` applies it to one DataFrame). Information loss is
measured by :func:`information_loss` (NCP, discernibility, average class size).
:func:`write_released` writes a released table as exact CSV or JSON Lines, and
:func:`read_released_csv` / :func:`read_released_jsonl` read it back
(:mod:`~dmt_privacy.anonymity.released_table`).

Importing the package is cheap: each name below is imported from its submodule
when first used (:mod:`dmt_privacy._lazy`), so scikit-learn and scipy load only
with a transformer.
"""

from typing import TYPE_CHECKING

from dmt_privacy._lazy import lazy_exports

if TYPE_CHECKING:
    from dmt_privacy.anonymity.anonymizer import AnonymizationReport, KAnonymityWarning, KAnonymizer
    from dmt_privacy.anonymity.constraints import (
        LDiversity,
        TCloseness,
        emd_hierarchical,
        emd_ordered,
        l_achieved,
    )
    from dmt_privacy.anonymity.hierarchy import Hierarchy, interval_hierarchy
    from dmt_privacy.anonymity.metrics import (
        InformationLoss,
        equivalence_classes,
        information_loss,
        ncp_by_attribute,
    )
    from dmt_privacy.anonymity.mondrian import DimensionCoding, Partition, mondrian_partition
    from dmt_privacy.anonymity.plan import (
        AnonymizationPlan,
        Anonymized,
        ColumnCoding,
        format_generalized,
        release_classes,
    )
    from dmt_privacy.anonymity.release import ReleaseRule, reference_from_counts
    from dmt_privacy.anonymity.released_table import (
        column_kinds,
        read_released_csv,
        read_released_jsonl,
        write_released,
    )

#: Public name -> the submodule that defines it.
_EXPORTS = {
    "AnonymizationReport": "anonymizer",
    "KAnonymityWarning": "anonymizer",
    "KAnonymizer": "anonymizer",
    "LDiversity": "constraints",
    "TCloseness": "constraints",
    "emd_hierarchical": "constraints",
    "emd_ordered": "constraints",
    "l_achieved": "constraints",
    "Hierarchy": "hierarchy",
    "interval_hierarchy": "hierarchy",
    "InformationLoss": "metrics",
    "equivalence_classes": "metrics",
    "information_loss": "metrics",
    "ncp_by_attribute": "metrics",
    "DimensionCoding": "mondrian",
    "Partition": "mondrian",
    "mondrian_partition": "mondrian",
    "AnonymizationPlan": "plan",
    "Anonymized": "plan",
    "ColumnCoding": "plan",
    "format_generalized": "plan",
    "release_classes": "plan",
    "ReleaseRule": "release",
    "reference_from_counts": "release",
    "column_kinds": "released_table",
    "read_released_csv": "released_table",
    "read_released_jsonl": "released_table",
    "write_released": "released_table",
}

__all__ = [
    "AnonymizationPlan",
    "AnonymizationReport",
    "Anonymized",
    "ColumnCoding",
    "DimensionCoding",
    "Hierarchy",
    "InformationLoss",
    "KAnonymityWarning",
    "KAnonymizer",
    "LDiversity",
    "Partition",
    "ReleaseRule",
    "TCloseness",
    "column_kinds",
    "emd_hierarchical",
    "emd_ordered",
    "equivalence_classes",
    "format_generalized",
    "information_loss",
    "interval_hierarchy",
    "l_achieved",
    "mondrian_partition",
    "ncp_by_attribute",
    "read_released_csv",
    "read_released_jsonl",
    "reference_from_counts",
    "release_classes",
    "write_released",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
