"""Storing validated packages: their encrypted payloads, record blocks and classes, in groups.

:func:`prepare_package` does the work that needs no database (encryption under
the store's data key, bound to the package id; the HMAC naming each
k-anonymity class; the rows), so it runs in parallel, outside any transaction.
:func:`write_prepared` then stores a group of prepared packages in ONE
transaction (group commit: one flush for all of them), with one statement of
each kind for the whole group:

1. the package rows, inserted or nothing on the package id (the replay check
   is the insert itself: a package id already stored, or twice in the group,
   is left out, never an error that would abort the others);
2. the spent tokens, inserted or nothing on the token id; a package whose
   token was already spent has its row deleted again, in the same transaction;
3. the record blocks of the packages that stayed, in one multi-row insert,
   and their index as pending (``pending_blocks``);
4. the class counters, one upsert per chunk in sorted class order, so
   concurrent writers (several service processes) lock classes in one order
   and never deadlock;
5. the store's release rule (:func:`dmt_model.server.store.released_classes`)
   on the classes the group touched.

Each package gets a :class:`Written`: stored (with the classes its write
released), ``taken`` (its id is stored: a replay, or a reused id, which the
caller tells apart), ``removed`` (an operator removed a package of that id:
it is not stored again) or ``token_spent``. SQLite and PostgreSQL use their
``INSERT .. ON CONFLICT``; other databases write package by package inside
savepoints. Classes are named by an HMAC of their generalized
quasi-identifiers, never by the values. Callers validate first
(:mod:`dmt_model.server.validate`); see :mod:`dmt_model.server.store` for the tables.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pandas as pd
from sqlalchemy import Engine, Table, bindparam, delete, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from dmt_model.server.policy import ServerPolicy
from dmt_model.server.store import (
    CLASSES,
    ENVELOPES,
    PACKAGES,
    PENDING_BLOCKS,
    RECORDS,
    REMOVED_PACKAGES,
    SPENT_TOKENS,
    DataKey,
    _driver_errors,
    _now,
    _pg_run,
    _psycopg,
    _sqlite,
    open_engine,
    payload_aad,
    pg_pipeline,
    release_rule,
    released_classes,
)

__all__ = ["PreparedPackage", "Written", "prepare_package", "write_package", "write_prepared"]

_CHUNK = 500
#: The stored receipt's JSON (sorted keys, no spaces): one encoder, not one a package.
_RECEIPT_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str)


def _canonical(value: Any) -> Any:
    if isinstance(value, pd.Interval):
        return ["i", value.closed, float(value.left), float(value.right)]
    if isinstance(value, frozenset):
        return ["s", sorted(str(v) for v in value)]
    if isinstance(value, float) and math.isnan(value):
        return ["na"]
    return ["v", value if isinstance(value, (str, int, float, bool)) else str(value)]


def _blocks(columns: Mapping[str, list[Any]], qis: Sequence[str], key: DataKey,
            n: int) -> list[tuple[str, list[int]]]:
    """(class key, row positions) of each k-anonymity class present in the package."""
    if not qis:
        return [(key.class_key(msgpack.packb([[]])), list(range(n)))]
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, combo in enumerate(zip(*(columns[q] for q in qis), strict=True)):
        members = groups.get(combo)
        if members is None:
            groups[combo] = [i]
        else:
            members.append(i)
    return [(key.class_key(msgpack.packb([list(qis), [_canonical(v) for v in combo]])), rows)
            for combo, rows in groups.items()]


@dataclass(frozen=True, eq=False)
class PreparedPackage:
    """One validated package as rows, ready to insert (payload already encrypted)."""

    package_id: str
    package_row: dict[str, Any] = field(repr=False)
    record_rows: list[dict[str, Any]] = field(repr=False)
    #: records per class key
    per_class: dict[str, int] = field(repr=False)
    #: (token id, period) of the verified token the package spends, if the policy asks one
    token: tuple[str, int] | None = None
    #: SHA-256 (hex) of the sealed bytes, kept to answer a retry no key opens any more
    envelope_digest: str | None = None


@dataclass(frozen=True)
class Written:
    """What the group write did with one package."""

    status: str  # "stored", "taken" (the id is stored already), "removed" or "token_spent"
    released_classes: int = 0


def prepare_package(package: Any, plaintext: bytes, policy: ServerPolicy, key: DataKey,
                    columns: Mapping[str, list[Any]],
                    token: tuple[str, int] | None = None, *,
                    envelope_digest: str | None = None) -> PreparedPackage:
    """Encrypt and name the classes of one validated package (no database needed).

    ``envelope_digest``: the SHA-256 (hex) of the sealed bytes it came in, stored with it
    (``envelopes``) so that a retry sealed to a key since retired is still a replay."""
    qis = policy.class_quasi_identifiers(columns)
    pid = package.package_id
    per_class: dict[str, list[int]] = {}
    n = package.n_records
    for class_key, positions in _blocks(columns, qis, key, n):
        per_class.setdefault(class_key, []).extend(positions)
    rows = [{"package_id": pid, "class_key": k, "n_records": len(v),
             "rows": struct.pack(f"<{len(v)}I", *v)} for k, v in per_class.items()]
    nonce, payload = key.encrypt(plaintext, payload_aad(pid, key.key_id))
    # as a current SDK carries it: nothing in clear that depends on the values, whoever sent it
    receipt = _RECEIPT_JSON.encode(package.receipt.carried().to_dict())
    row = {"package_id": pid, "schema_id": package.schema_id,
           "created_day": str(package.created_day), "received_at": "",
           "n_records": n, "receipt": receipt, "key_id": key.key_id,
           "nonce": nonce, "payload": payload}
    return PreparedPackage(pid, row, rows, {k: len(v) for k, v in per_class.items()}, token,
                           envelope_digest)


# --- insert-or-nothing and upserts, by dialect --------------------------------------------
def _dialect_insert(conn: Connection) -> Callable[[Table], Any] | None:
    """The dialect's ``insert`` with ``on_conflict_do_*``, or None where there is none."""
    name = conn.dialect.name
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert
        return pg_insert
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert
        return sqlite_insert
    return None


# Statements built once (not per group written: building one costs more than running it).
@functools.cache
def _or_nothing(dialect_insert: Callable[[Table], Any], table: Table, column: str) -> Any:
    return (dialect_insert(table).on_conflict_do_nothing(index_elements=[column])
            .returning(table.c[column]))


@functools.cache
def _class_upsert(dialect_insert: Callable[[Table], Any]) -> Any:
    stmt = dialect_insert(CLASSES)
    return stmt.on_conflict_do_update(
        index_elements=[CLASSES.c.class_key],
        set_={"n_records": CLASSES.c.n_records + stmt.excluded.n_records,
              "n_packages": CLASSES.c.n_packages + stmt.excluded.n_packages})


_RECORDS_INSERT = insert(RECORDS).returning(RECORDS.c.id, RECORDS.c.class_key)
_PENDING_INSERT = insert(PENDING_BLOCKS)


# PostgreSQL: one statement of constant text per kind, whatever the group's size, its rows as
# arrays (unnest): psycopg prepares it once and sends the arrays in binary (``%(name)b``: in
# text every element of every array went through psycopg's escaping, 0.1 ms a package);
# SQLAlchemy's executemany would render a new multi-row text per size or send the rows one by
# one. They go through psycopg's own connection (store._pg_run), so that a group's statements
# can be pipelined (store.pg_pipeline).
_PG_PACKAGES = (
    "INSERT INTO packages (package_id, schema_id, created_day, received_at, n_records, "
    "receipt, key_id, nonce, payload) SELECT * FROM unnest(%(package_id)b::varchar[], "
    "%(schema_id)b::varchar[], %(created_day)b::varchar[], %(received_at)b::varchar[], "
    "%(n_records)b::integer[], %(receipt)b::text[], %(key_id)b::varchar[], "
    "%(nonce)b::bytea[], %(payload)b::bytea[]) "
    "ON CONFLICT (package_id) DO NOTHING RETURNING package_id")
_PG_RECORDS = (
    "WITH blocks AS (INSERT INTO records (package_id, class_key, n_records, rows) "
    "SELECT * FROM unnest(%(package_id)b::varchar[], %(class_key)b::varchar[], "
    "%(n_records)b::integer[], %(rows)b::bytea[]) RETURNING id, class_key) "
    "INSERT INTO pending_blocks (block_id, class_key) SELECT id, class_key FROM blocks")
_PG_CLASSES = (
    "INSERT INTO classes (class_key, n_records, n_packages, released) "
    "SELECT k, n, p, false FROM unnest(%(class_key)b::varchar[], %(n_records)b::integer[], "
    "%(n_packages)b::integer[]) AS u(k, n, p) ORDER BY k "
    "ON CONFLICT (class_key) DO UPDATE SET n_records = classes.n_records + excluded.n_records, "
    "n_packages = classes.n_packages + excluded.n_packages")


_PG_TOKENS = (
    "INSERT INTO spent_tokens (token_id, epoch, package_id, spent_at) "
    "SELECT * FROM unnest(%(token_id)b::varchar[], %(epoch)b::integer[], "
    "%(package_id)b::varchar[], %(spent_at)b::varchar[]) "
    "ON CONFLICT (token_id) DO NOTHING RETURNING token_id")
_PG_DELETE = "DELETE FROM packages WHERE package_id = ANY(%(ids)b::varchar[])"
_PG_ENVELOPES = (
    "INSERT INTO envelopes (digest, package_id) SELECT * FROM unnest(%(digest)b::varchar[], "
    "%(package_id)b::varchar[]) ON CONFLICT (digest) DO NOTHING")


# SQLite (the standard library's driver): statements of plain text with "?" placeholders,
# multi-row VALUES of the group's size (text made once per size), rows as tuples; SQLAlchemy's
# compiled inserts cost more Python a group than SQLite spends running them.
_SQLITE_PACKAGE_COLUMNS = tuple(c.name for c in PACKAGES.columns)
_SQLITE_RECORD_COLUMNS = ("package_id", "class_key", "n_records", "rows")
_SQLITE_PENDING = "INSERT INTO pending_blocks (block_id, class_key) VALUES (?, ?)"
_SQLITE_CLASSES = (
    "INSERT INTO classes (class_key, n_records, n_packages, released) VALUES (?, ?, ?, 0) "
    "ON CONFLICT (class_key) DO UPDATE SET n_records = classes.n_records + excluded.n_records, "
    "n_packages = classes.n_packages + excluded.n_packages")


@functools.cache
def _sqlite_insert(table: str, columns: tuple[str, ...], n: int, tail: str) -> str:
    """``INSERT INTO table (columns) VALUES (?, ..), .. (n rows) tail``."""
    row = "(" + ", ".join("?" * len(columns)) + ")"
    return (f"INSERT INTO {table} ({', '.join(columns)}) "  # noqa: S608 - names are ours
            f"VALUES {', '.join([row] * n)} {tail}")


def _sqlite_rows(conn: Connection, table: str, columns: tuple[str, ...],
                 rows: list[dict[str, Any]], tail: str) -> list[Any]:
    """Multi-row inserts of ``rows`` (``_CHUNK`` at a time); what ``tail``'s RETURNING gives."""
    out: list[Any] = []
    for start in range(0, len(rows), _CHUNK):
        chunk = rows[start:start + _CHUNK]
        values = tuple(row[c] for row in chunk for c in columns)
        result = conn.exec_driver_sql(_sqlite_insert(table, columns, len(chunk), tail), values)
        if result.returns_rows:
            out += result.all()
    return out


def _columns(rows: list[dict[str, Any]], names: Sequence[str]) -> dict[str, list[Any]]:
    return {name: [row[name] for row in rows] for name in names}


#: What a statement answers, read when it is needed: on PostgreSQL, a pipelined statement's
#: rows are waited for only then (store.pg_pipeline).
_Answer = Callable[[], set[Any]]


def _answered(value: set[Any]) -> _Answer:
    return lambda: value


def _pg_keys(conn: Connection, statement: str, params: Mapping[str, Any]) -> _Answer:
    """The first column of ``statement``'s rows, as a set, when asked (the statement is
    queued now)."""
    cursor = _pg_run(conn, statement, params)

    def answer() -> set[Any]:
        with _driver_errors(conn, statement):
            return {row[0] for row in cursor.fetchall()}
    return answer


def _insert_or_nothing(conn: Connection, table: Table, column: str,
                       rows: list[dict[str, Any]]) -> _Answer:
    """Insert ``rows`` (unique on ``column`` among themselves); the keys actually inserted,
    when the answer is called."""
    if not rows:
        return _answered(set())
    if table is PACKAGES and _psycopg(conn):
        return _pg_keys(conn, _PG_PACKAGES, _columns(rows, [c.name for c in PACKAGES.columns]))
    if table is SPENT_TOKENS and _psycopg(conn):
        return _pg_keys(conn, _PG_TOKENS, _columns(
            rows, ["token_id", "epoch", "package_id", "spent_at"]))
    if table is PACKAGES and _sqlite(conn):
        return _answered({r[0] for r in _sqlite_rows(
            conn, "packages", _SQLITE_PACKAGE_COLUMNS, rows,
            "ON CONFLICT (package_id) DO NOTHING RETURNING package_id")})
    dialect_insert = _dialect_insert(conn)
    if dialect_insert is not None:
        inserted: set[Any] = set()
        stmt = _or_nothing(dialect_insert, table, column)
        for start in range(0, len(rows), _CHUNK):
            inserted.update(conn.execute(stmt, rows[start:start + _CHUNK]).scalars())
        return _answered(inserted)
    inserted = set()
    for row in rows:  # any other database: one savepoint per row
        try:
            with conn.begin_nested():
                conn.execute(insert(table), row)
        except IntegrityError:
            continue
        inserted.add(row[column])
    return _answered(inserted)


def _delete_packages(conn: Connection, package_ids: list[str]) -> None:
    if _psycopg(conn):
        _pg_run(conn, _PG_DELETE, {"ids": package_ids})
    else:
        conn.execute(delete(PACKAGES).where(PACKAGES.c.package_id.in_(package_ids)))


def _insert_pending(conn: Connection, records: list[dict[str, Any]]) -> None:
    """Insert record blocks and index them as pending (quarantined) in ``pending_blocks``."""
    if _psycopg(conn):
        _pg_run(conn, _PG_RECORDS, _columns(records, ["package_id", "class_key", "n_records",
                                                      "rows"]))
        return
    if _sqlite(conn):
        inserted = _sqlite_rows(conn, "records", _SQLITE_RECORD_COLUMNS, records,
                                "RETURNING id, class_key")
        conn.exec_driver_sql(_SQLITE_PENDING, [tuple(b) for b in inserted])
        return
    if conn.dialect.insert_executemany_returning:
        blocks = conn.execute(_RECORDS_INSERT, records).all()
    else:
        blocks = [conn.execute(_RECORDS_INSERT, row).one() for row in records]
    conn.execute(_PENDING_INSERT, [{"block_id": block_id, "class_key": class_key}
                                   for block_id, class_key in blocks])


def _insert_envelopes(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Keep the stored packages' envelope digests (a digest already kept is left as it is)."""
    if not rows:
        return
    if _psycopg(conn):
        _pg_run(conn, _PG_ENVELOPES, _columns(rows, ["digest", "package_id"]))
    elif _sqlite(conn):
        _sqlite_rows(conn, "envelopes", ("digest", "package_id"), rows,
                     "ON CONFLICT (digest) DO NOTHING")
    else:  # any other database: one savepoint per row
        for row in rows:
            with contextlib.suppress(IntegrityError), conn.begin_nested():
                conn.execute(insert(ENVELOPES), row)


def _add_to_classes(conn: Connection, counts: dict[str, tuple[int, int]]) -> None:
    """Add (records, packages) to each class, creating it if new; classes in sorted order."""
    keys = sorted(counts)
    if _psycopg(conn):
        _pg_run(conn, _PG_CLASSES, {"class_key": keys,
                                    "n_records": [counts[k][0] for k in keys],
                                    "n_packages": [counts[k][1] for k in keys]})
        return
    if _sqlite(conn):  # executemany, in the order given: the lock order
        conn.exec_driver_sql(_SQLITE_CLASSES, [(k, *counts[k]) for k in keys])
        return
    dialect_insert = _dialect_insert(conn)
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start:start + _CHUNK]
        if dialect_insert is not None:  # executemany, in the order given: the lock order
            conn.execute(_class_upsert(dialect_insert),
                         [{"class_key": k, "n_records": counts[k][0],
                           "n_packages": counts[k][1], "released": False} for k in chunk])
            continue
        existing = set(conn.execute(
            select(CLASSES.c.class_key).where(CLASSES.c.class_key.in_(chunk))).scalars())
        if existing:
            conn.execute(
                update(CLASSES).where(CLASSES.c.class_key == bindparam("k"))
                .values(n_records=CLASSES.c.n_records + bindparam("n"),
                        n_packages=CLASSES.c.n_packages + bindparam("p")),
                [{"k": k, "n": counts[k][0], "p": counts[k][1]} for k in chunk if k in existing])
        fresh = [{"class_key": k, "n_records": counts[k][0], "n_packages": counts[k][1],
                  "released": False} for k in chunk if k not in existing]
        if fresh:
            conn.execute(insert(CLASSES), fresh)


def write_prepared(conn: Connection, group: Sequence[PreparedPackage], policy: ServerPolicy,
                   key: DataKey) -> list[Written]:
    """Store ``group`` inside the caller's transaction ``conn``; one :class:`Written` each.

    Nothing here fails because of one package: a stored id or a spent token
    leaves that package out. The caller commits (or rolls back everything).
    On PostgreSQL the statements are pipelined (:func:`~dmt_model.server.store.pg_pipeline`):
    the connection waits for the packages' insert with the removed-id check, for the
    spent tokens (when the policy asks for them), for the pending blocks the release
    reads, and for the release's writes.
    """
    with pg_pipeline(conn):
        return _write_group(conn, group, policy, key)


def _write_group(conn: Connection, group: Sequence[PreparedPackage], policy: ServerPolicy,
                 key: DataKey) -> list[Written]:
    now = _now()
    order = sorted(range(len(group)), key=lambda i: group[i].package_id)  # one lock order
    first: dict[str, int] = {}
    for i in order:
        first.setdefault(group[i].package_id, i)
    unique = sorted(first.values(), key=lambda i: group[i].package_id)
    inserted_answer = _insert_or_nothing(
        conn, PACKAGES, "package_id",
        [{**group[i].package_row, "received_at": now} for i in unique])
    # An id an operator removed is never stored again, nor any copy of it. The check is a
    # statement of its own after the insert, so it sees a removal that committed while the
    # insert waited for it (folded into the insert, it did not: 4ff8a59).
    removed_answer = _removed(conn, [group[i].package_id for i in unique])
    inserted = inserted_answer()
    kept = [i for i in order if first[group[i].package_id] == i
            and group[i].package_id in inserted]
    status = ["taken"] * len(group)
    gone = removed_answer() & {group[i].package_id for i in kept}
    if gone:
        _delete_packages(conn, sorted(gone))
        for i, prepared in enumerate(group):
            if prepared.package_id in gone:
                status[i] = "removed"
        kept = [i for i in kept if status[i] != "removed"]
    spender: dict[str, tuple[int, int]] = {}  # token id -> (package index, period)
    for i in kept:
        token = group[i].token
        if token is None or token[0] not in spender:
            if token is not None:
                spender[token[0]] = (i, token[1])
            status[i] = "stored"
        else:
            status[i] = "token_spent"  # two packages of this group carry one token
    spent = _insert_or_nothing(
        conn, SPENT_TOKENS, "token_id",
        [{"token_id": t, "epoch": epoch, "package_id": group[i].package_id, "spent_at": now}
         for t, (i, epoch) in sorted(spender.items())])()
    for i in kept:
        token = group[i].token
        if status[i] == "stored" and token is not None and token[0] not in spent:
            status[i] = "token_spent"
    dropped = sorted(group[i].package_id for i in kept if status[i] == "token_spent")
    if dropped:
        _delete_packages(conn, dropped)
    stored = [i for i in kept if status[i] == "stored"]
    records = [row for i in stored for row in group[i].record_rows]
    if records:
        _insert_pending(conn, records)
    _insert_envelopes(conn, [{"digest": group[i].envelope_digest,
                              "package_id": group[i].package_id}
                             for i in stored if group[i].envelope_digest is not None])
    counts: dict[str, tuple[int, int]] = {}
    last_toucher: dict[str, int] = {}
    for i in stored:
        for class_key, n in group[i].per_class.items():
            records_so_far, packages_so_far = counts.get(class_key, (0, 0))
            counts[class_key] = (records_so_far + n, packages_so_far + 1)
            last_toucher[class_key] = i
    if not counts:
        return [Written(s) for s in status]
    _add_to_classes(conn, counts)
    # The server's release rule (k, l and t over distinct packages, in cohorts that cannot
    # be differenced) is dmt_model.server.store.released_classes.
    released = released_classes(conn, release_rule(policy),
                                lambda key_id: key if key_id == key.key_id else None,
                                sorted(counts), now, tokens=policy.requires_tokens,
                                classes_locked=True)  # added to above, in sorted order
    per_package = [0] * len(group)
    for class_key in released:  # credited to the group's last package in that class
        per_package[last_toucher[class_key]] += 1
    return [Written(s, per_package[i]) for i, s in enumerate(status)]


_SQLITE_REMOVED = "SELECT package_id FROM removed_packages WHERE package_id IN ({})"
_PG_REMOVED = "SELECT package_id FROM removed_packages WHERE package_id = ANY(%(ids)b::varchar[])"


def _removed(conn: Connection, package_ids: list[str]) -> _Answer:
    """Which of ``package_ids`` an operator removed before (``removed_packages``): plain
    SQL text on SQLite and PostgreSQL, as the group's other statements (a compiled select
    cost 0.4 ms a group of 64 on SQLite, a tenth of the write)."""
    if _psycopg(conn):  # one array, whatever its length
        return _pg_keys(conn, _PG_REMOVED, {"ids": package_ids})
    gone: set[str] = set()
    for start in range(0, len(package_ids), _CHUNK):
        chunk = package_ids[start:start + _CHUNK]
        if _sqlite(conn):
            rows = conn.exec_driver_sql(_SQLITE_REMOVED.format(", ".join("?" * len(chunk))),
                                        tuple(chunk))
        else:
            rows = conn.execute(select(REMOVED_PACKAGES.c.package_id).where(
                REMOVED_PACKAGES.c.package_id.in_(chunk)))
        gone.update(row[0] for row in rows)
    return _answered(gone)


def write_package(engine: Engine, package: Any, plaintext: bytes, policy: ServerPolicy,
                  key: DataKey, columns: Mapping[str, list[Any]],
                  token: tuple[str, int] | None = None) -> int:
    """Store one validated package in one transaction; the number of classes it released.

    ``token``: (token id, period) of the verified token the package carries; it
    is recorded as spent in the same transaction. Raises
    :class:`sqlalchemy.exc.IntegrityError` (and stores nothing) when the
    package id is already stored or the token already spent.
    """
    prepared = prepare_package(package, plaintext, policy, key, columns, token)
    with open_engine(engine).begin() as conn:
        (written,) = write_prepared(conn, [prepared], policy, key)
        if written.status != "stored":
            raise IntegrityError("INSERT INTO packages", {"package_id": package.package_id},
                                 Exception(f"not stored: {written.status}"))
    return written.released_classes
