"""The share-or-federate benchmark (`benchmarks/fl_protocol.py`) runs end to end in its quick
form: a test that the code works, not that any method wins (issue 13)."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import fl_protocol  # noqa: E402

from dmt_model.datasets import load_friedman  # noqa: E402
from dmt_privacy.errors import ValidationError  # noqa: E402


def test_the_protocol_has_power_law_users_and_a_proxy_that_misses_their_region():
    sim = fl_protocol.open_protocol(load_friedman(6000, seed=0), n_users=120, seed=0)
    sizes = np.array([len(u.train) + len(u.test) for u in sim.users])
    assert len(sim.users) == 120 and np.median(sizes) <= 8 and sizes.max() >= 100
    assert (sim.proxy[fl_protocol.LOCATION] <= 0.6).all()
    held = np.concatenate([u.train[fl_protocol.LOCATION].to_numpy() for u in sim.users])
    assert (held > 0.6).mean() > 0.1  # users hold a region the server never sees
    for user in sim.users:
        assert len(user.test) >= 1 and len(user.shareable) >= 1


def test_each_classification_task_has_power_law_users_and_a_proxy_that_misses_what_they_hold():
    for name in ("adult", "digits", "wordnet-topics"):
        task = fl_protocol.TASKS[name]
        if not task.available():
            continue
        sim = task.simulate(0, 120)
        sizes = np.array([len(u.train) + len(u.test) for u in sim.users])
        assert len(sim.users) == 120 and sizes.max() >= 5 * np.median(sizes), name
        assert not task.unseen(sim.proxy).any(), name
        held = pd.concat([u.train for u in sim.users])
        assert task.unseen(held).mean() > 0.2, name  # users hold what the server never sees
        mixes = np.array([u.label_distribution for u in sim.users])
        assert mixes.std(axis=0).max() > 0.1, name  # users' label mixes differ


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize(("task", "workers", "methods"), [
    # Every method family runs in one of the two (Flower's fixed cost is ~9 s a run): the
    # tabular DMT rows, FedProx and DP-FedAvg on Friedman; on images what is specific to
    # them, DMT's rows and FedAvg of the image model. The plot meets a DP row without its
    # plain one. test_federated.py runs each strategy on Flower as well.
    ("friedman", 2, ("dmt", "fedprox", "dp-fedavg")),
    ("digits", 2, ("dmt", "fedavg"))])
def test_quick_run_writes_every_row_with_privacy_cost_and_risk(tmp_path, task, workers,
                                                                methods):
    fl_protocol.main(["--task", task, "--quick", "--users", "12", "--rounds", "1",
                      "--epsilons", "4", "--workers", str(workers), "--methods", *methods,
                      "--output", str(tmp_path)])
    result = json.loads((tmp_path / f"federated_protocol_{task}.json").read_text())
    summary = result["summary"]
    dmt = (["DMT raw", "DMT k-anonymous k=5", "DMT local DP ε=4"] if task == "friedman"
           else ["DMT raw", "DMT modified"])
    fl = {"fedavg": ["FedAvg"], "fedprox": ["FedProx"], "dp-fedavg": ["DP-FedAvg ε=4"]}
    assert list(summary) == ["nothing shared", *dmt, *(n for m in methods if m in fl
                                                       for n in fl[m])]
    for name, row in summary.items():
        assert math.isfinite(row["error"]["mean"]) and math.isfinite(row["error_released"]["mean"])
        assert ("accuracy" in row) == (task != "friedman")
        assert row["received_bytes"]["mean"] > 0
        assert (name == "nothing shared") == (row["sent_bytes"]["mean"] == 0)
        assert ("membership_advantage" in row) == (name != "nothing shared")
        assert 0.0 <= row["moved"]["mean"] <= 1.0
    assert summary["nothing shared"]["epsilon"] == 0.0
    assert summary["DMT raw"]["epsilon"] is None
    if task == "friedman":
        assert summary["FedProx"]["epsilon"] is None
        assert 0 < summary["DMT local DP ε=4"]["epsilon"] <= 4.0
        assert 0 < summary["DP-FedAvg ε=4"]["epsilon"] <= 4.0
    else:
        assert summary["FedAvg"]["epsilon"] is None
    assert result["protocol_version"] == fl_protocol.PROTOCOL_VERSION
    for name, row in result["per_seed"][0].items():  # the held-out check of every version
        if name != "nothing shared":
            assert row["checked"] in fl_protocol.RELEASE_AFTER, name
            assert row["released"] == (fl_protocol.RELEASE_AFTER[row["checked"]]
                                       != "withheld"), name
            assert (row["device_check"] is None) == (row["checked"] == "no check"), name
            assert summary[name]["released_seeds"] == int(row["released"]), name
    table = (tmp_path / f"federated_protocol_{task}.md").read_text()
    assert "| method | user-level ε |" in table and "| released (seeds) |" in table
    for plot in ("utility", "cost", "membership"):
        assert (tmp_path / f"federated_protocol_{task}_{plot}.png").stat().st_size > 10_000


def test_every_method_runs_unless_methods_says_otherwise(tmp_path):
    fl_protocol.main(["--task", "friedman", "--users", "12", "--seeds", "1", "--describe-only",
                      "--output", str(tmp_path)])
    path = tmp_path / "federated_protocol_friedman.json"
    assert json.loads(path.read_text())["protocol"]["methods"] == list(fl_protocol.METHODS)
    fl_protocol.main(["--task", "friedman", "--users", "12", "--seeds", "1", "--describe-only",
                      "--methods", "fedavg", "dmt", "fedavg", "--output", str(tmp_path)])
    assert json.loads(path.read_text())["protocol"]["methods"] == ["dmt", "fedavg"]
    with pytest.raises(SystemExit):
        fl_protocol.main(["--task", "friedman", "--methods", "scaffold"])
    # A run is continued with the methods it ran, or not at all.
    path.write_text(json.dumps({"per_seed": [{}], "shape_per_seed": [{}],
                                "protocol": {"methods": ["dmt"]}}))
    with pytest.raises(ValidationError, match="--methods fedavg"):
        fl_protocol.main(["--task", "friedman", "--users", "12", "--first-seed", "1",
                          "--seeds", "1", "--methods", "fedavg", "--output", str(tmp_path)])


def test_personalizing_in_worker_processes_changes_nothing():
    task = fl_protocol.TASKS["friedman"]
    sim = task.simulate(0, 120)
    sim = dataclasses.replace(sim, users=sim.users[:6])
    foundation = fl_protocol.foundation_for(sim, task, 0)
    one, two = (fl_protocol.personalize_users(foundation, sim, task, workers=w) for w in (1, 2))
    for result in (one, two):
        assert result.pop("personalize_seconds") > 0  # CPU time: the one thing that varies
    assert one == two


def test_every_methods_devices_score_every_training_record(monkeypatch, tmp_path):
    """DMT's devices once scored only their unshared records (``shared_records=``) while
    FL's scored all, though Flower's global model trained on all of them: DMT's devices now
    decide on the same records as every method's, all their training ones."""
    import dmt_model.personalize as personalize

    task = fl_protocol.TASKS["friedman"]
    sim = task.simulate(0, 12)
    seen: list[tuple[list[pd.DataFrame], dict]] = []
    adopted_many = personalize.adopted_many

    def spy(new_spec, currents, record_sets, **kwargs):
        seen.append((list(record_sets), kwargs))
        return adopted_many(new_spec, currents, record_sets, **kwargs)

    monkeypatch.setattr(personalize, "adopted_many", spy)
    _check_says(monkeypatch, better=True)  # every row released: every device decides
    fl_protocol.run_seed(sim, task, 0, rounds=1, epsilons=(),
                         settings=fl_protocol.settings_from(tmp_path, task), methods=("dmt",))
    # each of DMT's two rows (raw, k-anonymous) decides every device on all its training records
    trained = [len(u.train) for u in sim.users if len(u.train) >= 2]
    assert sorted(len(frame) for sets, _ in seen for frame in sets) == sorted(trained * 2)
    assert all(s is None for _, kwargs in seen for s in kwargs.get("shared_records") or [None])
    assert any(len(u.shareable) for u in sim.users)  # there were shared records to leave out


def _check_says(monkeypatch, *, better: bool) -> list[int]:
    """Make the held-out devices' check (``compare_on_devices``) find the candidate better,
    or not better and not worse; returns a list that grows by one per check run."""
    import dmt_model.personalize as personalize

    calls: list[int] = []

    def compare(previous, candidate, devices, **kwargs):
        calls.append(len(devices))
        return personalize.DeviceComparison(len(devices), 1.0, 0.5 if better else 1.0,
                                            3.0 if better else 0.0, 1.5, better, "stub")

    monkeypatch.setattr(personalize, "compare_on_devices", compare)
    return calls
