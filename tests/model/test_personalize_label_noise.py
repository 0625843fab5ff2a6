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
    featurizer = personalize_module.featurizer_of(model)
    return featurizer.task.test_error(predict_frame(model, records),
                                      featurizer.target_values(records))


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
