"""One project's serving model: the checkpoint on disk (written by round jobs) and the current version's learner in
memory, applied to the images of the project's ``ImagePool``. The state machine decides which version and
generation it wants; this module only loads, keeps and applies models, safely from several threads (one forward pass
at a time).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...config import Config
from ...engine.job import predict_masks
from ...engine.learner import ActiveLearner
from ...engine.train import load_checkpoint
from .pool import ImagePool, PoolImage

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "model.pt"


class ServingModel:
    """The checkpoint and the serving learner of one project.

    Args:
        config: The model's settings and PREDICT_BATCH.
        root: The project's folder (``MODEL_DIR/<id>``); the checkpoint is ``root/model.pt``.
        images: The project's images, which ``class_maps`` predicts on.
    """

    def __init__(self, config: Config, root: Path, images: ImagePool) -> None:
        self.config = config
        self.path = root / CHECKPOINT_FILE
        self.images = images
        self.forward_lock = threading.Lock()  # one forward pass of a served model at a time
        self._lock = threading.Lock()  # the learner below
        self._learner: ActiveLearner | None = None
        self._key: tuple[int, int] | None = None  # (generation, version)

    def read_checkpoint(self) -> dict[str, Any] | None:
        """The saved checkpoint (learner state plus its version, generation, classes), or None."""
        return load_checkpoint(self.path) if self.path.is_file() else None

    def learner(self, version: int, generation: int, num_classes: int) -> ActiveLearner | None:
        """The learner of ``version`` (loaded from disk on first use), or None when its weights do not exist."""
        with self._lock:
            if self._learner is not None and self._key == (generation, version):
                return self._learner
            if version == 0:
                return None
            checkpoint = self.read_checkpoint()
            if checkpoint is None or (checkpoint["generation"], checkpoint["version"]) != (generation, version):
                return None
            learner = ActiveLearner.from_checkpoint(self.config.engine, num_classes, checkpoint["learner"])
            self._learner, self._key = learner, (generation, version)
            return learner

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
                loaded.append((task_id, self.images.image(task_id, url)))
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
