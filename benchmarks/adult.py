"""The Adult data set the k-anonymity benchmarks share: where it is, its quasi-identifiers,
its sensitive field, and how it is read with ARX's hierarchies (docs/targets.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ADULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "adult"
QIS = ["age", "sex", "race", "marital-status", "education", "native-country",
       "workclass", "occupation"]
SENSITIVE = "salary-class"


def available() -> bool:
    return (ADULT / "adult.csv").is_file()


def load_adult() -> tuple[Any, dict[str, Any]]:
    """(the 30,162 rows, {quasi-identifier: its ARX hierarchy}); age stays numeric."""
    import pandas as pd

    from dmt_privacy.anonymity import Hierarchy

    frame = pd.read_csv(ADULT / "adult.csv", sep=";")
    hierarchies = {q: Hierarchy.from_csv(ADULT / f"adult_hierarchy_{q}.csv", name=q)
                   for q in QIS if q != "age"}
    return frame, hierarchies
