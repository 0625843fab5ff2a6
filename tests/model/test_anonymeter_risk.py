"""anonymeter's risks on what the server holds, for any schema (issue 13, part 5)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import privacy_utility  # noqa: E402
from privacy_utility import BOSTON_LINK_COLUMNS, anonymeter_risks, attack_settings  # noqa: E402

from dmt_model.datasets import BOSTON_SCHEMA, load_boston, load_friedman  # noqa: E402
from dmt_model.datasets.adult import ADULT_QUASI_IDENTIFIERS, ADULT_SCHEMA  # noqa: E402
from dmt_model.datasets.classification import CLASSIFICATION_DATASETS  # noqa: E402
from dmt_model.datasets.regression import FRIEDMAN_SCHEMA  # noqa: E402
from dmt_privacy.errors import SchemaError  # noqa: E402
from dmt_privacy.schema import Field, Schema  # noqa: E402

RISK_PYTHON = ROOT / ".venv-risk" / "bin" / "python"


def test_friedman_settings_link_its_two_quasi_identifiers():
    settings = attack_settings(FRIEDMAN_SCHEMA)
    assert settings == {"secret": "y", "categorical": [], "link_columns": [["x0"], ["x1"]],
                        "columns": ["x0", "x1", "x2", "x3", "y"], "dropped": []}


def test_adult_settings_guess_a_class_and_split_the_quasi_identifiers():
    settings = attack_settings(ADULT_SCHEMA)
    assert settings["secret"] == "salary-class"
    # the secret is categorical: the script guesses it as a class (regression=False)
    assert "salary-class" in settings["categorical"] and "age" not in settings["categorical"]
    first, second = settings["link_columns"]
    assert len(first) == len(second) == 4
    assert sorted(first + second) == sorted(ADULT_QUASI_IDENTIFIERS)
    assert CLASSIFICATION_DATASETS["adult"].schema == ADULT_SCHEMA


def test_boston_keeps_its_published_link_columns():
    derived = attack_settings(BOSTON_SCHEMA)
    assert derived["link_columns"] == [["CHAS", "AGE", "DIS"], ["RAD", "TAX"]]
    given = attack_settings(BOSTON_SCHEMA, link_columns=BOSTON_LINK_COLUMNS)
    assert given["link_columns"] == [list(group) for group in BOSTON_LINK_COLUMNS]
    assert given["secret"] == "MEDV" and given["categorical"] == ["CHAS", "RAD"]


def test_without_two_quasi_identifiers_every_other_field_is_linked():
    schema = Schema(name="one-qi", fields=(
        Field("a", "numeric", role="quasi-identifier", bounds=(0.0, 1.0)),
        Field("b", "numeric", bounds=(0.0, 1.0)),
        Field("c", "categorical", categories=("u", "v")),
        Field("y", "numeric", role="target", bounds=(0.0, 1.0))))
    assert attack_settings(schema)["link_columns"] == [["a", "b"], ["c"]]


def test_unreadable_fields_and_undeclared_columns_are_dropped_and_named():
    schema = Schema(name="mixed", fields=(
        Field("photo", "image", shape=(2, 2)),
        Field("note", "text"),
        Field("a", "numeric", role="quasi-identifier", bounds=(0.0, 1.0)),
        Field("b", "numeric", role="quasi-identifier", bounds=(0.0, 1.0)),
        Field("y", "categorical", role="target", categories=(0, 1))))
    settings = attack_settings(schema, ["photo", "a", "b", "_package", "note", "y"])
    assert settings["columns"] == ["a", "b", "y"]
    assert settings["dropped"] == ["photo", "_package", "note"]
    assert settings["categorical"] == ["y"]


@pytest.mark.parametrize("name", ["digits", "wordnet-topics"])
def test_media_tasks_leave_nothing_to_link(name):
    with pytest.raises(SchemaError, match="two numeric or categorical fields"):
        attack_settings(CLASSIFICATION_DATASETS[name].schema)


def test_bad_link_columns_and_missing_target_are_refused():
    with pytest.raises(SchemaError, match="link_columns"):
        attack_settings(FRIEDMAN_SCHEMA, link_columns=(["x0"], ["y"]))  # the secret itself
    with pytest.raises(SchemaError, match="link_columns"):
        attack_settings(FRIEDMAN_SCHEMA, link_columns=(["x0", "x1"], []))
    with pytest.raises(SchemaError, match="target"):
        attack_settings(FRIEDMAN_SCHEMA, ["x0", "x1", "x2"])


def test_without_the_risk_environment_nothing_is_measured(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(privacy_utility, "ROOT", tmp_path)
    frame = load_friedman(20)
    assert anonymeter_risks(frame, frame, {"raw": frame}, FRIEDMAN_SCHEMA) == {}
    assert "make risk-env" in capsys.readouterr().out


@pytest.mark.skipif(not RISK_PYTHON.exists(),
                    reason="needs .venv-risk with anonymeter: run `make risk-env`")
def test_raw_records_are_riskier_than_noise_end_to_end():
    data = load_friedman(400, seed=3)
    target, control = data.iloc[:200], data.iloc[200:]
    rng = np.random.default_rng(0)
    noised = target.copy()
    for column in ["x0", "x1", "x2", "x3", "y"]:  # every value replaced: nothing of target left
        low, high = FRIEDMAN_SCHEMA[column].bounds
        noised[column] = rng.uniform(low, high, len(target))
    suppressed = target.copy()
    suppressed.loc[suppressed.index[:150], "x1"] = np.nan  # rows with a missing cell: not sent
    received = {"raw": target, "noise": noised, "suppressed": suppressed,
                "one record": target.iloc[:1]}

    result = anonymeter_risks(target, control, received, FRIEDMAN_SCHEMA, n_attacks=150)

    cases, settings = result["cases"], result["settings"]
    assert settings["n_attacks"] == 150 and settings["capped"] and settings["dropped"] == []
    assert [cases[c]["released"] for c in received] == [200, 200, 50, 1]
    for case in cases.values():
        for metric in ("singling_out", "linkability", "inference"):
            low, high = case[metric]["ci"]
            assert 0.0 <= low <= case[metric]["risk"] <= high <= 1.0
    raw, noise = cases["raw"], cases["noise"]
    for metric in ("singling_out", "linkability", "inference"):
        assert raw[metric]["risk"] > 0.8
        assert raw[metric]["ci"][0] > noise[metric]["ci"][1], metric
    assert cases["one record"]["n_attacks"] == 0
    assert result["seconds"] < 60


@pytest.mark.skipif(not RISK_PYTHON.exists(),
                    reason="needs .venv-risk with anonymeter: run `make risk-env`")
def test_the_same_files_and_seed_give_the_same_risks():
    """anonymeter lists a column's rare values with polars' group_by, whose order polars
    draws anew in each process, before its seeded shuffle: Boston's singling-out risks moved
    by about ±0.03 between runs (k = 5: 0.904, then 0.920). Each call is a process of its
    own."""
    data = load_boston()
    target, control = data.iloc[:150], data.iloc[150:300]
    received = {"raw": target, "rounded": target.round(0)}
    runs = [anonymeter_risks(target, control, received, BOSTON_SCHEMA, n_attacks=100,
                             link_columns=BOSTON_LINK_COLUMNS)["cases"] for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]
