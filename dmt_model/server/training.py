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
``released_blocks`` of release cohorts where the store has them, else the
class flag).
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import select

from dmt_model._non_finite import refuse_non_finite
from dmt_model.server.store import CLASSES, PACKAGES, RECORDS, Base, SharedStore, payload_aad
from dmt_model.server.validate import PackageRefused, validate_package
from dmt_privacy.errors import ValidationError
from dmt_privacy.package import decode_package

__all__ = ["TrainingRead", "policy_batches"]

log = logging.getLogger("dmt.server.training")


@dataclass
class TrainingRead:
    """What :func:`policy_batches` read: packages used, skipped (by reason), records capped."""

    packages: int = 0
    records: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    capped_records: int = 0


def _block_rows(store: SharedStore, which: str) -> dict[str, list[tuple[str, bytes]]]:
    """package id → [(class key, row positions)] of the blocks ``which`` selects."""
    released_blocks = Base.metadata.tables.get("released_blocks")
    if released_blocks is not None:
        query = select(RECORDS.c.package_id, RECORDS.c.class_key, RECORDS.c.rows,
                       released_blocks.c.block_id.is_not(None).label("released")).outerjoin(
            released_blocks, released_blocks.c.block_id == RECORDS.c.id)
    else:
        query = select(RECORDS.c.package_id, RECORDS.c.class_key, RECORDS.c.rows,
                       CLASSES.c.released.label("released")).join(
            CLASSES, CLASSES.c.class_key == RECORDS.c.class_key)
    query = query.order_by(RECORDS.c.id)
    out: dict[str, list[tuple[str, bytes]]] = {}
    with store.engine.connect() as conn:
        for package_id, class_key, rows, released in conn.execute(query):
            if which == "all" or bool(released) == (which == "released"):
                out.setdefault(package_id, []).append((class_key, rows))
    return out


def _sample(positions: list[int], limit: int, package_id: str) -> list[int]:
    if len(positions) <= limit:
        return positions
    seed = int.from_bytes(hashlib.sha256(package_id.encode()).digest()[:8], "little")
    chosen = np.random.default_rng(seed).choice(len(positions), size=limit, replace=False)
    return [positions[i] for i in sorted(chosen.tolist())]


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
    import dataclasses

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


def policy_batches(store: SharedStore, policy: Any, which: str = "released",
                   *, previous: Any = None, proxy: pd.DataFrame | None = None,
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
    float32) skips its package (reason ``features``).
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
    batches = []
    blocks = _block_rows(store, which)
    with store.engine.connect() as conn:
        stored = {row.package_id: row for row in conn.execute(
            select(PACKAGES.c.package_id, PACKAGES.c.key_id, PACKAGES.c.nonce,
                   PACKAGES.c.payload).where(PACKAGES.c.package_id.in_(sorted(blocks))))}
    for package_id in sorted(blocks):
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
        positions = sorted(p for _, rows in blocks[package_id]
                           for p in np.frombuffer(rows, dtype="<u4").tolist())
        taken = _sample(positions, limit, package_id)
        read.capped_records += len(positions) - len(taken)
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
        batches.append(batch)
        read.packages += 1
        read.records += len(taken)
    read.skipped = dict(skipped)
    return batches, read
