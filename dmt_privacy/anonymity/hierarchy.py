"""Generalization hierarchies: ARX-format CSV files and automatic interval trees.

A :class:`Hierarchy` is a tree whose leaves are a column's values and whose
inner nodes are the labels a value may be generalized to, up to a single
root (``"*"``). Its leaves are kept in depth-first order, so every node covers
a *contiguous* range of leaf positions: Mondrian splits on those positions and
lifting a class to its lowest common ancestor is two array look-ups.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dmt_privacy.errors import SchemaError, ValidationError

__all__ = ["Hierarchy", "interval_hierarchy"]

ROOT_LABEL = "*"


@dataclass(frozen=True)
class Hierarchy:
    """A generalization hierarchy in ARX's row layout.

    Parameters
    ----------
    rows:
        One row per leaf value: the value itself (level 0), then its ancestors
        up to the root. Every row has the same length. If the last column
        holds more than one label, a root ``"*"`` is added above them.
    name:
        Optional name (usually the column's), used in error messages.

    The derived arrays (``leaves``, ``node_labels``, ``node_start``,
    ``node_stop``, ``node_depth``, ``ancestors``) are computed once.
    """

    rows: tuple[tuple[str, ...], ...]
    name: str = ""
    leaves: tuple[str, ...] = field(init=False, repr=False, compare=False)
    node_labels: tuple[str, ...] = field(init=False, repr=False, compare=False)
    node_start: np.ndarray = field(init=False, repr=False, compare=False)
    node_stop: np.ndarray = field(init=False, repr=False, compare=False)
    node_depth: np.ndarray = field(init=False, repr=False, compare=False)
    ancestors: np.ndarray = field(init=False, repr=False, compare=False)
    leaf_numbers: np.ndarray | None = field(init=False, repr=False, compare=False)
    node_low: np.ndarray | None = field(init=False, repr=False, compare=False)
    node_high: np.ndarray | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        rows = tuple(tuple(str(c).strip() for c in r) for r in self.rows)
        label = f"Hierarchy {self.name!r}" if self.name else "Hierarchy"
        if not rows:
            raise SchemaError(f"{label} has no rows; give one row per value.")
        width = len(rows[0])
        for i, r in enumerate(rows):
            if len(r) != width:
                raise SchemaError(
                    f"{label}: row {i} ({list(r)!r}) has {len(r)} levels, row 0 has {width}; "
                    "every row must have the same number of levels."
                )
            if any(c == "" for c in r):
                raise SchemaError(f"{label}: row {i} ({list(r)!r}) has an empty label.")
        leaves_in_rows = [r[0] for r in rows]
        seen: set[str] = set()
        for v in leaves_in_rows:
            if v in seen:
                raise SchemaError(f"{label}: value {v!r} has more than one row.")
            seen.add(v)
        if len({r[-1] for r in rows}) > 1 or width == 1:
            rows = tuple((*r, ROOT_LABEL) for r in rows)
            width += 1
        object.__setattr__(self, "rows", rows)

        # Tree keyed by the path from the root, children in order of first appearance.
        children: dict[tuple[str, ...], list[tuple[str, ...]]] = {}
        for r in rows:
            path = tuple(reversed(r))
            for depth in range(1, width):
                parent, child = path[:depth], path[: depth + 1]
                kids = children.setdefault(parent, [])
                if child not in kids:
                    kids.append(child)
        root = (rows[0][-1],)
        labels: list[str] = []
        starts: list[int] = []
        stops: list[int] = []
        depths: list[int] = []
        leaves: list[str] = []
        node_of_path: dict[tuple[str, ...], int] = {}

        def visit(path: tuple[str, ...]) -> None:
            node = len(labels)
            node_of_path[path] = node
            labels.append(path[-1])
            depths.append(len(path) - 1)
            starts.append(len(leaves))
            stops.append(-1)
            kids = children.get(path, [])
            if not kids:
                leaves.append(path[-1])
            for kid in kids:
                visit(kid)
            stops[node] = len(leaves)

        visit(root)
        object.__setattr__(self, "leaves", tuple(leaves))
        object.__setattr__(self, "node_labels", tuple(labels))
        object.__setattr__(self, "node_start", np.asarray(starts, dtype=np.int64))
        object.__setattr__(self, "node_stop", np.asarray(stops, dtype=np.int64))
        object.__setattr__(self, "node_depth", np.asarray(depths, dtype=np.int64))
        # ancestors[d, leaf] = node id of the leaf's ancestor at depth d (0 = root).
        anc = np.zeros((width, len(leaves)), dtype=np.int64)
        for r in rows:
            path = tuple(reversed(r))
            leaf = node_of_path[path]
            pos = starts[leaf]
            for d in range(width):
                anc[d, pos] = node_of_path[path[: d + 1]]
        object.__setattr__(self, "ancestors", anc)
        try:
            numbers: np.ndarray | None = np.asarray([float(v) for v in leaves], dtype=float)
        except ValueError:
            numbers = None
        low = high = None
        if numbers is not None:
            low = np.array([numbers[s:e].min() for s, e in zip(starts, stops, strict=False)])
            high = np.array([numbers[s:e].max() for s, e in zip(starts, stops, strict=False)])
        object.__setattr__(self, "leaf_numbers", numbers)
        object.__setattr__(self, "node_low", low)
        object.__setattr__(self, "node_high", high)

    # --- construction ---------------------------------------------------------
    @classmethod
    def from_csv(cls, path: str | Path, *, sep: str = ";", name: str = "") -> Hierarchy:
        """Read an ARX hierarchy file: one row per value, ``sep``-separated."""
        p = Path(path)
        if not p.is_file():
            raise SchemaError(f"Hierarchy file {str(p)!r} does not exist; check the path.")
        with p.open(newline="", encoding="utf-8") as fh:
            rows = [tuple(r) for r in csv.reader(fh, delimiter=sep) if any(c.strip() for c in r)]
        return cls(rows=tuple(rows), name=name or p.stem)

    @classmethod
    def from_mapping(cls, mapping: Mapping[Any, Sequence[str]], *, name: str = "") -> Hierarchy:
        """From ``{value: (parent, ..., root)}``, the layout of ``Field.hierarchy``."""
        return cls(rows=tuple((str(k), *map(str, v)) for k, v in mapping.items()), name=name)

    # --- queries --------------------------------------------------------------
    @property
    def height(self) -> int:
        """Number of levels above the leaves."""
        return int(self.ancestors.shape[0] - 1)

    @property
    def n_leaves(self) -> int:
        return len(self.leaves)

    def node_leaf_count(self) -> np.ndarray:
        return self.node_stop - self.node_start

    def lca(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Node id of the lowest common ancestor of leaf positions ``lo`` and ``hi`` (arrays)."""
        lo = np.asarray(lo, dtype=np.int64)
        hi = np.asarray(hi, dtype=np.int64)
        out = self.ancestors[0, lo].copy()
        for d in range(1, self.ancestors.shape[0]):
            same = self.ancestors[d, lo] == self.ancestors[d, hi]
            out = np.where(same, self.ancestors[d, lo], out)
        return out

    def is_child_start(self) -> np.ndarray:
        """``m[d, p]``: leaf position ``p`` starts a node at depth ``d``."""
        anc = self.ancestors
        return self.node_start[anc] == np.arange(anc.shape[1])[None, :]

    def label_index(self) -> dict[str, int]:
        """Label -> node id; leaves win over inner nodes with the same label."""
        out: dict[str, int] = {}
        for node in np.argsort(-self.node_depth, kind="stable"):
            out.setdefault(self.node_labels[int(node)], int(node))
        return out

    def numeric_leaves(self) -> np.ndarray | None:
        """Leaves as floats, or ``None`` when some leaf is not a number."""
        return self.leaf_numbers

    def node_width(self, node: np.ndarray) -> np.ndarray:
        """Normalized width of nodes: numeric span for number leaves, else leaf count."""
        if self.leaf_numbers is not None and self.node_low is not None:
            assert self.node_high is not None
            span = float(self.leaf_numbers.max() - self.leaf_numbers.min()) or 1.0
            return (self.node_high[node] - self.node_low[node]) / span
        return (self.node_leaf_count()[node] - 1) / max(self.n_leaves - 1, 1)

    def encode(self, values: pd.Series, *, column: str = "", unknown: str = "raise"
               ) -> np.ndarray:
        """Leaf position of each value.

        A value with no row in the hierarchy raises :class:`ValidationError`
        naming it (``unknown="raise"``, the default) or gets position -1
        (``unknown="mark"``, for callers that suppress such records one by one).
        """
        col = column or self.name
        if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(
            values.dtype
        ):
            numeric = self.numeric_leaves()
            if numeric is None:
                raise ValidationError(
                    f"Column {col!r} is numeric but its hierarchy has non-numeric leaves "
                    f"(e.g. {self.leaves[0]!r}); give a hierarchy of numbers."
                )
            order = np.argsort(numeric, kind="stable")
            x = values.to_numpy(dtype=float)
            pos = np.searchsorted(numeric[order], x)
            pos = np.clip(pos, 0, len(order) - 1)
            codes = order[pos]
            bad = numeric[codes] != x
        else:
            lookup = {v: i for i, v in enumerate(self.leaves)}
            as_text = values.astype(str).to_numpy()
            codes = pd.Series(as_text).map(lookup).to_numpy()
            bad = pd.isna(codes)
            codes = np.where(bad, 0, codes).astype(np.int64)
        if bad.any() and unknown == "mark":
            return np.where(bad, -1, codes).astype(np.int64)
        if bad.any():
            at = int(np.flatnonzero(bad)[0])
            raise ValidationError(
                f"Column {col!r}: value {values.iloc[at]!r} (row {values.index[at]!r}) has no row "
                f"in its hierarchy; add a row for it to the hierarchy file."
            )
        return np.asarray(codes, dtype=np.int64)

    def to_rows(self) -> list[list[str]]:
        return [list(r) for r in self.rows]


#: The most level-1 intervals :func:`interval_hierarchy` makes (each value of a column is a
#: leaf; the intervals between them cost nothing, their count bounds the levels' arithmetic).
MAX_INTERVALS = 10**9


def interval_hierarchy(
    values: Iterable[float],
    *,
    width: float | None = None,
    fanout: int = 2,
    name: str = "",
) -> Hierarchy:
    """An automatic interval hierarchy for a numeric column.

    Level 1 groups values into intervals ``[lo, lo + width)`` aligned on
    multiples of ``width`` (default: about 1/16 of the range, rounded to
    1, 2 or 5 times a power of ten); each level above merges ``fanout``
    neighbouring intervals, up to the root ``"*"``.
    """
    vals = np.unique(np.asarray(list(values), dtype=float))
    if vals.size == 0 or not np.isfinite(vals).all():
        raise ValidationError(
            f"interval_hierarchy {name!r}: values must be finite and non-empty."
        )
    if fanout < 2:
        raise ValidationError(f"interval_hierarchy: fanout must be at least 2, got {fanout!r}.")
    lo, hi = float(vals[0]), float(vals[-1])
    if not math.isfinite(hi - lo):
        raise ValidationError(f"interval_hierarchy {name!r}: the values span {lo!r} to {hi!r}, "
                              "wider than a float holds; subtract an offset or scale them.")
    if width is None:
        raw = max((hi - lo) / 16.0, 1e-12)
        base = 10 ** math.floor(math.log10(raw))
        width = next(m * base for m in (1, 2, 5, 10) if m * base >= raw)
    if not (width > 0 and math.isfinite(width)):
        raise ValidationError(f"interval_hierarchy: width must be positive, got {width!r}.")
    if not math.isfinite(lo / width) or not math.isfinite(hi / width):
        raise ValidationError(
            f"interval_hierarchy {name!r}: width {width!r} is too small for values as large "
            f"as {max(abs(lo), abs(hi))!r} (their quotient overflows); choose a larger width.")
    if (hi - lo) / width > MAX_INTERVALS:
        raise ValidationError(
            f"interval_hierarchy {name!r}: width {width!r} cuts {lo!r} to {hi!r} into more than "
            f"{MAX_INTERVALS:,} intervals; choose a larger width.")

    def fmt(x: float) -> str:  # interval edges: multiples of width, float noise dropped
        return str(int(x)) if float(x).is_integer() else f"{x:.15g}"

    def leaf(x: float) -> str:  # every digit: 0.1234567 and 0.1234568 were one leaf
        return str(int(x)) if float(x).is_integer() else repr(float(x))

    origin = math.floor(lo / width) * width

    def edge(i: int) -> float:
        """The i-th edge as its label reads it: a value is put by these, so every label
        holds its values (floor((v - origin) / width) put 0.3 in '[0.2, 0.3)', helper-115)."""
        return float(fmt(origin + i * width))

    bins = []
    for v in vals:
        b = math.floor((v - origin) / width)
        while v < edge(b):
            b -= 1
        while v >= edge(b + 1):
            b += 1
        if not edge(b) < edge(b + 1):
            raise ValidationError(
                f"interval_hierarchy {name!r}: width {width!r} is finer than labels of 15 "
                f"digits show at {v!r}; choose a larger width.")
        bins.append(b)
    first = min(bins)
    n_bins = max(bins) - first + 1
    levels = max(1, math.ceil(math.log(max(n_bins, 2), fanout)))
    rows: list[tuple[str, ...]] = []
    for v, b in zip(vals, bins, strict=True):
        row = [leaf(v)]
        span = 1
        for _ in range(levels):
            start = first + ((b - first) // span) * span
            row.append(f"[{fmt(edge(start))}, {fmt(edge(start + span))})")
            span *= fanout
            if span >= n_bins * fanout:
                break
        row.append(ROOT_LABEL)
        rows.append(tuple(row))
    depth = max(len(r) for r in rows)
    rows = [(*r[:-1], *([r[-2]] * (depth - len(r))), r[-1]) for r in rows]
    return Hierarchy(rows=tuple(rows), name=name)
