"""One validation function per privacy parameter; every message names the field."""

from __future__ import annotations

import math
from typing import Any

from dmt_privacy.errors import SchemaError, ValidationError

__all__ = ["check_bounds", "check_delta", "check_epsilon", "check_grid"]


def check_epsilon(epsilon: Any, *, field: str) -> float:
    """A finite ε > 0, as a float."""
    try:
        value = float(epsilon)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(epsilon, bool) or not (math.isfinite(value) and value > 0):
        raise ValidationError(
            f"Field {field!r}: epsilon must be a finite number > 0, got {epsilon!r}. "
            "Allocate a positive ε to the field or leave the field out of the release."
        )
    return value


def check_delta(delta: Any, *, field: str, required: bool) -> float:
    """δ in [0, 1); strictly positive when the mechanism needs one (Gaussian)."""
    try:
        value = float(delta)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and 0 <= value < 1):
        raise ValidationError(f"Field {field!r}: delta must lie in [0, 1), got {delta!r}.")
    if required and value == 0:
        raise ValidationError(
            f"Field {field!r}: the Gaussian mechanism needs delta > 0, got {delta!r}; "
            "pass e.g. delta=1e-6, or use the Laplace mechanism for pure ε-DP."
        )
    return value


def check_bounds(bounds: Any, *, field: str) -> tuple[float, float]:
    """Declared ``(low, high)``; never inferred from data."""
    if bounds is None:
        raise SchemaError(
            f"Field {field!r} has no bounds. Local DP needs bounds stated in the schema "
            f"(they are never inferred from the data, which would leak it): declare "
            f"Field({field!r}, 'numeric', bounds=(low, high), grid=...)."
        )
    try:
        low, high = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise SchemaError(
            f"Field {field!r}: bounds must be a pair (low, high), got {bounds!r}."
        ) from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise SchemaError(
            f"Field {field!r}: bounds must be finite with low < high, got {bounds!r}."
        )
    return low, high


def check_grid(grid: Any, *, field: str) -> float:
    """A positive, finite grid spacing stated by the schema."""
    if grid is None:
        raise SchemaError(
            f"Field {field!r} has no grid. Perturbed values are snapped to a grid the schema "
            f"states: declare Field({field!r}, 'numeric', bounds=..., grid=0.01) (any "
            "positive spacing; outputs are integer multiples of it)."
        )
    try:
        value = float(grid)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise SchemaError(f"Field {field!r}: grid must be a positive number, got {grid!r}.")
    return value
