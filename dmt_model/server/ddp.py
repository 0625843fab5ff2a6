"""Foundation retraining with torch DistributedDataParallel, launched by ``torchrun``.

The same training as :func:`dmt_model.server.retrain.retrain_foundation`
(same featurizer, sample weights, RMSProp, batches and shuffles), spread over
processes: every rank builds the whole training set and draws the same
permutation each epoch; each global mini-batch of ``batch_size`` records is
split across the ranks (rank r takes positions r, r + W, …). Early stopping holds
out the same records; every rank scores them and rank 0's score decides. A rank's loss is
``W · Σ_local w (ŷ − y)² / Σ_batch w``, so DDP's gradient average equals the
gradient of the single-process weighted batch mean: both paths give the same
model for the same seed, up to float rounding in the all-reduce.

Gloo on CPU, one thread per rank. On one machine::

    torchrun --nproc-per-node 2 -m dmt_model.server.ddp \\
        --foundation foundation.npz --db sqlite:///server.db --key server.key \\
        -o foundation-next.npz

On several machines, the same command on each, with the first one's address
(reachable from the others, on a private network: gloo traffic is not
encrypted), ``--nnodes N --node-rank i --master-addr HOST --master-port PORT``;
``GLOO_SOCKET_IFNAME`` names the network interface when there are several.
Every rank reads the proxy data and the database, so each machine needs the
private key (or give them a shared CSV made on the server with ``--shared``).
Rank 0 writes the result.

Scaling: the foundation network is tiny (~3k parameters), so DDP pays off for
large shared data sets, not for Boston: each step all-reduces the gradients.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dmt_model.features import FeatureBatch, Featurizer
from dmt_model.foundation import (
    Foundation,
    TrainingConfig,
    _early_stopping_split,
    _import_torch,
    _rmsprop,
    _Stopping,
    network_for,
    standardized_squared_error,
)
from dmt_model.server.retrain import SharedBatch, training_set
from dmt_privacy.errors import OutputExistsError, ValidationError

__all__ = ["agreed_read", "fit_foundation_ddp", "main", "retrain_foundation_ddp"]


def _digest(batches: Sequence[SharedBatch]) -> bytes:
    """What a rank read: each batch's package and records (values and index), in order."""
    h = hashlib.sha256()
    for batch in batches:
        h.update(batch.package_id.encode() + b"\0")
        h.update(pd.util.hash_pandas_object(batch.records, index=True).to_numpy().tobytes())
        h.update(",".join(map(str, batch.records.columns)).encode() + b"\0")
    return h.digest()


def _gather_digests(digest: bytes) -> list[bytes]:
    """Every rank's ``digest`` (a tensor each: no pickled objects between processes)."""
    torch = _import_torch()
    import torch.distributed as dist

    mine = torch.tensor(list(digest), dtype=torch.int64)
    every = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(every, mine)
    return [bytes(t.tolist()) for t in every]


def agreed_read(read: Callable[[], list[SharedBatch]],
                gather: Callable[[bytes], list[bytes]] = _gather_digests, *,
                attempts: int = 3) -> list[SharedBatch]:
    """``read()`` on every rank (each reads the store itself) until all read the same.

    A release or removal committing between two ranks' reads gave them different data
    (helper-62): records trained twice or not at all, and a removed package's on one rank
    only. Each rank reads one snapshot (:func:`~dmt_model.server.store.consistent_reads`);
    their digests are compared (``gather``: every rank's digest) and, if any differs, all
    read again, ``attempts`` times at most. Raises :class:`ValidationError` when the store
    kept changing.
    """
    for _ in range(attempts):
        batches = read()
        if len(set(gather(_digest(batches)))) == 1:
            return batches
    raise ValidationError(
        f"The shared store changed while the ranks read it, {attempts} times in a row; run "
        "again when packages are not being released or removed, or pass --shared files.")


def fit_foundation_ddp(
    featurizer: Featurizer,
    batch: FeatureBatch,
    target: np.ndarray,
    config: TrainingConfig | None = None,
    *,
    initial: Foundation | None = None,
    sample_weight: np.ndarray | None = None,
    on_epoch_end: Callable[[int, float], None] | None = None,
) -> Foundation:
    """:func:`~dmt_model.foundation.fit_foundation` in an initialized process group.

    Every rank passes the same arguments and gets the same model back.
    """
    torch = _import_torch()
    dist = torch.distributed
    if not dist.is_initialized():
        raise ValidationError("fit_foundation_ddp needs torch.distributed initialized "
                              "(launch with torchrun); use fit_foundation otherwise.")
    # what it does not do is refused, not ignored (helper-108): a saved config would say it
    if featurizer.task.kind != "regression":
        raise ValidationError(f"fit_foundation_ddp trains regressions only (a squared-error "
                              f"loss); this featurizer's task is {featurizer.task.kind}: "
                              "train it with fit_foundation.")
    n = len(target)
    config = config or TrainingConfig.for_schema(featurizer.schema, records=n)
    if len(batch) == 0 or len(batch) != n:
        raise ValidationError(f"Need as many targets as records, and at least one: got "
                              f"{len(batch)} records and {n} targets.")
    weights = np.ones(n, np.float32) if sample_weight is None else \
        np.asarray(sample_weight, np.float32)
    if weights.shape != (n,) or not (np.isfinite(weights).all() and (weights > 0).all()):
        raise ValidationError("sample_weight must hold one positive, finite weight per record "
                              f"({n}), got shape {weights.shape}.")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(config.seed)
    network = network_for(featurizer, config.hidden_units)
    if initial is not None:
        network.load_state_dict(initial.network.state_dict())
    foundation = Foundation(featurizer, network, config)
    inputs = foundation._tensors(batch)
    y = torch.from_numpy(np.asarray(target, np.float32))
    w = torch.from_numpy(weights)
    model = torch.nn.parallel.DistributedDataParallel(network)
    optimizer = _rmsprop(network.parameters(), config.learning_rate)
    shuffle = torch.Generator().manual_seed(config.seed)
    # early stopping as fit_foundation's: the same rows held out; every rank scores them all
    # with the same weights, and rank 0's score decides for every rank
    rows, held = (torch.from_numpy(a) for a in _early_stopping_split(n, config))
    trained = len(rows)
    stopping = _Stopping(config.patience)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model.train()
    try:
        for epoch in range(config.epochs):
            order = rows[torch.randperm(trained, generator=shuffle)] if len(held) else \
                torch.randperm(n, generator=shuffle)
            total = torch.zeros(1)
            for start in range(0, trained, config.batch_size):
                index = order[start:start + config.batch_size]
                mine = index[rank::world]
                optimizer.zero_grad()
                squared = standardized_squared_error(network, model(*(t[mine] for t in inputs)),
                                                     y[mine])
                weighted = torch.sum(w[mine] * squared)
                loss = world * weighted / torch.sum(w[index])
                loss.backward()
                optimizer.step()
                total += weighted.detach() / torch.sum(w[index]) * len(index)
            if on_epoch_end is not None:
                dist.all_reduce(total)
                on_epoch_end(epoch, float(total) / trained)
            if len(held):
                with torch.no_grad():
                    squared = standardized_squared_error(
                        network, network(*(t[held] for t in inputs)), y[held])
                    score = (torch.sum(w[held] * squared) / torch.sum(w[held])).reshape(1)
                dist.broadcast(score, 0)
                if stopping.stop(network, epoch, float(score)):
                    break
    finally:
        torch.set_num_threads(threads)
    stopping.restore(network)
    network.eval()
    return foundation


def retrain_foundation_ddp(
    previous: Foundation,
    proxy: pd.DataFrame,
    shared: Sequence[SharedBatch] = (),
    config: TrainingConfig | None = None,
    *,
    warm_start: bool = False,
    weigh_by_noise: bool = True,
    on_epoch_end: Callable[[int, float], None] | None = None,
) -> Foundation:
    """:func:`~dmt_model.server.retrain.retrain_foundation` over the process group's ranks."""
    features, target, weights = training_set(previous, proxy, shared,
                                             weigh_by_noise=weigh_by_noise)
    return fit_foundation_ddp(previous.featurizer, features, target, config or previous.config,
                              initial=previous if warm_start else None, sample_weight=weights,
                              on_epoch_end=on_epoch_end)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torchrun ... -m dmt_model.server.ddp",
        description="Retrain the foundation on proxy + shared records with DDP (gloo, CPU).")
    parser.add_argument("--foundation", type=Path, required=True,
                        help="the previous foundation (.npz): featurizer, and weights with "
                             "--warm-start")
    parser.add_argument("--proxy", type=Path,
                        help="proxy data CSV (default: the bundled Boston proxy split, --seed)")
    parser.add_argument("--db", help="the server's store (SQLAlchemy URL): its released records")
    parser.add_argument("--key", type=Path, help="the server's private key (with --db)")
    parser.add_argument("--policy", type=Path,
                        help="the server's policy JSON (with --db): every stored package is "
                             "validated again against it and weighed by its noise, never by "
                             "its own receipt")
    parser.add_argument("--shared", type=Path, action="append", default=[],
                        help="a CSV of shared records (weight 1), repeatable")
    parser.add_argument("--epochs", type=int, help="default: the previous foundation's")
    parser.add_argument("--seed", type=int, help="default: the previous foundation's")
    parser.add_argument("--warm-start", action="store_true")
    parser.add_argument("-o", "--output", type=Path, required=True, help="new foundation .npz")
    parser.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``torchrun`` entry point (``-m dmt_model.server.ddp``)."""
    torch = _import_torch()
    args = _parser().parse_args(argv)
    if args.db is not None and (args.key is None or args.policy is None):
        raise ValidationError("--db needs --key, the server's private key file, and --policy, "
                              "the policy JSON ingestion accepted the packages under.")
    if args.output.exists() and not args.force:  # refused before training, not after
        raise OutputExistsError(f"-o {args.output} already exists; pass --force to replace it.")
    dist = torch.distributed
    dist.init_process_group("gloo")
    try:
        previous = Foundation.load(args.foundation)
        config = previous.config
        changes = {k: v for k, v in (("epochs", args.epochs), ("seed", args.seed))
                   if v is not None}
        config = dataclasses.replace(config, **changes)
        if args.proxy is not None:
            proxy = pd.read_csv(args.proxy)
        else:
            from dmt_model.datasets import load_boston, simulate_users

            proxy = simulate_users(load_boston(), seed=config.seed).proxy
        shared = [SharedBatch(pd.read_csv(path)) for path in args.shared]
        if args.db is not None:
            from dmt_model.server import ServerPolicy, SharedStore
            from dmt_model.server.retrain import shared_batches
            from dmt_privacy.seal import load_private_key

            policy = ServerPolicy.from_json(args.policy.read_bytes())
            store = SharedStore(args.db, load_private_key(args.key))
            shared += agreed_read(lambda: shared_batches(store, policy=policy,
                                                         previous=previous, proxy=proxy))
        rank = dist.get_rank()
        losses: list[float] = []
        result = retrain_foundation_ddp(previous, proxy, shared, config,
                                        warm_start=args.warm_start,
                                        on_epoch_end=lambda _e, loss: losses.append(loss))
        if rank == 0:
            result.save(args.output, overwrite=args.force)
            records = len(proxy) + sum(len(b.records) for b in shared)
            run = (f"{len(losses)} of up to {config.epochs} epochs, stopped early on "
                   f"{config.early_stopping:.0%} held out (the best epoch's weights kept)"
                   if len(losses) < config.epochs else f"{len(losses)} epochs"
                   + (" (the best epoch's weights kept)" if config.early_stopping else ""))
            print(f"rank 0 of {dist.get_world_size()}: trained on {records} records, {run}, "
                  f"last epoch's training MSE {losses[-1]:.4f}; wrote {args.output}",
                  flush=True)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0


def _entry() -> Any:  # pragma: no cover - run by torchrun
    try:
        return main()
    except ValidationError as exc:
        print(f"dmt_model.server.ddp: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(_entry())
