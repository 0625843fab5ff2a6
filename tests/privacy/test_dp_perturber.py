"""LocalDPPerturber: the transformer, its receipts, bad input; the server-side estimators."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.pipeline import Pipeline

from dmt_privacy import (
    Field,
    Schema,
    SchemaError,
    UnknownCategoryError,
    ValidationError,
)
from dmt_privacy.dp import (
    UNACCOUNTED,
    InsecureRandomnessWarning,
    LocalDPPerturber,
    ReleaseReceipt,
    dp_histogram,
    dp_mean,
    estimate_frequencies,
    estimate_mean,
)

SCHEMA = Schema((
    Field("age", "numeric", bounds=(17, 90), grid=1.0),
    Field("income", "numeric", bounds=(0, 200_000), grid=100.0),
    Field("sex", "categorical", categories=("F", "M")),
    Field("rad", "categorical", categories=tuple(range(1, 10))),
    Field("note", "text"),
    Field("nobounds", "numeric", grid=1.0),
    Field("nogrid", "numeric", bounds=(0, 1)),
))
EPS = {"age": 1.0, "income": 0.5, "sex": 0.5, "rad": 1.0}
CI = 1 - 1e-6  # a correct estimator misses the truth with probability 1e-6 per interval


def unaccounted(**params) -> LocalDPPerturber:
    """A perturber on SCHEMA with no ledger, as tests of the mechanisms need."""
    return LocalDPPerturber(SCHEMA, ledger=UNACCOUNTED, **params)


def frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "age": rng.integers(17, 95, n).astype(float) + rng.random(n),  # some above the bound
        "income": rng.gamma(2.0, 20_000, n),
        "sex": rng.choice(["F", "M"], n, p=[0.3, 0.7]),
        "rad": rng.choice(range(1, 10), n, p=[0.3, 0.2, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05]),
    })


# --- the transformer -----------------------------------------------------------------------
def test_transform_releases_every_field_with_a_receipt():
    df = frame(500)
    before = df.copy()
    t = unaccounted(epsilon=EPS, mechanism={"rad": "oue"})
    out = t.fit_transform(df)
    pd.testing.assert_frame_equal(df, before)  # input untouched
    assert list(out.columns) == ["age", "income", "sex", *[f"rad={i}" for i in range(1, 10)]]
    assert list(out.columns) == list(t.get_feature_names_out())
    assert out.index.equals(df.index)
    assert set(out["sex"]) <= {"F", "M"}
    assert (out["income"] % 100 == 0).all() and (out["age"] % 1 == 0).all()
    receipt = t.last_receipt_
    assert receipt.epsilon == pytest.approx(500 * 3.0) and receipt.delta == 0  # user-level
    assert receipt.secure_random and receipt.random_source == "os.urandom"
    assert receipt.n_records == 500 and receipt.privacy_unit == "user"
    age = receipt.field("age")
    assert (age.mechanism, age.epsilon, age.grid, age.bounds) == (
        "discrete_laplace", 1.0, 1.0, (17.0, 90.0))
    assert age.sensitivity_units == 73 and age.scale_units == pytest.approx(73.0)
    assert receipt.field("rad").mechanism == "oue"
    assert receipt.field("sex").mechanism == "k_rr"
    assert ReleaseReceipt.from_json(receipt.to_json()) == receipt
    assert out.attrs["dmt_receipt"] == receipt.to_dict()


def test_perturb_returns_data_and_receipt_and_ids_differ():
    t = unaccounted(epsilon={"age": 1.0}).fit()
    a, b = t.perturb(frame(10)[["age"]]), t.perturb(frame(10)[["age"]])
    assert a.receipt.release_id != b.receipt.release_id
    assert a.data.shape == (10, 1)


def test_it_is_a_scikit_learn_transformer():
    t = unaccounted(epsilon={"age": 1.0, "sex": 1.0})
    assert clone(t).get_params()["epsilon"] == {"age": 1.0, "sex": 1.0}
    out = Pipeline([("dp", t)]).fit_transform(frame(20)[["age", "sex"]])
    assert out.shape == (20, 2)


def test_random_state_is_reproducible_and_receipts_say_insecure():
    df = frame(50)[["age", "sex"]]
    with pytest.warns(InsecureRandomnessWarning):
        a = unaccounted(epsilon={"age": 1, "sex": 1}, random_state=3).fit()
    with pytest.warns(InsecureRandomnessWarning):
        b = unaccounted(epsilon={"age": 1, "sex": 1}, random_state=3).fit()
    pd.testing.assert_frame_equal(a.transform(df), b.transform(df))
    assert not a.last_receipt_.secure_random and "NOT SECURE" in a.last_receipt_.random_source


@pytest.mark.parametrize("epsilon,error,pattern", [
    ({"age": 0.0}, ValidationError, r"'age'.*epsilon must be a finite number > 0, got 0.0"),
    ({"age": -1}, ValidationError, r"'age'.*got -1"),
    ({"age": float("nan")}, ValidationError, r"'age'.*got nan"),
    ({"age": float("inf")}, ValidationError, r"'age'"),
    ({"nobounds": 1.0}, SchemaError, r"'nobounds' has no bounds.*never inferred"),
    ({"nogrid": 1.0}, SchemaError, r"'nogrid' has no grid"),
    ({"note": 1.0}, SchemaError, r"'note' is text"),
    ({"missing": 1.0}, SchemaError, r"'missing'.*not in schema"),
    (1.0, ValidationError, r"epsilon must map field names"),
])
def test_bad_parameters_name_the_field(epsilon, error, pattern):
    with pytest.raises(error, match=pattern):
        unaccounted(epsilon=epsilon).fit()


def test_bad_mechanism_choices_are_refused():
    with pytest.raises(ValidationError, match=r"'age'.*delta > 0"):
        unaccounted(epsilon={"age": 1}, mechanism={"age": "gaussian"}).fit()
    with pytest.raises(ValidationError, match=r"'age'.*'laplace' or 'gaussian'"):
        unaccounted(epsilon={"age": 1}, mechanism={"age": "oue"}).fit()
    with pytest.raises(ValidationError, match=r"'sex'.*'k_rr' or 'oue'"):
        unaccounted(epsilon={"sex": 1}, mechanism={"sex": "laplace"}).fit()
    with pytest.raises(ValidationError, match=r"'age'.*pure ε-DP"):
        unaccounted(epsilon={"age": 1}, delta={"age": 1e-6}).fit()
    with pytest.raises(ValidationError, match=r"privacy_unit"):
        unaccounted(epsilon={"age": 1}, privacy_unit="device").fit()


def test_bad_data_names_the_field():
    t = unaccounted(epsilon=EPS).fit()
    df = frame(5)
    with pytest.raises(ValidationError, match=r"'age'.*missing value"):
        t.transform(df.assign(age=[1.0, np.nan, 3.0, 4.0, 5.0]))
    with pytest.raises(ValidationError, match=r"'income'.*non-finite"):
        t.transform(df.assign(income=[1.0, np.inf, 3.0, 4.0, 5.0]))
    with pytest.raises(UnknownCategoryError, match=r"'sex'.*'X'.*not one of its categories"):
        t.transform(df.assign(sex=["F", "M", "X", "F", "F"]))
    with pytest.raises(UnknownCategoryError, match=r"'rad'.*12"):
        t.transform(df.assign(rad=[1, 2, 12, 3, 4]))
    with pytest.raises(ValidationError, match=r"Missing column.*'rad'"):
        t.transform(df.drop(columns="rad"))
    with pytest.raises(ValidationError, match=r"Unexpected column.*'secret'"):
        t.transform(df.assign(secret=1))
    with pytest.raises(ValidationError, match="DataFrame"):
        t.transform(df.to_numpy())


def test_dmt_privacy_imports_without_torch():
    code = ("import sys, dmt_privacy.dp, dmt_privacy.testing; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


# --- estimators: unbiased within their confidence intervals -------------------------------------
def test_mean_estimates_cover_the_clamped_mean():
    df = frame(200_000, seed=1)
    t = unaccounted(epsilon={"age": 1.0, "income": 0.5}).fit()
    out = t.transform(df[["age", "income"]])
    for name in ("age", "income"):
        receipt = t.last_receipt_.field(name)
        est = estimate_mean(out[name], receipt, confidence=CI)
        truth = df[name].clip(*receipt.bounds).mean()
        assert est.ci_low <= truth <= est.ci_high, (name, est, truth)
        assert est.n == len(df)


def test_bounded_domain_laplace_is_biased_where_ours_is_not():
    """diffprivlib's LaplaceBoundedDomain keeps outputs in the bounds: the mean moves inward."""
    from diffprivlib.mechanisms import LaplaceBoundedDomain

    n = 20_000
    x = np.full(n, 1.0)  # data near the lower bound of [0, 10]
    ref = LaplaceBoundedDomain(epsilon=1.0, sensitivity=10, lower=0, upper=10)
    biased = np.array([ref.randomise(v) for v in x])
    t = LocalDPPerturber(Schema((Field("v", "numeric", bounds=(0, 10), grid=0.01),)),
                         epsilon={"v": 1.0}, ledger=UNACCOUNTED).fit()
    ours = t.transform(pd.DataFrame({"v": x}))["v"]
    est = estimate_mean(ours, t.last_receipt_.field("v"), confidence=CI)
    assert est.ci_low <= 1.0 <= est.ci_high
    se = biased.std() / np.sqrt(n)
    assert biased.mean() - 1.0 > 20 * se  # pulled toward the middle of the domain


def test_estimate_mean_rejects_values_off_the_grid():
    t = unaccounted(epsilon={"age": 1.0}).fit()
    out = t.transform(frame(10)[["age"]])
    with pytest.raises(ValidationError, match=r"'age'.*not on the grid"):
        estimate_mean(out["age"] + 0.5, t.last_receipt_.field("age"))


@pytest.mark.parametrize("mechanism", ["k_rr", "oue"])
def test_frequency_estimates_cover_the_true_frequencies(mechanism):
    df = frame(100_000, seed=2)
    t = unaccounted(epsilon={"sex": 0.5, "rad": 1.0},
                         mechanism={"sex": mechanism, "rad": mechanism}).fit()
    out = t.transform(df[["sex", "rad"]])
    for name in ("sex", "rad"):
        receipt = t.last_receipt_.field(name)
        reports = out[list(receipt.output_columns)] if mechanism == "oue" else out[name]
        k = len(receipt.categories)
        est = estimate_frequencies(reports, receipt, confidence=1 - (1 - CI) / k)
        truth = df[name].value_counts(normalize=True).reindex(receipt.categories, fill_value=0)
        inside = (est.ci_low <= truth.to_numpy()) & (truth.to_numpy() <= est.ci_high)
        assert inside.all(), (name, est.as_series(), truth)


def test_frequency_estimator_refuses_unknown_reports():
    t = unaccounted(epsilon={"sex": 1.0}).fit()
    out = t.transform(frame(200)[["sex"]])  # 10 reports held no "F" about 0.5 % of the time
    with pytest.raises(UnknownCategoryError, match="'sex'"):
        estimate_frequencies(out["sex"].replace("F", "Q"), t.last_receipt_.field("sex"))


# --- server-side central-DP aggregates (diffprivlib) --------------------------------------------
def test_server_aggregates_charge_their_ledger(tmp_path):
    from dmt_privacy.dp import PrivacyLedger

    ledger = PrivacyLedger(tmp_path / "server.db", user_id="server:boston", epsilon_budget=1.0)
    x = np.random.default_rng(0).uniform(0, 10, 10_000)
    m = dp_mean(x, epsilon=0.5, bounds=(0, 10), ledger=ledger)
    assert abs(m - x.mean()) < 0.1
    counts = dp_histogram(["a", "b", "b"] * 1000, epsilon=0.5, categories=["a", "b"],
                          ledger=ledger)
    assert counts.shape == (2,) and abs(counts[1] - 2000) < 100
    assert ledger.spent.epsilon == pytest.approx(1.0)
    from dmt_privacy import BudgetExceededError

    with pytest.raises(BudgetExceededError):
        dp_mean(x, epsilon=0.1, bounds=(0, 10), ledger=ledger)
    with pytest.raises(SchemaError, match="no bounds"):
        dp_mean(x, epsilon=0.1, bounds=None)


def test_receipt_states_the_noise_variance_the_mechanism_draws():
    import warnings

    import numpy as np
    import pandas as pd

    from dmt_privacy.dp import LocalDPPerturber
    from dmt_privacy.schema import Field, Schema

    schema = Schema((Field("x", "numeric", bounds=(0.0, 10.0), grid=0.5),))
    records = pd.DataFrame({"x": np.full(200_000, 5.0)})
    perturber = LocalDPPerturber(schema, epsilon={"x": 1.0}, random_state=3,
                                 rounding="nearest", ledger=UNACCOUNTED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        release = perturber.fit(records).perturb(records)
    (field,) = release.receipt.fields
    measured = release.data["x"].var()
    assert abs(measured / field.noise_variance - 1) < 0.03
