"""The dashboard in a real browser: headless Chromium renders a project in mid-round; its figures match /metrics.

Needs Debian's ``chromium`` (``make test`` installs it where apt-get can); skipped without it. The backend is the
real Flask app over the fake Label Studio (tests/helpers/fake_label_studio.py), served by werkzeug on a loopback port,
after two answered rounds and half of the third, with one quarantined event and one unreadable image. Set
``OVAAL_DASHBOARD_SCREENSHOT=docs/images/dashboard.png`` to keep the screenshot (the README shows it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from werkzeug.serving import make_server

from ovaal_backend.backend.app import create_app
from ovaal_backend.backend.convert import ParsedLabelConfig, brush_results
from ovaal_backend.backend.dashboard import STATIC
from ovaal_backend.backend.registry import Backend
from ovaal_backend.config import Config
from tests.helpers.fake_label_studio import TINY, UID, XML, P, add_scenes, answer_round, make_fake_project
from tests.helpers.ls_server import free_port, loopback_session
from tests.helpers.synthetic import VOID

WINDOW = (1280, 1720)
"""The screenshot's size: the whole page of one project."""


def chromium_binary() -> str | None:
    """Debian's Chromium, or None."""
    for candidate in (os.environ.get("OVAAL_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def chromium(binary: str, profile: Path, *args: str, budget_ms: int = 7000) -> subprocess.Popen:
    """Headless Chromium that reaches nothing but loopback, with its own profile folder; the page runs for
    ``budget_ms`` virtual milliseconds (timers fire without the wall-clock wait)."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-proxy-server", "--hide-scrollbars",
             "--mute-audio", f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
             f"--virtual-time-budget={budget_ms}"]  # by default past the page's first refresh (5 s)
    return subprocess.Popen([binary, *flags, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = 60) -> str:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.communicate()
        raise
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode(errors="replace")


@pytest.fixture
def mid_round(tmp_path):
    """The backend served on 127.0.0.1: round 2 of 3 open with half of its query tasks answered."""
    fake = make_fake_project()[0]
    truth = add_scenes(fake, 6)
    fake._new_task(P, {"image": "/data/upload/1/missing.png"})  # a source image that cannot be fetched
    config = Config(**{**TINY, "model_dir": str(tmp_path / "models"), "rounds": 3, "init_pixels": 8,
                       "pixels_per_round": 9})
    backend = Backend(config, client_factory=lambda _: fake, start_workers=False)
    app = create_app(config, backend)
    client = app.test_client()
    assert client.post("/setup", json={"project": UID, "schema": XML}).status_code == 200
    worker, driver = backend.worker(P), backend.driver(P)
    assert worker.run_pending()
    for round_index in (0, 1):
        answer_round(fake, driver, truth, round_index)
        assert worker.run_pending()
    answer_round(fake, driver, truth, 2, only=3)
    corrected = min(truth)  # one source mask corrected to its ground truth (void painted with no region)
    payload = fake.annotate(corrected, brush_results(np.where(truth[corrected] == VOID, -1,
                                                              truth[corrected].astype(np.int64)),
                                                     ParsedLabelConfig.parse(XML)))
    driver.add_event(payload["action"], payload)
    driver.add_event("ANNOTATION_CREATED", {"annotation": {"id": 9999, "task": 9999, "result": []}})
    assert worker.run_pending()
    worker.start()  # a live worker, idle until the next answer
    assert worker.wait_idle(30)
    requested: list[str] = []
    inner = app.wsgi_app

    def recording(environ, start_response):  # which paths the browser asked for
        requested.append(environ.get("PATH_INFO", ""))
        return inner(environ, start_response)

    app.wsgi_app = recording
    server = make_server("127.0.0.1", free_port(), app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", requested
    finally:
        server.shutdown()
        thread.join(10)
        backend.shutdown(timeout=30)


def fields(dom: str, project: str) -> dict[str, str]:
    """``data-field`` name -> text of the plain-text figures in the project's section."""
    section = dom[dom.index(f'data-project="{project}"'):]
    return {name: text.strip() for name, text in re.findall(r'data-field="(\w+)"[^>]*>([^<]*)<', section)}


def chart_attribute(dom: str, chart: str, name: str) -> str:
    """An attribute of the ``data-chart`` element (the page writes counts there)."""
    tag = re.search(rf'<[^>]*data-chart="{chart}"[^>]*>', dom)
    assert tag is not None, f"no {chart} chart"
    value = re.search(rf'{name}="([^"]*)"', tag.group(0))
    assert value is not None, tag.group(0)
    return value.group(1)


@pytest.mark.slow  # headless Chromium
def test_dashboard_renders_the_figures_of_metrics(tmp_path, mid_round):
    binary = chromium_binary()
    if binary is None:
        pytest.skip("no chromium binary (Debian: apt-get install -y chromium; `make test` installs it)")
    url, requested = mid_round
    shot = tmp_path / "dashboard.png"
    dump = chromium(binary, tmp_path / "profile-dom", "--dump-dom", f"{url}/dashboard")
    picture = chromium(binary, tmp_path / "profile-shot", f"--screenshot={shot}",
                       f"--window-size={WINDOW[0]},{WINDOW[1]}", f"{url}/dashboard")
    dom = finish(dump)
    finish(picture)
    browsed = list(requested)
    metrics = loopback_session().get(f"{url}/metrics", timeout=30).json()["projects"][str(P)]

    assert 'data-rendered="1"' in dom, dom[:2000]  # the script ran and drew one project
    assert "/dashboard/data" in browsed and "refresh failed" not in dom  # and refreshed it from the JSON route
    assert all(p.startswith("/dashboard") for p in browsed), browsed  # nothing but the page and its assets
    shown = fields(dom, str(P))
    assert (metrics["phase"], metrics["round"], metrics["model_version"]) == ("querying", 2, "ovaal-2")
    assert shown["phase"] == metrics["phase"]
    assert shown["round"] == str(metrics["round"])
    assert shown["model_version"] == metrics["model_version"]
    assert shown["answered_query_tasks"] == str(metrics["answered_query_tasks"]) == "3"
    assert shown["query_tasks"] == str(metrics["query_tasks"]) == "6"
    assert shown["device"] == metrics["device"] == "cpu"
    assert shown["worker"].startswith("idle since")
    for name in ("annotations", "points", "pending_events"):
        assert shown[name] == str(metrics[name]), name
    # The charts: one bar per source image, a point per round with answers, a mark per training.
    assert chart_attribute(dom, "budget", "data-images") == str(len(metrics["labelled_per_image"])) == "7"
    assert dom.count('data-series="all"') == len(metrics["quality"]) == 3
    assert dom.count('<rect') > len(metrics["labelled_per_image"])
    assert chart_attribute(dom, "loss", "data-trainings") == str(len(metrics["trainings"])) == "2"
    assert chart_attribute(dom, "timeline", "data-rounds") == str(len(metrics["timeline"])) == "3"
    assert chart_attribute(dom, "clicks", "data-classes") == str(len(metrics["class_clicks"]))
    quarantined = metrics["quarantined"]
    assert len(quarantined["events"]) == 1 and len(quarantined["images"]) == 1
    assert 'data-field="quarantined" data-events="1" data-images="1"' in dom
    corrections = metrics["corrections"]  # the corrected mask, measured against ovaal-2's
    assert (corrections["count"], corrections["measured"]) == (1, 1)
    assert 'data-field="corrections" data-count="1" data-measured="1"' in dom
    assert shown["corrections_mean_miou"] == f"{corrections['mean_miou']:.1f} %"
    assert shown["corrections_mean_kept"] == f"{100 * corrections['mean_kept']:.1f} %"
    present = [name for name, iou in corrections["per_class_iou"].items() if iou is not None]
    assert chart_attribute(dom, "correction-iou", "data-classes") == str(len(present))

    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    keep = os.environ.get("OVAAL_DASHBOARD_SCREENSHOT")
    if keep:
        Path(keep).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, keep)


POLL_HARNESS = """<!doctype html>
<html><body>
<span id="status"></span>
<main id="projects" data-url="/dashboard/data"></main>
<script id="initial-data" type="application/json">@DATA@</script>
<script>
  // fetch stands in for a busy backend: each answer takes 12 s (virtual), and every second call fails.
  var calls = [], inFlight = 0, most = 0;
  window.fetch = function () {
    var call = {start: Date.now(), index: calls.length};
    calls.push(call);
    inFlight += 1;
    most = Math.max(most, inFlight);
    return new Promise(function (resolve, reject) {
      setTimeout(function () {
        inFlight -= 1;
        call.end = Date.now();
        if (call.index % 2) { reject(new Error('backend busy')); return; }
        resolve({ok: true, json: function () { return Promise.resolve(JSON.parse(
          document.getElementById('initial-data').textContent)); }});
      }, 12000);
    });
  };
</script>
<script src="@SCRIPT@"></script>
<script>
  setTimeout(function () {
    var gaps = calls.slice(1).map(function (c, i) { return c.start - calls[i].end; });
    document.body.setAttribute('data-most', most);
    document.body.setAttribute('data-calls', calls.length);
    document.body.setAttribute('data-gaps', gaps.join(' '));
  }, 59000);
</script>
</body></html>
"""
"""The real dashboard.js on a page whose ``fetch`` answers slowly (no server: the script's own logic is tested)."""


@pytest.mark.slow  # headless Chromium
def test_dashboard_polls_one_request_at_a_time(tmp_path):
    """The page asks again only ``refresh_seconds`` after the last answer, also after a failed one: with answers
    slower than the refresh, a fixed interval kept several requests in flight per open page (issue 16)."""
    binary = chromium_binary()
    if binary is None:
        pytest.skip("no chromium binary (Debian: apt-get install -y chromium; `make test` installs it)")
    data = {"projects": {}, "refresh_seconds": 5, "server_time": 0, "model_class": "OVAAL", "version": "test"}
    page = tmp_path / "poll.html"
    page.write_text(POLL_HARNESS.replace("@DATA@", json.dumps(data)).replace("@SCRIPT@",
                                                                          (STATIC / "dashboard.js").as_uri()))
    dom = finish(chromium(binary, tmp_path / "profile", "--dump-dom", page.as_uri(), budget_ms=60000))
    body = re.search(r"<body[^>]*>", dom).group(0)
    most, calls = (int(re.search(rf'data-{name}="(\d+)"', body).group(1)) for name in ("most", "calls"))
    gaps = [int(g) for g in re.search(r'data-gaps="([^"]*)"', body).group(1).split()]
    # 59 s: asked at 5, 22, 39 and 56 s (each answer 12 s, then 5 s); an interval would have asked 11 times.
    assert most == 1 and calls == 4, body
    assert len(gaps) == 3 and all(g >= 5000 for g in gaps), gaps  # the second answer failed: the chain went on
