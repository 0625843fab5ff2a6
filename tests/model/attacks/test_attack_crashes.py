"""Issue 15.4: crafted packages never crash ingestion, and nothing stored can break retraining.

A crafted package is refused with the one opaque outcome and counted; the honest
packages of the same batch are stored, on the first run and on every re-run.
"""

from __future__ import annotations

import argparse
import math
import sqlite3

import numpy as np
import pytest
from attack_kit import KEY, forge, seal, with_field_receipt

from dmt_model.cli import ingest as cli_ingest
from dmt_model.server import ingest
from dmt_privacy.seal import save_private_key


def _crafted(base) -> dict[str, object]:
    n = base.n_records
    return {
        "array cells in a quasi-identifier": forge(base, columns={"RAD": [np.zeros(2)] * n}),
        "array cells in a numeric quasi-identifier": forge(base, columns={"AGE": [np.ones(4)] * n}),
        "scale_units inf": forge(base, receipt=with_field_receipt(base, "MEDV",
                                                                  scale_units=math.inf)),
        "scale_units negative": forge(base, receipt=with_field_receipt(base, "MEDV",
                                                                       scale_units=-0.001)),
        "value set in a numeric field": forge(base,
                                              columns={"AGE": [frozenset({"x", 999999})] * n}),
        "bytes in a category": forge(base, columns={"CHAS": [b"\x00"] * n}),
        "nested value set in TAX": forge(base, columns={"TAX": [frozenset({1.5, "a"})] * n}),
    }


def _run_cli(argv):
    parser = argparse.ArgumentParser(prog="dmt")
    cli_ingest.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.mark.parametrize("name", ["array cells in a quasi-identifier",
                                  "array cells in a numeric quasi-identifier",
                                  "value set in a numeric field", "bytes in a category",
                                  "nested value set in TAX"])
def test_a_crafted_package_does_not_abort_the_batch(base, policy, tmp_path, name, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(10):
        (folder / f"honest-{i:02d}.dmt").write_bytes(seal(forge(base)))
    (folder / "crafted.dmt").write_bytes(seal(_crafted(base)[name]))
    save_private_key(KEY, tmp_path / "server.key")
    (tmp_path / "policy.json").write_text(policy.to_json())
    argv = ["ingest", str(folder), "--db", str(tmp_path / "s.db"), "--key",
            str(tmp_path / "server.key"), "--policy", str(tmp_path / "policy.json")]
    for _ in range(2):  # and on a re-run
        assert _run_cli(argv) == 0
        with sqlite3.connect(tmp_path / "s.db") as conn:
            assert conn.execute("SELECT COUNT(*) FROM packages").fetchone()[0] == 10
    out = capsys.readouterr().out
    assert "rejected     1 package(s)" in out


def test_crafted_packages_are_refused_and_counted(base, policy, tmp_path):
    crafted = _crafted(base)
    report = ingest([seal(p) for p in crafted.values()], str(tmp_path / "s.db"), KEY, policy)
    assert not report.accepted and len(report.rejected) == len(crafted)
    assert sum(report.to_dict()["reasons"].values()) == len(crafted)
