"""What can be done to a project, called by both the HTTP routes (``app.py``) and the command line (``cli.py``).

Why one layer: the routes and the admin commands used to reach into drivers and stores each their own way (the CLI
wrote events into a project's SQLite file itself). Here each operation is one function over the registry of a running
process (``registry.Backend``: set up, predict, queue an event) or over MODEL_DIR for a command run beside it (resync,
quarantine, requeue: they queue events, which the running backend applies within seconds, a stopped one on start).
The callers only parse their input and shape the answer; nothing here knows HTTP requests, argv or the engine's
science. Failures a caller must report are ``validate.BadRequest`` (with the status a route answers) or
``ValueError`` (one ``error:`` line of the CLI).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ..config import Config
from .client import LabelStudioClient
from .convert import LabelConfigError
from .project.context import ProjectContext, known_projects
from .project.driver import ProjectDriver, ProjectMismatchError
from .project.events import REQUEUE_ACTION
from .project.label_config import parse_label_config
from .registry import Backend
from .validate import BadRequest, clip

log = logging.getLogger(__name__)


# ============================================================ a running backend (HTTP)


def set_up(backend: Backend, project_id: int, uid: Any, schema: str, host: str, hostname: Any) -> str:
    """/setup: check the label config and the link to Label Studio, then register the project (its folder, driver and
    worker are created only after both checks) and hand its setup to the worker; returns the current model version.

    Raises:
        BadRequest: 400 for an unusable label config, 502 when Label Studio cannot be used, 403 past MAX_PROJECTS,
            409 when MODEL_DIR holds another Label Studio project under this id.
    """
    try:
        parse_label_config(schema, backend.config)
    except (LabelConfigError, ValueError, RecursionError) as err:  # ValueError: e.g. unencodable characters
        # long enough for the KeyPointLabels lines a brush-only config needs (one line per class)
        raise BadRequest(f"label config not usable: {clip(str(err), 8000)}") from None
    check_link(backend, project_id, hostname)
    driver = backend.driver(project_id, create=True)
    assert driver is not None
    try:
        version = driver.setup(uid, schema, host)
    except LabelConfigError as err:
        raise BadRequest(f"label config not usable: {clip(str(err), 500)}") from None
    except ProjectMismatchError as err:
        log.warning("/setup of project %s refused: %s", uid, err)
        raise BadRequest(f"MODEL_DIR holds another Label Studio project with id {project_id} (the same id "
                         "in a re-created Label Studio?): move its folder away or use another MODEL_DIR",
                         409) from None
    backend.wake(project_id)
    return version


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


def known_driver(backend: Backend, project_id: int) -> ProjectDriver:
    """The driver of a project that went through /setup; 404 otherwise."""
    driver = backend.driver(project_id)
    if driver is None:
        raise BadRequest(f"unknown project {project_id}: connect the model to the project in Label Studio "
                         "(its /setup call registers the project)", 404)
    return driver


def predict(backend: Backend, project_id: int, tasks: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str] | None:
    """/predict: one prediction per task and the model version, or None at once when MAX_PREDICT_CALLS compute."""
    driver = known_driver(backend, project_id)
    with backend.predict_slots.take() as taken:
        if not taken:
            return None
        return driver.predict(tasks), driver.model_version


def queue_event(backend: Backend, project_id: int, action: str, payload: dict[str, Any]) -> int | None:
    """Store a webhook event (or /train's START_TRAINING) before it is answered, and wake the project's worker;
    returns the event's id, or None for an action the backend does not use."""
    event_id = known_driver(backend, project_id).add_event(action, payload)
    if event_id is not None:
        backend.wake(project_id)
    return event_id


# ============================================================ MODEL_DIR beside a backend (CLI)


def stored_project(config: Config, project_id: int, client: LabelStudioClient | None = None) -> ProjectContext:
    """The project's stored state under MODEL_DIR (``client`` None: the store only, Label Studio is not asked).

    Raises:
        ValueError: MODEL_DIR holds no such project.
    """
    _known(config, project_id)
    return ProjectContext(config, project_id, client)


def _known(config: Config, project_id: int) -> None:
    """Raise ValueError naming MODEL_DIR when it holds no such project."""
    if project_id not in known_projects(config):
        raise ValueError(f"MODEL_DIR={config.model_dir} holds no project {project_id}: connect the model to it "
                         "in Label Studio first")


def resync(config: Config, project_id: int, client: LabelStudioClient) -> tuple[int, int]:
    """Queue every annotation Label Studio has (and the deletion of stored ones it lacks) as events; returns how many
    annotations and deletions were queued."""
    _known(config, project_id)
    return ProjectDriver(config, project_id, client).resync()


@dataclass(frozen=True)
class Quarantine:
    """What a project set aside: malformed events and unreadable images, with their reasons."""

    events: list[dict[str, Any]]
    images: list[dict[str, Any]]
    released: int = 0  # events put back in the queue


def quarantine(config: Config, project_id: int, release: bool = False) -> Quarantine:
    """The project's quarantined events and images; with ``release`` the events go back in the queue."""
    ctx = stored_project(config, project_id)
    events, images = ctx.store.events.quarantined(), ctx.store.quarantine.items("image")
    return Quarantine(events, images, ctx.store.events.release() if release else 0)


def held_job(config: Config, project_id: int) -> dict[str, Any]:
    """The project's round job that failed for good (job, round, reason, queue id).

    Raises:
        ValueError: The project holds no failed job.
    """
    state = stored_project(config, project_id).state
    failed = state.held_job()
    if failed is None:
        raise ValueError(f"project {project_id} has no round job that failed for good (phase {state.phase}): "
                         "nothing to requeue")
    return failed


def release_job(config: Config, project_id: int, job: str) -> None:
    """Queue the event that releases the project's failed round job ``job``: the backend runs it again."""
    stored_project(config, project_id).store.events.add(REQUEUE_ACTION, {"job": job})
