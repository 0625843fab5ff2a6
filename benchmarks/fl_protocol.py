"""When does partial sharing beat federated learning? (issue 13: the protocol, every method
at a stated user-level privacy cost, its risk and its cost to a device).

The protocol (part 1) is built so that the question is open — the simulated-user
protocol of the other benchmarks (20 Boston users of about 14 training records,
a 30 % unbiased proxy) leaves sharing little to add. One protocol, every task
the SDK supports (``--task``; default all whose data is on the machine):

* **many users, power-law sizes**: ``--users`` (120) users, most with a handful
  of records, a few with hundreds;
* **a scarce, biased proxy**: the server's data is a small sample that misses
  a region or classes users hold;
* **users that differ**: their own scale (regression), label mix or hand;
* each user's records: 25 % test (at least one), of the rest 50 % shareable,
  the others never leave the device — as ``simulate_users`` does.

The tasks (:data:`TASKS`):

* **friedman** (regression): Friedman #2 (``load_friedman``, scikit-learn's
  documented generator), 6000 rows drawn from the seed, so the heterogeneity
  is known; target ``sqrt(x0² + (x1·x2 − 1/(x1·x3))²)`` + noise. The proxy is
  3 % of the rows, drawn only from ``x2 ≤ 0.6``: the server never sees the
  region where the targets are largest. User u holds ``min(300, ⌈3 ·
  U^(−1/1.2)⌉)`` records (a Pareto tail), one neighbourhood of x2 (users in
  random order take contiguous blocks of the rows sorted by x2), and an own
  scale factor U(0.7, 1.3) on the target.
* **adult** (tabular classification, income > 50K): 14 records per user on
  average (``simulate_classifier_users``: Pareto shape 1.2, at least 4), a
  label mix from Dirichlet(0.5); the proxy is 900 records of people aged 40
  or under — users of every age hold the rest.
* **digits** (images): scikit-learn's 8×8 digits, 9 per user on average, own
  label mix and own hand (rotation, stroke weight); the proxy is 90 unstyled
  images with no 7, 8 or 9.
* **wordnet-topics** (text): WordNet glosses by topic, 14 per user on
  average, own label mix; the proxy is 300 glosses of the first 7 of the 10
  topics.
* **synthetic** (the FedProx paper's Synthetic(1, 1),
  ``dmt_model.datasets.simulate_synthetic``): 60 inputs, 10 classes, 14
  records per user on average; every user labels with a model of its own
  around a centre of its own, so what the others hold teaches a user little;
  the proxy is 300 records of 5 further users. Its inputs are all sensitive:
  DMT's local-DP rows perturb all 60 of them and the label, and there is no
  k-anonymous row (no quasi-identifiers).

Every device first personalizes the proxy foundation on all its training
records with ``personalize()`` (the SDK's defaults: the personal head, a
per-user prior, the keep-or-discard rule). Each method then makes a new model
(DMT's retrained foundation, Flower's final global model), and the server
releases it as ``publish(validation_devices=)`` does by default, checked on
held-out devices (``run_loop``'s other gate, on the proxy's validation split, is
left out: the foundation trains on the whole proxy):

* **held-out users**: 25 % of the users (the SDK's ``run_loop`` default
  ``held_out_share``; at least 2 of 4 or more), drawn from the seed by the
  SDK's rule (``dmt_model.loop._hold_out``), the same users for every method,
  train no method: DMT's server keeps their packages out of retraining, Flower
  does not make them training (fit) clients. They are users like the others
  in every reported mean: they receive a released version and decide on it
  like everyone else.
* **the check**, the same function for every method:
  ``compare_on_devices(foundation, new model, held-out devices,
  confidence=0.9)`` (``ModelRegistry.publish``'s default
  ``device_confidence``), both versions personalized on each device as it
  would and compared with the device as the unit. For DMT a device's frame is
  what the server holds of it, its shared packages' records as received (a
  k-anonymous interval as its midpoint, a generalized category drawn from
  those it covers; images and texts as modified), as ``run_loop`` makes them;
  for Flower it is the held-out client's own training records on the device —
  in a Flower deployment this runs as federated evaluation on held-out
  clients; the computation is the same.
* **the release**, as ``publish`` decides by default: a version shown better
  is released with that claim, and every device adopts it unless its own
  records show it worse (``ADOPTION_RULE``, what ``adoption_rule_for`` grants
  such a release: the lower error wins, both scored out of fold). Any other
  (``checked``: ``"worse"`` or ``"not shown better"``) is not released: every
  user keeps what they held (their personal model of *nothing shared*;
  adopted 0 %), while the row still reports the version's own error, its
  training costs and its membership risk. With fewer than 2 held-out devices
  of 2 records (``"too few devices"``) the version is released without the
  claim, as ``run_loop`` does. Under DMT's local DP the server cannot check
  (its held-out packages are noisy: personalizing and scoring on them would
  not show what the signed claim says), so the held-out devices check
  instead (:func:`device_reports`, :mod:`dmt_model.version_check`): each
  personalizes both versions on its own records out of fold and reports one
  bit, "better", by randomized response at the row's user-level ε; the version
  is released with the claim if the reports show more than half of the devices
  better off (one-sided at 90 %: ``"devices report better"``), else without it
  (``"devices report not better"`` or ``"… worse"``), and devices then apply
  ``UNCHECKED_RULE``: the version must prove itself on their records at 99 %.

A device scores every one of its training records when adopting, for every
method (Flower's global model trained on all of a client's records). So every
method is measured as the model users hold in the end, with no method's
version granted more trust than the SDK would grant it. The methods:

* **nothing shared**: the proxy foundation (user-level ε = 0);
* **DMT**: the server retrains on proxy + every user's shareable records as
  they arrive — raw (no formal DP); for tabular tasks k-anonymous (k = 5,
  ``privacy_utility.share``: the plan fitted on the proxy, classes smaller
  than k quarantined) or under local DP at user-level ε ∈
  {1, 4, 8} (each user's :class:`~dmt_privacy.dp.PrivacyLedger` holds ε and
  the perturber charges it for the whole release, δ = 0;
  ``privacy_utility.share``);
* **FedAvg** and **FedProx** (no formal DP) and **DP-FedAvg** at user-level
  ε ∈ {1, 4, 8}, δ = 1e-5, on Flower (``dmt_model.federated``: Flower's own
  strategies and its server-side fixed-clipping DP wrapper, Opacus' RDP
  accountant; every training client trains on all its training records), from
  the same foundation.

Hyperparameters (part 4): ``--tune`` tunes every method by the same rule, on seeds
100 and 101, which are never reported, each trial run as the tables run a method
(the held-out check, then every device's decision) and scored by what the tables
report, users' mean per-user test error, ties broken by the new model's own:
FedAvg's local learning rate, FedProx's μ (at that rate),
DP-FedAvg's clip norm (at that rate, at each ε: first at ε = 4 on the grid, then at
ε = 1 and 8 from ε = 4's choice and a factor 3 either side), DMT's retraining
learning rate. Each gets three trials and, while its best trial is at an end of the
values tried, one more a step past that end, at most four more, so no method is held
at the edge of a grid too narrow for its task.
It writes ``federated_protocol_<task>_tuning.json``; the main run reads its
choices from there (and says so), or uses the same defaults for every method
and says they are untuned.

Scores: the task's per-user test error (``Task.test_error``: RMSE for the
regression, mean log loss for a classifier — the quantity the device's
keep-or-discard rule compares), averaged over users; classifiers also report
accuracy.

Risk (part 5): a membership-inference attack on every new model, released or not — DMT's
retrained foundation, Flower's global model — the same attack for all
(``dmt_model.membership_inference.attack_model``, Yeom et al.'s loss
threshold): the members are the user records the model was trained on (DMT:
the shared records of the users not held out, every user's under local DP;
FL: every training record of the training clients), the non-members every
user's test records, never trained on. The attacker's
advantage (TPR − FPR) with its 95 % confidence interval. Personal models
never leave the device and are not attacked.

Cost (part 6), per device, mean over users: bytes sent and received (DMT: its
sealed share package, as ``seal_package`` writes it, and each model version
as an ``.mlmodel``; FL: the proxy foundation as an ``.mlmodel``, which every
device personalizes first, then the trainable arrays each round it takes part
in, both ways, and the final model — Flower's own message framing not counted,
nor a held-out client's evaluation exchange), rounds, and CPU seconds of
on-device training (FL: local training in Flower's client, summed over
rounds; every method: the final
``personalize()``). A version not released is not downloaded or adopted:
its ``.mlmodel`` and the adoption's seconds are not counted.

Each row records, per seed, the check's outcome (``checked``: ``"better"``,
``"worse"``, ``"not shown better"``, ``"too few devices"``, or under local DP
``"devices report better"``, ``"… not better"`` or ``"… worse"``), its figures
(``device_check``: devices, their error before and after, t and the t it
needed; or the devices' reports: the estimated share better off and its
one-sided bounds), whether the version was released and the held-out users;
the table shows in how many seeds it was released.

Writes, per task, ``federated_protocol_<task>.json`` (with its
``protocol_version``: a file of another protocol is never continued with
``--first-seed`` nor redrawn or added to), ``….md`` (the README
table) and three plots (``…_utility.png``, ``…_cost.png``,
``…_membership.png``) into ``--output`` (default ``benchmarks/results``), after
every seed. Seeds run ``--jobs`` at a time (2), each in a process of its own with its own
Ray, and a seed's devices are personalized in ``--workers`` processes (1 with jobs, else 2);
neither changes a figure but the seconds.
Run: ``.venv/bin/python benchmarks/fl_protocol.py [--task T] [--seeds 5]``;
``--quick`` is one seed, 60 users and 10 FedAvg rounds, never written into
``benchmarks/results`` (into ``build/fl_protocol_quick`` instead), as is a run with
``--epochs N``, which caps the foundation's and DMT's retrainings' epochs (a smoke run);
``--tune`` the tuning
run. ``--methods`` runs some of the method families (:data:`METHODS`: ``dmt``,
``fedavg``, ``fedprox``, ``dp-fedavg``; default all) — e.g. ``--methods dmt fedavg``
on your own data — with *nothing shared* always run as the baseline; the table
and plots show the rows that ran.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dmt_model.datasets import SYNTHETIC_SCHEMA, load_friedman, simulate_synthetic
from dmt_model.datasets.classification import CLASSIFICATION_DATASETS, CLASSIFIER_TRAINING
from dmt_model.datasets.classifier_users import simulate_classifier_users
from dmt_model.datasets.regression import FRIEDMAN_SCHEMA
from dmt_model.datasets.users import SimulatedUser, Simulation
from dmt_model.federated.flower import ray_session
from dmt_model.foundation import TrainingConfig
from dmt_model.tasks import Task, task_for
from dmt_privacy.anonymity import release_classes
from dmt_privacy.errors import ValidationError
from dmt_privacy.schema import Schema

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmarks' helpers

from run_environment import differences, environment  # a sibling, on the path above

RESULTS = Path(__file__).resolve().parent / "results"
#: Where ``--quick`` writes unless ``--output`` says otherwise: never over the committed
#: results, which a one-seed run would replace.
QUICK_RESULTS = Path(__file__).resolve().parents[1] / "build" / "fl_protocol_quick"
TARGET = "y"
LOCATION = "x2"
EPSILONS = (1.0, 4.0, 8.0)
DELTA = 1e-5
K = 5  # the k of DMT's k-anonymous row (tabular tasks)
#: The share of users whose records train no method, on whose devices every method's new
#: version is checked (the SDK's ``run_loop`` default ``held_out_share``), and the check's
#: one-sided confidence (``ModelRegistry.publish``'s default ``device_confidence``).
HELD_OUT_SHARE = 0.25
DEVICE_CONFIDENCE = 0.9
#: How the server releases a method's new version (``personalize_users``' ``release``):
#: with the claim that held-out devices showed it better, without it, or not at all.
RELEASES = ("claimed", "unclaimed", "withheld")
#: The protocol the results follow; a JSON of another is never continued or added to.
PROTOCOL_VERSION = 3
PROTOCOL_CHANGE = ("3: DMT under local DP holds out the same quarter of users, whose devices "
                   "check its version themselves and report one randomized-response bit each "
                   "at the row's epsilon (dmt_model.version_check): released with the claim if "
                   "a majority is shown better off, else without it; "
                   "2: every method's new version is checked on held-out users (a quarter, "
                   "whose records train no method) and released with the claim only if "
                   "shown better, DMT under local DP without a check or the claim; "
                   "1 (unmarked): every version adopted under ADOPTION_RULE, unchecked")
#: The method families ``--methods`` chooses from; "nothing shared" always runs.
METHODS = ("dmt", "fedavg", "fedprox", "dp-fedavg")
TUNING_SEEDS = (100, 101)
#: Three trials per method (the same budget for every method), in this order.
GRID = {"dmt_learning_rate": (3e-4, 1e-3, 3e-3),
        "fedavg_learning_rate": (1e-3, 3e-3, 1e-2),
        "proximal_mu": (0.01, 0.1, 1.0),
        "clip_norm": (0.03, 0.1, 0.3)}
#: While a method's best trial is at an end of what it has tried, one more trial a step
#: beyond that end (:func:`beyond_edge`), at most this many: the same rule for every method.
EXTRA_TRIALS = 4


#: A trial's score: a number, or numbers compared in order (the first deciding, the next
#: breaking its ties), each lower better.
Score = float | tuple[float, ...]


def best_trial(scores: Mapping[float, Score]) -> float:
    """The value of the lowest score; a diverged, non-finite score is the worst."""
    def key(value: float) -> tuple[float, ...]:
        score = scores[value]
        return tuple(s if np.isfinite(s) else np.inf
                     for s in (score if isinstance(score, tuple) else (score,)))

    return min(scores, key=key)


def beyond_edge(scores: Mapping[float, Score]) -> float | None:
    """The next value to try when the best (lowest; a diverged, non-finite score is the
    worst) of ``scores`` is at an end of the values tried: one step past that end, at the
    ratio of its last two values, to one significant figure. None when the best is inside.

    >>> beyond_edge({1e-3: 3.0, 3e-3: 2.0, 1e-2: 1.0})
    0.03
    >>> beyond_edge({0.01: 1.0, 0.1: 2.0, 1.0: float("nan")})
    0.001
    >>> beyond_edge({0.03: 2.0, 0.1: 1.0, 0.3: 2.0}) is None
    True
    """
    values = sorted(scores)
    best = best_trial(scores)
    if best not in (values[0], values[-1]):
        return None
    edge, inner = (values[0], values[1]) if best == values[0] else (values[-1], values[-2])
    return float(f"{edge * edge / inner:.1g}")


def power_law_sizes(n_users: int, rng: np.random.Generator, *, alpha: float = 1.2,
                    n_min: int = 3, cap: int = 300) -> np.ndarray:
    """Records per user: ``min(cap, ⌈n_min · U^(−1/α)⌉)``, a Pareto tail."""
    return np.minimum(cap, np.ceil(n_min * rng.uniform(size=n_users) ** (-1 / alpha))).astype(int)


def open_protocol(data: pd.DataFrame, *, n_users: int = 120, proxy_fraction: float = 0.03,
                  proxy_region: float = 0.6, spread: float = 0.3, test_fraction: float = 0.25,
                  share_fraction: float = 0.5, seed: int = 0) -> Simulation:
    """The users and the server's proxy data of the regression task (see the module doc)."""
    rng = np.random.default_rng(seed)
    shuffled = data.iloc[rng.permutation(len(data))]
    eligible = shuffled[shuffled[LOCATION] <= proxy_region]
    proxy = eligible.iloc[:round(proxy_fraction * len(data))]
    pool = shuffled.drop(index=proxy.index)
    sizes = power_law_sizes(n_users, rng)
    if sizes.sum() > len(pool):
        raise ValidationError(f"{n_users} users need {sizes.sum()} records, the pool has "
                              f"{len(pool)}: generate more rows or use fewer users.")
    # Each user one neighbourhood of x2: users in random order take contiguous blocks of the
    # sorted rows, spread over the whole range.
    order = rng.permutation(n_users)
    stride = len(pool) / sizes.sum()
    ranked = pool.sort_values(LOCATION, kind="stable")
    starts = np.floor(np.concatenate([[0], np.cumsum(sizes[order])[:-1]]) * stride).astype(int)
    users = []
    for user_id, start in zip(order, starts, strict=True):
        records = ranked.iloc[start:start + sizes[user_id]].copy()
        factor = float(rng.uniform(1.0 - spread, 1.0 + spread))
        records[TARGET] = records[TARGET] * factor
        records = records.iloc[rng.permutation(len(records))]
        n_test = max(1, round(test_fraction * len(records)))
        test, train = records.iloc[:n_test], records.iloc[n_test:]
        n_share = round(share_fraction * len(train))
        users.append(SimulatedUser(int(user_id), factor, train.iloc[:n_share],
                                   train.iloc[n_share:], test))
    users.sort(key=lambda u: u.user_id)
    return Simulation(proxy=proxy, users=tuple(users), seed=seed, spread=spread)


def classifier_protocol(data: pd.DataFrame, *, target: str, unseen: Callable[[pd.DataFrame],
                        pd.Series], proxy_records: int, n_users: int = 120,
                        n_records: int = 1700, alpha: float = 0.5, image: str | None = None,
                        seed: int = 0) -> Simulation:
    """The users and proxy data of a classification task: ``n_users`` users whose record
    counts follow a power law (``simulate_classifier_users``, Pareto shape 1.2, at least 4
    each, ``n_records`` in all), each with their own label mix (Dirichlet(``alpha``)) and,
    for images, their own hand; the proxy is ``proxy_records`` records drawn from the
    remaining rows where ``unseen`` is false — a region or classes users hold and the
    server never sees."""
    sim = simulate_classifier_users(data, target=target, n_users=n_users, proxy_fraction=0.3,
                                    alpha=alpha, n_records=n_records, min_records=4,
                                    size_shape=1.2, image=image, seed=seed)
    seen = sim.proxy[~unseen(sim.proxy).to_numpy()]
    if len(seen) < proxy_records:
        raise ValidationError(f"The proxy needs {proxy_records} records outside the unseen "
                              f"part, the data has {len(seen)}: ask for fewer.")
    return replace(sim, proxy=seen.iloc[:proxy_records])


@dataclass(frozen=True)
class ProtocolTask:
    """One task of the protocol: its data, how its users and biased proxy are made, how its
    foundation trains, and which of DMT's protections apply to what it shares."""

    name: str
    title: str
    schema: Schema
    #: (seed, users) → the simulation
    simulate: Callable[[int, int], Simulation]
    #: the records the proxy never holds (the bias), and a phrase saying which
    unseen: Callable[[pd.DataFrame], pd.Series]
    bias: str
    config: TrainingConfig = field(default_factory=TrainingConfig)
    #: tabular data: DMT's ε rows (local DP on every field but those the schema declares
    #: insensitive, which are shared as they are) and k=5
    tabular: bool = True
    #: media: the modification a device applies before sharing (field → transformer)
    modifiers: Callable[[], Mapping[str, Any]] | None = None
    available: Callable[[], bool] = lambda: True

    @property
    def task(self) -> Task:
        return task_for(self.schema)

    @property
    def target(self) -> str:
        return next(f.name for f in self.schema.by_role("target"))

    def files(self, suffix: str) -> str:
        return f"federated_protocol_{self.name}{suffix}"


def friedman_users(seed: int, n_users: int, *, spread: float = 0.3) -> Simulation:
    """The regression task's simulation; ``spread``: how far each user's target factor may
    lie from 1 (0: users whose targets follow the proxy's function, ``adoption.py
    --spread``)."""
    return open_protocol(load_friedman(6000, seed=seed), n_users=n_users, seed=seed,
                         spread=spread)


def _classifier(name: str, unseen: Callable[[pd.DataFrame], pd.Series], proxy_records: int,
                records_per_user: float) -> Callable[[int, int], Simulation]:
    dataset = CLASSIFICATION_DATASETS[name]

    def simulate(seed: int, n_users: int) -> Simulation:
        return classifier_protocol(dataset.load(), target=dataset.schema.target.name,
                                   unseen=unseen, proxy_records=proxy_records, n_users=n_users,
                                   n_records=round(records_per_user * n_users),
                                   image=dataset.style_field, seed=seed)
    return simulate


def _adult_unseen(frame: pd.DataFrame) -> pd.Series:
    return frame["age"] > 40


def _digits_unseen(frame: pd.DataFrame) -> pd.Series:
    return frame["digit"].isin([7, 8, 9])


TOPICS_UNSEEN = 3  # the proxy lacks the last three topics


def _topics_unseen(frame: pd.DataFrame) -> pd.Series:
    topics = CLASSIFICATION_DATASETS["wordnet-topics"].schema.target.categories
    return frame["topic"].isin(list(topics)[-TOPICS_UNSEEN:])


#: Synthetic(α, β)'s knobs (the FedProx paper's Synthetic(1, 1)): every user labels with a
#: model of its own around its own centre.
SYNTHETIC_ALPHA_BETA = (1.0, 1.0)


def _synthetic(seed: int, n_users: int) -> Simulation:
    return simulate_synthetic(*SYNTHETIC_ALPHA_BETA, n_users=n_users, seed=seed)


def _every_record(frame: pd.DataFrame) -> pd.Series:
    """Synthetic(α, β): the proxy's users are none of the simulated users, so no user's
    labelling model or centre is in it — every user record is outside what it covers."""
    return pd.Series(True, index=frame.index)


TASKS: dict[str, ProtocolTask] = {task.name: task for task in (
    ProtocolTask("friedman", "Friedman #2 regression", FRIEDMAN_SCHEMA, friedman_users,
                 lambda frame: frame[LOCATION] > 0.6,
                 "no record with x2 > 0.6, where the targets are largest"),
    ProtocolTask("adult", "Adult income classification", CLASSIFICATION_DATASETS["adult"].schema,
                 _classifier("adult", _adult_unseen, 900, 14), _adult_unseen,
                 "no one over 40", CLASSIFIER_TRAINING,
                 available=CLASSIFICATION_DATASETS["adult"].available),
    ProtocolTask("digits", "handwritten digits (images)", CLASSIFICATION_DATASETS["digits"].schema,
                 _classifier("digits", _digits_unseen, 90, 9), _digits_unseen,
                 "no 7, 8 or 9, and no user's hand", CLASSIFIER_TRAINING, tabular=False,
                 modifiers=CLASSIFICATION_DATASETS["digits"].modifiers),
    ProtocolTask("wordnet-topics", "WordNet topics (text)",
                 CLASSIFICATION_DATASETS["wordnet-topics"].schema,
                 _classifier("wordnet-topics", _topics_unseen, 300, 14), _topics_unseen,
                 f"none of the last {TOPICS_UNSEEN} topics",
                 CLASSIFICATION_DATASETS["wordnet-topics"].config, tabular=False,
                 modifiers=CLASSIFICATION_DATASETS["wordnet-topics"].modifiers,
                 available=CLASSIFICATION_DATASETS["wordnet-topics"].available),
    ProtocolTask("synthetic", "Synthetic(1, 1) classification",
                 SYNTHETIC_SCHEMA, _synthetic, _every_record,
                 "300 records of 5 other users: no user's own model or centre",
                 CLASSIFIER_TRAINING),
)}


def describe(sim: Simulation, task: ProtocolTask) -> dict:
    sizes = np.array([len(u.train) + len(u.test) for u in sim.users])
    held = pd.concat([u.train for u in sim.users])
    return {
        "users": len(sim.users), "proxy_records": len(sim.proxy),
        "user_records": int(sizes.sum()),
        "records_per_user": {"min": int(sizes.min()), "median": float(np.median(sizes)),
                             "mean": float(sizes.mean()), "max": int(sizes.max()),
                             "share_of_records_in_top_10pct_users": float(
                                 np.sort(sizes)[::-1][:max(1, len(sizes) // 10)].sum()
                                 / sizes.sum())},
        "users_with_at_most_5_records": int((sizes <= 5).sum()),
        "proxy_bias": task.bias,
        "user_training_records_the_proxy_never_covers": float(task.unseen(held).mean()),
    }


def user_scores(task: Task, predicted: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    """One user's test error (the task's: RMSE or log loss) and, for a classifier, accuracy."""
    scores = {"error": task.test_error(predicted, actual)}
    if task.kind == "classification":
        scores["accuracy"] = float(np.mean(np.argmax(predicted, axis=1) == actual))
    return scores


# --- hyperparameters ------------------------------------------------------------------
def settings_from(output: Path, task: ProtocolTask) -> dict[str, Any]:
    """The tuned choices of ``--tune`` for ``task`` if its file is in ``output`` (or
    benchmarks/results), else the defaults, marked untuned. A file written before DP-FedAvg
    trained at FedAvg's chosen rate has no ``dp_fedavg_learning_rate``: its runs keep the
    default, as they ran; one written before the clip was tuned at each ε has no
    ``clip_norm_by_epsilon``, and every ε keeps its ``clip_norm`` (:func:`clip_at`)."""
    defaults = {"dmt_learning_rate": 1e-3, "fedavg_learning_rate": 1e-3, "proximal_mu": 0.1,
                "dp_fedavg_learning_rate": 1e-3, "clip_norm": 0.1, "tuned": False}
    for folder in (output, RESULTS):
        path = folder / task.files("_tuning.json")
        if path.exists():
            return {**defaults, **json.loads(path.read_text())["chosen"], "tuned": True}
    return defaults


def clip_at(settings: dict[str, Any], epsilon: float) -> float:
    """DP-FedAvg's clip norm at user-level ``epsilon``: the one tuned at that ε, else
    ``clip_norm`` (tuned at ε = 4, or the default).

    >>> clip_at({"clip_norm": 3.0, "clip_norm_by_epsilon": {"1": 0.9}}, 1.0)
    0.9
    >>> clip_at({"clip_norm": 3.0}, 1.0)
    3.0
    """
    return settings.get("clip_norm_by_epsilon", {}).get(f"{epsilon:g}", settings["clip_norm"])


def fl_strategies(settings: dict[str, Any], seed: int, rounds: int,
                  foundation: Any) -> tuple[Any, Any, Any]:
    """FedAvg, FedProx and a DP-FedAvg maker at user-level ε, with ``settings``. DP-FedAvg
    exchanges the last two dense layers (all of them if ``foundation`` has fewer)."""
    from dataclasses import asdict

    import torch
    from federated_baseline import DP_FEDAVG, FEDAVG

    from dmt_model.federated import DPFedAvg, FedProx

    fedavg = replace(FEDAVG, rounds=rounds, seed=seed,
                     local_learning_rate=settings["fedavg_learning_rate"])
    fedprox = FedProx(**asdict(fedavg), proximal_mu=settings["proximal_mu"])

    layers = sum(isinstance(m, torch.nn.Linear) for m in foundation.network.dense)
    private = replace(DP_FEDAVG, seed=seed,
                      local_learning_rate=settings["dp_fedavg_learning_rate"],
                      trainable_layers=min(DP_FEDAVG.trainable_layers or layers, layers))

    def dp(epsilon: float) -> Any:  # noise seeded: a seed's figures repeat (NOT secure, warns)
        return DPFedAvg(private, clip_norm=clip_at(settings, epsilon), target_epsilon=epsilon,
                        delta=DELTA, random_state=seed)

    return fedavg, fedprox, dp


def federated(sim: Simulation, strategy: Any, foundation: Any) -> Any:
    from dmt_model.federated import run_federated

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Flower's and Ray's notes
        return run_federated(sim, strategy, foundation=foundation)


def foundation_for(sim: Simulation, task: ProtocolTask, seed: int) -> Any:
    from dmt_model.foundation import train_foundation

    return train_foundation(sim.proxy, task.schema, replace(task.config, seed=seed))


def modified(sim: Simulation, task: ProtocolTask, seed: int) -> list[Any]:
    """Each user's shareable records after the device's modification (media tasks). A
    modification that draws at random (synonyms) draws from the seed and the user, as the
    local-DP rows draw their noise, so that a seed's row reproduces; a device draws from
    its own source (the modifiers' default)."""
    from dmt_model.server.retrain import SharedBatch

    assert task.modifiers is not None
    batches = []
    for user in sim.users:
        records = user.shareable.copy()
        for name, transformer in task.modifiers().items():
            draws = [key for key in transformer.get_params()  # (a Pipeline's steps' too)
                     if key == "random_state" or key.endswith("__random_state")]
            # (the first from [seed, user] alone, as the results of 4 December, 22:48, were
            # drawn; numpy drops a seed's trailing zeros, so user 0's is the seed's own)
            transformer.set_params(**{key: np.random.default_rng([seed, user.user_id]
                                                                 + [i] * (i > 0))
                                      for i, key in enumerate(draws)})
            records[name] = list(transformer.transform(list(records[name])))
        batches.append(SharedBatch(records, package_id=str(user.user_id)))
    return batches


def held_out_users(sim: Simulation, seed: int) -> frozenset[int]:
    """The ids of the users whose records train no method in this seed, on whose devices
    every method's new version is checked: :data:`HELD_OUT_SHARE` of the users, drawn from
    ``seed`` by the SDK's own rule (``dmt_model.loop._hold_out``: at least 2 of 4 or more,
    in the order of the users' ids)."""
    from dmt_model.loop import _hold_out

    return frozenset(_hold_out({u.user_id: u.user_id for u in sim.users}, HELD_OUT_SHARE,
                               seed))


def split_held_out(sim: Simulation, batches: list[Any], held_out: frozenset[int],
                   featurizer: Any, seed: int, *, k: int | None = None
                   ) -> tuple[list[Any], list[pd.DataFrame]]:
    """What the server received, split as ``run_loop`` splits it: the batches' records of
    users not in ``held_out`` (to retrain on), and one frame per held-out user with at least
    2 records received — their packages' records as plain records
    (``Featurizer.plain_released``: a k-anonymous interval's midpoint, a generalized
    category drawn from those it covers), as ``dmt_model.loop._held_out_devices`` makes
    them, in the order of the users' ids. A record's owner is read from its index label,
    which ``privacy_utility.share`` and :func:`modified` keep.

    ``k``: the records are k-anonymous, released in classes of k users; a class left with
    fewer than k users once the held-out users' records are out is not trained on, as
    ``policy_batches(exclude=)`` leaves such a cohort out in ``run_loop`` (the same rule:
    ``dmt_privacy.anonymity.release_classes`` over the schema's quasi-identifiers, each
    user one package)."""
    owner = {label: u.user_id for u in sim.users for label in u.shareable.index}
    if len(owner) != sum(len(u.shareable) for u in sim.users):
        raise ValidationError("The users' shareable records share index labels; the server "
                              "cannot tell whose package a record came in. Give each record "
                              "its own label.")
    training, frames = [], {}
    for batch in batches:
        owners = batch.records.index.map(owner).to_numpy()
        held = np.isin(owners, list(held_out))
        if (~held).any():
            training.append(replace(batch, records=batch.records[~held]))
        for user_id in sorted(set(owners[held].tolist())):
            frames.setdefault(user_id, []).append(featurizer.plain_released(
                batch.records[owners == user_id], hierarchies=batch.hierarchies, seed=seed))
    if k is not None and training:
        qis = [f.name for f in featurizer.schema.by_role("quasi-identifier")]
        whole = pd.concat([batch.records for batch in training])
        kept, _ = release_classes(whole.assign(_owner=whole.index.map(owner).to_numpy()), qis,
                                  k, package_column="_owner")
        training = [replace(batch, records=batch.records[batch.records.index.isin(kept.index)])
                    for batch in training]
        training = [batch for batch in training if len(batch.records)]
    devices = [pd.concat(frames[u], ignore_index=True) for u in sorted(frames)]
    return training, [records for records in devices if len(records) >= 2]


def dmt_model_for(sim: Simulation, task: ProtocolTask, foundation: Any, how: dict[str, Any],
                  seed: int, learning_rate: float, *, held_out: frozenset[int] = frozenset()
                  ) -> tuple[Any, list[Any], dict, list[pd.DataFrame]]:
    """DMT's retrained foundation from the users' shareable records as the server receives
    them (``how``: ``{}`` raw, ``{"epsilon": ε}`` local DP at user-level ε, ``{"k": k}``
    k-anonymous, ``{"modified": True}`` after the device's modification), the packages of
    the ``held_out`` users kept out of retraining; the batches the server received (every
    user's), what was lost, and the held-out devices' frames to check it on
    (:func:`split_held_out`)."""
    from privacy_utility import share

    from dmt_model.server.retrain import retrain_foundation

    if how.get("modified"):
        batches, info = modified(sim, task, seed), {}
    else:
        batches, info = share(sim, seed=seed, schema=task.schema, **how)
    training, devices = split_held_out(sim, batches, held_out, foundation.featurizer, seed,
                                       k=how.get("k"))
    config = replace(task.config, seed=seed, learning_rate=learning_rate)
    return retrain_foundation(foundation, sim.proxy, training, config), batches, info, devices


def device_check(previous: Any, candidate: Any, devices: list[pd.DataFrame]) -> dict[str, Any]:
    """The server's check of a new version on held-out devices, the same for every method:
    ``compare_on_devices`` (previous = the foundation, candidate = the new version, both
    updatable as ``personalize_users`` builds them; the device as the unit, one-sided at
    :data:`DEVICE_CONFIDENCE`), and what ``ModelRegistry.publish`` with
    ``validation_devices=`` decides from it by default: ``"better"`` (published with the
    claim), else ``"worse"`` (its error higher and the t-test significant the other way, a
    figure not finite, or a version that predicts NaN or far outside the target's bounds,
    which ``compare_on_devices`` refuses with its reason, kept as ``"refused"``: fail
    closed) or ``"not shown better"`` (both refused). With fewer
    than 2 devices of 2 records, ``"too few devices"``: ``run_loop`` then publishes the
    version without the claim. ``devices`` are DMT's held-out packages as the server holds
    them, or a Flower client's own training records — in a Flower deployment this runs as
    federated evaluation on held-out clients, each device personalizing and scoring both
    versions on its records; the computation is the same function."""
    from dmt_model.coreml import UpdateSettings, build_spec
    from dmt_model.personalize import compare_on_devices
    from dmt_privacy.errors import ModelFileError

    usable = sum(len(records) >= 2 for records in devices)
    if usable < 2:
        return {"checked": "too few devices", "devices": usable}
    try:
        found = compare_on_devices(build_spec(previous, updatable=UpdateSettings()),
                                   build_spec(candidate, updatable=UpdateSettings()), devices,
                                   confidence=DEVICE_CONFIDENCE)
    except ModelFileError as exc:  # it predicts NaN or far off: refused, as publish() would
        return {"checked": "worse", "devices": usable, "refused": str(exc)}
    checked = "worse" if found.worse else "better" if found.better else "not shown better"
    return {"checked": checked, "devices": found.devices, "error_before": found.error_before,
            "error_after": found.error_after, "t": found.t, "t_needed": found.needed}


def device_reports(previous: Any, candidate: Any, devices: list[pd.DataFrame], epsilon: float,
                   seed: int) -> dict[str, Any]:
    """The held-out devices' own check of a version retrained under local DP, as the SDK
    runs it (:mod:`dmt_model.version_check`) but for whom it asks: the version signed and
    verified as a device verifies it, each device with at least 2 rows of its own (none
    of which trained the version) reporting by
    :func:`~dmt_model.version_check.check_version` (all of them at once:
    ``check_version_many``) whether it is better than ``previous`` once personalized —
    one bit, by randomized response at ``epsilon`` (seeded here, for reproducible tables)
    — and the server's tally, one-sided at :data:`DEVICE_CONFIDENCE`: ``"devices report
    better"`` (released with the claim),
    else ``"devices report worse"`` or ``"devices report not better"`` (without it); with
    fewer devices than could ever show it better (``reports_needed``: 4), none reports and
    it is ``"too few devices"``. Each device asked gets one token for the check
    (``VersionCheckIssuer``), and the tally counts only reports that carry one. The held-out
    devices share nothing (``run_seed``): the report is all they send, and its ε all they
    spend. ``run_loop`` asks every held-out device since 4 December, and one with fewer than
    2 distinct records reports "not better"; this asks only those with 2 rows or more (two
    copies of one record still report "not better"), as the committed tables were
    measured. Asking all would add such reports and make a claim rarer."""
    from dmt_model.coreml import UpdateSettings, build_spec
    from dmt_model.coreml._spec import spec_bytes
    from dmt_model.version_check import (
        VersionCheckIssuer,
        check_version_many,
        reports_needed,
        request_version_check_token,
        seal_version_check,
    )
    from dmt_privacy.dp import UNACCOUNTED, InsecureRandomnessWarning
    from dmt_privacy.release import generate_release_key, sign_release, verify_release
    from dmt_privacy.seal import generate_server_key

    usable = [records for records in devices if len(records) >= 2]
    if len(usable) < reports_needed(DEVICE_CONFIDENCE):  # they could never show it better
        return {"checked": "too few devices", "devices": len(usable)}
    key = generate_release_key()
    model = spec_bytes(build_spec(candidate, updatable=UpdateSettings()))
    issuer = VersionCheckIssuer(version=2, sha256=hashlib.sha256(model).hexdigest(),
                                baseline=1, epsilon=epsilon)
    release = verify_release(  # the release names the check's key and ε, as the SDK's does
        sign_release(model, key, version=2, schema_id=candidate.featurizer.schema.schema_id,
                     version_check=issuer.announcement),
        model, [key.verify_key()], installed_version=1)
    before = build_spec(previous, updatable=UpdateSettings())
    tokens = []
    for i, _ in enumerate(usable):  # each device asked gets one token for this check
        pending = request_version_check_token(release, issuer.public_key, epsilon=epsilon)
        tokens.append(pending.finalize(issuer.ask(pending.body, device=f"device-{i}"))[0])
    with warnings.catch_warnings():  # seeded randomized response: reproducible, not secure
        warnings.simplefilter("ignore", InsecureRandomnessWarning)
        checks = check_version_many(release, before, usable, ledgers=[UNACCOUNTED] * len(usable),
                                    epsilon=epsilon, random_states=[seed * 1000 + i for i
                                                                    in range(len(usable))],
                                    tokens=tokens)
    tally = issuer.tally(checks, confidence=DEVICE_CONFIDENCE)
    checked = ("devices report better" if tally.better else "devices report worse"
               if tally.worse else "devices report not better")
    sealed = seal_version_check(checks[0], generate_server_key().public_key())
    return {"checked": checked, "devices": tally.devices, "share_better": tally.share_better,
            "lower": tally.lower, "upper": tally.upper, "epsilon": tally.epsilon,
            "report_bytes": len(sealed)}


#: What the server does with a version after :func:`device_check` or :func:`device_reports`
#: (``checked``), as ``personalize_users``' ``release``.
RELEASE_AFTER = {"better": "claimed", "worse": "withheld", "not shown better": "withheld",
                 "too few devices": "unclaimed", "devices report better": "claimed",
                 "devices report not better": "unclaimed",
                 "devices report worse": "unclaimed"}


def released_error(model: Any, sim: Simulation, task: ProtocolTask) -> float:
    """Mean per-user test error of ``model`` itself (before any personalization)."""
    featurizer = model.featurizer
    return float(np.mean([task.task.test_error(model.predict(u.test),
                                               featurizer.target_values(u.test, dtype=float))
                          for u in sim.users]))


@dataclass(frozen=True)
class TuningSeed:
    """One tuning seed as every trial on it starts: its users, the proxy foundation, each
    user's personal model of it (what *nothing shared* leaves them) and the held-out users."""

    seed: int
    sim: Simulation
    foundation: Any
    current: list[bytes]
    held_out: frozenset[int]


def fl_clients(sim: Simulation, held_out: frozenset[int]
               ) -> tuple[Simulation, list[pd.DataFrame]]:
    """Flower's training clients (every user but the held-out ones) and the held-out
    devices' records its new version is checked on."""
    return (replace(sim, users=tuple(u for u in sim.users if u.user_id not in held_out)),
            [u.train for u in sim.users if u.user_id in held_out])


def users_outcome(version: Any, devices: list[pd.DataFrame], at: TuningSeed,
                  task: ProtocolTask, workers: int = 1) -> tuple[float, float]:
    """A trial's score on one tuning seed, as the tables score a method: the mean per-user
    test error of what users hold once ``version`` is checked on the held-out ``devices``
    and each device decides (:func:`run_seed`), then the new model's own error, which
    breaks ties (a version withheld leaves every user as they were, whatever its
    setting)."""
    check = device_check(at.foundation, version, devices)
    users = personalize_users(version, at.sim, task, at.current, previous=at.foundation,
                              release=RELEASE_AFTER[check["checked"]], workers=workers)
    return float(users["error"]), released_error(version, at.sim, task)


#: What a trial's score is, as the tuning file records it.
TUNING_SCORE = ("users' mean per-user test {error} once the version is checked on the "
                "held-out devices and each device decides (what the tables report), ties "
                "broken by the new model's own; each the mean over the tuning seeds")


def tune(args: argparse.Namespace, task: ProtocolTask) -> None:
    """Three trials per method on TUNING_SEEDS (and up to EXTRA_TRIALS more past an end of
    the grid), each run as the tables run it (the held-out check, then every device's
    decision) and scored by what users hold (:func:`users_outcome`); writes the trials and
    the choices to the task's tuning file."""
    started = time.perf_counter()
    workers = args.workers
    setups = []
    for seed in TUNING_SEEDS:
        sim = task.simulate(seed, args.users)
        foundation = foundation_for(sim, task, seed)
        current = personalize_users(foundation, sim, task, workers=workers)["personal_models"]
        setups.append(TuningSeed(seed, sim, foundation, current, held_out_users(sim, seed)))

    def score(run: Callable[[TuningSeed], tuple[float, float]]) -> tuple[float, float]:
        outcomes = [run(at) for at in setups]
        return (statistics.mean(users for users, _ in outcomes),
                statistics.mean(new for _, new in outcomes))

    chosen: dict[str, Any] = {}
    trials: dict[str, dict[str, dict[str, float]]] = {}

    def pick(name: str, run: Callable[[float, TuningSeed], tuple[float, float]],
             grid: tuple[float, ...] | None = None) -> float:
        scores: dict[float, tuple[float, float]] = {}

        def trial(value: float) -> None:
            scores[value] = score(lambda at: run(value, at))
            print(f"{name}={value:g}: users {scores[value][0]:.4f}, new model "
                  f"{scores[value][1]:.4f} ({time.perf_counter() - started:.0f} s)",
                  flush=True)

        for value in grid or GRID[name]:
            trial(value)
        for _ in range(EXTRA_TRIALS):
            if (value := beyond_edge(scores)) is None or value in scores:
                break
            trial(value)
        trials[name] = {f"{v:g}": {"users": scores[v][0], "new_model": scores[v][1]}
                        for v in sorted(scores)}
        return best_trial(scores)

    def dmt(lr: float, at: TuningSeed) -> tuple[float, float]:
        model, _, _, devices = dmt_model_for(at.sim, task, at.foundation, {}, at.seed, lr,
                                             held_out=at.held_out)
        return users_outcome(model, devices, at, task, workers)

    chosen["dmt_learning_rate"] = pick("dmt_learning_rate", dmt)
    base = settings_from(args.output, task)

    def fl(at: TuningSeed, which: int, epsilon: float = 4.0,
           **overrides: float) -> tuple[float, float]:
        settings = {**base, **chosen, **overrides}
        if "clip_norm" in overrides:  # the trial's clip, not the one an earlier file tuned
            settings.pop("clip_norm_by_epsilon", None)  # at this ε (clip_at prefers it)
        strategies = fl_strategies(settings, at.seed, args.rounds, at.foundation)
        strategy = strategies[2](epsilon) if which == 2 else strategies[which]
        clients, evaluators = fl_clients(at.sim, at.held_out)
        return users_outcome(federated(clients, strategy, at.foundation).foundation,
                             evaluators, at, task, workers)

    chosen["fedavg_learning_rate"] = pick("fedavg_learning_rate",
                                          lambda v, at: fl(at, 0, fedavg_learning_rate=v))
    chosen["proximal_mu"] = pick("proximal_mu", lambda v, at: fl(at, 1, proximal_mu=v))
    # DP-FedAvg trains at FedAvg's chosen rate, as FedProx does, and its clip is tuned there,
    # at each ε: the noise grows as ε falls, so the clip that balances it moves (text's and
    # Synthetic's clip tuned at ε = 4 left ε = 1's model withheld in 4 seeds of 5)
    chosen["dp_fedavg_learning_rate"] = chosen["fedavg_learning_rate"]
    chosen["clip_norm"] = at_4 = pick("clip_norm", lambda v, at: fl(at, 2, clip_norm=v))
    by_epsilon = {4.0: at_4}
    for epsilon in (e for e in EPSILONS if e != 4.0):
        around = tuple(float(f"{v:.1g}") for v in (at_4 / 3, at_4, at_4 * 3))
        by_epsilon[epsilon] = pick(f"clip_norm_epsilon_{epsilon:g}",
                                   lambda v, at, e=epsilon: fl(at, 2, e, clip_norm=v), around)
    chosen["clip_norm_by_epsilon"] = {f"{e:g}": by_epsilon[e] for e in sorted(by_epsilon)}
    result = {"task": task.name, "seeds": list(TUNING_SEEDS),
              "grid": {k: list(v) for k, v in GRID.items()}, "extra_trials": EXTRA_TRIALS,
              "score": TUNING_SCORE.format(error=task.task.error_name),
              "trials": trials, "chosen": chosen, "users": args.users, "rounds": args.rounds,
              "seconds": time.perf_counter() - started}
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / task.files("_tuning.json")
    path.write_text(json.dumps(result, indent=1))
    print(f"chosen {chosen}; wrote {path} ({result['seconds']:.0f} s)")


# --- one seed -------------------------------------------------------------------------
def _devices(jobs: list[tuple]) -> list[tuple[bytes, bool, float, dict, dict]]:
    """:func:`_decided`. Devices decided together keep the held version's held-out errors
    for the next method's version (``_keeping_held_out_errors``: a device deciding on a
    new version re-personalizes the version it holds on its folds, the same for every
    method, about a third of an adoption); a device decided alone (one job: a device
    timed) computes all that a device computes, so that its seconds are a device's."""
    from dmt_model.personalize import _keeping_held_out_errors

    with _keeping_held_out_errors() if len(jobs) > 1 else contextlib.nullcontext():
        return _decided(jobs)


def _decided(jobs: list[tuple]) -> list[tuple[bytes, bool, float, dict, dict]]:
    """The decisions of devices that share a model, its previous version, a task and how the
    model was released (runs in a worker process): for each, the personal model it holds
    after ``personalize()`` (no current model) or ``adopt_new_version`` against its current
    one (personalized from the previous version; every training record scored, as for every
    method) under the rule the release earned — ``"claimed"`` (shown better on held-out
    devices): ``ADOPTION_RULE``; ``"unclaimed"`` (released without that claim):
    ``UNCHECKED_RULE``; ``"withheld"`` (not released): no device sees it and each keeps its
    current model — whether it moved, the CPU seconds of the whole call, and the scores of
    the model and of the one held. The devices are decided together
    (``personalized_many``, ``adopted_many``), each exactly as alone; one job is one device,
    and its seconds are its own."""
    from dmt_model.coreml import predict_frame
    from dmt_model.coreml._spec import spec_bytes, spec_from_bytes
    from dmt_model.personalize import (
        ADOPTION_RULE,
        UNCHECKED_RULE,
        adopted_many,
        featurizer_of,
        personalized_many,
    )

    spec_data, _, previous_data, _, _, task, release = jobs[0]
    assert all(job[0] is spec_data or job[0] == spec_data for job in jobs)
    assert all(job[6] == release for job in jobs)
    spec = spec_from_bytes(spec_data)
    featurizer = featurizer_of(spec)
    actual = [featurizer.target_values(job[4], dtype=float) for job in jobs]
    released = [user_scores(task, predict_frame(spec, job[4]), y)
                for job, y in zip(jobs, actual, strict=True)]
    started = time.process_time()
    held: list[Any] = [None] * len(jobs)
    moved = [False] * len(jobs)
    if jobs[0][1] is None:
        outcomes = personalized_many(spec, [job[3] for job in jobs])
        movable = list(range(len(jobs)))
    else:
        previous = None if previous_data is None else spec_from_bytes(previous_data)
        currents = [spec_from_bytes(job[1]) for job in jobs]
        # A version the server did not release reaches no device: each keeps what it holds.
        movable = [] if release == "withheld" else [i for i in range(len(jobs))
                                                    if len(jobs[i][3]) >= 2]
        held = currents  # too few records to score, or nothing released: keep
        # The rule the release earned, as adoption_rule_for reads it from a signed release:
        # ADOPTION_RULE only for a version shown better on the held-out devices (run_seed's
        # device_check, the same for every method, or under DMT's local DP the devices' own
        # reports), UNCHECKED_RULE (the version must prove itself on the device's records at
        # 99 %) for one released without that claim — reports that did not show it better,
        # or too few held-out devices to check on (run_loop publishes it without the
        # claim). Every training record is scored, for
        # every method: Flower's global model trained on all of a client's records, so the
        # SDK's guard (records a version trained on are never scored, ``shared_records=``)
        # would leave an FL device nothing to score.
        rule = {"claimed": ADOPTION_RULE, "unclaimed": UNCHECKED_RULE}.get(release)
        outcomes = adopted_many(spec, [currents[i] for i in movable],
                                [jobs[i][3] for i in movable], previous=previous,
                                rule=rule) if movable else []
    for i, (updated, result) in zip(movable, outcomes, strict=True):
        held[i], moved[i] = updated, bool(result.accepted)
    seconds = time.process_time() - started
    return [(spec_bytes(model) if i in movable else job[1], moved[i], seconds, scores,
             user_scores(task, predict_frame(model, job[4]), y))
            for i, (job, model, scores, y) in enumerate(zip(jobs, held, released, actual,
                                                             strict=True))]


#: One device in this many is decided and timed alone (:func:`personalize_users`). A device
#: alone costs about as much CPU as ten in a batch: one in ten timed was 40-45 % of the
#: personalizations' CPU (Friedman, 120 devices: 1.7 of 4.1 s; adoption 3.0 of 6.0 s), and
#: one in twenty, once the held version's errors were kept, 26 % of an adoption's (Adult,
#: 120 devices: 1.67 of 6.42 s). Three devices a row and seed, 15 a row, span the sizes.
TIMED_EVERY = 40


def _timed(sizes: list[int]) -> list[int]:
    """The devices timed alone (``sizes``: each one's number of training records, or 0 for a
    device that trains nothing): one of every :data:`TIMED_EVERY` that train, the middle one
    of each such share of them by size, so that the timed devices span every size; at
    least two when two or more train."""
    order = sorted((i for i, n in enumerate(sizes) if n), key=lambda i: -sizes[i])
    if not order:  # no device trains (a version not released): none to time
        return []
    # (at least two when two or more train: a line has a slope)
    strata = np.array_split(np.array(order, dtype=int),
                            min(len(order), max(2, -(-len(order) // TIMED_EVERY))))
    return sorted(int(part[len(part) // 2]) for part in strata if len(part))


def _device_seconds(sizes: list[int], seconds: dict[int, float]) -> list[float]:
    """Each device's CPU seconds on its own: measured for the devices timed alone
    (``seconds``), else the least-squares line through those against the records it trains
    on (0 for a device that trains nothing)."""
    x = [sizes[i] for i in seconds]
    line = np.polyfit(x, list(seconds.values()), 1) if len(set(x)) > 1 else (
        [0.0, float(np.mean(list(seconds.values())))] if seconds else [0.0, 0.0])
    return [seconds[i] if i in seconds else
            max(0.0, float(np.polyval(line, n))) if n else 0.0 for i, n in enumerate(sizes)]



#: numpy's BLAS threads in every process of a run (the run's own, each ``--jobs`` process and
#: each ``--workers`` process). A run keeps the cores busy with processes of its own, and a
#: second BLAS thread on the small matrices of a device's personalization spins for a core
#: another process needs: the text task, 2 seeds, ``--jobs 2``, took 322 s with numpy's
#: default (a thread a core) and 259 s with one, 23 % less CPU, every figure the same. A
#: device's CPU seconds (the process's, :func:`_devices`) then count its BLAS work on one
#: thread, as on one core (:meth:`TaskRun.timing` records it).
BLAS_THREADS = 1


def _one_blas_thread() -> Any:
    """Limit this process's BLAS to :data:`BLAS_THREADS`: the libraries loaded already
    (threadpoolctl; what it returns gives their threads back), and through
    ``OPENBLAS_NUM_THREADS`` those loaded later (scipy's own OpenBLAS) and those of the
    processes it starts (Flower's actors). A ``--jobs`` or ``--workers`` process keeps it
    for its life."""
    from threadpoolctl import threadpool_limits

    os.environ["OPENBLAS_NUM_THREADS"] = str(BLAS_THREADS)
    return threadpool_limits(limits=BLAS_THREADS, user_api="blas")


@contextlib.contextmanager
def _blas_threads_of_a_run() -> Iterator[None]:
    """:func:`_one_blas_thread` in the process that runs :func:`main`, while it runs; the
    caller's ``OPENBLAS_NUM_THREADS`` and the loaded libraries' threads after (a BLAS
    loaded during the run keeps one)."""
    before = os.environ.get("OPENBLAS_NUM_THREADS")
    try:
        with _one_blas_thread():
            yield
    finally:
        if before is None:
            os.environ.pop("OPENBLAS_NUM_THREADS", None)
        else:
            os.environ["OPENBLAS_NUM_THREADS"] = before


_POOLS: dict[int, Any] = {}


def _pool(workers: int) -> Any:
    """``workers`` processes for the devices' personalization (spawned once, reused)."""
    if workers not in _POOLS:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        _POOLS[workers] = ProcessPoolExecutor(max_workers=workers,
                                              mp_context=multiprocessing.get_context("spawn"),
                                              initializer=_one_blas_thread)
    return _POOLS[workers]


def personalize_users(model: Any, sim: Simulation, task: ProtocolTask,
                      current: list[bytes] | None = None, *, previous: Any | None = None,
                      release: str | None = None, workers: int = 1) -> dict[str, Any]:
    """What each user holds in the end, as an SDK device decides it: with no ``current``
    personal models, ``model`` personalized on all their training records
    (``personalize()``); otherwise what the server's ``release`` of ``model`` lets the
    device do with it against its ``current`` personal model, personalized from
    ``previous`` (both scored out of fold on every training record):

    * ``"claimed"``: released with the claim that it was shown better on held-out devices
      (:func:`device_check`): re-personalized and adopted unless the user's records show it
      worse (``ADOPTION_RULE``, what ``adoption_rule_for`` grants such a release);
    * ``"unclaimed"``: released without that claim (DMT under local DP, where the SDK holds
      out no devices, or too few held-out devices to check on): adopted only if the user's
      records show it better at 99 % (``UNCHECKED_RULE``);
    * ``"withheld"``: not released, since the check did not show it better: every user keeps
      their ``current`` model and none moves.

    Every user gets the same, held-out users included. Mean per-user test error (and
    accuracy) of ``model`` itself and of what users hold, the share of users who moved to
    it, the CPU seconds a device spent, and the personal models (as ``.mlmodel`` bytes).

    The devices are independent, and decided together in batches (``personalized_many``,
    ``adopted_many``: each exactly as alone), one batch per ``workers`` process; one device
    in :data:`TIMED_EVERY` (at least two), spread over the sizes, is decided and timed
    alone, and the others' CPU seconds are read off the line through those against the
    records a device trains on (a batch's seconds are not a device's). The result does not
    depend on ``workers``."""
    from dmt_model.coreml import UpdateSettings, build_spec
    from dmt_model.coreml._spec import spec_bytes

    if current is not None and release not in RELEASES:
        raise ValidationError(f"release must be one of {', '.join(RELEASES)} when devices "
                              f"hold a current model, got {release!r}.")
    data = spec_bytes(build_spec(model, updatable=UpdateSettings()))
    base = None if previous is None else spec_bytes(build_spec(previous,
                                                               updatable=UpdateSettings()))
    jobs = [(data, None if current is None else current[i], base, user.train, user.test,
             task.task, release) for i, user in enumerate(sim.users)]
    # A device trains nothing when it has too few records to score, or nothing to adopt.
    sizes = [0 if current is not None and (len(u.train) < 2 or release == "withheld")
             else len(u.train) for u in sim.users]
    timed = _timed(sizes)
    rest = sorted(set(range(len(jobs))) - set(timed), key=lambda i: -sizes[i])
    # Each worker's batch deals devices of every size, the biggest units of work first.
    units = sorted([[i] for i in timed] + [rest[w::workers] for w in range(workers)
                                           if rest[w::workers]],
                   key=lambda unit: -sum(sizes[i] for i in unit))
    if workers > 1:
        futures = [_pool(workers).submit(_devices, [jobs[i] for i in unit]) for unit in units]
        decided = [future.result() for future in futures]
    else:
        decided = [_devices([jobs[i] for i in unit]) for unit in units]
    outcomes: list[Any] = [None] * len(jobs)
    for unit, unit_outcomes in zip(units, decided, strict=True):
        for i, outcome in zip(unit, unit_outcomes, strict=True):
            outcomes[i] = outcome
    held, moved, _, plain, personal = zip(*outcomes, strict=True)
    seconds = _device_seconds(sizes, {i: outcomes[i][2] for i in timed})
    out = {f"{metric}{suffix}": float(np.mean([scores[metric] for scores in which]))
           for metric in plain[0] for suffix, which in (("", personal), ("_released", plain))}
    return out | {"moved": float(np.mean(moved)), "personalize_seconds": float(np.mean(seconds)),
                  "model_bytes": len(data), "personal_models": list(held)}


def membership(model: Any, members: pd.DataFrame, non_members: pd.DataFrame,
               seed: int) -> dict[str, Any]:
    """The same membership-inference attack on every released model."""
    from dmt_model.membership_inference import attack_model

    return attack_model(model, members, non_members, seed=seed).to_dict()


def sealed_sizes(sim: Simulation, batches: list[Any], schema: Schema) -> tuple[list[int], float]:
    """Each user's share package as ``seal_package`` writes it (bytes), and the mean CPU
    seconds of building and sealing it. One batch per user under local DP or modification
    (a DP receipt travels with it); raw and k-anonymous records are sized as the raw ones."""
    from dmt_privacy.package import PrivacyReceipt, SharePackage, seal_package
    from dmt_privacy.seal import generate_server_key

    key = generate_server_key().public_key()
    per_user = (list(zip([b.records for b in batches], [b.receipt for b in batches],
                         strict=True))
                if len(batches) == len(sim.users)
                else [(u.shareable, None) for u in sim.users])
    sizes, seconds = [], []
    columns = [f.name for f in schema]
    for records, receipt in per_user:
        started = time.process_time()
        package = SharePackage.create(schema.schema_id, records[columns],
                                      PrivacyReceipt(dp=receipt))
        sizes.append(len(seal_package(package, key)))
        seconds.append(time.process_time() - started)
    return sizes, float(np.mean(seconds))


def fl_cost(result: Any, base: Any, n_users: int, model_bytes: int,
            v1_bytes: int) -> dict[str, Any]:
    """Bytes a device exchanges with Flower (its trainable arrays each round it takes part,
    both ways; before that the proxy foundation it personalized first, ``v1_bytes``, as
    every method's device did; the final model as an .mlmodel to personalize,
    ``model_bytes``: 0 when it is not released) and its training seconds, mean over
    ``n_users`` users: the held-out ones take part in no round (``result``'s clients are the
    training users)."""
    import copy

    from dmt_model.federated.flower import trainable_parameters

    network = copy.deepcopy(result.foundation.network)
    arrays = sum(int(p.numel()) * 4 for p in trainable_parameters(network, base))
    taken = np.zeros(n_users)
    for r in result.rounds:
        taken[list(r.clients)] += 1
    return {"sent_bytes": float(taken.mean() * arrays),
            "received_bytes": float(v1_bytes + taken.mean() * arrays + model_bytes),
            "v1_counted": True,
            "rounds": len(result.rounds),
            "train_seconds": float(sum(r.client_seconds for r in result.rounds) / n_users)}


def dmt_rows(task: ProtocolTask, epsilons: tuple[float, ...]) -> list[tuple[str, dict, str]]:
    """DMT's sharing settings for ``task``: (row name, how, the guarantee)."""
    rows = [("DMT raw", {}, "no formal DP")]
    if task.tabular and task.schema.by_role("quasi-identifier"):
        rows.append((f"DMT k-anonymous k={K}", {"k": K},
                     f"k-anonymity (k = {K}) of the quasi-identifiers, no formal DP"))
    if task.tabular:
        rows += [(f"DMT local DP ε={e:g}", {"epsilon": e},
                  "local DP on the device (Laplace / randomized response, δ = 0), charged to "
                  "the user's ledger; the held-out users share nothing and report one "
                  "randomized-response bit at the same ε") for e in epsilons]
    else:
        rows.append(("DMT modified", {"modified": True},
                     "modified on the device (" + ", ".join(
                         repr(t) for t in task.modifiers().values()) + "), no formal DP"))
    return rows


def server_risk(task: ProtocolTask, seed: int, users: int,
                epsilons: tuple[float, ...]) -> dict[str, Any]:
    """anonymeter's singling-out, linkability and inference risk of what the server holds
    under each of DMT's tabular settings, on seed ``seed``'s users (the same records
    ``run_seed`` shares): target = the shared records before protection, control = the
    users' private records. ``{}`` when anonymeter's environment is missing."""
    from privacy_utility import anonymeter_risks, share

    sim = task.simulate(seed, users)
    received = {}
    for name, how, _ in dmt_rows(task, epsilons):
        batches, _ = share(sim, seed=seed, schema=task.schema, **how)
        received[name] = pd.concat([b.records for b in batches])
    return anonymeter_risks(pd.concat([u.shareable for u in sim.users]),
                            pd.concat([u.private for u in sim.users]), received, task.schema,
                            seed=seed) | {"seed": seed}


def risk_table(risk: dict[str, Any]) -> str:
    """The anonymeter section of a task's table."""
    def cell(value: dict[str, Any]) -> str:
        return f"{value['risk']:.2f} [{value['ci'][0]:.2f}, {value['ci'][1]:.2f}]"

    lines = ["| what the server holds | records | singling out | linkability | inference |",
             "|---|---|---|---|---|"]
    for name, case in risk["cases"].items():
        lines.append(f"| {name} | {case['released']} | {cell(case['singling_out'])} "
                     f"| {cell(case['linkability'])} | {cell(case['inference'])} |")
    settings = risk["settings"]
    return (f"\nanonymeter's risks (95 % CI) of what the server holds under each DMT setting, "
            f"seed {risk['seed']}: target = the {settings['target_records']} shared records "
            f"before protection, control = {settings['control_records']} records never "
            f"shared, {settings['n_attacks']} attacks; secret `{settings['secret']}`.\n\n"
            + "\n".join(lines) + "\n")


def run_seed(sim: Simulation, task: ProtocolTask, seed: int, *, rounds: int,
             epsilons: tuple[float, ...], settings: dict[str, Any], workers: int = 1,
             methods: tuple[str, ...] = METHODS, epochs: int | None = None
             ) -> dict[str, dict[str, Any]]:
    """One seed of every method family in ``methods`` (:data:`METHODS`), after the
    baseline "nothing shared": a row per method, in the order of the table.

    The users of :func:`held_out_users` train no method (DMT's server keeps their packages
    out of retraining, Flower does not make them fit clients); each method's new version is
    checked on their devices (:func:`device_check`) and reaches every user, held-out ones
    included, only as the check's outcome releases it (:data:`RELEASE_AFTER`). DMT under
    local DP is checked by the held-out devices' own reports (:func:`device_reports`), at
    the row's ε. ``epochs`` caps the epochs of the foundation's training and of every
    retraining (``--epochs``: a smoke run; ``None``, the task's own)."""
    if epochs is not None:
        task = replace(task, config=replace(task.config, epochs=min(epochs, task.config.epochs)))
    rows: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    foundation = foundation_for(sim, task, seed)
    held = personalize_users(foundation, sim, task, workers=workers)
    current = held.pop("personal_models")
    model_bytes = held["model_bytes"]
    tests = pd.concat([u.test for u in sim.users])
    held_out = held_out_users(sim, seed)
    rows["nothing shared"] = held | {
        "epsilon": 0.0, "guarantee": "nothing leaves the device", "sent_bytes": 0.0,
        "received_bytes": float(model_bytes), "rounds": 0,
        "device_seconds": held["personalize_seconds"], "membership": None,
        "wall_seconds": time.perf_counter() - started}  # with training the foundation
    started = time.perf_counter()

    reporters = [u.train for u in sim.users if u.user_id in held_out]

    def checked(version: Any, devices: list[pd.DataFrame] | None,
                epsilon: float | None = None) -> dict[str, Any]:
        """The check's record, and the release it earns (``epsilon``: the held-out devices'
        reports at that ε instead of the server's check on ``devices``)."""
        check = device_check(foundation, version, devices) if epsilon is None \
            else device_reports(foundation, version, reporters, epsilon, seed)
        outcome = check.pop("checked")
        return {"checked": outcome, "device_check": check or None,
                "released": RELEASE_AFTER[outcome] != "withheld"}

    def report(name: str, result: dict[str, Any]) -> None:
        """Print the row, and record the benchmark's wall time since the previous row: where
        a seed's time goes."""
        nonlocal started
        result["wall_seconds"] = time.perf_counter() - started
        started = time.perf_counter()
        print(f"  {task.name} seed {seed} {name}: {result['error']:.4g} "
              f"({result['error_released']:.4g} released "
              f"model, {result['checked']}, {result['moved']:.0%} adopted; "
              f"{result['wall_seconds']:.0f} s)", flush=True)

    for name, how, guarantee in dmt_rows(task, epsilons) if "dmt" in methods else ():
        # Under local DP the server's held-out packages would be noisy (they cannot show what
        # the signed claim says): the held-out devices share nothing and check on their own
        # records instead, each reporting one bit at the row's ε, so no user spends more.
        private = "epsilon" in how
        sharers = replace(sim, users=tuple(u for u in sim.users if u.user_id not in held_out)) \
            if private else sim
        model, batches, info, devices = dmt_model_for(sharers, task, foundation, how, seed,
                                                      settings["dmt_learning_rate"],
                                                      held_out=frozenset() if private
                                                      else held_out)
        check = checked(model, devices, how.get("epsilon"))
        release = RELEASE_AFTER[check["checked"]]
        sizes, seal_seconds = sealed_sizes(sharers, batches, task.schema)
        result = personalize_users(model, sim, task, current, previous=foundation,
                                   release=release, workers=workers)
        del result["personal_models"]
        members = pd.concat([u.shareable for u in sim.users if u.user_id not in held_out])
        rows[name] = result | check | {
            "held_out_users": sorted(held_out),
            "epsilon": info.get("user_epsilon"), "guarantee": guarantee,
            # v1, and the new version if it was released
            # under local DP the held-out devices send their sealed report instead
            "sent_bytes": float(np.mean(sizes)) if not private else float(
                (sum(sizes) + check["device_check"].get("report_bytes", 0) * len(held_out))
                / len(sim.users)),
            "received_bytes": (2.0 if check["released"] else 1.0) * model_bytes,
            "rounds": 1,
            "device_seconds": held["personalize_seconds"] + seal_seconds
            + result["personalize_seconds"],
            "membership": membership(model, members, tests, seed)}
        report(name, rows[name])
    fedavg, fedprox, dp = fl_strategies(settings, seed, rounds, foundation)
    clients, evaluators = fl_clients(sim, held_out)
    trained = pd.concat([u.train for u in clients.users])
    runs = [("FedAvg", fedavg, None)] if "fedavg" in methods else []
    runs += [("FedProx", fedprox, None)] if "fedprox" in methods else []
    runs += [(f"DP-FedAvg ε={e:g}", dp(e), e) for e in epsilons] if "dp-fedavg" in methods \
        else []
    for name, strategy, epsilon in runs:
        fl = federated(clients, strategy, foundation)
        check = checked(fl.foundation, evaluators)
        personal = personalize_users(fl.foundation, sim, task, current, previous=foundation,
                                     release=RELEASE_AFTER[check["checked"]], workers=workers)
        del personal["personal_models"]
        cost = fl_cost(fl, strategy.base, len(sim.users),
                       model_bytes if check["released"] else 0, model_bytes)
        rows[name] = personal | cost | check | {
            "held_out_users": sorted(held_out),
            "epsilon": fl.epsilon,
            "guarantee": "no formal DP" if epsilon is None else
            "central DP: Gaussian noise on the clipped sum of the users' updates (Flower), "
            "Opacus RDP accountant, δ = 1e-5",
            "device_seconds": held["personalize_seconds"] + cost["train_seconds"]
            + personal["personalize_seconds"],
            "membership": membership(fl.foundation, trained, tests, seed)}
        report(name, rows[name])
    return rows


# --- summary, table, plots -------------------------------------------------------------
METRICS = ("error", "error_released", "accuracy", "accuracy_released", "moved", "sent_bytes",
           "received_bytes", "device_seconds")


def summarize(per_seed: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Mean ± std over seeds of each metric, and of each method's paired difference from
    sharing nothing (the seeds differ in level); the membership advantage's mean over seeds
    with a 95 % interval combined from the seeds' (independent) intervals; the number of
    seeds in which a method's version was released, and the held-out check's outcomes."""
    out: dict[str, dict[str, Any]] = {}
    for name in per_seed[0]:
        runs = [seed[name] for seed in per_seed]
        row: dict[str, Any] = {"epsilon": runs[0]["epsilon"], "guarantee": runs[0]["guarantee"],
                               "rounds": runs[0]["rounds"]}
        for metric in METRICS:
            if metric not in runs[0]:
                continue
            values = [r[metric] for r in runs]
            row[metric] = {"mean": statistics.mean(values),
                           "std": statistics.stdev(values) if len(values) > 1 else 0.0}
        gains = [r["error"] - seed["nothing shared"]["error"]
                 for r, seed in zip(runs, per_seed, strict=True)]
        row["error_vs_nothing_shared"] = {
            "mean": statistics.mean(gains),
            "std": statistics.stdev(gains) if len(gains) > 1 else 0.0}
        attacks = [r["membership"] for r in runs if r["membership"] is not None]
        if attacks:
            mean = statistics.mean(a["advantage"] for a in attacks)
            half = float(np.sqrt(sum(((a["advantage_high"] - a["advantage_low"]) / 2) ** 2
                                     for a in attacks)) / len(attacks))
            row["membership_advantage"] = {"mean": mean, "ci": [mean - half, mean + half]}
        if "checked" in runs[0]:  # the held-out devices' check: its outcome in each seed
            row["released_seeds"] = sum(bool(r["released"]) for r in runs)
            row["checked"] = {outcome: sum(r["checked"] == outcome for r in runs)
                              for outcome in dict.fromkeys(r["checked"] for r in runs)}
        out[name] = row
    return out


def table(summary: dict[str, dict[str, Any]], seeds: int, task: ProtocolTask) -> str:
    def kb(value: float) -> str:
        return "0" if value == 0 else f"{value / 1024:,.1f} KB"

    error = task.task.error_name
    accuracy = "accuracy" in summary["nothing shared"]
    level = abs(summary["nothing shared"]["error"]["mean"]) or 1.0
    places = int(min(4, max(1, 3 - np.floor(np.log10(level)))))  # 4 significant digits

    def num(value: float, sign: str = "") -> str:
        return f"{value:{sign}.{places}f}"

    def released(row: dict[str, Any]) -> str:
        if "released_seeds" not in row:
            return "—"
        noted = [o for o in ("no check", "too few devices", "devices report better",
                             "devices report not better", "devices report worse")
                 if row["checked"].get(o)]
        notes = ", ".join(f"{o} {row['checked'][o]}" for o in noted)
        return f"{row['released_seeds']}/{seeds}" + (f" ({notes})" if noted else "")

    lines = [f"| method | user-level ε | users' {error} | vs nothing shared "
             + ("| users' accuracy " if accuracy else "")
             + f"| new model {error} | released (seeds) | adopted | device sends "
             "| device receives | device CPU s | membership advantage (95 % CI) |",
             "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if accuracy else "")]
    for name, row in summary.items():
        epsilon = ("0" if row["epsilon"] == 0 else "no formal DP" if row["epsilon"] is None
                   else f"{row['epsilon']:.2f}")
        attack = row.get("membership_advantage")
        attack_text = "—" if attack is None else (
            f"{attack['mean']:+.3f} [{attack['ci'][0]:+.3f}, {attack['ci'][1]:+.3f}]")
        gain = row["error_vs_nothing_shared"]
        lines.append(
            f"| {name} | {epsilon} | {num(row['error']['mean'])} ± {num(row['error']['std'])} "
            + ("| — " if name == "nothing shared"
               else f"| {num(gain['mean'], '+')} ± {num(gain['std'])} ")
            + (f"| {row['accuracy']['mean']:.3f} ± {row['accuracy']['std']:.3f} "
               if accuracy else "")
            + f"| {num(row['error_released']['mean'])} ± {num(row['error_released']['std'])} "
            f"| {released(row)} | {row['moved']['mean']:.0%} | {kb(row['sent_bytes']['mean'])} "
            f"| {kb(row['received_bytes']['mean'])} "
            f"| {row['device_seconds']['mean']:.2f} | {attack_text} |")
    return (f"**{task.title}.** Mean ± std over {seeds} seed{'s' if seeds > 1 else ''} of the "
            f"mean per-user test {error} (lower is better) of the model each user holds in the "
            f"end (users' {error}), its paired per-seed difference from sharing nothing "
            "(negative: users gain), and the new model's own (released or not); released: "
            f"in how many seeds the server released the new model — {HELD_OUT_SHARE:.0%} "
            "of the users, drawn from the seed, train no method, and each method's new model is "
            "released to every user only if it is shown better on their devices "
            f"(one-sided paired t-test over devices at {DEVICE_CONFIDENCE:.0%}), devices "
            "then keeping it unless their records show it worse (at 99 %, where a device "
            "holds v1 as shipped and, for a classifier, v1 was trained on no record of a "
            "class the new model may cover); DMT under local DP is "
            "checked by the held-out devices themselves, each reporting one bit (better once "
            "personalized, out of fold) by randomized response at the row's ε, and released "
            "with the claim if more than half are shown better off at 90 % (devices report "
            "better), else without it, devices keeping it only if their records show it "
            "better at 99 %, as is a model with fewer than 2 held-out devices of "
            "2 records to check on (too few devices); a model not released leaves every "
            "user with what "
            "they held; held-out users count in every mean; adopted: the share of users "
            "whose device moved to the new model (nothing shared: whose update was "
            "kept).\n\n" + "\n".join(lines) + "\n")


def plot(summary: dict[str, dict[str, Any]], epsilons: tuple[float, ...], output: Path,
         seeds: int, task: ProtocolTask) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    error = task.task.error_name
    seeds_text = f"{seeds} seed{'s' if seeds > 1 else ''}"
    # 1. Utility against user-level ε: DMT and DP-FedAvg at each ε, the settings without
    #    formal DP at the right, nothing shared as a line.
    dmt_private = [f"DMT local DP ε={e:g}" for e in epsilons] if task.tabular \
        else [None] * len(epsilons)
    other_dmt = f"DMT k-anonymous k={K}" if task.tabular else "DMT modified"
    labels = [f"ε={e:g}" for e in epsilons] + ["no formal DP"]
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    series = [("DMT raw / local DP" if task.tabular else "DMT raw", [*dmt_private, "DMT raw"],
               -0.12, "o"),
              (f"DMT {'k=' + str(K) if task.tabular else 'modified'}",
               [None] * len(epsilons) + [other_dmt], -0.04, "D"),
              ("FedAvg / DP-FedAvg (Flower)", [f"DP-FedAvg ε={e:g}" for e in epsilons]
               + ["FedAvg"], 0.04, "s"),
              ("FedProx (Flower)", [None] * len(epsilons) + ["FedProx"], 0.12, "^")]
    for (label, names, shift, marker), colour in zip(series, ("C0", "C3", "C1", "C2"),
                                                     strict=True):
        # The ε points joined; the one without formal DP (the last name) apart. A method
        # family that did not run (--methods) has no rows: it is left out.
        private = [(i + shift, summary[n]["error_vs_nothing_shared"])
                   for i, n in enumerate(names[:-1]) if n in summary]
        if private:
            ax.errorbar([p[0] for p in private], [p[1]["mean"] for p in private],
                        yerr=[p[1]["std"] for p in private], marker=marker, capsize=4,
                        color=colour, label=label)
        if names[-1] in summary:
            plain = summary[names[-1]]["error_vs_nothing_shared"]
            ax.errorbar([len(names) - 1 + shift], [plain["mean"]], yerr=[plain["std"]],
                        marker=marker, capsize=4, color=colour, linestyle="none",
                        label=None if private else label)
    nothing = summary["nothing shared"]["error"]["mean"]
    ax.axhline(0.0, color="grey", linestyle="--",
               label=f"nothing shared (ε = 0): {nothing:.4g}")
    ax.set_xticks(x, labels)
    ax.set_xlabel("user-level privacy cost")
    ax.set_ylabel(f"change in users' test {error}\nagainst sharing nothing (lower: better)")
    ax.set_title(f"Which approach gives users the better model?\n{task.title}, {seeds_text}: "
                 "mean ± std over seeds of the paired difference", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    fig.savefig(output / task.files("_utility.png"), dpi=120)
    plt.close(fig)

    # 2. Cost to a device: bytes sent and received.
    names = list(summary)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    y = np.arange(len(names))
    for offset, metric, label in ((-0.2, "sent_bytes", "sent"),
                                  (0.2, "received_bytes", "received")):
        kb = [summary[n][metric]["mean"] / 1024 for n in names]
        ax.barh(y + offset, kb, height=0.4, label=label)
        for position, value in zip(y + offset, kb, strict=True):
            ax.text(value * 1.1 if value else 0.12, position, f"{value:.1f}" if value else "0",
                    va="center", fontsize=7)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlim(0.1, 4 * max(summary[n]["received_bytes"]["mean"] for n in names) / 1024)
    ax.set_xlabel("KB per device (mean over users; log scale)")
    ax.set_title(f"What each approach costs a device in traffic ({task.title})", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(output / task.files("_cost.png"), dpi=120)
    plt.close(fig)

    # 3. Membership-inference advantage on each released model.
    attacked = [n for n in names if "membership_advantage" in summary[n]]
    fig, ax = plt.subplots(figsize=(8, 4))
    means = [summary[n]["membership_advantage"]["mean"] for n in attacked]
    cis = [summary[n]["membership_advantage"]["ci"] for n in attacked]
    ax.errorbar(means, np.arange(len(attacked)),
                xerr=[[m - c[0] for m, c in zip(means, cis, strict=True)],
                      [c[1] - m for m, c in zip(means, cis, strict=True)]],
                fmt="o", capsize=4)
    ax.axvline(0.0, color="grey", linestyle="--")
    ax.set_yticks(np.arange(len(attacked)), attacked)
    ax.invert_yaxis()
    ax.set_xlabel("membership-inference advantage (TPR − FPR), 95 % CI")
    ax.set_title(f"How much each released model gives away about its training records\n"
                 f"({task.title}, {seeds_text})", fontsize=10)
    fig.tight_layout()
    fig.savefig(output / task.files("_membership.png"), dpi=120)
    plt.close(fig)


class TaskRun:
    """One task's run: its hyperparameters, the seeds a ``--first-seed`` run continues, and
    its JSON, table and plots, written again as each seed is added (one after the other: a
    run cut short leaves the seeds it finished; with ``--jobs``, those finished before the
    first seed still running)."""

    def __init__(self, task: ProtocolTask, args: argparse.Namespace, settings: dict[str, Any],
                 here: dict[str, Any]) -> None:
        self.task, self.args, self.settings, self.here = task, args, settings, here
        self.epsilons = tuple(args.epsilons)
        self.started = time.perf_counter()
        self.shapes: list[dict] = []
        self.environments: list[dict | None] = []  # what each seed ran on (None: not recorded)
        self.per_seed: list[dict] = []
        self.risk: dict[str, Any] = {}
        self.seeds = range(args.first_seed, args.first_seed + args.seeds)

    @classmethod
    def start(cls, task: ProtocolTask, args: argparse.Namespace) -> TaskRun:
        """The run of ``task``: its settings printed, its folder made, and the seeds before
        ``--first-seed`` read from its JSON."""
        settings = settings_from(args.output, task)
        print(f"{task.title}: hyperparameters "
              f"({'tuned on seeds 100, 101' if settings['tuned'] else 'untuned'}): "
              f"{settings}", flush=True)
        run = cls(task, args, settings, environment())
        if not args.describe_only:
            args.output.mkdir(parents=True, exist_ok=True)
        if args.first_seed:
            run._continue()
        return run

    def _continue(self) -> None:
        """Keep the seeds before ``--first-seed`` from the run's JSON."""
        args, path = self.args, self.args.output / self.task.files(".json")
        earlier = json.loads(path.read_text()) if path.exists() else {}
        if len(earlier.get("per_seed", [])) != args.first_seed:
            raise ValidationError(
                f"--first-seed {args.first_seed} continues a run with seeds 0..."
                f"{args.first_seed - 1}; {path} holds "
                f"{len(earlier.get('per_seed', []))}. Run from seed 0 instead.")
        ran = earlier.get("protocol", {}).get("methods", list(METHODS))
        if sorted(ran) != sorted(args.methods):
            raise ValidationError(
                f"--methods {' '.join(args.methods)}: the run --first-seed continues ran "
                f"{' '.join(ran)}; give those methods to continue it.")
        capped = earlier.get("protocol", {}).get("epochs")
        if capped != args.epochs:
            raise ValidationError(
                f"--epochs {args.epochs}: the run --first-seed continues ran with --epochs "
                f"{capped}; give the same to continue it.")
        same_protocol(earlier, path)
        self.shapes.extend(earlier["shape_per_seed"])
        self.environments.extend(earlier.get("environment_per_seed")
                                 or [None] * args.first_seed)
        changed = differences(self.environments[-1] if self.environments else None, self.here)
        if changed:
            print(f"Warning: the seeds before {args.first_seed} ran in another environment "
                  f"({'; '.join(changed)}): the seeds are draws of the same methods, not "
                  "bit-for-bit comparable.", flush=True)
        before = earlier.get("timing", {"timed_every": 10, "client_warm_up_excluded": False})
        if before != self.timing():
            print(f"Warning: the seeds before {args.first_seed} measured a device's CPU "
                  f"seconds otherwise ({before} against {self.timing()}): their seconds are "
                  "not comparable; every other figure is.", flush=True)
        self.per_seed.extend(count_v1(earlier["per_seed"]))
        self.risk = earlier.get("anonymeter", {})

    @staticmethod
    def timing() -> dict[str, Any]:
        """How a seed's CPU seconds are measured (written into the JSON; a run continued with
        ``--first-seed`` says when its earlier seeds were measured otherwise)."""
        return {"timed_every": TIMED_EVERY, "client_warm_up_excluded": True,
                "blas_threads": BLAS_THREADS}

    def describe(self, seed: int, shape: dict[str, Any]) -> None:
        """Record and print ``seed``'s shape (:func:`describe`)."""
        self.shapes.append(shape)
        self.environments.append(self.here)
        print(f"{self.task.title} seed {seed}: {json.dumps(shape)}", flush=True)

    def seed_arguments(self) -> dict[str, Any]:
        """What :func:`run_seed` takes besides the users and the seed."""
        return {"rounds": self.args.rounds, "epsilons": self.epsilons,
                "settings": self.settings, "workers": self.args.workers,
                "methods": tuple(self.args.methods), "epochs": self.args.epochs}

    def add(self, seed: int, rows: dict[str, dict[str, Any]]) -> None:
        """``seed``'s rows (seeds are added in order); the files written again."""
        self.per_seed.append(rows)
        self.write()
        print(f"{self.task.title} seed {seed} done "
              f"({time.perf_counter() - self.started:.0f} s)", flush=True)

    def write(self) -> dict[str, Any]:
        """The task's JSON, and with a seed's rows its table and plots; the JSON's content."""
        args, task = self.args, self.task
        result: dict[str, Any] = {
            "task": task.name, "title": task.title, "error": task.task.error_name,
            "protocol_version": PROTOCOL_VERSION, "protocol_change": PROTOCOL_CHANGE,
            "protocol": {k: v for k, v in vars(args).items() if k not in ("output", "task")},
            "timing": self.timing(), "hyperparameters": self.settings,
            "shape_per_seed": self.shapes, "environment_per_seed": self.environments}
        if self.per_seed:
            summary = summarize(self.per_seed)
            (args.output / task.files(".md")).write_text(
                table(summary, len(self.per_seed), task)
                + (risk_table(self.risk) if self.risk.get("cases") else ""))
            plot(summary, self.epsilons, args.output, len(self.per_seed), task)
            result |= {"summary": summary, "per_seed": self.per_seed}
        if self.risk:
            result["anonymeter"] = self.risk
        result["seconds"] = time.perf_counter() - self.started  # (--jobs: since the run began)
        (args.output / task.files(".json")).write_text(json.dumps(result, indent=1))
        return result

    def wants_risk(self) -> bool:
        """Whether :meth:`finish` computes anonymeter's risks: a tabular task, DMT's rows and
        ``--risk``, and none yet (a continuation keeps the run's before)."""
        args = self.args
        return (self.task.tabular and not self.risk and bool(args.risk)
                and "dmt" in args.methods and not args.describe_only)

    def finish(self, risk: dict[str, Any] | None = None) -> dict[str, Any]:
        """anonymeter's risks (once a task; ``risk``: as a ``--jobs`` job computed them),
        the files, and the table printed."""
        args, task = self.args, self.task
        if args.describe_only:  # a shape, no results: the folder's files stay as they are
            return {"shape_per_seed": self.shapes}
        if risk is not None:
            self.risk = risk
        elif self.per_seed and self.wants_risk():
            self.risk = server_risk(task, 0, args.users, self.epsilons)
        result = self.write()
        print((args.output / task.files(".md")).read_text() if self.per_seed else "",
              flush=True)
        print(f"wrote {args.output / task.files('.json')} ({result['seconds']:.0f} s)",
              flush=True)
        return result


def run_task(task: ProtocolTask, args: argparse.Namespace) -> dict[str, Any]:
    """Every seed of ``task``, one after the other, in this process; writes its JSON, table
    and plots into ``args.output`` after each seed."""
    run = TaskRun.start(task, args)
    for seed in run.seeds:
        sim = task.simulate(seed, args.users)
        run.describe(seed, describe(sim, task))
        if not args.describe_only:
            run.add(seed, run_seed(sim, task, seed, **run.seed_arguments()))
    return run.finish()


#: A ``--jobs`` process's Ray session: open from the process's start to its end
#: (:func:`_job_start`), for every seed the process runs.
_JOB_SESSION = contextlib.ExitStack()


def _job_start(flower: bool) -> None:
    """A ``--jobs`` process's start: one Ray session (``flower``) for every seed it runs,
    closed as the process ends."""
    import multiprocessing.util

    _one_blas_thread()
    if flower:
        _JOB_SESSION.enter_context(ray_session())
        multiprocessing.util.Finalize(None, _JOB_SESSION.close, exitpriority=10)


def _seed_job(task_name: str, seed: int, users: int, arguments: dict[str, Any]
              ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """One seed of a task, as :func:`run_task` runs it (in a ``--jobs`` process): its shape
    and its rows."""
    task = TASKS[task_name]
    sim = task.simulate(seed, users)
    return describe(sim, task), run_seed(sim, task, seed, **arguments)


def _risk_job(task_name: str, users: int, epsilons: tuple[float, ...]) -> dict[str, Any]:
    """A task's anonymeter risks, as :meth:`TaskRun.finish` computes them (in a ``--jobs``
    process)."""
    return server_risk(TASKS[task_name], 0, users, epsilons)


def run_in_jobs(tasks: list[ProtocolTask], args: argparse.Namespace) -> None:
    """Every seed of every task in ``tasks``, ``args.jobs`` at a time, each in a process of
    its own (each with its own Ray), and each task's anonymeter risks as a job of their own
    after its seeds (computed as the run's last seed finished, they left a core idle while
    the main process computed them: 36 s on Synthetic); a task's files are written as its
    seeds finish, in order, and its risks once its last seed and they are done. Every
    figure but the seconds is that of one seed after the other: a seed depends on its
    task, seed and settings only (its CPU and wall seconds on what runs beside it). A seed
    that fails, or an interrupt, starts no other: the seeds running finish (at most
    ``jobs`` − 1), and the error is raised; each task keeps the files of the seeds it had
    added."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

    runs = [TaskRun.start(task, args) for task in tasks]
    flower = bool(set(args.methods) - {"dmt"})
    # (a task's risks: seed None)
    todo = [(run, seed) for run in runs
            for seed in [*run.seeds, *([None] if run.wants_risk() else [])]]
    done: dict[tuple[str, int | None], Any] = {}  # (task, seed) → (shape, rows), until added
    added = {run.task.name: 0 for run in runs}  # seeds added, per task
    finished: set[str] = set()

    def add_in_order() -> None:
        for run in runs:
            name = run.task.name
            while added[name] < len(run.seeds) and (name, run.seeds[added[name]]) in done:
                seed = run.seeds[added[name]]
                shape, rows = done.pop((name, seed))
                run.describe(seed, shape)
                run.add(seed, rows)
                added[name] += 1
            if added[name] == len(run.seeds) and name not in finished and (
                    (name, None) in done or not run.wants_risk()):
                run.finish(done.pop((name, None), None))
                finished.add(name)

    with ProcessPoolExecutor(max_workers=min(args.jobs, len(todo)),
                             mp_context=multiprocessing.get_context("spawn"),
                             initializer=_job_start, initargs=(flower,)) as pool:
        running: dict[Future[Any], tuple[str, int | None]] = {}
        while todo or running:
            while todo and len(running) < args.jobs:  # (never more queued than run)
                run, seed = todo.pop(0)
                job = pool.submit(_risk_job, run.task.name, args.users, run.epsilons) \
                    if seed is None else pool.submit(_seed_job, run.task.name, seed,
                                                      args.users, run.seed_arguments())
                running[job] = (run.task.name, seed)
            completed, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in completed:
                done[running.pop(future)] = future.result()  # (a failed seed raises here)
            add_in_order()


def count_v1(per_seed: list[dict[str, dict[str, Any]]]) -> list[dict[str, dict[str, Any]]]:
    """The seeds' rows with every Flower row's received bytes counting the proxy foundation
    its devices downloaded first (the *nothing shared* row's received bytes of the seed, the
    same ``.mlmodel``): rows written before ``fl_cost`` counted it lack ``v1_counted``."""
    for rows in per_seed:
        v1 = rows["nothing shared"]["received_bytes"]
        for row in rows.values():
            if "train_seconds" in row and not row.get("v1_counted"):  # a Flower row
                row["received_bytes"] += v1
                row["v1_counted"] = True
    return per_seed


def same_protocol(result: dict[str, Any], path: Path) -> None:
    """Refuse a results file of another protocol than :data:`PROTOCOL_VERSION` (an unmarked
    one is protocol 1): its seeds are not to be continued, redrawn or added to as this
    one's."""
    version = result.get("protocol_version", 1)
    if version != PROTOCOL_VERSION:
        raise ValidationError(
            f"{path} holds results of protocol {version}, this is protocol {PROTOCOL_VERSION} "
            f"({PROTOCOL_CHANGE}); its seeds cannot be mixed with this protocol's. Run from "
            "seed 0 into another --output, or move the file away.")


def render(task: ProtocolTask, output: Path) -> None:
    """The table and plots of ``task`` again, from the per-seed figures in its JSON."""
    path = output / task.files(".json")
    if not path.exists():
        print(f"{task.title}: no {path} to render", flush=True)
        return
    result = json.loads(path.read_text())
    if not result.get("per_seed"):
        return
    version = result.get("protocol_version", 1)
    if version != PROTOCOL_VERSION:  # redrawn as this protocol's, its table would mislead
        print(f"{task.title}: {path} holds protocol {version}'s results, not redrawn as "
              f"protocol {PROTOCOL_VERSION}'s; re-run the task to replace them", flush=True)
        return
    result["summary"] = summarize(count_v1(result["per_seed"]))
    risk = result.get("anonymeter", {})
    (output / task.files(".md")).write_text(
        table(result["summary"], len(result["per_seed"]), task)
        + (risk_table(risk) if risk.get("cases") else ""))
    plot(result["summary"], tuple(result["protocol"]["epsilons"]), output,
         len(result["per_seed"]), task)
    path.write_text(json.dumps(result, indent=1))
    print(f"{task.title}: rendered {len(result['per_seed'])} seed(s) from {path}", flush=True)


def main(argv: list[str] | None = None) -> None:
    with _blas_threads_of_a_run():
        _main(argv)


def _main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=[*TASKS, "all"], default="all",
                        help="the task (default: every task whose data is on this machine)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default 5)")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="continue a run: add seeds F..F+N-1 to the F seeds in its JSON")
    parser.add_argument("--users", type=int, help="users (default 120; --quick: 60)")
    parser.add_argument("--epsilons", type=float, nargs="+", default=list(EPSILONS),
                        help="user-level ε of the DP rows (default 1 4 8)")
    parser.add_argument("--rounds", type=int,
                        help="FedAvg/FedProx rounds (default 30; --quick: 10)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="seeds run at once, each in a process of its own (default: 2, "
                             "or 1 on a 1-core machine: then in this process); no figure but "
                             "the seconds depends on it")
    parser.add_argument("--workers", type=int,
                        help="processes personalizing a seed's devices (default: 1 when "
                             "seeds run in jobs, else 2, or 1 on a 1-core machine); no "
                             "figure but the seconds depends on it")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        metavar="METHOD",
                        help="the method families to run: " + ", ".join(METHODS)
                             + " (default all; 'nothing shared' always runs as the "
                             "baseline; --tune tunes every method)")
    parser.add_argument("--quick", action="store_true", help="1 seed, 60 users, 10 rounds")
    parser.add_argument("--epochs", type=int,
                        help="cap the epochs of the foundation's training and of DMT's "
                             "retrainings (default: the task's own, with early stopping): a "
                             "smoke run, never written into benchmarks/results (as --quick)")
    parser.add_argument("--tune", action="store_true",
                        help="choose the hyperparameters on seeds 100 and 101 (not reported)")
    parser.add_argument("--no-risk", dest="risk", action="store_false",
                        help="skip anonymeter's risks of what the server holds (tabular tasks, "
                             "seed 0; needs `make risk-env`)")
    parser.add_argument("--risk-only", action="store_true",
                        help="add anonymeter's risks to each tabular task's JSON and table, "
                             "train nothing")
    parser.add_argument("--render-only", action="store_true",
                        help="redraw each task's table and plots from its JSON, run nothing")
    parser.add_argument("--describe-only", action="store_true",
                        help="print the protocol's shape; train and write nothing")
    parser.add_argument("--output", type=Path, default=RESULTS,
                        help="folder for the results (default benchmarks/results; a --quick "
                             "run never writes there, but into build/fl_protocol_quick)")
    args = parser.parse_args(argv)
    args.methods = [m for m in METHODS if m in args.methods]  # the table's order, once each
    if args.quick:
        args.seeds = 1
    if (args.quick or args.epochs is not None) and args.output.resolve() == RESULTS.resolve():
        args.output = QUICK_RESULTS  # never over the committed results
    if args.epochs is not None and (args.epochs < 1 or args.tune):
        parser.error(f"--epochs must be 1 or more, and is not for --tune; got {args.epochs}")
    for name in ("jobs", "workers"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be 1 or more, got {getattr(args, name)}")
    args.users = args.users or (60 if args.quick else 120)
    args.rounds = args.rounds or (10 if args.quick else 30)
    tasks = list(TASKS.values()) if args.task == "all" else [TASKS[args.task]]
    available = [task for task in tasks if task.available()]
    in_jobs = args.jobs > 1 and len(available) * args.seeds > 1 and not (
        args.risk_only or args.render_only or args.tune or args.describe_only)
    args.workers = args.workers or (1 if in_jobs else min(2, os.cpu_count() or 1))
    if in_jobs:
        for task in tasks:
            if task not in available:
                run_one_task(task, args)  # (says it is skipped)
        run_in_jobs(available, args)
        return
    # Every Flower run of this process shares one Ray (ray_session), not one start each.
    flower = any(task.available() for task in tasks) \
        and not (args.risk_only or args.render_only) \
        and (args.tune or (not args.describe_only and set(args.methods) - {"dmt"}))
    with ray_session() if flower else contextlib.nullcontext():
        for task in tasks:
            run_one_task(task, args)


def run_one_task(task: ProtocolTask, args: argparse.Namespace) -> None:
    """What :func:`main` does for ``task``: its results, risks, table, tuning or shape."""
    if not task.available():
        print(f"{task.title}: skipped, its data is not on this machine "
              "(`make install` fetches it)", flush=True)
    elif args.risk_only:
        path = args.output / task.files(".json")
        if task.tabular and path.exists():
            result = json.loads(path.read_text())
            same_protocol(result, path)
            result["anonymeter"] = server_risk(task, 0, result["protocol"]["users"],
                                               tuple(result["protocol"]["epsilons"]))
            path.write_text(json.dumps(result, indent=1))
            render(task, args.output)
    elif args.render_only:
        render(task, args.output)
    elif args.tune:
        tune(args, task)
    else:
        run_task(task, args)


if __name__ == "__main__":
    main()
