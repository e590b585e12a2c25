"""The training profiles: the engine defaults that depend on the machine that trains (one per machine kind)."""

from __future__ import annotations

from typing import Any

TRAIN_PROFILES: dict[str, dict[str, Any]] = {
    "gpu": {},
    "cpu": {"image_height": 176, "image_width": 240, "epochs": 2, "first_round_epochs": 3, "semi_epochs": 6},
}
"""Training defaults per machine: ``gpu`` = the dataclass defaults (the paper's size, 20 epochs a round); ``cpu`` is
sized so that a round of a 100-image project ends in about 2 minutes on 2 cores (docs/benchmarks.md). Its final phase
runs once per project and is longer (6 epochs): in the CamVid grid 6 final epochs instead of 2 raised every run
measured, both OVA and PixelPick, by about 2 mIoU. It is the one CPU profile: the simulator's ``cpu`` and ``converged``
presets start from it (simulator/presets.py says which of its values their protocol changes, and why). A profile
never replaces a setting given on purpose (environment, ``from_env`` overrides, constructor arguments: ``explicit``),
whatever its value; ``auto`` picks ``gpu`` where CUDA is present on the machine that trains (a queue worker decides for
itself)."""

PROFILE_CHOICES = ("auto", *TRAIN_PROFILES)
"""Every ``TRAIN_PROFILE``: a profile's name, or ``auto`` (decided by the training machine's CUDA)."""

