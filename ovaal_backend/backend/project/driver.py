"""The per-project driver: the active-learning round state machine between Label Studio and the engine.

One ``ProjectDriver`` per Label Studio project. Request threads call the quick methods (``setup``, ``add_event``,
``predict``, ``metrics``); the project's worker thread (worker.py) calls ``process_events`` and ``step``, which do the
slow work: training, selecting pixels, importing query tasks and pushing masks. Everything the driver knows is on
disk under ``MODEL_DIR/<project id>/`` (the SQLite label store with the JSON state and the event queue, the
checkpoint, the imported queries), so a restarted backend resumes where it was.

The loop (a round = one batch of query tasks, one per source image):

``new`` -> (source tasks exist and /setup, TASKS_CREATED or START_TRAINING arrives) -> ``publishing`` round 0 (random
pixels, no model) -> ``querying`` -> (every query task answered or skipped, START_TRAINING, or TRAIN_AFTER_ANNOTATIONS
new annotations) -> ``training`` (all stored clicks; the model version goes up once the weights are saved) ->
``publishing`` round r+1 (queries chosen by the model, dense masks on every source task, project switched to the new
version) -> ``querying`` ... After round ``rounds`` the training is the final one (plus the OVAAL+ semi-supervised
epochs) and ``publishing`` pushes the final masks only -> ``done``.

Labels are stored by class NAME (an index into ``label_names``, a list that only grows), so a label config that
adds, removes or reorders classes remaps every stored click by name: clicks of a removed class train nothing (and
come back if the class does), and a changed class list starts a new model generation trained from all stored clicks.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...config import IGNORE_INDEX, Config
from ...engine.learner import ActiveLearner, Queries
from ...files import write_atomically
from ..client import ImageFetcher, LabelStudioClient
from ..convert import LabelConfigError, LabelInterface, annotation_points, brush_results, keypoint_results
from ..store import LabelStore
from .pool import PoolImage, ProjectModel

log = logging.getLogger(__name__)

PHASE_NEW = "new"
"""No round published yet: waiting for source tasks and a trigger (/setup, TASKS_CREATED or START_TRAINING)."""
PHASE_QUERYING = "querying"
"""The current round's query tasks are in Label Studio; answers are being collected."""
PHASE_TRAINING = "training"
"""The current round has ended; the next step trains on every stored click."""
PHASE_PUBLISHING = "publishing"
"""A version is ready: import the next round's query tasks, push dense masks, switch the project's version."""
PHASE_DONE = "done"
"""The budget is spent: final model and masks are in Label Studio; no more queries."""

QUERY_MARKER = "ovaal_query"
"""Task data key that marks a task as one of our query tasks (value ``true``)."""
SOURCE_KEY = "ovaal_source_task"
"""Task data key of a query task: the id of the source task (the pool image) it asks about."""
ROUND_KEY = "ovaal_round"
"""Task data key of a query task: its acquisition round (0 = random cold start)."""

SOURCE_ROUND = -1
"""Round recorded for clicks made on a source task (no query round asked for them; a re-sync never moves them)."""

PUSH_BATCH = 16
"""Source tasks per ``import_predictions`` request when pushing dense masks (a CamVid mask is ~100 KB of RLE)."""
CHECK_PROJECT_DELAY = 2.0
"""Seconds after /setup or a publish before the Label Studio project is read back and repaired once: connecting a
model sets the project's version to the model's title and creates the model's webhook (without our basic-auth
header) right after /setup, possibly after our own update."""
MASK_SCORE = 1.0
"""Task score of a dense-mask prediction. Query scores (certainty) lie in [0, 1), so with uncertainty sampling Label
Studio serves every open query task before any source task; each mask region carries its own mean confidence."""
STATE_FILE = "labels.sqlite3"
ANNOTATION_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED")
SETUP_ACTION = "OVAAL_SETUP"
"""Our own event: /setup saw a label config to apply, or a project waiting for its first round."""


def version_name(number: int) -> str:
    """The ``model_version`` string of version ``number`` (0 = no trained model yet)."""
    return f"ovaal-{number}"


def project_dir(config: Config, project_id: int) -> Path:
    """Where one project's state lives: ``MODEL_DIR/<project id>``."""
    return Path(config.model_dir) / str(int(project_id))


def known_projects(config: Config) -> list[int]:
    """Ids of the projects with state under MODEL_DIR (restart recovery)."""
    root = Path(config.model_dir)
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and (p / STATE_FILE).is_file())


def parse_label_config(xml: str, config: Config) -> LabelInterface:
    """The label config as this backend needs it: a KeyPointLabels control with an ignore label.

    Raises:
        LabelConfigError: The config cannot drive the loop; the message says what to add.
    """
    iface = LabelInterface.parse(xml, config.query_from_name, config.mask_from_name)
    if iface.query_from_name is None:
        raise LabelConfigError('the backend asks annotators about points: add <KeyPointLabels name="query" '
                               'toName="image"> with one <Label> per class and an ignore label')
    if iface.ignore_label is None:
        raise LabelConfigError('add an ignore label to the KeyPointLabels control, e.g. <Label value="ignore" '
                               'ovaal="ignore"/>: annotators need a "can\'t tell" answer, and random round-0 points '
                               "are pre-labelled with it so a careless submit stores nothing wrong")
    return iface


def parse_project_uid(value: Any) -> tuple[int, str]:
    """Label Studio's ``"<id>.<created timestamp>"`` (or a bare id) as ``(id, uid)``.

    Raises:
        ValueError: It does not start with a positive integer id.
    """
    text = str(value if value is not None else "").strip()
    head = text.split(".", 1)[0]
    if not head.isdigit() or int(head) < 1:
        raise ValueError(f"project must be Label Studio's '<id>.<timestamp>' or an id, got {value!r}")
    return int(head), text


class ProjectDriver:
    """Label state, model and round state machine of one Label Studio project.

    Args:
        config: Settings (engine and server).
        project_id: Label Studio's project id.
        client: Calls to Label Studio.
    """

    def __init__(self, config: Config, project_id: int, client: LabelStudioClient) -> None:
        self.config = config
        self.project_id = int(project_id)
        self.key = str(self.project_id)
        self.root = project_dir(config, project_id)
        self.client = client
        self.store = LabelStore(self.root / STATE_FILE)
        self.model = ProjectModel(config, self.root, ImageFetcher(client, self.root / "images",
                                                                  config.label_studio_local_files_document_root))
        self._lock = threading.RLock()  # the state
        self._state: dict[str, Any] = self.store.get_state(self.key)
        self._iface: LabelInterface | None = None
        self._queued_schema: str | None = None

    # ============================================================ quick calls (request threads)

    @property
    def is_set_up(self) -> bool:
        """True once /setup has given the project a label config."""
        return bool(self._state.get("label_config"))

    @property
    def model_version(self) -> str:
        """The current version: the newest one whose weights are saved (``ovaal-0`` before any training)."""
        return version_name(int(self._state.get("version", 0)))

    @property
    def phase(self) -> str:
        """Where the round state machine is (one of the PHASE_* values)."""
        return str(self._state.get("phase", PHASE_NEW))

    @property
    def iface(self) -> LabelInterface:
        """The parsed label config of the project."""
        with self._lock:
            if self._iface is None:
                self._iface = parse_label_config(self._state["label_config"], self.config)
            return self._iface

    def state(self) -> dict[str, Any]:
        """A copy of the persisted state (for tests and /metrics)."""
        with self._lock:
            return json.loads(json.dumps(self._state))

    def setup(self, uid: str, schema: str) -> str:
        """Handle /setup: validate the label config, record it, and queue what it changes; returns the version.

        Kept fast (Label Studio waits 3 s): the label config is applied and round 0 started by the worker.

        Raises:
            LabelConfigError: The label config cannot drive the loop.
            ProjectMismatchError: MODEL_DIR holds another Label Studio project with the same id.
        """
        iface = parse_label_config(schema, self.config)
        with self._lock:
            if not self._state:
                self._state = _initial_state(uid, schema, iface)
                self._save_state()
                log.info("project %s: new project (classes %s)", self.key, self._state["classes"])
            elif self._state.get("uid") and uid != self._state["uid"] and "." in uid:
                raise ProjectMismatchError(
                    f"{self.root} holds Label Studio project {self._state['uid']} but this is {uid} (the same id in "
                    "a re-created Label Studio?): move that folder away or use another MODEL_DIR")
            wants_start = self.phase == PHASE_NEW
            new_schema = schema != self._state["label_config"] and schema != self._queued_schema
            if wants_start or new_schema:
                self._queued_schema = schema
                self.store.add_event(self.key, SETUP_ACTION, {"schema": schema})
            return self.model_version

    def add_event(self, action: str, payload: dict[str, Any]) -> int | None:
        """Persist a webhook event before Label Studio gets its answer; None for actions we do not use.

        Only what the handler needs is kept: a TASKS_CREATED payload lists every new task, but it only triggers
        round 0, and a project payload repeats the label config, which only PROJECT_UPDATED needs.
        """
        if action in ANNOTATION_ACTIONS:
            payload = {k: payload.get(k) for k in ("annotation", "task")}
        elif action == "ANNOTATIONS_DELETED":
            payload = {"annotations": payload.get("annotations") or []}
        elif action == "PROJECT_UPDATED":
            payload = {"label_config": (payload.get("project") or {}).get("label_config")}
        elif action in ("START_TRAINING", "TASKS_CREATED"):
            payload = {}
        else:
            return None
        return self.store.add_event(self.key, action, payload)

    def predict(self, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One prediction per task, in order: keypoints for query tasks, a dense mask for source tasks.

        A source task gets an empty result with score 0 before any model exists (or when its image cannot be
        read); a query task gets the keypoints it was imported with.
        """
        with self._lock:
            name = self.model_version
        results: list[dict[str, Any] | None] = [None] * len(tasks)
        sources: dict[int, tuple[int, dict[str, Any]]] = {}
        for i, task in enumerate(tasks):
            task_id = int(task["id"])
            data = task.get("data") or {}
            if data.get(QUERY_MARKER) or self.store.query_task_round(self.key, task_id) is not None:
                stored = self._stored_query(task_id)
                results[i] = {"result": stored.get("result", []), "score": float(stored.get("score", 0.0))}
            else:
                sources[i] = (task_id, data)
        learner = self.serving_learner()
        if sources and learner is not None and self.iface.mask_from_name is not None:
            masks = self._mask_predictions(learner, [tid for tid, _ in sources.values()],
                                           [data for _, data in sources.values()])
            for i, (task_id, _) in sources.items():
                results[i] = masks.get(task_id)
        return [dict(r or {"result": [], "score": 0.0}, model_version=name) for r in results]

    def metrics(self) -> dict[str, Any]:
        """What /metrics shows for this project."""
        with self._lock:
            state = self.state()
        round_index = int(state.get("round", 0))
        queries = self.store.query_tasks(self.key, round_index)
        answered = self.store.answered_tasks(self.key, round_index) & set(queries)
        return {
            "phase": state.get("phase", PHASE_NEW), "round": round_index, "rounds": self.config.rounds,
            "model_version": self.model_version, "generation": state.get("generation", 0),
            "classes": state.get("classes", []), "query_tasks": len(queries), "answered_query_tasks": len(answered),
            "new_annotations": state.get("new_annotations", 0),
            "pending_events": len(self.store.pending_events(self.key)), **self.store.counts(self.key),
            "trainings": state.get("history", []),
        }

    # ============================================================ worker thread

    def needs_step(self) -> bool:
        """True when ``step`` has something to do now (cheap: the worker asks after every wake-up)."""
        phase = self.phase
        if phase in (PHASE_TRAINING, PHASE_PUBLISHING) or self._check_due():
            return True
        if phase == PHASE_NEW:
            return bool(self._state.get("start_requested"))
        return phase == PHASE_QUERYING and self._round_end_reason() is not None

    def process_events(self) -> int:
        """Apply every stored event not yet done, oldest first; returns how many.

        An event that fails is logged and marked done anyway, so one malformed payload cannot block the queue;
        its effect (if any) can be recovered with ``resync``.
        """
        events = self.store.pending_events(self.key)
        for event_id, _, action, payload in events:
            try:
                self._handle_event(action, payload)
            except Exception:
                log.exception("project %s: event %d (%s) failed; it is skipped (run `resync` to recover labels)",
                              self.key, event_id, action)
            self.store.mark_event_done(event_id)
        return len(events)

    def step(self) -> bool:
        """Do the next piece of work of the state machine; False when there is nothing to do until an event.

        Raises whatever Label Studio or the engine raise; the worker logs it and retries later from the same
        persisted phase.
        """
        phase = self.phase
        if phase == PHASE_TRAINING:
            self._train_step()
            return True
        if phase == PHASE_PUBLISHING:
            self._publish_step()
            return True
        if self._check_due():
            self._check_project()
            return True
        if phase == PHASE_NEW:
            return self._start() if self._state.get("start_requested") else False
        if phase == PHASE_QUERYING:
            reason = self._round_end_reason()
            if reason is not None:
                self._end_round(reason)
                return True
        return False

    def resync(self) -> tuple[int, int]:
        """Queue every annotation Label Studio has as an update, and a deletion for stored ones it no longer has.

        For webhooks that were lost: the worker applies the queued events like live ones (idempotent per
        annotation id). Returns ``(annotations queued, deletions queued)``.
        """
        seen: set[int] = set()
        queued = 0
        for task in self.client.iter_tasks(self.project_id, all_fields=True):
            brief = {"id": task["id"], "data": task.get("data") or {}}
            for annotation in task.get("annotations") or []:
                annotation = dict(annotation, task=task["id"])
                seen.add(int(annotation["id"]))
                self.store.add_event(self.key, "ANNOTATION_UPDATED", {"annotation": annotation, "task": brief})
                queued += 1
        gone = sorted(self.store.annotation_ids(self.key) - seen)
        if gone:
            self.store.add_event(self.key, "ANNOTATIONS_DELETED", {"annotations": [{"id": i} for i in gone]})
        log.info("project %s: resync queued %d annotations and %d deletions", self.key, queued, len(gone))
        return queued, len(gone)

    # ============================================================ events

    def _handle_event(self, action: str, payload: dict[str, Any]) -> None:
        if action in ANNOTATION_ACTIONS:
            annotations = _as_list(payload.get("annotation"))
            tasks = {int(t["id"]): t for t in _as_list(payload.get("task")) if isinstance(t, dict) and "id" in t}
            for annotation in annotations:
                task_id = _task_id(annotation.get("task"))
                self._store_annotation(annotation, tasks.get(task_id), created=action != "ANNOTATION_UPDATED")
        elif action == "ANNOTATIONS_DELETED":
            ids = [int(a["id"]) for a in payload.get("annotations") or []]
            removed = self.store.delete_annotations(self.key, ids)
            log.info("project %s: %d annotation(s) deleted in Label Studio, %d were stored", self.key, len(ids),
                     removed)
        elif action == "START_TRAINING":
            if self.phase == PHASE_NEW:
                self._update(start_requested=True)
            elif self.phase == PHASE_QUERYING:
                self._update(round_end_requested="START_TRAINING")
            elif self.phase == PHASE_DONE:  # late answers after the budget: redo the final training with them
                self._update(phase=PHASE_TRAINING, training={"round": self._state["round"], "final": True})
            else:
                log.info("project %s: START_TRAINING ignored while %s", self.key, self.phase)
        elif action == "TASKS_CREATED":
            if self.phase == PHASE_NEW:
                self._update(start_requested=True)
        elif action in ("PROJECT_UPDATED", SETUP_ACTION):
            schema = payload.get("label_config") or payload.get("schema")
            if schema:
                self._apply_label_config(schema)
            if action == SETUP_ACTION:
                # Connecting the model creates the project's webhook right after /setup: check it a little later.
                self._update(check_project_at=time.time() + CHECK_PROJECT_DELAY)
                if self.phase == PHASE_NEW:
                    self._update(start_requested=True)

    def _store_annotation(self, annotation: dict[str, Any], task: dict[str, Any] | None, created: bool) -> None:
        """Store an annotation's clicks on the image they lie on.

        Query tasks: the clicks belong to their source image and round. Source tasks: keypoints of the query
        control count as clicks too (brush strokes are ignored: the backend learns from points). A skipped
        (cancelled) annotation stores no point but counts as an answer.
        """
        annotation_id = int(annotation["id"])
        task_id = _task_id(annotation.get("task"))
        if task_id is None:
            raise ValueError(f"annotation {annotation_id} names no task")
        known = self.store.query_task_round(self.key, task_id)
        data = (task or {}).get("data") or {}
        if known is not None:
            round_index, source = known
        elif data.get(QUERY_MARKER):
            round_index, source = int(data[ROUND_KEY]), int(data[SOURCE_KEY])
            self.store.add_query_tasks(self.key, round_index, [(task_id, source)])
        elif task is not None:
            round_index, source = SOURCE_ROUND, task_id
        else:
            raise ValueError(f"annotation {annotation_id}: task {task_id} is unknown and the event has no task data")
        cancelled = bool(annotation.get("was_cancelled"))
        points = [] if cancelled else annotation_points(annotation.get("result") or [], self.iface)
        stored = [(row, col, self._label_key(label)) for row, col, label in points]
        changed = self.store.put_annotation(self.key, annotation_id, task_id=task_id, source_task_id=source,
                                            round_index=round_index, annotator=_annotator(annotation),
                                            points=stored, cancelled=cancelled)
        if changed and created and (known is not None or data.get(QUERY_MARKER) or stored):
            self._update(new_annotations=int(self._state.get("new_annotations", 0)) + 1)
        log.debug("project %s: annotation %d on task %d -> %d point(s) on image %d (round %d)%s", self.key,
                  annotation_id, task_id, len(stored), source, round_index, " [skipped]" if cancelled else "")

    def _label_key(self, class_index: int) -> int:
        """The stored label of a class index: its position in ``label_names`` (IGNORE_INDEX stays)."""
        if class_index < 0:
            return IGNORE_INDEX
        return list(self._state["label_names"]).index(self.iface.classes[class_index])

    def _apply_label_config(self, schema: str) -> None:
        """Adopt a changed label config; a changed class list starts a new model generation."""
        try:
            iface = parse_label_config(schema, self.config)
        except LabelConfigError as err:
            log.error("project %s: the new label config is not usable, keeping the old one: %s", self.key, err)
            return
        with self._lock:
            self._queued_schema = None
            old = list(self._state["classes"])
            new = list(iface.classes)
            self._state["label_config"] = schema
            self._iface = iface
            if new == old:
                self._save_state()
                return
            names = list(self._state["label_names"])
            names += [c for c in new if c not in names]
            had_model = int(self._state.get("version", 0)) > 0
            self._state.update(classes=new, label_names=names, generation=int(self._state["generation"]) + 1,
                               fresh_model=True)
            if had_model and self.phase in (PHASE_QUERYING, PHASE_PUBLISHING):
                self._state["round_end_requested"] = "label config changed"
            elif had_model and self.phase == PHASE_DONE:
                self._state.update(phase=PHASE_TRAINING, training={"round": self._state["round"], "final": True})
            self._save_state()
        log.warning("project %s: classes changed (removed %s, added %s): generation %d starts; stored clicks are "
                    "remapped by class name and clicks of removed classes train nothing", self.key,
                    sorted(set(old) - set(new)), sorted(set(new) - set(old)), self._state["generation"])

    # ============================================================ the round state machine

    def _start(self) -> bool:
        """Publish round 0 (random pixels) once the project has source tasks."""
        sources = self._list_sources()
        if not sources:
            log.info("project %s: no source tasks yet; round 0 starts when images are imported", self.key)
            self._update(start_requested=False)
            return False
        log.info("project %s: %d source images; publishing round 0", self.key, len(sources))
        self._update(phase=PHASE_PUBLISHING, round=0, start_requested=False,
                     publish=_publish_plan(0, int(self._state.get("version", 0)), final=False))
        return True

    def _round_end_reason(self) -> str | None:
        """Why the current round ends now, or None while it is still open."""
        if self._state.get("round_end_requested"):
            return str(self._state["round_end_requested"])
        round_index = int(self._state.get("round", 0))
        tasks = self.store.query_tasks(self.key, round_index)
        if tasks and set(tasks) <= self.store.answered_tasks(self.key, round_index):
            return f"every query task of round {round_index} is answered"
        every = self.config.train_after_annotations
        if every and int(self._state.get("new_annotations", 0)) >= every:
            return f"{every} new annotations"
        return None

    def _end_round(self, reason: str) -> None:
        round_index = int(self._state["round"])
        final = round_index >= self.config.rounds
        log.info("project %s: round %d ends (%s); %s", self.key, round_index, reason,
                 "final training" if final else "training")
        self._update(phase=PHASE_TRAINING, training={"round": round_index, "final": final},
                     round_end_requested=False, new_annotations=0)

    def _train_step(self) -> None:
        """Train on every stored click, save the weights, then bump the version (in that order)."""
        plan = self._state["training"]
        version = int(self._state.get("version", 0))
        checkpoint = self.model.read_checkpoint()
        if checkpoint is not None and checkpoint["version"] == version + 1 \
                and checkpoint["generation"] == self._state["generation"]:
            log.info("project %s: weights of %s were saved before a restart; using them", self.key,
                     version_name(version + 1))
            with self._lock:
                self._state["version"] = version + 1
                self._state["fresh_model"] = False
                self._save_state()
        else:
            learner, record = self._train(final=bool(plan["final"]))
            if learner is not None:
                self.model.save(learner, version + 1, int(self._state["generation"]),
                                classes=list(self._state["classes"]), round=plan["round"], final=bool(plan["final"]))
                with self._lock:  # the new version exists only now that its weights are on disk
                    self._state["version"] = version + 1
                    self._state["fresh_model"] = False
                    self._state.setdefault("history", []).append(dict(record, version=version_name(version + 1)))
                    self._save_state()
                log.info("project %s: %s saved (round %d%s, %d points on %d images, %.1f s)", self.key,
                         version_name(version + 1), plan["round"], ", final" if plan["final"] else "",
                         record["points"], record["images"], record["seconds"])
        version = int(self._state["version"])
        if plan["final"]:
            self._update(phase=PHASE_PUBLISHING, publish=_publish_plan(plan["round"], version, final=True))
        else:
            self._update(phase=PHASE_PUBLISHING, round=plan["round"] + 1,
                         publish=_publish_plan(plan["round"] + 1, version, final=False))

    def _train(self, final: bool) -> tuple[ActiveLearner | None, dict[str, Any]]:
        """A learner trained on every stored click (None when no click has a class yet)."""
        sources = self._list_sources()
        labelled = self._points_by_source()
        ids = sorted(sources)
        points = [labelled.get(tid, _empty_points()) for tid in ids]
        trainable = sum(int((p[:, 2] >= 0).sum()) for p in points)
        if not trainable:
            log.warning("project %s: no stored click has a class yet (all skipped or 'can't tell'); the model "
                        "stays as it is", self.key)
            return None, {}
        images, sizes = self._pool_batch(ids, sources)
        learner = self._new_learner(fine_tune=not self._state.get("fresh_model"))
        started = time.perf_counter()
        result = learner.train(images, points, sizes, progress=False)
        semi = False
        if final and self.config.semi_epochs > 0:
            semi = self.config.semi
            log.info("project %s: budget spent; final %s epochs", self.key, "OVAAL+ semi-supervised" if semi else "")
            result = learner.train(images, points, sizes, semi=semi, progress=False, final=True)
        record = {"round": int(self._state["training"]["round"]), "generation": int(self._state["generation"]),
                  "final": final, "semi": semi, "points": trainable,
                  "images": sum(1 for p in points if (p[:, 2] >= 0).any()), "loss": result.last_loss,
                  "seconds": round(time.perf_counter() - started, 2), "finished_at": time.time()}
        return learner, record

    def _publish_step(self) -> None:
        """Import the round's query tasks, push dense masks, then switch the project to the version."""
        plan = self._state["publish"]
        if plan["queries"] in ("todo", "started"):
            created = self._publish_queries(plan)
            plan = dict(plan, queries="done" if created else "none")
            self._update(publish=plan)
        learner = self.serving_learner()
        if not plan["masks_done"]:
            if learner is not None and self.iface.mask_from_name is not None:
                self._push_masks(learner, plan)
            plan = dict(self._state["publish"], masks_done=True)
            self._update(publish=plan)
        self._sync_project(check=False)
        if plan["final"]:
            self._update(phase=PHASE_DONE, publish=None, check_project_at=time.time() + CHECK_PROJECT_DELAY)
            log.info("project %s: done: final masks of %s are in Label Studio", self.key, self.model_version)
        elif plan["queries"] == "none":
            log.info("project %s: round %d has nothing left to ask; final training", self.key, plan["round"])
            self._update(phase=PHASE_TRAINING, publish=None, training={"round": plan["round"], "final": True})
        else:
            self._update(phase=PHASE_QUERYING, publish=None, check_project_at=time.time() + CHECK_PROJECT_DELAY)
            log.info("project %s: round %d is open (%s)", self.key, plan["round"], self.model_version)

    def _publish_queries(self, plan: dict[str, Any]) -> int:
        """Select the round's pixels on every source image and import one query task per image."""
        round_index, version = int(plan["round"]), int(plan["version"])
        sources = self._list_sources()
        existing = self._adopt_query_tasks(round_index, version) if plan["queries"] == "started" else {}
        todo = [tid for tid in sorted(sources) if tid not in existing]
        created = len(existing)
        if todo:
            learner = self.serving_learner()
            use_random = learner is None or round_index == 0
            n = self.config.init_pixels if round_index == 0 else self.config.pixels_per_round
            images, sizes = self._pool_batch(todo, sources)
            labelled = self._points_by_source()
            points = [labelled.get(tid, _empty_points()) for tid in todo]
            selector = learner if learner is not None else self._new_learner(fine_tune=False)
            with self.model.forward_lock:
                queries = selector.query(images, points, sizes, n, random=use_random)
            tasks, task_sources = [], []
            for tid, (height, width), q in zip(todo, sizes, queries, strict=True):
                if len(q) == 0:
                    continue
                tasks.append(self._query_task(tid, sources[tid], q, width, height, round_index, version))
                task_sources.append(tid)
            if tasks:
                self._update(publish=dict(plan, queries="started"))
                ids = self.client.import_tasks(self.project_id, tasks)
                entries = {tid: {"source": src, "result": t["predictions"][0]["result"],
                                 "score": t["predictions"][0]["score"], "version": version}
                           for tid, src, t in zip(ids, task_sources, tasks, strict=True)}
                self._record_queries(round_index, entries)
                self._mark_version_in_label_studio(version)
                created += len(ids)
                log.info("project %s: round %d: imported %d query tasks (%d points each, %s)", self.key,
                         round_index, len(ids), n, "random" if use_random else self.config.selection)
        return created

    def _query_task(self, source_id: int, data: dict[str, Any], q: Queries, width: int, height: int,
                    round_index: int, version: int) -> dict[str, Any]:
        """One query task: the source's data plus our markers, with the points pre-labelled by the model's guess.

        Without a model the guess is -1, which ``keypoint_results`` turns into the ignore label: a submit without
        looking stores "can't tell", never a wrong class.
        """
        points = zip(q.rows.tolist(), q.cols.tolist(), q.guess.tolist(), q.query_class.tolist(),
                     q.uncertainty.tolist())
        result = keypoint_results(points, width, height, self.iface, self.config.point_size)
        return {"data": {**data, QUERY_MARKER: True, SOURCE_KEY: int(source_id), ROUND_KEY: int(round_index)},
                "predictions": [{"result": result, "score": q.certainty, "model_version": version_name(version)}]}

    def _adopt_query_tasks(self, round_index: int, version: int) -> dict[int, int]:
        """After an import that may have half-happened (crash, lost answer): record the query tasks that exist.

        Returns ``source task id -> query task id`` of the round's query tasks found in Label Studio.
        """
        found: dict[int, int] = {}
        entries: dict[int, dict[str, Any]] = {}
        for task in self.client.iter_tasks(self.project_id):
            data = task.get("data") or {}
            if data.get(QUERY_MARKER) and int(data.get(ROUND_KEY, -1)) == round_index:
                predictions = [p for p in self.client.task_predictions(int(task["id"]))
                               if p.get("model_version") == version_name(version)]
                if predictions:
                    found[int(data[SOURCE_KEY])] = int(task["id"])
                    entries[int(task["id"])] = {"source": int(data[SOURCE_KEY]), "result": predictions[0]["result"],
                                                "score": predictions[0].get("score") or 0.0, "version": version}
        if entries:
            log.info("project %s: adopting %d query tasks of round %d found in Label Studio", self.key,
                     len(entries), round_index)
            self._record_queries(round_index, entries)
            self._mark_version_in_label_studio(version)
        return found

    def _record_queries(self, round_index: int, entries: dict[int, dict[str, Any]]) -> None:
        """Keep imported query predictions (for /predict) and register the tasks in the store."""
        path = self.root / "queries" / f"round_{round_index}.json"
        stored = json.loads(path.read_text()) if path.is_file() else {}
        stored.update({str(k): v for k, v in entries.items()})
        _write_json(path, stored)
        self.store.add_query_tasks(self.key, round_index, [(tid, e["source"]) for tid, e in entries.items()])

    def _stored_query(self, task_id: int) -> dict[str, Any]:
        known = self.store.query_task_round(self.key, task_id)
        if known is None:
            log.warning("project %s: /predict for query task %d, which this backend did not import", self.key, task_id)
            return {}
        path = self.root / "queries" / f"round_{known[0]}.json"
        return json.loads(path.read_text()).get(str(task_id), {}) if path.is_file() else {}

    def _push_masks(self, learner: ActiveLearner, plan: dict[str, Any]) -> None:
        """Dense masks of the new version on every source task, in batches; resumable after a restart."""
        sources = self._list_sources()
        done = set(plan.get("masks", []))
        todo = [tid for tid in sorted(sources) if tid not in done]
        name = version_name(int(plan["version"]))
        for start in range(0, len(todo), PUSH_BATCH):
            chunk = todo[start:start + PUSH_BATCH]
            masks = self._mask_predictions(learner, chunk, [sources[tid] for tid in chunk])
            predictions = [dict(masks[tid], task=tid, model_version=name) for tid in chunk if tid in masks]
            self.client.import_predictions(self.project_id, predictions)
            self._mark_version_in_label_studio(int(plan["version"]))
            done.update(chunk)
            self._update(publish=dict(self._state["publish"], masks=sorted(done)))
        log.info("project %s: dense masks of %s pushed to %d source tasks", self.key, name, len(todo))

    def _check_due(self) -> bool:
        due = self._state.get("check_project_at")
        return due is not None and time.time() >= due

    def _check_project(self) -> None:
        """Read the Label Studio project back once, some seconds after /setup or a publish, and repair it.

        Connecting a model sets the project's version to the model's title after /setup (which may land after our
        update), and the webhook Label Studio creates for the model carries no basic-auth header.
        """
        self._ensure_webhook_auth()
        if self.phase != PHASE_NEW:
            self._sync_project(check=True)
        self._update(check_project_at=None)

    def _ensure_webhook_auth(self) -> None:
        """Give the project's webhook to this backend our basic-auth header (Label Studio creates it without).

        Only webhooks of ML backends connected with our BASIC_AUTH_USER are touched, so no other backend ever
        receives our password.
        """
        if not self.config.basic_auth_user:
            return
        token = base64.b64encode(f"{self.config.basic_auth_user}:{self.config.basic_auth_pass}".encode()).decode()
        header = f"Basic {token}"
        ours = {str(ml.get("url", "")).rstrip("/") + "/webhook" for ml in self.client.list_ml_backends(self.project_id)
                if ml.get("auth_method") == "BASIC_AUTH" and ml.get("basic_auth_user") == self.config.basic_auth_user}
        if not ours:
            log.warning("project %s: no ML backend connected with basic-auth user %r; webhooks to this backend "
                        "will be refused (401) unless they carry the header", self.key, self.config.basic_auth_user)
            return
        for hook in self.client.list_webhooks(self.project_id):
            headers = dict(hook.get("headers") or {})
            if hook.get("url") in ours and headers.get("Authorization") != header:
                self.client.update_webhook(int(hook["id"]), headers={**headers, "Authorization": header})
                log.info("project %s: added our basic-auth header to webhook %s (%s)", self.key, hook["id"],
                         hook["url"])

    def _sync_project(self, check: bool) -> None:
        """Uncertainty sampling and the current version on the Label Studio project.

        The version is set only once a prediction of it exists (Label Studio refuses it before). With ``check``
        the project is read first and only updated where it differs.
        """
        version = int(self._state.get("version", 0))
        fields: dict[str, Any] = {"sampling": "Uncertainty sampling"}
        if version in self._state.get("versions_in_label_studio", []):
            fields["model_version"] = version_name(version)
        if check:
            current = self.client.get_project(self.project_id)
            fields = {k: v for k, v in fields.items() if current.get(k) != v}
            if not fields:
                return
            log.info("project %s: Label Studio's project had %s; setting it back",
                     self.key, {k: current.get(k) for k in fields})
        self.client.update_project(self.project_id, **fields)

    def _mark_version_in_label_studio(self, version: int) -> None:
        with self._lock:
            versions = set(self._state.get("versions_in_label_studio", []))
            if version not in versions:
                self._state["versions_in_label_studio"] = sorted(versions | {version})
                self._save_state()

    # ============================================================ models, images, points

    def _new_learner(self, fine_tune: bool) -> ActiveLearner:
        """A learner for the current class list; with ``fine_tune`` it starts from the saved weights."""
        return self.model.new_learner(len(self._state["classes"]), int(self._state["generation"]), fine_tune)

    def serving_learner(self) -> ActiveLearner | None:
        """The model of the current version (loaded from disk on first use), or None before any training."""
        with self._lock:
            version, generation = int(self._state.get("version", 0)), int(self._state["generation"])
            num_classes = len(self._state["classes"])
        return self.model.serving(version, generation, num_classes)

    def _mask_predictions(self, learner: ActiveLearner, task_ids: list[int],
                          datas: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
        """``task id -> {"result": brush regions, "score": MASK_SCORE}``; tasks whose image fails are left out."""
        out: dict[int, dict[str, Any]] = {}
        for task_id, class_map, confidence in self.predict_class_maps(learner, task_ids, datas):
            out[task_id] = {"result": brush_results(class_map, self.iface, scores=confidence), "score": MASK_SCORE}
        return out

    def predict_class_maps(self, learner: ActiveLearner, task_ids: list[int], datas: list[dict[str, Any]]
                           ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """``(task id, class map, confidence)`` at each image's original size (see ProjectModel.class_maps)."""
        return self.model.class_maps(learner, task_ids, [self._image_url(data) for data in datas])

    def pool_image(self, task_id: int, data: dict[str, Any]) -> PoolImage:
        """A source image resized for the model (kept in memory; the file is cached on disk)."""
        return self.model.image(task_id, self._image_url(data))

    def _pool_batch(self, ids: list[int], sources: dict[int, dict[str, Any]]
                    ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """(N, 3, h, w) uint8 images and their original sizes, in ``ids`` order."""
        return self.model.batch(ids, [self._image_url(sources[tid]) for tid in ids])

    def _image_url(self, data: dict[str, Any]) -> str:
        url = data.get(self.iface.image_key)
        if not isinstance(url, str) or not url:
            raise ValueError(f"task data has no {self.iface.image_key!r} image URL")
        return url

    def _list_sources(self) -> dict[int, dict[str, Any]]:
        """Source tasks (the pool): every task that is not one of our query tasks and has an image.

        The list is also written to ``sources.json`` so ``export`` works without Label Studio.
        """
        key = self.iface.image_key
        sources = {int(t["id"]): t.get("data") or {} for t in self.client.iter_tasks(self.project_id)
                   if not (t.get("data") or {}).get(QUERY_MARKER) and (t.get("data") or {}).get(key)}
        _write_json(self.root / "sources.json", {str(k): v for k, v in sorted(sources.items())})
        return sources

    def _points_by_source(self) -> dict[int, np.ndarray]:
        """Stored clicks per source image with labels as CURRENT class indices (removed classes -> ignore)."""
        return remap_points(self.store.labelled_points(self.key), self._state["label_names"],
                            self._state["classes"])

    # ============================================================ state

    def _update(self, **changes: Any) -> None:
        with self._lock:
            self._state.update(changes)
            self._save_state()

    def _save_state(self) -> None:
        self.store.set_state(self.key, self._state)


class ProjectMismatchError(RuntimeError):
    """MODEL_DIR/<id> belongs to a different Label Studio project with the same id."""


def remap_points(points: dict[int, np.ndarray], label_names: list[str], classes: list[str]) -> dict[int, np.ndarray]:
    """Stored labels (indices into ``label_names``) as indices into ``classes``; a name not there -> IGNORE_INDEX."""
    lookup = np.array([classes.index(n) if n in classes else IGNORE_INDEX for n in label_names] or [IGNORE_INDEX],
                      dtype=np.int64)
    out = {}
    for source, table in points.items():
        table = table.copy()
        valid = table[:, 2] >= 0
        table[valid, 2] = lookup[table[valid, 2]]
        out[source] = table
    return out


def _initial_state(uid: str, schema: str, iface: LabelInterface) -> dict[str, Any]:
    return {"uid": uid, "label_config": schema, "classes": list(iface.classes), "label_names": list(iface.classes),
            "generation": 0, "phase": PHASE_NEW, "round": 0, "version": 0, "start_requested": False,
            "round_end_requested": False, "new_annotations": 0, "fresh_model": False, "history": [],
            "versions_in_label_studio": [], "check_project_at": None, "publish": None, "training": None}


def _publish_plan(round_index: int, version: int, final: bool) -> dict[str, Any]:
    return {"round": round_index, "version": version, "final": final, "queries": "skip" if final else "todo",
            "masks": [], "masks_done": False}


def _empty_points() -> np.ndarray:
    return np.zeros((0, 3), dtype=np.int64)


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


def _write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (a reader sees the old file or the new one)."""
    write_atomically(path, lambda handle: handle.write(json.dumps(obj).encode()))
