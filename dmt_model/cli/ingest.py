"""``dmt ingest`` and ``dmt keygen``: the server's key pair, and ingestion of share packages."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from dmt_privacy.errors import ValidationError

__all__ = ["register", "run_ingest", "run_keygen"]


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``ingest`` and ``keygen`` subcommands to ``subparsers``."""
    keygen = subparsers.add_parser(
        "keygen",
        help="make the server's key pair (private key file + .pub for devices)",
        description=(
            "Generate the server's X25519 key pair: the private key is written to OUTPUT "
            "(mode 0600, kept on the server only), the public key to OUTPUT.pub (shipped to "
            "devices, which seal share packages to it)."
        ),
    )
    keygen.add_argument("-o", "--output", type=Path, required=True, help="private key file")
    keygen.add_argument("--force", action="store_true", help="replace existing key files")
    keygen.set_defaults(func=run_keygen)

    parser = subparsers.add_parser(
        "ingest",
        help="open, validate and store sealed share packages",
        description=(
            "Open sealed share packages with the server's private key, validate them against "
            "the server's policy (schema, bounds, k, ε), reject replays, store each package "
            "in one transaction (records encrypted at rest) and print a summary. Running it "
            "again on the same packages changes nothing. Exits 4 when packages were offered "
            "and none could be stored (often the wrong --key)."
        ),
    )
    parser.add_argument("paths", nargs="+", type=Path,
                        help="package files or directories (their *.dmt files)")
    parser.add_argument("--db", required=True,
                        help="SQLAlchemy URL (e.g. sqlite:///server.db) or a SQLite file path")
    parser.add_argument("--key", type=Path, required=True, help="the server's private key file")
    parser.add_argument("--policy", type=Path,
                        help="server policy JSON (ServerPolicy.to_json); default: the bundled "
                             "Boston schema, k >= 5, MEDV perturbed with ε <= 1")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run_ingest)
    return parser


def run_keygen(args: argparse.Namespace) -> int:
    from dmt_privacy.seal import generate_server_key, save_private_key, save_public_key

    output: Path = args.output
    public = output.with_name(output.name + ".pub")
    if not args.force:
        for path in (output, public):
            if path.exists():
                raise ValidationError(f"{path} exists; pass --force to replace it.")
    key = generate_server_key()
    save_private_key(key, output, overwrite=args.force)
    save_public_key(key.public_key(), public, overwrite=args.force)
    print(f"private key  {output} (keep it on the server, mode 0600)")
    print(f"public key   {public} (ship it to devices)")
    print(f"fingerprint  {key.fingerprint()}")
    return 0


def default_policy() -> Any:
    from dmt_model.datasets import BOSTON_SCHEMA
    from dmt_model.server import ServerPolicy

    return ServerPolicy(BOSTON_SCHEMA, min_k=5, epsilon={"MEDV": 1.0})


def run_ingest(args: argparse.Namespace) -> int:
    from dmt_model.server import ServerPolicy, ingest
    from dmt_privacy.seal import load_private_key

    key = load_private_key(args.key)
    policy = (ServerPolicy.from_json(args.policy.read_text()) if args.policy is not None
              else default_policy())
    from sqlalchemy.exc import OperationalError

    try:
        report = ingest(list(args.paths), str(args.db), key, policy)
    except OperationalError as exc:
        raise ValidationError(
            f"--db {args.db}: the database cannot be opened ({exc.orig}); check the URL or "
            "path and that its folder exists.") from None
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
    else:
        print(report.to_text())
    # Exit 4 when packages were offered and none could be stored: often the wrong --key.
    return 4 if report.rejected and not report.stored_ids else 0
