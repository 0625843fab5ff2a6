"""SynonymReplacer: measured rate, WordNet synonymy and POS, what is kept, determinism."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.pipeline import Pipeline

from dmt_privacy.errors import MissingDependencyError, ValidationError
from dmt_privacy.modify import SynonymReplacer, word_pos
from dmt_privacy.modify.text import POS_NAMES
from dmt_privacy.modify.wordnet import find_wordnet, load_wordnet

TEXT = """\
Alice Johnson moved to Paris in the spring. She works as a nurse at a small
hospital near the river, and every morning she walks along the quiet bank to
reach the ward. The building is old but bright; large windows face the water.
Her colleague, Doctor Martin, says the patients sleep better in that light.
In the evening Alice reads history books, writes long letters to her brother
in Boston, and cooks simple dinners: soup, fresh bread, a green salad. On
weekends the two friends travel by train to the coast, where they hike across
steep cliffs, watch the waves break on the rocks and talk about their plans.
Last year Alice bought a bicycle, repaired an ancient clock and planted a
garden full of herbs. The neighbours admire the flowers; a child from the
next house often asks for a cutting. Alice answers every question with
patience, because she believes that a kind word can change a difficult day.
The city is loud and expensive, yet she loves its markets, its music and the
strange mixture of old stone and new glass. Someday she hopes to open a clinic
of her own in a quiet village, with a garden, a library and a warm kitchen.
"""
SENTENCES = [s.strip() for s in re.split(r"(?<=[.;:])\s+", TEXT) if s.strip()]
PROTECTED = ["Alice Johnson", "Alice", "Paris", "Doctor Martin", "Boston"]
WORD = re.compile(r"[A-Za-z]+(?:[-'\u2019][A-Za-z]+)*")


@pytest.fixture(scope="module")
def wn():
    return load_wordnet()


def reference_pos(wn, word: str) -> str | None:
    """The POS rule, written out slowly: largest summed tag count, then most senses."""
    scores = []
    for order, pos in enumerate("nvar"):
        lemmas = [lemma for lemma in wn.lemmas(word, pos)
                  if lemma.name().lower() == word
                  and (lemma.synset().pos() == pos or (pos == "a" and lemma.synset().pos() == "s"))]
        if lemmas:
            scores.append(((sum(lemma.count() for lemma in lemmas), len(lemmas), -order), pos))
    return max(scores)[1] if scores else None


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5, 0.9])
def test_rate_in_one_text_is_exact_to_one_word(rate):
    _, report = SynonymReplacer(rate, random_state=1).transform_with_report(TEXT)
    n = report.n_replaceable
    assert n >= 30
    # floor(rate*n) or floor(rate*n)+1 words: within 1/n of rate.
    assert abs(report.replaced_fraction - rate) <= 1.0 / n


@pytest.mark.parametrize("rate", [0.05, 0.2, 0.5])
def test_rate_over_many_short_texts_within_two_points(rate):
    replaced = replaceable = 0
    for seed in range(30):
        _, report = SynonymReplacer(rate, random_state=seed).transform_with_report(SENTENCES)
        replaced += report.n_replaced
        replaceable += report.n_replaceable
    # Stated tolerance: 0.02 absolute on ~1,000 replaceable words (sd is about 0.005).
    assert replaceable > 1000
    assert abs(replaced / replaceable - rate) <= 0.02


def test_every_replacement_is_a_wordnet_synonym_with_the_same_pos(wn):
    out, report = SynonymReplacer(1.0, senses=3, random_state=0).transform_with_report(TEXT)
    assert report.n_replaced == report.n_replaceable > 40
    for rep in report.replacements:
        synset = wn.synset(rep.synset)
        pos = "a" if synset.pos() == "s" else synset.pos()
        assert pos == rep.pos == word_pos(rep.original) == reference_pos(wn, rep.original.lower())
        names = {lemma.name().lower() for lemma in synset.lemmas()}
        assert rep.original.lower() in names, rep
        assert rep.replacement.lower().replace(" ", "_") in names, rep
        assert rep.replacement.lower() != rep.original.lower()
        assert rep.pos in POS_NAMES
    # The report's spans are where the output changed.
    rebuilt, last = [], 0
    for rep in report.replacements:
        assert TEXT[rep.start:rep.end] == rep.original
        rebuilt += [TEXT[last:rep.start], rep.replacement]
        last = rep.end
    assert "".join([*rebuilt, TEXT[last:]]) == out


def test_pos_rule_matches_reference_on_known_words(wn):
    for word in ["dog", "run", "happy", "quickly", "light", "fast", "running", "walk", "bank"]:
        assert word_pos(word) == reference_pos(wn, word), word
    assert word_pos("dog") == "n"
    assert word_pos("quickly") == "r"
    assert word_pos("dogs") is None  # inflected forms are not WordNet lemmas: left alone
    assert word_pos("xyzzyq") is None


def test_case_punctuation_and_layout_are_kept():
    text = 'WATCH OUT! The Doctor said: "Examine the patient, carefully."\n\tThen rest.'
    out, report = SynonymReplacer(1.0, keep_uppercase=False, random_state=3) \
        .transform_with_report(text)
    assert report.n_replaced > 0
    assert WORD.sub("", out) == WORD.sub("", text)  # every non-word character, in order
    for rep in report.replacements:
        if rep.original.isupper():
            assert rep.replacement == rep.replacement.upper()
        elif rep.original[0].isupper():
            assert rep.replacement[0].isupper()
        else:
            assert rep.replacement == rep.replacement.lower()


def test_stop_words_protected_phrases_and_acronyms_are_left_alone():
    text = TEXT + " NASA and the GNU project sent a PC."
    replacer = SynonymReplacer(1.0, protected=PROTECTED, senses=5, random_state=0)
    out, report = replacer.transform_with_report(text)
    stop = replacer._stop_words()
    for rep in report.replacements:
        assert rep.original.lower() not in stop
        assert rep.original.lower() not in {"alice", "johnson", "paris", "doctor", "martin",
                                            "boston", "nasa", "gnu", "pc"}
    for phrase in PROTECTED:
        assert out.count(phrase) == text.count(phrase)
    assert report.n_protected >= 8
    # Custom stop words take the place of the default list.
    _, own = SynonymReplacer(1.0, stop_words=["garden", "the"], random_state=0) \
        .transform_with_report(TEXT)
    assert all(r.original.lower() not in {"garden", "the"} for r in own.replacements)
    assert any(r.original.lower() == "and" for r in own.replacements) or own.n_stop_words < \
        report.n_stop_words


def test_deterministic_under_a_seed_and_varied_across_seeds():
    a = SynonymReplacer(0.5, random_state=7).fit_transform(SENTENCES)
    b = SynonymReplacer(0.5, random_state=7).fit_transform(SENTENCES)
    c = SynonymReplacer(0.5, random_state=8).fit_transform(SENTENCES)
    assert a == b
    assert a != c


def test_rate_zero_is_identity_and_report_counts():
    replacer = SynonymReplacer(0.0, random_state=0)
    assert replacer.fit_transform(TEXT) == TEXT
    assert replacer.report_.n_replaced == 0
    assert replacer.report_.n_words == len(WORD.findall(TEXT))
    assert replacer.wordnet_version_ == "3.0"


def test_containers_are_new_and_inputs_unchanged():
    texts = list(SENTENCES[:5])
    before = list(texts)
    out = SynonymReplacer(0.8, random_state=0).transform(texts)
    assert texts == before and out is not texts and out != texts
    series = pd.Series(texts, index=list("abcde"), name="note")
    s_out = SynonymReplacer(0.8, random_state=0).transform(series)
    assert list(series) == before
    assert list(s_out.index) == list("abcde") and s_out.name == "note"
    assert list(s_out) == out
    frame = pd.DataFrame({"note": texts, "age": range(5)})
    f_out = SynonymReplacer(0.8, columns=["note"], random_state=0).transform(frame)
    assert list(frame["note"]) == before
    assert list(f_out["age"]) == list(range(5)) and list(f_out["note"]) == out
    arr = np.array(texts, dtype=object)
    assert list(SynonymReplacer(0.8, random_state=0).transform(arr)) == out


def test_scikit_learn_pipeline_and_clone():
    replacer = SynonymReplacer(0.5, protected=["Alice"], random_state=0)
    pipe = Pipeline([("synonyms", replacer)])
    assert pipe.fit_transform(SENTENCES) == clone(pipe).fit(SENTENCES).transform(SENTENCES)
    assert clone(replacer).get_params()["protected"] == ["Alice"]


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"rate": 1.5}, ["rate", "1.5"]),
    ({"rate": 0.1, "senses": 0}, ["senses", "0"]),
    ({"rate": 0.1, "stop_words": "french"}, ["stop_words", "french"]),
    ({"rate": 0.1, "protected": "Alice"}, ["protected", "Alice"]),
])
def test_bad_parameters_name_parameter_and_value(kwargs, words):
    with pytest.raises(ValidationError) as info:
        SynonymReplacer(**kwargs).fit()
    for word in words:
        assert word in str(info.value)


def test_non_text_items_are_refused():
    with pytest.raises(ValidationError, match=r"X\[1\] must be a string"):
        SynonymReplacer(0.5).transform(["fine", 3])


def test_missing_wordnet_says_how_to_install(tmp_path):
    with pytest.raises(MissingDependencyError) as info:
        SynonymReplacer(0.5, wordnet_dir=tmp_path).fit()
    message = str(info.value)
    assert str(tmp_path) in message
    assert "make wordnet" in message and "nltk.download" in message
    assert isinstance(info.value, ImportError)


def test_found_wordnet_is_a_data_root():
    root = find_wordnet()
    assert (root / "corpora" / "wordnet" / "lexnames").is_file() or \
        (root / "corpora" / "wordnet.zip").is_file()


def test_ascii_runs_inside_non_ascii_words_are_not_words(wn):
    """'résumé' became 'réamounté' and 'Martínez' 'Marketplaceínez': the word pattern took
    the ASCII run inside a word with other letters for a word (helper-71). A word now
    ends where letters end, and one with a letter outside ASCII is left alone."""
    text = "Mr Martínez sent his résumé with an mp3player to Ramírez"
    out = SynonymReplacer(rate=1.0).transform([text])[0]
    for word in ("Martínez", "résumé", "Ramírez", "mp3player"):
        assert word in out


def test_decomposed_accents_keep_words_whole(wn):
    """Text in NFD (macOS, some keyboards) puts combining marks after ASCII letters, and \\w
    does not match them: 'café' became 'coffeehousé' (helper-72)."""
    import unicodedata

    text = unicodedata.normalize("NFD", "a café au lait and a résumé for Señora")
    out = SynonymReplacer(rate=1.0, min_length=1).transform([text])[0]
    for word in ("café", "résumé", "Señora"):
        assert unicodedata.normalize("NFD", word) in out
