"""Dense label maps as training points, in numpy only (the backend's event applier imports it without torch).

A fully labelled image (an annotator's corrected mask, or a ground-truth mask in the simulator) trains as one point per
cell of a grid of about the training resolution, laid over the image at its original size: the points go through the
same augmentation and point loss as clicks, cost what the network can resolve (never the photo's size), and the map
travels to a round job at the grid's size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DenseLabels:
    """An image's full label map as a round job takes it: sampled on a grid (``grid_labels``), with the original size
    ``(H, W)`` it was drawn at. Grid values that are not a class index (255 = no class) train nothing."""

    size: tuple[int, int]
    grid: np.ndarray


def grid_shape(size: tuple[int, int], height: int, width: int, max_points: int = 0) -> tuple[int, int]:
    """The grid a full label map of ``size`` trains on: the training size ``height`` x ``width`` (never finer than
    the map), scaled down with its aspect kept to at most ``max_points`` cells when that is set (> 0).

    Why a cap: each cell is one point of the point loss, so without one a corrected image outweighs a clicked one by
    its cell count (at 360x480, 172,800 points against about a hundred clicks) in every batch it is in.
    """
    rows, cols = min(height, size[0]), min(width, size[1])
    if max_points > 0 and rows * cols > max_points:
        scale = (max_points / (rows * cols)) ** 0.5
        rows, cols = max(1, int(rows * scale)), max(1, int(cols * scale))
    return rows, cols


def grid_labels(label_map: np.ndarray, height: int, width: int) -> np.ndarray:
    """A dense label map sampled at the centres of a ``height`` x ``width`` grid laid over it (nearest pixel).

    Shape: (H, W) -> (height, width), same dtype.
    """
    rows, cols = _grid_index(label_map.shape[0], height), _grid_index(label_map.shape[1], width)
    return np.ascontiguousarray(label_map[np.ix_(rows, cols)])


def grid_points(grid: np.ndarray, original_size: tuple[int, int], num_classes: int) -> np.ndarray:
    """The labelled points of a grid from ``grid_labels``: ``(row, col, label)`` at the original size, one per cell
    whose value is a class (0..num_classes-1; any other value, such as 255 or IGNORE_INDEX, trains nothing).

    Shape: grid (h, w) -> (n, 3) int64, rows then columns in order.
    """
    grid = np.asarray(grid).astype(np.int64)
    rows, cols = _grid_index(original_size[0], grid.shape[0]), _grid_index(original_size[1], grid.shape[1])
    r, c = np.nonzero((grid >= 0) & (grid < num_classes))
    return np.stack([rows[r], cols[c], grid[r, c]], 1).astype(np.int64) if len(r) else np.zeros((0, 3), np.int64)


def _grid_index(size: int, cells: int) -> np.ndarray:
    """The pixel (0..size-1) under the centre of each of ``cells`` equal cells along one axis."""
    return np.minimum(((np.arange(cells) + 0.5) * size / cells).astype(np.int64), size - 1)
