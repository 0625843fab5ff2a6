"""The server ingests the packages of examples/device_share.py, then devices record the acks.

Opens each package with the server's private key, validates it against the
server's policy (schema, bounds, k ≥ 5, MEDV ε ≤ 1), rejects replays, stores
it encrypted at rest in DIR/server.db and quarantines classes that have
fewer than 5 packages. Run it twice: the second run changes nothing.

Usage: python examples/server_ingest.py [DIR]   (default: $TMPDIR/dmt-share-example)
The same from the shell (write the policy once with dmt policy init --schema schema.json
--min-k 5 --epsilon MEDV=1 -o policy.json, schema.json being BOSTON_SCHEMA.to_json()):
dmt ingest DIR/outbox --db DIR/server.db --key DIR/server.key --policy policy.json
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from dmt_model.datasets import BOSTON_SCHEMA
from dmt_model.server import ServerPolicy, SharedStore, ingest
from dmt_privacy.files import write_atomically
from dmt_privacy.seal import load_private_key
from dmt_privacy.store import LocalStore

DIR = Path(sys.argv[1] if len(sys.argv) > 1 else Path(tempfile.gettempdir()) / "dmt-share-example")
key = load_private_key(DIR / "server.key")
policy = ServerPolicy(BOSTON_SCHEMA, min_k=5, epsilon={"MEDV": 1.0})
db = f"sqlite:///{DIR / 'server.db'}"

report = ingest(DIR / "outbox", db, key, policy)
print(report.to_text())

# The acknowledgement travels back to the devices: only now are records marked shared.
stored = set(report.stored_ids)
for path in sorted((DIR / "devices").glob("*.db")):
    kept = DIR / "keystore" / f"{path.stem}.generation"  # device_share.py keeps it there
    with LocalStore(path, key=(DIR / "keystore" / f"{path.stem}.key").read_bytes(),
                    min_generation=int(kept.read_text()) if kept.exists() else None) as store:
        for entry in store.outbox():
            if entry.package_id in stored:
                store.acknowledge(entry.package_id)
        write_atomically(kept, str(store.generation).encode(), overwrite=True)
        print(f"{path.stem}: shared {store.count('shared')}, unshared {store.count('unshared')}")

released = SharedStore(db, key).frame("released")
print(f"released for retraining: {len(released)} records")
print(released.drop(columns=["class_key"]).head())
