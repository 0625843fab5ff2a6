"""Bundled proxy data and the simulated-user protocol of the benchmarks."""

from dmt_model.datasets.boston import BOSTON_SCHEMA, load_boston
from dmt_model.datasets.regression import (
    FRIEDMAN_SCHEMA,
    REGRESSION_DATASETS,
    STAR98_SCHEMA,
    RegressionDataset,
    load_friedman,
    load_star98,
)
from dmt_model.datasets.users import SimulatedUser, Simulation, simulate_users

__all__ = [
    "BOSTON_SCHEMA",
    "FRIEDMAN_SCHEMA",
    "REGRESSION_DATASETS",
    "STAR98_SCHEMA",
    "RegressionDataset",
    "SimulatedUser",
    "Simulation",
    "load_boston",
    "load_friedman",
    "load_star98",
    "simulate_users",
]
