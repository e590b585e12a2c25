"""Export a project's segmentation: PNG label maps, COCO JSON and Label Studio JSON of every source image.

``python -m ovaal_backend export --project ID --out DIR [--format png,coco,ls-json]`` writes, for every source task
of the project, with ``png``: ``task<id>_<image stem>.png`` (class index per pixel, 255 = none) and
``task<id>_<image stem>_color.png``; with ``coco``: ``coco.json`` (one RLE annotation per class per image,
``coco.py``); with ``ls-json``: ``label_studio.json`` (the tasks with their masks as predictions, to import into
another project, ``ls_export.py``); always ``classes.json`` (class names, colours, the model version, and which file
is which task). Every format holds the same pixels: the current model's Winner-Takes-All prediction at the image's
original size, and pixels an annotator clicked carry the annotator's class (their "can't tell" answers keep the
model's). Without a trained model every pixel is 255 except the clicks. It reads MODEL_DIR (the checkpoint, the
label store, ``sources.json``, cached images); Label Studio is needed only for images not cached or on a shared disk.
"""

from __future__ import annotations

import json
import logging
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..config import IGNORE_INDEX, Config
from .coco import CocoWriter
from .export_formats import COCO_FILE, DEFAULT_FORMATS, LS_FILE, parse_formats
from .ls_export import TasksWriter, check_brush_control
from .project.context import ProjectContext, known_projects, project_dir
from .project.corrected import CorrectedMasks

log = logging.getLogger(__name__)

NO_CLASS = 255
"""Label map value of a pixel without a class."""


def export_project(config: Config, project_id: int, out_dir: str | Path, client: Any,
                   formats: Sequence[str] = DEFAULT_FORMATS) -> list[Path]:
    """Write the project's masks in ``formats``; returns the PNG label map paths (none without ``png``).

    Reads the project's state, clicks and source list from MODEL_DIR; Label Studio is asked only for images not
    cached there. Every format is checked before anything is written.

    Raises:
        FileNotFoundError: MODEL_DIR has no state for this project, or it never listed its source tasks.
        ValueError: An unknown format; ``LabelConfigError`` (a ValueError) for ``ls-json`` without BrushLabels.
    """
    formats = parse_formats(",".join(formats))
    if project_id not in known_projects(config):
        raise FileNotFoundError(f"{project_dir(config, project_id)} holds no project: is MODEL_DIR right, and was "
                                "the model connected to this project?")
    ctx = ProjectContext(config, project_id, client)
    state = ctx.state
    sources = ctx.store.sources.all()
    if not state.is_set_up or not sources:
        raise FileNotFoundError(f"{ctx.root}: the backend has not seen this project's images yet")
    if len(state.classes) >= NO_CLASS:
        raise ValueError(f"{len(state.classes)} classes do not fit an 8-bit label map with {NO_CLASS} as 'none'")
    if "ls-json" in formats:
        check_brush_control(ctx.parsed_config)
    colours = class_colours(state.label_config, state.classes)
    learner = ctx.model.learner(state.version, state.generation, len(state.classes))
    ids = sorted(sources)
    predicted: dict[int, np.ndarray] = {}
    if learner is not None:
        urls = [ctx.image_url(sources[tid]) for tid in ids]
        predicted = {tid: class_map for tid, class_map, _ in ctx.model.class_maps(learner, ids, urls)}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clicks = ctx.points_by_source()
    CorrectedMasks(ctx).overlay(ids, predicted, clicks)  # an annotator's corrected mask wins over the model
    version = ctx.model_version if learner is not None else None
    coco = None
    if "coco" in formats:
        coco = CocoWriter(state.classes, f"Label Studio project {project_id}, model {version or 'none'} "
                                         "(ovaal-backend)")
    files = {}
    with ExitStack() as stack:
        tasks = None
        if "ls-json" in formats:
            tasks = stack.enter_context(TasksWriter(out / LS_FILE, ctx.parsed_config, ctx.model_version, project_id))
        for tid in ids:
            label_map = predicted.get(tid)
            if label_map is None:
                label_map = _empty_map(ctx, tid, sources[tid])
                if label_map is None:
                    continue
            label_map = _with_clicks(label_map, clicks.get(tid))
            url = sources[tid].get(ctx.parsed_config.image_key, "")
            stem = f"task{tid}_{_image_stem(url)}"
            if "png" in formats:
                files[_write_maps(out, stem, label_map, colours)] = tid
            if coco is not None:
                coco.add(tid, _image_name(url), label_map, {"label_map": f"{stem}.png"} if "png" in formats else None)
            if tasks is not None:
                tasks.add(tid, sources[tid], label_map)
    if coco is not None:
        coco.write(out / COCO_FILE)
    written = {"png": sorted(files), "coco": COCO_FILE if coco is not None else None,
               "ls-json": LS_FILE if tasks is not None else None}
    (out / "classes.json").write_text(json.dumps({
        "classes": state.classes, "ignore_index": NO_CLASS, "colors": [list(c) for c in colours],
        "model_version": version, "phase": state.phase, "files": files, "formats": written}, indent=2))
    log.info("exported project %d (%s) as %s to %s", project_id, version or "no model", ", ".join(formats), out)
    return [out / name for name in files]


def _empty_map(ctx: ProjectContext, task_id: int, data: dict[str, Any]) -> np.ndarray | None:
    """A map with no class at the image's size (no model yet), or None when the image cannot be read."""
    try:
        height, width = ctx.images.image(task_id, ctx.image_url(data)).size
    except Exception as err:
        log.error("task %d: cannot read its image, skipped: %s", task_id, err)
        return None
    return np.full((height, width), NO_CLASS, dtype=np.int64)


def _with_clicks(label_map: np.ndarray, clicks: np.ndarray | None) -> np.ndarray:
    """The uint8 label map with the annotators' clicks on top of the model's prediction (every format's pixels)."""
    label_map = label_map.astype(np.uint8)
    if clicks is not None:
        height, width = label_map.shape
        keep = (clicks[:, 2] != IGNORE_INDEX) & (clicks[:, 0] < height) & (clicks[:, 1] < width)
        label_map[clicks[keep, 0], clicks[keep, 1]] = clicks[keep, 2]
    return label_map


def _write_maps(out: Path, stem: str, label_map: np.ndarray, colours: list[tuple[int, int, int]]) -> str:
    """The label map and its colour preview; returns the map's name."""
    palette = np.array(colours + [(0, 0, 0)] * (256 - len(colours)), dtype=np.uint8)
    Image.fromarray(label_map).save(out / f"{stem}.png")
    Image.fromarray(palette[label_map]).save(out / f"{stem}_color.png")
    return f"{stem}.png"


def class_colours(label_config: str, classes: list[str]) -> list[tuple[int, int, int]]:
    """Each class's ``background`` colour from the label config (``#rrggbb``), else a fixed palette colour."""
    found: dict[str, tuple[int, int, int]] = {}
    for el in ET.fromstring(label_config).iter():
        if not isinstance(el.tag, str) or el.tag.lower() != "label":
            continue
        attrs = {k.lower(): v for k, v in el.attrib.items()}
        colour = attrs.get("background", "")
        if attrs.get("value") in classes and attrs["value"] not in found and len(colour) == 7 and colour[0] == "#":
            try:
                found[attrs["value"]] = tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[misc]
            except ValueError:
                pass
    rng = np.random.default_rng(0)
    fallback = [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in classes]
    return [found.get(name, fallback[i]) for i, name in enumerate(classes)]  # type: ignore[misc]


def _image_name(url: str) -> str:
    """The file name of an image URL (``/data/local-files/?d=a/b/img_01.png`` -> ``img_01.png``)."""
    return url.rsplit("=", 1)[-1].rsplit("/", 1)[-1].split("?", 1)[0] or "image"


def _image_stem(url: str) -> str:
    """A file-name-safe stem of an image URL (``/data/local-files/?d=a/b/img_01.png`` -> ``img_01``)."""
    stem = Path(_image_name(url)).stem or "image"
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in stem)[:80]
