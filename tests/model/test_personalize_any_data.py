"""Personalization that holds on any regression data: scale-free training and updates, a
prior toward the current model, a decision rule, and the server's publication gate."""

import dataclasses
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest

from dmt_model.coreml import (
    UpdateSettings,
    build_spec,
    export_coreml,
    get_inner_product,
    load_spec,
    predict_frame,
)
from dmt_model.coreml.evaluate import evaluate_spec
from dmt_model.datasets import BOSTON_SCHEMA
from dmt_model.datasets.regression import FRIEDMAN_SCHEMA, load_friedman
from dmt_model.foundation import TrainingConfig, train_foundation
from dmt_model.personalize import (
    DecisionRule,
    LossConvention,
    RepeatedPersonalizationWarning,
    adopt_new_version,
    personalize,
    update_spec,
    with_prior,
)
from dmt_model.server.retrain import ModelRegistry, validation_split
from dmt_privacy.errors import ModelFileError, ValidationError
from dmt_privacy.schema import Schema

SCALE = 1000.0
QUICK = TrainingConfig(epochs=40, seed=0)


def _scaled_schema(schema: Schema, target: str, factor: float) -> Schema:
    def scaled(field):
        if field.name != target:
            return field
        low, high = field.bounds
        return dataclasses.replace(field, bounds=(low * factor, high * factor),
                                   grid=field.grid * factor)

    return Schema(name=f"{schema.name}-x{factor:g}", fields=tuple(scaled(f) for f in schema))


def _scaled(frame: pd.DataFrame, factor: float) -> pd.DataFrame:
    return frame.assign(MEDV=frame["MEDV"] * factor)


@pytest.fixture(scope="module")
def scaled_pair(simulation):
    """The same foundation trained on MEDV and on MEDV × 1000."""
    schema = _scaled_schema(BOSTON_SCHEMA, "MEDV", SCALE)
    plain = train_foundation(simulation.proxy, BOSTON_SCHEMA, QUICK)
    scaled = train_foundation(_scaled(simulation.proxy, SCALE), schema, QUICK)
    return plain, scaled


def test_the_foundation_is_invariant_to_the_targets_units(scaled_pair, simulation):
    plain, scaled = scaled_pair
    test = pd.concat([u.test for u in simulation.users])
    np.testing.assert_allclose(scaled.predict(test) / SCALE, plain.predict(test), rtol=2e-3,
                               atol=2e-3 * float(np.abs(plain.predict(test)).max()))


def test_personalize_with_the_defaults_gives_the_same_relative_result_at_any_scale(
        scaled_pair, simulation, tmp_path):
    plain, scaled = scaled_pair
    for user in simulation.users[:4]:
        results, predictions = [], []
        for foundation, factor in ((plain, 1.0), (scaled, SCALE)):
            path = export_coreml(foundation, tmp_path / f"u{user.user_id}-{factor:g}.mlmodel",
                                 updatable=UpdateSettings())
            results.append(personalize(path, _scaled(user.train, factor)))
            predictions.append(predict_frame(load_spec(path), user.test) / factor)
        assert results[0].accepted == results[1].accepted
        assert results[0].prior_records == results[1].prior_records
        np.testing.assert_allclose(results[1].holdout_loss_after / SCALE**2,
                                   results[0].holdout_loss_after, rtol=1e-2)
        np.testing.assert_allclose(predictions[1], predictions[0], rtol=1e-2)


def _anchored_least_squares(spec, records):
    """The slow, obvious reference: the head's fixed point, by least squares on its input."""
    inputs = {f.name: records[f.name].to_numpy(float) for f in spec.description.input}
    z = evaluate_spec(spec, inputs, outputs=["dense_2_out"])["dense_2_out"].ravel()
    design = np.stack([z, np.ones_like(z)], axis=1)
    return np.linalg.lstsq(design, records["MEDV"].to_numpy(float), rcond=None)[0]


@pytest.mark.parametrize("user", [1, 5, 9])
def test_every_loss_convention_converges_to_the_same_anchored_fit(foundation, simulation, user):
    spec = build_spec(foundation, updatable=UpdateSettings())
    records = with_prior(spec, simulation.users[user].train, 3)
    start = np.array([get_inner_product(spec, "personal_head")[0][0, 0],
                      get_inner_product(spec, "personal_head")[1][0]])
    reference = _anchored_least_squares(spec, records)
    heads = {}
    for name, convention in (("mean", LossConvention()), ("sum", LossConvention("sum")),
                             ("half", LossConvention(half=True))):
        updated, _ = update_spec(spec, records, convention=convention)
        weight, bias = get_inner_product(updated, "personal_head")
        heads[name] = np.array([weight[0, 0], bias[0]])
    # With mini-batches of one record a mean and a sum are the same number.
    assert np.array_equal(heads["mean"], heads["sum"])
    # A ½ factor halves the step, not the place the update converges to.
    for name in ("mean", "half"):
        np.testing.assert_allclose(heads[name] - start, reference - start,
                                   atol=0.15 * np.abs(reference - start).max())


def test_anchor_records_carry_the_models_own_predictions(foundation, simulation):
    spec = build_spec(foundation, updatable=UpdateSettings())
    records = simulation.users[0].train
    out = with_prior(spec, records, 20)
    assert len(out) == len(records) + 20
    anchors = out.iloc[len(records):]
    np.testing.assert_allclose(anchors["MEDV"], predict_frame(spec, anchors), rtol=1e-6)
    assert with_prior(spec, records, 0) is records
    with pytest.raises(ValidationError, match="prior_records"):
        with_prior(spec, records, -1)


def test_the_decision_rule_keeps_only_clear_improvements():
    rng = np.random.default_rng(0)
    before = rng.uniform(1, 2, 15)
    assert DecisionRule().decide(before, before * 0.5)[0]
    keep, why = DecisionRule().decide(before, before * 1.01)
    assert not keep and "no improvement" in why
    noisy = before + rng.normal(0, 1, 15) - 0.05
    assert not DecisionRule(confidence=0.95).decide(before, noisy)[0]
    assert not DecisionRule(margin=0.6).decide(before, before * 0.5)[0]
    assert not DecisionRule().decide(before, np.full(15, np.nan))[0]
    for bad in ({"folds": 1}, {"confidence": 1.0}, {"margin": -1.0}):
        with pytest.raises(ValidationError):
            DecisionRule(**bad)


def test_an_update_with_nothing_to_learn_is_discarded_by_cross_validation(
        foundation, simulation, tmp_path):
    path = export_coreml(foundation, tmp_path / "personal.mlmodel", updatable=UpdateSettings())
    before = path.read_bytes()
    records = simulation.users[2].train.copy()
    # Targets that are the model's own predictions plus zero-mean noise: any update fits noise.
    noise = np.random.default_rng(3).normal(0.0, 8.0, len(records))
    records["MEDV"] = predict_frame(load_spec(path), records) + noise
    result = personalize(path, records)
    assert not result.accepted and path.read_bytes() == before


def test_personalization_helps_off_boston_and_never_hurts_on_average(tmp_path):
    """A target in the hundreds to thousands (Friedman #2), the same defaults."""
    from dmt_model.datasets import simulate_users

    data = load_friedman(400, seed=1)
    sim = simulate_users(data, n_users=8, spread=0.3, seed=1, location="x0", target="y")
    foundation = train_foundation(sim.proxy, FRIEDMAN_SCHEMA, TrainingConfig(epochs=150, seed=1))
    model = export_coreml(foundation, tmp_path / "v1.mlmodel", updatable=UpdateSettings())
    base, personal = [], []
    for user in sim.users:
        path = tmp_path / f"user{user.user_id}.mlmodel"
        shutil.copyfile(model, path)
        personalize(path, user.train)
        y = user.test["y"].to_numpy()
        base.append(np.sqrt(np.mean((predict_frame(load_spec(model), user.test) - y) ** 2)))
        personal.append(np.sqrt(np.mean((predict_frame(load_spec(path), user.test) - y) ** 2)))
    assert np.mean(personal) < np.mean(base)


def test_adopting_a_new_version_trains_on_the_records_given(foundation, simulation, tmp_path):
    v1 = export_coreml(foundation, tmp_path / "v1.mlmodel", updatable=UpdateSettings())
    personal = tmp_path / "personal.mlmodel"
    shutil.copyfile(v1, personal)
    user = simulation.users[4]
    result = adopt_new_version(v1, personal, user.train)
    assert result.holdout_loss_before >= 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        adopt_new_version(v1, personal, unshared_records=user.private)
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)
    with pytest.raises(ValidationError, match="records"):
        adopt_new_version(v1, personal)


def test_the_gate_refuses_a_planted_harmful_version_and_keeps_serving_the_current(
        simulation, tmp_path):
    train, validation = validation_split(simulation.proxy, seed=0)
    good = train_foundation(train, BOSTON_SCHEMA, QUICK)
    poisoned_data = train.assign(MEDV=np.clip(train["MEDV"] + 25.0, 0, 60))
    poisoned = train_foundation(poisoned_data, BOSTON_SCHEMA, QUICK)
    registry = ModelRegistry(tmp_path / "models")
    v1 = registry.publish(good, trained_on={"proxy": len(train)}, validation_data=validation)
    assert v1.published and "rmse" in v1.validation
    v2 = registry.publish(poisoned, trained_on={"proxy": len(train)},
                          validation_data=validation)
    assert not v2.published and v2.status == "refused"
    assert v2.validation["rmse"] > v2.validation["current_rmse"]
    assert registry.latest() == v1
    assert (tmp_path / "models" / v2.mlmodel_file).exists()  # kept for inspection
    v3 = registry.publish(good, trained_on={"proxy": len(train)}, validation_data=validation)
    assert v3.published and registry.latest() == v3
    assert [v.status for v in registry.versions()] == ["published", "refused", "published"]


def test_validation_split_keeps_records_aside():
    frame = pd.DataFrame({"a": range(10)})
    train, validation = validation_split(frame, fraction=0.2, seed=0)
    assert len(validation) == 2 and len(train) == 8
    assert set(train.index).isdisjoint(validation.index)
    with pytest.raises(ValidationError, match="fraction"):
        validation_split(frame, fraction=1.0)


# Found in review (4 December, helper-41): regression users with a few records drawn like
# the proxy ended worse off on average, in every seed (make_friedman1, 60 users, 100 test
# records each: +5-13 % RMSE at 2-5 records, +3 % at 10). Cross-validation on a handful of
# records picked a weak prior by chance, and a regression's rule kept any update whose mean
# held-out error was lower (confidence 0.5).
#
# The 99 % that fixed it cost users who differ much of their gain on 5 records: users whose
# target is × 0.6 kept 0.64 of the foundation's RMSE; at 97.5 % from 5 records, 0.51. Since
# a weaker prior is eligible only from 6 records (test_below_six_records_only_the_strongest
# _prior_is_eligible), 0.86 on 5 records (the strongest prior's update; the server's check
# grants the open rule where users differ: personal_rule_for), 0.35 on 6 until a weaker prior
# on 6 or 7 records was asked 99 % (6 December: users like the proxy +1.03 % at 6), 0.51.
@pytest.mark.parametrize(("n_records", "factor"),
                         [(3, 1.0), (10, 1.0), (10, 0.7), (5, 0.6), (6, 0.6)])
def test_few_records_drawn_like_the_proxy_leave_users_no_worse_off(n_records, factor):
    """... and users who differ (their target × 0.7 or × 0.6) still gain: the strongest
    prior's update below 6 records, a weaker prior's from 6 when it is better at 99 %."""
    from dmt_model.personalize import personalized_many

    foundation, users = _friedman1_users(n_records, factor)
    personal = personalized_many(foundation, [u.iloc[:n_records] for u in users])
    before, after = _mean_test_rmse(foundation, personal, users, n_records)
    bound = {(1.0, 3): 1.01, (1.0, 10): 1.01, (0.7, 10): 0.6, (0.6, 5): 0.9, (0.6, 6): 0.55}
    assert after <= before * bound[factor, n_records], (before, after)


def _friedman1_users(n_records: int, factor: float, *, seed: int = 0, n_users: int = 40,
                     proxy: int = 300, truth: bool = False):
    """A foundation trained on ``proxy`` ``make_friedman1`` records, and ``n_users`` users
    of ``n_records`` training then 100 test records each, their target × ``factor``; with
    ``truth`` the test records' targets are the noiseless function's."""
    from sklearn.datasets import make_friedman1

    from dmt_privacy.schema import Field

    n_test = 100
    size = proxy + n_users * (n_records + n_test)
    X, y = make_friedman1(size, 10, noise=1.0, random_state=seed)
    frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(10)]).assign(y=y)
    if truth:  # the same inputs (the noise is drawn after them), y without the noise
        exact = make_friedman1(size, 10, noise=0.0, random_state=seed)[1]
        tested = (np.arange(size) >= proxy) & ((np.arange(size) - proxy)
                                               % (n_records + n_test) >= n_records)
        frame.loc[tested, "y"] = exact[tested]
    schema = Schema(name="friedman1", fields=tuple(
        Field(c, "numeric", bounds=(-1.0, 2.0) if c != "y" else (-15.0, 45.0),
              role="target" if c == "y" else "insensitive") for c in frame.columns))
    foundation = build_spec(train_foundation(frame.iloc[:proxy], schema,
                                             TrainingConfig(epochs=500, seed=0)),
                            updatable=UpdateSettings())
    users = [frame.iloc[proxy + u * (n_records + n_test):][:n_records + n_test]
             .assign(y=lambda f: f["y"] * factor) for u in range(n_users)]
    return foundation, users


def _mean_test_rmse(foundation, personal, users, n_records: int) -> tuple[float, float]:
    """Users' mean test RMSE under the foundation and under what ``personal`` left them."""
    def rmse(model, records):
        return float(np.sqrt(np.mean((predict_frame(model, records) - records["y"]) ** 2)))

    before = float(np.mean([rmse(foundation, u.iloc[n_records:]) for u in users]))
    after = float(np.mean([rmse(model, u.iloc[n_records:]) for (model, _), u in
                           zip(personal, users, strict=True)]))
    return before, after


# Found in review (4 December): a record stored more than once (a sync that ran twice) was
# held out in one fold while its copy trained in it, so the update looked better than it
# was. Users drawn like the proxy with 15 records stored 3 times each kept a third of their
# updates (10-20 % stored once) and ended worse off: +1.9 % and +5.2 % test RMSE.
def test_a_record_stored_more_than_once_is_never_scored_by_an_update_trained_on_its_copy():
    from dmt_model.personalize import _folds, personalized_many

    # Rows 0 and 2, 1 and 4, 3 and 5 are copies; with scored=5, row 5 is a copy never held out.
    frame = pd.DataFrame({"a": [1.0, 2.0, 1.0, 3.0, 2.0, 3.0, 5.0], "y": [0, 1, 0, 2, 1, 2, 4]})
    groups = pd.factorize(pd.MultiIndex.from_frame(frame))[0]
    for scored in (None, 5):
        checks = _folds(frame, frame["y"].to_numpy(), 5, 0, scored, groups=groups)
        held = [i for _, part, _ in checks for i in part.index]
        assert len(held) == len(set(groups[:scored])) == len(set(held))  # each once
        for train, part, target in checks:
            assert set(groups[train.index]).isdisjoint(groups[part.index])
            assert list(target) == list(part["y"])
    # Without copies the folds are the ones cut before copies were looked for.
    alone = frame.drop_duplicates()
    assert [list(part.index) for _, part, _ in
            _folds(alone, alone["y"].to_numpy(), 5, 0, groups=np.arange(len(alone)))] == \
        [list(part.index) for _, part, _ in _folds(alone, alone["y"].to_numpy(), 5, 0)]

    foundation, users = _friedman1_users(15, 1.0, seed=1)
    personal = personalized_many(foundation, [pd.concat([u.iloc[:15]] * 3) for u in users])
    before, after = _mean_test_rmse(foundation, personal, users, 15)
    assert after <= before * 1.005, (before, after)


# Found in review (5 December, helper-69): on 2 distinct records each fold trained on one
# record plus its anchors and scored the other; two held-out improvements of one sign gave a
# paired t of 27 on one degree of freedom, so the test passed by chance about 30 % of the
# time (179 of 600 updates kept for users with nothing to learn; +0.37 % test RMSE).
def test_two_records_cannot_show_that_an_update_is_better():
    from dmt_model.personalize import ADOPTION_RULE, OPEN_RULE, personalized_many

    before, after = np.array([1.0, 1.2]), np.array([0.1, 0.15])
    from dmt_model.tasks import CLASSIFICATION, REGRESSION

    for rule in (DecisionRule().for_task(REGRESSION), DecisionRule().for_task(CLASSIFICATION),
                 DecisionRule(confidence=0.99)):
        keep, why = rule.decide(before, after)
        assert not keep and "at least 3" in why, why
    # Asking no significance, a rule has nothing to test: the lower mean still wins.
    assert OPEN_RULE.decide(before, after)[0] and ADOPTION_RULE.decide(before, after)[0]
    assert DecisionRule(confidence=0.9).decide(np.r_[before, 1.1], np.r_[after, 0.12])[0]

    foundation, users = _friedman1_users(2, 1.0)
    personal = personalized_many(foundation, [u.iloc[:2] for u in users])
    assert not any(result.accepted for _, result in personal)
    assert all("2 distinct records" in result.reason for _, result in personal)
    assert np.subtract(*_mean_test_rmse(foundation, personal, users, 2)) == 0


# Found in review (5 December, helper-69): copies were found by bit-exact equality, so a
# record synced again through a float32 store (a value 1e-8 away) was a new record, held out
# while its twin trained: users drawn like the proxy ended +7.0 % test RMSE worse.
def test_a_copy_that_went_through_float32_is_still_a_copy():
    from dmt_model.personalize import _copies, personalized_many

    foundation, users = _friedman1_users(15, 1.0, seed=1)
    records = users[0].iloc[:15]
    as_float32 = records.astype(np.float32).astype(np.float64)
    assert not as_float32.equals(records)  # the round trip moved every value a little
    groups = _copies(foundation, pd.concat([records, as_float32, records]))
    assert list(groups) == list(range(15)) * 3
    # A value moved by more than a thousandth of its field's spread is another record.
    moved = records.assign(x0=records["x0"] + 0.01)
    assert len(set(_copies(foundation, pd.concat([records, moved])))) == 30

    personal = personalized_many(foundation, [
        pd.concat([u.iloc[:15], u.iloc[:15].astype(np.float32).astype(np.float64)] * 2)
        for u in users])
    before, after = _mean_test_rmse(foundation, personal, users, 15)
    assert after <= before * 1.005, (before, after)


# Found in review (6 December, helper-97): a record stored twice, once as it is and once
# written with 6 significant digits (a CSV or JSON export, a sync through text), was two
# records: held out while its near-copy trained, and counted twice towards the rule's
# thresholds. Users drawn like the proxy with 3 records ended +16.0 / +7.9 / +8.0 % test RMSE
# worse (seeds 0-2; 47-58 % of them worse off), against +0.1 % stored once.
def test_a_near_copy_written_with_six_significant_digits_is_a_copy():
    from dmt_model.personalize import COPY_TOLERANCE, _copies, personalized_many

    def written(frame):
        return frame.map(lambda value: float(f"{value:.6g}"))

    foundation, users = _friedman1_users(3, 1.0, seed=0, n_users=60)
    records = users[0].iloc[:15]
    assert not written(records).equals(records)
    groups = _copies(foundation, pd.concat([records, written(records), records.round(4)]))
    assert list(groups) == list(range(15)) * 3
    # apart by more than COPY_TOLERANCE of a field's spread in one field: two records
    spread = float(records["x3"].std())
    assert 0.01 > COPY_TOLERANCE * spread
    apart = records.assign(x3=records["x3"] + 0.01)
    assert len(set(_copies(foundation, pd.concat([records, apart])))) == 30
    # a chain of near-copies, each within the tolerance of the next, is one record
    chain = [records.iloc[:1].assign(y=records["y"].iloc[0] + step * 1e-4) for step in range(5)]
    assert len(set(_copies(foundation, pd.concat(chain)))) == 1

    personal = personalized_many(foundation, [pd.concat([u.iloc[:3], written(u.iloc[:3])])
                                              for u in users])
    before, after = _mean_test_rmse(foundation, personal, users, 3)
    assert after <= before * 1.005, (before, after)


# Found in this session's check of users drawn like the proxy (make_friedman1, a foundation
# of 2,000 records, 4 seeds of 60 users scored on the noiseless truth): a weaker prior's
# update was eligible once it beat the current model at 97.5 %, though it did not beat the
# strongest prior's; of 240 users with 10 records 7 kept such an update (+15 % to +158 %
# test RMSE each; +1.5 % on the users' mean). From 30 records any prior was chosen: the
# updates kept were weak priors', +4 % to +29 %.
@pytest.mark.parametrize("records", [10, 40])
def test_a_weaker_prior_is_chosen_only_when_it_beats_the_strongest(records):
    from dmt_model.personalize import OPEN_RULE, _eligible_priors
    from dmt_model.tasks import REGRESSION

    grid, rule = (1, 3, 10, 30), DecisionRule().for_task(REGRESSION)
    rng = np.random.default_rng(0)
    before = 1.0 + rng.random(records)
    strongest = before - 0.3 + 0.01 * rng.standard_normal(records)
    # each weaker prior clearly better than the current model, and no better than the
    # strongest prior's update; the weakest also clearly better than that
    after = {30: strongest, 10: strongest + 0.02 * rng.standard_normal(records),
             3: strongest + 0.05, 1: strongest - 0.2 + 0.01 * rng.standard_normal(records)}
    for prior in (1, 3, 10):
        assert rule.decide(before, after[prior])[0]
    assert list(_eligible_priors(grid, before, after, rule, REGRESSION)) == [30, 1]
    # a rule that does not guard few records chooses among the whole grid, as before
    assert list(_eligible_priors(grid, before, after, OPEN_RULE, REGRESSION)) == list(grid)
    # below 30 records a weaker prior must beat the current model too: one that beats only
    # a strongest prior's update worse than the model is not eligible (from 30 it is, and
    # the decision then keeps nothing: it is no better than the model)
    worse = {30: before + 0.3 + 0.01 * rng.standard_normal(records),
             10: before + 0.3, 3: before + 0.3,
             1: before + 0.01 * rng.standard_normal(records)}
    assert rule.decide(worse[30], worse[1])[0] and not rule.decide(before, worse[1])[0]
    assert list(_eligible_priors(grid, before, worse, rule, REGRESSION)) == (
        [30] if records < REGRESSION.few_records else [30, 1])


# Found in this session's check of users drawn like the proxy (make_friedman1, a foundation
# of 2,000 records, scored on the noiseless truth, seeds 0-5 of 60 users): a weaker prior
# was eligible from 3 records (99 % on 3 or 4, 97.5 % from 5), and users with 3 or 5
# records ended +0.6 % and +0.8 % worse on average (+2.4 % at 5 records on seed 0). On so
# few records each fold trains on most of the records the others score: a weak prior's
# update passed the paired t by chance far more often than its confidence says.
@pytest.mark.slow
def test_below_six_records_only_the_strongest_prior_is_eligible():
    from dmt_model.personalize import FEW_RECORDS_CONFIDENCE, _eligible_priors, personalized_many
    from dmt_model.tasks import REGRESSION

    assert FEW_RECORDS_CONFIDENCE[0][0] == 6
    grid, rule = (1, 3, 10, 30), DecisionRule().for_task(REGRESSION)
    for records in (3, 5, 6):
        before = np.full(records, 2.0) + np.arange(records) / 100
        after = {30: before - 0.1, 10: before - 0.2, 3: before - 0.3, 1: before - 1.0}
        assert rule.decide(before, after[1])[0] and rule.decide(after[30], after[1])[0]
        assert list(_eligible_priors(grid, before, after, rule, REGRESSION)) == (
            [30] if records < 6 else [30, 1, 3, 10])

    foundation, users = _friedman1_users(5, 1.0, seed=0, n_users=60, proxy=2000, truth=True)
    personal = personalized_many(foundation, [u.iloc[:5] for u in users])
    before_rmse, after_rmse = _mean_test_rmse(foundation, personal, users, 5)
    assert after_rmse <= before_rmse * 1.003, (before_rmse, after_rmse)  # was +2.4 %


# Found measuring personalize(base=) (6 December, benchmarks/personalize_again.py's users):
# at exactly 6 records, where a weaker prior first became eligible at 97.5 %, one
# personalization left users drawn like the proxy +1.03 % test RMSE worse (seed 3: +3.1 %),
# and at 7 +1.02 %, against +0.1 % at 8 (make_friedman1, 40 users, seeds 0-3; helper-97 saw
# +0.35 % at 6 on the noiseless truth). Asked at 99 % on 6 or 7 records: +0.06 %, +0.06 %.
def test_a_weaker_prior_needs_99_percent_on_six_or_seven_records():
    from scipy.stats import t as student

    from dmt_model.personalize import FEW_RECORDS_CONFIDENCE, _eligible_priors
    from dmt_model.tasks import REGRESSION

    assert FEW_RECORDS_CONFIDENCE == ((6, 0.99), (8, 0.975))
    grid, rule = (1, 3, 10, 30), DecisionRule().for_task(REGRESSION)
    for records, eligible in ((6, [30]), (7, [30]), (8, [30, 1])):
        # a weaker prior better by a paired t of 2.8: past 97.5 %, short of 99 %
        assert student.ppf(0.975, records - 1) < 2.8 < student.ppf(0.99, records - 1)
        z = np.resize([1.0, -1.0], records) + np.arange(records) / 50
        z = (z - z.mean()) / z.std(ddof=1)
        gain = 2.8 / np.sqrt(records) + z
        before = np.full(records, 5.0) + np.arange(records) / 10
        after = {30: before.copy(), 10: before + 1, 3: before + 1, 1: before - gain}
        assert list(_eligible_priors(grid, before, after, rule, REGRESSION)) == eligible


# Found measuring the rule above on fl_protocol's Adult users (from 3 records a user, their
# label mix their own): with a classifier's weaker priors also held back to 6 records,
# users' unseen log loss with nothing shared rose 0.4517 -> 0.4757 (v1 0.5836), and users
# like the proxy gained nothing (make_classification: the same figures at every size). A
# classifier's update is kept only on a label shift, which already guards those users.
# Since 7 December's evening only on a plain shift: on noisy labels users drawn like the
# proxy whose records passed the test at shares of 0.78 and 0.70 kept a weak prior's
# update and ended up to +25.7 % worse (test_personalize_label_noise.py).
def test_a_classifiers_update_on_a_plain_label_shift_may_take_a_weaker_prior_from_three():
    from dmt_model.personalize import LABEL_SHIFT_FEW_RECORDS, _eligible_priors
    from dmt_model.tasks import CLASSIFICATION, REGRESSION

    grid = (1, 3, 10, 30)
    classifier = DecisionRule().for_task(CLASSIFICATION)
    for records in (3, 5, 10, LABEL_SHIFT_FEW_RECORDS - 1):
        before = np.full(records, 2.0)
        after = {30: before - 0.1, 10: before - 0.2, 3: before - 0.3, 1: before - 1.0}
        assert list(_eligible_priors(grid, before, after, classifier, CLASSIFICATION,
                                     label_shift=True, plain_shift=True)) == [30, 1, 3, 10]
        assert list(_eligible_priors(grid, before, after, classifier, CLASSIFICATION,
                                     label_shift=True)) == [30]  # (not plain, by default)
        regression = DecisionRule().for_task(REGRESSION)
        assert list(_eligible_priors(grid, before, after, regression, REGRESSION)) == (
            [30] if records < 6 else [30, 1, 3, 10])
    # from 30 records a weaker prior better than the strongest's, plain shift or not
    records = LABEL_SHIFT_FEW_RECORDS
    before = np.full(records, 2.0) + np.arange(records) / 100
    after = {30: before - 0.1, 10: before - 0.1, 1: before + 0.5,
             3: before - 0.3 - np.resize([0.05, -0.05], records)}
    for plain in (True, False):
        assert list(_eligible_priors(grid, before, after, classifier, CLASSIFICATION,
                                     label_shift=True, plain_shift=plain)) == [30, 3]


# Found in review (6 December, helper-97): an app that personalizes again as records arrive
# updated the personal model on its own, so each round was another 90 % test against the
# model the last chance update left, and nothing ever pulled it back: users drawn like the
# proxy who personalized every 3 records ended +1.0 % test RMSE worse at 15 records (22-42 %
# of them worse off, 4 seeds) against -0.1 % (2-10 %) personalizing the foundation once on
# the same records, under the rule then (+0.39 % against -0.08 % since 99 % on 6-7
# records). With base= each round personalizes the version the device installed on all its
# records: what once on those records gives, whatever came before.
# helper-97's finding stands where an app passes no base=: each round updates the personal
# model on its own (+0.39 % at 15 records, 23 % of users like the proxy worse off). A personal
# model now says which version it was personalized from, and personalizing it again on its
# own warns, naming base=.
def test_personalizing_a_personal_model_again_on_its_own_warns(tmp_path):
    from dmt_model.coreml import load_spec, save_spec
    from dmt_model.personalize import (
        ADOPTION_RULE,
        adopted,
        personalize,
        personalized,
        personalized_from,
    )

    foundation, users = _friedman1_users(15, 0.5, seed=3, n_users=1)  # they differ: kept
    foundation.description.metadata.versionString = "1"
    installed = tmp_path / "v1.mlmodel"
    save_spec(foundation, installed)
    personal = tmp_path / "personal.mlmodel"
    shutil.copyfile(installed, personal)
    assert personalized_from(installed) is None  # a version as shipped
    with warnings.catch_warnings():
        warnings.simplefilter("error", RepeatedPersonalizationWarning)
        first = personalize(personal, users[0].iloc[:9])
    # the version's number: nothing of the device's records or weights (helper-100: a hash of
    # the model updated named an earlier personal state, linkable, for a model without one)
    assert first.accepted and personalized_from(personal) == "1"
    with pytest.warns(RepeatedPersonalizationWarning, match="Pass base= version 1"):
        personalize(personal, users[0].iloc[:15])
    assert personalized_from(personal) == "1"  # kept or not: still from version 1
    with pytest.warns(RepeatedPersonalizationWarning, match="The spec"):  # not a temporary
        personalized(load_spec(personal), users[0].iloc[:15])            # file's path
    with warnings.catch_warnings():
        warnings.simplefilter("error", RepeatedPersonalizationWarning)
        personalize(personal, users[0].iloc[:15], base=installed)  # the way to do it
        once, result = personalized(foundation, users[0].iloc[:15])
    assert personalized_from(once) == ("1" if result.accepted else None)
    # a personal model passed as the base is refused: it is the compounding base= prevents
    before = personal.read_bytes()
    shutil.copyfile(personal, tmp_path / "copy.mlmodel")
    with pytest.raises(ModelFileError, match="personal model"):
        personalize(personal, users[0].iloc[:15], base=tmp_path / "copy.mlmodel")
    assert personal.read_bytes() == before
    # adopting a version: the personal model then comes from it
    v2 = load_spec(personal)  # a version that fits this user's records: it is adopted
    del v2.description.metadata.userDefined["dmt.personalized_from"]
    v2.description.metadata.versionString = "2"
    moved, outcome = adopted(v2, load_spec(installed), users[0].iloc[:15],
                             previous=foundation, rule=ADOPTION_RULE)
    assert outcome.accepted and personalized_from(moved) == "2"


def test_personalizing_again_from_the_base_is_personalizing_once(tmp_path):
    from dmt_model.coreml import load_spec, save_spec
    from dmt_model.personalize import personalize, personalized

    foundation, users = _friedman1_users(15, 0.7, seed=3, n_users=3)
    base = tmp_path / "v1.mlmodel"
    save_spec(foundation, base)
    for u, user in enumerate(users):
        personal = tmp_path / f"personal-{u}.mlmodel"
        save_spec(foundation, personal)
        for n in range(3, 16, 3):
            result = personalize(personal, user.iloc[:n], base=base)
        once, alone = personalized(foundation, user.iloc[:15])
        assert load_spec(personal).SerializeToString() == once.SerializeToString()
        assert result.accepted == alone.accepted
    assert result.reset_to_base == (not result.accepted)
    with pytest.warns(RepeatedPersonalizationWarning):  # a personal model, updated on its own
        assert not personalize(personal, users[0].iloc[:15]).reset_to_base  # without base=
    # the base must be the version the personal model comes from (its format too:
    # tests/model/test_executorch.py)
    other = load_spec(base)
    other.description.metadata.versionString = "2"
    save_spec(other, tmp_path / "v2.mlmodel")
    with pytest.raises(ModelFileError, match="version"):
        personalize(personal, users[0].iloc[:15], base=tmp_path / "v2.mlmodel")
