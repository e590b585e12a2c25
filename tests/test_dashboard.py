"""The dashboard: the pre-label quality computation, the facts /metrics gained for it, and its routes."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from ovaal_backend.backend.app import create_app
from ovaal_backend.backend.convert import pixel_to_percent
from ovaal_backend.backend.dashboard import WorkerClock
from ovaal_backend.backend.facts import ProjectFacts
from ovaal_backend.backend.progress import class_clicks, phase_since, prelabel_quality, round_timeline
from ovaal_backend.backend.registry import Backend
from ovaal_backend.backend.store import ProjectStore
from ovaal_backend.config import IGNORE_INDEX
from tests.helpers.annotator import answer_keypoints
from tests.helpers.fake_label_studio import CLASSES, TINY, UID, XML, P, add_scenes, answer_round
from tests.helpers.fake_label_studio import make_fake_project as _make_fake_project

ROOT = Path(__file__).resolve().parents[1]


def region(row: int, col: int, label: str, width: int = 40, height: int = 20) -> dict:
    """A query keypoint as imported: percent coordinates of the pixel's centre, the pre-label, the image size."""
    x, y = pixel_to_percent(col, row, width, height)
    return {"original_width": width, "original_height": height, "type": "keypointlabels",
            "value": {"x": x, "y": y, "width": 0.6, "keypointlabels": [label]}}


# --------------------------------------------------------------------------- the quality computation

def test_prelabel_quality_by_hand():
    names = ["road", "car", "sky"]  # stored label indices
    queries = [
        (0, 10, [region(1, 1, "ignore"), region(2, 2, "ignore"), region(3, 3, "ignore")]),
        (1, 10, [region(5, 5, "car"), region(6, 6, "car"), region(7, 7, "road"), region(8, 8, "sky")]),
        (1, 11, [region(0, 0, "car"), region(19, 39, "road"), region(4, 4, "road", width=80)]),
        (2, 11, [region(9, 9, "sky", height=20), {"value": {"x": 1, "y": 1, "keypointlabels": ["car"]}}]),
    ]
    answers = {
        10: np.array([[1, 1, IGNORE_INDEX],  # round 0: kept "ignore"
                      [2, 2, 0],  # round 0: changed to road
                      # (3, 3) not answered (point moved or deleted): not counted
                      [5, 5, 1], [6, 6, 0], [7, 7, 0], [8, 8, IGNORE_INDEX]]),
        11: np.array([[0, 0, 1], [19, 39, 2], [9, 9, 2], [4, 4, 0]]),  # each region read at its own image size
    }
    quality = prelabel_quality(queries, answers, names, "ignore")
    assert quality == {
        "0": {"ignore": {"kept": 1, "asked": 2}},
        "1": {"car": {"kept": 2, "asked": 3}, "road": {"kept": 2, "asked": 3}, "sky": {"kept": 0, "asked": 1}},
        "2": {"sky": {"kept": 1, "asked": 1}},  # the region without a size is left out
    }
    assert list(quality) == ["0", "1", "2"]
    assert prelabel_quality([], answers, names) == {}
    # A stored index past label_names (should not happen) reads as the ignore label, not a crash.
    assert prelabel_quality([(3, 12, [region(0, 0, "ignore")])], {12: np.array([[0, 0, 7]])}, names) == {
        "3": {"ignore": {"kept": 1, "asked": 1}}}


def test_class_clicks_timeline_and_phase_since():
    answers = {1: np.array([[0, 0, 0], [0, 1, 2], [0, 2, IGNORE_INDEX]]), 2: np.array([[3, 3, 2]])}
    # label_names keeps a removed class ("old") at index 2; the current classes are road, car
    assert class_clicks(answers, ["road", "car", "old"], ["road", "car"], "void") == {
        "road": 1, "car": 0, "old": 2, "void": 1}
    trainings = [{"round": 0, "version": 1, "seconds": 5.0, "finished_at": 100.0},
                 {"round": 1, "version": 2, "seconds": 6.0, "finished_at": 200.0}]
    answers_by_round = {0: {"annotations": 2, "first": 50.0, "last": 90.0}, 1: {"annotations": 1, "first": 150.0,
                                                                                 "last": 190.0}}
    timeline = round_timeline(2, trainings, answers_by_round, {0: 2, 1: 2, 2: 2})
    assert [(t["round"], t["opened"], t["trained"], t["annotations"]) for t in timeline] == [
        (0, None, 100.0, 2), (1, 100.0, 200.0, 1), (2, 200.0, None, 0)]
    assert phase_since("training", 1, 2, trainings, answers_by_round) == 190.0
    assert phase_since("querying", 2, 2, trainings, answers_by_round) == 200.0
    assert phase_since("querying", 0, 0, [], {}) is None and phase_since("new", -1, 0, [], {}) is None


def test_worker_clock_dates_what_the_worker_does():
    clock = WorkerClock()
    assert clock.since("1", "training", 50.0, "training", now=100.0) == {"doing": "training", "since": 50.0,
                                                                         "how": "stored"}
    assert clock.since("1", "training", 50.0, "training", now=110.0)["since"] == 50.0
    assert clock.since("1", None, 120.0, "publishing", now=130.0) == {"doing": None, "since": 130.0, "how": "seen"}
    assert clock.since("2", "publishing", None, "publishing", now=140.0)["how"] == "first"


# --------------------------------------------------------------------------- the facts, kept per image

NAMES, KEY = ["road", "car", "sky"], "1"


@pytest.fixture
def store(tmp_path):
    """A project's store: six listed images, round 0's query tasks (ids 100 + image) imported, four of them
    answered."""
    store = ProjectStore(tmp_path / "labels.sqlite3", KEY)
    store.sources.replace({s: {"image": f"{s}.png"} for s in range(1, 7)})
    store.rounds.plan_queries(0, 0, [(s, 0.5, [region(s, 1, "ignore"), region(s, 2, "car")]) for s in range(1, 7)])
    store.rounds.set_imported(0, [(s, 100 + s) for s in range(1, 7)])
    for s in range(1, 5):
        answer(store, s, s, [(s, 1, 0), (s, 2, 1)])
    return store


def answer(store: ProjectStore, annotation_id: int, source: int, points, round_index: int = 0,
           cancelled: bool = False) -> None:
    store.clicks.put(annotation_id, 100 * (round_index + 1) + source, source, round_index, "a@b.c", points, cancelled)


def from_scratch(store: ProjectStore, names=NAMES) -> dict:
    """The facts computed from every stored click, as the dashboard computed them before (the reference)."""
    answers = store.clicks.labelled_points()
    per_image = {str(s): 0 for s in store.sources.all()}
    per_image.update({str(s): len(t) for s, t in answers.items()})
    counts = store.clicks.counts()
    return {"labelled_per_image": per_image, "class_clicks": class_clicks(answers, names, NAMES, "ignore"),
            "quality": prelabel_quality(store.rounds.answered_queries(), answers, names, "ignore"),
            "points": counts["points"], "ignored_points": counts["ignored_points"],
            "answers_by_round": store.clicks.by_round(), "query_tasks_by_round": store.rounds.tasks_per_round()}


class ReadRecorder:
    """Records which images ``labelled_points`` is asked for and can hold the caller inside it (the real method
    runs; only its start is gated)."""

    def __init__(self, store: ProjectStore, hold: bool = False) -> None:
        self.calls: list[set[int] | None] = []
        self.entered, self.go = threading.Event(), threading.Event()
        if not hold:
            self.go.set()
        real = store.clicks.labelled_points

        def recorded(sources=None):
            self.calls.append(None if sources is None else set(sources))
            self.entered.set()
            assert self.go.wait(30)
            return real(sources)

        store.clicks.labelled_points = recorded


def test_project_facts_follow_every_change_reading_only_the_changed_images(store):
    facts = ProjectFacts(store)
    assert facts.get(NAMES, NAMES, "ignore") == from_scratch(store)
    recorder = ReadRecorder(store)

    def check(*changed: int, names=NAMES) -> None:
        recorder.calls.clear()
        got = facts.get(names, NAMES, "ignore")
        assert recorder.calls == ([set(changed)] if changed else []), recorder.calls
        assert got == from_scratch(store, names)

    check()  # nothing changed: nothing read again

    answer(store, 2, 2, [(2, 1, 2), (2, 2, 1)])  # an update: the newest answer wins
    check(2)
    answer(store, 5, 5, [(5, 2, 1), (9, 9, IGNORE_INDEX)])  # a new answer, one point "can't tell"
    check(5)
    answer(store, 6, 6, [], cancelled=True)  # skipped: answered, no point, not in the quality
    check(6)
    assert store.clicks.delete([5]) == 1  # the newest annotation: its seq is free again ...
    answer(store, 7, 3, [(3, 1, 1)], round_index=1)  # ... and taken by a new answer on another image
    check(3, 5)
    store.rounds.forget_query_tasks([104])
    check(4)
    store.sources.replace({s: {"image": f"{s}.png"} for s in range(1, 8)})  # a new image, nothing stored on it
    check()
    check(*range(1, 7), names=[*NAMES, "bus"])  # a label config change: every image again


def test_project_facts_one_computation_at_a_time(store):
    """A caller that does not wait (a backlog is being applied) gets the last result at once and starts one
    computation in the background (none within ``background_gap`` of the last one); callers meanwhile get the last
    result too and start none; a caller that waits gets the facts of the file as it is, after that computation."""
    patient = ProjectFacts(store, background_gap=3600)
    facts = ProjectFacts(store, background_gap=0)
    before = facts.get(NAMES, NAMES, "ignore")
    assert patient.get(NAMES, NAMES, "ignore") == before
    first_generation = facts.generation
    answer(store, 9, 5, [(5, 1, 0)])
    recorder = ReadRecorder(store, hold=True)
    assert patient.get(NAMES, NAMES, "ignore", wait=False) == before and not recorder.calls  # within its gap
    assert facts.get(NAMES, NAMES, "ignore", wait=False) == before  # at once: the last result
    assert recorder.entered.wait(30)  # the computation it started runs (held inside the read)
    got: list[dict] = []
    others = [threading.Thread(target=lambda: got.append(facts.get(NAMES, NAMES, "ignore", wait=False)))
              for _ in range(5)]
    for thread in others:
        thread.start()
    for thread in others:
        thread.join(5)
    assert not any(t.is_alive() for t in others), "a caller that does not wait waited for the running computation"
    assert got == [before] * 5  # the last result, not a computation of their own
    fresh: dict = {}
    waiting = threading.Thread(target=lambda: fresh.update(facts.get(NAMES, NAMES, "ignore")))
    waiting.start()
    recorder.go.set()
    waiting.join(30)
    assert recorder.calls == [{5}]  # one computation, of the one image that changed
    fresh["labelled_per_image"].clear()  # a caller's copy: changing it changes nothing cached
    again = facts.get(NAMES, NAMES, "ignore", wait=False)
    assert recorder.calls == [{5}] and facts.generation == first_generation + 1  # one, in the background
    assert again == from_scratch(store) != before


def test_project_facts_first_callers_wait_for_the_first_result(store):
    facts = ProjectFacts(store)
    recorder = ReadRecorder(store, hold=True)
    got: list[dict] = []
    callers = [threading.Thread(target=lambda: got.append(facts.get(NAMES, NAMES, "ignore"))) for _ in range(3)]
    for thread in callers:
        thread.start()
    assert recorder.entered.wait(30)
    recorder.go.set()
    for thread in callers:
        thread.join(30)
    assert recorder.calls == [set(range(1, 7))]  # one computation, of every image
    assert got == [from_scratch(store)] * 3


# --------------------------------------------------------------------------- the facts and the routes

@pytest.fixture
def served(tmp_path):
    """A backend over the fake Label Studio after one answered round (round 1 open, one of its tasks answered)."""
    fake = _make_fake_project()[0]
    truth = add_scenes(fake, 2)
    config_values = {**TINY, "model_dir": str(tmp_path / "models"), "basic_auth_user": "ls",
                     "basic_auth_pass": "secret", "rounds": 2}
    from ovaal_backend.config import Config

    config = Config(**config_values)
    backend = Backend(config, client_factory=lambda _: fake, start_workers=False)
    app = create_app(config, backend)
    client = app.test_client()
    auth = {"Authorization": "Basic " + base64.b64encode(b"ls:secret").decode()}
    assert client.post("/setup", json={"project": UID, "schema": XML}, headers=auth).status_code == 200
    worker = backend.worker(P)
    driver = backend.driver(P)
    assert worker.run_pending()
    answer_round(fake, driver, truth, 0)
    assert worker.run_pending()  # trains ovaal-1, opens round 1
    answer_round(fake, driver, truth, 1, only=1)
    assert worker.run_pending()
    yield client, auth, driver, fake, truth
    backend.shutdown(timeout=30)


def test_metrics_gains_the_dashboard_facts(served):
    client, auth, driver, fake, truth = served
    project = client.get("/metrics", headers=auth).json["projects"][str(P)]
    assert (project["phase"], project["round"], project["model_version"]) == ("querying", 1, "ovaal-1")
    assert project["device"] == "cpu" and project["ignore_label"] == "ignore"
    assert project["budget"] == {"per_image": 5 + 2 * 6, "asked_per_image": 5 + 6, "init_pixels": 5,
                                 "pixels_per_round": 6}
    points = driver.store.clicks.labelled_points()
    assert project["labelled_per_image"] == {str(s): len(points.get(s, [])) for s in truth}
    assert sum(project["class_clicks"].values()) == project["points"]
    assert set(CLASSES) <= set(project["class_clicks"])  # (JSON sorts keys: the page orders them by "classes")
    # The same figures, recomputed per round from the query tasks the fake holds and the annotator's answers.
    assert set(project["quality"]["0"]) == {"ignore"}  # round 0's random points are pre-labelled "ignore"
    for round_index in (0, 1):
        kept = asked = 0
        for task in fake.query_tasks(P, round_index):
            if not task["annotations"]:
                continue
            regions = task["predictions"][0]["result"]
            answers = answer_keypoints(regions, truth[task["data"]["ovaal_source_task"]], CLASSES)
            asked += len(regions)
            kept += sum(r["value"]["keypointlabels"] == a["value"]["keypointlabels"] for r, a in zip(regions, answers))
        cells = project["quality"][str(round_index)].values()
        assert (sum(c["kept"] for c in cells), sum(c["asked"] for c in cells)) == (kept, asked)
    assert sum(c["asked"] for c in project["quality"]["1"].values()) == 6  # one of round 1's two tasks
    assert [t["round"] for t in project["timeline"]] == [0, 1]
    assert project["timeline"][1]["opened"] == project["trainings"][0]["finished_at"] == project["phase_since"]
    json.dumps(project, allow_nan=False)


def test_metrics_are_kept_until_the_project_file_changes(served):
    """/metrics (and the dashboard's data) computes a project's figures again only after a commit to its SQLite file:
    by this process or another one (``resync``, ``requeue``, ``quarantine --release`` write beside a backend)."""
    client, auth, driver, *_ = served
    computed: list[int] = []
    read = driver._read_metrics
    driver._read_metrics = lambda: computed.append(1) or read()
    first = client.get("/metrics", headers=auth).json["projects"][str(P)]
    computed.clear()
    assert client.get("/metrics", headers=auth).json["projects"][str(P)] == first
    assert client.get("/dashboard/data", headers=auth).json["projects"][str(P)]["phase"] == first["phase"]
    assert computed == []  # nothing changed: nothing read again
    script = (f"from ovaal_backend.backend.store import ProjectStore; "
              f"ProjectStore({str(driver.store.path)!r}, {driver.key!r}).events.add('START_TRAINING', {{}})")
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT, timeout=120)
    assert client.get("/metrics", headers=auth).json["projects"][str(P)]["pending_events"] == 1
    assert computed == [1]
    driver.store.events.add("START_TRAINING", {})
    assert client.get("/metrics", headers=auth).json["projects"][str(P)]["pending_events"] == 2
    assert computed == [1, 1]


def test_dashboard_needs_basic_auth_and_serves_page_data_and_assets(served):
    client, auth, *_ = served
    for path in ("/dashboard", "/dashboard/data", "/dashboard/static/dashboard.js",
                 "/dashboard/static/dashboard.css"):
        response = client.get(path)
        assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Basic"), path
    assert client.get("/health").json["status"] == "UP" and client.get("/").json["status"] == "UP"

    page = client.get("/dashboard", headers=auth)
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert '<script src="/dashboard/static/dashboard.js">' in html and "/dashboard/static/dashboard.css" in html
    data_script = re.search(r'<script id="initial-data" type="application/json">(.*?)</script>', html, re.S)
    outside = html[:data_script.start()] + html[data_script.end():]  # the data names LABEL_STUDIO_URL, a fact
    assert "http://" not in outside and "https://" not in outside  # nothing from elsewhere: works offline
    embedded = json.loads(data_script.group(1))
    metrics = client.get("/metrics", headers=auth).json
    data = client.get("/dashboard/data", headers=auth).json
    for body in (embedded, data):
        # one builder (status.metrics_payload): the dashboard's data is /metrics plus its own three keys
        assert set(body) == set(metrics) | {"server_time", "refresh_seconds", "workers"}
        assert set(body["projects"]) == set(metrics["projects"]) == {str(P)}
        mine, theirs = body["projects"][str(P)], metrics["projects"][str(P)]
        assert set(mine) == set(theirs)
        for key in ("phase", "round", "model_version", "answered_query_tasks", "query_tasks", "quality",
                    "budget", "class_clicks", "trainings", "quarantined", "labelled_per_image"):
            assert mine[key] == theirs[key], key
        assert body["workers"][str(P)]["doing"] is None and body["refresh_seconds"] > 0

    for name, kind in (("dashboard.js", "javascript"), ("dashboard.css", "css")):
        asset = client.get(f"/dashboard/static/{name}", headers=auth)
        assert asset.status_code == 200 and kind in asset.mimetype
        text = asset.get_data(as_text=True)
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text
        asset.close()
    assert client.get("/dashboard/static/nope.js", headers=auth).status_code == 404


def test_dashboard_data_never_holds_nan(served, monkeypatch):
    client, auth, driver, *_ = served
    metrics = driver.metrics

    def diverged():
        body = metrics()
        body["trainings"][0]["loss"] = float("nan")
        return body

    monkeypatch.setattr(driver, "metrics", diverged)
    data = client.get("/dashboard/data", headers=auth)
    assert "NaN" not in data.get_data(as_text=True) and data.json["projects"][str(P)]["trainings"][0]["loss"] is None
    assert "NaN" not in client.get("/dashboard", headers=auth).get_data(as_text=True)


def test_dashboard_without_projects(tmp_path):
    fake = _make_fake_project()[0]
    from ovaal_backend.config import Config

    config = Config(**{**TINY, "model_dir": str(tmp_path / "models")})
    backend = Backend(config, client_factory=lambda _: fake, start_workers=False)
    client = create_app(config, backend).test_client()
    assert client.get("/dashboard").status_code == 200  # no basic auth configured: open like /metrics
    assert client.get("/dashboard/data").json["projects"] == {}
