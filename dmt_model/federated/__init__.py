"""Federated learning baselines on Flower: FedAvg, FedProx and user-level DP-FedAvg.

The alternative the DMT loop is compared against (design.md, row
``federated``), run the way teams that do federated learning run it: by
Flower (``flwr``, its simulation engine on Ray), one virtual SuperNode per
simulated user. Three layers, as in Flower:

* :mod:`~dmt_model.federated.strategy` — the settings: :class:`FedAvg`,
  :class:`FedProx`, and :class:`DPFedAvg`, which wraps either and holds the
  user-level privacy ledger (:mod:`~dmt_model.federated.accounting`, Opacus'
  RDP or PRV accountant; one user's records replaced by another's, the number
  of users public);
* :mod:`~dmt_model.federated.flower` — Flower's strategies (``FedAvg``,
  ``FedProx``, ``DifferentialPrivacyServerSideFixedClipping``, its noise
  drawn by :mod:`~dmt_model.federated.noise` from a secure source), the
  client's training step, and the simulation run;
* :mod:`~dmt_model.federated.simulation` — :func:`run_federated`, on
  :func:`~dmt_model.datasets.simulate_users`, with optional on-device
  personalization afterwards through the same emulated Core ML update as DMT.

Example::

    sim = simulate_users(load_boston(), seed=0)
    fl = run_federated(sim, FedAvg(rounds=30, client_fraction=0.5), personalize=True)
    dp = run_federated(sim, DPFedAvg(FedAvg(rounds=30), clip_norm=1.0, target_epsilon=4.0))
    dp.epsilon  # user-level, at dp.delta = 1e-5
    dp.secure_random  # True: the noise came from the operating system's CSPRNG

torch, flwr and ray are imported when a run starts; opacus when a DP strategy is built.

Deprecated (the hand-written loop's arithmetic, unused since Flower runs the
rounds; removed in 0.2): ``ClientUpdate``, ``clip_update``, ``dp_aggregate``,
``fedavg_aggregate``, ``gaussian_noise``, still importable from here with a
``DeprecationWarning``.
"""

from typing import Any

from dmt_model.federated.accounting import (
    PrivacyAccountant,
    calibrate_noise_multiplier,
    epsilon_for,
)
from dmt_model.federated.flower import ray_session
from dmt_model.federated.simulation import (
    FederatedResult,
    RoundMetrics,
    UserResult,
    run_federated,
)
from dmt_model.federated.strategy import DPFedAvg, FedAvg, FedProx, Strategy
from dmt_privacy.errors import warn_caller

_DEPRECATED = ("ClientUpdate", "clip_update", "dp_aggregate", "fedavg_aggregate",
               "gaussian_noise")

__all__ = [
    "ClientUpdate",
    "DPFedAvg",
    "FedAvg",
    "FedProx",
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
    "ray_session",
    "run_federated",
]


def __getattr__(name: str) -> Any:
    if name in _DEPRECATED:
        warn_caller(
            f"dmt_model.federated.{name} is deprecated and will be removed in 0.2: Flower "
            "aggregates, clips and adds the noise now (flwr.serverapp.strategy); "
            "run_federated does not use it.", DeprecationWarning)
        from dmt_model.federated import aggregation

        return getattr(aggregation, name)
    raise AttributeError(f"module 'dmt_model.federated' has no attribute {name!r}")
