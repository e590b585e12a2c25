"""Whose a round job is, on both sides of the queue: ``JobOrigin`` (the backend's instance id, the project and its
folder's id) names the job on the queue and lets a work horse refuse a job that is not its MODEL_DIR's; ``folder_id``
makes and reads those ids (see ``queue_jobs``'s docstring for why). Imports neither torch nor the engine.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis import Redis

FOLDER_ID_FILE = "ovaal-instance"
"""The file in MODEL_DIR (the backend's instance id) and in each project folder (that folder's id) with its id."""
FOLDER_ID = re.compile(r"[0-9a-f]{8}")


class JobRefusedError(RuntimeError):
    """A work horse will not run this job: it belongs to another MODEL_DIR (another backend, or a project folder made
    anew), or names a file outside this worker's MODEL_DIR and document root. The message says which and why."""


def connect(url: str, **kwargs: Any) -> Redis:
    """A Redis client for ``REDIS_URL`` (connects on first command)."""
    return Redis.from_url(url, **kwargs)


def folder_id(folder: str | Path, create: bool = False) -> str:
    """The random id stored in ``folder/FOLDER_ID_FILE`` ("" when there is none and ``create`` is off).

    Made once (``create``): written to a temporary file, then linked into place, so two makers at once agree on the
    first one's id and a reader never sees half of it. A folder deleted and made anew gets a new id.

    Raises:
        ValueError: The file holds something else than an id (edited by hand).
    """
    path = Path(folder) / FOLDER_ID_FILE
    if create and not path.exists():
        token = secrets.token_hex(4)
        tmp = path.with_name(f".{FOLDER_ID_FILE}.{token}")
        tmp.write_text(token + "\n")
        try:
            os.link(tmp, path)
        except FileExistsError:  # made by another process meanwhile: its id stands
            pass
        finally:
            tmp.unlink()
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        return ""
    if not FOLDER_ID.fullmatch(value):
        raise ValueError(f"{path} should hold an 8-digit hex id, not {value[:40]!r}: delete it to make a new one")
    return value


@dataclass(frozen=True)
class JobOrigin:
    """Whose a round job is: the backend's instance (its MODEL_DIR's id), the project and its folder's id. It travels
    with the job, names it on the queue and lets a work horse refuse a job that is not its MODEL_DIR's."""

    instance: str
    project: str = ""
    folder: str = ""

    @classmethod
    def of(cls, model_dir: str, project: int | str = "") -> JobOrigin:
        """The origin of the backend's jobs for ``project`` (ids made on first use)."""
        root = Path(model_dir)
        root.mkdir(parents=True, exist_ok=True)
        project = str(project)
        if not project:
            return cls(folder_id(root, create=True))
        (root / project).mkdir(exist_ok=True)
        return cls(folder_id(root, create=True), project, folder_id(root / project, create=True))

    def queue_id(self, job_id: str) -> str:
        """The job's id on the queue: ``<instance>-<project>-<folder>-g<generation>-v<version>-r<round>``."""
        return "-".join(part for part in (self.instance, self.project, self.folder, job_id) if part)

    def refusal(self, model_dir: str) -> str:
        """Why a worker with this MODEL_DIR must not run the job ("" when it may)."""
        root = Path(model_dir)
        here = folder_id(root)
        if here != self.instance:
            return (f"it comes from the backend whose MODEL_DIR has instance id {self.instance}, but this worker's "
                    f"MODEL_DIR {root} " + (f"has {here}" if here else f"holds no {FOLDER_ID_FILE} file") +
                    ": give the worker that backend's MODEL_DIR (shared), or give each backend its own JOB_QUEUE")
        folder = folder_id(root / self.project) if self.project else ""
        if folder != self.folder:
            return (f"project {self.project}'s folder in MODEL_DIR was made anew (id {folder or 'none'}, the job's "
                    f"{self.folder}): the job belongs to the deleted one")
        return ""
