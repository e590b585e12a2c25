"""The rounds' rows in the SQLite file: planned and imported query tasks, dense masks to push, trainings.

A round's result becomes one row per query task and one per mask, each updated on its own as it reaches Label Studio,
so publishing costs the same per task whatever the project's size (no file rewritten whole), and a crash resumes
at the first row not yet done. Statuses (``QueryStatus``, ``MaskStatus``): a query row is ``planned`` ->
``importing`` (sent in a batch whose answer may be lost) -> ``imported`` (its task id known); a mask row is ``todo``
-> ``sending`` -> ``pushed``. A row whose source task was deleted from Label Studio ends ``gone`` (never sent again);
a mask Label Studio refuses for a task that exists ends ``refused`` (logged; the next version's mask is sent as
usual).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from enum import Enum
from typing import Any

from .sqlite import SqliteFile

_SCHEMA = """
CREATE TABLE IF NOT EXISTS query_tasks (
    project TEXT NOT NULL,
    task_id INTEGER NOT NULL,
    round_index INTEGER NOT NULL,
    source_task_id INTEGER NOT NULL,
    PRIMARY KEY (project, task_id)
);
CREATE INDEX IF NOT EXISTS query_tasks_round ON query_tasks (project, round_index);
CREATE INDEX IF NOT EXISTS query_tasks_source ON query_tasks (project, source_task_id, task_id);
CREATE TABLE IF NOT EXISTS round_queries (
    project TEXT NOT NULL,
    round_index INTEGER NOT NULL,
    source_task_id INTEGER NOT NULL,
    version INTEGER NOT NULL,
    score REAL NOT NULL,
    result TEXT NOT NULL,
    status TEXT NOT NULL,
    task_id INTEGER,
    PRIMARY KEY (project, round_index, source_task_id)
);
CREATE INDEX IF NOT EXISTS round_queries_status ON round_queries (project, round_index, status, source_task_id);
CREATE INDEX IF NOT EXISTS round_queries_task ON round_queries (project, task_id);
CREATE TABLE IF NOT EXISTS masks (
    project TEXT NOT NULL,
    version INTEGER NOT NULL,
    source_task_id INTEGER NOT NULL,
    path TEXT NOT NULL,
    status TEXT NOT NULL,
    PRIMARY KEY (project, version, source_task_id)
);
CREATE INDEX IF NOT EXISTS masks_status ON masks (project, version, status, source_task_id);
CREATE TABLE IF NOT EXISTS sources (
    project TEXT NOT NULL,
    task_id INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (project, task_id)
);
CREATE TABLE IF NOT EXISTS quarantine (
    project TEXT NOT NULL,
    kind TEXT NOT NULL,
    item INTEGER NOT NULL,
    reason TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (project, kind, item)
);
CREATE TABLE IF NOT EXISTS trainings (
    project TEXT NOT NULL,
    version INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (project, version)
);
"""



class QueryStatus(str, Enum):
    """Where a planned query task is on its way into Label Studio (``round_queries.status``)."""

    PLANNED = "planned"
    """Recorded from the round job's result, not sent yet (or sent in a batch Label Studio did not create)."""
    IMPORTING = "importing"
    """Sent in a batch whose answer may be lost: adopted by its markers if Label Studio created it."""
    IMPORTED = "imported"
    """In Label Studio, its task id known."""
    GONE = "gone"
    """Its source task was deleted from Label Studio: never sent."""

    def __str__(self) -> str:
        return self.value


class MaskStatus(str, Enum):
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

    def __str__(self) -> str:
        return self.value


class RoundStore(SqliteFile):
    """Query tasks, masks and trainings of every project, keyed by the project key like ``LabelStore``."""

    SCHEMA = _SCHEMA

    # --- a round's query tasks ---------------------------------------------------------------------------------

    def plan_queries(self, project: str, round_index: int, version: int,
                     rows: Iterable[tuple[int, float, list[dict[str, Any]]]]) -> None:
        """Record the round's planned query tasks as ``(source task id, score, keypoint result)``; a source already
        planned for that round keeps its row (a re-run job must not re-plan what may be imported)."""
        values = [(project, int(round_index), int(src), int(version), float(score), json.dumps(result),
                   QueryStatus.PLANNED) for src, score, result in rows]
        with self._write() as db:
            db.executemany("INSERT OR IGNORE INTO round_queries (project, round_index, source_task_id, version, score, "
                           "result, status) VALUES (?, ?, ?, ?, ?, ?, ?)", values)

    def queries(self, project: str, round_index: int, status: QueryStatus,
                limit: int = -1) -> list[tuple[int, float, list[dict[str, Any]]]]:
        """``(source task id, score, result)`` of the round's rows in ``status``, by source id."""
        with self._read() as db:
            rows = db.execute("SELECT source_task_id, score, result FROM round_queries WHERE project = ? AND "
                              "round_index = ? AND status = ? ORDER BY source_task_id LIMIT ?",
                              (project, int(round_index), status, int(limit))).fetchall()
        return [(int(s), float(score), json.loads(result)) for s, score, result in rows]

    def set_query_status(self, project: str, round_index: int, sources: Iterable[int], status: QueryStatus) -> None:
        with self._write() as db:
            db.executemany("UPDATE round_queries SET status = ? WHERE project = ? AND round_index = ? AND "
                           "source_task_id = ?", [(status, project, int(round_index), int(s)) for s in sources])

    def set_imported(self, project: str, round_index: int, pairs: Iterable[tuple[int, int]]) -> None:
        """Record ``(source task id, query task id)`` pairs as imported, and the tasks as the round's query tasks."""
        pairs = [(int(s), int(t)) for s, t in pairs]
        with self._write() as db:
            db.executemany("UPDATE round_queries SET status = ?, task_id = ? WHERE project = ? AND round_index = ? "
                           "AND source_task_id = ?",
                           [(QueryStatus.IMPORTED, t, project, int(round_index), s) for s, t in pairs])
            db.executemany("INSERT OR REPLACE INTO query_tasks VALUES (?, ?, ?, ?)",
                           [(project, t, int(round_index), s) for s, t in pairs])

    def query_prediction(self, project: str, task_id: int) -> tuple[list[dict[str, Any]], float] | None:
        """The keypoint result and score a query task was imported with, or None for a task we did not import."""
        with self._read() as db:
            row = db.execute("SELECT result, score FROM round_queries WHERE project = ? AND task_id = ?",
                             (project, int(task_id))).fetchone()
        return None if row is None else (json.loads(row[0]), float(row[1]))

    def count_queries(self, project: str, round_index: int, status: QueryStatus | None = None) -> int:
        """Planned query tasks of a round in ``status`` (any status when None)."""
        query, args = "SELECT COUNT(*) FROM round_queries WHERE project = ? AND round_index = ?", [project, round_index]
        if status is not None:
            query, args = query + " AND status = ?", [*args, status]
        with self._read() as db:
            (count,) = db.execute(query, args).fetchone()
        return int(count)

    def round_progress(self, project: str, round_index: int) -> tuple[int, int]:
        """``(query tasks, answered ones)`` of a round, counted in SQL (the annotations table shares this file).

        Called on every wake-up of a project's worker, so it must not load the round's rows into Python.
        """
        with self._read() as db:
            total, answered = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(EXISTS (SELECT 1 FROM annotations a WHERE a.project = q.project "
                "AND a.task_id = q.task_id)), 0) FROM query_tasks q WHERE q.project = ? AND q.round_index = ?",
                (project, int(round_index))).fetchone()
        return int(total), int(answered)

    def unanswered_query_tasks(self, project: str, round_index: int) -> list[int]:
        """Query tasks of a round that no annotation answered (submitted or skipped)."""
        with self._read() as db:
            rows = db.execute("SELECT task_id FROM query_tasks q WHERE project = ? AND round_index = ? AND NOT EXISTS "
                              "(SELECT 1 FROM annotations a WHERE a.project = q.project AND a.task_id = q.task_id) "
                              "ORDER BY task_id", (project, int(round_index))).fetchall()
        return [int(r[0]) for r in rows]

    def forget_query_tasks(self, project: str, task_ids: list[int]) -> None:
        with self._write() as db:
            db.executemany("DELETE FROM query_tasks WHERE project = ? AND task_id = ?",
                           [(project, int(t)) for t in task_ids])

    # --- query tasks known by id (ours, or adopted by their markers) ---------------------------------------------

    def add_query_tasks(self, project: str, round_index: int, rows: Iterable[tuple[int, int]]) -> None:
        """Record query tasks of a round as ``(query_task_id, source_task_id)`` pairs."""
        values = [(project, int(task), int(round_index), int(source)) for task, source in rows]
        with self._write() as db:
            db.executemany("INSERT OR REPLACE INTO query_tasks VALUES (?, ?, ?, ?)", values)

    def query_tasks(self, project: str, round_index: int) -> dict[int, int]:
        """``query_task_id -> source_task_id`` for a round."""
        with self._read() as db:
            rows = db.execute("SELECT task_id, source_task_id FROM query_tasks WHERE project = ? AND round_index = ?",
                              (project, int(round_index))).fetchall()
        return dict(rows)

    def query_task_round(self, project: str, task_id: int) -> tuple[int, int] | None:
        """``(round_index, source_task_id)`` of a query task, or None if the task is not one of ours."""
        with self._read() as db:
            row = db.execute("SELECT round_index, source_task_id FROM query_tasks WHERE project = ? AND task_id = ?",
                             (project, int(task_id))).fetchone()
        return None if row is None else (row[0], row[1])

    # --- dense masks -------------------------------------------------------------------------------------------

    def plan_masks(self, project: str, version: int, rows: Iterable[tuple[int, str]]) -> None:
        """Record a version's mask files to push, as ``(source task id, path)``."""
        values = [(project, int(version), int(src), str(path), MaskStatus.TODO) for src, path in rows]
        with self._write() as db:
            db.executemany("INSERT OR IGNORE INTO masks VALUES (?, ?, ?, ?, ?)", values)

    def masks(self, project: str, version: int, status: MaskStatus, limit: int = -1) -> list[tuple[int, str]]:
        """``(source task id, path)`` of a version's masks in ``status``, by source id."""
        with self._read() as db:
            rows = db.execute("SELECT source_task_id, path FROM masks WHERE project = ? AND version = ? AND "
                              "status = ? ORDER BY source_task_id LIMIT ?",
                              (project, int(version), status, int(limit))).fetchall()
        return [(int(s), str(p)) for s, p in rows]

    def set_mask_status(self, project: str, version: int, sources: Iterable[int], status: MaskStatus) -> None:
        with self._write() as db:
            db.executemany("UPDATE masks SET status = ? WHERE project = ? AND version = ? AND source_task_id = ?",
                           [(status, project, int(version), int(s)) for s in sources])

    def mask_paths(self, project: str, version: int, sources: Iterable[int]) -> dict[int, str]:
        """``source task id -> path`` of the version's mask files recorded for ``sources``, whatever their status (a
        path may name a file deleted since)."""
        out = {}
        with self._read() as db:
            for source in sources:
                row = db.execute("SELECT path FROM masks WHERE project = ? AND version = ? AND source_task_id = ?",
                                 (project, int(version), int(source))).fetchone()
                if row is not None:
                    out[int(source)] = str(row[0])
        return out

    # --- source tasks (the pool, as last listed from Label Studio; export reads them offline) -------------------

    def set_sources(self, project: str, sources: dict[int, dict[str, Any]]) -> None:
        """Replace the listed source tasks (one row each; rows of tasks gone from Label Studio are removed)."""
        with self._write() as db:
            known = {r[0] for r in db.execute("SELECT task_id FROM sources WHERE project = ?", (project,))}
            db.executemany("DELETE FROM sources WHERE project = ? AND task_id = ?",
                           [(project, t) for t in known - set(sources)])
            db.executemany("INSERT OR REPLACE INTO sources VALUES (?, ?, ?)",
                           [(project, int(t), json.dumps(d, sort_keys=True)) for t, d in sources.items()])

    def sources(self, project: str) -> dict[int, dict[str, Any]]:
        """``task id -> task data`` of the source tasks last listed."""
        with self._read() as db:
            rows = db.execute("SELECT task_id, data FROM sources WHERE project = ? ORDER BY task_id",
                              (project,)).fetchall()
        return {int(t): json.loads(d) for t, d in rows}

    # --- quarantined items (images that cannot be read: left out of rounds until they can) ---------------------

    def set_quarantine(self, project: str, kind: str, reasons: dict[int, str]) -> None:
        """Replace the project's quarantined items of ``kind`` (``item -> reason``); items not listed are released."""
        with self._write() as db:
            db.execute("DELETE FROM quarantine WHERE project = ? AND kind = ?", (project, kind))
            db.executemany("INSERT INTO quarantine VALUES (?, ?, ?, ?, ?)",
                           [(project, kind, int(i), str(r), time.time()) for i, r in reasons.items()])

    def quarantine(self, project: str, kind: str) -> list[dict[str, Any]]:
        """``{"item", "reason", "at"}`` of the project's quarantined items of ``kind``."""
        with self._read() as db:
            rows = db.execute("SELECT item, reason, at FROM quarantine WHERE project = ? AND kind = ? ORDER BY item",
                              (project, kind)).fetchall()
        return [{"item": i, "reason": r, "at": t} for i, r, t in rows]

    # --- trainings ---------------------------------------------------------------------------------------------

    def add_training(self, project: str, version: int, record: dict[str, Any]) -> None:
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO trainings VALUES (?, ?, ?)",
                       (project, int(version), json.dumps(record)))

    def trainings(self, project: str) -> list[dict[str, Any]]:
        """Every training of the project, oldest first, each with its ``version`` number."""
        with self._read() as db:
            rows = db.execute("SELECT version, record FROM trainings WHERE project = ? ORDER BY version",
                              (project,)).fetchall()
        return [dict(json.loads(record), version=int(v)) for v, record in rows]
