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
