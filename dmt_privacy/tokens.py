"""The device tokenizer: text to a fixed number of token ids, the same on every platform.

A text model's Core ML graph takes token ids, not text: tokenization cannot run
inside a NeuralNetwork graph. So a device tokenizes before calling the model,
and must do it exactly as the server did when it trained. :data:`SPEC` is the
complete rule set (version 1); :class:`Tokenizer` is its reference
implementation in plain Python; ``dmt_privacy/data/tokenizer_vectors.json``
holds known answers (text → tokens → ids) a Swift or Kotlin implementation
must reproduce. :meth:`Tokenizer.to_dict` is what a model's metadata carries.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dmt_privacy.errors import ValidationError

__all__ = [
    "OOV_ID",
    "PAD_ID",
    "SPEC",
    "SPLIT_PATTERN",
    "TOKENIZER_FORMAT",
    "Tokenizer",
    "normalize",
    "tokenize",
]

TOKENIZER_FORMAT = "dmt-tokenizer"
TOKENIZER_VERSION = 1
PAD_ID = 0
OOV_ID = 1
FIRST_TOKEN_ID = 2
#: The splitting rule as a regular expression over Unicode scalars (Java, Kotlin, Swift, ICU).
SPLIT_PATTERN = r"[\p{L}\p{M}\p{N}]+"
_TOKEN_CATEGORIES = frozenset("LMN")  # first letter of a general category

SPEC = r"""
Tokenizer rules, version 1 (``"format": "dmt-tokenizer", "version": 1``)
=======================================================================

Input: a string, taken as a sequence of Unicode scalar values (code points),
never as grapheme clusters or UTF-16 code units.

1. Normalize: Unicode Normalization Form KC (NFKC).
   Java/Kotlin ``Normalizer.normalize(s, Normalizer.Form.NFKC)``; Swift
   ``s.precomposedStringWithCompatibilityMapping``.
2. Case-fold: full Unicode case folding, the mappings of status C and F of
   ``CaseFolding.txt`` (not T, not S; no locale), as Python's ``str.casefold``:
   ``"ß"`` → ``"ss"``, ``"ς"`` → ``"σ"``, ``"İ"`` → ``"i"`` + U+0307,
   ``"ı"`` stays ``"ı"``. Lower-casing is NOT the same (it keeps ``"ß"``).
   ICU ``UCharacter.foldCase(s, UCharacter.FOLD_CASE_DEFAULT)`` (Android:
   ``android.icu.lang.UCharacter``). The result is not normalized again.
3. Split: the tokens are the maximal runs of code points whose Unicode
   general category is a letter (L*: Lu Ll Lt Lm Lo), a mark (M*: Mn Mc Me)
   or a number (N*: Nd Nl No), in order of appearance; every other code point
   (spaces, punctuation incl. apostrophes and hyphens, symbols incl. emoji,
   format characters such as U+200B, U+200D and the soft hyphen U+00AD,
   controls, unassigned) separates tokens and is dropped. As a regular
   expression over scalars: ``[\p{L}\p{M}\p{N}]+`` (Swift:
   ``.matchingSemantics(.unicodeScalar)``, or test
   ``scalar.properties.generalCategory``; Java/Kotlin ``Character.getType``
   on code points). There is no word segmentation: a run of CJK or Thai
   letters is one token. Categories are those of the Unicode version in
   ``"unicode_version"``; code points assigned later are rare in practice.
4. Look up: a token found in ``"vocabulary"`` (exact code-point equality)
   at 0-based position ``i`` gets id ``i + 2``; any other token gets the
   out-of-vocabulary id ``1``. Id ``0`` is padding and is never a token.
5. Fix the length to ``"max_tokens"`` = N: keep the first N ids and drop the
   rest (truncation; a strict encoder refuses such a text instead), then
   append id ``0`` until there are N ids. The output always has N ids.

Building the vocabulary (server side only; a device reads it from the model):
count every token of every training text after steps 1–3 (occurrences, not
documents; before truncation), keep those counted at least ``min_count``
times, order them by descending count then by ascending code-point sequence
(plain string order of code points), and keep the first ``max_size``.
"""


def normalize(text: str) -> str:
    """Steps 1–2 of :data:`SPEC`: NFKC, then full case folding."""
    return unicodedata.normalize("NFKC", text).casefold()


def _split(text: str) -> list[str]:
    """Step 3 of :data:`SPEC`: maximal runs of letters, marks and numbers (the reference,
    one code point at a time)."""
    tokens: list[str] = []
    start = -1
    for i, char in enumerate(text):
        if _in_token(char):
            if start < 0:
                start = i
        elif start >= 0:
            tokens.append(text[start:i])
            start = -1
    if start >= 0:
        tokens.append(text[start:])
    return tokens


@functools.lru_cache(maxsize=4096)
def _in_token(char: str) -> bool:
    """Whether a code point's general category is a letter, a mark or a number (a cache of
    code points, never of texts)."""
    return unicodedata.category(char)[0] in _TOKEN_CATEGORIES


#: Step 3 on ASCII: its letters (Lu, Ll) and digits (Nd) are its only code points in L, M or N.
_ASCII_TOKEN = re.compile(r"[0-9A-Za-z]+")


def tokenize(text: str) -> list[str]:
    """The tokens of ``text`` (steps 1–3 of :data:`SPEC`), before look-up and truncation."""
    normal = normalize(text)
    return _ASCII_TOKEN.findall(normal) if normal.isascii() else _split(normal)


def _is_token(value: object) -> bool:
    return isinstance(value, str) and bool(value) and all(
        unicodedata.category(c)[0] in _TOKEN_CATEGORIES for c in value)


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationError(f"{name} must be a positive integer, got {value!r}.")


@dataclass(frozen=True)
class Tokenizer:
    """Text → ``max_tokens`` ids under :data:`SPEC`; the vocabulary excludes ids 0 and 1.

    ``vocabulary[i]`` has id ``i + 2``. ``field`` is the text field the
    tokenizer serves, named in errors. Build one from proxy texts with
    :meth:`fit`; ship it with :meth:`to_dict`.
    """

    vocabulary: tuple[str, ...]
    max_tokens: int
    field: str = "text"
    _ids: Mapping[str, int] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        vocabulary = tuple(self.vocabulary)
        bad = [v for v in vocabulary if not _is_token(v)]
        if bad:
            raise ValidationError(
                f"Tokenizer vocabulary entry {bad[0]!r} can never be a token (a token is a "
                "non-empty run of letters, marks and numbers); build the vocabulary with "
                "Tokenizer.fit.")
        repeated = [t for t, n in Counter(vocabulary).items() if n > 1]
        if repeated:
            raise ValidationError(f"Tokenizer vocabulary repeats {repeated[0]!r}.")
        _check_positive("max_tokens", self.max_tokens)
        if not isinstance(self.field, str) or not self.field:
            raise ValidationError(f"field must be a non-empty string, got {self.field!r}.")
        object.__setattr__(self, "vocabulary", vocabulary)
        object.__setattr__(self, "_ids", {t: i + FIRST_TOKEN_ID for i, t in enumerate(vocabulary)})

    @classmethod
    def fit(cls, texts: Iterable[str], *, max_size: int = 20_000, min_count: int = 2,
            max_tokens: int = 64, field: str = "text") -> Tokenizer:
        """The vocabulary of ``texts`` as :data:`SPEC` builds it (count ≥ ``min_count``,
        descending count then code-point order, at most ``max_size`` entries)."""
        _check_positive("max_size", max_size)
        _check_positive("min_count", min_count)
        counts: Counter[str] = Counter()
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValidationError(
                    f"Field {field!r}: text {row} is {type(text).__name__}, not a string; "
                    "drop or fill missing texts before fitting.")
            counts.update(tokenize(text))
        kept = sorted((t for t, n in counts.items() if n >= min_count),
                      key=lambda t: (-counts[t], t))
        return cls(tuple(kept[:max_size]), max_tokens, field)

    @property
    def vocabulary_size(self) -> int:
        """Number of distinct ids, padding and out-of-vocabulary included."""
        return len(self.vocabulary) + FIRST_TOKEN_ID

    def _tokens(self, text: object) -> list[str]:
        if not isinstance(text, str):
            raise ValidationError(
                f"Field {self.field!r} must hold text, got {type(text).__name__} "
                f"({text!r:.60}); pass a string.")
        return tokenize(text)

    def token_count(self, text: str) -> int:
        """How many tokens ``text`` has before truncation (compare with :attr:`max_tokens`)."""
        return len(self._tokens(text))

    def encode(self, text: str, *, strict: bool = False) -> list[int]:
        """Exactly :attr:`max_tokens` ids (steps 1–5 of :data:`SPEC`).

        A text with more tokens than :attr:`max_tokens` is truncated to its
        first tokens; with ``strict=True`` it is refused with a
        :class:`~dmt_privacy.errors.ValidationError` instead (the check a
        device runs on input before a model sees it).
        """
        tokens = self._tokens(text)
        if strict and len(tokens) > self.max_tokens:
            preview = text if len(text) <= 40 else text[:40] + "…"
            raise ValidationError(
                f"Field {self.field!r}: the text {preview!r} has {len(tokens)} tokens, more "
                f"than the maximum of {self.max_tokens} the model takes. Shorten it to at most "
                f"{self.max_tokens} tokens (runs of letters and digits) or split it into "
                "several records.")
        ids = [self._ids.get(t, OOV_ID) for t in tokens[: self.max_tokens]]
        return ids + [PAD_ID] * (self.max_tokens - len(ids))

    def encode_many(self, texts: Iterable[str], *, strict: bool = False) -> list[list[int]]:
        """:meth:`encode` of each text; with ``strict`` nothing is returned if one is too long."""
        return [self.encode(t, strict=strict) for t in texts]

    # --- metadata ---------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The rules and vocabulary as a JSON-ready dict (what a model's metadata carries)."""
        return {
            "format": TOKENIZER_FORMAT, "version": TOKENIZER_VERSION,
            "normalization": "NFKC", "case_folding": "full", "split": SPLIT_PATTERN,
            "unicode_version": unicodedata.unidata_version,
            "pad_id": PAD_ID, "oov_id": OOV_ID, "first_token_id": FIRST_TOKEN_ID,
            "max_tokens": self.max_tokens, "field": self.field,
            "vocabulary": list(self.vocabulary),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Tokenizer:
        """Reverse :meth:`to_dict`; refuses rules other than :data:`SPEC` version 1."""
        if not isinstance(data, Mapping) or data.get("format") != TOKENIZER_FORMAT:
            raise ValidationError(
                f"This is not a dmt tokenizer description (\"format\" must be "
                f"{TOKENIZER_FORMAT!r}); write one with Tokenizer.to_dict().")
        expected = {"version": TOKENIZER_VERSION, "normalization": "NFKC",
                    "case_folding": "full", "split": SPLIT_PATTERN, "pad_id": PAD_ID,
                    "oov_id": OOV_ID, "first_token_id": FIRST_TOKEN_ID}
        for key, value in expected.items():
            if data.get(key) != value:
                raise ValidationError(
                    f"Tokenizer {key!r} is {data.get(key)!r}; this SDK implements only "
                    f"{key}={value!r} (rules version {TOKENIZER_VERSION}); upgrade dmt.")
        unknown = set(data) - {*expected, "format", "unicode_version", "max_tokens", "field",
                               "vocabulary"}
        if unknown:
            raise ValidationError(f"Tokenizer description has unknown keys {sorted(unknown)!r}.")
        vocabulary = data.get("vocabulary")
        if not isinstance(vocabulary, list):
            raise ValidationError("Tokenizer \"vocabulary\" must be a list of strings.")
        return cls(tuple(vocabulary), data.get("max_tokens"),  # type: ignore[arg-type]
                   data.get("field", "text"))

    def to_json(self) -> str:
        """:meth:`to_dict` as canonical JSON (sorted keys, no spaces, \\u escapes)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Tokenizer:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValidationError(f"Tokenizer JSON is malformed: {exc}.") from None
        return cls.from_dict(data)



__doc__ = f"{__doc__}{SPEC}"
