"""Summarise simulator RESULT.json files into Markdown tables (mean ± std over seeds).

Usage: python benchmarks/report.py results/camvid [--write-doc]
An ``ovaal+...`` result carries the same run's final phase without the semi-supervised loss; that is reported as
``ovaal...`` (``ovaal+-no-balance`` -> ``ovaal-no-balance``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
from collections import defaultdict
from pathlib import Path

MINORITY = ("pole", "sign_symbol", "fence", "pedestrian", "bicyclist")


def _fmt(values: list[float], digits: int = 2) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def load(folder: Path) -> dict[str, list[dict]]:
    """Results grouped by row name; each ``ovaal+`` file also yields an ``ovaal`` trajectory."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for path in sorted(folder.glob("*.json")):
        result = json.loads(path.read_text())
        name = path.stem.rsplit("_seed", 1)[0]
        groups[name].append(result)
        if result.get("final_without_semi"):
            twin = dict(result, rounds=result["rounds"][:-1] + [result["final_without_semi"]], method="ovaal")
            twin_name = name.replace("ovaal+", "ovaal", 1) if name.startswith("ovaal+") else f"{name}-without-semi"
            groups[twin_name].append(twin)
    return groups


def main(folder: str) -> None:
    groups = load(Path(folder))
    first = ("random", "pixelpick", "ovaal", "ovaal+", "ovaal-strict-top", "ovaal+-strict-top", "ovaal-no-balance",
             "ovaal+-no-balance", "multiclass+ova", "ova-shared+margin")
    order = [n for n in first if n in groups]
    order += [n for n in sorted(groups) if n not in order]
    print("#### mIoU (%) per round, mean ± std over seeds\n")
    max_rounds = max(len(r["rounds"]) for g in groups.values() for r in g)
    header = ["method", "seeds"] + [f"round {i}" for i in range(max_rounds)]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for name in order:
        runs = groups[name]
        cells = [name, str(len(runs))]
        for i in range(max_rounds):
            vals = [r["rounds"][i]["miou"] for r in runs if len(r["rounds"]) > i]
            px = [r["rounds"][i]["labelled_pixels_per_image"] for r in runs if len(r["rounds"]) > i]
            phase = runs[0]["rounds"][i]["phase"] if len(runs[0]["rounds"]) > i else ""
            cells.append(f"{_fmt(vals)} ({px[0]:.0f} px{', ' + phase if phase != 'active' else ''})" if vals else "-")
        print("| " + " | ".join(cells) + " |")
    print("\n#### Final mIoU (%) per seed\n")
    seeds = sorted({r["config"]["seed"] for g in groups.values() for r in g})
    print("| method | " + " | ".join(f"seed {s}" for s in seeds) + " |\n|---|" + "---|" * len(seeds))
    for name in order:
        by_seed = {r["config"]["seed"]: r["rounds"][-1]["miou"] for r in groups[name]}
        print(f"| {name} | " + " | ".join(f"{by_seed[s]:.2f}" if s in by_seed else "-" for s in seeds) + " |")
    classes = next(iter(groups.values()))[0]["classes"]
    print("\n#### Per-class IoU (%) after the last phase, mean over seeds (minority classes in bold)\n")
    print("| method | " + " | ".join(f"**{c}**" if c in MINORITY else c for c in classes) + " | minority mean |")
    print("|---|" + "---|" * (len(classes) + 1))
    for name in order:
        runs = groups[name]
        row = []
        for c in classes:
            vals = [r["rounds"][-1]["per_class_iou"][c] for r in runs]
            vals = [v for v in vals if v is not None]
            row.append(f"{statistics.mean(vals):.1f}" if vals else "-")
        minority = [statistics.mean(r["rounds"][-1]["per_class_iou"][c] or 0 for c in MINORITY if c in classes)
                    for r in runs]
        print(f"| {name} | " + " | ".join(row) + f" | {_fmt(minority, 1)} |")
    print("\n#### Selection diversity (pixels chosen by the method, rounds 1..K) and wall time\n")
    print("| method | spatial (std of coordinates, px) | semantic (entropy, bits) | void answers | wall time (s) |")
    print("|---|---|---|---|---|")
    for name in order:
        runs = groups[name]
        print(f"| {name} | {_fmt([r['diversity']['spatial'] for r in runs], 1)} | "
              f"{_fmt([r['diversity']['semantic'] for r in runs], 3)} | "
              f"{_fmt([r['rounds'][-1]['void_answers'] for r in runs], 0)} | "
              f"{_fmt([r['total_seconds'] for r in runs], 0)} |")


def plot(groups: dict[str, list[dict]], out: str, names: tuple[str, ...] = ("random", "pixelpick", "ovaal", "ovaal+")
         ) -> None:
    """mIoU per phase (mean over seeds, band = ± std) of the main methods."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    labels: list[str] = []
    for name in (n for n in names if n in groups):
        runs = groups[name]
        phases = min(len(r["rounds"]) for r in runs)
        means = [statistics.mean(r["rounds"][i]["miou"] for r in runs) for i in range(phases)]
        stds = [statistics.stdev(r["rounds"][i]["miou"] for r in runs) if len(runs) > 1 else 0.0
                for i in range(phases)]
        xs = list(range(phases))
        ax.plot(xs, means, marker="o", linestyle="--" if name.endswith("+") else "-",
                label=f"{name} ({len(runs)} seeds)")
        ax.fill_between(xs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)], alpha=0.15)
        if len(labels) < phases:
            labels = [f"{r['labelled_pixels_per_image']:.0f} px" + ("" if r["phase"] == "active" else "\nfinal")
                      for r in runs[0]["rounds"][:phases]]
    ax.set_xticks(range(len(labels)), labels)
    ax.set_xlabel("labelled pixels per image (final: one more epoch; ovaal+ shares ovaal's rounds)")
    ax.set_ylabel("val mIoU (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Markdown tables of a folder of simulator results")
    parser.add_argument("folder", nargs="?", default="results/camvid")
    parser.add_argument("--write-doc", action="store_true",
                        help="also write the tables into docs/benchmarks.md (section CAMVID-TABLES)")
    parser.add_argument("--plot", help="also draw the main methods' mIoU curves into this PNG")
    args = parser.parse_args()
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        main(args.folder)
    print(buffer.getvalue(), end="")
    if args.write_doc:
        from doc_section import write_section

        write_section("CAMVID-TABLES", buffer.getvalue())
    if args.plot:
        plot(load(Path(args.folder)), args.plot)
