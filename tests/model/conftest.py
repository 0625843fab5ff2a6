"""Server fixtures: a PostgreSQL database per test (when `make test` started a cluster),
the store URL for SQLite and PostgreSQL alike, and the load client of benchmarks/server_load."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
POSTGRES_URL = os.environ.get("DMT_TEST_POSTGRES_URL", "")
POSTGRES_CTL = os.environ.get("DMT_TEST_POSTGRES_CTL", "")


def _no_postgres_reason() -> str:
    if shutil.which("apt-get") is None:
        return ("PostgreSQL tests need DMT_TEST_POSTGRES_URL; `make test` starts a throwaway "
                "cluster only where apt-get exists (Debian/Ubuntu), not on this machine")
    return ("DMT_TEST_POSTGRES_URL is not set: run `make test`, which installs PostgreSQL "
            "if missing and starts a throwaway cluster on 127.0.0.1")


def load_server_load():
    """benchmarks/server_load.py as a module (the tests run its load client on small loads)."""
    name = "server_load"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "server_load.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def server_load():
    return load_server_load()


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    if not POSTGRES_URL:
        pytest.skip(_no_postgres_reason())
    return POSTGRES_URL


@pytest.fixture(scope="session")
def postgres_ctl(postgres_admin_url) -> str:
    if not POSTGRES_CTL:
        pytest.skip("DMT_TEST_POSTGRES_CTL (how to restart the test cluster) is not set")
    return POSTGRES_CTL


@pytest.fixture
def postgres_url(postgres_admin_url, server_load):
    """A fresh, empty database on the test cluster, dropped afterwards."""
    url, drop = server_load.postgres_database(postgres_admin_url)
    yield url
    drop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """A fresh store URL: a SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'server.db'}"
    return request.getfixturevalue("postgres_url")


def _shifted(foundation, by: float):
    """A copy of ``foundation`` whose predictions move by ``by``: another version's weights
    (the registry does not publish the newest version's foundation again)."""
    import copy

    import torch

    other = copy.deepcopy(foundation)
    with torch.no_grad():
        other.dense_layers[-1].bias += by
    return other


@pytest.fixture(scope="session")
def shifted():
    """``shifted(foundation, by)``: :func:`_shifted`."""
    return _shifted
