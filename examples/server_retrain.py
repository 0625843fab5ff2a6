"""The server retrains the foundation on proxy data plus what devices shared, as a new version.

Run after examples/device_share.py and examples/server_ingest.py. Reads the
records the server released (classes with records from at least k devices),
with each package's privacy receipt, retrains the foundation on them in the
form they arrived (intervals as midpoints, value sets spread over their
categories, DP-perturbed values weighted by their noise), and publishes it as
the next version in DIR/models (version 2 on the first run), beside the
earlier ones, each with its evaluation. A version is *served* only if the
publication gate finds it no worse than the current one on the part of the
proxy data the server keeps aside for validation; a refused one is kept,
marked refused, with both figures.

Usage: python examples/server_retrain.py [DIR]   (default: $TMPDIR/dmt-share-example)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pandas as pd

from dmt_model.datasets import BOSTON_SCHEMA, load_boston, simulate_users
from dmt_model.foundation import train_foundation
from dmt_model.server import ServerPolicy, SharedStore
from dmt_model.server.retrain import (
    ModelRegistry,
    retrain_foundation,
    shared_batches,
    validation_split,
)
from dmt_privacy.release import generate_release_key, load_release_signing_key
from dmt_privacy.seal import load_private_key, load_public_key

DIR = Path(sys.argv[1] if len(sys.argv) > 1 else Path(tempfile.gettempdir()) / "dmt-share-example")
simulation = simulate_users(load_boston(), seed=0)  # the same proxy data as the devices' model
held_out = pd.concat([u.test for u in simulation.users])  # for the evaluation only

proxy, validation = validation_split(simulation.proxy, seed=0)  # the gate's data, never trained on

# The release signing key: the app pins its public half; keep the private one off the serving
# machines (here a file beside the example's other keys, as `dmt keygen --release` writes it).
release_key_file = DIR / "keystore" / "release.key"
if not release_key_file.exists():
    release_key_file.parent.mkdir(parents=True, exist_ok=True)
    generate_release_key().save(release_key_file)
release_key = load_release_signing_key(release_key_file)
server_public = load_public_key(DIR / "server.key.pub")  # devices seal packages to it

registry = ModelRegistry(DIR / "models")
foundation = train_foundation(proxy, BOSTON_SCHEMA)
if registry.latest() is None:
    registry.publish(foundation, trained_on={"proxy": len(proxy)}, evaluation_data=held_out,
                     validation_data=validation, notes="proxy data only",
                     signing_key=release_key, server_key=server_public)

store = SharedStore(f"sqlite:///{DIR / 'server.db'}", load_private_key(DIR / "server.key"))
# The same policy server_ingest.py accepted packages under: retraining re-validates every
# stored package against it and weighs records by the noise it implies, never a package's claim.
policy = ServerPolicy(BOSTON_SCHEMA, min_k=5, epsilon={"MEDV": 1.0})
batches = shared_batches(store, policy=policy, previous=foundation, proxy=proxy)
retrained = retrain_foundation(foundation, proxy, batches)
newest = registry.versions()[-1].version
version = registry.publish(
    retrained, evaluation_data=held_out, validation_data=validation,
    notes="proxy + released shared records", signing_key=release_key,
    server_key=server_public,
    trained_on={"proxy": len(proxy), "shared": sum(len(b.records) for b in batches)})
if version.version == newest:  # the registry publishes no version twice
    print(f"nothing new since v{newest}: retrained on the same records, the foundation is "
          f"v{newest}'s; share and ingest more, then run this again")

for v in registry.versions():
    trained_on = ", ".join(f"{n} {what}" for what, n in v.trained_on.items())
    gate = (f"validation RMSE {v.validation['rmse']:.3f}"
            + (f" vs v{v.validation['current_version']:.0f}'s {v.validation['current_rmse']:.3f}"
               if "current_rmse" in v.validation else ""))
    print(f"v{v.version}: {v.mlmodel_file:<24} {v.status:<9} trained on {trained_on} records, "
          f"{gate}, test RMSE {v.evaluation['rmse']:.3f} ({v.notes})")
served = registry.latest()
assert served is not None
print(f"devices fetch {registry.path(served.mlmodel_file)} (v{served.version}) and its signed "
      f"release {registry.path(served.release_file)}, verify it with the app's pinned key "
      f"{release_key.key_id} and adopt it with "
      "dmt_model.personalize.adopt_new_version(new, personal, store.records('unshared'), "
      "shared_records=store.records('shared'), "
      "previous=the_version_they_personalized, release=verified); this version was not "
      "checked on held-out devices, so each device asks it to prove itself on its records")
