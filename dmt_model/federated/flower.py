"""The rounds of a federated run, played by Flower's simulation engine.

One Flower ``ServerApp`` and one ``ClientApp`` per run, started with
:func:`flwr.simulation.run_simulation` on its Ray backend, one virtual
SuperNode per simulated user (``partition-id`` = the user's index). The
server side is Flower's own strategy — ``FedAvg``, ``FedProx``, and for DP
its ``DifferentialPrivacyServerSideFixedClipping`` wrapper (each client's
update clipped to ``C`` in L2 norm, Gaussian noise of std ``σC/m`` on the
mean of the ``m`` sampled clients) — and of the arithmetic only the noise's
draws are ours. What this module adds:

* the client's training step, the same as the SDK's trainers (the scale-free
  squared error, SGD or RMSprop, batches reshuffled from a seed of
  ``(seed, round, client)``), with FedProx's proximal term
  ``μ/2 · ‖w − w_global‖²`` (the paper's squared norm) when Flower sends
  ``proximal-mu``;
* the ledger: Flower's fixed-clipping wrapper is subclassed to charge the
  Opacus accountant of :class:`~dmt_model.federated.DPFedAvg` when a noisy
  aggregate is released, to refuse a round past ``target_epsilon`` before any
  client trains, and to refuse to release a round unless all ``m`` sampled
  clients sent an update (:class:`FederatedRunError`; Flower would average
  fewer under noise calibrated for ``m``, with a warning);
* the noise's source: Flower draws it from numpy's global generator, which a
  seed replays; the wrapper draws it from the strategy's
  :attr:`~dmt_model.federated.DPFedAvg.noise_source` instead (the operating
  system's CSPRNG unless ``random_state`` seeds it;
  :mod:`dmt_model.federated.noise`);
* per-round measurements (which clients, their loss, update norms and CPU
  seconds of local training, the
  mean per-user test error of the global model via Flower's ``evaluate_fn``).

Client sampling is Flower's (``random.sample`` of ``max(1, round(f·N))``
nodes once all ``N`` have connected), from a generator of the strategy's seed
and the round; the global ``random`` is seeded for the run and restored
afterwards, the nodes are numbered in the order of the users
(:func:`_nodes_numbered_in_partition_order`) and the replies are aggregated
in the order of the clients, not of their arrival, so a run without DP, or
with seeded DP noise, is reproducible from its seeds. Flower's log shows its
warnings during a run (its notes below WARNING are hidden).

The client app is handed to Ray's worker processes by Ray (cloudpickle):
that is inside one machine's simulation, not a trust boundary. The clients'
records and the network travel once a run through Ray's object store, not
with every message (:class:`_ByReference`).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import logging
import math
import os
import random
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from dmt_model.federated.noise import standard_normal
from dmt_model.federated.strategy import DPFedAvg, FedAvg, FedProx, Strategy
from dmt_model.foundation import _import_torch, _rmsprop
from dmt_privacy.errors import DMTError, MissingDependencyError, ValidationError

__all__ = ["ClientData", "FederatedRunError", "RoundLog", "ray_session", "run_rounds",
           "trainable_parameters"]

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


@functools.cache
def _torch_warmed_up() -> None:
    """Once a process: what torch does at its first optimizer step and nowhere after (imports
    its compiler, about 2 s of CPU), so that a client's seconds are its training's."""
    torch = _import_torch()
    weight = torch.zeros(1, requires_grad=True)
    for optimizer in (torch.optim.SGD([weight], lr=0.1, foreach=True), _rmsprop([weight], 0.1)):
        (weight * 2).sum().backward()
        optimizer.step()


@dataclass
class _ClientTrainer:
    """Everything a client process needs: the starting network and every user's records."""

    network: Any
    base: FedAvg
    users: list[ClientData]
    #: Copies of ``network`` a finished call left, for the next call to reset and train
    #: (deep-copying the network for each client's round was a quarter of its CPU); never
    #: pickled.
    _spare: list[Any] = field(default_factory=list, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_spare": []}

    def _working_network(self) -> Any:
        """A copy of ``network`` to train: every parameter and buffer its values, each
        parameter's ``requires_grad`` its, no gradients (a spare one reset, else a deep
        copy); :meth:`train` sets the mode."""
        try:
            network = self._spare.pop()
        except IndexError:
            return copy.deepcopy(self.network)
        torch = _import_torch()
        with torch.no_grad():
            for mine, start in zip(network.parameters(), self.network.parameters(),
                                   strict=True):
                mine.copy_(start)
                mine.requires_grad_(start.requires_grad)
                mine.grad = None
            for mine, start in zip(network.buffers(), self.network.buffers(), strict=True):
                mine.copy_(start)
        return network

    def train(self, client: int, arrays: list[np.ndarray], round_index: int,
              proximal_mu: float) -> tuple[list[np.ndarray], dict[str, Any]]:
        torch = _import_torch()
        torch.set_num_threads(1)  # a network this small trains fastest on one thread
        _torch_warmed_up()  # (a process's first optimizer imports torch's compiler: not a client's)
        started = time.process_time()
        network = self._working_network()
        try:
            return self._train(network, client, arrays, round_index, proximal_mu, started)
        finally:
            self._spare.append(network)

    def _train(self, network: Any, client: int, arrays: list[np.ndarray], round_index: int,
               proximal_mu: float, started: float) -> tuple[list[np.ndarray], dict[str, Any]]:
        torch = _import_torch()
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
            optimizer = torch.optim.SGD(parameters, lr=base.local_learning_rate, foreach=True)
        else:
            optimizer = _rmsprop(parameters, base.local_learning_rate)
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


class _ByReference:
    """The client trainer as Flower's messages carry it: by reference, not by value.

    Flower's Ray backend pickles the ``ClientApp`` — with everything its functions close
    over — into every message it sends a client. Closed over directly, the trainer (the
    network and every user's records) was pickled in the driver and unpickled in a worker
    for each client of each round: in ``benchmarks/fl_protocol.py`` the driver spent more
    time pickling it than the clients spent training. The first time this is pickled
    with Ray running, the trainer goes into Ray's object store once, and every message
    carries only its reference; each worker process fetches it once a run
    (:func:`_trainer_in_worker`). Without Ray it is pickled by value, as before. The
    trainer is stateless between calls (each call trains a copy of the network reset to its
    values, and seeds its own generator), so a cached one trains exactly as a fresh copy
    does."""

    def __init__(self, trainer: _ClientTrainer) -> None:
        self.trainer = trainer
        self._run = uuid.uuid4().hex  # object ids may repeat across Ray clusters; runs don't
        self._reference: Any = None
        self._lock = threading.Lock()

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        with self._lock:  # Flower's worker threads send messages concurrently
            if self._reference is None:
                ray: Any = None
                with contextlib.suppress(ImportError):
                    import ray
                if ray is None or not ray.is_initialized():
                    return _by_value, (self.trainer,)
                self._reference = ray.put(self.trainer)
            return _trainer_in_worker, (self._run, self._reference)


def _by_value(trainer: _ClientTrainer) -> _ClientTrainer:
    return trainer


#: This process's trainer of the current run, by the run's id (one run at a time: a worker
#: that sees a new run drops the last one's).
_TRAINERS: dict[str, _ClientTrainer] = {}


def _trainer_in_worker(run: str, reference: Any) -> _ClientTrainer:
    """Run ``run``'s trainer, fetched from Ray's object store (``reference``) once per
    process."""
    import ray

    if run not in _TRAINERS:
        _TRAINERS.clear()
        _TRAINERS[run] = ray.get(reference)
    return _TRAINERS[run]


def _ray_temporary_root() -> str:
    """Where Ray would keep its temporary folder (``RAY_TMPDIR``, else ``TMPDIR`` on Linux,
    else ``/tmp`` on Linux and macOS: the paths of its sockets must stay short)."""
    if os.environ.get("RAY_TMPDIR"):
        return os.environ["RAY_TMPDIR"]
    if sys.platform.startswith("linux") and os.environ.get("TMPDIR"):
        return os.environ["TMPDIR"]
    if sys.platform.startswith(("linux", "darwin")):
        return "/tmp"  # noqa: S108 — Ray's own choice, for short socket paths
    return tempfile.gettempdir()


def _ray_init_args(folder: str) -> dict[str, Any]:
    """How a run starts its Ray (:func:`run_rounds`, :func:`ray_session`): a local Ray of its
    own, 2 CPUs, logs and sockets in ``folder``."""
    # A Ray of its own: ray.init() would otherwise join RAY_ADDRESS or a cluster another
    # process started.
    return {"address": "local", "num_cpus": 2, "object_store_memory": 100 * 2 ** 20,
            "log_to_driver": False, "_temp_dir": folder}


@contextlib.contextmanager
def ray_session() -> Iterator[None]:
    """One local Ray, and one pool of client actors, for every federated run inside it.

    Flower's Ray backend starts Ray when a run starts and shuts it down when the run ends
    (``RayBackend.terminate``, flwr 1.42), and makes its client actors anew in every run
    (``RayBackend.build``). On the 2-core machine that was about 4 s a run to start and
    stop Ray (for a run whose rounds take 10-20 s), and then 3-4 s of CPU an actor: each
    new actor's process imports torch and flwr and, at its first optimizer, torch's
    compiler (``benchmarks/fl_protocol.py``, one Friedman FedAvg run: each of the two
    actors spent 9 s of CPU for 4.4 s of training). Inside this, Ray is started once (with
    the arguments and the workers' import path :func:`run_rounds` gives it; unlike
    Flower's start, this process's ``PYTHONPATH`` is left as it is) and each run's backend
    takes the session's actors, made by the first run that asks for them; a run's end
    leaves them for the next, and Ray stops when the block ends, whatever ended it. A run's
    start replaces them with new ones when it asks for other resources, when one of them no
    longer answers (it died: Flower would send it clients all the same, and drop their
    replies), and when one is still busy (the run before was interrupted). Runs are the
    same as alone: a client's training depends only on its message (the network, its
    records and a seed drawn from the run's seed, round and client;
    :class:`_ClientTrainer`), not on which process ran what before it, and each run's
    trainer is a new object in Ray's store. If Ray is running already (started by the
    caller), this does nothing: each run ends that Ray, as it always did. For benchmarks
    and simulations that run many federated runs in one process.
    """
    _import_flower()
    import ray
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend
    from flwr.simulation.ray_transport.ray_actor import BasicActorPool, ClientAppActor

    if ray.is_initialized():
        yield
        return
    build, terminate = RayBackend.build, RayBackend.terminate
    actors: dict[str, Any] = {}  # the session's pool, and the resources it was made with

    def resources_of(backend: Any) -> tuple[Any, ...]:
        return (tuple(sorted(backend.client_resources.items())),
                tuple(sorted(backend.actor_kwargs.items())))

    def answering(pool: Any) -> bool:
        """Every actor idle (one not back in the pool is busy, or lost) and alive."""
        if not pool.pool or len(pool.pool) != pool.num_actors:
            return False
        try:
            ray.get([actor.__ray_ready__.remote() for actor in pool.pool], timeout=60)
        except ray.exceptions.RayError:
            return False
        return True

    def end_actors() -> None:
        actors.pop("pool", None)
        # Every actor the pool was made with (Flower's terminate_all_actors ends only the
        # idle ones, and an actor whose job could not be sent is in neither of its lists);
        # one that cannot be killed must not keep the others alive.
        for actor in actors.pop("made", []):
            with contextlib.suppress(Exception):
                ray.kill(actor)

    def with_session_actors(backend: Any, app_fn: Callable[[], Any]) -> None:
        resources = resources_of(backend)
        if "pool" not in actors or actors["resources"] != resources \
                or not answering(actors["pool"]):
            end_actors()  # (the session's actors hold its CPUs: new ones need them)
            pool = BasicActorPool(actor_type=ClientAppActor,
                                  client_resources=backend.client_resources,
                                  actor_kwargs=backend.actor_kwargs)
            pool.add_actors_to_pool(pool.actors_capacity)
            actors.update(pool=pool, resources=resources, made=list(pool.pool))
        backend.pool, backend.app_fn = actors["pool"], app_fn

    def leave_actors(backend: Any) -> None:
        """A run's end: its actors stay for the next run, whose start checks them."""

    with tempfile.TemporaryDirectory(prefix="dmt-ray-", dir=_ray_temporary_root(),
                                     ignore_cleanup_errors=True) as folder:
        # Flower passes Ray's workers this driver's import path (RayBackend.init_ray); so
        # does this start.
        pythonpath = os.pathsep.join(sys.path + ([os.environ["PYTHONPATH"]]
                                                 if os.environ.get("PYTHONPATH") else []))
        try:
            ray.init(runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
                     include_dashboard=False, **_ray_init_args(folder))
            RayBackend.build = with_session_actors  # type: ignore[method-assign,assignment]
            RayBackend.terminate = leave_actors  # type: ignore[method-assign,assignment]
            yield
        finally:
            RayBackend.build, RayBackend.terminate = build, terminate  # type: ignore[method-assign]
            try:
                end_actors()
            finally:
                ray.shutdown()


@contextlib.contextmanager
def _nodes_numbered_in_partition_order() -> Iterator[None]:
    """Flower's in-memory link state gives each simulated node a random 64-bit id
    (``secrets``), and its strategies sample a round's clients with ``random.sample``
    over the set of ids: the seeded draw picked other users on every run (flwr 1.42;
    Friedman, two runs of one seed trained different clients from round 1). For the
    run, the link state numbers what it creates in sequence instead, so node ``i`` is
    partition ``i``'s in order and the seeded sample names the same users every time.
    The ids only need to be unique within the run's in-memory state, which is private
    to the simulation. Not re-entrant (nor is a run: it seeds the process's generators),
    like :func:`_sampling_from`."""
    from flwr.server.superlink.linkstate import in_memory_linkstate as state

    random_id = state.generate_rand_int_from_bytes
    counter = itertools.count(2)  # 0 and 1 (the SuperLink's own node) are reserved

    def in_sequence(num_bytes: int, exclude: set[int] | None = None) -> int:
        while (number := next(counter)) in (exclude or ()):
            pass
        return number

    state.generate_rand_int_from_bytes = in_sequence
    try:
        yield
    finally:
        state.generate_rand_int_from_bytes = random_id


@contextlib.contextmanager
def _nodes_with_nothing_waiting_skip_the_scan() -> Iterator[None]:
    """Flower's simulation asks its in-memory link state for each node's next message, for
    every node, every 0.1 s (``add_messages_to_queue``, flwr 1.42), and each ask checks
    every stored message for expiry before it looks at the message's destination: a
    node-by-message scan ten times a second, though a node has a message only once in a
    round it takes part in (``benchmarks/fl_protocol.py``, one Friedman FedAvg run of 120
    nodes: 3.8 s of the driver's CPU in that thread). For the run, a node with no
    undelivered message is answered with none before the scan (a look at each message's
    destination, not its expiry); a node with one is scanned as before, expired messages
    deleted as that scan meets them. Not re-entrant, like
    :func:`_nodes_numbered_in_partition_order`."""
    from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState

    scan = InMemoryLinkState.get_message_ins

    def scan_if_waiting(self: Any, node_id: int, limit: int | None, *,
                        run_id: int | None = None) -> list[Any]:
        with self.lock:
            waiting = any(message.metadata.dst_node_id == node_id
                          and message.metadata.delivered_at == ""
                          for message in self.message_ins_store.values())
        return scan(self, node_id, limit, run_id=run_id) if waiting else []

    InMemoryLinkState.get_message_ins = scan_if_waiting  # type: ignore[method-assign]
    try:
        yield
    finally:
        InMemoryLinkState.get_message_ins = scan  # type: ignore[method-assign]


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


@contextlib.contextmanager
def _sampling_from(seed: int, server_round: int) -> Iterator[None]:
    """Flower's ``sample_nodes`` draws from a generator of ``(seed, server_round)`` alone."""
    from flwr.serverapp.strategy import strategy_utils

    drawn = strategy_utils.random
    # a simulation's seeded sample, not a secret
    sample: Any = random.Random(f"dmt client sample {seed} {server_round}")  # noqa: S311
    strategy_utils.random = sample
    try:
        yield
    finally:
        strategy_utils.random = drawn


def _client_of(reply: Any) -> tuple[int, float]:
    """The sending client's index (replies that failed last, in any order)."""
    if reply.has_error():
        return (1, 0.0)
    metrics: Any = next(iter(reply.content.metric_records.values()), {})
    return (0, float(metrics.get("client", math.inf)))


class _ExpectedFlowerNotes(logging.Filter):
    """Flower's warnings about what every run does on purpose (no federated evaluation:
    the server evaluates; ``run_simulation``, deprecated in flwr 1.42 for ``flwr run``),
    dropped during a run so that its other warnings are read."""

    EXPECTED = ("fraction_evaluate is set to 0.0", "`run_simulation` function is deprecated")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(note in message for note in self.EXPECTED)


def _refuse_an_incomplete_round(server_round: int, replies: list[Any], sampled: int) -> None:
    """DP-FedAvg's noise, σC/m on the mean, is calibrated for the mean of m updates: over
    fewer, each counts for more than the noise hides (and Flower, without an accountant of
    its own, would release such a round with a warning). Refused unless all m replied with
    an update."""
    updates = sum(not reply.has_error() for reply in replies)
    if updates == sampled and len(replies) == sampled:
        return
    failed = len(replies) - updates
    raise FederatedRunError(
        f"Round {server_round}: {updates} of the {sampled} sampled clients sent an update "
        f"({failed} failed, {max(0, sampled - len(replies))} did not reply). DP-FedAvg "
        f"releases a round only with all {sampled} updates, since its noise is calibrated "
        "for their mean; nothing was released or charged for this round (the ledger keeps "
        "the rounds released before it). Find why the clients failed and run again.")


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
    flower: type = FlowerFedAvg
    if isinstance(base, FedProx):
        flower, options["proximal_mu"] = FlowerFedProx, base.proximal_mu

    class InClientOrder(flower):  # type: ignore[misc, valid-type]
        """Flower's strategy, reproducible from the seed: a round's clients are sampled from
        a generator of ``(seed, round)`` rather than the global ``random``, which Ray's
        start-up draws from in another thread (so the first round's sample depended on
        timing), and the replies are summed in the order of the clients rather than the
        order they arrived in (float32 sums in arrival order made two runs of one seed
        differ: Friedman, 5 rounds, the global model's error 114.5–115.4)."""

        def configure_train(self, server_round: int, arrays: Any, config: Any,
                            grid: Any) -> Iterable[Any]:
            with _sampling_from(base.seed, server_round):
                return list(super().configure_train(server_round, arrays, config, grid))

        def aggregate_train(self, server_round: int, replies: Iterable[Any]) -> Any:
            return super().aggregate_train(server_round, sorted(replies, key=_client_of))

    inner = InClientOrder(**options)
    if dp is None:
        return inner
    ledger: DPFedAvg = dp
    if not callable(getattr(DifferentialPrivacyServerSideFixedClipping,
                            "_add_noise_to_aggregated_arrays", None)):
        raise MissingDependencyError(
            "This version of flwr adds its DP noise elsewhere than "
            "_add_noise_to_aggregated_arrays (flwr 1.42), where DP-FedAvg draws it from a "
            "secure source instead of numpy's global generator; install flwr 1.42.")

    class AccountedServerSideFixedClipping(DifferentialPrivacyServerSideFixedClipping):
        """Flower's server-side fixed clipping, charging our Opacus ledger per release, its
        noise drawn from the strategy's source, a round released only with all m updates."""

        def configure_train(self, server_round: int, arrays: Any, config: Any,
                            grid: Any) -> Iterable[Any]:
            ledger.check_next_round()  # refuse before any client trains on a round past the budget
            return super().configure_train(server_round, arrays, config, grid)

        def aggregate_train(self, server_round: int, replies: Iterable[Any]) -> Any:
            replies = list(replies)
            _refuse_an_incomplete_round(server_round, replies, self.num_sampled_clients)
            arrays, metrics = super().aggregate_train(server_round, replies)
            if arrays is not None:
                ledger.charge_round()
            return arrays, metrics

        def _add_noise_to_aggregated_arrays(self, aggregated_arrays: Any) -> Any:
            """Flower's noise, std σC/m on the mean, from the strategy's source rather than
            numpy's global generator (``np.random.normal``, which a seed replays)."""
            from flwr.app import Array, ArrayRecord
            from flwr.supercore.differential_privacy import compute_stdv

            std = compute_stdv(self.noise_multiplier, self.clipping_norm,
                               self.num_sampled_clients)
            noisy = [array + (std * standard_normal(ledger.noise_source, array.shape)
                              ).astype(array.dtype)
                     for array in aggregated_arrays.to_numpy_ndarrays()]
            return ArrayRecord({key: Array(np.asarray(value)) for key, value in zip(
                aggregated_arrays.keys(), noisy, strict=True)})

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
    shared = _ByReference(_ClientTrainer(copy.deepcopy(network), base, train))
    start = [p.detach().numpy().astype(np.float32).copy()
             for p in trainable_parameters(copy.deepcopy(network), base)]
    logs: list[RoundLog] = []
    outcome: dict[str, Any] = {}

    client_app = ClientApp()

    @client_app.train()
    def _train(msg: Message, context: Context) -> Message:
        config: Any = msg.content["config"]
        received: Any = msg.content["arrays"]
        trainer = shared.trainer if isinstance(shared, _ByReference) else shared
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
    saved = random.getstate()
    random.seed(base.seed)  # Flower samples nodes with `random`
    flower_log = logging.getLogger("flwr")
    level, expected = flower_log.level, _ExpectedFlowerNotes()
    flower_log.setLevel(logging.WARNING)  # its round-by-round notes, not its warnings
    flower_log.addFilter(expected)
    try:
        # Ray keeps each session's logs and sockets in its temporary folder (/tmp/ray) for
        # good; the run's own folder goes when the run ends.
        with warnings.catch_warnings(), _zero_updates_need_no_clipping(), \
                _nodes_numbered_in_partition_order(), \
                _nodes_with_nothing_waiting_skip_the_scan(), tempfile.TemporaryDirectory(
                    prefix="dmt-ray-", dir=_ray_temporary_root(),
                    ignore_cleanup_errors=True) as ray_folder:
            warnings.simplefilter("ignore")  # run_simulation's deprecation note, Ray's tips
            run_simulation(server_app, client_app, num_supernodes=n_clients,
                           backend_config={"client_resources": {"num_cpus": 1},
                                           "init_args": _ray_init_args(ray_folder)})
    finally:
        random.setstate(saved)
        flower_log.setLevel(level)
        flower_log.removeFilter(expected)
    if "error" in outcome:
        raise outcome["error"]
    if "arrays" not in outcome or len(logs) != base.rounds:
        raise FederatedRunError(
            f"Flower's simulation ended after {len(logs)} of {base.rounds} rounds without "
            "a final model; its log above says why.")
    return outcome["arrays"], outcome["initial_error"], logs

