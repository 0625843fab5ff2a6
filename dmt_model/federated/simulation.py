"""Running a federated strategy on the simulated users (the orchestration).

:func:`run_federated` plays both sides of every round in one process: the
server sends the global model to the clients the strategy samples, each
client trains a copy on its own training records (shareable and private:
nothing but the delta leaves a device), and the strategy aggregates the
deltas. After the last round the global model is evaluated on every user's
test records and, with ``personalize=True``, exported as an updatable Core ML
spec and personalized per user with :func:`dmt_model.personalize.update_spec`
— the same emulated on-device update DMT uses — so FL and DMT are compared
on the same footing.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from dmt_model.datasets.users import Simulation
from dmt_model.features import Featurizer
from dmt_model.federated.strategy import ClientUpdate, DPFedAvg, FedAvg, Strategy
from dmt_model.foundation import (
    Foundation,
    TrainingConfig,
    _import_torch,
    network_for,
    standardized_squared_error,
    train_foundation,
)
from dmt_privacy.errors import ValidationError
from dmt_privacy.schema import Schema

__all__ = ["FederatedResult", "RoundMetrics", "UserResult", "run_federated"]


@dataclass(frozen=True)
class RoundMetrics:
    """What one round did. ``test_rmse`` is the mean over users of each user's test RMSE
    of the global model after the round; ``epsilon`` the user-level ε spent so far (DP)."""

    round: int
    clients: tuple[int, ...]
    train_loss: float
    mean_update_norm: float
    clipped_fraction: float | None
    diverged: int
    test_rmse: float
    epsilon: float | None


@dataclass(frozen=True)
class UserResult:
    """One user's test RMSE under the global model and, if asked, after personalization."""

    user_id: int
    n_train: int
    n_test: int
    rmse: float
    personalized_rmse: float | None = None
    personalization_note: str | None = None


@dataclass(frozen=True)
class FederatedResult:
    """Everything :func:`run_federated` measured, and the final global model."""

    strategy: str
    start: str
    initial_rmse: float
    rounds: tuple[RoundMetrics, ...]
    users: tuple[UserResult, ...]
    foundation: Foundation = field(repr=False)
    epsilon: float | None = None
    delta: float | None = None
    noise_multiplier: float | None = None
    accountant: str | None = None
    seconds: float = math.nan

    @property
    def mean_rmse(self) -> float:
        """Mean over users of the global model's per-user test RMSE."""
        return float(np.mean([u.rmse for u in self.users]))

    @property
    def mean_personalized_rmse(self) -> float | None:
        values = [u.personalized_rmse for u in self.users]
        if any(v is None for v in values):
            return None
        return float(np.mean([v for v in values if v is not None]))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (without the model)."""
        return {
            "strategy": self.strategy, "start": self.start, "initial_rmse": self.initial_rmse,
            "mean_rmse": self.mean_rmse, "mean_personalized_rmse": self.mean_personalized_rmse,
            "epsilon": self.epsilon, "delta": self.delta,
            "privacy_unit": "user-level (add/remove all records of one user)"
            if self.epsilon is not None else None,
            "noise_multiplier": self.noise_multiplier, "accountant": self.accountant,
            "seconds": self.seconds,
            "rounds": [vars(r) | {"clients": list(r.clients)} for r in self.rounds],
            "users": [vars(u) for u in self.users],
        }


@dataclass(frozen=True)
class _ClientData:
    inputs: list[Any]
    target: Any
    n: int


def _client_data(foundation: Foundation, frame: Any) -> _ClientData:
    torch = _import_torch()
    if len(frame) == 0:
        return _ClientData([], torch.zeros(0), 0)
    inputs = foundation._tensors(foundation.featurizer.transform(frame))
    target = torch.from_numpy(foundation.featurizer.target_values(frame))
    return _ClientData(inputs, target, len(frame))


def _client_seed(seed: int, round_index: int, client: int) -> int:
    return int(np.random.SeedSequence([seed, round_index, client]).generate_state(1)[0])


def _federated_parameters(network: Any, base: FedAvg) -> list[Any]:
    """The parameters FL trains and exchanges, in a fixed order; the others are frozen."""
    if base.trainable_layers is None:
        return list(network.parameters())
    torch = _import_torch()
    dense = [m for m in network.dense if isinstance(m, torch.nn.Linear)]
    if base.trainable_layers > len(dense):
        raise ValidationError(
            f"trainable_layers must be at most {len(dense)} (the dense layers of "
            f"this network), got {base.trainable_layers!r}.")
    chosen = [p for layer in dense[-base.trainable_layers:] for p in (layer.weight, layer.bias)]
    for parameter in network.parameters():
        parameter.requires_grad_(any(parameter is c for c in chosen))
    return chosen


def _local_update(network: Any, parameters: list[Any], global_vector: np.ndarray,
                  data: _ClientData, base: FedAvg, round_index: int,
                  client: int) -> ClientUpdate:
    """Train ``network`` (loaded with the global model) on one client's records."""
    torch = _import_torch()
    from torch.nn.utils import parameters_to_vector, vector_to_parameters

    vector_to_parameters(torch.from_numpy(global_vector.astype(np.float32)), parameters)
    if data.n == 0:
        return ClientUpdate(client, np.zeros(global_vector.size), 0)
    if base.local_optimizer == "sgd":
        optimizer = torch.optim.SGD(parameters, lr=base.local_learning_rate)
    else:
        optimizer = torch.optim.RMSprop(parameters, lr=base.local_learning_rate, alpha=0.9,
                                        eps=1e-7)
    shuffle = torch.Generator().manual_seed(_client_seed(base.seed, round_index, client))
    network.train()
    total, count = 0.0, 0
    for _ in range(base.local_epochs):
        order = torch.randperm(data.n, generator=shuffle)
        for start in range(0, data.n, base.local_batch_size):
            index = order[start:start + base.local_batch_size]
            optimizer.zero_grad()
            loss = torch.mean(standardized_squared_error(
                network, network(*(t[index] for t in data.inputs)), data.target[index]))
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(index)
            count += len(index)
    local = parameters_to_vector(parameters).detach().numpy().astype(np.float64)
    delta = local - global_vector.astype(np.float64)
    if not np.isfinite(delta).all() or not math.isfinite(total):
        return ClientUpdate(client, np.zeros(global_vector.size), 0, math.nan, diverged=True)
    return ClientUpdate(client, delta, data.n, total / count)


def _mean_test_rmse(network: Any, tests: list[_ClientData]) -> tuple[float, list[float]]:
    torch = _import_torch()
    network.eval()
    per_user = []
    with torch.no_grad():
        for data in tests:
            predicted = network(*data.inputs).double()
            per_user.append(float(torch.sqrt(torch.mean((predicted - data.target.double()) ** 2))))
    return float(np.mean(per_user)), per_user


def _starting_model(simulation: Simulation, strategy: Strategy, foundation: Foundation | None,
                    start: str, schema: Schema | None,
                    foundation_config: TrainingConfig | None) -> Foundation:
    torch = _import_torch()
    if schema is None:
        from dmt_model.datasets import BOSTON_SCHEMA

        schema = BOSTON_SCHEMA
    if start == "proxy":
        if foundation is None:
            config = foundation_config or TrainingConfig(seed=strategy.base.seed)
            return train_foundation(simulation.proxy, schema, config)
        return Foundation(foundation.featurizer, copy.deepcopy(foundation.network),
                          foundation.config)
    featurizer = (foundation.featurizer if foundation is not None
                  else Featurizer(schema).fit(simulation.proxy))
    torch.manual_seed(strategy.base.seed)
    config = foundation_config or TrainingConfig()
    network = network_for(featurizer, config.hidden_units)
    return Foundation(featurizer, network, config)


def _personalize(model: Foundation, simulation: Simulation, settings: Any,
                 users: list[UserResult]) -> list[UserResult]:
    """Each user personalizes the global model as a DMT device does: ``personalize()``."""
    from dmt_model.coreml import UpdateSettings, build_spec, predict_frame
    from dmt_model.personalize import personalized

    spec = build_spec(model, updatable=settings or UpdateSettings())
    target = model.featurizer.target
    out = []
    for user, result in zip(simulation.users, users, strict=True):
        actual = user.test[target].to_numpy(dtype=np.float64)
        personal, outcome = personalized(spec, user.train)
        note = None if outcome.accepted else f"update not kept: {outcome.reason}"
        predicted = predict_frame(personal, user.test).astype(np.float64)
        rmse = float(np.sqrt(np.mean((predicted - actual) ** 2)))
        out.append(UserResult(result.user_id, result.n_train, result.n_test, result.rmse,
                              rmse, note))
    return out


def run_federated(
    simulation: Simulation,
    strategy: Strategy,
    *,
    foundation: Foundation | None = None,
    start: Literal["proxy", "scratch"] = "proxy",
    schema: Schema | None = None,
    foundation_config: TrainingConfig | None = None,
    personalize: bool = False,
    update_settings: Any = None,
    on_round_end: Callable[[RoundMetrics], None] | None = None,
) -> FederatedResult:
    """Train ``strategy`` (FedAvg or DP-FedAvg) on the simulated users; see the module doc.

    Parameters
    ----------
    simulation: the users (:func:`dmt_model.datasets.simulate_users`); each
        user is one client and trains on ``user.train``.
    foundation: the starting model. With ``start="proxy"`` (default, as DMT
        starts) its weights are the starting point — it is copied, never
        changed — and when it is ``None`` a foundation is trained on
        ``simulation.proxy`` with ``foundation_config`` (default: the
        reference settings, seeded with the strategy's seed). With
        ``start="scratch"`` only its featurizer is used (or one fitted on the
        proxy data) and the network starts from random weights.
    schema: the records' schema when a foundation must be built (default: Boston's).
    personalize: export the final global model as an updatable spec with
        ``update_settings`` (default :class:`~dmt_model.coreml.UpdateSettings`)
        and update it on each user's training records with
        :func:`~dmt_model.personalize.update_spec`; a diverging update keeps
        the global model for that user and says so.
    on_round_end: called with each round's :class:`RoundMetrics`.
    """
    torch = _import_torch()
    if start not in ("proxy", "scratch"):
        raise ValidationError(f"start must be 'proxy' or 'scratch', got {start!r}.")
    if not hasattr(strategy, "aggregate") or not hasattr(strategy, "base"):
        raise ValidationError(
            f"strategy must be a FedAvg or DPFedAvg, got {type(strategy).__name__}.")
    if not simulation.users:
        raise ValidationError("The simulation has no users.")
    started = time.perf_counter()
    base = strategy.base
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a network this small trains fastest on one thread
    try:
        model = _starting_model(simulation, strategy, foundation, start, schema,
                                foundation_config)
        from torch.nn.utils import parameters_to_vector, vector_to_parameters

        network = model.network
        worker = copy.deepcopy(network)
        shared = _federated_parameters(network, base)
        local = _federated_parameters(worker, base)
        train = [_client_data(model, user.train) for user in simulation.users]
        tests = [_client_data(model, user.test) for user in simulation.users]
        global_vector = parameters_to_vector(shared).detach().numpy().copy()
        initial_rmse, _ = _mean_test_rmse(network, tests)
        n_clients = len(simulation.users)
        strategy.begin(n_clients)
        clip = strategy.clip_norm if isinstance(strategy, DPFedAvg) else None
        history = []
        for round_index in range(base.rounds):
            clients = strategy.sample_clients(n_clients, round_index)
            updates = [_local_update(worker, local, global_vector, train[int(k)], base,
                                     round_index, int(k)) for k in clients]
            aggregated = strategy.aggregate(global_vector, updates)
            global_vector = aggregated.astype(np.float32)
            vector_to_parameters(torch.from_numpy(global_vector.copy()), shared)
            test_rmse, _ = _mean_test_rmse(network, tests)
            norms = [u.norm for u in updates if not u.diverged]
            examples = sum(u.n_examples for u in updates)
            metrics = RoundMetrics(
                round=round_index,
                clients=tuple(int(k) for k in clients),
                train_loss=(sum(u.loss * u.n_examples for u in updates if u.n_examples)
                            / examples) if examples else math.nan,
                mean_update_norm=float(np.mean(norms)) if norms else math.nan,
                clipped_fraction=(float(np.mean([n > clip for n in norms])) if norms else 0.0)
                if clip is not None else None,
                diverged=sum(u.diverged for u in updates),
                test_rmse=test_rmse,
                epsilon=strategy.epsilon() if isinstance(strategy, DPFedAvg) else None,
            )
            history.append(metrics)
            if on_round_end is not None:
                on_round_end(metrics)
        for parameter in network.parameters():
            parameter.requires_grad_(True)
        network.eval()
        _, per_user = _mean_test_rmse(network, tests)
        users = [UserResult(user.user_id, len(user.train), len(user.test), rmse)
                 for user, rmse in zip(simulation.users, per_user, strict=True)]
        if personalize:
            users = _personalize(model, simulation, update_settings, users)
    finally:
        torch.set_num_threads(threads)
    dp = strategy if isinstance(strategy, DPFedAvg) else None
    return FederatedResult(
        strategy=repr(strategy), start=start, initial_rmse=initial_rmse,
        rounds=tuple(history), users=tuple(users), foundation=model,
        epsilon=dp.epsilon() if dp else None, delta=dp.delta if dp else None,
        noise_multiplier=dp.noise_multiplier if dp else None,
        accountant=dp.accountant if dp else None, seconds=time.perf_counter() - started)
