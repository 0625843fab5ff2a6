"""l-diversity and t-closeness, checked on class-by-value count matrices.

Every check takes ``counts``, an integer array of shape ``(classes, m)``:
how many records of each class hold each of the ``m`` sensitive values.
That is the form Mondrian holds while it splits, so a candidate split is
judged for thousands of classes in one numpy expression.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Literal

import numpy as np

from dmt_privacy.anonymity.hierarchy import Hierarchy
from dmt_privacy.errors import AnonymizationError

__all__ = [
    "LDiversity",
    "TCloseness",
    "emd_hierarchical",
    "emd_ordered",
    "l_achieved",
]

LKind = Literal["distinct", "entropy", "recursive"]


@dataclass(frozen=True)
class LDiversity:
    """Each class holds "at least ``l`` well-represented" sensitive values.

    ``kind``: ``"distinct"`` (at least ``l`` distinct values), ``"entropy"``
    (entropy of the class's values at least ``log l``) or ``"recursive"``
    (recursive (c, l): the most frequent count is below ``c`` times the sum
    of the counts from the l-th most frequent on).
    """

    l: int  # noqa: E741 - the name of the parameter in the literature
    kind: LKind = "distinct"
    c: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.l, bool) or not isinstance(self.l, (int, np.integer)) or self.l < 1:
            raise AnonymizationError(f"l must be an integer >= 1, got {self.l!r}.")
        if self.kind not in ("distinct", "entropy", "recursive"):
            raise AnonymizationError(
                f"l_kind {self.kind!r} is not one of 'distinct', 'entropy', 'recursive'."
            )
        if self.kind == "recursive" and not (self.c > 0 and math.isfinite(self.c)):
            raise AnonymizationError(f"c must be a positive number, got {self.c!r}.")

    def holds(self, counts: np.ndarray) -> np.ndarray:
        """Boolean per class."""
        counts = np.asarray(counts, dtype=np.float64)
        if self.kind == "distinct":
            return (counts > 0).sum(axis=1) >= self.l
        if self.kind == "entropy":
            return entropy(counts) >= math.log(self.l) - 1e-12
        ordered = -np.sort(-counts, axis=1)
        if self.l - 1 >= ordered.shape[1]:
            return np.zeros(counts.shape[0], dtype=bool)
        tail = ordered[:, self.l - 1 :].sum(axis=1)
        return ordered[:, 0] < self.c * tail

    def describe(self) -> str:
        if self.kind == "recursive":
            return f"recursive ({self.c:g}, {self.l})-diversity"
        return f"{self.kind} {self.l}-diversity"


def entropy(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum(axis=1, keepdims=True)
    p = np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    return terms.sum(axis=1)


def l_achieved(counts: np.ndarray, kind: LKind = "distinct", c: float = 1.0) -> float:
    """The largest l every class satisfies (entropy l may be fractional)."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.shape[0] == 0:
        return float("nan")
    if kind == "distinct":
        return float((counts > 0).sum(axis=1).min())
    if kind == "entropy":
        return float(np.exp(entropy(counts).min()))
    best = 1
    for ell in range(2, counts.shape[1] + 1):
        if LDiversity(ell, "recursive", c).holds(counts).all():
            best = ell
        else:
            break
    return float(best)


def emd_ordered(counts: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """EMD with the ordered distance |i - j| / (m - 1), per class."""
    counts = np.asarray(counts, dtype=np.float64)
    m = counts.shape[1]
    if m < 2:
        return np.zeros(counts.shape[0])
    total = counts.sum(axis=1, keepdims=True)
    p = np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)
    q = np.asarray(reference, dtype=np.float64)[None, :]
    return np.abs(np.cumsum(p - q, axis=1)[:, :-1]).sum(axis=1) / (m - 1)


def emd_hierarchical(counts: np.ndarray, reference: np.ndarray, hierarchy: Hierarchy) -> np.ndarray:
    """EMD with the hierarchical distance of Li et al. (2007), per class.

    Columns of ``counts`` are the hierarchy's leaves in its leaf order. For
    each inner node N: cost(N) = height(N) / H * min(positive, negative extra
    of N's children); the EMD is the sum of the costs. A flat hierarchy gives
    the equal distance (half the L1 distance).
    """
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum(axis=1, keepdims=True)
    p = np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)
    diff = p - np.asarray(reference, dtype=np.float64)[None, :]
    cum = np.concatenate([np.zeros((diff.shape[0], 1)), np.cumsum(diff, axis=1)], axis=1)
    h = hierarchy
    big_h = h.height
    leaf_depth = int(h.node_depth.max())
    out = np.zeros(diff.shape[0])
    parents: dict[int, list[int]] = {}
    # Parent of node n = its ancestor one level up at n's first leaf.
    for node in range(len(h.node_labels)):
        d = int(h.node_depth[node])
        if d == 0:
            continue
        parent = int(h.ancestors[d - 1, h.node_start[node]])
        parents.setdefault(parent, []).append(node)
    for parent, kids in parents.items():
        if len(kids) < 2:
            continue
        extra = np.stack(
            [cum[:, h.node_stop[k]] - cum[:, h.node_start[k]] for k in kids], axis=1
        )
        pos = np.where(extra > 0, extra, 0.0).sum(axis=1)
        neg = np.where(extra < 0, -extra, 0.0).sum(axis=1)
        height = leaf_depth - int(h.node_depth[parent])
        out += height / big_h * np.minimum(pos, neg)
    return out


@dataclass(frozen=True)
class TCloseness:
    """Each class's sensitive distribution is within EMD ``t`` of the whole table's."""

    t: float

    def __post_init__(self) -> None:
        # Any real number (numpy's float32 too, helper-115), never a bool.
        if not (isinstance(self.t, numbers.Real) and not isinstance(self.t, (bool, np.bool_))
                and 0 <= self.t <= 1):
            raise AnonymizationError(f"t must be a number in [0, 1], got {self.t!r}.")
        object.__setattr__(self, "t", float(self.t))
