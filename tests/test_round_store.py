"""The rounds' rows: query tasks planned -> importing -> imported, masks todo -> sending -> pushed, sources."""

from __future__ import annotations

import sqlite3

import pytest

from ovaal_backend.backend.round_store import MaskStatus, QueryStatus, RoundStore
from ovaal_backend.backend.store import LabelStore

P = "7"
RESULT = [{"type": "keypointlabels", "value": {"x": 1.0, "y": 2.0}}]


@pytest.fixture
def rounds(tmp_path) -> RoundStore:
    return RoundStore(tmp_path / "labels.sqlite3")


def test_query_tasks_by_id(rounds):
    rounds.add_query_tasks(P, 0, [(10, 3), (11, 4)])
    rounds.add_query_tasks(P, 1, [(12, 3)])
    assert rounds.query_tasks(P, 0) == {10: 3, 11: 4}
    assert rounds.query_tasks(P, 1) == {12: 3}
    assert rounds.query_tasks(P, 2) == {}
    assert rounds.query_task_round(P, 12) == (1, 3)
    assert rounds.query_task_round(P, 99) is None
    assert rounds.query_task_round("other", 10) is None


def test_planned_queries_move_through_their_statuses(rounds):
    rounds.plan_queries(P, 1, 1, [(3, 0.25, RESULT), (4, 0.5, RESULT), (5, 0.75, RESULT)])
    rounds.plan_queries(P, 1, 2, [(3, 0.9, [])])  # a re-run job does not re-plan a planned source
    assert rounds.queries(P, 1, QueryStatus.PLANNED) == [(3, 0.25, RESULT), (4, 0.5, RESULT), (5, 0.75, RESULT)]
    assert [s for s, _, _ in rounds.queries(P, 1, QueryStatus.PLANNED, limit=2)] == [3, 4]
    rounds.set_query_status(P, 1, [3, 4], QueryStatus.IMPORTING)
    assert [s for s, _, _ in rounds.queries(P, 1, QueryStatus.IMPORTING)] == [3, 4]
    rounds.set_imported(P, 1, [(3, 30), (4, 40)])
    assert [s for s, _, _ in rounds.queries(P, 1, QueryStatus.IMPORTED)] == [3, 4]
    assert rounds.query_tasks(P, 1) == {30: 3, 40: 4}
    assert rounds.query_prediction(P, 40) == (RESULT, 0.5)
    assert rounds.query_prediction(P, 50) is None
    assert rounds.count_queries(P, 1) == 3 and rounds.count_queries(P, 2) == 0
    assert rounds.count_queries(P, 1, QueryStatus.IMPORTED) == 2
    assert rounds.count_queries(P, 1, QueryStatus.PLANNED) == 1


def test_statuses_are_stored_as_their_names(rounds):
    """Statuses are ``str`` Enums: a file written before them (plain names) reads the same, and vice versa."""
    rounds.plan_queries(P, 1, 1, [(3, 0.25, RESULT)])
    rounds.plan_masks(P, 2, [(3, "/m/3.npz")])
    with sqlite3.connect(rounds.path) as db:
        assert db.execute("SELECT status FROM round_queries UNION ALL SELECT status FROM masks").fetchall() == [
            ("planned",), ("todo",)]
        db.execute("UPDATE masks SET status = 'sending'")
    assert rounds.masks(P, 2, MaskStatus.SENDING) == [(3, "/m/3.npz")]


def test_masks_sources_and_trainings(rounds):
    rounds.plan_masks(P, 2, [(3, "/m/3.npz"), (4, "/m/4.npz")])
    rounds.set_mask_status(P, 2, [3], MaskStatus.SENDING)
    assert rounds.masks(P, 2, MaskStatus.TODO) == [(4, "/m/4.npz")]
    assert rounds.masks(P, 2, MaskStatus.SENDING) == [(3, "/m/3.npz")]
    rounds.set_mask_status(P, 2, [3, 4], MaskStatus.PUSHED)
    assert rounds.masks(P, 2, MaskStatus.TODO) == [] and len(rounds.masks(P, 2, MaskStatus.PUSHED)) == 2
    rounds.set_sources(P, {3: {"image": "a.png"}, 4: {"image": "b.png"}})
    rounds.set_sources(P, {4: {"image": "b2.png"}})
    assert rounds.sources(P) == {4: {"image": "b2.png"}}
    rounds.add_training(P, 1, {"round": 0, "loss": 0.5})
    rounds.add_training(P, 2, {"round": 1, "loss": 0.25})
    assert [t["version"] for t in rounds.trainings(P)] == [1, 2] and rounds.trainings(P)[1]["loss"] == 0.25


def test_rows_share_the_label_store_file(tmp_path):
    path = tmp_path / "labels.sqlite3"
    labels, rounds = LabelStore(path), RoundStore(path)
    labels.set_state(P, {"phase": "new"})
    rounds.add_query_tasks(P, 0, [(10, 3)])
    assert RoundStore(path).query_tasks(P, 0) == {10: 3} and LabelStore(path).get_state(P) == {"phase": "new"}


def test_round_progress_counts_answered_query_tasks_in_sql(tmp_path):
    path = tmp_path / "labels.sqlite3"
    labels, rounds = LabelStore(path), RoundStore(path)
    rounds.add_query_tasks(P, 1, [(10, 3), (11, 4), (12, 5)])
    rounds.add_query_tasks(P, 2, [(13, 3)])
    assert rounds.round_progress(P, 1) == (3, 0) and rounds.round_progress(P, 3) == (0, 0)
    labels.put_annotation(P, 1, task_id=10, source_task_id=3, round_index=1, annotator=None, points=[(1, 1, 0)],
                          cancelled=False)
    labels.put_annotation(P, 2, task_id=11, source_task_id=4, round_index=1, annotator=None, points=[],
                          cancelled=True)
    labels.put_annotation(P, 3, task_id=11, source_task_id=4, round_index=1, annotator=None, points=[],
                          cancelled=True)
    assert rounds.round_progress(P, 1) == (3, 2) and rounds.round_progress(P, 2) == (1, 0)
