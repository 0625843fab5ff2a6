"""dmt_model.federated: FedAvg, FedProx and DP-FedAvg on Flower, on the simulated users.

Most tests need no engine: Flower's strategies are built and inspected, the
client's training step is run by itself. Four tests start Flower's simulation
engine (about 20 s each on a loaded 2-core machine) on a few users for one or
two rounds.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dmt_model.federated import (
    DPFedAvg,
    FedAvg,
    FedProx,
    PrivacyAccountant,
    calibrate_noise_multiplier,
    epsilon_for,
    run_federated,
)
from dmt_model.federated.accounting import RDP_ORDERS
from dmt_model.federated.flower import (
    ClientData,
    _ClientTrainer,
    _flower_strategy,
    trainable_parameters,
)
from dmt_model.federated.simulation import RoundMetrics, UserResult, _client_data
from dmt_model.federated.strategy import ACCOUNTED_SAMPLING_RATE
from dmt_privacy.errors import BudgetExceededError, ValidationError

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning:flwr"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning:typer")]


def _vector(model) -> np.ndarray:
    return torch.nn.utils.parameters_to_vector(model.network.parameters()).detach().numpy()


def _users(simulation, n):
    return dataclasses.replace(simulation, users=simulation.users[:n])


def _data(foundation, frame) -> ClientData:
    return _client_data(foundation, frame, training=True)


def _centralized_gd(foundation, frame, *, steps, lr):
    model = copy.deepcopy(foundation.network)
    inputs = foundation._tensors(foundation.featurizer.transform(frame))
    target = torch.from_numpy(foundation.featurizer.target_values(frame))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        # The loss every trainer in the SDK minimizes: squared error in units of the
        # target's scale, so learning rates do not depend on the target's units.
        torch.mean(((model(*inputs) - target) / model.target_scale) ** 2).backward()
        optimizer.step()
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach().numpy()


# --- Flower's strategies, built from ours -----------------------------------------------------

def test_each_setting_maps_to_flowers_own_strategy():
    from flwr.serverapp.strategy import (
        DifferentialPrivacyServerSideFixedClipping,
    )
    from flwr.serverapp.strategy import (
        FedAvg as FlowerFedAvg,
    )
    from flwr.serverapp.strategy import (
        FedProx as FlowerFedProx,
    )

    def flowers_own(strategy, flower) -> bool:
        """Flower's class, with the client sample and the order of the sum made reproducible
        (the only methods overridden; each calls Flower's)."""
        own = {name for name in vars(type(strategy)) if not name.startswith("_")}
        return type(strategy).__bases__ == (flower,) and own == {"configure_train",
                                                                  "aggregate_train"}

    fedavg = _flower_strategy(FedAvg(client_fraction=0.3), 20, None)
    assert flowers_own(fedavg, FlowerFedAvg)
    assert (fedavg.min_train_nodes, fedavg.min_available_nodes) == (6, 20)
    assert fedavg.weighted_by_key == "num-examples"
    prox = _flower_strategy(FedProx(proximal_mu=0.3), 20, None)
    assert flowers_own(prox, FlowerFedProx) and prox.proximal_mu == 0.3
    dp = DPFedAvg(FedProx(proximal_mu=0.1), clip_norm=0.2, noise_multiplier=1.5,
                  sampling_rate=0.25)
    wrapped = _flower_strategy(dp, 20, None)
    assert isinstance(wrapped, DifferentialPrivacyServerSideFixedClipping)
    assert (wrapped.noise_multiplier, wrapped.clipping_norm, wrapped.num_sampled_clients) == (
        1.5, 0.2, 5)
    assert flowers_own(wrapped.strategy, FlowerFedProx)
    assert wrapped.strategy.weighted_by_key == "dp-weight"  # every user counts once


def test_the_client_step_is_sgd_on_the_users_records(simulation, foundation):
    """One full-batch epoch is one gradient step on the user's data; FedProx's term is zero
    at the global model, so its first step is FedAvg's."""
    user = simulation.users[0].train
    settings = FedAvg(local_epochs=1, local_batch_size=1000, local_learning_rate=1e-3)
    trainer = _ClientTrainer(copy.deepcopy(foundation.network), settings,
                             [_data(foundation, user)])
    start = [p.detach().numpy().copy() for p in foundation.network.parameters()]
    arrays, metrics = trainer.train(0, start, 0, proximal_mu=0.0)
    expected = _centralized_gd(foundation, user, steps=1, lr=1e-3)
    np.testing.assert_allclose(np.concatenate([a.ravel() for a in arrays]), expected,
                               rtol=0, atol=1e-6)
    assert metrics["num-examples"] == len(user) and metrics["dp-weight"] == 1.0
    prox, _ = trainer.train(0, start, 0, proximal_mu=10.0)
    np.testing.assert_allclose(np.concatenate([a.ravel() for a in prox]), expected,
                               rtol=0, atol=1e-6)
    # Over several steps the proximal term pulls the local model back toward the global one.
    longer = _ClientTrainer(copy.deepcopy(foundation.network),
                            dataclasses.replace(settings, local_epochs=20),
                            [_data(foundation, user)])
    drift = [np.linalg.norm(np.concatenate([(a - s).ravel() for a, s in zip(
        longer.train(0, start, 0, proximal_mu=mu)[0], start, strict=True)]))
        for mu in (0.0, 50.0)]
    assert drift[1] < drift[0]


def test_a_classifiers_client_step_is_sgd_on_its_cross_entropy():
    """Every task trains with its own loss on Flower: a classifier's client step is a
    gradient step on the mean cross-entropy of its logits, and its test error is the
    mean log loss the task defines."""
    from dmt_model.datasets import load_digits
    from dmt_model.datasets.classification import DIGITS_SCHEMA
    from dmt_model.federated.simulation import _mean_test_error
    from dmt_model.foundation import TrainingConfig, train_foundation

    digits = load_digits()
    digits_foundation = train_foundation(digits.iloc[:300], DIGITS_SCHEMA,
                                         TrainingConfig(epochs=3, seed=0))
    user = digits.iloc[300:340]
    settings = FedAvg(local_epochs=1, local_batch_size=1000, local_learning_rate=1e-2)
    trainer = _ClientTrainer(copy.deepcopy(digits_foundation.network), settings,
                             [_data(digits_foundation, user)])
    start = [p.detach().numpy().copy() for p in digits_foundation.network.parameters()]
    arrays, metrics = trainer.train(0, start, 0, proximal_mu=0.0)

    model = copy.deepcopy(digits_foundation.network)
    inputs = digits_foundation._tensors(digits_foundation.featurizer.transform(user))
    labels = torch.from_numpy(digits_foundation.featurizer.target_values(user))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    loss = torch.nn.functional.cross_entropy(model.outputs(*inputs), labels)
    loss.backward()
    optimizer.step()
    expected = torch.nn.utils.parameters_to_vector(model.parameters()).detach().numpy()
    np.testing.assert_allclose(np.concatenate([a.ravel() for a in arrays]), expected,
                               rtol=0, atol=1e-6)
    assert metrics["loss"] == pytest.approx(float(loss.detach()), rel=1e-5)

    mean, (error,) = _mean_test_error(digits_foundation.network,
                                      [_client_data(digits_foundation, user, training=False)])
    assert error == pytest.approx(digits_foundation.evaluate(user).log_loss, rel=1e-5)
    assert mean == error and digits_foundation.featurizer.task.error_name == "log loss"


def test_a_zero_update_passes_flowers_clipping_unchanged():
    """Reproduces a DP-FedAvg run on digits dying in Flower's clipping (ZeroDivisionError):
    a client whose softmax saturates on its few records sends back the global model."""
    from flwr.supercore.differential_privacy import compute_clip_model_update

    from dmt_model.federated.flower import _zero_updates_need_no_clipping

    current = [np.ones((2, 3), np.float32), np.zeros(3, np.float32)]
    with pytest.raises(ZeroDivisionError):
        compute_clip_model_update([a.copy() for a in current], current, 0.1)
    with _zero_updates_need_no_clipping():
        reply = [a.copy() for a in current]
        compute_clip_model_update(reply, current, 0.1)
        assert all(np.array_equal(r, c) for r, c in zip(reply, current, strict=True))
        moved = [a + 1.0 for a in current]  # a nonzero update is still clipped to 0.1
        compute_clip_model_update(moved, current, 0.1)
        norm = np.sqrt(sum(float(np.sum((m - c) ** 2)) for m, c in zip(moved, current,
                                                                        strict=True)))
        assert norm == pytest.approx(0.1, rel=1e-5)
    with pytest.raises(ZeroDivisionError):  # Flower's own function again after the run
        compute_clip_model_update([a.copy() for a in current], current, 0.1)


def test_the_old_rmse_names_still_work_and_warn():
    row = UserResult(user_id=1, n_train=2, n_test=1, error=0.5, personalized_error=0.25)
    with pytest.warns(DeprecationWarning, match="error"):
        assert row.rmse == 0.5
    with pytest.warns(DeprecationWarning, match="personalized_error"):
        assert row.personalized_rmse == 0.25
    metrics = RoundMetrics(round=0, clients=(1,), train_loss=0.1, mean_update_norm=0.2,
                           clipped_fraction=None, diverged=0, test_error=0.3, epsilon=None)
    with pytest.warns(DeprecationWarning, match="test_error"):
        assert metrics.test_rmse == 0.3


def test_the_client_step_trains_only_the_exchanged_layers(foundation):
    network = copy.deepcopy(foundation.network)
    chosen = trainable_parameters(network, FedAvg(trainable_layers=1))
    dense = [m for m in network.dense if isinstance(m, torch.nn.Linear)]
    assert chosen == [dense[-1].weight, dense[-1].bias]
    assert [p.requires_grad for p in network.parameters()].count(True) == 2
    with pytest.raises(ValidationError, match="trainable_layers"):
        trainable_parameters(copy.deepcopy(foundation.network), FedAvg(trainable_layers=9))


@pytest.mark.parametrize("base", [FedAvg(seed=3), FedAvg(seed=3, trainable_layers=2,
                                                      local_optimizer="rmsprop")],
                         ids=["sgd-all-layers", "rmsprop-two-layers"])
def test_a_client_trains_a_reused_copy_of_the_network_as_a_fresh_one(simulation, foundation,
                                                                      base):
    """A client process keeps the copy a finished client trained and resets it for the next
    one: every call trains exactly as on a fresh deep copy, and the copies never travel."""
    import pickle

    users = [_data(foundation, user.train) for user in simulation.users[:6]]
    trainer = _ClientTrainer(copy.deepcopy(foundation.network), base, users)
    arrays = [p.detach().numpy().copy() for p in trainable_parameters(trainer.network, base)]
    before = _vector(foundation)
    for step in range(6):
        client, mu = step % len(users), 0.5 * (step % 2)
        trainer._spare.clear()
        fresh, fresh_metrics = trainer.train(client, arrays, step, mu)
        assert len(trainer._spare) == 1  # (the copy this call trained, left for the next)
        (spare,) = trainer._spare  # whatever a call could leave in it, the reset undoes
        with torch.no_grad():
            for parameter in spare.parameters():
                parameter.add_(torch.randn_like(parameter))
                parameter.grad = torch.ones_like(parameter)
                parameter.requires_grad_(not parameter.requires_grad)
            for buffer in spare.buffers():
                buffer.add_(1.0)
        spare.eval()
        reused, reused_metrics = trainer.train(client, arrays, step, mu)
        for got, want in zip(reused, fresh, strict=True):
            np.testing.assert_array_equal(got, want)
        assert {**reused_metrics, "seconds": 0} == {**fresh_metrics, "seconds": 0}
        arrays = reused
    np.testing.assert_array_equal(_vector(foundation), before)
    own = torch.nn.utils.parameters_to_vector(trainer.network.parameters()).detach().numpy()
    np.testing.assert_array_equal(own, before)  # the trainer's own network is never trained
    travelling = _ClientTrainer(None, base, [], _spare=trainer._spare)  # (a network: cloudpickle)
    assert travelling._spare and pickle.loads(pickle.dumps(travelling))._spare == []


# --- the ledger -------------------------------------------------------------------------------

def test_the_ledger_is_charged_per_release_and_refuses_past_the_target():
    strategy = DPFedAvg(FedAvg(rounds=3), clip_norm=0.5, target_epsilon=4.0,
                        sampling_rate=0.5)
    sigma = calibrate_noise_multiplier(target_epsilon=4.0, delta=1e-5, sampling_rate=1.0,
                                       rounds=3)
    # no amplification by sampling is claimed, and one user replaced moves the sum by 2C
    assert strategy.noise_multiplier == 2 * sigma
    assert strategy.accounted_noise_multiplier == sigma
    with pytest.raises(ValidationError, match="begin"):
        strategy.charge_round()
    strategy.begin(6)
    assert strategy.clients_per_round(6) == 3
    for _ in range(3):
        strategy.charge_round()
    assert strategy.epsilon() == pytest.approx(
        epsilon_for(noise_multiplier=sigma, sampling_rate=1.0, rounds=3, delta=1e-5), rel=1e-12)
    assert 4.0 - 0.05 < strategy.epsilon() <= 4.0
    with pytest.raises(BudgetExceededError, match="target_epsilon"):
        strategy.check_next_round()
    assert strategy.accountant_ is not None and strategy.accountant_.rounds == 3


def test_deprecated_arithmetic_still_works_and_warns():
    import dmt_model.federated as federated

    with pytest.warns(DeprecationWarning, match="Flower"):
        fedavg_aggregate = federated.fedavg_aggregate
    updates = [np.array([1.0, 2.0]), np.array([3.0, 4.0]), np.array([5.0, 6.0])]
    np.testing.assert_array_equal(fedavg_aggregate(updates, [1, 1, 2]), [3.5, 4.5])
    with pytest.warns(DeprecationWarning):
        clipped = federated.clip_update(np.array([3.0, 4.0]), 1.0)
    np.testing.assert_allclose(clipped, [0.6, 0.8])
    with pytest.warns(DeprecationWarning):
        assert federated.ClientUpdate(0, np.zeros(2), 1).norm == 0.0
    assert set(federated.__all__) >= {"FedProx", "clip_update", "ClientUpdate"}


# --- the accountant --------------------------------------------------------------------------

def test_accountant_matches_opacus_computed_directly():
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp

    ours, theirs = PrivacyAccountant("rdp"), RDPAccountant()
    for _ in range(12):
        ours.charge(noise_multiplier=1.7, sampling_rate=0.3)
        theirs.step(noise_multiplier=1.7, sample_rate=0.3)
    assert ours.epsilon(1e-5) == pytest.approx(
        theirs.get_epsilon(1e-5, alphas=list(RDP_ORDERS)), rel=1e-12)
    direct, _ = rdp.get_privacy_spent(
        orders=list(RDP_ORDERS), delta=1e-5,
        rdp=rdp.compute_rdp(q=0.3, noise_multiplier=1.7, steps=12, orders=list(RDP_ORDERS)))
    assert ours.epsilon(1e-5) == pytest.approx(direct, rel=1e-12)
    # The extended orders can only tighten Opacus' default bound.
    assert ours.epsilon(1e-5) <= theirs.get_epsilon(1e-5) + 1e-12
    assert ours.rounds == 12


def test_epsilon_decreases_with_noise_and_increases_with_rounds():
    eps = [epsilon_for(noise_multiplier=s, sampling_rate=0.5, rounds=20, delta=1e-5)
           for s in (0.8, 1.5, 3.0, 6.0)]
    assert eps == sorted(eps, reverse=True) and len(set(eps)) == 4
    eps = [epsilon_for(noise_multiplier=2.0, sampling_rate=0.5, rounds=t, delta=1e-5)
           for t in (1, 5, 20, 80)]
    assert eps == sorted(eps) and len(set(eps)) == 4


def test_prv_accountant_is_available_and_close_to_rdp():
    rdp_eps = epsilon_for(noise_multiplier=1.5, sampling_rate=0.5, rounds=10, delta=1e-5)
    prv_eps = epsilon_for(noise_multiplier=1.5, sampling_rate=0.5, rounds=10, delta=1e-5,
                          accountant="prv")
    assert 0.5 * rdp_eps < prv_eps <= rdp_eps * 1.01



# --- runs on Flower's simulation engine -------------------------------------------------------

@pytest.mark.slow
def test_fedavg_on_flower_is_one_centralized_step_on_a_ray_of_its_own_that_leaves_nothing(
        simulation, foundation, monkeypatch):
    """FedSGD: Σ n_k/n (w − η∇L_k) = w − η∇L, since ∇L = Σ n_k/n ∇L_k.

    ray.init() without an address joins RAY_ADDRESS, or the cluster another process on the
    machine started: a second run beside a benchmark failed ("num_cpus must not be
    provided" when joining), and a user's own Ray cluster would have run the simulation.
    Reported: every run left Ray's session folder (logs, sockets; about 330 KB) in
    /tmp/ray, 264 of them after a day of benchmarks. (One Flower run checks both: each
    starts a Ray of its own, 10-30 s on two cores.)"""
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")  # a cluster that is not there
    temporary = Path(tempfile.mkdtemp(prefix="t", dir="/tmp"))  # Ray's socket paths: short
    monkeypatch.setenv("RAY_TMPDIR", str(temporary))
    sim = _users(simulation, 4)
    strategy = FedAvg(rounds=1, client_fraction=1.0, local_epochs=1, local_batch_size=1000,
                      local_learning_rate=1e-3)
    before = _vector(foundation).copy()
    try:
        result = run_federated(sim, strategy, foundation=foundation)
        assert list(temporary.rglob("*")) == []
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    union = pd.concat([u.train for u in sim.users])
    expected = _centralized_gd(foundation, union, steps=1, lr=1e-3)
    np.testing.assert_allclose(_vector(result.foundation), expected, rtol=0, atol=1e-6)
    (metrics,) = result.rounds
    assert metrics.clients == (0, 1, 2, 3) and metrics.diverged == 0
    assert metrics.test_error == pytest.approx(result.mean_error, rel=1e-6)
    np.testing.assert_array_equal(_vector(foundation), before)  # the input is never changed


@pytest.mark.slow
def test_runs_in_one_ray_session_are_each_run_alone_and_ray_stops_after(
        simulation, foundation, monkeypatch):
    """issue 13: every Flower run started and stopped a Ray of its own, 4-5 s of a run
    whose rounds take 10-20 s, and made new client actors, 3-4 s of CPU each (imports).
    Inside ray_session the runs share one Ray and one pool of actors; each run is what it is
    alone, after a run that failed too, an actor that died is replaced rather than sent
    clients whose replies Flower would drop, and Ray, its folder and Flower's backend are
    as before once the block ends."""
    import ray
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend

    from dmt_model.federated import ray_session

    temporary = Path(tempfile.mkdtemp(prefix="t", dir="/tmp"))  # Ray's socket paths: short
    monkeypatch.setenv("RAY_TMPDIR", str(temporary))
    sim = _users(simulation, 4)
    strategy = FedAvg(rounds=2, client_fraction=0.5, local_learning_rate=1e-3, seed=1)
    build, terminate = RayBackend.build, RayBackend.terminate
    pools = []
    try:
        alone = run_federated(sim, strategy, foundation=foundation)
        with ray_session():
            session_build = RayBackend.build

            def seen(backend, app_fn):
                session_build(backend, app_fn)
                pools.append(backend.pool)

            RayBackend.build = seen
            try:
                together = [run_federated(sim, strategy, foundation=foundation)]
                with pytest.raises(ZeroDivisionError):  # the server fails after round 1
                    run_federated(sim, strategy, foundation=foundation,
                                  on_round_end=lambda _: 1 / 0)
                together.append(run_federated(sim, strategy, foundation=foundation))
                ray.kill(pools[-1].pool[0])  # an actor dies between runs
                together.append(run_federated(sim, strategy, foundation=foundation))
            finally:
                RayBackend.build = session_build
            assert ray.is_initialized()  # the runs ended, the session's Ray did not
        assert not ray.is_initialized()
        assert RayBackend.build is build and RayBackend.terminate is terminate
        assert list(temporary.rglob("*")) == []
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    # one pool for the first three runs, a new one once an actor had died
    assert [id(pool) for pool in pools[:3]] == [id(pools[0])] * 3 and pools[3] is not pools[0]
    for run in together:
        assert [m.clients for m in run.rounds] == [m.clients for m in alone.rounds]
        np.testing.assert_array_equal(_vector(run.foundation), _vector(alone.foundation))


def test_the_client_trainer_travels_by_value_only_without_ray():
    """Flower's Ray backend pickles the client app with every message; the trainer it closes
    over (the network and every user's records) goes by reference once Ray runs, and by
    value otherwise."""
    import pickle

    from dmt_model.federated.flower import _ByReference, _ClientTrainer

    trainer = _ClientTrainer(network=None, base=FedAvg(), users=[])
    copied = pickle.loads(pickle.dumps(_ByReference(trainer)))
    assert isinstance(copied, _ClientTrainer) and copied.base == trainer.base


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")  # Opacus' note on very noisy rounds
@pytest.mark.filterwarnings("ignore::dmt_privacy.dp.InsecureRandomnessWarning")
def test_dp_fedavg_on_flower_clips_adds_noise_reports_epsilon_and_repeats_when_seeded(
        simulation, foundation):
    """Also the defect of every strategy: Flower numbers simulated nodes with random ids and
    samples a round's clients from the set of ids, so the same seed trained other users on
    every run (and the replies were summed in arrival order): two runs of one seed ended on
    different models. Now the clients, each round's error and the final weights are the same
    when the noise is seeded too (``random_state``, an opt-in: by default it comes from the
    operating system, test_federated_privacy.py)."""
    sim = _users(simulation, 8)

    def strategy():
        return DPFedAvg(FedAvg(rounds=2, client_fraction=0.5, local_learning_rate=1e-2,
                               trainable_layers=2, seed=3),
                        clip_norm=1e-3, target_epsilon=8.0, random_state=3)

    from dmt_model.federated import ray_session

    strategies = strategy(), strategy()
    with ray_session():  # (one Ray for both: each run is what it is alone, test above)
        first, second = [run_federated(sim, s, foundation=foundation) for s in strategies]
    # charged with no amplification by sampling, at sensitivity 2C (one user replaced)
    sigma = strategies[0].noise_multiplier / 2
    assert first.epsilon == pytest.approx(
        epsilon_for(noise_multiplier=sigma, sampling_rate=ACCOUNTED_SAMPLING_RATE, rounds=2,
                    delta=1e-5), rel=1e-12)
    assert first.epsilon <= 8.0
    assert first.secure_random is False and first.to_dict()["secure_random"] is False
    assert [m.epsilon for m in first.rounds] == sorted(m.epsilon for m in first.rounds)
    assert all(m.clipped_fraction == 1.0 for m in first.rounds)  # every update was clipped
    # Reproducible from the seeds (sampling, local shuffles and the noise's source), to the
    # bit: the replies are summed in the order of the clients, not of their arrival.
    assert [m.clients for m in first.rounds] == [m.clients for m in second.rounds]
    assert all(len(set(m.clients)) == 4 for m in first.rounds)
    assert [m.test_error for m in first.rounds] == [m.test_error for m in second.rounds]
    np.testing.assert_array_equal(_vector(first.foundation), _vector(second.foundation))
    # Noise: the model moved by more than the clipped mean could move it (2 rounds × C).
    moved = np.linalg.norm(_vector(first.foundation) - _vector(foundation))
    assert moved > 2 * 1e-3


@pytest.mark.slow
def test_fedprox_then_personalization_is_what_a_dmt_device_does(simulation, foundation,
                                                                 tmp_path):
    import shutil

    from dmt_model.coreml import UpdateSettings, export_coreml, load_spec, predict_frame
    from dmt_model.personalize import personalize

    sim = _users(simulation, 3)
    settings = UpdateSettings(epochs=20)
    result = run_federated(sim, FedProx(rounds=2, client_fraction=1.0, trainable_layers=1,
                                        proximal_mu=0.1),
                           foundation=foundation, personalize=True, update_settings=settings)
    new, old = result.foundation.network, foundation.network
    for name, parameter in old.named_parameters():  # only the exchanged layer moved
        same = torch.equal(parameter, dict(new.named_parameters())[name])
        assert same == (not name.startswith("dense.4")), name
    shipped = export_coreml(result.foundation, tmp_path / "global.mlmodel", updatable=settings)
    for user, row in zip(sim.users, result.users, strict=True):
        personal = tmp_path / "personal.mlmodel"
        shutil.copyfile(shipped, personal)
        personalize(personal, user.train)
        error = predict_frame(load_spec(personal), user.test) - user.test["MEDV"].to_numpy()
        assert row.personalized_error == pytest.approx(float(np.sqrt(np.mean(error ** 2))))
        assert row.error == pytest.approx(
            result.foundation.evaluate(user.test).rmse, rel=1e-5)
    assert result.to_dict()["mean_error"] == result.mean_error


# --- parameters ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("make", "name"), [
    (lambda: FedAvg(rounds=0), "rounds"),
    (lambda: FedAvg(client_fraction=0), "client_fraction"),
    (lambda: FedAvg(client_fraction=1.5), "client_fraction"),
    (lambda: FedAvg(local_epochs=-1), "local_epochs"),
    (lambda: FedAvg(local_batch_size=2.5),  # type: ignore[arg-type]
     "local_batch_size"),
    (lambda: FedAvg(local_learning_rate=float("nan")), "local_learning_rate"),
    (lambda: FedAvg(local_optimizer="adagrad"),  # type: ignore[arg-type]
     "local_optimizer"),
    (lambda: FedAvg(server_learning_rate=0.5), "server_learning_rate"),
    (lambda: FedAvg(trainable_layers=0), "trainable_layers"),
    (lambda: FedAvg(seed=-1), "seed"),
    (lambda: FedProx(proximal_mu=-0.1), "proximal_mu"),
    (lambda: FedProx(proximal_mu=float("inf")), "proximal_mu"),
    (lambda: DPFedAvg(FedAvg(), clip_norm=0, noise_multiplier=1.0), "clip_norm"),
    (lambda: DPFedAvg(FedAvg(), clip_norm=1, noise_multiplier=0.0), "noise_multiplier"),
    (lambda: DPFedAvg(FedAvg(), clip_norm=1), "noise_multiplier"),
    (lambda: DPFedAvg(FedAvg(), clip_norm=1, noise_multiplier=1, target_epsilon=1),
     "target_epsilon"),
    (lambda: DPFedAvg(FedAvg(), clip_norm=1, target_epsilon=-1.0), "target_epsilon"),
    (lambda: DPFedAvg(FedAvg(), clip_norm=1, noise_multiplier=1, delta=1.0), "delta"),
    (lambda: DPFedAvg(FedAvg(), clip_norm=1, noise_multiplier=1, sampling_rate=0),
     "sampling_rate"),
    (lambda: DPFedAvg(FedAvg(), clip_norm=1, noise_multiplier=1, accountant="gdp"),  # type: ignore[arg-type]
     "accountant"),
    (lambda: DPFedAvg("fedavg", clip_norm=1, noise_multiplier=1),  # type: ignore[arg-type]
     "strategy"),
])
def test_bad_parameters_raise_validation_error_naming_them(make, name):
    with pytest.raises(ValidationError, match=name):
        make()


def test_bad_run_parameters_are_refused_before_flower_starts(simulation, foundation):
    with pytest.raises(ValidationError, match="start"):
        run_federated(simulation, FedAvg(), foundation=foundation, start="random")
    with pytest.raises(ValidationError, match="trainable_layers"):
        run_federated(simulation, FedAvg(trainable_layers=4), foundation=foundation)
    with pytest.raises(ValidationError, match="strategy"):
        run_federated(simulation, "fedavg", foundation=foundation)  # type: ignore[arg-type]
