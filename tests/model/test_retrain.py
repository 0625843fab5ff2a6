import numpy as np
import pandas as pd
import pytest

from dmt_model.coreml import UpdateSettings, export_coreml, load_spec, set_inner_product
from dmt_model.coreml.validate import validate_updatable
from dmt_model.foundation import Foundation, TrainingConfig
from dmt_model.personalize import DecisionRule, adopt_new_version
from dmt_model.server.retrain import ModelRegistry, SharedBatch, retrain_foundation


def _generalized(records: pd.DataFrame) -> pd.DataFrame:
    out = records.astype(object)
    out["AGE"] = [pd.Interval(np.floor(a / 20) * 20, np.floor(a / 20) * 20 + 20, closed="both")
                  for a in records["AGE"]]
    out["RAD"] = [frozenset({r, 24}) for r in records["RAD"]]
    return out


def test_retraining_uses_the_proxy_featurizer_and_is_deterministic(foundation, simulation):
    shared = [SharedBatch(_generalized(u.shareable)) for u in simulation.users]
    config = TrainingConfig(epochs=5, seed=3)
    a = retrain_foundation(foundation, simulation.proxy, shared, config)
    b = retrain_foundation(foundation, simulation.proxy, shared, config)
    assert a.featurizer is foundation.featurizer
    test = pd.concat([u.test for u in simulation.users])
    assert np.array_equal(a.predict(test), b.predict(test))
    before = [p.detach().clone() for p in foundation.network.parameters()]
    retrain_foundation(foundation, simulation.proxy, shared, config, warm_start=True)
    after = list(foundation.network.parameters())
    assert all(np.array_equal(x.numpy(), y.detach().numpy()) for x, y in
               zip(before, after, strict=True))  # the previous foundation is not modified


def test_warm_start_begins_at_the_previous_weights(foundation, simulation):
    tiny = TrainingConfig(epochs=1, learning_rate=1e-9, seed=0)
    warm = retrain_foundation(foundation, simulation.proxy, [], tiny, warm_start=True)
    np.testing.assert_allclose(warm.predict(simulation.proxy), foundation.predict(simulation.proxy),
                               rtol=1e-4)


def test_registry_publishes_versions_atomically(foundation, simulation, tmp_path, monkeypatch,
                                                shifted):
    registry = ModelRegistry(tmp_path)
    assert registry.latest() is None
    v1 = registry.publish(foundation, trained_on={"proxy": len(simulation.proxy)},
                          evaluation_data=simulation.users[0].test)
    v2 = registry.publish(shifted(foundation, 0.01), trained_on={"proxy": 1, "shared": 2})
    assert [v.version for v in registry.versions()] == [1, 2] and registry.latest() == v2
    assert v1.evaluation["rmse"] > 0
    validate_updatable(load_spec(registry.path(v2.mlmodel_file)))
    assert Foundation.load(registry.path(v1.foundation_file)).featurizer.to_json() == \
        foundation.featurizer.to_json()

    import dmt_model.server.retrain as retrain

    def broken_export(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(retrain, "export_coreml", broken_export)
    with pytest.raises(OSError):
        registry.publish(foundation, trained_on={})
    assert [v.version for v in registry.versions()] == [1, 2]


def test_a_foundation_the_same_as_the_newest_version_is_not_published_again(
        foundation, simulation, tmp_path):
    # Reported: running examples/server_retrain.py twice, with nothing new shared, published
    # v3, the same model as v2, which devices would verify and re-personalize for nothing.
    shared = [SharedBatch(_generalized(u.shareable)) for u in simulation.users]
    config = TrainingConfig(epochs=2, seed=3)
    registry = ModelRegistry(tmp_path)
    v1 = registry.publish(foundation, trained_on={"proxy": len(simulation.proxy)})
    v2 = registry.publish(retrain_foundation(foundation, simulation.proxy, shared, config),
                          trained_on={"proxy": len(simulation.proxy), "shared": 1})
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    again = registry.publish(retrain_foundation(foundation, simulation.proxy, shared, config),
                             trained_on={"proxy": len(simulation.proxy), "shared": 1})
    assert again == v2 and registry.versions() == [v1, v2]
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files
    # The same as an older version is a rollback: a new version, served.
    v3 = registry.publish(foundation, trained_on={"proxy": len(simulation.proxy)})
    assert v3.version == 3 and registry.latest() == v3


def test_a_refused_version_is_not_published_again_as_another_refused_one(
        foundation, simulation, tmp_path, shifted):
    registry = ModelRegistry(tmp_path)
    validation = simulation.proxy.iloc[:40]
    registry.publish(foundation, trained_on={}, validation_data=validation)
    worse = shifted(foundation, 5.0)
    refused = registry.publish(worse, trained_on={}, validation_data=validation)
    assert refused.status == "refused"
    assert registry.publish(worse, trained_on={}, validation_data=validation) == refused
    assert [v.version for v in registry.versions()] == [1, 2]


@pytest.fixture
def personal(foundation, simulation, tmp_path):
    path = export_coreml(foundation, tmp_path / "personal.mlmodel", updatable=UpdateSettings())
    return path


def _broken_copy(foundation, path):
    from dmt_model.coreml import save_spec

    spec = load_spec(export_coreml(foundation, path, updatable=UpdateSettings()))
    set_inner_product(spec, "dense_0", np.zeros((64, 18), np.float32), np.zeros(64, np.float32))
    return save_spec(spec, path, overwrite=True)


def test_a_better_new_version_replaces_the_personal_model(foundation, simulation, tmp_path):
    user = simulation.users[4]
    personal = _broken_copy(foundation, tmp_path / "personal.mlmodel")  # a poor personal model
    new = export_coreml(foundation, tmp_path / "v2.mlmodel", updatable=UpdateSettings())
    new_bytes = new.read_bytes()
    # The rule an update gets: without it, a version no device vouched for must prove
    # itself at 99 % (UNCHECKED_RULE), more than this user's few test records can show.
    result = adopt_new_version(new, personal, user.private, holdout=user.test,
                               rule=DecisionRule())
    assert result.accepted, result.reason
    assert result.holdout_loss_after <= result.holdout_loss_before
    assert personal.read_bytes() not in (new_bytes, b"")  # re-personalized, not copied
    assert new.read_bytes() == new_bytes


def test_a_worse_new_version_is_not_adopted(personal, foundation, simulation, tmp_path):
    user = simulation.users[4]
    bad = _broken_copy(foundation, tmp_path / "bad.mlmodel")  # a broken "new version"
    before = personal.read_bytes()
    result = adopt_new_version(bad, personal, user.private, holdout=user.test)
    assert not result.accepted and personal.read_bytes() == before


def test_noisier_releases_weigh_less(foundation, simulation):
    import warnings

    from dmt_model.datasets import BOSTON_SCHEMA
    from dmt_model.server.retrain import NoiseWeigher
    from dmt_privacy.dp import UNACCOUNTED, LocalDPPerturber

    records = simulation.users[0].shareable[["AGE", "MEDV"]]
    weigh = NoiseWeigher(foundation, simulation.proxy)
    weights = []
    for epsilon in (0.5, 2.0, 8.0):
        perturber = LocalDPPerturber(BOSTON_SCHEMA.select(["AGE", "MEDV"]),
                                     epsilon={"AGE": epsilon, "MEDV": epsilon}, random_state=0,
                                     ledger=UNACCOUNTED)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            receipt = perturber.fit(records).perturb(records).receipt
        weights.append(weigh(receipt))
    assert 0 < weights[0] < weights[1] < weights[2] < 1
    assert weigh(None) == 1.0


def test_sample_weights_are_checked(foundation, simulation):
    from dmt_model.foundation import fit_foundation
    from dmt_privacy.errors import ValidationError

    batch = foundation.featurizer.transform(simulation.proxy)
    target = foundation.featurizer.target_values(simulation.proxy)
    with pytest.raises(ValidationError, match="sample_weight"):
        fit_foundation(foundation.featurizer, batch, target, TrainingConfig(epochs=1),
                       sample_weight=np.zeros(len(target)))
    heavy = np.where(np.arange(len(target)) < 10, 1e6, 1.0)  # ten records dominate
    model = fit_foundation(foundation.featurizer, batch, target,
                           TrainingConfig(epochs=300, seed=0), sample_weight=heavy)
    error = np.abs(model.predict(simulation.proxy) - target)
    assert error[:10].mean() < error[10:].mean()


def test_the_gate_on_held_out_devices_refuses_a_version_worse_once_personalized(
        foundation, simulation, tmp_path, shifted):
    """publish(validation_devices=...): personalized on held-out devices as they would, a
    version shown better says so in its signed release; one the devices cannot tell apart is
    refused, or with publish_unless_worse=True published without that claim; one shown worse
    is refused either way; figures are recorded."""
    import json

    from dmt_privacy.release import generate_release_key

    broken = Foundation.load(foundation.save(tmp_path / "f.npz"))
    layer = next(m for m in broken.network.modules() if hasattr(m, "weight"))
    with __import__("torch").no_grad():
        layer.weight.zero_()  # a foundation that ignores its first layer's inputs
    devices = [user.train for user in simulation.users[:10]]
    registry = ModelRegistry(tmp_path / "registry")
    registry.publish(foundation, trained_on={})
    worse = registry.publish(broken, trained_on={}, validation_devices=devices,
                             publish_unless_worse=True)
    assert not worse.published
    assert worse.validation["devices"] == 10
    assert worse.validation["device_error"] > worse.validation["current_device_error"]
    assert registry.latest().version == 1
    key = generate_release_key()
    other = ModelRegistry(tmp_path / "other")
    other.publish(broken, trained_on={})
    better = other.publish(foundation, trained_on={}, validation_devices=devices,
                           signing_key=key)
    assert better.published and better.validation["devices_better"] == 1.0, better.validation
    claim = json.loads(other.path(better.release_file).read_text())["signed"]
    assert claim["held_out_devices"] == 10
    assert claim["held_out_baseline"] == 1  # the version the devices compared it with
    # Weights a hair apart: no device can tell them apart.
    refused = other.publish(shifted(foundation, 1e-4), trained_on={},
                            validation_devices=devices,
                            signing_key=key)
    assert not refused.published and refused.validation["devices_better"] == 0.0
    assert other.latest().version == 2 and not refused.release_file
    resigned = json.loads(other.path(other.sign(2, key).release_file).read_text())["signed"]
    assert resigned["held_out_devices"] == 10  # a fresh expiry keeps what was shown
    assert resigned["held_out_baseline"] == 1
    assert resigned["created"] > claim["created"]  # signed later, even within the second
    same = other.publish(foundation, trained_on={}, validation_devices=devices,
                         signing_key=key, publish_unless_worse=True)
    assert same.published and same.validation["devices_better"] == 0.0, same.validation
    assert "held_out_devices" not in json.loads(
        other.path(same.release_file).read_text())["signed"]
    # Only the newest published version is signed again: a device that verified a v2
    # re-signed after v4 would refuse v4 as signed before it (verify_release(newest_seen=)).
    from dmt_privacy.errors import ValidationError

    with pytest.raises(ValidationError, match="version 4 is the newest published"):
        other.sign(2, key)


def test_the_device_gate_refuses_a_version_whose_device_errors_are_not_finite(
        foundation, monkeypatch, tmp_path, shifted):
    """A NaN device error compares false both ways (not worse, not better): the gate must
    fail closed and refuse the version, not publish it because it was not shown worse."""
    import dmt_model.personalize as personalize

    nan = float("nan")
    monkeypatch.setattr(personalize, "compare_on_devices", lambda *a, **k: (
        personalize.DeviceComparison(3, 0.5, nan, nan, 1.9, False, "not better on devices")))
    registry = ModelRegistry(tmp_path)
    registry.publish(foundation, trained_on={})
    version = registry.publish(shifted(foundation, 0.01), trained_on={},
                               validation_devices=[pd.DataFrame()])
    assert not version.published and registry.latest().version == 1, version.validation
