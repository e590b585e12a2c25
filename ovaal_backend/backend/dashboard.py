"""The dashboard: one HTML page per backend at ``/dashboard``, one section per project, refreshing itself.

It shows the facts ``/metrics`` returns (``/dashboard/data`` is the same JSON, plus when each worker started what
it is doing), drawn by ``static/dashboard.js`` as inline SVG: no CDN, no library, so it works offline. The page and
its assets sit behind the same basic auth as ``/metrics`` (``app._add_guards`` leaves only ``/`` and ``/health``
open). The first paint needs no request: the page carries the data it was served with.
"""

from __future__ import annotations

import json
import math
import threading
import time
from html import escape
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, jsonify, url_for

from .status import metrics_payload

STATIC = Path(__file__).resolve().parent / "static"
"""The page's assets (shipped with the package)."""
REFRESH_SECONDS = 5
"""How often the page fetches ``/dashboard/data``."""


class WorkerClock:
    """When each project's worker started what it is doing now, as seen by the dashboard's requests.

    The worker reports only what it does (``busy_with``, None when idle). A change seen between two requests is
    dated at the request that saw it (``how``: ``seen``). What the first request finds is dated from stored facts
    (``stored``: ``phase_since``, when the worker is idle or works on the current phase), else at that request
    (``first``: it has been so at least since then).
    """

    def __init__(self) -> None:
        self._seen: dict[str, tuple[Any, float, str]] = {}
        self._lock = threading.Lock()

    def since(self, project: str, doing: Any, phase_since: float | None, phase: str | None,
              now: float | None = None) -> dict[str, Any]:
        """``{"doing", "since": unix time, "how"}`` for what the worker of ``project`` is doing (None = idle)."""
        now = time.time() if now is None else now
        with self._lock:
            previous = self._seen.get(project)
            if previous is None or previous[0] != doing:
                if previous is not None:
                    entry = (doing, now, "seen")
                elif phase_since is not None and doing in (None, phase):
                    entry = (doing, float(phase_since), "stored")
                else:
                    entry = (doing, now, "first")
                self._seen[project] = previous = entry
            return {"doing": doing, "since": previous[1], "how": previous[2]}


def dashboard_blueprint(backend: Any) -> Blueprint:
    """The routes: ``GET /dashboard`` (the page), ``GET /dashboard/data`` (JSON) and ``/dashboard/static/<file>``."""
    blueprint = Blueprint("dashboard", __name__, static_folder=str(STATIC), static_url_path="/dashboard/static")
    clock = WorkerClock()

    def data() -> dict[str, Any]:
        body = metrics_payload(backend)
        now = time.time()
        workers = {}
        for key, project in body["projects"].items():
            workers[key] = clock.since(key, project["worker"].get("busy_with"), project.get("phase_since"),
                                       project.get("phase"), now)
        return _finite(dict(body, server_time=now, refresh_seconds=REFRESH_SECONDS, workers=workers))

    @blueprint.get("/dashboard")
    def page() -> Response:
        payload = json.dumps(data(), sort_keys=True).replace("<", "\\u003c")
        html = PAGE.format(css=escape(url_for("dashboard.static", filename="dashboard.css")),
                           js=escape(url_for("dashboard.static", filename="dashboard.js")),
                           data_url=escape(url_for("dashboard.data_route")),
                           metrics_url=escape(url_for("metrics")), payload=payload)
        return Response(html, mimetype="text/html", headers={"Cache-Control": "no-store"})

    @blueprint.get("/dashboard/data")
    def data_route() -> Response:
        response = jsonify(data())
        response.headers["Cache-Control"] = "no-store"
        return response

    return blueprint


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as None: a diverged loss must not make the page's JSON unreadable."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>OVAAL backend dashboard</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{css}">
</head>
<body>
<header class="top">
  <h1>OVAAL backend</h1>
  <span id="status" class="muted">loading...</span>
  <a class="muted" href="{metrics_url}">/metrics (JSON)</a>
</header>
<main id="projects" data-url="{data_url}"><p class="muted">No JavaScript: see {metrics_url}.</p></main>
<script id="initial-data" type="application/json">{payload}</script>
<script src="{js}"></script>
</body>
</html>
"""
"""The page around the data; ``static/dashboard.js`` fills ``#projects``."""
