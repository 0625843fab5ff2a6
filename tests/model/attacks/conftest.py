"""Fixtures of the attack suite: the plan, an honest template package, the server's policy."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import attack_kit


@pytest.fixture(scope="session")
def plan(simulation):
    return attack_kit.fit_plan(simulation.proxy)


@pytest.fixture(scope="session")
def policy(plan):
    return attack_kit.server_policy(plan)


@pytest.fixture(scope="session")
def base(simulation, plan, tmp_path_factory):
    return attack_kit.template(simulation, plan, tmp_path_factory.mktemp("template"))
