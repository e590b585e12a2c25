"""Corrected masks, the pure parts: brush regions -> label map, the pushed mask's figure against it, the summary,
the store, the grid a round job trains on, the round job and the simulator's --dense-images."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ovaal_backend.backend.convert import ParsedLabelConfig, brush_results
from ovaal_backend.backend.corrections import (
    brush_label_map,
    correction_figure,
    label_dtype,
    none_value,
    remap_label_map,
    summarise,
    version_number,
)
from ovaal_backend.backend.store import ProjectStore, map_digest
from ovaal_backend.cli import main
from ovaal_backend.config import IGNORE_INDEX, Config
from ovaal_backend.engine.dense import DenseLabels, grid_labels, grid_points, grid_shape
from ovaal_backend.engine.job import RoundJob, run_round
from tests.helpers.fake_label_studio import XML
from tests.helpers.synthetic import CLASSES, VOID, make_dataset

from .test_simulate import FAST

IFACE = ParsedLabelConfig.parse(XML)
KEYS = {"background": 0, "square": 1, "disc": 2}
U8 = np.dtype(np.uint8)


def regions(class_map: np.ndarray) -> list[dict]:
    """Brush regions of a class map, as the backend pushes them and Label Studio stores them (JSON)."""
    return json.loads(json.dumps(brush_results(class_map, IFACE)))


# --- brush regions -> label map --------------------------------------------------------------------------------

def test_brush_label_map_round_trips_a_class_map_and_leaves_uncovered_pixels_without_class():
    rng = np.random.default_rng(0)
    class_map = rng.integers(IGNORE_INDEX, 3, size=(23, 31))
    decoded = brush_label_map(regions(class_map), "mask", KEYS, U8)
    assert decoded.dtype == np.uint8 and decoded.shape == (23, 31)
    np.testing.assert_array_equal(decoded, np.where(class_map < 0, 255, class_map))


def test_later_regions_paint_over_earlier_ones_and_unknown_labels_paint_no_class(caplog):
    base = np.zeros((8, 10), dtype=int)  # all background
    car = np.full((8, 10), IGNORE_INDEX)
    car[2:5, 3:7] = 2
    results = regions(base) + regions(car)
    odd = regions(np.where(np.arange(10)[None, :] < 2, 1, IGNORE_INDEX) * np.ones((8, 1), dtype=int))[0]
    odd["value"]["brushlabels"] = ["ignore"]  # the ignore label (or a removed class): no class there
    other_control = dict(regions(base)[0], from_name="other")
    wrong_size = regions(np.zeros((4, 4), dtype=int))[0]
    keypoint = {"from_name": "query", "type": "keypointlabels", "value": {"x": 1, "y": 1}}
    decoded = brush_label_map([*results, odd, other_control, wrong_size, keypoint], "mask", KEYS, U8)
    expected = np.where(car == 2, 2, 0)
    expected[:, :2] = 255
    np.testing.assert_array_equal(decoded, expected)
    assert "skipping brush region" in caplog.text and "4x4" in caplog.text


def test_no_brush_region_is_no_label_map():
    assert brush_label_map([], "mask", KEYS, U8) is None
    assert brush_label_map(regions(np.zeros((3, 3), dtype=int)), "other", KEYS, U8) is None


def test_dtype_and_remap_keep_no_class():
    assert label_dtype(3) == np.uint8 and label_dtype(254) == np.uint8 and label_dtype(255) == np.uint16
    assert none_value(np.dtype(np.uint16)) == 65535
    stored = np.array([[0, 1, 2, 255]], dtype=np.uint8)  # keys into label_names ["a", "b", "c"]
    # classes now ["c", "a"]: a -> 1, b removed -> none, c -> 0
    np.testing.assert_array_equal(remap_label_map(stored, [1, -1, 0], U8), [[1, 255, 0, 255]])
    wide = remap_label_map(stored, [1, -1, 0], np.dtype(np.uint16))
    assert wide.dtype == np.uint16 and wide.tolist() == [[1, 65535, 0, 65535]]


# --- the figure ------------------------------------------------------------------------------------------------

def test_correction_figure_known_answer():
    pushed = np.array([[0, 0, 1, 1],
                       [0, 0, 1, 1]])
    corrected = np.array([[0, 0, 0, 1],
                          [0, 0, 255, 1]])  # one pixel moved from class 1 to 0; one erased (no class)
    figure = correction_figure(pushed, corrected, ["road", "car", "sky"])
    # over the 7 pixels with a class: road 4 of 5 (union), car 2 of 3, sky in neither
    assert figure["per_class_iou"] == {"road": pytest.approx(80.0), "car": pytest.approx(200 / 3), "sky": None}
    assert figure["miou"] == pytest.approx((80 + 200 / 3) / 2)
    assert figure["kept"] == pytest.approx(6 / 8) and figure["pixels"] == 7


def test_accepted_mask_is_kept_whole():
    pushed = np.random.default_rng(1).integers(0, 3, size=(30, 40))
    figure = correction_figure(pushed, pushed.astype(np.uint8), CLASSES)
    assert figure["kept"] == 1.0 and figure["miou"] == 100.0
    with pytest.raises(ValueError, match="differ in size"):
        correction_figure(pushed, pushed[:10], CLASSES)


def test_summary_means_per_class_and_per_version():
    def row(task, version, per_class, kept):
        present = [v for v in per_class.values() if v is not None]
        return {"task": task, "annotation": task * 10, "stored_at": float(task), "figure": {
            "version": version, "per_class_iou": per_class, "miou": float(np.mean(present)), "kept": kept}}

    rows = [row(1, "ovaal-1", {"a": 50.0, "b": None}, 0.5), row(2, "ovaal-2", {"a": 70.0, "b": 90.0}, 0.9),
            row(3, "ovaal-10", {"a": 90.0, "b": 100.0}, 1.0),
            {"task": 4, "annotation": 40, "stored_at": 4.0, "figure": None}]  # corrected before any mask of ours
    summary = summarise(rows, ["a", "b"])
    assert (summary["count"], summary["measured"]) == (4, 3)
    assert summary["mean_miou"] == pytest.approx((50 + 80 + 95) / 3)
    assert summary["mean_kept"] == pytest.approx(0.8)
    assert summary["per_class_iou"] == {"a": pytest.approx(70.0), "b": pytest.approx(95.0)}
    assert [v["version"] for v in summary["by_version"]] == ["ovaal-1", "ovaal-2", "ovaal-10"]
    assert summary["by_version"][1] == {"version": "ovaal-2", "count": 1, "mean_miou": 80.0, "mean_kept": 0.9}
    assert [r["task"] for r in summary["recent"]] == [4, 3, 2, 1] and summary["recent"][0]["miou"] is None
    empty = summarise([], ["a"])
    assert empty["count"] == 0 and empty["mean_miou"] is None and empty["per_class_iou"] == {"a": None}
    assert version_number("ovaal-12") == 12 and version_number("my-model-3") == -1


# --- the store -------------------------------------------------------------------------------------------------

def test_store_keeps_the_newest_per_task_and_forgets_deleted_ones(tmp_path):
    path = tmp_path / "labels.sqlite3"
    store = ProjectStore(path, "p").corrections
    first, second = np.zeros((4, 5), np.uint8), np.ones((4, 5), np.uint8)
    assert store.wants(1, map_digest(first), "2025-01-01T10:00:00Z")
    assert store.put(1, task_id=7, label_map=first, figure={"miou": 50.0}, updated_at="2025-01-01T10:00:00Z")
    assert not store.wants(1, map_digest(first), "2025-01-01T10:00:00Z")  # the same map again
    assert not store.wants(1, map_digest(second), "2025-01-01T09:00:00Z")  # an older edit
    assert not store.put(1, 7, second, None, "2025-01-01T09:00:00Z")
    assert store.put(2, 7, second, None, "2025-01-01T11:00:00Z")  # another annotator's, newer
    np.testing.assert_array_equal(store.newest(7), second)
    assert [r["annotation"] for r in store.figures()] == [2] and store.tasks() == {7}
    assert store.delete([2]) == 1
    np.testing.assert_array_equal(store.newest(7), first)  # the other annotation counts again
    assert store.figures()[0]["figure"] == {"miou": 50.0}
    assert [(t, m.shape) for t, m in store.newest_maps()] == [(7, (4, 5))]
    assert ProjectStore(path, "other").corrections.newest(7) is None and store.delete([99]) == 0


# --- the engine: grids, the round job --------------------------------------------------------------------------

def test_grid_samples_cell_centres_and_points_map_back_to_original_pixels():
    label = np.arange(20 * 30).reshape(20, 30) % 7
    grid = grid_labels(label, 4, 6)
    assert grid.shape == (4, 6) and grid[0, 0] == label[2, 2] and grid[3, 5] == label[17, 27]
    points = grid_points(grid, (20, 30), num_classes=5)  # 5 and 6 are not classes: dropped
    assert (points[:, 2] < 5).all() and len(points) == int((grid < 5).sum())
    assert (label[points[:, 0], points[:, 1]] == points[:, 2]).all()
    assert grid_points(np.full((2, 2), 255), (4, 4), 3).shape == (0, 3)


def test_grid_shape_is_the_training_size_never_finer_than_the_image_and_capped():
    assert grid_shape((360, 480), 176, 240) == (176, 240)
    assert grid_shape((48, 64), 176, 240) == (48, 64)
    assert grid_shape((360, 480), 360, 480, max_points=1000) == (27, 36)
    rows, cols = grid_shape((1440, 1920), 360, 480, max_points=5000)
    assert rows * cols <= 5000 and rows * cols > 4800 and cols / rows == pytest.approx(4 / 3, rel=0.05)
    assert grid_shape((360, 480), 360, 480, max_points=1) == (1, 1)


@pytest.mark.slow  # trains two rounds
def test_round_job_trains_on_dense_labels_and_does_not_ask_their_images(tmp_path, pool):
    paths, labels = pool
    config = Config(encoder_weights="none", image_height=32, image_width=48, batch_size=4, epochs=1,
                    first_round_epochs=1, num_threads=1, device="cpu", init_pixels=5, pixels_per_round=6, rounds=2)
    truth = np.where(labels[1] == VOID, 255, labels[1]).astype(np.uint8)
    dense = {11: DenseLabels(truth.shape, grid_labels(truth, 32, 48)),
             12: DenseLabels((10, 10), np.zeros((5, 5), np.uint8))}  # drawn at another size: trains nothing
    none = [np.zeros((0, 3), np.int64) for _ in paths]
    result = run_round(RoundJob(config=config, classes=CLASSES, ended_round=0, keys=[10, 11, 12, 13],
                                image_paths=paths, points=none, checkpoint=str(tmp_path / "m.pt"), version=1,
                                generation=0, masks_dir=str(tmp_path / "masks"), dense=dense))
    training = result.training
    assert training["points"] == 0 and training["dense_images"] == 1 and training["images"] == 1
    assert training["dense_points"] == int((grid_labels(truth, 32, 48) < 3).sum())
    assert set(result.queries) == {10, 12, 13} and set(result.masks) == {10, 11, 12, 13}


# --- the simulator ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return make_dataset(root / "train", 6, seed=1), make_dataset(root / "val", 3, seed=2)


@pytest.mark.slow  # two whole simulations
def test_simulator_dense_images_train_from_round_1_and_are_not_asked_after_it(folders, tmp_path):
    train, val = folders
    runs = {}
    for n in (0, 2):
        out = tmp_path / f"dense{n}.json"
        assert main(["simulate", "--train", str(train), "--eval", str(val), "--out", str(out), "--method", "ovaal",
                     "--dense-images", str(n), *FAST]) == 0
        runs[n] = json.loads(out.read_text())
    plain, dense = runs[0]["rounds"], runs[2]["rounds"]
    assert [r["dense_images"] for r in plain] == [0, 0, 0, 0] and [r["dense_images"] for r in dense] == [0, 2, 2, 2]
    # rounds 0 and 1 ask every image (paired: same seed, same pixels); round 2 skips the 2 dense images
    assert [r["labelled_pixels"] for r in plain] == [36, 72, 108, 108]
    assert [r["labelled_pixels"] for r in dense] == [36, 72, 96, 96]
    assert plain[0]["miou"] == dense[0]["miou"]  # nothing differs before the masks arrive
    assert runs[2]["dense_images"] == 2 and len(runs[2]["dense_indices"]) == 2 and runs[2]["dense_from_round"] == 1
    assert main(["simulate", "--train", str(train), "--eval", str(val), "--out", str(tmp_path / "x.json"),
                 "--dense-images", "7", *FAST]) == 2
