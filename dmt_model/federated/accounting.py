"""The privacy accountant of DP-FedAvg: user-level (ε, δ) of the rounds run so far.

The ledger records rounds of the *subsampled Gaussian mechanism*
``(noise_multiplier, sampling_rate)``: a query of L2 sensitivity Δ answered
with Gaussian noise of std ``noise_multiplier · Δ``, each individual sampled
with probability ``sampling_rate``. It is the generic accountant; what a
DP-FedAvg round is charged is decided by
:class:`~dmt_model.federated.DPFedAvg`, which spends it:

* the neighbouring datasets differ by **all records of one user replaced by
  another user's** (user-level DP, replace-one adjacency; the number of users
  N is public), so ε bounds what the released global models reveal about any
  one user's records, whatever their number;
* a round adds noise of std ``σ·C`` to the sum of the ``m`` clipped updates
  (Flower: ``σ·C/m`` on their mean), and replacing one user moves that sum by
  up to ``2C`` (:data:`~dmt_model.federated.strategy.REPLACE_ONE_SENSITIVITY`),
  so the round is charged at noise multiplier ``σ/2``;
* at sampling rate 1
  (:data:`~dmt_model.federated.strategy.ACCOUNTED_SAMPLING_RATE`): Flower
  samples a fixed ``m`` users without replacement, which the Poisson analysis
  does not cover, so no amplification is claimed (a valid, conservative bound;
  at q = 1 it is exact for the Gaussian mechanism).

The composition over rounds is computed by Opacus' accountants (Meta,
``opacus.accountants``): ``"rdp"`` (Rényi DP of the subsampled Gaussian,
Mironov et al. 2019, converted to (ε, δ)) by default, or ``"prv"``
(numerical composition of privacy loss random variables, Gopi et al. 2021),
which is tighter. The numbers are exactly the library's; this module only
keeps the ledger and refuses parameters the analysis does not cover.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Literal

import numpy as np

from dmt_privacy.errors import MissingDependencyError, ValidationError

__all__ = ["RDP_ORDERS", "Accountant", "PrivacyAccountant", "calibrate_noise_multiplier",
           "epsilon_for"]

Accountant = Literal["rdp", "prv"]

#: Rényi orders the RDP accountant optimizes over: Opacus' defaults (1.1 … 63)
#: extended to 1024, since with few, very noisy rounds (user-level DP over a
#: few dozen users) the best order lies beyond 63 and the default list would
#: report a looser ε.
RDP_ORDERS: tuple[float, ...] = (
    *(1 + x / 10.0 for x in range(1, 100)), *range(12, 64), *range(64, 256, 4),
    *range(256, 1025, 32))


def _opacus_accountant(mechanism: str) -> Any:
    try:
        from opacus.accountants import create_accountant
    except ImportError:
        raise MissingDependencyError(
            "opacus is needed for the DP-FedAvg accountant; install it with "
            "`pip install 'dmt-sdk[federated]'` (or `pip install opacus`)."
        ) from None
    return create_accountant(mechanism=mechanism)


def check_accountant(accountant: str) -> None:
    if accountant not in ("rdp", "prv"):
        raise ValidationError(f"accountant must be 'rdp' or 'prv', got {accountant!r}.")


def check_delta(delta: float) -> None:
    if not (isinstance(delta, (int, float)) and 0 < delta < 1):
        raise ValidationError(f"delta must be in (0, 1), got {delta!r}.")


def check_sampling_rate(sampling_rate: float) -> None:
    if not (isinstance(sampling_rate, (int, float)) and 0 < sampling_rate <= 1):
        raise ValidationError(f"sampling_rate must be in (0, 1], got {sampling_rate!r}.")


def check_noise_multiplier(noise_multiplier: float) -> None:
    if not (isinstance(noise_multiplier, (int, float)) and math.isfinite(noise_multiplier)
            and noise_multiplier > 0):
        raise ValidationError(
            f"noise_multiplier must be a positive number, got {noise_multiplier!r}; "
            "without noise there is no differential privacy.")


class PrivacyAccountant:
    """A ledger of subsampled-Gaussian rounds and the (ε, δ) they add up to.

    Charged through :meth:`DPFedAvg.charge_round <dmt_model.federated.DPFedAvg.charge_round>`
    by Flower's DP strategy itself, once per noisy aggregate it releases.
    """

    def __init__(self, accountant: Accountant = "rdp") -> None:
        check_accountant(accountant)
        self.accountant = accountant
        self._ledger = _opacus_accountant(accountant)

    @property
    def rounds(self) -> int:
        """How many noisy aggregates were charged."""
        return int(sum(steps for _, _, steps in self._ledger.history))

    @property
    def history(self) -> list[tuple[float, float, int]]:
        """``(noise_multiplier, sampling_rate, rounds)`` runs, in order."""
        return [tuple(entry) for entry in self._ledger.history]  # type: ignore[misc]

    def charge(self, *, noise_multiplier: float, sampling_rate: float) -> None:
        """Record one round of the subsampled Gaussian mechanism."""
        check_noise_multiplier(noise_multiplier)
        check_sampling_rate(sampling_rate)
        self._ledger.step(noise_multiplier=float(noise_multiplier),
                          sample_rate=float(sampling_rate))

    def epsilon(self, delta: float) -> float:
        """User-level ε at ``delta`` of every round charged so far (0 before any)."""
        check_delta(delta)
        if not self._ledger.history:
            return 0.0
        if self.accountant == "rdp":
            return _rdp_epsilon(tuple(self._ledger.history), delta)
        return float(self._ledger.get_epsilon(delta=delta))

    def epsilon_after(self, *, noise_multiplier: float, sampling_rate: float,
                      delta: float) -> float:
        """ε if one more round were charged (nothing is recorded)."""
        probe = PrivacyAccountant(self.accountant)  # type: ignore[arg-type]
        probe._ledger.history = [*self._ledger.history]
        probe.charge(noise_multiplier=noise_multiplier, sampling_rate=sampling_rate)
        return probe.epsilon(delta)


@functools.lru_cache(maxsize=256)
def _rdp_of_one_round(noise_multiplier: float, sampling_rate: float) -> np.ndarray:
    from opacus.accountants.analysis import rdp

    return np.asarray(rdp.compute_rdp(q=sampling_rate, noise_multiplier=noise_multiplier,
                                      steps=1, orders=list(RDP_ORDERS)))


def _rdp_epsilon(history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    """What Opacus' ``RDPAccountant.get_epsilon(delta, alphas=RDP_ORDERS)`` returns.

    Opacus computes ``compute_rdp(q, σ, steps) = steps · compute_rdp(q, σ, 1)``
    per history entry; the one-round RDP curve is cached here, since it costs
    about 0.15 s for q < 1 and DP-FedAvg asks for ε every round.
    """
    from opacus.accountants.analysis import rdp

    total = sum(_rdp_of_one_round(sigma, q) * steps for sigma, q, steps in history)
    epsilon, _ = rdp.get_privacy_spent(orders=list(RDP_ORDERS), rdp=total, delta=delta)
    return float(epsilon)


def _epsilon_options(accountant: str) -> dict[str, Any]:
    return {"alphas": list(RDP_ORDERS)} if accountant == "rdp" else {}


def epsilon_for(*, noise_multiplier: float, sampling_rate: float, rounds: int, delta: float,
                accountant: Accountant = "rdp") -> float:
    """User-level ε of ``rounds`` rounds at the given noise and sampling rate."""
    if not isinstance(rounds, int) or rounds < 1:
        raise ValidationError(f"rounds must be a positive integer, got {rounds!r}.")
    ledger = PrivacyAccountant(accountant)
    check_noise_multiplier(noise_multiplier)
    check_sampling_rate(sampling_rate)
    ledger._ledger.history = [(float(noise_multiplier), float(sampling_rate), rounds)]
    return ledger.epsilon(delta)


@functools.lru_cache(maxsize=64)
def calibrate_noise_multiplier(*, target_epsilon: float, delta: float, sampling_rate: float,
                               rounds: int, accountant: Accountant = "rdp",
                               tolerance: float = 0.01) -> float:
    """The smallest noise multiplier σ (to ``tolerance`` in ε) whose ε after ``rounds``
    rounds is at most ``target_epsilon`` (Opacus' ``get_noise_multiplier``)."""
    if not (isinstance(target_epsilon, (int, float)) and math.isfinite(target_epsilon)
            and target_epsilon > 0):
        raise ValidationError(f"target_epsilon must be a positive number, got {target_epsilon!r}.")
    check_delta(delta)
    check_sampling_rate(sampling_rate)
    check_accountant(accountant)
    if not isinstance(rounds, int) or rounds < 1:
        raise ValidationError(f"rounds must be a positive integer, got {rounds!r}.")
    _opacus_accountant(accountant)  # raises MissingDependencyError early
    from opacus.accountants.utils import get_noise_multiplier

    try:
        sigma = get_noise_multiplier(target_epsilon=float(target_epsilon), target_delta=delta,
                                     sample_rate=float(sampling_rate), steps=rounds,
                                     accountant=accountant, epsilon_tolerance=tolerance,
                                     **_epsilon_options(accountant))
    except ValueError as exc:
        raise ValidationError(
            f"target_epsilon={target_epsilon!r} cannot be reached in {rounds} rounds at "
            f"sampling_rate={sampling_rate!r} ({exc}); allow a larger epsilon or fewer rounds."
        ) from None
    return float(sigma)
