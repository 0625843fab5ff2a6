"""``dmt serve``: the HTTP ingestion service (see :mod:`dmt_model.server.service`)."""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from dmt_model.cli._logs import LOG_LEVELS, log_to_stderr
from dmt_privacy.errors import ValidationError

__all__ = ["WORKER_SETTINGS", "register", "run_serve", "worker_app"]

#: How `dmt serve --workers N` hands its settings (file paths and limits, no secrets) to each
#: worker process, which builds its own app with :func:`worker_app`.
WORKER_SETTINGS = "DMT_SERVE_WORKER_SETTINGS"

#: ``dmt_model.server.service.DEFAULT_MAX_BODY_BYTES`` as the help states it, without importing
#: the server stack to build the parser (a test keeps the two equal).
MAX_BODY_BYTES_HELP = 2**20


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``serve`` subcommand to ``subparsers``."""
    parser = subparsers.add_parser(
        "serve",
        help="run the HTTP service devices post share packages to",
        description=(
            "Serve POST /v1/packages (sealed share packages: 201 accepted, 409 replay, "
            "400 invalid, 413 too large, 408 too slow, 503 retry later), GET /v1/models/latest "
            "(the newest updatable model, version in X-DMT-Model-Version), GET /v1/health and "
            "GET /openapi.json. Each package is validated like `dmt ingest` and stored in one "
            "transaction. Stops on Ctrl-C or SIGTERM after finishing requests in flight."
        ),
    )
    parser.add_argument("--db", required=True,
                        help="SQLAlchemy URL (sqlite:///server.db, postgresql://user@host/db) "
                             "or a SQLite file path")
    parser.add_argument("--key", type=Path, required=True, action="append",
                        help="the server's private key file; repeat it after a key rotation, "
                             "the current key first, then the keys it replaced")
    parser.add_argument("--policy", type=Path,
                        help="server policy JSON (required; write one with 'dmt policy init')")
    parser.add_argument("--models", type=Path,
                        help="model registry folder served at /v1/models/latest")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; put "
                             "a TLS-terminating proxy in front for devices)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--max-body-bytes", type=int,
                        help=f"largest package accepted, in bytes (default {MAX_BODY_BYTES_HELP}"
                             ", the service's)")
    parser.add_argument("--body-timeout", type=float, default=10.0,
                        help="seconds a client has to send its body (default 10)")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads per process that each take every package waiting, "
                             "check it and write the batch in one transaction (default 1; "
                             "more overlap commit waits with checking; 0: no thread, the "
                             "event loop checks and writes what each of its rounds brought)")
    parser.add_argument("--workers", type=int, default=1,
                        help="service processes sharing the port (default 1); each keeps the "
                             "same limits and timeouts, and a listening socket of its own "
                             "(SO_REUSEPORT: connections spread evenly). More than one pays "
                             "on PostgreSQL; "
                             "SQLite has one writer whatever the count")
    parser.add_argument("--limit-concurrency", type=int, default=256,
                        help="requests in flight beyond which the service answers 503 "
                             "(default 256; idle connections do not count)")
    parser.add_argument("--access-log", action="store_true", help="log every request")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info",
                        help="the service's log lines on stderr at this level and above "
                             "(default: info, which shows each refused package with its "
                             "reason, never a value)")
    parser.set_defaults(func=run_serve)
    return parser


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """What a worker needs to build the app: paths and limits (JSON, no key material)."""
    config: dict[str, Any] = {"body_timeout": args.body_timeout, "ingest_threads": args.threads}
    if args.max_body_bytes is not None:
        config["max_body_bytes"] = args.max_body_bytes
    return {"db": str(args.db), "keys": [str(k) for k in args.key],
            "policy": None if args.policy is None else str(args.policy),
            "models": None if args.models is None else str(args.models), "config": config,
            "log_level": args.log_level,
            "limit_concurrency": max(1, math.ceil(args.limit_concurrency / args.workers))}


def _build_app(settings: dict[str, Any]) -> Any:
    from dmt_model.cli.ingest import load_policy
    from dmt_model.server.service import ServiceConfig, create_app
    from dmt_privacy.seal import load_keyring

    key = load_keyring([Path(k) for k in settings["keys"]])
    policy = load_policy(None if settings["policy"] is None else Path(settings["policy"]))
    models = None if settings["models"] is None else Path(settings["models"])
    return create_app(settings["db"], key, policy, models=models,
                      config=ServiceConfig(**settings["config"]))


def worker_app() -> Any:
    """The app of one `dmt serve --workers N` process (uvicorn's factory): its own engine and
    group-commit writer, behind the same in-flight limit (the total divided among workers)."""
    from dmt_model.server.service import InFlightLimit

    settings = json.loads(os.environ[WORKER_SETTINGS])
    # a spawned process: the parent's log handler is not inherited (refusals went unlogged)
    log_to_stderr("serve", settings.get("log_level", "info"), timestamps=True)
    app = _build_app(settings)
    return InFlightLimit(app, settings["limit_concurrency"], app.state.config.retry_after)


def run_serve(args: argparse.Namespace) -> int:
    from dmt_model.server.service import run_service

    if not 0 <= args.port <= 65535:
        raise ValidationError(f"--port must be in 0..65535, got {args.port}.")
    if args.workers < 1:
        raise ValidationError(f"--workers must be at least 1, got {args.workers}.")
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback:
        print(f"dmt serve: listening on {args.host}: plain HTTP; terminate TLS in front of it.",
              file=sys.stderr)
    log_to_stderr("serve", args.log_level, timestamps=True)
    settings = _settings(args)
    app = _build_app(settings)  # also in the parent: a bad key or policy fails before workers
    engine = app.state.ingestor.engine
    keys = app.state.ingestor.keyring.key_ids
    print(f"dmt serve: http://{args.host}:{args.port}/v1/packages (keys {', '.join(keys)}, "
          f"store {engine.dialect.name}, {args.workers} worker(s))", file=sys.stderr, flush=True)
    serve: dict[str, Any] = dict(host=args.host, port=args.port, access_log=args.access_log,
                                 log_level="info" if args.access_log else "warning")
    if args.workers == 1:
        run_service(app, limit_concurrency=args.limit_concurrency, **serve)
        return 0
    engine.dispose()
    os.environ[WORKER_SETTINGS] = json.dumps(settings)
    run_service(f"{__name__}:worker_app", workers=args.workers,
                limit_concurrency=settings["limit_concurrency"], **serve)
    return 0
