"""An in-memory stand-in for ``LabelStudioClient`` and the shared set-up of the unit tests (not the e2e test).

It keeps the real server's behaviour that the backend depends on (docs/label-studio-notes.md): predictions whose
``from_name`` is not in the label config are dropped (and the client raises on the count), a project's
``model_version`` needs a prediction of that version, tasks and annotations get increasing ids.
"""

from __future__ import annotations

import copy
import io
import re
from typing import Any

import numpy as np
from PIL import Image

from ovaal_backend.backend.client import LabelStudioError
from ovaal_backend.backend.link import LinkStatus
from ovaal_backend.backend.project.driver import ProjectDriver
from ovaal_backend.backend.worker import ProjectWorker
from ovaal_backend.config import Config
from tests.helpers.annotator import answer_keypoints
from tests.helpers.synthetic import make_scene

XML = """<View>
  <Image name="image" value="$image"/>
  <KeyPointLabels name="query" toName="image">
    <Label value="background" background="#282828"/><Label value="square" background="#DC1E1E"/>
    <Label value="disc" background="#1E1EDC"/><Label value="ignore" ovaal="ignore"/>
  </KeyPointLabels>
  <BrushLabels name="mask" toName="image">
    <Label value="background"/><Label value="square"/><Label value="disc"/>
  </BrushLabels>
</View>"""
"""A 3-class config matching tests/helpers/synthetic.py (background, square, disc) with an ignore label."""
CLASSES = ["background", "square", "disc"]


class FakeLabelStudio:
    """The client calls the backend makes, answered from dictionaries."""

    def __init__(self) -> None:
        self.projects: dict[int, dict[str, Any]] = {}
        self.tasks: dict[int, dict[str, Any]] = {}
        self.files: dict[str, bytes] = {}
        self.calls: list[tuple[str, Any]] = []
        self.fail_next: dict[str, Exception] = {}
        self.fail_after: dict[str, Exception] = {}
        self._ids = {"task": 0, "annotation": 0, "prediction": 0}
        self.link = LinkStatus("http://fake-label-studio")  # always reachable: /setup does not ask it again
        self.link.ok()

    # --- test helpers ------------------------------------------------------------------------------------------

    def add_project(self, project_id: int, label_config: str = XML) -> None:
        self.projects[project_id] = {"id": project_id, "label_config": label_config, "model_version": "",
                                     "sampling": "Sequential sampling"}

    def add_image_task(self, project_id: int, image: np.ndarray, name: str) -> int:
        """A source task whose image is an upload served by this fake."""
        url = f"/data/upload/{project_id}/{name}.png"
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        self.files[url] = buffer.getvalue()
        return self._new_task(project_id, {"image": url})

    def connect_backend(self, project_id: int, url: str, basic_auth_user: str = "") -> None:
        """What connecting a model does: an ML backend row and a webhook to ``<url>/webhook`` without headers."""
        auth = "BASIC_AUTH" if basic_auth_user else "NONE"
        self.projects[project_id].setdefault("ml", []).append(
            {"url": url, "auth_method": auth, "basic_auth_user": basic_auth_user})
        hooks = self.projects[project_id].setdefault("webhooks", [])
        hooks.append({"id": len(hooks) + 1, "url": url.rstrip("/") + "/webhook", "headers": {}})

    def query_tasks(self, project_id: int, round_index: int) -> list[dict[str, Any]]:
        return [t for t in self.tasks.values() if t["project"] == project_id and t["data"].get("ovaal_query")
                and t["data"]["ovaal_round"] == round_index]

    def source_tasks(self, project_id: int) -> list[dict[str, Any]]:
        return [t for t in self.tasks.values() if t["project"] == project_id and not t["data"].get("ovaal_query")]

    def predictions_of(self, task_id: int, version: str) -> list[dict[str, Any]]:
        return [p for p in self.tasks[task_id]["predictions"] if p["model_version"] == version]

    def annotate(self, task_id: int, result: list[dict[str, Any]], cancelled: bool = False,
                 action: str = "ANNOTATION_CREATED") -> dict[str, Any]:
        """Store an annotation and return the webhook payload Label Studio would send."""
        self._ids["annotation"] += 1
        task = self.tasks[task_id]
        annotation = {"id": self._ids["annotation"], "task": task_id, "project": task["project"],
                      "result": result, "was_cancelled": cancelled, "completed_by": 1}
        task["annotations"].append(annotation)
        return {"action": action, "annotation": copy.deepcopy(annotation), "task": self._task_view(task, False),
                "project": {"id": task["project"], "label_config": self.projects[task["project"]]["label_config"]}}

    # --- the client API ----------------------------------------------------------------------------------------

    def get_project(self, project_id: int) -> dict[str, Any]:
        self._call("get_project", project_id)
        return dict(self.projects[project_id])

    def update_project(self, project_id: int, **fields: Any) -> dict[str, Any]:
        self._call("update_project", fields)
        version = fields.get("model_version")
        if version and not any(p["model_version"] == version for t in self.tasks.values()
                               if t["project"] == project_id for p in t["predictions"]):
            raise LabelStudioError("400: Model version doesn't exist either as live model or as static predictions",
                                   400)
        self.projects[project_id].update(fields)
        return dict(self.projects[project_id])

    def list_ml_backends(self, project_id: int) -> list[dict[str, Any]]:
        self._call("list_ml_backends", project_id)
        return copy.deepcopy(self.projects[project_id].get("ml", []))

    def list_webhooks(self, project_id: int) -> list[dict[str, Any]]:
        self._call("list_webhooks", project_id)
        return copy.deepcopy(self.projects[project_id].get("webhooks", []))

    def update_webhook(self, webhook_id: int, **fields: Any) -> dict[str, Any]:
        self._call("update_webhook", (webhook_id, fields))
        hook = next(h for p in self.projects.values() for h in p.get("webhooks", []) if h["id"] == webhook_id)
        hook.update(copy.deepcopy(fields))
        return copy.deepcopy(hook)

    def iter_tasks(self, project_id: int, all_fields: bool = False):
        self._call("iter_tasks", project_id)
        for task in sorted(self.tasks.values(), key=lambda t: t["id"]):
            if task["project"] == project_id:
                yield self._task_view(task, all_fields)

    def import_tasks(self, project_id: int, tasks: list[dict[str, Any]]) -> list[int]:
        self._call("import_tasks", tasks)
        ids = []
        for task in tasks:
            tid = self._new_task(project_id, copy.deepcopy(task["data"]))
            for prediction in task.get("predictions", []):
                self._add_prediction(tid, prediction)
            ids.append(tid)
        self._maybe_fail_after("import_tasks")
        return ids

    def import_predictions(self, project_id: int, predictions: list[dict[str, Any]]) -> int:
        self._call("import_predictions", predictions)
        names = set(re.findall(r'name="([^"]+)"', self.projects[project_id]["label_config"]))
        if any(prediction["task"] not in self.tasks for prediction in predictions):  # as Label Studio 1.23.2 does
            raise LabelStudioError("POST import/predictions answered 400: a task does not exist", 400)
        created = 0
        for prediction in predictions:
            if all(r["from_name"] in names for r in prediction["result"]):
                self._add_prediction(prediction["task"], prediction)
                created += 1
        if created != len(predictions):
            raise LabelStudioError(f"Label Studio created {created} of {len(predictions)} predictions")
        return created

    def get_task(self, task_id: int) -> dict[str, Any] | None:
        self._call("get_task", task_id)
        return self._task_view(self.tasks[task_id], True) if task_id in self.tasks else None

    def get_annotation(self, annotation_id: int) -> dict[str, Any] | None:
        self._call("get_annotation", annotation_id)
        found = [a for t in self.tasks.values() for a in t["annotations"] if a["id"] == annotation_id]
        return copy.deepcopy(found[0]) if found else None

    def task_predictions(self, task_id: int) -> list[dict[str, Any]]:
        self._call("task_predictions", task_id)
        return copy.deepcopy(self.tasks[task_id]["predictions"])

    def delete_task(self, task_id: int) -> None:
        self._call("delete_task", task_id)
        self.tasks.pop(task_id, None)

    def delete_prediction(self, prediction_id: int) -> None:
        self._call("delete_prediction", prediction_id)
        for task in self.tasks.values():
            task["predictions"] = [p for p in task["predictions"] if p["id"] != prediction_id]

    def list_views(self, project_id: int) -> list[dict[str, Any]]:
        self._call("list_views", project_id)
        return copy.deepcopy(self.projects[project_id].get("views", []))

    def create_view(self, project_id: int, title: str, filters: dict[str, Any], ordering: list[str]) -> int:
        self._call("create_view", (project_id, title))
        views = self.projects[project_id].setdefault("views", [])
        self._ids["view"] = self._ids.get("view", 0) + 1
        views.append({"id": self._ids["view"], "data": {"title": title, "filters": copy.deepcopy(filters),
                                                        "ordering": list(ordering)}})
        return self._ids["view"]

    def delete_view(self, view_id: int) -> None:
        self._call("delete_view", view_id)
        for project in self.projects.values():
            project["views"] = [v for v in project.get("views", []) if v["id"] != view_id]

    def download(self, url: str, task_id: int | None = None) -> bytes:
        self._call("download", url)
        if url not in self.files:
            raise LabelStudioError(f"GET {url} answered 404", 404)
        return self.files[url]

    # --- internals ---------------------------------------------------------------------------------------------

    def _call(self, name: str, arg: Any) -> None:
        self.calls.append((name, arg))
        self.link.ok()
        if name in self.fail_next:
            raise self.fail_next.pop(name)

    def _maybe_fail_after(self, name: str) -> None:
        if name in self.fail_after:
            raise self.fail_after.pop(name)

    def _new_task(self, project_id: int, data: dict[str, Any]) -> int:
        self._ids["task"] += 1
        self.tasks[self._ids["task"]] = {"id": self._ids["task"], "project": project_id, "data": data,
                                         "predictions": [], "annotations": []}
        return self._ids["task"]

    def _add_prediction(self, task_id: int, prediction: dict[str, Any]) -> None:
        self._ids["prediction"] += 1
        self.tasks[task_id]["predictions"].append(
            {"id": self._ids["prediction"], "task": task_id, "result": copy.deepcopy(prediction["result"]),
             "score": prediction.get("score"), "model_version": prediction.get("model_version", "")})

    def _task_view(self, task: dict[str, Any], all_fields: bool) -> dict[str, Any]:
        view = {"id": task["id"], "data": copy.deepcopy(task["data"])}
        if all_fields:
            view.update(project=task["project"], predictions=copy.deepcopy(task["predictions"]),
                        annotations=copy.deepcopy(task["annotations"]))
        return view


# --------------------------------------------------------------------------- shared set-up of the unit tests

P = 1
"""The fake project's id."""
UID = "1.1700000000"
"""What /setup's ``project`` looks like for it."""
TINY = dict(encoder_weights="none", image_height=32, image_width=48, batch_size=4, epochs=1, first_round_epochs=1,
            semi_epochs=1, num_threads=1, device="cpu", init_pixels=5, pixels_per_round=6, rounds=1)
"""Settings that make a whole loop take seconds on a CPU: the one tiny configuration of the tests (engine tests too)."""


def tiny_config(tmp_path, **overrides) -> Config:
    """``TINY`` with its model folder under ``tmp_path``, and ``overrides`` on top."""
    return Config(**{**TINY, "model_dir": str(tmp_path / "models"), **overrides})


def make_fake_project() -> tuple[FakeLabelStudio, int]:
    fake = FakeLabelStudio()
    fake.add_project(P)
    return fake, P


def add_scenes(fake: FakeLabelStudio, count: int, seed: int = 0, project: int = P) -> dict[int, np.ndarray]:
    """Synthetic 48x64 source images in a fake project; returns task id -> ground-truth class map."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(count):
        image, label = make_scene(rng)
        out[fake.add_image_task(project, image, f"scene_{i}")] = label
    return out


def drain(driver: ProjectDriver) -> None:
    """What the worker thread does after a wake-up: apply events, run steps until nothing is due."""
    assert ProjectWorker(driver).run_pending()


def started(tmp_path, fake: FakeLabelStudio, **overrides) -> ProjectDriver:
    """A driver after /setup and the first worker pass (round 0 published when there are images)."""
    driver = ProjectDriver(tiny_config(tmp_path, **overrides), P, fake)
    assert driver.setup(UID, XML) == "ovaal-0"
    drain(driver)
    return driver


def answer_round(fake: FakeLabelStudio, driver: ProjectDriver, truth: dict[int, np.ndarray], round_index: int,
                 cancelled: bool = False, only: int | None = None) -> list[dict[str, Any]]:
    """Annotate the round's query tasks from the ground truth and hand the webhooks to the driver."""
    payloads = []
    for task in fake.query_tasks(P, round_index)[:only]:
        source = task["data"]["ovaal_source_task"]
        result = [] if cancelled else answer_keypoints(task["predictions"][0]["result"], truth[source], CLASSES)
        payload = fake.annotate(task["id"], result, cancelled=cancelled)
        assert driver.add_event(payload["action"], payload) is not None
        payloads.append(payload)
    return payloads
