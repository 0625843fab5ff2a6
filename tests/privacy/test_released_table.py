"""Released tables as files (issue 17, item 4): exact numbers, one meaning per marker, escaped
sets, and reading back what was written, for CSV and JSON Lines."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dmt_privacy.anonymity import KAnonymizer, format_generalized
from dmt_privacy.anonymity.released_table import (
    column_kinds,
    decode_cell,
    encode_cell,
    read_released_csv,
    read_released_jsonl,
    released_csv,
    released_jsonl,
    write_released,
)
from dmt_privacy.errors import OutputExistsError, ValidationError

KINDS = {"income": "interval", "zip": "set", "job": "node", "disease": "value"}


def _table() -> pd.DataFrame:
    return pd.DataFrame({
        "income": [pd.Interval(7506161.37, 8973154.37, closed="both"), None,
                   pd.Interval(0.1, 0.1, closed="both")],
        "zip": [frozenset({"13|05", "{x}"}), None, frozenset({"*"})],
        "job": ["*", None, "a\\b"],
        "disease": ["flu", None, "*"],
        "note": ["", "a,b;c\n\"d\"", "*"],
    })


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(a.columns) == list(b.columns)
    for name in a.columns:
        assert [None if v is None or v is np.nan else v for v in a[name].astype(object)] == \
            [None if v is None or v is np.nan else v for v in b[name].astype(object)], name


# --- the defects, as reported --------------------------------------------------------------
def test_numbers_are_written_exactly_not_as_g():
    # %g wrote [7.50616e+06, 8.97315e+06], an interval that excludes the record's own value.
    cell = encode_cell(pd.Interval(7506161.37, 8973154.37, closed="both"), "interval")
    assert cell == "[7506161.37, 8973154.37]"
    assert 7506161.37 in decode_cell(cell, "interval")
    assert format_generalized(pd.DataFrame({"x": [pd.Interval(7506161.37, 8973154.37,
                                                              closed="both")]}),
                              ["x"])["x"][0] == cell


def test_suppressed_root_and_star_value_are_three_different_cells():
    # '*' used to mean a suppressed cell, a hierarchy root and a data value '*'.
    suppressed = encode_cell(None, "node")
    root = encode_cell("*", "node")
    star_value = encode_cell(frozenset({"*"}), "set")
    assert len({suppressed, root, star_value}) == 3
    assert suppressed == ""
    assert decode_cell(suppressed, "node") is None
    assert decode_cell(root, "node") == "*"
    assert decode_cell(star_value, "set") == frozenset({"*"})


def test_a_value_holding_the_separator_is_not_a_set():
    # {a|b} used to print the same as the one value 'a|b'.
    one = encode_cell(frozenset({"a|b"}), "set")
    two = encode_cell(frozenset({"a", "b"}), "set")
    assert one != two
    assert decode_cell(one, "set") == frozenset({"a|b"})
    assert decode_cell(two, "set") == frozenset({"a", "b"})


def test_empty_labels_and_members_are_refused_not_written_as_suppressed():
    with pytest.raises(ValidationError, match="empty"):
        encode_cell("", "node")
    with pytest.raises(ValidationError, match="empty"):
        encode_cell(frozenset({""}), "set")
    with pytest.raises(ValidationError, match="finite"):
        encode_cell(pd.Interval(0.0, float("inf"), closed="both"), "interval")


def test_nul_is_refused_in_csv_and_kept_in_jsonl():
    table = pd.DataFrame({"raw": ["a\x00b"]})
    with pytest.raises(ValidationError, match="NUL"):
        released_csv(table, {})
    _same(read_released_jsonl(io.StringIO(released_jsonl(table, {}))), table)


def test_malformed_cells_are_refused_with_column_and_row():
    with pytest.raises(ValidationError, match=r"'zip', row 3"):
        decode_cell("{a|b", "set", column="zip", row=3)
    with pytest.raises(ValidationError, match="lone backslash"):
        decode_cell("{a\\}", "set")
    with pytest.raises(ValidationError, match="not an interval"):
        decode_cell("[1; 2]", "interval")


# --- round trips ---------------------------------------------------------------------------
@pytest.mark.parametrize("sep", [",", ";", "\t"])
def test_csv_round_trip(sep):
    table = _table()
    _same(read_released_csv(io.StringIO(released_csv(table, KINDS, sep=sep)), KINDS, sep=sep),
          table)


def test_jsonl_round_trip_needs_no_kinds_and_is_strict_json():
    table = _table()
    text = released_jsonl(table, KINDS)
    for line in text.splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    _same(read_released_jsonl(io.StringIO(text)), table)


def test_write_released_refuses_to_overwrite(tmp_path):
    path = tmp_path / "out.csv"
    write_released(_table(), path, KINDS)
    with pytest.raises(OutputExistsError, match="already exists"):
        write_released(_table(), path, KINDS)
    write_released(_table(), path, KINDS, fmt="jsonl", overwrite=True)
    _same(read_released_jsonl(path), _table())


_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
_text = st.text(_chars, min_size=1, max_size=8)
_number = st.floats(allow_nan=False, allow_infinity=False, width=64)


@st.composite
def _released(draw: st.DrawFn) -> pd.DataFrame:
    n = draw(st.integers(1, 6))
    rows = []
    for _ in range(n):
        lo, hi = sorted((draw(_number), draw(_number)))
        rows.append({
            "num": None if draw(st.booleans()) and n > 1 else pd.Interval(lo, hi, closed="both"),
            "cat": draw(st.none() | st.frozensets(_text, min_size=1, max_size=4)),
            "node": draw(st.none() | _text),
            "sens": draw(st.none() | _text),
            "raw": draw(st.text(_chars, max_size=6)),
        })
    return pd.DataFrame(rows, columns=["num", "cat", "node", "sens", "raw"])


@settings(max_examples=60, deadline=None)
@given(table=_released(), sep=st.sampled_from([",", ";", "\t", "|"]))
def test_any_released_table_round_trips(table, sep):
    kinds = {"num": "interval", "cat": "set", "node": "node", "sens": "value"}
    _same(read_released_csv(io.StringIO(released_csv(table, kinds, sep=sep)), kinds, sep=sep),
          table)
    _same(read_released_jsonl(io.StringIO(released_jsonl(table, kinds))), table)


def test_a_fitted_release_round_trips_and_keeps_every_record_inside_its_interval():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({
        "income": np.round(rng.uniform(1e6, 1e7, 300), 2),
        "zip": rng.choice(["1300", "1301", "13|02", "*"], 300).astype(object),
        "disease": rng.choice(["flu", "cold", "*"], 300).astype(object),
    })
    anonymizer = KAnonymizer(["income", "zip"], sensitive="disease", k=5)
    released = anonymizer.fit_transform(frame)
    kinds = column_kinds(anonymizer.plan_)
    assert kinds == {"income": "interval", "zip": "set", "disease": "value"}
    back = read_released_csv(io.StringIO(released_csv(released, kinds)), kinds)
    assert all(v in cell for v, cell in zip(frame["income"], back["income"], strict=True))
    assert all(z in cell for z, cell in zip(frame["zip"], back["zip"], strict=True))
    _same(back, released)
