"""Validation's fast paths for short columns refuse exactly what the numpy path refuses."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from dmt_model.server import validate
from dmt_model.server.validate import PackageRefused, cell_key
from dmt_privacy import Field, Schema

_CELLS = st.one_of(
    st.integers(min_value=-(10**320), max_value=10**320),
    st.integers(min_value=-200, max_value=200),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-150, max_value=150),
    st.booleans(),
    st.text(max_size=2),
    st.none(),
)
_BOUND = st.one_of(st.integers(min_value=-100, max_value=100),
                   st.floats(min_value=-1e6, max_value=1e6))


def _outcome(check: object) -> str:
    try:
        check()  # type: ignore[operator]
    except PackageRefused as exc:
        return exc.reason
    return "ok"


@settings(max_examples=400, deadline=None)
@given(values=st.lists(_CELLS, max_size=validate._SHORT), low=_BOUND, width=_BOUND)
def test_short_columns_are_refused_as_numpy_refuses_them(values, low, width):
    high = low + abs(width)

    def numpy_path() -> None:  # the reference: numpy whatever the length
        validate._within("f", validate._numbers("f", values), low, high)

    def short_path() -> None:
        x = validate._checked_numbers("f", values)
        assert type(x) is list
        validate._within("f", x, low, high)

    assert _outcome(short_path) == _outcome(numpy_path)


def test_long_columns_still_go_through_numpy():
    assert isinstance(validate._checked_numbers("f", [1.0] * (validate._SHORT + 1)), np.ndarray)


def _reference_cell_key(value: object) -> object:
    """cell_key as it was: each member of a value set keyed by the recursive call."""
    if type(value) is frozenset:
        members = []
        for m in value:
            if type(m) not in (float, int, str, bool):
                raise TypeError("value set member")
            members.append(cell_key(m))
        return ("set", frozenset(members))
    return cell_key(value)


@settings(max_examples=300, deadline=None)
@given(st.frozensets(st.one_of(st.integers(min_value=-(10**320), max_value=10**320),
                               st.floats(), st.booleans(), st.text(max_size=2), st.none(),
                               st.binary(max_size=2)), max_size=5))
def test_value_set_keys_are_the_members_keys(members):
    def key(f: object) -> object:
        try:
            return f(members)  # type: ignore[operator]
        except (TypeError, OverflowError) as exc:
            return type(exc)

    fast, reference = key(cell_key), key(_reference_cell_key)
    if isinstance(fast, tuple) and any(isinstance(k[1], float) and math.isnan(k[1])
                                       for k in fast[1]):
        assert len(fast[1]) == len(reference[1])  # NaN keys differ by identity, not by value
    else:
        assert fast == reference


def test_interval_endpoints_outside_the_domain_are_refused_without_numpy():
    view = validate._view(Schema((Field("age", "numeric", role="quasi-identifier",
                                         bounds=(0, 100)),)))
    validate._check_generalized("age", [pd.Interval(0.0, 100.0, closed="both")], view)
    for bad in (pd.Interval(-1.0, 5.0, closed="both"), pd.Interval(5.0, 101.0, closed="both")):
        try:
            validate._check_generalized("age", [bad], view)
        except PackageRefused as exc:
            assert exc.reason == "bounds: field 'age' holds values outside its bounds"
        else:
            raise AssertionError(f"{bad} was accepted")
