"""When should a device adopt a new foundation version? The adoption rule, per user.

A device holds a personal model (the proxy foundation personalized on its records). The
server publishes a retrained version (here DMT's, retrained on proxy + every user's
shareable records as they are; ``benchmarks/fl_protocol.py``'s protocol, whose proxy
misses a region or classes users hold). What users hold in the end depends on the rule a
device applies, measured here as the SDK runs each one (``dmt_model.personalize``):

* **never**: keep the personal model;
* **the version must prove itself**: ``adopt_new_version(..., rule=DecisionRule())``, the
  rule of earlier releases: the re-personalized version must beat the personal model in
  cross-validation, significantly at the task's confidence (90 % for a classifier), and
  the personal model is scored on records it trained on;
* **the same, out of fold, scored on unshared records** (``rule=DecisionRule()`` with
  ``previous=`` and ``shared_records=``): what the SDK's device does by default now with a
  version whose release claims nothing about devices (``adoption_rule_for``);
* **adopt unless shown worse** (``DecisionRule(prefer="update")``), in sample and out of
  fold: adopted unless the personal model is better, significantly at the task's
  confidence;
* **the lower out-of-fold error wins** (``ADOPTION_RULE`` with ``previous=``, what the
  SDK's device applies to a version shown better on held-out devices): the previous
  version and the new one are each personalized on the training folds and scored on the
  held-out fold, no significance asked either way (but a device holding the previous
  version as shipped, no personal update kept, declines only where its records show that
  version better at 99 %: ``ADOPTION_RULE.as_shipped``, since 083488f; for a classifier,
  only where that version was trained on no record of a class the new one may cover,
  since bf3115e);
* **the same, scored on unshared records only** (``shared_records=``, as the SDK
  recommends): the new version may have trained on what the device shared, so those
  records are trained on but never held out; a device with fewer than 2 unshared records
  keeps its model;
* **the same, a device as shipped declining at 50 % too** (``ADOPTION_RULE`` until
  083488f, ``as_shipped=None``);
* **the same, the new version re-personalized under the open rule's guard** ("..., open";
  since 6 December): what ``adoption_rule_for`` gives a device where the release of a
  version shown better on held-out devices also grants the open rule
  (``personal_rule_for``): any prior strength whatever the device's number of records;
* **always**: re-personalize the new version (``personalize()``) and take it;
* **gated**: the SDK's flow, where the server checks each version on a quarter of the
  devices held out from retraining (``compare_on_devices``; the server retrains on the
  other devices' records in every row): a version shown better is adopted under
  ``ADOPTION_RULE`` (the row "the same, scored on unshared records only"), any other is
  refused (never); with ``publish_unless_worse=True`` only one shown worse is refused,
  and one the devices cannot tell apart must prove itself (the row "the same, out of
  fold, scored on unshared records"). The server also compares the personal rules on the
  held-out devices (``compare_personal_rules``, as ``ModelRegistry.check_personal_rule``);
  where the open rule is shown better, devices adopting a version shown better take the
  row "..., open" (one that must prove itself keeps the guard).

For each: users' mean per-user test error (RMSE, or log loss for a classifier), the share
of devices that moved, how often the rule's choice raised a user's test error (harmed:
moved, and the test error rose above the personal model's) and how often it kept one
that adopting would have lowered (missed), and what the users harmed in expectation lose
(their mean rise in expected error, and the worst). A user's test set is a handful of records
(25 % of theirs), so these per-user comparisons hold much noise: a rule that is right in
expectation still "harms" users whose few test records happen to favour the other model.
Where the simulation knows each user's distribution, each user's **expected** error is
measured too, and harmed and missed are counted on it, without that noise: for
Synthetic(α, β), on 2,000 fresh records of the user's own (``fresh_records``); for
Friedman #2, whose function is known, on 2,000 fresh records in the user's own range of x2,
the noiseless target × the user's factor (since 6 December); where users
differ by their label mix alone (Adult), on every other user's test record, each class
weighted by the user's own label share.

``--unclaimed raw 4 1 8`` measures instead the version a device gets without a device
claim — the server retrains on every user's packages, as shared (``raw``) or under local
DP at a user-level ε, and holds out no devices — the case of a version nothing vouched for
(under local DP, ``run_loop`` now lets held-out devices report, ``dmt_model.version_check``,
and this is what its devices do when the reports do not show it better) — so the
device's own check is the only one: never, always, and "the version must prove itself"
(out of fold, scored on unshared records) at confidence 50 % (a regression's
``DEFAULT_RULE``), 75, 90 (a classifier's), 95, 97.5 and 99 % (``UNCHECKED_RULE``, what
``adoption_rule_for`` gives such a version). Writes ``adoption_unclaimed.{json,md}``.

Writes ``adoption.json`` and ``adoption.md`` (the README's table) into ``--output``.
Run: ``.venv/bin/python benchmarks/adoption.py [--tasks friedman adult digits]
[--seeds 2] [--users 120] [--workers 2] [--output DIR]`` (about 27 minutes on 2 cores;
``--tasks adult --users 20`` is the small deployment where a version hurts users once
personalized, about 6 minutes). ``--render`` rewrites the table from the JSON.
``--tasks friedman --spread 0`` gives Friedman #2's users no target factor of their own
(fl_protocol's users lie within 1 ± 0.3): the control for the open rule's guard in
adoption, written to ``adoption_friedman_spread0.{json,md}``. ``--tasks friedman1`` is a
second regression, Friedman #1, cut into users the same way (with ``--spread``; without it
``adoption.json`` is rewritten with that task alone, as for any ``--tasks``). ``--tasks
boston`` and ``star98`` are two real regressions cut as ``personal_rule.py`` cuts them (20
users a seed whatever ``--users``, run once; the proxy a random 30 % of the records; users' factors
within 1 ± 0.3, or ``--spread``): their users' expected error is not known, their test
error only, and no tuning file sets DMT's retraining rate (``settings_from``'s untuned
1e-3; about 50 s a seed: ``--tasks boston --spread 0.3 --seeds 10``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fl_protocol import (  # a sibling benchmark script
    LOCATION,
    TARGET,
    TASKS,
    ProtocolTask,
    dmt_model_for,
    foundation_for,
    open_protocol,
    personalize_users,
    settings_from,
    user_scores,
)

from dmt_privacy.schema import Field, Schema

RESULTS = Path(__file__).resolve().parent / "results"

#: Friedman #1 (``make_friedman1``'s function of 5 inputs, noise 1): this benchmark's
#: second regression, whose function is known too, cut into users as Friedman #2 is
#: (``fl_protocol.open_protocol``: the proxy holds no record with x2 > 0.6, each user one
#: neighbourhood of x2 and a target factor within 1 ± spread).
FRIEDMAN1_SCHEMA = Schema(name="friedman-1", fields=(
    *(Field(f"x{i}", "numeric", bounds=(0.0, 1.0)) for i in range(5)),
    Field(TARGET, "numeric", role="target", bounds=(-10.0, 40.0))))


def _friedman1(x: np.ndarray) -> np.ndarray:
    """Friedman #1's noiseless function of its 5 inputs."""
    return (10 * np.sin(np.pi * x[:, 0] * x[:, 1]) + 20 * (x[:, 2] - 0.5) ** 2
            + 10 * x[:, 3] + 5 * x[:, 4])


def friedman1_users(seed: int, n_users: int, *, spread: float = 0.3) -> Any:
    """The Friedman #1 task's simulation (:data:`FRIEDMAN1_SCHEMA`)."""
    x = np.random.default_rng([seed, 1]).uniform(size=(6000, 5))
    y = _friedman1(x) + np.random.default_rng([seed, 2]).normal(0, 1.0, len(x))
    data = pd.DataFrame(x, columns=[f"x{i}" for i in range(5)]).assign(**{TARGET: y})
    return open_protocol(data, n_users=n_users, seed=seed, spread=spread)


#: users a seed of a real regression (:func:`real_users`): personal_rule's 20
REAL_USERS = 20
#: the real regressions (:func:`real_users`), whose users' number is :data:`REAL_USERS`
REAL_TASKS = ("boston", "star98")


def real_users(name: str) -> Any:
    """The simulation of a real regression data set (``boston``, ``star98``) as
    ``benchmarks/personal_rule.py`` cuts it
    (:func:`~dmt_model.datasets.simulate_users`): the proxy a random 30 % of the records,
    each user one neighbourhood of the data set's location column and a target factor
    within 1 ± spread (0.3 by default; ``--spread``). These data sets hold a few hundred
    records: :func:`runs_asked` runs them at :data:`REAL_USERS` users a seed."""
    from dmt_model.datasets import REGRESSION_DATASETS, simulate_users

    dataset = REGRESSION_DATASETS[name]

    def simulate(seed: int, n_users: int, *, spread: float = 0.3) -> Any:
        return simulate_users(dataset.load(), n_users=n_users, spread=spread, seed=seed,
                              location=dataset.location, target=dataset.target)
    return simulate


def _real_task(name: str, title: str) -> ProtocolTask:
    from dmt_model.datasets import REGRESSION_DATASETS

    def available() -> bool:
        try:
            REGRESSION_DATASETS[name].load()
        except ImportError:  # star98 ships with statsmodels (MissingDependencyError)
            return False
        return True
    return ProtocolTask(name, title, REGRESSION_DATASETS[name].schema, real_users(name),
                        lambda frame: pd.Series(False, index=frame.index),
                        "none: a random 30 % of the records", available=available)


#: The tasks this benchmark runs: fl_protocol's, Friedman #1, and two real regressions
#: (Boston house prices, star98's school districts) whose users' expected error is not
#: known: their test error only.
ADOPTION_TASKS: dict[str, ProtocolTask] = {**TASKS, "friedman1": ProtocolTask(
    "friedman1", "Friedman #1 regression", FRIEDMAN1_SCHEMA, friedman1_users,
    lambda frame: frame[LOCATION] > 0.6, "no record with x2 > 0.6"),
    "boston": _real_task("boston", "Boston house prices regression"),
    "star98": _real_task("star98", "star98 school districts regression")}
#: The regressions whose users' target factors ``--spread`` sets (their ``simulate`` takes
#: ``spread=``).
SPREADS = ("friedman", "friedman1", *REAL_TASKS)
#: The regressions whose function is known: a user's expected error is measured on fresh
#: records (:func:`_friedman_fresh`).
KNOWN_FUNCTIONS = ("friedman", "friedman1")
RULES = ("never", "asks proof", "proof, unshared", "unless worse, in sample",
         "unless worse, out of fold", "even, out of fold", "even, unshared",
         "even, unshared, 50 % as shipped", "even, unshared, open", "always")
#: what a device holds when the server checks each version on held-out devices and devices
#: adopt by the rule its release earns (adoption_rule_for)
GATED = "gated"
#: the same with publish(..., publish_unless_worse=True): a version the devices cannot tell
#: apart is published without the claim, and devices ask it to prove itself
GATED_LOOSE = "gated, unless worse"
LABELS = {
    "never": "never adopt",
    "asks proof": "the version must prove itself (DecisionRule()), in sample",
    "proof, unshared": "the version must prove itself at the task's confidence, out of "
                       "fold, scored on unshared records (the SDK asks 99 % of a version "
                       "without a device claim, UNCHECKED_RULE: --unclaimed)",
    "unless worse, in sample": "adopt unless shown worse at the task's confidence, in sample",
    "unless worse, out of fold": "adopt unless shown worse at the task's confidence, "
                                 "out of fold",
    "even, out of fold": "the lower out-of-fold error wins (ADOPTION_RULE, previous=), "
                         "scored on every record",
    "even, unshared": "**the same, scored on unshared records only (shared_records=)**",
    "even, unshared, 50 % as shipped": "the same, a device holding the version as shipped "
                                       "declining at 50 % too, not 99 % (ADOPTION_RULE "
                                       "until 083488f)",
    "even, unshared, open": "the lower error wins, scored on unshared records, the new "
                            "version re-personalized under the open rule's guard (what a "
                            "release granting the open rule gives, adoption_rule_for)",
    "always": "always adopt",
    GATED_LOOSE: "the server publishes unless shown worse on devices "
                 "(publish_unless_worse=True); the release decides the rule (a version "
                 "the devices cannot tell apart proves itself at the task's confidence)",
    GATED: "**the SDK's flow: the server's device check decides the rule "
           "(compare_on_devices, adoption_rule_for)**",
}


def _user(new_data: bytes, current_data: bytes, previous_data: bytes, unshared: Any,
          shared: Any, test: Any, task: Any, reference: Any = None, weights: Any = None
          ) -> dict[str, Any]:
    """One device under every rule (in a worker process): its test error, its expected error
    (``weights`` over the ``reference`` records; None without them) and whether it moved."""
    from dmt_model.coreml import predict_frame
    from dmt_model.coreml._spec import spec_from_bytes
    from dmt_model.personalize import (
        ADOPTION_RULE,
        DecisionRule,
        adopted,
        featurizer_of,
        open_rule_for,
        personalized,
    )

    train = pd.concat([shared, unshared])
    new, current = spec_from_bytes(new_data), spec_from_bytes(current_data)
    previous = spec_from_bytes(previous_data)
    actual = featurizer_of(new).target_values(test, dtype=float)
    if reference is not None:
        truth = featurizer_of(new).target_values(reference, dtype=float)

    def error(spec: Any) -> float:
        return user_scores(task, predict_frame(spec, test), actual)["error"]

    def expected(spec: Any) -> float | None:
        return None if reference is None else expected_error(task, spec, reference, truth,
                                                             weights)

    unless_worse = DecisionRule(prefer="update")  # the task's confidence: 90 % a classifier
    # what adoption_rule_for gives where the new version's release grants the open rule
    guard = open_rule_for(featurizer_of(new).task).few_records
    held = {
        "never": (current, False),
        "asks proof": adopted(new, current, train, rule=DecisionRule()),
        "unless worse, in sample": adopted(new, current, train, rule=unless_worse),
        "unless worse, out of fold": adopted(new, current, train, previous=previous,
                                             rule=unless_worse),
        "proof, unshared": adopted(new, current, unshared, previous=previous,
                                   shared_records=shared, rule=DecisionRule()
                                   ) if len(unshared) >= 2 else (current, False),
        "even, out of fold": adopted(new, current, train, previous=previous,
                                     rule=ADOPTION_RULE),
        "even, unshared": adopted(new, current, unshared, previous=previous,
                                  shared_records=shared, rule=ADOPTION_RULE
                                  ) if len(unshared) >= 2 else (
                                      current, False),
        "even, unshared, 50 % as shipped": adopted(
            new, current, unshared, previous=previous, shared_records=shared,
            rule=replace(ADOPTION_RULE, as_shipped=None)) if len(unshared) >= 2 else (
                current, False),
        "even, unshared, open": adopted(
            new, current, unshared, previous=previous, shared_records=shared,
            rule=replace(ADOPTION_RULE, few_records=guard)) if len(unshared) >= 2 else (
                current, False),
        "always": (personalized(new, train)[0], True),
    }
    return {rule: {"error": error(model), "expected": expected(model),
                   "moved": bool(result if isinstance(result, bool) else result.accepted)}
            for rule, (model, result) in held.items()}


def expected_error(task: Any, spec: Any, reference: Any, truth: Any, weights: Any) -> float:
    """A user's expected error under ``spec``: the ``weights``-weighted error over the
    ``reference`` records (``truth`` their targets), as the task's headline error: a RMSE
    for a regression, a log loss for a classification."""
    from dmt_model.coreml import predict_frame

    mean = float(np.dot(weights, task.record_errors(predict_frame(spec, reference), truth)))
    return float(np.sqrt(mean)) if task.kind == "regression" else mean


#: Fresh records a Synthetic user's expected error is measured on.
FRESH_RECORDS = 2000


def expected_error_weights(sim: Any, target: str, task: str | None = None
                           ) -> list[tuple[Any, Any]] | None:
    """Per user, records and weights whose weighted error is the user's expected error.
    Synthetic(α, β), whose simulation knows each user's distribution: :data:`FRESH_RECORDS`
    new records of the user's own, equally weighted. Friedman #2 (``task="friedman"``),
    whose function is known: :data:`FRESH_RECORDS` new records in the user's own range of
    x2 (each user holds one neighbourhood of it), their targets the noiseless function's ×
    the user's factor. Classifier users who differ by their
    label mix alone (no hand of their own), where a record of a class is a record of that
    class for every user: the other users' test records, each class weighted by the user's
    own label share. None otherwise. A handful of test records makes a per-user comparison
    noisy; these are not."""
    from dmt_model.datasets import SyntheticSimulation

    users = sim.users
    if isinstance(sim, SyntheticSimulation):
        return [(sim.fresh_records(u.user_id, FRESH_RECORDS),
                 np.full(FRESH_RECORDS, 1.0 / FRESH_RECORDS)) for u in users]
    if task in KNOWN_FUNCTIONS:
        return [(_friedman_fresh(u, sim.seed, task),
                 np.full(FRESH_RECORDS, 1.0 / FRESH_RECORDS)) for u in users]
    if not all(getattr(u, "label_distribution", ()) and not getattr(u, "rotation", 0.0)
               and not getattr(u, "stroke", 0.0) for u in users):
        return None
    out = []
    for i, user in enumerate(users):
        reference = pd.concat([u.test for j, u in enumerate(users) if j != i])
        labels = reference[target].to_numpy()
        weights = np.zeros(len(reference))
        for c, share in zip(sim.classes, user.label_distribution, strict=True):
            mine = labels == c
            if mine.any():
                weights[mine] = share / mine.sum()
        out.append((reference, weights / weights.sum()))
    return out


def _friedman_fresh(user: Any, seed: int, task: str = "friedman") -> pd.DataFrame:
    """:data:`FRESH_RECORDS` new Friedman #2 (or #1: ``task="friedman1"``) records in
    ``user``'s range of x2, their target the noiseless function's × the user's factor
    (``fl_protocol.open_protocol``)."""
    held = pd.concat([user.train, user.test])[LOCATION]
    low, high = float(held.min()), float(held.max())
    rng = np.random.default_rng([seed, user.user_id])
    if task == "friedman1":
        fresh = rng.uniform(size=(FRESH_RECORDS, 5))
        fresh[:, 2] = rng.uniform(low, high, FRESH_RECORDS)
        return pd.DataFrame(fresh, columns=[f"x{i}" for i in range(5)]).assign(
            **{TARGET: _friedman1(fresh) * user.factor})
    x = np.column_stack([rng.uniform(0, 100, FRESH_RECORDS),
                         rng.uniform(40 * np.pi, 560 * np.pi, FRESH_RECORDS),
                         rng.uniform(low, high, FRESH_RECORDS),
                         rng.uniform(1, 11, FRESH_RECORDS)])
    # make_friedman2's inputs and its function, without the noise
    y = np.sqrt(x[:, 0] ** 2 + (x[:, 1] * x[:, 2] - 1 / (x[:, 1] * x[:, 3])) ** 2)
    frame = pd.DataFrame(x, columns=["x0", "x1", "x2", "x3"])
    return frame.assign(**{TARGET: y * user.factor})


def _seed_setting(name: str, seed: int, users: int, workers: int, spread: float | None = None
                  ) -> tuple[Any, Any, Any, list[bytes], float]:
    """One seed's setting: the task, its simulation of ``users`` users, the proxy foundation,
    each user's personal model (the foundation personalized on their records) and DMT's
    retraining learning rate."""
    task = ADOPTION_TASKS[name]
    sim = task.simulate(seed, users, **({} if spread is None else {"spread": spread}))
    foundation = foundation_for(sim, task, seed)
    current = personalize_users(foundation, sim, task, workers=workers)["personal_models"]
    return task, sim, foundation, current, settings_from(RESULTS, task)["dmt_learning_rate"]


def run_seed(name: str, seed: int, users: int, workers: int, spread: float | None = None
             ) -> dict[str, Any]:
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from dmt_model.coreml import UpdateSettings, build_spec
    from dmt_model.coreml._spec import spec_bytes
    from dmt_model.personalize import compare_on_devices, compare_personal_rules
    from dmt_privacy.errors import TooFewRecords

    started = time.perf_counter()
    task, sim, foundation, current, rate = _seed_setting(name, seed, users, workers, spread)
    # The server holds out the packages of a quarter of the devices: it retrains on the
    # others' and checks the new version, personalized, on the held-out devices' records.
    held_out = set(np.random.default_rng(seed).choice(len(sim.users), len(sim.users) // 4,
                                                      replace=False).tolist())
    trainers = replace(sim, users=tuple(u for i, u in enumerate(sim.users) if i not in held_out))
    model, _, _, _ = dmt_model_for(trainers, task, foundation, {}, seed, rate)
    new_spec = build_spec(model, updatable=UpdateSettings())
    previous_spec = build_spec(foundation, updatable=UpdateSettings())
    gate = compare_on_devices(previous_spec, new_spec,
                              [sim.users[i].shareable for i in sorted(held_out)])
    # and, as ModelRegistry.check_personal_rule does, the rule devices personalize it under
    # (too few held-out devices with 4 records to compare on: no claim, as the registry)
    try:
        open_gate = asdict(compare_personal_rules(
            new_spec, [sim.users[i].shareable for i in sorted(held_out)]))
    except TooFewRecords as exc:
        open_gate = {"better": False, "reason": str(exc)}
    new, previous = spec_bytes(new_spec), spec_bytes(previous_spec)
    references = (expected_error_weights(sim, task.target, task=name)
                  or [(None, None)] * len(sim.users))
    jobs = [(new, current[i], previous, u.private, u.shareable, u.test, task.task,
             *references[i])
            for i, u in enumerate(sim.users)]
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        per_user = list(pool.map(_user, *zip(*jobs, strict=True)))
    rows = _summary(per_user, list(RULES))
    print(f"{name} seed {seed}: " + ", ".join(f"{r} {v['error']:.4g}" for r, v in rows.items())
          + f"; gate: {gate.reason}; open rule: {open_gate['reason']} "
          f"({time.perf_counter() - started:.0f} s)", flush=True)
    return {"task": name, "seed": seed, "users": len(sim.users),
            "error_name": task.task.error_name,
            "rules": rows, "gate": asdict(gate), "open_gate": open_gate,
            **({} if spread is None else {"spread": spread}),
            "seconds": time.perf_counter() - started}


def _gated(run: dict[str, Any], *, unless_worse: bool = False) -> str:
    """The rule a device applies to the run's version under the SDK's flow: the server's
    device check shows it better (ADOPTION_RULE); otherwise it is refused (never), unless
    ``unless_worse`` (``publish_unless_worse=True``), where only a version shown worse is
    refused and one the devices cannot tell apart must prove itself. Runs before "proof,
    unshared" existed fall back to the in-sample row. Where the server's check of the
    personal rule (``open_gate``: ``compare_personal_rules`` on the held-out devices) showed
    the open rule better, the release grants it and the device re-personalizes the version
    under its guard (the row "..., open"; runs before 6 December ran no such check), if the
    version was shown better; one that must prove itself keeps the guard."""
    gate, rules = run["gate"], run["rules"]
    granted = ", open" if run.get("open_gate", {}).get("better") else ""
    if gate["better"]:
        return ("even, unshared" + granted if "even, unshared" in rules
                else "even, out of fold")
    shown_worse = gate["error_after"] > gate["error_before"] and gate["t"] <= -gate["needed"]
    if shown_worse or not unless_worse:
        return "never"
    return "proof, unshared" if "proof, unshared" in rules else "asks proof"


# --- versions released without a device claim -----------------------------------------
#: The confidence levels at which "the version must prove itself" is measured for a version
#: released without a device claim (--unclaimed): the rule's figures are the same at every
#: level, so each device is compared once and every level decided from that comparison.
CONFIDENCES = (0.5, 0.75, 0.9, 0.95, 0.975, 0.99)


def _proof_at_every_level(new: Any, current: Any, previous: Any, unshared: Any, shared: Any,
                          ) -> tuple[Any, dict[float, bool]]:
    """A device's comparison of the new version, out of fold and scored on its unshared
    records as the SDK's device makes it (``adopted(..., previous=, shared_records=)``), and
    whether "the version must prove itself" (``DecisionRule(confidence=c)``) keeps it at each
    of :data:`CONFIDENCES`: the model it holds if kept (else ``None``) and the decisions.

    The comparison runs once, under the rule at 0.5 (a t statistic of 0 or more), and the
    per-record errors it was decided on decide every stricter level too: a version kept at a
    level is kept at every lower one, and the model kept is the same (the re-personalized
    version), so one comparison gives what each level's own run would."""
    from dmt_model.personalize import DecisionRule, adopted

    seen: list[tuple[np.ndarray, np.ndarray]] = []

    class Noted(DecisionRule):
        def decide(self, before: np.ndarray, after: np.ndarray) -> tuple[bool, str]:
            seen.append((np.array(before, dtype=float), np.array(after, dtype=float)))
            return super().decide(before, after)

    if len(unshared) < 2:  # nothing to score: the device keeps its model
        return None, dict.fromkeys(CONFIDENCES, False)
    model, result = adopted(new, current, unshared, previous=previous, shared_records=shared,
                            rule=Noted(confidence=0.5))
    if not seen:  # refused before comparing (a non-finite loss): kept at no level
        return None, dict.fromkeys(CONFIDENCES, False)
    (before, after), = seen
    kept = {c: DecisionRule(confidence=c).decide(before, after)[0] for c in CONFIDENCES}
    assert kept[0.5] == result.accepted
    return (model if result.accepted else None), kept


def _unclaimed_user(new_data: bytes, current_data: bytes, previous_data: bytes, unshared: Any,
                    shared: Any, test: Any, task: Any, reference: Any = None,
                    weights: Any = None) -> dict[str, Any]:
    """One device offered a version released without a device claim (in a worker process):
    its test error (and expected error, as :func:`_user`) when it never adopts, always
    adopts, and adopts if the version proves itself at each of :data:`CONFIDENCES`."""
    from dmt_model.coreml import predict_frame
    from dmt_model.coreml._spec import spec_from_bytes
    from dmt_model.personalize import featurizer_of, personalized

    train = pd.concat([shared, unshared])
    new, current = spec_from_bytes(new_data), spec_from_bytes(current_data)
    previous = spec_from_bytes(previous_data)
    actual = featurizer_of(new).target_values(test, dtype=float)
    truth = None if reference is None else featurizer_of(new).target_values(reference,
                                                                             dtype=float)

    def scores(spec: Any, moved: bool) -> dict[str, Any]:
        expected = None if reference is None else expected_error(task, spec, reference, truth,
                                                                 weights)
        return {"error": user_scores(task, predict_frame(spec, test), actual)["error"],
                "expected": expected, "moved": moved}

    kept_model, kept = _proof_at_every_level(new, current, previous, unshared, shared)
    never, adopted_scores = scores(current, False), (scores(kept_model, True)
                                                     if kept_model is not None else None)
    out = {"never": never, "always": scores(personalized(new, train)[0], True)}
    out |= {f"proof {c:g}": adopted_scores if kept[c] else never for c in CONFIDENCES}
    return out


def _summary(per_user: list[dict[str, Any]], rules: list[str]) -> dict[str, Any]:
    """Per rule: users' mean test error, the share that moved, harmed (moved, and the test
    error rose above the personal model's) and missed (kept the personal model where
    adopting would have lowered it), and the same on the expected error where measured,
    with what the users harmed in expectation lose (their mean rise and the worst)."""
    keep = np.array([u["never"]["error"] for u in per_user])
    take = np.array([u["always"]["error"] for u in per_user])
    rows = {}
    for rule in rules:
        error = np.array([u[rule]["error"] for u in per_user])
        moved = np.array([u[rule]["moved"] for u in per_user])
        rows[rule] = {"error": float(error.mean()), "moved": float(moved.mean()),
                      "harmed": float(np.mean(moved & (error > keep))),
                      "missed": float(np.mean(~moved & (take < keep)))}
        if per_user[0]["never"]["expected"] is not None:
            keep_e, take_e, mine = (np.array([u[r]["expected"] for u in per_user])
                                    for r in ("never", "always", rule))
            harmed = moved & (mine > keep_e)
            loss = (mine - keep_e)[harmed]  # what the harmed lose, in expectation
            rows[rule] |= {
                "expected": float(mine.mean()),
                "harmed_expected": float(np.mean(harmed)),
                "missed_expected": float(np.mean(~moved & (take_e < keep_e))),
                "harmed_loss_expected": float(loss.mean()) if loss.size else None,
                "harmed_loss_worst": float(loss.max()) if loss.size else None}
    return rows


def run_unclaimed(name: str, seed: int, users: int, version: str, workers: int
                  ) -> dict[str, Any]:
    """One seed of ``name`` where the server retrains on every user's packages (``version``:
    ``"raw"`` as shared, or ``"ε=E"`` under local DP at user-level ε E) and releases the new
    version without a device claim — as ``run_loop`` does under local DP, where it holds out
    no devices, or with too few held-out devices — so each device decides on its own records
    alone."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from dmt_model.coreml import UpdateSettings, build_spec
    from dmt_model.coreml._spec import spec_bytes

    started = time.perf_counter()
    task, sim, foundation, current, rate = _seed_setting(name, seed, users, workers)
    how = {} if version == "raw" else {"epsilon": float(version.removeprefix("ε="))}
    model, _, _, _ = dmt_model_for(sim, task, foundation, how, seed, rate)
    new = spec_bytes(build_spec(model, updatable=UpdateSettings()))
    previous = spec_bytes(build_spec(foundation, updatable=UpdateSettings()))
    references = (expected_error_weights(sim, task.target, task=name)
                  or [(None, None)] * len(sim.users))
    jobs = [(new, current[i], previous, u.private, u.shareable, u.test, task.task,
             *references[i]) for i, u in enumerate(sim.users)]
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        per_user = list(pool.map(_unclaimed_user, *zip(*jobs, strict=True)))
    rows = _summary(per_user, ["never", *(f"proof {c:g}" for c in CONFIDENCES), "always"])
    seconds = time.perf_counter() - started
    print(f"{name} {version} seed {seed}: " + ", ".join(
        f"{r} {v['error']:.4g} ({v['moved']:.0%})" for r, v in rows.items())
        + f" ({seconds:.0f} s)", flush=True)
    return {"task": name, "seed": seed, "users": len(sim.users), "version": version,
            "error_name": task.task.error_name, "rules": rows, "seconds": seconds}


def unclaimed_summary(runs: list[dict[str, Any]]) -> str:
    """The README's table of ``--unclaimed``: per task and version, for each rule, the change
    in users' mean test error from never adopting — its mean over the seeds, the worst
    seed's, and the share of devices that moved."""
    rules = list(runs[0]["rules"])[1:]  # every rule but "never"
    names = {"always": "always adopt", **{f"proof {c:g}": f"proves itself at {c * 100:g} %"
                                          for c in CONFIDENCES}}
    lines = ["| task | version | never adopting | " + " | ".join(names[r] for r in rules)
             + " |", "|---|---|---|" + "---|" * len(rules)]
    for name, users, version in dict.fromkeys((r["task"], r["users"], r["version"])
                                              for r in runs):
        mine = [r for r in runs if (r["task"], r["users"], r["version"]) == (name, users,
                                                                              version)]
        cells = []
        for rule in rules:
            change = [r["rules"][rule]["error"] - r["rules"]["never"]["error"] for r in mine]
            moved = np.mean([r["rules"][rule]["moved"] for r in mine])
            cells.append(f"{np.mean(change):+.3g} (worst {max(change):+.3g}; {moved:.0%})")
        never = np.mean([r["rules"]["never"]["error"] for r in mine])
        lines.append(f"| {ADOPTION_TASKS[name].title}, {users} users ({mine[0]['error_name']}, "
                     f"{len(mine)} seed{'s' * (len(mine) > 1)}) | {version} | {never:.4g} | "
                     + " | ".join(cells)
                     + " |")
    return "\n".join(lines) + "\n"


def unclaimed_markdown(runs: list[dict[str, Any]]) -> str:
    """The tables of ``--unclaimed``: :func:`unclaimed_summary`, then per task, version and
    rule, users' mean test error and its paired difference from never adopting (mean ± std
    over seeds), moved, harmed, missed, and the expected-error figures where measured."""
    lines = [unclaimed_summary(runs),
             "| task | version | rule | users' mean test error | vs never adopting | moved | "
             "harmed | missed | users' mean expected error | vs never, expected | "
             "harmed, expected |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    keys = dict.fromkeys((r["task"], r["users"], r["version"]) for r in runs)
    for name, users, version in keys:
        mine = [r for r in runs if (r["task"], r["users"], r["version"]) == (name, users,
                                                                              version)]
        for rule in mine[0]["rules"]:
            cell = [r["rules"][rule] for r in mine]
            gain = [c["error"] - r["rules"]["never"]["error"] for c, r in zip(cell, mine,
                                                                           strict=True)]
            spread = f" ± {np.std(gain, ddof=1):.2g}" if len(mine) > 1 else ""
            cells = [f"{np.mean([c['error'] for c in cell]):.4g}",
                     f"{np.mean(gain):+.3g}{spread}"]
            cells += [f"{np.mean([c[k] for c in cell]):.0%}" for k in ("moved", "harmed",
                                                                        "missed")]
            if "expected" in cell[0]:
                drift = [c["expected"] - r["rules"]["never"]["expected"]
                         for c, r in zip(cell, mine, strict=True)]
                cells += [f"{np.mean([c['expected'] for c in cell]):.4g}",
                          f"{np.mean(drift):+.3g}",
                          f"{np.mean([c['harmed_expected'] for c in cell]):.0%}"]
            else:
                cells += ["—"] * 3
            label = rule if not rule.startswith("proof ") else \
                f"must prove itself at {float(rule.split()[1]) * 100:g} %"
            lines.append(f"| {ADOPTION_TASKS[name].title}, {users} users ({mine[0]['error_name']}, "
                         f"{len(mine)} seed{'s' * (len(mine) > 1)}) | {version} | {label} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown(runs: list[dict[str, Any]]) -> str:
    """One table per task and number of users (the README's): each rule's users' mean test
    error, its change from never adopting, and the shares moved, harmed and missed; with a
    user's expected error when the task has it (Adult, over their own label mix; Friedman #2)."""
    blocks = []
    for name, users in dict.fromkeys((r["task"], r.get("users", 120)) for r in runs):
        mine = [r for r in runs if r["task"] == name and r.get("users", 120) == users]
        expected = "expected" in mine[0]["rules"]["never"]
        header = ["rule", "users' mean test error", "vs never adopting", "moved", "harmed",
                  "missed"]
        if expected:
            header += ["users' mean expected error", "harmed, expected", "missed, expected"]
        losses = expected and "harmed_loss_expected" in mine[0]["rules"]["never"]
        if losses:  # (runs before 083488f did not measure it)
            header += ["the harmed lose, expected (mean, worst)"]
        spread = f", users' spread {mine[0]['spread']:g}" if "spread" in mine[0] else ""
        title = ADOPTION_TASKS[name].title
        lines = [f"**{title}, {users} users{spread}** ({mine[0]['error_name']}, "
                 f"{len(mine)} seed{'s' * (len(mine) > 1)})", "",
                 "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for rule in (*RULES, GATED_LOOSE, GATED):
            if rule not in mine[0]["rules"] and rule not in (GATED, GATED_LOOSE):
                continue  # not measured in this (earlier) run
            cell = [r["rules"][rule] if rule not in (GATED, GATED_LOOSE)
                    else r["rules"][_gated(r, unless_worse=rule == GATED_LOOSE)]
                    for r in mine]
            gain = [c["error"] - r["rules"]["never"]["error"] for c, r in zip(cell, mine,
                                                                           strict=True)]
            cells = [f"{np.mean([c['error'] for c in cell]):.4g}", f"{np.mean(gain):+.3g}"
                     + (f" ± {np.std(gain, ddof=1):.2g}" if len(mine) > 1 else "")]
            cells += [f"{np.mean([c[k] for c in cell]):.0%}" for k in ("moved", "harmed", "missed")]
            if expected:
                cells += [f"{np.mean([c['expected'] for c in cell]):.4g}"]
                cells += [f"{np.mean([c[k] for c in cell]):.0%}"
                          for k in ("harmed_expected", "missed_expected")]
            if losses:  # over the seeds where any were harmed (None: none)
                lost = [c for c in cell if c["harmed_loss_expected"] is not None]
                cells += [f"{np.mean([c['harmed_loss_expected'] for c in lost]):.3g}, "
                          f"{max(c['harmed_loss_worst'] for c in lost):.3g}" if lost else "—"]
            lines.append(f"| {LABELS[rule]} | " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def runs_asked(tasks: list[str], users: list[int]) -> list[tuple[int, str]]:
    """(users, task) to run, in order: each available task at each number of ``users``, a
    real regression once, at its :data:`REAL_USERS` (it holds a few hundred records)."""
    return list(dict.fromkeys((REAL_USERS if name in REAL_TASKS else n, name)
                              for n in users for name in tasks
                              if ADOPTION_TASKS[name].available()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["friedman", "adult", "digits"],
                        choices=sorted(ADOPTION_TASKS))
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--users", type=int, nargs="+", default=[120],
                        help="users per simulation; several values run each (default 120)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--render", action="store_true",
                        help="rewrite the table from the JSON in OUTPUT")
    parser.add_argument("--unclaimed", nargs="*", metavar="VERSION",
                        help="measure versions released without a device claim instead: "
                             "'raw' (retrained on every user's packages as shared) or a "
                             "user-level epsilon of local DP ('4'); writes "
                             "adoption_unclaimed.{json,md}")
    parser.add_argument("--spread", type=float,
                        help="the regression users' target factors within 1 ± SPREAD (the "
                             "task's 0.3 by default; 0: users whose targets follow the "
                             "proxy's function); writes adoption_{TASK}_spread{SPREAD}")
    args = parser.parse_args(argv)
    if args.unclaimed == [] and not args.render:
        parser.error("--unclaimed needs the versions to measure: raw, or epsilons (4 1 8)")
    if args.spread is not None and (args.unclaimed is not None or len(args.tasks) != 1
                                    or args.tasks[0] not in SPREADS):
        parser.error(f"--spread is a regression's: pass one of --tasks {' '.join(SPREADS)}, "
                     "without --unclaimed")
    stem = ("adoption_unclaimed" if args.unclaimed is not None else "adoption"
            if args.spread is None else f"adoption_{args.tasks[0]}_spread{args.spread:g}")
    render = unclaimed_markdown if args.unclaimed is not None else markdown
    if args.render:
        saved = json.loads((args.output / f"{stem}.json").read_text())["runs"]
        (args.output / f"{stem}.md").write_text(render(saved))
        print(render(saved))
        return
    if args.unclaimed:
        versions = ["raw" if v == "raw" else f"ε={float(v):g}" for v in args.unclaimed]
        runs = [run_unclaimed(name, seed, users, version, args.workers)
                for users, name in runs_asked(args.tasks, args.users)
                for version in versions for seed in range(args.seeds)]
    else:
        runs = [run_seed(name, seed, users, args.workers, args.spread)
                for users, name in runs_asked(args.tasks, args.users)
                for seed in range(args.seeds)]
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / f"{stem}.json").write_text(json.dumps({"runs": runs}, indent=1))
    (args.output / f"{stem}.md").write_text(render(runs))
    print(render(runs))


if __name__ == "__main__":
    main()
