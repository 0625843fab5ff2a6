"""Shared fixtures: a small foundation model trained once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def boston():
    from dmt_model.datasets import load_boston

    return load_boston()


@pytest.fixture(scope="session")
def simulation(boston):
    from dmt_model.datasets import simulate_users

    return simulate_users(boston, seed=0)


@pytest.fixture(scope="session")
def foundation(simulation):
    from dmt_model.datasets import BOSTON_SCHEMA
    from dmt_model.foundation import TrainingConfig, train_foundation

    return train_foundation(simulation.proxy, BOSTON_SCHEMA, TrainingConfig(epochs=60, seed=0))
