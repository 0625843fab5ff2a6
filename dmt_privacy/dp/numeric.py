"""Numeric local DP on a grid: clamp, snap to integer grid units, add integer noise.

How outputs are represented
---------------------------
A numeric field with bounds ``(low, high)`` and grid ``g`` (both stated by the
schema; bounds are never inferred from data) is released as follows:

1. clamp the value to ``[low, high]``;
2. snap it to integer grid units ``k`` in ``[lo_units, hi_units]`` with
   ``lo_units = floor(low / g)`` and ``hi_units = ceil(high / g)``, by
   *stochastic* rounding (round up with probability equal to the fractional
   part, so ``E[k * g]`` equals the clamped value: the default) or by rounding
   to the nearest unit (``rounding="nearest"``, deterministic, biased by up to
   ``g / 2``);
3. add integer noise ``Z`` drawn from the discrete Laplace (or discrete
   Gaussian) distribution;
4. clip ``k + Z`` to the *window* ``[lo_units - W, hi_units + W]``, where ``W``
   is so wide that the clip happens with probability below ``e**-45`` (Laplace)
   or ``e**-50`` (Gaussian);
5. return the float64 ``float(k + Z) * g``.

Every output is therefore the float64 product of an integer and the grid, and
the set of possible outputs is fixed by the schema, whatever the input: the
floating-point porosity attack on textbook Laplace (Mironov 2012) has nothing
to read. The noise scale follows from the sensitivity of the snapped value,
``Δ = hi_units - lo_units`` grid units (the width ``high - low`` rounded up to
whole grid units, plus at most one unit when the bounds are not on the grid):
discrete Laplace with scale ``b = Δ / ε`` grid units
(``P(Z = z) ∝ exp(-|z| / b)``) is ε-DP; the discrete Gaussian's ``σ`` (grid
units) is the smallest satisfying the exact (ε, δ) condition of Canonne,
Kamath and Steinke (2020, Theorem 7).

Sampling is vectorized inverse-CDF sampling from 64-bit CSPRNG words with
relative precision 2**-52 deep into the tails (see
:meth:`RandomSource.log_uniform_and_bit`). Inside the window every output has
probability above ``e**-(45 + ε) * (1 - e**(-1/b))``, far above the sampler's
resolution, so the realized distribution matches the ideal one to a relative
error below 1e-12; the scale is calibrated to ``ε * (1 - 1e-9)`` to absorb it.

Unbiasedness: with stochastic rounding, ``E[output] = clamp(x)`` up to the
window clip (relative effect below 1e-19), because the noise is symmetric and
*not* truncated at the bounds. The sample mean of released values is an
unbiased estimator of the mean of the clamped values. Bounded-domain variants
that truncate or fold the noise at the bounds (diffprivlib's
``LaplaceBoundedDomain``, ``LaplaceTruncated``, ``GeometricTruncated``) pull
outputs toward the middle of the domain and bias means; they are not used.
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import numpy.typing as npt

from dmt_privacy.dp._checks import check_bounds, check_delta, check_epsilon, check_grid
from dmt_privacy.dp.random import RandomSource, resolve_source
from dmt_privacy.dp.receipt import FieldReceipt
from dmt_privacy.errors import SchemaError, ValidationError

__all__ = [
    "DiscreteGaussian",
    "DiscreteLaplace",
    "discrete_gaussian_delta",
    "discrete_gaussian_noise",
    "discrete_gaussian_sigma",
    "discrete_laplace_noise",
    "grid_units",
]

#: ε used for calibration is ε * (1 - CALIBRATION_SLACK): absorbs float64 sampling error.
CALIBRATION_SLACK = 1e-9
_LAPLACE_TAIL = 45.0  # window half-width beyond the domain, in noise scales
_GAUSSIAN_TAIL = 10.0  # in standard deviations: exp(-50) beyond
_MAX_UNITS = 2**40
_ROUNDINGS = ("stochastic", "nearest")


def grid_units(bounds: tuple[float, float], grid: float) -> tuple[int, int]:
    """``(floor(low / grid), ceil(high / grid))``, tolerant of float noise in the division."""

    def to_units(x: float, up: bool) -> int:
        q = x / grid
        r = round(q)
        if abs(q - r) <= 1e-9 * max(1.0, abs(q)):
            return int(r)
        return math.ceil(q) if up else math.floor(q)

    return to_units(bounds[0], False), to_units(bounds[1], True)


# --- noise samplers -----------------------------------------------------------
#: The float64 inverse CDF distorts the noise by about 8e-15 · scale in privacy loss; above
#: EXACT_ABOVE · ε grid units of scale (10x below the 1e-9 · ε calibration slack) the
#: bitwise sampler, whose error does not grow with the scale, is used instead.
EXACT_ABOVE = 1e4
#: Largest |grid units| an output may reach: float64 represents every integer up to 2**53.
_MAX_OUTPUT_UNITS = 2**53
#: ε / Δ above this underflows exp(-ε/Δ): the noise would be zero in float64.
_MAX_EPSILON_PER_UNIT = 700.0


def _geometric_bits(source: RandomSource, n: int, lam: float, limit: float
                    ) -> npt.NDArray[np.int64]:
    """``n`` draws of ``G`` with ``P(G = g) = (1 - p) p**g``, ``p = exp(-lam)``, bit by bit.

    The binary digits of a geometric variable are independent: digit ``i`` is
    1 with probability ``q_i = p**(2**i) / (1 + p**(2**i))``. Each digit is one
    comparison of a log-uniform (relative precision 2**-52) with ``log q_i``
    (computed to double precision), so the realized probabilities are within a
    relative ~1e-15 of the ideal ones whatever the scale. Digits are drawn
    until ``2**i`` exceeds ``limit`` (beyond it the output is clipped anyway)
    and ``q_i`` is below ``e**-200``. All digits' log-uniforms come in one
    draw (:meth:`~dmt_privacy.dp.random.RandomSource.log_uniform_rows`: the
    words one call a digit would read, in the same order).
    """
    log_q = np.array(_digit_log_q(float(lam), float(limit)))
    digits = source.log_uniform_rows(len(log_q), n) < log_q[:, None]
    return (digits.astype(np.int64) << np.arange(len(log_q), dtype=np.int64)[:, None]).sum(
        axis=0)


@functools.lru_cache(maxsize=256)
def _digit_log_q(lam: float, limit: float) -> tuple[float, ...]:
    """``log q_i`` of each digit :func:`_geometric_bits` draws."""
    log_q = []
    i = 0
    while True:
        x = (2.0**i) * lam
        if 2.0**i > limit and x > 200.0:
            break
        log_q.append(-x - math.log1p(math.exp(-x)))
        i += 1
        if i >= 62:
            break
    return tuple(log_q)


def discrete_laplace_noise(source: RandomSource, n: int, scale: float, *,
                           exact: bool = False, limit: float | None = None
                           ) -> npt.NDArray[np.int64]:
    """``n`` draws of ``Z`` with ``P(Z = z) = (1 - p) / (1 + p) * p**|z|``, ``p = exp(-1/scale)``.

    Inverse CDF of the magnitude from one log-uniform with a fair sign bit:
    ``P(|Z| >= m) = 2 p**m / (1 + p)`` for ``m >= 1``, so ``|Z| = 0`` when
    ``log U > c = log(2p / (1 + p))`` and ``1 + floor((c - log U) * scale)``
    otherwise. One 64-bit word per draw (rarely more, deep in the tail).

    ``exact=True``: ``Z = G1 - G2`` for two geometric variables drawn digit by
    digit (:func:`_geometric_bits`), about ``2 log2(45 scale)`` words per draw,
    with an error that does not grow with ``scale``; ``limit`` (grid units)
    is where the caller clips the output.
    """
    if exact:
        lim = limit if limit is not None else 64.0 * scale
        return (_geometric_bits(source, n, 1.0 / scale, lim)
                - _geometric_bits(source, n, 1.0 / scale, lim))
    lam = 1.0 / scale
    p = math.exp(-lam)
    # log(2p / (1 + p)) = -log1p((1 - p) / (2p)), accurate for tiny lam.
    c = -math.log1p(-math.expm1(-lam) / (2.0 * p))
    log_u, positive = source.log_uniform_and_bit(n)
    magnitude = np.floor((c - log_u) * scale) + 1.0
    magnitude[log_u > c] = 0.0
    noise = magnitude.astype(np.int64)
    np.negative(noise, out=noise, where=~positive)
    return noise


def discrete_gaussian_noise(source: RandomSource, n: int, sigma: float, *,
                            exact: bool = False) -> npt.NDArray[np.int64]:
    """``n`` draws from the discrete Gaussian ``P(Z = z) ∝ exp(-z² / 2σ²)``.

    Canonne, Kamath and Steinke (2020), Algorithm 3, vectorized: a discrete
    Laplace proposal with scale ``t = floor(σ) + 1`` accepted with probability
    ``exp(-(|Y| - σ²/t)² / 2σ²)``, repeated on the rejected draws only.
    """
    t = math.floor(sigma) + 1
    s2 = sigma * sigma
    out = np.empty(n, dtype=np.int64)
    pending = np.arange(n)
    while pending.size:
        y = discrete_laplace_noise(source, pending.size, t, exact=exact)
        log_u, _ = source.log_uniform_and_bit(pending.size)
        accept = log_u < -((np.abs(y) - s2 / t) ** 2) / (2.0 * s2)
        out[pending[accept]] = y[accept]
        pending = pending[~accept]
    return out


def _gaussian_tail(m: int, sigma: float) -> float:
    """``sum(exp(-y² / 2σ²) for integers y >= m)``, for ``m >= 0``.

    Exact summation up to σ = 500; beyond, Euler–Maclaurin: the integral plus
    ``f(m)/2 - f'(m)/12 + f'''(m)/720``, whose next term is below 1e-12 of
    the sum at that σ.
    """
    if sigma <= 500.0:
        limit = math.ceil(39.0 * sigma) + 1  # exp(-39²/2) underflows: nothing beyond
        if m > limit:
            return 0.0
        y = np.arange(m, limit + 1, dtype=np.float64)
        return float(np.exp(-(y * y) / (2.0 * sigma * sigma)).sum())
    s2 = sigma * sigma
    f = math.exp(-m * m / (2.0 * s2))
    integral = sigma * math.sqrt(math.pi / 2.0) * math.erfc(m / (sigma * math.sqrt(2.0)))
    d1 = -m / s2 * f
    d3 = (3.0 * m / s2**2 - m**3 / s2**3) * f
    return integral + f / 2.0 - d1 / 12.0 + d3 / 720.0


def discrete_gaussian_delta(sigma: float, epsilon: float, sensitivity: int) -> float:
    """Exact δ of the discrete Gaussian mechanism (CKS 2020, Theorem 7).

    ``δ = P[Y > εσ²/Δ - Δ/2] - e**ε P[Y > εσ²/Δ + Δ/2]`` for ``Y`` discrete
    Gaussian with parameter σ and integer sensitivity Δ.
    """
    # Poisson summation: the normalizer is sqrt(2π)σ to double precision once σ >= 2.
    if sigma >= 2:
        z = math.sqrt(2.0 * math.pi) * sigma
    else:
        z = 2.0 * _gaussian_tail(0, sigma) - 1.0

    def greater(t: float) -> float:
        m = math.floor(t) + 1  # smallest integer above t
        if m >= 0:
            return _gaussian_tail(m, sigma) / z
        return 1.0 - _gaussian_tail(1 - m, sigma) / z

    centre = epsilon * sigma * sigma / sensitivity
    return greater(centre - sensitivity / 2.0) - math.exp(epsilon) * greater(
        centre + sensitivity / 2.0
    )


@functools.lru_cache(maxsize=256)
def discrete_gaussian_sigma(epsilon: float, delta: float, sensitivity: int) -> float:
    """Smallest σ (to a relative 1e-7, rounded up) whose exact δ is at most ``delta``."""
    hi = sensitivity * math.sqrt(2.0 * math.log(1.25 / delta)) / epsilon
    while discrete_gaussian_delta(hi, epsilon, sensitivity) > delta:
        hi *= 2.0
        if hi > 1e15:
            raise ValidationError(
                f"The discrete Gaussian for ε={epsilon}, δ={delta} and sensitivity "
                f"{sensitivity} grid units needs σ > 1e15 grid units; use a coarser grid."
            )
    lo = hi / 2.0
    while discrete_gaussian_delta(lo, epsilon, sensitivity) <= delta and lo > 1e-3:
        hi, lo = lo, lo / 2.0
    while hi / lo > 1.0 + 1e-7:
        mid = math.sqrt(hi * lo)
        if discrete_gaussian_delta(mid, epsilon, sensitivity) <= delta:
            hi = mid
        else:
            lo = mid
    return hi


# --- mechanisms ---------------------------------------------------------------
def _check_epsilon_per_unit(epsilon: float, sensitivity: int, field: str) -> None:
    if sensitivity > 0 and epsilon / sensitivity > _MAX_EPSILON_PER_UNIT:
        raise ValidationError(
            f"Field {field!r}: epsilon={epsilon!r} is more than {_MAX_EPSILON_PER_UNIT:g} "
            f"times the sensitivity ({sensitivity} grid units): the noise would be below "
            "float64's range and the value released as it is. Lower ε or use a finer grid."
        )


def _check_window(window: tuple[int, int], epsilon: float, sensitivity: int,
                  field: str) -> None:
    if max(abs(window[0]), abs(window[1])) > _MAX_OUTPUT_UNITS:
        raise ValidationError(
            f"Field {field!r}: sensitivity {sensitivity} grid units at epsilon={epsilon!r} "
            f"needs outputs up to {max(abs(window[0]), abs(window[1]))} grid units, beyond "
            "2**53 where float64 outputs are no longer exact. Use a coarser grid or a "
            "larger ε."
        )


class _GridMechanism(ABC):
    """Clamp, snap to grid units, add integer noise, clip to the window."""

    mechanism_name = "abstract"

    def __init__(
        self,
        *,
        epsilon: float,
        bounds: tuple[float, float] | None,
        grid: float | None,
        rounding: str = "stochastic",
        random_state: Any = None,
        field: str = "value",
    ) -> None:
        self.field = field
        self.epsilon = check_epsilon(epsilon, field=field)
        self.bounds = check_bounds(bounds, field=field)
        self.grid = check_grid(grid, field=field)
        if rounding not in _ROUNDINGS:
            raise ValidationError(
                f"Field {field!r}: rounding must be one of {_ROUNDINGS!r}, got {rounding!r}."
            )
        self.rounding = rounding
        self.lo_units, self.hi_units = grid_units(self.bounds, self.grid)
        self.sensitivity_units = self.hi_units - self.lo_units
        if self.sensitivity_units > _MAX_UNITS:
            raise SchemaError(
                f"Field {field!r}: bounds {self.bounds!r} span {self.sensitivity_units} grid "
                f"units of {self.grid}; at most 2**40 are supported. Use a coarser grid."
            )
        self.source = resolve_source(random_state)
        self.delta = 0.0
        self.scale_units = 0.0
        self.window_units = (self.lo_units, self.hi_units)

    # --- steps ------------------------------------------------------------------
    def snap(self, values: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Clamp to the bounds and snap to integer grid units (no noise yet)."""
        x = np.asarray(values, dtype=np.float64)
        bad = ~np.isfinite(x)
        if bad.any():
            at = int(np.flatnonzero(bad.ravel())[0])
            raise ValidationError(
                f"Field {self.field!r}: value {x.ravel()[at]!r} at position {at} is not a "
                "finite number; drop or impute missing values before perturbing."
            )
        q = np.clip(x, self.bounds[0], self.bounds[1]) / self.grid
        if self.rounding == "stochastic":
            k = np.floor(q)
            k += self.source.uniform(k.size).reshape(k.shape) < (q - k)
        else:
            k = np.rint(q)
        return np.clip(k, self.lo_units, self.hi_units).astype(np.int64)

    @abstractmethod
    def noise_units(self, n: int) -> npt.NDArray[np.int64]:
        """``n`` noise draws in grid units."""

    def randomise_units(self, units: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Noisy grid units ``clip(k + Z, window)`` for snapped units ``k``."""
        k = np.asarray(units, dtype=np.int64)
        noisy = k + self.noise_units(k.size).reshape(k.shape)
        return np.clip(noisy, self.window_units[0], self.window_units[1])

    def to_values(self, units: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """float64 outputs ``units * grid``."""
        return np.asarray(units, dtype=np.int64).astype(np.float64) * self.grid

    def randomise(self, values: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Clamp, snap, add noise: the local-DP release of ``values`` (vectorized)."""
        return self.to_values(self.randomise_units(self.snap(values)))

    __call__ = randomise

    # --- description ------------------------------------------------------------
    @property
    def realized_epsilon(self) -> float:
        return self.epsilon

    def field_receipt(self) -> FieldReceipt:
        return FieldReceipt(
            field=self.field,
            mechanism=self.mechanism_name,
            epsilon=self.epsilon,
            delta=self.delta,
            realized_epsilon=self.realized_epsilon,
            output_columns=(self.field,),
            bounds=self.bounds,
            grid=self.grid,
            rounding=self.rounding,
            sensitivity_units=self.sensitivity_units,
            scale_units=self.scale_units,
            window_units=self.window_units,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(epsilon={self.epsilon}, delta={self.delta}, "
            f"bounds={self.bounds}, grid={self.grid}, rounding={self.rounding!r}, "
            f"field={self.field!r})"
        )


class DiscreteLaplace(_GridMechanism):
    """ε-DP numeric release: clamp, snap to the grid, add discrete Laplace noise.

    The noise scale is ``b = Δ / ε`` grid units, ``Δ = hi_units - lo_units``
    (see the module docstring for the representation and the guarantee).
    ``random_state`` other than ``None`` is NOT secure: for tests only.
    """

    mechanism_name = "discrete_laplace"

    def __init__(
        self,
        *,
        epsilon: float,
        bounds: tuple[float, float] | None,
        grid: float | None,
        rounding: str = "stochastic",
        random_state: Any = None,
        field: str = "value",
    ) -> None:
        super().__init__(epsilon=epsilon, bounds=bounds, grid=grid, rounding=rounding,
                         random_state=random_state, field=field)
        _check_epsilon_per_unit(self.epsilon, self.sensitivity_units, field)
        self.scale_units = self._scale()
        width = math.ceil(_LAPLACE_TAIL * self.scale_units) + 1
        self.window_units = (self.lo_units - width, self.hi_units + width)
        _check_window(self.window_units, self.epsilon, self.sensitivity_units, field)
        self.exact_sampler = self.scale_units > EXACT_ABOVE * self.epsilon

    def _scale(self) -> float:
        return self.sensitivity_units / (self.epsilon * (1.0 - CALIBRATION_SLACK))

    @property
    def realized_epsilon(self) -> float:
        return self.sensitivity_units / self.scale_units

    def noise_units(self, n: int) -> npt.NDArray[np.int64]:
        return discrete_laplace_noise(
            self.source, n, self.scale_units, exact=self.exact_sampler,
            limit=float(self.window_units[1] - self.window_units[0]))

    @property
    def noise_variance(self) -> float:
        """Variance of the noise, in squared value units: ``2p / (1 - p)² * grid²``."""
        p = math.exp(-1.0 / self.scale_units)
        return 2.0 * p / (-math.expm1(-1.0 / self.scale_units)) ** 2 * self.grid**2


class DiscreteGaussian(_GridMechanism):
    """(ε, δ)-DP numeric release: clamp, snap to the grid, add discrete Gaussian noise.

    σ (grid units) is the smallest satisfying the exact (ε, δ) condition of CKS
    2020 (Theorem 7) for sensitivity ``Δ = hi_units - lo_units``.
    ``random_state`` other than ``None`` is NOT secure: for tests only.
    """

    mechanism_name = "discrete_gaussian"

    def __init__(
        self,
        *,
        epsilon: float,
        delta: float,
        bounds: tuple[float, float] | None,
        grid: float | None,
        rounding: str = "stochastic",
        random_state: Any = None,
        field: str = "value",
    ) -> None:
        super().__init__(epsilon=epsilon, bounds=bounds, grid=grid, rounding=rounding,
                         random_state=random_state, field=field)
        self.delta = check_delta(delta, field=field, required=True)
        _check_epsilon_per_unit(self.epsilon, self.sensitivity_units, field)
        self.scale_units = self._scale()
        width = math.ceil(_GAUSSIAN_TAIL * self.scale_units) + 1
        self.window_units = (self.lo_units - width, self.hi_units + width)
        _check_window(self.window_units, self.epsilon, self.sensitivity_units, field)
        self.exact_sampler = self.scale_units > EXACT_ABOVE * self.epsilon

    def _scale(self) -> float:
        return discrete_gaussian_sigma(
            self.epsilon * (1.0 - CALIBRATION_SLACK), self.delta, self.sensitivity_units
        )

    def noise_units(self, n: int) -> npt.NDArray[np.int64]:
        return discrete_gaussian_noise(self.source, n, self.scale_units,
                                       exact=self.exact_sampler)
