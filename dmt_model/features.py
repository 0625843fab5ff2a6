"""Featurizer: raw records to model inputs, fitted once on the server's proxy data.

Numeric fields are standardized with the proxy data's mean and *population*
standard deviation (``ddof=0``; a constant column gets a scale of 1). The
reference iOS app divided by the variance instead, which made its predictions
useless on device; here the same fitted numbers are baked into the Core ML
graph, so a device passes raw values and cannot diverge from the server.

Categorical fields become one-hot vectors over a fixed vocabulary (the
schema's categories when declared, otherwise the sorted values seen in the
proxy data). A value outside the vocabulary is handled by an explicit policy:

* ``unknown="error"`` (default): raise :class:`UnknownCategoryError` naming the
  field and the value;
* ``unknown="zero"``: encode it as the all-zero vector, so its embedding is
  zero. This is also what the exported Core ML graph does, since a model on a
  device cannot raise.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from dmt_privacy.errors import SchemaError, UnknownCategoryError, ValidationError
from dmt_privacy.schema import Kind, Role, Schema

__all__ = ["FeatureBatch", "Featurizer"]

FEATURIZER_FORMAT = 1
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
    def input_fields(self) -> list[str]:
        """Every raw input column, categorical first then numeric (the model's order)."""
        return self.categorical_fields + self.numeric_fields

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
            raise SchemaError(f"Schema {self.schema.name!r} has no numeric or categorical input.")
        self.schema.validate(frame, columns=self.input_fields, allow_extra=True)
        values = frame[self.numeric_fields].to_numpy(dtype=np.float64)
        self.mean_ = values.mean(axis=0) if len(values) else np.zeros(len(self.numeric_fields))
        std = values.std(axis=0, ddof=0) if len(values) else np.ones(len(self.numeric_fields))
        self.scale_ = np.where(std > 0, std, 1.0)
        self.vocabularies_: dict[str, list[Any]] = {}
        for name in self.categorical_fields:
            declared = self.schema[name].categories
            seen = sorted(pd.unique(frame[name]).tolist())
            self.vocabularies_[name] = list(declared) if declared is not None else seen
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "mean_"):
            raise ValidationError("This Featurizer is not fitted yet; call fit(proxy_data) first.")

    # --- transforming ---------------------------------------------------------
    def transform(self, frame: pd.DataFrame) -> FeatureBatch:
        """Features of ``frame``'s records; extra columns (the target) are ignored."""
        self._check_fitted()
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
        numeric = ((raw - self.mean_) / self.scale_).astype(np.float32)
        categorical = {}
        for name in self.categorical_fields:
            categorical[name] = self._one_hot(name, frame[name])
        return FeatureBatch(numeric=numeric, categorical=categorical)

    def _one_hot(self, name: str, column: pd.Series) -> np.ndarray:
        vocabulary = self.vocabularies_[name]
        if column.isna().any():
            row = column.index[column.isna().to_numpy().argmax()]
            raise ValidationError(f"Column {name!r} has a missing value at row {row!r}.")
        codes = pd.Categorical(column, categories=vocabulary).codes
        unknown = codes < 0
        if unknown.any() and self.unknown == "error":
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

    def target_values(self, frame: pd.DataFrame) -> np.ndarray:
        """The target column as float32 ``[n]``."""
        if self.target not in frame.columns:
            raise ValidationError(f"Missing target column {self.target!r}.")
        values = frame[self.target].to_numpy(dtype=np.float64)
        if not np.isfinite(values).all():
            row = frame.index[int((~np.isfinite(values)).argmax())]
            raise ValidationError(f"Target column {self.target!r} is not finite at row {row!r}.")
        return values.astype(np.float32)

    # --- JSON -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        self._check_fitted()
        return {
            "format": FEATURIZER_FORMAT,
            "schema": self.schema.to_dict(),
            "unknown": self.unknown,
            "numeric": [
                {"name": n, "mean": float(m), "scale": float(s)}
                for n, m, s in zip(self.numeric_fields, self.mean_, self.scale_, strict=True)
            ],
            "categorical": [
                {"name": n, "vocabulary": self.vocabularies_[n]} for n in self.categorical_fields
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Featurizer:
        if data.get("format") != FEATURIZER_FORMAT:
            raise SchemaError(
                f"Featurizer format {data.get('format')!r} is not supported "
                f"(this SDK reads {FEATURIZER_FORMAT}); upgrade dmt."
            )
        featurizer = cls(Schema.from_dict(data["schema"]), unknown=data["unknown"])
        numeric: Sequence[Mapping[str, Any]] = data["numeric"]
        if [n["name"] for n in numeric] != featurizer.numeric_fields:
            raise SchemaError("Featurizer JSON: numeric fields do not match its schema.")
        featurizer.mean_ = np.array([n["mean"] for n in numeric], dtype=np.float64)
        featurizer.scale_ = np.array([n["scale"] for n in numeric], dtype=np.float64)
        featurizer.vocabularies_ = {c["name"]: list(c["vocabulary"]) for c in data["categorical"]}
        if list(featurizer.vocabularies_) != featurizer.categorical_fields:
            raise SchemaError("Featurizer JSON: categorical fields do not match its schema.")
        return featurizer

    @classmethod
    def from_json(cls, text: str | bytes) -> Featurizer:
        try:
            return cls.from_dict(json.loads(text))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise SchemaError(f"Featurizer JSON is malformed: {exc!r}.") from None
