"""Sealing bytes to the server's key: HPKE (RFC 9180) in a versioned envelope.

This is the recipe layer: :func:`seal` and :func:`open_sealed` ask for no
decisions. One suite exists, HPKE base mode with DHKEM(X25519, HKDF-SHA256),
HKDF-SHA256 and AES-128-GCM, computed by ``cryptography``'s
``hazmat.primitives.hpke`` (single-shot: one message per encapsulation, so a
fresh ephemeral key for every envelope).

Envelope, format version 2 (all integers big-endian)::

    offset  size  field
    0       3     magic b"DMT"
    3       1     format version, 0x02
    4       2     suite id, 0x0001 (the suite above)
    6       8     key id: the first 8 bytes of SHA-256 over the recipient's raw
                  32-byte X25519 public key (the release key ids' convention,
                  :mod:`dmt_privacy.release`: 16 hex digits)
    14      32    HPKE enc: the sender's ephemeral X25519 public key
    46      n+16  AES-128-GCM ciphertext of the n plaintext bytes, tag last

The 14 header bytes are bound into the encryption: the HPKE ``info`` is the
header followed by the caller's ``info`` (the header has a fixed length, so
the concatenation is unambiguous). Altering a header byte (the key id
included), the enc, the ciphertext or the info makes the envelope fail to
open. The key id lets a server that holds several private keys (a
:class:`ServerKeyring`: the current key and the ones it replaced) pick the
one key to try: rotating the key needs no trial decryption, and an envelope
naming a key the server does not hold is refused at once.

Format version 1 (no key id: ``DMT 0x01 0x0001``, enc at offset 6) is still
opened, because devices' outboxes and servers' wrapped data keys hold such
envelopes. It is tried with each key of the keyring in turn (a keyring holds
at most :data:`MAX_KEYRING_KEYS`); :func:`seal` writes version 2 only. A
version 1 and a version 2 envelope never open as each other: the header,
different in each, is part of the HPKE ``info``.

Any failure to open an envelope raises :class:`~dmt_privacy.errors.InvalidPackage`
with no message and no chained exception: an attacker who feeds altered
bytes learns nothing but "no".

Key files, format version 1 (44 bytes)::

    offset  size  field
    0       4     magic b"DMTK"
    4       1     format version, 0x01
    5       1     kind: 0x01 public key, 0x02 private key
    6       2     suite id, 0x0001
    8       32    raw X25519 key (RFC 7748 encoding)
    40      4     first 4 bytes of SHA-256 over bytes 0..39 (detects corruption)

A malformed key raises :class:`~dmt_privacy.errors.ValidationError` naming
what is wrong: key files are configuration, not attacker-controlled input.

There is no way here to choose the ephemeral key: ``cryptography``'s HPKE
API does not expose one, and deterministic sealing is only ever a test
device. The tests carry known-answer envelopes and an independent RFC 9180
implementation instead.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import x25519

from dmt_privacy.errors import InvalidPackage, OutputExistsError, ValidationError
from dmt_privacy.files import write_atomically

__all__ = [
    "ENVELOPE_MAGIC",
    "ENVELOPE_OVERHEAD",
    "ENVELOPE_VERSION",
    "KEY_FILE_SIZE",
    "KEY_ID_SIZE",
    "KEY_MAGIC",
    "KEY_VERSION",
    "LEGACY_ENVELOPE_VERSION",
    "MAX_KEYRING_KEYS",
    "SUITE_X25519_SHA256_AES128GCM",
    "ServerKeyring",
    "ServerPrivateKey",
    "ServerPublicKey",
    "envelope_key_id",
    "generate_server_key",
    "load_keyring",
    "load_private_key",
    "load_public_key",
    "open_sealed",
    "save_private_key",
    "save_public_key",
    "seal",
]

ENVELOPE_MAGIC = b"DMT"
ENVELOPE_VERSION = 2
#: Envelopes of this version (no key id) are still opened, never written.
LEGACY_ENVELOPE_VERSION = 1
#: Bytes of the key id in an envelope header (16 hex digits).
KEY_ID_SIZE = 8
#: The most keys a :class:`ServerKeyring` holds: the current one and those it replaced.
MAX_KEYRING_KEYS = 8
#: dmt's suite registry: 0x0001 = HPKE base mode, KEM 0x0020 DHKEM(X25519, HKDF-SHA256),
#: KDF 0x0001 HKDF-SHA256, AEAD 0x0001 AES-128-GCM.
SUITE_X25519_SHA256_AES128GCM = 0x0001

KEY_MAGIC = b"DMTK"
KEY_VERSION = 1
_KIND_PUBLIC = 0x01
_KIND_PRIVATE = 0x02
_KIND_NAMES = {_KIND_PUBLIC: "public", _KIND_PRIVATE: "private"}
_RAW_KEY_SIZE = 32
_CHECKSUM_SIZE = 4
KEY_FILE_SIZE = 4 + 1 + 1 + 2 + _RAW_KEY_SIZE + _CHECKSUM_SIZE

_PREFIX = struct.Struct(">3sBH")
_HEADER = struct.Struct(f">3sBH{KEY_ID_SIZE}s")
_ENC_SIZE = 32
_TAG_SIZE = 16
#: Bytes an envelope adds to its plaintext: header (with the key id), enc and GCM tag.
ENVELOPE_OVERHEAD = _HEADER.size + _ENC_SIZE + _TAG_SIZE

_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM)
_PREFIX_V1 = _PREFIX.pack(ENVELOPE_MAGIC, LEGACY_ENVELOPE_VERSION,
                             SUITE_X25519_SHA256_AES128GCM)
_PREFIX_V2 = _PREFIX.pack(ENVELOPE_MAGIC, ENVELOPE_VERSION, SUITE_X25519_SHA256_AES128GCM)


def _key_id(raw_public: bytes) -> bytes:
    """The envelope key id of a raw X25519 public key (first 8 bytes of its SHA-256)."""
    return hashlib.sha256(raw_public).digest()[:KEY_ID_SIZE]


# --- keys -----------------------------------------------------------------------------------
def _key_bytes(kind: int, raw: bytes) -> bytes:
    body = KEY_MAGIC + struct.pack(">BBH", KEY_VERSION, kind, SUITE_X25519_SHA256_AES128GCM) + raw
    return body + hashlib.sha256(body).digest()[:_CHECKSUM_SIZE]


def _parse_key(data: bytes, expected_kind: int) -> bytes:
    """The raw 32 key bytes of a key file of ``expected_kind``, or a ValidationError."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValidationError(
            f"Key bytes must be bytes, got {type(data).__name__}; read the key file in binary mode."
        )
    data = bytes(data)
    want = _KIND_NAMES[expected_kind]
    if data[:4] != KEY_MAGIC:
        # a private key's first bytes are never echoed: raw key bytes passed by mistake
        # would put 32 bits of the secret into the message (helper-68)
        start = "" if expected_kind == _KIND_PRIVATE else f", it starts with {data[:4]!r}"
        raise ValidationError(
            f"Not a dmt {want} key: it does not start with {KEY_MAGIC!r} ({len(data)} bytes"
            f"{start})."
        )
    if len(data) != KEY_FILE_SIZE:
        raise ValidationError(
            f"A dmt {want} key is {KEY_FILE_SIZE} bytes long, got {len(data)}: the key is "
            "truncated or has extra bytes."
        )
    version, kind, suite = struct.unpack(">BBH", data[4:8])
    if version != KEY_VERSION:
        raise ValidationError(
            f"Key format version {version} is not supported (this SDK reads version "
            f"{KEY_VERSION}); upgrade dmt."
        )
    if kind != expected_kind:
        got = _KIND_NAMES.get(kind)
        if got is None:
            raise ValidationError(
                f"Key kind byte 0x{kind:02x} is unknown (0x01 public, 0x02 private)."
            )
        raise ValidationError(
            f"Expected a {want} key, got a {got} key: "
            + ("pass the server's public key file, never the private one, to devices."
               if got == "private" else "the server needs its private key to open packages.")
        )
    if suite != SUITE_X25519_SHA256_AES128GCM:
        raise ValidationError(
            f"Key suite 0x{suite:04x} is not supported (this SDK knows suite "
            f"0x{SUITE_X25519_SHA256_AES128GCM:04x}, X25519/HKDF-SHA256/AES-128-GCM)."
        )
    body, checksum = data[:-_CHECKSUM_SIZE], data[-_CHECKSUM_SIZE:]
    if not hmac.compare_digest(hashlib.sha256(body).digest()[:_CHECKSUM_SIZE], checksum):
        raise ValidationError(f"The {want} key's checksum does not match: the key is corrupted.")
    return body[8:]


class ServerPublicKey:
    """The server's X25519 public key: what devices seal share packages to."""

    __slots__ = ("_key", "_raw")

    def __init__(self, key: x25519.X25519PublicKey) -> None:
        if not isinstance(key, x25519.X25519PublicKey):
            raise ValidationError(
                f"ServerPublicKey wraps an X25519PublicKey, got {type(key).__name__}."
            )
        raw = key.public_bytes_raw()
        try:  # a low-order point would make every shared secret zero
            x25519.X25519PrivateKey.generate().exchange(key)
        except ValueError:
            raise ValidationError(
                "The public key is a low-order X25519 point and cannot be sealed to."
            ) from None
        self._key = key
        self._raw = raw

    @property
    def key(self) -> x25519.X25519PublicKey:
        """The wrapped ``cryptography`` key."""
        return self._key

    def raw_bytes(self) -> bytes:
        """The bare 32-byte X25519 public key (RFC 7748), without the dmt key header."""
        return self._raw

    def fingerprint(self) -> str:
        """First 16 hex digits of SHA-256 over the raw key: a name for it in logs and configs."""
        return hashlib.sha256(self._raw).hexdigest()[:16]

    @property
    def key_id(self) -> str:
        """The key id envelopes sealed to this key carry (hex; equal to :meth:`fingerprint`)."""
        return _key_id(self._raw).hex()

    def to_bytes(self) -> bytes:
        """The 44-byte dmt key format (see the module docstring)."""
        return _key_bytes(_KIND_PUBLIC, self._raw)

    @classmethod
    def from_bytes(cls, data: bytes) -> ServerPublicKey:
        raw = _parse_key(data, _KIND_PUBLIC)
        return cls(x25519.X25519PublicKey.from_public_bytes(raw))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ServerPublicKey):
            return NotImplemented
        return self._raw == other._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return f"ServerPublicKey(fingerprint={self.fingerprint()!r})"


class ServerPrivateKey:
    """The server's X25519 private key: opens sealed packages. Keep it off devices."""

    __slots__ = ("_key",)

    def __init__(self, key: x25519.X25519PrivateKey) -> None:
        if not isinstance(key, x25519.X25519PrivateKey):
            raise ValidationError(
                f"ServerPrivateKey wraps an X25519PrivateKey, got {type(key).__name__}."
            )
        self._key = key

    @property
    def key(self) -> x25519.X25519PrivateKey:
        """The wrapped ``cryptography`` key."""
        return self._key

    def public_key(self) -> ServerPublicKey:
        return ServerPublicKey(self._key.public_key())

    def fingerprint(self) -> str:
        """The fingerprint of the public half (never derived from the secret bytes)."""
        return self.public_key().fingerprint()

    @property
    def key_id(self) -> str:
        """The key id of the public half: what envelopes sealed to it carry."""
        return self.public_key().key_id

    def to_bytes(self) -> bytes:
        """The 44-byte dmt key format holding the SECRET key; store it with mode 0600."""
        return _key_bytes(_KIND_PRIVATE, self._key.private_bytes_raw())

    @classmethod
    def from_bytes(cls, data: bytes) -> ServerPrivateKey:
        raw = _parse_key(data, _KIND_PRIVATE)
        return cls(x25519.X25519PrivateKey.from_private_bytes(raw))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ServerPrivateKey):
            return NotImplemented
        return hmac.compare_digest(self._key.private_bytes_raw(), other._key.private_bytes_raw())

    def __hash__(self) -> int:
        return hash(self.public_key())

    def __repr__(self) -> str:  # never the secret
        return f"ServerPrivateKey(public_fingerprint={self.fingerprint()!r})"


def generate_server_key() -> ServerPrivateKey:
    """A fresh X25519 key pair from the OS's secure random source."""
    return ServerPrivateKey(x25519.X25519PrivateKey.generate())


class ServerKeyring:
    """The server's private keys by key id: the current key first, then those it replaced.

    Devices seal to the current key (the one the signed release names); the
    keys it replaced stay here while envelopes sealed to them may still
    arrive, and while the server's database holds data keys wrapped to them.
    An envelope is opened with the one key its header names.
    """

    __slots__ = ("_by_id", "_keys")

    def __init__(self, keys: ServerPrivateKey | Iterable[ServerPrivateKey]) -> None:
        items = [keys] if isinstance(keys, ServerPrivateKey) else list(keys)
        if not items or not all(isinstance(k, ServerPrivateKey) for k in items):
            raise ValidationError(
                "A ServerKeyring needs one or more ServerPrivateKey (the current key first).")
        if len(items) > MAX_KEYRING_KEYS:
            raise ValidationError(
                f"A ServerKeyring holds at most {MAX_KEYRING_KEYS} keys, got {len(items)}; "
                "retire keys no envelope or data key is sealed to any more.")
        by_id: dict[bytes, ServerPrivateKey] = {}
        for key in items:
            kid = bytes.fromhex(key.key_id)
            if kid in by_id:
                raise ValidationError(f"Key {key.key_id} is given twice.")
            by_id[kid] = key
        self._keys = tuple(items)
        self._by_id = by_id

    @property
    def current(self) -> ServerPrivateKey:
        """The key devices seal to now (the first one given)."""
        return self._keys[0]

    def public_key(self) -> ServerPublicKey:
        """The current key's public half."""
        return self._keys[0].public_key()

    def fingerprint(self) -> str:
        return self._keys[0].fingerprint()

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(k.key_id for k in self._keys)

    def get(self, key_id: str | bytes) -> ServerPrivateKey | None:
        """The key with this id (16 hex digits or 8 bytes), or ``None``."""
        raw = key_id if isinstance(key_id, bytes) else bytes.fromhex(key_id) \
            if isinstance(key_id, str) and len(key_id) == 2 * KEY_ID_SIZE else b""
        return self._by_id.get(raw)

    def __iter__(self) -> Iterator[ServerPrivateKey]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:  # never a secret
        return f"ServerKeyring(key_ids={list(self.key_ids)!r})"


def _keyring(keys: ServerPrivateKey | ServerKeyring, where: str) -> ServerKeyring:
    if isinstance(keys, ServerKeyring):
        return keys
    if isinstance(keys, ServerPrivateKey):
        return ServerKeyring(keys)
    raise ValidationError(
        f"{where} needs a ServerPrivateKey or a ServerKeyring, got {type(keys).__name__}.")


# --- key files ------------------------------------------------------------------------------
def _write_atomic(path: Path, data: bytes, mode: int, overwrite: bool) -> None:
    try:
        write_atomically(path, data, mode=mode, overwrite=overwrite)
    except FileExistsError:
        raise OutputExistsError(
            f"{path} exists; refusing to replace a key file (pass overwrite=True to replace it, "
            "and keep the old private key while packages sealed to it may still arrive)."
        ) from None


def _read_key_file(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(KEY_FILE_SIZE + 1)


def save_private_key(key: ServerPrivateKey, path: str | os.PathLike[str], *,
                     overwrite: bool = False) -> None:
    """Write the private key to ``path`` atomically, readable by its owner only (0600)."""
    if not isinstance(key, ServerPrivateKey):
        raise ValidationError(
            f"save_private_key needs a ServerPrivateKey, got {type(key).__name__}."
        )
    _write_atomic(Path(path), key.to_bytes(), 0o600, overwrite)


def load_private_key(path: str | os.PathLike[str]) -> ServerPrivateKey:
    """Read a private key file. Refuses a file that group or others may access (chmod 600 it)."""
    path = Path(path)
    key = ServerPrivateKey.from_bytes(_read_key_file(path))  # a public key is refused here
    if os.name == "posix":
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise ValidationError(
                f"Private key file {path} has mode {mode:04o}: group or others may access it. "
                f"Run `chmod 600 {path}` (and consider the key exposed)."
            )
    return key


def save_public_key(key: ServerPublicKey, path: str | os.PathLike[str], *,
                    overwrite: bool = False) -> None:
    """Write the public key to ``path`` atomically (mode 0644: it is meant to be shipped)."""
    if not isinstance(key, ServerPublicKey):
        raise ValidationError(
            f"save_public_key needs a ServerPublicKey, got {type(key).__name__}"
            + ("; call .public_key() on the private key." if isinstance(key, ServerPrivateKey)
               else ".")
        )
    _write_atomic(Path(path), key.to_bytes(), 0o644, overwrite)


def load_public_key(path: str | os.PathLike[str]) -> ServerPublicKey:
    return ServerPublicKey.from_bytes(_read_key_file(Path(path)))


def load_keyring(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]
                 ) -> ServerKeyring:
    """The private key files ``paths`` as a keyring: the current key first, then older ones."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    return ServerKeyring([load_private_key(p) for p in items])


# --- envelopes ------------------------------------------------------------------------------
def _as_bytes(value: object, name: str) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise ValidationError(f"{name} must be bytes, got {type(value).__name__}.")


def envelope_key_id(envelope: bytes) -> str | None:
    """The key id (hex) a version 2 envelope's header names, or ``None`` (not one, or v1).

    Public information, for logs: it says which server key the sender sealed to.
    """
    if (isinstance(envelope, (bytes, bytearray, memoryview)) and len(envelope) >= _HEADER.size
            and bytes(envelope[:_PREFIX.size]) == _PREFIX_V2):
        return bytes(envelope[_PREFIX.size:_HEADER.size]).hex()
    return None


def seal(plaintext: bytes, public_key: ServerPublicKey, *, info: bytes = b"") -> bytes:
    """Encrypt ``plaintext`` to ``public_key``: only the private key's holder can open it.

    ``info`` is context both sides must agree on (it is authenticated, not
    sent): the envelope opens only with the same ``info``. The envelope names
    the key (its key id) so a server holding several keys opens it with that one.
    """
    plaintext = _as_bytes(plaintext, "plaintext")
    info = _as_bytes(info, "info")
    if not isinstance(public_key, ServerPublicKey):
        raise ValidationError(
            f"seal needs a ServerPublicKey, got {type(public_key).__name__}"
            + ("; call .public_key() on it." if isinstance(public_key, ServerPrivateKey) else ".")
        )
    header = _PREFIX_V2 + _key_id(public_key.raw_bytes())
    return header + _SUITE.encrypt(plaintext, public_key.key, info=header + info)


def _open(data: bytes, keys: ServerKeyring, info: bytes) -> bytes | None:
    prefix = data[:_PREFIX.size]
    if prefix == _PREFIX_V2 and len(data) >= ENVELOPE_OVERHEAD:
        key = keys.get(data[_PREFIX.size:_HEADER.size])
        if key is None:  # a key this server does not hold: refused without decrypting
            return None
        return _SUITE.decrypt(data[_HEADER.size:], key.key, info=data[:_HEADER.size] + info)
    if prefix == _PREFIX_V1 and len(data) >= ENVELOPE_OVERHEAD - KEY_ID_SIZE:
        for key in keys:  # legacy: no key id, so each key of the (small) keyring in turn
            try:
                return _SUITE.decrypt(data[_PREFIX.size:], key.key, info=_PREFIX_V1 + info)
            except Exception:  # noqa: S112 - the next key, then the one failure
                continue
    return None


def open_sealed(envelope: bytes, private_key: ServerPrivateKey | ServerKeyring, *,
                info: bytes = b"") -> bytes:
    """Decrypt an envelope made by :func:`seal`; any failure raises a bare ``InvalidPackage``.

    ``private_key``: the server's key, or its :class:`ServerKeyring` (the
    envelope's key id picks the key; an id the keyring lacks is a failure).
    """
    keys = _keyring(private_key, "open_sealed")  # a programming error, not an attack
    plaintext: bytes | None = None
    try:
        data = envelope if isinstance(envelope, (bytes, bytearray, memoryview)) else b""
        if isinstance(info, (bytes, bytearray, memoryview)):
            plaintext = _open(bytes(data), keys, bytes(info))
    except Exception:  # every failure is the same failure
        plaintext = None
    if plaintext is None:
        raise InvalidPackage()
    return plaintext
