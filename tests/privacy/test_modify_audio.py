"""Audio modifiers: measured pitch ratio, tempo, SNR; dtypes kept; inputs untouched."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest

from dmt_privacy.errors import MissingDependencyError, ValidationError
from dmt_privacy.modify import AudioNoise, PitchShift, TempoChange
from dmt_privacy.modify.audio import snr_db

SR = 16_000


def tone(freq: float = 440.0, seconds: float = 1.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_frequency(clip: np.ndarray) -> float:
    """Peak of the Hann-windowed, 8x zero-padded spectrum, refined by parabolic interpolation."""
    x = np.asarray(clip, dtype=np.float64)
    n = 8 * len(x)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)), n=n))
    k = int(np.argmax(spectrum[1:-1])) + 1
    a, b, c = np.log(spectrum[k - 1:k + 2])
    offset = 0.5 * (a - c) / (a - 2 * b + c)
    return (k + offset) * SR / n


@pytest.mark.parametrize("semitones", [-7, -3, 2, 5, 12])
def test_pitch_shift_moves_the_dominant_frequency_by_two_to_the_n_over_12(semitones):
    clip = tone(440.0)
    out = PitchShift(semitones, sample_rate=SR).transform(clip)
    assert out.shape == clip.shape and out.dtype == np.float32
    ratio = dominant_frequency(out) / dominant_frequency(clip)
    assert ratio == pytest.approx(2.0 ** (semitones / 12), rel=0.003)


def test_tempo_change_scales_duration_and_keeps_pitch():
    clip = tone(330.0, seconds=2.0)
    for rate in (0.8, 1.25):
        out = TempoChange(rate, sample_rate=SR).transform(clip)
        assert len(out) == pytest.approx(len(clip) / rate, rel=0.01)
        assert dominant_frequency(out) == pytest.approx(330.0, rel=0.003)


@pytest.mark.parametrize("target", [0.0, 10.0, 20.0, 35.0])
def test_noise_gives_the_stated_snr_within_half_a_db(target):
    speechlike = tone(220.0) + 0.5 * tone(880.0, amplitude=0.2)
    out = AudioNoise(target, random_state=0).transform(speechlike)
    assert out.dtype == np.float32
    assert abs(snr_db(speechlike, out) - target) < 0.5
    pcm = np.rint(speechlike * 32767).astype(np.int16)
    out16 = AudioNoise(target, random_state=0).transform(pcm)
    assert out16.dtype == np.int16
    assert abs(snr_db(pcm, out16) - target) < 0.5


def test_noise_is_seeded_and_silence_stays_silent():
    clip = tone()
    a = AudioNoise(10.0, random_state=5).transform(clip)
    assert np.array_equal(a, AudioNoise(10.0, random_state=5).transform(clip))
    assert not np.array_equal(a, AudioNoise(10.0, random_state=6).transform(clip))
    silent = np.zeros(100, dtype=np.float32)
    assert np.array_equal(AudioNoise(10.0).transform(silent), silent)


def test_stereo_clips_and_collections_keep_shapes_and_inputs():
    stereo = np.stack([tone(440.0), tone(550.0)])
    before = stereo.copy()
    out = PitchShift(3, sample_rate=SR).transform(stereo)
    assert out.shape == stereo.shape
    assert np.array_equal(stereo, before)
    ratio = dominant_frequency(out[1]) / 550.0
    assert ratio == pytest.approx(2 ** (3 / 12), rel=0.003)
    clips = [tone(300.0, 0.5), tone(400.0, 0.25)]
    series = pd.Series(clips, index=["u1", "u2"], dtype=object)
    s_out = AudioNoise(20.0, random_state=0).transform(series)
    assert list(s_out.index) == ["u1", "u2"]
    assert [len(c) for c in s_out] == [8000, 4000]
    assert np.array_equal(series["u1"], tone(300.0, 0.5))


def test_missing_librosa_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "librosa", None)
    with pytest.raises(MissingDependencyError, match=r"dmt-sdk\[audio\]"):
        PitchShift(2, sample_rate=SR).transform(tone())
    # Noise needs no librosa.
    AudioNoise(10.0, random_state=0).transform(tone())


@pytest.mark.parametrize(("modifier", "words"), [
    (PitchShift(30, sample_rate=SR), ["semitones", "30"]),
    (PitchShift(2, sample_rate=0), ["sample_rate", "0"]),
    (TempoChange(0.0, sample_rate=SR), ["rate", "0.0"]),
    (AudioNoise(snr_db=None), ["snr_db", "None"]),
])
def test_bad_parameters_name_parameter_and_value(modifier, words):
    with pytest.raises(ValidationError) as info:
        modifier.fit()
    for word in words:
        assert word in str(info.value)


def test_non_finite_samples_are_refused():
    with pytest.raises(ValidationError, match="NaN"):
        AudioNoise(10.0).transform(np.array([0.1, np.nan]))


@pytest.mark.parametrize("modifier", [PitchShift(4, sample_rate=16_000),
                                      TempoChange(1.5, sample_rate=16_000)])
def test_a_samples_by_channels_clip_is_refused_not_taken_as_16000_channels(modifier):
    """soundfile reads (frames, channels): that layout was taken as 16,000 channels of 2
    samples, so PitchShift left the clip as it was (correlation 1.0) and TempoChange sent the
    first channel out bit for bit, the receipt claiming both (helper-71)."""
    t = np.arange(16_000) / 16_000
    clip = np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t)], axis=1)
    with pytest.raises(ValidationError, match=r"\(channels, samples\).*\.T"):
        modifier.transform([clip.astype(np.float32)])
    assert modifier.transform([clip.T.astype(np.float32)])[0].shape[0] == 2


def test_integer_clips_are_worked_on_in_float32():
    """int16 PCM became float64 before librosa: a 5-minute clip peaked at 55 times its size
    (helper-71). The work copy is float32, as a float32 clip's is."""
    from dmt_privacy.modify.audio import _to_float

    work, restore = _to_float(np.zeros(1000, dtype=np.int16))
    assert work.dtype == np.float32 and restore(work).dtype == np.int16
