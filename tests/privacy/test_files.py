import os
import stat

import pytest

from dmt_privacy.files import write_atomically


def test_writes_whole_files_with_the_mode_asked(tmp_path):
    path = write_atomically(tmp_path / "a" / "k.bin", b"secret", mode=0o600, make_parents=True)
    assert path.read_bytes() == b"secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    write_atomically(path, b"new")
    assert path.read_bytes() == b"new"


def test_no_clobber_refuses_and_leaves_nothing_behind(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"old")
    with pytest.raises(FileExistsError):
        write_atomically(path, b"new", overwrite=False)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.bin"]


def test_a_failed_rename_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "model.bin"
    path.write_bytes(b"old")

    def broken(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        write_atomically(path, b"new")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["model.bin"]


def test_refusal_is_an_sdk_error_naming_the_file_and_the_way_out(tmp_path):
    from dmt_privacy.errors import DMTError, OutputExistsError

    path = tmp_path / "model.bin"
    path.write_bytes(b"old")
    with pytest.raises(OutputExistsError, match="overwrite=True") as info:
        write_atomically(path, b"new", overwrite=False)
    assert isinstance(info.value, DMTError) and isinstance(info.value, FileExistsError)
    assert str(path) in str(info.value) and "--force" in str(info.value)


def test_files_are_private_unless_said_to_be_shared(tmp_path):
    from dmt_privacy.files import SHARED_FILE_MODE

    secret = write_atomically(tmp_path / "key", b"k")
    shared = write_atomically(tmp_path / "model", b"m", mode=SHARED_FILE_MODE)
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(shared.stat().st_mode) == 0o644
