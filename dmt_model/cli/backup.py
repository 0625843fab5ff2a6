"""``dmt backup`` and ``dmt restore``: encrypted backups of a personal model.

The passphrase comes from an environment variable named by
``--passphrase-env`` or from an interactive prompt, never from a command-line
value (see ``KEY_SOURCE_HELP``).
"""

from __future__ import annotations

import argparse
import getpass
import os
import re
import sys

from dmt_privacy.errors import InvalidBackup, ModelFileError, ValidationError

__all__ = ["register", "run_backup", "run_restore"]

KEY_SOURCE_HELP = (
    "The passphrase is read from the environment variable named by "
    "--passphrase-env, or else prompted for on the terminal. There is "
    "deliberately no --passphrase VALUE option: a value on the command line is "
    "visible to every user of the machine (ps, /proc/PID/cmdline) and is saved "
    "in shell history. The passphrase is normalized to Unicode NFC before use."
)

INVALID_BACKUP_MESSAGE = (
    "the backup could not be opened: wrong passphrase, or the file is damaged, "
    "altered or not a dmt backup. Nothing was written."
)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``backup`` and ``restore`` subcommands."""
    backup_parser = subparsers.add_parser(
        "backup",
        help="encrypt a personal .mlmodel with a passphrase (Argon2id + AES-256-GCM)",
        description=(
            "Encrypt a personal .mlmodel into a backup file with a key derived from a "
            "passphrase (Argon2id, 64 MiB, t=3, p=4; AES-256-GCM). The file name, "
            "SHA-256 and creation time of the model are stored encrypted with it."
        ),
        epilog=KEY_SOURCE_HELP,
        # No prefix matching: "--passphrase SECRET" must not pass as --passphrase-env.
        allow_abbrev=False,
    )
    backup_parser.add_argument("model", metavar="MODEL", help="the .mlmodel file to back up")
    backup_parser.add_argument(
        "-o", "--output", required=True, metavar="OUT.dmtbackup", help="backup file to write"
    )
    _add_common(backup_parser, replaced="an existing backup file")
    backup_parser.set_defaults(func=run_backup)

    restore_parser = subparsers.add_parser(
        "restore",
        help="decrypt a backup made by 'dmt backup' into a .mlmodel, bit-exact",
        description=(
            "Decrypt a backup made by 'dmt backup' and write the model, bit for bit. "
            "Nothing is written unless the passphrase is right and every byte of the "
            "backup is intact; the model file is written atomically."
        ),
        epilog=KEY_SOURCE_HELP,
        # No prefix matching: "--passphrase SECRET" must not pass as --passphrase-env.
        allow_abbrev=False,
    )
    restore_parser.add_argument("backup", metavar="BACKUP", help="the backup file to restore")
    restore_parser.add_argument(
        "-o", "--output", required=True, metavar="MODEL.mlmodel", help="model file to write"
    )
    _add_common(restore_parser, replaced="an existing model file")
    restore_parser.set_defaults(func=run_restore)


def _add_common(parser: argparse.ArgumentParser, *, replaced: str) -> None:
    parser.add_argument(
        "--passphrase-env",
        metavar="VAR",
        help="name of the environment variable holding the passphrase (not the passphrase)",
    )
    parser.add_argument("--force", action="store_true", help=f"replace {replaced}")


def run_backup(args: argparse.Namespace) -> int:
    from dmt_model.backup import backup

    _refuse_existing(args.output, args.force)
    _require_file(args.model, "model")
    passphrase = _passphrase(args.passphrase_env, confirm=True)
    info = backup(args.model, args.output, passphrase, overwrite=args.force)
    print(
        f"wrote {args.output}: {info.model_name} ({info.model_size} bytes, "
        f"sha256 {info.model_sha256}), encrypted"
    )
    return 0


def run_restore(args: argparse.Namespace) -> int:
    from dmt_model.backup import restore

    _refuse_existing(args.output, args.force)
    _require_file(args.backup, "backup")
    passphrase = _passphrase(args.passphrase_env, confirm=False)
    try:
        info = restore(args.backup, args.output, passphrase, overwrite=args.force)
    except InvalidBackup:
        print(f"dmt restore: error: {INVALID_BACKUP_MESSAGE}", file=sys.stderr)
        return 1
    print(
        f"restored {args.output} ({info.model_size} bytes, sha256 {info.model_sha256}) "
        f"from a backup of {info.model_name or 'a model'} made {info.created}"
    )
    return 0


def _refuse_existing(path: str, force: bool) -> None:
    # Checked before prompting, so the user does not type a passphrase in vain;
    # the library checks again when it writes.
    if not force and os.path.lexists(path):
        raise ModelFileError(f"{path!r} already exists; pass --force to replace it")


def _require_file(path: str, what: str) -> None:
    if not os.path.isfile(path):
        raise ModelFileError(f"{what} file {path!r} does not exist or is not a file")


def _passphrase(variable: str | None, *, confirm: bool) -> str:
    if variable is not None:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", variable):
            # Not echoed: it may be a passphrase typed where a name belongs.
            raise ValidationError(
                "--passphrase-env takes the NAME of an environment variable (letters, "
                "digits, underscores), not the passphrase itself"
            )
        value = os.environ.get(variable)
        if not value:
            raise ValidationError(
                f"environment variable {variable!r} is not set or is empty; "
                "--passphrase-env takes the NAME of a variable that holds the passphrase"
            )
        return value
    try:
        first = getpass.getpass("Passphrase: ")
        if not first:
            raise ValidationError("the passphrase is empty; nothing was written")
        if confirm and getpass.getpass("Repeat the passphrase: ") != first:
            raise ValidationError("the two passphrases differ; nothing was written")
    except EOFError:
        raise ValidationError(
            "no passphrase could be read (no terminal?); use --passphrase-env VAR"
        ) from None
    return first
