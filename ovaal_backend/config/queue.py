"""The queue's settings: how round jobs run, in the backend's process or through RQ on Redis."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .part import ConfigError, Part, explicit_field, records_given


@records_given
@dataclass(frozen=True)
class QueueConfig(Part):
    """How round jobs run: in the backend's process, or through RQ on Redis (backend/queue_jobs.py, queue_worker.py)."""

    redis_url: str = ""  # redis://host:6379/0: round jobs go to RQ workers ("" = they run in this process)
    job_queue: str = "ovaal"  # RQ queue name shared by the backend and its workers
    job_timeout: int = 21600  # seconds one round job may run on a worker before it is stopped (and retried)
    job_retries: int = 2  # re-runs of a job whose worker failed or died before it counts as failed
    worker_heartbeat: int = 30  # seconds between a busy worker's heartbeats; ~2 missed ones = the job is re-run
    # round jobs running at once in the backend's own process (without REDIS_URL); other projects' jobs wait
    max_training_jobs: int = 1

    explicit: frozenset[str] = explicit_field()

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError for values that cannot work, naming the setting."""
        if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", self.job_queue):
            raise ConfigError(f"job_queue={self.job_queue!r}: use 1-64 letters, digits, '_', '.', ':' or '-'")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("redis_url must start with redis://, rediss:// or unix:// (or be empty: jobs in-process)")
        for name in ("job_timeout", "worker_heartbeat"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1 second, got {getattr(self, name)}")
        if self.max_training_jobs < 1:
            raise ConfigError(f"max_training_jobs must be at least 1, got {self.max_training_jobs}")
        if self.job_retries < 0:
            raise ConfigError(f"job_retries must not be negative, got {self.job_retries}")
        self._check_explicit()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able settings, the Redis password removed."""
        return {**super().to_dict(), "redis_url": redact_url(self.redis_url)}


def redact_url(url: str) -> str:
    """A URL with the password of its ``user:password@`` part replaced by ``***`` (for logs and /metrics)."""
    return re.sub(r"(?<=://)([^/@]*?):[^/@]*@", r"\1:***@", url)
