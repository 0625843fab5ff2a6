"""Membership inference: how much a released model tells who it was trained on.

One attack for every model and task, so that released models can be compared:
the **loss threshold** of Yeom et al. (2018, "Privacy risk in machine learning:
analyzing the connection to overfitting"). The attacker sees the model's
prediction for a record and the record's true target, computes the task's
per-record loss (:meth:`dmt_model.tasks.Task.record_errors`: squared error of a
regression, log loss ``−log p(y)`` of a classification) and guesses "member"
when the loss is at most a threshold. A model that fits its training records
better than others gives itself away; one that generalizes does not.

How it is measured (:func:`loss_threshold_attack`), given the losses of
*members* (records the model was trained on) and *non-members* (records of the
same population it never saw):

1. each of ``splits`` rounds sends every record, with probability ½, to the
   attacker's calibration half, as if the attacker knew some members and
   non-members; the rest is held out;
2. on the calibration half the attacker picks the threshold with the largest
   ``TPR − FPR`` (Youden's J, the best point of the ROC curve of ``−loss``);
3. that threshold guesses the held-out records: the round's advantage is their
   ``TPR − FPR``;
4. the **advantage** is its mean over the rounds: between −1 and 1, 0 for a
   model whose losses do not depend on membership (Yeom et al.'s membership
   advantage; ``2 · accuracy − 1`` on equal numbers of members and
   non-members). TPR and FPR are rates within each group, so neither group is
   subsampled when one is larger: every record counts;
5. its confidence interval is a percentile bootstrap of the whole attack, the
   calibration included: members and non-members are resampled apart
   ``resamples`` times, steps 1–4 rerun on each resample (the copies of a
   record always in the same half, or the attacker would be tested on what it
   calibrated on). It states how much the figure moves with other records of
   the same population; tested, it covered 0 in 97–99 % of 200 repetitions
   where membership does not matter and the true mean advantage of leaking
   models in 95–99 % (nominal 95 %, 40 to 300 records a group;
   ``tests/model/test_membership_inference.py`` checks the former);
6. the **AUC** of ``−loss`` over every record, members against non-members
   (:func:`sklearn.metrics.roc_auc_score`), is the threshold-free figure: 0.5
   for no leak, 1 for a model that tells every member apart.

Everything is deterministic given ``seed`` (a :class:`numpy.random.Generator`:
this is an evaluation, not a secret). For a model :func:`attack_model` computes
the losses: a :class:`~dmt_model.foundation.Foundation` (the server's retrained
foundation, a federated global model), or anything else that predicts the
foundation's task (a Core ML spec through
:func:`dmt_model.coreml.evaluate.predict_frame`, a personal model) given as
``predict``.

Why not the Adversarial Robustness Toolbox: ``adversarial-robustness-toolbox``
1.20.1 installs here without moving numpy, scikit-learn or torch, but its
rule-based attack is for classifiers only (a record is a member if it is
classified correctly), its black-box attack trains a second model on array
inputs through an estimator wrapper (our models read data frames of mixed
fields), and neither measures a held-out advantage or an interval. SciPy's
``bootstrap`` does not fit either: it resamples without saying which entries are
copies of one record, and its BCa interval needs a jackknife of one rerun per
record.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from dmt_privacy.errors import ValidationError

if TYPE_CHECKING:
    from dmt_model.foundation import Foundation
    from dmt_model.tasks import Task

__all__ = [
    "MIN_RECORDS",
    "MembershipAdvantage",
    "attack_model",
    "loss_threshold_attack",
    "record_losses",
]

#: The fewest members, and the fewest non-members, an advantage is measured on: each round's
#: calibration and held-out halves then hold about 10 of each.
MIN_RECORDS = 20

ATTACK = "loss-threshold (Yeom et al. 2018)"


@dataclass(frozen=True)
class MembershipAdvantage:
    """What a membership-inference attack achieved (module docstring).

    ``advantage`` is the held-out ``TPR − FPR`` (−1 to 1, 0 for no leak);
    ``advantage_low`` and ``advantage_high`` its bootstrap interval at
    ``confidence``; ``auc`` the ROC AUC of the loss (0.5 for no leak);
    ``members`` and ``nonmembers`` the records the advantage was measured on.
    """

    advantage: float
    advantage_low: float
    advantage_high: float
    confidence: float
    auc: float
    members: int
    nonmembers: int
    splits: int
    seed: int
    attack: str = ATTACK

    def to_dict(self) -> dict[str, float | int | str]:
        """The fields, for a JSON result."""
        return asdict(self)

    def summary(self) -> str:
        return (f"membership advantage {self.advantage:.3f} "
                f"[{self.advantage_low:.3f}, {self.advantage_high:.3f}] "
                f"({self.confidence:.0%} CI), AUC {self.auc:.3f}, on {self.members} members "
                f"and {self.nonmembers} non-members")


def record_losses(task: Task, predictions: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Each record's loss under ``task`` (float64, lower is better): squared error of a
    regression's predicted values ``[n]``, log loss of a classifier's probabilities ``[n, C]``
    against class indices ``[n]`` (what :meth:`Featurizer.target_values` returns)."""
    predictions = np.asarray(predictions, dtype=np.float64)
    targets = np.asarray(targets)
    if predictions.ndim == 0 or targets.ndim != 1:
        raise ValidationError(f"record_losses needs one prediction and one target per record, "
                              f"got predictions of shape {predictions.shape} and targets of "
                              f"shape {targets.shape}.")
    if len(predictions) != len(targets):
        raise ValidationError(f"record_losses got {len(predictions)} predictions for "
                              f"{len(targets)} targets; give one prediction per record.")
    if task.kind == "regression":
        if predictions.ndim == 2 and predictions.shape[1] == 1:
            predictions = predictions[:, 0]
        if predictions.ndim != 1:
            raise ValidationError(f"A regression's predictions are one value per record, got "
                                  f"shape {predictions.shape}.")
    elif predictions.ndim != 2:
        raise ValidationError(f"A classifier's predictions are class probabilities [records, "
                              f"classes], got shape {predictions.shape}.")
    elif len(targets) and not (0 <= targets.min() and targets.max() < predictions.shape[1]):
        raise ValidationError(f"Class indices must lie in [0, {predictions.shape[1]}) for "
                              f"{predictions.shape[1]} predicted classes, got "
                              f"{targets.min()}..{targets.max()}.")
    _check_finite("predictions", predictions)
    _check_finite("targets", targets)
    return task.record_errors(predictions, targets)


def attack_model(
    model: Foundation,
    members: pd.DataFrame,
    nonmembers: pd.DataFrame,
    *,
    predict: Callable[[pd.DataFrame], np.ndarray] | None = None,
    seed: int = 0,
    splits: int = 20,
    confidence: float = 0.95,
    resamples: int = 1000,
) -> MembershipAdvantage:
    """The loss-threshold attack on a model: ``members`` are records it was trained on,
    ``nonmembers`` records of the same population it never saw (raw field values and the
    target, as :meth:`Foundation.predict` reads them).

    ``model`` gives the task and reads the targets (class indices of a classifier);
    ``predict(frame)`` gives the predictions attacked, ``model.predict`` unless told: pass
    ``lambda f: predict_frame(spec, f)`` to attack a Core ML export of ``model``, or a
    personal model's prediction. The other arguments are :func:`loss_threshold_attack`'s.

    The non-members must be drawn as the members were, or the advantage measures how the
    two populations differ rather than what the model remembers: for a global or
    retrained model, the held-out records of the same users whose records trained it
    (records shared or trained on against the same users' test records), not another
    region or another user's scaled targets.
    """
    predict = model.predict if predict is None else predict
    losses = []
    for name, frame in (("members", members), ("nonmembers", nonmembers)):
        if len(frame) == 0:
            raise ValidationError(_empty_message(name))
        losses.append(record_losses(model.task, predict(frame),
                                    model.featurizer.target_values(frame, dtype=np.float64)))
    return loss_threshold_attack(losses[0], losses[1], seed=seed, splits=splits,
                                 confidence=confidence, resamples=resamples)


def loss_threshold_attack(
    member_losses: np.ndarray,
    nonmember_losses: np.ndarray,
    *,
    seed: int = 0,
    splits: int = 20,
    confidence: float = 0.95,
    resamples: int = 1000,
) -> MembershipAdvantage:
    """The attacker's advantage from per-record losses (module docstring: steps 1–6).

    ``member_losses``: the model's loss on records it was trained on;
    ``nonmember_losses``: on records of the same population it never saw
    (:func:`record_losses`). At least :data:`MIN_RECORDS` of each.

    The time grows as ``resamples × splits × records``: at the defaults about 10 s for
    3,000 members and 3,000 non-members on a 2-core machine, 0.01 s for 100 records.
    """
    from sklearn.metrics import roc_auc_score

    if not isinstance(splits, int) or isinstance(splits, bool) or splits < 1:
        raise ValidationError(f"splits must be a positive integer, got {splits!r}.")
    if not isinstance(resamples, int) or isinstance(resamples, bool) or resamples < 100:
        raise ValidationError(f"resamples must be an integer of at least 100, got {resamples!r}.")
    if not 0 < confidence < 1:
        raise ValidationError(f"confidence must lie in (0, 1), got {confidence!r}.")
    members = _losses("member_losses", member_losses)
    nonmembers = _losses("nonmember_losses", nonmember_losses)

    rng = np.random.default_rng(seed)
    losses = np.r_[members, nonmembers]
    is_member = np.arange(len(losses)) < len(members)
    records = np.arange(len(losses))[None, :]
    advantage = float(_held_out_advantage(losses[records], records, is_member, splits, rng)[0])
    resampled = []
    # At most ~1 million losses at once (resamples × splits × records): some 50 MB.
    batch = max(1, 1_000_000 // (splits * len(losses)))
    for start in range(0, resamples, batch):
        size = min(batch, resamples - start)
        records = np.concatenate(  # members and non-members resampled apart
            [rng.integers(0, len(members), (size, len(members))),
             rng.integers(len(members), len(losses), (size, len(nonmembers)))], axis=1)
        resampled.append(_held_out_advantage(losses[records], records, is_member, splits, rng))
    tail = (1 - confidence) / 2
    low, high = np.quantile(np.concatenate(resampled), [tail, 1 - tail])
    auc = float(roc_auc_score(is_member, -losses))
    return MembershipAdvantage(advantage=advantage, advantage_low=float(low),
                               advantage_high=float(high), confidence=confidence, auc=auc,
                               members=len(members), nonmembers=len(nonmembers), splits=splits,
                               seed=seed)


def _held_out_advantage(losses: np.ndarray, records: np.ndarray, is_member: np.ndarray,
                        splits: int, rng: np.random.Generator) -> np.ndarray:
    """Steps 1–4 of the module docstring for each row of ``losses`` ``[resamples, n]``,
    the losses of ``records`` (indices into ``is_member``, repeated in a bootstrap
    resample): the held-out TPR − FPR, averaged over ``splits`` random halvings.

    A halving sends each record to the calibration half with probability ½, every copy of
    a record to the same half: a copy on each side would let the attacker calibrate on the
    records it is then tested on. Each row is sorted once, so a threshold is a position in
    that order and every rate is a cumulative sum."""
    order = np.argsort(losses, axis=-1, kind="stable")
    ordered = np.take_along_axis(losses, order, axis=-1)
    records = np.take_along_axis(records, order, axis=-1)
    member = is_member[records][:, None, :]
    last_of_ties = np.concatenate(
        [ordered[:, 1:] != ordered[:, :-1], np.ones((len(ordered), 1), bool)], axis=-1)
    calibrating = (rng.random((len(losses), splits, len(is_member))) < 0.5)[
        np.arange(len(losses))[:, None, None], np.arange(splits)[None, :, None],
        records[:, None, :]]
    best, youden = _best_cut(member, calibrating, last_of_ties[:, None, :])
    true_positive, false_positive = _cumulative_rates(member, ~calibrating)
    at_best = (np.take_along_axis(true_positive, best, axis=-1)
               - np.take_along_axis(false_positive, best, axis=-1))[..., 0]
    return np.mean(np.where(youden > 0, at_best, 0.0), axis=-1)


def _cumulative_rates(is_member: np.ndarray, selected: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """TPR and FPR among the ``selected`` records of a loss-sorted row, when the threshold
    is each position in turn (guess "member" up to it)."""
    member, nonmember = is_member & selected, ~is_member & selected
    return (np.cumsum(member, axis=-1) / np.maximum(member.sum(axis=-1, keepdims=True), 1),
            np.cumsum(nonmember, axis=-1) / np.maximum(nonmember.sum(axis=-1, keepdims=True), 1))


def _best_cut(is_member: np.ndarray, selected: np.ndarray, last_of_ties: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    """The attacker's calibration: the position in a loss-sorted row up to which guessing
    "member" maximizes TPR − FPR on the ``selected`` records (Youden's J, the best point of
    :func:`sklearn.metrics.roc_curve` of ``−loss``, which the tests compare it with), and
    that maximum. A cut falls only after the last of equal losses: a threshold on the loss
    cannot split them. With a maximum of 0, the attacker guesses nobody."""
    true_positive, false_positive = _cumulative_rates(is_member, selected)
    youden = np.where(last_of_ties, true_positive - false_positive, -np.inf)
    best = np.argmax(youden, axis=-1)[..., None]
    return best, np.take_along_axis(youden, best, axis=-1)[..., 0]


def _losses(name: str, values: np.ndarray) -> np.ndarray:
    losses = np.asarray(values, dtype=np.float64)
    if losses.ndim != 1:
        raise ValidationError(f"{name} must be one loss per record (1-D), got shape "
                              f"{losses.shape}; compute them with record_losses.")
    if len(losses) == 0:
        raise ValidationError(_empty_message(name.removesuffix("_losses") + "s"))
    _check_finite(name, losses)
    if len(losses) < MIN_RECORDS:
        raise ValidationError(
            f"{name} has {len(losses)} records; the attack needs at least {MIN_RECORDS} "
            f"members and {MIN_RECORDS} non-members for a confidence interval (half to pick "
            "the threshold, half to measure it). Give it more records.")
    return losses


def _check_finite(name: str, values: np.ndarray) -> None:
    finite = np.isfinite(values)
    if not finite.all():
        at = int(np.argwhere(~finite)[0][0])
        raise ValidationError(f"{name} is not finite at record {at} ({values[at]!r}); a model "
                              "that predicts NaN or infinity cannot be attacked by its loss: "
                              "fix the model or drop the record.")


def _empty_message(name: str) -> str:
    kind = ("records the model was trained on" if name.startswith("member")
            else "records of the same population the model never saw")
    return f"{name} is empty: the attack needs the model's predictions on {kind}."
