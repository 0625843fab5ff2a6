"""prepare_package's rows are byte for byte what the slower obvious code makes."""

from __future__ import annotations

import hashlib
import hmac
import json

import msgpack
import numpy as np

from dmt_model.server.ingest import Ingestor
from dmt_model.server.write import _canonical, prepare_package
from dmt_privacy.package import PACKAGE_INFO, decode_package
from dmt_privacy.seal import generate_server_key, open_sealed


def test_prepared_rows_match_the_reference(tmp_path, server_load):
    key = generate_server_key()
    ingestor = Ingestor(f"sqlite:///{tmp_path / 's.db'}", key, server_load.POLICY)
    data_key = ingestor.data_key()
    qis = list(server_load.POLICY.quasi_identifiers or ())
    for records in (1, 3, 40):
        for _, envelope in server_load.make_envelopes(3, key.public_key(), records=records,
                                                      seed=records):
            plaintext = open_sealed(envelope, key, info=PACKAGE_INFO)
            package = decode_package(plaintext)
            prepared = prepare_package(package, plaintext, server_load.POLICY, data_key,
                                       package.columns)
            expected: dict[str, list[int]] = {}
            for i, combo in enumerate(zip(*(package.columns[q] for q in qis), strict=True)):
                description = msgpack.packb([qis, [_canonical(v) for v in combo]])
                class_key = hmac.new(data_key.mac_key, description,
                                     hashlib.sha256).hexdigest()[:32]
                expected.setdefault(class_key, []).append(i)
            assert {r["class_key"]: r["rows"] for r in prepared.record_rows} == {
                k: np.asarray(v, dtype="<u4").tobytes() for k, v in expected.items()}
            assert prepared.per_class == {k: len(v) for k, v in expected.items()}
            assert prepared.package_row["receipt"] == json.dumps(
                package.receipt.to_dict(), sort_keys=True, separators=(",", ":"), default=str)
            assert prepared.package_row["n_records"] == records
