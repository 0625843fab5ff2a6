"""Federated strategies: which clients train in a round and how their deltas combine.

A strategy holds hyperparameters and, for DP, the privacy ledger; it does no
training and knows nothing of models or data (the orchestration is in
:mod:`dmt_model.federated.simulation`), and its arithmetic is the pure
functions of :mod:`dmt_model.federated.aggregation`.

* :class:`FedAvg` — each round samples ``max(1, round(client_fraction · N))``
  distinct clients uniformly, each trains ``local_epochs`` on its own
  records from the current global model, and the server moves the global
  model by ``server_learning_rate`` times the example-weighted mean delta.
* :class:`DPFedAvg` wraps a :class:`FedAvg` (it adds no flags to it, as
  Flower's DP wrappers do): each client is sampled independently with
  probability ``sampling_rate`` (Poisson sampling, which the accountant's
  analysis assumes), deltas are clipped to ``clip_norm`` and the server adds
  Gaussian noise to their sum (:func:`~dmt_model.federated.aggregation.dp_aggregate`).
  Example weights are dropped: every user counts once, since a weight that
  grows with a user's number of records would need its own sensitivity bound.
  The accountant is charged by :meth:`DPFedAvg.aggregate` itself, so no noisy
  model leaves the strategy without being counted; with ``target_epsilon``
  the noise multiplier is calibrated for the wrapped strategy's ``rounds`` and
  a round beyond the budget raises :class:`~dmt_privacy.errors.BudgetExceededError`.

Randomness: client sampling of round ``r`` uses a generator seeded from
``(seed, r)``; DP noise uses a separate stream seeded from ``seed`` at
:meth:`DPFedAvg.begin`. A run is therefore reproducible from ``seed`` — which
is right for a benchmark and wrong for a deployment, where the noise must
not be predictable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from dmt_model.federated.accounting import (
    Accountant,
    PrivacyAccountant,
    calibrate_noise_multiplier,
    check_accountant,
    check_delta,
    check_noise_multiplier,
    check_sampling_rate,
)
from dmt_model.federated.aggregation import dp_aggregate, fedavg_aggregate
from dmt_privacy.errors import BudgetExceededError, ValidationError

__all__ = ["ClientUpdate", "DPFedAvg", "FedAvg", "Strategy"]

_SAMPLING_STREAM = 1
_NOISE_STREAM = 2


@dataclass(frozen=True)
class ClientUpdate:
    """What one client sends back after a round: the change of every model parameter."""

    client: int
    delta: np.ndarray = field(repr=False)
    n_examples: int
    loss: float = math.nan
    diverged: bool = False

    @property
    def norm(self) -> float:
        return float(np.linalg.norm(self.delta))


class Strategy(Protocol):
    """What :func:`~dmt_model.federated.run_federated` needs from a strategy."""

    @property
    def base(self) -> FedAvg: ...

    def begin(self, n_clients: int) -> None: ...

    def sample_clients(self, n_clients: int, round_index: int) -> np.ndarray: ...

    def aggregate(self, current: np.ndarray, updates: Sequence[ClientUpdate]) -> np.ndarray: ...


def _positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValidationError(f"{name} must be a positive integer, got {value!r}.")


def _positive_number(name: str, value: object) -> None:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0):
        raise ValidationError(f"{name} must be a positive number, got {value!r}.")


def _check_clients(n_clients: int) -> None:
    if not isinstance(n_clients, (int, np.integer)) or n_clients < 1:
        raise ValidationError(f"n_clients must be a positive integer, got {n_clients!r}.")


def _round_rng(seed: int, round_index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _SAMPLING_STREAM, round_index])


@dataclass(frozen=True)
class FedAvg:
    """Federated averaging (McMahan et al., 2017) on the simulated users.

    Parameters
    ----------
    rounds: number of communication rounds.
    client_fraction: share of the clients that train in each round, in (0, 1].
    local_epochs, local_batch_size, local_learning_rate, local_optimizer:
        how each sampled client trains from the global model (``"sgd"``, plain;
        or ``"rmsprop"`` with the foundation's constants); a fresh optimizer
        every round, batches reshuffled every epoch from a seed of
        ``(seed, round, client)``.
    server_learning_rate: the global model moves by this times the mean delta
        (1 is plain FedAvg).
    trainable_layers: ``None`` trains and exchanges every parameter; ``k``
        only those of the last ``k`` dense layers, the rest staying the
        starting model's (fewer parameters means less DP noise in total).
    seed: makes sampling and local shuffling reproducible.

    A client whose local training diverges (non-finite weights) sends no
    update: it counts as a dropout (zero weight; a zero delta under DP).
    """

    rounds: int = 30
    client_fraction: float = 0.5
    local_epochs: int = 5
    local_batch_size: int = 8
    local_learning_rate: float = 1e-3
    local_optimizer: Literal["sgd", "rmsprop"] = "sgd"
    server_learning_rate: float = 1.0
    trainable_layers: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.trainable_layers is not None:
            _positive_int("trainable_layers", self.trainable_layers)
        for name in ("rounds", "local_epochs", "local_batch_size"):
            _positive_int(name, getattr(self, name))
        if not (isinstance(self.client_fraction, (int, float))
                and 0 < self.client_fraction <= 1):
            raise ValidationError(
                f"client_fraction must be in (0, 1], got {self.client_fraction!r}.")
        _positive_number("local_learning_rate", self.local_learning_rate)
        _positive_number("server_learning_rate", self.server_learning_rate)
        if self.local_optimizer not in ("sgd", "rmsprop"):
            raise ValidationError(
                f"local_optimizer must be 'sgd' or 'rmsprop', got {self.local_optimizer!r}.")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValidationError(f"seed must be a non-negative integer, got {self.seed!r}.")

    @property
    def base(self) -> FedAvg:
        """The FedAvg settings clients train with (itself)."""
        return self

    def clients_per_round(self, n_clients: int) -> int:
        _check_clients(n_clients)
        return max(1, min(n_clients, round(self.client_fraction * n_clients)))

    def begin(self, n_clients: int) -> None:
        """Start a run over ``n_clients`` clients (FedAvg keeps no state)."""
        _check_clients(n_clients)

    def sample_clients(self, n_clients: int, round_index: int) -> np.ndarray:
        """The sorted indices of the clients that train in round ``round_index``."""
        m = self.clients_per_round(n_clients)
        chosen = _round_rng(self.seed, round_index).choice(n_clients, size=m, replace=False)
        return np.sort(chosen)

    def aggregate(self, current: np.ndarray, updates: Sequence[ClientUpdate]) -> np.ndarray:
        """``current + server_learning_rate · Σ n_k Δ_k / Σ n_k`` (float64)."""
        useful = [u for u in updates if u.n_examples > 0]
        base = np.asarray(current, dtype=np.float64)
        if not useful:
            return base.copy()
        mean = fedavg_aggregate([u.delta for u in useful], [u.n_examples for u in useful])
        return base + self.server_learning_rate * mean


class DPFedAvg:
    """User-level differentially private FedAvg (McMahan et al., 2018) around a :class:`FedAvg`.

    Parameters
    ----------
    strategy: the FedAvg whose rounds, local training and server learning
        rate are used. Its ``client_fraction`` is the default ``sampling_rate``.
    clip_norm: C, the bound on each client's delta (L2 norm over all parameters).
    noise_multiplier: σ; the noise on the sum of clipped deltas has std σ·C.
        Give either this or ``target_epsilon``.
    target_epsilon: calibrate σ so that ε after ``strategy.rounds`` rounds is
        at most this (user-level, at ``delta``); a further round is refused.
    delta: the δ of the (ε, δ) guarantee; should be below 1 / number of users.
    sampling_rate: q, each client's probability of taking part in a round.
    accountant: ``"rdp"`` or ``"prv"`` (see :mod:`dmt_model.federated.accounting`).

    What is private: the sequence of global models, with respect to adding or
    removing *all* records of one user. The starting model (trained on the
    server's proxy data) and the featurizer are public.
    """

    def __init__(self, strategy: FedAvg, *, clip_norm: float,
                 noise_multiplier: float | None = None, target_epsilon: float | None = None,
                 delta: float = 1e-5, sampling_rate: float | None = None,
                 accountant: Accountant = "rdp") -> None:
        if not isinstance(strategy, FedAvg):
            raise ValidationError(
                f"strategy must be a FedAvg, got {type(strategy).__name__}.")
        _positive_number("clip_norm", clip_norm)
        check_delta(delta)
        check_accountant(accountant)
        rate = strategy.client_fraction if sampling_rate is None else sampling_rate
        check_sampling_rate(rate)
        if (noise_multiplier is None) == (target_epsilon is None):
            raise ValidationError(
                "Give exactly one of noise_multiplier and target_epsilon, got "
                f"noise_multiplier={noise_multiplier!r}, target_epsilon={target_epsilon!r}.")
        if noise_multiplier is not None:
            check_noise_multiplier(noise_multiplier)
            sigma = float(noise_multiplier)
        else:
            assert target_epsilon is not None
            sigma = calibrate_noise_multiplier(target_epsilon=target_epsilon, delta=delta,
                                               sampling_rate=rate, rounds=strategy.rounds,
                                               accountant=accountant)
        self.strategy = strategy
        self.clip_norm = float(clip_norm)
        self.target_epsilon = target_epsilon
        self.delta = float(delta)
        self.sampling_rate = float(rate)
        self.accountant = accountant
        self.noise_multiplier = sigma
        self.accountant_: PrivacyAccountant | None = None
        self.n_clients_: int | None = None
        self._noise_rng: np.random.Generator | None = None

    def __repr__(self) -> str:
        return (f"DPFedAvg({self.strategy!r}, clip_norm={self.clip_norm}, "
                f"noise_multiplier={self.noise_multiplier:.4g}, "
                f"target_epsilon={self.target_epsilon}, delta={self.delta}, "
                f"sampling_rate={self.sampling_rate}, accountant={self.accountant!r})")

    @property
    def base(self) -> FedAvg:
        return self.strategy

    def begin(self, n_clients: int) -> None:
        """Start a run: a fresh ledger, a fresh noise stream, ``n_clients`` users."""
        _check_clients(n_clients)
        self.n_clients_ = int(n_clients)
        self.accountant_ = PrivacyAccountant(self.accountant)
        self._noise_rng = np.random.default_rng([self.strategy.seed, _NOISE_STREAM])

    def sample_clients(self, n_clients: int, round_index: int) -> np.ndarray:
        """Poisson sampling: each client independently with probability ``sampling_rate``."""
        _check_clients(n_clients)
        draws = _round_rng(self.strategy.seed, round_index).random(n_clients)
        return np.flatnonzero(draws < self.sampling_rate)

    def epsilon(self) -> float:
        """User-level ε (at :attr:`delta`) spent by the rounds aggregated so far."""
        if self.accountant_ is None:
            return 0.0
        return self.accountant_.epsilon(self.delta)

    def aggregate(self, current: np.ndarray, updates: Sequence[ClientUpdate]) -> np.ndarray:
        """Charge the accountant for one round, then return the noisy new global model.

        ``current + server_learning_rate · (Σ clip(Δ_k, C) + N(0, σ²C²I)) / (q·N)``.
        """
        if self.accountant_ is None or self._noise_rng is None or self.n_clients_ is None:
            raise ValidationError("Call begin(n_clients) before aggregate(); "
                                  "run_federated does it for you.")
        if len(updates) > self.n_clients_:
            raise ValidationError(
                f"{len(updates)} updates for a run over {self.n_clients_} clients.")
        if self.target_epsilon is not None:
            after = self.accountant_.epsilon_after(noise_multiplier=self.noise_multiplier,
                                                   sampling_rate=self.sampling_rate,
                                                   delta=self.delta)
            if after > self.target_epsilon:
                raise BudgetExceededError(
                    f"Round {self.accountant_.rounds + 1} would bring ε to {after:.3f} > "
                    f"target_epsilon={self.target_epsilon}; the budget was calibrated for "
                    f"{self.strategy.rounds} rounds. Nothing was released.")
        base = np.asarray(current, dtype=np.float64)
        self.accountant_.charge(noise_multiplier=self.noise_multiplier,
                                sampling_rate=self.sampling_rate)
        noisy_mean = dp_aggregate([u.delta for u in updates], size=base.size,
                                  clip_norm=self.clip_norm,
                                  noise_multiplier=self.noise_multiplier,
                                  expected_clients=self.sampling_rate * self.n_clients_,
                                  rng=self._noise_rng)
        return base + self.strategy.server_learning_rate * noisy_mean
