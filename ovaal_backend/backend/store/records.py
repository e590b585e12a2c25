"""The project's small records: its saved state, the source tasks last listed, the items set aside, the trainings
(tables ``project_state``, ``sources``, ``quarantine``, ``trainings``)."""

from __future__ import annotations

import json
import time
from typing import Any

from ..sqlite import Repository


class SavedState(Repository):
    """The round state machine's state (``project.state.ProjectState``) as one JSON row."""

    SCHEMA = """
CREATE TABLE IF NOT EXISTS project_state (
    project TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    updated_at REAL NOT NULL
);
"""

    def load(self) -> dict[str, Any]:
        """The saved state (empty for a project never saved)."""
        with self._read() as db:
            row = db.execute("SELECT state FROM project_state WHERE project = ?", (self.key,)).fetchone()
        return {} if row is None else json.loads(row[0])

    def save(self, state: dict[str, Any]) -> None:
        """Replace the saved state; it must be JSON-serialisable."""
        text = json.dumps(state, sort_keys=True)
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO project_state VALUES (?, ?, ?)", (self.key, text, time.time()))


class Sources(Repository):
    """The source tasks (the pool) as last listed from Label Studio: ``export`` reads them offline."""

    SCHEMA = """
CREATE TABLE IF NOT EXISTS sources (
    project TEXT NOT NULL,
    task_id INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (project, task_id)
);
"""

    def replace(self, sources: dict[int, dict[str, Any]]) -> None:
        """Replace the listed source tasks (one row each; rows of tasks gone from Label Studio are removed)."""
        with self._write() as db:
            known = {r[0] for r in db.execute("SELECT task_id FROM sources WHERE project = ?", (self.key,))}
            db.executemany("DELETE FROM sources WHERE project = ? AND task_id = ?",
                           [(self.key, t) for t in known - set(sources)])
            db.executemany("INSERT OR REPLACE INTO sources VALUES (?, ?, ?)",
                           [(self.key, int(t), json.dumps(d, sort_keys=True)) for t, d in sources.items()])

    def all(self) -> dict[int, dict[str, Any]]:
        """``task id -> task data`` of the source tasks last listed."""
        with self._read() as db:
            rows = db.execute("SELECT task_id, data FROM sources WHERE project = ? ORDER BY task_id",
                              (self.key,)).fetchall()
        return {int(t): json.loads(d) for t, d in rows}

    def ids(self) -> list[int]:
        """The listed source task ids, ascending (without their data)."""
        with self._read() as db:
            return [int(r[0]) for r in db.execute("SELECT task_id FROM sources WHERE project = ? ORDER BY task_id",
                                                  (self.key,))]

    def signature(self) -> tuple[Any, ...]:
        """``(listed sources, sum of their ids)``: changes when the listed pool does."""
        with self._read() as db:
            return tuple(db.execute("SELECT COUNT(*), SUM(task_id) FROM sources WHERE project = ?",
                                    (self.key,)).fetchone())


class Quarantine(Repository):
    """Items set aside by kind (``image``: images that cannot be read, left out of rounds until they can)."""

    SCHEMA = """
CREATE TABLE IF NOT EXISTS quarantine (
    project TEXT NOT NULL,
    kind TEXT NOT NULL,
    item INTEGER NOT NULL,
    reason TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (project, kind, item)
);
"""

    def replace(self, kind: str, reasons: dict[int, str]) -> None:
        """Replace the quarantined items of ``kind`` (``item -> reason``); items not listed are released."""
        with self._write() as db:
            db.execute("DELETE FROM quarantine WHERE project = ? AND kind = ?", (self.key, kind))
            db.executemany("INSERT INTO quarantine VALUES (?, ?, ?, ?, ?)",
                           [(self.key, kind, int(i), str(r), time.time()) for i, r in reasons.items()])

    def items(self, kind: str) -> list[dict[str, Any]]:
        """``{"item", "reason", "at"}`` of the quarantined items of ``kind``."""
        with self._read() as db:
            rows = db.execute("SELECT item, reason, at FROM quarantine WHERE project = ? AND kind = ? ORDER BY item",
                              (self.key, kind)).fetchall()
        return [{"item": i, "reason": r, "at": t} for i, r, t in rows]


class Trainings(Repository):
    """One record per trained version (``engine`` writes its fields: round, loss, seconds, finished_at ...)."""

    SCHEMA = """
CREATE TABLE IF NOT EXISTS trainings (
    project TEXT NOT NULL,
    version INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (project, version)
);
"""

    def add(self, version: int, record: dict[str, Any]) -> None:
        """Store version ``version``'s record (replacing one a re-run job stored before)."""
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO trainings VALUES (?, ?, ?)",
                       (self.key, int(version), json.dumps(record)))

    def all(self) -> list[dict[str, Any]]:
        """Every training, oldest first, each with its ``version`` number."""
        with self._read() as db:
            rows = db.execute("SELECT version, record FROM trainings WHERE project = ? ORDER BY version",
                              (self.key,)).fetchall()
        return [dict(json.loads(record), version=int(v)) for v, record in rows]
