"""Issue 15.2: one sender filling a victim's k-anonymity class with packages of its own.

"A class is released once it holds records from k packages, and packages are
free: one victim package in a rare class plus 4 one-record packages from the
attacker released the victim's 7 records with one real contributor."

The attack is run first as the issue ran it (no per-device limit: it still
breaks the quarantine, which documents what a policy without tokens allows),
then against a policy with ``tokens_per_period=1``: the attacker's one attested
device gets one token per period, so its other packages are refused (no token,
or a token spent twice), packages spread over periods do not add up (a cohort
needs k tokens of one period), and the victim's records stay quarantined. It
takes k - 1 = 4 attested devices in the victim's period, as the threat model
states.
"""

from __future__ import annotations

from attack_kit import EPSILON, KEY, K, forge

from dmt_model.datasets import BOSTON_SCHEMA
from dmt_model.server import ServerPolicy, SharedStore
from dmt_model.server.ingest import Ingestor
from dmt_model.server.issuer import TokenIssuer
from dmt_privacy.package import seal_package
from dmt_privacy.privacy_pass import request_tokens

PERIOD = 7 * 86400


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _victim_and_attack(base):
    one = forge(base, n=1)  # the victim's class: base's first record's generalization
    victim = forge(one, n=7)
    attack = [forge(one, n=1) for _ in range(K - 1)]
    return victim, attack


def _released_ids(db: str) -> set[str]:
    frame = SharedStore(db, KEY).frame("released")
    return set() if frame.empty else set(frame["package_id"])


def _tokens(ingestor: Ingestor, device: str, n: int = 1):
    """What a device's app does: fetch n tokens from the issuer (attested as ``device``)."""
    assert ingestor.token_keys is not None
    issuer = TokenIssuer(ingestor.token_keys, lambda evidence: evidence.decode() or None, 1)
    _, public = issuer.current_key()
    pending = request_tokens(public, n)
    return pending.finalize(issuer.issue(device.encode(), pending.body))


def _token_policy(plan) -> ServerPolicy:
    return ServerPolicy(BOSTON_SCHEMA, min_k=K, epsilon={"MEDV": EPSILON}, plan=plan,
                        tokens_per_period=1)


def test_without_tokens_one_sender_still_breaks_the_quarantine(base, policy, tmp_path):
    """The issue's attack, against a policy that sets no per-device limit: it works."""
    db = f"sqlite:///{tmp_path / 'server.db'}"
    victim, attack = _victim_and_attack(base)
    ingestor = Ingestor(db, KEY, policy)
    assert ingestor.ingest_one(seal_package(victim, KEY.public_key())).status == "accepted"
    assert victim.package_id not in _released_ids(db)
    for pkg in attack:
        assert ingestor.ingest_one(seal_package(pkg, KEY.public_key())).status == "accepted"
    assert victim.package_id in _released_ids(db)  # 7 records out, one real contributor


def test_with_one_token_per_period_the_attacker_cannot_release_the_victim(base, plan, tmp_path):
    db = f"sqlite:///{tmp_path / 'server.db'}"
    clock = Clock()
    ingestor = Ingestor(db, KEY, _token_policy(plan), clock=clock)
    victim, attack = _victim_and_attack(base)
    (victim_token,) = _tokens(ingestor, "victim-phone")
    accepted = ingestor.ingest_one(seal_package(victim, KEY.public_key(), token=victim_token))
    assert accepted.status == "accepted"

    # the attacker's one device: one token this period, a second request is refused
    (token,) = _tokens(ingestor, "attacker-phone")
    try:
        _tokens(ingestor, "attacker-phone")
        raise AssertionError("a second token in the same period was issued")
    except Exception as exc:  # TokenRefused(429)
        assert getattr(exc, "status", None) == 429
    outcomes = [ingestor.ingest_one(seal_package(attack[0], KEY.public_key(), token=token))]
    outcomes += [ingestor.ingest_one(seal_package(attack[1], KEY.public_key(), token=token))]
    outcomes += [ingestor.ingest_one(seal_package(pkg, KEY.public_key())) for pkg in attack[2:]]
    assert [o.status for o in outcomes] == ["accepted", "rejected", "rejected", "rejected"]
    assert outcomes[1].reason.startswith("token: double spend")
    assert all(o.reason.startswith("token: missing") for o in outcomes[2:])
    assert victim.package_id not in _released_ids(db)

    # the same device over the next periods: each token is of another period, so no cohort
    for pkg in attack[1:]:
        clock.now += PERIOD
        (token,) = _tokens(ingestor, "attacker-phone")
        refreshed = forge(pkg, n=1)  # a fresh package id: the earlier ones were refused
        assert ingestor.ingest_one(
            seal_package(refreshed, KEY.public_key(), token=token)).status == "accepted"
    assert victim.package_id not in _released_ids(db)
    assert SharedStore(db, KEY).counts()["records_quarantined"] == 7 + 4


def test_k_minus_one_attested_devices_in_the_victims_period_are_what_it_takes(base, plan,
                                                                               tmp_path):
    """The bound is tight: with N = 1, k - 1 devices (one token each) release the victim."""
    db = f"sqlite:///{tmp_path / 'server.db'}"
    ingestor = Ingestor(db, KEY, _token_policy(plan), clock=Clock())
    victim, attack = _victim_and_attack(base)
    (token,) = _tokens(ingestor, "victim-phone")
    ingestor.ingest_one(seal_package(victim, KEY.public_key(), token=token))
    for i, pkg in enumerate(attack):
        (token,) = _tokens(ingestor, f"attacker-phone-{i}")
        assert ingestor.ingest_one(seal_package(pkg, KEY.public_key(), token=token)).status \
            == "accepted"
        assert (victim.package_id in _released_ids(db)) == (i == len(attack) - 1)


def test_retraining_counts_contributors_as_the_release_did(base, plan, tmp_path):
    """Found in review (helper-44): a cohort released with k tokens of one period also takes
    the class's blocks of other periods, and retraining counted packages: one device's
    packages of 4 periods, with k - 1 honest ones held out, made the victim's records train
    with one real contributor beside them."""
    from dmt_model.server.training import policy_batches

    db = f"sqlite:///{tmp_path / 'server.db'}"
    clock = Clock()
    ingestor = Ingestor(db, KEY, _token_policy(plan), clock=clock)
    victim, attack = _victim_and_attack(base)
    for pkg in attack:  # one attacker device, one package a period
        (token,) = _tokens(ingestor, "attacker-phone")
        assert ingestor.ingest_one(seal_package(pkg, KEY.public_key(), token=token)).status \
            == "accepted"
        clock.now += PERIOD
    (token,) = _tokens(ingestor, "victim-phone")
    ingestor.ingest_one(seal_package(victim, KEY.public_key(), token=token))
    honest = [forge(forge(base, n=1), n=1) for _ in range(K - 1)]
    for i, pkg in enumerate(honest):  # k - 1 attested devices in the victim's period
        (token,) = _tokens(ingestor, f"honest-phone-{i}")
        ingestor.ingest_one(seal_package(pkg, KEY.public_key(), token=token))
    assert victim.package_id in _released_ids(db)
    store = SharedStore(db, KEY)
    everyone, _ = policy_batches(store, _token_policy(plan))
    assert victim.package_id in {b.package_id for b in everyone}
    batches, read = policy_batches(store, _token_policy(plan),
                                   exclude={p.package_id for p in honest})
    assert victim.package_id not in {b.package_id for b in batches}
    assert read.cohorts_left_out >= 1


def test_l_diversity_counts_one_period_as_k_does(tmp_path):
    """helper-90: k counted the tokens of one period, l and t every token of the cohort. One
    attested device (one token a period) planted a 'cold' and an 'hiv' package in two
    earlier periods; three honest 'flu' devices then made the cohort look 3-diverse, it was
    released and trained on, and the planter learnt every member's value. l and t now hold
    on the blocks of one period alone, at release and at training."""
    import numpy as np
    import pandas as pd

    from dmt_model.server.training import policy_batches
    from dmt_privacy import Field, Schema
    from dmt_privacy.anonymity import KAnonymizer
    from dmt_privacy.package import PrivacyReceipt, SharePackage

    schema = Schema((
        Field("age", "numeric", role="quasi-identifier", bounds=(0, 100), grid=1.0),
        Field("zip", "categorical", role="quasi-identifier", categories=("a", "b", "c", "d")),
        Field("disease", "categorical", role="sensitive", categories=("flu", "cold", "hiv"))))
    rng = np.random.default_rng(0)
    proxy = pd.DataFrame({"age": rng.integers(0, 101, 400).astype(float),
                          "zip": rng.choice(list("abcd"), 400),
                          "disease": rng.choice(["flu", "cold", "hiv"], 400, p=[.5, .35, .15])})
    plan = KAnonymizer(["age", "zip"], k=3, sensitive="disease", l=3).fit(proxy).plan_ \
        .widened_to(schema)
    policy = ServerPolicy(schema, min_k=3, plan=plan, tokens_per_period=1)

    def package(disease):
        kept = plan.apply(pd.DataFrame({"age": [40.0], "zip": ["b"], "disease": [disease]})).data
        return SharePackage.create(schema.schema_id, {c: kept[c].tolist() for c in kept.columns},
                                   PrivacyReceipt(k=plan.k, l=float(plan.l), t=plan.t))

    def run(planter: bool) -> tuple[list[str], int]:
        db = f"sqlite:///{tmp_path / f'{planter}.db'}"
        clock = Clock()
        ingestor = Ingestor(db, KEY, policy, clock=clock)
        issuer = TokenIssuer(ingestor.token_keys, lambda evidence: evidence.decode(), 1)

        def token(device: str):
            _, public = issuer.current_key()
            pending = request_tokens(public, 1)
            return pending.finalize(issuer.issue(device.encode(), pending.body))[0]

        for value in ("cold", "hiv"):  # two earlier periods, one token each
            if planter:
                sealed = seal_package(package(value), KEY.public_key(), token=token("planter"))
                assert ingestor.ingest_one(sealed).status == "accepted"
            clock.now += PERIOD
        for i in range(3):
            sealed = seal_package(package("flu"), KEY.public_key(), token=token(f"honest{i}"))
            assert ingestor.ingest_one(sealed).status == "accepted"
        released = SharedStore(db, KEY).frame("released")
        _, read = policy_batches(SharedStore(db, KEY), policy)
        return ([] if released.empty else sorted(released["disease"])), read.packages

    assert run(planter=False)[0] == []
    released, trained = run(planter=True)
    assert released == [] and trained == 0
