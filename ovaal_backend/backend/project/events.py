"""Webhook events -> stored clicks and requests: annotations become points on their source image, deletions remove
them, START_TRAINING / TASKS_CREATED / a setup request the next round, a changed label config remaps classes.

Events are stored before /webhook answers and applied here by the project's worker, oldest first.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ...config import IGNORE_INDEX
from ..convert import LabelConfigError, annotation_points
from .actions import ANNOTATION_ACTIONS
from .context import ProjectContext
from .corrected import CorrectedMasks
from .label_config import parse_label_config
from .state import (
    QUERY_MARKER,
    ROUND_KEY,
    SOURCE_KEY,
    SOURCE_ROUND,
    AnnotationStored,
    LabelConfigChanged,
    Requeued,
    StartRequested,
    StartTraining,
)

log = logging.getLogger(__name__)

SETUP_ACTION = "OVAAL_SETUP"
"""Our own event: /setup saw a label config to apply, or a project waiting for its first round."""
REQUEUE_ACTION = "OVAAL_REQUEUE"
"""Our own event, queued by ``python -m ovaal_backend requeue``: run the round job that failed for good again."""
CHECK_PROJECT_DELAY = 2.0
"""Seconds after /setup or a publish before the Label Studio project is read back and repaired once: connecting a
model sets the project's version to the model's title and creates the model's webhook (without our basic-auth
header) right after /setup, possibly after our own update."""


def trim_payload(action: str, payload: dict[str, Any]) -> dict[str, Any] | None:
    """What the handler needs of a webhook payload, or None for actions the backend does not use.

    A TASKS_CREATED payload lists every new task but only triggers round 0, and a project payload repeats the label
    config, which only PROJECT_UPDATED needs.
    """
    if action in ANNOTATION_ACTIONS:
        return {k: payload.get(k) for k in ("annotation", "task")}
    if action == "ANNOTATIONS_DELETED":
        return {"annotations": payload.get("annotations") or []}
    if action == "PROJECT_UPDATED":
        return {"label_config": (payload.get("project") or {}).get("label_config")}
    if action in ("START_TRAINING", "TASKS_CREATED"):
        return {}
    return None


class EventApplier:
    """Applies one project's stored events."""

    def __init__(self, ctx: ProjectContext) -> None:
        self.ctx = ctx
        self.queued_schema: str | None = None  # a label config /setup queued and not yet applied
        self.corrected = CorrectedMasks(ctx)

    def apply(self, action: str, payload: dict[str, Any]) -> None:
        """Apply one event (raises on a malformed payload; the caller decides what happens to it)."""
        if action in ANNOTATION_ACTIONS:
            self._annotations(action, payload)
        elif action == "ANNOTATIONS_DELETED":
            ids = [int(a["id"]) for a in payload.get("annotations") or []]
            removed = self.ctx.store.clicks.delete(ids)
            self.corrected.forget(ids)
            log.info("project %s: %d annotation(s) deleted in Label Studio, %d were stored", self.ctx.key, len(ids),
                     removed)
        elif action == "START_TRAINING":
            self._start_training()
        elif action == "TASKS_CREATED":
            self.ctx.apply(StartRequested())
        elif action == REQUEUE_ACTION:
            self._release_failed_job(str(payload.get("job") or ""))
        elif action in ("PROJECT_UPDATED", SETUP_ACTION):
            schema = payload.get("label_config") or payload.get("schema")
            if action == SETUP_ACTION:
                schema = self._trusted_label_config(schema)
            if schema:
                self.apply_label_config(schema)
            if action == SETUP_ACTION:
                # Connecting the model creates the project's webhook right after /setup: check it a little later.
                self.ctx.update(check_project_at=time.time() + CHECK_PROJECT_DELAY)
                self.ctx.apply(StartRequested())

    def _release_failed_job(self, job_id: str) -> None:
        """Forget the failure of ``job_id`` so the worker runs the round again (a newer failure stays)."""
        if self.ctx.state.failed_job != self.ctx.apply(Requeued(job_id)).failed_job:
            log.info("project %s: round job %s released by requeue: the round runs again", self.ctx.key, job_id)
        else:
            log.info("project %s: requeue of %s: no such failed job held (already released)", self.ctx.key, job_id)

    def _trusted_label_config(self, claimed: str | None) -> str | None:
        """The label config Label Studio holds for the project, which wins over the one a /setup body claims.

        /setup's body can come from anyone who reaches the port, and a config whose control names differ from the
        project's makes Label Studio drop every prediction we send; Label Studio's own copy is the truth.
        """
        actual = self.ctx.client.get_project(self.ctx.project_id).get("label_config")
        if actual and claimed and actual != claimed:
            log.warning("project %s: /setup sent a label config that differs from Label Studio's; using Label "
                        "Studio's", self.ctx.key)
        return actual or claimed

    def _annotations(self, action: str, payload: dict[str, Any]) -> None:
        tasks = {int(t["id"]): t for t in _as_list(payload.get("task")) if isinstance(t, dict) and "id" in t}
        for annotation in _as_list(payload.get("annotation")):
            task_id = _task_id(annotation.get("task"))
            self.store_annotation(annotation, tasks.get(task_id), created=action != "ANNOTATION_UPDATED")

    def _start_training(self) -> None:
        with self.ctx.lock:
            before = self.ctx.state
            if self.ctx.apply(StartTraining()) == before:
                log.info("project %s: START_TRAINING ignored while %s", self.ctx.key, before.phase)

    def store_annotation(self, annotation: dict[str, Any], task: dict[str, Any] | None, created: bool) -> None:
        """Store an annotation's clicks on the image they lie on.

        Query tasks: the clicks belong to their source image and round. Source tasks: keypoints of the query
        control count as clicks too, and brush regions of the mask control are the image's corrected mask
        (``CorrectedMasks.store``). A skipped (cancelled) annotation stores no point but counts as an answer.
        """
        annotation_id = int(annotation["id"])
        task_id = _task_id(annotation.get("task"))
        if task_id is None:
            raise ValueError(f"annotation {annotation_id} names no task")
        round_index, source, is_query = self._locate(annotation_id, task_id, task)
        cancelled = bool(annotation.get("was_cancelled"))
        points = [] if cancelled else annotation_points(annotation.get("result") or [], self.ctx.parsed_config)
        stored = [(row, col, self._label_key(label)) for row, col, label in points]
        changed = self.ctx.store.clicks.put(annotation_id, task_id=task_id, source_task_id=source,
                                                round_index=round_index, annotator=_annotator(annotation),
                                                points=stored, cancelled=cancelled,
                                                updated_at=_text(annotation.get("updated_at")))
        if changed and created and (is_query or stored):
            self.ctx.apply(AnnotationStored())
        if not is_query:
            self.corrected.store(annotation, task_id, cancelled)
        log.debug("project %s: annotation %d on task %d -> %d point(s) on image %d (round %d)%s", self.ctx.key,
                  annotation_id, task_id, len(stored), source, round_index, " [skipped]" if cancelled else "")

    def _locate(self, annotation_id: int, task_id: int, task: dict[str, Any] | None) -> tuple[int, int, bool]:
        """``(round, source task id, is a query task)`` of an annotated task; query tasks are also known by their
        markers (a task imported before a crash recorded it)."""
        known = self.ctx.store.rounds.query_task_round(task_id)
        if known is not None:
            return known[0], known[1], True
        data = (task or {}).get("data") or {}
        if data.get(QUERY_MARKER):
            round_index, source = int(data[ROUND_KEY]), int(data[SOURCE_KEY])
            self.ctx.store.rounds.add_query_tasks(round_index, [(task_id, source)])
            return round_index, source, True
        if task is not None:
            return SOURCE_ROUND, task_id, False
        raise ValueError(f"annotation {annotation_id}: task {task_id} is unknown and the event has no task data")

    def _label_key(self, class_index: int) -> int:
        """The stored label of a class index: its position in ``label_names`` (IGNORE_INDEX stays)."""
        if class_index < 0:
            return IGNORE_INDEX
        return self.ctx.state.label_names.index(self.ctx.parsed_config.classes[class_index])

    def apply_label_config(self, schema: str) -> None:
        """Adopt a changed label config; a changed class list starts a new model generation."""
        try:
            parsed_config = parse_label_config(schema, self.ctx.config)
        except LabelConfigError as err:
            log.error("project %s: the new label config is not usable, keeping the old one: %s", self.ctx.key, err)
            return
        with self.ctx.lock:
            self.queued_schema = None
            old = self.ctx.state.classes
            state = self.ctx.apply(LabelConfigChanged(schema, tuple(parsed_config.classes)))
        if state.classes == old:
            return
        log.warning("project %s: classes changed (removed %s, added %s): generation %d starts; stored clicks are "
                    "remapped by class name and clicks of removed classes train nothing", self.ctx.key,
                    sorted(set(old) - set(state.classes)), sorted(set(state.classes) - set(old)), state.generation)

    def resync(self) -> tuple[int, int]:
        """Queue every annotation Label Studio has as an update, and a deletion for stored ones it no longer has.

        For webhooks that were lost: the worker applies the queued events like live ones (idempotent per
        annotation id). A stored annotation the listing did not show is deleted (and its clicks tombstoned for
        good) only when Label Studio answers 404 for it; one it still has (added to a task the listing had
        passed) is queued as an update. Returns ``(annotations queued, deletions queued)``.

        Raises:
            LabelStudioError: Label Studio failed to answer; nothing is deleted on a guess, run it again.
        """
        seen: set[int] = set()
        queued = 0
        for task in self.ctx.client.iter_tasks(self.ctx.project_id, all_fields=True):
            for annotation in task.get("annotations") or []:
                seen.add(int(annotation["id"]))
                self._queue_update(annotation, task)
                queued += 1
        gone = []
        for annotation_id in sorted(self.ctx.store.clicks.annotation_ids() - seen):
            annotation = self.ctx.client.get_annotation(annotation_id)
            if annotation is None:
                gone.append(annotation_id)
                continue
            task_id = _task_id(annotation.get("task"))
            task = None if task_id is None else self.ctx.client.get_task(task_id)
            if task is not None:  # a task deleted meanwhile: its annotation's 404 comes with the next resync
                self._queue_update(annotation, task)
                queued += 1
        if gone:
            self.ctx.store.events.add("ANNOTATIONS_DELETED", {"annotations": [{"id": i} for i in gone]})
        log.info("project %s: resync queued %d annotations and %d deletions", self.ctx.key, queued, len(gone))
        return queued, len(gone)

    def _queue_update(self, annotation: dict[str, Any], task: dict[str, Any]) -> None:
        """Queue an annotation Label Studio holds as an ANNOTATION_UPDATED event, as its webhook would send it."""
        brief = {"id": task["id"], "data": task.get("data") or {}}
        self.ctx.store.events.add("ANNOTATION_UPDATED",
                                 {"annotation": dict(annotation, task=task["id"]), "task": brief})


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _task_id(value: Any) -> int | None:
    """A task id given as a number or as a task dict."""
    if isinstance(value, dict):
        value = value.get("id")
    return None if value is None else int(value)


def _annotator(annotation: dict[str, Any]) -> str | None:
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        who = who.get("email") or who.get("id")
    return None if who is None else str(who)
