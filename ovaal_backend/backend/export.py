"""Export a project's segmentation: one PNG label map and one colour preview per source image.

``python -m ovaal_backend export --project ID --out DIR`` writes, for every source task of the project:
``task<id>_<image stem>.png`` (class index per pixel, 255 = none) and ``task<id>_<image stem>_color.png``, plus
``classes.json`` (class names, colours, the model version, and which file is which task). Pixels come from the
current model's Winner-Takes-All prediction at the image's original size; pixels an annotator clicked carry the
annotator's class (their "can't tell" answers keep the model's). Without a trained model every pixel is 255 except
the clicks. It reads MODEL_DIR (the checkpoint, the label store, ``sources.json``, cached images); Label Studio is
needed only for images not cached or on a shared disk.
"""

from __future__ import annotations

import json
import logging
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..config import IGNORE_INDEX, Config
from .project.driver import ProjectDriver, project_dir, remap_points

log = logging.getLogger(__name__)

NO_CLASS = 255
"""Label map value of a pixel without a class."""


def export_project(config: Config, project_id: int, out_dir: str | Path, client: Any) -> list[Path]:
    """Write label maps and previews of every source image; returns the label map paths.

    Raises:
        FileNotFoundError: MODEL_DIR has no state for this project, or it never listed its source tasks.
    """
    driver = ProjectDriver(config, project_id, client)
    if not driver.is_set_up:
        raise FileNotFoundError(f"{project_dir(config, project_id)} holds no project: is MODEL_DIR right, and was "
                                "the model connected to this project?")
    sources_file = driver.root / "sources.json"
    if not sources_file.is_file():
        raise FileNotFoundError(f"{sources_file} is missing: the backend has not seen this project's images yet")
    sources = {int(k): v for k, v in json.loads(sources_file.read_text()).items()}
    state = driver.state()
    classes = list(state["classes"])
    if len(classes) >= NO_CLASS:
        raise ValueError(f"{len(classes)} classes do not fit an 8-bit label map with {NO_CLASS} as 'none'")
    colours = class_colours(state["label_config"], classes)
    palette = np.array(colours + [(0, 0, 0)] * (256 - len(colours)), dtype=np.uint8)
    clicks = remap_points(driver.store.labelled_points(driver.key), state["label_names"], classes)
    learner = driver.serving_learner()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids = sorted(sources)
    predicted: dict[int, np.ndarray] = {}
    if learner is not None:
        predicted = {tid: class_map for tid, class_map, _ in
                     driver.predict_class_maps(learner, ids, [sources[tid] for tid in ids])}
    written, files = [], {}
    for tid in ids:
        label_map = predicted.get(tid)
        if label_map is None:
            try:
                height, width = driver.pool_image(tid, sources[tid]).size
            except Exception as err:
                log.error("task %d: cannot read its image, skipped: %s", tid, err)
                continue
            label_map = np.full((height, width), NO_CLASS, dtype=np.int64)
        label_map = label_map.astype(np.uint8)
        table = clicks.get(tid)
        if table is not None:
            keep = table[:, 2] != IGNORE_INDEX
            label_map[table[keep, 0], table[keep, 1]] = table[keep, 2]
        stem = f"task{tid}_{_image_stem(sources[tid].get(driver.iface.image_key, ''))}"
        path = out / f"{stem}.png"
        Image.fromarray(label_map).save(path)
        Image.fromarray(palette[label_map]).save(out / f"{stem}_color.png")
        written.append(path)
        files[path.name] = tid
    (out / "classes.json").write_text(json.dumps({
        "classes": classes, "ignore_index": NO_CLASS, "colors": [list(c) for c in colours],
        "model_version": driver.model_version if learner is not None else None, "phase": state["phase"],
        "files": files}, indent=2))
    log.info("exported %d label maps of project %d (%s) to %s", len(written), project_id,
             driver.model_version if learner is not None else "no model", out)
    return written


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


def _image_stem(url: str) -> str:
    """A file-name-safe stem of an image URL (``/data/local-files/?d=a/b/img_01.png`` -> ``img_01``)."""
    name = url.rsplit("=", 1)[-1].rsplit("/", 1)[-1].split("?", 1)[0]
    stem = Path(name).stem or "image"
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in stem)[:80]
