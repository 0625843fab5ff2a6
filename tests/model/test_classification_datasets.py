"""Classification data sets (Adult, digits, WordNet topics), their split and simulated users."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dmt_model.datasets import (
    ADULT_SCHEMA,
    CLASSIFICATION_DATASETS,
    DIGITS_SCHEMA,
    WORDNET_TOPICS_SCHEMA,
    holdout_split,
    load_digits,
    restyle_image,
    simulate_classifier_users,
)
from dmt_model.datasets.adult import adult_available, find_adult, load_adult_hierarchies
from dmt_model.datasets.classification import WORDNET_MAX_TOKENS, WORDNET_TOPICS
from dmt_privacy.errors import MissingDependencyError, ValidationError
from dmt_privacy.schema import Kind, Role
from dmt_privacy.tokens import Tokenizer


@pytest.fixture(scope="module")
def digits() -> pd.DataFrame:
    return load_digits()


@pytest.fixture(scope="module")
def adult() -> pd.DataFrame:
    if not adult_available():
        pytest.skip("Adult data not found (the shared data folder is absent)")
    return CLASSIFICATION_DATASETS["adult"].load()


@pytest.fixture(scope="module")
def topics() -> pd.DataFrame:
    if not CLASSIFICATION_DATASETS["wordnet-topics"].available():
        pytest.skip("WordNet is not provisioned (make wordnet)")
    return CLASSIFICATION_DATASETS["wordnet-topics"].load()


def test_registry_names_a_categorical_target_with_its_classes():
    assert set(CLASSIFICATION_DATASETS) == {"adult", "digits", "wordnet-topics"}
    for dataset in CLASSIFICATION_DATASETS.values():
        field = dataset.schema[dataset.target]
        assert field.kind is Kind.CATEGORICAL and field.role is Role.TARGET
        assert dataset.classes == field.categories and len(dataset.classes) >= 2
        assert all(q in dataset.schema for q in dataset.quasi_identifiers)
    assert CLASSIFICATION_DATASETS["adult"].target == "salary-class"
    assert CLASSIFICATION_DATASETS["digits"].style_field == "image"


def test_digits_are_camera_pixels_in_one_image_field(digits):
    from sklearn.datasets import load_digits as sklearn_digits

    assert DIGITS_SCHEMA["image"].shape == (8, 8) and DIGITS_SCHEMA["image"].kind is Kind.IMAGE
    assert list(digits.columns) == ["image", "digit"] and len(digits) == 1797
    pixels = np.stack(digits["image"].to_numpy())
    assert pixels.dtype == np.uint8 and pixels.shape == (1797, 8, 8)
    raw = sklearn_digits().images
    assert np.array_equal(pixels, np.floor(raw * 255 / 16 + 0.5))  # round half up
    assert pixels.max() == 255 and sorted(digits["digit"].unique()) == list(range(10))


def test_digits_schema_refuses_an_image_of_another_size(digits):
    wrong = digits.head(3).copy()
    wrong["image"] = [np.zeros((9, 8), np.uint8)] * 3
    with pytest.raises(ValidationError, match="image"):
        DIGITS_SCHEMA.validate(wrong)


def test_adult_schema_matches_the_data_and_arx_hierarchies(adult):
    assert len(adult) == 30_162
    assert list(adult.columns) == ADULT_SCHEMA.names
    assert ADULT_SCHEMA["age"].bounds == (17.0, 90.0)
    assert adult["age"].between(17, 90).all()
    assert {f.name for f in ADULT_SCHEMA.by_role(Role.QUASI_IDENTIFIER)} == \
        set(CLASSIFICATION_DATASETS["adult"].quasi_identifiers)
    for name, hierarchy in load_adult_hierarchies().items():
        assert set(hierarchy.leaves) == set(ADULT_SCHEMA[name].categories), name
    share = (adult["salary-class"] == ">50K").mean()
    assert 0.24 < share < 0.25  # the well-known 24.9 %


def test_adult_missing_folder_says_what_to_do(tmp_path):
    with pytest.raises(MissingDependencyError, match="DMT_ADULT_DIR"):
        find_adult(tmp_path)


@pytest.mark.slow  # reading WordNet takes nltk ~5 s (shared with the other WordNet tests)
def test_wordnet_topics_are_balanced_distinct_and_fit_the_tokenizer(topics):
    assert WORDNET_TOPICS_SCHEMA["text"].max_tokens == WORDNET_MAX_TOKENS
    assert topics["topic"].value_counts().to_dict() == dict.fromkeys(WORDNET_TOPICS, 600)
    assert not topics["text"].duplicated().any()
    tokenizer = Tokenizer((), WORDNET_MAX_TOKENS)
    assert max(tokenizer.token_count(t) for t in topics["text"]) <= WORDNET_MAX_TOKENS
    # known answers: the sample is chosen by hashing, the same on every machine
    first = topics.groupby("topic")["text"].first()
    assert first["noun.food"] == ("part of a meal served at one time; she prepared a three "
                                  "course meal")
    assert first["verb.communication"] == "speak in riddles"


def test_holdout_split_is_seeded_stratified_and_disjoint(digits):
    train, test = holdout_split(digits, target="digit", test_fraction=0.25, seed=3)
    again, _ = holdout_split(digits, target="digit", test_fraction=0.25, seed=3)
    other, _ = holdout_split(digits, target="digit", test_fraction=0.25, seed=4)
    assert train.index.equals(again.index) and not train.index.equals(other.index)
    assert set(train.index).isdisjoint(test.index) and len(train) + len(test) == len(digits)
    counts = test["digit"].value_counts() / digits["digit"].value_counts()
    assert counts.between(0.23, 0.27).all()
    with pytest.raises(ValidationError, match="test_fraction"):
        holdout_split(digits, target="digit", test_fraction=1.0)


def test_restyle_image_rotates_and_thickens():
    image = np.zeros((8, 8), np.uint8)
    image[1:7, 4] = 255  # a vertical stroke
    assert np.array_equal(restyle_image(image), image)
    thick = restyle_image(image, stroke=0.5)
    assert (thick >= image).all() and thick[3, 3] == 128 and thick[3, 4] == 255
    turned = restyle_image(image, rotation=90.0)
    assert turned.dtype == np.uint8 and (turned[3, 1:7] == 255).all()  # counter-clockwise
    assert turned.sum() == image.sum()


def _records(simulation):
    return [r for u in simulation.users for r in (u.shareable, u.private, u.test)]


def test_simulation_is_deterministic_and_every_record_is_used_once(digits):
    a = simulate_classifier_users(digits, target="digit", image="image", seed=5)
    b = simulate_classifier_users(digits, target="digit", image="image", seed=5)
    for ra, rb in zip(_records(a), _records(b), strict=True):
        assert ra.index.equals(rb.index)
        assert all(np.array_equal(x, y) for x, y in zip(ra["image"], rb["image"], strict=True))
    indices = np.concatenate([a.proxy.index, *(r.index for r in _records(a))])
    assert len(indices) == len(set(indices)) == len(digits)
    sizes = [len(u.train) + len(u.test) for u in a.users]
    assert min(sizes) >= 12 and max(sizes) > 2 * min(sizes)  # power law, not equal shares
    assert all(len(u.test) == max(1, round(0.25 * s)) for u, s in zip(a.users, sizes,
                                                                        strict=True))
    assert a.classes == tuple(range(10))


def test_each_user_writes_with_their_own_hand(digits):
    sim = simulate_classifier_users(digits, target="digit", image="image", seed=1,
                                    max_rotation=10.0, max_stroke=0.5)
    assert all(np.array_equal(sim.proxy["image"][i], digits["image"][i])
               for i in sim.proxy.index[:50])
    rotations = [u.rotation for u in sim.users]
    assert all(-10 <= r <= 10 for r in rotations) and len(set(rotations)) == len(sim.users)
    user = sim.users[0]
    for index, image in user.test["image"].items():
        expected = restyle_image(digits["image"][index], rotation=user.rotation,
                                 stroke=user.stroke)
        assert np.array_equal(image, expected)


def _label_shift(simulation, target):
    pool = pd.concat([r for r in _records(simulation)])
    overall = pool[target].value_counts(normalize=True)
    shifts = []
    for user in simulation.users:
        mine = pd.concat([user.train, user.test])[target].value_counts(normalize=True)
        shifts.append(0.5 * mine.sub(overall, fill_value=0).abs().sum())
    return float(np.mean(shifts))


def test_alpha_sets_how_far_users_labels_are_from_the_pool(digits):
    shifted = simulate_classifier_users(digits, target="digit", alpha=0.1, seed=0)
    mild = simulate_classifier_users(digits, target="digit", alpha=100.0, seed=0)
    iid = simulate_classifier_users(digits, target="digit", alpha=None, seed=0)
    assert _label_shift(shifted, "digit") > 0.5
    assert _label_shift(mild, "digit") < 0.25 and _label_shift(iid, "digit") < 0.25
    assert len(shifted.users[0].label_distribution) == 10 and iid.users[0].label_distribution \
        == ()


def test_adult_users_get_their_own_label_mix(adult):
    sim = simulate_classifier_users(adult, target="salary-class", n_records=4000, seed=2)
    assert sum(len(u.train) + len(u.test) for u in sim.users) == 4000
    high = [(pd.concat([u.train, u.test])["salary-class"] == ">50K").mean() for u in sim.users]
    assert max(high) - min(high) > 0.5


@pytest.mark.parametrize("kwargs, match", [
    ({"alpha": 0.0}, "alpha"),
    ({"proxy_fraction": 1.0}, "proxy_fraction"),
    ({"max_rotation": -1.0}, "max_rotation"),
    ({"n_users": 200}, "use fewer users"),
    ({"target": "label"}, "'label' is missing"),
])
def test_simulation_refuses_bad_parameters(digits, kwargs, match):
    with pytest.raises(ValidationError, match=match):
        simulate_classifier_users(digits, **{"target": "digit", **kwargs})
