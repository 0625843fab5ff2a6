"""``dmt policy init``: write the server's policy JSON for a schema.

The policy is what ``dmt ingest`` and ``dmt serve`` accept exactly
(:class:`dmt_model.server.policy.ServerPolicy`): the schema, the least k of
the quasi-identifiers' classes, and the exact ε (and mechanism) of every
field devices perturb with local DP. Every privacy figure is a flag with no
default: the command never chooses k or ε for the operator.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dmt_model.cli._files import load_schema, read_text, refuse_existing
from dmt_privacy.errors import ValidationError

__all__ = ["register", "run_policy_init"]


def _pairs(flag: str, convert: Any) -> Any:
    def parse(text: str) -> tuple[str, Any]:
        column, sep, rest = text.partition("=")
        try:
            if not sep or not column.strip():
                raise ValueError
            return column.strip(), convert(rest.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{flag} expects FIELD=VALUE, got {text!r}") from None
    return parse


def _columns(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``policy init`` to ``subparsers``."""
    parser = subparsers.add_parser(
        "policy", help="write the server's policy JSON ('dmt policy init')",
        description="A server policy states exactly what 'dmt ingest' and 'dmt serve' accept.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    init = actions.add_parser(
        "init", help="write a policy for a schema",
        description="Write the server policy for SCHEMA: packages must carry the schema's id, "
                    "quasi-identifiers generalized into classes of at least --min-k (by the "
                    "--plan when given), and each field named by --epsilon perturbed with "
                    "local DP at exactly that ε (numeric fields need bounds and a grid in the "
                    "schema, categorical ones their categories).")
    init.add_argument("--schema", type=Path, required=True,
                      help="schema JSON (dmt schema init)")
    init.add_argument("-o", "--output", type=Path, required=True, help="policy JSON to write")
    init.add_argument("--min-k", type=int, required=True,
                      help="least k of a package's quasi-identifier classes; the release rule "
                           "needs this many distinct packages per class")
    init.add_argument("--epsilon", type=_pairs("--epsilon", float), action="append",
                      default=[], metavar="FIELD=EPS",
                      help="a field devices perturb with local DP, at exactly this ε "
                           "(repeatable)")
    init.add_argument("--mechanism", type=_pairs("--mechanism", str), action="append",
                      default=[], metavar="FIELD=NAME",
                      help="laplace (default) or gaussian for a numeric field; k_rr for a "
                           "categorical one")
    init.add_argument("--delta", type=_pairs("--delta", float), action="append", default=[],
                      metavar="FIELD=DELTA", help="δ of a gaussian field")
    init.add_argument("--privacy-unit", choices=("user", "record"),
                      help="the unit packages' DP receipts must state (default: either)")
    init.add_argument("--plan", type=Path,
                      help="anonymization plan JSON (dmt anonymize --plan) whose classes "
                           "packages must carry; written widened to the schema's bounds, "
                           "which every quasi-identifier it generalizes needs")
    init.add_argument("--fields", type=_columns, metavar="COLS",
                      help="fields a package may carry (default: every field but identifiers)")
    init.add_argument("--max-records", type=int, help="most records of one package")
    init.add_argument("--max-bytes", type=int,
                      help="most bytes of one package (default 1 MiB sealed, what `dmt serve`'s "
                           "default --max-body-bytes takes; raise both for media)")
    init.add_argument("--max-training-records", type=int,
                      help="most records of one package retraining uses")
    init.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    init.set_defaults(func=run_policy_init)
    return parser


def run_policy_init(args: argparse.Namespace) -> int:
    """Write the policy; print what it demands."""
    from dmt_model.server.policy import ServerPolicy
    from dmt_privacy.anonymity.plan import AnonymizationPlan
    from dmt_privacy.files import write_atomically

    refuse_existing(args.output, args.force)
    schema = load_schema(args.schema)
    plan = None
    if args.plan is not None:
        text = read_text(args.plan, "--plan")
        try:
            plan = AnonymizationPlan.from_json(text)
        except ValueError as exc:
            raise ValidationError(f"--plan {args.plan}: {exc}") from None
        # The policy ships to every device: its classes are regions of the schema's domain,
        # not the fitted records' ends (proxy records' values, which would also suppress a
        # device's record that falls between them).
        plan = plan.widened_to(schema)
    limits = {name: value for name, value in (("max_records", args.max_records),
                                              ("max_bytes", args.max_bytes),
                                              ("max_training_records",
                                               args.max_training_records))
              if value is not None}
    try:
        policy = ServerPolicy(schema, min_k=args.min_k, epsilon=dict(args.epsilon),
                              mechanism=dict(args.mechanism), delta=dict(args.delta),
                              privacy_unit=args.privacy_unit, plan=plan,
                              fields=None if args.fields is None else tuple(args.fields),
                              **limits)
    except ValueError as exc:
        raise ValidationError(f"the policy cannot be built: {exc}") from None
    write_atomically(args.output, (policy.to_json() + "\n").encode(), overwrite=True,
                     mode=0o644)
    print(f"dmt policy init: wrote {args.output} (policy id {policy.policy_id}, schema "
          f"{schema.name!r} id {schema.schema_id})")
    print(f"  k >= {policy.min_k} over quasi-identifiers "
          f"{', '.join(policy.quasi_identifiers or ()) or '(none)'}"
          + (" (classes of the plan, widened to the schema's bounds: no class end is a "
             "fitted value)" if plan is not None else ""))
    for name, eps in policy.epsilon.items():
        mechanism = policy.mechanism.get(name) or (
            "laplace" if schema[name].kind.value == "numeric" else "k_rr")
        print(f"  {name}: local DP, ε = {eps:g} ({mechanism})")
    if not policy.epsilon:
        print("  no field is perturbed with local DP (--epsilon FIELD=EPS to require it)")
    print(f"Use it with: dmt ingest ... --policy {args.output}")
    return 0
