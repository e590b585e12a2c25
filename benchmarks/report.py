"""Summarise the CamVid grid's simulator RESULT.json files into Markdown (mean ± std over seeds, paired differences).

Usage: python benchmarks/report.py docs/results/camvid [--write-doc] [--plot docs/images/camvid_miou.png]

The folder holds one subfolder per split (``val``, ``cross``) of ``<row>_seed<S>.json`` files (camvid_grid.sh).
An ``ovaal+...`` file also yields the same run's final phase without the semi-supervised loss (``ovaal...``) and each
semi ablation on the same rounds (``paper`` -> ``ovaal+paper...``). Runs with the same seed share their round-0
pixels, so differences between rows are taken per seed (paired). Every table works with whatever files exist.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path

from doc_section import print_tables

SPLITS = ("val", "cross")
SPLIT_TITLES = {"val": "val (pool camvid/train -> camvid/val, the tuning split)",
                "cross": "cross (pool 0001TP+0016E5 -> 0006R0 train images, held out by sequence)"}
DEFAULT_ROW, DEFAULT_SEMI_ROW = "ovaal-balance0.5", "ovaal+-balance0.5"  # the product default (CLASS_BALANCE=0.5)
OVA_ROWS = (DEFAULT_ROW, DEFAULT_SEMI_ROW, "ovaal+paper-balance0.5", "ovaal+unbalanced-balance0.5",
            "ovaal-balance1", "ovaal+-balance1", "ovaal+paper-balance1", "ovaal+unbalanced-balance1")
BASELINES = ("pixelpick", "pixelpick-balanced")
ORDER = ("pixelpick", "pixelpick-balanced", "random", "pixelpick-keep-optimizer", *OVA_ROWS)
SEMI_PAIRS = [(DEFAULT_SEMI_ROW, DEFAULT_ROW), ("ovaal+paper-balance0.5", DEFAULT_ROW),
              ("ovaal+unbalanced-balance0.5", DEFAULT_ROW), ("ovaal+-balance1", "ovaal-balance1"),
              ("ovaal+paper-balance1", "ovaal-balance1"), ("ovaal+unbalanced-balance1", "ovaal-balance1")]
PLOTTED = {"pixelpick": "C0", "pixelpick-balanced": "C1", DEFAULT_ROW: "C2", DEFAULT_SEMI_ROW: "C3"}  # row -> colour
LARGE = ("sky", "building", "road", "pavement", "tree", "car")
LARGE_TOLERANCE = -2.0
TARGET_GAIN, TARGET_SEMI, TARGET_SEMI_POSITIVE, TARGET_SEEDS = 2.0, 1.0, 4, 5

Runs = dict[int, dict]  # seed -> RESULT dict (derived rows carry their own ``rounds``)
Groups = dict[str, Runs]  # row name -> runs
Metric = Callable[[dict], "float | None"]


# --- loading -----------------------------------------------------------------------------------------------------

def _derived(name: str, result: dict) -> dict[str, dict]:
    """The rows an ``ovaal+...`` file also holds: its final phase without semi, and each semi ablation."""
    if not name.startswith("ovaal+"):
        return {}
    finals = {}
    if result.get("final_without_semi"):
        finals[name.replace("ovaal+", "ovaal", 1)] = result["final_without_semi"]
    for ablation, final in (result.get("semi_ablations") or {}).items():
        finals[name.replace("ovaal+", f"ovaal+{ablation}", 1)] = final
    return {row: dict(result, rounds=result["rounds"][:-1] + [final]) for row, final in finals.items()}


def load(folder: Path) -> Groups:
    """Rows of one split folder: name -> seed -> result."""
    groups: Groups = {}
    for path in sorted(folder.glob("*_seed*.json")):
        result = json.loads(path.read_text())
        name = path.stem.rsplit("_seed", 1)[0]
        seed = int(result["config"]["seed"])
        for row, run in {name: result, **_derived(name, result)}.items():
            groups.setdefault(row, {})[seed] = run
    return groups


def load_splits(folder: Path) -> dict[str, Groups]:
    """Each split present (``val`` then ``cross``); a folder of result files without split subfolders is one split."""
    splits = {s: load(folder / s) for s in SPLITS if (folder / s).is_dir()}
    splits = {s: g for s, g in splits.items() if g}
    if not splits and any(folder.glob("*_seed*.json")):
        splits[folder.name] = load(folder)
    return splits


def ordered(groups: Groups) -> list[str]:
    return [n for n in ORDER if n in groups] + sorted(n for n in groups if n not in ORDER)


# --- numbers -----------------------------------------------------------------------------------------------------

def final_miou(run: dict) -> float:
    return run["rounds"][-1]["miou"]


def class_iou(name: str) -> Metric:
    return lambda run: run["rounds"][-1]["per_class_iou"].get(name)


def values(runs: Runs, metric: Metric = final_miou) -> list[float]:
    return [v for _, run in sorted(runs.items()) if (v := metric(run)) is not None]


def paired(groups: Groups, row: str, base: str, metric: Metric = final_miou) -> list[float]:
    """``row - base`` per seed both have (a seed fixes the round-0 pixels), where the metric is defined for both."""
    if row not in groups or base not in groups:
        return []
    out = []
    for seed in sorted(set(groups[row]) & set(groups[base])):
        a, b = metric(groups[row][seed]), metric(groups[base][seed])
        if a is not None and b is not None:
            out.append(a - b)
    return out


def fmt(vals: list[float], digits: int = 2, sign: bool = False) -> str:
    """``mean ± std`` (just the value for one seed, ``-`` for none)."""
    if not vals:
        return "-"
    mean = f"{statistics.mean(vals):{'+' if sign else ''}.{digits}f}"
    return mean if len(vals) == 1 else f"{mean} ± {statistics.stdev(vals):.{digits}f}"


def mean(vals: list[float], form: str = "{:+.1f}") -> str:
    return form.format(statistics.mean(vals)) if vals else "-"


def section(title: str, header: list[str], rows: list[list[str]], empty: str) -> str:
    """A titled table, or a sentence saying why there is none yet."""
    return f"##### {title}\n\n" + (table(header, rows) if rows else f"{empty}\n")


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


# --- per-split sections ------------------------------------------------------------------------------------------

def final_table(groups: Groups) -> str:
    """(a) final mIoU per row: mean ± std, seeds, and each seed."""
    seeds = sorted({s for runs in groups.values() for s in runs})
    rows = [[n, str(len(groups[n])), fmt(values(groups[n]))]
            + [f"{final_miou(groups[n][s]):.2f}" if s in groups[n] else "-" for s in seeds] for n in ordered(groups)]
    return section("Final mIoU (%)", ["method", "seeds", "mean ± std"] + [f"seed {s}" for s in seeds], rows, "")


def comparisons(groups: Groups) -> list[tuple[str, str]]:
    """Every OVA row and every exploratory row (a name outside ORDER) against each baseline, an exploratory row also
    against the baseline run the same way (``ovaal-x-final6`` - ``pixelpick-final6``), then OVAAL+ - OVAAL."""
    extra = [n for n in ordered(groups) if n not in ORDER]
    pairs = [(row, base) for row in [*OVA_ROWS, *extra] for base in BASELINES]
    pairs += [(row, f"{base}-{row.rsplit('-', 1)[1]}") for row in extra for base in BASELINES if "-" in row]
    return [p for p in pairs + SEMI_PAIRS if p[0] in groups and p[1] in groups and p[0] != p[1]]


def paired_table(groups: Groups) -> str:
    """(b) paired final-mIoU differences per seed."""
    rows = []
    for row, base in comparisons(groups):
        diffs = paired(groups, row, base)
        if diffs:
            std = f"{statistics.stdev(diffs):.2f}" if len(diffs) > 1 else "-"
            rows.append([f"{row} - {base}", str(len(diffs)), f"{statistics.mean(diffs):+.2f}", std,
                         f"{min(diffs):+.2f}", f"{sum(d > 0 for d in diffs)}/{len(diffs)}"])
    return section("Paired differences of final mIoU (same seed = same round-0 pixels)",
                   ["difference", "seeds", "mean", "std", "min", "positive seeds"], rows,
                   "No two compared rows share a seed yet.")


def class_table(groups: Groups, classes: list[str]) -> str:
    """(c) per-class IoU after the last phase, mean over seeds."""
    rows = [[n] + [mean(values(groups[n], class_iou(c)), "{:.1f}") for c in classes] for n in ordered(groups)]
    return section("Per-class IoU (%) after the last phase, mean over seeds", ["method", *classes], rows, "")


def large_class_table(groups: Groups) -> str:
    """(c) each OVA row minus pixelpick on the large classes (paired), bold where below the tolerance; an
    exploratory row minus pixelpick run the same way where there is one (``pixelpick-final6``)."""
    rows = []
    extra = [n for n in ordered(groups) if n not in ORDER and not n.startswith("pixelpick")]
    for row in (r for r in (*OVA_ROWS, *extra) if r in groups and "pixelpick" in groups):
        base = f"pixelpick-{row.rsplit('-', 1)[1]}" if row in extra else "pixelpick"
        base = base if base in groups else "pixelpick"
        cells = [mean(paired(groups, row, base, class_iou(c))) for c in LARGE]
        rows.append([f"{row} - {base}"] + [f"**{c}**" if c != "-" and float(c) < LARGE_TOLERANCE else c
                                           for c in cells])
    return section(f"Large classes: IoU difference to pixelpick (paired mean; bold = below {LARGE_TOLERANCE:+.0f})",
                   ["difference", *LARGE], rows, "No pixelpick and OVA rows with a common seed yet.")


def phase_label(rnd: dict) -> str:
    px = f"{rnd['labelled_pixels_per_image']:.0f} px"
    return px if rnd["phase"] == "active" else f"{px}, {rnd['phase']}"


def round_table(groups: Groups) -> str:
    """(d) mIoU per round (and the final phase), mean ± std over seeds."""
    phases = max(len(r["rounds"]) for runs in groups.values() for r in runs.values())
    rows = []
    for n in ordered(groups):
        runs = list(groups[n].values())
        cells = [fmt([r["rounds"][i]["miou"] for r in runs if len(r["rounds"]) > i]) for i in range(phases)]
        longest = max(runs, key=lambda r: len(r["rounds"]))["rounds"]
        cells = [f"{c} ({phase_label(longest[i])})" if i < len(longest) else c for i, c in enumerate(cells)]
        rows.append([n, str(len(runs))] + cells)
    header = ["method", "seeds"] + [f"round {i}" for i in range(phases)]
    return section("mIoU (%) per round, mean ± std over seeds", header, rows, "")


def noise_table(groups: Groups) -> str:
    """(d) the protocol's noise: the change from the last active round to the final phase, and the seed spread."""
    rows = []
    for n in (r for r in ("random", "pixelpick") if r in groups):
        runs = list(groups[n].values())
        change = [r["rounds"][-1]["miou"] - last_active(r)["miou"] for r in runs]
        rows.append([n, str(len(runs)), fmt(change, sign=True), fmt(values(groups[n]))])
    return section("Protocol noise: last active round -> final phase (same pixels, one more epoch)",
                   ["method", "seeds", "change (mean ± std)", "final mIoU (mean ± std)"], rows,
                   "No random or pixelpick run yet.")


def cost_table(groups: Groups) -> str:
    """Selection diversity (the pixels the method chose) and wall time per row."""
    rows = [[n, fmt(values(groups[n], lambda r: r["diversity"]["spatial"]), 1),
             fmt(values(groups[n], lambda r: r["diversity"]["semantic"]), 3),
             fmt(values(groups[n], lambda r: r["rounds"][-1].get("void_answers")), 0),
             fmt(values(groups[n], lambda r: r["total_seconds"]), 0)] for n in ordered(groups)]
    return section("Selection diversity and wall time (an ovaal+ file's derived rows repeat its numbers)",
                   ["method", "spatial (px)", "semantic (bits)", "void answers", "wall time (s)"], rows, "")


def last_active(run: dict) -> dict:
    return [r for r in run["rounds"] if r["phase"] == "active"][-1]


def split_report(split: str, groups: Groups) -> str:
    classes = next(iter(next(iter(groups.values())).values()))["classes"]
    parts = [final_table(groups), paired_table(groups), class_table(groups, classes), large_class_table(groups),
             round_table(groups), noise_table(groups), cost_table(groups)]
    return f"#### Split {SPLIT_TITLES.get(split, split)}\n\n" + "\n".join(parts)


# --- targets -----------------------------------------------------------------------------------------------------

def status(seeds: int, ok: bool) -> str:
    return "NOT ENOUGH SEEDS" if seeds < TARGET_SEEDS else "MET" if ok else "NOT MET"


def gain_check(diffs: list[float], threshold: float, positive_share: float = 0.0) -> tuple[str, str]:
    """A paired difference's verdict on one split: mean >= threshold (and enough positive seeds)."""
    if not diffs:
        return "NOT ENOUGH SEEDS", "no paired seeds"
    positive = sum(d > 0 for d in diffs)
    ok = statistics.mean(diffs) >= threshold and positive >= positive_share * len(diffs)
    return status(len(diffs), ok), f"{fmt(diffs, sign=True)}, {positive}/{len(diffs)} seeds positive"


def large_check(groups: Groups, row: str) -> tuple[str, str]:
    """Every large class within the tolerance of pixelpick (paired mean) on one split."""
    diffs = {c: paired(groups, row, "pixelpick", class_iou(c)) for c in LARGE}
    if not all(diffs.values()):
        return "NOT ENOUGH SEEDS", "no paired seeds"
    means = {c: statistics.mean(d) for c, d in diffs.items()}
    worst = min(means, key=means.get)
    below = [c for c in LARGE if means[c] < LARGE_TOLERANCE]
    seeds = min(len(d) for d in diffs.values())
    return status(seeds, not below), (f"worst {worst} {means[worst]:+.1f}, below {LARGE_TOLERANCE:+.0f}: "
                                      f"{', '.join(below) or 'none'}, n={seeds}")


def target_line(title: str, splits: dict[str, Groups], check: Callable[[Groups], tuple[str, str]]) -> str:
    """One target over both splits: NOT MET if a split with enough seeds fails, else NOT ENOUGH SEEDS if one lacks
    seeds, else MET."""
    verdicts = {s: check(splits[s]) if s in splits else ("NOT ENOUGH SEEDS", "no results") for s in SPLITS}
    found = [v[0] for v in verdicts.values()]
    overall = next((s for s in ("NOT MET", "NOT ENOUGH SEEDS") if s in found), "MET")
    return f"- {title}: **{overall}** ({'; '.join(f'{s}: {v[1]} -> {v[0]}' for s, v in verdicts.items())})"


def targets(splits: dict[str, Groups]) -> str:
    """(e) the targets for the product default (OVAAL, CLASS_BALANCE=0.5) and its OVAAL+, stated from the numbers."""
    lines = []
    for row in (DEFAULT_ROW, DEFAULT_SEMI_ROW):
        for base in BASELINES:
            lines.append(target_line(f"{row} - {base} >= {TARGET_GAIN:+.1f} mIoU on both splits", splits,
                                     lambda g, r=row, b=base: gain_check(paired(g, r, b), TARGET_GAIN)))
        lines.append(target_line(f"{row}: large classes ({', '.join(LARGE)}) within {-LARGE_TOLERANCE:.0f} IoU of "
                                 "pixelpick on both splits", splits, lambda g, r=row: large_check(g, r)))
    share = TARGET_SEMI_POSITIVE / TARGET_SEEDS
    lines.append(target_line(f"{DEFAULT_SEMI_ROW} - {DEFAULT_ROW} >= {TARGET_SEMI:+.1f} with >= "
                             f"{TARGET_SEMI_POSITIVE} of {TARGET_SEEDS} seeds positive, on both splits", splits,
                             lambda g: gain_check(paired(g, DEFAULT_SEMI_ROW, DEFAULT_ROW), TARGET_SEMI, share)))
    return (f"#### Targets (product default; a verdict needs {TARGET_SEEDS} paired seeds)\n\n"
            + "\n".join(lines) + "\n")


# --- plot --------------------------------------------------------------------------------------------------------

def curve(runs: Runs) -> tuple[list[float], list[float], list[float]]:
    """x (labelled pixels per image; the final phase one step right of the last round), mean and std of mIoU."""
    rounds = [r["rounds"] for r in runs.values()]
    phases = min(len(r) for r in rounds)
    xs = [float(rnd["labelled_pixels_per_image"]) for rnd in rounds[0][:phases]]
    if phases > 1 and rounds[0][phases - 1]["phase"] != "active":
        xs[-1] = xs[-2] + (xs[-2] - xs[-3] if phases > 2 else xs[-2])
    miou = [[r[i]["miou"] for r in rounds] for i in range(phases)]
    return xs, [statistics.mean(m) for m in miou], [statistics.stdev(m) if len(m) > 1 else 0.0 for m in miou]


def plot_split(ax, split: str, groups: Groups | None) -> None:
    ax.set_title(SPLIT_TITLES.get(split, split).split(" (")[0])
    if not groups:
        ax.text(0.5, 0.5, "no results yet", ha="center", va="center", transform=ax.transAxes)
    ticks: dict[float, str] = {}
    for name in (n for n in PLOTTED if groups and n in groups):
        xs, means, stds = curve(groups[name])
        seeds = len(groups[name])
        ax.plot(xs, means, marker="o", linestyle="--" if "+" in name else "-", color=PLOTTED[name],
                label=f"{name} ({seeds} seed{'s' if seeds > 1 else ''})")
        ax.fill_between(xs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                        color=PLOTTED[name], alpha=0.15)
        rounds = next(iter(groups[name].values()))["rounds"]
        ticks.update({x: f"{r['labelled_pixels_per_image']:.0f}" + ("" if r["phase"] == "active" else "\nfinal")
                      for x, r in zip(xs, rounds)})
    if ticks:
        ax.set_xticks(list(ticks), list(ticks.values()))
        ax.legend(fontsize=8)
    ax.set_xlabel("labelled pixels per image")
    ax.grid(alpha=0.3)


def plot(splits: dict[str, Groups], out: str) -> None:
    """A budget curve per split: mIoU against labelled pixels per image, mean over seeds, band = ± std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(SPLITS) + [s for s in splits if s not in SPLITS]
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4), sharey=True, squeeze=False)
    for ax, split in zip(axes[0], names):
        plot_split(ax, split, splits.get(split))
    axes[0][0].set_ylabel("mIoU (%)")
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


# --- command line ------------------------------------------------------------------------------------------------

def main(folder: str) -> None:
    splits = load_splits(Path(folder))
    if not splits:
        print(f"No results in {folder} yet.")
        return
    for split, groups in splits.items():
        print(split_report(split, groups))
    print(targets(splits), end="")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Markdown tables of a folder of simulator results, per split")
    parser.add_argument("folder", nargs="?", default="docs/results/camvid")
    parser.add_argument("--write-doc", action="store_true",
                        help="also write the tables into docs/benchmarks.md (see --section)")
    parser.add_argument("--section", default="CAMVID-TABLES", help="the docs/benchmarks.md section to write")
    parser.add_argument("--plot", help="also draw the budget curves (one panel per split) into this PNG")
    args = parser.parse_args()
    print_tables(lambda: main(args.folder), args.section if args.write_doc else None)
    if args.plot:
        plot(load_splits(Path(args.folder)), args.plot)
