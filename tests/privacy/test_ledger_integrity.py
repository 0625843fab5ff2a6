"""Issue 14.6 / 4: the ledger detects tampering and corruption, loses no charge when its file
is copied alone, and fixes a user's budget at creation, even in a race."""

from __future__ import annotations

import shutil
import sqlite3

import pandas as pd
import pytest

from dmt_privacy import Field, Schema, ValidationError
from dmt_privacy.dp import LocalDPPerturber, PrivacyLedger
from dmt_privacy.errors import DMTError, LedgerIntegrityError

SCHEMA = Schema((Field("x", "numeric", bounds=(0.0, 10.0), grid=1.0),))


def charged_ledger(path, n: int = 5) -> None:
    with PrivacyLedger(path, user_id="u", epsilon_budget=10.0) as ledger:
        t = LocalDPPerturber(SCHEMA, epsilon={"x": 0.5}, ledger=ledger).fit()
        for _ in range(n):
            t.perturb(pd.DataFrame({"x": [1.0]}))


def test_an_edited_or_deleted_charge_is_refused(tmp_path):
    for sql in ("UPDATE dp_charges SET epsilon = 0.0 WHERE rowid = 1",
                "DELETE FROM dp_charges WHERE rowid = 2",
                "UPDATE dp_budget SET epsilon_budget = 1000.0",
                "DROP INDEX dp_charges_user"):
        path = tmp_path / f"{abs(hash(sql))}.db"
        charged_ledger(path)
        with sqlite3.connect(path) as conn:
            conn.execute(sql)
        if sql.startswith("DROP"):  # the index is not trusted: nothing lost, nothing wrong
            with PrivacyLedger(path, user_id="u") as ledger:
                assert ledger.spent.epsilon == pytest.approx(2.5)
            continue
        with pytest.raises(LedgerIntegrityError, match="integrity check"):
            PrivacyLedger(path, user_id="u")


def test_flipped_bytes_never_lower_what_was_spent(tmp_path):
    """Inverting single bytes used to give a lower spent with no error (143 of 36,864)."""
    path = tmp_path / "d.db"
    charged_ledger(path)
    original = path.read_bytes()
    outcomes = {"same": 0, "refused": 0}
    for at in range(0, len(original), 7):
        data = bytearray(original)
        data[at] ^= 0xFF
        broken = tmp_path / "broken.db"
        broken.write_bytes(bytes(data))
        for suffix in ("-wal", "-shm"):
            (tmp_path / f"broken.db{suffix}").unlink(missing_ok=True)
        try:
            with PrivacyLedger(broken, user_id="u") as ledger:
                spent = ledger.spent.epsilon
        except DMTError:
            outcomes["refused"] += 1
            continue
        assert spent == pytest.approx(2.5), at  # never less, never silently
        outcomes["same"] += 1
    assert outcomes["refused"] > 0


def test_copying_the_db_file_alone_keeps_every_charge(tmp_path):
    path = tmp_path / "d.db"
    ledger = PrivacyLedger(path, user_id="u", epsilon_budget=10.0)
    t = LocalDPPerturber(SCHEMA, epsilon={"x": 0.5}, ledger=ledger).fit()
    t.perturb(pd.DataFrame({"x": [1.0, 2.0]}))
    shutil.copyfile(path, tmp_path / "copy.db")  # the -wal file is left behind
    ledger.close()
    with PrivacyLedger(tmp_path / "copy.db", user_id="u") as copy:
        assert copy.spent.epsilon == pytest.approx(1.0)


def test_a_budget_created_by_a_racing_process_is_not_handed_over(tmp_path, monkeypatch):
    """Two processes opening a new user at once: one asked 1.0 and silently got 10.0."""
    import dmt_privacy.dp.ledger as ledger_module

    path = tmp_path / "d.db"
    PrivacyLedger(path, user_id="other", epsilon_budget=1.0).close()  # tables exist
    real_now = ledger_module._now
    raced = []

    def racing_now() -> str:
        if not raced:  # the other process stores u's budget between our check and insert
            raced.append(True)
            with PrivacyLedger(path, user_id="u", epsilon_budget=10.0):
                pass
        return real_now()

    monkeypatch.setattr(ledger_module, "_now", racing_now)
    with pytest.raises(ValidationError, match="already has budget"):
        PrivacyLedger(path, user_id="u", epsilon_budget=1.0)
    monkeypatch.setattr(ledger_module, "_now", real_now)
    with PrivacyLedger(path, user_id="u") as ledger:
        assert ledger.budget.epsilon == 10.0


def _rewrite_charge(path, new_epsilon: float) -> None:
    """What someone who knows the (public) chain algorithm does: edit a charge and recompute
    every unkeyed SHA-256 link and the head."""
    import hashlib

    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE dp_charges SET epsilon = ? WHERE rowid = 1", (new_epsilon,))
        eps_b, dlt_b, created = conn.execute(
            "SELECT epsilon_budget, delta_budget, created_at FROM dp_budget").fetchone()
        head = hashlib.sha256(b"\x00".join([b"dmt privacy ledger chain v1", b"u",
                                            repr(eps_b).encode(), repr(dlt_b).encode(),
                                            created.encode()])).hexdigest()
        rows = conn.execute("SELECT rowid, release_id, epsilon, delta, receipt, charged_at "
                            "FROM dp_charges ORDER BY rowid").fetchall()
        for rowid, rid, eps, dlt, receipt, at in rows:
            head = hashlib.sha256(b"\x00".join([head.encode(), b"u", rid.encode(),
                                                repr(eps).encode(), repr(dlt).encode(),
                                                receipt.encode(), at.encode()])).hexdigest()
            conn.execute("UPDATE dp_charges SET chain = ? WHERE rowid = ?", (head, rowid))
        conn.execute("UPDATE dp_budget SET head = ?", (head,))


def test_a_rewritten_chain_passes_unkeyed_and_is_refused_with_a_key(tmp_path):
    from dmt_privacy.store import LocalStore

    plain = tmp_path / "plain.db"
    charged_ledger(plain)
    _rewrite_charge(plain, 0.0)
    with PrivacyLedger(plain, user_id="u") as ledger:  # the documented limit
        assert ledger.spent.epsilon == pytest.approx(2.0)
    key = bytes(range(32))
    keyed = tmp_path / "keyed.db"
    with PrivacyLedger(keyed, user_id="u", epsilon_budget=10.0, integrity_key=key) as ledger:
        t = LocalDPPerturber(SCHEMA, epsilon={"x": 0.5}, ledger=ledger).fit()
        t.perturb(pd.DataFrame({"x": [1.0]}))
    _rewrite_charge(keyed, 0.0)
    with pytest.raises(LedgerIntegrityError):
        PrivacyLedger(keyed, user_id="u", integrity_key=key)
    # In a device store the ledger is inside the sealed file: it cannot even be read.
    store_path = tmp_path / "store.db"
    store = LocalStore(store_path, schema=SCHEMA, user_id="u", epsilon_budget=10.0,
                       ledger_key=key, key=LocalStore.generate_key())
    t = LocalDPPerturber(SCHEMA, epsilon={"x": 0.5}, ledger=store.ledger).fit()
    t.perturb(pd.DataFrame({"x": [1.0]}))
    store.close()
    with pytest.raises(sqlite3.DatabaseError):
        _rewrite_charge(store_path, 0.0)
