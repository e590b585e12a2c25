"""Export: one label map (class index, 255 = none) and one colour preview per source image."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from ovaal_backend.backend.export import NO_CLASS, class_colours, export_project
from tests.helpers.fake_label_studio import (
    XML,
    P,
    add_scenes,
    answer_round,
    drain,
    started,
    tiny_config,
)


def test_export_before_and_after_training(tmp_path, fake):
    truth = add_scenes(fake, 3)
    driver = started(tmp_path, fake)
    out = tmp_path / "before"
    written = export_project(tiny_config(tmp_path), P, out, fake)
    assert len(written) == 3
    clicks = driver.store.clicks.labelled_points()
    assert clicks == {}
    for path in written:
        assert (np.asarray(Image.open(path)) == NO_CLASS).all()  # no model, no clicks

    answer_round(fake, driver, truth, 0)
    drain(driver)
    out = tmp_path / "after"
    written = export_project(tiny_config(tmp_path), P, out, fake)
    meta = json.loads((out / "classes.json").read_text())
    assert meta["classes"] == ["background", "square", "disc"] and meta["ignore_index"] == NO_CLASS
    assert meta["model_version"] == "ovaal-1" and meta["colors"][1] == [0xDC, 0x1E, 0x1E]
    clicks = driver.store.clicks.labelled_points()
    for path in written:
        task_id = meta["files"][path.name]
        label_map = np.asarray(Image.open(path))
        assert label_map.shape == truth[task_id].shape and label_map.max() < 3
        preview = np.asarray(Image.open(path.with_name(path.stem + "_color.png")))
        assert preview.shape == truth[task_id].shape + (3,)
        table = clicks[task_id]
        labelled = table[table[:, 2] >= 0]
        assert (label_map[labelled[:, 0], labelled[:, 1]] == labelled[:, 2]).all()  # clicks win


def test_export_of_an_unknown_project_says_what_is_wrong(tmp_path, fake):
    with pytest.raises(FileNotFoundError, match="holds no project"):
        export_project(tiny_config(tmp_path), 99, tmp_path / "out", fake)


def test_class_colours_from_the_label_config():
    assert class_colours(XML, ["square", "nope"])[0] == (0xDC, 0x1E, 0x1E)
    assert len(class_colours(XML, ["square", "nope"])[1]) == 3
