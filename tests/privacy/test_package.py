"""dmt_privacy.package: the share package, its msgpack format and its sealed form.

Known-answer vectors live in ``vectors/package_v1.json`` (the msgpack bytes of
a fixed package, and that package sealed with a fixed ephemeral key by the
independent RFC 9180 implementation in ``test_seal.py``). Regenerate them
only on a format change: ``python tests/privacy/test_package.py``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
import struct
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgpack
import numpy as np
import pandas as pd
import pytest
from cryptography.hazmat.primitives.asymmetric import x25519
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_seal import reference_open, reference_open_v1, reference_seal_v1

from dmt_privacy.dp.receipt import FieldReceipt, ReleaseReceipt
from dmt_privacy.errors import InvalidPackage, ValidationError
from dmt_privacy.package import (
    PACKAGE_INFO,
    PrivacyReceipt,
    SharePackage,
    decode_package,
    encode_package,
    open_package,
    seal_package,
)
from dmt_privacy.seal import ServerPrivateKey, generate_server_key, open_sealed, seal

VECTORS = Path(__file__).resolve().parent / "vectors"
PACKAGE_VECTORS = VECTORS / "package_v1.json"

_KEY = generate_server_key()


def release_receipt() -> ReleaseReceipt:
    return ReleaseReceipt(
        release_id="r-0001",
        n_records=4,
        epsilon=2.5,
        delta=0.0,
        fields=(
            FieldReceipt(field="CRIM", mechanism="discrete_laplace", epsilon=1.0,
                         realized_epsilon=1.0, output_columns=("CRIM",), bounds=(0.0, 100.0),
                         grid=2.0**-10, rounding="nearest", sensitivity_units=102400,
                         scale_units=102400.0, window_units=(-1024, 103424)),
            FieldReceipt(field="TOWN", mechanism="k_rr", epsilon=1.5, realized_epsilon=1.4999,
                         output_columns=("TOWN",), categories=("Boston", "Nahant", 3, None),
                         keep_probability=0.6, flip_probability=0.13),
        ),
        privacy_unit="record",
        created="2025-01-31",
    )


def kat_package() -> SharePackage:
    inf = float("inf")
    return SharePackage(
        schema_id="0123456789abcdef",
        package_id="00112233445566778899aabbccddeeff",
        created_day="2025-01-31",
        receipt=PrivacyReceipt(k=5, l=2, t=0.25, dp=release_receipt(),
                               modifications=("text.synonyms", "image.blur")),
        columns={
            "CRIM": [0.00632, -0.0, float("nan"), 1e308],
            "RAD": [1, 24, -3, 2**62],
            "AGE": [pd.Interval(0.0, 35.5, closed="both"), pd.Interval(35.5, 100.0, closed="left"),
                    None, pd.Interval(-inf, 0.0, closed="neither")],
            "TOWN": [frozenset({"Swampscott", "Nahant"}), frozenset({"Boston"}), "Cambridge",
                     frozenset({1, 2.5, None, "x"})],
            "NOTE": ["caf\u00e9 \u2615", "", b"\x00\xff", True],
            "MEDV": [24.0, 21.6, 34.7, 33.4],
        },
    )


_EPHEMERAL = hashlib.sha256(b"dmt test package ephemeral key").digest()
_RECIPIENT = ServerPrivateKey(x25519.X25519PrivateKey.from_private_bytes(
    hashlib.sha256(b"dmt test recipient key 1").digest()))


def make_package_vectors() -> dict[str, Any]:
    encoded = encode_package(kat_package())
    return {
        "description": "dmt share package format 1 (msgpack); the package is kat_package() in "
                       "tests/privacy/test_package.py; envelope: seal_v1 recipient key, fixed "
                       "ephemeral key, HPKE info = header || b'dmt.share-package'",
        "msgpack": encoded.hex(),
        "ephemeral_private": _EPHEMERAL.hex(),
        "private_key": _RECIPIENT.to_bytes().hex(),
        "envelope": reference_seal_v1(_RECIPIENT.public_key(), _EPHEMERAL, encoded,
                                   PACKAGE_INFO).hex(),
    }


@pytest.fixture(scope="module")
def vectors() -> dict[str, Any]:
    return json.loads(PACKAGE_VECTORS.read_text())


# --- known answers ------------------------------------------------------------------------------
def test_package_vector_encodes_exactly(vectors: dict[str, Any]) -> None:
    assert encode_package(kat_package()).hex() == vectors["msgpack"]


def test_package_vector_decodes(vectors: dict[str, Any]) -> None:
    pkg = decode_package(bytes.fromhex(vectors["msgpack"]))
    assert pkg == kat_package()
    assert math.isnan(pkg.columns["CRIM"][2]) and math.copysign(1, pkg.columns["CRIM"][1]) < 0
    assert pkg.columns["AGE"][1].closed == "left" and pkg.columns["NOTE"][2] == b"\x00\xff"
    assert pkg.receipt.dp == release_receipt()


def test_package_vector_layout(vectors: dict[str, Any]) -> None:
    """The documented layout, read with a plain msgpack reader."""
    doc = msgpack.unpackb(bytes.fromhex(vectors["msgpack"]), raw=False,
                          ext_hook=lambda code, data: (code, data))
    assert list(doc) == ["format", "schema_id", "package_id", "created_day", "n_records",
                         "receipt", "columns"]
    assert doc["format"] == 1 and doc["n_records"] == 4
    assert [c[:2] for c in doc["columns"]] == [["CRIM", "f8"], ["RAD", "i8"], ["AGE", "obj"],
                                               ["TOWN", "obj"], ["NOTE", "obj"], ["MEDV", "f8"]]
    assert doc["columns"][0][2] == struct.pack("<4d", 0.00632, -0.0, math.nan, 1e308)
    assert doc["columns"][1][2] == struct.pack("<4q", 1, 24, -3, 2**62)
    assert doc["columns"][2][2][0] == (1, struct.pack("<Bdd", 0, 0.0, 35.5))
    assert doc["columns"][2][2][1] == (1, struct.pack("<Bdd", 1, 35.5, 100.0))
    code, body = doc["columns"][3][2][0]
    assert code == 2 and msgpack.unpackb(body) == ["Nahant", "Swampscott"]
    assert doc["receipt"]["k"] == 5 and doc["receipt"]["dp"]["fields"][0]["grid"] == 2.0**-10


def test_sealed_package_vector_opens(vectors: dict[str, Any]) -> None:
    private = ServerPrivateKey.from_bytes(bytes.fromhex(vectors["private_key"]))
    envelope = bytes.fromhex(vectors["envelope"])
    assert open_package(envelope, private) == kat_package()  # a legacy (format 1) envelope
    assert reference_open_v1(private, envelope, PACKAGE_INFO) == bytes.fromhex(vectors["msgpack"])
    # a package envelope is not a generic envelope: the info differs
    _assert_invalid(lambda: open_sealed(envelope, private))
    fresh = seal_package(kat_package(), private.public_key())  # format 2, with the key id
    assert reference_open(private, fresh, PACKAGE_INFO) == bytes.fromhex(vectors["msgpack"])


def test_package_vectors_regenerate_exactly(vectors: dict[str, Any]) -> None:
    assert make_package_vectors() == vectors


# --- strategies ---------------------------------------------------------------------------------
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
)
_finite = st.floats(allow_nan=False, allow_infinity=True)
_intervals = st.builds(
    lambda a, b, closed: pd.Interval(min(a, b), max(a, b), closed=closed),
    _finite, _finite, st.sampled_from(["both", "left", "right", "neither"]),
)
_sets = st.frozensets(_scalars, max_size=5)
_cells = st.one_of(_scalars, st.binary(max_size=8), _intervals, _sets)
_column_kinds = st.sampled_from(["float", "int", "mixed", "interval", "set", "text"])
_by_kind = {
    "float": st.floats(allow_nan=True, allow_infinity=True),
    "int": st.integers(-(2**63), 2**63 - 1),
    "mixed": _cells,
    "interval": st.one_of(st.none(), _intervals),
    "set": st.one_of(st.none(), _sets, st.text(max_size=6)),
    "text": st.text(),
}


@st.composite
def receipts(draw: st.DrawFn) -> PrivacyReceipt:
    return PrivacyReceipt(
        k=draw(st.none() | st.integers(1, 10**6)),
        l=draw(st.none() | st.floats(1, 1e6)),
        t=draw(st.none() | st.floats(0, 1)),
        dp=draw(st.none() | st.just(release_receipt())),
        modifications=tuple(draw(st.lists(st.text(min_size=1, max_size=10), max_size=3))),
    )


@st.composite
def packages(draw: st.DrawFn) -> SharePackage:
    n = draw(st.integers(0, 25))
    names = draw(st.lists(st.text(min_size=1, max_size=10), min_size=1, max_size=5,
                          unique=True))
    columns = {}
    for name in names:
        kind = draw(_column_kinds)
        columns[name] = draw(st.lists(_by_kind[kind], min_size=n, max_size=n))
    return SharePackage.create(draw(st.text(min_size=1, max_size=20)), columns, draw(receipts()))


# --- round trips --------------------------------------------------------------------------------
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(packages())
def test_encode_decode_round_trip(pkg: SharePackage) -> None:
    data = encode_package(pkg)
    back = decode_package(data)
    assert back == pkg
    assert encode_package(back) == data  # canonical: re-encoding gives the same bytes
    assert back.n_records == pkg.n_records


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(packages())
def test_seal_open_round_trip(pkg: SharePackage) -> None:
    assert open_package(seal_package(pkg, _KEY.public_key()), _KEY) == pkg


@settings(max_examples=60, deadline=None)
@given(receipts())
def test_receipt_round_trip(receipt: PrivacyReceipt) -> None:
    assert PrivacyReceipt.from_dict(receipt.to_dict()) == receipt
    assert PrivacyReceipt.from_dict(json.loads(json.dumps(receipt.to_dict()))) == receipt


# --- building packages --------------------------------------------------------------------------
def test_create_fills_id_and_day_and_normalizes() -> None:
    frame = pd.DataFrame({
        "x": np.array([1.5, 2.5, np.nan]),
        "n": np.array([1, 2, 3], dtype=np.int32),
        "age": pd.arrays.IntervalArray.from_arrays([0.0, 10.0, np.nan], [10.0, 20.0, np.nan],
                                                    closed="both"),
        "town": pd.Categorical(["a", "b", None]),
        "qi": pd.Series([frozenset({"a", "b"}), {np.str_("c")}, None], dtype=object),
        "flag": pd.array([True, None, False], dtype="boolean"),
        "i32": pd.Series([np.int64(4), np.float32(0.5), pd.NA], dtype=object),
    })
    before = dt.datetime.now(dt.timezone.utc).date().isoformat()
    pkg = SharePackage.create("abc", frame, PrivacyReceipt(k=3))
    after = dt.datetime.now(dt.timezone.utc).date().isoformat()
    assert re.fullmatch(r"[0-9a-f]{32}", pkg.package_id)
    assert pkg.created_day in (before, after)
    assert pkg.n_records == 3 and pkg.field_names == tuple(frame.columns)
    assert pkg.columns["n"] == [1, 2, 3] and type(pkg.columns["n"][0]) is int
    assert pkg.columns["age"][0] == pd.Interval(0.0, 10.0, closed="both")
    assert math.isnan(pkg.columns["age"][2])
    assert pkg.columns["town"][:2] == ["a", "b"]
    assert pkg.columns["qi"] == [frozenset({"a", "b"}), frozenset({"c"}), None]
    assert pkg.columns["flag"] == [True, None, False]
    assert pkg.columns["i32"] == [4, 0.5, None]
    assert SharePackage.create("abc", frame, PrivacyReceipt()).package_id != pkg.package_id
    back = open_package(seal_package(pkg, _KEY.public_key()), _KEY)
    assert back == pkg
    out = back.to_frame()
    assert list(out.columns) == list(frame.columns)
    assert out["x"].dtype == np.float64 and out["n"].dtype == np.int64
    assert isinstance(out["age"].dtype, pd.IntervalDtype)
    with pytest.raises(TypeError):
        pkg.columns["x"] = [0.0]  # type: ignore[index]


def test_create_refuses_bad_input() -> None:
    r = PrivacyReceipt()
    cases = [
        (lambda: SharePackage.create("s", {"a": [1.0], "b": [1.0, 2.0]}, r), "equal lengths"),
        (lambda: SharePackage.create("s", {"a": [object()]}, r), "'a' row 0: unsupported"),
        (lambda: SharePackage.create("s", {"a": [1, [1, 2]]}, r), "'a' row 1"),
        (lambda: SharePackage.create("s", {"a": [{1: 2}]}, r), "unsupported cell type dict"),
        (lambda: SharePackage.create("s", {"a": [frozenset({(1, 2)})]}, r), "value set"),
        (lambda: SharePackage.create("s", {"a": np.zeros((2, 2))}, r), "1-D"),
        (lambda: SharePackage.create("s", {"a": "abc"}, r), "sequence of cells"),
        (lambda: SharePackage.create("s", {}, r), "non-empty"),
        (lambda: SharePackage.create("", {"a": [1]}, r), "schema_id"),
        (lambda: SharePackage.create("s", {"a": [1]}, {"k": 3}), "PrivacyReceipt"),  # type: ignore[arg-type]
        (lambda: SharePackage.create("s", {"": [1]}, r), "column name"),
        (lambda: SharePackage.create("s", {"a": [pd.Timestamp(0)]}, r), "Timestamp"),
        (lambda: SharePackage.create("s", {"a": [pd.Interval(pd.Timestamp(0), pd.Timestamp(1))]},
                                     r), "endpoints must be numbers"),
        (lambda: SharePackage("s", "ABC", "2025-01-01", r, {"a": [1]}), "package_id"),
        (lambda: SharePackage("s", "0" * 32, "2025-02-30", r, {"a": [1]}), "created_day"),
        (lambda: SharePackage("s", "0" * 32, "2025-01-01", r, {"a": (1,)}),  # type: ignore[dict-item]
         "must be a list"),
        (lambda: SharePackage("s", "0" * 32, "2025-01-01", r, {"a": [1]}, 2), "format 2"),
    ]
    for call, message in cases:
        with pytest.raises(ValidationError, match=re.escape(message)):
            call()


def test_encode_refuses_what_msgpack_cannot_hold() -> None:
    r = PrivacyReceipt()
    for bad in ([2**64], ["\ud800"]):
        pkg = SharePackage("s", "0" * 32, "2025-01-01", r, {"a": bad})
        with pytest.raises(ValidationError):
            encode_package(pkg)
    huge = SharePackage("s", "0" * 32, "2025-01-01", r, {"a": [2**63, 1]})  # uint64 fits obj
    assert decode_package(encode_package(huge)) == huge


def test_receipt_validation() -> None:
    cases = [
        (dict(k=0), "k must be an int >= 1"),
        (dict(k=True), "k must be"),
        (dict(k=2.0), "k must be"),
        (dict(l=float("nan")), "None when not measured"),
        (dict(l=0.5), "l must be"),
        (dict(t=1.5), "t must be"),
        (dict(t=float("inf")), "t must be"),
        (dict(modifications=("",)), "non-empty str"),
        (dict(modifications="blur"), "modifications"),
        (dict(dp={"epsilon": 1}), "ReleaseReceipt"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValidationError, match=re.escape(message)):
            PrivacyReceipt(**kwargs)  # type: ignore[arg-type]
    bad_dp = release_receipt().to_dict()
    bad_dp["epsilon"] = "a lot"
    data = PrivacyReceipt().to_dict() | {"dp": bad_dp}
    with pytest.raises(ValidationError, match="'epsilon'"):
        PrivacyReceipt.from_dict(data)
    with pytest.raises(ValidationError, match="keys"):
        PrivacyReceipt.from_dict({"k": 1})
    with pytest.raises(ValidationError):
        PrivacyReceipt.from_dict(PrivacyReceipt().to_dict() | {"dp": {"format": 1, "fields": 3}})


def test_receipt_from_report() -> None:
    report = SimpleNamespace(min_class_size=7, n_released=40, l_achieved=3.0,
                             t_achieved=float("nan"))
    r = PrivacyReceipt.from_report(report, dp=release_receipt(), modifications=["x"])  # type: ignore[arg-type]
    assert (r.k, r.l, r.t, r.modifications) == (7, 3.0, None, ("x",))
    assert PrivacyReceipt.from_report(None) == PrivacyReceipt()


def test_receipt_from_real_anonymizer() -> None:
    from dmt_privacy.anonymity import KAnonymizer

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"age": rng.integers(18, 90, 200).astype(float),
                          "zip": rng.choice(["a", "b", "c", "d"], 200),
                          "disease": rng.choice(["x", "y", "z"], 200)})
    anonymizer = KAnonymizer(k=5, quasi_identifiers=["age", "zip"], sensitive="disease")
    released = anonymizer.fit_transform(frame)
    receipt = PrivacyReceipt.from_report(anonymizer.report_)
    assert receipt.k is not None and receipt.k >= 5
    pkg = SharePackage.create("s", released, receipt)
    back = open_package(seal_package(pkg, _KEY.public_key()), _KEY)
    assert back == pkg
    pd.testing.assert_frame_equal(back.to_frame()[["age"]],
                                  released[["age"]].reset_index(drop=True))


# --- hostile input --------------------------------------------------------------------------------
def _assert_invalid(call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidPackage) as caught:
        call()
    err = caught.value
    assert type(err) is InvalidPackage and err.args == ()
    assert err.__cause__ is None and err.__context__ is None


def _sample_envelope() -> bytes:
    return seal_package(kat_package(), _KEY.public_key())


def test_every_bit_flip_of_a_sealed_package_fails() -> None:
    envelope = _sample_envelope()
    for i in range(len(envelope)):
        for bit in range(8):
            altered = bytearray(envelope)
            altered[i] ^= 1 << bit
            _assert_invalid(lambda a=bytes(altered): open_package(a, _KEY))


def test_every_truncation_of_a_sealed_package_fails() -> None:
    envelope = _sample_envelope()
    for n in range(len(envelope)):
        _assert_invalid(lambda n=n: open_package(envelope[:n], _KEY))


def test_every_truncation_of_the_msgpack_fails() -> None:
    data = encode_package(kat_package())
    for n in range(len(data)):
        _assert_invalid(lambda n=n: decode_package(data[:n]))
    _assert_invalid(lambda: decode_package(data + b"\xc0"))
    _assert_invalid(lambda: decode_package(data + data))  # a second object after the first
    _assert_invalid(lambda: open_package(seal(data[:-1], _KEY.public_key(), info=PACKAGE_INFO),
                                         _KEY))


def test_altered_msgpack_decodes_or_fails_cleanly() -> None:
    """Authenticated decryption stops this in practice; the decoder must hold on its own too."""
    data = encode_package(kat_package())
    for i in range(len(data)):
        for mask in (0x01, 0x80, 0xFF):
            altered = bytearray(data)
            altered[i] ^= mask
            try:
                pkg = decode_package(bytes(altered))
            except InvalidPackage as err:
                assert err.args == () and err.__context__ is None
            else:
                assert isinstance(pkg, SharePackage)
                encode_package(pkg)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_random_bytes_fail(data: bytes) -> None:
    _assert_invalid(lambda: open_package(data, _KEY))
    _assert_invalid(lambda: decode_package(data))
    _assert_invalid(lambda: open_package(seal(data, _KEY.public_key(), info=PACKAGE_INFO), _KEY))


_msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text()
    | st.binary(max_size=20)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=20))
    | st.builds(msgpack.ExtType, st.sampled_from([1, 2]), st.binary(max_size=20))
    | st.builds(msgpack.Timestamp, st.integers(0, 2**32 - 1)),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                                   max_size=5),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_msgpack_values)
def test_random_msgpack_inside_a_valid_envelope_fails(value: Any) -> None:
    plaintext = msgpack.packb(value, use_bin_type=True)
    _assert_invalid(lambda: open_package(seal(plaintext, _KEY.public_key(), info=PACKAGE_INFO),
                                         _KEY))


def _doc() -> dict[str, Any]:
    return msgpack.unpackb(encode_package(kat_package()), raw=False,
                           ext_hook=lambda code, data: msgpack.ExtType(code, data))


def _mutations() -> list[tuple[str, Any]]:
    """(description, document) pairs: each a well-formed msgpack document of a wrong package."""
    out: list[tuple[str, Any]] = []

    def variant(desc: str, fn: Any) -> None:
        doc = _doc()
        fn(doc)
        out.append((desc, doc))

    for key in ("format", "schema_id", "package_id", "created_day", "n_records", "receipt",
                "columns"):
        variant(f"drop {key}", lambda d, k=key: d.pop(k))
        wrongs: tuple[Any, ...] = (None, True, -1, 2**40, 1.5, "", "x" * 129, b"x", [], {})
        for wrong in wrongs:
            variant(f"{key}={wrong!r}", lambda d, k=key, w=wrong: d.__setitem__(k, w))
    variant("format True", lambda d: d.__setitem__("format", True))
    variant("format 2", lambda d: d.__setitem__("format", 2))
    variant("extra key", lambda d: d.__setitem__("extra", 1))
    variant("n_records+1", lambda d: d.__setitem__("n_records", 5))
    variant("n_records-1", lambda d: d.__setitem__("n_records", 3))
    variant("duplicate column", lambda d: d["columns"].append(d["columns"][0]))
    variant("empty column name", lambda d: d["columns"][0].__setitem__(0, ""))
    variant("unknown encoding", lambda d: d["columns"][0].__setitem__(1, "f4"))
    variant("f8 as list", lambda d: d["columns"][0].__setitem__(2, [1.0, 2.0, 3.0, 4.0]))
    variant("short f8", lambda d: d["columns"][0].__setitem__(2, d["columns"][0][2][:-8]))
    variant("odd f8", lambda d: d["columns"][0].__setitem__(2, d["columns"][0][2][:-1]))
    variant("short obj", lambda d: d["columns"][2][2].pop())
    variant("nested list cell", lambda d: d["columns"][4][2].__setitem__(0, [1]))
    variant("map cell", lambda d: d["columns"][4][2].__setitem__(0, {"a": 1}))
    variant("unknown ext", lambda d: d["columns"][4][2].__setitem__(0, msgpack.ExtType(3, b"")))
    variant("timestamp ext", lambda d: d["columns"][4][2].__setitem__(0, msgpack.Timestamp(1)))
    for payload in (b"", struct.pack("<Bdd", 4, 0, 1), struct.pack("<Bdd", 0, 2, 1),
                    struct.pack("<Bdd", 0, math.nan, 1), struct.pack("<Bdd", 0, 0, 1) + b"\x00"):
        variant(f"bad interval {payload!r}", lambda d, p=payload: d["columns"][4][2].__setitem__(
            0, msgpack.ExtType(1, p)))
    for members in ([1, 1.0], [1, True], [[1]], [{"a": 1}], ["a", "a"], "notalist", [b"x"],
                    [msgpack.ExtType(1, struct.pack("<Bdd", 0, 0, 1))]):
        body = msgpack.packb(members, use_bin_type=True)
        variant(f"bad set {members!r}", lambda d, b=body: d["columns"][4][2].__setitem__(
            0, msgpack.ExtType(2, b)))
    variant("bad set bytes", lambda d: d["columns"][4][2].__setitem__(
        0, msgpack.ExtType(2, b"\x92\xa1")))
    variant("column triple short", lambda d: d["columns"][0].pop())
    variant("column as map", lambda d: d["columns"].__setitem__(0, {"name": "x"}))
    variant("no columns", lambda d: d.__setitem__("columns", []))
    variant("bad package id", lambda d: d.__setitem__("package_id", "Z" * 32))
    variant("bad day", lambda d: d.__setitem__("created_day", "2025-13-01"))
    variant("receipt k 0", lambda d: d["receipt"].__setitem__("k", 0))
    variant("receipt l nan", lambda d: d["receipt"].__setitem__("l", math.nan))
    variant("receipt extra", lambda d: d["receipt"].__setitem__("z", 1))
    variant("receipt mods", lambda d: d["receipt"].__setitem__("modifications", [1]))
    variant("dp eps str", lambda d: d["receipt"]["dp"].__setitem__("epsilon", "x"))
    variant("dp eps nan", lambda d: d["receipt"]["dp"].__setitem__("epsilon", math.nan))
    variant("dp format", lambda d: d["receipt"]["dp"].__setitem__("format", 9))
    variant("dp unknown key", lambda d: d["receipt"]["dp"].__setitem__("zz", 1))
    variant("dp fields map", lambda d: d["receipt"]["dp"].__setitem__("fields", {"a": 1}))
    variant("dp fields ints", lambda d: d["receipt"]["dp"].__setitem__("fields", [1]))
    variant("field receipt bounds", lambda d: d["receipt"]["dp"]["fields"][0].__setitem__(
        "bounds", [1]))
    variant("field receipt cats", lambda d: d["receipt"]["dp"]["fields"][1].__setitem__(
        "categories", [[1]]))
    variant("field receipt key", lambda d: d["receipt"]["dp"]["fields"][1].__setitem__("q", 1))
    variant("field receipt no name", lambda d: d["receipt"]["dp"]["fields"][1].pop("field"))
    return out


def test_structural_mutations_fail() -> None:
    mutations = _mutations()
    assert len(mutations) > 100
    for desc, doc in mutations:
        data = msgpack.packb(doc, use_bin_type=True)
        try:
            decode_package(data)
        except InvalidPackage as err:
            assert err.args == () and err.__context__ is None, desc
        else:
            pytest.fail(f"mutation {desc!r} decoded")
    desc, doc = mutations[0]
    envelope = seal(msgpack.packb(doc, use_bin_type=True), _KEY.public_key(), info=PACKAGE_INFO)
    _assert_invalid(lambda: open_package(envelope, _KEY))


def test_key_order_is_free() -> None:
    doc = _doc()
    doc["format"] = doc.pop("format")
    assert decode_package(msgpack.packb(doc, use_bin_type=True)) == kat_package()


def test_limits() -> None:
    pkg = SharePackage.create("s", {"x": [0.5] * 100, "y": ["a"] * 100}, PrivacyReceipt())
    data = encode_package(pkg)
    assert decode_package(data, max_records=100) == pkg
    _assert_invalid(lambda: decode_package(data, max_records=99))
    _assert_invalid(lambda: decode_package(data, max_bytes=len(data) - 1))
    envelope = seal_package(pkg, _KEY.public_key())
    assert open_package(envelope, _KEY, max_bytes=len(data)) == pkg
    _assert_invalid(lambda: open_package(envelope, _KEY, max_bytes=len(data) - 1))
    _assert_invalid(lambda: open_package(envelope, _KEY, max_records=99))
    with pytest.raises(ValidationError, match="max_records"):
        decode_package(data, max_records=-1)
    with pytest.raises(ValidationError, match="max_bytes"):
        open_package(envelope, _KEY, max_bytes=0)


def test_hostile_headers_do_not_allocate() -> None:
    """Array, map, str and bin headers that claim far more than the input holds."""
    for data in (b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff",
                 b"\xc6\xff\xff\xff\xff", b"\xc9\xff\xff\xff\xff\x01", b"\x91" * 100_000,
                 b"\x81\xa1a" * 50_000 + b"\xc0"):
        _assert_invalid(lambda d=data: decode_package(d))
        _assert_invalid(lambda d=data: open_package(seal(d, _KEY.public_key(),
                                                         info=PACKAGE_INFO), _KEY))


def test_non_bytes_fail() -> None:
    for value in (None, 3, "x", [b"DMT"]):
        _assert_invalid(lambda v=value: decode_package(v))  # type: ignore[arg-type]
        _assert_invalid(lambda v=value: open_package(v, _KEY))  # type: ignore[arg-type]


if __name__ == "__main__":
    VECTORS.mkdir(exist_ok=True)
    PACKAGE_VECTORS.write_text(json.dumps(make_package_vectors(), indent=2) + "\n")
    print(f"wrote {PACKAGE_VECTORS}")


# --- format 2: a package carrying a rate-limiting token -----------------------------------------
def test_a_token_travels_inside_the_envelope_as_format_2() -> None:
    token = b"\x00\x02" + bytes(range(2, 256)) + bytes(98)  # type 0x0002, 354 bytes
    pkg = kat_package()
    envelope = seal_package(pkg, _RECIPIENT.public_key(), token=token)
    opened = open_package(envelope, _RECIPIENT)
    assert opened.token == token and opened.format_version == 2
    assert opened.columns.keys() == pkg.columns.keys() and opened.package_id == pkg.package_id
    doc = msgpack.unpackb(encode_package(opened), raw=False, ext_hook=lambda c, d: (c, d))
    assert doc["format"] == 2 and doc["token"] == token
    assert token not in envelope  # sealed, never beside the envelope
    # format 1 (no token) is unchanged, and a format 1 map with a token key is refused
    assert msgpack.unpackb(encode_package(pkg), raw=False,
                           ext_hook=lambda c, d: (c, d))["format"] == 1
    raw = msgpack.unpackb(encode_package(opened), raw=False)  # ext types kept as ExtType
    raw["format"] = 1
    _assert_invalid(lambda: decode_package(msgpack.packb(raw, use_bin_type=True)))
    del raw["token"]
    assert decode_package(msgpack.packb(raw, use_bin_type=True)) == pkg
    with pytest.raises(ValidationError, match="token"):
        seal_package(pkg, _RECIPIENT.public_key(), token="not bytes")


def test_intervals_and_value_sets_decoded_once_across_packages_without_weakening_a_check():
    """Decoded intervals and value sets are shared between packages (they repeat in every
    package of a schema), but a shared value is only ever one that passed the checks of the
    limits in force: a value set accepted under a high max_records is refused under a lower
    one, a malformed extension is refused every time, and the cache stays bounded."""
    import dmt_privacy.package as package_module

    cls = (pd.Interval(20.0, 29.0, closed="both"), frozenset({"a", "b", "c"}))
    first, second = (SharePackage.create("s" * 16, {"age": [cls[0]] * 2, "zip": [cls[1]] * 2},
                                         PrivacyReceipt(k=2)) for _ in range(2))
    one, two = (decode_package(encode_package(p)) for p in (first, second))
    assert one == first and two == second
    assert one.columns["age"][0] is two.columns["age"][0]  # built once, shared
    assert one.columns["zip"][0] is two.columns["zip"][0]
    # the value set has 3 members: fine with max_records=3, refused with 2 (cached or not)
    data = encode_package(SharePackage.create("s" * 16, {"zip": [cls[1]]}, PrivacyReceipt(k=1)))
    assert decode_package(data, max_records=3).columns["zip"] == [cls[1]]
    _assert_invalid(lambda: decode_package(data, max_records=2))
    bad = encode_package(first)
    interval = struct.pack("<Bdd", 0, 20.0, 29.0)
    flipped = struct.pack("<Bdd", 0, 29.0, 20.0)  # lo > hi
    assert interval in bad
    for _ in range(2):
        _assert_invalid(lambda: decode_package(bad.replace(interval, flipped)))
    package_module._SHARED_EXT.clear()
    for i in range(package_module._SHARED_EXT_MAX + 10):
        package_module._SHARED_EXT[(0, 0, str(i).encode())] = i
    decode_package(encode_package(first))
    assert len(package_module._SHARED_EXT) <= package_module._SHARED_EXT_MAX


def test_the_default_limits_keep_a_hostile_package_s_memory_small() -> None:
    """decode_package and open_package took 64 MiB by default, and a package of short strings
    becomes about 22 times its size in Python objects: 60 MiB held 1.3 GiB (helper-68). The
    defaults now take what `dmt serve` takes (1 MiB); a caller who trusts a larger source
    says so with max_bytes=."""
    n = 600_000  # 2-character strings: about 1.8 MB encoded, about 40 MB as str objects
    pkg = SharePackage(schema_id="s", package_id="0" * 32, created_day="2026-12-05",
                       receipt=PrivacyReceipt(k=1), columns={"x": ["ab"] * n})
    data = encode_package(pkg)
    assert len(data) > 2**20
    with pytest.raises(InvalidPackage):
        decode_package(data)
    with pytest.raises(InvalidPackage):
        open_package(seal_package(pkg, _KEY.public_key()), _KEY)
    assert decode_package(data, max_bytes=len(data)).n_records == n
