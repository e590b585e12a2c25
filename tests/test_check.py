"""``python -m ovaal_backend check`` (backend/check.py): one finding per item, each against the real part it checks
(Label Studio, files, torch, Redis); the exit status says whether all are ok."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ovaal_backend.backend.check import (
    check_device,
    check_document_root,
    check_label_studio,
    check_model_dir,
    check_redis,
    effective_settings,
)
from ovaal_backend.cli import main
from ovaal_backend.config import Config
from tests.helpers.ls_server import REPO_ROOT, free_port

WRONG_KEY = "0123456789abcdef0123456789abcdef01234567"


def items(findings) -> dict:
    return {f.item: f for f in findings}


@pytest.mark.e2e
def test_label_studio_url_and_key(label_studio):
    good = items(check_label_studio(Config(label_studio_url=label_studio.url,
                                           label_studio_api_key=label_studio.token)))
    assert good["label_studio_url"].ok and good["label_studio_api_key"].ok
    assert "legacy token of ovaal-test@example.com" in good["label_studio_api_key"].detail
    wrong_key = items(check_label_studio(Config(label_studio_url=label_studio.url, label_studio_api_key=WRONG_KEY)))
    assert wrong_key["label_studio_url"].ok and not wrong_key["label_studio_api_key"].ok
    assert "answered 401" in wrong_key["label_studio_api_key"].detail
    empty_key = items(check_label_studio(Config(label_studio_url=label_studio.url)))
    assert not empty_key["label_studio_api_key"].ok and "empty" in empty_key["label_studio_api_key"].detail


def test_an_unreachable_label_studio_fails_both_lines():
    found = items(check_label_studio(Config(label_studio_url=f"http://127.0.0.1:{free_port()}",
                                            label_studio_api_key=WRONG_KEY)))
    assert not found["label_studio_url"].ok and "connection refused" in found["label_studio_url"].detail
    assert not found["label_studio_api_key"].ok and found["label_studio_api_key"].fix == "fix LABEL_STUDIO_URL first"


def test_document_root_reads_one_image_through_it(tmp_path):
    root = tmp_path / "files"
    (root / "a b").mkdir(parents=True)
    Image.fromarray(np.zeros((6, 8, 3), dtype=np.uint8)).save(root / "a b" / "x.png")
    found = check_document_root(Config(label_studio_local_files_document_root=str(root)))
    assert found.ok and "/data/local-files/?d=a%20b/x.png (8x6)" in found.detail, found.detail
    (root / "a b" / "x.png").write_bytes(b"not an image")
    broken = check_document_root(Config(label_studio_local_files_document_root=str(root)))
    assert not broken.ok and "reading x.png failed" in broken.detail
    missing = check_document_root(Config(label_studio_local_files_document_root=str(tmp_path / "nowhere")))
    assert not missing.ok and "not a folder" in missing.detail
    assert check_document_root(Config()).ok  # not shared: downloads


def test_model_dir_must_take_a_file(tmp_path):
    assert check_model_dir(Config(model_dir=str(tmp_path / "new" / "models"))).ok  # made when missing
    (tmp_path / "file").write_text("x")
    found = check_model_dir(Config(model_dir=str(tmp_path / "file" / "models")))  # below a file: never a folder
    assert not found.ok and "cannot be written" in found.detail and "MODEL_DIR" in found.fix


def test_device_and_training_profile():
    import torch

    has_cuda = torch.cuda.is_available()
    found, effective = check_device(Config(device="auto"))
    assert found.ok and effective.train_profile == ("gpu" if has_cuda else "cpu")
    assert f"training profile {effective.train_profile}" in found.detail
    queued, none = check_device(Config(device="auto", redis_url="redis://127.0.0.1:1/0"))
    assert queued.ok and none is None and "each worker picks gpu or cpu" in queued.detail
    if not has_cuda:
        cuda, _ = check_device(Config(device="cuda"))
        assert not cuda.ok and "no CUDA device" in cuda.detail and "DEVICE=auto" in cuda.fix


def test_effective_settings_name_where_each_value_comes_from():
    config = Config.from_env({"EPOCHS": "20", "TRAIN_PROFILE": "cpu"})
    found = effective_settings(config, config.for_machine(has_cuda=True))
    assert "epochs=20 (set)" in found.detail and "image_height=176 (profile cpu)" in found.detail
    queued = effective_settings(Config.from_env({"EPOCHS": "20", "REDIS_URL": "redis://r:6379/0"}), None)
    assert "decided on each worker" in queued.detail and "epochs=20" in queued.detail


def test_redis_and_its_workers(redis_url):
    from redis import Redis
    from rq import Queue
    from rq.worker import Worker

    assert check_redis(Config())[0].ok  # no REDIS_URL: jobs in-process
    config = Config(redis_url=redis_url, job_queue="ovaal-check")
    found = items(check_redis(config))
    assert found["redis"].ok and not found["workers"].ok and "ovaal_backend worker" in found["workers"].fix
    connection = Redis.from_url(redis_url)
    worker = Worker([Queue("ovaal-check", connection=connection)], connection=connection, name="check-worker")
    worker.register_birth()  # a worker as rq registers it when it starts
    try:
        found = items(check_redis(config))
        assert found["workers"].ok and "check-worker" in found["workers"].detail
    finally:
        worker.register_death()
    down = items(check_redis(Config(redis_url=f"redis://127.0.0.1:{free_port()}/0")))
    assert not down["redis"].ok and "ConnectionError" in down["redis"].detail


def test_exit_status_1_and_one_line_per_item(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LABEL_STUDIO_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("MODEL_DIR", str(tmp_path))
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert main(["check"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "FAIL label_studio_url", "FAIL label_studio_api_key", "ok   document_root", "ok   model_dir", "ok   device",
        "ok   redis", "ok   settings"]


@pytest.mark.e2e
def test_check_passes_against_the_real_label_studio(label_studio, tmp_path):
    """The console command, as an admin runs it: all ok gives exit status 0, and --json the same findings."""
    image = label_studio.document_root / "check" / "one.png"
    image.parent.mkdir(exist_ok=True)
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(image)
    env = {"PATH": "/usr/bin:/bin", "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
           "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(label_studio.document_root), "MODEL_DIR": str(tmp_path),
           "NO_PROXY": "127.0.0.1"}
    done = subprocess.run([sys.executable, "-m", "ovaal_backend", "check", "--json"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] and [i["item"] for i in report["items"]] == [
        "label_studio_url", "label_studio_api_key", "document_root", "model_dir", "device", "redis", "settings"]
