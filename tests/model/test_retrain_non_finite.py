"""A foundation whose predictions are NaN or infinite (training that diverged) never reaches
devices and never poisons retraining: the registry refuses to publish it, whatever gate the
call asks for, and leaves the registry as it was; retraining refuses a previous foundation
whose predictions would become the shared records' targets or their weights. Each error
names the model and what to do.

Before this check: a NaN first version was published (the gate compares with no current
version); a NaN later version was published without a gate, and with ``validation_data``
recorded as refused (files and index entry written); with ``validation_devices`` the error
said "The model predicts nan for the anchor record" and advised downloading it again; and
``policy_batches`` wrote NaN into every shared record's target.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dmt_model.coreml import UpdateSettings, build_spec
from dmt_model.datasets import BOSTON_SCHEMA
from dmt_model.foundation import Foundation
from dmt_model.personalize import compare_on_devices
from dmt_model.server.retrain import (
    ModelRegistry,
    SharedBatch,
    retrain_foundation,
    validation_split,
)
from dmt_privacy.errors import ModelFileError


def _diverged(foundation: Foundation, folder, value: float = np.nan,
              part: str = "weight") -> Foundation:
    """A copy of ``foundation`` whose last dense layer's weights (or bias) are all ``value``:
    what a training that diverged leaves."""
    import torch

    broken = Foundation.load(foundation.save(folder / f"diverged-{value}-{part}.npz"))
    with torch.no_grad():
        getattr(broken.dense_layers[-1], part).fill_(value)
    return broken


def _contents(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}


@pytest.fixture(scope="module")
def nan_foundation(foundation, tmp_path_factory):
    return _diverged(foundation, tmp_path_factory.mktemp("nan"))


@pytest.mark.parametrize("gate", ["none", "validation_data", "evaluation_data",
                                  "validation_devices"])
@pytest.mark.parametrize("first", [True, False])
def test_a_candidate_predicting_nan_is_not_published_and_nothing_is_written(
        foundation, nan_foundation, simulation, tmp_path, gate, first):
    registry = ModelRegistry(tmp_path / "registry")
    if not first:
        registry.publish(foundation, trained_on={})
    before = _contents(registry.folder)
    _, validation = validation_split(simulation.proxy)
    kwargs = {"none": {}, "validation_data": {"validation_data": validation},
              "evaluation_data": {"evaluation_data": validation},
              "validation_devices": {"validation_devices": [
                  user.train for user in simulation.users[:4]]}}[gate]
    with pytest.raises(ModelFileError, match=r"The candidate foundation \(version "
                       + ("1" if first else "2") + r"\).* not published") as error:
        registry.publish(nan_foundation, trained_on={}, **kwargs)
    message = str(error.value)
    assert ("nan" in message.lower()) and "retrain" in message, message
    assert ("version 1 is still served" in message) != first, message
    assert _contents(registry.folder) == before
    assert (registry.latest() is None) if first else registry.latest().version == 1


def test_a_candidate_holding_infinity_names_its_weights(foundation, simulation, tmp_path):
    overflowing = _diverged(foundation, tmp_path, value=np.inf, part="bias")
    registry = ModelRegistry(tmp_path / "registry")
    _, validation = validation_split(simulation.proxy)
    with pytest.raises(ModelFileError, match=r"The candidate foundation \(version 1\) holds "
                       r"inf in its weights \S+bias, so it is not published"):
        registry.publish(overflowing, trained_on={}, validation_data=validation)
    assert registry.versions() == []


def test_a_finite_candidate_overflowing_on_a_record_names_the_value_and_the_record(
        foundation, simulation, tmp_path):
    overflowing = _diverged(foundation, tmp_path, value=3e38)  # finite, and it overflows
    registry = ModelRegistry(tmp_path / "registry")
    _, validation = validation_split(simulation.proxy)
    with pytest.raises(ModelFileError, match=r"predicts -?inf for the validation_data record "
                       rf"at row {validation.index[0]}:.*overflow on this record"):
        registry.publish(overflowing, trained_on={}, validation_data=validation)
    assert registry.versions() == []


def test_a_finite_candidate_is_still_published(foundation, simulation, tmp_path):
    _, validation = validation_split(simulation.proxy)
    version = ModelRegistry(tmp_path).publish(foundation, trained_on={},
                                              validation_data=validation)
    assert version.published


def test_the_device_comparison_names_the_version_that_is_broken(
        foundation, nan_foundation, simulation):
    settings = UpdateSettings()
    good, bad = (build_spec(f, updatable=settings) for f in (foundation, nan_foundation))
    devices = [user.train for user in simulation.users[:3]]
    with pytest.raises(ModelFileError, match=r"^device 0: The candidate predicts nan"):
        compare_on_devices(good, bad, devices)
    with pytest.raises(ModelFileError, match=r"^device 0: The previous version predicts nan"):
        compare_on_devices(bad, good, devices)


def _store_with_packages(simulation, folder):
    """Three simulated devices' shareable records, k-anonymized by a plan fitted on the proxy
    data (no local DP), ingested."""
    from dmt_model.server import ServerPolicy, SharedStore, ingest
    from dmt_privacy.anonymity import KAnonymizer
    from dmt_privacy.seal import generate_server_key
    from dmt_privacy.sharing import SharingPolicy, share
    from dmt_privacy.store import LocalStore

    quasi_identifiers = [f.name for f in BOSTON_SCHEMA.by_role("quasi-identifier")]
    categorical = {f.name: object for f in BOSTON_SCHEMA.by_kind("categorical")}
    plan = KAnonymizer(quasi_identifiers, k=5).fit(
        simulation.proxy.astype(categorical)).plan_.widened(
        {q: b for q in quasi_identifiers if (b := BOSTON_SCHEMA[q].bounds) is not None})
    key = generate_server_key()
    sharing = SharingPolicy(fields=tuple(BOSTON_SCHEMA.names), plan=plan, required_k=5)
    envelopes = []
    for user in simulation.users[:3]:
        device = LocalStore(folder / f"user-{user.user_id}.db", schema=BOSTON_SCHEMA,
                            user_id=f"user-{user.user_id}", key=LocalStore.generate_key())
        device.add_records(user.shareable)
        envelopes.append(share(device, sharing, key.public_key()).envelope)
        device.close()
    policy = ServerPolicy(BOSTON_SCHEMA, min_k=5, plan=plan)
    db = f"sqlite:///{folder / 'server.db'}"
    assert len(ingest(envelopes, db, key, policy).accepted) == 3
    return SharedStore(db, key), policy


def test_retraining_refuses_a_previous_foundation_predicting_nan(
        foundation, nan_foundation, simulation, tmp_path):
    """policy_batches winsorizes each shared target around the previous foundation's
    prediction: a NaN prediction would become the target. It is refused, not skipped as a
    package's fault, before any training; the same store reads fine with a sound one."""
    from dmt_model.server.training import policy_batches

    store, policy = _store_with_packages(simulation, tmp_path)
    batches, read = policy_batches(store, policy, "all", previous=foundation,
                                   proxy=simulation.proxy)
    assert read.packages == 3 and all(
        np.isfinite(b.records["MEDV"].astype(float)).all() for b in batches)
    with pytest.raises(ModelFileError, match=r"The previous foundation predicts nan for the "
                       r"proxy record at row .*retrain.*nothing was read"):
        policy_batches(store, policy, "all", previous=nan_foundation, proxy=simulation.proxy)


def test_a_shared_record_the_foundation_predicts_nan_for_skips_its_package(
        foundation, simulation, tmp_path, monkeypatch):
    """Finite on the proxy, NaN on a shared record: the record drove the model out of range,
    so its package is skipped (reason ``features``); one package cannot stop retraining."""
    from dmt_model.server import training

    store, policy = _store_with_packages(simulation, tmp_path)
    proxy_rows = len(simulation.proxy)
    real = foundation.network.forward

    def nan_beyond_the_proxy(*tensors):
        out = real(*tensors)
        return out if len(out) == proxy_rows else out * float("nan")

    monkeypatch.setattr(foundation.network, "forward", nan_beyond_the_proxy)
    batches, read = training.policy_batches(store, policy, "all", previous=foundation,
                                            proxy=simulation.proxy)
    assert batches == [] and read.packages == 0 and read.skipped == {"features": 3}


def test_a_value_beyond_float32_in_a_field_without_bounds_skips_its_package(
        foundation, simulation):
    """Validation lets any finite number into a numeric field without bounds; 1e300 becomes
    infinity once featurized. Such a package is skipped, never allowed to stop retraining or
    blamed on the foundation (review of 069af28)."""
    from dmt_model.server import training

    records = simulation.users[0].shareable.copy()
    records["B"] = records["B"].astype(float)
    assert training._bounded(foundation, SharedBatch(records, package_id="fine"), 5.0)
    records.loc[records.index[0], "B"] = 1e300
    with pytest.raises(ValueError, match="not finite") as raised:
        training._bounded(foundation, SharedBatch(records, package_id="crafted"), 5.0)
    assert not isinstance(raised.value, ModelFileError)


def test_weighing_by_noise_refuses_a_previous_foundation_predicting_nan(
        nan_foundation, simulation):
    """NoiseWeigher scales DP records' weights by the previous foundation's residuals on the
    proxy: NaN residuals would make every weight NaN."""
    shared = [SharedBatch(pd.DataFrame(simulation.users[0].shareable))]
    with pytest.raises(ModelFileError, match="The previous foundation predicts nan for the "
                       "proxy record"):
        retrain_foundation(nan_foundation, simulation.proxy, shared)


def _serving_nan(tmp_path, nan_foundation, monkeypatch) -> ModelRegistry:
    """A registry serving a version that predicts NaN, as one published before the registry
    refused such candidates."""
    import dmt_model.server.retrain as retrain

    registry = ModelRegistry(tmp_path / "registry")
    with monkeypatch.context() as patched:
        patched.setattr(retrain, "_refuse_non_finite_candidate", lambda *args: None)
        registry.publish(nan_foundation, trained_on={})
    return registry


def test_a_finite_candidate_replaces_a_served_version_that_predicts_nan(
        foundation, nan_foundation, simulation, tmp_path, monkeypatch):
    # A version served before the registry refused non-finite candidates: the gate compared
    # every candidate's error with NaN, which is never smaller, and refused them all.
    registry = _serving_nan(tmp_path, nan_foundation, monkeypatch)
    _, validation = validation_split(simulation.proxy)
    version = registry.publish(foundation, trained_on={}, validation_data=validation)
    assert version.published and registry.latest().version == 2
    assert version.validation["current_version"] == 1
    assert np.isnan(version.validation["current_error"])


def test_the_device_check_names_a_served_version_that_predicts_nan_and_the_way_out(
        foundation, nan_foundation, simulation, tmp_path, monkeypatch):
    # It used to say "The previous version predicts nan ... compare the candidate with a
    # version whose predictions are finite", which publish (always against the served one)
    # cannot do.
    registry = _serving_nan(tmp_path, nan_foundation, monkeypatch)
    before = _contents(registry.folder)
    devices = [user.train for user in simulation.users[:4]]
    with pytest.raises(ModelFileError, match=r"^validation_devices\[0\]: The served version 1 "
                       r"predicts nan .*validation_data instead of validation_devices"):
        registry.publish(foundation, trained_on={}, validation_devices=devices)
    assert _contents(registry.folder) == before
    _, validation = validation_split(simulation.proxy)
    assert registry.publish(foundation, trained_on={}, validation_data=validation).published
