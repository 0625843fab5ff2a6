"""Ingestion of sealed share packages: open, validate against the server's policy, store once.

For each package, :func:`ingest`:

1. opens it with the server's private key (:func:`dmt_privacy.package.open_package`,
   with the policy's size limits); any failure is one reason, "could not be
   opened", that says nothing more;
2. rejects a replay: a package id already stored;
3. validates the schema id, the columns (known fields, no identifiers,
   numeric values finite and within the schema's bounds, or within the DP
   receipt's output window; categories in the vocabulary; text as strings;
   images as (H, W) or (H, W, C) arrays with C in 1, 3, 4 and audio as 1-D or
   (channels, samples) arrays, finite, of the dtypes :mod:`dmt_privacy.modify`
   takes; quasi-identifiers generalized, i.e. intervals inside the bounds,
   value sets or hierarchy nodes) and the privacy receipt (k at least
   ``min_k`` when quasi-identifiers are present; every field of
   ``max_epsilon`` perturbed with at most that ε, with the schema's bounds
   and grid and a secure random source; the DP record count equal to the
   package's);
4. writes the package, its encrypted record blocks and the class counts in
   ONE transaction, and releases every class that now holds records from at
   least ``min_k`` distinct packages. A rejected or interrupted package
   leaves no row behind; the package id's uniqueness makes a second
   ingestion of the same bytes a counted replay that changes nothing.

Encryption at rest and the tables are described in :mod:`dmt_model.server.store`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pandas as pd
from sqlalchemy import Engine, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from dmt_model.server.store import (
    CLASSES,
    PACKAGES,
    RECORDS,
    DataKey,
    PackageRow,
    SharedStore,
    _now,
    payload_aad,
)
from dmt_privacy.errors import InvalidPackage, SchemaError, ValidationError
from dmt_privacy.package import PACKAGE_INFO, decode_package
from dmt_privacy.schema import Kind, Role, Schema
from dmt_privacy.seal import ENVELOPE_OVERHEAD, ServerPrivateKey, open_sealed

__all__ = [
    "PACKAGE_SUFFIX",
    "IngestReport", "Outcome", "ServerPolicy", "ingest", "iter_sources"]

POLICY_FORMAT = 1
#: Directories are scanned for files with this suffix.
PACKAGE_SUFFIX = ".dmt"
_TOL = 1e-9
_CHUNK = 500


@dataclass(frozen=True)
class ServerPolicy:
    """What the server accepts.

    Parameters
    ----------
    schema:
        The records' schema; packages must carry its id.
    min_k:
        The least k a package's receipt may state when it carries
        quasi-identifiers, and the number of distinct packages a class needs
        before its records are released from quarantine.
    max_epsilon:
        field → the most ε a package may have spent on it. These fields must
        arrive perturbed (a raw value is an unbounded ε).
    quasi_identifiers:
        Default: the schema's fields with the quasi-identifier role.
    max_records, max_bytes:
        Limits on one package, enforced while decoding.
    allow_insecure_random:
        Accept DP releases drawn from a seeded generator. For tests only.
    """

    schema: Schema
    min_k: int
    max_epsilon: Mapping[str, float] = field(default_factory=dict)
    quasi_identifiers: tuple[str, ...] | None = None
    max_records: int = 100_000
    max_bytes: int = 64 * 2**20
    allow_insecure_random: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.schema, Schema):
            raise SchemaError(f"schema must be a Schema, got {type(self.schema).__name__}.")
        k = self.min_k
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValidationError(f"min_k must be a positive integer, got {k!r}.")
        eps = dict(self.max_epsilon)
        for name, value in eps.items():
            if name not in self.schema:
                raise SchemaError(f"max_epsilon names {name!r}, not a field of the schema.")
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValidationError(
                    f"max_epsilon[{name!r}] must be a finite number > 0, got {value!r}."
                )
        object.__setattr__(self, "max_epsilon", eps)
        qis = (tuple(f.name for f in self.schema.by_role(Role.QUASI_IDENTIFIER))
               if self.quasi_identifiers is None else tuple(self.quasi_identifiers))
        unknown = [q for q in qis if q not in self.schema]
        if unknown:
            raise SchemaError(f"quasi_identifiers {unknown!r} are not fields of the schema.")
        object.__setattr__(self, "quasi_identifiers", qis)
        for name, limit in (("max_records", self.max_records), ("max_bytes", self.max_bytes)):
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise ValidationError(f"{name} must be a positive integer, got {limit!r}.")

    def to_dict(self) -> dict[str, Any]:
        return {"format": POLICY_FORMAT, "schema": self.schema.to_dict(), "min_k": self.min_k,
                "max_epsilon": dict(self.max_epsilon),
                "quasi_identifiers": list(self.quasi_identifiers or ()),
                "max_records": self.max_records, "max_bytes": self.max_bytes,
                "allow_insecure_random": self.allow_insecure_random}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServerPolicy:
        if data.get("format") != POLICY_FORMAT:
            raise SchemaError(
                f"Server policy format {data.get('format')!r} is not supported (this SDK "
                f"reads format {POLICY_FORMAT})."
            )
        try:
            return cls(schema=Schema.from_dict(data["schema"]), min_k=data["min_k"],
                       max_epsilon=data.get("max_epsilon", {}),
                       quasi_identifiers=tuple(data["quasi_identifiers"])
                       if data.get("quasi_identifiers") is not None else None,
                       max_records=data.get("max_records", 100_000),
                       max_bytes=data.get("max_bytes", 64 * 2**20),
                       allow_insecure_random=bool(data.get("allow_insecure_random", False)))
        except KeyError as exc:
            raise SchemaError(f"Server policy lacks {exc}.") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=1)

    @classmethod
    def from_json(cls, text: str | bytes) -> ServerPolicy:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise SchemaError(f"Server policy JSON is malformed: {exc}.") from None


@dataclass(frozen=True)
class Outcome:
    """What happened to one package: ``accepted`` or ``rejected`` (with the reason)."""

    source: str
    status: str
    reason: str = ""
    package_id: str | None = None
    n_records: int = 0
    replay: bool = False


@dataclass
class IngestReport:
    """Every package's outcome, and the quarantine after the run."""

    outcomes: list[Outcome] = field(default_factory=list)
    released_classes: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def accepted(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "accepted"]

    @property
    def rejected(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "rejected"]

    @property
    def replays(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.replay]

    @property
    def stored_ids(self) -> list[str]:
        """Package ids the server holds after this run (accepted now or before): what to ack."""
        return [o.package_id for o in self.outcomes
                if o.package_id is not None and (o.status == "accepted" or o.replay)]

    def to_dict(self) -> dict[str, Any]:
        return {"accepted": len(self.accepted),
                "records_accepted": sum(o.n_records for o in self.accepted),
                "rejected": len(self.rejected), "replays": len(self.replays),
                "reasons": dict(Counter(_reason_kind(o.reason) for o in self.rejected)),
                "released_classes": self.released_classes, "store": dict(self.counts),
                "outcomes": [dataclasses.asdict(o) for o in self.outcomes]}

    def to_text(self) -> str:
        kinds = Counter(_reason_kind(o.reason) for o in self.rejected)
        lines = [f"accepted     {len(self.accepted)} package(s), "
                 f"{sum(o.n_records for o in self.accepted)} record(s)",
                 f"rejected     {len(self.rejected)} package(s)"
                 + (" (" + ", ".join(f"{k}: {n}" for k, n in sorted(kinds.items())) + ")"
                    if kinds else "")]
        shown = [o for o in self.rejected if not o.replay]
        lines += [f"  {o.source}: {o.reason}" for o in shown[:20]]
        if len(shown) > 20:
            lines.append(f"  ... and {len(shown) - 20} more")
        c = self.counts
        if c:
            lines.append(f"quarantined  {c['records_quarantined']} record(s) in "
                         f"{c['classes_quarantined']} class(es) with fewer than k packages")
            lines.append(f"released     {c['records_released']} record(s) in "
                         f"{c['classes_released']} class(es) ({self.released_classes} newly)")
            lines.append(f"store        {c['packages']} package(s), {c['records']} record(s)")
        return "\n".join(lines)


def _reason_kind(reason: str) -> str:
    return reason.split(":", 1)[0]


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


# --- validation -------------------------------------------------------------------------------
class _Rejected(Exception):
    pass


def _is_interval(v: Any) -> bool:
    return isinstance(v, pd.Interval)


def _check_numeric(name: str, values: Sequence[Any], low: float, high: float) -> None:
    try:
        x = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise _Rejected(f"bad values: field {name!r} holds non-numbers") from None
    if x.ndim != 1 or not np.isfinite(x).all():
        raise _Rejected(f"bad values: field {name!r} holds non-finite numbers")
    bad = (x < low - _TOL * max(1.0, abs(low))) | (x > high + _TOL * max(1.0, abs(high)))
    if bad.any():
        raise _Rejected(
            f"bounds: field {name!r} value {x[bad.argmax()]!r} outside [{low:g}, {high:g}]"
        )


def _check_generalized(name: str, values: Sequence[Any], schema: Schema) -> None:
    spec = schema[name]
    for v in set(values):
        if _is_interval(v):
            if spec.kind is Kind.NUMERIC:
                if spec.bounds is not None:
                    _check_numeric(name, [v.left, v.right], *spec.bounds)
            elif spec.kind is Kind.CATEGORICAL and spec.categories is not None and all(
                    isinstance(c, (int, float)) and not isinstance(c, bool)
                    for c in spec.categories):
                # ordered numeric categories (e.g. codes) generalized as a range
                codes = [float(c) for c in spec.categories]  # type: ignore[arg-type]
                _check_numeric(name, [v.left, v.right], min(codes), max(codes))
            else:
                raise _Rejected(f"bad values: {name!r} holds an interval but is neither numeric "
                                "nor categorical with numeric categories")
        elif isinstance(v, frozenset):
            allowed = set(spec.categories or ())
            if not v or (spec.categories is not None and not v <= allowed):
                raise _Rejected(f"bad values: {name!r} holds the value set {sorted(v, key=str)!r} "
                                "outside its categories")
        elif isinstance(v, str) and spec.kind is Kind.CATEGORICAL:
            nodes = {str(c) for c in spec.categories or ()}
            for ancestors in (spec.hierarchy or {}).values():
                nodes.update(ancestors)
            if v not in nodes:
                raise _Rejected(f"bad values: {name!r} holds {v!r}, not a category or "
                                "hierarchy node")
        else:
            raise _Rejected(
                f"not generalized: quasi-identifier {name!r} holds {type(v).__name__} values, "
                "not intervals, value sets or hierarchy nodes"
            )


def _validate(package: Any, policy: ServerPolicy) -> Mapping[str, list[Any]]:
    schema = policy.schema
    if package.schema_id != schema.schema_id:
        raise _Rejected(
            f"schema: package schema id {package.schema_id!r} is not the server's "
            f"{schema.schema_id!r}"
        )
    columns = package.columns
    n = package.n_records
    if n < 1:
        raise _Rejected("empty: the package holds no records")
    for name, values in columns.items():
        if name not in schema:
            raise _Rejected(f"schema: unknown field {name!r}")
        if schema[name].role is Role.IDENTIFIER:
            raise _Rejected(f"identifier: field {name!r} is an identifier and is never accepted")
        if len(values) != n:
            raise _Rejected(f"bad values: field {name!r} has {len(values)} values for {n} records")
    receipt = package.receipt
    dp = receipt.dp
    dp_fields = {f.field: f for f in dp.fields} if dp is not None else {}
    if dp is not None:
        if dp.n_records != n:
            raise _Rejected(f"receipt: DP release of {dp.n_records} records for {n} records")
        if not dp.secure_random and not policy.allow_insecure_random:
            raise _Rejected("receipt: DP noise from an insecure (seeded) random source")
        extra = sorted(set(dp_fields) - set(columns))
        if extra:
            raise _Rejected(f"receipt: DP fields {extra!r} are not in the package")
    for name, limit in policy.max_epsilon.items():
        if name not in columns:
            continue
        fr = dp_fields.get(name)
        if fr is None:
            raise _Rejected(f"epsilon: field {name!r} arrived without local DP (allowed ε ≤ "
                            f"{limit:g})")
        if fr.epsilon > limit * (1 + _TOL):
            raise _Rejected(f"epsilon: field {name!r} spent ε={fr.epsilon:g}, above the allowed "
                            f"{limit:g}")
    qis = [q for q in policy.quasi_identifiers or () if q in columns and q not in dp_fields]
    if qis and (receipt.k is None or receipt.k < policy.min_k):
        raise _Rejected(f"k: the package states k={receipt.k!r}, below the required "
                        f"{policy.min_k}")
    for name, values in columns.items():
        spec = schema[name]
        if name in qis:
            _check_generalized(name, values, schema)
        elif name in dp_fields:
            fr = dp_fields[name]
            if spec.kind is Kind.NUMERIC:
                if fr.bounds is None or tuple(fr.bounds) != spec.bounds or fr.grid != spec.grid:
                    raise _Rejected(f"receipt: field {name!r} perturbed with bounds "
                                    f"{fr.bounds!r} / grid {fr.grid!r}, not the schema's")
                lo_u, hi_u = fr.window_units or (0, 0)
                grid = float(spec.grid or 0.0)
                _check_numeric(name, values, lo_u * grid - _TOL, hi_u * grid + _TOL)
            else:
                if fr.mechanism != "k_rr":
                    raise _Rejected(f"receipt: field {name!r} mechanism {fr.mechanism!r} is "
                                    "not accepted (only k_rr)")
                _check_categories(name, values, spec.categories)
        elif spec.kind is Kind.NUMERIC:
            if spec.bounds is None:
                _check_numeric(name, values, -math.inf, math.inf)
            else:
                _check_numeric(name, values, *spec.bounds)
        elif spec.kind is Kind.CATEGORICAL:
            _check_categories(name, values, spec.categories)
        elif spec.kind is Kind.TEXT:
            if not all(isinstance(v, str) for v in values):
                raise _Rejected(f"bad values: text field {name!r} holds non-strings")
        elif spec.kind in (Kind.IMAGE, Kind.AUDIO):
            _check_media(name, values, spec.kind)
    return columns


def _check_media(name: str, values: Sequence[Any], kind: Kind) -> None:
    """Images and audio clips as :mod:`dmt_privacy.modify` takes them (package ext 3 arrays)."""
    for v in values:
        if not isinstance(v, np.ndarray):
            raise _Rejected(f"bad values: {kind.value} field {name!r} holds "
                            f"{type(v).__name__}, not an array")
        if kind is Kind.IMAGE:
            ok = v.dtype.kind in "uf" and (v.ndim == 2 or (v.ndim == 3 and v.shape[2] in (1, 3, 4)))
        else:
            ok = v.dtype.kind in "if" and v.ndim in (1, 2)
        if not ok:
            raise _Rejected(f"bad values: {kind.value} field {name!r} holds an array of dtype "
                            f"{v.dtype} and shape {v.shape}")
        if v.dtype.kind == "f" and not np.isfinite(v).all():
            raise _Rejected(f"bad values: {kind.value} field {name!r} holds non-finite samples")


def _check_categories(name: str, values: Sequence[Any], categories: Any) -> None:
    if categories is None:
        return
    bad = ~pd.Series(list(values), dtype=object).isin(list(categories)).to_numpy()
    if bad.any():
        raise _Rejected(f"bad values: field {name!r} value {values[int(bad.argmax())]!r} is not "
                        "one of its categories")


# --- classes ----------------------------------------------------------------------------------
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


def _write(engine: Engine, package: Any, plaintext: bytes, policy: ServerPolicy, key: DataKey,
           columns: Mapping[str, list[Any]]) -> int:
    """Store one validated package in one transaction; the number of classes it released."""
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
        released = 0
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start:start + _CHUNK]
            result = conn.execute(
                update(CLASSES).where(CLASSES.c.class_key.in_(chunk),
                                       CLASSES.c.released.is_(False),
                                       CLASSES.c.n_packages >= policy.min_k)
                .values(released=True, released_at=now))
            released += int(result.rowcount)
    return released


def _open(envelope: bytes, private_key: ServerPrivateKey,
          policy: ServerPolicy) -> tuple[Any, bytes]:
    """The package and its plaintext bytes (kept: they are what is encrypted at rest)."""
    if len(envelope) > policy.max_bytes + ENVELOPE_OVERHEAD:
        raise InvalidPackage()
    plaintext = open_sealed(envelope, private_key, info=PACKAGE_INFO)
    package = decode_package(plaintext, max_records=policy.max_records,
                             max_bytes=policy.max_bytes)
    return package, plaintext


def _stored(engine: Engine, package_id: str) -> bool:
    with engine.connect() as conn:
        return conn.execute(select(PackageRow.package_id).where(
            PackageRow.package_id == package_id)).first() is not None


def ingest(
    sources: bytes | str | os.PathLike[str] | Iterable[bytes | str | os.PathLike[str]],
    db_url: str | Engine,
    private_key: ServerPrivateKey,
    policy: ServerPolicy,
) -> IngestReport:
    """Open, validate and store share packages; see the module docstring.

    ``sources``: package bytes, files, directories (their ``*.dmt`` files,
    recursively, sorted by path), or a list of these. ``db_url``: an SQLAlchemy URL, a SQLite
    file path or an engine. Returns an :class:`IngestReport`; never raises for
    a bad package (it is rejected with a reason), only for a bad setup.
    """
    if not isinstance(private_key, ServerPrivateKey):
        raise ValidationError(
            f"private_key must be a ServerPrivateKey, got {type(private_key).__name__}."
        )
    if not isinstance(policy, ServerPolicy):
        raise ValidationError(f"policy must be a ServerPolicy, got {type(policy).__name__}.")
    store = SharedStore(db_url, private_key)
    key = store.current_key()
    report = IngestReport()
    for name, data in iter_sources(sources, max_bytes=policy.max_bytes):
        if data is None:
            report.outcomes.append(Outcome(name, "rejected", "too large: over max_bytes"))
            continue
        try:
            package, plaintext = _open(data, private_key, policy)
        except InvalidPackage:
            report.outcomes.append(Outcome(
                name, "rejected", "unreadable: could not be opened with this server's key"))
            continue
        pid = package.package_id
        if _stored(store.engine, pid):
            report.outcomes.append(Outcome(name, "rejected", f"replay: package {pid} is "
                                           "already stored", pid, package.n_records, True))
            continue
        try:
            columns = _validate(package, policy)
            released = _write(store.engine, package, plaintext, policy, key, columns)
        except _Rejected as exc:
            report.outcomes.append(Outcome(name, "rejected", str(exc), pid, package.n_records))
            continue
        except IntegrityError:
            if not _stored(store.engine, pid):
                raise
            report.outcomes.append(Outcome(name, "rejected", f"replay: package {pid} is "
                                           "already stored", pid, package.n_records, True))
            continue
        report.released_classes += released
        report.outcomes.append(Outcome(name, "accepted", "", pid, package.n_records))
    report.counts = store.counts()
    return report
