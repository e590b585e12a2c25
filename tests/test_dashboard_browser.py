"""The dashboard in a real browser: headless Chromium renders a project in mid-round; its figures match /metrics.

Needs Debian's ``chromium`` (``make test`` installs it where apt-get can); skipped without it. The backend is the
real Flask app over the fake Label Studio (tests/fake_label_studio.py), served by werkzeug on a loopback port, after
two answered rounds and half of the third, with one quarantined event and one unreadable image. Set
``OVAAL_DASHBOARD_SCREENSHOT=docs/images/dashboard.png`` to keep the screenshot (the README shows it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from ovaal_backend.backend.app import Backend, create_app
from ovaal_backend.config import Config

from .fake_label_studio import TINY, UID, XML, P, add_scenes, answer_round, make_fake_project
from .ls_server import free_port, loopback_session

WINDOW = (1280, 1720)
"""The screenshot's size: the whole page of one project."""


def chromium_binary() -> str | None:
    """Debian's Chromium, or None."""
    for candidate in (os.environ.get("OVAAL_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def chromium(binary: str, profile: Path, *args: str) -> subprocess.Popen:
    """Headless Chromium that reaches nothing but loopback, with its own profile folder."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-proxy-server", "--hide-scrollbars",
             "--mute-audio", f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
             "--virtual-time-budget=7000"]  # virtual milliseconds: past the page's first refresh (5 s)
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

    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    keep = os.environ.get("OVAAL_DASHBOARD_SCREENSHOT")
    if keep:
        Path(keep).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, keep)
