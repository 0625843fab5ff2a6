"""Text, images and audio through the whole sharing pipeline, and the array cells that carry them.

The flow of examples/share_media.py on a tiny dataset: LocalStore → share()
with SynonymReplacer, GaussianBlur + ColorCorrection and PitchShift +
AudioNoise → seal → ingest (SQLite) → what the server stored. Then package
ext type 3 (numeric arrays): known-answer bytes, round trips, malformed
payloads, and the server's checks of image and audio cells.
"""

from __future__ import annotations

import msgpack
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.pipeline import make_pipeline

from dmt_model.server import ServerPolicy, SharedStore, ingest
from dmt_privacy import Field, Schema, ValidationError
from dmt_privacy.dp.random import InsecureRandomnessWarning
from dmt_privacy.errors import InvalidPackage
from dmt_privacy.modify import (
    AudioNoise,
    ColorCorrection,
    GaussianBlur,
    PitchShift,
    SynonymReplacer,
)
from dmt_privacy.package import (
    EXT_ARRAY,
    PACKAGE_INFO,
    PrivacyReceipt,
    SharePackage,
    decode_package,
    encode_package,
    seal_package,
)
from dmt_privacy.seal import generate_server_key, open_sealed
from dmt_privacy.sharing import SharingPolicy, share
from dmt_privacy.store import LocalStore

RATE = 16_000
SEMITONES = 3
SCHEMA = Schema((
    Field("notes", "text"),
    Field("photo", "image", bounds=(0, 255)),
    Field("memo", "audio", bounds=(-1, 1)),
), name="home")
KEY = generate_server_key()
NOTES = [
    "The kitchen window faces the quiet garden and gets bright morning light.",
    "We repaired the old wooden floor in the small bedroom last winter.",
    "The basement stays cold and damp, so the bicycles are stored upstairs.",
    "Our neighbour waters the large tomato plants every summer.",
]
FREQUENCIES = (220.0, 300.0, 370.0, 450.0)  # distinct: a stored tone names its source record
SHARED = ("r0", "r2")


def photo(i: int) -> np.ndarray:
    y, x = np.mgrid[0:32, 0:32] / 31.0
    image = np.stack([x, y, 1.0 - x], axis=-1) * 0.6
    image[6 + 2 * i:18 + 2 * i, 5:17] = (1.0, 0.9, 0.2)
    image[:, 24:] += 0.3 * (np.arange(8) % 2)[None, :, None]
    return np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)


def tone(frequency: float) -> np.ndarray:
    t = np.arange(RATE // 2) / RATE
    return (0.5 * np.sin(2 * np.pi * frequency * t) * np.hanning(t.size)).astype(np.float32)


def high_frequency_energy(image: np.ndarray) -> float:
    x = np.asarray(image, dtype=float) / 255.0
    return float(np.mean(np.diff(x, axis=0) ** 2) + np.mean(np.diff(x, axis=1) ** 2))


def dominant_frequency(clip: np.ndarray) -> float:
    """Peak of the Hann-windowed, 8x zero-padded spectrum, refined by parabolic interpolation."""
    x = np.asarray(clip, dtype=np.float64)
    n = 8 * len(x)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)), n=n))
    k = int(np.argmax(spectrum[1:-1])) + 1
    a, b, c = np.log(spectrum[k - 1:k + 2])
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * RATE / n


RECORDS = pd.DataFrame({
    "notes": NOTES,
    "photo": [photo(i) for i in range(4)],
    "memo": [tone(f) for f in FREQUENCIES],
}, index=[f"r{i}" for i in range(4)])


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    """Share r0 and r2 (r1 shareable but not selected, r3 never shareable), ingest, read back."""
    folder = tmp_path_factory.mktemp("media")
    store = LocalStore(folder / "device.db", schema=SCHEMA, user_id="alice",
                       key=LocalStore.generate_key())
    store.add_records(RECORDS.iloc[:3])
    store.add_records(RECORDS.iloc[3:], shareable=False)
    synonyms = SynonymReplacer(rate=0.5, random_state=3)
    policy = SharingPolicy(
        fields=("notes", "photo", "memo"), record_ids=set(SHARED),
        modifiers={
            "notes": synonyms,
            "photo": make_pipeline(GaussianBlur(sigma=1.2), ColorCorrection(saturation=0.6)),
            "memo": make_pipeline(PitchShift(SEMITONES, sample_rate=RATE),
                                  AudioNoise(25.0, random_state=4)),
        },
    )
    with pytest.warns(InsecureRandomnessWarning):  # seeded: the replacements are checked
        result = share(store, policy, KEY.public_key())
    states = {"after share": (store.count("shared"), store.count("pending"))}
    db = f"sqlite:///{folder / 'server.db'}"
    report = ingest(result.envelope, db, KEY, ServerPolicy(SCHEMA, min_k=5))
    states["after ingest"] = (store.count("shared"), store.count("pending"))
    shared_before_ack = [store.state(r).shared for r in RECORDS.index]
    for package_id in report.stored_ids:
        store.acknowledge(package_id)
    held = SharedStore(db, KEY).frame("all")
    yield {"store": store, "result": result, "report": report, "held": held,
           "states": states, "shared_before_ack": shared_before_ack,
           "replacements": synonyms.report_.replacements,
           "plaintext": open_sealed(result.envelope, KEY, info=PACKAGE_INFO)}
    store.close()


def test_server_accepts_the_package_with_its_modifications(flow):
    assert [o.status for o in flow["report"].outcomes] == ["accepted"]
    assert flow["result"].entry.record_ids == SHARED
    assert flow["result"].receipt.modifications == (
        "notes:SynonymReplacer (2/2 changed)", "photo:GaussianBlur+ColorCorrection (2/2 changed)",
        "memo:PitchShift+AudioNoise (2/2 changed)")
    assert len(flow["held"]) == len(SHARED)


def test_the_package_names_each_modification_but_not_how_many_records_it_changed(flow):
    """helper-87: how many of a user's records a modifier changed depends on their values
    (how many texts had a word to replace, how many numbers a custom modifier coarsened),
    and the count travelled in the package's receipt, which the server keeps in clear,
    uncharged. The package names the modifiers; the count stays in the device's receipt
    (``ShareResult.receipt``, the outbox's)."""
    from dmt_privacy.package import open_package

    package = open_package(flow["result"].envelope, KEY)
    assert package.receipt.modifications == (
        "notes:SynonymReplacer", "photo:GaussianBlur+ColorCorrection", "memo:PitchShift+AudioNoise")
    assert b"changed" not in flow["plaintext"]
    outbox = flow["store"].outbox_entry(flow["result"].package_id)
    assert "(2/2 changed)" in str(outbox.receipt)


def test_stored_text_differs_in_exactly_the_replaced_words(flow):
    replacements = flow["replacements"]
    assert replacements, "the seeded replacer changed no word; pick another seed"
    for position, (record_id, stored) in enumerate(zip(SHARED, flow["held"]["notes"],
                                                       strict=True)):
        original = RECORDS.loc[record_id, "notes"]
        expected, last = [], 0
        for r in (r for r in replacements if r.text_index == position):
            assert original[r.start:r.end] == r.original and r.replacement != r.original
            expected += [original[last:r.start], r.replacement]
            last = r.end
        assert stored == "".join(expected) + original[last:]
        assert stored != original


def test_stored_images_lost_high_frequencies(flow):
    for record_id, stored in zip(SHARED, flow["held"]["photo"], strict=True):
        original = RECORDS.loc[record_id, "photo"]
        assert stored.shape == original.shape and stored.dtype == np.uint8
        assert high_frequency_energy(stored) < 0.5 * high_frequency_energy(original)


def test_stored_tones_moved_by_two_to_the_n_over_12(flow):
    for record_id, stored in zip(SHARED, flow["held"]["memo"], strict=True):
        original = RECORDS.loc[record_id, "memo"]
        assert stored.shape == original.shape and stored.dtype == np.float32
        assert not np.array_equal(stored, original)
        ratio = dominant_frequency(stored) / dominant_frequency(original)
        assert ratio == pytest.approx(2 ** (SEMITONES / 12), rel=0.005)


def test_unshared_records_never_reach_the_server(flow):
    held = flow["held"]
    # Each stored row is traced back to its source: its tone, shifted back, is one of the
    # distinct record frequencies, and it is a shared record's.
    sources = []
    for clip in held["memo"]:
        base = dominant_frequency(clip) / 2 ** (SEMITONES / 12)
        sources.append(RECORDS.index[int(np.argmin(np.abs(np.array(FREQUENCIES) - base)))])
    assert tuple(sources) == SHARED
    for record_id in ("r1", "r3"):
        for name in ("notes", "photo", "memo"):
            value = RECORDS.loc[record_id, name]
            raw = value.encode() if isinstance(value, str) else value.tobytes()
            assert raw not in flow["plaintext"]
        assert not any(np.array_equal(RECORDS.loc[record_id, "photo"], p) for p in held["photo"])


def test_nothing_is_marked_shared_before_the_acknowledgement(flow):
    assert flow["states"] == {"after share": (0, 2), "after ingest": (0, 2)}
    assert flow["shared_before_ack"] == [False] * 4
    store = flow["store"]
    assert store.record_ids("shared") == list(SHARED)
    assert store.record_ids("unshared") == ["r1", "r3"]


# --- array cells: package ext type 3 ------------------------------------------------------------
def _cells(data: bytes) -> dict[str, list]:
    doc = msgpack.unpackb(data, raw=False, ext_hook=msgpack.ExtType)
    return {name: payload for name, _, payload in doc["columns"]}


def test_array_cell_known_answer():
    image = np.array([[1, 2], [3, 4]], dtype=np.uint8)
    clip = np.array([0.5, -1.0], dtype=">f4")  # big-endian in, little-endian on the wire
    pkg = SharePackage.create("s", {"photo": [image], "memo": [clip]}, PrivacyReceipt())
    cells = _cells(encode_package(pkg))
    assert cells["photo"] == [msgpack.ExtType(EXT_ARRAY, bytes.fromhex(
        "01" "02" "02000000" "02000000" "01020304"))]
    assert cells["memo"] == [msgpack.ExtType(EXT_ARRAY, bytes.fromhex(
        "05" "01" "02000000" "0000003f" "000080bf"))]


_ARRAYS = st.sampled_from(["u1", "<u2", "<i2", "<i4", "<f4", "<f8"]).flatmap(
    lambda dtype: hnp.arrays(dtype, hnp.array_shapes(min_dims=1, max_dims=4, min_side=0,
                                                     max_side=5)))


@settings(max_examples=60, deadline=None)
@given(st.lists(_ARRAYS, min_size=1, max_size=4))
def test_array_cells_round_trip(arrays):
    pkg = SharePackage.create("s", {"x": arrays}, PrivacyReceipt())
    back = decode_package(encode_package(pkg))
    assert back == pkg
    for got, want in zip(back.columns["x"], arrays, strict=True):
        assert got.shape == want.shape and got.dtype == want.dtype.newbyteorder("<")
        assert got.tobytes() == want.astype(got.dtype).tobytes() and not got.flags.writeable


@pytest.mark.parametrize("value", [
    np.zeros(3, dtype=np.int64), np.zeros(3, dtype=bool), np.zeros(3, dtype=np.complex64),
    np.array(1.0), np.zeros((1,) * 5, dtype=np.float32),
])
def test_unsupported_arrays_are_refused_on_the_device(value):
    with pytest.raises(ValidationError, match="array cell"):
        SharePackage.create("s", {"x": [value]}, PrivacyReceipt())


@pytest.mark.parametrize("payload", [
    "", "01", "0101", "010102000000", "0101020000000102ff",   # truncated, too long
    "07010100000000", "000101000000ff",                        # unknown dtype codes
    "0100", "0105" + "01000000" * 5 + "00",                    # 0 and 5 dimensions
])
def test_malformed_array_cells_are_invalid_packages(payload):
    pkg = SharePackage.create("s", {"x": [np.zeros(2, dtype=np.uint8)]}, PrivacyReceipt())
    doc = msgpack.unpackb(encode_package(pkg), raw=False, ext_hook=msgpack.ExtType)
    doc["columns"][0][2] = [msgpack.ExtType(EXT_ARRAY, bytes.fromhex(payload))]
    with pytest.raises(InvalidPackage):
        decode_package(msgpack.packb(doc, use_bin_type=True))


@pytest.mark.parametrize(("field", "value"), [
    ("photo", "not an image"), ("photo", np.zeros(32, dtype=np.uint8)),
    ("photo", np.zeros((4, 4, 2), dtype=np.uint8)), ("photo", np.zeros((4, 4), dtype=np.int16)),
    ("memo", b"raw bytes"), ("memo", np.zeros((2, 2, 2), dtype=np.float32)),
    ("memo", np.array([0.0, np.nan], dtype=np.float32)), ("memo", np.zeros(4, dtype=np.uint8)),
])
def test_server_rejects_cells_that_are_not_images_or_audio(tmp_path, field, value):
    columns = {"notes": ["a note"], "photo": [photo(0)], "memo": [tone(440.0)]}
    columns[field] = [value]
    pkg = SharePackage.create(SCHEMA.schema_id, columns, PrivacyReceipt())
    report = ingest(seal_package(pkg, KEY.public_key()), f"sqlite:///{tmp_path / 's.db'}", KEY,
                    ServerPolicy(SCHEMA, min_k=5))
    [outcome] = report.outcomes
    assert outcome.status == "rejected" and outcome.reason.startswith("bad values")
    assert repr(field) in outcome.reason


def _media_store(tmp_path) -> LocalStore:
    store = LocalStore(tmp_path / "device.db", schema=SCHEMA, user_id="u",
                       key=LocalStore.generate_key())
    store.add_records(RECORDS.iloc[:2])
    return store


def test_the_receipt_names_every_step_and_how_many_records_it_changed(tmp_path):
    """The receipt said 'photo:Pipeline' whatever the pipeline held (a passthrough too), and
    'notes:SynonymReplacer' for a replacer that changed nothing (helper-71): it now names
    each step and counts the records whose value the modifier changed."""
    from sklearn.preprocessing import FunctionTransformer

    policy = SharingPolicy(fields=("notes", "photo", "memo"), modifiers={
        "notes": SynonymReplacer(rate=0.0),
        "photo": make_pipeline(FunctionTransformer(), GaussianBlur(sigma=1.2)),
        "memo": make_pipeline(FunctionTransformer()),
    })
    result = share(_media_store(tmp_path), policy, KEY.public_key())
    assert result.receipt.modifications == (
        "notes:SynonymReplacer (0/2 changed)",
        "photo:FunctionTransformer+GaussianBlur (2/2 changed)",
        "memo:FunctionTransformer (0/2 changed)")


def test_a_seeded_modifier_warns_that_it_protects_nothing(tmp_path):
    """A seeded modifier draws the same noise in every package: two packages then differ by
    exactly their records' difference, and the noise can be drawn again and removed
    (helper-71 recovered a clip to 5.6e-17). share() took it without a word."""
    policy = SharingPolicy(fields=("memo",), modifiers={
        "memo": make_pipeline(PitchShift(2, sample_rate=RATE), AudioNoise(20.0, random_state=0))})
    with pytest.warns(InsecureRandomnessWarning, match="memo.*audionoise__random_state=0"):
        share(_media_store(tmp_path), policy, KEY.public_key())


def test_an_unchanged_missing_number_or_list_is_not_counted_changed():
    """NaN != NaN counted an untouched missing number as changed, and list cells compared by
    identity (helper-72)."""
    from sklearn.preprocessing import FunctionTransformer

    from dmt_privacy.sharing import _modification

    numbers = pd.Series([1.0, np.nan, 3.0])
    assert _modification("x", FunctionTransformer(), numbers, numbers.copy()).endswith(
        "(0/3 changed)")
    ragged = pd.Series([[1, 2], [3]], dtype=object)
    copied = pd.Series([[1, 2], [3]], dtype=object)
    assert _modification("x", FunctionTransformer(), ragged, copied).endswith("(0/2 changed)")
