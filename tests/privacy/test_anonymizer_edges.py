"""Issue 14.8: anonymizer edges: hierarchy cuts at absent first leaves, unknown hierarchy values
suppressed one by one, and transform() saying when new records form classes below k."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from dmt_privacy.anonymity import Hierarchy, KAnonymityWarning, KAnonymizer
from dmt_privacy.testing import assert_k_anonymous

H = Hierarchy(rows=(("a1", "a", "*"), ("a2", "a", "*"), ("b1", "b", "*"), ("b2", "b", "*")))


def test_a_subtree_boundary_is_a_cut_even_when_its_first_leaf_is_absent():
    """{a1, a2, b2} x 40 at k=10 was released all as '*': the cut needed b1 present."""
    frame = pd.DataFrame({"x": ["a1", "a2", "b2"] * 40})
    out = KAnonymizer(["x"], k=10, hierarchies={"x": H}).fit_transform(frame)
    assert_k_anonymous(out, ["x"], 10)
    assert "*" not in set(out["x"].astype(str))
    assert set(out.loc[frame["x"] == "b2", "x"].astype(str)) <= {"b", "b2"}


def test_an_absent_leaf_falls_on_its_own_subtree_side():
    frame = pd.DataFrame({"x": ["a1", "a2", "b2"] * 40})
    est = KAnonymizer(["x"], k=40, hierarchies={"x": H}).fit(frame)
    widened = est.plan_  # categorical only: widening needs no bounds
    applied = widened.widened({}).apply(pd.DataFrame({"x": ["b1", "a1"]}))
    assert list(applied.data["x"].astype(str)) == ["b", "a1"]  # b1 was never seen


def test_an_unknown_hierarchy_value_suppresses_that_record_only():
    frame = pd.DataFrame({"x": ["a1", "a2", "b1", "b2"] * 30, "age": np.arange(120) % 60})
    est = KAnonymizer(["x", "age"], k=10, hierarchies={"x": H}).fit(frame)
    new = pd.DataFrame({"x": ["a1", "zz", "b2"], "age": [0, 20, 3]}, index=["p", "q", "r"])
    applied = est.apply(new)  # used to raise for the whole batch
    assert list(applied.suppressed) == ["q"]
    assert "not in the plan's hierarchy" in applied.reasons["q"]
    assert applied.data.loc[["p", "r"], "x"].notna().all()


def test_transform_of_new_records_says_when_classes_are_below_k():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"age": rng.integers(20, 60, 400)})
    est = KAnonymizer(["age"], k=10).fit(frame)
    with pytest.warns(KAnonymityWarning, match="smaller than k=10"):
        est.transform(pd.DataFrame({"age": [25, 45]}))
    with warnings.catch_warnings():
        warnings.simplefilter("error", KAnonymityWarning)
        est.transform(frame)  # the fitted table: every class has k records


def test_a_complex_column_is_refused_not_coded_by_its_real_part():
    from dmt_privacy.anonymity.plan import ColumnCoding
    from dmt_privacy.errors import ValidationError

    coding = ColumnCoding("age", "numeric", values=(30.0, 40.0))
    with pytest.raises(ValidationError, match="'age' holds complex numbers"):
        coding.encode(pd.Series([30 + 1j, 40 + 0j]))
    assert coding.encode(pd.Series([30.0, 40.0]))[1].tolist() == [0, 1]


@pytest.mark.parametrize("kind", ["entropy", "recursive"])
def test_transform_warns_when_its_classes_break_the_plan_s_l(kind):
    """fit suppressed 14 records to make the table entropy 2-diverse; transform on the same
    table placed them back into classes (a class of 37 rows, entropy l 1.74) with no
    warning, as it judged k only (helper-66)."""
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"age": rng.integers(20, 60, 40),
                      "dx": ["flu"] * 34 + ["hiv"] * 3 + ["cold"] * 3})
    est = KAnonymizer(["age"], sensitive="dx", k=4, l=2, l_kind=kind, c=3.0,
                      max_suppression=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", KAnonymityWarning)
        est.fit_transform(X)
    assert est.report_.suppressed
    with pytest.warns(KAnonymityWarning, match="l-diverse"):
        est.transform(X)
    kept = X.drop(index=list(est.report_.suppressed))
    with warnings.catch_warnings():  # the records fit kept: their classes hold l
        warnings.simplefilter("error", KAnonymityWarning)
        est.transform(kept)


def test_transform_warns_when_new_records_break_the_plan_s_t():
    rng = np.random.default_rng(1)
    X = pd.DataFrame({"age": rng.integers(20, 60, 200),
                      "dx": rng.choice(["flu", "hiv", "cold"], 200, p=[0.5, 0.3, 0.2])})
    est = KAnonymizer(["age"], sensitive="dx", k=5, t=0.3).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error", KAnonymityWarning)
        est.transform(X)
    new = pd.DataFrame({"age": X["age"].to_numpy(), "dx": ["hiv"] * 200})
    with pytest.warns(KAnonymityWarning, match="t=0.3"):
        est.transform(new)


def _diagnoses(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"age": rng.integers(18, 90, n).astype(float),
                         "zip": rng.choice([f"z{i}" for i in range(20)], n),
                         "diag": rng.choice(["flu", "cold", "hiv", "hepatitis"], n,
                                            p=[.4, .3, .2, .1])})


def test_transform_of_a_record_without_its_sensitive_value_judges_the_others():
    """The l check of transform raised on a missing sensitive value (helper-72): new records
    transformed before it; the record is left out of the judgement now."""
    X = _diagnoses(2000, 1)
    est = KAnonymizer(["age", "zip"], k=5, sensitive="diag", l=2).fit(X)
    Y = X.copy()
    Y.loc[0, "diag"] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error", KAnonymityWarning)
        est.transform(Y)


def test_transform_does_not_warn_of_a_t_fit_judged_with_the_sensitive_hierarchy():
    """fit judged t with the hierarchical distance, transform with the equal one (never
    smaller): the fitting table, nothing suppressed, drew warnings for 38 to 59 classes
    (helper-72)."""
    X = _diagnoses(3000, 3)
    hierarchy = {"diag": {"flu": ["resp"], "cold": ["resp"], "hiv": ["blood"],
                          "hepatitis": ["blood"]}}
    est = KAnonymizer(["age", "zip"], k=10, sensitive="diag", t=0.15,
                      hierarchies=hierarchy).fit(X)
    assert (est.labels_ >= 0).all() and est.report_.t_achieved <= 0.15
    with warnings.catch_warnings():
        warnings.simplefilter("error", KAnonymityWarning)
        est.transform(X)


def test_t_may_be_any_real_number_numpys_too():
    """helper-115: t=np.float32(0.2) was refused ("t must be a number in [0, 1]") where
    0.2 and np.float64(0.2) were taken; a ReleaseRule refused it too. The report and the
    plan keep t as a float, so their JSON still writes."""
    import json

    from dmt_privacy.anonymity import ReleaseRule

    frame = pd.DataFrame({"q": [1, 2, 3, 4, 5, 6], "s": list("ababab")})
    for t in (0.2, np.float64(0.2), np.float32(0.2), 1):
        anonymizer = KAnonymizer(["q"], k=2, sensitive="s", t=t).fit(frame)
        assert type(anonymizer.report_.t) is float and type(anonymizer.plan_.t) is float
        json.dumps(anonymizer.report_.to_dict())
        assert type(ReleaseRule(k=2, sensitive="s", t=t, reference=(("a", 0.5), ("b", 0.5))).t) \
            is float
    for bad in (True, np.bool_(True), np.float32("nan"), 1.5, "0.2"):
        with pytest.raises(Exception, match="t must be a number in"):
            KAnonymizer(["q"], k=2, sensitive="s", t=bad).fit(frame)


def test_a_missing_sensitive_value_is_named_as_sensitive():
    """helper-115: NaN in the sensitive column was reported as a 'Quasi-identifier'."""
    from dmt_privacy.errors import ValidationError

    frame = pd.DataFrame({"q": [1, 1, 2, 2], "s": ["a", None, "a", "b"]})
    with pytest.raises(ValidationError, match=r"^Sensitive column 's' has a missing value"):
        KAnonymizer(["q"], k=2, sensitive="s", l=2).fit(frame)
    with pytest.raises(ValidationError, match=r"^Quasi-identifier 'q' has a missing value"):
        KAnonymizer(["q"], k=2, sensitive="s", l=2).fit(frame.assign(q=[1, None, 2, 2]))


@pytest.mark.parametrize("values", [[1, "1"], ["a", " a"]], ids=["1 and '1'", "'a' and ' a'"])
def test_sensitive_values_that_read_alike_as_text_are_named(values):
    """helper-115: a sensitive column holding 1 and '1' failed with "Hierarchy 's': value '1'
    has more than one row", about a hierarchy the user never gave."""
    from dmt_privacy.errors import ValidationError

    frame = pd.DataFrame({"q": [1, 1, 2, 2], "s": pd.Series(values * 2, dtype=object)})
    with pytest.raises(ValidationError, match=r"^Sensitive column 's' holds .* read the same"):
        KAnonymizer(["q"], k=2, sensitive="s", l=2).fit(frame)
