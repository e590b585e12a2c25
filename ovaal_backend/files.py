"""Atomic file writes, shared by checkpoints, the backend's JSON files and its image cache; the clean-up of the
temporary files a killed writer leaves; the lock that keeps a second server off one MODEL_DIR.

MODEL_DIR may be shared with queue workers on other machines (NFS), so a temporary file's name says who writes it
(``<name>.<random>.<host>_<pid namespace>.<pid>.tmp``): a starting server deletes only files whose writer is known
to be gone, never the file a live worker is writing.
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, TextIO

STALE_TEMP_SECONDS = 24 * 3600
"""Age after which a temporary file whose writer cannot be checked (another machine, or a name without its writer)
counts as left behind: writing one checkpoint, mask or image takes seconds, never a day."""
SERVE_LOCK = ".serve.lock"
"""File in MODEL_DIR that ``serve`` holds an exclusive ``flock`` on for its whole life."""


class ModelDirBusyError(RuntimeError):
    """Another server holds MODEL_DIR's lock: two servers would run every project's round twice."""


def write_atomically(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` with ``write(handle)`` so a reader sees the old file or the new one, never half of one
    (see ``atomic_file``)."""
    with atomic_file(path) as handle:
        write(handle)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[BinaryIO]:
    """A binary handle whose bytes become ``path`` when the block ends, and are dropped if it raises; for writers
    that produce a file piece by piece (the export's Label Studio JSON, one task at a time).

    The bytes go to a temporary file in the same folder, are flushed to disk, then renamed over ``path``; on any
    error the temporary file is removed and ``path`` is left as it was. Concurrent writers each use their own
    temporary file, so the last rename wins with a whole file. The file gets the mode a plain ``open()`` gives (0666
    less the umask), not ``mkstemp``'s 0600: with umask 002 (the Docker images) a worker running as another user of
    the same group reads the cached images the backend wrote and replaces its ``model.pt`` (docker/README.md).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.", suffix=f".{_owner()}.{os.getpid()}.tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    """The process's umask, read without changing it (``os.umask`` reads it only by setting it, which races other
    threads creating files); falls back to that where ``/proc`` is missing."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stale_temp_files(root: str | Path, max_age: float = STALE_TEMP_SECONDS) -> int:
    """Delete the temporary files ``write_atomically`` left when its process was killed mid-write; returns how many.

    A file written on this machine (same host and process namespace) goes when its writer's process is gone; any
    other goes only once it is ``max_age`` seconds old, since its writer (a queue worker on another machine, or a
    process that named its files before they carried their writer) cannot be asked. So a server starting beside
    running workers never pulls a file from under one of them.
    """
    root = Path(root)
    if not root.is_dir():
        return 0
    removed = 0
    now = time.time()
    for path in root.rglob("*.tmp"):
        try:
            if path.is_file() and _is_stale(path.name, now - path.stat().st_mtime, max_age):
                path.unlink()
                removed += 1
        except FileNotFoundError:  # its writer renamed or removed it meanwhile
            continue
    return removed


def lock_model_dir(model_dir: str | Path) -> TextIO:
    """Take MODEL_DIR's server lock (``flock`` on ``MODEL_DIR/.serve.lock``) and return the open file holding it.

    The lock lasts while the file stays open (in this process and the processes it forks), and the kernel drops it
    when they die, however they die. The file names the holder, for the next one's message.

    Raises:
        ModelDirBusyError: Another process holds it; the message names MODEL_DIR and the holder.
    """
    root = Path(model_dir)
    root.mkdir(parents=True, exist_ok=True)
    handle = open(root / SERVE_LOCK, "a+", encoding="utf-8")  # noqa: SIM115 - held for the server's life
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ModelDirBusyError(f"MODEL_DIR {root.resolve()} is already served by {holder}: stop that server, or "
                                "give this one its own MODEL_DIR") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    return handle


def _owner() -> str:
    """This process's machine: its host name and PID namespace (containers on one host may share a name)."""
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:63] or "host"
    try:
        namespace = re.sub(r"[^0-9]", "", os.readlink("/proc/self/ns/pid")) or "0"
    except OSError:
        namespace = "0"
    return f"{host}_{namespace}"


def _is_stale(name: str, age: float, max_age: float) -> bool:
    """Whether a ``*.tmp`` file is left behind: its writer on this machine is gone, or it is older than ``max_age``."""
    if age > max_age:
        return True
    parts = name[:-len(".tmp")].rsplit(".", 2)
    if len(parts) != 3 or parts[1] != _owner() or not parts[2].isdigit():
        return False
    return not _process_alive(int(parts[2]))


def _process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (a zombie or another user's process counts)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
