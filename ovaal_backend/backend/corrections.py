"""Corrected masks: a brush annotation on a source task is the truth for that image.

The backend pushes a dense Winner-Takes-All mask to every source task; an annotator who accepts it (submits it as it
is) or corrects it (paints over it, erases, adds regions) leaves an annotation whose BrushLabels regions are the
image's ground truth. This module turns such regions into a label map, measures the mask the backend had pushed
against it (per-class IoU and the share of pixels left as pushed), and summarises those figures for ``/metrics``.
It knows Label Studio's result shapes but no HTTP and no storage (``store/corrections.py`` keeps the maps).

Label maps here hold one integer per pixel: a key given by the caller (a class index, or a position in the project's
``label_names``) or ``none_value(dtype)`` where no region (or the ignore label) covers the pixel.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .convert import decode_brush

log = logging.getLogger(__name__)

RECENT = 20
"""Corrections listed one by one in ``/metrics`` (the newest); the means cover all of them."""


def label_dtype(labels: int) -> np.dtype:
    """The smallest unsigned type that holds ``labels`` keys and one more value for "no class"."""
    return np.dtype(np.uint8) if labels < 255 else np.dtype(np.uint16)


def none_value(dtype: np.dtype) -> int:
    """The value of a pixel without a class in a label map of ``dtype``: its largest (255 for uint8, as export's
    PNG label maps use)."""
    return int(np.iinfo(dtype).max)


def brush_label_map(results: Sequence[Any], from_name: str, keys: Mapping[str, int],
                    dtype: np.dtype) -> np.ndarray | None:
    """The label map of the BrushLabels regions of control ``from_name`` in an annotation's (or prediction's) result.

    Regions are painted in list order, so a later region wins where two overlap (Label Studio keeps regions in the
    order they were made and draws later ones on top). A region whose label is not in ``keys`` (the ignore label, a
    class the config no longer has) paints "no class"; a region of another size than the first is skipped, with a
    warning.

    Args:
        results: The ``result`` list (other controls and result types are skipped).
        from_name: The BrushLabels control whose regions count.
        keys: Label value -> the key stored for its pixels.
        dtype: Of the map (``label_dtype``); its ``none_value`` marks pixels without a class.

    Returns:
        ``(H, W)`` at the regions' ``original_height`` x ``original_width``, or None when there is no region.
    """
    none = none_value(dtype)
    label_map: np.ndarray | None = None
    for result in results:
        if not isinstance(result, dict) or result.get("from_name") != from_name:
            continue
        if str(result.get("type", "")).lower() != "brushlabels":
            continue
        value = result.get("value") or {}
        if value.get("format", "rle") != "rle" or not value.get("rle"):
            log.warning("skipping brush region %r: no RLE (format %r)", result.get("id"), value.get("format"))
            continue
        mask = decode_brush(result)
        if label_map is None:
            label_map = np.full(mask.shape, none, dtype=dtype)
        elif mask.shape != label_map.shape:
            log.warning("skipping brush region %r: %dx%d, but the first region is %dx%d", result.get("id"),
                        mask.shape[1], mask.shape[0], label_map.shape[1], label_map.shape[0])
            continue
        labels = value.get("brushlabels") or []
        label_map[mask] = keys.get(labels[0], none) if len(labels) == 1 else none
    return label_map


def remap_label_map(label_map: np.ndarray, lookup: Sequence[int], dtype: np.dtype) -> np.ndarray:
    """A map whose keys are re-indexed: key ``k`` becomes ``lookup[k]`` (a negative entry: no class); pixels without
    a class stay without one, as ``none_value(dtype)``."""
    none_in, none_out = none_value(label_map.dtype), none_value(dtype)
    table = np.full(none_in + 1, none_out, dtype=np.int64)
    for key, target in enumerate(lookup[:none_in]):
        table[key] = target if target >= 0 else none_out
    return table[label_map].astype(dtype)


def correction_figure(pushed: np.ndarray, corrected: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """The mask the backend pushed against the annotator's correction of it.

    Both maps hold class indices (``classes``), anything else meaning no class. ``per_class_iou`` (percent) is
    measured over the pixels the correction gives a class (its "no class" pixels are void, as in the simulator's
    evaluation); a class in neither map has None. ``kept`` is the share of all pixels whose label the annotator left
    as pushed (no class on both sides counts as kept): the "pre-label kept" figure for a whole mask.

    Raises:
        ValueError: The maps differ in shape.
    """
    if pushed.shape != corrected.shape:
        raise ValueError(f"pushed mask {pushed.shape} and correction {corrected.shape} differ in size")
    n = len(classes)
    truth = np.minimum(corrected.astype(np.int64), n)  # n = no class
    guess = np.minimum(pushed.astype(np.int64), n)
    kept = float(np.mean(truth == guess)) if truth.size else 1.0
    valid = truth < n
    confusion = np.bincount(truth[valid] * (n + 1) + guess[valid], minlength=(n + 1) * n).reshape(n, n + 1)
    per_class: dict[str, float | None] = {}
    for c, name in enumerate(classes):
        union = confusion[c].sum() + confusion[:, c].sum() - confusion[c, c]
        per_class[name] = None if union == 0 else float(100.0 * confusion[c, c] / union)
    present = [v for v in per_class.values() if v is not None]
    return {"per_class_iou": per_class, "miou": float(np.mean(present)) if present else None, "kept": kept,
            "pixels": int(valid.sum())}


def summarise(rows: Sequence[Mapping[str, Any]], classes: Sequence[str]) -> dict[str, Any]:
    """What ``/metrics`` and the dashboard show of the corrected masks (the newest per source task).

    Args:
        rows: ``{"task", "annotation", "stored_at", "figure"}`` per correction, oldest first; ``figure`` is
            ``correction_figure``'s dict plus ``version`` (the model version of the pushed mask), or None when no
            mask of ours was on the task when it was corrected.
        classes: The current classes, listed first in ``per_class_iou`` (a removed class follows when measured).

    Returns:
        ``count`` (corrected images), ``measured`` (those with a figure), ``mean_miou``, ``mean_kept`` (means over
        the measured ones, None without any), ``per_class_iou`` (class -> mean over the corrections where it was
        present), ``by_version`` (the same means per pushed model version, oldest version first) and ``recent`` (the
        newest RECENT corrections, newest first).
    """
    measured = [r for r in rows if r.get("figure")]
    names = list(classes) + sorted({c for r in measured for c in r["figure"]["per_class_iou"]} - set(classes))
    per_class = {}
    for name in names:
        values = [r["figure"]["per_class_iou"].get(name) for r in measured]
        values = [v for v in values if v is not None]
        per_class[name] = float(np.mean(values)) if values else None
    versions: dict[str, list[Mapping[str, Any]]] = {}
    for row in measured:
        versions.setdefault(str(row["figure"].get("version")), []).append(row)
    by_version = [{"version": version, "count": len(group), **_means(group)}
                  for version, group in sorted(versions.items(), key=lambda item: version_number(item[0]))]
    recent = [{"task": r["task"], "annotation": r["annotation"], "at": r["stored_at"],
               "version": (r.get("figure") or {}).get("version"), "miou": (r.get("figure") or {}).get("miou"),
               "kept": (r.get("figure") or {}).get("kept")} for r in reversed(rows[-RECENT:])]
    return {"count": len(rows), "measured": len(measured), **_means(measured), "per_class_iou": per_class,
            "by_version": by_version, "recent": recent}


def _means(rows: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    mious = [r["figure"]["miou"] for r in rows if r["figure"].get("miou") is not None]
    kept = [r["figure"]["kept"] for r in rows]
    return {"mean_miou": float(np.mean(mious)) if mious else None, "mean_kept": float(np.mean(kept)) if kept else None}


def version_number(name: str) -> int:
    """``ovaal-12`` -> 12; -1 for a model version that is not this backend's."""
    found = re.fullmatch(r"ovaal-(\d+)", name)
    return int(found.group(1)) if found else -1
