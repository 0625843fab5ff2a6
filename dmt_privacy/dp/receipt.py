"""Receipts: what one local-DP release did to each field, as frozen, JSON-ready values.

A :class:`ReleaseReceipt` travels with the perturbed records (in the share
package) and is what the ledger stores. It carries everything the server
needs to validate a release and to estimate from it: per field, the
mechanism, ε (and δ), the bounds, the grid and the noise scale in grid units,
the exact probabilities of the categorical mechanisms; per release, the ε and δ
charged, the privacy unit and whether the noise came from a secure source.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dmt_privacy.errors import ValidationError

__all__ = ["RECEIPT_FORMAT", "FieldReceipt", "ReleaseReceipt"]

RECEIPT_FORMAT = 1


@dataclass(frozen=True)
class FieldReceipt:
    """How one field was perturbed.

    Numeric fields (``discrete_laplace``, ``discrete_gaussian``): outputs are
    ``k * grid`` for integers ``k`` in ``window_units``; ``sensitivity_units`` is
    the width of the snapped domain in grid units and ``scale_units`` the noise
    scale (Laplace ``b`` or Gaussian ``sigma``) in grid units.
    Categorical fields (``k_rr``, ``oue``): ``keep_probability`` is the chance
    of reporting the true value (k-RR) or the true value's bit as 1 (OUE);
    ``flip_probability`` the chance of reporting one given other value (k-RR) or
    another value's bit as 1 (OUE). Both are the exact probabilities the
    sampler realizes, and ``realized_epsilon`` is the privacy loss they give
    (never above ``epsilon``).
    """

    field: str
    mechanism: str
    epsilon: float
    delta: float = 0.0
    realized_epsilon: float | None = None
    output_columns: tuple[str, ...] = ()
    bounds: tuple[float, float] | None = None
    grid: float | None = None
    rounding: str | None = None
    sensitivity_units: int | None = None
    scale_units: float | None = None
    window_units: tuple[int, int] | None = None
    categories: tuple[Any, ...] | None = None
    keep_probability: float | None = None
    flip_probability: float | None = None

    @property
    def noise_variance(self) -> float | None:
        """Variance of the added noise in squared value units (numeric fields), else ``None``.

        Discrete Laplace with scale b (grid units): ``2p / (1 − p)² · grid²``,
        ``p = e^(−1/b)``; discrete Gaussian: ``σ² · grid²`` (its exact variance is
        slightly below σ²). Stochastic rounding to the grid adds at most
        ``grid² / 4`` more, not counted here.
        """
        if self.scale_units is None or self.grid is None or not self.scale_units:
            return None
        if self.mechanism == "discrete_laplace":
            p = math.exp(-1.0 / self.scale_units)
            return 2.0 * p / (-math.expm1(-1.0 / self.scale_units)) ** 2 * self.grid**2
        if self.mechanism == "discrete_gaussian":
            return self.scale_units**2 * self.grid**2
        return None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FieldReceipt:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValidationError(f"Field receipt has unknown keys {sorted(unknown)!r}.")
        kwargs: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in data.items()
        }
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ValidationError(f"Field receipt is incomplete: {exc}.") from None


@dataclass(frozen=True)
class ReleaseReceipt:
    """One release: the fields, the privacy spent and how it was accounted.

    ``epsilon``/``delta`` are what the ledger was charged: the sum over fields
    (sequential composition across a record's fields), times the number of
    records when ``privacy_unit == "user"``.
    """

    release_id: str
    n_records: int
    epsilon: float
    delta: float
    fields: tuple[FieldReceipt, ...]
    privacy_unit: str = "record"
    user_id: str | None = None
    random_source: str = "os.urandom"
    secure_random: bool = True
    created: str = ""
    format: int = RECEIPT_FORMAT

    def field(self, name: str) -> FieldReceipt:
        for f in self.fields:
            if f.field == name:
                return f
        raise KeyError(
            f"Receipt {self.release_id} has no field {name!r}; it has "
            f"{[f.field for f in self.fields]!r}."
        )

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["fields"] = [f.to_dict() for f in self.fields]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReleaseReceipt:
        if data.get("format") != RECEIPT_FORMAT:
            raise ValidationError(
                f"Receipt format {data.get('format')!r} is not supported (this SDK reads "
                f"format {RECEIPT_FORMAT}); upgrade dmt."
            )
        kwargs = dict(data)
        kwargs["fields"] = tuple(FieldReceipt.from_dict(f) for f in data.get("fields", ()))
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ValidationError(f"Release receipt is incomplete: {exc}.") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> ReleaseReceipt:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValidationError(f"Receipt JSON is malformed: {exc}.") from None
        return cls.from_dict(data)
