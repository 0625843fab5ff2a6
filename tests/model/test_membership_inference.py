"""The loss-threshold membership-inference attack: it catches a model that memorizes, finds
nothing in one that never saw either set, for regressions and classifiers alike, and is
deterministic given a seed."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import roc_curve
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor

from dmt_model.datasets import load_friedman
from dmt_model.membership_inference import (
    MIN_RECORDS,
    MembershipAdvantage,
    _best_cut,
    attack_model,
    loss_threshold_attack,
    record_losses,
)
from dmt_model.tasks import CLASSIFICATION, REGRESSION
from dmt_privacy.errors import ValidationError

FAST = {"splits": 10, "resamples": 300}


def _friedman_thirds(seed: int = 0):
    """Three disjoint sets of one population: members, non-members, a third set."""
    frame = load_friedman(600, seed=seed)
    x, y = frame[["x0", "x1", "x2", "x3"]].to_numpy(), frame["y"].to_numpy()
    return (x[:200], y[:200]), (x[200:400], y[200:400]), (x[400:], y[400:])


def _classification_thirds(seed: int = 0):
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=600, n_features=8, n_informative=4, n_classes=3,
                               flip_y=0.2, random_state=seed)
    return (x[:200], y[:200]), (x[200:400], y[200:400]), (x[400:], y[400:])


def _assert_catches(result: MembershipAdvantage) -> None:
    assert result.advantage > 0.3
    assert 0 < result.advantage_low <= result.advantage <= result.advantage_high
    assert result.auc > 0.65


def _assert_finds_nothing(result: MembershipAdvantage) -> None:
    assert result.advantage_low <= 0 <= result.advantage_high
    assert abs(result.advantage) < 0.15
    assert 0.35 < result.auc < 0.65


def test_a_memorizing_regressor_is_caught():
    (xm, ym), (xn, yn), _ = _friedman_thirds()
    model = KNeighborsRegressor(n_neighbors=1).fit(xm, ym)  # members' loss is 0
    result = loss_threshold_attack(record_losses(REGRESSION, model.predict(xm), ym),
                                   record_losses(REGRESSION, model.predict(xn), yn), **FAST)
    _assert_catches(result)
    assert (result.members, result.nonmembers) == (200, 200)


def test_a_memorizing_classifier_is_caught():
    (xm, ym), (xn, yn), _ = _classification_thirds()
    model = KNeighborsClassifier(n_neighbors=1).fit(xm, ym)
    result = loss_threshold_attack(record_losses(CLASSIFICATION, model.predict_proba(xm), ym),
                                   record_losses(CLASSIFICATION, model.predict_proba(xn), yn),
                                   **FAST)
    _assert_catches(result)


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_a_model_that_saw_neither_set_shows_no_advantage(task):
    if task == "regression":
        _, (xm, ym), (xn, yn) = _friedman_thirds()
        (xt, yt), _, _ = _friedman_thirds()
        model = LinearRegression().fit(xt, yt)
        predict, kind = model.predict, REGRESSION
    else:
        _, (xm, ym), (xn, yn) = _classification_thirds()
        (xt, yt), _, _ = _classification_thirds()
        model = LogisticRegression(max_iter=500).fit(xt, yt)
        predict, kind = model.predict_proba, CLASSIFICATION
    result = loss_threshold_attack(record_losses(kind, predict(xm), ym),
                                   record_losses(kind, predict(xn), yn), **FAST)
    _assert_finds_nothing(result)


def test_interval_covers_zero_about_as_often_as_it_says_when_membership_does_not_matter():
    rng = np.random.default_rng(7)
    covered = 0
    for seed in range(100):
        members, nonmembers = rng.exponential(1, 40), rng.exponential(1, 60)
        result = loss_threshold_attack(members, nonmembers, seed=seed, splits=5, resamples=200)
        covered += result.advantage_low <= 0 <= result.advantage_high
    # 95 % nominal. 200 repetitions of 10 splits and 500 resamples covered 0.97–0.99 (40/60
    # and 200/300 records), and the true mean advantage of leaking models 0.95–0.99.
    assert covered >= 88


def test_unbalanced_sets_use_every_record_and_a_perfect_attack_has_a_closed_interval():
    result = loss_threshold_attack(np.zeros(30), np.arange(1.0, 301.0), **FAST)
    assert result.advantage == result.advantage_low == result.advantage_high == 1.0
    assert result.auc == 1.0
    assert result.members == 30 and result.nonmembers > 250  # the larger group is subsampled


def test_same_seed_same_result_and_the_result_is_json():
    rng = np.random.default_rng(3)
    members, nonmembers = rng.exponential(0.8, 80), rng.exponential(1, 90)
    first = loss_threshold_attack(members, nonmembers, seed=5, **FAST)
    assert first == loss_threshold_attack(members, nonmembers, seed=5, **FAST)
    assert first != loss_threshold_attack(members, nonmembers, seed=6, **FAST)
    row = json.loads(json.dumps(first.to_dict()))
    assert row["advantage"] == first.advantage and row["seed"] == 5
    assert set(row) >= {"advantage", "advantage_low", "advantage_high", "auc", "members",
                        "nonmembers", "confidence", "attack"}
    assert "advantage" in first.summary()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 8), min_size=1, max_size=30),
       st.lists(st.integers(0, 8), min_size=1, max_size=30))
def test_the_calibration_finds_the_best_point_of_scikit_learns_roc_curve(members, nonmembers):
    losses = np.array(members + nonmembers, float)  # integers: many ties
    labels = np.arange(len(losses)) < len(members)
    order = np.argsort(losses, kind="stable")
    ordered = losses[order]
    last_of_ties = np.r_[ordered[1:] != ordered[:-1], True]
    best, youden = _best_cut(labels[order], np.ones(len(losses), bool), last_of_ties)
    fpr, tpr, _ = roc_curve(labels, -losses)
    assert max(0.0, float(youden)) == pytest.approx(max(0.0, float(np.max(tpr - fpr))))
    threshold = ordered[int(best[0])]  # guessing "member" up to it achieves the maximum
    achieved = np.mean(losses[labels] <= threshold) - np.mean(losses[~labels] <= threshold)
    assert achieved == pytest.approx(float(youden))


# --- models of the SDK ------------------------------------------------------------------


def _held_out(boston, simulation):
    return boston.drop(index=simulation.proxy.index)


def test_a_foundation_and_its_core_ml_export_are_attacked_alike(foundation, simulation, boston):
    from dmt_model.coreml import build_spec, predict_frame

    held_out = _held_out(boston, simulation)
    torch_result = attack_model(foundation, simulation.proxy, held_out, **FAST)
    spec = build_spec(foundation)
    coreml_result = attack_model(foundation, simulation.proxy, held_out,
                                 predict=lambda frame: predict_frame(spec, frame), **FAST)
    assert (torch_result.members, torch_result.nonmembers) == (len(simulation.proxy),
                                                               len(held_out))
    assert coreml_result.advantage == pytest.approx(torch_result.advantage, abs=0.02)
    assert coreml_result.auc == pytest.approx(torch_result.auc, abs=0.01)
    assert -1 <= torch_result.advantage_low <= torch_result.advantage_high <= 1


def test_a_model_that_remembers_its_training_targets_is_caught(foundation, simulation, boston):
    members = simulation.proxy

    def remembering(frame):  # the foundation, except on its training records: their target
        predicted = foundation.predict(frame).astype(np.float64)
        known = frame.index.isin(members.index)
        predicted[known] = frame.loc[known, "MEDV"].to_numpy()
        return predicted

    _assert_catches(attack_model(foundation, members, _held_out(boston, simulation),
                                 predict=remembering, **FAST))


# --- errors -----------------------------------------------------------------------------


def test_empty_sets_are_refused_with_what_is_missing(foundation, simulation):
    with pytest.raises(ValidationError, match="nonmembers is empty.*never saw"):
        attack_model(foundation, simulation.proxy, simulation.proxy.iloc[:0])
    with pytest.raises(ValidationError, match="members is empty.*trained on"):
        loss_threshold_attack(np.array([]), np.ones(30))


def test_too_few_records_say_how_many_are_needed():
    with pytest.raises(ValidationError, match=f"has 19 records.*at least {MIN_RECORDS}"):
        loss_threshold_attack(np.ones(30), np.ones(19))


def test_non_finite_losses_and_predictions_are_refused_with_the_record():
    with pytest.raises(ValidationError, match="member_losses is not finite at record 3"):
        loss_threshold_attack(np.r_[np.ones(3), np.nan, np.ones(30)], np.ones(30))
    with pytest.raises(ValidationError, match="predictions is not finite at record 1"):
        record_losses(REGRESSION, np.array([1.0, np.inf]), np.array([1.0, 2.0]))


def test_mismatched_and_misshapen_inputs_are_refused():
    with pytest.raises(ValidationError, match="3 predictions for 2 targets"):
        record_losses(REGRESSION, np.ones(3), np.ones(2))
    with pytest.raises(ValidationError, match="class probabilities"):
        record_losses(CLASSIFICATION, np.ones(3), np.zeros(3, int))
    with pytest.raises(ValidationError, match=r"Class indices must lie in \[0, 2\)"):
        record_losses(CLASSIFICATION, np.full((2, 2), 0.5), np.array([0, 2]))
    with pytest.raises(ValidationError, match="one value per record"):
        record_losses(REGRESSION, np.ones((3, 2)), np.ones(3))
    with pytest.raises(ValidationError, match="1-D"):
        loss_threshold_attack(np.ones((30, 2)), np.ones(30))


@pytest.mark.parametrize(("argument", "value"), [("splits", 0), ("resamples", 10),
                                                 ("confidence", 1.0), ("splits", True)])
def test_bad_settings_are_named(argument, value):
    with pytest.raises(ValidationError, match=argument):
        loss_threshold_attack(np.ones(30), np.ones(30), **{argument: value})
