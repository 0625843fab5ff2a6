"""SealedDatabase: an SQLite database held in memory and kept on disk as one sealed file.

The device store (:class:`~dmt_privacy.store.LocalStore`) lives in such a
file. SQLite runs on an in-memory copy; every committed write serializes the
whole database (``Connection.serialize``), seals it with AES-256-GCM under a
key derived from the app's 32-byte key, and replaces the file atomically
(:func:`~dmt_privacy.files.write_atomically`: temporary file, fsync, rename,
fsync of the directory; created 0600). Nothing unencrypted ever reaches the
disk: no journal, no WAL, no temporary tables (``temp_store=MEMORY``).

File format, version 1 (integers big-endian)::

    magic       8  b"DMTSTORE"
    version     2  1
    flags       2  0
    key id      8  HMAC-SHA256(key, b"dmt sealed database v1 key id")[:8]
    salt       16  random, new at every write
    nonce      12  random, new at every write
    generation  8  writes since the file was created (its creation is 1)
    length      8  bytes of ciphertext that follow
    ciphertext     AES-256-GCM(HKDF-SHA256(key, salt, info), nonce, image, aad=the header)

The 64-byte header is the associated data, so every byte of the file is
authenticated: a changed byte, a truncation, extra bytes or another key is
refused with a :class:`~dmt_privacy.errors.StoreIntegrityError` (a
:class:`~dmt_privacy.errors.StoreKeyError` for another key) naming the file,
before anything is read from it. Inside the file nothing can be deleted,
reordered or rolled back on its own: it is one authenticated message. What the
file alone cannot show is that it was replaced whole by an older copy, or
deleted; the ``generation`` (which only grows) lets an app that keeps it
outside the file (the keychain) refuse that with ``min_generation=``.

Several processes may use one file: a write takes an exclusive ``flock`` on
``<file>.lock``, re-reads the file if another process changed it, and
commits; reads re-read it when its header changed. A write costs a
serialization and a seal of the whole database, so this suits the small
databases of one device (measured in ``benchmarks/device_store.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import sqlite3
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from dmt_privacy.errors import (
    MissingDependencyError,
    SchemaError,
    StoreIntegrityError,
    StoreKeyError,
    StoreLockedError,
    ValidationError,
)
from dmt_privacy.files import temporaries_of, write_atomically

fcntl: ModuleType | None
try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: one process at a time
    fcntl = None

__all__ = ["HEADER_SIZE", "KEY_SIZE", "MAGIC", "SealedDatabase"]

MAGIC = b"DMTSTORE"
VERSION = 1
KEY_SIZE = 32
_HEADER = struct.Struct(">8sHH8s16s12sQQ")
HEADER_SIZE = _HEADER.size  # 64
_TAG_SIZE = 16
_MAX_CIPHERTEXT = 2**31 - 1  # what AESGCM seals in one call
_KEY_ID_INFO = b"dmt sealed database v1 key id"
_AEAD_INFO = b"dmt sealed database v1 aes-256-gcm"
_SQLITE_MAGIC = b"SQLite format 3\x00"
_RESTORE = ("Nothing was read from it. Restore the file from a backup; or, knowingly, move it "
            "aside and create a new store (its records and privacy ledger are then lost).")
_WRONG_KEY = ("Open it with the key it was created with (from the platform keystore). If that "
              "key is lost the file cannot be read: move it aside and create a new store.")


def check_key(key: object, path: Path) -> bytes:
    """``key`` as bytes, or a ValidationError saying what a key is and where it comes from."""
    if key is None:
        raise ValidationError(
            f"{path}: a device store needs key=, 32 random bytes the app keeps in the "
            "platform keystore (iOS Keychain, Android Keystore); make one with "
            "LocalStore.generate_key() the first time. The store is encrypted and "
            "authenticated under it. An unencrypted store from an older dmt-sdk is converted "
            "once with LocalStore.encrypt_existing(path, key=...)."
        )
    if not isinstance(key, (bytes, bytearray, memoryview)) or len(key) != KEY_SIZE:
        got = f"{len(key)} bytes" if isinstance(key, (bytes, bytearray, memoryview)) else \
            type(key).__name__
        raise ValidationError(
            f"{path}: key must be {KEY_SIZE} bytes (LocalStore.generate_key()), got {got}."
        )
    return bytes(key)


class SealedDatabase:
    """An in-memory SQLite database, loaded from and committed to one sealed file.

    ``connection`` is an autocommit ``sqlite3.Connection``: read from it after
    :meth:`refresh`, write only inside :meth:`transaction`. The file need not
    exist: it is created by the first write. ``generation`` is that of the
    state last read or written.
    """

    def __init__(self, path: str | os.PathLike[str], key: bytes, *, timeout: float = 30.0,
                 min_generation: int | None = None) -> None:
        self._setup(path, key, timeout)
        self.refresh()
        if min_generation is not None and self.generation < int(min_generation):
            what = ("is missing" if self._stamp is None else
                    f"is an older copy (generation {self.generation})")
            raise StoreIntegrityError(
                f"{self.path} {what}, but generation {int(min_generation)} was written: the "
                f"file was replaced by an older copy or deleted. {_RESTORE}"
            )

    def _setup(self, path: str | os.PathLike[str], key: bytes, timeout: float) -> None:
        self.path = Path(path)
        if not hasattr(sqlite3.Connection, "serialize"):  # pragma: no cover - Python 3.10
            raise MissingDependencyError(
                f"{self.path}: the sealed device store needs Python 3.11 or newer "
                "(sqlite3 Connection.serialize); upgrade Python."
            )
        self._key = check_key(key, self.path)
        self._key_id = hmac.new(self._key, _KEY_ID_INFO, hashlib.sha256).digest()[:8]
        self._timeout = float(timeout)
        self.connection = sqlite3.connect(":memory:", isolation_level=None)
        self.connection.execute("PRAGMA temp_store=MEMORY")
        self.generation = 0
        self._stamp: bytes | None = None  # the header of the file state held in memory

    @property
    def exists(self) -> bool:
        """Whether the file was ever written (by anyone)."""
        return self._stamp is not None

    # --- reading -------------------------------------------------------------------
    def refresh(self) -> None:
        """Load the file if it changed since it was last read or written here."""
        try:
            handle = open(self.path, "rb")
        except FileNotFoundError:
            if self._stamp is None:
                return
            raise StoreIntegrityError(
                f"{self.path} was deleted or moved while the store was open. {_RESTORE}"
            ) from None
        with handle:
            header = handle.read(HEADER_SIZE)
            if header == self._stamp:
                return
            body = handle.read()
        image, generation = self._unseal(header, body)
        if generation < self.generation:
            raise StoreIntegrityError(
                f"{self.path} went back from generation {self.generation} to {generation} "
                f"while open: an older copy was put in its place. {_RESTORE}"
            )
        self._load(image)
        self._stamp, self.generation = header, generation

    def _integrity(self, what: str) -> StoreIntegrityError:
        return StoreIntegrityError(f"{self.path} {what}. {_RESTORE}")

    def _unseal(self, header: bytes, body: bytes) -> tuple[bytes, int]:
        if header.startswith(_SQLITE_MAGIC):
            raise SchemaError(
                f"{self.path} is a plain SQLite file, not a sealed store: an unencrypted "
                "LocalStore from an older dmt-sdk is encrypted once with "
                "LocalStore.encrypt_existing(path, key=...). If you did not make this file, "
                f"the store was replaced. {_RESTORE}"
            )
        if len(header) < HEADER_SIZE and (MAGIC.startswith(header) or header.startswith(MAGIC)):
            raise self._integrity(f"is truncated: {len(header)} bytes, shorter than its "
                                  f"{HEADER_SIZE}-byte header")
        if not header.startswith(MAGIC):
            raise self._integrity("is not a LocalStore file (it does not begin with "
                                  f"{MAGIC!r}): it was altered or replaced")
        _, version, flags, key_id, salt, nonce, generation, length = _HEADER.unpack(header)
        if version != VERSION:
            raise SchemaError(
                f"{self.path} is a sealed store of format version {version}; this dmt-sdk reads "
                f"version {VERSION}. Upgrade dmt-sdk (or, if no newer version wrote it, the "
                f"file was altered: {_RESTORE})"
            )
        if flags != 0:
            raise self._integrity(f"has unknown flags {flags:#06x} in its header: it was altered")
        if not hmac.compare_digest(key_id, self._key_id):
            raise StoreKeyError(
                f"{self.path} was sealed under another key than the one given (or its header "
                f"was altered). Nothing was read from it. {_WRONG_KEY}"
            )
        if len(body) < length:
            raise self._integrity(f"is truncated: {HEADER_SIZE + len(body)} of its "
                                  f"{HEADER_SIZE + length} bytes")
        if len(body) > length:
            raise self._integrity(f"has {len(body) - length} bytes after its end: it was "
                                  "altered")
        try:
            image = AESGCM(self._aead_key(salt)).decrypt(nonce, body, header)
        except InvalidTag:
            raise self._integrity("fails authentication: a byte was altered or corrupted "
                                  "(or its header was)") from None
        return image, generation

    def _load(self, image: bytes) -> None:
        try:
            self.connection.deserialize(image)
            self.connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as exc:  # authentic bytes that are no database: a bug
            raise self._integrity(f"holds no readable database ({exc})") from None

    def _aead_key(self, salt: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt,
                    info=_AEAD_INFO).derive(self._key)

    # --- writing -------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write: lock the file, load the latest state, run the block, seal, replace.

        Committed and written on a normal exit (if the block changed anything),
        rolled back on an exception. If writing the file fails, the in-memory
        state goes back to the file's and the error is raised: the file holds
        the old state or the new, never a mix.
        """
        conn = self.connection
        if conn.in_transaction:
            raise RuntimeError(f"{self.path}: a write is already in progress (nested write).")
        with self._locked():
            self.refresh()
            before = self._changes()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            if self._changes() != before:
                self._persist()

    def _changes(self) -> tuple[int, int]:
        version = self.connection.execute("PRAGMA schema_version").fetchone()[0]
        return self.connection.total_changes, int(version)

    def _persist(self) -> None:
        generation = self.generation + 1
        try:
            image = self.connection.serialize()
            if len(image) + _TAG_SIZE > _MAX_CIPHERTEXT:
                raise ValidationError(
                    f"{self.path}: the store would hold {len(image)} bytes, more than a sealed "
                    "store can (2 GiB); nothing was written. Keep large media outside it."
                )
            salt, nonce = os.urandom(16), os.urandom(12)
            header = _HEADER.pack(MAGIC, VERSION, 0, self._key_id, salt, nonce, generation,
                                  len(image) + _TAG_SIZE)
            sealed = AESGCM(self._aead_key(salt)).encrypt(nonce, image, header)
            del image
            self._remove_stale_temporaries()
            write_atomically(self.path, header + sealed)
        except BaseException:
            self._restore_from_file()
            raise
        self._stamp, self.generation = header, generation

    def _restore_from_file(self) -> None:
        """After a failed write: hold the file's state again (or the empty database, if there
        never was a file). The generation reached stays the floor: an older copy put in the
        file's place while the write failed is refused as on any read, not taken (with the
        ledger in it) and its generation number reused (helper-68)."""
        existed, self._stamp = self._stamp is not None, None
        try:
            if existed and not self.path.exists():
                raise StoreIntegrityError(
                    f"{self.path} was deleted or moved while the store was open. {_RESTORE}")
            self.refresh()
            if self._stamp is None:
                self._load(_empty_image())
        except BaseException:
            self.connection.close()  # unusable rather than out of step with the file
            raise

    def _remove_stale_temporaries(self) -> None:
        """Temporary files of writers killed before their rename (sealed: nothing leaks)."""
        for stale in temporaries_of(self.path):
            with contextlib.suppress(OSError):
                stale.unlink()

    @contextlib.contextmanager
    def turn(self, purpose: str) -> Iterator[None]:
        """Hold ``<file>.<purpose>.lock`` exclusively for the block, waiting up to the
        timeout for any other holder (another process, or another object on this file):
        for a read-then-write that spans several transactions and must not interleave with
        another of its kind (:func:`dmt_privacy.sharing.share`). Take it before any write;
        writes inside the block take the write lock as usual."""
        if not purpose.isidentifier():
            raise ValueError(f"purpose must be a plain name, got {purpose!r}")
        with self._locked(self.path.with_name(f"{self.path.name}.{purpose}.lock"),
                          what=f"its {purpose} lock"):
            yield

    @contextlib.contextmanager
    def _locked(self, lock_path: Path | None = None, *,
                what: str = "the store's write lock") -> Iterator[None]:
        if fcntl is None:  # pragma: no cover
            yield
            return
        lock_path = lock_path or self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            deadline = time.monotonic() + self._timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise StoreLockedError(
                            f"{self.path}: another process held {what} "
                            f"({lock_path}) for more than {self._timeout:g} s; nothing was "
                            "written. Retry, or pass a longer timeout=."
                        ) from None
                    time.sleep(0.005)
            yield
        finally:
            os.close(fd)

    @classmethod
    def seal_image(cls, path: str | os.PathLike[str], key: bytes, image: bytes) -> None:
        """Replace ``path`` by a sealed file holding the SQLite database ``image``.

        For converting an unencrypted database (its journal mode must not be
        WAL). Takes the write lock; the result is generation 1.
        """
        target = cls.__new__(cls)  # not read from the file: it is the plain database
        target._setup(path, key, 30.0)
        try:
            target._load(image)
            with target._locked():
                target._persist()
        finally:
            target.connection.close()

    def close(self) -> None:
        self.connection.close()


def _empty_image() -> bytes:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("CREATE TABLE empty (x)")
    conn.execute("DROP TABLE empty")
    conn.execute("VACUUM")
    try:
        return conn.serialize()
    finally:
        conn.close()
