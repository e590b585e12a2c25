"""Tables of the corrected-mask runs (benchmarks/corrections_grid.sh): final mIoU on the held-out images with N pool
images fully labelled against clicks alone (N = 0), paired by seed, and the mean curve per round.

Usage: .venv/bin/python benchmarks/corrections_report.py docs/results/corrections   (prints Markdown)
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

Arm = tuple[int, int]
"""(fully labelled pool images, most training points per such image; 0 = one per training pixel)."""


def load(folder: Path) -> dict[Arm, dict[int, dict]]:
    """``arm -> seed -> RESULT.json`` of every ``val_dense<N>[_points<P>]_seed<S>.json`` in the folder."""
    runs: dict[Arm, dict[int, dict]] = {}
    for path in sorted(folder.glob("val_dense*_seed*.json")):
        found = re.fullmatch(r"val_dense(\d+)(?:_points(\d+))?_seed(\d+)\.json", path.name)
        if found:
            arm = (int(found.group(1)), int(found.group(2) or 0))
            runs.setdefault(arm, {})[int(found.group(3))] = json.loads(path.read_text())
    return runs


def name(arm: Arm, pool: int) -> str:
    n, points = arm
    if n == 0:
        return "none (clicks alone)"
    return f"{n} of {pool}" + (f", at most {points} points each" if points else ", one point per training pixel")


def mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def report(runs: dict[Arm, dict[int, dict]]) -> str:
    counts = sorted(runs)
    seeds = sorted(set.intersection(*(set(runs[n]) for n in counts))) if counts else []
    final = {n: {s: runs[n][s]["rounds"][-1]["miou"] for s in seeds} for n in counts}
    pool = runs[counts[0]][seeds[0]]["train_images"]
    base = (0, 0)
    lines = [f"Seeds {', '.join(map(str, seeds))} (the same seed = the same round-0 pixels and the same first model).",
             "",
             "| pool images fully labelled | " + " | ".join(f"seed {s}" for s in seeds) +
             " | mean ± sd | paired difference to clicks alone | seeds above | clicks per image at the end |",
             "|---|" + "---|" * (len(seeds) + 4)]
    for n in counts:
        diffs = [final[n][s] - final[base][s] for s in seeds] if base in final else []
        clicks = statistics.mean(runs[n][s]["rounds"][-1]["labelled_pixels_per_image"] for s in seeds)
        lines.append(f"| {name(n, pool)} | " +
                     " | ".join(f"{final[n][s]:.2f}" for s in seeds) + f" | {mean_sd(list(final[n].values()))} | " +
                     ("-" if n == base else f"{mean_sd(diffs)}") + " | " +
                     ("-" if n == base else f"{sum(d > 0 for d in diffs)} of {len(diffs)}") + f" | {clicks:.1f} |")
    lines += ["", "The final model's masks on the pool images (what the backend pushes; fully labelled ones included), "
              "mIoU (%):", "", "| pool images fully labelled | mean ± sd | paired difference to clicks alone |",
              "|---|---|---|"]
    for n in counts:
        pool_miou = {s: runs[n][s]["pool"]["miou"] for s in seeds}
        diffs = [pool_miou[s] - runs[base][s]["pool"]["miou"] for s in seeds] if base in runs else []
        lines.append(f"| {name(n, pool)} | {mean_sd(list(pool_miou.values()))} | " +
                     ("-" if n == base else mean_sd(diffs)) + " |")
    lines += ["", "mIoU (%) per round on the held-out images, mean over the seeds (rounds 0-3 active, 4 final):", "",
              "| pool images fully labelled | " + " | ".join(
                  f"round {r['round']}" for r in runs[counts[0]][seeds[0]]["rounds"]) + " |",
              "|---|" + "---|" * len(runs[counts[0]][seeds[0]]["rounds"])]
    for n in counts:
        per_round = zip(*(runs[n][s]["rounds"] for s in seeds))
        lines.append(f"| {name(n, pool)} | " + " | ".join(f"{statistics.mean(r['miou'] for r in group):.2f}"
                                              for group in per_round) + " |")
    lines += ["", "Paired difference to clicks alone per round (mean ± sd over the seeds; seeds above):", "",
              "| pool images fully labelled | " + " | ".join(
                  f"round {r['round']}" for r in runs[counts[0]][seeds[0]]["rounds"]) + " |",
              "|---|" + "---|" * len(runs[counts[0]][seeds[0]]["rounds"])]
    for n in counts:
        if n == base or base not in runs:
            continue
        cells = []
        for r in range(len(runs[n][seeds[0]]["rounds"])):
            diffs = [runs[n][s]["rounds"][r]["miou"] - runs[base][s]["rounds"][r]["miou"] for s in seeds]
            cells.append(f"{mean_sd(diffs)} ({sum(d > 0 for d in diffs)})")
        lines.append(f"| {name(n, pool)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    print(report(load(parser.parse_args().folder)))


if __name__ == "__main__":
    main()
