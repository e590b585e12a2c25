"""Atomic file writes, shared by checkpoints, the backend's JSON files and its image cache."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomically(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` with ``write(handle)`` so a reader sees the old file or the new one, never half of one.

    The bytes go to a temporary file in the same folder, are flushed to disk, then renamed over ``path``; on any
    error the temporary file is removed and ``path`` is left as it was. Concurrent writers each use their own
    temporary file, so the last rename wins with a whole file. The file gets the mode a plain ``open()`` gives (0666
    less the umask), not ``mkstemp``'s 0600: with umask 002 (the Docker images) a worker running as another user of
    the same group reads the cached images the backend wrote and replaces its ``model.pt`` (docker/README.md).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as handle:
            write(handle)
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


def remove_stale_temp_files(root: str | Path) -> int:
    """Delete the temporary files ``write_atomically`` leaves when its process is killed mid-write; returns how many.

    Only for a process's start (no writer is running yet): a running writer's temporary file would go too.
    """
    root = Path(root)
    if not root.is_dir():
        return 0
    stale = [p for p in root.rglob("*.tmp") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)
