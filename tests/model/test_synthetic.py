"""The FedProx paper's Synthetic(α, β) as simulated users (dmt_model.datasets.synthetic)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dmt_model.datasets import SYNTHETIC_SCHEMA, SyntheticSimulation, simulate_synthetic
from dmt_model.datasets.synthetic import FEATURES
from dmt_privacy.errors import ValidationError
from dmt_privacy.schema import Kind, Role


def _records(sim: SyntheticSimulation) -> list[pd.DataFrame]:
    return [pd.concat([u.train, u.test]) for u in sim.users]


def test_schema_has_sixty_bounded_sensitive_inputs_and_ten_classes():
    inputs = [f for f in SYNTHETIC_SCHEMA if f.role is not Role.TARGET]
    assert [f.name for f in inputs] == list(FEATURES) and len(inputs) == 60
    assert all(f.kind is Kind.NUMERIC and f.role is Role.SENSITIVE and f.bounds is not None
               for f in inputs)
    assert SYNTHETIC_SCHEMA.target is not None
    assert SYNTHETIC_SCHEMA.target.categories == tuple(range(10))


def test_simulation_is_seeded_and_fits_the_schema_and_the_protocol():
    sim = simulate_synthetic(1.0, 1.0, n_users=50, records_per_user=14, proxy_records=120,
                             seed=4)
    again = simulate_synthetic(1.0, 1.0, n_users=50, records_per_user=14, proxy_records=120,
                               seed=4)
    other = simulate_synthetic(1.0, 1.0, n_users=50, records_per_user=14, proxy_records=120,
                               seed=5)
    assert sim.proxy.equals(again.proxy)
    assert all(a.equals(b) for a, b in zip(_records(sim), _records(again), strict=True))
    assert not sim.proxy.equals(other.proxy)

    everything = pd.concat([*_records(sim), sim.proxy])
    SYNTHETIC_SCHEMA.validate(everything)
    SYNTHETIC_SCHEMA.check_bounds(everything)  # clipped to the bounds DP needs
    assert everything.index.is_unique
    sizes = np.array([len(r) for r in _records(sim)])
    assert sizes.sum() == 50 * 14 and sizes.min() >= 4 and sizes.max() > 5 * np.median(sizes)
    assert len(sim.proxy) == 120 and sim.proxy_users == 5 and len(sim.users) == 50
    for user in sim.users:
        assert len(user.test) >= 1 and abs(len(user.shareable) - len(user.private)) <= 1
        assert user.train.index.intersection(user.test.index).empty


def test_proxy_comes_from_users_outside_the_simulation():
    # separate streams: the users do not change with the proxy's settings, nor the proxy with
    # how many users are simulated, so no proxy record is a simulated user's
    base = simulate_synthetic(0.5, 0.5, n_users=30, seed=1)
    more_proxy = simulate_synthetic(0.5, 0.5, n_users=30, proxy_users=9, proxy_records=500,
                                    seed=1)
    fewer_users = simulate_synthetic(0.5, 0.5, n_users=20, seed=1)
    assert all(a.equals(b) for a, b in zip(_records(base), _records(more_proxy), strict=True))
    assert np.array_equal(base.proxy.to_numpy(), fewer_users.proxy.to_numpy())


def _feature_mean_spread(sim: SyntheticSimulation) -> float:
    return float(np.std([r[list(FEATURES)].to_numpy().mean() for r in _records(sim)]))


def test_beta_spreads_users_inputs_apart():
    spreads = [_feature_mean_spread(simulate_synthetic(0.0, beta, n_users=150, seed=2))
               for beta in (0.0, 1.0, 3.0)]
    assert spreads[0] * 2 < spreads[1] and spreads[1] * 2 < spreads[2]


def test_alpha_changes_no_record_as_in_the_papers_generator():
    # u_k moves all ten logits of user k alike, so argmax(W_k x + b_k) does not move
    flat = simulate_synthetic(0.0, 1.0, n_users=40, seed=3)
    steep = simulate_synthetic(3.0, 1.0, n_users=40, seed=3)
    assert all(a.equals(b) for a, b in zip(_records(flat), _records(steep), strict=True))
    assert {u.model_mean for u in flat.users} == {0.0}
    assert np.std([u.model_mean for u in steep.users]) > 1.0


def _label_shift(sim: SyntheticSimulation) -> float:
    """Mean total-variation distance of a user's label mix from all users' mix."""
    mixes = np.array([np.bincount(r["y"], minlength=10) / len(r) for r in _records(sim)])
    pooled = np.mean(mixes, axis=0)
    return float(np.mean(0.5 * np.abs(mixes - pooled).sum(axis=1)))


def test_users_differ_at_every_setting_and_not_in_synthetic_iid():
    kwargs = {"n_users": 40, "records_per_user": 100, "seed": 6}
    iid = simulate_synthetic(0, 0, iid=True, **kwargs)
    assert _label_shift(iid) < 0.25
    for alpha, beta in ((0, 0), (1, 1)):
        assert _label_shift(simulate_synthetic(alpha, beta, **kwargs)) > _label_shift(iid) + 0.3
    assert _feature_mean_spread(iid) < 0.05
    assert {(u.model_mean, u.feature_mean) for u in iid.users} == {(0.0, 0.0)}


@pytest.mark.parametrize("args, kwargs, match", [
    ((-1.0, 0.0), {}, "alpha must be a finite number ≥ 0"),
    ((0.0, float("nan")), {}, "beta must be a finite number"),
    ((1.0, 0.0), {"iid": True}, "Synthetic-IID .* alpha=1.0"),
    ((0.0, 0.0), {"n_users": 0}, "n_users must be an integer of at least 1"),
    ((0.0, 0.0), {"n_users": 2.5}, "n_users must be an integer"),
    ((0.0, 0.0), {"records_per_user": 3}, "records_per_user .* min_records=4"),
    ((0.0, 0.0), {"proxy_users": 5, "proxy_records": 3}, "proxy_records .* at least 5"),
    ((0.0, 0.0), {"test_fraction": 1.0}, "test_fraction must be a fraction in"),
    ((0.0, 0.0), {"size_shape": 0.0}, "size_shape must be a positive number"),
    ((0.0, 0.0), {"min_records": 1}, "min_records must be an integer of at least 2"),
])
def test_bad_arguments_are_refused_naming_them(args, kwargs, match):
    with pytest.raises(ValidationError, match=match):
        simulate_synthetic(*args, **kwargs)


def test_fresh_records_come_from_the_users_own_distribution():
    """What a user's expected error is measured on (benchmarks/adoption.py): more records of
    that user, none of the simulation's, the same on every call."""
    sim = simulate_synthetic(1.0, 1.0, n_users=40, seed=2)
    own = _records(sim)
    centres = np.array([r[list(FEATURES)].to_numpy().mean(axis=0) for r in own])
    nearest, same_majority = [], []
    for user in sim.users:
        fresh = sim.fresh_records(user.user_id, 400)
        SYNTHETIC_SCHEMA.validate(fresh)
        SYNTHETIC_SCHEMA.check_bounds(fresh)
        mean = fresh[list(FEATURES)].to_numpy().mean(axis=0)
        nearest.append(int(np.argmin(np.linalg.norm(centres - mean, axis=1))))
        mine = own[user.user_id]["y"]
        # the class a user's records hold most is, most often, the one a new record is
        same_majority.append(fresh["y"].value_counts().index[0] == mine.value_counts().index[0])
    assert nearest == [u.user_id for u in sim.users]  # each user's own centre, no other's
    assert np.mean(same_majority) >= 0.8
    first = sim.fresh_records(3, 50)
    assert first.equals(sim.fresh_records(3, 50))
    assert not first.equals(sim.fresh_records(3, 50, seed=1))
    values = set(map(tuple, pd.concat(own)[list(FEATURES)].to_numpy().round(9)))
    assert not values & set(map(tuple, first[list(FEATURES)].to_numpy().round(9)))


@pytest.mark.parametrize(("user_id", "n", "match"), [
    (40, 5, r"user_id must be one of the simulation's users \(0 to 39, 40 users\), got 40"),
    (True, 5, "user_id must be one of"),
    (0, 0, "n must be an integer of at least 1"),
])
def test_fresh_records_refuse_bad_arguments_naming_them(user_id, n, match):
    sim = simulate_synthetic(0.0, 0.0, n_users=40, seed=0)
    with pytest.raises(ValidationError, match=match):
        sim.fresh_records(user_id, n)


def test_fresh_records_of_a_subset_are_the_same_users_and_only_theirs():
    import dataclasses

    sim = simulate_synthetic(1.0, 1.0, n_users=40, seed=0)
    subset = dataclasses.replace(sim, users=sim.users[10:20])
    assert subset.fresh_records(np.int64(12), 30).equals(sim.fresh_records(12, 30))
    with pytest.raises(ValidationError, match=r"\(10 to 19, 10 users\), got 3"):
        subset.fresh_records(3, 30)


def test_fresh_records_come_from_a_stream_no_other_draw_of_the_seed_uses():
    """User 0's fresh records at seed 0 are not numpy's default_rng(the simulation's seed),
    which benchmarks draw held-out users and shuffles from."""
    sim = simulate_synthetic(1.0, 1.0, n_users=10, seed=7)
    source = sim._sources[0]
    plain = source.records(np.random.default_rng(7), 50)[0]
    assert not np.allclose(sim.fresh_records(0, 50)[list(FEATURES)].to_numpy(), plain)


def test_the_adoption_benchmark_measures_synthetic_users_on_their_own_fresh_records():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import adoption

    sim = simulate_synthetic(1.0, 1.0, n_users=6, seed=1)
    weights = adoption.expected_error_weights(sim, "y")
    assert len(weights) == 6
    for user, (records, weight) in zip(sim.users, weights, strict=True):
        assert records.equals(sim.fresh_records(user.user_id, adoption.FRESH_RECORDS))
        assert np.allclose(weight, 1 / adoption.FRESH_RECORDS) and np.isclose(weight.sum(), 1)
