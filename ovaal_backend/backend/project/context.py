"""What every part of a project shares: its settings, Label Studio client, store, image pool, serving model and
typed state.

The state is read and changed only through ``ProjectContext`` (under one lock, saved to SQLite on every change), so
request threads and the project's worker see one consistent state; its round fields change only by events
(``apply`` runs ``state.on``).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from ...config import IGNORE_INDEX, Config
from ..client import LabelStudioClient
from ..convert import ParsedLabelConfig
from ..images import ImageFetcher
from ..store import ProjectStore
from .label_config import parse_label_config
from .pool import ImagePool
from .serving import ServingModel
from .state import BOOKKEEPING, QUERY_MARKER, Event, ProjectState, on, version_name

STATE_FILE = "labels.sqlite3"


def project_dir(config: Config, project_id: int) -> Path:
    """Where one project's state lives: ``MODEL_DIR/<project id>``."""
    return Path(config.model_dir) / str(int(project_id))


def known_projects(config: Config) -> list[int]:
    """Ids of the projects with state under MODEL_DIR (restart recovery)."""
    root = Path(config.model_dir)
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and (p / STATE_FILE).is_file())


class ProjectContext:
    """One project's shared parts.

    Args:
        config: Settings (engine and server).
        project_id: Label Studio's project id.
        client: Calls to Label Studio (None: only the stored state is read, as the quarantine command does).
    """

    def __init__(self, config: Config, project_id: int, client: LabelStudioClient | None) -> None:
        self.config = config
        self.project_id = int(project_id)
        self.key = str(self.project_id)
        self.root = project_dir(config, project_id)
        self.client = client
        self.store = ProjectStore(self.root / STATE_FILE, self.key)
        fetcher = ImageFetcher(client, self.root / "images", config.label_studio_local_files_document_root,
                               config.max_image_pixels)
        self.images = ImagePool(config, fetcher)
        self.model = ServingModel(config, self.root, self.images)
        self._lock = threading.RLock()
        saved = self.store.state.load()
        self._state = ProjectState.from_dict(saved) if saved else ProjectState()
        self._iface: ParsedLabelConfig | None = None

    # --- state ---------------------------------------------------------------------------------------------------

    @property
    def state(self) -> ProjectState:
        """A copy of the current state (changing it changes nothing: use ``update``)."""
        with self._lock:
            return self._state.copy()

    def apply(self, event: Event) -> ProjectState:
        """Run one transition of the round machine (``state.on``), save the state when it changed, and return it
        (a copy)."""
        with self._lock:
            new = on(self._state, event)
            if new != self._state:
                if new.label_config != self._state.label_config:
                    self._iface = None
                self._state = new
                self.store.state.save(new.to_dict())
            return new.copy()

    def update(self, **changes: Any) -> None:
        """Change bookkeeping fields of the state (``BOOKKEEPING``: what the backend remembers of Label Studio) and
        save it; the round's fields change only through ``apply``."""
        with self._lock:
            for name, value in changes.items():
                if name not in BOOKKEEPING:
                    raise AttributeError(f"ProjectState.{name} is not a bookkeeping field: it changes only through "
                                         "an event (ProjectContext.apply)")
                setattr(self._state, name, value)
            self.store.state.save(self._state.to_dict())

    @property
    def lock(self) -> threading.RLock:
        """Held while a decision reads and then changes the state."""
        return self._lock

    @property
    def model_version(self) -> str:
        return version_name(self.state.version)

    @property
    def parsed_config(self) -> ParsedLabelConfig:
        """The parsed label config of the project."""
        with self._lock:
            if self._iface is None:
                self._iface = parse_label_config(self._state.label_config, self.config)
            return self._iface

    # --- the pool --------------------------------------------------------------------------------------------------

    def image_url(self, data: dict[str, Any]) -> str:
        url = data.get(self.parsed_config.image_key)
        if not isinstance(url, str) or not url:
            raise ValueError(f"task data has no {self.parsed_config.image_key!r} image URL")
        return url

    def list_sources(self) -> dict[int, dict[str, Any]]:
        """Source tasks (the pool) as Label Studio lists them now: every task that is not one of our query tasks and
        has an image. Reads only: the listings that decide a version's pool (the round job's, the mask push's) are
        kept by their caller through ``store.sources.replace``, so ``export`` works without Label Studio.
        """
        key = self.parsed_config.image_key
        return {int(t["id"]): t.get("data") or {} for t in self.client.iter_tasks(self.project_id)
                if not (t.get("data") or {}).get(QUERY_MARKER) and (t.get("data") or {}).get(key)}

    def points_by_source(self) -> dict[int, np.ndarray]:
        """Stored clicks per source image with labels as CURRENT class indices (removed classes -> ignore)."""
        state = self.state
        return remap_points(self.store.clicks.labelled_points(), state.label_names, state.classes)


def remap_points(points: dict[int, np.ndarray], label_names: list[str], classes: list[str]) -> dict[int, np.ndarray]:
    """Stored labels (indices into ``label_names``) as indices into ``classes``; a name not there -> IGNORE_INDEX."""
    lookup = np.array([classes.index(n) if n in classes else IGNORE_INDEX for n in label_names] or [IGNORE_INDEX],
                      dtype=np.int64)
    out = {}
    for source, table in points.items():
        table = table.copy()
        valid = table[:, 2] >= 0
        table[valid, 2] = lookup[table[valid, 2]]
        out[source] = table
    return out
