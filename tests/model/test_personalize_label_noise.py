"""A classifier's update learns only the part of its records' label shift chance does not
explain.

Found on 7 December: on noisy labels (make_classification, 30 % of labels flipped), users
drawn like the proxy whose records showed a label shift by chance (the test's 5 %) kept
updates that learned their sample's skew: 10 of 400 ended worse, up to +38 % unseen log
loss (``benchmarks/label_noise.py``'s *whole shift* arm). The update kept now moves
the share of the shift likeliest not chance given that the test passed
(``personalize._shift_share``): a skew just past the threshold moves it not at all."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import dmt_model.personalize as personalize_module
from dmt_model.coreml import UpdateSettings, build_spec
from dmt_model.coreml.evaluate import predict_frame
from dmt_model.foundation import train_foundation
from dmt_model.personalize import personalized_many
from dmt_privacy.schema import Field, Schema

CLASSES = ("c0", "c1")


@pytest.fixture(scope="module")
def noisy():
    """A foundation trained on 300 records of noisy labels, and 25 users of 40 records
    drawn from the other 300 (each with the rest of them to score on)."""
    from sklearn.datasets import make_classification

    X, y = make_classification(600, 8, n_informative=3, flip_y=0.3, class_sep=0.7,
                               random_state=5)
    frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(8)]).assign(
        y=[CLASSES[v] for v in y])
    schema = Schema(name="noisy", fields=(
        *(Field(f"x{i}", "numeric", bounds=(-12.0, 12.0)) for i in range(8)),
        Field("y", "categorical", "target", categories=CLASSES)))
    rng = np.random.default_rng(101)
    order = rng.permutation(len(frame))
    proxy, pool = frame.iloc[order[:300]], frame.iloc[order[300:]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec = build_spec(train_foundation(proxy, schema), updatable=UpdateSettings())
    users = []
    for _ in range(25):
        pick = rng.choice(len(pool), size=40, replace=False)
        users.append((pool.iloc[pick], pool.drop(pool.index[pick])))
    return spec, users


def _log_loss(model, records: pd.DataFrame) -> float:
    p = predict_frame(model, records)
    labels = np.array([CLASSES.index(v) for v in records["y"]])
    return float(-np.log(np.clip(p[np.arange(len(labels)), labels], 1e-7, 1)).mean())


def test_users_drawn_like_the_proxy_of_noisy_labels_are_not_made_worse(noisy):
    """Users of 40 records drawn like the proxy (seed 1 of the benchmark's users), some of
    whose records pass the label-shift test by chance: none ends worse."""
    spec, users = noisy
    featurizer = personalize_module.featurizer_of(spec)

    def passes(user: pd.DataFrame) -> bool:  # the test at 95 %, the share aside
        shown, words, _ = personalize_module._label_shift(
            spec, [(user, user, featurizer.target_values(user))], 0.95)
        return shown or "pass the label-shift test" in words

    # before, such a user kept an update and ended +6.1 % (chi-square 4.82, needs 3.84)
    assert any(passes(user) for user, _ in users), "no user's records pass: nothing checked"
    personal = personalized_many(spec, [user for user, _ in users], seed=0)
    for (model, result), (_, rest) in zip(personal, users, strict=True):
        if result.accepted:
            assert _log_loss(model, rest) <= _log_loss(spec, rest) * 1.005, result.reason


def test_the_share_learned_grows_with_the_evidence_of_a_shift():
    """None of a shift the test barely shows (chance is the likeliest cause of a statistic
    just past the threshold, among those that pass it), most of a plain one."""
    def share(labels):
        class Model:
            p = np.full((len(labels), 2), 0.5, dtype=np.float32)

        frame = pd.DataFrame({"i": range(len(labels))})
        original = personalize_module._predict
        personalize_module._predict = lambda m, f: m.p[f["i"].to_numpy()]
        try:
            return personalize_module._label_shift(
                Model(), [(frame, frame, np.asarray(labels))], 0.95)
        finally:
            personalize_module._predict = original

    # 40 records the model calls 50/50: z = (o - 20) / sqrt(10), needs z² > 3.84
    barely, some, plain, none = (share([0] * n + [1] * (40 - n)) for n in (27, 28, 36, 22))
    assert not barely[0] and barely[2] == 0.0, barely  # z² = 4.9: as likely chance
    assert "only narrowly" in barely[1], barely
    assert some[0] and 0.3 < some[2] < 0.7, some  # z² = 6.4
    assert plain[0] and plain[2] > 0.9, plain  # z² = 25.6
    assert not none[0] and none[2] == 0.0, none  # z² = 0.4


def test_an_update_moved_part_of_the_way_moves_each_logit_that_part(noisy):
    """The personal head is a per-class scale and bias of the logits: moving its weights
    a share of the way moves each logit that share (Core ML's emulation)."""
    spec, users = noisy
    records, rest = users[0]
    update, _ = personalize_module.update_spec(spec, records)
    half = personalize_module._toward(spec, update, 0.4)

    def logits(model):
        return np.log(predict_frame(model, rest).astype(np.float64))

    start, end, moved = logits(spec), logits(update), logits(half)
    # (as logits, up to each row's constant)
    want = start + 0.4 * (end - start)
    np.testing.assert_allclose(moved - moved[:, :1], want - want[:, :1], atol=1e-4)
