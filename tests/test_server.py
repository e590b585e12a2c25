"""The HTTP protocol with Flask's test client: routes, errors as 4xx JSON, basic auth, fast persisted webhooks."""

from __future__ import annotations

import base64
import threading

import pytest

from ovaal_backend.backend.app import create_app
from ovaal_backend.backend.registry import Backend
from ovaal_backend.config import Config
from tests.helpers.annotator import answer_keypoints
from tests.helpers.fake_label_studio import CLASSES, TINY, UID, XML, P


def make_app(tmp_path, fake, start_workers=False, **overrides):
    config = Config(**{**TINY, "model_dir": str(tmp_path / "models"), **overrides})
    backend = Backend(config, client_factory=lambda _: fake, start_workers=start_workers)
    app = create_app(config, backend)
    return app, backend


@pytest.fixture
def app_and_backend(tmp_path, fake_scenes):
    app, backend = make_app(tmp_path, fake_scenes)
    yield app, backend
    backend.shutdown(timeout=30)


@pytest.fixture
def client(app_and_backend):
    return app_and_backend[0].test_client()


def setup_project(client) -> str:
    response = client.post("/setup", json={"project": UID, "schema": XML, "hostname": "http://ls", "access_token": "x"})
    assert response.status_code == 200, response.json
    return response.json["model_version"]


def test_health(client):
    for path in ("/", "/health"):
        response = client.get(path)
        assert response.status_code == 200 and response.json["status"] == "UP"
        assert response.json["model_class"] == "OVAAL"


def test_setup_returns_model_version_and_registers_the_project(client, app_and_backend):
    assert setup_project(client) == "ovaal-0"
    backend = app_and_backend[1]
    driver = backend.driver(P)
    assert driver is not None and driver.state().uid == UID
    assert [a for _, a, _ in driver.store.events.pending()] == ["OVAAL_SETUP"]


@pytest.mark.parametrize("body,status,needle", [
    ({"project": UID}, 400, "schema"),
    ({"project": "x.1", "schema": XML}, 400, "project"),
    ({"project": UID, "schema": "<View><Image name='image' value='$image'/></View>"}, 400, "label config"),
    ({"project": UID, "schema": "<View"}, 400, "label config"),
])
def test_setup_rejects_bad_input(client, body, status, needle):
    response = client.post("/setup", json=body)
    assert response.status_code == status and needle in response.json["error"]


def test_bad_json_is_a_400_with_json(client):
    for path in ("/setup", "/predict", "/webhook"):
        response = client.post(path, data="{not json", content_type="application/json")
        assert response.status_code == 400 and "JSON object" in response.json["error"]
        response = client.post(path, json=[1, 2])
        assert response.status_code == 400


def test_unknown_project_is_a_404(client):
    response = client.post("/predict", json={"project": "42.1", "tasks": [{"id": 1, "data": {}}]})
    assert response.status_code == 404 and "unknown project 42" in response.json["error"]
    response = client.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": 42}})
    assert response.status_code == 404
    assert client.get("/nope").status_code == 404 and "error" in client.get("/nope").json
    assert client.get("/setup").status_code == 405


def test_project_id_mismatch_is_a_409(client, tmp_path):
    setup_project(client)
    response = client.post("/setup", json={"project": "1.1800000000", "schema": XML})
    assert response.status_code == 409 and "re-created" in response.json["error"]
    assert str(tmp_path) not in response.get_data(as_text=True)  # the folder is named in the log, not the answer


def test_predict_one_result_per_task_in_order(client, app_and_backend, fake_scenes):
    setup_project(client)
    backend = app_and_backend[1]
    backend.worker(P).run_pending()  # round 0 is published
    sources = [fake_scenes.tasks[t] for t in fake_scenes.truth]
    query = fake_scenes.query_tasks(P, 0)[0]
    tasks = [sources[0], query, sources[1], query]
    response = client.post("/predict", json={"project": UID, "tasks": tasks, "label_config": XML})
    assert response.status_code == 200
    results = response.json["results"]
    assert len(results) == 4 and all(r["model_version"] == "ovaal-0" for r in results)
    assert results[0] == {"result": [], "score": 0.0, "model_version": "ovaal-0"}
    assert results[1]["result"] == query["predictions"][0]["result"] == results[3]["result"]
    assert client.post("/predict", json={"project": UID, "tasks": [{"data": {}}]}).status_code == 400
    assert client.post("/predict", json={"project": UID, "tasks": []}).json["results"] == []


def test_webhook_persists_before_answering_and_ignores_unused_actions(client, app_and_backend, fake_scenes):
    setup_project(client)
    backend = app_and_backend[1]
    backend.worker(P).run_pending()
    task = fake_scenes.query_tasks(P, 0)[0]
    result = answer_keypoints(task["predictions"][0]["result"], fake_scenes.truth[task["data"]["ovaal_source_task"]],
                              CLASSES)
    payload = fake_scenes.annotate(task["id"], result)
    response = client.post("/webhook", json=payload)
    assert response.status_code == 201 and response.json["status"] == "queued"
    driver = backend.driver(P)
    pending = driver.store.events.pending()
    assert [(e[0], e[1]) for e in pending] == [(response.json["event"], "ANNOTATION_CREATED")]
    assert pending[0][2]["annotation"]["id"] == payload["annotation"]["id"]
    response = client.post("/webhook", json={"action": "PROJECT_CREATED", "project": {"id": P}})
    assert response.status_code == 200 and response.json["status"] == "ignored"
    assert client.post("/webhook", json={"project": {"id": P}}).status_code == 400
    assert len(driver.store.events.pending()) == 1
    backend.worker(P).run_pending()
    assert driver.store.clicks.counts()["annotations"] == 1


def test_webhook_answers_fast_while_the_worker_trains(tmp_path, fake_scenes, monkeypatch):
    app, backend = make_app(tmp_path, fake_scenes, start_workers=True)
    try:
        client = app.test_client()
        setup_project(client)
        driver = backend.driver(P)
        assert backend.worker(P).wait_idle(60)
        started, release, finished = threading.Event(), threading.Event(), threading.Event()

        def slow_step() -> bool:  # a training that takes as long as the test wants
            started.set()
            release.wait(30)
            finished.set()
            return False

        monkeypatch.setattr(driver, "needs_step", lambda: not release.is_set())
        monkeypatch.setattr(driver, "step", slow_step)
        backend.wake(P)
        assert started.wait(10)
        for task in fake_scenes.query_tasks(P, 0):
            assert client.post("/webhook", json=fake_scenes.annotate(task["id"], [])).status_code == 201
        assert not finished.is_set()  # both answered while the training step still ran: none waited for it
        assert len(driver.store.events.pending()) == 2  # kept, not dropped, while busy
        release.set()
        assert backend.worker(P).wait_idle(30)
        assert driver.store.clicks.counts()["annotations"] == 2
    finally:
        release.set()
        backend.shutdown(timeout=30)


def test_train_route_queues_start_training(client, app_and_backend):
    setup_project(client)
    response = client.post("/train", json={"project": UID})
    assert response.status_code == 201
    driver = app_and_backend[1].driver(P)
    assert [a for _, a, _ in driver.store.events.pending()][-1] == "START_TRAINING"


def test_metrics(client, app_and_backend):
    setup_project(client)
    app_and_backend[1].worker(P).run_pending()
    body = client.get("/metrics").json
    project = body["projects"][str(P)]
    assert project["phase"] == "querying" and project["round"] == 0 and project["query_tasks"] == 2
    assert project["model_version"] == "ovaal-0" and project["pending_events"] == 0
    assert project["worker"]["last_error"] is None


def test_basic_auth(tmp_path, fake_scenes):
    app, backend = make_app(tmp_path, fake_scenes, basic_auth_user="ls", basic_auth_pass="secret")
    client = app.test_client()
    assert client.get("/health").status_code == 200  # open: container health checks carry no password
    response = client.post("/setup", json={"project": UID, "schema": XML})
    assert response.status_code == 401 and "basic auth" in response.json["error"]
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    bad = base64.b64encode(b"ls:wrong").decode()
    assert client.post("/setup", json={"project": UID, "schema": XML},
                       headers={"Authorization": f"Basic {bad}"}).status_code == 401
    good = base64.b64encode(b"ls:secret").decode()
    response = client.post("/setup", json={"project": UID, "schema": XML}, headers={"Authorization": f"Basic {good}"})
    assert response.status_code == 200 and response.json["model_version"] == "ovaal-0"
    assert client.get("/metrics").status_code == 401


def test_restart_recovers_projects_and_replays_events(tmp_path, fake_scenes):
    app, backend = make_app(tmp_path, fake_scenes)
    client = app.test_client()
    setup_project(client)
    backend.worker(P).run_pending()
    task = fake_scenes.query_tasks(P, 0)[0]
    client.post("/webhook", json=fake_scenes.annotate(task["id"], [], cancelled=True))
    # A new process on the same MODEL_DIR: the project is known without a /setup and its event is replayed.
    app2, backend2 = make_app(tmp_path, fake_scenes, start_workers=True)
    try:
        response = app2.test_client().post("/predict", json={"project": UID, "tasks": [task]})
        assert response.status_code == 200 and response.json["results"][0]["result"]
        assert backend2.worker(P).wait_idle(60)
        driver = backend2.driver(P)
        assert driver.store.clicks.counts()["cancelled"] == 1 and driver.store.events.pending() == []
    finally:
        backend2.shutdown(timeout=30)
