"""The privacy-utility benchmark: does sharing part of the data, anonymized, pay off?

On the simulated-user protocol (design.md; 5 seeds, h = 0.15), per-user test
RMSE (mean ± std over seeds of the mean over 20 users) for:

* foundation on proxy data only, and personalized on each user's records;
* centralized raw: all users' training records pooled with the proxy data,
  then personalized;
* local only: a network trained from scratch on the user's own records;
* DMT: the server retrains on proxy data plus the *shareable* half of every
  user's training records, in the form they arrive — raw; k-anonymized
  (k ∈ {2, 5, 10, 25}); perturbed with local DP at a user-level ε ∈
  {1, 4, 8, 64}; and k = 5 with the target alone perturbed at user-level
  ε = 1 — and each user re-personalizes the new foundation on the records
  they never shared; and, as a device running the SDK does, each user decides on
  the new version with ``adopt_new_version`` (``adopted_many``: all its records,
  those it shared never scored, no release claim, so ``UNCHECKED_RULE``), keeping
  its personal model unless the version proves itself (row "adopted as the SDK
  decides"). Every row is also compared with sharing nothing ("foundation,
  personalized") seed by seed;
* FedAvg and DP-FedAvg at user-level ε ∈ {1, 4, 8} (``dmt_model.federated``
  on Flower, the settings of ``benchmarks/federated_baseline.py``), each
  personalized after training.

Privacy at the same unit (issue 13, part 3): every row states a
**user-level** (ε, δ): neighbouring data sets differ by all records of one
user. DMT's local-DP rows give each user a budget ε: the user's
:class:`~dmt_privacy.dp.PrivacyLedger` holds it, the perturber (with
``privacy_unit="user"``) charges it ``n × Σε`` for the user's release of n
records, so the budget is split equally over the records and fields
(``ε / (n · n_fields)`` each, Laplace, δ = 0) and the ledger would refuse more.
DP-FedAvg's ε is central DP (Gaussian noise added by the aggregator on the
clipped sum of the users' updates) from Opacus' RDP accountant at δ = 1e-5.
Raw, k-anonymized and FedAvg rows carry no formal DP and say so; k-anonymity
with a perturbed target is listed as no formal DP too, since its
quasi-identifiers are released generalized, not perturbed. The two DP
guarantees are the same promise to a user (what the released data or models
reveal about all their records) reached by different trust models: DMT's
noise is added on the device, DP-FedAvg's by a server the user must trust to
add it.

How the data is shared here: the k-anonymity plan is fitted on the proxy data
(the data the server may see, design.md), widened to the schema's bounds
(``AnonymizationPlan.widened_to``) so that no device record falls between its
classes, applied to each user's shareable records, and the server releases
only classes holding records from at least k users (packages); the rest stay
quarantined. With 20 users, k = 25 can release nothing. Local DP perturbs the
quasi-identifiers and the target, insensitive fields are shared as they are;
with k and ε together the quasi-identifiers are generalized and the target
alone gets the whole budget. Sealing and ingestion are lossless and tested
elsewhere, so the records go to the retraining in memory, where each shared
record is weighted by the signal-to-noise of its release (``noise_weight``).
Personalization is what a DMT device does in every row: ``personalize()``
with the SDK's defaults (the personal head, a per-user prior, the decision
rule).

The privacy side: with ``--risk``, anonymeter (run in its own environment,
``.venv-risk``, as its numpy pin clashes) estimates singling-out, linkability
and inference risk of what the server received at each k and ε, with the raw
shareable records as the attacker's target and the never-shared records as
control (seed 0).

Writes ``privacy_utility.json`` and ``.png`` into ``--output`` (default
``benchmarks/results``).
Run: ``.venv/bin/python benchmarks/privacy_utility.py [--seeds 5] [--risk]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from dmt_model.coreml import UpdateSettings, build_spec, predict_frame
from dmt_model.datasets import BOSTON_SCHEMA, load_boston, simulate_users
from dmt_model.foundation import Foundation, TrainingConfig, fit_foundation, train_foundation
from dmt_model.personalize import personalized
from dmt_model.server.retrain import SharedBatch, retrain_foundation
from dmt_privacy.anonymity import KAnonymizer, release_classes
from dmt_privacy.dp import LocalDPPerturber, PrivacyLedger
from dmt_privacy.errors import SchemaError
from dmt_privacy.schema import Role, Schema

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
TARGET = "MEDV"
KS = (2, 5, 10, 25)
#: User-level ε of DMT's local-DP shares: ε ∈ {1, 4, 8} to compare with DP-FedAvg at the
#: same user-level ε, and 64 (about what per-record ε = 8 cost a user of this protocol).
USER_EPSILONS = (1.0, 4.0, 8.0, 64.0)
FL_EPSILONS = (1.0, 4.0, 8.0)
NO_DP = {"epsilon": None, "delta": None, "unit": "user", "guarantee": "no formal DP"}


def rmse(predicted: np.ndarray, actual: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(predicted, float) - np.asarray(actual, float)) ** 2)))


# --- what the server receives -------------------------------------------------------
def share(sim, *, k: int | None = None, epsilon: float | None = None, seed: int = 0,
          schema: Schema = BOSTON_SCHEMA) -> tuple[list[SharedBatch], dict]:
    """The users' shareable records as the server receives them, and what was lost.

    ``epsilon`` is each user's budget (user-level, δ = 0): every user opens a
    :class:`PrivacyLedger` with that budget, the perturber (``privacy_unit="user"``)
    charges it ``n_records × Σε`` for the user's one release, so each field of
    each record gets ``epsilon / (n_records · n_fields)``; the ledger would refuse
    anything more. Every field but the schema's insensitive ones is perturbed (with
    ``k``, the quasi-identifiers are generalized instead); insensitive fields travel as
    they are. ``info["user_epsilon"]`` is the largest charge of any user.
    ``schema`` says which fields are quasi-identifiers, the target and their bounds.
    """
    quasi_identifiers = [f.name for f in schema.by_role("quasi-identifier")]
    frames = [u.shareable.assign(_package=u.user_id) for u in sim.users]
    shared = pd.concat(frames)
    info = {"offered": len(shared), "quarantined": 0}
    if k is not None:
        # Categorical quasi-identifiers are generalized to value sets (object dtype), the
        # plan is fitted on proxy data, widened to the schema's bounds, applied per device.
        categorical = {f.name: object for f in schema.by_kind("categorical")}
        plan = KAnonymizer(quasi_identifiers, k=k).fit(
            sim.proxy.astype(categorical)).plan_.widened_to(schema)
        applied = plan.apply(shared.astype(categorical))
        released, quarantined = release_classes(applied.data, quasi_identifiers, k,
                                                package_column="_package")
        info["quarantined"] = len(quarantined)
        shared = released
    if epsilon is None:  # one batch per package, as the server's shared_batches gives them
        return [SharedBatch(records.drop(columns="_package"), package_id=str(package))
                for package, records in shared.groupby("_package", sort=False)
                ] or [SharedBatch(shared.drop(columns="_package"))], info  # (none released)
    # Every field but the insensitive ones is perturbed (quasi-identifiers already
    # generalized under k are not): a sensitive field left as it was would void the user-level
    # ε the row states.
    fields = [f.name for f in schema if f.role is not Role.INSENSITIVE
              and not (k is not None and f.name in quasi_identifiers)]
    batches = []
    charged = []
    for package, records in shared.groupby("_package"):  # one release per device
        ledger = PrivacyLedger(sqlite3.connect(":memory:", isolation_level=None),
                               user_id=str(package), epsilon_budget=epsilon, delta_budget=0.0)
        per_field = epsilon / (len(records) * len(fields))
        perturber = LocalDPPerturber(schema.select(fields),
                                     epsilon=dict.fromkeys(fields, per_field), ledger=ledger,
                                     privacy_unit="user",
                                     random_state=seed * 1000 + int(records["_package"].iloc[0]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the seeded source warns it is not secure: intended
            release = perturber.fit(records[fields]).perturb(records[fields])
        charged.append(ledger.spent.epsilon)
        received = records.drop(columns="_package").copy()
        for f in fields:
            received[f] = release.data[f].to_numpy()
        batches.append(SharedBatch(received, receipt=release.receipt, package_id=str(package)))
    info["user_epsilon"] = max(charged)
    return batches, info


# --- evaluation -----------------------------------------------------------------------
def per_user(model: Foundation, sim, *, personalize_on: str | None,
             held: list | None = None) -> tuple[float, float]:
    """Mean per-user test RMSE of ``model``, without and with personalization; each user's
    personal model is appended to ``held`` when it is given."""
    spec = build_spec(model, updatable=UpdateSettings())
    plain, personal = [], []
    for user in sim.users:
        y = user.test[TARGET].to_numpy()
        plain.append(rmse(predict_frame(spec, user.test), y))
        if personalize_on is not None:
            records = user.train if personalize_on == "train" else user.private
            updated, _ = personalized(spec, records)
            personal.append(rmse(predict_frame(updated, user.test), y))
            if held is not None:
                held.append(updated)
    return float(np.mean(plain)), float(np.mean(personal)) if personal else float("nan")


def adopted_by_devices(model: Foundation, foundation: Foundation, currents: list,
                       sim) -> tuple[float, int]:
    """(mean per-user test RMSE, devices that moved) when each user decides on the new
    version as the SDK's device does: ``adopt_new_version`` on all its local records, its
    current personal model personalized from ``foundation``, the records it shared never
    scored (``shared_records``), and no release (no held-out devices vouched for the
    version, as none are held out here), so the version must prove itself on the device's
    records at 99 % (``UNCHECKED_RULE``); a user who does not move keeps its model."""
    from dmt_model.personalize import adopted_many

    new = build_spec(model, updatable=UpdateSettings())
    outcomes = adopted_many(new, currents, [u.train for u in sim.users],
                            previous=build_spec(foundation, updatable=UpdateSettings()),
                            shared_records=[u.shareable for u in sim.users])
    scores = [rmse(predict_frame(held, u.test), u.test[TARGET].to_numpy())
              for (held, _), u in zip(outcomes, sim.users, strict=True)]
    return float(np.mean(scores)), sum(bool(result.accepted) for _, result in outcomes)


def local_only(sim, seed: int) -> float:
    scores = []
    for user in sim.users:
        model = train_foundation(user.train, BOSTON_SCHEMA, TrainingConfig(seed=seed))
        scores.append(rmse(model.predict(user.test), user.test[TARGET].to_numpy()))
    return float(np.mean(scores))


def federated_rows(sim, foundation: Foundation, seed: int) -> tuple[dict, dict]:
    """FedAvg and DP-FedAvg at user-level ε ∈ FL_EPSILONS on Flower, personalized after
    training, with the settings of benchmarks/federated_baseline.py; and each row's privacy."""
    from dataclasses import replace

    from federated_baseline import CLIP_NORM, DELTA, DP_FEDAVG, FEDAVG

    from dmt_model.federated import DPFedAvg, run_federated

    rows, privacy = {}, {}
    plain = run_federated(sim, replace(FEDAVG, seed=seed), foundation=foundation,
                          personalize=True)
    rows["FedAvg"], rows["FedAvg, personalized"] = plain.mean_error, plain.mean_personalized_error
    privacy["FedAvg"] = NO_DP
    for epsilon in FL_EPSILONS:
        strategy = DPFedAvg(replace(DP_FEDAVG, seed=seed), clip_norm=CLIP_NORM,
                            target_epsilon=epsilon, delta=DELTA)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            private = run_federated(sim, strategy, foundation=foundation, personalize=True)
        name = f"DP-FedAvg ε={epsilon:g}"
        rows[name], rows[f"{name}, personalized"] = (private.mean_error,
                                                     private.mean_personalized_error)
        privacy[name] = {"epsilon": private.epsilon, "delta": DELTA, "unit": "user",
                         "guarantee": "central DP: Gaussian noise on the clipped sum of the "
                                      "users' updates (Flower), Opacus RDP accountant"}
    return rows, privacy


def run_seed(data: pd.DataFrame, seed: int, spread: float) -> tuple[dict, dict, dict]:
    sim = simulate_users(data, spread=spread, seed=seed)
    config = TrainingConfig(seed=seed)
    rows: dict[str, float] = {}
    lost: dict[str, dict] = {}
    privacy: dict[str, dict] = {}
    foundation = train_foundation(sim.proxy, BOSTON_SCHEMA, config)
    currents: list = []  # each user's personal model before anything is shared
    rows["foundation (proxy only)"], rows["foundation, personalized"] = per_user(
        foundation, sim, personalize_on="train", held=currents)
    pooled = pd.concat([sim.proxy, *[u.train for u in sim.users]])
    central = fit_foundation(foundation.featurizer, foundation.featurizer.transform(pooled),
                             foundation.featurizer.target_values(pooled), config)
    rows["centralized raw"], rows["centralized raw, personalized"] = per_user(
        central, sim, personalize_on="train")
    rows["local only"] = local_only(sim, seed)
    for name in ("foundation (proxy only)", "foundation", "local only"):
        privacy[name] = {"epsilon": 0.0, "delta": 0.0, "unit": "user",
                         "guarantee": "nothing leaves the device"}
    privacy["centralized raw"] = NO_DP
    settings = [("DMT raw", {})]
    settings += [(f"DMT k={k}", {"k": k}) for k in KS]
    settings += [(f"DMT ε={e:g}", {"epsilon": e}) for e in USER_EPSILONS]
    settings += [("DMT k=5, target ε=1", {"k": 5, "epsilon": 1.0})]
    for name, kwargs in settings:
        batches, info = share(sim, seed=seed, **kwargs)
        lost[name] = info
        privacy[name] = NO_DP if "epsilon" not in kwargs or "k" in kwargs else {
            "epsilon": info["user_epsilon"], "delta": 0.0, "unit": "user",
            "guarantee": "local DP on the device (Laplace), charged to the user's ledger"}
        if "k" in kwargs and "epsilon" in kwargs:
            privacy[name] = NO_DP | {"note": f"target under local DP at user-level ε="
                                              f"{info['user_epsilon']:g}; quasi-identifiers "
                                              "k-anonymized (no formal DP)"}
        model = retrain_foundation(foundation, sim.proxy, batches, config)
        rows[f"{name}, no re-personalization"], rows[f"{name}, re-personalized"] = per_user(
            model, sim, personalize_on="private")
        if name in ("DMT raw", "DMT k=5, target ε=1"):
            _, rows[f"{name}, re-personalized on all local records"] = per_user(
                model, sim, personalize_on="train")
        rows[f"{name}, adopted as the SDK decides"], info["adopted"] = adopted_by_devices(
            model, foundation, currents, sim)
    fl_rows, fl_privacy = federated_rows(sim, foundation, seed)
    rows.update(fl_rows)
    privacy.update(fl_privacy)
    return rows, lost, privacy


def row_privacy(name: str, privacy: dict) -> dict:
    """The (ε, δ) of a result row: that of the setting it belongs to."""
    for suffix in (", re-personalized on all local records", ", adopted as the SDK decides",
                   ", no re-personalization",
                   ", re-personalized", ", personalized"):
        if name.endswith(suffix):
            name = name[:-len(suffix)]
            break
    return privacy[name]


def privacy_text(entry: dict) -> str:
    if entry["epsilon"] is None:
        return "no formal DP"
    return f"ε={entry['epsilon']:.3g}, δ={entry['delta']:g}"


# --- privacy risk (anonymeter, in its own environment) ----------------------------------
def as_plain_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Generalized cells as values an attacker's tooling can read: midpoints and labels."""
    out = frame.copy()
    for column in out.columns:
        values = out[column].tolist()
        if any(isinstance(v, pd.Interval) for v in values):
            out[column] = [(v.left + v.right) / 2 if isinstance(v, pd.Interval) else v
                           for v in values]
        elif any(isinstance(v, frozenset) for v in values):
            out[column] = ["|".join(map(str, sorted(v))) if isinstance(v, frozenset) else str(v)
                           for v in values]
    return out


#: The two column groups Boston's linkability attack joins (fixed before the schema split
#: its quasi-identifiers in halves; kept so the published risk figures stay comparable).
BOSTON_LINK_COLUMNS = (("CRIM", "ZN", "INDUS", "NOX", "RM", "PTRATIO"),
                       ("AGE", "DIS", "TAX", "B", "LSTAT"))
#: Attacks per anonymeter evaluator at most, to bound its time on large tables. Measured on 2
#: busy cores (load 4.5), 6 cases: Adult's 839 shared records uncapped 13 s, Friedman's 1,048
#: capped at 1,000 22 s; 5 cases of 2,104 records 16 s capped, 36-45 s uncapped.
ANONYMETER_ATTACKS = 1000
#: Field kinds anonymeter reads; images, text and audio are dropped from its tables.
ANONYMETER_KINDS = ("numeric", "categorical")


def attack_settings(schema: Schema, columns: Sequence[str] | None = None, *,
                    link_columns: tuple[Sequence[str], Sequence[str]] | None = None) -> dict:
    """How anonymeter attacks records of ``schema`` with these ``columns`` (default: its fields).

    The inference attack guesses the schema's target (as a class when it is
    categorical); categorical fields are read as labels; linkability joins the
    quasi-identifiers split in two halves, or all the other fields split so when
    fewer than two quasi-identifiers remain (``link_columns`` overrides the split).
    Image, text and audio fields, and columns the schema does not declare, are
    dropped: anonymeter reads only numbers and labels. Returns ``{"secret",
    "categorical", "link_columns", "columns" (kept, in order), "dropped"}``.
    Raises :class:`SchemaError` when the schema has no target, or fewer than two
    readable fields besides it (nothing to link).
    """
    names = list(schema.names if columns is None else columns)
    kept = [n for n in names if n in schema and schema[n].kind.value in ANONYMETER_KINDS]
    dropped = [n for n in names if n not in kept]
    secret = schema.target
    if secret is None or secret.name not in kept:
        found = "none" if secret is None else f"{secret.name!r}, not a readable column here"
        raise SchemaError(
            f"Schema {schema.name!r}: anonymeter's inference attack guesses the target "
            f"(found: {found}); give the schema a numeric or categorical field with role "
            "'target' and pass its column.")
    others = [n for n in kept if n != secret.name]
    if len(others) < 2:
        raise SchemaError(
            f"Schema {schema.name!r}: anonymeter needs two numeric or categorical fields "
            f"besides the target {secret.name!r} to link records; it has {others} "
            f"(dropped as unreadable: {dropped}). Its risk is not measurable this way.")
    if link_columns is None:
        quasi = [n for n in others if schema[n].role.value == "quasi-identifier"]
        pool = quasi if len(quasi) >= 2 else others
        half = (len(pool) + 1) // 2
        link_columns = (pool[:half], pool[half:])
    groups = [list(group) for group in link_columns]
    unknown = [n for group in groups for n in group if n not in others]
    if len(groups) != 2 or not all(groups) or unknown:
        raise SchemaError(
            f"link_columns {link_columns!r}: give two non-empty groups of the columns "
            f"{others} (not the target); unknown: {unknown}.")
    return {"secret": secret.name,
            "categorical": [n for n in kept if schema[n].kind.value == "categorical"],
            "link_columns": groups, "columns": kept, "dropped": dropped}


def anonymeter_risks(target: pd.DataFrame, control: pd.DataFrame,
                     received: Mapping[str, pd.DataFrame], schema: Schema, *, seed: int = 0,
                     link_columns: tuple[Sequence[str], Sequence[str]] | None = None,
                     n_attacks: int | None = ANONYMETER_ATTACKS) -> dict:
    """anonymeter's singling-out, linkability and inference risk of each released table.

    ``target``: the records the attacker wants to learn about (what devices
    shared, before any protection); ``control``: records of the same population
    never released (anonymeter's baseline); ``received``: case name → the
    records the server received in that case (generalized cells are read as
    midpoints and labels, ``as_plain_table``; rows with a missing cell count as
    not released). The attack follows :func:`attack_settings`; each evaluator
    runs ``min(len(target), len(control)) - 1`` attacks, at most ``n_attacks``
    (``None``: no cap), seeded by ``seed``.

    Returns ``{"cases": {name: {"released", "n_attacks", "singling_out",
    "linkability", "inference"}}, "settings": attack_settings(...) | {"n_attacks",
    "n_attacks_cap", "capped", "seed", "target_records", "control_records"},
    "seconds"}`` with each risk ``{"risk": r, "ci": [low, high]}`` (95 %);
    ``{"error": stderr}`` when the script fails, and ``{}`` (after printing why)
    when ``.venv-risk`` is missing (``make risk-env``) or the schema leaves
    anonymeter nothing to link (image and text tasks).
    """
    python = ROOT / ".venv-risk" / "bin" / "python"
    if not python.exists():
        print("(risk skipped: run `make risk-env` to create .venv-risk with anonymeter)")
        return {}
    try:
        settings = attack_settings(schema, list(target.columns), link_columns=link_columns)
    except SchemaError as error:
        if link_columns is not None:
            raise
        print(f"(risk skipped: {error})")
        return {}
    bad = [name for name in received if not name or "/" in name or "\0" in name]
    missing = {name: sorted(set(settings["columns"]) - set(frame.columns))
               for name, frame in received.items()}
    if bad or any(missing.values()):
        raise ValueError(f"received: case names must be file names (got {bad}) and every "
                         f"frame needs the target's columns (missing: "
                         f"{ {n: m for n, m in missing.items() if m} }).")
    available = min(len(target), len(control)) - 1
    attacks = available if n_attacks is None else min(available, n_attacks)
    settings |= {"n_attacks": attacks, "n_attacks_cap": n_attacks,
                 "capped": attacks < available, "seed": seed,
                 "target_records": len(target), "control_records": len(control)}
    columns = settings["columns"]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dmt-risk-") as name:
        folder = Path(name)
        (folder / "attack.json").write_text(json.dumps(
            {key: settings[key] for key in ("secret", "categorical", "link_columns", "seed")}
            | {"n_attacks": attacks}))
        as_plain_table(target[columns]).to_csv(folder / "target.csv", index=False)
        as_plain_table(control[columns]).to_csv(folder / "control.csv", index=False)
        for case, frame in received.items():
            as_plain_table(frame[columns]).to_csv(folder / f"received {case}.csv", index=False)
        # Its own environment's libraries: Flower's Ray backend sets PYTHONPATH in this
        # process to its whole sys.path, which made .venv-risk import this venv's numpy,
        # pandas and scikit-learn when a Flower run came first.
        environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",
                                                                        "PYTHONHOME")}
        out = subprocess.run([str(python), str(ROOT / "benchmarks" / "risk_anonymeter.py"),
                              str(folder), *received], capture_output=True, text=True,
                             check=False, env=environment)
    if out.returncode != 0:
        print(out.stderr[-2000:])
        return {"error": out.stderr[-2000:]}
    return {"cases": json.loads(out.stdout), "settings": settings,
            "seconds": time.perf_counter() - started}


def risk(data: pd.DataFrame, spread: float) -> dict:
    """anonymeter risk of what the server received at each k and ε (seed 0), per case."""
    sim = simulate_users(data, spread=spread, seed=0)
    cases = {"raw": {}, **{f"k={k}": {"k": k} for k in KS},
             **{f"ε={e:g}": {"epsilon": e} for e in USER_EPSILONS},
             "k=5, target ε=1": {"k": 5, "epsilon": 1.0}}
    received = {name: pd.concat([b.records for b in share(sim, seed=0, **kwargs)[0]])
                for name, kwargs in cases.items()}
    result = anonymeter_risks(pd.concat([u.shareable for u in sim.users]),
                              pd.concat([u.private for u in sim.users]), received,
                              BOSTON_SCHEMA, seed=0, link_columns=BOSTON_LINK_COLUMNS)
    return result.get("cases", result)


# --- reporting ---------------------------------------------------------------------------
def plot(summary: dict, risks: dict, path: Path, seeds: int, spread: float) -> None:
    """Utility on top, anonymeter risk below (when measured), against ε (left) and k (right);
    each panel has one y axis, and the legends sit outside the data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_risk = bool(risks) and "error" not in risks
    fig, axes = plt.subplots(2 if with_risk else 1, 2, figsize=(12, 7.8 if with_risk else 4.4),
                             sharex="col", sharey="row", squeeze=False)
    columns = (("user-level ε (local DP for DMT, central DP for DP-FedAvg)", USER_EPSILONS,
                "ε={:g}"),
               ("k (k-anonymity of the quasi-identifiers)", KS, "k={}"))
    for column, (label, xs, key) in enumerate(columns):
        ax = axes[0][column]
        if column == 0:  # DMT and DP-FedAvg at the same user-level ε
            series = [("DMT ε={:g}, re-personalized", USER_EPSILONS, "o-", "tab:purple", 0.96,
                       "DMT (local DP), re-personalized"),
                      ("DMT ε={:g}, adopted as the SDK decides", USER_EPSILONS, "^-",
                       "tab:green", 1.0, "DMT (local DP), adopted as the SDK decides"),
                      ("DP-FedAvg ε={:g}, personalized", FL_EPSILONS, "s-", "tab:red", 1.04,
                       "DP-FedAvg (Flower), personalized")]
            lines = {"foundation, personalized": "tab:blue",
                     "FedAvg, personalized": "tab:red"}
        else:
            series = [("DMT k={}, re-personalized", KS, "o-", "tab:purple", 0.96,
                       "DMT, re-personalized"),
                      ("DMT k={}, adopted as the SDK decides", KS, "^-", "tab:olive", 1.0,
                       "DMT, adopted as the SDK decides"),
                      ("DMT k={}, no re-personalization", KS, "s--", "tab:orange", 1.04,
                       "DMT, no re-personalization")]
            lines = {"foundation, personalized": "tab:blue",
                     "centralized raw, personalized": "green"}
        for pattern, values, style, color, shift, legend_name in series:
            names = [pattern.format(x) for x in values]
            if not all(n in summary for n in names):
                continue
            ax.errorbar([x * shift for x in values], [summary[n]["mean"] for n in names],
                        yerr=[summary[n]["std"] for n in names], fmt=style, capsize=3,
                        color=color, label=legend_name)
        for name, color in lines.items():
            ax.axhline(summary[name]["mean"], color=color, ls=":", lw=1.5,
                       label=f"{name} (no formal DP)" if name.startswith("FedAvg") else name)
        ax.set_title(f"per-user test RMSE against {label.split(' (')[0]}")
        ax.grid(alpha=0.3)
        if with_risk:
            risk_ax = axes[1][column]
            for metric, color in (("singling_out", "tab:red"), ("linkability", "tab:orange"),
                                  ("inference", "tab:brown")):
                values = [risks[key.format(x)][metric] for x in xs]
                low = [v["risk"] - v["ci"][0] for v in values]
                high = [v["ci"][1] - v["risk"] for v in values]
                risk_ax.errorbar(xs, [v["risk"] for v in values], yerr=[low, high], fmt="x-",
                                 capsize=3, color=color, label=metric.replace("_", "-"))
            for metric, style in (("singling_out", "tab:red"), ("inference", "tab:brown")):
                risk_ax.axhline(risks["raw"][metric]["risk"], color=style, ls=":", lw=1)
            for x in xs:
                if risks[key.format(x)].get("released") == 0:
                    risk_ax.annotate("nothing\nreleased", (x, 0.0), xytext=(0, 12),
                                     textcoords="offset points", ha="center", fontsize=8)
            risk_ax.set_ylim(-0.02, 1.02)
            risk_ax.set_title(f"anonymeter risk against {label.split(' (')[0]} (seed 0)")
            risk_ax.grid(alpha=0.3)
        bottom = axes[-1][column]
        bottom.set_xscale("log")
        bottom.minorticks_off()
        bottom.set_xticks(list(xs))
        bottom.set_xticklabels([f"{x:g}" for x in xs])
        bottom.set_xlabel(label)
    axes[0][0].set_ylabel("RMSE ($1000s), mean ± std over seeds")
    legend: dict = {}
    for ax in axes[0]:
        legend.update(zip(*reversed(ax.get_legend_handles_labels()), strict=True))
    title = f"h = {spread:g}, {seeds} seed{'' if seeds == 1 else 's'}"
    axes[0][1].legend(list(legend.values()), list(legend), fontsize=8, loc="upper left",
                      bbox_to_anchor=(1.02, 1.0), title=title, title_fontsize=8)
    if with_risk:
        axes[1][0].set_ylabel("attacker's advantage (95 % CI)")
        axes[1][1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                          title="risk (dotted: raw records)", title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


#: The row every other is compared with seed by seed: each user personalizes the proxy
#: foundation on their records and shares nothing.
NOTHING_SHARED = "foundation, personalized"


def paired(per_seed: Mapping[str, list[float]]) -> dict[str, dict[str, float]]:
    """Each row against :data:`NOTHING_SHARED` in the same seeds: the mean and standard
    deviation of the per-seed differences (negative: users better off than sharing nothing)
    and in how many seeds users were worse off."""
    base = np.asarray(per_seed[NOTHING_SHARED])
    out = {}
    for name, values in per_seed.items():
        difference = np.asarray(values) - base
        out[name] = {"mean": float(difference.mean()),
                     "std": float(difference.std(ddof=1)) if len(difference) > 1 else 0.0,
                     "seeds_worse": int((difference > 0).sum())}
    return out


def report(per_seed: dict, privacy: dict, lost: dict, risks: dict, *, seeds: list[int],
           spread: float, output: Path, seconds: float,
           moved: Mapping[str, list[int]] | None = None) -> None:
    """Print the table, write privacy_utility.json and draw the plot."""
    moved = dict(moved or {})
    summary = {name: {"mean": statistics.mean(v), "std": statistics.stdev(v) if len(v) > 1
                      else 0.0} for name, v in per_seed.items()}
    against = paired(per_seed)
    reference = summary["centralized raw, personalized"]["mean"]
    print(f"\nper-user test RMSE, mean ± std over {len(seeds)} seeds, h = {spread}; "
          "privacy: user-level (ε, δ)")
    for name, s in summary.items():
        print(f"{name:<58} {s['mean']:6.3f} ± {s['std']:.3f}  "
              f"{100 * (s['mean'] / reference - 1):+6.1f} % vs centralized raw + pers.  "
              f"{privacy_text(row_privacy(name, privacy))}")
    print(f"\nagainst sharing nothing ({NOTHING_SHARED}), paired by seed (users' RMSE "
          f"difference, mean ± std; seeds of {len(seeds)} where users were worse off)")
    for name, d in against.items():
        if name != NOTHING_SHARED:
            print(f"{name:<58} {d['mean']:+6.3f} ± {d['std']:.3f}  worse in {d['seeds_worse']}")
    if moved:
        print(f"\ndevices (of {len(seeds)} × 20) that adopted the new version as the SDK "
              "decides: " + ", ".join(f"{n}: {sum(v)}" for n, v in moved.items()))
    print(f"\nrecords quarantined by the server (seed {seeds[-1]}): " + ", ".join(
        f"{n}: {i['quarantined']}/{i['offered']}" for n, i in lost.items() if i["quarantined"]))
    if risks:
        print("\nanonymeter risk on what the server received (seed 0):")
        for name, r in risks.items():
            if name != "error":
                print(f"  {name:<10} " + "  ".join(
                    f"{m} {r[m]['risk']:.3f} [{r[m]['ci'][0]:.3f}, {r[m]['ci'][1]:.3f}]"
                    for m in ("singling_out", "linkability", "inference")))
    output.mkdir(parents=True, exist_ok=True)
    (output / "privacy_utility.json").write_text(json.dumps(
        {"seeds": len(seeds), "seed_list": seeds, "spread": spread, "per_seed": per_seed,
         "summary": summary, "against_nothing_shared": against,
         "devices_adopting_per_seed": moved,
         "privacy": {name: row_privacy(name, privacy) for name in summary},
         "privacy_by_setting": privacy,
         "privacy_unit": "user-level: neighbouring data sets differ by all records of one user",
         "quarantined_last_seed": lost, "risk": risks, "seconds": seconds}, indent=2))
    plot(summary, risks, output / "privacy_utility.png", len(seeds), spread)
    print(f"\nwrote {output / 'privacy_utility.json'} and privacy_utility.png ({seconds:.0f} s)")


def merge(folders: list[Path], output: Path) -> None:
    """One report from runs over different seeds (``--first-seed``), e.g. run side by side."""
    runs = [json.loads((folder / "privacy_utility.json").read_text()) for folder in folders]
    runs.sort(key=lambda run: run["seed_list"][0])
    per_seed: dict[str, list[float]] = {}
    privacy: dict[str, dict] = {}
    moved: dict[str, list[int]] = {}
    for run in runs:
        for name, values in run["per_seed"].items():
            per_seed.setdefault(name, []).extend(values)
        for name, counts in run.get("devices_adopting_per_seed", {}).items():
            moved.setdefault(name, []).extend(counts)
        for name, entry in run["privacy_by_setting"].items():
            if name not in privacy or (entry["epsilon"] or 0) > (privacy[name]["epsilon"] or 0):
                privacy[name] = entry
    risks = next((run["risk"] for run in runs if run["risk"]), {})
    report(per_seed, privacy, runs[-1]["quarantined_last_seed"], risks,
           seeds=[s for run in runs for s in run["seed_list"]], spread=runs[0]["spread"],
           output=output, seconds=sum(run["seconds"] for run in runs), moved=moved)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="run seeds FIRST..FIRST+SEEDS-1 (to split a run over processes)")
    parser.add_argument("--spread", type=float, default=0.15)
    parser.add_argument("--risk", action="store_true", help="measure anonymeter risk too")
    parser.add_argument("--plot-only", action="store_true",
                        help="redraw the plot from OUTPUT/privacy_utility.json")
    parser.add_argument("--risk-only", action="store_true",
                        help="measure anonymeter's risks again into OUTPUT/privacy_utility.json "
                             "and redraw its plot; train nothing")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="FOLDER",
                        help="report the runs saved in these folders together into OUTPUT")
    parser.add_argument("--output", type=Path, default=RESULTS,
                        help="folder for the results (default benchmarks/results)")
    args = parser.parse_args()
    if args.risk_only:
        path = args.output / "privacy_utility.json"
        saved = json.loads(path.read_text())
        saved["risk"] = risk(load_boston(), saved["spread"])
        path.write_text(json.dumps(saved, indent=2))
        plot(saved["summary"], saved["risk"], args.output / "privacy_utility.png",
             saved["seeds"], saved["spread"])
        print(f"wrote the risks into {path} and redrew privacy_utility.png")
        return
    if args.plot_only:
        saved = json.loads((args.output / "privacy_utility.json").read_text())
        plot(saved["summary"], saved["risk"], args.output / "privacy_utility.png",
             saved["seeds"], saved["spread"])
        print(f"drew {args.output / 'privacy_utility.png'}")
        return
    if args.merge:
        merge(args.merge, args.output)
        return
    data = load_boston()
    started = time.perf_counter()
    per_seed: dict[str, list[float]] = {}
    moved: dict[str, list[int]] = {}
    lost: dict = {}
    privacy: dict[str, dict] = {}
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    for seed in seeds:
        rows, lost, spent = run_seed(data, seed, args.spread)
        for name, value in rows.items():
            per_seed.setdefault(name, []).append(value)
        for name, info in lost.items():
            if "adopted" in info:
                moved.setdefault(name, []).append(info["adopted"])
        for name, entry in spent.items():  # the largest ε any seed spent
            if name not in privacy or (entry["epsilon"] or 0) > (privacy[name]["epsilon"] or 0):
                privacy[name] = entry
        print(f"seed {seed} done ({time.perf_counter() - started:.0f} s)", flush=True)
    risks = risk(data, args.spread) if args.risk else {}
    report(per_seed, privacy, lost, risks, seeds=seeds, spread=args.spread, output=args.output,
           seconds=time.perf_counter() - started, moved=moved)


if __name__ == "__main__":
    sys.exit(main())
