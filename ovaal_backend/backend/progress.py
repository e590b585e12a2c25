"""A project's progress as plain facts for ``/metrics`` and the dashboard: budget, clicks, pre-label quality, timeline.

Everything here is read from the project's SQLite file (nothing is stored for it), so it survives restarts and
needs no ground truth. The one computation with a meaning of its own is ``prelabel_quality``: per round and per
class, how often the annotator kept the class a query point was pre-labelled with (the model's guess; round 0's
random points carry the ignore label, since there is no model yet). ``project_facts`` gathers the rest.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..config import Config
from ..engine.rounds import RoundPlan
from .convert import percent_to_pixel
from .round_store import RoundStore
from .store import LabelStore

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
        answers: ``source task id -> (N, 3)`` stored ``(row, col, label)`` (``LabelStore.labelled_points``).
        label_names: Stored label index -> class name (the project state's ``label_names``).
        ignore_label: The ignore label's name (the pre-label of round 0's random points).

    Returns:
        ``{str(round): {class name: {"kept": k, "asked": n}}}``, rounds and classes in ascending / first-seen order;
        only rounds with at least one answered point.
    """
    lookups: dict[int, dict[tuple[int, int], int]] = {}
    out: dict[int, dict[str, dict[str, int]]] = {}
    for round_index, source, regions in queries:
        if source not in lookups:
            table = np.asarray(answers.get(source, np.zeros((0, 3), dtype=np.int64))).reshape(-1, 3)
            lookups[source] = {(int(r), int(c)): int(lab) for r, c, lab in table.tolist()}
        lookup = lookups[source]
        for region in regions:
            value = region.get("value") or {}
            labels = value.get("keypointlabels") or []
            try:
                width, height = int(region["original_width"]), int(region["original_height"])
                col, row = percent_to_pixel(float(value["x"]), float(value["y"]), width, height)
            except (KeyError, TypeError, ValueError):
                continue
            if len(labels) != 1 or (row, col) not in lookup:
                continue
            stored = lookup[(row, col)]
            answer = label_names[stored] if 0 <= stored < len(label_names) else ignore_label
            cell = out.setdefault(int(round_index), {}).setdefault(str(labels[0]), {"kept": 0, "asked": 0})
            cell["asked"] += 1
            cell["kept"] += int(answer == labels[0])
    return {str(r): out[r] for r in sorted(out)}


def answered_queries(rounds: RoundStore, key: str) -> list[tuple[int, int, list[dict[str, Any]]]]:
    """``(round, source task id, keypoint regions)`` of every query task with a submitted (not skipped) annotation,
    its regions as it was imported (what ``RoundStore.query_prediction`` gives), by round and task; one query."""
    with rounds._read() as db:
        rows = db.execute(
            "SELECT q.round_index, q.source_task_id, r.result FROM query_tasks q JOIN round_queries r "
            "ON r.project = q.project AND r.task_id = q.task_id WHERE q.project = ? AND EXISTS (SELECT 1 FROM "
            "annotations a WHERE a.project = q.project AND a.task_id = q.task_id AND a.cancelled = 0) "
            "ORDER BY q.round_index, q.task_id", (key,)).fetchall()
    return [(int(r), int(source), json.loads(result)) for r, source, result in rows]


def class_clicks(answers: Mapping[int, np.ndarray], label_names: Sequence[str], classes: Sequence[str],
                 ignore_label: str = DEFAULT_IGNORE) -> dict[str, int]:
    """Stored clicks per class name: the current classes first (zeros included), then removed classes and the
    ignore label when they have any."""
    counts = np.zeros(len(label_names) + 1, dtype=np.int64)  # the last cell counts IGNORE_INDEX
    for table in answers.values():
        labels = np.asarray(table).reshape(-1, 3)[:, 2]
        labels = np.where((labels >= 0) & (labels < len(label_names)), labels, len(label_names))
        counts += np.bincount(labels, minlength=len(counts))
    out = {name: 0 for name in classes}
    for name, count in zip([*label_names, ignore_label], counts.tolist()):
        if count or name in out:
            out[name] = out.get(name, 0) + int(count)
    return out


def round_answers(store: LabelStore, key: str) -> dict[int, dict[str, Any]]:
    """Per round: stored annotations (skipped ones included), and when the first and the last was stored."""
    with store._read() as db:
        rows = db.execute("SELECT round_index, COUNT(*), MIN(updated_at), MAX(updated_at) FROM annotations "
                          "WHERE project = ? GROUP BY round_index", (key,)).fetchall()
    return {int(r): {"annotations": int(n), "first": first, "last": last} for r, n, first, last in rows}


def round_task_counts(rounds: RoundStore, key: str) -> dict[int, int]:
    """Query tasks per round."""
    with rounds._read() as db:
        rows = db.execute("SELECT round_index, COUNT(*) FROM query_tasks WHERE project = ? GROUP BY round_index",
                          (key,)).fetchall()
    return {int(r): int(n) for r, n in rows}


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


def project_facts(config: Config, plan: RoundPlan, store: LabelStore, rounds: RoundStore, key: str,
                  state: Any, ignore_label: str | None) -> dict[str, Any]:
    """What ``ProjectDriver.metrics`` adds for the dashboard.

    What depends on the stored clicks (per image, per class, quality) is computed again only when the annotations,
    the query tasks, the pool or the label names changed since the last call (the dashboard asks every few seconds).

    Returns:
        ``device``; ``ignore_label`` (its name); ``budget`` (``per_image`` = INIT_PIXELS + ROUNDS *
        PIXELS_PER_ROUND, ``asked_per_image`` up to the current round, ``init_pixels``, ``pixels_per_round``);
        ``labelled_per_image`` (source task id -> labelled pixels, every listed source image included);
        ``class_clicks``; ``quality`` (see ``prelabel_quality``); ``timeline`` (see ``round_timeline``);
        ``phase_since`` (see ``phase_since``).
    """
    ignore = ignore_label or DEFAULT_IGNORE
    trainings = rounds.trainings(key)
    by_round = round_answers(store, key)
    with store._read() as db:
        fingerprint = (str(store.path), key, ignore, tuple(state.label_names), tuple(state.classes), *db.execute(
            "SELECT (SELECT COUNT(*) FROM annotations WHERE project = ?1), (SELECT MAX(seq) FROM annotations WHERE "
            "project = ?1), (SELECT COUNT(*) FROM query_tasks WHERE project = ?1), (SELECT COUNT(*) FROM sources "
            "WHERE project = ?1)", (key,)).fetchone())
    clicks = _CLICK_FACTS.get(fingerprint)
    if clicks is None:
        answers = store.labelled_points(key)
        per_image = {str(s): 0 for s in rounds.sources(key)}
        per_image.update({str(s): int(len(t)) for s, t in answers.items()})
        clicks = {"labelled_per_image": per_image,
                  "class_clicks": class_clicks(answers, state.label_names, state.classes, ignore),
                  "quality": prelabel_quality(answered_queries(rounds, key), answers, state.label_names, ignore)}
        _CLICK_FACTS.put(fingerprint, clicks)
    asked = plan.init_pixels + min(state.round, plan.rounds) * plan.pixels_per_round
    return {
        "device": device_name(config), "ignore_label": ignore,
        "budget": {"per_image": plan.budget, "asked_per_image": asked, "init_pixels": plan.init_pixels,
                   "pixels_per_round": plan.pixels_per_round},
        **json.loads(json.dumps(clicks)),  # a copy: callers may change what they get
        "timeline": round_timeline(state.round, trainings, by_round, round_task_counts(rounds, key)),
        "phase_since": _finite(phase_since(state.phase, state.training_round, state.version, trainings, by_round)),
    }


class _Cache:
    """A few recent results by key (one per project and state of its clicks), shared by the request threads."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: dict[Any, Any] = {}
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            return self._items.get(key)

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._items.pop(key, None)
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.pop(next(iter(self._items)))


_CLICK_FACTS = _Cache(32)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
