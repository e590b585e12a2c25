"""One training run: epochs over point-labelled images that step the optimiser it is given (the learner owns it),
with the run's own schedule, mixed precision on CUDA and OVAAL+ teacher; progress; checkpoint files."""

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

from ..config import IGNORE_INDEX, EngineConfig
from ..files import write_atomically
from .data import Augmentation, Batch, make_batch, normalize, sample_at_points
from .losses import click_counts, ova_semi_loss, sparse_cross_entropy, sparse_ova_bce
from .model import SegmentationClassifier
from .pseudo_labels import SEMI_TEACHERS, refine_pseudo_labels
from .schedules import LR_SCHEDULES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """What one training run did."""

    epochs: int
    iterations: int
    seconds: float
    last_loss: float


def build_optimizer(model: SegmentationClassifier, config: EngineConfig) -> torch.optim.Optimizer:
    """Adam with the paper's settings (lr 5e-4, betas 0.9 / 0.999, weight decay 2e-4 by default).

    The pretrained encoder learns at ``encoder_lr_ratio`` times the rate of the new decoder and heads (PixelPick's
    recipe: 0.1), so a short training does not wash out what ImageNet taught it.
    """
    encoder_ids = {id(p) for encoder in model.encoders() for p in encoder.parameters()}
    encoder = [p for p in model.parameters() if id(p) in encoder_ids]
    rest = [p for p in model.parameters() if id(p) not in encoder_ids]
    groups = [{"params": rest, "lr": config.lr}, {"params": encoder, "lr": config.lr * config.encoder_lr_ratio}]
    return torch.optim.Adam([g for g in groups if g["params"]], lr=config.lr, betas=(config.beta1, config.beta2),
                            weight_decay=config.weight_decay)


def build_schedule(optimizer: torch.optim.Optimizer, config: EngineConfig,
                   total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning rate over one training run: ``LR`` times the factor of ``config.lr_schedule``
    (``schedules.LR_SCHEDULES``: ``cosine`` from ``LR`` to zero by the last step, or ``constant``)."""
    factor = LR_SCHEDULES[config.lr_schedule]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: factor(step, total_steps))


def point_loss(model: SegmentationClassifier, logits: torch.Tensor, points: torch.Tensor,
               config: EngineConfig, counts: torch.Tensor | None = None) -> torch.Tensor:
    """The active loss on the batch's clicks: per-class BCE (OVA) or cross-entropy (multi-class).

    ``ova-separate`` sums the classes' losses instead of averaging them, so each of its C networks gets the gradient of
    its own binary loss and the weight decay keeps its meaning (averaged, decay was in effect C times stronger).
    ``ova-softmax`` adds the cross-entropy of its decision head to its heads' BCE: ``class_balance`` shapes the
    heads (what gets asked), ``decision_balance`` the softmax that decides (0: the clicks' own class mix, as
    PixelPick's).
    ``counts`` (C,): every click's class over the whole training (``class_balance_global``), else the balance counts
    the batch's.
    """
    at_points = sample_at_points(logits, points)
    labels = points[:, 3].long().to(logits.device)
    if not model.is_ova:
        return sparse_cross_entropy(at_points, labels, balance=config.class_balance, counts=counts)
    classes = model.num_classes
    loss = sparse_ova_bce(at_points[:, :classes], labels, balance=config.class_balance, counts=counts)
    if model.spec.softmax_decision:
        return loss + sparse_cross_entropy(at_points[:, classes:], labels, config.decision_balance, counts)
    return loss * classes if model.spec.separate else loss


def semi_loss(logits: torch.Tensor, teacher: SegmentationClassifier, batch: Batch, weak_inputs: torch.Tensor,
              config: EngineConfig) -> torch.Tensor:
    """The OVAAL+ loss: pseudo-labels from the teacher on the weak view, learnt by the student on the strong view.

    Crop padding and clicked pixels train nothing here (padding is no image; clicks already have true labels).
    """
    with torch.no_grad():
        pseudo = refine_pseudo_labels(teacher.probabilities(teacher(weak_inputs).float()), config.semi_top_l,
                                      config.semi_rule)
    weight = batch.valid.to(logits.device).clone()
    if len(batch.points):
        b = batch.points[:, 0].long()
        y = batch.points[:, 1].round().long().clamp(0, weight.shape[1] - 1)
        x = batch.points[:, 2].round().long().clamp(0, weight.shape[2] - 1)
        weight[b.to(weight.device), y.to(weight.device), x.to(weight.device)] = False
    heads = logits[:, :teacher.num_classes]  # the One-vs-All heads (all of the logits but for ova-softmax)
    return ova_semi_loss(heads, pseudo, weight[:, None], balance=config.semi_balance)


@torch.no_grad()
def update_ema(teacher: torch.nn.Module, student: torch.nn.Module, decay: float) -> None:
    """Mean teacher: teacher <- decay * teacher + (1 - decay) * student (buffers copied)."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(decay).add_(s.detach(), alpha=1 - decay)
    for t, s in zip(teacher.buffers(), student.buffers()):
        t.copy_(s)


def train_model(model: SegmentationClassifier, images: torch.Tensor, points: Sequence[np.ndarray],
                original_sizes: Sequence[tuple[int, int]], config: EngineConfig, epochs: int, device: torch.device,
                normalization: tuple[Sequence[float], Sequence[float]], generator: torch.Generator,
                optimizer: torch.optim.Optimizer, semi: bool = False, progress: bool = True) -> TrainResult:
    """Train ``model`` in place on point labels for ``epochs`` passes over the labelled images.

    Args:
        model: the classifier (any kind).
        images: (N, 3, h, w) uint8 training images at the training size.
        points: per image, (n_i, 3) (row, col, label) at the original size; IGNORE_INDEX labels train nothing.
        original_sizes: per image, (height, width) at the original size.
        config: optimiser, schedule, batch size, augmentation, balance and OVAAL+ settings.
        epochs: passes over the images that have labels (over all images in the semi-supervised phase).
        device: where to train; CUDA also turns on mixed precision when ``config.amp``.
        normalization: (mean, std) the encoder weights expect.
        generator: CPU generator for shuffling and augmentation.
        optimizer: the optimiser to step (the learner's: fresh, or kept across rounds with ``keep_optimizer``); this
            run gives it a schedule of its own (torch's schedulers start from each group's ``initial_lr``).
        semi: add the OVAAL+ loss; the teacher starts as a copy of the model as it was when this call began and
            follows the student as a mean teacher when ``config.semi_teacher`` is ``ema``.
    """
    started = time.perf_counter()
    labelled = [i for i, p in enumerate(points) if len(p) and (p[:, 2] != IGNORE_INDEX).any()]
    pool = list(range(len(points))) if semi else labelled
    if epochs == 0 or not labelled:
        return TrainResult(0, 0, 0.0, float("nan"))
    if semi and not model.is_ova:
        raise ValueError("the OVAAL+ semi-supervised loss needs One-vs-All heads (not CLASSIFIER=multiclass)")
    batch_size = max(2, min(config.batch_size, len(pool)))  # batch-norm needs two samples; a tiny pool repeats
    steps_per_epoch = max(1, len(pool) // batch_size)
    run = _Run(model, config, device, normalization, optimizer, epochs * steps_per_epoch, semi,
               click_counts(points, model.num_classes) if config.class_balance_global else None)
    augment = Augmentation(config.scale_min, config.scale_max, True, config.color_jitter)
    model.to(device).train()
    iterations, last_loss = 0, float("nan")
    bar = tqdm(total=epochs * steps_per_epoch, desc="semi" if semi else "train", disable=not progress,
               leave=False, dynamic_ncols=True)
    for _ in range(epochs):
        order = torch.randperm(len(pool), generator=generator).tolist()
        order = (order * batch_size)[:max(len(order), batch_size)]
        for step in range(steps_per_epoch):
            batch_index = [pool[j] for j in order[step * batch_size:(step + 1) * batch_size]]
            last_loss = run.step(make_batch(images, points, original_sizes, batch_index, augment, generator))
            iterations += 1
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.3f}")
    bar.close()
    model.eval()
    return TrainResult(epochs, iterations, time.perf_counter() - started, last_loss)


class _Run:
    """The moving parts of one training run, all owned here: the schedule of the optimiser it is given, the
    mixed-precision scaler and, with ``semi``, the OVAAL+ teacher (a copy of the model as the run begins)."""

    def __init__(self, model: SegmentationClassifier, config: EngineConfig, device: torch.device,
                 normalization: tuple[Sequence[float], Sequence[float]], optimizer: torch.optim.Optimizer,
                 total_steps: int, semi: bool, counts: torch.Tensor | None = None) -> None:
        self.model, self.config, self.device, self.normalization = model, config, device, normalization
        self.counts = counts
        self.optimizer = optimizer
        self.teacher = copy.deepcopy(model).eval() if semi else None
        self.schedule = build_schedule(optimizer, config, total_steps)
        self.use_amp = config.amp and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)

    def step(self, batch: Batch) -> float:
        """One optimiser step on one batch; returns its loss."""
        mean, std = self.normalization
        inputs = normalize(batch.images.to(self.device, non_blocking=True), mean, std)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.use_amp):
            logits = self.model(inputs)
            loss = point_loss(self.model, logits, batch.points, self.config, self.counts)
            if self.teacher is not None:
                weak = normalize(batch.weak.to(self.device, non_blocking=True), mean, std)
                loss = loss + self.config.semi_alpha * semi_loss(logits, self.teacher, batch, weak, self.config)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.schedule.step()
        if self.teacher is not None and SEMI_TEACHERS[self.config.semi_teacher]:
            update_ema(self.teacher, self.model, self.config.semi_ema_decay)
        return float(loss.detach())


def save_checkpoint(path: str | Path, checkpoint: dict[str, Any]) -> None:
    """Write a checkpoint dict atomically: a reader sees the old file or the new one, never half of one."""
    write_atomically(path, lambda handle: torch.save(checkpoint, handle))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint`` (tensors land on the CPU)."""
    return torch.load(Path(path), map_location="cpu", weights_only=True)
