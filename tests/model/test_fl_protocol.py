"""The share-or-federate benchmark (`benchmarks/fl_protocol.py`) runs end to end in its quick
form: a test that the code works, not that any method wins (issue 13)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import fl_protocol  # noqa: E402

from dmt_model.datasets import load_friedman  # noqa: E402


def test_the_protocol_has_power_law_users_and_a_proxy_that_misses_their_region():
    sim = fl_protocol.open_protocol(load_friedman(6000, seed=0), n_users=120, seed=0)
    sizes = np.array([len(u.train) + len(u.test) for u in sim.users])
    assert len(sim.users) == 120 and np.median(sizes) <= 8 and sizes.max() >= 100
    assert (sim.proxy[fl_protocol.LOCATION] <= 0.6).all()
    held = np.concatenate([u.train[fl_protocol.LOCATION].to_numpy() for u in sim.users])
    assert (held > 0.6).mean() > 0.1  # users hold a region the server never sees
    for user in sim.users:
        assert len(user.test) >= 1 and len(user.shareable) >= 1


@pytest.mark.filterwarnings("ignore")
def test_quick_run_writes_every_row_with_privacy_cost_and_risk(tmp_path):
    fl_protocol.main(["--quick", "--users", "12", "--rounds", "1", "--epsilons", "4",
                      "--output", str(tmp_path)])
    result = json.loads((tmp_path / "federated_protocol.json").read_text())
    summary = result["summary"]
    assert list(summary) == ["nothing shared", "DMT raw", "DMT local DP ε=4", "FedAvg",
                             "FedProx", "DP-FedAvg ε=4"]
    for name, row in summary.items():
        assert math.isfinite(row["rmse"]["mean"]) and math.isfinite(row["rmse_released"]["mean"])
        assert row["received_bytes"]["mean"] > 0
        assert (name == "nothing shared") == (row["sent_bytes"]["mean"] == 0)
        assert ("membership_advantage" in row) == (name != "nothing shared")
        assert 0.0 <= row["moved"]["mean"] <= 1.0
    assert summary["nothing shared"]["epsilon"] == 0.0
    assert summary["DMT raw"]["epsilon"] is None and summary["FedAvg"]["epsilon"] is None
    assert 0 < summary["DMT local DP ε=4"]["epsilon"] <= 4.0
    assert 0 < summary["DP-FedAvg ε=4"]["epsilon"] <= 4.0
    assert "| method | user-level ε |" in (tmp_path / "federated_protocol.md").read_text()
    for plot in ("utility", "cost", "membership"):
        assert (tmp_path / f"federated_protocol_{plot}.png").stat().st_size > 10_000
