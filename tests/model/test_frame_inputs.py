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
from dmt_model.foundation import TrainingConfig, train_foundation
from dmt_privacy.errors import ValidationError
from dmt_privacy.schema import Field, Schema


@pytest.fixture(scope="module")
def spec(foundation):
    return build_spec(foundation)


@pytest.fixture(scope="module")
def media():
    """A model of every kind of input: a number, a category named by strings, an image and
    a text, then another number."""
    schema = Schema((
        Field("x", "numeric", bounds=(-5.0, 5.0)),
        Field("colour", "categorical", categories=("red", "green", "blue")),
        Field("patch", "image", shape=(4, 4)),
        Field("note", "text", max_tokens=8),
        Field("y", "numeric", bounds=(-5.0, 5.0)),
        Field("level", "categorical", "target", categories=("low", "mid", "high"))),
        name="media")
    rng = np.random.default_rng(0)
    n = 40
    frame = pd.DataFrame({
        "x": rng.normal(size=n), "colour": rng.choice(["red", "green", "blue"], n),
        "patch": list(rng.integers(0, 256, size=(n, 4, 4)).astype(np.uint8)),
        "note": rng.choice(["apple bread", "run walk", "soup and the"], n),
        "y": rng.normal(size=n), "level": rng.choice(["low", "mid", "high"], n)})
    return build_spec(train_foundation(frame, schema, TrainingConfig(epochs=2, seed=0))), frame


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


BAD = st.sampled_from([np.nan, np.inf, -np.inf, 1e39, -1e39, "a lot", None, True, 7, 2.5])
DTYPES = st.sampled_from(["keep", "float32", "int64", "object", "Float64"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])
@given(cells=st.lists(st.tuples(st.integers(0, 13), st.integers(0, 4), BAD), max_size=3),
       retyped=st.lists(st.tuples(st.integers(0, 13), DTYPES), max_size=3),
       dropped=st.lists(st.integers(0, 13), max_size=1), rows=st.integers(0, 5))
def test_reading_at_once_gives_what_each_column_gives_and_names_the_same_fault(
        spec, simulation, cells, retyped, dropped, rows):
    frame = simulation.users[0].train.head(rows).copy()
    columns = list(frame.columns)
    for column, dtype in retyped:
        name = columns[column]
        if dtype == "int64":
            frame[name] = frame[name].round().astype("int64")
        elif dtype != "keep":
            frame[name] = frame[name].astype(dtype)
    for column, row, value in cells:
        if row < len(frame):
            name = columns[column]
            # a float into a float column keeps it numeric: the one conversion must refuse it
            if not (isinstance(value, float) and frame[name].dtype == np.float64):
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


@pytest.mark.parametrize(("value", "fault"), [
    (np.nan, "has NaN or infinity"), (-np.inf, "has NaN or infinity"),
    (1e39, "holds a number beyond what the model reads")])
def test_a_bad_number_in_a_numeric_column_is_named_with_its_row(spec, simulation, value, fault):
    frame = simulation.users[0].train.head(4).copy()
    assert frame["LSTAT"].dtype == np.float64
    frame.loc[frame.index[2], "LSTAT"] = value  # the column stays float64
    assert frame["LSTAT"].dtype == np.float64
    with pytest.raises(ValidationError, match=re.escape(f"Column 'LSTAT' {fault}") + ".*"
                       + re.escape(f"at row {int(frame.index[2])}")):
        frame_inputs(spec, frame)


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


def test_a_row_labelled_by_a_date_is_named_as_a_date(spec, simulation):
    frame = simulation.users[0].train.head(3).copy()
    frame.index = pd.Index([np.datetime64(f"2020-01-0{d}T00:00:00.000000001", "ns")
                            for d in (1, 2, 3)], dtype=object)
    frame.loc[frame.index[1], "CRIM"] = np.inf
    with pytest.raises(ValidationError, match="at row np.datetime64"):
        frame_inputs(spec, frame)


def test_no_records_read_as_no_inputs(spec, media, simulation):
    """Reading an empty frame once raised numpy's "cannot reshape array of size 0", and for
    a text input "must hold numbers"."""
    for model, frame in ((spec, simulation.users[0].train), media):
        empty = frame.head(0)
        inputs = frame_inputs(model, empty)
        assert list(inputs) == [f.name for f in model.description.input]
        for f in model.description.input:
            assert inputs[f.name].shape[0] == 0
        assert len(predict_frame(model, empty)) == 0
    assert frame_inputs(media[0], media[1].head(0))["note"].shape == (0, 8)


def test_an_input_given_twice_is_refused_naming_it(spec, media, simulation):
    """A copied column of string categories was read as one value per copy (2 values for 6
    records); a copied CHAS (categories that are numbers) silently changed the prediction."""
    model, frame = media
    six = frame.head(6)
    with pytest.raises(ValidationError, match=r"\['colour'\] appear more than once"):
        frame_inputs(model, pd.concat([six, six[["colour"]]], axis=1))
    boston = simulation.users[0].train.head(2)
    with pytest.raises(ValidationError, match=r"\['CHAS'\] appear more than once"):
        predict_frame(spec, pd.concat([boston, boston[["CHAS"]]], axis=1))
    # a copy of a column the model does not read is no input of it
    assert len(predict_frame(spec, pd.concat([boston, boston[["MEDV"]]], axis=1))) == 2


def test_every_kind_of_input_reads_as_before(media):
    model, frame = media
    inputs, before = frame_inputs(model, frame.head(5)), _column_by_column(model, frame.head(5))
    assert list(inputs) == list(before)
    for name, values in before.items():
        np.testing.assert_array_equal(inputs[name], values)
    assert inputs["patch"].shape == (5, 4, 4) and inputs["note"].shape == (5, 8)


def test_complex_numbers_are_refused_not_cut_to_their_real_part(spec, media, simulation):
    """float64 would drop the imaginary part of a complex column (or image) without a word."""
    boston = simulation.users[0].train.head(3)
    with pytest.raises(ValidationError, match="'CRIM' holds complex numbers"):
        predict_frame(spec, boston.assign(CRIM=boston["CRIM"] + 1j))
    model, frame = media
    three = frame.head(3)
    with pytest.raises(ValidationError, match="'patch' holds complex numbers"):
        frame_inputs(model, three.assign(patch=[p + 1j for p in three["patch"]]))
    # a complex dtype whose imaginary parts are all zero is refused too: say which part
    with pytest.raises(ValidationError, match="'x' holds complex numbers"):
        frame_inputs(model, three.assign(x=three["x"].astype(complex)))
