"""Server ingestion: validation, replays, one transaction per package, encryption at rest,
quarantine of small classes, the CLI, and SIGKILL at random points."""

from __future__ import annotations

import argparse
import os
import random
import signal
import sqlite3
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import event

from dmt_model.cli import ingest as cli_ingest
from dmt_model.server import ServerPolicy, SharedStore, connect, ingest
from dmt_privacy import Field, Schema
from dmt_privacy.anonymity import KAnonymizer, release_classes
from dmt_privacy.package import PrivacyReceipt, SharePackage, seal_package
from dmt_privacy.seal import generate_server_key, save_private_key
from dmt_privacy.sharing import SharingPolicy, share
from dmt_privacy.store import LocalStore

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = Schema((
    Field("age", "numeric", role="quasi-identifier", bounds=(0, 100), grid=1.0),
    Field("zip", "categorical", role="quasi-identifier", categories=("a", "b", "c", "d")),
    Field("note", "text"),
    Field("income", "numeric", bounds=(0, 1000), grid=0.5),
    Field("score", "numeric", bounds=(0, 100_000)),
))
KEY = generate_server_key()
POLICY = ServerPolicy(SCHEMA, min_k=3, epsilon={"income": 1.0})
CLASSES = [(pd.Interval(20.0, 29.0, closed="both"), frozenset({"a", "b"})),
           (pd.Interval(30.0, 45.0, closed="both"), frozenset({"c"})),
           (pd.Interval(46.0, 60.0, closed="both"), frozenset({"a", "b", "c", "d"}))]


def package(i: int, n: int = 3, *, k: int = 3, classes=None, score=None) -> SharePackage:
    rng = np.random.default_rng(i)
    chosen = [CLASSES[c] for c in (classes if classes is not None else rng.integers(0, 3, n))]
    columns = {"age": [c[0] for c in chosen], "zip": [c[1] for c in chosen],
               "note": [f"note-{i:05d}-{j}" for j in range(len(chosen))],
               "score": [score if score is not None else 777.0 + i + j / 8
                         for j in range(len(chosen))]}
    return SharePackage.create(SCHEMA.schema_id, columns, PrivacyReceipt(k=k))


def write_packages(directory: Path, packages) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    for p in packages:
        (directory / f"{p.package_id}.dmt").write_bytes(seal_package(p, KEY.public_key()))
    return [p.package_id for p in packages]


def table_counts(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                for t in ("packages", "records", "classes", "data_keys")}


def wait_until_a_session_waits_on_a_lock(engine, timeout: float = 30.0) -> None:
    """Until a session of ``engine``'s PostgreSQL database waits on a lock (or ``timeout``
    seconds): a race set up by a test has reached its wait."""
    from sqlalchemy import text

    with engine.connect() as watch:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not watch.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'")).scalar():
            watch.rollback()  # (a transaction's view of pg_stat_activity is frozen)
            time.sleep(0.01)


def test_device_to_server_and_acknowledgement(tmp_path):
    proxy = pd.DataFrame({"age": np.repeat(np.arange(20, 61), 8).astype(float),
                          "zip": np.tile(["a", "b", "c", "d"], 82)})
    plan = KAnonymizer(["age", "zip"], k=3).fit(proxy).plan_
    rng = np.random.default_rng(0)
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    stores = []
    for u in range(4):
        n = 12
        frame = pd.DataFrame({"age": rng.integers(20, 61, n).astype(float),
                              "zip": rng.choice(["a", "b", "c", "d"], n),
                              "note": [f"u{u}-{j}" for j in range(n)],
                              "income": rng.uniform(0, 1000, n), "score": rng.uniform(0, 10, n)})
        store = LocalStore(tmp_path / f"u{u}.db", schema=SCHEMA, user_id=f"u{u}",
                           epsilon_budget=100, key=LocalStore.generate_key())
        store.add_records(frame)
        result = share(store, SharingPolicy(fields=SCHEMA.names, plan=plan,
                                            epsilon={"income": 1.0}), KEY.public_key())
        (outbox / f"{result.package_id}.dmt").write_bytes(result.envelope)
        stores.append(store)
    db = f"sqlite:///{tmp_path / 'server.db'}"
    report = ingest(outbox, db, KEY, POLICY)
    assert len(report.accepted) == 4 and not report.rejected
    for store in stores:
        assert store.count("shared") == 0
        for pid in report.stored_ids:
            if pid in {e.package_id for e in store.outbox()}:
                store.acknowledge(pid)
        assert store.count("shared") == 12 and store.count("pending") == 0
    frame = SharedStore(db, KEY).frame("all")
    assert len(frame) == 48 and set(frame["note"]) == {f"u{u}-{j}" for u in range(4)
                                                        for j in range(12)}


def test_replays_rejected_and_double_ingestion_changes_nothing(tmp_path):
    ids = write_packages(tmp_path / "in", [package(i) for i in range(20)])
    db = tmp_path / "server.db"
    first = ingest(tmp_path / "in", f"sqlite:///{db}", KEY, POLICY)
    assert len(first.accepted) == 20 and not first.rejected
    before = table_counts(db)
    frame_before = SharedStore(f"sqlite:///{db}", KEY).frame("all")
    second = ingest([tmp_path / "in"], f"sqlite:///{db}", KEY, POLICY)
    assert not second.accepted and len(second.replays) == 20 == len(second.rejected)
    assert all(o.reason.startswith("replay") for o in second.rejected)
    assert sorted(second.stored_ids) == sorted(ids)  # a device may acknowledge a replay
    assert table_counts(db) == before
    pd.testing.assert_frame_equal(SharedStore(f"sqlite:///{db}", KEY).frame("all"), frame_before)
    same_bytes = (tmp_path / "in" / f"{ids[0]}.dmt").read_bytes()
    third = ingest([same_bytes, same_bytes], str(db), KEY, POLICY)
    assert len(third.replays) == 2 and table_counts(db) == before
    assert "replay: 2" in third.to_text()


def _bad_packages():
    tampered = bytearray(seal_package(package(1), KEY.public_key()))
    tampered[-1] ^= 1
    other_key = seal_package(package(2), generate_server_key().public_key())
    wrong_schema = SharePackage.create("0" * 16, dict(package(3).columns), PrivacyReceipt(k=3))
    low_k = package(4, k=2)
    out_of_bounds = package(5, score=100_001.0)
    raw_income = SharePackage.create(SCHEMA.schema_id, {**package(6).columns,
                                                        "income": [1.0, 2.0, 3.0]},
                                     PrivacyReceipt(k=3))
    raw_qi = SharePackage.create(SCHEMA.schema_id, {**package(7).columns, "age": [25.0] * 3},
                                 PrivacyReceipt(k=3))
    bad_zip = SharePackage.create(SCHEMA.schema_id,
                                  {**package(8).columns, "zip": [frozenset({"z"})] * 3},
                                  PrivacyReceipt(k=3))
    unknown = SharePackage.create(SCHEMA.schema_id, {**package(9).columns, "x": [1, 2, 3]},
                                  PrivacyReceipt(k=3))
    sealed = [bytes(tampered), other_key] + [
        seal_package(p, KEY.public_key())
        for p in (wrong_schema, low_k, out_of_bounds, raw_income, raw_qi, bad_zip, unknown)]
    kinds = ["unreadable", "unreadable", "schema", "k", "bounds", "epsilon", "generalization",
             "category", "schema"]
    return sealed, kinds


def test_rejected_packages_leave_no_rows(tmp_path):
    db = tmp_path / "server.db"
    ingest([seal_package(package(100), KEY.public_key())], str(db), KEY, POLICY)
    before = table_counts(db)
    sealed, kinds = _bad_packages()
    report = ingest(sealed, str(db), KEY, POLICY)
    assert not report.accepted
    assert [o.reason.split(":")[0] for o in report.rejected] == kinds
    assert table_counts(db) == before


def test_a_write_failing_midway_leaves_nothing(tmp_path):
    db = tmp_path / "server.db"
    engine = connect(f"sqlite:///{db}")
    ingest([seal_package(package(0), KEY.public_key())], engine, KEY, POLICY)
    before = table_counts(db)

    def fail_on_classes(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith(("INSERT INTO CLASSES", "UPDATE CLASSES")):
            raise RuntimeError("disk on fire")

    event.listen(engine, "before_cursor_execute", fail_on_classes)
    with pytest.raises(RuntimeError, match="disk on fire"):
        ingest([seal_package(package(1), KEY.public_key())], engine, KEY, POLICY)
    event.remove(engine, "before_cursor_execute", fail_on_classes)
    assert table_counts(db) == before  # the package row and its records rolled back too


def test_records_encrypted_at_rest(tmp_path):
    db = tmp_path / "server.db"
    packages = [package(i) for i in range(10)]
    ingest([seal_package(p, KEY.public_key()) for p in packages], str(db), KEY, POLICY)
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("server.db*"))
    for p in packages:
        for note, score in zip(p.columns["note"], p.columns["score"], strict=True):
            assert note.encode() not in raw
            for fmt in ("<d", ">d"):
                assert struct.pack(fmt, score) not in raw
    # readable with the private key, and only with it
    frame = SharedStore(f"sqlite:///{db}", KEY).frame("all")
    assert sorted(frame["note"]) == sorted(n for p in packages for n in p.columns["note"])
    with pytest.raises(Exception, match="cannot be unwrapped"):
        SharedStore(f"sqlite:///{db}", generate_server_key()).frame("all")


def test_quarantine_matches_release_classes(tmp_path):
    db = f"sqlite:///{tmp_path / 'server.db'}"
    store = SharedStore(db, KEY)
    # class 0 reaches 3 packages, class 1 gets many records from 2 packages, class 2 one package
    packs = [package(0, classes=[0, 1, 1, 1]), package(1, classes=[0, 1, 1]),
             package(2, classes=[2]), package(3, classes=[0])]
    report = ingest([seal_package(p, KEY.public_key()) for p in packs[:2]], db, KEY, POLICY)
    assert report.counts["classes_released"] == 0 and report.counts["records_quarantined"] == 7
    report = ingest([seal_package(p, KEY.public_key()) for p in packs[2:]], db, KEY, POLICY)
    assert report.released_classes == 1
    released, quarantined = store.frame("released"), store.frame("quarantined")
    assert len(released) == 3 and len(quarantined) == 6
    everything = store.frame("all")
    ref_released, _ = release_classes(everything, ["age", "zip"], POLICY.min_k,
                                      package_column="package_id")
    assert sorted(ref_released["note"]) == sorted(released["note"])


def _run_cli(argv):
    parser = argparse.ArgumentParser(prog="dmt")
    cli_ingest.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_keygen_and_ingest(tmp_path, capsys):
    assert _run_cli(["keygen", "-o", str(tmp_path / "server.key")]) == 0
    assert oct((tmp_path / "server.key").stat().st_mode & 0o777) == "0o600"
    from dmt_privacy.seal import load_public_key

    public = load_public_key(tmp_path / "server.key.pub")
    (tmp_path / "in").mkdir()
    for i in range(3):
        (tmp_path / "in" / f"{i}.dmt").write_bytes(seal_package(package(i), public))
    (tmp_path / "policy.json").write_text(POLICY.to_json())
    argv = ["ingest", str(tmp_path / "in"), "--db", str(tmp_path / "s.db"),
            "--key", str(tmp_path / "server.key"), "--policy", str(tmp_path / "policy.json")]
    assert _run_cli(argv) == 0
    out = capsys.readouterr().out
    assert "accepted     3 package(s), 9 record(s)" in out and "quarantined" in out
    assert _run_cli(argv) == 0
    assert "rejected     3 package(s) (replay: 3)" in capsys.readouterr().out


def _stored(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=30) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM packages").fetchone()[0])
    except sqlite3.OperationalError:  # not created yet
        return 0


_CHILD = """
import argparse, sys
from dmt_model.cli import ingest as m
import dmt_model.server.ingest  # noqa: F401 (the module, shadowed by the function)
ing = sys.modules["dmt_model.server.ingest"]
# groups of 4 (not 256): 1,000 packages are then many transactions to kill the run between
ing.ingest.__kwdefaults__["max_group"] = 4
p = argparse.ArgumentParser(); m.register(p.add_subparsers(dest="command"))
a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))
"""


def test_sigkill_at_random_points_stores_every_package_once(tmp_path):
    n = 1000
    ids = write_packages(tmp_path / "in", [package(i, n=2) for i in range(n)])
    save_private_key(KEY, tmp_path / "server.key")
    (tmp_path / "policy.json").write_text(POLICY.to_json())
    db = tmp_path / "server.db"
    argv = [sys.executable, "-c", _CHILD, "ingest", str(tmp_path / "in"), "--db", str(db),
            "--key", str(tmp_path / "server.key"), "--policy", str(tmp_path / "policy.json")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rng = random.Random(1234)
    kills = partial = 0
    deadline = time.monotonic() + 40
    stored_before = -1
    while time.monotonic() < deadline and kills < 4:
        child = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        # kill when a random number of packages, at most a third of those left, is stored:
        # a random moment counted in packages, not in seconds, so a fast machine cannot
        # finish the run before the kill
        base = max(stored_before, 0)
        target = base + rng.randint(1, max(1, (n - base) // 3))
        stalled = time.monotonic() + 60  # an ingester that stops storing must fail the test
        while child.poll() is None and _stored(db) < target:
            if time.monotonic() > stalled:
                child.kill()
                child.wait()
                pytest.fail(f"the ingester stored {_stored(db)} of {n} packages and then "
                            f"nothing more for 60 s without exiting (waiting for {target})")
            time.sleep(0.002)
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
            child.wait()
            kills += 1
        stored = _stored(db)
        assert stored >= stored_before
        partial += 0 < stored < n
        stored_before = stored
        if stored == n:
            break
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(db) as conn:
        stored_ids = [r[0] for r in conn.execute("SELECT package_id FROM packages")]
        per_package = dict(conn.execute(
            "SELECT package_id, SUM(n_records) FROM records GROUP BY package_id").fetchall())
        class_total = conn.execute("SELECT SUM(n_records) FROM classes").fetchone()[0]
    assert sorted(stored_ids) == sorted(ids)  # every package, exactly once
    assert all(per_package[p] == 2 for p in ids) and class_total == 2 * n
    assert kills >= 2 and partial >= 2  # killed mid-ingestion, more than once


def test_operators_remove_packages_by_id_day_receipt_and_reason(tmp_path, capsys):
    from dmt_model.server.admin import list_packages, remove_packages

    db = f"sqlite:///{tmp_path / 'server.db'}"
    packs = [package(i, classes=[0, 1]) for i in range(6)]
    ingest([seal_package(p, KEY.public_key()) for p in packs], db, KEY, POLICY)
    assert len(list_packages(db)) == 6
    before = SharedStore(db, KEY).counts()
    report = remove_packages(db, ids=[packs[0].package_id])
    assert report.removed == [packs[0].package_id] and report.records == 2
    after = SharedStore(db, KEY).counts()
    assert after["packages"] == 5 and after["records"] == before["records"] - 2
    assert packs[0].package_id not in set(SharedStore(db, KEY).frame("all")["package_id"])
    # by receipt value, dry run first
    assert len(remove_packages(db, receipt="k=3", dry_run=True).removed) == 5
    assert len(list_packages(db)) == 5
    assert remove_packages(db, receipt="k=4").removed == []
    # by reason: a stricter policy than the one they were accepted under
    strict = ServerPolicy(SCHEMA, min_k=4, epsilon={"income": 1.0})
    report = remove_packages(db, reason="k", private_key=KEY, policy=strict)
    assert len(report.removed) == 5 and report.reasons == {"k": 5}
    assert SharedStore(db, KEY).counts() == {k: 0 for k in before}
    with pytest.raises(Exception, match="Choose what to remove"):
        remove_packages(db)
    # the CLI, by day
    ingest([seal_package(package(99), KEY.public_key())], db, KEY, POLICY)
    day = list_packages(db)[0].created_day
    assert _run_cli(["packages", "remove", "--db", db, "--day", day]) == 0
    assert "removed 1 package(s)" in capsys.readouterr().out
    assert _run_cli(["packages", "list", "--db", db]) == 0
    assert "0 package(s)" in capsys.readouterr().out


def test_a_removed_package_sent_again_is_never_stored_again(db_url):
    """Found in review (4 December): an operator removed a package (a user's erasure
    request, say), and the same sealed bytes sent again, by the device retrying or by
    anyone who kept them, were accepted and stored as new. A removed id is now answered as
    a replay (the device may acknowledge it) and stores nothing, in a group with others
    that are stored. On both stores: PostgreSQL answers it in the packages' insert."""
    from dmt_model.server.admin import list_packages, remove_packages

    db = db_url
    removed, other = package(1, classes=[0]), package(2, classes=[0])
    envelope = seal_package(removed, KEY.public_key())
    ingest([envelope], db, KEY, POLICY)
    assert remove_packages(db, ids=[removed.package_id]).removed == [removed.package_id]
    # twice in one group (a device retrying), beside a new package (found in review: the
    # second copy's replay check found no row and the whole ingestion stopped)
    report = ingest([envelope, envelope, seal_package(other, KEY.public_key())], db, KEY,
                    POLICY)
    *again, stored = report.outcomes
    for outcome in again:
        assert (outcome.status, outcome.replay) == ("rejected", True), outcome
        assert "removed" in outcome.reason
    assert stored.status == "accepted"
    assert [p.package_id for p in list_packages(db)] == [other.package_id]
    assert SharedStore(db, KEY).counts()["records"] == 1


def test_a_package_sent_again_while_its_removal_commits_is_not_stored_again(postgres_url):
    """Found in review (helper-48): with the removed-id check inside the packages' INSERT
    (one statement, one snapshot), a copy sent while an operator's removal was committing
    waited on the removal's delete, was inserted once it committed, and its check did not
    see the removal, taken after the statement's snapshot: the removed package was stored
    again. The check is a statement of its own after the insert, which sees it."""
    import threading

    from sqlalchemy import text

    from dmt_model.server import admin

    engine = connect(postgres_url)
    first = package(1, classes=[0])
    envelope = seal_package(first, KEY.public_key())
    ingest([envelope], engine, KEY, POLICY)
    remover = engine.connect()
    removal = remover.begin()
    admin._remove_one(remover, first.package_id, None)  # not committed yet
    outcomes = []
    sender = threading.Thread(
        target=lambda: outcomes.extend(ingest([envelope], engine, KEY, POLICY).outcomes))
    sender.start()
    time.sleep(1.0)
    assert sender.is_alive()  # its insert waits on the removal's delete
    removal.commit()
    remover.close()
    sender.join(30)
    [outcome] = outcomes
    assert (outcome.status, outcome.replay) == ("rejected", True), outcome
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT count(*) FROM packages WHERE package_id = :p"),
                              {"p": first.package_id}).scalar()
    assert stored == 0


def test_a_removal_while_a_group_write_releases_its_class_does_not_deadlock(
        postgres_url, monkeypatch):
    """Found in review (helper-61): a group write holds a class's counter row and has read
    the class's pending blocks, among them package X's; an operator's removal of X deleted
    X's pending block and records, then waited on the class row, while the write's release
    waited on X's deleted rows. PostgreSQL broke the deadlock by failing the removal. A
    removal now locks its classes' rows first, as the write does, so it waits for the
    write, then removes X and withdraws the cohort X was just released in."""
    import threading

    from sqlalchemy import text

    from dmt_model.server import admin
    from dmt_model.server import store as store_module
    from dmt_model.server import write as write_module
    from dmt_model.server.ingest import Ingestor

    engine = connect(postgres_url)
    ingestor = Ingestor(engine, KEY, POLICY)
    ready = [ingestor.check(seal_package(package(i, classes=[0]), KEY.public_key()))
             for i in range(3)]
    monkeypatch.setattr(write_module, "released_classes", lambda *a, **k: [])
    assert [w.status for w in ingestor.writer.commit_now([r.prepared for r in ready[:2]])] \
        == ["stored"] * 2  # two pending blocks of class 0: not enough to release (k = 3)
    monkeypatch.undo()
    release_statement, real_run = store_module._PG_RELEASE, store_module._pg_run
    read, removal_waits = threading.Event(), threading.Event()

    def paused(conn, statement, params):  # the write's release, after it read the blocks
        if statement == release_statement and threading.current_thread().name != "operator":
            read.set()
            removal_waits.wait(timeout=30)
        return real_run(conn, statement, params)

    monkeypatch.setattr(store_module, "_pg_run", paused)
    outcome: list = []

    def operator():
        assert read.wait(timeout=30)
        try:
            outcome.append(admin.remove_packages(engine, ids=[ready[0].package_id],
                                                 policy=POLICY))
        except BaseException as exc:  # the deadlock's victim
            outcome.append(exc)

    remover = threading.Thread(target=operator, name="operator")
    remover.start()
    writer = threading.Thread(target=lambda: outcome.append(
        ingestor.writer.commit_now([ready[2].prepared])))
    writer.start()
    wait_until_a_session_waits_on_a_lock(engine)
    removal_waits.set()
    writer.join(timeout=30)
    remover.join(timeout=30)
    removed = next(o for o in outcome if not isinstance(o, list))
    written = next(o for o in outcome if isinstance(o, list))
    assert not isinstance(removed, BaseException), removed
    assert removed.removed == [ready[0].package_id]
    assert removed.withdrawn_records == 2  # the other two of the cohort X was released in
    assert [w.status for w in written] == ["stored"]
    with engine.connect() as conn:
        left = conn.execute(text("SELECT count(*) FROM packages")).scalar()
        released = conn.execute(text("SELECT count(*) FROM released_blocks")).scalar()
    assert left == 2
    assert released == 0  # the cohort of three lost X: the other two are withdrawn


def test_removing_a_package_never_lets_two_snapshots_single_out_one_package(tmp_path):
    """Removing a package from a released cohort must not put its companions back in line:
    released again with one newcomer, two snapshots of the released data would differ by
    that newcomer's records alone (and by the removed package's). Every two snapshots
    differ by whole cohorts of at least k packages, or not at all."""
    from dmt_model.server.admin import remove_packages

    db = f"sqlite:///{tmp_path / 'server.db'}"
    store = SharedStore(db, KEY)

    def snapshot() -> frozenset[str]:
        frame = store.frame("released")
        return frozenset(frame["package_id"]) if len(frame) else frozenset()

    first = [package(i, n=1, classes=[0]) for i in range(3)]
    ingest([seal_package(p, KEY.public_key()) for p in first], db, KEY, POLICY)
    snapshots = [snapshot()]
    assert snapshots[0] == {p.package_id for p in first}
    assert remove_packages(db, ids=[first[0].package_id], dry_run=True).withdrawn_records == 2
    report = remove_packages(db, ids=[first[0].package_id])
    assert report.withdrawn_records == 2  # the two companions leave the release for good
    snapshots.append(snapshot())
    newcomers = [package(10 + i, n=1, classes=[0]) for i in range(3)]
    for p in newcomers:  # one at a time: each is a chance to release a smaller difference
        ingest([seal_package(p, KEY.public_key())], db, KEY, POLICY)
        snapshots.append(snapshot())
    assert snapshots[-1] == {p.package_id for p in newcomers}  # a cohort of their own
    for a in snapshots:
        for b in snapshots:
            assert len(a - b) in (0, *range(POLICY.min_k, 100)), (a - b, a, b)
    counts = store.counts()
    assert counts["records_withdrawn"] == 2 and counts["records_released"] == 3
    # a connect (which indexes blocks a database from before pending_blocks lacks) does
    # not put them back in line either
    from dmt_model.server import connect

    connect(db).dispose()
    ingest([seal_package(package(20 + i, n=1, classes=[0]), KEY.public_key())
            for i in range(2)], db, KEY, POLICY)
    assert snapshot() == {p.package_id for p in newcomers}


def test_a_quasi_identifier_shared_under_local_dp_does_not_name_the_class(tmp_path):
    """Local DP on a quasi-identifier is the alternative to generalizing it: validation
    leaves it out of the class, and so must the store. Keyed by its noisy value, every
    record was a class of its own and never reached k (the users' ε spent for nothing)."""
    schema = Schema((
        Field("age", "numeric", role="quasi-identifier", bounds=(0, 100), grid=1.0),
        Field("y", "numeric", role="target", bounds=(0, 10), grid=0.1),
    ))
    sharing = SharingPolicy(fields=("age", "y"), epsilon={"age": 1.0}, privacy_unit="record")
    policy = ServerPolicy(schema, min_k=3, epsilon={"age": 1.0})
    envelopes = []
    for u in range(6):
        store = LocalStore(tmp_path / f"u{u}.db", schema=schema, user_id=f"u{u}",
                           epsilon_budget=100, key=LocalStore.generate_key())
        store.add_records(pd.DataFrame({"age": [40.0], "y": [5.0]}), ids=[f"r{u}"])
        envelopes.append(share(store, sharing, KEY.public_key()).envelope)
    report = ingest(envelopes, f"sqlite:///{tmp_path / 'server.db'}", KEY, policy)
    assert len(report.accepted) == 6
    assert report.counts["records_released"] == 6 and report.counts["classes_released"] == 1


def test_a_server_policy_cannot_let_a_quasi_identifier_through_raw():
    """quasi_identifiers= that leaves out a quasi-identifier the policy accepts, neither
    generalized nor under local DP, would store and release its raw values: refused,
    naming it and the three ways out (the device's SharingPolicy refuses the same)."""
    from dmt_privacy.errors import ValidationError

    with pytest.raises(ValidationError, match=r"'zip'.*quasi_identifiers.*epsilon.*fields"):
        ServerPolicy(SCHEMA, min_k=3, quasi_identifiers=("age",))
    ServerPolicy(SCHEMA, min_k=3, quasi_identifiers=("age",), epsilon={"zip": 1.0})
    ServerPolicy(SCHEMA, min_k=3, quasi_identifiers=("age",),
                 fields=("age", "note", "income", "score"))


def test_a_server_policy_refuses_a_numeric_field_without_bounds():
    """Found in review (helper-47): a numeric field the policy accepts without bounds let
    a package carry any finite number (1e30) through validation into retraining, which
    clips nothing. Refused, naming the field; a quasi-identifier the plan generalizes is
    bounded by the plan's classes and stays accepted."""
    from dmt_privacy.errors import ValidationError

    schema = Schema((Field("x", "numeric"),
                     Field("y", "numeric", role="target", bounds=(0, 10), grid=0.1)))
    with pytest.raises(ValidationError, match=r"\['x'\] have no bounds.*leave it out"):
        ServerPolicy(schema, min_k=1, epsilon={"y": 1.0})
    ServerPolicy(schema, min_k=1, epsilon={"y": 1.0}, fields=("y",))
    proxy = pd.DataFrame({"age": np.arange(20.0, 80.0), "y": np.linspace(0, 10, 60)})
    plan = KAnonymizer(["age"], k=3).fit(proxy[["age"]]).plan_
    generalized = Schema((Field("age", "numeric", role="quasi-identifier"),
                          Field("y", "numeric", role="target", bounds=(0, 10), grid=0.1)))
    ServerPolicy(generalized, min_k=3, plan=plan, epsilon={"y": 1.0})
    # without a plan any interval passes (helper-49: (0, 1e300] was released and trained)
    with pytest.raises(ValidationError, match=r"\['age'\] have no bounds"):
        ServerPolicy(generalized, min_k=3, epsilon={"y": 1.0})


def test_a_package_over_max_bytes_is_refused_as_too_large_not_unreadable(tmp_path):
    """Found in review (helper-49): a package over the policy's max_bytes was answered
    "unreadable: could not be opened with this server's key", sending an operator after a
    key problem."""
    import dataclasses

    small = dataclasses.replace(POLICY, max_bytes=200)
    report = ingest([seal_package(package(1, n=40), KEY.public_key())],
                    f"sqlite:///{tmp_path / 'server.db'}", KEY, small)
    [outcome] = report.outcomes
    assert outcome.status == "rejected" and outcome.reason.startswith("too large:"), outcome
    assert "max_bytes (200)" in outcome.reason


def test_a_different_package_reusing_a_stored_id_is_refused_not_acknowledged(tmp_path):
    import dataclasses

    db = f"sqlite:///{tmp_path / 'server.db'}"
    first = package(1)
    ingest([seal_package(first, KEY.public_key())], db, KEY, POLICY)
    impostor = dataclasses.replace(package(2), package_id=first.package_id)
    report = ingest([seal_package(impostor, KEY.public_key())], db, KEY, POLICY)
    [outcome] = report.outcomes
    assert outcome.status == "rejected" and not outcome.replay
    assert outcome.reason.startswith("conflict") and report.stored_ids == []
    again = ingest([seal_package(first, KEY.public_key())], db, KEY, POLICY)
    assert again.outcomes[0].replay and again.stored_ids == [first.package_id]


def test_randomized_response_and_gaussian_fields_match_the_policy_exactly(tmp_path):
    """Categorical k-RR (no rounding in its receipt) and the Gaussian mechanism (δ) pass the
    exact receipt check when the device follows the policy, and fail when it does not."""
    policy = ServerPolicy(SCHEMA, min_k=3, epsilon={"income": 1.0, "zip": 1.0},
                          mechanism={"income": "gaussian"}, delta={"income": 1e-5})
    rng = np.random.default_rng(1)
    store = LocalStore(tmp_path / "u.db", schema=SCHEMA, user_id="u", epsilon_budget=100,
                       delta_budget=0.1, key=LocalStore.generate_key())
    store.add_records(pd.DataFrame({
        "age": rng.integers(20, 61, 8).astype(float), "zip": rng.choice(["a", "b", "c"], 8),
        "note": [f"n{j}" for j in range(8)], "income": rng.uniform(0, 1000, 8),
        "score": rng.uniform(0, 10, 8)}))
    fields = ("zip", "note", "income", "score")
    follows = SharingPolicy(fields=fields, epsilon={"income": 1.0, "zip": 1.0},
                            mechanism={"income": "gaussian"}, delta={"income": 1e-5},
                            privacy_unit="record", fraction=0.5)
    deviates = follows.evolve(mechanism={}, delta={})  # Laplace on income
    envelopes = [share(store, p, KEY.public_key()).envelope for p in (follows, deviates)]
    report = ingest(envelopes, str(tmp_path / "s.db"), KEY, policy)
    assert [o.status for o in report.outcomes] == ["accepted", "rejected"]
    assert report.outcomes[1].reason.startswith("mechanism")


def _write_commits(engine) -> list[int]:
    """Counts the engine's commits in a one-element list (a listener keeps it up to date)."""
    commits = [0]

    def count(conn):
        commits[0] += 1

    event.listen(engine, "commit", count)
    return commits


def test_ingest_writes_packages_in_groups_not_one_transaction_each(tmp_path):
    """`dmt ingest` on 100 packages: ceil(100 / max_group) write transactions, not 100."""
    db = tmp_path / "server.db"
    engine = connect(f"sqlite:///{db}")
    ingest([seal_package(package(1000), KEY.public_key())], engine, KEY, POLICY)  # data key
    ids = write_packages(tmp_path / "in", [package(i) for i in range(100)])
    commits = _write_commits(engine)
    report = ingest(tmp_path / "in", engine, KEY, POLICY, max_group=32)
    assert sorted(report.stored_ids) == sorted(ids) and len(report.accepted) == 100
    assert commits[0] == 1 + 4  # the data key's read, then 32 + 32 + 32 + 4 packages
    commits[0] = 0
    again = ingest(tmp_path / "in", engine, KEY, POLICY)
    assert len(again.replays) == 100 and commits[0] == 1 + 1  # exactly once on a re-run
    assert table_counts(db)["packages"] == 101


def test_a_package_failing_its_write_takes_only_itself_down(tmp_path):
    """A package whose write fails, in the middle of a group: the others of its group are
    stored (each retried alone), it is not, the run stops with the error after that group,
    and a re-run stores the rest exactly once."""
    db = tmp_path / "server.db"
    engine = connect(f"sqlite:///{db}")
    packages = [package(i) for i in range(100)]
    order = sorted(p.package_id for p in packages)  # files are read sorted by name
    bad = order[30]
    write_packages(tmp_path / "in", packages)

    def fail_on_bad(conn, cursor, statement, parameters, *args):
        if statement.lstrip().upper().startswith("INSERT INTO PACKAGES") and bad in str(
                parameters):
            raise RuntimeError("disk on fire")

    event.listen(engine, "before_cursor_execute", fail_on_bad)
    commits = _write_commits(engine)
    with pytest.raises(RuntimeError, match="disk on fire"):
        ingest(tmp_path / "in", engine, KEY, POLICY, max_group=64)
    stored = {r[0] for r in sqlite3.connect(db).execute("SELECT package_id FROM packages")}
    assert stored == set(order[:64]) - {bad}  # its group-mates stored, the next group not
    assert commits[0] <= 1 + 64  # the data key, then the failed group's packages alone
    event.remove(engine, "before_cursor_execute", fail_on_bad)
    report = ingest(tmp_path / "in", engine, KEY, POLICY)
    assert len(report.replays) == len(stored) and len(report.accepted) == 100 - len(stored)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*), COUNT(DISTINCT package_id) FROM packages"
                            ).fetchone() == (100, 100)
        assert conn.execute("SELECT SUM(n_records) FROM classes").fetchone()[0] == 300


def test_sqlite_writers_take_turns_on_a_lock_woken_at_release(tmp_path):
    """Writers of one SQLite file (threads, processes) queue on an flock next to it, woken
    when it is freed (SQLite's busy handler sleeps 1, 2, 5, 10... ms whatever happens);
    any other database, or an in-memory one, has no lock file."""
    import threading

    from dmt_model.server.store import WriterLock

    db = tmp_path / "s.db"
    engine = connect(f"sqlite:///{db}")
    first, second = WriterLock(engine), WriterLock(engine)  # two open files: two processes
    assert first.path == f"{db}-writer.lock"
    events = []
    with first:
        waiter = threading.Thread(target=lambda: events.append(second.__enter__() and "in"))
        waiter.start()
        waiter.join(0.3)
        assert waiter.is_alive() and events == []  # blocked while the first one writes
        events.append("out")
    waiter.join(10)
    assert events == ["out", "in"]
    second.__exit__(None, None, None)
    engine.dispose()
    memory = connect("sqlite://")
    assert WriterLock(memory).path is None
    with WriterLock(memory):  # threads of one process still take turns
        pass
    memory.dispose()
    report = ingest([seal_package(package(i), KEY.public_key()) for i in range(3)],
                    f"sqlite:///{tmp_path / 'i.db'}", KEY, POLICY)
    assert [o.status for o in report.outcomes] == ["accepted"] * 3
    assert (tmp_path / "i.db-writer.lock").exists()


def test_sqlite_plain_statements_store_what_the_sqlalchemy_path_stores(tmp_path, monkeypatch):
    """The SQLite write and release in plain driver statements leave the same rows (ids,
    blocks, pending index, class counters, cohorts and releases) as the dialect-neutral
    SQLAlchemy statements, replays and duplicates in the group included."""
    from sqlalchemy import text

    from dmt_model.server import store, write

    unique = [seal_package(package(200 + i), KEY.public_key()) for i in range(7)]
    sealed = [*unique, *unique[:2]]  # two packages twice in one group
    tables = {
        "packages": "SELECT package_id, n_records FROM packages ORDER BY package_id",
        "records": "SELECT package_id, class_key, n_records, rows FROM records "
                   "ORDER BY package_id, class_key",
        "pending": "SELECT r.package_id, p.class_key FROM pending_blocks p JOIN records r "
                   "ON r.id = p.block_id ORDER BY 1, 2",
        "classes": "SELECT class_key, n_records, n_packages, released FROM classes ORDER BY 1",
        "cohorts": "SELECT class_key, n_records, n_packages FROM cohorts ORDER BY 1, 2",
        "released": "SELECT r.package_id, c.class_key FROM released_blocks b JOIN records r "
                    "ON r.id = b.block_id JOIN cohorts c ON c.cohort_id = b.cohort_id "
                    "ORDER BY 1, 2",
    }
    seen = []
    for plain in (True, False):
        if not plain:
            monkeypatch.setattr(write, "_sqlite", lambda conn: False)
            monkeypatch.setattr(store, "_sqlite", lambda conn: False)
        url = f"sqlite:///{tmp_path / f'{plain}.db'}"
        report = ingest(sealed[:5], url, KEY, POLICY)
        again = ingest(sealed, url, KEY, POLICY)
        engine = connect(url)
        with engine.connect() as conn:
            rows = {name: conn.execute(text(sql)).all() for name, sql in tables.items()}
        engine.dispose()
        # class keys are HMACs under each database's own data key: name a class by its members
        members: dict[str, set[str]] = {}
        for pid, class_key, *_ in rows["records"]:
            members.setdefault(class_key, set()).add(pid)
        name = {k: ",".join(sorted(v)) for k, v in members.items()}
        rows = {table: sorted(tuple(name.get(v, v) if isinstance(v, str) else v for v in row)
                              for row in found) for table, found in rows.items()}
        seen.append(([o.status for o in report.outcomes + again.outcomes], rows))
    assert seen[0] == seen[1]
    statuses, rows = seen[0]
    assert statuses.count("accepted") == 7 and rows["cohorts"]  # something was released


def test_a_record_the_server_would_refuse_in_clear_is_left_out_before_any_charge(tmp_path):
    """helper-87: a record whose field shared in clear lies outside the schema's bounds
    (the store takes values up to a width outside, since local DP clips them) made the
    server refuse every package with it, after share() had charged the ledger for all of
    them; the app's re-share after each refusal charged again, and the user's other
    records were never shared. Now share() leaves that record out (it stays eligible, in
    ``ShareResult.out_of_bounds``), charges for the others only, and the server takes the
    package."""
    from dmt_model.datasets import BOSTON_SCHEMA, load_boston

    rows = load_boston().iloc[:6].copy()
    rows.loc[rows.index[0], "RM"] = 9.2  # bounds (3, 9)
    store = LocalStore(tmp_path / "u.db", schema=BOSTON_SCHEMA, user_id="u",
                       epsilon_budget=100.0, key=LocalStore.generate_key())
    store.add_records(rows)
    odd = store.record_ids()[0]
    policy = SharingPolicy(fields=("RM", "LSTAT", "MEDV"), epsilon={"MEDV": 1.0})
    server = ServerPolicy(BOSTON_SCHEMA, min_k=1, epsilon={"MEDV": 1.0})
    result = share(store, policy, KEY.public_key())
    assert result.out_of_bounds == (odd,) and result.n_records == 5
    assert store.ledger.spent.epsilon == pytest.approx(5.0)
    report = ingest([result.envelope], f"sqlite:///{tmp_path / 's.db'}", KEY, server)
    assert [o.package_id for o in report.accepted] == [result.package_id], report.reasons
    state = store.state(odd)
    assert state.pending_package is None and state.shared_package is None  # still eligible
    from dmt_privacy.errors import ValidationError

    with pytest.raises(ValidationError, match=r"RM.*9\.2.*outside.*\[3, 9\].*nothing was"):
        share(store, policy.evolve(record_ids=[odd]), KEY.public_key())
    assert store.ledger.spent.epsilon == pytest.approx(5.0)
