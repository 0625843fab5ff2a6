"""The Boston housing data, the DMT reference app's proxy data, with its schema.

506 rows, 13 features and MEDV (median home value in $1000s), from Harrison
and Rubinfeld (1978) as shipped in scikit-learn 1.1.3. A caveat worth stating
wherever the data is shown: column B encodes the proportion of Black residents
by town, the reason scikit-learn removed the data set. It is used here only
because the reference app used it; nothing in the SDK depends on it, and every
part of the SDK works on any :class:`~dmt_privacy.schema.Schema`.
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

from dmt_privacy.schema import Field, Kind, Role, Schema

__all__ = ["BOSTON_SCHEMA", "load_boston"]

_N, _C, _Q, _T = Kind.NUMERIC, Kind.CATEGORICAL, Role.QUASI_IDENTIFIER, Role.TARGET

# Bounds are the domain a value may take, stated from what each column means
# (never read off the data at run time); grids are the resolution at which
# values are shared.
BOSTON_SCHEMA = Schema(
    name="boston-housing",
    fields=(
        Field("CRIM", _N, bounds=(0.0, 100.0), grid=0.01, description="per-capita crime rate"),
        Field("ZN", _N, bounds=(0.0, 100.0), grid=0.5,
              description="% residential land zoned for lots over 25,000 sq.ft."),
        Field("INDUS", _N, bounds=(0.0, 30.0), grid=0.01,
              description="% non-retail business acres"),
        Field("CHAS", _C, role=_Q, categories=(0, 1),
              description="1 if the tract bounds the Charles River"),
        Field("NOX", _N, bounds=(0.3, 0.9), grid=0.001,
              description="nitric oxides concentration (parts per 10 million)"),
        Field("RM", _N, bounds=(3.0, 9.0), grid=0.001, description="average rooms per dwelling"),
        Field("AGE", _N, role=_Q, bounds=(0.0, 100.0), grid=0.1,
              description="% owner-occupied units built before 1940"),
        Field("DIS", _N, role=_Q, bounds=(1.0, 13.0), grid=0.0001,
              description="weighted distance to five Boston employment centres"),
        Field("RAD", _C, role=_Q, categories=(1, 2, 3, 4, 5, 6, 7, 8, 24),
              description="index of accessibility to radial highways"),
        Field("TAX", _N, role=_Q, bounds=(150.0, 750.0), grid=1.0,
              description="property-tax rate per $10,000"),
        Field("PTRATIO", _N, bounds=(12.0, 23.0), grid=0.1, description="pupil-teacher ratio"),
        Field("B", _N, bounds=(0.0, 400.0), grid=0.01,
              description="1000(Bk - 0.63)^2, Bk the proportion of Black residents"),
        Field("LSTAT", _N, bounds=(0.0, 40.0), grid=0.01, description="% lower status"),
        Field("MEDV", _N, role=_T, bounds=(0.0, 60.0), grid=0.1,
              description="median value of owner-occupied homes in $1000s"),
    ),
)


def load_boston() -> pd.DataFrame:
    """The 506 rows as a DataFrame: CHAS and RAD as integers, the rest as floats."""
    source = resources.files("dmt_model.datasets") / "data" / "boston_house_prices.csv"
    with source.open("r") as handle:
        frame = pd.read_csv(handle, skiprows=1)  # first line is a "506,13" header
    frame = frame.astype(float)
    frame["CHAS"] = frame["CHAS"].astype(int)
    frame["RAD"] = frame["RAD"].astype(int)
    BOSTON_SCHEMA.validate(frame)
    return frame
