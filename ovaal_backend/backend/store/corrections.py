"""Corrected masks in the project's SQLite file: one row per annotation, the newest per source task counts.

A row holds the annotation's label map (keys = positions in the project's ``label_names``, so a changed label config
remaps it like the clicks; compressed, a CamVid map is a few KB) and the figure measured when it was stored (the
pushed mask against it, ``corrections.correction_figure``). Rows are keyed by Label Studio's annotation id, so a
re-delivered webhook or ``resync`` replaces a row instead of adding one; a deleted annotation's row goes, and an older
annotation of the same task (another annotator's) counts again.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from ..sqlite import Repository, is_older

_SCHEMA = """
CREATE TABLE IF NOT EXISTS corrections (
    project TEXT NOT NULL,
    annotation_id INTEGER NOT NULL,
    task_id INTEGER NOT NULL,
    height INTEGER NOT NULL,
    width INTEGER NOT NULL,
    label_map BLOB NOT NULL,
    digest TEXT NOT NULL,
    figure TEXT,
    seq INTEGER NOT NULL,
    stored_at REAL NOT NULL,
    ls_updated_at TEXT,
    PRIMARY KEY (project, annotation_id)
);
CREATE INDEX IF NOT EXISTS corrections_task ON corrections (project, task_id, seq);
"""
_NEWEST = ("NOT EXISTS (SELECT 1 FROM corrections d WHERE d.project = c.project AND d.task_id = c.task_id "
           "AND d.seq > c.seq)")
"""A row that is the newest of its task."""


def map_digest(label_map: np.ndarray) -> str:
    """What tells two label maps apart (shape, type and pixels) without comparing them pixel by pixel."""
    head = f"{label_map.shape}{label_map.dtype.str}".encode()
    return hashlib.sha256(head + np.ascontiguousarray(label_map).tobytes()).hexdigest()[:32]


class Corrections(Repository):
    """The project's corrected masks, keyed by annotation id."""

    SCHEMA = _SCHEMA

    def wants(self, annotation_id: int, digest: str, updated_at: str | None) -> bool:
        """Whether an annotation's map is news: False when the same map is stored for it, or the stored one is
        newer (Label Studio's ``updated_at``: a late webhook of an older edit changes nothing). Lets the caller skip
        measuring a re-delivered correction."""
        with self._read() as db:
            row = db.execute("SELECT digest, ls_updated_at FROM corrections WHERE project = ? AND annotation_id = ?",
                             (self.key, int(annotation_id))).fetchone()
        return row is None or (row[0] != digest and not is_older(updated_at, row[1]))

    def put(self, annotation_id: int, task_id: int, label_map: np.ndarray,
            figure: dict[str, Any] | None, updated_at: str | None = None) -> bool:
        """Store an annotation's corrected mask (replacing its earlier one); it becomes its task's newest.

        Returns:
            False when a newer edit of the annotation is already stored (nothing changes), else True.
        """
        blob = _pack(label_map)
        key = (self.key, int(annotation_id))
        with self._write() as db:
            row = db.execute("SELECT ls_updated_at FROM corrections WHERE project = ? AND annotation_id = ?",
                             key).fetchone()
            if row is not None and is_older(updated_at, row[0]):
                return False
            (seq,) = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM corrections").fetchone()
            db.execute("INSERT OR REPLACE INTO corrections VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (*key, int(task_id), int(label_map.shape[0]), int(label_map.shape[1]), blob,
                        map_digest(label_map), None if figure is None else json.dumps(figure), seq, time.time(),
                        updated_at))
        return True

    def delete(self, annotation_ids: Iterable[int]) -> int:
        """Forget the corrections of these annotations (deleted in Label Studio, or updated to hold no brush
        region); returns how many rows went."""
        with self._write() as db:
            before = db.total_changes
            db.executemany("DELETE FROM corrections WHERE project = ? AND annotation_id = ?",
                           [(self.key, int(i)) for i in annotation_ids])
            return db.total_changes - before

    def tasks(self) -> set[int]:
        """The source tasks that have a corrected mask."""
        with self._read() as db:
            return {int(r[0]) for r in db.execute("SELECT DISTINCT task_id FROM corrections WHERE project = ?",
                                                  (self.key,))}

    def newest(self, task_id: int) -> np.ndarray | None:
        """The newest corrected mask of one task (as stored: ``label_names`` keys), or None."""
        with self._read() as db:
            row = db.execute("SELECT label_map FROM corrections WHERE project = ? AND task_id = ? "
                             "ORDER BY seq DESC LIMIT 1", (self.key, int(task_id))).fetchone()
        return None if row is None else _unpack(row[0])

    def newest_maps(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(task id, map)`` of each corrected task's newest mask, one at a time (a project's maps are never all
        decompressed at once)."""
        with self._read() as db:
            for task_id, blob in db.execute(f"SELECT task_id, label_map FROM corrections c WHERE project = ? AND "
                                            f"{_NEWEST} ORDER BY task_id", (self.key,)):
                yield int(task_id), _unpack(blob)

    def figures(self) -> list[dict[str, Any]]:
        """``{"task", "annotation", "stored_at", "figure"}`` of each corrected task's newest mask, oldest first
        (without the maps: ``/metrics`` asks often)."""
        with self._read() as db:
            rows = db.execute(f"SELECT task_id, annotation_id, stored_at, figure FROM corrections c WHERE project = ? "
                              f"AND {_NEWEST} ORDER BY seq", (self.key,)).fetchall()
        return [{"task": int(t), "annotation": int(a), "stored_at": float(at),
                 "figure": None if figure is None else json.loads(figure)} for t, a, at, figure in rows]


def _pack(label_map: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(label_map), allow_pickle=False)
    return zlib.compress(buffer.getvalue(), 6)


def _unpack(blob: bytes) -> np.ndarray:
    return np.load(io.BytesIO(zlib.decompress(blob)), allow_pickle=False)

