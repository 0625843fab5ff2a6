"""A classifier's personal update is kept only on a label shift its records show.

Found in review (5 December, helper-69): on class-imbalanced data (85/15 labels, 10 % label
noise), users drawn like the proxy kept updates that raised their unseen log loss by 5.6 %
on average at 5 records (101 of 240 kept, 89 of them worse). A user with no minority-class
record among a few held out only majority-class records in every fold, so every paired
difference favoured an update shifted to the majority and the paired t-test passed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dmt_model.coreml import UpdateSettings, build_spec
from dmt_model.coreml.evaluate import predict_frame
from dmt_model.foundation import TrainingConfig, train_foundation
from dmt_model.personalize import DecisionRule, personalized_many
from dmt_model.tasks import CLASSIFICATION, REGRESSION
from dmt_privacy.errors import ValidationError
from dmt_privacy.schema import Field, Schema

N_USERS, PER_USER = 60, 250


@pytest.fixture(scope="module")
def imbalanced():
    """A foundation trained on 2,000 records of 85/15 labels with 10 % label noise, and the
    records of 60 users drawn from the same distribution (250 each)."""
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=2000 + N_USERS * PER_USER, n_features=8,
                               n_informative=5, weights=[0.85, 0.15], flip_y=0.1,
                               random_state=12)
    frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(8)]).assign(
        y=np.where(y == 1, "pos", "neg"))
    schema = Schema(name="imbalanced", fields=(
        *(Field(f"x{i}", "numeric", bounds=(-10.0, 10.0)) for i in range(8)),
        Field("y", "categorical", "target", categories=("neg", "pos"))))
    spec = build_spec(train_foundation(frame.iloc[:2000], schema,
                                       TrainingConfig(seed=12, early_stopping=0.1)),
                      updatable=UpdateSettings())
    rest = frame.iloc[2000:].reset_index(drop=True)
    return spec, [rest.iloc[u * PER_USER:(u + 1) * PER_USER] for u in range(N_USERS)]


def _log_loss(model, records: pd.DataFrame) -> float:
    p = predict_frame(model, records)
    return float(-np.log(np.clip(p[np.arange(len(records)),
                                   (records["y"] == "pos").to_numpy(int)], 1e-7, 1)).mean())


def _mean_unseen_log_loss(spec, users: list[pd.DataFrame], n_records: int):
    """Users' mean log loss on their records after the first 50 (never trained on), under
    the foundation and under what personalizing on their first ``n_records`` left them."""
    personal = personalized_many(spec, [user.iloc[:n_records] for user in users], seed=12)
    before = np.mean([_log_loss(spec, user.iloc[50:]) for user in users])
    after = np.mean([_log_loss(model, user.iloc[50:])
                     for (model, _), user in zip(personal, users, strict=True)])
    return float(before), float(after), [result for _, result in personal]


@pytest.mark.parametrize(("n_records", "level"), [(5, "90%"), (20, "95%")])
def test_users_drawn_like_the_proxy_are_not_made_worse_by_an_imbalanced_label(
        imbalanced, n_records, level):
    """Before the label-shift test: +6.8 % at 5 records (29 of 60 updates kept), +5.0 % at
    20 (9 kept); asked at 90 % from 15 records too, still +2.7 % at 20 (now +0.3 %)."""
    spec, users = imbalanced
    before, after, results = _mean_unseen_log_loss(spec, users, n_records)
    assert after <= before * 1.005, (before, after)
    refused = [r for r in results if not r.accepted]
    assert len(refused) >= 55 and any(f"no label shift at {level}" in r.reason
                                      for r in refused)


def _balanced(users: list[pd.DataFrame]) -> list[pd.DataFrame]:
    """Each user's positives and as many of their negatives, shuffled."""
    balanced = []
    for u, user in enumerate(users):
        pos, neg = user[user["y"] == "pos"], user[user["y"] == "neg"]
        m = min(len(pos), len(neg))
        balanced.append(pd.concat([pos.iloc[:m], neg.iloc[:m]]).sample(frac=1, random_state=u))
    return balanced


def test_the_update_kept_on_a_shift_is_moved_the_share_likeliest_not_chance(imbalanced,
                                                                             monkeypatch):
    """What is written is the model plus the share (``_label_shift``'s, on the device's
    records) of the change of the update the same prior trained: each weight of the head."""
    import dmt_model.personalize as personalize_module
    from dmt_model.coreml.weights import get_weights, updatable_layers
    from dmt_model.personalize import featurizer_of

    spec, users = imbalanced
    records = [user.iloc[:20] for user in _balanced(users)[:30]]
    moved = personalized_many(spec, records, seed=12)
    monkeypatch.setattr(personalize_module, "_shift_share", lambda statistic, df, needed: 1.0)
    whole = personalized_many(spec, records, seed=12)
    monkeypatch.undo()
    head = updatable_layers(spec)
    checked = 0
    for (model, result), (whole_model, whole_result), own in zip(moved, whole, records,
                                                                 strict=True):
        if not (result.accepted and whole_result.accepted):
            continue
        assert result.prior_records == whole_result.prior_records, (result, whole_result)
        target = featurizer_of(spec).target_values(own)
        shown, _, share = personalize_module._label_shift(spec, [(own, own, target)], 0.95)
        assert shown and 0.0 < share < 1.0 and "of its change" in result.reason, result.reason
        for name in head:
            for start, kept, trained in zip(get_weights(spec, name)[:2],
                                            get_weights(model, name)[:2],
                                            get_weights(whole_model, name)[:2], strict=True):
                np.testing.assert_allclose(kept, start + share * (trained - start), atol=1e-5)
        checked += 1
    assert checked >= 5, checked


def test_users_whose_labels_differ_still_gain(imbalanced):
    """Users holding as many positives as negatives: their update is kept on the shift."""
    spec, users = imbalanced
    before, after, results = _mean_unseen_log_loss(spec, _balanced(users), 20)
    # −4.0 %, 16 of 60 kept, since an update learns only the share of a shift likeliest not
    # chance (7 December, label noise: ``_shift_share``); −7.5 % and 22 kept learning it
    # whole at 95 % (the mean prediction's spread; at 99 %, −3.3 % and 10); −7.4 % with each
    # record's own spread at 99 %, which showed a shift for 49 % of wine users drawn like
    # the proxy (helper-112); −6.8 % before the label-shift test
    assert after <= before * 0.97, (before, after)
    assert sum(r.accepted for r in results) >= 14
    assert all("a label shift: class counts" in r.reason for r in results if r.accepted)


def _shown(probabilities, labels, confidence=0.95):
    """(shown, words) of :func:`_tested`."""
    return _tested(probabilities, labels, confidence)[:2]


def _tested(probabilities, labels, confidence=0.95):
    """_label_shift on a model that predicts ``probabilities`` for the records."""
    import dmt_model.personalize as personalize_module

    class Model:
        p = np.asarray(probabilities, dtype=np.float32)  # as Core ML gives

    frame = pd.DataFrame({"i": range(len(labels))})
    original = personalize_module._predict
    personalize_module._predict = lambda m, f: m.p[f["i"].to_numpy()]
    try:
        return personalize_module._label_shift(Model(), [(frame, frame, np.asarray(labels))],
                                               confidence)
    finally:
        personalize_module._predict = original


def test_the_share_learned_grows_with_the_evidence_of_a_shift():
    """None of a shift the test barely shows (chance is the likeliest cause of a statistic
    just past the threshold, among those that pass it), most of a plain one
    (``test_personalize_label_noise.py``: why)."""
    # 40 records the model calls 50/50: z = (o - 20) / sqrt(10), needs z² > 3.84
    barely, some, plain, none = (_tested([[0.5, 0.5]] * 40, [0] * n + [1] * (40 - n))
                                 for n in (27, 28, 36, 22))
    assert not barely[0] and barely[2] == 0.0, barely  # z² = 4.9: as likely chance
    assert "only narrowly" in barely[1], barely
    assert some[0] and 0.3 < some[2] < 0.7, some  # z² = 6.4
    assert plain[0] and plain[2] > 0.9, plain  # z² = 25.6
    assert not none[0] and none[2] == 0.0, none  # z² = 0.4


def test_a_confident_model_s_one_miss_is_no_label_shift():
    """helper-112: the counts' covariance trusted every record's probability, so one record
    of a class a confident model gave 0.0001 made 'counts 15 (16.00), 16 (15.00), 9 (9.00)'
    a chi-square of 231, a label shift at 99 % (helper-112's wine users: up to 9,162):
    49 % of wine users drawn like the proxy (19 % iris, 25 % breast cancer) 'showed' one,
    and updates that made them worse were kept. The test trusts only the model's mean
    prediction now."""
    rows, labels = [], []
    for c, n in ((0, 15), (1, 15), (2, 9)):
        row = np.full(3, 0.0001)
        row[c] = 0.9998
        rows += [row] * n
        labels += [c] * n
    rows.append(np.array([0.9998, 0.0001, 0.0001]))  # a confident miss: its class is 1
    labels.append(1)
    shown, words = _shown(rows, labels)
    assert not shown, words
    shifted = [r for r in rows[:15]] * 2 + rows[15:25]  # 30 of class 0, 10 of class 1
    assert _shown(shifted, [0] * 30 + [1] * 5 + [2] * 5)[0]  # the model expects 30 / 10 / 0


def test_records_of_a_class_the_model_rules_out_show_a_label_shift():
    """A classifier far past its proxy gives a class probability 0 in float32 on every
    record (its logits 60 and more apart), and 10 of the user's 20 records are of that
    class: the model's counts (0, 20) have no spread, and the chi-square read the counts
    as no shift (statistic 0 on 0 degrees of freedom), so the user kept nothing
    (``benchmarks/far_from_proxy.py``'s classifier, d = 90). Counts the model rules out are the
    plainest shift there is."""
    ruled_out = [[0.0, 1.0]] * 20
    shown, words = _shown(ruled_out, [0] * 10 + [1] * 10)
    assert shown, words
    assert "10 (0.00), 10 (20.00)" in words and "the model rules out" in words, words
    assert not _shown(ruled_out, [1] * 20)[0]  # counts it predicts are no shift
    three = [[0.0, 0.5, 0.5]] * 20  # one class ruled out, the others spread
    assert _shown(three, [0] + [1] * 10 + [2] * 9)[0]
    assert not _shown(three, [1] * 10 + [2] * 10)[0]


def test_two_classes_have_one_degree_of_freedom_however_confident_the_model():
    """helper-132: a model that gives one class 1e-13 to 5e-9 (far_from_proxy's classifier,
    d = 20) left the counts' covariance a rounding error of 1e-15 in the direction every
    count shares, above a cut-off of 1e-9 × its largest value (2.6e-8): "chi-square
    14577997925.42 on 2 degrees of freedom (needs 5.99)" for two classes."""
    for seed in range(5):
        p = 10 ** np.random.default_rng(seed).uniform(-13.5, -8.3, 20)
        shown, words = _shown(np.column_stack([p, 1 - p]), [0] * 10 + [1] * 10)
        assert shown and "on 1 degree of freedom (needs 3.84)" in words, words


def test_the_label_shift_statistic_is_the_binomial_z_squared_for_two_classes():
    """The slow, obvious reference: (count − Σp)² / n p̄(1 − p̄), p̄ the mean prediction."""
    import dmt_model.personalize as personalize_module

    class Model:  # what _label_shift reads of a model: its predicted probabilities
        def __init__(self, p):
            self.p = p

    rng = np.random.default_rng(0)
    for n in (3, 10, 40):
        p1 = rng.uniform(0.02, 0.6, n)
        labels = (rng.uniform(size=n) < np.clip(p1 * 1.8, 0, 1)).astype(int)
        frame = pd.DataFrame({"i": range(n)})
        checks = [(frame, frame, labels)]
        model = Model(np.column_stack([1 - p1, p1]).astype(np.float32))  # as Core ML gives
        p1 = model.p[:, 1].astype(np.float64) / model.p.astype(np.float64).sum(axis=1)
        original = personalize_module._predict
        personalize_module._predict = lambda m, f: m.p[f["i"].to_numpy()]
        try:
            shown, words, _ = personalize_module._label_shift(model, checks, 0.99)
        finally:
            personalize_module._predict = original
        z2 = (labels.sum() - p1.sum()) ** 2 / (n * p1.mean() * (1 - p1.mean()))
        assert f"chi-square {z2:.2f} on 1 degree of freedom" in words, (words, z2)
        assert shown == (np.sqrt(z2) > 2.5758), (words, z2)


def test_the_rule_says_how_sure_a_label_shift_must_be():
    assert CLASSIFICATION.label_shift_confidence == ((0, 0.9), (15, 0.95))
    assert REGRESSION.label_shift_confidence == ()
    assert [DecisionRule().label_shift_for(CLASSIFICATION, n) for n in (3, 14, 15, 500)] == [
        0.9, 0.9, 0.95, 0.95]
    assert DecisionRule(label_shift=0).label_shift_for(CLASSIFICATION, 5) == 0
    assert DecisionRule(label_shift=0.95).label_shift_for(CLASSIFICATION, 50) == 0.95
    assert DecisionRule(label_shift=0.9).label_shift_for(REGRESSION, 5) == 0  # no label
    for bad in (0.3, 1.0, True, "0.9", float("nan")):
        with pytest.raises(ValidationError, match="label_shift"):
            DecisionRule(label_shift=bad)


def test_an_adoption_is_not_asked_for_a_label_shift(imbalanced):
    """A new version can serve a device better with no label shift from it: only a personal
    update of the model itself must show one."""
    from dmt_model.personalize import ADOPTION_RULE, adopted

    spec, users = imbalanced
    _, result = adopted(spec, spec, users[0].iloc[:20], rule=ADOPTION_RULE)
    assert result.accepted and "label shift" not in result.reason, result.reason


def test_records_of_one_class_cannot_choose_a_weak_prior(imbalanced):
    """helper-105: a user drawn like the proxy whose few records are all of one class
    holds out that class only in every fold, so the weaker the prior the lower the
    held-out loss, whatever the update costs on the other class: with 10 records all
    positive (15 % of the proxy's) every update kept took 1 anchor record, and unseen log
    loss rose 4.4 times over. Such a device takes the grid's strongest prior."""
    spec, users = imbalanced
    pool = pd.concat(users)
    positives = pool[pool["y"] == "pos"]
    trains = [positives.iloc[u * 10:(u + 1) * 10] for u in range(20)]
    unseen = pool[~pool.index.isin(positives.index[:200])].iloc[:2000]
    held = personalized_many(spec, trains, seed=12)
    kept = [result for _, result in held if result.accepted]
    assert kept and all(result.prior_records == 30 for result in kept)
    before = _log_loss(spec, unseen)
    after = np.mean([_log_loss(model, unseen) for model, _ in held])
    # 0.226 → 0.986 with the weak priors; 0.311 with the strongest. Ten positives of ten
    # are next to impossible for a user drawn like the proxy (0.15¹⁰), so a device that
    # holds them has most likely shifted, and the strongest prior's update is kept for it.
    assert after < before * 1.5, (before, after)


def test_records_of_one_class_score_both_versions_of_an_adoption_alike(imbalanced):
    """helper-108: with the strongest prior forced on the new version only, the version
    a device holds was re-personalized at the weakest (0.141 against 0.530 held-out log
    loss for the same model on both sides, these 4 devices), and such a device would never
    adopt."""
    from dmt_model.personalize import adopted_many

    spec, users = imbalanced
    positives = pd.concat(users).query("y == 'pos'")
    trains = [positives.iloc[u * 10:(u + 1) * 10] for u in range(4)]
    for _, result in adopted_many(spec, [spec] * len(trains), trains, previous=spec):
        assert result.holdout_loss_before == pytest.approx(result.holdout_loss_after)
        assert not result.accepted


# Found on 7 December (helper-141, fl_protocol's Synthetic(1, 1), seed 0): since ac27e4c a
# user whose records are all of one class takes the strongest prior, and about half of
# Synthetic's users hold 4-10 records of one class the model all but rules out (a mean
# probability of 0.00). Against 30 anchor records the head's biases moved part of the way:
# the class gained probability, so the held-out log loss fell and the update was kept, but
# the argmax stayed elsewhere. Users 33 and 78 went from accuracy 1 to 0 (log loss
# 0.65 -> 2.52, 0.18 -> 1.83); one-class users' mean accuracy 0.415 -> 0.188. (User 111,
# 8 records of a class the model gives 0.23, is still held to the strongest prior.)
@pytest.fixture(scope="module")
def synthetic():
    """Synthetic(1, 1)'s foundation (seed 0) and its 120 users."""
    from dataclasses import replace

    from dmt_model.datasets.synthetic import SYNTHETIC_SCHEMA, simulate_synthetic
    from dmt_model.foundation import CLASSIFIER_TRAINING

    simulation = simulate_synthetic(1.0, 1.0, n_users=120, seed=0)
    spec = build_spec(train_foundation(simulation.proxy, SYNTHETIC_SCHEMA,
                                       replace(CLASSIFIER_TRAINING, seed=0)),
                      updatable=UpdateSettings())
    return spec, simulation.users


@pytest.fixture(scope="module")
def ruled_out(synthetic):
    """The foundation and its users 33 and 78, whose records are all of a class it all but
    rules out."""
    spec, every = synthetic
    users = [user for user in every if user.user_id in (33, 78)]
    assert len(users) == 2
    return spec, users


def test_records_of_one_class_the_model_rules_out_may_choose_a_weak_prior(ruled_out):
    from dmt_model.personalize import ONE_CLASS_PLAUSIBLE, featurizer_of

    spec, users = ruled_out
    featurizer = featurizer_of(spec)
    for user in users:  # the premise: one class, all but ruled out
        labels = featurizer.target_values(user.train)
        assert len(set(labels)) == 1
        predicted = predict_frame(spec, user.train)[:, labels[0]].mean()
        assert predicted < ONE_CLASS_PLAUSIBLE, predicted
    held = personalized_many(spec, [user.train for user in users])
    for user, (model, result) in zip(users, held, strict=True):
        truth = featurizer.target_values(user.test)
        assert result.accepted and result.prior_records < 30, result.reason
        assert (predict_frame(model, user.test).argmax(axis=1) == truth).all(), result.reason


def test_each_version_compared_chooses_its_priors_as_its_own_personalization_would(ruled_out):
    """A device comparing two versions scores each as its own personalization would run:
    records all of one class that one version all but rules out may choose a weak prior
    on its side, while the other version, which does not rule the class out, is held to
    the strongest (:func:`_strongest_only`), in an adoption and in the server's comparison
    on devices alike. User 33's records, 6 of a class the foundation gives 0.0003 and the
    user's personal model 0.86: the foundation re-personalized scores 1.184 held-out log
    loss on 1 anchor record, 2.570 at the strongest prior.

    Holding both sides to the strongest prior where either version does not rule the class
    out (helper-142's proposal, tried on 7 December) scored the version held worse than the
    personal model the device holds, and more devices adopted: ``fl_protocol``'s
    Synthetic users of the DMT rows (seeded) ended worse in 9 of 16 seed x rows and better
    in none (DMT raw seed 3: 0.814 -> 0.844 log loss; local DP eps=8 seed 3: 1.905 ->
    1.956). Freeing both where either rules it out helped DMT raw (seeds 0 and 2: 0.759 ->
    0.698, 1.003 -> 0.905) but left the local-DP rows, which already leave users worse than
    sharing nothing, worse still in 7 of 15 seed x rows, better in 3 (seed 0 eps=4: 1.943
    -> 1.958)."""
    from dmt_model.personalize import (
        ONE_CLASS_PLAUSIBLE,
        adopted_many,
        compare_on_devices,
        featurizer_of,
    )

    foundation, users = ruled_out
    train = users[0].train
    (personal, _), = personalized_many(foundation, [train])
    label = featurizer_of(foundation).target_values(train)[0]
    # the premise: the versions disagree about the records' one class
    assert predict_frame(foundation, train)[:, label].mean() < ONE_CLASS_PLAUSIBLE
    assert predict_frame(personal, train)[:, label].mean() > ONE_CLASS_PLAUSIBLE

    def adoption(new, held, grid):
        (_, result), = adopted_many(new, [held], [train], previous=held, prior_records=grid)
        return result.holdout_loss_after, result.holdout_loss_before

    def comparison(new, held, grid):
        compared = compare_on_devices(held, new, [train] * 2, prior_records=grid)
        return compared.error_after, compared.error_before

    for scores in (adoption, comparison):
        for new, held in ((personal, foundation), (foundation, personal)):
            (new_any, held_any), (new_strongest, held_strongest) = (
                scores(new, held, grid) for grid in ((1, 3, 10, 30), 30))
            ruling_out, other = ((held_any, held_strongest), (new_any, new_strongest)) if (
                held is foundation) else ((new_any, new_strongest), (held_any, held_strongest))
            assert ruling_out[0] < 0.6 * ruling_out[1], (scores.__name__, ruling_out)
            assert other[0] == pytest.approx(other[1]), (scores.__name__, other)


def _class_log_loss(model, records: pd.DataFrame) -> float:
    from dmt_model.personalize import featurizer_of

    labels = featurizer_of(model).target_values(records).astype(int)
    p = predict_frame(model, records)[np.arange(len(records)), labels]
    return float(-np.log(np.clip(p, 1e-7, 1)).mean())


def test_an_adoption_compares_the_version_held_as_personalize_trained_it(synthetic):
    """helper-143 (``fl_protocol``'s Synthetic, seed 0): a personal update that stalls at the
    model's rate is tried again ten times faster, and 73 of 120 users held a model so
    trained; an adoption re-personalized the version they held at the model's rate only, so
    it scored far worse than the model they held, and a new version that stalled a little
    less won. 25 of the 30 devices that adopted local DP's v2 at eps = 1 were such
    devices: test log loss 0.69 -> 4.12. User 35 here: 8 records of a class the
    foundation gives 0.000, its personal model (at 0.1) 0.005 test log loss; the version
    held scored 15.93 held out, a new version a little less sure (the last layer x 0.8)
    was adopted at 99 % and left the user at 9.25. Now the version held scores as
    personalize() trained it, and the new version's update, stalled on a plain shift, is
    tried faster too."""
    import copy

    from dmt_model.coreml.weights import get_weights, set_weights
    from dmt_model.personalize import adopted_many, read_settings

    spec, users = synthetic
    (user,) = [user for user in users if user.user_id == 35]
    rate = read_settings(spec).learning_rate
    ((personal, result),) = personalized_many(spec, [user.train])
    # the premise: personalize() kept the update it tried faster
    assert result.accepted and result.learning_rate == pytest.approx(10 * rate), result.reason
    held = _class_log_loss(personal, user.test)
    assert held < 0.1, held
    new = copy.deepcopy(spec)
    weight, bias, _ = get_weights(new, "dense_2")
    set_weights(new, "dense_2", weight * 0.8, bias * 0.8)
    ((kept, adoption),) = adopted_many(new, [personal], [user.train], previous=spec)
    assert adoption.holdout_loss_before < 1.0, adoption  # 15.93 at the model's rate only
    # its own update stalled too, and was tried faster
    assert adoption.learning_rate in (pytest.approx(10 * rate), pytest.approx(100 * rate))
    assert not adoption.accepted, adoption.reason
    assert _class_log_loss(kept, user.test) == pytest.approx(held), adoption.reason
    # personalize() wrote the rate it kept into the model, and the adoption read it; a
    # personal model that does not say (made by an earlier SDK, or by Core ML on the
    # device) still has its stalled updates tried faster
    from dmt_model.personalize import _personalized_at

    assert _personalized_at(personal) == pytest.approx(10 * rate)
    unsaid = copy.deepcopy(personal)
    del unsaid.description.metadata.userDefined["dmt.personalized_at"]
    ((_, adoption),) = adopted_many(new, [unsaid], [user.train], previous=spec)
    assert adoption.holdout_loss_before < 1.0, adoption


def test_an_adoption_does_not_try_faster_the_version_held_that_personalize_did_not(synthetic):
    """Found measuring bb98399 on ``fl_protocol``'s digits (users' test log loss: DMT
    modified 0.494 -> 0.527, FedAvg 0.581 -> 0.609; fewer devices adopting better
    versions): the version held was tried faster
    wherever its folds' updates stalled on any label shift, though personalize() tries a
    personal update faster on a plain one only, under its own rule, and may not have. User
    90 here (5 records): its update kept at the model's rate (test log loss 6.10); the version
    held, tried faster, scored 2.29 held out, at the rate it trained at 4.48, so a
    new version that scored 2.43 (the last layer x 1.1) was declined, and it leaves the user
    at 0.75. Now personalize() writes into the personal model the rate it kept, and the
    adoption re-personalizes the version held at that rate."""
    import copy

    from dmt_model.coreml.weights import get_weights, set_weights
    from dmt_model.personalize import (
        ADOPTION_RULE,
        _personalized_at,
        adopted_many,
        read_settings,
    )

    spec, users = synthetic
    (user,) = [user for user in users if user.user_id == 90]
    rate = read_settings(spec).learning_rate
    ((personal, result),) = personalized_many(spec, [user.train])
    # the premise: personalize() kept an update at the model's own rate
    assert result.accepted and result.learning_rate is None, result.reason
    assert _personalized_at(personal) == pytest.approx(rate)
    held = _class_log_loss(personal, user.test)
    new = copy.deepcopy(spec)
    weight, bias, _ = get_weights(new, "dense_2")
    set_weights(new, "dense_2", weight * 1.1, bias * 1.1)
    ((kept, adoption),) = adopted_many(new, [personal], [user.train], previous=spec,
                                       rule=ADOPTION_RULE)
    assert adoption.holdout_loss_before > 4.0, adoption  # 2.29 tried faster
    assert adoption.accepted, adoption.reason
    assert _class_log_loss(kept, user.test) < 0.2 * held, adoption.reason  # 0.75 against 6.10
