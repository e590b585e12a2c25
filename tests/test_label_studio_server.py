"""Pin down, against a REAL Label Studio 1.23.2, the API calls the backend makes.

Each test states one fact the backend relies on (see docs/label-studio-notes.md). Run with
``OVAAL_LS_BIN=$PWD/.venv-ls/bin/label-studio .venv/bin/python -m pytest tests/test_label_studio_server.py -s``.
"""

from __future__ import annotations

import json
import threading
import time
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
W, H = 48, 36  # test image size; original_width/height in results must match it

FALLBACK_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <KeyPointLabels name="query" toName="image" smart="false">
    <Label value="road" background="#804080"/><Label value="car" background="#400080"/>
    <Label value="ignore" background="#000000"/>
  </KeyPointLabels>
  <BrushLabels name="mask" toName="image">
    <Label value="road" background="#804080"/><Label value="car" background="#400080"/>
  </BrushLabels>
</View>"""


def label_config() -> str:
    path = ROOT / "label_config" / "camvid.xml"
    return path.read_text() if path.exists() else FALLBACK_CONFIG


def control(config: str, tag: str) -> tuple[str, str, list[str]]:
    """(name, toName, label values) of the first control tag of a kind in a label config."""
    node = ET.fromstring(config).find(f".//{tag}")
    assert node is not None, f"no <{tag}> in the label config"
    return node.get("name"), node.get("toName"), [lab.get("value") for lab in node.findall("Label")]


def keypoint(config: str, x: float, y: float, label_index: int = 0, **extra) -> dict:
    name, to_name, labels = control(config, "KeyPointLabels")
    return {"id": f"k{int(x)}_{int(y)}", "from_name": name, "to_name": to_name, "type": "keypointlabels",
            "original_width": W, "original_height": H, "image_rotation": 0,
            "value": {"x": x, "y": y, "width": 0.6, "keypointlabels": [labels[label_index]]}, **extra}


def brush(config: str, mask: np.ndarray, label_index: int = 0) -> dict:
    from label_studio_sdk.converter.brush import mask2rle

    name, to_name, labels = control(config, "BrushLabels")
    return {"id": "m1", "from_name": name, "to_name": to_name, "type": "brushlabels",
            "original_width": W, "original_height": H, "image_rotation": 0,
            "value": {"format": "rle", "rle": mask2rle(mask), "brushlabels": [labels[label_index]]}}


def http(label_studio):
    """A requests session with the token that never uses a proxy (traffic stays on 127.0.0.1)."""
    import requests

    s = requests.Session()
    s.trust_env = False
    s.headers.update(label_studio.headers())
    return s


_counter = iter(range(1, 10_000))


def make_project(label_studio, n_tasks: int = 2):
    """A project with the label config, a local-storage connection and n tasks whose images are local files."""
    from PIL import Image

    client = label_studio.client()
    k = next(_counter)
    folder = label_studio.document_root / f"proj{k}"
    folder.mkdir()
    rng = np.random.default_rng(k)
    urls = []
    for i in range(n_tasks):
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(path)
        urls.append(label_studio.local_files_url(path))
    project = client.projects.create(title=f"ovaal e2e {k}", label_config=label_config())
    storage = client.import_storage.local.create(project=project.id, path=str(folder), title=f"images {k}",
                                                 use_blob_urls=True)
    imported = client.projects.import_tasks(id=project.id, request=[{"data": {"image": u}} for u in urls],
                                            return_task_ids=True)
    return client, project, storage, imported


@pytest.fixture(scope="module")
def project(label_studio):
    client, project, storage, imported = make_project(label_studio)
    return {"client": client, "project": project, "storage": storage, "task_ids": imported.task_ids,
            "imported": imported}


def test_label_config_accepted(project):
    stored = project["client"].projects.get(id=project["project"].id)
    assert stored.label_config.strip() == label_config().strip()
    assert stored.model_version == ""  # a new project has no model version
    assert stored.sampling == "Sequential sampling"


def test_local_storage_created(project, label_studio):
    storage = project["storage"]
    assert storage.type == "localfiles"
    assert storage.project == project["project"].id
    assert Path(storage.path).resolve().is_relative_to(label_studio.document_root.resolve())


def test_import_tasks_returns_ids(project):
    imported = project["imported"]
    assert imported.task_count == 2
    assert len(imported.task_ids) == 2 and all(isinstance(t, int) for t in imported.task_ids)


def test_image_is_served_with_token_only(project, label_studio):
    client = project["client"]
    task = client.tasks.get(id=str(project["task_ids"][0]))  # tasks.get takes the id as a str
    url = label_studio.url + task.data["image"]
    s = http(label_studio)
    r = s.get(url)
    assert r.status_code == 200, r.text[:300]
    assert r.headers["content-type"] == "image/png"
    assert r.content.startswith(b"\x89PNG")
    s.headers.pop("Authorization")
    assert s.get(url).status_code == 401


def test_image_outside_any_storage_is_404(label_studio):
    (label_studio.document_root / "orphan").mkdir(exist_ok=True)
    (label_studio.document_root / "orphan" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    r = http(label_studio).get(label_studio.url + "/data/local-files/?d=orphan/x.png")
    assert r.status_code == 404


def test_predictions_round_trip(project):
    from label_studio_sdk.converter.brush import decode_rle

    client, pid = project["client"], project["project"].id
    t1, t2 = project["task_ids"]
    config = label_config()
    mask = np.zeros((H, W), np.uint8)
    mask[10:20, 5:30] = 255
    kp = keypoint(config, 50.0, 25.0, label_index=1, score=0.87)
    answer = client.projects.import_predictions(id=pid, request=[
        {"task": t1, "result": [kp], "score": 0.9, "model_version": "round-1"},
        {"task": t2, "result": [brush(config, mask)], "score": 0.2, "model_version": "round-1"},
    ])
    assert answer.created == 2
    # import_predictions does NOT set the project's model_version (import_tasks with inline predictions does).
    assert client.projects.get(id=pid).model_version == ""

    preds = {p.task: p for p in client.predictions.list(project=pid)}
    assert set(preds) == {t1, t2}
    assert preds[t1].model_version == "round-1" and preds[t1].score == pytest.approx(0.9)
    assert preds[t1].result == [kp]  # stored verbatim, including the per-region score
    assert [r["type"] for r in preds[t2].result] == ["brushlabels"]
    rle = preds[t2].result[0]["value"]["rle"]
    assert np.array_equal(decode_rle(rle).reshape(H, W, 4)[:, :, 3], mask)

    tasks = {t.id: t for t in client.tasks.list(project=pid, fields="all")}
    assert tasks[t1].total_predictions == 1
    assert tasks[t1].predictions[0].model_version == "round-1"


def test_project_update_sampling_and_model_version(project):
    from label_studio_sdk.core.api_error import ApiError

    client, pid = project["client"], project["project"].id
    with pytest.raises(ApiError) as err:  # a version with no predictions (and no live model) is refused
        client.projects.update(id=pid, model_version="no-such-version")
    assert err.value.status_code == 400
    assert "model_version" in err.value.body["validation_errors"]

    updated = client.projects.update(id=pid, sampling="Uncertainty sampling", model_version="round-1")
    assert updated.sampling == "Uncertainty sampling" and updated.model_version == "round-1"
    stored = client.projects.get(id=pid)
    assert stored.sampling == "Uncertainty sampling" and stored.model_version == "round-1"


def test_prediction_with_unknown_from_name_is_dropped_silently(project):
    client, pid = project["client"], project["project"].id
    bad = dict(keypoint(label_config(), 10, 10), from_name="not-in-config")
    answer = client.projects.import_predictions(
        id=pid, request=[{"task": project["task_ids"][0], "result": [bad], "score": 0.5, "model_version": "bad"}])
    assert answer.created == 0  # HTTP 201, nothing stored, no error


def test_uncertainty_sampling_and_annotations(label_studio):
    """The label stream serves the lowest prediction score first and never serves an annotated task again."""
    client, project, _, imported = make_project(label_studio, n_tasks=3)
    pid, ids = project.id, imported.task_ids
    config = label_config()
    scores = {ids[0]: 0.8, ids[1]: 0.1, ids[2]: 0.5}
    client.projects.import_predictions(id=pid, request=[
        {"task": t, "result": [keypoint(config, 30, 30)], "score": score, "model_version": "v1"}
        for t, score in scores.items()])
    client.projects.update(id=pid, sampling="Uncertainty sampling", model_version="v1")
    s = http(label_studio)
    nxt = s.get(f"{label_studio.url}/api/projects/{pid}/next")
    assert nxt.status_code == 200
    assert nxt.json()["id"] == ids[1]  # lowest score

    # A scripted annotator answers the query: annotations.create(id=<task id>, result=[...]).
    me = client.users.whoami()
    answer = [keypoint(config, 30, 30, label_index=0)]
    ann = client.annotations.create(id=ids[1], result=answer, was_cancelled=False)
    assert ann.task == ids[1] and ann.project == pid and ann.completed_by == me.id
    assert ann.result == answer

    nxt = s.get(f"{label_studio.url}/api/projects/{pid}/next")
    assert nxt.json()["id"] == ids[2]  # next lowest; the annotated task is not served again

    assert [a.id for a in client.annotations.list(id=ids[1])] == [ann.id]
    # only_annotated is ignored by 1.23.2 ...
    assert {t.id for t in client.tasks.list(project=pid, only_annotated=True)} == set(ids)
    # ... the Data Manager filter works.
    query = json.dumps({"filters": {"conjunction": "and", "items": [
        {"filter": "filter:tasks:total_annotations", "operator": "greater", "type": "Number", "value": 0}]}})
    assert [t.id for t in client.tasks.list(project=pid, query=query)] == [ids[1]]
    annotated = {t.id: t for t in client.tasks.list(project=pid, fields="all")}
    assert annotated[ids[1]].total_annotations == 1 and annotated[ids[1]].is_labeled


def test_import_tasks_with_predictions_and_meta(label_studio):
    client, project, _, _ = make_project(label_studio, n_tasks=1)
    pid = project.id
    image = client.tasks.list(project=pid).items[0].data["image"]
    config = label_config()
    answer = client.projects.import_tasks(id=pid, return_task_ids=True, request=[{
        "data": {"image": image}, "meta": {"round": 1, "pixels": [[3, 4]]},
        "predictions": [{"result": [keypoint(config, 10, 20)], "score": 0.42, "model_version": "q-1"}]}])
    assert answer.task_count == 1 and answer.prediction_count == 1
    task = client.tasks.get(id=str(answer.task_ids[0]))
    assert task.meta == {"round": 1, "pixels": [[3, 4]]}
    assert [(p.model_version, p.score) for p in task.predictions] == [("q-1", pytest.approx(0.42))]
    # Importing tasks with predictions into a project without a model version sets it.
    assert client.projects.get(id=pid).model_version == "q-1"


class _FakeBackend(BaseHTTPRequestHandler):
    calls: list = []

    def _send(self, obj, code=200):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.calls.append(("GET", self.path, None))
        self._send({"status": "UP", "model_class": "Fake"})

    def do_POST(self):
        n = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(n) or b"null")
        self.calls.append(("POST", self.path, body))
        if self.path == "/setup":
            self._send({"model_version": "fake-1"})
        elif self.path == "/predict":
            self._send({"results": [{"result": [], "score": 0.5, "model_version": "fake-1"} for _ in body["tasks"]]})
        else:
            self._send({}, 201)

    def log_message(self, *args):
        pass


def test_ml_backend_connection_and_webhooks(label_studio):
    """Connecting a backend calls /health and /setup and creates a webhook that sends annotation events."""
    client, project, _, imported = make_project(label_studio, n_tasks=1)
    _FakeBackend.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeBackend)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        ml = client.ml.create(project=project.id, url=url, title="fake")
        assert ml.state == "CO" and ml.model_version == "fake-1"
        paths = [(m, p) for m, p, _ in _FakeBackend.calls]
        assert ("GET", "/health") in paths and ("POST", "/setup") in paths
        setup = next(b for m, p, b in _FakeBackend.calls if p == "/setup")
        assert setup["project"].startswith(f"{project.id}.") and "<View>" in setup["schema"]
        hooks = client.webhooks.list(project=str(project.id))
        assert [(h.url, h.send_payload, h.is_active) for h in hooks] == [(f"{url}/webhook", True, True)]

        ann = client.annotations.create(id=imported.task_ids[0], result=[keypoint(label_config(), 5, 5)])
        client.annotations.delete(id=ann.id)
        deadline = time.monotonic() + 10
        actions = []
        while time.monotonic() < deadline and "ANNOTATIONS_DELETED" not in actions:
            time.sleep(0.2)
            actions = [b["action"] for m, p, b in _FakeBackend.calls if p == "/webhook"]
        hooks_by_action = {b["action"]: b for m, p, b in _FakeBackend.calls if p == "/webhook"}
        created = hooks_by_action["ANNOTATION_CREATED"]
        assert created["annotation"]["id"] == ann.id and created["task"]["id"] == imported.task_ids[0]
        assert created["project"]["id"] == project.id
        assert hooks_by_action["ANNOTATIONS_DELETED"]["annotations"] == [{"id": ann.id}]
        client.ml.delete(id=ml.id)
    finally:
        server.shutdown()
        server.server_close()


def test_raw_rest_calls_and_status_codes(label_studio):
    """The same calls without the SDK (what a plain `requests` client sees)."""
    client, project, _, imported = make_project(label_studio, n_tasks=1)
    pid, tid = project.id, imported.task_ids[0]
    image = client.tasks.get(id=str(tid)).data["image"]
    config = label_config()
    s, base = http(label_studio), label_studio.url

    r = s.post(f"{base}/api/projects/{pid}/import", params={"return_task_ids": "true"},
               json=[{"data": {"image": image}}])
    assert r.status_code == 201 and r.json()["task_count"] == 1 and len(r.json()["task_ids"]) == 1
    r = s.post(f"{base}/api/projects/{pid}/import/predictions",
               json=[{"task": tid, "result": [keypoint(config, 1, 2)], "score": 0.3, "model_version": "raw-1"}])
    assert r.status_code == 201 and r.json() == {"created": 1}
    r = s.patch(f"{base}/api/projects/{pid}", json={"sampling": "Uncertainty sampling", "model_version": "raw-1"})
    assert r.status_code == 200 and r.json()["model_version"] == "raw-1"
    r = s.post(f"{base}/api/tasks/{tid}/annotations", json={"result": [keypoint(config, 1, 2)]})
    assert r.status_code == 201 and r.json()["task"] == tid
    r = s.get(f"{base}/api/tasks", params={"project": pid, "fields": "all", "page_size": 100})
    assert r.status_code == 200
    page = r.json()
    assert set(page) >= {"tasks", "total"} and page["total"] == 2
    by_id = {t["id"]: t for t in page["tasks"]}
    assert by_id[tid]["predictions"][0]["model_version"] == "raw-1" and len(by_id[tid]["annotations"]) == 1
    r = s.get(f"{base}/api/predictions", params={"task": tid})
    assert r.status_code == 200 and [p["model_version"] for p in r.json()] == ["raw-1"]
