"""What a request to the backend must look like: ids, types, sizes and nesting, checked before any project state is
created. Every refusal is a ``BadRequest`` with a reason the client can act on (never a path or a stack trace)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from flask import request

from ..config import MAX_PROJECT_ID, Config, is_loopback_host
from .convert import LabelConfigError, LabelConfigTooLarge
from .project.actions import ANNOTATION_ACTIONS
from .project.label_config import parse_label_config

MAX_TASK_ID = 2**63 - 1
"""The largest task or annotation id accepted (SQLite's integers are signed 64-bit)."""
MAX_JSON_DEPTH = 100
"""Deepest nesting of a request's JSON (Label Studio's payloads nest about 8 levels)."""
ACTION = re.compile(r"[A-Za-z0-9_]{1,64}")
_PROJECT_UID = re.compile(r"([0-9]{1,10})(?:\.[0-9A-Za-z_.:+-]{0,64})?")


class BadRequest(ValueError):
    """The request cannot be served; answered with ``status`` and ``{"error": message}``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def json_body() -> dict[str, Any]:
    """The request's JSON object (400 for anything else, 413 past MAX_REQUEST_MB)."""
    try:
        body = request.get_json(silent=True)
    except RecursionError:
        body = None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    if _nested_deeper(body, MAX_JSON_DEPTH):
        raise BadRequest(f"the request body nests deeper than {MAX_JSON_DEPTH} levels")
    return body


def _nested_deeper(value: Any, limit: int) -> bool:
    """Whether JSON lists and objects nest more than ``limit`` levels (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def _is_id(value: Any, largest: int) -> bool:
    """A JSON integer (not a boolean) in 1..largest."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= largest


def _describe(value: Any) -> str:
    """A short, safe description of a rejected value for an error message."""
    if isinstance(value, str):
        return clip(repr(value), 40)
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        return clip(str(value), 24)
    return f"a {type(value).__name__}"


def clip(text: str, length: int) -> str:
    """``text`` cut to ``length`` characters: a reason in an answer stays short whatever the input."""
    return text if len(text) <= length else text[:length - 3] + "..."


def project_of(value: Any, config: Config) -> tuple[int, str]:
    """The project's ``(id, uid)``; 400 when malformed, 403 outside ALLOWED_PROJECTS."""
    try:
        project_id, uid = parse_project_uid(value)
    except ValueError as err:
        raise BadRequest(str(err)) from None
    allowed = config.allowed_project_ids
    if allowed and project_id not in allowed:
        raise BadRequest(f"project {project_id} is not served by this backend: it is not in ALLOWED_PROJECTS", 403)
    return project_id, uid


def predict_tasks(tasks: Any, most: int) -> list[dict[str, Any]]:
    """/predict's ``tasks``: a list of at most ``most`` objects, each with an integer ``id`` and an object ``data``."""
    if not isinstance(tasks, list):
        raise BadRequest("'tasks' must be a list of tasks, each with an 'id'")
    if len(tasks) > most:
        raise BadRequest(f"'tasks' holds {len(tasks)} tasks; at most MAX_PREDICT_TASKS={most} per call")
    for i, task in enumerate(tasks):
        if not isinstance(task, dict) or not _is_id(task.get("id"), MAX_TASK_ID):
            raise BadRequest(f"tasks[{i}] must be a task with an integer 'id' in 1..2**63-1, got "
                             f"{_describe(task.get('id') if isinstance(task, dict) else task)}")
        if "data" in task and not isinstance(task["data"], dict):
            raise BadRequest(f"tasks[{i}].data must be an object, got {_describe(task['data'])}")
    return tasks


def host_header_allowed(host: str, config: Config) -> bool:
    """Whether a request's Host header names this machine: ``localhost`` (and ``*.localhost``), a loopback address,
    HOST itself or a name in ALLOWED_HOST_NAMES; any port.

    Why: on a loopback HOST without basic auth, a web page the user visits can rebind its own name to 127.0.0.1
    (DNS rebinding) and then call the backend from the browser; its requests carry the page's name in Host.
    """
    try:
        name = (urlsplit(f"//{host.strip()}").hostname or "").rstrip(".")
    except ValueError:  # a malformed bracketed address
        return False
    if name == "localhost" or name.endswith(".localhost") or is_loopback_host(name):
        return True
    return name in (config.host.strip().strip("[]").lower(), *config.host_names)


def check_task_projects(tasks: list[dict[str, Any]], project_id: int) -> None:
    """400 for a /predict task that names another project than the call's: a project's model (and the image
    fetches it makes) serves only that project's tasks."""
    for i, task in enumerate(tasks):
        if "project" not in task:
            continue
        try:
            task_project = parse_project_uid(task["project"])[0]
        except ValueError:
            task_project = None
        if task_project != project_id:
            raise BadRequest(f"tasks[{i}] belongs to project {_describe(task['project'])}, not to project "
                             f"{project_id} of this call: ask /predict once per project")


def check_label_config(schema: str, config: Config) -> None:
    """400 naming the setting for a label config past MAX_LABEL_CONFIG_KB or MAX_CLASSES (other faults of a config
    are the worker's to log: it keeps the old config)."""
    try:
        parse_label_config(schema, config)
    except LabelConfigTooLarge as err:
        raise BadRequest(str(err)) from None
    except (LabelConfigError, ValueError, RecursionError):
        pass


def check_event(action: str, body: dict[str, Any], config: Config) -> None:
    """400 for a webhook whose annotations, tasks or label config have the wrong shape or size (nothing is
    stored)."""
    if action in ANNOTATION_ACTIONS:
        for annotation in _one_or_many(body.get("annotation")):
            task = annotation.get("task") if isinstance(annotation, dict) else None
            if not _has_id(annotation) or not (_is_id(task, MAX_TASK_ID) or _has_id(task)):
                raise BadRequest(f"{action}: 'annotation' must be an annotation (or a list of them) with an integer "
                                 "'id' and its 'task'")
        tasks = body.get("task")
        for task in [] if tasks is None else _one_or_many(tasks):
            if not _has_id(task) or not isinstance(task.get("data", {}), dict):
                raise BadRequest(f"{action}: 'task' must be a task (or a list of them) with an integer 'id' and "
                                 "object 'data'")
    elif action == "ANNOTATIONS_DELETED":
        annotations = body.get("annotations")
        if not isinstance(annotations, list) or not all(
                isinstance(a, dict) and _is_id(a.get("id"), MAX_TASK_ID) for a in annotations):
            raise BadRequest("ANNOTATIONS_DELETED: 'annotations' must be a list of annotations with integer ids")
    elif action == "PROJECT_UPDATED":
        project = body.get("project")
        schema = project.get("label_config") if isinstance(project, dict) else None
        if schema is not None and not isinstance(schema, str):
            raise BadRequest("PROJECT_UPDATED: the project's 'label_config' must be a string")
        if schema is not None:
            check_label_config(schema, config)


def _one_or_many(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _has_id(item: Any) -> bool:
    """An object with an integer ``id`` in 1..2**63-1 (a task or an annotation)."""
    return isinstance(item, dict) and _is_id(item.get("id"), MAX_TASK_ID)


def parse_project_uid(value: Any) -> tuple[int, str]:
    """Label Studio's ``"<id>.<created timestamp>"`` (or a bare id, as a number or a string) as ``(id, uid)``.

    Raises:
        ValueError: It is not a project id in 1..2**31-1, alone or followed by a dot and a short suffix.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        text = str(value) if 0 < value <= MAX_PROJECT_ID else ""
    else:
        text = value.strip() if isinstance(value, str) else ""
    match = _PROJECT_UID.fullmatch(text)
    if match is None or not 0 < int(match.group(1)) <= MAX_PROJECT_ID:
        raise ValueError(f"project must be a Label Studio project id (an integer 1..{MAX_PROJECT_ID}) or "
                         f"'<id>.<timestamp>', got {_describe(value)}")
    return int(match.group(1)), text
