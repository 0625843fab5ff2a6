"""Ingestion of sealed share packages: open, validate against the server's policy, store once.

One path serves ``dmt ingest`` (:func:`ingest`, through :class:`BatchIngest`)
and the HTTP service alike (:meth:`Ingestor.check`, :meth:`~Ingestor.submit`,
:meth:`~Ingestor.finish`, the three steps ``ingest_one`` chains). For each package it:

1. opens it with the server's private key (:func:`dmt_privacy.seal.open_sealed`
   and :func:`dmt_privacy.package.decode_package`, with the policy's size
   limits); any failure is one reason, "could not be opened", unless the
   very bytes were stored before (sealed to a key since retired: a device's
   retry), which is a replay;
2. validates it against the :class:`~dmt_model.server.policy.ServerPolicy`,
   exactly and strictly typed (:func:`dmt_model.server.validate.validate_package`):
   nothing the package claims is believed;
3. with a policy that limits packages per device (``tokens_per_period``),
   requires a valid Privacy Pass token of this period or the last one
   (:mod:`dmt_model.server.issuer`);
4. encrypts it and names its classes (:func:`dmt_model.server.write.prepare_package`),
   still in the caller's thread, so packages are prepared in parallel;
5. stores it with every package waiting at that moment in ONE transaction
   (one flush for all; :func:`dmt_model.server.write.write_prepared`; ``dmt
   ingest`` and the service in the thread that checked the batch,
   :class:`BatchIngest`, :meth:`ingest_one` through the process's
   :class:`GroupCommit` writer thread): the package row
   inserted or nothing on its id (a replay, detected inside the write), its token as
   spent (or nothing: a double spend), its record blocks, the class counts,
   and the release of every class that now holds records from at least
   ``min_k`` distinct packages. The caller hears back only after the commit.
   A rejected or interrupted package leaves no row behind; the package id's
   uniqueness makes a second ingestion of the same bytes a counted replay
   that changes nothing, in one process or several.

A malformed-but-decryptable package is refused like an unreadable one: the
sender learns "invalid" and nothing more; the reason (its kind and the field,
never a value) is logged on the logger ``dmt.server.ingest`` and counted in
:attr:`Ingestor.refusals`. Only the database failing raises
(:class:`DatabaseUnavailable`); a package never does.

Encryption at rest and the tables are described in :mod:`dmt_model.server.store`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from dmt_model.server.issuer import IssuerKeys
from dmt_model.server.policy import ServerPolicy
from dmt_model.server.prescan import bounded_shape
from dmt_model.server.report import IngestReport, Outcome
from dmt_model.server.store import (
    DataKey,
    EnvelopeRow,
    PackageRow,
    PendingVacuum,
    RemovedPackageRow,
    SharedStore,
    WriterLock,
    payload_aad,
)
from dmt_model.server.validate import PackageRefused, validate_package
from dmt_model.server.write import PreparedPackage, Written, prepare_package, write_prepared
from dmt_privacy.errors import DMTError, InvalidPackage, ValidationError
from dmt_privacy.package import PACKAGE_INFO, decode_package
from dmt_privacy.privacy_pass import InvalidToken
from dmt_privacy.seal import (
    ENVELOPE_OVERHEAD,
    ServerKeyring,
    ServerPrivateKey,
    envelope_key_id,
    open_sealed,
)

__all__ = [
    "PACKAGE_SUFFIX",
    "BatchIngest", "DatabaseUnavailable", "GroupCommit", "IngestReport", "Ingestor", "Outcome",
    "PreparedIngest", "ServerPolicy", "ingest", "iter_sources"]

log = logging.getLogger("dmt.server.ingest")

#: Directories are scanned for files with this suffix.
PACKAGE_SUFFIX = ".dmt"
_CHUNK = 500
#: SQLSTATEs after which a transaction is simply tried again (deadlock, serialization).
_RETRY_SQLSTATES = frozenset({"40P01", "40001"})
_WRITE_ATTEMPTS = 5
#: Packages written in one transaction at most.
MAX_GROUP = 256
UNREADABLE = "unreadable: could not be opened with this server's key"


class DatabaseUnavailable(DMTError, RuntimeError):
    """The database could not be reached or refused the transaction; the client may retry."""


# --- sources ----------------------------------------------------------------------------------
def iter_sources(
    sources: bytes | str | os.PathLike[str] | Iterable[bytes | str | os.PathLike[str]],
    *, max_bytes: int,
) -> Iterator[tuple[str, bytes | None]]:
    """(name, bytes) for every package: bytes as given, files, the ``*.dmt`` files of directories.

    Bytes is ``None`` for a file too large to be a package.
    """
    items: Iterable[Any] = (
        [sources] if isinstance(sources, (bytes, bytearray, memoryview, str, os.PathLike))
        else sources
    )
    for i, item in enumerate(items):
        if isinstance(item, (bytes, bytearray, memoryview)):
            yield f"<bytes #{i}>", bytes(item)
            continue
        path = Path(item)
        if not path.exists():
            raise ValidationError(f"{path} does not exist; pass package files or directories.")
        files = sorted(path.rglob(f"*{PACKAGE_SUFFIX}")) if path.is_dir() else [path]
        for file in files:
            if file.stat().st_size > max_bytes + 4096:
                yield str(file), None
            else:
                yield str(file), file.read_bytes()


def _unreadable(envelope: bytes, keys: ServerKeyring) -> str:
    """Why an envelope did not open, for the log: its key id is public, never a value."""
    key_id = envelope_key_id(envelope)
    if key_id is not None and keys.get(key_id) is None:
        return f"unreadable: sealed to key id {key_id}, which this server does not hold"
    if envelope[:4] == b"DMT\x01":
        return "unreadable: format 1 envelope (no key id) that none of this server's keys opens"
    return UNREADABLE


def _open(envelope: bytes, private_key: ServerKeyring,
          policy: ServerPolicy) -> tuple[Any, bytes]:
    """The package and its plaintext bytes (kept: they are what is encrypted at rest); the
    envelope's size is checked by the caller (:meth:`Ingestor.check`), which names it."""
    plaintext = open_sealed(envelope, private_key, info=PACKAGE_INFO)
    if not bounded_shape(plaintext):  # before msgpack allocates what headers declare
        raise InvalidPackage()
    package = decode_package(plaintext, max_records=policy.max_records,
                             max_bytes=policy.max_bytes)
    return package, plaintext


def _retryable(exc: DBAPIError) -> bool:
    return getattr(exc.orig, "sqlstate", None) in _RETRY_SQLSTATES


def _take(waiting: queue.SimpleQueue[Any], most: int, idle: float) -> list[Any] | None:
    """Everything waiting (at most ``most``), once there is something; None after ``idle`` s."""
    try:
        taken = [waiting.get(timeout=idle)]
    except queue.Empty:
        return None
    while len(taken) < most:
        try:
            taken.append(waiting.get_nowait())
        except queue.Empty:
            break
    return taken


class GroupCommit:
    """Group commit: what arrives while one transaction runs is written by the next, together.

    ``write(group)`` stores a list of prepared packages in one transaction and
    returns one :class:`~dmt_model.server.write.Written` each. :meth:`submit`
    queues one package and returns a future set only after its transaction
    committed (or with the exception that stopped it). One writer thread,
    started on demand and gone after a second idle, drains the queue: under
    load each transaction carries every package that arrived meanwhile (at
    most ``max_group``); alone, a package is written at once. When a group
    fails for any reason but an unavailable database, its packages are
    written again one by one, so a package that makes a write fail takes
    only itself down.
    """

    def __init__(self, write: Callable[[list[PreparedPackage]], list[Written]], *,
                 max_group: int = MAX_GROUP, idle: float = 1.0) -> None:
        self._write = write
        self.max_group = max_group
        self._idle = idle
        self._queue: queue.SimpleQueue[tuple[PreparedPackage, Future[Written]]] = \
            queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        #: transactions committed and packages they carried (for measurements)
        self.groups = 0
        self.packages = 0

    def submit(self, prepared: PreparedPackage) -> Future[Written]:
        future: Future[Written] = Future()
        self._queue.put((prepared, future))
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._drain, name="dmt-group-commit",
                                                daemon=True)
                self._thread.start()
        return future

    def _drain(self) -> None:
        while True:
            group = _take(self._queue, self.max_group, self._idle)
            if group is None:
                with self._lock:
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            self._commit(group)

    def _commit(self, group: list[tuple[PreparedPackage, Future[Written]]]) -> None:
        results = self.commit_now([prepared for prepared, _ in group])
        for (_, future), result in zip(group, results, strict=True):
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    def commit_now(self, group: list[PreparedPackage]) -> list[Written | BaseException]:
        """Write ``group`` in one transaction in the caller's thread; each its result or error.

        What the writer thread does with a group: an unavailable database
        fails them all; any other failure has them written again one by one,
        so the package that made the write fail takes only itself down.
        """
        try:
            results: list[Written | BaseException] = list(self._write(group))
        except DatabaseUnavailable as exc:
            return [exc] * len(group)
        except BaseException as exc:  # handed to the callers: no package is left unanswered
            if len(group) == 1:
                return [exc]
            return [self.commit_now([item])[0] for item in group]
        self.groups += 1
        self.packages += len(group)
        return results


class BatchIngest:
    """Sealed bodies in, outcomes out, in batches: the service's path (no thread per package).

    :meth:`submit` queues one body with a ``tag`` (the caller's handle, e.g.
    an asyncio future). Up to ``threads`` threads, started on demand and gone
    after ``idle`` seconds without work, each take every body waiting (at
    most ``max_batch``), check them one by one (:meth:`Ingestor.check`),
    write the good ones in ONE transaction (:meth:`GroupCommit.commit_now`:
    group commit, a failing package retried alone) and finish them
    (:meth:`Ingestor.finish`); then ``deliver`` receives the whole batch as
    (tag, :class:`~dmt_model.server.report.Outcome` or the exception it
    raised) pairs, once, after the commit. A refused body, or one that makes
    anything raise, affects only its own pair. Checking and writing in the
    same thread spares a hand-over per package and the GIL contention of a
    separate writer thread (measured: 0.55 against 0.63 ms of CPU a package).
    """

    def __init__(self, ingestor: Ingestor,
                 deliver: Callable[[list[tuple[Any, Outcome | BaseException]]], None], *,
                 threads: int = 1, max_batch: int = MAX_GROUP, idle: float = 1.0) -> None:
        for name, value in (("threads", threads), ("max_batch", max_batch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValidationError(f"{name} must be a positive integer, got {value!r}.")
        self.ingestor = ingestor
        self._deliver = deliver
        self.threads = threads
        self.max_batch = max_batch
        self._idle = idle
        # entries are lists of (body, source, tag): one a body, or one a round of the caller
        self._queue: queue.SimpleQueue[list[tuple[bytes, str, Any]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._alive = 0
        #: batches taken and bodies they carried (for measurements)
        self.batches = 0
        self.bodies = 0

    def submit(self, body: bytes, tag: Any, source: str = "<http>") -> None:
        self.submit_many([(body, source, tag)])

    def submit_many(self, items: list[tuple[bytes, str, Any]]) -> None:
        """Queue (body, source, tag) items together: a thread takes them in one wake-up.

        The service hands over what one round of its event loop read this way:
        one wake-up of the thread for the round, not one a body.
        """
        self._queue.put(items)
        with self._lock:
            if self._alive < self.threads:
                self._alive += 1
                threading.Thread(target=self._work, name="dmt-ingest", daemon=True).start()

    def _work(self) -> None:
        while True:
            taken = _take(self._queue, self.max_batch, self._idle)
            if taken is None:
                with self._lock:
                    if self._queue.empty():
                        self._alive -= 1
                        return
                continue
            batch = [item for entry in taken for item in entry]
            self.batches += 1
            self.bodies += len(batch)
            self._deliver(self.run(batch))

    def run(self, batch: list[tuple[bytes, str, Any]]) -> list[tuple[Any, Outcome | BaseException]]:
        """Check, write and finish ``batch`` of (body, source, tag) in this thread."""
        ingestor = self.ingestor
        done: list[tuple[Any, Outcome | BaseException]] = []
        waiting: list[tuple[Any, PreparedIngest]] = []
        for body, source, tag in batch:
            try:
                checked = ingestor.check(body, source)
            except BaseException as exc:  # e.g. the database, for the data key: this one fails
                done.append((tag, exc))
                continue
            if isinstance(checked, Outcome):
                done.append((tag, checked))
            else:
                waiting.append((tag, checked))
        if not waiting:
            return done
        written = ingestor.writer.commit_now([checked.prepared for _, checked in waiting])
        for (tag, checked), result in zip(waiting, written, strict=True):
            if isinstance(result, BaseException):
                done.append((tag, result))
                continue
            try:
                done.append((tag, ingestor.finish(checked, result)))
            except BaseException as exc:  # the replay check's read failed: this one fails
                done.append((tag, exc))
        return done


@dataclass(frozen=True, eq=False)
class PreparedIngest:
    """A package that passed every check and is ready to write (see :meth:`Ingestor.check`)."""

    source: str
    package_id: str
    n_records: int
    plaintext: bytes
    prepared: PreparedPackage


class Ingestor:
    """Ingests sealed packages, safely from several threads (and processes) at once.

    The one ingestion path: :func:`ingest` (``dmt ingest``) and the HTTP
    service (:mod:`dmt_model.server.service`) both go through :meth:`check`,
    :meth:`submit` and :meth:`finish` (:meth:`ingest_one` chains the three).
    ``refusals`` counts refused packages by the kind of reason.
    """

    def __init__(self, db_url: str | Engine, private_key: ServerPrivateKey | ServerKeyring,
                 policy: ServerPolicy, *, clock: Callable[[], float] = time.time,
                 max_group: int = MAX_GROUP) -> None:
        if not isinstance(private_key, (ServerPrivateKey, ServerKeyring)):
            raise ValidationError(
                "private_key must be a ServerPrivateKey or a ServerKeyring, got "
                f"{type(private_key).__name__}.")
        if not isinstance(policy, ServerPolicy):
            raise ValidationError(
                f"policy must be a ServerPolicy, got {type(policy).__name__}.")
        if isinstance(max_group, bool) or not isinstance(max_group, int) or max_group < 1:
            raise ValidationError(f"max_group must be a positive integer, got {max_group!r}.")
        self.store = SharedStore(db_url, private_key)
        self.engine = self.store.engine
        self.keyring = self.store.keyring
        self.private_key = self.keyring.current
        self.policy = policy
        self.refusals: Counter[str] = Counter()
        #: The issuer's keys by period, when the policy requires a token per package.
        self.token_keys = (IssuerKeys(self.engine, self.keyring,
                                      policy.token_period_days * 86400, clock=clock)
                           if policy.requires_tokens else None)
        self._key: DataKey | None = None
        self._lock = threading.Lock()
        #: The process's writer: one transaction per group of packages waiting together.
        self.writer = GroupCommit(self._write_group, max_group=max_group)
        #: SQLite: writers of the file (this process's threads, other processes) take turns
        self.writer_lock = WriterLock(self.engine)
        #: PostgreSQL: keeps the release's pending blocks from piling up dead rows
        self.vacuum = PendingVacuum(self.engine)

    def data_key(self) -> DataKey:
        """The store's current data key (created on first use)."""
        with self._lock:
            if self._key is None:
                with self._database():
                    self._key = self.store.current_key()
            return self._key

    @staticmethod
    def _database() -> contextlib.AbstractContextManager[None]:
        return _database_errors()

    def _refused(self, source: str, reason: str, package_id: str | None = None,
                 n_records: int = 0) -> Outcome:
        kind = reason.split(":", 1)[0]
        with self._lock:
            self.refusals[kind] += 1
        log.info("package refused (%s): %s", source, reason)
        return Outcome(source, "rejected", reason, package_id, n_records)

    def check(self, envelope: bytes, source: str = "<bytes>") -> Outcome | PreparedIngest:
        """Open, validate and prepare one sealed package: a refusal, or what to :meth:`submit`.

        Needs the database only for the data key (once) and token keys.
        """
        if not isinstance(envelope, (bytes, bytearray, memoryview)):
            return self._refused(source, UNREADABLE)
        envelope = bytes(envelope)
        if len(envelope) > self.policy.max_bytes + ENVELOPE_OVERHEAD:  # not a key problem
            return self._refused(source, f"too large: {len(envelope):,} bytes sealed, over "
                                         f"the policy's max_bytes ({self.policy.max_bytes:,})")
        try:
            package, plaintext = _open(envelope, self.keyring, self.policy)
        except InvalidPackage:
            return self._unreadable_unless_received(source, envelope)
        pid = package.package_id
        try:
            checked = validate_package(package, self.policy)
        except PackageRefused as exc:
            return self._refused_unless_received(source, exc.reason, pid, plaintext,
                                                 package.n_records)
        token: tuple[str, int] | None = None
        with self._database():
            if self.token_keys is not None:
                try:
                    token = self.token_keys.redeem(package.token)
                except InvalidToken as exc:
                    return self._refused_unless_received(
                        source, str(exc.args[0] if exc.args else "token: invalid"), pid,
                        plaintext, package.n_records)
            key = self.data_key()
        prepared = prepare_package(package, plaintext, self.policy, key, checked.columns, token,
                                   envelope_digest=hashlib.sha256(envelope).hexdigest())
        return PreparedIngest(source, pid, package.n_records, plaintext, prepared)

    def submit(self, ready: PreparedIngest) -> Future[Written]:
        """Queue ``ready`` for the next group transaction; its future is set after the commit."""
        return self.writer.submit(ready.prepared)

    def finish(self, ready: PreparedIngest, written: Written, *, alone: bool = False) -> Outcome:
        """The outcome of a written package (reads the database for an id found stored).

        A package whose id was taken but has no row when it is read (a copy of it earlier
        in its group was inserted, then dropped for a spent token) is written again on its
        own (one more transaction), and answered as if it had come alone.
        """
        if written.status == "stored":
            return Outcome(ready.source, "accepted", "", ready.package_id, ready.n_records,
                           released_classes=written.released_classes)
        if written.status == "token_spent":
            return self._refused(ready.source,
                                 "token: double spend (a stored package spent this token)",
                                 ready.package_id, ready.n_records)
        if written.status == "removed":  # received before: the device may acknowledge it
            return self._replay(ready.source, ready.package_id, ready.n_records, removed=True)
        with self._database():
            outcome = self._replay_or_conflict(ready)
        if outcome is not None:
            return outcome
        if alone:  # found stored on its own, then gone: an operator's removal meanwhile
            raise DatabaseUnavailable(f"package {ready.package_id} was removed while it was "
                                      "answered; try again.")
        # No row under its id: a copy of it earlier in the same group was inserted and then
        # dropped (its token was spent), so this one was never tried. Written alone, it is
        # answered as if it had come alone.
        (result,) = self.writer.commit_now([ready.prepared])
        if isinstance(result, BaseException):
            raise result
        return self.finish(ready, result, alone=True)

    def ingest_one(self, envelope: bytes, source: str = "<bytes>") -> Outcome:
        """Open, validate and store one sealed package; its :class:`Outcome`.

        Never raises for a package, however crafted: it is refused with a
        reason for the log. Raises :class:`DatabaseUnavailable` when the
        database fails (the caller may retry), and lets other errors of the
        database layer through.
        """
        ready = self.check(envelope, source)
        if isinstance(ready, Outcome):
            return ready
        return self.finish(ready, self.submit(ready).result())

    def _write_group(self, group: list[PreparedPackage]) -> list[Written]:
        """One transaction for ``group``, tried again after a deadlock, a concurrent release
        or on a fresh connection when the database had dropped the one used."""
        key = self.data_key()
        with self._database(), self.writer_lock:
            for attempt in range(_WRITE_ATTEMPTS):
                try:
                    with self.engine.begin() as conn:
                        written = write_prepared(conn, group, self.policy, key)
                    self.vacuum.written(sum(
                        len(p.record_rows) for p, w in zip(group, written, strict=True)
                        if w.status == "stored"))
                    return written
                except IntegrityError:
                    # another process released the same blocks first (one that does not
                    # lock the class rows first, as store.lock_classes does): go again
                    if attempt == _WRITE_ATTEMPTS - 1:
                        raise
                except DBAPIError as exc:
                    # a deadlock, or a connection the database had dropped (a restart):
                    # nothing was committed, or (dropped during COMMIT) the retry finds the
                    # packages stored and answers them as replays
                    if not (_retryable(exc) or exc.connection_invalidated) \
                            or attempt == _WRITE_ATTEMPTS - 1:
                        raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _replay_or_conflict(self, ready: PreparedIngest) -> Outcome | None:
        """A replay if the stored package is these bytes; a refusal if the id is reused; None
        if no package is stored under its id."""
        stored = self._stored(ready.package_id, ready.plaintext)
        if stored is None:
            return None
        if stored:
            return self._replay(ready.source, ready.package_id, ready.n_records)
        return self._refused(ready.source, "conflict: the package id is stored with other "
                             "content", ready.package_id, ready.n_records)

    def _stored(self, pid: str, plaintext: bytes) -> bool | None:
        """Whether the package stored under ``pid`` is ``plaintext`` (None: none is stored)."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(PackageRow.key_id, PackageRow.nonce, PackageRow.payload)
                .where(PackageRow.package_id == pid)).one_or_none()
        if row is None:
            return None
        key_id, nonce, payload = row
        try:
            stored = self.store.key(key_id).decrypt(nonce, payload, payload_aad(pid, key_id))
        except Exception:  # a damaged row: the id is taken, these bytes are not it
            stored = None
        return stored == plaintext

    @staticmethod
    def _replay(source: str, pid: str, n_records: int, *, removed: bool = False) -> Outcome:
        """The answer to a package received before: the device may acknowledge it."""
        what = ("was removed from the store by its operator; it is not stored again"
                if removed else "is already stored")
        return Outcome(source, "rejected", f"replay: package {pid} {what}", pid, n_records,
                       True)

    def _refused_unless_received(self, source: str, reason: str, pid: str, plaintext: bytes,
                                 n_records: int) -> Outcome:
        """A refusal for ``reason``, unless this very package was received before: stored
        (these bytes under its id) or removed by the operator, which a device's retry of a
        package whose answer it never got must hear as a replay, whatever changed since
        (the policy, the token's period). Refused, a device abandons the package and shares
        its records again: ε charged twice and one device two contributors to a class
        (helper-96). Only refusals read the database for this."""
        with self._database():
            if self._stored(pid, plaintext):
                return self._replay(source, pid, n_records)
            with self.engine.connect() as conn:
                removed = conn.execute(select(RemovedPackageRow.package_id).where(
                    RemovedPackageRow.package_id == pid)).first() is not None
        if removed:
            return self._replay(source, pid, n_records, removed=True)
        return self._refused(source, reason, pid, n_records)

    def _unreadable_unless_received(self, source: str, envelope: bytes) -> Outcome:
        """A refusal of an envelope that does not open, unless these very bytes were stored:
        a device's retry of a package stored before its key was retired, or before the
        policy's size limits were lowered, is a replay (refused, the device abandons it and
        shares its records again, as in helper-96). Only such refusals read the table."""
        reason = _unreadable(envelope, self.keyring)
        with self._database(), self.engine.connect() as conn:
            row = conn.execute(
                select(EnvelopeRow.package_id, PackageRow.n_records)
                .outerjoin(PackageRow, PackageRow.package_id == EnvelopeRow.package_id)
                .where(EnvelopeRow.digest == hashlib.sha256(envelope).hexdigest())).first()
        if row is None:
            return self._refused(source, reason)
        pid, n_records = row
        return self._replay(source, pid, n_records or 0, removed=n_records is None)

    def __call__(self, envelope: bytes, source: str = "<http>") -> Outcome:
        return self.ingest_one(envelope, source)

    def healthy(self) -> bool:
        """Whether the database answers."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError:
            return False
        return True


@contextlib.contextmanager
def _database_errors() -> Iterator[None]:
    """Turns a failing database (not a replay's IntegrityError) into DatabaseUnavailable."""
    try:
        yield
    except IntegrityError:
        raise
    except SQLAlchemyError as exc:
        raise DatabaseUnavailable(
            f"The database failed ({type(exc).__name__}); the package was not stored, "
            "try again.") from exc


def ingest(
    sources: bytes | str | os.PathLike[str] | Iterable[bytes | str | os.PathLike[str]],
    db_url: str | Engine,
    private_key: ServerPrivateKey | ServerKeyring,
    policy: ServerPolicy,
    *,
    max_group: int = MAX_GROUP,
) -> IngestReport:
    """Open, validate and store share packages; see the module docstring.

    ``sources``: package bytes, files, directories (their ``*.dmt`` files,
    recursively, sorted by path), or a list of these. ``db_url``: an SQLAlchemy URL, a SQLite
    file path or an engine. Packages are read ``max_group`` at a time, checked,
    and the good ones written in ONE transaction (the service's group write,
    :meth:`GroupCommit.commit_now`); an outcome is recorded only after its
    commit. Returns an :class:`IngestReport`; never raises for a bad package
    (it is rejected with a reason), only for a bad setup or a failing
    database: then the group is finished first (a package whose write fails
    is retried alone, so the others of its group are stored), the first error
    is raised and nothing after that group is read. Running it again stores
    what is left, each package exactly once (the rest are counted replays).
    """
    ingestor = Ingestor(db_url, private_key, policy, max_group=max_group)
    ingestor.data_key()
    batch = BatchIngest(ingestor, lambda done: None, max_batch=max_group)
    report = IngestReport()
    group: list[tuple[bytes, str, Any]] = []
    for name, data in iter_sources(sources, max_bytes=policy.max_bytes):
        if data is None:
            group.append((b"", name, "too large: over max_bytes"))
        else:
            group.append((data, name, None))
        if len(group) == max_group:
            _ingest_group(batch, group, report)
            group = []
    if group:
        _ingest_group(batch, group, report)
    report.counts = ingestor.store.counts()
    return report


def _ingest_group(batch: BatchIngest, group: list[tuple[bytes, str, Any]],
                  report: IngestReport) -> None:
    """Check and write ``group`` (one transaction), its outcomes in order into ``report``.

    A ``group`` item is (body, source, None), or ("", source, reason) for a
    file refused unread.
    """
    ingestor = batch.ingestor
    results: list[Outcome | BaseException | None] = [None] * len(group)
    readable: list[tuple[bytes, str, Any]] = []
    for i, (body, source, refused) in enumerate(group):
        if refused is None:
            readable.append((body, source, i))
        else:
            results[i] = ingestor._refused(source, refused)
    for i, result in batch.run(readable):
        results[i] = result
    for outcome in results:
        if isinstance(outcome, BaseException):
            raise outcome
        assert outcome is not None
        report.released_classes += outcome.released_classes
        report.outcomes.append(outcome)
