"""Logit adjustment: a decision rule that gives large classes back what a class-balanced loss took from them.

A loss that weighs every class's clicks the same (``class_balance`` > 0) trains the model as if all classes were
equally frequent, so Winner-Takes-All over its outputs favours rare classes at the borders of large ones (the 5-seed
grid: building, sky and road lost IoU out of sample). Adding ``tau * log(prior_c)`` to each class's logit before the
argmax moves the decision back towards the classes' real frequencies (Menon et al., "Long-tail learning via logit
adjustment", 2021). The prior comes from the labels the annotators gave (global click counts), which a real project
has too; ``tau`` = 0 is plain Winner-Takes-All.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .losses import click_counts


def click_log_prior(points: Sequence[np.ndarray], num_classes: int) -> torch.Tensor:
    """log of each class's share of the answered clicks (void and "can't tell" left out), with one pseudo-count
    per class so a class nobody clicked yet is not ruled out. Shape: (C,)."""
    counts = click_counts(points, num_classes).double() + 1.0
    return (counts / counts.sum()).log().float()


def adjusted_class_map(probabilities: torch.Tensor, is_ova: bool, log_prior: torch.Tensor,
                       tau: float) -> torch.Tensor:
    """Class map (B, H, W) from probabilities (B, C, H, W) after adding ``tau * log_prior`` to each class's logit.

    One-vs-All logits are the sigmoids' log-odds; a softmax's are its log-probabilities (the shift per class is the
    same either way). ``tau`` = 0 gives exactly Winner-Takes-All.
    """
    if tau == 0:
        return probabilities.argmax(dim=1)
    p = probabilities.float().clamp(1e-6, 1 - 1e-6)
    logits = (p.log() - (-p).log1p()) if is_ova else p.log()
    shift = tau * log_prior.to(logits.device).view(1, -1, 1, 1)
    return (logits + shift).argmax(dim=1)
