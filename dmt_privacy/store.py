"""LocalStore: the device's encrypted database of one user's records and what became of them.

One sealed file holds, for one user and one :class:`~dmt_privacy.schema.Schema`:

- **records**, each with a record id, whether it may ever be shared
  (``shareable``) and, once the server has acknowledged the package that
  carried it, the package id and the time (``shared``);
- the **outbox**: sealed share packages awaiting the server's
  acknowledgement, with the ids of the records each one carries. A record
  in a pending package is *pending*, not shared: it is marked shared only by
  :meth:`LocalStore.acknowledge`;
- the **privacy ledger**: :class:`~dmt_privacy.dp.PrivacyLedger` keeps its
  ``dp_`` tables in this same file (:attr:`LocalStore.ledger`); nothing here
  writes to them, the DP perturber charges them when it releases;
- **personal model versions**: path, version number, creation time;
- the **draws** of records in packages the server has not acknowledged: what each
  modified or perturbed field released, by transformation. A record shared again after
  its package was abandoned releases the same values (:meth:`LocalStore.draws`), not a
  fresh draw the server could set beside the first.

Record values are stored as one msgpack array per record, in schema order
(numpy arrays, e.g. images and audio, as a msgpack extension).

At rest the whole database is one AES-256-GCM sealed file under a 32-byte
key the app supplies from the platform keystore
(:class:`~dmt_privacy.sealed_database.SealedDatabase`): someone with the file
but not the key reads nothing and cannot change, remove, reorder or roll back
anything inside it unnoticed; a wrong key, an altered byte or a truncated file
raises :class:`~dmt_privacy.errors.StoreIntegrityError` naming the file. The
file is created 0600. Every write is one transaction that replaces the file
atomically, so a process killed at any point leaves the file as it was before
the write or after it. Not detected by the file alone: its replacement by an
older copy of itself, or its deletion (keep :attr:`LocalStore.generation`
outside the file and pass ``min_generation=`` to detect those).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import os
import secrets
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pandas as pd

from dmt_privacy.dp.ledger import PrivacyLedger
from dmt_privacy.errors import SchemaError, StoreIntegrityError, ValidationError
from dmt_privacy.schema import Schema
from dmt_privacy.sealed_database import KEY_SIZE, SealedDatabase, check_key

__all__ = ["LocalStore", "ModelVersion", "OutboxEntry", "RecordState"]

STORE_FORMAT = 1
_NDARRAY_EXT = 1

_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS store_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    record_id TEXT NOT NULL UNIQUE,
    shareable INTEGER NOT NULL CHECK (shareable IN (0, 1)),
    shared_package TEXT,
    shared_at TEXT,
    added_at TEXT NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    package_id TEXT PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('pending', 'acknowledged', 'abandoned')),
    envelope BLOB,
    n_records INTEGER NOT NULL,
    receipt TEXT NOT NULL,
    created_at TEXT NOT NULL,
    closed_at TEXT
);
CREATE TABLE IF NOT EXISTS outbox_records (
    package_id TEXT NOT NULL REFERENCES outbox(package_id),
    record_id TEXT NOT NULL REFERENCES records(record_id),
    PRIMARY KEY (package_id, record_id)
);
CREATE INDEX IF NOT EXISTS outbox_records_record ON outbox_records(record_id);
CREATE TABLE IF NOT EXISTS model_versions (
    version INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    created_at TEXT NOT NULL,
    note TEXT NOT NULL DEFAULT ''
);
"""

_STATES = ("all", "unshared", "eligible", "pending", "shared", "private")
#: Privacy Pass tokens sealed in the outbox's packages, by digest (one token, one package)
_TOKENS_TABLE = ("CREATE TABLE IF NOT EXISTS outbox_tokens (digest TEXT PRIMARY KEY, "
                 "package_id TEXT NOT NULL REFERENCES outbox(package_id))")

#: What each record released in a package not acknowledged, field by field under one
#: transformation (:meth:`LocalStore.draws`); dropped when a package carrying it is
#: acknowledged
_DRAWS_TABLE = ("CREATE TABLE IF NOT EXISTS release_draws (record_id TEXT NOT NULL REFERENCES "
                "records(record_id), field TEXT NOT NULL, transform TEXT NOT NULL, value BLOB "
                "NOT NULL, PRIMARY KEY (record_id, field, transform))")

#: The SHA-256 of each personal model file when its version was added (:meth:`check_model`)
_MODEL_HASHES_TABLE = ("CREATE TABLE IF NOT EXISTS model_hashes (version INTEGER PRIMARY KEY "
                       "REFERENCES model_versions(version), sha256 TEXT NOT NULL)")

#: The issuer key (one a period) of each package's token: a device may send a class of the
#: plan again only in another period (:func:`dmt_privacy.sharing.share`'s ``held_back``)
_PERIODS_TABLE = ("CREATE TABLE IF NOT EXISTS outbox_token_keys (package_id TEXT PRIMARY "
                  "KEY REFERENCES outbox(package_id), key_id TEXT NOT NULL)")


def _token_digest(token: bytes) -> str:
    return hashlib.sha256(bytes(token)).hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


def _pack_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise ValidationError("Object arrays cannot be stored; convert them to a list.")
        header = msgpack.packb([obj.dtype.str, list(obj.shape)])
        return msgpack.ExtType(_NDARRAY_EXT, header + np.ascontiguousarray(obj).tobytes())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (pd.Timestamp, _dt.datetime, _dt.date)):
        return obj.isoformat()
    raise ValidationError(
        f"A value of type {type(obj).__name__} cannot be stored in a LocalStore; store "
        "numbers, strings, booleans or numpy arrays."
    )


def _draw_rows(draws: Mapping[tuple[str, str], Mapping[str, Any]],
               ids: set[str]) -> list[tuple[str, str, str, bytes]]:
    """The rows of ``release_draws`` for the records of one package, each value packed as
    record payloads are. A value that cannot be packed (an object array), or that would not
    come back as it went (a tuple as a list, a timestamp as text, a structured array), is left
    out: that record draws afresh if shared again (helper-123)."""
    rows = []
    for (name, transform), values in draws.items():
        for record_id, value in values.items():
            if str(record_id) not in ids:
                continue
            try:
                packed = msgpack.packb(value, default=_pack_default, use_bin_type=True)
                back = msgpack.unpackb(packed, raw=False, ext_hook=_ext_hook)
            except (ValidationError, TypeError, ValueError, OverflowError, UnicodeError):
                continue
            if _comes_back(value, back):
                rows.append((str(record_id), str(name), str(transform), packed))
    return rows


def _comes_back(value: Any, back: Any) -> bool:
    """Whether ``back``, unpacked, is ``value`` as a package carries it (numpy scalars as
    Python's, as ``tolist`` gives them)."""
    if isinstance(value, np.ndarray):
        return (isinstance(back, np.ndarray) and back.dtype == value.dtype
                and back.shape == value.shape and value.dtype.names is None)
    if isinstance(value, np.generic):
        return type(back) is type(value.item())
    return type(back) is type(value)


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    """Whether the store holds table ``name`` (tables added since its format are made on
    first use)."""
    return conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (name,)).fetchone() \
        is not None


def _ext_hook(code: int, data: bytes) -> Any:
    if code != _NDARRAY_EXT:
        return msgpack.ExtType(code, data)
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data)
    dtype, shape = unpacker.unpack()
    offset = unpacker.tell()
    return np.frombuffer(data[offset:], dtype=np.dtype(dtype)).reshape(shape).copy()


@dataclass(frozen=True)
class RecordState:
    """Where one record stands: may it be shared, is it in a pending package, was it shared."""

    record_id: str
    shareable: bool
    pending_package: str | None
    shared_package: str | None
    shared_at: str | None

    @property
    def shared(self) -> bool:
        return self.shared_package is not None


@dataclass(frozen=True)
class OutboxEntry:
    """A sealed package in the outbox: sent or not, awaiting the server's acknowledgement."""

    package_id: str
    status: str
    envelope: bytes | None
    n_records: int
    receipt: str
    created_at: str
    closed_at: str | None
    record_ids: tuple[str, ...]


@dataclass(frozen=True)
class ModelVersion:
    """One personal model the device kept: where its file is, its number and when, and
    the SHA-256 of its bytes when it was added (``None``: no file there then, or a version
    added before the store kept hashes)."""

    version: int
    path: Path
    created_at: str
    note: str = ""
    sha256: str | None = None


class LocalStore:
    """The device's database: records, their shared state, the outbox, the ledger, models.

    Parameters
    ----------
    path:
        The store's file (created 0600 by the first write if missing).
    key:
        32 random bytes the app keeps in the platform keystore (iOS Keychain,
        Android Keystore; see the README), made once with
        :meth:`generate_key`. The file is encrypted and authenticated under
        it; a file sealed under another key raises
        :class:`~dmt_privacy.errors.StoreKeyError`. Required: an unencrypted
        store from an older dmt-sdk is converted once by
        :meth:`encrypt_existing`.
    schema:
        The records' schema: required when the file is created, checked
        against the stored one when given on reopening.
    user_id:
        The device owner, the key of the privacy ledger: required when the
        file is created, checked when given on reopening. It never leaves
        the device (share packages do not carry it).
    epsilon_budget, delta_budget:
        The privacy budget, passed to :class:`~dmt_privacy.dp.PrivacyLedger`
        the first time; afterwards the stored budget is used.
    ledger_key:
        Optional ``integrity_key`` of the ledger's hash chain (at least 16
        bytes). The sealed file already authenticates the ledger under
        ``key``; this adds nothing against someone without ``key`` and is
        kept for stores that used it. Give the same key every time.
    min_generation:
        The :attr:`generation` the app saw last (kept outside the file, e.g.
        in the keychain beside the key): a file with a lower generation, an
        older copy put back, or a missing file is refused.
    timeout:
        Seconds to wait for another process's write to finish.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        schema: Schema | None = None,
        user_id: str | None = None,
        epsilon_budget: float | None = None,
        delta_budget: float | None = None,
        timeout: float = 30.0,
        ledger_key: bytes | None = None,
        key: bytes | None = None,
        min_generation: int | None = None,
    ) -> None:
        self.path = Path(path)
        self._ledger_key = ledger_key
        self._db = SealedDatabase(self.path, check_key(key, self.path), timeout=timeout,
                                  min_generation=min_generation)
        self._conn = self._db.connection
        try:
            self._conn.execute("PRAGMA foreign_keys=ON")
            self.schema, self.user_id = self._open_meta(schema, user_id)
            self._names = self.schema.names
            self._budget = (epsilon_budget, delta_budget)
            self._ledger: PrivacyLedger | None = None
            if epsilon_budget is not None:  # stored now, not when the ledger is first used
                self.ledger  # noqa: B018
        except BaseException:
            self._db.close()
            raise

    # --- keys -----------------------------------------------------------------------
    @staticmethod
    def generate_key() -> bytes:
        """A new random store key (32 bytes from ``secrets``): keep it in the platform keystore."""
        return secrets.token_bytes(KEY_SIZE)

    @staticmethod
    def encrypt_existing(path: str | os.PathLike[str], *, key: bytes) -> None:
        """Convert an unencrypted store (made by an older dmt-sdk) to a sealed one, in place.

        Reads the SQLite file with its WAL, seals it under ``key`` and replaces
        it atomically (a process killed meanwhile leaves the old or the new
        file), then removes the old ``-wal`` / ``-shm`` / ``-journal`` files.
        Close every connection to the file first. The plaintext may survive in
        free blocks of the disk or flash: this protects copies made from now on.
        """
        path = Path(path)
        check_key(key, path)
        with open(path, "rb") as handle:
            head = handle.read(16)
        if head != b"SQLite format 3\x00":
            raise ValidationError(f"{path} is not an unencrypted LocalStore (not an SQLite "
                                  "file); nothing was changed.")
        source = sqlite3.connect(os.fspath(path), isolation_level=None)
        try:
            tables = {r[0] for r in source.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "store_meta" not in tables:
                raise ValidationError(f"{path} is an SQLite file but not a LocalStore (no "
                                      "store_meta table); nothing was changed.")
            source.execute("PRAGMA journal_mode=DELETE")  # folds the WAL in
            image = source.serialize()
        finally:
            source.close()
        SealedDatabase.seal_image(path, key, image)
        for suffix in ("-wal", "-shm", "-journal"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)

    @contextlib.contextmanager
    def sharing_turn(self) -> Iterator[None]:
        """Hold the store's sharing lock for the block: one
        :func:`~dmt_privacy.sharing.share` of this file at a time, across processes and
        store objects (another waits up to the store's ``timeout``, then
        :class:`~dmt_privacy.errors.StoreLockedError`). ``share`` takes it itself; an app
        never needs to."""
        with self._db.turn("share"):
            yield

    @property
    def generation(self) -> int:
        """How many writes the file has had (1 once created); only grows.

        An app that keeps it outside the file after each write (e.g. in the
        keychain) and passes it back as ``min_generation=`` detects an older
        copy of the file put back in its place.
        """
        self._db.refresh()
        return self._db.generation

    def _read(self) -> sqlite3.Connection:
        """The connection, after loading what other processes wrote since."""
        self._db.refresh()
        return self._conn

    # --- metadata -------------------------------------------------------------------
    def _open_meta(self, schema: Schema | None, user_id: str | None) -> tuple[Schema, str]:
        if not self._db.exists:
            if schema is None or user_id is None:
                raise ValidationError(
                    f"{self.path} is a new LocalStore: pass schema= and user_id= to create it."
                )
            if not isinstance(user_id, str) or not user_id:
                raise ValidationError(f"user_id must be a non-empty string, got {user_id!r}.")
            with self._transaction() as conn:
                if not conn.execute("SELECT 1 FROM sqlite_master").fetchone():  # still new
                    for statement in _SCHEMA_SQL.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.executemany(
                        "INSERT INTO store_meta VALUES (?, ?)",
                        [("format", str(STORE_FORMAT)), ("schema", schema.to_json()),
                         ("user_id", user_id), ("created_at", _now())],
                    )
        try:
            meta = dict(self._conn.execute("SELECT key, value FROM store_meta").fetchall())
        except sqlite3.DatabaseError:
            meta = {}
        if not meta or "schema" not in meta or "user_id" not in meta:
            raise StoreIntegrityError(
                f"{self.path} opens under the key but holds no LocalStore (no store metadata); "
                "it is another kind of sealed database. Nothing was read from it."
            )
        if meta.get("format") != str(STORE_FORMAT):
            raise SchemaError(
                f"{self.path}: LocalStore format {meta.get('format')!r} is not supported (this "
                f"SDK reads format {STORE_FORMAT}); upgrade dmt."
            )
        stored = Schema.from_json(meta["schema"])
        if schema is not None and schema.schema_id != stored.schema_id:
            raise SchemaError(
                f"{self.path} holds records of schema {stored.name!r} (id {stored.schema_id}), "
                f"not of schema {schema.name!r} (id {schema.schema_id}); open it without "
                "schema= or use another file."
            )
        if user_id is not None and user_id != meta["user_id"]:
            raise ValidationError(
                f"{self.path} belongs to user {meta['user_id']!r}, not {user_id!r}."
            )
        return stored, meta["user_id"]

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write: the latest state, the block, then the file re-sealed (or nothing)."""
        with self._db.transaction() as conn:
            yield conn

    # --- the ledger -------------------------------------------------------------------
    @property
    def ledger(self) -> PrivacyLedger:
        """The user's :class:`~dmt_privacy.dp.PrivacyLedger`, in this same database file."""
        if self._ledger is None:
            eps, dlt = self._budget
            self._ledger = PrivacyLedger(self._db, user_id=self.user_id,
                                         epsilon_budget=eps, delta_budget=dlt,
                                         integrity_key=self._ledger_key)
        return self._ledger

    # --- records ----------------------------------------------------------------------
    def add_records(
        self,
        frame: pd.DataFrame,
        *,
        ids: Sequence[Any] | None = None,
        shareable: bool = True,
    ) -> list[str]:
        """Store records (every schema field, nothing else); return their ids.

        ``ids`` default to the frame's index labels, as strings. ``shareable=False``
        marks records that never leave the device: no policy selects them.
        Refuses ids already stored; nothing is written then.
        """
        if not isinstance(frame, pd.DataFrame):
            raise ValidationError(f"add_records expects a DataFrame, got {type(frame).__name__}.")
        self.schema.validate(frame)
        labels = list(frame.index) if ids is None else list(ids)
        if len(labels) != len(frame):
            raise ValidationError(f"ids has {len(labels)} entries for {len(frame)} records.")
        record_ids = [str(v) for v in labels]
        if len(set(record_ids)) != len(record_ids):
            raise ValidationError("Record ids repeat within the records to add; make them unique.")
        columns = [frame[name].tolist() for name in self._names]
        packer = msgpack.Packer(default=_pack_default, use_bin_type=True)
        now = _now()
        rows = [
            (rid, int(bool(shareable)), now, packer.pack(list(values)))
            for rid, values in zip(record_ids, zip(*columns, strict=True), strict=True)
        ]
        try:
            with self._transaction() as conn:
                conn.executemany(
                    "INSERT INTO records (record_id, shareable, added_at, payload) "
                    "VALUES (?, ?, ?, ?)",
                    rows,
                )
        except sqlite3.IntegrityError:
            placeholders = ",".join("?" * len(record_ids))
            taken = [r[0] for r in self._conn.execute(
                f"SELECT record_id FROM records WHERE record_id IN ({placeholders}) LIMIT 5",  # noqa: S608
                record_ids,
            )] if len(record_ids) < 30000 else []
            raise ValidationError(
                f"Record id(s) {taken!r} are already stored; nothing was added. Pass ids= "
                "with new ids."
            ) from None
        return record_ids

    def _where(self, state: str) -> str:
        pending = ("record_id IN (SELECT r.record_id FROM outbox_records r JOIN outbox o "
                   "ON o.package_id = r.package_id WHERE o.status = 'pending')")
        clauses = {
            "all": "1",
            "unshared": "shared_package IS NULL",
            "shared": "shared_package IS NOT NULL",
            "private": "shareable = 0",
            "pending": f"shared_package IS NULL AND {pending}",
            "eligible": f"shareable = 1 AND shared_package IS NULL AND NOT {pending}",
        }
        if state not in clauses:
            raise ValidationError(f"state must be one of {_STATES!r}, got {state!r}.")
        return clauses[state]

    def records(self, state: str = "all", *, ids: Iterable[str] | None = None) -> pd.DataFrame:
        """Records as a DataFrame indexed by record id, in the order they were added.

        ``state``: ``"all"``; ``"unshared"`` (no acknowledged package carries them,
        the records a personal model may be trained on after the foundation
        learned the shared ones); ``"shared"`` (acknowledged); ``"pending"`` (in
        a package awaiting acknowledgement); ``"eligible"`` (shareable, unshared
        and not pending: what a sharing policy selects from); ``"private"``
        (never shareable). ``ids`` restricts to those record ids.
        """
        sql = f"SELECT record_id, payload FROM records WHERE {self._where(state)}"  # noqa: S608
        rows = self._read().execute(sql + " ORDER BY seq").fetchall()
        if ids is not None:
            wanted = {str(i) for i in ids}
            rows = [r for r in rows if r[0] in wanted]
        unpacker_args: dict[str, Any] = {"raw": False, "ext_hook": _ext_hook}
        values = [msgpack.unpackb(r[1], **unpacker_args) for r in rows]
        index = pd.Index([r[0] for r in rows], name="record_id", dtype=object)
        if not values:
            return pd.DataFrame({n: pd.Series(dtype=object) for n in self._names}, index=index)
        return pd.DataFrame(values, columns=self._names, index=index)

    def record_ids(self, state: str = "all") -> list[str]:
        sql = f"SELECT record_id FROM records WHERE {self._where(state)} ORDER BY seq"  # noqa: S608
        return [r[0] for r in self._read().execute(sql)]

    def state(self, record_id: str) -> RecordState:
        row = self._read().execute(
            "SELECT shareable, shared_package, shared_at FROM records WHERE record_id = ?",
            (str(record_id),),
        ).fetchone()
        if row is None:
            raise KeyError(f"No record {record_id!r} in {self.path}.")
        pending = self._conn.execute(
            "SELECT o.package_id FROM outbox_records r JOIN outbox o ON o.package_id = "
            "r.package_id WHERE r.record_id = ? AND o.status = 'pending'", (str(record_id),),
        ).fetchone()
        return RecordState(str(record_id), bool(row[0]), pending[0] if pending else None,
                           row[1], row[2])

    def count(self, state: str = "all") -> int:
        sql = f"SELECT COUNT(*) FROM records WHERE {self._where(state)}"  # noqa: S608
        return int(self._read().execute(sql).fetchone()[0])

    # --- outbox -----------------------------------------------------------------------
    def add_to_outbox(
        self, package_id: str, envelope: bytes, record_ids: Sequence[str], receipt: str,
        *, token: bytes | None = None, token_key: str | None = None,
        draws: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
    ) -> OutboxEntry:
        """Put a sealed package in the outbox; its records become pending (not shared).

        Called by :func:`dmt_privacy.sharing.share`. Refuses records that are
        unknown, never shareable, already shared or pending in another package, and a
        ``token`` (the Privacy Pass token sealed in it) already sealed in another package:
        two packages with one token would be linked to one device (:meth:`token_package`).
        ``token_key``: the token's issuer key id (its period), kept for
        :meth:`package_token_keys`. ``draws``: (field, transformation) → record id → the value
        the package releases, kept for :meth:`draws` (a value the store cannot pack is not
        kept: that record draws afresh if shared again).
        """
        ids = [str(r) for r in record_ids]
        if not ids:
            raise ValidationError("A package in the outbox must carry at least one record.")
        now = _now()
        with self._transaction() as conn:
            if token is not None:
                conn.execute(_TOKENS_TABLE)  # a store from before it: made on first use
                held = conn.execute("SELECT package_id FROM outbox_tokens WHERE digest = ?",
                                    (_token_digest(token),)).fetchone()
                if held is not None:
                    raise ValidationError(
                        f"This token is already sealed in package {held[0]}: one token, one "
                        "package (two would be linked to one device). Take another from the "
                        "wallet; nothing was added to the outbox.")
            placeholders = ",".join("?" * len(ids))
            ok: set[str] = set()
            for start in range(0, len(ids), 900):
                chunk = ids[start:start + 900]
                placeholders = ",".join("?" * len(chunk))
                ok.update(r[0] for r in conn.execute(
                    f"SELECT record_id FROM records WHERE record_id IN ({placeholders}) "  # noqa: S608
                    f"AND {self._where('eligible')}", chunk))
            bad = [r for r in ids if r not in ok]
            if bad:
                raise ValidationError(
                    f"Record(s) {bad[:5]!r} are not eligible for a package (unknown, never "
                    "shareable, shared or pending); nothing was added to the outbox."
                )
            conn.execute(
                "INSERT INTO outbox (package_id, status, envelope, n_records, receipt, "
                "created_at) VALUES (?, 'pending', ?, ?, ?, ?)",
                (package_id, bytes(envelope), len(ids), receipt, now),
            )
            conn.executemany("INSERT INTO outbox_records VALUES (?, ?)",
                             [(package_id, r) for r in ids])
            if token is not None:
                conn.execute("INSERT INTO outbox_tokens VALUES (?, ?)",
                             (_token_digest(token), package_id))
            if token_key is not None:
                conn.execute(_PERIODS_TABLE)  # made on first use, as outbox_tokens
                conn.execute("INSERT INTO outbox_token_keys VALUES (?, ?)",
                             (package_id, str(token_key)))
            rows = _draw_rows(draws or {}, set(ids))
            if rows:
                conn.execute(_DRAWS_TABLE)  # made on first use, as outbox_tokens
                conn.executemany("INSERT OR REPLACE INTO release_draws VALUES (?, ?, ?, ?)",
                                 rows)
        return self.outbox_entry(package_id)

    def draws(self, field: str, transform: str, record_ids: Iterable[str]) -> dict[str, Any]:
        """What ``field`` of these records released under ``transform`` in a package the server
        never acknowledged (record id → value; a record with none is left out).

        :func:`~dmt_privacy.sharing.share` sends these values again rather than drawing new
        ones: the server opened the abandoned package, and a second synonym draw or a second
        noisy value of one record, set beside the first, tells it more than either
        (``benchmarks/reshare_exposure.py``: 97.4 % of a note's original words across 4
        refused shares, a mean over 200 notes, where one package shows 85 %). A value re-sent
        is post-processing of its first release, so the ledger is not charged for it again.
        ``transform`` names the transformation with its parameters and the SDK's code; under
        another one the record draws afresh.
        """
        wanted = [str(r) for r in record_ids]
        conn = self._read()
        if not wanted or not _has_table(conn, "release_draws"):
            return {}
        found: dict[str, Any] = {}
        for start in range(0, len(wanted), 900):
            chunk = wanted[start:start + 900]
            placeholders = ",".join("?" * len(chunk))
            for record_id, value in conn.execute(
                    f"SELECT record_id, value FROM release_draws WHERE field = ? AND "  # noqa: S608
                    f"transform = ? AND record_id IN ({placeholders})",
                    [field, transform, *chunk]):
                found[str(record_id)] = msgpack.unpackb(value, raw=False, ext_hook=_ext_hook)
        return found

    def token_package(self, token: bytes) -> str | None:
        """The package ``token`` (a Privacy Pass token's bytes) is sealed in, if any: kept
        for every package, sent, pending or abandoned, since the server may have seen it."""
        conn = self._read()
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'outbox_tokens'").fetchone() \
                is None:
            return None
        row = conn.execute("SELECT package_id FROM outbox_tokens WHERE digest = ?",
                           (_token_digest(token),)).fetchone()
        return None if row is None else str(row[0])

    def package_token_keys(self) -> dict[str, str]:
        """Each package's token issuer key id (its period), for the packages sent with one."""
        conn = self._read()
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'outbox_token_keys'"
                        ).fetchone() is None:
            return {}
        return {str(p): str(k) for p, k in conn.execute(
            "SELECT package_id, key_id FROM outbox_token_keys")}

    def outbox_entry(self, package_id: str) -> OutboxEntry:
        row = self._read().execute(
            "SELECT package_id, status, envelope, n_records, receipt, created_at, closed_at "
            "FROM outbox WHERE package_id = ?", (package_id,),
        ).fetchone()
        if row is None:
            raise KeyError(f"No package {package_id!r} in the outbox of {self.path}.")
        ids = tuple(r[0] for r in self._conn.execute(
            "SELECT record_id FROM outbox_records WHERE package_id = ? ORDER BY rowid",
            (package_id,)))
        return OutboxEntry(row[0], row[1], None if row[2] is None else bytes(row[2]), row[3],
                           row[4], row[5], row[6], ids)

    def outbox(self, status: str = "pending") -> list[OutboxEntry]:
        """Outbox entries with ``status`` (``"pending"``, ``"acknowledged"``, ``"abandoned"``)."""
        ids = [r[0] for r in self._read().execute(
            "SELECT package_id FROM outbox WHERE status = ? ORDER BY created_at, package_id",
            (status,))]
        return [self.outbox_entry(p) for p in ids]

    def acknowledge(self, package_id: str) -> int:
        """Record the server's acknowledgement: the package's records become shared.

        Returns how many records were newly marked shared; acknowledging twice
        changes nothing the second time. The sealed bytes are dropped.
        """
        now = _now()
        with self._transaction() as conn:
            row = conn.execute("SELECT status FROM outbox WHERE package_id = ?",
                               (package_id,)).fetchone()
            if row is None:
                raise ValidationError(
                    f"Package {package_id!r} is not in the outbox of {self.path}; nothing was "
                    "marked shared."
                )
            if row[0] == "acknowledged":
                return 0
            cur = conn.execute(
                "UPDATE records SET shared_package = ?, shared_at = ? WHERE shared_package IS "
                "NULL AND record_id IN (SELECT record_id FROM outbox_records WHERE "
                "package_id = ?)", (package_id, now, package_id),
            )
            conn.execute(
                "UPDATE outbox SET status = 'acknowledged', envelope = NULL, closed_at = ? "
                "WHERE package_id = ?", (now, package_id),
            )
            if _has_table(conn, "release_draws"):  # shared now: never drawn again
                conn.execute("DELETE FROM release_draws WHERE record_id IN (SELECT record_id "
                             "FROM outbox_records WHERE package_id = ?)", (package_id,))
            return int(cur.rowcount)

    def abandon(self, package_id: str) -> None:
        """Drop a pending package the server did not store; its records become eligible again.

        For a package never delivered, or one the server refused (it stored
        nothing). One the server did store is acknowledged, and its records are
        then marked shared anyway. An abandoned package's classes no longer hold
        back the device's records (``share``'s ``held_back``); its token is never
        sealed again. What its records released is kept (:meth:`draws`): shared again,
        they release the same values.
        """
        with self._transaction() as conn:
            cur = conn.execute(
                "UPDATE outbox SET status = 'abandoned', envelope = NULL, closed_at = ? "
                "WHERE package_id = ? AND status = 'pending'", (_now(), package_id),
            )
            if cur.rowcount != 1:
                raise ValidationError(f"Package {package_id!r} is not pending in the outbox.")

    # --- personal models ----------------------------------------------------------------
    def add_model_version(self, path: str | os.PathLike[str], *, note: str = "") -> ModelVersion:
        """Record a new personal model file; its version is one more than the last.

        The file's SHA-256 is kept with it (when the file exists), so :meth:`check_model`
        can tell the file replaced or put back at an older version: the file itself sits
        beside the store, not sealed in it."""
        file = Path(path)
        digest = hashlib.sha256(file.read_bytes()).hexdigest() if file.is_file() else None
        with self._transaction() as conn:
            last = conn.execute("SELECT MAX(version) FROM model_versions").fetchone()[0]
            version = 1 if last is None else int(last) + 1
            conn.execute("INSERT INTO model_versions VALUES (?, ?, ?, ?)",
                         (version, os.fspath(path), _now(), note))
            if digest is not None:
                conn.execute(_MODEL_HASHES_TABLE)  # made on first use
                conn.execute("INSERT INTO model_hashes VALUES (?, ?)", (version, digest))
        return self.model_versions()[-1]

    def model_versions(self) -> list[ModelVersion]:
        conn = self._read()
        hashes = {} if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'model_hashes'"
                                    ).fetchone() is None else dict(
            conn.execute("SELECT version, sha256 FROM model_hashes").fetchall())
        return [
            ModelVersion(int(r[0]), Path(r[1]), r[2], r[3], hashes.get(int(r[0])))
            for r in conn.execute(
                "SELECT version, path, created_at, note FROM model_versions ORDER BY version")
        ]

    def check_model(self, version: ModelVersion | None = None) -> Path:
        """The path of ``version``'s file (default: the latest), after checking it holds
        the bytes it held when the version was added; raises
        :class:`~dmt_privacy.errors.StoreIntegrityError` naming the file if it is missing,
        replaced, put back at an older version, or was added without a hash. Check
        before loading a personal model: the file is 0600 beside the store, not sealed."""
        chosen = version if version is not None else self.personal_model
        if chosen is None:
            raise ValidationError("This store has no personal model version; add one with "
                                  "add_model_version(path) after personalizing.")
        if chosen.sha256 is None:
            raise StoreIntegrityError(
                f"Personal model version {chosen.version} ({chosen.path}) has no hash in the "
                "store (no file there when it was added, or added before the store kept "
                "hashes): add the file again with add_model_version.")
        if not chosen.path.is_file():
            raise StoreIntegrityError(
                f"Personal model file {chosen.path} (version {chosen.version}) is missing.")
        if hashlib.sha256(chosen.path.read_bytes()).hexdigest() != chosen.sha256:
            raise StoreIntegrityError(
                f"Personal model file {chosen.path} is not the bytes of version "
                f"{chosen.version}: replaced, or put back at another version. Do not load "
                "it; restore it from its backup (dmt_model.backup) or personalize again.")
        return chosen.path

    @property
    def personal_model(self) -> ModelVersion | None:
        """The latest personal model version, or ``None``."""
        versions = self.model_versions()
        return versions[-1] if versions else None

    # --- lifetime -------------------------------------------------------------------------
    def close(self) -> None:
        self._ledger = None
        self._db.close()

    def __enter__(self) -> LocalStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __iter__(self) -> Iterator[str]:
        return iter(self.record_ids())

    def __len__(self) -> int:
        return self.count()

    def __repr__(self) -> str:
        return (f"LocalStore({os.fspath(self.path)!r}, user_id={self.user_id!r}, "
                f"records={self.count()}, shared={self.count('shared')}, "
                f"pending={self.count('pending')})")
