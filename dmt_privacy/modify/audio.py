"""Audio modification: pitch shift, tempo change and additive noise at a stated SNR.

A clip is a ``numpy`` array: 1-D ``(n_samples,)`` for mono or 2-D
``(n_channels, n_samples)``; pass several clips as a list (or Series). Float
clips are taken to be in [-1, 1] and come back as the same float dtype,
clipped to [-1, 1] (a schema's audio bounds, which the server checks, are that
range: noise added to a clip at full scale went past it, and ``share()`` left
the clip out); integer PCM (``int16``, ``int32``) is scaled to [-1, 1] and comes
back in its dtype, clipped. The sample rate is a parameter of the transformers
that need one.

Pitch and tempo use librosa (``pip install 'dmt-sdk[audio]'``): a phase vocoder
(``librosa.effects.time_stretch``) and, for pitch, resampling with soxr
(``librosa.effects.pitch_shift``). librosa compiles some code with numba on
first use, which takes a second or two once per process.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dmt_privacy.errors import MissingDependencyError, ValidationError
from dmt_privacy.modify._base import _ROW_CHECKS, Modifier, check_number

__all__ = ["AudioNoise", "PitchShift", "TempoChange", "snr_db"]


def snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    """Signal-to-noise ratio in dB of ``noisy`` against ``clean`` (mean powers)."""
    clean = np.asarray(clean, dtype=np.float64)
    noise = np.asarray(noisy, dtype=np.float64) - clean
    return float(10.0 * np.log10(np.mean(clean**2) / np.mean(noise**2)))


#: More channels than this, and than samples, is a (samples, channels) clip turned round.
_MAX_CHANNELS = 256


def _is_clip(value: Any) -> bool:
    return (isinstance(value, np.ndarray) and value.dtype != object and value.ndim in (1, 2)
            and (np.issubdtype(value.dtype, np.floating)
                 or np.issubdtype(value.dtype, np.signedinteger)))


def _to_float(clip: np.ndarray) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    dtype = clip.dtype
    if np.issubdtype(dtype, np.integer):
        scale = float(np.iinfo(dtype).max) + 1.0
        info = np.iinfo(dtype)

        def restore(out: np.ndarray) -> np.ndarray:
            return np.clip(np.rint(out * scale), info.min, info.max).astype(dtype)

        # int8 and int16 are exact in float32, which librosa is faster with and which is half
        # the memory: a 5-minute int16 clip in float64 peaked at 55 times its size (helper-71)
        work = np.dtype(np.float32 if dtype.itemsize <= 2 else np.float64)
        return np.divide(clip, scale, dtype=work), restore
    work = np.result_type(dtype, np.float32)  # float32 stays float32: librosa is faster
    return clip.astype(work), lambda out: np.clip(out, -1.0, 1.0).astype(dtype)


def _librosa() -> Any:
    try:
        import librosa
    except ImportError as exc:
        raise MissingDependencyError(
            "Pitch shift and tempo change need librosa: `pip install 'dmt-sdk[audio]'` "
            "(or `pip install librosa`)."
        ) from exc
    return librosa


class _AudioModifier(Modifier):
    _item_name = "an audio clip (1-D or (channels, samples) numeric array)"

    def _is_item(self, value: Any) -> bool:
        return _is_clip(value)

    def _check_values(self, item: Any) -> str | None:
        if item.size == 0:
            return f"the audio clip has no samples (shape {item.shape})."
        if np.issubdtype(item.dtype, np.floating) and not np.isfinite(item).all():
            return "the audio clip holds NaN or infinite samples; fix them first."
        if item.ndim == 2 and item.shape[0] > max(item.shape[1], _MAX_CHANNELS):
            # soundfile reads (frames, channels): taken as 16,000 channels of 2 samples, the
            # clip went out unchanged with the modifier claimed (helper-71)
            return (f"the clip's shape is {item.shape}: (channels, samples) is expected, and "
                    f"{item.shape[0]} channels of {item.shape[1]} samples is no clip; for "
                    "(samples, channels) audio, as soundfile reads it, pass clip.T.")
        return None

    def _modify_item(self, item: Any, rng: np.random.Generator) -> Any:
        clip, restore = _to_float(item)
        return restore(self._modify_clip(clip, rng))

    def _expected_failed_checks(self) -> dict[str, str]:
        return {**super()._expected_failed_checks(),
                "check_fit1d": "a 1-D array is a mono clip, not a malformed table"}

    @abstractmethod
    def _modify_clip(self, clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The modified clip, float."""

    def _check_sample_rate(self) -> int:
        rate = self.sample_rate  # type: ignore[attr-defined]
        if not isinstance(rate, (int, np.integer)) or isinstance(rate, bool) or rate <= 0:
            raise ValidationError(
                f"sample_rate must be a positive integer (Hz), got {rate!r}; pass the clips' "
                "sample rate, e.g. sample_rate=16000."
            )
        return int(rate)


class PitchShift(_AudioModifier):
    """Shift pitch by ``semitones`` (the strength; may be negative) keeping duration.

    Every frequency is multiplied by ``2 ** (semitones / 12)``. Implemented by
    ``librosa.effects.pitch_shift`` (phase-vocoder time stretch, then soxr
    resampling back to the original length).
    """

    def __init__(self, semitones: float = 2.0, *, sample_rate: int = 16000,
                 columns: Sequence[Any] | None = None) -> None:
        self.semitones = semitones
        self.sample_rate = sample_rate
        self.columns = columns

    def _check_params(self) -> None:
        check_number("semitones", self.semitones, low=-24.0, high=24.0,
                     hint="It is the shift in semitones (12 is an octave up).")
        self._check_sample_rate()

    def _modify_clip(self, clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if float(self.semitones) == 0.0:
            return clip
        librosa = _librosa()
        return np.asarray(librosa.effects.pitch_shift(
            clip, sr=int(self.sample_rate), n_steps=float(self.semitones), res_type="soxr_hq"))


class TempoChange(_AudioModifier):
    """Play ``rate`` times faster (the strength; < 1 is slower) keeping pitch.

    The output holds about ``n_samples / rate`` samples. Implemented by
    ``librosa.effects.time_stretch`` (phase vocoder).
    """

    def __init__(self, rate: float = 1.1, *, sample_rate: int = 16000,
                 columns: Sequence[Any] | None = None) -> None:
        self.rate = rate
        self.sample_rate = sample_rate
        self.columns = columns

    def _check_params(self) -> None:
        check_number("rate", self.rate, low=0.25, high=4.0,
                     hint="It is the speed factor: 1.1 is 10 % faster, 0.9 slower.")
        self._check_sample_rate()

    def _modify_clip(self, clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if float(self.rate) == 1.0:
            return clip
        librosa = _librosa()
        return np.asarray(librosa.effects.time_stretch(clip, rate=float(self.rate)))


class AudioNoise(_AudioModifier):
    """Add white Gaussian noise at a signal-to-noise ratio of ``snr_db`` decibels.

    The noise is drawn, then scaled so that its mean power is exactly the
    clip's mean power divided by ``10 ** (snr_db / 10)``: the realized SNR is
    the stated one (up to rounding and clipping of integer PCM). A silent clip
    has no power to measure against and is returned unchanged. Lower
    ``snr_db`` is stronger. Deterministic given ``random_state``.
    """

    def __init__(self, snr_db: float = 20.0, *, columns: Sequence[Any] | None = None,
                 random_state: int | np.random.Generator | None = None) -> None:
        self.snr_db = snr_db
        self.columns = columns
        self.random_state = random_state

    def _check_params(self) -> None:
        check_number("snr_db", self.snr_db, low=-20.0, high=120.0,
                     hint="It is the signal-to-noise ratio in dB; lower adds more noise.")

    def _modify_clip(self, clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        power = float(np.mean(clip**2))
        if power == 0.0:
            return clip
        noise = rng.standard_normal(clip.shape)
        noise *= np.sqrt(power / (10.0 ** (float(self.snr_db) / 10.0)) / np.mean(noise**2))
        return clip + noise

    def _expected_failed_checks(self) -> dict[str, str]:
        one = "a 2-D array is one clip: its noise is scaled to the whole clip's power"
        return {**super()._expected_failed_checks(), **dict.fromkeys(_ROW_CHECKS, one)}
