"""The shipped label configs parse, match the datasets' classes, and are configs Label Studio's SDK accepts."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from label_studio_sdk.label_interface import LabelInterface as SdkInterface

from ovaal_backend.backend.convert import ParsedLabelConfig, brush_results, keypoint_results

CONFIG_DIR = Path(__file__).resolve().parent.parent / "label_config"
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
"""The shared folder beside the repository (datasets), present on the project's machines only."""
CAMVID_CLASSES = SHARED / "data" / "camvid" / "classes.json"

CAMVID = ("sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car", "pedestrian",
          "bicyclist")
CITYSCAPES = {
    "road": "#804080", "sidewalk": "#F423E8", "building": "#464646", "wall": "#66669C", "fence": "#BE9999",
    "pole": "#999999", "traffic light": "#FAAA1E", "traffic sign": "#DCDC00", "vegetation": "#6B8E23",
    "terrain": "#98FB98", "sky": "#4682B4", "person": "#DC143C", "rider": "#FF0000", "car": "#00008E",
    "truck": "#000046", "bus": "#003C64", "train": "#005064", "motorcycle": "#0000E6", "bicycle": "#770B20",
}
EDITOR_KEYS = set("behkopruvwz[]")
"""Single keys Label Studio's image editor binds to its own tools and actions."""

CONFIGS = {"camvid": CAMVID, "cityscapes": tuple(CITYSCAPES)}


def read(name: str) -> str:
    return (CONFIG_DIR / f"{name}.xml").read_text()


def labels_of(xml: str, control: str) -> list[ET.Element]:
    return list(ET.fromstring(xml).find(f"./{control}"))


@pytest.mark.parametrize("name", CONFIGS)
def test_config_parses_with_classes_and_ignore(name):
    parsed_config = ParsedLabelConfig.parse(read(name))
    assert parsed_config.classes == CONFIGS[name]
    assert len(parsed_config.classes) == {"camvid": 11, "cityscapes": 19}[name]
    assert parsed_config.ignore_label == "ignore"
    assert (parsed_config.image_name, parsed_config.image_key, parsed_config.query_from_name,
            parsed_config.mask_from_name) == ("image", "image", "query", "mask")


@pytest.mark.parametrize("name", CONFIGS)
def test_config_is_valid_for_label_studio_sdk(name):
    SdkInterface(read(name)).validate()


@pytest.mark.parametrize("name", CONFIGS)
def test_results_built_for_config_validate(name):
    xml = read(name)
    parsed_config = ParsedLabelConfig.parse(xml)
    n = len(parsed_config.classes)
    points = [(i, i, i % n, (i + 1) % n, 0.5) for i in range(n)] + [(n, 0, -1, 0, 0.9)]
    class_map = np.arange(n * 4).reshape(4, n) % n
    result = keypoint_results(points, width=n + 1, height=n + 1, parsed_config=parsed_config, point_size=0.6)
    result += brush_results(class_map, parsed_config)
    assert SdkInterface(xml).validate_prediction({"result": result, "score": 0.3}, return_errors=True) == []


@pytest.mark.parametrize("name", CONFIGS)
def test_hotkeys_unique_and_free(name):
    xml = read(name)
    keys = [label.get("hotkey") for label in labels_of(xml, "KeyPointLabels")]
    assert None not in keys
    assert len(set(keys)) == len(keys)
    assert keys[:10] == list("1234567890")
    assert not set(keys) & EDITOR_KEYS
    assert all(label.get("hotkey") is None for label in labels_of(xml, "BrushLabels"))


POINT_COLOURS = {"camvid": {"sky": "#FFFF00"}}
"""Point colours that differ from the mask colour on purpose: CamVid's sky grey was hard to see on 21 % of points
(docs/benchmarks.md, POINT-CONTRAST); yellow on 0 %."""


@pytest.mark.parametrize("name", CONFIGS)
def test_brush_labels_match_query_classes_and_colours(name):
    xml = read(name)
    query = {label.get("value"): label.get("background") for label in labels_of(xml, "KeyPointLabels")}
    brush = {label.get("value"): label.get("background") for label in labels_of(xml, "BrushLabels")}
    assert list(brush) == list(CONFIGS[name])
    assert {**brush, **POINT_COLOURS.get(name, {})} == {k: v for k, v in query.items() if k != "ignore"}
    ignore = [label for label in labels_of(xml, "KeyPointLabels") if label.get("value") == "ignore"]
    assert [label.get("ovaal") for label in ignore] == ["ignore"]


def test_cityscapes_official_colours():
    brush = {label.get("value"): label.get("background") for label in labels_of(read("cityscapes"), "BrushLabels")}
    assert brush == CITYSCAPES


@pytest.mark.skipif(not CAMVID_CLASSES.is_file(), reason=f"no CamVid class table at {CAMVID_CLASSES}")
def test_camvid_colours_match_dataset_table():
    table = json.loads(CAMVID_CLASSES.read_text())
    pairs = zip(table["classes"], table["colors"], strict=True)
    expected = {name: "#{:02X}{:02X}{:02X}".format(*rgb) for name, rgb in pairs}
    brush = {label.get("value"): label.get("background") for label in labels_of(read("camvid"), "BrushLabels")}
    assert brush == expected


@pytest.mark.parametrize("name", CONFIGS)
def test_ignore_point_colour_stands_out(name):
    # Round-0 points are pre-labelled "ignore": their colour must differ clearly from every class and from dark scenes
    def rgb(hex_colour: str) -> np.ndarray:
        return np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])

    queries = labels_of(read(name), "KeyPointLabels")
    ignore = next(rgb(label.get("background")) for label in queries if label.get("value") == "ignore")
    classes = [rgb(label.get("background")) for label in queries if label.get("value") != "ignore"]
    assert ignore.max() == 255 and ignore.sum() >= 2 * 255, "bright, so a point shows on a dark image"
    assert min(np.abs(ignore - c).sum() for c in classes) >= 150, "not mistaken for a class colour"
