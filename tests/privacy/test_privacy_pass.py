"""Privacy Pass tokens (RFC 9578 type 0x0002 over RFC 9474 RSABSSA-SHA384-PSS-Deterministic).

Known answers: RFC 9474 Appendix A's RSABSSA-SHA384-PSS-Deterministic vector
(``vectors/rfc9474_pss_deterministic.json``) reproduced step by step: the
EMSA-PSS encoding, the blinded message, the blind signature and the final
signature, which ``cryptography``'s own RSASSA-PSS verifies.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from dmt_privacy.errors import ValidationError
from dmt_privacy.privacy_pass import (
    CHALLENGE_DIGEST,
    TOKEN_CHALLENGE,
    TOKEN_SIZE,
    InvalidToken,
    IssuerKey,
    IssuerPublicKey,
    Token,
    TokenWallet,
    _emsa_pss_encode,
    _pss_verify,
    blind,
    blind_sign,
    finalize,
    parse_token_requests,
    request_tokens,
    verify_token,
)

VECTOR = json.loads((Path(__file__).parent / "vectors" / "rfc9474_pss_deterministic.json")
                    .read_text())
ISSUER = IssuerKey.generate()


def _vector_key() -> IssuerKey:
    v = {k: int(VECTOR[k], 16) for k in ("p", "q", "n", "e", "d")}
    numbers = rsa.RSAPrivateNumbers(
        p=v["p"], q=v["q"], d=v["d"], dmp1=rsa.rsa_crt_dmp1(v["d"], v["p"]),
        dmq1=rsa.rsa_crt_dmq1(v["d"], v["q"]), iqmp=rsa.rsa_crt_iqmp(v["p"], v["q"]),
        public_numbers=rsa.RSAPublicNumbers(v["e"], v["n"]))
    return IssuerKey(numbers.private_key())


def test_rfc9474_deterministic_vector() -> None:
    key = _vector_key()
    public = key.public_key()
    msg, salt = bytes.fromhex(VECTOR["msg"]), bytes.fromhex(VECTOR["salt"])
    assert _emsa_pss_encode(msg, public.n.bit_length() - 1, salt).hex() == VECTOR["encoded_msg"]
    inv = int(VECTOR["inv"], 16)
    blinded, inv_bytes = blind(public, msg, salt=salt, r=pow(inv, -1, public.n))
    assert blinded.hex() == VECTOR["blinded_msg"] and inv_bytes.hex() == VECTOR["inv"]
    blind_sig = blind_sign(key, blinded)
    assert blind_sig.hex() == VECTOR["blind_sig"]
    sig = finalize(public, msg, blind_sig, inv_bytes)
    assert sig.hex() == VECTOR["sig"]
    assert _pss_verify(public, msg, sig) and not _pss_verify(public, msg + b"x", sig)


def test_challenge_is_rfc9577_encoded() -> None:
    assert TOKEN_CHALLENGE == (b"\x00\x02" + b"\x00\x03dmt" + b"\x00"
                               + b"\x00\x11dmt.share-package")
    assert len(CHALLENGE_DIGEST) == 32


def test_issuer_key_serialization_is_rfc9578s() -> None:
    public = ISSUER.public_key()
    data = public.to_bytes()
    assert data[:4] == b"\x30\x82\x01\x52"  # 338 bytes of SubjectPublicKeyInfo for 2048 bits
    assert bytes.fromhex("06092a864886f70d01010a") in data  # id-RSASSA-PSS
    assert IssuerPublicKey.from_bytes(data) == public
    assert len(public.token_key_id) == 32 and public.key_id == public.token_key_id.hex()[:16]
    with pytest.raises(ValidationError):
        IssuerPublicKey.from_bytes(data[:-1])
    with pytest.raises(ValidationError):
        IssuerPublicKey(rsa.generate_private_key(65537, 1024).public_key())  # too small
    assert IssuerKey.from_pem(ISSUER.to_pem()).public_key() == public
    assert "PRIVATE" not in repr(ISSUER)


def test_issue_and_verify_a_batch() -> None:
    public = ISSUER.public_key()
    pending = request_tokens(public, 3)
    blinded = parse_token_requests(pending.body, public)
    response = b"".join(blind_sign(ISSUER, m) for m in blinded)
    tokens = pending.finalize(response)
    assert len({t.token_id for t in tokens}) == 3
    for token in tokens:
        assert len(token.to_bytes()) == TOKEN_SIZE == 354
        assert verify_token(token.to_bytes(), public) == token
    with pytest.raises(InvalidToken):  # another period's key
        verify_token(tokens[0], IssuerKey.generate().public_key())
    with pytest.raises(InvalidToken):  # a response that is not the issuer's
        pending.finalize(response[:256] * 3)


def test_the_issuer_never_sees_the_nonce_or_the_token() -> None:
    """Unlinkability, as far as a test can show it: nothing the issuer receives contains the
    token's nonce, its input or its authenticator, and the same token input blinds differently
    every time (a fresh blinding factor), so the blinded message says nothing about it."""
    public = ISSUER.public_key()
    pending = request_tokens(public, 4)
    tokens = pending.finalize(b"".join(blind_sign(ISSUER, m)
                                       for m in parse_token_requests(pending.body, public)))
    for token in tokens:
        for secret in (token.nonce, token.authenticator, token.token_input()):
            assert secret not in pending.body
    again = [blind(public, tokens[0].token_input())[0] for _ in range(2)]
    assert again[0] != again[1]


def test_reprs_show_no_token_secret() -> None:
    """A token is a bearer credential until spent, and a request's blinding inverses link a
    token to the request the issuer saw: printed or logged, neither may show them (the
    dataclasses' reprs printed every nonce, inverse and authenticator: helper-68)."""
    public = ISSUER.public_key()
    pending = request_tokens(public, 2)
    tokens = pending.finalize(b"".join(blind_sign(ISSUER, m)
                                       for m in parse_token_requests(pending.body, public)))
    shown = repr(pending) + "".join(repr(t) for t in tokens)
    secrets_ = [*pending.nonces, *pending.inverses, pending.body,
                *(t.authenticator for t in tokens)]
    for secret in secrets_:
        assert repr(secret)[2:-1][:24] not in shown and secret.hex()[:16] not in shown


@settings(max_examples=25, deadline=None)
@given(st.integers(0, TOKEN_SIZE - 1), st.integers(0, 7))
def test_every_bit_flip_of_a_token_fails(position: int, bit: int) -> None:
    token = _one_token()
    altered = bytearray(token.to_bytes())
    altered[position] ^= 1 << bit
    with pytest.raises(InvalidToken):
        verify_token(bytes(altered), ISSUER.public_key())


_TOKEN: list[Token] = []


def _one_token() -> Token:
    if not _TOKEN:
        pending = request_tokens(ISSUER.public_key(), 1)
        _TOKEN.append(pending.finalize(blind_sign(ISSUER, pending.body[3:]))[0])
    return _TOKEN[0]


def test_malformed_requests_are_refused() -> None:
    public = ISSUER.public_key()
    body = request_tokens(public, 1).body
    for bad in (b"", body[:-1], b"\x00\x01" + body[2:], body[:2] + bytes([body[2] ^ 1]) + body[3:],
                body * 65):
        with pytest.raises(InvalidToken):
            parse_token_requests(bad, public)
    with pytest.raises(InvalidToken):
        blind_sign(ISSUER, (public.n + 1).to_bytes(256, "big"))
    with pytest.raises(ValidationError):
        request_tokens(public, 0)


def test_wallet_round_trip_and_take() -> None:
    token = _one_token()
    wallet = TokenWallet([token, token])
    assert len(TokenWallet.from_bytes(wallet.to_bytes())) == 2
    assert wallet.take(ISSUER.public_key()) == token
    assert wallet.discard_other_periods(IssuerKey.generate().public_key()) == 1
    with pytest.raises(ValidationError, match="fetch tokens"):
        wallet.take()
    with pytest.raises(ValidationError):
        TokenWallet.from_bytes(b"DMTW\x01" + b"x")
