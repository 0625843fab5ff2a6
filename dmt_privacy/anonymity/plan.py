"""The fitted recoding plan: what devices receive and apply to their own records.

An :class:`AnonymizationPlan` holds the Mondrian tree (which attribute and
threshold each node splits on), the coding of every quasi-identifier, and,
for every class, the generalization it releases: an interval for numeric
fields, a hierarchy node or a value set for categorical ones. It is a frozen
value object; :meth:`AnonymizationPlan.to_json` and
:meth:`AnonymizationPlan.from_json` round-trip it.

:meth:`AnonymizationPlan.apply` routes each record down the tree and releases
its class's generalization. A record whose value its class's generalization
does not contain (a value never seen when the plan was fitted) is
*suppressed*: kept in the output with its quasi-identifiers missing and
reported, never dropped. :func:`release_classes` is the server's side: it
releases only classes holding at least ``k`` records.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from dmt_privacy.anonymity.hierarchy import Hierarchy
from dmt_privacy.anonymity.release import ReleaseRule
from dmt_privacy.anonymity.release import _missing as _missing_value
from dmt_privacy.errors import SchemaError, ValidationError
from dmt_privacy.schema import Schema, finite_reals, row_label

__all__ = [
    "AnonymizationPlan",
    "Anonymized",
    "ColumnCoding",
    "format_generalized",
    "release_classes",
]

PLAN_FORMAT = 1


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclass(frozen=True)
class ColumnCoding:
    """How one quasi-identifier is coded and generalized.

    ``kind``: ``"numeric"`` (``values``: the distinct fitted values, sorted;
    classes release closed intervals), ``"hierarchy"`` (``hierarchy`` given;
    classes release the lowest common ancestor of their values) or ``"set"``
    (``values``: the fitted categories, sorted; classes release the set of
    their values).
    """

    name: str
    kind: str
    values: tuple[Any, ...] = ()
    hierarchy: Hierarchy | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in ("numeric", "hierarchy", "set"):
            raise SchemaError(f"Column {self.name!r}: coding kind {self.kind!r} is unknown.")
        if self.kind == "hierarchy" and self.hierarchy is None:
            raise SchemaError(f"Column {self.name!r}: a hierarchy coding needs a hierarchy.")

    @property
    def cardinality(self) -> int:
        return self.hierarchy.n_leaves if self.hierarchy is not None else len(self.values)

    def value_array(self) -> np.ndarray:
        if self.kind == "numeric":
            return np.asarray(self.values, dtype=float)
        if self.hierarchy is not None:
            return np.asarray(self.hierarchy.leaves, dtype=object)
        return np.asarray(self.values, dtype=object)

    def encode(self, column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
        """(comparable value per row, code per row or -1 when unknown).

        The comparable value is what tree thresholds are compared with: the
        number itself for numeric columns, the code otherwise.
        """
        if self.kind == "numeric":
            x = finite_reals(column, self.name, "the plan codes real ones",
                             purpose=" for this plan", exact=True)
            vals = np.asarray(self.values, dtype=float)
            if vals.size == 0:  # a plan read from JSON: numeric codes are never needed
                return x, np.zeros(len(x), dtype=np.int64)
            pos = np.clip(np.searchsorted(vals, x), 0, len(vals) - 1)
            code = np.where(vals[pos] == x, pos, -1)
            return x, code
        if self.hierarchy is not None:
            code = self.hierarchy.encode(column, column=self.name, unknown="mark")
            return code.astype(float), code
        lookup = {v: i for i, v in enumerate(self.values)}
        code = column.map(lookup).to_numpy()
        code = np.where(pd.isna(code), -1, code).astype(np.int64)
        return code.astype(float), code

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.hierarchy is not None:
            out["hierarchy"] = self.hierarchy.to_rows()
        elif self.kind == "numeric":
            out["values"] = []  # not written; a class's ends are, until widened_to
        else:
            out["values"] = [_jsonable(v) for v in self.values]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ColumnCoding:
        hierarchy = None
        if data.get("hierarchy") is not None:
            rows = tuple(tuple(r) for r in data["hierarchy"])
            hierarchy = Hierarchy(rows=rows, name=str(data["name"]))
        return cls(
            name=str(data["name"]),
            kind=str(data["kind"]),
            values=tuple(data.get("values", ())),
            hierarchy=hierarchy,
        )


def category_order(values: Sequence[Any]) -> list[Any]:
    """The order in which a value-set column codes its categories (the tree cuts ranges of
    it): their natural order where they compare; otherwise numbers in numeric order, then
    text in alphabetical order, then anything else by type and text. Until 7 December the
    fallback ordered every value by type and text, so a domain of ints and 'other' put 10
    before 2, and a plan widened to it merged classes (helper-115)."""
    values = list(values)
    try:
        return sorted(values)
    except TypeError:
        return sorted(values, key=_category_key)


def _category_key(value: Any) -> tuple[Any, ...]:
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        return (0, value)
    if isinstance(value, str):
        return (1, value)
    return (2, type(value).__name__, str(value))


def check_no_missing(frame: pd.DataFrame, columns: Sequence[str], *,
                     what: str = "Quasi-identifier") -> None:
    """Raise :class:`ValidationError` naming the first missing value in ``columns`` (each
    called ``what`` in the message: a sensitive column was once called a quasi-identifier,
    helper-115)."""
    for name in columns:
        nulls = frame[name].isna().to_numpy()
        if nulls.any():
            row = row_label(frame.index[int(nulls.argmax())])
            raise ValidationError(
                f"{what} {name!r} has a missing value (NaN/None) at row {row!r}; "
                "fill or drop such rows before anonymizing."
            )


@dataclass(frozen=True)
class Anonymized:
    """What :meth:`AnonymizationPlan.apply` returns.

    ``data``: the records, index and columns unchanged, quasi-identifiers
    generalized (missing where suppressed). ``class_ids``: the plan's class
    of each record (-1 where suppressed). ``suppressed``: index labels of the
    suppressed records, with ``reasons`` for each.
    """

    data: pd.DataFrame
    class_ids: np.ndarray
    suppressed: pd.Index
    reasons: pd.Series


@dataclass(frozen=True)
class AnonymizationPlan:
    """A fitted Mondrian recoding, serializable and applicable to new records.

    Built by :class:`~dmt_privacy.anonymity.KAnonymizer`; read it back with
    :meth:`from_json`. Tree node ``i`` splits on quasi-identifier
    ``split_dim[i]`` (``-1``: a leaf of class ``leaf_class[i]``): a record
    goes left when its value (numeric) or code is below ``threshold[i]``.
    """

    quasi_identifiers: tuple[str, ...]
    codings: tuple[ColumnCoding, ...]
    split_dim: tuple[int, ...]
    threshold: tuple[float, ...]
    left: tuple[int, ...]
    right: tuple[int, ...]
    leaf_class: tuple[int, ...]
    class_low: tuple[tuple[float, ...], ...]
    class_high: tuple[tuple[float, ...], ...]
    class_node: tuple[tuple[int, ...], ...]
    class_sets: tuple[tuple[tuple[int, ...], ...], ...]
    k: int
    sensitive: str | None = None
    l: int | None = None  # noqa: E741
    l_kind: str = "distinct"
    c: float = 1.0
    t: float | None = None
    class_suppressed: tuple[bool, ...] = ()
    #: ``((value, probability), ...)`` of the sensitive field in the fitting data (rounded),
    #: what the server measures t against; ``None`` for a numeric sensitive field.
    sensitive_reference: tuple[tuple[Any, float], ...] | None = None

    @property
    def n_classes(self) -> int:
        return len(self.class_suppressed)

    # --- widening for devices -----------------------------------------------------
    def widened(self, domains: Mapping[str, tuple[float, float]]) -> AnonymizationPlan:
        """This plan with each class generalized to its whole region of the tree.

        A plan fitted on proxy data releases, per class, the tightest
        generalization of the *fitted* records; a device's record that falls
        between them is suppressed. The widened plan releases instead the
        region of the domain the tree assigns to the class: for numeric
        quasi-identifiers the interval between the thresholds on the class's
        path, closed by ``domains[name] = (low, high)`` (the schema's bounds:
        required for every numeric quasi-identifier, never inferred); for
        categorical ones every category (or the hierarchy node covering every
        leaf) in the class's range of codes. For a value-set column,
        ``domains[name]`` may give its categories (the schema's): the widened
        plan is then coded over them, so it names no category merely because a
        fitted record held it, and a category never fitted falls into a class
        instead of being suppressed. Every record inside the domains
        then maps to a class, and k-anonymity is enforced where it must be in
        the distributed setting: by the server's :func:`release_classes`.
        """
        numeric = [c.name for c in self.codings if c.kind == "numeric"]
        missing = [n for n in numeric if n not in domains]
        if missing:
            raise ValidationError(
                f"widened needs domain bounds for numeric quasi-identifier(s) {missing!r}; "
                "pass the schema's bounds, e.g. {name: schema[name].bounds}."
            )
        if any(c.kind == "set" and c.name in domains for c in self.codings):
            return self._with_set_domains(domains).widened(
                {k: v for k, v in domains.items()
                 if k in numeric})
        upper = [float(domains[c.name][1]) if c.kind == "numeric" else float(c.cardinality)
                 for c in self.codings]
        lower = [float(domains[c.name][0]) if c.kind == "numeric" else 0.0
                 for c in self.codings]
        n_classes = self.n_classes
        region_low = np.tile(np.asarray(lower), (n_classes, 1))
        region_high = np.tile(np.asarray(upper), (n_classes, 1))
        stack = [(0, np.asarray(lower), np.asarray(upper))]
        while stack:
            node, lo, hi = stack.pop()
            dim = self.split_dim[node]
            if dim < 0:
                region_low[self.leaf_class[node]] = lo
                region_high[self.leaf_class[node]] = hi
                continue
            cut = self.threshold[node]
            left_hi, right_lo = hi.copy(), lo.copy()
            left_hi[dim] = min(hi[dim], cut)
            right_lo[dim] = max(lo[dim], cut)
            stack += [(self.left[node], lo, left_hi), (self.right[node], right_lo, hi)]
        class_low, class_high = list(self.class_low), list(self.class_high)
        class_node, class_sets = list(self.class_node), list(self.class_sets)
        for j, coding in enumerate(self.codings):
            if coding.kind == "numeric":
                class_low[j] = tuple(float(x) for x in region_low[:, j])
                class_high[j] = tuple(float(x) for x in region_high[:, j])
                continue
            first = np.ceil(region_low[:, j]).astype(np.int64)
            last = np.maximum(np.ceil(region_high[:, j]).astype(np.int64) - 1, first)
            if coding.kind == "hierarchy":
                assert coding.hierarchy is not None
                class_node[j] = tuple(int(x) for x in coding.hierarchy.lca(first, last))
            else:
                class_sets[j] = tuple(tuple(range(a, b + 1)) for a, b in
                                      zip(first.tolist(), last.tolist(), strict=True))
        return dataclasses.replace(self, class_low=tuple(class_low), class_high=tuple(class_high),
                                   class_node=tuple(class_node), class_sets=tuple(class_sets))

    def widened_to(self, schema: Schema) -> AnonymizationPlan:
        """This plan widened to ``schema``'s domains: what a policy ships to devices.

        :meth:`widened` with every numeric quasi-identifier's schema bounds and every
        value-set one's schema categories (when the schema lists them). A quasi-identifier
        the schema gives no bounds is refused, naming it: the bounds are never taken
        from the fitted values, which the widened plan exists not to ship.
        """
        domains: dict[str, Any] = {}
        unbounded = []
        for coding in self.codings:
            spec = schema[coding.name] if coding.name in schema else None
            if coding.kind == "numeric" and spec is not None and spec.kind.value != "numeric":
                raise ValidationError(
                    f"Quasi-identifier {coding.name!r} is {spec.kind.value} in schema "
                    f"{schema.name!r} but the plan was fitted on it as numbers (intervals); "
                    "fit it as categories (frame.astype({name: object})), released as value "
                    "sets.")
            if coding.kind == "numeric":
                if spec is None or spec.bounds is None:
                    unbounded.append(coding.name)
                else:
                    domains[coding.name] = spec.bounds
            elif coding.kind == "set" and spec is not None and spec.categories is not None:
                domains[coding.name] = spec.categories
        if unbounded:
            raise ValidationError(
                f"Quasi-identifier(s) {unbounded!r} have no bounds in schema "
                f"{schema.name!r}: a plan for devices is widened to the schema's bounds, "
                "never to the fitted values. Give them bounds (dmt schema init --bounds "
                "NAME=LOW:HIGH, or Field(..., bounds=(low, high))).")
        return self.widened(domains)

    def _with_set_domains(self, domains: Mapping[str, Any]) -> AnonymizationPlan:
        """This plan with value-set columns coded over ``domains[name]`` (the schema's
        categories) instead of the values seen when fitting, so the plan lists no
        category just because a fitted record held it."""
        codings = list(self.codings)
        threshold = list(self.threshold)
        class_sets = list(self.class_sets)
        for j, coding in enumerate(self.codings):
            if coding.kind != "set" or coding.name not in domains:
                continue
            categories = list(dict.fromkeys(domains[coding.name]))
            unknown = [v for v in coding.values if v not in categories]
            if unknown:
                raise ValidationError(
                    f"widened: {coding.name!r} was fitted on value(s) {unknown[:5]!r} that are "
                    f"not in the domain given ({categories[:10]!r}...); pass the schema's "
                    "categories."
                )
            ordered = category_order(categories)
            position = {v: i for i, v in enumerate(ordered)}
            remap = np.asarray([position[v] for v in coding.values], dtype=np.int64)
            if np.any(np.diff(remap) <= 0):
                # fitted in another order (a plan fitted before 7 December on mixed types):
                # the cuts hold only if the fitted values keep theirs, and the domain's other
                # categories follow them
                fitted = set(coding.values)
                ordered = [*coding.values, *(v for v in ordered if v not in fitted)]
                position = {v: i for i, v in enumerate(ordered)}
                remap = np.asarray([position[v] for v in coding.values], dtype=np.int64)
            for node, dim in enumerate(self.split_dim):
                if dim == j:
                    cut = math.ceil(self.threshold[node])
                    threshold[node] = float(remap[cut]) if cut < len(remap) else float(
                        len(ordered))
            class_sets[j] = tuple(tuple(int(remap[v]) for v in members)
                                  for members in self.class_sets[j])
            codings[j] = ColumnCoding(coding.name, "set", tuple(ordered))
        return dataclasses.replace(self, codings=tuple(codings), threshold=tuple(threshold),
                                   class_sets=tuple(class_sets))

    # --- applying ---------------------------------------------------------------
    def apply(self, frame: pd.DataFrame) -> Anonymized:
        """Generalize ``frame``'s quasi-identifiers by this plan; the input is not modified."""
        if not isinstance(frame, pd.DataFrame):
            raise ValidationError(
                f"apply expects a pandas DataFrame, got {type(frame).__name__}."
            )
        missing = [q for q in self.quasi_identifiers if q not in frame.columns]
        if missing:
            raise ValidationError(
                f"Quasi-identifier column(s) {missing!r} are not in the data (columns: "
                f"{list(frame.columns)!r}); the plan was fitted on "
                f"{list(self.quasi_identifiers)!r}."
            )
        check_no_missing(frame, self.quasi_identifiers)
        n = len(frame)
        comparable = np.empty((n, len(self.codings)))
        codes = np.empty((n, len(self.codings)), dtype=np.int64)
        for j, coding in enumerate(self.codings):
            comparable[:, j], codes[:, j] = coding.encode(frame[coding.name])
        split_dim = np.asarray(self.split_dim, dtype=np.int64)
        threshold = np.asarray(self.threshold, dtype=float)
        left = np.asarray(self.left, dtype=np.int64)
        right = np.asarray(self.right, dtype=np.int64)
        node = np.zeros(n, dtype=np.int64)
        active = np.flatnonzero(split_dim[node] >= 0)
        while active.size:
            nd = node[active]
            go_left = comparable[active, split_dim[nd]] < threshold[nd]
            node[active] = np.where(go_left, left[nd], right[nd])
            active = active[split_dim[node[active]] >= 0]
        cls = np.asarray(self.leaf_class, dtype=np.int64)[node]
        reason = np.full(n, "", dtype=object)
        suppressed_cls = np.asarray(self.class_suppressed, dtype=bool)
        if suppressed_cls.size:
            hit = suppressed_cls[cls]
            reason[hit] = "class suppressed when the plan was fitted"
        for j, coding in enumerate(self.codings):
            if coding.kind != "numeric":
                unknown = (codes[:, j] < 0) & (reason == "")
                reason[unknown] = f"{coding.name!r} value is not in the plan's " + (
                    "hierarchy" if coding.kind == "hierarchy" else "categories")
        ok = reason == ""
        for j, coding in enumerate(self.codings):
            if coding.kind == "numeric":
                low = np.asarray(self.class_low[j])[cls]
                high = np.asarray(self.class_high[j])[cls]
                inside = (comparable[:, j] >= low) & (comparable[:, j] <= high)
            elif coding.kind == "hierarchy":
                h = coding.hierarchy
                assert h is not None
                nodes = np.asarray(self.class_node[j], dtype=np.int64)[cls]
                inside = (codes[:, j] >= h.node_start[nodes]) & (codes[:, j] < h.node_stop[nodes])
            else:
                card = max(coding.cardinality, 1)
                members = np.asarray(
                    [c * card + v for c, vs in enumerate(self.class_sets[j]) for v in vs],
                    dtype=np.int64,
                )
                inside = (codes[:, j] >= 0) & np.isin(cls * card + codes[:, j], members)
            fresh = ok & ~inside
            reason[fresh] = f"{coding.name!r} outside its class's generalization"
            ok &= inside
        cls_out = np.where(ok, cls, -1)
        data = self.release(frame, cls_out)
        sup = ~ok
        return Anonymized(
            data=data,
            class_ids=cls_out,
            suppressed=frame.index[sup],
            reasons=pd.Series(reason[sup], index=frame.index[sup], dtype=object),
        )

    def suppressed_group_releasable(self, values: Sequence[Any] | np.ndarray) -> bool:
        """Whether suppressed records may keep these sensitive values, seen as one class.

        The suppressed records of a release share one generalization (every
        quasi-identifier missing), so they are a class like any other: they
        keep their sensitive values only if that class meets k, l and t
        (t against :attr:`sensitive_reference` with the equal distance, never
        below the hierarchical one). Without a reference (a numeric sensitive
        field) and with t set, the answer is no: fail closed.
        """
        n = len(values)
        if n < self.k:
            return False
        if self.l is None and self.t is None:
            return True
        if self.t is not None and not self.sensitive_reference:
            return False
        if any(_missing_value(v) for v in values):
            return False  # l and t are judged on known values only
        rule = ReleaseRule(k=1, sensitive=self.sensitive or "sensitive", l=self.l,
                           l_kind=self.l_kind, c=self.c, t=self.t,
                           reference=self.sensitive_reference)
        return rule.admits(np.arange(n), list(values))

    def release(self, frame: pd.DataFrame, class_ids: np.ndarray) -> pd.DataFrame:
        """A copy of ``frame`` with quasi-identifiers replaced by their classes' generalizations.

        Suppressed records (class id -1) keep their rows, with every
        quasi-identifier missing; their sensitive values are withheld
        (missing) too unless the suppressed records as one class meet the
        plan's k, l and t (:meth:`suppressed_group_releasable`).
        """
        out = frame.copy()
        cls = np.asarray(class_ids, dtype=np.int64)
        sup = cls < 0
        sensitive = self.sensitive
        if sup.any() and sensitive is not None and sensitive in out.columns and (
                not self.suppressed_group_releasable(out[sensitive].to_numpy()[sup])):
            column = out[sensitive].astype(object)
            column[sup] = None
            out[sensitive] = column
        safe = np.where(sup, 0, cls)
        for j, coding in enumerate(self.codings):
            if coding.kind == "numeric":
                low = np.asarray(self.class_low[j], dtype=float)[safe]
                high = np.asarray(self.class_high[j], dtype=float)[safe]
                low[sup] = np.nan
                high[sup] = np.nan
                col: Any = pd.arrays.IntervalArray.from_arrays(low, high, closed="both")
            elif coding.kind == "hierarchy":
                h = coding.hierarchy
                assert h is not None
                labels = list(dict.fromkeys(h.node_labels))
                label_pos = {lab: i for i, lab in enumerate(labels)}
                node_to_cat = np.asarray([label_pos[lab] for lab in h.node_labels])
                nodes = np.asarray(self.class_node[j], dtype=np.int64)[safe]
                cat = np.where(sup, -1, node_to_cat[nodes])
                col = pd.Categorical.from_codes(cat, categories=labels)
            else:
                values = coding.value_array()
                sets = np.empty(len(self.class_sets[j]) + 1, dtype=object)
                for c, members in enumerate(self.class_sets[j]):
                    sets[c] = frozenset(values[list(members)].tolist())
                sets[-1] = None
                col = sets[np.where(sup, -1, cls)]
            out[coding.name] = pd.Series(col, index=frame.index)
        return out

    # --- JSON -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "quasi_identifiers": list(self.quasi_identifiers),
            "codings": [c.to_dict() for c in self.codings],
            "tree": {
                "split_dim": list(self.split_dim),
                "threshold": list(self.threshold),
                "left": list(self.left),
                "right": list(self.right),
                "leaf_class": list(self.leaf_class),
            },
            "classes": {
                "low": [list(v) for v in self.class_low],
                "high": [list(v) for v in self.class_high],
                "node": [list(v) for v in self.class_node],
                "sets": [[list(s) for s in v] for v in self.class_sets],
                "suppressed": list(self.class_suppressed),
            },
            "privacy": {
                "k": self.k,
                "sensitive": self.sensitive,
                "l": self.l,
                "l_kind": self.l_kind,
                "c": self.c,
                "t": self.t,
                "reference": None if self.sensitive_reference is None else [
                    [_jsonable(v), p] for v, p in self.sensitive_reference],
            },
        }

    def to_json(self) -> str:
        """Compact JSON; :meth:`from_json` reverses it. A plan fitted on values JSON has no
        type for (timestamps, Decimals) raises :class:`SchemaError` naming the type (a raw
        ``TypeError`` until helper-115)."""
        try:
            return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)
        except TypeError as exc:
            raise SchemaError(
                f"This plan cannot be written as JSON: {exc}. Its quasi-identifiers or "
                "sensitive column hold values JSON has no type for; convert them to numbers "
                "or strings (a timestamp to its ISO text or epoch seconds, a Decimal to a "
                "float or a string) before fitting.") from None

    def check(self) -> AnonymizationPlan:
        """Raise :class:`SchemaError` unless the plan is structurally sound; return it.

        Checks what :meth:`apply` indexes with: the tree (lengths, child and
        class indices in range, every node reached once from the root, no
        cycle), one entry per class in every class array, hierarchy nodes and
        set members inside their codings, finite thresholds and bounds, and
        the privacy parameters.
        """
        def bad(what: str) -> SchemaError:
            return SchemaError(f"Anonymization plan is malformed: {what}; refit the plan or "
                               "fetch an intact copy.")

        n_qi = len(self.quasi_identifiers)
        if n_qi == 0 or len(self.codings) != n_qi or any(
                c.name != q for c, q in zip(self.codings, self.quasi_identifiers, strict=True)):
            raise bad("the codings do not match quasi_identifiers "
                      f"{list(self.quasi_identifiers)!r}")
        nodes = len(self.split_dim)
        if nodes == 0 or any(len(a) != nodes for a in (self.threshold, self.left, self.right,
                                                       self.leaf_class)):
            raise bad(f"tree arrays of lengths {[len(a) for a in (self.split_dim, self.threshold, self.left, self.right, self.leaf_class)]}")  # noqa: E501
        n_classes = self.n_classes
        if n_classes == 0:
            raise bad("no classes")
        # every entry, a leaf's unused children too, is read into an int64 array (2**63 in a
        # leaf's left child loaded, then stopped apply with OverflowError; helper-115)
        for name, array, low, high in (("split_dim", self.split_dim, -1, n_qi),
                                       ("left", self.left, -1, nodes),
                                       ("right", self.right, -1, nodes),
                                       ("leaf_class", self.leaf_class, -1, n_classes)):
            if any(isinstance(v, bool) or not isinstance(v, int | np.integer)
                   or not low <= v < high for v in array):
                raise bad(f"tree.{name} holds a value outside {low}..{high - 1}")
        seen = np.zeros(nodes, dtype=bool)
        stack = [0]
        leaves: list[int] = []
        while stack:
            node = stack.pop()
            if not 0 <= node < nodes or seen[node]:
                raise bad(f"tree node {node} is out of range or reached twice")
            seen[node] = True
            dim = self.split_dim[node]
            if dim == -1:
                if not 0 <= self.leaf_class[node] < n_classes:
                    raise bad(f"leaf {node} names class {self.leaf_class[node]} of {n_classes}")
                leaves.append(self.leaf_class[node])
                continue
            if not 0 <= dim < n_qi:
                raise bad(f"node {node} splits on quasi-identifier {dim} of {n_qi}")
            if not math.isfinite(self.threshold[node]):
                raise bad(f"node {node} has threshold {self.threshold[node]!r}")
            stack += [self.left[node], self.right[node]]
        if not seen.all():
            raise bad(f"{int((~seen).sum())} tree nodes are unreachable")
        for name, arrays, used in (("low", self.class_low, "numeric"),
                                   ("high", self.class_high, "numeric"),
                                   ("node", self.class_node, "hierarchy"),
                                   ("sets", self.class_sets, "set")):
            if len(arrays) != n_qi:
                raise bad(f"classes.{name} has {len(arrays)} columns for {n_qi} "
                          "quasi-identifiers")
            for coding, column in zip(self.codings, arrays, strict=True):
                expected = n_classes if coding.kind == used else 0
                if len(column) != expected:
                    raise bad(f"classes.{name} of {coding.name!r} has {len(column)} entries, "
                              f"expected {expected}")
        for j, coding in enumerate(self.codings):
            if coding.kind == "numeric":
                lo, hi = np.asarray(self.class_low[j]), np.asarray(self.class_high[j])
                if not (np.isfinite(lo).all() and np.isfinite(hi).all() and (lo <= hi).all()):
                    raise bad(f"the intervals of {coding.name!r} are not finite and ordered")
            elif coding.kind == "hierarchy":
                assert coding.hierarchy is not None
                n_nodes = len(coding.hierarchy.node_labels)
                if any(not 0 <= v < n_nodes for v in self.class_node[j]):
                    raise bad(f"a class of {coding.name!r} names a hierarchy node outside "
                              f"0..{n_nodes - 1}")
            else:
                if not all(_hashable(v) for v in coding.values):
                    raise bad(f"the values of {coding.name!r} must be strings, numbers, "
                              "booleans or null, not lists or objects")
                card = coding.cardinality
                if any(not s or any(not 0 <= v < card for v in s) for s in self.class_sets[j]):
                    raise bad(f"a class of {coding.name!r} names a value outside 0..{card - 1}")
        if len(self.class_suppressed) != n_classes:
            raise bad(f"classes.suppressed has {len(self.class_suppressed)} entries for "
                      f"{n_classes} classes")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise bad(f"k={self.k!r}")
        if self.l is not None and (isinstance(self.l, bool) or not isinstance(self.l, int)
                                   or self.l < 1):
            raise bad(f"l={self.l!r}")
        if self.t is not None and (isinstance(self.t, bool) or not isinstance(self.t, (int, float))
                                   or not 0 <= self.t <= 1):
            raise bad(f"t={self.t!r}")
        if (self.l is not None or self.t is not None) and not isinstance(self.sensitive, str):
            raise bad(f"l / t without a sensitive field name (got {self.sensitive!r})")
        if self.l_kind not in ("distinct", "entropy", "recursive"):
            raise bad(f"l_kind={self.l_kind!r}")
        return self

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AnonymizationPlan:
        fmt = data.get("format")
        if fmt != PLAN_FORMAT:
            raise SchemaError(
                f"Anonymization plan format {fmt!r} is not supported (this SDK reads format "
                f"{PLAN_FORMAT}); upgrade dmt or refit the plan."
            )
        try:
            tree, classes, privacy = data["tree"], data["classes"], data["privacy"]
            return cls(
                quasi_identifiers=tuple(data["quasi_identifiers"]),
                codings=tuple(ColumnCoding.from_dict(c) for c in data["codings"]),
                split_dim=tuple(int(v) for v in tree["split_dim"]),
                threshold=tuple(float(v) for v in tree["threshold"]),
                left=tuple(int(v) for v in tree["left"]),
                right=tuple(int(v) for v in tree["right"]),
                leaf_class=tuple(int(v) for v in tree["leaf_class"]),
                class_low=tuple(tuple(float(x) for x in v) for v in classes["low"]),
                class_high=tuple(tuple(float(x) for x in v) for v in classes["high"]),
                class_node=tuple(tuple(int(x) for x in v) for v in classes["node"]),
                class_sets=tuple(
                    tuple(tuple(int(x) for x in s) for s in v) for v in classes["sets"]
                ),
                class_suppressed=tuple(bool(v) for v in classes["suppressed"]),
                k=int(privacy["k"]),
                sensitive=privacy.get("sensitive"),
                l=privacy.get("l"),
                l_kind=str(privacy.get("l_kind", "distinct")),
                c=float(privacy.get("c", 1.0)),
                t=privacy.get("t"),
                sensitive_reference=None if privacy.get("reference") is None else tuple(
                    (v, float(p)) for v, p in privacy["reference"]),
            ).check()
        except SchemaError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError,
                OverflowError) as exc:  # (Infinity where an integer belongs: helper-115)
            raise SchemaError(
                f"Anonymization plan JSON is incomplete or malformed: {exc!r}."
            ) from None

    @classmethod
    def from_json(cls, text: str | bytes) -> AnonymizationPlan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SchemaError(f"Anonymization plan JSON is malformed: {exc}.") from None
        if not isinstance(data, dict):
            raise SchemaError("Anonymization plan JSON must be an object.")
        return cls.from_dict(data)


def _hashable(value: Any) -> bool:
    """Whether ``value`` can be a category: a list or an object read from JSON cannot
    (np.int64 and timestamps, which fitted and widened plans hold, can)."""
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _cell_key(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def release_classes(
    records: pd.DataFrame,
    quasi_identifiers: Sequence[str],
    k: int,
    *,
    package_column: str | None = None,
    rule: ReleaseRule | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Server side: split generalized records into (released, quarantined).

    A class (records with the same generalized quasi-identifiers) is
    released when it holds at least ``k`` records, or, with
    ``package_column``, records from at least ``k`` distinct share packages.
    With ``rule`` (a :class:`~dmt_privacy.anonymity.ReleaseRule`, e.g.
    ``ReleaseRule.from_plan(plan)``) the class must also meet its k, l and t,
    over distinct packages when ``package_column`` is given. Suppressed
    records (all quasi-identifiers missing) are always quarantined. Neither
    frame is the input object; the input is not modified. This judges one
    snapshot; :class:`dmt_model.server.store.SharedStore` applies the same
    rule to cohorts, so that releases over time cannot be differenced.
    """
    if not list(quasi_identifiers):
        raise ValidationError("release_classes: quasi_identifiers is empty; name the columns "
                              "the classes are formed on.")
    missing = [q for q in quasi_identifiers if q not in records.columns]
    if missing:
        raise ValidationError(
            f"release_classes: column(s) {missing!r} are not in the records "
            f"(columns: {list(records.columns)!r})."
        )
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValidationError(f"release_classes: k must be a positive integer, got {k!r}.")
    if records.empty:
        return records.copy(), records.copy()
    codes = np.stack(
        [pd.factorize(records[q], use_na_sentinel=True)[0] for q in quasi_identifiers], axis=1
    )
    all_missing = (codes < 0).all(axis=1)
    _, group = np.unique(codes, axis=0, return_inverse=True)
    group = group.reshape(-1)
    if package_column is not None:
        if package_column not in records.columns:
            raise ValidationError(
                f"release_classes: package_column {package_column!r} is not in the records."
            )
        pkg = pd.factorize(records[package_column])[0]
        pairs = np.unique(np.stack([group, pkg], axis=1), axis=0)
        support = np.bincount(pairs[:, 0], minlength=group.max() + 1)
    else:
        support = np.bincount(group)
    keep = (support[group] >= k) & ~all_missing
    if rule is not None:
        if not isinstance(rule, ReleaseRule):
            raise ValidationError(
                f"release_classes: rule must be a ReleaseRule, got {type(rule).__name__}.")
        if rule.needs_values and rule.sensitive not in records.columns:
            raise ValidationError(
                f"release_classes: the rule's sensitive column {rule.sensitive!r} is not in "
                "the records."
            )
        contributors = (records[package_column].to_numpy() if package_column is not None
                        else np.arange(len(records)))
        values = records[rule.sensitive].to_numpy() if rule.needs_values else None
        order = np.argsort(group, kind="stable")
        bounds = np.flatnonzero(np.diff(group[order])) + 1
        for members in np.split(order, bounds):
            if not keep[members[0]]:
                continue
            # a class holding a record without its sensitive value waits: l and t cannot be
            # judged on it (the rule refuses it; the whole split failed: helper-72)
            if values is not None and any(_missing_value(v) for v in values[members]):
                keep[members] = False
                continue
            if not rule.admits(contributors[members],
                               None if values is None else values[members]):
                keep[members] = False
    return records.loc[keep].copy(), records.loc[~keep].copy()


def format_generalized(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Text for CSV, exact and unambiguous (grammar: :mod:`dmt_privacy.anonymity.released_table`):
    intervals as ``[lo, hi]`` (or the number when lo == hi) written exactly, sets as
    ``{a|b}`` (escaped), hierarchy labels unchanged, suppressed cells empty.

    Each column's cell kind is taken from its cells (intervals, sets, else labels); with the
    plan at hand, :func:`~dmt_privacy.anonymity.released_table.write_released` and
    :func:`~dmt_privacy.anonymity.released_table.column_kinds` say it instead.
    """
    from dmt_privacy.anonymity.released_table import encode_cell

    out = frame.copy()
    for name in columns:
        col = out[name]
        inverse, uniques = pd.factorize(col.astype(object), use_na_sentinel=False)
        present = [u for u in (_cell_key(u) for u in uniques) if u is not None]
        kind = ("interval" if present and isinstance(present[0], pd.Interval)
                else "set" if present and isinstance(present[0], (set, frozenset)) else "node")
        text = np.asarray([encode_cell(_cell_key(u), kind, column=str(name)) for u in uniques],
                          dtype=object)
        out[name] = text[inverse]
    return out
