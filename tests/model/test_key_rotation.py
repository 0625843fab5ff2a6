"""Rotating the server's HPKE key: envelopes name their key, the server holds several.

Issue 15.7: "the envelope has no key id, so rotating the server key means
trial decryption". Now a device seals to the key of the verified release, the
envelope carries that key's id, and a server holding the new key and the old
ones opens each package with the one key it names.
"""

from __future__ import annotations

import datetime as dt
import logging

import pytest
from test_ingest import POLICY, _run_cli, package

from dmt_model.server import SharedStore, ingest
from dmt_privacy.package import seal_package
from dmt_privacy.release import generate_release_key, sign_release, verify_release
from dmt_privacy.seal import ServerKeyring, envelope_key_id, generate_server_key

NOW = dt.datetime(2026, 11, 30, tzinfo=dt.timezone.utc)


def test_a_rotated_server_opens_old_and_new_envelopes_and_its_old_data(tmp_path):
    old, new = generate_server_key(), generate_server_key()
    db = f"sqlite:///{tmp_path / 's.db'}"
    first = ingest([seal_package(package(i), old.public_key()) for i in range(3)], db, old, POLICY)
    assert len(first.stored_ids) == 3
    ring = ServerKeyring([new, old])  # rotated: the new key first, the old one kept
    late_old = [seal_package(package(10 + i), old.public_key()) for i in range(2)]
    fresh = [seal_package(package(20 + i), new.public_key()) for i in range(3)]
    report = ingest(late_old + fresh, db, ring, POLICY)
    assert len(report.stored_ids) == 5 and not report.rejected
    # the data key was wrapped to the old key: the rotated server still reads its records
    assert len(SharedStore(db, ring).frame("all")) == 3 * 8
    # the new key alone cannot open what the old key sealed, nor the database's data key
    alone = ingest([seal_package(package(30), old.public_key())], f"sqlite:///{tmp_path / 'n.db'}",
                   new, POLICY)
    assert alone.rejected and not alone.stored_ids


def test_an_unknown_key_id_is_the_one_refusal_with_the_reason_logged(tmp_path, caplog):
    stranger = generate_server_key()
    envelope = seal_package(package(1), stranger.public_key())
    with caplog.at_level(logging.INFO, logger="dmt.server.ingest"):
        report = ingest([envelope], f"sqlite:///{tmp_path / 's.db'}", generate_server_key(),
                        POLICY)
    (outcome,) = report.outcomes
    assert outcome.status == "rejected" and outcome.package_id is None
    assert outcome.reason.startswith("unreadable: sealed to key id " + stranger.key_id)
    assert stranger.key_id in caplog.text


def test_a_device_seals_to_the_key_and_key_id_of_the_verified_release(tmp_path):
    old, new = generate_server_key(), generate_server_key()
    release_key = generate_release_key()
    model = b"model bytes"
    document = sign_release(model, release_key, version=2, schema_id="boston", now=NOW,
                            server_key=new.public_key().to_bytes())
    verified = verify_release(document, model, release_key.verify_key(), now=NOW)
    assert verified.server_key_id == new.key_id
    envelope = seal_package(package(5), verified.server_public_key())
    assert envelope_key_id(envelope) == verified.server_key_id
    report = ingest([envelope], f"sqlite:///{tmp_path / 's.db'}", ServerKeyring([new, old]),
                    POLICY)
    assert len(report.stored_ids) == 1


def test_cli_keygen_prints_the_key_id_and_ingest_takes_several_keys(tmp_path, capsys):
    from dmt_privacy.seal import load_private_key

    for name in ("old", "new"):
        assert _run_cli(["keygen", "-o", str(tmp_path / f"{name}.key")]) == 0
        out = capsys.readouterr().out
        assert f"key id       {load_private_key(tmp_path / f'{name}.key').key_id}" in out
    old, new = (load_private_key(tmp_path / f"{n}.key") for n in ("old", "new"))
    (tmp_path / "in").mkdir()
    for i, key in enumerate((old, new, old)):
        (tmp_path / "in" / f"{i}.dmt").write_bytes(seal_package(package(i), key.public_key()))
    (tmp_path / "policy.json").write_text(POLICY.to_json())
    argv = ["ingest", str(tmp_path / "in"), "--db", str(tmp_path / "s.db"), "--policy",
            str(tmp_path / "policy.json"), "--key", str(tmp_path / "new.key")]
    assert _run_cli(argv) == 0  # the new key alone opens only the package sealed to it
    assert "accepted     1 package(s)" in capsys.readouterr().out
    assert _run_cli([*argv, "--key", str(tmp_path / "old.key")]) == 0
    assert "accepted     2 package(s)" in capsys.readouterr().out


@pytest.mark.parametrize("keys", [[], ["x"]])
def test_keyring_of_nothing_is_a_clear_error(keys):
    from dmt_privacy.errors import ValidationError

    with pytest.raises(ValidationError, match="ServerPrivateKey"):
        ServerKeyring(keys)


def test_rewrap_lets_the_old_key_be_retired(tmp_path):
    old, new = generate_server_key(), generate_server_key()
    db = f"sqlite:///{tmp_path / 's.db'}"
    ingest([seal_package(package(i), old.public_key()) for i in range(3)], db, old, POLICY)
    assert SharedStore(db, ServerKeyring([new, old])).rewrap() == 1  # the one data key
    assert SharedStore(db, ServerKeyring([new, old])).rewrap() == 0  # already the new key's
    assert len(SharedStore(db, new).frame("all")) == 9  # the old key is no longer needed
    from dmt_privacy.errors import DMTError

    with pytest.raises(DMTError, match="nothing was re-wrapped"):
        SharedStore(db, generate_server_key()).rewrap()
