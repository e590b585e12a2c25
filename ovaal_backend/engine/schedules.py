"""Learning-rate schedules and their registry: the names of ``LR_SCHEDULE`` and the factor each applies to ``LR``.

Plain arithmetic, no torch: ``config/`` takes its valid names from ``LR_SCHEDULES`` in processes that never load
torch, and ``train.build_schedule`` hands the factor to torch's ``LambdaLR``.
"""

from __future__ import annotations

import math
from collections.abc import Callable


def constant_factor(step: int, total_steps: int) -> float:
    """The paper's schedule: ``LR`` throughout."""
    return 1.0


def cosine_factor(step: int, total_steps: int) -> float:
    """From 1 down to 0 along half a cosine by the run's last step.

    Why: with a constant rate the model at the end of a round is wherever the last batches left it, and one extra
    epoch moved the random baseline by 2.8 mIoU; decaying to zero ends every round at a settled model.
    """
    return 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))


LR_SCHEDULES: dict[str, Callable[[int, int], float]] = {"cosine": cosine_factor, "constant": constant_factor}
"""Schedule name -> factor of ``LR`` at step ``step`` of a run of ``total_steps``."""
