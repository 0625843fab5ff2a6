"""What every modifier shares: the scikit-learn contract and the containers it accepts.

A modifier takes one item (a string, an image, an audio clip) or a collection
of items: a list or tuple, a 1-D object ``numpy`` array, a ``pandas.Series``,
or a ``pandas.DataFrame`` whose ``columns`` hold items. It returns the same
kind of container holding new items, and never changes the one it was given.
An empty collection, an item with no samples or pixels, and NaN or infinite
values are refused (:class:`ValidationError`), by ``fit`` and ``transform``.

For scikit-learn, a 2-D numeric array is ONE item (a grey image, a
multichannel clip), not a table of samples: the checks of
``sklearn.utils.estimator_checks`` that assume a table are declared by
:meth:`Modifier._expected_failed_checks`, each with its reason.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from dmt_privacy.dp.random import numpy_generator
from dmt_privacy.errors import ValidationError

__all__ = ["Modifier", "check_number"]

#: The checks that treat the rows of a 2-D array as independent samples.
_ROW_CHECKS = ("check_methods_sample_order_invariance", "check_methods_subset_invariance")


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

    def _check_values(self, item: Any) -> str | None:
        """What is wrong with the values of one item (NaN, no samples...), or ``None``."""
        return None

    # --- scikit-learn contract -------------------------------------------
    def fit(self, X: Any = None, y: Any = None) -> Modifier:
        """Validate the parameters and, when given, ``X``; returns ``self``.

        Nothing is learned from the values of ``X``. A DataFrame's column names
        are kept as ``feature_names_in_`` (and their number as
        ``n_features_in_``) for :meth:`get_feature_names_out`.
        """
        self._check_params()
        for name in ("feature_names_in_", "n_features_in_"):
            self.__dict__.pop(name, None)
        if X is not None:
            self._map(X, lambda item: item)
            columns = getattr(X, "columns", None)
            if columns is not None:
                self.feature_names_in_ = np.asarray(list(columns), dtype=object)
                self.n_features_in_ = len(columns)
        return self

    def transform(self, X: Any) -> Any:
        """Modified copies of the items of ``X``, in a container of the same kind."""
        self._check_params()
        rng = numpy_generator(getattr(self, "random_state", None))
        return self._map(X, lambda item: self._modify_item(item, rng))

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """The output columns: the input's, unchanged (a modifier keeps every column).

        Without ``input_features``, the columns of the DataFrame given to :meth:`fit`.
        """
        fitted = getattr(self, "feature_names_in_", None)
        if input_features is None:
            if fitted is None:
                raise ValidationError(
                    f"{type(self).__name__}.get_feature_names_out needs input_features=[...] "
                    "or a fit on a DataFrame first (its columns are the names)."
                )
            return np.asarray(fitted, dtype=object)
        names = np.asarray(list(input_features), dtype=object)
        if fitted is not None and not np.array_equal(names, fitted):
            raise ValidationError(
                f"input_features={list(names)!r} differ from the columns seen by fit, "
                f"{list(fitted)!r}."
            )
        return names

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        return tags

    def _expected_failed_checks(self) -> dict[str, str]:
        """The ``sklearn.utils.estimator_checks`` that fail by design, with the reason.

        For ``check_estimator(m, expected_failed_checks=m._expected_failed_checks())``.
        """
        table = "a 2-D array is one item here, not a table of samples"
        return {
            "check_n_features_in_after_fitting":
                f"{table}: n_features_in_ is set for DataFrames only",
            "check_n_features_in": f"{table}: n_features_in_ is set for DataFrames only",
            "check_dtype_object": "an object array is a collection of items, not numbers",
            "check_estimators_empty_data_messages":
                "an empty item is refused, in this SDK's words rather than sklearn's",
            "check_transformer_data_not_an_array":
                "an array-like that is not an ndarray is not an item",
            "check_fit2d_predict1d":
                "a 1-D array is refused or is an item, without sklearn's 'Reshape' wording",
        }

    # --- containers -------------------------------------------------------
    def _map(self, X: Any, modify: Callable[[Any], Any]) -> Any:
        if self._is_item(X) or (isinstance(X, np.ndarray) and np.iscomplexobj(X)):
            return self._check_item(X, None, modify)
        if type(X).__module__.startswith("scipy.sparse"):
            raise ValidationError(
                f"X is a sparse matrix ({type(X).__name__}); sparse input is not supported: "
                f"pass {self._item_name} or a collection of them."
            )
        if hasattr(X, "__len__") and len(X) == 0:
            raise ValidationError(
                f"X holds no items (an empty {type(X).__name__}): nothing to modify; pass at "
                f"least one ({self._item_name})."
            )
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
            if not names:
                raise ValidationError(
                    "No column to modify: the DataFrame has no columns or columns=[] names none."
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
        where = "X" if position is None else f"X[{position!r}]"
        if isinstance(item, np.ndarray) and np.iscomplexobj(item):
            raise ValidationError(
                f"{where}: Complex data not supported (dtype {item.dtype}); pass real values."
            )
        if not self._is_item(item):
            raise ValidationError(
                f"{where} must be {self._item_name}, got {type(item).__name__}."
            )
        problem = self._check_values(item)
        if problem is not None:
            raise ValidationError(f"{where}: {problem}")
        return modify(item)
