"""One project's image pool: the source images resized for the model, kept in memory (least recently used dropped
first), and the image files a round job reads. What serves predictions on them is ``serving.ServingModel``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from ...config import Config
from ...engine.data import to_tensor_resized
from ..images import ImageFetcher


@dataclass
class PoolImage:
    """A source image kept in memory: resized for the model, with its original size for pixel coordinates."""

    url: str
    tensor: torch.Tensor  # (3, h, w) uint8 at the training size
    size: tuple[int, int]  # (H, W) original


class ImagePool:
    """The source images of one project, in memory at the model's size and on disk as fetched, safe from several
    threads.

    Args:
        config: The model's image size and the pool's limits (IMAGE_POOL_SIZE, IMAGE_POOL_MB).
        fetcher: Reads task images (disk or download, cached).
    """

    def __init__(self, config: Config, fetcher: ImageFetcher) -> None:
        self.config = config
        self.fetcher = fetcher
        self._lock = threading.Lock()
        self._images: OrderedDict[int, PoolImage] = OrderedDict()  # least recently used first
        self._bytes = 0

    def image(self, task_id: int, url: str) -> PoolImage:
        """A source image resized for the model (kept in memory; the file is cached on disk).

        The pool keeps at most IMAGE_POOL_SIZE images and IMAGE_POOL_MB of them, dropping the least recently used.
        """
        with self._lock:
            cached = self._images.get(task_id)
            if cached is not None and cached.url == url:
                self._images.move_to_end(task_id)
                return cached
        array = self.fetcher.load(url, task_id)
        image = PoolImage(url, to_tensor_resized(array, self.config.image_height, self.config.image_width),
                          (int(array.shape[0]), int(array.shape[1])))
        del array  # the decoded photo (up to 150 MiB) is not kept
        with self._lock:
            old = self._images.pop(task_id, None)
            self._bytes -= _nbytes(old)
            self._images[task_id] = image
            self._bytes += _nbytes(image)
            limit = self.config.image_pool_mb * 2**20
            while len(self._images) > 1 and (len(self._images) > self.config.image_pool_size or self._bytes > limit):
                self._bytes -= _nbytes(self._images.popitem(last=False)[1])
        return image

    def path(self, task_id: int, url: str) -> Path:
        """A file holding the task's image (downloaded and cached first if needed), for a round job to read."""
        return self.fetcher.path(url, task_id)


def _nbytes(image: PoolImage | None) -> int:
    """Memory an image of the pool holds (its resized tensor)."""
    return 0 if image is None else image.tensor.numel() * image.tensor.element_size()
