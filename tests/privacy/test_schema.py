import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dmt_privacy import DMTError, Field, Schema, SchemaError, UnknownCategoryError, ValidationError
from dmt_privacy.errors import InvalidBackup, InvalidPackage


def test_error_tree_subclasses_builtins_except_integrity_failures():
    assert issubclass(ValidationError, ValueError) and issubclass(ValidationError, DMTError)
    assert issubclass(UnknownCategoryError, ValidationError)
    for integrity in (InvalidBackup, InvalidPackage):
        assert issubclass(integrity, DMTError) and not issubclass(integrity, ValueError)


names = st.text(alphabet="abcdefghij_", min_size=1, max_size=8)


@st.composite
def fields(draw, name):
    kind = draw(st.sampled_from(["numeric", "categorical"]))
    if kind == "numeric":
        low = draw(st.floats(-1e6, 1e6))
        width = draw(st.floats(1e-3, 1e6))
        grid = draw(st.none() | st.floats(1e-4, 10))
        return Field(name, kind, role=draw(st.sampled_from(["insensitive", "quasi-identifier"])),
                     bounds=(low, low + width), grid=grid)
    cats = draw(st.lists(st.integers(0, 50) | st.text(max_size=5), min_size=1, max_size=6,
                         unique=True))
    return Field(name, kind, categories=tuple(cats))


@given(st.lists(names, min_size=1, max_size=5, unique=True).flatmap(
    lambda ns: st.tuples(*[fields(n) for n in ns])))
def test_schema_json_round_trip(generated):
    schema = Schema(tuple(generated), name="s")
    again = Schema.from_json(schema.to_json())
    assert again == schema
    assert again.schema_id == schema.schema_id
    for a, b in zip(again, schema, strict=True):
        assert a.categories == b.categories  # ints stay ints, strings stay strings


def test_hierarchy_round_trips_with_key_types():
    field = Field("rad", "categorical", categories=(1, 24), hierarchy={1: ("low", "*"),
                                                                      24: ("high", "*")})
    again = Schema.from_json(Schema((field,)).to_json())["rad"]
    assert again.hierarchy == {1: ("low", "*"), 24: ("high", "*")}


@pytest.mark.parametrize("kwargs, words", [
    ({"kind": "numbr"}, "kind 'numbr'"),
    ({"kind": "numeric", "bounds": (3, 1)}, "low < high"),
    ({"kind": "numeric", "grid": -1}, "grid"),
    ({"kind": "categorical", "categories": (1, 1)}, "repeat"),
    ({"kind": "categorical", "bounds": (0, 1)}, "bounds apply to numeric fields"),
])
def test_bad_fields_are_refused_with_the_field_named(kwargs, words):
    with pytest.raises(SchemaError, match=words) as info:
        Field("age", **kwargs)
    assert "age" in str(info.value)


def test_validate_names_column_and_value():
    schema = Schema((Field("a", "numeric"), Field("c", "categorical", categories=("x", "y"))))
    schema.validate(pd.DataFrame({"a": [1.0], "c": ["x"]}))
    with pytest.raises(ValidationError, match="Missing column"):
        schema.validate(pd.DataFrame({"a": [1.0]}))
    with pytest.raises(ValidationError, match="Unexpected column"):
        schema.validate(pd.DataFrame({"a": [1.0], "c": ["x"], "z": [0]}))
    with pytest.raises(ValidationError, match="'a'.*missing value"):
        schema.validate(pd.DataFrame({"a": [float("nan")], "c": ["x"]}, index=[7]))
    with pytest.raises(UnknownCategoryError, match="'c'.*'q'"):
        schema.validate(pd.DataFrame({"a": [1.0, 2.0], "c": ["x", "q"]}).sample(frac=1.0,
                                                                               random_state=1))


# --- media fields: the shape of an image, the token budget of a text ----------------------


def test_image_shape_and_text_max_tokens_round_trip_and_leave_other_ids_alone():
    image = Field("photo", "image", shape=(8, 8))
    text = Field("note", "text", max_tokens=16)
    schema = Schema((image, text))
    assert Schema.from_json(schema.to_json()) == schema
    # A field without them serializes as before, so existing schema ids do not move.
    assert "shape" not in Field("x", "numeric").to_dict()


@pytest.mark.parametrize("kwargs", [
    {"kind": "numeric", "shape": (8, 8)},
    {"kind": "image", "shape": (8,)},
    {"kind": "image", "shape": (8, 0)},
    {"kind": "image", "shape": (8, True)},
    {"kind": "numeric", "max_tokens": 5},
    {"kind": "text", "max_tokens": 0},
])
def test_bad_shape_or_max_tokens_is_refused(kwargs):
    with pytest.raises(SchemaError):
        Field("f", **kwargs)


def test_validate_names_the_image_of_the_wrong_size_and_the_non_text():
    schema = Schema((Field("photo", "image", shape=(8, 8, 1)), Field("note", "text")))
    good = np.zeros((8, 8), np.uint8)  # one channel may be implicit
    schema.validate(pd.DataFrame({"photo": [good], "note": ["hi"]}))
    with pytest.raises(ValidationError, match=r"'photo'.*row 1.*\(8, 8, 3\)"):
        schema.validate(pd.DataFrame({"photo": [good, np.zeros((8, 8, 3))], "note": ["a", "b"]}))
    with pytest.raises(ValidationError, match=r"'note' must hold text.*int"):
        schema.validate(pd.DataFrame({"photo": [good], "note": [3]}))


# --- validate: plain numeric columns in one conversion, each error as column by column ------
_CELLS = {"float64": [0.5, -2.0, np.nan, np.inf, -np.inf, 1e308],
          "int64": [0, 3, -7, 2**40], "bool": [True, False],
          "object": [1.5, None, "x", np.nan, np.inf, 2],
          "Float64": [0.25, None, np.inf], "datetime64[ns]": [pd.Timestamp(0), pd.NaT]}


@st.composite
def _frames(draw):
    n = draw(st.integers(0, 6))
    columns, schema_fields = {}, []
    for i in range(draw(st.integers(1, 5))):
        name = f"c{i}"
        if draw(st.booleans()):
            dtype = draw(st.sampled_from(sorted(_CELLS)))
            cells = draw(st.lists(st.sampled_from(_CELLS[dtype]), min_size=n, max_size=n))
            columns[name] = pd.Series(cells, dtype=dtype if dtype != "object" else object)
            schema_fields.append(Field(name, "numeric"))
        else:
            columns[name] = pd.Series(draw(st.lists(st.sampled_from(["x", "y", "q", None]),
                                                    min_size=n, max_size=n)), dtype=object)
            schema_fields.append(Field(name, "categorical", categories=("x", "y")))
    index = draw(st.sampled_from([None, [f"r{i}" for i in range(n)], list(range(n))[::-1]]))
    frame = pd.DataFrame(columns)
    if index is not None:
        frame.index = index
    return Schema(tuple(schema_fields)), frame


def _outcome(check):
    try:
        check()
    except ValidationError as exc:
        return type(exc), str(exc)
    return None


@given(_frames(), st.sampled_from([1, 3, 1 << 22]))
def test_validate_refuses_what_the_column_by_column_check_refuses_naming_the_same_cell(
        case, at_once):
    """Plain numeric columns are checked in one conversion (in blocks of ``at_once`` values
    for a large frame); whatever the columns' dtypes and bad cells, validate raises the
    error, naming the column, row and value, that checking column by column in the
    schema's order raises first, or none."""
    from dmt_privacy import schema as module

    schema, frame = case
    reference = _outcome(lambda: [module._validate_column(schema[name], frame[name])
                                  for name in schema.names])
    previous, module._VALIDATED_AT_ONCE = module._VALIDATED_AT_ONCE, at_once
    try:
        assert _outcome(lambda: schema.validate(frame)) == reference
    finally:
        module._VALIDATED_AT_ONCE = previous


def test_validate_names_the_first_bad_column_before_a_column_the_schema_lacks():
    schema = Schema((Field("a", "numeric"),))
    frame = pd.DataFrame({"a": [np.inf], "zzz": [1.0]})
    with pytest.raises(ValidationError, match="'a' has a non-finite value"):
        schema.validate(frame, columns=["a", "zzz"])


def test_validate_refuses_complex_numbers_instead_of_dropping_their_imaginary_part():
    schema = Schema((Field("a", "numeric"),))
    with pytest.raises(ValidationError, match="'a' holds complex numbers"):
        schema.validate(pd.DataFrame({"a": np.array([1 + 2j, 3 + 0j])}))


@pytest.mark.parametrize(("values", "match"), [
    ([1.0, np.inf, 2.0], r"'a' has a non-finite value inf at row 11"),
    ([1.0, 2.0, -np.inf], r"'a' has a non-finite value -inf at row 12"),
    (["1", "x", "2"], r"'a' must be numeric.*, got dtype"),
    ([1 + 0j, 2 + 1j, 3 + 0j], r"'a' holds complex numbers"),
])
def test_a_schema_and_an_anonymization_plan_refuse_a_numeric_column_alike(values, match):
    """One check of a numeric column (``finite_reals``): validating it and coding it for an
    anonymization plan name the same column, row and value (the row as Python prints it)."""
    from dmt_privacy.anonymity.plan import ColumnCoding

    column = pd.Series(values, index=[10, 11, 12], name="a")
    with pytest.raises(ValidationError, match=match):
        Schema((Field("a", "numeric"),)).validate(column.to_frame())
    with pytest.raises(ValidationError, match=match):
        ColumnCoding("a", "numeric", values=(1.0, 2.0)).encode(column)


def test_a_plans_missing_quasi_identifier_names_its_row_as_python_prints_it():
    from dmt_privacy.anonymity.plan import check_no_missing

    frame = pd.DataFrame({"age": [30.0, None]}, index=np.array([7, 8], dtype=np.int64))
    with pytest.raises(ValidationError, match=r"'age' has a missing value \(NaN/None\) at row 8;"):
        check_no_missing(frame, ["age"])


def test_a_category_of_another_type_is_named_as_such():
    """helper-105: '2' against the categories [1, 2, 3] read as if it were one of them."""
    field = Field("rooms", "categorical", categories=(1, 2, 3))
    with pytest.raises(UnknownCategoryError,
                       match=r"value '2' .* of type str and the category 2 of type int: convert"):
        field.category_index("2")
    with pytest.raises(UnknownCategoryError, match=r"value 7 .*extend the schema\.$"):
        field.category_index(7)
