"""Several emulated updates trained together (``update_specs``) are each the update alone.

``personalize()`` cross-validates every prior on every fold and trains the final
update in one batched pass; these tests hold that pass to the one-update
emulation (itself held to plain torch and ExecuTorch's runtime elsewhere).
"""

from __future__ import annotations

import numpy as np
import pytest
from test_tasks import _records, classifier  # noqa: F401 — the toy classifier fixture

from dmt_model.coreml import UpdateSettings, build_spec
from dmt_model.coreml.weights import get_weights, set_weights
from dmt_model.personalize import DecisionRule, personalized, update_spec, update_specs
from dmt_privacy.errors import UpdateRejected, ValidationError

CHAIN = ["dense_0", "dense_1", "dense_2", "personal_head"]


def _weights(spec, names):
    return [w for name in names for w in get_weights(spec, name)[:2] if w is not None]


def _assert_same(together, alone, names):
    (spec_t, history_t), (spec_a, history_a) = together, alone
    for got, want in zip(_weights(spec_t, names), _weights(spec_a, names), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # float32 sums in another order: equal to 1e-5 of the largest loss (a memorized record's
    # last losses are at float32's rounding)
    np.testing.assert_allclose(history_t.epoch_losses, history_a.epoch_losses, rtol=1e-5,
                               atol=1e-5 * max(history_a.epoch_losses))


@pytest.mark.parametrize("settings", [
    UpdateSettings(updatable_layers=2, learning_rate=3e-4, batch_size=8, epochs=30),
    UpdateSettings(updatable_layers=3, optimizer="adam", learning_rate=1e-3, batch_size=4,
                   epochs=20),
], ids=["sgd", "adam"])
def test_regression_updates_run_together_equal_each_run_alone(foundation, simulation, settings):
    spec = build_spec(foundation, updatable=settings)
    frames = [simulation.users[0].train, simulation.users[1].train.iloc[:3],
              simulation.users[2].train.iloc[:1], simulation.users[3].train.iloc[:9]]
    assert len({len(f) for f in frames}) == len(frames)  # different lengths: lanes end apart
    together = update_specs(spec, frames)
    for frame, outcome in zip(frames, together, strict=True):
        _assert_same(outcome, update_spec(spec, frame), CHAIN)


def test_classifier_updates_run_together_equal_each_run_alone(classifier):  # noqa: F811
    spec = build_spec(classifier, updatable=UpdateSettings(epochs=25, batch_size=8))
    frames = [_records(30, 1), _records(5, 2, threshold=-0.5), _records(13, 3, flip=True)]
    together = update_specs(spec, frames)
    for frame, outcome in zip(frames, together, strict=True):
        _assert_same(outcome, update_spec(spec, frame), ["personal_head"])


def test_a_classifier_update_s_losses_are_those_of_every_step(classifier):  # noqa: F811
    """Without on_event a classifier's losses are computed once the pass is over, from each
    step's probability of the label; with it at every step: the same numbers to the bit."""
    spec = build_spec(classifier, updatable=UpdateSettings(epochs=7, batch_size=4))
    frame = _records(13, 3, flip=True)  # a last partial mini-batch in every epoch
    events = []
    watched, history = update_spec(spec, frame, on_event=events.append)
    (unwatched, quiet), = update_specs(spec, [frame])
    assert quiet.epoch_losses == history.epoch_losses
    assert get_weights(watched, "personal_head")[0].tobytes() == \
        get_weights(unwatched, "personal_head")[0].tobytes()
    weight, bias, _ = get_weights(spec, "dense_2")  # the head's inputs overflow: NaN
    set_weights(spec, "dense_2", np.full_like(weight, 3e38), bias)  # probabilities
    with pytest.raises(UpdateRejected, match="diverged") as alone:
        update_spec(spec, frame, on_event=events.append)
    together = update_specs(spec, [_records(30, 1), frame])
    assert [str(outcome) for outcome in together] == [str(alone.value)] * 2


def test_a_diverging_update_is_refused_alone_and_the_others_finish(foundation, boston):
    spec = build_spec(foundation, updatable=UpdateSettings(updatable_layers=2))
    calm, wild = boston.iloc[[0]], boston.nlargest(20, "CRIM")
    settings = {"learning_rate": 3e-3, "epochs": 20}
    with pytest.raises(UpdateRejected, match="diverged") as alone:
        update_spec(spec, wild, **settings)
    first, second = update_specs(spec, [calm, wild], **settings)
    _assert_same(first, update_spec(spec, calm, **settings), CHAIN)
    assert isinstance(second, UpdateRejected) and str(second) == str(alone.value)


def test_progress_events_need_a_single_update(foundation, simulation):
    spec = build_spec(foundation, updatable=UpdateSettings())
    frames = [simulation.users[0].train, simulation.users[1].train]
    with pytest.raises(ValidationError, match="on_event"):
        update_specs(spec, frames, on_event=print)
    assert update_specs(spec, []) == []


def test_personalize_keeps_the_update_the_one_at_a_time_rule_keeps(foundation, simulation):
    """The batched pass changes no decision: each prior's folds and the final update are the
    ones ``update_spec`` trains alone, so the chosen prior and the written model are too."""
    from dmt_model.personalize import with_prior

    spec = build_spec(foundation, updatable=UpdateSettings())
    user = simulation.users[5]
    personal, result = personalized(spec, user.train, prior_records=(1, 3, 10),
                                    rule=DecisionRule(confidence=0.5))  # one it keeps
    assert result.accepted
    alone, _ = update_spec(spec, with_prior(spec, user.train, result.prior_records))
    for got, want in zip(_weights(personal, CHAIN), _weights(alone, CHAIN), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert result.prior_records in (1, 3, 10)


def test_adopted_keeps_a_device_off_a_worse_model_and_changes_neither_input(
        foundation, simulation):
    """The in-memory adoption the benchmarks use is adopt_new_version: a new model that is
    worse for the user leaves the device on its current personal model."""
    from dmt_model.coreml.weights import set_weights
    from dmt_model.personalize import adopted

    spec = build_spec(foundation, updatable=UpdateSettings())
    user = simulation.users[5]
    current, _ = personalized(spec, user.train)
    broken = build_spec(foundation, updatable=UpdateSettings())
    weight, bias, _ = get_weights(broken, "dense_2")
    set_weights(broken, "dense_2", weight, bias + 1.5)  # a "new version" 1.5 target stds off
    before = [w.copy() for w in _weights(current, CHAIN)]
    held, result = adopted(broken, current, user.train)
    assert not result.accepted
    for got, want in zip(_weights(held, CHAIN), before, strict=True):
        np.testing.assert_array_equal(got, want)
    assert np.all(get_weights(broken, "dense_2")[1] == bias + 1.5)  # not modified
    # Under the rule personalize() applies (without it adopted() asks a version no device
    # vouched for to prove itself at 99 %, UNCHECKED_RULE), the same decision.
    held, result = adopted(spec, build_spec(foundation, updatable=UpdateSettings()),
                           user.train, rule=DecisionRule())
    assert result.accepted == personalized(spec, user.train)[1].accepted


def test_many_updates_of_very_different_lengths_each_equal_the_update_alone(
        foundation, simulation, boston):
    """update_specs runs the updates longest first and computes, at each step, only those
    still running: a lane's result must not depend on where it runs, on which lanes have
    finished, or on a lane that diverged among them (here one in the middle of the order,
    diverging while shorter ones still run)."""
    import pandas as pd

    spec = build_spec(foundation, updatable=UpdateSettings(updatable_layers=2, batch_size=4))
    users = simulation.users
    wild = boston.nlargest(9, "CRIM")  # diverges at epoch 3 of 20 at this learning rate
    frames = [users[0].train.iloc[:1], pd.concat([u.train for u in users[1:6]]),
              users[2].train.iloc[:1], pd.concat([u.train for u in users[6:8]]), wild,
              users[3].train.iloc[:2], users[8].train.iloc[:5], users[9].train.iloc[:1],
              users[10].train, pd.concat([u.train for u in users[11:14]]).iloc[:39]]
    longest_first = sorted(range(len(frames)), key=lambda i: -(-len(frames[i]) // 4))
    assert 3 <= longest_first.index(4) <= len(frames) - 4  # the wild lane runs mid-order
    settings = {"learning_rate": 1e-3, "epochs": 20}
    together = update_specs(spec, frames, **settings)
    for frame, outcome in zip(frames, together, strict=True):
        try:
            alone = update_spec(spec, frame, **settings)
        except UpdateRejected as exc:
            assert isinstance(outcome, UpdateRejected) and str(outcome) == str(exc)
            continue
        _assert_same(outcome, alone, CHAIN)
    assert [isinstance(o, UpdateRejected) for o in together] == [i == 4 for i in range(10)]


def _awkward(rng, shape):
    """float32 values with the numbers a product's sign and rounding turn on: ±0, NaN, ±inf,
    subnormals, large and ordinary values."""
    values = rng.normal(size=shape).astype(np.float32) * np.float32(3)
    special = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1e-40, -1e-40, 3e38, -3e38],
                       np.float32)
    flat = values.reshape(-1)
    chosen = rng.random(flat.size) < 0.3
    flat[chosen] = rng.choice(special, size=int(chosen.sum()))
    return values


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("groups", [1, 5])
def test_a_diagonal_layer_s_products_are_einsum_s_numbers(groups, n):
    """A personal head (one input an output) is multiplied elementwise, not through einsum:
    the same numbers to the bit, a product's -0.0 included (einsum adds it to a zero)."""
    from dmt_model.personalize import _lane_backward, _lane_matmul

    rng = np.random.default_rng(groups * 10 + n)
    k, width = 4, groups
    with np.errstate(all="ignore"):
        for _ in range(20):
            x, grad = _awkward(rng, (k, n, width)), _awkward(rng, (k, n, width))
            weight = _awkward(rng, (k, width, 1))
            xg, gg = x.reshape(k, n, groups, -1), grad.reshape(k, n, groups, -1)
            wg = weight.reshape(k, groups, -1, 1)
            want = np.einsum("kngi,kgoi->kngo", xg, wg).reshape(k, n, width)
            want_weight = np.einsum("kngo,kngi->kgoi", gg, xg).reshape(weight.shape)
            want_input = np.einsum("kngo,kgoi->kngi", gg, wg).reshape(k, n, width)
            got = _lane_matmul(x, weight, groups)
            (got_weight, got_bias), got_input = _lane_backward(grad, x, weight, groups,
                                                               inputs=True)
            for a, b in ((got, want), (got_weight, want_weight), (got_input, want_input),
                         (got_bias, grad.sum(axis=1))):
                assert a.dtype == np.float32 and a.shape == b.shape
                assert a.tobytes() == b.tobytes()
            assert _lane_backward(grad, x, weight, groups, inputs=False)[1] is grad


def test_the_steps_read_each_step_s_rows_chunk_by_chunk():
    """:meth:`_LanePlan.steps_reading` gathers a chunk of steps at once: every step's rows
    are still ``table[index]`` of the lanes that run, contiguous, whatever the chunk."""
    from dmt_model.personalize import _LanePlan, _Settings

    settings = _Settings(optimizer="sgd", learning_rate=0.1, batch_size=3, epochs=4,
                         shuffle=True, seed=5, momentum=0.0, beta1=0.9, beta2=0.999, eps=1e-8)
    sizes = [7, 1, 12, 4]
    plan = _LanePlan.of(sizes, settings)
    rows = 1 + sum(sizes)
    features = np.arange(rows * 2, dtype=np.float32).reshape(rows, 2)
    labels = np.arange(rows, dtype=np.float32).reshape(rows, 1) * -1
    for budget in (1, 200, 1 << 22):  # a step a chunk, a few steps, every step in one
        seen = []
        for t, a, o, index, size, (x, y) in plan.steps_reading(features, labels,
                                                                budget=budget):
            assert a == plan.running[t] and o == plan.offsets[t]
            assert index.tobytes() == plan.index[o:o + a].tobytes()
            assert size.tobytes() == plan.size[o:o + a].tobytes()
            assert x.tobytes() == features[index].tobytes() and x.flags.c_contiguous
            assert y.tobytes() == labels[index].tobytes() and y.flags.c_contiguous
            seen.append(t)
        assert seen == list(range(plan.steps))


def test_softmax_keeps_its_numbers_in_place():
    from dmt_model.coreml.evaluate import softmax

    rng = np.random.default_rng(3)
    with np.errstate(all="ignore"):
        for x in (rng.normal(size=(5, 2, 10)).astype(np.float32) * 30,
                  _awkward(rng, (6, 1, 3)), rng.normal(size=(4, 7)), np.float32([[1e30, -1e30]])):
            before = x.copy()
            shifted = np.exp(x - x.max(axis=-1, keepdims=True))
            want = (shifted / shifted.sum(axis=-1, keepdims=True)).astype(np.float32)
            assert softmax(x).tobytes() == want.tobytes()
            assert x.tobytes() == before.tobytes()  # its input is left as it was


def test_an_update_is_written_into_a_spec_only_when_kept(foundation, simulation):
    """Inside the module the batched loop hands out each update's layers, not a copy of the
    spec: the checks read the same weights the written copy holds, and what leaves the
    module (``update_specs``, ``personalized``) is always a spec."""
    from dmt_model.personalize import (
        _layer_weights,
        _personal_updates,
        _UpdatedLayers,
        predict_frame,
    )

    spec = build_spec(foundation, updatable=UpdateSettings(updatable_layers=2, learning_rate=3e-4,
                                                           batch_size=8, epochs=10))
    frames = [simulation.users[0].train, simulation.users[1].train.iloc[:4]]
    lazy = _personal_updates(spec, frames, [0, 0], {})
    written = update_specs(spec, frames)
    for (update, _), (copy, _) in zip(lazy, written, strict=True):
        assert isinstance(update, _UpdatedLayers) and not isinstance(copy, _UpdatedLayers)
        for name in ("dense_2", "personal_head"):
            for got, want in zip(_layer_weights(update, name), get_weights(copy, name),
                                 strict=True):
                np.testing.assert_array_equal(got, want)
        assert update.spec().SerializeToString() == copy.SerializeToString()
    personal, outcome = personalized(spec, simulation.users[0].train)
    assert outcome.accepted and not isinstance(personal, _UpdatedLayers)
    assert predict_frame(personal, simulation.users[0].test).shape[0] == len(
        simulation.users[0].test)
