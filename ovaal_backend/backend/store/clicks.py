"""The clicks: annotations as Label Studio delivered them, and their labelled pixels (tables ``annotations``,
``points``, ``deleted_annotations``).

Label Studio does not retry a webhook delivery, and the backend may restart at any time, so everything an annotator
gave is written here before it is acted on. Writes are keyed by Label Studio's annotation id, which makes a
re-delivery or an ``ANNOTATION_UPDATED`` replace what was stored instead of adding to it. Nothing is ever deleted
except by ``delete`` (and by an annotation replacing its own points).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable
from typing import Any

import numpy as np

from ...config import IGNORE_INDEX
from ..sqlite import Repository, id_chunks, is_older, placeholders

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
CREATE INDEX IF NOT EXISTS annotations_source ON annotations (project, source_task_id, seq, annotation_id, cancelled);
"""
_IMAGE_SIGNATURE = ("SELECT source_task_id, COUNT(*), SUM(seq), SUM(annotation_id), MAX(seq) FROM annotations "
                    "WHERE project = ?")


class Clicks(Repository):
    """The project's stored annotations and their labelled pixels.

    Example:
        >>> store = ProjectStore("model_dir/7/labels.sqlite3", "7")
        >>> store.clicks.put(1, task_id=10, source_task_id=3, round_index=0, annotator="a@b.c",
        ...                  points=[(5, 9, 2)], cancelled=False)
        True
        >>> store.clicks.labelled_points()[3].tolist()
        [[5, 9, 2]]
    """

    SCHEMA = _SCHEMA
    ADDED_COLUMNS = {"annotations": (("ls_updated_at", "TEXT"),)}

    def put(
        self,
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
        key = (self.key, int(annotation_id))
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

    def is_current(self, annotation_id: int, updated_at: str | None) -> bool:
        """Whether a delivery of an annotation is its newest state: False when Label Studio deleted the annotation
        or a newer edit of it is stored (webhooks may arrive late, ``resync`` queues what Label Studio holds)."""
        with self._read() as db:
            key = (self.key, int(annotation_id))
            if db.execute("SELECT 1 FROM deleted_annotations WHERE project = ? AND annotation_id = ?", key).fetchone():
                return False
            row = db.execute("SELECT ls_updated_at FROM annotations WHERE project = ? AND annotation_id = ?",
                             key).fetchone()
        return row is None or not is_older(updated_at, row[0])

    def delete(self, annotation_ids: Iterable[int]) -> int:
        """Forget annotations deleted in Label Studio, with their points.

        Returns:
            How many stored annotations were removed (ids never stored count nothing).
        """
        keys = [(self.key, int(i)) for i in annotation_ids]
        with self._write() as db:
            db.executemany("INSERT OR IGNORE INTO deleted_annotations VALUES (?, ?)", keys)
            db.executemany("DELETE FROM points WHERE project = ? AND annotation_id = ?", keys)
            before = db.total_changes
            db.executemany("DELETE FROM annotations WHERE project = ? AND annotation_id = ?", keys)
            return db.total_changes - before

    def labelled_points(self, sources: Collection[int] | None = None) -> dict[int, np.ndarray]:
        """Every labelled pixel of the project (or of the ``sources`` images only), grouped by source image.

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
                rows = db.execute(query.format("JOIN") + " ORDER BY a.seq DESC", (self.key,)).fetchall()
            for chunk in id_chunks(sorted({int(s) for s in sources or ()})):
                rows += db.execute(query.format("CROSS JOIN") + f" AND a.source_task_id IN "
                                   f"({placeholders(chunk)}) ORDER BY a.seq DESC", (self.key, *chunk)).fetchall()
        if not rows:
            return {}
        newest_first = np.asarray(rows, dtype=np.int64)  # chunks hold disjoint images: each is newest first
        _, first = np.unique(newest_first[:, :3], axis=0, return_index=True)
        table = newest_first[first]
        images, starts = np.unique(table[:, 0], return_index=True)
        groups = np.split(table[:, 1:], starts[1:])
        return {int(s): np.ascontiguousarray(g) for s, g in zip(images, groups, strict=True)}

    def annotation_ids(self) -> set[int]:
        """Every stored annotation id of the project (a re-sync deletes the ones Label Studio no longer has)."""
        with self._read() as db:
            rows = db.execute("SELECT annotation_id FROM annotations WHERE project = ?", (self.key,)).fetchall()
        return {r[0] for r in rows}

    def counts(self) -> dict[str, int]:
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
                "WHERE p.project = ?) WHERE newest = 1", (IGNORE_INDEX, self.key)).fetchone()
        return {**self.annotation_counts(), "points": int(points), "ignored_points": int(ignored)}

    def annotation_counts(self) -> dict[str, int]:
        """``annotations`` (stored, skipped ones included) and ``cancelled`` (skipped): the cheap part of ``counts``."""
        with self._read() as db:
            total, cancelled = db.execute("SELECT COUNT(*), COALESCE(SUM(cancelled), 0) FROM annotations "
                                          "WHERE project = ?", (self.key,)).fetchone()
        return {"annotations": int(total), "cancelled": int(cancelled)}

    def by_round(self) -> dict[int, dict[str, Any]]:
        """Per round: stored annotations (skipped ones included), and when the first and the last was stored."""
        with self._read() as db:
            rows = db.execute("SELECT round_index, COUNT(*), MIN(updated_at), MAX(updated_at) FROM annotations "
                              "WHERE project = ? GROUP BY round_index", (self.key,)).fetchall()
        return {int(r): {"annotations": int(n), "first": first, "last": last} for r, n, first, last in rows}

    # --- what ``ProjectFacts`` keeps its figures by --------------------------------------------------------------

    def signature(self) -> tuple[Any, ...]:
        """``(annotations, sum of seq, sum of ids, newest seq)``: a re-stored annotation gets a new ``seq``; a deleted
        one lowers the count and the sums, and a new one may reuse the deleted newest ``seq`` but never its id."""
        with self._read() as db:
            return tuple(db.execute("SELECT COUNT(*), SUM(seq), SUM(annotation_id), MAX(seq) FROM annotations "
                                    "WHERE project = ?", (self.key,)).fetchone())

    def image_signatures(self, images: Collection[int] | None = None) -> dict[int, tuple[Any, ...]]:
        """``signature`` per source image (of every image with annotations, or of ``images`` only)."""
        with self._read() as db:
            if images is None:
                rows = db.execute(_IMAGE_SIGNATURE + " GROUP BY source_task_id", (self.key,)).fetchall()
            else:
                rows = [row for chunk in id_chunks(sorted(images)) for row in db.execute(
                    f"{_IMAGE_SIGNATURE} AND source_task_id IN ({placeholders(chunk)}) GROUP BY source_task_id",
                    (self.key, *chunk))]
        return {int(source): tuple(values) for source, *values in rows}

    def images_since(self, seq: int) -> list[int]:
        """The source images with annotations stored (or re-stored) after ``seq``, ascending."""
        with self._read() as db:
            return sorted(int(r[0]) for r in db.execute(
                "SELECT DISTINCT source_task_id FROM annotations WHERE seq > ? AND project = ?", (seq, self.key)))

    def answered_tasks(self, images: Collection[int]) -> dict[int, set[int]]:
        """``image -> task ids`` with a submitted (not skipped) annotation, of the ``images``."""
        out: dict[int, set[int]] = {}
        with self._read() as db:
            for chunk in id_chunks(sorted(images)):
                for source, task in db.execute(
                        "SELECT source_task_id, task_id FROM annotations WHERE project = ? AND cancelled = 0 AND "
                        f"source_task_id IN ({placeholders(chunk)})", (self.key, *chunk)):
                    out.setdefault(int(source), set()).add(int(task))
        return out
