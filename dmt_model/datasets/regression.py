"""More regression data sets, so that no default is chosen on Boston alone.

Each comes with a :class:`~dmt_privacy.schema.Schema` (bounds stated from
what a column means, never read off the data at run time) and the column the
simulated-user protocol sorts by (:func:`~dmt_model.datasets.simulate_users`'s
``location``). The targets sit on different scales on purpose:

============  =====  ====================================================  ==============
name          rows   target                                                 target scale
============  =====  ====================================================  ==============
``boston``      506  median home value ($1000s)                              about 22 ± 9
``star98``      303  % of a California district's 9th graders above the    about 45 ± 15
                     national median in maths (statsmodels' ``star98``)
``friedman``    600  Friedman #2 (scikit-learn's documented generator),     about 500 ± 380
                     ``sqrt(x0² + (x1·x2 − 1/(x1·x3))²)`` + noise
============  =====  ====================================================  ==============

``star98`` needs statsmodels (``pip install statsmodels``, part of the
``bench`` extra); the others need nothing beyond the ``model`` extra.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dmt_model.datasets.boston import BOSTON_SCHEMA, load_boston
from dmt_privacy.errors import MissingDependencyError, ValidationError
from dmt_privacy.schema import Field, Kind, Role, Schema

__all__ = [
    "FRIEDMAN_SCHEMA",
    "REGRESSION_DATASETS",
    "STAR98_SCHEMA",
    "RegressionDataset",
    "load_friedman",
    "load_star98",
]

_N, _Q, _T = Kind.NUMERIC, Role.QUASI_IDENTIFIER, Role.TARGET


def _percent(name: str, description: str, role: Role = Role.INSENSITIVE) -> Field:
    return Field(name, _N, role=role, bounds=(0.0, 100.0), grid=0.01, description=description)


STAR98_SCHEMA = Schema(
    name="star98-maths",
    fields=(
        _percent("LOWINC", "% low-income students", _Q),
        _percent("PERASIAN", "% Asian students"),
        _percent("PERBLACK", "% Black students"),
        _percent("PERHISP", "% Hispanic students", _Q),
        _percent("PERMINTE", "% minority teachers"),
        Field("AVYRSEXP", _N, bounds=(0.0, 40.0), grid=0.01,
              description="teachers' mean years of experience"),
        Field("AVSALK", _N, role=_Q, bounds=(20.0, 150.0), grid=0.01,
              description="teachers' mean salary ($1000s)"),
        Field("PERSPENK", _N, bounds=(0.0, 20.0), grid=0.001,
              description="spending per pupil ($1000s)"),
        Field("PTRATIO", _N, bounds=(5.0, 40.0), grid=0.01, description="pupil-teacher ratio"),
        _percent("PCTAF", "% of students taking college-credit courses"),
        _percent("PCTCHRT", "% of schools that are charter schools"),
        _percent("PCTYRRND", "% of schools on a year-round calendar"),
        _percent("MATHABOVE", "% of 9th graders above the national median in maths", _T),
    ),
)


def load_star98() -> pd.DataFrame:
    """303 California school districts (1998), from statsmodels' bundled ``star98`` data."""
    try:
        from statsmodels.datasets import star98
    except ImportError:
        raise MissingDependencyError(
            "The star98 data set ships with statsmodels: `pip install statsmodels` "
            "(or `pip install 'dmt-sdk[bench]'`).") from None
    raw = star98.load_pandas().data
    frame = raw[[f.name for f in STAR98_SCHEMA if f.name != "MATHABOVE"]].astype(float)
    frame["MATHABOVE"] = 100.0 * raw["NABOVE"] / (raw["NABOVE"] + raw["NBELOW"])
    STAR98_SCHEMA.validate(frame)
    return frame.reset_index(drop=True)


FRIEDMAN_SCHEMA = Schema(
    name="friedman-2",
    fields=(
        Field("x0", _N, role=_Q, bounds=(0.0, 100.0), grid=0.01, description="U(0, 100)"),
        Field("x1", _N, role=_Q, bounds=(40 * np.pi, 560 * np.pi), grid=0.01,
              description="U(40π, 560π)"),
        Field("x2", _N, bounds=(0.0, 1.0), grid=0.0001, description="U(0, 1)"),
        Field("x3", _N, bounds=(1.0, 11.0), grid=0.001, description="U(1, 11)"),
        Field("y", _N, role=_T, bounds=(0.0, 2500.0), grid=0.1,
              description="sqrt(x0² + (x1·x2 − 1/(x1·x3))²) + N(0, noise²)"),
    ),
)


def load_friedman(n_samples: int = 600, *, noise: float = 60.0, seed: int = 0) -> pd.DataFrame:
    """Friedman #2 from scikit-learn's ``make_friedman2``: a target in the hundreds to thousands.

    With noise the generator's target can dip below 0; it is clipped at 0, so
    the schema's bounds hold.
    """
    if not isinstance(n_samples, int) or n_samples < 10:
        raise ValidationError(f"n_samples must be an integer of at least 10, got {n_samples!r}.")
    from sklearn.datasets import make_friedman2

    x, y = make_friedman2(n_samples=n_samples, noise=noise, random_state=seed)
    frame = pd.DataFrame(x, columns=["x0", "x1", "x2", "x3"])
    frame["y"] = np.clip(y, 0.0, None)
    FRIEDMAN_SCHEMA.validate(frame)
    return frame


@dataclass(frozen=True)
class RegressionDataset:
    """A data set for the benchmarks: how to load it, its schema, how to cut users."""

    name: str
    load: Callable[[], pd.DataFrame]
    schema: Schema
    location: str  # the column users are sorted by (each user sees one neighbourhood)
    quasi_identifiers: tuple[str, ...]  # what the sharing loop k-anonymizes

    @property
    def target(self) -> str:
        target = self.schema.target
        assert target is not None
        return target.name


REGRESSION_DATASETS: dict[str, RegressionDataset] = {
    "boston": RegressionDataset("boston", load_boston, BOSTON_SCHEMA, "DIS",
                                ("CHAS", "RAD", "AGE", "DIS", "TAX")),
    "star98": RegressionDataset("star98", load_star98, STAR98_SCHEMA, "LOWINC",
                                ("LOWINC", "PERHISP", "AVSALK")),
    "friedman": RegressionDataset("friedman", load_friedman, FRIEDMAN_SCHEMA, "x0",
                                  ("x0", "x1")),
}
