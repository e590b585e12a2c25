"""Where the engine runs: the device, and torch's process-wide CPU threads.

Thread settings belong to a process, not to a learner, so only entry points call ``configure_torch`` (the simulator's
CLI, the backend's app factory, a queue worker): a learner built in a worker thread never changes them.
"""

from __future__ import annotations

import torch

from ..config import EngineConfig


def resolve_device(name: str) -> torch.device:
    """``auto`` means CUDA when present, else CPU; asking for CUDA without one is an error, not a silent fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} but torch sees no CUDA device here: use device=auto or cpu")
    return device


def configure_torch(config: EngineConfig) -> None:
    """Apply ``num_threads`` (0 = torch's default) to this process."""
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
