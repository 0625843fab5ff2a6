"""Every benchmark script writes where it is told and `make bench` runs each (issue 17)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(p for p in (ROOT / "benchmarks").glob("*.py")
                 if 'if __name__ == "__main__"' in p.read_text())
MODULES = {"risk_anonymeter"}  # runs inside privacy_utility --risk, in its own environment


def test_there_are_benchmarks():
    assert len(SCRIPTS) >= 15


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_every_benchmark_takes_an_output_folder(script):
    if script.stem in MODULES:
        return
    text = script.read_text()
    assert re.search(r'add_argument\(\s*"--output", type=Path, default=RESULTS\b', text), (
        f"{script.name} must take --output FOLDER (default benchmarks/results)")
    assert "args.output /" in text


def test_make_bench_runs_every_benchmark():
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile[makefile.index("\nbench:"):makefile.index("\nbench-quick:")]
    ran = set(re.findall(r"\brun (\w+)", recipe))
    assert ran == {p.stem for p in SCRIPTS} - MODULES
