"""A project's round state: the phases, the typed state persisted in the SQLite store, and the names the backend
writes into Label Studio tasks.

The state holds only small, fixed-size facts; what grows with the project (query tasks, masks, trainings) is rows
in ``RoundStore``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from ...engine.rounds import round_job_id

log = logging.getLogger(__name__)

PHASE_NEW = "new"
"""No round published yet: waiting for source tasks and a trigger (/setup, TASKS_CREATED or START_TRAINING)."""
PHASE_QUERYING = "querying"
"""The current round's query tasks are in Label Studio; answers are being collected."""
PHASE_TRAINING = "training"
"""The round job runs: train on every stored click (none at the start), select the next round, predict masks."""
PHASE_PUBLISHING = "publishing"
"""The job's result is stored: import the next round's query tasks, push dense masks, switch the version."""
PHASE_DONE = "done"
"""The budget is spent: final model and masks are in Label Studio; no more queries."""
PHASES = (PHASE_NEW, PHASE_QUERYING, PHASE_TRAINING, PHASE_PUBLISHING, PHASE_DONE)

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
    phase: str = PHASE_NEW
    round: int = 0
    version: int = 0
    start_requested: bool = False
    round_end_requested: str = ""
    new_annotations: int = 0
    fresh_model: bool = False
    training_round: int = -1
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
        if state.phase not in PHASES:
            raise ValueError(f"project state: unknown phase {state.phase!r}")
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
        held = self.phase == PHASE_TRAINING and self.failed_job.get("job") == waiting_for
        return dict(self.failed_job) if held else None

    @property
    def is_set_up(self) -> bool:
        return bool(self.label_config)
