"""The per-device package limit: issuance (attested, N per period), redemption (valid, unspent,
this period or the last), double spend, unlinkability as far as a test can show it, and the
HTTP endpoints with the dmt_privacy client."""

from __future__ import annotations

import base64
import contextlib
import io
import sqlite3
import threading

import pytest
from fastapi.testclient import TestClient
from test_ingest import SCHEMA, package

from dmt_model.server import ServerPolicy
from dmt_model.server.ingest import Ingestor
from dmt_model.server.issuer import TokenIssuer, TokenRefused
from dmt_model.server.service import create_app
from dmt_privacy import privacy_pass
from dmt_privacy.errors import ValidationError
from dmt_privacy.package import seal_package
from dmt_privacy.privacy_pass import IssuerKey, Token, fetch_tokens, request_tokens
from dmt_privacy.seal import generate_server_key

KEY = generate_server_key()
POLICY = ServerPolicy(SCHEMA, min_k=3, epsilon={"income": 1.0}, tokens_per_period=2,
                      token_period_days=1)
DAY = 86400


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def attest(evidence: bytes) -> str | None:
    return evidence.decode() if evidence.startswith(b"genuine:") else None


@pytest.fixture
def server(tmp_path):
    clock = Clock()
    ingestor = Ingestor(f"sqlite:///{tmp_path / 's.db'}", KEY, POLICY, clock=clock)
    assert ingestor.token_keys is not None
    issuer = TokenIssuer(ingestor.token_keys, attest, POLICY.tokens_per_period or 0)
    return ingestor, issuer, clock, tmp_path / "s.db"


def fetch(issuer: TokenIssuer, device: str, n: int) -> list[Token]:
    _, public = issuer.current_key()
    pending = request_tokens(public, n)
    return pending.finalize(issuer.issue(f"genuine:{device}".encode(), pending.body))


def post(ingestor: Ingestor, i: int, token: Token | None):
    return ingestor.ingest_one(seal_package(package(i), KEY.public_key(), token=token))


def test_policy_round_trip_and_old_policies_unchanged():
    again = ServerPolicy.from_json(POLICY.to_json())
    assert (again.tokens_per_period, again.token_period_days) == (2, 1)
    assert "tokens_per_period" not in ServerPolicy(SCHEMA, min_k=3).to_json()
    with pytest.raises(ValidationError, match="tokens_per_period"):
        ServerPolicy(SCHEMA, min_k=3, tokens_per_period=0)


def test_n_tokens_per_attested_device_and_period(server):
    _, issuer, clock, _ = server
    assert len(fetch(issuer, "a", 2)) == 2
    with pytest.raises(TokenRefused) as refused:
        fetch(issuer, "a", 1)
    assert refused.value.status == 429
    assert len(fetch(issuer, "b", 1)) == 1 and len(fetch(issuer, "b", 1)) == 1
    with pytest.raises(TokenRefused) as refused:
        issuer.issue(b"forged", request_tokens(issuer.current_key()[1], 1).body)
    assert refused.value.status == 403
    clock.now += DAY  # a new period: a new key and a new allowance
    assert len(fetch(issuer, "a", 2)) == 2


def test_a_failing_attestation_callback_is_a_refusal(server):
    ingestor, _, _, _ = server

    def broken(evidence: bytes) -> str | None:
        raise RuntimeError("attestation service down")

    issuer = TokenIssuer(ingestor.token_keys, broken, 2)  # type: ignore[arg-type]
    with pytest.raises(TokenRefused) as refused:
        issuer.issue(b"x", request_tokens(issuer.current_key()[1], 1).body)
    assert refused.value.status == 403


def test_redemption_refusals_are_opaque_with_reasons_logged(server):
    ingestor, issuer, clock, _ = server
    assert post(ingestor, 1, None).reason.startswith("token: missing")
    stranger = IssuerKey.generate()  # another issuer's token
    pending = request_tokens(stranger.public_key(), 1)
    from dmt_privacy.privacy_pass import blind_sign

    (foreign,) = pending.finalize(blind_sign(stranger, pending.body[3:]))
    assert post(ingestor, 2, foreign).reason.startswith("token: made under a key")
    (token,) = fetch(issuer, "a", 1)
    forged = Token(token.nonce[::-1], token.challenge_digest, token.token_key_id,
                   token.authenticator)
    assert post(ingestor, 3, forged).reason.startswith("token: signature")
    clock.now += 2 * DAY  # two periods later: the token's key is no longer accepted
    assert post(ingestor, 4, token).reason.startswith("token: expired")
    assert set(ingestor.refusals) == {"token"}


def test_a_token_is_accepted_in_its_period_and_the_next(server):
    ingestor, issuer, clock, _ = server
    first, second = fetch(issuer, "a", 2)
    assert post(ingestor, 1, first).status == "accepted"
    clock.now += DAY
    assert post(ingestor, 2, second).status == "accepted"


def test_double_spend_is_refused_and_a_replay_is_still_a_replay(server):
    ingestor, issuer, _, _ = server
    (token,) = fetch(issuer, "a", 1)
    envelope = seal_package(package(1), KEY.public_key(), token=token)
    assert ingestor.ingest_one(envelope).status == "accepted"
    again = ingestor.ingest_one(envelope)
    assert again.replay  # the same package: acknowledged, nothing stored twice
    other = post(ingestor, 2, token)
    assert other.status == "rejected" and other.reason.startswith("token: double spend")


def test_concurrent_double_spend_stores_exactly_one(server):
    ingestor, issuer, _, _ = server
    (token,) = fetch(issuer, "a", 1)
    envelopes = [seal_package(package(i), KEY.public_key(), token=token) for i in range(6)]
    barrier = threading.Barrier(len(envelopes))
    outcomes = []

    def go(envelope: bytes) -> None:
        barrier.wait()
        outcomes.append(ingestor.ingest_one(envelope))

    threads = [threading.Thread(target=go, args=(e,)) for e in envelopes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(o.status for o in outcomes) == ["accepted"] + ["rejected"] * 5
    assert ingestor.store.counts()["packages"] == 1


def test_what_the_issuer_keeps_cannot_name_a_spent_token(server):
    """Unlinkability, as far as testable: the issuer's records hold a device hash, a period and
    a count; the spent tokens hold a nonce, a period and a package, and no device. No nonce the
    issuer could have seen: the requests carried only blinded messages."""
    ingestor, issuer, _, db = server
    tokens = fetch(issuer, "alice", 2)
    for i, token in enumerate(tokens):
        assert post(ingestor, i, token).status == "accepted"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        issuance = conn.execute("SELECT * FROM token_issuance").fetchall()
        spent_columns = [r[1] for r in conn.execute("PRAGMA table_info(spent_tokens)")]
        spent = {r[0] for r in conn.execute("SELECT token_id FROM spent_tokens")}
    assert len(issuance) == 1 and issuance[0][2] == 2 and "alice" not in repr(issuance)
    assert spent == {t.token_id for t in tokens}
    assert spent_columns == ["token_id", "epoch", "package_id", "spent_at"]
    assert not any(t.token_id in repr(issuance) for t in tokens)


def test_http_issuer_and_client(server, monkeypatch):
    _, _, clock, db = server
    app = create_app(str(db), KEY, POLICY, attest=attest)
    app.state.ingestor.token_keys.clock = clock
    with TestClient(app) as client:

        def urlopen(request, timeout=None):  # dmt_privacy's client, routed into the app
            if isinstance(request, str):
                response = client.get(request.replace("http://dmt", ""))
            else:
                response = client.post(request.full_url.replace("http://dmt", ""),
                                       content=request.data, headers=dict(request.headers))
            if response.status_code != 200:
                raise privacy_pass.urllib.error.HTTPError(
                    request if isinstance(request, str) else request.full_url,
                    response.status_code, response.text, None, None)  # type: ignore[arg-type]
            return contextlib.closing(io.BytesIO(response.content))

        monkeypatch.setattr(privacy_pass.urllib.request, "urlopen", urlopen)
        key = client.get("/v1/tokens/key")
        assert key.status_code == 200 and key.headers["x-dmt-token-epoch"]
        tokens = fetch_tokens("http://dmt", b"genuine:phone", 2)
        with pytest.raises(privacy_pass.urllib.error.HTTPError) as over:
            fetch_tokens("http://dmt", b"genuine:phone", 1)
        assert over.value.code == 429
        with pytest.raises(privacy_pass.urllib.error.HTTPError) as refused:
            fetch_tokens("http://dmt", b"rooted emulator", 1)
        assert refused.value.code == 403
        body = seal_package(package(1), KEY.public_key(), token=tokens[0])
        assert client.post("/v1/packages", content=body).status_code == 201
        reused = seal_package(package(2), KEY.public_key(), token=tokens[0])
        assert client.post("/v1/packages", content=reused).json() == {"status": "invalid"}
        headers = {"X-DMT-Attestation": base64.b64encode(b"genuine:x").decode()}
        assert client.post("/v1/tokens", content=b"\x00" * 10, headers=headers).status_code == 400
        assert client.post("/v1/tokens", content=b"\x00" * 259 * 65,
                           headers=headers).status_code == 413


def test_a_token_policy_needs_an_attestation_check(tmp_path):
    with pytest.raises(ValidationError, match="attest="):
        create_app(f"sqlite:///{tmp_path / 's.db'}", KEY, POLICY)
    app = create_app(f"sqlite:///{tmp_path / 't.db'}", KEY, ServerPolicy(SCHEMA, min_k=3))
    with TestClient(app) as client:
        assert client.get("/v1/tokens/key").status_code == 404


def test_a_package_twice_in_one_group_after_its_token_was_spent_is_refused_twice(server):
    """A device's retry queued with its first try: the same envelope twice in one group, its
    token already spent by another package. The first copy is inserted, then dropped for the
    double spend; the second was never tried, and looking for its stored row found none
    (helper-61): it was answered as a failing database (503), and `dmt ingest` over two
    copies of the file stopped there on every run. Each copy must be answered as if it had
    come alone."""
    from dmt_model.server.ingest import BatchIngest

    ingestor, issuer, _, _ = server
    (token,) = fetch(issuer, "a", 1)
    assert post(ingestor, 1, token).status == "accepted"
    envelope = seal_package(package(2), KEY.public_key(), token=token)
    other = seal_package(package(3), KEY.public_key(), token=fetch(issuer, "b", 1)[0])
    done = dict(BatchIngest(ingestor, lambda _: None).run(
        [(envelope, "first", "first"), (envelope, "again", "again"), (other, "other", "other")]))
    for tag in ("first", "again"):
        assert not isinstance(done[tag], BaseException), done[tag]
        assert done[tag].status == "rejected", done[tag]
        assert done[tag].reason.startswith("token: double spend"), done[tag]
    assert done["other"].status == "accepted"
    assert ingestor.store.counts()["packages"] == 2
