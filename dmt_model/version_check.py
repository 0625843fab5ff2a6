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
:func:`reports_needed` reports (4 at 90 %), whatever ε, and :func:`claim_chance` gives its
power for a count of devices better off: at ε = 1, all of 5 devices better off are shown
so with chance 0.21, all of 20 with 0.72.

**One report per device asked.** The server's public key is in every release, so anyone
can seal a report. So the server gives each device it asks one Privacy Pass token
(:mod:`dmt_privacy.privacy_pass`: an RSA blind signature) under a key made for this check
alone (:class:`VersionCheckIssuer`); the device puts it in its report, and the tally
counts only reports with a valid token of that key, each token once. The issuer signs
one token per device it asks and never sees the token it signs, so a report does not
name its device, and at most as many reports count as devices were asked. The token's
challenge names the version, its hash, the baseline and ε
(:func:`version_check_challenge`), which keeps a device from spending a token on the
wrong report by mistake; since the issuer signs blind, only the key keeps checks apart.
A tally of more reports than devices asked claims nothing either way.

**One key for every device.** Blind signatures keep a report from naming its device only
if every device asked gets the same key (and ε): a key per device would tell their reports
apart. So the server signs the check into the version's release before it asks anyone
(:meth:`~dmt_model.server.retrain.ModelRegistry.announce_version_check`: the release's
``version_check`` names the key's id, the baseline and ε), and a device takes a token only
under the key its verified release names, at that ε (:func:`request_version_check_token`).
A server that wanted devices apart would have to sign releases of one version that differ
(in the check, or in the server key the reports are sealed to, which every envelope names):
two such releases, both verifying, are evidence anyone can show
(:func:`~dmt_privacy.release.conflicting_releases` names where they disagree). Devices that
fetch releases from one public place, or an app that gathers what its devices received,
would see it; the SDK does not gather them.

What tokens do not stop: the server's own forgeries (it holds the key; a claim only
changes which rule devices apply to their own records).
"""

from __future__ import annotations

import bisect
import hashlib
import math
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import pandas as pd

from dmt_privacy.errors import (
    BudgetExceededError,
    InvalidPackage,
    ModelFileError,
    ValidationError,
    warn_caller,
)
from dmt_privacy.privacy_pass import (
    TOKEN_SIZE,
    InvalidToken,
    IssuerKey,
    IssuerPublicKey,
    PendingTokens,
    Token,
    blind_sign,
    parse_token_requests,
    request_tokens,
    token_challenge,
    verify_token,
)

__all__ = [
    "VERSION_CHECK_EPSILON",
    "VersionCheck",
    "VersionCheckIssuer",
    "VersionCheckTally",
    "check_version",
    "check_version_many",
    "claim_chance",
    "open_version_check",
    "reports_needed",
    "request_version_check_token",
    "seal_version_check",
    "tally_version_checks",
    "version_check_challenge",
]

#: The ε of one device's report unless the server asks for another: the bit is told
#: truthfully with probability e^ε / (1 + e^ε), 73 % at ε = 1.
VERSION_CHECK_EPSILON = 1.0
#: The HPKE ``info`` of a sealed report (a share package's differs).
_INFO = b"dmt-version-check-v1"
_FORMAT = 2  # 2: with the device's token (b"" for none)
_FIELDS = {"format": int, "version": int, "sha256": str, "baseline": int, "better": bool,
           "epsilon": float, "token": bytes}
_CATEGORIES = (False, True)
#: The origin a report's token is bound to (with the check, as its redemption context).
_TOKEN_ORIGIN = b"dmt.version-check"


@dataclass(frozen=True)
class VersionCheck:
    """One device's report: whether version ``version`` (its model file's SHA-256
    ``sha256``) served it better than version ``baseline`` once personalized, told by
    randomized response at ``epsilon`` (so ``better`` is the truth with probability
    e^ε / (1 + e^ε) only); ``token``: the Privacy Pass token the server gave the device
    when it asked (:func:`request_version_check_token`), ``b""`` for none."""

    version: int
    sha256: str
    baseline: int
    better: bool
    epsilon: float
    token: bytes = field(default=b"", repr=False)  # a bearer credential until spent

    def __post_init__(self) -> None:
        bad = [name for name, kind in _FIELDS.items()
               if name != "format" and type(getattr(self, name)) is not kind]
        if not bad:
            bad = [name for name, ok in (
                ("version", self.version >= 2), ("baseline", 1 <= self.baseline < self.version),
                ("sha256", len(self.sha256) == 64
                 and all(c in "0123456789abcdef" for c in self.sha256)),
                ("epsilon", math.isfinite(self.epsilon) and self.epsilon > 0),
                ("token", len(self.token) in (0, TOKEN_SIZE))) if not ok]
        if bad:
            raise ValidationError(f"A version check has malformed {bad!r}: {self!r}.")


@dataclass(frozen=True)
class VersionCheckTally:
    """What the reports say about ``version`` against ``baseline``.

    ``share_better`` is the unbiased estimate of the share of reporting devices that were
    better off, ``lower``/``upper`` its one-sided bounds at ``confidence``; ``better``:
    ``lower`` is above one half, ``worse``: ``upper`` is below it; neither with more reports
    than the ``asked`` devices. ``ignored`` counts the reports left out, by why (another
    version, hash, baseline or ε; with ``tokens``, no valid token or one spent twice).
    ``tokens``: only reports with a valid token of the check's issuer counted, the key
    :attr:`key_id` names.
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
    tokens: bool = False
    #: the token key id (hex) the counted reports' tokens were verified under, with ``tokens``
    key_id: str | None = None


def check_version(release: Any, previous: Any, records: pd.DataFrame, *, ledger: Any,
                  based_on: int | None = None, epsilon: float | None = None,
                  max_epsilon: float = VERSION_CHECK_EPSILON,
                  prior_records: int | Sequence[int] | None = None, folds: int = 5,
                  seed: int = 0, random_state: Any = None, token: Any = b"") -> VersionCheck:
    """This device's report on the new version ``release`` names (what
    :func:`~dmt_privacy.release.verify_release` returned), against ``previous``: the
    version its personal model comes from (an updatable spec or ``.mlmodel`` path; its
    number is ``based_on``, by default the ``installed_version`` the release was verified
    against; a release that names the check, ``version_check``, must name that one).

    ``records`` are the device's own records, none of which trained the new version: a
    device that shared since ``previous`` was published must not report. Both versions are
    personalized on ``records`` out of fold (``folds``, ``seed``, ``prior_records`` as
    :func:`~dmt_model.personalize.compare_on_devices`), and the bit "the new version's
    mean held-out error is lower" (false for a device that cannot tell: fewer than 2
    distinct records, records the check refuses (a value far outside its bounds, a class
    the model does not know), or a version that predicts no finite number for them; such
    a device still reports, since whether it does must not depend on its records) goes
    through randomized response at ``epsilon`` (by
    default the ε the release's ``version_check`` names, else
    :data:`VERSION_CHECK_EPSILON`; another than the release names is refused, and the
    release's above ``max_epsilon`` unless passed as ``epsilon=``), charged
    to ``ledger`` first (a :class:`~dmt_privacy.dp.PrivacyLedger`, or
    :data:`~dmt_privacy.dp.UNACCOUNTED` in simulations; a budget the charge would exceed
    raises :class:`~dmt_privacy.errors.BudgetExceededError` and nothing is reported).
    ``token``: the one the server gave this device when it asked it to report
    (:func:`request_version_check_token`). ``records`` without a column the model reads
    raise :class:`~dmt_privacy.errors.ValidationError` before anything is charged (the
    app's mistake, not the user's data). A release that announces the check
    (``version_check``) is tallied on tokens alone, so without one this raises
    :class:`~dmt_privacy.errors.ValidationError` before anything is charged.
    ``random_state`` other than ``None`` is not secure: for tests.
    """
    (check,) = check_version_many(release, previous, [records], ledgers=[ledger],
                                  based_on=based_on, epsilon=epsilon,
                                  max_epsilon=max_epsilon, prior_records=prior_records,
                                  folds=folds, seed=seed, random_states=[random_state],
                                  tokens=[token])
    return check


def check_version_many(release: Any, previous: Any, record_sets: Sequence[pd.DataFrame], *,
                       ledgers: Sequence[Any], based_on: int | None = None,
                       epsilon: float | None = None, max_epsilon: float = VERSION_CHECK_EPSILON,
                       prior_records: int | Sequence[int] | None = None, folds: int = 5,
                       seed: int = 0, random_states: Sequence[Any] | None = None,
                       tokens: Sequence[Any] | None = None) -> list[VersionCheck]:
    """:func:`check_version` of several devices (a simulation's), each with its records,
    its ledger and its token (``random_states``: one each, ``None`` for the secure source;
    ``tokens``: one each, or none); their
    personalizations train together, as :func:`~dmt_model.personalize.compare_on_devices`
    trains them, so each report is the one its device alone would make."""
    from dmt_model.coreml._spec import spec_from_bytes
    from dmt_model.personalize import (
        DEFAULT_PRIOR_RECORDS,
        _copies,
        _load_model,
        _reading_featurizer,
        _require_frame,
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
    tokens = [b""] * len(record_sets) if tokens is None else tokens
    if not len(ledgers) == len(random_states) == len(tokens) == len(record_sets):
        raise ValidationError(f"{len(record_sets)} record sets, {len(ledgers)} ledgers, "
                              f"{len(random_states)} random states and {len(tokens)} tokens: "
                              "give one of each per device.")
    token_bytes = [_token_bytes(token) for token in tokens]
    baseline, epsilon = _announced(release, based_on, epsilon, max_epsilon)
    fits = hashlib.sha256(version_check_challenge(
        release.metadata.version, release.metadata.sha256, baseline, epsilon)).digest()
    announced = release.metadata.version_check
    key = None if announced is None else bytes.fromhex(announced["key"])
    missing = [i for i, token in enumerate(token_bytes) if not token]
    if announced is not None and missing:  # its issuer's tally counts no report without one
        raise ValidationError(
            f"Device {missing[0]} would report without a token, but the release announces a "
            f"check whose tally counts only reports with a token under key "
            f"{announced['key'][:16]}; nothing was reported or charged. Request one with "
            "request_version_check_token and pass it as token=.")
    parsed = [(i, Token.from_bytes(token)) for i, token in enumerate(token_bytes) if token]
    wrong = [i for i, token in parsed if token.challenge_digest != fits
             or (key is not None and token.token_key_id != key)]
    if wrong:  # a report the server cannot count would spend the user's ε for nothing
        raise ValidationError(
            f"Device {wrong[0]}'s token was made for another check than this report (version "
            f"{release.metadata.version} against {baseline} at ε={epsilon!r}, under the key "
            "the release names); nothing was reported. Request it with "
            "request_version_check_token, with the same based_on and epsilon.")
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
    mechanisms = [RandomizedResponse(epsilon=epsilon, categories=_CATEGORIES,
                                     random_state=state, field="better")
                  for state in random_states]
    candidate = spec_from_bytes(release.model, source=f"release v{release.metadata.version}")
    if isinstance(previous, (str, bytes)) or hasattr(previous, "__fspath__"):
        previous = _load_model(previous)
    grid = DEFAULT_PRIOR_RECORDS if prior_records is None else prior_records
    featurizer = _reading_featurizer(candidate)
    read = [*featurizer.input_fields, featurizer.target]
    for i, records in enumerate(record_sets):  # the app's mistake, whatever the records hold
        _require_frame(records, f"device {i}'s records")
        if absent := [name for name in read if name not in records.columns]:
            raise ValidationError(
                f"device {i}'s records have no column(s) {absent!r}, which the model reads "
                f"({read!r}); nothing was reported or charged. Pass the device's records "
                "as the store gives them.")
    # Whether a report is sent must not depend on the device's records: a device that
    # cannot check (fewer than 2 distinct records: one is held out; values the check
    # refuses as corrupt, a class the model does not know), or whose check fails, reports
    # "not better" with the same noise and charge as every other (helper-87).
    before, after = [math.inf] * len(record_sets), [math.nan] * len(record_sets)
    able = [i for i, records in enumerate(record_sets)  # 2 distinct records, as compared
            if len(records) >= 2 and _checkable(candidate, records, i)
            and _copies(candidate, records).max() >= 1]
    try:
        checked = _versions_on_devices(previous, candidate, [record_sets[i] for i in able],
                                       minimum=1, prior_records=grid, folds=folds,
                                       seed=seed) if able else ([], [])
        for i, was, now in zip(able, *checked, strict=True):
            before[i], after[i] = was, now
    except ModelFileError:
        # A version that predicts NaN, infinity or far outside the target's bounds for
        # some device's records is not better for that device, which still reports.
        for i in able:
            try:
                (before[i],), (after[i],) = _versions_on_devices(
                    previous, candidate, [record_sets[i]], minimum=1, prior_records=grid,
                    folds=folds, seed=seed)
            except ModelFileError:
                before[i], after[i] = math.inf, math.nan
    checks = []
    for mechanism, ledger, was, now, token in zip(mechanisms, ledgers, before, after,
                                                  token_bytes, strict=True):
        truth = bool(now < was)  # a tie, or a failed check (NaN), is not "better"
        receipt = ReleaseReceipt(
            release_id=uuid.uuid4().hex, n_records=1, epsilon=mechanism.epsilon, delta=0.0,
            fields=(mechanism.field_receipt(),), privacy_unit="user",
            user_id=getattr(ledger, "user_id", None), random_source=mechanism.source.name,
            secure_random=mechanism.source.secure)
        with ledger.release(receipt) if isinstance(ledger, PrivacyLedger) else nullcontext():
            told = bool(mechanism.randomise([truth])[0])
        checks.append(VersionCheck(release.metadata.version, release.metadata.sha256,
                                   baseline, told, float(mechanism.epsilon), token))
    return checks


def _checkable(candidate: Any, records: pd.DataFrame, device: int) -> bool:
    """Whether the check takes ``records`` (no value it refuses as corrupt, no class the
    model does not know)."""
    from dmt_model.personalize import _check_records

    try:
        _check_records(candidate, records, what=f"device {device}'s records")
    except ValidationError:
        return False
    return True


def _token_bytes(token: Any) -> bytes:
    if isinstance(token, Token):
        token = token.to_bytes()
    if not isinstance(token, bytes) or len(token) not in (0, TOKEN_SIZE):
        got = (f"{len(token)} bytes" if isinstance(token, bytes) else type(token).__name__)
        raise ValidationError(f"token must be the Token the server gave the device "
                              f"(request_version_check_token) or its {TOKEN_SIZE} bytes, got "
                              f"{got}.")
    return token


def version_check_challenge(version: int, sha256: str, baseline: int,
                            epsilon: float = VERSION_CHECK_EPSILON) -> bytes:
    """The Privacy Pass TokenChallenge a report's token is bound to: this version (its model
    file's SHA-256), against this baseline, at this ε. A device computes it from the release
    it verified, so the server cannot give each device a challenge of its own."""
    version, sha256, baseline, epsilon = _check_names(version, sha256, baseline, epsilon)
    context = hashlib.sha256(msgpack.packb([version, sha256, baseline, epsilon])).digest()
    return token_challenge(_TOKEN_ORIGIN, context)


def _check_names(version: Any, sha256: Any, baseline: Any, epsilon: Any
                 ) -> tuple[int, str, int, float]:
    """The check's names as a report carries them, validated as :class:`VersionCheck` does
    (ε as a float: the challenge and the tally must see the same number)."""
    from dmt_privacy.dp._checks import check_epsilon

    check = VersionCheck(version, sha256, baseline, False,
                         check_epsilon(epsilon, field="epsilon"))
    return check.version, check.sha256, check.baseline, check.epsilon


def _announced(release: Any, based_on: Any, epsilon: Any, max_epsilon: Any
               ) -> tuple[int, float]:
    """The baseline and ε of a device's report on ``release``: ``based_on`` (default: the
    release's ``installed_version``, else the baseline its ``version_check`` names) and
    ``epsilon`` (default: the ε it names, else :data:`VERSION_CHECK_EPSILON`); a release
    that names the check accepts no other. An ε taken from the release (the server chose
    it) above ``max_epsilon``, the most the app lets one report spend unasked, is refused;
    one the app passes itself is its own choice."""
    from dmt_privacy.dp._checks import check_epsilon

    cap = check_epsilon(max_epsilon, field="max_epsilon")
    chosen_by_server = epsilon is None

    announced = release.metadata.version_check
    baseline = based_on if based_on is not None else (
        release.installed_version if release.installed_version is not None
        else None if announced is None else announced["baseline"])
    if type(baseline) is not int or not 1 <= baseline < release.metadata.version:
        raise ValidationError(
            f"based_on must be the number of the version the personal model comes from, "
            f"older than the new version {release.metadata.version}; got {baseline!r}. Pass "
            "based_on=, or verify the release with installed_version=.")
    epsilon = check_epsilon(epsilon if epsilon is not None else VERSION_CHECK_EPSILON
                            if announced is None else announced["epsilon"], field="epsilon")
    if announced is not None and (baseline, float(epsilon)) != (announced["baseline"],
                                                                announced["epsilon"]):
        raise ValidationError(
            f"Version {release.metadata.version}'s signed release asks every device to check "
            f"it against version {announced['baseline']} at ε={announced['epsilon']!r}; "
            f"this report would be against version {baseline} at ε={float(epsilon)!r}. "
            "Nothing was charged or reported: a device whose personal model comes from "
            "another version does not report, and none reports at another ε than every "
            "other device.")
    if chosen_by_server and epsilon > cap:
        raise ValidationError(
            f"Version {release.metadata.version}'s release asks for reports at "
            f"ε={epsilon!r}, more than max_epsilon={cap!r}, the most this app lets one report "
            "spend unasked. Nothing was charged or reported; pass epsilon= (or a higher "
            "max_epsilon) only if the app's users agreed to spend that much.")
    return baseline, float(epsilon)


def request_version_check_token(release: Any, public_key: IssuerPublicKey, *,
                                based_on: int | None = None,
                                epsilon: float | None = None,
                                max_epsilon: float = VERSION_CHECK_EPSILON) -> PendingTokens:
    """The device's blinded request for its report's token, when the server asks it to check
    ``release`` (what :func:`~dmt_privacy.release.verify_release` returned) under the
    check's key ``public_key`` (:attr:`VersionCheckIssuer.public_key`). Send ``.body`` to
    the server; ``.finalize(its answer)[0]`` is the token to pass to :func:`check_version`.

    The release must name the check (``version_check``, signed when the server opened it:
    :meth:`~dmt_model.server.retrain.ModelRegistry.announce_version_check`), and the key
    must be the one it names: a device does not take a token of a key that no signed
    release names, since a server could give each device a key of its own and tell their
    reports apart. ``based_on`` and ``epsilon`` default to what it names, and no other is
    accepted. The server chooses the ε the release names, so one above ``max_epsilon``
    (default :data:`VERSION_CHECK_EPSILON`), the most the app lets one report spend
    unasked, is refused unless the app passes it as ``epsilon=`` itself
    (:class:`~dmt_privacy.errors.ValidationError` for each: nothing is sent).
    """
    from dmt_privacy.release import VerifiedRelease

    if not isinstance(release, VerifiedRelease):
        raise ValidationError(
            f"release must be what verify_release returned, got {type(release).__name__}.")
    if not isinstance(public_key, IssuerPublicKey):
        raise ValidationError(f"public_key must be the check's IssuerPublicKey, got "
                              f"{type(public_key).__name__}.")
    announced = release.metadata.version_check
    if announced is None:
        raise ValidationError(
            f"Version {release.metadata.version}'s release names no version check, so this "
            "device cannot tell whether every device asked is given the same key. Fetch the "
            "release again: the server signs the check into it before it asks devices "
            "(ModelRegistry.announce_version_check); do not report until it names one.")
    if public_key.token_key_id.hex() != announced["key"]:
        raise ValidationError(
            f"The check's key {public_key.key_id} is not the one version "
            f"{release.metadata.version}'s signed release names "
            f"({announced['key'][:16]}): the server may be giving devices keys of their own, "
            "to tell their reports apart. Do not report; keep this release as evidence.")
    baseline, epsilon = _announced(release, based_on, epsilon, max_epsilon)
    return request_tokens(public_key, 1, challenge=version_check_challenge(
        release.metadata.version, release.metadata.sha256, baseline, epsilon))


class VersionCheckIssuer:
    """The server's side of one check: version ``version`` (model file hash ``sha256``)
    against ``baseline`` at ``epsilon``. It gives each device it asks one token
    (:meth:`ask`: a blind signature of the device's request, so it never sees the token),
    under a key made for this check alone, and :meth:`tally` counts only reports with a
    valid token, each token once: at most :attr:`asked` reports.

    The key is what keeps checks apart: the issuer signs blind, so it cannot see which
    challenge a device asks it to sign, and a key shared with another check (or with the
    package issuer) would let a device asked there report here. So each issuer makes its
    own key and never takes one. The devices must all be given the same key, or a key per
    device would tell their reports apart: the registry signs :attr:`announcement` into the
    version's release before devices are asked, and a device takes a token only under the
    key its verified release names (:func:`request_version_check_token`)."""

    def __init__(self, *, version: int, sha256: str, baseline: int,
                 epsilon: float = VERSION_CHECK_EPSILON) -> None:
        self.version, self.sha256, self.baseline, self.epsilon = _check_names(
            version, sha256, baseline, epsilon)
        self.challenge = version_check_challenge(version, sha256, baseline, self.epsilon)
        self._key = IssuerKey.generate()
        self.asked = 0
        self._devices: set[str] = set()

    @property
    def public_key(self) -> IssuerPublicKey:
        """What the server sends each device it asks, with the ask."""
        return self._key.public_key()

    @property
    def announcement(self) -> dict[str, Any]:
        """The check as the version's signed release names it (its ``version_check``: the
        key's token key id, the baseline and ε), so each device asked can see it is given
        what every other is (:meth:`~dmt_model.server.retrain.ModelRegistry.announce_version_check`
        signs it in)."""
        return {"key": self.public_key.token_key_id.hex(), "baseline": self.baseline,
                "epsilon": self.epsilon}

    def ask(self, request: bytes, *, device: str | None = None) -> bytes:
        """The answer to one device's token request (:func:`request_version_check_token`'s
        ``.body``): one blind signature, and the device counts as asked. A request for more
        than one token, or not for this key, raises
        :class:`~dmt_privacy.errors.InvalidPackage`.

        ``device``: the deployment's id of the device it asked (what its attestation check
        returned, as for :class:`~dmt_model.server.issuer.TokenIssuer`). A second request of
        a device is refused (:class:`~dmt_privacy.errors.ValidationError`): every request
        signed is one more report counted, so a device that could ask 14 times turned a
        version better for no device into a majority (helper-90). Without it, each request
        counts as another device: the caller must ask each device once, and a
        :class:`DeprecationWarning` says so (``device`` will be required)."""
        if device is None:
            warn_caller(
                "VersionCheckIssuer.ask() without device= counts this request as another "
                "device: a device that asks twice reports twice. Pass device= (the "
                "deployment's attested id of the device); it will be required.",
                DeprecationWarning)
        else:
            if not isinstance(device, str) or not device:
                raise ValidationError(f"device must be a non-empty str, got {device!r}.")
            if device in self._devices:
                raise ValidationError(
                    f"Device {device!r} was already asked for this check: one token a "
                    "device (each is one more report counted). Nothing was signed.")
        try:
            (blinded,) = parse_token_requests(request, self.public_key)
            answer = blind_sign(self._key, blinded)
        except (InvalidToken, ValueError):
            raise InvalidPackage() from None
        if device is not None:
            self._devices.add(device)
        self.asked += 1
        return answer

    def tally(self, checks: Iterable[VersionCheck], *, confidence: float = 0.9
              ) -> VersionCheckTally:
        """:func:`tally_version_checks` of ``checks`` for this check, counting only reports
        with a valid token of this key, each once, against the devices asked."""
        return tally_version_checks(checks, version=self.version, sha256=self.sha256,
                                    baseline=self.baseline, asked=self.asked,
                                    epsilon=self.epsilon, confidence=confidence,
                                    token_key=self.public_key)

    def __repr__(self) -> str:  # never the key
        return (f"VersionCheckIssuer(version={self.version}, baseline={self.baseline}, "
                f"epsilon={self.epsilon:g}, asked={self.asked})")


def seal_version_check(check: VersionCheck, server_key: Any) -> bytes:
    """``check`` sealed to the server's HPKE key (``VerifiedRelease.server_public_key()``)."""
    from dmt_privacy.seal import seal

    if not isinstance(check, VersionCheck):
        raise ValidationError(f"check must be a VersionCheck, got {type(check).__name__}.")
    body = msgpack.packb({"format": _FORMAT, "version": check.version, "sha256": check.sha256,
                          "baseline": check.baseline, "better": check.better,
                          "epsilon": check.epsilon, "token": check.token}, use_bin_type=True)
    return seal(body, server_key, info=_INFO)


def open_version_check(envelope: bytes, server_key: Any) -> VersionCheck:
    """The report sealed in ``envelope`` (the server's private key or keyring); anything
    that is not one raises :class:`~dmt_privacy.errors.InvalidPackage` with no detail."""
    from dmt_privacy.seal import open_sealed

    body = open_sealed(envelope, server_key, info=_INFO)
    try:
        doc = msgpack.unpackb(body, raw=False, strict_map_key=True, max_str_len=128,
                              max_bin_len=TOKEN_SIZE, max_array_len=0,
                              max_map_len=len(_FIELDS))
        if isinstance(doc, dict) and doc.get("format") == 1 and "token" not in doc:
            doc["token"] = b""  # format 1 (no token) opens; a tally with tokens refuses it
        if (not isinstance(doc, dict) or set(doc) != set(_FIELDS)
                or any(type(doc[k]) is not kind for k, kind in _FIELDS.items())
                or doc["format"] not in (1, _FORMAT)):
            raise InvalidPackage()
        return VersionCheck(doc["version"], doc["sha256"], doc["baseline"], doc["better"],
                            doc["epsilon"], doc["token"])
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
                         confidence: float = 0.9, token_key: IssuerPublicKey | None = None
                         ) -> VersionCheckTally:
    """What the reports naming ``version`` (model file hash ``sha256``), ``baseline`` and
    ``epsilon`` say: the unbiased share of devices better off
    (as :func:`~dmt_privacy.dp.estimate_frequencies` estimates it) and its exact one-sided
    bounds at ``confidence``, within [0, 1]. Reports for anything else are counted in
    ``ignored`` and left out. ``asked`` is how many devices the server asked to report:
    more reports than that mean forged or replayed ones are among them, and the tally
    claims nothing.

    ``token_key``: the check's token key (:attr:`VersionCheckIssuer.public_key`; or call
    :meth:`VersionCheckIssuer.tally`): only reports with a valid token for this check count,
    each token once. Without it, anyone holding the release's server key can report, so a
    forged report can take an asked device's place (deprecated: a ``DeprecationWarning``).
    """
    from dmt_privacy.dp import RandomizedResponse

    if not 0.5 <= confidence < 1:
        raise ValidationError(f"confidence must be in [0.5, 1), got {confidence!r}.")
    if type(asked) is not int or asked < 0:
        raise ValidationError(f"asked must be the number of devices asked to report (an int "
                              f">= 0), got {asked!r}.")
    if token_key is None:
        warn_caller("tally_version_checks without token_key counts reports anyone holding "
                    "the release's server key can forge; give each device asked a token "
                    "(VersionCheckIssuer) and tally with token_key= or "
                    "VersionCheckIssuer.tally.", DeprecationWarning)
    elif not isinstance(token_key, IssuerPublicKey):
        raise ValidationError(f"token_key must be the check's IssuerPublicKey, got "
                              f"{type(token_key).__name__}.")
    key_id = None if token_key is None else token_key.token_key_id.hex()
    mechanism = RandomizedResponse(epsilon=epsilon, categories=_CATEGORIES, field="better")
    challenge = version_check_challenge(version, sha256, baseline, mechanism.epsilon)
    spent: set[str] = set()
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
        if why is not None:
            ignored[f"another {why}"] += 1
            continue
        if token_key is not None:
            try:
                token_id = verify_token(check.token, token_key, challenge=challenge).token_id
            except InvalidToken:
                ignored["no valid token"] += 1
                continue
            if token_id in spent:
                ignored["token spent twice"] += 1
                continue
            spent.add(token_id)
        told.append(check.better)
    n = len(told)
    if n == 0:
        return VersionCheckTally(version, sha256, baseline, mechanism.epsilon, 0, asked,
                                 math.nan, 0.0, 1.0, confidence, False, False,
                                 "no report on this version against this baseline",
                                 dict(ignored), token_key is not None, key_id)
    said = sum(told)
    share, low, high = _share_bounds(said, n, mechanism, confidence)
    figures = (f"{min(max(share, 0.0), 1.0):.0%} of {n} devices better off (one-sided "
               f"{confidence:.0%} bounds {low:.0%}–{high:.0%}; reports at ε = "
               f"{mechanism.epsilon:g})")
    if n > asked:
        return VersionCheckTally(
            version, sha256, baseline, mechanism.epsilon, n, asked, share, low, high,
            confidence, False, False, f"refused: {n} reports for {asked} devices asked, so "
            f"forged or replayed reports are among them; nothing is claimed ({figures})",
            dict(ignored), token_key is not None, key_id)
    better, worse = low > 0.5, high < 0.5
    reason = (f"better on devices: {figures}" if better else
              f"worse on devices: {figures}" if worse else f"not shown better: {figures}")
    return VersionCheckTally(version, sha256, baseline, mechanism.epsilon, n, asked, share,
                             low, high, confidence, better, worse, reason, dict(ignored),
                             token_key is not None, key_id)


def _share_bounds(said: int, n: int, mechanism: Any, confidence: float
                  ) -> tuple[float, float, float]:
    """The unbiased share of devices better off when ``said`` of ``n`` reports told by
    ``mechanism`` (randomized response) say "better", and its one-sided bounds at
    ``confidence`` within [0, 1]."""
    # A device better off says "better" with probability p, one that is not with q = 1 - p:
    # the share of "better" reports is q + (p - q) × the share better off. Its bounds are
    # exact (Clopper–Pearson, one-sided at `confidence`): a normal interval collapses to a
    # point on reports that agree, and two of them would have made a claim.
    from scipy.stats import binomtest

    p, q = mechanism.keep_probability, mechanism.flip_probability
    low, high = ((min(max((bound - q) / (p - q), 0.0), 1.0)) for bound in (
        binomtest(said, n, 0.5, alternative="greater").proportion_ci(confidence).low,
        binomtest(said, n, 0.5, alternative="less").proportion_ci(confidence).high))
    return (said / n - q) / (p - q), low, high


def claim_chance(better_off: int, devices: int, *, epsilon: float = VERSION_CHECK_EPSILON,
                 confidence: float = 0.9) -> float:
    """The chance that the tally of ``devices`` reports at ``epsilon``, ``better_off`` of
    them from devices truly better off, shows a majority better
    (:func:`tally_version_checks`' ``better``): the check's power, exactly, for planning how
    many devices to ask and at what ε. Every report counts (one per device asked, each with
    a valid token); a device that cannot tell reports "not better", so count it among
    ``devices`` and not ``better_off``.

    At ε = 1, 20 devices of which 15 are better off are shown better with probability
    0.28, and all 20 better off with 0.72; at ε = 4, 15 of 20 with 0.97."""
    from scipy.stats import binom

    from dmt_privacy.dp import RandomizedResponse

    if not 0.5 <= confidence < 1:
        raise ValidationError(f"confidence must be in [0.5, 1), got {confidence!r}.")
    if type(devices) is not int or devices < 0:
        raise ValidationError(f"devices must be the number of reports (an int >= 0), got "
                              f"{devices!r}.")
    if type(better_off) is not int or not 0 <= better_off <= devices:
        raise ValidationError(f"better_off must be an int from 0 to devices={devices}, got "
                              f"{better_off!r}.")
    mechanism = RandomizedResponse(epsilon=epsilon, categories=_CATEGORIES, field="better")
    if devices == 0:
        return 0.0
    p, q = mechanism.keep_probability, mechanism.flip_probability
    # the number of "better" reports: the truthful ones among the better off, the flipped
    # ones among the rest
    said = np.convolve(binom.pmf(np.arange(better_off + 1), better_off, p),
                       binom.pmf(np.arange(devices - better_off + 1), devices - better_off, q))
    # the tally claims from the fewest "better" reports whose lower bound is above one half
    # (the bound rises with them), so the chance is the tail from there
    fewest = bisect.bisect_left(range(devices + 1), True, key=lambda s: _share_bounds(
        s, devices, mechanism, confidence)[1] > 0.5)
    return float(min(said[fewest:].sum(), 1.0))
