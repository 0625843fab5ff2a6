"""The whole loop on simulated users, in one function: what ``dmt demo`` shows and
``benchmarks/model_quality.py`` measures.

1. The server keeps part of its proxy data aside for validation
   (:func:`~dmt_model.server.retrain.validation_split`), trains the foundation
   on the rest and publishes it as v1.
2. Each device stores its records (:class:`~dmt_privacy.store.LocalStore`) and
   personalizes v1 on all of them (:func:`~dmt_model.personalize.personalize`:
   kept only if cross-validation says it helps).
3. Each device shares its shareable records: modified first where
   ``modifiers`` say (synonyms for text, blur for images), quasi-identifiers
   generalized by a k-anonymity plan fitted on the server's training proxy,
   the target under local DP (Laplace for a number, randomized response for
   a class), sealed to the server's key (:func:`~dmt_privacy.sharing.share`);
   the server ingests them and releases classes holding records from k devices.
4. The server holds out the packages of some devices (``held_out_share``),
   retrains on its training proxy plus the other released records as
   received (re-validated and weighed by its own policy), and publishes v2
   only if it is no worse on the validation data and, personalized on each
   held-out device's records as the device would, better for those devices
   (:func:`~dmt_model.personalize.compare_on_devices`). The signed release
   says on how many devices it was shown better. Under local DP on the target
   the server could not check on those devices' noisy records, so they share
   nothing and check v2 themselves (:mod:`dmt_model.version_check`): v2 is
   published without the claim, each of them personalizes both versions on its
   own records and reports one bit (better?) by randomized response at
   ``report_epsilon``, charged to its ledger and sealed; the server tallies the
   reports and signs v2's release again with the claim if more than half of the
   devices are shown better off.
   The server also compares, on the same held-out devices, the rules devices personalize
   v2 under (:meth:`~dmt_model.server.retrain.ModelRegistry.check_personal_rule`); the
   release grants the open rule only where it is shown better.
5. If v2 is published, each device verifies its release and adopts it
   re-personalized on its local records (all of them by default) under the
   rule the release earns (:func:`~dmt_model.personalize.adoption_rule_for`):
   a version shown better than v1 (the release's baseline, the version the
   devices personalized) on held-out devices is adopted unless the device's
   own records show it worse; one that was not must prove itself on them,
   significantly at 99 % (:data:`~dmt_model.personalize.UNCHECKED_RULE`); a release
   granting the open rule has v2 re-personalized under its guard of few records.
   Both sides are scored out of fold on the records the device did not share
   (v2 may have trained on the others).

Every figure is a per-user test error on records no step trained on: the
task's headline error (:mod:`dmt_model.tasks`: RMSE for a regression, log
loss for a classification), with accuracy beside it for a classification.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from dmt_model.datasets.users import Simulation
from dmt_model.foundation import TrainingConfig
from dmt_privacy.errors import TooFewRecords, ValidationError
from dmt_privacy.schema import Schema

__all__ = ["LoopResult", "UserOutcome", "run_loop"]

T = TypeVar("T")
Progress = Callable[[Iterable[T], str], Iterable[T]]
Stage = Callable[[str], None]


@dataclass(frozen=True)
class UserOutcome:
    """One simulated user's test error at each stage of the loop (the task's headline error:
    RMSE or log loss); ``accuracy`` holds a classifier's accuracy at the same stages."""

    user_id: int
    factor: float
    foundation: float  # v1 as shipped
    oracle: float  # v1 told the user's shift (× factor; a classifier: reweighted to its labels)
    personal: float  # v1 personalized on the device; nothing shared
    personalized: bool  # whether the decision rule kept that update
    new_version: float | None  # v2 as shipped, if the gate published it
    final: float  # the model the device holds at the end
    adopted: bool  # whether the device adopted v2
    shared_records: int
    epsilon_spent: float  # user-level ε the device's ledger was charged
    accuracy: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class LoopResult:
    users: tuple[UserOutcome, ...]
    v1_validation_error: float
    v2_validation_error: float
    v2_published: bool
    packages_accepted: int
    packages_rejected: int
    records_released: int
    records_quarantined: int
    workdir: Path
    devices: dict[int, Path] = field(default_factory=dict)  # user id → personal model file
    metric: str = "RMSE"  # what the errors are: "RMSE" or "log loss"
    #: what the gate measured of v2 (ModelVersion.validation): on the validation data, and on
    #: the held-out devices ("devices", "device_error", "current_device_error", "device_t")
    v2_validation: dict[str, float] = field(default_factory=dict)
    #: devices whose packages v2 did not train on, to check it (under local DP: asked to
    #: check it instead of sharing)
    held_out_devices: int = 0
    epsilon: float | None = None  # the per-record ε of the target's local DP, if any

    @property
    def v1_validation_rmse(self) -> float:
        """Deprecated name of :attr:`v1_validation_error` (an RMSE for a regression)."""
        return self.v1_validation_error

    @property
    def v2_validation_rmse(self) -> float:
        """Deprecated name of :attr:`v2_validation_error` (an RMSE for a regression)."""
        return self.v2_validation_error

    def mean(self, stage: str) -> float:
        """Mean over users of one stage's error (``"foundation"``, ``"personal"``, ``"final"``…)."""
        values = [getattr(u, stage) for u in self.users]
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else float("nan")

    def mean_accuracy(self, stage: str) -> float:
        """Mean over users of one stage's accuracy (a classification; NaN otherwise)."""
        values = [u.accuracy[stage] for u in self.users if stage in u.accuracy]
        return float(np.mean(values)) if values else float("nan")


def _scores(featurizer: Any, predicted: np.ndarray, frame: Any) -> tuple[float, float | None]:
    """(the task's headline error, accuracy or None) of predictions on ``frame``."""
    metrics = featurizer.task.metrics(predicted, featurizer.target_values(frame))
    return metrics.error, getattr(metrics, "accuracy", None)


def _oracle(featurizer: Any, predicted: np.ndarray, user: Any, proxy: Any) -> np.ndarray:
    """v1's predictions told the user's shift: a regression's × the user's factor; a
    classifier's probabilities reweighted by the user's label mix over the proxy's (Bayes'
    rule under label shift; users whose inputs differ get no more than that)."""
    if not featurizer.classes_:
        return predicted * user.factor
    mix = getattr(user, "label_distribution", None)
    if mix is None or len(mix) == 0:  # no label shift drawn: v1 is the oracle
        return predicted
    prior = np.bincount(featurizer.target_values(proxy), minlength=len(featurizer.classes_))
    ratio = np.asarray(mix, np.float64) / np.maximum(prior / prior.sum(), 1e-12)
    weighted = predicted * ratio
    return weighted / weighted.sum(axis=1, keepdims=True)


def _quietly(items: Iterable[T], _: str) -> Iterable[T]:
    return items


def run_loop(
    simulation: Simulation,
    schema: Schema,
    *,
    quasi_identifiers: Sequence[str],
    workdir: str | Path,
    k: int = 5,
    epsilon: float | None = 1.0,
    seed: int = 0,
    config: TrainingConfig | None = None,
    foundation: Any = None,
    validation_fraction: float = 0.2,
    adopt_on: Literal["all", "unshared"] = "all",
    held_out_share: float | None = 0.25,
    report_epsilon: float = 1.0,
    modifiers: Mapping[str, Any] | None = None,
    progress: Progress[Any] | None = None,
    on_stage: Stage | None = None,
) -> LoopResult:
    """Run the loop of the module docstring; files go under ``workdir`` (which must be empty).

    ``progress(iterable, description)`` wraps the per-user iterations (for
    progress bars) and ``on_stage(description)`` is called as each server
    stage starts; ``adopt_on`` chooses which local records a device
    re-personalizes v2 on. ``foundation``: a v1 already trained on the
    training part of :func:`~dmt_model.server.retrain.validation_split` with
    the same ``seed`` and ``validation_fraction`` (it is trained here if
    ``None``); without ``config``, v2 trains as it did (else as
    :meth:`TrainingConfig.for_schema` says). ``modifiers`` (field → a
    :mod:`dmt_privacy.modify` transformer)
    modify what devices share before it is anonymized; the server retrains on
    it as modified. Without ``quasi_identifiers`` no k-anonymity plan is
    applied (a classifier of images or texts has none). ``epsilon``: the
    per-record ε of the target's local DP, ``None`` to share it as it is.
    ``held_out_share``: the share of devices that check v2 instead of training
    it (drawn from ``seed`` among the devices; 0 checks on none). With the target
    shared as it is the server keeps their packages out of retraining and checks
    on them. Under local DP on the target it cannot: the noise (Laplace of scale
    the bounds' width at ε = 1) leaves a device's few records unable to tell two
    versions apart, cannot be personalized on as a device personalizes on its
    own records, and randomized-response labels can score a flatter version
    better, so what they showed would not be what the signed claim says. Those
    devices share nothing then, and report instead, each one bit at
    ``report_epsilon`` (:func:`~dmt_model.version_check.check_version`, on all
    its records, with the one token the server gave it when it asked:
    :class:`~dmt_model.version_check.VersionCheckIssuer`), which every device's budget
    holds beside what sharing costs;
    if fewer would be asked than could ever show v2 better
    (:func:`~dmt_model.version_check.reports_needed`, 4), none is, and every
    device shares.
    With fewer held-out devices of 2 records than could show v2 better (2 for the
    server's check, :func:`~dmt_model.version_check.reports_needed` for reports),
    or a check that does not show it better, v2's release carries no device
    claim, and devices ask it to prove itself at 99 %.
    """
    from dmt_model.coreml import load_spec, predict_frame
    from dmt_model.foundation import train_foundation
    from dmt_model.personalize import adopt_new_version, adoption_rule_for, personalize
    from dmt_model.server import ServerPolicy, SharedStore, ingest
    from dmt_model.server.retrain import ModelRegistry, retrain_foundation, validation_split
    from dmt_model.server.training import policy_batches
    from dmt_model.version_check import (
        VersionCheckIssuer,
        check_version_many,
        claim_chance,
        open_version_check,
        reports_needed,
        request_version_check_token,
        seal_version_check,
    )
    from dmt_privacy.anonymity import KAnonymizer
    from dmt_privacy.files import write_atomically
    from dmt_privacy.release import generate_release_key, verify_release
    from dmt_privacy.seal import generate_server_key
    from dmt_privacy.sharing import SharingPolicy, share
    from dmt_privacy.store import LocalStore

    if adopt_on not in ("all", "unshared"):
        raise ValidationError(f"adopt_on must be 'all' or 'unshared', got {adopt_on!r}.")
    if held_out_share is None:  # the default before local DP held devices out too
        held_out_share = 0.25
    if not (isinstance(held_out_share, int | float) and 0 <= held_out_share < 1):
        raise ValidationError(f"held_out_share must be in [0, 1), got {held_out_share!r}; "
                              "0 checks v2 on no device.")
    if not (isinstance(report_epsilon, int | float) and math.isfinite(report_epsilon)
            and report_epsilon > 0):
        raise ValidationError(f"report_epsilon must be a finite number > 0, got "
                              f"{report_epsilon!r}: the ε of each held-out device's report "
                              "on v2 under local DP.")
    workdir = Path(workdir)
    if workdir.exists() and any(workdir.iterdir()):
        raise ValidationError(f"workdir {workdir} is not empty; give a new or empty folder.")
    progress = progress or _quietly
    on_stage = on_stage or (lambda description: None)
    target = schema.target
    if target is None:
        raise ValidationError(f"Schema {schema.name!r} has no target field.")

    # 1. The server: training proxy, validation proxy, v1.
    proxy, validation = validation_split(simulation.proxy, fraction=validation_fraction,
                                         seed=seed)
    if config is None:  # v2 trains as the v1 given did (helper-128), else as the SDK's
        config = foundation.config if foundation is not None else \
            TrainingConfig.for_schema(schema, seed=seed, records=len(proxy))
    if foundation is None:
        on_stage(f"server: training v1 on {len(proxy)} proxy records "
                 f"({len(validation)} kept aside for validation)")
        foundation = train_foundation(proxy, schema, config)
    registry = ModelRegistry(workdir / "server" / "models")
    v1 = registry.publish(foundation, trained_on={"proxy": len(proxy)},
                          validation_data=validation, notes="proxy data only")
    v1_model = registry.path(v1.mlmodel_file)
    v1_spec = load_spec(v1_model)

    # 2. Devices store their records and personalize v1.
    stores, personal_paths, first = {}, {}, {}
    for user in progress(simulation.users, "devices: personalizing v1"):
        folder = workdir / "devices" / f"user-{user.user_id:03d}"
        folder.mkdir(parents=True)
        # what sharing them all costs, and a report on v2 (nothing is charged without
        # local DP)
        budget = epsilon * max(1, len(user.shareable)) + report_epsilon \
            if epsilon is not None else 1.0
        store = LocalStore(folder / "records.db", schema=schema,
                           user_id=f"user-{user.user_id:03d}", epsilon_budget=budget,
                           key=LocalStore.generate_key())  # a device's, from its keystore
        store.add_records(user.shareable)
        store.add_records(user.private, shareable=False)
        personal = folder / "personal.mlmodel"
        shutil.copyfile(v1_model, personal)
        result = personalize(personal, user.train, seed=seed)
        store.add_model_version(personal, note=f"v1: {result.reason}")
        stores[user.user_id], personal_paths[user.user_id] = store, personal
        first[user.user_id] = (result.accepted, load_spec(personal))

    # 3. Partial sharing: k-anonymized quasi-identifiers, the target under local DP, sealed.
    server_key = generate_server_key()
    plan = None
    if quasi_identifiers:
        categorical = {f.name: object for f in schema.by_kind("categorical")}
        plan = KAnonymizer(list(quasi_identifiers), k=k).fit(
            proxy.astype(categorical)).plan_.widened_to(schema)
    dp = {} if epsilon is None else {target.name: epsilon}
    sharing = SharingPolicy(fields=tuple(schema.names), plan=plan, modifiers=modifiers or {},
                            epsilon=dp, required_k=k if plan else None,
                            privacy_unit="user")
    server_policy = ServerPolicy(schema, min_k=k, epsilon=dp,
                                 privacy_unit="user", plan=plan)
    # Under local DP the server asks some devices to check v2 instead of sharing (it could
    # not check on their noisy packages): they share nothing and spend only their report.
    # Fewer than could ever show v2 better (reports_needed) are not asked: they would give up
    # sharing for nothing.
    ids = {str(u.user_id): u.user_id for u in simulation.users}
    checkers = {ids[d] for d in _hold_out(ids, held_out_share, seed)} \
        if epsilon is not None else set()
    if len(checkers) < reports_needed():
        checkers = set()
    envelopes, owners = [], {}
    for user in progress(simulation.users, "devices: sharing"):
        if user.user_id in checkers:
            continue
        package = share(stores[user.user_id], sharing, server_key.public_key())
        envelopes.append(package.envelope)
        owners[package.package_id] = user.user_id
    db_url = f"sqlite:///{workdir / 'server' / 'shared.db'}"
    report = ingest(envelopes, db_url, server_key, server_policy)
    for package_id in report.stored_ids:  # acknowledgements go back to the devices
        stores[owners[package_id]].acknowledge(package_id)
    shared_store = SharedStore(db_url, server_key)
    counts = shared_store.counts()
    sent = {package_id: i for i, package_id in enumerate(owners)}  # the order devices sent in

    # 4. Retrain on the training proxy + the released records of the devices not held out,
    # as received; the gate checks v2 on the validation data and on the held-out devices.
    # The held-out devices' records as received: not winsorized around v1's predictions,
    # which would pull their targets toward v1 and bias the comparison in its favour.
    received, _ = policy_batches(shared_store, server_policy)
    received.sort(key=lambda batch: sent[batch.package_id])
    held = _hold_out({b.package_id: owners[b.package_id] for b in received},
                     held_out_share if epsilon is None else 0.0, seed)
    devices = _held_out_devices(received, owners, held, foundation.featurizer, seed=seed)
    # Their packages' release cohorts are left out whole: training on the rest of a cohort
    # would train on fewer than k packages of its class.
    batches, _ = policy_batches(shared_store, server_policy, previous=foundation, proxy=proxy,
                                exclude=held)
    # in the order the devices sent them: the store reads them in the order of their ids,
    # which are random, and retraining on another order gave another v2 from the same seed
    batches.sort(key=lambda batch: sent[batch.package_id])
    # every device asked reports: one that cannot check reports "not better" (check_version)
    reporters = sorted(checkers)
    on_stage(f"server: retraining v2 on {len(proxy)} proxy + "
             f"{sum(len(b.records) for b in batches)} released records "
             + (f"({len(devices)} devices' packages held out to check it)" if epsilon is None
                else f"({len(checkers)} devices asked to check it instead of sharing)"))
    retrained = retrain_foundation(foundation, proxy, batches, config)
    release_key = generate_release_key()  # the app pins its public half
    server_check = epsilon is None and len(devices) >= 2
    v2 = registry.publish(retrained, trained_on={
        "proxy": len(proxy), "shared": sum(len(b.records) for b in batches)},
        validation_data=validation, validation_devices=devices if server_check else None,
        signing_key=release_key, server_key=server_key.public_key(),
        notes=f"proxy + shared records (k={k}, ε={'none' if epsilon is None else epsilon})")
    # Retraining that gave v1's weights again (nothing shared) publishes nothing new.
    shipped = v2.published and v2.version > v1.version
    if v2.version == v1.version:
        on_stage("server: the retrained foundation is v1's, weight for weight: nothing new "
                 "to publish")
    v2_spec = load_spec(registry.path(v2.mlmodel_file))
    rule, v2_model = None, workdir / "devices" / "v2.mlmodel"

    def verified() -> Any:  # what every device does before it reads v2
        return verify_release(registry.path(v2.release_file).read_bytes(),
                              registry.path(v2.mlmodel_file).read_bytes(),
                              release_key.verify_key(), installed_version=v1.version)

    if shipped and len(reporters) >= reports_needed():
        # Each held-out device checks v2 on its records and reports one bit, sealed; the
        # server tallies them and signs v2's release again if they show it better.
        # what the check can show at best: every device asked better off with v2
        at_best = claim_chance(len(reporters), len(reporters), epsilon=report_epsilon)
        on_stage(f"devices: {len(reporters)} devices asked to check v2 report (one bit each "
                 f"at ε={report_epsilon:g}; were every one better off with v2, the tally "
                 f"would show it better with chance {at_best:.0%})")
        # The server gives each device it asks one token for this check (a blind signature:
        # it never sees the token), and counts only reports that carry one, each once. It
        # signs the check's key and ε into v2's release first; each device verifies that
        # release and takes a token only under the key it names.
        issuer = VersionCheckIssuer(version=v2.version, sha256=verified().metadata.sha256,
                                    baseline=v1.version, epsilon=report_epsilon)
        v2 = registry.announce_version_check(issuer, signing_key=release_key,
                                             server_key=server_key.public_key())
        release = verified()
        tokens = []
        for user_id in reporters:
            # report_epsilon is this app's own choice, so it is passed, not taken from v2
            pending = request_version_check_token(release, issuer.public_key,
                                                  epsilon=report_epsilon)
            tokens.append(pending.finalize(issuer.ask(pending.body, device=str(user_id)))[0])
        checks = check_version_many(
            release, v1_model, [stores[u].records("all") for u in reporters],
            ledgers=[stores[u].ledger for u in reporters], epsilon=report_epsilon, seed=seed,
            tokens=tokens)
        sealed = [seal_version_check(c, release.server_public_key()) for c in checks]
        tally = issuer.tally([open_version_check(e, server_key) for e in sealed])
        v2 = registry.record_version_checks(tally, signing_key=release_key,
                                            server_key=server_key.public_key())
    if shipped and server_check:
        # On the same held-out devices the server compares the rules devices personalize v2
        # under (check_personal_rule): v2's release grants the open rule only if it is shown
        # better, and devices adopting v2 then re-personalize it under the open rule's guard.
        try:
            v2 = registry.check_personal_rule(v2.version, devices, signing_key=release_key,
                                              server_key=server_key.public_key())
            found = "better" if v2.validation["open_rule_better"] else "not shown better"
            on_stage(f"server: the open rule for personalizing v2 is {found} on "
                     f"{v2.validation['open_rule_devices']:.0f} held-out devices")
        except TooFewRecords:  # fewer than 2 held-out devices of 4 records: no claim
            on_stage("server: too few held-out devices with 4 records to compare the rules "
                     "devices personalize v2 under; its release grants no open rule")
    if shipped:
        release = verified()
        # and adopt exactly the bytes it verified, not the server's file read again
        write_atomically(v2_model, release.model)
        rule = adoption_rule_for(release, new_version=v2_model)

    # 5. Devices adopt v2 if the gate published it, unless their records show it worse.
    outcomes = []
    for user in progress(simulation.users, "devices: adopting v2"):
        store = stores[user.user_id]
        adopted = False
        unshared = store.records("unshared")
        if shipped and len(unshared) >= 2:  # too few unseen records to judge: keep
            shared = store.records("shared") if adopt_on == "all" else None
            try:
                adopted = adopt_new_version(v2_model,
                                            store.check_model(), unshared,  # its bytes
                                            shared_records=shared, previous=v1_model,
                                            rule=rule, seed=seed).accepted
            except TooFewRecords:  # unshared records that copy shared or each other: keep
                adopted = False
            if adopted:
                store.add_model_version(personal_paths[user.user_id], note="v2 adopted")
        featurizer = foundation.featurizer
        base = predict_frame(v1_spec, user.test)
        personalized, personal_spec = first[user.user_id]
        stages = {"foundation": base, "oracle": _oracle(featurizer, base, user, proxy),
                  "personal": predict_frame(personal_spec, user.test),
                  "final": predict_frame(load_spec(personal_paths[user.user_id]), user.test)}
        if shipped:
            stages["new_version"] = predict_frame(v2_spec, user.test)
        scores = {stage: _scores(featurizer, p, user.test) for stage, p in stages.items()}
        outcomes.append(UserOutcome(
            user_id=user.user_id, factor=user.factor, foundation=scores["foundation"][0],
            oracle=scores["oracle"][0], personal=scores["personal"][0],
            personalized=personalized,
            new_version=scores["new_version"][0] if shipped else None,
            final=scores["final"][0],
            adopted=adopted, shared_records=len(store.records("shared")),
            epsilon_spent=float(store.ledger.spent.epsilon),
            accuracy={stage: a for stage, (_, a) in scores.items() if a is not None}))
        store.close()
    return LoopResult(
        users=tuple(outcomes), v1_validation_error=v1.validation["error"],
        v2_validation_error=v2.validation["error"], v2_published=shipped,
        packages_accepted=len(report.accepted), packages_rejected=len(report.rejected),
        records_released=int(counts.get("records_released", 0)),
        records_quarantined=int(counts.get("records_quarantined", 0)),
        workdir=workdir, devices=personal_paths,
        metric="log loss" if foundation.featurizer.classes_ else "RMSE",
        v2_validation=dict(v2.validation),
        held_out_devices=len(checkers) if epsilon is not None else len(devices),
        epsilon=epsilon)


def _held_out_devices(batches: Sequence[Any], owners: Mapping[str, int], held: set[str],
                      featurizer: Any, *, seed: int) -> list[Any]:
    """One frame per held-out device with at least 2 records: its packages' records
    (``batches`` whose ``package_id`` is in ``held``) as plain records
    (:meth:`~dmt_model.features.Featurizer.plain_released`), in the order of the devices'
    ids. The device is the unit of :func:`~dmt_model.personalize.compare_on_devices`, so a
    device's packages are one frame, never several devices."""
    import pandas as pd

    frames: dict[int, list[pd.DataFrame]] = {}
    for batch in batches:
        if batch.package_id in held:
            frames.setdefault(owners[batch.package_id], []).append(featurizer.plain_released(
                batch.records, hierarchies=batch.hierarchies, seed=seed))
    devices = [pd.concat(frames[d], ignore_index=True) for d in sorted(frames)]
    return [records for records in devices if len(records) >= 2]


def _hold_out(owners: Mapping[str, int], share: float, seed: int) -> set[str]:
    """The packages of ``share`` of the devices (at least 2 of 4 or more, else none).

    ``owners`` maps each package id to the device that sent it. Devices are drawn from
    ``seed`` in the order of their ids, not of the package ids (random), so a seed holds
    out the same devices on every run; every package of a drawn device is held out, so no
    device is both trained on and checked.
    """
    devices = sorted(set(owners.values()))
    n = len(devices)
    count = min(n, max(2, round(share * n))) if share > 0 and n >= 4 else 0
    drawn = {devices[i] for i in np.random.default_rng(seed).choice(n, size=count,
                                                                    replace=False).tolist()}
    return {package for package, device in owners.items() if device in drawn}
