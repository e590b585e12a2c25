"""Small synthetic segmentation datasets for fast tests: coloured shapes whose colour gives the class."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["background", "square", "disc"]
COLOURS = [(40, 40, 40), (220, 30, 30), (30, 30, 220)]
VOID = 255


def make_scene(rng: np.random.Generator, height: int = 48, width: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """One image and its label map: a red square, a blue disc, a void stripe, mild noise."""
    label = np.zeros((height, width), dtype=np.uint8)
    top, left = rng.integers(2, height // 2), rng.integers(2, width // 2)
    size = int(rng.integers(8, 16))
    label[top:top + size, left:left + size] = 1
    cy, cx, r = rng.integers(10, height - 10), rng.integers(10, width - 10), int(rng.integers(5, 9))
    yy, xx = np.mgrid[:height, :width]
    label[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 2
    label[:, :2] = VOID
    image = np.array(COLOURS, dtype=np.float64)[np.minimum(label, 2)]
    image += rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), label


def make_dataset(root: Path, count: int, seed: int = 0, height: int = 48, width: int = 64) -> Path:
    """Write ``count`` scenes as root/images/*.png, root/labels/*.png and root/classes.json."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image, label = make_scene(rng, height, width)
        Image.fromarray(image).save(root / "images" / f"scene_{i:03d}.png")
        Image.fromarray(label).save(root / "labels" / f"scene_{i:03d}.png")
    (root / "classes.json").write_text(json.dumps({"classes": CLASSES, "ignore_index": VOID,
                                                   "colors": [list(c) for c in COLOURS]}))
    return root
