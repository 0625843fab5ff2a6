"""share(): what leaves the device, the ledger charge, the outbox; SharingPolicy validation."""

from __future__ import annotations

import re
import struct
import time
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmt_privacy import (
    AnonymizationError,
    BudgetExceededError,
    Field,
    Schema,
    SchemaError,
    ValidationError,
)
from dmt_privacy.anonymity import KAnonymizer
from dmt_privacy.dp import InsecureRandomnessWarning
from dmt_privacy.package import PACKAGE_INFO, open_package
from dmt_privacy.seal import generate_server_key, open_sealed
from dmt_privacy.sharing import SharingPolicy, share
from dmt_privacy.store import LocalStore

STORE_KEY = LocalStore.generate_key()  # the app's key, from the platform keystore

SCHEMA = Schema((
    Field("uid", "text", role="identifier"),
    Field("age", "numeric", role="quasi-identifier", bounds=(0, 100), grid=1.0),
    Field("zip", "categorical", role="quasi-identifier", categories=("a", "b", "c", "d")),
    Field("note", "text"),
    Field("income", "numeric", bounds=(0, 1000), grid=0.5),
    Field("score", "numeric", bounds=(0, 100_000)),
))
KEY = generate_server_key()
PROXY = pd.DataFrame({"age": np.repeat(np.arange(20, 61), 8).astype(float),
                      "zip": np.tile(["a", "b", "c", "d"], 41 * 2)})
PLAN = KAnonymizer(["age", "zip"], k=4).fit(PROXY).plan_
FIELDS = ("age", "zip", "note", "income", "score")


def records(n: int, start: int = 0, *, secret: bool = False) -> pd.DataFrame:
    i = np.arange(start, start + n)
    rng = np.random.default_rng(start)
    return pd.DataFrame({
        "uid": [f"user-{j}" for j in i],
        "age": rng.integers(20, 61, n).astype(float),
        "zip": rng.choice(["a", "b", "c", "d"], n),
        "note": [f"SECRET-{j:05d}-do-not-share" if secret else f"shared-{j:05d}" for j in i],
        "income": rng.uniform(0, 1000, n),
        "score": (50_000.123456789 if secret else 1234.56789) + 1.1 * i,
    }, index=[f"r{j}" for j in i])


def make_store(path, *, budget=10.0, n=40, private=20):
    store = LocalStore(path, schema=SCHEMA, user_id="alice", epsilon_budget=budget,
                       key=STORE_KEY)
    store.add_records(records(n))
    if private:
        store.add_records(records(private, start=10_000, secret=True), shareable=False)
    return store


def policy(**changes) -> SharingPolicy:
    base = SharingPolicy(fields=FIELDS, plan=PLAN, epsilon={"income": 0.5}, required_k=4,
                         privacy_unit="record")
    return base.evolve(**changes)


def quiet_share(store, pol, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureRandomnessWarning)
        return share(store, pol, KEY.public_key(), **kw)


def test_unshared_values_never_in_a_package(tmp_path):
    store = make_store(tmp_path / "d.db")
    result = share(store, policy(fraction=0.5), KEY.public_key())
    plaintext = open_sealed(result.envelope, KEY, info=PACKAGE_INFO)
    package = open_package(result.envelope, KEY)
    shipped = set(result.entry.record_ids)
    assert len(shipped) == 20 and package.n_records == 20
    all_records = store.records()
    unshared = all_records.drop(index=list(shipped))
    assert len(unshared) == 40  # 20 not selected + 20 never shareable
    for rid, row in unshared.iterrows():
        assert row["note"].encode() not in plaintext, rid
        for fmt in ("<d", ">d"):  # f8 columns are little-endian, msgpack floats big-endian
            assert struct.pack(fmt, row["score"]) not in plaintext, rid
        assert row["uid"].encode() not in plaintext  # identifiers never leave
    assert set(package.columns["note"]) == set(all_records.loc[list(shipped), "note"])
    assert set(package.columns) == set(FIELDS)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(choice=st.sampled_from(["fraction", "predicate", "ids"]), seed=st.integers(0, 10**6))
def test_package_holds_exactly_the_selected_eligible_records(tmp_path_factory, choice, seed):
    store = make_store(tmp_path_factory.mktemp("s") / "d.db", n=30, private=10)
    rng = np.random.default_rng(seed)
    if choice == "fraction":
        pol = policy(fraction=float(rng.uniform(0.05, 1.0)))
    elif choice == "predicate":
        cut = float(rng.uniform(1234, 1270))  # score: shared as it is
        pol = policy(predicate=lambda df: (df["score"] >= cut).to_numpy())
    else:
        pol = policy(record_ids=frozenset(f"r{j}" for j in rng.choice(30, 7, replace=False)))
    try:
        result = quiet_share(store, pol, random_state=seed)
    except ValidationError as exc:
        assert "No eligible record" in str(exc)
        return
    package = open_package(result.envelope, KEY)
    ids = list(result.entry.record_ids)
    expected = store.records().loc[ids]
    assert list(package.columns["score"]) == list(expected["score"])
    assert all(not i.startswith("r100") for i in ids)  # never a private record
    if choice == "ids":
        assert set(ids) <= pol.record_ids
    if choice == "predicate":
        assert (expected["score"] >= cut).all()
    store.close()


def test_records_marked_shared_only_after_acknowledgement(tmp_path):
    store = make_store(tmp_path / "d.db")
    result = share(store, policy(), KEY.public_key())
    assert store.count("shared") == 0 and store.count("pending") == 40
    assert [e.package_id for e in store.outbox()] == [result.package_id]
    assert store.outbox()[0].envelope == result.envelope
    with pytest.raises(ValidationError, match="No eligible record"):
        share(store, policy(), KEY.public_key())  # pending records are not shared again
    assert store.acknowledge(result.package_id) == 40
    assert store.count("shared") == 40 and store.count("unshared") == 20


def test_dp_charges_the_ledger_through_the_release(tmp_path):
    store = make_store(tmp_path / "d.db", budget=1.2)
    result = share(store, policy(epsilon={"income": 0.5}, fraction=0.25), KEY.public_key())
    entries = store.ledger.entries()
    assert len(entries) == 1 and entries[0].status == "released"
    dp = result.receipt.dp
    assert dp is not None and dp.release_id == entries[0].release_id
    assert dp.user_id is None and entries[0].receipt.user_id == "alice"  # the package is anonymous
    assert dp.epsilon == 0.5 and store.ledger.spent.epsilon == 0.5
    package = open_package(result.envelope, KEY)
    assert package.receipt == result.receipt and package.receipt.k == 4
    incomes = np.asarray(package.columns["income"])
    assert np.allclose(incomes / 0.5, np.round(incomes / 0.5))  # on the schema's grid
    share(store, policy(fraction=0.25), KEY.public_key())
    outbox_before = store.outbox()
    with pytest.raises(BudgetExceededError):
        share(store, policy(fraction=0.25), KEY.public_key())
    assert store.outbox() == outbox_before  # a refused release puts nothing in the outbox
    assert store.ledger.spent.epsilon == 1.0


def test_max_epsilon_refuses_before_charging(tmp_path):
    store = make_store(tmp_path / "d.db")
    pol = policy(privacy_unit="user", epsilon={"income": 0.1}, max_epsilon=1.0)
    with pytest.raises(ValidationError, match="above max_epsilon"):
        share(store, pol, KEY.public_key())
    assert store.ledger.spent.epsilon == 0 and store.outbox() == []


@pytest.mark.parametrize("token", ["not-a-token", b"too short"])
def test_a_token_that_cannot_be_sealed_is_refused_before_charging(tmp_path, token):
    """Found in review (helper-47): the token was checked when the package was sealed,
    after the ledger was charged, so a wrong token cost the user ε for a package that never
    left the device."""
    store = make_store(tmp_path / "d.db", n=4, private=0)
    pol = policy(plan=None, required_k=None, fields=("income",), epsilon={"income": 1.0},
                 privacy_unit="user")
    with pytest.raises(ValidationError, match="token"):
        share(store, pol, KEY.public_key(), token=token)
    assert store.ledger.spent.epsilon == 0 and store.outbox() == []
    assert store.count("eligible") == 4


def test_a_predicate_s_series_selects_by_record_id_not_by_position(tmp_path):
    """Found in review (helper-64): the predicate's result was applied by position, so a
    boolean Series built in another order (a concat of two halves, a sort first) shared the
    records it left out."""
    schema = Schema((Field("x", "numeric", bounds=(0, 100), grid=1.0), Field("note", "text")))
    store = LocalStore(tmp_path / "s.db", schema=schema, user_id="u", epsilon_budget=10.0,
                       key=STORE_KEY)
    store.add_records(pd.DataFrame({"x": [90.0, 10.0, 80.0, 20.0],
                                    "note": ["ok", "PRIVATE", "ok", "PRIVATE"]},
                                   index=list("abcd")))

    def reordered(frame):
        return pd.concat([frame.loc[frame.x <= 50, "x"] > 50, frame.loc[frame.x > 50, "x"] > 50])

    result = share(store, SharingPolicy(fields=("x", "note"), predicate=reordered),
                   KEY.public_key())
    assert sorted(result.entry.record_ids) == ["a", "c"]
    package = open_package(result.envelope, KEY)
    assert "PRIVATE" not in package.columns["note"]
    with pytest.raises(ValidationError, match="index is not the eligible records' ids"):
        share(store, SharingPolicy(fields=("x",), predicate=lambda f: (f.x > 50).iloc[:1]),
              KEY.public_key())


def test_a_predicate_reads_only_the_fields_the_package_carries_as_they_are(tmp_path):
    """helper-87: the predicate was given every field, so ``predicate=lambda f: f.income >
    500`` with ε on income sent exactly the records above 500: the selection told the
    server what the noise was there to hide, uncharged (a generalized quasi-identifier's
    exact value, or a field never shared, the same). It now sees the fields shared as they
    are; reading another is refused, naming it, before any charge."""
    store = make_store(tmp_path / "d.db")
    for read, why in (("income", "local DP"), ("age", "generalizes"), ("uid", "not in")):
        def select(frame, name=read):
            return (frame[name] == frame[name]).to_numpy()

        with pytest.raises(ValidationError, match=rf"predicate read {read!r}.*{why}.*record_ids"):
            quiet_share(store, policy(predicate=select))
        with pytest.raises(ValidationError, match=rf"predicate read {read!r}"):
            quiet_share(store, policy(predicate=lambda f, name=read: getattr(f, name) > 0))
    assert store.ledger.spent.epsilon == 0.0 and not store.outbox()
    seen = []
    result = quiet_share(store, policy(predicate=lambda f: seen.append(list(f.columns))
                                       or (f.score > 1250).to_numpy()))
    assert seen == [["note", "score"]]
    assert (store.records().loc[list(result.entry.record_ids), "score"] > 1250).all()


def test_with_tokens_a_class_is_held_back_within_one_token_period_only(tmp_path):
    """One package per class is what lets the server count packages as people when nothing
    links them. With tokens the server counts k, l and t over the tokens of one period, and
    a period's tokens come from its own issuer key: a device may send a class again with a
    token of another period (a user whose quasi-identifiers never change could otherwise
    share once in all), but not with another token of the same period."""
    from dmt_privacy.privacy_pass import (
        IssuerKey,
        blind_sign,
        parse_token_requests,
        request_tokens,
    )

    def tokens(issuer, n):
        pending = request_tokens(issuer.public_key(), n)
        return pending.finalize(b"".join(
            blind_sign(issuer, m) for m in parse_token_requests(pending.body,
                                                              issuer.public_key())))

    this_period, next_period = IssuerKey.generate(), IssuerKey.generate()
    first, again = tokens(this_period, 2)
    (later,) = tokens(next_period, 1)
    store = LocalStore(tmp_path / "d.db", schema=SCHEMA, user_id="u", epsilon_budget=10.0,
                       key=STORE_KEY)
    same = records(3).assign(age=31.0, zip="a")  # one class of PLAN
    store.add_records(same.iloc[:1])
    pol = policy(requires_token=True)
    sent = quiet_share(store, pol, token=first)
    store.acknowledge(sent.package_id)
    store.add_records(same.iloc[[1]])
    with pytest.raises(AnonymizationError, match="already sent"):
        quiet_share(store, pol, token=again)
    store.add_records(same.iloc[[2]])
    result = quiet_share(store, pol, token=later)
    assert sorted(result.entry.record_ids) == sorted(same.index[1:]) and not result.held_back
    # a server that does not count tokens counts packages: every key holds the class back
    # (helper-93: three shares with tokens of three keys made one device three contributors)
    (other,) = tokens(IssuerKey.generate(), 1)
    store.add_records(records(4).iloc[[3]].assign(age=31.0, zip="a"))
    with pytest.raises(AnonymizationError, match="already sent"):
        quiet_share(store, policy(requires_token=False), token=other)


def test_a_predicate_s_own_errors_stay_its_own_and_a_modified_field_is_hidden(tmp_path):
    """helper-89: a KeyError the predicate raised for its own reasons was reported as reading
    a hidden field (one it may read, named), a list selection of a hidden field gave pandas'
    raw error, and a field a modifier changes was shown before the change."""
    from sklearn.preprocessing import FunctionTransformer

    store = make_store(tmp_path / "d.db")
    own: dict[str, bool] = {}
    with pytest.raises(KeyError) as raised:
        quiet_share(store, policy(predicate=lambda f: own["score"]))
    assert not isinstance(raised.value, ValidationError)
    with pytest.raises(ValidationError, match="predicate read 'income'.*local DP"):
        quiet_share(store, policy(predicate=lambda f: (f[["score", "income"]].sum(axis=1) > 0)
                                  .to_numpy()))
    modified = policy(modifiers={"note": FunctionTransformer()},
                      predicate=lambda f: f["note"].str.startswith("shared").to_numpy())
    with pytest.raises(ValidationError, match="predicate read 'note'.*a modifier changes it"):
        quiet_share(store, modified)
    assert store.ledger.spent.epsilon == 0.0 and not store.outbox()


def test_a_device_sends_each_class_of_the_plan_in_one_package_only(tmp_path):
    """helper-87: the server counts each package as another contributor (nothing links
    packages to devices), so one honest device that shared a record a day in the same class
    filled a k = 5 cohort alone on the fifth day, and its records were released as
    5-anonymous. A device now sends a class in one package only: a later record of a class
    it has sent (pending or acknowledged) is held back, stays eligible, and is named in
    ``ShareResult.held_back``; several records of a class in one package are one
    contributor, as before."""
    store = LocalStore(tmp_path / "d.db", schema=SCHEMA, user_id="u", epsilon_budget=10.0,
                       key=STORE_KEY)
    base = records(4)
    same = base.assign(age=31.0, zip="a")  # one class of PLAN
    store.add_records(same.iloc[:2])
    first = quiet_share(store, policy())
    assert first.n_records == 2 and first.held_back == ()
    spent = store.ledger.spent.epsilon
    store.add_records(same.iloc[[2]])
    with pytest.raises(AnonymizationError, match=r"already sent.*package.*Nothing was shared"):
        quiet_share(store, policy())
    assert store.ledger.spent.epsilon == spent and len(store.outbox()) == 1
    store.acknowledge(first.package_id)  # acknowledged: the same
    with pytest.raises(AnonymizationError, match="already sent"):
        quiet_share(store, policy())
    other = base.iloc[[3]].assign(age=58.0, zip="d")
    store.add_records(other)
    second = quiet_share(store, policy())
    assert list(second.entry.record_ids) == list(other.index)
    assert second.held_back == (same.index[2],)
    assert store.state(same.index[2]).pending_package is None  # held back: still eligible


def test_two_processes_sharing_from_one_store_send_a_class_once(tmp_path, monkeypatch):
    """The hold-back above read the outbox before the package was written to it, and
    share()'s docstring asked apps to share from one process at a time. Two shares at once
    (an app and its background task, each with the store open) both read an outbox without
    the other's package, and each sent a record of one class: two contributors to its k from
    one device. Shares of one store now take turns: the second waits for the first and holds
    its record back. Two store objects on one file stand in for two processes (each its own
    lock file descriptor), each opened in its own thread."""
    import threading

    import dmt_privacy.sharing as sharing

    path = tmp_path / "d.db"
    store = LocalStore(path, schema=SCHEMA, user_id="u", epsilon_budget=10.0, key=STORE_KEY)
    same = records(2).assign(age=31.0, zip="a")  # one class of PLAN
    store.add_records(same)
    second_started, outcome = threading.Event(), {}
    real = sharing._refuse_unpackable

    def pause_the_first(*args, **kwargs):  # between the hold-back check and the outbox
        if threading.current_thread().name == "first":
            second_started.set()
            time.sleep(0.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(sharing, "_refuse_unpackable", pause_the_first)

    def run(name, ids):  # a store object of its own (sqlite3's are bound to a thread)
        try:
            outcome[name] = quiet_share(LocalStore(path, key=STORE_KEY), policy(record_ids=ids))
        except AnonymizationError as error:
            outcome[name] = error

    first = threading.Thread(target=run, name="first", args=("first", [same.index[0]]))
    first.start()
    assert second_started.wait(10)
    second = threading.Thread(target=run, name="second", args=("second", [same.index[1]]))
    second.start()
    first.join(20)
    second.join(20)
    assert outcome["first"].n_records == 1, outcome
    assert isinstance(outcome["second"], AnonymizationError), outcome
    assert "already sent" in str(outcome["second"])
    assert len(store.outbox()) == 1
    assert store.state(same.index[1]).pending_package is None  # held back: still eligible


def test_an_image_outside_its_fields_range_is_left_out_before_any_charge(tmp_path):
    """helper-91: the share-side half of the media range (helper-90) had no test. An image
    with a pixel above the field's bounds would make the server refuse the package: it is
    left out (``out_of_bounds``) before the charge, and alone it is refused, naming the
    image field."""
    schema = Schema((Field("photo", "image", shape=(2, 2), bounds=(0, 255)),
                     Field("label", "categorical", categories=("a", "b"))))
    store = LocalStore(tmp_path / "m.db", schema=schema, user_id="u", epsilon_budget=1.0,
                       key=STORE_KEY)
    store.add_records(pd.DataFrame({
        "photo": [np.full((2, 2), 10.0), np.full((2, 2), 300.0), np.full((2, 2), 255.0)],
        "label": ["a", "b", "a"]}, index=["ok", "hot", "edge"]))
    policy = SharingPolicy(fields=("photo", "label"))
    result = share(store, policy, KEY.public_key())
    assert result.out_of_bounds == ("hot",) and sorted(result.entry.record_ids) == ["edge", "ok"]
    with pytest.raises(ValidationError, match=r"image or audio value.*\['photo'\].*nothing was"):
        share(store, policy, KEY.public_key())


def test_a_cell_the_package_cannot_carry_is_refused_before_charging(tmp_path):
    """Found in review (helper-64): the store takes an image of any numeric dtype, the
    package only some; the package was made after the ledger was charged, so every retry of
    such a share spent ε again (3.0, 6.0, 9.0...) with nothing sent."""
    schema = Schema((Field("photo", "image", shape=(4, 4)),
                     Field("price", "numeric", bounds=(0, 100), grid=1.0)))
    store = LocalStore(tmp_path / "s.db", schema=schema, user_id="u", epsilon_budget=10.0,
                       key=STORE_KEY)
    store.add_records(pd.DataFrame({"photo": [np.zeros((4, 4), dtype=np.int64)] * 2,
                                    "price": [1.0, 2.0]}, index=["a", "b"]))
    for _ in range(2):
        with pytest.raises(ValidationError):
            share(store, SharingPolicy(fields=("photo", "price"), epsilon={"price": 1.0}),
                  KEY.public_key())
    assert store.ledger.spent.epsilon == 0.0 and store.outbox() == []


def test_one_token_goes_into_one_package_only(tmp_path):
    """Found in review (helper-64): nothing on the device kept a token out of a second
    package. An app killed after share() but before it saved its wallet gets the token
    again, and two packages with one token are linked to one device (the server, opening
    the second, sees the double spend). The second share is refused before any charge, and
    a store from before the token table works."""
    from dmt_privacy.privacy_pass import (
        IssuerKey,
        blind_sign,
        parse_token_requests,
        request_tokens,
    )

    issuer = IssuerKey.generate()
    pending = request_tokens(issuer.public_key(), 1)
    (token,) = pending.finalize(b"".join(
        blind_sign(issuer, m) for m in parse_token_requests(pending.body, issuer.public_key())))
    store = make_store(tmp_path / "d.db", n=6, private=0)
    assert store.token_package(token.to_bytes()) is None  # no table yet: none sealed
    pol = policy(plan=None, required_k=None, fields=("income",), epsilon={"income": 1.0},
                 privacy_unit="user", fraction=0.5)
    first = share(store, pol, KEY.public_key(), token=token)
    spent = store.ledger.spent.epsilon
    assert store.token_package(token.to_bytes()) == first.package_id
    with pytest.raises(ValidationError, match=f"already sealed in package {first.package_id}"):
        share(store, pol, KEY.public_key(), token=token)
    assert store.ledger.spent.epsilon == spent and len(store.outbox()) == 1
    with pytest.raises(ValidationError, match="already sealed"):  # the store's own guard
        store.add_to_outbox("p2", b"x", [str(store.records("eligible").index[0])], "{}",
                            token=token.to_bytes())


def test_suppressed_records_stay_on_the_device(tmp_path):
    store = make_store(tmp_path / "d.db", n=0, private=0)
    frame = records(6)
    frame.iloc[:2, frame.columns.get_loc("age")] = [5.0, 99.0]  # outside every fitted class
    store.add_records(frame)
    result = share(store, policy(), KEY.public_key())
    assert set(result.suppressed) == {"r0", "r1"}
    assert result.n_records == 4 and set(store.record_ids("eligible")) == {"r0", "r1"}


def test_modifiers_apply_and_are_named_in_the_receipt(tmp_path):
    class Upper:
        def transform(self, x):
            return x.str.upper()

    store = make_store(tmp_path / "d.db", private=0)
    result = share(store, policy(modifiers={"note": Upper()}), KEY.public_key())
    package = open_package(result.envelope, KEY)
    assert all(v.startswith("SHARED-") for v in package.columns["note"])
    assert result.receipt.modifications == ("note:Upper (40/40 changed)",)


def test_generalized_values_in_the_package(tmp_path):
    store = make_store(tmp_path / "d.db", private=0)
    package = open_package(share(store, policy(), KEY.public_key()).envelope, KEY)
    assert all(isinstance(v, pd.Interval) for v in package.columns["age"])
    assert all(isinstance(v, frozenset) for v in package.columns["zip"])


@pytest.mark.parametrize(("changes", "error", "match"), [
    ({"fraction": 0.5, "record_ids": {"r1"}}, ValidationError, "one of fraction"),
    ({"fraction": 0.0}, ValidationError, "fraction must be"),
    ({"epsilon": {"age": 1.0}}, ValidationError, "two transforms"),
    ({"epsilon": {"other": 1.0}}, ValidationError, "not in fields"),
    ({"required_k": 10}, AnonymizationError, "required_k=10"),
    ({"mechanism": {"income": "oue"}}, ValidationError, "not supported in share packages"),
    ({"max_epsilon": 0.1}, ValidationError, "above max_epsilon"),
    ({"privacy_unit": "device"}, ValidationError, "privacy_unit"),
])
def test_policy_refuses_inconsistent_settings(changes, error, match):
    with pytest.raises(error, match=match):
        policy(**changes)


def test_policy_checked_against_the_schema(tmp_path):
    store = make_store(tmp_path / "d.db", private=0)
    cases = [
        (SharingPolicy(fields=("uid", "score")), ValidationError, "identifier"),
        (SharingPolicy(fields=("age", "score")), ValidationError, "quasi-identifier"),
        (SharingPolicy(fields=("nope",)), SchemaError, "not in schema"),
        (SharingPolicy(fields=("note",), epsilon={"note": 1.0}), SchemaError, "local DP"),
    ]
    for pol, error, match in cases:
        with pytest.raises(error, match=match):
            share(store, pol, KEY.public_key())
    with pytest.raises(ValidationError, match="shareable=False"):
        store.add_records(records(1, start=500, secret=True), shareable=False)
        share(store, policy(record_ids={"r500"}), KEY.public_key())
    assert store.outbox() == [] and store.ledger.spent.epsilon == 0


@pytest.mark.parametrize("categories", [(True, False, "n/a"), (2.5, "x"), (False, 0.5, 1.5)])
def test_a_package_the_device_sizes_under_max_bytes_fits_it(tmp_path, categories):
    """Found in review (helper-48): the widest category was picked by its text (False: 5
    characters), not by what msgpack writes (False: 1 byte, "n/a": 4), so a package sized
    under max_bytes encoded above it, after the ledger was charged. Then (helper-49) a
    column of the widest number alone is written packed, 8 bytes a cell, where the real,
    mixed one takes 9. The device's size is never below the package's."""
    schema = Schema((Field("answer", "categorical", categories=categories),))
    store = LocalStore(tmp_path / "d.db", schema=schema, user_id="u", epsilon_budget=1e4,
                       key=STORE_KEY)
    import msgpack

    widest = max(categories, key=lambda c: len(msgpack.packb(c)))  # most cells keep it
    store.add_records(pd.DataFrame({"answer": [widest] * 300},
                                   index=[f"r{i}" for i in range(300)]))
    pol = SharingPolicy(fields=("answer",), epsilon={"answer": 3.0}, privacy_unit="record",
                        max_bytes=1)
    with pytest.raises(ValidationError, match=r"about ([\d,]+) bytes") as refused:
        quiet_share(store, pol, random_state=1)
    assert store.ledger.spent.epsilon == 0
    sized = int(re.search(r"about ([\d,]+) bytes", str(refused.value))[1].replace(",", ""))
    result = quiet_share(store, pol.evolve(max_bytes=sized), random_state=1)
    assert len(open_sealed(result.envelope, KEY, info=PACKAGE_INFO)) <= sized


class _Noisy:
    """A modifier that draws: each record's note gets a fresh random suffix."""

    def __init__(self, width: int = 8) -> None:
        self.width = width

    def get_params(self, deep=True):
        return {"width": self.width}

    def transform(self, x):
        rng = np.random.default_rng()
        return x.map(lambda v: f"{v}-{rng.integers(10 ** self.width)}")


@pytest.fixture
def trusted(monkeypatch):
    """_Noisy taken for one of the SDK's modifiers, whose draws share() may send again."""
    from dmt_privacy import sharing

    sdk = sharing._reusable
    monkeypatch.setattr(sharing, "_reusable", lambda m: (
        isinstance(m, _Noisy) and not sharing._seeded_params(m)) or sdk(m))


@pytest.mark.usefixtures("trusted")
def test_a_record_shared_again_after_a_refusal_releases_what_it_released_before(tmp_path):
    # helper-106 f2: a device that abandoned a refused package and shared the same records
    # again drew fresh modifications (18–19 of 20 original words visible across 4 packages) and,
    # for its local-DP fields, fresh noise charged again; the server had opened the first.
    store = make_store(tmp_path / "d.db", budget=100.0, private=0)
    pol = policy(modifiers={"note": _Noisy()}, epsilon={"income": 0.5}, privacy_unit="user",
                 record_ids=frozenset(f"r{j}" for j in range(12)))
    first = share(store, pol, KEY.public_key())
    spent = store.ledger.spent.epsilon
    assert first.released_before == () and spent > 0
    store.abandon(first.package_id)  # the server refused it
    again = share(store, pol, KEY.public_key())
    a, b = open_package(first.envelope, KEY), open_package(again.envelope, KEY)
    assert a.columns["note"] == b.columns["note"] and a.columns["income"] == b.columns["income"]
    assert set(again.released_before) == set(first.entry.record_ids)
    assert store.ledger.spent.epsilon == spent  # sent again: post-processing, not charged
    assert b.receipt.dp.epsilon == a.receipt.dp.epsilon  # the package claims the same
    assert b.receipt.dp.n_records == a.receipt.dp.n_records

    # a record not in the first package draws afresh, and only it is charged
    store.abandon(again.package_id)
    wider = share(store, pol.evolve(record_ids=frozenset(f"r{j}" for j in range(16))),
                  KEY.public_key())
    c = open_package(wider.envelope, KEY)
    new = [i for i in wider.entry.record_ids if i not in first.entry.record_ids]
    assert new and set(wider.released_before) == set(first.entry.record_ids)
    before = dict(zip(first.entry.record_ids, a.columns["note"], strict=True))
    for rid, note in zip(wider.entry.record_ids, c.columns["note"], strict=True):
        if rid in before:
            assert note == before[rid]
    assert spent == pytest.approx(0.5 * len(first.entry.record_ids))
    assert store.ledger.spent.epsilon == pytest.approx(spent + 0.5 * len(new))

    # once acknowledged, a record is shared and its draws are dropped
    assert store.acknowledge(wider.package_id) == len(wider.entry.record_ids)
    assert store.draws("note", "any", wider.entry.record_ids) == {}


@pytest.mark.usefixtures("trusted")
def test_another_transformation_draws_afresh_and_is_charged(tmp_path):
    store = make_store(tmp_path / "d.db", budget=100.0, private=0)
    ids = frozenset(f"r{j}" for j in range(12))
    first = share(store, policy(modifiers={"note": _Noisy(8)}, privacy_unit="user",
                                record_ids=ids), KEY.public_key())
    spent = store.ledger.spent.epsilon
    store.abandon(first.package_id)
    # another ε for income and another modifier parameter: nothing is the same transformation
    again = share(store, policy(modifiers={"note": _Noisy(9)}, epsilon={"income": 0.25},
                                privacy_unit="user", record_ids=ids), KEY.public_key())
    assert again.released_before == ()
    assert store.ledger.spent.epsilon == pytest.approx(spent + 12 * 0.25)
    a, b = open_package(first.envelope, KEY), open_package(again.envelope, KEY)
    assert not set(a.columns["note"]) & set(b.columns["note"])


def redact(values):
    """An app's own modifier: digits out (its next version may also take e-mail addresses)."""
    return values.str.replace(r"\d", "#", regex=True)


class _AppModifier:
    def transform(self, values):
        return redact(values)


def test_an_app_s_own_modifier_draws_afresh(tmp_path):
    # helper-125 F1: a function is named by its module and name, not its code, so an app's
    # next version (redacting e-mail addresses too) re-sent the first version's output
    from dmt_privacy.sharing import _reusable, _transform_key

    assert _transform_key("modify", _Noisy(8)) == _transform_key("modify", _Noisy(8))
    assert _transform_key("modify", _Noisy(8)) != _transform_key("modify", _Noisy(9))
    assert not _reusable(_Noisy()) and not _reusable(_AppModifier())
    assert _transform_key("modify", _AppModifier()) is None  # nothing says what it does
    assert _transform_key("modify", redact) is None
    store = make_store(tmp_path / "d.db", private=0)
    ids = frozenset(f"r{j}" for j in range(6))
    for modifier in (_AppModifier(), _Noisy()):
        first = share(store, policy(modifiers={"note": modifier}, epsilon={}, record_ids=ids),
                      KEY.public_key())
        store.abandon(first.package_id)
        again = share(store, policy(modifiers={"note": modifier}, epsilon={}, record_ids=ids),
                      KEY.public_key())
        store.abandon(again.package_id)
        assert again.released_before == ()


def test_the_sdk_s_synonyms_are_drawn_once(tmp_path):
    from dmt_privacy.modify import SynonymReplacer

    schema = Schema((Field("note", "text"),))
    store = LocalStore(tmp_path / "t.db", schema=schema, user_id="u", key=STORE_KEY)
    texts = ["the patient reported severe chest pain after running in the old park",
             "a small dog was found near the large river bank by two children"]
    store.add_records(pd.DataFrame({"note": texts}, index=["a", "b"]))
    pol = SharingPolicy(fields=("note",), modifiers={"note": SynonymReplacer(1.0)})
    seen = []
    for _ in range(3):
        result = share(store, pol, KEY.public_key())
        seen.append(open_package(result.envelope, KEY).columns["note"])
        store.abandon(result.package_id)
    assert seen[0] != texts and seen[0] == seen[1] == seen[2]
    assert result.released_before == ("a", "b")
    other = share(store, pol.evolve(modifiers={"note": SynonymReplacer(0.5)}), KEY.public_key())
    assert other.released_before == ()  # another rate, another transformation


class _SeededNoisy(_Noisy):
    def get_params(self, deep=True):
        return {"width": self.width, "random_state": 0}


@pytest.mark.usefixtures("trusted")
def test_a_draw_from_a_seeded_source_is_never_sent_again(tmp_path):
    # helper-123 F1: a seeded share abandoned, then shared unseeded, sent the seeded noise
    # again under a receipt claiming the secure source; whoever knows the seed removes it.
    store = make_store(tmp_path / "d.db", budget=100.0, private=0)
    pol = policy(modifiers={"note": _SeededNoisy()}, privacy_unit="user",
                 record_ids=frozenset(f"r{j}" for j in range(8)))
    first = quiet_share(store, pol, random_state=0)
    spent = store.ledger.spent.epsilon
    store.abandon(first.package_id)
    again = quiet_share(store, pol.evolve(modifiers={"note": _Noisy()}))
    assert again.released_before == ()
    assert store.ledger.spent.epsilon == pytest.approx(2 * spent)
    a, b = open_package(first.envelope, KEY), open_package(again.envelope, KEY)
    assert a.columns["income"] != b.columns["income"] and b.receipt.dp.secure_random
    assert not set(a.columns["note"]) & set(b.columns["note"])


def test_another_privacy_unit_draws_afresh(tmp_path):
    # helper-123 F2: record-level values (charged 0.5 for the package) re-sent under a
    # user-level claim of 6 × 0.5 got past a budget of 2.
    from dmt_privacy import BudgetExceededError as Refused

    store = make_store(tmp_path / "d.db", budget=2.0, private=0)
    ids = frozenset(f"r{j}" for j in range(6))
    first = share(store, policy(record_ids=ids, privacy_unit="record"), KEY.public_key())
    assert store.ledger.spent.epsilon == 0.5
    store.abandon(first.package_id)
    with pytest.raises(Refused):
        share(store, policy(record_ids=ids, privacy_unit="user"), KEY.public_key())
    assert store.ledger.spent.epsilon == 0.5 and store.outbox() == []


def test_a_field_added_to_the_noise_draws_alone_and_alone_is_charged(tmp_path):
    # helper-123 F4: adding a field redrew every field of the record; each field is its own
    store = make_store(tmp_path / "d.db", budget=100.0, private=0)
    ids = frozenset(f"r{j}" for j in range(10))
    one = policy(record_ids=ids, privacy_unit="user", plan=None, required_k=None,
                 fields=("note", "income"))
    first = share(store, one, KEY.public_key())
    assert store.ledger.spent.epsilon == pytest.approx(5.0)
    store.abandon(first.package_id)
    both = one.evolve(fields=("age", "note", "income"), epsilon={"income": 0.5, "age": 0.25})
    again = share(store, both, KEY.public_key())
    assert store.ledger.spent.epsilon == pytest.approx(5.0 + 10 * 0.25)
    a, b = open_package(first.envelope, KEY), open_package(again.envelope, KEY)
    assert a.columns["income"] == b.columns["income"]
    assert b.receipt.dp.epsilon == pytest.approx(10 * 0.75)  # the package claims both fields
    assert set(again.released_before) == set(ids)


def test_transformations_that_differ_have_keys_that_differ():
    import re as regex

    from dmt_privacy.sharing import _transform_key

    long = "|".join(f"Name{i} Surname{i}" for i in range(30))
    from collections import OrderedDict
    from pathlib import Path

    ordered = (OrderedDict(a=1, b=2), OrderedDict(b=2, a=1))  # rules applied in turn
    pairs = [({1: "a"}, {"1": "a"}), ordered, (Path("/a"), Path("/b")),
             (regex.compile(long), regex.compile(long + "|Zoe Quinn")), (str, "builtins.str"),
             ((1, 2), [1, 2]), (1, 1.0), (True, 1), (np.float32(0.5), 0.5)]
    for x, y in pairs:
        kx, ky = _transform_key("modify", x), _transform_key("modify", y)
        assert kx is not None and ky is not None and kx != ky, (x, y)
    assert _transform_key("modify", np.array([object()], dtype=object)) is None
    assert _transform_key("modify", object()) is None  # nothing says what it does
    # the same transformation whatever the order a plain dict was built in, or a path's type
    assert _transform_key("modify", {"a": 1, "b": 2}) == _transform_key("modify", {"b": 2, "a": 1})
    assert _transform_key("modify", Path("/a")) is not None


def test_a_draw_that_would_not_come_back_as_it_went_is_not_kept(tmp_path):
    store = make_store(tmp_path / "d.db", private=0)
    ids = [f"r{j}" for j in range(3)]
    values = {"r0": ("a", 1), "r1": pd.Timestamp("2026-12-07"), "r2": np.arange(3)}
    result = share(store, policy(record_ids=frozenset(ids), epsilon={}), KEY.public_key())
    store.abandon(result.package_id)
    from dmt_privacy.store import _draw_rows

    rows = _draw_rows({("note", "k"): values}, set(ids))
    assert [r[0] for r in rows] == ["r2"]


def test_a_re_share_drawn_in_parts_is_one_charge_counted_as_a_whole_package_counts(tmp_path):
    # helper-125 F3: each set of fields drawn afresh was charged on its own, so a spend
    # between two charges left the first charged and its noise thrown away. F4: records
    # alike were counted over the set's fields alone (alike in income, not in age: 4 ε).
    store = LocalStore(tmp_path / "d.db", schema=SCHEMA, user_id="alice", epsilon_budget=10.0,
                       key=STORE_KEY)
    frame = records(5).assign(income=500.0, age=[20.0, 30.0, 40.0, 50.0, 60.0])
    store.add_records(frame)
    one = SharingPolicy(fields=("note", "age"), epsilon={"age": 0.25}, privacy_unit="record",
                        record_ids=frozenset(f"r{j}" for j in range(4)))
    first = share(store, one, KEY.public_key())
    assert store.ledger.spent.epsilon == pytest.approx(0.25)
    store.abandon(first.package_id)
    both = one.evolve(fields=("note", "income", "age"), epsilon={"income": 0.5, "age": 0.25},
                      record_ids=frozenset(frame.index))
    again = share(store, both, KEY.public_key())  # r0-r3: income afresh; r4: both afresh
    assert set(again.released_before) == {"r0", "r1", "r2", "r3"}
    assert [e.status for e in store.ledger.entries()] == ["released", "released"]
    # record-level: r4 draws both fields (0.75), r0-r3 income alone (0.5), all of them alike
    # in income but not in age, so no record pays more than 0.75, as a whole package's would
    assert store.ledger.spent.epsilon == pytest.approx(0.25 + 0.75)
    assert again.receipt.dp.epsilon == pytest.approx(0.75)
    assert again.receipt.dp.release_id == store.ledger.entries()[-1].release_id
