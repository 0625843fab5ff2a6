"""Many devices personalized at once (``personalized_many``, ``adopted_many``) are each the
device personalized alone (``personalized``, ``adopted``): the same weights to the last bit
and the same result, whatever the devices' sizes, passes, divergences and errors."""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import pandas as pd
import pytest
from test_tasks import _records, classifier  # noqa: F401 — the toy classifier fixture

from dmt_model.coreml import UpdateSettings, build_spec
from dmt_model.coreml._spec import spec_bytes
from dmt_model.coreml.weights import get_weights, set_weights
from dmt_model.personalize import (
    ADOPTION_RULE,
    IN_MEMORY,
    DecisionRule,
    adopted,
    adopted_many,
    personalized,
    personalized_many,
)
from dmt_privacy.errors import ModelFileError, ValidationError

FAST = {"epochs": 20}  # every device's update, batched or alone, with the same overrides


def _assert_each_alone(many, alone):
    assert len(many) == len(alone)
    for (spec_m, result_m), (spec_a, result_a) in zip(many, alone, strict=True):
        assert spec_bytes(spec_m) == spec_bytes(spec_a)  # every weight, to the last bit
        assert result_m.model_path == IN_MEMORY
        assert dataclasses.replace(result_m, model_path=result_a.model_path) == result_a


@pytest.fixture(scope="module")
def devices(simulation, boston):
    """Regression devices of 2 to 60 records, and one whose update diverges (the records
    with the largest crime rates, at a learning rate that a calm device survives)."""
    users = simulation.users
    frames = [users[0].train.iloc[:2], pd.concat([u.train for u in users[1:8]]).iloc[:60],
              users[8].train.iloc[:5], boston.nlargest(20, "CRIM"),
              pd.concat([u.train for u in users[9:12]]).iloc[:17]]
    assert [len(f) for f in frames] == [2, 60, 5, 20, 17]
    return frames


def test_personalizing_many_devices_is_personalizing_each_alone(foundation, devices,
                                                                monkeypatch):
    from dmt_model.tasks import Regression

    spec = build_spec(foundation, updatable=UpdateSettings(updatable_layers=2))
    # Any prior at any size, at 0.5, keeps some update here: the test is that many devices
    # decide as each alone, whatever the rule.
    monkeypatch.setattr(Regression, "few_records", 0)
    settings = {"learning_rate": 3e-3, "rule": DecisionRule(confidence=0.5), **FAST}
    many = personalized_many(spec, devices, **settings)
    _assert_each_alone(many, [personalized(spec, records, **settings) for records in devices])
    reasons = [result.reason for _, result in many]
    assert "diverged" in reasons[3] and any(result.accepted for _, result in many)


def test_many_classifier_devices_with_a_holdout_each_alone(classifier):  # noqa: F811
    spec = build_spec(classifier, updatable=UpdateSettings(epochs=25))
    devices = [_records(3, 1), _records(40, 2, flip=True), _records(9, 3, threshold=-0.5),
               _records(30, 7, threshold=-0.7)]
    holdouts = [None, _records(10, 5, flip=True), None, None]
    many = personalized_many(spec, devices, holdouts=holdouts, prior_records=(1, 10))
    _assert_each_alone(many, [personalized(spec, records, holdout=holdout, prior_records=(1, 10))
                              for records, holdout in zip(devices, holdouts, strict=True)])
    assert [result.accepted for _, result in many][3]


def test_adopting_on_many_devices_is_adopting_on_each_alone(foundation, devices, monkeypatch):
    """previous=, shared records (never scored), the rule from the release or given, and
    devices split over several passes; the versions held re-personalized at several rates
    (helper-147: devices holding previous as shipped, one whose model says its update ran
    ten times slower), and those as shipped asking ADOPTION_RULE's 99 %."""
    import copy

    from dmt_model import personalize

    previous = build_spec(foundation, updatable=UpdateSettings())
    calm = [devices[i] for i in (0, 1, 2, 4)]
    currents = [spec for spec, _ in personalized_many(previous, calm, **FAST)]
    currents[0] = copy.deepcopy(previous)
    rate = personalize._learning_rate(previous)
    currents[2].description.metadata.userDefined["dmt.personalized_at"] = str(rate / 10)
    shipped = personalize._held_as_shipped(previous, currents)
    assert shipped == [True, True, False, True]  # (device 2 kept an update)
    assert personalize._held_rates(previous, currents, shipped) == [rate, rate, rate / 10, rate]
    new = build_spec(foundation, updatable=UpdateSettings())
    weight, bias, _ = get_weights(new, "dense_2")
    set_weights(new, "dense_2", weight, bias + 0.3)  # a new version somewhat off
    unshared = [records.iloc[: max(2, len(records) // 2)] for records in calm]
    shared = [records.drop(part.index) for records, part in zip(calm, unshared, strict=True)]
    shared[2] = None
    for rule in (ADOPTION_RULE, None):
        alone = [adopted(new, current, records, previous=previous, shared_records=s, rule=rule,
                         **FAST)
                 for current, records, s in zip(currents, unshared, shared, strict=True)]
        many = adopted_many(new, currents, unshared, previous=previous, shared_records=shared,
                            rule=rule, **FAST)
        _assert_each_alone(many, alone)
    passes = []
    train = personalize._personal_updates
    monkeypatch.setattr(personalize, "_personal_updates",
                        lambda *args: passes.append(len(args[1])) or train(*args))
    monkeypatch.setattr(personalize, "_PASS_LANE_STEPS", 30_000)
    _assert_each_alone(adopted_many(new, currents, calm, previous=previous, **FAST),
                       [adopted(new, current, records, previous=previous, **FAST)
                        for current, records in zip(currents, calm, strict=True)])
    assert len(passes) > 2 * len(calm)  # several passes per version (and alone: one each)
    assert all(np.array_equal(a, b) for a, b in zip(get_weights(new, "dense_2")[:2],
                                                    (weight, bias + 0.3), strict=True))


def test_bad_input_raises_before_any_training_naming_the_device(foundation, devices,
                                                                monkeypatch):
    from dmt_model import personalize

    spec = build_spec(foundation, updatable=UpdateSettings())
    monkeypatch.setattr(personalize, "_update_specs", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(ValidationError, match="record"):
        personalized(spec, devices[0].iloc[:1])
    with pytest.raises(ValidationError, match=r"^device 2: 1 record\(s\) cannot be cross"):
        personalized_many(spec, [devices[1], devices[4], devices[0].iloc[:1]])
    broken = devices[2].assign(RM=np.nan)
    with pytest.raises(ValidationError, match="^device 1: .*RM"):
        personalized_many(spec, [devices[1], broken])
    with pytest.raises(ValidationError, match="^device 0: .*cannot be cross"):
        adopted_many(spec, [spec], [devices[1].iloc[:1]], shared_records=[devices[2]])
    with pytest.raises(ValidationError, match="one per device"):
        adopted_many(spec, [spec], devices[:2])
    with pytest.raises(ValidationError, match="holdouts"):
        personalized_many(spec, devices[:2], holdouts=devices[2])
    other = build_spec(foundation, updatable=UpdateSettings())
    other.description.metadata.userDefined["dmt.featurizer"] = \
        other.description.metadata.userDefined["dmt.featurizer"].replace("CRIM", "CRIME")
    with pytest.raises(ModelFileError, match="of device 1"):
        adopted_many(spec, [spec, other], devices[1:3])
    assert personalized_many(spec, []) == []


def _anchors_one_set_at_a_time(spec, records, prior):
    """A regression set's anchors as with_prior once made them, set by set: its records
    cycled, and the model's predictions for them (their targets)."""
    from dmt_model.coreml import predict_frame

    anchors = records.iloc[np.arange(prior) % len(records)]
    return anchors, predict_frame(spec, anchors)


def test_a_devices_anchors_are_predicted_once_and_are_each_sets_own(
        foundation, devices, classifier, monkeypatch):  # noqa: F811 — the fixture
    """Every update a device trains (each fold at each prior strength, and the finals) gets
    anchor records; they come from one prediction of the model for the device, and each
    set's anchors are the ones it would get alone (its own records, cycled; to float32
    rounding of the batch)."""
    from dmt_model import personalize
    from dmt_model.personalize import with_prior

    spec = build_spec(foundation, updatable=UpdateSettings())
    sets, priors = [devices[1], devices[2].iloc[:3], devices[4]], [5, 0, 40]
    whole, lengths = personalize._anchored(spec, sets, priors)
    assert lengths == [65, 3, 57]
    at = 0
    for records, prior, length in zip(sets, priors, lengths, strict=True):
        got = whole.iloc[at:at + length]
        pd.testing.assert_frame_equal(got.iloc[:len(records)].drop(columns="MEDV"),
                                      records.drop(columns="MEDV"))
        np.testing.assert_array_equal(got["MEDV"].iloc[:len(records)], records["MEDV"])
        anchors, predicted = _anchors_one_set_at_a_time(spec, records, prior)
        pd.testing.assert_frame_equal(got.iloc[len(records):].drop(columns="MEDV"),
                                      anchors.drop(columns="MEDV"))
        np.testing.assert_allclose(got["MEDV"].iloc[len(records):], predicted, rtol=1e-6)
        at += length
    assert at == len(whole)

    # A classifier's anchors draw their classes from each set's own sequence.
    spec_c = build_spec(classifier, updatable=UpdateSettings())
    sets_c = [_records(6, 6), _records(9, 7)]
    whole, _ = personalize._anchored(spec_c, sets_c, [4, 10])
    assert list(whole["level"]) == [label for records, prior in zip(sets_c, (4, 10), strict=True)
                                    for label in with_prior(spec_c, records, prior)["level"]]

    # One prediction for all of a device's anchors: 5 folds and the final, each at 2 priors.
    sizes: list[int] = []
    predict = personalize._predict
    monkeypatch.setattr(personalize, "_predict",
                        lambda model, frame: sizes.append(len(frame)) or predict(model, frame))
    personalized(spec, devices[1], prior_records=(1, 10), **FAST)
    assert sizes.count(6 * 11) == 1 and 1 not in sizes and 10 not in sizes


def test_a_devices_updates_are_scored_as_each_update_predicts_alone(
        foundation, devices, classifier):  # noqa: F811 — the fixture
    """A device's folds and prior strengths are scored together: the frozen layers once, each
    update's own layers on its fold's held-out records. Each error is the one the update's
    own prediction gives (to float32 rounding of the batch), for a regressor and for a
    classifier (whose head is a grouped 1×1 convolution), the unchanged model included."""
    from dmt_model import personalize

    cases = [(build_spec(foundation, updatable=UpdateSettings(updatable_layers=2)), devices[1]),
             (build_spec(classifier, updatable=UpdateSettings()), _records(30, 7))]
    for spec, records in cases:
        target = personalize.featurizer_of(spec).target_values(records)
        checks = personalize._folds(records, target, 3, seed=0)
        updates = [fit[0] for fit in personalize.update_specs(
            spec, [personalize.with_prior(spec, train, prior) for prior in (1, 10)
                   for train, _, _ in checks], epochs=5, learning_rate=1e-3)]
        models = [*updates, spec, spec, spec]
        together = personalize._updates_errors(spec, models, checks * 3)
        for model, (_, held, y), errors in zip(models, checks * 3, together, strict=True):
            # (atol: a squared error of residual r moves by 2·r·δ when the float32 prediction
            # moves by δ; a target near 20 rounds at about 2e-6, and on one machine a record's
            # error of 0.0858 differed by 2.2e-6 between the batch and the single prediction)
            np.testing.assert_allclose(errors, personalize._record_errors(model, held, y),
                                       rtol=1e-5, atol=1e-5)
        assert not np.allclose(together[0], together[6])  # the updates did move


def test_a_holdout_and_one_prior_strength_keep_the_update_the_rule_accepts(foundation, devices):
    """With a holdout and a single prior strength the update scored on the holdout is the one
    written (no final update is trained): the kept model is that update, on one device or
    many (a regression of the batched scoring, which lost it)."""
    spec = build_spec(foundation, updatable=UpdateSettings())
    records, holdout = devices[1].iloc[:40], devices[1].iloc[40:]
    lenient = DecisionRule(confidence=0.5)  # an update the rule keeps, whichever level
    personal, result = personalized(spec, records, holdout=holdout, prior_records=3,
                                    rule=lenient, **FAST)
    assert result.accepted and result.prior_records == 3
    assert spec_bytes(personal) != spec_bytes(spec)
    ((many, many_result),) = personalized_many(spec, [records], holdouts=[holdout],
                                               prior_records=3, rule=lenient, **FAST)
    assert spec_bytes(many) == spec_bytes(personal) and many_result.accepted


def test_anchors_keep_the_label_columns_dtype_and_refuse_records_without_a_target(
        foundation, devices, classifier):  # noqa: F811 — the fixture
    from dmt_model.personalize import update_specs, with_prior

    spec = build_spec(classifier, updatable=UpdateSettings())
    for records in (_records(6, 6), _records(6, 6).astype({"level": "category"})):
        assert with_prior(spec, records, 4)["level"].dtype == records["level"].dtype
    regressor = build_spec(foundation, updatable=UpdateSettings())
    with pytest.raises(ValidationError, match="no target column 'MEDV'"):
        with_prior(regressor, devices[1].drop(columns="MEDV"), 3)
    with pytest.raises(ValidationError, match="on_event reports one update; got 0"):
        update_specs(regressor, [], on_event=print)


def test_a_versions_held_out_errors_are_computed_once_for_the_same_records(foundation, devices,
                                                                          monkeypatch):
    """Deciding on a second new version, each device re-personalizes the version it holds
    on the same folds: those updates are not trained again, and every decision is what it
    is with everything computed afresh. A device whose records changed in one number, and
    a held version changed in one weight, are computed again."""
    from dmt_model import personalize

    personalize._HELD_OUT_ERRORS.clear()  # (nothing kept by another test)
    previous = build_spec(foundation, updatable=UpdateSettings())
    calm = [devices[i] for i in (0, 1, 2, 4)]
    currents = [spec for spec, _ in personalized_many(previous, calm, **FAST)]
    versions = []
    for shift in (0.3, -0.2):
        new = build_spec(foundation, updatable=UpdateSettings())
        weight, bias, _ = get_weights(new, "dense_2")
        set_weights(new, "dense_2", weight, bias + shift)
        versions.append(new)
    trained: list[tuple[bytes, int]] = []  # (the spec updated, how many updates)
    train = personalize._personal_updates
    monkeypatch.setattr(personalize, "_personal_updates", lambda *args: trained.append(
        (spec_bytes(args[0]), len(args[1]))) or train(*args))

    def decide(new, records=calm, held=previous, keep=True):
        """The decisions, and how many updates of the held version and of the new one."""
        trained.clear()
        with personalize._keeping_held_out_errors() if keep else contextlib.nullcontext():
            decisions = adopted_many(new, currents, records, previous=held, **FAST)
        of_held = sum(n for spec, n in trained if spec == spec_bytes(held))
        return decisions, of_held, sum(n for _, n in trained) - of_held

    _, held_first, new_first = decide(versions[0])
    second, held_second, new_second = decide(versions[1])
    afresh, held_afresh, new_afresh = decide(versions[1], keep=False)  # (the default)
    _assert_each_alone(second, afresh)
    assert held_first == held_afresh > 0 and held_second == 0
    assert new_first == new_second == new_afresh > 0
    assert personalize._HELD_OUT_ERRORS and all(
        not errors.flags.writeable for errors in personalize._HELD_OUT_ERRORS.values())

    changed = [records.copy() for records in calm]
    changed[1].iloc[0, 0] += 0.5  # one number of one device's records
    _, held_changed, _ = decide(versions[1], changed)
    assert 0 < held_changed < held_first
    moved = build_spec(foundation, updatable=UpdateSettings())
    weight, bias, _ = get_weights(moved, "dense_2")
    set_weights(moved, "dense_2", weight, bias + 1e-3)  # the held version, one weight apart
    assert decide(versions[1], calm, moved)[1] == held_first


def test_held_out_errors_are_kept_apart_for_whatever_they_are_computed_from(foundation, devices):
    """The key of a device's kept errors changes with anything they are computed from: the
    spec, the grid, an override, whether a stalled update is tried faster, a target, a
    value, a value's type, a column's order; a
    value it cannot write exactly (a list in a cell, an override of another kind) keeps
    nothing; outside ``_keeping_held_out_errors`` nothing is kept (the default)."""
    from dmt_model import personalize
    from dmt_model.personalize import LossConvention

    spec = build_spec(foundation, updatable=UpdateSettings())
    records = devices[4]
    target = records[foundation.featurizer.target].to_numpy()

    def key(frame=records, y=target, grid=(1, 10), overrides=FAST, model=spec, faster=False):
        with personalize._keeping_held_out_errors():
            (out,) = personalize._held_out_keys(model, [[(frame.iloc[2:], frame.iloc[:2],
                                                          y[:2])]], grid, overrides, faster)
        return out

    base = key()
    assert base is not None and key() == base  # (the same inputs, the same key)
    other = build_spec(foundation, updatable=UpdateSettings())
    weight, bias, _ = get_weights(other, "dense_2")
    set_weights(other, "dense_2", weight, bias + 1e-6)
    first = records.columns[0]
    numbers = [name for name in records.columns if records[name].dtype == np.float64]
    assert len(numbers) >= 2 and not records[numbers[0]].equals(records[numbers[1]])
    variants = {
        "spec": key(model=other),
        "grid": key(grid=(1, 3)),
        "faster": key(faster=True),
        "override": key(overrides={"epochs": 21}),
        "override type": key(overrides={"epochs": 20.0}),
        "convention": key(overrides={**FAST, "convention": LossConvention(half=True)}),
        "target": key(y=np.r_[target[:1] + 1e-9, target[1:]]),
        "value": key(frame=records.assign(**{first: records[first] + 1e-9})),
        "0.0": key(frame=records.assign(**{first: np.where(np.arange(len(records)) == 3, 0.0,
                                                            records[first])})),
        "-0.0": key(frame=records.assign(**{first: np.where(np.arange(len(records)) == 3,
                                                             -0.0, records[first])})),
        "type": key(frame=records.astype({first: np.float32})),
        "column order": key(frame=records[[*records.columns[1:], first]]),
        "values swapped between columns": key(frame=records.assign(
            **{numbers[0]: records[numbers[1]], numbers[1]: records[numbers[0]]})),
        "a value's row": key(frame=records.assign(**{first: records[first].to_numpy()[
            [1, 0, *range(2, len(records))]]})),
    }
    assert all(k is not None for k in variants.values())
    assert len({base, *variants.values()}) == len(variants) + 1, variants
    assert key(frame=records.assign(cell=[[1, 2]] * len(records))) is None
    assert key(overrides={"epochs": np.int64(20)}) is None
    assert personalize._held_out_keys(spec, [[(records, records, target)]], (1,), {}) == [None]


def test_errors_kept_without_the_faster_retry_are_never_taken_for_errors_with_it(
        foundation, devices, monkeypatch):
    """The version a device holds, re-personalized for an adoption, tries a stalled update
    faster (``faster=True``); errors kept from a computation without that retry, on the
    same checks, must not stand in for it."""
    from dmt_model import personalize

    spec = build_spec(foundation, updatable=UpdateSettings())
    records = devices[4]
    target = records[foundation.featurizer.target].to_numpy()
    checks = [(records.iloc[2:], records.iloc[:2], target[:2])]
    calls = []
    retry = personalize._faster_errors
    monkeypatch.setattr(personalize, "_faster_errors",
                        lambda *args: calls.append(1) or retry(*args))
    with personalize._keeping_held_out_errors():
        personalize._devices_held_out_errors(spec, [checks], (1, 10), FAST)
        assert not calls
        personalize._devices_held_out_errors(spec, [checks], (1, 10), FAST, rates=[None])
        assert calls == [1]  # computed, not taken from the errors kept without it
        personalize._devices_held_out_errors(spec, [checks], (1, 10), FAST, rates=[None])
        assert calls == [1]  # and kept
        rate = personalize._learning_rate(spec)
        personalize._devices_held_out_errors(spec, [checks], (1, 10), FAST, rates=[rate])
        assert calls == [1]  # a known rate is the rate it trained at, never tried faster


def test_an_adoption_re_personalizes_the_version_held_at_the_rate_its_model_trained_at(
        foundation, devices):
    """The rate an adoption re-personalizes the version a device holds at: the one its
    personal model records; the model's own where the device holds the version as shipped;
    not known (``None``: a stalled update is tried faster) for a personal model that does
    not say; and a value that is not a rate in Core ML's range (0, 1] is not read as one
    (helper-147: "5" trained the version held at 5)."""
    import copy

    from dmt_model import personalize

    spec = build_spec(foundation, updatable=UpdateSettings())
    rate = personalize._learning_rate(spec)
    personal, result = next(outcome for outcome in personalized_many(spec, devices, **FAST)
                            if outcome[1].accepted)
    recorded = personalize._personalized_at(personal)
    assert recorded == pytest.approx(result.learning_rate or rate)
    unsaid = copy.deepcopy(personal)
    del unsaid.description.metadata.userDefined["dmt.personalized_at"]
    garbled = []
    for text in ("-inf", "nan", "5", "0", "fast"):  # not a rate Core ML takes
        garbled.append(copy.deepcopy(personal))
        garbled[-1].description.metadata.userDefined["dmt.personalized_at"] = text
    held = [personal, copy.deepcopy(spec), unsaid, *garbled]
    shipped = personalize._held_as_shipped(spec, held)
    assert shipped == [False, True, False, *[False] * len(garbled)]
    assert personalize._held_rates(spec, held, shipped) == [
        recorded, rate, None, *[None] * len(garbled)]
