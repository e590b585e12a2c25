"""Where do round-1 queries land? Distance of picked pixels to the image border, with and without the diversity step.

Trains the round-0 model exactly as the simulator does (``--preset cpu``: random cold-start pixels answered from the
ground truth, then the first-round epochs) on the first N CamVid training images, then lets the configured method
pick round 1 on the same images with several ``diversity_top_fraction`` values. Strict per-class arg-max picks
(fraction 0) bunched on the border; this measures it.

Usage: .venv/bin/python benchmarks/border_picks.py [--images 80] [--method ovaal] [--no-docs]
Needs ../shared/data/camvid; prints Markdown and writes it to docs/benchmarks.md (section BORDER-PICKS).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from doc_section import write_section  # noqa: E402

from ovaal_backend.config import Config  # noqa: E402
from ovaal_backend.engine.data import SegmentationFolder, resize_images  # noqa: E402
from ovaal_backend.engine.learner import ActiveLearner, labelled_mask  # noqa: E402
from ovaal_backend.engine.rounds import RoundPlan  # noqa: E402
from ovaal_backend.simulator.loop import Oracle  # noqa: E402
from ovaal_backend.simulator.presets import METHODS, PRESETS  # noqa: E402

CAMVID = ROOT.parent / "shared" / "data" / "camvid" / "train"
FRACTIONS = (0.0, 0.01, 0.05)


def border_distance(rows: np.ndarray, cols: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixels from each point to the nearest image edge (0 = on the edge)."""
    return np.minimum(np.minimum(rows, height - 1 - rows), np.minimum(cols, width - 1 - cols))


def measure(args: argparse.Namespace) -> str:
    config = Config(**{**PRESETS["cpu"], **METHODS[args.method], "encoder_weights": args.encoder_weights,
                       "seed": args.seed})
    folder = SegmentationFolder(CAMVID)
    count = min(args.images, len(folder))
    arrays = [folder.load_image(i) for i in range(count)]
    labels = [folder.load_label(i) for i in range(count)]
    sizes = [a.shape[:2] for a in arrays]
    if len(set(sizes)) != 1:
        raise SystemExit("error: this measurement needs images of one size")
    height, width = sizes[0]
    images = resize_images(arrays, config.image_height, config.image_width)
    learner = ActiveLearner(config, len(folder.info.classes))
    oracle = Oracle(labels)
    everything = torch.ones(count, height, width, dtype=torch.bool)
    queries = learner.select(None, everything, config.init_pixels, random=True)
    points = [oracle.answer(i, q) for i, q in enumerate(queries)]
    (round0,) = RoundPlan.from_config(config).trainings(0, learner.trained)  # the cpu preset's round-0 training
    learner.train(images, points, sizes, round0)
    candidates = torch.from_numpy(np.stack([~labelled_mask(p, height, width) for p in points]))
    probabilities = [learner.predict_probabilities(images[s:s + 8], (height, width)) for s in range(0, count, 8)]
    ring = float(np.mean(border_distance(*np.mgrid[0:height, 0:width], height, width) <= 4))
    lines = [f"Method `{args.method}`, seed {args.seed}, the first {count} CamVid training images ({height}x{width}), "
             f"round-1 picks ({config.pixels_per_round} per image) after the cpu preset's round 0. "
             f"For reference, {100 * ring:.1f} % of all pixels lie within 4 px of the border.", "",
             "| diversity_top_fraction | picks | within 4 px of the border | within 10 px | median distance (px) |",
             "|---|---|---|---|---|"]
    for fraction in FRACTIONS:
        learner.config = config.replace(diversity_top_fraction=fraction)
        learner.generator.manual_seed(args.seed)
        distances = []
        for start, probs in zip(range(0, count, 8), probabilities):
            for q in learner.select(probs, candidates[start:start + 8], config.pixels_per_round):
                distances.append(border_distance(q.rows, q.cols, height, width))
        d = np.concatenate(distances)
        lines.append(f"| {fraction:g} | {len(d)} | {100 * np.mean(d <= 4):.0f} % | {100 * np.mean(d <= 10):.0f} % | "
                     f"{np.median(d):.0f} |")
    command = f".venv/bin/python benchmarks/border_picks.py --images {args.images} --method {args.method}"
    return "\n".join(lines) + f"\n\nCommand: `{command}`\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=80)
    parser.add_argument("--method", choices=sorted(METHODS), default="ovaal")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--encoder-weights", default="lite0-offline")
    parser.add_argument("--no-docs", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    if not CAMVID.is_dir():
        print(f"skipped: {CAMVID} is absent")
        return 0
    section = measure(args)
    print(section)
    if not args.no_docs:
        write_section("BORDER-PICKS", section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
