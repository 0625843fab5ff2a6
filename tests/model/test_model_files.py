"""The files the model side writes: same input, same bytes; never replaced unless asked;
modes that fit what the file is (issue 17, item 6)."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from dmt_model.coreml import UpdateSettings, export_coreml, load_spec, save_spec
from dmt_model.foundation import Foundation
from dmt_privacy.errors import OutputExistsError

ROOT = Path(__file__).resolve().parents[2]

# `dmt export` in a fresh process: the CLI loads coremltools without torch (about 1 s where
# `import coremltools` alone takes 5-8 s), and its bytes must equal the in-process export's.
EXPORT = "import sys\nfrom dmt_model.cli import main\nsys.exit(main(sys.argv[1:]))\n"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_same_export_gives_the_same_bytes_in_any_process(foundation, tmp_path):
    """Protobuf wrote the metadata map in hash order: bytes changed with PYTHONHASHSEED."""
    saved = foundation.save(tmp_path / "f.npz")
    written = set()
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run([sys.executable, "-c", EXPORT, "export", str(saved), "-o",
                               str(tmp_path / f"m{seed}.mlmodel"), "--updatable"],
                              env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert done.returncode == 0, done.stderr
        written.add((tmp_path / f"m{seed}.mlmodel").read_bytes())
    assert len(written) == 1
    here = export_coreml(Foundation.load(saved), tmp_path / "here.mlmodel",
                         updatable=UpdateSettings())
    assert written == {here.read_bytes()}


def test_the_same_foundation_gives_the_same_npz_bytes(foundation, tmp_path, monkeypatch):
    import time

    first = foundation.save(tmp_path / "a.npz").read_bytes()
    later = time.time() + 3 * 86400  # the zip entries' dates were the time of writing
    monkeypatch.setattr(time, "time", lambda: later)
    monkeypatch.setattr(time, "localtime", lambda *_: time.gmtime(later))
    assert foundation.save(tmp_path / "b.npz").read_bytes() == first
    again = Foundation.load(tmp_path / "a.npz")
    assert again.featurizer.to_json() == foundation.featurizer.to_json()


@pytest.mark.parametrize("writer", ["export", "foundation", "save_spec"])
def test_no_writer_replaces_a_file_unless_told(foundation, tmp_path, writer):
    path = tmp_path / "out"
    path.write_bytes(b"precious")
    spec = load_spec(export_coreml(foundation, tmp_path / "m.mlmodel"))
    write = {"export": lambda **kw: export_coreml(foundation, path, **kw),
             "foundation": lambda **kw: foundation.save(path, **kw),
             "save_spec": lambda **kw: save_spec(spec, path, **kw)}[writer]
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        write()
    assert path.read_bytes() == b"precious"
    assert sorted(os.listdir(tmp_path)) == ["m.mlmodel", "out"]  # no temporary file left
    write(overwrite=True)
    assert path.read_bytes() != b"precious"


def test_models_meant_to_ship_are_0644_personal_specs_0600(foundation, tmp_path):
    exported = export_coreml(foundation, tmp_path / "ship.mlmodel", updatable=UpdateSettings())
    saved = foundation.save(tmp_path / "f.npz")
    personal = save_spec(load_spec(exported), tmp_path / "personal.mlmodel")
    assert (_mode(exported), _mode(saved), _mode(personal)) == (0o644, 0o644, 0o600)
