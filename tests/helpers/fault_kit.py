"""Tools of the fault tests: a loopback HTTP proxy that records and injects faults, a small project in a real Label
Studio, a scripted annotator, and the invariants checked in Label Studio itself.

Shared by tests/test_crash_recovery.py (kill -9 of the backend), tests/test_ls_faults.py (Label Studio answering
502/503, stalling, dropping predictions), the other end-to-end tests that run the backend beside Label Studio and
benchmarks/webhook_load.py; imported as ``tests.helpers.fault_kit``.

``Proxy`` is a real HTTP hop, nothing is mocked: every request is forwarded to the real server unless the plan says
otherwise, and the answer comes back byte for byte.
"""

from __future__ import annotations

import http.client
import json
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import requests
from PIL import Image

from ovaal_backend.backend.convert import ParsedLabelConfig
from tests.helpers import ls_server
from tests.helpers.annotator import answer_keypoints
from tests.helpers.ls_server import BackendProcess, free_port, loopback_session
from tests.helpers.synthetic import make_dataset

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade", "host", "content-length"}


@dataclass
class Fault:
    """What the proxy does with one request instead of forwarding it as it is.

    kind: ``status`` (answer ``status`` without forwarding), ``stall`` (forward, then hold the answer ``seconds``
    and close the connection without one: the server did the work, the client never hears of it),
    ``drop_predictions`` (forward an import with every task's ``predictions`` removed), ``late`` (hold the request
    ``seconds`` before forwarding it and answer nothing: the client gives up before the server even starts, and
    the server does the work afterwards, as a Label Studio slower than the client's timeout does).
    """

    kind: str
    status: int = 502
    seconds: float = 0.0

    def __str__(self) -> str:
        return {"status": f"answer {self.status}", "stall": f"stall {self.seconds:.0f} s",
                "drop_predictions": "drop the predictions", "late": f"forward after {self.seconds:.0f} s"}[self.kind]


@dataclass
class Exchange:
    """One request through the proxy, as recorded."""

    method: str
    path: str
    status: int | None  # what the client got (None: no answer, the connection was closed)
    seconds: float
    fault: Fault | None = None
    body: dict[str, Any] | list[Any] | None = None  # the JSON request body, when the plan asked to keep it
    at: float = field(default_factory=time.monotonic)


Plan = Callable[[str, str, bytes], Fault | None]
"""``plan(method, path, body) -> Fault or None``: called once per request, in arrival order."""


class Proxy:
    """A threading HTTP server on 127.0.0.1 that forwards every request to ``target`` (one real hop).

    Args:
        target: Base URL of the real server (``http://127.0.0.1:PORT``).
        plan: Chooses a fault per request (None = forward as it is).
        keep_body: Which requests' JSON bodies the log keeps (by path), e.g. webhooks.
        timeout: Seconds the proxy waits for the real server.
        keep_host: Forward the client's Host header (a reverse proxy in front of the backend, as nginx's
            ``proxy_set_header Host $host``: the backend then knows itself by the address Label Studio uses).
    """

    def __init__(self, target: str, plan: Plan | None = None, keep_body: Callable[[str], bool] | None = None,
                 timeout: float = 120.0, keep_host: bool = False) -> None:
        self.keep_host = keep_host
        parsed = urlparse(target)
        self.target_host, self.target_port = parsed.hostname, parsed.port
        self.plan = plan or (lambda method, path, body: None)
        self.keep_body = keep_body or (lambda path: False)
        self.timeout = timeout
        self.log: list[Exchange] = []
        self.lock = threading.Lock()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)

    def __enter__(self) -> Proxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    def exchanges(self, predicate: Callable[[Exchange], bool] = lambda e: True) -> list[Exchange]:
        with self.lock:
            return [e for e in self.log if predicate(e)]

    def _record(self, exchange: Exchange) -> None:
        with self.lock:
            self.log.append(exchange)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _any(self) -> None:
                t0 = time.monotonic()
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy.lock:  # one plan decision at a time: the schedule is in arrival order
                    fault = proxy.plan(self.command, self.path, body)
                kept = None
                if proxy.keep_body(self.path):
                    try:
                        kept = json.loads(body or b"null")
                    except ValueError:
                        kept = None
                if fault is not None and fault.kind == "status":
                    self._answer(fault.status, [("Content-Type", "text/html")],
                                 f"<h1>{fault.status} injected by the fault proxy</h1>".encode())
                    proxy._record(Exchange(self.command, self.path, fault.status, time.monotonic() - t0, fault,
                                           kept))
                    return
                if fault is not None and fault.kind == "late":
                    time.sleep(fault.seconds)
                if fault is not None and fault.kind == "drop_predictions":
                    tasks = json.loads(body)
                    for task in tasks:
                        task.pop("predictions", None)
                    body = json.dumps(tasks).encode()
                try:
                    status, headers, payload = self._forward(body)
                except OSError as err:  # the real server is down or died mid-request
                    status, headers, payload = 502, [("Content-Type", "text/plain")], f"proxy: {err}".encode()
                if fault is not None and fault.kind in ("stall", "late"):
                    time.sleep(fault.seconds)
                    proxy._record(Exchange(self.command, self.path, None, time.monotonic() - t0, fault, kept))
                    self.close_connection = True
                    return
                self._answer(status, headers, payload)
                proxy._record(Exchange(self.command, self.path, status, time.monotonic() - t0, fault, kept))

            def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
                conn = http.client.HTTPConnection(proxy.target_host, proxy.target_port, timeout=proxy.timeout)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                    headers["Host"] = (self.headers.get("Host") if proxy.keep_host else None) \
                        or f"{proxy.target_host}:{proxy.target_port}"
                    headers["Content-Length"] = str(len(body))
                    conn.request(self.command, self.path, body=body if body or self.command != "GET" else None,
                                 headers=headers)
                    response = conn.getresponse()
                    payload = response.read()
                    return response.status, [(k, v) for k, v in response.getheaders()
                                             if k.lower() not in HOP_BY_HOP], payload
                finally:
                    conn.close()

            def _answer(self, status: int, headers: list[tuple[str, str]], payload: bytes) -> None:
                try:
                    self.send_response(status)
                    for key, value in headers:
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                except OSError:  # the client gave up (Label Studio waits 1 s for a webhook)
                    self.close_connection = True

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = do_HEAD = _any

        return Handler


# ==================================================================== a small project in the real Label Studio

AUTH = ("ovaal", "fault-secret")
SETTINGS = {  # tiny and endless: each round trains for a moment; the project never runs out of rounds
    "IMAGE_HEIGHT": "48", "IMAGE_WIDTH": "64", "INIT_PIXELS": "6", "PIXELS_PER_ROUND": "6", "ROUNDS": "50",
    "FIRST_ROUND_EPOCHS": "1", "EPOCHS": "1", "BATCH_SIZE": "4", "SEMI": "false",
    "BASIC_AUTH_USER": AUTH[0], "BASIC_AUTH_PASS": AUTH[1],
}


def backend_env(label_studio, model_dir, **extra: str) -> dict[str, str]:
    """ls_server.backend_env with this kit's small endless project (``extra`` overrides)."""
    return ls_server.backend_env(label_studio, model_dir, SETTINGS, **extra)


@contextmanager
def running_backend(env: dict[str, str], log_path: Path) -> Iterator[BackendProcess]:
    """The backend serving while the block runs; its log's tail is printed after, so a failure shows what it did.

    A backend that does not start raises ``BackendError`` (its message holds the log's tail).
    """
    backend = BackendProcess(env, log_path, startup_timeout=120)
    backend.start()
    try:
        yield backend
    finally:
        backend.stop()
        print("\n--- backend log (tail) ---\n" + backend.log_tail(2500))


def project_metrics(backend: BackendProcess, project_id: int, timeout: float = 2.0) -> dict[str, Any] | None:
    """The project's /metrics, or None while the backend is down."""
    try:
        response = backend.session().get(f"{backend.url}/metrics", timeout=timeout)
        response.raise_for_status()
        return response.json()["projects"].get(str(project_id))
    except Exception:
        return None


def ls_session(label_studio: Any) -> requests.Session:
    """Plain HTTP to Label Studio's API with the legacy token (loopback only)."""
    session = loopback_session()
    session.headers.update(label_studio.headers())
    return session


@dataclass
class SmallProject:
    """A Label Studio project of a few synthetic images (tests/helpers/synthetic.py) and their ground truth."""

    id: int
    sources: dict[int, np.ndarray]  # source task id -> ground truth (-1 = void)
    parsed_config: ParsedLabelConfig


def make_project(label_studio: Any, name: str, n_images: int, height: int = 48, width: int = 64,
                 seed: int = 0) -> SmallProject:
    """What an admin does: the 3-class config, a local storage over the images, the images imported."""
    from tests.helpers.fake_label_studio import XML

    folder = label_studio.document_root / name
    make_dataset(folder / "synthetic", n_images, seed=seed, height=height, width=width)
    truth: dict[str, np.ndarray] = {}
    for path in sorted((folder / "synthetic" / "images").glob("*.png")):
        shutil.move(path, folder / path.name)
        label = np.asarray(Image.open(folder / "synthetic" / "labels" / path.name), dtype=np.int64)
        truth[path.name] = np.where(label == 255, -1, label)
    shutil.rmtree(folder / "synthetic")
    session = ls_session(label_studio)
    base = label_studio.url
    project = _ok(session.post(f"{base}/api/projects/", json={"title": name, "label_config": XML})).json()
    _ok(session.post(f"{base}/api/storages/localfiles/", json={
        "project": project["id"], "path": str(folder), "title": "images", "use_blob_urls": True}))
    names = sorted(truth)
    imported = _ok(session.post(f"{base}/api/projects/{project['id']}/import", params={"return_task_ids": "true"},
                                json=[{"data": {"image": label_studio.local_files_url(folder / n)}}
                                      for n in names])).json()
    return SmallProject(project["id"], dict(zip(imported["task_ids"], (truth[n] for n in names), strict=True)),
                        ParsedLabelConfig.parse(XML))


def connect_model(label_studio: Any, project_id: int, url: str, auth: tuple[str, str] = AUTH) -> dict[str, Any]:
    """Settings > Model > Connect model, with basic auth: Label Studio calls /health and /setup, creates the webhook."""
    return _ok(ls_session(label_studio).post(f"{label_studio.url}/api/ml/", json={
        "project": project_id, "url": url, "title": "OVAAL", "auth_method": "BASIC_AUTH",
        "basic_auth_user": auth[0], "basic_auth_pass": auth[1]}, timeout=120)).json()


def webhook_has_auth(label_studio: Any, project_id: int, auth: tuple[str, str] = AUTH) -> bool:
    """The backend has added its basic-auth header to the project's webhook (before that, webhooks get 401)."""
    import base64

    header = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    hooks = _ok(ls_session(label_studio).get(f"{label_studio.url}/api/webhooks/",
                                             params={"project": project_id})).json()
    return any((h.get("headers") or {}).get("Authorization") == header for h in hooks)


def all_tasks(label_studio: Any, project_id: int, session: requests.Session | None = None) -> list[dict[str, Any]]:
    """Every task of the project read from Label Studio itself, with its annotations and predictions."""
    session = session or ls_session(label_studio)
    tasks, page = [], 1
    while True:
        body = _ok(session.get(f"{label_studio.url}/api/tasks", params={
            "project": project_id, "fields": "all", "page_size": 100, "page": page}, timeout=60)).json()
        tasks += body["tasks"]
        if not body["tasks"] or len(tasks) >= body["total"]:
            return tasks
        page += 1


def query_tasks(tasks: list[dict[str, Any]], round_index: int | None = None) -> list[dict[str, Any]]:
    """The tasks with the backend's ``ovaal_query`` marker (of one round)."""
    return [t for t in tasks if t["data"].get("ovaal_query")
            and (round_index is None or t["data"].get("ovaal_round") == round_index)]


def live_annotations(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every annotation Label Studio holds on the tasks (submitted and skipped)."""
    return [a for t in tasks for a in t.get("annotations") or []]


def invariants(tasks: list[dict[str, Any]]) -> dict[str, Any]:
    """What must never happen, counted in Label Studio: more than one query task per round and source image, more
    than one prediction per task and model version."""
    per_source = Counter((t["data"].get("ovaal_round"), t["data"].get("ovaal_source_task")) for t in query_tasks(tasks))
    per_version = Counter((t["id"], p.get("model_version")) for t in tasks for p in t.get("predictions") or [])
    return {"query_tasks": sum(per_source.values()), "duplicate_query_tasks": {k: n for k, n in per_source.items()
                                                                               if n > 1},
            "predictions": sum(per_version.values()),
            "duplicate_predictions": {k: n for k, n in per_version.items() if n > 1}}


def keypoint_prediction(task: dict[str, Any]) -> dict[str, Any] | None:
    """The task's keypoint prediction (the query), or None while Label Studio has none."""
    for p in task.get("predictions") or []:
        if any(r.get("type") == "keypointlabels" for r in p.get("result") or []):
            return p
    return None


def annotate(label_studio: Any, task: dict[str, Any], project: SmallProject,
             session: requests.Session | None = None) -> int:
    """The scripted annotator submits a query task (every point from the ground truth); returns the annotation id."""
    session = session or ls_session(label_studio)
    prediction = keypoint_prediction(task)
    assert prediction is not None, f"task {task['id']} has no query"
    truth = project.sources[int(task["data"]["ovaal_source_task"])]
    result = answer_keypoints(prediction["result"], truth, project.parsed_config.classes,
                              project.parsed_config.ignore_label)
    return int(_ok(session.post(f"{label_studio.url}/api/tasks/{task['id']}/annotations/",
                                json={"result": result, "was_cancelled": False}, timeout=60)).json()["id"])


def update_annotation(label_studio: Any, annotation_id: int, session: requests.Session | None = None) -> None:
    """The annotator presses Update on a submitted annotation (Label Studio sends ANNOTATION_UPDATED)."""
    session = session or ls_session(label_studio)
    current = _ok(session.get(f"{label_studio.url}/api/annotations/{annotation_id}/", timeout=60)).json()
    _ok(session.patch(f"{label_studio.url}/api/annotations/{annotation_id}/",
                      json={"result": current["result"]}, timeout=60))


def stored_annotation_ids(model_dir: Path, project_id: int) -> set[int]:
    """The annotation ids in the backend's SQLite file (read-only; the backend may be running)."""
    import sqlite3

    path = Path(model_dir) / str(project_id) / "labels.sqlite3"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return {int(r[0]) for r in db.execute("SELECT annotation_id FROM annotations")}
    finally:
        db.close()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else float("nan")


def _ok(response: requests.Response) -> requests.Response:
    if response.status_code >= 400:
        raise AssertionError(f"{response.request.method} {response.url} -> {response.status_code}: "
                             f"{response.text[:500]}")
    return response
