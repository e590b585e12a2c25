"""The backend on CPU with 20 CamVid images, against a real Label Studio 1.23.2 on 127.0.0.1.

Measures what the issue asks for:

1. the time from the LAST annotation of round 0 to the round-1 batch being visible in Label Studio (query tasks with
   their predictions listed; dense masks on every source task; the project switched to the new version; the label
   stream serving a round-1 task), with a breakdown from the backend's ``/metrics`` (polled: when its phase, round,
   version and query tasks changed; the training's own record in ``trainings`` gives the loop's length and end);
2. ``/predict`` latency per image (dense masks of source tasks, one task per request: the first call separately, then
   median and p90 over all the images) and for one request with every image, plus the first call after a restart;
3. the backend's peak memory (VmHWM of its processes from /proc, and the peak sum of PSS sampled every 0.5 s).

Set-up is what an admin does (tests/test_e2e_label_studio.py): a project with label_config/camvid.xml, a local
storage over a temporary document root holding copies of the first N CamVid training images (never the repo), the
backend started as ``python -m ovaal_backend serve`` and connected as the project's model. The scripted annotator of
the tests (tests/helpers/annotator.py) answers every round-0 query point from the ground truth through Label Studio's
API. Every Label Studio call goes through the backend's own client (``LabelStudioClient``).

Usage::

    .venv/bin/python benchmarks/backend_bench.py                      # prints Markdown, updates docs/benchmarks.md
    .venv/bin/python benchmarks/backend_bench.py --screenshot docs/images/query-task.png --no-docs

Needs ``.venv-ls/bin/label-studio`` (``make install-ls``; or OVAAL_LS_BIN) and ``../shared/data/camvid``; skips with a
message when either is missing. Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import requests
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from doc_section import write_section  # noqa: E402

from ovaal_backend.backend.client import LabelStudioClient  # noqa: E402
from ovaal_backend.backend.convert import ParsedLabelConfig, percent_to_pixel  # noqa: E402
from ovaal_backend.config import Config  # noqa: E402
from tests.helpers.annotator import answer_keypoints  # noqa: E402
from tests.helpers.ls_server import BackendProcess, LabelStudioServer, free_port, wait_for  # noqa: E402

CAMVID = ROOT.parent / "shared" / "data" / "camvid"
COMMAND = ".venv/bin/python benchmarks/backend_bench.py"
SETTINGS = {  # the defaults, except a small training (the cpu preset's sizes and epochs) and one round after round 0
    "DEVICE": "cpu", "IMAGE_HEIGHT": "176", "IMAGE_WIDTH": "240", "FIRST_ROUND_EPOCHS": "2", "EPOCHS": "1",
    "ROUNDS": "1", "SEMI_EPOCHS": "1", "INIT_PIXELS": "22", "PIXELS_PER_ROUND": "22",
}
RUN_SETTINGS = {"HOST": "127.0.0.1"}  # how the bench runs the server, not a model setting: loopback only
POLL = 0.5
"""Seconds between two looks at Label Studio while waiting for the next batch (the resolution of those times)."""
METRICS_POLL = 0.2
"""Seconds between two looks at the backend's /metrics during the round change (the resolution of the breakdown)."""
ANY_STATUS = range(200, 600)
"""``expect`` for a Label Studio call whose every answer is looked at (the label stream's ``next``)."""


# ==================================================================== small helpers

def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q))


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), 0)
    gpu = "no GPU" if not shutil.which("nvidia-smi") else "a GPU present but DEVICE=cpu"
    return (f"{os.cpu_count()} CPU cores ({model}), {mem / 2**20:.0f} GiB RAM, {gpu}; Python "
            f"{platform.python_version()}, torch {metadata.version('torch')}")


# ==================================================================== memory of the backend's processes

def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (gunicorn: the arbiter and its one worker)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return out


def proc_kib(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (peak RSS) and PSS of one process, in KiB (missing keys when it is gone)."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(line.split()[1])
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                out["Pss"] = int(line.split()[1])
    except OSError:
        pass
    return out


class MemorySampler(threading.Thread):
    """Samples the backend's process tree every ``interval`` s: peak summed PSS/RSS, last VmHWM per process."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_pss = self.peak_rss = 0
        self.hwm: dict[int, int] = {}
        self.samples = 0
        self._stop_event = threading.Event()

    def sample(self) -> None:
        pss = rss = 0
        for p in process_tree(self.pid):
            info = proc_kib(p)
            pss += info.get("Pss", 0)
            rss += info.get("VmRSS", 0)
            if "VmHWM" in info:
                self.hwm[p] = max(self.hwm.get(p, 0), info["VmHWM"])
        self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)
        self.samples += 1

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval)

    def stop(self) -> dict[str, Any]:
        self._stop_event.set()
        self.join(5)
        self.sample()
        worker = max((p for p in self.hwm if p != self.pid), key=lambda p: self.hwm[p], default=None)
        return {"worker_vmhwm_mib": self.hwm.get(worker, 0) / 1024 if worker else None,
                "arbiter_vmhwm_mib": self.hwm.get(self.pid, 0) / 1024,
                "peak_pss_sum_mib": self.peak_pss / 1024, "peak_rss_sum_mib": self.peak_rss / 1024,
                "samples": self.samples}


# ==================================================================== CPU used by others (is the machine quiet?)

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(roots: list[int]) -> float:
    """CPU seconds (user + system) used so far by the process trees under ``roots``."""
    total = 0
    for root in roots:
        for p in process_tree(root):
            try:
                fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
            except (OSError, IndexError, ValueError):
                pass
    return total / TICK


def busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (every state but idle and iowait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / TICK


class CpuWindow:
    """How much CPU processes other than ours (backend, Label Studio, this script) used over a stretch of time."""

    def __init__(self, roots: list[int]) -> None:
        self.roots = roots
        self.t0, self.busy0, self.ours0 = time.monotonic(), busy_seconds(), cpu_seconds(roots)

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self.t0
        busy, ours = busy_seconds() - self.busy0, cpu_seconds(self.roots) - self.ours0
        other = max(0.0, busy - ours)
        return {"wall": wall, "busy": busy, "ours": ours, "other": other,
                "other_share": other / (wall * (os.cpu_count() or 1))}


# ==================================================================== the stack under test

@dataclass
class Stack:
    """What a run set up: Label Studio, the backend, the client, the project and its ground truth."""

    ls: LabelStudioServer
    backend: BackendProcess
    client: LabelStudioClient
    project: int
    truth_of: dict[int, np.ndarray]
    """Source task id -> ground-truth class map (void = -1)."""
    parsed_config: ParsedLabelConfig
    config_xml: str
    timeout: float
    full_listing: bool = False
    """Read every prediction instead of the Data Manager filter (set when the two disagree)."""
    next_task: int | None = None
    """The round-1 query task the label stream served."""

    @property
    def n(self) -> int:
        return len(self.truth_of)


def copy_images(camvid: Path, count: int, folder: Path) -> dict[str, np.ndarray]:
    """Copies of the first ``count`` CamVid training images in ``folder``; file name -> ground truth (void = -1)."""
    folder.mkdir(parents=True)
    n_classes = len(json.loads((camvid / "classes.json").read_text())["classes"])
    truth: dict[str, np.ndarray] = {}
    for path in sorted((camvid / "train" / "images").glob("*.jpg"))[:count]:
        shutil.copy(path, folder / path.name)  # copies in a temp dir, never in the repo
        label = np.asarray(Image.open(camvid / "train" / "labels" / f"{path.stem}.png"), dtype=np.int64)
        truth[path.name] = np.where(label >= n_classes, -1, label)
    return truth


def describe(env: dict[str, str], images: int) -> dict[str, Any]:
    """The start of the results: what runs where, with which settings (printed too)."""
    cfg = Config.from_env(env)
    print("settings (environment overrides):", " ".join(f"{k}={v}" for k, v in SETTINGS.items()))
    print("resolved engine settings:", json.dumps({k: v for k, v in cfg.to_dict().items()
                                                     if k not in ("label_studio_api_key", "basic_auth_pass")}))
    keys = ("arch", "encoder", "encoder_weights", "classifier", "selection", "batch_size", "predict_batch",
            "server_threads", "num_threads", "semi")
    return {"images": images, "settings": dict(SETTINGS), "machine": machine(),
            "date": datetime.date.today().isoformat(), "config": {k: getattr(cfg, k) for k in keys}}


def create_project(client: LabelStudioClient, ls: LabelStudioServer, folder: Path, truth: dict[str, np.ndarray],
                   config_xml: str) -> tuple[int, dict[int, np.ndarray]]:
    """What an admin does before connecting the model: project, local storage, one task per image."""
    project = client.request("POST", "/api/projects", json={"title": "OVAAL backend bench",
                                                            "label_config": config_xml}).json()["id"]
    client.request("POST", "/api/storages/localfiles/", json={
        "project": project, "path": str(folder), "title": "camvid", "use_blob_urls": True})
    names = sorted(truth)
    ids = client.import_tasks(project, [{"data": {"image": ls.local_files_url(folder / name)}} for name in names])
    return project, dict(zip(ids, (truth[name] for name in names), strict=True))


def query_round(task: dict[str, Any]) -> int | None:
    data = task.get("data") or {}
    return int(data["ovaal_round"]) if data.get("ovaal_query") else None


def versions_of(task: dict[str, Any]) -> set[str]:
    """Model versions of a task's predictions (from a full listing)."""
    return {str(p.get("model_version")) for p in task.get("predictions") or []}


def ids_with_version(stack: Stack, version: str) -> set[int]:
    """Ids of the tasks that have a prediction of ``version``, without downloading predictions.

    Uses the Data Manager filter on ``predictions_model_versions``; with ``stack.full_listing`` (the filter did not
    agree with a full listing) reads every prediction instead.
    """
    if stack.full_listing:
        return {t["id"] for t in stack.client.iter_tasks(stack.project, all_fields=True) if version in versions_of(t)}
    query = {"filters": {"conjunction": "and", "items": [
        {"filter": "filter:tasks:predictions_model_versions", "operator": "contains", "type": "List",
         "value": [version]}]}}
    body = stack.client.request("GET", "/api/tasks", params={
        "project": stack.project, "page_size": 1000, "include": "id", "query": json.dumps(query)}).json()
    return {t["id"] for t in body["tasks"]}


def connect_model(stack: Stack) -> tuple[list[dict[str, Any]], float]:
    """Connect the backend as the project's model; round 0 then appears by itself. Its tasks, and the seconds."""
    t_connect = time.time()
    stack.client.request("POST", "/api/ml/", json={"project": stack.project, "url": stack.backend.url,
                                                   "title": "OVAAL"})

    def round0_visible() -> list[dict[str, Any]] | None:
        tasks = [t for t in stack.client.iter_tasks(stack.project, all_fields=True) if query_round(t) == 0]
        return tasks if len(tasks) == stack.n and all("ovaal-0" in versions_of(t) for t in tasks) else None

    round0 = wait_for("round 0", round0_visible, stack.timeout, stack.backend, POLL)
    seconds = time.time() - t_connect
    print(f"round 0: {stack.n} query tasks visible {seconds:.1f} s after connecting")
    if ids_with_version(stack, "ovaal-0") != {t["id"] for t in round0}:
        print("the Data Manager filter on prediction versions disagrees with the full listing: polling full "
              "listings instead (heavier on Label Studio)")
        stack.full_listing = True
    return round0, seconds


def annotate(stack: Stack, tasks: list[dict[str, Any]], version: str) -> tuple[float, list[float]]:
    """The scripted annotator submits every task; (time.time() after the last submit, seconds of each submit)."""
    submit, t_last = [], time.time()
    for task in sorted(tasks, key=lambda t: t["id"]):
        prediction = next(p for p in task["predictions"] if p["model_version"] == version)
        truth = stack.truth_of[task["data"]["ovaal_source_task"]]
        result = answer_keypoints(prediction["result"], truth, stack.parsed_config.classes,
                                  stack.parsed_config.ignore_label)
        t0 = time.time()
        stack.client.request("POST", f"/api/tasks/{task['id']}/annotations/",
                             json={"result": result, "was_cancelled": False})
        t_last = time.time()
        submit.append(t_last - t0)
    return t_last, submit


# ==================================================================== watching the round change

def note(seen: dict[str, float], key: str, seconds: float, what: str) -> None:
    seen[key] = seconds
    print(f"  {seconds:6.1f} s: {what}")


def look(stack: Stack, seen: dict[str, float], t_last: float) -> None:
    """One look at Label Studio: note each part of the round-1 batch seen for the first time."""
    client, project = stack.client, stack.project
    round1 = {t["id"] for t in client.iter_tasks(project) if query_round(t) == 1}
    with_v1 = ids_with_version(stack, "ovaal-1")
    now = time.time() - t_last
    if "queries" not in seen and len(round1) == stack.n and round1 <= with_v1:
        note(seen, "queries", now, f"{stack.n} round-1 query tasks with ovaal-1 predictions listed")
    if "masks" not in seen and set(stack.truth_of) <= with_v1:
        note(seen, "masks", now, "every source task has an ovaal-1 mask")
    if "project" not in seen and client.get_project(project).get("model_version") == "ovaal-1":
        note(seen, "project", time.time() - t_last, "project switched to ovaal-1")
    if "next" not in seen and "project" in seen:  # asked earlier, the stream could serve a source task
        response = client.request("GET", f"/api/projects/{project}/next", expect=ANY_STATUS)
        if response.status_code == 200 and query_round(response.json()) == 1:
            stack.next_task = response.json()["id"]
            note(seen, "next", time.time() - t_last, f"the label stream serves round-1 task {stack.next_task}")


def watch_label_studio(stack: Stack, t_last: float) -> dict[str, float]:
    """Poll Label Studio until the whole round-1 batch is there; seconds after ``t_last`` each part was first seen."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + stack.timeout
    while len(seen) < 4:
        if time.monotonic() > deadline:
            raise RuntimeError(f"round 1 not complete after {stack.timeout} s (seen {seen}):\n"
                               f"{stack.backend.log_tail()}")
        look(stack, seen, t_last)
        time.sleep(POLL)
    return seen


STEPS = ("round_end", "saved", "queries_imported", "open")
"""The round change's steps as /metrics shows them (see ``steps_done``)."""


def steps_done(metrics: dict[str, Any], n: int) -> set[str]:
    """The steps of the change from round 0 to round 1 that one /metrics answer of the project shows as done."""
    if not metrics:
        return set()
    round_index, phase = int(metrics.get("round", 0)), metrics.get("phase")
    done = set()
    if round_index >= 1 or phase == "training":  # the round-0 end was detected: training (or later)
        done.add("round_end")
    if metrics.get("model_version") == "ovaal-1":  # the weights are saved, the version bumped
        done.add("saved")
    if round_index == 1 and int(metrics.get("query_tasks", 0)) >= n:  # round 1's query tasks were imported
        done.add("queries_imported")
    if round_index == 1 and phase == "querying":  # masks pushed, project switched: the round is open
        done.add("open")
    return done


class MetricsWatcher(threading.Thread):
    """Polls the backend's /metrics every METRICS_POLL s; notes the time.time() each step was first seen."""

    def __init__(self, backend: BackendProcess, project: int, n: int) -> None:
        super().__init__(daemon=True)
        self.backend, self.project, self.n = backend, project, n
        self.seen: dict[str, float] = {}
        self.last: dict[str, Any] = {}
        self._all_seen, self._stop_event = threading.Event(), threading.Event()

    def run(self) -> None:
        session = self.backend.session()
        while not self._stop_event.is_set():
            try:
                metrics = self.backend.metrics(self.project, session)
            except requests.RequestException:
                metrics = {}
            now = time.time()
            for step in steps_done(metrics, self.n):
                self.seen.setdefault(step, now)
            self.last = metrics or self.last
            if len(self.seen) == len(STEPS):
                self._all_seen.set()
                return
            self._stop_event.wait(METRICS_POLL)

    def stop(self, wait: float = 60.0) -> tuple[dict[str, float], dict[str, Any]]:
        """Wait (at most ``wait`` s) for every step, stop; (first-seen times, the last /metrics answer)."""
        self._all_seen.wait(wait)
        self._stop_event.set()
        self.join(10)
        return dict(self.seen), self.last


def breakdown(seen: dict[str, float], training: dict[str, Any], t_last: float) -> dict[str, Any]:
    """Timeline of the round change (seconds after the last annotation) from /metrics and the training's record."""
    if set(seen) != set(STEPS) or not training:
        return {"error": f"/metrics showed only the steps {sorted(seen)} and training {training}"}
    t = {step: seen[step] - t_last for step in STEPS}
    return {
        "webhook_to_round_end": t["round_end"],
        "round_end_to_saved": t["saved"] - t["round_end"],
        "train_loop_seconds": float(training["seconds"]),
        "train_points": int(training["points"]), "train_images": int(training["images"]),
        "saved_to_queries_imported": t["queries_imported"] - t["saved"],
        "queries_imported_to_open": t["open"] - t["queries_imported"],
        "t_round_end": t["round_end"], "t_trained": float(training["finished_at"]) - t_last, "t_saved": t["saved"],
        "t_queries_imported": t["queries_imported"], "t_open": t["open"],
    }


def round_change(stack: Stack, round0: list[dict[str, Any]], results: dict[str, Any]) -> None:
    """Answer round 0 (the last answer starts the clock) and time the round-1 batch in Label Studio and /metrics."""
    window = CpuWindow([os.getpid()])  # this script's tree: the backend and Label Studio are its children
    watcher = MetricsWatcher(stack.backend, stack.project, stack.n)
    watcher.start()
    t_last, submit = annotate(stack, round0, "ovaal-0")
    results["annotation_submit_seconds"] = {"median": percentile(submit, 50), "max": max(submit)}
    print(f"answered {stack.n} round-0 tasks; the last annotation was stored at t=0")
    results["last_annotation_to"] = watch_label_studio(stack, t_last)
    results["cpu_round_change"] = window.stop()
    seen, metrics = watcher.stop()
    training = next((t for t in metrics.get("trainings", []) if t.get("version") == "ovaal-1"), {})
    results["breakdown"] = breakdown(seen, training, t_last)
    results["metrics"] = stack.backend.metrics(stack.project)


# ==================================================================== after the round change

def round1_payload(stack: Stack) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every task with its predictions, and the round-1 query tasks as an import payload (as the backend sent it)."""
    full = list(stack.client.iter_tasks(stack.project, all_fields=True))
    payload = [{"data": t["data"], "predictions": [
        {k: p[k] for k in ("result", "score", "model_version")} for p in t["predictions"]
        if p["model_version"] == "ovaal-1"]} for t in full if query_round(t) == 1]
    return full, payload


def time_query_import(stack: Stack, payload: list[dict[str, Any]]) -> dict[str, Any]:
    """What importing the round's query tasks alone costs Label Studio (same payload, a scratch project)."""
    client = stack.client
    scratch = client.request("POST", "/api/projects", json={"title": "scratch",
                                                            "label_config": stack.config_xml}).json()["id"]
    t0 = time.perf_counter()
    body = client.request("POST", f"/api/projects/{scratch}/import", params={"return_task_ids": "true"},
                          json=payload).json()
    seconds = time.perf_counter() - t0
    client.request("DELETE", f"/api/projects/{scratch}/", expect=(200, 204))
    return {"client": seconds, "label_studio": body.get("duration")}


def predict(backend: BackendProcess, session: requests.Session, project: int,
            tasks: list[dict[str, Any]]) -> tuple[float, int]:
    """One /predict call; (seconds, response bytes)."""
    t0 = time.perf_counter()
    response = session.post(f"{backend.url}/predict", json={"project": str(project), "tasks": tasks}, timeout=600)
    seconds = time.perf_counter() - t0
    response.raise_for_status()
    results = response.json()["results"]
    if len(results) != len(tasks) or any(not r["result"] for r in results):
        raise RuntimeError(f"/predict answered {len(results)} results, some empty: {response.text[:300]}")
    return seconds, len(response.content)


def measure_predict(backend: BackendProcess, project: int, sources: list[dict[str, Any]]) -> dict[str, float]:
    """/predict of source tasks: a first call, one request per image, then all of them in one request."""
    session = backend.session()
    cold, _ = predict(backend, session, project, sources[:1])
    per_image, sizes = [], []
    for task in sources:
        seconds, size = predict(backend, session, project, [task])
        per_image.append(seconds)
        sizes.append(size)
    batch, _ = predict(backend, session, project, sources)
    return {"first_call": cold, "median": percentile(per_image, 50), "p90": percentile(per_image, 90),
            "min": min(per_image), "max": max(per_image), "batch_of_all": batch,
            "batch_per_image": batch / len(sources), "response_kib_per_image": float(np.mean(sizes)) / 1024}


def measure_restart(backend: BackendProcess, project: int, sources: list[dict[str, Any]],
                    results: dict[str, Any]) -> None:
    """Restart the backend: its start, the first two /predict calls (checkpoint load, image from disk), memory."""
    backend.stop()
    results["backend_restart_seconds"] = backend.start()
    session = backend.session()
    results["predict"]["first_after_restart"], _ = predict(backend, session, project, sources[:1])
    results["predict"]["second_after_restart"], _ = predict(backend, session, project, sources[1:2])
    results["memory"]["after_restart_one_predict_mib"] = sum(
        proc_kib(p).get("VmHWM", 0) for p in process_tree(backend.proc.pid)[1:]) / 1024


def query_stats(tasks: list[dict[str, Any]], margin: int = 4) -> dict[str, Any]:
    """Where the queried points lie and how the query tasks score (what the label stream orders by)."""
    near, total, scores = 0, 0, []
    for task in tasks:
        prediction = task["predictions"][0]
        scores.append(float(prediction.get("score") or 0.0))
        for region in prediction["result"]:
            width, height = region["original_width"], region["original_height"]
            col, row = percent_to_pixel(region["value"]["x"], region["value"]["y"], width, height)
            total += 1
            near += min(row, col, height - 1 - row, width - 1 - col) <= margin
    return {"points": total, "within_4px_of_border": near, "score_min": min(scores), "score_max": max(scores)}


def take_screenshot(ls: LabelStudioServer, project: int, task: int, out: str) -> dict[str, Any]:
    """benchmarks/screenshot_query_task.py on one task (logged in through the login form)."""
    shot = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "screenshot_query_task.py"), "--url", ls.url, "--email", ls.email,
         "--password", ls.password, "--project", str(project), "--task", str(task), "--out", out],
        capture_output=True, text=True, timeout=300)
    print(f"screenshot of task {task}: rc {shot.returncode} {shot.stdout.strip()} {shot.stderr.strip()[-500:]}")
    return {"task": task, "rc": shot.returncode, "stdout": shot.stdout.strip(), "stderr": shot.stderr.strip()[-1500:]}


# ==================================================================== the run

def label_studio_binary(args: argparse.Namespace) -> str | None:
    """Label Studio's executable, or None (with a message) when it or CamVid is missing."""
    ls_bin = os.environ.get("OVAAL_LS_BIN") or str(ROOT / ".venv-ls" / "bin" / "label-studio")
    camvid = Path(args.camvid)
    if not (camvid / "train" / "images").is_dir() or not (camvid / "classes.json").is_file():
        print(f"SKIPPED: no CamVid at {camvid} (needs train/images, train/labels and classes.json)", file=sys.stderr)
        return None
    if not os.access(ls_bin, os.X_OK):
        print(f"SKIPPED: no Label Studio executable at {ls_bin} (run `make install-ls` or set OVAAL_LS_BIN)",
              file=sys.stderr)
        return None
    return ls_bin


def measure(stack: Stack, args: argparse.Namespace, results: dict[str, Any], sampler: MemorySampler) -> None:
    """Everything measured once the project exists: round 0, the round change, /predict, memory, a restart."""
    round0, results["connect_to_round0_visible"] = connect_model(stack)
    if args.screenshot_round0:
        results["screenshot_round0"] = take_screenshot(stack.ls, stack.project, min(t["id"] for t in round0),
                                                       args.screenshot_round0)
    round_change(stack, round0, results)
    full, payload = round1_payload(stack)
    results["round1_queries"] = query_stats(payload)
    print(f"round-1 queries: {results['round1_queries']}")
    results["query_import_seconds"] = time_query_import(stack, payload)

    sources = [{"id": t["id"], "data": t["data"]} for t in sorted(full, key=lambda t: t["id"])
               if t["id"] in stack.truth_of]
    window = CpuWindow([os.getpid()])
    results["predict"] = measure_predict(stack.backend, stack.project, sources)
    results["cpu_predict"] = window.stop()
    results["memory"] = sampler.stop()
    measure_restart(stack.backend, stack.project, sources, results)
    if args.screenshot:
        task = stack.next_task or min(t["id"] for t in full if query_round(t) == 1)
        results["screenshot"] = take_screenshot(stack.ls, stack.project, task, args.screenshot)


def run(args: argparse.Namespace) -> dict[str, Any] | None:
    """Start Label Studio and the backend, set the project up as an admin would, measure; None when skipped."""
    ls_bin = label_studio_binary(args)
    if ls_bin is None:
        return None
    for key in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        os.environ.pop(key, None)
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
    work = Path(tempfile.mkdtemp(prefix="ovaal-bench-"))
    docroot = work / "files"
    truth = copy_images(Path(args.camvid), args.images, docroot / "camvid")
    env = dict(os.environ, **SETTINGS, **RUN_SETTINGS, PORT=str(free_port()), MODEL_DIR=str(work / "model_dir"))
    results = describe(env, len(truth))
    t_run = time.monotonic()
    ls = LabelStudioServer(ls_bin, document_root=docroot, keep_data=args.keep)
    backend = sampler = None
    try:
        ls.start()
        print(f"Label Studio {ls.url} up in {ls.startup_seconds:.0f} s; work dir {work}")
        env.update(LABEL_STUDIO_URL=ls.url, LABEL_STUDIO_API_KEY=ls.token,
                   LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(docroot))
        backend = BackendProcess(env, work / "backend.log")
        results["backend_start_seconds"] = backend.start()
        sampler = MemorySampler(backend.proc.pid)
        sampler.start()
        client = LabelStudioClient(ls.url, ls.token, timeout=300)
        config_xml = (ROOT / "label_config" / "camvid.xml").read_text()
        project, truth_of = create_project(client, ls, docroot / "camvid", truth, config_xml)
        stack = Stack(ls, backend, client, project, truth_of, ParsedLabelConfig.parse(config_xml), config_xml,
                      args.timeout)
        measure(stack, args, results, sampler)
        results["total_seconds"] = time.monotonic() - t_run
        results["backend_log_tail"] = backend.log_tail(1500)
        return results
    finally:
        if sampler is not None and sampler.is_alive():
            sampler.stop()
        if backend is not None:
            backend.stop()
            if args.keep:
                print(f"backend log: {backend.log_path}")
        ls.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


# ==================================================================== report

def load_note(r: dict[str, Any]) -> str:
    """One sentence on how much CPU other processes took while we measured (the machine is shared)."""
    parts = []
    for key, what in (("cpu_round_change", "the round change"), ("cpu_predict", "the `/predict` calls")):
        c = r[key]
        parts.append(f"{c['other']:.1f} CPU-s of {c['wall'] * (os.cpu_count() or 1):.0f} during {what} "
                     f"({100 * c['other_share']:.0f} %)")
    return "Other processes on the machine used " + " and ".join(parts) + "."


def md_intro(r: dict[str, Any]) -> list[str]:
    settings = " ".join(f"{k}={v}" for k, v in r["settings"].items())
    c = r["config"]
    return [
        f"## 2. Backend on CPU, {r['images']} CamVid images", "",
        "```bash",
        f"{COMMAND}    # ~{r['total_seconds'] / 60:.1f} min; starts its own Label Studio 1.23.2 and backend on "
        "127.0.0.1",
        "```", "",
        f"Measured {r['date']} on {r['machine']}. {load_note(r)} A real Label Studio 1.23.2 "
        "(`tests/helpers/ls_server.py`) and the backend as `python -m ovaal_backend serve` "
        "(gunicorn, one worker process), "
        f"set up as an admin would: `label_config/camvid.xml`, a local storage over copies of the first {r['images']} "
        "CamVid training images (360x480), the model connected. The tests' scripted annotator "
        "(`tests/helpers/annotator.py`) "
        "answers every round-0 point from the ground truth through Label Studio's API.", "",
        f"Settings: the defaults ({c['classifier']}, {c['arch']} on {c['encoder']} with `{c['encoder_weights']}` "
        f"weights, batch {c['batch_size']}, PREDICT_BATCH={c['predict_batch']}, SERVER_THREADS={c['server_threads']}, "
        f"NUM_THREADS={c['num_threads']} = torch's default) except `{settings}`. The bench also sets HOST=127.0.0.1 "
        "(loopback only).", "",
    ]


def md_round_change(r: dict[str, Any]) -> list[str]:
    seen = r["last_annotation_to"]
    return [
        "### From the last annotation of round 0 to the round-1 batch", "",
        f"Label Studio polled every {POLL} s (times below are when a poll first saw the state).", "",
        "| seen in Label Studio | seconds after the last annotation |", "|---|---:|",
        f"| {r['images']} round-1 query tasks listed, each with its `ovaal-1` keypoint prediction | "
        f"**{seen['queries']:.1f}** |",
        f"| every source task has its `ovaal-1` dense mask | {seen['masks']:.1f} |",
        f"| project's `model_version` switched to `ovaal-1` (the editor shows the new predictions) | "
        f"**{seen['project']:.1f}** |",
        f"| `/api/projects/<id>/next` serves a round-1 query task | {seen['next']:.1f} |", "",
    ]


def md_breakdown(r: dict[str, Any]) -> list[str]:
    b = r["breakdown"]
    if "error" in b:
        return [f"(No breakdown: {b['error']}.)", ""]
    imp = r["query_import_seconds"]["client"]
    train_other = b["round_end_to_saved"] - b["train_loop_seconds"]
    return [
        f"Where the time goes (the backend's `/metrics`, polled every {METRICS_POLL} s: a step ends when a poll first "
        "showed its phase, round, version or query tasks; the training loop's length and end are exact, from its "
        "`trainings` record):", "",
        "| step | seconds | ends at |", "|---|---:|---:|",
        f"| the last annotation's webhook applied, round end detected | {max(b['webhook_to_round_end'], 0):.1f} "
        f"| {max(b['t_round_end'], 0):.1f} |",
        f"| training: {r['settings']['FIRST_ROUND_EPOCHS']} epochs over {b['train_images']} images, "
        f"{b['train_points']} labelled points (the loop alone: {b['train_loop_seconds']:.1f} s, ended at "
        f"{b['t_trained']:.1f}; the rest is listing the pool, building the model, saving the checkpoint: "
        f"{train_other:.1f} s) | {b['round_end_to_saved']:.1f} | {b['t_saved']:.1f} |",
        f"| listing the pool and pixel selection (predict {r['images']} images, OVA entropy ranking) | "
        f"~{b['saved_to_queries_imported'] - imp:.1f} | |",
        f"| import of the {r['images']} query tasks with their predictions (timed separately with the same payload: "
        f"{imp:.2f} s) | ~{imp:.1f} | |",
        f"| (listing the pool, selection and import together) | {b['saved_to_queries_imported']:.1f} "
        f"| {b['t_queries_imported']:.1f} |",
        f"| dense masks: predict, RLE-encode and push {r['images']} masks; switch the project to the new version | "
        f"{b['queries_imported_to_open']:.1f} | {b['t_open']:.1f} |", "",
    ]


def md_predict(r: dict[str, Any]) -> list[str]:
    p = r["predict"]
    return [
        "### `/predict` (dense masks of source tasks)", "",
        f"One POST per image over the {r['images']} source tasks, after the model of round 0 was trained (the "
        "serving model is in memory and the images are cached: what Label Studio gets when it asks for a task's "
        "prediction).", "",
        "| call | seconds |", "|---|---:|",
        f"| first call after the training (cold) | {p['first_call']:.2f} |",
        f"| per image, median | **{p['median']:.2f}** |",
        f"| per image, p90 | **{p['p90']:.2f}** |",
        f"| per image, min / max | {p['min']:.2f} / {p['max']:.2f} |",
        f"| all {r['images']} in one request | {p['batch_of_all']:.2f} ({p['batch_per_image']:.2f} per image) |",
        f"| first call after a backend restart (loads the checkpoint, reads the image from disk) | "
        f"{p['first_after_restart']:.2f} |",
        f"| second call after the restart (another image) | {p['second_after_restart']:.2f} |", "",
        f"A response carries about {p['response_kib_per_image']:.0f} KiB of Label Studio brush RLE per image.", "",
    ]


def md_memory(r: dict[str, Any]) -> list[str]:
    m, q = r["memory"], r["round1_queries"]
    return [
        "### Memory of the backend", "",
        "| | MiB |", "|---|---:|",
        f"| peak RSS (VmHWM) of the gunicorn worker (the process that trains and predicts) | "
        f"**{m['worker_vmhwm_mib']:.0f}** |",
        "| peak RSS of the gunicorn arbiter (only supervises the worker: imports neither torch nor the app) | "
        f"{m['arbiter_vmhwm_mib']:.0f} |",
        f"| peak of the two processes' summed PSS (shared pages counted once; sampled every 0.5 s) | "
        f"{m['peak_pss_sum_mib']:.0f} |",
        f"| peak RSS of the worker after a restart and one `/predict` (no training) | "
        f"{m['after_restart_one_predict_mib']:.0f} |", "",
        f"Other numbers of the run: Label Studio answered an annotation submit (it delivers the webhook to the "
        f"backend before answering) in {r['annotation_submit_seconds']['median']:.2f} s median; round 0 was "
        f"visible {r['connect_to_round0_visible']:.1f} s after connecting the model; the backend starts (to "
        f"`/health`) in {r['backend_start_seconds']:.1f} s. Of the {q['points']} round-1 query points, "
        f"{q['within_4px_of_border']} lie within 4 px of the image border; the query tasks' scores (certainty, "
        f"what uncertainty sampling orders by) range from {q['score_min']:.4f} to {q['score_max']:.4f}.",
    ]


def markdown(r: dict[str, Any]) -> str:
    """The doc section (docs/benchmarks.md, BACKEND-BENCH) of one run's results."""
    lines = md_intro(r) + md_round_change(r) + md_breakdown(r) + md_predict(r) + md_memory(r)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command line: run once, print Markdown, write the JSON and (unless --no-docs) docs/benchmarks.md."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=20, help="first N CamVid training images (default 20)")
    p.add_argument("--camvid", default=str(CAMVID), help="folder with train/images, train/labels, classes.json")
    p.add_argument("--timeout", type=float, default=900, help="seconds to wait for a round to appear")
    p.add_argument("--screenshot", help="also save a PNG of a round-1 query task in Label Studio's editor here")
    p.add_argument("--screenshot-round0", help="also save a PNG of a round-0 query task (before it is answered)")
    p.add_argument("--json", default=str(ROOT / "results" / "backend_bench.json"), help="raw numbers (JSON)")
    p.add_argument("--no-docs", action="store_true", help="do not update docs/benchmarks.md")
    p.add_argument("--keep", action="store_true", help="keep the temporary work dir and Label Studio's data")
    args = p.parse_args(argv)
    results = run(args)
    if results is None:
        return 0
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    section = markdown(results)
    print("\n" + section)
    if not args.no_docs:
        write_section("BACKEND-BENCH", section)
        print("updated docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
