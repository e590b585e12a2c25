"""The round plan: how many pixels each round asks for, which rounds are random, how each training after a round
runs, and when the final phase runs.

One plan for both drivers (the simulator and the backend), so the loop is decided in one place:
round 0 asks ``init_pixels`` random pixels per image (no model yet); rounds 1..``rounds`` ask ``pixels_per_round``
chosen by the model; the training after round ``rounds`` is the last one and adds the final phase (``semi_epochs``
epochs, with the OVAAL+ loss when ``semi``); after it nothing more is asked. ``engine/step.py`` runs one round of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the plan is plain arithmetic: config/ reads the budget from it without a cycle
    from ..config import EngineConfig

START = -1
"""The round that ended when no round has: the work at the start (``RoundJob.ended_round``, the backend's
``training_round``) only picks round 0's random pixels."""


@dataclass(frozen=True)
class Training:
    """One training run after a round, as the plan decides it.

    ``epochs``: passes over the labelled images; ``semi``: with the OVAAL+ loss; ``final``: the final phase;
    ``fresh``: start again from the pretrained encoder first (``retrain``, or ``final_from_scratch`` for the final
    phase; never before the first training, whose model is fresh already); ``last``: the round's last training,
    whose weights are the round's model (what the backend saves).
    """

    epochs: int
    semi: bool = False
    final: bool = False
    fresh: bool = False
    last: bool = True


@dataclass(frozen=True)
class RoundPlan:
    """The loop's schedule, from the config's acquisition, epoch and OVAAL+ fields."""

    init_pixels: int
    pixels_per_round: int
    rounds: int
    semi: bool
    semi_epochs: int
    first_round_epochs: int
    epochs: int
    retrain: bool
    final_from_scratch: bool

    @classmethod
    def from_config(cls, config: EngineConfig) -> RoundPlan:
        return cls(config.init_pixels, config.pixels_per_round, config.rounds, config.semi, config.semi_epochs,
                   config.first_round_epochs, config.epochs, config.retrain, config.final_from_scratch)

    @property
    def budget(self) -> int:
        """Pixels per image once every round is answered (``EngineConfig.budget`` reads it here)."""
        return self.init_pixels + self.rounds * self.pixels_per_round

    def pixels(self, round_index: int) -> int:
        """Pixels per image that round ``round_index`` asks for."""
        return self.init_pixels if round_index == 0 else self.pixels_per_round

    def is_random(self, round_index: int) -> bool:
        """Round 0 is the cold start: random pixels, since there is no model to ask."""
        return round_index == 0

    def is_last(self, round_index: int) -> bool:
        """True when the training after ``round_index`` is the final one (the budget is spent)."""
        return round_index >= self.rounds

    def has_final_phase(self, round_index: int) -> bool:
        """True when the training after ``round_index`` continues with the final (OVAAL+) phase."""
        return self.is_last(round_index) and self.semi_epochs > 0

    def next_round(self, round_index: int) -> int | None:
        """The round whose queries follow the training after ``round_index`` (-1 = the start), None after the last."""
        return None if self.is_last(round_index) else round_index + 1

    def trainings(self, round_index: int, trained: bool) -> tuple[Training, ...]:
        """The training runs after round ``round_index``, in order, for a model that has (``trained``) or has not
        been trained before: none at the start; the round's training; then the final phase after the last round.

        The first training (and every one with ``retrain``) runs ``first_round_epochs``, later ones ``epochs``.
        """
        if round_index == START:
            return ()
        final = self.has_final_phase(round_index)
        epochs = self.first_round_epochs if not trained or self.retrain else self.epochs
        active = Training(epochs, fresh=trained and self.retrain, last=not final)
        return (active, self.final_phase(self.semi)) if final else (active,)

    def final_phase(self, semi: bool) -> Training:
        """The final phase after the last round's training (with the OVAAL+ loss when ``semi``)."""
        return Training(self.semi_epochs, semi=semi, final=True, fresh=self.final_from_scratch)


def round_job_id(generation: int, version: int, ended_round: int) -> str:
    """The id of a round's job (``RoundJob.job_id``): model generation, version to produce and the round that ended.

    It lives here, with the plan and without torch, so the backend can name the job its state waits for without
    importing the engine's heavy modules (``project/state.py`` is imported by ``validate.py`` and ``cleanup.py``).
    """
    return f"g{generation}-v{version}-r{ended_round}"
