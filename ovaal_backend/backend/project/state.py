"""A project's round state machine: the phases, the typed state persisted in the SQLite store, the events that
change it, ``on(state, event) -> state`` (every transition, in one place), and the names the backend writes into
Label Studio tasks.

The state holds only small, fixed-size facts; what grows with the project (query tasks, masks, trainings) is rows
in its ``ProjectStore``. ``on`` is pure (no I/O, no clock, no engine import): the driver and the event applier decide
what happened, ``ProjectContext.apply`` runs the transition under the project's lock and saves it.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field, replace
from typing import Any

from ...engine.rounds import START, round_job_id
from ..sqlite import StoredEnum

log = logging.getLogger(__name__)


class Phase(StoredEnum):
    """Where a project is in its loop (stored and shown as its value)."""

    NEW = "new"
    """No round published yet: waiting for source tasks and a trigger (/setup, TASKS_CREATED or START_TRAINING)."""
    QUERYING = "querying"
    """The current round's query tasks are in Label Studio; answers are being collected."""
    TRAINING = "training"
    """The round job runs: train on every stored click (none at the start), select the next round, predict masks."""
    PUBLISHING = "publishing"
    """The job's result is stored: import the next round's query tasks, push dense masks, switch the version."""
    DONE = "done"
    """The budget is spent: final model and masks are in Label Studio; no more queries."""


QUERY_MARKER = "ovaal_query"
"""Task data key that marks a task as one of our query tasks (value ``true``)."""
SOURCE_KEY = "ovaal_source_task"
"""Task data key of a query task: the id of the source task (the pool image) it asks about."""
ROUND_KEY = "ovaal_round"
"""Task data key of a query task: its acquisition round (0 = random cold start)."""
QUERY_VIEW_TITLE = "OVAAL queries"
"""The Data Manager tab the backend adds: only its query tasks (the label stream still serves every task)."""
QUERY_VIEW_FILTERS = {"conjunction": "and", "items": [
    {"filter": f"filter:tasks:data.{QUERY_MARKER}", "operator": "equal", "type": "Boolean", "value": True}]}
QUERY_VIEW_ORDERING = ["tasks:predictions_score"]
"""The tab lists query tasks by their prediction's score, lowest first: the score is the model's certainty, and Label
Studio 1.23.2's "Label All Tasks" serves a tab's tasks in its list order, so the most uncertain task comes first."""
SOURCE_ROUND = -1
"""Round recorded for clicks made on a source task (no query round asked for them; a re-sync never moves them)."""


def version_name(number: int) -> str:
    """The ``model_version`` string of version ``number`` (0 = no trained model yet)."""
    return f"ovaal-{number}"


@dataclass
class ProjectState:
    """Everything the round state machine remembers about one project.

    ``label_names`` only grows: stored clicks keep an index into it, so a label config that removes or reorders
    classes remaps clicks by name. ``training_round`` is the round whose end the job is working on (-1 = the start,
    which only picks round 0's random pixels); ``final`` marks that work, and the publish after it, as the last.
    ``failed_job`` (``job``, ``queue_id``, ``round``, ``reason``, ``failed_at``) is the round job that failed for good:
    while it names the job the state waits for, the project holds (re-running it unasked fails the same way) until
    ``python -m ovaal_backend requeue`` queues a REQUEUE event.
    """

    uid: str = ""
    label_config: str = ""
    classes: list[str] = field(default_factory=list)
    label_names: list[str] = field(default_factory=list)
    generation: int = 0
    phase: Phase = Phase.NEW
    round: int = 0
    version: int = 0
    start_requested: bool = False
    round_end_requested: str = ""
    new_annotations: int = 0
    fresh_model: bool = False
    training_round: int = START
    final: bool = False
    versions_in_label_studio: list[int] = field(default_factory=list)
    check_project_at: float | None = None
    query_view_id: int = 0
    failed_job: dict[str, Any] = field(default_factory=dict)
    setup_hosts: list[str] = field(default_factory=list)  # Host headers of /setup calls: how Label Studio reaches us
    result_classes: list[str] = field(default_factory=list)  # the classes the result being published was made with

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ProjectState:
        """The state saved by ``to_dict``; unknown keys (an older layout) are dropped with a warning."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            log.warning("project state: ignoring unknown keys %s", unknown)
        state = cls(**{k: v for k, v in values.items() if k in known})
        try:
            state.phase = Phase(state.phase)
        except ValueError:
            raise ValueError(f"project state: unknown phase {state.phase!r}") from None
        return state

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def copy(self) -> ProjectState:
        return ProjectState.from_dict(self.to_dict())

    def held_job(self) -> dict[str, Any] | None:
        """The round job that failed for good and holds the project (None when nothing is held).

        Only a failure of the very job the state waits for holds: a new label config (a new generation) or late
        answers after the budget make a different job, which runs.
        """
        waiting_for = round_job_id(self.generation, self.version + 1, self.training_round)
        held = self.phase is Phase.TRAINING and self.failed_job.get("job") == waiting_for
        return dict(self.failed_job) if held else None

    @property
    def is_set_up(self) -> bool:
        return bool(self.label_config)


# --- events: what happened, as the machine needs to know it ----------------------------------------------------------
# Label Studio's events may come in any phase (the ones a phase has no use for change nothing); the driver's own
# (Started, RoundEnded, JobFailed, JobDone, ResultDropped, Published) only in the phase that does that work: in any
# other, ``on`` refuses them (TransitionRefused), since that would be a bug of the driver.

@dataclass(frozen=True)
class SetUp:
    """The first /setup with a usable label config (later ones change nothing here: see ``LabelConfigChanged``)."""

    uid: str
    label_config: str
    classes: tuple[str, ...]


@dataclass(frozen=True)
class StartRequested:
    """TASKS_CREATED, or /setup's own event: start round 0 once the project has source tasks."""


@dataclass(frozen=True)
class StartTraining:
    """Label Studio's START_TRAINING: start, end the open round early, or train again on late answers."""


@dataclass(frozen=True)
class LabelConfigChanged:
    """A label config from PROJECT_UPDATED or /setup, already checked to be usable."""

    label_config: str
    classes: tuple[str, ...]


@dataclass(frozen=True)
class AnnotationStored:
    """A new annotation stored clicks, or answered (even skipped) a query task."""


@dataclass(frozen=True)
class Requeued:
    """``python -m ovaal_backend requeue`` released the round job ``job`` that failed for good."""

    job: str


@dataclass(frozen=True)
class Started:
    """The driver looked for source tasks to start round 0 with."""

    has_sources: bool


@dataclass(frozen=True)
class RoundEnded:
    """The open round ended (every query task answered, START_TRAINING, or TRAIN_AFTER_ANNOTATIONS)."""

    last_round: int
    """``RoundPlan.rounds``: the training after this round is the final one."""


@dataclass(frozen=True)
class JobFailed:
    """The round job failed for good: the project holds until it is requeued."""

    job: str
    queue_id: str | None
    reason: str
    failed_at: float


@dataclass(frozen=True)
class JobDone:
    """The round job's result is stored as rows: ``version`` saved (or kept when it trained nothing)."""

    version: int
    next_round: int | None
    """The round its queries are for; None after the final training."""
    trained: bool
    classes: tuple[str, ...]


@dataclass(frozen=True)
class ResultDropped:
    """The classes changed after the result being published was made: train again with the new ones."""

    last_round: int
    """``RoundPlan.rounds``, as in ``RoundEnded``."""


@dataclass(frozen=True)
class Published:
    """The result is in Label Studio: ``created`` query tasks of the round exist (0 for a final result)."""

    created: int
    check_at: float
    """When the Label Studio project is read back and repaired once (``ProjectState.check_project_at``)."""


Event = (SetUp | StartRequested | StartTraining | LabelConfigChanged | AnnotationStored | Requeued | Started
         | RoundEnded | JobFailed | JobDone | ResultDropped | Published)
"""Everything that changes a project's round state."""

BOOKKEEPING = frozenset({"check_project_at", "query_view_id", "versions_in_label_studio", "setup_hosts"})
"""State fields outside the round machine (what the backend remembers of Label Studio), which
``ProjectContext.update`` sets directly; every other field changes only through ``on``."""


class TransitionRefused(RuntimeError):
    """An event of the driver arrived in a phase where that work is not done (a bug, never an input error)."""


def on(state: ProjectState, event: Event) -> ProjectState:
    """The state after ``event`` (``state`` itself is never changed; it is returned as is when nothing changes).

    Raises:
        TransitionRefused: A driver's event in a phase that does not do its work.
    """
    phase = state.phase
    match event:
        case SetUp():
            if state.is_set_up:
                return state
            classes = list(event.classes)
            return replace(state, uid=event.uid, label_config=event.label_config, classes=classes,
                           label_names=list(classes))
        case StartRequested():
            return replace(state, start_requested=True) if phase is Phase.NEW else state
        case StartTraining():
            if phase is Phase.NEW:
                return replace(state, start_requested=True)
            if phase is Phase.QUERYING:
                return replace(state, round_end_requested="START_TRAINING")
            if phase is Phase.DONE:  # late answers after the budget: redo the final training with them
                return _train(state, state.round, final=True)
            return state
        case LabelConfigChanged():
            return _adopt_label_config(state, event)
        case AnnotationStored():
            return replace(state, new_annotations=state.new_annotations + 1)
        case Requeued():
            return replace(state, failed_job={}) if state.failed_job.get("job") == event.job else state
        case Started():
            _expect(state, event, Phase.NEW)
            if not event.has_sources:
                return replace(state, start_requested=False)
            return replace(state, phase=Phase.TRAINING, training_round=START, final=False, start_requested=False)
        case RoundEnded():
            _expect(state, event, Phase.QUERYING)
            return _train(state, state.round, final=state.round >= event.last_round)
        case JobFailed():
            _expect(state, event, Phase.TRAINING)
            return replace(state, failed_job={"job": event.job, "queue_id": event.queue_id,
                                              "round": state.training_round, "reason": event.reason,
                                              "failed_at": event.failed_at})
        case JobDone():
            _expect(state, event, Phase.TRAINING)
            return replace(state, phase=Phase.PUBLISHING, version=event.version,
                           round=state.round if event.next_round is None else event.next_round,
                           fresh_model=state.fresh_model and not event.trained, failed_job={},
                           result_classes=list(event.classes))
        case ResultDropped():
            _expect(state, event, Phase.PUBLISHING)
            ended = state.training_round if state.final else state.round
            return _train(state, ended, final=state.final or ended >= event.last_round)
        case Published():
            _expect(state, event, Phase.PUBLISHING)
            if state.final:
                return replace(state, phase=Phase.DONE, check_project_at=event.check_at)
            if event.created == 0:  # nothing left to ask in this round: the budget cannot be spent further
                return _train(state, state.round, final=True)
            return replace(state, phase=Phase.QUERYING, check_project_at=event.check_at)
    raise TypeError(f"not a project event: {event!r}")


def _train(state: ProjectState, ended: int, final: bool) -> ProjectState:
    """Round ``ended`` is done: train on every stored click (the ``final`` training when the budget is spent).

    The one way into ``training`` after a round; what asked for it (a round-end request, the annotations counted
    towards TRAIN_AFTER_ANNOTATIONS, a dropped result's classes) is used up by it.
    """
    return replace(state, phase=Phase.TRAINING, training_round=ended, final=final, round_end_requested="",
                   new_annotations=0, result_classes=[])


def _adopt_label_config(state: ProjectState, event: LabelConfigChanged) -> ProjectState:
    """A new class list starts a new model generation (stored clicks keep their names in ``label_names``); a trained
    project then ends its open round, or trains its final model again."""
    classes = list(event.classes)
    if classes == state.classes:
        return replace(state, label_config=event.label_config)
    names = state.label_names + [c for c in classes if c not in state.label_names]
    state = replace(state, label_config=event.label_config, classes=classes, label_names=names,
                    generation=state.generation + 1, fresh_model=True)
    if state.version > 0 and state.phase in (Phase.QUERYING, Phase.PUBLISHING):
        return replace(state, round_end_requested="label config changed")
    if state.version > 0 and state.phase is Phase.DONE:
        return _train(state, state.round, final=True)
    return state


def _expect(state: ProjectState, event: Event, phase: Phase) -> None:
    if state.phase is not phase:
        raise TransitionRefused(f"{type(event).__name__} happens in phase {phase}, and the project is in "
                                f"{state.phase}")
