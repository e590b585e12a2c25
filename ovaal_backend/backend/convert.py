"""Pure conversions between Label Studio JSON and pixels.

This module is the only place that knows Label Studio's coordinate conventions: keypoints are percentages of the
original image size, brush masks are Label Studio's own RLE (not COCO RLE), and every result must name a control
(``from_name``) and an object (``to_name``) that exist in the project's label config, else Label Studio silently
hides it. Nothing here talks to the network or imports torch, so the server, the simulator and the export CLI can
all share it and the tests need no Label Studio.

Pixels are ``(row, col)`` with ``x = col`` and ``y = row``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from label_studio_sdk.converter.brush import decode_rle

from ..config import IGNORE_INDEX

logger = logging.getLogger(__name__)

IGNORE_ATTRIBUTE = "ovaal"
"""Attribute of a ``<Label>`` that marks it as "none of these / can't tell" when its value is ``ignore``."""

IGNORE_VALUES = frozenset({"ignore", "void", "unknown", "can't tell", "cant_tell", "none"})
"""Label values (lower case) recognised as the ignore label when no ``<Label ovaal="ignore">`` exists."""


class LabelConfigError(ValueError):
    """The project's label config cannot drive this backend; the message says what to add or rename."""


class LabelConfigTooLarge(LabelConfigError):
    """The label config is past MAX_LABEL_CONFIG_KB or MAX_CLASSES; the message names the setting."""


def check_label_config_size(xml: str, max_kb: int) -> None:
    """Raise LabelConfigTooLarge for a label config larger than ``max_kb`` KiB, before anything parses it."""
    size = len(xml.encode("utf-8", "surrogatepass"))
    if size > max_kb * 1024:
        raise LabelConfigTooLarge(f"the label config has {size / 1024:.1f} KiB, more than MAX_LABEL_CONFIG_KB="
                                  f"{max_kb}: shorten it or raise MAX_LABEL_CONFIG_KB")


@dataclass(frozen=True)
class LabelInterface:
    """What the backend needs from a label config: class names and the tag names results must carry.

    Attributes:
        classes: Class names in config order; the model's class index ``i`` is ``classes[i]``. The ignore label
            is not a class.
        image_name: Name of the ``<Image>`` tag, used as ``to_name`` of every result.
        image_key: Task data key holding the image URL (``value="$image"`` -> ``"image"``).
        query_from_name: Name of the ``<KeyPointLabels>`` control used for point queries, or None.
        mask_from_name: Name of the ``<BrushLabels>`` control used for predicted masks, or None.
        ignore_label: Label value meaning "none of these / can't tell", or None if the config has none.
    """

    classes: tuple[str, ...]
    image_name: str
    image_key: str
    query_from_name: str | None = None
    mask_from_name: str | None = None
    ignore_label: str | None = None

    @classmethod
    def parse(cls, xml: str, query_from_name: str = "", mask_from_name: str = "",
              max_classes: int = 0) -> LabelInterface:
        """Read a label config, in time linear in its size (a config with 40,000 labels once took a minute).

        Classes come from the ``<KeyPointLabels>`` control because that is what annotators answer with; a config
        with only ``<BrushLabels>`` still works for predictions. Tag and attribute names are matched case-insensitively,
        as Label Studio does.

        Args:
            xml: The label config XML (the project's ``label_config`` or ``/setup``'s ``schema``).
            query_from_name: Name of the KeyPointLabels control to use; empty picks the first one.
            mask_from_name: Name of the BrushLabels control to use; empty picks the first one.
            max_classes: Most classes a control may hold besides its ignore label (0 = no limit; MAX_CLASSES in the
                backend); counted while reading, so a huge control stops early.

        Returns:
            The parsed interface.

        Raises:
            LabelConfigError: The XML is malformed, lacks an Image or a KeyPointLabels/BrushLabels control, names a
                control that does not exist, repeats a label, or its BrushLabels lacks some KeyPointLabels class.
            LabelConfigTooLarge: A control holds more than ``max_classes`` classes.
        """
        try:
            root = ET.fromstring(xml)
        except ET.ParseError as exc:
            raise LabelConfigError(f"label config is not valid XML: {exc}") from None
        images = {_attr(el, "name"): el for el in root.iter() if _tag(el) == "image"}
        if not images:
            raise LabelConfigError('label config has no <Image> tag; add <Image name="image" value="$image"/>')
        query = _find_control(root, "keypointlabels", query_from_name, "QUERY_FROM_NAME")
        mask = _find_control(root, "brushlabels", mask_from_name, "MASK_FROM_NAME")
        if query is None and mask is None:
            raise LabelConfigError("label config has neither <KeyPointLabels> nor <BrushLabels>; add "
                                   '<KeyPointLabels name="query" toName="image"> with one <Label> per class')
        main = query if query is not None else mask
        labels, ignore_label = _control_labels(main, max_classes + 1 if max_classes else 0)  # + its ignore label
        classes = tuple(label for label in labels if label != ignore_label)
        if max_classes and len(classes) > max_classes:
            raise _too_many_classes(main, max_classes)
        if not classes:
            raise LabelConfigError(f"<{main.tag} name={_attr(main, 'name')!r}> has no class labels; "
                                   "add one <Label value=...> per class")
        if query is not None and mask is not None:
            mask_labels = set(_control_labels(mask, max_classes + 1 if max_classes else 0)[0])
            missing = [c for c in classes if c not in mask_labels]
            if missing:
                raise LabelConfigError(f"<BrushLabels name={_attr(mask, 'name')!r}> lacks the classes {missing}; "
                                       "give it the same labels as the KeyPointLabels control")
        image_name = _image_of(main, images)
        image_key = _attr(images[image_name], "value")
        if not image_key.startswith("$") or len(image_key) < 2:
            raise LabelConfigError(f'<Image name="{image_name}"> needs value="$<data key>", got {image_key!r}')
        return cls(
            classes=classes,
            image_name=image_name,
            image_key=image_key[1:],
            query_from_name=None if query is None else _attr(query, "name"),
            mask_from_name=None if mask is None else _attr(mask, "name"),
            ignore_label=ignore_label,
        )

    def class_index(self, label: str) -> int:
        """Index of a label value in ``classes``; IGNORE_INDEX for the ignore label and for unknown labels."""
        try:
            return self.classes.index(label)
        except ValueError:
            return IGNORE_INDEX

    def label_name(self, index: int) -> str | None:
        """Label value for a class index; the ignore label (None if the config has none) for IGNORE_INDEX.

        Raises:
            ValueError: The index is past the last class, which means the model and the config disagree.
        """
        if index >= len(self.classes):
            raise ValueError(f"class index {index} but the label config has only {len(self.classes)} classes")
        return self.classes[index] if index >= 0 else self.ignore_label


def _tag(el: ET.Element) -> str:
    """Lower-case tag name, because Label Studio accepts any case."""
    return el.tag.lower() if isinstance(el.tag, str) else ""


def _attr(el: ET.Element, name: str, default: str = "") -> str:
    """Attribute by case-insensitive name (Label Studio accepts ``toName`` and ``toname``)."""
    name = name.lower()
    for key, value in el.attrib.items():
        if key.lower() == name:
            return value
    return default


def _find_control(root: ET.Element, tag: str, name: str, setting: str) -> ET.Element | None:
    """The control of this kind with this name, or the first one when no name is given."""
    controls = [el for el in root.iter() if _tag(el) == tag]
    if name:
        for el in controls:
            if _attr(el, "name") == name:
                return el
        found = ", ".join(repr(_attr(el, "name")) for el in controls) or "none"
        raise LabelConfigError(f"{setting}={name!r} but the label config has no such <{tag}> control "
                               f"(found: {found}); fix {setting} or the config")
    if len(controls) > 1:
        logger.warning("label config has %d <%s> controls; using %r (set %s to choose)",
                       len(controls), tag, _attr(controls[0], "name"), setting)
    return controls[0] if controls else None


def _control_labels(control: ET.Element, max_labels: int = 0) -> tuple[list[str], str | None]:
    """A control's label values in order, and which of them is the ignore label.

    Raises:
        LabelConfigTooLarge: More than ``max_labels`` labels, the ignore label included (checked as they are read;
            0 = no limit).
    """
    labels: list[str] = []
    seen: set[str] = set()  # a set, not ``labels``: the duplicate check stays linear
    marked: str | None = None
    for el in control.iter():
        if _tag(el) != "label":
            continue
        value = _attr(el, "value")
        if not value:
            raise LabelConfigError(f"a <Label> of <{control.tag} name={_attr(control, 'name')!r}> has no value")
        if value in seen:
            raise LabelConfigError(f"label {value!r} appears twice in <{control.tag} name={_attr(control, 'name')!r}>; "
                                   "label values must be unique")
        labels.append(value)
        seen.add(value)
        if max_labels and len(labels) > max_labels:
            raise _too_many_classes(control, max_labels - 1)
        if marked is None and _attr(el, IGNORE_ATTRIBUTE).lower() == "ignore":
            marked = value
    if marked is None:
        marked = next((v for v in labels if v.strip().lower() in IGNORE_VALUES), None)
    return labels, marked


def _too_many_classes(control: ET.Element, max_classes: int) -> LabelConfigTooLarge:
    return LabelConfigTooLarge(f"<{control.tag} name={_attr(control, 'name')!r}> has more than MAX_CLASSES="
                               f"{max_classes} classes: merge classes or raise MAX_CLASSES")


def _image_of(control: ET.Element, images: dict[str, ET.Element]) -> str:
    """Name of the Image tag the control labels (its first ``toName`` that is an Image)."""
    to_names = [n.strip() for n in _attr(control, "toName").split(",") if n.strip()]
    for name in to_names:
        if name in images:
            return name
    raise LabelConfigError(f"<{control.tag} name={_attr(control, 'name')!r}> has toName={_attr(control, 'toName')!r}, "
                           f"which is not an <Image> (images: {sorted(images)}); point toName at the Image's name")


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
    iface: LabelInterface,
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
        iface: The parsed label config; it must have a KeyPointLabels control.
        point_size: Drawn keypoint size in percent of the image width.

    Returns:
        One result dict per point, with ``score = 1 - uncertainty``.

    Raises:
        LabelConfigError: The config has no KeyPointLabels control.
        ValueError: A point lies outside the image, has a class index the config lacks, or has neither a label
            nor a querying class.
    """
    if iface.query_from_name is None:
        raise LabelConfigError("label config has no <KeyPointLabels> control, so queries cannot be shown; add one")
    results = []
    for i, point in enumerate(points):
        row, col, label_index, query_index, uncertainty = _unpack_point(point)
        if not (0 <= row < height and 0 <= col < width):
            raise ValueError(f"query point (row={row}, col={col}) lies outside the {width}x{height} image")
        query_class = None if query_index is None else iface.label_name(query_index)
        if query_class == iface.ignore_label:
            query_class = None
        label = iface.label_name(label_index) or query_class
        if label is None:
            raise ValueError(f"query point (row={row}, col={col}) has label {label_index} and no querying class; "
                             "add an ignore label to the config or give the point a class")
        x, y = pixel_to_percent(col, row, width, height)
        results.append({
            "id": f"q{i}r{row}c{col}",
            "from_name": iface.query_from_name,
            "to_name": iface.image_name,
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


def brush_results(
    class_map: np.ndarray,
    iface: LabelInterface,
    scores: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """BrushLabels results, one region per class present in a predicted class map.

    Args:
        class_map: Class index per pixel at the ORIGINAL image size; negative values (IGNORE_INDEX) draw nothing.
        iface: The parsed label config; it must have a BrushLabels control.
        scores: Optional confidence: shape ``(C,)`` gives each class region its score, shape ``(H, W)`` gives each
            region the mean over its pixels.

    Returns:
        Result dicts in class order, each with Label Studio RLE of a 0/255 mask.

    Shape:
        class_map: ``(H, W)`` integers in ``[-1, C)``.

    Raises:
        LabelConfigError: The config has no BrushLabels control.
        ValueError: The class map is not 2-D, holds an index >= C, or ``scores`` has neither accepted shape.
    """
    if iface.mask_from_name is None:
        raise LabelConfigError("label config has no <BrushLabels> control, so masks cannot be shown; add one")
    class_map = np.asarray(class_map)
    if class_map.ndim != 2:
        raise ValueError(f"class_map must be (H, W), got shape {class_map.shape}")
    n_classes = len(iface.classes)
    if class_map.size and int(class_map.max()) >= n_classes:
        raise ValueError(f"class_map holds index {int(class_map.max())} but the config has {n_classes} classes")
    height, width = class_map.shape
    if scores is not None:
        scores = np.asarray(scores)
        if scores.shape not in ((n_classes,), (height, width)):
            raise ValueError(f"scores must have shape ({n_classes},) or ({height}, {width}), got {scores.shape}")
    results = []
    for index in range(n_classes):  # one boolean mask at a time: a 49 MP map is never copied wider than that
        mask = class_map == index
        if not mask.any():
            continue
        result: dict[str, Any] = {
            "id": f"m{index}",
            "from_name": iface.mask_from_name,
            "to_name": iface.image_name,
            "type": "brushlabels",
            "original_width": int(width),
            "original_height": int(height),
            "image_rotation": 0,
            "value": {
                "format": "rle",
                "rle": brush_rle(mask),
                "brushlabels": [iface.classes[index]],
            },
        }
        if scores is not None:
            result["score"] = float(scores[index] if scores.ndim == 1 else scores[mask].mean(dtype=np.float64))
        results.append(result)
    return results


RLE_HEADER = ((32, None), (5, 8 - 1), (4, 3 - 1), (4, 4 - 1), (4, 8 - 1), (4, 16 - 1))
"""Label Studio's RLE header fields as (bits, value): the value count (filled in), word size 8 and the four run
length widths 3, 4, 8 and 16 bits, each stored minus one."""
RLE_PIECES_AT_ONCE = 1 << 16
"""Runs turned into bits at once by ``brush_rle`` (bounds its memory on a noisy mask)."""


def brush_rle(mask: np.ndarray) -> list[int]:
    """Label Studio's brush RLE of a boolean mask, byte for byte what label_studio_sdk's ``mask2rle`` writes for the
    mask as 0/255, computed from the mask's runs.

    ``mask2rle`` repeats every pixel four times (RGBA) and builds a bit string: 17 bytes of memory per pixel, 800 MiB
    for a 49 MP photo's mask. Here every run of equal pixels is one code, ``1``, two bits choosing the length's width
    (3, 4, 8 or 16 bits, by the run's byte length: <= 8, <= 16, <= 256, longer), the length minus one and the byte
    value; a run longer than 65536 bytes is cut into 65536-byte pieces plus the rest, all written with 16 bits, as
    ``mask2rle`` does. Like it, the bits are padded to whole bytes with 1 to 8 zero bits.
    """
    flat = np.asarray(mask, dtype=bool).ravel()
    starts = np.concatenate(([0], np.flatnonzero(flat[1:] != flat[:-1]) + 1)) if flat.size else np.zeros(0, int)
    lengths = np.diff(np.append(starts, flat.size)) * 4
    values = np.where(flat[starts], 255, 0)
    width_index = np.searchsorted([8, 16, 256], lengths)  # 0..3: the run's length is stored in 3, 4, 8 or 16 bits
    pieces = np.where(width_index == 3, (lengths - 1) // 65536 + 1, 1)
    run = np.repeat(np.arange(len(lengths)), pieces)
    nth = np.arange(len(run)) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    piece_length = np.where(nth < pieces[run] - 1, 65536, lengths[run] - 65536 * (pieces[run] - 1))
    length_bits = np.array([3, 4, 8, 16])[width_index[run]]
    codes = ((((4 + width_index[run]) << length_bits) | (piece_length - 1)) << 8) | values[run]
    header = [(bits, flat.size * 4 if value is None else value) for bits, value in RLE_HEADER]
    chunks = [_bits(np.array([v for _, v in header]), np.array([b for b, _ in header]))]
    for first in range(0, len(codes), RLE_PIECES_AT_ONCE):
        end = first + RLE_PIECES_AT_ONCE
        chunks.append(_bits(codes[first:end], 3 + length_bits[first:end] + 8))
    bits = np.concatenate(chunks)
    padded = np.concatenate((bits, np.zeros(8 - bits.size % 8, dtype=np.uint8)))
    return np.packbits(padded).tolist()


def _bits(codes: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """The bits (uint8 0/1, most significant first) of each code written with its width, one after another."""
    total = int(widths.sum())
    ends = np.repeat(np.cumsum(widths), widths)
    shifts = ends - np.arange(total) - 1
    return ((np.repeat(codes.astype(np.int64), widths) >> shifts) & 1).astype(np.uint8)


def decode_brush(result: dict[str, Any]) -> np.ndarray:
    """The boolean ``(H, W)`` mask of a BrushLabels result (its ``original_height`` x ``original_width``)."""
    height, width = int(result["original_height"]), int(result["original_width"])
    pixels = decode_rle(result["value"]["rle"])
    return pixels.reshape(height, width, 4)[:, :, 3] > 0


def annotation_points(results: Sequence[dict[str, Any]], iface: LabelInterface) -> list[tuple[int, int, int]]:
    """Labelled pixels of an annotation's keypoints.

    Only keypoints of the query control count; other results (brush strokes, comments) are skipped. A keypoint
    whose label is the ignore label, unknown to the config, missing, or multiple becomes IGNORE_INDEX so that the
    pixel is recorded as answered but trains nothing.

    Args:
        results: The annotation's ``result`` list.
        iface: The parsed label config.

    Returns:
        ``(row, col, label_index)`` per distinct pixel; when a pixel appears twice the later keypoint wins.
    """
    if iface.query_from_name is None:
        return []
    points: dict[tuple[int, int], int] = {}
    for result in results:
        if not isinstance(result, dict) or result.get("from_name") != iface.query_from_name:
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
        points[(row, col)] = _label_of(value.get("keypointlabels") or [], iface, result.get("id"))
    return [(row, col, label) for (row, col), label in points.items()]


def _label_of(labels: list[str], iface: LabelInterface, region_id: Any) -> int:
    """Class index of a keypoint's labels, warning about anything that cannot train."""
    if len(labels) != 1:
        logger.warning("keypoint %r has labels %r; expected exactly one, so it trains nothing", region_id, labels)
        return IGNORE_INDEX
    label = labels[0]
    if label != iface.ignore_label and label not in iface.classes:
        logger.warning("keypoint %r has label %r, which the label config does not have; it trains nothing",
                       region_id, label)
    return iface.class_index(label)
