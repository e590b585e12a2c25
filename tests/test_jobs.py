"""Round jobs in the backend's process: at most MAX_TRAINING_JOBS at once, the others wait for a slot."""

from __future__ import annotations

import threading

import pytest

from ovaal_backend.backend.jobs import InProcessJobs, job_runner
from ovaal_backend.config import ConfigError
from ovaal_backend.engine.job import START, RoundJob
from tests.helpers.fake_label_studio import CLASSES, tiny_config
from tests.helpers.synthetic import make_dataset


def start_job(tmp_path, name: str) -> RoundJob:
    """A real round job that only picks round 0's random pixels (no training: seconds)."""
    paths = sorted(str(p) for p in (make_dataset(tmp_path / name, 2) / "images").iterdir())
    return RoundJob(config=tiny_config(tmp_path), classes=list(CLASSES), ended_round=START, keys=[1, 2],
                    image_paths=paths, points=[[], []], checkpoint=str(tmp_path / name / "model.pt"), version=1,
                    generation=0)


def test_a_second_project_waits_for_the_training_slot(tmp_path):
    jobs = job_runner(tiny_config(tmp_path, max_training_jobs=1))
    assert isinstance(jobs, InProcessJobs) and jobs.status()["slots"] == 1
    results, job = {}, start_job(tmp_path, "b")
    with jobs._slot("7-g0-v1-r0"):  # project 7's job holds the only slot
        waiting = threading.Thread(target=lambda: results.update(done=jobs.run(job, 8)))
        waiting.start()
        waiting.join(timeout=2)
        assert waiting.is_alive() and "done" not in results
        assert jobs.status() == {"kind": "in-process", "slots": 1, "running": ["7-g0-v1-r0"],
                                 "waiting": [f"8-{job.job_id}"]}
    waiting.join(timeout=120)
    assert set(results["done"].queries) == {1, 2}
    assert jobs.status()["running"] == jobs.status()["waiting"] == []


def test_two_slots_run_two_jobs_at_once(tmp_path):
    jobs = InProcessJobs(slots=2)
    with jobs._slot("7-job"):
        assert set(jobs.run(start_job(tmp_path, "c"), 8).queries) == {1, 2}  # no wait: a slot was free


def test_max_training_jobs_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match="max_training_jobs"):
        tiny_config(tmp_path, max_training_jobs=0)
