"""DDP retraining: the same model as the single-process path, for one rank in-process and for
two ranks launched by ``torchrun --nproc-per-node 2`` (gloo on CPU, loopback)."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dmt_model.foundation import Foundation, TrainingConfig, fit_foundation
from dmt_model.server.ddp import fit_foundation_ddp
from dmt_model.server.retrain import SharedBatch, retrain_foundation, training_set

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _max_relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("config", [
    TrainingConfig(epochs=5, seed=3),
    # stopped early, as a regression trains by default since 7 December: patience 2 ends it
    # before 40 epochs, so the best epoch's weights are the ones returned
    TrainingConfig(epochs=40, seed=3, early_stopping=0.2, patience=2)],
    ids=["fixed epochs", "stopped early"])
def test_one_rank_equals_fit_foundation(foundation, simulation, config):
    import torch.distributed as dist

    shared = [SharedBatch(simulation.users[0].train)]
    features, target, weights = training_set(foundation, simulation.proxy, shared)
    weights[-5:] = 0.3  # the weighted mean, not only the plain one
    epochs: dict[str, list[int]] = {"single": [], "ddp": []}
    single = fit_foundation(foundation.featurizer, features, target, config,
                            sample_weight=weights,
                            on_epoch_end=lambda e, _loss: epochs["single"].append(e))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}",
                             rank=0, world_size=1)
    try:
        ddp = fit_foundation_ddp(foundation.featurizer, features, target, config,
                                 sample_weight=weights,
                                 on_epoch_end=lambda e, _loss: epochs["ddp"].append(e))
    finally:
        dist.destroy_process_group()
    assert epochs["ddp"] == epochs["single"]
    if config.early_stopping is not None:
        assert len(epochs["single"]) < config.epochs
    for (name, a), (_, b) in zip(single.network.state_dict().items(),
                                 ddp.network.state_dict().items(), strict=True):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-6, err_msg=name)


def test_fit_foundation_ddp_needs_a_process_group(foundation, simulation):
    features, target, _ = training_set(foundation, simulation.proxy)
    with pytest.raises(ValueError, match="torchrun"):
        fit_foundation_ddp(foundation.featurizer, features, target)


@pytest.mark.slow
@pytest.mark.parametrize("stopping", [None, 0.2], ids=["fixed epochs", "stopped early"])
def test_torchrun_two_ranks_match_single_process(tmp_path, foundation, simulation, stopping):
    """The second case: a foundation trained as the SDK trains a regression by default
    since 7 December, stopped early, whose saved config the command retrains with."""
    epochs = 30
    previous = tmp_path / "previous.npz"
    foundation = Foundation(foundation.featurizer, foundation.network, dataclasses.replace(
        foundation.config, early_stopping=stopping, patience=3))
    foundation.save(previous)
    simulation.proxy.to_csv(tmp_path / "proxy.csv", index=False)
    shared = simulation.users[0].train
    shared.to_csv(tmp_path / "shared.csv", index=False)
    out = tmp_path / "ddp.npz"
    argv = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
            "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
            "--master-port", str(_free_port()), "-m", "dmt_model.server.ddp",
            "--foundation", str(previous), "--proxy", str(tmp_path / "proxy.csv"),
            "--shared", str(tmp_path / "shared.csv"), "--epochs", str(epochs), "-o", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "GLOO_SOCKET_IFNAME": "lo"}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank 0 of 2" in done.stdout
    if stopping is not None:  # it did stop before the last epoch (helper-128)
        assert f"of up to {epochs} epochs, stopped early" in done.stdout
        assert int(done.stdout.split(" of up to")[0].split(", ")[-1]) < epochs
    # the single-process path, same previous model, data and seed
    proxy = simulation.proxy.reset_index(drop=True)
    import pandas as pd

    config = dataclasses.replace(foundation.config, epochs=epochs)
    single = retrain_foundation(foundation, pd.read_csv(tmp_path / "proxy.csv"),
                                [SharedBatch(pd.read_csv(tmp_path / "shared.csv"))], config)
    ddp = Foundation.load(out)
    a, b = ddp.predict(proxy), single.predict(proxy)
    difference = _max_relative(a, b)
    weights = max(_max_relative(x.numpy(), y.numpy()) for x, y in zip(
        ddp.network.state_dict().values(), single.network.state_dict().values(), strict=True))
    print(f"\nDDP (2 ranks) vs single process, {epochs} epochs: predictions max relative "
          f"difference {difference:.2e}, weights {weights:.2e}; RMSE "
          f"{ddp.evaluate(proxy).rmse:.4f} vs {single.evaluate(proxy).rmse:.4f}")
    assert difference < 1e-3


def test_ranks_read_the_store_again_until_they_read_the_same(simulation):
    """Each rank reads the shared store itself; a release or removal committing between two
    ranks' reads gave them different data (helper-62). The ranks compare digests of what
    they read and read again until they agree, three times at most."""

    from dmt_model.server.ddp import _digest, _gather_digests, agreed_read
    from dmt_privacy.errors import ValidationError

    records = simulation.users[0].train
    before = [SharedBatch(records, package_id="a"), SharedBatch(records, package_id="b")]
    after = before[:1]  # "b" removed meanwhile
    assert _digest(before) != _digest(after)
    assert _digest(before) == _digest([SharedBatch(records.copy(), package_id=b.package_id)
                                       for b in before])
    changed = records.copy()
    changed.iloc[0, 0] = changed.iloc[0, 0] + 1
    assert _digest([SharedBatch(changed, package_id="a")]) != _digest(after)

    reads = iter([before, after, after])
    other_rank = iter([_digest(after), _digest(after)])  # the other rank read after it
    calls: list[int] = []

    def two_ranks(mine: bytes) -> list[bytes]:
        calls.append(1)
        return [mine, next(other_rank)]

    assert agreed_read(lambda: next(reads), two_ranks) == after
    assert len(calls) == 2
    with pytest.raises(ValidationError, match="changed while the ranks read it, 3 times"):
        agreed_read(lambda: before, lambda mine: [mine, _digest(after)])

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}",
                            rank=0, world_size=1)
    try:  # the real gather, one rank
        assert _gather_digests(_digest(before)) == [_digest(before)]
        assert agreed_read(lambda: before) == before
    finally:
        dist.destroy_process_group()



def test_what_ddp_does_not_do_is_refused(monkeypatch):
    """helper-108: fit_foundation_ddp ignored a classifier's loss (and early stopping, which
    it has done since 7 December, when a regression began to stop early by default)."""
    import torch

    from dmt_model.features import Featurizer
    from dmt_privacy.errors import ValidationError
    from dmt_privacy.schema import Field, Schema

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    schema = Schema((Field("x", "numeric", bounds=(0.0, 1.0)),
                     Field("y", "categorical", "target", categories=("a", "b"))))
    frame = pd.DataFrame({"x": [0.1, 0.9], "y": ["a", "b"]})
    featurizer = Featurizer(schema).fit(frame)
    with pytest.raises(ValidationError, match="regressions only"):
        fit_foundation_ddp(featurizer, featurizer.transform(frame),
                           featurizer.target_values(frame))
