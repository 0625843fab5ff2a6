"""A widened plan maps every record of the domain to a class, as devices need."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dmt_privacy.anonymity import AnonymizationPlan, KAnonymizer
from dmt_privacy.errors import ValidationError
from dmt_privacy.testing import assert_k_anonymous, assert_l_diverse

DOMAINS = {"age": (0.0, 120.0), "income": (0.0, 1000.0)}


def frame(seed: int, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "age": rng.integers(18, 90, n).astype(float),
        "income": rng.uniform(0, 1000, n).round(1),
        "city": rng.choice(["a", "b", "c", "d", "e"], n),
        "y": rng.normal(size=n),
    }, index=rng.permutation(n) + 1000)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 12))
def test_widened_plan_suppresses_nothing_inside_the_domains(seed, k):
    fitted = KAnonymizer(["age", "income", "city"], k=k).fit(frame(seed, 120)).plan_
    plan = fitted.widened(DOMAINS)
    rng = np.random.default_rng(seed + 1)
    new = pd.DataFrame({"age": rng.uniform(0, 120, 300).round(2),
                        "income": rng.uniform(0, 1000, 300).round(2),
                        "city": rng.choice(["a", "b", "c", "d", "e"], 300), "y": 0.0})
    out = plan.apply(new)
    # Cities never seen at fit time would still be suppressed; all here were seen.
    assert len(out.suppressed) == 0
    for q in ("age", "income"):
        assert all(v in iv for v, iv in zip(new[q], out.data[q], strict=True))
    assert all(v in s for v, s in zip(new["city"], out.data["city"], strict=True))
    # One generalization per class: the server can count classes.
    for cls in np.unique(out.class_ids):
        rows = out.data[out.class_ids == cls]
        assert rows[["age", "income"]].astype(str).nunique().max() == 1
        assert rows["city"].map(sorted).astype(str).nunique() == 1


def test_widened_plan_round_trips_and_needs_numeric_domains():
    fitted = KAnonymizer(["age", "income", "city"], k=5).fit(frame(0, 100)).plan_
    plan = fitted.widened(DOMAINS)
    again = AnonymizationPlan.from_json(plan.to_json())
    new = frame(1, 50)
    pd.testing.assert_frame_equal(plan.apply(new).data.astype(str),
                                  again.apply(new).data.astype(str))
    with pytest.raises(ValidationError, match="income"):
        fitted.widened({"age": (0.0, 120.0)})


def test_widened_to_a_schema_takes_its_bounds_and_categories_and_refuses_no_bounds():
    """What a policy ships (``dmt policy init``, ``run_loop``): the schema's bounds for
    numeric quasi-identifiers and its categories for value sets, so a city no fitted
    record held falls into a class instead of being suppressed. A numeric one without
    bounds is refused, naming it (its ends would otherwise be fitted values)."""
    from dmt_privacy.schema import Field, Schema

    fields = (Field("age", "numeric", role="quasi-identifier", bounds=DOMAINS["age"]),
              Field("income", "numeric", role="quasi-identifier", bounds=DOMAINS["income"]),
              Field("city", "categorical", role="quasi-identifier",
                    categories=("a", "b", "c", "d", "e", "f")),
              Field("y", "numeric", role="target", bounds=(-10.0, 10.0)))
    schema = Schema(fields)
    fitted = KAnonymizer(["age", "income", "city"], k=5).fit(frame(0, 100)).plan_
    plan = fitted.widened_to(schema)
    new = pd.DataFrame({"age": [0.0, 120.0, 50.5], "income": [0.0, 1000.0, 3.25],
                        "city": ["f", "a", "c"], "y": 0.0})
    assert len(fitted.widened(DOMAINS).apply(new).suppressed) == 1  # city f, never fitted
    out = plan.apply(new)
    assert len(out.suppressed) == 0 and (out.class_ids >= 0).all()
    fitted_ages = set(frame(0, 100)["age"])
    ends = {x for bound in (plan.class_low, plan.class_high) for x in bound[0]}
    assert ends.isdisjoint(fitted_ages)
    unbounded = Schema((Field("age", "numeric", role="quasi-identifier"), *fields[1:]))
    with pytest.raises(ValidationError, match=r"\['age'\] have no bounds"):
        fitted.widened_to(unbounded)
    numbers = KAnonymizer(["age", "income", "city"], k=5).fit(
        frame(0, 100).assign(city=lambda f: f["age"] // 10)).plan_  # city fitted as numbers
    as_categories = Schema((*fields[:2], Field("city", "categorical", role="quasi-identifier"),
                            fields[3]))
    with pytest.raises(ValidationError, match=r"'city' is categorical.*astype"):
        numbers.widened_to(as_categories)


def test_a_central_release_by_the_tree_s_regions_names_no_record_s_value():
    """The README's route for a central release without the class's exact ends: fit, widen
    to the schema's bounds, release the same records by the fitted labels. A tight release
    names the outlier's exact income as its class's upper end; the regions' ends are only
    the plan's cuts and the bounds, on the same partition, k-anonymous."""
    data = frame(3, 200)
    data["income"] *= 0.9
    data.loc[data.index[0], "income"] = 987.65  # the largest income, and not a round number
    anonymizer = KAnonymizer(["age", "income", "city"], k=5)
    tight = anonymizer.fit_transform(data)
    assert 987.65 in set(tight["income"].array.right)
    widened = anonymizer.plan_.widened(DOMAINS)
    regions = widened.release(data, anonymizer.labels_)
    np.testing.assert_array_equal(widened.apply(data).class_ids, anonymizer.labels_)
    cuts = {t for t, d in zip(widened.threshold, widened.split_dim, strict=True) if d == 1}
    ends = {end for iv in regions["income"] for end in (iv.left, iv.right)}
    assert 987.65 not in ends and ends <= cuts | set(DOMAINS["income"])
    assert not ends & set(data["income"])  # cuts lie strictly between fitted values
    assert all(v in iv for v, iv in zip(data["income"], regions["income"], strict=True))
    assert_k_anonymous(regions, ["age", "income", "city"], 5)


def test_records_fit_suppressed_stay_suppressed_in_a_release_by_regions():
    """helper-80: the README's first recipe applied the widened plan to the records, which
    placed the records fit had suppressed (to make the table l-diverse) in classes again;
    released by the fitted labels they stay suppressed and l holds."""
    data = frame(3, 200)
    data["s"] = np.where(np.random.default_rng(4).random(len(data)) < 0.5, "a", "b")
    anonymizer = KAnonymizer(["age", "income", "city"], sensitive="s", k=5, l=2,
                             l_kind="entropy", max_suppression=0.5).fit(data)
    suppressed = anonymizer.labels_ < 0
    assert suppressed.any()
    widened = anonymizer.plan_.widened(DOMAINS)
    assert (widened.apply(data).class_ids >= 0).all()  # what the first recipe released
    regions = widened.release(data, anonymizer.labels_)
    assert regions["income"].isna().to_numpy().tolist() == suppressed.tolist()
    assert_l_diverse(regions[~suppressed], ["age", "income", "city"], "s", 2, kind="entropy")


@pytest.mark.parametrize("extra", [["other"], [2.5, "other", None.__class__.__name__]])
def test_a_value_set_domain_of_mixed_types_keeps_the_fitted_classes(extra):
    """helper-115: codes were reordered by the domain's text order when it mixed types (ints
    and 'other'), and the tree's cuts, remapped by position, then joined 2 with 10, 3 with 20
    and 4 with 30 and left three classes empty. Widening adds the domain's other categories
    to classes; it moves no fitted value to another class."""
    values = [1, 2, 3, 4, 10, 20, 30, 40] * 3
    data = pd.DataFrame({"q": pd.Series(values, dtype=object), "s": ["a", "b", "c"] * 8})
    anon = KAnonymizer(["q"], k=3).fit(data)
    widened = anon.plan_.widened({"q": [1, 2, 3, 4, 10, 20, 30, 40, *extra]})
    applied = widened.apply(data)
    assert len(applied.suppressed) == 0
    fitted = pd.Series(anon.labels_).groupby(values).agg(set)
    now = pd.Series(applied.class_ids).groupby(values).agg(set)
    assert all(len(c) == 1 for c in now) and len(set(map(frozenset, now))) == 8
    assert list(map(len, fitted)) == list(map(len, now))
    for value, released in zip(values, applied.data["q"], strict=True):
        assert value in released and not ({1, 2, 3, 4, 10, 20, 30, 40} - {value}) & released
    assert_k_anonymous(applied.data, ["q"], 3)
    other = widened.apply(pd.DataFrame({"q": pd.Series(extra, dtype=object), "s": "a"}))
    assert len(other.suppressed) == 0  # the domain's other categories join some class


def test_a_plan_fitted_in_the_old_text_order_widens_without_moving_a_value(monkeypatch):
    """A plan fitted before 7 December on a mixed column coded it by type and text (10 before
    2); widened now, its fitted values keep their order and the domain's others follow."""
    import dmt_privacy.anonymity.anonymizer as anonymizer

    monkeypatch.setattr(anonymizer, "category_order",
                        lambda v: sorted(v, key=lambda x: (type(x).__name__, str(x))))
    values = [1, 2, 10, 20, "a", "b"] * 3
    data = pd.DataFrame({"q": pd.Series(values, dtype=object)})
    anon = KAnonymizer(["q"], k=3).fit(data)
    assert anon.plan_.codings[0].values == (1, 10, 2, 20, "a", "b")
    monkeypatch.undo()
    widened = anon.plan_.widened({"q": [1, 2, 10, 20, "a", "b", "c", 3]})
    applied = widened.apply(data)
    assert len(applied.suppressed) == 0
    assert list(applied.class_ids) == list(anon.labels_)
    for value, released in zip(values, applied.data["q"], strict=True):
        assert value in released and not ({1, 2, 10, 20, "a", "b"} - {value}) & released
