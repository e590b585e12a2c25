"""Background work per project: one thread that applies stored events and runs the driver's steps.

Label Studio waits one second for a webhook answer, so requests only store the event and wake this thread; training,
pixel selection and pushes run here, one at a time per project. Events that arrive while it trains stay in the store
and are applied before the next step. On start the thread first replays what a previous process left undone
(restart recovery): pending events, then the persisted phase (an interrupted training runs again; an interrupted
publish continues where it stopped).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from .project.driver import ProjectDriver

log = logging.getLogger(__name__)

POLL_SECONDS = 2.0
"""How often an idle worker looks at the store unasked: picks up events queued by another process (``resync``)
and the delayed project check."""
RETRY_SECONDS = 30.0
"""Wait after a failed step (Label Studio down, an image missing) before trying the same step again."""


class ProjectWorker:
    """The background thread of one project.

    Args:
        driver: The project's driver.
        poll_seconds: Idle wake-up interval.
        retry_seconds: Back-off after a failed step.
    """

    def __init__(self, driver: ProjectDriver, poll_seconds: float = POLL_SECONDS,
                 retry_seconds: float = RETRY_SECONDS) -> None:
        self.driver = driver
        self.poll_seconds = poll_seconds
        self.retry_seconds = retry_seconds
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._thread: threading.Thread | None = None
        self.busy_with: str | None = None
        self.last_error: str | None = None

    def start(self) -> ProjectWorker:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"ovaal-project-{self.driver.key}", daemon=True)
            self._thread.start()
        return self

    def wake(self) -> None:
        """Something was stored for this project: look now instead of at the next poll."""
        self._idle.clear()
        self._wake.set()

    def stop(self, timeout: float | None = None) -> None:
        """Ask the thread to end after its current step (a running training is not interrupted)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wait_idle(self, timeout: float) -> bool:
        """Block until every stored event is applied and no step is due (tests); False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._idle.wait(min(0.1, max(0.0, deadline - time.monotonic()))) and self._is_idle():
                return True
        return False

    def status(self) -> dict[str, Any]:
        return {"alive": self._thread is not None and self._thread.is_alive(), "busy_with": self.busy_with,
                "last_error": self.last_error}

    def run_pending(self) -> bool:
        """Apply stored events and run steps until nothing is due; False if a step failed.

        Events are applied again between steps, so clicks that arrived during a training are stored before the
        next round is chosen.
        """
        while not self._stop.is_set():
            self.driver.process_events()
            if not self.driver.needs_step():
                return True
            self.busy_with = self.driver.phase
            try:
                self.driver.step()
                self.last_error = None
            except Exception as err:
                self.last_error = f"{type(err).__name__}: {err}"
                log.exception("project %s: step '%s' failed; retrying in %.0f s", self.driver.key, self.busy_with,
                              self.retry_seconds)
                return False
            finally:
                self.busy_with = None
        return True

    def _is_idle(self) -> bool:
        return (not self._wake.is_set() and self.busy_with is None
                and not self.driver.store.events.pending_count() and not self.driver.needs_step())

    def _run(self) -> None:
        log.info("project %s: worker started (phase %s, %s)", self.driver.key, self.driver.phase,
                 self.driver.model_version)
        while not self._stop.is_set():
            self._wake.clear()
            try:
                ok = self.run_pending()
            except Exception:  # never let the thread die: the next wake-up tries again
                log.exception("project %s: worker loop failed", self.driver.key)
                ok = False
            if self._is_idle():
                self._idle.set()
            self._wake.wait(self.poll_seconds if ok else self.retry_seconds)
        log.info("project %s: worker stopped", self.driver.key)
