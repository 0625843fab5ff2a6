"""``dmt schema init``: propose a schema JSON for a CSV file, for the user to complete.

Names and kinds come from the data (a column of numbers is numeric unless
``--categorical`` says it is a category coded as numbers; a column mixing
numbers and text is refused). What a privacy schema needs and the data must
not decide is left to flags, and listed as still to do when missing: roles
(``--target``, ``--quasi-identifiers``, ``--sensitive``, ``--identifiers``)
and the bounds of numeric fields (``--bounds COL=LOW:HIGH``). Bounds and
categories are taken from the data only when asked
(``--bounds-from-data``, ``--categories-from-data``), and the command then
says that they leak.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dmt_model.cli._files import read_records, refuse_existing
from dmt_privacy.errors import ValidationError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["register", "run_schema_init"]


def _columns(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def _assignment(flag: str, value: str) -> tuple[str, str]:
    column, sep, rest = value.partition("=")
    if not sep or not column.strip() or not rest.strip():
        raise argparse.ArgumentTypeError(f"{flag} expects COLUMN=VALUE, got {value!r}")
    return column.strip(), rest.strip()


def _bounds(text: str) -> tuple[str, tuple[float, float]]:
    column, rest = _assignment("--bounds", text)
    low, sep, high = rest.partition(":")
    try:
        if not sep:
            raise ValueError
        return column, (float(low), float(high))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--bounds expects COLUMN=LOW:HIGH (e.g. age=0:120), got {text!r}") from None


def _grid(text: str) -> tuple[str, float]:
    column, rest = _assignment("--grid", text)
    try:
        return column, float(rest)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--grid expects COLUMN=STEP (e.g. income=0.01), got {text!r}") from None


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``schema init`` to ``subparsers``."""
    parser = subparsers.add_parser(
        "schema", help="write a schema JSON for a CSV file ('dmt schema init')",
        description="Schemas describe records: each field's kind, role, bounds and categories. "
                    "'dmt train', 'dmt anonymize --schema' and 'dmt policy init' read them.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    init = actions.add_parser(
        "init", help="propose a schema for a CSV file",
        description="Write a schema JSON proposing a field for each column of DATA: its name "
                    "and kind (numbers: numeric; anything else: categorical). Roles and "
                    "numeric bounds are what you decide: give them as flags, or edit the file; "
                    "the command lists what is still missing. Bounds are never taken from "
                    "the data unless you ask (--bounds-from-data), because they leak it.")
    init.add_argument("data", type=Path, help="CSV file of records")
    init.add_argument("-o", "--output", type=Path, required=True, help="schema JSON to write")
    init.add_argument("--name", help="the schema's name (default: DATA's file name)")
    init.add_argument("--sep", help="CSV separator (default: sniffed)")
    init.add_argument("--target", help="the column a model predicts")
    init.add_argument("--quasi-identifiers", type=_columns, default=[], metavar="COLS",
                      help="comma-separated columns that could identify someone together "
                           "(age, zip code, ...): generalized by k-anonymity")
    init.add_argument("--sensitive", type=_columns, default=[], metavar="COLS",
                      help="comma-separated sensitive columns (l-diversity, t-closeness)")
    init.add_argument("--identifiers", type=_columns, default=[], metavar="COLS",
                      help="comma-separated direct identifiers (names, ids): never shared")
    init.add_argument("--numeric", type=_columns, default=[], metavar="COLS",
                      help="columns to make numeric (the default for columns of numbers)")
    init.add_argument("--categorical", type=_columns, default=[], metavar="COLS",
                      help="columns to make categorical, e.g. categories coded as numbers")
    init.add_argument("--bounds", type=_bounds, action="append", default=[],
                      metavar="COL=LOW:HIGH",
                      help="public bounds of a numeric column, from what the values can be, "
                           "not from the data (repeatable); local DP needs them")
    init.add_argument("--grid", type=_grid, action="append", default=[], metavar="COL=STEP",
                      help="grid a numeric column's DP values are snapped to (repeatable)")
    init.add_argument("--bounds-from-data", action="store_true",
                      help="take missing bounds from the data's min and max: this LEAKS the "
                           "extreme records; for public or synthetic data only")
    init.add_argument("--categories-from-data", action="store_true",
                      help="list each categorical field's categories as seen in the data: "
                           "this LEAKS rare values; for public or synthetic data only")
    init.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    init.set_defaults(func=run_schema_init)
    return parser


def _kind(frame: pd.DataFrame, name: str, numeric: list[str], categorical: list[str]) -> str:
    import pandas as pd

    if name in categorical:
        return "categorical"
    column = frame[name]
    parsed = pd.to_numeric(column, errors="coerce").notna().to_numpy()
    present = column.notna().to_numpy()
    if name in numeric or (parsed.any() and parsed[present].all()):
        if (present & ~parsed).any():
            at = int((present & ~parsed).argmax())
            raise ValidationError(
                f"column {name!r} is numeric but line {at + 2} holds {column.iloc[at]!r}; fix "
                f"the data or make it categorical (--categorical {name}).")
        return "numeric"
    if parsed.any():
        number_at, text_at = int(parsed.argmax()), int((present & ~parsed).argmax())
        raise ValidationError(
            f"column {name!r} mixes numbers (line {number_at + 2}: {column.iloc[number_at]!r}) "
            f"and text (line {text_at + 2}: {column.iloc[text_at]!r}); fix the data, or pass "
            f"--categorical {name} to treat every value as a category.")
    return "categorical"


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def run_schema_init(args: argparse.Namespace) -> int:
    """Write the proposed schema; print each field and what is still to decide."""
    from dmt_privacy.files import write_atomically
    from dmt_privacy.schema import Field, Role, Schema

    refuse_existing(args.output, args.force, source=args.data)
    frame = read_records(args.data, "DATA", sep=args.sep)
    columns = [str(c) for c in frame.columns]
    roles: dict[str, Role] = {}
    for flag, names, role in (("--quasi-identifiers", args.quasi_identifiers,
                               Role.QUASI_IDENTIFIER),
                              ("--sensitive", args.sensitive, Role.SENSITIVE),
                              ("--identifiers", args.identifiers, Role.IDENTIFIER),
                              ("--target", [args.target] if args.target else [], Role.TARGET)):
        for name in names:
            if name not in columns:
                raise ValidationError(f"{flag} names {name!r}, which is not a column of "
                                      f"{args.data} (columns: {columns!r}).")
            if name in roles:
                raise ValidationError(f"{name!r} is given two roles: {roles[name].value} and "
                                      f"{role.value}; choose one.")
            roles[name] = role
    both = sorted(set(args.numeric) & set(args.categorical))
    if both:
        raise ValidationError(f"--numeric and --categorical both name {both!r}; choose one.")
    for flag, names in (("--numeric", args.numeric), ("--categorical", args.categorical),
                        ("--bounds", [c for c, _ in args.bounds]),
                        ("--grid", [c for c, _ in args.grid])):
        unknown = [n for n in names if n not in columns]
        if unknown:
            raise ValidationError(f"{flag} names {unknown!r}, not columns of {args.data} "
                                  f"(columns: {columns!r}).")
    for flag, pairs in (("--bounds", args.bounds), ("--grid", args.grid)):
        given: dict[str, Any] = {}
        for name, value in pairs:  # a repeated column kept the last value silently (helper-124)
            if name in given and given[name] != value:
                raise ValidationError(f"{flag} gives {name!r} twice, {given[name]!r} and "
                                      f"{value!r}; give it once.")
            given[name] = value
    bounds, grids = dict(args.bounds), dict(args.grid)
    fields, from_data, unbounded = [], [], []
    for name in columns:
        kind = _kind(frame, name, args.numeric, args.categorical)
        spec: dict[str, Any] = {"name": name, "kind": kind,
                                "role": roles.get(name, Role.INSENSITIVE)}
        if kind == "numeric":
            if name in bounds:
                spec["bounds"] = bounds[name]
            elif args.bounds_from_data and roles.get(name) is not Role.IDENTIFIER:
                values = frame[name].astype(float)
                low, high = float(values.min()), float(values.max())
                if low == high:
                    high = math.nextafter(high, math.inf)
                spec["bounds"] = (low, high)
                from_data.append(f"bounds of {name}")
            else:
                unbounded.append(name)
            if name in grids:
                spec["grid"] = grids[name]
        else:
            if name in bounds or name in grids:
                raise ValidationError(f"--bounds/--grid name {name!r}, a categorical column; "
                                      f"make it numeric with --numeric {name}.")
            if args.categories_from_data and roles.get(name) is not Role.IDENTIFIER:
                seen = frame[name].dropna().unique().tolist()
                spec["categories"] = tuple(sorted((_plain(v) for v in seen),
                                                  key=lambda v: (str(type(v)), v)))
                from_data.append(f"categories of {name}")
        fields.append(Field(**spec))
    schema = Schema(tuple(fields), name=args.name or args.data.stem)
    write_atomically(args.output, (json.dumps(schema.to_dict(), indent=2) + "\n").encode(),
                     overwrite=True, mode=0o644)
    print(f"dmt schema init: wrote {args.output} ({len(fields)} fields, schema id "
          f"{schema.schema_id})")
    for made in fields:
        extra = f" bounds {list(made.bounds)}" if made.bounds else ""
        print(f"  {made.name:<24} {made.kind.value:<12} {made.role.value}{extra}")
    todo = []
    if not args.target:
        todo.append("no target: 'dmt train' needs one (--target COL)")
    if not args.quasi_identifiers:
        todo.append("no quasi-identifiers: k-anonymity generalizes none (--quasi-identifiers)")
    if unbounded:
        todo.append(f"numeric field(s) without bounds: {', '.join(unbounded)}; local DP "
                    "needs public bounds (--bounds COL=LOW:HIGH, from what the values can be)")
    if todo:
        print("Still to decide (flags, or edit the file):")
        for line in todo:
            print(f"  - {line}")
    if from_data:
        print(f"WARNING: taken from the data, so they leak it: {', '.join(from_data)}. A bound "
              "is a record's exact value (the oldest person, the highest income) and a rare "
              "category names someone; use them only for public or synthetic data, or replace "
              "them before devices share under this schema.")
    return 0
