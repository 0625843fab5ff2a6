"""LocalStore: records and their shared state, the outbox, the ledger in the same file, models.

The file at rest (sealed, keys, tampering, atomicity) is tested in test_store_at_rest.py.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dmt_privacy import Field, Schema, SchemaError, ValidationError
from dmt_privacy.store import LocalStore

KEY = LocalStore.generate_key()  # what the app keeps in the platform keystore

SCHEMA = Schema((
    Field("age", "numeric", role="quasi-identifier", bounds=(0, 100), grid=1.0),
    Field("zip", "categorical", role="quasi-identifier", categories=("a", "b", "c")),
    Field("note", "text"),
    Field("score", "numeric", bounds=(0, 10_000), grid=0.01),
))


def records(n: int, start: int = 0) -> pd.DataFrame:
    i = np.arange(start, start + n)
    return pd.DataFrame({"age": (20 + i % 40).astype(float),
                         "zip": np.array(["a", "b", "c"])[i % 3],
                         "note": [f"note {j}" for j in i], "score": i + 0.25},
                        index=[f"r{j}" for j in i])


@pytest.fixture
def store(tmp_path):
    with LocalStore(tmp_path / "device.db", schema=SCHEMA, user_id="alice",
                    epsilon_budget=5.0, key=KEY) as s:
        yield s


def test_records_round_trip_with_their_types(store):
    frame = records(10)
    ids = store.add_records(frame)
    assert ids == list(frame.index)
    back = store.records()
    assert list(back.index) == ids and list(back.columns) == SCHEMA.names
    pd.testing.assert_frame_equal(back, frame.rename_axis("record_id"), check_index_type=False)


def test_numpy_arrays_round_trip(tmp_path):
    schema = Schema((Field("image", "image"), Field("label", "categorical", categories=(0, 1))))
    with LocalStore(tmp_path / "img.db", schema=schema, user_id="u", key=KEY) as s:
        image = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
        s.add_records(pd.DataFrame({"image": [image], "label": [1]}), ids=["x"])
        got = s.records().loc["x", "image"]
        assert got.dtype == np.uint8 and np.array_equal(got, image)


def test_duplicate_ids_add_nothing(store):
    store.add_records(records(3))
    with pytest.raises(ValidationError, match="already stored"):
        store.add_records(records(5, start=1))
    assert len(store) == 3
    with pytest.raises(ValidationError, match="repeat"):
        store.add_records(records(2), ids=["x", "x"])


def test_records_must_fit_the_schema(store):
    with pytest.raises(ValidationError):
        store.add_records(records(2).drop(columns="note"))
    bad = records(2)
    bad.loc["r0", "zip"] = "z"
    with pytest.raises(ValidationError):
        store.add_records(bad)
    assert len(store) == 0


def test_reopening_checks_schema_and_user(tmp_path):
    path = tmp_path / "d.db"
    with pytest.raises(ValidationError, match="schema= and user_id="):
        LocalStore(path, key=KEY)
    assert not path.exists()  # nothing was created
    LocalStore(path, schema=SCHEMA, user_id="alice", epsilon_budget=1.0, key=KEY).close()
    with LocalStore(path, key=KEY) as s:
        assert s.schema == SCHEMA and s.user_id == "alice"
    with pytest.raises(SchemaError, match="holds records of schema"):
        LocalStore(path, schema=SCHEMA.select(["age", "zip"]), key=KEY)
    with pytest.raises(ValidationError, match="belongs to user"):
        LocalStore(path, user_id="bob", key=KEY)


def test_shared_only_after_acknowledgement(store):
    store.add_records(records(6))
    store.add_records(records(2, start=100), shareable=False)
    assert store.count("eligible") == 6 and store.count("private") == 2
    entry = store.add_to_outbox("p1", b"sealed", ["r0", "r1", "r2"], "{}")
    assert entry.status == "pending" and entry.record_ids == ("r0", "r1", "r2")
    assert store.count("shared") == 0 and store.count("pending") == 3
    assert store.count("eligible") == 3 and store.count("unshared") == 8
    assert store.state("r0").pending_package == "p1" and not store.state("r0").shared
    assert [e.package_id for e in store.outbox()] == ["p1"]
    assert store.acknowledge("p1") == 3
    assert store.record_ids("shared") == ["r0", "r1", "r2"]
    assert store.state("r1").shared_package == "p1" and store.state("r1").shared
    assert store.count("pending") == 0 and store.outbox() == []
    acked = store.outbox("acknowledged")[0]
    assert acked.envelope is None  # the sealed bytes are dropped once delivered
    assert store.acknowledge("p1") == 0  # twice changes nothing
    with pytest.raises(ValidationError, match="not in the outbox"):
        store.acknowledge("nope")


def test_outbox_refuses_private_pending_or_unknown_records(store):
    store.add_records(records(4))
    store.add_records(records(1, start=50), shareable=False)
    store.add_to_outbox("p1", b"x", ["r0"], "{}")
    for ids in (["r50"], ["r0"], ["missing"], ["r1", "r50"]):
        with pytest.raises(ValidationError, match="not eligible"):
            store.add_to_outbox("p2", b"x", ids, "{}")
    assert [e.package_id for e in store.outbox()] == ["p1"]
    assert store.count("pending") == 1


def test_abandon_returns_records_to_eligible(store):
    store.add_records(records(3))
    store.add_to_outbox("p1", b"x", ["r0", "r1"], "{}")
    store.abandon("p1")
    assert store.count("eligible") == 3 and store.count("shared") == 0
    with pytest.raises(ValidationError):
        store.abandon("p1")


def test_ledger_lives_in_the_store_file(tmp_path):
    path = tmp_path / "d.db"
    with LocalStore(path, schema=SCHEMA, user_id="alice", epsilon_budget=2.0, key=KEY) as s:
        tables = {r[0] for r in s._read().execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"dp_budget", "dp_charges", "records", "outbox"} <= tables
    with LocalStore(path, key=KEY) as s:  # the budget was stored at creation
        assert s.ledger.budget.epsilon == 2.0 and s.ledger.spent.epsilon == 0
    with pytest.raises(ValidationError, match="already has budget"):
        LocalStore(path, epsilon_budget=3.0, key=KEY)


def test_personal_model_versions(store, tmp_path):
    assert store.personal_model is None
    first = store.add_model_version(tmp_path / "v1.mlmodel")
    second = store.add_model_version(tmp_path / "v2.mlmodel", note="after retraining")
    assert (first.version, second.version) == (1, 2)
    assert store.personal_model == second and second.path.name == "v2.mlmodel"
    assert [v.version for v in store.model_versions()] == [1, 2]


def test_a_personal_model_file_replaced_or_rolled_back_is_refused(store, tmp_path):
    """helper-92: the store listed its personal model files by path only, so a file replaced
    (a backdoored model) or put back at an older version went unnoticed. The store keeps
    each file's SHA-256 when the version is added, and ``check_model`` refuses a file that
    is no longer those bytes, naming it."""
    from dmt_privacy.errors import StoreIntegrityError

    path = tmp_path / "personal.mlmodel"
    path.write_bytes(b"v1 weights")
    first = store.add_model_version(path)
    assert first.sha256 is not None and store.check_model() == path
    path.write_bytes(b"v2 weights")
    second = store.add_model_version(path, note="v2 adopted")
    assert store.check_model() == path and second.sha256 != first.sha256
    path.write_bytes(b"v1 weights")  # an older file put back
    with pytest.raises(StoreIntegrityError, match="personal.mlmodel.*not the bytes"):
        store.check_model()
    path.unlink()
    with pytest.raises(StoreIntegrityError, match="personal.mlmodel.*missing"):
        store.check_model()
    unhashed = store.add_model_version(tmp_path / "never-written.mlmodel")
    assert unhashed.sha256 is None
    with pytest.raises(StoreIntegrityError, match="no hash"):
        store.check_model()
