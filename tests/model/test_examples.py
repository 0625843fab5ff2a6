"""The examples run as a user runs them: again in the same folder, as well as fresh."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_device_share_runs_again_in_the_same_folder(tmp_path):
    """A device whose records are all in a package (pending or acknowledged) has nothing new
    to share: a second run says so for every device instead of failing on the first."""
    first = run("device_share.py", str(tmp_path))
    assert first.count("package ") == 20
    again = run("device_share.py", str(tmp_path))
    assert again.count("nothing new to share") == 20
    assert "package " not in again.replace("packages in", "")
    assert "pending 0" not in again  # still waiting for the server's acknowledgement
    assert len(list((tmp_path / "outbox").glob("*.dmt"))) == 20  # nothing sent twice


def test_server_retrain_run_again_with_nothing_new_publishes_no_version(tmp_path):
    """Reported: a second run of server_retrain.py, with nothing new ingested, published v3,
    the same model as v2."""
    run("device_share.py", str(tmp_path))
    run("server_ingest.py", str(tmp_path))
    first = run("server_retrain.py", str(tmp_path))
    assert "\nv2: " in first and "nothing new" not in first
    again = run("server_retrain.py", str(tmp_path))
    assert "nothing new since v2" in again and "\nv3: " not in again
    assert sorted(p.name for p in (tmp_path / "models").glob("*.mlmodel")) == [
        "foundation-v1.mlmodel", "foundation-v2.mlmodel"]
