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
"""

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
    "emd_hierarchical",
    "emd_ordered",
    "equivalence_classes",
    "format_generalized",
    "information_loss",
    "interval_hierarchy",
    "l_achieved",
    "mondrian_partition",
    "ncp_by_attribute",
    "reference_from_counts",
    "release_classes",
]
