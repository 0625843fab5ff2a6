"""Running a federated strategy on the simulated users.

:func:`run_federated` builds the starting model and each user's tensors,
hands the rounds to Flower (:mod:`dmt_model.federated.flower`: one virtual
SuperNode per user, each training a copy of the global model on its own
training records — shareable and private: nothing but the model leaves a
device — and Flower's strategy aggregating them). After the last round the
global model is evaluated on every user's test records and, with
``personalize=True``, exported as an updatable Core ML spec and personalized
per user with :func:`dmt_model.personalize.update_spec`
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
from dmt_model.federated.flower import ClientData, RoundLog, run_rounds, trainable_parameters
from dmt_model.federated.strategy import DPFedAvg, FedAvg, Strategy
from dmt_model.foundation import (
    Foundation,
    TrainingConfig,
    _import_torch,
    network_for,
    train_foundation,
)
from dmt_privacy.errors import ValidationError, warn_caller
from dmt_privacy.schema import Schema

__all__ = ["FederatedResult", "RoundMetrics", "UserResult", "run_federated"]


def _renamed(old: str, new: str) -> None:
    warn_caller(f"{old} is deprecated and will be removed in 0.2: it is {new} now, the "
                "task's test error (RMSE for a regression, log loss for a classifier).",
                DeprecationWarning)


@dataclass(frozen=True)
class RoundMetrics:
    """What one round did. ``test_error`` is the mean over users of each user's test error
    of the global model after the round (the task's :meth:`~dmt_model.tasks.Task.test_error`:
    RMSE for a regression, log loss for a classifier); ``epsilon`` the user-level ε spent so
    far (DP);
    ``client_seconds`` the CPU seconds the round's clients spent training, summed."""

    round: int
    clients: tuple[int, ...]
    train_loss: float
    mean_update_norm: float
    clipped_fraction: float | None
    diverged: int
    test_error: float
    epsilon: float | None
    client_seconds: float = 0.0

    @property
    def test_rmse(self) -> float:
        """Deprecated name of :attr:`test_error` (removed in 0.2)."""
        _renamed("RoundMetrics.test_rmse", "test_error")
        return self.test_error


@dataclass(frozen=True)
class UserResult:
    """One user's test error (the task's: RMSE or log loss) under the global model and, if
    asked, after personalization."""

    user_id: int
    n_train: int
    n_test: int
    error: float
    personalized_error: float | None = None
    personalization_note: str | None = None

    @property
    def rmse(self) -> float:
        """Deprecated name of :attr:`error` (removed in 0.2)."""
        _renamed("UserResult.rmse", "error")
        return self.error

    @property
    def personalized_rmse(self) -> float | None:
        """Deprecated name of :attr:`personalized_error` (removed in 0.2)."""
        _renamed("UserResult.personalized_rmse", "personalized_error")
        return self.personalized_error


@dataclass(frozen=True)
class FederatedResult:
    """Everything :func:`run_federated` measured, and the final global model.

    For DP-FedAvg, ``epsilon`` is the user-level ε (at ``delta``) the strategy's ledger
    holds after the run: of every run of that :class:`~dmt_model.federated.DPFedAvg`
    so far, with respect to replacing one user's records by another's (the number of
    users public). ``secure_random`` says whether its noise came from a cryptographically
    secure source (``False``: a seeded generator, ``random_state=<int>``, whose noise
    can be replayed); ``None`` without DP."""

    strategy: str
    start: str
    initial_error: float
    rounds: tuple[RoundMetrics, ...]
    users: tuple[UserResult, ...]
    foundation: Foundation = field(repr=False)
    epsilon: float | None = None
    delta: float | None = None
    noise_multiplier: float | None = None
    accountant: str | None = None
    seconds: float = math.nan
    secure_random: bool | None = None

    @property
    def error_name(self) -> str:
        """What the errors are: ``"RMSE"`` (regression) or ``"log loss"`` (classifier)."""
        return self.foundation.featurizer.task.error_name

    @property
    def mean_error(self) -> float:
        """Mean over users of the global model's per-user test error."""
        return float(np.mean([u.error for u in self.users]))

    @property
    def mean_personalized_error(self) -> float | None:
        values = [u.personalized_error for u in self.users]
        if any(v is None for v in values):
            return None
        return float(np.mean([v for v in values if v is not None]))

    @property
    def initial_rmse(self) -> float:
        """Deprecated name of :attr:`initial_error` (removed in 0.2)."""
        _renamed("FederatedResult.initial_rmse", "initial_error")
        return self.initial_error

    @property
    def mean_rmse(self) -> float:
        """Deprecated name of :attr:`mean_error` (removed in 0.2)."""
        _renamed("FederatedResult.mean_rmse", "mean_error")
        return self.mean_error

    @property
    def mean_personalized_rmse(self) -> float | None:
        """Deprecated name of :attr:`mean_personalized_error` (removed in 0.2)."""
        _renamed("FederatedResult.mean_personalized_rmse", "mean_personalized_error")
        return self.mean_personalized_error

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (without the model)."""
        return {
            "strategy": self.strategy, "start": self.start, "error_name": self.error_name,
            "initial_error": self.initial_error, "mean_error": self.mean_error,
            "mean_personalized_error": self.mean_personalized_error,
            "epsilon": self.epsilon, "delta": self.delta,
            "privacy_unit": "user-level (all records of one user replaced by another "
            "user's; the number of users public)" if self.epsilon is not None else None,
            "noise_multiplier": self.noise_multiplier, "accountant": self.accountant,
            "secure_random": self.secure_random,
            "seconds": self.seconds,
            "rounds": [vars(r) | {"clients": list(r.clients)} for r in self.rounds],
            "users": [vars(u) for u in self.users],
        }


def _client_data(foundation: Foundation, frame: Any, *, training: bool) -> ClientData:
    """A user's tensors; the target as the training loss reads it (the task's
    ``training_target``) or, for a test, as its errors read it (``target_values``)."""
    torch = _import_torch()
    if len(frame) == 0:
        return ClientData([], torch.zeros(0), 0)
    featurizer = foundation.featurizer
    inputs = foundation._tensors(featurizer.transform(frame))
    target = featurizer.target_values(frame, dtype=np.float64)
    if training:
        target = featurizer.task.training_target(featurizer, target)
    return ClientData(inputs, torch.from_numpy(target), len(frame))


def _mean_test_error(network: Any, tests: list[ClientData]) -> tuple[float, list[float]]:
    """The mean over users of the task's test error of ``network``, and each user's."""
    torch = _import_torch()
    network.eval()
    per_user = []
    with torch.no_grad():
        for data in tests:
            predicted = network(*data.inputs).double().numpy()
            per_user.append(network.task.test_error(predicted, data.target.numpy()))
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
            config = foundation_config or TrainingConfig.for_schema(
                schema, seed=strategy.base.seed, records=len(simulation.proxy))
            foundation = train_foundation(simulation.proxy, schema, config)
        # federated rounds train it further on records the server never sees, so which
        # classes it was trained on is not known (Foundation.classes_trained)
        return Foundation(foundation.featurizer, copy.deepcopy(foundation.network),
                          foundation.config)
    featurizer = (foundation.featurizer if foundation is not None
                  else Featurizer(schema).fit(simulation.proxy))
    torch.manual_seed(strategy.base.seed)
    config = foundation_config or TrainingConfig.for_schema(schema)
    network = network_for(featurizer, config.hidden_units)
    return Foundation(featurizer, network, config)


def _personalize(model: Foundation, simulation: Simulation, settings: Any,
                 users: list[UserResult]) -> list[UserResult]:
    """Each user personalizes the global model as a DMT device does: ``personalize()``."""
    from dmt_model.coreml import UpdateSettings, build_spec, predict_frame
    from dmt_model.personalize import personalized

    spec = build_spec(model, updatable=settings or UpdateSettings())
    featurizer = model.featurizer
    out = []
    for user, result in zip(simulation.users, users, strict=True):
        actual = featurizer.target_values(user.test, dtype=np.float64)
        personal, outcome = personalized(spec, user.train)
        note = None if outcome.accepted else f"update not kept: {outcome.reason}"
        predicted = predict_frame(personal, user.test).astype(np.float64)
        out.append(UserResult(result.user_id, result.n_train, result.n_test, result.error,
                              featurizer.task.test_error(predicted, actual), note))
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
    """Train ``strategy`` (FedAvg, FedProx or DP-FedAvg) with Flower on the simulated users.

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
    on_round_end: called with each round's :class:`RoundMetrics`, from
        Flower's server thread, as the round ends.

    Each run starts Flower's simulation engine (a local Ray instance, two
    worker processes) and stops it: about 20 s of start-up on a loaded
    2-core machine, then about 1 s a round for 20 users. Runs inside
    :func:`~dmt_model.federated.ray_session` share one Ray and its two
    client processes instead.
    """
    torch = _import_torch()
    if start not in ("proxy", "scratch"):
        raise ValidationError(f"start must be 'proxy' or 'scratch', got {start!r}.")
    if not isinstance(strategy, (FedAvg, DPFedAvg)):
        raise ValidationError(
            f"strategy must be a FedAvg, FedProx or DPFedAvg, got {type(strategy).__name__}.")
    if not simulation.users:
        raise ValidationError("The simulation has no users.")
    started = time.perf_counter()
    base = strategy.base
    clip = strategy.clip_norm if isinstance(strategy, DPFedAvg) else None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a network this small trains fastest on one thread
    try:
        model = _starting_model(simulation, strategy, foundation, start, schema,
                                foundation_config)
        network = model.network
        shared = trainable_parameters(network, base)
        train = [_client_data(model, user.train, training=True) for user in simulation.users]
        tests = [_client_data(model, user.test, training=False) for user in simulation.users]

        def load(arrays: list[np.ndarray]) -> None:
            with torch.no_grad():
                for parameter, value in zip(shared, arrays, strict=True):
                    parameter.copy_(torch.from_numpy(np.asarray(value, dtype=np.float32)))

        def evaluate(arrays: list[np.ndarray]) -> float:
            load(arrays)
            return _mean_test_error(network, tests)[0]

        history: list[RoundMetrics] = []

        def round_end(index: int, log: RoundLog) -> None:
            examples = sum(log.examples)
            metrics = RoundMetrics(
                round=index, clients=tuple(log.clients),
                train_loss=(sum(loss * n for loss, n in zip(log.losses, log.examples,
                                                            strict=True)) / examples)
                if examples else math.nan,
                mean_update_norm=float(np.mean(log.norms)) if log.norms else math.nan,
                clipped_fraction=(float(np.mean([n > clip for n in log.norms]))
                                  if log.norms else 0.0) if clip is not None else None,
                diverged=log.diverged, test_error=log.test_error, epsilon=log.epsilon,
                client_seconds=log.seconds)
            history.append(metrics)
            if on_round_end is not None:
                on_round_end(metrics)

        final, initial_error, _ = run_rounds(strategy, network, train, evaluate, round_end)
        load(final)
        for parameter in network.parameters():
            parameter.requires_grad_(True)
        network.eval()
        _, per_user = _mean_test_error(network, tests)
        users = [UserResult(user.user_id, len(user.train), len(user.test), error)
                 for user, error in zip(simulation.users, per_user, strict=True)]
        if personalize:
            users = _personalize(model, simulation, update_settings, users)
    finally:
        torch.set_num_threads(threads)
    dp = strategy if isinstance(strategy, DPFedAvg) else None
    return FederatedResult(
        strategy=repr(strategy), start=start, initial_error=initial_error,
        rounds=tuple(history), users=tuple(users), foundation=model,
        epsilon=dp.epsilon() if dp else None, delta=dp.delta if dp else None,
        noise_multiplier=dp.noise_multiplier if dp else None,
        accountant=dp.accountant if dp else None, seconds=time.perf_counter() - started,
        secure_random=dp.secure_random if dp else None)

