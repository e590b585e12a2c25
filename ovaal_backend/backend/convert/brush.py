"""Masks <-> Label Studio brushes: a class map as one BrushLabels result per class, in Label Studio's own RLE (not
COCO's), and a brush result back to a boolean mask."""

from __future__ import annotations

from typing import Any

import numpy as np
from label_studio_sdk.converter.brush import decode_rle

from .label_config import LabelConfigError, ParsedLabelConfig


def brush_results(
    class_map: np.ndarray,
    parsed_config: ParsedLabelConfig,
    scores: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """BrushLabels results, one region per class present in a predicted class map.

    Args:
        class_map: Class index per pixel at the ORIGINAL image size; negative values (IGNORE_INDEX) draw nothing.
        parsed_config: The parsed label config; it must have a BrushLabels control.
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
    if parsed_config.mask_from_name is None:
        raise LabelConfigError("label config has no <BrushLabels> control, so masks cannot be shown; add one")
    class_map = np.asarray(class_map)
    if class_map.ndim != 2:
        raise ValueError(f"class_map must be (H, W), got shape {class_map.shape}")
    n_classes = len(parsed_config.classes)
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
            "from_name": parsed_config.mask_from_name,
            "to_name": parsed_config.image_name,
            "type": "brushlabels",
            "original_width": int(width),
            "original_height": int(height),
            "image_rotation": 0,
            "value": {
                "format": "rle",
                "rle": brush_rle(mask),
                "brushlabels": [parsed_config.classes[index]],
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
