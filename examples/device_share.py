"""Devices share part of their records: k-anonymized by a fitted plan, MEDV under local DP, sealed.

Each simulated Boston user keeps a LocalStore; half of the user's training
records are shareable, the rest never leave the device. Packages go to
DIR/outbox/*.dmt, sealed to the server's public key (made here if DIR has no
server.key yet). Nothing is marked shared until the server acknowledges:
run examples/server_ingest.py next. Run again in the same DIR, a device whose records
are all in a package (pending or acknowledged) says it has nothing new to share.

Usage: python examples/device_share.py [DIR]   (default: $TMPDIR/dmt-share-example)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from dmt_model.datasets import BOSTON_SCHEMA, load_boston, simulate_users
from dmt_privacy import AnonymizationError
from dmt_privacy.anonymity import KAnonymizer
from dmt_privacy.files import write_atomically
from dmt_privacy.seal import generate_server_key, load_public_key, save_private_key, save_public_key
from dmt_privacy.sharing import SharingPolicy, share
from dmt_privacy.store import LocalStore

DIR = Path(sys.argv[1] if len(sys.argv) > 1 else Path(tempfile.gettempdir()) / "dmt-share-example")
(DIR / "outbox").mkdir(parents=True, exist_ok=True)
(DIR / "devices").mkdir(exist_ok=True)
if not (DIR / "server.key").exists():  # the server's `dmt keygen -o server.key`
    key = generate_server_key()
    save_private_key(key, DIR / "server.key")
    save_public_key(key.public_key(), DIR / "server.key.pub")
public_key = load_public_key(DIR / "server.key.pub")


def device_key(device: str) -> bytes:
    """The store key of a simulated device. DIR/keystore stands in for the platform keystore
    (iOS Keychain, Android Keystore: see the README); on a real device the key is never a
    file beside the store."""
    path = DIR / "keystore" / f"{device}.key"
    if not path.exists():
        write_atomically(path, LocalStore.generate_key(), make_parents=True)  # mode 0600
    return path.read_bytes()


def last_generation(device: str) -> int | None:
    """The store generation the app saw last, kept beside the key (outside the store file):
    an older copy of the file put back, or the file deleted, is then refused instead of
    resetting the user's ledger."""
    path = DIR / "keystore" / f"{device}.generation"
    return int(path.read_text()) if path.exists() else None


def keep_generation(device: str, store: LocalStore) -> None:
    write_atomically(DIR / "keystore" / f"{device}.generation",
                     str(store.generation).encode(), overwrite=True, make_parents=True)


simulation = simulate_users(load_boston(), seed=0)
# The server fits the plan on its proxy data (CHAS and RAD as categories, released as value
# sets), widens it to the schema's bounds so no device record falls between its classes,
# and ships it with the model.
qis = ["CHAS", "RAD", "TAX"]
plan = KAnonymizer(qis, k=5).fit(simulation.proxy.astype({"CHAS": object, "RAD": object})).plan_
plan = plan.widened_to(BOSTON_SCHEMA)
policy = SharingPolicy(
    fields=("CHAS", "RAD", "TAX", "RM", "LSTAT", "PTRATIO", "MEDV"),
    plan=plan,                # quasi-identifiers released as their class's generalization
    epsilon={"MEDV": 1.0},    # the target under local DP, charged to each user's ledger
    required_k=5,
)

for user in simulation.users:
    path = DIR / "devices" / f"user{user.user_id}.db"
    with LocalStore(path, schema=BOSTON_SCHEMA, user_id=f"user{user.user_id}",
                    epsilon_budget=10.0,  # user-level: 7 records at ε=1 cost 7
                    key=device_key(path.stem),
                    min_generation=last_generation(path.stem)) as store:
        try:
            if len(store) == 0:
                store.add_records(user.shareable)
                store.add_records(user.private, shareable=False)  # never leaves the device
            if store.count("eligible") == 0:  # all in a package: pending or acknowledged
                print(f"user {user.user_id:2}: nothing new to share (shared "
                      f"{store.count('shared')}, pending {store.count('pending')})")
                continue
            try:
                result = share(store, policy, public_key)
            except AnonymizationError as exc:  # every record suppressed, or in a class it sent
                print(f"user {user.user_id:2}: nothing shared ({exc})")
                continue
            (DIR / "outbox" / f"{result.package_id}.dmt").write_bytes(result.envelope)
            print(f"user {user.user_id:2}: package {result.package_id[:8]}… {result.n_records} "
                  f"records, {len(result.suppressed)} suppressed, {len(result.held_back)} held "
                  f"back (class already sent), ε spent "
                  f"{store.ledger.spent.epsilon:g}/{store.ledger.budget.epsilon:g}, "
                  f"shared {store.count('shared')}, pending {store.count('pending')}")
        finally:  # after every write: kept where the key is, outside the store file
            keep_generation(path.stem, store)
print(f"packages in {DIR / 'outbox'}; next: python examples/server_ingest.py {DIR}")
