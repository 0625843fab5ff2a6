"""Fuzzing the policy's checks: any cell of any supported type in any field, never a crash.

Hypothesis draws packages whose cells are every type the package format carries
(None, bool, int, float with NaN and ±inf, str, bytes, intervals, value sets,
arrays) in the fields of the honest template. Ingestion must answer accepted or
rejected and never raise; whatever is accepted must be readable by retraining.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from attack_kit import KEY, forge, seal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmt_model.server import SharedStore, ingest
from dmt_model.server.training import policy_batches

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.binary(max_size=8))
intervals = st.tuples(st.floats(-1e3, 1e3), st.floats(0, 1e3), st.sampled_from(
    ["both", "left", "right", "neither"])).map(
    lambda t: pd.Interval(t[0], t[0] + t[1], closed=t[2]))
value_sets = st.frozensets(st.one_of(st.integers(-3, 30), st.text(max_size=3), st.booleans(),
                                     st.floats(-5, 5)), min_size=1, max_size=4)
arrays = st.sampled_from([np.zeros(3), np.ones((2, 2), dtype=np.uint8),
                          np.array([np.nan], dtype=np.float32)])
cells = st.one_of(scalars, intervals, value_sets, arrays)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_any_cells_in_any_field_never_crash_and_accepted_means_trainable(
        data, base, policy, foundation, simulation, tmp_path_factory):
    fields = data.draw(st.lists(st.sampled_from(list(base.columns)), min_size=1, max_size=3,
                                unique=True))
    n = base.n_records
    columns = {}
    for name in fields:
        if data.draw(st.booleans()):  # the same cell in every record, or mixed
            columns[name] = [data.draw(cells)] * n
        else:
            columns[name] = data.draw(st.lists(cells, min_size=n, max_size=n))
    try:
        pkg = forge(base, columns=columns)
    except Exception:
        return  # the device-side encoder refused it: nothing to send
    db = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 's.db'}"
    report = ingest([seal(pkg)], db, KEY, policy)
    [outcome] = report.outcomes
    assert outcome.status in ("accepted", "rejected")
    if outcome.status == "accepted":
        batches, read = policy_batches(SharedStore(db, KEY), policy, which="all",
                                       previous=foundation, proxy=simulation.proxy)
        assert read.skipped == {} and len(batches) == 1
        assert all(math.isfinite(float(v)) for v in batches[0].records["MEDV"])
