"""Federated strategies: the settings of a run, and for DP the privacy ledger.

A strategy holds hyperparameters and, for DP, the ledger; it trains nothing
and aggregates nothing. Flower does both (:mod:`dmt_model.federated.flower`
maps each strategy to Flower's own):

* :class:`FedAvg` — each round Flower samples ``max(1, round(client_fraction · N))``
  distinct users uniformly, each trains ``local_epochs`` on its own records
  from the current global model, and the global model becomes the
  example-weighted mean of theirs (Flower's ``FedAvg``).
* :class:`FedProx` — FedAvg whose clients add a proximal term (Flower's ``FedProx``).
* :class:`DPFedAvg` wraps a :class:`FedAvg` or :class:`FedProx` (it adds no
  flags to it, as Flower's DP wrappers do): ``m = max(1, round(sampling_rate · N))``
  users a round, each update clipped to ``clip_norm`` by the server and
  Gaussian noise of std ``σ·clip_norm / m`` added to the mean of the ``m``
  (Flower's ``DifferentialPrivacyServerSideFixedClipping``), the round
  released only when all ``m`` sent their update. Every user counts once
  (uniform weights), since a weight that grows with a user's number of
  records would need its own sensitivity bound. The Opacus ledger is charged
  by the Flower strategy each time it releases a noisy aggregate, at
  sensitivity ``2·clip_norm`` (one user replaced by another: the number of
  users ``N`` is public); with ``target_epsilon`` the noise multiplier is
  calibrated the same way for the wrapped strategy's ``rounds``, and a round
  beyond the budget raises :class:`~dmt_privacy.errors.BudgetExceededError`
  before any client trains. One :class:`DPFedAvg` is one ledger: a second run
  with it continues the first's ε.

Randomness: the client sample and the clients' local training are
reproducible from ``seed`` (Flower's client sample is drawn from
``(seed, round)``, the replies summed in the order of the clients:
``dmt_model.federated.flower``). DP-FedAvg's noise is not: it comes from the
operating system's CSPRNG, unless ``random_state=<int>`` asks for a seeded,
predictable generator (it warns, and the result records
``secure_random=False``) — right for a benchmark that must repeat to the bit,
wrong for a deployment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from dmt_model.federated.accounting import (
    Accountant,
    PrivacyAccountant,
    calibrate_noise_multiplier,
    check_accountant,
    check_delta,
    check_noise_multiplier,
    check_sampling_rate,
)
from dmt_privacy.dp.random import RandomSource, resolve_source
from dmt_privacy.errors import BudgetExceededError, ValidationError

__all__ = ["ACCOUNTED_SAMPLING_RATE", "REPLACE_ONE_SENSITIVITY", "DPFedAvg", "FedAvg",
           "FedProx", "Strategy"]

#: The sampling rate the ledger is charged at. Flower samples a fixed number of
#: users each round, uniformly and without replacement, which the
#: Poisson-subsampled analysis does not cover; as Flower's own accountant does
#: ("no amplification"), every round is charged as if every user took part: a
#: valid, conservative bound.
ACCOUNTED_SAMPLING_RATE = 1.0

#: The L2 sensitivity of a round's sum of clipped updates, in units of
#: ``clip_norm``, when one user is replaced by another: the one's update (norm
#: at most C) leaves the sum and the other's enters it, which moves it by up to
#: 2C if they point in opposite directions. Add/remove-one-user adjacency does
#: not fit Flower's sampling: ``m = round(q·N)`` depends on N, so the noise
#: ``σC/m`` would tell N and N + 1 apart; and with m fixed, an added user takes
#: the place of a sampled one, which moves the sum by 2C all the same.
REPLACE_ONE_SENSITIVITY = 2.0

def _positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValidationError(f"{name} must be a positive integer, got {value!r}.")


def _positive_number(name: str, value: object) -> None:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0):
        raise ValidationError(f"{name} must be a positive number, got {value!r}.")


def _check_clients(n_clients: int) -> None:
    if isinstance(n_clients, bool) or not isinstance(n_clients, int) or n_clients < 1:
        raise ValidationError(f"n_clients must be a positive integer, got {n_clients!r}.")


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
    server_learning_rate: kept for the settings of earlier runs; must be 1
        (Flower's FedAvg moves the global model to the mean of the clients').
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
        if self.server_learning_rate != 1:
            raise ValidationError(
                f"server_learning_rate must be 1 (plain FedAvg, as Flower runs it), got "
                f"{self.server_learning_rate!r}.")
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


@dataclass(frozen=True)
class FedProx(FedAvg):
    """FedProx (Li et al., 2020): FedAvg whose clients add ``μ/2 · ‖w − w_global‖²`` to their loss.

    Run by Flower's ``FedProx`` strategy, which sends ``proximal_mu`` to the
    clients; μ = 0 is FedAvg. The term keeps heterogeneous clients' local
    models near the global one during their local epochs.
    """

    proximal_mu: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        mu = self.proximal_mu
        if not (isinstance(mu, (int, float)) and not isinstance(mu, bool)
                and math.isfinite(mu) and mu >= 0):
            raise ValidationError(
                f"proximal_mu must be a non-negative number, got {self.proximal_mu!r}.")


class DPFedAvg:
    """User-level differentially private FedAvg (McMahan et al., 2018) around a :class:`FedAvg`.

    Parameters
    ----------
    strategy: the FedAvg (or FedProx) whose rounds and local training are
        used. Its ``client_fraction`` is the default ``sampling_rate``.
    clip_norm: C, the bound on each client's delta (L2 norm over the exchanged
        parameters), applied by the server.
    noise_multiplier: σ; the noise on the sum of the ``m`` clipped deltas has
        std σ·C (σ·C/m on their mean, as Flower's wrapper computes it). Since
        one user replaced moves that sum by up to 2C, a round is charged as a
        Gaussian mechanism of noise multiplier σ/2
        (:attr:`accounted_noise_multiplier`). Give either this or
        ``target_epsilon``.
    target_epsilon: calibrate σ so that ε after ``strategy.rounds`` rounds is
        at most this (user-level, at ``delta``, charged as above); a further
        round is refused.
    delta: the δ of the (ε, δ) guarantee; should be below 1 / number of users.
    sampling_rate: q; ``m = max(1, round(q·N))`` users take part in a round, a
        number that depends on the public N alone. The ledger is charged at
        :data:`ACCOUNTED_SAMPLING_RATE` (1: no amplification by sampling is
        claimed), so q < 1 only costs utility.
    accountant: ``"rdp"`` or ``"prv"`` (see :mod:`dmt_model.federated.accounting`).
    random_state: where the DP noise comes from. ``None`` (the default): the
        operating system's CSPRNG, different in every run. An ``int``: a
        seeded numpy generator, which repeats a run's noise to the bit and is
        NOT secure (whoever knows the seed subtracts the noise): for tests
        and benchmarks only; it warns with
        :class:`~dmt_privacy.dp.random.InsecureRandomnessWarning` and the run's
        result records ``secure_random=False``. A
        :class:`~dmt_privacy.dp.random.RandomSource` is used as given. The
        client sample and local training follow ``strategy.seed`` either way.

    What is private: the sequence of global models released by every run of
    this object, with respect to replacing *all* records of one user by another
    user's (replace-one-user adjacency). The number of users N is public (it
    sets m); so are the starting model (trained on the server's proxy data)
    and the featurizer.

    One object is one ledger: a second run continues the first's ε, and a
    budget the first spent refuses the second's rounds. A new accounting is a
    new :class:`DPFedAvg`, and a user in both runs has spent the ε of both.
    """

    def __init__(self, strategy: FedAvg, *, clip_norm: float,
                 noise_multiplier: float | None = None, target_epsilon: float | None = None,
                 delta: float = 1e-5, sampling_rate: float | None = None,
                 accountant: Accountant = "rdp", random_state: Any = None) -> None:
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
        if not (random_state is None or isinstance(random_state, RandomSource)
                or (isinstance(random_state, int) and not isinstance(random_state, bool)
                    and random_state >= 0)):
            raise ValidationError(
                "random_state must be None (the operating system's CSPRNG, the default), a "
                "non-negative int (seeded noise, NOT secure: tests and benchmarks only) or a "
                f"RandomSource; got {random_state!r}.")
        if noise_multiplier is not None:
            check_noise_multiplier(noise_multiplier)
            sigma = float(noise_multiplier)
        else:
            assert target_epsilon is not None
            sigma = REPLACE_ONE_SENSITIVITY * calibrate_noise_multiplier(
                target_epsilon=target_epsilon, delta=delta,
                sampling_rate=ACCOUNTED_SAMPLING_RATE, rounds=strategy.rounds,
                accountant=accountant)
        self.strategy = strategy
        self.clip_norm = float(clip_norm)
        self.target_epsilon = target_epsilon
        self.delta = float(delta)
        self.sampling_rate = float(rate)
        self.accountant = accountant
        self.noise_multiplier = sigma
        self.random_state = random_state
        self._noise_source = resolve_source(random_state)  # warns for an int
        self.accountant_: PrivacyAccountant | None = None
        self.n_clients_: int | None = None
        self.runs_ = 0

    def __repr__(self) -> str:
        seeded = ("" if self.random_state is None
                  else f", random_state={self.random_state!r}")
        return (f"DPFedAvg({self.strategy!r}, clip_norm={self.clip_norm}, "
                f"noise_multiplier={self.noise_multiplier:.4g}, "
                f"target_epsilon={self.target_epsilon}, delta={self.delta}, "
                f"sampling_rate={self.sampling_rate}, accountant={self.accountant!r}{seeded})")

    @property
    def base(self) -> FedAvg:
        return self.strategy

    @property
    def accounted_noise_multiplier(self) -> float:
        """σ / 2: the noise's std over the sensitivity of the sum when one user is replaced
        (:data:`REPLACE_ONE_SENSITIVITY` · C); what the ledger is charged a round."""
        return self.noise_multiplier / REPLACE_ONE_SENSITIVITY

    @property
    def noise_source(self) -> RandomSource:
        """Where the DP noise is drawn from (:mod:`dmt_model.federated.noise`)."""
        return self._noise_source

    @property
    def secure_random(self) -> bool:
        """Whether the DP noise comes from a cryptographically secure source."""
        return bool(self._noise_source.secure)

    def begin(self, n_clients: int) -> None:
        """Start a run over ``n_clients`` users (public); the ledger of earlier runs carries on."""
        _check_clients(n_clients)
        self.n_clients_ = int(n_clients)
        if self.accountant_ is None:
            self.accountant_ = PrivacyAccountant(self.accountant)
        self.runs_ += 1

    def clients_per_round(self, n_clients: int) -> int:
        """``max(1, round(sampling_rate · N))``: the fixed number of users Flower samples."""
        _check_clients(n_clients)
        return max(1, min(n_clients, round(self.sampling_rate * n_clients)))

    def check_next_round(self) -> None:
        """Refuse a round that would bring ε past ``target_epsilon`` (nothing is charged)."""
        if self.accountant_ is None:
            raise ValidationError("Call begin(n_clients) before the first round; "
                                  "run_federated does it for you.")
        if self.target_epsilon is None:
            return
        after = self.accountant_.epsilon_after(
            noise_multiplier=self.accounted_noise_multiplier,
            sampling_rate=ACCOUNTED_SAMPLING_RATE, delta=self.delta)
        if after > self.target_epsilon:
            raise BudgetExceededError(
                f"Round {self.accountant_.rounds + 1} of this DPFedAvg's ledger (over its "
                f"{self.runs_} run(s)) would bring ε to {after:.3f} > "
                f"target_epsilon={self.target_epsilon}; the budget was calibrated for "
                f"{self.strategy.rounds} rounds. Nothing was released. To account anew on "
                "purpose, build a new DPFedAvg: a user in both runs has then spent the ε of "
                "both.")

    def charge_round(self) -> None:
        """Charge the ledger for one released noisy aggregate (Flower's DP wrapper calls it)."""
        self.check_next_round()
        assert self.accountant_ is not None
        self.accountant_.charge(noise_multiplier=self.accounted_noise_multiplier,
                                sampling_rate=ACCOUNTED_SAMPLING_RATE)

    def epsilon(self) -> float:
        """User-level ε (at :attr:`delta`) spent by the rounds released so far, by every run."""
        if self.accountant_ is None:
            return 0.0
        return self.accountant_.epsilon(self.delta)


#: What :func:`~dmt_model.federated.run_federated` runs.
Strategy: TypeAlias = FedAvg | DPFedAvg
