"""``dmt export`` reads the model file without torch (issue 17, items 2 and 6): the spec
equals the one built from the torch Foundation, damaged files are clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from dmt_model.cli import main
from dmt_model.coreml import UpdateSettings, build_spec
from dmt_model.model_file import read_foundation
from dmt_privacy.errors import ModelFileError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_file(foundation, tmp_path_factory):
    return foundation.save(tmp_path_factory.mktemp("model_file") / "f.npz")


@pytest.mark.parametrize("updatable", [None, UpdateSettings(), UpdateSettings(updatable_layers=3)])
def test_the_spec_from_the_file_equals_the_spec_from_torch(foundation, model_file, updatable):
    arrays = read_foundation(model_file)
    assert build_spec(cast(Any, arrays), updatable=updatable) == build_spec(
        foundation, updatable=updatable)


def test_the_arrays_are_the_networks(foundation, model_file):
    arrays = read_foundation(model_file)
    for (weight, bias), layer in zip(arrays.dense, foundation.dense_layers, strict=True):
        np.testing.assert_array_equal(weight, layer.weight.detach().numpy())
        np.testing.assert_array_equal(bias, layer.bias.detach().numpy())


def test_export_does_not_import_torch(model_file, tmp_path):
    code = ("import sys\nfrom dmt_model.cli import main\n"
            f"assert main(['export', {str(model_file)!r}, '-o', {str(tmp_path / 'm.mlmodel')!r},"
            " '--updatable']) == 0\n"
            "print(sorted(m for m in ('torch', 'sklearn') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    wrote, modules = done.stdout.strip().splitlines()
    assert modules == "[]"
    assert wrote.startswith(f"Wrote {tmp_path / 'm.mlmodel'} (") and "sha256" in wrote


def test_truncated_and_foreign_files_are_model_file_errors(model_file, tmp_path, capsys):
    data = model_file.read_bytes()
    cases = {
        "truncated.npz": data[: len(data) // 2],
        "empty.npz": b"",
        "text.npz": b"not a model",
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ModelFileError, match="damaged or truncated"):
            read_foundation(tmp_path / name)
        assert main(["export", str(tmp_path / name), "-o", str(tmp_path / "m.mlmodel")]) == 1
        err = capsys.readouterr().err
        assert err.startswith("dmt export: error: ") and "dmt train" in err, err
        assert "Traceback" not in err and "BadZipFile" not in err
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ModelFileError, match="no 'meta' entry"):
        read_foundation(tmp_path / "other.npz")
    with pytest.raises(ModelFileError, match="No foundation model"):
        read_foundation(tmp_path / "absent.npz")


def test_weights_that_do_not_chain_are_refused(model_file, tmp_path):
    with np.load(model_file, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["w:dense.2.weight"] = arrays["w:dense.2.weight"][:, :-1]
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ModelFileError, match="dense layer 2 takes"):
        read_foundation(tmp_path / "bad.npz")


def test_entries_are_read_only_when_used_and_only_as_large_as_they_are(model_file, tmp_path):
    """Every entry was read before anything was checked: a 1 MB file whose unused entry
    inflates to 128 MiB cost that much memory, and a header declaring 10^14 numbers raised
    MemoryError, not ModelFileError (helper-68)."""
    import tracemalloc
    import zipfile

    bomb = tmp_path / "bomb.npz"
    bomb.write_bytes(model_file.read_bytes())
    with zipfile.ZipFile(bomb, "a", zipfile.ZIP_DEFLATED) as z, z.open("junk.npy", "w") as m:
        np.lib.format.write_array_header_1_0(
            m, {"descr": "<f8", "fortran_order": False, "shape": (2**24,)})
        for _ in range(128):
            m.write(bytes(1 << 20))
    assert bomb.stat().st_size < 2 * model_file.stat().st_size + 2**20
    tracemalloc.start()
    read_foundation(bomb)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 32 * 2**20
    huge = tmp_path / "huge.npz"
    with zipfile.ZipFile(huge, "w") as z, z.open("meta.npy", "w") as m:
        np.lib.format.write_array_header_1_0(
            m, {"descr": "<f8", "fortran_order": False, "shape": (10**14,)})
    with pytest.raises(ModelFileError, match="meta"):
        read_foundation(huge)


def test_a_corrupt_compressed_file_is_a_model_file_error(model_file, tmp_path):
    """Some flipped bytes of a deflated entry raised zlib.error, not ModelFileError
    (helper-72): every byte flipped, at 200 places across the file, is a ModelFileError."""
    from dmt_model.foundation import Foundation

    with np.load(model_file, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    np.savez_compressed(tmp_path / "c.npz", **arrays)
    data = (tmp_path / "c.npz").read_bytes()
    broken = tmp_path / "broken.npz"
    for at in range(0, len(data), max(1, len(data) // 200)):
        flipped = bytearray(data)
        flipped[at] ^= 0xFF
        broken.write_bytes(bytes(flipped))
        try:
            read_foundation(broken)
        except ModelFileError:
            pass  # or read as a model: a flipped byte the format does not check
        try:
            Foundation.load(broken)
        except ModelFileError:
            pass
