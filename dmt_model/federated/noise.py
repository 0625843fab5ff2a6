"""DP-FedAvg's Gaussian noise, drawn from a random source of :mod:`dmt_privacy.dp.random`.

Flower's DP wrappers draw their noise from numpy's global generator
(``np.random.normal``), which anyone who knows its seed can replay and subtract.
DP-FedAvg draws it here instead, from the source its ``random_state`` resolves
to as local DP does (:func:`~dmt_privacy.dp.random.resolve_source`): the
operating system's CSPRNG by default, a seeded generator that is NOT secure
only when asked for (``random_state=<int>``, which warns).

The draws are Box–Muller's ``sqrt(−2 ln U) · cos(2π V)`` with ``ln U`` to
relative precision down to ``U = 2**-275`` (the source's
``log_uniform_and_bit``), so the tails are not cut off at ``U = 2**-53``. The
noise is the textbook floating-point Gaussian mechanism, as Flower's is, not a
floating-point-safe one.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from dmt_privacy.dp.random import RandomSource

__all__ = ["standard_normal"]


def standard_normal(source: RandomSource, shape: tuple[int, ...]) -> npt.NDArray[np.float64]:
    """Independent N(0, 1) draws of ``shape`` from ``source`` (two of its words, and about
    one more in 2,048, per draw)."""
    size = math.prod(shape)
    log_u, _ = source.log_uniform_and_bit(size)
    angle = source.uniform(size)
    radius = np.sqrt(-2.0 * log_u)
    return (radius * np.cos(2.0 * math.pi * angle)).reshape(shape)
