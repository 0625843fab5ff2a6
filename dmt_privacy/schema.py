"""Field and Schema: what each column of a user's records is and how it may be treated.

A :class:`Schema` is a frozen, JSON-serializable description of records. Both
sides of the SDK read it: the device to validate, anonymize and perturb
records, the server to validate what it receives and to build features. Its
:attr:`Schema.schema_id` is a hash of its canonical JSON, so two parties can
tell cheaply whether they speak of the same records.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from dmt_privacy.errors import SchemaError, UnknownCategoryError, ValidationError

__all__ = ["Category", "Field", "Kind", "Role", "Schema"]

Category = str | int | float | bool

SCHEMA_FORMAT = 1


class Kind(str, Enum):
    """What a field's values are."""

    NUMERIC = "numeric"
    CATEGORICAL = "categorical"
    TEXT = "text"
    IMAGE = "image"
    AUDIO = "audio"


class Role(str, Enum):
    """What a field means for privacy and for the model."""

    IDENTIFIER = "identifier"
    QUASI_IDENTIFIER = "quasi-identifier"
    SENSITIVE = "sensitive"
    INSENSITIVE = "insensitive"
    TARGET = "target"


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass(frozen=True)
class Field:
    """One column of a record.

    Parameters
    ----------
    name:
        Column name, as it appears in DataFrames and in Core ML inputs.
    kind:
        A :class:`Kind` or its string value.
    role:
        A :class:`Role` or its string value. Defaults to insensitive.
    bounds:
        ``(low, high)`` for numeric fields. Required before a numeric field can
        be perturbed with differential privacy; never inferred from data. For
        an image or audio field, the range of its pixels or samples (e.g.
        ``(0, 255)`` for 8-bit pixels, ``(-1, 1)`` for float audio): a server
        accepts such a field only with it, and refuses an array outside it.
    grid:
        Spacing of the grid numeric values are snapped to when perturbed
        (a positive number; ``None`` means no grid was declared).
    categories:
        The vocabulary of a categorical field, in a fixed order.
    hierarchy:
        Optional generalization hierarchy of a categorical field: for each
        category, its ancestors from the most specific to the root
        (ARX's CSV layout without the leaf itself).
    shape:
        The array shape of an image field's values: ``(height, width)`` for one
        channel or ``(height, width, channels)``; a model needs it to size its input.
    max_tokens:
        The most tokens a text field's value may hold once tokenized
        (:mod:`dmt_privacy.tokens`); a model needs it to size its input.
    description:
        Free text for people.
    """

    name: str
    kind: Kind
    role: Role = Role.INSENSITIVE
    bounds: tuple[float, float] | None = None
    grid: float | None = None
    categories: tuple[Category, ...] | None = None
    hierarchy: Mapping[Category, tuple[str, ...]] | None = field(default=None, compare=False)
    description: str = ""
    shape: tuple[int, ...] | None = None
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise SchemaError(f"Field name must be a non-empty string, got {self.name!r}.")
        try:
            object.__setattr__(self, "kind", Kind(self.kind))
        except ValueError:
            kinds = ", ".join(k.value for k in Kind)
            raise SchemaError(
                f"Field {self.name!r}: kind {self.kind!r} is not one of {kinds}."
            ) from None
        try:
            object.__setattr__(self, "role", Role(self.role))
        except ValueError:
            roles = ", ".join(r.value for r in Role)
            raise SchemaError(
                f"Field {self.name!r}: role {self.role!r} is not one of {roles}."
            ) from None
        if self.bounds is not None:
            if self.kind not in (Kind.NUMERIC, Kind.IMAGE, Kind.AUDIO):
                raise SchemaError(f"Field {self.name!r}: bounds apply to numeric fields (and to "
                                  "image and audio fields: the range of their values) only.")
            low, high = (float(b) for b in self.bounds)
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise SchemaError(
                    f"Field {self.name!r}: bounds must be finite with low < high, "
                    f"got {self.bounds!r}."
                )
            object.__setattr__(self, "bounds", (low, high))
        if self.grid is not None:
            if self.kind is not Kind.NUMERIC:
                raise SchemaError(f"Field {self.name!r}: a grid applies to numeric fields only.")
            grid = float(self.grid)
            if not (math.isfinite(grid) and grid > 0):
                raise SchemaError(
                    f"Field {self.name!r}: grid must be a positive number, got {self.grid!r}."
                )
            object.__setattr__(self, "grid", grid)
        if self.categories is not None:
            if self.kind is not Kind.CATEGORICAL:
                raise SchemaError(
                    f"Field {self.name!r}: categories apply to categorical fields only."
                )
            cats = tuple(self.categories)
            if not cats:
                raise SchemaError(f"Field {self.name!r}: categories must not be empty.")
            if len(set(cats)) != len(cats):
                raise SchemaError(f"Field {self.name!r}: categories repeat a value: {cats!r}.")
            object.__setattr__(self, "categories", cats)
        if self.hierarchy is not None:
            if self.categories is None:
                raise SchemaError(
                    f"Field {self.name!r}: a hierarchy needs the field's categories."
                )
            hierarchy = {k: tuple(str(a) for a in v) for k, v in self.hierarchy.items()}
            missing = [c for c in self.categories if c not in hierarchy]
            if missing:
                raise SchemaError(
                    f"Field {self.name!r}: the hierarchy has no row for categories "
                    f"{missing[:5]!r}; add a row for every category."
                )
            object.__setattr__(self, "hierarchy", hierarchy)
        if self.shape is not None:
            if self.kind is not Kind.IMAGE:
                raise SchemaError(f"Field {self.name!r}: a shape applies to image fields only.")
            shape = tuple(self.shape)
            if not (len(shape) in (2, 3) and all(_positive_int(d) for d in shape)):
                raise SchemaError(
                    f"Field {self.name!r}: shape must be (height, width) or (height, width, "
                    f"channels) in positive integers, got {self.shape!r}.")
            object.__setattr__(self, "shape", tuple(int(d) for d in shape))
        if self.max_tokens is not None:
            if self.kind is not Kind.TEXT:
                raise SchemaError(
                    f"Field {self.name!r}: max_tokens applies to text fields only.")
            if not _positive_int(self.max_tokens):
                raise SchemaError(f"Field {self.name!r}: max_tokens must be a positive integer, "
                                  f"got {self.max_tokens!r}.")

    def evolve(self, **changes: Any) -> Field:
        """A copy of this field with some attributes changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; :meth:`from_dict` reverses it."""
        out: dict[str, Any] = {"name": self.name, "kind": self.kind.value, "role": self.role.value}
        if self.bounds is not None:
            out["bounds"] = list(self.bounds)
        if self.grid is not None:
            out["grid"] = self.grid
        if self.categories is not None:
            out["categories"] = list(self.categories)
        if self.hierarchy is not None:
            # JSON object keys are strings: keep the pairs as a list to preserve key types.
            out["hierarchy"] = [[k, list(v)] for k, v in self.hierarchy.items()]
        if self.description:
            out["description"] = self.description
        if self.shape is not None:
            out["shape"] = list(self.shape)
        if self.max_tokens is not None:
            out["max_tokens"] = self.max_tokens
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Field:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise SchemaError(f"Field description has unknown keys {sorted(unknown)!r}.")
        kwargs = dict(data)
        if "bounds" in kwargs and kwargs["bounds"] is not None:
            kwargs["bounds"] = tuple(kwargs["bounds"])
        if "categories" in kwargs and kwargs["categories"] is not None:
            kwargs["categories"] = tuple(kwargs["categories"])
        if "hierarchy" in kwargs and kwargs["hierarchy"] is not None:
            kwargs["hierarchy"] = {k: tuple(v) for k, v in kwargs["hierarchy"]}
        if kwargs.get("shape") is not None:
            kwargs["shape"] = tuple(kwargs["shape"])
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise SchemaError(f"Field description is incomplete: {exc}.") from None

    def category_index(self, value: Category) -> int:
        """Position of ``value`` in the vocabulary; raises :class:`UnknownCategoryError`."""
        if self.categories is None:
            raise SchemaError(f"Field {self.name!r} has no categories.")
        try:
            return self.categories.index(value)
        except ValueError:
            value = value.item() if hasattr(value, "item") else value  # numpy scalars
            # '2' against the category 2 reads as if it were one (helper-105): say the types
            alike = next((c for c in self.categories if str(c) == str(value)), None)
            hint = ("Map it to a known category or extend the schema." if alike is None else
                    f"It is of type {type(value).__name__} and the category {alike!r} of "
                    f"type {type(alike).__name__}: convert the column to the schema's type.")
            raise UnknownCategoryError(
                f"Field {self.name!r}: value {value!r} is not one of its categories "
                f"{list(self.categories)!r}. {hint}"
            ) from None


#: At most this many values are converted at once (32 MiB of float64) by
#: :func:`_finite_plain_numbers` and :meth:`Schema.outside_bounds`: a wide frame of many
#: records is converted in column blocks.
_VALIDATED_AT_ONCE = 1 << 22


def _column_blocks(frame: Any, names: Sequence[Any]) -> Iterator[Sequence[Any]]:
    """``names`` in order, in blocks of as many columns as one conversion of ``frame``'s
    rows takes (:data:`_VALIDATED_AT_ONCE`)."""
    width = max(1, _VALIDATED_AT_ONCE // max(len(frame), 1))
    return (names[start:start + width] for start in range(0, len(names), width))


def _finite_plain_numbers(schema: Schema, frame: Any, names: Sequence[str]) -> set[str]:
    """The numeric fields of ``names`` whose columns hold plain numbers (a numpy bool, int
    or float dtype), every one finite: checked in one conversion (or a few, for a large
    frame) instead of column by column. A column with a missing or non-finite value is left out, for
    :func:`_validate_column` to name it. No field's column is named twice
    (:func:`_refuse_repeated_columns`)."""
    import numpy as np

    dtypes = frame.dtypes
    plain = [name for name in names if name in schema and schema[name].kind is Kind.NUMERIC
             and isinstance(dtypes[name], np.dtype) and dtypes[name].kind in "biuf"]
    checked: set[str] = set()
    for block in _column_blocks(frame, plain):
        finite = np.isfinite(frame[block].to_numpy(dtype=np.float64)).all(axis=0)
        checked.update(name for name, ok in zip(block, finite.tolist(), strict=True) if ok)
    return checked


def refuse_complex(column: Any, name: str, reads: str, *, cells: bool = False) -> None:
    """Raise :class:`ValidationError` if ``column`` holds complex numbers: converting them to
    float would keep their real part with only numpy's warning. ``reads`` says what the reader
    takes instead ("the model reads real ones"); ``cells`` also looks inside array cells
    (images, vectors) of an object column."""
    import numpy as np

    if getattr(column.dtype, "kind", "") == "c" or (
            cells and any(np.iscomplexobj(value) for value in column)):
        raise ValidationError(
            f"Column {name!r} holds complex numbers (dtype {column.dtype}); {reads}: take "
            "the part it should hold (.real, abs()) first.")


#: The largest magnitude below which every integer is a float64 exactly.
EXACT_INTEGERS = 2**53


def finite_reals(column: Any, name: str, reads: str, *, purpose: str = "",
                 exact: bool = False) -> Any:
    """``column`` as a float64 array, or :class:`ValidationError` naming the column (and the
    row of the first offending value) if it holds complex numbers (``reads``, as
    :func:`refuse_complex`), values that are not numbers ("must be numeric" + ``purpose``)
    or non-finite ones. The one check of a numeric column: :meth:`Schema.validate` and the
    anonymization plans both use it.

    ``exact``: refuse integers beyond :data:`EXACT_INTEGERS` too, which float64 rounds. A
    k-anonymity plan releases intervals of float64 ends, so a nanosecond timestamp
    1700000000000000123 was released as [1700000000000000000, 1700000000000000000], and
    uint64 2⁶⁴ − 1 as [2⁶⁴, 2⁶⁴]: intervals that do not hold the value (helper-115)."""
    import numpy as np

    refuse_complex(column, name, reads)
    if exact:
        raw = column.to_numpy()
        if raw.dtype.kind in "iu":
            # compared, not abs(): abs(-2**63) overflows int64 and stayed -2**63 (helper-116)
            far = np.asarray((raw > EXACT_INTEGERS) | (raw < -EXACT_INTEGERS), dtype=bool)
        elif raw.dtype == object:
            far = np.fromiter((isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                               and abs(int(v)) > EXACT_INTEGERS for v in raw),
                              dtype=bool, count=len(raw))
        else:
            far = np.zeros(len(raw), dtype=bool)
        if far.any():
            at = int(np.flatnonzero(far)[0])
            value = raw[at].item() if isinstance(raw[at], np.generic) else raw[at]
            raise ValidationError(
                f"Column {name!r} has {value!r} at row {row_label(column.index[at])!r}, an "
                f"integer beyond 2**53 that a float64 cannot hold exactly, so no released "
                "interval could hold it; subtract an offset first (a timestamp less the start "
                "of its day), or share it as a category.")
    try:
        values = column.to_numpy(dtype=float)
    except (TypeError, ValueError):
        raise ValidationError(
            f"Column {name!r} must be numeric{purpose}, got dtype {column.dtype}.") from None
    bad = ~np.isfinite(values)
    if bad.any():
        at = int(np.flatnonzero(bad)[0])
        raise ValidationError(f"Column {name!r} has a non-finite value {float(values[at])!r} "
                              f"at row {row_label(column.index[at])!r}.")
    return values


def _refuse_repeated_columns(frame: Any, names: Sequence[str]) -> None:
    """Raise :class:`ValidationError` if the column of one of the fields ``names`` appears
    more than once (which one would the field read?); other columns may repeat."""
    if not frame.columns.is_unique:
        repeated = set(frame.columns[frame.columns.duplicated()])
        if clash := [name for name in names if name in repeated]:
            raise ValidationError(f"Column(s) {clash!r} appear more than once; keep one "
                                  "column a field.")


def _outside(frame: Any, bounded: Sequence[tuple[str, tuple[float, float]]],
             slack: float) -> tuple[list[str], Any]:
    """:meth:`Schema.outside_bounds` of the fields ``bounded`` (each with its bounds), their
    columns converted at once (one column as ``frame[name]``, which raises as the check
    always did for a column missing or not of numbers)."""
    import numpy as np

    names = [name for name, _ in bounded]
    low = np.array([bounds[0] for _, bounds in bounded], dtype=np.float64)
    high = np.array([bounds[1] for _, bounds in bounded], dtype=np.float64)
    margin = slack * (high - low)
    values = frame[names[0]].to_numpy(dtype=np.float64)[:, None] if len(names) == 1 \
        else frame[names].to_numpy(dtype=np.float64)
    return names, (values < low - margin) | (values > high + margin)


def row_label(row: Any) -> Any:
    """A row label as the user wrote it: ``372``, not numpy's ``np.int64(372)`` (a date or a
    duration stays itself: ``item()`` would make it a number of nanoseconds)."""
    import numpy as np

    plain = isinstance(row, (np.number, np.bool_, np.character)) and \
        not isinstance(row, np.timedelta64)
    return row.item() if plain else row


def _validate_column(spec: Field, column: Any) -> None:
    """:meth:`Schema.validate` of one column: no missing value, and values its field allows."""
    name = spec.name
    nulls = column.isna().to_numpy()
    if nulls.any():
        row = row_label(column.index[int(nulls.argmax())])
        raise ValidationError(
            f"Column {name!r} has a missing value (NaN/None) at row {row!r}; "
            "fill or drop such rows first."
        )
    if spec.kind is Kind.NUMERIC:
        finite_reals(column, name, "the field holds real numbers")
    elif spec.kind is Kind.CATEGORICAL and spec.categories is not None:
        allowed = set(spec.categories)
        unknown = ~column.isin(allowed).to_numpy()
        if unknown.any():
            pos = int(unknown.argmax())
            spec.category_index(column.iloc[pos])  # raises with the message
    elif spec.kind is Kind.IMAGE and spec.shape is not None:
        for row, value in column.items():
            _check_image(spec, row, value)
    elif spec.kind is Kind.TEXT:
        for row, value in column.items():
            if not isinstance(value, str):
                raise ValidationError(
                    f"Column {name!r} must hold text, got {type(value).__name__} at "
                    f"row {row!r}.")


def _check_image(spec: Field, row: Any, value: Any) -> None:
    """An image cell must be a finite array of the field's shape (one channel may be implicit)."""
    import numpy as np

    array = np.asarray(value)
    shape = spec.shape or ()
    fits = array.shape == shape or (len(shape) == 3 and shape[2] == 1
                                    and array.shape == shape[:2])
    if not fits:
        raise ValidationError(
            f"Column {spec.name!r}: the image at row {row!r} has shape {array.shape}, but the "
            f"schema says {shape}; resize or convert it (channels last) before passing it.")
    if array.dtype.kind not in "uif" or not np.isfinite(array).all():
        raise ValidationError(
            f"Column {spec.name!r}: the image at row {row!r} must hold finite numbers "
            f"(pixels as the camera gives them, 0..255), got dtype {array.dtype}.")


@dataclass(frozen=True)
class Schema:
    """An ordered collection of :class:`Field` with unique names."""

    fields: tuple[Field, ...]
    name: str = "records"

    def __post_init__(self) -> None:
        fields = tuple(self.fields)
        if not fields:
            raise SchemaError("A schema needs at least one field.")
        names = [f.name for f in fields]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise SchemaError(f"Schema {self.name!r} repeats field names {duplicated!r}.")
        object.__setattr__(self, "fields", fields)

    # --- access -----------------------------------------------------------
    def __iter__(self) -> Iterator[Field]:
        return iter(self.fields)

    def __len__(self) -> int:
        return len(self.fields)

    def __contains__(self, name: object) -> bool:
        return any(f.name == name for f in self.fields)

    def __getitem__(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(
            f"Schema {self.name!r} has no field {name!r}; its fields are {self.names!r}."
        )

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    def by_role(self, *roles: Role | str) -> list[Field]:
        wanted = {Role(r) for r in roles}
        return [f for f in self.fields if f.role in wanted]

    def by_kind(self, *kinds: Kind | str) -> list[Field]:
        wanted = {Kind(k) for k in kinds}
        return [f for f in self.fields if f.kind in wanted]

    @property
    def target(self) -> Field | None:
        targets = self.by_role(Role.TARGET)
        return targets[0] if targets else None

    def select(self, names: Iterable[str]) -> Schema:
        """A schema with only the named fields, in the order given."""
        return Schema(tuple(self[n] for n in names), name=self.name)

    def evolve(self, **changes: Any) -> Schema:
        return dataclasses.replace(self, **changes)

    # --- validation -------------------------------------------------------
    def validate(self, frame: Any, *, columns: Sequence[str] | None = None,
                 allow_extra: bool = False) -> None:
        """Check that a DataFrame holds the named fields with values they allow.

        Raises :class:`ValidationError` (or :class:`UnknownCategoryError`) naming
        the column and the first offending value. Numeric values outside the
        declared bounds are allowed here: DP clamps them, models extrapolate.
        """
        names = list(columns) if columns is not None else self.names
        _refuse_repeated_columns(frame, names)
        present = list(frame.columns)
        missing = [n for n in names if n not in present]
        if missing:
            raise ValidationError(
                f"Missing column(s) {missing!r}; expected {names!r}, got {present!r}."
            )
        if not allow_extra:
            extra = [c for c in present if c not in names]
            if extra:
                raise ValidationError(
                    f"Unexpected column(s) {extra!r}; expected exactly {names!r}. "
                    "Drop them or add them to the schema."
                )
        checked = _finite_plain_numbers(self, frame, names)
        for name in names:
            if name not in checked:
                _validate_column(self[name], frame[name])

    def outside_bounds(self, frame: Any, *, columns: Sequence[str] | None = None,
                       slack: float = 0.0) -> tuple[list[str], Any]:
        """The numeric fields of ``columns`` (default: every field) that have bounds, and for
        each record and each of them whether its value lies outside the bounds widened by
        ``slack`` times their width on either side: a boolean ``[records, fields]`` array (a
        missing value is not outside). The columns are read in blocks, not one by one."""
        import numpy as np

        blocks = list(self._outside_blocks(frame, columns, slack))
        return ([name for names, _ in blocks for name in names],
                np.concatenate([outside for _, outside in blocks], axis=1) if blocks
                else np.zeros((len(frame), 0), dtype=bool))

    def _outside_blocks(self, frame: Any, columns: Sequence[str] | None,
                        slack: float) -> Iterator[tuple[list[str], Any]]:
        """:meth:`outside_bounds` a block of fields at a time, in ``columns``' order; a block
        whose columns do not convert at once (one missing, or not of numbers) comes a field
        at a time, so that its failing column raises only after the fields before it."""
        bounded = [(name, bounds) for name in (columns if columns is not None else self.names)
                   if self[name].kind is Kind.NUMERIC and (bounds := self[name].bounds)]
        _refuse_repeated_columns(frame, [name for name, _ in bounded])
        for block in _column_blocks(frame, bounded):
            try:
                at_once = _outside(frame, block, slack)
            except (KeyError, ValueError, TypeError):
                yield from (_outside(frame, [one], slack) for one in block)
            else:
                yield at_once

    def check_bounds(self, frame: Any, *, columns: Sequence[str] | None = None,
                     slack: float = 0.0) -> None:
        """Raise :class:`ValidationError` for a numeric value outside its field's bounds.

        Names the column, the row and the value (the first column, in ``columns``' order,
        with such a value, and its first). Fields without bounds are not checked. ``slack``
        widens each field's bounds by that many times their width on either side: with
        ``slack=1`` a value is refused only when it is so far outside that it looks corrupt
        (what personalization checks, since bounds say what may be *shared*).
        """
        for names, outside in self._outside_blocks(frame, columns, slack):
            if not outside.any():
                continue
            column = int(outside.any(axis=0).argmax())
            at = int(outside[:, column].argmax())
            name = names[column]
            low, high = self[name].bounds  # type: ignore[misc]
            value = frame[name].to_numpy(dtype=float)[at]
            row = row_label(frame.index[at])
            where = (f"more than {slack:g}× the width of its bounds [{low:g}, {high:g}] "
                     "outside them, so it looks corrupt" if slack
                     else f"outside its bounds [{low:g}, {high:g}]")
            raise ValidationError(
                f"Column {name!r} has {float(value)!r} at row {row!r}, {where}; fix "
                "the record or widen the schema's bounds."
            )

    # --- JSON -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": SCHEMA_FORMAT, "name": self.name,
                "fields": [f.to_dict() for f in self.fields]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Schema:
        fmt = data.get("format")
        if fmt is None:
            raise SchemaError(
                "This is not a dmt schema: it has no \"format\" key. Write one with "
                "Schema.to_json() (see dmt_model.datasets.BOSTON_SCHEMA for an example)."
            )
        if fmt != SCHEMA_FORMAT:
            raise SchemaError(
                f"Schema format {fmt!r} is not supported (this SDK reads format "
                f"{SCHEMA_FORMAT}); upgrade dmt."
            )
        try:
            fields = tuple(Field.from_dict(f) for f in data["fields"])
            return cls(fields=fields, name=str(data.get("name", "records")))
        except KeyError as exc:
            raise SchemaError(f"Schema description lacks {exc}.") from None

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces); the basis of :attr:`schema_id`."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Schema:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SchemaError(f"Schema JSON is malformed: {exc}.") from None
        if not isinstance(data, dict):
            raise SchemaError("Schema JSON must be an object.")
        return cls.from_dict(data)

    @property
    def schema_id(self) -> str:
        """First 16 hex digits of the SHA-256 of the canonical JSON."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]
