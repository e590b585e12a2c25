"""Losses on sparse point labels, and the OVAAL+ semi-supervised loss (its pseudo-labels: ``pseudo_labels.py``).

Point losses take logits already sampled at the labelled points ((P, C) logits, (P,) labels), so augmentation never
has to rasterise a sparse mask: no click is lost or duplicated by resizing.

Class re-weighting (``balance``) is OUR DEPARTURE from the paper, whose loss (method.md, L_active) is the plain mean
over labelled pixels. Without it the minority heads of a One-vs-All model collapse to "never" on CamVid (measured in
docs/benchmarks.md); the same strength is offered to the softmax baseline, so a comparison can tell One-vs-All
apart from re-weighting.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..config import IGNORE_INDEX


def _mix(plain: torch.Tensor, balanced: torch.Tensor, balance: float) -> torch.Tensor:
    """``balance`` 0 = the plain loss, 1 = the class-balanced one, in between a linear mix."""
    if balance <= 0:
        return plain
    if balance >= 1:
        return balanced
    return (1 - balance) * plain + balance * balanced


def sparse_ova_bce(logits: torch.Tensor, labels: torch.Tensor, balance: float = 1.0,
                   counts: torch.Tensor | None = None) -> torch.Tensor:
    """Per-class binary cross-entropy on labelled points (the paper's L_active), averaged over classes.

    One answer is a positive for its class and a negative for every other class, so with C classes each binary problem
    sees about C-1 negatives per positive. Balanced, each class's positives and negatives weigh half each (classes with
    no positive yet use negatives only), which keeps minority classes from collapsing to "never". The sides are
    counted in the batch, or with ``counts`` (C,) (every labelled click's class, ``click_counts``) over all clicks
    (``global_balanced_bce``).

    Shape: logits (P, C), labels (P,) with IGNORE_INDEX for points that train nothing -> scalar.
    """
    keep = labels != IGNORE_INDEX
    logits, labels = logits[keep], labels[keep]
    if labels.numel() == 0:
        return logits.sum() * 0.0
    targets = F.one_hot(labels, logits.shape[1]).float()
    per_point = F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none")
    if balance <= 0:
        return per_point.mean()
    balanced = (balanced_bce(per_point, targets, torch.ones_like(targets)) if counts is None
                else global_balanced_bce(per_point, targets, counts))
    return _mix(per_point.mean(), balanced, balance)


def click_counts(points: Sequence[np.ndarray], num_classes: int) -> torch.Tensor:
    """How many labelled points each class has over a pool's point arrays ((N, 3) rows of y, x, class; IGNORE_INDEX
    left out): the class weights of ``global_balanced_bce`` and the prior of logit adjustment. Shape: (C,) float."""
    labels = [np.asarray(p)[:, 2] for p in points if len(p)]
    labels = np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, dtype=np.int64)
    labels = labels[labels != IGNORE_INDEX]
    return torch.from_numpy(np.bincount(labels, minlength=num_classes)[:num_classes]).float()


def global_balanced_bce(per_point: torch.Tensor, targets: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``balanced_bce`` with each class's sides weighed by the counts of ALL clicks instead of the batch's.

    A positive of class c weighs N / (2 P_c) and a negative N / (2 (N - P_c)), N all clicks and P_c class c's (a
    class with one side only weighs it 1): on a batch whose classes mirror all clicks this is ``balanced_bce``. Why:
    per batch, a batch's single click of a large class weighs as much as all its positives together, so the
    weights swing from batch to batch; global counts fix them for the whole training (issue 15 item 6).
    Shape: per_point, targets (P, C), counts (C,) -> scalar.
    """
    counts = counts.to(per_point.device).float()
    total = counts.sum().clamp(min=1)
    negatives = total - counts
    sides = (counts > 0).float() + (negatives > 0).float()
    w_pos = total / (sides.clamp(min=1) * counts.clamp(min=1))
    w_neg = total / (sides.clamp(min=1) * negatives.clamp(min=1))
    weights = targets * w_pos + (1 - targets) * w_neg
    return (per_point * weights).mean(0).mean()


def balanced_bce(per_pixel: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean over classes of (positives' mean loss + negatives' mean loss) / 2, counting only where ``weight`` is 1.

    A class with only positives or only negatives uses the side it has. Shape: (..., C) for all three -> scalar.
    """
    classes = per_pixel.shape[-1]
    per_pixel, targets, weight = (t.reshape(-1, classes) for t in (per_pixel, targets, weight))
    pos, neg = targets * weight, (1 - targets) * weight
    positives, negatives = pos.sum(0), neg.sum(0)
    pos_loss = (per_pixel * pos).sum(0) / positives.clamp(min=1)
    neg_loss = (per_pixel * neg).sum(0) / negatives.clamp(min=1)
    has_pos, has_neg = (positives > 0).float(), (negatives > 0).float()
    per_class = (pos_loss * has_pos + neg_loss * has_neg) / (has_pos + has_neg).clamp(min=1)
    return per_class.mean()


def sparse_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, balance: float = 0.0,
                         counts: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-class cross-entropy on labelled points (the PixelPick baseline).

    Balanced, every class present among the points weighs the same (the mean over classes of each class's mean
    loss): class weights from the clicks' class counts, the softmax's counterpart of the OVA balance; the batch's
    counts, or with ``counts`` (C,) those of all clicks (a point of class c weighs N / (K P_c), K classes clicked).
    Shape: (P, C), (P,) -> scalar.
    """
    keep = labels != IGNORE_INDEX
    if not keep.any():
        return logits.sum() * 0.0
    logits, labels = logits[keep].float(), labels[keep]
    per_point = F.cross_entropy(logits, labels, reduction="none")
    if balance <= 0:
        return per_point.mean()
    if counts is not None:
        counts = counts.to(logits.device).float()
        weights = counts.sum() / (counts[labels].clamp(min=1) * (counts > 0).sum())
        return _mix(per_point.mean(), (per_point * weights).mean(), balance)
    counts = torch.bincount(labels, minlength=logits.shape[1]).float()
    present = (counts > 0).sum()
    weights = 1.0 / (counts[labels] * present)
    return _mix(per_point.mean(), (per_point * weights).sum(), balance)


def ova_semi_loss(logits: torch.Tensor, pseudo_targets: torch.Tensor, weight: torch.Tensor | None = None,
                  balance: float = 0.0) -> torch.Tensor:
    """Binary cross-entropy between the student's sigmoid outputs and pseudo-labels (the paper's L_semi).

    ``weight`` (B, 1 or C, H, W) in {0, 1} leaves pixels out (crop padding, clicked pixels); ``balance`` weighs each
    class's pseudo-positives and pseudo-negatives like the active loss does.
    Shape: logits (B, C, H, W), pseudo_targets (B, C, H, W) -> scalar.
    """
    per_pixel = F.binary_cross_entropy_with_logits(logits.float(), pseudo_targets.float(), reduction="none")
    weight = torch.ones_like(per_pixel) if weight is None else weight.float().expand_as(per_pixel)
    plain = (per_pixel * weight).sum() / weight.sum().clamp(min=1)
    if balance <= 0:
        return plain
    channels_last = (t.movedim(1, -1) for t in (per_pixel, pseudo_targets.float(), weight))
    return _mix(plain, balanced_bce(*channels_last), balance)
