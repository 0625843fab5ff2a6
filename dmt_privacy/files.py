"""Writing files so that a failure never leaves a half-written, lost or clobbered file.

The one atomic writer of the SDK: key files, backups, models and model
indexes all go through :func:`write_atomically`.

Two rules hold for every file the SDK writes for its user:

* **Overwrite**: an existing file is replaced only when the caller says so
  (``overwrite=True`` in the API, ``--force`` on the command line); otherwise
  :class:`~dmt_privacy.errors.OutputExistsError` names the file and nothing is
  written. The exceptions replace their own files by design: ``personalize()``
  replaces the personal model when an update is kept, the model registry writes
  its own versioned files and index, a device store and a ledger re-seal their
  own file.
* **Mode**: secrets (private keys, backups, device stores, ledgers, personal
  models) are :data:`PRIVATE_FILE_MODE` (0600, the default, so a writer that
  forgets errs towards private); files meant to be shipped or read by others
  (exported ``.mlmodel``, foundation ``.npz``, public keys, release documents,
  anonymized tables, benchmark results) are :data:`SHARED_FILE_MODE` (0644). The
  mode is set explicitly, whatever the process's umask.
"""

from __future__ import annotations

import glob
import os
import re
import tempfile
from pathlib import Path

from dmt_privacy.errors import OutputExistsError

__all__ = ["PRIVATE_FILE_MODE", "SHARED_FILE_MODE", "temporaries_of", "write_atomically"]

PRIVATE_FILE_MODE = 0o600
"""Mode of secrets: read and written by their owner only."""
SHARED_FILE_MODE = 0o644
"""Mode of files meant to be shipped or read by others: models, public keys, results."""


_TEMP_SUFFIX = ".tmp"
# what tempfile.mkstemp puts between the prefix and the suffix: 8 of these characters
_TEMP_RANDOM = re.compile(r"[a-z0-9_]{8}")


def temporaries_of(path: str | os.PathLike[str]) -> list[Path]:
    """The temporary files :func:`write_atomically` left for ``path`` (a writer killed before
    its rename), and no other file's: the temporaries of ``d.db.mlmodel`` are not
    ``d.db``'s, though both begin with ``.d.db.`` (a store's write removed a model's while
    it was being written, and the model's update failed)."""
    path = Path(path)
    prefix = f".{path.name}."
    return sorted(
        candidate for candidate in path.parent.glob(f"{glob.escape(prefix)}*{_TEMP_SUFFIX}")
        if _TEMP_RANDOM.fullmatch(candidate.name[len(prefix):-len(_TEMP_SUFFIX)]))


def write_atomically(path: str | os.PathLike[str], data: bytes, *,
                     mode: int = PRIVATE_FILE_MODE, overwrite: bool = True,
                     make_parents: bool = False) -> Path:
    """Write ``data`` to ``path`` all at once, or not at all.

    The bytes go to a temporary file in the same directory with ``mode``
    (0600 unless told otherwise: see the module's rules), which is fsynced and
    renamed into place with ``os.replace``; the directory is then fsynced so the
    rename survives a power loss. Readers see the old file or the whole new one.
    With ``overwrite=False`` the file is put in place by a hard link, which
    cannot replace an existing file, and :class:`OutputExistsError` (a
    :class:`FileExistsError`) is raised if there is one (on a file system
    without hard links: check, then rename, with a small race). On any failure
    the temporary file is removed and ``path`` is untouched.

    ``overwrite`` defaults to ``True`` here because this is the low-level
    primitive; every public writer built on it defaults to ``False``.
    """
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TEMP_SUFFIX)
    temp = Path(name)
    try:
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
        raise _exists(path) from None
    except OSError:  # no hard links here: check, then rename
        if path.exists() or path.is_symlink():
            raise _exists(path) from None
        os.replace(temp, path)
        return
    temp.unlink(missing_ok=True)


def _exists(path: Path) -> OutputExistsError:
    return OutputExistsError(
        f"{path} already exists; nothing was written. Pass overwrite=True (--force on the "
        "command line) to replace it, or choose another path.")


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
