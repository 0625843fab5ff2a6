"""``dmt serve``: the HTTP ingestion service (see :mod:`dmt_model.server.service`)."""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path
from typing import Any

from dmt_model.cli._logs import LOG_LEVELS, log_to_stderr
from dmt_privacy.errors import ValidationError

__all__ = ["register", "run_serve"]

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
    parser.add_argument("--threads", type=int, default=4,
                        help="packages ingested at once (default 4)")
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


def run_serve(args: argparse.Namespace) -> int:
    from dmt_model.cli.ingest import load_policy
    from dmt_model.server.service import ServiceConfig, create_app, run_service
    from dmt_privacy.seal import load_keyring

    if not 0 <= args.port <= 65535:
        raise ValidationError(f"--port must be in 0..65535, got {args.port}.")
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback:
        print(f"dmt serve: listening on {args.host}: plain HTTP; terminate TLS in front of it.",
              file=sys.stderr)
    log_to_stderr("serve", args.log_level, timestamps=True)
    key = load_keyring(args.key)
    policy = load_policy(args.policy)
    limits = {} if args.max_body_bytes is None else {"max_body_bytes": args.max_body_bytes}
    config = ServiceConfig(body_timeout=args.body_timeout, ingest_threads=args.threads, **limits)
    app = create_app(str(args.db), key, policy, models=args.models, config=config)
    engine = app.state.ingestor.engine
    print(f"dmt serve: http://{args.host}:{args.port}/v1/packages (keys {', '.join(key.key_ids)}, "
          f"store {engine.dialect.name})", file=sys.stderr, flush=True)
    run_service(app, host=args.host, port=args.port, limit_concurrency=args.limit_concurrency,
                access_log=args.access_log, log_level="info" if args.access_log else "warning")
    return 0
