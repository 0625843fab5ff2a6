"""The per-device package limit: a Privacy Pass issuer and the redemption check.

Issue 15.2: the k-anonymity quarantine released a class once it held records
from k packages, and packages were free, so one sender could fill a victim's
class with packages of its own. With a :class:`~dmt_model.server.ServerPolicy`
that sets ``tokens_per_period=N``:

- **issuance** (:meth:`TokenIssuer.issue`, ``POST /v1/tokens``): the
  deployment's ``attest`` callback turns the platform's evidence (App Attest on
  iOS, Play Integrity on Android) into a stable device id, or refuses it; the
  issuer gives that device at most N tokens per period (counted per device id
  hash and period, atomically) by signing blinded messages
  (:mod:`dmt_privacy.privacy_pass`): it never sees the tokens it signs;
- **redemption** (:meth:`IssuerKeys.redeem`, called by ingestion): a package
  must carry a token made under the issuer key of the current or the previous
  period; it is recorded as spent with the package, in the package's own
  transaction, and a second package with the same token is refused;
- **release**: the quarantine counts distinct tokens of one period, not
  packages (:func:`dmt_model.server.store.release_due`), so a class needs k
  tokens of one period, i.e. at least ceil(k / N) attested devices (or
  ceil((k - 1) / N) besides a victim's own package) in that period.

Each period has its own RSA key (created on first use, kept in the store
sealed to the server's HPKE key): a token expires with its key, so tokens
cannot be hoarded across periods, and all devices of a period share one key
(a key per device would tag its tokens; devices should check they see the
same key as everyone, see :func:`dmt_privacy.privacy_pass.fetch_issuer_key`).

What the limit does not stop: an attacker with many attested devices (or
one who buys attestations), timing (a device that fetches a token and spends
it at once links the two by time: fetch a period's tokens ahead and spend later),
network identifiers (IP addresses, unless an OHTTP relay hides them), and the
issuer and the ingestion service colluding on those.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from dmt_model.server.store import (
    TOKEN_ISSUANCE,
    TOKEN_KEYS,
    SpentTokenRow,
    TokenIssuanceRow,
    TokenKeyRow,
    open_engine,
)
from dmt_privacy.errors import DMTError, InvalidPackage, ValidationError
from dmt_privacy.privacy_pass import (
    InvalidToken,
    IssuerKey,
    IssuerPublicKey,
    Token,
    blind_sign,
    parse_token_requests,
    verify_token,
)
from dmt_privacy.seal import ServerKeyring, open_sealed, seal

__all__ = ["Attestation", "IssuerKeys", "TokenIssuer", "TokenRefused"]

log = logging.getLogger("dmt.server.issuer")

#: The deployment's attestation check: evidence bytes -> a stable device id, or None (refused).
Attestation = Callable[[bytes], str | None]
TOKEN_KEY_INFO = b"dmt token issuer key v1"


class TokenRefused(DMTError):
    """The issuer refuses a request. ``status``: 400 malformed, 403 not attested, 429 limit."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class IssuerKeys:
    """The issuer's RSA key of each period, created on first use and kept in the store.

    ``period_seconds``: the length of a period; period ``e`` covers
    ``[e * period_seconds, (e + 1) * period_seconds)`` of Unix time.
    """

    def __init__(self, engine: Engine, keyring: ServerKeyring, period_seconds: int, *,
                 clock: Callable[[], float] = time.time) -> None:
        if isinstance(period_seconds, bool) or not isinstance(period_seconds, int) \
                or period_seconds < 1:
            raise ValidationError(f"period_seconds must be a positive int, got {period_seconds!r}.")
        self.engine = open_engine(engine)  # a caller's SQLite engine: the store's settings
        self.keyring = keyring
        self.period_seconds = period_seconds
        self.clock = clock
        self._private: dict[int, IssuerKey] = {}
        self._public: dict[bytes, tuple[int, IssuerPublicKey]] = {}
        self._lock = threading.Lock()

    def epoch(self) -> int:
        """The current period's number."""
        return int(self.clock() // self.period_seconds)

    def key(self, epoch: int | None = None) -> IssuerKey:
        """The issuer key of ``epoch`` (default: now), created and stored if there is none."""
        epoch = self.epoch() if epoch is None else epoch
        with self._lock:
            if epoch in self._private:
                return self._private[epoch]
            key = self._load(epoch)
            if key is None:
                fresh = IssuerKey.generate()
                public = fresh.public_key()
                try:
                    with self.engine.begin() as conn:
                        conn.execute(insert(TOKEN_KEYS).values(
                            epoch=epoch, token_key_id=public.token_key_id.hex(),
                            public_key=public.to_bytes(),
                            wrapped=seal(fresh.to_pem(), self.keyring.public_key(),
                                         info=TOKEN_KEY_INFO),
                            created_at=_dt.datetime.now(_dt.timezone.utc).isoformat()))
                    key = fresh
                except IntegrityError:  # another process made this period's key first
                    key = self._load(epoch)
                    if key is None:  # pragma: no cover - the row was there a moment ago
                        raise
            self._private[epoch] = key
            self._public[key.public_key().token_key_id] = (epoch, key.public_key())
            return key

    def _load(self, epoch: int) -> IssuerKey | None:
        with self.engine.connect() as conn:
            wrapped = conn.execute(select(TokenKeyRow.wrapped).where(
                TokenKeyRow.epoch == epoch)).scalar_one_or_none()
        if wrapped is None:
            return None
        try:
            return IssuerKey.from_pem(open_sealed(wrapped, self.keyring, info=TOKEN_KEY_INFO))
        except InvalidPackage:
            raise DMTError(f"The token key of period {epoch} cannot be unwrapped with the "
                           f"server key(s) {list(self.keyring.key_ids)}.") from None

    def public_key(self, token_key_id: bytes) -> tuple[int, IssuerPublicKey] | None:
        """(period, key) of a token key id, or ``None`` if the store has no such key."""
        with self._lock:
            hit = self._public.get(token_key_id)
        if hit is not None:
            return hit
        with self.engine.connect() as conn:
            row = conn.execute(select(TokenKeyRow.epoch, TokenKeyRow.public_key).where(
                TokenKeyRow.token_key_id == token_key_id.hex())).first()
        if row is None:
            return None
        found = (int(row.epoch), IssuerPublicKey.from_bytes(bytes(row.public_key)))
        with self._lock:
            self._public[token_key_id] = found
        return found

    def redeem(self, token_bytes: bytes | None) -> tuple[str, int]:
        """(token id, period) of a valid token of this period or the previous one.

        Raises ``InvalidToken`` with a reason in ``args`` for the log (never a
        value): missing, malformed, unknown key, expired, bad signature. Does
        not record the spend: :func:`~dmt_model.server.write.write_package`
        does, in the package's transaction.
        """
        if token_bytes is None:
            raise InvalidToken("token: missing (the policy requires one per package)")
        try:
            token = Token.from_bytes(token_bytes)
        except ValidationError:
            raise InvalidToken("token: malformed") from None
        found = self.public_key(token.token_key_id)
        if found is None:
            raise InvalidToken("token: made under a key this issuer never had")
        epoch, public = found
        if not self.epoch() - 1 <= epoch <= self.epoch():
            raise InvalidToken("token: expired (its period's key is no longer accepted)")
        try:
            verify_token(token, public)
        except InvalidToken:
            raise InvalidToken("token: signature does not verify") from None
        return token.token_id, epoch

    def spent(self, token_id: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(select(SpentTokenRow.token_id).where(
                SpentTokenRow.token_id == token_id)).first() is not None


class TokenIssuer:
    """Gives attested devices at most ``tokens_per_period`` tokens per period.

    ``attest(evidence) -> device id | None`` is the deployment's: verify an App
    Attest assertion or a Play Integrity verdict there and return a stable id
    of the device (or app instance); ``None`` refuses. The issuer stores only a
    SHA-256 of that id, with the number of tokens it received per period.
    """

    def __init__(self, keys: IssuerKeys, attest: Attestation, tokens_per_period: int) -> None:
        if not callable(attest):
            raise ValidationError("attest must be a callable: evidence bytes -> device id or "
                                  "None (verify App Attest / Play Integrity there).")
        if isinstance(tokens_per_period, bool) or not isinstance(tokens_per_period, int) \
                or tokens_per_period < 1:
            raise ValidationError(
                f"tokens_per_period must be a positive int, got {tokens_per_period!r}.")
        self.keys = keys
        self.attest = attest
        self.tokens_per_period = tokens_per_period

    def current_key(self) -> tuple[int, IssuerPublicKey]:
        epoch = self.keys.epoch()
        return epoch, self.keys.key(epoch).public_key()

    def issue(self, evidence: bytes, body: bytes) -> bytes:
        """Blind signatures (the TokenResponses, concatenated) for a batch of TokenRequests."""
        epoch = self.keys.epoch()
        key = self.keys.key(epoch)
        try:
            blinded = parse_token_requests(body, key.public_key())
        except InvalidToken:
            raise TokenRefused(400, "malformed token request (or another period's key)") from None
        try:
            device = self.attest(evidence)
        except Exception as exc:  # the callback's failure is a refusal, never a crash
            log.warning("attestation callback raised %s", type(exc).__name__)
            device = None
        if not isinstance(device, str) or not device:
            raise TokenRefused(403, "not attested")
        self._reserve(hashlib.sha256(device.encode()).hexdigest(), epoch, len(blinded))
        return b"".join(blind_sign(key, m) for m in blinded)

    def _reserve(self, device: str, epoch: int, n: int) -> None:
        limit = self.tokens_per_period
        for _ in range(3):
            with self.keys.engine.begin() as conn:
                done = conn.execute(
                    update(TOKEN_ISSUANCE)
                    .where(TokenIssuanceRow.device == device, TokenIssuanceRow.epoch == epoch,
                           TokenIssuanceRow.issued + n <= limit)
                    .values(issued=TokenIssuanceRow.issued + n)).rowcount
                if done == 1:
                    return
                exists = conn.execute(select(TokenIssuanceRow.issued).where(
                    TokenIssuanceRow.device == device,
                    TokenIssuanceRow.epoch == epoch)).first() is not None
            if exists or n > limit:
                raise TokenRefused(429, f"over the limit of {limit} token(s) per period")
            try:
                with self.keys.engine.begin() as conn:
                    conn.execute(insert(TOKEN_ISSUANCE).values(device=device, epoch=epoch,
                                                               issued=n))
                return
            except IntegrityError:  # a concurrent first request of the same device: again
                continue
        raise TokenRefused(429, "concurrent token requests; try again")  # pragma: no cover


def issuer_for(engine: Engine, keyring: ServerKeyring, policy: Any,
               attest: Attestation | None, *,
               clock: Callable[[], float] = time.time) -> tuple[IssuerKeys, TokenIssuer | None]:
    """The policy's issuer keys and (with ``attest``) its issuer."""
    keys = IssuerKeys(engine, keyring, int(policy.token_period_days) * 86400, clock=clock)
    issuer = None if attest is None else TokenIssuer(keys, attest, int(policy.tokens_per_period))
    return keys, issuer
