"""dmt_privacy.seal: key format, envelope format, RFC 9180 agreement, tamper resistance.

The HPKE computation is checked by an independent, slow and obvious RFC 9180
implementation written here from the RFC (HMAC-SHA256, X25519 and AES-GCM
from ``cryptography``'s plain primitives): it reproduces the RFC's test vector
A.1.1, regenerates the known-answer envelopes in ``vectors/seal_v2.json`` (and
the legacy ``vectors/seal_v1.json``, which must still open) byte for byte from
a fixed ephemeral key, and opens envelopes that :func:`dmt_privacy.seal.seal`
made.

Regenerate the vectors (only when the format changes, with a new version):
``python tests/privacy/test_seal.py``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmt_privacy.errors import InvalidPackage, ValidationError
from dmt_privacy.seal import (
    ENVELOPE_OVERHEAD,
    KEY_FILE_SIZE,
    MAX_KEYRING_KEYS,
    ServerKeyring,
    ServerPrivateKey,
    ServerPublicKey,
    envelope_key_id,
    generate_server_key,
    load_keyring,
    load_private_key,
    load_public_key,
    open_sealed,
    save_private_key,
    save_public_key,
    seal,
)

VECTORS = Path(__file__).resolve().parent / "vectors"
SEAL_VECTORS = VECTORS / "seal_v2.json"
LEGACY_SEAL_VECTORS = VECTORS / "seal_v1.json"


# --- an independent RFC 9180 base-mode implementation (test-only, deterministic) -------------
_KEM_SUITE = b"KEM" + (0x0020).to_bytes(2, "big")
_HPKE_SUITE = b"HPKE" + struct.pack(">HHH", 0x0020, 0x0001, 0x0001)  # KEM, KDF, AEAD ids


def _extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def _expand(prk: bytes, info: bytes, length: int) -> bytes:
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def _labeled_extract(suite: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return _extract(salt, b"HPKE-v1" + suite + label + ikm)


def _labeled_expand(suite: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    return _expand(prk, length.to_bytes(2, "big") + b"HPKE-v1" + suite + label + info, length)


def _shared_secret(dh: bytes, enc: bytes, pk_r: bytes) -> bytes:
    eae_prk = _labeled_extract(_KEM_SUITE, b"", b"eae_prk", dh)
    return _labeled_expand(_KEM_SUITE, eae_prk, b"shared_secret", enc + pk_r, 32)


def _key_schedule(shared_secret: bytes, info: bytes) -> tuple[bytes, bytes]:
    psk_id_hash = _labeled_extract(_HPKE_SUITE, b"", b"psk_id_hash", b"")
    info_hash = _labeled_extract(_HPKE_SUITE, b"", b"info_hash", info)
    context = b"\x00" + psk_id_hash + info_hash
    secret = _labeled_extract(_HPKE_SUITE, shared_secret, b"secret", b"")
    key = _labeled_expand(_HPKE_SUITE, secret, b"key", context, 16)
    base_nonce = _labeled_expand(_HPKE_SUITE, secret, b"base_nonce", context, 12)
    return key, base_nonce


def _raw_public(key: x25519.X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def reference_hpke_seal(pk_r: bytes, sk_e: bytes, info: bytes, plaintext: bytes,
                        aad: bytes = b"") -> tuple[bytes, bytes]:
    """RFC 9180 SetupBaseS + Seal (sequence 0) with a FIXED ephemeral key: (enc, ct)."""
    eph = x25519.X25519PrivateKey.from_private_bytes(sk_e)
    enc = _raw_public(eph)
    dh = eph.exchange(x25519.X25519PublicKey.from_public_bytes(pk_r))
    key, nonce = _key_schedule(_shared_secret(dh, enc, pk_r), info)
    return enc, AESGCM(key).encrypt(nonce, plaintext, aad)


def reference_hpke_open(sk_r: bytes, enc: bytes, ct: bytes, info: bytes) -> bytes:
    me = x25519.X25519PrivateKey.from_private_bytes(sk_r)
    dh = me.exchange(x25519.X25519PublicKey.from_public_bytes(enc))
    key, nonce = _key_schedule(_shared_secret(dh, enc, _raw_public(me)), info)
    return AESGCM(key).decrypt(nonce, ct, b"")


DMT_HEADER_V1 = b"DMT\x01\x00\x01"
DMT_PREFIX = b"DMT\x02\x00\x01"


def reference_header(public_key: ServerPublicKey) -> bytes:
    """Format 2's header: prefix, then the first 8 bytes of SHA-256 over the raw public key."""
    return DMT_PREFIX + hashlib.sha256(public_key.raw_bytes()).digest()[:8]


def reference_seal(public_key: ServerPublicKey, sk_e: bytes, plaintext: bytes,
                   info: bytes = b"") -> bytes:
    """The dmt envelope (format 2), from the format description alone, fixed ephemeral key."""
    header = reference_header(public_key)
    enc, ct = reference_hpke_seal(public_key.raw_bytes(), sk_e, header + info, plaintext)
    return header + enc + ct


def reference_seal_v1(public_key: ServerPublicKey, sk_e: bytes, plaintext: bytes,
                      info: bytes = b"") -> bytes:
    """The legacy format 1 envelope (no key id), which servers still open."""
    enc, ct = reference_hpke_seal(public_key.raw_bytes(), sk_e, DMT_HEADER_V1 + info, plaintext)
    return DMT_HEADER_V1 + enc + ct


def reference_open_v1(private_key: ServerPrivateKey, envelope: bytes, info: bytes = b"") -> bytes:
    assert envelope[:6] == DMT_HEADER_V1
    sk = private_key.key.private_bytes_raw()
    return reference_hpke_open(sk, envelope[6:38], envelope[38:], DMT_HEADER_V1 + info)


def reference_open(private_key: ServerPrivateKey, envelope: bytes, info: bytes = b"") -> bytes:
    header = reference_header(private_key.public_key())
    assert envelope[:14] == header
    sk = private_key.key.private_bytes_raw()
    return reference_hpke_open(sk, envelope[14:46], envelope[46:], header + info)


# RFC 9180, Appendix A.1.1: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM, base mode.
RFC_A11 = {
    "info": "4f6465206f6e2061204772656369616e2055726e",
    "skEm": "52c4a758a802cd8b936eceea314432798d5baf2d7e9235dc084ab1b9cfa2f736",
    "pkEm": "37fda3567bdbd628e88668c3c8d7e97d1d1253b6d4ea6d44c150f741f1bf4431",
    "skRm": "4612c550263fc8ad58375df3f557aac531d26850903e55a9f23f21d8534e8ac8",
    "pkRm": "3948cfe0ad1ddb695d780e59077195da6c56506b027329794ab02bca80815c4d",
    "shared_secret": "fe0e18c9f024ce43799ae393c7e8fe8fce9d218875e8227b0187c04e7d2ea1fc",
    "key": "4531685d41d65f03dc48f6b8302c05b0",
    "base_nonce": "56d890e5accaaf011cff4b7d",
    "aad": "436f756e742d30",
    "pt": "4265617574792069732074727574682c20747275746820626561757479",
    "ct": "f938558b5d72f1a23810b4be2ab4f84331acc02fc97babc53a52ae8218a355a96d8770ac83d07bea87e13c"
          "512a",
}


def test_reference_implementation_reproduces_rfc9180_a11() -> None:
    v = {k: bytes.fromhex(h) for k, h in RFC_A11.items()}
    eph = x25519.X25519PrivateKey.from_private_bytes(v["skEm"])
    assert _raw_public(eph) == v["pkEm"]
    assert _raw_public(x25519.X25519PrivateKey.from_private_bytes(v["skRm"])) == v["pkRm"]
    dh = eph.exchange(x25519.X25519PublicKey.from_public_bytes(v["pkRm"]))
    secret = _shared_secret(dh, v["pkEm"], v["pkRm"])
    assert secret == v["shared_secret"]
    assert _key_schedule(secret, v["info"]) == (v["key"], v["base_nonce"])
    enc, ct = reference_hpke_seal(v["pkRm"], v["skEm"], v["info"], v["pt"], v["aad"])
    assert (enc, ct) == (v["pkEm"], v["ct"])


def test_cryptography_hpke_opens_the_rfc_vector() -> None:
    """The library seal() relies on agrees with RFC 9180 (its AAD entry point is private)."""
    from cryptography.hazmat.bindings._rust import openssl as rust_openssl
    from cryptography.hazmat.primitives import hpke

    decrypt = getattr(rust_openssl.hpke, "_decrypt_with_aad", None)
    if decrypt is None:
        pytest.skip("this cryptography has no _decrypt_with_aad")
    v = {k: bytes.fromhex(h) for k, h in RFC_A11.items()}
    suite = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM)
    sk = x25519.X25519PrivateKey.from_private_bytes(v["skRm"])
    assert decrypt(suite, v["pkEm"] + v["ct"], sk, info=v["info"], aad=v["aad"]) == v["pt"]


# --- known-answer vectors ---------------------------------------------------------------------
def make_seal_vectors(version: int = 2) -> dict[str, object]:
    """Fixed keys, fixed ephemeral key -> fixed envelopes (regenerated only on a format change)."""
    make = reference_seal if version == 2 else reference_seal_v1
    recipient = ServerPrivateKey(x25519.X25519PrivateKey.from_private_bytes(
        hashlib.sha256(b"dmt test recipient key 1").digest()))
    cases = []
    for i, (plaintext, info) in enumerate([
        (b"", b""),
        (b"dmt known-answer plaintext \x00\xff", b""),
        ("Ode on a Grecian Urn \u2014 \u00e9t\u00e9".encode(), b"dmt.share-package"),
        (bytes(range(256)) * 5, b"context"),
    ]):
        sk_e = hashlib.sha256(b"dmt test ephemeral key %d" % i).digest()
        cases.append({
            "ephemeral_private": sk_e.hex(),
            "info": info.hex(),
            "plaintext": plaintext.hex(),
            "envelope": make(recipient.public_key(), sk_e, plaintext, info).hex(),
        })
    header = ("; header = 'DMT' 02 0001 key id (8 bytes of SHA-256 over the raw public key)"
              if version == 2 else "")
    return {
        "description": f"dmt envelope format {version}, suite 0x0001 (HPKE base, DHKEM(X25519, "
                       f"HKDF-SHA256), HKDF-SHA256, AES-128-GCM){header}; HPKE info = "
                       "header || info",
        "private_key": recipient.to_bytes().hex(),
        "public_key": recipient.public_key().to_bytes().hex(),
        "cases": cases,
    }


@pytest.fixture(scope="module")
def seal_vectors() -> dict:
    return json.loads(SEAL_VECTORS.read_text())


@pytest.fixture(scope="module")
def legacy_vectors() -> dict:
    return json.loads(LEGACY_SEAL_VECTORS.read_text())


def test_key_vectors(seal_vectors: dict) -> None:
    private = ServerPrivateKey.from_bytes(bytes.fromhex(seal_vectors["private_key"]))
    public = ServerPublicKey.from_bytes(bytes.fromhex(seal_vectors["public_key"]))
    assert private.public_key() == public
    assert private.to_bytes().hex() == seal_vectors["private_key"]
    assert public.to_bytes().hex() == seal_vectors["public_key"]
    raw = bytes.fromhex(seal_vectors["public_key"])
    assert raw[:8] == b"DMTK\x01\x01\x00\x01" and len(raw) == KEY_FILE_SIZE == 44
    assert bytes.fromhex(seal_vectors["private_key"])[:8] == b"DMTK\x01\x02\x00\x01"


def test_envelope_vectors_open(seal_vectors: dict) -> None:
    private = ServerPrivateKey.from_bytes(bytes.fromhex(seal_vectors["private_key"]))
    for case in seal_vectors["cases"]:
        envelope = bytes.fromhex(case["envelope"])
        info = bytes.fromhex(case["info"])
        plaintext = bytes.fromhex(case["plaintext"])
        assert envelope[:14] == reference_header(private.public_key())
        assert len(envelope) == len(plaintext) + ENVELOPE_OVERHEAD
        assert open_sealed(envelope, private, info=info) == plaintext
        assert reference_open(private, envelope, info) == plaintext


def test_envelope_vectors_regenerate_exactly(seal_vectors: dict, legacy_vectors: dict) -> None:
    assert make_seal_vectors(2) == seal_vectors
    assert make_seal_vectors(1) == legacy_vectors


def test_legacy_envelopes_still_open(legacy_vectors: dict) -> None:
    """Format 1 (no key id) is what outboxes and wrapped data keys already hold."""
    private = ServerPrivateKey.from_bytes(bytes.fromhex(legacy_vectors["private_key"]))
    ring = ServerKeyring([generate_server_key(), private])  # rotated: the old key second
    for case in legacy_vectors["cases"]:
        envelope = bytes.fromhex(case["envelope"])
        assert envelope[:6] == DMT_HEADER_V1 and envelope_key_id(envelope) is None
        info, plaintext = bytes.fromhex(case["info"]), bytes.fromhex(case["plaintext"])
        assert open_sealed(envelope, private, info=info) == plaintext
        assert open_sealed(envelope, ring, info=info) == plaintext
        assert reference_open_v1(private, envelope, info) == plaintext
        _assert_invalid(lambda e=envelope, i=info: open_sealed(e, _OTHER, info=i))


def test_reference_opens_what_seal_makes() -> None:
    key = generate_server_key()
    for plaintext, info in [(b"", b""), (b"x" * 1000, b"ctx"), (os.urandom(77), b"")]:
        envelope = seal(plaintext, key.public_key(), info=info)
        assert envelope[:14] == reference_header(key.public_key())
        assert reference_open(key, envelope, info) == plaintext


# --- round trips --------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_key_round_trip(raw: bytes) -> None:
    private = ServerPrivateKey(x25519.X25519PrivateKey.from_private_bytes(raw))
    public = private.public_key()
    assert ServerPrivateKey.from_bytes(private.to_bytes()) == private
    assert ServerPublicKey.from_bytes(public.to_bytes()) == public
    assert ServerPublicKey.from_bytes(public.to_bytes()).raw_bytes() == public.raw_bytes()
    assert raw.hex() not in repr(private) and private.fingerprint() == public.fingerprint()


_KEY = generate_server_key()
_OTHER = generate_server_key()


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=2048), st.binary(max_size=64))
def test_envelope_round_trip(plaintext: bytes, info: bytes) -> None:
    envelope = seal(plaintext, _KEY.public_key(), info=info)
    assert len(envelope) == len(plaintext) + ENVELOPE_OVERHEAD
    assert open_sealed(envelope, _KEY, info=info) == plaintext
    assert seal(plaintext, _KEY.public_key(), info=info) != envelope  # fresh ephemeral key
    _assert_invalid(lambda: open_sealed(envelope, _OTHER, info=info))
    _assert_invalid(lambda: open_sealed(envelope, _KEY, info=info + b"x"))


# --- tampering ----------------------------------------------------------------------------------
def _assert_invalid(call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidPackage) as caught:
        call()
    err = caught.value
    assert type(err) is InvalidPackage
    assert err.args == () and str(err) == ""
    assert err.__cause__ is None and err.__context__ is None


def test_every_bit_flip_fails() -> None:
    envelope = seal(b"a short share package body", _KEY.public_key())
    for i in range(len(envelope)):
        for bit in range(8):
            altered = bytearray(envelope)
            altered[i] ^= 1 << bit
            _assert_invalid(lambda a=bytes(altered): open_sealed(a, _KEY))


def test_every_truncation_and_extension_fails() -> None:
    envelope = seal(b"payload", _KEY.public_key())
    for n in range(len(envelope)):
        _assert_invalid(lambda n=n: open_sealed(envelope[:n], _KEY))
    for tail in (b"\x00", b"x" * 17):
        _assert_invalid(lambda t=tail: open_sealed(envelope + t, _KEY))


def test_header_variants_fail() -> None:
    """Other versions or suites, even re-encrypted under the altered header, do not open."""
    envelope = seal(b"payload", _KEY.public_key())
    kid, body = envelope[6:14], envelope[14:]
    for prefix in (b"DMT\x03\x00\x01", b"DMT\x02\x00\x02", b"DMX\x02\x00\x01",
                   b"dmt\x02\x00\x01"):
        _assert_invalid(lambda p=prefix: open_sealed(p + kid + body, _KEY))
    _assert_invalid(lambda: open_sealed(DMT_HEADER_V1 + body, _KEY))  # no downgrade to v1
    sk_e = hashlib.sha256(b"e").digest()
    for header in (b"DMT\x03\x00\x01" + kid, DMT_HEADER_V1 + kid):
        enc, ct = reference_hpke_seal(_KEY.public_key().raw_bytes(), sk_e, header, b"p")
        _assert_invalid(lambda h=header, e=enc, c=ct: open_sealed(h + e + c, _KEY))


# --- key ids and rotation -------------------------------------------------------------------
def test_key_id_is_the_release_convention() -> None:
    """16 hex digits of SHA-256 over the raw public key, as dmt_privacy.release names keys."""
    from dmt_privacy.release import _key_id as release_key_id

    public = _KEY.public_key()
    assert public.key_id == release_key_id(public.raw_bytes()) == public.fingerprint()
    assert _KEY.key_id == public.key_id
    assert envelope_key_id(seal(b"x", public)) == public.key_id
    assert envelope_key_id(b"DMT") is None and envelope_key_id("no") is None  # type: ignore[arg-type]


def test_keyring_opens_each_key_by_its_id() -> None:
    old, new = generate_server_key(), generate_server_key()
    ring = ServerKeyring([new, old])
    assert ring.current == new and ring.public_key() == new.public_key()
    assert ring.key_ids == (new.key_id, old.key_id) and len(ring) == 2
    for key in (old, new):
        assert open_sealed(seal(b"p", key.public_key(), info=b"i"), ring, info=b"i") == b"p"
    _assert_invalid(lambda: open_sealed(seal(b"p", _OTHER.public_key()), ring))
    assert "PRIVATE" not in repr(ring) and old.key_id in repr(ring)


def test_unknown_key_id_is_refused_without_decrypting(monkeypatch: pytest.MonkeyPatch) -> None:
    """The key id picks the key: no trial decryption, so no key is even tried."""
    import dmt_privacy.seal as seal_module

    calls = []
    real = seal_module._SUITE

    class Counting:
        encrypt = real.encrypt

        def decrypt(self, *args: object, **kwargs: object) -> bytes:
            calls.append(1)
            return real.decrypt(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(seal_module, "_SUITE", Counting())
    ring = ServerKeyring([generate_server_key() for _ in range(3)] + [_KEY])
    _assert_invalid(lambda: open_sealed(seal(b"p", _OTHER.public_key()), ring))
    assert calls == []
    assert open_sealed(seal(b"p", _KEY.public_key()), ring) == b"p"
    assert calls == [1]  # exactly the named key


def test_a_key_id_naming_another_held_key_fails() -> None:
    """Swapping the key id for another key the server holds does not open the envelope."""
    old, new = generate_server_key(), generate_server_key()
    envelope = seal(b"p", old.public_key())
    swapped = envelope[:6] + bytes.fromhex(new.key_id) + envelope[14:]
    _assert_invalid(lambda: open_sealed(swapped, ServerKeyring([new, old])))


def test_keyring_errors(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="one or more"):
        ServerKeyring([])
    with pytest.raises(ValidationError, match="twice"):
        ServerKeyring([_KEY, _KEY])
    with pytest.raises(ValidationError, match="at most"):
        ServerKeyring([generate_server_key() for _ in range(MAX_KEYRING_KEYS + 1)])
    with pytest.raises(ValidationError, match="ServerKeyring"):
        open_sealed(b"", _KEY.public_key())  # type: ignore[arg-type]
    paths = []
    for i, key in enumerate((_KEY, _OTHER)):
        save_private_key(key, tmp_path / f"k{i}")
        paths.append(tmp_path / f"k{i}")
    assert load_keyring(paths).key_ids == (_KEY.key_id, _OTHER.key_id)
    assert load_keyring(paths[0]).current == _KEY


def test_header_must_be_bound_as_info() -> None:
    """The same bytes under the right header but without the header bound in as info."""
    sk_e = hashlib.sha256(b"e").digest()
    enc, ct = reference_hpke_seal(_KEY.public_key().raw_bytes(), sk_e, b"", b"p")
    _assert_invalid(lambda: open_sealed(reference_header(_KEY.public_key()) + enc + ct, _KEY))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bytes_fail(data: bytes) -> None:
    _assert_invalid(lambda: open_sealed(data, _KEY))
    _assert_invalid(lambda: open_sealed(reference_header(_KEY.public_key()) + data, _KEY))


def test_non_bytes_envelopes_fail() -> None:
    for value in (None, 12, "DMT", [1, 2], 10**12):
        _assert_invalid(lambda v=value: open_sealed(v, _KEY))  # type: ignore[arg-type]


def test_low_order_enc_fails() -> None:
    envelope = seal(b"payload", _KEY.public_key())
    for enc in (b"\x00" * 32, b"\x01" + b"\x00" * 31, b"\xff" * 32):
        _assert_invalid(lambda e=enc: open_sealed(envelope[:6] + e + envelope[38:], _KEY))


def test_wrong_key_types_are_programming_errors() -> None:
    with pytest.raises(ValidationError, match="public_key"):
        seal(b"x", _KEY)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="ServerPrivateKey"):
        open_sealed(b"x", _KEY.public_key())  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="plaintext must be bytes"):
        seal("text", _KEY.public_key())  # type: ignore[arg-type]


# --- key format errors ----------------------------------------------------------------------------
def test_key_format_errors() -> None:
    public = _KEY.public_key().to_bytes()
    private = _KEY.to_bytes()
    cases = [
        (lambda: ServerPublicKey.from_bytes(private), "Expected a public key, got a private"),
        (lambda: ServerPrivateKey.from_bytes(public), "Expected a private key, got a public"),
        (lambda: ServerPublicKey.from_bytes(public[:-1]), "44 bytes long, got 43"),
        (lambda: ServerPublicKey.from_bytes(public + b"\x00"), "44 bytes long, got 45"),
        (lambda: ServerPublicKey.from_bytes(b"PK" + public[2:]), "starts with b'PK"),
        (lambda: ServerPublicKey.from_bytes(b""), "does not start with b'DMTK' (0 bytes"),
        (lambda: ServerPublicKey.from_bytes(public[:4] + b"\x02" + public[5:]), "version 2"),
        (lambda: ServerPublicKey.from_bytes(public[:5] + b"\x07" + public[6:]), "0x07 is unknown"),
        (lambda: ServerPublicKey.from_bytes(public[:6] + b"\x00\x09" + public[8:]),
         "suite 0x0009"),
        (lambda: ServerPublicKey.from_bytes(public[:20] + bytes([public[20] ^ 1]) + public[21:]),
         "checksum"),
        (lambda: ServerPrivateKey.from_bytes(private[:-4] + b"\x00\x00\x00\x00"), "checksum"),
        (lambda: ServerPublicKey.from_bytes("DMTK"), "must be bytes"),  # type: ignore[arg-type]
        (lambda: ServerPublicKey(_KEY.key), "X25519PublicKey"),  # type: ignore[arg-type]
    ]
    for call, message in cases:
        with pytest.raises(ValidationError, match=message.replace("(", r"\(")):
            call()


def test_a_private_key_error_quotes_no_byte_of_the_key() -> None:
    """Raw key bytes passed where a key file is expected: the message quoted the first four
    bytes, 32 bits of the secret (helper-68)."""
    raw = _KEY.key.private_bytes_raw()
    with pytest.raises(ValidationError, match="private key: it does not start") as caught:
        ServerPrivateKey.from_bytes(raw)
    assert repr(raw[:4])[2:-1] not in str(caught.value) and raw[:2].hex() not in str(caught.value)


def test_low_order_public_key_is_refused() -> None:
    body = b"DMTK\x01\x01\x00\x01" + b"\x00" * 32
    data = body + hashlib.sha256(body).digest()[:4]
    with pytest.raises(ValidationError, match="low-order"):
        ServerPublicKey.from_bytes(data)


# --- key files ------------------------------------------------------------------------------------
def test_key_files(tmp_path: Path) -> None:
    key = generate_server_key()
    priv, pub = tmp_path / "server.key", tmp_path / "server.pub"
    save_private_key(key, priv)
    save_public_key(key.public_key(), pub)
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert load_private_key(priv) == key
    assert load_public_key(pub) == key.public_key()
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["server.key", "server.pub"]  # no temp
    other = generate_server_key()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_private_key(other, priv)
    assert load_private_key(priv) == key
    save_private_key(other, priv, overwrite=True)
    assert load_private_key(priv) == other
    with pytest.raises(ValidationError, match="Expected a private key"):
        _load_private_from_public(pub)
    with pytest.raises(ValidationError, match="call .public_key"):
        save_public_key(key, tmp_path / "x.pub")  # type: ignore[arg-type]


def _load_private_from_public(pub: Path) -> None:
    os.chmod(pub, 0o600)
    load_private_key(pub)


def test_private_key_file_permissions_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "server.key"
    save_private_key(generate_server_key(), path)
    os.chmod(path, 0o644)
    with pytest.raises(ValidationError, match="chmod 600"):
        load_private_key(path)


def test_truncated_key_file(tmp_path: Path) -> None:
    path = tmp_path / "server.pub"
    path.write_bytes(_KEY.public_key().to_bytes()[:30])
    with pytest.raises(ValidationError, match="truncated"):
        load_public_key(path)
    path.write_bytes(_KEY.public_key().to_bytes() + b"\n" * 100)
    with pytest.raises(ValidationError, match="45"):
        load_public_key(path)


def test_format_constants() -> None:
    assert ENVELOPE_OVERHEAD == 6 + 8 + 32 + 16
    assert struct.unpack(">3sBH", DMT_PREFIX) == (b"DMT", 2, 1)
    assert struct.unpack(">3sBH", DMT_HEADER_V1) == (b"DMT", 1, 1)


if __name__ == "__main__":
    VECTORS.mkdir(exist_ok=True)
    SEAL_VECTORS.write_text(json.dumps(make_seal_vectors(2), indent=2) + "\n")
    print(f"wrote {SEAL_VECTORS}")
