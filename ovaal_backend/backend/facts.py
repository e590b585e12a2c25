"""A project's facts of its stored clicks for ``/metrics`` and the dashboard, kept up to date image by image.

Why: every open dashboard asks every few seconds, and the facts were computed again from every click of the project
after each new annotation (5,000 images: 13-15 s a time, holding the GIL while webhooks waited). ``ProjectFacts``
keeps each image's share and recomputes only the images that changed; the figures themselves (what counts as asked
and kept) are ``progress.py``'s.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import IGNORE_INDEX
from .progress import (
    DEFAULT_IGNORE,
    clicks_by_name,
    count_kept,
    label_counts,
    prelabel_points,
    quality_table,
)
from .store import ProjectStore

log = logging.getLogger(__name__)

BACKGROUND_GAP_SECONDS = 2.0
"""While a backlog is applied, a background computation starts at most this long after the last one ended: the
facts lag a little more, and the events between two computations are read once (an image answered again and again
is computed once), leaving the CPU to the worker and the webhooks."""


@dataclass(frozen=True)
class ImageFacts:
    """What one source image adds to the project's facts: its labelled pixels, their stored labels, and the
    pre-label quality cells of its answered query tasks (``(round, pre-label, "kept" | "asked") -> count``)."""

    pixels: int
    labels: Counter[int]
    quality: Counter[tuple[int, str, str]]


@dataclass(frozen=True)
class PreLabels:
    """One imported query task's pre-labelled points, read once (its stored regions are a few KB of JSON)."""

    round_index: int
    pixels: np.ndarray  # (N,) int64 pixel keys (``pixel_key``)
    labels: tuple[str, ...]


class ProjectFacts:
    """The facts of one project's stored clicks, kept up to date image by image; one caller computes at a time.

    A call first reads a few totals in SQL (``signature``s of the annotations, the query tasks, the imported
    queries, the listed sources); when they are unchanged, the last result stands. Otherwise it reads what changed
    per image, in the same read transaction as the totals (so both describe one state of the file): for answers,
    only the annotations stored after the last call (a ``seq`` above the last one seen) unless the totals say more
    changed (a deletion); for query tasks, every image's signature. It recomputes only the images whose signature
    changed, moving the totals by the difference. An answered query task's pre-labels are parsed once and kept
    until the image's query tasks change. The label names, the classes and the ignore label's name are part of the
    key: a change recomputes every image.

    Fresh or at once (``get``'s ``wait``): a caller that waits gets facts of the file as it is now, after a
    computation running meanwhile; one that does not (``ProjectDriver.metrics`` while the project's worker applies a
    backlog of events, when the facts change with every event anyway) gets the last result at once, and a
    computation starts in the background if none runs and the last one ended ``background_gap`` seconds ago, so a
    later caller gets newer facts; only before the first result exists does it wait. One computation runs at a
    time: open dashboards never pile them up.

    Args:
        store: The project's store (its clicks, query tasks and sources).
        background_gap: Seconds from the end of a computation before a caller that does not wait starts another.
    """

    def __init__(self, store: ProjectStore, background_gap: float = BACKGROUND_GAP_SECONDS) -> None:
        self.store, self.key, self.background_gap = store, store.key, background_gap
        self._busy = threading.Lock()  # held by the one computation running
        self._result: dict[str, Any] | None = None
        self.generation = 0  # new results computed in the background: an answer made of an older one is old
        self._finished = float("-inf")  # when the last computation ended (time.monotonic)
        self._names: tuple[tuple[str, ...], tuple[str, ...], str] | None = None
        self._totals: list[tuple[Any, ...]] = []  # per kind (``_KINDS``), then the listed sources'
        self._signatures: list[dict[int, tuple[Any, ...]]] = [{} for _ in range(_KINDS)]  # per kind, per image
        self._answer_sums = (0, 0, 0)  # _sums of the annotation signatures
        self._images: dict[int, ImageFacts] = {}
        self._prelabels: dict[int, dict[int, PreLabels | None]] = {}  # image -> answered task -> its pre-labels
        self._labels: Counter[int] = Counter()
        self._quality: Counter[tuple[int, str, str]] = Counter()
        self._points = 0
        self._per_image: dict[str, int] = {}  # labelled_per_image: every listed image, and any with pixels
        self._stored: dict[str, Any] = {}  # the per-round counts
        self._listed: set[int] = set()  # the listed source images

    def get(self, label_names: Sequence[str], classes: Sequence[str], ignore_label: str | None,
            wait: bool = True) -> dict[str, Any]:
        """``labelled_per_image``, ``class_clicks``, ``quality``, ``points``, ``ignored_points`` (as
        ``Clicks.counts`` counts them), ``answers_by_round`` (``Clicks.by_round``) and ``query_tasks_by_round``;
        a copy the caller may change. ``wait``: the facts of the file as it is now; else the last result at once
        (see the class docstring)."""
        args = (list(label_names), list(classes), ignore_label or DEFAULT_IGNORE)
        last = self._result
        if not wait and last is not None:
            due = time.monotonic() - self._finished >= self.background_gap
            if due and self._busy.acquire(blocking=False):
                threading.Thread(target=self._refresh, args=args, name=f"ovaal-facts-{self.key}", daemon=True).start()
            return _copy(last)
        with self._busy:
            self._refresh_held(*args)
            return _copy(self._result)

    def _refresh(self, label_names: list[str], classes: list[str], ignore: str) -> None:
        """A computation in the background (``_busy`` is held for it); a failure is logged, the next call retries."""
        try:
            last = self._result
            self._refresh_held(label_names, classes, ignore)
            if self._result is not last:
                self.generation += 1
        except Exception:
            log.exception("project %s: the facts for /metrics could not be computed", self.key)
        finally:
            self._busy.release()

    def _refresh_held(self, label_names: list[str], classes: list[str], ignore: str) -> None:
        """Bring the result up to date (the caller holds ``_busy``)."""
        try:
            with self.store.snapshot():  # every read of one computation: one state of the file
                result = self._compute(label_names, classes, ignore)
        except BaseException:
            self._names = None  # half updated: the next computation recomputes every image
            raise
        self._result, self._finished = result, time.monotonic()

    def _compute(self, label_names: list[str], classes: list[str], ignore: str) -> dict[str, Any]:
        names = (tuple(label_names), tuple(classes), ignore)
        if names != self._names:
            self._names, self._totals, self._signatures = names, [], [{} for _ in range(_KINDS)]
            self._images, self._labels, self._quality, self._points = {}, Counter(), Counter(), 0
            self._per_image = {}
        store = self.store  # every read below is in the computation's snapshot (``_refresh_held``)
        totals = [store.clicks.signature(), store.rounds.task_signature(), store.rounds.import_signature(),
                  store.sources.signature()]
        if totals == self._totals and self._result is not None:
            return self._result
        changed, requeried = self._changed_images(totals)
        answered = store.clicks.answered_tasks(changed)
        listed = store.sources.ids() if not self._totals or totals[-1] != self._totals[-1] else None
        for source in requeried:
            self._prelabels.pop(source, None)
        self._update(changed, answered, label_names, ignore)
        if not self._totals or totals[0] != self._totals[0]:
            self._stored["answers_by_round"] = store.clicks.by_round()
        if not self._totals or totals[1] != self._totals[1]:
            self._stored["query_tasks_by_round"] = store.rounds.tasks_per_round()
        if listed is not None:
            self._listed = set(listed)
            self._per_image = {str(s): 0 for s in listed}
            self._per_image.update({str(s): f.pixels for s, f in sorted(self._images.items()) if f.pixels})
        self._totals = totals
        return {"labelled_per_image": dict(self._per_image),  # its own: later computations change the kept one
                "class_clicks": clicks_by_name(self._labels, label_names, classes, ignore),
                "quality": quality_table(self._quality),
                "points": self._points, "ignored_points": int(self._labels.get(IGNORE_INDEX, 0)),
                **self._stored}

    def _changed_images(self, totals: list[tuple[Any, ...]]) -> tuple[set[int], set[int]]:
        """The images whose facts may have changed since the last call, and among them those whose query tasks
        changed (their kept pre-labels are stale); the signatures brought up to date."""
        changed: set[int] = set()
        requeried: set[int] = set()
        per_image = (self.store.clicks.image_signatures, self.store.rounds.task_signatures,
                     self.store.rounds.import_signatures)
        for kind in range(_KINDS):
            if self._totals and totals[kind] == self._totals[kind]:
                continue
            recent = self._recent_answers(totals[0]) if kind == 0 and self._totals else None
            if recent is not None:
                changed |= recent
                continue
            fresh = per_image[kind]()
            old = self._signatures[kind]
            moved = {s for s in fresh.keys() | old.keys() if fresh.get(s) != old.get(s)}
            changed |= moved
            if kind:
                requeried |= moved
            self._signatures[kind] = fresh
            if kind == 0:
                self._answer_sums = _sums(fresh.values())
        return changed, requeried

    def _recent_answers(self, total: tuple[Any, ...]) -> set[int] | None:
        """The images with annotations stored after the last call (a ``seq`` above the last one seen), their
        annotation signatures brought up to date; None when the project's total says more changed (a deletion):
        then every image's signature is read. Reading only the recent rows keeps a call cheap while answers come in.
        """
        since = self._totals[0][3] or 0
        signatures = self._signatures[0]
        images = self.store.clicks.images_since(since)
        fresh = self.store.clicks.image_signatures(images)
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

    def _update(self, changed: set[int], answered: dict[int, set[int]], label_names: list[str],
                ignore: str) -> None:
        """Recompute the facts of the ``changed`` images and move the totals by the difference."""
        if not changed:
            return
        points = self.store.clicks.labelled_points(changed)
        self._read_prelabels({s: tasks for s, tasks in answered.items() if s in changed})
        for source in changed:
            old = self._images.pop(source, None)
            if old is not None:
                self._labels.subtract(old.labels)
                self._quality.subtract(old.quality)
                self._points -= old.pixels
            table = points.get(source)
            kept = self._prelabels.get(source, {})
            tasks = [kept[t] for t in sorted(answered.get(source, ())) if kept.get(t) is not None]
            if table is None and not tasks:
                self._drop_pixels(source)
                continue
            new = _image_facts(table, tasks, label_names, ignore)
            self._images[source] = new
            self._labels.update(new.labels)
            self._quality.update(new.quality)
            self._points += new.pixels
            if new.pixels:
                self._per_image[str(source)] = new.pixels
            else:
                self._drop_pixels(source)
        self._labels = +self._labels  # drop the zeros left by subtracting
        self._quality = +self._quality

    def _drop_pixels(self, source: int) -> None:
        """An image without labelled pixels: 0 when it is listed, absent otherwise."""
        if source in self._listed:
            self._per_image[str(source)] = 0
        else:
            self._per_image.pop(str(source), None)

    def _read_prelabels(self, answered: dict[int, set[int]]) -> None:
        """Parse the pre-labels of answered query tasks not kept yet (a task that is no imported query task keeps
        None: it counts nothing until its image's query tasks change)."""
        missing = sorted(t for s, tasks in answered.items() for t in tasks if t not in self._prelabels.get(s, {}))
        found = self.store.rounds.imported_results(missing)
        for source, tasks in answered.items():
            kept = self._prelabels.setdefault(source, {})
            for task in tasks - kept.keys():
                row = found.get(task)
                if row is None or row[0] != source:
                    kept[task] = None
                    continue
                pixels, labels = prelabel_points(row[2])
                keys = np.asarray(pixels, dtype=np.int64).reshape(-1, 2)
                kept[task] = PreLabels(row[1], pixel_key(keys[:, 0], keys[:, 1]), tuple(labels))


_KINDS = 3
"""Kinds of per-image signature the facts depend on: annotations (``Clicks.image_signatures``), query tasks
(``Rounds.task_signatures``), imported queries (``Rounds.import_signatures``)."""


def _image_facts(table: np.ndarray | None, tasks: list[PreLabels], label_names: Sequence[str],
                 ignore: str) -> ImageFacts:
    """One image's share of the facts, from its newest-wins points and its answered query tasks' pre-labels."""
    lookup = {} if table is None else dict(zip(pixel_key(table[:, 0], table[:, 1]).tolist(), table[:, 2].tolist(),
                                               strict=True))
    quality: Counter[tuple[int, str, str]] = Counter()
    for task in tasks:
        count_kept(quality, task.round_index, task.pixels.tolist(), task.labels, lookup, label_names, ignore)
    return ImageFacts(pixels=0 if table is None else len(table),
                      labels=label_counts({} if table is None else {0: table}), quality=quality)


def pixel_key(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """One int64 per pixel (``row << 32 | col``): a dict keyed by it is built and searched without a tuple per
    pixel."""
    return (np.asarray(rows, dtype=np.int64) << 32) | np.asarray(cols, dtype=np.int64)


def _sums(signatures: Iterable[tuple[Any, ...]]) -> tuple[int, int, int]:
    """Annotations, and the sums of their ``seq`` and ids, over images' annotation signatures."""
    count = seqs = ids = 0
    for n, seq, ids_sum, _ in signatures:
        count, seqs, ids = count + n, seqs + seq, ids + ids_sum
    return count, seqs, ids


def _copy(value: Any) -> Any:
    """A copy of the facts the caller may change (the cache keeps its own): ``labelled_per_image`` holds only
    numbers, so a flat copy of it suffices (a tenth of a deep copy's time on 5,000 images)."""
    if isinstance(value, dict):
        return {k: dict(v) if k == "labelled_per_image" else _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value
