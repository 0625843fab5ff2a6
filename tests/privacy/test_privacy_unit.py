"""Issue 14.1: the user is the privacy unit; duplicates cost what they reveal; no silent None."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dmt_privacy import BudgetExceededError, Field, Schema, ValidationError
from dmt_privacy.dp import (
    UNACCOUNTED,
    InsecureRandomnessWarning,
    LocalDPPerturber,
    PrivacyLedger,
    dp_mean,
    release_epsilon,
)

SCHEMA = Schema((Field("x", "numeric", bounds=(0.0, 100.0), grid=0.01),
                 Field("c", "categorical", categories=("a", "b", "c"))))


def test_default_unit_is_the_user_and_a_release_costs_every_record(tmp_path):
    ledger = PrivacyLedger(tmp_path / "d.db", user_id="u", epsilon_budget=10.0)
    t = LocalDPPerturber(SCHEMA, epsilon={"x": 1.0}, ledger=ledger).fit()
    release = t.perturb(pd.DataFrame({"x": np.arange(7.0)}))  # 7 records at ε = 1
    assert release.receipt.privacy_unit == "user"
    assert release.receipt.epsilon == pytest.approx(7.0)
    assert ledger.spent.epsilon == pytest.approx(7.0)


def test_duplicates_are_charged_what_they_reveal(tmp_path):
    """200,000 copies of one record used to cost ε = 1 and reveal the value (mean 42.08 ± 0.23)."""
    copies = pd.DataFrame({"x": np.full(200_000, 42.0)})
    for unit in ("user", "record"):
        ledger = PrivacyLedger(tmp_path / f"{unit}.db", user_id="u", epsilon_budget=10.0)
        t = LocalDPPerturber(SCHEMA, epsilon={"x": 1.0}, ledger=ledger, privacy_unit=unit).fit()
        with pytest.raises(BudgetExceededError, match="ε=200000"):
            t.perturb(copies)
        assert ledger.spent.epsilon == 0 and ledger.entries() == []
    # record-level: distinct records cost Σε, each repeated row multiplies it
    frame = pd.DataFrame({"x": [1.0, 2.0, 2.0, 3.0, 2.0], "c": ["a", "a", "a", "b", "b"]})
    assert release_epsilon(frame, {"x": 0.5, "c": 0.25}, privacy_unit="record")[0] == 1.5
    assert release_epsilon(frame, {"x": 0.5}, privacy_unit="record")[0] == 1.5
    assert release_epsilon(frame, {"c": 0.25}, privacy_unit="record")[0] == 0.75
    assert release_epsilon(frame, {"x": 0.5, "c": 0.25}, privacy_unit="user")[0] == 3.75


def test_a_release_without_a_ledger_must_say_it_is_unaccounted():
    with pytest.raises(ValidationError, match="ledger is required.*UNACCOUNTED"):
        LocalDPPerturber(SCHEMA, epsilon={"x": 1.0}).fit()
    with pytest.raises(ValidationError, match="ledger must be"):
        LocalDPPerturber(SCHEMA, epsilon={"x": 1.0}, ledger="nobody").fit()
    with pytest.raises(ValidationError, match="UNACCOUNTED"):
        dp_mean([1.0, 2.0], epsilon=1.0, bounds=(0, 10))
    t = LocalDPPerturber(SCHEMA, epsilon={"x": 1.0}, ledger=UNACCOUNTED).fit()
    assert t.perturb(pd.DataFrame({"x": [1.0]})).receipt.user_id is None
    assert repr(UNACCOUNTED) == "UNACCOUNTED"


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.lists(st.sampled_from([1.0, 2.0, 50.0]), min_size=1, max_size=12),
                          st.sampled_from([0.05, 0.1, 0.25])), min_size=1, max_size=6))
def test_ledger_total_equals_the_user_level_epsilon_of_everything_released(tmp_path_factory,
                                                                         releases):
    """The audit: Σ over releases of n_records × Σε (duplicates included) is what the ledger holds,
    and a release that would pass the budget is refused whole."""
    path = tmp_path_factory.mktemp("audit") / "d.db"
    ledger = PrivacyLedger(path, user_id="u", epsilon_budget=2.0)
    released = 0.0
    for values, eps in releases:
        t = LocalDPPerturber(SCHEMA, epsilon={"x": eps}, ledger=ledger).fit()
        try:
            t.perturb(pd.DataFrame({"x": values}))
            released += len(values) * eps
        except BudgetExceededError:
            assert released + len(values) * eps > 2.0 * (1 - 1e-9)
    assert math.isclose(ledger.spent.epsilon, released, rel_tol=1e-12, abs_tol=1e-12)
    assert math.isclose(sum(e.receipt.n_records * e.receipt.fields[0].epsilon
                            for e in ledger.entries()), released, rel_tol=1e-12, abs_tol=1e-12)
    ledger.close()


def test_share_charges_user_level(tmp_path):
    from dmt_privacy.seal import generate_server_key
    from dmt_privacy.sharing import SharingPolicy, share
    from dmt_privacy.store import LocalStore

    key = generate_server_key()
    store = LocalStore(tmp_path / "s.db", schema=SCHEMA, user_id="u", epsilon_budget=3.0,
                       key=LocalStore.generate_key())
    store.add_records(pd.DataFrame({"x": [1.0, 1.0, 5.0], "c": ["a", "a", "b"]},
                                   index=["r1", "r2", "r3"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default is user-level, said by no warning
        policy = SharingPolicy(fields=("x",), epsilon={"x": 0.5})
    assert policy.privacy_unit == "user"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureRandomnessWarning)
        result = share(store, policy, key.public_key())
    assert result.receipt.dp is not None and result.receipt.dp.epsilon == pytest.approx(1.5)
    assert store.ledger.spent.epsilon == pytest.approx(1.5)


def test_a_record_level_package_does_not_tell_how_many_records_are_alike(tmp_path):
    """helper-106: a record-level package's receipt said Σε × the largest number of records
    whose true values are alike (ε = 2 for two distinct records, 4 for two copies), so the
    server read, from its receipts in clear, whether a device's values repeat. The ledger
    is charged for the copies; what travels is the same for every package of that size."""
    from dmt_privacy.package import open_package
    from dmt_privacy.seal import generate_server_key
    from dmt_privacy.sharing import SharingPolicy, share
    from dmt_privacy.store import LocalStore

    key = generate_server_key()
    policy = SharingPolicy(fields=("x",), epsilon={"x": 1.0}, privacy_unit="record")
    carried, charged = [], []
    for name, values in (("distinct", [1.0, 2.0, 3.0]), ("alike", [7.0, 7.0, 3.0]),
                         ("same", [7.0, 7.0, 7.0])):
        store = LocalStore(tmp_path / f"{name}.db", schema=SCHEMA, user_id=name,
                           epsilon_budget=10.0, key=LocalStore.generate_key())
        store.add_records(pd.DataFrame({"x": values, "c": ["a"] * 3},
                                       index=[f"{name}{i}" for i in range(3)]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InsecureRandomnessWarning)
            result = share(store, policy, key.public_key())
        dp = open_package(result.envelope, key).receipt.dp
        assert dp is not None and dp.privacy_unit == "record"
        carried.append((dp.epsilon, dp.delta))
        charged.append(store.ledger.spent.epsilon)
        assert result.receipt.dp is not None  # the device's own receipt says what it paid
        assert result.receipt.dp.epsilon == pytest.approx(charged[-1])
    assert charged == pytest.approx([1.0, 2.0, 3.0])  # copies cost what they reveal
    assert carried == [(1.0, 0.0)] * 3  # the package says only the policy's ε a record
