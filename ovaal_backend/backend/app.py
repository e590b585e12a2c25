"""The Flask app speaking Label Studio's ML backend protocol (label-studio-ml 2.x): thin routes over the service layer.

Routes: ``GET /health`` (and ``/``), ``POST /setup``, ``POST /predict``, ``POST /webhook``, ``POST /train`` (the old
way Label Studio asked for training), ``GET /metrics`` (JSON, or Prometheus text for a scraper: ``prometheus.py``).
Each parses and checks JSON (``validate.py``), calls one operation of ``service.py`` on the registry of projects
(``registry.Backend``) and answers JSON; every error is JSON ``{"error": reason}``: 400 for malformed input (checked
before any project state is created), 401 (basic auth), 403 (a project outside ALLOWED_PROJECTS), 404, 409, 413 (over
MAX_REQUEST_MB), 503 with ``Retry-After`` (a /predict past MAX_PREDICT_CALLS), 503 for a project set aside (its state
file cannot be opened: ``registry.Backend._open``), 502 (a /setup whose check of LABEL_STUDIO_URL and the key failed:
``link.py``), 507 (MODEL_DIR cannot be written: a full disk) and a 500; a failed /setup repeats its reason in the HTTP
reason phrase, the only part Label Studio shows; a 507 or 500 names only a request id besides its reason (the details
go to the log). Nothing heavy happens at import or in ``create_app``: models load on first use, in the project's
worker or its first /predict.

Run it with ``python -m ovaal_backend serve`` (gunicorn, one worker process, ``SERVER_THREADS`` threads, no request
timeout): one process, because the project drivers and their worker threads live in its memory.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import sys
import uuid

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from .. import __version__
from ..config import Config, is_loopback_host
from ..engine.runtime import configure_torch, resolve_device
from . import service
from .dashboard import dashboard_blueprint
from .link import reason_phrase
from .prometheus import prometheus_text, wants_prometheus
from .registry import Backend
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

    Every check (ids, types, ALLOWED_PROJECTS, the label config: ``service.set_up``) runs before ``backend.driver``
    creates a project's folder and thread, so a refused request leaves nothing behind.
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
        version = service.set_up(backend, project_id, uid, schema, request.host, body.get("hostname"))
        return jsonify(model_version=version)

    @app.post("/predict")
    def predict() -> Response | tuple[Response, int, dict[str, str]]:
        body = json_body()
        tasks = predict_tasks(body.get("tasks"), config.max_predict_tasks)
        project = body.get("project") or (tasks[0].get("project") if tasks else None)
        project_id = project_of(project, config)[0]
        check_task_projects(tasks, project_id)
        answer = service.predict(backend, project_id, tasks)
        if answer is None:
            return predict_busy(config)
        results, version = answer
        return jsonify(results=results, model_version=version)


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
        service.known_driver(backend, project_id)  # 404 for an unknown project before the event's checks
        check_event(action, body, config)
        payload = dict(body, project=project if isinstance(project, dict) else {"id": project_id})
        event_id = service.queue_event(backend, project_id, action, payload)
        if event_id is None:
            return jsonify(status="ignored", action=action), 200
        return jsonify(status="queued", action=action, event=event_id), 201

    @app.post("/train")
    def train() -> tuple[Response, int]:
        body = json_body()
        project_id = project_of(body.get("project"), config)[0]
        event_id = service.queue_event(backend, project_id, "START_TRAINING", {})
        return jsonify(status="queued", action="START_TRAINING", event=event_id), 201


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
