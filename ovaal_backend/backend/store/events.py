"""The webhook events: each is stored before Label Studio gets its answer, and applied later, in order (table
``events``).

Label Studio does not retry a delivery, so an event is durable before it is acknowledged; it stays in the file as a
record once applied. One that fails for good is set aside (quarantined) with its reason, not lost.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from ..sqlite import Repository

_OPEN_EVENT = "done_at IS NULL AND quarantined_at IS NULL"
"""An event still to apply: neither done nor set aside (``pending`` lists them, ``pending_count`` counts them)."""


class Events(Repository):
    """The project's webhook events, oldest first."""

    SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    project TEXT NOT NULL,
    action TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at REAL NOT NULL,
    done_at REAL
);
CREATE INDEX IF NOT EXISTS events_pending ON events (done_at, id);
"""
    ADDED_COLUMNS = {"events": (("attempts", "INTEGER NOT NULL DEFAULT 0"), ("error", "TEXT"),
                                ("quarantined_at", "REAL"), ("retry_at", "REAL"))}
    # Events still to apply and those set aside: /metrics counts the first and lists the second without reading
    # other rows (``quarantined_at`` lies after the payload: filtering on it read every pending payload).
    LATE_SCHEMA = f"""
CREATE INDEX IF NOT EXISTS events_open ON events (project, done_at, quarantined_at) WHERE {_OPEN_EVENT};
CREATE INDEX IF NOT EXISTS events_set_aside ON events (project, id)
    WHERE quarantined_at IS NOT NULL AND done_at IS NULL;
"""

    def add(self, action: str, payload: dict[str, Any]) -> int:
        """Queue a webhook event durably before answering Label Studio; returns the event id."""
        with self._write() as db:
            cursor = db.execute("INSERT INTO events (project, action, payload, created_at) VALUES (?, ?, ?, ?)",
                                (self.key, action, json.dumps(payload), time.time()))
            return int(cursor.lastrowid)

    def pending(self, now: float | None = None, limit: int = -1) -> list[tuple[int, str, dict[str, Any]]]:
        """Events not yet done nor quarantined, oldest first, as ``(id, action, payload)``.

        Args:
            now: Stop at the first event whose retry is due only later (events apply in order, so none after it).
            limit: At most this many (-1: all); the worker reads a backlog in batches, not 50,000 payloads at once.
        """
        out = []
        with self._read() as db:
            for event_id, action, payload, retry_at in db.execute(
                    f"SELECT id, action, payload, retry_at FROM events WHERE {_OPEN_EVENT} AND project = ? "
                    "ORDER BY id LIMIT ?", (self.key, int(limit))):
                if now is not None and retry_at is not None and retry_at > now:
                    break  # rows are read one by one: a backlog behind a deferred event is never loaded
                out.append((event_id, action, json.loads(payload)))
        return out

    def pending_count(self) -> int:
        """How many events are still to apply, counted in SQL (``/metrics`` and the worker ask often, and parsing a
        backlog's payloads only to count them held the GIL for seconds)."""
        with self._read() as db:
            (count,) = db.execute(f"SELECT COUNT(*) FROM events WHERE project = ? AND {_OPEN_EVENT}",
                                  (self.key,)).fetchone()
        return int(count)

    def mark_done(self, event_id: int) -> None:
        """Mark an event processed; it stays in the file as a record."""
        with self._write() as db:
            db.execute("UPDATE events SET done_at = ? WHERE id = ? AND done_at IS NULL", (time.time(), int(event_id)))

    def retry_later(self, event_id: int, error: str) -> int:
        """Record a transient failure; the event is due again after 2, 4, 8 ... (at most 300) seconds.

        Returns how many attempts have failed.
        """
        with self._write() as db:
            db.execute("UPDATE events SET attempts = attempts + 1, error = ? WHERE id = ?", (error, int(event_id)))
            (attempts,) = db.execute("SELECT attempts FROM events WHERE id = ?", (int(event_id),)).fetchone()
            db.execute("UPDATE events SET retry_at = ? WHERE id = ?",
                       (time.time() + min(300.0, 2.0 ** attempts), int(event_id)))
        return int(attempts)

    def quarantine(self, event_id: int, error: str) -> None:
        """Set an event aside with its reason: it is not applied, not lost, and ``release`` retries it."""
        with self._write() as db:
            db.execute("UPDATE events SET quarantined_at = ?, error = ? WHERE id = ?",
                       (time.time(), error, int(event_id)))

    def quarantined(self) -> list[dict[str, Any]]:
        """``{"id", "action", "error", "at"}`` of the quarantined events, oldest first."""
        with self._read() as db:
            rows = db.execute("SELECT id, action, error, quarantined_at FROM events WHERE project = ? AND "
                              "quarantined_at IS NOT NULL AND done_at IS NULL ORDER BY id", (self.key,)).fetchall()
        return [{"id": i, "action": a, "error": e, "at": t} for i, a, e, t in rows]

    def release(self, event_ids: Iterable[int] | None = None) -> int:
        """Put quarantined events (all, or ``event_ids``) back in the queue; returns how many."""
        query = ("UPDATE events SET quarantined_at = NULL, retry_at = NULL, attempts = 0 WHERE project = ? AND "
                 "quarantined_at IS NOT NULL AND done_at IS NULL")
        with self._write() as db:
            if event_ids is None:
                return db.execute(query, (self.key,)).rowcount
            return sum(db.execute(query + " AND id = ?", (self.key, int(i))).rowcount for i in event_ids)
