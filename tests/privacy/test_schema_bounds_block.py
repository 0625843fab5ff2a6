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


def test_outside_bounds_is_each_column_checked_alone():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 30))
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


def test_a_column_named_twice_is_refused_by_name():
    frame = pd.DataFrame([[1.0, 20.0, 0.5, 3, "x", 0]], columns=["a", "a", "b", "c", "d", "e"])
    for check in (SCHEMA.validate, SCHEMA.check_bounds, SCHEMA.outside_bounds):
        with pytest.raises(ValidationError, match=r"\['a'\] appear more than once"):
            check(frame)
