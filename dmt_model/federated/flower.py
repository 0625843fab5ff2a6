"""The rounds of a federated run, played by Flower's simulation engine.

One Flower ``ServerApp`` and one ``ClientApp`` per run, started with
:func:`flwr.simulation.run_simulation` on its Ray backend, one virtual
SuperNode per simulated user (``partition-id`` = the user's index). The
server side is Flower's own strategy — ``FedAvg``, ``FedProx``, and for DP
its ``DifferentialPrivacyServerSideFixedClipping`` wrapper (each client's
update clipped to ``C`` in L2 norm, Gaussian noise of std ``σC/m`` on the
mean of the ``m`` sampled clients) — and nothing of the arithmetic is ours.
What this module adds:

* the client's training step, the same as the SDK's trainers (the scale-free
  squared error, SGD or RMSprop, batches reshuffled from a seed of
  ``(seed, round, client)``), with FedProx's proximal term
  ``μ/2 · ‖w − w_global‖²`` (the paper's squared norm) when Flower sends
  ``proximal-mu``;
* the ledger: Flower's fixed-clipping wrapper is subclassed only to charge
  the Opacus accountant of :class:`~dmt_model.federated.DPFedAvg` when a noisy
  aggregate is released, and to refuse a round past ``target_epsilon``
  before any client trains;
* per-round measurements (which clients, their loss, update norms and CPU
  seconds of local training, the
  mean per-user test error of the global model via Flower's ``evaluate_fn``).

Client sampling is Flower's (``random.sample`` of ``max(1, round(f·N))``
nodes once all ``N`` have connected); Flower's global ``random`` and numpy
generators are seeded from the strategy's seed for the run and restored
afterwards, so a run is reproducible from its seed up to float32 rounding
(Flower sums the replies in the order they arrive).

The client app is handed to Ray's worker processes by Ray (cloudpickle):
that is inside one machine's simulation, not a trust boundary.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import random
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from dmt_model.federated.strategy import DPFedAvg, FedAvg, FedProx, Strategy
from dmt_model.foundation import _import_torch
from dmt_privacy.errors import DMTError, MissingDependencyError, ValidationError

__all__ = ["ClientData", "FederatedRunError", "RoundLog", "run_rounds", "trainable_parameters"]

_WEIGHT = "num-examples"
_UNIFORM = "dp-weight"  # DP: every user counts once, whatever their number of records


@dataclass(frozen=True)
class ClientData:
    """One user's records as the tensors the network reads."""

    inputs: list[Any]
    target: Any
    n: int


@dataclass
class RoundLog:
    """What the server saw in one round (filled in by the server app as it runs)."""

    clients: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    examples: list[int] = field(default_factory=list)
    norms: list[float] = field(default_factory=list)
    diverged: int = 0
    seconds: float = 0.0
    test_error: float = math.nan
    epsilon: float | None = None


class FederatedRunError(DMTError, RuntimeError):
    """Flower's simulation ended without a final global model."""


def _import_flower() -> Any:
    try:
        import flwr
    except ImportError:
        raise MissingDependencyError(
            "Flower runs the federated baselines; install it with "
            "`pip install 'dmt-sdk[federated]'` (flwr[simulation])."
        ) from None
    return flwr


def trainable_parameters(network: Any, base: FedAvg) -> list[Any]:
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


def _client_seed(seed: int, round_index: int, client: int) -> int:
    return int(np.random.SeedSequence([seed, round_index, client]).generate_state(1)[0])


@dataclass
class _ClientTrainer:
    """Everything a client process needs: the starting network and every user's records."""

    network: Any
    base: FedAvg
    users: list[ClientData]

    def train(self, client: int, arrays: list[np.ndarray], round_index: int,
              proximal_mu: float) -> tuple[list[np.ndarray], dict[str, Any]]:
        torch = _import_torch()
        torch.set_num_threads(1)  # a network this small trains fastest on one thread
        started = time.process_time()
        network = copy.deepcopy(self.network)
        parameters = trainable_parameters(network, self.base)
        with torch.no_grad():
            for parameter, value in zip(parameters, arrays, strict=True):
                parameter.copy_(torch.from_numpy(np.asarray(value)))
        start = [p.detach().clone() for p in parameters]
        data = self.users[client]
        metrics: dict[str, Any] = {"client": float(client), _WEIGHT: float(data.n), _UNIFORM: 1.0,
                   "loss": 0.0, "update-norm": 0.0, "diverged": 0.0, "seconds": 0.0}
        if data.n == 0:
            return [np.asarray(a) for a in arrays], metrics
        base = self.base
        if base.local_optimizer == "sgd":
            optimizer = torch.optim.SGD(parameters, lr=base.local_learning_rate)
        else:
            optimizer = torch.optim.RMSprop(parameters, lr=base.local_learning_rate,
                                            alpha=0.9, eps=1e-7)
        shuffle = torch.Generator().manual_seed(_client_seed(base.seed, round_index, client))
        network.train()
        total, count = 0.0, 0
        for _ in range(base.local_epochs):
            order = torch.randperm(data.n, generator=shuffle)
            for first in range(0, data.n, base.local_batch_size):
                index = order[first:first + base.local_batch_size]
                optimizer.zero_grad()
                loss = torch.mean(network.task.record_loss(
                    network, network.outputs(*(t[index] for t in data.inputs)),
                    data.target[index]))
                objective = loss
                if proximal_mu > 0:
                    objective = loss + proximal_mu / 2 * sum(
                        torch.sum((p - s) ** 2) for p, s in zip(parameters, start, strict=True))
                objective.backward()
                optimizer.step()
                total += float(loss.detach()) * len(index)
                count += len(index)
        local = [p.detach().numpy().astype(np.float32) for p in parameters]
        delta = [np.asarray(a, np.float64) - np.asarray(b, np.float64)
                 for a, b in zip(local, arrays, strict=True)]
        if not all(np.isfinite(d).all() for d in delta) or not math.isfinite(total):
            # A diverged client sends the global model back with no weight (a dropout).
            metrics.update({_WEIGHT: 0.0, "diverged": 1.0})
            return [np.asarray(a) for a in arrays], metrics
        metrics["loss"] = total / count
        metrics["seconds"] = time.process_time() - started
        metrics["update-norm"] = float(math.sqrt(sum(float(np.sum(d ** 2)) for d in delta)))
        return local, metrics


@contextlib.contextmanager
def _zero_updates_need_no_clipping() -> Iterator[None]:
    """Flower's fixed clipping scales an update by ``min(1, C / ‖u‖)``, dividing by zero
    when a client's update is exactly zero (flwr 1.42: a classifier whose softmax saturates
    on a user's few records has zero gradients, and the run dies with ZeroDivisionError).
    A zero update is within every clipping norm: for the run, it is left as it is."""
    from flwr.supercore import differential_privacy

    clip = differential_privacy.clip_inputs_inplace

    def clip_nonzero(input_arrays: Any, clipping_norm: float) -> None:
        if differential_privacy.get_norm(input_arrays) > 0:
            clip(input_arrays, clipping_norm)

    differential_privacy.clip_inputs_inplace = clip_nonzero
    try:
        yield
    finally:
        differential_privacy.clip_inputs_inplace = clip


def _flower_strategy(strategy: Strategy, n_clients: int, record: Callable[..., Any]) -> Any:
    """Flower's strategy for our settings; DP wraps it as Flower's DP wrappers do."""
    from flwr.serverapp.strategy import (
        DifferentialPrivacyServerSideFixedClipping,
    )
    from flwr.serverapp.strategy import (
        FedAvg as FlowerFedAvg,
    )
    from flwr.serverapp.strategy import (
        FedProx as FlowerFedProx,
    )

    base = strategy.base
    dp = strategy if isinstance(strategy, DPFedAvg) else None
    m = dp.clients_per_round(n_clients) if dp else base.clients_per_round(n_clients)
    options: dict[str, Any] = {
        "fraction_train": m / n_clients, "fraction_evaluate": 0.0, "min_train_nodes": m,
        "min_evaluate_nodes": 0, "min_available_nodes": n_clients,
        "weighted_by_key": _UNIFORM if dp else _WEIGHT, "train_metrics_aggr_fn": record}
    inner = (FlowerFedProx(proximal_mu=base.proximal_mu, **options)
             if isinstance(base, FedProx) else FlowerFedAvg(**options))
    if dp is None:
        return inner
    ledger: DPFedAvg = dp

    class AccountedServerSideFixedClipping(DifferentialPrivacyServerSideFixedClipping):
        """Flower's server-side fixed clipping, charging our Opacus ledger per release."""

        def configure_train(self, server_round: int, arrays: Any, config: Any,
                            grid: Any) -> Iterable[Any]:
            ledger.check_next_round()  # refuse before any client trains on a round past the budget
            return super().configure_train(server_round, arrays, config, grid)

        def aggregate_train(self, server_round: int, replies: Iterable[Any]) -> Any:
            arrays, metrics = super().aggregate_train(server_round, replies)
            if arrays is not None:
                ledger.charge_round()
            return arrays, metrics

    return AccountedServerSideFixedClipping(inner, noise_multiplier=dp.noise_multiplier,
                                            clipping_norm=dp.clip_norm, num_sampled_clients=m)


def run_rounds(strategy: Strategy, network: Any, train: list[ClientData],
               evaluate: Callable[[list[np.ndarray]], float],
               on_round_end: Callable[[int, RoundLog], None] | None = None,
               ) -> tuple[list[np.ndarray], float, list[RoundLog]]:
    """Run ``strategy.base.rounds`` rounds in Flower's simulation engine.

    ``network`` is the starting model (its trainable parameters are the
    initial global arrays; it is not changed), ``train`` one
    :class:`ClientData` per user, ``evaluate`` the mean per-user test error
    of a global model given as its trainable arrays. Returns the final
    arrays, the starting model's error and one :class:`RoundLog` per round.
    """
    _import_flower()
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    base = strategy.base
    n_clients = len(train)
    trainer = _ClientTrainer(copy.deepcopy(network), base, train)
    start = [p.detach().numpy().astype(np.float32).copy()
             for p in trainable_parameters(copy.deepcopy(network), base)]
    logs: list[RoundLog] = []
    outcome: dict[str, Any] = {}

    client_app = ClientApp()

    @client_app.train()
    def _train(msg: Message, context: Context) -> Message:
        config: Any = msg.content["config"]
        received: Any = msg.content["arrays"]
        arrays, metrics = trainer.train(
            int(cast(int, context.node_config["partition-id"])), received.to_numpy_ndarrays(),
            int(config["server-round"]) - 1, float(config.get("proximal-mu", 0.0)))
        return Message(RecordDict({"arrays": ArrayRecord(arrays),
                                   "metrics": MetricRecord(metrics)}), reply_to=msg)

    def record(replies: list[RecordDict], weighted_by: str) -> MetricRecord:
        log = RoundLog()
        for reply in replies:
            metrics: dict[str, Any] = dict(next(iter(reply.metric_records.values())))
            log.clients.append(int(metrics["client"]))
            log.seconds += float(metrics["seconds"])
            if metrics["diverged"]:
                log.diverged += 1
                continue
            log.examples.append(int(metrics[_WEIGHT]))
            log.losses.append(float(metrics["loss"]))
            log.norms.append(float(metrics["update-norm"]))
        logs.append(log)
        return MetricRecord({})

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        error = evaluate(arrays.to_numpy_ndarrays())
        if server_round == 0:
            outcome["initial_error"] = error
        else:
            log = logs[-1]
            log.clients.sort()
            log.test_error = error
            log.epsilon = strategy.epsilon() if isinstance(strategy, DPFedAvg) else None
            if on_round_end is not None:
                on_round_end(server_round - 1, log)
        return MetricRecord({"test-error": error})

    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        try:
            flower = _flower_strategy(strategy, n_clients, record)
            result = flower.start(grid=grid, initial_arrays=ArrayRecord(start),
                                  num_rounds=base.rounds, evaluate_fn=evaluate_fn)
            outcome["arrays"] = result.arrays.to_numpy_ndarrays()
        except BaseException as exc:  # re-raised in the caller's thread
            outcome["error"] = exc

    if isinstance(strategy, DPFedAvg):
        strategy.begin(n_clients)
    saved = random.getstate(), np.random.get_state()  # noqa: NPY002 — restored below
    random.seed(base.seed)  # Flower samples nodes with `random`
    np.random.seed(base.seed)  # noqa: NPY002 — Flower's DP noise uses the global generator
    flower_log = logging.getLogger("flwr")
    level = flower_log.level
    flower_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), _zero_updates_need_no_clipping():
            warnings.simplefilter("ignore")  # run_simulation's deprecation note, Ray's tips
            run_simulation(server_app, client_app, num_supernodes=n_clients,
                           backend_config={"client_resources": {"num_cpus": 1},
                                           # A Ray of its own: ray.init() would otherwise join
                                           # RAY_ADDRESS or a cluster another process started.
                                           "init_args": {"address": "local", "num_cpus": 2,
                                                         "object_store_memory": 100 * 2 ** 20,
                                                         "log_to_driver": False}})
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])  # noqa: NPY002
        flower_log.setLevel(level)
    if "error" in outcome:
        raise outcome["error"]
    if "arrays" not in outcome or len(logs) != base.rounds:
        raise FederatedRunError(
            f"Flower's simulation ended after {len(logs)} of {base.rounds} rounds without "
            "a final model; its log above says why.")
    return outcome["arrays"], outcome["initial_error"], logs

