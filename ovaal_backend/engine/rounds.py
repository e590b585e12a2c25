"""The round plan: how many pixels each round asks for, which rounds are random, and when the final phase runs.

One plan for both drivers (the simulator and the backend), so the loop is decided in one place:
round 0 asks ``init_pixels`` random pixels per image (no model yet); rounds 1..``rounds`` ask ``pixels_per_round``
chosen by the model; the training after round ``rounds`` is the last one and adds the final phase (``semi_epochs``
epochs, with the OVAAL+ loss when ``semi``); after it nothing more is asked.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import EngineConfig

START = -1
"""The round that ended when no round has: the work at the start (``RoundJob.ended_round``, the backend's
``training_round``) only picks round 0's random pixels."""


@dataclass(frozen=True)
class RoundPlan:
    """The loop's schedule, from the config's acquisition and OVAAL+ fields."""

    init_pixels: int
    pixels_per_round: int
    rounds: int
    semi: bool
    semi_epochs: int

    @classmethod
    def from_config(cls, config: EngineConfig) -> RoundPlan:
        return cls(config.init_pixels, config.pixels_per_round, config.rounds, config.semi, config.semi_epochs)

    @property
    def budget(self) -> int:
        """Pixels per image once every round is answered."""
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


def round_job_id(generation: int, version: int, ended_round: int) -> str:
    """The id of a round's job (``RoundJob.job_id``): model generation, version to produce and the round that ended.

    It lives here, with the plan and without torch, so the backend can name the job its state waits for without
    importing the engine's heavy modules (``project/state.py`` is imported by ``validate.py`` and ``cleanup.py``).
    """
    return f"g{generation}-v{version}-r{ended_round}"
