"""What an attacker with only the server's public key can build, and the honest traffic beside it.

The scenario is the demo's: Boston, a k = 5 plan fitted on proxy data and widened
to the schema's bounds, MEDV under local DP with ε = 1 (discrete Laplace), every
other field shared in clear; 20 simulated users share their shareable records.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pandas as pd

from dmt_model.datasets import BOSTON_SCHEMA
from dmt_privacy.anonymity import KAnonymizer
from dmt_privacy.package import PrivacyReceipt, SharePackage, seal_package
from dmt_privacy.seal import generate_server_key
from dmt_privacy.sharing import SharingPolicy, share
from dmt_privacy.store import LocalStore

K = 5
EPSILON = 1.0
QUASI_IDENTIFIERS = ("CHAS", "RAD", "AGE", "DIS", "TAX")
KEY = generate_server_key()


def fit_plan(proxy: pd.DataFrame) -> Any:
    categorical = {f.name: object for f in BOSTON_SCHEMA.by_kind("categorical")}
    domains = {q: b for q in QUASI_IDENTIFIERS if (b := BOSTON_SCHEMA[q].bounds) is not None}
    return KAnonymizer(list(QUASI_IDENTIFIERS), k=K).fit(
        proxy.astype(categorical)).plan_.widened(domains)


def sharing_policy(plan: Any) -> SharingPolicy:
    return SharingPolicy(fields=tuple(BOSTON_SCHEMA.names), plan=plan,
                         epsilon={"MEDV": EPSILON}, required_k=K, privacy_unit="user")


def honest_packages(simulation: Any, plan: Any, folder: Path) -> list[bytes]:
    """One sealed package per simulated user, made by share() as a real device does."""
    folder.mkdir(parents=True, exist_ok=True)
    envelopes = []
    for user in simulation.users:
        store = LocalStore(folder / f"user-{user.user_id:02d}.db", schema=BOSTON_SCHEMA,
                           user_id=f"user-{user.user_id:02d}", epsilon_budget=1000.0,
                           key=LocalStore.generate_key())
        store.add_records(user.shareable)
        envelopes.append(share(store, sharing_policy(plan), KEY.public_key()).envelope)
        store.close()
    return envelopes


def template(simulation: Any, plan: Any, folder: Path) -> SharePackage:
    """An honest package, opened: the attacker copies its receipt and its classes."""
    from dmt_privacy.package import open_package

    return open_package(honest_packages(_one_user(simulation), plan, folder)[0], KEY)


def _one_user(simulation: Any) -> Any:
    return dataclasses.replace(simulation, users=simulation.users[:1])


def forge(base: SharePackage, *, columns: dict[str, list[Any]] | None = None,
          receipt: PrivacyReceipt | None = None, n: int | None = None) -> SharePackage:
    """A new package (fresh id) from ``base``: some columns or the receipt replaced."""
    cols = {name: list(values) for name, values in base.columns.items()}
    if n is not None:
        cols = {name: (values * n)[:n] for name, values in cols.items()}
    cols.update(columns or {})
    receipt = receipt or base.receipt
    if receipt.dp is not None and receipt.dp.n_records != len(next(iter(cols.values()))):
        receipt = dataclasses.replace(receipt, dp=dataclasses.replace(
            receipt.dp, n_records=len(next(iter(cols.values())))))
    return SharePackage.create(base.schema_id, cols, receipt)


def with_field_receipt(base: SharePackage, name: str, **changes: Any) -> PrivacyReceipt:
    """``base``'s receipt with field ``name``'s DP receipt changed (bypassing its checks)."""
    dp = base.receipt.dp
    assert dp is not None
    fields = tuple(_replace_unchecked(f, **changes) if f.field == name else f for f in dp.fields)
    return dataclasses.replace(base.receipt, dp=dataclasses.replace(dp, fields=fields))


def _replace_unchecked(obj: Any, **changes: Any) -> Any:
    new = dataclasses.replace(obj)
    for attr, value in changes.items():
        object.__setattr__(new, attr, value)
    return new


def seal(pkg: SharePackage) -> bytes:
    return seal_package(pkg, KEY.public_key())


def server_policy(plan: Any) -> Any:
    from dmt_model.server import ServerPolicy

    return ServerPolicy(BOSTON_SCHEMA, min_k=K, epsilon={"MEDV": EPSILON}, plan=plan)
