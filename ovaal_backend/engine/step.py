"""One round's sequence, the same for both drivers: train for the plan, then select the next round's queries.

The simulator (its oracle answers from ground truth) and the backend's round job (annotators answer in Label Studio)
each call ``round_step`` once per round with the answers so far; what a driver does between a training and the
selection (measure the model, save a checkpoint) it does in ``on_trained``. Only the plan (``rounds.RoundPlan``)
decides what a round trains and asks; only the learner runs it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..config import IGNORE_INDEX
from .learner import ActiveLearner, Queries
from .rounds import RoundPlan, Training
from .train import TrainResult


@dataclass
class Pool:
    """The pool as one round sees it.

    ``images`` (N, 3, h, w) uint8 at the training size; ``sizes`` each image's original (height, width); ``clicks``
    each image's answered pixels (n_i, 3) (row, col, label) at its original size, IGNORE_INDEX for void or "can't
    tell"; ``dense`` the grid points (``dense.grid_points``) of the images that have a full label map, by index:
    they train on them and are not asked again; ``excluded`` per image an (H, W) bool mask of pixels never asked
    (the simulator's ground-truth void), or None.
    """

    images: torch.Tensor
    sizes: list[tuple[int, int]]
    clicks: list[np.ndarray]
    dense: dict[int, np.ndarray] = field(default_factory=dict)
    excluded: list[np.ndarray] | None = None

    def training_points(self) -> list[np.ndarray]:
        """Each image's clicks plus its dense map's grid points."""
        if not self.dense:
            return self.clicks
        return [np.concatenate([p, self.dense[i]]) if i in self.dense else p for i, p in enumerate(self.clicks)]

    def asked(self) -> list[int]:
        """The images a round asks: those without a dense map."""
        return [i for i in range(len(self.clicks)) if i not in self.dense]

    def trainable(self) -> bool:
        """Whether any answer trains something (a click of a class, or a dense map's point)."""
        return (any(bool((p[:, 2] != IGNORE_INDEX).any()) for p in self.clicks)
                or any(len(d) for d in self.dense.values()))


@dataclass(frozen=True)
class Step:
    """What one round step produced: the next round's queries by pool index (empty after the last round) and the
    seconds its selection took."""

    queries: dict[int, Queries]
    select_seconds: float


OnTrained = Callable[[Training, TrainResult], None]
"""Called after each training of a step, before the selection: the simulator measures, the backend saves."""


def round_step(learner: ActiveLearner, plan: RoundPlan, ended_round: int, pool: Pool, train: bool = True,
               progress: bool = False, on_trained: OnTrained | None = None) -> Step:
    """After round ``ended_round`` (``rounds.START`` at the start): run the plan's trainings on every answer so far
    (unless ``train`` is False: the backend's resumed job, or nothing trainable yet), then pick the next round's
    pixels of every asked image. They are random in round 0 and while the learner has no trained model.
    """
    if train:
        for training in plan.trainings(ended_round, learner.trained):
            outcome = learner.train(pool.images, pool.training_points(), pool.sizes, training, progress=progress)
            if on_trained is not None:
                on_trained(training, outcome)
    started = time.perf_counter()
    next_round = plan.next_round(ended_round)
    if next_round is None:
        return Step({}, 0.0)
    return Step(select(learner, plan, next_round, pool), time.perf_counter() - started)


def select(learner: ActiveLearner, plan: RoundPlan, round_index: int, pool: Pool) -> dict[int, Queries]:
    """Round ``round_index``'s pixels of each asked image, by pool index, never an answered or excluded one."""
    ask = pool.asked()
    images = pool.images if len(ask) == len(pool.clicks) else pool.images[ask]
    excluded = None if pool.excluded is None else [pool.excluded[i] for i in ask]
    picked = learner.query(images, [pool.clicks[i] for i in ask], [pool.sizes[i] for i in ask],
                           plan.pixels(round_index), random=plan.is_random(round_index) or not learner.trained,
                           excluded=excluded)
    return dict(zip(ask, picked, strict=True))
