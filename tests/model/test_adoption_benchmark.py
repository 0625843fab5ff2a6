"""benchmarks/adoption.py: the row the SDK's flow takes, and its real regressions' users."""

import sys
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="module")
def adoption():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import adoption  # a benchmark script, on the path above

    return adoption


def _run(*, better: bool, open_better: bool):
    gate = {"better": better, "error_before": 1.0, "error_after": 0.9 if better else 1.1,
            "t": 2.0 if better else -2.0, "needed": 1.3}
    return {"gate": gate, "open_gate": {"better": open_better},
            "rules": {rule: {} for rule in ("never", "even, unshared", "even, unshared, open")}}


def test_the_sdks_flow_adopts_among_every_prior_only_where_the_open_rule_was_granted(
        adoption):
    """A version shown better is adopted under ADOPTION_RULE, whose guard of few records
    the release lifts only where the server's check showed the open rule better."""
    assert adoption._gated(_run(better=True, open_better=True)) == "even, unshared, open"
    assert adoption._gated(_run(better=True, open_better=False)) == "even, unshared"
    for open_better in (False, True):
        assert adoption._gated(_run(better=False, open_better=open_better)) == "never"


@pytest.mark.parametrize("name", ["boston", "star98"])
def test_a_real_regressions_users_are_personal_rules(adoption, name):
    task = adoption.ADOPTION_TASKS[name]
    if not task.available():
        pytest.skip(f"{name} is not on this machine")
    sim = task.simulate(0, adoption.REAL_USERS)  # what runs_asked runs it at (below)
    assert len(sim.users) == adoption.REAL_USERS
    factors = [u.factor for u in sim.users]
    assert max(abs(np.array(factors) - 1)) <= 0.3 and len(set(factors)) > 1
    assert name in adoption.SPREADS
    alike = task.simulate(0, adoption.REAL_USERS, spread=0.0)
    assert {u.factor for u in alike.users} == {1.0}
    # no known function: their test error only
    assert adoption.expected_error_weights(sim, task.target, task=name) is None


def test_a_real_regression_runs_once_whatever_the_users_asked(adoption):
    # (helper-102: --users 20 120 ran Boston's 20 users twice, and one table counted each
    # seed twice)
    assert adoption.runs_asked(["boston", "friedman"], [120, 20]) == [
        (20, "boston"), (120, "friedman"), (20, "friedman")]


def test_what_the_users_harmed_in_expectation_lose_is_measured_and_shown(adoption):
    """Not only how many users a rule moves to a version worse for them in expectation, but
    how much they lose: their mean rise in expected error and the worst (083488f: the
    as-shipped rule's trade was judged on it)."""
    def user(keep, take, mine, moved):
        return {"never": {"error": keep, "expected": keep, "moved": False},
                "always": {"error": take, "expected": take, "moved": True},
                "rule": {"error": mine, "expected": mine, "moved": moved}}

    users = [user(1.0, 1.2, 1.2, True), user(1.0, 1.5, 1.5, True), user(1.0, 0.5, 0.5, True),
             user(1.0, 0.8, 1.0, False)]
    row = adoption._summary(users, ["never", "rule"])["rule"]
    assert row["harmed_expected"] == pytest.approx(0.5)
    assert row["harmed_loss_expected"] == pytest.approx(0.35)
    assert row["harmed_loss_worst"] == pytest.approx(0.5)
    assert adoption._summary(users, ["never"])["never"]["harmed_loss_expected"] is None
    run = {"task": "adult", "users": 120, "error_name": "log loss",
           "rules": adoption._summary(users, ["never", "rule"]) | {
               rule: adoption._summary(users, ["rule"])["rule"] for rule in adoption.RULES
               if rule != "never"},
           "gate": {"better": True}, "open_gate": {"better": False}}
    table = adoption.markdown([run])
    assert "the harmed lose, expected (mean, worst)" in table and "| 0.35, 0.5 |" in table
