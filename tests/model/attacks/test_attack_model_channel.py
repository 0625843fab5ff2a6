"""Issue 15.3 end to end: the registry signs what it publishes; a device fetching through the
service refuses a backdoored file, a rewritten index (rollback) and a file outside the registry.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest
from attack_kit import KEY
from fastapi.testclient import TestClient

from dmt_model.server.retrain import ModelRegistry
from dmt_model.server.service import create_app
from dmt_privacy.errors import ModelFileError
from dmt_privacy.release import (
    InvalidRelease,
    RollbackRefused,
    generate_release_key,
    verify_release,
)

RELEASE_KEY = generate_release_key()
PINNED = [RELEASE_KEY.verify_key()]


@pytest.fixture(scope="module")
def published(foundation, simulation, policy, tmp_path_factory, shifted):
    folder = tmp_path_factory.mktemp("registry")
    registry = ModelRegistry(folder / "models")
    for version in (foundation, shifted(foundation, 0.01)):
        registry.publish(version, trained_on={"proxy": len(simulation.proxy)},
                         signing_key=RELEASE_KEY, policy=policy,
                         server_key=KEY.public_key())
    return folder, registry


def _fetch(client):
    model = client.get("/v1/models/latest")
    release = client.get("/v1/models/latest/release")
    policy = client.get("/v1/policy")
    assert model.status_code == release.status_code == policy.status_code == 200
    return model.content, release.content, policy.content


def test_the_device_verifies_what_the_service_serves(published, policy):
    folder, registry = published
    with TestClient(create_app(f"sqlite:///{folder / 's.db'}", KEY, policy,
                               models=registry.folder)) as client:
        model, release, served_policy = _fetch(client)
    verified = verify_release(release, model, PINNED, installed_version=1,
                              policy_json=served_policy)
    assert verified.metadata.version == 2 and verified.model == model
    assert bytes.fromhex(verified.metadata.server_key) == KEY.public_key().to_bytes()


def test_a_backdoored_file_and_a_rolled_back_index_are_refused(published, policy, tmp_path):
    import shutil

    _, registry = published
    copy = ModelRegistry(tmp_path / "models")
    shutil.copytree(registry.folder, copy.folder)
    app = create_app(f"sqlite:///{tmp_path / 's.db'}", KEY, policy, models=copy.folder)
    latest = copy.latest()
    assert latest is not None
    mlmodel = copy.folder / latest.mlmodel_file
    original = mlmodel.read_bytes()
    mlmodel.write_bytes(original[:-64] + b"\x01" * 64)  # the backdoor, same name and version
    with TestClient(app) as client:
        model, release, served_policy = _fetch(client)
    with pytest.raises(InvalidRelease):
        verify_release(release, model, PINNED, installed_version=1, policy_json=served_policy)
    mlmodel.write_bytes(original)
    index = json.loads((copy.folder / "versions.json").read_text())
    (copy.folder / "versions.json").write_text(json.dumps(index[:1]))  # v1 served as latest
    with TestClient(app) as client:
        model, release, served_policy = _fetch(client)
    with pytest.raises(RollbackRefused):
        verify_release(release, model, PINNED, installed_version=2, policy_json=served_policy)


def test_the_index_cannot_point_outside_the_registry(published, policy, tmp_path):
    import shutil

    _, registry = published
    copy = ModelRegistry(tmp_path / "models")
    shutil.copytree(registry.folder, copy.folder)
    index = json.loads((copy.folder / "versions.json").read_text())
    index[-1]["mlmodel_file"] = "/etc/passwd"
    (copy.folder / "versions.json").write_text(json.dumps(index))
    with TestClient(create_app(f"sqlite:///{tmp_path / 's.db'}", KEY, policy,
                               models=copy.folder)) as client:
        assert client.get("/v1/models/latest").status_code == 404
    for name in ("/etc/passwd", "../outside.mlmodel", ".hidden"):
        with pytest.raises(ModelFileError):
            copy.path(name)


def test_resigning_rotates_keys_and_refreshes_expiry(published, policy, tmp_path):
    import shutil

    _, registry = published
    copy = ModelRegistry(tmp_path / "models")
    shutil.copytree(registry.folder, copy.folder)
    new_key = generate_release_key()
    entry = copy.sign(2, [RELEASE_KEY, new_key], policy=policy, server_key=KEY.public_key())
    document = (copy.folder / entry.release_file).read_bytes()
    model = (copy.folder / entry.mlmodel_file).read_bytes()
    assert verify_release(document, model, [new_key.verify_key()]).key_id == new_key.key_id
    assert verify_release(document, model, PINNED).key_id == RELEASE_KEY.key_id


def test_a_release_signed_again_within_the_second_is_still_the_newer(published, policy,
                                                                     tmp_path):
    """Found in review (helper-44): ``created`` is in whole seconds and a device refuses only
    a release signed *before* the newest it verified, so a release replaced within the same
    second (a check announced right after publishing) passed ``newest_seen``."""
    import shutil

    from dmt_privacy.release import RollbackRefused

    _, registry = published
    copy = ModelRegistry(tmp_path / "models")
    shutil.copytree(registry.folder, copy.folder)
    first = copy.sign(2, RELEASE_KEY, policy=policy, server_key=KEY.public_key())
    second = copy.sign(2, RELEASE_KEY, policy=policy, server_key=KEY.public_key())
    model = (copy.folder / first.mlmodel_file).read_bytes()
    old, new = (verify_release((copy.folder / entry.release_file).read_bytes(), model, PINNED)
                for entry in (first, second))
    assert new.metadata.created_at > old.metadata.created_at
    with pytest.raises(RollbackRefused):
        verify_release((copy.folder / first.release_file).read_bytes(), model, PINNED,
                       newest_seen=new)


def test_a_release_signed_again_is_served_only_once_the_index_says_so(published, policy,
                                                                      tmp_path, monkeypatch):
    """Reported (session notes): re-signing wrote the release over the served file, then the
    index. A failure in between (a full disk, a killed process) left a signed claim out that
    the index did not hold. Now the new release goes to a file of its own and the index,
    written last, makes it the one served."""
    import shutil
    import warnings

    import dmt_model.server.retrain as retrain
    from dmt_model.version_check import VersionCheck, tally_version_checks

    _, registry = published
    copy = ModelRegistry(tmp_path / "models")
    shutil.copytree(registry.folder, copy.folder)
    app = create_app(f"sqlite:///{tmp_path / 's.db'}", KEY, policy, models=copy.folder)
    with TestClient(app) as client:
        before = _fetch(client)[1]
    entry = copy.versions()[1]
    with warnings.catch_warnings():  # a bare tally: the reports' tokens are not the point
        warnings.simplefilter("ignore", DeprecationWarning)
        tally = tally_version_checks([VersionCheck(2, json.loads(before)["signed"]["sha256"],
                                                   1, True, 1.0)] * 12,
                                     version=2, sha256=json.loads(before)["signed"]["sha256"],
                                     baseline=1, asked=12)
    real = retrain.write_atomically

    def index_fails(path, data, **kwargs):
        if str(path).endswith(ModelRegistry.INDEX):
            raise OSError(28, "No space left on device")
        return real(path, data, **kwargs)

    monkeypatch.setattr(retrain, "write_atomically", index_fails)
    with pytest.raises(OSError), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        copy.record_version_checks(tally, signing_key=RELEASE_KEY, policy=policy)
    assert copy.versions()[1] == entry
    with TestClient(app) as client:
        model, release, served_policy = _fetch(client)
    assert release == before  # the claim the index does not hold was never served
    assert "held_out_devices" not in json.loads(release)["signed"]
    monkeypatch.setattr(retrain, "write_atomically", real)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        claimed = copy.record_version_checks(tally, signing_key=RELEASE_KEY, policy=policy)
    with TestClient(app) as client:
        model, release, served_policy = _fetch(client)
    verified = verify_release(release, model, PINNED, installed_version=1,
                              policy_json=served_policy)
    assert verified.metadata.held_out_devices == 12
    assert release == (copy.folder / claimed.release_file).read_bytes()
    # the failed signing left no file; the release replaced is kept one signing more (for a
    # request that read the index just before), then removed
    def releases():
        return sorted(p.name for p in copy.folder.glob("*v2.release*"))

    assert releases() == sorted([entry.release_file, claimed.release_file])
    again = copy.sign(2, RELEASE_KEY, policy=policy, valid_for=dt.timedelta(days=7))
    assert releases() == sorted([claimed.release_file, again.release_file])
