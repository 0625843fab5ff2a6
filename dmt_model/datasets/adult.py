"""The Adult census data (salary class), with its schema and ARX's generalization hierarchies.

30,162 records of the 1994 US census (UCI "Adult", records with missing values
removed) as prepared by the ARX project: sex, age, race, marital-status,
education, native-country, workclass, occupation and the salary class
(``<=50K`` / ``>50K``). The k-anonymity benchmarks anonymize the first eight
columns (the standard quasi-identifiers) and the classification task
predicts ``salary-class``.

The data is not shipped in the wheel. It is read from, in this order: the
``data_dir`` passed by the caller, the ``DMT_ADULT_DIR`` environment
variable, and ``../shared/data/adult`` beside a dmt checkout.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from dmt_privacy.errors import MissingDependencyError
from dmt_privacy.schema import Field, Kind, Role, Schema

if TYPE_CHECKING:
    from dmt_privacy.anonymity import Hierarchy

__all__ = [
    "ADULT_DIR",
    "ADULT_QUASI_IDENTIFIERS",
    "ADULT_SCHEMA",
    "adult_available",
    "find_adult",
    "load_adult",
    "load_adult_hierarchies",
]

#: Where a dmt checkout keeps Adult: the shared data folder beside the checkout.
ADULT_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "adult"
ADULT_QUASI_IDENTIFIERS: tuple[str, ...] = (
    "age", "sex", "race", "marital-status", "education", "native-country", "workclass",
    "occupation")

_C, _Q = Kind.CATEGORICAL, Role.QUASI_IDENTIFIER

# Categories as listed in UCI's adult.names (Never-worked has no record once records with
# missing values are removed, but is a value the field may take); never read off the data.
ADULT_SCHEMA = Schema(
    name="adult-salary",
    fields=(
        Field("sex", _C, role=_Q, categories=("Female", "Male")),
        # UCI's extraction kept people older than 16; the census top-codes age at 90.
        Field("age", Kind.NUMERIC, role=_Q, bounds=(17.0, 90.0), grid=1.0,
              description="age in years (top-coded at 90)"),
        Field("race", _C, role=_Q, categories=(
            "White", "Asian-Pac-Islander", "Amer-Indian-Eskimo", "Other", "Black")),
        Field("marital-status", _C, role=_Q, categories=(
            "Married-civ-spouse", "Divorced", "Never-married", "Separated", "Widowed",
            "Married-spouse-absent", "Married-AF-spouse")),
        Field("education", _C, role=_Q, categories=(
            "Bachelors", "Some-college", "11th", "HS-grad", "Prof-school", "Assoc-acdm",
            "Assoc-voc", "9th", "7th-8th", "12th", "Masters", "1st-4th", "10th", "Doctorate",
            "5th-6th", "Preschool")),
        Field("native-country", _C, role=_Q, categories=(
            "United-States", "Cambodia", "England", "Puerto-Rico", "Canada", "Germany",
            "Outlying-US(Guam-USVI-etc)", "India", "Japan", "Greece", "South", "China", "Cuba",
            "Iran", "Honduras", "Philippines", "Italy", "Poland", "Jamaica", "Vietnam", "Mexico",
            "Portugal", "Ireland", "France", "Dominican-Republic", "Laos", "Ecuador", "Taiwan",
            "Haiti", "Columbia", "Hungary", "Guatemala", "Nicaragua", "Scotland", "Thailand",
            "Yugoslavia", "El-Salvador", "Trinadad&Tobago", "Peru", "Hong",
            "Holand-Netherlands")),
        Field("workclass", _C, role=_Q, categories=(
            "Private", "Self-emp-not-inc", "Self-emp-inc", "Federal-gov", "Local-gov",
            "State-gov", "Without-pay", "Never-worked")),
        Field("occupation", _C, role=_Q, categories=(
            "Tech-support", "Craft-repair", "Other-service", "Sales", "Exec-managerial",
            "Prof-specialty", "Handlers-cleaners", "Machine-op-inspct", "Adm-clerical",
            "Farming-fishing", "Transport-moving", "Priv-house-serv", "Protective-serv",
            "Armed-Forces")),
        Field("salary-class", _C, role=Role.TARGET, categories=("<=50K", ">50K"),
              description="yearly income above 50,000 US dollars (1994)"),
    ),
)


def find_adult(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding ``adult.csv`` (see the module docstring for the order searched)."""
    env = os.environ.get("DMT_ADULT_DIR", "")
    candidates = [Path(data_dir)] if data_dir is not None else \
        [*([Path(env)] if env else []), ADULT_DIR]
    for folder in candidates:
        if (folder / "adult.csv").is_file():
            return folder
    looked = ", ".join(str(c) for c in candidates)
    raise MissingDependencyError(
        f"The Adult data (adult.csv and ARX's adult_hierarchy_*.csv) was not found in {looked}. "
        "It is not shipped with dmt: pass data_dir=... or set DMT_ADULT_DIR to the folder "
        "that holds it.")


def adult_available(data_dir: str | os.PathLike[str] | None = None) -> bool:
    try:
        find_adult(data_dir)
    except MissingDependencyError:
        return False
    return True


def load_adult(data_dir: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """The 30,162 records: ``age`` as integers, every other column as strings."""
    frame = pd.read_csv(find_adult(data_dir) / "adult.csv", sep=";")
    ADULT_SCHEMA.validate(frame)
    return frame


def load_adult_hierarchies(data_dir: str | os.PathLike[str] | None = None
                           ) -> dict[str, Hierarchy]:
    """ARX's hierarchy of each categorical quasi-identifier (age stays numeric)."""
    from dmt_privacy.anonymity import Hierarchy

    folder = find_adult(data_dir)
    return {q: Hierarchy.from_csv(folder / f"adult_hierarchy_{q}.csv", name=q)
            for q in ADULT_QUASI_IDENTIFIERS if q != "age"}
