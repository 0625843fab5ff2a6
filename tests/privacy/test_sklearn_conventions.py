"""The privacy transformers as scikit-learn estimators (issue 17, item 7).

``check_estimator`` passes on all nine with the failures each one declares
(``_expected_failed_checks``, a reason per check), and every declared failure
does fail; modifiers refuse empty input and NaN; the transformers compose in
a ``Pipeline`` on a full frame; ``clone`` and ``pickle`` work, and a cloned
perturber charges the SAME privacy ledger.
"""

from __future__ import annotations

import copy
import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import SkipTestWarning
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import GridSearchCV, cross_validate
from sklearn.pipeline import Pipeline
from sklearn.utils.estimator_checks import check_estimator

from dmt_privacy import Field, Schema, ValidationError
from dmt_privacy.anonymity import KAnonymizer
from dmt_privacy.dp import UNACCOUNTED, LocalDPPerturber, PrivacyLedger
from dmt_privacy.modify import (
    AudioNoise,
    ColorCorrection,
    GaussianBlur,
    ImageNoise,
    PitchShift,
    SynonymReplacer,
    TempoChange,
)

SCHEMA = Schema((
    Field("x0", "numeric", bounds=(-10, 10), grid=0.1),
    Field("age", "numeric", bounds=(17, 90), grid=1.0),
    Field("income", "numeric", bounds=(0, 200_000), grid=100.0),
    Field("sex", "categorical", categories=("F", "M")),
))

MODIFIERS = [GaussianBlur(), ColorCorrection(), ImageNoise(), PitchShift(), TempoChange(),
             AudioNoise(), SynonymReplacer()]
NINE = [*MODIFIERS, KAnonymizer(["x0"]),
        LocalDPPerturber(SCHEMA, epsilon={"x0": 1.0}, ledger=UNACCOUNTED)]


def people(n: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "age": rng.integers(17, 90, n).astype(float),
        "zip": rng.choice(["02139", "02142", "10001", "10003"], n),
        "sex": rng.choice(["F", "M"], n),
        "income": rng.gamma(2.0, 20_000, n).round(-2),
    })


# --- check_estimator -------------------------------------------------------------------
@pytest.mark.parametrize("estimator", NINE, ids=lambda e: type(e).__name__)
def test_check_estimator_passes_with_the_declared_failures(estimator):
    declared = estimator._expected_failed_checks()
    assert all(isinstance(r, str) and r and "\n" not in r for r in declared.values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkipTestWarning)
        warnings.simplefilter("ignore", UserWarning)  # librosa on 3-sample "clips"
        results = check_estimator(estimator, expected_failed_checks=declared, on_fail=None)
    failed = [(r["check_name"], r["exception"]) for r in results if r["status"] == "failed"]
    assert failed == []
    # Each declared failure is real: a check that now passes must leave the list.
    passing = {r["check_name"] for r in results if r["status"] == "passed"}
    assert sorted(passing & set(declared)) == []
    assert sum(r["status"] == "passed" for r in results) >= 15  # cloning, params, tags, repr...


def test_the_declared_nature_is_in_the_tags():
    for modifier in MODIFIERS:
        assert modifier.__sklearn_tags__().requires_fit is False
    assert SynonymReplacer().__sklearn_tags__().input_tags.string
    for tabular in NINE[-2:]:
        tags = tabular.__sklearn_tags__()
        assert tags.requires_fit and tags.input_tags.categorical and tags.input_tags.string
        assert tags.transformer_tags.preserves_dtype == []
    assert LocalDPPerturber(SCHEMA, epsilon={"x0": 1.0}).__sklearn_tags__().non_deterministic


# --- modifiers: empty input, NaN, feature names, set_output ----------------------------
@pytest.mark.parametrize("empty", [[], (), np.empty(0, dtype=object), pd.Series([], dtype=object),
                                   pd.DataFrame({"photo": pd.Series([], dtype=object)})])
@pytest.mark.parametrize("modifier", [GaussianBlur(), AudioNoise(), SynonymReplacer()],
                         ids=lambda m: type(m).__name__)
def test_modifiers_refuse_empty_input(modifier, empty):
    for method in (modifier.fit, modifier.transform):
        with pytest.raises(ValidationError, match="no items"):
            method(empty)


@pytest.mark.parametrize("modifier", [GaussianBlur(), ColorCorrection(), ImageNoise()],
                         ids=lambda m: type(m).__name__)
def test_image_modifiers_refuse_nan_inf_empty_and_complex(modifier):
    image = np.full((4, 4, 3), 0.5)
    for bad, words in [(np.where(np.eye(4)[:, :, None], np.nan, image), "NaN"),
                       (np.where(np.eye(4)[:, :, None], np.inf, image), "NaN or infinite"),
                       (np.zeros((0, 4)), "no pixels"),
                       (image.astype(complex), "Complex data not supported")]:
        for method in (modifier.fit, modifier.transform):
            with pytest.raises(ValidationError, match=words):
                method([image, bad])
    assert modifier.fit([image]) is modifier


@pytest.mark.parametrize("modifier", [AudioNoise(), TempoChange()], ids=lambda m: type(m).__name__)
def test_audio_modifiers_refuse_nan_and_empty_clips(modifier):
    clip = np.sin(np.linspace(0, 100, 1600))
    for bad, words in [(np.r_[clip, np.nan], "NaN"), (np.zeros(0), "no samples"),
                       (np.zeros((2, 0)), "no samples")]:
        for method in (modifier.fit, modifier.transform):
            with pytest.raises(ValidationError, match=words):
                method(pd.Series([bad, clip]))


def test_modifier_sparse_input_says_sparse():
    sparse = pytest.importorskip("scipy.sparse")
    with pytest.raises(ValidationError, match="sparse input is not supported"):
        ImageNoise().fit(sparse.csr_matrix(np.eye(3)))


def test_modifier_feature_names_and_set_output_on_a_frame():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"id": [1, 2], "photo": [rng.random((5, 5, 3)), rng.random((5, 5))]},
                         index=[10, 20])
    noise = ImageNoise(0.1, columns=["photo"], random_state=0).fit(frame)
    assert list(noise.get_feature_names_out()) == ["id", "photo"]
    assert noise.n_features_in_ == 2
    with pytest.raises(ValidationError, match="differ from the columns"):
        noise.get_feature_names_out(["photo"])
    for config in ("pandas", "default"):
        out = noise.set_output(transform=config).transform(frame)
        assert isinstance(out, pd.DataFrame) and list(out.columns) == ["id", "photo"]
        assert out.index.equals(frame.index) and (out["id"] == frame["id"]).all()
    # Stateless: names can be asked without fit, and a fit on a list forgets the frame's.
    assert list(GaussianBlur().get_feature_names_out(["a"])) == ["a"]
    noise.fit([rng.random((3, 3))])
    assert not hasattr(noise, "feature_names_in_")
    with pytest.raises(ValidationError, match="input_features"):
        noise.get_feature_names_out()


# --- pipelines on a full frame ----------------------------------------------------------
def test_anonymizer_then_perturber_compose_on_a_full_frame():
    data = people()
    before = data.copy()
    pipe = Pipeline([
        ("k", KAnonymizer(["age", "zip", "sex"], k=5)),
        ("dp", LocalDPPerturber(SCHEMA, epsilon={"income": 1.0}, ledger=UNACCOUNTED,
                                remainder="passthrough")),
    ])
    out = pipe.fit_transform(data)
    pd.testing.assert_frame_equal(data, before)
    assert list(out.columns) == ["age", "zip", "sex", "income"]
    assert list(pipe.get_feature_names_out()) == ["age", "zip", "sex", "income"]
    assert isinstance(out["age"].dtype, pd.IntervalDtype)  # generalized, not perturbed
    assert out.groupby(["age", "zip", "sex"], observed=True).size().min() >= 5
    assert (out["income"] % 100 == 0).all() and not out["income"].equals(data["income"])
    receipt = pipe.named_steps["dp"].last_receipt_
    assert [f.field for f in receipt.fields] == ["income"]
    # drop keeps the perturbed fields only; the default still refuses, naming the way out.
    drop = LocalDPPerturber(SCHEMA, epsilon={"income": 1.0}, ledger=UNACCOUNTED,
                            remainder="drop")
    assert list(drop.fit_transform(data).columns) == ["income"]
    strict = LocalDPPerturber(SCHEMA, epsilon={"income": 1.0}, ledger=UNACCOUNTED)
    with pytest.raises(ValidationError, match="remainder='passthrough'"):
        strict.fit(data)
    with pytest.raises(ValidationError, match="remainder must be one of"):
        LocalDPPerturber(SCHEMA, epsilon={"income": 1.0}, ledger=UNACCOUNTED,
                         remainder="keep").fit()


def test_perturber_fit_validates_the_frame_without_charging(tmp_path):
    ledger = PrivacyLedger(tmp_path / "l.db", user_id="u", epsilon_budget=100.0)
    dp = LocalDPPerturber(SCHEMA, epsilon={"income": 1.0}, ledger=ledger)
    bad = pd.DataFrame({"income": [1.0, np.nan]})
    with pytest.raises(ValidationError, match="missing value"):
        dp.fit(bad)
    with pytest.raises(ValidationError, match="no rows"):
        dp.fit(bad.iloc[:0])
    dp.fit(bad.iloc[:1])
    assert ledger.entries() == []


# --- clone, copy, pickle ------------------------------------------------------------------
@pytest.mark.parametrize("estimator", NINE, ids=lambda e: type(e).__name__)
def test_clone_and_pickle_every_transformer(estimator):
    params = estimator.get_params()
    twin = clone(estimator)
    assert type(twin) is type(estimator) and twin.get_params().keys() == params.keys()
    again = pickle.loads(pickle.dumps(estimator))
    assert repr(again) == repr(estimator)


def test_fitted_anonymizer_and_perturber_pickle_to_the_same_behaviour():
    data = people()
    anonymizer = KAnonymizer(["age", "zip", "sex"], k=5).fit(data)
    pd.testing.assert_frame_equal(pickle.loads(pickle.dumps(anonymizer)).transform(data),
                                  anonymizer.transform(data))
    with pytest.warns(Warning):  # a seeded perturber is not secure, and says so
        dp = LocalDPPerturber(SCHEMA, epsilon={"income": 1.0}, ledger=UNACCOUNTED,
                              random_state=3).fit()
    frame = data[["income"]]
    twin = pickle.loads(pickle.dumps(dp))  # the seeded generator's state travels with it
    pd.testing.assert_frame_equal(twin.transform(frame), dp.transform(frame))
    assert not twin.transform(frame)["income"].equals(frame["income"])


def test_a_cloned_perturber_charges_the_same_ledger(tmp_path):
    ledger = PrivacyLedger(tmp_path / "l.db", user_id="u", epsilon_budget=1_000.0)
    dp = LocalDPPerturber(SCHEMA, epsilon={"income": 1.0}, ledger=ledger)
    for twin in (clone(dp), copy.deepcopy(dp), copy.copy(dp)):
        assert twin.ledger is ledger
    assert copy.deepcopy(ledger) is ledger
    clone(dp).fit().transform(people(3)[["income"]])
    assert ledger.spent.epsilon == pytest.approx(3.0)  # 3 records x ε = 1, user level


def test_cross_validate_and_grid_search_charge_every_release(tmp_path):
    ledger = PrivacyLedger(tmp_path / "l.db", user_id="u", epsilon_budget=1e6)
    data = people(40)
    pipe = Pipeline([("dp", LocalDPPerturber(SCHEMA, epsilon={"age": 1.0}, ledger=ledger)),
                     ("model", LinearRegression())])
    cross_validate(pipe, data[["age"]], data["income"], cv=2)
    # each fold: fit_transform on 20 training records, transform on 20 test records
    assert len(ledger.entries()) == 4 and ledger.spent.epsilon == pytest.approx(80.0)
    search = GridSearchCV(pipe, {"dp__rounding": ["stochastic", "nearest"]}, cv=2)
    search.fit(data[["age"]], data["income"])
    assert len(ledger.entries()) == 4 + 2 * 4 + 1  # + the refit on all 40 records
    assert ledger.spent.epsilon == pytest.approx(80.0 + 2 * 80.0 + 40.0)


def test_a_ledger_pickles_as_a_reference_to_its_file_or_refuses(tmp_path):
    path = tmp_path / "l.db"
    ledger = PrivacyLedger(path, user_id="u", epsilon_budget=10.0)
    dp = LocalDPPerturber(SCHEMA, epsilon={"income": 1.0}, ledger=ledger)
    twin = pickle.loads(pickle.dumps(dp))
    assert twin.ledger is not ledger and twin.ledger.user_id == "u"
    twin.fit().transform(people(2)[["income"]])
    assert ledger.spent.epsilon == pytest.approx(2.0)  # charged in the same file
    twin.ledger.close()
    keyed = PrivacyLedger(tmp_path / "k.db", user_id="u", epsilon_budget=1.0,
                          integrity_key=b"k" * 32)
    with pytest.raises(ValidationError, match="integrity_key"):
        pickle.dumps(keyed)
    blob = pickle.dumps(PrivacyLedger(tmp_path / "gone.db", user_id="u", epsilon_budget=1.0))
    (tmp_path / "gone.db").unlink()
    with pytest.raises(ValidationError, match="fresh budget"):
        pickle.loads(blob)
