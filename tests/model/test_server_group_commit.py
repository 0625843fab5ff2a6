"""Group commit (issue 18): packages waiting together are written in one transaction, each
acknowledged only after that commit, each stored once, a failing one alone; the statements of
a group do not grow with its size; `dmt serve --workers N` keeps the single process's limits."""

from __future__ import annotations

import dataclasses
import http.client
import sys
import threading
import time

import pytest
from sqlalchemy import event, func, select
from test_ingest import KEY, POLICY, package, wait_until_a_session_waits_on_a_lock

from dmt_model.server import SharedStore
from dmt_model.server.ingest import DatabaseUnavailable, GroupCommit, PreparedIngest
from dmt_model.server.service import PackageIngestor
from dmt_model.server.store import CLASSES
from dmt_model.server.write import Written, write_prepared
from dmt_privacy.package import seal_package


def _ready(ingestor, *packages) -> list[PreparedIngest]:
    out = []
    for p in packages:
        ready = ingestor.check(seal_package(p, KEY.public_key()))
        assert isinstance(ready, PreparedIngest), ready
        out.append(ready)
    return out


def _write_attempts(monkeypatch) -> list[BaseException | None]:
    """Each attempt of the ingestor's group write from now on: the error it raised, or None."""
    ingest_module = sys.modules["dmt_model.server.ingest"]  # (the package exports ingest())
    attempts: list[BaseException | None] = []
    real_write = ingest_module.write_prepared

    def counted(*args, **kwargs):
        try:
            written = real_write(*args, **kwargs)
        except BaseException as exc:
            attempts.append(exc)
            raise
        attempts.append(None)
        return written

    monkeypatch.setattr(ingest_module, "write_prepared", counted)
    return attempts


def _class_totals(engine) -> tuple[int, int]:
    with engine.connect() as conn:
        return tuple(conn.execute(select(func.sum(CLASSES.c.n_records),
                                         func.count())).one())


def test_a_group_stores_each_package_once_and_leaves_out_the_rest(db_url):
    """Fresh packages, a stored one, one id twice and two spending one token, in one group."""
    ingestor = PackageIngestor(db_url, KEY, POLICY)
    stored_before, *fresh = _ready(ingestor, *(package(i) for i in range(6)))
    assert ingestor.finish(stored_before, ingestor.submit(stored_before).result()).status \
        == "accepted"
    token = ("ab" * 32, 0)
    with_token = [dataclasses.replace(r.prepared, token=token) for r in fresh[3:5]]
    group = [fresh[0].prepared, stored_before.prepared, fresh[1].prepared, fresh[1].prepared,
             fresh[2].prepared, *with_token]
    with ingestor.engine.begin() as conn:
        written = write_prepared(conn, group, POLICY, ingestor.data_key())
    assert [w.status for w in written[:5]] == ["stored", "taken", "stored", "taken", "stored"]
    assert sorted(w.status for w in written[5:]) == ["stored", "token_spent"]  # one spend
    counts = SharedStore(ingestor.engine, KEY).counts()
    assert counts["packages"] == 5 and counts["records"] == 15
    assert _class_totals(ingestor.engine)[0] == 15  # the counters add up to the records
    replay = ingestor.finish(fresh[1], Written("taken"))
    assert replay.replay and replay.status == "rejected"


def _record_statements(engine, seen: list[tuple[str, bool]]) -> None:
    """Every statement run on ``engine`` from now, with whether it was pipelined: through
    SQLAlchemy's events, and on PostgreSQL through psycopg's own cursors too (the group write
    runs its statements there, in pipeline mode)."""
    event.listen(engine, "before_cursor_execute",
                 lambda conn, cursor, statement, *args: seen.append((statement, False)))
    if engine.dialect.name != "postgresql":
        return
    import psycopg
    from psycopg import pq

    class Recording(psycopg.Cursor):
        def execute(self, query, params=None, **kwargs):
            pipelined = self.connection.pgconn.pipeline_status != pq.PipelineStatus.OFF
            seen.append((str(query), pipelined))
            return super().execute(query, params, **kwargs)

    def on_checkout(dbapi_connection, record, proxy):
        dbapi_connection.cursor_factory = Recording

    event.listen(engine, "checkout", on_checkout)


def test_statements_per_group_do_not_grow_with_its_size(db_url):
    """One statement sequence per group: 1 or 40 packages, the same statements, on both
    stores. The removed-id check is a statement of its own after the packages' insert:
    folded into that insert it missed a removal committed while the insert waited
    (test_a_package_sent_again_while_its_removal_commits_is_not_stored_again). On
    PostgreSQL every statement of the group is pipelined (sent without waiting for the
    answer of the one before)."""
    ingestor = PackageIngestor(db_url, KEY, POLICY)
    ingestor.data_key()
    kinds = {"WITH blocks": "records, pending",
             "SELECT package_id FROM removed_packages": "removed ids",
             "INSERT INTO packages": "packages", "INSERT INTO spent_tokens": "tokens",
             "DELETE FROM packages": "delete packages", "INSERT INTO records": "records",
             "INSERT INTO pending_blocks": "pending", "INSERT INTO classes": "classes",
             "SELECT p.block_id": "pending of classes", "WITH c AS": "release"}
    seen: list[tuple[str, bool]] = []
    _record_statements(ingestor.engine, seen)
    per_size: dict[int, list[list[str]]] = {}
    pipelined: set[bool] = set()
    for size, first in ((1, 0), (40, 100), (1, 200)):
        group = [r.prepared for r in _ready(ingestor, *(package(first + i)
                                                        for i in range(size)))]
        seen.clear()
        with ingestor.engine.begin() as conn:
            write_prepared(conn, group, POLICY, ingestor.data_key())
        found = [(kind, p) for statement, p in seen
                 for start, kind in kinds.items() if statement.startswith(start)]
        per_size.setdefault(size, []).append([kind for kind, _ in found])
        pipelined.update(p for _, p in found)
    # (then the release of classes reads the pending blocks of the classes written, and
    # writes what the data make due: 1 package releases nothing, 40 do)
    if db_url.startswith("postgresql"):
        expected = ["packages", "removed ids", "records, pending", "classes",
                    "pending of classes"]
        assert pipelined == {True}
    else:
        expected = ["packages", "removed ids", "records", "pending", "classes"]
    assert per_size[1][0][:len(expected)] == per_size[1][1][:len(expected)] == expected
    assert per_size[40][0][:len(expected)] == expected


def test_concurrent_packages_share_transactions_each_acknowledged_after_commit(db_url):
    ingestor = PackageIngestor(db_url, KEY, POLICY)
    ready = _ready(ingestor, *(package(i) for i in range(60)))
    gate = threading.Event()
    commits = []

    def hold_commit(conn):
        commits.append(time.monotonic())
        gate.wait(timeout=30)

    event.listen(ingestor.engine, "commit", hold_commit)
    futures = [ingestor.submit(r) for r in ready]
    deadline = time.monotonic() + 10
    while not commits and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    assert commits and not any(f.done() for f in futures)  # nothing acknowledged before commit
    gate.set()
    outcomes = [ingestor.finish(r, f.result(timeout=60))
                for r, f in zip(ready, futures, strict=True)]
    event.remove(ingestor.engine, "commit", hold_commit)
    assert all(o.status == "accepted" for o in outcomes)
    assert ingestor.writer.packages == 60 and ingestor.writer.groups < 60
    assert SharedStore(ingestor.engine, KEY).counts()["packages"] == 60


def test_the_server_s_sqlite_flushes_its_log_at_every_commit(tmp_path):
    """Acknowledged means durable: a device marks its records shared when the server says
    accepted, and never sends them again. The server's SQLite flushes its write-ahead log at
    every commit (``synchronous=FULL``); under NORMAL a power loss could drop the last groups
    the devices were told were stored. PostgreSQL flushes at commit by its own default."""
    from dmt_model.server.store import connect

    engine = connect(str(tmp_path / "server.db"))
    with engine.connect() as first, engine.connect() as second:  # each of the pool's
        for conn in (first, second):
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    engine.dispose()


def test_a_callers_sqlite_engine_gets_the_servers_settings(tmp_path):
    """An Engine passed in (``SharedStore(engine)``, ``ingest(..., engine)``, the admin
    functions) is the caller's, but the store's promises hold on it too: it skipped
    ``store.connect``'s settings, so its writes ran without enforced foreign keys, in
    SQLite's rollback journal (writers blocking readers) and with no busy timeout
    (helper-78). A connection the pool held before the engine was handed over gets them
    too, at its next checkout."""
    from sqlalchemy import create_engine

    from dmt_model.server.admin import list_packages
    from dmt_model.server.store import Base

    for opened in (lambda e: SharedStore(e, KEY), list_packages):
        engine = create_engine(f"sqlite:///{tmp_path / f'own{id(opened)}.db'}")
        Base.metadata.create_all(engine)
        with engine.connect() as conn:  # pooled before the store sees the engine
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 0
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "delete"
        opened(engine)
        with engine.connect() as first, engine.connect() as second:
            for conn in (first, second):
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
                assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2
                assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
                assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        engine.dispose()


def test_a_callers_engine_on_a_busy_file_still_reads_and_switches_to_wal_later(tmp_path,
                                                                               caplog):
    """The switch to WAL needs the file to itself. Another connection's open transaction
    made the caller's read fail ("database is locked": at once behind a writer, after 5 s
    behind a reader), where it had worked before the store set anything (helper-79): now
    the read goes on in the rollback journal, the store says so once, and the next
    checkout after the transaction switches."""
    import logging
    import sqlite3

    from sqlalchemy import create_engine

    from dmt_model.server.admin import list_packages
    from dmt_model.server.store import Base

    path = tmp_path / "busy.db"
    engine = create_engine(f"sqlite:///{path}")
    Base.metadata.create_all(engine)
    engine.dispose()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # a writer in the middle of its transaction
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="dmt.server.store"):
        assert list_packages(engine) == []
    assert time.monotonic() - started < 2
    assert "stays in its rollback journal" in caplog.text
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "delete"
    other.execute("COMMIT")
    other.close()
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()


def test_a_package_that_fails_the_write_takes_only_itself_down():
    groups = []
    busy, go_on = threading.Event(), threading.Event()

    def write(group):
        groups.append(list(group))
        if group == ["first"]:  # while this one writes, the next four queue up together
            busy.set()
            go_on.wait(timeout=10)
        if "bad" in group:
            raise RuntimeError("disk on fire")
        return [Written("stored") for _ in group]

    writer = GroupCommit(write)
    first = writer.submit("first")
    assert busy.wait(timeout=10)
    futures = [writer.submit(p) for p in ["a", "b", "bad", "c"]]
    go_on.set()
    results = []
    for f in [first, *futures]:
        try:
            results.append(f.result(timeout=10).status)
        except RuntimeError as exc:
            results.append(str(exc))
    assert results == ["stored", "stored", "stored", "disk on fire", "stored"]
    assert groups[1] == ["a", "b", "bad", "c"]  # one group, then one by one
    assert groups[2:] == [["a"], ["b"], ["bad"], ["c"]]


def test_an_unavailable_database_fails_the_group_at_once():
    calls = []

    def write(group):
        calls.append(len(group))
        raise DatabaseUnavailable("down")

    writer = GroupCommit(write)
    future = writer.submit("a")
    with pytest.raises(DatabaseUnavailable):
        future.result(timeout=10)
    assert calls == [1]


# --- dmt serve --workers ---------------------------------------------------------------------
@pytest.mark.slow
def test_workers_keep_limits_timeouts_and_exactly_once(tmp_path, server_load):
    from dmt_privacy.seal import ENVELOPE_OVERHEAD, save_private_key

    save_private_key(KEY, tmp_path / "server.key")
    (tmp_path / "policy.json").write_text(dataclasses.replace(  # packages fit the 64 KiB body
        server_load.POLICY, max_bytes=65536 - ENVELOPE_OVERHEAD).to_json())
    db_url = f"sqlite:///{tmp_path / 's.db'}"
    service = server_load.ServiceProcess(
        db_url, tmp_path / "server.key", tmp_path / "policy.json",
        extra=["--workers", "2", "--max-body-bytes", "65536", "--body-timeout", "1"]).start()
    try:
        port = service.port
        header = (b"POST /v1/packages HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Type: application/octet-stream\r\n")
        from test_service import _raw

        assert _raw(port, header + b"Content-Length: 104857600\r\n\r\n" + b"\0" * 65536) == 413
        assert _raw(port, header + b"Content-Length: 1000\r\n\r\n" + b"\0" * 999,
                    pace=0.1, chunks=40) == 408
        assert _raw(port, header + b"X-Padding: " + b"a" * 400, pace=0.1, chunks=40) == 0
        envelopes = server_load.make_envelopes(300, KEY.public_key(), seed=3)
        result = server_load.run_load(service.url, envelopes, clients=10, deadline=120)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/v1/packages", body=envelopes[0][1])
        assert conn.getresponse().status == 409  # the other worker knows it too
        conn.close()
    finally:
        service.stop()
    checks = server_load.check_exactly_once(result, server_load.stored(db_url), envelopes, 3)
    assert all(checks.values()), checks
    assert result.statuses == {"201": 300}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT workers: Linux")
def test_the_load_client_starts_when_every_worker_listens(tmp_path, server_load):
    # The load client began as soon as one worker answered /v1/health. With SO_REUSEPORT
    # each worker listens on a socket of its own, so the kept-alive clients all went to the
    # workers listening at that moment: one of two took nearly all of them, and two workers
    # used one core between them (SQLite 1,095 packages/s against 1,206 with one worker).
    from dmt_privacy.seal import save_private_key

    save_private_key(KEY, tmp_path / "server.key")
    (tmp_path / "policy.json").write_text(server_load.POLICY.to_json())
    service = server_load.ServiceProcess(
        f"sqlite:///{tmp_path / 's.db'}", tmp_path / "server.key", tmp_path / "policy.json",
        extra=["--workers", "3"]).start()
    try:
        assert server_load.listening_sockets(service.port) == 3
    finally:
        service.stop()


def test_the_ratio_at_full_use_explains_the_measured_one(server_load):
    """server_load reports what 1 -> 2 workers would be with both flat out: one worker at
    most one core (its GIL), two the machine shared with the database and the clients. With
    the machine use of each, it gives back the measured ratio."""
    def run(store, workers, rate, service, database, client, busy):
        return {"scenario": f"{store} steady, {workers} worker(s)", "workers": workers,
                "packages_per_second": rate,
                "cpu_ms_per_package": {"service": service, "database": database,
                                       "load_generator": client},
                "cpu_cores": {"machine": 2, "machine_busy": busy,
                              "service": round(rate * service / 1000, 2)}}

    runs = [run("postgresql", 1, 2000, 0.35, 0.12, 0.03, 1.0),
            run("postgresql", 2, 2600, 0.42, 0.17, 0.03, 2600 * 0.62 / 1000),
            run("sqlite", 1, 2500, 0.38, None, 0.03, 1.0),
            run("sqlite", 2, 3500, 0.43, None, 0.03, 3500 * 0.46 / 1000)]
    full = server_load._full_use(runs)
    measured = server_load._scaling(runs)
    assert full["postgresql"] == {"ratio": 1.13, "one_worker_core_use": 0.7,
                                  "two_workers_machine_use": 0.81}
    assert full["sqlite"]["ratio"] == 1.65  # the database's CPU is the worker's own
    for store, f in full.items():
        explained = f["ratio"] * f["two_workers_machine_use"] / f["one_worker_core_use"]
        assert explained == pytest.approx(measured[store], abs=0.02), store


def test_the_batches_each_worker_took_are_read_from_its_log(server_load):
    """server_load reports how many batches the workers took, from the line each logs when it
    stops: two workers took twice the batches of one, half as full, and each batch costs a
    fixed share of CPU. A log without the line (a killed process) reports none."""
    log = ("2026-12-05 14:12:17,232 dmt serve: ingested 4902 packages in 425 batches (11.5 a "
           "batch)\nsomething else\n"
           "2026-12-05 14:12:17,251 dmt serve: ingested 5098 packages in 370 batches (13.8 a "
           "batch)\n")
    assert server_load.batches_logged(log) == {
        "count": 795, "packages_per_batch": 12.6,
        "packages_per_batch_by_process": [11.5, 13.8]}
    assert server_load.batches_logged("dmt serve: listening\n") is None


def test_a_peer_checkout_s_service_runs_that_checkout_s_code(tmp_path, server_load):
    """server_load --peer measures another checkout's `dmt serve` against this one's. Its
    children ran ``python -c`` from this checkout, and ``-c`` puts the working folder first on
    sys.path: the "peer" imported this checkout's code, and old and new code measured the
    same. A stand-in checkout's package must be the one imported."""
    (tmp_path / "dmt_model").mkdir()
    (tmp_path / "dmt_model" / "__init__.py").write_text("")
    assert server_load.imported_from(tmp_path) == (tmp_path / "dmt_model" / "__init__.py"
                                                   ).resolve()
    assert server_load.imported_from(server_load.ROOT).is_relative_to(server_load.ROOT)


def test_a_service_process_starts_in_its_checkout(tmp_path, server_load, monkeypatch):
    """ServiceProcess starts `dmt serve` with the options imported_from checks."""
    seen = {}

    class Exited:
        returncode = 1

        def __init__(self, argv, **options):
            seen.update(options)

        def poll(self):
            return 1

    monkeypatch.setattr(server_load.subprocess, "Popen", Exited)
    service = server_load.ServiceProcess("sqlite://", tmp_path / "k", tmp_path / "p",
                                         root=tmp_path)
    with pytest.raises(RuntimeError, match="exited"):
        service.start(timeout=5)
    assert seen["cwd"] == tmp_path and seen["env"]["PYTHONPATH"] == str(tmp_path)


def test_pending_blocks_are_the_unreleased_blocks(db_url):
    """The release reads pending_blocks: it stays records less released_blocks (and less
    the blocks a removal withdrew) through ingestion and removal, and a database from
    before it is indexed on connect."""
    from sqlalchemy import delete

    from dmt_model.server import connect, ingest
    from dmt_model.server.admin import remove_packages
    from dmt_model.server.store import (
        PENDING_BLOCKS,
        RECORDS,
        RELEASED_BLOCKS,
        WITHDRAWN_BLOCKS,
    )

    def check(engine) -> int:
        with engine.connect() as conn:
            pending = set(conn.execute(select(PENDING_BLOCKS.c.block_id)).scalars())
            blocks = set(conn.execute(select(RECORDS.c.id)).scalars())
            released = set(conn.execute(select(RELEASED_BLOCKS.c.block_id)).scalars())
            withdrawn = set(conn.execute(select(WITHDRAWN_BLOCKS.c.block_id)).scalars())
        assert pending == blocks - released - withdrawn
        return len(pending)

    engine = connect(db_url)
    packages = [package(i, classes=[i % 3] * 3) for i in range(11)]
    # one package a transaction (ingest groups them): the 4th of a class finds a cohort of 3
    report = ingest([seal_package(p, KEY.public_key()) for p in packages], engine, KEY, POLICY,
                    max_group=1)
    assert report.released_classes == 3 and check(engine) == 2  # the 4th of classes 0 and 1
    # takes class 0's cohort out of the release, its two other packages withdrawn for good
    assert remove_packages(engine, ids=[packages[0].package_id]).withdrawn_records == 6
    assert check(engine) == 2
    with engine.begin() as conn:  # as a database from before pending_blocks
        conn.execute(delete(PENDING_BLOCKS))
    engine.dispose()
    engine = connect(db_url)
    assert check(engine) == 2
    more = ingest([seal_package(package(100 + i, classes=[0] * 3), KEY.public_key())
                   for i in range(2)], engine, KEY, POLICY, max_group=1)
    assert more.released_classes == 1 and check(engine) == 1  # the 4th of class 1
    engine.dispose()


def _release_read_plan(engine) -> str:
    """EXPLAIN of the release's read of pending blocks as a prepared statement runs it once
    PostgreSQL settles on a generic plan (made without the classes asked for)."""
    from dmt_model.server.store import _PG_PENDING_OF

    with engine.connect() as conn:
        keys = list(conn.execute(select(CLASSES.c.class_key)).scalars()) or ["0" * 32]
        conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
        conn.exec_driver_sql("PREPARE release_read(varchar[]) AS "
                             + _PG_PENDING_OF.replace("%(keys)b", "$1"))
        array = "ARRAY[" + ", ".join(f"'{k}'" for k in keys) + "]::varchar[]"
        plan = "\n".join(row[0] for row in conn.exec_driver_sql(
            f"EXPLAIN EXECUTE release_read({array})"))
        conn.exec_driver_sql("DEALLOCATE release_read")
        conn.rollback()
    return plan


def test_the_release_reads_blocks_by_key_whatever_the_statistics(postgres_url):
    """Issue 18: psycopg prepares the release's read after a few groups, and PostgreSQL keeps
    the generic plan it made then: on a new store's empty tables, or with the statistics of a
    full one, that was a hash join over every stored record (and package), in every group's
    transaction. The read must reach records, packages and tokens only by their keys."""
    from dmt_model.server import connect, ingest

    engine = connect(postgres_url)
    for when in ("empty", "full"):
        if when == "full":
            ingest([seal_package(package(i, classes=[i % 3] * 3), KEY.public_key())
                    for i in range(300)], engine, KEY, POLICY)
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("ANALYZE")
        plan = _release_read_plan(engine)
        for table in ("records", "packages", "spent_tokens", "released_blocks"):
            with engine.connect() as conn:  # (a scan of a table known to be empty is free)
                rows = conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one()
            if when == "full" and not rows:
                continue
            assert f"Seq Scan on {table}" not in plan, (when, plan)
            assert f"Bitmap Heap Scan on {table}" not in plan, (when, plan)
    engine.dispose()


def test_pending_blocks_do_not_pile_up_dead_rows_on_postgresql(postgres_admin_url, server_load):
    """Issue 18: every block passes through pending_blocks, and PostgreSQL keeps each deleted
    row until a vacuum (autovacuum: once a minute), so the release's read walked every block
    released since (in-process, 10,000 packages: 0.9 ms a group at first, 5.9 ms at the end).
    The writers vacuum it every ``every`` blocks; the same load, written with and without,
    must leave the table a fraction of the size."""
    sizes = {}
    for vacuum in (False, True):
        url, drop = server_load.postgres_database(postgres_admin_url)
        try:
            ingestor = PackageIngestor(url, KEY, POLICY)
            ingestor.vacuum.enabled = vacuum
            ingestor.vacuum.every = 300
            packages = [package(i, classes=[0, 1, 2]) for i in range(1_200)]
            ready = _ready(ingestor, *packages)  # 3 blocks a package, 3,600 in all
            for start in range(0, len(ready), 12):
                results = ingestor.writer.commit_now([r.prepared for r in ready[start:start + 12]])
                assert all(isinstance(w, Written) and w.status == "stored" for w in results)
                assert ingestor.vacuum.wait(30)
            with ingestor.engine.connect() as conn:
                sizes[vacuum] = conn.exec_driver_sql(
                    "SELECT pg_total_relation_size('pending_blocks')").scalar_one()
                pending = conn.exec_driver_sql("SELECT count(*) FROM pending_blocks").scalar_one()
            assert pending == 0  # 12 packages a group: every class meets k = 3 each time
            assert ingestor.vacuum.runs == (11 if vacuum else 0)  # 36 blocks a group: 9 groups
            ingestor.engine.dispose()
        finally:
            drop()
    assert sizes[True] * 3 < sizes[False], sizes


def test_a_pipelined_write_fails_with_sqlalchemy_s_errors_and_stores_nothing(postgres_url):
    """The group write runs its statements on psycopg's own connection, in pipeline mode
    (store.pg_pipeline): its errors must still be SQLAlchemy's, which the write's retries
    read (IntegrityError: a concurrent release of the same blocks), and roll back the whole
    group."""
    from sqlalchemy.exc import IntegrityError

    from dmt_model.server.store import _pg_run, pg_pipeline

    ingestor = PackageIngestor(postgres_url, KEY, POLICY)
    group = [r.prepared for r in _ready(ingestor, *(package(i) for i in range(4)))]
    with pytest.raises(IntegrityError), ingestor.engine.begin() as conn, pg_pipeline(conn):
        write_prepared(conn, group, POLICY, ingestor.data_key())
        _pg_run(conn, "INSERT INTO classes (class_key, n_records, n_packages, released) "
                "SELECT class_key, 1, 1, false FROM classes LIMIT 1", {})
    assert SharedStore(ingestor.engine, KEY).counts()["packages"] == 0
    assert [w.status for w in ingestor.writer.commit_now(group)] == ["stored"] * 4


def test_a_group_is_written_again_when_the_database_dropped_its_connection(
        postgres_url, postgres_admin_url):
    """A pooled connection the database dropped (a restart, an idle timeout) fails the
    pipelined write with a disconnect SQLAlchemy recognizes (``connection_invalidated``, from
    the pipeline's error or the rollback after it), so the write is tried again on a fresh
    connection and each package is stored once."""
    import psycopg

    from dmt_model.server import connect

    # as `dmt serve` makes it: no ping before each use, so the write meets the dropped one
    ingestor = PackageIngestor(connect(postgres_url, pool_pre_ping=False), KEY, POLICY)
    first, *rest = _ready(ingestor, *(package(i) for i in range(5)))
    assert ingestor.writer.commit_now([first.prepared])[0].status == "stored"
    # The pool holds more connections than the write has attempts: after a restart, every
    # one of them is stale, so the first disconnect must renew the whole pool (as
    # SQLAlchemy does for its own statements), not only the connection it was seen on.
    held = [ingestor.engine.connect() for _ in range(ingestor.engine.pool.size())]
    for conn in held:
        conn.exec_driver_sql("SELECT 1")
    for conn in held:
        conn.close()
    database = ingestor.engine.url.database
    with psycopg.connect(postgres_admin_url, autocommit=True) as admin:
        dropped = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                "WHERE datname = %s AND pid <> pg_backend_pid()",
                                (database,)).fetchone()[0]
    assert dropped >= ingestor.engine.pool.size()  # the pool's connections
    written = ingestor.writer.commit_now([r.prepared for r in rest])
    assert [w.status for w in written] == ["stored"] * 4
    assert SharedStore(ingestor.engine, KEY).counts()["packages"] == 5


def test_a_write_in_a_connection_s_own_transaction_is_committed(db_url):
    """``engine.connect()`` and ``conn.commit()`` (SQLAlchemy's autobegin) must store what
    ``write_prepared`` wrote. On PostgreSQL it runs no SQLAlchemy statement, so SQLAlchemy
    began no transaction: its commit did nothing, and the pool's rollback on return threw
    the packages away."""
    ingestor = PackageIngestor(db_url, KEY, POLICY)
    group = [r.prepared for r in _ready(ingestor, *(package(i) for i in range(4)))]
    with ingestor.engine.connect() as conn:
        written = write_prepared(conn, group, POLICY, ingestor.data_key())
        conn.commit()
    assert [w.status for w in written] == ["stored"] * 4
    assert SharedStore(ingestor.engine, KEY).counts()["packages"] == 4


def test_a_release_racing_the_group_write_is_waited_for_and_releases_each_block_once(
        postgres_url, monkeypatch):
    """Two releases of the same pending blocks: an operator's (``release_due``, held open)
    and a group write's, pipelined. The class was released before. The write's insert of
    released blocks waited for the operator's and failed on their key when it committed
    (an IntegrityError the write retried). The operator's release now locks the class's
    counter row first (helper-62), so the write waits at its own upsert of that row, then
    finds the blocks released: written once, each block released once."""
    from dmt_model.server import write as write_module
    from dmt_model.server.store import RELEASED_BLOCKS, release_due, release_rule

    ingestor = PackageIngestor(postgres_url, KEY, POLICY)
    released_before = _ready(ingestor, *(package(i, classes=[0]) for i in range(3)))
    assert all(w.status == "stored" for w in ingestor.writer.commit_now(
        [r.prepared for r in released_before]))  # class 0 released (k = 3)
    monkeypatch.setattr(write_module, "released_classes", lambda *a, **k: [])
    waiting = _ready(ingestor, *(package(i, classes=[0]) for i in range(3, 6)))
    assert all(w.status == "stored" for w in ingestor.writer.commit_now(
        [r.prepared for r in waiting]))  # three pending blocks, not released
    monkeypatch.undo()
    attempts = _write_attempts(monkeypatch)
    hold, held = threading.Event(), threading.Event()

    def operator_release():
        with ingestor.engine.begin() as conn:
            release_due(conn, release_rule(POLICY), lambda key_id: ingestor.data_key())
            held.set()
            hold.wait(timeout=30)

    operator = threading.Thread(target=operator_release)
    operator.start()
    assert held.wait(timeout=30)
    (newcomer,) = _ready(ingestor, package(6, classes=[0]))
    result: list = []
    writer = threading.Thread(target=lambda: result.extend(
        ingestor.writer.commit_now([newcomer.prepared])))
    writer.start()
    wait_until_a_session_waits_on_a_lock(ingestor.engine)
    hold.set()
    operator.join(timeout=30)
    writer.join(timeout=30)
    assert [w.status for w in result] == ["stored"]
    assert attempts == [None]
    with ingestor.engine.connect() as conn:
        ids = list(conn.execute(select(RELEASED_BLOCKS.c.block_id)).scalars())
    assert len(ids) == len(set(ids)) == 6  # the first cohort's 3 and the operator's 3


def test_a_deadlock_inside_the_pipeline_is_retried_and_stores_each_package_once(
        postgres_url, monkeypatch):
    """A deadlock (SQLSTATE 40P01) met while the pipelined write waits on a class counter:
    the group's class rows are locked in sorted order, an operator's transaction locks the
    last one and then the first. PostgreSQL aborts the write (it looks for deadlocks after
    3 s of waiting, the operator's session after 60 s); the error must come out of the
    pipeline as SQLAlchemy's with the SQLSTATE on ``orig``, which the write retries; the
    package is stored once and counted once."""
    from sqlalchemy.exc import DBAPIError

    from dmt_model.server import connect

    # PostgreSQL looks for a deadlock once, deadlock_timeout after a session begins to wait:
    # the write's look must come after the operator closes the cycle, even on a slow machine
    setup = connect(postgres_url)
    with setup.connect() as conn:
        conn.exec_driver_sql(f'ALTER DATABASE "{setup.url.database}" SET deadlock_timeout = '
                             "'3s'")
        conn.commit()
    setup.dispose()
    ingestor = PackageIngestor(postgres_url, KEY, POLICY)
    before = _ready(ingestor, package(0, classes=[0, 1]))
    assert [w.status for w in ingestor.writer.commit_now([before[0].prepared])] == ["stored"]
    with ingestor.engine.connect() as conn:
        first, last = sorted(conn.execute(select(CLASSES.c.class_key)).scalars())
    attempts = _write_attempts(monkeypatch)
    (newcomer,) = _ready(ingestor, package(1, classes=[0, 1]))
    lock = "SELECT n_records FROM classes WHERE class_key = %(k)s FOR UPDATE"
    result: list = []
    with ingestor.engine.connect() as operator:
        operator.exec_driver_sql("SET LOCAL deadlock_timeout = '60s'")
        operator.exec_driver_sql(lock, {"k": last})
        writer = threading.Thread(target=lambda: result.extend(
            ingestor.writer.commit_now([newcomer.prepared])))
        writer.start()
        wait_until_a_session_waits_on_a_lock(ingestor.engine)
        operator.exec_driver_sql(lock, {"k": first})  # the write holds it: a deadlock
        operator.commit()
    writer.join(timeout=30)
    assert [w.status for w in result] == ["stored"]
    assert isinstance(attempts[0], DBAPIError)
    assert getattr(attempts[0].orig, "sqlstate", None) == "40P01"
    assert attempts[1:] == [None]
    store = SharedStore(ingestor.engine, KEY)
    assert store.counts()["packages"] == 2
    assert _class_totals(ingestor.engine) == (4, 2)  # two records in each of two classes
