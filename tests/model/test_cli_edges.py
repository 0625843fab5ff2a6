"""Errors and edges of the dmt command (issue 17, item 6): flags, not Python parameter names;
the file at fault named; a closed pipe is no traceback; options spelled in full everywhere."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from dmt_model.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("age,zip,disease\n25,1001,flu\n27,1002,cold\n31,1003,flu\n35,1004,cold\n")
    return path


@pytest.mark.parametrize(("options", "expected"), [
    (["--l", "2"], "--l and --t need a sensitive column: pass --sensitive COLUMN"),
    (["--k", "0"], "--k must be a positive integer, got 0."),
    (["--max-suppression", "2"], "--max-suppression must be a fraction of records in [0, 1]"),
    (["--sensitive", "disease", "--l", "3"],
     "within the suppression budget --max-suppression 0.0 (0 records). Lower --l, or raise "
     "--max-suppression."),
])
def test_anonymize_errors_name_flags(tiny, tmp_path, capsys, options, expected):
    argv = ["anonymize", str(tiny), "-o", str(tmp_path / "o.csv"), "--quasi-identifiers", "age",
            "--numeric", "age", "--k", "2", *options]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert expected in err, err
    for python in ("sensitive=", "quasi_identifiers", "max_suppression", "l_kind"):
        assert python not in err


def test_a_bad_holdout_is_reported_against_holdout(foundation, boston, tmp_path, capsys):
    from dmt_model.coreml import UpdateSettings, export_coreml

    model = export_coreml(foundation, tmp_path / "m.mlmodel", updatable=UpdateSettings())
    boston.head(12).to_csv(tmp_path / "records.csv", index=False)
    boston.head(6).drop(columns=["RM"]).to_csv(tmp_path / "holdout.csv", index=False)
    before = model.read_bytes()
    assert main(["personalize", str(model), "--records", str(tmp_path / "records.csv"),
                 "--holdout", str(tmp_path / "holdout.csv")]) == 1
    err = capsys.readouterr().err
    assert f"--holdout {tmp_path / 'holdout.csv'}: Missing column(s) ['RM']" in err, err
    assert "--records" not in err
    assert model.read_bytes() == before


def test_a_closed_pipe_ends_quietly(tmp_path):
    # 4000 fields print about 200 KB, past the 64 KB a pipe holds: the command is still
    # writing when the reader goes away.
    pd.DataFrame({f"c{i}": ["a", "b"] for i in range(4000)}).to_csv(tmp_path / "wide.csv",
                                                                     index=False)
    code = "import sys\nfrom dmt_model.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    child = subprocess.Popen(
        [sys.executable, "-c", code, "schema", "init", str(tmp_path / "wide.csv"), "-o",
         str(tmp_path / "wide.json")], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdout is not None and child.stderr is not None
    first = child.stdout.readline()  # like `| head -1`: read a line, then go away
    child.stdout.close()
    err = child.stderr.read().decode()
    assert child.wait(timeout=120) == 1
    assert first.startswith(b"dmt schema init: wrote")
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def _parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_no_command_accepts_abbreviations(tiny, tmp_path):
    assert all(not p.allow_abbrev for p in _parsers(build_parser()))
    with pytest.raises(SystemExit) as exit_:
        main(["anonymize", str(tiny), "-o", str(tmp_path / "o.csv"), "--quasi", "age",
              "--numeric", "age", "--k", "2"])
    assert exit_.value.code == 2
    assert not (tmp_path / "o.csv").exists()


def test_a_missing_file_is_named_not_a_traceback(tmp_path, capsys):
    """helper-114: `dmt release sign --policy` and `dmt release verify` with a file that is
    not there printed Python's FileNotFoundError traceback. Every command names the file."""
    assert main(["keygen", "--release", "-o", str(tmp_path / "r.key")]) == 0
    (tmp_path / "m.mlmodel").write_bytes(b"model")
    capsys.readouterr()
    sign = ["release", "sign", "--version", "1", "--key", str(tmp_path / "r.key"),
            "--schema-id", "s"]
    for missing, argv in (
            ("no.json", ["release", "verify", str(tmp_path / "m.mlmodel"),
                         str(tmp_path / "no.json"), "--pin", str(tmp_path / "r.key.pub")]),
            ("nopolicy.json", [*sign, str(tmp_path / "m.mlmodel"), "--policy",
                               str(tmp_path / "nopolicy.json")]),
            ("nomodel", [*sign, str(tmp_path / "nomodel")])):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("dmt release: error:") and missing in err, err
        assert "Traceback" not in err
