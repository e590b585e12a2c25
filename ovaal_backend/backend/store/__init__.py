"""A project's SQLite file: one ``ProjectStore`` per project, made of small repositories named for what they hold.

Each project has its own file (``MODEL_DIR/<project id>/labels.sqlite3``). Every call opens its own connection (WAL
mode, so readers never block the writer) and the file's one lock serialises the writes of all its repositories, which
makes one ``ProjectStore`` safe to share between the Flask threads, the project's worker and ``/metrics``.
"""

from __future__ import annotations

from pathlib import Path

from ..sqlite import SqliteFile
from .clicks import Clicks
from .corrections import Corrections, map_digest
from .events import Events
from .masks import Masks, MaskStatus
from .records import Quarantine, SavedState, Sources, Trainings
from .rounds import QueryStatus, Rounds

__all__ = ["MaskStatus", "ProjectStore", "QueryStatus", "map_digest"]


class ProjectStore(SqliteFile):
    """One project's durable state: its file, its one write lock, and a repository per kind of row.

    Args:
        path: The SQLite file; its folder is created if missing, the schema on first open (a file written by an
            earlier version opens as it is: the schema only gains what it lacks).
        key: The project key (Label Studio's project id as text), written in the rows' ``project`` column.

    Example:
        >>> store = ProjectStore("model_dir/7/labels.sqlite3", "7")
        >>> event_id = store.events.add("ANNOTATION_CREATED", {"annotation": {"id": 1}})
        >>> store.events.pending_count()
        1
    """

    def __init__(self, path: str | Path, key: str) -> None:
        super().__init__(path, (Clicks, Events, SavedState, Rounds, Masks, Sources, Quarantine, Trainings,
                                Corrections))
        self.key = key
        self.clicks = Clicks(self, key)
        """Annotations and their labelled pixels."""
        self.events = Events(self, key)
        """Webhook events, stored before they are applied."""
        self.state = SavedState(self, key)
        """The round state machine's saved state."""
        self.rounds = Rounds(self, key)
        """Query tasks per round: planned, imported, answered."""
        self.masks = Masks(self, key)
        """Dense mask files per version, on their way to Label Studio."""
        self.sources = Sources(self, key)
        """The source tasks last listed."""
        self.quarantine = Quarantine(self, key)
        """Items set aside (unreadable images)."""
        self.trainings = Trainings(self, key)
        """One record per trained version."""
        self.corrections = Corrections(self, key)
        """Corrected masks, the newest per task counting."""
