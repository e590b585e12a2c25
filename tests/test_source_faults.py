"""Source tasks that misbehave, against a REAL Label Studio 1.23.2 and the backend as ``python -m ovaal_backend serve``.

- An image host that drips its body one byte a second: the download ends at DOWNLOAD_SECONDS, the image is
  quarantined and round 0 opens for the other images.
- Source tasks deleted while their round trains: Label Studio refuses a whole ``import/predictions`` batch (400) when
  one task is gone, which used to hold the project in ``publishing`` for good. One source is deleted when the
  round's query tasks are imported (the masks' push lists the sources again), one when the masks are sent (the
  refused batch is split): the next round opens and every remaining source gets its mask.
- The split itself, on a batch with deleted tasks.
- ``resync`` while tasks are deleted between its pages: no existing task is skipped, and only annotations Label
  Studio answers 404 for are deleted.

The backend reaches Label Studio through the fault proxy of tests/helpers/fault_kit.py, which forwards every request as
it is; its plan only watches, and deletes tasks in Label Studio at the chosen moments. Run with
``OVAAL_LS_BIN=$PWD/.venv-ls/bin/label-studio .venv/bin/python -m pytest tests/test_source_faults.py -s``.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from ovaal_backend.backend.client import PAGE_SIZE, LabelStudioClient
from ovaal_backend.backend.project.context import ProjectContext
from ovaal_backend.backend.project.events import EventApplier
from ovaal_backend.backend.project.publish import Publisher
from tests.helpers.drip_server import DripServer
from tests.helpers.fake_label_studio import tiny_config
from tests.helpers.fault_kit import (
    Proxy,
    all_tasks,
    annotate,
    backend_env,
    connect_model,
    keypoint_prediction,
    ls_session,
    make_project,
    project_metrics,
    query_tasks,
    running_backend,
    webhook_has_auth,
)
from tests.helpers.ls_server import BackendProcess, wait_for

pytestmark = pytest.mark.e2e

DOWNLOAD_SECONDS = 2
PREDICTIONS = re.compile(r"/api/projects/(\d+)/import/predictions")
IMPORT = re.compile(r"/api/projects/(\d+)/import")

@pytest.fixture(scope="module")
def drip():
    with DripServer(b"\x89PNG\r\n\x1a\n" * 64, interval=1.0) as server:
        yield server


@pytest.fixture(scope="module")
def proxy(label_studio):
    """Forwards every request as it is, unless a test gives it a plan (which here only watches, and may act)."""
    with Proxy(label_studio.url) as running:
        yield running


@pytest.fixture(scope="module")
def backend(label_studio, proxy, drip, tmp_path_factory):
    env = backend_env(label_studio, tmp_path_factory.mktemp("models"), LABEL_STUDIO_URL=proxy.url,
                      DOWNLOAD_SECONDS=str(DOWNLOAD_SECONDS), ALLOWED_IMAGE_HOSTS=drip.host, RETRY_SECONDS="1")
    with running_backend(env, tmp_path_factory.mktemp("log") / "backend.log") as process:
        yield process


def connect(label_studio, backend: BackendProcess, project_id: int) -> None:
    connect_model(label_studio, project_id, backend.url)
    wait_for("our basic-auth header on the webhook", lambda: webhook_has_auth(label_studio, project_id), 60, backend)


def import_tasks(label_studio, project_id: int, datas: list[dict[str, Any]]) -> list[int]:
    response = ls_session(label_studio).post(f"{label_studio.url}/api/projects/{project_id}/import",
                                             params={"return_task_ids": "true"}, json=[{"data": d} for d in datas])
    assert response.status_code == 201, response.text
    return response.json()["task_ids"]


def delete_task(label_studio, task_id: int) -> None:
    response = ls_session(label_studio).delete(f"{label_studio.url}/api/tasks/{task_id}/")
    assert response.status_code in (200, 204), response.text


def masks_of(task: dict[str, Any], version: str) -> list[dict[str, Any]]:
    return [p for p in task.get("predictions") or [] if p.get("model_version") == version
            and any(r.get("type") == "brushlabels" for r in p.get("result") or [])]


# ============================================================================ a slow-drip image host

def test_a_dripping_image_is_quarantined_and_the_round_goes_on(label_studio, backend, drip):
    project = make_project(label_studio, "drip", 2)
    (slow,) = import_tasks(label_studio, project.id, [{"image": drip.url("/drip")}])
    connect(label_studio, backend, project.id)
    round0 = wait_for("round 0 for the two readable images", lambda: (
        q := query_tasks(all_tasks(label_studio, project.id), 0)) and len(q) == 2 and q, 90, backend)
    assert {t["data"]["ovaal_source_task"] for t in round0} == set(project.sources)
    quarantined = project_metrics(backend, project.id, timeout=10)["quarantined"]["images"]
    assert [item["item"] for item in quarantined] == [slow]
    lines = [line for line in backend.log_path.read_text().splitlines() if f"task {slow}: its image" in line]
    assert lines and all("DOWNLOAD_SECONDS" in line for line in lines), lines
    assert drip.hits and set(drip.hits) == {"/drip"}


# ============================================================================ source tasks deleted mid-round

def test_sources_deleted_while_their_round_trains_do_not_stop_the_project(label_studio, backend, proxy):
    project = make_project(label_studio, "deleted", 4, seed=1)
    pid = project.id
    on_queries, on_masks = sorted(project.sources)[:2]
    deleted: list[int] = []

    def delete_at(method: str, path: str, body: bytes) -> None:
        """Delete one source when round 1's query tasks are imported, another when the first masks are sent."""
        if method != "POST":
            return
        if (m := PREDICTIONS.fullmatch(path)) and int(m[1]) == pid and on_masks not in deleted:
            if any(p.get("task") == on_masks for p in json.loads(body)):
                delete_task(label_studio, on_masks)
                deleted.append(on_masks)
        elif (m := IMPORT.fullmatch(path.split("?")[0])) and int(m[1]) == pid and on_queries not in deleted:
            if any(t["data"].get("ovaal_round") == 1 for t in json.loads(body)):
                delete_task(label_studio, on_queries)
                deleted.append(on_queries)

    proxy.plan = delete_at
    try:
        connect(label_studio, backend, pid)
        session = ls_session(label_studio)
        round0 = wait_for("round 0", lambda: (q := query_tasks(all_tasks(label_studio, pid, session), 0))
                          and len(q) == 4 and all(keypoint_prediction(t) for t in q) and q, 90, backend)
        for task in round0:
            annotate(label_studio, task, project, session)
        metrics = wait_for("round 1 open after the deletions", lambda: (
            m := project_metrics(backend, pid, timeout=10)) and m["phase"] == "querying" and m["round"] == 1 and m,
            150, backend)
    finally:
        proxy.plan = lambda method, path, body: None
    assert sorted(deleted) == sorted([on_queries, on_masks])
    assert metrics["model_version"] == "ovaal-1"
    tasks = all_tasks(label_studio, pid)
    remaining = set(project.sources) - set(deleted)
    assert {t["id"] for t in tasks if not t["data"].get("ovaal_query")} == remaining
    for task in tasks:
        if task["id"] in remaining:
            assert len(masks_of(task, "ovaal-1")) == 1, f"source task {task['id']} has no mask of ovaal-1"
    assert remaining <= {t["data"]["ovaal_source_task"] for t in query_tasks(tasks, 1)}
    refused = [e for e in proxy.exchanges(lambda e: PREDICTIONS.fullmatch(e.path) is not None and e.status == 400)]
    assert refused, "the masks' batch with the deleted task was refused at least once (and then split)"
    assert "was deleted in Label Studio; its mask is dropped" in backend.log_path.read_text()


def test_a_refused_batch_is_split_to_find_the_deleted_tasks(label_studio, tmp_path):
    project = make_project(label_studio, "split", 2, seed=2)  # for its label config; the tasks below are extra
    client = LabelStudioClient(label_studio.url, label_studio.token)
    ids = import_tasks(label_studio, project.id, [{"image": f"/data/upload/{i}.png"} for i in range(6)])
    gone = [ids[1], ids[4]]
    for task_id in gone:
        delete_task(label_studio, task_id)
    point = {"from_name": "query", "to_name": "image", "type": "keypointlabels", "original_width": 64,
             "original_height": 48, "value": {"x": 50.0, "y": 50.0, "width": 0.6, "keypointlabels": ["background"]}}
    predictions = [{"task": t, "result": [point], "score": 0.5, "model_version": "split-test"} for t in ids]
    publisher = Publisher(ProjectContext(tiny_config(tmp_path), project.id, client), upkeep=None)
    assert publisher.send_predictions(predictions) == {t: False for t in gone}
    for task_id in ids:
        if task_id not in gone:
            versions = [p["model_version"] for p in client.task_predictions(task_id)]
            assert versions == ["split-test"], f"task {task_id}: {versions}"


# ============================================================================ resync while tasks are deleted

class DeleteOnSecondPage:
    """A watcher that deletes ``tasks`` in Label Studio when a listing asks for its second page (after its first)."""

    def __init__(self, label_studio, tasks: list[int]) -> None:
        self.label_studio, self.tasks, self.listings = label_studio, tasks, 0

    def __call__(self, method: str, path: str, body: bytes) -> None:
        if method == "GET" and path.startswith("/api/tasks?"):
            self.listings += 1
            if self.listings == 2:
                for task_id in self.tasks:
                    delete_task(self.label_studio, task_id)


def test_resync_pages_past_deletions_and_deletes_only_what_label_studio_lost(label_studio, tmp_path):
    project = make_project(label_studio, "resync", 1, seed=3)
    pid = project.id
    ids = sorted([*project.sources, *import_tasks(label_studio, pid, [{"image": f"/data/upload/{i}.png"}
                                                                      for i in range(PAGE_SIZE + 60)])])
    # With numbered pages, the 20 page-1 tasks deleted after page 1 was read move the tasks after them up by 20, so
    # page 2 misses 20 tasks that exist: `later` among them in the resync (and resync took its label for deleted).
    later, gone = ids[125], ids[130]
    session = ls_session(label_studio)
    answered = {task_id: session.post(f"{label_studio.url}/api/tasks/{task_id}/annotations/",
                                      json={"result": [], "was_cancelled": True}).json()["id"]
                for task_id in (later, gone)}
    with Proxy(label_studio.url) as proxy:
        ctx = ProjectContext(tiny_config(tmp_path), pid, LabelStudioClient(proxy.url, label_studio.token))
        for task_id, annotation_id in answered.items():
            ctx.store.clicks.put(annotation_id, task_id=task_id, source_task_id=task_id, round_index=0,
                                 annotator="1", points=[], cancelled=True)

        proxy.plan = DeleteOnSecondPage(label_studio, ids[1:21])  # a plain listing
        assert [int(t["id"]) for t in ctx.client.iter_tasks(pid)] == ids, "a task was skipped or listed twice"

        proxy.plan = DeleteOnSecondPage(label_studio, [*ids[21:41], gone])  # resync; `gone` is on page 2
        assert EventApplier(ctx).resync() == (1, 1)
    events = {action: payload for _, action, payload in ctx.store.events.pending()}
    assert events["ANNOTATIONS_DELETED"] == {"annotations": [{"id": answered[gone]}]}
    assert events["ANNOTATION_UPDATED"]["annotation"]["id"] == answered[later]
