"""``dmt release``: sign a model release on the server, verify one as a device would.

Registered by :mod:`dmt_model.cli.ingest` (the server's commands).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path
from typing import Any

from dmt_privacy.errors import ValidationError

__all__ = ["register", "run_release"]


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``release sign`` and ``release verify`` to ``subparsers``."""
    parser = subparsers.add_parser(
        "release",
        help="sign a model release (server) or verify one (as a device does)",
        description=(
            "Model releases are signed with an Ed25519 key (dmt keygen --release) whose public "
            "half apps pin at build time. `sign` writes the release document of a model file "
            "(version, length, SHA-256, schema id, policy SHA-256, the HPKE server key, "
            "expiry); `verify` checks a model against it and refuses a bad signature, hash, "
            "rollback or an expired release, as a device does before reading the model."
        ),
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    sign = actions.add_parser("sign", help="write the signed release of a model file")
    sign.add_argument("model", type=Path, help="the model file (.mlmodel)")
    sign.add_argument("--version", type=int, required=True, help="the release version (>= 1)")
    sign.add_argument("--key", type=Path, required=True, action="append",
                      help="release signing key (repeat to sign with old and new keys)")
    sign.add_argument("--schema-id", required=True, help="the schema id the model reads")
    sign.add_argument("--policy", type=Path, help="server policy JSON devices follow")
    sign.add_argument("--server-key", type=Path,
                      help="the server's HPKE public key file (server.key.pub)")
    sign.add_argument("--days", type=float, default=30.0,
                      help="days until the release expires (default 30)")
    sign.add_argument("-o", "--output", type=Path,
                      help="release document (default: MODEL's stem + .release.json)")
    sign.add_argument("--force", action="store_true", help="replace an existing document")
    sign.set_defaults(func=run_release)
    verify = actions.add_parser("verify", help="verify a model against its release")
    verify.add_argument("model", type=Path, help="the downloaded model file")
    verify.add_argument("release", type=Path, help="its release document")
    verify.add_argument("--pin", type=Path, required=True, action="append",
                        help="a pinned release public key (PEM); repeat for several")
    verify.add_argument("--installed-version", type=int,
                        help="the version the device runs now (refuses older)")
    verify.add_argument("--newest-seen", metavar="TIME",
                        help="when the newest release the device verified was signed (its "
                             "'created', ISO 8601 with a zone); refuses releases signed "
                             "before it")
    verify.add_argument("--policy", type=Path, help="the policy JSON served beside it")
    verify.set_defaults(func=run_release)
    return parser


def run_release(args: argparse.Namespace) -> int:
    from dmt_privacy.files import write_atomically
    from dmt_privacy.release import (
        load_release_signing_key,
        load_release_verify_key,
        release_file_name,
        sign_release,
        verify_release,
    )

    if args.action == "sign":
        if args.days <= 0:
            raise ValidationError(f"--days must be > 0, got {args.days}.")
        keys = [load_release_signing_key(p) for p in args.key]
        server_key = None
        if args.server_key is not None:
            from dmt_privacy.seal import load_public_key

            server_key = load_public_key(args.server_key).to_bytes()
        document = sign_release(
            args.model.read_bytes(), keys, version=args.version, schema_id=args.schema_id,
            policy_json=args.policy.read_bytes() if args.policy is not None else None,
            server_key=server_key, valid_for=dt.timedelta(days=args.days))
        output = args.output or args.model.with_name(release_file_name(args.model.name))
        try:
            write_atomically(output, document, mode=0o644, overwrite=args.force)
        except FileExistsError:
            raise ValidationError(f"{output} exists; pass --force to replace it.") from None
        print(f"signed        {args.model} as version {args.version}")
        print(f"release       {output} (keys {', '.join(k.key_id for k in keys)})")
        return 0
    pins = [load_release_verify_key(p) for p in args.pin]
    verified = verify_release(
        args.release.read_bytes(), args.model.read_bytes(), pins,
        installed_version=args.installed_version, newest_seen=_time(args.newest_seen),
        policy_json=args.policy.read_bytes() if args.policy is not None else None)
    meta = verified.metadata
    claim: dict[str, Any] = {"held_out_devices": meta.held_out_devices,
                             "held_out_baseline": meta.held_out_baseline} \
        if meta.held_out_devices else {}
    if meta.version_check is not None:  # the check devices are asked to make: one key for all
        claim["version_check"] = dict(meta.version_check)
    if meta.open_rule_devices:  # devices personalize this version under the open rule
        claim["open_rule_devices"] = meta.open_rule_devices
        if meta.open_rule is not None:  # the rule the check compared: it grants that one only
            claim["open_rule"] = meta.open_rule
    print(json.dumps({"verified": True, "version": meta.version, "sha256": meta.sha256,
                      "created": meta.created, "expires": meta.expires,
                      "key_id": verified.key_id, **claim}, indent=1))
    return 0


def _time(value: str | None) -> dt.datetime | None:
    """``--newest-seen``: an ISO 8601 time with its zone, as a release's ``created``."""
    if value is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise ValidationError(f"--newest-seen must be an ISO 8601 time with its zone, as a "
                              f"release's 'created' (2026-12-04T08:00:00+00:00), got {value!r}.")
    return parsed
