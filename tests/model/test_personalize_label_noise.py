"""A classifier's update learns only the part of its records' label shift chance does not
explain.

Found on 7 December: on noisy labels (make_classification, 30 % of labels flipped), users
drawn like the proxy whose records showed a label shift by chance (the test's 5 %) kept
updates that learned their sample's skew: 10 of 400 ended worse, up to +38 % unseen log
loss (``benchmarks/label_noise.py``'s *whole shift* arm). The update kept now moves
the share of the shift likeliest not chance given that the test passed
(``personalize._shift_share``): a skew just past the threshold moves it not at all."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest

import dmt_model.personalize as personalize_module
from dmt_model.coreml import UpdateSettings, build_spec
from dmt_model.coreml.evaluate import predict_frame
from dmt_model.foundation import train_foundation
from dmt_model.personalize import PLAIN_SHIFT_SHARE, personalized_many
from dmt_privacy.schema import Field, Schema

CLASSES = ("c0", "c1")


def _foundation_and_pool(seed: int, before: tuple[int, ...] = ()):
    """``label_noise.py``'s noisy data of seed ``seed``: a foundation trained on 300 of its
    records and the rng that drew them, the other 300, and 25 users of each size of
    ``before`` drawn first (as the benchmark's users of smaller sizes are)."""
    from sklearn.datasets import make_classification

    X, y = make_classification(600, 8, n_informative=3, flip_y=0.3, class_sep=0.7,
                               random_state=5)
    frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(8)]).assign(
        y=[CLASSES[v] for v in y])
    schema = Schema(name="noisy", fields=(
        *(Field(f"x{i}", "numeric", bounds=(-12.0, 12.0)) for i in range(8)),
        Field("y", "categorical", "target", categories=CLASSES)))
    rng = np.random.default_rng(100 + seed)
    order = rng.permutation(len(frame))
    proxy, pool = frame.iloc[order[:300]], frame.iloc[order[300:]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec = build_spec(train_foundation(proxy, schema), updatable=UpdateSettings())
    for size in before:
        for _ in range(25):
            rng.choice(len(pool), size=size, replace=False)
    return spec, rng, pool


def _users(rng: np.random.Generator, pool: pd.DataFrame, size: int):
    """25 users of ``size`` records drawn from ``pool``, each with the rest to score on."""
    users = []
    for _ in range(25):
        pick = rng.choice(len(pool), size=size, replace=False)
        users.append((pool.iloc[pick], pool.drop(pool.index[pick])))
    return users


@pytest.fixture(scope="module")
def noisy():
    """A foundation trained on 300 records of noisy labels, and 25 users of 40 records
    drawn from the other 300 (each with the rest of them to score on)."""
    spec, rng, pool = _foundation_and_pool(1)
    return spec, _users(rng, pool, 40)


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


# Found on 7 December (label_noise.py's seed 0, default foundation): below 30 records a
# classifier's update kept on a label shift could take a weaker prior from 3 records, and on
# noisy labels two users of 10 records drawn like the proxy, whose records passed the test
# at shares of 0.78 and 0.70, kept 10 anchor records' update and ended +25.7 % and +6.5 %
# unseen log loss worse; with the strongest prior, +11.0 % and +0.35 %. (What remains of
# the +11 % is the foundation's overconfidence on noisy labels, which the label-shift test
# takes for a shift.) A weaker prior now needs a plain shift (PLAIN_SHIFT_SHARE).
@pytest.fixture(scope="module")
def noisy_ten():
    """label_noise.py's seed 0: its default foundation and its 25 users of 10 records."""
    spec, rng, pool = _foundation_and_pool(0, before=(5,))
    return spec, _users(rng, pool, 10)


def test_below_thirty_records_an_update_kept_on_a_shift_not_plain_takes_the_strongest_prior(
        noisy_ten):
    spec, users = noisy_ten
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        personal = personalized_many(spec, [user for user, _ in users], seed=0)
    kept = [(model, result, rest) for (model, result), (_, rest)
            in zip(personal, users, strict=True) if result.accepted]
    assert len(kept) >= 2, "no update kept on a label shift: nothing checked"
    changes = sorted(_log_loss(model, rest) / _log_loss(spec, rest) - 1
                     for model, _, rest in kept)
    for _, result, _ in kept:  # each keeps under 90 % of its change: no plain shift
        share = re.search(r"the update keeps (\d+)% of its change", result.reason)
        assert share and int(share.group(1)) < 100 * PLAIN_SHIFT_SHARE, result.reason
        assert result.prior_records == max(personalize_module.DEFAULT_PRIOR_RECORDS), (
            result.reason)
    # before: +6.5 % and +25.7 %; now +0.35 % and +11.0 %
    assert changes[-2] < 0.01 and changes[-1] < 0.15, changes
