"""dmt_privacy.dp.ledger: refuses overspending, persists, and survives a kill mid-release."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from dmt_privacy import BudgetExceededError, Field, Schema, ValidationError
from dmt_privacy.dp import LocalDPPerturber, PrivacyLedger

SCHEMA = Schema((Field("age", "numeric", bounds=(17, 90), grid=1.0),
                 Field("sex", "categorical", categories=("F", "M"))))
FRAME = pd.DataFrame({"age": [30.0, 41.5, 77.0], "sex": ["F", "M", "F"]})


def perturber(ledger, **kw):
    kw.setdefault("epsilon", {"age": 0.1, "sex": 0.1})
    kw.setdefault("privacy_unit", "record")  # FRAME's 3 distinct records cost Σε = 0.2
    return LocalDPPerturber(SCHEMA, ledger=ledger, **kw).fit()


def test_ledger_refuses_overspending_and_charges_each_release_once(tmp_path):
    ledger = PrivacyLedger(tmp_path / "device.db", user_id="u1", epsilon_budget=1.0)
    t = perturber(ledger)
    for _ in range(5):  # 5 × 0.2 = the whole budget (float sums tolerated)
        t.transform(FRAME)
    assert ledger.spent.epsilon == pytest.approx(1.0)
    with pytest.raises(BudgetExceededError, match=r"'u1'.*Nothing was released"):
        t.transform(FRAME)
    entries = ledger.entries()
    assert len(entries) == 5 and all(e.status == "released" for e in entries)
    assert ledger.remaining.epsilon == pytest.approx(0.0, abs=1e-12)
    # the receipts stored are the ones handed out
    assert entries[-1].receipt == t.last_receipt_


def test_can_spend_says_what_charge_would_do(tmp_path):
    """Reports drawn together (dmt_model.version_check) check the budget first with
    can_spend: it must accept what charge accepts, float sums included (helper-34: a
    budget of 4 x 0.1 + 1 left 0.9999999999999999, and a strict comparison refused the
    report charge would take)."""
    ledger = PrivacyLedger(tmp_path / "device.db", user_id="u1", epsilon_budget=4 * 0.1 + 1)
    t = perturber(ledger, epsilon={"age": 0.05, "sex": 0.05})
    t.transform(FRAME.iloc[:1])
    for _ in range(3):
        t.transform(FRAME.iloc[:1])
    assert ledger.remaining.epsilon < 1.0 and ledger.can_spend(1.0)
    assert not ledger.can_spend(1.01)
    t = perturber(ledger, epsilon={"age": 0.5, "sex": 0.5})
    t.transform(FRAME.iloc[:1])  # what can_spend(1.0) said charge would accept
    assert not ledger.can_spend(1e-6)


def test_refused_input_costs_nothing(tmp_path):
    ledger = PrivacyLedger(tmp_path / "device.db", user_id="u1", epsilon_budget=1.0)
    t = perturber(ledger)
    with pytest.raises(ValidationError, match="'sex'"):
        t.transform(FRAME.assign(sex=["F", None, "M"]))
    assert ledger.spent.epsilon == 0 and ledger.entries() == []


def test_user_privacy_unit_charges_every_record(tmp_path):
    ledger = PrivacyLedger(tmp_path / "device.db", user_id="u1", epsilon_budget=1.0)
    t = perturber(ledger, privacy_unit="user")
    t.transform(FRAME)  # 3 records × 0.2
    assert ledger.spent.epsilon == pytest.approx(0.6)
    with pytest.raises(BudgetExceededError):
        t.transform(FRAME)


def test_gaussian_releases_spend_delta(tmp_path):
    ledger = PrivacyLedger(tmp_path / "device.db", user_id="u1", epsilon_budget=10.0,
                           delta_budget=2e-6)
    t = LocalDPPerturber(SCHEMA, epsilon={"age": 1.0}, delta={"age": 1e-6},
                         mechanism={"age": "gaussian"}, ledger=ledger,
                         privacy_unit="record").fit()
    frame = FRAME[["age"]]
    t.transform(frame)
    t.transform(frame)
    assert ledger.spent.delta == pytest.approx(2e-6)
    with pytest.raises(BudgetExceededError, match="δ"):
        t.transform(frame)


def test_ledger_persists_and_keeps_its_budget(tmp_path):
    path = tmp_path / "device.db"
    with PrivacyLedger(path, user_id="u1", epsilon_budget=2.0) as ledger:
        perturber(ledger).transform(FRAME)
    with PrivacyLedger(path, user_id="u1") as again:
        assert again.budget.epsilon == 2.0
        assert again.spent.epsilon == pytest.approx(0.2)
    with pytest.raises(ValidationError, match="already has budget"):
        PrivacyLedger(path, user_id="u1", epsilon_budget=50.0)
    with pytest.raises(ValidationError, match="no privacy budget"):
        PrivacyLedger(path, user_id="someone-else")
    with PrivacyLedger(path, user_id="u2", epsilon_budget=1.0) as other:
        assert other.spent.epsilon == 0  # budgets are per user


def test_concurrent_releases_never_overspend(tmp_path):
    path = tmp_path / "device.db"
    PrivacyLedger(path, user_id="u1", epsilon_budget=1.0).close()
    outcomes: list[str] = []

    def worker():
        ledger = PrivacyLedger(path, user_id="u1")
        t = perturber(ledger)
        for _ in range(4):
            try:
                t.transform(FRAME)
                outcomes.append("ok")
            except BudgetExceededError:
                outcomes.append("refused")
        ledger.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    with PrivacyLedger(path, user_id="u1") as ledger:
        assert outcomes.count("ok") == 5 == len(ledger.entries())
        assert ledger.spent.epsilon == pytest.approx(1.0)


# --- kill -9 in the middle of a release ---------------------------------------------------
CHILD = textwrap.dedent("""
    import pathlib, sys, time
    import pandas as pd
    from dmt_privacy import Field, Schema
    from dmt_privacy.dp import LocalDPPerturber, PrivacyLedger
    import dmt_privacy.dp.ledger as ledger_module
    import dmt_privacy.dp.perturber as perturber_module

    db, marker, where = sys.argv[1:4]

    def hang(*args, **kwargs):
        pathlib.Path(marker).write_text(where)
        time.sleep(600)

    if where == "between_charge_and_release":
        perturber_module.LocalDPPerturber._draw = hang
    else:  # inside the charge transaction, before COMMIT
        ledger_module.PrivacyLedger._before_commit = hang
    schema = Schema((Field("age", "numeric", bounds=(17, 90), grid=1.0),))
    ledger = PrivacyLedger(db, user_id="u1")
    t = LocalDPPerturber(schema, epsilon={"age": 0.5}, ledger=ledger).fit()
    t.transform(pd.DataFrame({"age": [30.0]}))  # one record, user-level: ε = 0.5
    print("released")  # never reached
""")


def _release_and_kill(tmp_path: Path, where: str) -> None:
    db, marker = tmp_path / "device.db", tmp_path / "marker"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(db), str(marker), where],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            if child.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"child never reached the hook: {child.communicate()}")
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    assert b"released" not in child.stdout.read()


def test_kill_between_charge_and_release_keeps_exactly_one_charge(tmp_path):
    PrivacyLedger(tmp_path / "device.db", user_id="u1", epsilon_budget=1.0).close()
    _release_and_kill(tmp_path, "between_charge_and_release")
    with PrivacyLedger(tmp_path / "device.db", user_id="u1") as ledger:
        entries = ledger.entries()
        assert len(entries) == 1 and entries[0].status == "charged"
        assert ledger.pending() == entries
        assert ledger.spent.epsilon == pytest.approx(0.5)  # not lost
        # a retry is a new release with fresh noise: charged once more, not twice
        t = LocalDPPerturber(SCHEMA.select(["age"]), epsilon={"age": 0.5}, ledger=ledger).fit()
        t.transform(pd.DataFrame({"age": [40.0]}))
        assert ledger.spent.epsilon == pytest.approx(1.0)
        assert [e.status for e in ledger.entries()].count("released") == 1
        with pytest.raises(BudgetExceededError):
            t.transform(pd.DataFrame({"age": [30.0]}))


def test_kill_inside_the_charge_transaction_charges_nothing(tmp_path):
    PrivacyLedger(tmp_path / "device.db", user_id="u1", epsilon_budget=1.0).close()
    _release_and_kill(tmp_path, "inside_charge")
    with PrivacyLedger(tmp_path / "device.db", user_id="u1") as ledger:
        assert ledger.entries() == [] and ledger.spent.epsilon == 0
        t = LocalDPPerturber(SCHEMA.select(["age"]), epsilon={"age": 0.5}, ledger=ledger).fit()
        t.transform(pd.DataFrame({"age": [30.0]}))  # the database is not locked
        assert ledger.spent.epsilon == pytest.approx(0.5)


@pytest.mark.parametrize("epsilon, delta", [(-5.0, 0.0), (math.nan, 0.0), (math.inf, 0.0),
                                            (1.0, -1e-5), (1.0, math.nan)])
def test_a_charge_that_is_not_a_cost_is_refused_with_a_clear_error(tmp_path, epsilon, delta):
    """Found in review (helper-47): a receipt of negative or NaN ε reached SQLite's CHECK and
    surfaced as a raw sqlite3.IntegrityError. It is refused first, naming the value, and the
    ledger is unchanged."""
    from dmt_privacy.dp.receipt import ReleaseReceipt

    ledger = PrivacyLedger(tmp_path / "device.db", user_id="u1", epsilon_budget=10.0)
    ledger.charge(ReleaseReceipt("first", 1, 1.0, 0.0, ()))
    with pytest.raises(ValidationError, match="not a privacy cost"):
        ledger.charge(ReleaseReceipt("bad", 1, epsilon, delta, ()))
    assert ledger.spent.epsilon == 1.0 and len(ledger.entries()) == 1


def test_a_delta_of_one_is_a_cost_over_any_budget_not_a_corrupt_receipt(tmp_path):
    """Found in review (helper-48): 200 records at δ = 0.005 each under user-level DP add up
    to δ = 1, which the perturber states as it is; it is refused as over the budget (the
    error callers catch), not as a corrupt receipt."""
    from dmt_privacy.dp.receipt import ReleaseReceipt

    ledger = PrivacyLedger(tmp_path / "device.db", user_id="u1", epsilon_budget=10.0,
                           delta_budget=1e-3)
    with pytest.raises(BudgetExceededError):
        ledger.charge(ReleaseReceipt("many", 200, 1.0, 1.0, ()))
    assert ledger.spent.epsilon == 0
