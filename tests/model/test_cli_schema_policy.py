"""Schema-first CLI (issue 17, item 5): ``dmt schema init`` and ``dmt policy init`` write the
files the other commands need, and no command falls back to Boston's columns."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from dmt_model.cli import main
from dmt_privacy.schema import Schema


@pytest.fixture
def records(tmp_path):
    path = tmp_path / "records.csv"
    pd.DataFrame({
        "age": [31, 45, 52, 38, 29, 61],
        "zip": [1300, 1301, 1300, 1302, 1301, 1300],
        "job": ["nurse", "clerk", "nurse", "cook", "clerk", "cook"],
        "income": [31000.5, 42000.0, 39000.25, 28000.0, 51000.0, 45000.75],
        "name": ["a", "b", "c", "d", "e", "f"],
    }).to_csv(path, index=False)
    return path


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_schema_init_proposes_kinds_and_lists_what_is_left(tmp_path, records, capsys):
    out = tmp_path / "schema.json"
    code, stdout, err = _run(capsys, "schema", "init", str(records), "-o", str(out),
                             "--target", "income", "--quasi-identifiers", "age,zip",
                             "--categorical", "zip", "--identifiers", "name",
                             "--bounds", "age=0:120", "--grid", "age=1")
    assert code == 0, err
    schema = Schema.from_json(out.read_text())
    assert [f.kind.value for f in schema] == ["numeric", "categorical", "categorical",
                                             "numeric", "categorical"]
    assert [f.role.value for f in schema] == ["quasi-identifier", "quasi-identifier",
                                             "insensitive", "target", "identifier"]
    assert schema["age"].bounds == (0.0, 120.0) and schema["age"].grid == 1.0
    assert schema["income"].bounds is None  # never taken from the data unasked
    assert schema["zip"].categories is None
    assert "without bounds: income" in stdout
    assert "WARNING" not in stdout


def test_bounds_from_data_are_given_with_a_warning(tmp_path, records, capsys):
    out = tmp_path / "schema.json"
    code, stdout, _ = _run(capsys, "schema", "init", str(records), "-o", str(out),
                           "--bounds-from-data", "--categories-from-data")
    assert code == 0
    schema = Schema.from_json(out.read_text())
    assert schema["income"].bounds == (28000.0, 51000.0)
    assert schema["job"].categories == ("clerk", "cook", "nurse")
    assert "WARNING: taken from the data, so they leak it" in stdout
    assert "bounds of income" in stdout and "categories of job" in stdout
    assert "no target" in stdout and "no quasi-identifiers" in stdout


def test_schema_init_refuses_mixed_columns_and_unknown_names(tmp_path, capsys):
    path = tmp_path / "mixed.csv"
    path.write_text("age,job\n31,nurse\nunknown,cook\n")
    code, _, err = _run(capsys, "schema", "init", str(path), "-o", str(tmp_path / "s.json"))
    assert code == 1 and "'age' mixes numbers (line 2: '31') and text (line 3: 'unknown')" in err
    code, _, err = _run(capsys, "schema", "init", str(path), "-o", str(tmp_path / "s.json"),
                        "--target", "price")
    assert code == 1 and "--target names 'price'" in err
    assert not (tmp_path / "s.json").exists()


def test_schema_init_refuses_a_column_given_two_bounds(tmp_path, records, capsys):
    """helper-124: a second --bounds for the same column replaced the first without a word."""
    out = tmp_path / "schema.json"
    code, _, err = _run(capsys, "schema", "init", str(records), "-o", str(out),
                        "--bounds", "age=0:120", "--bounds", "age=18:99")
    assert code == 1 and "--bounds gives 'age' twice, (0.0, 120.0) and (18.0, 99.0)" in err
    assert not out.exists()
    code, _, err = _run(capsys, "schema", "init", str(records), "-o", str(out),
                        "--grid", "age=1", "--grid", "age=5")
    assert code == 1 and "--grid gives 'age' twice" in err
    code, _, err = _run(capsys, "schema", "init", str(records), "-o", str(out),
                        "--bounds", "age=0:120", "--bounds", "age=0:120")  # the same: harmless
    assert code == 0, err


def test_policy_init_writes_what_ingest_reads(tmp_path, records, capsys):
    schema = tmp_path / "schema.json"
    assert main(["schema", "init", str(records), "-o", str(schema), "--target", "income",
                 "--quasi-identifiers", "age", "--bounds", "income=0:1000000",
                 "--grid", "income=0.25"]) == 0
    policy = tmp_path / "policy.json"
    # numeric fields accepted without bounds (the schema inferred them, bounds never are;
    # 'age' is a quasi-identifier but no plan generalizes it) are refused, naming them
    # (found in review, helper-47 and helper-49)
    code, _, err = _run(capsys, "policy", "init", "--schema", str(schema), "-o",
                        str(policy), "--min-k", "5", "--epsilon", "income=1")
    assert code == 1 and "['age', 'zip'] have no bounds" in err and not policy.exists()
    assert main(["schema", "init", str(records), "-o", str(schema), "--target", "income",
                 "--quasi-identifiers", "age", "--bounds", "income=0:1000000",
                 "--bounds", "zip=0:99999", "--bounds", "age=0:120", "--grid", "income=0.25",
                 "--force"]) == 0
    code, stdout, err = _run(capsys, "policy", "init", "--schema", str(schema), "-o",
                             str(policy), "--min-k", "5", "--epsilon", "income=1",
                             "--privacy-unit", "user")
    assert code == 0, err
    from dmt_model.server import ServerPolicy

    read = ServerPolicy.from_json(policy.read_text())
    assert read.min_k == 5 and dict(read.epsilon) == {"income": 1.0}
    from dmt_model.server.policy import DEFAULT_MAX_BYTES

    assert read.max_bytes == DEFAULT_MAX_BYTES  # what dmt serve's default body limit takes
    code, _, err = _run(capsys, "policy", "init", "--schema", str(schema), "-o",
                        str(tmp_path / "media.json"), "--min-k", "5", "--max-bytes", "8388608")
    assert code == 0, err  # a media app raises it (and dmt serve --max-body-bytes with it)
    assert ServerPolicy.from_json((tmp_path / "media.json").read_text()).max_bytes == 8388608
    assert read.quasi_identifiers == ("age",)
    assert "income: local DP, ε = 1 (laplace)" in stdout
    code, _, err = _run(capsys, "policy", "init", "--schema", str(schema), "-o",
                        str(tmp_path / "p2.json"), "--min-k", "5", "--epsilon", "age=1")
    assert code == 1 and "'age' needs bounds and a grid" in err
    assert not (tmp_path / "p2.json").exists()


def test_train_and_ingest_have_no_boston_default(tmp_path, records, capsys):
    code, _, err = _run(capsys, "train", "-o", str(tmp_path / "f.npz"))
    assert code == 1 and "--data is required" in err
    code, _, err = _run(capsys, "train", "--data", str(records), "-o", str(tmp_path / "f.npz"))
    assert code == 1 and "--schema is required" in err and "dmt schema init" in err
    schema = tmp_path / "schema.json"
    assert main(["schema", "init", str(records), "-o", str(schema)]) == 0
    code, _, err = _run(capsys, "train", "--data", str(records), "--schema", str(schema),
                        "-o", str(tmp_path / "f.npz"))
    assert code == 1 and "no target field" in err
    code, _, err = _run(capsys, "ingest", str(tmp_path), "--db", str(tmp_path / "s.db"),
                        "--key", str(tmp_path / "none.key"))
    assert code == 1 and "--policy is required" in err and "dmt policy init" in err
    assert not (tmp_path / "f.npz").exists() and not (tmp_path / "s.db").exists()
    json.dumps(err)  # one line of text, no traceback
    assert "Traceback" not in err


def test_policy_init_ships_the_plan_widened_to_the_schemas_bounds(tmp_path, records, capsys):
    """A policy's plan goes to every device with the release. ``dmt anonymize --plan``
    writes the plan as fitted: each class's ends are the fitted minimum and maximum, ages
    proxy records hold, and a device's record beyond them (here 70, above the proxy's 61) is
    suppressed, never shared. ``dmt policy init --plan`` wrote that plan as it was; it now
    widens it to the schema's bounds, and refuses a quasi-identifier without bounds."""
    from dmt_model.server import ServerPolicy
    from dmt_privacy.release import UnverifiedPolicyWarning, sharing_policy_from

    schema = tmp_path / "schema.json"
    assert main(["schema", "init", str(records), "-o", str(schema), "--target", "income",
                 "--quasi-identifiers", "age", "--identifiers", "name",
                 "--bounds", "income=0:1000000", "--bounds", "zip=0:99999",
                 "--grid", "income=0.25"]) == 0
    plan = tmp_path / "plan.json"
    assert main(["anonymize", str(records), "-o", str(tmp_path / "out.csv"), "--schema",
                 str(schema), "--k", "2", "--plan", str(plan)]) == 0
    policy = tmp_path / "policy.json"
    code, _, err = _run(capsys, "policy", "init", "--schema", str(schema), "-o", str(policy),
                        "--min-k", "2", "--plan", str(plan), "--epsilon", "income=1")
    assert code == 1 and "'age'" in err and "bounds" in err and not policy.exists()

    assert main(["schema", "init", str(records), "-o", str(schema), "--target", "income",
                 "--quasi-identifiers", "age", "--identifiers", "name",
                 "--bounds", "income=0:1000000", "--bounds", "zip=0:99999",
                 "--bounds", "age=0:120", "--grid", "income=0.25", "--force"]) == 0
    code, stdout, err = _run(capsys, "policy", "init", "--schema", str(schema), "-o",
                             str(policy), "--min-k", "2", "--plan", str(plan),
                             "--epsilon", "income=1")
    assert code == 0, err
    assert "widened" in stdout
    shipped = ServerPolicy.from_json(policy.read_text()).plan
    assert shipped is not None and shipped.n_classes >= 2
    ends = {x for bound in (shipped.class_low, shipped.class_high) for row in bound for x in row}
    fitted = set(pd.read_csv(records)["age"].astype(float))
    assert ends.isdisjoint(fitted), ends & fitted
    assert min(ends) == 0.0 and max(ends) == 120.0
    with pytest.warns(UnverifiedPolicyWarning):  # no release here: the policy file alone
        device = sharing_policy_from(policy.read_text()).plan
    applied = device.apply(pd.DataFrame({"age": [70.0, 33.0]}))
    assert len(applied.suppressed) == 0 and (applied.class_ids >= 0).all()


def test_a_plan_from_a_csv_is_coded_in_the_schemas_categories(tmp_path, capsys):
    """helper-89: ``dmt anonymize`` reads the CSV as text, so Boston's CHAS was fitted on
    '0' and '1' while the schema (and every device record) holds 0 and 1. ``dmt policy init
    --plan`` refused it since 20a2055, naming the schema's own categories as the fix; before
    that, the plan it shipped suppressed every device record. A column with schema
    categories is now read as them, and a cell that is none of them is refused."""
    from dmt_model.datasets import BOSTON_SCHEMA, load_boston
    from dmt_privacy.release import UnverifiedPolicyWarning, sharing_policy_from

    boston = load_boston()
    boston.to_csv(tmp_path / "b.csv", index=False)
    (tmp_path / "schema.json").write_text(BOSTON_SCHEMA.to_json())
    plan = tmp_path / "plan.json"
    assert main(["anonymize", str(tmp_path / "b.csv"), "-o", str(tmp_path / "out.csv"),
                 "--schema", str(tmp_path / "schema.json"), "--quasi-identifiers",
                 "CHAS,RAD,AGE,DIS,TAX", "--k", "5", "--plan", str(plan)]) == 0
    code, _, err = _run(capsys, "policy", "init", "--schema", str(tmp_path / "schema.json"),
                        "-o", str(tmp_path / "policy.json"), "--min-k", "5", "--plan",
                        str(plan), "--epsilon", "MEDV=1")
    assert code == 0, err
    with pytest.warns(UnverifiedPolicyWarning):
        device = sharing_policy_from((tmp_path / "policy.json").read_text()).plan
    assert len(device.apply(boston.iloc[:50]).suppressed) == 0
    released = pd.read_csv(tmp_path / "out.csv", dtype=str)
    assert set(released["CHAS"]) <= {"{0}", "{1}", "{0|1}"}
    text = (tmp_path / "b.csv").read_text().replace(
        "\n0.00632,18.0,2.31,0,", "\n0.00632,18.0,2.31,2,", 1)  # line 2: CHAS 2
    (tmp_path / "bad.csv").write_text(text)
    code, _, err = _run(capsys, "anonymize", str(tmp_path / "bad.csv"), "-o",
                        str(tmp_path / "out2.csv"), "--schema", str(tmp_path / "schema.json"),
                        "--quasi-identifiers", "CHAS,RAD,TAX", "--k", "5")
    assert code == 1 and "'CHAS' holds '2' at line 2" in err
