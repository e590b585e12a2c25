"""Losses on sparse point labels, and the OVAAL+ semi-supervised inversion loss.

Point losses take logits already sampled at the labelled points ((P, C) logits, (P,) labels), so augmentation never
has to rasterise a sparse mask: no click is lost or duplicated by resizing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .acquisition import score_binary_entropy
from .config import IGNORE_INDEX


def sparse_ova_bce(logits: torch.Tensor, labels: torch.Tensor, balance: bool = True) -> torch.Tensor:
    """Per-class binary cross-entropy on labelled points (paper eq. 2), averaged over classes.

    One answer is a positive for its class and a negative for every other class, so with C classes each binary problem
    sees about C-1 negatives per positive. With ``balance`` each class's positives and negatives weigh half each
    (classes with no positive yet use negatives only), which keeps minority classes from collapsing to "never".

    Shape: logits (P, C), labels (P,) with IGNORE_INDEX for points that train nothing -> scalar.
    """
    keep = labels != IGNORE_INDEX
    logits, labels = logits[keep], labels[keep]
    if labels.numel() == 0:
        return logits.sum() * 0.0
    targets = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
    per_point = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
    if not balance:
        return per_point.mean()
    positives = targets.sum(0)
    negatives = targets.shape[0] - positives
    pos_loss = (per_point * targets).sum(0) / positives.clamp(min=1)
    neg_loss = (per_point * (1 - targets)).sum(0) / negatives.clamp(min=1)
    has_pos = (positives > 0).to(per_point.dtype)
    has_neg = (negatives > 0).to(per_point.dtype)
    per_class = (0.5 * pos_loss * has_pos + 0.5 * neg_loss * has_neg) * 2 / (has_pos + has_neg).clamp(min=1)
    return per_class.mean()


def sparse_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Multi-class cross-entropy on labelled points (the PixelPick baseline). Shape: (P, C), (P,) -> scalar."""
    keep = labels != IGNORE_INDEX
    if not keep.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[keep].float(), labels[keep])


def invert_uncertain(teacher_probs: torch.Tensor, top_l: int) -> torch.Tensor:
    """OVAAL+ pseudo-labels (paper eq. 3): each class's binary prediction, inverted at its ``top_l`` most uncertain
    pixels.

    Shape: (B, C, H, W) probabilities -> (B, C, H, W) float targets in {0, 1}.
    """
    pseudo = (teacher_probs > 0.5).to(teacher_probs.dtype)
    if top_l <= 0:
        return pseudo
    batch, classes = pseudo.shape[:2]
    flat = pseudo.reshape(batch, classes, -1)
    uncertain = score_binary_entropy(teacher_probs).reshape(batch, classes, -1)
    index = uncertain.topk(min(top_l, flat.shape[-1]), dim=-1).indices
    flat.scatter_(-1, index, 1 - flat.gather(-1, index))
    return flat.reshape_as(pseudo)


def ova_semi_loss(logits: torch.Tensor, pseudo_targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy between the student's sigmoid outputs and refined pseudo-labels, over all pixels (eq. 3).

    Shape: logits (B, C, H, W), pseudo_targets (B, C, H, W) -> scalar.
    """
    return F.binary_cross_entropy_with_logits(logits.float(), pseudo_targets.float())
