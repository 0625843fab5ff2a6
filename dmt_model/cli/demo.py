"""``dmt demo``: the device side of the loop on the bundled Boston data, end to end."""

from __future__ import annotations

import argparse
import hashlib
import secrets
import shutil
import time
from pathlib import Path

import numpy as np

__all__ = ["register", "run_demo"]


def _rmse(predicted: np.ndarray, actual: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(predicted, float) - np.asarray(actual, float)) ** 2)))


def run_demo(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from dmt_model.backup import backup, restore
    from dmt_model.coreml import UpdateSettings, export_coreml, load_spec, predict_frame
    from dmt_model.datasets import BOSTON_SCHEMA, load_boston, simulate_users
    from dmt_model.foundation import TrainingConfig, train_foundation
    from dmt_model.personalize import personalize

    started = time.perf_counter()
    workdir = Path(args.workdir)
    (workdir / "users").mkdir(parents=True, exist_ok=True)
    simulation = simulate_users(load_boston(), n_users=args.users, spread=args.spread,
                                seed=args.seed)
    print(f"Boston housing: {len(simulation.proxy)} proxy records on the server, "
          f"{len(simulation.users)} simulated users (appraisal factor spread ±{args.spread}).")

    # 1. Foundation on the server's proxy data.
    config = TrainingConfig(seed=args.seed)
    with tqdm(total=config.epochs, desc="1/5 training foundation", unit="epoch") as bar:
        foundation = train_foundation(simulation.proxy, BOSTON_SCHEMA, config,
                                      on_epoch_end=lambda epoch, loss: bar.update())
    foundation.save(workdir / "foundation.npz")

    # 2. Core ML export, plain and updatable.
    plain = export_coreml(foundation, workdir / "foundation.mlmodel")
    settings = UpdateSettings()
    updatable = export_coreml(foundation, workdir / "foundation-updatable.mlmodel",
                              updatable=settings)
    print(f"2/5 exported {plain} and {updatable} (last {settings.updatable_layers} dense layers "
          f"updatable, SGD lr {settings.learning_rate}, batch {settings.batch_size}, "
          f"{settings.epochs} epochs)")

    # 3. Personalization on each user's records (emulated MLUpdateTask).
    base_spec = load_spec(updatable)
    rows = []
    for user in tqdm(simulation.users, desc="3/5 personalizing users", unit="user"):
        personal = workdir / "users" / f"user-{user.user_id:02d}.mlmodel"
        shutil.copyfile(updatable, personal)
        result = personalize(personal, user.train, seed=args.seed)
        target = user.test["MEDV"].to_numpy()
        before = predict_frame(base_spec, user.test)
        after = predict_frame(load_spec(personal), user.test)
        rows.append((user.user_id, user.factor, len(user.train), len(user.test),
                     _rmse(before, target), _rmse(after, target),
                     _rmse(before * user.factor, target), result.accepted))

    # 4. The table.
    print("\n4/5 per-user test RMSE ($1000s), before and after personalization")
    header = (f"{'user':>4} {'factor':>6} {'train':>5} {'test':>4} {'foundation':>10} "
              f"{'personal':>8} {'oracle':>7}  kept")
    print(header)
    print("-" * len(header))
    for uid, factor, n_train, n_test, rmse_before, rmse_after, oracle, accepted in rows:
        print(f"{uid:>4} {factor:>6.3f} {n_train:>5} {n_test:>4} {rmse_before:>10.3f} "
              f"{rmse_after:>8.3f} {oracle:>7.3f}  {'yes' if accepted else 'no'}")
    means = np.mean(np.array([[r[4], r[5], r[6]] for r in rows]), axis=0)
    print("-" * len(header))
    print(f"{'mean':>22} {means[0]:>10.3f} {means[1]:>8.3f} {means[2]:>7.3f}  "
          f"{sum(r[7] for r in rows)}/{len(rows)} updated")
    print("The oracle knows each user's appraisal factor and multiplies the foundation's "
          "prediction by it.")

    # 5. Encrypted backup and restore of one personal model.
    personal = workdir / "users" / "user-00.mlmodel"
    passphrase = secrets.token_urlsafe(12)
    archive = workdir / "user-00.dmtbackup"
    restored = workdir / "user-00-restored.mlmodel"
    for stale in (archive, restored):
        stale.unlink(missing_ok=True)
    backup(personal, archive, passphrase)
    restore(archive, restored, passphrase)
    same = personal.read_bytes() == restored.read_bytes()
    digest = hashlib.sha256(restored.read_bytes()).hexdigest()[:16]
    print(f"\n5/5 backed up {personal.name} to {archive} (Argon2id + AES-256-GCM, a fresh "
          f"random passphrase), restored it to {restored.name}: "
          f"{'identical' if same else 'DIFFERENT'} (sha256 {digest}…)")
    print(f"\nDone in {time.perf_counter() - started:.1f} s. Files are in {workdir}/.")
    return 0 if same else 1


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    demo = subparsers.add_parser(
        "demo", help="run the device side of the loop on the bundled Boston data",
        description="Train a foundation model on the server's proxy data, export it as plain "
                    "and updatable Core ML models, personalize the updatable model for each "
                    "simulated user, print per-user test RMSE before and after, and back up "
                    "and restore one personal model.")
    demo.add_argument("--workdir", default="dmt-demo",
                      help="where the models are written (default: %(default)s)")
    demo.add_argument("--users", type=int, default=20, help="default: %(default)s")
    demo.add_argument("--spread", type=float, default=0.15,
                      help="appraisal factor spread h: factors ~ U(1-h, 1+h) "
                           "(default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    demo.set_defaults(func=run_demo)
