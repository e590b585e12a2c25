"""The round state machine (project/state.py): every event in every phase, against the table in
docs/architecture.md ("The round state machine")."""

from __future__ import annotations

import dataclasses
import json
import typing

import pytest

from ovaal_backend.backend.project.state import (
    AnnotationStored,
    Event,
    JobDone,
    JobFailed,
    LabelConfigChanged,
    Phase,
    ProjectState,
    Published,
    Requeued,
    ResultDropped,
    RoundEnded,
    SetUp,
    Started,
    StartRequested,
    StartTraining,
    TransitionRefused,
    on,
)
from ovaal_backend.engine.rounds import START

REFUSED = "refused"
"""``on`` raises TransitionRefused (a driver's event in a phase that does not do its work)."""
NOOP = "no-op"
"""``on`` returns the state unchanged (a Label Studio event this phase has no use for)."""

HELD = "g0-v4-r1"
BASE = {"uid": "7.123", "label_config": "<View/>", "classes": ["a", "b"], "label_names": ["a", "b"], "round": 2,
        "version": 3, "training_round": 1, "new_annotations": 4, "fresh_model": True,
        "failed_job": {"job": HELD, "round": 1}, "result_classes": ["a", "b"]}
"""Every phase is tried from this state (plus each case's own fields): a trained project in round 2."""


def train(ended: int, final: bool) -> dict[str, typing.Any]:
    """The one way into training after a round (``state._train``)."""
    return {"phase": Phase.TRAINING, "training_round": ended, "final": final, "round_end_requested": "",
            "new_annotations": 0, "result_classes": []}


NEW_CLASSES = {"label_config": "<View>c</View>", "classes": ["a", "b", "c"], "label_names": ["a", "b", "c"],
               "generation": 1, "fresh_model": True}
OPEN = {"phase": Phase.QUERYING, "check_project_at": 9.0}
FAILED = {"failed_job": {"job": HELD, "queue_id": "q1", "round": 1, "reason": "boom", "failed_at": 7.0}}
DONE_JOB = {"phase": Phase.PUBLISHING, "version": 4, "round": 3, "fresh_model": False, "failed_job": {},
            "result_classes": ["a", "b"]}

P = Phase
# (case, event, fields that differ from BASE, outcome per phase: REFUSED, NOOP or the fields that change)
TABLE: list[tuple[str, Event, dict[str, typing.Any], dict[Phase, typing.Any]]] = [
    ("setup of a set-up project", SetUp("7.9", "<View>x</View>", ("x",)), {},
     dict.fromkeys(P, NOOP)),
    ("first setup", SetUp("7.9", "<View>x</View>", ("x",)), {"label_config": "", "classes": [], "label_names": []},
     dict.fromkeys(P, {"uid": "7.9", "label_config": "<View>x</View>", "classes": ["x"], "label_names": ["x"]})),
    ("start requested", StartRequested(), {},
     {**dict.fromkeys(P, NOOP), P.NEW: {"start_requested": True}}),
    ("START_TRAINING", StartTraining(), {},
     {P.NEW: {"start_requested": True}, P.QUERYING: {"round_end_requested": "START_TRAINING"}, P.TRAINING: NOOP,
      P.PUBLISHING: NOOP, P.DONE: train(2, final=True)}),
    ("new classes", LabelConfigChanged("<View>c</View>", ("a", "b", "c")), {},
     {P.NEW: NEW_CLASSES, P.QUERYING: {**NEW_CLASSES, "round_end_requested": "label config changed"},
      P.TRAINING: NEW_CLASSES, P.PUBLISHING: {**NEW_CLASSES, "round_end_requested": "label config changed"},
      P.DONE: {**NEW_CLASSES, **train(2, final=True)}}),
    ("new classes before any training", LabelConfigChanged("<View>c</View>", ("a", "b", "c")), {"version": 0},
     dict.fromkeys(P, NEW_CLASSES)),
    ("same classes", LabelConfigChanged("<View>same</View>", ("a", "b")), {},
     dict.fromkeys(P, {"label_config": "<View>same</View>"})),
    ("annotation stored", AnnotationStored(), {},
     dict.fromkeys(P, {"new_annotations": 5})),
    ("requeue of the held job", Requeued(HELD), {},
     dict.fromkeys(P, {"failed_job": {}})),
    ("requeue of another job", Requeued("g0-v9-r9"), {},
     dict.fromkeys(P, NOOP)),
    ("start with sources", Started(has_sources=True), {"start_requested": True},
     {**dict.fromkeys(P, REFUSED),
      P.NEW: {"phase": P.TRAINING, "training_round": START, "final": False, "start_requested": False}}),
    ("start without sources", Started(has_sources=False), {"start_requested": True},
     {**dict.fromkeys(P, REFUSED), P.NEW: {"start_requested": False}}),
    ("round ends", RoundEnded(last_round=5), {"round_end_requested": "START_TRAINING"},
     {**dict.fromkeys(P, REFUSED), P.QUERYING: train(2, final=False)}),
    ("last round ends", RoundEnded(last_round=2), {},
     {**dict.fromkeys(P, REFUSED), P.QUERYING: train(2, final=True)}),
    ("job failed", JobFailed(job=HELD, queue_id="q1", reason="boom", failed_at=7.0), {},
     {**dict.fromkeys(P, REFUSED), P.TRAINING: FAILED}),
    ("job done", JobDone(version=4, next_round=3, trained=True, classes=("a", "b")), {},
     {**dict.fromkeys(P, REFUSED), P.TRAINING: DONE_JOB}),
    ("final job done, nothing trained", JobDone(version=3, next_round=None, trained=False, classes=("a", "b")),
     {"final": True},
     {**dict.fromkeys(P, REFUSED),
      P.TRAINING: {**DONE_JOB, "version": 3, "round": 2, "fresh_model": True}}),
    ("result dropped", ResultDropped(last_round=5), {"round_end_requested": "label config changed"},
     {**dict.fromkeys(P, REFUSED), P.PUBLISHING: train(2, final=False)}),
    ("result dropped in the last round", ResultDropped(last_round=2), {},
     {**dict.fromkeys(P, REFUSED), P.PUBLISHING: train(2, final=True)}),
    ("final result dropped", ResultDropped(last_round=5), {"final": True},
     {**dict.fromkeys(P, REFUSED), P.PUBLISHING: train(1, final=True)}),
    ("published", Published(created=3, check_at=9.0), {},
     {**dict.fromkeys(P, REFUSED), P.PUBLISHING: OPEN}),
    ("published, nothing to ask", Published(created=0, check_at=9.0), {},
     {**dict.fromkeys(P, REFUSED), P.PUBLISHING: train(2, final=True)}),
    ("final result published", Published(created=0, check_at=9.0), {"final": True},
     {**dict.fromkeys(P, REFUSED), P.PUBLISHING: {"phase": P.DONE, "check_project_at": 9.0}}),
]


def test_the_table_covers_every_event_in_every_phase():
    assert {type(event) for _, event, _, _ in TABLE} == set(typing.get_args(Event))
    for case, _, _, outcomes in TABLE:
        assert set(outcomes) == set(Phase), case


@pytest.mark.parametrize("case, event, fields, outcomes", TABLE, ids=[row[0] for row in TABLE])
@pytest.mark.parametrize("phase", list(Phase), ids=[p.value for p in Phase])
def test_transition(case, event, fields, outcomes, phase):
    before = ProjectState(**{**BASE, **fields, "phase": phase})
    snapshot = before.copy()
    expected = outcomes[phase]
    if expected == REFUSED:
        with pytest.raises(TransitionRefused, match=type(event).__name__):
            on(before, event)
        return
    after = on(before, event)
    assert before == snapshot  # the input is never changed
    changed = {f.name: getattr(after, f.name) for f in dataclasses.fields(after)
               if getattr(after, f.name) != getattr(before, f.name)}
    assert changed == ({} if expected == NOOP else {k: v for k, v in expected.items() if getattr(before, k) != v})
    if expected != NOOP:  # every field the table names has its value (also one that was already there)
        assert {k: getattr(after, k) for k in expected} == expected


def test_one_round_walks_from_new_to_done():
    """The documented loop, event by event: start, round 0, round 1 (the last), the final training, done."""
    state = on(on(ProjectState(), SetUp("7.1", "<View/>", ("a", "b"))), StartRequested())
    classes = ("a", "b")
    steps = [(Started(True), P.TRAINING), (JobDone(0, 0, False, classes), P.PUBLISHING),
             (Published(3, 1.0), P.QUERYING), (RoundEnded(1), P.TRAINING),
             (JobDone(1, 1, True, classes), P.PUBLISHING), (Published(3, 2.0), P.QUERYING),
             (AnnotationStored(), P.QUERYING), (RoundEnded(1), P.TRAINING),
             (JobDone(2, None, True, classes), P.PUBLISHING), (Published(0, 3.0), P.DONE)]
    for event, phase in steps:
        state = on(state, event)
        assert state.phase is phase, event
    assert (state.round, state.version, state.training_round, state.final) == (1, 2, 1, True)


def test_phase_is_stored_and_shown_as_its_name():
    assert [p.value for p in Phase] == ["new", "querying", "training", "publishing", "done"]
    state = ProjectState(phase=Phase.PUBLISHING)
    saved = json.loads(json.dumps(state.to_dict()))
    assert saved["phase"] == "publishing" and f"{state.phase}" == "publishing"
    assert ProjectState.from_dict(saved).phase is Phase.PUBLISHING
    with pytest.raises(ValueError, match="unknown phase 'paused'"):
        ProjectState.from_dict({"phase": "paused"})


def test_an_unknown_event_is_a_type_error():
    with pytest.raises(TypeError, match="not a project event"):
        on(ProjectState(), "START_TRAINING")  # type: ignore[arg-type]
