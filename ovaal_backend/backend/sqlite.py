"""One SQLite file and the base of the repositories on it: WAL, one connection per call, serialised write
transactions (one lock per file), and ``StoredEnum`` for statuses stored as their names."""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
from collections.abc import Hashable, Iterator, Sequence
from contextlib import AbstractContextManager, closing, contextmanager
from datetime import datetime
from enum import Enum
from pathlib import Path

STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})
"""OS errors that say the disk cannot take a write: full, over quota, over a file-size limit, mounted read-only."""
SQLITE_STORAGE_CODES = frozenset({sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN,
                                  sqlite3.SQLITE_READONLY})
"""SQLite's primary result codes for the same faults (a write that hits EFBIG surfaces as SQLITE_IOERR)."""


_snapshots = threading.local()
"""Per thread: ``held``, the open ``SqliteFile.snapshot`` connections by file path."""


def is_storage_fault(err: BaseException) -> bool:
    """Whether an exception, or one it was raised from, means MODEL_DIR cannot be written.

    Why: a full disk is the server's fault, not the request's, and it passes once an admin frees space; the HTTP
    layer answers it with its own status and a reason that tells what to do, rather than a bare 500.
    """
    seen: BaseException | None = err
    for _ in range(8):  # exception chains are short; the bound guards against a cycle
        if seen is None:
            return False
        if isinstance(seen, sqlite3.Error) and (getattr(seen, "sqlite_errorcode", -1) & 0xFF) in SQLITE_STORAGE_CODES:
            return True
        if isinstance(seen, OSError) and seen.errno in STORAGE_ERRNOS:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class StoredEnum(str, Enum):
    """A ``str`` Enum stored and shown as its value (as rq's ``JobStatus``): a row or a JSON state written with the
    plain name reads the same, and ``str()``/f-strings give the name, not ``Class.MEMBER``."""

    def __str__(self) -> str:
        return self.value


class Repository:
    """Base of a repository: the tables it holds (``SCHEMA``) and its queries on one project's file.

    Rows still carry the ``project`` column of the files' first layout (one file per backend); a repository writes
    and filters by its file's key, so a file written before one file per project reads the same.

    Args:
        file: The project's SQLite file (its lock serialises the writes of every repository on it).
        key: The project key written in the ``project`` column.
    """

    SCHEMA = ""
    ADDED_COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {}
    """Columns added after a table first shipped, ``table -> ((name, declaration), ...)``: added to older files."""
    LATE_SCHEMA = ""
    """Statements run after ``ADDED_COLUMNS`` (indexes over added columns, which an older file lacks before)."""

    def __init__(self, file: SqliteFile, key: str) -> None:
        self._file, self.key = file, key

    def _read(self) -> AbstractContextManager[sqlite3.Connection]:
        """A connection for this repository's queries (``SqliteFile._read``: the file's connections are for its
        repositories only, so every query on the file lives in one of them)."""
        return self._file._read()

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        """One write transaction under the file's one lock (``SqliteFile._write``)."""
        return self._file._write()


class SqliteFile:
    """Creates the file and the schema of its ``repositories``, and opens read and write connections.

    Args:
        path: The SQLite file; its folder is created if missing, the schema on first open.
        repositories: The repository classes whose tables the file holds.
    """

    def __init__(self, path: str | Path, repositories: Sequence[type[Repository]]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._watch_lock = threading.Lock()
        self._watch: tuple[tuple[int, int], sqlite3.Connection] | None = None  # (the file's identity, its connection)
        with self._lock, closing(self._connect()) as db:
            db.execute("PRAGMA journal_mode = WAL")
            db.executescript(f"BEGIN IMMEDIATE; {''.join(r.SCHEMA for r in repositories)} COMMIT;")
            for table, columns in (item for r in repositories for item in r.ADDED_COLUMNS.items()):
                have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
                for name, declaration in columns:
                    if name not in have:
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")
            late = "".join(r.LATE_SCHEMA for r in repositories)
            if late:
                db.executescript(f"BEGIN IMMEDIATE; {late} COMMIT;")

    def _connect(self) -> sqlite3.Connection:
        """A fresh connection in autocommit mode, so transactions are exactly the ones ``_write`` opens.

        WAL mode is a property of the file, set once in ``__init__``. ``synchronous = NORMAL`` skips the fsync per
        commit: with WAL a commit still survives the process being killed, and only a power cut may lose the last
        few, which a re-sync from the Label Studio API can recover.
        """
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        db.execute("PRAGMA synchronous = NORMAL")
        return db

    def data_version(self) -> Hashable:
        """A value that changes whenever anyone, this process or another, commits to the file.

        Why: a reader that keeps an expensive answer (``/metrics``) learns in one cheap call whether it still stands.
        It is SQLite's ``PRAGMA data_version`` on a connection kept open for it (the pragma compares commits made
        by every other connection since that connection last asked) with the file's identity, so a file deleted and
        made anew (the same path, a new inode) is a change too; a file that cannot be read gives a value equal to
        nothing, never a stale "unchanged".
        """
        try:
            stat = os.stat(self.path)
            identity = (stat.st_dev, stat.st_ino)
            with self._watch_lock:
                if self._watch is None or self._watch[0] != identity:
                    if self._watch is not None:
                        self._watch[1].close()
                    self._watch = (identity, sqlite3.connect(self.path, timeout=30.0, isolation_level=None,
                                                             check_same_thread=False))
                (version,) = self._watch[1].execute("PRAGMA data_version").fetchone()
            return (*identity, int(version))
        except (OSError, sqlite3.Error):
            return object()

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Within the block, every read of this file by this thread (through any of its repositories) uses one
        connection and one read transaction: the reads see one state of the file, and the thread pays for one
        connection.

        Why: ``/metrics`` makes some 20 reads, and each connection opened and closed, and each statement, hands the
        GIL over and waits to get it back while a project's worker applies events; from one state, the figures also
        agree with each other. Re-entrant; writes still open their own connection (WAL lets them commit meanwhile).
        """
        held = getattr(_snapshots, "held", {})
        if str(self.path) in held:
            yield
            return
        with closing(self._connect()) as db:
            db.execute("BEGIN")
            _snapshots.held = {**held, str(self.path): db}
            try:
                yield
            finally:
                _snapshots.held = held
                db.execute("ROLLBACK")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A connection for queries (the thread's ``snapshot`` when it holds one); WAL gives it a consistent snapshot
        per statement (per transaction in a ``snapshot``) without blocking writers."""
        shared = getattr(_snapshots, "held", {}).get(str(self.path))
        if shared is not None:
            yield shared
            return
        with closing(self._connect()) as db:
            yield db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, committed on success and rolled back on error.

        ``BEGIN IMMEDIATE`` takes the write lock up front, so a transaction that reads before it writes cannot fail
        half-way when another process writes too; the thread lock spares threads of this process the busy wait.
        """
        with self._lock, closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")



def id_chunks(values: list[int], size: int = 500) -> list[list[int]]:
    """``values`` in pieces small enough for one ``IN (...)`` (SQLite limits the parameters of a statement)."""
    return [values[i:i + size] for i in range(0, len(values), size)]


def placeholders(values: Sequence[object]) -> str:
    """``?, ?, ?``: one parameter per value, for an ``IN (...)``."""
    return ", ".join("?" * len(values))


def is_older(new: str | None, stored: str | None) -> bool:
    """True when both timestamps are known and ``new`` is before ``stored`` (ISO 8601, as Label Studio sends them)."""
    if not new or not stored:
        return False
    try:
        return datetime.fromisoformat(new) < datetime.fromisoformat(stored)
    except (TypeError, ValueError):
        return False
