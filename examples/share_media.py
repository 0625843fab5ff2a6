"""Share text, images and audio: modified on the device, sealed, ingested, read back on the server.

One user keeps notes about a home, a photo of each room (a 32×32 RGB array)
and a voice memo (a tone, mono float32 at 16 kHz) in a LocalStore. Three of
the six records are shared; before they leave the device the notes get
WordNet synonyms, the photos are blurred and desaturated, and the memos are
pitch-shifted 3 semitones up with noise added at 25 dB SNR. The package is
sealed to a fresh server key, ingested into SQLite in a temporary directory
and opened again from there, to show what the server holds.

Images and audio travel as numeric arrays (package ext type 3, see
dmt_privacy.package); the server checks their shape and dtype. The
modifiers draw fresh entropy, so every run changes different words.

Usage: NLTK_DATA=nltk_data python examples/share_media.py   (needs WordNet and librosa)
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.pipeline import make_pipeline

from dmt_model.server import ServerPolicy, SharedStore, ingest
from dmt_privacy import Field, Schema
from dmt_privacy.modify import (
    AudioNoise,
    ColorCorrection,
    GaussianBlur,
    PitchShift,
    SynonymReplacer,
)
from dmt_privacy.seal import generate_server_key
from dmt_privacy.sharing import SharingPolicy, share
from dmt_privacy.store import LocalStore

RATE = 16_000  # Hz, the voice memos' sample rate
SEMITONES = 3
SCHEMA = Schema((
    Field("notes", "text", description="the user's notes about a room"),
    Field("photo", "image", bounds=(0, 255), description="32x32 RGB, uint8"),
    Field("memo", "audio", bounds=(-1, 1), description=f"mono float32 at {RATE} Hz"),
), name="home")
NOTES = [
    "The kitchen window faces the quiet garden and gets bright morning light.",
    "We repaired the old wooden floor in the small bedroom last winter.",
    "The basement stays cold and damp, so the bicycles are stored upstairs.",
    "Our neighbour Anna waters the large tomato plants every summer.",
    "The heating makes a loud noise when it starts early in the morning.",
    "The spare key to the front door hides under the red flower pot.",
]


def photo(i: int) -> np.ndarray:
    """A gradient with a bright square and fine stripes: sharp edges, high frequencies."""
    y, x = np.mgrid[0:32, 0:32] / 31.0
    image = np.stack([x, y, 1.0 - x], axis=-1) * 0.6
    image[8 + i:20 + i, 6:18] = (1.0, 0.9, 0.2)
    image[:, 24:] += 0.3 * ((np.arange(8) + i) % 2)[None, :, None]
    return np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)


def memo(frequency: float) -> np.ndarray:
    """Half a second of a sine tone with soft onset and release."""
    t = np.arange(RATE // 2) / RATE
    return (0.5 * np.sin(2 * np.pi * frequency * t) * np.hanning(t.size)).astype(np.float32)


def high_frequency_energy(image: np.ndarray) -> float:
    """Mean squared difference of neighbouring pixels (0-1 scale): what blur removes."""
    x = np.asarray(image, dtype=float) / 255.0
    return float(np.mean(np.diff(x, axis=0) ** 2) + np.mean(np.diff(x, axis=1) ** 2))


def dominant_frequency(clip: np.ndarray) -> float:
    """The strongest frequency in Hz (FFT zero-padded to 0.25 Hz bins)."""
    spectrum = np.abs(np.fft.rfft(clip * np.hanning(clip.size), n=4 * RATE))
    return float(np.argmax(spectrum) * RATE / (4 * RATE))


def changed_words(before: str, after: str) -> list[tuple[str, str]]:
    """(old, new) for every word that differs; synonyms replace one word with one word."""
    words = re.compile(r"[A-Za-z]+(?:[-'][A-Za-z]+)*")
    return [(a, b) for a, b in zip(words.findall(before), words.findall(after), strict=True)
            if a != b]


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="dmt-media-"))
    key = generate_server_key()  # the server's `dmt keygen`; the device gets the public half
    records = pd.DataFrame({
        "notes": NOTES,
        "photo": [photo(i) for i in range(6)],
        "memo": [memo(f) for f in (220.0, 262.0, 330.0, 392.0, 440.0, 494.0)],
    }, index=[f"r{i}" for i in range(6)])

    store = LocalStore(folder / "device.db", schema=SCHEMA, user_id="alice",
                       key=LocalStore.generate_key())  # on a device: from the keystore
    store.add_records(records.iloc[:5])
    store.add_records(records.iloc[5:], shareable=False)  # the spare key never leaves
    synonyms = SynonymReplacer(rate=0.5, protected=["Anna"])
    policy = SharingPolicy(
        fields=("notes", "photo", "memo"),
        record_ids={"r0", "r1", "r3"},
        modifiers={
            "notes": synonyms,
            "photo": make_pipeline(GaussianBlur(sigma=1.2), ColorCorrection(saturation=0.6)),
            "memo": make_pipeline(PitchShift(SEMITONES, sample_rate=RATE), AudioNoise(25.0)),
        },
    )
    result = share(store, policy, key.public_key())
    print(f"device: package {result.package_id[:8]}… carries {result.n_records} records "
          f"{list(result.entry.record_ids)}; modifications {list(result.receipt.modifications)}")
    print(f"        before the ack: shared {store.count('shared')}, "
          f"pending {store.count('pending')}")

    db = f"sqlite:///{folder / 'server.db'}"
    report = ingest(result.envelope, db, key, ServerPolicy(SCHEMA, min_k=5))
    print("server: " + report.to_text().replace("\n", "\n        "))
    for package_id in report.stored_ids:
        store.acknowledge(package_id)
    print(f"device: after the ack: shared {store.count('shared')}, "
          f"unshared {store.count('unshared')}")

    # What the server holds (quarantined too), in package order: the package names no record,
    # the device's outbox entry knows which record each row came from.
    held = SharedStore(db, key).frame("all")
    for record_id, row in zip(result.entry.record_ids, held.itertuples(), strict=True):
        original = records.loc[record_id]
        print(f"\n{record_id} notes  before: {original.notes}")
        print(f"         after:  {row.notes}")
        print("         replaced: " + (", ".join(
            f"{a} → {b}" for a, b in changed_words(original.notes, row.notes)) or "(none)"))
        print(f"   photo  high-frequency energy {high_frequency_energy(original.photo):.4f} → "
              f"{high_frequency_energy(row.photo):.4f} ({row.photo.shape}, {row.photo.dtype})")
        before, after = dominant_frequency(original.memo), dominant_frequency(row.memo)
        print(f"   memo   dominant frequency {before:.1f} Hz → {after:.1f} Hz "
              f"(×{after / before:.4f}; 2^({SEMITONES}/12) = {2 ** (SEMITONES / 12):.4f})")

    unshared = [r for r in records.index if r not in result.entry.record_ids]
    absent = not set(records.loc[unshared, "notes"]) & set(held["notes"])
    print(f"\nunshared records {unshared}: absent from the server: {absent} "
          f"({len(held)} rows held, {len(records)} on the device)")
    store.close()


if __name__ == "__main__":
    main()
