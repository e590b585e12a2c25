"""The Flask app speaking Label Studio's ML backend protocol (label-studio-ml 2.x): thin routes over the drivers.

Routes: ``GET /health`` (and ``/``), ``POST /setup``, ``POST /predict``, ``POST /webhook``, ``POST /train`` (the old
way Label Studio asked for training), ``GET /metrics``. Each parses JSON, calls one driver method and answers JSON;
bad input gets a 4xx with ``{"error": reason}``. Nothing heavy happens at import or in ``create_app``: models load on
first use, in the project's worker or its first /predict.

Run it with ``python -m ovaal_backend serve`` (gunicorn, one worker process, ``SERVER_THREADS`` threads, no request
timeout): one process, because the project drivers and their worker threads live in its memory.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from .. import __version__
from ..config import Config
from ..engine.runtime import configure_torch
from .client import client_from_config
from .convert import LabelConfigError
from .project.context import known_projects
from .project.driver import ProjectDriver, ProjectMismatchError
from .worker import ProjectWorker

log = logging.getLogger(__name__)

MODEL_CLASS = "OVAAL"
"""What /health reports as ``model_class``."""
OPEN_ROUTES = ("/", "/health")
"""Routes answered without basic auth: they reveal nothing, and container health checks carry no password."""


class BadRequest(ValueError):
    """The request cannot be served; answered with ``status`` and ``{"error": message}``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


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
        self._drivers: dict[int, ProjectDriver] = {}
        self._workers: dict[int, ProjectWorker] = {}
        self._lock = threading.Lock()

    def recover(self) -> list[int]:
        """Start the worker of every project found under MODEL_DIR: it replays unprocessed events and resumes."""
        ids = known_projects(self.config)
        for project_id in ids:
            driver = self.driver(project_id)
            if driver is not None:
                log.info("project %d: resuming (phase %s, round %s, %s)", project_id, driver.phase,
                         driver.state().round, driver.model_version)
        return ids

    def driver(self, project_id: int, create: bool = False) -> ProjectDriver | None:
        """The project's driver; None for a project never set up, unless ``create``."""
        with self._lock:
            driver = self._drivers.get(project_id)
            if driver is None:
                if not create and project_id not in known_projects(self.config):
                    return None
                driver = ProjectDriver(self.config, project_id, self.client)
                if not create and not driver.is_set_up:
                    return None
                self._drivers[project_id] = driver
                self._workers[project_id] = worker = ProjectWorker(driver)
                if self.start_workers:
                    worker.start()
            return driver

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
    configure_torch(config)
    backend = backend or Backend(config)
    app = Flask(__name__)
    app.extensions["ovaal"] = backend
    if recover:
        backend.recover()
    _add_guards(app, config)
    _add_status_routes(app, backend)
    _add_routes(app, backend)
    return app


def _add_guards(app: Flask, config: Config) -> None:
    """Basic auth before every route but ``/`` and ``/health``, and JSON bodies for every error."""

    @app.before_request
    def _check_auth() -> Response | None:
        if not config.basic_auth_user or request.path in OPEN_ROUTES:
            return None
        auth = request.authorization
        if auth is not None and hmac.compare_digest(auth.username or "", config.basic_auth_user) \
                and hmac.compare_digest(auth.password or "", config.basic_auth_pass):
            return None
        response = jsonify(error="basic auth required: enter BASIC_AUTH_USER / BASIC_AUTH_PASS when connecting "
                                 "the model in Label Studio")
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Basic realm="ovaal-backend"'
        return response

    @app.errorhandler(BadRequest)
    def _bad_request(err: BadRequest) -> tuple[Response, int]:
        log.warning("%s %s -> %d: %s", request.method, request.path, err.status, err)
        return jsonify(error=str(err)), err.status

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException) -> tuple[Response, int]:
        return jsonify(error=f"{err.name}: {err.description}"), err.code or 500

    @app.errorhandler(Exception)
    def _internal_error(err: Exception) -> tuple[Response, int]:
        log.exception("%s %s failed", request.method, request.path)
        return jsonify(error=f"internal error: {type(err).__name__}: {err}"), 500


def _add_status_routes(app: Flask, backend: Backend) -> None:
    """``/`` and ``/health`` (open: Label Studio checks them before it has credentials) and ``/metrics``."""

    @app.get("/")
    @app.get("/health")
    def health() -> Response:
        return jsonify(status="UP", model_class=MODEL_CLASS, version=__version__)

    @app.get("/metrics")
    def metrics() -> Response:
        projects = {}
        for project_id, driver in sorted(backend.projects().items()):
            projects[str(project_id)] = dict(driver.metrics(), worker=backend.worker(project_id).status())
        return jsonify(model_class=MODEL_CLASS, version=__version__, projects=projects)


def _add_routes(app: Flask, backend: Backend) -> None:
    """label-studio-ml's project routes (/setup, /predict, /webhook, /train): parse, hand over, answer."""

    @app.post("/setup")
    def setup() -> Response:
        body = _json_body()
        project_id, uid = _project_of(body.get("project"))
        schema = body.get("schema")
        if not isinstance(schema, str) or not schema.strip():
            raise BadRequest("'schema' (the project's label config XML) is missing")
        driver = backend.driver(project_id, create=True)
        assert driver is not None
        try:
            version = driver.setup(uid, schema)
        except LabelConfigError as err:
            raise BadRequest(f"label config not usable: {err}") from None
        except ProjectMismatchError as err:
            raise BadRequest(str(err), 409) from None
        backend.wake(project_id)
        return jsonify(model_version=version)

    @app.post("/predict")
    def predict() -> Response:
        body = _json_body()
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not all(isinstance(t, dict) and "id" in t for t in tasks):
            raise BadRequest("'tasks' must be a list of tasks, each with an 'id'")
        project = body.get("project") or (tasks[0].get("project") if tasks else None)
        driver = _known_driver(_project_of(project)[0])
        results = driver.predict(tasks)
        return jsonify(results=results, model_version=driver.model_version)

    @app.post("/webhook")
    def webhook() -> tuple[Response, int]:
        body = _json_body()
        action = body.get("action")
        if not isinstance(action, str) or not action:
            raise BadRequest("'action' is missing")
        project = body.get("project")
        project_id = _project_of(project.get("id") if isinstance(project, dict) else project)[0]
        driver = _known_driver(project_id)
        event_id = driver.add_event(action, body)
        if event_id is None:
            return jsonify(status="ignored", action=action), 200
        backend.wake(project_id)
        return jsonify(status="queued", action=action, event=event_id), 201

    @app.post("/train")
    def train() -> tuple[Response, int]:
        body = _json_body()
        project_id = _project_of(body.get("project"))[0]
        driver = _known_driver(project_id)
        event_id = driver.add_event("START_TRAINING", {})
        backend.wake(project_id)
        return jsonify(status="queued", action="START_TRAINING", event=event_id), 201

    def _known_driver(project_id: int) -> ProjectDriver:
        driver = backend.driver(project_id)
        if driver is None:
            raise BadRequest(f"unknown project {project_id}: connect the model to the project in Label Studio "
                             "(its /setup call registers the project)", 404)
        return driver


def _json_body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def _project_of(value: Any) -> tuple[int, str]:
    try:
        return parse_project_uid(value)
    except ValueError as err:
        raise BadRequest(str(err)) from None


def parse_project_uid(value: Any) -> tuple[int, str]:
    """Label Studio's ``"<id>.<created timestamp>"`` (or a bare id) as ``(id, uid)``.

    Raises:
        ValueError: It does not start with a positive integer id.
    """
    text = str(value if value is not None else "").strip()
    head = text.split(".", 1)[0]
    if not head.isdigit() or int(head) < 1:
        raise ValueError(f"project must be Label Studio's '<id>.<timestamp>' or an id, got {value!r}")
    return int(head), text
