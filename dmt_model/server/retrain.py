"""Retraining the foundation on proxy data plus what devices shared, as new model versions.

Shared records arrive generalized (intervals, value sets, hierarchy nodes) and
perturbed (local DP); :meth:`~dmt_model.features.Featurizer.transform_released`
states how each becomes a training feature. The featurizer stays the one
fitted on the proxy data, so every version standardizes inputs the same way.

Each retrained foundation is published by :class:`ModelRegistry` as a new
version: the foundation (``.npz``), its updatable Core ML model, and a JSON
record of how it was trained and how it evaluates. Files are written
atomically and the index last, so a failed publish leaves the registry as it
was.

A retrained version is *served* only if it passes the gate: no worse than the
current published version on validation data the server keeps aside
(:func:`validation_split`); a refused version is kept in the registry with
both figures, but :meth:`ModelRegistry.latest` does not return it.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from dmt_model._non_finite import refuse_non_finite
from dmt_model.coreml import UpdateSettings, export_coreml
from dmt_model.features import FeatureBatch
from dmt_model.foundation import NAME_CLASSES_FROM, Foundation, TrainingConfig, fit_foundation
from dmt_privacy.errors import ModelFileError, ValidationError, warn_caller
from dmt_privacy.files import write_atomically
from dmt_privacy.release import ReleaseSigningKey, release_file_name, sign_release

if TYPE_CHECKING:
    from dmt_model.version_check import VersionCheckIssuer, VersionCheckTally

__all__ = [
    "ModelRegistry",
    "ModelVersion",
    "NoiseWeigher",
    "SharedBatch",
    "retrain_foundation",
    "shared_batches",
    "training_set",
    "validation_split",
]


@dataclass(frozen=True)
class SharedBatch:
    """Records one package (or several with the same receipt) brought to the server."""

    records: pd.DataFrame
    receipt: Any = None  # the local-DP ReleaseReceipt, if the records were perturbed
    hierarchies: Mapping[str, Mapping[Any, Sequence[Any]]] | None = None
    package_id: str = ""  # the package the records came in ("" if not from a package)


def shared_batches(store: Any, which: str = "released", *, policy: Any = None,
                   previous: Foundation | None = None,
                   proxy: pd.DataFrame | None = None) -> list[SharedBatch]:
    """The records a :class:`~dmt_model.server.SharedStore` holds, one batch per package.

    With ``policy`` (the :class:`~dmt_model.server.ServerPolicy`; recommended):
    every package is validated again against it and skipped if it fails, each
    batch carries the DP receipt the policy implies (never the package's own
    claim), at most ``policy.max_training_records`` records of a package are
    used and, with ``previous`` and ``proxy``, targets are winsorized around
    the previous foundation's prediction (:func:`dmt_model.server.training.policy_batches`).
    Without it (deprecated), each batch carries its package's own receipt.
    """
    if policy is not None:
        from dmt_model.server.training import policy_batches

        return policy_batches(store, policy, which, previous=previous, proxy=proxy)[0]

    warn_caller("shared_batches(store) without policy= weighs records by the packages' own "
                "receipts; pass the server's policy.", DeprecationWarning)
    frame = store.frame(which)
    if frame.empty:
        return []
    receipts = store.receipts()
    batches = []
    for package_id, records in frame.groupby("package_id", sort=True):
        receipt = receipts.get(str(package_id))
        batches.append(SharedBatch(records.drop(columns=["package_id", "class_key"]),
                                   receipt=receipt.dp if receipt is not None else None))
    return batches


def retrain_foundation(
    previous: Foundation,
    proxy: pd.DataFrame,
    shared: Sequence[SharedBatch] = (),
    config: TrainingConfig | None = None,
    *,
    warm_start: bool = False,
    weigh_by_noise: bool = True,
    name_classes_from: int = NAME_CLASSES_FROM,
    on_epoch_end: Callable[[int, float], None] | None = None,
) -> Foundation:
    """Train a new foundation on ``proxy`` plus the ``shared`` records, as received.

    ``previous`` supplies the featurizer (fitted on proxy data) and, with
    ``warm_start``, the initial weights; it is not modified. With
    ``weigh_by_noise`` (default), each shared record's loss is weighted by
    :class:`NoiseWeigher` from its release receipt, so records drowned in
    local-DP noise cannot swamp the clean proxy data. A class label released
    under randomized response is learned with the forward correction
    (:mod:`dmt_model.tasks`), with the keep and flip probabilities of its
    receipt.

    The version names the classes it was trained on
    (:attr:`~dmt_model.foundation.Foundation.classes_trained`, stated to every device by its
    Core ML model): the proxy's, and a class only shared records hold once records of
    ``name_classes_from`` packages hold it (:data:`~dmt_model.foundation.NAME_CLASSES_FROM`);
    batches with one ``package_id`` count as one package, and each batch without one as
    its own.
    """
    features, target, weight, label_noise = training_set(
        previous, proxy, shared, weigh_by_noise=weigh_by_noise, label_noise=True)
    return fit_foundation(previous.featurizer, features, target, config or previous.config,
                          initial=previous if warm_start else None, sample_weight=weight,
                          label_noise=label_noise, sources=_sources(proxy, shared),
                          name_classes_from=name_classes_from, on_epoch_end=on_epoch_end)


def _sources(proxy: pd.DataFrame, shared: Sequence[SharedBatch]) -> np.ndarray:
    """Each record's package number in :func:`training_set`'s order: -1 for the proxy's,
    one number per ``package_id`` (each batch without one its own)."""
    numbers: dict[str | int, int] = {}
    parts = [np.full(len(proxy), -1, np.int64)]
    for i, batch in enumerate(shared):
        if len(batch.records):
            key = batch.package_id or i  # (a batch's index is never a package id)
            parts.append(np.full(len(batch.records), numbers.setdefault(key, len(numbers))))
    return np.concatenate(parts)


def _label_noise(featurizer: Any, receipt: Any) -> tuple[float, float]:
    """(keep, flip) probabilities of a class label under ``receipt``; (1, 0) when clean."""
    if not featurizer.classes_ or receipt is None:
        return 1.0, 0.0
    for field_receipt in receipt.fields:
        if field_receipt.field == featurizer.target and field_receipt.mechanism == "k_rr":
            keep, flip = field_receipt.keep_probability, field_receipt.flip_probability
            if keep is None or flip is None or not keep > flip:
                raise ValidationError(f"Receipt for the target {featurizer.target!r}: k-RR needs "
                                      f"keep > flip probability, got {keep!r} and {flip!r}.")
            return float(keep), float(flip)
    return 1.0, 0.0


def training_set(previous: Foundation, proxy: pd.DataFrame, shared: Sequence[SharedBatch] = (),
                 *, weigh_by_noise: bool = True, label_noise: bool = False) -> Any:
    """Features, targets and sample weights of proxy + shared records, as retraining uses them
    (and, with ``label_noise``, the per-record keep and flip probabilities of the labels).

    Shared by the single-process path (:func:`retrain_foundation`) and the
    DDP one (:mod:`dmt_model.server.ddp`), so both train on the same data.
    """
    featurizer = previous.featurizer
    batches = [featurizer.transform(proxy)]
    targets = [featurizer.target_values(proxy)]
    weights = [np.ones(len(proxy))]
    noise = [np.tile([[1.0, 0.0]], (len(proxy), 1))]
    weigher = NoiseWeigher(previous, proxy) if weigh_by_noise else None
    for batch in shared:
        if len(batch.records) == 0:
            continue
        batches.append(featurizer.transform_released(batch.records, receipt=batch.receipt,
                                                     hierarchies=batch.hierarchies))
        targets.append(featurizer.released_target(batch.records))
        weight = weigher(batch.receipt) if weigher is not None else 1.0
        weights.append(np.full(len(batch.records), weight))
        noise.append(np.tile([_label_noise(featurizer, batch.receipt)], (len(batch.records), 1)))
    features = FeatureBatch(
        numeric=np.concatenate([b.numeric for b in batches]),
        categorical={name: np.concatenate([b.categorical[name] for b in batches])
                     for name in batches[0].categorical})
    out = (features, np.concatenate(targets), np.concatenate(weights))
    if not label_noise:
        return out
    pairs = np.concatenate(noise)
    clean = bool((pairs[:, 0] == 1.0).all())
    return (*out, None if clean else (pairs[:, 0], pairs[:, 1]))


#: Why NoiseWeigher refuses a foundation that predicts NaN or infinity, and what to do.
_WEIGHED_BY_NAN = (
    "its predictions are not finite (its weights hold NaN or infinity, or overflow on this "
    "record), and shared records are weighed by its residuals on the proxy data, so every "
    "weight would be NaN. The foundation is at fault, not the records; nothing was trained. "
    "Retrain from the last foundation version whose predictions are finite "
    "(ModelRegistry.latest), or from the proxy data alone.")


class NoiseWeigher:
    """Inverse-variance weights for records released with local-DP noise.

    A record perturbed with noise of variance σ²_f on field f carries, by the
    delta method, extra variance ``σ²_y + Σ_f g²_f σ²_f`` in its target,
    where ``g_f`` is the root-mean-square gradient of the previous
    foundation's prediction with respect to input f on the proxy data. Weighted
    least squares then gives it the weight ``r² / (r² + that)``, with ``r²`` the
    previous foundation's mean squared residual on the proxy data, so that a
    clean record weighs 1. A classifier's records all weigh 1: a label under
    randomized response is corrected for in the loss instead. Categorical
    fields perturbed by randomized response add no term (their features are
    debiased, see
    :meth:`~dmt_model.features.Featurizer.transform_released`). A regression
    foundation that predicts NaN or infinity for a proxy record raises
    :class:`~dmt_privacy.errors.ModelFileError`.
    """

    def __init__(self, foundation: Foundation, proxy: pd.DataFrame) -> None:

        featurizer = foundation.featurizer
        self.target = featurizer.target
        self.gain_squared: dict[str, float] = {}
        self.residual_variance = 1.0
        if featurizer.classes_:
            # A classifier: a perturbed label is corrected for, not down-weighted (its
            # loss uses the receipt's probabilities), and inputs' noise is not weighed yet.
            self.target = ""
            return
        batch = featurizer.transform(proxy)
        target = featurizer.target_values(proxy)
        predicted = foundation.predict(proxy)
        refuse_non_finite(foundation.predict, [proxy], name="The previous foundation",
                          explanation=_WEIGHED_BY_NAN, what="proxy record", predicted=predicted)
        self.residual_variance = max(float(np.mean((predicted - target) ** 2)), 1e-6)
        tensors = foundation._tensors(batch)
        numeric = tensors[0].clone().requires_grad_(True)
        foundation.network(numeric, *tensors[1:]).sum().backward()
        assert numeric.grad is not None
        # d ŷ / d raw value = d ŷ / d standardized value / scale.
        gradient = numeric.grad.numpy()[:, :len(featurizer.numeric_fields)] / featurizer.scale_
        self.gain_squared = dict(zip(featurizer.numeric_fields,
                                     np.mean(gradient**2, axis=0).tolist(), strict=True))

    def __call__(self, receipt: Any) -> float:
        if receipt is None:
            return 1.0
        extra = 0.0
        for field_receipt in receipt.fields:
            variance = field_receipt.noise_variance
            if variance is None:
                continue
            if field_receipt.field == self.target:
                extra += variance
            else:
                extra += self.gain_squared.get(field_receipt.field, 0.0) * variance
        return self.residual_variance / (self.residual_variance + extra)


@dataclass(frozen=True)
class ModelVersion:
    """One foundation version: its files, how it was made, and whether it is served.

    ``status`` is ``"published"`` (devices may fetch it) or ``"refused"`` (the
    gate found it worse than the version it would replace on the server's
    validation data; its files are kept for inspection but never served).
    ``validation`` holds both figures the gate compared.
    """

    version: int
    foundation_file: str
    mlmodel_file: str
    created: str
    trained_on: dict[str, int]
    evaluation: dict[str, float] = field(default_factory=dict)
    notes: str = ""
    status: str = "published"
    validation: dict[str, float] = field(default_factory=dict)
    #: the signed release of ``mlmodel_file`` (:mod:`dmt_privacy.release`), "" if unsigned
    release_file: str = ""
    #: the check devices are asked to make of it, as its release names it
    #: (:meth:`ModelRegistry.announce_version_check`), ``None`` if none
    version_check: dict[str, Any] | None = None
    #: the rule :meth:`ModelRegistry.check_personal_rule` showed better and its release
    #: grants (``DecisionRule.canonical``), ``None`` if none
    open_rule: str | None = None

    @property
    def published(self) -> bool:
        return self.status == "published"


class ModelRegistry:
    """A folder of model versions with a JSON index; the newest *published* one is served.

    The gate: :meth:`publish` with ``validation_data`` (a held-out part of the
    proxy data the server never trains on) compares the new foundation's RMSE
    with the current published version's; a version more than ``tolerance``
    (relative) worse is recorded as refused and :meth:`latest` keeps serving
    the current one.
    """

    INDEX = "versions.json"

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    def versions(self) -> list[ModelVersion]:
        """Every version, published or refused, oldest first."""
        index = self.folder / self.INDEX
        if not index.exists():
            return []
        try:
            return [ModelVersion(**entry) for entry in json.loads(index.read_text())]
        except (json.JSONDecodeError, TypeError) as exc:
            raise ModelFileError(f"The model index {index} is damaged ({exc}).") from None

    def latest(self) -> ModelVersion | None:
        """The newest published version: what devices fetch."""
        published = [v for v in self.versions() if v.published]
        return published[-1] if published else None

    def path(self, name: str) -> Path:
        """A file of the registry by its plain name; never a path outside the folder."""
        if (not isinstance(name, str) or not name or name.startswith(".") or "/" in name
                or "\\" in name or Path(name).name != name):
            raise ModelFileError(f"The model index names {name!r}, not a plain file name of "
                                 f"the registry {self.folder}; the index may be tampered with.")
        return self.folder / name

    def publish(self, foundation: Foundation, *, trained_on: Mapping[str, int],
                evaluation_data: pd.DataFrame | None = None,
                validation_data: pd.DataFrame | None = None, tolerance: float = 0.0,
                validation_devices: Sequence[pd.DataFrame] | None = None,
                device_confidence: float = 0.9, publish_unless_worse: bool = False,
                update_settings: UpdateSettings | None = None, notes: str = "",
                signing_key: ReleaseSigningKey | Sequence[ReleaseSigningKey] | None = None,
                policy: Any = None, server_key: Any = None,
                release_valid_for: timedelta = timedelta(days=30)) -> ModelVersion:
        """Save ``foundation`` and its updatable Core ML model as the next version.

        With ``validation_data``, the version is published only if its error on
        it (the task's headline error: RMSE for a regression, log loss for a
        classification) is at most ``(1 + tolerance)`` × the current published version's
        (the first version is always published, and so is any version replacing one whose
        error there is not finite); otherwise it is saved with ``status="refused"``. Check
        ``version.published``.

        With ``validation_devices`` (the records of devices whose packages the
        version did not train on, one frame per device, every package of such a
        device left out; their targets as the devices hold them, not under local
        DP, whose noise would make the check measure something else than the
        claim says: see :func:`~dmt_model.loop.run_loop`), both versions are
        personalized on each device as the device would and compared
        (:func:`~dmt_model.personalize.compare_on_devices`, the device as the unit,
        one-sided at ``device_confidence``). A version shown *better*
        (``validation["devices_better"]``) is published with it said in its
        signed release, and devices adopt it unless their own records show it
        worse (:data:`~dmt_model.personalize.ADOPTION_RULE`; at 99 % where a device
        holds the version it came from as shipped and, for a classifier, that version
        was trained on no record of a class the new one may cover): the proxy's
        validation data cannot see how a version serves users once personalized,
        and one device's few records cannot either. Any other version is refused
        by default. With ``publish_unless_worse=True`` only a version shown
        *worse* is refused, and one the devices cannot tell apart (too few
        devices) is published without the claim, so devices ask it to prove
        itself on their records, at 99 % (:data:`~dmt_model.personalize.UNCHECKED_RULE`);
        ``benchmarks/adoption.py`` measured that a device's own check does not
        make this safe: at 90 % (Adult, 20 users: users' expected log loss 0.477 →
        0.499, 12 % worse off; 120 users: 0.451 → 0.447, 3 % worse off), and at 99 %
        one device of 20 Adult users still moved to a version worse for it, in one
        seed of five (``--unclaimed``).

        With ``signing_key`` (the Ed25519 release key whose public half apps
        pin), a published version gets its signed release (:meth:`sign`),
        naming ``policy`` (the :class:`~dmt_model.server.ServerPolicy`) and
        ``server_key`` (the HPKE public key devices seal packages to), and, if
        it passed the gate on ``validation_devices``, on how many devices
        (``held_out_devices``) and against which version (``held_out_baseline``, the
        one served when it was checked): devices whose personal model comes from that
        version ask a version that carries it only not to be worse on their records,
        and any other device, or any version without it, to prove itself
        (:func:`~dmt_model.personalize.adoption_rule_for`). A version whose
        device figures are not finite is refused.

        A foundation whose weights hold NaN or infinity, or that predicts NaN or
        infinity for a record of ``evaluation_data``, ``validation_data`` or
        ``validation_devices``, is never published, whatever the gate (the first
        version too): :class:`~dmt_privacy.errors.ModelFileError` names it and the
        record, and nothing is written, so the registry and the version it serves
        are unchanged. So is one that, checked on ``validation_devices``, predicts a
        number more than ten times the target bounds' width outside them (a training
        that diverged): the device check refuses it the same way.

        A foundation the same as the newest version's, byte for byte (retrained on
        the same records with the same settings: a retraining script run again before
        devices shared anything new), is not a new version: nothing is written and
        that version is returned as it is, published or refused, so devices are not
        asked to verify and re-personalize a model they hold. A foundation the same as
        an older version's is published as usual (a rollback).
        """
        if not (math.isfinite(tolerance) and tolerance >= 0):
            raise ValidationError(f"tolerance must be a non-negative number, got {tolerance!r}.")
        versions = self.versions()
        number = versions[-1].version + 1 if versions else 1
        _refuse_non_finite_candidate(foundation, number, self.latest(), {
            "evaluation_data": evaluation_data, "validation_data": validation_data,
            **{f"validation_devices[{i}]": frame
               for i, frame in enumerate(validation_devices or ())}})
        if versions and self._holds(versions[-1], foundation):
            return versions[-1]
        evaluation = self._evaluate(foundation, evaluation_data, "evaluation_data")
        validation: dict[str, float] = {}
        status = "published"
        if validation_data is not None:
            validation = self._evaluate(foundation, validation_data, "validation_data")
            current = self.latest()
            if current is not None:
                previous = Foundation.load(self.path(current.foundation_file))
                before = self._evaluate(previous, validation_data, "validation_data")
                validation.update({f"current_{k}": v for k, v in before.items() if k != "n"})
                validation["current_version"] = float(current.version)
                # A served version whose error is not finite (published before candidates
                # were checked) is broken: any candidate, shown finite above, replaces it.
                if math.isfinite(before["error"]) \
                        and not validation["error"] <= before["error"] * (1 + tolerance):
                    status = "refused"
        if validation_devices is not None:
            current = self.latest()
            if current is not None:
                from dmt_model.coreml import build_spec
                from dmt_model.personalize import compare_on_devices

                settings = update_settings or UpdateSettings()
                held = Foundation.load(self.path(current.foundation_file))
                refuse_non_finite(
                    held.predict, list(validation_devices),
                    sources=[f"validation_devices[{i}]" for i in range(len(validation_devices))],
                    name=f"The served version {current.version}",
                    explanation="the device check cannot compare a candidate with it, and "
                    "nothing was written. Publish the candidate with validation_data instead "
                    "of validation_devices: a finite candidate replaces a served version "
                    "whose validation error is not finite; check the versions after it on "
                    "devices.")
                found = compare_on_devices(build_spec(held, updatable=settings),
                                           build_spec(foundation, updatable=settings),
                                           validation_devices, confidence=device_confidence)
                # Fail closed: a non-finite figure counts as worse (DeviceComparison.worse).
                worse = found.worse
                validation.update({"devices": float(found.devices),
                                   "device_error": found.error_after,
                                   "current_device_error": found.error_before,
                                   "device_t": found.t, "device_t_needed": found.needed,
                                   "devices_better": float(found.better),
                                   "current_version": float(current.version)})
                if worse or not (found.better or publish_unless_worse):
                    status = "refused"
        stem = f"foundation-v{number}"
        # The registry owns its folder: a version file no index names is a leftover of an
        # interrupted publish, replaced by this one.
        foundation.save(self.folder / f"{stem}.npz", overwrite=True)
        export_coreml(foundation, self.folder / f"{stem}.mlmodel",
                      updatable=update_settings or UpdateSettings(), version=str(number),
                      overwrite=True)
        entry = ModelVersion(number, f"{stem}.npz", f"{stem}.mlmodel",
                             datetime.now(timezone.utc).isoformat(timespec="seconds"),
                             dict(trained_on), evaluation, notes, status, validation)
        if signing_key is not None and entry.published:
            entry = self._sign_files(entry, signing_key, foundation.featurizer.schema.schema_id,
                                     policy=policy, server_key=server_key,
                                     valid_for=release_valid_for)
        index = [asdict(v) for v in versions] + [asdict(entry)]
        write_atomically(self.folder / self.INDEX, json.dumps(index, indent=2).encode(),
                         make_parents=True)
        return entry

    def sign(self, version: int,
             signing_key: ReleaseSigningKey | Sequence[ReleaseSigningKey], *,
             policy: Any = None, server_key: Any = None,
             valid_for: timedelta = timedelta(days=30)) -> ModelVersion:
        """(Re-)sign a published version: a fresh expiry, or new keys during a rotation.

        The release carries ``held_out_devices`` (and ``held_out_baseline``, the version
        it was compared with) only if the index records the version as shown better on
        held-out devices (``validation["devices_better"]``), and ``open_rule_devices`` only
        if it records the open rule as shown better (:meth:`check_personal_rule`);
        a version published before that was recorded is re-signed without the
        claim, so its devices ask it for proof. The registry's folder is trusted:
        whoever can write its index or model files gets what they wrote signed.
        """
        versions, at = self._served(version, "signed")
        return self._store(versions, at, versions[at], signing_key, policy=policy,
                           server_key=server_key, valid_for=valid_for)

    def _served(self, version: int, done: str) -> tuple[list[ModelVersion], int]:
        """The index and the position of ``version`` in it, if it is the version served
        (the newest published); a :class:`ValidationError` saying why not otherwise, as one
        that cannot be ``done`` (its release is signed again either way)."""
        versions = self.versions()
        match = [i for i, v in enumerate(versions) if v.version == version]
        if not match:
            raise ValidationError(f"No version {version} in the registry {self.folder}.")
        if not versions[match[0]].published:
            raise ValidationError(f"Version {version} was refused by the gate; it is never "
                                  f"served, so it is not {done}.")
        newest = max(v.version for v in versions if v.published)
        if version != newest:
            raise ValidationError(
                f"Version {version} is not served: version {newest} is the newest published, "
                f"and a device that verified a v{version} release signed after it would refuse "
                f"v{newest} as signed before (verify_release(newest_seen=)). Use v{newest}.")
        return versions, match[0]

    def _store(self, versions: list[ModelVersion], at: int, entry: ModelVersion,
               signing_key: ReleaseSigningKey | Sequence[ReleaseSigningKey] | None, *,
               policy: Any, server_key: Any, valid_for: timedelta) -> ModelVersion:
        """``entry`` in place of ``versions[at]``: its release signed (with ``signing_key``)
        into a file of its own, then the index written, which makes it the one served. Until
        the index is written the old release is the one served, so a failure in between
        leaves the release and the index agreeing (and the new file is removed). The release
        it replaced is kept, for a request that read the index just before; older ones of
        the version are removed."""
        replaced = versions[at].release_file
        if signing_key is not None:
            schema_id = Foundation.load(
                self.path(entry.foundation_file)).featurizer.schema.schema_id
            entry = self._sign_files(entry, signing_key, schema_id, policy=policy,
                                     server_key=server_key, valid_for=valid_for)
        versions[at] = entry
        try:
            write_atomically(self.folder / self.INDEX,
                             json.dumps([asdict(v) for v in versions], indent=2).encode())
        except BaseException:
            if entry.release_file != replaced:
                self.path(entry.release_file).unlink(missing_ok=True)
            raise
        if entry.release_file != replaced:
            first = release_file_name(entry.mlmodel_file)
            for old in [self.folder / first, *self.folder.glob(
                    f"{glob.escape(first.removesuffix('.json'))}.*.json")]:
                if old.name not in (entry.release_file, replaced):
                    old.unlink(missing_ok=True)
        return entry

    def announce_version_check(self, issuer: VersionCheckIssuer, *,
                               signing_key: ReleaseSigningKey | Sequence[ReleaseSigningKey]
                               | None = None, policy: Any = None, server_key: Any = None,
                               valid_for: timedelta = timedelta(days=30)) -> ModelVersion:
        """Sign the check ``issuer`` runs into its version's release, before any device is
        asked (:class:`~dmt_model.version_check.VersionCheckIssuer`).

        The release's ``version_check`` then names the check's key (its token key id),
        baseline and ε (:attr:`~dmt_model.version_check.VersionCheckIssuer.announcement`),
        and a device asked to check takes a token only under the key its verified release
        names, at that ε (:func:`~dmt_model.version_check.request_version_check_token`):
        the server cannot give devices keys of their own, to tell their reports apart,
        without signing releases of one version that differ. The issuer must name a
        published version of this registry by its number and the SHA-256 of its model
        file, and a baseline published before it; a version the server's own check ran
        on is not checked again. A version is checked once: another check of a version
        whose release names one is refused (the same one again re-signs it).
        ``signing_key``, ``policy`` and ``server_key`` as :meth:`record_version_checks`;
        nothing is written unless every check passes.
        """
        from dataclasses import replace

        from dmt_model.version_check import VersionCheckIssuer

        if not isinstance(issuer, VersionCheckIssuer):
            raise ValidationError(f"issuer must be the check's VersionCheckIssuer, got "
                                  f"{type(issuer).__name__}.")
        versions, at, server_key = self._checked(
            issuer.version, issuer.sha256, issuer.baseline, "The check",
            signing_key=signing_key, policy=policy, server_key=server_key)
        announced = versions[at].version_check
        if announced is not None and announced != issuer.announcement:
            raise ValidationError(
                f"Version {issuer.version}'s release already names a check (key "
                f"{announced['key'][:16]}, against version {announced['baseline']} at "
                f"ε={announced['epsilon']!r}). One version is checked once, under one key for "
                "every device: two releases of it naming different keys would let the server "
                "tell devices apart. Ask the devices already asked under that key, or check a "
                "new version.")
        return self._store(versions, at, replace(versions[at],
                                                 version_check=issuer.announcement),
                           signing_key, policy=policy, server_key=server_key,
                           valid_for=valid_for)

    def record_version_checks(self, tally: VersionCheckTally, *,
                              signing_key: ReleaseSigningKey | Sequence[ReleaseSigningKey]
                              | None = None, policy: Any = None, server_key: Any = None,
                              valid_for: timedelta = timedelta(days=30)) -> ModelVersion:
        """Record what devices reported about a published version
        (:func:`~dmt_model.version_check.tally_version_checks`) and sign its release again
        so that it says so.

        A version more than half of the reporting devices were shown better off with
        (``tally.lower`` above one half, at a confidence of at least 90 %, as
        :meth:`publish`'s check asks, from no more reports than devices asked) gets the
        held-out-device claim against ``tally.baseline``, as :meth:`publish`'s own check
        on ``validation_devices`` gives it: devices whose personal model comes from that
        version adopt it unless their records show it worse. Otherwise the figures are
        recorded and the version keeps no claim. An announced check is tallied once, when
        the devices asked have answered: a second tally of it is refused (tallying as
        reports come in and keeping the one that shows it better would claim better more
        often than the confidence says); a tally without tokens (deprecated) may be
        recorded again, and the last one counts. The tally must name a published version
        of this registry by its number and the SHA-256 of its model file, and a baseline
        older than it, and hold at least one report; a check announced in the release
        (:meth:`announce_version_check`) must be the one tallied (its baseline and ε). A
        version the server's own check ran on (``validation_devices``) is left as that
        check found it.

        A signed version needs ``signing_key`` (its release must say what the reports
        showed); ``server_key`` defaults to the one its current release names, and a
        release that names a policy needs ``policy=`` again. Nothing is written unless
        every check passes.
        """
        from dataclasses import replace

        from dmt_model.version_check import VersionCheckTally

        if not isinstance(tally, VersionCheckTally):
            raise ValidationError(f"tally must be what tally_version_checks returned, got "
                                  f"{type(tally).__name__}.")
        if not tally.tokens:

            warn_caller("record_version_checks of a tally without tokens records reports "
                        "anyone holding the release's server key can forge; tally with "
                        "VersionCheckIssuer.tally.", DeprecationWarning)
        versions, at, server_key = self._checked(
            tally.version, tally.sha256, tally.baseline, "The reports",
            signing_key=signing_key, policy=policy, server_key=server_key)
        entry = versions[at]
        announced = entry.version_check
        if announced is not None and (announced["baseline"], announced["epsilon"],
                                      announced["key"]) != (tally.baseline, tally.epsilon,
                                                            tally.key_id):
            raise ValidationError(
                f"Version {entry.version}'s release announced a check against version "
                f"{announced['baseline']} at ε={announced['epsilon']!r} under the key "
                f"{announced['key'][:16]}; the tally is against {tally.baseline} at "
                f"ε={tally.epsilon!r} under "
                f"{'no key' if tally.key_id is None else 'the key ' + tally.key_id[:16]}. "
                "Tally the announced check with its issuer (VersionCheckIssuer.tally).")
        if announced is not None and "device_reports" in entry.validation:
            raise ValidationError(
                f"Version {entry.version}'s announced check was tallied already "
                f"({entry.validation['device_reports']:.0f} reports of "
                f"{entry.validation.get('device_reports_asked', 0):.0f} asked): a check is "
                "tallied once, when the devices asked have answered. Tallying again as "
                "reports come in, and keeping the tally that shows it better, would claim "
                "better more often than the test's confidence says. Check a new version.")
        if tally.devices < 1:
            raise ValidationError(f"The tally holds no report on version {entry.version} "
                                  f"against {tally.baseline}: there is nothing to record.")
        claimed = (tally.lower > 0.5 and tally.confidence >= 0.9
                   and tally.devices <= tally.asked and tally.devices >= 2)
        figures = {"device_reports": float(tally.devices),
                   "device_reports_asked": float(tally.asked),
                   "device_reports_share_better": tally.share_better,
                   "device_reports_lower": tally.lower, "device_reports_upper": tally.upper,
                   "device_reports_epsilon": tally.epsilon,
                   "device_reports_confidence": tally.confidence}
        validation = {k: v for k, v in entry.validation.items() if k != "devices"}
        claim = {"devices": float(tally.devices), "devices_better": 1.0,
                 "current_version": float(tally.baseline)} if claimed \
            else {"devices_better": 0.0}
        return self._store(versions, at,
                           replace(entry, validation={**validation, **figures, **claim}),
                           signing_key, policy=policy, server_key=server_key,
                           valid_for=valid_for)

    def _checked(self, version: int, sha256: str, baseline: int, what: str, *,
                 signing_key: Any, policy: Any, server_key: Any
                 ) -> tuple[list[ModelVersion], int, Any]:
        """The index, the position of the published ``version`` whose model file has SHA-256
        ``sha256`` and that devices check against the older published ``baseline``, and the
        server key its release is to name; a :class:`ValidationError` saying what is wrong
        (``what`` names the caller's input) otherwise, or when the server's own check on
        held-out devices decided it, or when re-signing its release lacks an argument."""
        versions = self.versions()
        match = [i for i, v in enumerate(versions) if v.version == version]
        if not match or not versions[match[0]].published:
            raise ValidationError(f"No published version {version} in the registry "
                                  f"{self.folder}: devices report only on served versions.")
        # its release is signed again: only the served version's (an older one signed after
        # the newest would make devices that saw it refuse the newest)
        versions, _ = self._served(version, "checked by devices")
        entry = versions[match[0]]
        actual = hashlib.sha256(self.path(entry.mlmodel_file).read_bytes()).hexdigest()
        if sha256 != actual:
            raise ValidationError(
                f"{what} name a model file of SHA-256 {sha256}; version "
                f"{entry.version}'s is {actual}. Check the file served.")
        if not any(v.version == baseline and v.published for v in versions[:match[0]]):
            raise ValidationError(
                f"{what} compare with version {baseline}, not a published version "
                f"older than {entry.version}. Ask devices to compare with a version the "
                "registry served before it (the one their personal models come from).")
        if "device_t" in entry.validation:
            found = "better" if entry.validation.get("devices_better") else "not shown better"
            raise ValidationError(
                f"The server's own check on held-out devices already decided version "
                f"{entry.version} ({found}); devices' reports do not overrule it.")
        return versions, match[0], self._resigned_key(entry, "the reports showed",
                                                      signing_key=signing_key, policy=policy,
                                                      server_key=server_key)

    def _resigned_key(self, entry: ModelVersion, showed: str, *, signing_key: Any,
                      policy: Any, server_key: Any) -> Any:
        """The server key ``entry``'s release is re-signed with (``server_key``, else the one
        its release names); a :class:`ValidationError` when re-signing it to say what
        ``showed`` lacks ``signing_key`` or ``policy``."""
        current = (json.loads(self.path(entry.release_file).read_bytes())["signed"]
                   if entry.release_file else {})
        if current and signing_key is None:
            raise ValidationError(
                f"Version {entry.version} has a signed release; pass signing_key= so that it "
                f"says what {showed} (else it would keep saying what it said).")
        if current.get("policy_sha256") and policy is None:
            raise ValidationError(
                f"Version {entry.version}'s release names a policy; pass it again as policy= "
                "(the ServerPolicy it was published under), or the release would lose it.")
        if server_key is None and current.get("server_key"):
            from dmt_privacy.seal import ServerPublicKey

            server_key = ServerPublicKey.from_bytes(bytes.fromhex(current["server_key"]))
        return server_key

    def check_personal_rule(self, version: int, devices: Sequence[pd.DataFrame], *,
                            confidence: float = 0.9,
                            signing_key: ReleaseSigningKey | Sequence[ReleaseSigningKey]
                            | None = None, policy: Any = None, server_key: Any = None,
                            valid_for: timedelta = timedelta(days=30)) -> ModelVersion:
        """Compare the rules devices may personalize the served ``version`` under, on
        held-out devices' records, and sign what was shown into its release.

        ``devices`` as :meth:`publish`'s ``validation_devices`` (each device's records as it
        holds them, of devices whose records the version did not train on). Their records
        personalize the version under the default rule and under the task's open rule
        (:func:`~dmt_model.personalize.open_rule_for`: a regression's
        :data:`~dmt_model.personalize.OPEN_RULE`, a classifier's
        :data:`~dmt_model.personalize.CLASSIFIER_OPEN_RULE`;
        :func:`~dmt_model.personalize.compare_personal_rules`, one-sided at
        ``confidence``). If the open rule is shown better, the release says on how many
        devices (``open_rule_devices``) and names the rule compared (``open_rule``,
        :meth:`~dmt_model.personalize.DecisionRule.canonical`, kept in the version's
        ``open_rule``), and devices personalizing this version follow it
        (:func:`~dmt_model.personalize.personal_rule_for`); otherwise the release is
        re-signed without it. The figures go into the version's ``validation``
        (``open_rule_*``, ``default_rule_error``).

        The version must be the newest published (only its release is served), and not
        checked before, nor any version of the same weights (a rollback published again):
        checking again as devices share more, and keeping the check that shows the open rule
        better, would claim it more often than the test's confidence says; for the same
        reason ``confidence`` may not be below 90 %. A first version can be checked too, once
        devices have shared: its release is re-signed with what was shown, and keeps it when
        signed again (:meth:`sign`). An SDK from before ``open_rule`` (6 December) refuses a
        release that carries it (dmt_privacy.release) and so cannot verify, let alone adopt,
        a version whose check showed the open rule better: apps update before the server
        checks a version they run. A version checked before claims named their rule keeps
        its unnamed claim when signed again (``sign_release`` warns). The devices' records must
        be as they hold them (not under local DP, whose noise the rules would be compared
        on). ``signing_key``, ``policy`` and ``server_key`` as :meth:`record_version_checks`;
        nothing is written unless every check passes.
        """
        from dataclasses import replace

        from dmt_model.coreml import load_spec
        from dmt_model.personalize import _open_rule_name, compare_personal_rules, featurizer_of

        if not (isinstance(confidence, float | int) and 0.9 <= confidence < 1):
            raise ValidationError(
                f"confidence must be in [0.9, 1), got {confidence!r}: a check at a lower "
                "level would sign the open rule into the release on weaker evidence than "
                "the measured 90 % (benchmarks/personal_rule.py).")
        versions, at = self._served(version, "checked")
        entry = versions[at]
        weights = self.path(entry.foundation_file).read_bytes()
        checked = next((v for v in versions if "open_rule_t" in v.validation
                        and self.path(v.foundation_file).is_file()
                        and self.path(v.foundation_file).read_bytes() == weights), None)
        if checked is not None:
            outcome = "better" if checked.validation.get("open_rule_better") else "not better"
            raise ValidationError(
                f"The rules were compared already on version {checked.version}"
                f"{'' if checked is entry else ', whose weights version ' + str(version) + ' has'}"
                f" (the open rule {outcome} on {checked.validation['open_rule_devices']:.0f} "
                "devices). A model is checked once: checking again and keeping the check that "
                "shows the open rule better would claim it more often than the test's "
                "confidence says. Check the next version you publish.")
        server_key = self._resigned_key(entry, "the comparison showed", signing_key=signing_key,
                                        policy=policy, server_key=server_key)
        model = load_spec(self.path(entry.mlmodel_file))
        found = compare_personal_rules(model, devices, confidence=confidence)
        # the rule compared, named in the claim
        named = _open_rule_name(featurizer_of(model).task) if found.better else None
        figures = {"open_rule_devices": float(found.devices),
                   "open_rule_better": float(found.better), "open_rule_t": found.t,
                   "open_rule_t_needed": found.needed, "open_rule_error": found.error_after,
                   "default_rule_error": found.error_before}
        return self._store(versions, at,
                           replace(entry, validation={**entry.validation, **figures},
                                   open_rule=named),
                           signing_key, policy=policy, server_key=server_key,
                           valid_for=valid_for)

    def _sign_files(self, entry: ModelVersion,
                    signing_key: ReleaseSigningKey | Sequence[ReleaseSigningKey],
                    schema_id: str, *, policy: Any, server_key: Any,
                    valid_for: timedelta) -> ModelVersion:
        from dataclasses import replace

        model = self.path(entry.mlmodel_file).read_bytes()
        claimed = bool(entry.validation.get("devices_better"))
        devices = entry.validation.get("devices") if claimed else None
        # the version the devices compared it with: the claim holds against that one only
        baseline = entry.validation.get("current_version") if claimed else None
        granted = bool(entry.validation.get("open_rule_better"))
        if granted and entry.open_rule is None:
            warn_caller(
                f"Version {entry.version}'s open-rule claim names no rule: it was checked before "
                "releases named the rule compared, and devices grant it whatever rule their SDK "
                "calls open. A version is checked once; check the next version you publish "
                "(check_personal_rule), whose release names its rule.", DeprecationWarning)
        with warnings.catch_warnings():  # said above, in the registry's terms
            warnings.filterwarnings("ignore", "sign_release\\(open_rule_devices=",
                                    DeprecationWarning)
            document = sign_release(
                model, signing_key, version=entry.version, schema_id=schema_id,
                now=self._signing_time(),
                policy_json=policy.to_json() if policy is not None else None,
                server_key=server_key.to_bytes() if server_key is not None else None,
                valid_for=valid_for, held_out_devices=None if devices is None else int(devices),
                held_out_baseline=None if baseline is None else int(baseline),
                version_check=entry.version_check,
                open_rule_devices=int(entry.validation["open_rule_devices"]) if granted
                else None,
                open_rule=entry.open_rule if granted else None)
        # Named by its content: a new signing never overwrites the release the index names.
        name = release_file_name(entry.mlmodel_file)
        if entry.release_file:  # a version signed before: its first release kept the name
            name = name.removesuffix(".json") + f".{hashlib.sha256(document).hexdigest()[:16]}.json"
        write_atomically(self.path(name), document, mode=0o644)
        return replace(entry, release_file=name)

    def _signing_time(self) -> datetime:
        """Now, or a second after the newest release the registry signed if that is later:
        a release's ``created`` is in whole seconds, and a device refuses only a release
        signed before the newest it verified (``verify_release(newest_seen=)``), so one
        re-signed within the second (a check announced right after publishing) must not
        share its time with the release it replaces."""
        from dmt_privacy.release import _parse_time

        now = datetime.now(timezone.utc).replace(microsecond=0)
        for version in self.versions():
            if version.release_file and self.path(version.release_file).is_file():
                try:
                    signed = json.loads(self.path(version.release_file).read_text())["signed"]
                    now = max(now, _parse_time(signed["created"]) + timedelta(seconds=1))
                except (ValueError, KeyError, TypeError):
                    continue  # a damaged release file is not this signing's concern
        return now

    def _holds(self, version: ModelVersion, foundation: Foundation) -> bool:
        """Whether ``version``'s foundation file holds ``foundation``, byte for byte."""
        path = self.path(version.foundation_file)
        return path.is_file() and path.read_bytes() == foundation.to_bytes()

    @staticmethod
    def _evaluate(foundation: Foundation, data: pd.DataFrame | None,
                  what: str) -> dict[str, float]:
        if data is None:
            return {}
        if len(data) == 0:
            raise ValidationError(f"{what} is empty; pass records the server keeps aside.")
        metrics = foundation.evaluate(data)
        return {**{k: float(v) for k, v in asdict(metrics).items()}, "error": metrics.error}


def _refuse_non_finite_candidate(foundation: Foundation, number: int,
                                 current: ModelVersion | None,
                                 record_sets: Mapping[str, pd.DataFrame | None]) -> None:
    """Raise :class:`ModelFileError` if ``foundation``, to be published as version ``number``,
    holds a NaN or infinite weight, or predicts NaN or infinity for a record of
    ``record_sets`` (name → records; ``None`` skipped): devices would receive it, and the
    gate's comparisons with NaN could not tell it apart (a first version is not compared)."""
    name = f"The candidate foundation (version {number})"
    refused = (
        "so it is not published: nothing was written, and "
        + (f"version {current.version} is still served. " if current is not None
           else "no version is served yet. ")
        + "Its training diverged: retrain it, from the last published version "
        "(ModelRegistry.latest) or from the proxy data, with a lower learning rate if it "
        "diverges again.")
    for parameter, tensor in foundation.network.state_dict().items():
        values = tensor.detach().numpy()
        if not np.isfinite(values).all():
            shown = float(values[~np.isfinite(values)][0])
            raise ModelFileError(f"{name} holds {shown} in its weights {parameter}, {refused}")
    for label, records in record_sets.items():
        source, what = (label, "record") if label.endswith("]") else (None, f"{label} record")
        refuse_non_finite(foundation.predict, [records], name=name, sources=[source], what=what,
                          explanation="its weights are finite but its predictions overflow on "
                          "this record (or the record's values are far outside what it was "
                          f"trained on), {refused}")


def validation_split(proxy: pd.DataFrame, *, fraction: float = 0.2,
                     seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training part, validation part) of the proxy data, for the publication gate.

    The server trains every version on the training part only and keeps the
    validation part aside, so that :meth:`ModelRegistry.publish` compares
    versions on records none of them was trained on.
    """
    if not 0 < fraction < 1:
        raise ValidationError(f"fraction must be in (0, 1), got {fraction!r}.")
    order = np.random.default_rng(seed).permutation(len(proxy))
    n_validation = max(1, round(fraction * len(proxy)))
    if n_validation >= len(proxy):
        raise ValidationError(
            f"{len(proxy)} proxy record(s) are too few to keep {fraction:.0%} aside.")
    return proxy.iloc[order[n_validation:]], proxy.iloc[order[:n_validation]]
