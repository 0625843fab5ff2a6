"""frame_inputs reads a model's plain numeric inputs in one conversion: the inputs, and the
error naming a bad cell, are those of reading each input from its own column (the only way
before, which cost a small device's batch of Synthetic's 60 inputs ten times its prediction)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmt_model.coreml import build_spec
from dmt_model.coreml.evaluate import _column_input, _featurizer, frame_inputs, predict_frame
from dmt_privacy.errors import ValidationError


@pytest.fixture(scope="module")
def spec(foundation):
    return build_spec(foundation)


def _column_by_column(spec, frame):
    """Every input read from its own column, in the model's order (the reading before)."""
    featurizer = _featurizer(spec)
    return {f.name: _column_input(spec, f, featurizer if f.name in featurizer.bag_fields
                                  else None, frame) for f in spec.description.input}


def _outcome(read, spec, frame):
    try:
        return read(spec, frame)
    except ValidationError as error:
        return str(error)


BAD = st.sampled_from([np.nan, np.inf, -np.inf, 1e39, "a lot", None, True, 7, 2.5])
DTYPES = st.sampled_from(["keep", "float32", "int64", "object", "Float64"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])
@given(cells=st.lists(st.tuples(st.integers(0, 13), st.integers(0, 4), BAD), max_size=3),
       retyped=st.lists(st.tuples(st.integers(0, 13), DTYPES), max_size=3),
       dropped=st.lists(st.integers(0, 13), max_size=1), rows=st.integers(0, 5))
def test_reading_at_once_gives_what_each_column_gives_and_names_the_same_fault(
        spec, simulation, cells, retyped, dropped, rows):
    frame = simulation.users[0].train.head(5).copy().head(rows)
    columns = list(frame.columns)
    for column, dtype in retyped:
        name = columns[column]
        if dtype != "keep" and not (dtype == "int64" and frame[name].dtype.kind == "f"):
            frame[name] = frame[name].astype(dtype)
    for column, row, value in cells:
        if row < len(frame):
            name = columns[column]
            frame[name] = frame[name].astype(object)
            frame.iloc[row, column] = value
    frame = frame.drop(columns=[columns[c] for c in dropped])
    at_once, one_by_one = (_outcome(read, spec, frame)
                           for read in (frame_inputs, _column_by_column))
    if isinstance(one_by_one, str):
        assert at_once == one_by_one
    else:
        assert list(at_once) == list(one_by_one)
        for name, values in one_by_one.items():
            assert at_once[name].dtype == values.dtype and at_once[name].shape == values.shape
            np.testing.assert_array_equal(at_once[name], values)


def test_the_first_bad_input_in_the_models_order_is_named(spec, simulation):
    frame = simulation.users[0].train.head(4).copy()
    first, later = (f.name for f in spec.description.input if f.name in ("CRIM", "LSTAT"))
    frame[later] = frame[later].astype(object)
    frame.loc[frame.index[2], later] = "high"
    frame.loc[frame.index[1], first] = np.nan
    row = int(frame.index[1])  # named as the user wrote it, not as np.int64(...)
    with pytest.raises(ValidationError, match=re.escape(f"Column '{first}' has NaN or infinity "
                                                        f"at row {row}.")):
        frame_inputs(spec, frame)
    frame[first] = 1.0
    with pytest.raises(ValidationError, match=f"Column '{later}' must hold numbers"):
        frame_inputs(spec, frame)
    frame[later] = pd.Series(2, index=frame.index, dtype="int32")
    assert all(np.isfinite(values).all() for values in frame_inputs(spec, frame).values())


def test_no_records_read_as_no_inputs(spec, simulation):
    """Reading an empty frame once raised numpy's "cannot reshape array of size 0"."""
    empty = simulation.users[0].train.head(0)
    inputs = frame_inputs(spec, empty)
    assert list(inputs) == [f.name for f in spec.description.input]
    assert all(len(values) == 0 for values in inputs.values())
    assert predict_frame(spec, empty).shape == (0,)
