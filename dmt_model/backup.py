"""Encrypted backup and restore of a personal model with a user's passphrase.

A recipe in the sense of pyca/cryptography's Fernet: :func:`backup_bytes` and
:func:`restore_bytes` (and the file-level :func:`backup` and :func:`restore`)
ask for no cryptographic decisions. The reference app's backups were
unencrypted zips behind one static API key; here a device encrypts its
personal ``.mlmodel`` under a key derived from the user's passphrase, so the
backup can sit on any storage without revealing the model.

Format, version 1 (all integers big-endian)::

    offset size  field
     0      4    magic b"DMTB"
     4      1    format version = 1
     5      1    KDF id = 1 (Argon2id, Argon2 version 1.3)
     6      4    Argon2id memory, KiB
    10      4    Argon2id iterations (t)
    14      4    Argon2id lanes (p)
    18     16    salt (os.urandom)
    34     12    AES-GCM nonce (os.urandom)
    46      …    AES-256-GCM ciphertext + 16-byte tag

The key is Argon2id(passphrase, salt, t, memory, p) -> 32 bytes. The whole
46-byte header is the AEAD associated data, so no header byte (KDF
parameters included) can be altered unnoticed. The plaintext is::

    u32 length of the metadata JSON | metadata JSON (UTF-8) | model bytes

and the metadata JSON is a compact, key-sorted object holding ``created``
(UTC, ISO 8601, seconds), ``extra`` (the caller's JSON object), ``model_name``
(a file name, or null), ``model_sha256`` and ``model_size``.

Defaults: Argon2id with 64 MiB, t=3, p=4 -- RFC 9106's recommended option
when memory is constrained (its first option takes 2 GiB, more than an iOS
app may hold). It costs about a third of a second per derivation on the
project's 2-core machine and forces every passphrase guess to pay the same
64 MiB. A passphrase given as ``str`` is normalized to Unicode NFC and encoded
as UTF-8, so the same passphrase typed on different keyboards opens the backup;
``bytes`` are used as they are.

Every backup this module makes or opens has its KDF parameters between a
floor and a ceiling (:meth:`Argon2idParams.meets_floor`,
:meth:`Argon2idParams.within_ceiling`):

- **Floor**: memory >= 19 MiB with t >= 2, or memory >= 46 MiB with t = 1 --
  the minimums of OWASP's Password Storage Cheat Sheet for Argon2id (its
  lower-memory variants, 12 MiB with t=3 down to 7 MiB with t=5, are not
  accepted: memory is what makes guessing dear on GPUs and ASICs). At the
  floor a guess costs about 1/5 (19 MiB, t=2: 38 MiB of passes) to 1/4
  (46 MiB, t=1) of one at the default (192 MiB of passes); at Argon2's legal
  minimum (8 KiB, t=1) it costs 24,576 times less. Making a backup below the
  floor raises :class:`WeakKDFParameters`. On restore a header below the
  floor is first authenticated (cheap, by definition of the floor); a wrong
  passphrase or an altered byte still raises the bare :class:`InvalidBackup`,
  and an authentic backup raises :class:`WeakKDFParameters`, which names the
  parameters and what to do, and the model is not returned. The error
  therefore tells the holder of the right passphrase that it is right, which
  the file's weak KDF already lets anyone with a copy learn offline. Authentic
  means a backup: its plaintext parses and its model's SHA-256 matches. A
  verified tag alone is not enough, because AES-GCM does not commit to its key:
  one crafted file verifies under many chosen passphrases, and telling its
  tag apart from a wrong one told the file's maker whether the victim's
  passphrase was among them (helper-107).
- **Ceiling**: memory <= 256 MiB, t <= 10, p <= 8, and memory x t <= 1 GiB
  of passes (5.3 times the default's work, room for a stronger default). A
  phone can hold 256 MiB in a foreground app, and a restore at the ceiling
  (256 MiB, t=4, p=8) takes about 1.3 s and 285 MiB on the project's
  machine (the old ceiling, 1 GiB and 4 GiB of passes, took 5-10 s per
  crafted attempt). A header above the ceiling is refused before any key is
  derived, with the bare :class:`InvalidBackup`.

The format stays version 1: every backup :func:`backup` has ever made (64
MiB, t=3, p=4) is between the floor and the ceiling and opens as before; only
files made with other parameters, which only the test-only helpers could
make, are refused. Tests that need cheap key derivation wrap their calls in
:func:`_insecure_kdf_for_tests` (DANGEROUS, below).

A new backup's passphrase must be hard to guess offline: zxcvbn (Dropbox's estimator)
must put it at 10^10 guesses or more, its score 4, "strong protection from an offline
slow-hash scenario" (:data:`MIN_GUESSES_LOG10`; its first 72 characters are judged, what
zxcvbn takes, and more characters only add guesses). At the default cost one guess took
0.12 s of one core of the project's machine (0.117-0.143 s, 8 derivations pinned to one
core, 6 December), so 10^10 guesses are some 38 core-years on such a CPU; faster hardware
was not measured. Any non-empty passphrase was taken until 6 December, and a 4-digit PIN
fell in about 13 minutes on the machine's two cores. A guessable one raises
:class:`~dmt_privacy.errors.ValidationError` with zxcvbn's advice and never the passphrase
or its estimate; :func:`generate_recovery_key` makes one that passes (125 bits). Restoring
asks nothing of the passphrase, so older backups open.

Any failure to open a backup -- a wrong passphrase, any altered, missing or
extra byte, a wrong magic, an unknown version or KDF, KDF parameters that are
malformed or above the ceiling -- raises one
:class:`~dmt_privacy.errors.InvalidBackup` carrying no message, no cause and
no context, so that it cannot become an oracle. Mistakes of the caller (an
empty passphrase, metadata that is not JSON) raise
:class:`~dmt_privacy.errors.ValidationError`; missing files raise
:class:`~dmt_privacy.errors.ModelFileError`, existing ones (without
``overwrite=True``) :class:`~dmt_privacy.errors.OutputExistsError`.

Restoring writes atomically: the model is decrypted and checked in memory,
written to a temporary file in the destination's directory, fsynced, and
moved into place; a failure leaves neither a partial file nor a changed
destination.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
import unicodedata
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from dmt_privacy.errors import (
    DMTError,
    InvalidBackup,
    MissingDependencyError,
    ModelFileError,
    OutputExistsError,
    ValidationError,
)
from dmt_privacy.files import write_atomically

__all__ = [
    "DEFAULT_KDF_PARAMS",
    "MIN_GUESSES_LOG10",
    "Argon2idParams",
    "BackupMetadata",
    "WeakKDFParameters",
    "backup",
    "backup_bytes",
    "generate_recovery_key",
    "restore",
    "restore_bytes",
]

MAGIC = b"DMTB"
FORMAT_VERSION = 1
KDF_ARGON2ID = 1

SALT_SIZE = 16
NONCE_SIZE = 12
KEY_SIZE = 32
TAG_SIZE = 16

#: The fewest guesses, as a power of ten, zxcvbn must estimate a new backup's passphrase
#: takes (its score 4; module docstring).
MIN_GUESSES_LOG10 = 10.0
#: How many characters of a passphrase zxcvbn judges: 4.5 refuses longer input.
_JUDGED_CHARACTERS = 72
#: zxcvbn keeps the words of ``user_inputs`` in a module-level dictionary while it runs.
_ZXCVBN = threading.Lock()
#: Crockford's base32: no I, L, O or U, so a key read aloud or typed is not misread.
_RECOVERY_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

_FIXED = struct.Struct(">4sBBIII")  # magic, version, KDF id, memory KiB, iterations, lanes
HEADER_SIZE = _FIXED.size + SALT_SIZE + NONCE_SIZE  # 46
_METADATA_LENGTH = struct.Struct(">I")

# The floor (OWASP's Argon2id minimums; see the module docstring).
MIN_MEMORY_KIB = 19 * 1024  # 19 MiB, with at least MIN_ITERATIONS passes
MIN_ITERATIONS = 2
MIN_MEMORY_KIB_ONE_PASS = 46 * 1024  # 46 MiB, with a single pass
# The ceiling: checked on every header before any key is derived from it.
MAX_MEMORY_KIB = 256 * 1024  # 256 MiB
MAX_ITERATIONS = 10
MAX_LANES = 8
MAX_WORK_KIB = 1 << 20  # memory x iterations: 1 GiB of passes, 5.3x the default
# cryptography's AESGCM takes at most 2**31 - 1 bytes of data.
MAX_PLAINTEXT_SIZE = (1 << 31) - 1
MAX_BACKUP_SIZE = HEADER_SIZE + MAX_PLAINTEXT_SIZE + TAG_SIZE


@dataclass(frozen=True)
class Argon2idParams:
    """Argon2id cost parameters as stored in a backup header.

    ``memory_kib`` is the memory in KiB (Argon2's m), ``iterations`` the
    number of passes (t), ``lanes`` the parallelism (p).
    """

    memory_kib: int
    iterations: int
    lanes: int

    def within_ceiling(self) -> bool:
        """Whether these are legal Argon2 parameters no dearer than the ceiling.

        Argon2 needs t >= 1, p >= 1 and at least 8 KiB per lane; the ceiling
        is memory <= 256 MiB, t <= 10, p <= 8 and memory x t <= 1 GiB.
        """
        return (
            1 <= self.lanes <= MAX_LANES
            and 1 <= self.iterations <= MAX_ITERATIONS
            and 8 * self.lanes <= self.memory_kib <= MAX_MEMORY_KIB
            and self.memory_kib * self.iterations <= MAX_WORK_KIB
        )

    def meets_floor(self) -> bool:
        """Whether a guess costs at least OWASP's Argon2id minimum.

        That is memory >= 19 MiB with t >= 2, or memory >= 46 MiB with t = 1.
        """
        return self.memory_kib >= MIN_MEMORY_KIB and (
            self.iterations >= MIN_ITERATIONS or self.memory_kib >= MIN_MEMORY_KIB_ONE_PASS
        )

    def is_acceptable(self) -> bool:
        """Whether :func:`backup_bytes` may use these and :func:`restore_bytes` opens them."""
        return self.within_ceiling() and self.meets_floor()

    def __str__(self) -> str:
        return f"Argon2id memory {self.memory_kib} KiB, t={self.iterations}, p={self.lanes}"


class WeakKDFParameters(DMTError, ValueError):
    """A backup's KDF parameters are below the floor: guessing its passphrase is cheap.

    Raised when making a backup with such parameters, and when restoring an
    authentic backup (right passphrase, no altered byte) that has them; the
    model is then not returned. See the module docstring for the floor.
    """


#: RFC 9106 §4, second recommended option: 64 MiB, t=3, p=4.
DEFAULT_KDF_PARAMS = Argon2idParams(memory_kib=64 * 1024, iterations=3, lanes=4)

_FLOOR_TEXT = (
    f"memory >= {MIN_MEMORY_KIB} KiB (19 MiB) with t >= {MIN_ITERATIONS}, or memory >= "
    f"{MIN_MEMORY_KIB_ONE_PASS} KiB (46 MiB) with t = 1 (OWASP's Argon2id minimums)"
)

# Set only by _insecure_kdf_for_tests: the cheap parameters new backups use
# inside it; restore then opens backups below the floor (never above the ceiling).
_INSECURE_TEST_KDF: ContextVar[Argon2idParams | None] = ContextVar(
    "dmt_backup_insecure_test_kdf", default=None
)


@dataclass(frozen=True)
class BackupMetadata:
    """What a backup says about the model it holds (encrypted with it).

    ``model_name`` is the original file name (never used as a path by
    :func:`restore`), ``model_sha256`` the hex SHA-256 of the model bytes,
    ``model_size`` their length, ``created`` the UTC time of the backup
    (ISO 8601, seconds) and ``extra`` the caller's JSON object.
    """

    model_name: str | None
    model_sha256: str
    model_size: int
    created: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json_bytes(self) -> bytes:
        document = {
            "created": self.created,
            "extra": self.extra,
            "model_name": self.model_name,
            "model_sha256": self.model_sha256,
            "model_size": self.model_size,
        }
        return json.dumps(
            document, sort_keys=True, separators=(",", ":"), allow_nan=False
        ).encode("utf-8")


# --- the recipe ---------------------------------------------------------------


def backup_bytes(
    model_bytes: bytes,
    passphrase: str | bytes,
    *,
    metadata: Mapping[str, Any] | None = None,
    model_name: str | None = None,
) -> bytes:
    """Encrypt ``model_bytes`` under ``passphrase``; return the backup blob.

    ``metadata`` is an optional JSON object of the caller's (string keys;
    strings, numbers, booleans, null, lists and objects as values), stored
    encrypted and returned by :func:`restore_bytes` as ``BackupMetadata.extra``.
    ``model_name`` is an optional file name stored alongside. A fresh random
    salt and nonce are drawn for every backup; the KDF parameters are
    :data:`DEFAULT_KDF_PARAMS`. A passphrase easy to guess is refused (module docstring).
    """
    _refuse_guessable(passphrase, model_name)
    blob, _ = _seal(
        model_bytes,
        passphrase,
        salt=os.urandom(SALT_SIZE),
        nonce=os.urandom(NONCE_SIZE),
        kdf_params=_kdf_params_for_new_backups(),
        metadata=metadata,
        model_name=model_name,
        created=_now(),
    )
    return blob


def restore_bytes(blob: bytes, passphrase: str | bytes) -> tuple[bytes, BackupMetadata]:
    """Decrypt a backup made by :func:`backup_bytes`; return (model bytes, metadata).

    The model bytes are bit-exact. Raises :class:`InvalidBackup`, with no
    reason, if the backup cannot be opened for any reason (see module
    docstring), :class:`WeakKDFParameters` if it opens but its KDF parameters
    are below the floor, and :class:`ValidationError` for an empty passphrase.
    """
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise ValidationError(
            f"blob must be bytes (the backup's contents), got {type(blob).__name__}"
        )
    secret = _passphrase_bytes(passphrase)
    opened = _open(bytes(blob), secret)
    if opened is None:
        # Raised outside any ``except`` block: no cause, no context, no message.
        raise InvalidBackup
    return opened


def backup(
    model_path: str | os.PathLike[str],
    backup_path: str | os.PathLike[str],
    passphrase: str | bytes,
    *,
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> BackupMetadata:
    """Back up the model file at ``model_path`` to ``backup_path``.

    The model's file name is stored in the backup. The backup file is written
    atomically with mode 0600; an existing ``backup_path`` is replaced only with
    ``overwrite=True``. Returns the metadata stored in the backup. A passphrase easy to
    guess is refused before anything is read or written (module docstring).
    """
    model_path = Path(model_path)
    backup_path = Path(backup_path)
    secret = _passphrase_bytes(passphrase)
    _refuse_guessable(passphrase, model_path.name)
    if not overwrite:
        _refuse_existing(backup_path, "backup")
    model_bytes = _read_model(model_path)
    blob, info = _seal(
        model_bytes,
        secret,
        salt=os.urandom(SALT_SIZE),
        nonce=os.urandom(NONCE_SIZE),
        kdf_params=_kdf_params_for_new_backups(),
        metadata=metadata,
        model_name=model_path.name,
        created=_now(),
    )
    _write_atomic(backup_path, blob, overwrite=overwrite, what="backup")
    return info


def restore(
    backup_path: str | os.PathLike[str],
    model_path: str | os.PathLike[str],
    passphrase: str | bytes,
    *,
    overwrite: bool = False,
) -> BackupMetadata:
    """Restore the model in the backup at ``backup_path`` to ``model_path``.

    The model is decrypted and verified entirely in memory before anything is
    written; it is then written atomically (temporary file in the same
    directory, fsync, rename) with mode 0600. An existing ``model_path`` is
    replaced only with ``overwrite=True``, and never when the backup cannot
    be opened. The model name stored in the backup is returned in the
    metadata but never used as a path. Raises :class:`InvalidBackup` when the
    backup cannot be opened and :class:`WeakKDFParameters` when it opens but
    its KDF parameters are below the floor; nothing is written then.
    """
    backup_path = Path(backup_path)
    model_path = Path(model_path)
    secret = _passphrase_bytes(passphrase)
    if not overwrite:
        _refuse_existing(model_path, "model")
    blob = _read_backup(backup_path)
    model_bytes, info = restore_bytes(blob, secret)
    _write_atomic(model_path, model_bytes, overwrite=overwrite, what="model")
    return info


def generate_recovery_key() -> str:
    """A fresh passphrase for a backup: 25 characters of Crockford's base32 alphabet (no I,
    L, O or U) from the OS's secure source, in five groups of five (``7K2QX-...``), 125
    bits. For an app that shows the user a key to write down rather than asking for a
    passphrase. Like any passphrase it opens the backup only as it was given: capitals and
    dashes included."""
    import secrets

    characters = "".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(25))
    return "-".join(characters[i:i + 5] for i in range(0, 25, 5))


# --- test-only: fixed salt, nonce and weak KDF parameters ----------------------


@contextmanager
def _insecure_kdf_for_tests(params: Argon2idParams) -> Iterator[None]:
    """DANGEROUS -- for tests only. Never call this in product code.

    Inside the ``with`` block (in the current thread or task only, a
    :class:`~contextvars.ContextVar`), :func:`backup` and :func:`backup_bytes`
    derive keys with ``params`` instead of :data:`DEFAULT_KDF_PARAMS`, and
    making or restoring a backup below the KDF floor is allowed, so a
    passphrase guess may cost next to nothing. The ceiling still holds.
    """
    if not isinstance(params, Argon2idParams) or not params.within_ceiling():
        raise ValidationError(
            f"params must be Argon2idParams within the ceiling (lanes 1..{MAX_LANES}, "
            f"iterations 1..{MAX_ITERATIONS}, memory 8*lanes..{MAX_MEMORY_KIB} KiB, "
            f"memory*iterations <= {MAX_WORK_KIB}), got {params!r}"
        )
    token = _INSECURE_TEST_KDF.set(params)
    try:
        yield
    finally:
        _INSECURE_TEST_KDF.reset(token)


def _backup_bytes_with(
    model_bytes: bytes,
    passphrase: str | bytes,
    *,
    salt: bytes,
    nonce: bytes,
    kdf_params: Argon2idParams,
    metadata: Mapping[str, Any] | None = None,
    model_name: str | None = None,
    created: str = "1970-01-01T00:00:00Z",
) -> bytes:
    """DANGEROUS -- for known-answer tests only. Never call this in product code.

    Builds a backup with a caller-chosen salt, nonce, creation time and KDF
    parameters. Parameters below the floor raise :class:`WeakKDFParameters`
    unless the call is inside :func:`_insecure_kdf_for_tests`. Reusing a salt
    and nonce with the same passphrase reuses the AES-GCM key and nonce, which
    breaks both the confidentiality and the integrity of every backup made
    that way.
    """
    if len(salt) != SALT_SIZE or len(nonce) != NONCE_SIZE:
        raise ValidationError(
            f"salt must be {SALT_SIZE} bytes and nonce {NONCE_SIZE} bytes, "
            f"got {len(salt)} and {len(nonce)}"
        )
    blob, _ = _seal(
        model_bytes,
        passphrase,
        salt=bytes(salt),
        nonce=bytes(nonce),
        kdf_params=kdf_params,
        metadata=metadata,
        model_name=model_name,
        created=created,
    )
    return blob


# --- internals ------------------------------------------------------------------


def _seal(
    model_bytes: bytes,
    passphrase: str | bytes,
    *,
    salt: bytes,
    nonce: bytes,
    kdf_params: Argon2idParams,
    metadata: Mapping[str, Any] | None,
    model_name: str | None,
    created: str,
) -> tuple[bytes, BackupMetadata]:
    if not isinstance(model_bytes, (bytes, bytearray, memoryview)):
        raise ValidationError(
            f"model_bytes must be bytes (the .mlmodel file's contents), "
            f"got {type(model_bytes).__name__}"
        )
    model_bytes = bytes(model_bytes)
    secret = _passphrase_bytes(passphrase)
    if not isinstance(kdf_params, Argon2idParams) or not kdf_params.within_ceiling():
        raise ValidationError(
            f"KDF parameters {kdf_params!r} are outside what restore accepts "
            f"(lanes 1..{MAX_LANES}, iterations 1..{MAX_ITERATIONS}, "
            f"memory 8*lanes..{MAX_MEMORY_KIB} KiB, memory*iterations <= {MAX_WORK_KIB})"
        )
    if not kdf_params.meets_floor() and _INSECURE_TEST_KDF.get() is None:
        raise WeakKDFParameters(
            f"KDF parameters ({kdf_params}) are below the floor, {_FLOOR_TEXT}: "
            f"guessing the passphrase would cost {_cheaper_than_default(kdf_params)} "
            "less than at the default. Nothing was written. Use parameters at or above "
            "the floor, such as DEFAULT_KDF_PARAMS (what backup() uses)."
        )
    if model_name is not None and not isinstance(model_name, str):
        raise ValidationError(f"model_name must be a str or None, got {model_name!r}")
    info = _metadata_for(model_bytes, metadata, model_name, created)
    document = info.to_json_bytes()
    plaintext = _METADATA_LENGTH.pack(len(document)) + document + model_bytes
    if len(plaintext) > MAX_PLAINTEXT_SIZE:
        raise ValidationError(
            f"the model is {len(model_bytes)} bytes; a backup holds at most "
            f"{MAX_PLAINTEXT_SIZE - len(document) - _METADATA_LENGTH.size} bytes"
        )
    header = (
        _FIXED.pack(
            MAGIC,
            FORMAT_VERSION,
            KDF_ARGON2ID,
            kdf_params.memory_kib,
            kdf_params.iterations,
            kdf_params.lanes,
        )
        + salt
        + nonce
    )
    key = _derive_key(secret, salt, kdf_params)
    return header + AESGCM(key).encrypt(nonce, plaintext, header), info


def _open(blob: bytes, secret: bytes) -> tuple[bytes, BackupMetadata] | None:
    """Open a backup; ``None`` on any failure, whatever its cause."""
    if len(blob) < HEADER_SIZE + TAG_SIZE + _METADATA_LENGTH.size or len(blob) > MAX_BACKUP_SIZE:
        return None
    magic, version, kdf_id, memory_kib, iterations, lanes = _FIXED.unpack_from(blob)
    if magic != MAGIC or version != FORMAT_VERSION or kdf_id != KDF_ARGON2ID:
        return None
    params = Argon2idParams(memory_kib=memory_kib, iterations=iterations, lanes=lanes)
    if not params.within_ceiling():
        return None  # refused before any key is derived
    salt = blob[_FIXED.size : _FIXED.size + SALT_SIZE]
    nonce = blob[_FIXED.size + SALT_SIZE : HEADER_SIZE]
    header = blob[:HEADER_SIZE]
    # Below the floor, deriving costs less than at the floor: authenticate
    # first, so that a wrong passphrase or an altered byte stays InvalidBackup.
    key = _derive_key(secret, salt, params)
    try:
        plaintext = AESGCM(key).decrypt(nonce, blob[HEADER_SIZE:], header)
    except InvalidTag:
        return None
    opened = _parse_plaintext(plaintext)
    del plaintext
    # Only a backup says it opens: AES-GCM does not commit to its key, so a crafted file
    # can verify under many passphrases at once, and telling "the tag verified" apart
    # from "invalid" told its maker whether the passphrase was among them (helper-107).
    if opened is None:
        return None
    if not params.meets_floor() and _INSECURE_TEST_KDF.get() is None:
        raise WeakKDFParameters(
            f"this backup opens with the passphrase given, but its key derivation "
            f"({params}) is below the floor, {_FLOOR_TEXT}. Guessing its passphrase costs "
            f"{_cheaper_than_default(params)} less than for a backup dmt makes, so anyone "
            "who has held a copy of the file may have found the passphrase. dmt never "
            "makes such backups, and nothing was restored or written. Restore it with "
            "the software that made it, make a new backup with dmt_model.backup.backup() "
            "or 'dmt backup', and stop using this passphrase anywhere else."
        )
    return opened


def _parse_plaintext(plaintext: bytes) -> tuple[bytes, BackupMetadata] | None:
    # Authenticated, so only a bug or the passphrase's holder could get here
    # with a malformed plaintext; it is still refused, not trusted.
    if len(plaintext) < _METADATA_LENGTH.size:
        return None
    (length,) = _METADATA_LENGTH.unpack_from(plaintext)
    end = _METADATA_LENGTH.size + length
    if end > len(plaintext):
        return None
    try:
        document = json.loads(plaintext[_METADATA_LENGTH.size : end].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    model_bytes = plaintext[end:]
    if not isinstance(document, dict) or set(document) != {
        "created",
        "extra",
        "model_name",
        "model_sha256",
        "model_size",
    }:
        return None
    created, extra = document["created"], document["extra"]
    model_name, sha256, size = (
        document["model_name"],
        document["model_sha256"],
        document["model_size"],
    )
    if (
        not isinstance(created, str)
        or not isinstance(extra, dict)
        or not (model_name is None or isinstance(model_name, str))
        or sha256 != hashlib.sha256(model_bytes).hexdigest()
        or size != len(model_bytes)
    ):
        return None
    return model_bytes, BackupMetadata(
        model_name=model_name, model_sha256=sha256, model_size=size, created=created, extra=extra
    )


def _cheaper_than_default(params: Argon2idParams) -> str:
    """How many times fewer KiB-passes than the default a guess pays, in words."""
    default = DEFAULT_KDF_PARAMS.memory_kib * DEFAULT_KDF_PARAMS.iterations
    ratio = default / (params.memory_kib * params.iterations)
    return f"about {ratio:,.0f} times" if ratio >= 10 else f"about {ratio:.1f} times"


def _kdf_params_for_new_backups() -> Argon2idParams:
    insecure = _INSECURE_TEST_KDF.get()
    return DEFAULT_KDF_PARAMS if insecure is None else insecure


def _derive_key(secret: bytes, salt: bytes, params: Argon2idParams) -> bytes:
    """Argon2id v1.3 -> 32 bytes: cryptography's KDF, else argon2-cffi (same output)."""
    try:
        from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
    except ImportError:  # cryptography < 44
        pass
    else:
        try:
            return Argon2id(
                salt=salt,
                length=KEY_SIZE,
                iterations=params.iterations,
                lanes=params.lanes,
                memory_cost=params.memory_kib,
            ).derive(secret)
        except UnsupportedAlgorithm:  # an OpenSSL without Argon2
            pass
    try:
        from argon2.low_level import Type, hash_secret_raw
    except ImportError:
        raise MissingDependencyError(
            "backups need Argon2id: use cryptography >= 44 built with OpenSSL >= 3.2, "
            "or install argon2-cffi (pip install 'dmt-sdk[model]')"
        ) from None
    return hash_secret_raw(
        secret,
        salt,
        time_cost=params.iterations,
        memory_cost=params.memory_kib,
        parallelism=params.lanes,
        hash_len=KEY_SIZE,
        type=Type.ID,
    )


def _refuse_guessable(passphrase: str | bytes, model_name: str | None) -> None:
    """Raise :class:`ValidationError` if zxcvbn estimates ``passphrase`` below
    :data:`MIN_GUESSES_LOG10` (the model's file name counts as a word an attacker knows).
    The message carries zxcvbn's advice, never the passphrase."""
    try:
        from zxcvbn import zxcvbn
    except ImportError:
        raise MissingDependencyError(
            "new backups judge the passphrase with zxcvbn; install it (pip install "
            "'dmt-sdk[model]'). Nothing was written.") from None
    secret = _passphrase_bytes(passphrase)
    try:
        text = secret.decode("utf-8") if isinstance(passphrase, (bytes, bytearray, memoryview)) \
            else unicodedata.normalize("NFC", passphrase)
    except UnicodeDecodeError:  # binary: latin-1 maps every byte to one character
        text = secret.decode("latin-1")
    with _ZXCVBN:
        found = zxcvbn(text[:_JUDGED_CHARACTERS], user_inputs=[model_name] if model_name else [])
    if found["guesses_log10"] >= MIN_GUESSES_LOG10:
        return
    advice = " ".join(part for part in (found["feedback"]["warning"],
                                        *found["feedback"]["suggestions"]) if part)
    raise ValidationError(
        f"passphrase is too easy to guess: a backup can be attacked offline, and zxcvbn puts "
        f"this one below 10^{MIN_GUESSES_LOG10:.0f} guesses, the least a backup needs. "
        f"{advice + ' ' if advice else ''}Use several uncommon words, or a key from "
        "dmt_model.backup.generate_recovery_key() for the user to write down. Nothing was "
        "written.")


def _passphrase_bytes(passphrase: str | bytes) -> bytes:
    if isinstance(passphrase, str):
        secret = unicodedata.normalize("NFC", passphrase).encode("utf-8")
    elif isinstance(passphrase, (bytes, bytearray, memoryview)):
        secret = bytes(passphrase)
    else:
        raise ValidationError(
            f"passphrase must be a str or bytes, got {type(passphrase).__name__}"
        )
    if not secret:
        raise ValidationError("passphrase is empty; a backup needs a non-empty passphrase")
    return secret


def _metadata_for(
    model_bytes: bytes,
    metadata: Mapping[str, Any] | None,
    model_name: str | None,
    created: str,
) -> BackupMetadata:
    return BackupMetadata(
        model_name=model_name,
        model_sha256=hashlib.sha256(model_bytes).hexdigest(),
        model_size=len(model_bytes),
        created=created,
        extra=_json_object(metadata),
    )


def _json_object(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """The caller's metadata as a dict that survives a JSON round trip unchanged."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise ValidationError(
            f"metadata must be a dict (a JSON object), got {type(metadata).__name__}"
        )
    problem = (
        "metadata must be a JSON object: string keys; str, int, float (finite), bool, "
        "None, list and dict values (no tuples, bytes, numpy or datetime values)"
    )
    try:
        as_dict = dict(metadata)
        text = json.dumps(as_dict, sort_keys=True, allow_nan=False)
        copy = json.loads(text)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValidationError(f"{problem}; got {exc}") from None
    if copy != as_dict:
        raise ValidationError(f"{problem}; got {metadata!r}, which JSON would change")
    return copy  # a deep copy: later changes by the caller do not leak in


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- files ----------------------------------------------------------------------


def _refuse_existing(path: Path, what: str) -> None:
    if path.exists() or path.is_symlink():
        raise OutputExistsError(
            f"{what} file {str(path)!r} already exists; nothing was written. "
            "Choose another path, or pass overwrite=True (--force) to replace it."
        )


def _read_model(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelFileError(f"model file {str(path)!r} does not exist") from None
    except OSError as exc:
        raise ModelFileError(f"cannot read model file {str(path)!r}: {exc.strerror}") from None
    if not data:
        raise ModelFileError(f"model file {str(path)!r} is empty; it is not a .mlmodel")
    return data


def _read_backup(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > MAX_BACKUP_SIZE:
                data = b""  # too large to be a backup: refused like any altered file
            else:
                data = handle.read()
    except FileNotFoundError:
        raise ModelFileError(f"backup file {str(path)!r} does not exist") from None
    except OSError as exc:
        raise ModelFileError(f"cannot read backup file {str(path)!r}: {exc.strerror}") from None
    return data


def _write_atomic(path: Path, data: bytes, *, overwrite: bool, what: str) -> None:
    """Write ``data`` to ``path`` all at once, or not at all (0600; see ``write_atomically``)."""
    directory = path.parent
    if not directory.is_dir():
        raise ModelFileError(f"directory {str(directory)!r} for the {what} file does not exist")
    try:
        write_atomically(path, data, mode=0o600, overwrite=overwrite)
    except FileExistsError:
        raise OutputExistsError(
            f"{what} file {str(path)!r} already exists; nothing was written. "
            "Pass overwrite=True (--force) to replace it."
        ) from None
    except OSError as exc:
        raise ModelFileError(
            f"cannot write the {what} file {str(path)!r}: {exc.strerror or exc}; "
            "nothing was replaced"
        ) from None

