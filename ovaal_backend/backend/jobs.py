"""Where round jobs run. The embedded default runs ``engine.job.run_round`` in the calling thread (the project's
worker); a queue on other machines plugs in here with the same ``run`` signature."""

from __future__ import annotations

from typing import Protocol

from ..engine.job import RoundJob, RoundResult, run_round


class JobRunner(Protocol):
    """Runs one round job to its result (raising what the job raised)."""

    def run(self, job: RoundJob) -> RoundResult: ...


class InProcessJobs:
    """Round jobs in this process: nothing else to start, the default of ``make run``."""

    def run(self, job: RoundJob) -> RoundResult:
        return run_round(job)
