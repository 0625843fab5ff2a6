"""Validation of an opened share package against the server's policy: exact and strictly typed.

:func:`validate_package` believes nothing the package says. It checks, in order:

1. the schema id, the record count (at least 1, at most the policy's
   ``max_records``) and the columns (fields the policy accepts, never an
   identifier, one cell per record);
2. the privacy receipt: no ``user_id``; the set of perturbed fields is exactly
   the policy's ε fields the package carries; every field receipt equals the
   one the policy implies (mechanism, ε, δ, bounds, grid, sensitivity, noise
   scale, window, categories, probabilities), numbers compared as numbers and
   never as bools or strings; the noise from a secure source; with a plan, k,
   l and t are the plan's, without one k is at least ``min_k``;
3. every cell, by type first (``type(v)``, never a conversion: ``"6_5"``,
   ``b"65"`` and ``True`` are not numbers): numbers finite and inside the
   schema's bounds, perturbed numbers on the grid and inside the policy's
   output window, categories in the vocabulary, quasi-identifiers exactly one
   of the plan's classes (or, without a plan, well-formed generalizations
   inside the domains), text as strings, images and audio as finite arrays of
   the accepted dtypes and shapes.

A refusal raises :class:`PackageRefused`, an
:class:`~dmt_privacy.errors.InvalidPackage` (so it says nothing to whoever
sent the package) whose ``reason`` is for the server's log: the kind of
failure and the field, never a value from the package. Any unexpected error
while validating is a refusal too (reason ``internal``): crafted input never
escapes as a crash.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from typing import Any

import numpy as np
import pandas as pd

from dmt_privacy.dp.receipt import RECEIPT_FORMAT, FieldReceipt
from dmt_privacy.errors import InvalidPackage
from dmt_privacy.package import MAX_MODIFICATIONS, MAX_RECEIPT_LABEL, SharePackage
from dmt_privacy.schema import Kind, Role, Schema

__all__ = ["PackageRefused", "ValidatedPackage", "cell_key", "validate_package"]

#: Relative tolerance of "on the grid" (perturbed values are k × grid as binary64).
_GRID_TOL = 1e-6
#: Columns of at most this many numbers are checked without numpy (:func:`_checked_numbers`).
_SHORT = 16
_NUMBER_TYPES = frozenset({float, int})


class PackageRefused(InvalidPackage):
    """The server's policy refuses the package. Says nothing; ``reason`` is for the server log.

    ``reason`` is ``"<kind>: <what>"`` naming fields and checks, never values.
    """

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason

    @property
    def kind(self) -> str:
        return self.reason.split(":", 1)[0]


@dataclass(frozen=True)
class ValidatedPackage:
    """A package that matches the policy, with the quasi-identifiers it carries generalized."""

    package: SharePackage
    columns: Mapping[str, list[Any]]
    quasi_identifiers: tuple[str, ...]
    dp_fields: tuple[str, ...]


def _is_number(v: Any) -> bool:
    t = type(v)
    return t is float or t is int


def _scalar_key(value: Any) -> tuple[str, Any] | None:
    """:func:`cell_key` of a number, string or bool; ``None`` for anything else."""
    t = type(value)
    if t is float or t is int:
        return ("n", float(value))
    if t is str:
        return ("s", value)
    if t is bool:
        return ("b", value)
    return None


def cell_key(value: Any) -> Any:
    """A hashable, strictly typed key of one cell: equal keys mean the same released value.

    Numbers (int or float, never bool) compare by value; intervals by closedness
    and float endpoints; value sets by their members' keys; strings as strings.
    Anything else (bytes, arrays, nested sets...) raises ``TypeError``.
    """
    key = _scalar_key(value)
    if key is not None:
        return key
    t = type(value)
    if t is pd.Interval:
        lo, hi = value.left, value.right
        if not (_is_number(lo) or isinstance(lo, np.floating)) or not (
                _is_number(hi) or isinstance(hi, np.floating)):
            raise TypeError("interval endpoints")
        return ("i", value.closed, float(lo), float(hi))
    if t is frozenset:
        members = set()
        for m in value:
            if (key := _scalar_key(m)) is None:
                raise TypeError("value set member")
            members.add(key)
        return ("set", frozenset(members))
    if isinstance(value, np.generic):
        return cell_key(value.item())
    raise TypeError(type(value).__name__)


class _SchemaView:
    """What validation reads of a schema, computed once per schema object (hot path)."""

    def __init__(self, schema: Schema) -> None:
        self.schema = schema  # held: the cache's key (its id) stays this object's
        self.schema_id = schema.schema_id
        self.fields = {f.name: f for f in schema.fields}
        self.nodes: dict[str, frozenset[str]] = {}
        for f in schema.fields:
            nodes = {str(c) for c in f.categories or ()}
            for ancestors in (f.hierarchy or {}).values():
                nodes.update(ancestors)
            self.nodes[f.name] = frozenset(nodes)


_VIEWS: dict[int, _SchemaView] = {}


def _view(schema: Schema) -> _SchemaView:
    view = _VIEWS.get(id(schema))
    if view is None or view.schema is not schema:
        if len(_VIEWS) > 64:  # schemas of policies long gone
            _VIEWS.clear()
        view = _VIEWS[id(schema)] = _SchemaView(schema)
    return view


@functools.lru_cache(maxsize=256)
def _allowed(categories: tuple[Any, ...]) -> frozenset[Any]:
    """The cell keys of a vocabulary (the schema's categories are tuples)."""
    allowed = set()
    for c in categories:
        try:
            allowed.add(cell_key(c))
        except TypeError:
            continue
    return frozenset(allowed)


def _refuse(kind: str, what: str) -> PackageRefused:
    return PackageRefused(f"{kind}: {what}")


def _same(expected: Any, actual: Any) -> bool:
    """Strict equality: numbers as numbers (never bools or strings), tuples item by item."""
    if isinstance(expected, tuple):
        return (type(actual) is tuple and len(actual) == len(expected)
                and all(_same(e, a) for e, a in zip(expected, actual, strict=True)))
    if expected is None:
        return actual is None
    if type(expected) is bool:
        return type(actual) is bool and actual == expected
    if _is_number(expected):
        if not _is_number(actual) or not math.isfinite(actual):
            return False
        return bool(actual == expected or math.isclose(actual, expected, rel_tol=1e-12))
    return type(actual) is type(expected) and bool(actual == expected)


# --- receipts -----------------------------------------------------------------------------
def _check_field_receipt(name: str, actual: FieldReceipt, expected: FieldReceipt) -> None:
    if type(actual) is not FieldReceipt:
        raise _refuse("receipt", f"field {name!r} has no field receipt")
    for f in dataclass_fields(FieldReceipt):
        if f.name == "rounding":  # the device's choice for numeric fields; noise is the same
            allowed = (None,) if expected.rounding is None else ("stochastic", "nearest")
            if actual.rounding not in allowed or (
                    actual.rounding is not None and type(actual.rounding) is not str):
                raise _refuse("receipt", f"field {name!r} states an unknown rounding")
            continue
        if not _same(getattr(expected, f.name), getattr(actual, f.name)):
            kind = {"epsilon": "epsilon", "mechanism": "mechanism", "scale_units": "noise",
                    "window_units": "noise", "delta": "epsilon"}.get(f.name, "receipt")
            raise _refuse(kind, f"field {name!r}: receipt {f.name} is not the policy's")


def _check_receipt(package: SharePackage, policy: Any, columns: Mapping[str, list[Any]],
                   qis: Sequence[str]) -> tuple[str, ...]:
    receipt = package.receipt
    dp = receipt.dp
    expected = tuple(f for f in policy.epsilon if f in columns)
    if dp is None:
        if expected:
            raise _refuse("epsilon", f"fields {list(expected)!r} arrived without local DP")
    else:
        if dp.user_id is not None:
            raise _refuse("receipt", "the DP receipt names a user")
        if not _same(RECEIPT_FORMAT, dp.format):
            raise _refuse("receipt", "unknown DP receipt format")
        if not _same(package.n_records, dp.n_records):
            raise _refuse("receipt", "the DP receipt counts other records than the package")
        if dp.secure_random is not True and not (
                policy.allow_insecure_random and dp.secure_random is False):
            raise _refuse("receipt", "DP noise from an insecure (seeded) random source")
        for attr in ("release_id", "random_source", "created"):
            value = getattr(dp, attr)
            if type(value) is not str or len(value) > MAX_RECEIPT_LABEL:
                raise _refuse("receipt", f"the DP receipt's {attr} is malformed")
        if policy.privacy_unit is not None and dp.privacy_unit != policy.privacy_unit:
            raise _refuse("receipt", "the DP receipt's privacy unit is not the policy's")
        if dp.privacy_unit not in ("record", "user"):
            raise _refuse("receipt", "the DP receipt's privacy unit is unknown")
        claimed = [f.field if type(f) is FieldReceipt else None for f in dp.fields]
        if len(set(claimed)) != len(claimed) or set(claimed) != set(expected):
            raise _refuse("epsilon", "the perturbed fields are not the policy's")
        for f in dp.fields:
            _check_field_receipt(f.field, f, policy.field_receipt(f.field))
        total = math.fsum(policy.field_receipt(f).epsilon for f in expected)
        if not (_is_number(dp.epsilon) and math.isfinite(dp.epsilon)
                and dp.epsilon >= total * (1 - 1e-9)):
            raise _refuse("epsilon", "the DP receipt's total ε is below its fields' sum")
        if not (_is_number(dp.delta) and math.isfinite(dp.delta) and 0 <= dp.delta < 1):
            raise _refuse("epsilon", "the DP receipt's total δ is malformed")
    mods = receipt.modifications
    if type(mods) is not tuple or len(mods) > MAX_MODIFICATIONS or not all(
            type(m) is str and 0 < len(m) <= MAX_RECEIPT_LABEL for m in mods):
        raise _refuse("receipt", "malformed modifications")
    plan = policy.plan
    if qis:
        if plan is not None:
            for attr in ("k", "l", "t"):
                mine = getattr(plan, attr)
                mine = None if mine is None else (int(mine) if attr == "k" else float(mine))
                if not _same(mine, getattr(receipt, attr)):
                    raise _refuse("k", f"the receipt's {attr} is not the plan's")
        elif not (type(receipt.k) is int and receipt.k >= policy.min_k):
            raise _refuse("k", f"the receipt's k is below the required {policy.min_k}")
        elif receipt.l is not None or receipt.t is not None:
            # without a plan the release judges k alone: a promised l or t would not be kept
            raise _refuse("k", "the receipt states l or t, which a policy without a plan "
                          "cannot keep (no sensitive field or reference to judge them on)")
    elif (receipt.k, receipt.l, receipt.t) != (None, None, None):
        raise _refuse("k", "k, l or t stated for a package without quasi-identifiers")
    return expected


# --- cells --------------------------------------------------------------------------------
def _numbers(name: str, values: Sequence[Any]) -> np.ndarray:
    if not set(map(type, values)) <= {float, int}:
        raise _refuse("type", f"field {name!r} holds cells that are not numbers")
    try:
        x = np.asarray(values, dtype=np.float64)
    except OverflowError:
        raise _refuse("bounds", f"field {name!r} holds an integer beyond binary64") from None
    if not np.isfinite(x).all():
        raise _refuse("bounds", f"field {name!r} holds non-finite numbers")
    return x


def _checked_numbers(name: str, values: Sequence[Any]) -> np.ndarray | list[float]:
    """:func:`_numbers`' checks and refusals; a short column as a list of floats.

    A few cells cost numpy more in calls than in arithmetic (a 3-record package's
    columns and every interval's two endpoints): they are checked one by one, in
    the same order (types first, then binary64, then finiteness) with the same
    results (``float`` of an int is numpy's conversion, correctly rounded).
    """
    if len(values) > _SHORT:
        return _numbers(name, values)
    if not set(map(type, values)) <= _NUMBER_TYPES:
        raise _refuse("type", f"field {name!r} holds cells that are not numbers")
    try:
        x = [float(v) for v in values]
    except OverflowError:
        raise _refuse("bounds", f"field {name!r} holds an integer beyond binary64") from None
    if not all(map(math.isfinite, x)):
        raise _refuse("bounds", f"field {name!r} holds non-finite numbers")
    return x


def _within(name: str, x: np.ndarray | list[float], low: float, high: float) -> None:
    tol_lo = 1e-9 * max(1.0, abs(low))
    tol_hi = 1e-9 * max(1.0, abs(high))
    lo, hi = low - tol_lo, high + tol_hi
    if isinstance(x, list):
        outside = any(v < lo or v > hi for v in x)
    else:
        outside = bool(((x < lo) | (x > hi)).any())
    if outside:
        raise _refuse("bounds", f"field {name!r} holds values outside its bounds")


def _check_perturbed_number(name: str, values: Sequence[Any], fr: FieldReceipt) -> None:
    x = _numbers(name, values)
    assert fr.grid is not None and fr.window_units is not None
    units = x / fr.grid
    nearest = np.rint(units)
    if (np.abs(units - nearest) > _GRID_TOL * np.maximum(1.0, np.abs(nearest))).any():
        raise _refuse("grid", f"field {name!r} holds values off the policy's grid")
    lo, hi = fr.window_units
    if ((nearest < lo) | (nearest > hi)).any():
        raise _refuse("window", f"field {name!r} holds values outside the policy's window")


def _check_categories(name: str, values: Sequence[Any], categories: Any) -> None:
    if categories is None:
        if not all(type(v) is str or type(v) is int for v in values):
            raise _refuse("type", f"field {name!r} holds cells that are not categories")
        return
    try:
        allowed = _allowed(categories)
    except TypeError:  # not a tuple of hashables: no cache
        allowed = _allowed.__wrapped__(tuple(categories))
    for v in values:
        if type(v) not in (str, int, float, bool) or cell_key(v) not in allowed:
            raise _refuse("category", f"field {name!r} holds a value outside its categories")


def _check_generalized(name: str, values: Sequence[Any], view: _SchemaView) -> None:
    """Without a plan: intervals inside the domain, value sets of categories, hierarchy nodes."""
    spec = view.fields[name]
    # Cells of one class are one object each (the decoder caches ext payloads): an object
    # checked once is skipped by identity before it is keyed (the list holds every object,
    # so no id is reused while this runs).
    checked: set[int] = set()
    seen: set[Any] = set()
    for v in values:
        if id(v) in checked:
            continue
        checked.add(id(v))
        t = type(v)
        if t not in (pd.Interval, frozenset, str):
            raise _refuse("generalization", f"quasi-identifier {name!r} holds cells that are "
                          "not intervals, value sets or hierarchy nodes")
        key = cell_key(v)
        if key in seen:
            continue
        seen.add(key)
        if t is pd.Interval:
            if spec.kind is Kind.NUMERIC:
                low, high = spec.bounds if spec.bounds is not None else (-math.inf, math.inf)
            elif spec.kind is Kind.CATEGORICAL and spec.categories and all(
                    _is_number(c) for c in spec.categories):
                codes = [float(c) for c in spec.categories]
                low, high = min(codes), max(codes)
            else:
                raise _refuse("generalization", f"quasi-identifier {name!r} holds an interval "
                              "but is neither numeric nor ordered categorical")
            _within(name, _checked_numbers(name, [v.left, v.right]), low, high)
        elif t is frozenset:
            if spec.kind is not Kind.CATEGORICAL or not v:
                raise _refuse("generalization", f"quasi-identifier {name!r} holds a value set "
                              "but is not categorical")
            _check_categories(name, list(v), spec.categories)
        else:
            if spec.kind is not Kind.CATEGORICAL or v not in view.nodes[name]:
                raise _refuse("generalization", f"quasi-identifier {name!r} holds a label that "
                              "is not a category or hierarchy node")


def _check_plan_classes(qis: Sequence[str], columns: Mapping[str, list[Any]],
                        policy: Any) -> None:
    plan = policy.plan
    missing = [q for q in plan.quasi_identifiers if q not in qis]
    if missing:
        raise _refuse("generalization", f"quasi-identifiers {missing!r} of the plan are missing")
    generalized = {pd.Interval, frozenset, str}
    for q in plan.quasi_identifiers:
        if not set(map(type, columns[q])) <= generalized:
            raise _refuse("generalization", f"quasi-identifier {q!r} holds cells that are not "
                          "generalizations")
    classes = policy.plan_classes()
    # Cells of one class are one object each (the decoder caches ext payloads), so rows are
    # compared by identity first and each distinct cell is keyed once.
    keys: dict[int, Any] = {}
    seen: set[tuple[int, ...]] = set()
    for row in zip(*(columns[q] for q in plan.quasi_identifiers), strict=True):
        ids = tuple(map(id, row))
        if ids in seen:
            continue
        seen.add(ids)
        key = []
        for v in row:
            k = keys.get(id(v))
            if k is None:
                k = keys[id(v)] = cell_key(v)
            key.append(k)
        if tuple(key) not in classes:
            raise _refuse("generalization", "quasi-identifiers that are not one of the plan's "
                          "classes")


def _check_media(name: str, values: Sequence[Any], kind: Kind,
                 shape: tuple[int, ...] | None = None,
                 bounds: tuple[float, float] | None = None) -> None:
    """Each cell an array of the kind's dtype and dimensions, of the schema's ``shape`` (an
    image; one channel may be implicit) and inside ``bounds`` (the field's range of values:
    retraining standardizes pixels as they come, so one package of pixels at ±1e6 took a
    digits model's accuracy from 0.96 to 0.63, helper-90)."""
    for v in values:
        if type(v) is not np.ndarray:
            raise _refuse("bad values",
                          f"{kind.value} field {name!r} holds cells that are not arrays")
        if kind is Kind.IMAGE:
            ok = v.dtype.kind in "uf" and (v.ndim == 2 or (v.ndim == 3 and v.shape[2] in (1, 3, 4)))
            if ok and shape is not None:
                ok = v.shape == shape or (len(shape) == 3 and shape[2] == 1
                                          and v.shape == shape[:2])
        else:
            ok = v.dtype.kind in "if" and v.ndim in (1, 2)
        if not ok or v.size == 0:
            raise _refuse("bad values", f"{kind.value} field {name!r} holds an array of the wrong "
                          "dtype or shape")
        if v.dtype.kind == "f" and not np.isfinite(v).all():
            raise _refuse("bad values", f"{kind.value} field {name!r} holds non-finite samples")
        if bounds is not None:
            _within(name, np.asarray([v.min(), v.max()], dtype=np.float64), *bounds)


def _check_cells(name: str, values: Sequence[Any], view: _SchemaView, qis: Sequence[str],
                 policy: Any, dp_fields: Sequence[str]) -> None:
    spec = view.fields[name]
    if name in qis:
        if policy.plan is None:
            _check_generalized(name, values, view)
        elif name not in policy.plan.quasi_identifiers:
            raise _refuse("generalization", f"quasi-identifier {name!r} is neither generalized "
                          "by the plan nor perturbed")
        return  # with a plan, checked class by class
    if name in dp_fields:
        fr = policy.field_receipt(name)
        if spec.kind is Kind.NUMERIC:
            _check_perturbed_number(name, values, fr)
        else:
            _check_categories(name, values, spec.categories)
        return
    if spec.kind is Kind.NUMERIC:
        x = _checked_numbers(name, values)
        if spec.bounds is not None:
            _within(name, x, *spec.bounds)
    elif spec.kind is Kind.CATEGORICAL:
        _check_categories(name, values, spec.categories)
    elif spec.kind is Kind.TEXT:
        if not all(type(v) is str for v in values):
            raise _refuse("type", f"text field {name!r} holds cells that are not strings")
    elif spec.kind in (Kind.IMAGE, Kind.AUDIO):
        _check_media(name, values, spec.kind, spec.shape, spec.bounds)
    else:  # pragma: no cover - a schema kind this version does not know
        raise _refuse("schema", f"field {name!r} has a kind the server cannot check")


def _validate(package: SharePackage, policy: Any) -> ValidatedPackage:
    view = _view(policy.schema)
    if type(package.schema_id) is not str or package.schema_id != view.schema_id:
        raise _refuse("schema", "the package's schema id is not the server's")
    n = package.n_records
    if n < 1:
        raise _refuse("size", "the package holds no records")
    if n > policy.max_records:
        raise _refuse("size", "the package holds more records than the policy allows")
    columns = package.columns
    accepted = set(policy.fields or ())
    for name, values in columns.items():
        if name not in view.fields:
            raise _refuse("schema", "the package holds a field the schema does not know")
        if view.fields[name].role is Role.IDENTIFIER:
            raise _refuse("identifier", f"field {name!r} is an identifier and is never accepted")
        if name not in accepted:
            raise _refuse("schema", f"field {name!r} is not one the policy accepts")
        if type(values) is not list or len(values) != n:
            raise _refuse("size", f"field {name!r} does not hold one cell per record")
    plan = policy.plan
    if plan is not None and (plan.l is not None or plan.t is not None) \
            and plan.sensitive not in columns:
        # the release judges every class's l and t on it: a block without it could never
        # leave quarantine, and would keep every cohort of its class there with it
        raise _refuse("schema", f"the package lacks the sensitive field {plan.sensitive!r}, on "
                      "which the plan's l-diversity / t-closeness is judged; share it with "
                      "the records")
    qis = policy.class_quasi_identifiers(columns)
    dp_fields = _check_receipt(package, policy, columns, qis)
    for name, values in columns.items():
        _check_cells(name, values, view, qis, policy, dp_fields)
    if qis and policy.plan is not None:
        _check_plan_classes(qis, columns, policy)
    return ValidatedPackage(package, columns, qis, dp_fields)


def validate_package(package: SharePackage, policy: Any) -> ValidatedPackage:
    """Check ``package`` against ``policy`` (a :class:`~dmt_model.server.ServerPolicy`).

    Returns the :class:`ValidatedPackage`; raises :class:`PackageRefused` for
    anything the policy does not allow, including input that makes a check
    itself fail.
    """
    if type(package) is not SharePackage:
        raise _refuse("internal", "not a SharePackage")
    try:
        return _validate(package, policy)
    except PackageRefused:
        raise
    except Exception as exc:  # crafted input must never escape as a crash
        raise _refuse("internal", f"validation failed ({type(exc).__name__})") from None
