"""The loop's server checks v2 on devices it held out, and its signed release says what it
found: devices ask a version shown better on held-out devices only not to be worse on their
records, and any other version to prove itself (adoption_rule_for)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from test_tasks import SCHEMA, _records, classifier  # noqa: F401 — the toy classifier fixture

from dmt_model.foundation import TrainingConfig
from dmt_privacy.errors import ValidationError


def test_released_records_become_plain_records_a_model_reads(classifier):  # noqa: F811
    featurizer = classifier.featurizer
    released = pd.DataFrame({
        "x": [pd.Interval(-1.0, 3.0), 2.5, (0.0, 1.0)],
        "colour": [frozenset({"red", "blue"}), "green", None],
        "patch": list(np.zeros((3, 4, 4), np.uint8)),
        "level": ["low", "high", "mid"],
    })
    plain = featurizer.plain_released(released, seed=0)
    assert list(plain.columns) == ["x", "colour", "patch", "level"]
    assert plain["x"].tolist() == [1.0, 2.5, 0.5]  # midpoints; numbers as they are
    assert plain["colour"][0] in {"red", "blue"} and plain["colour"][1] == "green"
    assert plain["colour"][2] in {"red", "green", "blue"}  # a missing value: any category
    assert plain["level"].tolist() == ["low", "high", "mid"]
    draws = {featurizer.plain_released(released, seed=s)["colour"][0] for s in range(20)}
    assert draws == {"red", "blue"}  # drawn among what the generalization covers
    without = featurizer.plain_released(released.drop(columns="x"), seed=0)
    assert without["x"].tolist() == [pytest.approx(float(featurizer.mean_[0]))] * 3


def test_the_loop_holds_devices_out_and_the_release_says_what_they_showed(tmp_path):
    from dmt_model.datasets.classifier_users import simulate_classifier_users
    from dmt_model.loop import run_loop
    from dmt_model.personalize import ADOPTION_RULE, DEFAULT_RULE, adoption_rule_for
    from dmt_privacy.release import ReleaseMetadata

    simulation = simulate_classifier_users(_records(600, 21), target="level", n_users=6,
                                           image="patch", n_records=90, seed=0)
    config = TrainingConfig(epochs=20, early_stopping=0.1, patience=5)
    result = run_loop(simulation, SCHEMA, quasi_identifiers=(), workdir=tmp_path / "loop",
                      config=config, epsilon=None)  # labels shared as they are
    assert result.packages_accepted == 6 and result.held_out_devices == 2
    check = result.v2_validation
    assert check["devices"] == 2 and {"device_error", "current_device_error",
                                      "device_t"} <= set(check)
    index = json.loads((tmp_path / "loop/server/models/versions.json").read_text())
    v2 = index[1]
    shared = sum(u.shared_records for u in result.users)
    assert 0 < v2["trained_on"]["shared"] < shared  # the held-out packages were not trained on
    # Which packages are held out, and so v2, varies from run to run (package ids are random,
    # so are the packages' order); what the release says must follow what the gate found.
    assert result.v2_published == (v2["status"] == "published")
    if result.v2_published:
        signed = json.loads((tmp_path / "loop/server/models" / v2["release_file"]).read_text())
        metadata = ReleaseMetadata(**signed["signed"])
        better = bool(check["devices_better"])
        assert metadata.held_out_devices == (2 if better else None)
        assert adoption_rule_for(metadata) == (ADOPTION_RULE if better else DEFAULT_RULE)
    else:
        assert check["error"] > check["current_error"] or check["device_t"] < 0
    with pytest.raises(ValidationError, match="held_out_share"):
        run_loop(simulation, SCHEMA, quasi_identifiers=(), workdir=tmp_path / "other",
                 config=config, held_out_share=1.0)
