"""A full disk under the real backend, against a REAL Label Studio 1.23.2: a webhook that cannot be stored is
answered 507 (never a 201 for a label the backend does not hold), and after the disk has room again
``python -m ovaal_backend resync`` stores what Label Studio sent meanwhile.

A tmpfs cannot be mounted without privileges, so the disk is made full the way ``ulimit -f`` does it: the backend
(gunicorn and its worker) starts with RLIMIT_FSIZE, and SIGXFSZ ignored, so that a write past the limit fails with
EFBIG as a write to a full disk fails with ENOSPC, in SQLite's own write path. The limit leaves room for SQLite's
32 KiB shared-memory file and a short log, and not for the write-ahead log to grow: the first webhooks may still be
stored, and then every write fails. Run with
``OVAAL_LS_BIN=$PWD/.venv-ls/bin/label-studio .venv/bin/python -m pytest tests/test_disk_full.py -s``.
"""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
from collections.abc import Callable

import pytest

from tests.helpers.fault_kit import (
    Proxy,
    all_tasks,
    annotate,
    backend_env,
    connect_model,
    live_annotations,
    make_project,
    project_metrics,
    query_tasks,
    stored_annotation_ids,
    webhook_has_auth,
)
from tests.helpers.ls_server import REPO_ROOT, BackendProcess, wait_for

pytestmark = pytest.mark.e2e

N_IMAGES = 4
FILE_SIZE_LIMIT = 36 * 1024
"""Bytes any file of the backend may reach: SQLite's -shm file (32 KiB) fits, a few write-ahead-log pages more."""


def file_size_limit(limit: int) -> Callable[[], None]:
    """A ``preexec_fn``: writes past ``limit`` bytes fail with EFBIG (SIGXFSZ ignored, so nothing is killed)."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def webhook_answers(tap: Proxy) -> dict[int, tuple[int | None, dict]]:
    """Annotation id -> (status, payload) of the last ANNOTATION_CREATED webhook Label Studio sent for it."""
    return {int(e.body["annotation"]["id"]): (e.status, e.body) for e in tap.exchanges(
        lambda e: e.path.startswith("/webhook") and isinstance(e.body, dict)
        and e.body.get("action") == "ANNOTATION_CREATED")}


def test_a_full_disk_answers_507_and_resync_stores_the_label(label_studio, tmp_path):
    project = make_project(label_studio, "disk-full", N_IMAGES)
    pid, model_dir = project.id, tmp_path / "models"
    env = backend_env(label_studio, model_dir)
    backend = BackendProcess(env, tmp_path / "backend.log")
    full = BackendProcess(env, tmp_path / "backend-full.log", preexec_fn=file_size_limit(FILE_SIZE_LIMIT))
    backend.start()
    # the same port after restarts; Host kept, so the backend knows the URL Label Studio uses as its own
    tap = Proxy(backend.url, keep_body=lambda path: path.startswith("/webhook"), keep_host=True)
    try:
        with tap:
            connect_model(label_studio, pid, tap.url)
            wait_for("round-0 query tasks", lambda: len(query_tasks(all_tasks(label_studio, pid), 0)) == N_IMAGES,
                     90, backend)
            wait_for("our basic-auth header on the webhook", lambda: webhook_has_auth(label_studio, pid), 30, backend)
            backend.stop()
            assert (model_dir / str(pid) / "labels.sqlite3").stat().st_size > FILE_SIZE_LIMIT
            full.start()
            refused, payload = annotate_until_refused(label_studio, project, tap, full)
            check_refused_answer(full, payload, tmp_path)
            full.stop()
            assert refused not in stored_annotation_ids(model_dir, pid), "a label answered 507 was stored"
            backend.start()  # the disk has room again
            done = subprocess.run([sys.executable, "-m", "ovaal_backend", "resync", "--project", str(pid)],
                                  cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0 and "queued" in done.stdout, done.stdout + done.stderr
            in_ls = {int(a["id"]) for a in live_annotations(all_tasks(label_studio, pid))}
            wait_for("every label of Label Studio stored", lambda: stored_annotation_ids(model_dir, pid) >= in_ls,
                     60, backend)
            metrics = project_metrics(backend, pid, timeout=10)
            assert metrics is not None and not metrics["quarantined"]["events"]
            print(f"\n{len(in_ls)} labels in Label Studio; annotation {refused} was answered 507 under a "
                  f"{FILE_SIZE_LIMIT // 1024} KiB file-size limit and stored after resync; stored now: "
                  f"{sorted(stored_annotation_ids(model_dir, pid))}")
    finally:
        full.stop()
        backend.stop()
        print("\n--- full-disk backend log (tail) ---\n" + full.log_tail(2500))


def annotate_until_refused(label_studio, project, tap: Proxy, backend: BackendProcess) -> tuple[int, dict]:
    """Answer round 0's query tasks through Label Studio, one at a time, until the backend refuses a webhook;
    returns that annotation's id and the payload Label Studio sent. Every webhook is answered 201 or 507."""
    for task in query_tasks(all_tasks(label_studio, project.id), 0):
        annotation_id = annotate(label_studio, task, project)
        status, payload = wait_for(f"the webhook of annotation {annotation_id}",
                                   lambda a=annotation_id: webhook_answers(tap).get(a), 30, backend)
        assert status in (201, 507), status
        if status == 507:
            return annotation_id, payload
    raise AssertionError(f"every webhook was stored under a {FILE_SIZE_LIMIT}-byte file-size limit")


def check_refused_answer(backend: BackendProcess, payload: dict, tmp_path) -> None:
    """The same delivery sent again: 507 and a JSON reason that names the fix and no path."""
    response = backend.session().post(f"{backend.url}/webhook", json=payload, timeout=30)
    assert response.status_code == 507, response.text
    body = response.json()
    assert set(body) == {"error", "request_id"} and "disk full" in body["error"] and "resync" in body["error"]
    assert str(tmp_path) not in response.text and "sqlite" not in response.text.lower()
