"""The SQLite label store: idempotent writes, newest-wins points, durability across reopening, threads."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from ovaal_backend.backend.store import LabelStore
from ovaal_backend.config import IGNORE_INDEX

P = "7.1700000000"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def path(tmp_path):
    return tmp_path / "models" / "labels.sqlite3"


@pytest.fixture
def store(path) -> LabelStore:
    return LabelStore(path)


def put(store: LabelStore, annotation_id: int, points, source: int = 3, task: int = 10, round_index: int = 0,
        cancelled: bool = False, project: str = P) -> bool:
    return store.put_annotation(project, annotation_id, task_id=task, source_task_id=source, round_index=round_index,
                                annotator="a@example.com", points=points, cancelled=cancelled)


def answered(store: LabelStore, round_index: int) -> set[int]:
    """Tasks of a round with a stored annotation, straight from the table (what RoundStore.round_progress counts)."""
    with store._read() as db:
        return {r[0] for r in db.execute("SELECT task_id FROM annotations WHERE project = ? AND round_index = ?",
                                         (P, round_index))}


def table(store: LabelStore, source: int, project: str = P) -> list[list[int]]:
    return store.labelled_points(project)[source].tolist()


def test_open_creates_folder_schema_and_wal(path, store):
    assert path.exists()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.labelled_points(P) == {}
    assert store.counts(P) == {"annotations": 0, "cancelled": 0, "points": 0, "ignored_points": 0}


def test_put_is_idempotent(store):
    assert put(store, 1, [(5, 9, 2), (1, 1, IGNORE_INDEX)]) is True
    assert put(store, 1, [(1, 1, IGNORE_INDEX), (5, 9, 2)]) is False
    points = store.labelled_points(P)
    assert list(points) == [3]
    assert points[3].dtype == np.int64
    assert points[3].tolist() == [[1, 1, IGNORE_INDEX], [5, 9, 2]]
    assert store.counts(P) == {"annotations": 1, "cancelled": 0, "points": 2, "ignored_points": 1}


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


def test_points_grouped_by_source_and_project(store):
    put(store, 1, [(1, 2, 0)], source=3)
    put(store, 2, [(1, 2, 1)], source=4)
    put(store, 3, [(7, 7, 2)], source=3, project="other")
    points = store.labelled_points(P)
    assert {k: v.tolist() for k, v in points.items()} == {3: [[1, 2, 0]], 4: [[1, 2, 1]]}
    assert table(store, 3, "other") == [[7, 7, 2]]


def test_delete_removes_annotation_and_its_points(store):
    put(store, 1, [(5, 9, 2)], task=10)
    put(store, 2, [(5, 9, 4), (6, 6, 1)], task=11)
    assert store.delete_annotations(P, [2, 99]) == 1
    assert table(store, 3) == [[5, 9, 2]]
    assert answered(store, 0) == {10}
    assert store.delete_annotations(P, [2]) == 0
    assert store.delete_annotations("other", [1]) == 0
    assert store.delete_annotations(P, []) == 0
    assert put(store, 2, [(6, 6, 1)], task=11) is False, "a deleted annotation never comes back"


def test_cancelled_records_answer_without_points(store):
    assert put(store, 1, [(5, 9, 2)], cancelled=True) is True
    assert store.labelled_points(P) == {}
    assert answered(store, 0) == {10}
    assert store.counts(P) == {"annotations": 1, "cancelled": 1, "points": 0, "ignored_points": 0}
    assert put(store, 1, [], cancelled=True) is False
    assert put(store, 1, [(5, 9, 2)], cancelled=False) is True
    assert table(store, 3) == [[5, 9, 2]]


def test_state_round_trip(store):
    assert store.get_state(P) == {}
    store.set_state(P, {"round": 2, "model_version": "r2", "sources": [3, 4]})
    store.set_state(P, {"round": 3})
    assert store.get_state(P) == {"round": 3}
    assert store.get_state("other") == {}


def test_everything_persists_across_reopen(path, store):
    put(store, 1, [(5, 9, 2)])
    store.set_state(P, {"round": 1})
    first = store.add_event(P, "ANNOTATION_CREATED", {"annotation": {"id": 1}})
    second = store.add_event("other", "START_TRAINING", {})
    store.mark_event_done(first)
    reopened = LabelStore(path)
    assert table(reopened, 3) == [[5, 9, 2]]
    assert reopened.get_state(P) == {"round": 1}
    assert reopened.pending_events() == [(second, "other", "START_TRAINING", {})]
    assert put(reopened, 1, [(5, 9, 2)]) is False


def test_events_pending_until_done_in_order(store):
    ids = [store.add_event(P, f"A{i}", {"i": i}) for i in range(3)]
    other = store.add_event("other", "B", {"x": [1, 2]})
    assert ids == sorted(ids) and other > ids[-1]
    assert store.pending_events(P) == [(ids[i], P, f"A{i}", {"i": i}) for i in range(3)]
    store.mark_event_done(ids[1])
    store.mark_event_done(ids[1])
    assert [e[0] for e in store.pending_events()] == [ids[0], ids[2], other]
    assert store.pending_events("nobody") == []


def test_concurrent_writes_from_threads(path):
    stores = [LabelStore(path), LabelStore(path)]
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        store = stores[worker % 2]
        try:
            for i in range(25):
                annotation = worker * 100 + i
                put(store, annotation, [(worker, i, worker % 3)], source=worker, task=annotation)
                put(store, annotation, [(worker, i, worker % 3)], source=worker, task=annotation)
                store.add_event(P, "ANNOTATION_CREATED", {"annotation": annotation})
                store.labelled_points(P)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store_counts(stores[0]) == (200, 200, 200)
    points = stores[1].labelled_points(P)
    assert sorted(points) == list(range(8))
    assert all(points[w].tolist() == [[w, i, w % 3] for i in range(25)] for w in range(8))


def store_counts(store: LabelStore) -> tuple[int, int, int]:
    counts = store.counts(P)
    return counts["annotations"], counts["points"], len(store.pending_events(P))


def test_a_stale_update_changes_nothing_and_a_deleted_annotation_never_comes_back(store):
    assert store.put_annotation(P, 1, 10, 3, 0, None, [(5, 9, 2)], False, updated_at="2026-01-01T10:00:02Z")
    assert not store.put_annotation(P, 1, 10, 3, 0, None, [(5, 9, 1)], False, updated_at="2026-01-01T10:00:01Z")
    assert table(store, 3) == [[5, 9, 2]]
    assert store.put_annotation(P, 1, 10, 3, 0, None, [(5, 9, 0)], False, updated_at="2026-01-01T10:00:03+00:00")
    assert table(store, 3) == [[5, 9, 0]]
    assert store.delete_annotations(P, [1]) == 1
    assert not store.put_annotation(P, 1, 10, 3, 0, None, [(5, 9, 0)], False, updated_at="2026-01-01T11:00:00Z")
    assert store.labelled_points(P) == {}


def test_events_quarantine_retry_and_release(store):
    first = store.add_event(P, "ANNOTATION_CREATED", {"annotation": {"id": 1}})
    second = store.add_event(P, "ANNOTATION_CREATED", {"annotation": {"id": 2}})
    store.quarantine_event(first, "ValueError: no task")
    assert [e[0] for e in store.pending_events(P)] == [second]
    assert store.quarantined_events(P)[0]["error"] == "ValueError: no task"
    assert store.retry_event_later(second, "OperationalError: locked") == 1
    assert store.pending_events(P, now=0.0) == [] and [e[0] for e in store.pending_events(P)] == [second]
    assert store.release_events(P) == 1 and [e[0] for e in store.pending_events(P, now=0.0)] == [first]


def test_pending_count_is_counted_in_sql_without_reading_payloads(store):
    """``/metrics`` and the worker count the queue often; a 50,000-event backlog must not be parsed to count it."""
    first = store.add_event(P, "ANNOTATION_CREATED", {"annotation": {"id": 1}})
    done = store.add_event(P, "ANNOTATION_CREATED", {"annotation": {"id": 2}})
    aside = store.add_event(P, "ANNOTATION_CREATED", {"annotation": {"id": 3}})
    later = store.add_event(P, "ANNOTATION_CREATED", {"annotation": {"id": 4}})
    store.add_event("other", "START_TRAINING", {})
    store.mark_event_done(done)
    store.quarantine_event(aside, "ValueError: no task")
    store.retry_event_later(later, "OperationalError: locked")  # deferred, still to apply
    assert store.pending_count(P) == len(store.pending_events(P)) == 2 and store.pending_count("other") == 1
    with store._write() as db:  # a payload that does not parse: counting never reads it
        db.execute("UPDATE events SET payload = '{not json' WHERE id = ?", (first,))
    assert store.pending_count(P) == 2
    with pytest.raises(ValueError):
        store.pending_events(P)
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
    every = store.labelled_points(P)
    some = store.labelled_points(P, [3, 700, 1199, 9999])
    assert set(some) == {3, 700, 1199} and some[3].tolist() == [[1, 1, 2], [2, 2, 1]]
    assert all(np.array_equal(some[s], every[s]) for s in some)
    assert store.labelled_points(P, []) == {}


def test_data_version_says_when_anyone_committed_and_a_snapshot_reads_one_state(path, store):
    """What ``/metrics`` keeps its answer by (``SqliteFile.data_version``) and reads it in (``snapshot``)."""
    version = store.data_version()
    store.pending_count(P)
    store.labelled_points(P)
    assert store.data_version() == version  # reads change nothing
    store.add_event(P, "ANNOTATION_CREATED", {})
    assert store.data_version() != version
    version = store.data_version()
    script = ("from ovaal_backend.backend.store import LabelStore; "
              f"LabelStore({str(path)!r}).add_event({P!r}, 'X', {{}})")
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT, timeout=120)  # as `resync` beside a backend
    assert store.data_version() != version

    other = LabelStore(path)  # another store on the file: the thread's snapshot serves it too
    with store.snapshot(), store.snapshot():  # re-entrant
        before = store.pending_count(P)
        with sqlite3.connect(path) as db:  # a commit meanwhile, from another connection
            db.execute("UPDATE events SET done_at = 1 WHERE project = ?", (P,))
        assert store.pending_count(P) == other.pending_count(P) == before == 2  # one state
    assert store.pending_count(P) == 0  # after the block, the file as it is

    version = store.data_version()
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    assert store.data_version() != store.data_version()  # no file: never "unchanged"
    LabelStore(path)  # the file made anew
    assert store.data_version() not in (version, None) and store.data_version() == store.data_version()
