"""Issue 15.6: the device store at rest, attacked by someone who has the file but not the key.

Before: a plain SQLite file, mode from the umask (0644), every record readable
(``shareable=False`` ones too), the ledger reset by anyone who recomputes its
unkeyed hash chain, and 69 of 300 random corruptions changed record values
silently while ``share()`` went ahead. Now the file is one AES-256-GCM sealed
blob under the app's key: it reads as noise, every altered or missing byte is
refused with a ``StoreIntegrityError`` naming the file, and nothing is shared.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import stat

import numpy as np
import pytest
from attack_kit import KEY as SERVER_KEY
from attack_kit import sharing_policy

from dmt_model.datasets import BOSTON_SCHEMA
from dmt_privacy.errors import DMTError, StoreIntegrityError, StoreKeyError
from dmt_privacy.sharing import share
from dmt_privacy.store import LocalStore

USER = "alice@example.org"
APP_KEY = bytes(range(32))


@pytest.fixture
def device(tmp_path, simulation, plan):
    """A victim's store: shareable and private records, one package shared, the ledger charged."""
    path = tmp_path / "device.db"
    umask = os.umask(0o022)
    try:
        store = LocalStore(path, schema=BOSTON_SCHEMA, user_id=USER, epsilon_budget=1000.0,
                           key=APP_KEY)
    finally:
        os.umask(umask)
    user = simulation.users[0]
    store.add_records(user.shareable)
    private = user.private.copy()
    private.index = [f"SECRET-ROW-{i}" for i in range(len(private))]
    store.add_records(private, shareable=False)
    result = share(store, sharing_policy(plan), SERVER_KEY.public_key())
    store.acknowledge(result.package_id)
    spent = store.ledger.spent.epsilon
    store.close()
    return path, private, spent


def test_the_file_reveals_nothing_and_is_private(device):
    path, private, _ = device
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = path.read_bytes()
    for secret in (USER, "SECRET-ROW-0", "dp_charges", "records", "SQLite format 3"):
        assert secret.encode() not in data
    with pytest.raises(sqlite3.DatabaseError):
        sqlite3.connect(path).execute("SELECT * FROM records").fetchall()
    beside = sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name))
    # no -wal, -journal or temporary file: the write lock, and share()'s (its turn)
    assert beside == [path.name, path.name + ".lock", path.name + ".share.lock"]
    for lock in beside[1:]:
        lock = path.with_name(lock)
        assert lock.stat().st_size == 0 and stat.S_IMODE(lock.stat().st_mode) == 0o600
    with LocalStore(path, key=APP_KEY) as store:  # the owner reads it all back
        assert store.records("private").index.tolist() == private.index.tolist()


def test_every_random_corruption_is_refused_and_nothing_is_shared(device, plan):
    path, _, _ = device
    good = path.read_bytes()
    rng = np.random.default_rng(15)
    refused = 0
    for _ in range(300):
        bad = bytearray(good)
        at = int(rng.integers(len(bad)))
        bad[at] ^= int(rng.integers(1, 256))
        path.write_bytes(bytes(bad))
        with pytest.raises(StoreIntegrityError, match=str(path)):
            store = LocalStore(path, key=APP_KEY)
            share(store, sharing_policy(plan), SERVER_KEY.public_key())
        refused += 1
    assert refused == 300


def test_every_truncation_is_refused(device):
    path, _, _ = device
    good = path.read_bytes()
    for length in sorted({0, 1, 7, 8, 40, 63, 64, len(good) // 2, len(good) - 16,
                          len(good) - 1, *range(0, len(good), max(1, len(good) // 50))}):
        path.write_bytes(good[:length])
        with pytest.raises(StoreIntegrityError, match="truncated|not a LocalStore") as info:
            LocalStore(path, key=APP_KEY)
        assert str(path) in str(info.value)


def _reset_ledger_as_before(path) -> None:
    """What worked on the plain store: delete every charge and recompute the unkeyed chain."""
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM dp_charges")
        eps, dlt, created = conn.execute(
            "SELECT epsilon_budget, delta_budget, created_at FROM dp_budget").fetchone()
        head = hashlib.sha256(b"\x00".join([b"dmt privacy ledger chain v1", USER.encode(),
                                            repr(eps).encode(), repr(dlt).encode(),
                                            created.encode()])).hexdigest()
        conn.execute("UPDATE dp_budget SET n_charges = 0, head = ?", (head,))


def test_the_ledger_cannot_be_reset(device, tmp_path):
    path, _, spent = device
    assert spent > 0
    with pytest.raises(sqlite3.DatabaseError):  # the old attack cannot even read the file
        _reset_ledger_as_before(path)
    # Put a fresh store in its place: made by the attacker (another key), or plaintext.
    other = tmp_path / "attacker.db"
    LocalStore(other, schema=BOSTON_SCHEMA, user_id=USER, epsilon_budget=1000.0,
               key=LocalStore.generate_key()).close()
    shutil.copyfile(other, path)
    with pytest.raises(StoreKeyError, match="another key"):
        LocalStore(path, key=APP_KEY)
    path.unlink()
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE dp_budget (user_id TEXT)")
    with pytest.raises(DMTError, match="unencrypted"):
        LocalStore(path, key=APP_KEY)


def test_a_whole_older_copy_is_refused_only_with_the_generation_kept_outside(device):
    path, _, _ = device
    old = path.read_bytes()
    with LocalStore(path, key=APP_KEY) as store:
        store.add_model_version("v2.mlmodel")
        generation = store.generation  # what the app keeps in its keychain
    path.write_bytes(old)
    with LocalStore(path, key=APP_KEY) as store:  # the documented limit: the file alone
        assert store.personal_model is None
    with pytest.raises(StoreIntegrityError, match="older copy"):
        LocalStore(path, key=APP_KEY, min_generation=generation)
