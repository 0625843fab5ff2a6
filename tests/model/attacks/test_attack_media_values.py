"""helper-90: an image's pixels were checked for dtype, dimensions and finiteness only, never
for their range or the schema's shape, and retraining bounds no pixel: one package of 64
digits with pixels of ±1e6 took v2's test accuracy from 0.964 to 0.629 (±1e12: 0.451).
A media field now carries the range of its values (``bounds``), the server's policy refuses
one without it, and a package whose array lies outside it, or is not of the schema's shape,
is refused at ingestion (and so at every re-read for training)."""

import numpy as np
import pytest

from dmt_model.datasets.classification import DIGITS_SCHEMA
from dmt_model.server import ServerPolicy
from dmt_model.server.validate import PackageRefused, validate_package
from dmt_privacy import Field, Schema
from dmt_privacy.errors import SchemaError, ValidationError
from dmt_privacy.package import PrivacyReceipt, SharePackage

POLICY = ServerPolicy(DIGITS_SCHEMA, min_k=2)


def _package(images):
    return SharePackage.create(DIGITS_SCHEMA.schema_id,
                               {"image": list(images), "digit": [3] * len(images)},
                               PrivacyReceipt())


def test_pixels_outside_the_fields_range_or_of_another_shape_are_refused():
    rng = np.random.default_rng(0)
    honest = [rng.integers(0, 256, (8, 8)).astype(np.uint8) for _ in range(3)]
    validate_package(_package(honest), POLICY)
    validate_package(_package([h.astype(np.float32) for h in honest]), POLICY)
    for bad, reason in ((rng.choice([-1e6, 1e6], (8, 8)), "bounds"),
                        (np.full((8, 8), 255.5), "bounds"),
                        (np.full((8, 8), -1.0), "bounds"),
                        (np.zeros((9, 9), dtype=np.uint8), "bad values"),
                        (np.zeros((8, 8, 3), dtype=np.uint8), "bad values")):
        with pytest.raises(PackageRefused) as refused:
            validate_package(_package([*honest, bad]), POLICY)
        assert refused.value.kind == reason, (bad.shape, refused.value.reason)


def test_a_policy_refuses_a_media_field_without_the_range_of_its_values():
    schema = Schema((Field("photo", "image", shape=(4, 4)), Field("memo", "audio"),
                     Field("label", "categorical", role="target", categories=(0, 1))))
    with pytest.raises(ValidationError, match=r"\['photo', 'memo'\].*range of their values"):
        ServerPolicy(schema, min_k=2)
    ServerPolicy(schema, min_k=2, fields=("label",))
    bounded = Schema((Field("photo", "image", shape=(4, 4), bounds=(0, 255)),
                      Field("memo", "audio", bounds=(-1, 1)), schema["label"]))
    ServerPolicy(bounded, min_k=2)
    with pytest.raises(SchemaError, match="grid"):
        Field("photo", "image", bounds=(0, 255), grid=1.0)
    with pytest.raises(SchemaError, match="bounds apply to numeric"):
        Field("note", "text", bounds=(0, 1))
