"""The queue worker's class, and what keeps each of its work horses from outliving it.

A worker (``python -m ovaal_backend worker``) runs each round job in a work horse: a fresh interpreter that rq's
``SpawnWorker`` starts with ``posix_spawn`` in a process group of its own. A worker killed with -9 (alone, with its
process group, by the OOM killer) must take its horse with it: rq runs the abandoned job again on another worker, and
two runs at once would train twice and write the same checkpoint and mask files (on a GPU machine the orphan would
also hold the GPU). So a horse ends whenever its worker is gone:

- ``RoundWorker.fork_work_horse`` names the worker's pid in the horse's environment (``PARENT_PID_ENV``);
- the horse imports this module before any other code of ours (rq's spawn source imports redis and rq, then
  unpickles the worker's class, ``RoundWorker``, from here), and importing it runs ``follow_worker``: on Linux it asks
  the kernel to SIGKILL the horse when its parent dies (``prctl(PR_SET_PDEATHSIG)``), then checks that the worker is
  still its parent: a worker that died before that (while the interpreter started) ends the horse at once, before it
  has fetched its job; a thread also polls the parent every ``WATCH_SECONDS`` (the only watch where ``prctl`` is
  missing, and a second one should the horse be re-parented without a signal).

This module therefore imports only the standard library and rq: anything heavy imported here (torch, the engine)
would delay the guard by seconds, the window in which an orphan used to be left (tests/test_worker_death.py).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time

from rq.job import Job
from rq.queue import Queue
from rq.worker import SpawnWorker

log = logging.getLogger(__name__)

PARENT_PID_ENV = "OVAAL_QUEUE_WORKER_PID"
"""The pid of the process that spawned this one: a process that imports this module with another pid than its own
here is that worker's horse, and ends when it is no longer its child."""
WATCH_SECONDS = 0.5
"""How often a horse's watch thread checks that its worker is still its parent."""
PR_SET_PDEATHSIG = 1
"""Linux ``prctl`` option (linux/prctl.h): the signal this process gets when the thread that created it exits."""


class RoundWorker(SpawnWorker):
    """An RQ worker whose work horse is a fresh interpreter (``posix_spawn``, never a fork: CUDA is never inherited)
    that ends with the worker (see the module docstring).

    Its running job's entry in the started registry lives ``2 * job_monitoring_interval + 5`` s past each heartbeat
    (rq adds a fixed minute), so a killed worker's job is found abandoned and re-run soon.
    """

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return int(2 * self.job_monitoring_interval + 5)

    def fork_work_horse(self, job: Job, queue: Queue) -> None:
        """Spawn the horse (from the worker's main thread: the parent-death signal follows that thread) with this
        worker's pid in its environment."""
        os.environ[PARENT_PID_ENV] = str(os.getpid())
        super().fork_work_horse(job, queue)


def follow_worker(interval: float = WATCH_SECONDS) -> None:
    """In a horse of ``RoundWorker``: end this process when its worker is gone, from now to its last instruction.

    Does nothing in any other process (the worker, the backend, a test). The horse then names itself in
    ``PARENT_PID_ENV``, so a process it starts that imports this module follows the horse in turn.
    """
    parent = _spawning_worker()
    if parent is None:
        return
    _die_with_parent()
    if os.getppid() != parent:  # the worker died before the signal was armed: it never will be sent
        _leave(parent)
    os.environ[PARENT_PID_ENV] = str(os.getpid())
    threading.Thread(target=_watch, args=(parent, interval), name="ovaal-parent-watch", daemon=True).start()


def _spawning_worker() -> int | None:
    """The pid of the worker that spawned this process as its horse, or None when this is no horse."""
    value = os.environ.get(PARENT_PID_ENV, "")
    if not value.isdigit() or int(value) == os.getpid():
        return None
    return int(value)


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent exits (elsewhere only the watch thread guards)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):  # no libc prctl (e.g. a static build): the watch thread still guards
        log.warning("prctl(PR_SET_PDEATHSIG) is unavailable: this work horse polls its worker instead")


def _watch(parent: int, interval: float) -> None:
    while True:
        time.sleep(interval)
        if os.getppid() != parent:
            _leave(parent)


def _leave(parent: int) -> None:
    """End this horse now: its worker is gone and rq will give the job to another worker."""
    log.error("queue worker %d is gone: its work horse %d stops", parent, os.getpid())
    os._exit(1)


follow_worker()  # at import: the first of our code a horse runs (see the module docstring)
