"""Corrected masks against a REAL Label Studio 1.23.2 and the backend as ``python -m ovaal_backend serve``.

Round 0 is answered, ovaal-1's masks land on the source tasks; an annotator submits one source task's mask corrected
to its ground truth (a brush annotation started from our prediction, as the editor sends it). Label Studio's webhook
brings it to the backend, which stores it and measures ovaal-1's mask against it: the figure is in ``/metrics`` and
in the dashboard's data; ``export`` writes the correction instead of the model's mask; the next round trains on it
as dense labels and asks that image nothing more; deleting the annotation in Label Studio forgets it. Run with
``OVAAL_LS_BIN=$PWD/.venv-ls/bin/label-studio .venv/bin/python -m pytest tests/test_corrections_label_studio.py -s``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovaal_backend.backend.convert import brush_results, decode_brush
from ovaal_backend.backend.corrections import correction_figure
from tests.helpers.fault_kit import (
    all_tasks,
    annotate,
    backend_env,
    connect_model,
    ls_session,
    make_project,
    project_metrics,
    query_tasks,
    running_backend,
    webhook_has_auth,
)
from tests.helpers.ls_server import wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def backend(label_studio, tmp_path_factory):
    env = backend_env(label_studio, tmp_path_factory.mktemp("models"), RETRY_SECONDS="1")
    with running_backend(env, tmp_path_factory.mktemp("log") / "backend.log") as process:
        yield process


def ours(task: dict, version: str) -> dict | None:
    """The task's prediction of one of our versions, or None."""
    return next((p for p in task.get("predictions") or [] if p.get("model_version") == version), None)


def class_map(prediction: dict, classes: tuple[str, ...]) -> np.ndarray:
    """The class map of a brush prediction (255 where no region)."""
    regions = prediction["result"]
    out = np.full(decode_brush(regions[0]).shape, 255, dtype=np.uint8)
    for region in regions:
        out[decode_brush(region)] = classes.index(region["value"]["brushlabels"][0])
    return out


def test_a_corrected_mask_is_stored_measured_exported_trained_and_forgotten(label_studio, backend):
    project = make_project(label_studio, "ovaal-corrections", 3)
    pid, classes = project.id, project.parsed_config.classes
    connect_model(label_studio, pid, backend.url)
    wait_for("our basic-auth header on the webhook", lambda: webhook_has_auth(label_studio, pid), 60, backend)
    round0 = wait_for("round-0 query tasks",
                      lambda: len(q := query_tasks(all_tasks(label_studio, pid), 0)) == 3 and q, 90, backend)
    for task in round0:
        annotate(label_studio, task, project)

    def masked() -> list[dict] | None:
        sources = [t for t in all_tasks(label_studio, pid) if t["id"] in project.sources]
        return sources if all(ours(t, "ovaal-1") for t in sources) else None

    source = wait_for("ovaal-1's masks on every source task", masked, 240, backend)[0]
    pushed = ours(source, "ovaal-1")
    truth = project.sources[source["id"]]  # -1 = void: painted with no region
    session = ls_session(label_studio)
    response = session.post(f"{label_studio.url}/api/tasks/{source['id']}/annotations/", timeout=60, json={
        "result": brush_results(truth, project.parsed_config), "parent_prediction": pushed["id"],
        "was_cancelled": False})
    assert response.status_code == 201, response.text
    annotation_id = response.json()["id"]

    # The webhook stored it and measured ovaal-1's mask against it: /metrics and the dashboard's data.
    figures = wait_for("the correction in /metrics", lambda: (m := project_metrics(backend, pid)) and
                       m["corrections"]["measured"] == 1 and m["corrections"], 60, backend)
    corrected = np.where(truth < 0, 255, truth).astype(np.uint8)
    expected = correction_figure(class_map(pushed, classes), corrected, classes)
    assert figures["count"] == 1 and figures["recent"][0]["task"] == source["id"]
    assert figures["by_version"] == [{"version": "ovaal-1", "count": 1, "mean_miou": pytest.approx(expected["miou"]),
                                      "mean_kept": pytest.approx(expected["kept"])}]
    assert figures["per_class_iou"] == pytest.approx(expected["per_class_iou"])
    data = backend.session().get(f"{backend.url}/dashboard/data", timeout=30).json()
    assert data["projects"][str(pid)]["corrections"]["mean_miou"] == pytest.approx(expected["miou"])
    page = backend.session().get(f"{backend.url}/dashboard", timeout=30).text
    assert '"corrections"' in page and '"mean_kept"' in page  # the page carries the figure it first draws

    # export writes the correction, not the model's mask.
    out = backend.log_path.parent / "export"
    run = subprocess.run([sys.executable, "-m", "ovaal_backend", "export", "--project", str(pid), "--out", str(out)],
                         cwd=ROOT, env=backend.env, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr
    files = {task: name for name, task in json.loads((out / "classes.json").read_text())["files"].items()}
    np.testing.assert_array_equal(np.asarray(Image.open(out / files[source["id"]])), corrected)

    # The next round trains on it as dense labels and asks that image nothing more.
    round1 = query_tasks(all_tasks(label_studio, pid), 1)
    assert len(round1) == 3  # published with ovaal-1's masks, before the correction
    for task in round1:
        annotate(label_studio, task, project)
    round2 = wait_for("round-2 query tasks", lambda: (q := query_tasks(all_tasks(label_studio, pid), 2)) and q,
                      240, backend)
    assert {t["data"]["ovaal_source_task"] for t in round2} == set(project.sources) - {source["id"]}
    training = project_metrics(backend, pid)["trainings"][-1]
    assert training["version"] == "ovaal-2" and training["dense_images"] == 1 and training["dense_points"] > 0

    # Deleting the annotation in Label Studio forgets the correction.
    assert session.delete(f"{label_studio.url}/api/annotations/{annotation_id}/", timeout=60).status_code == 204
    wait_for("the correction to be forgotten",
             lambda: (m := project_metrics(backend, pid)) and m["corrections"]["count"] == 0, 60, backend)
