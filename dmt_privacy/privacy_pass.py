"""Unlinkable rate-limiting tokens: Privacy Pass, publicly verifiable (RFC 9578, type 0x0002).

A server limits how many share packages one device may send without being
able to tell which packages came from the same device. Once per period an
attested device asks the server's *issuer* for N tokens; it sends blinded
messages, so the issuer signs without seeing what it signs; the device
unblinds the signatures into tokens and puts one token in each package it
seals (:func:`dmt_privacy.package.seal_package`). The server accepts a package
only with a valid, unspent token and records each token as spent. The issuer
knows which device received N signatures, but a token carries nothing the
issuer saw (RSA blind signatures are perfectly blind), so a spent token does
not name its device.

The construction is RFC 9578's token type 0x0002: RSABSSA-SHA384-PSS-Deterministic
(RFC 9474: a 2048-bit RSA key, EMSA-PSS with SHA-384, MGF1-SHA-384 and a
48-byte random salt; no message randomizer, the token input is the message)::

    Token          = token_type u16 || nonce[32] || challenge_digest[32]
                     || token_key_id[32] || authenticator[256]           (354 bytes)
    token_input    = the first 98 bytes of Token
    TokenRequest   = token_type u16 || truncated_token_key_id u8 || blinded_msg[256]
    TokenResponse  = blind_sig[256]

``token_key_id`` is SHA-256 over the issuer key as RFC 9578 serializes it (a
SubjectPublicKeyInfo with the id-RSASSA-PSS algorithm identifier, SHA-384,
MGF1-SHA-384, salt length 48); ``challenge_digest`` is SHA-256 over the
TokenChallenge the token is bound to (RFC 9577: issuer name ``dmt``): for share
packages an empty redemption context and origin info ``dmt.share-package``;
:func:`token_challenge` makes others (a device's report on one new version,
:mod:`dmt_model.version_check`, is bound to that version). The authenticator
is an ordinary RSASSA-PSS signature over the token input: :func:`verify_token` checks it with
``cryptography``. A batch of requests is their concatenation, and so is its
answer (:mod:`dmt_model.server.issuer` serves them).

Layers: :class:`IssuerKey` / :class:`IssuerPublicKey`, :func:`request_tokens`,
:class:`PendingTokens`, :func:`verify_token` and :class:`TokenWallet` are the
recipes; ``blind``, ``blind_sign`` and ``finalize`` are RFC 9474's sharp
primitives (a fixed salt or blinding factor is for known-answer tests only).
The issuer's modular exponentiation runs on Python integers: it is blinded
(a fresh random factor per signature) against timing attacks on the key, and
each signature is checked before it leaves (against fault attacks).

Device attestation (who may receive tokens) is the deployment's: App Attest
(iOS) or Play Integrity (Android) evidence goes to the issuer's ``attest``
callback (:class:`dmt_model.server.issuer.TokenIssuer`).

This module imports only ``cryptography`` and the standard library (no torch).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import secrets
import struct
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from dmt_privacy.errors import DMTError, ValidationError

__all__ = [
    "CHALLENGE_DIGEST",
    "MAX_BATCH",
    "TOKEN_CHALLENGE",
    "TOKEN_REQUEST_SIZE",
    "TOKEN_SIZE",
    "TOKEN_TYPE",
    "InvalidToken",
    "IssuerKey",
    "IssuerPublicKey",
    "PendingTokens",
    "Token",
    "TokenWallet",
    "blind",
    "blind_sign",
    "fetch_issuer_key",
    "fetch_tokens",
    "finalize",
    "parse_token_requests",
    "request_tokens",
    "token_challenge",
    "verify_token",
]

TOKEN_TYPE = 0x0002
_NK = 256  # bytes of a 2048-bit modulus
_KEY_BITS = 2048
_SALT_SIZE = 48  # SHA-384's output length, as RFC 9578 requires
_NONCE_SIZE = 32
_ID_SIZE = 32
TOKEN_SIZE = 2 + _NONCE_SIZE + _ID_SIZE + _ID_SIZE + _NK
TOKEN_REQUEST_SIZE = 2 + 1 + _NK
#: The most tokens one request may ask for.
MAX_BATCH = 64


def _challenge(issuer_name: bytes, redemption_context: bytes, origin_info: bytes) -> bytes:
    """An RFC 9577 TokenChallenge, encoded."""
    return (struct.pack(">HH", TOKEN_TYPE, len(issuer_name)) + issuer_name
            + bytes([len(redemption_context)]) + redemption_context
            + struct.pack(">H", len(origin_info)) + origin_info)


def token_challenge(origin_info: bytes, redemption_context: bytes = b"") -> bytes:
    """An RFC 9577 TokenChallenge from issuer ``dmt``, encoded: what a token is bound to.
    ``redemption_context`` is empty or 32 bytes (RFC 9577 §2.1.1), e.g. a hash naming the
    one occasion a token may be spent on."""
    if not isinstance(origin_info, bytes) or not 0 < len(origin_info) < 2 ** 16:
        raise ValidationError(f"origin_info must be 1 to 65535 bytes, got {origin_info!r:.80}.")
    if not isinstance(redemption_context, bytes) or len(redemption_context) not in (0, 32):
        raise ValidationError(f"redemption_context must be empty or 32 bytes (RFC 9577), got "
                              f"{redemption_context!r:.80}.")
    return _challenge(b"dmt", redemption_context, origin_info)


#: dmt's TokenChallenge for share packages: every package redeems against this one challenge.
TOKEN_CHALLENGE = token_challenge(b"dmt.share-package")
CHALLENGE_DIGEST = hashlib.sha256(TOKEN_CHALLENGE).digest()

_SHA384 = bytes.fromhex("0609608648016503040202")  # OID 2.16.840.1.101.3.4.2.2
#: AlgorithmIdentifier id-RSASSA-PSS (SHA-384, MGF1-SHA-384, salt 48), as RFC 9578 §6.5.
_PSS_ALGORITHM = bytes.fromhex(
    "303d06092a864886f70d01010a3030"
    "a00d300b" + _SHA384.hex()
    + "a11a301806092a864886f70d010108300b" + _SHA384.hex()
    + "a203020130")


class InvalidToken(DMTError):
    """A token, request or response failed verification. Says nothing more."""


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _i2osp(x: int, size: int) -> bytes:
    return x.to_bytes(size, "big")


def _os2ip(data: bytes) -> int:
    return int.from_bytes(data, "big")


# --- keys -----------------------------------------------------------------------------------
class IssuerPublicKey:
    """The issuer's RSA public key for one period: what devices blind to and servers verify."""

    __slots__ = ("_key", "_numbers", "_spki")

    def __init__(self, key: rsa.RSAPublicKey) -> None:
        if not isinstance(key, rsa.RSAPublicKey) or key.key_size < _KEY_BITS:
            raise ValidationError(f"An issuer key is an RSA public key of {_KEY_BITS} bits "
                                  "(tokens of type 0x0002 need exactly 2048), got "
                                  f"{getattr(key, 'key_size', type(key).__name__)}.")
        self._key = key
        self._numbers = key.public_numbers()
        pkcs1 = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
        bits = b"\x03" + _der_length(len(pkcs1) + 1) + b"\x00" + pkcs1
        body = _PSS_ALGORITHM + bits
        self._spki = b"\x30" + _der_length(len(body)) + body

    @property
    def n(self) -> int:
        return self._numbers.n

    @property
    def e(self) -> int:
        return self._numbers.e

    @property
    def key(self) -> rsa.RSAPublicKey:
        return self._key

    @property
    def size(self) -> int:
        """Bytes of the modulus (RFC 9474's modulus_len)."""
        return (self._numbers.n.bit_length() + 7) // 8

    @property
    def token_key_id(self) -> bytes:
        """SHA-256 over the RFC 9578 serialization (:meth:`to_bytes`): 32 bytes."""
        return hashlib.sha256(self._spki).digest()

    @property
    def key_id(self) -> str:
        """The first 16 hex digits of :attr:`token_key_id`, for logs."""
        return self.token_key_id.hex()[:16]

    def to_bytes(self) -> bytes:
        """SubjectPublicKeyInfo (DER) with the id-RSASSA-PSS identifier (RFC 9578 §6.5)."""
        return self._spki

    @classmethod
    def from_bytes(cls, data: bytes) -> IssuerPublicKey:
        if not isinstance(data, bytes) or len(data) < 4 + len(_PSS_ALGORITHM) + 5:
            raise ValidationError("An issuer public key is an RSASSA-PSS SubjectPublicKeyInfo.")
        body_start = 4 if data[1] == 0x82 else 3 if data[1] == 0x81 else 2
        if data[0] != 0x30 or data[body_start:body_start + len(_PSS_ALGORITHM)] != _PSS_ALGORITHM:
            raise ValidationError("Not an RSASSA-PSS (SHA-384, MGF1-SHA-384, salt 48) issuer "
                                  "key in RFC 9578's encoding.")
        bits = data[body_start + len(_PSS_ALGORITHM):]
        header = 4 if bits[1] == 0x82 else 3 if bits[1] == 0x81 else 2
        try:
            key = serialization.load_der_public_key(bits[header + 1:])
        except ValueError as exc:
            raise ValidationError(f"The issuer key's RSA key is malformed ({exc}).") from None
        if not isinstance(key, rsa.RSAPublicKey):
            raise ValidationError("The issuer key is not an RSA key.")
        public = cls(key)
        if public.to_bytes() != data:
            raise ValidationError("The issuer key is not in RFC 9578's canonical encoding.")
        return public

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IssuerPublicKey) and self._spki == other._spki

    def __hash__(self) -> int:
        return hash(self._spki)

    def __repr__(self) -> str:
        return f"IssuerPublicKey(key_id={self.key_id!r})"


class IssuerKey:
    """The issuer's RSA private key for one period. Keep it on the server."""

    __slots__ = ("_key", "_numbers", "_public")

    def __init__(self, key: rsa.RSAPrivateKey) -> None:
        if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < _KEY_BITS:
            raise ValidationError(f"An issuer key is an RSA private key of {_KEY_BITS} bits.")
        self._key = key
        self._numbers = key.private_numbers()
        self._public = IssuerPublicKey(key.public_key())

    @classmethod
    def generate(cls) -> IssuerKey:
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=_KEY_BITS))

    def public_key(self) -> IssuerPublicKey:
        return self._public

    def to_pem(self) -> bytes:
        return self._key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())

    @classmethod
    def from_pem(cls, data: bytes) -> IssuerKey:
        key = serialization.load_pem_private_key(data, password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValidationError("The issuer key file does not hold an RSA key.")
        return cls(key)

    def _rsasp1(self, m: int) -> int:
        """m^d mod n by the CRT, blinded with a fresh random factor against timing attacks."""
        nums, n, e = self._numbers, self._public.n, self._public.e
        while True:
            r = secrets.randbelow(n - 2) + 2
            if math.gcd(r, n) == 1:
                break
        x = (m * pow(r, e, n)) % n
        sp, sq = pow(x, nums.dmp1, nums.p), pow(x, nums.dmq1, nums.q)
        s = sq + ((nums.iqmp * (sp - sq)) % nums.p) * nums.q
        return (s * pow(r, -1, n)) % n

    def __repr__(self) -> str:  # never the secret
        return f"IssuerKey(key_id={self._public.key_id!r})"


# --- RFC 9474 (RSABSSA-SHA384-PSS-Deterministic) ----------------------------------------------
def _mgf1_sha384(seed: bytes, length: int) -> bytes:
    out = b""
    counter = 0
    while len(out) < length:
        out += hashlib.sha384(seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    return out[:length]


def _emsa_pss_encode(msg: bytes, em_bits: int, salt: bytes) -> bytes:
    """RFC 8017 §9.1.1 with SHA-384 and MGF1-SHA-384."""
    em_len = (em_bits + 7) // 8
    m_hash = hashlib.sha384(msg).digest()
    if em_len < len(m_hash) + len(salt) + 2:
        raise ValidationError("The RSA modulus is too small for EMSA-PSS with SHA-384.")
    h = hashlib.sha384(b"\x00" * 8 + m_hash + salt).digest()
    db = b"\x00" * (em_len - len(salt) - len(h) - 2) + b"\x01" + salt
    masked = bytes(a ^ b for a, b in zip(db, _mgf1_sha384(h, len(db)), strict=True))
    clear = 8 * em_len - em_bits
    masked = bytes([masked[0] & (0xFF >> clear)]) + masked[1:]
    return masked + h + b"\xbc"


def blind(public_key: IssuerPublicKey, msg: bytes, *, salt: bytes | None = None,
          r: int | None = None) -> tuple[bytes, bytes]:
    """RFC 9474 Blind: (blinded_msg, inv). ``salt`` and ``r`` fixed: known-answer tests ONLY."""
    n, e = public_key.n, public_key.e
    salt = secrets.token_bytes(_SALT_SIZE) if salt is None else salt
    encoded = _emsa_pss_encode(msg, n.bit_length() - 1, salt)
    m = _os2ip(encoded)
    if math.gcd(m, n) != 1:
        raise ValidationError("The encoded message is not invertible modulo n.")
    while r is None:
        candidate = secrets.randbelow(n - 2) + 2
        if math.gcd(candidate, n) == 1:
            r = candidate
    inv = pow(r, -1, n)
    x = pow(r, e, n)
    return _i2osp((m * x) % n, public_key.size), _i2osp(inv, public_key.size)


def blind_sign(key: IssuerKey, blinded_msg: bytes) -> bytes:
    """RFC 9474 BlindSign: the blind signature, checked before it is returned."""
    public = key.public_key()
    if not isinstance(blinded_msg, bytes) or len(blinded_msg) != public.size:
        raise InvalidToken()
    m = _os2ip(blinded_msg)
    if m >= public.n:
        raise InvalidToken()
    s = key._rsasp1(m)
    if pow(s, public.e, public.n) != m:  # a faulty computation must not leak the key
        raise DMTError("The blind signature failed its own check; nothing was returned.")
    return _i2osp(s, public.size)


def finalize(public_key: IssuerPublicKey, msg: bytes, blind_sig: bytes, inv: bytes) -> bytes:
    """RFC 9474 Finalize: the signature over ``msg``, verified (``InvalidToken`` if not)."""
    if not isinstance(blind_sig, bytes) or len(blind_sig) != public_key.size:
        raise InvalidToken()
    n = public_key.n
    sig = _i2osp((_os2ip(blind_sig) * _os2ip(inv)) % n, public_key.size)
    if not _pss_verify(public_key, msg, sig):
        raise InvalidToken()
    return sig


def _pss_verify(public_key: IssuerPublicKey, msg: bytes, sig: bytes) -> bool:
    try:
        public_key.key.verify(sig, msg, padding.PSS(mgf=padding.MGF1(hashes.SHA384()),
                                                   salt_length=_SALT_SIZE), hashes.SHA384())
    except InvalidSignature:
        return False
    return True


# --- tokens ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Token:
    """One Privacy Pass token (RFC 9577 §2.2, type 0x0002): spend it once. A bearer
    credential until spent: its repr shows neither its nonce nor its authenticator."""

    nonce: bytes = field(repr=False)
    challenge_digest: bytes
    token_key_id: bytes
    authenticator: bytes = field(repr=False)
    token_type: int = TOKEN_TYPE

    def __post_init__(self) -> None:
        ok = (self.token_type == TOKEN_TYPE and len(self.nonce) == _NONCE_SIZE
              and len(self.challenge_digest) == _ID_SIZE and len(self.token_key_id) == _ID_SIZE
              and len(self.authenticator) == _NK)
        if not ok:
            raise ValidationError("Malformed token (type 0x0002: nonce, challenge digest and "
                                  "key id of 32 bytes, authenticator of 256).")

    def token_input(self) -> bytes:
        return (struct.pack(">H", self.token_type) + self.nonce + self.challenge_digest
                + self.token_key_id)

    @property
    def token_id(self) -> str:
        """What the server records as spent: the nonce, hex."""
        return self.nonce.hex()

    def to_bytes(self) -> bytes:
        return self.token_input() + self.authenticator

    @classmethod
    def from_bytes(cls, data: bytes) -> Token:
        if not isinstance(data, (bytes, bytearray)) or len(data) != TOKEN_SIZE:
            raise ValidationError(f"A token is {TOKEN_SIZE} bytes.")
        data = bytes(data)
        (token_type,) = struct.unpack(">H", data[:2])
        return cls(nonce=data[2:34], challenge_digest=data[34:66], token_key_id=data[66:98],
                   authenticator=data[98:], token_type=token_type)


def verify_token(token: Token | bytes, public_key: IssuerPublicKey, *,
                 challenge: bytes = TOKEN_CHALLENGE) -> Token:
    """The token if it is made for ``challenge`` (dmt's share packages unless given:
    :func:`token_challenge`) under ``public_key`` and authentic; else ``InvalidToken``.

    Spending is the caller's: record :attr:`Token.token_id` and refuse it a second time.
    """
    if not isinstance(challenge, bytes) or not challenge:
        raise ValidationError("challenge must be an encoded TokenChallenge (token_challenge).")
    try:
        parsed = token if isinstance(token, Token) else Token.from_bytes(token)
    except ValidationError:
        raise InvalidToken() from None
    if not (hmac.compare_digest(parsed.challenge_digest, hashlib.sha256(challenge).digest())
            and hmac.compare_digest(parsed.token_key_id, public_key.token_key_id)
            and _pss_verify(public_key, parsed.token_input(), parsed.authenticator)):
        raise InvalidToken()
    return parsed


@dataclass(frozen=True)
class PendingTokens:
    """The device's secrets while a token request is under way (nonces, blinding inverses):
    its repr shows none of them (with an inverse the issuer links a token to its request)."""

    public_key: IssuerPublicKey
    nonces: tuple[bytes, ...] = field(repr=False)
    inverses: tuple[bytes, ...] = field(repr=False)
    body: bytes = field(repr=False)
    challenge_digest: bytes = CHALLENGE_DIGEST

    def finalize(self, response: bytes) -> list[Token]:
        """Tokens from the issuer's response (``InvalidToken`` if any signature is wrong)."""
        if not isinstance(response, bytes) or len(response) != _NK * len(self.nonces):
            raise InvalidToken()
        tokens = []
        for i, (nonce, inv) in enumerate(zip(self.nonces, self.inverses, strict=True)):
            token = Token(nonce=nonce, challenge_digest=self.challenge_digest,
                          token_key_id=self.public_key.token_key_id, authenticator=b"\0" * _NK)
            sig = finalize(self.public_key, token.token_input(),
                           response[i * _NK:(i + 1) * _NK], inv)
            tokens.append(Token(nonce=nonce, challenge_digest=self.challenge_digest,
                                token_key_id=self.public_key.token_key_id, authenticator=sig))
        return tokens


def request_tokens(public_key: IssuerPublicKey, n: int, *,
                   challenge: bytes = TOKEN_CHALLENGE) -> PendingTokens:
    """Blinded requests for ``n`` tokens for ``challenge`` (dmt's share packages unless
    given: :func:`token_challenge`): send ``.body`` to the issuer, keep the rest secret."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_BATCH:
        raise ValidationError(f"n must be an int in 1..{MAX_BATCH}, got {n!r}.")
    if not isinstance(public_key, IssuerPublicKey) or public_key.size != _NK:
        raise ValidationError("public_key must be a 2048-bit IssuerPublicKey (token type "
                              f"0x0002), got {public_key!r}.")
    if not isinstance(challenge, bytes) or not challenge:
        raise ValidationError("challenge must be an encoded TokenChallenge (token_challenge).")
    digest = hashlib.sha256(challenge).digest()
    nonces, inverses, parts = [], [], []
    for _ in range(n):
        nonce = secrets.token_bytes(_NONCE_SIZE)
        token_input = (struct.pack(">H", TOKEN_TYPE) + nonce + digest
                       + public_key.token_key_id)
        blinded, inv = blind(public_key, token_input)
        nonces.append(nonce)
        inverses.append(inv)
        parts.append(struct.pack(">HB", TOKEN_TYPE, public_key.token_key_id[-1]) + blinded)
    return PendingTokens(public_key, tuple(nonces), tuple(inverses), b"".join(parts), digest)


def parse_token_requests(body: bytes, public_key: IssuerPublicKey) -> list[bytes]:
    """The blinded messages of a batch of TokenRequests (issuer side); ``InvalidToken`` if bad."""
    if (not isinstance(body, bytes) or not body or len(body) % TOKEN_REQUEST_SIZE
            or len(body) // TOKEN_REQUEST_SIZE > MAX_BATCH):
        raise InvalidToken()
    blinded = []
    for start in range(0, len(body), TOKEN_REQUEST_SIZE):
        token_type, truncated = struct.unpack(">HB", body[start:start + 3])
        if token_type != TOKEN_TYPE or truncated != public_key.token_key_id[-1]:
            raise InvalidToken()
        blinded.append(body[start + 3:start + TOKEN_REQUEST_SIZE])
    return blinded


# --- the device's wallet ----------------------------------------------------------------------
class TokenWallet:
    """Unspent tokens on the device. The app persists :meth:`to_bytes` (e.g. in the keychain).

    Tokens are spent in random order, so the order of issuance says nothing
    about the order of packages.
    """

    MAGIC = b"DMTW\x01"

    def __init__(self, tokens: Iterable[Token] = ()) -> None:
        self._tokens = list(tokens)
        if not all(isinstance(t, Token) for t in self._tokens):
            raise ValidationError("A TokenWallet holds Token objects.")

    def add(self, tokens: Iterable[Token]) -> None:
        more = list(tokens)
        if not all(isinstance(t, Token) for t in more):
            raise ValidationError("A TokenWallet holds Token objects.")
        self._tokens += more

    def take(self, public_key: IssuerPublicKey | None = None) -> Token:
        """Remove and return one token (of ``public_key``'s period when given)."""
        usable = [i for i, t in enumerate(self._tokens)
                  if public_key is None or t.token_key_id == public_key.token_key_id]
        if not usable:
            raise ValidationError("The wallet holds no token for this period; fetch tokens "
                                  "(fetch_tokens) before sharing.")
        return self._tokens.pop(usable[secrets.randbelow(len(usable))])

    def discard_other_periods(self, public_key: IssuerPublicKey) -> int:
        """Drop tokens of other issuer keys (expired periods); how many were dropped."""
        before = len(self._tokens)
        self._tokens = [t for t in self._tokens if t.token_key_id == public_key.token_key_id]
        return before - len(self._tokens)

    def __len__(self) -> int:
        return len(self._tokens)

    def __iter__(self) -> Iterator[Token]:
        return iter(list(self._tokens))

    def to_bytes(self) -> bytes:
        return self.MAGIC + b"".join(t.to_bytes() for t in self._tokens)

    @classmethod
    def from_bytes(cls, data: bytes) -> TokenWallet:
        if not isinstance(data, bytes) or data[:5] != cls.MAGIC or (len(data) - 5) % TOKEN_SIZE:
            raise ValidationError("Not a dmt token wallet (magic DMTW, version 1).")
        return cls(Token.from_bytes(data[i:i + TOKEN_SIZE])
                   for i in range(5, len(data), TOKEN_SIZE))


# --- HTTP client (the service's /v1/tokens endpoints) ----------------------------------------
def fetch_issuer_key(base_url: str, *, timeout: float = 10.0) -> IssuerPublicKey:
    """``GET {base_url}/v1/tokens/key``: the issuer key of the current period.

    Check it is the key every device sees (key consistency, RFC 9576 §6.2), e.g.
    by comparing its ``key_id`` with what other channels publish: a per-device
    key would let the issuer tag a device's tokens.
    """
    with urllib.request.urlopen(f"{base_url.rstrip('/')}/v1/tokens/key",  # noqa: S310
                                timeout=timeout) as response:
        return IssuerPublicKey.from_bytes(response.read(64 * 1024))


def fetch_tokens(base_url: str, attestation: bytes, n: int, *,
                 public_key: IssuerPublicKey | None = None,
                 timeout: float = 30.0) -> list[Token]:
    """``POST {base_url}/v1/tokens``: ``n`` tokens for this period, unblinded and verified.

    ``attestation``: the platform's evidence that this is a genuine app on a
    genuine device (App Attest assertion, Play Integrity token), sent in the
    ``X-DMT-Attestation`` header; the issuer counts tokens per attested device.
    Raises ``urllib.error.HTTPError`` (403 not attested, 429 over the period's limit).
    """
    key = public_key or fetch_issuer_key(base_url, timeout=timeout)
    pending = request_tokens(key, n)
    request = urllib.request.Request(  # noqa: S310
        f"{base_url.rstrip('/')}/v1/tokens", data=pending.body, method="POST",
        headers={"Content-Type": "application/private-token-request",
                 "X-DMT-Attestation": base64.b64encode(attestation).decode()})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        return pending.finalize(response.read(_NK * MAX_BATCH + 1))
