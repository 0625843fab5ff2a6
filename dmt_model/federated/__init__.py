"""Federated learning baselines: FedAvg and user-level DP-FedAvg on the simulated users.

The alternative the DMT loop is compared against (design.md, row
``federated``). Three layers, as in Flower:

* :mod:`~dmt_model.federated.aggregation` — the pure arithmetic
  (example-weighted mean, clipping, Gaussian noise, the DP estimator);
* :mod:`~dmt_model.federated.strategy` — :class:`FedAvg` and
  :class:`DPFedAvg`, which wraps it and charges its own
  :mod:`~dmt_model.federated.accounting` ledger (Opacus' RDP or PRV
  accountant) in every aggregation;
* :mod:`~dmt_model.federated.simulation` — :func:`run_federated`, the rounds
  on :func:`~dmt_model.datasets.simulate_users`, with optional on-device
  personalization afterwards through the same emulated Core ML update as DMT.

Example::

    sim = simulate_users(load_boston(), seed=0)
    fl = run_federated(sim, FedAvg(rounds=30, client_fraction=0.5), personalize=True)
    dp = run_federated(sim, DPFedAvg(FedAvg(rounds=30), clip_norm=1.0, target_epsilon=4.0))
    dp.epsilon  # user-level, at dp.delta = 1e-5

torch is imported when a run starts; opacus when a DP strategy is built.
"""

from dmt_model.federated.accounting import (
    PrivacyAccountant,
    calibrate_noise_multiplier,
    epsilon_for,
)
from dmt_model.federated.aggregation import (
    clip_update,
    dp_aggregate,
    fedavg_aggregate,
    gaussian_noise,
)
from dmt_model.federated.simulation import (
    FederatedResult,
    RoundMetrics,
    UserResult,
    run_federated,
)
from dmt_model.federated.strategy import ClientUpdate, DPFedAvg, FedAvg, Strategy

__all__ = [
    "ClientUpdate",
    "DPFedAvg",
    "FedAvg",
    "FederatedResult",
    "PrivacyAccountant",
    "RoundMetrics",
    "Strategy",
    "UserResult",
    "calibrate_noise_multiplier",
    "clip_update",
    "dp_aggregate",
    "epsilon_for",
    "fedavg_aggregate",
    "gaussian_noise",
    "run_federated",
]
