"""Mondrian multidimensional partitioning on integer-coded columns.

Rows are never visited one by one in Python. The partitioning proceeds
level by level: at each level, for every quasi-identifier at once, a single
``bincount`` gives the per-class histogram of codes, from which every class's
balanced split point, the information loss of both halves and (when asked)
the sensitive counts of both halves follow in vectorized numpy. Each class
then takes its best admissible split, or stops.

Codes are positions in a fixed order: ranks of distinct values for numeric
columns, sorted values for plain categorical columns, and leaf positions in
depth-first order for hierarchical columns, whose splits are only allowed
on the boundaries between the children of the class's lowest common
ancestor, so each half stays inside whole subtrees.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from dmt_privacy.anonymity.hierarchy import Hierarchy

__all__ = ["DimensionCoding", "Partition", "mondrian_partition"]


@dataclass(frozen=True)
class DimensionCoding:
    """How one quasi-identifier's codes are read.

    ``kind`` is ``"numeric"`` (codes index ``values``, sorted), ``"set"``
    (codes index ``values``; a class releases its set of values) or
    ``"hierarchy"`` (codes are leaf positions of ``hierarchy``).
    """

    kind: str
    values: np.ndarray
    hierarchy: Hierarchy | None = None

    @property
    def cardinality(self) -> int:
        if self.hierarchy is not None:
            return self.hierarchy.n_leaves
        return len(self.values)

    def width_numeric_span(self) -> float:
        span = float(self.values[-1] - self.values[0]) if len(self.values) else 0.0
        return span if span > 0 else 1.0


@dataclass(frozen=True)
class Partition:
    """Result of :func:`mondrian_partition`.

    ``labels``: class id per row. The tree: for node ``i``, ``split_dim[i]``
    (-1 for a leaf), ``threshold[i]`` (rows with code < threshold go left),
    ``left[i]``, ``right[i]``, and ``leaf_class[i]`` (class id of a leaf).
    """

    labels: np.ndarray
    n_classes: int
    split_dim: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    leaf_class: np.ndarray


def _widths(
    dim: DimensionCoding,
    first: np.ndarray,
    last: np.ndarray,
    distinct: np.ndarray,
) -> np.ndarray:
    """Normalized width (the NCP of one cell) of classes spanning codes [first, last]."""
    if dim.kind == "numeric":
        return (dim.values[last] - dim.values[first]) / dim.width_numeric_span()
    if dim.kind == "set":
        dom = max(len(dim.values) - 1, 1)
        return (distinct - 1) / dom
    h = dim.hierarchy
    assert h is not None
    return h.node_width(h.lca(first, last))


def mondrian_partition(
    codes: np.ndarray,
    dims: Sequence[DimensionCoding],
    k: int,
    *,
    sensitive: np.ndarray | None = None,
    n_sensitive: int = 0,
    admissible: Callable[[np.ndarray], np.ndarray] | None = None,
    strategy: str = "ratio",
) -> Partition:
    """Partition rows into classes of at least ``k`` rows.

    Parameters
    ----------
    codes:
        ``(n, d)`` integer array, one column per quasi-identifier.
    dims:
        The :class:`DimensionCoding` of each column.
    k:
        Minimum class size.
    sensitive, n_sensitive, admissible:
        Sensitive codes (``0 <= s < n_sensitive``) and a function that takes a
        ``(classes, n_sensitive)`` count matrix and says which classes are
        admissible (l-diversity, t-closeness). A split is taken only if both
        halves are admissible.
    strategy:
        ``"ratio"`` (default) scores every admissible boundary of every
        attribute by the information loss it removes divided by the entropy
        of the split (C4.5's gain ratio: loss removed per bit of partition
        resolution spent), so cheap lopsided cuts such as "one continent vs
        the rest" are taken early; ``"gain"`` takes each attribute's most
        balanced boundary and the largest loss removed; ``"widest"`` is
        classic Mondrian (widest normalized attribute, median split).
    """
    n, _n_dims = codes.shape
    codes = np.ascontiguousarray(codes, dtype=np.int64)
    use_sens = admissible is not None and sensitive is not None
    child_start = [
        d.hierarchy.is_child_start() if d.kind == "hierarchy" and d.hierarchy is not None else None
        for d in dims
    ]

    labels = np.full(n, -1, dtype=np.int64)
    split_log: list[tuple[np.ndarray, ...]] = []
    leaf_log: list[tuple[np.ndarray, np.ndarray]] = []
    n_nodes = 1
    n_classes = 0

    rows = np.arange(n, dtype=np.int64)
    seg = np.zeros(n, dtype=np.int64)
    seg_node = np.zeros(1, dtype=np.int64)
    n_seg = 1

    while rows.size:
        sizes = np.bincount(seg, minlength=n_seg)
        if use_sens:
            assert sensitive is not None
            s_rows = sensitive[rows]
            parent_counts = np.bincount(
                seg * n_sensitive + s_rows, minlength=n_seg * n_sensitive
            ).reshape(n_seg, n_sensitive)
        best_score = np.full(n_seg, -np.inf)
        best_dim = np.full(n_seg, -1, dtype=np.int64)
        best_thr = np.zeros(n_seg, dtype=np.int64)
        for j, dim in enumerate(dims):
            x = codes[rows, j]
            card = dim.cardinality
            key = seg * card + x
            if n_seg * card <= 4 * rows.size + 1_000_000:
                hist = np.bincount(key, minlength=n_seg * card)
                nz = np.flatnonzero(hist)
                cnt = hist[nz]
            else:
                nz, cnt = np.unique(key, return_counts=True)
            e_seg = nz // card
            e_code = nz % card
            first_e = np.searchsorted(e_seg, np.arange(n_seg))
            last_e = np.append(first_e[1:], e_seg.size) - 1
            excl = np.cumsum(cnt) - cnt
            before = excl - excl[first_e][e_seg]
            size_e = sizes[e_seg]
            ok = (before >= k) & (size_e - before >= k)
            ok[first_e] = False
            first_code = e_code[first_e]
            last_code = e_code[last_e]
            distinct = last_e - first_e + 1
            child_node = None
            node_start = None
            if child_start[j] is not None:
                h = dim.hierarchy
                assert h is not None
                parent_node = h.lca(first_code, last_code)
                depth = h.node_depth[parent_node]
                starts_j = child_start[j]
                assert starts_j is not None
                max_depth = starts_j.shape[0] - 1
                child_depth = np.minimum(depth + 1, max_depth)[e_seg]
                # A cut between two present leaves is a subtree boundary when they lie in
                # different children of the class's node, whether or not the right child's
                # first leaf (in file order) is present; the cut is placed at that child's
                # first leaf, so absent leaves of each child fall on the child's side.
                child_node = h.ancestors[child_depth, e_code]
                node_start = h.node_start
                prev_code = np.concatenate([e_code[:1], e_code[:-1]])
                ok &= child_node != h.ancestors[child_depth, prev_code]
            if not ok.any():
                continue
            if strategy == "ratio":
                e_all = np.flatnonzero(ok)
                es = e_seg[e_all]
                nl = before[e_all].astype(np.float64)
                nr = size_e[e_all] - nl
                wp = _widths(dim, first_code[es], last_code[es], distinct[es])
                wl = _widths(dim, first_code[es], e_code[e_all - 1], e_all - first_e[es])
                wr = _widths(dim, e_code[e_all], last_code[es], last_e[es] - e_all + 1)
                sz = size_e[e_all].astype(np.float64)
                gain = (sz * wp - nl * wl - nr * wr) / sz
                pl = nl / sz
                split_entropy = -(pl * np.log2(pl) + (1 - pl) * np.log2(1 - pl))
                ratio = gain / split_entropy
                order = np.lexsort((-ratio, es))
                es_sorted = es[order]
                head = np.ones(order.size, dtype=bool)
                head[1:] = es_sorted[1:] != es_sorted[:-1]
                e = e_all[order[head]]
                c_segs = e_seg[e]
                thr = (e_code[e] if child_node is None or node_start is None
                       else node_start[child_node[e]])
                score_d = ratio[order[head]] + 1e-9 * wp[order[head]]
            else:
                score = np.where(ok, np.abs(before - size_e / 2.0), np.inf)
                seg_min = np.minimum.reduceat(score, first_e)
                chosen = np.flatnonzero(ok & (score == seg_min[e_seg]))
                c_segs, pick = np.unique(e_seg[chosen], return_index=True)
                e = chosen[pick]
                thr = (e_code[e] if child_node is None or node_start is None
                       else node_start[child_node[e]])
                n_left = before[e]
                n_right = sizes[c_segs] - n_left
                w_parent = _widths(dim, first_code[c_segs], last_code[c_segs], distinct[c_segs])
                w_left = _widths(dim, first_code[c_segs], e_code[e - 1], e - first_e[c_segs])
                w_right = _widths(dim, thr, last_code[c_segs], last_e[c_segs] - e + 1)
                if strategy == "widest":
                    score_d = w_parent
                else:
                    gain = sizes[c_segs] * w_parent - n_left * w_left - n_right * w_right
                    score_d = gain / sizes[c_segs] + 1e-9 * w_parent
            if use_sens:
                assert admissible is not None
                thr_full = np.full(n_seg, -1, dtype=np.int64)
                thr_full[c_segs] = thr
                go_left = x < thr_full[seg]
                left_counts = np.bincount(
                    seg * n_sensitive + s_rows,
                    weights=go_left,
                    minlength=n_seg * n_sensitive,
                ).reshape(n_seg, n_sensitive)[c_segs]
                right_counts = parent_counts[c_segs] - left_counts
                valid = admissible(left_counts) & admissible(right_counts)
                c_segs, thr, score_d = c_segs[valid], thr[valid], score_d[valid]
            better = score_d > best_score[c_segs]
            upd = c_segs[better]
            best_score[upd] = score_d[better]
            best_dim[upd] = j
            best_thr[upd] = thr[better]

        splits = best_dim >= 0
        # Finished classes.
        done_segs = np.flatnonzero(~splits)
        if done_segs.size:
            cls_of_seg = np.full(n_seg, -1, dtype=np.int64)
            cls_of_seg[done_segs] = n_classes + np.arange(done_segs.size)
            leaf_log.append((seg_node[done_segs], cls_of_seg[done_segs]))
            n_classes += done_segs.size
            done_rows = ~splits[seg]
            labels[rows[done_rows]] = cls_of_seg[seg[done_rows]]
        split_segs = np.flatnonzero(splits)
        if split_segs.size == 0:
            break
        # Grow the tree.
        new_left = n_nodes + 2 * np.arange(split_segs.size)
        split_log.append(
            (seg_node[split_segs], best_dim[split_segs], best_thr[split_segs], new_left)
        )
        total_new = 2 * split_segs.size
        n_nodes += total_new
        # Move rows to their halves.
        keep = splits[seg]
        rows = rows[keep]
        seg = seg[keep]
        rank = np.full(n_seg, -1, dtype=np.int64)
        rank[split_segs] = np.arange(split_segs.size)
        go_left = codes[rows, best_dim[seg]] < best_thr[seg]
        seg = 2 * rank[seg] + (~go_left).astype(np.int64)
        seg_node = np.empty(total_new, dtype=np.int64)
        seg_node[0::2] = new_left
        seg_node[1::2] = new_left + 1
        n_seg = total_new

    split_dim = np.full(n_nodes, -1, dtype=np.int64)
    threshold = np.zeros(n_nodes, dtype=np.int64)
    left = np.full(n_nodes, -1, dtype=np.int64)
    right = np.full(n_nodes, -1, dtype=np.int64)
    leaf_class = np.full(n_nodes, -1, dtype=np.int64)
    for node, dim_, thr_, lft in split_log:
        split_dim[node] = dim_
        threshold[node] = thr_
        left[node] = lft
        right[node] = lft + 1
    for node, cls in leaf_log:
        leaf_class[node] = cls
    return Partition(
        labels=labels,
        n_classes=n_classes,
        split_dim=split_dim,
        threshold=threshold,
        left=left,
        right=right,
        leaf_class=leaf_class,
    )
