"""Where round jobs run. The embedded default runs ``engine.job.run_round`` in the calling thread (the project's
worker); with ``REDIS_URL`` set they go to RQ workers on other machines (``queue_jobs.RQJobs``) through the same
``run`` signature. Either way a job that still fails after ``JOB_RETRIES`` re-runs raises ``JobFailedError``: its
project holds the round (shown in /metrics) until ``python -m ovaal_backend requeue`` releases it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from ..config import Config
from ..engine.job import RoundJob, RoundResult, run_round

log = logging.getLogger(__name__)


class JobFailedError(RuntimeError):
    """A round job failed for good (its retries spent): re-running it unasked would fail the same way.

    Args:
        job_id: The job's id where it ran (the queue's id, or ``RoundJob.job_id`` in-process).
        reason: Its exception (type and message) on one line, shown in /metrics.
        where: Where it ran, for the message.
    """

    def __init__(self, job_id: str, reason: str, where: str) -> None:
        super().__init__(f"round job {job_id} failed {where}: {reason}")
        self.job_id, self.reason = job_id, reason


class JobRunner(Protocol):
    """Runs one round job to its result (raising ``JobFailedError`` when it failed for good).

    ``project`` names the project the job belongs to (its Label Studio id): a queue uses it with ``job.job_id`` as
    the job's id, so one project never has two copies of a job and projects' jobs never collide.
    """

    def run(self, job: RoundJob, project: int | str = "") -> RoundResult: ...


class InProcessJobs:
    """Round jobs in this process: nothing else to start, the default of ``make run``.

    At most ``slots`` jobs run at once (``MAX_TRAINING_JOBS``); the projects' worker threads beyond them wait for a
    slot. Why: each job holds a model, its optimizer and the whole pool's images in memory, and several projects
    ending their rounds together would otherwise train side by side until the process runs out of memory.

    Args:
        retries: Re-runs of a failed job before it fails for good (``JOB_RETRIES``), as a queue worker would do.
        slots: Jobs that may run at once.
    """

    def __init__(self, retries: int = 0, slots: int = 1) -> None:
        self.retries = retries
        self.slots = slots
        self._free = threading.BoundedSemaphore(slots)
        self._lock = threading.Lock()
        self._running: list[str] = []
        self._waiting: list[str] = []

    def run(self, job: RoundJob, project: int | str = "") -> RoundResult:
        with self._slot(f"{project}-{job.job_id}" if project != "" else job.job_id):
            return self._run(job, project)

    @contextmanager
    def _slot(self, name: str) -> Iterator[None]:
        """Hold one of the ``slots`` for the block, waiting for one to come free."""
        with self._lock:
            self._waiting.append(name)
        if not self._free.acquire(blocking=False):
            log.info("round job %s waits: MAX_TRAINING_JOBS=%d jobs are running", name, self.slots)
            self._free.acquire()
        with self._lock:
            self._waiting.remove(name)
            self._running.append(name)
        try:
            yield
        finally:
            with self._lock:
                self._running.remove(name)
            self._free.release()

    def _run(self, job: RoundJob, project: int | str) -> RoundResult:
        runs = 0
        while True:
            try:
                return run_round(job)
            except Exception as err:
                runs += 1
                log.exception("project %s: round job %s failed (run %d of %d)", project, job.job_id, runs,
                              self.retries + 1)
                if runs > self.retries:
                    raise JobFailedError(job.job_id, f"{type(err).__name__}: {err}"[:500],
                                         f"in the backend's process after {runs} run(s)") from err

    def status(self) -> dict[str, Any]:
        """The runner for /metrics: its slots, and the jobs (``<project>-<job id>``) running and waiting."""
        with self._lock:
            return {"kind": "in-process", "slots": self.slots, "running": list(self._running),
                    "waiting": list(self._waiting)}


def job_runner(config: Config) -> JobRunner:
    """The runner the settings ask for: RQ on ``REDIS_URL`` when it is set, else this process."""
    if not config.redis_url:
        return InProcessJobs(config.job_retries, config.max_training_jobs)
    from .queue_jobs import RQJobs  # rq and redis are imported only when a queue is configured

    return RQJobs(config)
