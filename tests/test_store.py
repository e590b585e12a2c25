"""A project's store: idempotent clicks, newest-wins points, events, durability across reopening, threads."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from ovaal_backend.backend.store import ProjectStore
from ovaal_backend.config import IGNORE_INDEX

P = "7"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def path(tmp_path):
    return tmp_path / "models" / "labels.sqlite3"


@pytest.fixture
def store(path) -> ProjectStore:
    return ProjectStore(path, P)


def put(store: ProjectStore, annotation_id: int, points, source: int = 3, task: int = 10, round_index: int = 0,
        cancelled: bool = False) -> bool:
    return store.clicks.put(annotation_id, task_id=task, source_task_id=source, round_index=round_index,
                            annotator="a@example.com", points=points, cancelled=cancelled)


def answered(store: ProjectStore, round_index: int) -> set[int]:
    """Tasks of a round with a stored annotation, straight from the table (what Rounds.round_progress counts)."""
    with sqlite3.connect(store.path) as db:
        return {r[0] for r in db.execute("SELECT task_id FROM annotations WHERE project = ? AND round_index = ?",
                                         (P, round_index))}


def table(store: ProjectStore, source: int) -> list[list[int]]:
    return store.clicks.labelled_points()[source].tolist()


def test_open_creates_folder_schema_and_wal(path, store):
    assert path.exists()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.clicks.labelled_points() == {}
    assert store.clicks.counts() == {"annotations": 0, "cancelled": 0, "points": 0, "ignored_points": 0}


def test_put_is_idempotent(store):
    assert put(store, 1, [(5, 9, 2), (1, 1, IGNORE_INDEX)]) is True
    assert put(store, 1, [(1, 1, IGNORE_INDEX), (5, 9, 2)]) is False
    points = store.clicks.labelled_points()
    assert list(points) == [3]
    assert points[3].dtype == np.int64
    assert points[3].tolist() == [[1, 1, IGNORE_INDEX], [5, 9, 2]]
    assert store.clicks.counts() == {"annotations": 1, "cancelled": 0, "points": 2, "ignored_points": 1}


def test_update_replaces_never_duplicates(store):
    put(store, 1, [(5, 9, 2), (1, 1, 0)])
    assert put(store, 1, [(5, 9, 4), (2, 2, 1)]) is True
    assert table(store, 3) == [[2, 2, 1], [5, 9, 4]]
    assert put(store, 1, [(5, 9, 4), (2, 2, 1)], round_index=1) is True
    assert answered(store, 0) == set()
    assert answered(store, 1) == {10}


def test_duplicate_pixel_within_one_annotation_keeps_last(store):
    put(store, 1, [(5, 9, 2), (5, 9, 3)])
    assert table(store, 3) == [[5, 9, 3]]


def test_newest_annotation_wins_per_pixel(store):
    put(store, 1, [(5, 9, 2), (0, 0, 1)], task=10)
    put(store, 2, [(5, 9, 4)], task=11, round_index=1)
    assert table(store, 3) == [[0, 0, 1], [5, 9, 4]]
    put(store, 1, [(5, 9, 6), (0, 0, 1)], task=10)
    assert table(store, 3) == [[0, 0, 1], [5, 9, 6]]
    put(store, 2, [(5, 9, 4)], task=11, round_index=1)
    assert table(store, 3) == [[0, 0, 1], [5, 9, 6]]


def test_points_grouped_by_source_and_project(path, store):
    put(store, 1, [(1, 2, 0)], source=3)
    put(store, 2, [(1, 2, 1)], source=4)
    other = ProjectStore(path, "other")  # rows keep their project key: a store reads its own only
    put(other, 3, [(7, 7, 2)], source=3)
    points = store.clicks.labelled_points()
    assert {k: v.tolist() for k, v in points.items()} == {3: [[1, 2, 0]], 4: [[1, 2, 1]]}
    assert table(other, 3) == [[7, 7, 2]]


def test_delete_removes_annotation_and_its_points(store):
    put(store, 1, [(5, 9, 2)], task=10)
    put(store, 2, [(5, 9, 4), (6, 6, 1)], task=11)
    assert store.clicks.delete([2, 99]) == 1
    assert table(store, 3) == [[5, 9, 2]]
    assert answered(store, 0) == {10}
    assert store.clicks.delete([2]) == 0
    assert ProjectStore(store.path, "other").clicks.delete([1]) == 0
    assert store.clicks.delete([]) == 0
    assert put(store, 2, [(6, 6, 1)], task=11) is False, "a deleted annotation never comes back"


def test_cancelled_records_answer_without_points(store):
    assert put(store, 1, [(5, 9, 2)], cancelled=True) is True
    assert store.clicks.labelled_points() == {}
    assert answered(store, 0) == {10}
    assert store.clicks.counts() == {"annotations": 1, "cancelled": 1, "points": 0, "ignored_points": 0}
    assert put(store, 1, [], cancelled=True) is False
    assert put(store, 1, [(5, 9, 2)], cancelled=False) is True
    assert table(store, 3) == [[5, 9, 2]]


def test_state_round_trip(store):
    assert store.state.load() == {}
    store.state.save({"round": 2, "model_version": "r2", "sources": [3, 4]})
    store.state.save({"round": 3})
    assert store.state.load() == {"round": 3}
    assert ProjectStore(store.path, "other").state.load() == {}


def test_everything_persists_across_reopen(path, store):
    put(store, 1, [(5, 9, 2)])
    store.state.save({"round": 1})
    first = store.events.add("ANNOTATION_CREATED", {"annotation": {"id": 1}})
    second = store.events.add("START_TRAINING", {})
    store.events.mark_done(first)
    reopened = ProjectStore(path, P)
    assert table(reopened, 3) == [[5, 9, 2]]
    assert reopened.state.load() == {"round": 1}
    assert reopened.events.pending() == [(second, "START_TRAINING", {})]
    assert put(reopened, 1, [(5, 9, 2)]) is False


def test_events_pending_until_done_in_order(store):
    ids = [store.events.add(f"A{i}", {"i": i}) for i in range(3)]
    other = ProjectStore(store.path, "other").events.add("B", {"x": [1, 2]})
    assert ids == sorted(ids) and other > ids[-1]
    assert store.events.pending() == [(ids[i], f"A{i}", {"i": i}) for i in range(3)]
    store.events.mark_done(ids[1])
    store.events.mark_done(ids[1])
    assert [e[0] for e in store.events.pending()] == [ids[0], ids[2]]
    assert [e[0] for e in ProjectStore(store.path, "other").events.pending()] == [other]


def test_concurrent_writes_from_threads(path):
    stores = [ProjectStore(path, P), ProjectStore(path, P)]  # as a backend and a command beside it
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        store = stores[worker % 2]
        try:
            for i in range(25):
                annotation = worker * 100 + i
                put(store, annotation, [(worker, i, worker % 3)], source=worker, task=annotation)
                put(store, annotation, [(worker, i, worker % 3)], source=worker, task=annotation)
                store.events.add("ANNOTATION_CREATED", {"annotation": annotation})
                store.clicks.labelled_points()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store_counts(stores[0]) == (200, 200, 200)
    points = stores[1].clicks.labelled_points()
    assert sorted(points) == list(range(8))
    assert all(points[w].tolist() == [[w, i, w % 3] for i in range(25)] for w in range(8))


def store_counts(store: ProjectStore) -> tuple[int, int, int]:
    counts = store.clicks.counts()
    return counts["annotations"], counts["points"], len(store.events.pending())


def test_a_stale_update_changes_nothing_and_a_deleted_annotation_never_comes_back(store):
    assert store.clicks.put(1, 10, 3, 0, None, [(5, 9, 2)], False, updated_at="2026-01-01T10:00:02Z")
    assert not store.clicks.put(1, 10, 3, 0, None, [(5, 9, 1)], False, updated_at="2026-01-01T10:00:01Z")
    assert table(store, 3) == [[5, 9, 2]]
    assert store.clicks.put(1, 10, 3, 0, None, [(5, 9, 0)], False, updated_at="2026-01-01T10:00:03+00:00")
    assert table(store, 3) == [[5, 9, 0]]
    assert store.clicks.delete([1]) == 1
    assert not store.clicks.put(1, 10, 3, 0, None, [(5, 9, 0)], False, updated_at="2026-01-01T11:00:00Z")
    assert store.clicks.labelled_points() == {}


def test_events_quarantine_retry_and_release(store):
    first = store.events.add("ANNOTATION_CREATED", {"annotation": {"id": 1}})
    second = store.events.add("ANNOTATION_CREATED", {"annotation": {"id": 2}})
    store.events.quarantine(first, "ValueError: no task")
    assert [e[0] for e in store.events.pending()] == [second]
    assert store.events.quarantined()[0]["error"] == "ValueError: no task"
    assert store.events.retry_later(second, "OperationalError: locked") == 1
    assert store.events.pending(now=0.0) == [] and [e[0] for e in store.events.pending()] == [second]
    assert store.events.release() == 1 and [e[0] for e in store.events.pending(now=0.0)] == [first]


def test_pending_count_is_counted_in_sql_without_reading_payloads(store):
    """``/metrics`` and the worker count the queue often; a 50,000-event backlog must not be parsed to count it."""
    first = store.events.add("ANNOTATION_CREATED", {"annotation": {"id": 1}})
    done = store.events.add("ANNOTATION_CREATED", {"annotation": {"id": 2}})
    aside = store.events.add("ANNOTATION_CREATED", {"annotation": {"id": 3}})
    later = store.events.add("ANNOTATION_CREATED", {"annotation": {"id": 4}})
    ProjectStore(store.path, "other").events.add("START_TRAINING", {})
    store.events.mark_done(done)
    store.events.quarantine(aside, "ValueError: no task")
    store.events.retry_later(later, "OperationalError: locked")  # deferred, still to apply
    assert store.events.pending_count() == len(store.events.pending()) == 2
    assert ProjectStore(store.path, "other").events.pending_count() == 1
    with sqlite3.connect(store.path) as db:  # a payload that does not parse: counting never reads it
        db.execute("UPDATE events SET payload = '{not json' WHERE id = ?", (first,))
    assert store.events.pending_count() == 2
    with pytest.raises(ValueError):
        store.events.pending()
    with sqlite3.connect(store.path) as db:  # the count reads the partial index only, never a row with a payload
        plan = " ".join(r[-1] for r in db.execute(
            "EXPLAIN QUERY PLAN SELECT COUNT(*) FROM events WHERE project = ? AND done_at IS NULL AND "
            "quarantined_at IS NULL", (P,)))
    assert "COVERING INDEX events_open" in plan, plan


def test_labelled_points_of_some_images(store):
    put(store, 1, [(1, 1, 0), (2, 2, 1)], source=3)
    put(store, 2, [(1, 1, 2)], source=3, task=11, round_index=1)  # newer: wins on (1, 1)
    put(store, 3, [(4, 4, 1)], source=5, task=12)
    for source in range(600, 1200):  # more images than one IN (...) list takes
        put(store, source, [(0, 0, 1)], source=source, task=source)
    every = store.clicks.labelled_points()
    some = store.clicks.labelled_points([3, 700, 1199, 9999])
    assert set(some) == {3, 700, 1199} and some[3].tolist() == [[1, 1, 2], [2, 2, 1]]
    assert all(np.array_equal(some[s], every[s]) for s in some)
    assert store.clicks.labelled_points([]) == {}


def test_data_version_says_when_anyone_committed_and_a_snapshot_reads_one_state(path, store):
    """What ``/metrics`` keeps its answer by (``SqliteFile.data_version``) and reads it in (``snapshot``)."""
    version = store.data_version()
    store.events.pending_count()
    store.clicks.labelled_points()
    assert store.data_version() == version  # reads change nothing
    store.events.add("ANNOTATION_CREATED", {})
    assert store.data_version() != version
    version = store.data_version()
    script = ("from ovaal_backend.backend.store import ProjectStore; "
              f"ProjectStore({str(path)!r}, {P!r}).events.add('X', {{}})")
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT, timeout=120)  # as `resync` beside a backend
    assert store.data_version() != version

    other = ProjectStore(path, P)  # another store on the file: the thread's snapshot serves it too
    with store.snapshot(), store.snapshot():  # re-entrant
        before = store.events.pending_count()
        with sqlite3.connect(path) as db:  # a commit meanwhile, from another connection
            db.execute("UPDATE events SET done_at = 1 WHERE project = ?", (P,))
        assert store.events.pending_count() == other.events.pending_count() == before == 2  # one state
    assert store.events.pending_count() == 0  # after the block, the file as it is

    version = store.data_version()
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    assert store.data_version() != store.data_version()  # no file: never "unchanged"
    ProjectStore(path, P)  # the file made anew
    assert store.data_version() not in (version, None) and store.data_version() == store.data_version()


def test_a_file_of_an_earlier_layout_opens_with_its_rows(path):
    """A project file written before one store per project (and before the columns added since) opens as it is:
    the schema only gains what it lacks, and the rows keyed by the project read the same."""
    path.parent.mkdir()
    with sqlite3.connect(path) as db:
        db.executescript(f"""
            CREATE TABLE annotations (project TEXT NOT NULL, annotation_id INTEGER NOT NULL, task_id INTEGER NOT NULL,
                source_task_id INTEGER NOT NULL, round_index INTEGER NOT NULL, annotator TEXT,
                cancelled INTEGER NOT NULL, seq INTEGER NOT NULL, updated_at REAL NOT NULL,
                PRIMARY KEY (project, annotation_id));
            CREATE TABLE points (project TEXT NOT NULL, annotation_id INTEGER NOT NULL, row INTEGER NOT NULL,
                col INTEGER NOT NULL, label INTEGER NOT NULL, PRIMARY KEY (project, annotation_id, row, col));
            CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, project TEXT NOT NULL, action TEXT NOT NULL,
                payload TEXT NOT NULL, created_at REAL NOT NULL, done_at REAL);
            CREATE TABLE project_state (project TEXT PRIMARY KEY, state TEXT NOT NULL, updated_at REAL NOT NULL);
            INSERT INTO annotations VALUES ('{P}', 1, 10, 3, 0, 'a@example.com', 0, 1, 0.0);
            INSERT INTO points VALUES ('{P}', 1, 5, 9, 2);
            INSERT INTO events (project, action, payload, created_at) VALUES ('{P}', 'START_TRAINING', '{{}}', 0.0);
            INSERT INTO project_state VALUES ('{P}', '{{"round": 1}}', 0.0);
        """)
    store = ProjectStore(path, P)
    assert table(store, 3) == [[5, 9, 2]] and store.state.load() == {"round": 1}
    (event_id, action, payload), = store.events.pending()
    assert (action, payload) == ("START_TRAINING", {}) and store.events.retry_later(event_id, "later") == 1
    assert put(store, 1, [(5, 9, 2)]) is False and put(store, 2, [(6, 6, 1)], task=11) is True
