"""Writing files so that a failure never leaves a half-written, lost or clobbered file.

The one atomic writer of the SDK: key files, backups, models and model
indexes all go through :func:`write_atomically`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["write_atomically"]


def write_atomically(path: str | os.PathLike[str], data: bytes, *, mode: int | None = None,
                     overwrite: bool = True, make_parents: bool = False) -> Path:
    """Write ``data`` to ``path`` all at once, or not at all.

    The bytes go to a temporary file in the same directory (mode 0600, or
    ``mode``), which is fsynced and renamed into place with ``os.replace``; the
    directory is then fsynced so the rename survives a power loss. Readers see
    the old file or the whole new one. With ``overwrite=False`` the file is put
    in place by a hard link, which cannot replace an existing file, and
    :class:`FileExistsError` is raised if there is one (on a file system
    without hard links: check, then rename, with a small race). On any failure
    the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    temp = Path(name)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(temp, path)
        else:
            _link_no_clobber(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return path


def _link_no_clobber(temp: Path, path: Path) -> None:
    try:
        os.link(temp, path)
    except FileExistsError:
        raise FileExistsError(f"{path} already exists") from None
    except OSError:  # no hard links here: check, then rename
        if path.exists() or path.is_symlink():
            raise FileExistsError(f"{path} already exists") from None
        os.replace(temp, path)
        return
    temp.unlink(missing_ok=True)


def _fsync_directory(directory: Path) -> None:
    if os.name != "posix":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
