"""/predict of a source task: the stored mask of the current version against a mask computed with the model.

A round job writes every source image's dense mask for the version it trains (``masks/ovaal-N/<task>.npz``); the
backend pushes them to Label Studio and keeps the current version's files, so ``/predict`` of a source task reads
and encodes that file instead of running the network and upsampling its output to the photo's size. This script
measures both paths in one run, on the same tasks, images and model:

1. Set-up: ``--images`` CamVid training images upscaled 4 times (1920x1440; synthetic scenes of that size without
   ../shared/data/camvid) as source tasks of an in-memory Label Studio (``tests/helpers/fake_label_studio.py``); the
   backend's Flask app with that client (no gunicorn, no sockets: the figures are the app's own time); round 0
   answered from the ground truth, so ``ovaal-1`` (the CPU profile's 176x240 model, one epoch) is trained and its masks
   written.
2. Stored: ``--repeats`` rounds of one ``/predict`` call per source task (one task per call, as Label Studio's editor
   asks), after one untimed call each.
3. Computed: the mask files moved away, the same calls again, after one untimed call each (it loads the model and
   reads and resizes the image, which later calls find in memory). Both paths must give the same masks.

Usage::

    nice -n 5 .venv/bin/python benchmarks/predict_stored.py            # prints Markdown, updates docs/benchmarks.md
    nice -n 5 .venv/bin/python benchmarks/predict_stored.py --no-docs --images 2 --repeats 2
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend_bench import machine  # noqa: E402
from doc_section import write_section  # noqa: E402

from ovaal_backend.backend.app import create_app  # noqa: E402
from ovaal_backend.backend.convert import brush_results, decode_brush  # noqa: E402
from ovaal_backend.backend.registry import Backend  # noqa: E402
from ovaal_backend.backend.worker import ProjectWorker  # noqa: E402
from ovaal_backend.config import Config  # noqa: E402
from tests.helpers.annotator import answer_keypoints  # noqa: E402
from tests.helpers.fake_label_studio import UID, XML, FakeLabelStudio, P  # noqa: E402
from tests.helpers.synthetic import make_scene  # noqa: E402

CAMVID = ROOT.parent / "shared" / "data" / "camvid"
COMMAND = "nice -n 5 .venv/bin/python benchmarks/predict_stored.py"
SCALE = 4
"""CamVid's 360x480 images upscaled to 1440x1920, the size of the earlier /predict measurement (WEBHOOK-LOAD)."""
SETTINGS = dict(image_height=176, image_width=240, first_round_epochs=1, epochs=1, rounds=4, init_pixels=10,
                pixels_per_round=10, encoder_weights="none", device="cpu", log_level="WARNING")
"""The CPU profile's model size and a one-epoch training: the model's quality does not matter here."""


def large_images(count: int) -> tuple[list[tuple[np.ndarray, np.ndarray]], str, list[str]]:
    """``count`` (image, ground truth with void = -1) pairs at 1440x1920, the label config and its classes."""
    pairs = []
    if (CAMVID / "train" / "images").is_dir():
        classes = json.loads((CAMVID / "classes.json").read_text())["classes"]
        for path in sorted((CAMVID / "train" / "images").glob("*.jpg"))[:count]:
            image = Image.open(path).convert("RGB")
            size = (image.width * SCALE, image.height * SCALE)
            label = np.asarray(Image.open(CAMVID / "train" / "labels" / f"{path.stem}.png").resize(size, Image.NEAREST),
                               dtype=np.int64)
            pairs.append((np.asarray(image.resize(size, Image.BILINEAR)), np.where(label >= len(classes), -1, label)))
        return pairs, (ROOT / "label_config" / "camvid.xml").read_text(), classes
    rng = np.random.default_rng(0)
    for _ in range(count):
        image, label = make_scene(rng, 360 * SCALE, 480 * SCALE)
        pairs.append((image, np.where(label == 255, -1, label.astype(np.int64))))
    return pairs, XML, ["background", "square", "disc"]


def first_model(config: Config, count: int
                ) -> tuple[Any, Backend, list[dict[str, Any]], dict[int, np.ndarray], float]:
    """The app with ``ovaal-1`` trained and published; returns (test client, backend, source tasks, ground truth by
    task id, seconds)."""
    pairs, xml, classes = large_images(count)
    fake = FakeLabelStudio()
    fake.add_project(P, xml)
    truth = {fake.add_image_task(P, image, f"image_{i}"): label for i, (image, label) in enumerate(pairs)}
    backend = Backend(config, client_factory=lambda _: fake, start_workers=False)
    client = create_app(config, backend).test_client()
    answer = client.post("/setup", json={"project": UID, "schema": xml, "hostname": "http://ls"})
    assert answer.status_code == 200, answer.json
    driver = backend.driver(P)
    worker = ProjectWorker(driver)
    worker.run_pending()
    started = time.perf_counter()
    for task in fake.query_tasks(P, 0):
        result = answer_keypoints(task["predictions"][0]["result"], truth[task["data"]["ovaal_source_task"]], classes)
        payload = fake.annotate(task["id"], result)
        driver.add_event(payload["action"], payload)
    worker.run_pending()
    seconds = time.perf_counter() - started
    assert driver.model_version == "ovaal-1", driver.model_version
    sources = [{"id": t, "data": fake.tasks[t]["data"]} for t in sorted(truth)]
    return client, backend, sources, truth, seconds


def timed_calls(client: Any, sources: list[dict[str, Any]], repeats: int) -> tuple[list[float], list[list[Any]]]:
    """One untimed call per task, then ``repeats`` rounds of one timed call per task; (seconds, first results)."""
    first = [predict(client, task)[1] for task in sources]
    seconds = [predict(client, task)[0] for _ in range(repeats) for task in sources]
    return seconds, first


def predict(client: Any, task: dict[str, Any]) -> tuple[float, list[dict[str, Any]]]:
    started = time.perf_counter()
    answer = client.post("/predict", json={"project": UID, "tasks": [task]})
    seconds = time.perf_counter() - started
    assert answer.status_code == 200, answer.json
    return seconds, answer.json["results"][0]["result"]


def same_masks(a: list[list[dict[str, Any]]], b: list[list[dict[str, Any]]]) -> bool:
    """Whether two lists of brush results draw the same pixels with the same labels."""
    def drawn(results: list[dict[str, Any]]) -> list[tuple[str, bytes]]:
        return [(r["value"]["brushlabels"][0], np.packbits(decode_brush(r) > 0).tobytes()) for r in results]
    return [drawn(r) for r in a] == [drawn(r) for r in b]


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    config = Config(**SETTINGS, model_dir=str(work / "models"))
    client, backend, sources, truth, train_seconds = first_model(config, args.images)
    try:
        folder = backend.driver(P).ctx.root / "masks" / "ovaal-1"
        files = {int(f.stem): f for f in folder.glob("*.npz")}
        assert sorted(files) == sorted(truth), f"stored masks of tasks {sorted(files)}, sources {sorted(truth)}"
        load = os.getloadavg()[0]
        stored, stored_masks = timed_calls(client, sources, args.repeats)
        model_kib = statistics.mean(f.stat().st_size for f in files.values()) / 1024
        shutil.move(str(folder), str(work / "aside"))
        computed, computed_masks = timed_calls(client, sources, args.repeats)
        folder.mkdir()
        parsed_config = backend.driver(P).ctx.parsed_config
        written = {}
        for task, label in truth.items():  # as many edges as the ground truth: what a trained model's files hold
            written[task] = np.where(label < 0, 0, label).astype(np.uint8)
            np.savez_compressed(folder / files[task].name, class_map=written[task],
                                scores=np.ones(len(parsed_config.classes)))
        detailed, detailed_masks = timed_calls(client, sources, args.repeats)
        expected = [brush_results(written[t["id"]], parsed_config, scores=np.ones(len(parsed_config.classes)))
                    for t in sources]
        assert same_masks(detailed_masks, expected), "the ground-truth files were not served"
        truth_kib = statistics.mean(f.stat().st_size for f in folder.glob("*.npz")) / 1024
        load = max(load, os.getloadavg()[0])
    finally:
        backend.shutdown(timeout=30)
    return {"images": len(sources), "repeats": args.repeats, "train_seconds": train_seconds,
            "stored": stored, "computed": computed, "detailed": detailed,
            "same_masks": same_masks(stored_masks, computed_masks), "model_kib": model_kib, "truth_kib": truth_kib,
            "load": load}


def reflow(text: str, width: int = 120) -> str:
    """Paragraphs filled to ``width`` (headings and tables kept as they are)."""
    blocks = [b if b.startswith(("#", "|")) else textwrap.fill(" ".join(b.split()), width) for b in text.split("\n\n")]
    return "\n\n".join(blocks)


def markdown(run: dict[str, Any]) -> str:
    stored, computed = statistics.median(run["stored"]), statistics.median(run["computed"])
    images = "CamVid training images upscaled 4x" if (CAMVID / "train").is_dir() else "synthetic scenes"
    return reflow(f"""## /predict of a source task: stored mask or computed (issue 17 item 7)

`{COMMAND}` ({datetime.date.today().isoformat()}; {machine()}; the machine was shared: 1-minute load up to
{run["load"]:.1f} while measuring). {run["images"]} source images of 1920x1440 ({images}) in an in-memory Label Studio
(`tests/helpers/fake_label_studio.py`), the backend's Flask app (no sockets: the app's own time), model `ovaal-1` at
240x176 (`DEVICE=cpu`, trained on round 0's answers in {run["train_seconds"]:.0f} s). One source task per `/predict`
call, as Label Studio's editor asks; {run["repeats"]} timed calls per image and path, after one untimed call each (the
computed path's first call loads the model and the image). Both paths run in this one process, one after the other.

| `/predict` of a 1920x1440 source task | p50 | min | max | calls |
|---|---|---|---|---|
{_row("stored mask of the current version (read the file, encode RLE)", run["stored"])}
{_row("computed (forward pass, upsample to 1920x1440, encode RLE)", run["computed"])}
{_row("stored mask with the ground truth's detail (files replaced by the label maps)", run["detailed"])}

**Stored / computed p50: {stored / computed:.3f}** ({computed / stored:.0f} times faster); the two paths gave the
same masks: {"yes" if run["same_masks"] else "NO"}. A one-epoch model's masks have few edges ({run["model_kib"]:.0f}
KiB a file) and encode fast; with files as detailed as the ground truth ({run["truth_kib"]:.0f} KiB each, what a
trained model's masks come close to) a stored mask took {statistics.median(run["detailed"]):.3f} s p50, still
{statistics.median(run["detailed"]) / computed:.3f} of the computed p50 above (whose own encoding had the model's few
edges). The backend keeps the current version's
mask files (one per source image) until the next version is published, so every source task's `/predict` is served
this way once its round job has run; only images without a file (a task added after the job, a file deleted) are
computed. The earlier figure, 2.3 s p50 (WEBHOOK-LOAD, `MAX_PREDICT_CALLS=2`, computed, under 8
clients and webhooks, through gunicorn and a real Label Studio), is the computed path under load.""")


def _row(name: str, seconds: list[float]) -> str:
    return (f"| {name} | {statistics.median(seconds):.3f} s | {min(seconds):.3f} s | {max(seconds):.3f} s | "
            f"{len(seconds)} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=4, help="source images of 1920x1440")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per image and path")
    parser.add_argument("--no-docs", action="store_true", help="print only; leave docs/benchmarks.md as it is")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="predict-stored-") as work:
        run = measure(args, Path(work))
    text = markdown(run)
    print(text)
    if not args.no_docs:
        write_section("PREDICT-STORED", text)
        print("\ndocs/benchmarks.md: section PREDICT-STORED updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
