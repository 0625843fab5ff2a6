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
ledger can live in the device's :class:`LocalStore` database file.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from dmt_privacy.dp.receipt import ReleaseReceipt
from dmt_privacy.errors import BudgetExceededError, ValidationError

__all__ = ["UNACCOUNTED", "LedgerEntry", "PrivacyLedger", "Spend", "Unaccounted"]


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


class PrivacyLedger:
    """A user's privacy budget and every release charged against it.

    Parameters
    ----------
    database:
        Path of the SQLite file (created if missing), or an open
        ``sqlite3.Connection`` in autocommit mode (``isolation_level=None``).
    user_id:
        Whose budget this is.
    epsilon_budget, delta_budget:
        The budget, required the first time a user's ledger is opened and
        stored then. Reopening with ``None`` uses the stored budget; reopening
        with a different value raises (a budget is not raised by accident).
    """

    def __init__(
        self,
        database: str | os.PathLike[str] | sqlite3.Connection,
        *,
        user_id: str,
        epsilon_budget: float | None = None,
        delta_budget: float | None = None,
        timeout: float = 30.0,
    ) -> None:
        if not isinstance(user_id, str) or not user_id:
            raise ValidationError(f"user_id must be a non-empty string, got {user_id!r}.")
        self.user_id = user_id
        if isinstance(database, sqlite3.Connection):
            self._conn = database
            self._owns = False
        else:
            self._conn = sqlite3.connect(os.fspath(database), timeout=timeout,
                                         isolation_level=None)
            self._owns = True
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)
        self._budget = self._open_budget(epsilon_budget, delta_budget)

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
        self._conn.execute(
            "INSERT OR IGNORE INTO dp_budget VALUES (?, ?, ?, ?)",
            (self.user_id, eps, dlt, _now()),
        )
        return self._open_budget(None, None)

    @property
    def budget(self) -> Spend:
        return self._budget

    @property
    def spent(self) -> Spend:
        """Everything charged, released or interrupted: the sum over all rows."""
        return self._spent(self._conn)

    def _spent(self, conn: sqlite3.Connection) -> Spend:
        rows = conn.execute(
            "SELECT epsilon, delta FROM dp_charges WHERE user_id = ?", (self.user_id,)
        ).fetchall()
        return Spend(math.fsum(r[0] for r in rows), math.fsum(r[1] for r in rows))

    @property
    def remaining(self) -> Spend:
        spent = self.spent
        return Spend(max(0.0, self._budget.epsilon - spent.epsilon),
                     max(0.0, self._budget.delta - spent.delta))

    # --- charging ---------------------------------------------------------------
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
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            spent = self._spent(conn)
            over_eps = spent.epsilon + eps > self._budget.epsilon * (1 + _TOLERANCE)
            over_dlt = spent.delta + dlt > self._budget.delta * (1 + _TOLERANCE) + 1e-300
            if over_eps or (dlt > 0 and over_dlt):
                raise BudgetExceededError(
                    f"Release {receipt.release_id} would spend ε={eps:g}, δ={dlt:g} for user "
                    f"{self.user_id!r}, who has spent ε={spent.epsilon:g}, δ={spent.delta:g} of "
                    f"a budget ε={self._budget.epsilon:g}, δ={self._budget.delta:g}. Nothing "
                    "was released; lower the per-field ε, release fewer fields or records, or "
                    "wait for a new budget period."
                )
            conn.execute(
                "INSERT INTO dp_charges (release_id, user_id, epsilon, delta, status, receipt, "
                "charged_at) VALUES (?, ?, ?, ?, 'charged', ?, ?)",
                (receipt.release_id, self.user_id, eps, dlt, receipt.to_json(), _now()),
            )
            self._before_commit()
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _before_commit(self) -> None:
        """Called inside the charge transaction, before COMMIT; tests kill the process here."""

    def mark_released(self, release_id: str) -> None:
        """Mark a charged release as completed (its data was produced)."""
        cur = self._conn.execute(
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
