"""The Label Studio REST calls the backend makes, and image fetching.

Plain HTTP (``requests``) rather than the SDK: the backend needs a dozen calls, and one place that knows the token
rules keeps image downloads and API calls consistent. A legacy token is sent as ``Authorization: Token <key>``; a
personal access token (a JWT refresh token) is first exchanged at ``POST /api/token/refresh/`` for a short-lived
access token sent as ``Bearer``, and exchanged again when Label Studio answers 401.

Every call that creates something checks Label Studio's created-count, because Label Studio answers 201 and drops
predictions whose ``from_name`` is not in the label config (docs/label-studio-notes.md, gotcha 3).
See docs/label-studio-notes.md for the measured behaviour of each call.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urljoin, urlparse

import requests

from ..config import Config
from .link import AUTH_STATUSES, LinkStatus, rejected_cause, unreachable_cause

log = logging.getLogger(__name__)

PAGE_SIZE = 100
"""Tasks per call when listing a project."""

LOCAL_FILES_PREFIX = "/data/local-files/"
CLOUD_SCHEMES = ("s3://", "gs://", "azure-blob://")
MEDIA_PREFIXES = ("/data/upload/", "/data/local-files/", "/storage-data/", "/data/")
"""Paths on Label Studio's host that serve task media; no other path of it is fetched with the token."""


class LabelStudioError(RuntimeError):
    """A Label Studio call failed or answered something unexpected; the message has the call and the answer."""

    def __init__(self, message: str, status: int | None = None, cause: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.cause = cause  # set when the call failed for the link's sake (unreachable, key refused): see link.py


class LabelStudioClient:
    """The calls one backend makes to one Label Studio.

    Args:
        url: Label Studio's base URL as the backend reaches it (``LABEL_STUDIO_URL``).
        api_key: A legacy token (40 hex chars) or a personal access token (JWT).
        timeout: Seconds per HTTP call.
        session: A ``requests.Session`` to use (tests); a fresh one that ignores proxy variables otherwise.
    """

    def __init__(self, url: str, api_key: str, timeout: float = 60.0, session: requests.Session | None = None,
                 max_download_bytes: int = 64 * 2**20, download_seconds: float = 120.0,
                 image_hosts: frozenset[str] = frozenset()) -> None:
        self.url = url.rstrip("/")
        self.image_hosts = image_hosts  # ALLOWED_IMAGE_HOSTS: where images may come from besides Label Studio
        self.max_download_bytes = max_download_bytes
        self.download_seconds = download_seconds
        self.api_key = api_key
        self.timeout = timeout
        if session is None:
            session = requests.Session()
            session.trust_env = False  # a proxy variable must not reroute calls to a Label Studio on the same host
        self.session = session
        self._access_token: str | None = None
        self._token_lock = threading.Lock()
        self.link = LinkStatus(self.url)  # every call's outcome, for /metrics, the dashboard and /setup

    # --- authentication ----------------------------------------------------------------------------------------

    @property
    def is_personal_access_token(self) -> bool:
        """A JWT (three dot-separated base64 parts) is a personal access token; anything else is a legacy token."""
        return self.api_key.count(".") == 2

    def auth_headers(self, refresh: bool = False) -> dict[str, str]:
        """The Authorization header for Label Studio (empty without a key)."""
        if not self.api_key:
            return {}
        if not self.is_personal_access_token:
            return {"Authorization": f"Token {self.api_key}"}
        with self._token_lock:
            if refresh or self._access_token is None:
                response = self.session.post(f"{self.url}/api/token/refresh/", json={"refresh": self.api_key},
                                             timeout=self.timeout)
                if response.status_code in AUTH_STATUSES:
                    self._refused(response.status_code, "POST /api/token/refresh/")
                if response.status_code != 200:
                    raise LabelStudioError(f"POST /api/token/refresh/ answered {response.status_code}: "
                                           f"{response.text[:300]} (is LABEL_STUDIO_API_KEY a valid personal access "
                                           "token of this Label Studio?)", response.status_code)
                self._access_token = response.json()["access"]
            return {"Authorization": f"Bearer {self._access_token}"}

    def request(self, method: str, path: str, expect: Sequence[int] = (200, 201), timeout: float | None = None,
                **kwargs: Any) -> requests.Response:
        """One authenticated call; a 401 with a personal access token gets one retry with a fresh access token.

        Args:
            timeout: Seconds for the connect and for each read (``LABEL_STUDIO_TIMEOUT`` when None).

        Raises:
            LabelStudioError: The answer's status is not in ``expect`` or Label Studio cannot be reached.
        """
        url = path if path.startswith(("http://", "https://")) else f"{self.url}{path}"
        response = None
        for attempt in range(2):
            try:
                headers = self.auth_headers(refresh=attempt > 0)
                response = self.session.request(method, url, headers=headers, timeout=timeout or self.timeout,
                                                **kwargs)
            except requests.RequestException as err:
                cause = unreachable_cause(err, self.url)
                self.link.failed(cause)
                raise LabelStudioError(f"{method} {url} failed: {cause}", cause=cause) from err
            if response.status_code != 401 or not self.is_personal_access_token:
                break
        assert response is not None
        if response.status_code in AUTH_STATUSES and response.status_code not in expect:
            self._refused(response.status_code, f"{method} {path}")
        if response.status_code not in expect:
            raise LabelStudioError(f"{method} {path} answered {response.status_code}: {response.text[:500]}",
                                   response.status_code)
        self.link.ok()
        return response

    def _refused(self, status: int, call: str) -> None:
        """Record and raise a 401/403: LABEL_STUDIO_API_KEY is not accepted."""
        cause = rejected_cause(status, self.url)
        self.link.failed(cause)
        raise LabelStudioError(f"{call} answered {status}: {cause}", status, cause=cause)

    # --- projects ----------------------------------------------------------------------------------------------

    def get_project(self, project_id: int) -> dict[str, Any]:
        """The project, with ``label_config``, ``model_version`` and ``sampling``."""
        return self.request("GET", f"/api/projects/{int(project_id)}").json()

    def update_project(self, project_id: int, **fields: Any) -> dict[str, Any]:
        """PATCH project fields, e.g. ``sampling`` and ``model_version`` (a version needs a prediction first)."""
        return self.request("PATCH", f"/api/projects/{int(project_id)}", json=fields).json()

    def list_ml_backends(self, project_id: int) -> list[dict[str, Any]]:
        """The ML backends connected to a project (``url``, ``auth_method``, ``basic_auth_user``, ...)."""
        return self.request("GET", "/api/ml/", params={"project": int(project_id)}).json()

    def list_webhooks(self, project_id: int) -> list[dict[str, Any]]:
        """The project's webhooks (``id``, ``url``, ``headers``, ...)."""
        return self.request("GET", "/api/webhooks/", params={"project": int(project_id)}).json()

    def update_webhook(self, webhook_id: int, **fields: Any) -> dict[str, Any]:
        """PATCH webhook fields, e.g. ``headers``."""
        return self.request("PATCH", f"/api/webhooks/{int(webhook_id)}/", json=fields).json()

    # --- tasks -------------------------------------------------------------------------------------------------

    def iter_tasks(self, project_id: int, all_fields: bool = False) -> Iterator[dict[str, Any]]:
        """Every task of a project, in id order, ``PAGE_SIZE`` at a time.

        Paged by an id cursor (a Data Manager filter ``id > the last id seen``), not by page number: a task deleted
        while the listing runs would shift every later page by one, and a numbered page would skip a task that
        exists (``resync`` then took its annotations for deleted ones).

        Args:
            all_fields: Include annotations and predictions (heavy: predictions carry brush RLE). Without it only
                ``id`` and ``data`` are fetched.
        """
        # resolve_uri=false keeps cloud URIs as stored (s3://...), not presigned URLs that expire
        params: dict[str, Any] = {"project": int(project_id), "page_size": PAGE_SIZE, "page": 1,
                                  "resolve_uri": "false"}
        if all_fields:
            params["fields"] = "all"
        else:
            params["include"] = "id,data"
        last = 0
        while True:
            body = self.request("GET", "/api/tasks", params={**params, "query": _after_id(last)}).json()
            tasks = [t for t in body.get("tasks", []) if int(t["id"]) > last]  # never one twice, never a loop
            yield from tasks
            if not tasks or len(tasks) >= int(body.get("total", 0)):  # total: the tasks after ``last``
                return
            last = max(int(t["id"]) for t in tasks)

    def get_task(self, task_id: int) -> dict[str, Any] | None:
        """One task (``id``, ``data``, ``annotations``, ...), or None when Label Studio answers 404 (deleted)."""
        response = self.request("GET", f"/api/tasks/{int(task_id)}", expect=(200, 404))
        return None if response.status_code == 404 else response.json()

    def get_annotation(self, annotation_id: int) -> dict[str, Any] | None:
        """One annotation (with its ``task`` id), or None when Label Studio answers 404 (deleted, or its task was)."""
        response = self.request("GET", f"/api/annotations/{int(annotation_id)}/", expect=(200, 404))
        return None if response.status_code == 404 else response.json()

    def import_tasks(self, project_id: int, tasks: list[dict[str, Any]]) -> list[int]:
        """Create tasks (with inline predictions); returns their ids in request order.

        Raises:
            LabelStudioError: Fewer tasks or predictions were created than sent.
        """
        if not tasks:
            return []
        body = self.request("POST", f"/api/projects/{int(project_id)}/import", params={"return_task_ids": "true"},
                            json=tasks).json()
        ids = [int(i) for i in body.get("task_ids") or []]
        expected_predictions = sum(len(t.get("predictions", [])) for t in tasks)
        if len(ids) != len(tasks) or int(body.get("prediction_count") or 0) != expected_predictions:
            raise LabelStudioError(f"importing {len(tasks)} tasks with {expected_predictions} predictions created "
                                   f"{len(ids)} tasks and {body.get('prediction_count')} predictions: {body}")
        return ids

    def import_predictions(self, project_id: int, predictions: list[dict[str, Any]]) -> int:
        """Add predictions to existing tasks.

        Raises:
            LabelStudioError: Label Studio created fewer than sent (it silently drops a ``from_name`` or ``to_name``
                the label config lacks).
        """
        if not predictions:
            return 0
        body = self.request("POST", f"/api/projects/{int(project_id)}/import/predictions", json=predictions).json()
        created = int(body.get("created", -1))
        if created != len(predictions):
            raise LabelStudioError(f"Label Studio created {created} of {len(predictions)} predictions; the others "
                                   "name a control or image the label config does not have")
        return created

    def task_predictions(self, task_id: int) -> list[dict[str, Any]]:
        """Every prediction of one task."""
        return self.request("GET", "/api/predictions", params={"task": int(task_id)}).json()

    # --- files -------------------------------------------------------------------------------------------------

    def delete_task(self, task_id: int) -> None:
        """Delete a task (with its annotations and predictions); a task already gone is fine."""
        self.request("DELETE", f"/api/tasks/{int(task_id)}", expect=(200, 204, 404))

    def delete_prediction(self, prediction_id: int) -> None:
        self.request("DELETE", f"/api/predictions/{int(prediction_id)}", expect=(200, 204, 404))

    def list_views(self, project_id: int) -> list[dict[str, Any]]:
        """The project's Data Manager tabs (``id``, ``data.title``, ``data.filters``)."""
        return self.request("GET", "/api/dm/views/", params={"project": int(project_id)}).json()

    def create_view(self, project_id: int, title: str, filters: dict[str, Any], ordering: list[str]) -> int:
        """Add a Data Manager tab with ``filters`` and a sort ``ordering`` (column names, ``-`` for descending);
        returns its id."""
        body = {"project": int(project_id), "data": {"title": title, "filters": filters, "ordering": ordering}}
        return int(self.request("POST", "/api/dm/views/", json=body).json()["id"])

    def delete_view(self, view_id: int) -> None:
        self.request("DELETE", f"/api/dm/views/{int(view_id)}/", expect=(200, 204, 404))

    def download(self, url: str, task_id: int | None = None) -> bytes:
        """The bytes behind a task's image URL, within ``download_seconds`` in all.

        Relative URLs (``/data/upload/...``, ``/data/local-files/?d=...``) and absolute URLs on Label Studio's host
        are fetched with the token; other absolute URLs without it; cloud URIs (``s3://`` ...) through Label
        Studio's presign endpoint of the task.

        Raises:
            LabelStudioError: The image cannot be fetched, is larger than ``max_download_bytes``, or did not arrive
                within ``download_seconds`` (counted from the request; a server that drips the body is cut off at
                the limit; while the headers come, each read has the smaller of the two timeouts).
        """
        deadline = time.monotonic() + self.download_seconds
        timeout = min(self.timeout, self.download_seconds)  # each read while the headers come
        if url.startswith(CLOUD_SCHEMES):
            if task_id is None:
                raise LabelStudioError(f"cannot fetch {url}: a cloud URI needs its task id for Label Studio's presign")
            encoded = base64.urlsafe_b64encode(url.encode()).decode()
            response = self.request("GET", f"/tasks/{int(task_id)}/presign/", params={"fileuri": encoded},
                                    stream=True, timeout=timeout)
            return self._read_limited(response, url, deadline)
        absolute = urljoin(self.url + "/", url)
        if urlparse(absolute).netloc == urlparse(self.url).netloc:
            if not urlparse(absolute).path.startswith(MEDIA_PREFIXES):
                raise LabelStudioError(f"refusing to fetch {url} with the API token: on Label Studio's host only "
                                       f"media paths ({', '.join(MEDIA_PREFIXES)}) are images")
            return self._read_limited(self.request("GET", absolute, stream=True, timeout=timeout), url, deadline)
        check_image_host(absolute, self.image_hosts)
        try:
            response = self.session.get(absolute, timeout=timeout, stream=True, allow_redirects=False)
        except requests.RequestException as err:
            raise LabelStudioError(f"GET {absolute} failed: {err}") from err
        if response.status_code != 200:
            response.close()
            raise LabelStudioError(f"GET {absolute} answered {response.status_code}", response.status_code)
        return self._read_limited(response, url, deadline)

    def _read_limited(self, response: requests.Response, url: str, deadline: float) -> bytes:
        """The body, or LabelStudioError past ``max_download_bytes`` or the ``deadline`` (monotonic).

        A read blocks until its whole chunk came, so a server that drips bytes slower than the per-read timeout
        would hold a worker for as long as it likes; a watchdog timer shuts the socket down at the deadline, which
        ends a blocked read at once.
        """
        chunks, size = [], 0
        watchdog = _Watchdog(response, deadline - time.monotonic())
        try:
            with response, watchdog:
                for chunk in response.iter_content(64 * 1024):
                    size += len(chunk)
                    if size > self.max_download_bytes:
                        raise LabelStudioError(f"{url}: larger than {self.max_download_bytes // 2**20} MiB "
                                               "(MAX_DOWNLOAD_MB)")
                    chunks.append(chunk)
        except (requests.RequestException, OSError) as err:
            if not watchdog.fired:
                raise LabelStudioError(f"{url}: download failed: {err}") from err
        if watchdog.fired:  # also when the cut looked like the end of a body without a length
            raise LabelStudioError(f"{url}: not downloaded within {self.download_seconds:g} s (DOWNLOAD_SECONDS)")
        return b"".join(chunks)


class _Watchdog:
    """Ends a download at its deadline by shutting its socket down, which wakes a read blocked on it (closing the
    response from another thread would not). Stopped before the response closes, so it never touches a file
    descriptor that was closed and reused."""

    def __init__(self, response: requests.Response, seconds: float) -> None:
        self.response = response
        self.fired = False
        self._stopped = False
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(0.0, seconds), self._fire)
        self._timer.daemon = True

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        with self._lock:
            self._stopped = True

    def _fire(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self.fired = True
            try:
                with socket.socket(fileno=os.dup(self.response.raw.fileno())) as sock:
                    sock.shutdown(socket.SHUT_RDWR)  # on the socket itself: every descriptor of it sees the end
            except (OSError, ValueError, AttributeError):
                pass  # no socket (already closed, or not a socket): the read has ended or cannot block


class ImageHostRefused(LabelStudioError):
    """A task's image URL points at a host that is neither Label Studio's nor in ALLOWED_IMAGE_HOSTS."""


def check_image_host(url: str, allowed: frozenset[str]) -> None:
    """Raise ImageHostRefused unless ``url`` is http(s) on a ``host`` or ``host:port`` of ALLOWED_IMAGE_HOSTS.

    Why: task data and /predict bodies come from anyone who can create tasks; fetching whatever they name would
    let them probe hosts and ports the backend reaches (blind SSRF). A bare ``host`` entry allows the scheme's
    default port only.
    """
    parts = urlparse(url)
    try:
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:  # a port that is not a number
        port = None
    host = parts.hostname or ""
    name = f"[{host}]" if ":" in host else host
    default = port == {"http": 80, "https": 443}.get(parts.scheme)
    if port is None or not name or not ({f"{name}:{port}"} & allowed or (default and name in allowed)):
        raise ImageHostRefused("the image's host is neither Label Studio's nor in ALLOWED_IMAGE_HOSTS, so it is not "
                               "fetched")


def _after_id(last: int) -> str:
    """The Data Manager ``query`` of the tasks with an id above ``last``, by id."""
    item = {"filter": "filter:tasks:id", "operator": "greater", "type": "Number", "value": int(last)}
    return json.dumps({"filters": {"conjunction": "and", "items": [item]}, "ordering": ["tasks:id"]})


def client_from_config(config: Config) -> LabelStudioClient:
    """The client for LABEL_STUDIO_URL with LABEL_STUDIO_API_KEY (a warning when the key is empty)."""
    if not config.label_studio_api_key:
        log.warning("LABEL_STUDIO_API_KEY is empty: the backend cannot import query tasks or read images from "
                    "Label Studio; set it to an API token of a Label Studio user with access to the projects")
    return LabelStudioClient(config.label_studio_url, config.label_studio_api_key,
                             timeout=config.label_studio_timeout,
                             max_download_bytes=int(config.max_download_mb * 2**20),
                             download_seconds=config.download_seconds, image_hosts=config.image_hosts)
