"""``dmt ingest``, ``dmt keygen`` and ``dmt packages``: the server's keys, ingestion, removal."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from dmt_model.cli._files import read_text
from dmt_model.cli._logs import LOG_LEVELS, log_to_stderr
from dmt_privacy.errors import ValidationError

__all__ = ["register", "run_ingest", "run_keygen", "run_packages"]


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
    keygen.add_argument("--release", action="store_true",
                        help="make an Ed25519 release signing key instead (OUTPUT, mode 0600, "
                             "and OUTPUT.pub, the key apps pin to verify model releases)")
    keygen.set_defaults(func=run_keygen)

    parser = subparsers.add_parser(
        "ingest",
        help="open, validate and store sealed share packages",
        description=(
            "Open sealed share packages with the server's private key, validate them against "
            "the server's policy (schema, bounds, k, ε), reject replays, store the packages "
            "in groups of up to 256 per transaction (records encrypted at rest; a package "
            "whose write fails is retried alone) and print a summary. Running it "
            "again on the same packages changes nothing. Exits 4 when packages were offered "
            "and none could be stored (often the wrong --key)."
        ),
    )
    parser.add_argument("paths", nargs="+", type=Path,
                        help="package files or directories (their *.dmt files)")
    parser.add_argument("--db", required=True,
                        help="SQLAlchemy URL (e.g. sqlite:///server.db) or a SQLite file path")
    parser.add_argument("--key", type=Path, required=True, action="append",
                        help="the server's private key file; repeat it after a key rotation, "
                             "the current key first, then the keys it replaced")
    parser.add_argument("--policy", type=Path,
                        help="server policy JSON (required; write one with 'dmt policy init')")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info",
                        help="log lines on stderr at this level and above (default: info, "
                             "which shows each refused package with its reason, never a value)")
    parser.set_defaults(func=run_ingest)
    _register_packages(subparsers)
    from dmt_model.cli import release

    release.register(subparsers)
    return parser


def _register_packages(subparsers: Any) -> None:
    packages = subparsers.add_parser(
        "packages",
        help="list or remove stored share packages (operators)",
        description=(
            "List the packages the server stores (ids, days, record counts, receipts; never "
            "record values), or remove packages chosen by id, day, a receipt value or the "
            "reason today's policy refuses them. Each package is removed whole, in one "
            "transaction, with its share of the class counts."
        ),
    )
    actions = packages.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="list stored packages")
    listing.add_argument("--db", required=True, help="SQLAlchemy URL or SQLite file path")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=run_packages)
    remove = actions.add_parser(
        "remove", help="remove stored packages",
        description="Selectors combine with AND; at least one is required.")
    remove.add_argument("--db", required=True, help="SQLAlchemy URL or SQLite file path")
    remove.add_argument("--id", dest="ids", action="append", default=[], metavar="PACKAGE_ID",
                        help="a package id (repeat for several)")
    remove.add_argument("--day", help="YYYY-MM-DD: packages created or received that day")
    remove.add_argument("--receipt", metavar="PATH=VALUE",
                        help="packages whose stored receipt has this value, e.g. "
                             "'dp.fields.MEDV.scale_units=0' or 'k=5'")
    remove.add_argument("--reason", metavar="KIND",
                        help="packages today's policy refuses for this kind of reason "
                             "(epsilon, bounds, generalization, ...; 'any' for every refusal); "
                             "needs --key and --policy")
    remove.add_argument("--key", type=Path, action="append",
                        help="the server's private key file (repeat: current key first)")
    remove.add_argument("--policy", type=Path, help="server policy JSON (needed with --reason)")
    remove.add_argument("--dry-run", action="store_true", help="show, remove nothing")
    remove.set_defaults(func=run_packages)


def run_keygen(args: argparse.Namespace) -> int:
    from dmt_privacy.seal import generate_server_key, save_private_key, save_public_key

    output: Path = args.output
    public = output.with_name(output.name + ".pub")
    if not args.force:
        for path in (output, public):
            if path.exists():
                raise ValidationError(f"{path} exists; pass --force to replace it.")
    if getattr(args, "release", False):
        from dmt_privacy.release import generate_release_key

        release_key = generate_release_key()
        release_key.save(output, overwrite=args.force)
        print(f"release key  {output} (keep it off the serving machines, mode 0600)")
        print(f"public key   {public} (pin it in the app at build time)")
        print(f"key id       {release_key.key_id}")
        return 0
    key = generate_server_key()
    save_private_key(key, output, overwrite=args.force)
    save_public_key(key.public_key(), public, overwrite=args.force)
    print(f"private key  {output} (keep it on the server, mode 0600)")
    print(f"public key   {public} (ship it to devices in the signed release)")
    print(f"key id       {key.key_id} (envelopes sealed to it carry this id)")
    print("rotation     give the server the new key first and keep the old ones: "
          "--key new.key --key old.key")
    return 0


def load_policy(path: Path | None) -> Any:
    """The server policy JSON at ``path``; none given is refused with how to write one."""
    from dmt_model.server import ServerPolicy

    if path is None:
        raise ValidationError(
            "--policy is required: the server policy packages must match exactly; write one "
            "with 'dmt policy init --schema schema.json --min-k K [--epsilon FIELD=EPS] -o "
            "policy.json'.")
    text = read_text(path, "--policy")
    try:
        return ServerPolicy.from_json(text)
    except ValueError as exc:  # SchemaError included
        raise ValidationError(f"--policy {path}: {exc}") from None


def run_ingest(args: argparse.Namespace) -> int:
    from dmt_model.server import ingest
    from dmt_privacy.seal import load_keyring

    log_to_stderr("ingest", args.log_level)
    policy = load_policy(args.policy)
    key = load_keyring(args.key)
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


def run_packages(args: argparse.Namespace) -> int:
    from dmt_model.server.admin import list_packages, remove_packages
    from dmt_privacy.seal import load_keyring

    if args.action == "list":
        stored = list_packages(str(args.db))
        if args.json:
            print(json.dumps([dataclasses.asdict(p) for p in stored], indent=1))
        else:
            for p in stored:
                print(f"{p.package_id}  created {p.created_day}  received {p.received_at}  "
                      f"{p.n_records:>6} record(s)  k={p.receipt.get('k')}")
            print(f"{len(stored)} package(s)")
        return 0
    key = load_keyring(args.key) if args.key else None
    policy = None
    if args.reason is not None or args.policy is not None:
        policy = load_policy(args.policy)
    report = remove_packages(str(args.db), ids=args.ids, day=args.day, receipt=args.receipt,
                             reason=args.reason, private_key=key, policy=policy,
                             dry_run=args.dry_run)
    print(report.to_text())
    return 0
