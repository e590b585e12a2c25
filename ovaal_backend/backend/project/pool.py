"""One project's serving model and images: the checkpoint on disk (written by round jobs), the current version's
learner in memory, and the source images resized for it. The state machine decides which version and generation it
wants; this module only loads, keeps and applies models, safely from several threads (one forward pass at a time).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...config import Config
from ...engine.data import to_tensor_resized
from ...engine.job import predict_masks
from ...engine.learner import ActiveLearner
from ...engine.train import load_checkpoint
from ..images import ImageFetcher

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "model.pt"


@dataclass
class PoolImage:
    """A source image kept in memory: resized for the model, with its original size for pixel coordinates."""

    url: str
    tensor: torch.Tensor  # (3, h, w) uint8 at the training size
    size: tuple[int, int]  # (H, W) original


class ProjectModel:
    """The checkpoint, the serving learner and the image pool of one project.

    Args:
        config: Model and image sizes.
        root: The project's folder (``MODEL_DIR/<id>``); the checkpoint is ``root/model.pt``.
        fetcher: Reads task images (disk or download, cached).
    """

    def __init__(self, config: Config, root: Path, fetcher: ImageFetcher) -> None:
        self.config = config
        self.path = root / CHECKPOINT_FILE
        self.fetcher = fetcher
        self.forward_lock = threading.Lock()  # one forward pass of a served model at a time
        self._lock = threading.Lock()  # the caches below
        self._serving: ActiveLearner | None = None
        self._serving_key: tuple[int, int] | None = None  # (generation, version)
        self._pool: OrderedDict[int, PoolImage] = OrderedDict()  # least recently used first
        self._pool_bytes = 0

    # ------------------------------------------------------------ weights

    def read_checkpoint(self) -> dict[str, Any] | None:
        """The saved checkpoint (learner state plus its version, generation, classes), or None."""
        return load_checkpoint(self.path) if self.path.is_file() else None

    def serving(self, version: int, generation: int, num_classes: int) -> ActiveLearner | None:
        """The learner of ``version`` (loaded from disk on first use), or None when its weights do not exist."""
        with self._lock:
            if self._serving is not None and self._serving_key == (generation, version):
                return self._serving
            if version == 0:
                return None
            checkpoint = self.read_checkpoint()
            if checkpoint is None or (checkpoint["generation"], checkpoint["version"]) != (generation, version):
                return None
            learner = ActiveLearner(self.config.engine, num_classes)
            learner.load_state_dict(checkpoint["learner"])
            self._serving, self._serving_key = learner, (generation, version)
            return learner

    # ------------------------------------------------------------ images

    def image(self, task_id: int, url: str) -> PoolImage:
        """A source image resized for the model (kept in memory; the file is cached on disk).

        The pool keeps at most IMAGE_POOL_SIZE images and IMAGE_POOL_MB of them, dropping the least recently used.
        """
        with self._lock:
            cached = self._pool.get(task_id)
            if cached is not None and cached.url == url:
                self._pool.move_to_end(task_id)
                return cached
        array = self.fetcher.load(url, task_id)
        image = PoolImage(url, to_tensor_resized(array, self.config.image_height, self.config.image_width),
                          (int(array.shape[0]), int(array.shape[1])))
        del array  # the decoded photo (up to 150 MiB) is not kept
        with self._lock:
            old = self._pool.pop(task_id, None)
            self._pool_bytes -= _nbytes(old)
            self._pool[task_id] = image
            self._pool_bytes += _nbytes(image)
            limit = self.config.image_pool_mb * 2**20
            while len(self._pool) > 1 and (len(self._pool) > self.config.image_pool_size or self._pool_bytes > limit):
                self._pool_bytes -= _nbytes(self._pool.popitem(last=False)[1])
        return image

    def image_path(self, task_id: int, url: str) -> Path:
        """A file holding the task's image (downloaded and cached first if needed), for a round job to read."""
        return self.fetcher.path(url, task_id)

    def class_maps(self, learner: ActiveLearner, task_ids: list[int], urls: list[str]
                   ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Winner-Takes-All class maps and their per-class confidence at each image's original size.

        Yields ``(task id, class map (H, W) uint8, scores (C,))`` (see ``engine.job.predict_masks``); an image that
        cannot be read is logged and skipped. ``predict_batch`` images at a time go through the network, and only
        their maps are held at once: the caller encodes each before the next batch is predicted.
        """
        loaded: list[tuple[int, PoolImage]] = []
        for task_id, url in zip(task_ids, urls, strict=True):
            try:
                loaded.append((task_id, self.image(task_id, url)))
            except Exception as err:  # a broken image must not fail the other tasks
                log.error("project %s: task %d: cannot read its image: %s", self.path.parent.name, task_id, err)
        batch = self.config.predict_batch
        for start in range(0, len(loaded), batch):
            part = loaded[start:start + batch]
            images = torch.stack([image.tensor for _, image in part])
            with self.forward_lock:
                maps = list(predict_masks(learner, [tid for tid, _ in part], images, [image.size for _, image in part],
                                          batch))
            yield from maps


def _nbytes(image: PoolImage | None) -> int:
    """Memory an image of the pool holds (its resized tensor)."""
    return 0 if image is None else image.tensor.numel() * image.tensor.element_size()
