"""LocalStore at rest: one sealed file under the app's key, atomic, shared safely between processes.

The attacks (a tampered file, a reset ledger, an older copy) are in
tests/model/attacks/test_attack_device_store.py; here: the format against a
plain reference decoder, keys, atomicity under SIGKILL, several processes,
failed writes, and the conversion of unencrypted stores.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import os
import signal
import sqlite3
import stat
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import msgpack
import pandas as pd
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from dmt_privacy import Field, Schema, SchemaError, ValidationError
from dmt_privacy.dp import LocalDPPerturber
from dmt_privacy.errors import StoreIntegrityError, StoreKeyError, StoreLockedError
from dmt_privacy.store import LocalStore

SCHEMA = Schema((
    Field("x", "numeric", bounds=(0.0, 10.0), grid=1.0),
    Field("note", "text"),
))
KEY = bytes(range(32))
ROOT = Path(__file__).resolve().parents[2]


def frame(n: int, start: int = 0) -> pd.DataFrame:
    return pd.DataFrame({"x": [float(i % 10) for i in range(start, start + n)],
                         "note": [f"note {i}" for i in range(start, start + n)]},
                        index=[f"r{i}" for i in range(start, start + n)])


def make(path: Path, n: int = 3, **kwargs) -> LocalStore:
    store = LocalStore(path, schema=SCHEMA, user_id="u", epsilon_budget=1.0, key=KEY, **kwargs)
    if n:
        store.add_records(frame(n))
    return store


# --- the format -------------------------------------------------------------------------------
def reference_open(data: bytes, key: bytes) -> tuple[int, sqlite3.Connection]:
    """The format as the module docstring states it, decoded the slow, obvious way."""
    magic, version, flags, key_id, salt, nonce, generation, length = struct.unpack(
        ">8sHH8s16s12sQQ", data[:64])
    assert (magic, version, flags, length) == (b"DMTSTORE", 1, 0, len(data) - 64)
    assert key_id == hmac.new(key, b"dmt sealed database v1 key id", hashlib.sha256).digest()[:8]
    aead_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt,
                    info=b"dmt sealed database v1 aes-256-gcm").derive(key)
    image = AESGCM(aead_key).decrypt(nonce, data[64:], data[:64])
    conn = sqlite3.connect(":memory:")
    conn.deserialize(image)
    return generation, conn


def test_the_file_is_the_documented_format(tmp_path):
    path = tmp_path / "d.db"
    with make(path) as store:
        generation = store.generation
    generation_read, conn = reference_open(path.read_bytes(), KEY)
    assert generation_read == generation == 4  # created, ledger tables, budget, records
    rows = conn.execute("SELECT record_id, payload FROM records ORDER BY seq").fetchall()
    assert rows[0][0] == "r0" and msgpack.unpackb(rows[0][1]) == [0.0, "note 0"]
    assert conn.execute("SELECT value FROM store_meta WHERE key = 'user_id'").fetchone() == ("u",)
    # the key id of the test key, a known answer
    assert path.read_bytes()[12:20].hex() == hmac.new(
        KEY, b"dmt sealed database v1 key id", hashlib.sha256).hexdigest()[:16]


@settings(max_examples=20, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10), st.text(max_size=30)), min_size=1, max_size=20))
def test_records_round_trip_through_the_sealed_file(tmp_path_factory, values):
    path = tmp_path_factory.mktemp("rt") / "d.db"
    data = pd.DataFrame({"x": [float(v) for v, _ in values], "note": [t for _, t in values]},
                        index=[f"r{i}" for i in range(len(values))])
    with make(path, n=0) as store:
        store.add_records(data)
    with LocalStore(path, key=KEY) as store:
        pd.testing.assert_frame_equal(store.records(), data.rename_axis("record_id"),
                                      check_index_type=False)


def test_every_write_reseals_with_fresh_randomness(tmp_path):
    path = tmp_path / "d.db"
    store = make(path)
    first = path.read_bytes()
    store.add_model_version("m.mlmodel")
    second = path.read_bytes()
    assert first[20:48] != second[20:48]  # new salt and nonce
    assert struct.unpack(">Q", second[48:56])[0] == struct.unpack(">Q", first[48:56])[0] + 1
    before = store.generation
    store.records()
    store.count("eligible")
    assert store.generation == before and path.read_bytes() == second  # reads write nothing


# --- keys -------------------------------------------------------------------------------------
def test_a_key_is_required_and_checked(tmp_path):
    path = tmp_path / "d.db"
    with pytest.raises(ValidationError, match=r"key=.*generate_key\(\)"):
        LocalStore(path, schema=SCHEMA, user_id="u")
    with pytest.raises(ValidationError, match="32 bytes"):
        LocalStore(path, schema=SCHEMA, user_id="u", key=b"short")
    with pytest.raises(ValidationError, match="32 bytes"):
        LocalStore(path, schema=SCHEMA, user_id="u", key="x" * 32)  # type: ignore[arg-type]
    assert not path.exists()
    key = LocalStore.generate_key()
    assert isinstance(key, bytes) and len(key) == 32 and key != LocalStore.generate_key()


def test_a_wrong_key_is_named_and_reads_nothing(tmp_path):
    path = tmp_path / "d.db"
    make(path).close()
    before = path.read_bytes()
    with pytest.raises(StoreKeyError, match=rf"{path}.*another key.*platform keystore"):
        LocalStore(path, key=bytes(32))
    assert path.read_bytes() == before


# --- several handles and processes ------------------------------------------------------------
def test_two_handles_see_each_others_writes(tmp_path):
    path = tmp_path / "d.db"
    a = make(path)
    b = LocalStore(path, key=KEY)
    b.add_records(frame(2, start=10))
    assert a.count() == 5
    t = LocalDPPerturber(SCHEMA.select(["x"]), epsilon={"x": 0.25}, ledger=a.ledger).fit()
    t.perturb(pd.DataFrame({"x": [1.0]}))
    assert b.ledger.spent.epsilon == pytest.approx(0.25)
    a.add_records(frame(1, start=20))  # a write starts from the latest file, nothing is lost
    assert b.count() == 6 and b.generation == a.generation
    a.close()
    b.close()


WRITER = textwrap.dedent("""
    import sys
    import pandas as pd
    from dmt_privacy.store import LocalStore

    path, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store = LocalStore(path, key=bytes(range(32)))
    for i in range(n):
        store.add_records(pd.DataFrame({"x": [1.0], "note": [name]}, index=[f"{name}-{i}"]))
""")


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    path = tmp_path / "d.db"
    with make(path, n=0) as store:
        generation = store.generation
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    children = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), name, "40"], env=env)
                for name in ("a", "b")]
    assert [c.wait(timeout=120) for c in children] == [0, 0]
    with LocalStore(path, key=KEY) as store:
        assert store.count() == 80 and store.generation == generation + 80


def test_a_held_lock_times_out_with_a_clear_error(tmp_path):
    path = tmp_path / "d.db"
    store = make(path, timeout=0.05)
    fd = os.open(f"{path}.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(StoreLockedError, match="write lock"):
            store.add_records(frame(1, start=9))
    finally:
        os.close(fd)
    assert store.count() == 3
    store.add_records(frame(1, start=9))
    assert store.count() == 4


# --- atomicity --------------------------------------------------------------------------------
KILLED = textwrap.dedent("""
    import os, signal, sys
    import pandas as pd
    import dmt_privacy.dp.ledger as ledger_module
    import dmt_privacy.dp.perturber as perturber_module
    from dmt_privacy import Field, Schema
    from dmt_privacy.dp import LocalDPPerturber
    from dmt_privacy.store import LocalStore

    path, where = sys.argv[1:3]
    real_replace = os.replace

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    def replace(src, dst):
        if where == "after_rename":
            real_replace(src, dst)
        die()

    if where in ("before_rename", "after_rename"):
        os.replace = replace
    elif where == "inside_charge":
        ledger_module.PrivacyLedger._before_commit = die
    else:  # between the charge and the release
        perturber_module.LocalDPPerturber._draw = die
    store = LocalStore(path, key=bytes(range(32)))
    if where.endswith("rename"):
        store.add_records(pd.DataFrame({"x": [1.0, 2.0], "note": ["new plaintext"] * 2},
                                       index=["n1", "n2"]))
    else:
        schema = Schema((Field("x", "numeric", bounds=(0.0, 10.0), grid=1.0),))
        t = LocalDPPerturber(schema, epsilon={"x": 0.5}, ledger=store.ledger).fit()
        t.perturb(pd.DataFrame({"x": [1.0]}))
    print("finished")  # never reached
""")


@pytest.mark.parametrize(("where", "count", "spent"), [
    ("before_rename", 3, 0.0), ("after_rename", 5, 0.0),
    ("inside_charge", 3, 0.0), ("between_charge_and_release", 3, 0.5),
])
def test_a_process_killed_at_any_point_leaves_the_old_or_the_new_state(tmp_path, where, count,
                                                                      spent):
    path = tmp_path / "d.db"
    make(path).close()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.run([sys.executable, "-c", KILLED, str(path), where], env=env,
                           capture_output=True, timeout=120, check=False)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    with LocalStore(path, key=KEY) as store:
        assert store.count() == count and store.ledger.spent.epsilon == pytest.approx(spent)
        stale = list(tmp_path.glob(".d.db.*.tmp"))
        assert len(stale) == (1 if where == "before_rename" else 0)
        for leftover in stale:  # a dead writer's temporary file is sealed too
            # (markers of 6 bytes and more: random ciphertext holds a given 3 bytes at each
            # position with a chance of 1 in 2**24, and "new" turned up in one run)
            sealed = leftover.read_bytes()
            assert b"note 0" not in sealed and b"new plaintext" not in sealed
        store.add_records(frame(1, start=50))  # the next write clears it
        assert not list(tmp_path.glob(".d.db.*.tmp"))


def test_a_failed_write_changes_neither_the_file_nor_the_store(tmp_path, monkeypatch):
    import dmt_privacy.sealed_database as sealed_module

    path = tmp_path / "d.db"
    store = make(path)
    before, generation = path.read_bytes(), store.generation

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sealed_module, "write_atomically", disk_full)
    with pytest.raises(OSError, match="No space"):
        store.add_records(frame(2, start=10))
    assert store.count() == 3 and store.generation == generation
    assert path.read_bytes() == before
    monkeypatch.undo()
    store.add_records(frame(2, start=10))
    assert store.count() == 5
    store.close()


def test_a_failed_first_write_creates_nothing(tmp_path, monkeypatch):
    import dmt_privacy.sealed_database as sealed_module

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sealed_module, "write_atomically", disk_full)
    with pytest.raises(OSError, match="No space"):
        make(tmp_path / "d.db")
    assert not (tmp_path / "d.db").exists()


def test_files_are_private_whatever_the_umask(tmp_path):
    umask = os.umask(0o000)
    try:
        with make(tmp_path / "d.db") as store:
            store.add_model_version("m.mlmodel")
    finally:
        os.umask(umask)
    for name in ("d.db", "d.db.lock"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600


# --- deletion, rollback -----------------------------------------------------------------------
def test_a_missing_file_is_refused_when_a_generation_was_kept(tmp_path):
    path = tmp_path / "d.db"
    with make(path) as store:
        generation = store.generation
    path.unlink()
    with pytest.raises(StoreIntegrityError, match="is missing"):
        LocalStore(path, key=KEY, min_generation=generation)
    with LocalStore(path, schema=SCHEMA, user_id="u", key=KEY, epsilon_budget=1.0):
        pass  # without it, a deleted store is a new store: the documented limit


def test_a_file_deleted_or_rolled_back_while_open_is_refused(tmp_path):
    path = tmp_path / "d.db"
    store = make(path)
    old = path.read_bytes()
    store.add_records(frame(1, start=9))
    path.write_bytes(old)
    with pytest.raises(StoreIntegrityError, match="went back from generation"):
        store.count()
    path.unlink()
    with pytest.raises(StoreIntegrityError, match="deleted or moved"):
        store.records()
    store.close()


def test_an_older_copy_put_back_during_a_failed_write_is_refused(tmp_path, monkeypatch):
    """An older copy put in the file's place while a write fails (its temporary file deleted,
    say) was taken as the store's state: the failed write forgot the generation it had
    reached, and the next write reused its number. The ledger is in the same file, so the ε
    spent since that copy came back with it (helper-68)."""
    import dmt_privacy.sealed_database as sealed_module

    path = tmp_path / "d.db"
    store = make(path)
    old = path.read_bytes()
    store.add_records(frame(2, start=20))
    generation = store.generation

    def put_back_and_fail(*args, **kwargs):
        path.write_bytes(old)
        raise FileNotFoundError(2, "the temporary file was removed")

    monkeypatch.setattr(sealed_module, "write_atomically", put_back_and_fail)
    with pytest.raises(StoreIntegrityError, match=f"went back from generation {generation} "):
        store.add_records(frame(1, start=9))
    with pytest.raises(StoreIntegrityError, match="went back from generation"):
        store.count()  # and on every read after it
    store.close()


def test_a_file_deleted_during_a_failed_write_is_refused(tmp_path, monkeypatch):
    """The store's file gone after a failed write: not an empty new store (its ledger empty)."""
    import dmt_privacy.sealed_database as sealed_module

    path = tmp_path / "d.db"
    store = make(path)

    def delete_and_fail(*args, **kwargs):
        path.unlink()
        raise OSError(5, "I/O error")

    monkeypatch.setattr(sealed_module, "write_atomically", delete_and_fail)
    with pytest.raises(StoreIntegrityError, match="deleted or moved"):
        store.add_records(frame(1, start=9))
    store.close()


def test_a_write_leaves_other_files_temporaries_alone(tmp_path, monkeypatch):
    """A store's write removes the temporary files its killed writers left, and no other: a
    personal model ``d.db.mlmodel`` being written next to the store ``d.db`` lost its
    temporary file, and its update failed (helper-68)."""
    from dmt_privacy import files

    path = tmp_path / "d.db"
    store = make(path)
    others = [tmp_path / ".d.db.mlmodel.abcd1234.tmp", tmp_path / ".d.db.x.tmp",
              tmp_path / ".d.db2.abcd1234.tmp"]
    stale = tmp_path / ".d.db.k1l2m3n_.tmp"  # as mkstemp names them
    for name in [*others, stale]:
        name.write_bytes(b"in flight")
    store.add_records(frame(1, start=9))
    assert all(name.exists() for name in others) and not stale.exists()
    assert files.temporaries_of(path) == []
    store.close()


# --- unencrypted stores from before -----------------------------------------------------------
def _legacy_store(path: Path) -> None:
    """A store as older dmt-sdk versions left it: plain SQLite in WAL mode."""
    with make(path.with_name("sealed.db")) as store:
        image = store._read().serialize()
    path.write_bytes(image)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("INSERT INTO model_versions VALUES (1, 'm.mlmodel', 'now', '')")


def test_an_unencrypted_store_is_converted_once(tmp_path):
    path = tmp_path / "old.db"
    _legacy_store(path)
    with pytest.raises(ValidationError, match="encrypt_existing"):
        LocalStore(path)
    with pytest.raises(SchemaError, match="plain SQLite file.*encrypt_existing"):
        LocalStore(path, key=KEY)
    LocalStore.encrypt_existing(path, key=KEY)
    assert path.read_bytes()[:8] == b"DMTSTORE"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not Path(f"{path}-wal").exists() and not Path(f"{path}-shm").exists()
    with LocalStore(path, key=KEY) as store:
        assert store.count() == 3 and store.personal_model is not None
        assert store.ledger.budget.epsilon == 1.0
    with pytest.raises(ValidationError, match="not an unencrypted LocalStore"):
        LocalStore.encrypt_existing(path, key=KEY)  # twice: refused, nothing changed
