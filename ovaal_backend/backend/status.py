"""The one builder of the backend's figures: ``/metrics`` (JSON and Prometheus text) and the dashboard read it.

Why one builder: the same figures were assembled in two places (the ``/metrics`` route and the dashboard), and a
third reader (Prometheus) would have made three copies that drift apart. Every reader now takes this dict and only
reshapes it; nothing here imports Flask, so the Prometheus renderer (``prometheus.py``) can be fed any payload.
"""

from __future__ import annotations

from typing import Any

from .. import __version__

MODEL_CLASS = "OVAAL"
"""What /health and /metrics report as ``model_class``."""


def metrics_payload(backend: Any) -> dict[str, Any]:
    """What ``/metrics`` answers: every project's ``ProjectDriver.metrics`` with its worker's status, the projects
    set aside, the link to Label Studio, the round-job runner and the ``/predict`` slots.

    Args:
        backend: The ``registry.Backend`` (typed loosely: this module stays free of the registry's imports).
    """
    projects = {}
    for project_id, driver in sorted(backend.projects().items()):
        projects[str(project_id)] = dict(driver.metrics(), worker=backend.worker(project_id).status())
    return {"model_class": MODEL_CLASS, "version": __version__, "projects": projects,
            "set_aside": backend.set_aside(), "label_studio": backend.client.link.status(),
            "jobs": backend.jobs.status(), "predict": backend.predict_slots.status()}
