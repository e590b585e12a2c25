"""Are OVAAL+'s pseudo-label refinements right? Each rule's changes at a class's most uncertain pixels, checked against
the ground truth.

OVAAL+ thresholds each class's sigmoid at 0.5 and then refines its ``top_l`` most uncertain pixels per image
(engine/pseudo_labels.py ``refine_pseudo_labels``): ``paper`` inverts them (the paper's eq. 3), ``wta`` sets them to the
Winner-Takes-All answer. For a model saved by ``simulate --save-checkpoint`` (the learner after the last active round)
this predicts every image of a labelled folder at its original size and counts, per class, the pixels whose binary
target a rule CHANGED and the share of those where the new target is RIGHT (it equals the ground truth's one-hot for
that class; void ground-truth pixels are counted as changed but not judged).

Usage: .venv/bin/python benchmarks/inversion_diagnostic.py --checkpoint results/checkpoints/val_ovaal_seed0.pt \
           [--data ../shared/data/camvid/val] [--top-l 100 1000 3000] [--max-images N] [--no-docs]
Prints Markdown and writes it to docs/benchmarks.md (section INVERSION) unless --no-docs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from ovaal_backend.config import SEMI_RULES, EngineConfig  # noqa: E402
from ovaal_backend.engine.data import SegmentationFolder, resize_images  # noqa: E402
from ovaal_backend.engine.learner import ActiveLearner  # noqa: E402
from ovaal_backend.engine.pseudo_labels import refine_pseudo_labels  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "camvid" / "val"
COUNTS = ("changed", "judged", "right", "judged_to_one", "right_to_one")
Counts = dict[str, np.ndarray]  # each of COUNTS: one count per class


def load_learner(path: str | Path, device: str = "cpu") -> ActiveLearner:
    """The learner a ``simulate --save-checkpoint`` file holds (its own engine settings, device left out)."""
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    settings = {k: v for k, v in state["config"].items() if k in EngineConfig.names()}
    learner = ActiveLearner(EngineConfig(**{**settings, "device": device}), state["num_classes"])
    learner.load_state_dict(state)
    return learner


def change_counts(probs: torch.Tensor, labels: torch.Tensor, top_l: int, rule: str) -> Counts:
    """Per class: pixels whose binary target ``rule`` changed, those of them on non-void ground truth, and those
    where the changed target equals the ground truth's one-hot; then the judged and right changes that set a 1.

    Shape: probs (B, C, H, W) probabilities, labels (B, H, W) class indices (negative = void) -> (C,) counts each.
    """
    before = probs > 0.5
    after = refine_pseudo_labels(probs, top_l, rule) > 0.5
    changed = after != before
    valid = (labels >= 0)[:, None]
    truth = F.one_hot(labels.clamp(min=0), probs.shape[1]).movedim(-1, 1).bool()
    judged = changed & valid
    right = judged & (after == truth)
    masks = (changed, judged, right, judged & after, right & after)
    return {name: mask.sum(dim=(0, 2, 3)).cpu().numpy().astype(np.int64) for name, mask in zip(COUNTS, masks)}


def total(counts: Counts, name: str, cls: int | None = None) -> int:
    """One count for one class, or summed over all classes (``cls`` None)."""
    return int(counts[name].sum() if cls is None else counts[name][cls])


def share(counts: Counts, cls: int | None = None, to_one: bool = False) -> float | None:
    """The share of judged changes that were right, for one class or all (None when nothing was judged);
    ``to_one``: only the changes that set the target to 1."""
    suffix = "_to_one" if to_one else ""
    judged = total(counts, "judged" + suffix, cls)
    return total(counts, "right" + suffix, cls) / judged if judged else None


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def batches(folder: SegmentationFolder, learner: ActiveLearner, batch: int, max_images: int | None
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(probabilities at the original size, labels) for up to ``batch`` consecutive images of the same size."""
    count = len(folder) if max_images is None else min(max_images, len(folder))
    pending: list[tuple[np.ndarray, np.ndarray]] = []
    for index in range(count):
        image = folder.load_image(index)
        if pending and (len(pending) == batch or image.shape != pending[0][0].shape):
            yield predict(learner, pending)
            pending = []
        pending.append((image, folder.load_label(index)))
    if pending:
        yield predict(learner, pending)


def predict(learner: ActiveLearner, pending: list[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities (B, C, H, W) at the images' original size, and their labels (B, H, W)."""
    images = [image for image, _ in pending]
    inputs = resize_images(images, learner.config.image_height, learner.config.image_width)
    probs = learner.predict_probabilities(inputs, images[0].shape[:2])
    return probs.float().cpu(), torch.from_numpy(np.stack([label for _, label in pending]))


def diagnose(learner: ActiveLearner, folder: SegmentationFolder, top_ls: Sequence[int], max_images: int | None = None,
             batch: int = 2) -> dict[str, dict[int, Counts]]:
    """Counts per rule and L, summed over the images."""
    classes = learner.num_classes
    totals = {rule: {top_l: {k: np.zeros(classes, np.int64) for k in COUNTS}
                     for top_l in top_ls} for rule in SEMI_RULES}
    for probs, labels in batches(folder, learner, batch, max_images):
        for rule in SEMI_RULES:
            for top_l in top_ls:
                for name, count in change_counts(probs, labels, top_l, rule).items():
                    totals[rule][top_l][name] += count
    return totals


HEADER = ("| class | changed | on non-void | right | share right | set to 1 | share right (set to 1) |\n"
          "|---|---|---|---|---|---|---|")


def render(results: dict[str, dict[int, Counts]], classes: Sequence[str], caption: str) -> str:
    """Markdown: per rule and L, one row per class and one for all classes."""
    lines = [caption, ""]
    for rule, by_l in results.items():
        for top_l, counts in by_l.items():
            lines += [f"**rule `{rule}`, L = {top_l}**", "", HEADER]
            for index, name in [*enumerate(classes), (None, "**all classes**")]:
                cells = [str(total(counts, k, index)) for k in ("changed", "judged", "right")]
                cells += [percent(share(counts, index)), str(total(counts, "judged_to_one", index)),
                          percent(share(counts, index, to_one=True))]
                lines.append(f"| {name} | {' | '.join(cells)} |")
            lines.append("")
    return "\n".join(lines)


def describe(args: argparse.Namespace, learner: ActiveLearner, images: int) -> str:
    """The caption: what was measured, on what, and the command that measured it."""
    command = f"--checkpoint {args.checkpoint} --top-l {' '.join(map(str, args.top_l))}"
    command += f" --max-images {args.max_images}" if args.max_images else ""
    return (f"Checkpoint `{Path(args.checkpoint).name}` ({learner.config.classifier}, after {learner.trained_rounds} "
            f"trained rounds), {images} images of `{Path(args.data).name}` at their original size. *changed*: pixels "
            "whose thresholded target the rule changed; *right*: the new target equals the ground truth's one-hot "
            "for that class (void pixels not judged); *set to 1*: the judged changes that made the pixel a positive "
            "of the class (the others made it a negative, which is right for most pixels of a rare class).\n\n"
            f"Command: `.venv/bin/python benchmarks/inversion_diagnostic.py {command}`")


def main(argv: Sequence[str] | None = None) -> dict[str, dict[int, Counts]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a file written by simulate --save-checkpoint")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="labelled folder (images/, labels/, classes.json)")
    parser.add_argument("--top-l", type=int, nargs="+", default=[100, 1000, 3000])
    parser.add_argument("--max-images", type=int, help="only the first N images")
    parser.add_argument("--batch", type=int, default=2, help="images per forward pass (bounds memory)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--no-docs", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    learner = load_learner(args.checkpoint, args.device)
    folder = SegmentationFolder(args.data)
    results = diagnose(learner, folder, args.top_l, args.max_images, args.batch)
    images = len(folder) if args.max_images is None else min(args.max_images, len(folder))
    text = render(results, folder.info.classes, describe(args, learner, images))
    print(text)
    if not args.no_docs:
        from doc_section import write_section

        write_section("INVERSION", text)
    return results


if __name__ == "__main__":
    main()
