"""Issue 15.1: receipts and cells a device makes up are refused; the server's policy decides.

Every package here opens with the server's key (the attacker holds the public key)
and is wrong in one way only. Each must be refused, leave no row behind and never
crash ingestion; the honest template beside them is accepted.
"""

from __future__ import annotations

import json
import math
import sqlite3

import numpy as np
import pandas as pd
import pytest
from attack_kit import KEY, forge, seal, with_field_receipt

from dmt_model.server import ingest
from dmt_privacy.package import PrivacyReceipt


def _hostile(base) -> dict[str, object]:
    n = base.n_records
    dp = base.receipt.dp
    ages = [pd.Interval(float(i), float(i), closed="both") for i in range(n)]
    return {
        "epsilon zero": with_field_receipt(base, "MEDV", epsilon=0.0),
        "epsilon negative": with_field_receipt(base, "MEDV", epsilon=-1.0),
        "mechanism none": with_field_receipt(base, "MEDV", mechanism="none"),
        "noise scale zero": with_field_receipt(base, "MEDV", scale_units=0.0),
        "noise scale inf": with_field_receipt(base, "MEDV", scale_units=math.inf),
        "noise scale negative": with_field_receipt(base, "MEDV", scale_units=-0.001),
        "forged window": (with_field_receipt(base, "MEDV", window_units=(-10**9, 10**9)),
                          {"MEDV": [1e6] * n}),
        "forged bounds": with_field_receipt(base, "MEDV", bounds=(0.0, 10_000.0)),
        "forged grid": with_field_receipt(base, "MEDV", grid=1000.0),
        "gaussian claimed": with_field_receipt(base, "MEDV", mechanism="discrete_gaussian",
                                               delta=1e-5),
        "release epsilon zero": PrivacyReceipt(
            k=base.receipt.k, dp=dataclasses_replace(dp, epsilon=0.0)),
        "user_id in receipt": PrivacyReceipt(
            k=base.receipt.k, dp=dataclasses_replace(dp, user_id="alice@example.com")),
        "insecure random": PrivacyReceipt(
            k=base.receipt.k, dp=dataclasses_replace(dp, secure_random=False)),
        "k claimed, every record alone": (PrivacyReceipt(k=5, dp=dp), {"AGE": ages}),
        "raw quasi-identifiers labelled DP, k None": (
            PrivacyReceipt(k=None, dp=dataclasses_replace(dp, fields=dp.fields + tuple(
                dataclasses_replace(dp.fields[0], field=q) for q in ("AGE", "DIS", "TAX")))),
            {"AGE": [50.0] * n, "DIS": [3.0] * n, "TAX": [300.0] * n}),
        "randomized response keep < flip on CHAS": (
            PrivacyReceipt(k=base.receipt.k, dp=dataclasses_replace(dp, fields=(
                *dp.fields, _krr("CHAS", keep=0.1, flip=0.9)))),
            {"CHAS": [0] * n}),
        "no DP on MEDV": (PrivacyReceipt(k=base.receipt.k), {"MEDV": [25.0] * n}),
        "k below policy": PrivacyReceipt(k=2, dp=dp),
    }


def dataclasses_replace(obj, **changes):
    import dataclasses

    return dataclasses.replace(obj, **changes)


def _krr(field: str, *, keep: float, flip: float):
    from dmt_privacy.dp import FieldReceipt

    return FieldReceipt(field=field, mechanism="k_rr", epsilon=1.0, realized_epsilon=1.0,
                        output_columns=(field,), categories=(0, 1), keep_probability=keep,
                        flip_probability=flip)


def _cells(base) -> dict[str, dict[str, list]]:
    n = base.n_records
    return {
        "string as number": {"CRIM": ["6_5"] * n},
        "bytes as number": {"CRIM": [b"65"] * n},
        "bool as number": {"CRIM": [True] * n},
        "bool as category": {"CHAS": [True] * n},
        "string as category": {"RAD": ["24"] * n},
        "array in a number": {"CRIM": [np.zeros(3)] * n},
        "array in a quasi-identifier": {"AGE": [np.zeros(3)] * n},
        "value set in a numeric quasi-identifier": {"AGE": [frozenset({"x", 999999})] * n},
        "interval outside the bounds": {"AGE": [pd.Interval(-5.0, 500.0, closed="both")] * n},
        "MEDV off the grid": {"MEDV": [25.03] * n},
        "MEDV outside the window": {"MEDV": [1e6] * n},
        "NaN": {"CRIM": [math.nan] * n},
        "None": {"CRIM": [None] * n},
        "unknown field": {"SECRET": [1.0] * n},
        "string in a DP field": {"MEDV": ["25"] * n},
    }


def _cases(base):
    for name, spec in _hostile(base).items():
        receipt, columns = spec if isinstance(spec, tuple) else (spec, None)
        yield name, forge(base, receipt=receipt, columns=columns)
    for name, columns in _cells(base).items():
        yield name, forge(base, columns=columns)


def _tables(db) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                for t in ("packages", "records", "classes")}


def test_every_hostile_receipt_and_cell_is_refused(base, policy, tmp_path):
    db = tmp_path / "server.db"
    honest = ingest([seal(forge(base))], str(db), KEY, policy)
    assert len(honest.accepted) == 1, honest.to_text()
    before = _tables(db)
    cases = list(_cases(base))
    report = ingest([seal(p) for _, p in cases], str(db), KEY, policy)
    accepted = [name for (name, _), o in zip(cases, report.outcomes, strict=True)
                if o.status == "accepted"]
    assert accepted == [], f"accepted: {accepted}"
    assert _tables(db) == before
    assert len(report.rejected) == len(cases) >= 30


def test_refusal_reasons_never_carry_values(base, policy, tmp_path):
    secret = 777.125
    pkg = forge(base, columns={"CRIM": [str(secret)] * base.n_records})
    report = ingest([seal(pkg)], str(tmp_path / "s.db"), KEY, policy)
    assert report.rejected
    text = report.to_text() + json.dumps(report.to_dict())
    assert "777.125" not in text and "777" not in text.replace(report.outcomes[0].package_id, "")


def test_no_user_id_is_ever_stored(base, policy, tmp_path):
    dp = base.receipt.dp
    pkg = forge(base, receipt=PrivacyReceipt(k=base.receipt.k, dp=dataclasses_replace(
        dp, user_id="alice@example.com")))
    db = tmp_path / "s.db"
    ingest([seal(pkg)], str(db), KEY, policy)
    with sqlite3.connect(db) as conn:
        stored = [r[0] for r in conn.execute("SELECT receipt FROM packages")]
    assert not any("alice" in r for r in stored)


def test_what_is_stored_in_clear_never_depends_on_the_values(base, policy, tmp_path):
    """The receipt a package carries travels into the server's clear ``receipt`` column.
    An SDK from before 6 December sent, at record level, the ledger's charge (Σε times the
    largest number of records alike, helper-106) and, before helper-87, how many records
    each modification changed: both functions of the hidden values. The server stores the
    receipt as a current SDK carries it (:meth:`PrivacyReceipt.carried`), whoever made it."""
    from dmt_model.server import SharedStore

    dp = base.receipt.dp
    per_record = math.fsum(f.epsilon for f in dp.fields)
    older = PrivacyReceipt(k=base.receipt.k, dp=dataclasses_replace(
        dp, privacy_unit="record", epsilon=3 * per_record),
        modifications=("text.synonyms:NOTE (2/3 changed)",))
    db = tmp_path / "s.db"
    report = ingest([seal(forge(base, receipt=older))], str(db), KEY, policy)
    assert len(report.accepted) == 1, report.to_text()
    [stored] = SharedStore(f"sqlite:///{db}", KEY).receipts().values()
    assert stored.dp is not None and stored.dp.epsilon == pytest.approx(per_record)
    assert stored.modifications == ("text.synonyms:NOTE",)
    # helper-116: a label that is all count, stripped, was empty, which a receipt refuses:
    # ingestion raised (500 over HTTP; `dmt ingest` stopped at that file, every rerun)
    odd = PrivacyReceipt(k=base.receipt.k, dp=dp, modifications=(" (2/3 changed)",))
    report = ingest([seal(forge(base, receipt=odd)), seal(forge(base))], str(db), KEY, policy)
    assert [o.status for o in report.outcomes] == ["accepted", "accepted"], report.to_text()


@pytest.mark.parametrize("field", ["CRIM", "MEDV"])
def test_strings_never_read_as_numbers(base, policy, tmp_path, field):
    pkg = forge(base, columns={field: ["6_5"] * base.n_records})
    report = ingest([seal(pkg)], str(tmp_path / "s.db"), KEY, policy)
    assert not report.accepted


def test_the_http_service_refuses_them_the_same_way(base, policy, tmp_path, caplog):
    import logging

    from fastapi.testclient import TestClient

    from dmt_model.server.service import create_app

    app = create_app(f"sqlite:///{tmp_path / 's.db'}", KEY, policy)
    cases = list(_cases(base))
    with TestClient(app) as client, caplog.at_level(logging.INFO, "dmt.server.ingest"):
        statuses = {client.post("/v1/packages", content=seal(p)).status_code
                    for _, p in cases}
        honest = client.post("/v1/packages", content=seal(forge(base))).status_code
    assert statuses == {400} and honest == 201
    assert sum(app.state.ingestor.refusals.values()) == len(cases)
    assert len([r for r in caplog.records if "package refused" in r.getMessage()]) == len(cases)
