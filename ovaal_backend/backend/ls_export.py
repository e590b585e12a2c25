"""Label Studio JSON of exported label maps: the source tasks with their final masks as ``predictions``.

Why predictions: a file of tasks with predictions is what Label Studio's import (Data Manager > Import, or ``POST
/api/projects/<id>/import``) turns into pre-annotations, so a second project (a review team, a clean project without
the query tasks, another Label Studio) starts from the masks and its annotators correct them. The results are the
BrushLabels results the backend pushes itself (``convert.brush_results``: one region per class, Label Studio's own
RLE), so the target project needs the same ``<Image>`` and ``<BrushLabels>`` names and labels: the same label config.

Each task keeps its ``data`` as the source project has it (the image URL: ``/data/upload/...`` and
``/data/local-files/...`` URLs show only in a Label Studio that serves the same files) and says where it came from
in its ``meta``. Tasks are written one at a time, so memory does not grow with the project.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from ..files import atomic_file
from .convert import LabelConfigError, ParsedLabelConfig, brush_results


def check_brush_control(parsed_config: ParsedLabelConfig) -> None:
    """Raise LabelConfigError when the label config has no BrushLabels control: its masks have nowhere to go."""
    if parsed_config.mask_from_name is None:
        raise LabelConfigError("the Label Studio JSON export needs a <BrushLabels> control in the label config (the "
                               "masks are brush predictions): add one with the same labels as the KeyPointLabels, "
                               "or export --format png,coco")


class TasksWriter(AbstractContextManager["TasksWriter"]):
    """A JSON list of tasks, written task by task; the file appears whole when the block ends, never half of it.

    Args:
        path: The file to write.
        parsed_config: The project's label config (BrushLabels control, image and class names).
        model_version: ``model_version`` of every prediction (the backend's ``ovaal-N``).
        project_id: The source project, kept in each task's ``meta``.
    """

    def __init__(self, path: str | Path, parsed_config: ParsedLabelConfig, model_version: str, project_id: int) -> None:
        check_brush_control(parsed_config)
        self.parsed_config = parsed_config
        self.model_version = model_version
        self.project_id = project_id
        self.count = 0
        self._file = atomic_file(path)
        self._handle: Any = None

    def __enter__(self) -> TasksWriter:
        self._handle = self._file.__enter__()
        self._handle.write(b"[")
        return self

    def add(self, task_id: int, data: dict[str, Any], label_map: np.ndarray) -> None:
        """One task: its data, and the label map (class indices; values >= the class count are none) as a
        prediction."""
        class_map = np.where(label_map < len(self.parsed_config.classes), label_map.astype(np.int64), -1)
        task = {"data": data, "meta": {"ovaal_export": {"project": self.project_id, "task": int(task_id)}},
                "predictions": [{"model_version": self.model_version,
                                 "result": brush_results(class_map, self.parsed_config)}]}
        self._handle.write((",\n" if self.count else "\n").encode() + json.dumps(task).encode("utf-8"))
        self.count += 1

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> bool | None:
        if error is None:
            self._handle.write(b"\n]\n")
        return self._file.__exit__(kind, error, trace)
