"""Classification data sets: a table, images and text, each with its schema and a held-out split.

==================  =====  ============================================  ==================
name                rows   input                                         target (classes)
==================  =====  ============================================  ==================
``adult``           30162  8 census fields (age numeric, 7 categorical)  ``salary-class`` (2)
``digits``           1797  one 8×8 grey image, uint8 0..255              ``digit`` (10)
``wordnet-topics``   6000  one English text: a WordNet gloss and its     ``topic`` (10)
                           example sentences
==================  =====  ============================================  ==================

Bounds and categories are stated from what a field means, never read off the
data. ``adult`` needs the shared Adult folder (:mod:`dmt_model.datasets.adult`),
``wordnet-topics`` WordNet for nltk (``make wordnet``); ``digits`` ships in
scikit-learn's wheel. :func:`holdout_split` is the seeded, stratified split the
foundation and the baselines (``benchmarks/task_baselines.py``) share.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd

from dmt_model.datasets.adult import (
    ADULT_QUASI_IDENTIFIERS,
    ADULT_SCHEMA,
    adult_available,
    load_adult,
)
from dmt_model.foundation import CLASSIFIER_TRAINING, TrainingConfig
from dmt_privacy.errors import MissingDependencyError, ValidationError
from dmt_privacy.schema import Category, Field, Kind, Role, Schema

__all__ = [
    "CLASSIFICATION_DATASETS",
    "DIGITS_SCHEMA",
    "WORDNET_TOPICS",
    "WORDNET_TOPICS_SCHEMA",
    "ClassificationDataset",
    "holdout_split",
    "load_digits",
    "load_wordnet_topics",
]

# --- digits ---------------------------------------------------------------------------------

DIGITS_SCHEMA = Schema(
    name="digits",
    fields=(
        Field("image", Kind.IMAGE, shape=(8, 8), bounds=(0, 255),
              description="8×8 grey handwritten digit, uint8 ink intensity (0 = background, "
                          "255 = full ink)"),
        Field("digit", Kind.CATEGORICAL, role=Role.TARGET, categories=tuple(range(10)),
              description="the digit written"),
    ),
)


def load_digits() -> pd.DataFrame:
    """scikit-learn's 1,797 digits: ``image`` (uint8 8×8 arrays) and ``digit`` (0–9).

    scikit-learn's values count ink in 4×4 blocks, 0..16; they are scaled to
    the 0..255 a camera gives as ``round(v · 255 / 16)``, rounding halves up
    (exactly ``(255·v + 8) // 16`` in integers).
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    counts = bunch.images.astype(np.int64)  # exact: the values are whole numbers 0..16
    pixels = ((255 * counts + 8) // 16).astype(np.uint8)
    frame = pd.DataFrame({"image": list(pixels), "digit": bunch.target.astype(int)})
    DIGITS_SCHEMA.validate(frame)
    return frame


# --- WordNet topics -------------------------------------------------------------------------

#: The lexicographer files used as topics: concrete, mutually distinct ones with at least
#: 1,400 synsets each in WordNet 3.0, nouns and verbs (adjective files are not topical).
WORDNET_TOPICS: tuple[str, ...] = (
    "noun.animal", "noun.artifact", "noun.body", "noun.food", "noun.location", "noun.person",
    "noun.plant", "noun.substance", "verb.communication", "verb.motion")
#: Synsets per topic: balanced classes, and quick to train on.
WORDNET_PER_TOPIC = 600
#: Tokens of the longest text (:mod:`dmt_privacy.tokens`); example sentences that would go
#: beyond are left out, so every text fits.
WORDNET_MAX_TOKENS = 64

WORDNET_TOPICS_SCHEMA = Schema(
    name="wordnet-topics",
    fields=(
        Field("text", Kind.TEXT, max_tokens=WORDNET_MAX_TOKENS,
              description="a WordNet 3.0 gloss followed by its example sentences, '; '-joined"),
        Field("topic", Kind.CATEGORICAL, role=Role.TARGET, categories=WORDNET_TOPICS,
              description="the synset's lexicographer file (synset.lexname())"),
    ),
)


def _lexicographer_numbers() -> dict[str, int]:
    """``{lexname: number}`` from the lexnames(5WN) table shipped in dmt_privacy."""
    table = resources.files("dmt_privacy").joinpath("data/wordnet_lexnames").read_text("ascii")
    return {name: int(number)
            for number, name, _pos in (line.split("\t") for line in table.splitlines())}


def _sample_key(topic: str, offset: int) -> bytes:
    return hashlib.sha256(f"{topic}:{offset:08d}".encode()).digest()


@lru_cache(maxsize=4)
def _wordnet_rows(data_dir: str | None, per_topic: int) -> tuple[tuple[str, str], ...]:
    from dmt_privacy.modify.wordnet import load_wordnet
    from dmt_privacy.tokens import tokenize

    wordnet = load_wordnet(data_dir)
    numbers = _lexicographer_numbers()
    wanted = {f"{numbers[t]:02d}": t for t in WORDNET_TOPICS}
    offsets: dict[str, list[tuple[str, int]]] = {t: [] for t in WORDNET_TOPICS}
    # Each data line starts "offset lex_filenum ...": pick candidates without building
    # 120,000 synsets; nltk reads only the ones kept.
    for pos, filename in (("n", "data.noun"), ("v", "data.verb")):
        with wordnet.open(filename) as handle:
            for line in handle:
                if line.startswith(" "):  # the licence header
                    continue
                topic = wanted.get(line[9:11])
                if topic is not None:
                    offsets[topic].append((pos, int(line[:8])))
    rows: list[tuple[str, str]] = []
    seen: set[str] = set()
    for topic in WORDNET_TOPICS:
        # A portable, seed-free sample: the synsets whose SHA-256 of "topic:offset" is
        # smallest, skipping a text already taken (a few synsets share a gloss).
        candidates = sorted(offsets[topic], key=lambda po: _sample_key(topic, po[1]))
        chosen: list[tuple[str, int, str]] = []
        for pos, offset in candidates:
            if len(chosen) == per_topic:
                break
            synset = wordnet.synset_from_pos_and_offset(pos, offset)
            if synset.lexname() != topic:  # pragma: no cover - a database other than 3.0
                raise MissingDependencyError(
                    f"WordNet under {data_dir or 'the search path'} files synset {offset} as "
                    f"{synset.lexname()!r}, not {topic!r}: it is not WordNet 3.0.")
            text = synset.definition()
            for example in synset.examples():
                longer = f"{text}; {example}"
                if len(tokenize(longer)) > WORDNET_MAX_TOKENS:
                    break
                text = longer
            if text not in seen:
                seen.add(text)
                chosen.append((pos, offset, text))
        rows.extend((text, topic) for _pos, _offset, text in sorted(chosen))
    return tuple(rows)


def load_wordnet_topics(*, per_topic: int = WORDNET_PER_TOPIC,
                        wordnet_dir: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """WordNet glosses (with their example sentences) labelled by lexicographer file.

    ``per_topic`` synsets of each of :data:`WORDNET_TOPICS`, chosen without a
    seed (smallest SHA-256 of ``"topic:offset"``), so every machine gets the
    same rows, ordered by topic then synset offset. One record per synset: its
    definition, then its example sentences joined by ``"; "`` while the text
    stays within :data:`WORDNET_MAX_TOKENS` tokens. Needs WordNet for nltk
    (``make wordnet``; see :mod:`dmt_privacy.modify.wordnet`).
    """
    if isinstance(per_topic, bool) or not isinstance(per_topic, int) or per_topic < 1:
        raise ValidationError(f"per_topic must be a positive integer, got {per_topic!r}.")
    rows = _wordnet_rows(None if wordnet_dir is None else str(wordnet_dir), per_topic)
    frame = pd.DataFrame(list(rows), columns=["text", "topic"])
    WORDNET_TOPICS_SCHEMA.validate(frame)
    return frame


def _wordnet_available() -> bool:
    from dmt_privacy.modify.wordnet import find_wordnet

    try:
        find_wordnet()
    except MissingDependencyError:
        return False
    return True


# --- the registry and the split -------------------------------------------------------------



@dataclass(frozen=True)
class ClassificationDataset:
    """A classification data set for the loop and the benchmarks."""

    name: str
    load: Callable[[], pd.DataFrame]
    schema: Schema
    quasi_identifiers: tuple[str, ...]  # what the sharing loop k-anonymizes (none for media)
    available: Callable[[], bool]  # whether its data is on this machine
    style_field: str | None = None  # the image field simulated users restyle
    #: How its foundation is trained: early stopping on 10 % of the proxy data (up to 300
    #: epochs, patience 20); the text model is linear on its token embeddings (fastText's
    #: architecture), which beat the reference MLP on held-out proxy data (README).
    config: TrainingConfig = field(default_factory=lambda: CLASSIFIER_TRAINING)
    #: The modification a device applies to what it shares (field → a dmt_privacy.modify
    #: transformer), made fresh for each run.
    modifiers: Callable[[], Mapping[str, Any]] = dict
    #: How many records simulated users hold in all (None: every record left after the
    #: proxy), so that a user holds tens to hundreds, as on a phone.
    user_records: int | None = None

    @property
    def target(self) -> str:
        target = self.schema.target
        assert target is not None
        return target.name

    @property
    def classes(self) -> tuple[Category, ...]:
        classes = self.schema[self.target].categories
        assert classes is not None
        return classes


def _blur() -> dict[str, Any]:
    from dmt_privacy.modify import GaussianBlur

    return {"image": GaussianBlur(sigma=0.5)}


def _synonyms() -> dict[str, Any]:
    from dmt_privacy.modify import SynonymReplacer

    return {"text": SynonymReplacer(rate=0.2)}


CLASSIFICATION_DATASETS: dict[str, ClassificationDataset] = {
    "adult": ClassificationDataset("adult", load_adult, ADULT_SCHEMA, ADULT_QUASI_IDENTIFIERS,
                                   adult_available, user_records=3000),
    "digits": ClassificationDataset("digits", load_digits, DIGITS_SCHEMA, (), lambda: True,
                                    style_field="image", modifiers=_blur),
    "wordnet-topics": ClassificationDataset(
        "wordnet-topics", load_wordnet_topics, WORDNET_TOPICS_SCHEMA, (), _wordnet_available,
        config=replace(CLASSIFIER_TRAINING, hidden_units=()),
        modifiers=_synonyms, user_records=2000),
}


def holdout_split(data: pd.DataFrame, *, target: str, test_fraction: float = 0.25,
                  seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test): a seeded split stratified by ``target``; rows keep their index."""
    if not 0.0 < test_fraction < 1.0:
        raise ValidationError(f"test_fraction must be in (0, 1), got {test_fraction!r}.")
    if target not in data.columns:
        raise ValidationError(f"Column {target!r} is missing; the split stratifies by it.")
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(data, test_size=test_fraction, random_state=seed,
                                   stratify=data[target])
    return train, test
