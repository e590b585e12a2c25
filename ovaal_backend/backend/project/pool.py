"""One project's model and images: the checkpoint on disk, the current version's learner in memory, and the source
images resized for it. The round logic (project.py) decides which version and generation it wants; this module only
loads, keeps and applies models, safely from several threads (one forward pass at a time).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...config import Config
from ...engine.data import to_tensor_resized
from ...engine.learner import ActiveLearner
from ...engine.model import winner_takes_all
from ...engine.train import load_checkpoint, save_checkpoint
from ..client import ImageFetcher

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
        self._pool: dict[int, PoolImage] = {}

    # ------------------------------------------------------------ weights

    def read_checkpoint(self) -> dict[str, Any] | None:
        """The saved checkpoint (learner state plus its version, generation, classes), or None."""
        return load_checkpoint(self.path) if self.path.is_file() else None

    def new_learner(self, num_classes: int, generation: int, fine_tune: bool) -> ActiveLearner:
        """A learner for ``num_classes``; with ``fine_tune`` it starts from the saved weights of ``generation``."""
        learner = ActiveLearner(self.config, num_classes)
        checkpoint = self.read_checkpoint() if fine_tune else None
        if checkpoint is not None and checkpoint["generation"] == generation:
            learner.load_state_dict(checkpoint["learner"])
        return learner

    def save(self, learner: ActiveLearner, version: int, generation: int, **meta: Any) -> None:
        """Write the checkpoint atomically and serve ``learner`` as ``version`` of ``generation`` from now on."""
        save_checkpoint(self.path, {"learner": learner.state_dict(), "version": version, "generation": generation,
                                    **meta})
        with self._lock:
            self._serving, self._serving_key = learner, (generation, version)

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
            learner = ActiveLearner(self.config, num_classes)
            learner.load_state_dict(checkpoint["learner"])
            self._serving, self._serving_key = learner, (generation, version)
            return learner

    # ------------------------------------------------------------ images

    def image(self, task_id: int, url: str) -> PoolImage:
        """A source image resized for the model (kept in memory; the file is cached on disk)."""
        with self._lock:
            cached = self._pool.get(task_id)
        if cached is not None and cached.url == url:
            return cached
        array = self.fetcher.load(url, task_id)
        image = PoolImage(url, to_tensor_resized(array, self.config.image_height, self.config.image_width),
                          (int(array.shape[0]), int(array.shape[1])))
        with self._lock:
            self._pool[task_id] = image
        return image

    def batch(self, task_ids: list[int], urls: list[str]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """(N, 3, h, w) uint8 images and their original sizes, in ``task_ids`` order."""
        images = [self.image(tid, url) for tid, url in zip(task_ids, urls, strict=True)]
        return torch.stack([i.tensor for i in images]), [i.size for i in images]

    def class_maps(self, learner: ActiveLearner, task_ids: list[int], urls: list[str]
                   ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Winner-Takes-All class maps and their confidence at each image's original size.

        Yields ``(task id, class map (H, W) int64, confidence (H, W) float32)``; an image that cannot be read is
        logged and skipped. Images of equal size are predicted ``predict_batch`` at a time.
        """
        loaded: list[tuple[int, PoolImage]] = []
        for task_id, url in zip(task_ids, urls, strict=True):
            try:
                loaded.append((task_id, self.image(task_id, url)))
            except Exception as err:  # a broken image must not fail the other tasks
                log.error("project %s: task %d: cannot read its image: %s", self.path.parent.name, task_id, err)
        for group in batches_by_size(loaded, self.config.predict_batch):
            images = torch.stack([image.tensor for _, image in group])
            with self.forward_lock:
                probabilities = learner.predict_probabilities(images, group[0][1].size)
            class_maps = winner_takes_all(probabilities).cpu().numpy()
            confidence = probabilities.max(1).values.float().cpu().numpy()
            for b, (task_id, _) in enumerate(group):
                yield task_id, class_maps[b].astype(np.int64), confidence[b]


def batches_by_size(items: list[tuple[int, PoolImage]], size: int) -> Iterable[list[tuple[int, PoolImage]]]:
    """Consecutive runs of images with the same original size, at most ``size`` long."""
    group: list[tuple[int, PoolImage]] = []
    for item in items:
        if group and (len(group) == size or item[1].size != group[0][1].size):
            yield group
            group = []
        group.append(item)
    if group:
        yield group
