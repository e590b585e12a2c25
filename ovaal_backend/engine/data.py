"""Images, dataset folders, and sparse point labels kept as coordinates through augmentation.

A point is (row, col, label) at the image's ORIGINAL size. Training images are resized once to the training size and
kept in memory as uint8; each batch applies scale / crop / flip / colour augmentation to the image and the same
geometric map to the point coordinates, so a click can leave the crop but is never merged, dropped or duplicated by
resampling a sparse mask.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from ..config import IGNORE_INDEX

ORIENTATION_TAG = 0x0112
"""EXIF's orientation tag: 1 = stored upright."""
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class DatasetError(ValueError):
    """A dataset folder is not laid out as expected; the message says what is missing."""


@dataclass(frozen=True)
class ClassInfo:
    """Class names and the label value that means void in ground-truth masks."""

    classes: tuple[str, ...]
    ignore_index: int


def read_class_info(folder: str | Path) -> ClassInfo:
    """Read ``classes.json`` (keys ``classes``, ``ignore_index`` (default 255)) from ``folder`` or its parent."""
    folder = Path(folder)
    for candidate in (folder / "classes.json", folder.parent / "classes.json"):
        if candidate.is_file():
            meta = json.loads(candidate.read_text())
            classes = tuple(meta["classes"])
            ignore_index = int(meta.get("ignore_index", 255))
            if 0 <= ignore_index < len(classes):
                raise DatasetError(f"{candidate}: ignore_index {ignore_index} is the index of class "
                                   f"{classes[ignore_index]!r}; the void value must lie outside 0..{len(classes) - 1}")
            return ClassInfo(classes, ignore_index)
    raise DatasetError(f"no classes.json in {folder} or its parent: write one with "
                       '{"classes": [...], "ignore_index": 255}')


class SegmentationFolder:
    """A folder with ``images/`` and ``labels/`` (same file stems), like ``camvid/train``."""

    def __init__(self, root: str | Path, require_labels: bool = True) -> None:
        self.root = Path(root)
        image_dir, label_dir = self.root / "images", self.root / "labels"
        if not image_dir.is_dir():
            raise DatasetError(f"{self.root}: no images/ folder")
        self.image_paths = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.image_paths:
            raise DatasetError(f"{image_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
        self.label_paths: list[Path] = []
        if require_labels:
            by_stem = {p.stem: p for p in label_dir.glob("*")} if label_dir.is_dir() else {}
            missing = [p.name for p in self.image_paths if p.stem not in by_stem]
            if missing:
                raise DatasetError(f"{label_dir}: no label for {len(missing)} image(s), e.g. {missing[:3]}")
            self.label_paths = [by_stem[p.stem] for p in self.image_paths]
        self.info = read_class_info(self.root)

    def __len__(self) -> int:
        return len(self.image_paths)

    @property
    def keys(self) -> list[str]:
        return [p.stem for p in self.image_paths]

    def load_image(self, index: int) -> np.ndarray:
        return load_rgb(self.image_paths[index])

    def load_label(self, index: int) -> np.ndarray:
        """Ground-truth class map (H, W) int64: class indices 0..C-1, classes.json's ``ignore_index`` as IGNORE_INDEX.

        Raises:
            DatasetError: The file is not single-channel, or holds a value that is neither a class nor void.
        """
        path = self.label_paths[index]
        with Image.open(path) as img:
            label = np.asarray(img, dtype=np.int64)
        if label.ndim != 2:
            raise DatasetError(f"{path}: labels must be single-channel class indices")
        void = label == self.info.ignore_index
        unknown = ~void & ((label < 0) | (label >= len(self.info.classes)))
        if unknown.any():
            values = np.unique(label[unknown]).tolist()
            raise DatasetError(f"{path}: label value(s) {values[:10]} are neither a class index "
                               f"(0..{len(self.info.classes) - 1}) nor the void value {self.info.ignore_index} "
                               "that classes.json declares as ignore_index")
        return np.where(void, IGNORE_INDEX, label)


def load_rgb(path: str | Path, max_pixels: int = 0) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB, turned upright by its EXIF orientation.

    Browsers, and so Label Studio, show a JPEG upright, and clicks come in that frame: reading it as stored would put
    every click of a rotated photo in the wrong place (or outside the image).

    Raises:
        ValueError: The file is not an image, or has more than ``max_pixels`` pixels (checked before decoding).
    """
    try:
        with Image.open(path) as img:
            if max_pixels and img.width * img.height > max_pixels:
                raise ValueError(f"{path}: {img.width}x{img.height} is more than MAX_IMAGE_PIXELS={max_pixels}")
            return np.asarray(_upright_rgb(img))
    except (OSError, Image.DecompressionBombError) as err:
        raise ValueError(f"{path} is not an image PIL can read ({err})") from err


def _upright_rgb(img: Image.Image) -> Image.Image:
    """The image upright and in RGB, copied only when it must change: a 49 MP photo is 190 MiB per copy."""
    if img.getexif().get(ORIENTATION_TAG, 1) != 1:
        img = ImageOps.exif_transpose(img)
    return img if img.mode == "RGB" else img.convert("RGB")


def resize_images(images: Sequence[np.ndarray], height: int, width: int) -> torch.Tensor:
    """Stack images resized to one training size: (N, 3, height, width) uint8, kept in memory for fast epochs."""
    out = torch.empty((len(images), 3, height, width), dtype=torch.uint8)
    for i, image in enumerate(images):
        out[i] = to_tensor_resized(image, height, width)
    return out


def to_tensor_resized(image: np.ndarray, height: int, width: int) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, height, width) uint8 with antialiased bilinear resizing.

    One colour channel at a time (the same values as all three at once): a 49 MP photo as float is 190 MiB per
    channel instead of 570 MiB.
    """
    if image.shape[:2] == (height, width):
        return torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1).contiguous()
    out = torch.empty((3, height, width), dtype=torch.uint8)
    for channel in range(3):
        plane = torch.from_numpy(np.ascontiguousarray(image[:, :, channel]))[None, None].float()
        resized = F.interpolate(plane, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
        out[channel] = resized[0, 0].round().clamp(0, 255).to(torch.uint8)
    return out


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 or 0..255 float (B, 3, H, W) -> normalised float."""
    m = torch.tensor(mean, device=images.device).view(1, 3, 1, 1) * 255
    s = torch.tensor(std, device=images.device).view(1, 3, 1, 1) * 255
    return (images.float() - m) / s


@dataclass(frozen=True)
class Augmentation:
    """Random geometric and colour changes for one training batch."""

    scale_min: float = 0.75
    scale_max: float = 1.5
    flip: bool = True
    color_jitter: float = 0.3


class Batch(NamedTuple):
    """One augmented training batch.

    ``images`` (B, 3, h, w) float 0..255 (the strong view, colour-jittered); ``weak`` the same crop and flip before
    colour jitter (the OVAAL+ teacher's view); ``valid`` (B, h, w) bool, False on crop padding; ``points`` (P, 4)
    float (batch index, y, x, label) in pixel units of the batch images.
    """

    images: torch.Tensor
    points: torch.Tensor
    valid: torch.Tensor
    weak: torch.Tensor


def make_batch(images: torch.Tensor, points: Sequence[np.ndarray], original_sizes: Sequence[tuple[int, int]],
               indices: Sequence[int], augment: Augmentation,
               generator: torch.Generator) -> Batch:
    """One training batch of augmented images and their points.

    Args:
        images: (N, 3, h, w) uint8, every image resized to the training size.
        points: per image, (n_i, 3) int arrays of (row, col, label) at the ORIGINAL size.
        original_sizes: per image, (height, width) at the original size.
        indices: which images form the batch.
        augment: the augmentation to apply.
        generator: CPU random generator (seeded runs are reproducible).

    Returns:
        a ``Batch``; points that the crop moved outside the image are left out of this batch only.
    """
    height, width = images.shape[-2:]
    device = images.device  # images kept on the GPU are augmented there (no copy per batch)
    out_images = torch.zeros((len(indices), 3, height, width), device=device)
    weak = torch.zeros_like(out_images)
    valid = torch.zeros((len(indices), height, width), dtype=torch.bool, device=device)
    out_points = []
    for b, i in enumerate(indices):
        image = images[i].float()[None]
        scale = float(torch.empty(1).uniform_(augment.scale_min, augment.scale_max, generator=generator))
        sh, sw = max(1, round(height * scale)), max(1, round(width * scale))
        if (sh, sw) != (height, width):
            image = F.interpolate(image, size=(sh, sw), mode="bilinear", align_corners=False)
        top = _random_offset(sh, height, generator)
        left = _random_offset(sw, width, generator)
        canvas = torch.zeros((3, height, width), device=device)
        src = image[0, :, max(top, 0):max(top, 0) + height, max(left, 0):max(left, 0) + width]
        inside_rows = slice(max(-top, 0), max(-top, 0) + src.shape[1])
        inside_cols = slice(max(-left, 0), max(-left, 0) + src.shape[2])
        canvas[:, inside_rows, inside_cols] = src
        valid[b, inside_rows, inside_cols] = True
        flip = augment.flip and bool(torch.rand(1, generator=generator) < 0.5)
        if flip:
            canvas = canvas.flip(-1)
            valid[b] = valid[b].flip(-1)
        weak[b] = canvas
        if augment.color_jitter > 0:
            canvas = _jitter_colour(canvas, augment.color_jitter, generator)
        out_images[b] = canvas
        pts = points[i]
        if len(pts) == 0:
            continue
        oh, ow = original_sizes[i]
        rows = torch.as_tensor(pts[:, 0], dtype=torch.float32)
        cols = torch.as_tensor(pts[:, 1], dtype=torch.float32)
        y = (rows + 0.5) * (sh / oh) - 0.5 - top
        x = (cols + 0.5) * (sw / ow) - 0.5 - left
        if flip:
            x = width - 1 - x
        inside = (y >= -0.5) & (y < height - 0.5) & (x >= -0.5) & (x < width - 0.5)
        labels = torch.as_tensor(pts[:, 2], dtype=torch.float32)
        batch_col = torch.full_like(y, b)
        out_points.append(torch.stack([batch_col, y, x, labels], 1)[inside])
    packed = torch.cat(out_points) if out_points else torch.zeros((0, 4))
    return Batch(out_images, packed, valid, weak)


def _random_offset(size: int, window: int, generator: torch.Generator) -> int:
    """Crop offset: inside the image when it is larger than the window, a padding offset (negative) otherwise."""
    if size == window:
        return 0
    low, high = (0, size - window) if size > window else (size - window, 0)
    return int(torch.randint(low, high + 1, (1,), generator=generator))


def _jitter_colour(image: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    factors = torch.empty(3).uniform_(1 - strength, 1 + strength, generator=generator).tolist()
    image = image * factors[0]
    mean = image.mean()
    image = (image - mean) * factors[1] + mean
    grey = image.mean(0, keepdim=True)
    image = (image - grey) * factors[2] + grey
    return image.clamp(0, 255)


def sample_at_points(logits: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of per-pixel logits at point coordinates.

    Shape: logits (B, C, h, w), points (P, 4) as from ``make_batch`` -> (P, C), in the order of ``points``.
    """
    batch, classes, height, width = logits.shape
    out = logits.new_zeros((points.shape[0], classes))
    for b in range(batch):
        sel = points[:, 0] == b
        if not sel.any():
            continue
        p = points[sel].to(logits.device)
        grid = torch.stack([(p[:, 2] + 0.5) / width * 2 - 1, (p[:, 1] + 0.5) / height * 2 - 1], -1)
        sampled = F.grid_sample(logits[b:b + 1].float(), grid.view(1, -1, 1, 2).float(), mode="bilinear",
                                padding_mode="border", align_corners=False)
        out[sel.to(out.device)] = sampled[0, :, :, 0].t().to(out.dtype)
    return out
