"""Export formats beside the PNG label maps (issue 18 item 5): COCO JSON read back with pycocotools, and Label Studio
JSON imported into a real Label Studio project; both hold the label maps' pixels exactly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO

from ovaal_backend.backend.convert import LabelConfigError, decode_brush
from ovaal_backend.backend.export import NO_CLASS, export_project
from ovaal_backend.backend.export_formats import parse_formats
from tests.helpers.fake_label_studio import (
    CLASSES,
    XML,
    P,
    add_scenes,
    answer_round,
    drain,
    make_fake_project,
    started,
    tiny_config,
)
from tests.helpers.ls_server import loopback_session

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny project after round 0's answers and one training, exported in every format: (out folder, label maps
    by task id, model dir, the fake)."""
    tmp = tmp_path_factory.mktemp("export-formats")
    fake = make_fake_project()[0]
    truth = add_scenes(fake, 3)
    driver = started(tmp, fake)
    answer_round(fake, driver, truth, 0)
    drain(driver)
    out = tmp / "out"
    written = export_project(tiny_config(tmp), P, out, fake, ("png", "coco", "ls-json"))
    meta = json.loads((out / "classes.json").read_text())
    maps = {meta["files"][path.name]: np.asarray(Image.open(path)) for path in written}
    assert len(maps) == 3 and meta["formats"] == {"png": sorted(meta["files"]), "coco": "coco.json",
                                                  "ls-json": "label_studio.json"}
    return out, maps, tmp, fake


def test_coco_reads_back_with_pycocotools_pixel_for_pixel(trained):
    out, maps, _, _ = trained
    coco = COCO(str(out / "coco.json"))
    categories = coco.loadCats(coco.getCatIds())
    assert [(c["id"], c["name"]) for c in categories] == [(i + 1, name) for i, name in enumerate(CLASSES)]
    assert "ignore" not in {c["name"] for c in categories}  # the ignore label is no category
    assert sorted(coco.getImgIds()) == sorted(maps)  # image id = Label Studio task id
    for task_id, label_map in maps.items():
        image = coco.loadImgs(task_id)[0]
        assert (image["height"], image["width"]) == label_map.shape and image["file_name"].endswith(".png")
        assert (out / image["label_map"]).is_file()
        rebuilt = np.full(label_map.shape, NO_CLASS, dtype=np.uint8)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[task_id]))
        assert len({a["category_id"] for a in anns}) == len(anns)  # one RLE per class per image
        for ann in anns:
            mask = coco_mask.decode(ann["segmentation"]).astype(bool)
            assert (mask == coco.annToMask(ann).astype(bool)).all() and ann["iscrowd"] == 0
            assert ann["area"] == mask.sum() > 0
            x, y, w, h = ann["bbox"]
            rows, cols = np.nonzero(mask)
            assert (x, y, w, h) == (cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1)
            assert (rebuilt[mask] == NO_CLASS).all()  # classes do not overlap
            rebuilt[mask] = ann["category_id"] - 1
        assert (rebuilt == label_map).all()
        assert {a["category_id"] - 1 for a in anns} == set(np.unique(label_map).tolist()) - {NO_CLASS}


def test_coco_ids_are_stable_and_pixels_without_a_class_have_no_annotation(tmp_path, fake):
    """Before any training only clicks would have a class (there are none yet): images, no annotations; the same
    image and category ids as any later export."""
    sources = add_scenes(fake, 2)
    started(tmp_path, fake)
    written = export_project(tiny_config(tmp_path), P, tmp_path / "out", fake, ("coco",))
    assert written == [] and not list((tmp_path / "out").glob("*.png"))  # png not asked for
    body = json.loads((tmp_path / "out" / "coco.json").read_text())
    assert body["annotations"] == [] and [i["id"] for i in body["images"]] == sorted(sources)
    assert [c["id"] for c in body["categories"]] == [1, 2, 3] and "label_map" not in body["images"][0]


def test_label_studio_json_lists_each_task_with_its_mask_as_a_brush_prediction(trained):
    out, maps, _, fake = trained
    tasks = json.loads((out / "label_studio.json").read_text())
    assert sorted(t["meta"]["ovaal_export"]["task"] for t in tasks) == sorted(maps)
    for task in tasks:
        task_id = task["meta"]["ovaal_export"]["task"]
        assert task["data"] == fake.tasks[task_id]["data"]
        (prediction,) = task["predictions"]
        assert prediction["model_version"] == "ovaal-1"
        assert (class_map(prediction["result"], maps[task_id].shape) == maps[task_id]).all()


def test_label_studio_json_needs_a_brush_control(tmp_path, fake):
    """Refused before anything is written, with the fix in the message."""
    keypoints_only = XML[:XML.index("  <BrushLabels")] + "</View>"
    fake.projects[P]["label_config"] = keypoints_only
    add_scenes(fake, 1)
    from ovaal_backend.backend.project.driver import ProjectDriver

    driver = ProjectDriver(tiny_config(tmp_path), P, fake)
    driver.setup("1.1700000000", keypoints_only)
    drain(driver)
    with pytest.raises(LabelConfigError, match="needs a <BrushLabels> control"):
        export_project(tiny_config(tmp_path), P, tmp_path / "out", fake, ("png", "ls-json"))
    assert not (tmp_path / "out").exists()


def test_format_names():
    assert parse_formats("ls-json, PNG,png") == ("png", "ls-json")
    for bad in ("", "png,tiff"):
        with pytest.raises(ValueError, match="choose from png, coco, ls-json"):
            parse_formats(bad)
    done = subprocess.run([sys.executable, "-m", "ovaal_backend", "export", "--project", "1", "--out", "x",
                           "--format", "png,tiff"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown export format tiff" in done.stderr


def class_map(results: list[dict], shape: tuple[int, int]) -> np.ndarray:
    """A label map (255 = none) from BrushLabels results, each decoded from Label Studio's RLE."""
    out = np.full(shape, NO_CLASS, dtype=np.uint8)
    for result in results:
        mask = decode_brush(result)
        assert (out[mask] == NO_CLASS).all()
        out[mask] = CLASSES.index(result["value"]["brushlabels"][0])
    return out


@pytest.mark.e2e
def test_label_studio_json_imports_into_a_real_project(trained, label_studio):
    """The file as a user uploads it (Data Manager > Import) into a new project with the same label config: every
    task arrives with one prediction that decodes to its label map."""
    out, maps, _, _ = trained
    session = loopback_session()
    session.headers.update(label_studio.headers())
    project = session.post(f"{label_studio.url}/api/projects/", json={"title": "export import", "label_config": XML},
                           timeout=30)
    assert project.status_code == 201, project.text
    pid = project.json()["id"]
    with open(out / "label_studio.json", "rb") as upload:
        imported = session.post(f"{label_studio.url}/api/projects/{pid}/import", timeout=120,
                                files={"file": ("label_studio.json", upload, "application/json")})
    assert imported.status_code == 201, imported.text
    assert imported.json()["task_count"] == len(maps) and imported.json()["prediction_count"] == len(maps)
    listed = session.get(f"{label_studio.url}/api/tasks", params={"project": pid, "fields": "all", "page_size": 100},
                         timeout=60)
    assert listed.status_code == 200, listed.text
    tasks = listed.json()["tasks"]
    assert len(tasks) == len(maps)
    for task in tasks:
        source = task["meta"]["ovaal_export"]["task"]
        predictions = session.get(f"{label_studio.url}/api/predictions", params={"task": task["id"]}, timeout=30).json()
        assert [p["model_version"] for p in predictions] == ["ovaal-1"]
        assert (class_map(predictions[0]["result"], maps[source].shape) == maps[source]).all()
