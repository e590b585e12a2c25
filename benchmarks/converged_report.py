"""Summarise the converged grid (benchmarks/converged_grid.sh) against issue 15's targets, per split.

Usage: python benchmarks/converged_report.py docs/results/camvid-converged [--write-doc]

For every row: held-out mIoU and the pool masks' mIoU (the final model on the pool images, what the backend pushes
into Label Studio), mean ± std over seeds; then each row minus PixelPick, paired by seed (a seed fixes the round-0
pixels; a row of the budget or convergence grid, e.g. ``default-200px``, against PixelPick run the same way), on the
held-out set and on the pool; small and large classes; logit adjustment; and the convergence check (the final phase
trained again with twice the epochs on the same labels). Works with whatever files exist.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from doc_section import print_tables
from report import LARGE, Groups, Metric, class_iou, final_miou, fmt, load_splits, ordered, paired, section, values

BASE = "pixelpick"
DEFAULT = "default"
MECHANISM_BASE = "ovaal"
"""Each row is also paired against the product default and against ``ovaal`` (the default before item 6: its
mechanisms, the present default's softmax decision head among them, are each a change of it), each run the same way
(a 200 px row against ``ovaal-200px``, ``-`` while that has not run)."""
SMALL = ("pole", "sign_symbol", "fence", "pedestrian", "bicyclist")
TAUS = ("0.5", "1.0")
VARIANTS = ("-44px", "-200px", "-convergence")
"""Row-name suffixes of the budget and convergence grids: such a row is paired with its base run the same way."""


def run_alike(row: str, base: str) -> str:
    """``base`` run as ``row`` was: ``default-200px`` is paired with ``pixelpick-200px``, not the 110 px run."""
    return next((base + suffix for suffix in VARIANTS if row.endswith(suffix)), base)


def pool_miou(run: dict) -> float | None:
    return (run.get("pool") or {}).get("miou")


def adjusted(tau: str, where: str = "final") -> Metric:
    """mIoU with logit adjustment of strength ``tau`` on the held-out set (``final``) or the pool."""
    def metric(run: dict) -> float | None:
        entry = run["rounds"][-1] if where == "final" else run.get("pool") or {}
        return ((entry.get("logit_adjusted") or {}).get(tau) or {}).get("miou")
    return metric


def class_mean(names: tuple[str, ...]) -> Metric:
    def metric(run: dict) -> float | None:
        ious = [class_iou(n)(run) for n in names]
        return sum(ious) / len(ious) if all(v is not None for v in ious) else None
    return metric


def main_table(groups: Groups) -> str:
    rows = []
    for name in ordered(groups):
        runs, base = groups[name], run_alike(name, BASE)
        rows.append([name, str(len(runs)), fmt(values(runs)), fmt(values(runs, pool_miou)),
                     *[fmt(values(runs, adjusted(t))) for t in TAUS], fmt(values(runs, adjusted("1.0", "pool"))),
                     *_against(groups, name, base, (final_miou, pool_miou, class_mean(SMALL))),
                     _worst_large(groups, name),
                     *[cell for other in (run_alike(name, DEFAULT), run_alike(name, MECHANISM_BASE))
                       for cell in _against(groups, name, other, (final_miou,))]])
    header = ["row", "seeds", "held-out mIoU", "pool mIoU", *[f"held-out, tau {t}" for t in TAUS], "pool, tau 1.0",
              f"held-out - {BASE} (paired)", f"pool - {BASE}", "small classes - " + BASE, "worst large class",
              f"held-out - {DEFAULT} (paired)", f"held-out - {MECHANISM_BASE} (paired)"]
    return section("Final mIoU, pool masks and paired differences", header, rows, "No runs yet.")


def _against(groups: Groups, name: str, base: str, metrics: tuple[Metric, ...]) -> list[str]:
    """``name - base`` paired by seed for each metric; ``-`` for the base itself."""
    return [("-" if name == base else fmt(paired(groups, name, base, m), sign=True)) for m in metrics]


def _worst_large(groups: Groups, name: str) -> str:
    base = run_alike(name, BASE)
    if name == base:
        return "-"
    diffs = {c: paired(groups, name, base, class_iou(c)) for c in LARGE}
    diffs = {c: sum(d) / len(d) for c, d in diffs.items() if d}
    if not diffs:
        return "-"
    worst = min(diffs, key=diffs.get)
    return f"{worst} {diffs[worst]:+.1f}"


def convergence_table(groups: Groups) -> str:
    rows = []
    for name in ordered(groups):
        for seed, run in sorted(groups[name].items()):
            check = run.get("convergence")
            if check:
                rows.append([name, str(seed), f"{check['final_epochs']} -> {check['double_epochs']}",
                             f"{check['final_miou']:.2f}", f"{check['double']['miou']:.2f}",
                             f"{check['double']['miou'] - check['final_miou']:+.2f}"])
    return section("Convergence: the final phase again with twice the epochs, same labels",
                   ["row", "seed", "epochs", "mIoU", "mIoU, doubled", "change"], rows, "No convergence runs yet.")


def cost_line(groups: Groups) -> str:
    seconds = [run["total_seconds"] for runs in groups.values() for run in runs.values()]
    devices = sorted({run["device"] for runs in groups.values() for run in runs.values()})
    if not seconds:
        return ""
    return (f"Cost: {min(seconds) / 60:.1f}-{max(seconds) / 60:.1f} min per run ({len(seconds)} runs, "
            f"{', '.join(devices)}; wall time, shared machine).\n")


def main(folder: str) -> None:
    splits = load_splits(Path(folder))
    if not splits:
        print(f"No results in {folder} yet.")
        return
    for split, groups in splits.items():
        print(f"#### {split}\n")
        print(main_table(groups))
        print(convergence_table(groups))
        print(cost_line(groups))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Markdown tables of the converged grid, per split")
    parser.add_argument("folder", nargs="?", default="docs/results/camvid-converged")
    parser.add_argument("--write-doc", action="store_true", help="also write them into docs/benchmarks.md")
    parser.add_argument("--section", default="CAMVID-CONVERGED")
    args = parser.parse_args()
    print_tables(lambda: main(args.folder), args.section if args.write_doc else None)
