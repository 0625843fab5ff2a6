"""dmt_model.federated: FedAvg and DP-FedAvg baselines on the simulated users."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dmt_model.federated import (
    ClientUpdate,
    DPFedAvg,
    FedAvg,
    PrivacyAccountant,
    calibrate_noise_multiplier,
    clip_update,
    dp_aggregate,
    epsilon_for,
    fedavg_aggregate,
    run_federated,
)
from dmt_model.federated.accounting import RDP_ORDERS
from dmt_privacy.errors import BudgetExceededError, ValidationError

finite = st.floats(-1e3, 1e3, allow_nan=False, width=64)


def _vector(model) -> np.ndarray:
    return torch.nn.utils.parameters_to_vector(model.network.parameters()).detach().numpy()


def _users(simulation, n):
    return dataclasses.replace(simulation, users=simulation.users[:n])


# --- the arithmetic -------------------------------------------------------------------------

def test_fedavg_aggregate_is_the_example_weighted_mean_exactly():
    updates = [np.array([1.0, 2.0]), np.array([3.0, 4.0]), np.array([5.0, 6.0])]
    got = fedavg_aggregate(updates, [1, 1, 2])
    np.testing.assert_array_equal(got, [3.5, 4.5])  # (1·1 + 1·3 + 2·5) / 4, (2 + 4 + 12) / 4
    np.testing.assert_array_equal(fedavg_aggregate(updates, [0, 7, 0]), updates[1])


@given(arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(1, 8)), elements=finite),
       st.lists(st.integers(1, 500), min_size=6, max_size=6))
def test_fedavg_aggregate_matches_the_formula(matrix, counts):
    weights = np.array(counts[:matrix.shape[0]], dtype=float)
    expected = sum(w * row for w, row in zip(weights, matrix, strict=True)) / weights.sum()
    np.testing.assert_allclose(fedavg_aggregate(list(matrix), weights), expected,
                               rtol=1e-12, atol=1e-9)
    # Scaling every weight changes nothing.
    np.testing.assert_allclose(fedavg_aggregate(list(matrix), 3 * weights), expected,
                               rtol=1e-12, atol=1e-9)


@given(arrays(np.float64, st.integers(1, 50), elements=finite), st.floats(1e-3, 1e3))
def test_clipping_bounds_the_norm_and_keeps_the_direction(update, clip_norm):
    clipped = clip_update(update, clip_norm)
    norm = np.linalg.norm(update)
    assert np.linalg.norm(clipped) <= clip_norm * (1 + 1e-12)
    if norm <= clip_norm:
        np.testing.assert_array_equal(clipped, update)
    else:
        np.testing.assert_allclose(clipped * norm / clip_norm, update, rtol=1e-9, atol=1e-9)
    assert clipped is not update


def test_dp_aggregate_without_noise_is_the_clipped_sum_over_expected_clients():
    updates = [np.array([3.0, 4.0]), np.array([0.3, 0.4])]  # norms 5 and 0.5
    got = dp_aggregate(updates, size=2, clip_norm=1.0, noise_multiplier=0.0,
                       expected_clients=4.0, rng=np.random.default_rng(0))
    np.testing.assert_allclose(got, (np.array([0.6, 0.8]) + np.array([0.3, 0.4])) / 4)


@pytest.mark.filterwarnings("ignore:Optimal order:UserWarning")  # σ = 1e-9 is off the grid
def test_the_strategy_clips_every_client_delta(simulation, foundation):
    strategy = DPFedAvg(FedAvg(rounds=1, client_fraction=1.0, local_learning_rate=1e-2),
                        clip_norm=1e-3, noise_multiplier=1e-9)
    sim = _users(simulation, 5)
    result = run_federated(sim, strategy, foundation=foundation)
    (metrics,) = result.rounds
    assert metrics.clipped_fraction == 1.0 and metrics.mean_update_norm > 1e-3
    # The global model moved by at most the mean of clipped deltas (plus negligible noise).
    moved = np.linalg.norm(_vector(result.foundation) - _vector(foundation))
    assert moved <= 1e-3 * len(metrics.clients) / 5 + 1e-6


def test_noise_has_the_configured_std():
    n_clients, clip, sigma, rate, size = 10, 0.5, 1.3, 0.5, 200_000
    strategy = DPFedAvg(FedAvg(rounds=1), clip_norm=clip, noise_multiplier=sigma,
                        sampling_rate=rate)
    strategy.begin(n_clients)
    zeros = [ClientUpdate(k, np.zeros(size), 10) for k in range(5)]
    out = strategy.aggregate(np.zeros(size), zeros)
    expected = sigma * clip / (rate * n_clients)
    # The sample std of 200k normals is within 1 % of the truth with overwhelming probability.
    assert abs(out.std() / expected - 1) < 0.01
    assert abs(out.mean()) < 5 * expected / math.sqrt(size)


# --- sampling, determinism, exact properties ----------------------------------------------

def test_client_fraction_is_respected(simulation, foundation):
    strategy = FedAvg(rounds=4, client_fraction=0.3, local_epochs=1)
    for r in range(50):
        chosen = strategy.sample_clients(20, r)
        assert len(chosen) == 6 == len(set(chosen.tolist()))
        assert chosen.min() >= 0 and chosen.max() < 20
    result = run_federated(simulation, strategy, foundation=foundation)
    assert [len(m.clients) for m in result.rounds] == [6, 6, 6, 6]
    assert len({m.clients for m in result.rounds}) > 1  # a new draw each round


def test_poisson_sampling_has_the_configured_rate():
    strategy = DPFedAvg(FedAvg(), clip_norm=1.0, noise_multiplier=1.0, sampling_rate=0.25)
    counts = [len(strategy.sample_clients(40, r)) for r in range(2000)]
    assert abs(np.mean(counts) - 10) < 0.3  # std of the mean ≈ 0.06


def test_runs_are_deterministic_under_a_seed(simulation, foundation):
    sim = _users(simulation, 6)
    before = _vector(foundation).copy()
    for make in (lambda s: FedAvg(rounds=3, local_epochs=2, seed=s),
                 lambda s: DPFedAvg(FedAvg(rounds=3, local_epochs=2, seed=s), clip_norm=0.5,
                                    noise_multiplier=1.0)):
        a = run_federated(sim, make(7), foundation=foundation)
        b = run_federated(sim, make(7), foundation=foundation)
        c = run_federated(sim, make(8), foundation=foundation)
        np.testing.assert_array_equal(_vector(a.foundation), _vector(b.foundation))
        assert a.rounds == b.rounds and a.users == b.users
        assert not np.array_equal(_vector(a.foundation), _vector(c.foundation))
    np.testing.assert_array_equal(_vector(foundation), before)  # the input is never changed


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


def test_one_client_fedavg_equals_centralized_gradient_descent(simulation, foundation):
    sim = _users(simulation, 1)
    strategy = FedAvg(rounds=4, client_fraction=1.0, local_epochs=1, local_batch_size=1000,
                      local_learning_rate=1e-3)
    result = run_federated(sim, strategy, foundation=foundation)
    expected = _centralized_gd(foundation, sim.users[0].train, steps=4, lr=1e-3)
    np.testing.assert_allclose(_vector(result.foundation), expected, rtol=0, atol=1e-6)


def test_fedavg_of_one_full_batch_step_equals_one_centralized_step_on_the_union(
        simulation, foundation):
    """FedSGD: Σ n_k/n (w − η∇L_k) = w − η∇L, since ∇L = Σ n_k/n ∇L_k."""
    import pandas as pd

    sim = _users(simulation, 5)
    strategy = FedAvg(rounds=1, client_fraction=1.0, local_epochs=1, local_batch_size=1000,
                      local_learning_rate=1e-3)
    result = run_federated(sim, strategy, foundation=foundation)
    union = pd.concat([u.train for u in sim.users])
    expected = _centralized_gd(foundation, union, steps=1, lr=1e-3)
    np.testing.assert_allclose(_vector(result.foundation), expected, rtol=0, atol=1e-6)


def test_trainable_layers_freezes_the_rest(simulation, foundation):
    result = run_federated(_users(simulation, 4), FedAvg(rounds=2, trainable_layers=1),
                           foundation=foundation)
    new, old = result.foundation.network, foundation.network
    for name, parameter in old.named_parameters():
        same = torch.equal(parameter, dict(new.named_parameters())[name])
        assert same == (not name.startswith("dense.4")), name


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


def test_dp_run_reports_the_epsilon_the_accountant_computes(simulation, foundation):
    strategy = DPFedAvg(FedAvg(rounds=3, local_epochs=1), clip_norm=0.5, target_epsilon=4.0,
                        sampling_rate=0.5)
    sigma = calibrate_noise_multiplier(target_epsilon=4.0, delta=1e-5, sampling_rate=0.5,
                                       rounds=3)
    assert strategy.noise_multiplier == sigma
    result = run_federated(_users(simulation, 6), strategy, foundation=foundation)
    expected = epsilon_for(noise_multiplier=sigma, sampling_rate=0.5, rounds=3, delta=1e-5)
    assert result.epsilon == pytest.approx(expected, rel=1e-12)
    assert 4.0 - 0.05 < result.epsilon <= 4.0
    assert [m.epsilon for m in result.rounds] == sorted(m.epsilon for m in result.rounds)
    # The ledger is charged by aggregate itself: a fourth round would overspend and is refused.
    with pytest.raises(BudgetExceededError, match="target_epsilon"):
        strategy.aggregate(np.zeros(3), [])
    assert strategy.accountant_ is not None and strategy.accountant_.rounds == 3


def test_aggregate_before_begin_is_refused():
    strategy = DPFedAvg(FedAvg(), clip_norm=1.0, noise_multiplier=1.0)
    with pytest.raises(ValidationError, match="begin"):
        strategy.aggregate(np.zeros(3), [])


# --- personalization after FL, and parameters --------------------------------------------

def test_personalization_is_what_a_dmt_device_does(simulation, foundation, tmp_path):
    import shutil

    from dmt_model.coreml import UpdateSettings, export_coreml, load_spec, predict_frame
    from dmt_model.personalize import personalize

    sim = _users(simulation, 3)
    settings = UpdateSettings(epochs=20)
    result = run_federated(sim, FedAvg(rounds=2, client_fraction=1.0), foundation=foundation,
                           personalize=True, update_settings=settings)
    shipped = export_coreml(result.foundation, tmp_path / "global.mlmodel", updatable=settings)
    for user, row in zip(sim.users, result.users, strict=True):
        personal = tmp_path / "personal.mlmodel"
        shutil.copyfile(shipped, personal)
        personalize(personal, user.train)
        error = predict_frame(load_spec(personal), user.test) - user.test["MEDV"].to_numpy()
        assert row.personalized_rmse == pytest.approx(float(np.sqrt(np.mean(error ** 2))))
        assert row.rmse == pytest.approx(
            result.foundation.evaluate(user.test).rmse, rel=1e-5)
    assert result.mean_personalized_rmse is not None
    assert result.to_dict()["mean_rmse"] == result.mean_rmse


def test_start_from_scratch_uses_random_weights(simulation, foundation):
    sim = _users(simulation, 3)
    scratch = run_federated(sim, FedAvg(rounds=1), foundation=foundation, start="scratch")
    proxy = run_federated(sim, FedAvg(rounds=1), foundation=foundation)
    assert scratch.initial_rmse > proxy.initial_rmse
    assert scratch.foundation.featurizer is foundation.featurizer
    assert not np.array_equal(_vector(scratch.foundation), _vector(proxy.foundation))


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
    (lambda: FedAvg(server_learning_rate=0), "server_learning_rate"),
    (lambda: FedAvg(trainable_layers=0), "trainable_layers"),
    (lambda: FedAvg(seed=-1), "seed"),
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
    (lambda: fedavg_aggregate([np.ones(2)], [0]), "weights"),
    (lambda: fedavg_aggregate([np.ones(2), np.ones(2)], [1]), "weights"),
    (lambda: fedavg_aggregate([np.array([np.nan, 1.0])], [1]), "updates"),
    (lambda: clip_update(np.ones(2), -1.0), "clip_norm"),
])
def test_bad_parameters_raise_validation_error_naming_them(make, name):
    with pytest.raises(ValidationError, match=name):
        make()


def test_bad_run_parameters_are_refused(simulation, foundation):
    with pytest.raises(ValidationError, match="start"):
        run_federated(simulation, FedAvg(), foundation=foundation, start="random")
    with pytest.raises(ValidationError, match="trainable_layers"):
        run_federated(simulation, FedAvg(trainable_layers=4), foundation=foundation)
