"""The link to Label Studio (backend/link.py): a wrong LABEL_STUDIO_URL or key fails the connection with the cause,
read from the real Label Studio's own answer to ``POST /api/ml/``; /metrics shows the link; /setup never waits on a
Label Studio that does not answer."""

from __future__ import annotations

import socket
import time

import pytest
import requests

from ovaal_backend.backend.app import create_app
from ovaal_backend.backend.client import LabelStudioClient, LabelStudioError
from ovaal_backend.backend.link import LinkStatus, reason_phrase
from ovaal_backend.config import Config
from tests.helpers.fake_label_studio import XML
from tests.helpers.ls_server import BackendProcess, backend_env, free_port, loopback_session

UID = "1.1700000000"
WRONG_KEY = "0123456789abcdef0123456789abcdef01234567"


def silent_listener() -> socket.socket:
    """A loopback socket that accepts connections (the kernel's backlog) and never answers: a hung server."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    return server


def create_project(label_studio, title: str) -> int:
    response = loopback_session().post(f"{label_studio.url}/api/projects/", headers=label_studio.headers(),
                                       json={"title": title, "label_config": XML}, timeout=30)
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def connect(label_studio, project_id: int, backend_url: str) -> requests.Response:
    """What an admin's "Connect model" does: Label Studio calls /health and /setup and answers with the outcome."""
    return loopback_session().post(f"{label_studio.url}/api/ml/", headers=label_studio.headers(), timeout=60,
                                   json={"project": project_id, "url": backend_url, "title": "ovaal"})


# --- causes, from real sockets -----------------------------------------------------------------------------------

@pytest.mark.parametrize("url,words", [
    (f"http://127.0.0.1:{free_port()}", ["connection refused", "nothing listens", "inside a container `localhost`",
                                        "LABEL_STUDIO_URL"]),
    ("http://label-studio.invalid:8080", ["unknown host 'label-studio.invalid'", "LABEL_STUDIO_URL"]),
])
def test_an_unreachable_label_studio_is_named_with_the_setting_to_change(url, words):
    client = LabelStudioClient(url, WRONG_KEY, timeout=5)
    with pytest.raises(LabelStudioError) as caught:
        client.get_project(1)
    for word in words:
        assert word in caught.value.cause, caught.value.cause
    assert client.link.status()["reachable"] is False and client.link.status()["last_error"] == caught.value.cause


def test_the_link_status_follows_the_newest_outcome():
    link = LinkStatus("http://ls")
    assert link.reachable is None and not link.fresh()
    link.failed("connection refused")
    assert link.reachable is False
    link.ok()
    assert link.reachable is True and link.fresh() and link.status()["last_error"] == "connection refused"
    assert not link.fresh(now=time.time() + 3600)  # /setup asks again after a long silence


def test_reason_phrase_is_one_printable_line():
    assert reason_phrase('add:\n<KeyPointLabels name="q">\r\n  <Label value="caf\u00e9"/>') == \
        'add: <KeyPointLabels name="q"> <Label value="caf "/>'


def test_setup_never_waits_long_on_a_label_studio_that_does_not_answer(tmp_path):
    """Label Studio waits 3 s for /setup, blocked: a call back into it must not hold /setup (no deadlock)."""
    hung = silent_listener()
    config = Config(label_studio_url=f"http://127.0.0.1:{hung.getsockname()[1]}", label_studio_api_key=WRONG_KEY,
                    model_dir=str(tmp_path), device="cpu", setup_check_seconds=0.5, label_studio_timeout=2)
    app = create_app(config, recover=False)
    try:
        started = time.monotonic()
        response = app.test_client().post("/setup", json={"project": UID, "schema": XML})
        assert time.monotonic() - started < 3.0  # Label Studio's own ML_TIMEOUT_SETUP
        assert response.status_code == 200, response.get_json()  # nothing definite: connected
    finally:
        app.extensions["ovaal"].shutdown(timeout=10)
        hung.close()


# --- with the real Label Studio ----------------------------------------------------------------------------------

@pytest.mark.e2e
def test_setup_checks_url_and_key_against_the_real_label_studio(label_studio, tmp_path):
    """In process: a good URL and key connect and /metrics says reachable; a wrong key answers 502 with the cause in
    the body and in the reason phrase, and leaves no project behind."""
    project_id = create_project(label_studio, "link-in-process")
    uid = f"{project_id}.1700000000"
    good = Config(label_studio_url=label_studio.url, label_studio_api_key=label_studio.token, device="cpu",
                  model_dir=str(tmp_path / "good"))
    app = create_app(good, recover=False)
    try:
        client = app.test_client()
        assert client.post("/setup", json={"project": uid, "schema": XML}).status_code == 200
        link = client.get("/metrics").get_json()["label_studio"]
        assert link["reachable"] is True and link["last_ok"] > time.time() - 60 and link["url"] == label_studio.url
    finally:
        app.extensions["ovaal"].shutdown(timeout=30)
    app = create_app(good.replace(label_studio_api_key=WRONG_KEY, model_dir=str(tmp_path / "bad")), recover=False)
    try:
        client = app.test_client()
        response = client.post("/setup", json={"project": uid, "schema": XML, "hostname": "http://localhost:8080"})
        assert response.status_code == 502
        error = response.get_json()["error"]
        assert "answered 401 to LABEL_STUDIO_API_KEY" in error and "gives its own address as" in error
        assert "LABEL_STUDIO_API_KEY" in response.status  # the reason phrase Label Studio shows
        assert client.get("/metrics").get_json()["label_studio"]["reachable"] is False
        assert not (tmp_path / "bad" / str(project_id)).exists()  # refused before any project state
    finally:
        app.extensions["ovaal"].shutdown(timeout=30)


@pytest.mark.e2e
@pytest.mark.parametrize("settings,words", [
    ({"LABEL_STUDIO_URL": f"http://127.0.0.1:{free_port()}"}, ["connection refused", "LABEL_STUDIO_URL"]),
    ({"LABEL_STUDIO_API_KEY": WRONG_KEY}, ["401", "LABEL_STUDIO_API_KEY", "Account & Settings"]),
], ids=["wrong-url", "wrong-key"])
def test_label_studio_shows_the_cause_when_connecting(label_studio, tmp_path, settings, words):
    """The admin's Connect in the real Label Studio 1.23.2 fails with our cause in Label Studio's own answer (it
    shows the status line of a failed /setup, not its body), and /metrics and the dashboard show the error."""
    project_id = create_project(label_studio, f"link-{'-'.join(settings)}")
    backend = BackendProcess(backend_env(label_studio, tmp_path / "models", {}, **settings), tmp_path / "log")
    backend.start()
    try:
        response = connect(label_studio, project_id, backend.url)
        assert response.status_code == 400, response.text
        shown = str(response.json())
        assert "Successfully connected to" in shown  # Label Studio's words around ours
        for word in words:
            assert word in shown, shown
        link = backend.session().get(f"{backend.url}/metrics", timeout=30).json()["label_studio"]
        assert link["reachable"] is False and all(w in link["last_error"] for w in words[:1])
        page = backend.session().get(f"{backend.url}/dashboard/data", timeout=30).json()
        assert page["label_studio"]["last_error"] == link["last_error"]
    finally:
        backend.stop()


def test_a_brush_only_config_is_refused_with_the_lines_to_add(fake, tmp_path):
    """Issue 18 item 7: the 400 of /setup (body and reason phrase) holds the KeyPointLabels lines for the project's
    classes with an ignore label; pasted in, the config connects."""
    from ovaal_backend.backend.registry import Backend

    brush_only = ('<View><Image name="img" value="$image"/><BrushLabels name="mask" toName="img">'
                  '<Label value="road"/><Label value="sky &amp; sun"/></BrushLabels></View>')
    backend = Backend(Config(model_dir=str(tmp_path), device="cpu"), client_factory=lambda _: fake,
                      start_workers=False)
    client = create_app(backend.config, backend, recover=False).test_client()
    response = client.post("/setup", json={"project": UID, "schema": brush_only})
    assert response.status_code == 400
    error = response.get_json()["error"]
    lines = error[error.index('<KeyPointLabels name='):]
    assert lines.splitlines() == ['<KeyPointLabels name="query" toName="img">', '  <Label value="road"/>',
                                  '  <Label value="sky &amp; sun"/>', '  <Label value="ignore" ovaal="ignore"/>',
                                  "</KeyPointLabels>"]
    assert '<Label value="road"/> <Label value="sky &amp; sun"/>' in response.status  # what Label Studio shows
    fixed = brush_only.replace("</View>", lines + "</View>")
    assert client.post("/setup", json={"project": UID, "schema": fixed}).status_code == 200
    assert client.get("/metrics").get_json()["projects"]["1"]["classes"] == ["road", "sky & sun"]
    no_ignore = fixed.replace('<Label value="ignore" ovaal="ignore"/>', "")
    error = client.post("/setup", json={"project": "2.1700000000", "schema": no_ignore}).get_json()["error"]
    assert 'add this line inside <KeyPointLabels name="query">: <Label value="ignore" ovaal="ignore"/>' in error
