"""Conversions between Label Studio JSON and pixels, checked with known answers and exact round-trips."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import numpy as np
import pytest
from label_studio_sdk.converter.brush import mask2rle
from label_studio_sdk.label_interface import LabelInterface as SdkInterface

from ovaal_backend import cli
from ovaal_backend.backend.convert import (
    LabelConfigError,
    ParsedLabelConfig,
    annotation_points,
    brush_results,
    brush_rle,
    decode_brush,
    keypoint_results,
    percent_to_pixel,
    pixel_to_percent,
)
from ovaal_backend.config import IGNORE_INDEX

CONFIG = """
<View>
  <Image name="img" value="$photo"/>
  <KeyPointLabels name="pts" toName="img">
    <Label value="road"/>
    <Label value="car"/>
    <Label value="Can't tell"/>
    <Label value="sky"/>
  </KeyPointLabels>
  <BrushLabels name="seg" toName="img">
    <Label value="road"/>
    <Label value="car"/>
    <Label value="sky"/>
  </BrushLabels>
</View>
"""


@pytest.fixture
def parsed_config() -> ParsedLabelConfig:
    return ParsedLabelConfig.parse(CONFIG)


def json_round_trip(value):
    """What Label Studio hands back after storing a value."""
    return json.loads(json.dumps(value))


# --- percent <-> pixel -----------------------------------------------------------------------------------------

def test_pixel_to_percent_is_the_pixel_centre():
    assert pixel_to_percent(0, 0, 4, 2) == (12.5, 25.0)
    assert pixel_to_percent(3, 1, 4, 2) == (87.5, 75.0)


@pytest.mark.parametrize("width,height", [(7, 5), (13, 11), (1, 1), (480, 3)])
def test_percent_pixel_round_trip_on_every_pixel(width, height):
    for y in range(height):
        for x in range(width):
            px, py = json_round_trip(pixel_to_percent(x, y, width, height))
            assert percent_to_pixel(px, py, width, height) == (x, y)


def test_percent_to_pixel_clips_edges_into_the_image():
    assert percent_to_pixel(100.0, 100.0, 7, 5) == (6, 4)
    assert percent_to_pixel(-0.01, 100.2, 7, 5) == (0, 4)
    assert percent_to_pixel(99.99, 0.0, 7, 5) == (6, 0)


# --- label config parsing --------------------------------------------------------------------------------------

def test_parse_reads_names_classes_and_ignore(parsed_config):
    assert parsed_config == ParsedLabelConfig(classes=("road", "car", "sky"), image_name="img", image_key="photo",
                                   query_from_name="pts", mask_from_name="seg", ignore_label="Can't tell")
    assert [parsed_config.class_index(c) for c in ("road", "car", "sky")] == [0, 1, 2]
    assert parsed_config.class_index("Can't tell") == IGNORE_INDEX
    assert parsed_config.class_index("bus") == IGNORE_INDEX


def test_parse_prefers_the_ignore_attribute_over_ignore_like_values():
    xml = """<View><Image name="i" value="$image"/>
      <KeyPointLabels name="q" toName="i"><Label value="none"/><Label value="dunno" ovaal="ignore"/></KeyPointLabels>
    </View>"""
    parsed = ParsedLabelConfig.parse(xml)
    assert parsed.ignore_label == "dunno"
    assert parsed.classes == ("none",)


@pytest.mark.parametrize("value", ["ignore", "VOID", "Unknown", "cant_tell", "None"])
def test_parse_recognises_ignore_values_case_insensitively(value):
    xml = f"""<View><Image name="i" value="$image"/>
      <KeyPointLabels name="q" toName="i"><Label value="a"/><Label value="{value}"/></KeyPointLabels></View>"""
    assert ParsedLabelConfig.parse(xml).ignore_label == value


def test_parse_without_ignore_label():
    xml = """<View><Image name="i" value="$image"/>
      <KeyPointLabels name="q" toName="i"><Label value="a"/><Label value="b"/></KeyPointLabels></View>"""
    parsed = ParsedLabelConfig.parse(xml)
    assert parsed.ignore_label is None
    assert parsed.mask_from_name is None
    assert parsed.classes == ("a", "b")


def test_parse_brush_only_config_takes_classes_from_brush():
    xml = """<View><Image name="i" value="$image"/>
      <BrushLabels name="m" toName="i"><Label value="a"/><Label value="b"/></BrushLabels></View>"""
    parsed = ParsedLabelConfig.parse(xml)
    assert parsed.classes == ("a", "b")
    assert (parsed.query_from_name, parsed.mask_from_name) == (None, "m")


def test_parse_matches_tags_and_attributes_case_insensitively():
    xml = """<View><image name="i" value="$image"/>
      <keypointlabels name="q" toname="i"><label value="a"/></keypointlabels></View>"""
    parsed = ParsedLabelConfig.parse(xml)
    assert (parsed.classes, parsed.image_name, parsed.query_from_name) == (("a",), "i", "q")


def test_parse_picks_named_controls_and_their_image():
    xml = """<View><Image name="left" value="$a"/><Image name="right" value="$b"/>
      <KeyPointLabels name="q1" toName="left"><Label value="x"/></KeyPointLabels>
      <KeyPointLabels name="q2" toName="right"><Label value="y"/><Label value="z"/></KeyPointLabels></View>"""
    parsed = ParsedLabelConfig.parse(xml, query_from_name="q2")
    assert (parsed.classes, parsed.image_name, parsed.image_key) == (("y", "z"), "right", "b")
    assert ParsedLabelConfig.parse(xml).query_from_name == "q1"


@pytest.mark.parametrize("xml,message", [
    ("<View><Image", "not valid XML"),
    ("""<View><KeyPointLabels name="q" toName="i"><Label value="a"/></KeyPointLabels></View>""", "no <Image>"),
    ("""<View><Image name="i" value="$image"/><Choices name="c" toName="i"/></View>""", "neither"),
    ("""<View><Image name="i" value="$image"/>
        <KeyPointLabels name="q" toName="i"><Label value="a"/><Label value="a"/></KeyPointLabels></View>""",
     "appears twice"),
    ("""<View><Image name="i" value="$image"/>
        <KeyPointLabels name="q" toName="i"><Label value="ignore"/></KeyPointLabels></View>""", "no class labels"),
    ("""<View><Image name="i" value="$image"/>
        <KeyPointLabels name="q" toName="other"><Label value="a"/></KeyPointLabels></View>""", "not an <Image>"),
    ("""<View><Image name="i" value="image.png"/>
        <KeyPointLabels name="q" toName="i"><Label value="a"/></KeyPointLabels></View>""", "needs value="),
    ("""<View><Image name="i" value="$image"/>
        <KeyPointLabels name="q" toName="i"><Label value="a"/><Label value="b"/></KeyPointLabels>
        <BrushLabels name="m" toName="i"><Label value="a"/></BrushLabels></View>""", "lacks the classes ['b']"),
])
def test_parse_errors_say_what_is_wrong(xml, message):
    with pytest.raises(LabelConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ParsedLabelConfig.parse(xml)


def test_parse_named_control_not_found():
    with pytest.raises(LabelConfigError, match="QUERY_FROM_NAME='nope'.*found: 'pts'"):
        ParsedLabelConfig.parse(CONFIG, query_from_name="nope")
    with pytest.raises(LabelConfigError, match="MASK_FROM_NAME='nope'"):
        ParsedLabelConfig.parse(CONFIG, mask_from_name="nope")


def test_label_config_error_reaches_the_cli_as_one_error_line(monkeypatch, capsys):
    # cli.main turns ValueErrors into "error: ..." and exit status 2; a bad label config must be one of them
    def resync_with_a_broken_config(args):
        ParsedLabelConfig.parse("<View><Image")

    monkeypatch.setattr(cli, "run_resync", resync_with_a_broken_config)
    assert cli.main(["resync", "--project", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not valid XML" in err and "Traceback" not in err


# --- keypoint results ------------------------------------------------------------------------------------------

def test_keypoint_result_fields(parsed_config):
    (result,) = keypoint_results([(2, 3, 1, 2, 0.25)], width=8, height=4, parsed_config=parsed_config, point_size=0.6)
    assert result == {
        "id": "q0r2c3",
        "from_name": "pts",
        "to_name": "img",
        "type": "keypointlabels",
        "original_width": 8,
        "original_height": 4,
        "image_rotation": 0,
        "value": {"x": 43.75, "y": 62.5, "width": 0.6, "keypointlabels": ["car"]},
        "score": 0.75,
        "meta": {"query_class": "sky"},
        "query_class": "sky",
    }


def test_keypoint_results_ids_unique_and_valid_for_label_studio(parsed_config):
    points = [(r, c, (r + c) % 3, r % 3, 0.1 * r) for r in range(4) for c in range(6)]
    results = keypoint_results(points, width=6, height=4, parsed_config=parsed_config, point_size=1.0)
    assert len({r["id"] for r in results}) == len(points)
    assert SdkInterface(CONFIG).validate_prediction({"result": results, "score": 0.5}, return_errors=True) == []


def test_keypoint_ignore_label_and_missing_query_class(parsed_config):
    (result,) = keypoint_results([(0, 0, IGNORE_INDEX, None, 1.0)], 5, 5, parsed_config, 0.6)
    assert result["value"]["keypointlabels"] == ["Can't tell"]
    assert result["meta"] == {"query_class": None}
    assert result["score"] == 0.0


def test_keypoint_without_ignore_label_falls_back_to_query_class():
    xml = """<View><Image name="i" value="$image"/>
      <KeyPointLabels name="q" toName="i"><Label value="a"/><Label value="b"/></KeyPointLabels></View>"""
    parsed = ParsedLabelConfig.parse(xml)
    (result,) = keypoint_results([(0, 0, IGNORE_INDEX, 1, 0.5)], 5, 5, parsed, 0.6)
    assert result["value"]["keypointlabels"] == ["b"]
    with pytest.raises(ValueError, match="no querying class"):
        keypoint_results([(0, 0, IGNORE_INDEX, IGNORE_INDEX, 0.5)], 5, 5, parsed, 0.6)


def test_keypoint_results_accept_dataclass_points(parsed_config):
    @dataclass
    class Query:
        row: int
        col: int
        label: int
        query_class: int
        uncertainty: float

    (result,) = keypoint_results([Query(1, 1, 2, 0, 0.5)], 3, 3, parsed_config, 0.6)
    assert result["value"]["keypointlabels"] == ["sky"]
    assert result["query_class"] == "road"


def test_keypoint_results_reject_bad_points(parsed_config):
    with pytest.raises(ValueError, match="outside"):
        keypoint_results([(4, 0, 0, 0, 0.5)], 5, 4, parsed_config, 0.6)
    with pytest.raises(ValueError, match="only 3 classes"):
        keypoint_results([(0, 0, 3, 0, 0.5)], 5, 4, parsed_config, 0.6)
    brush_only = ParsedLabelConfig.parse("""<View><Image name="i" value="$image"/>
        <BrushLabels name="m" toName="i"><Label value="a"/></BrushLabels></View>""")
    with pytest.raises(LabelConfigError, match="KeyPointLabels"):
        keypoint_results([(0, 0, 0, 0, 0.5)], 5, 4, brush_only, 0.6)


# --- brush results ---------------------------------------------------------------------------------------------

def test_brush_rle_round_trip_is_exact(parsed_config):
    rng = np.random.default_rng(0)
    class_map = rng.integers(IGNORE_INDEX, 3, size=(37, 53))
    class_map[:10, :20] = 1
    results = json_round_trip(brush_results(class_map, parsed_config))
    assert [r["value"]["brushlabels"] for r in results] == [["road"], ["car"], ["sky"]]
    for index, result in enumerate(results):
        assert (result["original_width"], result["original_height"]) == (53, 37)
        assert (result["from_name"], result["to_name"], result["type"]) == ("seg", "img", "brushlabels")
        np.testing.assert_array_equal(decode_brush(result), class_map == index)
    assert SdkInterface(CONFIG).validate_prediction({"result": results}, return_errors=True) == []


def test_brush_one_region_per_present_class_and_long_runs(parsed_config):
    class_map = np.full((300, 400), 2)
    class_map[150:, :] = IGNORE_INDEX
    (result,) = brush_results(class_map, parsed_config)
    assert result["value"]["brushlabels"] == ["sky"]
    np.testing.assert_array_equal(decode_brush(result), class_map == 2)
    assert "score" not in result


def test_brush_scores_per_class_or_per_pixel(parsed_config):
    class_map = np.array([[0, 0, 1], [1, 1, 1]])
    per_class = brush_results(class_map, parsed_config, scores=np.array([0.9, 0.4, 0.1]))
    assert [r["score"] for r in per_class] == [0.9, 0.4]
    confidence = np.array([[0.2, 0.4, 1.0], [0.5, 0.5, 0.0]])
    per_pixel = brush_results(class_map, parsed_config, scores=confidence)
    assert [r["score"] for r in per_pixel] == pytest.approx([0.3, 0.5])


def test_brush_rejects_bad_input(parsed_config):
    with pytest.raises(ValueError, match="index 3"):
        brush_results(np.array([[0, 3]]), parsed_config)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        brush_results(np.zeros((2, 2, 2), dtype=int), parsed_config)
    with pytest.raises(ValueError, match="scores must have shape"):
        brush_results(np.zeros((2, 2), dtype=int), parsed_config, scores=np.zeros(5))


# --- annotations back to pixels --------------------------------------------------------------------------------

def test_annotation_points_round_trip_keypoint_results(parsed_config):
    points = [(r, c, (r * 7 + c) % 3, 0, 0.5) for r in range(5) for c in range(9)]
    results = json_round_trip(keypoint_results(points, width=9, height=5, parsed_config=parsed_config, point_size=0.6))
    assert sorted(annotation_points(results, parsed_config)) == sorted((r, c, lab) for r, c, lab, _, _ in points)


def keypoint(x: float, y: float, labels: list[str], width: int = 10, height: int = 10, from_name: str = "pts"):
    return {"id": f"k{x}-{y}", "from_name": from_name, "to_name": "img", "type": "keypointlabels",
            "original_width": width, "original_height": height, "value": {"x": x, "y": y, "keypointlabels": labels}}


def test_annotation_points_ignore_and_unknown_labels(parsed_config, caplog):
    results = [keypoint(5, 5, ["Can't tell"]), keypoint(15, 5, ["bus"]), keypoint(25, 5, ["sky"]),
               keypoint(35, 5, [])]
    with caplog.at_level(logging.WARNING, logger="ovaal_backend.backend.convert"):
        points = annotation_points(results, parsed_config)
    assert points == [(0, 0, IGNORE_INDEX), (0, 1, IGNORE_INDEX), (0, 2, 2), (0, 3, IGNORE_INDEX)]
    assert "'bus'" in caplog.text
    assert "Can't tell" not in caplog.text


def test_annotation_points_skip_other_controls_and_use_each_result_size(parsed_config):
    brush = brush_results(np.zeros((10, 10), dtype=int), parsed_config)[0]
    results = [keypoint(50, 50, ["car"], from_name="other"), brush, {"type": "textarea"},
               keypoint(50, 50, ["car"], width=480, height=360), keypoint(99.9, 0.1, ["road"], width=3, height=2)]
    assert annotation_points(results, parsed_config) == [(180, 240, 1), (0, 2, 0)]


def test_annotation_points_same_pixel_keeps_last(parsed_config):
    results = [keypoint(51, 51, ["road"]), keypoint(59, 59, ["sky"])]
    assert annotation_points(results, parsed_config) == [(5, 5, 2)]


def test_annotation_points_without_query_control_is_empty():
    brush_only = ParsedLabelConfig.parse("""<View><Image name="i" value="$image"/>
        <BrushLabels name="m" toName="i"><Label value="a"/></BrushLabels></View>""")
    assert annotation_points([keypoint(5, 5, ["a"])], brush_only) == []


@pytest.mark.parametrize("run", [1, 2, 3, 4, 5, 63, 64, 65, 16383, 16384, 16385, 32769, 40000])
def test_brush_rle_is_byte_for_byte_the_sdks(run):
    """Runs at each length-width boundary (4 bytes per pixel: <= 8, 16, 256 bytes, 65536-byte pieces)."""
    mask = np.zeros((1, run + 9), dtype=bool)
    mask[0, 4:4 + run] = True
    assert brush_rle(mask) == mask2rle(mask.astype(np.uint8) * np.uint8(255))


def test_brush_rle_of_noisy_and_full_masks_is_the_sdks():
    rng = np.random.default_rng(0)
    for mask in (rng.random((60, 70)) < 0.5, rng.random((200, 333)) < 0.01, np.ones((300, 300), dtype=bool)):
        assert brush_rle(mask) == mask2rle(mask.astype(np.uint8) * np.uint8(255))


def test_brush_results_take_a_uint8_map_with_class_scores(parsed_config):
    class_map = np.zeros((40, 50), dtype=np.uint8)
    class_map[10:, 20:] = 2
    results = brush_results(class_map, parsed_config, scores=np.array([0.9, 0.0, 0.6]))
    assert [(r["value"]["brushlabels"], r["score"]) for r in results] == [(["road"], 0.9), (["sky"], 0.6)]
    for result, index in zip(results, (0, 2)):
        np.testing.assert_array_equal(decode_brush(result), class_map == index)
