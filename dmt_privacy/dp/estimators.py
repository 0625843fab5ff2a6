"""Server-side unbiased estimators for locally perturbed fields, driven by the release receipt.

* Means of numeric fields (:func:`estimate_mean`): the plain sample mean of the
  released values. It is unbiased for the mean of the *clamped* inputs when
  the release used stochastic rounding (the default), because the snapped
  unit has expectation ``clamp(x) / grid`` and the discrete Laplace/Gaussian
  noise is symmetric and not truncated at the bounds (only clipped to a window
  it leaves with probability below ``e**-45``). With ``rounding="nearest"``
  it carries the rounding bias (at most ``grid / 2``). Bounded-domain
  mechanisms that truncate or fold noise at the bounds make this estimator
  biased toward the middle of the domain; none is used here.
* Frequencies of categorical fields (:func:`estimate_frequencies`): for k-RR
  and OUE the observed share ``c / n`` of reports of a category has
  expectation ``q + f (p - q)``, so ``f̂ = (c / n - q) / (p - q)`` is
  unbiased (Wang et al. 2017), with variance ``π (1 - π) / (n (p - q)²)``
  where ``π = E[c / n]``. The estimates may fall outside [0, 1] and do not
  sum to exactly 1: clipping or renormalizing would bias them.

Confidence intervals are normal approximations with the plug-in standard error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from dmt_privacy.dp.receipt import FieldReceipt
from dmt_privacy.errors import UnknownCategoryError, ValidationError

__all__ = ["FrequencyEstimate", "MeanEstimate", "estimate_frequencies", "estimate_mean"]


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValidationError(f"confidence must lie in (0, 1), got {confidence!r}.")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


@dataclass(frozen=True)
class MeanEstimate:
    """An unbiased mean with its standard error and a normal confidence interval."""

    field: str
    value: float
    stderr: float
    ci_low: float
    ci_high: float
    n: int
    confidence: float


@dataclass(frozen=True, eq=False)
class FrequencyEstimate:
    """Unbiased category frequencies, standard errors and normal confidence intervals."""

    field: str
    categories: tuple[Any, ...]
    frequencies: npt.NDArray[np.float64]
    stderr: npt.NDArray[np.float64]
    ci_low: npt.NDArray[np.float64]
    ci_high: npt.NDArray[np.float64]
    n: int
    confidence: float

    def as_series(self) -> pd.Series:
        return pd.Series(self.frequencies, index=list(self.categories), name=self.field)


def estimate_mean(
    values: npt.ArrayLike, receipt: FieldReceipt, *, confidence: float = 0.95
) -> MeanEstimate:
    """Mean of the clamped inputs from released values of a numeric field.

    Checks that every value lies on the receipt's grid and inside its window
    (anything else did not come from the stated mechanism) before estimating.
    """
    if receipt.mechanism not in ("discrete_laplace", "discrete_gaussian"):
        raise ValidationError(
            f"Field {receipt.field!r}: estimate_mean needs a numeric release, the receipt says "
            f"mechanism {receipt.mechanism!r}."
        )
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size < 2:
        raise ValidationError(f"Field {receipt.field!r}: need at least 2 values, got {x.size}.")
    if receipt.grid is not None and receipt.window_units is not None:
        units = np.rint(x / receipt.grid)
        lo, hi = receipt.window_units
        off = (units * receipt.grid != x) | (units < lo) | (units > hi)
        if off.any():
            at = int(np.flatnonzero(off)[0])
            raise ValidationError(
                f"Field {receipt.field!r}: value {x[at]!r} at position {at} is not on the grid "
                f"{receipt.grid} within units {receipt.window_units}; it was not produced by "
                "the release the receipt describes."
            )
    mean = float(x.mean())
    stderr = float(x.std(ddof=1) / math.sqrt(x.size))
    z = _z(confidence)
    return MeanEstimate(receipt.field, mean, stderr, mean - z * stderr, mean + z * stderr,
                        int(x.size), confidence)


def _report_counts(reports: Any, receipt: FieldReceipt) -> tuple[npt.NDArray[np.float64], int]:
    categories: Sequence[Any] = receipt.categories or ()
    if receipt.mechanism == "k_rr":
        array = np.asarray(reports, dtype=object).ravel()
        codes = pd.Categorical(array, categories=list(categories)).codes
        if (codes < 0).any():
            at = int(np.flatnonzero(codes < 0)[0])
            raise UnknownCategoryError(
                f"Field {receipt.field!r}: report {array[at]!r} at position {at} is not one of "
                f"the receipt's categories {list(categories)!r}."
            )
        return np.bincount(codes, minlength=len(categories)).astype(np.float64), int(array.size)
    if receipt.mechanism == "oue":
        if isinstance(reports, pd.DataFrame):
            bits = reports[list(receipt.output_columns)].to_numpy()
        else:
            bits = np.asarray(reports)
        if bits.ndim != 2 or bits.shape[1] != len(categories):
            raise ValidationError(
                f"Field {receipt.field!r}: OUE reports must be an (n, {len(categories)}) 0/1 "
                f"matrix, got shape {bits.shape}."
            )
        if not np.isin(bits, (0, 1)).all():
            raise ValidationError(f"Field {receipt.field!r}: OUE reports must be 0 or 1.")
        return bits.sum(axis=0).astype(np.float64), int(bits.shape[0])
    raise ValidationError(
        f"Field {receipt.field!r}: estimate_frequencies needs a k_rr or oue release, the receipt "
        f"says mechanism {receipt.mechanism!r}."
    )


def estimate_frequencies(
    reports: Any, receipt: FieldReceipt, *, confidence: float = 0.95
) -> FrequencyEstimate:
    """Unbiased frequency of each category from k-RR or OUE reports of one field."""
    counts, n = _report_counts(reports, receipt)
    if n < 1:
        raise ValidationError(f"Field {receipt.field!r}: no reports to estimate from.")
    p, q = receipt.keep_probability, receipt.flip_probability
    if p is None or q is None or not p > q:
        raise ValidationError(
            f"Field {receipt.field!r}: the receipt lacks valid keep/flip probabilities "
            f"({p!r}, {q!r})."
        )
    share = counts / n
    freq = (share - q) / (p - q)
    stderr = np.sqrt(share * (1.0 - share) / n) / (p - q)
    z = _z(confidence)
    return FrequencyEstimate(receipt.field, tuple(receipt.categories or ()), freq, stderr,
                             freq - z * stderr, freq + z * stderr, n, confidence)
