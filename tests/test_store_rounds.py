"""The rounds' rows (``store/rounds.py``, ``masks.py``, ``records.py``): query tasks planned -> importing ->
imported, masks todo -> sending -> pushed, sources, trainings; all in the file the clicks are in."""

from __future__ import annotations

import sqlite3

import pytest

from ovaal_backend.backend.project.state import Phase
from ovaal_backend.backend.store import MaskStatus, ProjectStore, QueryStatus

P = "7"
RESULT = [{"type": "keypointlabels", "value": {"x": 1.0, "y": 2.0}}]


@pytest.fixture
def store(tmp_path) -> ProjectStore:
    return ProjectStore(tmp_path / "labels.sqlite3", P)


def test_query_tasks_by_id(store):
    store.rounds.add_query_tasks(0, [(10, 3), (11, 4)])
    store.rounds.add_query_tasks(1, [(12, 3)])
    assert store.rounds.query_tasks(0) == {10: 3, 11: 4}
    assert store.rounds.query_tasks(1) == {12: 3}
    assert store.rounds.query_tasks(2) == {}
    assert store.rounds.query_task_round(12) == (1, 3)
    assert store.rounds.query_task_round(99) is None
    assert ProjectStore(store.path, "other").rounds.query_task_round(10) is None


def test_planned_queries_move_through_their_statuses(store):
    store.rounds.plan_queries(1, 1, [(3, 0.25, RESULT), (4, 0.5, RESULT), (5, 0.75, RESULT)])
    store.rounds.plan_queries(1, 2, [(3, 0.9, [])])  # a re-run job does not re-plan a planned source
    assert store.rounds.queries(1, QueryStatus.PLANNED) == [(3, 0.25, RESULT), (4, 0.5, RESULT), (5, 0.75, RESULT)]
    assert [s for s, _, _ in store.rounds.queries(1, QueryStatus.PLANNED, limit=2)] == [3, 4]
    store.rounds.set_query_status(1, [3, 4], QueryStatus.IMPORTING)
    assert [s for s, _, _ in store.rounds.queries(1, QueryStatus.IMPORTING)] == [3, 4]
    store.rounds.set_imported(1, [(3, 30), (4, 40)])
    assert [s for s, _, _ in store.rounds.queries(1, QueryStatus.IMPORTED)] == [3, 4]
    assert store.rounds.query_tasks(1) == {30: 3, 40: 4}
    assert store.rounds.query_prediction(40) == (RESULT, 0.5)
    assert store.rounds.query_prediction(50) is None
    assert store.rounds.count_queries(1) == 3 and store.rounds.count_queries(2) == 0
    assert store.rounds.count_queries(1, QueryStatus.IMPORTED) == 2
    assert store.rounds.count_queries(1, QueryStatus.PLANNED) == 1


def test_statuses_are_stored_as_their_names(store):
    """Statuses are ``str`` Enums: a file written before them (plain names) reads the same, and vice versa."""
    store.rounds.plan_queries(1, 1, [(3, 0.25, RESULT)])
    store.masks.plan(2, [(3, "/m/3.npz")])
    with sqlite3.connect(store.path) as db:
        assert db.execute("SELECT status FROM round_queries UNION ALL SELECT status FROM masks").fetchall() == [
            ("planned",), ("todo",)]
        db.execute("UPDATE masks SET status = 'sending'")
    assert store.masks.by_status(2, MaskStatus.SENDING) == [(3, "/m/3.npz")]



def test_phases_and_statuses_show_their_names():
    """One ``StoredEnum`` base: ``str()`` and f-strings give the stored name (logs, ``/metrics``), which compares
    equal to the member."""
    for member in (Phase.TRAINING, QueryStatus.IMPORTING, MaskStatus.REFUSED):
        assert str(member) == f"{member}" == member.value == member


def test_masks_sources_and_trainings(store):
    store.masks.plan(2, [(3, "/m/3.npz"), (4, "/m/4.npz")])
    store.masks.set_status(2, [3], MaskStatus.SENDING)
    assert store.masks.by_status(2, MaskStatus.TODO) == [(4, "/m/4.npz")]
    assert store.masks.by_status(2, MaskStatus.SENDING) == [(3, "/m/3.npz")]
    store.masks.set_status(2, [3, 4], MaskStatus.PUSHED)
    assert store.masks.by_status(2, MaskStatus.TODO) == [] and len(store.masks.by_status(2, MaskStatus.PUSHED)) == 2
    store.sources.replace({3: {"image": "a.png"}, 4: {"image": "b.png"}})
    store.sources.replace({4: {"image": "b2.png"}})
    assert store.sources.all() == {4: {"image": "b2.png"}}
    store.trainings.add(1, {"round": 0, "loss": 0.5})
    store.trainings.add(2, {"round": 1, "loss": 0.25})
    assert [t["version"] for t in store.trainings.all()] == [1, 2] and store.trainings.all()[1]["loss"] == 0.25


def test_rows_persist_across_reopen(store):
    store.state.save({"phase": "new"})
    store.rounds.add_query_tasks(0, [(10, 3)])
    reopened = ProjectStore(store.path, P)
    assert reopened.rounds.query_tasks(0) == {10: 3} and reopened.state.load() == {"phase": "new"}


def test_round_progress_counts_answered_query_tasks_in_sql(store):
    store.rounds.add_query_tasks(1, [(10, 3), (11, 4), (12, 5)])
    store.rounds.add_query_tasks(2, [(13, 3)])
    assert store.rounds.round_progress(1) == (3, 0) and store.rounds.round_progress(3) == (0, 0)
    store.clicks.put(1, task_id=10, source_task_id=3, round_index=1, annotator=None, points=[(1, 1, 0)],
                     cancelled=False)
    store.clicks.put(2, task_id=11, source_task_id=4, round_index=1, annotator=None, points=[],
                     cancelled=True)
    store.clicks.put(3, task_id=11, source_task_id=4, round_index=1, annotator=None, points=[],
                     cancelled=True)
    assert store.rounds.round_progress(1) == (3, 2) and store.rounds.round_progress(2) == (1, 0)
