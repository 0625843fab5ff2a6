"""Devices vouch for a new version: one locally private bit each, tallied by the server.

Under local DP the server holds no device's records as they are, so it cannot compare a
new version with the one devices personalized on held-out devices
(:meth:`~dmt_model.server.retrain.ModelRegistry.publish` with ``validation_devices=``). It
releases the version without that claim, devices then ask it to prove itself on their own
records at 99 % (:data:`~dmt_model.personalize.UNCHECKED_RULE`), and a version that would
have served them better reaches few of them (``benchmarks/adoption.py --unclaimed``).

Here the devices make the check instead, each on its own records, and tell the server one
bit:

1. A device whose records did not train the version (one the server asked to check
   instead of sharing, whose packages, if it sent any, the server kept out of the version)
   verifies the release, personalizes both versions on its
   records out of fold, exactly as the server's check does for each held-out device
   (:func:`~dmt_model.personalize.compare_on_devices`), and takes the bit "the new
   version's held-out error is lower" (:func:`check_version`).
2. The bit goes through randomized response at ``epsilon``
   (:class:`~dmt_privacy.dp.RandomizedResponse`, two categories; the OS CSPRNG), charged
   to the device's :class:`~dmt_privacy.dp.PrivacyLedger` before it is drawn: the report
   is ε-locally private whatever the server does with it, and nothing else about the
   records leaves the device.
3. :func:`seal_version_check` seals it to the server's key (HPKE, its own ``info``, so a
   report never opens as a share package nor a package as a report), naming the version,
   the hash of its model file and the version compared against (the baseline).

The server opens the reports (:func:`open_version_check`) and tallies those naming the
version, its hash, the baseline and the ε it asked for, from as many devices as it asked
at most (:func:`tally_version_checks`):
the unbiased share of devices better off and a one-sided confidence bound. A version that
more than half of the devices are shown better off with (the lower bound above one half)
is vouched for: :meth:`~dmt_model.server.retrain.ModelRegistry.record_version_checks`
records it as the version's held-out-device claim against that baseline and signs the
release again, and devices whose personal model comes from the baseline then adopt it
unless their own records show it worse (:data:`~dmt_model.personalize.ADOPTION_RULE`).

The claim says a majority of devices is better off (a sign test on devices), where the
server's own check says their mean error is lower (a paired t-test): one bit per device
is what a few hundred devices can report usefully under local DP. It needs at least
:func:`reports_needed` reports (4 at 90 %), whatever ε.

What the server cannot check: that a report comes from a device it asked, once. Reports
carry no token yet (a privacy-pass token scoped to the version, as packages carry, would
bind each to one asked device), and the server's public key is in every release, so
anyone can seal reports. A tally of more reports than devices asked claims nothing, so
forged reports can only take the place of asked devices that did not report; and a claim
only changes which rule devices apply to their own records.
"""

from __future__ import annotations

import math
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pandas as pd

from dmt_privacy.errors import (
    BudgetExceededError,
    InvalidPackage,
    ModelFileError,
    ValidationError,
)

__all__ = [
    "VERSION_CHECK_EPSILON",
    "VersionCheck",
    "VersionCheckTally",
    "check_version",
    "check_version_many",
    "open_version_check",
    "reports_needed",
    "seal_version_check",
    "tally_version_checks",
]

#: The ε of one device's report unless the server asks for another: the bit is told
#: truthfully with probability e^ε / (1 + e^ε), 73 % at ε = 1.
VERSION_CHECK_EPSILON = 1.0
#: The HPKE ``info`` of a sealed report (a share package's differs).
_INFO = b"dmt-version-check-v1"
_FORMAT = 1
_FIELDS = {"format": int, "version": int, "sha256": str, "baseline": int, "better": bool,
           "epsilon": float}
_CATEGORIES = (False, True)


@dataclass(frozen=True)
class VersionCheck:
    """One device's report: whether version ``version`` (its model file's SHA-256
    ``sha256``) served it better than version ``baseline`` once personalized, told by
    randomized response at ``epsilon`` (so ``better`` is the truth with probability
    e^ε / (1 + e^ε) only)."""

    version: int
    sha256: str
    baseline: int
    better: bool
    epsilon: float

    def __post_init__(self) -> None:
        bad = [name for name, kind in _FIELDS.items()
               if name != "format" and type(getattr(self, name)) is not kind]
        if not bad:
            bad = [name for name, ok in (
                ("version", self.version >= 2), ("baseline", 1 <= self.baseline < self.version),
                ("sha256", len(self.sha256) == 64
                 and all(c in "0123456789abcdef" for c in self.sha256)),
                ("epsilon", math.isfinite(self.epsilon) and self.epsilon > 0)) if not ok]
        if bad:
            raise ValidationError(f"A version check has malformed {bad!r}: {self!r}.")


@dataclass(frozen=True)
class VersionCheckTally:
    """What the reports say about ``version`` against ``baseline``.

    ``share_better`` is the unbiased estimate of the share of reporting devices that were
    better off, ``lower``/``upper`` its one-sided bounds at ``confidence``; ``better``:
    ``lower`` is above one half, ``worse``: ``upper`` is below it; neither with more reports
    than the ``asked`` devices. ``ignored`` counts the reports left out, by why (another
    version, hash, baseline or ε).
    """

    version: int
    sha256: str
    baseline: int
    epsilon: float
    devices: int
    asked: int
    share_better: float
    lower: float
    upper: float
    confidence: float
    better: bool
    worse: bool
    reason: str
    ignored: Mapping[str, int] = field(default_factory=dict)


def check_version(release: Any, previous: Any, records: pd.DataFrame, *, ledger: Any,
                  based_on: int | None = None, epsilon: float = VERSION_CHECK_EPSILON,
                  prior_records: int | Sequence[int] | None = None, folds: int = 5,
                  seed: int = 0, random_state: Any = None) -> VersionCheck:
    """This device's report on the new version ``release`` names (what
    :func:`~dmt_privacy.release.verify_release` returned), against ``previous``: the
    version its personal model comes from (an updatable spec or ``.mlmodel`` path; its
    number is ``based_on``, by default the ``installed_version`` the release was verified
    against).

    ``records`` are the device's own records, none of which trained the new version: a
    device that shared since ``previous`` was published must not report. Both versions are
    personalized on ``records`` out of fold (``folds``, ``seed``, ``prior_records`` as
    :func:`~dmt_model.personalize.compare_on_devices`), and the bit "the new version's
    mean held-out error is lower" goes through randomized response at ``epsilon``,
    charged to ``ledger`` first (a :class:`~dmt_privacy.dp.PrivacyLedger`, or
    :data:`~dmt_privacy.dp.UNACCOUNTED` in simulations; a budget the charge would exceed
    raises :class:`~dmt_privacy.errors.BudgetExceededError` and nothing is reported).
    ``random_state`` other than ``None`` is not secure: for tests.
    """
    (check,) = check_version_many(release, previous, [records], ledgers=[ledger],
                                  based_on=based_on, epsilon=epsilon,
                                  prior_records=prior_records, folds=folds, seed=seed,
                                  random_states=[random_state])
    return check


def check_version_many(release: Any, previous: Any, record_sets: Sequence[pd.DataFrame], *,
                       ledgers: Sequence[Any], based_on: int | None = None,
                       epsilon: float = VERSION_CHECK_EPSILON,
                       prior_records: int | Sequence[int] | None = None, folds: int = 5,
                       seed: int = 0, random_states: Sequence[Any] | None = None
                       ) -> list[VersionCheck]:
    """:func:`check_version` of several devices (a simulation's), each with its records and
    its ledger (``random_states``: one each, ``None`` for the secure source); their
    personalizations train together, as :func:`~dmt_model.personalize.compare_on_devices`
    trains them, so each report is the one its device alone would make."""
    from dmt_model.coreml._spec import spec_from_bytes
    from dmt_model.personalize import (
        DEFAULT_PRIOR_RECORDS,
        _load_model,
        _versions_on_devices,
    )
    from dmt_privacy.dp import PrivacyLedger, RandomizedResponse, Unaccounted
    from dmt_privacy.dp.receipt import ReleaseReceipt
    from dmt_privacy.release import VerifiedRelease

    if not isinstance(release, VerifiedRelease):
        raise ValidationError(
            f"release must be what verify_release returned, got {type(release).__name__}: "
            "a device reports only on a version whose signature it checked.")
    random_states = [None] * len(record_sets) if random_states is None else random_states
    if not len(ledgers) == len(random_states) == len(record_sets):
        raise ValidationError(f"{len(record_sets)} record sets, {len(ledgers)} ledgers and "
                              f"{len(random_states)} random states: give one of each per "
                              "device.")
    for ledger in ledgers:
        if not isinstance(ledger, PrivacyLedger | Unaccounted):
            raise ValidationError(
                f"ledger must be the device's PrivacyLedger (or UNACCOUNTED in a "
                f"simulation), got {type(ledger).__name__}: a report spends ε of the user's "
                "budget.")
    asking: dict[int, float] = {}  # before any report is drawn: all or none
    for i, ledger in enumerate(ledgers):
        if isinstance(ledger, PrivacyLedger):
            asking[id(ledger)] = asking.get(id(ledger), 0.0) + epsilon
            if not ledger.can_spend(asking[id(ledger)]):  # the rule charge() applies
                raise BudgetExceededError(
                    f"Reports at ε={epsilon:g} would exceed the budget of device {i}'s user "
                    f"{ledger.user_id!r}, who has ε={ledger.remaining.epsilon:.17g} left. "
                    "Nothing was reported; report at a lower ε, or wait for a new budget "
                    "period.")
    baseline = release.installed_version if based_on is None else based_on
    if type(baseline) is not int or not 1 <= baseline < release.metadata.version:
        raise ValidationError(
            f"based_on must be the number of the version the personal model comes from, "
            f"older than the new version {release.metadata.version}; got {baseline!r}. Pass "
            "based_on=, or verify the release with installed_version=.")
    mechanisms = [RandomizedResponse(epsilon=epsilon, categories=_CATEGORIES,
                                     random_state=state, field="better")
                  for state in random_states]
    short = [i for i, records in enumerate(record_sets) if len(records) < 2]
    if short:
        raise ValidationError(f"Device {short[0]} holds {len(record_sets[short[0]])} record(s); "
                              "checking a version needs at least 2 (it holds one out).")
    candidate = spec_from_bytes(release.model, source=f"release v{release.metadata.version}")
    if isinstance(previous, (str, bytes)) or hasattr(previous, "__fspath__"):
        previous = _load_model(previous)
    grid = DEFAULT_PRIOR_RECORDS if prior_records is None else prior_records
    try:
        before, after = _versions_on_devices(previous, candidate, record_sets, minimum=1,
                                             prior_records=grid, folds=folds, seed=seed)
    except ModelFileError:
        # A version that predicts NaN or infinity for some device's records is not better
        # for that device, which still reports (with the same noise): whether a report is
        # sent must not depend on its records.
        before, after = [], []
        for records in record_sets:
            try:
                (was,), (now,) = _versions_on_devices(
                    previous, candidate, [records], minimum=1, prior_records=grid,
                    folds=folds, seed=seed)
            except ModelFileError:
                was, now = math.inf, math.nan
            before.append(was)
            after.append(now)
    checks = []
    for mechanism, ledger, was, now in zip(mechanisms, ledgers, before, after, strict=True):
        truth = bool(now < was)  # a tie, or a failed check (NaN), is not "better"
        receipt = ReleaseReceipt(
            release_id=uuid.uuid4().hex, n_records=1, epsilon=mechanism.epsilon, delta=0.0,
            fields=(mechanism.field_receipt(),), privacy_unit="user",
            user_id=getattr(ledger, "user_id", None), random_source=mechanism.source.name,
            secure_random=mechanism.source.secure)
        with ledger.release(receipt) if isinstance(ledger, PrivacyLedger) else nullcontext():
            told = bool(mechanism.randomise([truth])[0])
        checks.append(VersionCheck(release.metadata.version, release.metadata.sha256,
                                   baseline, told, float(mechanism.epsilon)))
    return checks


def seal_version_check(check: VersionCheck, server_key: Any) -> bytes:
    """``check`` sealed to the server's HPKE key (``VerifiedRelease.server_public_key()``)."""
    from dmt_privacy.seal import seal

    if not isinstance(check, VersionCheck):
        raise ValidationError(f"check must be a VersionCheck, got {type(check).__name__}.")
    body = msgpack.packb({"format": _FORMAT, "version": check.version, "sha256": check.sha256,
                          "baseline": check.baseline, "better": check.better,
                          "epsilon": check.epsilon})
    return seal(body, server_key, info=_INFO)


def open_version_check(envelope: bytes, server_key: Any) -> VersionCheck:
    """The report sealed in ``envelope`` (the server's private key or keyring); anything
    that is not one raises :class:`~dmt_privacy.errors.InvalidPackage` with no detail."""
    from dmt_privacy.seal import open_sealed

    body = open_sealed(envelope, server_key, info=_INFO)
    try:
        doc = msgpack.unpackb(body, raw=False, strict_map_key=True, max_str_len=128,
                              max_bin_len=0, max_array_len=0, max_map_len=len(_FIELDS))
        if (not isinstance(doc, dict) or set(doc) != set(_FIELDS)
                or any(type(doc[k]) is not kind for k, kind in _FIELDS.items())
                or doc["format"] != _FORMAT):
            raise InvalidPackage()
        return VersionCheck(doc["version"], doc["sha256"], doc["baseline"], doc["better"],
                            doc["epsilon"])
    except Exception:  # every failure is the same failure
        raise InvalidPackage() from None


def reports_needed(confidence: float = 0.9) -> int:
    """The fewest reports that can show a version better at ``confidence`` (all of them
    saying "better"), whatever their ε: fewer spend the devices' ε for nothing."""
    if not 0.5 <= confidence < 1:
        raise ValidationError(f"confidence must be in [0.5, 1), got {confidence!r}.")
    return max(2, math.floor(math.log(1 - confidence) / math.log(0.5)) + 1)


def tally_version_checks(checks: Iterable[VersionCheck], *, version: int, sha256: str,
                         baseline: int, asked: int, epsilon: float = VERSION_CHECK_EPSILON,
                         confidence: float = 0.9) -> VersionCheckTally:
    """What the reports naming ``version`` (model file hash ``sha256``), ``baseline`` and
    ``epsilon`` say: the unbiased share of devices better off
    (as :func:`~dmt_privacy.dp.estimate_frequencies` estimates it) and its exact one-sided
    bounds at ``confidence``, within [0, 1]. Reports for anything else are counted in
    ``ignored`` and left out. ``asked`` is how many devices the server asked to report:
    more reports than that mean forged or replayed ones are among them, and the tally
    claims nothing."""
    from dmt_privacy.dp import RandomizedResponse

    if not 0.5 <= confidence < 1:
        raise ValidationError(f"confidence must be in [0.5, 1), got {confidence!r}.")
    if type(asked) is not int or asked < 0:
        raise ValidationError(f"asked must be the number of devices asked to report (an int "
                              f">= 0), got {asked!r}.")
    mechanism = RandomizedResponse(epsilon=epsilon, categories=_CATEGORIES, field="better")
    told: list[bool] = []
    ignored: Counter[str] = Counter()
    for check in checks:
        if not isinstance(check, VersionCheck):
            raise ValidationError(f"checks must hold VersionCheck reports (open_version_check"
                                  f"), got {type(check).__name__}.")
        why = next((name for name, mine, asked in (
            ("version", check.version, version), ("sha256", check.sha256, sha256),
            ("baseline", check.baseline, baseline), ("epsilon", check.epsilon,
                                                     mechanism.epsilon)) if mine != asked), None)
        if why is None:
            told.append(check.better)
        else:
            ignored[f"another {why}"] += 1
    n = len(told)
    if n == 0:
        return VersionCheckTally(version, sha256, baseline, mechanism.epsilon, 0, asked,
                                 math.nan, 0.0, 1.0, confidence, False, False,
                                 "no report on this version against this baseline",
                                 dict(ignored))
    # A device better off says "better" with probability p, one that is not with q = 1 - p:
    # the share of "better" reports is q + (p - q) × the share better off. Its bounds are
    # exact (Clopper–Pearson, one-sided at `confidence`): a normal interval collapses to a
    # point on reports that agree, and two of them would have made a claim.
    from scipy.stats import binomtest

    p, q = mechanism.keep_probability, mechanism.flip_probability
    said = sum(told)
    share = (said / n - q) / (p - q)
    low, high = ((min(max((bound - q) / (p - q), 0.0), 1.0)) for bound in (
        binomtest(said, n, 0.5, alternative="greater").proportion_ci(confidence).low,
        binomtest(said, n, 0.5, alternative="less").proportion_ci(confidence).high))
    figures = (f"{min(max(share, 0.0), 1.0):.0%} of {n} devices better off (one-sided "
               f"{confidence:.0%} bounds {low:.0%}–{high:.0%}; reports at ε = "
               f"{mechanism.epsilon:g})")
    if n > asked:
        return VersionCheckTally(
            version, sha256, baseline, mechanism.epsilon, n, asked, share, low, high,
            confidence, False, False, f"refused: {n} reports for {asked} devices asked, so "
            f"forged or replayed reports are among them; nothing is claimed ({figures})",
            dict(ignored))
    better, worse = low > 0.5, high < 0.5
    reason = (f"better on devices: {figures}" if better else
              f"worse on devices: {figures}" if worse else f"not shown better: {figures}")
    return VersionCheckTally(version, sha256, baseline, mechanism.epsilon, n, asked, share,
                             low, high, confidence, better, worse, reason, dict(ignored))
