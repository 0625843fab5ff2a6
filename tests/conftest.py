"""Shared fixtures: a small foundation model trained once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import settings

ROOT = Path(__file__).resolve().parents[1]

# The properties hold however long an example takes: a 2-core CI machine running the suite
# on both cores (and beside other jobs) must not fail them on Hypothesis's 200 ms deadline
# (test_schema_json_round_trip did, once, beside a benchmark).
settings.register_profile("dmt", deadline=None)
settings.load_profile("dmt")
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


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """``make test`` runs two pytest-xdist workers (``--dist loadgroup``): the tests on the
    PostgreSQL cluster run on one of them, one after another, since some crash-restart the
    cluster, which would cut off another worker's test. First of the hooks: xdist's own reads
    the group markers (tests/model/test_postgres_grouping.py)."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if "postgres_admin_url" in item.fixturenames or (
                callspec is not None and callspec.params.get("db_url") == "postgresql"):
            item.add_marker(pytest.mark.xdist_group("postgres"))
