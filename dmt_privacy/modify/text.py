"""Synonym replacement in text with WordNet, through nltk.

How a text is changed, exactly:

- **Words** are runs of ASCII letters, optionally joined by hyphens or
  apostrophes (``well-known``, ``don't``). Everything between words (spaces,
  punctuation, digits, line breaks) is copied unchanged, so punctuation and
  layout are kept.
- A word is **left alone** when it is a stop word (``stop_words``; by default
  scikit-learn's English list), when it falls inside one of the
  ``protected`` phrases (names and other entities the user lists, matched
  case-insensitively on word boundaries), when it is shorter than
  ``min_length`` letters, when it is written in capitals (``keep_uppercase``:
  ``GNU``, ``NASA`` are mostly acronyms and names), when it holds an
  apostrophe, or when it has no candidate below.
- **Part of speech.** nltk's taggers need data that is not shipped, so the
  part of speech (POS) of a word is decided by WordNet alone: among noun,
  verb, adjective (satellites included) and adverb, the POS whose senses of
  the word have the largest summed tag count in WordNet's sense-tagged corpus
  (``cntlist``); if all counts are zero, the POS with the most senses; ties go
  to noun, verb, adjective, adverb in that order. Only senses in which the
  word, lower-cased, is itself a lemma count: the word must be in WordNet in
  that form (``dog`` and ``running`` are; ``dogs`` and ``ran`` are not
  replaced, since nothing would re-inflect the synonym). See :func:`word_pos`.
- **Candidates** are the other lemmas of the word's first ``senses`` synsets
  of that POS (WordNet lists senses most frequent first), lower-cased, in
  WordNet's order without repeats; multi-word lemmas only if ``multiword``.
  Every replacement is therefore a WordNet synonym of the word with the POS
  the word was given.
- **Rate.** In each text, of the ``n`` replaceable words (those with a
  candidate), ``floor(rate*n)`` or ``floor(rate*n)+1`` are replaced (the
  extra one with probability ``rate*n - floor(rate*n)``), chosen uniformly;
  the expected fraction replaced is exactly ``rate``. Each replacement is a
  uniform choice among the candidates.
- **Case** follows the original word: ``UPPER``, ``Title`` or lower.

Given ``random_state``, the output is a deterministic function of the input
(and of the order of texts in it).
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dmt_privacy.dp.random import numpy_generator
from dmt_privacy.errors import ValidationError
from dmt_privacy.modify._base import Modifier, check_number

__all__ = ["POS_NAMES", "Replacement", "SynonymReplacer", "SynonymReport", "word_pos"]

#: WordNet POS letters used here, with their names. Adjective satellites (``s``) count as ``a``.
POS_NAMES: dict[str, str] = {"n": "noun", "v": "verb", "a": "adjective", "r": "adverb"}

# An ASCII word between characters that are no word characters: the ASCII run inside
# 'résumé', 'Martínez' or 'mp3player' is no word ('réamounté', helper-71).
# Combining marks too: text in NFD puts them after ASCII letters ('café' as 'cafe' + U+0301
# became 'coffeehousé': helper-72).
_MARKS = "\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f"
_WORD = re.compile(rf"(?<![\w{_MARKS}])[A-Za-z]+(?:[-'\u2019][A-Za-z]+)*(?![\w{_MARKS}])")
_LEMMA_OK = re.compile(r"[a-z]+(?:-[a-z]+)*(?: [a-z]+(?:-[a-z]+)*)*")


@dataclass(frozen=True)
class Replacement:
    """One replaced word: where it was, what it was, what it became and why."""

    text_index: int
    start: int
    end: int
    original: str
    replacement: str
    pos: str
    synset: str


@dataclass(frozen=True)
class SynonymReport:
    """How much a :class:`SynonymReplacer` call changed.

    ``n_words`` counts every word; ``n_replaceable`` those that could have been
    replaced (not a stop word, not protected, with a candidate synonym);
    ``n_replaced`` those that were.
    """

    n_texts: int
    n_words: int
    n_stop_words: int
    n_protected: int
    n_replaceable: int
    n_replaced: int
    rate: float
    replacements: tuple[Replacement, ...]

    @property
    def replaced_fraction(self) -> float:
        """Replaced / replaceable words (its expectation is ``rate``); 0 when none were."""
        return self.n_replaced / self.n_replaceable if self.n_replaceable else 0.0

    @property
    def changed_word_fraction(self) -> float:
        """Replaced / all words."""
        return self.n_replaced / self.n_words if self.n_words else 0.0


def _same_pos(synset_pos: str, pos: str) -> bool:
    return (synset_pos == "s" and pos == "a") or synset_pos == pos


@functools.lru_cache(maxsize=200_000)
def _analyse(root: str, word: str, senses: int, multiword: bool
             ) -> tuple[str | None, tuple[tuple[str, str], ...]]:
    """(POS, ((candidate, synset name), ...)) of a lower-case word; cached per WordNet root."""
    from dmt_privacy.modify.wordnet import load_wordnet

    wn = load_wordnet(root)
    best: tuple[tuple[int, int, int], str, list[Any]] | None = None
    for order, pos in enumerate("nvar"):
        synsets = [s for s in wn.synsets(word, pos) if _same_pos(s.pos(), pos)
                   and any(lemma.name().lower() == word for lemma in s.lemmas())]
        if not synsets:
            continue
        count = sum(lemma.count() for s in synsets for lemma in s.lemmas()
                    if lemma.name().lower() == word)
        key = (count, len(synsets), -order)
        if best is None or key > best[0]:
            best = (key, pos, synsets)
    if best is None:
        return None, ()
    _, pos, synsets = best
    seen = {word}
    candidates: list[tuple[str, str]] = []
    for synset in synsets[:senses]:
        for lemma in synset.lemmas():
            name = lemma.name().replace("_", " ").lower()
            if name in seen or not _LEMMA_OK.fullmatch(name) or (" " in name and not multiword):
                continue
            seen.add(name)
            candidates.append((name, synset.name()))
    return pos, tuple(candidates)


def word_pos(word: str, *, wordnet_dir: str | os.PathLike[str] | None = None) -> str | None:
    """The POS letter (``n``, ``v``, ``a``, ``r``) :class:`SynonymReplacer` gives ``word``.

    ``None`` when the word, lower-cased, is not a WordNet lemma. The rule is in
    the module docstring: the POS with the largest summed sense-tag count.
    """
    from dmt_privacy.modify.wordnet import find_wordnet

    root = str(find_wordnet(wordnet_dir))
    return _analyse(root, word.lower(), 1, False)[0]


def _match_case(original: str, replacement: str) -> str:
    if len(original) > 1 and original.isupper():
        return replacement.upper()
    if original[:1].isupper():
        return replacement[:1].upper() + replacement[1:]
    return replacement


def _default_stop_words() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


class SynonymReplacer(Modifier):
    """Replace a fraction of the words of texts with WordNet synonyms.

    Parameters
    ----------
    rate:
        Expected fraction, in [0, 1], of the replaceable words of each text that
        are replaced.
    senses:
        How many of a word's most frequent senses (in its POS) supply synonyms;
        1 keeps the most likely meaning, more gives variety at the cost of
        meaning drift.
    stop_words:
        ``"english"`` (scikit-learn's list, the default), ``None`` for none, or
        an iterable of words; matched case-insensitively.
    protected:
        Words or phrases never to change, e.g. names of people or places;
        matched case-insensitively on word boundaries.
    multiword:
        Whether multi-word lemmas (``hot dog``) may replace a word.
    min_length:
        Words with fewer letters are left alone (``C``, ``PC`` expand to odd senses).
    keep_uppercase:
        Leave words of two or more letters written all in capitals alone.
    columns:
        For a DataFrame, the text columns to modify (default: all).
    wordnet_dir:
        An nltk data root holding ``corpora/wordnet``; default: searched as in
        :mod:`dmt_privacy.modify.wordnet`.
    random_state:
        Seed (int) or ``numpy.random.Generator``, reproducible and not secure (tests and
        studies); ``None`` (the default) draws from ChaCha20 keyed by ``os.urandom``
        (:func:`dmt_privacy.dp.random.numpy_generator`).

    After :meth:`transform`, ``report_`` holds the :class:`SynonymReport` of
    that call; :meth:`transform_with_report` returns it instead.
    """

    _item_name = "a string"

    def __init__(self, rate: float = 0.2, *, senses: int = 1,
                 stop_words: str | Iterable[str] | None = "english",
                 protected: Iterable[str] = (), multiword: bool = False,
                 min_length: int = 3, keep_uppercase: bool = True,
                 columns: Sequence[Any] | None = None,
                 wordnet_dir: str | os.PathLike[str] | None = None,
                 random_state: int | np.random.Generator | None = None) -> None:
        self.rate = rate
        self.senses = senses
        self.stop_words = stop_words
        self.protected = protected
        self.multiword = multiword
        self.min_length = min_length
        self.keep_uppercase = keep_uppercase
        self.columns = columns
        self.wordnet_dir = wordnet_dir
        self.random_state = random_state

    # --- parameters --------------------------------------------------------
    def _check_params(self) -> None:
        check_number("rate", self.rate, low=0.0, high=1.0)
        for name in ("senses", "min_length"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValidationError(f"{name} must be an integer >= 1, got {value!r}.")
        self._stop_words()
        self._protected_pattern()

    def _stop_words(self) -> frozenset[str]:
        if self.stop_words is None:
            return frozenset()
        if isinstance(self.stop_words, str):
            if self.stop_words != "english":
                raise ValidationError(
                    f"stop_words must be 'english', None or an iterable of words, got "
                    f"{self.stop_words!r}."
                )
            return _default_stop_words()
        words = list(self.stop_words)
        bad = [w for w in words if not isinstance(w, str)]
        if bad:
            raise ValidationError(f"stop_words must hold strings, got {bad[:3]!r}.")
        return frozenset(w.lower() for w in words)

    def _protected_pattern(self) -> re.Pattern[str] | None:
        if isinstance(self.protected, str):
            raise ValidationError(
                f"protected must be an iterable of words or phrases, got the string "
                f"{self.protected!r}; wrap it in a list: [{self.protected!r}]."
            )
        phrases = list(self.protected)
        bad = [p for p in phrases if not isinstance(p, str) or not p.strip()]
        if bad:
            raise ValidationError(f"protected must hold non-empty strings, got {bad[:3]!r}.")
        if not phrases:
            return None
        parts = sorted((r"\s+".join(map(re.escape, p.split())) for p in phrases),
                       key=len, reverse=True)
        return re.compile(r"(?<![A-Za-z])(?:" + "|".join(parts) + r")(?![A-Za-z])",
                          re.IGNORECASE)

    # --- scikit-learn contract ------------------------------------------------
    def fit(self, X: Any = None, y: Any = None) -> SynonymReplacer:
        """Validate the parameters (and ``X`` when given) and load WordNet.

        Nothing is learned from ``X``; a DataFrame's columns become ``feature_names_in_``.
        """
        from dmt_privacy.modify.wordnet import find_wordnet, load_wordnet

        super().fit(X)
        self.wordnet_root_ = str(find_wordnet(self.wordnet_dir))
        self.wordnet_version_ = load_wordnet(self.wordnet_root_).get_version()
        self.stop_words_ = self._stop_words()
        return self

    def transform(self, X: Any) -> Any:
        """Texts with synonyms in place of some of their words; sets ``report_``."""
        out, report = self.transform_with_report(X)
        self.report_ = report
        return out

    def transform_with_report(self, X: Any) -> tuple[Any, SynonymReport]:
        """Like :meth:`transform`, but returns ``(texts, report)`` and sets nothing."""
        from dmt_privacy.modify.wordnet import find_wordnet, load_wordnet

        self._check_params()
        root = str(find_wordnet(self.wordnet_dir))
        load_wordnet(root)  # a missing or unreadable WordNet fails here, before any text
        stop_words = self._stop_words()
        protected = self._protected_pattern()
        rate = float(self.rate)
        rng = numpy_generator(self.random_state)
        tally = {"texts": 0, "words": 0, "stop": 0, "protected": 0, "replaceable": 0}
        replacements: list[Replacement] = []

        def modify(text: str) -> str:
            index = tally["texts"]
            tally["texts"] += 1
            return self._modify_text(text, index, root, stop_words, protected, rate, rng,
                                     tally, replacements)

        out = self._map(X, modify)
        report = SynonymReport(
            n_texts=tally["texts"], n_words=tally["words"], n_stop_words=tally["stop"],
            n_protected=tally["protected"], n_replaceable=tally["replaceable"],
            n_replaced=len(replacements), rate=rate, replacements=tuple(replacements))
        return out, report

    def _is_item(self, value: Any) -> bool:
        return isinstance(value, str)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True
        return tags

    def _expected_failed_checks(self) -> dict[str, str]:
        texts = "texts only: a numeric array is refused"
        from dmt_privacy.dp.perturber import _ARRAY_CHECKS  # the checks that feed arrays

        checks = (*[c for c in _ARRAY_CHECKS if c != "check_complex_data"],  # refused as such
                  "check_transformers_unfitted_stateless")
        return {**super()._expected_failed_checks(), **dict.fromkeys(checks, texts)}

    def _modify_text(self, text: str, index: int, root: str, stop_words: frozenset[str],
                     protected: re.Pattern[str] | None, rate: float,
                     rng: np.random.Generator, tally: dict[str, int],
                     replacements: list[Replacement]) -> str:
        shielded = [m.span() for m in protected.finditer(text)] if protected else []
        replaceable: list[tuple[re.Match[str], str, tuple[tuple[str, str], ...]]] = []
        for match in _WORD.finditer(text):
            tally["words"] += 1
            word = match.group().lower()
            start, end = match.span()
            if any(s < end and start < e for s, e in shielded):
                tally["protected"] += 1
                continue
            if word in stop_words:
                tally["stop"] += 1
                continue
            if "'" in word or "\u2019" in word or len(word) < self.min_length or (
                    self.keep_uppercase and len(word) > 1 and match.group().isupper()):
                continue
            pos, candidates = _analyse(root, word, int(self.senses), bool(self.multiword))
            if pos is not None and candidates:
                replaceable.append((match, pos, candidates))
        n = len(replaceable)
        tally["replaceable"] += n
        expected = rate * n
        k = math.floor(expected)
        if rng.random() < expected - k:
            k += 1
        if k == 0:
            return text
        chosen = sorted(rng.choice(n, size=k, replace=False).tolist())
        pieces: list[str] = []
        last = 0
        for i in chosen:
            match, pos, candidates = replaceable[i]
            name, synset = candidates[int(rng.integers(len(candidates)))]
            new = _match_case(match.group(), name)
            start, end = match.span()
            pieces.append(text[last:start])
            pieces.append(new)
            last = end
            replacements.append(Replacement(index, start, end, match.group(), new, pos, synset))
        pieces.append(text[last:])
        return "".join(pieces)

    def _modify_item(self, item: Any, rng: np.random.Generator) -> Any:
        """One text on its own. :meth:`transform` does not come here: it needs one
        WordNet load and one report for the whole collection."""
        text, _ = self.transform_with_report(item)
        return text
