"""One version, written in pyproject.toml, read from the installed distribution."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

import dmt_model
import dmt_privacy
from dmt_model.cli import version

ROOT = Path(__file__).resolve().parents[2]


def test_every_version_is_pyprojects():
    tomllib = pytest.importorskip("tomllib")
    written = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert importlib.metadata.version("dmt-sdk") == written
    assert dmt_privacy.__version__ == dmt_model.__version__ == version() == written


def test_the_version_is_written_in_no_module():
    written = importlib.metadata.version("dmt-sdk")
    for package in ("dmt_privacy", "dmt_model"):
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            assert f'"{written}"' not in text and f"'{written}'" not in text, path


def test_an_uninstalled_tree_says_so(monkeypatch):
    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert dmt_privacy.__version__ == dmt_model.__version__ == version() == "0+unknown"


def test_other_attributes_are_still_missing():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = dmt_privacy.nope
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = dmt_model.nope


def test_importing_the_packages_does_not_look_the_version_up():
    code = ("import sys, dmt_privacy, dmt_model; "
            "print('importlib.metadata' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"


def test_license_and_changelog():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.startswith("MIT License\n\nCopyright (c) 2026 the dmt authors\n")
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "Keep a Changelog" in changelog and "\n## [Unreleased]\n" in changelog
