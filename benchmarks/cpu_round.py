"""How long one round's job takes with the backend's pure defaults on this machine (the ``auto`` training profile).

Runs ``engine.job.run_round`` the way the backend does after round 0: every pool image has 22 random clicks answered
from the CamVid ground truth; the job trains (first-round epochs), selects round 1 and writes dense masks. Label
Studio's side (import, mask push) is not included: see the backend benchmark for it.

Usage: .venv/bin/python benchmarks/cpu_round.py [--images 20 100] [--no-docs]
Needs ../shared/data/camvid (or $CAMVID); writes docs/benchmarks.md section CPU-ROUND.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from doc_section import write_section  # noqa: E402

from ovaal_backend.config import IGNORE_INDEX, Config  # noqa: E402
from ovaal_backend.engine.data import SegmentationFolder  # noqa: E402
from ovaal_backend.engine.job import RoundJob, run_round  # noqa: E402
from ovaal_backend.engine.runtime import configure_torch, resolve_device  # noqa: E402

CAMVID = Path(os.environ.get("CAMVID", ROOT.parent / "shared" / "data" / "camvid")) / "train"


def clicks(label: np.ndarray, rng: np.random.Generator, n: int = 22) -> np.ndarray:
    rows, cols = rng.integers(0, label.shape[0], n), rng.integers(0, label.shape[1], n)
    return np.stack([rows, cols, np.where(label[rows, cols] < 0, IGNORE_INDEX, label[rows, cols])], 1)


def one_round(config: Config, folder: SegmentationFolder, count: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        job = RoundJob(config=config, classes=list(folder.info.classes), ended_round=0,
                       keys=list(range(count)), image_paths=[str(p) for p in folder.image_paths[:count]],
                       points=[clicks(folder.load_label(i), rng) for i in range(count)],
                       checkpoint=str(Path(tmp) / "model.pt"), version=1, generation=0, masks_dir=str(Path(tmp) / "m"))
        started, cpu = time.perf_counter(), time.process_time()
        result = run_round(job)
        total, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"total": total, "train": result.training["seconds"], "images": count, "cpu": cpu,
            "load": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument("--section", default="CPU-ROUND", help="docs/benchmarks.md section (GPU-ROUND on a GPU)")
    args = parser.parse_args(argv)
    base = Config.from_env()
    config = base.for_machine(resolve_device(base.device).type == "cuda")
    configure_torch(config)
    folder = SegmentationFolder(CAMVID)
    rows = [one_round(config, folder, n) for n in args.images]
    text = "\n".join([
        f"## One round with the pure defaults ({resolve_device(config.device).type})",
        "",
        f"`python benchmarks/cpu_round.py {' '.join(sys.argv[1:])}`: profile `{config.train_profile}` resolved to "
        f"{config.image_height}x{config.image_width}, {config.first_round_epochs} first-round epochs, device "
        f"{resolve_device(config.device)}. The round job after round 0 (22 clicks per image): train, select round 1, "
        "write masks; Label Studio's import and mask push come on top (backend benchmark).",
        "",
        "| pool images | job total (s) | of which training (s) | CPU time (s, all threads) | quiet estimate (s) | "
        "load average (1 min) at the end |",
        "|---|---|---|---|---|---|",
        *[f"| {r['images']} | {r['total']:.1f} | {r['train']:.1f} | {r['cpu']:.1f} | "
          f"{r['cpu'] / torch.get_num_threads():.0f} | {r['load']:.1f} (of {os.cpu_count()} cores) |" for r in rows],
        "",
        f"Quiet estimate = CPU time / torch's threads ({torch.get_num_threads()}): the wall time when the job has its "
        "threads' cores to itself. CPU time is far less sensitive than wall time to other processes on the machine "
        "(not free of it: they share caches and memory bandwidth).",
    ]) + "\n"
    print(text)
    if not args.no_docs:
        write_section(args.section, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
