"""Where round jobs run. The embedded default runs ``engine.job.run_round`` in the calling thread (the project's
worker); with ``REDIS_URL`` set they go to RQ workers on other machines (``queue_worker.RQJobs``) through the same
``run`` signature."""

from __future__ import annotations

from typing import Any, Protocol

from ..config import Config
from ..engine.job import RoundJob, RoundResult, run_round


class JobRunner(Protocol):
    """Runs one round job to its result (raising what the job raised).

    ``project`` names the project the job belongs to (its Label Studio id): a queue uses it with ``job.job_id`` as
    the job's id, so one project never has two copies of a job and projects' jobs never collide.
    """

    def run(self, job: RoundJob, project: int | str = "") -> RoundResult: ...


class InProcessJobs:
    """Round jobs in this process: nothing else to start, the default of ``make run``."""

    def run(self, job: RoundJob, project: int | str = "") -> RoundResult:
        return run_round(job)

    def status(self) -> dict[str, Any]:
        return {"kind": "in-process"}


def job_runner(config: Config) -> JobRunner:
    """The runner the settings ask for: RQ on ``REDIS_URL`` when it is set, else this process."""
    if not config.redis_url:
        return InProcessJobs()
    from .queue_worker import RQJobs  # rq and redis are imported only when a queue is configured

    return RQJobs(config)
