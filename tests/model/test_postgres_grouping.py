"""The PostgreSQL tests run on one pytest-xdist worker, one after another: some crash-restart
the test cluster (``pg_ctl restart -m immediate``), which would cut off a PostgreSQL test
running on the other worker at the same moment (``make test`` once failed so, at the teardown
of ``test_service_killed_and_restarted_mid_load[postgresql]``)."""

from __future__ import annotations

import pytest


def test_every_postgres_test_is_in_the_postgres_group(request):
    if not request.config.getoption("loadgroup", default=False):
        pytest.skip("not run under pytest-xdist's --dist loadgroup")
    grouped = [item for item in request.session.items
               if any(mark.args == ("postgres",) for mark in item.iter_markers("xdist_group"))]
    if not grouped:
        pytest.skip("no PostgreSQL test collected in this run")
    # --dist loadgroup schedules by the "@group" suffix xdist gives a marked test's node id;
    # a marker added after xdist read them would leave it off, and the group would be split.
    assert all(item.nodeid.endswith("@postgres") for item in grouped), [
        item.nodeid for item in grouped if not item.nodeid.endswith("@postgres")][:3]
