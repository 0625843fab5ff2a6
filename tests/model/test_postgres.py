"""The store and ingestion on PostgreSQL, through the same SQLAlchemy layer as SQLite.

`make test` starts a throwaway PostgreSQL cluster (Debian's packages) on 127.0.0.1 and
passes its URL as DMT_TEST_POSTGRES_URL; each test gets a fresh database. The same
properties as tests/model/test_ingest.py (which runs on SQLite), asserted through
SQLAlchemy so both stores are held to them: parametrized tests run on both.
"""

from __future__ import annotations

import pandas as pd
import pytest
from sqlalchemy import text
from test_ingest import KEY, POLICY, _bad_packages, package

from dmt_model.server import SharedStore, connect, ingest
from dmt_privacy.anonymity import release_classes
from dmt_privacy.package import seal_package
from dmt_privacy.seal import generate_server_key


def table_counts(url: str) -> dict[str, int]:
    engine = connect(url)
    try:
        with engine.connect() as conn:
            return {t: conn.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar_one()
                    for t in ("packages", "records", "classes", "data_keys")}
    finally:
        engine.dispose()


def test_connect_uses_psycopg3_and_pre_ping(postgres_url):
    engine = connect(postgres_url)
    assert engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg"
    assert engine.pool._pre_ping
    engine.dispose()


def test_replays_rejected_and_double_ingestion_changes_nothing(db_url):
    sealed = [seal_package(package(i), KEY.public_key()) for i in range(20)]
    first = ingest(sealed, db_url, KEY, POLICY)
    assert len(first.accepted) == 20 and not first.rejected
    before = table_counts(db_url)
    frame_before = SharedStore(db_url, KEY).frame("all")
    second = ingest(sealed + sealed[:1], db_url, KEY, POLICY)
    assert not second.accepted and len(second.replays) == 21
    assert table_counts(db_url) == before
    pd.testing.assert_frame_equal(SharedStore(db_url, KEY).frame("all"), frame_before)


def test_rejected_packages_leave_no_rows(db_url):
    ingest([seal_package(package(100), KEY.public_key())], db_url, KEY, POLICY)
    before = table_counts(db_url)
    sealed, kinds = _bad_packages()
    report = ingest(sealed, db_url, KEY, POLICY)
    assert not report.accepted
    assert [o.reason.split(":")[0] for o in report.rejected] == kinds
    assert table_counts(db_url) == before


def test_a_write_failing_midway_leaves_nothing(db_url, monkeypatch):
    """The class counters fail after the package and its records were inserted (on
    PostgreSQL, queued in the write's pipeline): nothing of the package stays."""
    from dmt_model.server import write

    engine = connect(db_url)
    ingest([seal_package(package(0), KEY.public_key())], engine, KEY, POLICY)
    before = table_counts(db_url)

    def fail_on_classes(conn, counts):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(write, "_add_to_classes", fail_on_classes)
    with pytest.raises(RuntimeError, match="disk on fire"):
        ingest([seal_package(package(1), KEY.public_key())], engine, KEY, POLICY)
    monkeypatch.undo()
    engine.dispose()
    assert table_counts(db_url) == before


def test_records_encrypted_at_rest(postgres_url):
    packages = [package(i) for i in range(10)]
    ingest([seal_package(p, KEY.public_key()) for p in packages], postgres_url, KEY, POLICY)
    engine = connect(postgres_url)
    with engine.connect() as conn:
        raw = b"".join(bytes(v or b"") for table, column in (
            ("packages", "payload"), ("packages", "receipt"), ("records", "rows"),
            ("records", "class_key"), ("classes", "class_key"), ("data_keys", "wrapped"))
            for v in conn.execute(text(f"SELECT {column} FROM {table}")).scalars()
            for v in [v.encode() if isinstance(v, str) else v])
    engine.dispose()
    assert raw
    for p in packages:
        for note in p.columns["note"]:
            assert note.encode() not in raw
    frame = SharedStore(postgres_url, KEY).frame("all")
    assert sorted(frame["note"]) == sorted(n for p in packages for n in p.columns["note"])
    with pytest.raises(Exception, match="cannot be unwrapped"):
        SharedStore(postgres_url, generate_server_key()).frame("all")


def test_quarantine_matches_release_classes(db_url):
    store = SharedStore(db_url, KEY)
    packs = [package(0, classes=[0, 1, 1, 1]), package(1, classes=[0, 1, 1]),
             package(2, classes=[2]), package(3, classes=[0])]
    report = ingest([seal_package(p, KEY.public_key()) for p in packs[:2]], db_url, KEY, POLICY)
    assert report.counts["classes_released"] == 0 and report.counts["records_quarantined"] == 7
    report = ingest([seal_package(p, KEY.public_key()) for p in packs[2:]], db_url, KEY, POLICY)
    assert report.released_classes == 1
    released, quarantined = store.frame("released"), store.frame("quarantined")
    assert len(released) == 3 and len(quarantined) == 6
    ref_released, _ = release_classes(store.frame("all"), ["age", "zip"], POLICY.min_k,
                                      package_column="package_id")
    assert sorted(ref_released["note"]) == sorted(released["note"])
