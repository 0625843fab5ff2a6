"""A device never goes back (helper-65's review): not with a stale ``previous=``, not with an
ExecuTorch program, and the registry never signs an older version's release after a newer
one is served."""

from __future__ import annotations

import datetime as dt

import pytest

from dmt_privacy.errors import ModelFileError, ValidationError
from dmt_privacy.release import (
    RollbackRefused,
    generate_release_key,
    sign_release,
    verify_release,
)

KEY = generate_release_key()
PINNED = [KEY.verify_key()]


def _verified(model: bytes, version: int, **claims):
    now = dt.datetime.now(dt.timezone.utc)
    return verify_release(sign_release(model, KEY, version=version, schema_id="boston",
                                       now=now, **claims), model, PINNED)


def test_a_stale_previous_cannot_hide_the_personal_model_s_version(foundation, simulation,
                                                                   tmp_path):
    """The personal model comes from v3; the app passes the v1 file it kept as previous=,
    and the channel serves v2's genuine release, verified without the installed version.
    previous='s number stood in for the personal model's, so v2 was not an older version,
    it was judged against v1, and it replaced the v3-based personal model."""
    from dmt_model.coreml import UpdateSettings, export_coreml, load_spec
    from dmt_model.personalize import adopt_new_version

    paths = {v: export_coreml(foundation, tmp_path / f"v{v}.mlmodel",
                              updatable=UpdateSettings(), version=str(v)) for v in (1, 2, 3)}
    personal = tmp_path / "personal.mlmodel"
    personal.write_bytes(paths[3].read_bytes())
    before = personal.read_bytes()
    v2 = _verified(paths[2].read_bytes(), 2, held_out_devices=5, held_out_baseline=1)
    records = simulation.users[0].train
    with pytest.raises(RollbackRefused):
        adopt_new_version(paths[2], personal, records, release=v2)
    with pytest.raises(ModelFileError, match="is v1, but the personal model .* comes from v3"):
        adopt_new_version(paths[2], personal, records, release=v2, previous=paths[1],
                          prior_records=10)
    assert personal.read_bytes() == before
    assert load_spec(personal).description.metadata.versionString == "3"
    with pytest.raises(RollbackRefused):  # the right previous= still refuses going back
        adopt_new_version(paths[2], personal, records, release=v2, previous=paths[3])


def test_an_executorch_personal_model_never_goes_back(foundation, simulation, tmp_path):
    """A program's version is in its metadata (``model_version``); it was not read, so a
    v3-based personal .pte took v2's genuine release."""
    pytest.importorskip("executorch.extension.training")
    from dmt_model.executorch import export_executorch, load_program
    from dmt_model.personalize import adopt_new_version

    v3 = export_executorch(foundation, tmp_path / "v3.pte", version="3")  # one export: slow
    assert load_program(v3).metadata["model_version"] == "3"
    personal = tmp_path / "personal.pte"
    personal.write_bytes(v3.read_bytes())
    before = personal.read_bytes()
    # the offered version's number is its signed release's: v2, for these bytes
    with pytest.raises(RollbackRefused):
        adopt_new_version(v3, personal, simulation.users[0].train,
                          release=_verified(v3.read_bytes(), 2), epochs=2)
    assert personal.read_bytes() == before


def test_devices_are_asked_to_check_only_the_served_version(simulation, tmp_path):
    """``sign(2)`` refuses once v3 is served; a version check announced for v2 signed v2's
    release again anyway, later than v3's, and a device that verified it (``newest_seen``)
    then refused v3 as older."""
    from dmt_model.datasets import BOSTON_SCHEMA
    from dmt_model.foundation import TrainingConfig, train_foundation
    from dmt_model.server.retrain import ModelRegistry
    from dmt_model.version_check import VersionCheckIssuer
    from dmt_privacy.seal import generate_server_key

    registry = ModelRegistry(tmp_path / "models")
    server_key = generate_server_key().public_key()
    for seed in (0, 1, 2):
        registry.publish(train_foundation(simulation.proxy, BOSTON_SCHEMA,
                                          TrainingConfig(epochs=3, seed=seed)),
                         trained_on={"proxy": 1}, signing_key=KEY, server_key=server_key)

    def release_of(version: int):
        entry = registry.versions()[version - 1]
        return verify_release(registry.path(entry.release_file).read_bytes(),
                              registry.path(entry.mlmodel_file).read_bytes(), PINNED)

    v3 = release_of(3)
    before = release_of(2).metadata.created_at
    issuer = VersionCheckIssuer(version=2, sha256=release_of(2).metadata.sha256, baseline=1)
    with pytest.raises(ValidationError, match="Version 2 is not served"):
        registry.announce_version_check(issuer, signing_key=KEY, server_key=server_key)
    assert release_of(2).metadata.created_at == before  # not signed again
    entry = registry.versions()[2]
    assert verify_release(registry.path(entry.release_file).read_bytes(),
                          registry.path(entry.mlmodel_file).read_bytes(), PINNED,
                          newest_seen=release_of(2)).metadata.version == v3.metadata.version
