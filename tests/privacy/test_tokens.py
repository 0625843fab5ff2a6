"""The device tokenizer: known-answer vectors, the vocabulary rule against a slow reference,
fixed-length output, strict refusal of long texts, and the metadata round trip."""

from __future__ import annotations

import json
import unicodedata
from collections import Counter
from importlib import resources

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dmt_privacy.errors import DMTError, ValidationError
from dmt_privacy.tokens import OOV_ID, PAD_ID, SPEC, Tokenizer, normalize, tokenize

VECTORS = json.loads(
    resources.files("dmt_privacy").joinpath("data/tokenizer_vectors.json").read_text("ascii"))
TOKENIZER = Tokenizer.from_dict(VECTORS["tokenizer"])


def test_vectors_cover_the_tricky_inputs():
    assert len(VECTORS["vectors"]) >= 30
    names = " ".join(v["name"] for v in VECTORS["vectors"]).lower()
    for topic in ("ligature", "accent", "full-width", "emoji", "apostrophe", "hyphen", "cjk",
                  "empty", "whitespace only", "max_tokens"):
        assert topic in names
    assert any(v["too_long"] for v in VECTORS["vectors"])


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["name"])
def test_known_answer(vector):
    assert tokenize(vector["text"]) == vector["tokens"]
    assert TOKENIZER.encode(vector["text"]) == vector["ids"]
    assert TOKENIZER.token_count(vector["text"]) == len(vector["tokens"])
    if vector["too_long"]:
        with pytest.raises(ValidationError):
            TOKENIZER.encode(vector["text"], strict=True)
    else:
        assert TOKENIZER.encode(vector["text"], strict=True) == vector["ids"]


def test_vectors_tokenizer_is_what_to_dict_writes():
    assert TOKENIZER.to_dict() | {"unicode_version": VECTORS["tokenizer"]["unicode_version"]} \
        == VECTORS["tokenizer"]


def test_strict_error_names_field_length_maximum_and_what_to_do():
    tok = Tokenizer(("a",), 3, field="review")
    with pytest.raises(ValidationError) as info:
        tok.encode("a a a a a", strict=True)
    message = str(info.value)
    assert "'review'" in message and "5 tokens" in message and "maximum of 3" in message
    assert "Shorten" in message and "split" in message
    assert tok.encode("a a a a a") == [2, 2, 2]  # not strict: the first three


@pytest.mark.parametrize("value", [None, 3.5, b"bytes", ["a"]])
def test_non_text_is_refused_naming_the_field(value):
    with pytest.raises(ValidationError, match="'text' must hold text"):
        TOKENIZER.encode(value)


def _reference_tokens(text):
    """Steps 1-3 of SPEC written out slowly, one code point at a time."""
    tokens, word = [], ""
    for char in unicodedata.normalize("NFKC", text).casefold() + " ":
        if unicodedata.category(char)[0] in "LMN":
            word += char
        elif word:
            tokens.append(word)
            word = ""
    return tokens


def _reference_vocabulary(texts, max_size, min_count):
    """The rule of SPEC written out slowly: count, filter, sort, cap."""
    counts = Counter(token for text in texts for token in _reference_tokens(text))
    ranked = sorted(counts.items(), key=lambda item: (-item[1], [ord(c) for c in item[0]]))
    return tuple(t for t, n in ranked if n >= min_count)[:max_size]


texts_strategy = st.lists(
    st.text(alphabet=st.sampled_from("ab cAB-'é\u0301ß\ufb01１2\u6771 \U0001f44d"), max_size=30),
    max_size=12)


@pytest.mark.parametrize("text", [
    "ＡＢＣ ｄｅｆ",  # fullwidth letters: ASCII after NFKC
    "ﬁne ﬂow",  # ligatures
    "\u212a elvin",  # the Kelvin sign: K, then k after folding
    "\u017fun",  # long s: folds to s
    "\u2460\u2461 \u00bd",  # circled digits and a fraction: 1, 2 and 1⁄2
    "Stra\u00dfe",  # ß folds to ss
    "caf\u00e9 cafe\u0301",  # composed and decomposed
])
def test_tokenize_is_the_rule_on_text_that_becomes_ascii_or_not(text):
    assert tokenize(text) == _reference_tokens(text)


@settings(max_examples=200, deadline=None)
@given(text=st.one_of(st.text(max_size=80), st.text(st.characters(max_codepoint=127),
                                                    max_size=80)))
def test_tokenize_is_the_rule_on_any_text_ascii_or_not(text):
    # ASCII text takes a regular expression, the rest one code point at a time: both are
    # the rule
    assert tokenize(text) == _reference_tokens(text)


@settings(max_examples=80, deadline=None)
@given(texts=texts_strategy, max_size=st.integers(1, 8), min_count=st.integers(1, 3))
def test_fit_follows_the_vocabulary_rule(texts, max_size, min_count):
    tok = Tokenizer.fit(texts, max_size=max_size, min_count=min_count, max_tokens=5)
    assert tok.vocabulary == _reference_vocabulary(texts, max_size, min_count)


@settings(max_examples=80, deadline=None)
@given(text=st.text(max_size=60), max_tokens=st.integers(1, 12))
def test_encode_always_gives_max_tokens_ids_in_range(text, max_tokens):
    tok = Tokenizer(("a", "b", "the"), max_tokens)
    ids = tok.encode(text)
    tokens = tokenize(text)
    assert len(ids) == max_tokens
    assert all(0 <= i < tok.vocabulary_size for i in ids)
    kept = min(len(tokens), max_tokens)
    assert PAD_ID not in ids[:kept] and ids[kept:] == [PAD_ID] * (max_tokens - kept)
    assert all(tok.vocabulary[i - 2] == t for i, t in zip(ids, tokens, strict=False)
               if i not in (PAD_ID, OOV_ID))
    if len(tokens) > max_tokens:
        with pytest.raises(ValidationError):
            tok.encode(text, strict=True)
    else:
        assert tok.encode(text, strict=True) == ids


@settings(max_examples=50, deadline=None)
@given(texts=texts_strategy)
def test_metadata_round_trip(texts):
    tok = Tokenizer.fit(texts, min_count=1, max_tokens=7, field="note")
    again = Tokenizer.from_json(tok.to_json())
    assert again == tok
    assert all(again.encode(t) == tok.encode(t) for t in texts)


def test_normalize_is_nfkc_then_casefold():
    assert normalize("\ufb01 Stra\u00dfe \uff21") == "fi strasse a"
    assert "NFKC" in SPEC and "[\\p{L}\\p{M}\\p{N}]+" in SPEC


@pytest.mark.parametrize("change, match", [
    ({"format": "other"}, "not a dmt tokenizer"),
    ({"split": r"\w+"}, "'split'"),
    ({"oov_id": 2}, "'oov_id'"),
    ({"version": 2}, "upgrade dmt"),
    ({"extra": 1}, "unknown keys"),
    ({"vocabulary": "abc"}, "list of strings"),
    ({"vocabulary": ["a", "a"]}, "repeats 'a'"),
    ({"vocabulary": ["a b"]}, "can never be a token"),
    ({"vocabulary": [""]}, "can never be a token"),
    ({"max_tokens": 0}, "max_tokens must be a positive integer"),
])
def test_from_dict_refuses_other_rules_and_bad_vocabularies(change, match):
    with pytest.raises(ValidationError, match=match):
        Tokenizer.from_dict(VECTORS["tokenizer"] | change)


def test_fit_refuses_bad_arguments_and_missing_texts():
    with pytest.raises(ValidationError, match="min_count"):
        Tokenizer.fit(["a"], min_count=0)
    with pytest.raises(ValidationError, match="text 1 is NoneType"):
        Tokenizer.fit(["a", None])  # type: ignore[list-item]
    assert issubclass(ValidationError, DMTError)
