"""The SQLite label store: annotated points, query tasks, project state and webhook events.

Label Studio does not retry a webhook delivery, and the backend may restart at any time, so everything an annotator
gave and every event not yet processed is written here before it is acted on. Writes are keyed by Label Studio's
annotation id, which makes a re-delivery or an ``ANNOTATION_UPDATED`` replace what was stored instead of adding to it.

One file per backend; every call opens its own connection (WAL mode, so readers never block the writer) and writes
are serialised by a lock, which makes one ``LabelStore`` safe to share between the Flask threads and the worker.
Nothing is ever deleted except by ``delete_annotations`` (and by an annotation replacing its own points).
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Iterable
from datetime import datetime
from typing import Any

import numpy as np

from ..config import IGNORE_INDEX
from .sqlite import SqliteFile

_SCHEMA = """
CREATE TABLE IF NOT EXISTS annotations (
    project TEXT NOT NULL,
    annotation_id INTEGER NOT NULL,
    task_id INTEGER NOT NULL,
    source_task_id INTEGER NOT NULL,
    round_index INTEGER NOT NULL,
    annotator TEXT,
    cancelled INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (project, annotation_id)
);
CREATE INDEX IF NOT EXISTS annotations_round ON annotations (project, round_index);
CREATE INDEX IF NOT EXISTS annotations_seq ON annotations (seq);
CREATE INDEX IF NOT EXISTS annotations_task ON annotations (project, task_id);
CREATE TABLE IF NOT EXISTS deleted_annotations (
    project TEXT NOT NULL,
    annotation_id INTEGER NOT NULL,
    PRIMARY KEY (project, annotation_id)
);
CREATE TABLE IF NOT EXISTS points (
    project TEXT NOT NULL,
    annotation_id INTEGER NOT NULL,
    row INTEGER NOT NULL,
    col INTEGER NOT NULL,
    label INTEGER NOT NULL,
    PRIMARY KEY (project, annotation_id, row, col)
);
CREATE TABLE IF NOT EXISTS project_state (
    project TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    project TEXT NOT NULL,
    action TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at REAL NOT NULL,
    done_at REAL
);
CREATE INDEX IF NOT EXISTS events_pending ON events (done_at, id);
CREATE INDEX IF NOT EXISTS annotations_source ON annotations (project, source_task_id, seq, annotation_id, cancelled);
"""
_OPEN_EVENT = "done_at IS NULL AND quarantined_at IS NULL"
"""An event still to apply: neither done nor set aside (``pending_events`` lists them, ``pending_count`` counts
them)."""


class LabelStore(SqliteFile):
    """Durable label state of every project a backend serves.

    Args:
        path: The SQLite file; its folder is created if missing, the schema on first open.

    Example:
        >>> store = LabelStore("model_dir/labels.sqlite3")
        >>> store.put_annotation("7.1700000000", 1, task_id=10, source_task_id=3, round_index=0,
        ...                      annotator="a@b.c", points=[(5, 9, 2)], cancelled=False)
        True
        >>> store.labelled_points("7.1700000000")[3].tolist()
        [[5, 9, 2]]
    """

    SCHEMA = _SCHEMA
    ADDED_COLUMNS = {"annotations": (("ls_updated_at", "TEXT"),),
                     "events": (("attempts", "INTEGER NOT NULL DEFAULT 0"), ("error", "TEXT"),
                                ("quarantined_at", "REAL"), ("retry_at", "REAL"))}
    # Events still to apply and those set aside, by project: /metrics counts the first and lists the second without
    # reading other rows (``quarantined_at`` lies after the payload: filtering on it read every pending payload).
    LATE_SCHEMA = f"""
CREATE INDEX IF NOT EXISTS events_open ON events (project, done_at, quarantined_at) WHERE {_OPEN_EVENT};
CREATE INDEX IF NOT EXISTS events_set_aside ON events (project, id)
    WHERE quarantined_at IS NOT NULL AND done_at IS NULL;
"""

    # --- annotations -------------------------------------------------------------------------------------------

    def put_annotation(
        self,
        project: str,
        annotation_id: int,
        task_id: int,
        source_task_id: int,
        round_index: int,
        annotator: str | None,
        points: Iterable[tuple[int, int, int]],
        cancelled: bool,
        updated_at: str | None = None,
    ) -> bool:
        """Store an annotation, replacing whatever that annotation id stored before.

        Args:
            project: The project key (Label Studio's ``"<id>.<created>"``).
            annotation_id: Label Studio's annotation id; the key that makes re-deliveries and updates idempotent.
            task_id: The query task that was annotated.
            source_task_id: The task of the image the points lie on.
            round_index: The acquisition round the query task belongs to.
            annotator: Who answered (e-mail or user id), for the record.
            points: ``(row, col, label_index)`` per pixel; a pixel given twice keeps its last label.
            cancelled: The annotator skipped the task: the task counts as answered but no points are stored.
            updated_at: Label Studio's ``updated_at`` (ISO 8601): a delivery older than the stored one is stale and
                changes nothing, whatever order webhooks arrive in.

        Returns:
            True if anything changed; False if the same annotation was already stored exactly like this, the delivery
            is stale, or the annotation was deleted in Label Studio (a late update never brings it back).
        """
        wanted = [] if cancelled else sorted({(int(r), int(c)): int(lab) for r, c, lab in points}.items())
        new_points = [(r, c, lab) for (r, c), lab in wanted]
        header = (int(task_id), int(source_task_id), int(round_index), annotator, int(bool(cancelled)))
        key = (project, int(annotation_id))
        with self._write() as db:
            if db.execute("SELECT 1 FROM deleted_annotations WHERE project = ? AND annotation_id = ?", key).fetchone():
                return False
            row = db.execute("SELECT task_id, source_task_id, round_index, annotator, cancelled, ls_updated_at "
                             "FROM annotations WHERE project = ? AND annotation_id = ?", key).fetchone()
            if row is not None and is_older(updated_at, row[5]):
                return False
            old_points = db.execute("SELECT row, col, label FROM points WHERE project = ? AND annotation_id = ? "
                                    "ORDER BY row, col", key).fetchall()
            if row is not None and tuple(row[:5]) == header and old_points == new_points:
                if updated_at and updated_at != row[5]:  # the same points, a newer edit (e.g. of its brush regions)
                    db.execute("UPDATE annotations SET ls_updated_at = ? WHERE project = ? AND annotation_id = ?",
                               (updated_at, *key))
                return False
            (seq,) = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM annotations").fetchone()
            db.execute("INSERT OR REPLACE INTO annotations (project, annotation_id, task_id, source_task_id, "
                       "round_index, annotator, cancelled, seq, updated_at, ls_updated_at) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (*key, *header, seq, time.time(), updated_at))
            db.execute("DELETE FROM points WHERE project = ? AND annotation_id = ?", key)
            db.executemany("INSERT INTO points VALUES (?, ?, ?, ?, ?)", [(*key, *p) for p in new_points])
        return True

    def is_current(self, project: str, annotation_id: int, updated_at: str | None) -> bool:
        """Whether a delivery of an annotation is its newest state: False when Label Studio deleted the annotation
        or a newer edit of it is stored (webhooks may arrive late, ``resync`` queues what Label Studio holds)."""
        with self._read() as db:
            key = (project, int(annotation_id))
            if db.execute("SELECT 1 FROM deleted_annotations WHERE project = ? AND annotation_id = ?", key).fetchone():
                return False
            row = db.execute("SELECT ls_updated_at FROM annotations WHERE project = ? AND annotation_id = ?",
                             key).fetchone()
        return row is None or not is_older(updated_at, row[0])

    def delete_annotations(self, project: str, annotation_ids: Iterable[int]) -> int:
        """Forget annotations deleted in Label Studio, with their points.

        Returns:
            How many stored annotations were removed (ids never stored count nothing).
        """
        keys = [(project, int(i)) for i in annotation_ids]
        with self._write() as db:
            db.executemany("INSERT OR IGNORE INTO deleted_annotations VALUES (?, ?)", keys)
            db.executemany("DELETE FROM points WHERE project = ? AND annotation_id = ?", keys)
            before = db.total_changes
            db.executemany("DELETE FROM annotations WHERE project = ? AND annotation_id = ?", keys)
            return db.total_changes - before

    def labelled_points(self, project: str, sources: Collection[int] | None = None) -> dict[int, np.ndarray]:
        """Every labelled pixel of a project (or of the ``sources`` images only), grouped by source image.

        When two annotations label the same pixel of the same image, the one stored (or updated) last wins, so a
        correction in a later round overrides an earlier answer.

        Returns:
            ``source_task_id -> int64 array (N, 3)`` of ``(row, col, label)``, one row per pixel, sorted by row
            then column. Labels may be IGNORE_INDEX. Images without points are absent.
        """
        # Some images: their annotations first (CROSS JOIN keeps that order), found by annotations_source; left to
        # itself the planner walks every point of the project instead.
        query = ("SELECT a.source_task_id, p.row, p.col, p.label FROM annotations a {} points p "
                 "ON p.project = a.project AND p.annotation_id = a.annotation_id WHERE a.project = ?")
        rows: list[tuple[int, int, int, int]] = []
        with self._read() as db:
            if sources is None:
                rows = db.execute(query.format("JOIN") + " ORDER BY a.seq DESC", (project,)).fetchall()
            for chunk in id_chunks(sorted({int(s) for s in sources or ()})):
                rows += db.execute(query.format("CROSS JOIN") + f" AND a.source_task_id IN "
                                   f"({', '.join('?' * len(chunk))}) ORDER BY a.seq DESC", (project, *chunk)).fetchall()
        if not rows:
            return {}
        newest_first = np.asarray(rows, dtype=np.int64)  # chunks hold disjoint images: each is newest first
        _, first = np.unique(newest_first[:, :3], axis=0, return_index=True)
        table = newest_first[first]
        images, starts = np.unique(table[:, 0], return_index=True)
        groups = np.split(table[:, 1:], starts[1:])
        return {int(s): np.ascontiguousarray(g) for s, g in zip(images, groups, strict=True)}

    def annotation_ids(self, project: str) -> set[int]:
        """Every stored annotation id of a project (a re-sync deletes the ones Label Studio no longer has)."""
        with self._read() as db:
            rows = db.execute("SELECT annotation_id FROM annotations WHERE project = ?", (project,)).fetchall()
        return {r[0] for r in rows}

    # --- project state -----------------------------------------------------------------------------------------

    def get_state(self, project: str) -> dict[str, Any]:
        """The project's saved state (empty for a project never saved)."""
        with self._read() as db:
            row = db.execute("SELECT state FROM project_state WHERE project = ?", (project,)).fetchone()
        return {} if row is None else json.loads(row[0])

    def set_state(self, project: str, state: dict[str, Any]) -> None:
        """Replace the project's saved state; it must be JSON-serialisable."""
        text = json.dumps(state, sort_keys=True)
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO project_state VALUES (?, ?, ?)", (project, text, time.time()))

    # --- events ------------------------------------------------------------------------------------------------

    def add_event(self, project: str, action: str, payload: dict[str, Any]) -> int:
        """Queue a webhook event durably before answering Label Studio; returns the event id."""
        with self._write() as db:
            cursor = db.execute("INSERT INTO events (project, action, payload, created_at) VALUES (?, ?, ?, ?)",
                                (project, action, json.dumps(payload), time.time()))
            return int(cursor.lastrowid)

    def pending_events(self, project: str | None = None, now: float | None = None,
                       limit: int = -1) -> list[tuple[int, str, str, dict[str, Any]]]:
        """Events not yet done nor quarantined, oldest first, as ``(id, project, action, payload)``.

        Args:
            project: Only this project's events; None for all projects (restart recovery).
            now: Stop at the first event whose retry is due only later (events apply in order, so none after it).
            limit: At most this many (-1: all); the worker reads a backlog in batches, not 50,000 payloads at once.
        """
        query = f"SELECT id, project, action, payload, retry_at FROM events WHERE {_OPEN_EVENT}"
        args: tuple[Any, ...] = ()
        if project is not None:
            query += " AND project = ?"
            args = (project,)
        out = []
        with self._read() as db:
            for event_id, key, action, payload, retry_at in db.execute(query + " ORDER BY id LIMIT ?",
                                                                       (*args, int(limit))):
                if now is not None and retry_at is not None and retry_at > now:
                    break  # rows are read one by one: a backlog behind a deferred event is never loaded
                out.append((event_id, key, action, json.loads(payload)))
        return out

    def pending_count(self, project: str) -> int:
        """How many of the project's events are still to apply, counted in SQL (``/metrics`` and the worker ask
        often, and parsing a backlog's payloads only to count them held the GIL for seconds)."""
        with self._read() as db:
            (count,) = db.execute(f"SELECT COUNT(*) FROM events WHERE project = ? AND {_OPEN_EVENT}",
                                  (project,)).fetchone()
        return int(count)

    def mark_event_done(self, event_id: int) -> None:
        """Mark an event processed; it stays in the file as a record."""
        with self._write() as db:
            db.execute("UPDATE events SET done_at = ? WHERE id = ? AND done_at IS NULL", (time.time(), int(event_id)))

    def retry_event_later(self, event_id: int, error: str) -> int:
        """Record a transient failure; the event is due again after 2, 4, 8 ... (at most 300) seconds.

        Returns how many attempts have failed.
        """
        with self._write() as db:
            db.execute("UPDATE events SET attempts = attempts + 1, error = ? WHERE id = ?", (error, int(event_id)))
            (attempts,) = db.execute("SELECT attempts FROM events WHERE id = ?", (int(event_id),)).fetchone()
            db.execute("UPDATE events SET retry_at = ? WHERE id = ?",
                       (time.time() + min(300.0, 2.0 ** attempts), int(event_id)))
        return int(attempts)

    def quarantine_event(self, event_id: int, error: str) -> None:
        """Set an event aside with its reason: it is not applied, not lost, and ``release_events`` retries it."""
        with self._write() as db:
            db.execute("UPDATE events SET quarantined_at = ?, error = ? WHERE id = ?",
                       (time.time(), error, int(event_id)))

    def quarantined_events(self, project: str) -> list[dict[str, Any]]:
        """``{"id", "action", "error", "at"}`` of the project's quarantined events, oldest first."""
        with self._read() as db:
            rows = db.execute("SELECT id, action, error, quarantined_at FROM events WHERE project = ? AND "
                              "quarantined_at IS NOT NULL AND done_at IS NULL ORDER BY id", (project,)).fetchall()
        return [{"id": i, "action": a, "error": e, "at": t} for i, a, e, t in rows]

    def release_events(self, project: str, event_ids: Iterable[int] | None = None) -> int:
        """Put quarantined events (all of the project's, or ``event_ids``) back in the queue; returns how many."""
        query = ("UPDATE events SET quarantined_at = NULL, retry_at = NULL, attempts = 0 WHERE project = ? AND "
                 "quarantined_at IS NOT NULL AND done_at IS NULL")
        with self._write() as db:
            if event_ids is None:
                return db.execute(query, (project,)).rowcount
            return sum(db.execute(query + " AND id = ?", (project, int(i))).rowcount for i in event_ids)

    # --- metrics -----------------------------------------------------------------------------------------------

    def counts(self, project: str) -> dict[str, int]:
        """Totals for ``/metrics``.

        Returns:
            ``annotations`` (stored, skipped ones included), ``cancelled`` (skipped), ``points`` (distinct labelled
            pixels, as ``labelled_points`` gives them) and ``ignored_points`` (those labelled IGNORE_INDEX).
        """
        with self._read() as db:
            points, ignored = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(label = ?), 0) FROM (SELECT p.label, ROW_NUMBER() OVER ("
                "PARTITION BY a.source_task_id, p.row, p.col ORDER BY a.seq DESC) AS newest FROM points p "
                "JOIN annotations a ON a.project = p.project AND a.annotation_id = p.annotation_id "
                "WHERE p.project = ?) WHERE newest = 1", (IGNORE_INDEX, project)).fetchone()
        return {**self.annotation_counts(project), "points": int(points), "ignored_points": int(ignored)}

    def annotation_counts(self, project: str) -> dict[str, int]:
        """``annotations`` (stored, skipped ones included) and ``cancelled`` (skipped): the cheap part of ``counts``."""
        with self._read() as db:
            total, cancelled = db.execute("SELECT COUNT(*), COALESCE(SUM(cancelled), 0) FROM annotations "
                                          "WHERE project = ?", (project,)).fetchone()
        return {"annotations": int(total), "cancelled": int(cancelled)}


def id_chunks(values: list[int], size: int = 500) -> list[list[int]]:
    """``values`` in pieces small enough for one ``IN (...)`` (SQLite limits the parameters of a statement)."""
    return [values[i:i + size] for i in range(0, len(values), size)]


def is_older(new: str | None, stored: str | None) -> bool:
    """True when both timestamps are known and ``new`` is before ``stored`` (ISO 8601, as Label Studio sends them)."""
    if not new or not stored:
        return False
    try:
        return datetime.fromisoformat(new) < datetime.fromisoformat(stored)
    except (TypeError, ValueError):
        return False
