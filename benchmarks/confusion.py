"""Where do a model's large-class pixels go? Per class: IoU, recall, precision, and the classes that take its pixels.

For models saved by ``simulate --save-checkpoint`` (the learner after the last active round), this predicts every
image of a labelled folder (optionally only the sequences named by ``--prefixes``) at its original size with
Winner-Takes-All and sums one confusion matrix per checkpoint, void ignored. A large class that loses IoU loses it
either to recall (its pixels are called something else: the "goes to" columns say what) or to precision (other
classes' pixels are called it: the "taken from" column).

Usage: .venv/bin/python benchmarks/confusion.py --checkpoint results/checkpoints/cross_ovaal_seed0.pt \
           [--checkpoint ...] [--data ../shared/data/camvid/train] [--prefixes 0006R0] [--no-docs]
Prints Markdown and writes it to docs/benchmarks.md (section CONFUSION) unless --no-docs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from inversion_diagnostic import DEFAULT_DATA, batches, load_learner  # noqa: E402

from ovaal_backend.config import IGNORE_INDEX  # noqa: E402
from ovaal_backend.engine.data import SegmentationFolder  # noqa: E402
from ovaal_backend.engine.learner import ActiveLearner  # noqa: E402
from ovaal_backend.engine.metrics import confusion_matrix, iou_per_class  # noqa: E402
from ovaal_backend.engine.model import winner_takes_all  # noqa: E402

LARGE = ("sky", "building", "road", "pavement", "tree", "car")


def keep_prefixes(folder: SegmentationFolder, prefixes: Sequence[str]) -> SegmentationFolder:
    """The folder narrowed to images whose names start with one of ``prefixes`` (all when empty)."""
    if prefixes:
        chosen = [i for i, key in enumerate(folder.keys) if key.startswith(tuple(prefixes))]
        if not chosen:
            raise SystemExit(f"{folder.root}: no image name starts with {', '.join(prefixes)}")
        folder.image_paths = [folder.image_paths[i] for i in chosen]
        folder.label_paths = [folder.label_paths[i] for i in chosen]
    return folder


def confusion(learner: ActiveLearner, folder: SegmentationFolder, batch: int) -> torch.Tensor:
    """(C, C) pixel counts over the folder, rows = ground truth, columns = Winner-Takes-All prediction."""
    classes = learner.num_classes
    total = torch.zeros(classes, classes, dtype=torch.int64)
    for probs, labels in batches(folder, learner, batch, None):
        target = labels.clamp(min=IGNORE_INDEX)  # any negative label is void
        total += confusion_matrix(winner_takes_all(probs), target, classes)
    return total


def rows(matrix: torch.Tensor, classes: Sequence[str], shown: Sequence[str]) -> list[str]:
    """One Markdown row per shown class: IoU, recall, precision, the two classes that take most of its pixels and
    the class whose pixels it takes most."""
    m = matrix.double()
    iou = iou_per_class(matrix).numpy()
    out = []
    for name in shown:
        c = classes.index(name)
        truth, predicted = m[c].sum().item(), m[:, c].sum().item()
        lost = [(m[c, j].item() / truth, classes[j]) for j in range(len(classes)) if j != c and truth]
        taken = [(m[j, c].item() / predicted, classes[j]) for j in range(len(classes)) if j != c and predicted]
        goes = ", ".join(f"{n} {100 * s:.1f} %" for s, n in sorted(lost, reverse=True)[:2])
        source = max(taken, default=(0.0, "-"))
        out.append(f"| {name} | {100 * iou[c]:.1f} | {100 * m[c, c].item() / max(truth, 1):.1f} | "
                   f"{100 * m[c, c].item() / max(predicted, 1):.1f} | {goes} | {source[1]} {100 * source[0]:.1f} % |")
    return out


def render(results: dict[str, torch.Tensor], classes: Sequence[str], caption: str, shown: Sequence[str]) -> str:
    lines = [caption, ""]
    for name, matrix in results.items():
        lines += [f"**{name}** (mIoU {100 * float(np.nanmean(iou_per_class(matrix).numpy())):.2f})", "",
                  "| class | IoU | recall | precision | its pixels go to | its predictions come from |",
                  "|---|---|---|---|---|---|", *rows(matrix, classes, shown), ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", action="append", required=True, help="simulate --save-checkpoint files")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="labelled folder (images/, labels/, classes.json)")
    parser.add_argument("--prefixes", default="", help="comma-separated image-name prefixes (CamVid sequences)")
    parser.add_argument("--classes", default=",".join(LARGE), help="comma-separated classes to show")
    parser.add_argument("--batch", type=int, default=2, help="images per forward pass (bounds memory)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--no-docs", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    prefixes = [p for p in args.prefixes.split(",") if p]
    folder = keep_prefixes(SegmentationFolder(args.data), prefixes)
    classes = list(folder.info.classes)
    shown = [c for c in args.classes.split(",") if c]
    unknown = [c for c in shown if c not in classes]
    if unknown:
        raise SystemExit(f"--classes: {', '.join(unknown)} not among {', '.join(classes)}")
    results = {}
    for path in args.checkpoint:
        learner = load_learner(path)
        results[f"{Path(path).name} ({learner.config.classifier}, CLASS_BALANCE={learner.config.class_balance})"] = \
            confusion(learner, folder, args.batch)
    where = f"`{Path(args.data).name}`" + (f" images of {', '.join(prefixes)}" if prefixes else "")
    command = " ".join(f"--checkpoint {c}" for c in args.checkpoint) + f" --data {args.data}"
    command += f" --prefixes {args.prefixes}" if prefixes else ""
    caption = (f"{len(folder)} {where} at their original size, Winner-Takes-All, void ignored. Recall = share of the "
               "class's pixels predicted as it; precision = share of pixels predicted as it that are it.\n\n"
               f"Command: `.venv/bin/python benchmarks/confusion.py {command}`")
    text = render(results, classes, caption, shown)
    print(text)
    if not args.no_docs:
        from doc_section import write_section

        write_section("CONFUSION", text)
    return results


if __name__ == "__main__":
    main()
