"""``dmt anonymize`` writes what it released, exactly (issue 17, item 4).

Each defect of the report has its test: numbers written as %g (intervals that
exclude the record's own value), ``*`` for three things, ``|`` inside a value,
NaN in the report JSON, and the column kinds guessed from the data.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from dmt_model.cli import main
from dmt_privacy.anonymity.released_table import read_released_csv, read_released_jsonl
from dmt_privacy.schema import Field, Schema


def _strict_json(text: str) -> dict:
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"the JSON holds {c}"))


@pytest.fixture
def incomes(tmp_path):
    rng = np.random.default_rng(1)
    n = 200
    frame = pd.DataFrame({
        "income": [f"{v:.2f}" for v in rng.uniform(5e6, 9e6, n)],
        "zip": rng.choice(["1300", "1301", "1302", "1303"], n),
        "job": rng.choice(["a|b", "*", "{x}", "plain"], n),
        "id": [f"{i:05d}" for i in range(n)],  # leading zeros: kept as written
    })
    path = tmp_path / "in.csv"
    frame.to_csv(path, index=False)
    return path, frame


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["anonymize", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_intervals_are_exact_and_hold_each_record(tmp_path, incomes, capsys):
    path, frame = incomes
    out, report = tmp_path / "out.csv", tmp_path / "report.json"
    code, _, err = _run(capsys, str(path), "-o", str(out), "--quasi-identifiers",
                        "income,zip", "--numeric", "income", "--categorical", "zip",
                        "--k", "5", "--report", str(report))
    assert code == 0, err
    meta = _strict_json(report.read_text())  # no NaN without --sensitive
    assert meta["l_achieved"] is None and meta["t_achieved"] is None
    assert meta["columns"] == {"income": "interval", "zip": "set"}
    back = read_released_csv(out, meta["columns"], sep=meta["separator"])
    assert "e+06" not in out.read_text()
    for value, cell in zip(frame["income"], back["income"], strict=True):
        assert float(value) in cell
    for value, cell in zip(frame["zip"], back["zip"], strict=True):
        assert value in cell
    # Columns not generalized are the input's text, byte for byte.
    assert back["id"].tolist() == frame["id"].tolist()
    assert back["job"].tolist() == frame["job"].tolist()


def test_stars_and_separators_keep_their_meaning(tmp_path, incomes, capsys):
    path, frame = incomes
    out = tmp_path / "out.jsonl"
    code, stdout, err = _run(capsys, str(path), "-o", str(out), "--quasi-identifiers",
                             "job,zip", "--categorical", "zip", "--k", "5")
    assert code == 0, err
    assert "(jsonl)" in stdout
    back = read_released_jsonl(out)
    for value, cell in zip(frame["job"], back["job"], strict=True):
        assert value in cell  # 'a|b' is one value, '*' a value, not a suppressed cell


def test_a_column_of_numbers_without_a_kind_is_refused(tmp_path, incomes, capsys):
    path, _ = incomes
    code, _, err = _run(capsys, str(path), "-o", str(tmp_path / "o.csv"),
                        "--quasi-identifiers", "zip,job", "--k", "5")
    assert code == 1
    assert "'zip' holds only numbers" in err
    assert "--numeric zip" in err and "--categorical zip" in err and "dmt schema init" in err
    assert not (tmp_path / "o.csv").exists()


def test_text_in_a_numeric_column_is_refused_with_its_line(tmp_path, capsys):
    path = tmp_path / "in.csv"
    path.write_text("age,disease\n30,flu\n41,cold\nunknown,flu\n")
    code, _, err = _run(capsys, str(path), "-o", str(tmp_path / "o.csv"),
                        "--quasi-identifiers", "age", "--k", "2")
    assert code == 1
    assert "'age' mixes numbers (line 2: '30') and text (line 4: 'unknown')" in err
    code, _, err = _run(capsys, str(path), "-o", str(tmp_path / "o.csv"),
                        "--quasi-identifiers", "age", "--numeric", "age", "--k", "2")
    assert code == 1
    assert "'age' is numeric but line 4 holds 'unknown'" in err
    assert not (tmp_path / "o.csv").exists()


def test_empty_cells_are_refused(tmp_path, capsys):
    path = tmp_path / "in.csv"
    path.write_text("age,disease\n30,flu\n,cold\n")
    code, _, err = _run(capsys, str(path), "-o", str(tmp_path / "o.csv"),
                        "--quasi-identifiers", "age", "--numeric", "age", "--k", "1")
    assert code == 1 and "'age' is empty at line 3" in err


def test_the_schema_gives_kinds_and_roles(tmp_path, incomes, capsys):
    path, _ = incomes
    schema = Schema((Field("income", "numeric", "quasi-identifier"),
                     Field("zip", "categorical", "quasi-identifier"),
                     Field("job", "categorical", "sensitive"),
                     Field("id", "categorical", "identifier")))
    schema_path = tmp_path / "schema.json"
    schema_path.write_text(schema.to_json())
    out, report = tmp_path / "out.csv", tmp_path / "report.json"
    code, stdout, err = _run(capsys, str(path), "-o", str(out), "--schema", str(schema_path),
                             "--k", "5", "--l", "2", "--report", str(report))
    assert code == 0, err
    assert "identifier column(s) left out, as the schema says: id" in stdout
    meta = _strict_json(report.read_text())
    assert meta["columns"] == {"income": "interval", "zip": "set", "job": "value"}
    back = read_released_csv(out, meta["columns"])
    assert all(isinstance(cell, frozenset) for cell in back["zip"])  # never intervals
    assert "id" not in back.columns
    code, _, err = _run(capsys, str(path), "-o", str(out), "--schema", str(schema_path),
                        "--numeric", "zip", "--k", "5", "--force")
    assert code == 1 and "the schema says 'zip' is categorical" in err
