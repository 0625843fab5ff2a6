"""Adopting a new foundation version: a version the server showed better on held-out
devices (its release says so) is adopted unless the device's records show it worse, any
other must prove itself on them, and both sides can be scored out of fold."""

import itertools

import numpy as np
import pandas as pd
import pytest

from dmt_model.coreml import UpdateSettings, build_spec, export_coreml, predict_frame
from dmt_model.datasets.classification import DIGITS_SCHEMA, load_digits
from dmt_model.foundation import TrainingConfig, train_foundation
from dmt_model.personalize import (
    ADOPTION_RULE,
    DecisionRule,
    adopt_new_version,
    adopted,
    adopted_many,
    personalized,
)
from dmt_model.tasks import task_for
from dmt_privacy.errors import ModelFileError, TooFewRecords, ValidationError

# 20 epochs (60 before) keep every asserted margin wide: v2 personalized has under 5 % of the
# kept model's test log loss (< 50 % asserted), compare_on_devices' t is about 11 (1.36 needed)
QUICK = TrainingConfig(epochs=20, seed=0)
UNSEEN = [7, 8, 9]


def test_prefer_update_refuses_only_a_version_shown_worse():
    equal = np.array([0.5, 0.7, 0.6, 0.4, 0.5])
    slightly_worse = equal + np.array([0.02, -0.01, 0.03, 0.0, 0.01])
    clearly_worse = equal + 1.0 + np.array([0.02, -0.01, 0.03, 0.0, 0.01])
    asks_proof = DecisionRule(confidence=0.9)
    unless_worse = DecisionRule(confidence=0.9, prefer="update")
    assert not asks_proof.decide(equal, equal)[0]
    assert unless_worse.decide(equal, equal)[0]
    assert unless_worse.decide(equal, slightly_worse)[0]  # not significant at 90 %
    keep, why = unless_worse.decide(equal, clearly_worse)
    assert not keep and "current model is better" in why
    assert not unless_worse.decide(equal, np.append(equal[:-1], np.inf))[0]
    assert ADOPTION_RULE.prefer == "update" and DecisionRule().prefer == "current"
    with pytest.raises(ValidationError, match="prefer"):
        DecisionRule(prefer="new")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def digits():
    """v1 trained on digits 0–6 only, v2 on every digit; a user who has written five of
    0–6 and one 8 so far, and will write 7–9 more often."""
    data = load_digits()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(data))
    proxy, rest = data.iloc[order[:900]], data.iloc[order[900:]]
    v1 = train_foundation(proxy[~proxy["digit"].isin(UNSEEN)], DIGITS_SCHEMA, QUICK)
    v2 = train_foundation(proxy, DIGITS_SCHEMA, QUICK)
    seen = rest[~rest["digit"].isin(UNSEEN)]
    train = pd.concat([seen.iloc[:5], rest[rest["digit"] == 8].iloc[:1]])
    test = rest.drop(train.index).iloc[:300]
    return (build_spec(v1, updatable=UpdateSettings()),
            build_spec(v2, updatable=UpdateSettings()), train, test)


def _log_loss(spec, frame):
    task = task_for(DIGITS_SCHEMA)
    target = frame["digit"].to_numpy()
    return float(np.mean(task.record_errors(predict_frame(spec, frame), target)))


def test_a_version_better_where_the_user_has_no_records_yet_is_adopted(digits):
    """The defect: the old rule asked a new version to prove itself on the device's records
    at 90 % confidence, and scored the personal model on records it had trained on. A
    user with six records, one of them an 8, could not show that, so the device kept a
    model that fails on the 7, 8 and 9 it will meet (benchmarks/fl_protocol.py: 55 % of
    digits users stayed on such a model)."""
    from dmt_model.coreml._spec import spec_bytes
    from dmt_privacy.release import generate_release_key, sign_release, verify_release

    v1, v2, train, test = digits
    current, _ = personalized(v1, train)
    kept, old = adopted(v2, current, train, rule=DecisionRule())
    assert not old.accepted, old.reason  # the reproduced defect
    key, model = generate_release_key(), spec_bytes(v2)

    def release(**claim):
        document = sign_release(model, key, version=2, schema_id="digits", **claim)
        return verify_release(document, model, [key.verify_key()], installed_version=1)

    # the server showed v2 better than v1 on 30 devices
    shown = release(held_out_devices=30, held_out_baseline=1)
    held, result = adopted(v2, current, train, previous=v1, release=shown)
    assert result.accepted, result.reason
    assert _log_loss(held, test) < 0.5 * _log_loss(kept, test)
    # A claim against another version than the one this device personalized (v1, as its
    # models' version numbers say) earns nothing, whatever verify_release was told.
    def numbered(spec, number):
        copy = type(spec)()
        copy.CopyFrom(spec)
        copy.description.metadata.versionString = str(number)
        return copy

    document = sign_release(model, key, version=3, schema_id="digits", held_out_devices=30,
                            held_out_baseline=2)
    other = verify_release(document, model, [key.verify_key()], installed_version=2)
    _, asked = adopted(v2, numbered(current, 1), train, previous=numbered(v1, 1),
                       release=other)
    assert not asked.accepted and "not significant" in asked.reason, asked.reason
    _, trusted = adopted(v2, numbered(current, 2), train, previous=numbered(v1, 2),
                         release=other)
    assert trusted.accepted, trusted.reason
    with pytest.raises(ValidationError, match="come from versions"):  # one rule per batch
        adopted_many(v2, [numbered(current, 1), numbered(current, 2)], [train, train],
                     release=other)
    # Without that claim (or any release) the device asks v2 to prove itself: the safe
    # default where nobody has checked how a version serves devices once personalized.
    for unchecked in (None, release()):
        _, asked = adopted(v2, current, train, previous=v1, release=unchecked)
        assert not asked.accepted and "not significant" in asked.reason, asked.reason


def test_a_device_holding_the_version_as_shipped_declines_a_version_shown_better_only_if_sure(
        digits):
    """Found by helper-146 replaying ``fl_protocol``'s digits (DMT raw, seeds 0 and 2): the
    10 % of devices that declined v2 made the whole gap between users' test log loss (0.567)
    and v2 as released (0.387). They held v1 as shipped (personalize kept no update), their
    3-7 records all of digits the proxy covers, on which v1 is surer than v2, so v1 won out of
    fold by a hair under ADOPTION_RULE; then a test record of 7, 8 or 9, which v1 gives under
    a millionth on any of their records, cost them 5-16. Here
    12 such devices: nearly all declined v2 (test log loss 4.0 against 0.09). A device that
    holds the version as shipped now declines a version shown better only where its records
    show the version held better at 99 % (``ADOPTION_RULE.as_shipped``); a version sure of
    the wrong digit is still declined, but by the smallest devices."""
    from dataclasses import replace

    from dmt_model.coreml.weights import get_weights, set_weights
    from dmt_model.personalize import personalized_many

    v1, v2, _, test = digits
    seen, later = test[~test["digit"].isin(UNSEEN)].iloc[:60], test.iloc[150:]
    devices = [seen.iloc[5 * i:5 * i + 3 + i % 5] for i in range(12)]
    held = [model for model, result in personalized_many(v1, devices)
            if not result.accepted]
    assert len(held) == len(devices)  # the premise: each holds v1 as shipped

    def users(rule, new=v2):
        outcomes = adopted_many(new, held, devices, previous=v1, rule=rule)
        return ([result.accepted for _, result in outcomes],
                np.mean([_log_loss(model, later) for model, _ in outcomes]))

    before, before_loss = users(replace(ADOPTION_RULE, as_shipped=None))
    assert sum(before) <= 3, before  # the reproduced defect
    now, now_loss = users(ADOPTION_RULE)
    assert all(now) and now_loss < 0.1 * before_loss, (now_loss, before_loss)
    wrong = v2.__class__()
    wrong.CopyFrom(v2)
    weight, bias, _ = get_weights(wrong, "dense_2")
    set_weights(wrong, "dense_2", -weight, -bias)  # sure of the wrong digit
    taken, _ = users(ADOPTION_RULE, wrong)
    # (one device of 3 records takes it: 99 % asks a paired t of 6.96 on 2 degrees of freedom)
    assert sum(taken) <= 1, taken
    # the release's rule: v2 shown better than v1 on 30 held-out devices, on files
    from dmt_model.coreml._spec import spec_bytes
    from dmt_privacy.release import generate_release_key, sign_release, verify_release

    key, model = generate_release_key(), spec_bytes(v2)
    document = sign_release(model, key, version=2, schema_id="digits", held_out_devices=30,
                            held_out_baseline=1)
    shown = verify_release(document, model, [key.verify_key()], installed_version=1)
    k = before.index(False)  # a device the rule before kept on v1
    _, result = adopted(v2, held[k], devices[k], previous=v1, release=shown)
    assert result.accepted and ("as shipped, trained on no record of 7, 8 and 9 (the new "
                                "version may cover them), so it declines only at 99%"
                                ) in result.reason, result.reason
    assert ADOPTION_RULE.for_device(as_shipped=False) is ADOPTION_RULE
    assert ADOPTION_RULE.for_device(as_shipped=True).confidence == 0.99
    with pytest.raises(ValidationError, match="as_shipped"):
        DecisionRule(as_shipped=1.0)
    with pytest.raises(ValidationError, match="prefer='update'"):
        DecisionRule(as_shipped=0.99)  # asks an update to prove itself: declines nothing


@pytest.fixture(scope="module")
def label_mix():
    """Adult's case in small (closing note 60, top item): two classes with 10 % label noise,
    both versions trained on both; v1 on a 20 % positive mix, v2 on an even one, which
    is worse for 30 devices of 40 records drawn like v1's (test log loss 0.37 against 0.28)."""
    from sklearn.datasets import make_classification

    from dmt_privacy.schema import Field, Schema

    x, y = make_classification(n_samples=24000, n_features=8, n_informative=5, flip_y=0.1,
                               random_state=3)
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(8)]).assign(
        y=np.where(y == 1, "pos", "neg"))
    schema = Schema(name="label_mix", fields=(
        *(Field(f"x{i}", "numeric", bounds=(-10.0, 10.0)) for i in range(8)),
        Field("y", "categorical", "target", categories=("neg", "pos"))))
    negative, positive = frame[frame["y"] == "neg"], frame[frame["y"] == "pos"]

    def mix(n, share, start):  # n records, a share of them positive
        k = round(n * share)
        return pd.concat([positive.iloc[start:start + k], negative.iloc[start:start + n - k]]
                         ).sample(frac=1, random_state=start)

    config = TrainingConfig(seed=3, early_stopping=0.1)
    v1, v2 = (build_spec(train_foundation(mix(1500, share, start), schema, config),
                         updatable=UpdateSettings()) for share, start in ((0.2, 0), (0.5, 1500)))
    devices = [mix(40, 0.2, 3000 + 60 * i) for i in range(30)]
    tests = [mix(200, 0.2, 4800 + 200 * i) for i in range(30)]
    return v1, v2, devices, tests


def test_a_device_holding_a_version_trained_on_every_class_declines_at_the_rule_s_own(
        label_mix):
    """Found by ``adoption.py`` (closing note 60): with 99 % asked of every device holding
    the version as shipped, Adult's users moved to a version worse for them in expectation
    doubled (8 → 18 %), its users' mean expected error no lower. Digits' devices needed 99 %
    because the version they held was trained on no 7, 8 or 9, a loss no record of theirs
    can show; Adult's versions were both trained on both classes. Here too: under the 99 %
    nearly every device took v2, worse for them; the 99 % is now asked only where the version
    held was trained on no record of a class the new one may cover, and these devices decide
    at ADOPTION_RULE's own 50 %."""
    from dataclasses import replace

    from dmt_model.personalize import adopted_many, personalized_many

    v1, v2, devices, tests = label_mix
    held = [model for model, result in personalized_many(v1, devices) if not result.accepted]
    assert len(held) == len(devices)  # the premise: each holds v1 as shipped

    def log_loss(model, frame):
        p = predict_frame(model, frame)[np.arange(len(frame)), (frame["y"] == "pos").to_numpy(int)]
        return float(-np.log(np.clip(p, 1e-7, 1)).mean())

    def users(rule):
        outcomes = adopted_many(v2, held, devices, previous=v1, rule=rule)
        return ([result.accepted for _, result in outcomes],
                np.mean([log_loss(model, test)
                         for (model, _), test in zip(outcomes, tests, strict=True)]))

    assert np.mean([log_loss(v2, t) for t in tests]) > 1.2 * np.mean([log_loss(v1, t)
                                                                      for t in tests])
    every, every_loss = users(replace(ADOPTION_RULE, confidence=0.99, as_shipped=None))
    assert sum(every) >= 27  # the reproduced defect: 99 % for every device as shipped
    now, now_loss = users(ADOPTION_RULE)
    plain, _ = users(replace(ADOPTION_RULE, as_shipped=None))
    assert now == plain and sum(now) <= 15, (now, plain)
    assert now_loss < every_loss, (now_loss, every_loss)
    _, result = adopted(v2, held[now.index(False)], devices[now.index(False)], previous=v1,
                        rule=ADOPTION_RULE)
    assert not result.accepted and "as shipped" not in result.reason, result.reason


def test_out_of_fold_scores_do_not_depend_on_the_model_that_saw_the_records(digits):
    """With previous=, the personal model's held-out errors are those of previous
    personalized on the training folds, whatever the personal model has become since:
    a model that has seen the records is no longer scored on them."""
    v1, v2, train, _ = digits
    current, _ = personalized(v1, train)
    other = build_spec(train_foundation(train, DIGITS_SCHEMA, QUICK),
                       updatable=UpdateSettings())  # trained on exactly these records
    with_previous = {adopted(v2, model, train, previous=v1)[1].holdout_loss_before
                     for model in (current, other)}
    assert len(with_previous) == 1
    without = adopted(v2, other, train)[1].holdout_loss_before  # the records it trained on
    assert without == pytest.approx(_log_loss(other, train))
    assert without != with_previous.pop()


def test_a_previous_version_of_other_records_is_refused_and_nothing_changes(
        digits, foundation, tmp_path):
    v1, v2, train, _ = digits
    from dmt_model.coreml._spec import save_spec

    new, personal = tmp_path / "v2.mlmodel", tmp_path / "personal.mlmodel"
    save_spec(v2, new)
    save_spec(personalized(v1, train)[0], personal)
    before = personal.read_bytes()
    boston = export_coreml(foundation, tmp_path / "boston.mlmodel", updatable=UpdateSettings())
    with pytest.raises(ModelFileError, match="previous="):
        adopt_new_version(new, personal, train, previous=boston)
    assert personal.read_bytes() == before


def test_the_server_compares_versions_as_devices_personalize_them(digits):
    """compare_on_devices: held-out devices that write 7, 8 and 9 find v2 (which knows them)
    better than v1 once each personalizes it; the other way round it is not better."""
    from dmt_model.personalize import compare_on_devices

    v1, v2, _, test = digits
    devices = [test.iloc[i:i + 8] for i in range(0, 96, 8)]
    better = compare_on_devices(v1, v2, devices)
    assert better.better and better.devices == 12, better.reason
    assert better.error_after < better.error_before
    worse = compare_on_devices(v2, v1, devices)
    assert not worse.better and "not better on devices" in worse.reason
    with pytest.raises(ValidationError, match="at least 2 such devices"):
        compare_on_devices(v1, v2, [test.iloc[:5], test.iloc[5:6]])
    with pytest.raises(ValidationError, match="confidence"):
        compare_on_devices(v1, v2, devices, confidence=1.0)


def _compare_device_by_device(previous, candidate, devices, grid, *, confidence=0.9, folds=5,
                              seed=0):
    """The reference compare_on_devices: each device's folds × priors personalized in a pass
    of their own, device after device (what compare_on_devices did before it trained every
    device's updates together)."""
    from dmt_model.personalize import (
        DeviceComparison,
        _check_records,
        _folds,
        _held_out_errors,
        _paired_t,
    )

    before, after = [], []
    for i, records in enumerate(devices):
        if len(records) < 2:
            continue
        target = _check_records(candidate, records, what=f"device {i}'s records")
        checks = _folds(records, target, folds, seed)
        before.append(float(np.mean(_held_out_errors(previous, checks, grid, {}))))
        after.append(float(np.mean(_held_out_errors(candidate, checks, grid, {}))))
    mean, t, needed = _paired_t(np.subtract(before, after), confidence)
    better = bool(np.isfinite(after).all() and mean > 0 and t >= needed)
    figures = (f"devices' held-out error personalized {np.mean(before):.4g} → "
               f"{np.mean(after):.4g} on {len(before)} devices, paired t = {t:.2f} "
               f"(needs {needed:.2f})")
    return DeviceComparison(len(before), float(np.mean(before)), float(np.mean(after)), t,
                            needed, better,
                            figures if better else f"not better on devices: {figures}",
                            tuple(float(d) for d in np.subtract(before, after)))


def test_comparing_every_device_in_one_pass_changes_no_number(digits, monkeypatch):
    """compare_on_devices trains every device's folds × priors of a version together (in
    passes of bounded size); each update is the one its device's own pass trained, so the
    comparison is the same to the last bit: devices of 1 to 14 records (one too small,
    skipped), in one pass or in several."""
    from dmt_model import personalize

    v1, v2, _, test = digits
    sizes, grid = [2, 14, 5, 1, 9, 3, 6], (1, 10)
    devices = [test.iloc[a:b] for a, b in itertools.pairwise(np.cumsum([0, *sizes]))]
    reference = _compare_device_by_device(v1, v2, devices, grid)
    assert personalize.compare_on_devices(v1, v2, devices, prior_records=grid) == reference
    passes = []
    train = personalize._personal_updates
    monkeypatch.setattr(personalize, "_personal_updates",
                        lambda *args: passes.append(len(args[1])) or train(*args))
    monkeypatch.setattr(personalize, "_PASS_LANE_STEPS", 40_000)  # about 2 devices a pass
    assert personalize.compare_on_devices(v1, v2, devices, prior_records=grid) == reference
    folds = sum(min(5, n) for n in sizes if n >= 2)
    assert len(passes) >= 4 and sum(passes) == 2 * folds * 2  # versions × folds × priors


def test_records_the_device_shared_are_trained_on_but_never_scored(digits):
    """The new version may have trained on what the device shared, so it would look better
    on those records than it is: with shared_records=, only the other records are held out."""
    v1, v2, train, test = digits
    current, _ = personalized(v1, train)
    unshared, shared = test.iloc[:4], train
    _, result = adopted(v2, current, unshared, shared_records=shared, previous=v1)
    assert f"on {len(unshared)} records" in result.reason, result.reason
    _, everything = adopted(v2, current, pd.concat([unshared, shared]), previous=v1)
    assert f"on {len(unshared) + len(shared)} records" in everything.reason
    with pytest.raises(ValidationError, match="cannot be cross-validated"):
        adopted(v2, current, unshared.iloc[:1], shared_records=shared, previous=v1)
    with pytest.raises(ValidationError, match=r"2 record\(s\) \(1 distinct: the others copy"):
        adopted(v2, current, pd.concat([unshared.iloc[:1]] * 2), shared_records=shared,
                previous=v1)


def test_shared_records_passed_among_all_the_records_are_still_never_scored(digits):
    """The defect (privacy_utility.py's new adoption rows, 6 December): the docstring asks
    for all the device's records in ``records=``, and shared_records= for those it shared;
    a device that passed both held its shared records out too, the new version was scored
    on records it had trained on, and one Boston user of 20 moved to a version that left
    them 0.83 RMSE worse ("on 13 records": 6 of them shared). A record of ``records`` that
    is a shared one is now trained on like the others shared, never scored: the decision is
    the one the unshared records alone give."""
    v1, v2, train, test = digits
    current, _ = personalized(v1, train)
    unshared, shared = test.iloc[:4], train
    _, alone = adopted(v2, current, unshared, shared_records=shared, previous=v1)
    _, among = adopted(v2, current, pd.concat([unshared, shared]), shared_records=shared,
                       previous=v1)
    assert f"on {len(unshared)} records" in among.reason, among.reason
    assert (among.accepted, among.reason, among.holdout_loss_after) == (
        alone.accepted, alone.reason, alone.holdout_loss_after)
    [(_, many)] = adopted_many(v2, [current], [pd.concat([shared.iloc[:3], unshared])],
                               previous=v1, shared_records=[shared])
    assert (many.reason, many.holdout_loss_after) == (alone.reason, alone.holdout_loss_after)
    # every record shared, or one left: nothing to judge on, said so (helper-80: the message
    # read "0 record(s) cannot be cross-validated" for a device that passed 6)
    with pytest.raises(TooFewRecords, match=rf"{len(shared)} given, {len(shared)} of them the "
                                            "same as records in shared_records"):
        adopted(v2, current, shared, shared_records=shared, previous=v1)
    with pytest.raises(TooFewRecords, match="leaves 1 distinct record"):
        adopted(v2, current, pd.concat([unshared.iloc[:1], shared]), shared_records=shared,
                previous=v1)
    with pytest.raises(TooFewRecords, match="^device 0: records: "):
        adopted_many(v2, [current], [shared], shared_records=[shared], previous=v1)
    # with a holdout nothing of records= is scored: all of them shared is fine (helper-81)
    _, held = adopted(v2, current, shared, shared_records=shared, holdout=unshared,
                      previous=v1)
    assert "on the holdout" in held.reason or f"on {len(unshared)} records" in held.reason


def test_a_version_no_devices_vouched_for_leaves_users_no_worse_off():
    """The defect (benchmarks/fl_protocol.py, Adult under local DP; adoption.py --unclaimed):
    a version released without a device claim, as under local DP where the server holds out
    no devices, was adopted by each device that found it better on its own few unshared
    records at the task's confidence (90 % for a classifier). Of 20 Adult users 15 % moved
    and users' mean test log loss rose by 0.03. UNCHECKED_RULE, which adoption_rule_for gives
    such a version, asks 99 %."""
    import sys
    from pathlib import Path

    from dmt_model.datasets.adult import adult_available
    from dmt_model.personalize import (
        UNCHECKED_RULE,
        adoption_rule_for,
        featurizer_of,
        personalized_many,
    )

    if not adult_available():
        pytest.skip("the Adult data is not installed")
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import fl_protocol

    task = fl_protocol.TASKS["adult"]
    sim = task.simulate(0, 20)
    foundation = fl_protocol.foundation_for(sim, task, 0)
    rate = fl_protocol.settings_from(fl_protocol.RESULTS, task)["dmt_learning_rate"]
    retrained, *_ = fl_protocol.dmt_model_for(sim, task, foundation, {"epsilon": 4.0}, 0, rate)
    v1, v2 = (build_spec(m, updatable=UpdateSettings()) for m in (foundation, retrained))
    users = [u for u in sim.users if len(u.private) >= 2]  # fewer: nothing to score, kept
    currents = [spec for spec, _ in personalized_many(v1, [u.train for u in users])]
    actual = [featurizer_of(v1).target_values(u.test, dtype=float) for u in users]

    def mean_error(models):  # users' mean test log loss, as the benchmarks score it
        return float(np.mean([
            fl_protocol.user_scores(task.task, predict_frame(model, u.test), y)["error"]
            for model, u, y in zip(models, users, actual, strict=True)]))

    def held(rule):
        return [model for model, _ in adopted_many(
            v2, currents, [u.private for u in users], previous=v1,
            shared_records=[u.shareable for u in users], rule=rule)]

    assert adoption_rule_for(None) == UNCHECKED_RULE
    kept = mean_error(currents)
    # the reproduced defect (+0.011 until records all of one class took the strongest
    # prior, which spares part of it even under the old rule: +0.008)
    assert mean_error(held(DecisionRule())) > kept + 0.005
    assert mean_error(held(None)) <= kept
