"""The per-project driver: does each phase's work between Label Studio and the engine's round job, and reports what
happened as an event to the round state machine (``state.on``, which alone decides the next phase).

One ``ProjectDriver`` per Label Studio project. Request threads call the quick methods (``setup``, ``add_event``,
``predict``, ``metrics``); the project's worker thread (worker.py) calls ``process_events`` and ``step``, which do the
slow work through the collaborators: ``events`` (webhooks -> stored clicks), the round job (``jobs``), ``publisher``
(query tasks and masks to Label Studio) and ``upkeep`` (the Label Studio project kept in shape). Everything is on
disk under ``MODEL_DIR/<project id>/`` (the SQLite file with the typed state, clicks, events and round rows; the
checkpoint; cached images), so a restarted backend resumes where it was.

The loop (a round = one batch of query tasks, one per source image):

``new`` -> (source tasks exist and /setup, TASKS_CREATED or START_TRAINING arrives) -> ``training`` (the start: the
job picks round 0's random pixels) -> ``publishing`` round 0 -> ``querying`` -> (every query task answered or
skipped, START_TRAINING, or TRAIN_AFTER_ANNOTATIONS new annotations) -> ``training`` (the job trains on all stored
clicks, saves version v+1, selects round r+1 and predicts masks) -> ``publishing`` (query tasks, dense masks on every
source task, the project switched to the new version) -> ``querying`` ... After the last round the job's training is
the final one (plus the OVAAL+ phase) and ``publishing`` pushes the final masks only -> ``done``.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import time
import uuid
from typing import Any

import numpy as np

from ...config import Config
from ...engine.job import START, RoundJob
from ...engine.rounds import RoundPlan
from ..cached import CachedAnswer
from ..client import ImageHostRefused, LabelStudioClient, LabelStudioError
from ..facts import ProjectFacts
from ..jobs import InProcessJobs, JobFailedError, JobRunner
from ..progress import project_facts
from .context import ProjectContext
from .events import CHECK_PROJECT_DELAY, SETUP_ACTION, EventApplier, trim_payload
from .label_config import parse_label_config
from .predictions import Predictions
from .publish import Publisher
from .state import (
    JobDone,
    JobFailed,
    Phase,
    ProjectState,
    Published,
    ResultDropped,
    RoundEnded,
    SetUp,
    Started,
    version_name,
)
from .upkeep import Upkeep

log = logging.getLogger(__name__)


SETUP_HOSTS_KEPT = 8
"""Most /setup Host headers remembered per project (the newest): one per address Label Studio was given for us."""


class ProjectMismatchError(RuntimeError):
    """MODEL_DIR/<id> belongs to a different Label Studio project with the same id."""


class ProjectDriver:
    """The work of each phase of one Label Studio project (its transitions: ``state.on``).

    Args:
        config: Settings (engine and server).
        project_id: Label Studio's project id.
        client: Calls to Label Studio.
        jobs: Where round jobs run (in this process by default).
    """

    def __init__(self, config: Config, project_id: int, client: LabelStudioClient,
                 jobs: JobRunner | None = None) -> None:
        self.ctx = ProjectContext(config, project_id, client)
        self.plan = RoundPlan.from_config(config)
        self.upkeep = Upkeep(self.ctx)
        self.events = EventApplier(self.ctx)
        self.publisher = Publisher(self.ctx, self.upkeep)
        self.predictions = Predictions(self.ctx, self.publisher)
        self.jobs = jobs or InProcessJobs()
        self.config, self.key, self.root, self.store = config, self.ctx.key, self.ctx.root, self.ctx.store
        self.facts = ProjectFacts(self.store)  # what /metrics shows of the clicks
        # /metrics' answer, kept until the SQLite file changes or newer facts of the clicks are computed
        self._metrics = CachedAnswer(lambda: (self.store.data_version(), self.facts.generation))

    # ============================================================ quick calls (request threads)

    @property
    def is_set_up(self) -> bool:
        """True once /setup has given the project a label config."""
        return self.ctx.state.is_set_up

    @property
    def model_version(self) -> str:
        """The current version: the newest one whose weights are saved (``ovaal-0`` before any training)."""
        return self.ctx.model_version

    @property
    def phase(self) -> Phase:
        return self.ctx.state.phase

    def state(self) -> ProjectState:
        """A copy of the persisted state."""
        return self.ctx.state

    def setup(self, uid: str, schema: str, host: str = "") -> str:
        """Handle /setup: validate the label config, record it, and queue what it changes; returns the version.

        Kept fast (Label Studio waits 3 s): the label config is applied and round 0 started by the worker. ``host``
        (the call's Host header) is remembered: it names the ML backend entry that is this backend (see
        ``Upkeep.ensure_webhook_auth``).

        Raises:
            LabelConfigError: The label config cannot drive the loop.
            ProjectMismatchError: MODEL_DIR holds another Label Studio project with the same id.
        """
        parsed_config = parse_label_config(schema, self.config)
        with self.ctx.lock:
            state = self.ctx.state
            if not state.is_set_up:
                self.ctx.apply(SetUp(uid, schema, tuple(parsed_config.classes)))
                log.info("project %s: new project (classes %s)", self.key, list(parsed_config.classes))
            elif state.uid and uid != state.uid and "." in uid:
                raise ProjectMismatchError(
                    f"{self.root} holds Label Studio project {state.uid} but this is {uid} (the same id in "
                    "a re-created Label Studio?): move that folder away or use another MODEL_DIR")
            if host and host not in self.ctx.state.setup_hosts:
                self.ctx.update(setup_hosts=[*self.ctx.state.setup_hosts, host][-SETUP_HOSTS_KEPT:])
            state = self.ctx.state
            new_schema = schema != state.label_config and schema != self.events.queued_schema
            if state.phase is Phase.NEW or new_schema:
                self.events.queued_schema = schema
                self.store.events.add(SETUP_ACTION, {"schema": schema})
            return self.model_version

    def add_event(self, action: str, payload: dict[str, Any]) -> int | None:
        """Persist a webhook event before Label Studio gets its answer; None for actions we do not use."""
        trimmed = trim_payload(action, payload)
        return None if trimmed is None else self.store.events.add(action, trimmed)

    def predict(self, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One prediction per task, in order (see ``Predictions.predict``)."""
        return self.predictions.predict(tasks, self.model_version)

    def metrics(self) -> dict[str, Any]:
        """What /metrics shows for this project.

        Cheap on a big project, because every open dashboard asks every few seconds: the answer is kept until the
        project's SQLite file changes, and computed by one caller at a time (``CachedAnswer``; everything here is
        read from that file, the state included, which ``ProjectContext.update`` saves there); counts come from
        SQL, and the facts of the stored clicks from ``ProjectFacts`` (updated image by image).
        """
        return self._metrics.get(self._read_metrics)

    def _read_metrics(self) -> dict[str, Any]:
        with self.store.snapshot():  # one connection, and the figures agree with each other
            state = self.ctx.state
            queries, answered = self.store.rounds.round_progress(state.round)
            trainings = self.store.trainings.all()
            ignore = self.ctx.parsed_config.ignore_label if state.is_set_up else None
            pending = self.store.events.pending_count()
            # While the worker applies a backlog the facts change with every event: the last ones, at once.
            stored = self.facts.get(state.label_names, state.classes, ignore, wait=not pending)
            return {
                "phase": state.phase, "round": state.round, "rounds": self.plan.rounds,
                "model_version": self.model_version, "generation": state.generation, "classes": state.classes,
                "query_tasks": queries, "answered_query_tasks": answered, "new_annotations": state.new_annotations,
                "pending_events": pending, **self.store.clicks.annotation_counts(),
                "points": stored["points"], "ignored_points": stored["ignored_points"],
                "trainings": [dict(t, version=version_name(t["version"])) for t in trainings],
                "quarantined": self.quarantined(), "failed_job": state.held_job(),
                "corrections": self.events.corrected.summary(),
                **project_facts(self.config, self.plan, trainings, stored, state, ignore),
            }

    def quarantined(self) -> dict[str, list[dict[str, Any]]]:
        """What is set aside, with its reasons: malformed events, and images that cannot be read."""
        return {"events": self.store.events.quarantined(),
                "images": self.store.quarantine.items("image")}

    def resync(self) -> tuple[int, int]:
        """Queue Label Studio's annotations (and deletions of stored ones it lacks) as events; see EventApplier."""
        return self.events.resync()

    # ============================================================ worker thread

    def needs_step(self) -> bool:
        """True when ``step`` has something to do now (cheap: the worker asks after every wake-up)."""
        state = self.ctx.state
        if state.phase is Phase.PUBLISHING or self.upkeep.check_due():
            return True
        if state.phase is Phase.TRAINING:
            return state.held_job() is None
        if state.phase is Phase.NEW:
            return state.start_requested
        return state.phase is Phase.QUERYING and self._round_end_reason() is not None

    def process_events(self) -> int:
        """Apply the stored events that are due, oldest first; returns how many were applied or set aside.

        A malformed event is quarantined with its reason (kept in the store, shown in /metrics, released by
        ``python -m ovaal_backend quarantine --release``); a transient failure (the disk, a locked database) stops
        the queue in order and retries with backoff, so nothing is marked done that was not applied.
        """
        handled = 0
        while batch := self.store.events.pending(now=time.time(), limit=EVENT_BATCH):
            for event_id, action, payload in batch:
                try:
                    self.events.apply(action, payload)
                except TRANSIENT as err:
                    attempts = self.store.events.retry_later(event_id, _reason(err))
                    log.warning("project %s: event %d (%s) failed (attempt %d), retried later: %s", self.key,
                                event_id, action, attempts, _reason(err))
                    return handled
                except Exception as err:
                    self.store.events.quarantine(event_id, _reason(err))
                    log.error("project %s: event %d (%s) quarantined: %s", self.key, event_id, action, _reason(err))
                else:
                    self.store.events.mark_done(event_id)
                handled += 1
        return handled

    def step(self) -> bool:
        """Do the next piece of work of the state machine; False when there is nothing to do until an event.

        Raises whatever Label Studio or the engine raise; the worker logs it and retries later from the same
        persisted phase.
        """
        state = self.ctx.state
        if state.phase is Phase.TRAINING and state.held_job() is None:
            self._run_job(state)
        elif state.phase is Phase.PUBLISHING:
            self._publish(state)
        elif self.upkeep.check_due():
            self.upkeep.check()
        elif state.phase is Phase.NEW:
            return self._start() if state.start_requested else False
        elif state.phase is Phase.QUERYING and (reason := self._round_end_reason()) is not None:
            self._end_round(state, reason)
        else:
            return False
        return True

    def _start(self) -> bool:
        """Start the loop (the job picks round 0's random pixels) once the project has source tasks."""
        if self.ctx.apply(Started(has_sources=bool(self.ctx.list_sources()))).phase is Phase.NEW:
            log.info("project %s: no source tasks yet; round 0 starts when images are imported", self.key)
            return False
        return True

    def _round_end_reason(self) -> str | None:
        """Why the current round ends now, or None while it is still open."""
        state = self.ctx.state
        if state.round_end_requested:
            return state.round_end_requested
        total, answered = self.store.rounds.round_progress(state.round)
        if total and answered == total:
            return f"every query task of round {state.round} is answered"
        every = self.config.train_after_annotations
        if every and state.new_annotations >= every:
            return f"{every} new annotations"
        return None

    def _end_round(self, state: ProjectState, reason: str) -> None:
        final = self.ctx.apply(RoundEnded(last_round=self.plan.rounds)).final
        log.info("project %s: round %d ends (%s); %s", self.key, state.round, reason,
                 "final training" if final else "training")

    def _run_job(self, state: ProjectState) -> None:
        """Run the round job, keep its result as rows, then move on to publishing (the version goes up only now,
        after its weights are on disk and its rows are stored)."""
        job, unreachable = self.round_job(state)
        try:
            result = self.jobs.run(job, project=self.key)
        except JobFailedError as err:
            self._hold(state, job, err)
            return
        if result.classes != self.ctx.state.classes:
            log.warning("project %s: the classes changed while round job %s ran (%s, now %s): its result is dropped "
                        "and the job runs again", self.key, job.job_id, result.classes, self.ctx.state.classes)
            return
        bad_images = {**unreachable, **{key: self._image_problem(key, reason) for key, reason in
                                        result.unreadable.items()}}
        self.store.quarantine.replace("image", bad_images)
        self.publisher.record(result)
        if result.training is not None:
            log.info("project %s: %s saved (round %d%s, %d points on %d images, %.1f s)", self.key,
                     version_name(result.version), state.training_round, ", final" if state.final else "",
                     result.training["points"], result.training["images"], result.training["seconds"])
        elif state.training_round != START:
            log.warning("project %s: no stored click has a class yet (all skipped or 'can't tell'); the model "
                        "stays as it is", self.key)
        self.ctx.apply(JobDone(version=result.version, next_round=result.next_round,
                               trained=result.training is not None, classes=tuple(result.classes)))

    def _hold(self, state: ProjectState, job: RoundJob, err: JobFailedError) -> None:
        """Record a job that failed for good: the project waits (``held_job``) instead of failing it again."""
        self.ctx.apply(JobFailed(job=job.job_id, queue_id=err.job_id, reason=err.reason, failed_at=time.time()))
        log.error("project %s: %s; the round waits until `python -m ovaal_backend requeue --project %s`", self.key,
                  err, self.key)

    def round_job(self, state: ProjectState) -> tuple[RoundJob, dict[int, str]]:
        """The job for the round that ended (every source image's file and its clicks, the corrected masks as dense
        labels with TRAIN_ON_CORRECTIONS, the checkpoint to continue), and the images that could not be fetched
        (left out of this round, tried again in the next)."""
        sources = self.ctx.list_sources()
        self.ctx.store.sources.replace(sources)  # the round's pool, as export and the dashboard read it
        clicks = self.ctx.points_by_source()
        keys, paths, points, unreachable = [], [], [], {}
        for task_id in sorted(sources):
            try:
                path = self.ctx.images.path(task_id, self.ctx.image_url(sources[task_id]))
            except Exception as err:  # one unreachable image must not stop the round
                unreachable[task_id] = self._image_problem(task_id, err)
                continue
            keys.append(task_id)
            paths.append(str(path))
            points.append(clicks.get(task_id, np.zeros((0, 3), dtype=np.int64)))
        version = state.version + 1
        dense = self.events.corrected.dense_labels(keys) if self.config.train_on_corrections else {}
        return RoundJob(config=self.config.engine, classes=list(state.classes), ended_round=state.training_round,
                        keys=keys, image_paths=paths, points=points, checkpoint=str(self.ctx.model.path),
                        version=version, generation=state.generation, fine_tune=not state.fresh_model,
                        masks_dir=str(self.root / "masks" / version_name(version)), dense=dense), unreachable

    def _drop_result(self, state: ProjectState) -> None:
        """The classes changed after the round job's result was recorded: publish none of it (its masks' and
        pre-labels' class indices mean the old names) and train again with the new classes.

        The round whose queries were being published ends unasked (its tasks already in Label Studio are retired by
        the next publish); a final result is simply made again.
        """
        log.warning("project %s: the classes changed while %s was being published (%s, now %s): the rest of it is "
                    "dropped and the model trained again", self.key, version_name(state.version),
                    state.result_classes, state.classes)
        shutil.rmtree(self.root / "masks" / version_name(state.version), ignore_errors=True)
        self.ctx.apply(ResultDropped(last_round=self.plan.rounds))

    def _image_problem(self, task_id: int, err: BaseException | str) -> str:
        """Log why a task's image is left out of this round (URL, path and the peer's answer), and return the reason
        /metrics shows: its kind and the log line's reference, never the URL or the peer's text (task data is
        anyone's who can add tasks: showing which hosts answered what would make the backend a port scanner)."""
        ref, text = uuid.uuid4().hex[:8], err if isinstance(err, str) else _reason(err)
        log.error("project %s: task %d: its image is left out of this round (ref %s): %s", self.key, task_id, ref,
                  text)
        if isinstance(err, ImageHostRefused):
            kind = str(err)
        elif isinstance(err, LabelStudioError):
            kind = "the image could not be downloaded" + (f" (HTTP {err.status})" if err.status else "")
        elif "MAX_IMAGE_PIXELS" in text:
            kind = "the image has more pixels than MAX_IMAGE_PIXELS"
        elif "not an image" in text:
            kind = "the download is not an image"
        else:
            kind = "the image cannot be read"
        return f"{kind}; see the backend's log (ref {ref})"

    def _publish(self, state: ProjectState) -> None:
        """Import the round's query tasks, push dense masks, then switch the project to the version."""
        if state.result_classes and state.result_classes != state.classes:
            self._drop_result(state)
            return
        created = 0 if state.final else self.publisher.publish_queries(state.round, state.version)
        if state.final or state.round > 0:
            self.publisher.retire_round(state.round if state.final else state.round - 1)
        self.publisher.push_masks(state.version)
        self.publisher.drop_mask_files(keep=state.version)
        self.upkeep.sync(check=False)
        after = self.ctx.apply(Published(created=created, check_at=_soon()))
        if after.phase is Phase.DONE:
            log.info("project %s: done: final masks of %s are in Label Studio", self.key, self.model_version)
        elif after.phase is Phase.TRAINING:
            log.info("project %s: round %d has nothing left to ask; final training", self.key, state.round)
        else:
            log.info("project %s: round %d is open (%s)", self.key, state.round, self.model_version)


EVENT_BATCH = 200
"""Stored events read (and parsed) at a time by ``process_events``: a backlog of 50,000 read at once held the GIL
for tens of seconds and its payloads in memory."""
TRANSIENT = (sqlite3.OperationalError, OSError, LabelStudioError)
"""Failures that may pass by themselves (a locked database, a full disk, Label Studio unreachable): retried in order,
never quarantined."""


def _reason(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"[:500]


def _soon() -> float:
    """When the Label Studio project is read back after /setup or a publish (see events.CHECK_PROJECT_DELAY)."""
    return time.time() + CHECK_PROJECT_DELAY
