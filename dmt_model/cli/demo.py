"""``dmt demo``: the whole loop on simulated users, device and server side.

``--task boston`` (the default) is the regression on the bundled Boston data;
``--task adult``, ``digits`` and ``wordnet-topics`` are the classifiers of
:data:`dmt_model.datasets.CLASSIFICATION_DATASETS` (tabular, images, text).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import time
from pathlib import Path
from typing import Any

from dmt_model.cli._progress import progress

__all__ = ["register", "run_demo"]

SHARE_K = 5
SHARE_EPSILON = 1.0


MARKER = ".dmt-demo"
SUBFOLDERS = ("devices", "server", "outbox", "loop")


def _fresh_workdir(workdir: Path) -> Path:
    """Empty the demo's own folders in ``workdir``; never touch anything else.

    A folder that exists, is not empty and was not made by a previous demo run
    (it has no ``.dmt-demo`` marker) is refused.
    """
    from dmt_privacy.errors import ValidationError

    if workdir.exists() and any(workdir.iterdir()) and not (workdir / MARKER).exists():
        raise ValidationError(
            f"--workdir {workdir} exists and holds files that a demo did not write; "
            "give a new or empty folder.")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text("written by `dmt demo`; its folders are replaced each run\n")
    for sub in SUBFOLDERS:  # a fresh run each time: databases and ledgers start empty
        shutil.rmtree(workdir / sub, ignore_errors=True)
    return workdir


TASKS = ("boston", "adult", "digits", "wordnet-topics")


def run_demo(args: argparse.Namespace) -> int:
    if args.task != "boston":
        return _classifier_demo(args)
    import numpy as np

    from dmt_model.backup import backup, generate_recovery_key, restore
    from dmt_model.datasets import REGRESSION_DATASETS, simulate_users
    from dmt_model.loop import run_loop

    started = time.perf_counter()
    workdir = _fresh_workdir(Path(args.workdir))
    boston = REGRESSION_DATASETS["boston"]
    simulation = simulate_users(boston.load(), n_users=args.users, spread=args.spread,
                                seed=args.seed)
    print(f"Boston housing: {len(simulation.proxy)} proxy records on the server, "
          f"{len(simulation.users)} simulated users, each with an appraisal factor in "
          f"[{1 - args.spread:g}, {1 + args.spread:g}] that scales the prices they see.\n")
    result = run_loop(
        simulation, boston.schema, quasi_identifiers=boston.quasi_identifiers,
        workdir=workdir / "loop", k=SHARE_K, epsilon=SHARE_EPSILON, seed=args.seed,
        progress=lambda items, desc: progress(items, desc=desc, unit="user"),
        on_stage=lambda desc: print(f"{desc} …", flush=True))

    # An encrypted backup of one device's personal model, restored bit for bit.
    first_model = result.devices[simulation.users[0].user_id]
    passphrase = generate_recovery_key()  # what the app shows the user to write down
    archive = first_model.with_suffix(".dmtbackup")
    restored = first_model.with_name("personal-restored.mlmodel")
    backup(first_model, archive, passphrase)
    restore(archive, restored, passphrase)
    same = first_model.read_bytes() == restored.read_bytes()
    digest = hashlib.sha256(restored.read_bytes()).hexdigest()[:16]

    users = result.users
    print("\nPer-user test RMSE ($1000s) on records no model was trained on:")
    header = (f"{'user':>4} {'factor':>6} {'v1':>7} {'personal v1':>13} {'v2':>7} "
              f"{'final':>13} {'oracle':>7}")
    print(header)
    print("-" * len(header))
    for u in users:
        v2 = f"{u.new_version:>7.3f}" if u.new_version is not None else f"{'—':>7}"
        print(f"{u.user_id:>4} {u.factor:>6.3f} {u.foundation:>7.3f} {u.personal:>7.3f} "
              f"{'kept' if u.personalized else '    ':>5} {v2} {u.final:>7.3f} "
              f"{'v2' if u.adopted else '  ':>5} {u.oracle:>7.3f}")
    print("-" * len(header))
    v2_mean = f"{result.mean('new_version'):>7.3f}" if result.v2_published else f"{'—':>7}"
    print(f"{'mean':>11} {result.mean('foundation'):>7.3f} {result.mean('personal'):>7.3f} "
          f"{'':>5} {v2_mean} {result.mean('final'):>7.3f} {'':>5} {result.mean('oracle'):>7.3f}")

    kept = sum(u.personalized for u in users)
    adopted = [u for u in users if u.adopted]
    worse = [u for u in users if u.final > u.personal]
    n_test = round(float(np.mean([len(u.test) for u in simulation.users])))
    sharers = [u for u in users if u.shared_records]
    spent = float(np.mean([u.epsilon_spent for u in sharers])) if sharers else 0.0
    who = ("Every device shared its shareable records" if len(sharers) == len(users) else
           f"{len(sharers)} of {len(users)} devices shared their shareable records (the other "
           f"{len(users) - len(sharers)}\n  were asked to check v2 instead)")
    print(f"""
What happened:
- v1, trained on the server's proxy data, was personalized on each device. The update was
  kept for {kept} of {len(users)} users (only where cross-validation on their own records said it
  helps); mean test RMSE {result.mean('foundation'):.3f} → {result.mean('personal'):.3f}. \
The oracle, which knows each
  user's factor, gets {result.mean('oracle'):.3f}.
- Device {simulation.users[0].user_id} backed up its personal model (Argon2id + AES-256-GCM, \
under a generated
  recovery key for the user to write down) and restored it: \
{'identical' if same else 'DIFFERENT'} (sha256 {digest}…).
- {who}: quasi-identifiers generalized to k={SHARE_K} classes,
  the price under local DP at ε={SHARE_EPSILON:g} per record (a sharing user spent \
ε={spent:.3g} on average in all: a
  user-level figure). The server accepted {result.packages_accepted} packages, rejected \
{result.packages_rejected}, released
  {result.records_released} records for training and kept {result.records_quarantined} \
quarantined (classes with records from fewer
  than {SHARE_K} devices).
- The server retrained on proxy + released records. On its validation data v2 scored
  {result.v2_validation_rmse:.3f} against v1's {result.v1_validation_rmse:.3f}, so v2 was \
{'published' if result.v2_published else 'REFUSED and v1 stays the served version'}.
{_device_check(result)}""")
    if result.v2_published:
        print(f"""- {len(adopted)} of {len(users)} devices adopted v2 after verifying its \
signed release, re-personalized on
  all their records. Mean error {result.mean('personal'):.3f} → \
{result.mean('final'):.3f}. Test error rose for {len(worse)} user(s)
  (each has about {n_test} test records, so one row is mostly noise;
  benchmarks/model_quality.py measures this over 5 seeds and three data sets).""")
    print(f"\nDone in {time.perf_counter() - started:.1f} s. Files are in {workdir}/.")
    return 0 if same else 1


def _classifier_demo(args: argparse.Namespace) -> int:
    """The loop for one of the classification tasks: per-user accuracy and log loss."""
    from dmt_model.datasets import CLASSIFICATION_DATASETS
    from dmt_model.datasets.classifier_users import simulate_classifier_users
    from dmt_model.loop import run_loop
    from dmt_privacy.errors import ValidationError

    dataset = CLASSIFICATION_DATASETS[args.task]
    if not dataset.available():
        raise ValidationError(f"--task {args.task}: its data is not on this machine "
                              "(Adult: ../shared/data/adult or $DMT_ADULT_DIR; WordNet: "
                              "'make wordnet').")
    started = time.perf_counter()
    workdir = _fresh_workdir(Path(args.workdir))
    simulation = simulate_classifier_users(
        dataset.load(), target=dataset.target, n_users=args.users, image=dataset.style_field,
        n_records=dataset.user_records, alpha=args.alpha, seed=args.seed)
    modifiers = dataset.modifiers()
    how = ", ".join(f"{name}: {type(m).__name__}" for name, m in modifiers.items())
    print(f"{dataset.name}: {len(simulation.proxy)} proxy records on the server, "
          f"{len(simulation.users)} simulated users with their own mix of "
          f"{dataset.target!r} (Dirichlet alpha={args.alpha:g})"
          + (", and their own hand (rotation, stroke)" if dataset.style_field else "")
          + f". Shared records are {how or 'k-anonymized'}, their labels under randomized "
          "response.\n")
    result = run_loop(
        simulation, dataset.schema, quasi_identifiers=dataset.quasi_identifiers,
        workdir=workdir / "loop", k=SHARE_K, epsilon=SHARE_EPSILON, seed=args.seed,
        config=dataset.config, modifiers=modifiers,
        progress=lambda items, desc: progress(items, desc=desc, unit="user"),
        on_stage=lambda desc: print(f"{desc} …", flush=True))
    print("\nPer-user test accuracy (log loss) on records no model was trained on:")
    header = (f"{'user':>4} {'v1':>14} {'personal v1':>20} {'v2':>14} {'final':>20} "
              f"{'oracle':>14}")
    print(header)
    print("-" * len(header))

    def cell(u: Any, stage: str) -> str:
        error = getattr(u, stage)
        if error is None:
            return f"{'—':>14}"
        return f"{u.accuracy[stage]:>6.3f} ({error:5.3f})"

    for u in result.users:
        print(f"{u.user_id:>4} {cell(u, 'foundation')} {cell(u, 'personal')} "
              f"{'kept' if u.personalized else '    ':>5} {cell(u, 'new_version')} "
              f"{cell(u, 'final')} {'v2' if u.adopted else '  ':>5} {cell(u, 'oracle')}")
    print("-" * len(header))

    def mean(stage: str) -> str:
        if not result.v2_published and stage == "new_version":
            return f"{'—':>14}"
        return f"{result.mean_accuracy(stage):>6.3f} ({result.mean(stage):5.3f})"

    print(f"{'mean':>4} {mean('foundation')} {mean('personal')} {'':>5} "
          f"{mean('new_version')} {mean('final')} {'':>5} {mean('oracle')}")
    kept = sum(u.personalized for u in result.users)
    adopted = sum(u.adopted for u in result.users)
    shared = sum(u.shared_records for u in result.users)
    verdict = "published" if result.v2_published else "REFUSED, v1 stays served"
    print("\nWhat happened:\n"
          f"- v1 was personalized on each device (its per-class scale and bias); the update "
          f"was kept\n  for {kept} of {len(result.users)} users, where cross-validation on "
          "their own records said it helps.\n"
          f"- Devices shared {shared} records; the server accepted {result.packages_accepted} "
          f"packages, released {result.records_released}\n  records and kept "
          f"{result.records_quarantined} quarantined. v2, retrained on proxy + released "
          f"records, scored\n  log loss {result.v2_validation_error:.3f} against v1's "
          f"{result.v1_validation_error:.3f} on the server's validation data: {verdict}.\n"
          f"{_device_check(result)}\n"
          f"- {adopted} device(s) adopted v2 after verifying its signed release, "
          "re-personalized on their records.")
    print(f"\nDone in {time.perf_counter() - started:.1f} s. Files are in {workdir}/.")
    return 0


def _device_check(result: Any) -> str:
    """What the server's check of v2 on held-out devices found, and what it asks of devices."""
    check = result.v2_validation
    if "device_reports" in check:  # local DP: the held-out devices reported themselves
        share = min(max(check["device_reports_share_better"], 0.0), 1.0)
        told = (f"- The server asked {result.held_out_devices} devices to check v2 instead of "
                "sharing (under local DP\n  it could not check on their noisy records). Each "
                f"checked v2 on its own records and\n  reported one bit (better or "
                f"not, by randomized response at ε={check['device_reports_epsilon']:g}), "
                "with the one\n  token the server gave it when it asked, under the key v2's "
                "signed release names\n  for every device, so only they could report: an "
                f"estimated {share:.0%} of them are\n  "
                f"better off (one-sided {check['device_reports_confidence']:.0%} bounds "
                f"{check['device_reports_lower']:.0%}–{check['device_reports_upper']:.0%}).")
        if check.get("devices_better"):
            return told + ("\n  More than half, so v2's release was signed again saying so, "
                           "and devices adopt it\n  unless their own records show it worse.")
        from dmt_model.version_check import claim_chance

        told += ("\n  That does not show more than half better off, so v2's signed release "
                 "claims\n  nothing about devices, and each device asked v2 to prove itself on "
                 "its own\n  records, at 99 %.")
        reports = int(check["device_reports"])
        at_best = claim_chance(reports, reports, epsilon=check["device_reports_epsilon"],
                               confidence=check["device_reports_confidence"]) if reports else 1.0
        if at_best < 0.5:  # so few reports that "not shown better" says little
            told += (f" Had all {reports} been better off, their reports would have\n  shown "
                     f"it with chance {at_best:.0%}: the check needs more devices, or a "
                     "higher ε.")
        return told
    if "devices" not in check and getattr(result, "epsilon", None) is not None \
            and result.held_out_devices:
        told = (f"- The server asked {result.held_out_devices} devices to check v2 instead "
                "of sharing")
        if not result.v2_published:
            return told + ", but v2 was refused before they could."
        return (told + ": too few to show it better (4 reports are needed), so\n  none "
                "reported; v2's signed release claims nothing about devices and each device "
                "asked\n  v2 to prove itself on its own records, at 99 % (adoption_rule_for).")
    if "devices" not in check:
        told = "- No device's packages were held out to check v2 on"
        if not result.v2_published:
            return told + "."
        return (told + ", so v2's signed release\n  claims nothing about devices and each "
                "device asked v2 to prove itself on its own\n  records, at 99 % "
                "(adoption_rule_for).")
    found = (f"personalized on their records, v2 scored {check['device_error']:.3f} against "
             f"v1's\n  {check['current_device_error']:.3f} (paired t = {check['device_t']:.2f}, "
             f"needs {check['device_t_needed']:.2f}).")
    if not result.v2_published:
        then = ("Refused (not shown better on these devices, or worse on the validation "
                "data): no\n  release, devices keep v1.")
    elif check.get("devices_better"):
        then = ("Its signed release says so, and devices adopt it unless their own\n  records "
                "show it worse.")
    else:
        then = ("Not shown better: its signed release claims nothing about devices, and each\n"
                "  device asked it to prove itself on its own records, at 99 %.")
    return (f"- The server held out {int(check['devices'])} devices' packages from retraining; "
            f"{found}\n  {then}")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    demo = subparsers.add_parser(
        "demo", help="run the whole loop on simulated users (Boston, or --task)",
        description="Train a foundation model on the server's proxy data, export it as Core ML "
                    "models, personalize it on each simulated user's device, back one personal "
                    "model up and restore it, share part of every device's records "
                    f"(k={SHARE_K}-anonymized, the target under local DP at ε={SHARE_EPSILON:g}, "
                    "sealed), ingest them on the server, retrain, and let every device adopt "
                    "the new version re-personalized on the records it never shared. Prints "
                    "per-user test RMSE at each stage.")
    demo.add_argument("--workdir", default="dmt-demo",
                      help="a new or empty folder for the models and databases; a folder of "
                           "an earlier demo run is reused, its demo files replaced "
                           "(default: %(default)s)")
    demo.add_argument("--users", type=int, default=20, help="default: %(default)s")
    demo.add_argument("--spread", type=float, default=0.15,
                      help="appraisal factor spread h: factors ~ U(1-h, 1+h) "
                           "(default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    demo.add_argument("--task", choices=TASKS, default="boston",
                      help="boston: the regression; adult, digits, wordnet-topics: "
                           "classifiers of tabular records, images and text "
                           "(default: %(default)s)")
    demo.add_argument("--alpha", type=float, default=0.5,
                      help="classifiers: how much users' label mixes differ, Dirichlet α "
                           "(smaller: more) (default: %(default)s)")
    demo.set_defaults(func=run_demo)
