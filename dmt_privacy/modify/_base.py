"""What every modifier shares: the scikit-learn contract and the containers it accepts.

A modifier takes one item (a string, an image, an audio clip) or a collection
of items: a list or tuple, a 1-D object ``numpy`` array, a ``pandas.Series``,
or a ``pandas.DataFrame`` whose ``columns`` hold items. It returns the same
kind of container holding new items, and never changes the one it was given.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from dmt_privacy.errors import ValidationError

__all__ = ["Modifier", "check_number"]


def check_number(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, hint: str = "") -> float:
    """Validate one numeric parameter and return it as a float.

    Raises :class:`ValidationError` naming the parameter, the value received and
    the allowed range.
    """
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    number = float(value) if ok else float("nan")
    if ok and np.isfinite(number):
        below = low is not None and (number <= low if low_open else number < low)
        above = high is not None and number > high
        if not below and not above:
            return number
    lo = "-inf" if low is None else repr(low)
    hi = "inf" if high is None else repr(high)
    bracket = "(" if low_open else "["
    raise ValidationError(
        f"{name} must be a finite number in {bracket}{lo}, {hi}], got {value!r}."
        + (f" {hint}" if hint else "")
    )


class Modifier(TransformerMixin, BaseEstimator, ABC):  # type: ignore[misc]
    """Base of the modifiers: stateless scikit-learn transformers over items.

    Subclasses implement :meth:`_check_params` (validate, raise
    :class:`ValidationError`), :meth:`_is_item` (is this one item rather than a
    collection?) and :meth:`_modify_item` (a new item from one item, given the
    random generator of this call). ``fit`` only validates; ``transform`` works
    without it, because nothing is learned from data.
    """

    #: name used in messages, e.g. "an image"
    _item_name = "an item"

    # --- to implement ---------------------------------------------------
    @abstractmethod
    def _check_params(self) -> None:
        """Raise ValidationError naming a bad parameter."""

    @abstractmethod
    def _is_item(self, value: Any) -> bool:
        """Whether ``value`` is one item (not a collection of items)."""

    @abstractmethod
    def _modify_item(self, item: Any, rng: np.random.Generator) -> Any:
        """A modified copy of one item."""

    # --- scikit-learn contract -------------------------------------------
    def fit(self, X: Any = None, y: Any = None) -> Modifier:
        """Validate the parameters. Nothing is learned from ``X``; returns ``self``."""
        self._check_params()
        return self

    def transform(self, X: Any) -> Any:
        """Modified copies of the items of ``X``, in a container of the same kind."""
        self._check_params()
        rng = np.random.default_rng(getattr(self, "random_state", None))
        return self._map(X, lambda item: self._modify_item(item, rng))

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        return tags

    # --- containers -------------------------------------------------------
    def _map(self, X: Any, modify: Callable[[Any], Any]) -> Any:
        if self._is_item(X):
            return modify(X)
        import pandas as pd

        if isinstance(X, pd.DataFrame):
            columns: Sequence[Any] | None = getattr(self, "columns", None)
            names = list(X.columns) if columns is None else list(columns)
            missing = [c for c in names if c not in X.columns]
            if missing:
                raise ValidationError(
                    f"columns {missing!r} are not in the DataFrame, whose columns are "
                    f"{list(X.columns)!r}; pass columns= naming existing columns."
                )
            out = X.copy()
            for name in names:
                out[name] = self._map_series(X[name], modify)
            return out
        if isinstance(X, pd.Series):
            return self._map_series(X, modify)
        if isinstance(X, np.ndarray) and X.ndim == 1 and X.dtype == object:
            result = np.empty(len(X), dtype=object)
            for i, item in enumerate(X):
                result[i] = self._check_item(item, i, modify)
            return result
        if isinstance(X, (list, tuple)):
            return [self._check_item(item, i, modify) for i, item in enumerate(X)]
        raise ValidationError(
            f"X must be {self._item_name}, a list, a 1-D object array, a pandas Series or "
            f"DataFrame of them; got {type(X).__name__}."
        )

    def _map_series(self, series: Any, modify: Callable[[Any], Any]) -> Any:
        import pandas as pd

        values = np.empty(len(series), dtype=object)
        for i, (label, item) in enumerate(series.items()):
            values[i] = self._check_item(item, label, modify)
        return pd.Series(values, index=series.index.copy(), name=series.name, dtype=object)

    def _check_item(self, item: Any, position: Any, modify: Callable[[Any], Any]) -> Any:
        if not self._is_item(item):
            raise ValidationError(
                f"X[{position!r}] must be {self._item_name}, got {type(item).__name__}."
            )
        return modify(item)
