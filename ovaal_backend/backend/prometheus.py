"""``/metrics`` as Prometheus text: the figures of ``status.metrics_payload``, reshaped, never computed again.

Why on ``/metrics`` itself: a Prometheus scrape config's default ``metrics_path`` is ``/metrics``, and Prometheus
asks for its formats in the ``Accept`` header (``application/openmetrics-text`` and ``text/plain;version=0.0.4``),
which no JSON client sends. So the same URL, behind the same basic auth, serves JSON to browsers, curl, Label Studio
and scripts (``*/*``, ``application/json``) and the text format to scrapers; ``?format=prometheus`` (or ``json``)
overrides the header for a scraper that sends none (``params: {format: [prometheus]}`` in the scrape config).

Each request builds a throw-away registry around one payload (``PayloadCollector``): the figures live in the
projects' SQLite stores and the backend's objects, not in process-wide prometheus_client counters, so there is
nothing to keep in step. Only numbers become samples; names, versions and errors become labels of ``*_info``
gauges or 0/1 "present" gauges (an error text as a label would make a new series per message).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

FORMATS = ("json", "prometheus")
"""Values of ``/metrics?format=``."""
TEXT_TYPES = ("application/openmetrics-text", "text/plain")
"""Media types of Prometheus' text formats, as scrapers name them in ``Accept``."""
PROJECT_COUNTS = {
    "round": ("round", "the current round (0 = the random cold-start round)"),
    "rounds": ("rounds", "rounds after round 0 (ROUNDS)"),
    "generation": ("generation", "the label config's generation: it grows when the project's classes change"),
    "query_tasks": ("query_tasks", "query tasks of the current round"),
    "answered_query_tasks": ("answered_query_tasks", "answered query tasks of the current round"),
    "new_annotations": ("new_annotations", "annotations stored since the last training"),
    "pending_events": ("pending_events", "webhook events stored and not yet applied"),
    "annotations": ("annotations", "stored annotations of query tasks (skipped ones included)"),
    "cancelled": ("cancelled_annotations", "stored annotations that were skipped"),
    "points": ("points", "stored clicks with a class (the labels the model trains on)"),
    "ignored_points": ("ignored_points", "stored clicks answered with the ignore label"),
}
"""Plain numbers of ``ProjectDriver.metrics``: key -> (``ovaal_project_<name>``, help text)."""


def wants_prometheus(format_arg: str | None, accept: str | None) -> bool:
    """Whether a ``/metrics`` request asks for the text format: ``?format=`` decides when given, else ``Accept``.

    ``Accept`` picks the text format only when it names a text type (``application/openmetrics-text`` or
    ``text/plain``) with a higher quality than ``application/json``: wildcards (``*/*``, a browser's list) and ties
    (axios' ``application/json, text/plain, */*``) keep the JSON that every existing client reads.

    Raises:
        ValueError: ``format`` is neither ``json`` nor ``prometheus``.
    """
    if format_arg is not None:
        if format_arg not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format_arg[:40]!r}")
        return format_arg == "prometheus"
    text = json = 0.0
    for item in (accept or "").split(","):
        media, *params = (part.strip() for part in item.split(";"))
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        media = media.lower()
        if media in TEXT_TYPES:
            text = max(text, quality)
        elif media == "application/json":
            json = max(json, quality)
    return text > 0 and text > json


def prometheus_text(payload: Mapping[str, Any], accept: str | None) -> tuple[bytes, str]:
    """The payload in the format ``accept`` prefers (OpenMetrics 1.0 or the text format 0.0.4) and its content type."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PayloadCollector(payload))
    encode, content_type = choose_encoder(accept or "")
    return encode(registry), content_type


class PayloadCollector:
    """A prometheus_client collector over one ``metrics_payload`` dict (see the module docstring for why)."""

    def __init__(self, payload: Mapping[str, Any]) -> None:
        self.payload = payload

    def collect(self) -> Iterator[Metric]:
        """Backend-wide families first, then the per-project ones (label ``project``)."""
        body = self.payload
        jobs = body.get("jobs") or {}
        yield _info("ovaal", "the backend: its model class, version and where round jobs run",
                    {"model_class": body.get("model_class"), "version": body.get("version"),
                     "job_runner": jobs.get("kind")})
        yield from _link(body.get("label_studio") or {})
        yield from _jobs(jobs)
        predict = body.get("predict") or {}
        yield _gauge("ovaal_predict_slots", "/predict calls that may compute at once (MAX_PREDICT_CALLS)",
                     predict.get("slots"))
        yield _gauge("ovaal_predict_busy", "/predict calls computing now", predict.get("busy"))
        refused = CounterMetricFamily("ovaal_predict_refused", "/predict calls answered 503 since the start")
        refused.add_metric([], float(predict.get("refused") or 0))
        yield refused
        yield _gauge("ovaal_projects_set_aside", "projects whose state file cannot be opened",
                     len(body.get("set_aside") or {}))
        yield from _projects(body.get("projects") or {})


def _link(link: Mapping[str, Any]) -> Iterator[Metric]:
    """The link to Label Studio: reachable (absent until the first call), last success, last error present."""
    if link.get("reachable") is not None:
        yield _gauge("ovaal_label_studio_reachable", "1 when the last call to LABEL_STUDIO_URL succeeded",
                     int(bool(link["reachable"])))
    yield _gauge("ovaal_label_studio_last_error", "1 when a call to Label Studio has failed since the start (the "
                 "cause is in /metrics' JSON under label_studio)", int(link.get("last_error") is not None))
    for key, what in (("last_ok", "last successful"), ("last_error_at", "last failed")):
        if link.get(key) is not None:
            yield _gauge(f"ovaal_label_studio_{key.removesuffix('_at')}_timestamp_seconds",
                         f"unix time of the {what} call to Label Studio", link[key])


def _jobs(jobs: Mapping[str, Any]) -> Iterator[Metric]:
    """Round jobs: in-process slots, running and waiting jobs; or the RQ queue's counts, workers and reachability."""
    family = GaugeMetricFamily("ovaal_jobs", "round jobs by state (in-process: running, waiting; RQ: queued, "
                               "started, failed)", labels=["state"])
    if jobs.get("kind") == "rq":
        for state in ("queued", "started", "failed"):
            if state in jobs:
                family.add_metric([state], float(jobs[state]))
        yield family
        yield _gauge("ovaal_queue_reachable", "1 when Redis answered the last look at the queue",
                     int("error" not in jobs))
        if "workers" in jobs:
            yield _gauge("ovaal_queue_workers", "RQ workers listening to JOB_QUEUE", jobs["workers"])
        return
    for state in ("running", "waiting"):
        family.add_metric([state], float(len(jobs.get(state) or ())))
    yield family
    yield _gauge("ovaal_job_slots", "round jobs that may run at once in this process (MAX_TRAINING_JOBS)",
                 jobs.get("slots"))


def _projects(projects: Mapping[str, Mapping[str, Any]]) -> Iterator[Metric]:
    """One family per figure, one sample per project (and per class, round, phase where the figure has them)."""
    families: dict[str, Metric] = {}
    info = InfoMetricFamily("ovaal_project", "the model version serving the project and where it trains",
                            labels=["project"])

    def add(name: str, help_text: str, labels: dict[str, str], value: Any, kind: type = GaugeMetricFamily) -> None:
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return
        family = families.get(name)
        if family is None:
            family = families[name] = kind(name, help_text, labels=list(labels))
        family.add_metric(list(labels.values()), float(value))

    for key, project in projects.items():
        p = {"project": key}
        add("ovaal_project_phase", "the project's current phase (one sample, 1, labelled with it)",
            dict(p, phase=str(project.get("phase"))), 1)
        info.add_metric([key], {"model_version": str(project.get("model_version")),
                                "device": str(project.get("device"))})
        for field_name, (name, help_text) in PROJECT_COUNTS.items():
            add(f"ovaal_project_{name}", help_text, p, project.get(field_name))
        add("ovaal_project_classes", "classes of the label config", p, len(project.get("classes") or ()))
        for name, clicks in (project.get("class_clicks") or {}).items():
            add("ovaal_project_class_points", "stored clicks per class", dict(p, **{"class": name}), clicks)
        labelled = project.get("labelled_per_image") or {}
        add("ovaal_project_source_images", "source images (tasks) of the pool", p, len(labelled))
        add("ovaal_project_labelled_pixels", "labelled pixels over all source images", p, sum(labelled.values()))
        budget = project.get("budget") or {}
        add("ovaal_project_budget_pixels_per_image", "pixels per image the whole loop asks for", p,
            budget.get("per_image"))
        add("ovaal_project_asked_pixels_per_image", "pixels per image asked up to the current round", p,
            budget.get("asked_per_image"))
        _trainings(add, p, project.get("trainings") or [])
        for round_key, classes in (project.get("quality") or {}).items():
            for name, cell in classes.items():
                labels = dict(p, round=str(round_key), **{"class": name})
                add("ovaal_project_prelabel_asked", "answered query points per round and pre-labelled class",
                    labels, cell.get("asked"))
                add("ovaal_project_prelabel_kept", "of those, points whose pre-label the annotator kept", labels,
                    cell.get("kept"))
        quarantined = project.get("quarantined") or {}
        for kind in ("events", "images"):
            add("ovaal_project_quarantined", "items set aside (malformed events, unreadable images)",
                dict(p, kind=kind), len(quarantined.get(kind) or ()))
        add("ovaal_project_failed_job", "1 when a round job failed on every retry (see `requeue`)", p,
            int(project.get("failed_job") is not None))
        add("ovaal_project_phase_since_timestamp_seconds", "unix time the current phase began", p,
            project.get("phase_since"))
        worker = project.get("worker") or {}
        add("ovaal_project_worker_alive", "1 while the project's worker thread runs", p, int(bool(worker.get("alive"))))
        add("ovaal_project_worker_busy", "1 while the worker runs a step", p, int(worker.get("busy_with") is not None))
        add("ovaal_project_worker_last_error", "1 when the worker's last step failed", p,
            int(worker.get("last_error") is not None))
    if projects:
        yield info
    yield from families.values()


def _trainings(add: Any, labels: dict[str, str], trainings: list[Mapping[str, Any]]) -> None:
    """How many trainings ran, and the last one's loss, duration and end."""
    add("ovaal_project_trainings", "trainings of the project", labels, len(trainings), CounterMetricFamily)
    if not trainings:
        return
    last = trainings[-1]
    add("ovaal_project_last_training_loss", "final loss of the last training", labels, last.get("loss"))
    add("ovaal_project_last_training_seconds", "duration of the last training", labels, last.get("seconds"))
    add("ovaal_project_last_training_timestamp_seconds", "unix time the last training ended", labels,
        last.get("finished_at"))


def _gauge(name: str, help_text: str, value: Any) -> GaugeMetricFamily:
    """A family of one unlabelled sample (none when the payload lacks the figure)."""
    family = GaugeMetricFamily(name, help_text)
    if value is not None:
        family.add_metric([], float(value))
    return family


def _info(name: str, help_text: str, labels: Mapping[str, Any]) -> InfoMetricFamily:
    """An info family (``<name>_info{...} 1``) of the labels that are known."""
    family = InfoMetricFamily(name, help_text)
    family.add_metric([], {k: str(v) for k, v in labels.items() if v is not None})
    return family
