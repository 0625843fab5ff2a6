"""Released tables as files: exact, unambiguous CSV and JSON Lines, and reading them back.

What :meth:`AnonymizationPlan.release` (and :class:`KAnonymizer`) returns holds
typed cells: :class:`pandas.Interval` for numeric quasi-identifiers,
``frozenset`` for value sets, hierarchy node labels, and ``None`` where a
record was suppressed or its sensitive value withheld. Each column of such a
table has a *cell kind* (:func:`column_kinds`):

``"interval"``
    CSV: ``[lo, hi]``, or the bare number when ``lo == hi``. Numbers are
    written exactly (shortest text that reads back to the same double:
    ``repr``, integers without a fraction), never rounded.
``"set"``
    CSV: ``{a|b|c}``, always in braces (a one-value set too), members sorted as
    text; a ``\\``, ``|``, ``{`` or ``}`` inside a member is escaped with ``\\``.
    Members are read back as text.
``"node"``
    CSV: the hierarchy node's label, as is (the root of an ARX hierarchy is
    often ``*``: that is a label, not a suppressed cell).
``"value"``
    A column released as it was whose cells may be withheld (the sensitive
    column): CSV: the value as is.

In every kind an **empty cell means suppressed or withheld**, and nothing
else: an empty member, label or value is refused when writing. Columns
without a kind are written and read back as text, unchanged.

JSON Lines (one JSON object per record, keys in column order) needs no
kinds to be read: intervals are ``{"interval": [lo, hi]}``, sets
``{"set": [...]}``, nodes ``{"node": "label"}``, suppressed or withheld
cells ``null``; numbers are JSON numbers (exact), never NaN.

:func:`read_released_csv` and :func:`read_released_jsonl` return the table
:func:`write_released` was given, cell for cell.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from dmt_privacy.anonymity.release import _missing
from dmt_privacy.errors import ValidationError

if TYPE_CHECKING:
    from dmt_privacy.anonymity.plan import AnonymizationPlan

__all__ = [
    "CELL_KINDS",
    "column_kinds",
    "decode_cell",
    "encode_cell",
    "format_exact",
    "read_released_csv",
    "read_released_jsonl",
    "released_csv",
    "released_jsonl",
    "write_released",
]

CELL_KINDS = ("interval", "set", "node", "value")
_PLAN_KINDS = {"numeric": "interval", "set": "set", "hierarchy": "node"}
_ESCAPED = "\\|{}"


def column_kinds(plan: AnonymizationPlan, *, sensitive: bool = True) -> dict[str, str]:
    """The cell kind of each column a plan generalizes (and of its sensitive column)."""
    kinds = {c.name: _PLAN_KINDS[c.kind] for c in plan.codings}
    if sensitive and plan.sensitive is not None:
        kinds[plan.sensitive] = "value"
    return kinds


def format_exact(x: float) -> str:
    """A number as the shortest text that reads back to the same double."""
    x = float(x)
    if not math.isfinite(x):
        raise ValidationError(f"A released number must be finite, got {x!r}.")
    if x.is_integer() and abs(x) < 2**53 and math.copysign(1.0, x) > 0:
        return str(int(x))
    return repr(x)




def _text(value: Any) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return format_exact(value)
    return str(value)


def _escape(member: str) -> str:
    return "".join("\\" + ch if ch in _ESCAPED else ch for ch in member)


def _check_kind(kind: str, column: str) -> None:
    if kind not in CELL_KINDS:
        raise ValidationError(f"Column {column!r}: cell kind {kind!r} is not one of {CELL_KINDS}.")


def encode_cell(value: Any, kind: str, *, column: str = "?") -> str:
    """One released cell as CSV text (see the module's grammar); ``""`` when missing."""
    _check_kind(kind, column)
    if _missing(value):
        return ""
    if kind == "interval":
        if not isinstance(value, pd.Interval):
            value = pd.Interval(float(value), float(value), closed="both")
        lo, hi = format_exact(value.left), format_exact(value.right)
        return lo if lo == hi else f"[{lo}, {hi}]"
    if kind == "set":
        members = sorted(_text(m) for m in (value if isinstance(value, (set, frozenset))
                                            else (value,)))
        if not members or "" in members:
            raise ValidationError(f"Column {column!r}: a released set may not be empty or hold "
                                  "an empty value (an empty cell means suppressed).")
        return "{" + "|".join(_escape(m) for m in members) + "}"
    text = _text(value)
    if text == "":
        raise ValidationError(f"Column {column!r}: an empty {kind} cannot be written (an empty "
                              "cell means suppressed or withheld); give it a label.")
    return text


def _parse_set(text: str, column: str, row: Any) -> frozenset[str]:
    def bad(why: str) -> ValidationError:
        return ValidationError(f"Column {column!r}, row {row!r}: {text!r} is not a value set "
                               f"({why}); expected {{a|b}} with \\ escaping \\ | {{ }}.")

    if len(text) < 3 or text[0] != "{" or text[-1] != "}":
        raise bad("no braces" if len(text) < 2 or text[0] != "{" or text[-1] != "}"
                  else "it is empty")
    members, current, i, body = [], [], 0, text[1:-1]
    while i < len(body):
        ch = body[i]
        if ch == "\\":
            if i + 1 >= len(body) or body[i + 1] not in _ESCAPED:
                raise bad("a lone backslash")
            current.append(body[i + 1])
            i += 2
            continue
        if ch in "{}":
            raise bad(f"an unescaped {ch!r}")
        if ch == "|":
            members.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    members.append("".join(current))
    if "" in members:
        raise bad("an empty member")
    return frozenset(members)


def decode_cell(text: str, kind: str, *, column: str = "?", row: Any = "?") -> Any:
    """The released cell CSV ``text`` stands for: the inverse of :func:`encode_cell`."""
    _check_kind(kind, column)
    if text == "":
        return None
    if kind == "interval":
        try:
            if text.startswith("[") and text.endswith("]"):
                lo, hi = text[1:-1].split(", ")
                return pd.Interval(float(lo), float(hi), closed="both")
            return pd.Interval(float(text), float(text), closed="both")
        except ValueError:
            raise ValidationError(
                f"Column {column!r}, row {row!r}: {text!r} is not an interval; expected a "
                "number or [lo, hi].") from None
    if kind == "set":
        return _parse_set(text, column, row)
    return text


def _released_cells(frame: pd.DataFrame, kinds: Mapping[str, str]) -> dict[str, list[Any]]:
    unknown = [c for c in kinds if c not in frame.columns]
    if unknown:
        raise ValidationError(f"Cell kinds name column(s) {unknown!r}, which the table does not "
                              f"have (columns: {list(frame.columns)!r}).")
    return {str(c): frame[c].astype(object).tolist() for c in frame.columns}


def released_csv(frame: pd.DataFrame, kinds: Mapping[str, str], *, sep: str = ",") -> str:
    """The CSV text of a released table (grammar in the module docstring)."""
    columns = _released_cells(frame, kinds)
    text: dict[str, list[str]] = {}
    for name, cells in columns.items():
        kind = kinds.get(name)
        if kind is None:
            text[name] = ["" if _missing(v) else _text(v) for v in cells]
        else:
            cache: dict[Any, str] = {}
            out = []
            for v in cells:
                key = None if _missing(v) else v
                if key not in cache:
                    cache[key] = encode_cell(key, kind, column=name)
                out.append(cache[key])
            text[name] = out
    buffer = io.StringIO()
    # RFC 4180 line ends: the csv module then quotes any cell holding \r or \n.
    pd.DataFrame(text, columns=list(columns)).to_csv(buffer, sep=sep, index=False,
                                                     lineterminator="\r\n")
    written = buffer.getvalue()
    if "\x00" in written:
        raise ValidationError("The table holds a NUL character, which CSV readers drop; write "
                              "JSON Lines instead (--format jsonl).")
    return written


def _json_cell(value: Any, kind: str | None, column: str) -> Any:
    if _missing(value):
        return None
    if kind is None or kind == "value":
        value = value.item() if isinstance(value, np.generic) else value
        if isinstance(value, float):
            format_exact(value)  # refuses NaN / infinity
        return value
    if kind == "interval":
        if not isinstance(value, pd.Interval):
            value = pd.Interval(float(value), float(value), closed="both")
        format_exact(value.left), format_exact(value.right)  # refuses NaN / infinity
        return {"interval": [float(value.left), float(value.right)]}
    if kind == "set":
        members = value if isinstance(value, (set, frozenset)) else (value,)
        return {"set": sorted(_text(m) for m in members)}
    return {"node": _text(value)}


def released_jsonl(frame: pd.DataFrame, kinds: Mapping[str, str]) -> str:
    """The JSON Lines text of a released table: one object per record."""
    columns = _released_cells(frame, kinds)
    for name, kind in kinds.items():
        _check_kind(kind, name)
    names = list(columns)
    lines = []
    for i in range(len(frame)):
        record = {n: _json_cell(columns[n][i], kinds.get(n), n) for n in names}
        lines.append(json.dumps(record, ensure_ascii=False, allow_nan=False))
    return "".join(line + "\n" for line in lines)


def write_released(frame: pd.DataFrame, path: str | os.PathLike[str], kinds: Mapping[str, str],
                   *, fmt: str = "csv", sep: str = ",", overwrite: bool = False) -> Path:
    """Write a released table to ``path`` as ``"csv"`` or ``"jsonl"``, all at once or not at
    all; refuses to replace an existing file unless ``overwrite``."""
    from dmt_privacy.files import SHARED_FILE_MODE, write_atomically

    if fmt == "csv":
        text = released_csv(frame, kinds, sep=sep)
    elif fmt == "jsonl":
        text = released_jsonl(frame, kinds)
    else:
        raise ValidationError(f"format must be 'csv' or 'jsonl', got {fmt!r}.")
    return write_atomically(path, text.encode("utf-8"), mode=SHARED_FILE_MODE,
                            overwrite=overwrite)  # OutputExistsError names the file


def read_released_csv(source: str | os.PathLike[str] | io.TextIOBase, kinds: Mapping[str, str],
                      *, sep: str = ",") -> pd.DataFrame:
    """Read what :func:`write_released` wrote as CSV; ``kinds`` as it was given
    (:func:`column_kinds` of the plan, or the ``columns`` of ``dmt anonymize``'s report)."""
    frame = pd.read_csv(source, sep=sep, dtype=str, keep_default_na=False, na_filter=False)
    unknown = [c for c in kinds if c not in frame.columns]
    if unknown:
        raise ValidationError(f"The released CSV has no column(s) {unknown!r} "
                              f"(columns: {list(frame.columns)!r}).")
    out = frame.astype(object)
    for name, kind in kinds.items():
        _check_kind(kind, name)
        cache: dict[str, Any] = {}
        cells = []
        for row, text in enumerate(frame[name].tolist()):
            if text not in cache:
                cache[text] = decode_cell(text, kind, column=name, row=row)
            cells.append(cache[text])
        out[name] = pd.Series(cells, index=frame.index, dtype=object)
    return out


def _from_json_cell(value: Any, column: str, row: int) -> Any:
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        (tag, body), = value.items()
        if tag == "interval" and isinstance(body, list) and len(body) == 2:
            return pd.Interval(float(body[0]), float(body[1]), closed="both")
        if tag == "set" and isinstance(body, list):
            return frozenset(str(m) for m in body)
        if tag == "node" and isinstance(body, str):
            return body
    raise ValidationError(f"Column {column!r}, record {row}: {value!r} is not a released cell "
                          "({'interval': [lo, hi]}, {'set': [...]} or {'node': label}).")


def read_released_jsonl(source: str | os.PathLike[str] | io.TextIOBase) -> pd.DataFrame:
    """Read what :func:`write_released` wrote as JSON Lines."""
    if isinstance(source, (str, os.PathLike)):
        text = Path(source).read_text(encoding="utf-8")
    else:
        text = source.read()
    records: list[dict[str, Any]] = []
    names: Sequence[str] = ()
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValidationError(f"Line {number} of the released JSON Lines is not JSON "
                                  f"({exc}).") from None
        if not isinstance(record, dict):
            raise ValidationError(f"Line {number} of the released JSON Lines is not an object.")
        if not records:
            names = list(record)
        elif list(record) != list(names):
            raise ValidationError(f"Line {number} has columns {list(record)!r}, the first line "
                                  f"{list(names)!r}.")
        records.append({n: _from_json_cell(v, n, number) for n, v in record.items()})
    return pd.DataFrame({n: pd.Series([r[n] for r in records], dtype=object) for n in names},
                        columns=list(names))
