"""Keypoints <-> pixels: Label Studio stores a keypoint in percent of the original image size; a query becomes a
pre-labelled KeyPointLabels result, an answered annotation's keypoints become labelled pixels."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any

from ...config import IGNORE_INDEX
from .label_config import LabelConfigError, ParsedLabelConfig

logger = logging.getLogger(__name__)


def pixel_to_percent(x: float, y: float, width: int, height: int) -> tuple[float, float]:
    """Percent coordinates of a pixel's centre, as Label Studio stores keypoints.

    Using the centre (not the corner) makes ``percent_to_pixel`` land on the same pixel even after the float
    round-trip through JSON.

    Args:
        x: Column of the pixel.
        y: Row of the pixel.
        width: Original image width in pixels.
        height: Original image height in pixels.

    Returns:
        ``(x_percent, y_percent)`` in [0, 100].
    """
    return 100.0 * (x + 0.5) / width, 100.0 * (y + 0.5) / height


def percent_to_pixel(px: float, py: float, width: int, height: int) -> tuple[int, int]:
    """The pixel ``(x, y)`` = ``(col, row)`` containing a point given in percent of the image size.

    Clipped into the image, because a click on the very edge can give exactly 100 % (or a hair outside).
    """
    x = min(max(math.floor(px / 100.0 * width), 0), width - 1)
    y = min(max(math.floor(py / 100.0 * height), 0), height - 1)
    return x, y


def _unpack_point(point: Any) -> tuple[int, int, int, int | None, float]:
    """Turn a tuple or a dataclass with fields in the order (row, col, label, query class, uncertainty) into values."""
    values = dataclasses.astuple(point) if dataclasses.is_dataclass(point) else tuple(point)
    if len(values) != 5:
        raise ValueError(f"a query point needs (row, col, label_index, query_class_index, uncertainty), got {point!r}")
    row, col, label, query_class, uncertainty = values
    return int(row), int(col), int(label), None if query_class is None else int(query_class), float(uncertainty)


def keypoint_results(
    points: Iterable[Any],
    width: int,
    height: int,
    parsed_config: ParsedLabelConfig,
    point_size: float,
) -> list[dict[str, Any]]:
    """KeyPointLabels results for the pixels an annotator is asked about.

    Each keypoint is pre-labelled with the model's guess so the annotator only corrects it; the class whose
    classifier asked for the pixel is kept in ``meta`` and on the region so a per-class view is possible.

    Args:
        points: Items that unpack (or dataclasses whose fields come in this order) as
            ``(row, col, label_index, query_class_index, uncertainty)``. ``label_index`` IGNORE_INDEX gives the
            ignore label, or the querying class when the config has no ignore label (every keypoint needs a label).
            ``query_class_index`` may be None or IGNORE_INDEX when no single class asked (e.g. random selection).
        width: Original image width in pixels.
        height: Original image height in pixels.
        parsed_config: The parsed label config; it must have a KeyPointLabels control.
        point_size: Drawn keypoint size in percent of the image width.

    Returns:
        One result dict per point, with ``score = 1 - uncertainty``.

    Raises:
        LabelConfigError: The config has no KeyPointLabels control.
        ValueError: A point lies outside the image, has a class index the config lacks, or has neither a label
            nor a querying class.
    """
    if parsed_config.query_from_name is None:
        raise LabelConfigError("label config has no <KeyPointLabels> control, so queries cannot be shown; add one")
    results = []
    for i, point in enumerate(points):
        row, col, label_index, query_index, uncertainty = _unpack_point(point)
        if not (0 <= row < height and 0 <= col < width):
            raise ValueError(f"query point (row={row}, col={col}) lies outside the {width}x{height} image")
        query_class = None if query_index is None else parsed_config.label_name(query_index)
        if query_class == parsed_config.ignore_label:
            query_class = None
        label = parsed_config.label_name(label_index) or query_class
        if label is None:
            raise ValueError(f"query point (row={row}, col={col}) has label {label_index} and no querying class; "
                             "add an ignore label to the config or give the point a class")
        x, y = pixel_to_percent(col, row, width, height)
        results.append({
            "id": f"q{i}r{row}c{col}",
            "from_name": parsed_config.query_from_name,
            "to_name": parsed_config.image_name,
            "type": "keypointlabels",
            "original_width": int(width),
            "original_height": int(height),
            "image_rotation": 0,
            "value": {"x": x, "y": y, "width": float(point_size), "keypointlabels": [label]},
            "score": 1.0 - uncertainty,
            "meta": {"query_class": query_class},
            "query_class": query_class,
        })
    return results


def annotation_points(results: Sequence[dict[str, Any]], parsed_config: ParsedLabelConfig
                      ) -> list[tuple[int, int, int]]:
    """Labelled pixels of an annotation's keypoints.

    Only keypoints of the query control count; other results (brush strokes, comments) are skipped. A keypoint
    whose label is the ignore label, unknown to the config, missing, or multiple becomes IGNORE_INDEX so that the
    pixel is recorded as answered but trains nothing.

    Args:
        results: The annotation's ``result`` list.
        parsed_config: The parsed label config.

    Returns:
        ``(row, col, label_index)`` per distinct pixel; when a pixel appears twice the later keypoint wins.
    """
    if parsed_config.query_from_name is None:
        return []
    points: dict[tuple[int, int], int] = {}
    for result in results:
        if not isinstance(result, dict) or result.get("from_name") != parsed_config.query_from_name:
            continue
        if str(result.get("type", "")).lower() != "keypointlabels":
            continue
        value = result.get("value") or {}
        try:
            width, height = int(result["original_width"]), int(result["original_height"])
            px, py = float(value["x"]), float(value["y"])
        except (KeyError, TypeError, ValueError):
            logger.warning("skipping keypoint %r: it lacks original_width/height or x/y", result.get("id"))
            continue
        col, row = percent_to_pixel(px, py, width, height)
        points[(row, col)] = _label_of(value.get("keypointlabels") or [], parsed_config, result.get("id"))
    return [(row, col, label) for (row, col), label in points.items()]


def _label_of(labels: list[str], parsed_config: ParsedLabelConfig, region_id: Any) -> int:
    """Class index of a keypoint's labels, warning about anything that cannot train."""
    if len(labels) != 1:
        logger.warning("keypoint %r has labels %r; expected exactly one, so it trains nothing", region_id, labels)
        return IGNORE_INDEX
    label = labels[0]
    if label != parsed_config.ignore_label and label not in parsed_config.classes:
        logger.warning("keypoint %r has label %r, which the label config does not have; it trains nothing",
                       region_id, label)
    return parsed_config.class_index(label)
