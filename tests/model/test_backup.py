"""dmt_model.backup: format, known answer, integrity, KDF floor and ceiling, files, CLI."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dmt_model.backup as backup_module
from dmt_model.backup import (
    DEFAULT_KDF_PARAMS,
    Argon2idParams,
    BackupMetadata,
    WeakKDFParameters,
    _backup_bytes_with,
    _insecure_kdf_for_tests,
    backup,
    backup_bytes,
    generate_recovery_key,
    restore,
    restore_bytes,
)
from dmt_model.cli import backup as backup_cli
from dmt_privacy.errors import (
    DMTError,
    InvalidBackup,
    ModelFileError,
    OutputExistsError,
    ValidationError,
)

# Argon2's smallest legal cost: fast enough to try hundreds of altered backups,
# and far below the floor, so usable only inside _insecure_kdf_for_tests.
TINY = Argon2idParams(memory_kib=8, iterations=1, lanes=1)
# The two corners of the floor (OWASP's Argon2id minimums) and of the ceiling.
FLOOR_TWO_PASSES = Argon2idParams(memory_kib=19 * 1024, iterations=2, lanes=1)
FLOOR_ONE_PASS = Argon2idParams(memory_kib=46 * 1024, iterations=1, lanes=1)
CEILING_MEMORY = Argon2idParams(memory_kib=256 * 1024, iterations=4, lanes=8)
CEILING_PASSES = Argon2idParams(memory_kib=(1 << 20) // 10, iterations=10, lanes=8)
HEADER_SIZE = 46
# A passphrase zxcvbn estimates at 10^20 guesses: new backups refuse guessable ones.
PASSPHRASE = "violet anchor mosaic drift"


def _id(params: Argon2idParams) -> str:
    return f"m{params.memory_kib}-t{params.iterations}-p{params.lanes}"


def _tiny_backup(model: bytes = b"model", passphrase: str = PASSPHRASE, **kwargs) -> bytes:
    return _backup_bytes_with(
        model, passphrase, salt=os.urandom(16), nonce=os.urandom(12), kdf_params=TINY, **kwargs
    )


def _stand_in_kdf(secret: bytes, salt: bytes, params: Argon2idParams) -> bytes:
    """A free stand-in for Argon2id, so that any parameters can be tried."""
    return hashlib.sha256(secret + salt + repr(params).encode()).digest()


def _assert_bare_invalid(exc_info: pytest.ExceptionInfo[InvalidBackup]) -> None:
    """The one integrity failure: no message, no cause, no context."""
    exc = exc_info.value
    assert type(exc) is InvalidBackup
    assert exc.args == ()
    assert exc.__cause__ is None
    assert exc.__context__ is None


@pytest.fixture
def fast_kdf() -> Iterator[None]:
    """Tests of everything but the KDF's cost do not pay 64 MiB per derivation.

    Through the one DANGEROUS knob: inside it, new backups use TINY and
    restore opens backups below the floor.
    """
    with _insecure_kdf_for_tests(TINY):
        yield


def _reference_backup(
    model: bytes,
    passphrase: str,
    params: Argon2idParams,
    *,
    salt: bytes | None = None,
    nonce: bytes | None = None,
    created: str = "2025-01-01T00:00:00Z",
) -> bytes:
    """The version-1 format written out from its spec with libargon2 (argon2-cffi)
    and raw AES-GCM, independently of the module: it crafts files the module
    refuses to make (below the floor), valid in every other respect."""
    salt = os.urandom(16) if salt is None else salt
    nonce = os.urandom(12) if nonce is None else nonce
    header = (
        struct.pack(">4sBBIII", b"DMTB", 1, 1, params.memory_kib, params.iterations, params.lanes)
        + salt
        + nonce
    )
    key = hash_secret_raw(
        passphrase.encode(),
        salt,
        time_cost=params.iterations,
        memory_cost=params.memory_kib,
        parallelism=params.lanes,
        hash_len=32,
        type=Type.ID,
    )
    document = json.dumps(
        {
            "created": created,
            "extra": {},
            "model_name": None,
            "model_sha256": hashlib.sha256(model).hexdigest(),
            "model_size": len(model),
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    plaintext = struct.pack(">I", len(document)) + document + model
    return header + AESGCM(key).encrypt(nonce, plaintext, header)


def test_a_weak_backup_that_is_not_a_backup_is_just_invalid() -> None:
    """helper-107: below the floor, WeakKDFParameters ("opens with the passphrase given")
    was raised as soon as the AES-GCM tag verified, before the plaintext was read. AES-GCM
    does not commit to its key, so one crafted file verifies under many passphrases (a
    key multi-collision) without holding a backup under any: its maker learned from the
    error whether the victim's passphrase was one of them. A verified tag over a
    plaintext that is no backup is now the bare InvalidBackup, as at the floor."""
    params = TINY
    salt, nonce = os.urandom(16), os.urandom(12)
    header = struct.pack(">4sBBIII", b"DMTB", 1, 1, params.memory_kib, params.iterations,
                         params.lanes) + salt + nonce
    key = hash_secret_raw(PASSPHRASE.encode(), salt, time_cost=params.iterations,
                          memory_cost=params.memory_kib, parallelism=params.lanes,
                          hash_len=32, type=Type.ID)
    # what a multi-collision's solution looks like to the one key: random blocks
    blob = header + AESGCM(key).encrypt(nonce, os.urandom(48), header)
    with pytest.raises(InvalidBackup) as exc_info:
        restore_bytes(blob, PASSPHRASE)
    assert type(exc_info.value) is InvalidBackup
    # the same passphrase over a real backup below the floor still says why
    with pytest.raises(WeakKDFParameters):
        restore_bytes(_reference_backup(b"model", PASSPHRASE, params), PASSPHRASE)


# --- known-answer vector --------------------------------------------------------

KAT_PASSPHRASE = "correct horse battery staple"
KAT_SALT = bytes(range(16))
KAT_NONCE = bytes(range(0xA0, 0xAC))
KAT_PARAMS = Argon2idParams(memory_kib=64, iterations=2, lanes=2)
KAT_MODEL = b"\x08\x04\x12\x00personal-model-bytes\xff"
KAT_METADATA = {"device": "test", "epochs": 500}
KAT_NAME = "personal.mlmodel"
KAT_CREATED = "2025-01-01T00:00:00Z"
KAT_BLOB = bytes.fromhex(
    "444d54420101000000400000000200000002000102030405060708090a0b0c0d"
    "0e0fa0a1a2a3a4a5a6a7a8a9aaab10d6635a5fc2269c441584b115bae18959f0"
    "7ac3432fa44b9feb0af4ce21909eb0045d3da4957b95b4327edea709c87c316f"
    "242a7f3d12bb6b894e2432459d985810ea1a58218c1b71c54232bd7dc9e4ff41"
    "89c36c90a2de993bbcdfe83302858098ee513e0004fcaf30a2deee38df74f47b"
    "42261a40affab9791c8f9a93db880732d9f2a4af450ae3cee8815e7e308c24fa"
    "619931cf4194ef41c6949338995a2beed769e712d2ea655c0fb0b97cae69157f"
    "0ee27e7d851966ab418fa31c30fcbb090fa0b9e2ced8717accbc2855d4c010a1"
    "9f99f549b8405ddfc1f0547553840cfe1c7ee610d0d9ea957d323351163cdbd2"
    "f116e0df6ef2"
)


def test_known_answer_vector(fast_kdf: None) -> None:
    blob = _backup_bytes_with(
        KAT_MODEL,
        KAT_PASSPHRASE,
        salt=KAT_SALT,
        nonce=KAT_NONCE,
        kdf_params=KAT_PARAMS,
        metadata=KAT_METADATA,
        model_name=KAT_NAME,
        created=KAT_CREATED,
    )
    assert blob.hex() == KAT_BLOB.hex()


def test_known_answer_vector_decrypts_independently() -> None:
    """Re-read the vector from the format spec alone, with libargon2 (argon2-cffi)
    instead of the module's OpenSSL Argon2id, and raw AES-GCM."""
    magic, version, kdf_id, memory, iterations, lanes = struct.unpack(">4sBBIII", KAT_BLOB[:18])
    assert (magic, version, kdf_id) == (b"DMTB", 1, 1)
    assert (memory, iterations, lanes) == (64, 2, 2)
    assert KAT_BLOB[18:34] == KAT_SALT
    assert KAT_BLOB[34:46] == KAT_NONCE
    key = hash_secret_raw(
        KAT_PASSPHRASE.encode(),
        KAT_SALT,
        time_cost=iterations,
        memory_cost=memory,
        parallelism=lanes,
        hash_len=32,
        type=Type.ID,
    )
    plaintext = AESGCM(key).decrypt(KAT_NONCE, KAT_BLOB[46:], KAT_BLOB[:46])
    (length,) = struct.unpack(">I", plaintext[:4])
    document = json.loads(plaintext[4 : 4 + length])
    assert plaintext[4 + length :] == KAT_MODEL
    assert document == {
        "created": KAT_CREATED,
        "extra": KAT_METADATA,
        "model_name": KAT_NAME,
        "model_sha256": hashlib.sha256(KAT_MODEL).hexdigest(),
        "model_size": len(KAT_MODEL),
    }


def test_known_answer_vector_restores(fast_kdf: None) -> None:
    model, info = restore_bytes(KAT_BLOB, KAT_PASSPHRASE)
    assert model == KAT_MODEL
    assert info == BackupMetadata(
        model_name=KAT_NAME,
        model_sha256=hashlib.sha256(KAT_MODEL).hexdigest(),
        model_size=len(KAT_MODEL),
        created=KAT_CREATED,
        extra=KAT_METADATA,
    )


# A second vector at the floor (19 MiB, t=2, p=1): opened by the public recipe
# with no knob, and written out by the reference encoder above.
FLOOR_KAT_BLOB = bytes.fromhex(
    "444d5442010100004c000000000200000001000102030405060708090a0b0c0d"
    "0e0fa0a1a2a3a4a5a6a7a8a9aaab67b994dc76fdb9c507eaa0bc981c7c10f100"
    "82c400926728f1264520f6142ec7b072fa7151fbf452c2f60e9b4e6f74c8eb47"
    "26bd67079eeab0cf53b61c251486c1194a86ec725dce77bea95559c437276e2e"
    "1b52598af783ba97dc460a5a55ca1a9baea43fcc04ee969f26a6edd88fe96c26"
    "6e5772d2f65c0737b7abe7d1b68b88c42b8185b7e67fd1256a083e3288ac01c6"
    "5383be216dfbc82eb14e1fd911aa8ef7010addb85b396b6da44ac196f388e00d"
    "9bb9286cb9d4788eed0813cafb30c0ef11119a5197d2a6dc248d8b77"
)


def test_known_answer_vector_at_the_floor() -> None:
    reference = _reference_backup(
        KAT_MODEL, KAT_PASSPHRASE, FLOOR_TWO_PASSES, salt=KAT_SALT, nonce=KAT_NONCE,
        created=KAT_CREATED,
    )
    assert reference.hex() == FLOOR_KAT_BLOB.hex()
    made = _backup_bytes_with(
        KAT_MODEL, KAT_PASSPHRASE, salt=KAT_SALT, nonce=KAT_NONCE,
        kdf_params=FLOOR_TWO_PASSES, created=KAT_CREATED,
    )
    assert made.hex() == FLOOR_KAT_BLOB.hex()
    model, info = restore_bytes(FLOOR_KAT_BLOB, KAT_PASSPHRASE)
    assert model == KAT_MODEL
    assert (info.created, info.extra, info.model_name) == (KAT_CREATED, {}, None)


# --- round trips ----------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=5)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    model=st.binary(max_size=4096),
    metadata=st.none() | json_objects,
    passphrase=st.text(min_size=1, max_size=20) | st.binary(min_size=1, max_size=20),
    model_name=st.none() | st.text(max_size=20),
)
def test_round_trip_is_bit_exact(
    model: bytes, metadata: dict | None, passphrase: str | bytes, model_name: str | None
) -> None:
    with _insecure_kdf_for_tests(TINY):
        blob = _backup_bytes_with(
            model,
            passphrase,
            salt=os.urandom(16),
            nonce=os.urandom(12),
            kdf_params=TINY,
            metadata=metadata,
            model_name=model_name,
        )
        restored, info = restore_bytes(blob, passphrase)
    assert restored == model
    assert info.extra == (metadata or {})
    assert info.model_name == model_name
    assert info.model_size == len(model)
    assert info.model_sha256 == hashlib.sha256(model).hexdigest()


def test_default_parameters_round_trip_and_wrong_passphrase() -> None:
    """The public recipe, once, at its real cost (64 MiB, t=3, p=4)."""
    model = os.urandom(3000)
    blob = backup_bytes(model, "s3cret passphrase", metadata={"k": [1, 2]}, model_name="m.mlmodel")
    assert blob[:6] == b"DMTB\x01\x01"
    assert struct.unpack(">III", blob[6:18]) == (65536, 3, 4)
    assert DEFAULT_KDF_PARAMS == Argon2idParams(65536, 3, 4)
    restored, info = restore_bytes(blob, "s3cret passphrase")
    assert restored == model
    assert info.extra == {"k": [1, 2]}
    assert info.model_name == "m.mlmodel"
    assert info.created.endswith("Z")
    with pytest.raises(InvalidBackup) as exc_info:
        restore_bytes(blob, "s3cret passphrasE")
    _assert_bare_invalid(exc_info)


def test_fresh_salt_and_nonce_every_time(fast_kdf: None) -> None:
    blobs = {_tiny_backup() for _ in range(5)}
    assert len(blobs) == 5
    assert len({blob[18:34] for blob in blobs}) == 5
    assert len({blob[34:46] for blob in blobs}) == 5


def test_passphrase_is_nfc_normalized(fast_kdf: None) -> None:
    blob = _tiny_backup(passphrase="caf\u00e9")
    assert restore_bytes(blob, "cafe\u0301")[0] == b"model"
    assert restore_bytes(blob, "caf\u00e9".encode())[0] == b"model"


def test_fallback_to_argon2_cffi_gives_the_same_key(
    monkeypatch: pytest.MonkeyPatch, fast_kdf: None
) -> None:
    from cryptography.hazmat.primitives.kdf import argon2 as cryptography_argon2

    class Unsupported:
        def __init__(self, **kwargs: object) -> None:
            raise UnsupportedAlgorithm("no Argon2 in this OpenSSL")

    monkeypatch.setattr(cryptography_argon2, "Argon2id", Unsupported)
    assert restore_bytes(KAT_BLOB, KAT_PASSPHRASE)[0] == KAT_MODEL


# --- integrity: one bare InvalidBackup for everything -------------------------------


def test_wrong_passphrase(fast_kdf: None) -> None:
    blob = _tiny_backup(passphrase="right")
    for wrong in ("wrong", "right ", "Right", b"righ"):
        with pytest.raises(InvalidBackup) as exc_info:
            restore_bytes(blob, wrong)
        _assert_bare_invalid(exc_info)


def test_every_single_byte_flip_is_refused(fast_kdf: None) -> None:
    blob = _tiny_backup(b"\x00model\xff", metadata={"a": 1}, model_name="m.mlmodel")
    assert restore_bytes(blob, PASSPHRASE)[0] == b"\x00model\xff"
    for index in range(len(blob)):
        for mask in (0x01, 0x80, 0xFF):
            altered = bytearray(blob)
            altered[index] ^= mask
            with pytest.raises(InvalidBackup) as exc_info:
                restore_bytes(bytes(altered), PASSPHRASE)
            _assert_bare_invalid(exc_info)


def test_truncation_at_every_length_and_extension_are_refused(fast_kdf: None) -> None:
    blob = _tiny_backup()
    for length in range(len(blob)):
        with pytest.raises(InvalidBackup) as exc_info:
            restore_bytes(blob[:length], PASSPHRASE)
        _assert_bare_invalid(exc_info)
    for suffix in (b"\x00", b"extra bytes"):
        with pytest.raises(InvalidBackup):
            restore_bytes(blob + suffix, PASSPHRASE)


@pytest.mark.parametrize(
    ("memory", "iterations", "lanes"),
    [
        (2 << 20, 1, 1),  # 2 GiB of memory
        (1 << 20, 1, 1),  # 1 GiB: opened before the ceiling came down (5-10 s here)
        ((256 << 10) + 1, 1, 1),  # just above 256 MiB
        (256 << 10, 5, 4),  # 256 MiB is allowed, but not five passes over it
        ((1 << 20) // 10 + 1, 10, 8),  # ten passes just above 1 GiB of work
        (65536, 11, 4),  # too many passes
        (65536, 3, 9),  # too many lanes
        (65536, 0, 4),  # no pass
        (65536, 3, 0),  # no lane
        (31, 3, 4),  # below Argon2's 8 KiB per lane
        (0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF),
    ],
)
def test_kdf_parameters_above_the_ceiling_are_refused_before_deriving(
    monkeypatch: pytest.MonkeyPatch, fast_kdf: None, memory: int, iterations: int, lanes: int
) -> None:
    def must_not_derive(*args: object) -> bytes:
        raise AssertionError("a key was derived from parameters above the ceiling")

    blob = _tiny_backup()
    crafted = blob[:6] + struct.pack(">III", memory, iterations, lanes) + blob[18:]
    monkeypatch.setattr(backup_module, "_derive_key", must_not_derive)
    start = time.perf_counter()
    with pytest.raises(InvalidBackup) as exc_info:
        restore_bytes(crafted, PASSPHRASE)
    assert time.perf_counter() - start < 0.5
    _assert_bare_invalid(exc_info)
    with pytest.raises(ValidationError, match="outside what restore accepts"):
        _backup_bytes_with(
            b"m", PASSPHRASE, salt=bytes(16), nonce=bytes(12),
            kdf_params=Argon2idParams(memory, iterations, lanes),
        )


@pytest.mark.parametrize(
    "params", [CEILING_MEMORY, CEILING_PASSES, DEFAULT_KDF_PARAMS], ids=_id
)
def test_the_ceiling_itself_is_accepted(
    monkeypatch: pytest.MonkeyPatch, params: Argon2idParams
) -> None:
    """The whole path at the ceiling's corners, with a stand-in for Argon2id
    (the real restore there takes about 1.3 s; see the README)."""
    seen: list[Argon2idParams] = []

    def stand_in(secret: bytes, salt: bytes, kdf_params: Argon2idParams) -> bytes:
        seen.append(kdf_params)
        return _stand_in_kdf(secret, salt, kdf_params)

    monkeypatch.setattr(backup_module, "_derive_key", stand_in)
    blob = _backup_bytes_with(b"model", PASSPHRASE, salt=bytes(16), nonce=bytes(12),
                              kdf_params=params)
    assert restore_bytes(blob, PASSPHRASE)[0] == b"model"
    assert seen == [params, params]
    assert params.within_ceiling() and params.meets_floor() and params.is_acceptable()


# --- the KDF floor: authentic but weak backups are refused, and never made ------------

BELOW_THE_FLOOR = [
    TINY,  # Argon2's legal minimum: 24,576 times cheaper to guess than the default
    Argon2idParams(memory_kib=1024, iterations=10, lanes=1),  # passes do not buy memory
    Argon2idParams(memory_kib=19 * 1024 - 1, iterations=2, lanes=1),
    Argon2idParams(memory_kib=19 * 1024, iterations=1, lanes=1),  # one pass needs 46 MiB
    Argon2idParams(memory_kib=46 * 1024 - 1, iterations=1, lanes=4),
]


def _assert_says_below_the_floor(exc: BaseException, params: Argon2idParams) -> None:
    assert type(exc) is WeakKDFParameters
    assert isinstance(exc, DMTError) and isinstance(exc, ValueError)
    assert not isinstance(exc, InvalidBackup)
    message = str(exc)
    assert f"memory {params.memory_kib} KiB, t={params.iterations}, p={params.lanes}" in message
    assert "below the floor" in message
    assert "19 MiB" in message and "46 MiB" in message


@pytest.mark.parametrize("params", BELOW_THE_FLOOR, ids=_id)
def test_an_authentic_backup_below_the_floor_is_refused_with_a_clear_error(
    params: Argon2idParams,
) -> None:
    """Issue 15.7: a header rewritten to a weak KDF and re-encrypted under it, so
    valid in every other respect, opened before the floor existed."""
    blob = _reference_backup(b"SECRET-MODEL-BYTES", PASSPHRASE, params)
    with pytest.raises(WeakKDFParameters) as exc_info:
        restore_bytes(blob, PASSPHRASE)
    _assert_says_below_the_floor(exc_info.value, params)
    message = str(exc_info.value)
    assert "new backup" in message and "nothing was restored" in message
    assert exc_info.value.__cause__ is None and exc_info.value.__context__ is None
    assert "SECRET" not in message and PASSPHRASE not in message.split()


@pytest.mark.parametrize("params", [FLOOR_TWO_PASSES, FLOOR_ONE_PASS], ids=_id)
def test_a_backup_at_the_floor_opens(params: Argon2idParams) -> None:
    assert params.meets_floor() and params.is_acceptable()
    assert restore_bytes(_reference_backup(b"model", PASSPHRASE, params), PASSPHRASE)[0] == b"model"


def test_below_the_floor_a_wrong_passphrase_or_an_altered_byte_is_still_opaque() -> None:
    """Weakness is reported only for an authentic backup, so it is no oracle on
    tampering; and a header lowered without re-encrypting is tampering."""
    weak = _reference_backup(b"model", PASSPHRASE, TINY)
    altered = bytearray(weak)
    altered[-1] ^= 1
    floor = _reference_backup(b"model", PASSPHRASE, FLOOR_TWO_PASSES)
    lowered = floor[:6] + struct.pack(">III", 8, 1, 1) + floor[18:]
    for blob, passphrase in [
        (weak, "wrong"),
        (bytes(altered), PASSPHRASE),
        (weak[:18] + bytes(16) + weak[34:], PASSPHRASE),  # another salt
        (lowered, PASSPHRASE),
    ]:
        with pytest.raises(InvalidBackup) as exc_info:
            restore_bytes(blob, passphrase)
        _assert_bare_invalid(exc_info)


def test_restoring_a_weak_backup_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "weak.dmtbackup").write_bytes(_reference_backup(b"model", PASSPHRASE, TINY))
    target = tmp_path / "existing.mlmodel"
    target.write_bytes(b"do not touch")
    before = _listing(tmp_path)
    for destination in (target, tmp_path / "new.mlmodel"):
        with pytest.raises(WeakKDFParameters):
            restore(tmp_path / "weak.dmtbackup", destination, PASSPHRASE, overwrite=True)
    assert target.read_bytes() == b"do not touch"
    assert _listing(tmp_path) == before


def test_cli_restore_of_a_weak_backup_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from dmt_model import cli

    monkeypatch.setattr(cli, "COMMAND_MODULES", ("backup",))
    monkeypatch.setenv("DMT_TEST_BACKUP_PASSPHRASE", PASSPHRASE)
    (tmp_path / "weak").write_bytes(_reference_backup(b"model", PASSPHRASE, TINY))
    env = ["--passphrase-env", "DMT_TEST_BACKUP_PASSPHRASE"]
    assert cli.main(["restore", str(tmp_path / "weak"), "-o", str(tmp_path / "r"), *env]) == 1
    err = capsys.readouterr().err
    assert "below the floor" in err and "memory 8 KiB, t=1, p=1" in err
    assert backup_cli.INVALID_BACKUP_MESSAGE not in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("params", BELOW_THE_FLOOR, ids=_id)
def test_no_backup_is_made_below_the_floor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, params: Argon2idParams
) -> None:
    with pytest.raises(WeakKDFParameters) as exc_info:
        _backup_bytes_with(b"model", PASSPHRASE, salt=bytes(16), nonce=bytes(12), kdf_params=params)
    _assert_says_below_the_floor(exc_info.value, params)
    assert "DEFAULT_KDF_PARAMS" in str(exc_info.value)
    # Lowering the defaults by hand, without the DANGEROUS knob, is refused too.
    monkeypatch.setattr(backup_module, "DEFAULT_KDF_PARAMS", params)
    with pytest.raises(WeakKDFParameters):
        backup_bytes(b"model", PASSPHRASE)
    (tmp_path / "m.mlmodel").write_bytes(b"model")
    with pytest.raises(WeakKDFParameters):
        backup(tmp_path / "m.mlmodel", tmp_path / "b", PASSPHRASE)
    assert _listing(tmp_path) == ["m.mlmodel"]


def test_the_insecure_knob_is_scoped_and_keeps_the_ceiling() -> None:
    with _insecure_kdf_for_tests(TINY):
        blob = backup_bytes(b"model", PASSPHRASE)
        assert struct.unpack(">III", blob[6:18]) == (8, 1, 1)
        assert restore_bytes(blob, PASSPHRASE)[0] == b"model"
    with pytest.raises(WeakKDFParameters):
        restore_bytes(blob, PASSPHRASE)
    for too_dear in (Argon2idParams(1 << 20, 1, 1), Argon2idParams(65536, 3, 9)):
        with pytest.raises(ValidationError, match="ceiling"):
            with _insecure_kdf_for_tests(too_dear):
                pass  # pragma: no cover


def _near(*edges: int) -> st.SearchStrategy[int]:
    return st.sampled_from([edge + step for edge in edges for step in (-1, 0, 1)])


@settings(max_examples=300, deadline=None)
@given(
    memory=_near(8, 19 * 1024, 46 * 1024, 256 * 1024, 104857) | st.integers(0, 2**32 - 1),
    iterations=st.integers(0, 3) | st.integers(0, 12) | st.integers(0, 2**32 - 1),
    lanes=st.integers(0, 9) | st.integers(0, 2**32 - 1),
)
def test_any_header_derives_only_within_the_ceiling_and_opens_only_at_the_floor(
    memory: int, iterations: int, lanes: int
) -> None:
    """The rules written out plainly, against what restore does with any header."""
    within_ceiling = (
        1 <= lanes <= 8
        and 1 <= iterations <= 10
        and 8 * lanes <= memory <= 256 * 1024
        and memory * iterations <= 1024 * 1024
    )
    at_the_floor = memory >= 19 * 1024 and (iterations >= 2 or memory >= 46 * 1024)
    params = Argon2idParams(memory, iterations, lanes)
    derived: list[Argon2idParams] = []

    def counting_stand_in(secret: bytes, salt: bytes, kdf_params: Argon2idParams) -> bytes:
        derived.append(kdf_params)
        return _stand_in_kdf(secret, salt, kdf_params)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(backup_module, "_derive_key", counting_stand_in)
        if within_ceiling:
            with _insecure_kdf_for_tests(params):
                blob = backup_bytes(b"model", PASSPHRASE)
        else:
            with _insecure_kdf_for_tests(TINY):
                blob = backup_bytes(b"model", PASSPHRASE)
            blob = blob[:6] + struct.pack(">III", memory, iterations, lanes) + blob[18:]
        derived.clear()
        outcome: object
        try:
            outcome = restore_bytes(blob, PASSPHRASE)[0]
        except WeakKDFParameters:
            outcome = WeakKDFParameters
        except InvalidBackup:
            outcome = InvalidBackup
    if not within_ceiling:
        assert (outcome, derived) == (InvalidBackup, [])
    else:
        assert derived == [params]
        assert outcome == (b"model" if at_the_floor else WeakKDFParameters)
    assert params.within_ceiling() == within_ceiling
    assert params.meets_floor() == at_the_floor


def test_floor_and_ceiling_boundaries() -> None:
    mib = 1024
    assert Argon2idParams(19 * mib, 2, 1).meets_floor()
    assert Argon2idParams(19 * mib, 10, 8).meets_floor()
    assert not Argon2idParams(19 * mib - 1, 10, 1).meets_floor()
    assert not Argon2idParams(46 * mib - 1, 1, 1).meets_floor()
    assert Argon2idParams(46 * mib, 1, 1).meets_floor()
    assert Argon2idParams(256 * mib, 4, 8).within_ceiling()
    assert not Argon2idParams(256 * mib, 4, 9).within_ceiling()
    assert not Argon2idParams(256 * mib + 1, 1, 1).within_ceiling()
    assert Argon2idParams(64 * mib, 10, 4).within_ceiling()
    assert not Argon2idParams(64 * mib, 11, 4).within_ceiling()
    assert not Argon2idParams(128 * mib, 9, 4).within_ceiling()  # 1.125 GiB of passes
    assert DEFAULT_KDF_PARAMS.is_acceptable()
    assert not TINY.is_acceptable()


@pytest.mark.parametrize(
    "header",
    [b"DMTC\x01\x01", b"DMTB\x02\x01", b"DMTB\x00\x01", b"DMTB\x01\x02", b"PK\x03\x04\x01\x01"],
)
def test_wrong_magic_version_or_kdf_is_refused(header: bytes, fast_kdf: None) -> None:
    blob = _tiny_backup()
    with pytest.raises(InvalidBackup) as exc_info:
        restore_bytes(header + blob[6:], PASSPHRASE)
    _assert_bare_invalid(exc_info)


# --- caller mistakes: clear ValidationErrors ------------------------------------------


@pytest.mark.parametrize("passphrase", ["", b""])
def test_empty_passphrase_is_a_validation_error(passphrase: str | bytes, fast_kdf: None) -> None:
    with pytest.raises(ValidationError, match="empty"):
        backup_bytes(b"model", passphrase)
    with pytest.raises(ValidationError, match="empty"):
        restore_bytes(_tiny_backup(), passphrase)


@pytest.mark.parametrize(
    "metadata",
    [
        {"t": (1, 2)},
        {"b": b"bytes"},
        {1: "int key"},
        {"nan": float("nan")},
        {"obj": object()},
        ["not", "a", "dict"],
    ],
)
def test_metadata_must_be_a_json_object(metadata: object, fast_kdf: None) -> None:
    with pytest.raises(ValidationError, match="metadata"):
        _tiny_backup(metadata=metadata)


def test_wrong_types_are_validation_errors(fast_kdf: None) -> None:
    with pytest.raises(ValidationError, match="model_bytes"):
        _tiny_backup(model="a str")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="blob"):
        restore_bytes("not bytes", PASSPHRASE)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="salt"):
        _backup_bytes_with(b"m", PASSPHRASE, salt=b"short", nonce=bytes(12), kdf_params=TINY)


# A backup can sit anywhere, so its passphrase is attacked offline. Until 6 December any
# non-empty one was taken: at the default Argon2id cost a guess takes about 80 ms on one core
# of the project's machine, so a 4-digit PIN fell in about 13 minutes (helper-92).
@pytest.mark.parametrize("weak", ["1234", "pw", "password1", "hunter2hunter2",
                                  "correct horse", "personal.mlmodel", b"0000"])
def test_a_guessable_passphrase_is_refused_before_anything_is_written(
        weak: str | bytes, tmp_path: Path, fast_kdf: None) -> None:
    with pytest.raises(ValidationError, match="easy to guess") as exc_info:
        backup_bytes(b"model", weak)
    message = str(exc_info.value)
    assert "10^10" in message and "generate_recovery_key" in message
    assert "10^0" not in message and "10^1." not in message  # no estimate of this one
    assert (weak if isinstance(weak, str) else weak.decode()) not in message
    model = tmp_path / "personal.mlmodel"
    model.write_bytes(b"model")
    with pytest.raises(ValidationError, match="easy to guess"):
        backup(model, tmp_path / "b", weak)
    assert _listing(tmp_path) == ["personal.mlmodel"]


def test_a_long_passphrase_is_judged_on_its_first_characters(fast_kdf: None) -> None:
    """helper-95: zxcvbn 4.5 raises a bare ValueError on more than 72 characters, so every
    passphrase of 73 or more failed to make a backup (a traceback from `dmt backup`)."""
    for strong in (PASSPHRASE * 3, PASSPHRASE + "x" * 1_000_000):
        assert restore_bytes(backup_bytes(b"model", strong), strong)[0] == b"model"
    with pytest.raises(ValidationError, match="easy to guess"):
        backup_bytes(b"model", "a" * 200)


def test_without_zxcvbn_a_new_backup_says_what_to_install(
        monkeypatch: pytest.MonkeyPatch, fast_kdf: None) -> None:
    import sys

    from dmt_model.cli import EXTRA_OF_MODULE
    from dmt_privacy.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "zxcvbn", None)  # import zxcvbn raises ImportError
    with pytest.raises(MissingDependencyError, match=r"dmt-sdk\[model\]"):
        backup_bytes(b"model", PASSPHRASE)
    assert EXTRA_OF_MODULE["zxcvbn"] == "model"
    assert restore_bytes(_tiny_backup(), PASSPHRASE)[0] == b"model"  # restoring needs none


def test_a_backup_made_before_the_check_still_restores(fast_kdf: None) -> None:
    """Restoring asks nothing of the passphrase: an old backup under "pw" opens."""
    assert restore_bytes(_tiny_backup(b"old", passphrase="pw"), "pw")[0] == b"old"


def test_a_generated_recovery_key_is_accepted_and_fresh(fast_kdf: None) -> None:
    keys = {generate_recovery_key() for _ in range(50)}
    assert len(keys) == 50
    key = keys.pop()
    assert re.fullmatch(r"[0-9A-HJKMNP-TV-Z]{5}(-[0-9A-HJKMNP-TV-Z]{5}){4}", key), key
    assert restore_bytes(backup_bytes(b"model", key), key)[0] == b"model"


# --- files ------------------------------------------------------------------------


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_file_round_trip(tmp_path: Path, fast_kdf: None) -> None:
    model = tmp_path / "personal.mlmodel"
    model.write_bytes(os.urandom(10_000))
    info = backup(model, tmp_path / "p.dmtbackup", PASSPHRASE, metadata={"version": 3})
    assert info.model_name == "personal.mlmodel"
    assert (tmp_path / "p.dmtbackup").stat().st_mode & 0o777 == 0o600
    restored = tmp_path / "out" / "restored.mlmodel"
    restored.parent.mkdir()
    back = restore(tmp_path / "p.dmtbackup", restored, PASSPHRASE)
    assert restored.read_bytes() == model.read_bytes()
    assert back == info
    assert _listing(restored.parent) == ["restored.mlmodel"]
    assert _listing(tmp_path) == ["out", "p.dmtbackup", "personal.mlmodel"]


def test_restore_never_overwrites_without_permission(tmp_path: Path, fast_kdf: None) -> None:
    model = tmp_path / "m.mlmodel"
    model.write_bytes(b"the model")
    backup(model, tmp_path / "b", PASSPHRASE)
    target = tmp_path / "existing.mlmodel"
    target.write_bytes(b"do not touch")
    with pytest.raises(OutputExistsError, match="already exists"):
        restore(tmp_path / "b", target, PASSPHRASE)
    assert target.read_bytes() == b"do not touch"
    with pytest.raises(OutputExistsError, match="already exists"):
        backup(model, tmp_path / "b", PASSPHRASE)
    restore(tmp_path / "b", target, PASSPHRASE, overwrite=True)
    assert target.read_bytes() == b"the model"
    assert _listing(tmp_path) == ["b", "existing.mlmodel", "m.mlmodel"]


def test_failed_restore_leaves_everything_as_it_was(tmp_path: Path, fast_kdf: None) -> None:
    model = tmp_path / "m.mlmodel"
    model.write_bytes(b"the model")
    backup(model, tmp_path / "b", PASSPHRASE)
    target = tmp_path / "existing.mlmodel"
    target.write_bytes(b"do not touch")
    blob = (tmp_path / "b").read_bytes()
    (tmp_path / "altered").write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))
    before = _listing(tmp_path)
    for source, passphrase, destination in [
        ("b", "wrong", "existing.mlmodel"),
        ("altered", PASSPHRASE, "existing.mlmodel"),
        ("b", "wrong", "new.mlmodel"),
        ("altered", PASSPHRASE, "new.mlmodel"),
    ]:
        with pytest.raises(InvalidBackup):
            restore(tmp_path / source, tmp_path / destination, passphrase, overwrite=True)
        assert target.read_bytes() == b"do not touch"
        assert _listing(tmp_path) == before


def test_write_failure_removes_the_temporary_file(
    tmp_path: Path, fast_kdf: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "m.mlmodel"
    model.write_bytes(b"the model")
    backup(model, tmp_path / "b", PASSPHRASE)
    target = tmp_path / "existing.mlmodel"
    target.write_bytes(b"do not touch")
    before = _listing(tmp_path)

    def failing_replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(backup_module.os, "replace", failing_replace)
    with pytest.raises(ModelFileError, match="nothing was replaced"):
        restore(tmp_path / "b", target, PASSPHRASE, overwrite=True)
    assert target.read_bytes() == b"do not touch"
    assert _listing(tmp_path) == before


def test_missing_files_are_model_file_errors(tmp_path: Path, fast_kdf: None) -> None:
    with pytest.raises(ModelFileError, match="does not exist"):
        backup(tmp_path / "absent.mlmodel", tmp_path / "b", PASSPHRASE)
    with pytest.raises(ModelFileError, match="does not exist"):
        restore(tmp_path / "absent.dmtbackup", tmp_path / "m.mlmodel", PASSPHRASE)
    (tmp_path / "empty.mlmodel").write_bytes(b"")
    with pytest.raises(ModelFileError, match="empty"):
        backup(tmp_path / "empty.mlmodel", tmp_path / "b", PASSPHRASE)
    (tmp_path / "m.mlmodel").write_bytes(b"m")
    with pytest.raises(ModelFileError, match="directory"):
        backup(tmp_path / "m.mlmodel", tmp_path / "no" / "such" / "b", PASSPHRASE)
    assert _listing(tmp_path) == ["empty.mlmodel", "m.mlmodel"]


# --- CLI ------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dmt")
    backup_cli.register(parser.add_subparsers(dest="command"))
    return parser


def test_cli_round_trip_with_passphrase_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Through ``register`` on a fresh parser, at the default KDF cost."""
    monkeypatch.setenv("DMT_TEST_BACKUP_PASSPHRASE", PASSPHRASE)
    model = tmp_path / "personal.mlmodel"
    model.write_bytes(os.urandom(5000))
    out = tmp_path / "p.dmtbackup"
    args = _parser().parse_args(
        ["backup", str(model), "-o", str(out), "--passphrase-env", "DMT_TEST_BACKUP_PASSPHRASE"]
    )
    assert args.func(args) == 0
    assert PASSPHRASE not in capsys.readouterr().out
    assert struct.unpack(">III", out.read_bytes()[6:18]) == (65536, 3, 4)

    restored = tmp_path / "restored.mlmodel"
    args = _parser().parse_args(
        ["restore", str(out), "-o", str(restored), "--passphrase-env", "DMT_TEST_BACKUP_PASSPHRASE"]
    )
    assert args.func(args) == 0
    assert restored.read_bytes() == model.read_bytes()
    assert "personal.mlmodel" in capsys.readouterr().out

    # An existing destination needs --force.
    with pytest.raises(ModelFileError, match="--force"):
        args.func(args)
    args = _parser().parse_args(
        ["restore", str(out), "-o", str(restored), "--passphrase-env",
         "DMT_TEST_BACKUP_PASSPHRASE", "--force"]
    )
    assert args.func(args) == 0


def test_cli_wrong_passphrase_prints_one_fixed_message(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fast_kdf: None,
) -> None:
    model = tmp_path / "m.mlmodel"
    model.write_bytes(b"model")
    backup(model, tmp_path / "b", PASSPHRASE)
    monkeypatch.setenv("DMT_TEST_BACKUP_PASSPHRASE", "wrong")
    args = _parser().parse_args(
        ["restore", str(tmp_path / "b"), "-o", str(tmp_path / "r.mlmodel"),
         "--passphrase-env", "DMT_TEST_BACKUP_PASSPHRASE"]
    )
    assert args.func(args) == 1
    assert backup_cli.INVALID_BACKUP_MESSAGE in capsys.readouterr().err
    assert not (tmp_path / "r.mlmodel").exists()


def test_cli_prompts_twice_on_backup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fast_kdf: None
) -> None:
    model = tmp_path / "m.mlmodel"
    model.write_bytes(b"model")
    answers = iter(["first", "second"])
    monkeypatch.setattr(backup_cli.getpass, "getpass", lambda prompt="": next(answers))
    args = _parser().parse_args(["backup", str(model), "-o", str(tmp_path / "b")])
    with pytest.raises(ValidationError, match="differ"):
        args.func(args)
    assert not (tmp_path / "b").exists()

    answers = iter([PASSPHRASE, PASSPHRASE])
    assert args.func(args) == 0
    monkeypatch.setattr(backup_cli.getpass, "getpass", lambda prompt="": PASSPHRASE)
    args = _parser().parse_args(["restore", str(tmp_path / "b"), "-o", str(tmp_path / "r")])
    assert args.func(args) == 0
    assert (tmp_path / "r").read_bytes() == b"model"


def test_cli_missing_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DMT_TEST_UNSET_VARIABLE", raising=False)
    model = tmp_path / "m.mlmodel"
    model.write_bytes(b"model")
    args = _parser().parse_args(
        ["backup", str(model), "-o", str(tmp_path / "b"), "--passphrase-env",
         "DMT_TEST_UNSET_VARIABLE"]
    )
    with pytest.raises(ValidationError, match="DMT_TEST_UNSET_VARIABLE"):
        args.func(args)
    args = _parser().parse_args(
        ["backup", str(model), "-o", str(tmp_path / "b"), "--passphrase-env", "hunter2 is my pw"]
    )
    with pytest.raises(ValidationError, match="NAME") as exc_info:
        args.func(args)
    assert "hunter2" not in str(exc_info.value)
    assert not (tmp_path / "b").exists()


def test_cli_has_no_plain_passphrase_option_and_says_why(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = _parser()
    for command in ("backup", "restore"):
        with pytest.raises(SystemExit):
            parser.parse_args([command, "x", "-o", "y", "--passphrase", "hunter2"])
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])
        help_text = " ".join(capsys.readouterr().out.split())
        assert "--passphrase-env" in help_text
        assert "shell history" in help_text


def test_cli_through_main(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    fast_kdf: None,
) -> None:
    """The dispatcher's contract, with "backup" added to COMMAND_MODULES."""
    from dmt_model import cli

    monkeypatch.setattr(cli, "COMMAND_MODULES", ("backup",))
    monkeypatch.setenv("DMT_TEST_BACKUP_PASSPHRASE", PASSPHRASE)
    model = tmp_path / "m.mlmodel"
    model.write_bytes(b"model")
    env = ["--passphrase-env", "DMT_TEST_BACKUP_PASSPHRASE"]
    assert cli.main(["backup", str(model), "-o", str(tmp_path / "b"), *env]) == 0
    assert cli.main(["backup", str(model), "-o", str(tmp_path / "b"), *env]) == 1
    assert "already exists" in capsys.readouterr().err
    assert cli.main(["restore", str(tmp_path / "b"), "-o", str(tmp_path / "r"), *env]) == 0
    assert (tmp_path / "r").read_bytes() == b"model"
    with pytest.raises(SystemExit):  # no prefix matching through the dispatcher either
        cli.main(["restore", str(tmp_path / "b"), "-o", str(tmp_path / "s"), "--passphrase", "x"])
    assert not (tmp_path / "s").exists()
