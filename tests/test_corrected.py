"""Corrected masks through a project (the in-memory Label Studio of tests/helpers/fake_label_studio.py): a brush
annotation on a source task is stored from its webhook (or by resync), measured against the pushed mask, exported
instead of the prediction, trained on as dense labels, and forgotten when it is deleted."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from ovaal_backend.backend.convert import ParsedLabelConfig, brush_results, decode_brush
from ovaal_backend.backend.corrections import correction_figure
from ovaal_backend.backend.export import export_project
from tests.helpers.fake_label_studio import XML, P, add_scenes, answer_round, drain, started, tiny_config
from tests.helpers.synthetic import VOID

IFACE = ParsedLabelConfig.parse(XML)


def pushed_map(prediction: dict) -> np.ndarray:
    """The class map of a brush prediction of ours (one region per class)."""
    regions = prediction["result"]
    out = np.full(decode_brush(regions[0]).shape, 255, dtype=np.uint8)
    for region in regions:
        out[decode_brush(region)] = IFACE.classes.index(region["value"]["brushlabels"][0])
    return out


def correct(fake, driver, task_id: int, class_map: np.ndarray, parent: int | None = None,
            deliver: bool = True) -> dict:
    """An annotator submits a brush mask on a source task; returns the webhook payload (delivered unless not)."""
    payload = fake.annotate(task_id, json.loads(json.dumps(brush_results(class_map, IFACE))))
    payload["annotation"].update(parent_prediction=parent, updated_at="2025-01-01T10:00:00+00:00")
    fake.tasks[task_id]["annotations"][-1].update(parent_prediction=parent, updated_at="2025-01-01T10:00:00+00:00")
    if deliver:
        assert driver.add_event(payload["action"], payload) is not None
        drain(driver)
    return payload


@pytest.fixture
def project(tmp_path, fake):
    """Round 0 answered: ovaal-1's masks are on the three source tasks, round 1's query tasks are open."""
    truth = add_scenes(fake, 3)
    driver = started(tmp_path, fake, rounds=2)
    answer_round(fake, driver, truth, 0)
    drain(driver)
    assert driver.model_version == "ovaal-1"
    return driver, truth


@pytest.mark.slow  # the project fixture trains round 0
def test_a_corrected_mask_is_measured_exported_and_trained(tmp_path, fake, project):
    driver, truth = project
    source = sorted(truth)[0]
    (pushed,) = fake.predictions_of(source, "ovaal-1")
    corrected = truth[source].astype(np.uint8)  # void (255) is painted with no class
    correct(fake, driver, source, np.where(corrected == VOID, -1, corrected.astype(np.int64)), parent=pushed["id"])

    figures = driver.metrics()["corrections"]
    expected = correction_figure(pushed_map(pushed), corrected, IFACE.classes)
    assert (figures["count"], figures["measured"]) == (1, 1)
    assert figures["mean_miou"] == pytest.approx(expected["miou"]) and figures["mean_kept"] == expected["kept"]
    assert figures["per_class_iou"] == pytest.approx(expected["per_class_iou"])
    assert figures["by_version"][0]["version"] == "ovaal-1" and figures["recent"][0]["task"] == source

    out = tmp_path / "export"
    export_project(tiny_config(tmp_path), P, out, fake)
    files = {task: name for name, task in json.loads((out / "classes.json").read_text())["files"].items()}
    np.testing.assert_array_equal(np.asarray(Image.open(out / files[source])), corrected)  # the truth, not the model

    job, _ = driver.round_job(driver.state())
    assert set(job.dense) == {source} and job.dense[source].size == corrected.shape
    assert job.dense[source].grid.shape == (25, 38)  # the training size 32x48 scaled to CORRECTION_POINTS=1000
    answer_round(fake, driver, truth, 1)
    drain(driver)
    training = driver.metrics()["trainings"][-1]
    assert training["version"] == "ovaal-2" and training["dense_images"] == 1 and training["dense_points"] > 0
    asked = {t["data"]["ovaal_source_task"] for t in fake.query_tasks(P, 2)}
    assert asked == set(truth) - {source}  # a corrected image gets no more query tasks


@pytest.mark.slow  # the project fixture trains round 0
def test_updates_deletions_and_late_deliveries(fake, project):
    driver, truth = project
    source = sorted(truth)[1]
    payload = correct(fake, driver, source, np.zeros_like(truth[source]))  # accepted... as all background
    assert driver.metrics()["corrections"]["count"] == 1
    assert driver.metrics()["corrections"]["recent"][0]["version"] == "ovaal-1"  # no parent: our newest mask

    def update(stamp: str, result: list) -> None:
        body = dict(payload, action="ANNOTATION_UPDATED", annotation=dict(payload["annotation"], result=result,
                                                                          updated_at=stamp))
        driver.add_event("ANNOTATION_UPDATED", body)
        drain(driver)

    update("2025-01-01T11:00:00+00:00", [])  # the annotator removed every brush region
    assert driver.metrics()["corrections"]["count"] == 0
    update("2025-01-01T10:00:00+00:00", payload["annotation"]["result"])  # a late delivery of the older edit
    assert driver.metrics()["corrections"]["count"] == 0
    update("2025-01-01T12:00:00+00:00", payload["annotation"]["result"])  # painted again
    assert driver.metrics()["corrections"]["count"] == 1
    driver.add_event("ANNOTATIONS_DELETED", {"annotations": [{"id": payload["annotation"]["id"]}]})
    drain(driver)
    assert driver.metrics()["corrections"]["count"] == 0
    update("2025-01-01T13:00:00+00:00", payload["annotation"]["result"])  # after deletion: brings nothing back
    assert driver.metrics()["corrections"]["count"] == 0
    job, _ = driver.round_job(driver.state())
    assert job.dense == {}


@pytest.mark.slow  # the project fixture trains round 0
def test_resync_picks_up_a_correction_whose_webhook_was_lost(fake, project):
    driver, truth = project
    source = sorted(truth)[2]
    correct(fake, driver, source, np.where(truth[source] == VOID, -1, truth[source].astype(np.int64)), deliver=False)
    assert driver.metrics()["corrections"]["count"] == 0
    driver.resync()
    drain(driver)
    figures = driver.metrics()["corrections"]
    assert figures["count"] == 1 and figures["recent"][0]["task"] == source and figures["measured"] == 1


def test_a_correction_before_any_model_counts_without_a_figure_and_can_stay_out_of_training(tmp_path, fake):
    truth = add_scenes(fake, 2)
    driver = started(tmp_path, fake, train_on_corrections=False)
    source = sorted(truth)[0]
    correct(fake, driver, source, np.where(truth[source] == VOID, -1, truth[source].astype(np.int64)))
    figures = driver.metrics()["corrections"]
    assert (figures["count"], figures["measured"], figures["mean_miou"]) == (1, 0, None)
    assert figures["recent"][0]["version"] is None
    job, _ = driver.round_job(driver.state())
    assert job.dense == {}  # TRAIN_ON_CORRECTIONS=false


def test_correction_points_caps_the_grid_of_a_corrected_image(tmp_path, fake):
    truth = add_scenes(fake, 2)
    driver = started(tmp_path, fake, correction_points=100)
    source = sorted(truth)[1]
    correct(fake, driver, source, np.where(truth[source] == VOID, -1, truth[source].astype(np.int64)))
    job, _ = driver.round_job(driver.state())
    assert job.dense[source].grid.shape == (8, 12) and job.dense[source].size == truth[source].shape
