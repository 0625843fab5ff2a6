"""Partial sharing: a :class:`SharingPolicy` says what may leave the device, :func:`share` does it.

A policy names the fields that are shared, which part of the eligible
records (a fraction, a predicate, or an explicit set of record ids), and the
transforms, applied in this order:

1. **modification** (``modifiers``: field → a :mod:`dmt_privacy.modify`
   transformer, e.g. synonyms for text, blur for images);
2. **k-anonymity** (``plan``: a fitted
   :class:`~dmt_privacy.anonymity.AnonymizationPlan`, shipped with the model):
   each record's quasi-identifiers are replaced by its class's
   generalization. Records the plan suppresses are left out of the package
   and stay unshared on the device;
3. **local DP** (``epsilon``: field → ε) by
   :class:`~dmt_privacy.dp.LocalDPPerturber`, which charges the store's
   :class:`~dmt_privacy.dp.PrivacyLedger` before it draws any noise.

Fields outside ``fields`` never leave the device, nor do records outside the
selection or records stored with ``shareable=False``. :func:`share` seals the
package to the server's public key and puts it in the store's outbox: no
record is marked shared until :meth:`LocalStore.acknowledge
<dmt_privacy.store.LocalStore.acknowledge>` records the server's
acknowledgement.

A record shared again after its package was abandoned (the server refused it, or it
was never delivered) releases what it released the first time, field by field under the
same transformation (:meth:`LocalStore.draws <dmt_privacy.store.LocalStore.draws>`): the
server opened the first package, and a second draw set beside the first would tell it
more than either. Re-sent noisy values are not charged again. Drawn once: local-DP values
and the SDK's own modifiers' output, from a secure source; an app's own modifier, whose
code can change under its name, and a seeded source draw afresh.

A share package does not name the user: the DP receipt it carries has its
``user_id`` removed (the ledger keeps the full receipt), since anything
stable across packages would link a user's anonymized records together.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import re
import secrets
import sys
import types
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pandas as pd

from dmt_privacy.anonymity.plan import AnonymizationPlan
from dmt_privacy.dp.receipt import ReleaseReceipt
from dmt_privacy.errors import AnonymizationError, SchemaError, ValidationError, warn_caller
from dmt_privacy.package import (
    MAX_RECEIPT_LABEL,
    PrivacyReceipt,
    SharePackage,
    encode_package,
    seal_package,
    token_bytes,
)
from dmt_privacy.schema import Kind, Role, Schema
from dmt_privacy.seal import ServerPublicKey
from dmt_privacy.store import LocalStore, OutboxEntry

__all__ = ["ShareResult", "SharingPolicy", "share"]

_UNITS = ("user", "record")


def _frozen_mapping(value: Mapping[str, Any] | None, name: str) -> Mapping[str, Any]:
    if value is None:
        return types.MappingProxyType({})
    if not isinstance(value, Mapping):
        raise ValidationError(f"{name} must be a mapping field -> value, got {value!r}.")
    return types.MappingProxyType(dict(value))


@dataclass(frozen=True)
class SharingPolicy:
    """What may be shared, and how it is transformed first.

    Parameters
    ----------
    fields:
        The fields that go into a package. Every other field stays on the device.
    fraction, predicate, record_ids:
        Which of the eligible records (shareable, not shared, not in a pending
        package) are shared: at most one of a fraction in (0, 1] drawn at
        random, a callable taking the eligible records (a DataFrame indexed by
        record id, holding only the fields shared as they are, in ``fields``'
        order: a selection on a perturbed, generalized, modified or unshared
        field would tell the server its true values) and returning a boolean
        mask, or explicit record ids. None given: all eligible records.
    modifiers:
        field → a fitted-or-stateless modifier from :mod:`dmt_privacy.modify`.
    plan:
        The fitted :class:`~dmt_privacy.anonymity.AnonymizationPlan`, as the
        server's policy ships it: widened to the schema
        (:meth:`~dmt_privacy.anonymity.AnonymizationPlan.widened_to`), so every
        record inside the schema's bounds falls into a class (a plan as fitted
        suppresses a record beyond or between the fitted records' values, and
        such a record stays unshared). Its quasi-identifiers must all be in
        ``fields``, and its sensitive field too when it has l or t (the server
        judges them on it).
    epsilon, delta, mechanism:
        Local DP per field, as :class:`~dmt_privacy.dp.LocalDPPerturber` takes
        them (``"oue"`` is refused: its output columns are not schema fields).
    privacy_unit:
        ``"user"`` (user-level DP: a share of n records costs n × Σε, what
        the user loses) or ``"record"`` (record-level, weaker), see
        :class:`~dmt_privacy.dp.LocalDPPerturber`. Default (``None``):
        ``"user"``. Policies that relied on the earlier record-level default
        must now give a budget for what their users really spend, or say
        ``privacy_unit="record"``.
    required_k:
        The plan's k must be at least this (the server refuses less).
    max_epsilon:
        The most one share may charge the ledger (what
        :func:`~dmt_privacy.dp.release_epsilon` says the release costs under
        ``privacy_unit``); checked before any noise is drawn.
    max_records:
        The most records one package may hold (the server's policy's ``max_records``:
        it refuses a larger package); a larger selection is refused before any noise is
        drawn. Share the rest in another package (``fraction``, ``record_ids``).
    max_bytes:
        The most bytes one encoded package may take (the server's policy's
        ``max_bytes``). Checked before any noise is drawn, with the widest value each
        perturbed cell may take (a float; a categorical field's category that msgpack
        writes longest) and the receipt the package would carry: a package let through
        fits.
    requires_token:
        The server counts only packages that carry a Privacy Pass token (its policy's
        ``tokens_per_period``): ``share`` without ``token=`` is refused before any charge.
    schema_id:
        The :attr:`~dmt_privacy.schema.Schema.schema_id` of the server's schema (its
        policy's; :func:`~dmt_privacy.release.sharing_policy_from` takes it from there):
        a store of another schema is refused before any charge, since the server refuses
        every package whose schema is not its own. ``None``: not checked.

    A field may take one transform only. A schema quasi-identifier must be
    generalized by the plan or perturbed; an identifier is never shared.
    """

    fields: tuple[str, ...]
    fraction: float | None = None
    predicate: Callable[[pd.DataFrame], Any] | None = field(default=None, compare=False)
    record_ids: frozenset[str] | None = None
    modifiers: Mapping[str, Any] = field(default_factory=dict, compare=False)
    plan: AnonymizationPlan | None = None
    epsilon: Mapping[str, float] = field(default_factory=dict)
    delta: Mapping[str, float] = field(default_factory=dict)
    mechanism: Mapping[str, str] = field(default_factory=dict)
    privacy_unit: str | None = None
    required_k: int | None = None
    max_epsilon: float | None = None
    max_records: int | None = None
    max_bytes: int | None = None
    requires_token: bool = False
    schema_id: str | None = None

    def __post_init__(self) -> None:
        names = (self.fields,) if isinstance(self.fields, str) else tuple(self.fields)
        if not names or not all(isinstance(n, str) and n for n in names):
            raise ValidationError(f"fields must name at least one field, got {self.fields!r}.")
        if len(set(names)) != len(names):
            raise ValidationError(f"fields repeats a name: {names!r}.")
        object.__setattr__(self, "fields", names)
        chosen = [n for n, v in (("fraction", self.fraction), ("predicate", self.predicate),
                                 ("record_ids", self.record_ids)) if v is not None]
        if len(chosen) > 1:
            raise ValidationError(
                f"Choose the records with one of fraction, predicate or record_ids; got {chosen!r}."
            )
        if self.fraction is not None:
            f = self.fraction
            if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
                raise ValidationError(f"fraction must be in (0, 1], got {f!r}.")
        if self.schema_id is not None and not (
                isinstance(self.schema_id, str)
                and re.fullmatch(r"[0-9a-f]{16}", self.schema_id)):
            raise ValidationError(f"schema_id must be a schema's id (Schema.schema_id) or "
                                  f"None, got {self.schema_id!r}.")
        if not isinstance(self.requires_token, bool):
            raise ValidationError(
                f"requires_token must be a bool, got {self.requires_token!r}.")
        for name in ("max_records", "max_bytes"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise ValidationError(f"{name} must be a positive int or None, got {value!r}.")
        if self.predicate is not None and not callable(self.predicate):
            raise ValidationError(f"predicate must be callable, got {self.predicate!r}.")
        if self.record_ids is not None:
            if isinstance(self.record_ids, str) or not isinstance(self.record_ids, Collection):
                raise ValidationError(
                    f"record_ids must be a collection of ids, got {self.record_ids!r}."
                )
            object.__setattr__(self, "record_ids", frozenset(str(r) for r in self.record_ids))
        for name in ("modifiers", "epsilon", "delta", "mechanism"):
            object.__setattr__(self, name, _frozen_mapping(getattr(self, name), name))
        if self.privacy_unit is None:  # user-level unless the caller asks for less
            object.__setattr__(self, "privacy_unit", "user")
        if self.privacy_unit not in _UNITS:
            raise ValidationError(
                f"privacy_unit must be one of {_UNITS!r}, got {self.privacy_unit!r}."
            )
        if self.plan is not None and not isinstance(self.plan, AnonymizationPlan):
            raise ValidationError(
                f"plan must be a fitted AnonymizationPlan (KAnonymizer(...).fit(proxy).plan_), "
                f"got {type(self.plan).__name__}."
            )
        qis = tuple(self.plan.quasi_identifiers) if self.plan is not None else ()
        plan = self.plan
        if plan is not None and (plan.l is not None or plan.t is not None) \
                and plan.sensitive not in names:
            # the server judges l and t on it and refuses a package without it
            # (dmt_model.server.validate), after the ledger was charged for the package
            raise ValidationError(
                f"The plan's l / t are judged on the sensitive field {plan.sensitive!r}, which "
                f"is not in fields {names!r}: the server refuses every package without it. "
                "Add it to fields.")
        groups = {"modifiers": tuple(self.modifiers), "plan": qis, "epsilon": tuple(self.epsilon)}
        seen: dict[str, str] = {}
        for group, members in groups.items():
            for name in members:
                if name not in names:
                    raise ValidationError(
                        f"{group} names field {name!r}, which is not in fields {names!r}; add "
                        "it to fields or drop the transform."
                    )
                if name in seen:
                    raise ValidationError(
                        f"Field {name!r} has two transforms ({seen[name]} and {group}); give "
                        "each field one."
                    )
                seen[name] = group
        for name, mech in self.mechanism.items():
            if str(mech).lower() in ("oue", "unary_encoding"):
                raise ValidationError(
                    f"Field {name!r}: mechanism {mech!r} is not supported in share packages "
                    "(its output columns are not schema fields); use 'k_rr'."
                )
        if self.required_k is not None:
            rk = self.required_k
            if isinstance(rk, bool) or not isinstance(rk, int) or rk < 1:
                raise ValidationError(f"required_k must be a positive integer, got {rk!r}.")
            if self.plan is None or self.plan.k < rk:
                got = None if self.plan is None else self.plan.k
                raise AnonymizationError(
                    f"required_k={rk} but the plan gives k={got!r}; fit the plan with "
                    f"k >= {rk}."
                )
        if self.max_epsilon is not None:
            me = self.max_epsilon
            if isinstance(me, bool) or not isinstance(me, (int, float)) or not (
                    math.isfinite(me) and me > 0):
                raise ValidationError(f"max_epsilon must be a finite number > 0, got {me!r}.")
            spent = math.fsum(float(v) for v in self.epsilon.values())
            if spent > me * (1 + 1e-12):  # the least any release can cost, under either unit
                raise ValidationError(
                    f"The per-field ε sum to {spent:g}, above max_epsilon={me:g}; lower them."
                )

    def evolve(self, **changes: Any) -> SharingPolicy:
        """A copy of this policy with some parameters changed."""
        return dataclasses.replace(self, **changes)

    def check(self, schema: Schema) -> None:
        """Raise unless this policy can apply to records of ``schema``."""
        if self.schema_id is not None and schema.schema_id != self.schema_id:
            raise ValidationError(
                f"The server's policy is for schema {self.schema_id}, and this store's "
                f"schema {schema.name!r} is {schema.schema_id}: the server refuses every "
                "package of another schema, so nothing was shared or charged. Update the "
                "app's schema to the server's (the policy JSON's \"schema\") and open the "
                "store with it."
            )
        unknown = [n for n in self.fields if n not in schema]
        if unknown:
            raise SchemaError(
                f"fields {unknown!r} are not in schema {schema.name!r} ({schema.names!r})."
            )
        qis = set(self.plan.quasi_identifiers) if self.plan is not None else set()
        for name in self.fields:
            spec = schema[name]
            if spec.role is Role.IDENTIFIER:
                raise ValidationError(
                    f"Field {name!r} is an identifier: it is never shared; drop it from fields."
                )
            if spec.role is Role.QUASI_IDENTIFIER and name not in qis and name not in self.epsilon:
                raise ValidationError(
                    f"Field {name!r} is a quasi-identifier: generalize it with the plan or "
                    "perturb it (epsilon=...), or drop it from fields."
                )
        for name in self.epsilon:
            if schema[name].kind not in (Kind.NUMERIC, Kind.CATEGORICAL):
                raise SchemaError(
                    f"Field {name!r} is {schema[name].kind.value}: local DP applies to numeric "
                    "and categorical fields only; use a modifier."
                )


@dataclass(frozen=True, eq=False)
class ShareResult:
    """What :func:`share` produced: the sealed bytes to send, the receipt, the outbox entry.

    ``suppressed``: ids of selected records the plan suppressed; they were
    left out of the package and stay eligible.

    ``out_of_bounds``: ids of selected records with a value the package would
    carry in clear outside its field's schema bounds (the server refuses such
    a package); left out before any charge, of every package while the
    schema's bounds exclude it.

    ``held_back``: ids of selected records in a class of the plan this device
    already sent in another package (pending or acknowledged; under a policy
    that requires tokens, of the same token period); the server counts each
    package as another contributor, so they stay eligible, held back while
    their class has been sent (a later plan's classes are judged the same way).

    ``released_before``: ids of records of the package that carry a value (a modification or
    a noisy value) an abandoned package of theirs released before, under the same
    transformation, sent again rather than drawn afresh (:meth:`LocalStore.draws
    <dmt_privacy.store.LocalStore.draws>`). A noisy value sent again is not charged again; a
    record's other fields may have been drawn, and charged, afresh. ``receipt`` states what
    the package claims; the ledger holds what this share charged.
    """

    envelope: bytes
    receipt: PrivacyReceipt
    entry: OutboxEntry
    suppressed: tuple[str, ...] = ()
    out_of_bounds: tuple[str, ...] = ()
    held_back: tuple[str, ...] = ()
    released_before: tuple[str, ...] = ()

    @property
    def package_id(self) -> str:
        return self.entry.package_id

    @property
    def n_records(self) -> int:
        return self.entry.n_records


def _select(eligible: pd.DataFrame, policy: SharingPolicy, random_state: Any) -> pd.DataFrame:
    if policy.record_ids is not None:
        wanted = policy.record_ids
        return eligible.loc[[i for i in eligible.index if i in wanted]]
    if policy.predicate is not None:
        chosen = _predicate(policy, eligible)
        if isinstance(chosen, pd.Series) and not chosen.index.equals(eligible.index):
            # by record id, never by position: a reordered Series shared the records it
            # left out (helper-64)
            if chosen.index.has_duplicates or set(chosen.index) != set(eligible.index):
                raise ValidationError(
                    "predicate returned a Series whose index is not the eligible records' "
                    "ids (each once); return one boolean per record, indexed like the frame "
                    "it was given.")
            chosen = chosen.reindex(eligible.index)
        mask = np.asarray(chosen, dtype=object)
        if mask.shape != (len(eligible),) or not all(isinstance(m, (bool, np.bool_))
                                                     for m in mask):
            raise ValidationError(
                f"predicate must return one boolean per eligible record ({len(eligible)}), got "
                f"an array of shape {mask.shape}."
            )
        return eligible.loc[mask.astype(bool)]
    fraction = 1.0 if policy.fraction is None else float(policy.fraction)
    n = round(fraction * len(eligible))
    if n >= len(eligible):
        return eligible
    if random_state is None:
        chosen = secrets.SystemRandom().sample(range(len(eligible)), n)
    else:
        chosen = np.random.default_rng(random_state).permutation(len(eligible))[:n].tolist()
    return eligible.iloc[sorted(chosen)]


def _in_clear(policy: SharingPolicy) -> list[str]:
    """The policy's fields a package carries in clear: neither perturbed with local DP nor
    generalized by the plan (a modifier may still have changed them)."""
    generalized = set(policy.plan.quasi_identifiers) if policy.plan is not None else set()
    return [n for n in policy.fields if n not in policy.epsilon and n not in generalized]


def _predicate(policy: SharingPolicy, eligible: pd.DataFrame) -> Any:
    """``policy.predicate`` on the eligible records' fields the package carries as they are.

    Which records leave is seen by the server: a selection on a field perturbed with local
    DP, generalized by the plan or never shared would tell it that field's true values,
    uncharged (helper-87: every record above 500 of a field under ε = 0.1). Reading such a
    field is refused, naming it."""
    clear = [n for n in _in_clear(policy) if n not in policy.modifiers]
    visible = eligible[[n for n in clear if n in eligible.columns]].copy()
    try:
        return policy.predicate(visible)  # type: ignore[misc]
    except (KeyError, AttributeError) as exc:
        # pandas names a missing column quoted: KeyError('x'), "['x'] not in index",
        # "'DataFrame' object has no attribute 'x'"; any other error is the predicate's own
        hidden = [n for n in eligible.columns if n not in visible.columns]
        named = [n for n in hidden if repr(str(n)) in str(exc)]
        if not named:
            raise
        name = named[0]
        why = ("the policy perturbs it with local DP" if name in policy.epsilon else
               "the plan generalizes it" if policy.plan is not None
               and name in policy.plan.quasi_identifiers else
               "a modifier changes it before it leaves" if name in policy.modifiers else
               "it is not in the policy's fields")
        raise ValidationError(
            f"predicate read {name!r}, but {why}: a selection on its true value would tell "
            f"the server about it. A predicate sees the fields shared as they are "
            f"({clear!r}); nothing was shared or charged. To select on another field, "
            "choose the record ids yourself (record_ids=), knowing that which records leave "
            "tells the server about it.") from None


def _warn_if_seeded(name: str, modifier: Any) -> None:
    """Warn of a modifier (or a pipeline step) with a fixed ``random_state``: it draws the same
    noise in every package, so two packages differ by exactly their records' difference, and
    whoever knows the seed draws the noise again and removes it (helper-71)."""
    from dmt_privacy.dp.random import InsecureRandomnessWarning

    seeded = _seeded_params(modifier)
    if seeded:
        warn_caller(InsecureRandomnessWarning(
            f"The modifier of {name!r} is seeded ({', '.join(seeded)}): its noise repeats in "
            "every package and can be drawn again and removed. NOT SECURE, tests only; leave "
            "random_state=None."))


def _modification(name: str, modifier: Any, before: pd.Series, after: pd.Series) -> str:
    """What the device's receipt says of ``modifier`` on field ``name``: each step of a
    pipeline by name, and how many of the records it changed. 'photo:Pipeline' said nothing
    of what ran (a passthrough too), and a replacer that changed no record was claimed all
    the same (helper-71). The package's receipt drops the count (it depends on the values)."""
    steps = getattr(modifier, "steps", None)
    names = ([step if isinstance(step, str) else type(step).__name__ for _, step in steps]
             if steps else [type(modifier).__name__])
    changed = sum(not _same(a, b) for a, b in zip(before, after, strict=True))
    label = f"{name}:{'+'.join(names)} ({changed}/{len(before)} changed)"
    if len(label) > MAX_RECEIPT_LABEL:
        raise ValidationError(
            f"The modifier of {name!r} would be named {label!r} in the receipt, longer than "
            f"the {MAX_RECEIPT_LABEL} characters a server takes; use fewer steps. "
            "Nothing was shared or charged.")
    return label


def _same(a: Any, b: Any) -> bool:
    """Whether a modifier left a cell as it was: a missing number as missing (NaN is not
    equal to itself), a list or an array element by element (helper-72)."""
    if isinstance(a, (str, bytes)) or isinstance(b, (str, bytes)):
        return bool(a == b)
    try:
        x, y = np.asarray(a), np.asarray(b)
        if x.dtype.kind in "fc" and y.dtype.kind in "fc":
            return bool(np.array_equal(x, y, equal_nan=True))
        if x.dtype != object and y.dtype != object:
            return bool(np.array_equal(x, y))
    except (TypeError, ValueError):  # ragged lists
        pass
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return a is b


def _package_receipt(policy: SharingPolicy, modifications: list[str],
                     dp_receipt: ReleaseReceipt | None) -> PrivacyReceipt:
    """The receipt a package under ``policy`` carries: the plan's k, l and t, the local-DP
    release's receipt and the modifications applied."""
    plan = policy.plan
    return PrivacyReceipt(k=plan.k if plan is not None else None,
                          l=plan.l if plan is not None else None,
                          t=plan.t if plan is not None else None,
                          dp=dp_receipt, modifications=tuple(modifications))


def _device_free(receipt: ReleaseReceipt) -> ReleaseReceipt:
    """A release receipt as the share's result keeps it: without the user id its ledger
    knows."""
    return dataclasses.replace(receipt, user_id=None)


def _refuse_unpackable(policy: SharingPolicy, schema: Schema, frame: pd.DataFrame,
                      modifications: list[str], token: bytes | None,
                      dp_receipt: ReleaseReceipt | None) -> None:
    """Refuse, before any charge, a package that could not be made (a cell of a type the
    package format does not carry: each retry spent ε again, helper-64) or, with
    ``policy.max_bytes``, one that could encode to more: each cell local DP will replace at
    its widest, with the receipt and token it would carry. The widest is a float, or a
    categorical field's category
    msgpack writes longest (``False``: 1 byte, ``"n/a"``: 4). A column of one number type
    is written packed (8 bytes a cell), a mixed one cell by cell (a float in 9): so a
    column sized packed is counted a byte a cell more, and a few for its header."""
    columns, packed = {}, 0
    for name in policy.fields:
        values = frame[name].tolist()
        if name in policy.epsilon:
            spec = schema[name]
            widest: Any = (float(spec.bounds[1]) if spec.kind is Kind.NUMERIC and spec.bounds
                           else max(spec.categories or ("",),
                                    key=lambda c: len(msgpack.packb(c))))
            values = [widest] * len(values)
            packed += (len(values) + 5) * (type(widest) in (float, int))
        columns[name] = values
    package = SharePackage.create(schema.schema_id, columns,
                                  _package_receipt(policy, modifications, dp_receipt).carried())
    if policy.max_bytes is None:
        return
    if token is not None:  # SharePackage takes the token's format itself
        package = dataclasses.replace(package, token=token)
    size = len(encode_package(package)) + packed
    if size > policy.max_bytes:  # type: ignore[operator]
        raise ValidationError(
            f"These {len(frame)} records would encode to about {size:,} bytes, above "
            f"max_bytes={policy.max_bytes:,} (the server refuses a larger package); nothing "
            "was shared or charged. Select fewer records (fraction=, record_ids=) and share "
            "the rest in another package.")


def _classes_sent(store: LocalStore, plan: AnonymizationPlan,
                  token_key: str | None = None) -> dict[int, str]:
    """The classes of ``plan`` this store has sent records in (pending or acknowledged
    packages), each with a package that sent it. The server counts each package as another
    contributor, since nothing links packages to devices: a device that sent a class again
    in another package would count twice towards its k (helper-87: one device sharing a
    record a day filled a k = 5 class alone). With a token (``token_key``: its issuer key,
    one a period), the server counts k, l and t over one period's tokens, so only the
    packages sent with a token of that period count; one sent without a token counts too."""
    keys = store.package_token_keys() if token_key is not None else {}
    package_of = {record: entry.package_id
                  for entry in [*store.outbox("pending"), *store.outbox("acknowledged")]
                  if keys.get(entry.package_id, token_key) == token_key
                  for record in entry.record_ids}
    if not package_of:
        return {}
    records = store.records(ids=package_of)[list(plan.quasi_identifiers)]
    classes = plan.apply(records).class_ids
    return {int(c): package_of[str(i)]
            for i, c in zip(records.index, classes.tolist(), strict=True) if c >= 0}


def _within_bounds(policy: SharingPolicy, schema: Schema,
                   frame: pd.DataFrame) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """``frame`` without the records whose fields shared in clear (neither perturbed nor
    generalized by the plan) hold a number outside the schema's bounds, and their ids. The
    store takes such a value (local DP clips it), the server refuses a package holding it in
    clear: sharing it charged the ledger for a package refused, at every retry (helper-87).
    Raises, before any charge, when no record is left. Bounds are read exactly, as the
    store's numbers are (the server allows a relative 1e-9 more)."""
    clear = _in_clear(policy)
    _, outside = schema.outside_bounds(frame, columns=clear)
    rows = outside.any(axis=1) if outside.size else np.zeros(len(frame), dtype=bool)
    for name in clear:  # an image or audio field's range of values, as the server checks it
        spec = schema[name]
        if spec.kind in (Kind.IMAGE, Kind.AUDIO) and spec.bounds is not None:
            low, high = spec.bounds
            rows |= np.fromiter((not (low <= np.min(v) and np.max(v) <= high)
                                 for v in frame[name]), dtype=bool, count=len(frame))
    if not rows.any():
        return frame, ()
    if rows.all():
        try:
            schema.check_bounds(frame, columns=clear)
            media = [n for n in clear if schema[n].kind in (Kind.IMAGE, Kind.AUDIO)]
            reason = ("Every record left to share holds an image or audio value outside its "
                      f"field's bounds (the range of its values; fields {media!r}).")
        except ValidationError as exc:
            reason = str(exc)
        raise ValidationError(
            f"{reason} The server refuses a package that holds it in clear, and every "
            "record left to share (after the plan's suppressions and held-back classes) "
            "has such a value: nothing was shared or charged. Such a record stays on the "
            "device; widen the schema's bounds (the server's policy too) if the value is "
            "real.")
    return frame.loc[~rows], tuple(str(i) for i in frame.index[rows])


def _check_explicit_ids(store: LocalStore, policy: SharingPolicy) -> None:
    if policy.record_ids is None:
        return
    known = set(store.record_ids())
    unknown = sorted(policy.record_ids - known)
    if unknown:
        raise ValidationError(f"record_ids {unknown[:5]!r} are not in the store.")
    private = sorted(policy.record_ids & set(store.record_ids("private")))
    if private:
        raise ValidationError(
            f"record_ids {private[:5]!r} were stored with shareable=False and never leave "
            "the device."
        )


class _Unnamed(Exception):
    """A transformation's parameter has no stable name."""


def _describe(value: Any) -> Any:
    """A JSON-ready name of a transformation's parameter, the same in every process and
    tagged by type (helper-123: ``{1: 'a'}`` against ``{'1': 'a'}``, a regular expression by
    its cut ``repr``): estimators by type, code and parameters, sets and plain dicts sorted,
    other mappings in their order, paths by their text, arrays by digest. Raises
    :class:`_Unnamed` for what has no such name: a function (its code and the globals it
    reads can change under its name), an object array, or an object that is not an
    estimator or plain data."""
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return [type(value).__name__, value.hex() if isinstance(value, bytes) else value]
    if isinstance(value, np.generic):
        return [f"numpy.{value.dtype.str}", value.item()]
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise _Unnamed("an object array")
        return ["ndarray", value.dtype.str, list(value.shape),
                hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()]
    if isinstance(value, re.Pattern):
        return ["re.Pattern", _describe(value.pattern), value.flags]
    if isinstance(value, os.PathLike):
        return ["path", os.fspath(value)]
    if isinstance(value, Mapping):
        items = [[_describe(k), _describe(v)] for k, v in value.items()]
        if type(value) is dict:  # its order is how it was built, not what it says
            items.sort(key=lambda item: json.dumps(item[0]))
        return [_type_name(value), items]
    if isinstance(value, (list, tuple)):
        return [_type_name(value), [_describe(v) for v in value]]
    if isinstance(value, (set, frozenset)):
        return [_type_name(value), sorted(json.dumps(_describe(v)) for v in value)]
    if isinstance(value, type):
        return ["type", _type_name(value, itself=True)]
    if not hasattr(value, "get_params"):
        raise _Unnamed(type(value).__qualname__)
    return ["object", _type_name(value), _code_of(value),
            [[str(k), _describe(v)] for k, v in sorted(value.get_params(deep=False).items())]]


def _type_name(value: Any, *, itself: bool = False) -> str:
    kind = value if itself else type(value)
    return f"{kind.__module__}.{kind.__qualname__}"


def _code_of(value: Any) -> str | None:
    """What ``value``'s type transforms with: the SDK's code (:func:`_sdk_code`) for its own
    types, else its package's version (scikit-learn's, for a Pipeline)."""
    top = type(value).__module__.split(".")[0]
    if top == "dmt_privacy":
        return _sdk_code()
    return str(getattr(sys.modules.get(top), "__version__", None))


@functools.lru_cache(maxsize=1)
def _sdk_code() -> str:
    """A digest of the SDK's version and of the code its modifiers and local-DP mechanisms
    draw with (``dmt_privacy/modify``, ``dmt_privacy/dp``): a fix there (helper-125: the
    version string stays 0.1.0 from commit to commit) draws afresh."""
    import dmt_privacy

    digest = hashlib.sha256(str(dmt_privacy.__version__).encode())
    root = Path(__file__).resolve().parent
    for path in sorted([*root.joinpath("modify").glob("*.py"), *root.joinpath("dp").glob("*.py")]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _reusable(modifier: Any) -> bool:
    """Whether a record's draw by ``modifier`` may be sent again: the SDK's own modifiers
    (:mod:`dmt_privacy.modify`, whose code the key digests) and scikit-learn pipelines of
    them, unseeded. An app's own modifier is not: its code can change under the same name,
    and a re-share would send what the old code made (helper-125: an app's next version,
    which also redacted e-mail addresses, re-sent the first version's output, an address in
    it)."""
    from sklearn.pipeline import Pipeline

    if isinstance(modifier, Pipeline):
        return all(step is None or step == "passthrough" or _reusable(step)
                   for _, step in modifier.steps) and not _seeded_params(modifier)
    return (type(modifier).__module__.startswith("dmt_privacy.modify.")
            and not _seeded_params(modifier))


def _seeded_params(transformer: Any) -> list[str]:
    """The fixed ``random_state`` parameters of ``transformer`` and its steps, as
    ``name=value``: a seeded one draws the same noise in every package."""
    params = transformer.get_params(deep=True) if hasattr(transformer, "get_params") else {}
    return [f"{key}={value!r}" for key, value in params.items()
            if key.endswith("random_state") and value is not None]


def _transform_key(kind: str, spec: Any) -> str | None:
    """The key a record's draw under one transformation is kept and found under
    (:meth:`LocalStore.draws`): a digest of its name with every parameter and of the SDK's
    code. None when a parameter has no stable name: the record then draws afresh (so does
    one whose modifier is not the SDK's or is seeded, :func:`_reusable`)."""
    try:
        text = json.dumps([kind, _sdk_code(), _describe(spec)], sort_keys=True)
    except (_Unnamed, RecursionError, TypeError, ValueError):
        return None
    return hashlib.sha256(text.encode()).hexdigest()


def _drawn_once(store: LocalStore, column: pd.Series, key: str | None,
                draw: Callable[[pd.Series], Any], draws: dict[tuple[str, str], dict[str, Any]]
                ) -> tuple[Any, set[str]]:
    """``column`` transformed by ``draw``, each record released before under ``key`` given its
    earlier value instead; the fresh values are added to ``draws``. Returns the column and the
    ids of the records given an earlier value."""
    name = str(column.name)
    earlier = {} if key is None else store.draws(name, key, column.index)
    fresh = [rid for rid in column.index if rid not in earlier]
    drawn = draw(column.loc[fresh]) if fresh else pd.Series([], dtype=object)
    if key is not None:
        draws[(name, key)] = dict(zip(map(str, fresh), list(drawn), strict=True))
    if not earlier:
        return drawn, set()
    values = {**earlier, **dict(zip(fresh, list(drawn), strict=True))}
    return pd.Series([values[rid] for rid in column.index], index=column.index,
                     name=column.name), set(earlier)


def _fresh_cost(frame: pd.DataFrame, groups: Mapping[tuple[str, ...], list[str]],
                policy: SharingPolicy) -> tuple[float, float]:
    """The (ε, δ) of drawing ``groups`` afresh (fields → the records that draw them), as one
    release. ``"user"``: each record's fields drawn afresh, summed. ``"record"``: records
    alike in every noisy field of the package are one record released that many times, as a
    package drawn whole counts them (:func:`~dmt_privacy.dp.release_epsilon`); the cost is
    the most any such record pays. Counted over a group's fields alone, four records alike in
    x but not in y cost a re-share of x 4 ε where the package drawn whole claims 2
    (helper-125)."""
    eps: dict[Any, float] = {}
    dlt: dict[Any, float] = {}
    alike = pd.util.hash_pandas_object(frame[list(policy.epsilon)].astype(object), index=False)
    for names, ids in groups.items():
        e = math.fsum(float(policy.epsilon[n]) for n in names)
        d = math.fsum(float(policy.delta.get(n, 0.0)) for n in names)
        for rid in ids:
            key = rid if policy.privacy_unit == "user" else int(alike.loc[rid])
            eps[key] = eps.get(key, 0.0) + e
            dlt[key] = dlt.get(key, 0.0) + d
    if policy.privacy_unit == "user":
        return math.fsum(eps.values()), math.fsum(dlt.values())
    return max(eps.values(), default=0.0), max(dlt.values(), default=0.0)


def share(
    store: LocalStore,
    policy: SharingPolicy,
    public_key: ServerPublicKey,
    *,
    random_state: Any = None,
    token: Any = None,
) -> ShareResult:
    """Select, transform and seal records by ``policy``; put the package in the outbox.

    Returns the sealed bytes to send to the server, the privacy receipt and
    the outbox entry. Marks nothing as shared: call
    ``store.acknowledge(result.package_id)`` when the server acknowledges.
    The ledger is charged (by the DP perturber) only when ``policy.epsilon``
    is not empty; a refused release (budget, bad input) leaves the outbox
    unchanged. Records shared again after their package was abandoned send what they
    released then, under the same transformation, and are not charged for it again
    (``ShareResult.released_before``; the module's docstring).

    ``random_state``: ``None`` (default) draws the selection and the noise from
    the OS CSPRNG. An int makes both reproducible: NOT SECURE, tests only.
    ``token``: a :class:`~dmt_privacy.privacy_pass.Token` from the device's
    wallet, for a server whose policy limits packages per device; sealed
    inside the package. Shares of one store take turns (another process's, or another
    store object's on the same file, waits up to the store's ``timeout``): the check that
    a class was not sent already (``held_back``) reads the outbox before the package is
    written to it, and two shares at once each sent a record of one class.
    """
    if not isinstance(store, LocalStore):
        raise ValidationError(f"store must be a LocalStore, got {type(store).__name__}.")
    with store.sharing_turn():
        return _share(store, policy, public_key, random_state=random_state, token=token)


def _share(store: LocalStore, policy: SharingPolicy, public_key: ServerPublicKey, *,
           random_state: Any, token: Any) -> ShareResult:
    """:func:`share`, in the store's sharing turn."""
    if not isinstance(public_key, ServerPublicKey):
        raise ValidationError(
            f"public_key must be the server's ServerPublicKey, got {type(public_key).__name__}."
        )
    schema = store.schema
    policy.check(schema)
    _check_explicit_ids(store, policy)
    token = token_bytes(token)  # before the ledger is charged: a wrong one costs no ε
    token_key = None
    if token is not None and policy.requires_token:
        # the server counts k, l and t over one period's tokens (its issuer key) only when
        # its policy requires tokens; otherwise each package is a contributor (helper-93)
        from dmt_privacy.privacy_pass import Token

        token_key = Token.from_bytes(token).token_key_id.hex()
    if token is not None and (held := store.token_package(token)) is not None:
        raise ValidationError(
            f"This token is already sealed in package {held}: one token, one package (two "
            "would be linked to one device, and the server refuses the second). Take another "
            "from the wallet; nothing was shared or charged.")
    if policy.requires_token and token is None:
        raise ValidationError(
            "The server's policy counts only packages that carry a token (tokens_per_period), "
            "and none was given; nothing was shared or charged. Take one from the device's "
            "wallet (fetch_tokens) and pass it as token=.")
    selected = _select(store.records("eligible"), policy, random_state)
    if selected.empty:
        raise ValidationError(
            f"No eligible record matches the policy (eligible: shareable, unshared, not in a "
            f"pending package; this store has {store.count('eligible')} eligible, "
            f"{store.count('pending')} pending, {store.count('shared')} shared); nothing was "
            f"shared. Add new records, or check store.count('eligible') before sharing."
        )
    frame = selected[list(policy.fields)].copy()
    modifications = []
    # what each record releases, kept with the package: shared again, it releases the same
    draws: dict[tuple[str, str], dict[str, Any]] = {}
    released_before: set[str] = set()
    for name, modifier in policy.modifiers.items():
        _warn_if_seeded(name, modifier)
        before = frame[name]
        key = _transform_key("modify", modifier) if _reusable(modifier) else None
        frame[name], earlier = _drawn_once(store, before, key, modifier.transform, draws)
        released_before |= earlier
        modifications.append(_modification(name, modifier, before, frame[name]))
    suppressed: tuple[str, ...] = ()
    held_back: tuple[str, ...] = ()
    if policy.plan is not None:
        anonymized = policy.plan.apply(frame)
        suppressed = tuple(str(i) for i in anonymized.suppressed)
        sent = _classes_sent(store, policy.plan, token_key)
        again = np.isin(anonymized.class_ids, list(sent)) & (anonymized.class_ids >= 0)
        held_back = tuple(str(i) for i in frame.index[again])
        frame = anonymized.data.drop(index=[*anonymized.suppressed, *frame.index[again]])
        if frame.empty and held_back:
            packages = sorted({sent[c] for c in anonymized.class_ids[again]})
            raise AnonymizationError(
                f"Every selected record the plan does not suppress falls in a class this "
                f"device already sent (package {', '.join(packages[:3])}): the server counts "
                "each package as another person, so a second package in a class would let "
                "this device alone fill its k. Nothing was shared or charged; the records "
                "stay eligible, held back while a class of theirs has been sent.")
        if frame.empty:
            raise AnonymizationError(
                f"The plan suppressed all {len(suppressed)} selected records (their values lie "
                "outside every class it was fitted on); nothing was shared."
            )
    frame, out_of_bounds = _within_bounds(policy, schema, frame)
    if policy.max_records is not None and len(frame) > policy.max_records:
        raise ValidationError(
            f"{len(frame)} records would go into one package, above max_records="
            f"{policy.max_records} (the server refuses a larger package); nothing was shared "
            "or charged. Select fewer (fraction=, record_ids=) and share the rest in another "
            "package.")
    dp_fields = list(policy.epsilon)
    perturber, planned = None, None
    earlier_dp: dict[str, dict[str, Any]] = {}  # field → record → its noisy value sent before
    dp_keys: dict[str, str | None] = {}
    groups: dict[tuple[str, ...], list[str]] = {}  # the fields each record draws afresh
    if dp_fields:
        # Imported here: the perturber is a scikit-learn transformer, and scikit-learn takes
        # seconds to import; a device that shares without local DP never needs it.
        from dmt_privacy.dp.ledger import UNACCOUNTED
        from dmt_privacy.dp.perturber import LocalDPPerturber

        def perturber_of(names: list[str], ledger: Any) -> LocalDPPerturber:
            return LocalDPPerturber(
                schema, epsilon={n: policy.epsilon[n] for n in names},
                delta={n: policy.delta[n] for n in names if n in policy.delta} or None,
                mechanism={n: policy.mechanism[n] for n in names if n in policy.mechanism}
                or None, ledger=ledger, privacy_unit=str(policy.privacy_unit),
                random_state=random_state).fit()

        perturber = perturber_of(dp_fields, store.ledger)
        for name in dp_fields:
            # a seeded source's noise can be drawn again by whoever knows the seed: never
            # sent again as if drawn from the secure one (helper-123)
            dp_keys[name] = None if not perturber.source_.secure else _transform_key(
                "local-dp", [perturber.mechanisms_[name].field_receipt().to_dict(),
                             str(policy.privacy_unit)])
            key = dp_keys[name]
            earlier_dp[name] = {} if key is None else store.draws(name, key, frame.index)
        for rid in frame.index:
            names = tuple(n for n in dp_fields if rid not in earlier_dp[n])
            if names:
                groups.setdefault(names, []).append(rid)
        cost, cost_delta = _fresh_cost(frame, groups, policy)
        if policy.max_epsilon is not None and cost > policy.max_epsilon * (1 + 1e-12):
            raise ValidationError(
                f"This share would charge ε={cost:g} (privacy_unit={policy.privacy_unit!r}, "
                f"{len(frame)} records), above max_epsilon={policy.max_epsilon:g}; share "
                "fewer records or lower ε."
            )
        planned = perturber.receipt_for(frame[dp_fields])  # what the package claims
    # before the charge: the package can be made, and with max_bytes is not too large
    _refuse_unpackable(policy, schema, frame, modifications, token,
                       None if planned is None else _device_free(planned))
    dp_receipt: ReleaseReceipt | None = None
    if perturber is not None and planned is not None:
        reused = {rid for rid in frame.index if any(rid in earlier_dp[n] for n in dp_fields)}
        if not reused:  # every value drawn afresh, in one release: as before 7 December
            release = perturber.perturb(frame[dp_fields])  # charges the ledger, then draws
            for name in dp_fields:
                frame[name] = release.data[name]
            dp_receipt = _device_free(release.receipt)
            fresh = {name: dict(zip(frame.index, frame[name].tolist(), strict=True))
                     for name in dp_fields}
        else:  # the values drawn afresh, charged as one release, each set of fields drawn
            charge = dataclasses.replace(    # by a perturber of its own that charges nothing
                planned, release_id=uuid.uuid4().hex, epsilon=cost, delta=cost_delta,
                n_records=sum(len(ids) for ids in groups.values()))
            fresh = {name: {} for name in dp_fields}
            with store.ledger.release(charge):  # atomic: one charge, or none
                for names, ids in groups.items():
                    drawn = perturber_of(list(names), UNACCOUNTED).perturb(  # charged above
                        frame.loc[ids, list(names)])
                    for name in names:
                        fresh[name].update(zip(ids, drawn.data[name].tolist(), strict=True))
            for name in dp_fields:
                frame[name] = pd.Series([fresh[name].get(rid, earlier_dp[name].get(rid))
                                         for rid in frame.index], index=frame.index)
            dp_receipt = _device_free(dataclasses.replace(planned, release_id=charge.release_id))
            released_before |= reused
        for name in dp_fields:
            if (key := dp_keys[name]) is not None:
                draws[(name, key)] = {str(rid): value for rid, value in fresh[name].items()}
    receipt = _package_receipt(policy, modifications, dp_receipt)
    columns = {name: frame[name].tolist() for name in policy.fields}
    package = SharePackage.create(schema.schema_id, columns, receipt.carried())
    envelope = seal_package(package, public_key, token=token)
    entry = store.add_to_outbox(
        package.package_id, envelope, [str(i) for i in frame.index],
        json.dumps(receipt.to_dict(), sort_keys=True, separators=(",", ":"), default=str),
        token=token, token_key=token_key, draws=draws,
    )
    return ShareResult(envelope=envelope, receipt=receipt, entry=entry, suppressed=suppressed,
                       out_of_bounds=out_of_bounds, held_back=held_back,
                       released_before=tuple(r for r in map(str, frame.index)
                                             if r in released_before))
