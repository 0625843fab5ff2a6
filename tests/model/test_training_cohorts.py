"""Retraining trains on a released k-anonymity cohort with at least k of its packages, or
not at all.

Found in review (4 December, helper-43): ``policy_batches`` re-validates each stored package
against today's policy and skipped the ones that fail one at a time, so after a policy change
(an optional field dropped, ``max_records`` lowered, ``min_k`` raised) it trained on 1 or 2
packages of a class released with 3. Its cap on records per package sampled across a
package's classes and could drop a class's only record, with no policy change at all. And
blocks withdrawn for good (a removed package's cohort) came back with ``which="quarantined"``
or ``"all"``. A model trained on fewer than k packages of a class answers for those few.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select

from dmt_model.server import ServerPolicy, SharedStore, ingest
from dmt_model.server.admin import remove_packages
from dmt_model.server.store import COHORTS, RECORDS, RELEASED_BLOCKS, release_rule
from dmt_model.server.training import _sample, policy_batches
from dmt_privacy import Field, Schema
from dmt_privacy.package import PrivacyReceipt, SharePackage, seal_package
from dmt_privacy.seal import generate_server_key

SCHEMA = Schema((
    Field("age", "numeric", role="quasi-identifier", bounds=(0, 100), grid=1.0),
    Field("x", "numeric", bounds=(0, 10)),
    Field("y", "numeric", bounds=(0, 10)),
))
KEY = generate_server_key()
K = 3
POLICY = ServerPolicy(SCHEMA, min_k=K, fields=("age", "x", "y"))


def _package(bands, *, with_x=True, k=K) -> SharePackage:
    """A package of ``[(age band's lower end, records)]``."""
    ages = [pd.Interval(float(low), float(low + 10), closed="left")
            for low, n in bands for _ in range(n)]
    columns = {"age": ages, "y": [1.0] * len(ages)}
    if with_x:
        columns["x"] = [2.0] * len(ages)
    return SharePackage.create(SCHEMA.schema_id, columns, PrivacyReceipt(k=k))


def _split_by_the_cap() -> list[SharePackage]:
    """3 packages of 2 records aged 60-70 and 1 aged 70-80 whose ids make a cap of 2 records,
    sampled across the package, keep the 70-80 record of some but not all of them."""
    while True:
        packages = [_package([(60, 2), (70, 1)]) for _ in range(3)]
        kept = [2 in _sample([0, 1, 2], 2, p.package_id) for p in packages]
        if 0 < sum(kept) < 3:
            return packages


@pytest.fixture()
def stored(tmp_path, monkeypatch):
    """Cohorts of 3 packages (k = 3) aged 30-40 (one package lacks the optional x), 40-50
    (one of 9 records), 50-60 (receipts claiming k = 3, 5, 5), 60-70 and 70-80 (split by the
    cap), and 80-90 (receipts claiming k = 5). Written as a store before 4 December wrote
    them: its release read no receipts, so 50-60 and 80-90 were released with 3 packages
    (today's keeps them in quarantine: ``test_release_rule``)."""
    from dmt_model.server import store as store_module

    monkeypatch.setattr(store_module, "_receipt_k", lambda text: 0)
    packages = ([_package([(30, 2)]), _package([(30, 2)]), _package([(30, 2)], with_x=False)]
                + [_package([(40, 2)]), _package([(40, 2)]), _package([(40, 9)])]
                + [_package([(50, 2)], k=3), _package([(50, 2)], k=5),
                   _package([(50, 2)], k=5)]
                + _split_by_the_cap()
                + [_package([(80, 2)], k=5) for _ in range(3)])
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    report = ingest([seal_package(p, KEY.public_key()) for p in packages], db, KEY, POLICY)
    assert len(report.accepted) == len(packages)
    store = SharedStore(db, KEY)
    assert sorted(len(members) for members in _cohorts(store, packages).values()) == [3] * 6
    monkeypatch.undo()
    return db, store, {p.package_id: p for p in packages}


def _band(age: pd.Interval) -> int:
    return int(age.left)


def _cohorts(store: SharedStore, packages) -> dict[int, set[str]]:
    """Each released cohort's age band → its packages."""
    packages = packages if isinstance(packages, dict) else {p.package_id: p for p in packages}
    query = (select(COHORTS.c.cohort_id, RECORDS.c.package_id, RECORDS.c.rows)
             .join(RELEASED_BLOCKS, RELEASED_BLOCKS.c.cohort_id == COHORTS.c.cohort_id)
             .join(RECORDS, RECORDS.c.id == RELEASED_BLOCKS.c.block_id))
    out: dict[int, set[str]] = defaultdict(set)
    with store.engine.connect() as conn:
        for _, package_id, rows in conn.execute(query):
            first = int(np.frombuffer(rows, dtype="<u4")[0])
            out[_band(packages[package_id].columns["age"][first])].add(package_id)
    return out


def _k_or_nothing(store, packages, policy, **options) -> dict[int, int]:
    """Each released cohort's band → how many of its packages the batches train on; asserts
    that is none, or at least today's release rule's k."""
    batches, _ = policy_batches(store, policy, **options)
    trained = {(b.package_id, _band(age)) for b in batches for age in b.records["age"]}
    counts = {}
    for band, members in _cohorts(store, packages).items():
        counts[band] = sum((member, band) in trained for member in members)
        assert counts[band] == 0 or counts[band] >= release_rule(policy).k, (band, counts)
    return counts


def test_the_same_policy_trains_on_every_cohort_its_receipts_allow(stored):
    """Cohorts 50-60 and 80-90 were released with 3 packages, but their members' receipts
    ask for k = 5 (a store written before its release read receipts): they are not trained
    on."""
    _, store, packages = stored
    assert _k_or_nothing(store, packages, POLICY) == {30: 3, 40: 3, 50: 0, 60: 3, 70: 3,
                                                      80: 0}


def test_a_min_k_lowered_since_the_release_weakens_no_cohort(tmp_path):
    """Found in review (helper-44): released at min_k = 5, then trained with min_k = 3 and 2
    of the 5 packages held out, 3 packages of a class whose receipts ask for 5 were used."""
    strict = dataclasses.replace(POLICY, min_k=5)
    five = [_package([(30, 2)], k=5) for _ in range(5)]
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    ingest([seal_package(p, KEY.public_key()) for p in five], db, KEY, strict)
    store = SharedStore(db, KEY)
    assert store.frame("released")["package_id"].nunique() == 5
    lenient = dataclasses.replace(strict, min_k=3)
    assert _k_or_nothing(store, five, lenient) == {30: 5}
    assert _k_or_nothing(store, five, lenient,
                         exclude={five[0].package_id, five[1].package_id}) == {30: 0}


@pytest.mark.parametrize(("change", "left_out"), [
    ({"fields": ("age", "y")}, {30, 40, 50, 60, 70, 80}),  # the x carriers refused; 30's third
    ({"max_records": 5}, {40, 50, 80}),  # the 9-record package unreadable; 50, 80 as ever
    ({"min_k": 5}, {30, 40, 50, 60, 70, 80}),              # receipts of k=3; cohorts of 3 < 5
])
def test_after_a_policy_change_a_cohort_is_trained_on_with_k_packages_or_not_at_all(
        stored, change, left_out):
    _, store, packages = stored
    counts = _k_or_nothing(store, packages, dataclasses.replace(POLICY, **change))
    assert {band for band, n in counts.items() if n == 0} == left_out


def test_the_cap_on_records_per_package_keeps_every_class_of_the_package(stored):
    _, store, packages = stored
    counts = _k_or_nothing(store, packages,
                               dataclasses.replace(POLICY, max_training_records=2))
    assert counts[70] == 3 and counts[60] == 3
    batches, read = policy_batches(store, dataclasses.replace(POLICY, max_training_records=2))
    assert all(len(b.records) <= 2 for b in batches) and read.capped_records > 0


def test_blocks_withdrawn_for_good_are_never_read_for_training(stored):
    db, store, packages = stored
    victim = sorted(_cohorts(store, packages)[30])[0]
    remove_packages(db, ids=[victim])
    withdrawn = set(store.frame("withdrawn")["package_id"])
    assert len(withdrawn) == 2
    for which in ("released", "quarantined", "all"):
        batches, _ = policy_batches(store, POLICY, which)
        assert not {b.package_id for b in batches} & withdrawn, which


def test_packages_held_out_to_check_a_version_take_their_cohorts_out_of_training(stored):
    """``run_loop`` keeps held-out devices' packages out of retraining to check the new
    version on them; dropping them from the batches afterwards trained on the rest of their
    cohorts: 2 packages of a class released with 3. A cohort with k packages left is kept."""
    _, store, packages = stored
    cohorts = _cohorts(store, packages)
    held = {sorted(cohorts[30])[0], sorted(cohorts[60])[0]}  # 60's also holds a 70-80 record
    counts = _k_or_nothing(store, packages, POLICY, exclude=held)
    assert counts == {30: 0, 40: 3, 50: 0, 60: 0, 70: 0, 80: 0}
    batches, read = policy_batches(store, POLICY, exclude=held)
    assert read.cohorts_left_out == 5 and not held & {b.package_id for b in batches}
    assert read.skipped == {"held out": 2, "cohort": 10}
    lenient = dataclasses.replace(POLICY, min_k=2)  # receipts of 30-50 and 60-80 ask for 3
    assert _k_or_nothing(store, packages, lenient, exclude=held) == {
        30: 0, 40: 3, 50: 0, 60: 0, 70: 0, 80: 0}


def test_training_judges_l_on_one_period_as_the_release_does():
    """helper-91: the training half of the one-period rule (helper-90) had no test of its
    own, since the release already refuses such a cohort. A cohort released with a
    planter's 'cold' and 'hiv' of two earlier periods and three 'flu' devices of a third
    is 3-diverse only through the planter; training leaves it out. A package of no period
    (stored before tokens were required) counts for no period: fail closed."""
    from types import SimpleNamespace

    from dmt_model.server.training import _not_diverse
    from dmt_privacy.anonymity import ReleaseRule

    rule = ReleaseRule(k=3, sensitive="disease", l=3)

    def candidate(package_id, value):
        package = SimpleNamespace(package_id=package_id, columns={"disease": [value]})
        return package, None, ["c1"], [0]

    rows = [("p1", "cold", "t1", 1), ("p2", "hiv", "t2", 2), ("a", "flu", "ta", 3),
            ("d", "flu", "td", 3), ("e", "flu", "te", 3)]
    candidates = [candidate(p, v) for p, v, _, _ in rows]
    token_of = {p: SimpleNamespace(token_id=t, epoch=e) for p, _, t, e in rows}
    assert _not_diverse(rule, candidates, token_of, tokens=True) == {"c1"}
    assert _not_diverse(rule, candidates, token_of, tokens=False) == set()
    honest = [("x", "flu", "tx", 3), ("y", "cold", "ty", 3), ("z", "hiv", "tz", 3)]
    token_of = {p: SimpleNamespace(token_id=t, epoch=e) for p, _, t, e in honest}
    assert _not_diverse(rule, [candidate(p, v) for p, v, _, _ in honest], token_of,
                        tokens=True) == set()
    assert _not_diverse(rule, [candidate(p, v) for p, v, _, _ in honest], {},
                        tokens=True) == {"c1"}
