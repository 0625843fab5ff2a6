"""``dmt anonymize``: k-anonymize a CSV file (with l-diversity and t-closeness) and report.

The input is read as text, so every column the command does not generalize is
written back byte for byte. Each quasi-identifier (and the sensitive column,
with ``--t``) must have a known kind: from ``--schema``, from ``--numeric`` /
``--categorical``, from a ``--hierarchy`` (categorical), or because it holds
no number at all (categorical). A column of numbers with no declared kind is
refused rather than guessed (an integer-coded category is not an interval),
and so is a column mixing numbers and text. The result is written by
:func:`dmt_privacy.anonymity.released_table.write_released`: exact numbers,
empty cells for suppressed ones, escaped value sets; read it back with
``read_released_csv(path, report["columns"], sep=report["separator"])``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dmt_model.cli._files import load_schema
from dmt_privacy.errors import DMTError, ValidationError

if TYPE_CHECKING:
    import pandas as pd

    from dmt_privacy.schema import Schema

__all__ = ["register", "run"]

_FORMATS = ("csv", "jsonl")


def _columns(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def _hierarchy(text: str) -> tuple[str, str]:
    column, sep, path = text.partition("=")
    if not sep or not column or not path:
        raise argparse.ArgumentTypeError(
            f"--hierarchy expects COLUMN=FILE.csv, got {text!r}"
        )
    return column.strip(), path.strip()


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``anonymize`` subcommand to ``subparsers``."""
    parser = subparsers.add_parser(
        "anonymize",
        help="k-anonymize a CSV file (Mondrian), with optional l-diversity and t-closeness",
        description=(
            "Generalize the quasi-identifiers of a CSV file so that every combination occurs "
            "at least k times (numeric columns become intervals, categorical ones hierarchy "
            "nodes or value sets), write the result and print a report: classes, suppressed "
            "rows, NCP, l and t achieved. Numbers are written exactly; an empty cell means "
            "suppressed (or, in the sensitive column, withheld); value sets are {a|b} with "
            "\\ escaping \\ | { }. Columns holding numbers need a declared kind (--schema, "
            "--numeric or --categorical): they are never guessed."
        ),
    )
    parser.add_argument("input", type=Path, help="CSV file to anonymize")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="file to write (CSV, or JSON Lines with --format jsonl or a "
                             ".jsonl name)")
    parser.add_argument("--schema", type=Path,
                        help="schema JSON (dmt schema init): the kind of every column, and the "
                             "quasi-identifiers and sensitive column when not given")
    parser.add_argument("--quasi-identifiers", type=_columns,
                        help="comma-separated quasi-identifier columns (default: the schema's)")
    parser.add_argument("--sensitive",
                        help="sensitive column, needed for --l and --t (default: the schema's "
                             "one sensitive field, if it has exactly one)")
    parser.add_argument("--numeric", type=_columns, default=[], metavar="COLS",
                        help="comma-separated columns to treat as numbers (released as "
                             "intervals)")
    parser.add_argument("--categorical", type=_columns, default=[], metavar="COLS",
                        help="comma-separated columns to treat as categories (released as "
                             "value sets), even if they hold numbers")
    parser.add_argument("--k", type=int, required=True, help="minimum class size")
    parser.add_argument("--l", type=int, help="l-diversity of the sensitive column")
    parser.add_argument("--l-kind", choices=("distinct", "entropy", "recursive"),
                        default="distinct", help="l-diversity variant (default: distinct)")
    parser.add_argument("--c", type=float, default=1.0, help="c of recursive (c,l)-diversity")
    parser.add_argument("--t", type=float, help="t-closeness (EMD) of the sensitive column")
    parser.add_argument("--hierarchy", type=_hierarchy, action="append", default=[],
                        metavar="COLUMN=FILE.csv",
                        help="ARX-format hierarchy for a column (repeatable)")
    parser.add_argument("--hierarchy-sep", default=";", help="separator of hierarchy files")
    parser.add_argument("--force", action="store_true",
                        help="replace OUTPUT (and --plan, --report) if they exist")
    parser.add_argument("--max-suppression", type=float, default=0.0,
                        help="fraction of records that may be suppressed (default 0)")
    parser.add_argument("--sep", default=None,
                        help="CSV separator (default: guessed from the header, ';' or ',')")
    parser.add_argument("--format", choices=_FORMATS, default=None,
                        help="output format (default: jsonl for a .jsonl or .ndjson OUTPUT, "
                             "else csv)")
    parser.add_argument("--plan", type=Path, help="also write the fitted plan (JSON) here")
    parser.add_argument("--report", type=Path,
                        help="also write the report (JSON) here, with the cell kind of each "
                             "released column (what read_released_csv needs)")
    parser.set_defaults(func=run)
    return parser


def _guess_sep(path: Path) -> str:
    with path.open(encoding="utf-8") as fh:
        header = fh.readline()
    return ";" if header.count(";") > header.count(",") else ","


def _read_text_csv(path: Path, sep: str) -> pd.DataFrame:
    import pandas as pd

    try:
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_filter=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValidationError(f"{path} is not a readable CSV file ({exc}).") from None


def _line(position: int) -> int:
    """The file line of the record at ``position`` (the header is line 1)."""
    return position + 2


def _column_kind(frame: pd.DataFrame, name: str, declared: dict[str, str]) -> str:
    """``"numeric"`` or ``"categorical"``: as declared, else only if the column holds no
    number; a column of numbers (or mixing numbers and text) with no declared kind is refused."""
    import pandas as pd

    if name in declared:
        return declared[name]
    parsed = pd.to_numeric(frame[name], errors="coerce").notna().to_numpy()
    if not parsed.any():
        return "categorical"
    how = (f"pass --numeric {name} (intervals) or --categorical {name} (value sets), or "
           "--schema (write one with 'dmt schema init')")
    if parsed.all():
        raise ValidationError(
            f"column {name!r} holds only numbers, and its kind is not declared: it could be a "
            f"measure or a category coded as numbers; {how}.")
    text_at, number_at = int((~parsed).argmax()), int(parsed.argmax())
    raise ValidationError(
        f"column {name!r} mixes numbers (line {_line(number_at)}: "
        f"{frame[name].iloc[number_at]!r}) and text (line {_line(text_at)}: "
        f"{frame[name].iloc[text_at]!r}); fix the data or declare its kind: {how}.")


def _declared_kinds(args: argparse.Namespace, schema: Schema | None) -> dict[str, str]:
    declared: dict[str, str] = {}
    if schema is not None:
        for spec in schema:
            if spec.kind.value == "numeric":
                declared[spec.name] = "numeric"
            elif spec.kind.value in ("categorical", "text"):
                declared[spec.name] = "categorical"
    both = sorted(set(args.numeric) & set(args.categorical))
    if both:
        raise ValidationError(f"--numeric and --categorical both name {both!r}; choose one.")
    for names, kind in ((args.numeric, "numeric"), (args.categorical, "categorical")):
        for name in names:
            if declared.get(name, kind) != kind:
                raise ValidationError(
                    f"--{kind} {name}: the schema says {name!r} is {declared[name]}; change the "
                    "schema or drop the flag.")
            declared[name] = kind
    for name, _ in args.hierarchy:
        declared[name] = "categorical"  # a hierarchy's leaves are text
    return declared


def _roles(args: argparse.Namespace, schema: Schema | None) -> tuple[list[str], str | None]:
    qis = args.quasi_identifiers
    sensitive = args.sensitive
    if schema is not None:
        if not qis:
            qis = [f.name for f in schema.by_role("quasi-identifier")]
        if sensitive is None:
            named = [f.name for f in schema.by_role("sensitive")]
            sensitive = named[0] if len(named) == 1 else None
    if not qis:
        raise ValidationError(
            "no quasi-identifiers: pass --quasi-identifiers COL,COL or a --schema whose fields "
            "have the quasi-identifier role.")
    return qis, sensitive


def _typed(frame: pd.DataFrame, kinds: dict[str, str],
           categories: dict[str, tuple[Any, ...]] | None = None) -> pd.DataFrame:
    """``frame`` (all text) with its numeric columns as numbers, and each column of
    ``categories`` (the schema's, for columns no hierarchy file codes) as the schema's
    categories, matched by their text: a plan fitted on the text '0' would name a category
    no device record holds (they hold 0) and suppress every one. Empty or non-numeric
    cells of the columns in ``kinds``, and a cell that is none of the schema's categories,
    are refused with their line."""
    import numpy as np
    import pandas as pd

    typed = frame.copy()
    for name, kind in kinds.items():
        empty = (frame[name] == "").to_numpy()
        if empty.any():
            raise ValidationError(
                f"column {name!r} is empty at line {_line(int(empty.argmax()))}; fill or drop "
                "such rows before anonymizing (an empty cell in the output means suppressed).")
        if kind != "numeric":
            if categories and name in categories:
                lookup = {str(c): c for c in categories[name]}
                unknown = ~frame[name].isin(list(lookup)).to_numpy()
                if unknown.any():
                    at = int(unknown.argmax())
                    raise ValidationError(
                        f"column {name!r} holds {frame[name].iloc[at]!r} at line {_line(at)}, "
                        f"none of the schema's categories {list(categories[name])[:10]!r}; fix "
                        "the value or the schema.")
                typed[name] = frame[name].map(lookup).astype(object)
            continue
        values = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float)
        bad = ~np.isfinite(values)
        if bad.any():
            at = int(bad.argmax())
            raise ValidationError(
                f"column {name!r} is numeric but line {_line(at)} holds "
                f"{frame[name].iloc[at]!r}; fix the value, or declare the column categorical "
                f"(--categorical {name}) to release it as value sets.")
        typed[name] = values
    return typed


#: The anonymizer's parameter names, as this command's flags (its messages speak Python).
_FLAGS = (
    (re.compile(r"l=\S+ / t=\S+ need a sensitive column; pass sensitive=\.\.\."),
     "--l and --t need a sensitive column: pass --sensitive COLUMN"),
    (re.compile(r"\bpass sensitive=\.\.\."), "pass --sensitive COLUMN"),
    (re.compile(r"\bquasi_identifiers\b"), "--quasi-identifiers"),
    (re.compile(r"\bmax_suppression\b"), "--max-suppression"),
    (re.compile(r"\bl_kind\b"), "--l-kind"),
    (re.compile(r"(?<![\w-])([kltc])="), r"--\1 "),
    (re.compile(r"(?<![\w-])([kltc]) must\b"), r"--\1 must"),
    (re.compile(r"\bLower ([lt])\b"), r"Lower --\1"),
    (re.compile(r"(--[a-z-]+)="), r"\1 "),
)


def _as_flags(message: str) -> str:
    """A library message in the words of this command: ``max_suppression`` is
    ``--max-suppression``, ``l=2`` is ``--l 2``."""
    for pattern, flag in _FLAGS:
        message = pattern.sub(flag, message)
    return message.replace("  ", " ")


def _finite(value: Any) -> Any:
    """A JSON-ready copy of ``value`` with NaN and infinities as ``None`` (JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _output_text(released: pd.DataFrame, original: pd.DataFrame,
                 qis: list[str], sensitive: str | None) -> pd.DataFrame:
    """The released table with every column not generalized as it was read (exact text),
    the sensitive column's withheld cells missing."""
    out = original.astype(object).copy()
    for name in qis:
        out[name] = released[name].astype(object)
    if sensitive is not None:
        withheld = released[sensitive].isna().to_numpy()
        column = out[sensitive].copy()
        column[withheld] = None
        out[sensitive] = column
    return out


def run(args: argparse.Namespace) -> int:
    """Anonymize ``args.input`` into ``args.output``; print the report; return 0."""
    from dmt_privacy.anonymity import Hierarchy, KAnonymizer
    from dmt_privacy.anonymity.released_table import column_kinds, write_released
    from dmt_privacy.files import SHARED_FILE_MODE, write_atomically

    if not args.input.is_file():
        raise ValidationError(f"Input file {str(args.input)!r} does not exist.")
    outputs = [(flag, path) for flag, path in (("-o", args.output), ("--plan", args.plan),
                                               ("--report", args.report)) if path is not None]
    for flag, path in outputs:
        if path.resolve() == args.input.resolve():
            raise ValidationError(f"{flag} {path} is the input file; write the result elsewhere.")
        if path.exists() and not args.force:
            raise ValidationError(f"{flag} {path} already exists; pass --force to replace it.")
    fmt = args.format or ("jsonl" if args.output.suffix.lower() in (".jsonl", ".ndjson")
                          else "csv")
    sep = args.sep or _guess_sep(args.input)
    schema = None if args.schema is None else load_schema(args.schema)
    frame = _read_text_csv(args.input, sep)
    identifiers = [] if schema is None else [
        f.name for f in schema.by_role("identifier") if f.name in frame.columns]
    frame = frame.drop(columns=identifiers)
    qis, sensitive = _roles(args, schema)
    checked = [*qis, *([sensitive] if sensitive else [])]
    missing = [c for c in checked if c not in frame.columns]
    if missing:
        raise ValidationError(
            f"column(s) {missing!r} are not in {args.input} (its columns: "
            f"{list(frame.columns)!r}); fix --quasi-identifiers / --sensitive or the schema.")
    declared = _declared_kinds(args, schema)
    kinds = {name: _column_kind(frame, name, declared) for name in qis}
    if sensitive is not None:
        # Only t-closeness reads the sensitive column's kind (ordered or equal distance).
        kinds[sensitive] = (_column_kind(frame, sensitive, declared) if args.t is not None
                            else declared.get(sensitive, "categorical"))
    coded = {name for name, _ in args.hierarchy}
    typed = _typed(frame, kinds, None if schema is None else {
        spec.name: spec.categories for spec in schema
        if spec.name in kinds and spec.categories is not None and spec.name not in coded})
    hierarchies = {
        column: Hierarchy.from_csv(path, sep=args.hierarchy_sep, name=column)
        for column, path in args.hierarchy
    }
    if schema is not None:
        for spec in schema:
            if spec.name in qis and spec.hierarchy and spec.name not in hierarchies:
                hierarchies[spec.name] = Hierarchy.from_mapping(spec.hierarchy, name=spec.name)
    if (args.l is not None or args.t is not None) and sensitive is None:
        raise ValidationError("--l and --t need a sensitive column: pass --sensitive COLUMN (or "
                              "a --schema with exactly one sensitive field).")
    anonymizer = KAnonymizer(
        qis,
        sensitive=sensitive,
        k=args.k,
        l=args.l,
        l_kind=args.l_kind,
        c=args.c,
        t=args.t,
        hierarchies=hierarchies,
        max_suppression=args.max_suppression,
    )
    try:
        released = anonymizer.fit_transform(typed)
    except DMTError as exc:
        raise type(exc)(_as_flags(str(exc))) from None
    cell_kinds = column_kinds(anonymizer.plan_)
    table = _output_text(released, frame, qis, sensitive)
    write_released(table, args.output, cell_kinds, fmt=fmt, sep=sep, overwrite=args.force)
    report = anonymizer.report_
    if args.plan is not None:
        write_atomically(args.plan, anonymizer.plan_.to_json().encode(), overwrite=True,
                         mode=SHARED_FILE_MODE)
    if args.report is not None:
        data = {**_finite(report.to_dict()), "columns": cell_kinds, "format": fmt,
                "separator": sep}
        write_atomically(args.report, json.dumps(data, indent=2, allow_nan=False).encode(),
                         overwrite=True, mode=SHARED_FILE_MODE)
    print(f"dmt anonymize: {args.input} -> {args.output} ({fmt})")
    if identifiers:
        print(f"identifier column(s) left out, as the schema says: {', '.join(identifiers)}")
    print(report.to_text())
    return 0
