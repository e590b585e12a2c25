"""COCO JSON of exported label maps: one RLE annotation per class present per image (COCO-Stuff's layout).

Why this layout: the backend's result is a semantic segmentation (every pixel one class or none), which COCO holds
the way COCO-Stuff does: per image, one annotation per class present, its pixels as one compressed RLE, ``iscrowd``
0. Tools that read COCO (pycocotools, detectron2, mmsegmentation's converters, FiftyOne, CVAT) take it as it is.

Ids are stable across exports of the same project: an image's id is its Label Studio task id, and a category's id is
its class index in the label config plus one (the PNG label map's value + 1; COCO tools treat 0 as "no category"),
so re-exports after more rounds line up. The ignore label is not a class, so it is never a category; pixels without
a class (255 in the label map) belong to no annotation.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

from ..files import write_atomically


def category_id(class_index: int) -> int:
    """The COCO category id of a class index (its position in the label config's classes)."""
    return class_index + 1


class CocoWriter:
    """Collects one image at a time (only its RLE strings stay in memory) and writes the COCO file at the end.

    Args:
        classes: Class names in label-config order (the label map's values).
        description: ``info.description`` (which project and model version this is).
    """

    def __init__(self, classes: Sequence[str], description: str) -> None:
        self.classes = list(classes)
        self.description = description
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []

    def add(self, image_id: int, file_name: str, label_map: np.ndarray, extra: Mapping[str, Any] | None = None) -> None:
        """One image and an annotation per class present in its label map (values >= len(classes) are none).

        Args:
            image_id: The Label Studio task id.
            file_name: The image's file name as Label Studio knows it.
            label_map: ``(H, W)`` class indices at the image's original size.
            extra: More fields of the image entry (``label_map``: the PNG beside it).
        """
        height, width = label_map.shape
        self.images.append({"id": int(image_id), "file_name": file_name, "width": int(width),
                            "height": int(height), **(extra or {})})
        present = np.unique(label_map)
        for index in present[present < len(self.classes)].tolist():
            rle = coco_mask.encode(np.asfortranarray(label_map == index, dtype=np.uint8))
            self.annotations.append({
                "id": len(self.annotations) + 1, "image_id": int(image_id), "category_id": category_id(index),
                "segmentation": {"size": [int(height), int(width)], "counts": rle["counts"].decode("ascii")},
                "area": int(coco_mask.area(rle)), "bbox": [float(v) for v in coco_mask.toBbox(rle)],
                "iscrowd": 0,
            })

    def write(self, path: str | Path) -> None:
        """The COCO file (written atomically: a reader never sees half of it)."""
        body = {
            "info": {"description": self.description, "version": "1.0",
                     "date_created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
            "licenses": [],
            "images": self.images,
            "annotations": self.annotations,
            "categories": [{"id": category_id(i), "name": name, "supercategory": ""}
                           for i, name in enumerate(self.classes)],
        }
        write_atomically(path, lambda f: f.write(json.dumps(body).encode("utf-8")))
