"""What retraining reads from the store: validated records, the policy's noise, bounded per package.

:func:`policy_batches` is the reading that retraining trusts:

- every stored package is decrypted, decoded and **validated again** against
  today's :class:`~dmt_model.server.policy.ServerPolicy`; a package that fails
  (damaged, or let in by an older, laxer policy) is skipped, logged and
  counted, never raised: stored data cannot make retraining fail;
- each batch carries the DP receipt **the policy implies**
  (:meth:`ServerPolicy.release_receipt`), never the package's own claim, so
  retraining weighs records by the policy's noise;
- at most ``policy.max_training_records`` records of one package are used (a
  deterministic sample, seeded by the package id), and, given the previous
  foundation and the proxy data, each record's target is winsorized around
  the previous foundation's prediction at ± ``policy.max_residual`` proxy
  standard deviations: one package's pull on the retrained model is bounded
  by that many records, each of weight at most 1 and residual at most that.
  A previous foundation that predicts NaN or infinity (training that diverged)
  would make that prediction the target: it is refused with
  :class:`~dmt_privacy.errors.ModelFileError`, on the proxy data before any
  package is read, and on a shared record (never counted as the package's fault).

Records are released or quarantined as the store's release rule says (the
``released_blocks`` of its release cohorts); blocks withdrawn for good
(``withdrawn_blocks``) are never read. **A released cohort is trained on with k
contributors, or not at all**: k the larger of today's release rule's and the
largest its members' receipts claim, contributors counted as the store counts
them at release (packages, or with tokens distinct tokens of one period).
Skipping packages one at a time trained on 1 or 2 packages of a class released
with 3 (today's policy refused the others, they were unreadable, or their
records did not featurize), or on a cohort of 3 after ``min_k`` went up to 5; a
model trained on fewer than k packages of a class answers for those few. The
cap keeps a record of each of the package's blocks first, of as many blocks as
it allows (its sample over the whole package could drop a class's only record);
a package with more classes than the cap drops some, and their cohorts may then
lack k. With l or t in today's release rule, they are judged again on the records a
cohort would be trained on, as the store judged them at release: a cohort released
l-diverse that lost its one package of another value (held out, or refused since) is
left out too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from sqlalchemy import select
from sqlalchemy.engine import Connection

from dmt_model._non_finite import refuse_non_finite
from dmt_model.server.store import (
    PACKAGES,
    RECORDS,
    RELEASED_BLOCKS,
    SPENT_TOKENS,
    WITHDRAWN_BLOCKS,
    SharedStore,
    _enough,
    _one_period_admits,
    consistent_reads,
    payload_aad,
    release_rule,
)
from dmt_model.server.validate import PackageRefused, validate_package
from dmt_privacy.errors import ValidationError
from dmt_privacy.package import decode_package

__all__ = ["TrainingRead", "policy_batches"]

log = logging.getLogger("dmt.server.training")


@dataclass
class TrainingRead:
    """What :func:`policy_batches` read: packages used, skipped (by reason), records capped,
    and released cohorts left out, with fewer than k of their packages to train on (their
    packages' other records may still be used; a package left with none is skipped as
    ``cohort``)."""

    packages: int = 0
    records: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    capped_records: int = 0
    cohorts_left_out: int = 0


@dataclass(frozen=True)
class _Block:
    """One stored block: a package's records of one class, and its release cohort (``None``
    while quarantined)."""

    positions: list[int]
    cohort: str | None


class _Contributor(NamedTuple):
    """A package trained on in a cohort, as :func:`dmt_model.server.store._enough` counts
    contributors: by package, or with tokens by token and period."""

    package_id: str
    token_id: str | None
    epoch: int | None


def _block_rows(conn: Connection, which: str) -> dict[str, list[_Block]]:
    """package id → the blocks ``which`` selects, never a withdrawn one."""
    query = (select(RECORDS.c.package_id, RECORDS.c.rows, RELEASED_BLOCKS.c.cohort_id)
             .outerjoin(RELEASED_BLOCKS, RELEASED_BLOCKS.c.block_id == RECORDS.c.id)
             .outerjoin(WITHDRAWN_BLOCKS, WITHDRAWN_BLOCKS.c.block_id == RECORDS.c.id)
             .where(WITHDRAWN_BLOCKS.c.block_id.is_(None))
             .order_by(RECORDS.c.id))
    out: dict[str, list[_Block]] = {}
    for package_id, rows, cohort in conn.execute(query):
        if which == "all" or (cohort is not None) == (which == "released"):
            out.setdefault(package_id, []).append(
                _Block(np.frombuffer(rows, dtype="<u4").tolist(), cohort))
    return out


def _sample(positions: list[int], limit: int, package_id: str) -> list[int]:
    if len(positions) <= limit:
        return positions
    seed = int.from_bytes(hashlib.sha256(package_id.encode()).digest()[:8], "little")
    chosen = np.random.default_rng(seed).choice(len(positions), size=limit, replace=False)
    return [positions[i] for i in sorted(chosen.tolist())]


def _capped(blocks: list[_Block], limit: int, package_id: str) -> list[list[int]]:
    """Each block's positions that the cap of ``limit`` records a package keeps: the
    package's sample (:func:`_sample`) when it keeps a record of every block, else a record
    of each block first (of ``limit`` blocks drawn, if there are more), then the rest drawn
    from what is left. Deterministic, seeded by the package id."""
    everything = sorted(p for block in blocks for p in block.positions)
    taken = set(_sample(everything, limit, package_id))
    if all(taken & set(block.positions) for block in blocks):
        return [[p for p in block.positions if p in taken] for block in blocks]
    seed = int.from_bytes(hashlib.sha256(package_id.encode()).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    filled = [b for b in rng.permutation(len(blocks)).tolist() if blocks[b].positions]
    first = {b: blocks[b].positions[int(rng.integers(len(blocks[b].positions)))]
             for b in filled[:limit]}
    rest = [p for p in everything if p not in first.values()]
    more = rng.choice(len(rest), size=limit - len(first), replace=False).tolist()
    taken = set(first.values()) | {rest[i] for i in more}
    return [[p for p in block.positions if p in taken] for block in blocks]


#: Why a previous foundation predicting NaN or infinity is refused, and what to do.
_DIVERGED = ("its predictions are not finite (its weights hold NaN or infinity, or overflow "
             "on this record), and the shared records' targets are bounded around them, so "
             "retraining would learn from NaN. The foundation is at fault, not the records; "
             "nothing was read for training. Retrain from the last foundation version whose "
             "predictions are finite (ModelRegistry.latest), or from the proxy data alone.")


def _bounded(previous: Any, batch: Any, bound: float | None) -> Any:
    """``batch`` checked to featurize, its target winsorized at ± ``bound`` around ŷ.

    Any exception means the package's records do not featurize, or drive the
    previous foundation out of range: features or a ŷ that are not finite (a
    number far beyond float32 in a field without bounds). The foundation was
    shown finite on the proxy first, so such a record is the package's, and one
    package cannot stop retraining."""

    import torch

    featurizer = previous.featurizer
    features = featurizer.transform_released(batch.records, receipt=batch.receipt)
    if not all(np.isfinite(part).all() for part in (features.numeric,
                                                    *features.categorical.values())):
        raise ValueError("features that are not finite")
    target = featurizer.released_target(batch.records).astype(np.float64)
    if bound is None:
        return batch
    network = previous.network
    network.eval()
    with torch.no_grad():
        predicted = network(*previous._tensors(features)).numpy().astype(np.float64)
    if not np.isfinite(predicted).all():
        raise ValueError("a prediction that is not finite")
    clipped = predicted + np.clip(target - predicted, -bound, bound)
    records = batch.records.copy()
    records[featurizer.target] = clipped.tolist()
    return dataclasses.replace(batch, records=records)


def _not_diverse(rule: Any, candidates: list[tuple[Any, Any, list[str | None], list[int]]],
                 token_of: dict[str, Any], *, tokens: bool,
                 k_of: dict[str, int] | None = None) -> set[str]:
    """The cohorts whose records among ``candidates`` (package, batch, each record's cohort
    and position in the package) the release ``rule`` would not admit for their l or t,
    judged on the package's own values as the store judges a release
    (:func:`dmt_model.server.store.released_classes`): contributors weighing the same, by
    package or with ``tokens`` by token. A package without the sensitive field fails its
    cohorts (fail closed)."""
    contributors: dict[str, list[str]] = {}
    values: dict[str, list[Any]] = {}
    periods: dict[str, list[tuple[Any, Any, int, list[Any]]]] = {}
    failed: set[str] = set()
    for package, _, cohorts, taken in candidates:
        token = token_of.get(package.package_id)
        who = token.token_id if tokens and token is not None else package.package_id
        column = package.columns.get(str(rule.sensitive))
        mine: dict[str, list[Any]] = {}
        for cohort, position in zip(cohorts, taken, strict=True):
            if cohort is None:
                continue
            if column is None:
                failed.add(cohort)
                continue
            contributors.setdefault(cohort, []).append(who)
            values.setdefault(cohort, []).append(column[position])
            mine.setdefault(cohort, []).append(column[position])
        for cohort, held in mine.items():
            periods.setdefault(cohort, []).append(
                (None if token is None else token.epoch, who, len(held), held))
    return failed | {cohort for cohort in contributors
                     if not rule.admits(contributors[cohort], values[cohort])
                     or (tokens and not _one_period_admits(
                         rule, (k_of or {}).get(cohort, rule.k), periods[cohort]))}


def policy_batches(store: SharedStore, policy: Any, which: str = "released",
                   *, previous: Any = None, proxy: pd.DataFrame | None = None,
                   exclude: Collection[str] = (),
                   ) -> tuple[list[Any], TrainingRead]:
    """One :class:`~dmt_model.server.retrain.SharedBatch` per valid package, and what was read.

    ``previous``: the foundation being retrained; a batch its featurizer cannot
    turn into training features is skipped (reason ``features``). With
    ``proxy`` too, each shared record's target is winsorized around the
    previous foundation's prediction, at ± ``policy.max_residual`` standard
    deviations of the proxy target (a Huber-style bound on any one record's
    pull, whatever value it carries). A previous foundation that predicts NaN or
    infinity for a proxy record raises :class:`~dmt_privacy.errors.ModelFileError`
    before any package is read: its predictions would become targets. A shared
    record whose features or prediction are not finite (a value far beyond
    float32) skips its package (reason ``features``). A released cohort is read with k
    contributors, and l and t holding on them, or not at all (module docstring): a
    package whose every record is in a cohort left out is skipped (reason ``cohort``), and
    :attr:`TrainingRead.cohorts_left_out` counts the cohorts.

    ``exclude``: package ids kept out of training (held-out devices' packages, to check the
    new version on: :func:`dmt_model.loop.run_loop`), reason ``held out``; a cohort left
    with fewer than k contributors without them is left out too, so dropping the packages
    from the batches afterwards is not the same.
    """
    from dmt_model.server.retrain import SharedBatch

    if which not in ("released", "quarantined", "all"):
        raise ValidationError(f"which must be 'released', 'quarantined' or 'all', got {which!r}.")
    limit = policy.max_training_records
    bound = None  # a class label needs no bound: its pull on the loss is bounded already
    if previous is not None and proxy is not None and len(proxy) > 1 \
            and not previous.featurizer.classes_:
        bound = policy.max_residual * float(
            np.std(previous.featurizer.target_values(proxy)))
        # The server's own records first: a diverged foundation is named before any package.
        refuse_non_finite(previous.predict, [proxy], name="The previous foundation",
                          explanation=_DIVERGED, what="proxy record")
    read = TrainingRead()
    skipped: Counter[str] = Counter()
    # one snapshot: a removal committing between the reads left a cohort minus its package
    with consistent_reads(store.engine) as conn:
        blocks = _block_rows(conn, which)
        stored = {row.package_id: row for row in conn.execute(
            select(PACKAGES.c.package_id, PACKAGES.c.key_id, PACKAGES.c.nonce,
                   PACKAGES.c.payload).where(PACKAGES.c.package_id.in_(sorted(blocks))))}
        token_of = {row.package_id: row for row in conn.execute(
            select(SPENT_TOKENS.c.package_id, SPENT_TOKENS.c.token_id, SPENT_TOKENS.c.epoch)
            .where(SPENT_TOKENS.c.package_id.in_(sorted(blocks))))}
    released = {block.cohort for package_blocks in blocks.values()
                for block in package_blocks if block.cohort is not None}
    rule = release_rule(policy)
    k = rule.k
    # (package, batch of the capped records, each record's cohort, its position in the package)
    candidates = []
    exclude = set(exclude)
    for package_id in sorted(blocks):
        if package_id in exclude:
            skipped["held out"] += 1
            continue
        row = stored.get(package_id)
        try:
            if row is None:
                raise ValueError("no package row")
            plaintext = store.key(row.key_id).decrypt(row.nonce, row.payload,
                                                      payload_aad(package_id, row.key_id))
            package = decode_package(plaintext, max_records=policy.max_records,
                                     max_bytes=max(len(plaintext), 1))
            if package.package_id != package_id:
                raise ValueError("payload of another package")
        except Exception:  # damaged at rest: skipped, never raised
            skipped["unreadable"] += 1
            log.warning("stored package %s skipped: unreadable", package_id)
            continue
        try:
            validate_package(package, policy)
        except PackageRefused as exc:
            skipped[exc.kind] += 1
            log.warning("stored package %s skipped: %s", package_id, exc.reason)
            continue
        kept = _capped(blocks[package_id], limit, package_id)
        cohort_of = {p: block.cohort for block, positions in zip(blocks[package_id], kept,
                                                                  strict=True)
                     for p in positions}
        taken = sorted(cohort_of)
        read.capped_records += sum(len(b.positions) for b in blocks[package_id]) - len(taken)
        records = pd.DataFrame({name: [values[i] for i in taken]
                                for name, values in package.columns.items()})
        batch = SharedBatch(records, receipt=policy.release_receipt(
            package.columns, n_records=len(taken)), package_id=package_id)
        if previous is not None:
            try:
                batch = _bounded(previous, batch, bound)
            except Exception as exc:
                skipped["features"] += 1
                log.warning("stored package %s skipped: its records do not featurize (%s)",
                            package_id, exc)
                continue
        candidates.append((package, batch, [cohort_of[p] for p in taken], taken))
    # A cohort is trained on with k contributors or not at all: k the larger of today's and
    # the largest its members' receipts claim (a min_k lowered since weakens no promise),
    # contributors counted as the store counted them at release (with tokens, distinct
    # tokens of one period: one device's packages of several periods are one contributor).
    claimed: dict[str, int] = {}
    trained: dict[str, list[_Contributor]] = {}
    for package, _, cohorts, _ in candidates:
        token = token_of.get(package.package_id)
        for cohort in {cohort for cohort in cohorts if cohort is not None}:
            claimed[cohort] = max(claimed.get(cohort, 0), package.receipt.k or 0)
            trained.setdefault(cohort, []).append(_Contributor(
                package.package_id, None if token is None else token.token_id,
                None if token is None else token.epoch))
    tokens = bool(getattr(policy, "requires_tokens", False))
    left_out = {cohort for cohort in released
                if not _enough(trained.get(cohort, []), max(k, claimed.get(cohort, 0)),
                               tokens=tokens)}
    if rule.needs_values:
        left_out |= _not_diverse(rule, candidates, token_of, tokens=tokens,
                                 k_of={c: max(k, claimed.get(c, 0)) for c in released})
    batches = []
    for package, batch, cohorts, _ in candidates:
        whole = np.array([cohort not in left_out for cohort in cohorts], dtype=bool)
        if not whole.any():
            skipped["cohort"] += 1
            log.warning("stored package %s skipped: each of its release cohorts was left out "
                        "(fewer contributors left to train on than its k: today's %d, or "
                        "the larger its members' receipts ask for; or, with l or t, too few "
                        "distinct sensitive values left)", package.package_id, k)
            continue
        if not whole.all():
            batch = dataclasses.replace(
                batch, records=batch.records[whole].reset_index(drop=True),
                receipt=policy.release_receipt(package.columns, n_records=int(whole.sum())))
        batches.append(batch)
        read.packages += 1
        read.records += len(batch.records)
    read.cohorts_left_out = len(left_out)
    read.skipped = dict(skipped)
    return batches, read
