"""Storing one validated package: its encrypted payload, its record blocks, its classes.

:func:`write_package` writes, in ONE transaction, the package row (payload
encrypted under the store's data key, bound to the package id), one record
block per k-anonymity class it touches (row positions only, no values), the
class counters, and runs the store's release rule
(:func:`dmt_model.server.store.release_due`) on those classes. Classes are
named by an HMAC of their generalized quasi-identifiers, never by the values.
Callers validate first (:mod:`dmt_model.server.validate`); see
:mod:`dmt_model.server.store` for the tables.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack
import numpy as np
import pandas as pd
from sqlalchemy import Engine, bindparam, insert, select, update

from dmt_model.server.policy import ServerPolicy
from dmt_model.server.store import (
    CLASSES,
    PACKAGES,
    RECORDS,
    SPENT_TOKENS,
    DataKey,
    _now,
    payload_aad,
    release_due,
    release_rule,
)

__all__ = ["write_package"]

_CHUNK = 500


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


def write_package(engine: Engine, package: Any, plaintext: bytes, policy: ServerPolicy,
                  key: DataKey, columns: Mapping[str, list[Any]],
                  token: tuple[str, int] | None = None) -> int:
    """Store one validated package in one transaction; the number of classes it released.

    ``token``: (token id, period) of the verified token the package carries; it
    is recorded as spent in the same transaction (a second spend violates the
    table's key, so two packages never share a token, whatever the timing).
    """
    qis = [q for q in policy.quasi_identifiers or () if q in columns]
    pid = package.package_id
    per_class: dict[str, list[int]] = {}
    for class_key, positions in _blocks(columns, qis, key, package.n_records):
        per_class.setdefault(class_key, []).extend(positions)
    rows = [{"package_id": pid, "class_key": k, "n_records": len(v),
             "rows": np.asarray(v, dtype="<u4").tobytes()} for k, v in per_class.items()]
    nonce, payload = key.encrypt(plaintext, payload_aad(pid, key.key_id))
    receipt = json.dumps(package.receipt.to_dict(), sort_keys=True, separators=(",", ":"),
                         default=str)
    now = _now()
    with engine.begin() as conn:
        conn.execute(insert(PACKAGES).values(
            package_id=pid, schema_id=package.schema_id, created_day=str(package.created_day),
            received_at=now, n_records=package.n_records, receipt=receipt, key_id=key.key_id,
            nonce=nonce, payload=payload))
        if token is not None:
            conn.execute(insert(SPENT_TOKENS).values(token_id=token[0], epoch=token[1],
                                                     package_id=pid, spent_at=now))
        conn.execute(insert(RECORDS), rows)
        keys = sorted(per_class)  # one lock order for every writer: no deadlocks
        existing: set[str] = set()
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start:start + _CHUNK]
            existing.update(conn.execute(
                select(CLASSES.c.class_key).where(CLASSES.c.class_key.in_(chunk))).scalars())
        if existing:
            conn.execute(
                update(CLASSES).where(CLASSES.c.class_key == bindparam("k"))
                .values(n_records=CLASSES.c.n_records + bindparam("n"),
                        n_packages=CLASSES.c.n_packages + 1),
                [{"k": k, "n": len(per_class[k])} for k in sorted(existing)])
        fresh = [{"class_key": k, "n_records": len(per_class[k]), "n_packages": 1,
                  "released": False} for k in keys if k not in existing]
        if fresh:
            conn.execute(insert(CLASSES), fresh)
        # The server's release rule (k, l and t over distinct packages, in cohorts that
        # cannot be differenced) is dmt_model.server.store.release_due.
        released = release_due(conn, release_rule(policy),
                               lambda key_id: key if key_id == key.key_id else None, keys, now,
                               tokens=policy.requires_tokens)
    return released
