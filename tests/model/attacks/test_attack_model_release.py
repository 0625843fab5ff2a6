"""Issue 15.3: a device refuses a backdoored, re-signed, rolled-back or frozen model.

The attacker controls the channel the model travels on (the registry folder, the
index, the HTTP responses) but not the release signing key, whose public half the
app pinned at build time.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

import pytest

from dmt_privacy.release import (
    InvalidRelease,
    ReleaseExpired,
    RollbackRefused,
    generate_release_key,
    sign_release,
    verify_release,
)

KEY = generate_release_key()
PINNED = [KEY.verify_key()]
NOW = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.timezone.utc)


def _release(model: bytes, version: int, *, key=KEY, now=NOW, **kw) -> bytes:
    return sign_release(model, key, version=version, schema_id="boston", now=now,
                        policy_json='{"policy": 1}', **kw)


V1, V2 = b"model v1 " * 100, b"model v2 " * 100


def test_an_honest_release_verifies_and_returns_the_verified_bytes():
    verified = verify_release(_release(V2, 2), V2, PINNED, installed_version=1, now=NOW,
                              policy_json='{"policy": 1}')
    assert verified.model == V2 and verified.metadata.version == 2
    assert verified.key_id == KEY.key_id


def test_the_server_key_travels_in_the_signed_release():
    from dmt_privacy.seal import generate_server_key

    server = generate_server_key().public_key()
    verified = verify_release(_release(V2, 2, server_key=server.to_bytes()), V2, PINNED, now=NOW)
    assert verified.server_public_key().fingerprint() == server.fingerprint()


def test_a_backdoored_model_under_the_real_release_is_refused():
    backdoored = bytearray(V2)
    backdoored[17] ^= 1
    with pytest.raises(InvalidRelease) as info:
        verify_release(_release(V2, 2), bytes(backdoored), PINNED, now=NOW)
    assert str(info.value) == "" and type(info.value) is InvalidRelease
    with pytest.raises(InvalidRelease):
        verify_release(_release(V2, 2), V2 + b"\0", PINNED, now=NOW)  # length


def test_a_release_signed_by_another_key_or_edited_is_refused():
    with pytest.raises(InvalidRelease):
        verify_release(_release(V2, 2, key=generate_release_key()), V2, PINNED, now=NOW)
    doc = json.loads(_release(V1, 1))
    doc["signed"]["version"] = 9  # same signature, edited statement
    with pytest.raises(InvalidRelease):
        verify_release(json.dumps(doc).encode(), V1, PINNED, installed_version=2, now=NOW)
    doc = json.loads(_release(V1, 1))
    doc["signed"]["sha256"] = __import__("hashlib").sha256(V2).hexdigest()
    with pytest.raises(InvalidRelease):
        verify_release(json.dumps(doc).encode(), V2, PINNED, now=NOW)
    for garbage in (b"", b"{}", b"[]", b"\xff" * 10, b'{"signed": 1, "signatures": []}'):
        with pytest.raises(InvalidRelease):
            verify_release(garbage, V1, PINNED, now=NOW)


def test_a_rolled_back_model_is_refused():
    with pytest.raises(RollbackRefused):
        verify_release(_release(V1, 1), V1, PINNED, installed_version=2, now=NOW)
    resigned_other_bytes = _release(V1, 2)
    with pytest.raises(RollbackRefused):
        verify_release(resigned_other_bytes, V1, PINNED, installed_version=2,
                       installed_sha256=__import__("hashlib").sha256(V2).hexdigest(), now=NOW)


def test_a_frozen_release_expires():
    old = _release(V2, 2, now=NOW - dt.timedelta(days=31))
    with pytest.raises(ReleaseExpired):
        verify_release(old, V2, PINNED, now=NOW)


def test_the_policy_named_by_the_release_is_the_one_served():
    with pytest.raises(InvalidRelease):
        verify_release(_release(V2, 2), V2, PINNED, now=NOW, policy_json='{"policy": 2}')


def test_key_rotation_old_and_new_signatures():
    new = generate_release_key()
    both = sign_release(V2, [KEY, new], version=2, schema_id="boston", now=NOW)
    assert verify_release(both, V2, [new.verify_key()], now=NOW).key_id == new.key_id
    assert verify_release(both, V2, PINNED, now=NOW).key_id == KEY.key_id


def test_verification_imports_without_torch():
    code = ("import sys, dmt_privacy.release as r; "
            "assert 'torch' not in sys.modules and 'sqlalchemy' not in sys.modules, "
            "sorted(m for m in sys.modules if m.startswith(('torch', 'sqlalchemy')))")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_keygen_sign_and_verify(tmp_path, capsys):
    from dmt_model.cli import main
    from dmt_privacy.seal import generate_server_key, save_public_key

    assert main(["keygen", "--release", "-o", str(tmp_path / "release.key")]) == 0
    assert oct((tmp_path / "release.key").stat().st_mode & 0o777) == "0o600"
    save_public_key(generate_server_key().public_key(), tmp_path / "server.key.pub")
    model = tmp_path / "foundation-v2.mlmodel"
    model.write_bytes(V2)
    (tmp_path / "policy.json").write_text('{"policy": 1}')
    assert main(["release", "sign", str(model), "--version", "2", "--key",
                 str(tmp_path / "release.key"), "--schema-id", "boston", "--policy",
                 str(tmp_path / "policy.json"), "--server-key",
                 str(tmp_path / "server.key.pub")]) == 0
    release = tmp_path / "foundation-v2.release.json"
    verify = ["release", "verify", str(model), str(release), "--pin",
              str(tmp_path / "release.key.pub"), "--policy", str(tmp_path / "policy.json")]
    capsys.readouterr()
    assert main(verify) == 0 and '"verified": true' in capsys.readouterr().out
    assert main([*verify, "--installed-version", "3"]) == 1
    assert "never goes back" in capsys.readouterr().err
    created = json.loads(release.read_text())["signed"]["created"]
    assert main([*verify, "--newest-seen", created]) == 0
    assert f'"created": "{created}"' in capsys.readouterr().out
    later = (dt.datetime.fromisoformat(created) + dt.timedelta(seconds=1)).isoformat()
    assert main([*verify, "--newest-seen", later]) == 1
    assert "before the newest release this device verified" in capsys.readouterr().err
    assert main([*verify, "--newest-seen", "yesterday"]) == 1
    assert "--newest-seen must be an ISO 8601 time" in capsys.readouterr().err
    model.write_bytes(V2[:-1] + b"X")  # the backdoor
    assert main(verify) == 1
    assert capsys.readouterr().err.strip() == "dmt release: error:"


def test_the_device_shares_by_the_signed_policy(policy, simulation, tmp_path):
    from attack_kit import KEY as SERVER_KEY

    from dmt_model.datasets import BOSTON_SCHEMA
    from dmt_model.server import ingest
    from dmt_privacy.release import sharing_policy_from
    from dmt_privacy.sharing import share
    from dmt_privacy.store import LocalStore

    policy_json = policy.to_json()
    verified = verify_release(sign_release(V2, KEY, version=2, schema_id="boston", now=NOW,
                                           policy_json=policy_json), V2, PINNED, now=NOW,
                              policy_json=policy_json)
    store = LocalStore(tmp_path / "device.db", schema=BOSTON_SCHEMA, user_id="u",
                       epsilon_budget=1000.0, key=LocalStore.generate_key())
    store.add_records(simulation.users[0].shareable)
    sharing = sharing_policy_from(policy_json, release=verified, privacy_unit="user")
    result = share(store, sharing, SERVER_KEY.public_key())
    report = ingest([result.envelope], str(tmp_path / "s.db"), SERVER_KEY, policy)
    assert len(report.accepted) == 1, report.to_text()


def test_a_policy_swapped_on_the_channel_is_refused_with_the_release_it_claims(policy):
    """The channel serves the policy beside the release. verify_release checks it only when
    given it, and sharing_policy_from read whatever bytes it got: a swapped policy (ε 1000,
    no plan) set the device's sharing (helper-68). With the verified release it is refused,
    and without one the device is warned that nothing checked the policy."""
    from dmt_privacy.release import UnverifiedPolicyWarning, sharing_policy_from

    signed = policy.to_json()
    verified = verify_release(sign_release(V2, KEY, version=2, schema_id="boston", now=NOW,
                                           policy_json=signed), V2, PINNED, now=NOW)
    swapped = json.dumps({**json.loads(signed), "plan": None,
                          "epsilon": {name: 1000.0 for name in json.loads(signed)["epsilon"]}})
    with pytest.raises(InvalidRelease):
        sharing_policy_from(swapped, release=verified, privacy_unit="user")
    with pytest.raises(InvalidRelease):
        sharing_policy_from(swapped.encode(), release=verified, privacy_unit="user")
    assert sharing_policy_from(signed, release=verified, privacy_unit="user").plan is not None
    with pytest.warns(UnverifiedPolicyWarning, match="release="):
        sharing_policy_from(signed, privacy_unit="user")
    unsigned = verify_release(sign_release(V2, KEY, version=2, schema_id="boston", now=NOW),
                              V2, PINNED, now=NOW)
    with pytest.raises(InvalidRelease, match="names no policy"):
        sharing_policy_from(signed, release=unsigned, privacy_unit="user")


def test_the_device_evidence_is_signed_and_cannot_be_added_or_stripped():
    """A release says on how many held-out devices the version was shown better; the claim
    decides how much proof a device asks (adoption_rule_for), so it is signed like the rest."""
    from dmt_model.personalize import ADOPTION_RULE, UNCHECKED_RULE, adoption_rule_for

    gated = verify_release(_release(V2, 2, held_out_devices=30, held_out_baseline=1), V2,
                           PINNED, installed_version=1, now=NOW)
    assert gated.metadata.held_out_devices == 30 and adoption_rule_for(gated) == ADOPTION_RULE
    plain = verify_release(_release(V2, 2), V2, PINNED, now=NOW)
    assert plain.metadata.held_out_devices is None
    assert adoption_rule_for(plain) == UNCHECKED_RULE == adoption_rule_for(None)
    assert "held_out_devices" not in json.loads(_release(V2, 2))["signed"]  # the old form
    added = json.loads(_release(V2, 2))
    added["signed"]["held_out_devices"] = 30  # the channel claims a gate that never ran
    stripped = json.loads(_release(V2, 2, held_out_devices=30, held_out_baseline=1))
    del stripped["signed"]["held_out_devices"]
    nulled = json.loads(_release(V2, 2))
    nulled["signed"]["held_out_devices"] = None  # a second spelling of "no claim"
    for forged in (added, stripped, nulled):
        with pytest.raises(InvalidRelease):
            verify_release(json.dumps(forged).encode(), V2, PINNED, now=NOW)
    for bad in (1, True, -3, 2.5, "30"):
        with pytest.raises(Exception, match="held_out_devices"):
            _release(V2, 2, held_out_devices=bad)
    with pytest.raises(Exception, match="verify_release returned"):
        adoption_rule_for("a release file")



def test_a_claim_holds_only_against_the_version_the_devices_compared_it_with():
    """v3 was shown better than v2 on held-out devices. A device whose personal model still
    comes from v1 (it was offline while v2 was served, or kept its v1 model) learns nothing
    from that claim about v3 against what it holds: it must ask v3 to prove itself. The
    baseline is signed, so the channel can neither strip nor change it."""
    import warnings

    from dmt_model.personalize import ADOPTION_RULE, UNCHECKED_RULE, adoption_rule_for

    v3 = b"model v3 " * 100
    document = _release(v3, 3, held_out_devices=30, held_out_baseline=2)
    assert json.loads(document)["signed"]["held_out_baseline"] == 2
    on_v2 = verify_release(document, v3, PINNED, installed_version=2, now=NOW)
    assert on_v2.installed_version == 2 and adoption_rule_for(on_v2) == ADOPTION_RULE
    on_v1 = verify_release(document, v3, PINNED, installed_version=1, now=NOW)
    assert adoption_rule_for(on_v1) == UNCHECKED_RULE
    # A device that does not say what it runs cannot be matched to the claim: fail closed.
    assert adoption_rule_for(verify_release(document, v3, PINNED, now=NOW)) == UNCHECKED_RULE
    # It installed v2 but kept its personal model from v1: what it holds is the v1 line.
    assert adoption_rule_for(on_v2, based_on=1) == UNCHECKED_RULE
    assert adoption_rule_for(on_v1, based_on=2) == ADOPTION_RULE
    for field, value in (("held_out_baseline", 1), ("held_out_baseline", None)):
        forged = json.loads(document)
        forged["signed"][field] = value  # another baseline, or a second spelling of none
        with pytest.raises(InvalidRelease):
            verify_release(json.dumps(forged).encode(), v3, PINNED, now=NOW)
    stripped = json.loads(document)
    del stripped["signed"]["held_out_baseline"]
    with pytest.raises(InvalidRelease):
        verify_release(json.dumps(stripped).encode(), v3, PINNED, now=NOW)
    for bad in (0, 3, 4, True, 2.0, "2"):  # a baseline is an earlier version
        with pytest.raises(Exception, match="held_out_baseline"):
            _release(v3, 3, held_out_devices=30, held_out_baseline=bad)
    with pytest.raises(Exception, match="held_out_baseline"):
        _release(v3, 3, held_out_baseline=2)  # a baseline names the comparison of a claim
    with warnings.catch_warnings(record=True) as caught:  # the form of releases before it
        warnings.simplefilter("always")
        legacy = verify_release(_release(v3, 3, held_out_devices=30), v3, PINNED,
                                installed_version=1, now=NOW)
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)
    assert adoption_rule_for(legacy) == UNCHECKED_RULE  # v3's claim: v1 is two versions behind
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old = _release(v3, 3, held_out_devices=30)
    # An old claim beat the version just before it: a device on v2 trusts it, and so does a
    # caller that says nothing (as before baselines were signed) ...
    assert adoption_rule_for(verify_release(old, v3, PINNED, installed_version=2,
                                            now=NOW)) == ADOPTION_RULE
    assert adoption_rule_for(verify_release(old, v3, PINNED, now=NOW)) == ADOPTION_RULE
    # ... but an old document replayed by the channel to a device further behind, after the
    # server re-signed v3 with its baseline, earns it nothing (review, helper-30).
    assert adoption_rule_for(verify_release(old, v3, PINNED, installed_version=1,
                                            now=NOW)) == UNCHECKED_RULE
    for bad in (True, 1.0, "1", 0):
        with pytest.raises(Exception, match="based_on"):
            adoption_rule_for(on_v2, based_on=bad)
        with pytest.raises(Exception, match="installed_version"):
            verify_release(document, v3, PINNED, installed_version=bad, now=NOW)


def test_the_version_check_a_release_names_is_signed_and_well_formed():
    """The check devices are asked to make (its key id, baseline and ε) is signed: the
    channel can neither strip nor change it, and a malformed one is never signed."""
    check = {"key": "ab" * 32, "baseline": 1, "epsilon": 1.0}
    document = _release(V2, 2, version_check=check)
    assert verify_release(document, V2, PINNED, now=NOW).metadata.version_check == check
    for change in ({"key": "cd" * 32}, {"baseline": 2}, {"epsilon": 4.0}, None):
        forged = json.loads(document)
        if change is None:
            del forged["signed"]["version_check"]
        else:
            forged["signed"]["version_check"].update(change)
        with pytest.raises(InvalidRelease):
            verify_release(json.dumps(forged).encode(), V2, PINNED, now=NOW)
    spelt_none = json.loads(document)
    spelt_none["signed"]["version_check"] = None  # a second spelling of none
    with pytest.raises(InvalidRelease):
        verify_release(json.dumps(spelt_none).encode(), V2, PINNED, now=NOW)
    for bad in ({**check, "key": "AB" * 32}, {**check, "key": "ab" * 16},
                {**check, "baseline": 2}, {**check, "baseline": True}, {**check, "epsilon": 1},
                {**check, "epsilon": float("inf")}, {**check, "epsilon": 0.0},
                {**check, "extra": 1}, {"key": check["key"], "baseline": 1}, [1, 2]):
        with pytest.raises(Exception, match="version_check"):
            _release(V2, 2, version_check=bad)
    # a release without one has the canonical form of releases before the field
    assert "version_check" not in json.loads(_release(V2, 2))["signed"]
    # A server that gave devices a check key each signed two releases of v2 that disagree:
    # evidence, which conflicting_releases finds; a fresh expiry or a claim is no conflict.
    from dmt_privacy.release import conflicting_releases

    other = verify_release(_release(V2, 2, version_check={**check, "key": "cd" * 32}), V2,
                           PINNED, now=NOW)
    later = verify_release(_release(V2, 2, version_check=check, held_out_devices=30,
                                    held_out_baseline=1, now=NOW + dt.timedelta(days=1)),
                           V2, PINNED, now=NOW + dt.timedelta(days=1))
    first = verify_release(document, V2, PINNED, now=NOW)
    assert conflicting_releases(first, other) == ["version_check"]
    assert conflicting_releases(first, later) == []
    swapped = verify_release(_release(V1, 2, version_check=check), V1, PINNED, now=NOW)
    assert conflicting_releases(first, swapped) == ["sha256"]  # V1 and V2: one length
    assert conflicting_releases(first, verify_release(_release(V2, 3), V2, PINNED,
                                                      now=NOW)) == []  # another version
    # metadata stays hashable, as it was before the field (helper-36's review)
    named = verify_release(document, V2, PINNED, now=NOW).metadata
    assert len({named, verify_release(document, V2, PINNED, now=NOW).metadata}) == 1
    with pytest.raises(TypeError):  # and what was verified cannot be changed after
        named.version_check["key"] = "cd" * 32


# The two tests below reproduced defects found in review (helper-23), fixed in personalize.py.
def test_a_claim_read_from_an_unverified_file_earns_no_lenient_rule():
    """The channel writes a release whose signed part claims 30 held-out devices, with no
    valid signature. An app that parses it into ReleaseMetadata (or any object with a
    held_out_devices attribute) instead of calling verify_release must not get the
    lenient rule: adoption_rule_for should take only what verify_release returned."""
    from types import SimpleNamespace

    from dmt_model.personalize import adoption_rule_for
    from dmt_privacy.release import ReleaseMetadata

    forged = json.loads(_release(V2, 2))
    forged["signed"]["held_out_devices"] = 30
    forged["signatures"] = []
    for unverified in (ReleaseMetadata(**forged["signed"]),
                       SimpleNamespace(held_out_devices=30)):
        with pytest.raises(Exception, match="verify_release"):
            adoption_rule_for(unverified)


def test_a_release_earns_its_rule_only_for_the_bytes_it_signed(foundation, simulation,
                                                                tmp_path):
    """The device verifies v2's release (it claims held-out devices), then adopt_new_version
    reads the model from a path again: bytes the channel swapped in after verification
    are adopted, under the lenient rule, without any signature. It must refuse them."""
    from dmt_model.coreml import UpdateSettings, export_coreml
    from dmt_model.personalize import adopt_new_version

    v2 = export_coreml(foundation, tmp_path / "v2.mlmodel", updatable=UpdateSettings(),
                       version="2")
    verified = verify_release(_release(v2.read_bytes(), 2, held_out_devices=30,
                                       held_out_baseline=1),
                              v2.read_bytes(), PINNED, installed_version=1, now=NOW)
    swapped = export_coreml(foundation, tmp_path / "swapped.mlmodel",
                            updatable=UpdateSettings(epochs=1), version="2")
    assert swapped.read_bytes() != verified.model
    personal = tmp_path / "personal.mlmodel"
    personal.write_bytes(v2.read_bytes())
    before = personal.read_bytes()
    with pytest.raises(InvalidRelease, match="not the model release v2 signed"):
        adopt_new_version(swapped, personal, simulation.users[0].train, release=verified)
    assert personal.read_bytes() == before  # nothing changed
    adopt_new_version(v2, personal, simulation.users[0].train, release=verified)  # the real one


# Found in review (4 December, helper-42): adopt_new_version read the personal model's
# version but never compared it with the release's, so leaving installed_version out of
# verify_release (its default) let the channel roll a device back.
def test_a_device_never_adopts_a_version_older_than_its_personal_model(foundation, simulation,
                                                                        tmp_path):
    """The personal model comes from v3; the channel serves v2 with its genuine release, and
    the app verifies it without installed_version. adopt_new_version refuses it, naming both
    versions, and the personal model is unchanged; so does the in-memory path."""
    from dmt_model.coreml import UpdateSettings, export_coreml
    from dmt_model.personalize import _load_model as load_model
    from dmt_model.personalize import adopt_new_version, adopted_many, personalized

    v2 = export_coreml(foundation, tmp_path / "v2.mlmodel", updatable=UpdateSettings(),
                       version="2")
    v3 = export_coreml(foundation, tmp_path / "v3.mlmodel", updatable=UpdateSettings(),
                       version="3")
    records = simulation.users[0].train
    personal = tmp_path / "personal.mlmodel"
    personal.write_bytes(v3.read_bytes())
    before = personal.read_bytes()
    genuine = verify_release(_release(v2.read_bytes(), 2), v2.read_bytes(), PINNED, now=NOW)
    with pytest.raises(RollbackRefused, match=r"v2.*older than v3"):
        adopt_new_version(v2, personal, records, release=genuine)
    with pytest.raises(RollbackRefused, match=r"v2.*older than v3"):
        adopt_new_version(v2, personal, records)  # no release: the files' own numbers
    assert personal.read_bytes() == before
    current, _ = personalized(load_model(v3), records)
    with pytest.raises(RollbackRefused, match=r"v2.*older than v3"):
        adopted_many(load_model(v2), [current], [records])


# Found in review (4 December, helper-42): the same check key for every device, but an
# HPKE key each: every report's envelope names the key it was sealed to, so the server
# knew whose report it opened, and conflicting_releases found nothing.
def test_a_server_key_per_device_during_a_check_is_evidence_too():
    """Two releases of v2 that announce the same check but name different server keys are
    a conflict; a key rotated before the check was announced, or between checks, is not."""
    from dmt_privacy.release import conflicting_releases
    from dmt_privacy.seal import generate_server_key

    check = {"key": "ab" * 32, "baseline": 1, "epsilon": 1.0}
    one, two = (generate_server_key().public_key().to_bytes() for _ in range(2))

    def verified(server_key, version_check=check):
        return verify_release(_release(V2, 2, server_key=server_key,
                                       version_check=version_check), V2, PINNED, now=NOW)

    assert conflicting_releases(verified(one), verified(two)) == ["server_key"]
    assert conflicting_releases(verified(one), verified(one)) == []
    assert conflicting_releases(verified(one, None), verified(two)) == []  # rotated, then asked


def test_arguments_of_the_wrong_type_are_named_not_an_invalid_release(tmp_path):
    """A path or text where the bytes belong is the caller's mistake, not a forged release:
    it is named (found in review, helper-42, where each gave InvalidRelease(''))."""
    from dmt_privacy.errors import ValidationError

    document = _release(V2, 2)
    (tmp_path / "v2.mlmodel").write_bytes(V2)
    for args, named in (((document, str(tmp_path / "v2.mlmodel")), "model"),
                        ((tmp_path / "v2.release.json", V2), "document"),
                        ((document.decode(), V2), "document")):
        with pytest.raises(ValidationError, match=f"{named} must be"):
            verify_release(*args, PINNED, now=NOW)
    assert verify_release(document, bytearray(V2), PINNED, now=NOW).model == V2


def test_a_verified_release_comes_from_verify_release_only():
    """adoption_rule_for, check_version and adopt_new_version trust a VerifiedRelease as
    verified: built by hand from unsigned metadata claiming 50 held-out devices, it earned
    the lenient rule (found in review, helper-42). It cannot be built by hand."""
    from dmt_privacy.errors import ValidationError
    from dmt_privacy.release import ReleaseMetadata, VerifiedRelease

    forged = json.loads(_release(V2, 2, held_out_devices=50, held_out_baseline=1))
    with pytest.raises(ValidationError, match="verify_release"):
        VerifiedRelease(metadata=ReleaseMetadata(**forged["signed"]), model=V2, key_id="00" * 8)
    genuine = verify_release(_release(V2, 2), V2, PINNED, now=NOW)
    import dataclasses

    assert dataclasses.replace(genuine, installed_version=1).installed_version == 1


# Found in review (4 December, helper-42): a release stays valid until it expires (30 days by
# default) after a newer one of the same version replaced it, so whoever controls the channel
# could serve a device the older one: a claim the devices' reports withdrew, or the server key
# the server rotated away from (a compromised one reads what the device seals to it).
def test_a_release_signed_before_the_newest_the_device_verified_is_refused():
    from dmt_privacy.errors import ValidationError
    from dmt_privacy.seal import generate_server_key

    old_key, new_key = (generate_server_key().public_key() for _ in range(2))
    first = _release(V2, 2, now=NOW, server_key=old_key.to_bytes(), held_out_devices=9,
                     held_out_baseline=1)
    later = NOW + dt.timedelta(days=2)
    second = _release(V2, 2, now=later, server_key=new_key.to_bytes())
    newest = verify_release(second, V2, PINNED, now=later)
    for seen in (newest, newest.metadata.created_at):
        with pytest.raises(RollbackRefused, match="signed at 2026-11-30T12:00:00.*newest"):
            verify_release(first, V2, PINNED, now=later, newest_seen=seen)
        assert verify_release(second, V2, PINNED, now=later,
                              newest_seen=seen).metadata == newest.metadata
    # A newer release, of this version or the next, verifies; the first one did not know it.
    older = verify_release(first, V2, PINNED, now=NOW)
    assert verify_release(second, V2, PINNED, now=later, newest_seen=older) == newest
    third = _release(V1, 3, now=later + dt.timedelta(hours=1))
    assert verify_release(third, V1, PINNED, now=later + dt.timedelta(hours=1),
                          newest_seen=newest).metadata.version == 3
    # Releases of another name are another sequence.
    other = sign_release(V1, KEY, version=1, schema_id="boston", now=later, name="other")
    with pytest.raises(ValidationError, match="newest_seen.*'other'.*'foundation'"):
        verify_release(first, V2, PINNED, now=later,
                       newest_seen=verify_release(other, V1, PINNED, now=later, name="other"))
    for wrong in ("2026-12-02", dt.datetime(2026, 12, 2), 5):
        with pytest.raises(ValidationError, match="newest_seen"):
            verify_release(second, V2, PINNED, now=later, newest_seen=wrong)
