"""One project's corrected masks: a submitted brush annotation on a source task (the mask the backend pushed,
accepted or corrected) is the truth for that image.

The event applier hands every source-task annotation here: its BrushLabels regions become a label map at the image's
size (stored with ``label_names`` keys, like clicks), measured against the mask of ours Label Studio held for the
task when it was corrected. Round jobs get the maps as dense labels (``TRAIN_ON_CORRECTIONS``), ``export`` writes
them instead of the prediction, ``/metrics`` shows the figures.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np

from ...engine.dense import DenseLabels, grid_labels, grid_shape
from ..corrections import (
    brush_label_map,
    correction_figure,
    label_dtype,
    remap_label_map,
    summarise,
    version_number,
)
from ..store import map_digest
from .state import ProjectState

if TYPE_CHECKING:
    from .context import ProjectContext

log = logging.getLogger(__name__)


class CorrectedMasks:
    """Stores, measures and hands out one project's corrected masks (``ctx.store.corrections`` holds them)."""

    def __init__(self, ctx: ProjectContext) -> None:
        self.ctx = ctx

    def store(self, annotation: dict[str, Any], task_id: int, cancelled: bool) -> None:
        """Keep a source task's annotation as the task's corrected mask when it has BrushLabels regions of the mask
        control, and forget the one it stored before when it has none any more (or was skipped). Called after the
        label store took the annotation, whose tombstones and ``updated_at`` tell a stale delivery.

        The figure needs the task's predictions from Label Studio (one call, skipped when the same map is already
        stored); a failing call raises, and the event is retried like any other.
        """
        ctx, key = self.ctx, self.ctx.key
        annotation_id = int(annotation["id"])
        updated_at = annotation.get("updated_at") if isinstance(annotation.get("updated_at"), str) else None
        if ctx.parsed_config.mask_from_name is None or not ctx.store.clicks.is_current(annotation_id, updated_at):
            return  # no mask control, or a deleted annotation / an older edit than the one stored
        state = ctx.state
        keys = {name: state.label_names.index(name) for name in ctx.parsed_config.classes}
        label_map = None if cancelled else brush_label_map(annotation.get("result") or [],
                                                           ctx.parsed_config.mask_from_name, keys,
                                                           label_dtype(len(state.label_names)))
        if label_map is None:
            if ctx.store.corrections.delete([annotation_id]):
                log.info("project %s: annotation %d on task %d holds no brush mask any more: its correction is "
                         "forgotten", key, annotation_id, task_id)
            return
        if not ctx.store.corrections.wants(annotation_id, map_digest(label_map), updated_at):
            return
        figure = self._measure(annotation, task_id, _current(label_map, state), state)
        if ctx.store.corrections.put(annotation_id, task_id, label_map, figure, updated_at):
            log.info("project %s: corrected mask of task %d stored (annotation %d, %dx%d)%s", key, task_id,
                     annotation_id, label_map.shape[1], label_map.shape[0],
                     "" if figure is None else f"; {figure['version']} had mIoU {_text(figure['miou'])} against it, "
                                               f"{100 * figure['kept']:.1f} % of its pixels kept")

    def forget(self, annotation_ids: Collection[int]) -> int:
        """Annotations deleted in Label Studio: their corrections go (an older one of the same task counts again)."""
        return self.ctx.store.corrections.delete(annotation_ids)

    def label_map(self, task_id: int) -> np.ndarray | None:
        """The task's newest corrected mask with CURRENT class indices (``none_value`` of its type where no class:
        255 below 255 classes), or None."""
        stored = self.ctx.store.corrections.newest(task_id)
        return None if stored is None else _current(stored, self.ctx.state)

    def overlay(self, task_ids: Collection[int], maps: dict[int, np.ndarray],
                clicks: dict[int, np.ndarray]) -> set[int]:
        """For ``export``: each corrected image of ``task_ids`` gets its corrected mask in ``maps`` instead of the
        model's prediction, and its clicks leave ``clicks`` (the correction is the truth, pixels it leaves without a
        class stay so). Returns the corrected task ids."""
        corrected = self.ctx.store.corrections.tasks() & set(task_ids)
        for task_id in corrected:
            label_map = self.label_map(task_id)
            if label_map is not None:
                maps[task_id] = label_map
                clicks.pop(task_id, None)
        if corrected:
            log.info("project %s: %d image(s) are exported as their corrected masks", self.ctx.key, len(corrected))
        return corrected

    def dense_labels(self, keys: Collection[int]) -> dict[int, DenseLabels]:
        """The round job's dense labels: each corrected image of ``keys`` sampled on its grid (``grid_shape``: the
        training size, at most CORRECTION_POINTS cells)."""
        state, config, wanted = self.ctx.state, self.ctx.config, set(keys)
        out = {}
        for task_id, stored in self.ctx.store.corrections.newest_maps():
            if task_id in wanted:
                current = _current(stored, state)
                shape = grid_shape(current.shape, config.image_height, config.image_width, config.correction_points)
                out[task_id] = DenseLabels(current.shape, grid_labels(current, *shape))
        return out

    def summary(self) -> dict[str, Any]:
        """The corrections' figures for ``/metrics`` (``corrections.summarise``)."""
        return summarise(self.ctx.store.corrections.figures(), self.ctx.state.classes)

    def _measure(self, annotation: dict[str, Any], task_id: int, corrected: np.ndarray,
                 state: ProjectState) -> dict[str, Any] | None:
        """The figure of the mask of ours the annotator started from against the correction, with its version;
        None when the task held no mask of ours (corrected before the first model) or it has another size."""
        predictions = self.ctx.client.task_predictions(task_id)
        pushed = _pushed_prediction(predictions, annotation, self.ctx.parsed_config.mask_from_name)
        if pushed is None:
            return None
        keys = {name: index for index, name in enumerate(state.classes)}
        pushed_map = brush_label_map(pushed["result"], self.ctx.parsed_config.mask_from_name, keys, corrected.dtype)
        if pushed_map is None or pushed_map.shape != corrected.shape:
            log.warning("project %s: task %d: the correction is %dx%d but %s's mask is %s: no figure", self.ctx.key,
                        task_id, corrected.shape[1], corrected.shape[0], pushed.get("model_version"),
                        "empty" if pushed_map is None else f"{pushed_map.shape[1]}x{pushed_map.shape[0]}")
            return None
        return {"version": str(pushed["model_version"]), **correction_figure(pushed_map, corrected, state.classes)}


def _pushed_prediction(predictions: list[dict[str, Any]], annotation: dict[str, Any],
                       mask_from_name: str) -> dict[str, Any] | None:
    """The mask of ours the annotation corrected: the prediction it was started from (Label Studio's
    ``parent_prediction``) when that is ours, else our newest one made before the annotation, else our newest."""
    ours = [p for p in predictions if version_number(str(p.get("model_version") or "")) >= 0
            and any(isinstance(r, dict) and r.get("from_name") == mask_from_name for r in p.get("result") or [])]
    parent = annotation.get("parent_prediction")
    for prediction in ours:
        if parent is not None and prediction.get("id") == parent:
            return prediction
    ours.sort(key=lambda p: version_number(str(p["model_version"])))
    made = _when(annotation.get("created_at"))
    before = [p for p in ours if made is not None and (when := _when(p.get("created_at"))) is not None and when <= made]
    return (before or ours or [None])[-1]


def _current(stored: np.ndarray, state: ProjectState) -> np.ndarray:
    """A stored map (``label_names`` keys) with the current class indices; removed classes become no class."""
    lookup = [state.classes.index(name) if name in state.classes else -1 for name in state.label_names]
    return remap_label_map(stored, lookup, label_dtype(len(state.classes)))


def _when(value: Any) -> datetime | None:
    """An ISO 8601 time as Label Studio writes it (``...Z`` included), or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


def _text(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
