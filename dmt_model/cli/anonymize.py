"""``dmt anonymize``: k-anonymize a CSV file (with l-diversity and t-closeness) and report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from dmt_privacy.errors import ValidationError

__all__ = ["register", "run"]


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
            "rows, NCP, l and t achieved."
        ),
    )
    parser.add_argument("input", type=Path, help="CSV file to anonymize")
    parser.add_argument("-o", "--output", type=Path, required=True, help="CSV file to write")
    parser.add_argument("--quasi-identifiers", type=_columns, required=True,
                        help="comma-separated quasi-identifier columns")
    parser.add_argument("--sensitive", help="sensitive column (needed for --l and --t)")
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
    parser.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    parser.add_argument("--max-suppression", type=float, default=0.0,
                        help="fraction of records that may be suppressed (default 0)")
    parser.add_argument("--sep", default=None,
                        help="CSV separator (default: guessed from the header, ';' or ',')")
    parser.add_argument("--plan", type=Path, help="also write the fitted plan (JSON) here")
    parser.add_argument("--report", type=Path, help="also write the report (JSON) here")
    parser.set_defaults(func=run)
    return parser


def _guess_sep(path: Path) -> str:
    with path.open(encoding="utf-8") as fh:
        header = fh.readline()
    return ";" if header.count(";") > header.count(",") else ","


def run(args: argparse.Namespace) -> int:
    """Anonymize ``args.input`` into ``args.output``; print the report; return 0."""
    import pandas as pd

    from dmt_privacy.anonymity import Hierarchy, KAnonymizer, format_generalized

    if not args.input.is_file():
        raise ValidationError(f"Input file {str(args.input)!r} does not exist.")
    if args.output.resolve() == args.input.resolve():
        raise ValidationError(f"-o {args.output} is the input file; write the result elsewhere.")
    if args.output.exists() and not args.force:
        raise ValidationError(f"{args.output} already exists; pass --force to replace it.")
    sep = args.sep or _guess_sep(args.input)
    frame = pd.read_csv(args.input, sep=sep)
    hierarchies = {
        column: Hierarchy.from_csv(path, sep=args.hierarchy_sep, name=column)
        for column, path in args.hierarchy
    }
    anonymizer = KAnonymizer(
        args.quasi_identifiers,
        sensitive=args.sensitive,
        k=args.k,
        l=args.l,
        l_kind=args.l_kind,
        c=args.c,
        t=args.t,
        hierarchies=hierarchies,
        max_suppression=args.max_suppression,
    )
    released = anonymizer.fit_transform(frame)
    format_generalized(released, args.quasi_identifiers).to_csv(args.output, sep=sep, index=False)
    report = anonymizer.report_
    if args.plan is not None:
        args.plan.write_text(anonymizer.plan_.to_json(), encoding="utf-8")
    if args.report is not None:
        args.report.write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
    print(f"dmt anonymize: {args.input} -> {args.output}")
    print(report.to_text())
    return 0
