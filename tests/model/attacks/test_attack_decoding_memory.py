"""Issue 15.5: decoding memory is bounded by a small multiple of the body.

msgpack allocates what an array header declares before reading elements: 6 KB
of nested headers cost about 66 MiB while being refused. Ingestion now walks
the decrypted bytes first (dmt_model.server.prescan) and refuses deep nesting and
lengths the bytes cannot hold, before the decoder allocates anything.
"""

from __future__ import annotations

import tracemalloc

import pytest
from attack_kit import KEY, forge
from hypothesis import given, settings
from hypothesis import strategies as st

from dmt_model.server import Ingestor
from dmt_model.server.prescan import bounded_shape
from dmt_privacy.package import PACKAGE_INFO, encode_package
from dmt_privacy.seal import seal as seal_bytes

NESTED = b"\x87\xa6format\x01\xa7columns" + (b"\xdd" + (10_000).to_bytes(4, "big")) * 1200
VALUE_SET_BOMB = (b"\x87\xa6format\x01\xa7columns\x91\x93\xa1x\xa3obj\x91\xc9"
                  + (6000).to_bytes(4, "big") + b"\x02" + b"\x91" * 6000)


@pytest.mark.parametrize("plaintext", [NESTED, VALUE_SET_BOMB], ids=["nested", "value set"])
def test_a_small_crafted_body_costs_little_memory(plaintext, policy, tmp_path):
    ingestor = Ingestor(f"sqlite:///{tmp_path / 's.db'}", KEY, policy)
    envelope = seal_bytes(plaintext, KEY.public_key(), info=PACKAGE_INFO)
    tracemalloc.start()
    try:
        outcome = ingestor.ingest_one(envelope)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"\n{len(envelope)} byte body: peak {peak / 2**20:.2f} MiB while refused")
    assert outcome.status == "rejected" and outcome.reason.startswith("unreadable")
    assert peak < 64 * len(envelope) + 2**20


def test_honest_packages_pass_the_walk(base):
    assert bounded_shape(encode_package(base))
    assert bounded_shape(encode_package(forge(base, n=5000)))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=256))
def test_the_walk_never_raises(data):
    assert bounded_shape(data) in (True, False)
