"""OVAAL+ pseudo-labels: the refinement rules and teachers of ``SEMI_RULE`` and ``SEMI_TEACHER``, by name.

Tensor methods only, no torch import: ``config/`` takes its valid names from ``SEMI_RULES`` and ``SEMI_TEACHERS`` in
processes that never load torch. ``train.py`` makes the teacher and the loss (``losses.ova_semi_loss``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .scorers import score_binary_entropy

if TYPE_CHECKING:
    from torch import Tensor


def refine_paper(pseudo: Tensor, index: Tensor, teacher_probs: Tensor) -> Tensor:
    """The paper's eq. 3: the picked pixels' thresholded predictions, inverted.

    Shape: pseudo (B, C, N) in {0, 1}, index (B, C, K) into N, teacher_probs (B, C, H, W) -> (B, C, K).
    """
    return 1 - pseudo.gather(-1, index)


def refine_wta(pseudo: Tensor, index: Tensor, teacher_probs: Tensor) -> Tensor:
    """The Winner-Takes-All answer at the picked pixels: 1 where the class wins the argmax over all heads, else 0.

    Why (the default): on CamVid the paper's inversion flips pixels the model had right about half the time
    (benchmarks/inversion_diagnostic.py), so it adds noise; where a head's threshold disagrees with the argmax over
    all heads, the argmax is the better-informed answer. Shape: as ``refine_paper``.
    """
    winner = teacher_probs.new_zeros(teacher_probs.shape).scatter_(1, teacher_probs.argmax(1, keepdim=True), 1.0)
    return winner.reshape(pseudo.shape).gather(-1, index)


SEMI_RULES: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {"paper": refine_paper, "wta": refine_wta}
"""Rule name -> the targets it sets at each class's most uncertain pixels."""

SEMI_TEACHERS: dict[str, bool] = {"ema": True, "frozen": False}
"""Teacher name -> whether it follows the student: ``ema``, a mean teacher (after every step, an exponential moving
average of the student's weights, ``SEMI_EMA_DECAY``) on the un-jittered view; ``frozen``, the model as the final
phase began (the paper)."""


def refine_pseudo_labels(teacher_probs: Tensor, top_l: int, rule: str = "paper") -> Tensor:
    """OVAAL+ pseudo-labels: each class's thresholded binary prediction, refined at its ``top_l`` most uncertain
    pixels by ``rule`` (a name of ``SEMI_RULES``).

    Shape: (B, C, H, W) probabilities -> (B, C, H, W) float targets in {0, 1}.
    """
    try:
        refine = SEMI_RULES[rule]
    except KeyError:
        raise ValueError(f"unknown OVAAL+ rule {rule!r}: choose one of {', '.join(SEMI_RULES)}") from None
    pseudo = (teacher_probs > 0.5).to(teacher_probs.dtype)
    if top_l <= 0:
        return pseudo
    batch, classes = pseudo.shape[:2]
    flat = pseudo.reshape(batch, classes, -1)
    uncertain = score_binary_entropy(teacher_probs).reshape(batch, classes, -1)
    index = uncertain.topk(min(top_l, flat.shape[-1]), dim=-1).indices
    flat.scatter_(-1, index, refine(flat, index, teacher_probs))
    return flat.reshape_as(pseudo)
