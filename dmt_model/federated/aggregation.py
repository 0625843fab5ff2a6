"""Deprecated: the arithmetic of the hand-written FedAvg loop that Flower replaced.

:func:`~dmt_model.federated.run_federated` no longer uses anything here:
Flower's ``FedAvg`` aggregates and its
``DifferentialPrivacyServerSideFixedClipping`` clips and adds the noise. The
functions stay importable from :mod:`dmt_model.federated` (with a
``DeprecationWarning``) until 0.2 for code that called them directly.

Every function here takes flat float vectors (one per client: the change of
all model parameters over a round, the *delta*) and returns new vectors; none
mutates its input. The strategies in :mod:`dmt_model.federated.strategy`
compose them; tests check them against the formulas below.

* :func:`fedavg_aggregate` — the example-weighted mean
  ``Σ_k n_k Δ_k / Σ_k n_k`` (McMahan et al., 2017).
* :func:`clip_update` — ``Δ · min(1, C / ‖Δ‖₂)``: the L2 norm of the result is
  at most ``C`` and its direction is unchanged.
* :func:`gaussian_noise` — i.i.d. ``N(0, std²)`` draws from a numpy generator.
* :func:`dp_aggregate` — DP-FedAvg's fixed-denominator estimator
  (McMahan et al., 2018, "Learning differentially private recurrent language
  models"): ``(Σ_k clip(Δ_k, C) + N(0, σ²C²I)) / (q·N)``, where ``q·N`` is
  the *expected* number of sampled clients. The denominator does not depend
  on who was sampled, so adding or removing one user changes the noiseless
  sum by at most ``C`` in L2 norm, which is what the accountant assumes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from dmt_privacy.errors import ValidationError

__all__ = ["ClientUpdate", "clip_update", "dp_aggregate", "fedavg_aggregate", "gaussian_noise",
           "l2_norm"]


@dataclass(frozen=True)
class ClientUpdate:
    """Deprecated: one client's change of every model parameter after a round."""

    client: int
    delta: np.ndarray = field(repr=False)
    n_examples: int
    loss: float = math.nan
    diverged: bool = False

    @property
    def norm(self) -> float:
        return float(np.linalg.norm(self.delta))


def _as_matrix(updates: Sequence[np.ndarray] | np.ndarray, *, name: str) -> np.ndarray:
    matrix = np.asarray([np.asarray(u, dtype=np.float64).ravel() for u in updates])
    if matrix.ndim != 2 or matrix.shape[0] == 0:
        raise ValidationError(f"{name} must hold at least one vector, got {len(updates)}.")
    if not np.isfinite(matrix).all():
        row = int(np.argwhere(~np.isfinite(matrix))[0, 0])
        raise ValidationError(f"{name}[{row}] holds a non-finite value; the client diverged.")
    return matrix


def l2_norm(vector: np.ndarray) -> float:
    """‖vector‖₂ in float64."""
    return float(np.linalg.norm(np.asarray(vector, dtype=np.float64).ravel()))


def fedavg_aggregate(updates: Sequence[np.ndarray] | np.ndarray,
                     weights: Sequence[float] | np.ndarray) -> np.ndarray:
    """The weighted mean ``Σ w_k u_k / Σ w_k`` of the client vectors (float64).

    ``weights`` are usually the clients' numbers of training examples; they
    must be non-negative, finite and not all zero.
    """
    matrix = _as_matrix(updates, name="updates")
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (matrix.shape[0],):
        raise ValidationError(
            f"weights must hold one number per update ({matrix.shape[0]}), got shape {w.shape}.")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValidationError(
            f"weights must be finite, non-negative and not all zero, got {w.tolist()!r}.")
    return np.asarray((w / w.sum()) @ matrix)


def clip_update(update: np.ndarray, clip_norm: float) -> np.ndarray:
    """``update · min(1, clip_norm / ‖update‖₂)`` as a new float64 vector."""
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise ValidationError(f"clip_norm must be a positive number, got {clip_norm!r}.")
    vector = np.asarray(update, dtype=np.float64).ravel().copy()
    norm = l2_norm(vector)
    if not math.isfinite(norm):
        raise ValidationError("update holds a non-finite value; the client diverged.")
    if norm > clip_norm:
        vector *= clip_norm / norm
    return vector


def gaussian_noise(size: int, std: float, rng: np.random.Generator) -> np.ndarray:
    """``size`` i.i.d. draws of ``N(0, std²)`` (float64) from ``rng``.

    Floating-point Gaussian noise is the textbook mechanism, not a
    floating-point-safe one (Mironov, 2012): fine for a benchmark baseline,
    not for releasing a model trained on real users.
    """
    if not (math.isfinite(std) and std >= 0):
        raise ValidationError(f"std must be a non-negative number, got {std!r}.")
    return np.asarray(rng.normal(0.0, std, size=size)) if std > 0 else np.zeros(size)


def dp_aggregate(updates: Sequence[np.ndarray] | np.ndarray, *, size: int, clip_norm: float,
                 noise_multiplier: float, expected_clients: float,
                 rng: np.random.Generator) -> np.ndarray:
    """``(Σ_k clip(u_k, C) + N(0, (σC)² I)) / expected_clients`` (see module docstring).

    ``updates`` may be empty (Poisson sampling can pick nobody): the result is
    then noise alone, which must still be released for the guarantee to hold.
    ``size`` is the length of the vectors.
    """
    if not (math.isfinite(expected_clients) and expected_clients > 0):
        raise ValidationError(
            f"expected_clients must be a positive number, got {expected_clients!r}.")
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise ValidationError(
            f"noise_multiplier must be a non-negative number, got {noise_multiplier!r}.")
    total = np.zeros(size, dtype=np.float64)
    for k, update in enumerate(updates):
        vector = np.asarray(update, dtype=np.float64).ravel()
        if vector.size != size:
            raise ValidationError(f"updates[{k}] has {vector.size} values, expected {size}.")
        total += clip_update(vector, clip_norm)
    total += gaussian_noise(size, noise_multiplier * clip_norm, rng)
    return total / expected_clients
