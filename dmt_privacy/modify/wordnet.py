"""Locating and provisioning the WordNet data that nltk reads, offline.

nltk reads WordNet from ``<root>/corpora/wordnet/`` (or ``wordnet.zip``) under
one of its data roots. The SDK looks for such a root, in this order:

1. the ``data_dir`` passed by the caller (``SynonymReplacer(wordnet_dir=...)``);
2. every entry of the ``NLTK_DATA`` environment variable;
3. nltk's own search path, ``nltk.data.path`` (``~/nltk_data``, ``/usr/share/nltk_data``...);
4. ``./nltk_data`` in the current directory, where ``make wordnet`` provisions
   it in a dmt checkout.

To provision a root without internet, from a WordNet 3.0 database installed by
the system (Debian/Ubuntu: ``apt-get install wordnet-base wordnet-sense-index``,
which fills ``/usr/share/wordnet``)::

    python -m dmt_privacy.modify.wordnet install ./nltk_data

copies the database files (copies: nltk refuses symbolic links) and writes the
``lexnames`` table nltk needs but Debian does not ship (it is package data here,
the table of the ``lexnames(5WN)`` manual page). Where no system copy exists but
there is internet, ``install`` falls back to ``nltk.download('wordnet')``.
``python -m dmt_privacy.modify.wordnet check`` says what was found.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import threading
import warnings
import zipfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from dmt_privacy.errors import MissingDependencyError

__all__ = [
    "WORDNET_FILES",
    "find_wordnet",
    "install_wordnet",
    "load_wordnet",
    "main",
    "search_paths",
]

#: The database files nltk's WordNet reader opens (``lexnames`` is written by us).
WORDNET_FILES: tuple[str, ...] = (
    "cntlist.rev",
    "index.sense",
    "index.adj", "index.adv", "index.noun", "index.verb",
    "data.adj", "data.adv", "data.noun", "data.verb",
    "adj.exc", "adv.exc", "noun.exc", "verb.exc",
)

#: Where a system WordNet database may be, tried in order by :func:`install_wordnet`.
SYSTEM_SOURCES: tuple[str, ...] = (
    "/usr/share/wordnet",               # Debian/Ubuntu wordnet-base
    "/usr/local/share/wordnet",
    "/usr/local/WordNet-3.0/dict",      # the upstream tarball's default WNHOME
    "/opt/homebrew/opt/wordnet/dict",   # Homebrew (Apple silicon)
    "/usr/local/opt/wordnet/dict",      # Homebrew (Intel)
)

_LOCK = threading.Lock()
_READERS: dict[str, Any] = {}


def install_instructions() -> str:
    """How to get WordNet on this machine, as text for an error message."""
    lines = ["Provision WordNet with one of:",
             "  - in a dmt checkout: `make wordnet` (then NLTK_DATA=$PWD/nltk_data is set "
             "by make; elsewhere export it or run from the checkout);"]
    if shutil.which("apt-get"):
        lines.append("  - `sudo apt-get install wordnet-base wordnet-sense-index` then "
                     "`python -m dmt_privacy.modify.wordnet install ./nltk_data`;")
    elif sys.platform == "darwin":
        lines.append("  - `brew install wordnet` then `python -m dmt_privacy.modify.wordnet "
                     "install ./nltk_data --source \"$(brew --prefix wordnet)/dict\"`;")
    lines.append("  - with internet: `python -m dmt_privacy.modify.wordnet install ./nltk_data` "
                 "(falls back to nltk.download) or `python -c \"import nltk; "
                 "nltk.download('wordnet')\"`;")
    lines.append("then pass wordnet_dir=... or set NLTK_DATA to the directory that holds "
                 "corpora/wordnet.")
    return "\n".join(lines)


def search_paths(data_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """The data roots searched for ``corpora/wordnet``, in order (see the module docstring)."""
    paths: list[Path] = []
    if data_dir is not None:
        paths.append(Path(data_dir))
    env = os.environ.get("NLTK_DATA", "")
    paths.extend(Path(p) for p in env.split(os.pathsep) if p)
    try:
        import nltk.data

        paths.extend(Path(str(p)) for p in nltk.data.path if isinstance(p, (str, os.PathLike)))
    except ImportError:  # pragma: no cover - nltk is a base dependency
        pass
    paths.append(Path.cwd() / "nltk_data")
    unique: list[Path] = []
    for p in paths:
        p = p.expanduser().absolute()
        if p not in unique:
            unique.append(p)
    return unique


def _complete(wordnet_dir: Path) -> bool:
    return all((wordnet_dir / name).is_file() and (wordnet_dir / name).stat().st_size > 0
               for name in (*WORDNET_FILES, "lexnames"))


def _has_wordnet(root: Path) -> bool:
    """Whether ``root`` holds WordNet that can be read: every file, none empty, or a zip that
    is one (a broken copy first on NLTK_DATA hid a good one after it: helper-71)."""
    corpora = root / "corpora"
    return _complete(corpora / "wordnet") or _zip_complete(corpora / "wordnet.zip")


def _zip_complete(path: Path) -> bool:
    """Whether ``path`` is a zip holding WordNet's files (a valid zip of something else hid
    a good copy after it: helper-72)."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            names = {info.filename for info in archive.infolist() if info.file_size > 0}
    except (OSError, zipfile.BadZipFile):
        return False
    return all(f"wordnet/{name}" in names for name in WORDNET_FILES)


def find_wordnet(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The first data root holding WordNet; raises :class:`MissingDependencyError`.

    With ``data_dir`` given, only that root is accepted: a wrong explicit path
    is an error rather than a silent fall back to another copy.
    """
    candidates = [Path(data_dir).expanduser().absolute()] if data_dir is not None \
        else search_paths()
    for root in candidates:
        if _has_wordnet(root):
            return root
    looked = ", ".join(str(p) for p in candidates)
    raise MissingDependencyError(
        f"WordNet data for nltk was not found (looked for corpora/wordnet under: {looked}).\n"
        + install_instructions()
    )


def load_wordnet(data_dir: str | os.PathLike[str] | None = None) -> Any:
    """nltk's ``WordNetCorpusReader`` over the root :func:`find_wordnet` finds.

    Readers are cached per root for the life of the process. The root is added
    to ``nltk.data.path``: nltk only opens files under its data roots.
    """
    if data_dir is not None:
        cached = _READERS.get(str(Path(data_dir).expanduser().absolute()))
        if cached is not None:
            return cached
    root = find_wordnet(data_dir)
    key = str(root)
    with _LOCK:
        reader = _READERS.get(key)
        if reader is not None:
            return reader
        try:
            import nltk.data
            from nltk.corpus.reader.wordnet import WordNetCorpusReader
        except ImportError as exc:  # pragma: no cover - nltk is a base dependency
            raise MissingDependencyError(
                "nltk is needed for synonym replacement; `pip install nltk`."
            ) from exc
        if key not in [str(p) for p in nltk.data.path]:
            nltk.data.path.append(key)
        try:
            pointer = nltk.data.find("corpora/wordnet", paths=[key])
            with warnings.catch_warnings():
                # "multilingual functions are not available": only English is used.
                warnings.simplefilter("ignore", UserWarning)
                reader = WordNetCorpusReader(pointer, None)
            reader.synsets("dog")  # files that exist but do not read fail here, not mid-transform
        except Exception as exc:  # a corrupt zip, an empty or damaged file: all the same to us
            raise MissingDependencyError(
                f"WordNet under {key} could not be read ({type(exc).__name__}: {exc}); "
                "re-provision it.\n" + install_instructions()
            ) from exc
        _READERS[key] = reader
        return reader


def _lexnames_text() -> str:
    return resources.files("dmt_privacy").joinpath("data/wordnet_lexnames").read_text("ascii")


def _copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".partial")
    shutil.copyfile(src, tmp)  # a real copy: nltk refuses symbolic and hard links
    os.replace(tmp, dst)


def install_wordnet(target: str | os.PathLike[str], *, source: str | os.PathLike[str] | None
                    = None, download: bool = True, quiet: bool = False) -> Path:
    """Provision ``<target>/corpora/wordnet`` and return ``target``; idempotent.

    Copies the database files from ``source`` (or the first of
    :data:`SYSTEM_SOURCES` that holds them) and writes ``lexnames`` if the
    source has none. Without a system copy and with ``download`` true, uses
    ``nltk.download('wordnet')`` (needs internet). Raises
    :class:`MissingDependencyError` when neither works.
    """
    root = Path(target).expanduser().absolute()
    dest = root / "corpora" / "wordnet"

    def say(message: str) -> None:
        if not quiet:
            print(message)

    if _has_wordnet(root):
        say(f"WordNet already provisioned under {root}")
        return root
    sources = [Path(source)] if source is not None else [Path(s) for s in SYSTEM_SOURCES]
    found = next((s for s in sources if all((s / n).is_file() for n in WORDNET_FILES)), None)
    if found is not None:
        dest.mkdir(parents=True, exist_ok=True)
        for name in WORDNET_FILES:
            src = found / name
            if not (dest / name).is_file() or (dest / name).stat().st_size != src.stat().st_size:
                _copy(src, dest / name)
        if (found / "lexnames").is_file():
            _copy(found / "lexnames", dest / "lexnames")
        else:
            (dest / "lexnames").write_text(_lexnames_text(), encoding="ascii")
        say(f"WordNet copied from {found} to {dest}")
        return root
    if source is not None:
        missing = [n for n in WORDNET_FILES if not (Path(source) / n).is_file()]
        raise MissingDependencyError(
            f"source={str(source)!r} does not hold a WordNet database (missing {missing}).\n"
            + install_instructions()
        )
    if download:
        try:
            import nltk

            say("No system WordNet found; trying nltk.download('wordnet')")
            ok = nltk.download("wordnet", download_dir=str(root), quiet=quiet)
        except Exception as exc:  # the downloader raises many kinds when offline
            ok = False
            say(f"nltk.download failed: {exc}")
        if ok and _has_wordnet(root):
            return root
    tried = ", ".join(str(s) for s in sources)
    raise MissingDependencyError(
        f"No WordNet database found in {tried}"
        + (" and nltk.download did not succeed" if download else "")
        + ".\n" + install_instructions()
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dmt_privacy.modify.wordnet {install DIR | check [DIR]}``."""
    parser = argparse.ArgumentParser(prog="python -m dmt_privacy.modify.wordnet",
                                     description="Provision or check WordNet data for nltk.")
    sub = parser.add_subparsers(dest="command", required=True)
    inst = sub.add_parser("install", help="provision DIR/corpora/wordnet (idempotent)")
    inst.add_argument("dir", help="nltk data root to provision, e.g. ./nltk_data")
    inst.add_argument("--source", help="directory holding a WordNet 3.x database")
    inst.add_argument("--no-download", action="store_true",
                      help="never fall back to nltk.download")
    chk = sub.add_parser("check", help="load WordNet and print where it was found")
    chk.add_argument("dir", nargs="?", help="nltk data root (default: the search path)")
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            root = install_wordnet(args.dir, source=args.source, download=not args.no_download)
            reader = load_wordnet(root)
        else:
            reader = load_wordnet(args.dir)
            root = find_wordnet(args.dir)
    except MissingDependencyError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"WordNet {reader.get_version()} readable under {root}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
