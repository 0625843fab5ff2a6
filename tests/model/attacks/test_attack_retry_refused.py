"""A device retries a package whose answer it never got. If the server stored it, the retry
must be answered as a replay, whatever changed meanwhile: a device abandons a refused
package (README, *Partial sharing*) and shares its records again.

Found by helper-96: the replay check ran inside the write, after validation and token
redemption, so a retry of a stored package that no longer passed them (its token's period
over, the policy's ε changed) was refused as invalid. A device that followed the README
then charged ε for the same 7 records again, and the server held two packages of one
device in each of its classes: two contributors towards k."""

from __future__ import annotations

import attack_kit
from attack_kit import EPSILON, KEY, K

from dmt_model.server import ServerPolicy
from dmt_model.server.admin import remove_packages
from dmt_model.server.ingest import Ingestor
from dmt_model.server.issuer import TokenIssuer
from dmt_privacy.privacy_pass import request_tokens
from dmt_privacy.sharing import share
from dmt_privacy.store import LocalStore

PERIOD = 7 * 86400


class Clock:
    now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _device(simulation, tmp_path, name):
    store = LocalStore(tmp_path / f"{name}.db", schema=attack_kit.BOSTON_SCHEMA, user_id=name,
                       epsilon_budget=1000.0, key=LocalStore.generate_key())
    store.add_records(simulation.users[0].shareable)
    return store


def test_a_stored_package_sent_again_under_a_new_policy_is_a_replay(simulation, plan, tmp_path):
    db = f"sqlite:///{tmp_path / 'server.db'}"
    store = _device(simulation, tmp_path, "u")
    sent = share(store, attack_kit.sharing_policy(plan), KEY.public_key())
    old = ServerPolicy(attack_kit.BOSTON_SCHEMA, min_k=K, epsilon={"MEDV": EPSILON}, plan=plan)
    new = ServerPolicy(attack_kit.BOSTON_SCHEMA, min_k=K, epsilon={"MEDV": 2 * EPSILON},
                       plan=plan)
    assert Ingestor(db, KEY, old).ingest_one(sent.envelope).status == "accepted"
    retry = Ingestor(db, KEY, new).ingest_one(sent.envelope)  # the answer was lost
    assert retry.replay and "replay" in retry.reason, retry
    # removed by its operator, then sent again under the new policy: still a replay
    remove_packages(db, ids=[sent.package_id])
    again = Ingestor(db, KEY, new).ingest_one(sent.envelope)
    assert again.replay and "removed" in again.reason, again
    # a package never stored that fails the new policy is refused, as before
    other = _device(simulation, tmp_path, "v")
    fresh = share(other, attack_kit.sharing_policy(plan), KEY.public_key())
    refused = Ingestor(db, KEY, new).ingest_one(fresh.envelope)
    assert refused.status == "rejected" and not refused.replay
    assert refused.reason.startswith("epsilon"), refused


def test_a_stored_package_retried_after_its_token_period_is_a_replay(simulation, plan,
                                                                        tmp_path):
    db = f"sqlite:///{tmp_path / 'server.db'}"
    clock = Clock()
    policy = ServerPolicy(attack_kit.BOSTON_SCHEMA, min_k=K, epsilon={"MEDV": EPSILON},
                          plan=plan, tokens_per_period=1)
    ingestor = Ingestor(db, KEY, policy, clock=clock)
    issuer = TokenIssuer(ingestor.token_keys, lambda evidence: evidence.decode() or None, 1)
    _, public = issuer.current_key()
    pending = request_tokens(public, 1)
    token = pending.finalize(issuer.issue(b"phone", pending.body))[0]
    store = _device(simulation, tmp_path, "u")
    sent = share(store, attack_kit.sharing_policy(plan).evolve(requires_token=True),
                 KEY.public_key(), token=token)
    assert ingestor.ingest_one(sent.envelope).status == "accepted"
    clock.now += 2 * PERIOD  # offline for two weeks, then the pending package is retried
    retry = ingestor.ingest_one(sent.envelope)
    assert retry.replay and "replay" in retry.reason, retry


def test_a_stored_package_retried_after_its_key_was_retired_is_a_replay(simulation, plan,
                                                                          tmp_path):
    """A device's retry is the envelope it sealed then. Once the server's key was rotated,
    re-wrapped and retired, nothing opens it: it was refused as unreadable, and a device
    that abandoned it charged ε for the same records again and counted twice in their
    classes, as in helper-96. The server keeps each stored envelope's SHA-256, and a retry
    it can no longer open is answered as the replay it is, removed by the operator or not."""
    from dmt_model.server import SharedStore
    from dmt_privacy.seal import ServerKeyring, generate_server_key

    db = f"sqlite:///{tmp_path / 'server.db'}"
    policy = attack_kit.server_policy(plan)
    old, new = generate_server_key(), generate_server_key()
    store = _device(simulation, tmp_path, "u")
    sent = share(store, attack_kit.sharing_policy(plan), old.public_key())
    assert Ingestor(db, old, policy).ingest_one(sent.envelope).status == "accepted"
    assert SharedStore(db, ServerKeyring([new, old])).rewrap() == 1
    retry = Ingestor(db, new, policy).ingest_one(sent.envelope)  # the old key is retired
    assert retry.replay and retry.package_id == sent.package_id, retry
    remove_packages(db, ids=[sent.package_id], private_key=new)
    again = Ingestor(db, new, policy).ingest_one(sent.envelope)
    assert again.replay and again.package_id == sent.package_id, again
    # an envelope sealed to the retired key and never stored is still unreadable
    other = _device(simulation, tmp_path, "v")
    fresh = share(other, attack_kit.sharing_policy(plan), old.public_key())
    refused = Ingestor(db, new, policy).ingest_one(fresh.envelope)
    assert refused.status == "rejected" and not refused.replay
    assert refused.reason.startswith("unreadable"), refused
