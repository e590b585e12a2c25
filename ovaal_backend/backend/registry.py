"""The registry of the projects this process serves: ``Backend`` holds each project's driver and worker thread
(created on first use, resumed from MODEL_DIR at start), the projects set aside, and what the projects share (the
Label Studio client, the round-job runner, the ``/predict`` slots, /setup's link check). The HTTP layer (``app.py``)
and the service layer (``service.py``) reach projects through it; it knows no route and no request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..config import Config
from ..files import remove_stale_temp_files
from .client import client_from_config
from .jobs import job_runner
from .link import SetupCheck
from .project.context import STATE_FILE, known_projects, project_dir
from .project.driver import ProjectDriver
from .sqlite import is_storage_fault
from .validate import BadRequest, clip
from .worker import ProjectWorker

log = logging.getLogger(__name__)


class PredictSlots:
    """At most ``size`` /predict calls compute at once; one more is refused at once instead of waiting.

    Why: gunicorn's gthread worker serves every route from one pool of SERVER_THREADS threads, and a /predict waits
    for the project's single forward pass while it holds its thread. Unbounded, eight slow /predict calls hold eight
    threads and a webhook waits seconds for one (docs/benchmarks.md, WEBHOOK-LOAD), though Label Studio gives it 1 s
    and never re-sends it. Bounded below SERVER_THREADS (Config.validate), threads stay free for /webhook, and a
    refused /predict costs Label Studio only that task's prediction.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._free = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self.busy = 0
        self.refused = 0

    @contextmanager
    def take(self) -> Iterator[bool]:
        """Hold a slot for the block (yields True), or yield False at once when every slot is busy."""
        if not self._free.acquire(blocking=False):
            with self._lock:
                self.refused += 1
            yield False
            return
        with self._lock:
            self.busy += 1
        try:
            yield True
        finally:
            with self._lock:
                self.busy -= 1
            self._free.release()

    def status(self) -> dict[str, int]:
        """For /metrics: the slots, how many are busy, how many calls were refused since the start."""
        with self._lock:
            return {"slots": self.size, "busy": self.busy, "refused": self.refused}


class ProjectSetAsideError(BadRequest):
    """A project whose stored state cannot be opened: its requests are answered 503 with the reason."""

    def __init__(self, project_id: int, path: str, reason: str) -> None:
        super().__init__(f"project {project_id} is set aside: its state file {path} cannot be opened "
                         f"({clip(reason, 300)}); the backend serves the other projects. Restore the file, or move the "
                         "folder away to start this project afresh", 503)


class Backend:
    """The drivers and worker threads of every project this process serves, created on first use.

    Args:
        config: Settings.
        client_factory: Builds the Label Studio client (tests pass a fake); ``LabelStudioClient`` from the config
            by default.
        start_workers: Start a worker thread per project (tests may drive ``ProjectWorker.run_pending`` by hand).
    """

    def __init__(self, config: Config, client_factory: Callable[[Config], Any] | None = None,
                 start_workers: bool = True) -> None:
        self.config = config
        self.client = (client_factory or client_from_config)(config)
        self.start_workers = start_workers
        self.jobs = job_runner(config)  # where round jobs run: this process, or RQ workers when REDIS_URL is set
        self.predict_slots = PredictSlots(config.max_predict_calls)
        self.setup_check = SetupCheck(self.client.get_project, self.client.link, config.setup_check_seconds)
        self._drivers: dict[int, ProjectDriver] = {}
        self._workers: dict[int, ProjectWorker] = {}
        self._set_aside: dict[int, dict[str, Any]] = {}  # projects whose stored state cannot be opened
        self._lock = threading.Lock()

    def recover(self) -> list[int]:
        """Start the worker of every project found under MODEL_DIR: it replays unprocessed events and resumes.

        Temporary files a killed process left behind (``*.tmp`` of ``files.write_atomically``) are removed first.
        """
        removed = remove_stale_temp_files(self.config.model_dir)
        if removed:
            log.info("removed %d temporary files left by an earlier process", removed)
        allowed = self.config.allowed_project_ids
        ids = [i for i in known_projects(self.config) if not allowed or i in allowed]
        for project_id in sorted(set(known_projects(self.config)) - set(ids)):
            log.warning("project %d: not in ALLOWED_PROJECTS, not resumed", project_id)
        for project_id in ids:
            try:
                driver = self.driver(project_id)
            except ProjectSetAsideError:
                continue  # logged and shown in /metrics; the other projects are served
            if driver is not None:
                log.info("project %d: resuming (phase %s, round %s, %s)", project_id, driver.phase,
                         driver.state().round, driver.model_version)
        return ids

    def driver(self, project_id: int, create: bool = False) -> ProjectDriver | None:
        """The project's driver; None for a project never set up, unless ``create``.

        Raises:
            BadRequest: 403 when ``create`` would make one project more than MAX_PROJECTS.
            ProjectSetAsideError: 503 when the project's stored state cannot be opened (``_open``).
        """
        with self._lock:
            driver = self._drivers.get(project_id)
            if driver is None:
                known = known_projects(self.config)
                if not create and project_id not in known:
                    return None
                if project_id not in known and len(set(known) | set(self._drivers)) >= self.config.max_projects:
                    raise BadRequest(f"this backend already serves MAX_PROJECTS={self.config.max_projects} "
                                     "projects: raise MAX_PROJECTS or run another backend for this one", 403)
                driver = self._open(project_id, stored=project_id in known)
                if not create and not driver.is_set_up:
                    return None
                self._drivers[project_id] = driver
                self._workers[project_id] = worker = ProjectWorker(driver, retry_seconds=self.config.retry_seconds)
                if self.start_workers:
                    worker.start()
            return driver

    def _open(self, project_id: int, stored: bool) -> ProjectDriver:
        """A new driver of the project; one whose stored state cannot be opened (a corrupt ``labels.sqlite3``) is
        set aside instead of failing the backend's start.

        The file stays where it is for the admin; every later request for the project tries it again, so a
        restored file (or the folder moved away, which makes the project new) is served without a restart.

        Raises:
            ProjectSetAsideError: ``stored`` state that cannot be opened (not a full disk: that is answered 507).
        """
        try:
            driver = ProjectDriver(self.config, project_id, self.client, jobs=self.jobs)
        except Exception as err:
            if not stored or is_storage_fault(err):
                raise
            reason = f"{type(err).__name__}: {err}"[:500]
            if self._set_aside.get(project_id, {}).get("reason") != reason:
                path = str(project_dir(self.config, project_id) / STATE_FILE)
                log.error("project %d: set aside, its state file %s cannot be opened (%s); the other projects are "
                          "served, the file is left in place", project_id, path, reason, exc_info=err)
                self._set_aside[project_id] = {"reason": reason, "file": path, "since": time.time()}
            raise ProjectSetAsideError(project_id, self._set_aside[project_id]["file"], reason) from None
        if self._set_aside.pop(project_id, None) is not None:
            log.info("project %d: its state opens again; served", project_id)
        return driver

    def set_aside(self) -> dict[str, dict[str, Any]]:
        """For /metrics: the projects set aside, with their reason, state file and since when."""
        with self._lock:
            return {str(key): dict(value) for key, value in sorted(self._set_aside.items())}

    def worker(self, project_id: int) -> ProjectWorker:
        return self._workers[project_id]

    def wake(self, project_id: int) -> None:
        self._workers[project_id].wake()

    def projects(self) -> dict[int, ProjectDriver]:
        with self._lock:
            return dict(self._drivers)

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop every worker thread (after its current step)."""
        for worker in list(self._workers.values()):
            worker.stop(timeout)
