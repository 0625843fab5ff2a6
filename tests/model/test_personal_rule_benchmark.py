"""benchmarks/personal_rule.py: the private report's column is the users' expected error
under the chance that devices' randomized bits grant the open rule."""

import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def personal_rule():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import personal_rule  # a benchmark script, on the path above

    return personal_rule


def _run(seed, differences, *, default, open_):
    users = 20
    check = {"open_better": False, "t": 0.0, "needed": 1.3, "devices": len(differences)}
    return {"dataset": "star98", "population": 0.3, "seed": seed, "error_name": "RMSE",
            "records": [8] * users, "v1": [2.0] * users, "default": [default] * users,
            "open": [open_] * users, "server": [default] * users,
            "device-side": [default] * users, "check": check, "check_device_side": check,
            "device_side_differences": differences}


def test_the_private_column_weighs_the_rules_by_the_chance_of_a_grant(personal_rule):
    from dmt_model.version_check import claim_chance

    every = _run(0, [0.1] * 20, default=1.0, open_=0.5)  # all 20 devices better off
    few = _run(1, [0.1] * 5 + [-0.1] * 10, default=1.0, open_=3.0)  # 5 of 20 (15 compared)
    (row,) = personal_rule.summarize([every, few])
    grant = [claim_chance(20, 20), claim_chance(5, 20)]
    assert 0.7 < grant[0] < 0.75 and grant[1] < 0.01
    expected = [(grant[0] * 0.5 + (1 - grant[0]) * 1.0) / 2 - 1,
                (grant[1] * 3.0 + (1 - grant[1]) * 1.0) / 2 - 1]
    assert row["private"]["change"] == pytest.approx(sum(expected) / 2)
    assert row["private"]["worse_off"] == pytest.approx(grant[1] / 2)  # 3.0 > v1's 2.0
    assert row["private_chosen"] == pytest.approx(sum(grant))
    table = personal_rule.markdown([row], 2)
    assert "private report" in table and f"/ {sum(grant):.1f} of 2 |" in table
    assert "three-valued, ε = 1" in table and set(row["three_valued_chosen"]) == {"1", "4", "inf"}
    # a table from runs before the column: a dash, not a figure
    old = {k: v for k, v in every.items() if k != "device_side_differences"}
    (row,) = personal_rule.summarize([old])
    assert "private" not in row and "/ — of 1 |" in personal_rule.markdown([row], 1)


def test_the_share_better_off_counts_every_user(personal_rule):
    """A user whose records could not be compared is not better off: the share is of all
    users, as claim_chance counts them."""
    every = _run(0, [0.1] * 20, default=1.0, open_=0.5)
    few = _run(1, [0.1] * 5 + [-0.1] * 10, default=1.0, open_=3.0)
    (row,) = personal_rule.summarize([every, few])
    assert row["better_off_share"] == pytest.approx((1.0 + 5 / 20) / 2)


def test_the_three_valued_reports_chance_is_every_way_the_reports_can_fall(personal_rule):
    """Exact: every pattern of five users' reports, weighed by its chance under randomized
    response over three categories, kept where the sign test of "better" against "worse"
    grants; a user who could not compare (not among the differences) says "unchanged"."""
    import itertools
    import math

    from scipy.stats import binomtest

    run = _run(0, [0.2, 0.1, -0.3, 0.0], default=1.0, open_=0.5)
    run["v1"] = [2.0] * 5
    truths = [1, 1, -1, 0, 0]
    epsilon = 2.0
    keep = math.exp(epsilon) / (math.exp(epsilon) + 2)
    chance = 0.0
    for reports in itertools.product((1, 0, -1), repeat=5):
        b, w = reports.count(1), reports.count(-1)
        if b and binomtest(b, b + w, 0.5, alternative="greater").pvalue < 0.1:
            chance += math.prod(keep if said == truth else (1 - keep) / 2
                                for said, truth in zip(reports, truths, strict=True))
    assert personal_rule._three_valued_grant(run, epsilon) == pytest.approx(chance, abs=1e-12)
    # told as it is: 2 "better" against 1 "worse" is no proof; 4 against none is
    assert personal_rule._three_valued_grant(run, math.inf) == 0.0
    run["device_side_differences"] = [0.1] * 4
    assert personal_rule._three_valued_grant(run, math.inf) == 1.0
