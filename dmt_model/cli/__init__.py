"""The ``dmt`` command.

Each subcommand lives in its own module of this package with a
``register(subparsers)`` function that adds its parser and sets ``func``, a
callable taking the parsed arguments and returning an exit code.

Registering imports nothing heavy: ``dmt --help`` must start fast on any
install, so pandas, scikit-learn, torch and the server stack are imported
inside the ``run_*`` functions. A command whose optional dependency is not
installed names the extra that brings it, before it starts
(:func:`check_extras`) or when an import fails (:func:`missing_extra`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

from dmt_privacy.errors import DMTError, MissingDependencyError

__all__ = ["COMMAND_EXTRAS", "EXTRA_MODULES", "EXTRA_OF_MODULE", "build_parser", "check_extras",
           "main", "missing_extra", "version"]

COMMAND_MODULES: tuple[str, ...] = ("demo", "schema", "policy", "model", "anonymize", "backup",
                                    "ingest", "serve")

#: The extras of ``dmt-sdk`` each command needs; :func:`main` checks them before running it.
#: Commands not named here (anonymize, keygen, release, schema) run on the base install.
COMMAND_EXTRAS: dict[str, tuple[str, ...]] = {
    "demo": ("model", "server"),
    "train": ("model",),
    "export": ("model",),
    "personalize": ("model",),
    "backup": ("model",),
    "restore": ("model",),
    "ingest": ("server",),
    "packages": ("server",),
    "policy": ("server",),
    "serve": ("server",),
}

#: The top-level modules each extra installs that the commands cannot run without.
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "model": ("torch", "coremltools", "argon2", "zxcvbn"),
    "server": ("sqlalchemy", "fastapi", "uvicorn"),
    "federated": ("opacus",),
    "image": ("PIL",),
    "audio": ("librosa",),
}

#: Top-level module of each optional dependency -> the extra of ``dmt-sdk`` that installs it,
#: for an import that fails anyway (:func:`missing_extra`).
EXTRA_OF_MODULE: dict[str, str] = {
    **{module: extra for extra, modules in EXTRA_MODULES.items() for module in modules},
    "psycopg": "server",
    "starlette": "server",
    "tqdm": "model",
}


def version() -> str:
    """The installed distribution's version; ``dmt_model.__version__`` in an uninstalled tree."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as distribution_version

    try:
        return distribution_version("dmt-sdk")
    except PackageNotFoundError:
        import dmt_model

        return str(dmt_model.__version__)


class _VersionAction(argparse.Action):
    """``--version``, looked up only when asked for (importlib.metadata is slow to import)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: Any = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        print(f"dmt {version()} (dmt-sdk)")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dmt",
        description=(
            "Privacy-preserving partial data sharing and on-device personalization "
            "of updatable Core ML models. Run 'dmt demo' for a tour, or "
            "'dmt COMMAND --help' for one step."
        ),
    )
    parser.add_argument("--version", action=_VersionAction,
                        help="print the installed version of dmt-sdk and exit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(f"dmt_model.cli.{module_name}").register(subparsers)
    _no_abbreviations(parser)
    return parser


def _no_abbreviations(parser: argparse.ArgumentParser) -> None:
    """One rule for every command: options are spelled in full (``--quasi`` is not
    ``--quasi-identifiers``), so adding an option never changes what a script meant."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _no_abbreviations(sub)


def check_extras(extras: Sequence[str]) -> MissingDependencyError | None:
    """The error to show when a module of one of ``extras`` is not installed, else ``None``.

    Looks the modules up without importing them, so the check costs nothing.
    """
    from importlib.util import find_spec

    lacking = [extra for extra in extras
               if any(find_spec(module) is None for module in EXTRA_MODULES[extra])]
    if not lacking:
        return None
    missing = [module for extra in lacking for module in EXTRA_MODULES[extra]
               if find_spec(module) is None]
    names = " and ".join(repr(extra) for extra in lacking)
    return MissingDependencyError(
        f"this command needs the {names} extra{'s' if len(lacking) > 1 else ''} "
        f"({', '.join(missing)} not installed): pip install 'dmt-sdk[{','.join(lacking)}]'")


def missing_extra(exc: ModuleNotFoundError) -> MissingDependencyError | None:
    """The error to show for a missing optional dependency; ``None`` for any other module."""
    module = (exc.name or "").partition(".")[0]
    extra = EXTRA_OF_MODULE.get(module)
    if extra is None:
        return None
    return MissingDependencyError(
        f"this command needs {module}, which is not installed; install the {extra!r} extra: "
        f"pip install 'dmt-sdk[{extra}]'")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        missing = check_extras(COMMAND_EXTRAS.get(args.command, ()))
        if missing is not None:
            raise missing
        return int(args.func(args) or 0)
    except DMTError as exc:
        print(f"dmt {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
        # a file a command reads without a message of its own: named, not a traceback
        what = exc.strerror or type(exc).__name__
        where = f": {exc.filename}" if exc.filename is not None else ""
        print(f"dmt {args.command}: error: {what}{where}.", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:
        missing = missing_extra(exc)
        if missing is None:
            raise
        print(f"dmt {args.command}: error: {missing}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"dmt {args.command}: interrupted; nothing was replaced.", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our output went away (`dmt ingest --json | head`): stop quietly.
        # stdout is pointed at /dev/null so that the interpreter's final flush cannot fail.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
