"""Sealing bytes to the server's key: HPKE (RFC 9180) in a versioned envelope.

This is the recipe layer: :func:`seal` and :func:`open_sealed` ask for no
decisions. One suite exists, HPKE base mode with DHKEM(X25519, HKDF-SHA256),
HKDF-SHA256 and AES-128-GCM, computed by ``cryptography``'s
``hazmat.primitives.hpke`` (single-shot: one message per encapsulation, so a
fresh ephemeral key for every envelope).

Envelope, format version 1 (all integers big-endian)::

    offset  size  field
    0       3     magic b"DMT"
    3       1     format version, 0x01
    4       2     suite id, 0x0001 (the suite above)
    6       32    HPKE enc: the sender's ephemeral X25519 public key
    38      n+16  AES-128-GCM ciphertext of the n plaintext bytes, tag last

The 6 header bytes are bound into the encryption: the HPKE ``info`` is the
header followed by the caller's ``info`` (the header has a fixed length, so
the concatenation is unambiguous). Altering a header byte, the enc, the
ciphertext or the info makes the envelope fail to open.

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
from pathlib import Path

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import x25519

from dmt_privacy.errors import InvalidPackage, ValidationError
from dmt_privacy.files import write_atomically

__all__ = [
    "ENVELOPE_MAGIC",
    "ENVELOPE_OVERHEAD",
    "ENVELOPE_VERSION",
    "KEY_FILE_SIZE",
    "KEY_MAGIC",
    "KEY_VERSION",
    "SUITE_X25519_SHA256_AES128GCM",
    "ServerPrivateKey",
    "ServerPublicKey",
    "generate_server_key",
    "load_private_key",
    "load_public_key",
    "open_sealed",
    "save_private_key",
    "save_public_key",
    "seal",
]

ENVELOPE_MAGIC = b"DMT"
ENVELOPE_VERSION = 1
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

_HEADER = struct.Struct(">3sBH")
_ENC_SIZE = 32
_TAG_SIZE = 16
#: Bytes an envelope adds to its plaintext: header, enc and GCM tag.
ENVELOPE_OVERHEAD = _HEADER.size + _ENC_SIZE + _TAG_SIZE

_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM)
_HEADER_V1 = _HEADER.pack(ENVELOPE_MAGIC, ENVELOPE_VERSION, SUITE_X25519_SHA256_AES128GCM)


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
        raise ValidationError(
            f"Not a dmt {want} key: it starts with {data[:4]!r}, expected {KEY_MAGIC!r}."
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


# --- key files ------------------------------------------------------------------------------
def _write_atomic(path: Path, data: bytes, mode: int, overwrite: bool) -> None:
    try:
        write_atomically(path, data, mode=mode, overwrite=overwrite)
    except FileExistsError:
        raise FileExistsError(
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


# --- envelopes ------------------------------------------------------------------------------
def _as_bytes(value: object, name: str) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise ValidationError(f"{name} must be bytes, got {type(value).__name__}.")


def seal(plaintext: bytes, public_key: ServerPublicKey, *, info: bytes = b"") -> bytes:
    """Encrypt ``plaintext`` to ``public_key``: only the private key's holder can open it.

    ``info`` is context both sides must agree on (it is authenticated, not
    sent): the envelope opens only with the same ``info``.
    """
    plaintext = _as_bytes(plaintext, "plaintext")
    info = _as_bytes(info, "info")
    if not isinstance(public_key, ServerPublicKey):
        raise ValidationError(
            f"seal needs a ServerPublicKey, got {type(public_key).__name__}"
            + ("; call .public_key() on it." if isinstance(public_key, ServerPrivateKey) else ".")
        )
    return _HEADER_V1 + _SUITE.encrypt(plaintext, public_key.key, info=_HEADER_V1 + info)


def open_sealed(envelope: bytes, private_key: ServerPrivateKey, *, info: bytes = b"") -> bytes:
    """Decrypt an envelope made by :func:`seal`; any failure raises a bare ``InvalidPackage``."""
    if not isinstance(private_key, ServerPrivateKey):  # a programming error, not an attack
        raise ValidationError(
            f"open_sealed needs a ServerPrivateKey, got {type(private_key).__name__}."
        )
    plaintext: bytes | None = None
    try:
        data = envelope if isinstance(envelope, (bytes, bytearray, memoryview)) else b""
        data = bytes(data)
        header = data[: _HEADER.size]
        if (
            len(data) >= ENVELOPE_OVERHEAD
            and hmac.compare_digest(header, _HEADER_V1)
            and isinstance(info, (bytes, bytearray, memoryview))
        ):
            plaintext = _SUITE.decrypt(data[_HEADER.size:], private_key.key,
                                       info=_HEADER_V1 + bytes(info))
    except Exception:  # every failure is the same failure
        plaintext = None
    if plaintext is None:
        raise InvalidPackage()
    return plaintext
