"""Categorical local DP: k-ary randomized response and optimized unary encoding, bit-exact.

Both mechanisms compare uniform 64-bit CSPRNG words with integer thresholds,
so the probabilities they realize are exact rationals ``A / 2**64``; the
thresholds are chosen (with 60-digit decimal arithmetic) so that the realized
privacy loss ``realized_epsilon`` never exceeds the ε asked for, and receipts
carry the realized probabilities for the server's estimators.

* :class:`RandomizedResponse` (k-RR, Warner 1965 / Kairouz et al. 2016):
  report the true value with probability ``p = e**ε / (e**ε + k - 1)``, each
  other value with ``q = 1 / (e**ε + k - 1)``. Output: one category per record.
  Best for small domains (k < 3 e**ε + 2).
* :class:`UnaryEncoding` (OUE, Wang et al. 2017): one-hot encode, keep the
  true bit at 1 with probability ``1/2``, set each other bit with
  ``q = 1 / (e**ε + 1)``. Output: a 0/1 vector of length k per record.
  Its frequency-estimate variance does not grow with k.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from decimal import Decimal, localcontext
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from dmt_privacy.dp._checks import check_epsilon
from dmt_privacy.dp.random import resolve_source
from dmt_privacy.dp.receipt import FieldReceipt
from dmt_privacy.errors import SchemaError, UnknownCategoryError, ValidationError

__all__ = ["RandomizedResponse", "UnaryEncoding", "krr_thresholds", "oue_threshold"]

_TWO64 = 1 << 64


def _exp(epsilon: float) -> Decimal:
    with localcontext() as ctx:
        ctx.prec = 60
        return Decimal(epsilon).exp()


def _ln_ratio(num: int, den: int) -> float:
    with localcontext() as ctx:
        ctx.prec = 60
        return float((Decimal(num) / Decimal(den)).ln())


def krr_thresholds(epsilon: float, k: int) -> tuple[int, int]:
    """Integers ``(A, B)`` with ``A + (k - 1) B = 2**64`` and ``A / B <= e**ε``, ``A`` maximal.

    A word ``w < A`` keeps the true value; otherwise ``(w - A) // B`` picks one of
    the ``k - 1`` other values, each with exactly ``B`` words.
    """
    e = _exp(epsilon)
    with localcontext() as ctx:
        ctx.prec = 60
        b = int((Decimal(_TWO64) / (e + k - 1)).to_integral_value(rounding="ROUND_CEILING"))
        while _TWO64 - (k - 1) * b > e * b:
            b += 1
    return _TWO64 - (k - 1) * b, b


def oue_threshold(epsilon: float) -> int:
    """Integer ``Q``, minimal with ``(2**64 - Q) / Q <= e**ε``: a bit is set when ``w < Q``."""
    e = _exp(epsilon)
    with localcontext() as ctx:
        ctx.prec = 60
        q = int((Decimal(_TWO64) / (e + 1)).to_integral_value(rounding="ROUND_CEILING"))
        while _TWO64 - q > e * q:
            q += 1
    return q


class _CategoricalMechanism:
    mechanism_name = "abstract"

    def __init__(
        self,
        *,
        epsilon: float,
        categories: Sequence[Any] | None,
        random_state: Any = None,
        field: str = "value",
    ) -> None:
        self.field = field
        self.epsilon = check_epsilon(epsilon, field=field)
        if categories is None or len(categories) < 2:
            raise SchemaError(
                f"Field {field!r}: a categorical mechanism needs the field's categories "
                f"(at least 2) stated in the schema, got {categories!r}."
            )
        self.categories = tuple(categories)
        if len(set(self.categories)) != len(self.categories):
            raise SchemaError(f"Field {field!r}: categories repeat a value: {self.categories!r}.")
        self.k = len(self.categories)
        self.source = resolve_source(random_state)
        self._values = pd.Series(list(self.categories)).to_numpy()

    def encode(self, values: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Indices of ``values`` in the vocabulary; raises naming the field and the value."""
        array = np.asarray(values, dtype=object).ravel()
        codes = pd.Categorical(array, categories=list(self.categories)).codes.astype(np.int64)
        bad = np.flatnonzero(codes < 0)
        if bad.size:
            at = int(bad[0])
            value = array[at]
            if value is None or (isinstance(value, float) and math.isnan(value)):
                raise ValidationError(
                    f"Field {self.field!r}: missing value (NaN/None) at position {at}; fill or "
                    "drop such records before perturbing."
                )
            raise UnknownCategoryError(
                f"Field {self.field!r}: value {value!r} at position {at} is not one of its "
                f"categories {list(self.categories)!r}. Map it to a known category or extend "
                "the schema."
            )
        return codes

    def decode(self, indices: npt.ArrayLike) -> npt.NDArray[Any]:
        return self._values[np.asarray(indices, dtype=np.int64)]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(epsilon={self.epsilon}, categories={self.categories!r}, "
            f"field={self.field!r})"
        )


class RandomizedResponse(_CategoricalMechanism):
    """k-ary randomized response: ε-DP, one category out per category in.

    ``random_state`` other than ``None`` is NOT secure: for tests only.
    """

    mechanism_name = "k_rr"

    def __init__(
        self,
        *,
        epsilon: float,
        categories: Sequence[Any] | None,
        random_state: Any = None,
        field: str = "value",
    ) -> None:
        super().__init__(epsilon=epsilon, categories=categories, random_state=random_state,
                         field=field)
        self._keep, self._other = self._thresholds()

    def _thresholds(self) -> tuple[int, int]:
        return krr_thresholds(self.epsilon, self.k)

    @property
    def keep_probability(self) -> float:
        return self._keep / _TWO64

    @property
    def flip_probability(self) -> float:
        """Probability of reporting one given other value."""
        return self._other / _TWO64

    @property
    def realized_epsilon(self) -> float:
        return _ln_ratio(self._keep, self._other)

    def randomise_indices(self, indices: npt.ArrayLike) -> npt.NDArray[np.int64]:
        x = np.asarray(indices, dtype=np.int64)
        w = self.source.words(x.size).reshape(x.shape)
        keep = w < np.uint64(self._keep)
        other = ((w - np.uint64(self._keep)) // np.uint64(self._other)).astype(np.int64)
        other += other >= x
        return np.where(keep, x, other)

    def randomise(self, values: npt.ArrayLike) -> npt.NDArray[Any]:
        """Perturbed categories for ``values`` (vectorized)."""
        shape = np.shape(values)
        return self.decode(self.randomise_indices(self.encode(values))).reshape(shape)

    __call__ = randomise

    def field_receipt(self) -> FieldReceipt:
        return FieldReceipt(
            field=self.field,
            mechanism=self.mechanism_name,
            epsilon=self.epsilon,
            realized_epsilon=self.realized_epsilon,
            output_columns=(self.field,),
            categories=self.categories,
            keep_probability=self.keep_probability,
            flip_probability=self.flip_probability,
        )


class UnaryEncoding(_CategoricalMechanism):
    """Optimized unary encoding (OUE): ε-DP, a 0/1 vector of length k per record.

    Output columns in a DataFrame are ``"<field>=<category>"``.
    ``random_state`` other than ``None`` is NOT secure: for tests only.
    """

    mechanism_name = "oue"

    def __init__(
        self,
        *,
        epsilon: float,
        categories: Sequence[Any] | None,
        random_state: Any = None,
        field: str = "value",
    ) -> None:
        super().__init__(epsilon=epsilon, categories=categories, random_state=random_state,
                         field=field)
        self._q = oue_threshold(self.epsilon)

    @property
    def keep_probability(self) -> float:
        return 0.5

    @property
    def flip_probability(self) -> float:
        """Probability that a bit other than the true value's is reported as 1."""
        return self._q / _TWO64

    @property
    def realized_epsilon(self) -> float:
        return _ln_ratio(_TWO64 - self._q, self._q)

    @property
    def output_columns(self) -> tuple[str, ...]:
        return tuple(f"{self.field}={c}" for c in self.categories)

    def randomise_indices(self, indices: npt.ArrayLike) -> npt.NDArray[np.uint8]:
        x = np.asarray(indices, dtype=np.int64).ravel()
        w = self.source.words(x.size * self.k).reshape(x.size, self.k)
        bits = (w < np.uint64(self._q)).astype(np.uint8)
        rows = np.arange(x.size)
        bits[rows, x] = (w[rows, x] >> np.uint64(63)).astype(np.uint8)
        return bits

    def randomise(self, values: npt.ArrayLike) -> npt.NDArray[np.uint8]:
        """An ``(n, k)`` 0/1 matrix, one row per value (vectorized)."""
        return self.randomise_indices(self.encode(values))

    __call__ = randomise

    def field_receipt(self) -> FieldReceipt:
        return FieldReceipt(
            field=self.field,
            mechanism=self.mechanism_name,
            epsilon=self.epsilon,
            realized_epsilon=self.realized_epsilon,
            output_columns=self.output_columns,
            categories=self.categories,
            keep_probability=self.keep_probability,
            flip_probability=self.flip_probability,
        )
