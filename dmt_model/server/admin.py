"""Operators' tools on the server's store: list stored packages and remove them.

A package is removed whole, in one transaction: its record blocks, its row,
and its share of each class's counts (a class left with no package is
deleted; one left with fewer than ``min_k`` packages is marked quarantined
when a policy is given). Every release cohort the package was part of leaves the
release whole: it met the release rule with that package and may not without it.
Its other blocks are *withdrawn* for good (``withdrawn_blocks``), never released
or trained on again: they were seen released with the removed package, so released
again (with one newcomer, say) two snapshots of the released data would differ by
the newcomer's records alone, or by the removed package's. Packages are chosen by id, by the
day they were created or received, by a value in their stored receipt, or by
the reason today's policy refuses them (each stored package is re-opened and
re-validated: the way to purge what an older, laxer policy let in).

Nothing here prints or returns a record value.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, delete, insert, select, update

from dmt_model.server.store import (
    CLASSES,
    PACKAGES,
    PENDING_BLOCKS,
    RECORDS,
    REMOVED_PACKAGES,
    WITHDRAWN_BLOCKS,
    Base,
    PackageRow,
    SharedStore,
    _now,
    lock_classes,
    open_engine,
    payload_aad,
)
from dmt_model.server.validate import PackageRefused, validate_package
from dmt_privacy.errors import ValidationError
from dmt_privacy.package import decode_package

__all__ = ["RemovalReport", "StoredPackage", "list_packages", "receipt_matches",
           "refusal_reason", "remove_packages"]

log = logging.getLogger("dmt.server.admin")
_CHUNK = 500


@dataclass(frozen=True)
class StoredPackage:
    """One stored package as an operator sees it: no record values."""

    package_id: str
    created_day: str
    received_at: str
    n_records: int
    receipt: dict[str, Any]


@dataclass
class RemovalReport:
    """What :func:`remove_packages` removed (or would, with ``dry_run``), and why."""

    removed: list[str] = field(default_factory=list)
    records: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    dry_run: bool = False
    #: records of other packages taken out of the release for good: the rest of the
    #: release cohorts the removed packages were part of (the module's docstring says why)
    withdrawn_records: int = 0

    def to_text(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        lines = [f"{verb} {len(self.removed)} package(s), {self.records} record(s)"]
        if self.withdrawn_records:
            lines.append(f"{'would withdraw' if self.dry_run else 'withdrew'} "
                         f"{self.withdrawn_records} record(s) of other packages from the release "
                         "for good: released with a removed one, released again they would let "
                         "two snapshots single out a package")
        lines += [f"  {kind}: {n}" for kind, n in sorted(self.reasons.items())]
        lines += [f"  {pid}" for pid in self.removed[:50]]
        if len(self.removed) > 50:
            lines.append(f"  ... and {len(self.removed) - 50} more")
        return "\n".join(lines)


def list_packages(db: str | Engine) -> list[StoredPackage]:
    """Every stored package: id, days, record count and receipt (JSON as stored)."""
    with open_engine(db).connect() as conn:
        rows = conn.execute(select(PackageRow.package_id, PackageRow.created_day,
                                   PackageRow.received_at, PackageRow.n_records,
                                   PackageRow.receipt).order_by(PackageRow.received_at,
                                                                PackageRow.package_id)).all()
    out = []
    for pid, day, received, n, receipt in rows:
        try:
            parsed = json.loads(receipt)
        except (TypeError, ValueError):
            parsed = {}
        out.append(StoredPackage(pid, day, received, n, parsed if isinstance(parsed, dict)
                                 else {}))
    return out


def _lookup(receipt: Any, path: Sequence[str]) -> Any:
    node = receipt
    for part in path:
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list):  # DP field receipts, addressed by field name
            node = next((f for f in node if isinstance(f, dict) and f.get("field") == part),
                        None)
        else:
            return None
    return node


def receipt_matches(receipt: dict[str, Any], selector: str) -> bool:
    """Whether ``receipt`` has ``PATH=VALUE``: ``k=5``, ``dp.fields.MEDV.scale_units=0``.

    VALUE is read as JSON when it parses (numbers, ``null``, ``true``), else as a string.
    """
    if "=" not in selector:
        raise ValidationError(f"A receipt selector is PATH=VALUE, e.g. 'k=5', got {selector!r}.")
    path, raw = selector.split("=", 1)
    try:
        wanted = json.loads(raw)
    except ValueError:
        wanted = raw
    got = _lookup(receipt, [p for p in path.split(".") if p])
    if isinstance(wanted, (int, float)) and not isinstance(wanted, bool):
        return isinstance(got, (int, float)) and not isinstance(got, bool) and got == wanted
    return bool(got == wanted)


def refusal_reason(store: SharedStore, package_id: str, policy: Any) -> str | None:
    """Why today's ``policy`` would refuse the stored package (``None``: it would accept it).

    A payload that does not decrypt or decode is ``"unreadable"``.
    """
    with store.engine.connect() as conn:
        row = conn.execute(select(PackageRow.key_id, PackageRow.nonce, PackageRow.payload)
                           .where(PackageRow.package_id == package_id)).first()
    if row is None:
        return None
    key_id, nonce, payload = row
    try:
        plaintext = store.key(key_id).decrypt(nonce, payload, payload_aad(package_id, key_id))
        package = decode_package(plaintext, max_records=policy.max_records,
                                 max_bytes=max(len(plaintext), 1))
    except Exception:  # a damaged row is a reason to remove it, never a crash
        return "unreadable: the stored payload does not decrypt or decode"
    if package.package_id != package_id:
        return "unreadable: the stored payload belongs to another package"
    try:
        validate_package(package, policy)
    except PackageRefused as exc:
        return exc.reason
    return None


def _companions(conn: Any, block_ids: Sequence[int]) -> tuple[list[str], list[tuple[int, int]]]:
    """The release cohorts holding one of ``block_ids``, and (block id, records) of their
    other blocks."""
    released_blocks = Base.metadata.tables["released_blocks"]
    cohorts: set[str] = set()
    for start in range(0, len(block_ids), _CHUNK):
        cohorts.update(conn.execute(select(released_blocks.c.cohort_id).where(
            released_blocks.c.block_id.in_(block_ids[start:start + _CHUNK]))).scalars())
    leaving = set(block_ids)
    others: list[tuple[int, int]] = []
    for cohort_id in sorted(cohorts):
        others += [(b, n) for b, n in conn.execute(
            select(released_blocks.c.block_id, RECORDS.c.n_records).join(
                RECORDS, RECORDS.c.id == released_blocks.c.block_id).where(
                released_blocks.c.cohort_id == cohort_id)).all() if b not in leaving]
    return sorted(cohorts), others


def _withdraw_cohorts(conn: Any, block_ids: Sequence[int]) -> int:
    """Take every release cohort holding one of ``block_ids`` out of the release, whole;
    its other blocks are withdrawn for good. The records withdrawn.

    A cohort was released because it met the release rule with all its packages;
    without one of them it may not. Its other blocks cannot wait for the rule again:
    they were seen released, so any later release holding them would differ from
    the earlier snapshot by less than a cohort (a newcomer's records alone, or the
    removed package's).
    """
    cohorts, others = _companions(conn, block_ids)
    if not cohorts:
        return 0
    released_blocks = Base.metadata.tables["released_blocks"]
    cohort_rows = Base.metadata.tables["cohorts"]
    if others:
        stamp = _now()
        conn.execute(insert(WITHDRAWN_BLOCKS),
                     [{"block_id": b, "withdrawn_at": stamp} for b, _ in others])
    for cohort_id in cohorts:
        conn.execute(delete(released_blocks).where(released_blocks.c.cohort_id == cohort_id))
        conn.execute(delete(cohort_rows).where(cohort_rows.c.cohort_id == cohort_id))
    return sum(n for _, n in others)


def _package_blocks(conn: Any, package_id: str) -> list[Any]:
    return conn.execute(select(RECORDS.c.id, RECORDS.c.class_key, RECORDS.c.n_records)
                        .where(RECORDS.c.package_id == package_id)).all()


def _remove_one(conn: Any, package_id: str, min_k: int | None) -> tuple[int, int]:
    """Remove one package: (packages removed, 0 or 1; records of others withdrawn)."""
    blocks = _package_blocks(conn, package_id)
    # Its classes' counter rows first, in sorted order, as the group write takes them: a
    # write releasing these blocks is waited for. Deleting the blocks first, then waiting
    # on a row the write held while it waited on the deleted blocks, was a deadlock.
    lock_classes(conn, [b.class_key for b in blocks])
    if conn.execute(select(PACKAGES.c.package_id)
                    .where(PACKAGES.c.package_id == package_id)).first() is None:
        return 0, 0  # another removal of it committed while this one waited
    ids = [b.id for b in blocks]
    withdrawn = _withdraw_cohorts(conn, ids)  # read now: after the write it waited for
    per_class = Counter[str]()
    for b in blocks:
        per_class[b.class_key] += b.n_records
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start:start + _CHUNK]
        conn.execute(delete(PENDING_BLOCKS).where(PENDING_BLOCKS.c.block_id.in_(chunk)))
        conn.execute(delete(WITHDRAWN_BLOCKS).where(WITHDRAWN_BLOCKS.c.block_id.in_(chunk)))
    conn.execute(delete(RECORDS).where(RECORDS.c.package_id == package_id))
    for class_key in sorted(per_class):
        conn.execute(update(CLASSES).where(CLASSES.c.class_key == class_key).values(
            n_records=CLASSES.c.n_records - per_class[class_key],
            n_packages=CLASSES.c.n_packages - 1))
        conn.execute(delete(CLASSES).where(CLASSES.c.class_key == class_key,
                                           CLASSES.c.n_packages <= 0))
        if min_k is not None:
            conn.execute(update(CLASSES).where(CLASSES.c.class_key == class_key,
                                               CLASSES.c.n_packages < min_k)
                         .values(released=False, released_at=None))
    result = conn.execute(delete(PACKAGES).where(PACKAGES.c.package_id == package_id))
    if result.rowcount:  # for good: the same id sent again is never stored again
        conn.execute(insert(REMOVED_PACKAGES), [{"package_id": package_id,
                                                 "removed_at": _now()}])
    return int(result.rowcount), withdrawn


def remove_packages(
    db: str | Engine,
    *,
    ids: Iterable[str] = (),
    day: str | None = None,
    receipt: str | None = None,
    reason: str | None = None,
    private_key: Any = None,
    policy: Any = None,
    dry_run: bool = False,
) -> RemovalReport:
    """Remove stored packages chosen by id, day, receipt value or refusal reason.

    ``ids``: package ids. ``day``: ``YYYY-MM-DD``, the day a package was
    created or received. ``receipt``: ``PATH=VALUE`` (see :func:`receipt_matches`).
    ``reason``: a refusal kind (``"epsilon"``, ``"bounds"``...) or ``"any"``: the
    packages today's ``policy`` refuses (needs ``private_key`` and ``policy``).
    Selectors combine with AND; at least one is required. Each package goes in
    its own transaction. A removal is for good: the package's id is kept
    (``removed_packages``), and the same package sent again is answered as a
    replay and not stored.
    """
    wanted = set(ids)
    if not wanted and day is None and receipt is None and reason is None:
        raise ValidationError("Choose what to remove: ids, day, receipt or reason.")
    if reason is not None and (private_key is None or policy is None):
        raise ValidationError("Removing by reason re-validates every package: pass the "
                              "server's private key and policy.")
    engine = open_engine(db)
    store = SharedStore(engine, private_key) if private_key is not None else None
    report = RemovalReport(dry_run=dry_run)
    kinds: Counter[str] = Counter()
    for stored in list_packages(engine):
        if wanted and stored.package_id not in wanted:
            continue
        if day is not None and day not in (stored.created_day, stored.received_at[:10]):
            continue
        if receipt is not None and not receipt_matches(stored.receipt, receipt):
            continue
        kind = "selected"
        if reason is not None:
            assert store is not None
            why = refusal_reason(store, stored.package_id, policy)
            if why is None:
                continue
            kind = why.split(":", 1)[0]
            if reason != "any" and kind != reason:
                continue
        if dry_run:
            with engine.connect() as conn:
                blocks = [b.id for b in _package_blocks(conn, stored.package_id)]
                report.withdrawn_records += sum(n for _, n in _companions(conn, blocks)[1])
        else:
            with engine.begin() as conn:
                removed, withdrawn = _remove_one(conn, stored.package_id,
                                                 None if policy is None else policy.min_k)
            if not removed:
                continue
            report.withdrawn_records += withdrawn
            log.info("package %s removed (%s); %d record(s) of others withdrawn",
                     stored.package_id, kind, withdrawn)
        kinds[kind] += 1
        report.removed.append(stored.package_id)
        report.records += stored.n_records
    report.reasons = dict(kinds)
    return report
