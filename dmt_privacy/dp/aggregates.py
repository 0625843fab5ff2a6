"""Central-DP aggregates on the server, by diffprivlib, charged to a ledger.

Local DP protects each record as it leaves a device; a server that then
publishes statistics over what it holds (shared records, model metrics) adds
central DP on top. diffprivlib is the right tool for that: these thin
wrappers require the bounds (diffprivlib would otherwise compute them from
the data and warn, which leaks) and charge a :class:`PrivacyLedger` (for
example the ledger of a dataset, ``user_id="server:<dataset>"``) on the code
path that computes the aggregate. They run in floating point, on the server.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from dmt_privacy.dp._checks import check_bounds, check_epsilon
from dmt_privacy.dp.ledger import UNACCOUNTED, PrivacyLedger, Unaccounted
from dmt_privacy.dp.receipt import FieldReceipt, ReleaseReceipt
from dmt_privacy.errors import SchemaError, UnknownCategoryError, ValidationError

__all__ = ["dp_histogram", "dp_mean"]


def _check_ledger(ledger: Any, field: str) -> PrivacyLedger | None:
    if isinstance(ledger, PrivacyLedger):
        return ledger
    if ledger is UNACCOUNTED:
        return None
    raise ValidationError(
        f"Field {field!r}: ledger must be a PrivacyLedger (e.g. user_id='server:<dataset>') that "
        f"this aggregate is charged to, or ledger=UNACCOUNTED to compute it with no accounting; "
        f"got {ledger!r}."
    )


def _charge(ledger: PrivacyLedger | None, receipt: ReleaseReceipt) -> Any:
    return ledger.release(receipt) if ledger is not None else contextlib.nullcontext()


def _receipt(field: FieldReceipt, n: int, ledger: PrivacyLedger | None) -> ReleaseReceipt:
    return ReleaseReceipt(
        release_id=uuid.uuid4().hex, n_records=n, epsilon=field.epsilon, delta=0.0,
        fields=(field,), privacy_unit="record",
        user_id=ledger.user_id if ledger is not None else None,
        random_source="diffprivlib (numpy, NOT a CSPRNG)", secure_random=False,
        created=_dt.datetime.now(_dt.timezone.utc).date().isoformat(),
    )


def dp_mean(
    values: npt.ArrayLike,
    *,
    epsilon: float,
    bounds: tuple[float, float],
    ledger: PrivacyLedger | Unaccounted | None = None,
    random_state: Any = None,
    field: str = "value",
) -> float:
    """ε-DP mean of ``values`` clipped to the stated ``bounds`` (diffprivlib ``tools.mean``)."""
    from diffprivlib.tools import mean

    eps = check_epsilon(epsilon, field=field)
    low, high = check_bounds(bounds, field=field)
    accounted = _check_ledger(ledger, field)
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0 or not np.isfinite(x).all():
        raise ValidationError(f"Field {field!r}: values must be non-empty and finite.")
    receipt = _receipt(FieldReceipt(field=field, mechanism="diffprivlib.tools.mean",
                                    epsilon=eps, bounds=(low, high)), x.size, accounted)
    with _charge(accounted, receipt):
        return float(mean(np.clip(x, low, high), epsilon=eps, bounds=(low, high),
                          random_state=random_state))


def dp_histogram(
    values: Sequence[Any] | npt.ArrayLike,
    *,
    epsilon: float,
    categories: Sequence[Any],
    ledger: PrivacyLedger | Unaccounted | None = None,
    random_state: Any = None,
    field: str = "value",
) -> npt.NDArray[np.float64]:
    """ε-DP counts of each category (diffprivlib ``tools.histogram``); refuses unknown values."""
    from diffprivlib.tools import histogram

    eps = check_epsilon(epsilon, field=field)
    accounted = _check_ledger(ledger, field)
    cats = list(categories)
    if not cats:
        raise SchemaError(f"Field {field!r}: dp_histogram needs the field's categories.")
    index = {c: i for i, c in enumerate(cats)}
    codes = []
    for pos, v in enumerate(np.asarray(values, dtype=object).ravel()):
        if v not in index or (isinstance(v, float) and math.isnan(v)):
            raise UnknownCategoryError(
                f"Field {field!r}: value {v!r} at position {pos} is not one of {cats!r}."
            )
        codes.append(index[v])
    receipt = _receipt(FieldReceipt(field=field, mechanism="diffprivlib.tools.histogram",
                                    epsilon=eps, categories=tuple(cats)), len(codes), accounted)
    with _charge(accounted, receipt):
        counts, _ = histogram(np.asarray(codes, dtype=float), epsilon=eps, bins=len(cats),
                              range=(-0.5, len(cats) - 0.5), random_state=random_state)
    return np.asarray(counts, dtype=np.float64)
