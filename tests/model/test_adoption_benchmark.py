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
