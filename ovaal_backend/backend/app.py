"""The Flask app speaking Label Studio's ML backend protocol (label-studio-ml 2.x): thin routes over the drivers.

Routes: ``GET /health`` (and ``/``), ``POST /setup``, ``POST /predict``, ``POST /webhook``, ``POST /train`` (the old
way Label Studio asked for training), ``GET /metrics`` (JSON, or Prometheus text for a scraper: ``prometheus.py``).
Each parses JSON, calls one driver method and answers JSON;
every error is JSON ``{"error": reason}``: 400 for malformed input (checked before any project state is created),
401 (basic auth), 403 (a project outside ALLOWED_PROJECTS), 404, 409, 413 (over MAX_REQUEST_MB), 503 with
``Retry-After`` (a /predict past MAX_PREDICT_CALLS), 503 for a project set aside (its state file cannot be opened:
``Backend._open``), 502 (a /setup whose check of LABEL_STUDIO_URL and the key failed: ``link.py``), 507 (MODEL_DIR
cannot be written: a full disk) and a 500; a failed /setup repeats its reason in the HTTP reason phrase, the only part
Label Studio shows; a 507
or 500 names only a request id besides its reason (the details go to the log). Nothing heavy happens at import or in
``create_app``: models load on first use, in the project's worker or its first /predict.

Run it with ``python -m ovaal_backend serve`` (gunicorn, one worker process, ``SERVER_THREADS`` threads, no request
timeout): one process, because the project drivers and their worker threads live in its memory.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from .. import __version__
from ..config import Config, is_loopback_host
from ..engine.runtime import configure_torch, resolve_device
from ..files import remove_stale_temp_files
from .client import client_from_config
from .convert import LabelConfigError
from .dashboard import dashboard_blueprint
from .jobs import job_runner
from .link import SetupCheck, reason_phrase
from .project.context import STATE_FILE, known_projects, project_dir
from .project.driver import ProjectDriver, ProjectMismatchError
from .project.label_config import parse_label_config
from .prometheus import prometheus_text, wants_prometheus
from .sqlite import is_storage_fault
from .status import MODEL_CLASS, metrics_payload
from .validate import (
    ACTION,
    BadRequest,
    check_event,
    check_task_projects,
    clip,
    host_header_allowed,
    json_body,
    predict_tasks,
    project_of,
)
from .worker import ProjectWorker

log = logging.getLogger(__name__)

OPEN_ROUTES = ("/", "/health")
"""Routes answered without basic auth: they reveal nothing, and container health checks carry no password."""
INTERNAL_ERROR = "internal error; see the backend's log"
"""The whole text of a 500 answer, besides its request id: exception text and paths stay in the log."""
STORAGE_ERROR = ("the backend could not write to its MODEL_DIR (disk full or not writable), so nothing of this "
                 "request was stored; free space, then `python -m ovaal_backend resync --project <id>` re-reads "
                 "what Label Studio sent meanwhile")
"""The whole text of a 507 answer, besides its request id: a full disk is the server's fault, and this says the fix."""
GIL_SWITCH_SECONDS = 0.001
"""How long a busy thread keeps the GIL before another may take it (Python's default: 5 ms). A request thread waits
up to this long after each SQLite call while a project's worker computes (e.g. applies a backlog of events), and
``/metrics`` makes some 40: 5 ms made it take 0.5 s on a 5,000-image project (docs/benchmarks.md, DASHBOARD-LOAD)."""
PREDICT_RETRY_AFTER_S = 2
"""``Retry-After`` of a /predict refused because MAX_PREDICT_CALLS are computing (about one dense mask's time)."""


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


def create_app(config: Config | None = None, backend: Backend | None = None, recover: bool = True) -> Flask:
    """The Flask app. ``config`` defaults to ``Config.from_env()``; ``recover`` resumes projects under MODEL_DIR."""
    config = config or Config.from_env()
    if not config.redis_url:  # round jobs train here; with REDIS_URL each queue worker applies the profile it needs
        config = config.for_machine(resolve_device(config.device).type == "cuda")
    configure_torch(config)
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    backend = backend or Backend(config)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = int(config.max_request_mb * 1024 * 1024)
    app.extensions["ovaal"] = backend
    if recover:
        backend.recover()
    _add_guards(app, config)
    _add_status_routes(app, backend)
    _add_routes(app, backend)
    app.register_blueprint(dashboard_blueprint(backend))
    return app


def basic_auth_matches(header: str | None, user: str, password: str) -> bool:
    """Whether an ``Authorization`` header carries ``user:password``, compared as bytes in constant time.

    The pair may arrive UTF-8 encoded (browsers, curl) or latin-1 encoded (Python's requests, which Label Studio
    uses to call ML backends), so a non-ASCII password can log in either way; nothing here raises on odd input.
    """
    scheme, _, token = (header or "").strip().partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given = base64.b64decode(token.strip(" \t"), validate=True)
    except (binascii.Error, ValueError):  # not base64, or non-ASCII characters in the header
        return False
    pair = f"{user}:{password}"
    matched = False
    for encoding in ("utf-8", "latin-1"):
        try:
            expected = pair.encode(encoding, "surrogateescape" if encoding == "utf-8" else "strict")
        except UnicodeEncodeError:  # a password with characters latin-1 cannot hold
            continue
        matched |= hmac.compare_digest(given, expected)
    return matched


def _add_guards(app: Flask, config: Config) -> None:
    """The Host check of a loopback HOST without basic auth, basic auth before every route but ``/`` and ``/health``,
    and JSON bodies for every error."""

    @app.before_request
    def _check_host() -> tuple[Response, int] | None:
        if config.basic_auth_user or not is_loopback_host(config.host) or host_header_allowed(request.host, config):
            return None
        log.warning("%s %s refused: Host %r is not this machine's (DNS rebinding?)", request.method, request.path,
                    clip(request.host, 100))
        return jsonify(error="Host header names another machine: this backend listens on a loopback HOST without "
                             "basic auth, so it answers only requests to localhost, 127.0.0.1 or [::1] (add a name to "
                             "ALLOWED_HOST_NAMES, or set BASIC_AUTH_USER / BASIC_AUTH_PASS)"), 421

    @app.before_request
    def _check_auth() -> Response | None:
        if not config.basic_auth_user or request.path in OPEN_ROUTES:
            return None
        if basic_auth_matches(request.headers.get("Authorization"), config.basic_auth_user, config.basic_auth_pass):
            return None
        response = jsonify(error="basic auth required: enter BASIC_AUTH_USER / BASIC_AUTH_PASS when connecting "
                                 "the model in Label Studio")
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Basic realm="ovaal-backend", charset="UTF-8"'
        return response

    @app.errorhandler(BadRequest)
    def _bad_request(err: BadRequest) -> tuple[Response, int]:
        log.warning("%s %s -> %d: %s", request.method, request.path, err.status, err)
        return jsonify(error=str(err)), err.status

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException) -> tuple[Response, int]:
        code = err.code or 500
        if code == 413:
            message = f"request body larger than MAX_REQUEST_MB={config.max_request_mb:g} MiB"
        elif code >= 500:
            return _internal_error(err)
        else:
            message = f"{err.name}: {err.description}"
        log.info("%s %s -> %d: %s", request.method, request.path, code, message)
        return jsonify(error=message), code

    @app.errorhandler(Exception)
    def _internal_error(err: Exception) -> tuple[Response, int]:
        request_id = uuid.uuid4().hex[:12]
        if is_storage_fault(err):
            log.error("%s %s failed: MODEL_DIR cannot be written (request %s)", request.method, request.path,
                      request_id, exc_info=err)
            return jsonify(error=f"{STORAGE_ERROR} (request {request_id})", request_id=request_id), 507
        log.exception("%s %s failed (request %s)", request.method, request.path, request_id, exc_info=err)
        return jsonify(error=f"{INTERNAL_ERROR} (request {request_id})", request_id=request_id), 500


def _add_status_routes(app: Flask, backend: Backend) -> None:
    """``/`` and ``/health`` (open: Label Studio checks them before it has credentials) and ``/metrics``."""

    @app.get("/")
    @app.get("/health")
    def health() -> Response:
        return jsonify(status="UP", model_class=MODEL_CLASS, version=__version__)

    @app.get("/metrics")
    def metrics() -> Response:
        try:
            text = wants_prometheus(request.args.get("format"), request.headers.get("Accept"))
        except ValueError as err:
            raise BadRequest(str(err)) from None
        payload = metrics_payload(backend)
        if not text:
            return jsonify(payload)
        body, content_type = prometheus_text(payload, request.headers.get("Accept"))
        return Response(body, content_type=content_type)


def _add_routes(app: Flask, backend: Backend) -> None:
    """label-studio-ml's project routes (/setup, /predict, /webhook, /train): check, hand over, answer.

    Every check (ids, types, ALLOWED_PROJECTS, the label config) runs before ``backend.driver`` creates a project's
    folder and thread, so a refused request leaves nothing behind.
    """
    config = backend.config
    _add_event_routes(app, backend)
    app.after_request(setup_reason_phrase)

    @app.post("/setup")
    def setup() -> Response:
        body = json_body()
        project_id, uid = project_of(body.get("project"), config)
        schema = body.get("schema")
        if not isinstance(schema, str) or not schema.strip():
            raise BadRequest("'schema' (the project's label config XML) is missing")
        try:
            parse_label_config(schema, config)
        except (LabelConfigError, ValueError, RecursionError) as err:  # ValueError: e.g. unencodable characters
            # long enough for the KeyPointLabels lines a brush-only config needs (one line per class)
            raise BadRequest(f"label config not usable: {clip(str(err), 8000)}") from None
        check_link(backend, project_id, body.get("hostname"))
        driver = backend.driver(project_id, create=True)
        assert driver is not None
        try:
            version = driver.setup(uid, schema, request.host)
        except LabelConfigError as err:
            raise BadRequest(f"label config not usable: {clip(str(err), 500)}") from None
        except ProjectMismatchError as err:
            log.warning("/setup of project %s refused: %s", uid, err)
            raise BadRequest(f"MODEL_DIR holds another Label Studio project with id {project_id} (the same id "
                             "in a re-created Label Studio?): move its folder away or use another MODEL_DIR",
                             409) from None
        backend.wake(project_id)
        return jsonify(model_version=version)

    @app.post("/predict")
    def predict() -> Response | tuple[Response, int, dict[str, str]]:
        body = json_body()
        tasks = predict_tasks(body.get("tasks"), config.max_predict_tasks)
        project = body.get("project") or (tasks[0].get("project") if tasks else None)
        project_id = project_of(project, config)[0]
        check_task_projects(tasks, project_id)
        driver = known_driver(backend, project_id)
        with backend.predict_slots.take() as taken:
            if not taken:
                return predict_busy(config)
            results = driver.predict(tasks)
        return jsonify(results=results, model_version=driver.model_version)


def _add_event_routes(app: Flask, backend: Backend) -> None:
    """/webhook (Label Studio's events, stored before the answer) and /train (the old way to ask for training)."""
    config = backend.config

    @app.post("/webhook")
    def webhook() -> tuple[Response, int]:
        body = json_body()
        action = body.get("action")
        if not isinstance(action, str) or not ACTION.fullmatch(action):
            raise BadRequest("'action' must be a Label Studio webhook action such as ANNOTATION_CREATED")
        project = body.get("project")
        project_id = project_of(project.get("id") if isinstance(project, dict) else project, config)[0]
        driver = known_driver(backend, project_id)
        check_event(action, body, config)
        payload = dict(body, project=project if isinstance(project, dict) else {"id": project_id})
        event_id = driver.add_event(action, payload)
        if event_id is None:
            return jsonify(status="ignored", action=action), 200
        backend.wake(project_id)
        return jsonify(status="queued", action=action, event=event_id), 201

    @app.post("/train")
    def train() -> tuple[Response, int]:
        body = json_body()
        project_id = project_of(body.get("project"), config)[0]
        driver = known_driver(backend, project_id)
        event_id = driver.add_event("START_TRAINING", {})
        backend.wake(project_id)
        return jsonify(status="queued", action="START_TRAINING", event=event_id), 201


def check_link(backend: Backend, project_id: int, hostname: Any) -> None:
    """502 when the backend cannot work with Label Studio (unreachable LABEL_STUDIO_URL, refused key, a project it
    cannot see), so that connecting fails with the cause instead of "Connected" and silence (see link.py)."""
    problem = backend.setup_check.problem(project_id)
    if problem is None:
        return
    said = ""
    if isinstance(hostname, str) and hostname.rstrip("/") != backend.config.label_studio_url.rstrip("/"):
        said = f" (Label Studio gives its own address as {clip(hostname, 200)})"
    raise BadRequest(f"the backend cannot use Label Studio: {problem}{said}. Fix the backend's setting and "
                     "restart it, then connect the model again", 502)


def setup_reason_phrase(response: Response) -> Response:
    """A failed /setup carries its error in the HTTP reason phrase too: Label Studio's Connect dialog shows the status
    line of a failed /setup (``400 Client Error: <reason> for url: ...``), never the JSON body."""
    if request.path == "/setup" and response.status_code >= 400 and response.is_json:
        error = (response.get_json(silent=True) or {}).get("error")
        if isinstance(error, str) and error:
            response.status = f"{response.status_code} {reason_phrase(error)}"
    return response


def predict_busy(config: Config) -> tuple[Response, int, dict[str, str]]:
    """503 for a /predict past MAX_PREDICT_CALLS: Label Studio shows no prediction for those tasks and goes on."""
    log.debug("/predict refused: all %d MAX_PREDICT_CALLS slots busy", config.max_predict_calls)
    return (jsonify(error=f"busy: MAX_PREDICT_CALLS={config.max_predict_calls} predictions are being computed; "
                          f"try again in {PREDICT_RETRY_AFTER_S} s"),
            503, {"Retry-After": str(PREDICT_RETRY_AFTER_S)})


def known_driver(backend: Backend, project_id: int) -> ProjectDriver:
    """The driver of a project that went through /setup; 404 otherwise."""
    driver = backend.driver(project_id)
    if driver is None:
        raise BadRequest(f"unknown project {project_id}: connect the model to the project in Label Studio "
                         "(its /setup call registers the project)", 404)
    return driver
