"""Training throughput of the engine's model: images per second at the protocol's batch against a large batch.

Issue 15 item 7 asks how well a run uses its device: a converged run trains batches of 8 images, and a device is used
well when that rate is close to what the same model reaches at a large batch. This script times the engine's training
step (forward, the active loss on the clicks, backward, Adam) on random images at the CPU protocol's size (176x240)
with 110 clicks per image (the product's budget), for each classifier kind asked, at ``--batch`` and
``--large-batch``, and with PyTorch's channels-last memory format at ``--batch`` (a cheap speed-up on some CPUs).
Weights are random: throughput does not depend on them. Ratios, measured in one run, are the figures to compare.

Usage::

    .venv/bin/python benchmarks/train_throughput.py                 # prints Markdown, updates docs/benchmarks.md
    .venv/bin/python benchmarks/train_throughput.py --no-docs --steps 1 --kinds multiclass
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.doc_section import write_section  # noqa: E402
from ovaal_backend.config import EngineConfig  # noqa: E402
from ovaal_backend.engine.model import SegmentationClassifier  # noqa: E402
from ovaal_backend.engine.train import point_loss  # noqa: E402

CLASSES = 11
CLICKS_PER_IMAGE = 110


def _batch(size: int, height: int, width: int, device: torch.device, generator: torch.Generator):
    images = torch.randn((size, 3, height, width), generator=generator).to(device)
    rows = torch.randint(0, height, (size * CLICKS_PER_IMAGE,), generator=generator).float()
    cols = torch.randint(0, width, (size * CLICKS_PER_IMAGE,), generator=generator).float()
    owner = torch.arange(size).repeat_interleave(CLICKS_PER_IMAGE).float()
    labels = torch.randint(0, CLASSES, (size * CLICKS_PER_IMAGE,), generator=generator).float()
    return images, torch.stack([owner, rows, cols, labels], 1)


def images_per_second(kind: str, batch: int, steps: int, size: tuple[int, int], device: torch.device,
                      channels_last: bool = False) -> float:
    """Images trained per second over ``steps`` timed steps, after one untimed step (allocations, kernel choice)."""
    generator = torch.Generator().manual_seed(0)
    model = SegmentationClassifier(kind, CLASSES).to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    images, points = _batch(batch, *size, device, generator)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    config = EngineConfig(classifier=kind)

    def step() -> None:
        loss = point_loss(model, model(images), points, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - started)


def machine(device: torch.device) -> str:
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{os.cpu_count()} CPU cores, no GPU"
    return (f"{datetime.date.today()}; {where}; {torch.get_num_threads()} torch threads; Python "
            f"{platform.python_version()}, torch {metadata.version('torch')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", default="ova-shared,multiclass", help="classifier kinds, comma-separated")
    parser.add_argument("--batch", type=int, default=8, help="the protocol's batch")
    parser.add_argument("--large-batch", type=int, default=32, help="the reference batch")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per figure")
    parser.add_argument("--size", default="176x240", help="HEIGHTxWIDTH of the training crops")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--no-docs", action="store_true", help="print only; leave docs/benchmarks.md as it is")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size = tuple(int(v) for v in args.size.split("x"))
    rows = []
    for kind in args.kinds.split(","):
        small = images_per_second(kind, args.batch, args.steps, size, device)
        large = images_per_second(kind, args.large_batch, args.steps, size, device)
        last = images_per_second(kind, args.batch, args.steps, size, device, channels_last=True)
        rows.append(f"| {kind} | {small:.2f} | {large:.2f} | {small / large:.2f} | {last:.2f} | {last / small:.2f} |")
        print(rows[-1], flush=True)
    command = "python benchmarks/train_throughput.py " + " ".join(sys.argv[1:])
    section = "\n".join([
        "### Training throughput: the protocol's batch against a large batch (issue 15 item 7)",
        "",
        f"`{command.strip()}` ({machine(device)}). The engine's training step (DeepLabV3+ on EfficientNet-Lite0, "
        f"{args.size} crops, {CLICKS_PER_IMAGE} clicks per image, Adam) on random images; {args.steps} timed steps "
        "after one untimed step. Images per second:",
        "",
        f"| classifier | batch {args.batch} | batch {args.large_batch} | ratio | batch {args.batch}, channels-last "
        "| channels-last / plain |",
        "|---|---|---|---|---|---|",
        *rows,
    ])
    print(section)
    if not args.no_docs:
        write_section("TRAIN-THROUGHPUT", section)


if __name__ == "__main__":
    main()
