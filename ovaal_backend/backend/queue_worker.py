"""Round jobs on RQ workers, the worker's side: ``python -m ovaal_backend worker`` (``run_worker``) runs an RQ worker
(``work_horse.RoundWorker``) whose work horse is a freshly spawned interpreter per job, calling ``run_queued_round``
with this machine's paths and device after ``check_job`` found the job to be its MODEL_DIR's. The backend's side
(enqueue, wait, requeue) is ``queue_jobs.py``, whose docstring says why no round is lost. This module imports neither
torch nor the engine at the top: a worker starts in about a second, and only its horses load the model.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import TYPE_CHECKING

from redis.exceptions import RedisError
from rq import Queue

from ..config import Config, ConfigError, redact_url
from .queue_origin import JobOrigin, JobRefusedError, connect
from .work_horse import RoundWorker

if TYPE_CHECKING:
    from ..engine.job import RoundJob, RoundResult

log = logging.getLogger(__name__)


def run_worker(config: Config, burst: bool = False, name: str | None = None) -> int:
    """``python -m ovaal_backend worker``: run round jobs from ``JOB_QUEUE`` until stopped (SIGTERM: after the job)."""
    if not config.redis_url:
        raise ConfigError("the worker needs REDIS_URL (the Redis the backend enqueues round jobs on)")
    redis = connect(config.redis_url)
    try:
        redis.ping()
    except RedisError as err:
        raise RuntimeError(f"cannot reach Redis at {redact_url(config.redis_url)}: {err}") from err
    worker = RoundWorker([Queue(config.job_queue, connection=redis)], connection=redis, name=name,
                         job_monitoring_interval=config.worker_heartbeat)
    log.info("worker %s on queue '%s' at %s (MODEL_DIR=%s, CUDA_VISIBLE_DEVICES=%s, DEVICE=%s)", worker.name,
             config.job_queue, redact_url(config.redis_url), config.model_dir,
             os.environ.get("CUDA_VISIBLE_DEVICES", "(all)"), config.device)
    worker.work(burst=burst, logging_level=config.log_level.upper())
    return 0


def run_queued_round(job: RoundJob, origin: JobOrigin) -> RoundResult:
    """The job function, run in a freshly spawned work horse: the round job with this machine's paths and device.

    ``MODEL_DIR`` and ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`` of this machine replace the backend's at the start
    of the job's paths (the same share may be mounted elsewhere); ``DEVICE`` and ``NUM_THREADS`` are this machine's.

    Raises:
        JobRefusedError: The job is not this MODEL_DIR's, or names a file outside it and the document root
            (``check_job``); nothing was read or written.
    """
    from ..engine.job import run_round
    from ..engine.runtime import configure_torch, resolve_device

    here = Config.from_env().engine
    theirs = job.config
    moves = [(theirs.model_dir, here.model_dir)]
    if theirs.label_studio_local_files_document_root and here.label_studio_local_files_document_root:
        moves.append((theirs.label_studio_local_files_document_root, here.label_studio_local_files_document_root))
    config = theirs.replace(device=here.device, num_threads=here.num_threads, model_dir=here.model_dir,
                            label_studio_local_files_document_root=here.label_studio_local_files_document_root)
    config = config.for_worker(here, resolve_device(config.device).type == "cuda")  # this machine's profile
    mine = dataclasses.replace(
        job, config=config, image_paths=[rebase(p, moves) for p in job.image_paths],
        checkpoint=rebase(job.checkpoint, moves), masks_dir=job.masks_dir and rebase(job.masks_dir, moves))
    check_job(mine, origin, theirs.label_studio_local_files_document_root)
    configure_torch(config)
    log.info("round job %s: %d images, device %s", job.job_id, len(job.keys), config.device)
    result = run_round(mine)
    back = [(dst, src) for src, dst in moves]
    result.masks = {key: rebase(path, back) for key, path in result.masks.items()}
    return result


def check_job(job: RoundJob, origin: JobOrigin, their_document_root: str = "") -> None:
    """Refuse a job (its paths already moved onto this worker's) that is not this worker's MODEL_DIR's, or that names
    a file outside MODEL_DIR and the document root (this worker's, else the backend's: the same machine's files).

    Raises:
        JobRefusedError: Why, naming the job's queue id, the first offending path and the roots.
    """
    model_dir = job.config.model_dir
    refusal = origin.refusal(model_dir)
    if not refusal:
        roots = [model_dir, job.config.label_studio_local_files_document_root or their_document_root]
        paths = [*job.image_paths, job.checkpoint, job.masks_dir]
        outside = [path for path in paths if path and not any(root and under(path, root) for root in roots)]
        if outside:
            refusal = (f"{len(outside)} of its paths lie outside this worker's MODEL_DIR ({os.path.abspath(model_dir)})"
                       f" and document root ({roots[1] or 'none set'}), e.g. {outside[0]}")
    if refusal:
        raise JobRefusedError(f"round job {origin.queue_id(job.job_id)} refused: {refusal}")


def under(path: str, root: str) -> bool:
    """Whether ``path`` is ``root`` or lies in it (compared as absolute, normalised paths; links are not followed)."""
    path, root = os.path.abspath(path), os.path.abspath(root)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def rebase(path: str, moves: list[tuple[str, str]]) -> str:
    """``path`` with the first matching root of ``moves`` (``(from, to)`` pairs) replaced."""
    norm = os.path.normpath(path)
    for src, dst in moves:
        src = os.path.normpath(src)
        if src != os.path.normpath(dst) and under(norm, src):
            return os.path.join(os.path.normpath(dst), os.path.relpath(norm, src)) if norm != src else dst
    return path
