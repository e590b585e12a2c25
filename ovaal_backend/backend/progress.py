"""A project's progress as plain facts for ``/metrics`` and the dashboard: budget, clicks, pre-label quality, timeline.

Everything here is computed from what the project's store gives (``ProjectStore``'s repositories hold the queries;
nothing is stored for it), so it survives restarts and needs no ground truth. The one computation with a meaning of
its own is ``prelabel_quality``: per round and per class, how often the annotator kept the class a query point was
pre-labelled with (the model's guess; round 0's random points carry the ignore label, since there is no model yet).
``project_facts`` gathers the rest.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..config import Config
from ..engine.rounds import RoundPlan
from .convert import percent_to_pixel

DEFAULT_IGNORE = "ignore"
"""Name shown for IGNORE_INDEX answers when the label config is not known."""


def prelabel_quality(queries: Iterable[tuple[int, int, Sequence[dict[str, Any]]]],
                     answers: Mapping[int, np.ndarray], label_names: Sequence[str],
                     ignore_label: str = DEFAULT_IGNORE) -> dict[str, dict[str, dict[str, int]]]:
    """How often annotators kept the pre-label of a query point, per round and per pre-labelled class.

    A point counts as asked when the annotator's stored answer lies on its pixel (a skipped task or a moved or
    deleted point has none there and counts nothing); it counts as kept when that answer is the pre-label's class.
    An answer stored as IGNORE_INDEX ("can't tell", or a class the config lacks) is the ignore label.

    Args:
        queries: ``(round, source task id, keypoint regions)`` per answered query task; each region as imported
            (``value.x``/``value.y`` in percent, ``value.keypointlabels`` = the pre-label, ``original_width`` and
            ``original_height``). A region without exactly one label or without a size is left out.
        answers: ``source task id -> (N, 3)`` stored ``(row, col, label)`` (``Clicks.labelled_points``).
        label_names: Stored label index -> class name (the project state's ``label_names``).
        ignore_label: The ignore label's name (the pre-label of round 0's random points).

    Returns:
        ``{str(round): {class name: {"kept": k, "asked": n}}}``, rounds ascending and classes by name; only rounds
        with at least one answered point.
    """
    lookups: dict[int, dict[tuple[int, int], int]] = {}
    cells: Counter[tuple[int, str, str]] = Counter()
    for round_index, source, regions in queries:
        if source not in lookups:
            lookups[source] = _answer_lookup(answers.get(source))
        pixels, labels = prelabel_points(regions)
        count_kept(cells, int(round_index), pixels, labels, lookups[source], label_names, ignore_label)
    return quality_table(cells)


def prelabel_points(regions: Sequence[dict[str, Any]]) -> tuple[list[tuple[int, int]], list[str]]:
    """The pixels ``(row, col)`` and pre-labels of a query task's keypoint regions as imported (``value.x``/``value.y``
    in percent of ``original_width``/``original_height``, ``value.keypointlabels`` = the pre-label); a region
    without exactly one label or without a size is left out."""
    pixels, labels = [], []
    for region in regions:
        value = region.get("value") or {}
        names = value.get("keypointlabels") or []
        try:
            width, height = int(region["original_width"]), int(region["original_height"])
            col, row = percent_to_pixel(float(value["x"]), float(value["y"]), width, height)
        except (KeyError, TypeError, ValueError):
            continue
        if len(names) == 1:
            pixels.append((row, col))
            labels.append(str(names[0]))
    return pixels, labels


def _answer_lookup(table: np.ndarray | None) -> dict[tuple[int, int], int]:
    """``(row, col) -> stored label`` of one image's answers (``Clicks.labelled_points``; None = none)."""
    if table is None:
        return {}
    return {(r, c): lab for r, c, lab in np.asarray(table).reshape(-1, 3).tolist()}


def count_kept(cells: Counter[tuple[int, str, str]], round_index: int, pixels: Iterable[Hashable],
               labels: Iterable[str], lookup: Mapping[Hashable, int], label_names: Sequence[str],
               ignore_label: str) -> None:
    """Add one answered query task's points to ``cells`` (``(round, pre-label, "asked" | "kept") -> count``): a point
    is asked when an answer lies on its pixel, kept when that answer is its pre-label (see ``prelabel_quality``).
    ``pixels`` are keys of ``lookup`` (its image's answers): ``(row, col)`` or any one value per pixel."""
    for pixel, label in zip(pixels, labels, strict=True):
        stored = lookup.get(pixel)
        if stored is None:
            continue
        answer = label_names[stored] if 0 <= stored < len(label_names) else ignore_label
        cells[(round_index, label, "asked")] += 1
        cells[(round_index, label, "kept")] += int(answer == label)


def quality_table(cells: Mapping[tuple[int, str, str], int]) -> dict[str, dict[str, dict[str, int]]]:
    """``prelabel_quality``'s layout from summed cells: rounds ascending, classes by name, only asked cells."""
    out: dict[int, dict[str, dict[str, int]]] = {}
    for (round_index, name, field), count in sorted(cells.items()):
        if field == "asked" and count:
            out.setdefault(round_index, {})[name] = {"kept": int(cells.get((round_index, name, "kept"), 0)),
                                                     "asked": int(count)}
    return {str(r): out[r] for r in sorted(out)}


def label_counts(answers: Mapping[int, np.ndarray]) -> Counter[int]:
    """Stored clicks per stored label value (IGNORE_INDEX included), over every image of ``answers``."""
    counts: Counter[int] = Counter()
    for table in answers.values():
        counts.update(np.asarray(table).reshape(-1, 3)[:, 2].tolist())
    return counts


def class_clicks(answers: Mapping[int, np.ndarray], label_names: Sequence[str], classes: Sequence[str],
                 ignore_label: str = DEFAULT_IGNORE) -> dict[str, int]:
    """Stored clicks per class name: the current classes first (zeros included), then removed classes and the
    ignore label when they have any."""
    return clicks_by_name(label_counts(answers), label_names, classes, ignore_label)


def clicks_by_name(counts: Mapping[int, int], label_names: Sequence[str], classes: Sequence[str],
                   ignore_label: str = DEFAULT_IGNORE) -> dict[str, int]:
    """``class_clicks`` from stored clicks per label value (``label_counts``); a value outside ``label_names``
    (IGNORE_INDEX) counts for the ignore label."""
    by_name: dict[str, int] = {}
    for value, count in sorted(counts.items()):
        name = label_names[value] if 0 <= value < len(label_names) else ignore_label
        by_name[name] = by_name.get(name, 0) + int(count)
    out = {name: 0 for name in classes}
    for name in [*label_names, ignore_label]:
        if by_name.get(name) or name in out:
            out[name] = by_name.get(name, 0)
    return out


def round_timeline(current_round: int, trainings: Sequence[dict[str, Any]], answers: Mapping[int, dict[str, Any]],
                   query_tasks: Mapping[int, int]) -> list[dict[str, Any]]:
    """One entry per round 0..``current_round``: ``opened`` (when the training that chose it finished; None for
    round 0 and for trainings recorded without a time), ``first_answer``, ``last_answer``, ``annotations`` and
    ``query_tasks``, and ``trained`` (when the training that ended it finished, None while it is open)."""
    finished = {int(t["round"]): t.get("finished_at") for t in trainings if "round" in t}
    out = []
    for r in range(max(current_round, 0) + 1):
        seen = answers.get(r, {})
        out.append({"round": r, "query_tasks": int(query_tasks.get(r, 0)), "annotations": seen.get("annotations", 0),
                    "opened": finished.get(r - 1), "first_answer": seen.get("first"),
                    "last_answer": seen.get("last"), "trained": finished.get(r)})
    return out


def phase_since(phase: str, training_round: int, version: int, trainings: Sequence[dict[str, Any]],
                answers: Mapping[int, dict[str, Any]]) -> float | None:
    """When the current phase began, as well as stored facts tell (Unix time; None when they do not).

    ``training``: the last answer of the round being trained (the answer that ended it); ``publishing``,
    ``querying`` and ``done``: when the current version's training finished.
    """
    if phase == "training":
        return answers.get(training_round, {}).get("last")
    if phase in ("publishing", "querying", "done") and version > 0:
        newest = [t for t in trainings if t.get("version") == version]
        return newest[-1].get("finished_at") if newest else None
    return None


def device_name(config: Config) -> str:
    """The device round jobs train on, e.g. ``cpu`` or ``cuda:0 (NVIDIA H100 80GB HBM3)``."""
    from ..engine.runtime import resolve_device

    try:
        device = resolve_device(config.device)
    except (RuntimeError, ValueError) as err:
        return f"{config.device} (unavailable: {err})"
    if device.type != "cuda":
        return str(device)
    import torch

    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def project_facts(config: Config, plan: RoundPlan, trainings: Sequence[dict[str, Any]], stored: Mapping[str, Any],
                  state: Any, ignore_label: str | None) -> dict[str, Any]:
    """What ``ProjectDriver.metrics`` adds for the dashboard, from ``ProjectFacts.get`` and the current state.

    Returns:
        ``device``; ``ignore_label`` (its name); ``budget`` (``per_image`` = INIT_PIXELS + ROUNDS *
        PIXELS_PER_ROUND, ``asked_per_image`` up to the current round, ``init_pixels``, ``pixels_per_round``);
        ``labelled_per_image`` (source task id -> labelled pixels, every listed source image included);
        ``class_clicks``; ``quality`` (see ``prelabel_quality``); ``timeline`` (see ``round_timeline``);
        ``phase_since`` (see ``phase_since``).
    """
    asked = plan.init_pixels + min(state.round, plan.rounds) * plan.pixels_per_round
    by_round = stored["answers_by_round"]
    return {
        "device": device_name(config), "ignore_label": ignore_label or DEFAULT_IGNORE,
        "budget": {"per_image": plan.budget, "asked_per_image": asked, "init_pixels": plan.init_pixels,
                   "pixels_per_round": plan.pixels_per_round},
        "labelled_per_image": stored["labelled_per_image"], "class_clicks": stored["class_clicks"],
        "quality": stored["quality"],
        "timeline": round_timeline(state.round, trainings, by_round, stored["query_tasks_by_round"]),
        "phase_since": _finite(phase_since(state.phase, state.training_round, state.version, trainings, by_round)),
    }


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
