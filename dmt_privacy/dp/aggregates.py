"""Central-DP aggregates on the server, floating-point safe, charged to a ledger.

Local DP protects each record as it leaves a device; a server that then
publishes statistics over what it holds (shared records, model metrics) adds
central DP on top. These aggregates require the bounds (diffprivlib would
otherwise compute them from the data and warn, which leaks) and charge a
:class:`PrivacyLedger` (for example the ledger of a dataset,
``user_id="server:<dataset>"``) on the code path that computes them.

They add *integer* discrete Laplace noise from the OS CSPRNG
(:func:`~dmt_privacy.dp.numeric.discrete_laplace_noise`, the same sampler as
local DP) to integer statistics: counts for :func:`dp_histogram`, and for
:func:`dp_mean` the sum of the values snapped (stochastically, unbiased) to
``2**20`` grid units across the bounds, divided by the public count. Textbook
float Laplace (diffprivlib's) is not floating-point safe (Mironov 2012); no
float noise is drawn here. Neighbouring data sets differ by one record
replaced (the count ``n`` is public), as in diffprivlib.
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
from dmt_privacy.dp.numeric import discrete_laplace_noise
from dmt_privacy.dp.random import RandomSource, resolve_source
from dmt_privacy.dp.receipt import FieldReceipt, ReleaseReceipt
from dmt_privacy.errors import SchemaError, UnknownCategoryError, ValidationError

__all__ = ["dp_histogram", "dp_mean"]

_MEAN_UNITS = 2**20


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


def _receipt(field: FieldReceipt, n: int, ledger: PrivacyLedger | None,
             source: RandomSource) -> ReleaseReceipt:
    return ReleaseReceipt(
        release_id=uuid.uuid4().hex, n_records=n, epsilon=field.epsilon, delta=0.0,
        fields=(field,), privacy_unit="record",
        user_id=ledger.user_id if ledger is not None else None,
        random_source=source.name, secure_random=source.secure,
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
    """ε-DP mean of ``values`` clipped to the stated ``bounds`` (``n`` public, replace-one).

    The clipped values are snapped to ``2**20`` grid units across the bounds
    (stochastic rounding: unbiased), summed as integers, and the sum gets
    discrete Laplace noise of scale ``2**20 / ε`` units; the result is divided
    by ``n``.
    """
    eps = check_epsilon(epsilon, field=field)
    low, high = check_bounds(bounds, field=field)
    accounted = _check_ledger(ledger, field)
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0 or not np.isfinite(x).all():
        raise ValidationError(f"Field {field!r}: values must be non-empty and finite.")
    source = resolve_source(random_state)
    units = _MEAN_UNITS
    grid = (high - low) / units
    receipt = _receipt(FieldReceipt(field=field, mechanism="discrete_laplace_sum",
                                    epsilon=eps, bounds=(low, high), grid=grid,
                                    sensitivity_units=units, scale_units=units / eps),
                       x.size, accounted, source)
    q = (np.clip(x, low, high) - low) / grid
    k = np.floor(q)
    k += source.uniform(k.size) < (q - k)
    with _charge(accounted, receipt):
        noisy = int(k.astype(np.int64).sum()) + int(
            discrete_laplace_noise(source, 1, units / eps, exact=True)[0])
    return low + noisy * grid / x.size


def dp_histogram(
    values: Sequence[Any] | npt.ArrayLike,
    *,
    epsilon: float,
    categories: Sequence[Any],
    ledger: PrivacyLedger | Unaccounted | None = None,
    random_state: Any = None,
    field: str = "value",
) -> npt.NDArray[np.float64]:
    """ε-DP counts of each category: integer counts plus discrete Laplace noise of scale 2/ε.

    Replace-one neighbours change two counts by one each (sensitivity 2), so
    each count gets noise of scale ``2 / ε``. Refuses values outside ``categories``.
    """
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
    source = resolve_source(random_state)
    receipt = _receipt(FieldReceipt(field=field, mechanism="discrete_laplace_counts",
                                    epsilon=eps, categories=tuple(cats), sensitivity_units=2,
                                    scale_units=2.0 / eps), len(codes), accounted, source)
    counts = np.bincount(np.asarray(codes, dtype=np.int64), minlength=len(cats))
    with _charge(accounted, receipt):
        noisy = counts + discrete_laplace_noise(source, len(cats), 2.0 / eps, exact=True)
    return noisy.astype(np.float64)
