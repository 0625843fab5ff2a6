"""Races between the store's writers and readers (helper-62's review): an operator's release,
the group write, a removal, training's reads and a fresh store's data key. Each test makes the
interleaving happen, on SQLite and on PostgreSQL."""

from __future__ import annotations

import threading

import pandas as pd
from sqlalchemy import event, func, select

from dmt_model.server import ServerPolicy, SharedStore, ingest
from dmt_model.server import store as store_module
from dmt_model.server import training as training_module
from dmt_model.server import write as write_module
from dmt_model.server.admin import remove_packages
from dmt_model.server.ingest import Ingestor
from dmt_model.server.store import (
    CLASSES,
    DATA_KEYS,
    RELEASED_BLOCKS,
    WITHDRAWN_BLOCKS,
    release_rule,
)
from dmt_model.server.training import policy_batches
from dmt_privacy import Field, Schema
from dmt_privacy.package import PrivacyReceipt, SharePackage, seal_package
from dmt_privacy.seal import generate_server_key

SCHEMA = Schema((
    Field("age", "numeric", role="quasi-identifier", bounds=(0, 100), grid=1.0),
    Field("x", "numeric", bounds=(0, 10)),
    Field("y", "numeric", bounds=(0, 10)),
))
KEY = generate_server_key()
POLICY = ServerPolicy(SCHEMA, min_k=3, fields=("age", "x", "y"))


def _package(n: int = 2) -> SharePackage:
    ages = [pd.Interval(30.0, 40.0, closed="left")] * n  # one class
    return SharePackage.create(SCHEMA.schema_id, {"age": ages, "x": [2.0] * n, "y": [1.0] * n},
                               PrivacyReceipt(k=3))


def _sealed(*packages: SharePackage) -> list[bytes]:
    return [seal_package(p, KEY.public_key()) for p in packages]


def _released_and_withdrawn(store: SharedStore) -> tuple[set[int], set[int]]:
    with store.engine.connect() as conn:
        return (set(conn.execute(select(RELEASED_BLOCKS.c.block_id)).scalars()),
                set(conn.execute(select(WITHDRAWN_BLOCKS.c.block_id)).scalars()))


def test_an_operator_release_waits_for_a_write_and_never_releases_withdrawn_blocks(
        db_url, monkeypatch):
    """The operator's release (``SharedStore.release``, for a database from before cohorts)
    read three pending blocks; meanwhile the service released them with a newcomer and an
    operator removed the newcomer, withdrawing that cohort; the release then put the three
    back into the release: two snapshots of the released data differed by the newcomer's
    records alone. The release now locks the class first, so the write and the removal wait
    for it (here, 1 s at most before the release goes on without them)."""
    monkeypatch.setattr(write_module, "released_classes", lambda *a, **k: [])
    old = [_package() for _ in range(3)]
    assert len(ingest(_sealed(*old), db_url, KEY, POLICY).accepted) == 3  # pending, unjudged
    monkeypatch.undo()
    store = SharedStore(db_url, KEY)
    newcomer = _package()
    errors: list[BaseException] = []

    def service_then_operator() -> None:
        try:
            assert ingest(_sealed(newcomer), db_url, KEY, POLICY).accepted
            remove_packages(db_url, ids=[newcomer.package_id])
        except BaseException as exc:
            errors.append(exc)

    racer = threading.Thread(target=service_then_operator)
    real_admitted = store_module._admitted

    def after_the_read(*args, **kwargs):
        if not racer.is_alive() and racer.ident is None:  # once, between read and write
            racer.start()
            racer.join(timeout=1.0)  # done at once unless the release's lock holds it
        return real_admitted(*args, **kwargs)

    monkeypatch.setattr(store_module, "_admitted", after_the_read)
    store.release(release_rule(POLICY))
    monkeypatch.undo()
    racer.join(timeout=60)
    assert not racer.is_alive() and not errors, errors
    released, withdrawn = _released_and_withdrawn(store)
    assert not released & withdrawn, "a withdrawn block was released again"
    assert set(store.frame("released")["package_id"]) == {p.package_id for p in old}


def test_training_reads_blocks_and_packages_from_one_snapshot(db_url, monkeypatch):
    """Training read the released blocks, then their packages: a removal committing in
    between left it the cohort minus the removed package, a set that was never released
    (and is withdrawn for good), which it trained on."""
    packages = [_package() for _ in range(4)]  # one cohort of 4 (k = 3)
    assert len(ingest(_sealed(*packages), db_url, KEY, POLICY).accepted) == 4
    store = SharedStore(db_url, KEY)
    assert store.counts()["cohorts_released"] == 1
    real_rows = training_module._block_rows

    def then_removed(*args, **kwargs):
        rows = real_rows(*args, **kwargs)
        remove_packages(db_url, ids=[packages[0].package_id])  # commits in between
        return rows

    monkeypatch.setattr(training_module, "_block_rows", then_removed)
    batches, _ = policy_batches(store, POLICY)
    trained = {b.package_id for b in batches}
    # the cohort as it was released when training began, whole
    assert trained == {p.package_id for p in packages}
    assert set(store.frame("withdrawn")["package_id"]) == {p.package_id for p in packages[1:]}
    assert store.frame("released").empty


def test_two_processes_on_a_fresh_store_make_one_data_key(db_url):
    """Two ingestors (two processes of `dmt ingest`, say) on a fresh store each made a data
    key, so each named the same class otherwise: 2 + 2 packages (k = 3) released nothing,
    and after a restart one key's pending blocks waited for good."""
    first, second = Ingestor(db_url, KEY, POLICY), Ingestor(db_url, KEY, POLICY)
    both_read = threading.Barrier(2, timeout=1.0)
    for ingestor in (first, second):
        @event.listens_for(ingestor.engine, "before_cursor_execute")
        def meet(conn, cursor, statement, *args):  # both have found no key
            if statement.startswith("INSERT INTO data_keys"):
                try:
                    both_read.wait()
                except threading.BrokenBarrierError:  # the other waits for this one's lock
                    pass
    threads = [threading.Thread(target=i.data_key) for i in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    with first.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(DATA_KEYS)).scalar() == 1
    assert first.data_key().key_id == second.data_key().key_id
    for ingestor in (first, second):
        for envelope in _sealed(_package(), _package()):
            assert ingestor.ingest_one(envelope).status == "accepted"
    counts = SharedStore(db_url, KEY).counts()  # the third package released the class
    assert counts["cohorts_released"] == 1 and counts["records_released"] == 6


def test_a_package_removed_twice_at_once_is_counted_out_once(db_url, monkeypatch):
    """Two removals of one package: the second read the package's blocks before the first
    committed, and took its records off the class counters a second time."""
    from dmt_model.server import admin as admin_module

    packages = [_package() for _ in range(4)]
    ingest(_sealed(*packages), db_url, KEY, POLICY)
    victim = packages[0].package_id
    real_blocks = admin_module._package_blocks
    raced: list[int] = []

    def the_other_removal_first(conn, package_id):
        blocks = real_blocks(conn, package_id)
        if not raced:
            raced.append(1)
            remove_packages(db_url, ids=[victim])  # commits before this one goes on
        return blocks

    monkeypatch.setattr(admin_module, "_package_blocks", the_other_removal_first)
    assert remove_packages(db_url, ids=[victim]).removed == []
    store = SharedStore(db_url, KEY)
    with store.engine.connect() as conn:
        assert conn.execute(select(CLASSES.c.n_packages, CLASSES.c.n_records)).all() == [(3, 6)]


def test_frame_reads_one_snapshot_on_an_engine_that_begins_its_own_transactions(tmp_path):
    """SQLAlchemy's recipe for SQLite has the engine emit BEGIN itself; the snapshot's own
    BEGIN then failed ("cannot start a transaction within a transaction"), and so did
    ``frame()`` and training on such an engine (helper-63)."""
    from sqlalchemy import create_engine

    from dmt_model.server.store import Base

    engine = create_engine(f"sqlite:///{tmp_path / 'own.db'}")

    @event.listens_for(engine, "connect")
    def no_driver_transactions(dbapi_connection, _record):
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def begin(conn):
        conn.exec_driver_sql("BEGIN")

    Base.metadata.create_all(engine)
    packages = [_package() for _ in range(3)]
    assert len(ingest(_sealed(*packages), engine, KEY, POLICY).accepted) == 3
    store = SharedStore(engine, KEY)
    assert set(store.frame("released")["package_id"]) == {p.package_id for p in packages}
    batches, _ = policy_batches(store, POLICY)
    assert {b.package_id for b in batches} == {p.package_id for p in packages}
