"""Simulated users: the protocol every benchmark of the SDK runs on.

Boston has no users, so the SDK defines them, reproducibly from a seed:

1. Shuffle the rows; ``proxy_fraction`` (30 %) become the server's proxy data,
   the rest the user pool.
2. Sort the pool by a location feature (``DIS``) and cut it into ``n_users``
   contiguous blocks, so each user sees one neighbourhood (not identically
   distributed).
3. Each user has an appraisal factor drawn from U(1 − spread, 1 + spread)
   that multiplies the target on that user's records.
4. Each user's records: ``test_fraction`` (25 %) are test; of the rest,
   ``share_fraction`` (50 %) may be shared and the remainder never leaves the
   device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from dmt_privacy.errors import ValidationError

__all__ = ["SimulatedUser", "Simulation", "simulate_users"]


@dataclass(frozen=True)
class SimulatedUser:
    """One simulated device owner and the records on that device."""

    user_id: int
    factor: float
    shareable: pd.DataFrame
    private: pd.DataFrame
    test: pd.DataFrame

    @property
    def train(self) -> pd.DataFrame:
        """Every record the user may train on (shareable and private)."""
        return pd.concat([self.shareable, self.private])


@dataclass(frozen=True)
class Simulation:
    proxy: pd.DataFrame
    users: tuple[SimulatedUser, ...]
    seed: int
    spread: float


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValidationError(f"{name} must be in [0, 1), got {value!r}.")


def simulate_users(
    data: pd.DataFrame,
    *,
    n_users: int = 20,
    proxy_fraction: float = 0.3,
    spread: float = 0.15,
    test_fraction: float = 0.25,
    share_fraction: float = 0.5,
    location: str = "DIS",
    target: str = "MEDV",
    seed: int = 0,
) -> Simulation:
    """Split ``data`` into proxy data and ``n_users`` simulated users (see module doc)."""
    for name, value in (("proxy_fraction", proxy_fraction), ("test_fraction", test_fraction),
                        ("share_fraction", share_fraction)):
        _check_fraction(name, value)
    if not 0.0 <= spread < 1.0:
        raise ValidationError(f"spread must be in [0, 1), got {spread!r}.")
    for column in (location, target):
        if column not in data.columns:
            raise ValidationError(f"Column {column!r} is missing; the protocol needs it.")
    rng = np.random.default_rng(seed)
    shuffled = data.iloc[rng.permutation(len(data))]
    n_proxy = round(proxy_fraction * len(data))
    proxy, pool = shuffled.iloc[:n_proxy], shuffled.iloc[n_proxy:]
    if len(pool) < 4 * n_users:
        raise ValidationError(
            f"n_users={n_users} leaves fewer than 4 records per user ({len(pool)} in the pool); "
            "use fewer users."
        )
    pool = pool.sort_values(location, kind="stable")
    users = []
    for user_id, block in enumerate(np.array_split(np.arange(len(pool)), n_users)):
        factor = float(rng.uniform(1.0 - spread, 1.0 + spread)) if spread else 1.0
        records = pool.iloc[block].copy()
        records[target] = records[target] * factor
        records = records.iloc[rng.permutation(len(records))]
        n_test = max(1, round(test_fraction * len(records)))
        test, train = records.iloc[:n_test], records.iloc[n_test:]
        n_share = round(share_fraction * len(train))
        users.append(SimulatedUser(user_id, factor, train.iloc[:n_share], train.iloc[n_share:],
                                   test))
    return Simulation(proxy=proxy, users=tuple(users), seed=seed, spread=spread)
