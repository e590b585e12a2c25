"""Webhooks while more editors ask /predict than MAX_PREDICT_CALLS, on the real gunicorn and a REAL Label Studio.

The backend runs as ``python -m ovaal_backend serve`` with ``SERVER_THREADS=4`` and the default
``MAX_PREDICT_CALLS=2``; round 0 is answered through Label Studio so a model exists. Then ``N_PREDICTS`` clients
ask ``/predict`` for dense masks of large images at the same moment, while Label Studio's own ANNOTATION_UPDATED
payloads arrive at ``/webhook``: every webhook is stored and answered 201 without waiting for a thread, the calls
past the cap get 503 with ``Retry-After`` and a JSON reason at once, the others their masks, and nothing gets any
other 5xx. Run with
``OVAAL_LS_BIN=$PWD/.venv-ls/bin/label-studio .venv/bin/python -m pytest tests/test_predict_busy.py -s``.
"""

from __future__ import annotations

import shutil
import threading
import time
from typing import Any

import pytest

from tests.helpers.fault_kit import (
    all_tasks,
    annotate,
    backend_env,
    connect_model,
    ls_session,
    make_project,
    project_metrics,
    query_tasks,
    webhook_has_auth,
)
from tests.helpers.ls_server import BackendProcess, wait_for

pytestmark = pytest.mark.e2e

N_IMAGES = 3
N_PREDICTS = 6
N_WEBHOOKS = 8


def test_predicts_past_the_cap_are_refused_and_webhooks_answered(label_studio, tmp_path):
    project = make_project(label_studio, "busy", N_IMAGES, height=720, width=960)  # dense masks take a while
    pid = project.id
    backend = BackendProcess(backend_env(label_studio, tmp_path / "models"), tmp_path / "backend.log")
    backend.start()
    try:
        payloads = first_model(label_studio, project, backend)
        # /predict serves a source task's stored mask in milliseconds: without the files every call computes its
        # mask with the model and holds its slot, which is the load this test is about
        shutil.rmtree(tmp_path / "models" / str(pid) / "masks")
        sources = [{"id": t["id"], "data": t["data"]} for t in all_tasks(label_studio, pid)
                   if not t["data"].get("ovaal_query")]
        predicts, webhooks = burst(backend, {"project": f"{pid}.0", "tasks": sources}, payloads)
        statuses = sorted(status for status, _, _ in predicts)
        print(f"\n/predict: {statuses}, {max(s for _, _, s in predicts):.2f} s at most; webhooks: "
              f"{sorted(status for status, _ in webhooks)}, {max(s for _, s in webhooks):.2f} s at most")
        assert set(statuses) == {200, 503} and statuses.count(200) >= 2, statuses
        for status, response, _ in predicts:
            if status == 503:
                assert "MAX_PREDICT_CALLS=2" in response.json()["error"] and int(response.headers["Retry-After"]) > 0
            else:
                assert len(response.json()["results"]) == len(sources)
        assert all(status == 201 for status, _ in webhooks)
        refused = max(s for status, _, s in predicts if status == 503)
        assert refused < 5.0, f"a refused /predict waited {refused:.1f} s"
        metrics = backend.session().get(f"{backend.url}/metrics", timeout=30).json()["predict"]
        assert metrics == {"slots": 2, "busy": 0, "refused": statuses.count(503)}
    finally:
        backend.stop()


def first_model(label_studio, project, backend: BackendProcess) -> list[dict[str, Any]]:
    """Round 0 answered through Label Studio and ``ovaal-1`` trained; returns ANNOTATION_UPDATED payloads built from
    Label Studio's own annotations and tasks (what its webhook sends for an Update)."""
    pid, session = project.id, ls_session(label_studio)
    connect_model(label_studio, pid, backend.url)
    wait_for("round-0 query tasks", lambda: len(query_tasks(all_tasks(label_studio, pid), 0)) == N_IMAGES, 90,
             backend)
    wait_for("our basic-auth header on the webhook", lambda: webhook_has_auth(label_studio, pid), 30, backend)
    tasks = query_tasks(all_tasks(label_studio, pid), 0)
    ids = [annotate(label_studio, task, project) for task in tasks]
    wait_for("ovaal-1", lambda: (m := project_metrics(backend, pid, timeout=10)) and m["phase"] == "querying"
             and m["model_version"] == "ovaal-1", 180, backend, interval=1.0)
    return [{"action": "ANNOTATION_UPDATED", "project": {"id": pid}, "task": task,
             "annotation": session.get(f"{label_studio.url}/api/annotations/{i}/", timeout=30).json()}
            for task, i in zip(tasks, ids, strict=True)]


def burst(backend: BackendProcess, body: dict[str, Any], payloads: list[dict[str, Any]]
          ) -> tuple[list[tuple[int, Any, float]], list[tuple[int, float]]]:
    """``N_PREDICTS`` /predict calls released at once, then ``N_WEBHOOKS`` webhooks (one every 0.25 s, each on a
    fresh connection) while they run; returns (status, response, seconds) per /predict, (status, seconds) per
    webhook."""
    start = threading.Barrier(N_PREDICTS + 1)
    predicts: list[tuple[int, Any, float]] = []

    def predict() -> None:
        session = backend.session()
        start.wait()
        t0 = time.monotonic()
        response = session.post(f"{backend.url}/predict", json=body, timeout=300)
        predicts.append((response.status_code, response, time.monotonic() - t0))

    threads = [threading.Thread(target=predict) for _ in range(N_PREDICTS)]
    for thread in threads:
        thread.start()
    start.wait()
    webhooks = []
    for i in range(N_WEBHOOKS):
        time.sleep(0.25)
        t0 = time.monotonic()
        status = backend.session().post(f"{backend.url}/webhook", json=payloads[i % len(payloads)],
                                        timeout=30).status_code
        webhooks.append((status, time.monotonic() - t0))
    for thread in threads:
        thread.join()
    return predicts, webhooks
