"""An expensive answer read from a SQLite file, kept until the file changes; one computation at a time.

Why: ``/metrics`` (the dashboard's data and the Prometheus text come from the same builder) is asked every few
seconds by each open dashboard and each scraper, and one project's answer took some 30 statements and figures for
every image of the project: on a 5,000-image project 75 ms when nothing changed and 0.44 s while the project's
worker applied a backlog (docs/benchmarks.md, DASHBOARD-LOAD). SQLite tells in one ``PRAGMA data_version`` whether
anyone committed to the file since (``SqliteFile.data_version``), so the answer is kept until then and given again
at once. When the file changed, the first caller computes the new answer; callers that arrive meanwhile get the last
one at once (at most one computation old) instead of computing it too, so open dashboards never pile up
computations; only before the first answer exists do they wait for it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any


class CachedAnswer:
    """The answer of ``compute`` (given to ``get``), kept while ``version()`` returns the value it had before.

    Args:
        version: What changes whenever the answer may change (e.g. ``SqliteFile.data_version``).

    Example:
        >>> versions = iter([1, 1, 2, 2])
        >>> cached = CachedAnswer(lambda: next(versions))
        >>> calls = []
        >>> def compute():
        ...     calls.append(1)
        ...     return {"n": len(calls)}
        >>> cached.get(compute), cached.get(compute), cached.get(compute)
        ({'n': 1}, {'n': 1}, {'n': 2})
    """

    def __init__(self, version: Callable[[], Hashable]) -> None:
        self._version = version
        self._busy = threading.Lock()  # held by the one caller computing
        self._kept: tuple[Hashable, dict[str, Any]] | None = None

    def get(self, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The kept answer while the version is unchanged, else a new one (see the module docstring); a shallow
        copy: the caller may add keys, never change the values inside."""
        kept = self._kept
        if kept is not None and kept[0] == self._version():
            return dict(kept[1])
        if not self._busy.acquire(blocking=kept is None):
            return dict(kept[1])  # another caller computes: the last answer, at once
        try:
            version = self._version()  # read before computing: a commit during the computation is a change
            kept = self._kept
            if kept is None or kept[0] != version:  # (else the caller waited for just did it)
                kept = self._kept = (version, compute())
            return dict(kept[1])
        finally:
            self._busy.release()
