"""What a model learns: the one place that says what a task is.

A task is read off the schema (:func:`task_for`): a numeric target makes a
:class:`Regression`, a categorical one a :class:`Classification`. Everything
else about the model follows from the schema's inputs and is the same for
every task (:mod:`dmt_model.features`, :mod:`dmt_model.foundation`): numeric
fields and image pixels are standardized, categorical fields and texts become
one-hot or bag-of-tokens vectors feeding embeddings, and a multilayer
perceptron maps their concatenation to the task's outputs.

A task says

* how many outputs the network has (:meth:`Task.output_units`);
* what the training loss compares those outputs with, and the loss itself,
  per record and free of the target's units (:meth:`Task.training_target`,
  :meth:`Task.record_loss`);
* how outputs become predictions (:meth:`Task.predictions`): the target in its
  own units for a regression, class probabilities for a classification;
* how predictions are scored: :meth:`Task.metrics` for people and
  :meth:`Task.record_errors`, a per-record loss (lower is better) that the
  device's keep-or-discard rule and the server's gate compare.

=========================  ==========================  ==============================
                           Regression                  Classification
=========================  ==========================  ==============================
outputs                    1: the standardized target  one logit per class
training loss              ``((ŷ − y) / scale)²``      cross-entropy of the softmax
prediction                 ``z · scale + mean``        softmax probabilities
metrics                    RMSE, MAE                   accuracy, macro-F1, log loss
per-record error           squared error               log loss ``−log p(y)``
test error (one number)    RMSE                        mean log loss
personal head (updatable)  1→1: ``scale``, ``mean``   per class: ``K``, ``0`` on logits/K
Core ML loss               MSE                         softmax, CCE
keep-or-discard confidence 0.9                         0.9
label shift shown at       (not asked)                 0.9; 0.95 from 15 records
=========================  ==========================  ==============================

The **personal head** is the one layer a device trains by default
(:meth:`Task.personal_layers`). A regression's turns the standardized
prediction into the target's units. A classifier's is a per-class scale and
bias on the logits; its input is the logits divided by
:data:`HEAD_LOGIT_SCALE` ``K`` (folded into the last dense layer) and its
scales start at ``K``, so the function is unchanged but an SGD step moves a
logit ``z`` through its scale by ``η (z/K)² (p − y)`` against ``η (p − y)``
through its bias. With ``K = 100`` the scales move at under 4 % of the biases'
rate for logits up to 20: a user's labels shift the class priors (the
label-shift correction of Saerens et al., 2002) instead of sharpening or
flattening classes on a dozen records, which raised the log loss of users
whose labels follow the proxy's (``benchmarks/task_quality.py``, README).

:attr:`Task.decision_confidence` is the confidence the device's
keep-or-discard rule (:class:`dmt_model.personalize.DecisionRule`) needs
unless told otherwise: 90 % for both. A classifier's per-record log losses
are heavy-tailed and its head has two parameters per class. A regression's
was 50 % (keep any update whose mean held-out error is lower) until users
with a few records drawn like the proxy were found worse off on average in
every seed (``make_friedman1``, 60 users, 100 test records each: +5 to +13 %
RMSE at 2-5 records, +3 % at 10): chance kept about half of the updates with
nothing to learn. :attr:`Task.few_records` (30 for a regression): a device
with fewer records to score takes the grid's strongest prior (30 anchor
records), and a weaker one only if its update is better, than the current model
and than the strongest prior's update, at 99 % on 6 or 7 records and 97.5 % from 8 (none
below 6: on 3–5 records a weak prior's update was kept by chance; until 5 December's
evening at 99 % on 3 or 4 records and 97.5 % from 5, until 6 December 97.5 % from 6;
:data:`dmt_model.personalize.FEW_RECORDS_CONFIDENCE`);
from 30 records, a weaker prior's update must be better than the strongest's at the
rule's confidence (until
5 December, a weaker prior was compared with the current model only, and any prior
chosen from 30: users drawn like the proxy kept weak priors' updates by chance).
At 90 % one update in ten with nothing to learn is still kept by chance; with a
weak prior (1 or 3 anchor records) such an update on 10 records raised that
user's test RMSE by a third, with 30 by little. A user who differs from the
proxy shows it at that confidence on a few records and keeps much of the weak
prior's gain (README, *Personalization on any data*).

A classifier's personal head moves its class priors, so all a device's update can
learn is a label shift, and :attr:`Task.label_shift_confidence` asks the device's
records to show one before the update is kept: the class counts must differ from the
sums of the current model's predicted probabilities on the same records (a chi-square
test of calibration in the large), at 90 % below 15 records to score and at 95 % from
15 (99 % until helper-112, when the test took each record's own spread; with the model's
mean prediction's, which is wider, 95 % keeps as many updates of users who differ, and
its chance of showing a shift where there is none is 0-1 % on confident models where
the old one's was 4-49 %). Without it, a user drawn like the proxy whose few records held
no minority-class record held out only majority-class records in every fold, every paired
difference favoured an update shifted to the majority, and the paired t-test passed: on 85/15
labels, 101 of 240 such users kept an update at 5 records, and users' unseen log loss
rose by 5.6 % on average (3.4 % at 20 records). A shift kept by chance costs more the
further the update moves: below 15 records the strongest prior holds it to a third of
the records' shift or less, and from 15 on 90 % still left such users +1.6 % worse at
20 records. A classifier whose records show a shift also takes the grid's strongest
prior below 30 records to score, as a regression does
(:data:`~dmt_model.personalize.LABEL_SHIFT_FEW_RECORDS`), unless a weaker one is better
(than the current model and than the strongest's update) at
:data:`~dmt_model.personalize.LABEL_SHIFT_FEW_RECORDS_CONFIDENCE` (from 3 records; a
regression's weaker priors begin at 6) and, for a classifier alone, the shift is plain
(:data:`~dmt_model.personalize.PLAIN_SHIFT_SHARE`). Users who differ keep most
of their gain (README, *Personalization on any data*).

Labels released under k-ary randomized response (keep probability ``p``,
flip probability ``q``) are learned with the *forward correction* of Patrini
et al. (2017): the model's probability of the *reported* label is
``q + (p − q) · P(label)``, and the loss is its negative logarithm, whose
minimizer is the model of the true labels.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from dmt_privacy.errors import SchemaError
from dmt_privacy.schema import Kind, Schema

if TYPE_CHECKING:
    from dmt_model.features import Featurizer

__all__ = [
    "HEAD_LOGIT_SCALE",
    "Classification",
    "ClassificationMetrics",
    "Metrics",
    "Regression",
    "Task",
    "classification_metrics",
    "regression_metrics",
    "task_for",
]

#: A classifier's personal head sees the logits divided by this and starts with scales equal
#: to it (module docstring): its per-class scales learn (z/K)² as fast as its biases.
HEAD_LOGIT_SCALE = 100.0

#: Probabilities are clipped to [PROBABILITY_FLOOR, 1] before a logarithm is taken, so one
#: confident mistake costs at most −log(1e-7) ≈ 16 rather than infinity.
PROBABILITY_FLOOR = 1e-7


@dataclass(frozen=True)
class Metrics:
    """Regression test error in the target's units. RMSE = sqrt(mean((ŷ − y)²))."""

    rmse: float
    mae: float
    n: int

    @property
    def error(self) -> float:
        """The headline error, lower is better (RMSE)."""
        return self.rmse

    def summary(self) -> str:
        return f"RMSE {self.rmse:.4g}, MAE {self.mae:.4g} on {self.n} records"


@dataclass(frozen=True)
class ClassificationMetrics:
    """Classification test scores: accuracy, macro-averaged F1, mean log loss (natural log)."""

    accuracy: float
    macro_f1: float
    log_loss: float
    n: int

    @property
    def error(self) -> float:
        """The headline error, lower is better (log loss: a proper scoring rule)."""
        return self.log_loss

    def summary(self) -> str:
        return (f"accuracy {self.accuracy:.4f}, macro-F1 {self.macro_f1:.4f}, "
                f"log loss {self.log_loss:.4f} on {self.n} records")


def regression_metrics(predicted: np.ndarray, actual: np.ndarray) -> Metrics:
    error = np.asarray(predicted, dtype=np.float64) - np.asarray(actual, dtype=np.float64)
    return Metrics(rmse=float(np.sqrt(np.mean(error**2))), mae=float(np.mean(np.abs(error))),
                   n=int(error.size))


def _log_losses(probabilities: np.ndarray, classes: np.ndarray) -> np.ndarray:
    chosen = np.asarray(probabilities, np.float64)[np.arange(len(classes)), classes]
    return -np.log(np.clip(chosen, PROBABILITY_FLOOR, 1.0))


def classification_metrics(probabilities: np.ndarray, actual: np.ndarray) -> ClassificationMetrics:
    """Scores of class probabilities ``[n, C]`` against true class indices ``[n]``.

    Macro-F1 averages the F1 of the classes that occur in ``actual`` or in the
    predictions (scikit-learn's convention).
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.int64)
    predicted = probabilities.argmax(axis=1)
    scores = []
    for c in np.union1d(actual, predicted):
        tp = float(np.sum((predicted == c) & (actual == c)))
        fp = float(np.sum((predicted == c) & (actual != c)))
        fn = float(np.sum((predicted != c) & (actual == c)))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return ClassificationMetrics(accuracy=float(np.mean(predicted == actual)),
                                 macro_f1=float(np.mean(scores)),
                                 log_loss=float(np.mean(_log_losses(probabilities, actual))),
                                 n=int(actual.size))


class Task(ABC):
    """What the foundation network learns (module docstring)."""

    kind: ClassVar[str]
    #: what :meth:`test_error` reports: ``"RMSE"`` or ``"log loss"``
    error_name: ClassVar[str]
    #: what one record's error is (the keep-or-discard rule compares their means):
    #: ``"squared error"`` or ``"log loss"``
    record_error_name: ClassVar[str]
    #: the confidence the device's keep-or-discard rule needs by default (module docstring)
    decision_confidence: ClassVar[float]
    #: with fewer records than this to score, a device's update takes the prior grid's
    #: strongest prior, or a weaker one better (than the model and than the strongest's
    #: update) at :data:`~dmt_model.personalize.FEW_RECORDS_CONFIDENCE`, and from this
    #: many a weaker one better than the strongest's at the rule's confidence (module
    #: docstring); 0: any prior
    few_records: ClassVar[int] = 0
    #: the confidence at which a device's records must show a label shift before a personal
    #: update is kept, by how many records it has to score: (from how many records,
    #: confidence) in increasing order (module docstring); empty: none asked
    label_shift_confidence: ClassVar[tuple[tuple[int, float], ...]] = ()

    @abstractmethod
    def output_units(self, featurizer: Featurizer) -> int:
        """How many numbers the network outputs."""

    @abstractmethod
    def training_target(self, featurizer: Featurizer, target: np.ndarray) -> np.ndarray:
        """What the loss compares the outputs with, from :meth:`Featurizer.target_values`."""

    @abstractmethod
    def record_loss(self, network: Any, outputs: Any, target: Any,
                    label_noise: Any = None) -> Any:
        """The training loss of each record (torch), without the target's units."""

    @abstractmethod
    def predictions(self, network: Any, outputs: Any) -> Any:
        """Network outputs (torch) to predictions: target values or class probabilities."""

    @abstractmethod
    def metrics(self, predicted: np.ndarray, actual: np.ndarray) -> Metrics | ClassificationMetrics:
        """Scores of predictions against :meth:`Featurizer.target_values`."""

    @abstractmethod
    def record_errors(self, predicted: np.ndarray, actual: np.ndarray) -> np.ndarray:
        """Per-record error of predictions (float64, lower is better)."""

    @abstractmethod
    def test_error(self, predicted: np.ndarray, actual: np.ndarray) -> float:
        """One number for a set of test records (lower is better, named :attr:`error_name`):
        what benchmarks average over users to compare models of this task."""

    @abstractmethod
    def constant_prediction(self, featurizer: Featurizer, seen: np.ndarray,
                            n: int) -> np.ndarray:
        """The best prediction that ignores the inputs, learned from the targets ``seen``
        (:meth:`Featurizer.target_values`), for ``n`` records: the floor a model must beat."""

    @abstractmethod
    def personal_layers(self, featurizer: Featurizer, dense: list[tuple[np.ndarray, np.ndarray]],
                        ) -> list[tuple[np.ndarray, np.ndarray]]:
        """The exported layers after the embeddings, as float32 (weight, bias) pairs: the
        network's ``dense`` layers (the last one rescaled if the head needs it), then the
        personal head's. Every exporter (Core ML, ExecuTorch) builds its layers from this."""


class Regression(Task):
    """A numeric target, learned standardized (scale-free: see :mod:`dmt_model.foundation`)."""

    kind = "regression"
    error_name = "RMSE"
    record_error_name = "squared error"
    decision_confidence = 0.9
    few_records = 30

    def output_units(self, featurizer: Featurizer) -> int:
        return 1

    def training_target(self, featurizer: Featurizer, target: np.ndarray) -> np.ndarray:
        # Computed in float64: the same data in other units trains bit for bit the same network.
        standardized = (np.asarray(target, np.float64) - featurizer.target_mean_) \
            / featurizer.target_scale_
        return standardized.astype(np.float32)

    def record_loss(self, network: Any, outputs: Any, target: Any,
                    label_noise: Any = None) -> Any:
        return (outputs.squeeze(1) - target) ** 2

    def predictions(self, network: Any, outputs: Any) -> Any:
        return outputs.squeeze(1) * network.target_scale + network.target_mean

    def metrics(self, predicted: np.ndarray, actual: np.ndarray) -> Metrics:
        return regression_metrics(predicted, actual)

    def constant_prediction(self, featurizer: Featurizer, seen: np.ndarray,
                            n: int) -> np.ndarray:
        """The mean of ``seen``."""
        return np.full(n, float(np.mean(np.asarray(seen, np.float64))))

    def record_errors(self, predicted: np.ndarray, actual: np.ndarray) -> np.ndarray:
        return (np.asarray(predicted, np.float64) - np.asarray(actual, np.float64)) ** 2

    def test_error(self, predicted: np.ndarray, actual: np.ndarray) -> float:
        return float(np.sqrt(np.mean(self.record_errors(predicted, actual))))

    def personal_layers(self, featurizer: Featurizer, dense: list[tuple[np.ndarray, np.ndarray]],
                        ) -> list[tuple[np.ndarray, np.ndarray]]:
        head = (np.array([[featurizer.target_scale_]], np.float32),
                np.array([featurizer.target_mean_], np.float32))
        return [*_float32(dense), head]


class Classification(Task):
    """A categorical target: one logit per class, softmax, cross-entropy."""

    kind = "classification"
    error_name = "log loss"
    record_error_name = "log loss"
    decision_confidence = 0.9
    label_shift_confidence = ((0, 0.9), (15, 0.95))

    def output_units(self, featurizer: Featurizer) -> int:
        return len(featurizer.classes_)

    def training_target(self, featurizer: Featurizer, target: np.ndarray) -> np.ndarray:
        return np.asarray(target, dtype=np.int64)

    def record_loss(self, network: Any, outputs: Any, target: Any,
                    label_noise: Any = None) -> Any:
        import torch

        if label_noise is None:
            return torch.nn.functional.cross_entropy(outputs, target, reduction="none")
        keep, flip = label_noise  # per record; (1, 0) for a label released as it is
        chosen = torch.softmax(outputs, dim=1).gather(1, target[:, None]).squeeze(1)
        return -torch.log(torch.clamp(flip + (keep - flip) * chosen, min=PROBABILITY_FLOOR))

    def predictions(self, network: Any, outputs: Any) -> Any:
        import torch

        return torch.softmax(outputs, dim=1)

    def metrics(self, predicted: np.ndarray, actual: np.ndarray) -> ClassificationMetrics:
        return classification_metrics(predicted, actual)

    def constant_prediction(self, featurizer: Featurizer, seen: np.ndarray,
                            n: int) -> np.ndarray:
        """The classes' frequencies in ``seen``, each counted once more (Laplace), so that a
        class ``seen`` lacks is not certain never to come."""
        counts = np.bincount(np.asarray(seen, np.int64), minlength=len(featurizer.classes_))
        return np.tile((counts + 1.0) / (counts.sum() + len(counts)), (n, 1))

    def record_errors(self, predicted: np.ndarray, actual: np.ndarray) -> np.ndarray:
        return _log_losses(predicted, np.asarray(actual, dtype=np.int64))

    def test_error(self, predicted: np.ndarray, actual: np.ndarray) -> float:
        return float(np.mean(self.record_errors(predicted, actual)))

    def personal_layers(self, featurizer: Featurizer, dense: list[tuple[np.ndarray, np.ndarray]],
                        ) -> list[tuple[np.ndarray, np.ndarray]]:
        *hidden, (weight, bias) = _float32(dense)
        classes = len(featurizer.classes_)
        last = ((weight / np.float32(HEAD_LOGIT_SCALE)).astype(np.float32),
                (bias / np.float32(HEAD_LOGIT_SCALE)).astype(np.float32))
        head = (np.full(classes, HEAD_LOGIT_SCALE, np.float32), np.zeros(classes, np.float32))
        return [*hidden, last, head]


def _float32(dense: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(np.asarray(w, np.float32), np.asarray(b, np.float32)) for w, b in dense]


REGRESSION = Regression()
CLASSIFICATION = Classification()


def task_for(schema: Schema) -> Task:
    """The task a schema describes: its target's kind decides."""
    target = schema.target
    if target is None:
        raise SchemaError(f"Schema {schema.name!r} has no field with role 'target', so it "
                          "describes no task; give one field role='target'.")
    if target.kind is Kind.NUMERIC:
        return REGRESSION
    if target.kind is Kind.CATEGORICAL:
        return CLASSIFICATION
    raise SchemaError(
        f"Target {target.name!r} is a {target.kind.value} field; a model learns a numeric "
        "target (regression) or a categorical one (classification).")
