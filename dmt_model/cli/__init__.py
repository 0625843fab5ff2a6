"""The ``dmt`` command.

Each subcommand lives in its own module of this package with a
``register(subparsers)`` function that adds its parser and sets ``func``, a
callable taking the parsed arguments and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from dmt_privacy.errors import DMTError

__all__ = ["build_parser", "main"]

COMMAND_MODULES: tuple[str, ...] = ("demo", "model", "anonymize", "backup", "ingest", "serve")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dmt",
        description=(
            "Privacy-preserving partial data sharing and on-device personalization "
            "of updatable Core ML models. Run 'dmt demo' for a tour, or "
            "'dmt COMMAND --help' for one step."
        ),
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(f"dmt_model.cli.{module_name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except DMTError as exc:
        print(f"dmt {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"dmt {args.command}: interrupted; nothing was replaced.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
