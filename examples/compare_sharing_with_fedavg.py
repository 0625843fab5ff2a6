"""Benchmark use: one seed of the privacy-utility comparison, through the public API.

Personalizing the proxy foundation alone; DMT sharing half of every user's
training records k-anonymized (k=5) with the target under local DP (ε=1 per
record, so a user sharing n records spends ε=n: the script prints it), then
re-personalizing; DP-FedAvg at user-level ε=1 then personalizing. Every
device personalizes as the SDK's devices do, with ``personalize()``'s rule
(an update is kept only if it beats the model it would replace). The
full benchmark, 5 seeds and more settings with privacy risk, is
benchmarks/privacy_utility.py.

Run: .venv/bin/python examples/compare_sharing_with_fedavg.py   (about a minute)
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from dmt_model.coreml import UpdateSettings, build_spec, predict_frame
from dmt_model.datasets import BOSTON_SCHEMA, load_boston, simulate_users
from dmt_model.federated import DPFedAvg, FedAvg, run_federated
from dmt_model.foundation import train_foundation
from dmt_model.personalize import personalized
from dmt_model.server.retrain import SharedBatch, retrain_foundation
from dmt_privacy.anonymity import KAnonymizer, release_classes
from dmt_privacy.dp import UNACCOUNTED, LocalDPPerturber

QIS = ["CHAS", "RAD", "AGE", "DIS", "TAX"]
sim = simulate_users(load_boston(), spread=0.15, seed=1)
foundation = train_foundation(sim.proxy, BOSTON_SCHEMA)


def personalized_rmse(model, records_of) -> float:
    spec = build_spec(model, updatable=UpdateSettings())
    errors = []
    for user in sim.users:
        updated, _ = personalized(spec, records_of(user))  # the device's keep-or-discard path
        errors.append(np.sqrt(np.mean((predict_frame(updated, user.test)
                                       - user.test["MEDV"].to_numpy()) ** 2)))
    return float(np.mean(errors))


# DMT: the plan is fitted on proxy data and widened; each device generalizes its shareable
# records and perturbs MEDV; the server releases classes with records from ≥ 5 devices.
categorical = {"CHAS": object, "RAD": object}
plan = KAnonymizer(QIS, k=5).fit(sim.proxy.astype(categorical)).plan_.widened(
    {q: BOSTON_SCHEMA[q].bounds for q in ("AGE", "DIS", "TAX")})
received = []
for user in sim.users:
    generalized = plan.apply(user.shareable.astype(categorical)).data.assign(device=user.user_id)
    perturber = LocalDPPerturber(BOSTON_SCHEMA.select(["MEDV"]), epsilon={"MEDV": 1.0},
                                 ledger=UNACCOUNTED)  # a simulation: no device ledger
    release = perturber.fit(generalized[["MEDV"]]).perturb(generalized[["MEDV"]])
    received.append((generalized.assign(MEDV=release.data["MEDV"].to_numpy()), release.receipt))
released, _ = release_classes(pd.concat([r for r, _ in received]), QIS, 5, package_column="device")
batches = [SharedBatch(released[released["device"] == user_id].drop(columns="device"), receipt)
           for user_id, (_, receipt) in enumerate(received)]
retrained = retrain_foundation(foundation, sim.proxy, batches)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    federated = run_federated(
        sim, DPFedAvg(FedAvg(rounds=5, client_fraction=1.0, trainable_layers=2, seed=1),
                      clip_norm=0.1, target_epsilon=1.0, delta=1e-5),
        foundation=foundation, personalize=True)

shared = [len(u.shareable) for u in sim.users]  # ε=1 per record: a user's ε is their count
print(f"released for retraining: {len(released)} of {sum(shared)}; DMT's user-level ε "
      f"(ε=1 per shared record): mean {np.mean(shared):.1f}, max {max(shared)}")
print("per-user test RMSE, one seed:")
print(f"  foundation, personalized on all local records       "
      f"{personalized_rmse(foundation, lambda u: u.train):.3f}")
print(f"  DMT k=5 ε=1/record, re-personalized on unshared    "
      f"{personalized_rmse(retrained, lambda u: u.private):.3f}")
print(f"  DMT k=5 ε=1/record, re-personalized on all local   "
      f"{personalized_rmse(retrained, lambda u: u.train):.3f}")
print(f"  DP-FedAvg ε={federated.epsilon:.2f} (user-level), personalized      "
      f"{federated.mean_personalized_error:.3f}")
print("One seed, 20 users with 4 test records each: differences below about 0.5 are noise "
      "(the 5-seed\nstandard deviations in the README are 0.26-0.60).")
