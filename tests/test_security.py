"""The HTTP surface under hostile input: basic auth, ALLOWED_PROJECTS, body limits, malformed ids and a fuzzer.

Everything goes through Flask's test client with the app from ``create_app`` and the fake Label Studio. The rules:
no request gets a 5xx, every error body is JSON ``{"error": ...}`` without MODEL_DIR's path, and a refused request
(4xx) creates no project folder.
"""

from __future__ import annotations

import base64
import errno
import io
import json
import logging
import os
import random
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from PIL import Image

from ovaal_backend.backend.app import INTERNAL_ERROR, basic_auth_matches
from ovaal_backend.backend.convert import ParsedLabelConfig
from ovaal_backend.backend.wsgi import check_network_exposure
from ovaal_backend.config import Config, ConfigError
from tests.helpers import fault_kit, ls_server
from tests.helpers.fake_label_studio import UID, XML, FakeLabelStudio, P
from tests.helpers.ls_server import BackendProcess, loopback_session, wait_for
from tests.helpers.synthetic import make_scene

from .test_server import make_app

ROOT = Path(__file__).resolve().parents[1]
ROUTES = [("GET", "/"), ("GET", "/health"), ("GET", "/metrics"), ("POST", "/setup"), ("POST", "/predict"),
          ("POST", "/webhook"), ("POST", "/train")]
OPEN = {"/", "/health"}


def basic(user: str, password: str, encoding: str = "utf-8") -> dict[str, str]:
    """A real Authorization header from the encoded bytes (what a client puts on the wire)."""
    token = base64.b64encode(f"{user}:{password}".encode(encoding)).decode("ascii")
    return {"Authorization": f"Basic {token}"}


def route_bodies() -> dict[str, dict[str, Any]]:
    """A well-formed body per POST route (for project P)."""
    return {"/setup": {"project": UID, "schema": XML}, "/predict": {"project": UID, "tasks": []},
            "/webhook": {"action": "START_TRAINING", "project": {"id": P}}, "/train": {"project": UID}}


def call(client, method: str, path: str, headers: dict[str, str] | None = None, body: Any = None):
    if method == "GET":
        return client.get(path, headers=headers)
    return client.post(path, json=route_bodies()[path] if body is None else body, headers=headers)


def folders(model_dir: Path) -> set[str]:
    """The project folders under MODEL_DIR."""
    return set(os.listdir(model_dir)) if model_dir.is_dir() else set()


def assert_clean_error(response, model_dir: Path, status: int | None = None) -> None:
    """A 4xx with a JSON error that names no path of MODEL_DIR."""
    assert response.status_code < 500, response.get_data(as_text=True)
    if status is not None:
        assert response.status_code == status, response.get_data(as_text=True)
    if response.status_code >= 400:
        assert isinstance(response.json, dict) and isinstance(response.json.get("error"), str)
    assert str(model_dir) not in response.get_data(as_text=True)


# --------------------------------------------------------------------------- basic auth

CREDENTIALS = {
    "none": {},
    "wrong": basic("ls", "secret"),
    "right": basic("ls", "pässwörd✓"),
    "non-ascii-wrong": basic("ls", "pässwörd✗"),
    "non-ascii-user": basic("lß", "pässwörd✓"),
    "latin-1-wrong": basic("ls", "pässwörd", "latin-1"),
    "not-base64": {"Authorization": "Basic !!!not base64!!!"},
    "not-utf8": {"Authorization": "Basic " + base64.b64encode(b"ls:\xff\xfe\xfd").decode()},
    "raw-non-ascii": {"Authorization": "Basic pässwörd"},
    "bearer": {"Authorization": "Bearer abc"},
}


def test_every_route_times_every_credential(tmp_path, fake_scenes):
    """Auth configured with a non-ASCII password: never a 5xx; 401 (JSON) everywhere but / and /health."""
    app, backend = make_app(tmp_path, fake_scenes, basic_auth_user="ls", basic_auth_pass="pässwörd✓")
    client, model_dir = app.test_client(), tmp_path / "models"
    for name, headers in CREDENTIALS.items():
        for method, path in ROUTES:
            response = call(client, method, path, headers)
            assert_clean_error(response, model_dir)
            if path in OPEN:
                assert response.status_code == 200, (name, path)
            elif name == "right":
                assert response.status_code in (200, 201), (name, path, response.json)
            else:
                assert response.status_code == 401, (name, path, response.status_code)
                assert "basic auth" in response.json["error"]
                assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert folders(model_dir) == {str(P)}  # only the authorised /setup created state
    backend.shutdown(timeout=30)


def test_non_ascii_password_logs_in_as_utf8_and_latin1(tmp_path, fake_scenes):
    """Browsers and curl send UTF-8; Python's requests (Label Studio's ML client) sends latin-1."""
    app, backend = make_app(tmp_path, fake_scenes, basic_auth_user="jörg", basic_auth_pass="pässwort")
    client = app.test_client()
    for encoding in ("utf-8", "latin-1"):
        assert client.get("/metrics", headers=basic("jörg", "pässwort", encoding)).status_code == 200
        assert client.get("/metrics", headers=basic("jörg", "passwort", encoding)).status_code == 401
        assert client.get("/metrics", headers=basic("jorg", "pässwort", encoding)).status_code == 401
    backend.shutdown(timeout=30)


def test_basic_auth_matches_never_raises():
    assert basic_auth_matches(basic("ls", "pä✓")["Authorization"], "ls", "pä✓")
    assert not basic_auth_matches(basic("ls", "pä✓")["Authorization"], "ls", "pä")
    assert basic_auth_matches(basic("ls", "pä", "latin-1")["Authorization"], "ls", "pä")
    for header in (None, "", "Basic", "Basic ", "basic ===", "Basic ä", "Digest x", "Basic " + "A" * 10_001,
                   "Basic " + base64.b64encode(b"\x00\xff:\x80").decode()):
        assert not basic_auth_matches(header, "ls", "pä✓")
    # A password read from a non-UTF-8 environment (surrogate escapes) is compared, not raised on.
    assert not basic_auth_matches(basic("ls", "x")["Authorization"], "ls", "p\udcff")


# --------------------------------------------------------------------------- ALLOWED_PROJECTS, body size, 500s

def test_allowed_projects_refuse_other_ids_before_any_state(tmp_path, fake_scenes):
    app, backend = make_app(tmp_path, fake_scenes, allowed_projects=f"{P}, 9")
    client, model_dir = app.test_client(), tmp_path / "models"
    bodies = {"/setup": {"project": "5.1700000000", "schema": XML}, "/predict": {"project": 5, "tasks": []},
              "/webhook": {"action": "START_TRAINING", "project": {"id": 5}}, "/train": {"project": "5"}}
    for path, body in bodies.items():
        response = client.post(path, json=body)
        assert_clean_error(response, model_dir, 403)
        assert "ALLOWED_PROJECTS" in response.json["error"]
    assert folders(model_dir) == set() and backend.projects() == {}
    for path in ("/setup", "/predict", "/webhook", "/train"):
        assert call(client, "POST", path).status_code in (200, 201)
    backend.shutdown(timeout=30)
    # A restart with a narrower list resumes only the allowed projects.
    app2, backend2 = make_app(tmp_path, fake_scenes, allowed_projects="9")
    assert backend2.projects() == {} and app2.test_client().post("/train", json={"project": UID}).status_code == 403
    with pytest.raises(ConfigError, match="ALLOWED_PROJECTS|allowed_projects"):
        Config(allowed_projects="1,abc")


def test_max_projects_refuses_one_more_before_any_state(tmp_path, fake_scenes):
    for extra in (8, 9):
        fake_scenes.add_project(extra)
    app, backend = make_app(tmp_path, fake_scenes, max_projects=2)
    client, model_dir = app.test_client(), tmp_path / "models"
    assert client.post("/setup", json={"project": f"{P}.1", "schema": XML}).status_code == 200
    assert client.post("/setup", json={"project": "8.1", "schema": XML}).status_code == 200
    response = client.post("/setup", json={"project": "9.1", "schema": XML})
    assert_clean_error(response, model_dir, 403)
    assert "MAX_PROJECTS=2" in response.json["error"]
    assert folders(model_dir) == {str(P), "8"} and sorted(backend.projects()) == sorted([P, 8])
    assert client.post("/setup", json={"project": f"{P}.1", "schema": XML}).status_code == 200  # known: still served
    backend.shutdown(timeout=30)
    with pytest.raises(ConfigError, match="max_projects"):
        Config(max_projects=0)


def test_request_body_limit_is_a_413_json(tmp_path, fake_scenes):
    app, backend = make_app(tmp_path, fake_scenes, max_request_mb=0.01)  # 10 KiB
    client = app.test_client()
    big = {"project": UID, "schema": XML + " " * 20_000}
    response = client.post("/setup", json=big)
    assert_clean_error(response, tmp_path / "models", 413)
    assert "MAX_REQUEST_MB" in response.json["error"]
    assert folders(tmp_path / "models") == set()
    assert client.post("/setup", json={"project": UID, "schema": XML}).status_code == 200
    assert app.config["MAX_CONTENT_LENGTH"] == 10485
    backend.shutdown(timeout=30)


def test_a_500_names_only_a_request_id(tmp_path, fake_scenes, monkeypatch, caplog):
    app, backend = make_app(tmp_path, fake_scenes)
    client = app.test_client()
    assert client.post("/setup", json={"project": UID, "schema": XML}).status_code == 200
    secret = f"{tmp_path}/models/1/labels.sqlite3 is locked"

    def broken(tasks):
        raise RuntimeError(secret)

    monkeypatch.setattr(backend.driver(P), "predict", broken)
    with caplog.at_level(logging.ERROR, logger="ovaal_backend.backend.app"):
        response = client.post("/predict", json={"project": UID, "tasks": [{"id": 1, "data": {}}]})
    assert response.status_code == 500
    body = response.json
    assert set(body) == {"error", "request_id"} and body["error"].startswith(INTERNAL_ERROR)
    assert secret not in response.get_data(as_text=True) and "RuntimeError" not in body["error"]
    logged = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert body["request_id"] in logged and secret in caplog.text
    backend.shutdown(timeout=30)


def test_other_http_errors_are_json(tmp_path, fake_scenes):
    app, backend = make_app(tmp_path, fake_scenes)
    client = app.test_client()
    for response in (client.get("/nope"), client.get("/setup"), client.put("/predict"),
                     client.post("/setup", data=b"\xff\xfe", content_type="application/json"),
                     client.post("/setup", data="{}", content_type="text/plain")):
        assert 400 <= response.status_code < 500 and isinstance(response.json["error"], str)
    backend.shutdown(timeout=30)


def test_predict_past_max_predict_calls_is_a_503_at_once(tmp_path, fake_scenes):
    """A /predict past MAX_PREDICT_CALLS waits for nothing: 503, Retry-After, a JSON reason; webhooks go on."""
    app, backend = make_app(tmp_path, fake_scenes, max_predict_calls=1)
    client = app.test_client()
    assert client.post("/setup", json={"project": UID, "schema": XML}).status_code == 200
    body = {"project": UID, "tasks": [{"id": 1, "data": {}}]}
    with backend.predict_slots.take() as taken:  # one /predict computing
        assert taken
        response = client.post("/predict", json=body)  # this thread holds the slot: had it waited, no answer ever
        assert response.status_code == 503 and int(response.headers["Retry-After"]) > 0
        assert "MAX_PREDICT_CALLS=1" in response.json["error"]
        assert_clean_error(client.post("/predict", json={"project": UID, "tasks": "x"}), tmp_path / "models", 400)
        assert client.post("/webhook", json=route_bodies()["/webhook"]).status_code == 201
        assert client.get("/metrics").json["predict"] == {"slots": 1, "busy": 1, "refused": 1}
    assert client.post("/predict", json=body).status_code == 200
    assert client.get("/metrics").json["predict"] == {"slots": 1, "busy": 0, "refused": 1}
    backend.shutdown(timeout=30)


def test_a_full_disk_is_a_507_that_names_no_path(tmp_path, fake_scenes, monkeypatch):
    """The server's fault, not the request's: 507 with the fix in words, the path only in the log."""
    app, backend = make_app(tmp_path, fake_scenes)
    client = app.test_client()
    assert client.post("/setup", json={"project": UID, "schema": XML}).status_code == 200
    driver = backend.driver(P)
    secret = str(tmp_path / "models" / "1" / "labels.sqlite3-wal")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", secret)

    monkeypatch.setattr(driver.store.events, "add", full)
    response = client.post("/webhook", json=route_bodies()["/webhook"])
    assert response.status_code == 507 and set(response.json) == {"error", "request_id"}
    assert "disk full" in response.json["error"] and "resync" in response.json["error"]
    assert secret not in response.get_data(as_text=True) and str(tmp_path) not in response.get_data(as_text=True)
    backend.shutdown(timeout=30)


# --------------------------------------------------------------------------- label-config limits

def many_labels_config(count: int) -> str:
    """The test config with ``count`` classes in both controls."""
    labels = "".join(f'<Label value="class {i}"/>' for i in range(count))
    return (f'<View><Image name="image" value="$image"/><KeyPointLabels name="query" toName="image">{labels}'
            f'<Label value="ignore" ovaal="ignore"/></KeyPointLabels><BrushLabels name="mask" toName="image">'
            f"{labels}</BrushLabels></View>")


def test_label_config_limits_are_400s_naming_the_setting(tmp_path, fake_scenes):
    """MAX_CLASSES and MAX_LABEL_CONFIG_KB refuse a config at /setup and in PROJECT_UPDATED before anything is
    stored; a config with 40,000 labels is refused by its size before it is parsed."""
    app, backend = make_app(tmp_path, fake_scenes, max_classes=8, max_label_config_kb=4)
    client, model_dir = app.test_client(), tmp_path / "models"
    cases = {"MAX_CLASSES=8": many_labels_config(9), "MAX_LABEL_CONFIG_KB=4": XML + " " * 4096,
             "MAX_LABEL_CONFIG_KB": many_labels_config(40_000)}
    for setting, schema in cases.items():
        response = client.post("/setup", json={"project": UID, "schema": schema})
        assert_clean_error(response, model_dir, 400)
        assert setting in response.json["error"], response.json
    assert folders(model_dir) == set()
    assert client.post("/setup", json={"project": UID, "schema": many_labels_config(8)}).status_code == 200
    driver = backend.driver(P)
    before = len(driver.store.events.pending())
    for setting, schema in cases.items():
        response = client.post("/webhook", json={"action": "PROJECT_UPDATED",
                                                 "project": {"id": P, "label_config": schema}})
        assert_clean_error(response, model_dir, 400)
        assert setting in response.json["error"]
    assert len(driver.store.events.pending()) == before
    backend.shutdown(timeout=30)


def test_label_config_parsing_checks_duplicates_and_brush_labels_in_one_pass():
    """What the linear parse still refuses (sets instead of list scans must not loosen a check)."""
    assert ParsedLabelConfig.parse(many_labels_config(2000)).classes[-1] == "class 1999"
    duplicate = many_labels_config(3).replace('"class 2"', '"class 0"', 1)
    with pytest.raises(ValueError, match="appears twice"):
        ParsedLabelConfig.parse(duplicate)
    missing = many_labels_config(3).replace('<Label value="class 2"/></BrushLabels>', "</BrushLabels>")
    with pytest.raises(ValueError, match=r"lacks the classes \['class 2'\]"):
        ParsedLabelConfig.parse(missing)
    with pytest.raises(ValueError, match="MAX_CLASSES=3"):
        ParsedLabelConfig.parse(many_labels_config(4), max_classes=3)


# --------------------------------------------------------------------------- malformed ids and types

BAD_PROJECTS = [0, -1, 2**31, 10**300, "2147483648", "1" * 300, True, 1.5, "١", "²", "x.1", "", " ", None, [], {},
                "1/../../etc", "1.\n2", "1." + "9" * 100]


@pytest.mark.parametrize("project", BAD_PROJECTS, ids=repr)
def test_malformed_project_ids_are_400_without_state(tmp_path, fake_scenes, project):
    app, backend = make_app(tmp_path, fake_scenes)
    client, model_dir = app.test_client(), tmp_path / "models"
    bodies = {"/setup": {"project": project, "schema": XML}, "/predict": {"project": project, "tasks": []},
              "/webhook": {"action": "START_TRAINING", "project": {"id": project}}, "/train": {"project": project}}
    for path, body in bodies.items():
        assert_clean_error(client.post(path, json=body), model_dir, 400)
    assert_clean_error(client.post("/webhook", json={"action": "START_TRAINING", "project": project}), model_dir,
                       400)
    assert folders(model_dir) == set() and backend.projects() == {}


def test_predict_checks_task_ids_data_and_count(tmp_path, fake_scenes):
    app, backend = make_app(tmp_path, fake_scenes, max_predict_tasks=3)
    client, model_dir = app.test_client(), tmp_path / "models"
    assert client.post("/setup", json={"project": UID, "schema": XML}).status_code == 200
    bad_tasks = [[{"id": "5"}], [{"id": True}], [{"id": 1.0}], [{"id": 2**63}], [{"id": 10**300}], [{"id": -1}],
                 [{"id": 0}], [{"id": None}], [{}], [5], ["task"], [{"id": 1, "data": "x"}],
                 [{"id": 1, "data": [1]}], [{"id": 1, "data": None}], [{"id": 1}] * 4, {"id": 1}, "tasks", None]
    for tasks in bad_tasks:
        response = client.post("/predict", json={"project": UID, "tasks": tasks})
        assert_clean_error(response, model_dir, 400)
    response = client.post("/predict", json={"project": UID, "tasks": [{"id": 2**63 - 1, "data": {}}] * 3})
    assert response.status_code == 200 and len(response.json["results"]) == 3
    assert "MAX_PREDICT_TASKS" in client.post("/predict", json={"project": UID, "tasks": [{"id": 1}] * 4}).json["error"]
    backend.shutdown(timeout=30)


def test_setup_refused_for_a_bad_label_config_leaves_no_folder(tmp_path, fake_scenes):
    app, backend = make_app(tmp_path, fake_scenes, start_workers=True)
    try:
        client, model_dir = app.test_client(), tmp_path / "models"
        for schema in ("<View", "<View><Image name='image' value='$image'/></View>", "<View>\ud800</View>", 5,
                       ["<View/>"], XML.replace('ovaal="ignore"', "").replace('value="ignore"', 'value="other"')):
            response = client.post("/setup", json={"project": "77.1700000000", "schema": schema})
            assert_clean_error(response, model_dir, 400)
        assert folders(model_dir) == set() and backend.projects() == {}
        assert not [t for t in threading.enumerate() if t.name.startswith("ovaal-project-")]
    finally:
        backend.shutdown(timeout=30)


def test_webhook_shapes_are_checked_before_storing(tmp_path, fake_scenes):
    app, backend = make_app(tmp_path, fake_scenes)
    client, model_dir = app.test_client(), tmp_path / "models"
    assert client.post("/setup", json={"project": UID, "schema": XML}).status_code == 200
    driver = backend.driver(P)
    before = len(driver.store.events.pending())
    project = {"id": P}
    bad = [{"action": "ANNOTATION_CREATED", "project": project},
           {"action": "ANNOTATION_CREATED", "project": project, "annotation": {"id": "1", "task": 1}},
           {"action": "ANNOTATION_CREATED", "project": project, "annotation": {"id": 1, "task": "x"}},
           {"action": "ANNOTATION_CREATED", "project": project, "annotation": {"id": 1, "task": 1}, "task": 3},
           {"action": "ANNOTATIONS_CREATED", "project": project, "annotation": [{"id": 1, "task": 1}, 7]},
           {"action": "ANNOTATIONS_DELETED", "project": project, "annotations": [{"id": 2**64}]},
           {"action": "ANNOTATIONS_DELETED", "project": project, "annotations": {"id": 1}},
           {"action": "PROJECT_UPDATED", "project": {"id": P, "label_config": ["x"]}},
           {"action": 5, "project": project}, {"action": "A" * 65, "project": project},
           {"action": "ANNOTATION_CREATED\n", "project": project}]
    for body in bad:
        assert_clean_error(client.post("/webhook", json=body), model_dir, 400)
    # A bare project id works for every action (the stored payload gets a project object).
    response = client.post("/webhook", json={"action": "PROJECT_UPDATED", "project": P})
    assert response.status_code == 201
    assert len(driver.store.events.pending()) == before + 1
    backend.shutdown(timeout=30)


# --------------------------------------------------------------------------- the fuzzer

PATHS = ["/etc/passwd", "../../../../etc/shadow", "C:\\Windows\\system32\\config", "~/.ssh/id_rsa",
         "/proc/self/environ", "file:///etc/passwd", "/data/local-files/?d=../../etc/passwd",
         "/data/upload/1/../../x.png", "\\\\server\\share"]
STRINGS = ["", " ", "1", "1.1700000000", "1.", ".1", "x.1", "-1", "0", "2147483648", "9" * 40, "١٢", "²", "1e3",
           "null", "true", "NaN", "\x00", "\ud800", "\udcff", "ä✓💥", "%s%n%x", "${MODEL_DIR}", "<View/>",
           "<!DOCTYPE x [<!ENTITY a 'aaaaaaaaaa'><!ENTITY b '&a;&a;&a;&a;&a;&a;&a;&a;'>]><View>&b;</View>",
           "A" * 5000, "ANNOTATION_CREATED", "START_TRAINING", *PATHS]
INTS = [0, 1, -1, 2, P, 2**31 - 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**300, -(10**300)]
FLOATS = [0.0, -0.0, 1.5, 1.0, 1e308, -1e-308, float("nan"), float("inf"), float("-inf")]
KEYS = ["project", "schema", "tasks", "task", "id", "data", "action", "annotation", "annotations", "label_config",
        "result", "was_cancelled", "image", "ovaal_query", "ovaal_round", "ovaal_source_task", "__proto__", ""]
ACTIONS = ["ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED", "ANNOTATIONS_DELETED",
           "PROJECT_UPDATED", "START_TRAINING", "TASKS_CREATED", "PROJECT_CREATED", "OVAAL_SETUP", ""]
RAW = [b"", b"{", b"{not json", b"[1, 2", b"\xff\xfe\x00", b"null", b"123", b'"x"', b"[]",
       b"[" * 5000 + b"]" * 5000, b'{"a":' * 3000 + b"1" + b"}" * 3000, b'{"project": 1' + b"0" * 5000 + b"}",
       b'{"project": "1.1700000000", "schema": "<View', b"\x00" * 100, '{"project": "ä"}'.encode("latin-1")]


class Fuzzer:
    """Random JSON values and request bodies from a seeded generator; mostly protocol-shaped, often wrong."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def scalar(self) -> Any:
        kind = self.rng.randrange(6)
        return [None, self.rng.choice([True, False]), self.rng.choice(INTS), self.rng.choice(FLOATS),
                self.rng.choice(STRINGS), self.rng.randint(-5, 50)][kind]

    def value(self, depth: int = 0) -> Any:
        roll = self.rng.random()
        if depth >= 4 or roll < 0.55:
            return self.scalar()
        if roll < 0.75:
            return [self.value(depth + 1) for _ in range(self.rng.randrange(4))]
        return {self.rng.choice(KEYS + STRINGS[:12]): self.value(depth + 1) for _ in range(self.rng.randrange(4))}

    def pick(self, good: list[Any], p_good: float = 0.5) -> Any:
        return self.rng.choice(good) if self.rng.random() < p_good else self.value()

    def project(self) -> Any:
        fresh = self.rng.randint(3, 40)  # never 2: the real project set up after the fuzz
        return self.pick([P, str(P), UID, fresh, str(fresh), f"{fresh}.1700000000", f"{fresh}.{self.rng.random()}"])

    def schema(self) -> Any:
        broken = XML[:self.rng.randrange(len(XML))]
        no_ignore = XML.replace('<Label value="ignore" ovaal="ignore"/>', "")
        renamed = XML.replace("disc", self.rng.choice(STRINGS[:25]) or "x")
        return self.pick([XML, broken, no_ignore, renamed, XML.replace("$image", self.rng.choice(PATHS)),
                          XML + "\ud800", f"<View><Image name='image' value='$image'/>{self.rng.choice(STRINGS)}"])

    def task(self) -> Any:
        data = self.pick([{"image": self.rng.choice(PATHS)}, {"ovaal_query": True, "ovaal_round": self.value()},
                          {}, {"image": f"/data/upload/{P}/scene_0.png"}])
        task = {"id": self.pick(INTS + [1, 2, 3, 4]), "data": data}
        if self.rng.random() < 0.2:
            task["project"] = self.project()
        if self.rng.random() < 0.2:
            del task[self.rng.choice(list(task))]
        return task if self.rng.random() < 0.9 else self.value()

    def annotation(self) -> Any:
        result = self.pick([[], [{"type": "keypointlabels", "value": self.value()}]])
        return self.pick([{"id": self.pick(INTS), "task": self.pick(INTS + [{"id": 1}]), "result": result,
                           "was_cancelled": self.value()}])

    def body(self, path: str) -> dict[str, Any]:
        if path == "/setup":
            body = {"project": self.project(), "schema": self.schema(), "hostname": self.rng.choice(PATHS)}
        elif path == "/predict":
            count = self.rng.choice([0, 1, 2, 3, 5, 101])
            body = {"project": self.project(), "tasks": self.pick([[self.task() for _ in range(count)]], 0.85)}
        else:
            project = self.pick([{"id": self.project(), "label_config": self.schema()}, self.project()])
            annotation = self.pick([self.annotation(), [self.annotation() for _ in range(self.rng.randrange(3))]])
            body = {"action": self.pick(ACTIONS, 0.8), "project": project, "annotation": annotation,
                    "task": self.pick([self.task(), [self.task()]]),
                    "annotations": self.pick([[{"id": self.pick(INTS)} for _ in range(self.rng.randrange(3))]])}
        for key in list(body):
            if self.rng.random() < 0.1:
                del body[key]
        if self.rng.random() < 0.1:
            body[self.rng.choice(KEYS)] = self.value()
        return body

    def request(self) -> tuple[str, bytes, str | None]:
        """(path, body bytes, content type) of one case."""
        path = self.rng.choice(["/setup", "/predict", "/webhook"])
        roll = self.rng.random()
        if roll < 0.08:
            return path, self.rng.choice(RAW), self.rng.choice(["application/json", "text/plain", None])
        if roll < 0.12:
            return path, bytes(self.rng.randrange(256) for _ in range(self.rng.randrange(64))), "application/json"
        body = self.body(path) if roll < 0.95 else self.value()
        return path, json.dumps(body).encode(), "application/json"


def add_second_project(fake_scenes: FakeLabelStudio, project_id: int) -> None:
    fake_scenes.add_project(project_id)
    rng = np.random.default_rng(1)
    for i in range(2):
        fake_scenes.add_image_task(project_id, make_scene(rng)[0], f"other_{i}")


def test_fuzzed_bodies_never_5xx_leak_paths_or_leave_state(tmp_path, fake_scenes):
    # The fuzzer's well-formed /setup calls create projects under many ids: lift MAX_PROJECTS (tested on its own).
    app, backend = make_app(tmp_path, fake_scenes, max_projects=10_000)
    client, model_dir = app.test_client(), tmp_path / "models"
    assert client.post("/setup", json={"project": UID, "schema": XML}).status_code == 200
    assert backend.worker(P).run_pending()  # round 0 published: /predict also meets real query tasks
    add_second_project(fake_scenes, 2)
    fuzzer, failures, statuses = Fuzzer(seed=20240611), [], {}
    start, cases = time.monotonic(), 4000
    for case in range(cases):
        path, data, content_type = fuzzer.request()
        before = folders(model_dir)
        response = client.post(path, data=data, content_type=content_type)
        status, text = response.status_code, response.get_data(as_text=True)
        statuses[status] = statuses.get(status, 0) + 1
        problem = None
        if status >= 500:
            problem = "5xx"
        elif str(model_dir) in text or str(tmp_path) in text:
            problem = "MODEL_DIR in the body"
        elif status >= 400 and not (response.is_json and isinstance(response.json.get("error"), str)):
            problem = "error body is not {'error': ...}"
        elif status >= 400 and folders(model_dir) != before:
            problem = "a refused request created a project folder"
        elif path != "/setup" and folders(model_dir) != before:
            problem = f"{path} created a project folder"
        if problem:
            failures.append((case, problem, path, data[:300], status, text[:300]))
    elapsed = time.monotonic() - start
    print(f"\n{cases} fuzz cases in {elapsed:.1f} s; statuses {dict(sorted(statuses.items()))}")
    assert not failures, failures[:5]
    assert statuses.get(400, 0) > cases // 3 and sum(v for k, v in statuses.items() if k < 300) > 50
    # The real project's junk events are skipped by its worker, and a new real project still reaches round 0.
    assert backend.worker(P).run_pending() and backend.worker(P).last_error is None
    response = client.post("/setup", json={"project": "2.1700000000", "schema": XML})
    assert response.status_code == 200 and response.json["model_version"] == "ovaal-0"
    assert backend.worker(2).run_pending()
    project = client.get("/metrics").json["projects"]["2"]
    assert project["phase"] == "querying" and project["round"] == 0 and project["query_tasks"] == 2
    assert len(fake_scenes.query_tasks(2, 0)) == 2
    backend.shutdown(timeout=30)


# --------------------------------------------------------------------------- serve on an open network

def test_serve_refuses_an_open_network_without_auth():
    with pytest.raises(ConfigError) as err:
        check_network_exposure(Config(host="0.0.0.0"))
    message = str(err.value)
    assert "\n" not in message and "BASIC_AUTH_USER" in message and "ALLOW_OPEN_NETWORK=true" in message
    for host in ("::", "192.168.1.5", "example.org", ""):
        with pytest.raises(ConfigError):
            check_network_exposure(Config(host=host))
    # Loopback, credentials, or the explicit opt-out pass (gunicorn is not started here).
    for config in (Config(), Config(host="127.0.0.2"), Config(host="::1"), Config(host="localhost"),
                   Config(host="0.0.0.0", allow_open_network=True),
                   Config(host="0.0.0.0", basic_auth_user="ls", basic_auth_pass="pässwort")):
        check_network_exposure(config)
    assert Config().host == "127.0.0.1"


def test_new_security_settings_are_validated():
    config = Config(allowed_image_hosts=" Images.Example.org, 10.0.0.5:9000,[::1]:8080 ",
                    allowed_host_names="ovaal.internal", backend_url="https://ml.example.org/ovaal")
    assert config.image_hosts == {"images.example.org", "10.0.0.5:9000", "[::1]:8080"}
    assert config.host_names == {"ovaal.internal"}
    for bad, name in ((dict(allowed_image_hosts="http://x.org"), "allowed_image_hosts"),
                      (dict(allowed_image_hosts="x.org:70000"), "allowed_image_hosts"),
                      (dict(allowed_host_names="x.org:80"), "allowed_host_names"),
                      (dict(backend_url="x.org"), "backend_url"), (dict(max_classes=0), "max_classes"),
                      (dict(max_label_config_kb=0), "max_label_config_kb")):
        with pytest.raises(ConfigError, match=name):
            Config(**bad)


def test_serve_command_exits_with_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("BASIC_AUTH_USER", "BASIC_AUTH_PASS", "ALLOW_OPEN_NETWORK")}
    env.update(HOST="0.0.0.0", PORT="9", MODEL_DIR=str(tmp_path / "models"))
    done = subprocess.run([sys.executable, "-m", "ovaal_backend", "serve"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "refusing to serve on HOST=0.0.0.0" in lines[0], done.stderr
    assert "BASIC_AUTH_PASS" in lines[0] and "ALLOW_OPEN_NETWORK" in lines[0]
    assert not (tmp_path / "models").exists()
    check = "import sys, ovaal_backend.backend.wsgi, ovaal_backend.cli; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", check], cwd=ROOT, timeout=120).returncode == 0


# --------------------------------------------------------------------------- real gunicorn (and Label Studio)

OPEN_LOOPBACK = {k: v for k, v in fault_kit.SETTINGS.items() if not k.startswith("BASIC_AUTH")}
"""The fault kit's tiny project settings without basic auth: the loopback mode."""


class LoopbackHost:
    """An HTTP host on 127.0.0.1 that records each request's path and answers every GET and POST with ``status``
    and ``body``: an image host, or another ML backend that says it is UP."""

    def __init__(self, status: int, body: bytes, content_type: str) -> None:
        self.status, self.body, self.content_type = status, body, content_type
        self.hits: list[str] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> LoopbackHost:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        host = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                host.hits.append(self.path)
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(host.status)
                self.send_header("Content-Type", host.content_type)
                self.send_header("Content-Length", str(len(host.body)))
                self.end_headers()
                self.wfile.write(host.body)

            do_POST = do_GET  # noqa: N815

        return Handler


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_loopback_without_auth_answers_only_local_host_names(tmp_path):
    """DNS rebinding: a page whose name now resolves to 127.0.0.1 sends its own name in Host; refused with 421
    before any state, on every route. Local names, loopback addresses, HOST and ALLOWED_HOST_NAMES pass."""
    nowhere = SimpleNamespace(url="http://127.0.0.1:9", token="a" * 40, document_root=tmp_path)
    env = ls_server.backend_env(nowhere, tmp_path / "models", OPEN_LOOPBACK, ALLOWED_HOST_NAMES="ovaal.internal")
    backend, port = BackendProcess(env, tmp_path / "backend.log"), env["PORT"]
    backend.start()
    try:
        session = loopback_session()
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", "127.0.0.2", f"[::1]:{port}", f"app.localhost:{port}",
                     f"OVAAL.internal:{port}"):
            assert session.get(f"{backend.url}/metrics", headers={"Host": host}, timeout=30).status_code == 200, host
        calls = [("GET", "/", None), ("GET", "/metrics", None), ("POST", "/setup", {"project": "5.1", "schema": XML}),
                 ("POST", "/webhook", {"action": "START_TRAINING", "project": {"id": 5}})]
        for host in (f"rebind.attacker.test:{port}", "attacker.test", f"127.0.0.1.attacker.test:{port}",
                     "localhost.attacker.test", "[::2]"):
            for method, path, body in calls:
                response = session.request(method, f"{backend.url}{path}", json=body, headers={"Host": host},
                                           timeout=30)
                assert response.status_code == 421, (host, path, response.status_code)
                assert "ALLOWED_HOST_NAMES" in response.json()["error"]
        assert not (tmp_path / "models" / "5").exists()
    finally:
        backend.stop()


@pytest.mark.e2e
def test_images_come_only_from_label_studio_and_allowed_hosts(label_studio, tmp_path):
    """Blind SSRF: task image URLs on another host or port are never fetched unless ALLOWED_IMAGE_HOSTS names them;
    /metrics shows a reason and a log reference, never the URL or what the peer answered; /predict serves only
    tasks of the project it was called for, set up."""
    session = fault_kit.ls_session(label_studio)
    with LoopbackHost(200, png_bytes(), "image/png") as stranger, \
            LoopbackHost(500, b"SECRET-PEER-TEXT", "text/plain") as allowed:
        project = session.post(f"{label_studio.url}/api/projects/", json={"title": "ssrf", "label_config": XML},
                               timeout=60).json()
        pid = project["id"]
        imported = session.post(f"{label_studio.url}/api/projects/{pid}/import", params={"return_task_ids": "true"},
                                json=[{"data": {"image": stranger.url("/probe.png")}},
                                      {"data": {"image": allowed.url("/img.png")}}], timeout=60).json()
        probe_task, allowed_task = imported["task_ids"]
        env = ls_server.backend_env(label_studio, tmp_path / "models", OPEN_LOOPBACK,
                                    ALLOWED_IMAGE_HOSTS=f"127.0.0.1:{allowed.port}")
        backend = BackendProcess(env, tmp_path / "backend.log")
        backend.start()
        try:
            session.post(f"{label_studio.url}/api/ml/", json={"project": pid, "url": backend.url, "title": "OVAAL"},
                         timeout=120).raise_for_status()
            images = wait_for("both images set aside", lambda: len(
                (backend.metrics(pid).get("quarantined") or {}).get("images", [])) == 2
                and backend.metrics(pid)["quarantined"]["images"], 120, backend)
            reasons = {image["item"]: image["reason"] for image in images}
            assert stranger.hits == [] and allowed.hits == ["/img.png"]
            assert "ALLOWED_IMAGE_HOSTS" in reasons[probe_task] and "HTTP 500" in reasons[allowed_task]
            for reason in reasons.values():
                for secret in ("SECRET", "127.0.0.1", "http", ".png", str(stranger.port), str(allowed.port)):
                    assert secret not in reason, reason
            ref = reasons[allowed_task].rsplit("ref ", 1)[1].rstrip(")")
            assert [line for line in backend.log_tail(50_000).splitlines() if ref in line and "/img.png" in line]
            bad = {"project": pid, "tasks": [{"id": probe_task, "project": pid + 1000,
                                              "data": {"image": stranger.url("/predict.png")}}]}
            response = backend.session().post(f"{backend.url}/predict", json=bad, timeout=60)
            assert response.status_code == 400 and "ask /predict once per project" in response.json()["error"]
            response = backend.session().post(f"{backend.url}/predict", json=dict(bad, project=pid + 1000),
                                              timeout=60)
            assert response.status_code == 404 and "unknown project" in response.json()["error"]
            assert stranger.hits == []
        finally:
            backend.stop()


@pytest.mark.e2e
def test_basic_auth_goes_only_to_this_backends_webhook(label_studio, tmp_path):
    """Two ML backends connected to one real project with the same basic-auth user name: only the webhook to this
    backend gets our pair; the other backend's webhook keeps its own headers."""
    project = fault_kit.make_project(label_studio, "two-backends", 1)
    up = json.dumps({"status": "UP", "model_class": "Other", "model_version": "other-1"}).encode()
    with LoopbackHost(200, up, "application/json") as other:
        fault_kit.connect_model(label_studio, project.id, other.url(), auth=(fault_kit.AUTH[0], "not-our-password"))
        backend = BackendProcess(fault_kit.backend_env(label_studio, tmp_path / "models"), tmp_path / "backend.log")
        backend.start()
        try:
            fault_kit.connect_model(label_studio, project.id, backend.url)
            wait_for("our basic-auth header on our webhook", lambda: fault_kit.webhook_has_auth(
                label_studio, project.id), 60, backend)
            hooks = fault_kit.ls_session(label_studio).get(f"{label_studio.url}/api/webhooks/",
                                                          params={"project": project.id}, timeout=30).json()
            by_url = {hook["url"]: (hook.get("headers") or {}) for hook in hooks}
            ours = base64.b64encode(":".join(fault_kit.AUTH).encode()).decode()
            assert by_url[f"{backend.url}/webhook"].get("Authorization") == f"Basic {ours}"
            assert by_url[f"{other.url()}/webhook"].get("Authorization") != f"Basic {ours}"
            assert other.hits  # Label Studio did connect it (its /health and /setup)
        finally:
            backend.stop()
