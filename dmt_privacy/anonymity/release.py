"""The server's release rule: which received records may leave quarantine, and when.

A plan fitted with k, l and t guarantees them only on the data it was fitted
on. Records that devices generalize with the plan arrive one package at a
time, so the server must enforce every constraint again, on what it really
releases. :class:`ReleaseRule` states them; :meth:`ReleaseRule.admits`
judges one group of records.

**Over distinct contributors.** The server cannot link packages to devices
(nothing in a package names one), so a contributor is a package. ``k`` counts
distinct packages, never records: one package of 50 records is one
contributor. l-diversity and t-closeness are computed on the sensitive
values with each contributor weighing the same (each package's records
share a weight of 1), so a single package cannot make a class look diverse
or close to the reference by volume. Nor by variety: whatever the kind of l,
the cohort also needs l contributors holding pairwise different values (one
package of ten values beside two 'hiv' packages is not 3-diverse). A missing
sensitive value, or a record without a contributor, is refused, not counted
as a value or a contributor of its own.

**The schedule: cohorts.** A class is not released once and then left to
grow: comparing two snapshots of a growing class would show the newcomer's
records. Instead the records of a class that are still quarantined form its
*pending cohort*, and the cohort is released as one block, only when the
cohort itself meets k, l and t; later records start a new cohort that waits
for its own k contributors. Any difference between two snapshots of the
released data is therefore a union of whole cohorts, each of which meets the
policy on its own: differencing reveals nothing a release would not.
(Classes released once and frozen would waste every later record; fixed
epochs still release a class's growth by one record when only one arrived;
cohorts cost the least data for the same guarantee.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from dmt_privacy.anonymity.constraints import LDiversity, TCloseness
from dmt_privacy.errors import AnonymizationError, ValidationError

__all__ = ["ReleaseRule", "reference_from_counts"]


@dataclass(frozen=True)
class ReleaseRule:
    """k, l and t that every released cohort must meet, over distinct contributors.

    Parameters
    ----------
    k:
        Distinct contributors (packages) a cohort needs.
    sensitive:
        The sensitive field; required with ``l`` or ``t``.
    l, l_kind, c:
        l-diversity of the sensitive values (``"distinct"``, ``"entropy"`` or
        ``"recursive"`` with ``c``), as :class:`~dmt_privacy.anonymity.LDiversity`.
    t:
        Largest earth mover's distance allowed between a cohort's sensitive
        distribution and ``reference``.
    reference:
        ``((value, probability), ...)``: the distribution t is measured
        against (the server's, e.g. the plan's fitting data). Required with
        ``t``. A value outside it is as far as any value can be.
    ordered:
        ``True``: the values of ``reference`` are ordered (numeric bins) and
        the EMD uses the ordered distance ``|i − j| / (m − 1)``; ``False``
        (default): the equal distance (half the L1 distance), which is never
        below the hierarchical distance the plan may have been fitted with.
    """

    k: int
    sensitive: str | None = None
    l: int | None = None  # noqa: E741 - the literature's name
    l_kind: str = "distinct"
    c: float = 1.0
    t: float | None = None
    reference: tuple[tuple[Any, float], ...] | None = None
    ordered: bool = False

    def __post_init__(self) -> None:
        k = self.k
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValidationError(f"ReleaseRule: k must be a positive integer, got {k!r}.")
        if (self.l is not None or self.t is not None) and not self.sensitive:
            raise ValidationError(
                f"ReleaseRule: l={self.l!r} / t={self.t!r} need the sensitive field; pass "
                "sensitive=..."
            )
        if self.l is not None:
            LDiversity(self.l, self.l_kind, self.c)  # type: ignore[arg-type]  # validates
        if self.t is not None:
            t = self.t
            try:
                object.__setattr__(self, "t", TCloseness(t).t)  # validates, as a float
            except AnonymizationError as exc:
                raise ValidationError(f"ReleaseRule: {exc}") from None
            if not self.reference:
                raise ValidationError(
                    f"ReleaseRule: t={t!r} needs the reference distribution of "
                    f"{self.sensitive!r} (reference=((value, probability), ...)), e.g. from "
                    "the plan's fitting data; it is never taken from the records received."
                )
        if self.reference is not None:
            ref = tuple((v, float(p)) for v, p in self.reference)
            probs = np.asarray([p for _, p in ref])
            if not ref or (probs < 0).any() or not math.isclose(probs.sum(), 1.0, abs_tol=1e-6):
                raise ValidationError(
                    f"ReleaseRule: reference must be probabilities >= 0 summing to 1, got "
                    f"{len(ref)} values summing to {probs.sum():g}."
                )
            if len({v for v, _ in ref}) != len(ref):
                raise ValidationError("ReleaseRule: reference repeats a value.")
            object.__setattr__(self, "reference", ref)

    @classmethod
    def from_plan(cls, plan: Any, *, k: int | None = None) -> ReleaseRule:
        """The rule a fitted :class:`~dmt_privacy.anonymity.AnonymizationPlan` promises.

        ``k`` (default: the plan's) may only raise the plan's k. The reference
        for t is the plan's ``sensitive_reference``; a plan fitted with t on a numeric
        sensitive field carries none, and is refused.
        """
        k_plan = int(plan.k)
        k_rule = k_plan if k is None else max(int(k), k_plan)
        reference = getattr(plan, "sensitive_reference", None)
        if plan.t is not None and reference is None:
            raise ValidationError(
                f"The plan asks t={plan.t} on {plan.sensitive!r}, whose distribution it does "
                "not carry (a numeric sensitive field): a release rule measures t against the "
                "plan's reference, never against the records it receives. Fit the plan "
                "without t, or with the sensitive field binned into categories (a "
                "categorical field stored as numbers: as strings).")
        return cls(k=k_rule, sensitive=plan.sensitive, l=plan.l, l_kind=plan.l_kind,
                   c=plan.c, t=plan.t, reference=reference,
                   ordered=bool(getattr(plan, "sensitive_ordered", False)))

    @property
    def needs_values(self) -> bool:
        """Whether judging a cohort needs its sensitive values (l or t set)."""
        return self.l is not None or self.t is not None

    def admits(self, package_ids: Sequence[Any] | np.ndarray,
               sensitive_values: Sequence[Any] | np.ndarray | None = None) -> bool:
        """Whether a cohort, one entry per record, may be released.

        ``package_ids``: each record's contributor. ``sensitive_values``: each
        record's sensitive value (required when ``l`` or ``t`` is set).
        """
        contributor = _contributors(package_ids)
        n_contributors = int(contributor.max()) + 1 if len(contributor) else 0
        if n_contributors < self.k:
            return False
        if not self.needs_values:
            return True
        if sensitive_values is None or len(sensitive_values) != len(contributor):
            raise AnonymizationError(
                f"ReleaseRule: judging l / t needs one {self.sensitive!r} value per record "
                f"({len(contributor)} records)."
            )
        sizes = np.bincount(contributor)
        weights = 1.0 / sizes[contributor]  # each contributor's records weigh 1 together
        labels, domain = self._domain(sensitive_values)
        counts = np.bincount(labels, weights=weights, minlength=len(domain))[None, :]
        if self.l is not None:
            ldiv = LDiversity(self.l, self.l_kind, self.c)  # type: ignore[arg-type]
            if not ldiv.holds(counts)[0]:
                return False
            # and l contributors with pairwise different values: one package's many values
            # made a cohort of two 'hiv' contributors and itself look 11-diverse (helper-66)
            if _distinct_representatives(contributor, labels, self.l) < self.l:
                return False
        if self.t is not None and self.emd(counts)[0] > self.t + 1e-12:
            return False
        return True

    def _domain(self, values: Sequence[Any] | np.ndarray) -> tuple[np.ndarray, list[Any]]:
        """Each value's column, the reference's values first, then any value outside it. A
        missing value is refused: counted as a value of its own, it made a cohort of 'hiv'
        and a missing value 2-diverse (helper-66)."""
        domain: list[Any] = [v for v, _ in self.reference] if self.reference else []
        index: dict[Any, int] = {_key(v): i for i, v in enumerate(domain)}
        labels = np.empty(len(values), dtype=np.int64)
        for i, v in enumerate(values):
            if _missing(v):
                raise ValidationError(
                    f"ReleaseRule: record {i} has no {self.sensitive!r} value ({v!r}); l and t "
                    "are judged on known values only. Leave such records out of the cohort "
                    "(they wait in quarantine) or fill the field.")
            key = _key(v)
            at = index.get(key)
            if at is None:
                at = index[key] = len(domain)
                domain.append(v)
            labels[i] = at
        return labels, domain

    def emd(self, counts: np.ndarray) -> np.ndarray:
        """EMD of each row of ``counts`` (columns: the reference's values, then others)."""
        assert self.reference is not None
        counts = np.asarray(counts, dtype=np.float64)
        m_ref = len(self.reference)
        ref = np.zeros(counts.shape[1])
        ref[:m_ref] = [p for _, p in self.reference]
        total = counts.sum(axis=1, keepdims=True)
        p = np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)
        outside = p[:, m_ref:].sum(axis=1)
        if not self.ordered or m_ref < 2:
            return 0.5 * np.abs(p - ref[None, :]).sum(axis=1)
        # Ordered distance over the reference's values; mass outside them costs the most (1).
        inside = p[:, :m_ref]
        q = ref[:m_ref][None, :]
        # move outside mass first at full cost, then the ordered EMD of what is left
        scale = np.where(outside < 1, 1 - outside, 1.0)[:, None]
        adjusted = np.divide(inside, scale, out=np.zeros_like(inside), where=scale > 0)
        ordered = np.abs(np.cumsum(adjusted - q, axis=1)[:, :-1]).sum(axis=1) / (m_ref - 1)
        return outside + (1 - outside) * ordered


def _missing(value: Any) -> bool:
    """Whether a cell is missing, as :func:`pandas.isna` says of a scalar: None, pd.NA,
    pandas' or numpy's NaT, a NaN of any float type, Decimal's NaN; an interval with a NaN
    end. numpy's float32 NaN, its NaT and Decimal's NaN were values here, each NaN one of
    its own, so a class of 'hiv' and a NaT was released as 2-diverse (helper-115)."""
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    kind = type(value)
    if kind is float:
        return value != value
    if kind is str or kind is int or kind is bool or kind is frozenset:
        return False
    if kind is pd.Interval:
        return _missing(value.left) or _missing(value.right)
    try:
        return bool(pd.isna(value)) if np.ndim(value) == 0 else False
    except (TypeError, ValueError):
        return False


def _contributors(package_ids: Sequence[Any] | np.ndarray) -> np.ndarray:
    """Each record's contributor as a number 0..n-1 (ids compared as the objects they are:
    the k count and the weights group them alike). A missing id is refused: each NaN was a
    contributor of its own, three of them k = 3 (helper-66)."""
    ids = list(package_ids)
    if any(_missing(v) for v in ids):
        raise ValidationError(
            "ReleaseRule: a record has no contributor (its package id is missing); every "
            "record needs the id of the package it came in.")
    codes, _ = pd.factorize(pd.Series(ids, dtype=object), use_na_sentinel=True)
    return np.asarray(codes, dtype=np.int64)


def _distinct_representatives(contributor: np.ndarray, labels: np.ndarray, enough: int) -> int:
    """How many contributors can each be paired with a value of their own, every value used
    once (a maximum bipartite matching, by augmenting paths), counted up to ``enough``."""
    values_of: dict[int, set[int]] = {}
    for who, value in zip(contributor.tolist(), labels.tolist(), strict=True):
        values_of.setdefault(who, set()).add(value)
    holder: dict[int, int] = {}  # value -> the contributor it is paired with

    def pair(who: int, seen: set[int]) -> bool:
        for value in values_of[who]:
            if value in seen:
                continue
            seen.add(value)
            if value not in holder or pair(holder[value], seen):
                holder[value] = who
                return True
        return False

    matched = 0
    for who in values_of:
        if pair(who, set()):
            matched += 1
            if matched >= enough:
                break
    return matched


def _key(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return ("nan",)
    if isinstance(value, (np.generic,)):
        return value.item()
    return value


def reference_from_counts(counts: Mapping[Any, float], *, decimals: int = 4
                          ) -> tuple[tuple[Any, float], ...]:
    """A reference distribution from value counts, probabilities in steps of 10^-``decimals``.

    Rounding keeps a plan's reference from telling apart two fitting tables
    that differ by one record (at 10⁴ records and more). The steps are shared out by
    largest remainder, so the probabilities are never negative and sum to 1: the
    rounding error once went to the most frequent value, and with more values than steps
    (15,000 equal counts at 4 decimals) made its probability −0.5, a reference every
    release rule refused.
    """
    total = float(sum(counts.values()))
    if total <= 0:
        raise ValidationError("reference_from_counts: the counts are empty.")
    steps = 10**decimals
    values = list(counts)
    exact = np.asarray([float(counts[v]) for v in values]) / total * steps
    units = np.floor(exact).astype(np.int64)
    short = steps - int(units.sum())
    if short > 0:  # the largest remainders first; ties in the order given
        units[np.argsort(-(exact - units), kind="stable")[:short]] += 1
    return tuple((v, round(int(u) / steps, decimals)) for v, u in zip(values, units, strict=True))
