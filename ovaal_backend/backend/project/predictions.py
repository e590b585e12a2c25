"""/predict's answers for one project: the imported keypoints of a query task, a dense mask for a source task.

Kept apart from the driver because request threads call it while the project's worker thread runs the driver's
slow steps; it reads what the round jobs and the publisher stored and runs the serving model only for images the
current version has no mask file for.
"""

from __future__ import annotations

from typing import Any

from ..convert import brush_results
from .context import ProjectContext
from .publish import MASK_SCORE, Publisher
from .state import QUERY_MARKER


class Predictions:
    """One project's /predict: stored answers first, the serving model for the rest."""

    def __init__(self, ctx: ProjectContext, publisher: Publisher) -> None:
        self.ctx, self.publisher = ctx, publisher

    def predict(self, tasks: list[dict[str, Any]], model_version: str) -> list[dict[str, Any]]:
        """One prediction per task, in order: keypoints for query tasks, a dense mask for source tasks.

        A source task's mask is the one the round job wrote for the current version where that file exists (read
        and encoded, no forward pass: ``Publisher.stored_masks``); only the other images go through the serving
        model. A source task gets an empty result with score 0 before any model exists (or when its image cannot be
        read); a query task gets the keypoints it was imported with.
        """
        results: list[dict[str, Any] | None] = [None] * len(tasks)
        sources: dict[int, tuple[int, dict[str, Any]]] = {}
        for i, task in enumerate(tasks):
            task_id, data = int(task["id"]), task.get("data") or {}
            stored = self.publisher.query_prediction(task_id)
            if stored is not None:
                results[i] = {"result": stored[0], "score": stored[1]}
            elif not data.get(QUERY_MARKER):
                sources[i] = (task_id, data)
        if sources and self.ctx.parsed_config.mask_from_name is not None:
            masks = self.source_masks(list(sources.values()))
            for i, (task_id, _) in sources.items():
                if task_id in masks:
                    results[i] = {"result": masks[task_id], "score": MASK_SCORE}
        return [dict(r or {"result": [], "score": 0.0}, model_version=model_version) for r in results]

    def source_masks(self, sources: list[tuple[int, dict[str, Any]]]) -> dict[int, list[dict[str, Any]]]:
        """Brush results per task id: the current version's stored masks, computed where none is stored."""
        masks = self.publisher.stored_masks([task_id for task_id, _ in sources])
        missing = [(task_id, data) for task_id, data in sources if task_id not in masks]
        if not missing:
            return masks
        state = self.ctx.state
        learner = self.ctx.model.learner(state.version, state.generation, len(state.classes))
        if learner is None:  # no version trained yet
            return masks
        urls = [self.ctx.image_url(data) for _, data in missing]
        maps = self.ctx.model.class_maps(learner, [task_id for task_id, _ in missing], urls)
        masks.update({tid: brush_results(m, self.ctx.parsed_config, scores=c) for tid, m, c in maps})
        return masks
