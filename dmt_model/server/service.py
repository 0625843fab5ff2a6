"""The HTTP ingestion service: devices post sealed share packages and fetch the latest model.

An ASGI application (FastAPI on Starlette, served by uvicorn) over the same
store and validation as :func:`dmt_model.server.ingest`:

- ``POST /v1/packages``: the sealed bytes as the body
  (``application/octet-stream``). ``201`` accepted, ``409`` replay (already
  stored: a device may acknowledge it), ``400`` invalid (unreadable or
  refused by the :class:`~dmt_model.server.ServerPolicy`), ``413`` too large,
  ``408`` body too slow, ``503`` database unavailable (retry after
  ``Retry-After`` seconds). Bodies say no more than the status: the reason a
  package was refused is logged on the server, never told to the sender.
- ``GET /v1/models/latest``: the newest updatable ``.mlmodel`` of a
  :class:`~dmt_model.server.retrain.ModelRegistry`, its version in the
  ``X-DMT-Model-Version`` header and the ``ETag`` (``If-None-Match`` → ``304``).
  Only plain file names inside the registry folder are served, whatever the
  index says.
- ``GET /v1/models/latest/release``: the signed release of that model
  (:mod:`dmt_privacy.release`): a device verifies it, and the model bytes
  against it, before anything reads the model.
- ``GET /v1/policy``: the :class:`~dmt_model.server.ServerPolicy` JSON packages
  must match; its SHA-256 is signed in the release.
- ``GET /v1/tokens/key`` and ``POST /v1/tokens`` (only with a policy that
  sets ``tokens_per_period``): the issuer key of the current period (RFC 9578
  SubjectPublicKeyInfo, its period in ``X-DMT-Token-Epoch``), and the issuer:
  a batch of TokenRequests as the body, the platform's attestation evidence
  (base64) in ``X-DMT-Attestation``; ``200`` with the blind signatures, ``400``
  malformed, ``403`` not attested, ``429`` over the period's limit
  (:mod:`dmt_model.server.issuer`; the client is
  :func:`dmt_privacy.privacy_pass.fetch_tokens`).
- ``GET /v1/health``: ``200`` when the database answers, ``503`` otherwise.
- ``GET /openapi.json``: the OpenAPI document.

``POST /v1/packages`` is answered by :class:`PackageRoute`, a plain ASGI
route in front of the FastAPI app (which still declares it, for the OpenAPI
document): the body is read there and queued; ``ingest_threads`` threads each
take every package waiting, open, validate and encrypt them and write them
in ONE transaction (group commit, one flush;
:class:`~dmt_model.server.ingest.BatchIngest`), then wake the event loop once
for the whole batch. Replays are refused inside that write by the package
id's uniqueness (insert-or-nothing), so two concurrent posts of the same package give exactly
one ``201`` and one ``409``, also across service processes (``dmt serve
--workers N``: uvicorn's worker processes on one shared socket, each with the
same limits and timeouts). Class counters are updated in one fixed order, and
an operator's release or removal locks them first in the same order, so writers
of several processes never deadlock and never act on blocks another is changing;
a PostgreSQL deadlock is retried. A ``201`` is sent only
after the commit, so an accepted package survives the service being killed; a
client that got no answer posts again and gets ``201`` or ``409``, never a
second copy.

Hostile input: a declared ``Content-Length`` over the limit is refused before
reading; a streamed body is counted and refused at the first byte past the
limit; the request line and headers, then the whole body, must each arrive
within ``body_timeout`` seconds (:func:`run_service` closes a connection
whose headers do not; the app answers ``408`` to a slow body). Memory is
therefore bounded by ``max_body_bytes`` × the requests in flight (:class:`InFlightLimit`
answers ``503`` beyond ``limit_concurrency``; idle connections do not count, and are
closed by the header timeout), plus the bytes of package bodies still arriving, which
count only once whole: at most ``max_body_bytes`` a connection, for ``body_timeout``
(a proxy that buffers bodies bounds those).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import importlib.util
import logging
import re
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import h11
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from sqlalchemy import Engine
from uvicorn.protocols.http.h11_impl import H11Protocol

from dmt_model.server.ingest import BatchIngest, DatabaseUnavailable, Ingestor
from dmt_model.server.issuer import Attestation, TokenIssuer, TokenRefused
from dmt_model.server.policy import ServerPolicy
from dmt_model.server.report import Outcome
from dmt_model.server.store import connect
from dmt_privacy.errors import ValidationError
from dmt_privacy.privacy_pass import MAX_BATCH, TOKEN_REQUEST_SIZE
from dmt_privacy.release import release_file_name
from dmt_privacy.seal import ENVELOPE_OVERHEAD, ServerKeyring, ServerPrivateKey

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DatabaseUnavailable",
    "HeaderTimeoutH11Protocol",
    "HeaderTimeoutHttpToolsProtocol",
    "InFlightLimit",
    "PackageIngestor",
    "PackageRoute",
    "ServiceConfig",
    "create_app",
    "run_service",
]

log = logging.getLogger("dmt.server.service")

#: Registry file names the service serves: plain names, no paths.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
#: A package of a few hundred records seals to a few kilobytes; 1 MiB leaves room.
DEFAULT_MAX_BODY_BYTES = 2**20


@dataclass(frozen=True)
class ServiceConfig:
    """Limits of the HTTP service.

    Parameters
    ----------
    max_body_bytes:
        The largest body the service may accept (sealed bytes); larger is ``413``.
        The service takes the policy's ``max_bytes`` plus the envelope's overhead, and
        refuses to start when this is below that (devices size packages by the policy).
    body_timeout:
        Seconds a client has to send the whole body; slower is ``408``.
    ingest_threads:
        Threads per process that each take every package waiting as one
        batch, open, validate and encrypt them and write them in one
        transaction (:class:`~dmt_model.server.ingest.BatchIngest`); more
        overlap a database's commit wait with checking. ``0``: no thread, the
        event loop itself checks and writes, in one transaction, the bodies
        each of its rounds brought in (no hand-over, no contention for the
        GIL; the loop answers nothing else meanwhile, so a database that
        hangs holds the whole process: for a local database).
    retry_after:
        Seconds a client is told to wait (``Retry-After``) when the database is
        unavailable.
    """

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    body_timeout: float = 10.0
    ingest_threads: int = 1
    retry_after: int = 1

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "ingest_threads", "retry_after"):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, int)
                    or value < (0 if name == "ingest_threads" else 1)):
                raise ValidationError(f"{name} must be a positive integer"
                                      f"{' or 0' if name == 'ingest_threads' else ''}, "
                                      f"got {value!r}.")
        if not (isinstance(self.body_timeout, (int, float)) and self.body_timeout > 0):
            raise ValidationError(f"body_timeout must be > 0 seconds, got {self.body_timeout!r}.")


#: The ingestion path of the service is the CLI's: :class:`~dmt_model.server.ingest.Ingestor`.
PackageIngestor = Ingestor


_BINARY_BODY = {
    "requestBody": {
        "required": True,
        "description": "A sealed share package (dmt_privacy.package.seal_package).",
        "content": {"application/octet-stream": {"schema": {"type": "string",
                                                             "format": "binary"}}},
    },
}
_STATUS = {"type": "object", "properties": {"status": {"type": "string"}}}


def _responses(*codes: tuple[int, str]) -> dict[int | str, dict[str, Any]]:
    return {code: {"description": text_,
                   "content": {"application/json": {"schema": _STATUS}}}
            for code, text_ in codes}


def create_app(
    db_url: str | Engine,
    private_key: ServerPrivateKey | ServerKeyring,
    policy: ServerPolicy,
    *,
    models: str | Path | None = None,
    config: ServiceConfig | None = None,
    attest: Attestation | None = None,
) -> Any:
    """The ASGI application; serve it with :func:`run_service` or uvicorn.

    A :class:`PackageRoute` answering ``POST /v1/packages`` itself in front of
    the FastAPI app of every other route (``.fastapi``; ``.state`` and other
    attributes are the FastAPI app's).

    ``db_url``: an SQLAlchemy URL (``sqlite:///server.db``,
    ``postgresql://user@host/db``), a SQLite path or an engine. ``models``: the
    folder of a :class:`~dmt_model.server.retrain.ModelRegistry`, or ``None``
    for no model endpoint content (``404``). ``private_key``: the server's key,
    or a :class:`~dmt_privacy.seal.ServerKeyring` after a rotation.
    ``attest``: with a policy that sets ``tokens_per_period``, the device
    attestation check the token issuer calls (evidence bytes -> device id or
    ``None``; verify App Attest / Play Integrity there); required then.
    """
    from dmt_model.server.retrain import ModelRegistry

    config = config or ServiceConfig()
    if not isinstance(private_key, (ServerPrivateKey, ServerKeyring)):
        raise ValidationError("private_key must be a ServerPrivateKey or a ServerKeyring (the "
                              f"current key first), got {type(private_key).__name__}.")
    if not isinstance(policy, ServerPolicy):
        raise ValidationError(f"policy must be a ServerPolicy, got {type(policy).__name__}.")
    if config.max_body_bytes < policy.max_bytes + ENVELOPE_OVERHEAD:
        # devices size their packages by the policy's max_bytes before they are charged
        raise ValidationError(
            f"The service's body limit ({config.max_body_bytes:,} bytes) is below what the "
            f"policy lets a package take ({policy.max_bytes:,} bytes, {ENVELOPE_OVERHEAD} more "
            "sealed): devices would be charged for packages answered 413. Raise "
            "max_body_bytes (--max-body-bytes) or lower the policy's max_bytes.")
    if isinstance(db_url, str):
        # No ping before each use (a round trip of the 8 a group write made on PostgreSQL):
        # a write on a connection the database dropped is tried again on a fresh one
        # (Ingestor._write_group), and the pool then renews every connection it held.
        db_url = connect(db_url, pool_size=config.ingest_threads + 2, max_overflow=4,
                         pool_pre_ping=False) \
            if "://" in db_url and not db_url.startswith("sqlite") else connect(db_url)
    if policy.requires_tokens and attest is None:
        raise ValidationError(
            "The policy requires a token per package (tokens_per_period), so the service "
            "issues them: pass attest= (a callable verifying App Attest / Play Integrity "
            "evidence and returning a device id, or None to refuse).")
    ingestor = Ingestor(db_url, private_key, policy)
    ingestor.data_key()  # fail now, not per request, when the key does not fit the database
    issuer = (TokenIssuer(ingestor.token_keys, attest, int(policy.tokens_per_period or 1))
              if ingestor.token_keys is not None and attest is not None else None)
    limit = policy.max_bytes + ENVELOPE_OVERHEAD
    registry = ModelRegistry(models) if models is not None else None
    limiter = anyio.CapacityLimiter(4)  # the other routes' threads (health, model files)
    policy_json = policy.to_json().encode()

    app = FastAPI(
        title="dmt ingestion service",
        version="1",
        description="Devices post sealed share packages and fetch the newest updatable model.",
        docs_url=None, redoc_url=None,
    )
    app.state.ingestor = ingestor
    app.state.config = config
    app.state.max_body_bytes = limit
    route = PackageRoute(app, ingestor, limit, config)

    def status(code: int, word: str, *, close: bool = False,
               headers: dict[str, str] | None = None) -> Any:
        extra = dict(headers or {})
        if close:
            extra["Connection"] = "close"
        return JSONResponse({"status": word}, status_code=code, headers=extra)

    async def run(fn: Callable[..., Any], *args: Any) -> Any:
        return await anyio.to_thread.run_sync(fn, *args, limiter=limiter)

    @app.post(
        "/v1/packages", status_code=201, openapi_extra=_BINARY_BODY,
        summary="Submit one sealed share package",
        responses=_responses((201, "accepted and stored"),
                             (400, "invalid: unreadable or refused by the server's policy"),
                             (408, "the body did not arrive in time"),
                             (409, "replay: this package is already stored"),
                             (413, "too large"),
                             (503, "unavailable: retry after Retry-After seconds")),
    )
    async def post_package(request: Request) -> Any:
        # Served by PackageRoute in front of this app; declared here for the OpenAPI document
        # and for anyone serving the FastAPI app alone: the same answers either way.
        code, headers, body = await route.answer(request.scope, request.receive)
        return Response(body, status_code=code, headers=dict(
            (k.decode(), v.decode()) for k, v in headers if k != b"content-length"))

    def registry_file(name: str) -> Path | None:
        """A file of the registry by the name its index gives; never outside the folder."""
        assert registry is not None
        if not _SAFE_NAME.fullmatch(name):
            log.warning("model index names an unsafe file; not served")
            return None
        folder = registry.folder.resolve()
        path = (folder / name).resolve()
        if path.parent != folder or not path.is_file():
            return None
        return path

    @app.get(
        "/v1/models/latest", summary="The newest updatable Core ML model",
        responses={200: {"description": "the .mlmodel bytes; version in X-DMT-Model-Version",
                         "content": {"application/octet-stream": {
                             "schema": {"type": "string", "format": "binary"}}}},
                   304: {"description": "the If-None-Match version is the newest"},
                   404: {"description": "no model has been published"}},
    )
    async def latest_model(request: Request) -> Any:
        version = await run(registry.latest) if registry is not None else None
        if version is None or registry is None:
            return status(404, "no model")
        path = registry_file(version.mlmodel_file)
        if path is None:
            return status(404, "no model")
        etag = f'"v{version.version}"'
        headers = {"X-DMT-Model-Version": str(version.version), "ETag": etag,
                   "Cache-Control": "no-cache"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return FileResponse(path, media_type="application/octet-stream", headers=headers,
                            filename=f"foundation-v{version.version}.mlmodel")

    @app.get(
        "/v1/models/latest/release", summary="The signed release of the newest model",
        responses={200: {"description": "the release document (dmt_privacy.release): verify "
                                        "it, and the model against it, before reading the model"},
                   404: {"description": "no signed model has been published"}},
    )
    async def latest_release(request: Request) -> Any:
        version = await run(registry.latest) if registry is not None else None
        if version is None or registry is None:
            return status(404, "no model")
        # the release the index names (re-signing writes a new file, then the index)
        path = registry_file(version.release_file or release_file_name(version.mlmodel_file))
        if path is None:
            return status(404, "no release")
        return FileResponse(path, media_type="application/json",
                            headers={"X-DMT-Model-Version": str(version.version),
                                     "Cache-Control": "no-cache"})

    @app.get("/v1/policy", summary="The server policy packages must match",
             responses={200: {"description": "ServerPolicy JSON; its SHA-256 is in the release"}})
    async def server_policy() -> Any:
        return Response(policy_json, media_type="application/json",
                        headers={"Cache-Control": "no-cache"})

    @app.get("/v1/tokens/key", summary="The token issuer's key of the current period",
             responses={200: {"description": "RFC 9578 SubjectPublicKeyInfo (DER); the period "
                                             "in X-DMT-Token-Epoch"},
                        404: {"description": "the policy requires no tokens"}})
    async def token_key() -> Any:
        if issuer is None:
            return status(404, "no tokens")
        epoch, public = await run(issuer.current_key)
        return Response(public.to_bytes(), media_type="application/octet-stream",
                        headers={"X-DMT-Token-Epoch": str(epoch),
                                 "X-DMT-Token-Key-Id": public.key_id,
                                 "Cache-Control": "no-cache"})

    @app.post(
        "/v1/tokens", summary="Issue rate-limiting tokens to an attested device",
        responses=_responses((200, "the blind signatures (TokenResponses, concatenated)"),
                             (400, "malformed token requests"), (403, "not attested"),
                             (404, "the policy requires no tokens"),
                             (429, "over this period's limit")),
    )
    async def issue_tokens(request: Request) -> Any:
        if issuer is None:
            return status(404, "no tokens")
        body = bytearray()
        try:
            with anyio.fail_after(config.body_timeout):
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > MAX_BATCH * TOKEN_REQUEST_SIZE:
                        return status(413, "too large", close=True)
        except Exception:  # too slow, or the client went away
            return status(400, "invalid", close=True)
        try:
            evidence = base64.b64decode(request.headers.get("x-dmt-attestation", ""),
                                        validate=True)
            signed = await run(issuer.issue, evidence, bytes(body))
        except binascii.Error:
            return status(400, "invalid")
        except TokenRefused as exc:
            log.info("token request refused: %s", exc.reason)
            return status(exc.status, {400: "invalid", 403: "not attested"}.get(
                exc.status, "too many"))
        return Response(signed, media_type="application/private-token-response")

    @app.get("/v1/health", summary="Liveness and database reachability",
             responses=_responses((200, "ok"), (503, "the database does not answer")))
    async def health() -> Any:
        if await run(ingestor.healthy):
            return status(200, "ok")
        return status(503, "unavailable", headers={"Retry-After": str(config.retry_after)})

    return route


def _answers(retry_after: int) -> dict[str, tuple[int, list[tuple[bytes, bytes]], bytes]]:
    """The hot route's answers, made once: (status, headers, body) by word."""
    def answer(code: int, word: str, *extra: tuple[bytes, bytes]
               ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        body = b'{"status":"%s"}' % word.encode()
        return code, [(b"content-type", b"application/json"),
                      (b"content-length", str(len(body)).encode()), *extra], body

    close = (b"connection", b"close")
    return {"accepted": answer(201, "accepted"), "replay": answer(409, "replay"),
            "invalid": answer(400, "invalid"), "invalid, close": answer(400, "invalid", close),
            "too large": answer(413, "too large", close), "timeout": answer(408, "timeout", close),
            "unavailable": answer(503, "unavailable",
                                  (b"retry-after", str(retry_after).encode())),
            "error": answer(500, "error")}


def _settle(results: list[tuple[asyncio.Future[Any], Any]]) -> None:
    """Set each future (in its event loop) to its outcome, or to the exception it raised."""
    for future, result in results:
        if future.done():  # its request was cancelled meanwhile
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)


def _deliver(results: list[tuple[Any, Any]]) -> None:
    """From an ingest thread: one wake-up per event loop for a whole batch of outcomes."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
    for future, result in results:
        by_loop.setdefault(future.get_loop(), []).append((future, result))
    for loop, batch in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits any more
            loop.call_soon_threadsafe(_settle, batch)


class PackageRoute:
    """ASGI: ``POST /v1/packages`` answered here, everything else passed on to ``app``.

    The hot route without routing, request objects or a thread per package:
    the body is read here (a declared ``Content-Length`` over ``limit`` is
    ``413`` before reading, a streamed body ``413`` at the first byte past it,
    a body not complete within ``config.body_timeout`` seconds ``408``), then
    queued as it is for the process's ingest threads
    (:class:`~dmt_model.server.ingest.BatchIngest`), which open, validate and
    write whole batches and wake this event loop once per batch. ``201``,
    ``409``, ``400``, ``503`` (database unavailable, with ``Retry-After``) as
    the module docstring says. ``state``, ``fastapi`` and any other attribute
    are ``app``'s (the FastAPI app, which declares the route for its OpenAPI
    document and serves it the same way when used alone).
    """

    def __init__(self, app: Any, ingestor: Ingestor, limit: int, config: ServiceConfig) -> None:
        self.app = app
        self.fastapi = app
        self.limit = limit
        self.body_timeout = config.body_timeout
        self.batch = BatchIngest(ingestor, _deliver, threads=max(config.ingest_threads, 1))
        self._answers = _answers(config.retry_after)
        #: bodies of this round of the event loop, handed over together (_hand_over), or
        #: with ingest_threads=0 checked and written by the loop itself (_ingest_inline)
        self._inline = config.ingest_threads == 0
        self._waiting: list[tuple[bytes, str, asyncio.Future[Outcome]]] = []

    def _submit(self, body: bytes, future: asyncio.Future[Outcome]) -> None:
        """Queue ``body``: the bodies of one round of the event loop go on together."""
        self._waiting.append((body, "<http>", future))
        if len(self._waiting) == 1:  # after every request this round of the loop brought in
            future.get_loop().call_soon(
                self._ingest_inline if self._inline else self._hand_over)

    def _on_shutdown(self, send: Any) -> Any:
        """``send`` of the lifespan, logging the batches taken when the service stops."""
        async def send_and_log(message: Any) -> None:
            if message.get("type") == "lifespan.shutdown.complete" and self.batch.batches:
                log.info("ingested %d packages in %d batches (%.1f a batch)",
                         self.batch.bodies, self.batch.batches,
                         self.batch.bodies / self.batch.batches)
            await send(message)
        return send_and_log

    def _hand_over(self) -> None:
        """To the ingest threads, one wake-up for the round (not one a body)."""
        batch, self._waiting = self._waiting, []
        self.batch.submit_many(batch)

    def _ingest_inline(self) -> None:
        """Check and write every body waiting, in the event loop's thread (one transaction).

        No thread, so no hand-over and no contention for the GIL: the loop is
        busy for the batch, meanwhile the next requests gather in the sockets
        and make the next batch.
        """
        batch, self._waiting = self._waiting, []
        self.batch.batches += 1
        self.batch.bodies += len(batch)
        _settle(self.batch.run(batch))

    def __getattr__(self, name: str) -> Any:  # .state, .openapi(), .routes... of the app
        return getattr(self.__dict__["app"], name)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._on_shutdown(send))
            return
        if (scope["type"] != "http" or scope["path"] != "/v1/packages"
                or scope["method"] != "POST"):
            await self.app(scope, receive, send)
            return
        code, headers, body = await self.answer(scope, receive)
        await send({"type": "http.response.start", "status": code, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def answer(self, scope: Any, receive: Any
                     ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """(status, headers, body) of one ``POST /v1/packages``."""
        answers = self._answers
        limit = self.limit
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return answers["invalid, close"]
                if declared > limit:
                    return answers["too large"]
        parts = []
        size = 0
        try:
            async with asyncio.timeout(self.body_timeout):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":  # the client went away mid-body
                        return answers["invalid, close"]
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        return answers["too large"]
                    parts.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            return answers["timeout"]
        if not size:
            return answers["invalid"]
        # Counted in flight from here, where the work begins (InFlightLimit defers it): while
        # a body arrives it holds only the bytes sent and a socket (helper-113).
        limiter: InFlightLimit | None = scope.get(_ADMISSION)
        if limiter is not None:
            if limiter.in_flight >= limiter.limit:
                return answers["unavailable"]
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        try:
            if limiter is not None:
                limiter.in_flight += 1  # one event loop: no lock needed
            self._submit(parts[0] if len(parts) == 1 else b"".join(parts), future)
            outcome = await future
        except DatabaseUnavailable as exc:
            log.warning("database unavailable: %s", exc)
            return answers["unavailable"]
        except Exception:
            log.exception("package ingestion failed")
            return answers["error"]
        finally:
            if limiter is not None:
                limiter.in_flight -= 1
        if outcome.status == "accepted":
            return answers["accepted"]
        if outcome.replay:
            return answers["replay"]
        return answers["invalid"]  # the reason is logged and counted by the ingestor


def _body_timeout(app: Any) -> float:
    """The ``body_timeout`` of the service inside ``app`` (through any middleware wrapping it)."""
    for _ in range(16):
        config = getattr(getattr(app, "state", None), "config", None)
        if isinstance(config, ServiceConfig):
            return config.body_timeout
        app = getattr(app, "app", None)
        if app is None:
            break
    return ServiceConfig().body_timeout


class _HeaderTimer:
    """A timer closing a connection whose request line and headers take too long (slowloris).

    Armed when the connection opens and when a response completes, disarmed
    when a request's headers are complete; the app's ``body_timeout`` seconds.
    Mixed in before a uvicorn protocol class, whose methods it extends.
    """

    _header_timer: Any = None
    _header_seconds: float = 10.0
    app: Any
    loop: Any
    transport: Any

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self._header_seconds, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        """Close the connection (a protocol may first tell the peer, as h11's does)."""
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: Any) -> None:
        self._header_seconds = _body_timeout(self.app)
        super().connection_made(transport)  # type: ignore[misc]
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]


class HeaderTimeoutH11Protocol(_HeaderTimer, H11Protocol):  # type: ignore[misc]
    """uvicorn's h11 protocol, closing a connection whose request line and headers take too long.

    uvicorn times out idle keep-alive connections but not a request that never
    finishes its headers (slowloris); this does, the app's ``body_timeout``
    seconds after the connection opens or the previous response completes.
    A class of its own (not made per call) so uvicorn's worker processes can
    import it by name: every worker keeps the protection. The fallback of
    :class:`HeaderTimeoutHttpToolsProtocol` where httptools is not installed.
    """

    def _headers_too_slow(self) -> None:
        if self.conn.their_state is not h11.IDLE:  # the headers came in the meantime
            self._header_timer = None
            return
        if not self.transport.is_closing():
            with contextlib.suppress(h11.LocalProtocolError):
                self.conn.send(h11.ConnectionClosed())
        super()._headers_too_slow()

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm()


#: httptools (uvicorn's C parser) and uvloop are used when installed (the ``server`` extra).
HTTPTOOLS = importlib.util.find_spec("httptools") is not None
UVLOOP = importlib.util.find_spec("uvloop") is not None

if HTTPTOOLS:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HeaderTimeoutHttpToolsProtocol(_HeaderTimer, HttpToolsProtocol):  # type: ignore[misc]
        """uvicorn's httptools protocol, with the header timeout of the h11 one.

        The service's protocol when httptools is installed: its parser is C,
        about a tenth of h11's cost a request. The timer is disarmed when a
        request's headers are complete and armed again when its response is,
        unless a pipelined request (headers complete) is next.
        """

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            pipelined = bool(self.pipeline)
            super().on_response_complete()
            if not pipelined and not self.transport.is_closing():
                self._arm()

    _PROTOCOL: type = HeaderTimeoutHttpToolsProtocol
else:  # pragma: no cover - httptools is in the server extra
    HeaderTimeoutHttpToolsProtocol = HeaderTimeoutH11Protocol  # type: ignore[misc,assignment]
    _PROTOCOL = HeaderTimeoutH11Protocol


#: The scope key under which :class:`InFlightLimit` hands a package post to
#: :class:`PackageRoute`, which counts it in flight once its body has arrived.
_ADMISSION = "dmt.in_flight"


class InFlightLimit:
    """ASGI middleware: at most ``limit`` HTTP requests in flight; beyond, ``503`` at once.

    It counts requests, not connections: an idle connection (opened, nothing
    sent) costs a file descriptor until the header timeout closes it, and never
    a place that legitimate requests wait for. uvicorn's own
    ``limit_concurrency`` counts connections, so 300 idle sockets made it answer
    ``503`` to nearly every real request. A package post (``POST /v1/packages``)
    is counted once its body has arrived (by :class:`PackageRoute`): counted from
    its headers, 256 bodies trickling a byte every 2 s held every place until the
    body timeout, and every device and ``/v1/health`` got ``503`` (helper-113).
    While a body arrives it holds the bytes sent so far, for ``body_timeout`` at most.
    """

    def __init__(self, app: Any, limit: int, retry_after: int = 1) -> None:
        self.app = app
        self.limit = limit
        self.retry_after = retry_after
        self.in_flight = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == "/v1/packages" and scope["method"] == "POST":
            scope[_ADMISSION] = self  # counted by PackageRoute once its body has arrived
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"retry-after", str(self.retry_after).encode()),
                                    (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": b'{"status":"unavailable"}'})
            return
        self.in_flight += 1  # one event loop: no lock needed
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


def _listening_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A TCP socket bound to (host, port), with ``SO_REUSEPORT`` when ``reuse_port``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def run_service(app: Any, *, host: str = "127.0.0.1", port: int = 8000,
                limit_concurrency: int = 256, access_log: bool = False,
                log_level: str = "warning", workers: int = 1) -> None:
    """Serve ``app`` with uvicorn until SIGINT/SIGTERM (in-flight requests finish first).

    ``limit_concurrency``: requests in flight beyond which the service answers
    ``503`` (:class:`InFlightLimit`); idle connections do not count. A
    request's line and headers must arrive within the app's ``body_timeout``
    too, or the connection is closed.

    ``workers`` > 1: uvicorn's worker processes (its supervisor replaces a
    worker that dies). ``app`` is then the import string of a factory
    (``"module:function"``) each worker calls to build its own app, wrapped in
    :class:`InFlightLimit` with ``limit_concurrency`` divided among the
    workers; each worker has the same header and body timeouts, body limit
    and group commit. Each worker listens on a socket of its own bound with
    ``SO_REUSEPORT`` (Linux), so the kernel spreads connections evenly over
    the workers; one socket shared by all let whichever worker
    woke first take them (38 of 50 kept-alive clients on one of two workers).
    The supervisor binds the port first (fails at once when it is taken) and
    keeps it while workers come and go. Without ``SO_REUSEPORT`` the workers
    share one socket.
    """
    import uvicorn

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValidationError(f"workers must be a positive integer, got {workers!r}.")
    options: dict[str, Any] = dict(
        host=host, port=port, http=_PROTOCOL, loop="uvloop" if UVLOOP else "asyncio",
        limit_concurrency=None, access_log=access_log, log_level=log_level,
        timeout_keep_alive=5, timeout_graceful_shutdown=10, server_header=False)
    if workers > 1:
        if not isinstance(app, str):
            raise ValidationError(
                "workers > 1 needs app as the import string of a factory ('module:function') "
                f"that each worker process calls, got {type(app).__name__}.")
        options = {**options, "http": f"{__name__}:{_PROTOCOL.__name__}"}
        if not REUSE_PORT:
            uvicorn.run(app, factory=True, workers=workers, **options)
            return
        _run_reuse_port_workers(app, workers, options)
        return
    config: ServiceConfig = getattr(app.state, "config", None) or ServiceConfig()
    uvicorn.run(InFlightLimit(app, limit_concurrency, config.retry_after), **options)


#: Whether worker processes get a listening socket each (``SO_REUSEPORT``): Linux, where the
#: kernel balances connections over such sockets (macOS gives them all to one).
REUSE_PORT = hasattr(socket, "SO_REUSEPORT") and sys.platform.startswith("linux")


def _run_reuse_port_workers(app: str, workers: int, options: dict[str, Any]) -> None:
    """uvicorn's supervisor over ``workers`` processes, each listening with ``SO_REUSEPORT``."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    # Bound, not listening: the port is checked and held; connections go to the workers'.
    held = _listening_socket(options["host"], options["port"], reuse_port=True)
    try:
        port = held.getsockname()[1]  # the port chosen when 0 was asked
        config = uvicorn.Config(app, factory=True, workers=workers, **{**options, "port": port})
        config.load_app()  # fail here, not in every worker, when the import string is wrong
        target = functools.partial(_worker_target, config, options["host"], port)
        Multiprocess(config, target=target, sockets=[]).run()
    finally:
        held.close()


def _worker_target(config: Any, host: str, port: int, sockets: Any = None) -> None:
    """In a worker process: serve ``config`` on a ``SO_REUSEPORT`` socket of its own."""
    import uvicorn

    uvicorn.Server(config).run(sockets=[_listening_socket(host, port, reuse_port=True)])
