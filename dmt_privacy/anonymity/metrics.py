"""Information loss of a released table: NCP, discernibility, average class size.

NCP (normalized certainty penalty) is computed cell by cell from what was
released, as ``docs/targets.md`` defines it: a numeric interval costs
``(hi - lo) / (max - min)`` of the original column; a categorical cell costs
``(leaves under the released node - 1) / (domain size - 1)``, a value set
being lifted to its lowest common ancestor when the column has a hierarchy
(otherwise it costs ``(set size - 1) / (domain size - 1)``); an unchanged
value costs 0 and a suppressed (missing) cell costs 1. The table's NCP is
the mean over all quasi-identifier cells.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from dmt_privacy.anonymity.hierarchy import Hierarchy
from dmt_privacy.anonymity.release import _missing
from dmt_privacy.errors import ValidationError

__all__ = ["InformationLoss", "equivalence_classes", "information_loss", "ncp_by_attribute"]


@dataclass(frozen=True)
class InformationLoss:
    """Information-loss figures of one release.

    ``ncp``: mean NCP over quasi-identifier cells; ``ncp_by_attribute``: the
    mean per column; ``discernibility``: sum of squared class sizes, plus
    ``n`` for each suppressed record; ``average_class_size``: released
    records per class divided by ``k`` (1 is ideal; ``nan`` without ``k``).
    """

    ncp: float
    ncp_by_attribute: Mapping[str, float]
    discernibility: float
    average_class_size: float
    n_classes: int
    n_suppressed: int


def _leaf_positions(h: Hierarchy, items: Any) -> list[int]:
    lookup = {leaf: i for i, leaf in enumerate(h.leaves)}
    out = []
    for item in items:
        key = str(item)
        if key not in lookup and isinstance(item, float) and item.is_integer():
            key = str(int(item))
        if key not in lookup:
            raise ValidationError(
                f"Hierarchy {h.name!r} has no leaf for released value {item!r}."
            )
        out.append(lookup[key])
    return out


def _cell_ncp(
    value: Any,
    original: pd.Series,
    hierarchy: Hierarchy | None,
    span: float,
    domain: int,
    label_index: Mapping[str, int] | None,
) -> float:
    if _missing(value):
        return 1.0
    if isinstance(value, pd.Interval):
        return float(value.right - value.left) / span if span > 0 else 0.0
    if isinstance(value, (frozenset, set, tuple, list)):
        items = list(value)
        if hierarchy is not None:
            pos = _leaf_positions(hierarchy, items)
            node = hierarchy.lca(np.asarray([min(pos)]), np.asarray([max(pos)]))
            return float(hierarchy.node_width(node)[0])
        return (len(set(items)) - 1) / max(domain - 1, 1)
    if hierarchy is not None and label_index is not None:
        key = str(value)
        if key not in label_index and isinstance(value, float) and value.is_integer():
            key = str(int(value))
        if key in label_index:
            return float(hierarchy.node_width(np.asarray([label_index[key]]))[0])
        raise ValidationError(
            f"Released value {value!r} of column {original.name!r} is neither a node of its "
            "hierarchy nor an interval or a set."
        )
    return 0.0


def ncp_by_attribute(
    released: pd.DataFrame,
    original: pd.DataFrame,
    quasi_identifiers: Sequence[str],
    hierarchies: Mapping[str, Hierarchy] | None = None,
) -> dict[str, np.ndarray]:
    """Per column, the NCP of each released cell (aligned on ``released``'s rows)."""
    hierarchies = dict(hierarchies or {})
    out: dict[str, np.ndarray] = {}
    for name in quasi_identifiers:
        if name not in released.columns or name not in original.columns:
            raise ValidationError(
                f"Column {name!r} must be in both the released and the original data."
            )
        orig = original[name]
        h = hierarchies.get(name)
        if pd.api.types.is_numeric_dtype(orig.dtype) and not pd.api.types.is_bool_dtype(orig):
            span = float(orig.max() - orig.min())
        else:
            span = 0.0
        domain = h.n_leaves if h is not None else int(orig.nunique())
        label_index = h.label_index() if h is not None else None
        inverse, uniques = pd.factorize(released[name].astype(object), use_na_sentinel=False)
        costs = np.asarray(
            [_cell_ncp(u, orig, h, span, domain, label_index) for u in uniques], dtype=float
        )
        out[name] = costs[inverse]
    return out


def equivalence_classes(frame: pd.DataFrame, quasi_identifiers: Sequence[str]) -> np.ndarray:
    """Class id of each row: rows with equal released quasi-identifiers share one.

    Missing values are a value of their own (not dropped), whatever the index.
    """
    if len(frame) == 0:
        return np.zeros(0, dtype=np.int64)
    codes = np.stack(
        [
            pd.factorize(frame[q].astype(object), use_na_sentinel=False)[0]
            for q in quasi_identifiers
        ],
        axis=1,
    )
    _, inverse = np.unique(codes, axis=0, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64)


def information_loss(
    released: pd.DataFrame,
    original: pd.DataFrame,
    quasi_identifiers: Sequence[str],
    *,
    hierarchies: Mapping[str, Hierarchy] | None = None,
    k: int | None = None,
) -> InformationLoss:
    """NCP (overall and per attribute), discernibility and average class size.

    ``released`` and ``original`` hold the same records in the same order.
    Records whose quasi-identifiers are all missing count as suppressed.
    """
    if len(released) != len(original):
        raise ValidationError(
            f"released has {len(released)} rows but original has {len(original)}; "
            "pass the same records in the same order."
        )
    per = ncp_by_attribute(released, original, quasi_identifiers, hierarchies)
    n = len(released)
    by_attr = {q: float(v.mean()) if n else 0.0 for q, v in per.items()}
    overall = float(np.mean(list(by_attr.values()))) if by_attr else 0.0
    suppressed = np.ones(n, dtype=bool)
    for q in quasi_identifiers:
        suppressed &= released[q].isna().to_numpy()
    kept = released.loc[~suppressed]
    classes = equivalence_classes(kept, quasi_identifiers)
    sizes = np.bincount(classes) if classes.size else np.zeros(0, dtype=np.int64)
    n_sup = int(suppressed.sum())
    disc = float((sizes.astype(float) ** 2).sum() + n_sup * n)
    avg = float(len(kept) / len(sizes) / k) if (k and len(sizes)) else float("nan")
    return InformationLoss(
        ncp=overall,
        ncp_by_attribute=by_attr,
        discernibility=disc,
        average_class_size=avg,
        n_classes=len(sizes),
        n_suppressed=n_sup,
    )
