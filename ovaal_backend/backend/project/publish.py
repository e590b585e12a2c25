"""A round job's result -> rows -> Label Studio: the next round's query tasks and the new version's dense masks.

Each row is updated on its own as it reaches Label Studio, so publishing resumes after a crash at the first row not
done, and costs the same per task at any project size. A batch whose answer was lost is reconciled by reading Label
Studio back: query tasks are adopted by their own markers (never imported twice), masks by their model version.

Source tasks can be deleted in Label Studio at any time, also while their round trains. Label Studio refuses a whole
``import/predictions`` batch (400) when one of its tasks is gone, so the sources are listed again before publishing,
and a refused batch is split in halves until the tasks that are gone are found: their rows end ``gone``, the rest
is sent, and the project goes on.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from typing import Any

from ...engine.job import RoundResult, read_mask
from ...engine.learner import Queries
from ..client import LabelStudioError
from ..convert import brush_results, keypoint_results
from ..store import MaskStatus, QueryStatus
from .context import ProjectContext
from .state import QUERY_MARKER, ROUND_KEY, SOURCE_KEY, version_name
from .upkeep import Upkeep

log = logging.getLogger(__name__)

IMPORT_BATCH = 100
"""Query tasks per import request."""
PUSH_BATCH = 16
"""Source tasks per ``import_predictions`` request when pushing dense masks (a CamVid mask is ~100 KB of RLE)."""
MASK_SCORE = 1.0
"""Task score of a dense-mask prediction. Query scores (certainty) lie in [0, 1), so with uncertainty sampling Label
Studio serves every open query task before any source task; each mask region carries its own mean confidence."""


class Publisher:
    """Stores round results as rows and sends them to Label Studio."""

    def __init__(self, ctx: ProjectContext, upkeep: Upkeep) -> None:
        self.ctx = ctx
        self.upkeep = upkeep
        self._late_until = 0.0  # monotonic time until which a lost import may still land in Label Studio

    def record(self, result: RoundResult) -> None:
        """Keep a round job's result as rows: the next round's query tasks, the new version's masks, its training."""
        parsed_config = self.ctx.parsed_config
        if result.next_round is not None:
            rows = [(src, q.certainty, self.query_result(q, result.sizes[src])) for src, q in result.queries.items()]
            self.ctx.store.rounds.plan_queries(result.next_round, result.version, rows)
        if result.masks and parsed_config.mask_from_name is not None:
            self.ctx.store.masks.plan(result.version, result.masks.items())
        if result.training is not None:
            self.ctx.store.trainings.add(result.version, result.training)

    def query_result(self, q: Queries, size: tuple[int, int]) -> list[dict[str, Any]]:
        """The keypoints of one query task, pre-labelled with the model's guess.

        Without a model the guess is -1, which ``keypoint_results`` turns into the ignore label: a submit without
        looking stores "can't tell", never a wrong class.
        """
        points = zip(q.rows.tolist(), q.cols.tolist(), q.guess.tolist(), q.query_class.tolist(),
                     q.uncertainty.tolist())
        return keypoint_results(points, size[1], size[0], self.ctx.parsed_config, self.ctx.config.point_size)

    # --- query tasks -----------------------------------------------------------------------------------------------

    def publish_queries(self, round_index: int, version: int) -> int:
        """Import the round's planned query tasks in batches; returns how many of the round's tasks exist now."""
        self._adopt(round_index, version)
        sources = self.ctx.list_sources()  # listed again: a source deleted while the round trained gets no query
        while batch := self.ctx.store.rounds.queries(round_index, QueryStatus.PLANNED, IMPORT_BATCH):
            gone = [src for src, _, _ in batch if src not in sources]
            self.ctx.store.rounds.set_query_status(round_index, gone, QueryStatus.GONE)
            batch = [row for row in batch if row[0] in sources]
            if not batch:
                continue
            tasks = [self._task(src, sources[src], score, result, round_index, version)
                     for src, score, result in batch]
            self.ctx.store.rounds.set_query_status(round_index, [src for src, _, _ in batch],
                                             QueryStatus.IMPORTING)
            try:
                ids = self.ctx.client.import_tasks(self.ctx.project_id, tasks)
            except Exception:
                # Label Studio may still be working on it (slower than our timeout): give it as long again
                self._late_until = time.monotonic() + 2 * self.ctx.config.label_studio_timeout
                raise
            self.ctx.store.rounds.set_imported(round_index, zip([s for s, _, _ in batch], ids, strict=True))
            self.upkeep.mark_version(version)
            log.info("project %s: round %d: imported %d query tasks", self.ctx.key, round_index, len(ids))
        return self.ctx.store.rounds.count_queries(round_index, QueryStatus.IMPORTED)

    def _task(self, source_id: int, data: dict[str, Any], score: float, result: list[dict[str, Any]],
              round_index: int, version: int) -> dict[str, Any]:
        """One query task: the source's data plus our markers, with its keypoint prediction."""
        return {"data": {**data, QUERY_MARKER: True, SOURCE_KEY: int(source_id), ROUND_KEY: int(round_index)},
                "predictions": [{"result": result, "score": score, "model_version": version_name(version)}]}

    def _adopt(self, round_index: int, version: int) -> None:
        """Rows of a batch whose import answer was lost: the tasks Label Studio holds (found by their markers) are
        recorded, given their prediction if Label Studio dropped it, and the rest go back to ``planned``.

        Within twice LABEL_STUDIO_TIMEOUT of the lost answer the rest wait instead (LabelStudioError, retried later):
        a Label Studio slower than our timeout creates the tasks after we gave up, and importing them again then
        would make duplicates. After a restart the wait is not known, and the rows go back at once.
        """
        pending = {src: (score, result) for src, score, result in
                   self.ctx.store.rounds.queries(round_index, QueryStatus.IMPORTING)}
        if not pending:
            return
        found: dict[int, int] = {}
        for task in self.ctx.client.iter_tasks(self.ctx.project_id):
            data = task.get("data") or {}
            source = data.get(SOURCE_KEY)
            if data.get(QUERY_MARKER) and data.get(ROUND_KEY) == round_index and source in pending:
                found.setdefault(int(source), int(task["id"]))
        name = version_name(version)
        for source, task_id in found.items():
            if not any(p.get("model_version") == name for p in self.ctx.client.task_predictions(task_id)):
                score, result = pending[source]
                self.ctx.client.import_predictions(self.ctx.project_id, [
                    {"task": task_id, "result": result, "score": score, "model_version": name}])
        self.ctx.store.rounds.set_imported(round_index, found.items())
        missing = set(pending) - set(found)
        if missing and time.monotonic() < self._late_until:
            raise LabelStudioError(f"round {round_index}: {len(missing)} query tasks of an import whose answer was "
                                   f"lost are not in Label Studio yet; waiting up to "
                                   f"{self._late_until - time.monotonic():.0f} s before importing them again")
        self.ctx.store.rounds.set_query_status(round_index, missing, QueryStatus.PLANNED)
        log.info("project %s: round %d: adopted %d query tasks found in Label Studio, %d to import again",
                 self.ctx.key, round_index, len(found), len(pending) - len(found))

    def retire_round(self, round_index: int) -> int:
        """Delete the round's unanswered query tasks from Label Studio once it has ended, so the label stream stops
        serving points chosen by an older model (the next round asks every image again). Returns how many."""
        stale = self.ctx.store.rounds.unanswered_query_tasks(round_index)
        for task_id in stale:
            self.ctx.client.delete_task(task_id)
            self.ctx.store.rounds.forget_query_tasks([task_id])
        if stale:
            log.info("project %s: round %d ended; removed its %d unanswered query tasks", self.ctx.key, round_index,
                     len(stale))
        return len(stale)

    def query_prediction(self, task_id: int) -> tuple[list[dict[str, Any]], float] | None:
        """The keypoints and score a query task was imported with (None for a task the backend did not import)."""
        return self.ctx.store.rounds.query_prediction(task_id)

    # --- dense masks -------------------------------------------------------------------------------------------

    def stored_masks(self, task_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
        """Brush results of the masks the round job wrote for the current version, by source task id, for /predict.

        Reading and encoding a stored mask costs a fraction of a forward pass at the original size (docs/benchmarks.md,
        "/predict of a source task"). None while the classes changed since the current version was trained (its
        class indices mean the old names; the serving model is gone too); a file that is gone or unreadable is left
        out, and the caller computes that image with the model.
        """
        state = self.ctx.state
        if state.version == 0 or state.fresh_model:
            return {}
        out = {}
        for task_id, path in self.ctx.store.masks.paths(state.version, task_ids).items():
            if not os.path.isfile(path):
                continue
            try:
                class_map, scores = read_mask(path)
                out[task_id] = brush_results(class_map, self.ctx.parsed_config, scores=scores)
            except Exception as err:  # a damaged file must not fail the call: the model computes this image
                log.warning("project %s: stored mask %s unreadable (%s); computing it", self.ctx.key, path, err)
        return out

    def drop_mask_files(self, keep: int) -> None:
        """Delete the mask files of every version but ``keep``, the one just published: its files stay (one per
        source image) so /predict serves them without the model, until the next version is published."""
        folder = self.ctx.root / "masks"
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            if path.name != version_name(keep):
                shutil.rmtree(path, ignore_errors=True)

    def push_masks(self, version: int) -> int:
        """Push the version's planned masks in batches; returns how many were pushed by this call.

        Masks of source tasks deleted since the job listed them are forgotten (``gone``), first by listing the
        sources again, then by splitting any batch Label Studio refuses (a task deleted during the push).
        """
        sources = self.ctx.list_sources()
        self.ctx.store.sources.replace(sources)  # the pool of the pushed masks, as export reads it
        self._forget_gone_masks(version, set(sources))
        self._reconcile_masks(version)
        name, pushed = version_name(version), 0
        while batch := self.ctx.store.masks.by_status(version, MaskStatus.TODO, PUSH_BATCH):
            predictions = []
            for source, path in batch:
                class_map, confidence = read_mask(path)
                result = brush_results(class_map, self.ctx.parsed_config, scores=confidence)
                predictions.append({"task": source, "result": result, "score": MASK_SCORE, "model_version": name})
            sources = [source for source, _ in batch]
            self.ctx.store.masks.set_status(version, sources, MaskStatus.SENDING)
            refused = self.send_predictions(predictions)
            gone = [task for task, exists in refused.items() if not exists]
            self.ctx.store.masks.set_status(version, gone, MaskStatus.GONE)
            self.ctx.store.masks.set_status(version, set(refused) - set(gone), MaskStatus.REFUSED)
            done = [source for source in sources if source not in refused]
            if done:
                self.upkeep.mark_version(version)
            self.ctx.store.masks.set_status(version, done, MaskStatus.PUSHED)
            pushed += len(done)
        if pushed:
            log.info("project %s: dense masks of %s pushed to %d source tasks", self.ctx.key, name, pushed)
        return pushed

    def send_predictions(self, predictions: list[dict[str, Any]]) -> dict[int, bool]:
        """Add predictions to their tasks; returns the tasks Label Studio refused them for, each with whether the
        task still exists (False: deleted).

        Label Studio answers 400 for the whole batch when one task is gone, so a refused batch is split in halves
        until each refused prediction stands alone: ``k`` refused tasks in a batch of ``n`` cost about
        ``2 k log2(n)`` calls, and every other prediction is created once.

        Raises:
            LabelStudioError: Anything but a 400 (Label Studio unreachable, a dropped prediction): retried later.
        """
        try:
            self.ctx.client.import_predictions(self.ctx.project_id, predictions)
            return {}
        except LabelStudioError as err:
            if err.status != 400:
                raise
            if len(predictions) > 1:
                half = len(predictions) // 2
                return {**self.send_predictions(predictions[:half]), **self.send_predictions(predictions[half:])}
            task_id = int(predictions[0]["task"])
            exists = self.ctx.client.get_task(task_id) is not None
            if exists:
                log.error("project %s: Label Studio refuses the prediction for task %d, which exists; it is left "
                          "without this version's mask: %s", self.ctx.key, task_id, err)
            else:
                log.warning("project %s: task %d was deleted in Label Studio; its mask is dropped", self.ctx.key,
                            task_id)
            return {task_id: exists}

    def _forget_gone_masks(self, version: int, sources: set[int]) -> None:
        """Mark the version's unsent masks of tasks that are no longer sources ``gone``."""
        for status in (MaskStatus.TODO, MaskStatus.SENDING):
            gone = [s for s, _ in self.ctx.store.masks.by_status(version, status) if s not in sources]
            self.ctx.store.masks.set_status(version, gone, MaskStatus.GONE)
            if gone:
                log.warning("project %s: %d source task(s) were deleted in Label Studio since %s trained; their "
                            "masks are dropped", self.ctx.key, len(gone), version_name(version))

    def _reconcile_masks(self, version: int) -> None:
        """Masks of a batch whose answer was lost: pushed if Label Studio has a prediction of the version."""
        name = version_name(version)
        sending = self.ctx.store.masks.by_status(version, MaskStatus.SENDING)
        arrived = [s for s, _ in sending
                   if any(p.get("model_version") == name for p in self.ctx.client.task_predictions(s))]
        self.ctx.store.masks.set_status(version, arrived, MaskStatus.PUSHED)
        self.ctx.store.masks.set_status(version, {s for s, _ in sending} - set(arrived), MaskStatus.TODO)
