"""Round jobs on RQ workers, the backend's side: the web process enqueues, GPU machines train (``REDIS_URL`` set).

``RQJobs`` is the backend's ``JobRunner``: called in a project's worker thread, it enqueues the round job under its
queue id (``JobOrigin.queue_id``: the backend's instance id, the project, its folder's id, then generation, version
and round), or finds the job already there under that id, and polls until it ends. The worker's side is
``queue_worker.py``: ``python -m ovaal_backend worker`` (``run_worker``) runs an RQ worker (``work_horse.RoundWorker``)
whose work horse is a freshly spawned interpreter per job (CUDA is never used across a fork); it needs only Redis,
MODEL_DIR (shared, e.g. over NFS) and the image files the job names. Neither side imports torch or the engine at the
top: a worker starts in about a second, and only its horses load the model.

Whose job it is (``queue_origin.py``): the instance id is made once per MODEL_DIR and each project folder gets an id
of its own when its first job is enqueued (``folder_id``, a file in each), so two backends sharing a Redis never share
a job, and a result kept in Redis (``RESULT_TTL``) is never taken by a project whose folder was deleted and made anew.
A horse runs only a job of its own MODEL_DIR's instance and project folder, whose files all lie under its MODEL_DIR or
document root; any other fails at once with the reason (``JobRefusedError``), never touching a file.

Faults, and why no round is lost:

- SQLite under MODEL_DIR is the state of record; Redis only carries work. A job that vanished (Redis restarted
  without persistence) is enqueued again; Redis out of reach raises ``QueueJobError`` and the project's worker tries
  again later. A job that failed on every run rq gave it (``JOB_RETRIES``) raises ``JobFailedError`` naming the job
  and its reason: the project holds its round (``/metrics``: ``failed_job``) and the failed job stays in rq's failed
  registry until ``python -m ovaal_backend requeue`` puts it back (``requeue_failed``). Jobs are idempotent: a
  re-run whose checkpoint was saved reuses it (``engine.job.run_round``).
- A worker killed (kill -9 of it or its process group, a machine lost): its work horse ends with it at whatever
  point it was, start-up included (``work_horse``), the job's entry in the started registry stops being renewed and
  expires about ``2 * WORKER_HEARTBEAT + 5`` s later, and rq's abandoned-job handling (``StartedJobRegistry.cleanup``,
  which the waiting backend runs every few seconds) puts it back on the queue while retries are left
  (``JOB_RETRIES``), for another worker to run.
- The web process restarting while a job runs finds it again under the same id and picks up its result (kept
  ``RESULT_TTL`` seconds). One project never has two of its jobs queued at once: the driver waits for each.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError
from rq import Queue, Retry
from rq.exceptions import DuplicateJobError, InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, StartedJobRegistry
from rq.worker import Worker

from ..config import Config, ConfigError, redact_url
from .queue_origin import JobOrigin, connect

if TYPE_CHECKING:
    from ..engine.job import RoundJob, RoundResult
    from .jobs import JobFailedError

log = logging.getLogger(__name__)

JOB_FUNCTION = "ovaal_backend.backend.queue_worker.run_queued_round"
"""What a worker's work horse imports and calls with the RoundJob and its ``JobOrigin``."""
RESULT_TTL = 7 * 24 * 3600
"""Seconds a finished (or failed) job and its result stay in Redis: a backend restarted meanwhile picks them up."""
POLL_SECONDS = 1.0
"""How often the waiting backend reads the job's status."""
CLEANUP_SECONDS = 3.0
"""How often it runs rq's abandoned-job handling on the queue's started registry while its job runs."""
NO_WORKER_WARNING_SECONDS = 60.0
"""A job queued this long with no worker on its queue is logged (the job stays queued)."""
WAITING = (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED)


class QueueJobError(RuntimeError):
    """Redis could not be reached (or lost a job twice over); the project's worker retries later."""


class RQJobs:
    """``JobRunner`` that hands round jobs to RQ workers and waits for their results (see the module docstring).

    Args:
        config: Settings: ``redis_url``, ``job_queue``, ``job_timeout``, ``job_retries``.
        poll_seconds: Status poll interval.
    """

    def __init__(self, config: Config, poll_seconds: float = POLL_SECONDS) -> None:
        if not config.redis_url:
            raise ConfigError("RQJobs needs REDIS_URL")
        self.config = config
        self.poll_seconds = poll_seconds
        self._queue: Queue | None = None
        self._lock = threading.Lock()
        self._current: dict[str, str] = {}  # project -> id of the job its worker waits for

    @property
    def queue(self) -> Queue:
        """The RQ queue (connected on first use, so settings alone never need Redis)."""
        with self._lock:
            if self._queue is None:
                redis = connect(self.config.redis_url, socket_connect_timeout=5, socket_timeout=30,
                                health_check_interval=30)
                self._queue = Queue(self.config.job_queue, connection=redis)
            return self._queue

    def queue_id(self, job_id: str, project: int | str = "") -> str:
        """The queue's id of the round job ``job_id`` (``RoundJob.job_id``) of ``project`` (``JobOrigin.queue_id``)."""
        return JobOrigin.of(self.config.model_dir, project).queue_id(job_id)

    def run(self, job: RoundJob, project: int | str = "") -> RoundResult:
        origin = JobOrigin.of(self.config.model_dir, project)
        rq_id = origin.queue_id(job.job_id)
        digest = job_digest(job)  # the job holds the engine settings only (no key, no password, no Redis URL)
        self._current[str(project)] = rq_id
        try:
            return self._wait(self._submit(rq_id, job, digest, origin), job, digest, origin)
        except RedisError as err:
            raise QueueJobError(f"round job {rq_id}: Redis at {redact_url(self.config.redis_url)} failed "
                                f"({type(err).__name__}: {err}); the project retries it later") from err

    def _submit(self, rq_id: str, payload: RoundJob, digest: str, origin: JobOrigin) -> Job:
        """The job with this id: the one already on the queue (still waiting or running, or finished on the same
        pool), else a new one. A stale one (finished on another pool) is replaced; a failed or stopped one raises
        ``JobFailedError``: only ``requeue`` runs it again."""
        existing = self._fetch(rq_id)
        if existing is not None:
            status = existing.get_status(refresh=False)
            if status in WAITING:
                log.info("round job %s is already on queue '%s' (%s): waiting for it", rq_id, self.queue.name,
                         status.value)
                return existing
            if status != JobStatus.FINISHED:
                raise self._failed(existing, status)
            if existing.meta.get("digest") == digest:
                return existing
            log.info("round job %s finished on another pool: enqueued again", rq_id)
            existing.delete()
        return self._enqueue(rq_id, payload, digest, origin)

    def _enqueue(self, rq_id: str, payload: RoundJob, digest: str, origin: JobOrigin) -> Job:
        retries = self.config.job_retries
        try:
            job = self.queue.enqueue_call(
                JOB_FUNCTION, args=(payload, origin), job_id=rq_id, timeout=self.config.job_timeout,
                result_ttl=RESULT_TTL, failure_ttl=RESULT_TTL, description=f"round job {rq_id}",
                meta={"digest": digest, "project": origin.project}, retry=Retry(max=retries) if retries else None,
                unique=True)
        except DuplicateJobError:  # enqueued by someone else since we looked: wait for that one
            job = self._fetch(rq_id)
            if job is None:
                raise QueueJobError(f"round job {rq_id}: a duplicate appeared and vanished; retried later") from None
            return job
        log.info("round job %s enqueued on queue '%s' (%d images)", rq_id, self.queue.name, len(payload.keys))
        return job

    def _fetch(self, rq_id: str) -> Job | None:
        """The job under this id, or None (a half-written hash, e.g. after Redis lost it mid-run, is removed)."""
        try:
            job = Job.fetch(rq_id, connection=self.queue.connection)
            job.get_status(refresh=True)
            return job
        except (NoSuchJobError, InvalidJobOperation):
            return None
        except RedisError:
            raise
        except Exception as err:  # unreadable job data
            log.warning("round job %s: unreadable in Redis (%s); replaced", rq_id, err)
            self.queue.connection.delete(Job.key_for(rq_id))
            return None

    def _wait(self, job: Job, payload: RoundJob, digest: str, origin: JobOrigin) -> RoundResult:
        """Poll the job until it finishes (its result), fails (QueueJobError) or vanishes (enqueued again)."""
        from ..engine.job import RoundResult

        queued_since, warned, last_cleanup = time.monotonic(), False, 0.0
        while True:
            try:
                status = job.get_status(refresh=True)
            except InvalidJobOperation:  # the hash is gone: Redis restarted, or the job was deleted
                log.warning("round job %s vanished from Redis (restarted?): enqueued again", job.id)
                job = self._enqueue(job.id, payload, digest, origin)
                continue
            if status == JobStatus.FINISHED:
                result = job.return_value(refresh=True)
                if isinstance(result, RoundResult):
                    return result
                log.warning("round job %s finished but its result is gone: enqueued again", job.id)
                job.delete()
                job = self._enqueue(job.id, payload, digest, origin)
                continue
            if status not in WAITING:
                raise self._failed(job, status)
            now = time.monotonic()
            if status == JobStatus.STARTED:
                queued_since, warned = now, False
                if now - last_cleanup >= CLEANUP_SECONDS:  # rq's abandoned-job handling: a dead worker's job
                    StartedJobRegistry(queue=self.queue).cleanup()  # goes back on the queue (or fails)
                    last_cleanup = now
            elif not warned and now - queued_since > NO_WORKER_WARNING_SECONDS:
                warned = True
                if not Worker.count(queue=self.queue):
                    log.warning("round job %s waits on queue '%s' with no worker listening: start "
                                "`python -m ovaal_backend worker` with REDIS_URL and MODEL_DIR", job.id,
                                self.queue.name)
            time.sleep(self.poll_seconds)

    def _failed(self, job: Job, status: JobStatus) -> JobFailedError:
        """The error of a job that failed (or was stopped) after the retries rq gave it."""
        from .jobs import JobFailedError  # jobs.py imports the engine (torch), which a worker never needs

        return JobFailedError(job.id, failure_reason(job), f"on queue '{self.queue.name}' ({status.value} after "
                                                           f"{self.config.job_retries} retries)")

    def status(self) -> dict[str, Any]:
        """The queue's view for /metrics: counts, workers, and each project's current job."""
        out: dict[str, Any] = {"kind": "rq", "redis": redact_url(self.config.redis_url),
                               "queue": self.config.job_queue}
        try:
            queue = self.queue
            out.update(queued=queue.count, started=StartedJobRegistry(queue=queue).count,
                       failed=FailedJobRegistry(queue=queue).count, workers=Worker.count(queue=queue))
            jobs = {}
            for project, rq_id in sorted(self._current.items()):
                job = self._fetch(rq_id)
                jobs[project] = {"job": rq_id, "status": job.get_status(refresh=False).value if job else "gone"}
            out["jobs"] = jobs
        except RedisError as err:
            out["error"] = f"{type(err).__name__}: {err}"
        return out


def requeue_failed(config: Config, rq_id: str) -> str:
    """Put a round job that failed for good back on its queue, with its retries (``python -m ovaal_backend
    requeue``); returns what was done, for the admin. A job Redis no longer holds needs nothing here: the
    released project enqueues it afresh.

    Raises:
        RuntimeError: Redis cannot be reached (the message names it, password hidden).
    """
    redis = connect(config.redis_url, socket_connect_timeout=5, socket_timeout=30)
    queue = Queue(config.job_queue, connection=redis)
    try:
        try:
            job = Job.fetch(rq_id, connection=redis)
        except NoSuchJobError:
            return f"round job {rq_id} is no longer in Redis: the backend enqueues it afresh"
        status = job.get_status(refresh=True)
        if status in WAITING or status == JobStatus.FINISHED:
            return f"round job {rq_id} is {status.value} on queue '{queue.name}' already: nothing re-queued"
        job.retries_left = config.job_retries or None
        try:
            job.requeue()
        except InvalidJobOperation:  # stopped or cancelled: not in the failed registry; the backend enqueues anew
            job.delete()
            return f"round job {rq_id} ({status.value}) removed: the backend enqueues it afresh"
        return f"round job {rq_id} re-queued on queue '{queue.name}' ({config.job_retries} retries)"
    except RedisError as err:
        raise RuntimeError(f"cannot reach Redis at {redact_url(config.redis_url)}: {type(err).__name__}: {err}") \
            from err


def job_digest(job: RoundJob) -> str:
    """What a stored result must match to be reused: the pool, classes, files and model it was computed for."""
    text = json.dumps([job.keys, job.image_paths, job.classes, job.checkpoint, job.version, job.generation,
                       job.ended_round, job.fine_tune, job.masks_dir])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def failure_reason(job: Job) -> str:
    """The exception that ended the job's last run, on one line (its type and message, without the traceback's
    frames: a message may span lines, its first one naming what went wrong), or a note when rq kept none."""
    try:
        result = job.latest_result()
    except Exception:  # noqa: BLE001 - a reason is best effort
        result = None
    lines = (getattr(result, "exc_string", None) or "").strip().splitlines()
    frames = [i for i, line in enumerate(lines) if line.startswith(" ")]
    exception = lines[frames[-1] + 1:] if frames else lines
    return " ".join(line.strip() for line in exception)[:500] or "no reason recorded"
