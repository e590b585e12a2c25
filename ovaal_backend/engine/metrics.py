"""Evaluation: one confusion matrix over a whole set (void ignored), IoU, and the diversity of a selection."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ..config import IGNORE_INDEX


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) counts, rows = ground truth, columns = prediction; IGNORE_INDEX targets are skipped."""
    keep = target != IGNORE_INDEX
    index = target[keep].long() * num_classes + pred[keep].long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes).cpu()


def iou_per_class(confusion: torch.Tensor) -> torch.Tensor:
    """IoU of every class from a confusion matrix; NaN for a class absent from both prediction and ground truth."""
    confusion = confusion.double()
    true_pos = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - true_pos
    return torch.where(union > 0, true_pos / union.clamp(min=1), torch.full_like(union, math.nan))


def mean_iou(confusion: torch.Tensor) -> float:
    """Mean IoU in percent over the classes that occur (NaN classes are left out)."""
    return float(torch.nanmean(iou_per_class(confusion)) * 100)


def spatial_diversity(coords_per_image: Sequence[np.ndarray]) -> float:
    """Paper Table III: standard deviation of the selected pixels' coordinates, averaged over images.

    Each image's (row, col) pairs are pooled into one array before taking the standard deviation.
    """
    stds = [float(np.std(c[:, :2].astype(np.float64))) for c in coords_per_image if len(c) > 1]
    return float(np.mean(stds)) if stds else 0.0


def semantic_diversity(labels: np.ndarray, num_classes: int) -> float:
    """Paper Table III: entropy (bits) of the class distribution of the selected pixels; void answers left out."""
    labels = np.asarray(labels)
    labels = labels[(labels >= 0) & (labels < num_classes)]
    if labels.size == 0:
        return 0.0
    p = np.bincount(labels, minlength=num_classes) / labels.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())
