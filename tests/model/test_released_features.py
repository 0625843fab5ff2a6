"""How generalized and perturbed records become training features."""

import numpy as np
import pandas as pd
import pytest

from dmt_model.datasets import BOSTON_SCHEMA
from dmt_model.features import Featurizer
from dmt_privacy.dp import UNACCOUNTED, LocalDPPerturber
from dmt_privacy.errors import ValidationError
from dmt_privacy.schema import Field, Schema


@pytest.fixture(scope="module")
def featurizer(boston):
    return Featurizer(BOSTON_SCHEMA).fit(boston)


def test_raw_records_give_the_same_features_as_transform(featurizer, boston):
    a, b = featurizer.transform(boston), featurizer.transform_released(boston)
    np.testing.assert_allclose(a.numeric, b.numeric, rtol=1e-6)
    for name in a.categorical:
        assert np.array_equal(a.categorical[name], b.categorical[name])


def test_intervals_become_midpoints_and_gaps_the_proxy_mean(featurizer, boston):
    rows = boston.head(3).astype(object)
    rows["AGE"] = [pd.Interval(20.0, 40.0, closed="both"), (60.0, 100.0), None]
    batch = featurizer.transform_released(rows)
    j = featurizer.numeric_fields.index("AGE")
    expected = (np.array([30.0, 80.0, featurizer.mean_[j]]) - featurizer.mean_[j]) / \
        featurizer.scale_[j]
    np.testing.assert_allclose(batch.numeric[:, j], expected, rtol=1e-6, atol=1e-6)


def test_value_sets_and_suppressed_cells_spread_uniformly(featurizer, boston):
    rows = boston.head(3).astype(object)
    rows["RAD"] = [frozenset({1, 24}), "*", None]
    one_hot = featurizer.transform_released(rows).categorical["RAD"]
    vocabulary = featurizer.vocabularies_["RAD"]
    assert one_hot[0, vocabulary.index(1)] == one_hot[0, vocabulary.index(24)] == 0.5
    np.testing.assert_allclose(one_hot[1:], 1 / len(vocabulary))
    np.testing.assert_allclose(one_hot.sum(axis=1), 1.0, rtol=1e-6)


def test_hierarchy_nodes_cover_their_leaves():
    schema = Schema((
        Field("job", "categorical", categories=("nurse", "doctor", "clerk"),
              hierarchy={"nurse": ("health", "*"), "doctor": ("health", "*"),
                         "clerk": ("office", "*")}),
        Field("y", "numeric", role="target"),
    ))
    featurizer = Featurizer(schema).fit(pd.DataFrame({"job": ["nurse", "clerk"], "y": [1, 2]}))
    out = featurizer.transform_released(pd.DataFrame({"job": ["health", "office"]}))
    np.testing.assert_allclose(out.categorical["job"], [[0.5, 0.5, 0], [0, 0, 1]])


def test_randomized_response_is_debiased_to_the_true_one_hot(featurizer, boston):
    """The mean of the debiased features equals the true category frequencies."""
    full = boston.sample(20_000, replace=True, random_state=0).reset_index(drop=True)
    records = full[["RAD"]]
    perturber = LocalDPPerturber(BOSTON_SCHEMA.select(["RAD"]), epsilon={"RAD": 1.0},
                                 random_state=1, ledger=UNACCOUNTED)
    with pytest.warns(Warning):
        released = perturber.fit(records).transform(records)
    true = featurizer.transform(full).categorical["RAD"].mean(axis=0)
    full["RAD"] = released["RAD"].to_numpy()
    debiased = featurizer.transform_released(full, receipt=perturber.last_receipt_)
    got = debiased.categorical["RAD"].mean(axis=0)
    naive = featurizer.transform(full).categorical["RAD"].mean(axis=0)
    assert np.abs(got - true).max() < 0.03 < np.abs(naive - true).max()


def test_unreadable_numbers_are_named(featurizer, boston):
    rows = boston.head(1).astype(object)
    rows["RM"] = ["six"]
    with pytest.raises(ValidationError, match="'RM'.*'six'"):
        featurizer.transform_released(rows)


def test_fields_not_shared_are_imputed(featurizer, boston):
    partial = boston.head(4)[["RM", "LSTAT", "MEDV"]]
    batch = featurizer.transform_released(partial)
    j = featurizer.numeric_fields.index("CRIM")
    np.testing.assert_allclose(batch.numeric[:, j], 0.0, atol=1e-6)  # the proxy mean
    np.testing.assert_allclose(batch.categorical["RAD"], 1 / 9, rtol=1e-6)
    k = featurizer.numeric_fields.index("RM")
    full = featurizer.transform(boston.head(4)).numeric
    np.testing.assert_allclose(batch.numeric[:, k], full[:, k], rtol=1e-6)
