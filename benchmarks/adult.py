"""The Adult data set the k-anonymity benchmarks share, as the SDK loads it
(:mod:`dmt_model.datasets.adult`: location, quasi-identifiers, ARX's hierarchies;
docs/targets.md)."""

from __future__ import annotations

from typing import Any

from dmt_model.datasets.adult import (
    ADULT_DIR,
    ADULT_QUASI_IDENTIFIERS,
    adult_available,
    find_adult,
    load_adult_hierarchies,
)
from dmt_model.datasets.adult import load_adult as _load_records

ADULT = find_adult() if adult_available() else ADULT_DIR  # where the benchmarks say they looked
QIS = list(ADULT_QUASI_IDENTIFIERS)
SENSITIVE = "salary-class"


def available() -> bool:
    return adult_available()


def load_adult() -> tuple[Any, dict[str, Any]]:
    """(the 30,162 rows, {quasi-identifier: its ARX hierarchy}); age stays numeric."""
    return _load_records(), load_adult_hierarchies()
