"""One training run: optimiser, epochs over point-labelled images, mixed precision on CUDA, progress, checkpoints."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .config import IGNORE_INDEX, Config
from .data import Augmentation, make_batch, normalize, sample_at_points
from .files import write_atomically
from .losses import invert_uncertain, ova_semi_loss, sparse_cross_entropy, sparse_ova_bce
from .model import SegmentationClassifier

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """What one training run did."""

    epochs: int
    iterations: int
    seconds: float
    last_loss: float


def build_optimizer(model: torch.nn.Module, config: Config) -> torch.optim.Optimizer:
    """Adam with the paper's settings (lr 5e-4, betas 0.9 / 0.999, weight decay 2e-4 by default)."""
    return torch.optim.Adam(model.parameters(), lr=config.lr, betas=(config.beta1, config.beta2),
                            weight_decay=config.weight_decay)


def train_model(model: SegmentationClassifier, images: torch.Tensor, points: Sequence[np.ndarray],
                original_sizes: Sequence[tuple[int, int]], config: Config, epochs: int, device: torch.device,
                normalization: tuple[Sequence[float], Sequence[float]], generator: torch.Generator,
                semi: bool = False, progress: bool = True) -> TrainResult:
    """Train ``model`` in place on point labels for ``epochs`` passes over the labelled images.

    Args:
        model: the classifier (any kind).
        images: (N, 3, h, w) uint8 training images at the training size.
        points: per image, (n_i, 3) (row, col, label) at the original size; IGNORE_INDEX labels train nothing.
        original_sizes: per image, (height, width) at the original size.
        config: optimiser, batch size, augmentation, balance and OVAAL+ settings.
        epochs: passes over the images that have labels (over all images in the semi-supervised phase).
        device: where to train; CUDA also turns on mixed precision when ``config.amp``.
        normalization: (mean, std) the encoder weights expect.
        generator: CPU generator for shuffling and augmentation.
        semi: add the OVAAL+ loss (eq. 4): pseudo-labels from a frozen copy of the model as it was when this call began.
    """
    started = time.perf_counter()
    labelled = [i for i, p in enumerate(points) if len(p) and (p[:, 2] != IGNORE_INDEX).any()]
    pool = list(range(len(points))) if semi else labelled
    if epochs == 0 or not labelled:
        return TrainResult(0, 0, 0.0, float("nan"))
    if semi and not model.is_ova:
        raise ValueError("the OVAAL+ semi-supervised loss needs an OVA classifier (ova-shared or ova-separate)")
    model.to(device).train()
    teacher = copy.deepcopy(model).eval() if semi else None
    optimizer = build_optimizer(model, config)
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    augment = Augmentation(config.scale_min, config.scale_max, True, config.color_jitter)
    batch_size = max(2, min(config.batch_size, len(pool)))  # batch-norm needs two samples; a tiny pool repeats
    steps_per_epoch = max(1, len(pool) // batch_size)
    mean, std = normalization
    iterations, last_loss = 0, float("nan")
    bar = tqdm(total=epochs * steps_per_epoch, desc="semi" if semi else "train", disable=not progress,
               leave=False, dynamic_ncols=True)
    for _ in range(epochs):
        order = torch.randperm(len(pool), generator=generator).tolist()
        order = (order * batch_size)[:max(len(order), batch_size)]
        for step in range(steps_per_epoch):
            batch_index = [pool[j] for j in order[step * batch_size:(step + 1) * batch_size]]
            batch_images, batch_points = make_batch(images, points, original_sizes, batch_index, augment, generator)
            inputs = normalize(batch_images.to(device, non_blocking=True), mean, std)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                logits = model(inputs)
                at_points = sample_at_points(logits, batch_points)
                labels = batch_points[:, 3].long().to(device)
                if model.is_ova:
                    loss = sparse_ova_bce(at_points, labels, balance=config.ova_balance)
                else:
                    loss = sparse_cross_entropy(at_points, labels)
                if teacher is not None:
                    with torch.no_grad():
                        pseudo = invert_uncertain(torch.sigmoid(teacher(inputs).float()), config.semi_top_l)
                    loss = loss + config.semi_alpha * ova_semi_loss(logits, pseudo)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            iterations += 1
            last_loss = float(loss.detach())
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.3f}")
    bar.close()
    model.eval()
    return TrainResult(epochs, iterations, time.perf_counter() - started, last_loss)


def save_checkpoint(path: str | Path, checkpoint: dict[str, Any]) -> None:
    """Write a checkpoint dict atomically: a reader sees the old file or the new one, never half of one."""
    write_atomically(path, lambda handle: torch.save(checkpoint, handle))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint`` (tensors land on the CPU)."""
    return torch.load(Path(path), map_location="cpu", weights_only=True)
