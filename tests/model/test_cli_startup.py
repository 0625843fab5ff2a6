"""`dmt` builds its parser without heavy imports and names the extra a command lacks."""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import subprocess
import sys

import pytest

import dmt_model.cli as cli
from dmt_model.cli import main

HEAVY = ("pandas", "sklearn", "scipy", "torch", "coremltools", "fastapi", "sqlalchemy",
         "uvicorn", "numpy", "nltk", "diffprivlib", "tqdm")
#: Commands that need no extra: they run on the base install.
BASE_COMMANDS = {"anonymize", "keygen", "release", "schema"}


def _commands() -> set[str]:
    parser = cli.build_parser()
    (subparsers,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(subparsers.choices)


def test_building_the_parser_imports_nothing_heavy():
    code = ("import sys; from dmt_model.cli import build_parser; build_parser(); "
            f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.split()
    assert loaded == []


@pytest.mark.parametrize("argv", [["--help"], ["serve", "--help"], ["anonymize", "--help"]])
def test_help_imports_nothing_heavy(argv):
    code = ("import sys\nfrom dmt_model.cli import main\ntry:\n    main(sys.argv[1:])\n"
            "except SystemExit:\n    pass\n"
            f"print('LOADED', *(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                         check=True).stdout
    assert out.splitlines()[-1] == "LOADED"


def test_every_command_runs_on_the_base_install_or_names_its_extras():
    assert _commands() == BASE_COMMANDS | set(cli.COMMAND_EXTRAS)
    assert not BASE_COMMANDS & set(cli.COMMAND_EXTRAS)
    for extras in cli.COMMAND_EXTRAS.values():
        assert set(extras) <= set(cli.EXTRA_MODULES)


def _extra_of(requirement: str) -> str | None:
    found = re.search(r"""extra\s*==\s*["']([^"']+)["']""", requirement)
    return found.group(1) if found else None


def test_the_modules_checked_are_what_each_extra_installs():
    requires = importlib.metadata.requires("dmt-sdk") or []
    by_extra: dict[str, set[str]] = {}
    for requirement in requires:
        extra = _extra_of(requirement)
        name = re.match(r"[A-Za-z0-9_.-]+", requirement)
        if extra is not None and name is not None:
            by_extra.setdefault(extra, set()).add(name.group(0).lower().replace("_", "-"))
    distributions = importlib.metadata.packages_distributions()
    for extra, modules in cli.EXTRA_MODULES.items():
        for module in modules:
            names = {d.lower().replace("_", "-") for d in distributions.get(module, [])}
            assert names & by_extra[extra], (module, extra, names, by_extra[extra])


def test_a_missing_extra_is_named_before_the_command_starts(monkeypatch, capsys):
    monkeypatch.setitem(cli.EXTRA_MODULES, "server", ("dmt_no_such_module",))
    assert main(["packages", "list", "--db", "x.db"]) == 1
    err = capsys.readouterr().err
    assert err == ("dmt packages: error: this command needs the 'server' extra "
                   "(dmt_no_such_module not installed): pip install 'dmt-sdk[server]'\n")
    monkeypatch.setitem(cli.EXTRA_MODULES, "model", ("dmt_no_such_module_either",))
    assert main(["demo", "--workdir", "unused"]) == 1
    assert "pip install 'dmt-sdk[model,server]'" in capsys.readouterr().err


def _failing_command(module: str) -> argparse.ArgumentParser:
    def run(args: argparse.Namespace) -> int:
        raise ModuleNotFoundError(f"No module named {module!r}", name=module)

    parser = argparse.ArgumentParser(prog="dmt")
    parser.add_subparsers(dest="command").add_parser("anonymize").set_defaults(func=run)
    return parser


def test_an_import_failing_inside_a_command_names_its_extra(monkeypatch, capsys):
    monkeypatch.setattr(cli, "build_parser", lambda: _failing_command("sqlalchemy.exc"))
    assert main(["anonymize"]) == 1
    assert capsys.readouterr().err == (
        "dmt anonymize: error: this command needs sqlalchemy, which is not installed; "
        "install the 'server' extra: pip install 'dmt-sdk[server]'\n")
    monkeypatch.setattr(cli, "build_parser", lambda: _failing_command("dmt_model.nowhere"))
    with pytest.raises(ModuleNotFoundError):  # a bug of ours is not blamed on an extra
        main(["anonymize"])


def test_version_is_the_installed_distributions(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"dmt {importlib.metadata.version('dmt-sdk')} (dmt-sdk)\n"


def test_serve_help_states_the_services_default_body_limit():
    from dmt_model.cli.serve import MAX_BODY_BYTES_HELP
    from dmt_model.server.service import DEFAULT_MAX_BODY_BYTES, ServiceConfig

    assert MAX_BODY_BYTES_HELP == DEFAULT_MAX_BODY_BYTES == ServiceConfig().max_body_bytes
