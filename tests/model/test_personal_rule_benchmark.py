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
