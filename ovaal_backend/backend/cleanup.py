"""Remove from a Label Studio project everything the backend wrote into it.

What the backend writes (README, "What the backend writes into your project"): query tasks (task data with
``ovaal_query``), predictions whose ``model_version`` is ``ovaal-<n>`` on source tasks, the "OVAAL queries" Data
Manager tab, and the project's sampling mode and model version. Annotations made on source tasks by people stay;
annotations on query tasks go with their tasks (their clicks stay in MODEL_DIR unless that folder is deleted too).
"""

from __future__ import annotations

import logging
from typing import Any

from .client import LabelStudioClient
from .project.state import QUERY_MARKER, QUERY_VIEW_TITLE

log = logging.getLogger(__name__)

OUR_VERSION_PREFIX = "ovaal-"


def clean_project(client: LabelStudioClient, project_id: int) -> dict[str, int]:
    """Delete our query tasks, predictions and tab; reset sampling and model version. Returns what was removed."""
    removed = {"query_tasks": 0, "predictions": 0, "views": 0}
    for task in list(client.iter_tasks(project_id, all_fields=True)):
        if (task.get("data") or {}).get(QUERY_MARKER):
            client.delete_task(int(task["id"]))
            removed["query_tasks"] += 1
            continue
        for prediction in task.get("predictions") or []:
            if _ours(prediction):
                client.delete_prediction(int(prediction["id"]))
                removed["predictions"] += 1
    for view in client.list_views(project_id):
        if (view.get("data") or {}).get("title") == QUERY_VIEW_TITLE:
            client.delete_view(int(view["id"]))
            removed["views"] += 1
    client.update_project(project_id, sampling="Sequential sampling", model_version="")
    log.info("project %d: removed %s; sampling set back to sequential", project_id, removed)
    return removed


def _ours(prediction: dict[str, Any]) -> bool:
    return str(prediction.get("model_version") or "").startswith(OUR_VERSION_PREFIX)
