"""Assertions for users' own tests: k-anonymity, l-diversity and t-closeness of a table.

These are deliberately plain: classes are formed by grouping rows on their
released quasi-identifier values with a Python dict, so they serve as the
slow, obvious reference the fast anonymizer is tested against. They do not
depend on the index (shuffled or duplicated labels are fine) and they treat a
missing value as a value of its own, never dropping the row. A class is what a
reader of the released table tells apart: ``True``, ``1`` and ``1.0`` in one column are
equal in Python but read differently, so they are three classes. On failure they
raise ``AssertionError`` naming the offending class, its size and some of
its row labels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from dmt_privacy.anonymity.constraints import emd_hierarchical, emd_ordered
from dmt_privacy.anonymity.hierarchy import Hierarchy
from dmt_privacy.errors import ValidationError

__all__ = ["assert_k_anonymous", "assert_l_diverse", "assert_release_rule", "assert_t_close"]


class _Missing:
    """One key for every kind of missing value (None, NaN, NaT, pd.NA)."""

    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()


def _is_na(value: Any) -> bool:
    """pandas.isna of a scalar (any NaN, NaT, None, pd.NA, Decimal's NaN); False otherwise.
    Checked here, not with the library's function: these helpers are its reference."""
    try:
        return np.ndim(value) == 0 and bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _key(value: Any) -> Any:
    if _is_na(value):  # numpy's float32 NaN, its NaT, Decimal's NaN were values (helper-115)
        return _MISSING
    if isinstance(value, pd.Interval) and (_is_na(value.left) or _is_na(value.right)):
        return _MISSING
    if isinstance(value, (list, set, np.ndarray)):
        return frozenset(np.asarray(list(value), dtype=object).tolist())
    return value


@dataclass(frozen=True)
class _Typed:
    """A cell Python calls equal to cells of other types that a released file does not:
    ``True == 1 == 1.0``, written ``True``, ``1`` and ``1.0``."""

    kind: str
    value: Any

    def __repr__(self) -> str:
        return repr(self.value)


def _class_key(value: Any) -> Any:
    """A released quasi-identifier as a reader tells it apart (helper-115: ``True``, ``1`` and
    ``1.0`` in an object column were one class, so a table of three classes of 2, 2 and 1
    records passed k = 5). A bool and an integral float are keyed by their kind; an int, as it
    is. Only ever splits a class: stricter, never laxer."""
    key = _key(value)
    if isinstance(key, frozenset):
        return frozenset(_class_key(v) for v in key)
    if isinstance(key, (bool, np.bool_)):
        return _Typed("bool", bool(key))
    if isinstance(key, (float, np.floating)) and float(key).is_integer():
        return _Typed("float", float(key))
    return key


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _check_parameter(name: str, value: Any, *, integer: bool, low: float,
                     high: float = math.inf) -> None:
    """Refuse a guarantee's parameter that is not a number in [low, high] (an int where
    ``integer``): k = NaN or t = NaN passed every table, since every comparison with NaN is
    false, and k = '5' crashed inside (helper-115). A ValueError: the test is wrong, not the
    table."""
    number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_))
    if not (number and (not integer or float(value).is_integer()) and math.isfinite(value)
            and low <= value <= high):
        kind = "an integer" if integer else "a number"
        bound = f"at least {low:g}" if high == math.inf else f"in [{low:g}, {high:g}]"
        raise ValidationError(f"{name} must be {kind} {bound}, got {value!r}.")


def _check_columns(frame: pd.DataFrame, columns: Sequence[str]) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise AssertionError(f"expected a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise AssertionError(
            f"column(s) {missing!r} are not in the table (columns: {list(frame.columns)!r})"
        )


def _classes(
    frame: pd.DataFrame, quasi_identifiers: Sequence[str], ignore_suppressed: bool
) -> dict[tuple[Any, ...], list[int]]:
    """Row positions of each class, keyed by the tuple of released values."""
    qis = list(quasi_identifiers)
    _check_columns(frame, qis)
    columns = [frame[q].astype(object).tolist() for q in qis]
    groups: dict[tuple[Any, ...], list[int]] = {}
    for pos in range(len(frame)):
        key = tuple(_class_key(col[pos]) for col in columns)
        if ignore_suppressed and all(v is _MISSING for v in key):
            continue
        groups.setdefault(key, []).append(pos)
    return groups


def _describe(frame: pd.DataFrame, qis: Sequence[str], key: tuple[Any, ...],
              rows: list[int]) -> str:
    cells = ", ".join(f"{q}={v!r}" for q, v in zip(qis, key, strict=False))
    labels = [_plain(frame.index[p]) for p in rows[:5]]
    more = " ..." if len(rows) > 5 else ""
    return f"class ({cells}) with {len(rows)} record(s), rows {labels!r}{more}"


def assert_k_anonymous(
    frame: pd.DataFrame,
    quasi_identifiers: Sequence[str],
    k: int,
    *,
    ignore_suppressed: bool = False,
) -> None:
    """Every combination of released quasi-identifier values occurs at least ``k`` times.

    ``ignore_suppressed``: skip rows whose quasi-identifiers are all missing
    (the suppressed rows of an anonymizer), which otherwise form a class.
    """
    _check_parameter("k", k, integer=True, low=1)
    groups = _classes(frame, quasi_identifiers, ignore_suppressed)
    small = [(key, rows) for key, rows in groups.items() if len(rows) < k]
    if small:
        key, rows = min(small, key=lambda item: len(item[1]))
        raise AssertionError(
            f"not {k}-anonymous: {len(small)} class(es) have fewer than {k} records; "
            f"smallest: {_describe(frame, list(quasi_identifiers), key, rows)}"
        )


def _counts(values: list[Any]) -> dict[Any, int]:
    out: dict[Any, int] = {}
    for v in values:
        if _key(v) is _MISSING:
            continue  # a missing sensitive value adds no diversity
        out[v] = out.get(v, 0) + 1
    return out


def assert_l_diverse(
    frame: pd.DataFrame,
    quasi_identifiers: Sequence[str],
    sensitive: str,
    l: int,  # noqa: E741
    *,
    kind: str = "distinct",
    c: float = 1.0,
    ignore_suppressed: bool = False,
) -> None:
    """Every class is l-diverse in ``sensitive``.

    ``kind``: ``"distinct"`` (at least ``l`` distinct values), ``"entropy"``
    (entropy at least ``log l``) or ``"recursive"`` (r1 < c (r_l + ... + r_m)).
    Missing sensitive values add no diversity. A class whose sensitive values are all
    missing tells nothing of them and passes, as in :func:`assert_t_close`: the anonymizer
    withholds the values of a suppressed class that does not meet k, l and t, and the
    README's recipe failed on such a release (helper-115).
    """
    _check_columns(frame, [sensitive])
    if kind not in ("distinct", "entropy", "recursive"):
        raise AssertionError(f"unknown l-diversity kind {kind!r}")
    _check_parameter("l", l, integer=kind != "entropy", low=1)
    if kind == "recursive":
        _check_parameter("c", c, integer=False, low=0)
    l = int(l) if kind != "entropy" else l  # noqa: E741
    groups = _classes(frame, quasi_identifiers, ignore_suppressed)
    values = frame[sensitive].astype(object).tolist()
    for key, rows in groups.items():
        counts = sorted(_counts([values[p] for p in rows]).values(), reverse=True)
        total = sum(counts)
        if total == 0:  # every value withheld: nothing to infer
            continue
        if kind == "distinct":
            ok, measured = len(counts) >= l, f"{len(counts)} distinct value(s)"
        elif kind == "entropy":
            ent = max(0.0, -sum(n / total * math.log(n / total) for n in counts))
            ok = ent >= math.log(l) - 1e-12
            measured = f"entropy {ent:.4f} < log({l}) = {math.log(l):.4f}"
        else:
            tail = sum(counts[l - 1:])
            ok = bool(counts) and counts[0] < c * tail
            measured = f"counts {counts!r}: r1 < {c:g} x (r{l} + ...) fails"
        if not ok:
            raise AssertionError(
                f"not {kind} {l}-diverse in {sensitive!r}: "
                f"{_describe(frame, list(quasi_identifiers), key, rows)} has {measured}"
            )


def assert_t_close(
    frame: pd.DataFrame,
    quasi_identifiers: Sequence[str],
    sensitive: str,
    t: float,
    *,
    hierarchy: Hierarchy | None = None,
    reference: pd.Series | None = None,
    ignore_suppressed: bool = False,
) -> None:
    """Every class's distribution of ``sensitive`` is within EMD ``t`` of the reference.

    The reference is ``reference`` (e.g. the original column) or else the
    table's own ``sensitive`` column. The ground distance is ordered
    (``|i - j| / (m - 1)``) for a numeric column, hierarchical when
    ``hierarchy`` is given, and equal (half the L1 distance) otherwise.
    Missing sensitive values are left out of every distribution.
    """
    _check_columns(frame, [sensitive])
    _check_parameter("t", t, integer=False, low=0, high=1)
    groups = _classes(frame, quasi_identifiers, ignore_suppressed)
    ref = reference if reference is not None else frame[sensitive]
    ref_values = [v for v in ref.astype(object).tolist() if _key(v) is not _MISSING]
    numeric = hierarchy is None and pd.api.types.is_numeric_dtype(ref.dtype) and not (
        pd.api.types.is_bool_dtype(ref.dtype)
    )
    if hierarchy is not None:
        domain: list[Any] = list(hierarchy.leaves)
        position = {v: i for i, v in enumerate(domain)}

        def index_of(v: Any) -> int:
            key = str(v)
            if key not in position and isinstance(v, (float, np.floating)) and \
                    float(v).is_integer():
                key = str(int(v))  # an integer code stored as float (a NaN beside it): 1.0 is "1"
            if key not in position:
                raise AssertionError(f"value {v!r} of {sensitive!r} is not in the hierarchy")
            return position[key]

        tree: Hierarchy | None = hierarchy
    else:
        domain = sorted(set(ref_values) | set(
            v for v in frame[sensitive].astype(object).tolist() if _key(v) is not _MISSING
        ), key=(lambda v: float(v)) if numeric else (lambda v: (type(v).__name__, str(v))))
        position = {v: i for i, v in enumerate(domain)}

        def index_of(v: Any) -> int:
            return position[v]

        tree = None if numeric else Hierarchy(
            rows=tuple((f"v{i}",) for i in range(len(domain))), name=sensitive
        )
    m = len(domain)

    def distribution(vals: list[Any]) -> np.ndarray:
        out = np.zeros(m)
        for v in vals:
            if _key(v) is not _MISSING:
                out[index_of(v)] += 1
        return out

    q = distribution(ref_values)
    if q.sum() == 0:
        raise AssertionError(f"the reference distribution of {sensitive!r} is empty")
    q = q / q.sum()
    values = frame[sensitive].astype(object).tolist()
    for key, rows in groups.items():
        counts = distribution([values[p] for p in rows])[None, :]
        if counts.sum() == 0:
            continue
        if tree is None:
            emd = float(emd_ordered(counts, q)[0])
        else:
            emd = float(emd_hierarchical(counts, q, tree)[0])
        if emd > t + 1e-9:
            raise AssertionError(
                f"not {t:g}-close in {sensitive!r}: "
                f"{_describe(frame, list(quasi_identifiers), key, rows)} is at EMD {emd:.4f}"
            )


def _representatives(held: dict[Any, set[Any]]) -> int:
    """The most packages that can each be given one of their values, no value twice: the
    size of a maximum bipartite matching, by scipy's (Hopcroft–Karp), not the rule's own
    augmenting paths, so that this reference does not share their mistakes."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_bipartite_matching

    values = {value: i for i, value in enumerate({v for vs in held.values() for v in vs})}
    rows = [i for i, vs in enumerate(held.values()) for _ in vs]
    cols = [values[v] for vs in held.values() for v in vs]
    graph = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(held), len(values)))
    return int((maximum_bipartite_matching(graph, perm_type="column") >= 0).sum())


def assert_release_rule(
    released: pd.DataFrame,
    rule: Any,
    *,
    group_by: Sequence[str] = ("cohort_id",),
    package_column: str = "package_id",
) -> None:
    """Every group of ``released`` (default: each server cohort) meets ``rule``.

    ``rule`` is a :class:`~dmt_privacy.anonymity.ReleaseRule`. A slow,
    independent reference for it: distinct packages at least k; with each
    package weighing the same, distinct / entropy / recursive (c, l)
    diversity of the sensitive values, and the EMD to ``rule.reference``
    (equal distance, or ordered when ``rule.ordered``) at most t. Use it on
    ``SharedStore.frame("released", cohorts=True)``.
    """
    _check_columns(released, [*group_by, package_column])
    if rule.l is not None or rule.t is not None:
        _check_columns(released, [rule.sensitive])
    groups: dict[Any, list[int]] = {}
    for pos, key in enumerate(zip(*(released[c].tolist() for c in group_by), strict=True)):
        groups.setdefault(tuple(_key(v) for v in key), []).append(pos)
    packages = released[package_column].tolist()
    values = released[rule.sensitive].tolist() if rule.sensitive in released.columns else None
    for key, rows in groups.items():
        members = [packages[i] for i in rows]
        distinct = len(set(members))
        if distinct < rule.k:
            raise AssertionError(f"group {key!r}: {distinct} distinct packages, fewer than "
                                 f"k={rule.k} (rows {rows[:5]!r})")
        if values is None or (rule.l is None and rule.t is None):
            continue
        size: dict[Any, int] = {}
        for p in members:
            size[p] = size.get(p, 0) + 1
        weight: dict[Any, float] = {}
        held: dict[Any, set[Any]] = {}  # each package's values
        for i in rows:
            v = _key(values[i])
            if v is _MISSING:
                raise AssertionError(f"group {key!r}: row {i} has a missing {rule.sensitive!r} "
                                     "value, which l and t cannot judge")
            weight[v] = weight.get(v, 0.0) + 1.0 / size[packages[i]]
            held.setdefault(packages[i], set()).add(v)
        if rule.l is not None and _representatives(held) < rule.l:
            raise AssertionError(f"group {key!r}: fewer than l={rule.l} contributors hold "
                                 "pairwise different values")
        total = sum(weight.values())
        dist = {v: w / total for v, w in weight.items()}
        if rule.l is not None:
            ranked = sorted(dist.values(), reverse=True)
            if rule.l_kind == "distinct":
                ok = len(ranked) >= rule.l
            elif rule.l_kind == "entropy":
                ok = -sum(p * math.log(p) for p in ranked if p > 0) >= math.log(rule.l) - 1e-9
            else:
                ok = len(ranked) >= rule.l and ranked[0] < rule.c * sum(ranked[rule.l - 1:])
            if not ok:
                raise AssertionError(f"group {key!r}: sensitive distribution {dist!r} is not "
                                     f"{rule.l_kind} {rule.l}-diverse")
        if rule.t is not None:
            ref = dict(rule.reference or ())
            if rule.ordered:
                order = [v for v, _ in rule.reference or ()]
                outside = sum(p for v, p in dist.items() if v not in ref)
                inside = [dist.get(v, 0.0) / (1 - outside) if outside < 1 else 0.0
                          for v in order]
                cum, emd = 0.0, 0.0
                for p, q in zip(inside, [ref[v] for v in order], strict=True):
                    cum += p - q
                    emd += abs(cum)
                emd = outside + (1 - outside) * emd / max(len(order) - 1, 1)
            else:
                emd = 0.5 * sum(abs(dist.get(v, 0.0) - ref.get(v, 0.0))
                                for v in set(dist) | set(ref))
            if emd > rule.t + 1e-9:
                raise AssertionError(f"group {key!r}: EMD {emd:.4f} to the reference is above "
                                     f"t={rule.t}")
