"""The server's policy: everything that affects privacy or training, decided by the server.

A device's package states what was done to its records (the privacy receipt),
but nothing a package says is believed. The :class:`ServerPolicy` states the
fields and their types (the schema), the local-DP mechanism of each perturbed
field and its exact ε (so its bounds, grid, noise scale and output window
follow), the k-anonymity plan whose classes the quasi-identifiers must carry
(and its k, l and t) and the size limits; :func:`~dmt_model.server.validate.validate_package`
checks that a package matches it exactly, and retraining weighs records by the
noise the policy implies (:meth:`ServerPolicy.release_receipt`), never by a
package's claim.

The policy is plain JSON (:meth:`ServerPolicy.to_json`): it is published
beside each model version and covered by the release signature
(:mod:`dmt_privacy.release`), so devices follow the same policy the server
enforces.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from dmt_privacy.anonymity.plan import AnonymizationPlan
from dmt_privacy.anonymity.release import ReleaseRule
from dmt_privacy.dp.categorical import RandomizedResponse
from dmt_privacy.dp.numeric import DiscreteGaussian, DiscreteLaplace
from dmt_privacy.dp.receipt import FieldReceipt, ReleaseReceipt
from dmt_privacy.errors import AnonymizationError, SchemaError, ValidationError, warn_caller
from dmt_privacy.schema import Kind, Role, Schema
from dmt_privacy.seal import ENVELOPE_OVERHEAD

__all__ = ["POLICY_FORMAT", "ServerPolicy"]

POLICY_FORMAT = 2
_READABLE_FORMATS = (1, 2)
#: Mechanism names a policy may choose, by the field's kind.
_NUMERIC_MECHANISMS = {"laplace": "laplace", "discrete_laplace": "laplace",
                       "gaussian": "gaussian", "discrete_gaussian": "gaussian"}
_CATEGORICAL_MECHANISMS = {"k_rr": "k_rr", "randomized_response": "k_rr"}
_PRIVACY_UNITS = ("record", "user")
DEFAULT_MAX_RECORDS = 10_000
#: The largest sealed package `dmt serve`'s default body limit (1 MiB) takes: a policy's
#: limit is what devices size their packages by, and the service must take what it allows.
DEFAULT_MAX_BYTES = 2**20 - ENVELOPE_OVERHEAD
DEFAULT_MAX_TRAINING_RECORDS = 64


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationError(f"{name} must be a positive integer, got {value!r}.")


def _finite_positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and value > 0):
        raise ValidationError(f"{name} must be a finite number > 0, got {value!r}.")
    return float(value)


@dataclass(frozen=True)
class ServerPolicy:
    """What the server accepts, exactly.

    Parameters
    ----------
    schema:
        The records' schema: the fields, their kinds, bounds, grids and
        categories. Packages must carry its id.
    min_k:
        The least k of a plan (and, without a plan, of a receipt) when a
        package carries generalized quasi-identifiers; the release rule of the
        store uses it as the number of distinct packages a class needs.
    max_epsilon:
        Deprecated alias of ``epsilon`` (the ε is now required exactly, not as
        a ceiling: a package that spent less has more noise than the policy
        weighs it by).
    quasi_identifiers:
        The fields checked as generalized. Default: the schema's fields with the
        quasi-identifier role. A quasi-identifier of the schema that ``fields``
        accepts must be here or in ``epsilon``; never accepted raw. With a plan,
        one that ``fields`` accepts and the plan does not generalize nor ``epsilon``
        perturb is refused in every package: a :class:`UserWarning` says so.
    max_records, max_bytes:
        Limits on one package, enforced while decoding; devices size their packages by
        them before their ledger is charged (:func:`~dmt_privacy.release.sharing_policy_from`).
        ``max_bytes`` defaults to what ``dmt serve``'s default body limit takes (1 MiB
        sealed); the service refuses to start with a body limit below it.
    allow_insecure_random:
        Accept DP releases drawn from a seeded generator. For tests only.
    epsilon:
        field → the exact ε of its local-DP release. Every field named here
        must arrive perturbed by the policy's mechanism with this ε; a field not
        named here must not claim local DP.
    mechanism:
        field → ``"laplace"`` (default for numeric fields), ``"gaussian"`` or
        ``"k_rr"`` (the only one for categorical fields).
    delta:
        field → δ of a Gaussian field.
    privacy_unit:
        ``"record"`` or ``"user"``: the unit a package's DP receipt must state;
        ``None`` (default) accepts either (the server does not use it).
    plan:
        The fitted :class:`~dmt_privacy.anonymity.AnonymizationPlan` shipped to
        devices, widened to the schema (``plan.widened_to(schema)``, as ``dmt policy
        init`` writes it): a plan as fitted ships each class's fitted ends, values
        proxy records hold, and devices suppress a record between them. It is taken
        as given here, with a :class:`UserWarning` if widening it would change its
        classes (or the schema has no bounds to widen it to).
        With a plan, a package's quasi-identifiers must be, record by record,
        exactly the generalization of one of its unsuppressed classes, and the
        receipt's k, l and t the plan's. Without one, they must be well-formed
        generalizations inside the schema's domains (intervals, value sets,
        hierarchy nodes) and the receipt's k at least ``min_k``.
    fields:
        The fields a package may carry (a subset is fine). Default: every
        field of the schema that is not an identifier.
    max_training_records:
        The most records of one package retraining uses (a deterministic
        sample beyond): with weights at most 1 and values inside the bounds or
        the DP output window, this bounds one package's influence on the
        retrained model (:mod:`dmt_model.server.training`).
    max_residual:
        Retraining winsorizes each shared record's target around the previous
        foundation's prediction at ± this many standard deviations of the
        proxy target (unit-free), bounding any one record's pull.
    tokens_per_period:
        ``None`` (default): packages need no token, and the quarantine counts
        packages (one sender can fill a class with packages of its own). An
        int N: every package must carry an unspent Privacy Pass token
        (:mod:`dmt_privacy.privacy_pass`); the issuer gives an attested device
        at most N per period, and the release rule counts distinct tokens of
        one period, so a class needs k tokens of one period to leave quarantine
        (:mod:`dmt_model.server.issuer`).
    token_period_days:
        The period of ``tokens_per_period``, in days (default 7). A token is
        accepted in its period and the next one.
    """

    schema: Schema
    min_k: int
    max_epsilon: Mapping[str, float] = field(default_factory=dict)
    quasi_identifiers: tuple[str, ...] | None = None
    max_records: int = DEFAULT_MAX_RECORDS
    max_bytes: int = DEFAULT_MAX_BYTES
    allow_insecure_random: bool = False
    epsilon: Mapping[str, float] = field(default_factory=dict, kw_only=True)
    mechanism: Mapping[str, str] = field(default_factory=dict, kw_only=True)
    delta: Mapping[str, float] = field(default_factory=dict, kw_only=True)
    privacy_unit: str | None = field(default=None, kw_only=True)
    plan: AnonymizationPlan | None = field(default=None, kw_only=True, compare=False)
    fields: tuple[str, ...] | None = field(default=None, kw_only=True)
    max_training_records: int = field(default=DEFAULT_MAX_TRAINING_RECORDS, kw_only=True)
    max_residual: float = field(default=1.0, kw_only=True)
    tokens_per_period: int | None = field(default=None, kw_only=True)
    token_period_days: int = field(default=7, kw_only=True)
    _expected: Mapping[str, FieldReceipt] = field(init=False, repr=False, compare=False)
    _plan_classes: frozenset[tuple[Any, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.schema, Schema):
            raise SchemaError(f"schema must be a Schema, got {type(self.schema).__name__}.")
        _positive_int("min_k", self.min_k)
        for name in ("max_epsilon", "epsilon", "mechanism", "delta"):
            value = getattr(self, name)
            if not isinstance(value, Mapping):
                raise ValidationError(f"{name} must be a mapping field -> value, got {value!r}.")
        eps = dict(self.epsilon)
        if self.max_epsilon:
            warn_caller("ServerPolicy(max_epsilon=...) is deprecated: the ε is required "
                        "exactly; pass epsilon=... instead.", DeprecationWarning)
            if eps and eps != dict(self.max_epsilon):
                raise ValidationError(
                    f"epsilon {eps!r} and the deprecated max_epsilon {dict(self.max_epsilon)!r} "
                    "disagree; pass epsilon only.")
            eps = dict(self.max_epsilon)
        for name, value in eps.items():
            if name not in self.schema:
                raise SchemaError(f"epsilon names {name!r}, not a field of the schema.")
            eps[name] = _finite_positive(f"epsilon[{name!r}]", value)
        object.__setattr__(self, "epsilon", MappingProxyType(eps))
        object.__setattr__(self, "max_epsilon", MappingProxyType(dict(eps)))
        unknown = sorted((set(self.mechanism) | set(self.delta)) - set(eps))
        if unknown:
            raise ValidationError(
                f"mechanism/delta name {unknown!r}, which have no epsilon; add them to epsilon.")
        object.__setattr__(self, "mechanism", MappingProxyType(dict(self.mechanism)))
        object.__setattr__(self, "delta", MappingProxyType(dict(self.delta)))
        if self.privacy_unit is not None and self.privacy_unit not in _PRIVACY_UNITS:
            raise ValidationError(f"privacy_unit must be one of {_PRIVACY_UNITS!r} or None, "
                                  f"got {self.privacy_unit!r}.")
        qis = (tuple(f.name for f in self.schema.by_role(Role.QUASI_IDENTIFIER))
               if self.quasi_identifiers is None else tuple(self.quasi_identifiers))
        unknown = [q for q in qis if q not in self.schema]
        if unknown:
            raise SchemaError(f"quasi_identifiers {unknown!r} are not fields of the schema.")
        object.__setattr__(self, "quasi_identifiers", qis)
        names = (tuple(f.name for f in self.schema.fields if f.role is not Role.IDENTIFIER)
                 if self.fields is None else tuple(self.fields))
        for name in names:
            if name not in self.schema:
                raise SchemaError(f"fields names {name!r}, not a field of the schema.")
            if self.schema[name].role is Role.IDENTIFIER:
                raise ValidationError(f"fields names {name!r}, an identifier: never accepted.")
        object.__setattr__(self, "fields", names)
        raw = [f.name for f in self.schema.by_role(Role.QUASI_IDENTIFIER)
               if f.name in names and f.name not in qis and f.name not in eps]
        if raw:
            raise ValidationError(
                f"quasi-identifiers {raw!r} would be accepted raw: neither generalized "
                "(quasi_identifiers=) nor perturbed (epsilon=). Add them to "
                "quasi_identifiers, give them an epsilon, or leave them out of fields.")
        # (a quasi-identifier the plan generalizes takes only its classes' values; without a
        # plan, any interval passes validation, and its midpoint trains)
        generalized = set(self.plan.quasi_identifiers) if self.plan is not None else set()
        stranded = [] if self.plan is None else [
            q for q in qis if q in names and q not in eps and q not in generalized]
        if stranded:  # every package carrying one is refused (helper-96); devices told
            warn_caller(  # by sharing_policy_from, before their budget is charged
                f"quasi-identifiers {stranded!r} are accepted in fields but neither "
                "generalized by the plan nor perturbed (epsilon=): validation refuses every "
                "package that carries them, and a device that follows this policy is told "
                "to leave them out. Fit the plan on them, give them an epsilon, or leave them "
                "out of fields.", UserWarning)
        unbounded = [name for name in names if self.schema[name].kind is Kind.NUMERIC
                     and self.schema[name].bounds is None and name not in generalized]
        if unbounded:  # validation could check no range, and training clips none
            raise ValidationError(
                f"numeric fields {unbounded!r} have no bounds: validation could check no "
                "range there, so a package could carry any number (as an input, its pull on "
                "retraining would have no limit). Give each bounds in the schema, or leave "
                "it out of fields.")
        unranged = [name for name in names if self.schema[name].kind in (Kind.IMAGE, Kind.AUDIO)
                    and self.schema[name].bounds is None]
        if unranged:  # retraining standardizes pixels and samples as they come (helper-90)
            raise ValidationError(
                f"image and audio fields {unranged!r} have no bounds, the range of their values: "
                "validation could check none, so one package of pixels at ±1e6 would pull "
                "retraining without limit. Give each bounds in the schema (e.g. (0, 255) for "
                "8-bit pixels, (-1, 1) for float audio), or leave it out of fields.")
        _positive_int("max_records", self.max_records)
        _positive_int("max_bytes", self.max_bytes)
        _positive_int("max_training_records", self.max_training_records)
        if self.tokens_per_period is not None:
            _positive_int("tokens_per_period", self.tokens_per_period)
        _positive_int("token_period_days", self.token_period_days)
        object.__setattr__(self, "max_residual",
                           _finite_positive("max_residual", self.max_residual))
        if not isinstance(self.allow_insecure_random, bool):
            raise ValidationError(
                f"allow_insecure_random must be a bool, got {self.allow_insecure_random!r}.")
        object.__setattr__(self, "_expected", MappingProxyType(
            {name: self._field_receipt(name) for name in eps}))
        object.__setattr__(self, "_plan_classes", self._classes())

    # --- what the policy implies ------------------------------------------------------
    def class_quasi_identifiers(self, columns: Iterable[str]) -> tuple[str, ...]:
        """The quasi-identifiers that name a package's k-anonymity class, given the fields
        it carries (``columns``): those it carries, less the ones perturbed under local
        DP (the alternative to generalizing them: their noisy values name no class).
        Validation checks these as generalized and the store groups records by them."""
        carried = set(columns)
        return tuple(q for q in self.quasi_identifiers or ()
                     if q in carried and q not in self.epsilon)

    def _field_receipt(self, name: str) -> FieldReceipt:
        spec = self.schema[name]
        eps = self.epsilon[name]
        choice = self.mechanism.get(name)
        if spec.kind is Kind.NUMERIC:
            kind = _NUMERIC_MECHANISMS.get(choice or "laplace")
            if kind is None:
                raise ValidationError(f"mechanism[{name!r}] must be 'laplace' or 'gaussian' for "
                                      f"a numeric field, got {choice!r}.")
            if spec.bounds is None or spec.grid is None:
                raise SchemaError(f"Field {name!r} needs bounds and a grid in the schema to be "
                                  "released with local DP.")
            if kind == "laplace":
                if self.delta.get(name, 0.0):
                    raise ValidationError(f"delta[{name!r}] given for the Laplace mechanism.")
                return DiscreteLaplace(epsilon=eps, bounds=spec.bounds, grid=spec.grid,
                                       random_state=None, field=name).field_receipt()
            return DiscreteGaussian(epsilon=eps, delta=self.delta.get(name, 0.0),
                                    bounds=spec.bounds, grid=spec.grid, random_state=None,
                                    field=name).field_receipt()
        if spec.kind is Kind.CATEGORICAL:
            if _CATEGORICAL_MECHANISMS.get(choice or "k_rr") is None:
                raise ValidationError(f"mechanism[{name!r}] must be 'k_rr' for a categorical "
                                      f"field in a share package, got {choice!r}.")
            if self.delta.get(name, 0.0):
                raise ValidationError(f"delta[{name!r}] given for randomized response.")
            return RandomizedResponse(epsilon=eps, categories=spec.categories, random_state=None,
                                      field=name).field_receipt()
        raise SchemaError(f"Field {name!r} is {spec.kind.value}: local DP applies to numeric "
                          "and categorical fields only.")

    def _classes(self) -> frozenset[tuple[Any, ...]]:
        plan = self.plan
        if plan is None:
            return frozenset()
        if not isinstance(plan, AnonymizationPlan):
            raise ValidationError(
                f"plan must be an AnonymizationPlan, got {type(plan).__name__}.")
        unknown = [q for q in plan.quasi_identifiers if q not in self.schema]
        if unknown:
            raise SchemaError(f"The plan's quasi-identifiers {unknown!r} are not in the schema.")
        dp_qis = sorted(set(plan.quasi_identifiers) & set(self.epsilon))
        if dp_qis:
            raise ValidationError(f"Quasi-identifiers {dp_qis!r} are both generalized by the "
                                  "plan and perturbed; give each one transform.")
        if plan.k < self.min_k:
            raise ValidationError(f"The plan's k={plan.k} is below min_k={self.min_k}.")
        try:  # the store's release rule, built as every write builds it (store.release_rule)
            ReleaseRule.from_plan(plan, k=int(self.min_k))
        except (ValidationError, AnonymizationError) as exc:
            raise ValidationError(
                f"The plan's k, l and t give no release rule the server can apply, so it "
                f"would release nothing: {exc}") from exc
        import numpy as np
        import pandas as pd

        from dmt_model.server.validate import cell_key

        def cells(plan: AnonymizationPlan) -> frozenset[tuple[Any, ...]]:
            n = plan.n_classes
            released = plan.release(pd.DataFrame(index=range(n)), np.arange(n))
            keep = [i for i in range(n)
                    if not (plan.class_suppressed and plan.class_suppressed[i])]
            return frozenset(tuple(cell_key(released[q].iloc[i])
                                   for q in plan.quasi_identifiers) for i in keep)

        classes = cells(plan)
        try:
            widened = cells(plan.widened_to(self.schema))
            why = "" if widened == classes else (
                "is as fitted: its classes end at values proxy records hold")
        except ValidationError as exc:  # a numeric quasi-identifier without bounds
            why = f"cannot be widened to the schema ({exc})"
        if why:
            warn_caller(
                f"The policy's plan {why}, so every device suppresses a record beyond them "
                "(a value or a category no proxy record of its class held). Ship "
                "plan.widened_to(schema), as dmt policy init does.", UserWarning)
        return classes

    def field_receipt(self, name: str) -> FieldReceipt:
        """The exact local-DP receipt a package must carry for field ``name``."""
        try:
            return self._expected[name]
        except KeyError:
            raise ValidationError(f"The policy releases no field {name!r} with local DP; it "
                                  f"perturbs {list(self._expected)!r}.") from None

    def release_receipt(self, fields: Any = None, *, n_records: int = 0) -> ReleaseReceipt | None:
        """The DP receipt the policy implies for a package carrying ``fields`` (default: all).

        This, never a package's own receipt, is what retraining weighs records
        by. ``None`` when none of those fields is perturbed.
        """
        names = list(self._expected) if fields is None else [
            f for f in self._expected if f in set(fields)]
        if not names:
            return None
        receipts = tuple(self._expected[f] for f in names)
        return ReleaseReceipt(release_id="policy", n_records=n_records,
                              epsilon=math.fsum(r.epsilon for r in receipts),
                              delta=math.fsum(r.delta for r in receipts), fields=receipts,
                              privacy_unit=self.privacy_unit or "record", user_id=None)

    def plan_classes(self) -> frozenset[tuple[Any, ...]]:
        """The plan's unsuppressed classes, as tuples of canonical cells in plan QI order."""
        return self._plan_classes

    @property
    def policy_id(self) -> str:
        """SHA-256 (hex, first 32 digits) of :meth:`to_json`: what a signed release names."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:32]

    # --- JSON ---------------------------------------------------------------------------
    @property
    def requires_tokens(self) -> bool:
        """Whether every package must carry an unspent rate-limiting token."""
        return self.tokens_per_period is not None

    def to_dict(self) -> dict[str, Any]:
        tokens = ({} if self.tokens_per_period is None else
                  {"tokens_per_period": self.tokens_per_period,
                   "token_period_days": self.token_period_days})
        return {**tokens, "format": POLICY_FORMAT, "schema": self.schema.to_dict(),
                "min_k": self.min_k,
                "epsilon": dict(self.epsilon), "mechanism": dict(self.mechanism),
                "delta": dict(self.delta), "privacy_unit": self.privacy_unit,
                "plan": None if self.plan is None else self.plan.to_dict(),
                "fields": list(self.fields or ()),
                "quasi_identifiers": list(self.quasi_identifiers or ()),
                "max_records": self.max_records, "max_bytes": self.max_bytes,
                "max_training_records": self.max_training_records,
                "max_residual": self.max_residual,
                "allow_insecure_random": self.allow_insecure_random}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServerPolicy:
        if not isinstance(data, Mapping):
            raise SchemaError(f"A server policy must be a JSON object, got {type(data).__name__}.")
        fmt = data.get("format")
        if isinstance(fmt, bool) or fmt not in _READABLE_FORMATS:
            raise SchemaError(
                f"Server policy format {fmt!r} is not supported (this SDK reads formats "
                f"{list(_READABLE_FORMATS)})."
            )
        try:
            epsilon = data["epsilon"] if fmt == 2 else data.get("max_epsilon", {})
            plan = data.get("plan")
            fields = data.get("fields")
            return cls(schema=Schema.from_dict(data["schema"]), min_k=data["min_k"],
                       epsilon=epsilon, mechanism=data.get("mechanism", {}),
                       delta=data.get("delta", {}), privacy_unit=data.get("privacy_unit"),
                       plan=None if plan is None else AnonymizationPlan.from_dict(plan),
                       fields=None if fields is None else tuple(fields),
                       quasi_identifiers=tuple(data["quasi_identifiers"])
                       if data.get("quasi_identifiers") is not None else None,
                       max_records=data.get("max_records", DEFAULT_MAX_RECORDS),
                       max_bytes=data.get("max_bytes", DEFAULT_MAX_BYTES),
                       max_training_records=data.get("max_training_records",
                                                     DEFAULT_MAX_TRAINING_RECORDS),
                       max_residual=data.get("max_residual", 1.0),
                       tokens_per_period=data.get("tokens_per_period"),
                       token_period_days=data.get("token_period_days", 7),
                       allow_insecure_random=data.get("allow_insecure_random", False))
        except KeyError as exc:
            raise SchemaError(f"Server policy lacks {exc}.") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=1, allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> ServerPolicy:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise SchemaError(f"Server policy JSON is malformed: {exc}.") from None
