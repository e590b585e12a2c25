"""How the backend's own bookkeeping grows with a project's size (no model: a fixed round result).

For N source tasks a round job's result (22 query points and one dense mask per task) is handed to a driver over the
in-memory fake Label Studio that records calls (tests/helpers/fake_label_studio.py), and each step is timed with its
peak traced memory: storing the result as rows, importing the round's query tasks, pushing the masks, one /predict of a
query task, and /metrics. Linear growth means the per-task columns stay flat.

Usage: .venv/bin/python benchmarks/bookkeeping_bench.py [--sizes 1000 5000 20000] [--no-docs]
Prints Markdown and writes it to docs/benchmarks.md (section BOOKKEEPING).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from doc_section import write_section  # noqa: E402

from ovaal_backend.backend.project.driver import ProjectDriver  # noqa: E402
from ovaal_backend.backend.project.state import JobDone, Started  # noqa: E402
from ovaal_backend.engine.job import RoundResult  # noqa: E402
from ovaal_backend.engine.learner import Queries  # noqa: E402
from ovaal_backend.files import write_atomically  # noqa: E402
from tests.helpers.fake_label_studio import UID, XML, FakeLabelStudio, P, tiny_config  # noqa: E402

POINTS = 22
HEIGHT, WIDTH = 48, 64


def measured(step: Callable[[], Any]) -> tuple[float, float]:
    """(seconds, peak traced MiB) of one call."""
    tracemalloc.start()
    started = time.perf_counter()
    step()
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return seconds, peak


def round_result(sources: list[int], mask_path: str) -> RoundResult:
    """A job's result for every source: the same 22 queried pixels and the same mask file (the bookkeeping, not the
    model, is measured)."""
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, HEIGHT, POINTS), rng.integers(0, WIDTH, POINTS)
    q = Queries(rows, cols, rng.integers(0, 3, POINTS), rng.integers(0, 3, POINTS), rng.random(POINTS), 0.5)
    return RoundResult(version=1, next_round=1, queries=dict.fromkeys(sources, q),
                       sizes=dict.fromkeys(sources, (HEIGHT, WIDTH)), masks=dict.fromkeys(sources, mask_path),
                       training={"round": 0, "points": 1, "images": 1, "loss": 0.1, "seconds": 1.0})


def project(folder: Path, size: int) -> tuple[ProjectDriver, FakeLabelStudio, list[int]]:
    """A set-up driver whose fake project has ``size`` source tasks."""
    fake = FakeLabelStudio()
    fake.add_project(P)
    sources = [fake._new_task(P, {"image": f"/data/upload/{P}/{i}.png"}) for i in range(size)]
    driver = ProjectDriver(tiny_config(folder), P, fake)
    driver.setup(UID, XML)
    driver.process_events()
    driver.ctx.list_sources()
    return driver, fake, sources


def bench(size: int) -> dict[str, tuple[float, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        driver, fake, sources = project(Path(tmp), size)
        mask = Path(tmp) / "mask.npz"
        class_map = np.repeat(np.arange(3), [HEIGHT // 3, HEIGHT // 3, HEIGHT - 2 * (HEIGHT // 3)])[:, None]
        class_map = np.broadcast_to(class_map, (HEIGHT, WIDTH))  # three bands: a segmentation-like mask
        write_atomically(mask, lambda h: np.savez_compressed(h, class_map=class_map.astype(np.uint16),
                                                             confidence=np.full((HEIGHT, WIDTH), 0.5, np.float16)))
        result = round_result(sources, str(mask))
        out = {"store the round's rows": measured(lambda: driver.publisher.record(result))}
        driver.ctx.apply(Started(has_sources=True))  # as the driver moves on once its job's rows are stored
        driver.ctx.apply(JobDone(version=1, next_round=1, trained=True, classes=tuple(driver.state().classes)))
        out["import query tasks"] = measured(lambda: driver.publisher.publish_queries(1, 1))
        out["push masks"] = measured(lambda: driver.publisher.push_masks(1))
        query = fake.query_tasks(P, 1)[size // 2]
        out["/predict of a query task"] = _median(lambda: driver.predict([query]))
        out["/metrics"] = _median(driver.metrics)
        return out


def _median(step: Callable[[], Any], repeats: int = 20) -> tuple[float, float]:
    runs = [measured(step) for _ in range(repeats)]
    return statistics.median(r[0] for r in runs), max(r[1] for r in runs)


def markdown(rows: dict[int, dict[str, tuple[float, float]]], command: str) -> str:
    sizes = sorted(rows)
    steps = list(rows[sizes[0]])
    lines = ["## The backend's bookkeeping against the project's size", "",
             f"`{command}` (the fake Label Studio of the unit tests, no model: a fixed round result of {POINTS} "
             f"points and one {HEIGHT}x{WIDTH} three-band mask per task). Time in seconds and peak traced memory "
             "in MiB per step, then per 1000 tasks: flat columns mean linear growth.", "",
             "| step | " + " | ".join(f"{n} tasks: s / MiB" for n in sizes) + " | s per 1000 tasks |",
             "|---|" + "---|" * (len(sizes) + 1)]
    for step in steps:
        cells = [f"{rows[n][step][0]:.3f} / {rows[n][step][1]:.1f}" for n in sizes]
        per = " / ".join(f"{1000 * rows[n][step][0] / n:.4f}" for n in sizes)
        lines.append(f"| {step} | " + " | ".join(cells) + f" | {per} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000])
    parser.add_argument("--no-docs", action="store_true", help="print only, do not write docs/benchmarks.md")
    args = parser.parse_args(argv)
    rows = {}
    for size in args.sizes:
        rows[size] = bench(size)
        print(f"{size} tasks: " + ", ".join(f"{k} {s:.3f} s {m:.1f} MiB" for k, (s, m) in rows[size].items()),
              flush=True)
    text = markdown(rows, "python benchmarks/bookkeeping_bench.py " + " ".join(sys.argv[1:]))
    print(text)
    if not args.no_docs:
        write_section("BOOKKEEPING", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
