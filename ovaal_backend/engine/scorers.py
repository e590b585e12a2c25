"""Uncertainty scorers and their registry: the selection names of ``SELECTION`` (besides ``random``) and what each
name computes.

Scorers take probabilities (B, C, H, W) and return uncertainty where HIGHER MEANS MORE INFORMATIVE, so every selector
(``acquisition.py``) ranks the same way. They use tensor methods only and this module imports no torch: ``config/``
takes its valid names from ``SCORERS`` in processes that never load torch (the web server's parent, ``check``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

EPS = 1e-6


def score_binary_entropy(probs: Tensor) -> Tensor:
    """Per-class binary entropy (nats) of independent sigmoid outputs.

    Shape: (B, C, H, W) -> (B, C, H, W). For two outcomes entropy, margin and least confidence rank pixels identically.
    """
    p = probs.clamp(EPS, 1 - EPS)
    return -(p.xlogy(p) + (1 - p).xlogy(1 - p))


def score_entropy(probs: Tensor) -> Tensor:
    """Shannon entropy of a softmax over classes. Shape: (B, C, H, W) -> (B, H, W)."""
    return -probs.xlogy(probs).sum(dim=1)


def normalised_entropy(probs: Tensor, ova: bool, class_dim: int,
                       combine: Callable[[Tensor], Tensor] = lambda entropy: entropy) -> Tensor:
    """Uncertainty in [0, 1] of class probabilities: ``combine`` (how an OVA caller joins its classes: the mean over
    an image, the asking class at a queried pixel) of each class's binary entropy over log 2 (OVA), or the class
    distribution's entropy over log C along ``class_dim`` (multi-class; probabilities clamped at 1e-12).

    The one normalised entropy of the engine: the image's score that orders its tasks and each query's uncertainty.
    The selection's scorers above rank pixels and need no scale.
    """
    if ova:
        return combine(score_binary_entropy(probs)) / np.log(2)
    p = probs.clamp_min(1e-12)
    return -(p * p.log()).sum(class_dim) / np.log(probs.shape[class_dim])


def score_margin(probs: Tensor) -> Tensor:
    """One minus the gap between the two most probable classes. Shape: (B, C, H, W) -> (B, H, W)."""
    top2 = probs.topk(2, dim=1).values
    return 1 - (top2[:, 0] - top2[:, 1])


def score_least_confidence(probs: Tensor) -> Tensor:
    """One minus the top class probability. Shape: (B, C, H, W) -> (B, H, W)."""
    return 1 - probs.max(dim=1).values


@dataclass(frozen=True)
class Scorer:
    """A selection's scorer and how its scores are ranked.

    ``per_class``: the scorer returns one score per class (B, C, H, W) and each class picks its own pixels
    (``acquisition.select_per_class``, the OVA selection); otherwise it scores the class distribution (B, H, W) and
    the image's top pixels are picked (``acquisition.select_top``), over sigmoids normalised to sum to one for an
    OVA classifier.
    ``other_half``: a per-class scorer that picks only half of a round's pixels; the selection named here (a scorer
    of the class distribution) picks the other half among the pixels left.
    """

    score: Callable[[Tensor], Tensor]
    per_class: bool = False
    other_half: str | None = None


SCORERS: dict[str, Scorer] = {
    "ova": Scorer(score_binary_entropy, per_class=True),
    "margin": Scorer(score_margin),
    "entropy": Scorer(score_entropy),
    "least-confidence": Scorer(score_least_confidence),
    # issue 15's budget-aware selection: One-vs-All's per-class picks for half the pixels, margin's for the other
    # half, since margin led below about 40 px per image in the paper's own CamVid figures (the cold-start band)
    "ova-and-margin": Scorer(score_binary_entropy, per_class=True, other_half="margin"),
}
"""Selection name -> scorer: the one list of scoring selections (``config.SELECTIONS`` adds ``random``)."""


def get_scorer(name: str) -> Scorer:
    """The scorer of selection ``name``; the error lists the valid names."""
    try:
        return SCORERS[name]
    except KeyError:
        raise ValueError(f"unknown scorer {name!r}: choose one of {', '.join(SCORERS)}") from None
