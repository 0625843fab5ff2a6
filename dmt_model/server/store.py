"""The server's SQL store of shared records, through SQLAlchemy (SQLite by default, any URL).

Tables:

- ``packages``: one row per accepted share package, keyed by its random
  package id (a replayed package cannot be stored twice), with its schema
  id, coarse creation day, record count and privacy receipt (JSON: k, l, t,
  ε per field, mechanisms; no record values);
- ``records``: one row per (package, k-anonymity class): the class key,
  the number of records and their row positions in the package (no values);
- ``classes``: one row per k-anonymity class: how many records and how
  many distinct packages it holds, and whether any of it has been released
  (``released_at``: the first release);
- ``cohorts`` and ``released_blocks``: the release. Records leave quarantine
  only as a *cohort*: the blocks of a class that are still quarantined,
  released together once they alone meet the server's
  :class:`~dmt_privacy.anonymity.ReleaseRule` (k distinct packages, l and t
  with each package weighing the same). Later records of the class wait for
  a cohort of their own, so two snapshots of the released data differ by
  whole cohorts, each meeting the rule (:func:`release_due`,
  :meth:`SharedStore.release`). A block not in ``released_blocks`` is
  quarantined, whatever ``classes.released`` says;
- ``withdrawn_blocks``: blocks that left the release for good. Removing a
  package (:mod:`dmt_model.server.admin`) takes its whole cohort out of the
  release; the other blocks of that cohort were seen released with it, so
  released again (with one newcomer, say) two snapshots would differ by the
  newcomer's records alone, or by the removed package's. They are never
  released again, and never trained on;
- ``pending_blocks``: the blocks not yet released (``records`` less
  ``released_blocks`` and ``withdrawn_blocks``, with their class), kept in the same transactions by
  every writer, so the release reads what waits instead of every block ever
  stored (:func:`released_classes`), and reads only it: a block both pending
  and released could only come from a writer that broke this, and the key of
  ``released_blocks`` refuses to release it twice. A database from before it
  gets it filled on :func:`connect`. On PostgreSQL the writers also vacuum it
  (:class:`PendingVacuum`);
- ``removed_packages``: the ids of packages an operator removed, so that the
  same sealed bytes sent again (a device retrying, or anyone who kept them) are
  answered as a replay and never stored again: a removal is for good;
- ``envelopes``: the SHA-256 of each stored package's sealed bytes and its id,
  kept when the package is removed: a device's retry is the envelope it sealed,
  and once the server key it was sealed to is retired nothing opens it, so the
  digest is what answers it as a replay (:meth:`~dmt_model.server.ingest.Ingestor.check`);
- ``data_keys``: the server data keys, each sealed (HPKE) to the server's
  public key;
- ``spent_tokens``, ``token_keys`` and ``token_issuance``: the per-device
  package limit (:mod:`dmt_model.server.issuer`): each spent Privacy Pass token
  (its nonce, its period and the package it came with; kept when the package
  is removed, so a token is spent for good), the issuer's RSA key of each
  period (sealed to the server's public key like the data keys) and how many
  tokens each attested device (a hash of its id) received in each period.
  With a policy that requires tokens, the release rule counts distinct tokens
  of one period instead of packages (:func:`release_due`).

Encryption at rest: each package's records (its decrypted msgpack payload,
byte for byte as the device encoded it, in ``packages.payload``) are
encrypted with AES-256-GCM under a subkey of a random 256-bit **data key**.
The data key is never stored in clear: the database holds it sealed to the
server's public key (:func:`dmt_privacy.seal.seal`, info
``b"dmt server data key v1"``), so the database alone opens nothing; the
private key file, kept apart from the database, is needed to unwrap it. The
nonce is random (96 bits) and the associated data binds the ciphertext to
its package id and data key id, so payloads cannot be swapped between rows.
A class is named by an HMAC-SHA256 (second subkey) of its generalized
quasi-identifier values, never by the values themselves. Per package rather
than per row: one AES-GCM call and no re-encoding per package keeps
ingestion fast; the release decision is per class, applied when reading.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import hmac
import json
import logging
import os
import secrets
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import pandas as pd
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import (
    Boolean,
    Engine,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    bindparam,
    create_engine,
    delete,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from dmt_privacy.anonymity.release import ReleaseRule
from dmt_privacy.errors import DMTError, InvalidPackage, ValidationError
from dmt_privacy.package import PrivacyReceipt, decode_package
from dmt_privacy.seal import (
    ServerKeyring,
    ServerPrivateKey,
    envelope_key_id,
    open_sealed,
    seal,
)

__all__ = [
    "CLASSES",
    "COHORTS",
    "DATA_KEYS",
    "ENVELOPES",
    "PACKAGES",
    "PENDING_BLOCKS",
    "RECORDS",
    "RELEASED_BLOCKS",
    "REMOVED_PACKAGES",
    "SPENT_TOKENS",
    "TOKEN_ISSUANCE",
    "TOKEN_KEYS",
    "WITHDRAWN_BLOCKS",
    "Base",
    "ClassRow",
    "CohortRow",
    "DataKey",
    "DataKeyRow",
    "EnvelopeRow",
    "PackageRow",
    "PendingBlock",
    "PendingVacuum",
    "RecordBlock",
    "ReleasedBlock",
    "SharedStore",
    "SpentTokenRow",
    "TokenIssuanceRow",
    "TokenKeyRow",
    "WithdrawnBlock",
    "WriterLock",
    "connect",
    "consistent_reads",
    "lock_classes",
    "open_engine",
    "payload_aad",
    "release_due",
    "release_rule",
    "released_classes",
]

DATA_KEY_INFO = b"dmt server data key v1"
#: PostgreSQL advisory lock taken while a fresh store's data key is made ("dmt_dkey")
_DATA_KEY_LOCK = int.from_bytes(b"dmt_dkey", "big")
log = logging.getLogger("dmt.server.store")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class Base(DeclarativeBase):
    pass


class PackageRow(Base):
    __tablename__ = "packages"

    package_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    schema_id: Mapped[str] = mapped_column(String(32))
    created_day: Mapped[str] = mapped_column(String(16))
    received_at: Mapped[str] = mapped_column(String(32))
    n_records: Mapped[int] = mapped_column(Integer)
    receipt: Mapped[str] = mapped_column(Text)
    key_id: Mapped[str] = mapped_column(ForeignKey("data_keys.key_id"))
    nonce: Mapped[bytes] = mapped_column(LargeBinary)
    payload: Mapped[bytes] = mapped_column(LargeBinary)


class RecordBlock(Base):
    __tablename__ = "records"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    package_id: Mapped[str] = mapped_column(ForeignKey("packages.package_id"))
    class_key: Mapped[str] = mapped_column(String(64))
    n_records: Mapped[int] = mapped_column(Integer)
    rows: Mapped[bytes] = mapped_column(LargeBinary)  # little-endian uint32 row positions

    __table_args__ = (Index("records_class", "class_key"), Index("records_package", "package_id"))


class ClassRow(Base):
    __tablename__ = "classes"

    class_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    n_records: Mapped[int] = mapped_column(Integer)
    n_packages: Mapped[int] = mapped_column(Integer)
    released: Mapped[bool] = mapped_column(Boolean, default=False)
    released_at: Mapped[str | None] = mapped_column(String(32), nullable=True)


class CohortRow(Base):
    """One release: the blocks of one class that left quarantine together."""

    __tablename__ = "cohorts"

    cohort_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    class_key: Mapped[str] = mapped_column(String(64), index=True)
    n_records: Mapped[int] = mapped_column(Integer)
    n_packages: Mapped[int] = mapped_column(Integer)
    released_at: Mapped[str] = mapped_column(String(32))


class ReleasedBlock(Base):
    """A released record block and the cohort it left quarantine with (once: the key)."""

    __tablename__ = "released_blocks"

    block_id: Mapped[int] = mapped_column(ForeignKey("records.id"), primary_key=True)
    cohort_id: Mapped[str] = mapped_column(ForeignKey("cohorts.cohort_id"), index=True)


class WithdrawnBlock(Base):
    """A block taken out of the release for good (``withdrawn_blocks``): see the module."""

    __tablename__ = "withdrawn_blocks"

    block_id: Mapped[int] = mapped_column(ForeignKey("records.id"), primary_key=True)
    withdrawn_at: Mapped[str] = mapped_column(String(32))


class PendingBlock(Base):
    """A record block still in quarantine, by class: what :func:`released_classes` reads."""

    __tablename__ = "pending_blocks"

    block_id: Mapped[int] = mapped_column(ForeignKey("records.id"), primary_key=True)
    class_key: Mapped[str] = mapped_column(String(64), index=True)


class DataKeyRow(Base):
    __tablename__ = "data_keys"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    wrapped: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[str] = mapped_column(String(32))


class SpentTokenRow(Base):
    """A spent rate-limiting token: its nonce (hex), its period and the package it came with."""

    __tablename__ = "spent_tokens"

    token_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer)
    package_id: Mapped[str] = mapped_column(String(64), index=True)  # no FK: outlives removal
    spent_at: Mapped[str] = mapped_column(String(32))


class TokenKeyRow(Base):
    """The issuer's RSA key of one period, sealed (HPKE) to the server's public key."""

    __tablename__ = "token_keys"

    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_key_id: Mapped[str] = mapped_column(String(64), unique=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary)
    wrapped: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[str] = mapped_column(String(32))


class RemovedPackageRow(Base):
    """The id of a package an operator removed (:func:`dmt_model.server.admin.remove_packages`):
    the same id sent again is never stored again."""

    __tablename__ = "removed_packages"

    package_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    removed_at: Mapped[str] = mapped_column(String(32))


class EnvelopeRow(Base):
    """The SHA-256 (hex) of a stored package's sealed bytes: what recognises a retry sealed
    to a server key since retired, which nothing opens any more. Kept when the package is
    removed, as its id in ``removed_packages`` is."""

    __tablename__ = "envelopes"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    package_id: Mapped[str] = mapped_column(String(64))


class TokenIssuanceRow(Base):
    """Tokens issued to one attested device (SHA-256 of its id) in one period."""

    __tablename__ = "token_issuance"

    device: Mapped[str] = mapped_column(String(64), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    issued: Mapped[int] = mapped_column(Integer)


PACKAGES = cast(Table, PackageRow.__table__)
RECORDS = cast(Table, RecordBlock.__table__)
CLASSES = cast(Table, ClassRow.__table__)
DATA_KEYS = cast(Table, DataKeyRow.__table__)
COHORTS = cast(Table, CohortRow.__table__)
RELEASED_BLOCKS = cast(Table, ReleasedBlock.__table__)
PENDING_BLOCKS = cast(Table, PendingBlock.__table__)
WITHDRAWN_BLOCKS = cast(Table, WithdrawnBlock.__table__)
SPENT_TOKENS = cast(Table, SpentTokenRow.__table__)
REMOVED_PACKAGES = cast(Table, RemovedPackageRow.__table__)
ENVELOPES = cast(Table, EnvelopeRow.__table__)
TOKEN_KEYS = cast(Table, TokenKeyRow.__table__)
TOKEN_ISSUANCE = cast(Table, TokenIssuanceRow.__table__)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")  # first: the switch to WAL may wait a lock
    cursor.execute("PRAGMA journal_mode=WAL")
    # WAL + FULL: the log is flushed at every commit, so a package acknowledged as stored
    # survives a power loss too (under NORMAL it survived a killed process only, and a
    # device that was told "accepted" never sends its records again). One flush a group.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_pragmas_once(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """At checkout, the server's settings on a caller's engine's connection that lacks them
    (its pool may hold connections opened before the store saw it). The switch to WAL
    needs the file to itself: where another connection holds a transaction, or the engine
    is read-only, the file stays in its rollback journal (said once a connection, tried
    again at the next checkout) and the caller's work goes on, as it did before."""
    import sqlite3

    info = record.info
    cursor = dbapi_connection.cursor()
    try:
        if not info.get("dmt_pragmas"):
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            info["dmt_pragmas"] = True
        if not info.get("dmt_wal"):
            cursor.execute("PRAGMA busy_timeout=0")  # never make the caller wait for it
            try:
                cursor.execute("PRAGMA journal_mode=WAL").fetchone()
                info["dmt_wal"] = True
            except sqlite3.Error as exc:
                if not info.get("dmt_wal_said"):
                    info["dmt_wal_said"] = True
                    log.warning("A caller's SQLite engine stays in its rollback journal for "
                                "now (the switch to WAL failed: %s); it is tried again at the "
                                "next checkout. Open the store by its path "
                                "(dmt_model.server.store.connect) to have WAL from the start.",
                                exc)
        cursor.execute("PRAGMA busy_timeout=30000")
    finally:
        cursor.close()


def open_engine(db: str | Engine) -> Engine:
    """The store's engine for ``db``: :func:`connect` for a URL or path, else the caller's
    Engine as it is, but a SQLite one with the server's settings on every connection (a
    flush at every commit, foreign keys, the busy timeout, WAL), those it pooled already
    included, at their next checkout. Without them a caller's engine wrote without enforced
    foreign keys, in the rollback journal, with no busy timeout (helper-78). The settings
    stay on the engine, for the caller's own use of it too, and WAL stays on the file."""
    if not isinstance(db, Engine):
        return connect(db)
    if db.dialect.name == "sqlite" and not event.contains(db, "connect", _sqlite_pragmas) \
            and not event.contains(db, "checkout", _sqlite_pragmas_once):
        event.listen(db, "checkout", _sqlite_pragmas_once)
    return db


def connect(db_url: str, **engine_options: Any) -> Engine:
    """An engine for ``db_url`` with the tables created (a bare path means a SQLite file).

    ``engine_options`` go to :func:`sqlalchemy.create_engine` (e.g. ``pool_size``). For a
    server database (not SQLite) connections are checked before use (``pool_pre_ping``), so
    a restarted PostgreSQL costs the pool its stale connections, not the next requests.
    ``postgresql://`` URLs use psycopg 3 (the ``server`` extra's driver).
    """
    if "://" not in db_url:
        db_url = f"sqlite:///{db_url}"
    if db_url.startswith(("postgresql://", "postgres://")):
        db_url = "postgresql+psycopg://" + db_url.split("://", 1)[1]  # psycopg 3, the extra's
    if not db_url.startswith("sqlite"):
        engine_options.setdefault("pool_pre_ping", True)
    engine = create_engine(db_url, **engine_options)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    Base.metadata.create_all(engine)
    _fill_pending(engine)
    return engine


class WriterLock:
    """Writers of one SQLite file take turns here, across threads and processes.

    SQLite lets one writer in at a time; another one waiting for it sleeps in
    SQLite's busy handler (1, 2, 5, 10... ms, whether or not the lock was freed
    meanwhile), which left two `dmt serve` workers idle a third of the time
    and put 150 ms in the p99. This lock is an ``flock`` on a file next to the
    database (``<database>-writer.lock``): a waiting writer is woken as soon as
    the lock is free. SQLite's own locking still guards the file (writers that
    do not take this lock wait in the busy handler, as before). Any other
    database, an in-memory one, or a folder where the lock file cannot be made
    (then SQLite's locking alone): no lock.
    """

    def __init__(self, engine: Engine) -> None:
        self._threads = threading.Lock()
        self._fd: int | None = None
        database = engine.url.database if engine.dialect.name == "sqlite" else None
        self.path: str | None = None
        if database and database != ":memory:" and not database.startswith("file:"):
            try:
                import fcntl  # noqa: F401  (POSIX only)
            except ImportError:  # pragma: no cover - Windows: SQLite's locking alone
                return
            self.path = f"{database}-writer.lock"

    def __enter__(self) -> WriterLock:
        self._threads.acquire()
        if self.path is None:
            return self
        import fcntl

        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except OSError:
            self.path = None  # e.g. a read-only folder: SQLite's locking alone from now on
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.path is not None and self._fd is not None:
                import fcntl

                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()


def _fill_pending(engine: Engine) -> None:
    """Index every unreleased block ``pending_blocks`` lacks (a database from before it);
    withdrawn blocks are never in line again."""
    missing = (select(RECORDS.c.id, RECORDS.c.class_key)
               .outerjoin(RELEASED_BLOCKS, RELEASED_BLOCKS.c.block_id == RECORDS.c.id)
               .outerjoin(PENDING_BLOCKS, PENDING_BLOCKS.c.block_id == RECORDS.c.id)
               .outerjoin(WITHDRAWN_BLOCKS, WITHDRAWN_BLOCKS.c.block_id == RECORDS.c.id)
               .where(RELEASED_BLOCKS.c.block_id.is_(None), PENDING_BLOCKS.c.block_id.is_(None),
                      WITHDRAWN_BLOCKS.c.block_id.is_(None)))
    try:
        with engine.begin() as conn:
            if conn.execute(missing.limit(1)).first() is not None:
                conn.execute(insert(PENDING_BLOCKS).from_select(["block_id", "class_key"],
                                                                missing))
    except IntegrityError:
        pass  # another process filled it at the same time


class PendingVacuum:
    """Keeps ``pending_blocks`` small on PostgreSQL while packages are written.

    Every block enters ``pending_blocks`` and leaves it when released, so the
    table's live rows are few while its dead ones pile up: PostgreSQL keeps a
    deleted row, and its entry in the class index, until a vacuum, and
    autovacuum looks in once a minute. The release's read walks them all:
    in-process ingestion of 10,000 packages (3 classes) took its read from
    0.9 to 5.9 ms a group (20,000 dead entries); vacuumed every 2,000 blocks
    it stayed near 1 ms. :meth:`written` counts the blocks a writer stored and,
    every ``every`` of them, vacuums the table in a thread of its own (one at a
    time in a process; ``SKIP_LOCKED``: not while another process vacuums it),
    so no group waits for it. It leaves the table's emptied end in place
    (``TRUNCATE false``): cutting it off takes a lock that excludes the
    writers, and a vacuum kept retrying that lock for 42 ms on average while
    two workers wrote (its wait, ``VacuumTruncate``, was sampled more often
    than the writers' waits on the class counters: 26 against 19 of 2,250);
    the next blocks reuse that space anyway. A failed vacuum (the database
    restarting, a server older than PostgreSQL 12) is logged and tried again
    ``every`` blocks later; a role that does not own the table gets
    PostgreSQL's warning and nothing is vacuumed. Other databases: nothing
    to do.
    """

    def __init__(self, engine: Engine, every: int = 2_000) -> None:
        self.engine = engine
        self.every = every
        self.enabled = engine.dialect.name == "postgresql"
        #: vacuums run (for measurements and tests)
        self.runs = 0
        self._since = 0
        self._lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()

    def written(self, blocks: int) -> None:
        """``blocks`` record blocks were committed; vacuum in the background when it is time."""
        if not self.enabled or blocks <= 0:
            return
        with self._lock:
            self._since += blocks
            if self._since < self.every or not self._idle.is_set():
                return
            self._since = 0
            self._idle.clear()
        threading.Thread(target=self._vacuum, name="dmt-vacuum-pending", daemon=True).start()

    def _vacuum(self) -> None:
        try:
            with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM (SKIP_LOCKED, TRUNCATE false) pending_blocks")
            self.runs += 1
        except SQLAlchemyError as exc:  # maintenance: the next one tries again
            log.warning("could not vacuum pending_blocks (%s); trying again later",
                        type(exc).__name__)
        finally:
            self._idle.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until no vacuum runs; whether none does."""
        return self._idle.wait(timeout)


# --- the data key -------------------------------------------------------------------------
@dataclass(frozen=True, eq=False, repr=False)
class DataKey:
    """A server data key, unwrapped: its id and the two subkeys derived from it."""

    key_id: str
    aead: AESGCM
    mac_key: bytes

    @classmethod
    def from_secret(cls, key_id: str, secret: bytes) -> DataKey:
        def sub(label: bytes) -> bytes:
            return HKDF(hashes.SHA256(), 32, salt=None, info=label).derive(secret)

        return cls(key_id, AESGCM(sub(b"dmt records aes-256-gcm v1")),
                   sub(b"dmt class key hmac-sha256 v1"))

    def class_key(self, description: bytes) -> str:
        return hmac.digest(self.mac_key, description, "sha256").hex()[:32]  # OpenSSL's one-shot

    def encrypt(self, plaintext: bytes, aad: bytes) -> tuple[bytes, bytes]:
        nonce = os.urandom(12)
        return nonce, self.aead.encrypt(nonce, plaintext, aad)

    def decrypt(self, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        return self.aead.decrypt(nonce, ciphertext, aad)

    def __repr__(self) -> str:
        return f"DataKey(key_id={self.key_id!r})"


def payload_aad(package_id: str, key_id: str) -> bytes:
    return f"dmt-package-payload-v1|{package_id}|{key_id}".encode()


# --- the release rule ---------------------------------------------------------------------
_CHUNK = 500
#: A release's writes on PostgreSQL: cohorts, their blocks, out of pending, classes marked.
_PG_RELEASE = (
    "WITH c AS (INSERT INTO cohorts (cohort_id, class_key, n_records, n_packages, released_at) "
    "SELECT c, k, r, p, %(stamp)b FROM unnest(%(cohort_id)b::varchar[], %(class_key)b::varchar[], "
    "%(n_records)b::integer[], %(n_packages)b::integer[]) AS u(c, k, r, p)), "
    "b AS (INSERT INTO released_blocks (block_id, cohort_id) "
    "SELECT * FROM unnest(%(block_id)b::integer[], %(block_cohort)b::varchar[])), "
    "d AS (DELETE FROM pending_blocks WHERE block_id = ANY(%(block_id)b::integer[])) "
    "UPDATE classes SET released = true, released_at = %(stamp)b "
    "WHERE class_key = ANY(%(released)b::varchar[]) AND NOT released")


# The same on SQLite (the standard library's driver): plain text, rows as tuples (SQLAlchemy's
# compiled statements cost more Python a group than SQLite spends running them).
_SQLITE_PENDING_OF = (
    "SELECT records.id, records.package_id, records.class_key, records.rows, "
    "packages.key_id, packages.receipt, spent_tokens.token_id, spent_tokens.epoch "
    "FROM pending_blocks "
    "JOIN records ON records.id = pending_blocks.block_id "
    "JOIN packages ON packages.package_id = records.package_id "
    "LEFT OUTER JOIN spent_tokens ON spent_tokens.package_id = records.package_id "
    "WHERE pending_blocks.class_key IN ({}) "
    "ORDER BY records.id")
#: PostgreSQL (psycopg): the same rows, a query of constant text with the classes as one
#: array, so it is prepared once instead of parsed and planned for each length of an IN list.
#: A prepared statement keeps the generic plan PostgreSQL made after its first executions: on
#: a new store's empty tables (or with statistics that expect many pending blocks) that was a
#: hash join over every stored record, in every group's transaction. Each pending block's
#: record, package and token are therefore read in a LATERAL subquery that ``OFFSET 0`` keeps
#: from being merged into a join: by their keys, whatever the statistics.
_PG_PENDING_OF = (
    "SELECT p.block_id AS id, b.package_id, p.class_key, b.rows, b.key_id, b.receipt, "
    "b.token_id, b.epoch FROM pending_blocks AS p CROSS JOIN LATERAL ("
    "SELECT records.package_id, records.rows, packages.key_id, packages.receipt, "
    "spent_tokens.token_id, spent_tokens.epoch FROM records "
    "JOIN packages ON packages.package_id = records.package_id "
    "LEFT OUTER JOIN spent_tokens ON spent_tokens.package_id = records.package_id "
    "WHERE records.id = p.block_id OFFSET 0) AS b "
    "WHERE p.class_key = ANY(%(keys)b::varchar[]) ORDER BY p.block_id")
_PG_PAYLOAD = "SELECT key_id, nonce, payload FROM packages WHERE package_id = %(id)b"
_SQLITE_RELEASE = (
    ("INSERT INTO cohorts (cohort_id, class_key, n_records, n_packages, released_at) "
     "VALUES (?, ?, ?, ?, ?)"),
    "INSERT INTO released_blocks (block_id, cohort_id) VALUES (?, ?)",
    "DELETE FROM pending_blocks WHERE block_id = ?",
    "UPDATE classes SET released = 1, released_at = ? WHERE class_key = ? AND NOT released")


def _sqlite(conn: Connection) -> bool:
    return conn.dialect.name == "sqlite" and conn.dialect.driver == "pysqlite"


def _psycopg(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg"


def _driver_connection(conn: Connection) -> Any:
    """psycopg's own connection under ``conn``, inside SQLAlchemy's transaction: begun here
    if none is (with ``engine.connect()``, statements run only on psycopg's connection begin
    none, so the caller's ``conn.commit()`` would do nothing and the pool's rollback would
    discard them)."""
    if not conn.in_transaction():
        conn.begin()
    return cast(Any, conn.connection.driver_connection)


@contextlib.contextmanager
def _driver_errors(conn: Connection, statement: str) -> Iterator[None]:
    """psycopg's errors as SQLAlchemy's (``IntegrityError``, ``DBAPIError`` with
    ``connection_invalidated`` when the database dropped the connection), as
    ``conn.execute`` raises them: the callers' retries read those. On a disconnect the
    connection is invalidated and the engine's pool renewed, as SQLAlchemy does for its own
    statements: after a restart every pooled connection is stale, and `dmt serve` does not
    ping them before use."""
    dbapi_error = conn.dialect.loaded_dbapi.Error
    try:
        yield
    except dbapi_error as exc:
        driver_connection = conn.connection.dbapi_connection
        disconnect = conn.dialect.is_disconnect(exc, driver_connection, None)
        if disconnect:
            conn.invalidate(exc)
            conn.engine.dispose()  # idle connections closed, the ones in use not reused
        raise DBAPIError.instance(statement, None, exc, dbapi_error,
                                  connection_invalidated=disconnect,
                                  dialect=conn.dialect) from exc


@contextlib.contextmanager
def pg_pipeline(conn: Connection) -> Iterator[None]:
    """On PostgreSQL (psycopg), the statements of the block go out in pipeline mode: each is
    sent without waiting for the answer of the one before, and the connection waits only
    where a result is read (:func:`_pg_rows`) and at the end. Elsewhere it does nothing.

    A group write waited for the database eight times (BEGIN, six statements, COMMIT), now
    five. The statements still run one after the other, each on a snapshot of its own, so
    each sees what the ones before it waited for (a concurrent writer's commit). Inside the
    block only :func:`_pg_run` and :func:`_pg_rows` may run statements: a SQLAlchemy
    statement reads its cursor's description before the pipeline has its result."""
    if not _psycopg(conn):
        yield
        return
    with _driver_errors(conn, "<pipeline>"), _driver_connection(conn).pipeline():
        yield


def _pg_run(conn: Connection, statement: str, params: Mapping[str, Any]) -> Any:
    """Execute ``statement`` on psycopg's own connection (parameters marked ``%(name)b`` go
    in binary: no text escaping of every array element); the cursor, for its rows. In
    pipeline mode (:func:`pg_pipeline`) this only queues it."""
    with _driver_errors(conn, statement):
        cursor = _driver_connection(conn).cursor(binary=True)
        cursor.execute(statement, params)
    return cursor


def _pg_rows(conn: Connection, statement: str, params: Mapping[str, Any]) -> list[Any]:
    """The rows of ``statement`` (:func:`_pg_run`), as named tuples."""
    from psycopg.rows import namedtuple_row

    with _driver_errors(conn, statement):
        cursor = _driver_connection(conn).cursor(binary=True, row_factory=namedtuple_row)
        cursor.execute(statement, params)
        return cursor.fetchall()


def release_rule(policy: Any) -> ReleaseRule:
    """The :class:`~dmt_privacy.anonymity.ReleaseRule` a server policy implies.

    k is the policy's ``min_k``; with a plan (``policy.plan``), also the
    plan's k (the larger), l, t and the reference distribution t is measured
    against, so every constraint the plan promised holds on what is released.
    """
    plan = getattr(policy, "plan", None)
    if plan is None:
        return ReleaseRule(k=int(policy.min_k))
    return ReleaseRule.from_plan(plan, k=int(policy.min_k))


def _decode_columns(conn: Connection, package_id: str, key: DataKey) -> dict[str, list[Any]]:
    if _psycopg(conn):  # maybe inside a group write's pipeline (pg_pipeline)
        ((key_id, nonce, payload),) = _pg_rows(conn, _PG_PAYLOAD, {"id": package_id})
    else:
        key_id, nonce, payload = conn.execute(
            select(PackageRow.key_id, PackageRow.nonce, PackageRow.payload)
            .where(PackageRow.package_id == package_id)).one()
    plaintext = key.decrypt(nonce, payload, payload_aad(package_id, key_id))
    package = decode_package(plaintext, max_records=2**31 - 1, max_bytes=max(len(plaintext), 1))
    return dict(package.columns)


def _enough(blocks: Sequence[Any], k: int, *, tokens: bool) -> bool:
    """Whether ``blocks`` come from k contributors: k distinct tokens of one period
    (``tokens``), else k distinct packages."""
    if tokens:
        per_epoch = Counter(epoch for _, epoch in {(b.token_id, b.epoch) for b in blocks})
        return bool(per_epoch) and max(per_epoch.values()) >= k
    return len({b.package_id for b in blocks}) >= k


@functools.lru_cache(maxsize=1024)
def _receipt_k(text: str) -> int:
    """The k a stored package's receipt promises (0 if none). Cached: a policy's devices send
    few distinct receipts, and every group written reads its classes' pending receipts."""
    return int(json.loads(text).get("k") or 0)


def _admitted(blocks: Sequence[Any], rule: ReleaseRule, values_of: Mapping[int, list[Any]],
              *, tokens: bool) -> tuple[list[Any], list[Any]]:
    """The blocks of a class's pending cohort that may be released together, and each of
    their records' contributor: the largest set in which every block's k (the rule's, or
    its receipt's if larger) is met by the set's contributors (:func:`_enough`) and the
    rule admits the set (``values_of``: each block's sensitive values, when the rule judges
    l or t); none if no set is."""
    need = {b.id: max(rule.k, _receipt_k(b.receipt)) for b in blocks}
    for k in sorted(set(need.values()), reverse=True):
        chosen = [b for b in blocks if need[b.id] <= k]
        if not _enough(chosen, k, tokens=tokens):
            continue
        contributors = [b.token_id if tokens else b.package_id for b in chosen
                        for _ in np.frombuffer(b.rows, dtype="<u4")]
        values = [v for b in chosen for v in values_of[b.id]] if rule.needs_values else None
        if rule.admits(contributors, values) and (
                not (tokens and rule.needs_values)
                or _one_period_admits(rule, k, [(b.epoch, b.token_id,
                                                len(np.frombuffer(b.rows, dtype="<u4")),
                                                values_of[b.id]) for b in chosen])):
            return chosen, contributors
    return [], []


def _one_period_admits(rule: ReleaseRule, k: int,
                      blocks: Sequence[tuple[Any, Any, int, Sequence[Any]]]) -> bool:
    """With tokens: whether the blocks of ONE period alone (``(period, token, records, their
    sensitive values)`` each) hold k tokens and meet the rule's l and t. A device gets its
    tokens a period at a time, so tokens of several periods may all be one device's: one
    attested device that planted a 'cold' and an 'hiv' package in two earlier periods made
    a cohort of three honest 'flu' devices look 3-diverse, and learnt every value
    (helper-90). k already counts one period (:func:`_enough`); l and t now do too. A
    block of no period (a package stored before tokens were required) counts for none."""
    periods: dict[Any, list[tuple[Any, int, Sequence[Any]]]] = {}
    for period, token, n, values in blocks:
        if period is not None:
            periods.setdefault(period, []).append((token, n, values))
    for members in periods.values():
        if len({token for token, _, _ in members}) < k:
            continue
        if rule.admits([token for token, n, _ in members for _ in range(n)],
                       [v for _, _, values in members for v in values]):
            return True
    return False


def release_due(
    conn: Connection,
    rule: ReleaseRule,
    data_key: Callable[[str], DataKey | None],
    class_keys: Iterable[str] | None = None,
    now: str | None = None,
    *,
    tokens: bool = False,
) -> int:
    """Release every pending cohort that meets ``rule``; the number of cohorts released.

    :func:`released_classes` does the same and names the classes (and locks them first).
    """
    return len(released_classes(conn, rule, data_key, class_keys, now, tokens=tokens))


_PG_LOCK_CLASSES = ("SELECT class_key FROM classes WHERE class_key = ANY(%(keys)b::varchar[]) "
                    "ORDER BY class_key FOR UPDATE")
_PG_LOCK_ALL_CLASSES = "SELECT class_key FROM classes ORDER BY class_key FOR UPDATE"


def _sqlite_write_lock(conn: Connection) -> None:
    """Take the SQLite database's write lock now (a write that changes nothing): what the
    transaction reads from here on, no other writer changes before it ends."""
    conn.exec_driver_sql("UPDATE classes SET released = released WHERE 0")


def lock_classes(conn: Connection, class_keys: Iterable[str] | None = None) -> list[str] | None:
    """Lock the counter rows of ``class_keys`` (every class: None), in sorted order, inside
    the caller's transaction, before reading the blocks that depend on them.

    What moves blocks between pending, released and withdrawn while the service runs (the
    group write, a release, a removal) takes these rows first, in this order: it waits for
    another one instead of acting on blocks that one is changing. An operator's release
    read pending blocks that a group write then released and a removal withdrew, and put
    them back into the release (helper-62). SQLite: the database's write lock (one writer
    at a time). Returns the classes asked for, sorted (those with a row are locked; None:
    every class, as on SQLite).
    """
    if _sqlite(conn):
        _sqlite_write_lock(conn)
        return None if class_keys is None else sorted(set(class_keys))
    if class_keys is None:
        if _psycopg(conn):
            return [row[0] for row in _pg_rows(conn, _PG_LOCK_ALL_CLASSES, {})]
        return list(conn.execute(select(CLASSES.c.class_key).order_by(CLASSES.c.class_key)
                                 .with_for_update()).scalars())
    wanted = sorted(set(class_keys))
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start:start + _CHUNK]
        if _psycopg(conn):
            _pg_run(conn, _PG_LOCK_CLASSES, {"keys": chunk})
        else:
            conn.execute(select(CLASSES.c.class_key).where(CLASSES.c.class_key.in_(chunk))
                         .order_by(CLASSES.c.class_key).with_for_update())
    return wanted


@contextlib.contextmanager
def consistent_reads(engine: Engine) -> Iterator[Connection]:
    """A connection whose reads all see one snapshot of the database: PostgreSQL, a
    REPEATABLE READ transaction; SQLite, one read transaction (its readers never wait for
    a writer); other databases, a plain transaction.

    For reads that must agree with each other: training read the blocks, then their
    packages, and a removal committing in between left it a cohort minus the removed
    package, a set that was never released (helper-62).
    """
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            # pysqlite begins a transaction only before a write (unless the engine begins
            # one itself, as SQLAlchemy's recipe for SQLite does)
            if _sqlite(conn) and not getattr(conn.connection.driver_connection,
                                             "in_transaction", False):
                conn.exec_driver_sql("BEGIN")
            yield conn


@functools.cache
def _pending_queries() -> tuple[Any, Any]:
    """The pending blocks (all, and of given classes): built once, not per group written."""
    query = (select(RecordBlock.id, RecordBlock.package_id, RecordBlock.class_key,
                    RecordBlock.rows, PackageRow.key_id, PackageRow.receipt,
                    SpentTokenRow.token_id, SpentTokenRow.epoch)
             .select_from(PendingBlock)
             .join(RecordBlock, RecordBlock.id == PendingBlock.block_id)
             .join(PackageRow, PackageRow.package_id == RecordBlock.package_id)
             .outerjoin(SpentTokenRow, SpentTokenRow.package_id == RecordBlock.package_id)
             .order_by(RecordBlock.id))
    return query, query.where(PendingBlock.class_key.in_(bindparam("keys", expanding=True)))


def released_classes(
    conn: Connection,
    rule: ReleaseRule,
    data_key: Callable[[str], DataKey | None],
    class_keys: Iterable[str] | None = None,
    now: str | None = None,
    *,
    tokens: bool = False,
    classes_locked: bool = False,
) -> list[str]:
    """Release every pending cohort that meets ``rule``; the keys of the classes released.

    Runs inside the caller's transaction ``conn``, after locking the classes' counter rows
    (:func:`lock_classes`; ``classes_locked``: the caller holds them already, as the group
    write does once it has added to them). A class's pending cohort is
    all its blocks not yet released; it is released whole, or not at all, but
    for blocks that stay in quarantine on their own:

    - a block whose package's receipt promises a larger k than ``rule.k``
      (validation accepts that without a plan) needs that many contributors: it
      waits, and the others are released without it, until a cohort of its k can
      take it (the largest set whose every member's k it meets is released). The
      others leave as soon as ``rule.k`` of them wait, so it leaves only when
      that many arrive between two writes: with packages arriving one at a time
      it waits for good (its promise kept, its records never trained on). Holding
      the class back for it instead would let one package claiming a huge k stop
      its class's release;
    - when the rule has l or t, ``data_key(key_id)`` unwraps a package's data key
      to read its sensitive values; a block it cannot read (``None``) or without
      the sensitive field waits for good (fail closed), and the cohort is judged
      without it.

    ``class_keys``: only these classes (default: all).

    ``tokens``: the policy limits packages per device with tokens
    (:mod:`dmt_model.server.issuer`). Then a contributor is a spent token, not
    a package: a cohort holds only blocks of packages that came with a token,
    and needs ``rule.k`` distinct tokens of ONE period, so one device (at most
    N tokens per period) cannot fill a class by spreading packages over periods.
    """
    if not classes_locked:
        locked = lock_classes(conn, class_keys)
        class_keys = locked if locked is not None else class_keys
    query, of_classes = _pending_queries()
    pending: list[Any] = []
    if class_keys is None:
        pending = list(conn.execute(query).all())
    else:
        wanted = sorted(set(class_keys))
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start:start + _CHUNK]
            if _sqlite(conn):
                pending += conn.exec_driver_sql(
                    _SQLITE_PENDING_OF.format(", ".join("?" * len(chunk))), tuple(chunk)).all()
            elif _psycopg(conn):
                pending += _pg_rows(conn, _PG_PENDING_OF, {"keys": chunk})
            else:
                pending += conn.execute(of_classes, {"keys": chunk}).all()
    by_class: dict[str, list[Any]] = {}
    for row in pending:
        by_class.setdefault(row.class_key, []).append(row)
    stamp = now or _now()
    columns_cache: dict[str, dict[str, list[Any]] | None] = {}
    released: list[str] = []
    cohorts: list[dict[str, Any]] = []
    members: list[dict[str, Any]] = []
    for class_key in sorted(by_class):
        blocks = by_class[class_key]
        if tokens:
            blocks = [b for b in blocks if b.token_id is not None]
        if not _enough(blocks, rule.k, tokens=tokens):
            continue
        values_of: dict[int, list[Any]] = {}
        if rule.needs_values:
            # A block whose sensitive values cannot be read (a package without the field,
            # or whose data key is not at hand) stays in quarantine on its own: it never
            # holds back the cohort of the others (fail closed for it alone).
            readable = []
            for b in blocks:
                if b.package_id not in columns_cache:
                    key = data_key(b.key_id)
                    columns_cache[b.package_id] = (
                        None if key is None else _decode_columns(conn, b.package_id, key))
                columns = columns_cache[b.package_id]
                if columns is None or rule.sensitive not in columns:
                    continue
                column = columns[str(rule.sensitive)]
                readable.append(b)
                values_of[b.id] = [column[i] for i in np.frombuffer(b.rows, dtype="<u4").tolist()]
            blocks = readable
        blocks, contributors = _admitted(blocks, rule, values_of, tokens=tokens)
        if not blocks:
            continue
        cohort_id = secrets.token_hex(16)
        cohorts.append({"cohort_id": cohort_id, "class_key": class_key,
                        "n_records": len(contributors),
                        "n_packages": len(set(contributors)), "released_at": stamp})
        members += [{"block_id": b.id, "cohort_id": cohort_id} for b in blocks]
        released.append(class_key)
    if released and _psycopg(conn):
        # one statement of constant text, the rows as arrays (psycopg would send an
        # executemany's rows one by one, and a new IN list is a new text to parse)
        _pg_run(conn, _PG_RELEASE, {
            "cohort_id": [c["cohort_id"] for c in cohorts],
            "class_key": [c["class_key"] for c in cohorts],
            "n_records": [c["n_records"] for c in cohorts],
            "n_packages": [c["n_packages"] for c in cohorts],
            "block_id": [m["block_id"] for m in members],
            "block_cohort": [m["cohort_id"] for m in members],
            "released": released, "stamp": stamp})
    elif released and _sqlite(conn):  # executemany of plain text, in the same four steps
        cohort_sql, blocks_sql, pending_sql, classes_sql = _SQLITE_RELEASE
        conn.exec_driver_sql(cohort_sql, [(c["cohort_id"], c["class_key"], c["n_records"],
                                           c["n_packages"], stamp) for c in cohorts])
        conn.exec_driver_sql(blocks_sql, [(m["block_id"], m["cohort_id"]) for m in members])
        conn.exec_driver_sql(pending_sql, [(m["block_id"],) for m in members])
        conn.exec_driver_sql(classes_sql, [(stamp, k) for k in released])
    elif released:  # every cohort at once: a few statements, however many classes
        conn.execute(COHORTS.insert(), cohorts)
        conn.execute(RELEASED_BLOCKS.insert(), members)
        ids = [m["block_id"] for m in members]
        for start in range(0, len(ids), _CHUNK):
            conn.execute(delete(PENDING_BLOCKS).where(
                PENDING_BLOCKS.c.block_id.in_(ids[start:start + _CHUNK])))
        for start in range(0, len(released), _CHUNK):
            conn.execute(update(CLASSES).where(
                CLASSES.c.class_key.in_(released[start:start + _CHUNK]),
                CLASSES.c.released.is_(False)).values(released=True, released_at=stamp))
    return released


class SharedStore:
    """The server's store opened with its private key: data key, reads of released records."""

    def __init__(self, db_url: str | Engine,
                 private_key: ServerPrivateKey | ServerKeyring) -> None:
        self.engine = open_engine(db_url)
        self.keyring = private_key if isinstance(private_key, ServerKeyring) \
            else ServerKeyring(private_key)
        self.private_key = self.keyring.current
        self._keys: dict[str, DataKey] = {}

    def _unwrap(self, key_id: str, wrapped: bytes) -> DataKey:
        try:
            secret = open_sealed(wrapped, self.keyring, info=DATA_KEY_INFO)
        except InvalidPackage:
            raise DMTError(
                f"Data key {key_id} of this database cannot be unwrapped with the private "
                f"key(s) {list(self.keyring.key_ids)}: use the key the database was created "
                "with (after a rotation, keep the old key in the keyring)."
            ) from None
        return DataKey.from_secret(key_id, secret)

    def key(self, key_id: str) -> DataKey:
        if key_id not in self._keys:
            with self.engine.connect() as conn:
                wrapped = conn.execute(
                    select(DataKeyRow.wrapped).where(DataKeyRow.key_id == key_id)
                ).scalar_one()
            self._keys[key_id] = self._unwrap(key_id, wrapped)
        return self._keys[key_id]

    def current_key(self) -> DataKey:
        """The newest data key, created (and sealed to the public key) when there is none."""
        newest = (select(DataKeyRow.key_id, DataKeyRow.wrapped)
                  .order_by(DataKeyRow.created_at.desc(), DataKeyRow.key_id).limit(1))
        with self.engine.begin() as conn:
            row = conn.execute(newest).first()
            if row is None:
                # Two processes starting on a fresh store made one each, and each named every
                # class under its own (helper-62): the first to lock makes it, the next reads it.
                if _sqlite(conn):
                    _sqlite_write_lock(conn)
                elif conn.dialect.name == "postgresql":  # needs no privilege on the table
                    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_DATA_KEY_LOCK})")
                row = conn.execute(newest).first()
            if row is None:
                secret = secrets.token_bytes(32)
                key_id = secrets.token_hex(8)
                wrapped = seal(secret, self.private_key.public_key(), info=DATA_KEY_INFO)
                conn.execute(DATA_KEYS.insert().values(
                    key_id=key_id, wrapped=wrapped, created_at=_now()))
                self._keys[key_id] = DataKey.from_secret(key_id, secret)
                return self._keys[key_id]
        key_id, wrapped = row
        if key_id not in self._keys:
            self._keys[key_id] = self._unwrap(key_id, wrapped)
        return self._keys[key_id]

    def rewrap(self) -> int:
        """Re-seal every wrapped secret (data keys, token issuer keys) to the current key.

        After a rotation (a :class:`~dmt_privacy.seal.ServerKeyring` with the new key
        first), this lets the old private key be retired: nothing in the database is
        sealed to it any more. One transaction; returns how many secrets moved.
        """
        from dmt_model.server.issuer import TOKEN_KEY_INFO

        public = self.keyring.public_key()
        moved = 0
        with self.engine.begin() as conn:
            for table, key_column, info in ((DATA_KEYS, "key_id", DATA_KEY_INFO),
                                            (TOKEN_KEYS, "epoch", TOKEN_KEY_INFO)):
                for ident, wrapped in conn.execute(
                        select(table.c[key_column], table.c.wrapped)).all():
                    if envelope_key_id(wrapped) == public.key_id:
                        continue
                    try:
                        secret = open_sealed(wrapped, self.keyring, info=info)
                    except InvalidPackage:
                        raise DMTError(
                            f"{table.name} {ident} cannot be unwrapped with the key(s) "
                            f"{list(self.keyring.key_ids)}; nothing was re-wrapped.") from None
                    conn.execute(update(table).where(table.c[key_column] == ident).values(
                        wrapped=seal(secret, public, info=info)))
                    moved += 1
        return moved

    # --- releasing --------------------------------------------------------------------
    def _data_key_or_none(self, key_id: str) -> DataKey | None:
        try:
            return self.key(key_id)
        except DMTError:
            return None

    def release(self, rule: ReleaseRule, class_keys: Iterable[str] | None = None, *,
                tokens: bool = False) -> int:
        """Release every pending cohort that meets ``rule`` (see :func:`release_due`).

        One transaction, which locks the classes' counter rows first (:func:`lock_classes`):
        a group write or a removal of these classes waits for it, or it for them. Returns
        the number of cohorts released; 0 when another process released the same blocks
        first.
        """
        if not isinstance(rule, ReleaseRule):
            raise ValidationError(f"rule must be a ReleaseRule, got {type(rule).__name__}.")
        try:
            with self.engine.begin() as conn:
                return release_due(conn, rule, self._data_key_or_none, class_keys,
                                   tokens=tokens)
        except IntegrityError:
            return 0

    # --- reading ----------------------------------------------------------------------
    def _blocks(self, which: str
                ) -> Iterator[tuple[str, str, str | None, dict[str, list[Any]]]]:
        """(package id, class key, cohort id, columns) of every block of records ``which``
        (:meth:`frame`) selects, decrypted."""
        query = select(RecordBlock.package_id, RecordBlock.class_key, RecordBlock.rows,
                       ReleasedBlock.cohort_id).outerjoin(
            ReleasedBlock, ReleasedBlock.block_id == RecordBlock.id).outerjoin(
            WithdrawnBlock, WithdrawnBlock.block_id == RecordBlock.id).order_by(RecordBlock.id)
        if which == "released":
            query = query.where(ReleasedBlock.block_id.is_not(None),
                                WithdrawnBlock.block_id.is_(None))
        elif which == "quarantined":
            query = query.where(ReleasedBlock.block_id.is_(None),
                                WithdrawnBlock.block_id.is_(None))
        elif which == "withdrawn":
            query = query.where(WithdrawnBlock.block_id.is_not(None))
        by_package: dict[str, list[tuple[str, bytes, str | None]]] = {}
        stored: dict[str, Any] = {}
        # the packages as the blocks were (one snapshot), read first and decrypted after it
        with consistent_reads(self.engine) as conn:
            for block in conn.execute(query):
                by_package.setdefault(block.package_id, []).append(
                    (block.class_key, block.rows, block.cohort_id))
            ids = list(by_package)
            for start in range(0, len(ids), _CHUNK):
                stored.update((row.package_id, row) for row in conn.execute(
                    select(PackageRow.package_id, PackageRow.key_id, PackageRow.nonce,
                           PackageRow.payload)
                    .where(PackageRow.package_id.in_(ids[start:start + _CHUNK]))))
        for package_id, members in by_package.items():
            row = stored[package_id]
            plaintext = self.key(row.key_id).decrypt(row.nonce, row.payload,
                                                     payload_aad(package_id, row.key_id))
            package = decode_package(plaintext, max_records=2**31 - 1,
                                     max_bytes=max(len(plaintext), 1))
            for class_key, rows, cohort_id in members:
                take = np.frombuffer(rows, dtype="<u4").tolist()
                yield package_id, class_key, cohort_id, {
                    name: [values[i] for i in take] for name, values in package.columns.items()
                }

    def frame(self, which: str = "released", *, cohorts: bool = False) -> pd.DataFrame:
        """Decrypted records: ``"released"`` (for training), ``"quarantined"`` (waiting for
        the release rule), ``"withdrawn"`` (out of the release for good: the rest of a
        cohort a removed package was released with) or ``"all"``.

        Adds the columns ``package_id`` and ``class_key`` (and ``cohort_id``, ``None``
        unless released, with ``cohorts=True``).
        """
        choices = ("released", "quarantined", "withdrawn", "all")
        if which not in choices:
            raise ValidationError(f"which must be one of {list(choices)!r}, got {which!r}.")
        parts = []
        for package_id, class_key, cohort_id, columns in self._blocks(which):
            part = pd.DataFrame(columns)
            part["package_id"] = package_id
            part["class_key"] = class_key
            if cohorts:
                part["cohort_id"] = cohort_id
            parts.append(part)
        if not parts:
            return pd.DataFrame()
        return pd.concat(parts, ignore_index=True)

    def receipts(self) -> dict[str, PrivacyReceipt]:
        """The privacy receipt of every stored package, by package id."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(PackageRow.package_id, PackageRow.receipt)).all()
        return {package_id: PrivacyReceipt.from_dict(json.loads(text))
                for package_id, text in rows}

    def counts(self) -> dict[str, int]:
        """Packages, records, classes with released / quarantined records, records in each,
        and the records withdrawn from the release for good (:meth:`frame`).

        A class whose first cohort is released while later records wait counts in both.
        """
        with self.engine.connect() as conn:
            n_packages = conn.execute(select(PackageRow.package_id).with_only_columns(
                PackageRow.package_id)).all()
            blocks = conn.execute(
                select(RecordBlock.class_key, RecordBlock.n_records, ReleasedBlock.block_id,
                       WithdrawnBlock.block_id.is_not(None))
                .outerjoin(ReleasedBlock, ReleasedBlock.block_id == RecordBlock.id)
                .outerjoin(WithdrawnBlock, WithdrawnBlock.block_id == RecordBlock.id)).all()
            n_cohorts = len(conn.execute(select(CohortRow.cohort_id)).all())
        released = [(c, n) for c, n, b, out in blocks if b is not None and not out]
        held = [(c, n) for c, n, b, out in blocks if b is None and not out]
        return {
            "packages": len(n_packages),
            "records": sum(n for _, n, _, _ in blocks),
            "classes_released": len({c for c, _ in released}),
            "classes_quarantined": len({c for c, _ in held}),
            "records_released": sum(n for _, n in released),
            "records_quarantined": sum(n for _, n in held),
            "records_withdrawn": sum(n for _, n, _, out in blocks if out),
            "cohorts_released": n_cohorts,
        }
