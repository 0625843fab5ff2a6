"""A statistical audit of a local-DP mechanism, for users' own unit tests.

:func:`audit_ldp` draws outputs of a mechanism on neighbouring inputs and
looks for an output event ``E`` with
``P[M(x) ∈ E] > e**ε · P[M(x') ∈ E] + δ``, which no (ε, δ)-DP mechanism has.

How the false-failure probability is kept at most ``alpha`` (1e-6 by default):

1. *Fixed events.* Candidate events are chosen before the test samples are
   drawn: either given by the caller (``events=``), or chosen on a separate
   *pilot* sample. From the pilot, every output value (or, for real-valued
   outputs with many distinct values, every bin between pilot quantiles)
   gets a score, its smoothed likelihood ratio between the two inputs on
   one half of the pilot; the
   candidate events are the score super-level sets ``{y : score(y) >= r}``
   (the Neyman–Pearson family), plus, for real-valued outputs, the one-sided
   events ``{y >= v}`` and ``{y <= v}`` at values seen in the pilot; the
   ``max_events`` candidates whose frequencies on the other pilot half
   promise the largest certified ε on the test sample are kept. Membership of an output in an
   event depends on the pilot only.
2. *Clopper–Pearson bounds* on fresh samples (``samples`` per input): a
   lower bound on ``P[M(x) ∈ E]`` and an upper bound on ``P[M(x') ∈ E]``.
   The audit fails only if ``lower > e**ε · upper + δ``.
3. *Bonferroni:* each bound is one-sided at level
   ``alpha / (2 · events · ordered pairs)``. If the mechanism is (ε, δ)-DP,
   all bounds hold together with probability at least ``1 - alpha``, and
   then no event can fail. So a correct mechanism fails with probability at
   most ``alpha``, whatever the sample size, the pilot or the events.

A pass is not a proof of privacy: it says no violation was visible at this
sample size. The result's ``epsilon_lower_bound`` is a lower confidence bound
on the mechanism's real ε over the tested events.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import permutations
from statistics import NormalDist
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

__all__ = ["AuditFinding", "AuditResult", "audit_ldp"]

Mechanism = Callable[[npt.NDArray[Any]], Any]
Event = Callable[[npt.NDArray[Any]], npt.NDArray[np.bool_]]

_MAX_DISTINCT = 512  # more distinct 1-D numeric outputs than this in the pilot: bin them
_BINS = 256


@dataclass(frozen=True)
class AuditFinding:
    """One (ordered pair, event) test: the bounds and what they imply for ε."""

    inputs: tuple[Any, Any]
    event: str
    count_x: int
    count_x_prime: int
    p_lower: float  # Clopper–Pearson lower bound of P[M(x) ∈ E]
    q_upper: float  # Clopper–Pearson upper bound of P[M(x') ∈ E]
    epsilon_lower_bound: float  # ln((p_lower - δ) / q_upper); -inf when nothing is implied
    violates: bool


@dataclass(frozen=True)
class AuditResult:
    """What :func:`audit_ldp` found. ``passed`` is False iff some finding violates (ε, δ)."""

    passed: bool
    epsilon: float
    delta: float
    samples: int
    alpha: float
    n_tests: int
    epsilon_lower_bound: float
    worst: AuditFinding
    findings: tuple[AuditFinding, ...] = field(repr=False, default=())

    def summary(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        w = self.worst
        return (
            f"audit_ldp {verdict} for ε={self.epsilon:g}, δ={self.delta:g} "
            f"({self.samples} samples per input, {self.n_tests} Bonferroni-corrected bounds, "
            f"false-failure probability ≤ {self.alpha:g}). Most violating event, inputs "
            f"{w.inputs[0]!r} vs {w.inputs[1]!r}: {w.event}: P[M(x) ∈ E] ≥ {w.p_lower:.4g} "
            f"({w.count_x} hits) while P[M(x') ∈ E] ≤ {w.q_upper:.4g} ({w.count_x_prime} hits), "
            f"so the mechanism's ε ≥ {self.epsilon_lower_bound:.4g} with confidence "
            f"1 - {self.alpha:g}."
        )


def _cp_lower(k: npt.NDArray[np.int64], n: int, a: float) -> npt.NDArray[np.float64]:
    from scipy.stats import beta

    k = np.asarray(k)
    out = np.zeros(k.shape, dtype=np.float64)
    pos = k > 0
    out[pos] = beta.ppf(a, k[pos], n - k[pos] + 1)
    return out


def _cp_upper(k: npt.NDArray[np.int64], n: int, a: float) -> npt.NDArray[np.float64]:
    from scipy.stats import beta

    k = np.asarray(k)
    out = np.ones(k.shape, dtype=np.float64)
    below = k < n
    out[below] = beta.ppf(1.0 - a, k[below] + 1, n - k[below])
    return out


def _call(mechanism: Any, x: Any, n: int) -> npt.NDArray[Any]:
    fn = mechanism.randomise if hasattr(mechanism, "randomise") else mechanism
    values = np.repeat(np.asarray([x], dtype=object if isinstance(x, str) else None), n)
    out = np.asarray(fn(values))
    if out.shape[0] != n:
        raise ValueError(
            f"audit_ldp: the mechanism returned {out.shape[0]} outputs for {n} inputs; it must "
            "map an array of n inputs to n outputs (one per row)."
        )
    return out


class _Labeller:
    """Maps outputs to integer labels, as a function fixed by the pilot sample."""

    def __init__(self, pilot: npt.NDArray[Any]) -> None:
        self.edges: npt.NDArray[np.float64] | None = None
        self.ordered = pilot.ndim == 1 and np.issubdtype(pilot.dtype, np.number)
        if self.ordered:
            distinct = np.unique(pilot)
            if distinct.size > _MAX_DISTINCT:
                qs = np.quantile(pilot.astype(np.float64), np.linspace(0, 1, _BINS + 1)[1:-1])
                self.edges = np.unique(qs)

    def labels(self, outputs: npt.NDArray[Any]) -> tuple[npt.NDArray[np.int64], list[str]]:
        """Labels for all outputs at once (so equal outputs share a label) and their names."""
        if self.edges is not None:
            labels = np.searchsorted(self.edges, outputs.astype(np.float64), side="right")
            e = self.edges
            names = [f"y < {e[0]:.6g}"] + [
                f"{e[i - 1]:.6g} <= y < {e[i]:.6g}" for i in range(1, e.size)
            ] + [f"y >= {e[-1]:.6g}"]
            return labels.astype(np.int64), names
        if outputs.ndim == 1:
            codes, uniques = pd.factorize(outputs, sort=True)
            return codes.astype(np.int64), [_show(u) for u in uniques]
        flat = outputs.reshape(outputs.shape[0], -1)
        if flat.shape[1] <= 62 and np.isin(flat, (0, 1)).all():  # bit vectors: pack to ints
            weights = np.left_shift(np.int64(1), np.arange(flat.shape[1], dtype=np.int64))
            codes, uniques = pd.factorize(flat.astype(np.int64) @ weights, sort=True)
            width = flat.shape[1]
            names = ["".join(str((int(u) >> j) & 1) for j in range(width)) for u in uniques]
            return codes.astype(np.int64), names
        uniques, inverse = np.unique(flat, axis=0, return_inverse=True)
        return inverse.ravel().astype(np.int64), [str(u.tolist()) for u in uniques]


def _show(value: Any) -> str:
    return repr(value.item() if isinstance(value, np.generic) else value)


def _candidate_events(
    a: npt.NDArray[np.int64], b: npt.NDArray[np.int64], ordered: bool
) -> list[tuple[npt.NDArray[np.bool_], str]]:
    """Events as label masks, each a function of the pilot counts ``a`` and ``b`` only.

    The Neyman–Pearson family ``{score >= r}`` (score: smoothed pilot likelihood
    ratio) and, for ordered (real-valued) outputs, the one-sided thresholds
    ``{y >= v}`` and ``{y <= v}`` at values ``v`` seen in the pilot.
    """
    score = (a + 0.5) / (b + 0.5)
    options = [(score >= r, f"pilot likelihood ratio >= {r:.3g}") for r in np.unique(score)]
    if ordered:
        labels = np.arange(a.size)
        for j in np.flatnonzero((a + b) > 0):
            options.append((labels >= j, "y at or above"))
            options.append((labels <= j, "y at or below"))
    return options


def _describe(mask: npt.NDArray[np.bool_], names: list[str], rule: str) -> str:
    members = [names[i] for i in np.flatnonzero(mask)]
    if rule.startswith("y at or above"):
        return f"E = {{y at or above {names[int(np.flatnonzero(mask)[0])]}}}"
    if rule.startswith("y at or below"):
        return f"E = {{y at or below {names[int(np.flatnonzero(mask)[-1])]}}}"
    shown = ", ".join(members[:4]) + (", ..." if len(members) > 4 else "")
    return f"E = {{outputs with {rule}}}: {len(members)} value(s)/bin(s): {shown}"


def audit_ldp(
    mechanism: Mechanism | Any,
    epsilon: float,
    *,
    inputs: Sequence[Any],
    pairs: Sequence[tuple[Any, Any]] | None = None,
    delta: float = 0.0,
    samples: int = 100_000,
    pilot_samples: int | None = None,
    events: Sequence[Event] | None = None,
    max_events: int = 8,
    alpha: float = 1e-6,
    raise_on_failure: bool = True,
) -> AuditResult:
    """Audit a local mechanism's (ε, δ) claim on neighbouring inputs.

    Parameters
    ----------
    mechanism:
        A vectorized mechanism: called with an array of ``n`` copies of one
        input, it returns ``n`` outputs (a 1-D array, or 2-D with one row per
        output, e.g. unary-encoding bits). Objects with a ``randomise`` method
        (all :mod:`dmt_privacy.dp` mechanisms) are called through it.
    epsilon, delta:
        The claim under audit.
    inputs:
        Input values; in local DP any two inputs are neighbours, so every
        ordered pair is tested unless ``pairs`` is given. Choose the extremes
        (a numeric field's bounds, distinct categories).
    samples:
        Outputs drawn per input for the test (100,000 by default).
    pilot_samples:
        Extra outputs per input used only to choose events
        (default ``samples // 5``); ignored when ``events`` is given.
    events:
        Fixed events as functions ``outputs -> bool mask``; replaces the pilot.
    max_events:
        Candidate events kept per ordered pair.
    alpha:
        Bound on the probability that a correct mechanism fails the audit.
    raise_on_failure:
        Raise ``AssertionError`` with :meth:`AuditResult.summary` on a failure
        (for use in tests); otherwise return the failing result.
    """
    if not (math.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(f"audit_ldp: epsilon must be finite and >= 0, got {epsilon!r}.")
    if not 0 <= delta < 1:
        raise ValueError(f"audit_ldp: delta must lie in [0, 1), got {delta!r}.")
    if not 0 < alpha < 1:
        raise ValueError(f"audit_ldp: alpha must lie in (0, 1), got {alpha!r}.")
    distinct = list(dict.fromkeys(inputs))
    ordered = list(pairs) if pairs is not None else list(permutations(distinct, 2))
    if pairs is not None:
        ordered += [(b, a) for a, b in pairs]
        distinct = list(dict.fromkeys(v for p in ordered for v in p))
    if not ordered:
        raise ValueError("audit_ldp: give at least two distinct inputs (or some pairs).")

    n_pilot = 0 if events is not None else (pilot_samples or max(samples // 5, 1000))
    n_events = len(events) if events is not None else max_events
    n_tests = 2 * n_events * len(ordered)
    level = alpha / n_tests
    z_test = float(NormalDist().inv_cdf(1.0 - level))

    # 1. pilot first: the events are fixed before any test sample exists
    candidates: dict[tuple[int, int], list[tuple[npt.NDArray[np.bool_], str]]] = {}
    if events is None:
        pilot = {i: _call(mechanism, x, n_pilot) for i, x in enumerate(distinct)}
        labeller = _Labeller(np.concatenate(list(pilot.values())))
    test = {i: _call(mechanism, x, samples) for i, x in enumerate(distinct)}
    index = {x: i for i, x in enumerate(distinct)}

    if events is None:
        everything = np.concatenate([*pilot.values(), *test.values()])
        labels, names = labeller.labels(everything)
        n_labels = len(names)
        sizes = [len(v) for v in [*pilot.values(), *test.values()]]
        chunks = np.split(labels, np.cumsum(sizes)[:-1])
        # pilot halves: one builds the likelihood-ratio scores, the other measures the events
        half = n_pilot // 2
        score_counts = {i: np.bincount(chunks[i][:half], minlength=n_labels) for i in pilot}
        pilot_counts = {i: np.bincount(chunks[i][half:], minlength=n_labels) for i in pilot}
        n_measure = n_pilot - half
        test_counts = {i: np.bincount(chunks[len(pilot) + i], minlength=n_labels) for i in test}
        for x, y in ordered:
            a, b = pilot_counts[index[x]], pilot_counts[index[y]]
            options = _candidate_events(score_counts[index[x]], score_counts[index[y]],
                                        labeller.ordered)
            p1 = np.array([a[m].sum() for m, _ in options]) / n_measure
            p2 = np.array([b[m].sum() for m, _ in options]) / n_measure
            # rank by the ε lower bound each event is expected to certify on the test sample,
            # from pilot frequencies shrunk by two pilot standard errors (no overfitting)
            spread = 2.0 / math.sqrt(n_measure)
            p1 = np.maximum(p1 - spread * np.sqrt(p1 * (1 - p1) + 1.0 / n_measure), 0.0)
            p2 = np.minimum(p2 + spread * np.sqrt(p2 * (1 - p2) + 1.0 / n_measure), 1.0)
            lo = p1 - z_test * np.sqrt(p1 * (1 - p1) / samples) - delta
            hi = p2 + z_test * np.sqrt(p2 * (1 - p2) / samples) + 1.0 / samples
            expected = np.log(np.maximum(lo, 1e-300) / hi)
            keep = np.argsort(-expected, kind="stable")[:max_events]
            candidates[(index[x], index[y])] = [
                (options[j][0], _describe(options[j][0], names, options[j][1])) for j in keep
            ]
    # 2. Clopper–Pearson bounds on the fresh samples, Bonferroni-corrected
    findings: list[AuditFinding] = []
    for x, y in ordered:
        ix, iy = index[x], index[y]
        if events is None:
            tests = [
                (int(test_counts[ix][mask].sum()), int(test_counts[iy][mask].sum()), text)
                for mask, text in candidates[(ix, iy)]
            ]
        else:
            tests = []
            for j, ev in enumerate(events):
                name = getattr(ev, "__name__", f"event {j}")
                tests.append((int(np.count_nonzero(ev(test[ix]))),
                              int(np.count_nonzero(ev(test[iy]))), name))
        c1 = np.array([t[0] for t in tests])
        c2 = np.array([t[1] for t in tests])
        lower = _cp_lower(c1, samples, level)
        upper = _cp_upper(c2, samples, level)
        for (k1, k2, text), lo, up in zip(tests, lower, upper, strict=True):
            bound = math.log((lo - delta) / up) if lo > delta and up > 0 else -math.inf
            if lo > delta and up == 0:
                bound = math.inf
            findings.append(AuditFinding(
                inputs=(x, y), event=text, count_x=k1, count_x_prime=k2,
                p_lower=float(lo), q_upper=float(up), epsilon_lower_bound=bound,
                violates=bool(lo > math.exp(epsilon) * up + delta),
            ))
    worst = max(findings, key=lambda f: f.epsilon_lower_bound)
    result = AuditResult(
        passed=not any(f.violates for f in findings),
        epsilon=float(epsilon), delta=float(delta), samples=samples, alpha=alpha,
        n_tests=n_tests, epsilon_lower_bound=worst.epsilon_lower_bound, worst=worst,
        findings=tuple(findings),
    )
    if raise_on_failure and not result.passed:
        raise AssertionError(result.summary())
    return result
