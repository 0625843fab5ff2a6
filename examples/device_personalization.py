"""Client tooling: personalize a shipped updatable model on one user's records, safely,
and again as more records arrive (from the shipped version: ``base=``).

Run: .venv/bin/python examples/device_personalization.py
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from dmt_model.coreml import UpdateSettings, export_coreml, load_spec, predict_frame
from dmt_model.datasets import BOSTON_SCHEMA, load_boston, simulate_users
from dmt_model.foundation import TrainingConfig, train_foundation
from dmt_model.personalize import UpdateEvent, personalize


def main() -> None:
    simulation = simulate_users(load_boston(), spread=0.3, seed=1)
    foundation = train_foundation(simulation.proxy, BOSTON_SCHEMA,
                                  TrainingConfig.for_schema(
                                      BOSTON_SCHEMA, seed=1, records=len(simulation.proxy)))
    folder = Path(tempfile.mkdtemp(prefix="dmt-device-"))
    shipped = export_coreml(foundation, folder / "shipped.mlmodel", updatable=UpdateSettings())
    model = folder / "personal.mlmodel"
    shutil.copyfile(shipped, model)  # the device's personal copy of the installed version

    user = max(simulation.users, key=lambda u: abs(u.factor - 1))  # the most unusual appraiser
    before = predict_frame(load_spec(model), user.test)

    def progress(event: UpdateEvent) -> None:
        if event.kind == "epoch_end" and event.epoch % 25 == 24:
            print(f"  epoch {event.epoch + 1}: mean training MSE {event.loss:.3f}")

    so_far = user.train.iloc[: len(user.train) // 2]  # the records the user has so far
    first = personalize(model, so_far)
    print(f"with {len(so_far)} records: update kept: {first.accepted}")
    # More records arrived: personalize the installed version again on all of them, so that
    # an update kept by chance in an earlier round does not stay (README, *Personalizing
    # again as records arrive*).
    result = personalize(model, user.train, base=shipped, on_event=progress)
    after = predict_frame(load_spec(model), user.test)
    truth = user.test["MEDV"].to_numpy()
    rmse = lambda p: float(((p - truth) ** 2).mean() ** 0.5)  # noqa: E731
    print(f"user {user.user_id} (appraisal factor {user.factor:.3f}), "
          f"{len(user.train)} training records")
    print(f"update kept: {result.accepted} ({result.reason})")
    print(f"test RMSE: foundation {rmse(before):.3f}, personal {rmse(after):.3f}")


if __name__ == "__main__":
    main()
