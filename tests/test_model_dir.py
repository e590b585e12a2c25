"""MODEL_DIR under real servers: one `serve` per MODEL_DIR, start-up never pulls a live writer's temporary file, and
one project's corrupt state file is set aside while the other projects are served."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from ovaal_backend.backend.project.driver import ProjectDriver
from tests.helpers.fake_label_studio import XML, FakeLabelStudio, add_scenes, drain, tiny_config
from tests.helpers.ls_server import REPO_ROOT, BackendProcess, backend_env, free_port, loopback_session

WRITER = """
import sys, time
from ovaal_backend.files import write_atomically

def slowly(handle):
    handle.write(b"half a file")
    handle.flush()
    print("writing", flush=True)
    time.sleep(120)

write_atomically(sys.argv[1], slowly)
"""


def server_env(tmp_path: Path, model_dir: Path) -> dict[str, str]:
    """A backend's environment with a Label Studio address nobody answers at (these tests need none)."""
    nobody = SimpleNamespace(url=f"http://127.0.0.1:{free_port()}", token="unused", document_root=tmp_path)
    return backend_env(nobody, model_dir, {"RETRY_SECONDS": "60"})


def writer_in_the_middle(target: Path) -> tuple[subprocess.Popen, Path]:
    """Another process (a queue worker, say) half-way through ``write_atomically(target)``; returns it and its
    temporary file."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "writing"
    (temporary,) = target.parent.glob(f"{target.name}.*.tmp")
    return proc, temporary


@pytest.mark.slow  # two backend processes, one after the other
def test_one_server_per_model_dir_and_live_writers_keep_their_files(tmp_path):
    model_dir = tmp_path / "models"
    live, live_file = writer_in_the_middle(model_dir / "1" / "model.pt")
    killed, killed_file = writer_in_the_middle(model_dir / "1" / "masks" / "3.npz")
    killed.kill()
    killed.wait()
    env = server_env(tmp_path, model_dir)
    backend = BackendProcess(env, tmp_path / "backend.log")
    try:
        backend.start()
        assert live_file.exists() and not killed_file.exists()  # only the dead writer's file was removed
        second = subprocess.run([sys.executable, "-m", "ovaal_backend", "serve"], cwd=REPO_ROOT, timeout=120,
                                env=dict(env, PORT=str(free_port())), capture_output=True, text=True)
        assert second.returncode == 2
        assert second.stderr.strip().splitlines() == [
            f"error: MODEL_DIR {model_dir.resolve()} is already served by pid {backend.proc.pid} on "
            f"{socket.gethostname()}: stop that server, or give this one its own MODEL_DIR"]
        assert loopback_session().get(f"{backend.url}/health", timeout=10).status_code == 200
    finally:
        backend.stop()
        live.kill()
        live.wait()
    restarted = BackendProcess(env, tmp_path / "backend-2.log")  # the lock went with the first server
    restarted.start()
    restarted.stop()


@pytest.mark.slow  # a backend process
def test_a_corrupt_project_is_set_aside_and_the_others_are_served(tmp_path):
    fake = FakeLabelStudio()
    config = tiny_config(tmp_path)
    for project_id in (1, 2):
        fake.add_project(project_id)
        add_scenes(fake, 2, seed=project_id, project=project_id)
        driver = ProjectDriver(config, project_id, fake)
        driver.setup(f"{project_id}.1700000000", XML)
        drain(driver)  # round 0's query tasks are out
    bad_file = Path(config.model_dir) / "2" / "labels.sqlite3"
    garbage = os.urandom(4096)
    bad_file.write_bytes(garbage)
    backend = BackendProcess(server_env(tmp_path, Path(config.model_dir)), tmp_path / "backend.log")
    backend.start()
    try:
        session = backend.session()
        assert session.get(f"{backend.url}/health", timeout=10).json()["status"] == "UP"
        metrics = session.get(f"{backend.url}/metrics", timeout=30).json()
        assert set(metrics["projects"]) == {"1"} and metrics["projects"]["1"]["round"] == 0
        aside = metrics["set_aside"]["2"]
        assert aside["file"] == str(bad_file) and "DatabaseError" in aside["reason"]
        good = fake.annotate(fake.query_tasks(1, 0)[0]["id"], [])
        answer = session.post(f"{backend.url}/webhook", json=good, timeout=10)
        assert answer.status_code == 201 and answer.json()["status"] == "queued"
        refused = session.post(f"{backend.url}/webhook", json=dict(good, project={"id": 2}), timeout=10)
        assert refused.status_code == 503 and "project 2 is set aside" in refused.json()["error"]
        assert bad_file.read_bytes() == garbage  # left in place for the admin
    finally:
        backend.stop()
    assert "project 2: set aside" in backend.log_tail(200_000)
