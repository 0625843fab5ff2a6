"""Signed model releases: the server signs what it publishes, a device verifies before it reads.

The design follows TUF's targets metadata, cut down to one role: for every
published model version the server writes a small JSON document, the
*release*, whose ``signed`` part states

    format        1
    name          what is released (e.g. ``"foundation"``)
    version       int >= 1, increasing: a device never goes back (no rollback)
    created       ISO 8601 UTC
    expires       ISO 8601 UTC: a device refuses it afterwards (no freeze)
    length        the model file's length in bytes
    sha256        the model file's SHA-256, hex
    schema_id     the schema the model reads
    policy_sha256 SHA-256 of the server policy JSON devices follow (served beside it)
    server_key    the server's HPKE public key (the 44-byte key file, hex) packages
                  are sealed to, or null: the key travels on the signed channel too;
                  its key id (same convention as below) is what envelopes carry
    held_out_devices  (only when the server checked) the number of held-out
                  devices on which this version, personalized as a device
                  personalizes it, beat the previous one
                  (``dmt_model.personalize.compare_on_devices``); a device
                  chooses how much proof to ask of the version by it
                  (``dmt_model.personalize.adoption_rule_for``). A release
                  without it has the same canonical form as before the field
                  existed, so older releases still verify; an SDK from before
                  the field refuses a release that carries it (unknown key:
                  InvalidRelease), so apps update before the server signs it.
    held_out_baseline  (with ``held_out_devices``) the version it beat there:
                  the claim says nothing about it against any other, so a
                  device whose personal model comes from another version asks
                  it to prove itself. Releases signed before this field carry
                  the claim without it (deprecated: ``sign_release`` warns);
                  a device reads such a claim as beating the version numbered
                  just before it, and no other.
    version_check (only while the server asks devices to check this version
                  themselves, ``dmt_model.version_check``) ``{"key": ...,
                  "baseline": ..., "epsilon": ...}``: the token key id (SHA-256
                  of the check's Privacy Pass key, hex) devices are given, the
                  version they compare it with and each report's ε. A device
                  asked to check takes a token under that key only, at that ε,
                  so a server that gave devices keys or ε of their own, to tell
                  their reports apart, would have to sign two releases of one
                  version that differ in what they say: evidence anyone holding
                  both can show (compare ``ReleaseMetadata.canonical()``, what is
                  signed, not the documents' bytes). Optional, as
                  ``held_out_devices`` is; a version's release names it for good
                  once the server announced a check, so apps update before that.
    open_rule_devices  (only when the server showed it) the number of held-out
                  devices on which personal updates of this version under the
                  task's open rule (``dmt_model.personalize.open_rule_for``: any
                  prior strength, whatever a device's number of records; a
                  regression's keeps an update at 50 % rather than the task's
                  90 %, a classifier's asks no label shift) beat the default
                  rule, which keeps a device with few records on the strongest
                  prior (``dmt_model.personalize.compare_personal_rules``); a
                  device personalizing this version follows the open rule only
                  then (``dmt_model.personalize.personal_rule_for``), the rule
                  as the check measured it. Optional, as
                  ``held_out_devices`` is: an SDK from before the field refuses a
                  release that carries it, so apps update before the server
                  checks a version they run.
    open_rule     (with ``open_rule_devices`` only) the rule the check compared,
                  as ``dmt_model.personalize.DecisionRule.canonical`` writes it
                  (its fields as canonical JSON): the claim grants that rule and
                  no other, so a device whose SDK's open rule has changed since
                  keeps the default. Claims signed before it name no rule
                  (deprecated: ``sign_release`` warns) and grant the device's
                  SDK's open rule. An SDK from before the field refuses a
                  release that carries it.

and whose ``signatures`` are ``[{"key_id": ..., "sig": ...}]``: Ed25519
(``cryptography``) over ``b"dmt model release v1\\n"`` followed by the
canonical JSON of ``signed`` (sorted keys, no spaces, UTF-8). A key id is the
first 16 hex digits of SHA-256 over the raw public key, so a device can pin
several keys and the server can rotate: a release is trusted when one
signature by a pinned key verifies.

A device calls :func:`verify_release` with the release document, the model
bytes it downloaded, its pinned keys and the version it has installed. The
model bytes are checked whole before anything parses them; the function
returns them, so the caller loads exactly the bytes that were verified. Any
failure of the signature, the length or the hash raises :class:`InvalidRelease`,
which says nothing more; an authentic release that is older than the installed
version raises :class:`RollbackRefused`, one past its expiry
:class:`ReleaseExpired` (both subclasses, with a message: they are raised only
after the signature verified).

This module imports only ``cryptography`` and the standard library: app-side
tooling embeds it without torch.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import json
import math
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from dmt_privacy.errors import DMTError, ValidationError, warn_caller
from dmt_privacy.files import write_atomically

__all__ = [
    "RELEASE_CONTEXT",
    "RELEASE_FORMAT",
    "InvalidRelease",
    "ReleaseExpired",
    "ReleaseMetadata",
    "ReleaseSigningKey",
    "ReleaseVerifyKey",
    "RollbackRefused",
    "UnverifiedPolicyWarning",
    "VerifiedRelease",
    "conflicting_releases",
    "generate_release_key",
    "load_release_signing_key",
    "load_release_verify_key",
    "release_file_name",
    "sharing_policy_from",
    "sign_release",
    "verify_release",
]

RELEASE_FORMAT = 1
#: Domain separation: a release signature verifies as nothing else.
RELEASE_CONTEXT = b"dmt model release v1\n"
_MAX_DOCUMENT = 64 * 1024
#: Signed fields left out when ``None`` (releases signed before they existed lack them).
_OPTIONAL = ("held_out_devices", "held_out_baseline", "version_check", "open_rule_devices",
             "open_rule")
#: The longest rule name a release carries (``open_rule``).
_MAX_RULE_NAME = 1024
_VERSION_CHECK_KEYS = frozenset({"key", "baseline", "epsilon"})
_HEX = frozenset("0123456789abcdef")


class InvalidRelease(DMTError):
    """A model release failed verification (signature, length or hash). Says nothing more."""


class RollbackRefused(InvalidRelease):
    """An authentic release older than the installed version: refused (no rollback)."""


class ReleaseExpired(InvalidRelease):
    """An authentic release past its expiry: refused (a server that stops publishing is seen)."""


class UnverifiedPolicyWarning(UserWarning):
    """:func:`sharing_policy_from` was given no verified release to check the policy against:
    whoever serves the policy then sets the device's ε, plan and k."""


def release_file_name(model_file: str) -> str:
    """Where a registry keeps the release of ``model_file``: ``foundation-v2.release.json``."""
    return Path(model_file).stem + ".release.json"


def _key_id(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:16]


class ReleaseVerifyKey:
    """The public half of a release signing key: what an app pins at build time."""

    def __init__(self, key: ed25519.Ed25519PublicKey) -> None:
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise ValidationError(f"Expected an Ed25519 public key, got {type(key).__name__}.")
        self._key = key
        self._raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def key_id(self) -> str:
        """First 16 hex digits of SHA-256 over the raw public key."""
        return _key_id(self._raw)

    def raw_bytes(self) -> bytes:
        return self._raw

    @classmethod
    def from_raw(cls, data: bytes) -> ReleaseVerifyKey:
        if not isinstance(data, bytes) or len(data) != 32:
            raise ValidationError("An Ed25519 public key is 32 raw bytes.")
        return cls(ed25519.Ed25519PublicKey.from_public_bytes(data))

    def to_pem(self) -> bytes:
        return self._key.public_bytes(serialization.Encoding.PEM,
                                      serialization.PublicFormat.SubjectPublicKeyInfo)

    def verify(self, signature: bytes, message: bytes) -> bool:
        try:
            self._key.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ReleaseVerifyKey) and hmac.compare_digest(self._raw, other._raw)

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return f"ReleaseVerifyKey(key_id={self.key_id!r})"


class ReleaseSigningKey:
    """The server's Ed25519 release signing key (keep it off the serving machines)."""

    def __init__(self, key: ed25519.Ed25519PrivateKey) -> None:
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ValidationError(f"Expected an Ed25519 private key, got {type(key).__name__}.")
        self._key = key

    def verify_key(self) -> ReleaseVerifyKey:
        return ReleaseVerifyKey(self._key.public_key())

    @property
    def key_id(self) -> str:
        return self.verify_key().key_id

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def to_pem(self) -> bytes:
        return self._key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """The private key (PKCS #8 PEM, mode 0600) to ``path`` and the public key to ``.pub``."""
        path = Path(path)
        write_atomically(path, self.to_pem(), mode=0o600, overwrite=overwrite)
        write_atomically(path.with_name(path.name + ".pub"), self.verify_key().to_pem(),
                         mode=0o644, overwrite=overwrite)

    def __repr__(self) -> str:
        return f"ReleaseSigningKey(key_id={self.key_id!r})"


def generate_release_key() -> ReleaseSigningKey:
    """A fresh Ed25519 release signing key."""
    return ReleaseSigningKey(ed25519.Ed25519PrivateKey.generate())


def load_release_signing_key(path: str | os.PathLike[str]) -> ReleaseSigningKey:
    """Read a key written by :meth:`ReleaseSigningKey.save`; refuses a group/world-readable file."""
    path = Path(path)
    if os.name == "posix" and stat.S_IMODE(path.stat().st_mode) & 0o077:
        raise ValidationError(f"Release signing key {path} may be read by group or others; "
                              f"run `chmod 600 {path}` (and consider the key exposed).")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ValidationError(f"{path} is not a PEM private key ({exc}).") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValidationError(f"{path} holds a {type(key).__name__}, not an Ed25519 key.")
    return ReleaseSigningKey(key)


def load_release_verify_key(source: str | os.PathLike[str] | bytes) -> ReleaseVerifyKey:
    """A pinned public key: PEM bytes, a PEM file, or the 32 raw bytes."""
    if isinstance(source, bytes) and len(source) == 32:
        return ReleaseVerifyKey.from_raw(source)
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ValidationError(f"Not a PEM public key ({exc}).") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ValidationError(f"The key is a {type(key).__name__}, not an Ed25519 key.")
    return ReleaseVerifyKey(key)


# --- metadata -----------------------------------------------------------------------------
def _utc(value: _dt.datetime) -> str:
    if value.tzinfo is None:
        raise ValidationError("Release times must be timezone-aware (UTC).")
    return value.astimezone(_dt.timezone.utc).isoformat(timespec="seconds")


def _parse_time(text: Any) -> _dt.datetime:
    if type(text) is not str:
        raise ValueError("time")
    value = _dt.datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError("naive time")
    return value


def _is_hex(text: Any, length: int | None = None) -> bool:
    return (type(text) is str and (length is None or len(text) == length)
            and set(text) <= _HEX and len(text) % 2 == 0)


def _valid_version_check(check: Any, version: Any) -> bool:
    """Whether ``check`` is a release's ``version_check``: the token key id, a baseline
    older than ``version`` and a finite ε > 0."""
    return (type(check) in (dict, MappingProxyType) and set(check) == _VERSION_CHECK_KEYS
            and _is_hex(check["key"], 64) and type(check["baseline"]) is int
            and type(version) is int and 1 <= check["baseline"] < version
            and type(check["epsilon"]) is float and math.isfinite(check["epsilon"])
            and check["epsilon"] > 0)


@dataclass(frozen=True)
class ReleaseMetadata:
    """The signed statement about one published model version (see the module docstring)."""

    name: str
    version: int
    created: str
    expires: str
    length: int
    sha256: str
    schema_id: str
    policy_sha256: str | None
    server_key: str | None
    format: int = RELEASE_FORMAT
    held_out_devices: int | None = None
    held_out_baseline: int | None = None
    #: read-only once made (a mapping proxy of the signed dict)
    version_check: Mapping[str, Any] | None = None
    open_rule_devices: int | None = None
    open_rule: str | None = None

    def __post_init__(self) -> None:
        checks = {
            "format": type(self.format) is int and self.format == RELEASE_FORMAT,
            "name": type(self.name) is str and 0 < len(self.name) <= 128,
            "version": type(self.version) is int and self.version >= 1,
            "length": type(self.length) is int and self.length >= 0,
            "sha256": _is_hex(self.sha256, 64),
            "schema_id": type(self.schema_id) is str and len(self.schema_id) <= 128,
            "policy_sha256": self.policy_sha256 is None or _is_hex(self.policy_sha256, 64),
            "server_key": self.server_key is None or _is_hex(self.server_key),
            "held_out_devices": self.held_out_devices is None or (
                type(self.held_out_devices) is int and self.held_out_devices >= 2),
            # an earlier version, and only as the other side of a held-out-device claim
            "held_out_baseline": self.held_out_baseline is None or (
                self.held_out_devices is not None and type(self.held_out_baseline) is int
                and type(self.version) is int and 1 <= self.held_out_baseline < self.version),
            "version_check": self.version_check is None or _valid_version_check(
                self.version_check, self.version),
            "open_rule_devices": self.open_rule_devices is None or (
                type(self.open_rule_devices) is int and self.open_rule_devices >= 2),
            # the rule the claim was measured on, and only with the claim
            "open_rule": self.open_rule is None or (
                type(self.open_rule) is str and 0 < len(self.open_rule) <= _MAX_RULE_NAME
                and self.open_rule_devices is not None),
        }
        for name in ("created", "expires"):
            try:
                _parse_time(getattr(self, name))
                checks[name] = True
            except ValueError:
                checks[name] = False
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValidationError(f"Release metadata has malformed {bad!r}.")
        if self.version_check is not None:  # what was verified cannot be changed after
            object.__setattr__(self, "version_check",
                               MappingProxyType(dict(self.version_check)))

    def __hash__(self) -> int:  # what is signed (``version_check`` is a dict)
        return hash(self.canonical())

    @property
    def expires_at(self) -> _dt.datetime:
        return _parse_time(self.expires)

    @property
    def created_at(self) -> _dt.datetime:
        """When the server signed it: what a device keeps of the newest release it verified
        (:func:`verify_release`'s ``newest_seen``)."""
        return _parse_time(self.created)

    def as_signed(self) -> dict[str, Any]:
        """The ``signed`` part of the release document."""
        signed = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.version_check is not None:
            signed["version_check"] = dict(self.version_check)
        for optional in _OPTIONAL:
            if signed[optional] is None:
                del signed[optional]
        return signed

    def canonical(self) -> bytes:
        """The bytes that are signed (after :data:`RELEASE_CONTEXT`); ``held_out_devices``,
        ``held_out_baseline``, ``version_check``, ``open_rule_devices`` and ``open_rule``
        are left out when ``None``, as releases signed before they existed were."""
        return json.dumps(self.as_signed(), sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False, allow_nan=False).encode()


#: What :func:`verify_release` passes when it builds a :class:`VerifiedRelease`.
_VERIFIED = object()


@dataclass(frozen=True)
class VerifiedRelease:
    """What :func:`verify_release` vouches for: the metadata and exactly the verified bytes.

    Only :func:`verify_release` builds one (the SDK trusts it as verified: a claim in its
    metadata earns devices a lenient rule); built by hand it raises
    :class:`~dmt_privacy.errors.ValidationError`."""

    metadata: ReleaseMetadata
    model: bytes
    key_id: str
    #: The version the device said it runs (``verify_release``'s ``installed_version``).
    installed_version: int | None = None
    _by: object = field(default=None, repr=False, compare=False, kw_only=True)

    def __post_init__(self) -> None:
        if self._by is not _VERIFIED:
            raise ValidationError("A VerifiedRelease comes from verify_release only: call "
                                  "verify_release(document, model, trusted_keys).")

    def server_public_key(self) -> Any:
        """The HPKE key to seal share packages to, as the signed release names it.

        Envelopes sealed to it carry its key id (:attr:`server_key_id`), so a
        server that rotated its key opens them with this one.
        """
        from dmt_privacy.seal import ServerPublicKey

        if self.metadata.server_key is None:
            raise ValidationError("This release names no server key; the server published it "
                                  "without server_key=.")
        return ServerPublicKey.from_bytes(bytes.fromhex(self.metadata.server_key))

    @property
    def server_key_id(self) -> str:
        """The key id (16 hex digits, as release key ids) of the signed HPKE key."""
        return str(self.server_public_key().key_id)


def sign_release(
    model: bytes,
    key: ReleaseSigningKey | Iterable[ReleaseSigningKey],
    *,
    version: int,
    schema_id: str,
    policy_json: str | bytes | None = None,
    server_key: bytes | None = None,
    name: str = "foundation",
    valid_for: _dt.timedelta = _dt.timedelta(days=30),
    now: _dt.datetime | None = None,
    held_out_devices: int | None = None,
    held_out_baseline: int | None = None,
    version_check: Mapping[str, Any] | None = None,
    open_rule_devices: int | None = None,
    open_rule: str | None = None,
) -> bytes:
    """The signed release document (JSON bytes) for ``model`` as version ``version``.

    ``key``: one signing key or several (during a rotation, sign with the old
    and the new one). ``policy_json``: the server policy devices follow;
    its SHA-256 is signed. ``server_key``: the HPKE public key file bytes
    (:meth:`dmt_privacy.seal.ServerPublicKey.to_bytes`). ``valid_for``: the
    release expires that long after ``now``; publish (or re-sign) before then.
    ``held_out_devices``: on how many held-out devices the server found this
    version better once personalized (leave ``None`` if it did not check), and
    ``held_out_baseline`` the version it was found better than: a device applies
    the claim only when its personal model comes from that version. A claim
    without its baseline is deprecated (it warns): devices would apply it whatever
    version they run. ``version_check``: the check devices are asked to make of this
    version (``dmt_model.version_check.VersionCheckIssuer.announcement``), so that each
    can see it is given the same key and ε as every other. ``open_rule_devices``: on how
    many held-out devices the server found personal updates of this version better under
    the open rule (``dmt_model.personalize.compare_personal_rules``; leave ``None`` if it
    did not check, or found it not better), and ``open_rule`` that rule as the check compared
    it (``DecisionRule.canonical``): a claim without it is deprecated (it warns), since it
    would grant whatever rule a device's SDK calls open.
    """
    if not isinstance(model, bytes):
        raise ValidationError(f"model must be the model file's bytes, got {type(model).__name__}.")
    keys = [key] if isinstance(key, ReleaseSigningKey) else list(key)
    if not keys or not all(isinstance(k, ReleaseSigningKey) for k in keys):
        raise ValidationError("key must be a ReleaseSigningKey or a list of them.")
    if not isinstance(valid_for, _dt.timedelta) or valid_for <= _dt.timedelta(0):
        raise ValidationError(f"valid_for must be a positive timedelta, got {valid_for!r}.")
    if held_out_devices is not None and held_out_baseline is None:
        warn_caller("sign_release(held_out_devices=...) without held_out_baseline is "
                    "deprecated: devices apply a claim that names no baseline whatever "
                    "version they run. Pass held_out_baseline=, the version the held-out "
                    "devices compared this one with.", DeprecationWarning)
    if open_rule is not None and open_rule_devices is None:
        raise ValidationError(
            f"open_rule={open_rule!r} needs open_rule_devices: a release names the rule a "
            "check compared only with its claim. Pass both, or neither.")
    if open_rule_devices is not None and open_rule is None:
        warn_caller("sign_release(open_rule_devices=...) without open_rule is deprecated: "
                    "devices grant a claim that names no rule whatever rule their SDK calls "
                    "open. Pass open_rule=, the rule the check compared "
                    "(DecisionRule.canonical(task)).", DeprecationWarning)
    now = now or _dt.datetime.now(_dt.timezone.utc)
    policy_sha = None
    if policy_json is not None:
        policy_sha = _policy_sha256(policy_json)
    metadata = ReleaseMetadata(
        name=name, version=version, created=_utc(now), expires=_utc(now + valid_for),
        length=len(model), sha256=hashlib.sha256(model).hexdigest(), schema_id=schema_id,
        policy_sha256=policy_sha, server_key=None if server_key is None else server_key.hex(),
        held_out_devices=held_out_devices, held_out_baseline=held_out_baseline,
        version_check=dict(version_check) if isinstance(version_check, Mapping)
        else version_check,  # anything else: malformed, named by ReleaseMetadata
        open_rule_devices=open_rule_devices, open_rule=open_rule)
    message = RELEASE_CONTEXT + metadata.canonical()
    document = {"signed": metadata.as_signed(),
                "signatures": [{"key_id": k.key_id, "sig": k.sign(message).hex()}
                               for k in keys]}
    return json.dumps(document, sort_keys=True, indent=1, allow_nan=False).encode()


def _parse(document: bytes) -> tuple[ReleaseMetadata, list[tuple[str, bytes]]]:
    if not isinstance(document, (bytes, bytearray)) or len(document) > _MAX_DOCUMENT:
        raise ValueError("document")
    data = json.loads(bytes(document))
    if type(data) is not dict or set(data) != {"signed", "signatures"}:
        raise ValueError("shape")
    signed, signatures = data["signed"], data["signatures"]
    if type(signed) is not dict or type(signatures) is not list or len(signatures) > 8:
        raise ValueError("shape")
    if any(optional in signed and signed[optional] is None for optional in _OPTIONAL):
        raise ValueError("no claim is spelt by leaving the field out")  # one encoding
    metadata = ReleaseMetadata(**signed)
    sigs = []
    for entry in signatures:
        if type(entry) is not dict or set(entry) != {"key_id", "sig"}:
            raise ValueError("signature")
        if not _is_hex(entry["key_id"], 16) or not _is_hex(entry["sig"], 128):
            raise ValueError("signature")
        sigs.append((entry["key_id"], bytes.fromhex(entry["sig"])))
    return metadata, sigs


def verify_release(
    document: bytes,
    model: bytes,
    trusted_keys: ReleaseVerifyKey | Iterable[ReleaseVerifyKey],
    *,
    installed_version: int | None = None,
    installed_sha256: str | None = None,
    policy_json: str | bytes | None = None,
    name: str = "foundation",
    now: _dt.datetime | None = None,
    newest_seen: VerifiedRelease | _dt.datetime | None = None,
) -> VerifiedRelease:
    """Verify a downloaded model against its signed release, before anything reads the model.

    ``trusted_keys``: the keys the app pinned at build time. ``installed_version``
    (and ``installed_sha256``): what the device runs now; an older version, or
    the same version with other bytes, is a rollback; the result keeps it, so
    a held-out-device claim applies only if it names that version as its
    baseline (``dmt_model.personalize.adoption_rule_for``). ``policy_json``: when
    given, must be the policy the release names. ``newest_seen``: the newest release of
    this name the device verified before, or when it was signed (its
    ``metadata.created_at``, the one thing to keep of it); a release signed before it is
    refused as a rollback, even of the same version. A release stays valid until it
    expires after the server replaced it, and the older one can still carry a claim the
    devices' reports withdrew, or the server key the server rotated away from: whoever
    controls the channel could otherwise serve it again. Returns a
    :class:`VerifiedRelease` holding the verified bytes: load those, not the file
    again. Raises :class:`~dmt_privacy.errors.ValidationError` naming an argument of
    the wrong type (a path or text where the bytes belong), :class:`InvalidRelease`
    (nothing more said) for a bad signature, length, hash, name or policy;
    :class:`RollbackRefused` and :class:`ReleaseExpired` for authentic but stale
    releases.
    """
    for argument, value, what in (("document", document, "the release file's"),
                                  ("model", model, "the model file's")):
        if not isinstance(value, (bytes, bytearray)):
            raise ValidationError(f"{argument} must be {what} bytes (Path.read_bytes()), got "
                                  f"{type(value).__name__}.")
    model = bytes(model)
    if not isinstance(name, str):
        raise ValidationError(f"name must be the release's name (a str), got {name!r}.")
    if installed_version is not None and (type(installed_version) is not int
                                          or installed_version < 1):
        raise ValidationError(f"installed_version must be the version number the device "
                              f"runs (an int >= 1), got {installed_version!r}.")
    seen = _newest_seen(newest_seen, name)
    pinned = ([trusted_keys] if isinstance(trusted_keys, ReleaseVerifyKey)
              else list(trusted_keys))
    if not pinned or not all(isinstance(k, ReleaseVerifyKey) for k in pinned):
        raise ValidationError("trusted_keys must be the app's pinned ReleaseVerifyKey(s).")
    by_id = {k.key_id: k for k in pinned}
    try:
        metadata, signatures = _parse(document)
    except Exception:  # every malformed document is the same failure
        metadata = None
    if metadata is None:
        raise InvalidRelease()
    message = RELEASE_CONTEXT + metadata.canonical()
    signer = next((kid for kid, sig in signatures
                   if kid in by_id and by_id[kid].verify(sig, message)), None)
    if signer is None:
        raise InvalidRelease()
    if len(model) != metadata.length or not hmac.compare_digest(
            hashlib.sha256(model).hexdigest(), metadata.sha256):
        raise InvalidRelease()
    if metadata.name != name:
        raise InvalidRelease()
    if policy_json is not None and not _signed_policy(metadata, policy_json):
        raise InvalidRelease()
    if installed_version is not None:
        if metadata.version < installed_version or (
                metadata.version == installed_version and installed_sha256 is not None
                and metadata.sha256 != installed_sha256):
            raise RollbackRefused(
                f"Release {metadata.name} v{metadata.version} is older than (or differs from) "
                f"the installed v{installed_version}; a device never goes back.")
    if seen is not None and metadata.created_at < seen:
        raise RollbackRefused(
            f"Release {metadata.name} v{metadata.version} was signed at {metadata.created}, "
            f"before the newest release this device verified ({_utc(seen)}); a replaced "
            "release may carry a withdrawn claim or a rotated server key. Keep the newer one.")
    now = now or _dt.datetime.now(_dt.timezone.utc)
    if now >= metadata.expires_at:
        raise ReleaseExpired(
            f"Release {metadata.name} v{metadata.version} expired at {metadata.expires}; the "
            "server has not published or re-signed since. Keep the installed model and retry.")
    return VerifiedRelease(metadata=metadata, model=model, key_id=signer,
                           installed_version=installed_version, _by=_VERIFIED)


def _newest_seen(newest_seen: VerifiedRelease | _dt.datetime | None,
                 name: str) -> _dt.datetime | None:
    """When the newest release of ``name`` the device verified was signed
    (:func:`verify_release`'s ``newest_seen``), or ``None``."""
    if newest_seen is None:
        return None
    if isinstance(newest_seen, VerifiedRelease):
        if newest_seen.metadata.name != name:
            raise ValidationError(
                f"newest_seen is a release of {newest_seen.metadata.name!r}, not of {name!r}: "
                "pass the newest release of the name being verified.")
        return newest_seen.metadata.created_at
    if isinstance(newest_seen, _dt.datetime) and newest_seen.tzinfo is not None:
        return newest_seen
    raise ValidationError(
        "newest_seen must be the newest VerifiedRelease the device verified or its "
        f"metadata.created_at (a timezone-aware datetime), got {newest_seen!r}.")


def conflicting_releases(first: VerifiedRelease, second: VerifiedRelease) -> list[str]:
    """The signed fields in which two verified releases of one version disagree where every
    release of a version must agree: its model (``sha256``, ``length``) and, once both name
    one, the version check devices are asked to make (``version_check``) and the server key
    their reports are sealed to (``server_key``: every envelope names its key, so a key
    per device would tell whose report is whose as surely as a check key each). Empty when
    they agree, or name different versions (or models). Re-signing legitimately changes the
    rest (expiry, a claim the devices' reports earned, a rotated signing key, a server key
    rotated while no check is announced). ``open_rule_devices`` is one check's outcome, so
    two releases that both name it name the same number, and the same rule
    (``open_rule``; a claim naming none and one naming a rule disagree: the unnamed one
    grants whatever a device's SDK calls open).

    Two releases that disagree, both signed by the server, are evidence that it told
    devices different things about one version, for instance a check key or a server key
    each, to tell their reports apart: an app that gathers the releases its devices
    received, or an auditor, checks them pairwise with this.
    """
    if not (isinstance(first, VerifiedRelease) and isinstance(second, VerifiedRelease)):
        raise ValidationError("conflicting_releases compares two releases verify_release "
                              f"returned, got {type(first).__name__} and "
                              f"{type(second).__name__}.")
    a, b = first.metadata, second.metadata
    if (a.name, a.version) != (b.name, b.version):
        return []
    fields = [name for name in ("sha256", "length") if getattr(a, name) != getattr(b, name)]
    if a.open_rule_devices is not None and b.open_rule_devices is not None \
            and a.open_rule_devices != b.open_rule_devices:  # a version's rules compare once
        fields.append("open_rule_devices")
    if a.open_rule_devices is not None and b.open_rule_devices is not None \
            and a.open_rule != b.open_rule:  # one check, one rule: named alike or not at all
        fields.append("open_rule")
    if a.version_check is not None and b.version_check is not None:
        fields += [name for name in ("version_check", "server_key")
                   if getattr(a, name) != getattr(b, name)]
    return fields


def _check_signed_policy(policy_json: str | bytes, release: VerifiedRelease | None) -> None:
    """That ``policy_json`` is the policy ``release`` signed (a warning without a release)."""
    if release is None:
        warn_caller(UnverifiedPolicyWarning(
            "sharing_policy_from was given no verified release: nothing checked that this "
            "policy is the one the server signed. Pass release= (what verify_release "
            "returned for the model the policy came with)."))
        return
    if not isinstance(release, VerifiedRelease):
        raise ValidationError("release must be what verify_release returned, got "
                              f"{type(release).__name__}.")
    if not isinstance(policy_json, (str, bytes)):
        raise ValidationError(f"policy_json must be the policy's JSON (str or bytes), got "
                              f"{type(policy_json).__name__}.")
    if release.metadata.policy_sha256 is None:
        raise InvalidRelease(
            f"Release {release.metadata.name} v{release.metadata.version} names no policy "
            "(published without policy=): it cannot vouch for one.")
    if not _signed_policy(release.metadata, policy_json):
        raise InvalidRelease()


def _policy_sha256(policy_json: str | bytes) -> str:
    """What a release signs of the server policy: the SHA-256 of its JSON's bytes."""
    return hashlib.sha256(policy_json.encode() if isinstance(policy_json, str)
                          else policy_json).hexdigest()


def _signed_policy(metadata: ReleaseMetadata, policy_json: str | bytes) -> bool:
    """Whether ``policy_json`` is the policy ``metadata`` names (none named: no)."""
    return metadata.policy_sha256 is not None and hmac.compare_digest(
        metadata.policy_sha256, _policy_sha256(policy_json))


def sharing_policy_from(policy_json: str | bytes, *, release: VerifiedRelease | None = None,
                        fields: Iterable[str] | None = None, **selection: Any) -> Any:
    """The device's :class:`~dmt_privacy.sharing.SharingPolicy` for the server policy that
    ``release`` signed.

    ``release``: what :func:`verify_release` returned for the model the policy came with.
    The policy travels beside the release, on a channel the device does not trust; a
    policy whose SHA-256 is not the one the release signed raises :class:`InvalidRelease`
    (so does a release that names no policy). Without ``release`` nothing here checks the
    policy (:class:`UnverifiedPolicyWarning`): give ``verify_release`` the same bytes
    (``policy_json=``), or whoever serves them sets ε, the plan and k.

    The server decides: ε, mechanisms, δ, the plan, the privacy unit its
    receipts must state and the most records and bytes a package may hold come from the
    policy JSON the release signed; ``fields`` (default: every field the policy
    accepts) and ``selection`` (``fraction``, ``predicate``, ``record_ids``,
    ``modifiers``, ``max_epsilon``, and ``privacy_unit`` where the policy leaves
    it open) are the device's choices of what to share. A choice the server
    would refuse every package of (a store of another schema than the policy's, which
    :func:`~dmt_privacy.sharing.share` refuses; another privacy unit than the policy's,
    fields without the sensitive field the plan judges l or t on, or a field the
    policy checks as a quasi-identifier that its plan does not generalize and no ε
    perturbs) raises
    :class:`~dmt_privacy.errors.ValidationError` here, before any budget is spent.
    """
    from dmt_privacy.anonymity.plan import AnonymizationPlan
    from dmt_privacy.errors import SchemaError
    from dmt_privacy.schema import Schema
    from dmt_privacy.sharing import SharingPolicy

    _check_signed_policy(policy_json, release)
    try:
        data = json.loads(policy_json)
        plan = data.get("plan")
        accepted = tuple(data.get("fields") or ())
        epsilon = dict(data.get("epsilon") or {})
        mechanism = dict(data.get("mechanism") or {})
        delta = dict(data.get("delta") or {})
        min_k = data["min_k"]
        unit = data.get("privacy_unit")
        max_records = data.get("max_records")
        max_bytes = data.get("max_bytes")
        requires_token = data.get("tokens_per_period") is not None
        checked = tuple(data.get("quasi_identifiers") or ())
        schema_id = Schema.from_dict(data["schema"]).schema_id
    except (ValueError, TypeError, KeyError, AttributeError, SchemaError) as exc:
        raise ValidationError(f"Not a server policy document ({exc}).") from None
    if unit is not None:
        chosen_unit = selection.setdefault("privacy_unit", unit)
        if chosen_unit != unit:
            raise ValidationError(
                f"privacy_unit={chosen_unit!r}, but the server's policy requires receipts "
                f"that state privacy_unit={unit!r}: it would refuse every package. Leave "
                "privacy_unit out (the policy's is taken).")
    if "requires_token" in selection:
        raise ValidationError("requires_token comes from the server's policy (its "
                              "tokens_per_period); leave it out.")
    if "schema_id" in selection:
        raise ValidationError("schema_id comes from the server's policy (its schema); "
                              "leave it out.")
    limits = {"max_records": max_records, "max_bytes": max_bytes}
    for name, servers in list(limits.items()):  # the device may ask for less, never more
        mine = selection.pop(name, None)  # (SharingPolicy refuses one that is not an int)
        if isinstance(mine, int) and servers is not None and mine > servers:
            raise ValidationError(
                f"{name}={mine!r}, but the server's policy refuses packages above {servers!r}; "
                "leave it out (the policy's is taken) or give a smaller one.")
        limits[name] = servers if mine is None else mine
    chosen = tuple(fields) if fields is not None else accepted
    outside = [f for f in chosen if accepted and f not in accepted]
    if outside:
        raise ValidationError(f"The server's policy does not accept the fields {outside!r}.")
    plan = None if plan is None else AnonymizationPlan.from_dict(plan)
    stranded = [] if plan is None else [
        q for q in checked if q in chosen and q not in epsilon and q not in plan.quasi_identifiers]
    if stranded:  # the server checks them as generalized; this policy would send them as is
        raise ValidationError(
            f"The server checks {stranded!r} as quasi-identifiers, but its plan does not "
            "generalize them and no ε perturbs them: it would refuse every package carrying "
            "them, after the budget was charged. Pass fields= and leave it out of fields.")
    return SharingPolicy(
        fields=chosen,
        plan=plan,
        epsilon={k: v for k, v in epsilon.items() if k in chosen},
        mechanism={k: v for k, v in mechanism.items() if k in chosen},
        delta={k: v for k, v in delta.items() if k in chosen},
        required_k=min_k if plan is not None else None,
        **limits,
        requires_token=requires_token,
        schema_id=schema_id,
        **selection,
    )
