"""The per-user privacy ledger: sequential composition over every release, persisted in SQLite.

The ledger is charged by the code path that releases
(:meth:`LocalDPPerturber.perturb <dmt_privacy.dp.LocalDPPerturber.perturb>`
calls :meth:`PrivacyLedger.release` around the noise draw), never by a caller
remembering to. Each release is one row, keyed by its random ``release_id``:

1. **charge** — in one ``BEGIN IMMEDIATE`` transaction (so two processes on
   the same file cannot both pass the check) the ledger sums what the user
   has spent, refuses with :class:`BudgetExceededError` if the release would
   go over the budget, and inserts the row with status ``charged``. Only
   after this commit is any noise drawn.
2. **release** — once the perturbed data exists the row becomes
   ``released``.

A process killed between 1 and 2 leaves a ``charged`` row: it still counts
toward the budget (its noise may have been drawn and even shown), exactly
once, and :meth:`PrivacyLedger.pending` lists it. A process killed inside 1
leaves nothing: the transaction never committed, nothing was drawn. A retry
is a new release with a new id and a new charge, since it draws new noise.

Composition is basic sequential composition: spent ε is the sum of the ε of
all rows, spent δ the sum of their δ. Tables are prefixed ``dp_`` so the
ledger can live in the device's :class:`LocalStore` database, whose sealed
file (AES-256-GCM under the app's key) it writes through (a
:class:`LedgerStorage`): there nobody without the store key can read or edit
it. A ledger in a plain file relies on the hash chain below.

Integrity. Every charge extends a hash chain that starts from the user's
budget (SHA-256, or HMAC-SHA-256 under ``integrity_key``); the budget row
keeps the number of charges and the chain's head. Every read of what was
spent recomputes the chain over the rows (read without the index, so a
corrupted index cannot hide rows): an edited, deleted or corrupted charge or
budget raises :class:`~dmt_privacy.errors.LedgerIntegrityError` and nothing
is spent. Without a key this detects corruption and naive edits, not a
deliberate rewrite of the whole chain, nor the replacement of the file by an
older copy (that needs state outside the file: pass an ``integrity_key``
from the device's keychain and keep the head there). After each charge the
WAL is checkpointed into the database file, so copying the ``.db`` file
alone loses no charge. A user's budget is fixed when first stored:
reopening it with another value, even in a race with another process that
created it first, raises.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import hmac
import math
import os
import sqlite3
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from dmt_privacy.dp.receipt import ReleaseReceipt
from dmt_privacy.errors import BudgetExceededError, LedgerIntegrityError, ValidationError

__all__ = ["UNACCOUNTED", "LedgerEntry", "LedgerStorage", "PrivacyLedger", "Spend",
           "Unaccounted"]


class Unaccounted:
    """The type of :data:`UNACCOUNTED`: pass it as ``ledger=`` to release with NO accounting.

    A release made so is charged to nobody and its receipt names no user. For
    simulations and benchmarks, where there is no user to protect; never on a
    device.
    """

    _instance: Unaccounted | None = None

    def __new__(cls) -> Unaccounted:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNACCOUNTED"

    def __reduce__(self) -> str:
        return "UNACCOUNTED"


#: ``ledger=UNACCOUNTED``: release without charging any privacy ledger (simulations only).
UNACCOUNTED = Unaccounted()

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dp_budget (
    user_id TEXT PRIMARY KEY,
    epsilon_budget REAL NOT NULL,
    delta_budget REAL NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS dp_charges (
    release_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES dp_budget(user_id),
    epsilon REAL NOT NULL CHECK (epsilon >= 0),
    delta REAL NOT NULL CHECK (delta >= 0),
    status TEXT NOT NULL CHECK (status IN ('charged', 'released')),
    receipt TEXT NOT NULL,
    charged_at TEXT NOT NULL,
    released_at TEXT
);
CREATE INDEX IF NOT EXISTS dp_charges_user ON dp_charges(user_id);
"""
#: Columns added after format 1 of the tables (added in place to older files).
_CHAIN_COLUMNS = {"dp_budget": (("n_charges", "INTEGER"), ("head", "TEXT")),
                  "dp_charges": (("chain", "TEXT"),)}
_GENESIS = b"dmt privacy ledger chain v1"
_TOLERANCE = 1e-12  # relative: ten charges of 0.1 fit a budget of 1.0


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class Spend:
    """An amount of privacy: ε and δ."""

    epsilon: float
    delta: float


@dataclass(frozen=True)
class LedgerEntry:
    """One release as the ledger recorded it."""

    release_id: str
    epsilon: float
    delta: float
    status: str
    charged_at: str
    released_at: str | None
    receipt: ReleaseReceipt


class LedgerStorage(Protocol):
    """Where a ledger's tables live: an autocommit connection, its writes and its reads.

    A plain SQLite file or connection is one (each write a ``BEGIN IMMEDIATE``
    transaction); :class:`~dmt_privacy.sealed_database.SealedDatabase`, the
    device store's sealed file, is another (each write also re-seals the file).
    """

    connection: sqlite3.Connection

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """One write: committed on a normal exit, rolled back on an exception."""
        ...

    def refresh(self) -> None:
        """Make the connection see what other writers committed."""
        ...


class _PlainStorage:
    """A plain SQLite connection (autocommit): SQLite itself locks and persists."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self.connection
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def refresh(self) -> None:
        pass


class PrivacyLedger:
    """A user's privacy budget and every release charged against it.

    Parameters
    ----------
    database:
        Path of the SQLite file (created if missing), an open
        ``sqlite3.Connection`` in autocommit mode (``isolation_level=None``), or
        a :class:`LedgerStorage` (the device store passes its sealed file).
    user_id:
        Whose budget this is.
    epsilon_budget, delta_budget:
        The budget, required the first time a user's ledger is opened and
        stored then. Reopening with ``None`` uses the stored budget; reopening
        with a different value raises (a budget is not raised by accident).

    Copies. A ledger is an account, so it is never duplicated:
    ``copy.copy``, ``copy.deepcopy`` and so scikit-learn's ``clone`` return
    the same ledger, and a cloned perturber charges it. A ledger opened from
    a path with no ``integrity_key`` pickles as a reference to that file
    (the unpickled ledger reopens and charges the same file, which must
    exist; joblib workers can use it); any other ledger refuses to pickle,
    rather than write its key into the pickle or open a fresh account.
    """

    def __init__(
        self,
        database: str | os.PathLike[str] | sqlite3.Connection | LedgerStorage,
        *,
        user_id: str,
        epsilon_budget: float | None = None,
        delta_budget: float | None = None,
        timeout: float = 30.0,
        integrity_key: bytes | None = None,
    ) -> None:
        if not isinstance(user_id, str) or not user_id:
            raise ValidationError(f"user_id must be a non-empty string, got {user_id!r}.")
        if integrity_key is not None and (not isinstance(integrity_key, bytes)
                                          or len(integrity_key) < 16):
            raise ValidationError("integrity_key must be at least 16 bytes (e.g. a random key "
                                  "kept in the device's keychain), or None.")
        self.user_id = user_id
        self._integrity_key = integrity_key
        self._owns = isinstance(database, (str, os.PathLike))
        self._path: str | None = None  # set when the ledger opens its own file
        self._timeout = timeout
        try:
            if isinstance(database, (str, os.PathLike)):
                self._path = os.fspath(database)
                conn = sqlite3.connect(self._path, timeout=timeout, isolation_level=None)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                self._storage: LedgerStorage = _PlainStorage(conn)
            elif isinstance(database, sqlite3.Connection):
                self._storage = _PlainStorage(database)
            else:
                self._storage = database
            self._conn = self._storage.connection
            with self._storage.transaction() as conn:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                self._migrate()
            self._budget = self._open_budget(epsilon_budget, delta_budget)
        except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise
            raise self._corrupt(f"SQLite: {exc}") from None
        self._verify(self._conn)

    # --- integrity --------------------------------------------------------------
    def _migrate(self) -> None:
        """Add the chain columns to tables from before them; chain the rows already there.

        Runs inside the opening transaction."""
        added = False
        for table, columns in _CHAIN_COLUMNS.items():
            have = {r[1] for r in self._conn.execute(f"PRAGMA table_info({table})")}
            for name, kind in columns:
                if name not in have:
                    self._conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
                    added = True
        if added:  # an older file: its rows are trusted once, then chained
            users = [r[0] for r in self._conn.execute(
                "SELECT user_id FROM dp_budget WHERE head IS NULL")]
            for user in users:
                self._rechain(user)

    def _rechain(self, user: str) -> None:
        budget = self._conn.execute(
            "SELECT epsilon_budget, delta_budget, created_at FROM dp_budget WHERE user_id = ?",
            (user,)).fetchone()
        head = self._genesis(user, float(budget[0]), float(budget[1]), str(budget[2]))
        rows = self._conn.execute(
            "SELECT rowid, release_id, epsilon, delta, receipt, charged_at FROM dp_charges "
            "NOT INDEXED WHERE user_id = ? ORDER BY rowid", (user,)).fetchall()
        for rowid, release_id, eps, dlt, receipt, charged_at in rows:
            head = self._link(head, user, release_id, float(eps), float(dlt), receipt, charged_at)
            self._conn.execute("UPDATE dp_charges SET chain = ? WHERE rowid = ?", (head, rowid))
        self._conn.execute("UPDATE dp_budget SET n_charges = ?, head = ? WHERE user_id = ?",
                           (len(rows), head, user))

    def _digest(self, data: bytes) -> str:
        if self._integrity_key is not None:
            return hmac.new(self._integrity_key, data, hashlib.sha256).hexdigest()
        return hashlib.sha256(data).hexdigest()

    def _genesis(self, user: str, eps: float, dlt: float, created_at: str) -> str:
        return self._digest(b"\x00".join([_GENESIS, user.encode(), repr(eps).encode(),
                                           repr(dlt).encode(), created_at.encode()]))

    def _link(self, head: str, user: str, release_id: str, eps: float, dlt: float,
              receipt: str, charged_at: str) -> str:
        return self._digest(b"\x00".join([head.encode(), user.encode(), release_id.encode(),
                                           repr(eps).encode(), repr(dlt).encode(),
                                           receipt.encode(), charged_at.encode()]))

    def _corrupt(self, what: str) -> LedgerIntegrityError:
        return LedgerIntegrityError(
            f"The privacy ledger of user {self.user_id!r} fails its integrity check ({what}): "
            "it was edited, truncated or corrupted. Nothing was spent; restore the database "
            "from a good copy (or, knowingly, start a new ledger under a new user_id)."
        )

    def _verify(self, conn: sqlite3.Connection) -> Spend:
        """Recompute the chain over every row; the spend, or LedgerIntegrityError."""
        try:
            budget = conn.execute(
                "SELECT epsilon_budget, delta_budget, created_at, n_charges, head "
                "FROM dp_budget NOT INDEXED WHERE user_id = ?", (self.user_id,)).fetchall()
            rows = conn.execute(
                "SELECT release_id, user_id, epsilon, delta, receipt, charged_at, chain "
                "FROM dp_charges NOT INDEXED ORDER BY rowid").fetchall()
        except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
            raise self._corrupt(f"SQLite: {exc}") from None
        if len(budget) != 1:
            raise self._corrupt(f"{len(budget)} budget rows")
        eps_b, dlt_b, created_at, n_charges, head = budget[0]
        if (float(eps_b), float(dlt_b)) != (self._budget.epsilon, self._budget.delta):
            raise self._corrupt("the budget changed")
        chain = self._genesis(self.user_id, float(eps_b), float(dlt_b), str(created_at))
        spent_eps: list[float] = []
        spent_dlt: list[float] = []
        for release_id, user, eps, dlt, receipt, charged_at, stored in rows:
            if user != self.user_id:
                continue
            if not (isinstance(eps, float) and isinstance(dlt, float)):
                raise self._corrupt(f"charge {release_id!r} is not a number")
            chain = self._link(chain, user, str(release_id), eps, dlt, str(receipt),
                               str(charged_at))
            if stored != chain:
                raise self._corrupt(f"charge {release_id!r} does not match its chain")
            spent_eps.append(eps)
            spent_dlt.append(dlt)
        if n_charges != len(spent_eps) or head != chain:
            raise self._corrupt(f"{len(spent_eps)} charges where {n_charges!r} were recorded")
        return Spend(math.fsum(spent_eps), math.fsum(spent_dlt))

    # --- budget -----------------------------------------------------------------
    def _open_budget(self, epsilon: float | None, delta: float | None) -> Spend:
        row = self._conn.execute(
            "SELECT epsilon_budget, delta_budget FROM dp_budget WHERE user_id = ?",
            (self.user_id,),
        ).fetchone()
        if row is not None:
            stored = Spend(float(row[0]), float(row[1]))
            if (epsilon is not None and float(epsilon) != stored.epsilon) or (
                delta is not None and float(delta) != stored.delta
            ):
                raise ValidationError(
                    f"The ledger of user {self.user_id!r} already has budget ε={stored.epsilon}, "
                    f"δ={stored.delta}; got epsilon_budget={epsilon!r}, delta_budget={delta!r}. "
                    "Open it without a budget to use the stored one."
                )
            return stored
        if epsilon is None:
            raise ValidationError(
                f"User {self.user_id!r} has no privacy budget yet: pass epsilon_budget (and "
                "delta_budget if Gaussian releases are planned) the first time."
            )
        eps = float(epsilon)
        dlt = 0.0 if delta is None else float(delta)
        if not (math.isfinite(eps) and eps > 0):
            raise ValidationError(f"epsilon_budget must be a finite number > 0, got {epsilon!r}.")
        if not (math.isfinite(dlt) and 0 <= dlt < 1):
            raise ValidationError(f"delta_budget must lie in [0, 1), got {delta!r}.")
        created = _now()
        with self._storage.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO dp_budget (user_id, epsilon_budget, delta_budget, "
                "created_at, n_charges, head) VALUES (?, ?, ?, ?, 0, ?)",
                (self.user_id, eps, dlt, created, self._genesis(self.user_id, eps, dlt, created)),
            )
        # Re-read with the budget asked for: if another process stored the user's budget
        # first with another value, this raises instead of handing that budget over.
        return self._open_budget(eps, dlt)

    @property
    def budget(self) -> Spend:
        return self._budget

    @property
    def spent(self) -> Spend:
        """Everything charged, released or interrupted: the sum over all rows."""
        self._storage.refresh()
        return self._spent(self._conn)

    def _spent(self, conn: sqlite3.Connection) -> Spend:
        return self._verify(conn)

    @property
    def remaining(self) -> Spend:
        spent = self.spent
        return Spend(max(0.0, self._budget.epsilon - spent.epsilon),
                     max(0.0, self._budget.delta - spent.delta))

    # --- charging ---------------------------------------------------------------
    def _fits(self, spent: Spend, epsilon: float, delta: float) -> bool:
        """Whether ``epsilon`` and ``delta`` more fit the budget after ``spent`` (within a
        relative tolerance, so ten charges of 0.1 fit a budget of 1.0)."""
        over_eps = spent.epsilon + epsilon > self._budget.epsilon * (1 + _TOLERANCE)
        over_dlt = spent.delta + delta > self._budget.delta * (1 + _TOLERANCE) + 1e-300
        return not (over_eps or (delta > 0 and over_dlt))

    def can_spend(self, epsilon: float, delta: float = 0.0) -> bool:
        """Whether :meth:`charge` would accept ``epsilon`` (and ``delta``) now: for callers
        that must know before any of several releases is drawn."""
        return self._fits(self.spent, float(epsilon), float(delta))

    def charge(self, receipt: ReleaseReceipt) -> None:
        """Record the release as charged, or raise :class:`BudgetExceededError`.

        Atomic: the check and the insert happen in one immediate transaction.
        """
        if receipt.user_id not in (None, self.user_id):
            raise ValidationError(
                f"Receipt {receipt.release_id} is for user {receipt.user_id!r}, not for this "
                f"ledger's user {self.user_id!r}."
            )
        eps, dlt = float(receipt.epsilon), float(receipt.delta)
        # (a δ of 1 or more is a cost, over any budget: _fits refuses it as such; a release
        # of many records under user-level δ adds up to one)
        if not (math.isfinite(eps) and eps >= 0 and math.isfinite(dlt) and dlt >= 0):
            raise ValidationError(
                f"Release {receipt.release_id} states ε={eps!r}, δ={dlt!r}: not a privacy cost "
                "(finite numbers ≥ 0); nothing was charged. The receipt is corrupt or was "
                "built by hand.")
        with self._storage.transaction() as conn:
            spent = self._spent(conn)
            if not self._fits(spent, eps, dlt):
                raise BudgetExceededError(
                    f"Release {receipt.release_id} would spend ε={eps:g}, δ={dlt:g} for user "
                    f"{self.user_id!r}, who has spent ε={spent.epsilon:g}, δ={spent.delta:g} of "
                    f"a budget ε={self._budget.epsilon:g}, δ={self._budget.delta:g}. Nothing "
                    "was released; lower the per-field ε, release fewer fields or records, or "
                    "wait for a new budget period."
                )
            head, n_charges = conn.execute(
                "SELECT head, n_charges FROM dp_budget WHERE user_id = ?", (self.user_id,)
            ).fetchone()
            text, charged_at = receipt.to_json(), _now()
            chain = self._link(head, self.user_id, receipt.release_id, eps, dlt, text,
                               charged_at)
            conn.execute(
                "INSERT INTO dp_charges (release_id, user_id, epsilon, delta, status, receipt, "
                "charged_at, chain) VALUES (?, ?, ?, ?, 'charged', ?, ?, ?)",
                (receipt.release_id, self.user_id, eps, dlt, text, charged_at, chain),
            )
            conn.execute("UPDATE dp_budget SET n_charges = ?, head = ? WHERE user_id = ?",
                         (int(n_charges) + 1, chain, self.user_id))
            self._before_commit()
        self._checkpoint()

    def _checkpoint(self) -> None:
        """Move the WAL into the database file, so a copy of the ``.db`` alone has the charge."""
        try:
            self._conn.execute("PRAGMA wal_checkpoint(FULL)").fetchall()
        except sqlite3.OperationalError:  # another connection holds a lock: retried next time
            pass

    def _before_commit(self) -> None:
        """Called inside the charge transaction, before COMMIT; tests kill the process here."""

    def mark_released(self, release_id: str) -> None:
        """Mark a charged release as completed (its data was produced)."""
        with self._storage.transaction() as conn:
            cur = conn.execute(
                "UPDATE dp_charges SET status = 'released', released_at = ? "
                "WHERE release_id = ? AND user_id = ?",
                (_now(), release_id, self.user_id),
            )
            if cur.rowcount != 1:
                raise ValidationError(
                    f"Release {release_id!r} was never charged to user {self.user_id!r}."
                )

    @contextlib.contextmanager
    def release(self, receipt: ReleaseReceipt) -> Iterator[None]:
        """Charge on entry, mark released on a normal exit.

        If the block raises, the charge stays (noise may have been drawn) and the
        row stays ``charged``: it appears in :meth:`pending`.
        """
        self.charge(receipt)
        yield
        self.mark_released(receipt.release_id)

    # --- reading ----------------------------------------------------------------
    def entries(self) -> list[LedgerEntry]:
        self._storage.refresh()
        rows = self._conn.execute(
            "SELECT release_id, epsilon, delta, status, charged_at, released_at, receipt "
            "FROM dp_charges WHERE user_id = ? ORDER BY charged_at, release_id",
            (self.user_id,),
        ).fetchall()
        return [
            LedgerEntry(r[0], float(r[1]), float(r[2]), r[3], r[4], r[5],
                        ReleaseReceipt.from_json(r[6]))
            for r in rows
        ]

    def pending(self) -> list[LedgerEntry]:
        """Charged releases that never completed (e.g. the process was killed); still counted."""
        return [e for e in self.entries() if e.status == "charged"]

    # --- copies -----------------------------------------------------------------
    def __copy__(self) -> PrivacyLedger:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> PrivacyLedger:
        return self  # the same account: a copy would be a second budget for the same user

    def __reduce__(self) -> tuple[Any, ...]:
        if self._path is None or self._integrity_key is not None:
            what = ("has an integrity_key, which a pickle would hold in clear"
                    if self._integrity_key is not None else
                    "was opened on a connection or store, which cannot be reopened elsewhere")
            raise ValidationError(
                f"The privacy ledger of user {self.user_id!r} cannot be pickled: it {what}. "
                "Keep the estimator in this process (n_jobs=1, or joblib's threading backend)."
            )
        return (_reopen, (self._path, self.user_id, self._timeout))

    # --- lifetime ---------------------------------------------------------------
    def close(self) -> None:
        if self._owns:
            self._conn.close()

    def __enter__(self) -> PrivacyLedger:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        spent = self.spent
        return (
            f"PrivacyLedger(user_id={self.user_id!r}, spent ε={spent.epsilon:g}/"
            f"{self._budget.epsilon:g}, δ={spent.delta:g}/{self._budget.delta:g})"
        )


def _reopen(path: str, user_id: str, timeout: float) -> PrivacyLedger:
    """The ledger a pickle refers to: the same file, which must still exist."""
    if not os.path.isfile(path):
        raise ValidationError(
            f"The pickled privacy ledger of user {user_id!r} refers to {path!r}, which does not "
            "exist here; a new file would be a fresh budget, so it is refused."
        )
    return PrivacyLedger(path, user_id=user_id, timeout=timeout)
