"""``Schema.outside_bounds`` reads the bounded columns in blocks; ``check_bounds`` and the
personalization's out-of-bounds count read it, with the messages they always gave."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dmt_privacy.errors import ValidationError
from dmt_privacy.schema import Field, Kind, Schema

SCHEMA = Schema([Field("a", Kind.NUMERIC, bounds=(0, 10)), Field("b", Kind.NUMERIC, bounds=(0, 1)),
                 Field("c", Kind.NUMERIC), Field("d", Kind.CATEGORICAL, categories=["x", "y"]),
                 Field("e", Kind.NUMERIC, bounds=(-5, 5))])


def _one_at_a_time(schema, frame, columns, slack):
    """The check as it was: column by column, in order, each column's first value outside."""
    for name in columns:
        field = schema[name]
        if field.kind is not Kind.NUMERIC or field.bounds is None:
            continue
        low, high = field.bounds
        margin = slack * (high - low)
        values = frame[name].to_numpy(dtype=float)
        outside = (values < low - margin) | (values > high + margin)
        if outside.any():
            return name, int(outside.argmax())
    return None


@pytest.mark.parametrize("at_once", [None, 2], ids=["one block", "blocks of two"])
def test_outside_bounds_is_each_column_checked_alone(at_once, monkeypatch):
    if at_once is not None:  # (a block takes _VALIDATED_AT_ONCE // records columns)
        monkeypatch.setattr("dmt_privacy.schema._VALIDATED_AT_ONCE", 30 * at_once)
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 30))
        n = 30 if at_once else n  # (blocks of exactly two columns)
        frame = pd.DataFrame({
            "a": rng.normal(5, 8, n), "b": rng.normal(0.5, 0.7, n),
            "c": rng.normal(size=n), "d": rng.choice(["x", "y"], n),
            "e": rng.integers(-9, 9, n)}, index=rng.permutation(n) + 100)
        frame.loc[frame.index[rng.random(n) < 0.1], "a"] = np.nan  # missing: never outside
        columns = list(rng.permutation(["a", "b", "c", "d", "e"]))
        slack = float(rng.choice([0.0, 0.5, 1.0]))
        names, outside = SCHEMA.outside_bounds(frame, columns=columns, slack=slack)
        assert names == [c for c in columns if c in ("a", "b", "e")]
        for j, name in enumerate(names):
            low, high = SCHEMA[name].bounds
            margin = slack * (high - low)
            values = frame[name].to_numpy(dtype=float)
            assert outside[:, j].tolist() == ((values < low - margin)
                                              | (values > high + margin)).tolist()
        # personalization's count: the records with some value outside
        assert int(outside.any(axis=1).sum()) == sum(
            _one_at_a_time(SCHEMA, frame.iloc[[i]], columns, slack) is not None
            for i in range(n))
        first = _one_at_a_time(SCHEMA, frame, columns, slack)
        if first is None:
            SCHEMA.check_bounds(frame, columns=columns, slack=slack)
            continue
        name, at = first
        with pytest.raises(ValidationError) as refused:
            SCHEMA.check_bounds(frame, columns=columns, slack=slack)
        value = frame[name].to_numpy(dtype=float)[at]
        assert str(refused.value).startswith(
            f"Column {name!r} has {float(value)!r} at row {int(frame.index[at])!r}, ")


def test_a_field_s_column_named_twice_is_refused_by_name_and_another_column_may_repeat():
    frame = pd.DataFrame([[1.0, 20.0, 0.5, 3, "x", 0]], columns=["a", "a", "b", "c", "d", "e"])
    for check in (SCHEMA.validate, SCHEMA.check_bounds, SCHEMA.outside_bounds):
        with pytest.raises(ValidationError, match=r"\['a'\] appear more than once"):
            check(frame)
    extra = pd.DataFrame([[1.0, 0.5, 3, "x", 0, "p", "q"]],
                         columns=["a", "b", "c", "d", "e", "z", "z"])
    SCHEMA.validate(extra, allow_extra=True)  # (z is no field: it may repeat)
    SCHEMA.check_bounds(extra)
    assert SCHEMA.outside_bounds(extra)[1].tolist() == [[False, False, False]]


def test_a_later_column_missing_or_not_numbers_raises_after_the_values_before_it():
    """The check reads the columns in order, as it did one at a time: a value outside in an
    earlier column is reported first; then a missing column or one of text raises as it
    always did."""
    outside = pd.DataFrame({"a": [50.0], "b": ["oops"], "e": [1]})
    with pytest.raises(ValidationError, match="'a' has 50.0"):
        SCHEMA.check_bounds(outside)
    with pytest.raises(ValidationError, match="'a' has 50.0"):
        SCHEMA.check_bounds(outside.drop(columns="b"))
    with pytest.raises(ValueError, match="could not convert"):
        SCHEMA.check_bounds(outside.assign(a=5.0))
    with pytest.raises(KeyError, match="'b'"):
        SCHEMA.check_bounds(outside.assign(a=5.0).drop(columns="b"))
    with pytest.raises(ValidationError, match=r"'a' has 50.0 at row 0, more than 1× the width"
                                              r" of its bounds \[0, 10\] outside them"):
        SCHEMA.check_bounds(outside.drop(columns="b"), slack=1)
