"""The dense masks a round job wrote, on their way to their source tasks as predictions (table ``masks``).

One row per mask, updated on its own as it reaches Label Studio: ``todo`` -> ``sending`` -> ``pushed``
(``MaskStatus``). A row whose source task was deleted ends ``gone`` (never sent again); a mask Label Studio refuses
for a task that exists ends ``refused`` (logged; the next version's mask is sent as usual).
"""

from __future__ import annotations

from collections.abc import Iterable

from ..sqlite import Repository, StoredEnum


class MaskStatus(StoredEnum):
    """Where a dense mask is on its way to its source task (``masks.status``)."""

    TODO = "todo"
    """Written by the round job, not sent yet."""
    SENDING = "sending"
    """Sent in a batch whose answer may be lost: pushed if Label Studio holds a prediction of its version."""
    PUSHED = "pushed"
    """A prediction of its source task in Label Studio."""
    GONE = "gone"
    """Its source task was deleted from Label Studio: never sent again."""
    REFUSED = "refused"
    """Label Studio refused it for a task that exists (logged); the next version's mask is sent as usual."""


class Masks(Repository):
    """The project's mask files by version and source task."""

    SCHEMA = """
CREATE TABLE IF NOT EXISTS masks (
    project TEXT NOT NULL,
    version INTEGER NOT NULL,
    source_task_id INTEGER NOT NULL,
    path TEXT NOT NULL,
    status TEXT NOT NULL,
    PRIMARY KEY (project, version, source_task_id)
);
CREATE INDEX IF NOT EXISTS masks_status ON masks (project, version, status, source_task_id);
"""

    def plan(self, version: int, rows: Iterable[tuple[int, str]]) -> None:
        """Record a version's mask files to push, as ``(source task id, path)``."""
        values = [(self.key, int(version), int(src), str(path), MaskStatus.TODO) for src, path in rows]
        with self._write() as db:
            db.executemany("INSERT OR IGNORE INTO masks VALUES (?, ?, ?, ?, ?)", values)

    def by_status(self, version: int, status: MaskStatus, limit: int = -1) -> list[tuple[int, str]]:
        """``(source task id, path)`` of a version's masks in ``status``, by source id."""
        with self._read() as db:
            rows = db.execute("SELECT source_task_id, path FROM masks WHERE project = ? AND version = ? AND "
                              "status = ? ORDER BY source_task_id LIMIT ?",
                              (self.key, int(version), status, int(limit))).fetchall()
        return [(int(s), str(p)) for s, p in rows]

    def set_status(self, version: int, sources: Iterable[int], status: MaskStatus) -> None:
        """Move the version's masks of ``sources`` to ``status`` (one batch, one transaction)."""
        with self._write() as db:
            db.executemany("UPDATE masks SET status = ? WHERE project = ? AND version = ? AND source_task_id = ?",
                           [(status, self.key, int(version), int(s)) for s in sources])

    def paths(self, version: int, sources: Iterable[int]) -> dict[int, str]:
        """``source task id -> path`` of the version's mask files recorded for ``sources``, whatever their status (a
        path may name a file deleted since)."""
        out = {}
        with self._read() as db:
            for source in sources:
                row = db.execute("SELECT path FROM masks WHERE project = ? AND version = ? AND source_task_id = ?",
                                 (self.key, int(version), int(source))).fetchone()
                if row is not None:
                    out[int(source)] = str(row[0])
        return out
