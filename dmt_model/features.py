"""Featurizer: raw records to model inputs, fitted once on the server's proxy data.

Numeric fields are standardized with the proxy data's mean and *population*
standard deviation (``ddof=0``; a field that barely varies in the proxy, a constant one
included, is ignored: :data:`FLAT_SHARE`; one learned from a sliver of its bounds is held
within :data:`INPUT_REACH` spreads of that mean). The target is standardized too
(``target_mean_``, ``target_scale_``): the foundation learns the standardized target,
which makes training and on-device updates independent of the target's units. The
reference iOS app divided by the variance instead, which made its predictions
useless on device; here the same fitted numbers are baked into the Core ML
graph, so a device passes raw values and cannot diverge from the server.

Categorical fields become one-hot vectors over a fixed vocabulary (the
schema's categories when declared, otherwise the sorted values seen in the
proxy data). An image field's pixels join the numeric inputs, standardized
with the mean and standard deviation of all proxy pixels; a text field
becomes the mean of its tokens' one-hots over the vocabulary of a
:class:`~dmt_privacy.tokens.Tokenizer` fitted on the proxy texts (the device
runs the same tokenizer, shipped in the model's metadata). A categorical
target's classes are the schema's categories (or the sorted values seen); a
numeric target is standardized as below. A category outside the vocabulary
is handled by an explicit policy:

* ``unknown="error"`` (default): raise :class:`UnknownCategoryError` naming the
  field and the value;
* ``unknown="zero"``: encode it as the all-zero vector, so its embedding is
  zero. This is also what the exported Core ML graph does, since a model on a
  device cannot raise.

Shared records reach the server generalized or perturbed;
:meth:`Featurizer.transform_released` turns them into training features:

* a numeric **interval** (``pandas.Interval`` or a ``(low, high)`` pair) becomes
  its midpoint, the value that minimizes the worst-case squared error for a
  value known only to lie in it;
* a numeric value perturbed with local DP is used as it is, never held
  (:data:`INPUT_REACH`): the noise is zero-mean and the grid rounding unbiased, so a
  regression on it stays unbiased in the inputs' expectation (its variance is the
  price);
* a categorical **value set** or **hierarchy node** becomes the uniform
  distribution over the categories it covers (a fractional one-hot, so the
  embedding is the mean of their embeddings); ``"*"``, a suppressed cell
  (``None``/NaN) or an unknown value becomes the uniform distribution over the
  whole vocabulary;
* a field the sharing policy did not share at all is imputed: the proxy mean
  for a numeric field, the uniform distribution for a categorical one;
* a categorical value perturbed with **k-ary randomized response** becomes the
  debiased one-hot ``(onehot(report) − q) / (p − q)``, with p and q the keep
  and flip probabilities from the release receipt: its expectation is the true
  one-hot.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from dmt_model.tasks import Task, task_for
from dmt_privacy.errors import SchemaError, UnknownCategoryError, ValidationError, warn_caller
from dmt_privacy.schema import Kind, Role, Schema, row_label
from dmt_privacy.tokens import Tokenizer

__all__ = ["FLAT_EVIDENCE", "FLAT_FEW", "FLAT_SCALE", "FLAT_SHARE", "INPUT_REACH", "FeatureBatch",
           "Featurizer", "FlatFieldWarning", "FloatPrecisionWarning", "category_codes",
           "coded_input"]

#: |mean| / std above which float32 (7 significant digits) keeps under 1 % of a std's steps.
_FLOAT32_OFFSET = 1e5

#: A numeric field is *flat* when it is constant in the proxy, when its values spread
#: (std) by less than this share of its bounds' width and the proxy does not show it moving
#: the target (:data:`FLAT_EVIDENCE`), or, for a field without bounds, when fewer than
#: :data:`FLAT_FEW` records (and fewer than half) differ from the most common value: the
#: proxy cannot teach what it does, so the foundation ignores it, and fitting warns
#: (:class:`FlatFieldWarning`). A flat field is scaled by :data:`FLAT_SCALE` times
#: its bounds' width (without bounds, its mean's magnitude, at least 1), which puts every
#: value within them (or of that magnitude) at 0 to float32's precision, in the foundation
#: and in the Core ML graph alike. The foundation's weights on any flat field start at zero
#: (:func:`~dmt_model.foundation.network_for`; the featurizer's JSON marks it ``"flat"``,
#: so a loaded one starts them at zero too). A rare value of a field with bounds is no
#: reason: a 0/1 indicator set in 1 % of the records spreads by 10 % of its width, and
#: the foundation learns it (helper-110: ignored, its effect of 5 read as 6e-8; learned,
#: 4.92). Retraining keeps the featurizer, so a flat field stays ignored. A field the proxy
#: covers on 2 % of its bounds, with no effect, is flat: learned, devices elsewhere in the
#: bounds read far outside what it taught (test RMSE 6.7-9.0 against 0.30; helper-116).
#:
#: Before: with 299 records at 5.0 and one at 5.01 (bounds 0–10) the scale was 0.0006, a
#: device's 5.5 was 867 spreads out, and the foundation's test RMSE 26.0 against 0.37
#: where the field held 5.0; a field constant in the proxy kept its untrained random
#: weights (0.64 against 0.36 at 7.0; helper-105), and 0.1 three hundred times, whose std
#: is 1.4e-17, gave 5.5e14 at 0.2 (helper-109). Every bundled data set's fields spread by
#: 3 % of their bounds' width or more.
FLAT_SHARE = 0.01
#: See :data:`FLAT_SHARE`: a field that spreads by less than FLAT_SHARE of its bounds'
#: width is learned all the same when the proxy shows it moving the target: most of its
#: records off its middle value, and a rank test of it against the target (Spearman's, or
#: Kruskal-Wallis's across classes) at p under this. A field with no effect is so learned
#: once in a thousand proxies. helper-112's log-normal income with bounds (0, 10⁷) spreads
#: by 0.62 % of the width and drives the target: ignored, users drawn like the proxy ended
#: personalization at test RMSE 2.65 (5 records), learned and held within
#: :data:`INPUT_REACH`, 1.06 (3 seeds of 30 users; 4.52 against 1.17 for users 4× richer).
FLAT_EVIDENCE = 1e-3
#: See :data:`FLAT_SHARE`: fewer records than this off the most common value of a field
#: without bounds make it flat.
FLAT_FEW = 5
#: See :data:`FLAT_SHARE`: a flat field's scale, in widths of its bounds (or in its mean's
#: magnitude, at least 1, without bounds).
FLAT_SCALE = 1e6


class FlatFieldWarning(UserWarning):
    """Numeric fields barely vary in the proxy, so the foundation ignores them
    (:data:`FLAT_SHARE`): give the proxy records that show their spread, or drop them."""


class FloatPrecisionWarning(UserWarning):
    """A number is so far from zero against its spread that float32, which the device model
    and the foundation compute in, keeps little of that spread: subtract an offset first."""

#: A field learned from a sliver of its bounds (:data:`FLAT_EVIDENCE`) is held within this
#: many spreads (its scale) of the proxy's mean, in the featurizer, the Core ML graph and
#: the ExecuTorch program alike: devices elsewhere in its bounds lie far beyond what the
#: proxy taught, and the foundation's layers extrapolate linearly. Unheld, a device's income
#: of 10⁷, 160 spreads out, read 52-122 (3 seeds) where the truth was 15-17, and users 20×
#: richer than helper-112's proxy ended personalization at test RMSE 8.04 with 40 records,
#: one +607 % above its foundation; held, 2.03 (the income ignored as flat, as until 7
#: December: 2.71; ``benchmarks/skewed_inputs.py``, on a foundation of 500 epochs; on the
#: default foundation, stopped early, 3.71 unheld from a foundation of 19.60, 1.90 held,
#: reach 20 1.70 from a foundation of 5.96 against 2.08). Its own proxy records are
#: never held: a proxy that reaches further is held at the power of 2 (in spreads) that
#: covers its farthest value, so the model publishes the mean, the spread and that bracket,
#: within a factor of 2 of the farthest value, and no proxy record's value. Every other
#: field is not held: held at 10, a log-normal (σ 2) field without bounds read its users
#: beyond 10 spreads as if at 10, and users drawn like the proxy got test RMSE 1.05-1.49
#: against 0.53 (a straight-line effect; helper-120). Numbers perturbed with local DP are
#: not held in training (:meth:`Featurizer.transform_released`): their noise is zero-mean
#: only unclipped. Retraining keeps the featurizer, so a shared value beyond the reach is
#: learned as if at it: shared records up to 15 spreads out left v2 at test RMSE 1.5-1.8
#: there, against 0.6-0.7 unheld (up to 5 spreads: the same).
INPUT_REACH = 10.0
#: Format 2 stores the reach of each field it holds (:data:`INPUT_REACH`); a featurizer
#: that holds none writes format 1, which held nothing and is still read.
FEATURIZER_FORMAT = 2
#: A text field's vocabulary: the proxy texts' tokens seen at least twice, at most 5,000.
TEXT_VOCABULARY = 5_000
TEXT_MIN_COUNT = 2
UnknownPolicy = Literal["error", "zero"]


@dataclass(frozen=True)
class FeatureBatch:
    """Model inputs for n records.

    ``numeric`` is float32 ``[n, n_numeric]`` (standardized); ``categorical``
    maps each categorical field to a float32 one-hot ``[n, vocabulary size]``.
    """

    numeric: np.ndarray
    categorical: dict[str, np.ndarray]

    def __len__(self) -> int:
        return int(self.numeric.shape[0])


def released_numbers(column: pd.Series, *, fallback: float) -> np.ndarray:
    """Numbers of a released numeric column: interval midpoints, values, ``fallback`` for gaps."""
    out = np.empty(len(column), dtype=np.float64)
    for i, value in enumerate(column.tolist()):
        if isinstance(value, pd.Interval):
            out[i] = (value.left + value.right) / 2
        elif isinstance(value, (list, tuple)) and len(value) == 2:
            out[i] = (float(value[0]) + float(value[1])) / 2
        elif value is None or (isinstance(value, float) and math.isnan(value)):
            out[i] = fallback
        else:
            try:
                out[i] = float(value)
            except (TypeError, ValueError):
                raise ValidationError(
                    f"Column {column.name!r}: cannot read {value!r} as a number or interval."
                ) from None
    return out


def coded_input(vocabulary: Sequence[Any]) -> bool:
    """Whether a categorical field enters an exported model as its category's *position*.

    Core ML NeuralNetwork inputs are numbers: a vocabulary of numbers is passed
    as the raw value and compared with the vocabulary inside the graph; any
    other vocabulary (strings) is passed as the value's index in it (the
    schema's ``categories``, shipped in the model's metadata), −1 for a value
    outside it. Either way an unknown value gives the all-zero one-hot.
    """
    return not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vocabulary)


def category_codes(column: pd.Series | np.ndarray, vocabulary: Sequence[Any]) -> np.ndarray:
    """Each value's position in ``vocabulary``, −1 for a value outside it: the codes of
    ``pd.Categorical(column, categories=vocabulary)`` (−1 for a missing value too, unless
    the vocabulary holds one, which ``pd.Categorical`` refuses and a schema's categories
    may), looked up in an index built once per vocabulary (building it cost a device's few
    records ten times the look-up), without pandas' deprecation of values outside it."""
    # (keyed by each value's type too: True == 1 == 1.0, and their indexes differ)
    key = tuple((type(value), value) for value in vocabulary)
    return _categories(key).get_indexer_for(column)  # type: ignore[no-any-return]


@functools.lru_cache(maxsize=256)
def _categories(vocabulary: tuple[tuple[type, Any], ...]) -> pd.Index:
    return pd.Index([value for _, value in vocabulary])


class Featurizer:
    """Standardizes numeric fields and one-hot encodes categorical ones.

    Parameters
    ----------
    schema:
        Describes the records. Every numeric and categorical field that is not
        the target (or an identifier) becomes an input, in schema order.
    unknown:
        ``"error"`` or ``"zero"``: what :meth:`transform` does with a category
        outside the vocabulary (see module docstring).
    """

    def __init__(self, schema: Schema, *, unknown: UnknownPolicy = "error") -> None:
        self.schema = schema
        self.unknown = unknown

    # --- the fields this featurizer reads ---------------------------------
    @property
    def numeric_fields(self) -> list[str]:
        return [f.name for f in self.schema if f.kind is Kind.NUMERIC and f.role not in
                (Role.TARGET, Role.IDENTIFIER)]

    @property
    def categorical_fields(self) -> list[str]:
        return [f.name for f in self.schema if f.kind is Kind.CATEGORICAL and f.role not in
                (Role.TARGET, Role.IDENTIFIER)]

    @property
    def image_fields(self) -> list[str]:
        """Image inputs: each value an array of the field's ``shape``, pixels as captured."""
        return [f.name for f in self.schema if f.kind is Kind.IMAGE and f.role not in
                (Role.TARGET, Role.IDENTIFIER)]

    @property
    def text_fields(self) -> list[str]:
        """Text inputs: tokenized on the device (:mod:`dmt_privacy.tokens`), a bag of tokens."""
        return [f.name for f in self.schema if f.kind is Kind.TEXT and f.role not in
                (Role.TARGET, Role.IDENTIFIER)]

    @property
    def bag_fields(self) -> list[str]:
        """The inputs that feed an embedding: categorical fields (one-hot), then texts
        (the mean of their tokens' one-hots), in :attr:`FeatureBatch.categorical`."""
        return self.categorical_fields + self.text_fields

    @property
    def input_fields(self) -> list[str]:
        """Every raw input column in the model's order: categorical, texts, numeric, images."""
        return self.bag_fields + self.numeric_fields + self.image_fields

    def bag_width(self, name: str) -> int:
        """How wide ``name``'s one-hot or bag vector is: its categories, or its token ids
        except padding (out-of-vocabulary is one)."""
        if name in self.text_fields:
            return self.tokenizers_[name].vocabulary_size - 1
        return len(self.vocabularies_[name])

    @property
    def task(self) -> Task:
        """What the model learns from these inputs (:mod:`dmt_model.tasks`)."""
        return task_for(self.schema)

    def model_input(self, name: str, column: pd.Series) -> np.ndarray:
        """The number(s) an exported model takes for input ``name`` (see :func:`coded_input`)."""
        if name in self.categorical_fields and coded_input(self.vocabularies_[name]):
            return category_codes(column, self.vocabularies_[name]).astype(np.float64)
        if name in self.text_fields:  # ``[n, max_tokens]`` token ids; too long a text raises
            tokenizer = self.tokenizers_[name]
            return np.asarray(tokenizer.encode_many(column.tolist(), strict=True),
                              dtype=np.float64).reshape(len(column), tokenizer.max_tokens)
        return column.to_numpy(dtype=np.float64)

    def image_width(self, name: str) -> int:
        """How many numbers one image of field ``name`` holds (height × width × channels)."""
        return int(np.prod(self.schema[name].shape or ()))

    @property
    def target(self) -> str:
        target = self.schema.target
        if target is None:
            raise SchemaError(f"Schema {self.schema.name!r} has no field with role 'target'.")
        return target.name

    # --- fitting ------------------------------------------------------------
    def fit(self, frame: pd.DataFrame) -> Featurizer:
        if self.unknown not in ("error", "zero"):
            raise ValidationError(
                f"unknown must be 'error' or 'zero', got {self.unknown!r}."
            )
        if not self.input_fields:
            raise SchemaError(f"Schema {self.schema.name!r} has no numeric, categorical or "
                              "image input.")
        unsized = [n for n in self.image_fields if self.schema[n].shape is None]
        if unsized:
            raise SchemaError(f"Image field(s) {unsized!r} need a shape in the schema "
                              "(Field(..., shape=(height, width))) to size the model's input.")
        unsized = [n for n in self.text_fields if self.schema[n].max_tokens is None]
        if unsized:
            raise SchemaError(f"Text field(s) {unsized!r} need max_tokens in the schema "
                              "(Field(..., max_tokens=64)) to size the model's input.")
        self.schema.validate(frame, columns=self.input_fields, allow_extra=True)
        values = frame[self.numeric_fields].to_numpy(dtype=np.float64)
        self.mean_ = values.mean(axis=0) if len(values) else np.zeros(len(self.numeric_fields))
        std = values.std(axis=0, ddof=0) if len(values) else np.ones(len(self.numeric_fields))
        width = np.array([spec.bounds[1] - spec.bounds[0] if spec.bounds else 0.0
                          for spec in (self.schema[n] for n in self.numeric_fields)])
        # A constant column's std is not 0 in floating point (0.1 three hundred times:
        # 1.4e-17), so the values are counted: how many differ from the middle one, which is
        # the most common one wherever fewer than half differ from it.
        n = len(values)
        others = (values != np.partition(values, n // 2, axis=0)[n // 2]).sum(axis=0) \
            if n else np.zeros(len(self.numeric_fields), dtype=np.int64)
        sliver = std < FLAT_SHARE * width  # the proxy shows a sliver of the field's bounds
        # (the rank test runs on slivers only: on 60 fields of 50,000 records it cost 0.9 s)
        narrow = sliver & ~self._moves_target(frame, values, np.where(sliver, others, 0))
        flat = (n > 0) & ((others == 0) | narrow
                          | ((width == 0) & (others < FLAT_FEW) & (2 * others < n)))
        #: numeric fields that barely vary in the proxy (:data:`FLAT_SHARE`), which the
        #: foundation ignores
        self.flat_fields_ = tuple(str(n) for n, f in zip(self.numeric_fields, flat,
                                                         strict=True) if f)
        reach = np.where(width > 0, width, np.maximum(np.abs(self.mean_), 1.0))
        self.scale_ = np.where(flat, np.minimum(FLAT_SCALE * reach, 1e300),
                               np.where(std > 0, std, 1.0))
        farthest = np.abs((values - self.mean_) / self.scale_).max(axis=0) if n \
            else np.zeros(len(self.numeric_fields))
        #: how many spreads from the proxy's mean each numeric input is held within: for a
        #: field learned from a sliver of its bounds, :data:`INPUT_REACH`, or the power of 2
        #: that covers the proxy's farthest value; ∞ (not held) for every other field
        self.reach_ = np.where(~sliver | flat, np.inf,
                               np.where(farthest <= INPUT_REACH, INPUT_REACH,
                                        2.0 ** np.ceil(np.log2(np.maximum(farthest, 1.0)))))
        if self.flat_fields_:
            reasons, narrower = [], []
            for i, name in enumerate(self.numeric_fields):
                if not flat[i]:
                    continue
                if others[i] == 0:
                    reasons.append(f"{name!r} is constant")
                elif width[i] > 0:  # helper-124: generous bounds, not the data, can cause it
                    reasons.append(f"{name!r} spreads by {std[i] / width[i]:.2%} of its "
                                   f"bounds' width")
                    narrower.append(name)
                else:
                    reasons.append(f"{name!r} has {int(others[i])} record(s) off its most "
                                   "common value")
            warn_caller(FlatFieldWarning(
                f"{list(self.flat_fields_)!r} barely vary in these {n} records "
                f"({'; '.join(reasons)}; a field is flat when constant, spread by under "
                f"{FLAT_SHARE:.0%} of its bounds' width, or, without bounds, with fewer than "
                f"{FLAT_FEW} records off its most common value): the foundation ignores "
                "them, since these records cannot teach what they do. Give the proxy records "
                "that show their spread, or drop them from the schema"
                + (f"; if {narrower!r} cannot spread wider than these records do, their "
                   "bounds are wider than the values can be: narrow them to what the values "
                   "can be (never to what the data shows)" if narrower else "") + "."))
        self.image_stats_: dict[str, tuple[float, float]] = {}
        for name in self.image_fields:
            pixels = self._pixels(name, frame[name]) if len(frame) else np.zeros(1)
            std = float(pixels.std())
            self.image_stats_[name] = (float(pixels.mean()), std if std > 0 else 1.0)
        self.tokenizers_: dict[str, Tokenizer] = {
            name: Tokenizer.fit(frame[name].tolist(), max_size=TEXT_VOCABULARY,
                                min_count=TEXT_MIN_COUNT,
                                max_tokens=int(self.schema[name].max_tokens or 1), field=name)
            for name in self.text_fields}
        self._fit_target(frame)
        self._warn_of_offsets()
        self.vocabularies_: dict[str, list[Any]] = {}
        #: each categorical field's vocabulary positions no proxy record holds (categories
        #: the schema declares and the proxy never shows): the foundation's embedding rows
        #: for them start at zero (:func:`~dmt_model.foundation.network_for`), as a category
        #: outside the vocabulary reads, not at a random start no training moves (helper-112)
        self.unseen_categories_: dict[str, tuple[int, ...]] = {}
        for name in self.categorical_fields:
            declared = self.schema[name].categories
            seen = sorted(pd.unique(frame[name]).tolist())
            self.vocabularies_[name] = list(declared) if declared is not None else seen
            if declared is not None:
                held = np.zeros(len(declared), dtype=bool)
                codes = category_codes(frame[name], self.vocabularies_[name])
                held[codes[codes >= 0]] = True
                if not held.all():
                    self.unseen_categories_[name] = tuple(int(i) for i in np.flatnonzero(~held))
        return self

    def _moves_target(self, frame: pd.DataFrame, values: np.ndarray,
                      others: np.ndarray) -> np.ndarray:
        """Which numeric fields the proxy shows moving the target (:data:`FLAT_EVIDENCE`):
        most records off the field's middle value, and a rank test of the field against the
        target (Spearman's for a numeric target, Kruskal-Wallis's across a categorical
        one's classes) at p under :data:`FLAT_EVIDENCE`. Ranks, so a skewed field's tail
        does not decide."""
        from scipy.stats import kruskal, spearmanr

        moves = np.zeros(len(self.numeric_fields), dtype=bool)
        target = self.schema.target
        if target is None or target.name not in frame.columns or not len(values):
            return moves
        if target.kind is Kind.CATEGORICAL:
            labels = frame[target.name].to_numpy(dtype=object)
            known = pd.notna(labels)
        else:
            labels = pd.to_numeric(frame[target.name], errors="coerce").to_numpy(np.float64)
            known = np.isfinite(labels)
        for j in np.flatnonzero(2 * others >= len(values)):  # (others is 0 but on slivers)
            held = known & np.isfinite(values[:, j])
            x, y = values[held, j], labels[held]
            if target.kind is Kind.CATEGORICAL:
                groups = [x[y == c] for c in pd.unique(y)]
                groups = [g for g in groups if len(g)]
                p = kruskal(*groups).pvalue if len(groups) > 1 else 1.0
            else:
                p = spearmanr(x, y).pvalue if len(x) > 2 else 1.0
            moves[j] = bool(np.isfinite(p) and p < FLAT_EVIDENCE)
        return moves

    def held(self, standardized: np.ndarray, *, unheld: Sequence[int] = ()) -> np.ndarray:
        """Standardized numeric fields ``[n, fields]``, each held within ±its :attr:`reach_`
        spreads (:data:`INPUT_REACH`; ∞ for a field not held), but for the columns
        ``unheld``."""
        reach = self.input_reach()[:len(self.numeric_fields)]
        if not np.isfinite(reach).any():
            return standardized
        held = np.clip(standardized, -reach, reach)
        held[:, list(unheld)] = standardized[:, list(unheld)]
        return held

    def input_reach(self) -> np.ndarray:
        """How far each standardized model input (the numeric fields, then every image
        pixel) is held from 0: :attr:`reach_` for a numeric field (∞ where not held), ∞ for
        a pixel. (A scalar :attr:`reach_`, as a test or a benchmark may set, holds every
        numeric field alike.)"""
        pixels = sum(self.image_width(n) for n in self.image_fields)
        return np.r_[np.broadcast_to(self.reach_, (len(self.numeric_fields),)),
                     np.full(pixels, np.inf)]

    def _warn_of_offsets(self) -> None:
        """Warn of numbers far from zero against their spread: the device model standardizes
        in float32, so a timestamp (1.7e9, give or take seconds) kept only 128-second steps
        and the exported model's RMSE doubled, the server's unchanged (helper-69)."""
        far = [(name, float(mean), float(scale)) for name, mean, scale in zip(
            self.numeric_fields, self.mean_, self.scale_, strict=True)
            if abs(mean) > _FLOAT32_OFFSET * scale and name not in self.flat_fields_]
        target = self.schema.target
        if target is not None and abs(self.target_mean_) > _FLOAT32_OFFSET * self.target_scale_:
            far.append((target.name, self.target_mean_, self.target_scale_))
        for name, mean, scale in far:
            warn_caller(FloatPrecisionWarning(
                f"{name!r} averages {mean:.6g} with a spread (std) of {scale:.3g}: the models "
                "compute in float32, which keeps about 7 significant digits, so little of that "
                f"spread survives. Subtract an offset from {name!r} in the data first (e.g. a "
                "timestamp minus the start of its day), on the server and on the devices."))

    def _fit_target(self, frame: pd.DataFrame) -> None:
        """What the target needs to be learned, fitted on the proxy data.

        A regression target's mean and population std (0 and 1 without a
        target): the foundation learns the *standardized* target and turns its
        output back into the target's units with these two numbers, so no
        training or update default depends on the target's units (see
        :mod:`dmt_model.foundation`). A classification target's classes: the
        schema's categories, or else the sorted values seen.
        """
        self.target_mean_, self.target_scale_ = 0.0, 1.0
        self.classes_: list[Any] = []
        target = self.schema.target
        if target is None:
            return
        if target.kind is Kind.CATEGORICAL:
            seen = sorted(pd.unique(frame[target.name]).tolist()) \
                if target.name in frame.columns else []
            self.classes_ = list(target.categories) if target.categories is not None else seen
            if len(self.classes_) < 2:
                raise SchemaError(
                    f"Target {target.name!r} has {len(self.classes_)} class(es); a classifier "
                    "needs at least 2. Declare the categories in the schema.")
            return
        if target.name not in frame.columns or len(frame) == 0:
            return
        values = self.target_values(frame, dtype=np.float64)
        std = float(values.std(ddof=0))
        self.target_mean_ = float(values.mean())
        self.target_scale_ = std if std > 0 else 1.0

    def _check_fitted(self) -> None:
        if not hasattr(self, "mean_"):
            raise ValidationError("This Featurizer is not fitted yet; call fit(proxy_data) first.")

    # --- transforming ---------------------------------------------------------
    def transform(self, frame: pd.DataFrame, *,
                  undeclared: Literal["policy", "zero"] = "policy") -> FeatureBatch:
        """Features of ``frame``'s records; extra columns (the target) are ignored.

        ``undeclared="zero"``: a value outside the vocabulary of a field whose categories
        the schema does not declare (its vocabulary is the proxy's) is a new category, the
        zero vector, whatever :attr:`unknown` says; a field whose categories are declared
        still follows it. Personalization reads a device's records so, as the Core ML
        model does: a user in a city the proxy never showed was refused every update, the
        users personalization helps most (helper-112: -14.2 % at 10 records, -21.1 % at 40).
        """
        self._check_fitted()
        if undeclared not in ("policy", "zero"):
            raise ValidationError(f"undeclared must be 'policy' or 'zero', got {undeclared!r}.")
        missing = [c for c in self.input_fields if c not in frame.columns]
        if missing:
            raise ValidationError(
                f"Missing input column(s) {missing!r}; the model reads {self.input_fields!r}."
            )
        numeric_frame = frame[self.numeric_fields]
        try:
            raw = numeric_frame.to_numpy(dtype=np.float64)
        except (TypeError, ValueError):
            bad = [c for c in self.numeric_fields
                   if not pd.api.types.is_numeric_dtype(numeric_frame[c])]
            raise ValidationError(
                f"Numeric column(s) {bad!r} hold non-numeric values; convert them first."
            ) from None
        bad_cells = ~np.isfinite(raw)
        if bad_cells.any():
            row, col = np.argwhere(bad_cells)[0]
            raise ValidationError(
                f"Column {self.numeric_fields[col]!r} has {raw[row, col]!r} at row "
                f"{frame.index[row]!r}; every input must be a finite number."
            )
        numeric = self._with_images(self.held((raw - self.mean_) / self.scale_).astype(
            np.float32), frame)
        categorical = {}
        for name in self.categorical_fields:
            new = undeclared == "zero" and self.schema[name].categories is None
            categorical[name] = self._one_hot(name, frame[name], strict=not new)
        for name in self.text_fields:
            categorical[name] = self._bag(name, frame[name], strict=True)
        return FeatureBatch(numeric=numeric, categorical=categorical)

    def _bag(self, name: str, column: pd.Series, *, strict: bool) -> np.ndarray:
        """Each text's tokens as the mean of their one-hots over ids 1.. (padding dropped).

        ``strict``: a text longer than the field's ``max_tokens`` raises (input
        to a model); otherwise it is truncated (released records, whose
        synonyms may have added tokens). A missing text gives the zero vector.
        """
        tokenizer = self.tokenizers_[name]
        out = np.zeros((len(column), tokenizer.vocabulary_size - 1), dtype=np.float32)
        for i, text in enumerate(column.tolist()):
            if text is None or (isinstance(text, float) and math.isnan(text)):
                if strict:
                    raise ValidationError(f"Column {name!r} has a missing text at row "
                                          f"{column.index[i]!r}.")
                continue
            ids = np.asarray(tokenizer.encode(text, strict=strict))
            ids = ids[ids > 0]
            if len(ids):
                np.add.at(out[i], ids - 1, np.float32(1.0 / len(ids)))
        return out

    def _pixels(self, name: str, column: pd.Series) -> np.ndarray:
        """``[n, height × width × channels]`` float64 pixels; a missing image is NaN."""
        width = self.image_width(name)
        out = np.full((len(column), width), np.nan)
        for i, value in enumerate(column.tolist()):
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            array = np.asarray(value, dtype=np.float64)
            if array.size != width:
                raise ValidationError(
                    f"Column {name!r}: the image at row {row_label(column.index[i])!r} has shape "
                    f"{array.shape}, but the schema says {self.schema[name].shape}; resize it "
                    "first.")
            out[i] = array.reshape(-1)
        return out

    def _with_images(self, numeric: np.ndarray, frame: pd.DataFrame, *,
                     missing_ok: bool = False) -> np.ndarray:
        """``numeric`` followed by every image's standardized pixels (the model's order).

        With ``missing_ok`` (released records), a missing image or field becomes
        the proxy mean (zeros once standardized), as a missing numeric does.
        """
        if not self.image_fields:
            return numeric
        parts = [numeric]
        for name in self.image_fields:
            mean, scale = self.image_stats_[name]
            if name not in frame.columns:
                if not missing_ok:
                    raise ValidationError(f"Missing input column {name!r}.")
                parts.append(np.zeros((len(frame), self.image_width(name)), np.float32))
                continue
            pixels = (self._pixels(name, frame[name]) - mean) / scale
            bad = ~np.isfinite(pixels)
            if bad.any():
                if not missing_ok:
                    row = row_label(frame.index[int(bad.any(axis=1).argmax())])
                    raise ValidationError(
                        f"Column {name!r}: the image at row {row!r} is missing or holds NaN "
                        "or infinity; every pixel must be a finite number.")
                pixels[bad] = 0.0
            parts.append(pixels.astype(np.float32))
        return np.concatenate(parts, axis=1)

    def _one_hot(self, name: str, column: pd.Series, *, strict: bool = True) -> np.ndarray:
        vocabulary = self.vocabularies_[name]
        if column.isna().any():
            row = row_label(column.index[int(column.isna().to_numpy().argmax())])
            raise ValidationError(f"Column {name!r} has a missing value at row {row!r}.")
        codes = category_codes(column, vocabulary)
        unknown = codes < 0
        if unknown.any() and self.unknown == "error" and strict:
            value = column.iloc[int(unknown.argmax())]
            raise UnknownCategoryError(
                f"Column {name!r}: value {value!r} is not in the vocabulary {vocabulary!r}. "
                "Map it to a known value, or build the Featurizer with unknown='zero' to "
                "encode it as a zero vector (what the Core ML model does)."
            )
        out = np.zeros((len(column), len(vocabulary)), dtype=np.float32)
        known = ~unknown
        out[np.flatnonzero(known), codes[known]] = 1.0
        return out

    def target_values(self, frame: pd.DataFrame, *,
                      dtype: type[np.floating[Any]] = np.float32) -> np.ndarray:
        """The target as the model learns it, one per record.

        A regression target: ``[n]`` of ``dtype`` (float32 by default), every
        one finite. A classification target: ``[n]`` int64 class indices into
        :attr:`classes_` (``dtype`` does not apply); an unknown class raises
        :class:`UnknownCategoryError` naming it.
        """
        if self.target not in frame.columns:
            raise ValidationError(f"Missing target column {self.target!r}.")
        if self.classes_:
            return self._class_indices(frame[self.target])
        values = frame[self.target].to_numpy(dtype=np.float64)
        if not np.isfinite(values).all():
            row = row_label(frame.index[int((~np.isfinite(values)).argmax())])
            raise ValidationError(f"Target column {self.target!r} is not finite at row {row!r}.")
        return values.astype(dtype)

    def _class_indices(self, column: pd.Series) -> np.ndarray:
        codes = category_codes(column, self.classes_).astype(np.int64)
        if (codes < 0).any():
            at = int((codes < 0).argmax())
            value = column.iloc[at]
            value = value.item() if hasattr(value, "item") else value
            row = row_label(column.index[at])
            raise UnknownCategoryError(
                f"Target {self.target!r}: value {value!r} at row {row!r} is not "
                f"one of its classes {self.classes_!r}. Fix the label, or drop the record; "
                "a new class needs a new foundation version.")
        return codes

    # --- released (generalized or perturbed) records ---------------------------
    def transform_released(
        self,
        frame: pd.DataFrame,
        *,
        receipt: Any = None,
        hierarchies: Mapping[str, Mapping[Any, Sequence[Any]]] | None = None,
    ) -> FeatureBatch:
        """Training features of records as the server received them (module docstring).

        ``receipt`` is the local-DP :class:`~dmt_privacy.dp.ReleaseReceipt` the
        records came with (or ``None``); ``hierarchies`` maps a field to
        ``{node: categories under it}`` for nodes the schema's own hierarchy
        does not describe.
        """
        self._check_fitted()
        numeric = np.empty((len(frame), len(self.numeric_fields)), dtype=np.float64)
        for j, name in enumerate(self.numeric_fields):
            if name not in frame.columns:  # a field the sharing policy did not share
                numeric[:, j] = self.mean_[j]
                continue
            numeric[:, j] = released_numbers(frame[name], fallback=float(self.mean_[j]))
        # Numbers perturbed with local DP are not held: their noise averages out only unclipped.
        perturbed = [] if receipt is None else [
            self.numeric_fields.index(f.field) for f in receipt.fields
            if f.field in self.numeric_fields and f.noise_variance is not None]
        numeric = self._with_images(self.held((numeric - self.mean_) / self.scale_,
                                              unheld=perturbed).astype(np.float32),
                                    frame, missing_ok=True)
        k_rr = {}
        if receipt is not None:
            k_rr = {f.field: f for f in receipt.fields if f.mechanism == "k_rr"}
        categorical = {}
        for name in self.categorical_fields:
            leaves = self._leaves(name, hierarchies)
            vocabulary = self.vocabularies_[name]
            out = np.zeros((len(frame), len(vocabulary)), dtype=np.float32)
            column = frame[name].tolist() if name in frame.columns else [None] * len(frame)
            for i, value in enumerate(column):
                covered = leaves(value)
                out[i, covered] = 1.0 / len(covered)
            if name in k_rr:
                p, q = k_rr[name].keep_probability, k_rr[name].flip_probability
                if p is None or q is None or p <= q:
                    raise ValidationError(
                        f"Receipt for {name!r}: k-RR needs keep > flip probability, "
                        f"got {p!r} and {q!r}.")
                out = ((out - q) / (p - q)).astype(np.float32)
            categorical[name] = out
        for name in self.text_fields:
            column = frame[name] if name in frame.columns else pd.Series([None] * len(frame))
            categorical[name] = self._bag(name, column, strict=False)
        return FeatureBatch(numeric=numeric, categorical=categorical)

    def released_target(self, frame: pd.DataFrame) -> np.ndarray:
        """The target of released records: an interval becomes its midpoint, a class its index.

        A class label must arrive as one class (randomized response reports
        one); a generalized or missing label cannot be learned from, so it
        raises, as a missing number does.
        """
        if self.target not in frame.columns:
            raise ValidationError(f"Missing target column {self.target!r}.")
        if self.classes_:
            return self._class_indices(frame[self.target])
        values = released_numbers(frame[self.target], fallback=math.nan)
        if not np.isfinite(values).all():
            row = row_label(frame.index[int((~np.isfinite(values)).argmax())])
            raise ValidationError(
                f"Target {self.target!r} is missing at row {row!r}; drop such records.")
        return values.astype(np.float32)

    def plain_released(self, frame: pd.DataFrame, *,
                       hierarchies: Mapping[str, Mapping[Any, Sequence[Any]]] | None = None,
                       seed: int = 0) -> pd.DataFrame:
        """Released records as plain records, the kind a device holds and a model reads.

        A number's interval becomes its midpoint; a generalized category becomes
        one of the categories it covers, drawn uniformly (from ``seed``); a field
        the records do not carry becomes the proxy's mean or a category drawn
        from all; the target as :meth:`released_target` reads it; text and images
        as they are. Local-DP noise stays. The server personalizes versions on a
        held-out device's package this way
        (:func:`~dmt_model.personalize.compare_on_devices`): both versions see
        the same imputed records, but those are not the records the device
        holds, so the comparison is less certain and may favour the version
        that copes better with midpoints and drawn categories. Targets under
        local DP make it measure something else (randomized-response labels
        can score a flatter version better in log loss): check versions only on
        packages whose targets were shared as they are
        (:func:`~dmt_model.loop.run_loop` refuses otherwise).
        """
        self._check_fitted()
        rng = np.random.default_rng(seed)
        out = pd.DataFrame(index=range(len(frame)))
        for j, name in enumerate(self.numeric_fields):
            out[name] = (released_numbers(frame[name], fallback=float(self.mean_[j]))
                         if name in frame.columns else float(self.mean_[j]))
        for name in self.categorical_fields:
            leaves, vocabulary = self._leaves(name, hierarchies), self.vocabularies_[name]
            column = frame[name].tolist() if name in frame.columns else [None] * len(frame)
            out[name] = pd.Series([vocabulary[int(rng.choice(leaves(v)))] for v in column],
                                  dtype=object)
        for name in [*self.text_fields, *self.image_fields]:
            if name in frame.columns:
                out[name] = frame[name].to_numpy()
        target = self.released_target(frame)
        out[self.target] = (pd.Series([self.classes_[i] for i in target], dtype=object)
                            if self.classes_ else target.astype(np.float64))
        return out[[n for n in self.schema.names if n in out.columns]]

    def _leaves(self, name: str, extra: Mapping[str, Mapping[Any, Sequence[Any]]] | None
                ) -> Any:
        vocabulary = self.vocabularies_[name]
        index = {v: i for i, v in enumerate(vocabulary)}
        everything = list(range(len(vocabulary)))
        nodes: dict[Any, list[int]] = {}
        hierarchy = self.schema[name].hierarchy or {}
        for leaf, ancestors in hierarchy.items():
            for node in ancestors:
                nodes.setdefault(node, []).append(index[leaf])
        for node, members in ((extra or {}).get(name) or {}).items():
            nodes[node] = sorted(index[m] for m in members if m in index) or everything

        def leaves(value: Any) -> list[int]:
            if isinstance(value, (set, frozenset, list, tuple)):
                # In the vocabulary's order: a set iterates in an order that Python's string
                # hashing sets anew in each process, and a draw by position must not follow it.
                return sorted(index[v] for v in value if v in index) or everything
            if value is None or (isinstance(value, float) and math.isnan(value)):
                return everything
            if value in index:
                return [index[value]]
            return nodes.get(value, everything)

        return leaves

    # --- JSON -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        self._check_fitted()
        reach = self.input_reach()[:len(self.numeric_fields)]
        held = bool(np.isfinite(reach).any())
        return {
            "format": FEATURIZER_FORMAT if held else 1,
            "schema": self.schema.to_dict(),
            "unknown": self.unknown,
            "numeric": [
                {"name": n, "mean": float(m), "scale": float(s),
                 **({"reach": float(r)} if math.isfinite(r) else {}),
                 **({"flat": True} if n in self.flat_fields_ else {})}
                for n, m, s, r in zip(self.numeric_fields, self.mean_, self.scale_, reach,
                                      strict=True)
            ],
            "categorical": [
                {"name": n, "vocabulary": self.vocabularies_[n],
                 **({"unseen": list(self.unseen_categories_[n])}
                    if n in self.unseen_categories_ else {})}
                for n in self.categorical_fields
            ],
            "target": ({"classes": self.classes_} if self.classes_ else
                       {"mean": self.target_mean_, "scale": self.target_scale_}),
            **({"images": [{"name": n, "mean": self.image_stats_[n][0],
                            "scale": self.image_stats_[n][1]} for n in self.image_fields]}
               if self.image_fields else {}),
            **({"texts": [{"name": n, "tokenizer": self.tokenizers_[n].to_dict()}
                          for n in self.text_fields]} if self.text_fields else {}),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Featurizer:
        if data.get("format") not in (1, FEATURIZER_FORMAT):
            raise SchemaError(
                f"Featurizer format {data.get('format')!r} is not supported "
                f"(this SDK reads 1 and {FEATURIZER_FORMAT}); upgrade dmt."
            )
        featurizer = cls(Schema.from_dict(data["schema"]), unknown=data["unknown"])
        numeric: Sequence[Mapping[str, Any]] = data["numeric"]
        if [n["name"] for n in numeric] != featurizer.numeric_fields:
            raise SchemaError("Featurizer JSON: numeric fields do not match its schema.")
        featurizer.mean_ = np.array([n["mean"] for n in numeric], dtype=np.float64)
        featurizer.scale_ = np.array([n["scale"] for n in numeric], dtype=np.float64)
        if not (np.isfinite(featurizer.mean_).all() and np.isfinite(featurizer.scale_).all()
                and (featurizer.scale_ > 0).all()):
            raise SchemaError("Featurizer JSON: numeric fields' mean and scale must be finite, "
                              "the scale positive.")
        featurizer.flat_fields_ = tuple(str(n["name"]) for n in numeric if n.get("flat") is True)
        # a field without a reach is not held (format 1 held nothing)
        reach = [n.get("reach", math.inf) if data["format"] >= 2 else math.inf
                 for n in numeric]
        bad = [r for r in reach if isinstance(r, bool) or not isinstance(r, int | float)
               or not (r > 0) or (r != math.inf and not math.isfinite(r))]
        if bad:
            raise SchemaError(f"Featurizer JSON: a numeric field's reach must be a positive "
                              f"number, got {bad[0]!r}.")
        featurizer.reach_ = np.array(reach, dtype=np.float64)
        featurizer.vocabularies_ = {c["name"]: list(c["vocabulary"]) for c in data["categorical"]}
        if list(featurizer.vocabularies_) != featurizer.categorical_fields:
            raise SchemaError("Featurizer JSON: categorical fields do not match its schema.")
        featurizer.unseen_categories_ = {
            c["name"]: tuple(c["unseen"]) for c in data["categorical"] if c.get("unseen")}
        if not all(type(i) is int and 0 <= i < len(featurizer.vocabularies_[name])
                   for name, unseen in featurizer.unseen_categories_.items() for i in unseen):
            raise SchemaError("Featurizer JSON: a categorical field's unseen categories must be "
                              "positions in its vocabulary.")
        # Models written before the target was standardized were trained on raw targets:
        # a mean of 0 and a scale of 1 describe them exactly.
        target = data.get("target", {"mean": 0.0, "scale": 1.0})
        featurizer.classes_ = list(target.get("classes", []))
        featurizer.target_mean_ = float(target.get("mean", 0.0))
        featurizer.target_scale_ = float(target.get("scale", 1.0))
        images = {i["name"]: (float(i["mean"]), float(i["scale"]))
                  for i in data.get("images", [])}
        if list(images) != featurizer.image_fields or not all(
                math.isfinite(m) and math.isfinite(s) and s > 0 for m, s in images.values()):
            raise SchemaError("Featurizer JSON: image fields do not match its schema, or their "
                              "mean and scale are not finite with a positive scale.")
        featurizer.image_stats_ = images
        featurizer.tokenizers_ = {t["name"]: Tokenizer.from_dict(t["tokenizer"])
                                  for t in data.get("texts", [])}
        if list(featurizer.tokenizers_) != featurizer.text_fields:
            raise SchemaError("Featurizer JSON: text fields do not match its schema.")
        if (featurizer.schema.target is not None
                and featurizer.schema.target.kind is Kind.CATEGORICAL) != bool(
                    featurizer.classes_):
            raise SchemaError("Featurizer JSON: the target's classes do not match its schema.")
        if not (math.isfinite(featurizer.target_mean_) and math.isfinite(featurizer.target_scale_)
                and featurizer.target_scale_ > 0):
            raise SchemaError(f"Featurizer JSON: target mean and scale must be finite, the "
                              f"scale positive; got {target!r}.")
        return featurizer

    @classmethod
    def from_json(cls, text: str | bytes) -> Featurizer:
        try:
            return cls.from_dict(json.loads(text))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise SchemaError(f"Featurizer JSON is malformed: {exc!r}.") from None
