"""Modification of text, images and audio before they are shared.

Each modifier is a scikit-learn transformer (``fit`` validates and returns
``self``; ``transform`` returns new data and never changes its input) that
works on one item, a list, a 1-D object array, a ``pandas.Series`` or the
named ``columns`` of a ``pandas.DataFrame``, so it can stand alone, sit in a
``sklearn.pipeline.Pipeline`` or be named as a field's transform in a sharing
policy. Randomness comes from ``random_state``: the same seed and input give
the same output.

- text: :class:`SynonymReplacer` (WordNet synonyms through nltk; see
  :mod:`dmt_privacy.modify.wordnet` for the offline data);
- images: :class:`GaussianBlur`, :class:`ColorCorrection`, :class:`ImageNoise`;
- audio: :class:`PitchShift`, :class:`TempoChange`, :class:`AudioNoise`.

Heavy libraries (nltk's WordNet reader, scipy.ndimage, Pillow, librosa) are
imported by the transform that needs them, not by this package.
"""

from typing import Any

from dmt_privacy.modify.audio import AudioNoise, PitchShift, TempoChange
from dmt_privacy.modify.image import ColorCorrection, GaussianBlur, ImageNoise
from dmt_privacy.modify.text import Replacement, SynonymReplacer, SynonymReport, word_pos

__all__ = [
    "AudioNoise",
    "ColorCorrection",
    "GaussianBlur",
    "ImageNoise",
    "PitchShift",
    "Replacement",
    "SynonymReplacer",
    "SynonymReport",
    "TempoChange",
    "find_wordnet",
    "install_wordnet",
    "load_wordnet",
    "word_pos",
]


def __getattr__(name: str) -> Any:
    # WordNet helpers load lazily, so `python -m dmt_privacy.modify.wordnet` runs cleanly.
    if name in ("find_wordnet", "install_wordnet", "load_wordnet"):
        from dmt_privacy.modify import wordnet

        return getattr(wordnet, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
