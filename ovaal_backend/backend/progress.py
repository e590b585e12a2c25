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
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import IGNORE_INDEX, Config
from ..engine.rounds import RoundPlan
from .convert import percent_to_pixel
from .round_store import RoundStore
from .store import LabelStore, id_chunks

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


def answered_queries(rounds: RoundStore, key: str,
                     sources: Collection[int] | None = None) -> list[tuple[int, int, list[dict[str, Any]]]]:
    """``(round, source task id, keypoint regions)`` of every query task (on the ``sources`` images only, when
    given) with a submitted (not skipped) annotation, its regions as it was imported (what
    ``RoundStore.query_prediction`` gives), by round and task."""
    query = ("SELECT q.round_index, q.source_task_id, r.result FROM query_tasks q {} JOIN round_queries r "
             "ON r.project = q.project AND r.task_id = q.task_id WHERE q.project = ? AND EXISTS (SELECT 1 FROM "
             "annotations a WHERE a.project = q.project AND a.task_id = q.task_id AND a.cancelled = 0)")
    order = " ORDER BY q.round_index, q.task_id"
    with rounds._read() as db:
        if sources is None:
            rows = db.execute(query.format("") + order, (key,)).fetchall()
        else:
            rows = []
            for chunk in id_chunks(sorted({int(s) for s in sources})):  # by image: its index, not every task's
                rows += db.execute(query.format("INDEXED BY query_tasks_source") + f" AND q.source_task_id IN "
                                   f"({', '.join('?' * len(chunk))})" + order, (key, *chunk)).fetchall()
    return [(int(r), int(source), json.loads(result)) for r, source, result in rows]


def label_counts(answers: Mapping[int, np.ndarray]) -> Counter[int]:
    """Stored clicks per stored label value (IGNORE_INDEX included), over every image of ``answers``."""
    counts: Counter[int] = Counter()
    for table in answers.values():
        values, n = np.unique(np.asarray(table).reshape(-1, 3)[:, 2], return_counts=True)
        counts.update(dict(zip(values.tolist(), n.tolist(), strict=True)))
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


@dataclass(frozen=True)
class ImageFacts:
    """What one source image adds to the project's facts: its labelled pixels, their stored labels, and the
    pre-label quality cells of its answered query tasks (``(round, pre-label, "kept" | "asked") -> count``)."""

    pixels: int
    labels: Counter[int]
    quality: Counter[tuple[int, str, str]]


class ProjectFacts:
    """The facts of one project's stored clicks, kept up to date image by image; one caller computes at a time.

    Why: every open dashboard asks every few seconds, and the facts were computed again from every click of the
    project after each new annotation (5,000 images: 13-15 s a time, holding the GIL while webhooks waited).

    A call first reads a few totals in SQL (``_SIGNATURES``: of the annotations, the query tasks, the imported
    queries, the listed sources); when they are unchanged, the last result stands. Otherwise it reads the changed
    kind's signature per image and recomputes only the images whose signature changed (new, updated or deleted
    answers on them, query tasks added or forgotten), moving the totals by the difference. The label names, the
    classes and the ignore label's name are part of the key: a change recomputes every image.

    While one caller computes, the others get the last result at once instead of computing the same thing
    again (never a pile-up); only before the first result exists do they wait for it.

    Args:
        store: The project's clicks.
        rounds: Its query tasks and sources (the same SQLite file).
        key: The project key.
    """

    def __init__(self, store: LabelStore, rounds: RoundStore, key: str) -> None:
        self.store, self.rounds, self.key = store, rounds, key
        self._busy = threading.Lock()  # held by the one caller computing
        self._result: dict[str, Any] | None = None
        self._names: tuple[tuple[str, ...], tuple[str, ...], str] | None = None
        self._totals: list[tuple[Any, ...]] = []  # per kind of _SIGNATURES, then the listed sources'
        self._signatures: list[dict[int, tuple[Any, ...]]] = [{} for _ in _SIGNATURES]  # per kind, per image
        self._answer_sums = (0, 0, 0)  # _sums of the annotation signatures
        self._images: dict[int, ImageFacts] = {}
        self._labels: Counter[int] = Counter()
        self._quality: Counter[tuple[int, str, str]] = Counter()
        self._stored: dict[str, Any] = {}  # the per-round counts
        self._listed: list[int] = []  # the listed source images

    def get(self, label_names: Sequence[str], classes: Sequence[str], ignore_label: str | None) -> dict[str, Any]:
        """``labelled_per_image``, ``class_clicks``, ``quality``, ``points``, ``ignored_points`` (as
        ``LabelStore.counts`` counts them), ``answers_by_round`` (``round_answers``) and ``query_tasks_by_round``;
        a copy the caller may change."""
        if not self._busy.acquire(blocking=self._result is None):
            return _copy(self._result)  # another caller is computing: the last result, at once
        try:
            self._result = self._compute(list(label_names), list(classes), ignore_label or DEFAULT_IGNORE)
            return _copy(self._result)
        finally:
            self._busy.release()

    def _compute(self, label_names: list[str], classes: list[str], ignore: str) -> dict[str, Any]:
        names = (tuple(label_names), tuple(classes), ignore)
        if names != self._names:
            self._names, self._totals, self._signatures = names, [], [{} for _ in _SIGNATURES]
            self._images, self._labels, self._quality = {}, Counter(), Counter()
        totals = self._read_totals()  # read before the rows: a write in between is seen by the next call
        if totals == self._totals and self._result is not None:
            return self._result
        if totals != self._totals:
            changed: set[int] = set()
            for kind, (_, per_image) in enumerate(_SIGNATURES):
                if self._totals and totals[kind] == self._totals[kind]:
                    continue
                recent = self._recent_answers(totals[0]) if kind == 0 and self._totals else None
                if recent is not None:
                    changed |= recent
                    continue
                fresh = self._read_signatures(per_image)
                old = self._signatures[kind]
                changed |= {s for s in fresh.keys() | old.keys() if fresh.get(s) != old.get(s)}
                self._signatures[kind] = fresh
                if kind == 0:
                    self._answer_sums = _sums(fresh.values())
            self._update(changed, label_names, ignore)
            self._stored = {"answers_by_round": round_answers(self.store, self.key),
                            "query_tasks_by_round": round_task_counts(self.rounds, self.key)}
            if not self._totals or totals[-1] != self._totals[-1]:
                self._listed = self._listed_sources()
            self._totals = totals
        per_image = {str(s): 0 for s in self._listed}
        per_image.update({str(s): f.pixels for s, f in sorted(self._images.items()) if f.pixels})
        return {"labelled_per_image": per_image,
                "class_clicks": clicks_by_name(self._labels, label_names, classes, ignore),
                "quality": _quality_table(self._quality),
                "points": sum(f.pixels for f in self._images.values()),
                "ignored_points": int(self._labels.get(IGNORE_INDEX, 0)),
                **self._stored}

    def _update(self, changed: set[int], label_names: list[str], ignore: str) -> None:
        """Recompute the facts of the ``changed`` images and move the totals by the difference."""
        if not changed:
            return
        points = self.store.labelled_points(self.key, changed)
        queries: dict[int, list[tuple[int, int, list[dict[str, Any]]]]] = {}
        for query in answered_queries(self.rounds, self.key, changed):
            queries.setdefault(query[1], []).append(query)
        for source in changed:
            old = self._images.pop(source, None)
            if old is not None:
                self._labels.subtract(old.labels)
                self._quality.subtract(old.quality)
            table = points.get(source)
            if table is None and source not in queries:
                continue
            new = _image_facts(source, table, queries.get(source, []), label_names, ignore)
            self._images[source] = new
            self._labels.update(new.labels)
            self._quality.update(new.quality)
        self._labels = +self._labels  # drop the zeros left by subtracting
        self._quality = +self._quality

    def _recent_answers(self, total: tuple[Any, ...]) -> set[int] | None:
        """The images with annotations stored after the last call (a ``seq`` above the last one seen), their
        annotation signatures brought up to date; None when the project's total says more changed (a deletion):
        then every image's signature is read. Reading only the recent rows keeps a call cheap while answers come in.
        """
        since = self._totals[0][3] or 0
        signatures = self._signatures[0]
        with self.store._read() as db:
            images = sorted(int(r[0]) for r in db.execute(
                "SELECT DISTINCT source_task_id FROM annotations WHERE seq > ? AND project = ?", (since, self.key)))
            fresh: dict[int, tuple[Any, ...]] = {}
            for chunk in id_chunks(images):
                fresh.update((int(source), tuple(values)) for source, *values in db.execute(
                    f"{_ANSWER_SIGNATURE} AND source_task_id IN ({', '.join('?' * len(chunk))}) GROUP BY "
                    "source_task_id", (self.key, *chunk)))
        sums = self._answer_sums
        sums = tuple(a - b for a, b in zip(sums, _sums(signatures[s] for s in images if s in signatures), strict=True))
        sums = tuple(a + b for a, b in zip(sums, _sums(fresh.values()), strict=True))
        if sums != tuple(v or 0 for v in total[:3]):
            return None
        changed = {s for s in images if fresh.get(s) != signatures.get(s)}
        for source in images:
            if source in fresh:
                signatures[source] = fresh[source]
            else:
                signatures.pop(source, None)
        self._answer_sums = sums
        return changed

    def _read_totals(self) -> list[tuple[Any, ...]]:
        with self.store._read() as db:
            return [tuple(db.execute(query, (self.key,)).fetchone())
                    for query in [*(total for total, _ in _SIGNATURES), _LISTED_TOTAL]]

    def _read_signatures(self, query: str) -> dict[int, tuple[Any, ...]]:
        with self.store._read() as db:
            return {int(source): tuple(values) for source, *values in db.execute(query, (self.key,))}

    def _listed_sources(self) -> list[int]:
        with self.rounds._read() as db:
            return [int(r[0]) for r in db.execute("SELECT task_id FROM sources WHERE project = ? ORDER BY task_id",
                                                  (self.key,))]


_ANSWER_SIGNATURE = ("SELECT source_task_id, COUNT(*), SUM(seq), SUM(annotation_id), MAX(seq) FROM annotations "
                     "WHERE project = ?")
_SIGNATURES = (
    ("SELECT COUNT(*), SUM(seq), SUM(annotation_id), MAX(seq) FROM annotations WHERE project = ?",
     _ANSWER_SIGNATURE + " GROUP BY source_task_id"),
    ("SELECT COUNT(*), SUM(task_id) FROM query_tasks WHERE project = ?",
     "SELECT source_task_id, COUNT(*), SUM(task_id) FROM query_tasks WHERE project = ? GROUP BY source_task_id"),
    ("SELECT COUNT(task_id), SUM(task_id) FROM round_queries WHERE project = ?",
     "SELECT source_task_id, COUNT(task_id), SUM(task_id) FROM round_queries WHERE project = ? "
     "GROUP BY source_task_id"))
"""What the facts depend on, per kind ``(project total, per source image)``: annotations (a re-stored one gets a
new ``seq``; a deleted one lowers the count and the sums, and a new one may reuse the deleted newest ``seq`` but
never its id), query tasks, imported queries (their task ids)."""
_LISTED_TOTAL = "SELECT COUNT(*), SUM(task_id) FROM sources WHERE project = ?"


def _image_facts(source: int, table: np.ndarray | None, queries: list[tuple[int, int, list[dict[str, Any]]]],
                 label_names: Sequence[str], ignore: str) -> ImageFacts:
    """One image's share of the facts, from its newest-wins points and its answered query tasks."""
    answers = {} if table is None else {source: table}
    quality: Counter[tuple[int, str, str]] = Counter()
    for round_key, cells in prelabel_quality(queries, answers, label_names, ignore).items():
        for name, cell in cells.items():
            quality[(int(round_key), name, "kept")] += cell["kept"]
            quality[(int(round_key), name, "asked")] += cell["asked"]
    return ImageFacts(pixels=0 if table is None else len(table), labels=label_counts(answers), quality=quality)


def _quality_table(cells: Mapping[tuple[int, str, str], int]) -> dict[str, dict[str, dict[str, int]]]:
    """``prelabel_quality``'s layout from summed cells: rounds ascending, classes by name, only asked cells."""
    out: dict[int, dict[str, dict[str, int]]] = {}
    for (round_index, name, field), count in sorted(cells.items()):
        if field == "asked":
            out.setdefault(round_index, {})[name] = {"kept": int(cells.get((round_index, name, "kept"), 0)),
                                                     "asked": int(count)}
    return {str(r): out[r] for r in sorted(out)}


def _sums(signatures: Iterable[tuple[Any, ...]]) -> tuple[int, int, int]:
    """Annotations, and the sums of their ``seq`` and ids, over images' annotation signatures."""
    count = seqs = ids = 0
    for n, seq, ids_sum, _ in signatures:
        count, seqs, ids = count + n, seqs + seq, ids + ids_sum
    return count, seqs, ids


def _copy(value: Any) -> Any:
    """A deep copy of JSON-like facts (callers may change what they get; the cache keeps its own); a tenth of
    ``copy.deepcopy``'s time on 5,000 images."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
