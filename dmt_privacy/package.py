"""Share packages: the records a device shares, columnar, with their privacy receipt.

A :class:`SharePackage` is what leaves a device: some records (one list per
field, equal lengths), the schema they follow, a random package id, a coarse
creation day and a :class:`PrivacyReceipt` saying what was done to them
(k, l and t achieved, the local-DP release receipt, the modifications
applied). :func:`seal_package` encodes it (msgpack) and seals it to the
server's key; :func:`open_package` is the server's inverse and raises one
bare :class:`~dmt_privacy.errors.InvalidPackage` for anything wrong, whether
the envelope, the msgpack or the structure.

Cell values: ``None``, ``bool``, ``int`` (64-bit), ``float`` (binary64, NaN
and ±inf included), ``str``, ``bytes``, closed/half-open numeric intervals
(``pandas.Interval`` with float endpoints, as the k-anonymizer releases them),
value sets (``frozenset`` of scalars, as the k-anonymizer releases
categorical classes) and numeric arrays (``numpy.ndarray`` of 1 to 4
dimensions and dtype uint8, uint16, int16, int32, float32 or float64: images
and audio clips as :mod:`dmt_privacy.modify` returns them; decoded arrays are
read-only). Hierarchy nodes are the node's label, a ``str``.

Wire format, package format 1: one msgpack map of exactly these keys (written in
this order; read in any order); format 2 is format 1 plus one key, ``"token"``
(bin: a Privacy Pass token, :mod:`dmt_privacy.privacy_pass`, that the server
spends when it stores the package), written only when the package carries one::

    "format"      int 1
    "schema_id"   str (Schema.schema_id)
    "package_id"  str, 32 lowercase hex digits
    "created_day" str "YYYY-MM-DD" (UTC)
    "n_records"   int
    "receipt"     map: "k" int|nil, "l" float|nil, "t" float|nil,
                  "dp" ReleaseReceipt.to_dict() map|nil, "modifications" [str]
    "columns"     array of [name str, encoding str, data], in field order
    "token"       bin (format 2 only), at most 1024 bytes

Column encodings: ``"f8"`` (every cell a float): data is a bin of
``8 * n_records`` bytes, little-endian IEEE 754 binary64; ``"i8"`` (every
cell an int in int64 range): a bin of little-endian int64; ``"obj"``: an
array of ``n_records`` msgpack values, floats always as float64 (never
``use_single_float``: it would truncate perturbed values). Three msgpack ext
types, and no others, may appear in ``"obj"`` cells::

    ext 1  interval   17 bytes: closed u8 (0 both, 1 left, 2 right, 3 neither),
                      lo f64 little-endian, hi f64 little-endian; lo <= hi
    ext 2  value set  a msgpack array of distinct scalar members (nil, bool, int,
                      float, str); encoders sort members by their msgpack bytes
    ext 3  array      dtype u8 (1 uint8, 2 uint16, 3 int16, 4 int32, 5 float32,
                      6 float64), ndim u8 (1 to 4), ndim dims u32 little-endian,
                      then the elements in C order, little-endian: exactly
                      prod(dims) * itemsize bytes

Decoding (:func:`decode_package`) happens only after authenticated
decryption, and still runs with explicit limits and full validation.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import re
import secrets
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import msgpack
import numpy as np
import pandas as pd

from dmt_privacy.dp.receipt import FieldReceipt, ReleaseReceipt
from dmt_privacy.errors import InvalidPackage, ValidationError
from dmt_privacy.seal import ENVELOPE_OVERHEAD, ServerPrivateKey, ServerPublicKey, open_sealed, seal

if TYPE_CHECKING:
    from dmt_privacy.anonymity import AnonymizationReport

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_RECORDS",
    "EXT_ARRAY",
    "EXT_INTERVAL",
    "EXT_VALUE_SET",
    "MAX_MODIFICATIONS",
    "MAX_RECEIPT_LABEL",
    "PACKAGE_FORMAT",
    "PACKAGE_FORMAT_TOKEN",
    "PACKAGE_INFO",
    "PrivacyReceipt",
    "SharePackage",
    "decode_package",
    "encode_package",
    "open_package",
    "seal_package",
]

PACKAGE_FORMAT = 1
#: The format of a package that carries a rate-limiting token.
PACKAGE_FORMAT_TOKEN = 2
_MAX_TOKEN = 1024
#: HPKE info of package envelopes: a package envelope opens only as a package.
PACKAGE_INFO = b"dmt.share-package"
EXT_INTERVAL = 1
EXT_VALUE_SET = 2
EXT_ARRAY = 3
DEFAULT_MAX_RECORDS = 1_000_000
#: The most modifications a receipt names, and the longest text in a receipt (a
#: modification's label, a DP receipt's ids): what a server takes (dmt_model.server.validate)
#: and what share() refuses before any charge.
MAX_MODIFICATIONS = 32
MAX_RECEIPT_LABEL = 128
#: What decode_package / open_package take unless told more: what `dmt serve` takes by default.
#: Decoding holds up to about 22 times the bytes in Python objects (short strings): 64 MiB,
#: the default until 5 December, let one package hold 1.3 GiB (helper-68).
DEFAULT_MAX_BYTES = 1024 * 1024

_CLOSED = ("both", "left", "right", "neither")
_CLOSED_CODE = {name: code for code, name in enumerate(_CLOSED)}
_INTERVAL = struct.Struct("<Bdd")
_ARRAY_HEADER = struct.Struct("<BB")
_ARRAY_DIM = struct.Struct("<I")
#: ext 3 dtype codes; arrays of other dtypes are refused (convert them first).
_ARRAY_DTYPES: dict[int, np.dtype[Any]] = {
    code: np.dtype(name) for code, name in enumerate(("<u1", "<u2", "<i2", "<i4", "<f4", "<f8"), 1)
}
_ARRAY_CODE = {dtype: code for code, dtype in _ARRAY_DTYPES.items()}
_MAX_ARRAY_NDIM = 4
_PACKAGE_ID = re.compile(r"[0-9a-f]{32}")
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_MAX_SCHEMA_ID = 128
_MAX_MAP_LEN = 64  # the largest map in a package is a field receipt (15 keys)
_KEYS = ("format", "schema_id", "package_id", "created_day", "n_records", "receipt", "columns")
_RECEIPT_KEYS = ("k", "l", "t", "dp", "modifications")

_SCALAR_TYPES = frozenset({type(None), bool, int, float, str})
_CELL_TYPES = _SCALAR_TYPES | {bytes, pd.Interval, frozenset, np.ndarray}


# --- privacy receipt ------------------------------------------------------------------------
def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not (
        isinstance(v, float) and math.isnan(v)
    )


def _check(ok: bool, what: str, value: object, expected: str) -> None:
    if not ok:
        raise ValidationError(f"{what} must be {expected}, got {value!r}.")


_OPT_NUM = "a number (not NaN) or None"
_FIELD_RECEIPT_TYPES: dict[str, tuple[Any, str]] = {
    "field": (lambda v: isinstance(v, str), "a str"),
    "mechanism": (lambda v: isinstance(v, str), "a str"),
    "epsilon": (_is_number, "a number (not NaN)"),
    "delta": (_is_number, "a number (not NaN)"),
    "realized_epsilon": (lambda v: v is None or _is_number(v), _OPT_NUM),
    "output_columns": (
        lambda v: isinstance(v, tuple) and all(isinstance(c, str) for c in v), "a tuple of str"
    ),
    "bounds": (
        lambda v: v is None or (isinstance(v, tuple) and len(v) == 2 and all(map(_is_number, v))),
        "None or a pair of numbers",
    ),
    "grid": (lambda v: v is None or _is_number(v), _OPT_NUM),
    "rounding": (lambda v: v is None or isinstance(v, str), "a str or None"),
    "sensitivity_units": (lambda v: v is None or _is_int(v), "an int or None"),
    "scale_units": (lambda v: v is None or _is_number(v), _OPT_NUM),
    "window_units": (
        lambda v: v is None or (isinstance(v, tuple) and len(v) == 2 and all(map(_is_int, v))),
        "None or a pair of ints",
    ),
    "categories": (
        lambda v: v is None or (isinstance(v, tuple) and all(type(c) in _SCALAR_TYPES for c in v)),
        "None or a tuple of scalars",
    ),
    "keep_probability": (lambda v: v is None or _is_number(v), _OPT_NUM),
    "flip_probability": (lambda v: v is None or _is_number(v), _OPT_NUM),
}
_RELEASE_RECEIPT_TYPES: dict[str, tuple[Any, str]] = {
    "release_id": (lambda v: isinstance(v, str), "a str"),
    "n_records": (lambda v: _is_int(v) and v >= 0, "an int >= 0"),
    "epsilon": (_is_number, "a number (not NaN)"),
    "delta": (_is_number, "a number (not NaN)"),
    "fields": (
        lambda v: isinstance(v, tuple) and all(isinstance(f, FieldReceipt) for f in v),
        "a tuple of FieldReceipt",
    ),
    "privacy_unit": (lambda v: isinstance(v, str), "a str"),
    "user_id": (lambda v: v is None or isinstance(v, str), "a str or None"),
    "random_source": (lambda v: isinstance(v, str), "a str"),
    "secure_random": (lambda v: isinstance(v, bool), "a bool"),
    "created": (lambda v: isinstance(v, str), "a str"),
    "format": (_is_int, "an int"),
}


def _check_release_receipt(dp: ReleaseReceipt) -> None:
    """Types of every value in a local-DP receipt: a receipt read from a package is data."""
    for name, (ok, expected) in _RELEASE_RECEIPT_TYPES.items():
        _check(ok(getattr(dp, name)), f"Release receipt {name!r}", getattr(dp, name), expected)
    for f in dp.fields:
        for name, (ok, expected) in _FIELD_RECEIPT_TYPES.items():
            value = getattr(f, name)
            _check(ok(value), f"Field receipt {name!r} of {f.field!r}", value, expected)


#: The count a device's own receipt gives a modification ("photo:Blur (3/7 changed)"), which
#: what a package carries leaves out (:meth:`PrivacyReceipt.carried`); only that, so a label
#: that is nothing else, which a crafted package may carry, is kept as it is (helper-116:
#: stripped, " (2/3 changed)" was empty, which a receipt refuses, and ingestion raised).
_COUNTED = re.compile(r" \(\d+/\d+ changed\)$")


@dataclass(frozen=True)
class PrivacyReceipt:
    """What was done to a package's records before they left the device.

    ``k``: the k-anonymity achieved (smallest equivalence class of the
    anonymization the records went through; with a fitted plan this is a
    property of the plan's data, which the server re-checks across packages);
    ``l``: the distinct l-diversity achieved; ``t``: the t-closeness (largest
    EMD) achieved; ``dp``: the local-DP :class:`ReleaseReceipt` of the
    records; ``modifications``: names of the modifications applied (e.g.
    ``"text.synonyms"``). ``None`` means "not applied / not measured", never
    NaN: a NaN would compare false against every policy threshold.
    """

    k: int | None = None
    l: float | None = None  # noqa: E741 - the l of l-diversity
    t: float | None = None
    dp: ReleaseReceipt | None = None
    modifications: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check(self.k is None or (_is_int(self.k) and self.k >= 1), "PrivacyReceipt k", self.k,
               "an int >= 1 or None")
        for name, low, high in (("l", 1.0, math.inf), ("t", 0.0, 1.0)):
            value = getattr(self, name)
            if value is None:
                continue
            _check(_is_number(value) and low <= value <= high and math.isfinite(value),
                   f"PrivacyReceipt {name}", value,
                   f"a finite number in [{low:g}, {high:g}] or None (None when not measured)")
            object.__setattr__(self, name, float(value))
        if self.dp is not None:
            _check(isinstance(self.dp, ReleaseReceipt), "PrivacyReceipt dp", self.dp,
                   "a dmt_privacy.dp.ReleaseReceipt or None")
            _check_release_receipt(self.dp)
        mods = self.modifications
        if isinstance(mods, list):
            mods = tuple(mods)
            object.__setattr__(self, "modifications", mods)
        _check(isinstance(mods, tuple) and all(isinstance(m, str) and m for m in mods),
               "PrivacyReceipt modifications", mods, "a tuple of non-empty str")

    def to_dict(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "l": self.l,
            "t": self.t,
            "dp": None if self.dp is None else self.dp.to_dict(),
            "modifications": list(self.modifications),
        }

    def carried(self) -> PrivacyReceipt:
        """This receipt as a share package carries it and the server stores it (in clear):
        every figure independent of the records' values. The device's own receipt (the
        share's result, the outbox) keeps what the package's records cost, and the ledger what
        was charged (less, where a re-share sends values drawn before:
        ``ShareResult.released_before``).

        - each modification named, but not how many records it changed (helper-87);
        - a record-level release's ε and δ for one record, the sums of its fields', not the
          ledger's charge: Σε times the largest number of records alike
          (:func:`~dmt_privacy.dp.release_epsilon`), a count of the true values, told the
          server whether a device's values repeat (helper-106). A user-level release's
          total (records × Σε) is the public count's already.

        ``share()`` sends this, and the server stores this of whatever a package carries,
        so a package from an SDK older than either rule leaves nothing more in clear."""
        dp = self.dp
        if dp is not None and dp.privacy_unit == "record":
            dp = dataclasses.replace(dp, epsilon=math.fsum(f.epsilon for f in dp.fields),
                                     delta=math.fsum(f.delta for f in dp.fields))
        return dataclasses.replace(self, dp=dp, modifications=tuple(
            _COUNTED.sub("", label) or label for label in self.modifications))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PrivacyReceipt:
        if not isinstance(data, Mapping):
            raise ValidationError(
                f"A privacy receipt must be a mapping, got {type(data).__name__}."
            )
        if set(data) != set(_RECEIPT_KEYS):
            raise ValidationError(
                f"A privacy receipt has the keys {list(_RECEIPT_KEYS)!r}, got {sorted(data)!r}."
            )
        dp_data = data["dp"]
        dp: ReleaseReceipt | None = None
        if dp_data is not None:
            if not isinstance(dp_data, Mapping) or not isinstance(dp_data.get("fields", []), list):
                raise ValidationError(
                    "The receipt's 'dp' must be a ReleaseReceipt mapping or None."
                )
            if not all(isinstance(f, Mapping) for f in dp_data.get("fields", [])):
                raise ValidationError("The receipt's dp 'fields' must be a list of mappings.")
            dp = ReleaseReceipt.from_dict(dp_data)
        mods = data["modifications"]
        if not isinstance(mods, (list, tuple)):
            raise ValidationError(f"The receipt's modifications must be a list, got {mods!r}.")
        return cls(k=data["k"], l=data["l"], t=data["t"], dp=dp, modifications=tuple(mods))

    @classmethod
    def from_report(
        cls,
        report: AnonymizationReport | None = None,
        *,
        dp: ReleaseReceipt | None = None,
        modifications: Iterable[str] = (),
    ) -> PrivacyReceipt:
        """A receipt from a k-anonymizer's report: k = smallest released class, l = distinct l
        achieved, t = largest EMD achieved (NaN, i.e. no sensitive column, becomes None)."""

        def finite(v: float) -> float | None:
            return None if v is None or math.isnan(v) else float(v)

        if report is None:
            return cls(dp=dp, modifications=tuple(modifications))
        k = int(report.min_class_size) if report.n_released > 0 else None
        return cls(
            k=k if k is None or k >= 1 else None,
            l=finite(report.l_achieved),
            t=finite(report.t_achieved),
            dp=dp,
            modifications=tuple(modifications),
        )


# --- cells ----------------------------------------------------------------------------------
def _scalar(value: Any, where: str) -> Any:
    """A set member as a plain Python scalar."""
    if type(value) in _SCALAR_TYPES:
        return value
    if isinstance(value, np.generic):
        value = value.item()
        if type(value) in _SCALAR_TYPES:
            return value
    raise ValidationError(
        f"{where}: a value set may hold None, bool, int, float or str, got "
        f"{type(value).__name__} {value!r}."
    )


def _cell(value: Any, where: str) -> Any:
    """One cell as a plain Python value of a supported type, or a ValidationError."""
    if type(value) in _CELL_TYPES:
        if type(value) is pd.Interval:
            return _interval(value, where)
        if type(value) is np.ndarray:
            return _array(value, where)
        if type(value) is frozenset:
            if all(type(m) in _SCALAR_TYPES for m in value):
                return value  # shared, immutable: keep the object (encoding caches by identity)
            return frozenset(_scalar(m, where) for m in value)
        return value
    if isinstance(value, np.generic):
        value = value.item()
        if type(value) in _SCALAR_TYPES or type(value) is bytes:
            return value
    elif value is pd.NA or value is pd.NaT:
        return None
    elif isinstance(value, pd.Interval):
        return _interval(value, where)
    elif isinstance(value, (set, frozenset)):
        return frozenset(_scalar(m, where) for m in value)
    raise ValidationError(
        f"{where}: unsupported cell type {type(value).__name__} ({value!r}). Cells may be None, "
        "bool, int, float, str, bytes, pandas.Interval, frozenset or a numeric numpy array."
    )


def _interval(value: pd.Interval, where: str) -> pd.Interval:
    lo, hi = value.left, value.right
    if type(lo) is float and type(hi) is float:
        return value
    if not (isinstance(lo, (int, float, np.number)) and isinstance(hi, (int, float, np.number))):
        raise ValidationError(f"{where}: interval endpoints must be numbers, got {value!r}.")
    return pd.Interval(float(lo), float(hi), closed=value.closed)


def _array(value: np.ndarray, where: str) -> np.ndarray:
    """A read-only, C-ordered, little-endian copy of a numeric array (an image, an audio clip)."""
    dtype = value.dtype.newbyteorder("<")
    if dtype not in _ARRAY_CODE:
        names = ", ".join(str(d) for d in _ARRAY_DTYPES.values())
        raise ValidationError(
            f"{where}: an array cell must have dtype {names}, got {value.dtype}; convert it "
            "first (e.g. image.astype(np.uint8), clip.astype(np.float32))."
        )
    if not 1 <= value.ndim <= _MAX_ARRAY_NDIM or any(d >= 2**32 for d in value.shape):
        raise ValidationError(
            f"{where}: an array cell must have 1 to {_MAX_ARRAY_NDIM} dimensions, each below "
            f"2**32, got shape {value.shape}."
        )
    out = np.ascontiguousarray(value, dtype=dtype).copy()
    out.flags.writeable = False
    return out


def _column(name: str, values: Any) -> list[Any]:
    """A column as a fresh list of supported cells."""
    if isinstance(values, (str, bytes, Mapping)) or not hasattr(values, "__len__"):
        raise ValidationError(
            f"Column {name!r} must be a sequence of cells (list, array, Series), got "
            f"{type(values).__name__}."
        )
    if isinstance(values, np.ndarray) and values.ndim != 1:
        raise ValidationError(f"Column {name!r} must be 1-D, got shape {values.shape}.")
    if isinstance(values, np.ndarray) and values.dtype.kind == "f":
        items = values.astype(np.float64, copy=False).tolist()
    elif hasattr(values, "tolist"):
        items = values.tolist()
    else:
        items = list(values)
    if set(map(type, items)) <= _SCALAR_TYPES | {bytes}:
        return items
    return [_cell(v, f"Column {name!r} row {i}") for i, v in enumerate(items)]


def _cell_key(value: Any) -> Any:
    """Equality key of a cell: NaN equals NaN, 1, 1.0 and True differ."""
    if type(value) is float and math.isnan(value):
        return ("nan",)
    if type(value) is pd.Interval:
        return ("interval", value.closed, float(value.left), float(value.right))
    if type(value) is frozenset:
        return ("set", frozenset(_cell_key(m) for m in value))
    if type(value) is np.ndarray:
        return ("array", value.dtype.str, value.shape, value.tobytes())
    return (type(value).__name__, value)


# --- the package ----------------------------------------------------------------------------
def _today_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).date().isoformat()


@dataclass(frozen=True, eq=False)
class SharePackage:
    """Records leaving a device: columns (one list per field, equal lengths) and their receipt.

    Build one with :meth:`create`, which fills a random ``package_id`` and
    today's UTC day and normalizes the columns. ``columns`` is read-only;
    do not mutate the lists in it. Equality compares every cell (NaN equals
    NaN; ``1``, ``1.0`` and ``True`` differ).
    """

    schema_id: str
    package_id: str
    created_day: str
    receipt: PrivacyReceipt
    columns: Mapping[str, list[Any]]
    format_version: int = PACKAGE_FORMAT
    token: bytes | None = None

    def __post_init__(self) -> None:
        if self.token is not None:
            _check(type(self.token) is bytes and 0 < len(self.token) <= _MAX_TOKEN, "token",
                   type(self.token).__name__, f"bytes (1 to {_MAX_TOKEN}) or None")
            if self.format_version == PACKAGE_FORMAT:
                object.__setattr__(self, "format_version", PACKAGE_FORMAT_TOKEN)
        expected = PACKAGE_FORMAT if self.token is None else PACKAGE_FORMAT_TOKEN
        if not _is_int(self.format_version) or self.format_version != expected:
            raise ValidationError(
                f"Package format {self.format_version!r} is not supported here (this SDK "
                f"writes format {PACKAGE_FORMAT}, and {PACKAGE_FORMAT_TOKEN} for a package "
                "carrying a token)."
            )
        _check(isinstance(self.schema_id, str) and 0 < len(self.schema_id) <= _MAX_SCHEMA_ID,
               "schema_id", self.schema_id, f"a non-empty str of at most {_MAX_SCHEMA_ID} chars")
        _check(isinstance(self.package_id, str) and _PACKAGE_ID.fullmatch(self.package_id)
               is not None, "package_id", self.package_id,
               "32 lowercase hex digits (secrets.token_hex(16))")
        _check(isinstance(self.created_day, str) and _DAY.fullmatch(self.created_day) is not None
               and _valid_day(self.created_day), "created_day", self.created_day,
               "a date 'YYYY-MM-DD'")
        _check(isinstance(self.receipt, PrivacyReceipt), "receipt", self.receipt,
               "a PrivacyReceipt")
        if not isinstance(self.columns, Mapping) or not self.columns:
            raise ValidationError(
                "columns must be a non-empty mapping of field name to list of cells, got "
                f"{type(self.columns).__name__}{'' if self.columns else ' (empty)'}."
            )
        lengths = {}
        for name, col in self.columns.items():
            _check(isinstance(name, str) and name != "", "A column name", name, "a non-empty str")
            if not isinstance(col, list):
                raise ValidationError(
                    f"Column {name!r} must be a list, got {type(col).__name__}; "
                    "SharePackage.create converts arrays and Series."
                )
            lengths[name] = len(col)
        if len(set(lengths.values())) > 1:
            raise ValidationError(f"Columns must have equal lengths, got {lengths!r}.")
        object.__setattr__(self, "columns", MappingProxyType(dict(self.columns)))

    @classmethod
    def create(
        cls,
        schema_id: str,
        columns: Mapping[str, Sequence[Any]] | pd.DataFrame,
        receipt: PrivacyReceipt,
    ) -> SharePackage:
        """A new package: random id, today's UTC day, cells normalized to plain Python values.

        ``columns`` maps field names to lists, tuples, numpy arrays or pandas
        Series (a DataFrame works too). numpy scalars become Python scalars,
        ``pd.NA``/``NaT`` become ``None``, sets become frozensets, interval
        endpoints become floats and numeric arrays (images, audio) read-only
        little-endian copies; anything else is a ValidationError.
        """
        if isinstance(columns, pd.DataFrame):
            if not columns.columns.is_unique:
                raise ValidationError("The DataFrame has duplicate column names.")
            columns = {str(c): columns[c] for c in columns.columns}
        if not isinstance(columns, Mapping):
            raise ValidationError(f"columns must be a mapping, got {type(columns).__name__}.")
        cols = {name: _column(name, values) for name, values in columns.items()}
        return cls(
            schema_id=schema_id,
            package_id=secrets.token_hex(16),
            created_day=_today_utc(),
            receipt=receipt,
            columns=cols,
        )

    @property
    def n_records(self) -> int:
        return len(next(iter(self.columns.values())))

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(self.columns)

    def to_frame(self) -> pd.DataFrame:
        """The records as a DataFrame; pandas infers dtypes (float64, interval, object...)."""
        return pd.DataFrame({name: pd.Series(col) for name, col in self.columns.items()},
                            columns=list(self.columns))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SharePackage):
            return NotImplemented
        if (self.schema_id, self.package_id, self.created_day, self.receipt,
                self.format_version, self.token, tuple(self.columns)) != (
                other.schema_id, other.package_id, other.created_day, other.receipt,
                other.format_version, other.token, tuple(other.columns)):
            return False
        return all(
            len(a) == len(b)
            and all(_cell_key(x) == _cell_key(y) for x, y in zip(a, b, strict=True))
            for a, b in zip(self.columns.values(), other.columns.values(), strict=True)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"SharePackage(schema_id={self.schema_id!r}, package_id={self.package_id!r}, "
            f"created_day={self.created_day!r}, n_records={self.n_records}, "
            f"fields={list(self.columns)!r}, receipt={self.receipt!r})"
        )


def _valid_day(day: str) -> bool:
    try:
        _dt.date.fromisoformat(day)
    except ValueError:
        return False
    return True


# --- msgpack --------------------------------------------------------------------------------
def _pack_member(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True, use_single_float=False)


def _interval_payload(value: pd.Interval) -> bytes:
    closed = _CLOSED_CODE.get(value.closed)
    lo, hi = value.left, value.right
    if closed is None or not (
        isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and lo <= hi
    ):
        raise ValidationError(f"Interval {value!r} cannot be encoded.")
    return _INTERVAL.pack(closed, float(lo), float(hi))


def _set_payload(value: frozenset[Any]) -> bytes:
    for m in value:
        _check(type(m) in _SCALAR_TYPES, "A value-set member", m,
               "None, bool, int, float or str")
    members = sorted(_pack_member(m) for m in value)
    return _array_header(len(members)) + b"".join(members)


def _array_payload(value: np.ndarray) -> bytes:
    code = _ARRAY_CODE.get(value.dtype)
    if code is None or not 1 <= value.ndim <= _MAX_ARRAY_NDIM:
        raise ValidationError(f"Array of dtype {value.dtype} and shape {value.shape} cannot be "
                              "encoded; build packages with SharePackage.create.")
    dims = b"".join(_ARRAY_DIM.pack(d) for d in value.shape)
    return _ARRAY_HEADER.pack(code, value.ndim) + dims + np.ascontiguousarray(value).tobytes()


def _tagged_cells(col: list[Any]) -> list[Any]:
    """``col`` with intervals, value sets and arrays as msgpack ExtTypes.

    Classes repeat: the k-anonymizer releases one interval or set object per
    class, so encodings are cached by object identity (exact: the cells stay
    alive while encoding) and by payload bytes.
    """
    by_id: dict[int, msgpack.ExtType] = {}
    by_payload: dict[tuple[int, bytes], msgpack.ExtType] = {}
    out = []
    for v in col:
        t = type(v)
        if t is pd.Interval or t is frozenset:
            ext = by_id.get(id(v))
            if ext is None:
                key = ((EXT_INTERVAL, _interval_payload(v)) if t is pd.Interval
                       else (EXT_VALUE_SET, _set_payload(v)))
                ext = by_payload.get(key)
                if ext is None:
                    ext = by_payload[key] = msgpack.ExtType(*key)
                by_id[id(v)] = ext
            out.append(ext)
        elif t is np.ndarray:
            out.append(msgpack.ExtType(EXT_ARRAY, _array_payload(v)))
        else:
            out.append(v)
    return out


def _default(value: Any) -> Any:
    raise ValidationError(
        f"Unsupported cell type {type(value).__name__} ({value!r}); SharePackage.create "
        "normalizes cells."
    )


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x90 | n])
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def _encode_column(name: str, col: list[Any]) -> list[Any]:
    kinds = set(map(type, col))
    if kinds == {float}:
        return [name, "f8", np.asarray(col, dtype="<f8").tobytes()]
    if kinds == {int}:
        try:
            return [name, "i8", np.asarray(col, dtype="<i8").tobytes()]
        except OverflowError:
            pass
    if not kinds <= _CELL_TYPES:
        bad = sorted(t.__name__ for t in kinds - _CELL_TYPES)
        raise ValidationError(
            f"Column {name!r} holds unsupported cell types {bad!r}; build packages with "
            "SharePackage.create, which normalizes cells."
        )
    if pd.Interval in kinds or frozenset in kinds or np.ndarray in kinds:
        return [name, "obj", _tagged_cells(col)]
    return [name, "obj", col]


def encode_package(pkg: SharePackage) -> bytes:
    """The package as msgpack (format 1, see the module docstring). Deterministic."""
    if not isinstance(pkg, SharePackage):
        raise ValidationError(f"encode_package needs a SharePackage, got {type(pkg).__name__}.")
    doc = {
        "format": pkg.format_version,
        "schema_id": pkg.schema_id,
        "package_id": pkg.package_id,
        "created_day": pkg.created_day,
        "n_records": pkg.n_records,
        "receipt": pkg.receipt.to_dict(),
        "columns": [_encode_column(name, col) for name, col in pkg.columns.items()],
    }
    if pkg.token is not None:
        doc["token"] = pkg.token
    try:
        return msgpack.packb(doc, use_bin_type=True, use_single_float=False, default=_default,
                             strict_types=False)
    except ValidationError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValidationError(f"The package cannot be encoded: {exc}.") from None


class _Malformed(Exception):
    """Internal: the decoded structure is wrong (always becomes a bare InvalidPackage)."""


def _require(ok: bool) -> None:
    if not ok:
        raise _Malformed


#: Decoded intervals and value sets by (ext code, max_records, payload), shared by every
#: decode: both are immutable, and the few generalization classes of a schema repeat in
#: every package, so each is checked and built once, not once per package (pd.Interval
#: construction and a nested msgpack decode were most of a 3-record package's decode).
#: Bounded: payloads of at most _SHARED_EXT_BYTES, emptied when it holds _SHARED_EXT_MAX.
_SHARED_EXT: dict[tuple[int, int, bytes], Any] = {}
_SHARED_EXT_BYTES = 256
_SHARED_EXT_MAX = 4096


def _no_ext(code: int, data: bytes) -> Any:
    raise _Malformed


def _ext_value(code: int, data: bytes, max_records: int) -> Any:
    """One extension's value; ``_Malformed`` when it is not exactly what encode writes."""
    if code == EXT_INTERVAL:
        _require(len(data) == _INTERVAL.size)
        closed, lo, hi = _INTERVAL.unpack(data)
        _require(closed < len(_CLOSED) and lo <= hi)
        return pd.Interval(lo, hi, closed=_CLOSED[closed])
    if code == EXT_VALUE_SET:
        members = msgpack.unpackb(
            data, raw=False, use_list=True, strict_map_key=True, ext_hook=_no_ext,
            max_str_len=len(data), max_bin_len=0, max_array_len=min(len(data), max_records),
            max_map_len=0, max_ext_len=0,
        )
        _require(type(members) is list and set(map(type, members)) <= _SCALAR_TYPES)
        value = frozenset(members)
        _require(len(value) == len(members))
        return value
    if code == EXT_ARRAY:
        return _decode_array(data)
    raise _Malformed


def _ext_hook_factory(max_bytes: int, max_records: int) -> Any:
    cache: dict[tuple[int, bytes], Any] = {}  # this package's arrays and large value sets

    def hook(code: int, data: bytes) -> Any:
        if code != EXT_ARRAY and len(data) <= _SHARED_EXT_BYTES:
            shared_key = (code, max_records, data)
            value = _SHARED_EXT.get(shared_key)
            if value is None:
                value = _ext_value(code, data, max_records)
                if len(_SHARED_EXT) >= _SHARED_EXT_MAX:
                    _SHARED_EXT.clear()
                _SHARED_EXT[shared_key] = value
            return value
        key = (code, data)
        hit = cache.get(key)
        if hit is None:
            hit = cache[key] = _ext_value(code, data, max_records)
        return hit

    return hook


def _decode_array(data: bytes) -> np.ndarray:
    _require(len(data) >= _ARRAY_HEADER.size)
    code, ndim = _ARRAY_HEADER.unpack_from(data)
    _require(code in _ARRAY_DTYPES and 1 <= ndim <= _MAX_ARRAY_NDIM)
    offset = _ARRAY_HEADER.size + ndim * _ARRAY_DIM.size
    _require(len(data) >= offset)
    shape = tuple(_ARRAY_DIM.unpack_from(data, _ARRAY_HEADER.size + i * _ARRAY_DIM.size)[0]
                  for i in range(ndim))
    dtype = _ARRAY_DTYPES[code]
    _require(len(data) - offset == math.prod(shape) * dtype.itemsize)
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape)  # read-only


def _decode(data: Any, max_records: int, max_bytes: int) -> SharePackage:
    _require(isinstance(data, (bytes, bytearray, memoryview)))
    data = bytes(data)
    _require(len(data) <= max_bytes)
    # One object filling the bytes exactly: unpackb raises on trailing or missing bytes
    # (an Unpacker fed the bytes, then unpack and tell, did the same at more cost).
    doc = msgpack.unpackb(
        data,
        raw=False,
        use_list=True,
        strict_map_key=True,
        unicode_errors="strict",
        ext_hook=_ext_hook_factory(max_bytes, max_records),
        max_str_len=max_bytes,
        max_bin_len=max_bytes,
        max_array_len=max(max_records, 4096),
        max_map_len=_MAX_MAP_LEN,
        max_ext_len=max_bytes,
    )
    _require(type(doc) is dict and type(doc.get("format")) is int)
    keys = _KEYS if doc["format"] == PACKAGE_FORMAT else (*_KEYS, "token")
    _require(doc["format"] in (PACKAGE_FORMAT, PACKAGE_FORMAT_TOKEN))
    _require(len(doc) == len(keys) and set(doc) == set(keys))
    token = doc.get("token")
    _require(token is None or (type(token) is bytes and 0 < len(token) <= _MAX_TOKEN))
    n = doc["n_records"]
    _require(type(n) is int and 0 <= n <= max_records)
    raw_columns = doc["columns"]
    _require(type(raw_columns) is list and len(raw_columns) > 0)
    columns: dict[str, list[Any]] = {}
    for entry in raw_columns:
        _require(type(entry) is list and len(entry) == 3)
        name, encoding, payload = entry
        _require(type(name) is str and name != "" and name not in columns)
        if encoding == "f8" or encoding == "i8":
            _require(type(payload) is bytes and len(payload) == 8 * n)
            columns[name] = np.frombuffer(payload, dtype="<" + encoding).tolist()
        elif encoding == "obj":
            _require(type(payload) is list and len(payload) == n)
            _require(set(map(type, payload)) <= _CELL_TYPES)
            columns[name] = payload
        else:
            raise _Malformed
    receipt = PrivacyReceipt.from_dict(doc["receipt"])
    return SharePackage(
        schema_id=doc["schema_id"],
        package_id=doc["package_id"],
        created_day=doc["created_day"],
        receipt=receipt,
        columns=columns,
        format_version=doc["format"],
        token=token,
    )


def _check_limits(max_records: int, max_bytes: int) -> None:
    _check(_is_int(max_records) and max_records >= 0, "max_records", max_records, "an int >= 0")
    _check(_is_int(max_bytes) and max_bytes > 0, "max_bytes", max_bytes, "an int > 0")


def decode_package(
    data: bytes,
    *,
    max_records: int = DEFAULT_MAX_RECORDS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> SharePackage:
    """Parse and validate msgpack from :func:`encode_package`; anything wrong is ``InvalidPackage``.

    ``max_records`` bounds the records (and every msgpack array), ``max_bytes``
    the input size (and every str, bin and ext in it): 1 MiB by default. Decoding
    holds up to about 22 times ``max_bytes`` in memory; raise it only as far as a
    source you accept packages from needs.
    """
    _check_limits(max_records, max_bytes)
    pkg: SharePackage | None
    try:
        pkg = _decode(data, max_records, max_bytes)
    except Exception:  # every failure is the same failure
        pkg = None
    if pkg is None:
        raise InvalidPackage()
    return pkg


def seal_package(pkg: SharePackage, public_key: ServerPublicKey, *,
                 token: Any = None) -> bytes:
    """Encode ``pkg`` and seal it to the server's public key.

    ``public_key``: the key of the verified release
    (:meth:`~dmt_privacy.release.VerifiedRelease.server_public_key`).
    ``token``: a :class:`~dmt_privacy.privacy_pass.Token` (or its bytes) taken
    from the device's wallet, for a server whose policy limits packages per
    device; it travels inside the envelope (package format 2).
    """
    raw = token_bytes(token)
    if raw is not None:
        pkg = dataclasses.replace(pkg, token=raw, format_version=PACKAGE_FORMAT_TOKEN)
    return seal(encode_package(pkg), public_key, info=PACKAGE_INFO)


def token_bytes(token: Any) -> bytes | None:
    """``token`` (a :class:`~dmt_privacy.privacy_pass.Token`, its bytes, or ``None``) as the
    bytes a package carries; a token that is not one raises :class:`ValidationError`.
    :func:`~dmt_privacy.sharing.share` asks before it charges the ledger."""
    if token is None:
        return None
    from dmt_privacy.privacy_pass import Token

    raw = token if isinstance(token, bytes) else getattr(token, "to_bytes", None)
    if callable(raw):
        raw = raw()
    if not isinstance(raw, bytes):
        raise ValidationError(f"token must be a privacy_pass.Token or bytes, got "
                              f"{type(token).__name__}.")
    try:
        Token.from_bytes(raw)
    except ValidationError as exc:
        raise ValidationError(f"token is not a Privacy Pass token: {exc}") from None
    return raw


def open_package(
    envelope: bytes,
    private_key: ServerPrivateKey,
    *,
    max_records: int = DEFAULT_MAX_RECORDS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> SharePackage:
    """Open a sealed package (server side); any failure raises a bare ``InvalidPackage``.

    An envelope larger than ``max_bytes`` plus the envelope overhead is
    refused before any decryption.
    """
    _check_limits(max_records, max_bytes)
    if (
        isinstance(envelope, (bytes, bytearray, memoryview))
        and len(envelope) > max_bytes + ENVELOPE_OVERHEAD
    ):
        raise InvalidPackage()
    plaintext = open_sealed(envelope, private_key, info=PACKAGE_INFO)
    return decode_package(plaintext, max_records=max_records, max_bytes=max_bytes)

