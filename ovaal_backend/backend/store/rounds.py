"""A round's query tasks: planned from the round job's result, imported into Label Studio, answered (tables
``round_queries``, ``query_tasks``).

A round's result becomes one row per query task, each updated on its own as it reaches Label Studio, so publishing
costs the same per task whatever the project's size (no file rewritten whole), and a crash resumes at the first row
not yet done. A row's status (``QueryStatus``) goes ``planned`` -> ``importing`` (sent in a batch whose answer may
be lost) -> ``imported`` (its task id known); a row whose source task was deleted from Label Studio ends ``gone``.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from typing import Any

from ..sqlite import Repository, StoredEnum, id_chunks, placeholders

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
"""


class QueryStatus(StoredEnum):
    """Where a planned query task is on its way into Label Studio (``round_queries.status``)."""

    PLANNED = "planned"
    """Recorded from the round job's result, not sent yet (or sent in a batch Label Studio did not create)."""
    IMPORTING = "importing"
    """Sent in a batch whose answer may be lost: adopted by its markers if Label Studio created it."""
    IMPORTED = "imported"
    """In Label Studio, its task id known."""
    GONE = "gone"
    """Its source task was deleted from Label Studio: never sent."""


class Rounds(Repository):
    """The project's query tasks, planned and known by id, by round."""

    SCHEMA = _SCHEMA

    def plan_queries(self, round_index: int, version: int,
                     rows: Iterable[tuple[int, float, list[dict[str, Any]]]]) -> None:
        """Record the round's planned query tasks as ``(source task id, score, keypoint result)``; a source already
        planned for that round keeps its row (a re-run job must not re-plan what may be imported)."""
        values = [(self.key, int(round_index), int(src), int(version), float(score), json.dumps(result),
                   QueryStatus.PLANNED) for src, score, result in rows]
        with self._write() as db:
            db.executemany("INSERT OR IGNORE INTO round_queries (project, round_index, source_task_id, version, score, "
                           "result, status) VALUES (?, ?, ?, ?, ?, ?, ?)", values)

    def queries(self, round_index: int, status: QueryStatus,
                limit: int = -1) -> list[tuple[int, float, list[dict[str, Any]]]]:
        """``(source task id, score, result)`` of the round's rows in ``status``, by source id."""
        with self._read() as db:
            rows = db.execute("SELECT source_task_id, score, result FROM round_queries WHERE project = ? AND "
                              "round_index = ? AND status = ? ORDER BY source_task_id LIMIT ?",
                              (self.key, int(round_index), status, int(limit))).fetchall()
        return [(int(s), float(score), json.loads(result)) for s, score, result in rows]

    def set_query_status(self, round_index: int, sources: Iterable[int], status: QueryStatus) -> None:
        """Move the round's planned rows of ``sources`` to ``status`` (one batch, one transaction)."""
        with self._write() as db:
            db.executemany("UPDATE round_queries SET status = ? WHERE project = ? AND round_index = ? AND "
                           "source_task_id = ?", [(status, self.key, int(round_index), int(s)) for s in sources])

    def set_imported(self, round_index: int, pairs: Iterable[tuple[int, int]]) -> None:
        """Record ``(source task id, query task id)`` pairs as imported, and the tasks as the round's query tasks."""
        pairs = [(int(s), int(t)) for s, t in pairs]
        with self._write() as db:
            db.executemany("UPDATE round_queries SET status = ?, task_id = ? WHERE project = ? AND round_index = ? "
                           "AND source_task_id = ?",
                           [(QueryStatus.IMPORTED, t, self.key, int(round_index), s) for s, t in pairs])
            db.executemany("INSERT OR REPLACE INTO query_tasks VALUES (?, ?, ?, ?)",
                           [(self.key, t, int(round_index), s) for s, t in pairs])

    def query_prediction(self, task_id: int) -> tuple[list[dict[str, Any]], float] | None:
        """The keypoint result and score a query task was imported with, or None for a task we did not import."""
        with self._read() as db:
            row = db.execute("SELECT result, score FROM round_queries WHERE project = ? AND task_id = ?",
                             (self.key, int(task_id))).fetchone()
        return None if row is None else (json.loads(row[0]), float(row[1]))

    def count_queries(self, round_index: int, status: QueryStatus | None = None) -> int:
        """Planned query tasks of a round in ``status`` (any status when None)."""
        query = "SELECT COUNT(*) FROM round_queries WHERE project = ? AND round_index = ?"
        args: list[object] = [self.key, round_index]
        if status is not None:
            query, args = query + " AND status = ?", [*args, status]
        with self._read() as db:
            (count,) = db.execute(query, args).fetchone()
        return int(count)

    def round_progress(self, round_index: int) -> tuple[int, int]:
        """``(query tasks, answered ones)`` of a round, counted in SQL (the annotations table shares this file).

        Called on every wake-up of a project's worker, so it must not load the round's rows into Python.
        """
        with self._read() as db:
            total, answered = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(EXISTS (SELECT 1 FROM annotations a WHERE a.project = q.project "
                "AND a.task_id = q.task_id)), 0) FROM query_tasks q WHERE q.project = ? AND q.round_index = ?",
                (self.key, int(round_index))).fetchone()
        return int(total), int(answered)

    def unanswered_query_tasks(self, round_index: int) -> list[int]:
        """Query tasks of a round that no annotation answered (submitted or skipped)."""
        with self._read() as db:
            rows = db.execute("SELECT task_id FROM query_tasks q WHERE project = ? AND round_index = ? AND NOT EXISTS "
                              "(SELECT 1 FROM annotations a WHERE a.project = q.project AND a.task_id = q.task_id) "
                              "ORDER BY task_id", (self.key, int(round_index))).fetchall()
        return [int(r[0]) for r in rows]

    def forget_query_tasks(self, task_ids: list[int]) -> None:
        """Drop query tasks removed from Label Studio (a round's unanswered ones, when it ends)."""
        with self._write() as db:
            db.executemany("DELETE FROM query_tasks WHERE project = ? AND task_id = ?",
                           [(self.key, int(t)) for t in task_ids])

    # --- query tasks known by id (ours, or adopted by their markers) ---------------------------------------------

    def add_query_tasks(self, round_index: int, rows: Iterable[tuple[int, int]]) -> None:
        """Record query tasks of a round as ``(query_task_id, source_task_id)`` pairs."""
        values = [(self.key, int(task), int(round_index), int(source)) for task, source in rows]
        with self._write() as db:
            db.executemany("INSERT OR REPLACE INTO query_tasks VALUES (?, ?, ?, ?)", values)

    def query_tasks(self, round_index: int) -> dict[int, int]:
        """``query_task_id -> source_task_id`` for a round."""
        with self._read() as db:
            rows = db.execute("SELECT task_id, source_task_id FROM query_tasks WHERE project = ? AND round_index = ?",
                              (self.key, int(round_index))).fetchall()
        return dict(rows)

    def query_task_round(self, task_id: int) -> tuple[int, int] | None:
        """``(round_index, source_task_id)`` of a query task, or None if the task is not one of ours."""
        with self._read() as db:
            row = db.execute("SELECT round_index, source_task_id FROM query_tasks WHERE project = ? AND task_id = ?",
                             (self.key, int(task_id))).fetchone()
        return None if row is None else (row[0], row[1])

    # --- what the progress figures read ------------------------------------------------------------------------

    def tasks_per_round(self) -> dict[int, int]:
        """Query tasks per round."""
        with self._read() as db:
            rows = db.execute("SELECT round_index, COUNT(*) FROM query_tasks WHERE project = ? GROUP BY round_index",
                              (self.key,)).fetchall()
        return {int(r): int(n) for r, n in rows}

    def answered_queries(self, sources: Collection[int] | None = None) -> list[tuple[int, int, list[dict[str, Any]]]]:
        """``(round, source task id, keypoint regions)`` of every query task (on the ``sources`` images only, when
        given) with a submitted (not skipped) annotation, its regions as it was imported (what ``query_prediction``
        gives), by round and task."""
        query = ("SELECT q.round_index, q.source_task_id, r.result FROM query_tasks q {} JOIN round_queries r "
                 "ON r.project = q.project AND r.task_id = q.task_id WHERE q.project = ? AND EXISTS (SELECT 1 FROM "
                 "annotations a WHERE a.project = q.project AND a.task_id = q.task_id AND a.cancelled = 0)")
        order = " ORDER BY q.round_index, q.task_id"
        with self._read() as db:
            if sources is None:
                rows = db.execute(query.format("") + order, (self.key,)).fetchall()
            else:
                rows = []
                for chunk in id_chunks(sorted({int(s) for s in sources})):  # by image: its index, not every task's
                    rows += db.execute(query.format("INDEXED BY query_tasks_source") + f" AND q.source_task_id IN "
                                       f"({placeholders(chunk)})" + order, (self.key, *chunk)).fetchall()
        return [(int(r), int(source), json.loads(result)) for r, source, result in rows]

    def imported_results(self, task_ids: Collection[int]) -> dict[int, tuple[int, int, list[dict[str, Any]]]]:
        """``task id -> (source task id, round, keypoint regions as imported)`` of the ``task_ids`` that are
        imported query tasks."""
        found = {}
        with self._read() as db:
            for chunk in id_chunks(sorted(task_ids)):
                for task, source, round_index, result in db.execute(
                        "SELECT q.task_id, q.source_task_id, q.round_index, r.result FROM query_tasks q JOIN "
                        "round_queries r ON r.project = q.project AND r.task_id = q.task_id WHERE q.project = ? AND "
                        f"q.task_id IN ({placeholders(chunk)})", (self.key, *chunk)):
                    found[int(task)] = (int(source), int(round_index), json.loads(result))
        return found

    def task_signature(self) -> tuple[Any, ...]:
        """``(query tasks, sum of their ids)``: changes when a query task is added or forgotten."""
        with self._read() as db:
            return tuple(db.execute("SELECT COUNT(*), SUM(task_id) FROM query_tasks WHERE project = ?",
                                    (self.key,)).fetchone())

    def task_signatures(self) -> dict[int, tuple[Any, ...]]:
        """``task_signature`` per source image."""
        with self._read() as db:
            rows = db.execute("SELECT source_task_id, COUNT(*), SUM(task_id) FROM query_tasks WHERE project = ? "
                              "GROUP BY source_task_id", (self.key,)).fetchall()
        return {int(source): tuple(values) for source, *values in rows}

    def import_signature(self) -> tuple[Any, ...]:
        """``(imported queries, sum of their task ids)``: changes when a planned query gets its task."""
        with self._read() as db:
            return tuple(db.execute("SELECT COUNT(task_id), SUM(task_id) FROM round_queries WHERE project = ?",
                                    (self.key,)).fetchone())

    def import_signatures(self) -> dict[int, tuple[Any, ...]]:
        """``import_signature`` per source image."""
        with self._read() as db:
            rows = db.execute("SELECT source_task_id, COUNT(task_id), SUM(task_id) FROM round_queries WHERE "
                              "project = ? GROUP BY source_task_id", (self.key,)).fetchall()
        return {int(source): tuple(values) for source, *values in rows}
