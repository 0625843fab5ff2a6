"""Bundled proxy data and the simulated-user protocol of the benchmarks."""

from dmt_model.datasets.boston import BOSTON_SCHEMA, load_boston
from dmt_model.datasets.users import SimulatedUser, Simulation, simulate_users

__all__ = ["BOSTON_SCHEMA", "SimulatedUser", "Simulation", "load_boston", "simulate_users"]
