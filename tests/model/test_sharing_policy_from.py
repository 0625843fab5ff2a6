"""A device that builds its sharing policy from the server's signed policy
(``sharing_policy_from``) sends packages the server accepts, or is told before its budget
is charged. Found in review (4 December, helper-45): the server's ``privacy_unit`` was not
carried over, and a field choice without the plan's sensitive field was let through; in
both the user's ε was spent on a package the server refuses every time."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dmt_model.server import ServerPolicy, ingest
from dmt_privacy import Field, Schema
from dmt_privacy.anonymity import KAnonymizer
from dmt_privacy.errors import ValidationError
from dmt_privacy.release import sharing_policy_from
from dmt_privacy.seal import generate_server_key
from dmt_privacy.sharing import SharingPolicy, share
from dmt_privacy.store import LocalStore

SCHEMA = Schema((
    Field("age", "numeric", role="quasi-identifier", bounds=(0, 100), grid=1.0),
    Field("zip", "categorical", role="quasi-identifier", categories=("a", "b", "c", "d")),
    Field("disease", "categorical", role="sensitive", categories=("flu", "cold", "hiv")),
    Field("income", "numeric", bounds=(0, 1000), grid=1.0),
))
KEY = generate_server_key()
# these tests are about what the policy sets; the release that vouches for it is
# tests/model/attacks/test_attack_model_release.py's
pytestmark = pytest.mark.filterwarnings("ignore::dmt_privacy.release.UnverifiedPolicyWarning")


def _proxy(n: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"age": rng.integers(0, 101, n).astype(float),
                         "zip": rng.choice(list("abcd"), n),
                         "disease": rng.choice(["flu", "cold", "hiv"], n, p=[.5, .35, .15]),
                         "income": rng.integers(0, 1000, n).astype(float)})


PLAN = KAnonymizer(["age", "zip"], k=3, sensitive="disease", l=2).fit(
    _proxy()[["age", "zip", "disease"]]).plan_.widened({"age": (0.0, 100.0)})


def _device(tmp_path) -> LocalStore:
    store = LocalStore(tmp_path / "device.db", schema=SCHEMA, user_id="u", epsilon_budget=100,
                       key=LocalStore.generate_key())
    store.add_records(_proxy().iloc[:3].set_axis(["r0", "r1", "r2"]))
    return store


def _nothing_spent(store: LocalStore) -> None:
    assert store.ledger.spent.epsilon == 0 and store.count("pending") == 0


@pytest.mark.parametrize("unit", ["record", "user", None])
def test_the_device_states_the_privacy_unit_the_servers_policy_asks(tmp_path, unit):
    policy = ServerPolicy(SCHEMA, min_k=3, plan=PLAN, epsilon={"income": 1.0},
                          privacy_unit=unit)
    store = _device(tmp_path)
    sharing = sharing_policy_from(policy.to_json())
    assert sharing.privacy_unit == (unit or "user")  # none asked: user-level, the stricter
    report = ingest([share(store, sharing, KEY.public_key()).envelope],
                    f"sqlite:///{tmp_path / 'server.db'}", KEY, policy)
    assert len(report.accepted) == 1, report.to_text()


def test_a_privacy_unit_the_server_would_refuse_is_refused_before_anything_is_spent(tmp_path):
    policy = ServerPolicy(SCHEMA, min_k=3, plan=PLAN, epsilon={"income": 1.0},
                          privacy_unit="record")
    store = _device(tmp_path)
    with pytest.raises(ValidationError, match=r"privacy_unit='user'.*'record'"):
        sharing_policy_from(policy.to_json(), privacy_unit="user")
    _nothing_spent(store)


def test_a_field_choice_without_the_plans_sensitive_field_is_refused_before_anything_is_spent(
        tmp_path):
    """The plan has l = 2: the server judges every class's l on the sensitive field and
    refuses a package without it ("lacks the sensitive field")."""
    policy = ServerPolicy(SCHEMA, min_k=3, plan=PLAN, epsilon={"income": 1.0})
    store = _device(tmp_path)
    with pytest.raises(ValidationError, match=r"sensitive field 'disease'.*fields"):
        sharing_policy_from(policy.to_json(), fields=("age", "zip", "income"))
    with pytest.raises(ValidationError, match=r"sensitive field 'disease'"):
        SharingPolicy(fields=("age", "zip", "income"), plan=PLAN, epsilon={"income": 1.0})
    _nothing_spent(store)
    # with it, the package is accepted
    sharing = sharing_policy_from(policy.to_json(), fields=("age", "zip", "disease", "income"))
    report = ingest([share(store, sharing, KEY.public_key()).envelope],
                    f"sqlite:///{tmp_path / 'server.db'}", KEY, policy)
    assert len(report.accepted) == 1, report.to_text()


def test_a_selection_larger_than_the_servers_package_limit_is_refused_before_charging(
        tmp_path):
    """Found in review (helper-47): ``max_records`` of the signed policy was not carried
    over, so a device with more eligible records than the server takes in one package was
    charged for all of them and the package was refused every time."""
    policy = ServerPolicy(SCHEMA, min_k=1, epsilon={"income": 0.1}, max_records=2)
    store = _device(tmp_path)  # 3 eligible records
    sharing = sharing_policy_from(policy.to_json(), fields=("income",))
    assert sharing.max_records == 2
    assert sharing_policy_from(policy.to_json(), max_records=1).max_records == 1  # less: yes
    with pytest.raises(ValidationError, match="max_records=3.*above 2"):  # more: never
        sharing_policy_from(policy.to_json(), max_records=3)
    with pytest.raises(ValidationError, match="positive int"):  # helper-49: was a TypeError
        sharing_policy_from(policy.to_json(), max_bytes="1000")
    with pytest.raises(ValidationError, match="requires_token comes from the server"):
        sharing_policy_from(policy.to_json(), requires_token=False)
    with pytest.raises(ValidationError, match="max_records=2"):
        share(store, sharing, KEY.public_key())
    _nothing_spent(store)
    assert store.count("eligible") == 3
    result = share(store, sharing.evolve(record_ids=["r0", "r1"]), KEY.public_key())
    report = ingest([result.envelope], f"sqlite:///{tmp_path / 'server.db'}", KEY, policy)
    assert [o.status for o in report.outcomes] == ["accepted"]
    with pytest.raises(ValidationError, match="max_records"):
        SharingPolicy(fields=("income",), max_records=0)


def test_a_package_larger_than_the_servers_byte_limit_is_refused_before_charging(tmp_path):
    """``max_bytes`` of the signed policy too: the device sizes the package with the widest
    value each perturbed cell may take and the receipt it would carry, before the charge;
    a package it lets through is one the server's limit takes."""
    store = _device(tmp_path)
    store.add_records(_proxy(60).iloc[3:].set_axis([f"r{i}" for i in range(3, 60)]))
    loose = ServerPolicy(SCHEMA, min_k=1, epsilon={"income": 0.01})
    size = len(share(store, sharing_policy_from(loose.to_json(), fields=("income",),
                                                 record_ids=["r0"]), KEY.public_key()
                     ).envelope)  # one record's package, sealed
    policy = ServerPolicy(SCHEMA, min_k=1, epsilon={"income": 0.01}, max_bytes=size + 100)
    sharing = sharing_policy_from(policy.to_json(), fields=("income",))
    assert sharing.max_bytes == size + 100
    spent = store.ledger.spent.epsilon
    with pytest.raises(ValidationError, match="max_bytes"):
        share(store, sharing, KEY.public_key())  # 59 records: far above the limit
    assert store.ledger.spent.epsilon == spent and store.count("pending") == 1
    result = share(store, sharing.evolve(record_ids=["r1"]), KEY.public_key())
    report = ingest([result.envelope], f"sqlite:///{tmp_path / 'server.db'}", KEY, policy)
    assert [o.status for o in report.outcomes] == ["accepted"]


def test_a_package_without_the_token_the_policy_requires_is_refused_before_charging(tmp_path):
    """Found in review (helper-48): ``tokens_per_period`` was not carried over, so a device
    sharing without a token to a server that counts only packages with one was charged and
    refused every time."""
    policy = ServerPolicy(SCHEMA, min_k=1, epsilon={"income": 0.1}, tokens_per_period=4)
    store = _device(tmp_path)
    sharing = sharing_policy_from(policy.to_json(), fields=("income",))
    assert sharing.requires_token
    with pytest.raises(ValidationError, match="token"):
        share(store, sharing, KEY.public_key())
    _nothing_spent(store)
    assert not sharing_policy_from(
        ServerPolicy(SCHEMA, min_k=1, epsilon={"income": 0.1}).to_json()).requires_token


# helper-96: a policy could name, through quasi_identifiers=, a field its plan does not
# generalize and no ε perturbs. Validation then refused every package that carried it
# ("neither generalized by the plan nor perturbed"), while a device following the policy
# shared it as it is: ε charged at every attempt (7, 14, 21 on Boston), nothing stored, and
# the server decrypted the raw value of a field it had declared identifying.
def test_a_quasi_identifier_neither_generalized_nor_perturbed_is_refused_before_any_charge(
        tmp_path):
    with pytest.warns(UserWarning, match=r"\['income'\].*neither generalized"):
        server = ServerPolicy(SCHEMA, min_k=3, plan=PLAN,
                              quasi_identifiers=("age", "zip", "income"))
    # a device that follows it is told before its budget is charged
    import json

    data = json.loads(server.to_json())
    with pytest.raises(ValidationError, match=r"\['income'\].*leave it out of fields"):
        sharing_policy_from(json.dumps(data))
    policy = sharing_policy_from(json.dumps(data), fields=("age", "zip", "disease"))
    assert "income" not in policy.fields
    # perturbed, it is shared: no refusal
    ServerPolicy(SCHEMA, min_k=3, plan=PLAN, quasi_identifiers=("age", "zip", "income"),
                 epsilon={"income": 1.0})


def test_a_store_of_another_schema_than_the_servers_is_refused_before_any_charge(tmp_path):
    """helper-106: sharing_policy_from left out the schema the policy carries, and share()
    perturbed by the store's. Once the server's schema changed (income's bounds widened),
    every share was charged and every package refused ('schema'), retry after retry."""
    widened = Schema(tuple(Field("income", "numeric", bounds=(0, 2000), grid=1.0)
                           if f.name == "income" else f for f in SCHEMA.fields))
    server = ServerPolicy(widened, min_k=3, plan=PLAN, epsilon={"income": 1.0})
    policy = sharing_policy_from(server.to_json())
    assert policy.schema_id == widened.schema_id != SCHEMA.schema_id
    store = _device(tmp_path)
    with pytest.raises(ValidationError, match=rf"{widened.schema_id}.*{SCHEMA.schema_id}"):
        share(store, policy, KEY.public_key())
    _nothing_spent(store)
    # a store of the server's schema shares, and the server accepts the package
    same = LocalStore(tmp_path / "same.db", schema=widened, user_id="u", epsilon_budget=100,
                      key=LocalStore.generate_key())
    same.add_records(_proxy().iloc[:3].set_axis(["r0", "r1", "r2"]))
    report = ingest([share(same, policy, KEY.public_key()).envelope],
                    f"sqlite:///{tmp_path / 'server.db'}", KEY, server)
    assert len(report.accepted) == 1, report.to_text()
    with pytest.raises(ValidationError, match="schema_id comes from the server's policy"):
        sharing_policy_from(server.to_json(), schema_id=SCHEMA.schema_id)
    with pytest.raises(ValidationError, match="schema_id must be"):
        SharingPolicy(fields=("income",), schema_id="é" * 16)
