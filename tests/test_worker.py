"""The per-project background thread: applies events, runs steps one at a time, survives failing steps."""

from __future__ import annotations

import threading

from ovaal_backend.backend.worker import ProjectWorker


class FakeEvents(list):
    """The events of a ``ProjectStore`` as far as the worker asks: how many are pending."""

    def pending_count(self) -> int:
        return len(self)


class FakeStore:
    def __init__(self) -> None:
        self.events = FakeEvents()


class FakeDriver:
    """A driver whose steps are counted, can fail, and can overlap (they must not)."""

    key = "1"
    phase = "training"
    model_version = "ovaal-0"

    def __init__(self, steps: int, failures: int = 0) -> None:
        self.store = FakeStore()
        self.steps_left = steps
        self.failures = failures
        self.applied = 0
        self.running = threading.Lock()
        self.overlaps = 0

    def process_events(self) -> int:
        n = len(self.store.events)
        self.applied += n
        self.store.events.clear()
        return n

    def needs_step(self) -> bool:
        return self.steps_left > 0

    def step(self) -> bool:
        if not self.running.acquire(blocking=False):
            self.overlaps += 1
            return False
        try:
            if self.failures:
                self.failures -= 1
                raise RuntimeError("Label Studio is down")
            self.steps_left -= 1
            return True
        finally:
            self.running.release()


def test_run_pending_applies_events_between_steps():
    driver = FakeDriver(steps=3)
    driver.store.events.extend([1, 2])
    assert ProjectWorker(driver).run_pending()
    assert driver.steps_left == 0 and driver.applied == 2


def test_a_failing_step_is_reported_and_retried():
    driver = FakeDriver(steps=1, failures=1)
    worker = ProjectWorker(driver)
    assert not worker.run_pending()
    assert "Label Studio is down" in worker.status()["last_error"]
    assert worker.run_pending() and driver.steps_left == 0
    assert worker.status()["last_error"] is None


def test_thread_wakes_retries_and_stops():
    driver = FakeDriver(steps=2, failures=1)
    worker = ProjectWorker(driver, poll_seconds=0.05, retry_seconds=0.05).start()
    try:
        assert worker.wait_idle(10)
        assert driver.steps_left == 0 and driver.overlaps == 0
        driver.store.events.append(7)
        driver.steps_left = 1
        worker.wake()
        assert worker.wait_idle(10)
        assert driver.applied == 1 and driver.steps_left == 0
        assert worker.status()["alive"]
    finally:
        worker.stop(timeout=5)
    assert not worker.status()["alive"]
