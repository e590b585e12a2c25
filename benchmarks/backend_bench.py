"""The backend on CPU with 20 CamVid images, against a real Label Studio 1.23.2 on 127.0.0.1.

Measures what the issue asks for:

1. the time from the LAST annotation of round 0 to the round-1 batch being visible in Label Studio (query tasks with
   their predictions listed; dense masks on every source task; the project switched to the new version; the label
   stream serving a round-1 task), with a breakdown from the backend's log (webhook, training, selection, import,
   masks);
2. ``/predict`` latency per image (dense masks of source tasks, one task per request: the first call separately, then
   median and p90 over all the images) and for one request with every image, plus the first call after a restart;
3. the backend's peak memory (VmHWM of its processes from /proc, and the peak sum of PSS sampled every 0.5 s).

Set-up is what an admin does (tests/test_e2e_label_studio.py): a project with label_config/camvid.xml, a local
storage over a temporary document root holding copies of the first N CamVid training images (never the repo), the
backend started as ``python -m ovaal_backend serve`` and connected as the project's model. A scripted annotator
answers every round-0 query point from the ground truth through Label Studio's API.

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
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import requests
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # ls_server.py: the real Label Studio helper of the end-to-end test
sys.path.insert(0, str(ROOT))

from doc_section import write_section  # noqa: E402
from ls_server import BackendProcess, LabelStudioServer, free_port, loopback_session  # noqa: E402

from ovaal_backend.backend.convert import LabelInterface, percent_to_pixel  # noqa: E402
from ovaal_backend.config import Config  # noqa: E402

CAMVID = ROOT.parent / "shared" / "data" / "camvid"
COMMAND = ".venv/bin/python benchmarks/backend_bench.py"
SETTINGS = {  # the defaults, except a small training (the cpu preset's sizes and epochs) and one round after round 0
    "DEVICE": "cpu", "IMAGE_HEIGHT": "176", "IMAGE_WIDTH": "240", "FIRST_ROUND_EPOCHS": "2", "EPOCHS": "1",
    "ROUNDS": "1", "SEMI_EPOCHS": "1", "INIT_PIXELS": "22", "PIXELS_PER_ROUND": "22",
}
RUN_SETTINGS = {  # how the bench runs the server, not model settings: loopback only; DEBUG logs every HTTP call
    "HOST": "127.0.0.1", "LOG_LEVEL": "DEBUG",
}
POLL = 0.5
"""Seconds between two looks at Label Studio while waiting for the next batch (the resolution of those times)."""
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) (\w+) ([\w.]+): (.*)$")


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


# ==================================================================== the backend process

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


# ==================================================================== Label Studio side

class Studio:
    """Plain REST calls to Label Studio with the legacy token (what the scripted annotator and the observer use)."""

    def __init__(self, ls: LabelStudioServer) -> None:
        self.url = ls.url
        self.session = loopback_session()
        self.session.headers.update(ls.headers())

    def get(self, path: str, **params: Any) -> Any:
        response = self.session.get(f"{self.url}{path}", params=params, timeout=120)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: Any, **params: Any) -> Any:
        response = self.session.post(f"{self.url}{path}", params=params, json=body, timeout=300)
        if response.status_code not in (200, 201):
            raise RuntimeError(f"POST {path} -> {response.status_code}: {response.text[:500]}")
        return response.json()

    def tasks(self, project: int, full: bool = False) -> list[dict[str, Any]]:
        """Every task; ``full`` adds annotations and predictions (heavy once brush masks exist)."""
        params: dict[str, Any] = {"project": project, "page_size": 1000, "resolve_uri": "false"}
        if full:
            params["fields"] = "all"
        else:
            params["include"] = "id,data"
        return self.get("/api/tasks", **params)["tasks"]

    def ids_with_version(self, project: int, version: str) -> set[int]:
        """Ids of the tasks that have a prediction of ``version``, without downloading predictions.

        Uses the Data Manager filter on ``predictions_model_versions``; when ``self.full_listing`` is set (the
        filter did not agree with a full listing), reads every prediction instead.
        """
        if self.full_listing:
            return {t["id"] for t in self.tasks(project, full=True) if version in versions_of(t)}
        query = {"filters": {"conjunction": "and", "items": [
            {"filter": "filter:tasks:predictions_model_versions", "operator": "contains", "type": "List",
             "value": [version]}]}}
        return {t["id"] for t in self.get("/api/tasks", project=project, page_size=1000, include="id",
                                          query=json.dumps(query))["tasks"]}

    full_listing = False


def versions_of(task: dict[str, Any]) -> set[str]:
    """Model versions of a task's predictions (from a full listing)."""
    return {str(p.get("model_version")) for p in task.get("predictions") or []}


def query_round(task: dict[str, Any]) -> int | None:
    data = task.get("data") or {}
    return int(data["ovaal_round"]) if data.get("ovaal_query") else None


def answer(prediction: dict[str, Any], truth: np.ndarray, iface: LabelInterface) -> list[dict[str, Any]]:
    """The scripted annotator: every pre-labelled point relabelled from the ground truth (void -> ignore)."""
    result = []
    for region in prediction["result"]:
        col, row = percent_to_pixel(region["value"]["x"], region["value"]["y"], region["original_width"],
                                    region["original_height"])
        label = int(truth[row, col])
        value = dict(region["value"], keypointlabels=[iface.classes[label] if label >= 0 else iface.ignore_label])
        keep = ("id", "from_name", "to_name", "type", "original_width", "original_height", "image_rotation")
        result.append({k: region[k] for k in keep if k in region} | {"value": value})
    return result


# ==================================================================== the backend's log

def read_log(path: Path, since: float) -> list[tuple[float, str, str]]:
    """``(epoch seconds, logger, message)`` of every log line at or after ``since`` (log times are local)."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        m = LOG_LINE.match(line)
        if not m:
            continue
        t = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000
        if t >= since - 1.0:
            out.append((t, m.group(4), m.group(5)))
    return out


def first(lines: list[tuple[float, str, str]], pattern: str, after: float = 0.0) -> tuple[float, re.Match] | None:
    for t, _, message in lines:
        m = re.search(pattern, message)
        if m and t >= after:
            return t, m
    return None


def breakdown(log: list[tuple[float, str, str]], t_last: float, pid: int) -> dict[str, Any]:
    """Timeline of the round change from the backend's log (seconds after the last annotation)."""
    out: dict[str, Any] = {}
    end = first(log, r"round 0 ends", t_last - 1)
    saved = first(log, r"ovaal-1 saved \(round 0.*?(\d+) points on (\d+) images, ([\d.]+) s\)", t_last - 1)
    imported = first(log, r"round 1: imported (\d+) query tasks", t_last - 1)
    masks = first(log, r"dense masks of ovaal-1 pushed", t_last - 1)
    opened = first(log, r"round 1 is open", t_last - 1)
    if not (end and saved and imported and masks and opened):
        return {"error": "the backend's log lacks some round-change lines"}
    # urllib3 logs each HTTP answer at DEBUG: the pool listing just before the import starts the selection
    http_lines = [(t, msg) for t, name, msg in log if name.startswith("urllib3") and '"' in msg]
    listing = [t for t, msg in http_lines if saved[0] <= t <= imported[0] and "GET /api/tasks" in msg]
    import_answer = [t for t, msg in http_lines
                     if saved[0] <= t <= imported[0] + 0.01 and f"POST /api/projects/{pid}/import" in msg]
    out.update(
        webhook_to_round_end=end[0] - t_last,
        round_end_to_saved=saved[0] - end[0],
        train_loop_seconds=float(saved[1].group(3)),
        train_points=int(saved[1].group(1)), train_images=int(saved[1].group(2)),
        saved_to_queries_imported=imported[0] - saved[0],
        queries_imported_to_masks_pushed=masks[0] - imported[0],
        masks_pushed_to_open=opened[0] - masks[0],
        t_round_end=end[0] - t_last, t_saved=saved[0] - t_last, t_queries_imported=imported[0] - t_last,
        t_masks_pushed=masks[0] - t_last, t_open=opened[0] - t_last,
    )
    if listing and import_answer:
        out["selection_and_import"] = import_answer[-1] - listing[0]
        out["pool_listing_before_selection"] = listing[0] - saved[0]
    return out


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

def run(args: argparse.Namespace) -> dict[str, Any] | None:
    ls_bin = os.environ.get("OVAAL_LS_BIN") or str(ROOT / ".venv-ls" / "bin" / "label-studio")
    camvid = Path(args.camvid)
    if not (camvid / "train" / "images").is_dir() or not (camvid / "classes.json").is_file():
        print(f"SKIPPED: no CamVid at {camvid} (needs train/images, train/labels and classes.json)", file=sys.stderr)
        return None
    if not os.access(ls_bin, os.X_OK):
        print(f"SKIPPED: no Label Studio executable at {ls_bin} (run `make install-ls` or set OVAAL_LS_BIN)",
              file=sys.stderr)
        return None
    for key in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        os.environ.pop(key, None)
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"

    work = Path(tempfile.mkdtemp(prefix="ovaal-bench-"))
    docroot = work / "files"
    folder = docroot / "camvid"
    folder.mkdir(parents=True)
    meta = json.loads((camvid / "classes.json").read_text())
    truth: dict[str, np.ndarray] = {}
    for path in sorted((camvid / "train" / "images").glob("*.jpg"))[:args.images]:
        shutil.copy(path, folder / path.name)  # copies in a temp dir, never in the repo
        label = np.asarray(Image.open(camvid / "train" / "labels" / f"{path.stem}.png"), dtype=np.int64)
        truth[path.name] = np.where(label >= len(meta["classes"]), -1, label)
    n = len(truth)
    config_xml = (ROOT / "label_config" / "camvid.xml").read_text()
    iface = LabelInterface.parse(config_xml)

    env = {k: v for k, v in os.environ.items()}
    env.update(SETTINGS, **RUN_SETTINGS, PORT=str(free_port()), MODEL_DIR=str(work / "model_dir"))
    cfg = Config.from_env(env)
    print("settings (environment overrides):", " ".join(f"{k}={v}" for k, v in SETTINGS.items()))
    print("resolved engine settings:", json.dumps({k: v for k, v in cfg.to_dict().items()
                                                     if k not in ("label_studio_api_key", "basic_auth_pass")}))
    results: dict[str, Any] = {"images": n, "settings": dict(SETTINGS), "machine": machine(),
                               "date": datetime.date.today().isoformat(),
                               "config": {k: getattr(cfg, k) for k in (
                                   "arch", "encoder", "encoder_weights", "classifier", "selection", "batch_size",
                                   "predict_batch", "server_threads", "num_threads", "semi")}}
    t_run = time.monotonic()
    ls = LabelStudioServer(ls_bin, document_root=docroot, keep_data=args.keep)
    backend = None
    sampler = None
    try:
        ls.start()
        print(f"Label Studio {ls.url} up in {ls.startup_seconds:.0f} s; work dir {work}")
        env.update(LABEL_STUDIO_URL=ls.url, LABEL_STUDIO_API_KEY=ls.token,
                   LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(docroot))
        backend = BackendProcess(env, work / "backend.log")
        results["backend_start_seconds"] = backend.start()
        sampler = MemorySampler(backend.proc.pid)
        sampler.start()
        studio = Studio(ls)
        client = ls.client()

        # --- what an admin does
        project = client.projects.create(title="OVAAL backend bench", label_config=config_xml)
        pid = project.id
        client.import_storage.local.create(project=pid, path=str(folder), title="camvid", use_blob_urls=True)
        names = sorted(truth)
        imported = client.projects.import_tasks(
            id=pid, request=[{"data": {"image": ls.local_files_url(folder / name)}} for name in names],
            return_task_ids=True)
        truth_of = dict(zip(imported.task_ids, (truth[name] for name in names), strict=True))
        t_connect = time.time()
        client.ml.create(project=pid, url=backend.url, title="OVAAL")

        # --- round 0 appears by itself
        deadline = time.monotonic() + args.timeout
        while True:
            round0 = [t for t in studio.tasks(pid, full=True) if query_round(t) == 0]
            if len(round0) == n and all("ovaal-0" in versions_of(t) for t in round0):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"no round 0 after {args.timeout} s:\n{backend.log_tail()}")
            time.sleep(POLL)
        results["connect_to_round0_visible"] = time.time() - t_connect
        print(f"round 0: {n} query tasks visible {results['connect_to_round0_visible']:.1f} s after connecting")
        if studio.ids_with_version(pid, "ovaal-0") != {t["id"] for t in round0}:
            print("the Data Manager filter on prediction versions disagrees with the full listing: polling full "
                  "listings instead (heavier on Label Studio)")
            studio.full_listing = True

        if args.screenshot_round0:
            results["screenshot_round0"] = take_screenshot(ls, pid, min(t["id"] for t in round0),
                                                           args.screenshot_round0)

        # --- the scripted annotator answers every round-0 task; the last answer starts the clock
        roots = [os.getpid()]  # this script's tree: the backend and Label Studio are its children
        window = CpuWindow(roots)
        submit = []
        for task in sorted(round0, key=lambda t: t["id"]):
            prediction = next(p for p in task["predictions"] if p["model_version"] == "ovaal-0")
            result = answer(prediction, truth_of[task["data"]["ovaal_source_task"]], iface)
            t0 = time.time()
            client.annotations.create(id=task["id"], result=result, was_cancelled=False)
            t_last = time.time()
            submit.append(t_last - t0)
        results["annotation_submit_seconds"] = {"median": percentile(submit, 50), "max": max(submit)}
        print(f"answered {n} round-0 tasks; the last annotation was stored at t=0")

        # --- watch Label Studio until the round-1 batch is there
        seen: dict[str, float] = {}
        next_task = None
        deadline = time.monotonic() + args.timeout
        while len(seen) < 4:
            if time.monotonic() > deadline:
                raise RuntimeError(f"round 1 not complete after {args.timeout} s (seen {seen}):\n{backend.log_tail()}")
            round1 = {t["id"] for t in studio.tasks(pid) if query_round(t) == 1}
            with_v1 = studio.ids_with_version(pid, "ovaal-1")
            now = time.time() - t_last
            if "queries" not in seen and len(round1) == n and round1 <= with_v1:
                seen["queries"] = now
                print(f"  {now:6.1f} s: {n} round-1 query tasks with ovaal-1 predictions listed")
            if "masks" not in seen and set(truth_of) <= with_v1:
                seen["masks"] = now
                print(f"  {now:6.1f} s: every source task has an ovaal-1 mask")
            if "project" not in seen and studio.get(f"/api/projects/{pid}").get("model_version") == "ovaal-1":
                seen["project"] = time.time() - t_last
                print(f"  {seen['project']:6.1f} s: project switched to ovaal-1")
            if "next" not in seen and "project" in seen:  # asked earlier, the stream could serve a source task
                response = studio.session.get(f"{studio.url}/api/projects/{pid}/next", timeout=60)
                if response.status_code == 200 and query_round(response.json()) == 1:
                    seen["next"] = time.time() - t_last
                    next_task = response.json()["id"]
                    print(f"  {seen['next']:6.1f} s: the label stream serves round-1 task {next_task}")
            time.sleep(POLL)
        results["last_annotation_to"] = seen
        results["cpu_round_change"] = window.stop()
        results["breakdown"] = breakdown(read_log(backend.log_path, t_last), t_last, pid)
        results["metrics"] = loopback_session().get(f"{backend.url}/metrics", timeout=30).json()["projects"][str(pid)]

        # --- what importing the 20 query tasks alone costs Label Studio (same payload, a scratch project)
        full = studio.tasks(pid, full=True)
        payload = [{"data": t["data"], "predictions": [
            {k: p[k] for k in ("result", "score", "model_version")} for p in t["predictions"]
            if p["model_version"] == "ovaal-1"]} for t in full if query_round(t) == 1]
        results["round1_queries"] = query_stats(payload)
        print(f"round-1 queries: {results['round1_queries']}")
        scratch = studio.post("/api/projects", {"title": "scratch", "label_config": config_xml})["id"]
        t0 = time.perf_counter()
        body = studio.post(f"/api/projects/{scratch}/import", payload, return_task_ids="true")
        results["query_import_seconds"] = {"client": time.perf_counter() - t0, "label_studio": body.get("duration")}
        studio.session.delete(f"{studio.url}/api/projects/{scratch}/", timeout=60)

        # --- /predict: dense masks of source tasks, one per request, then all in one request
        sources = [{"id": t["id"], "data": t["data"]} for t in sorted(full, key=lambda t: t["id"])
                   if t["id"] in truth_of]
        session = loopback_session()
        window = CpuWindow(roots)
        cold, cold_bytes = predict(backend, session, pid, sources[:1])
        per_image, sizes = [], []
        for task in sources:
            seconds, size = predict(backend, session, pid, [task])
            per_image.append(seconds)
            sizes.append(size)
        batch, batch_bytes = predict(backend, session, pid, sources)
        results["predict"] = {"first_call": cold, "median": percentile(per_image, 50),
                              "p90": percentile(per_image, 90), "min": min(per_image), "max": max(per_image),
                              "batch_of_all": batch, "batch_per_image": batch / n,
                              "response_kib_per_image": float(np.mean(sizes)) / 1024}
        results["cpu_predict"] = window.stop()
        results["memory"] = sampler.stop()
        sampler = None

        # --- restart: the first /predict then loads the checkpoint and reads the image from disk
        backend.stop()
        results["backend_restart_seconds"] = backend.start()
        session = loopback_session()
        first_after_restart, _ = predict(backend, session, pid, sources[:1])
        second, _ = predict(backend, session, pid, sources[1:2])
        results["predict"]["first_after_restart"] = first_after_restart
        results["predict"]["second_after_restart"] = second
        results["memory"]["after_restart_one_predict_mib"] = sum(
            proc_kib(p).get("VmHWM", 0) for p in process_tree(backend.proc.pid)[1:]) / 1024

        if args.screenshot:
            results["screenshot"] = take_screenshot(ls, pid, next_task or min(round1), args.screenshot)
        results["total_seconds"] = time.monotonic() - t_run
        results["backend_log_tail"] = backend.log_tail(1500)
        return results
    finally:
        if sampler is not None:
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


def markdown(r: dict[str, Any]) -> str:
    seen, b, p, m, q = r["last_annotation_to"], r["breakdown"], r["predict"], r["memory"], r["round1_queries"]
    settings = " ".join(f"{k}={v}" for k, v in r["settings"].items())
    c = r["config"]
    lines = [
        f"## 2. Backend on CPU, {r['images']} CamVid images", "",
        "```bash",
        f"{COMMAND}    # ~{r['total_seconds'] / 60:.1f} min; starts its own Label Studio 1.23.2 and backend on "
        "127.0.0.1",
        "```", "",
        f"Measured {r['date']} on {r['machine']}. {load_note(r)} A real Label Studio 1.23.2 "
        "(`tests/ls_server.py`) and the backend as `python -m ovaal_backend serve` (gunicorn, one worker process), "
        f"set up as an admin would: `label_config/camvid.xml`, a local storage over copies of the first {r['images']} "
        "CamVid training images (360x480), the model connected. A scripted annotator answers every round-0 point from "
        "the ground truth through Label Studio's API.", "",
        f"Settings: the defaults ({c['classifier']}, {c['arch']} on {c['encoder']} with `{c['encoder_weights']}` "
        f"weights, batch {c['batch_size']}, PREDICT_BATCH={c['predict_batch']}, SERVER_THREADS={c['server_threads']}, "
        f"NUM_THREADS={c['num_threads']} = torch's default) except `{settings}`. The bench also sets HOST=127.0.0.1 "
        "and LOG_LEVEL=DEBUG (every HTTP call to Label Studio is then logged with its time, for the breakdown).", "",
        "### From the last annotation of round 0 to the round-1 batch", "",
        f"Label Studio polled every {POLL} s (times below are when a poll first saw the state; the backend's log "
        "times are exact to the millisecond).", "",
        "| seen in Label Studio | seconds after the last annotation |", "|---|---:|",
        f"| {r['images']} round-1 query tasks listed, each with its `ovaal-1` keypoint prediction | "
        f"**{seen['queries']:.1f}** |",
        f"| every source task has its `ovaal-1` dense mask | {seen['masks']:.1f} |",
        f"| project's `model_version` switched to `ovaal-1` (the editor shows the new predictions) | "
        f"**{seen['project']:.1f}** |",
        f"| `/api/projects/<id>/next` serves a round-1 query task | {seen['next']:.1f} |", "",
    ]
    if "error" not in b:
        train_other = b["round_end_to_saved"] - b["train_loop_seconds"]
        lines += [
            "Where the time goes (backend log):", "",
            "| step | seconds | ends at |", "|---|---:|---:|",
            f"| the last annotation's webhook applied, round end detected | {max(b['webhook_to_round_end'], 0):.1f} "
            f"| {max(b['t_round_end'], 0):.1f} |",
            f"| training: {r['settings']['FIRST_ROUND_EPOCHS']} epochs over {b['train_images']} images, "
            f"{b['train_points']} labelled points (the loop alone: {b['train_loop_seconds']:.1f} s; the rest is "
            f"listing the pool, building the model, saving the checkpoint: {train_other:.1f} s) | "
            f"{b['round_end_to_saved']:.1f} | {b['t_saved']:.1f} |",
        ]
        if "selection_and_import" in b:
            imp = r["query_import_seconds"]["client"]
            lines.append(f"| pixel selection over the pool (predict {r['images']} images, OVA entropy ranking) | "
                         f"~{b['selection_and_import'] - imp:.1f} | |")
            lines.append(f"| import of the {r['images']} query tasks with their predictions (timed separately with "
                         f"the same payload: {imp:.2f} s) | ~{imp:.1f} | |")
            lines.append(f"| (listing the pool, selection and import together) | {b['saved_to_queries_imported']:.1f} "
                         f"| {b['t_queries_imported']:.1f} |")
        else:
            lines.append(f"| selection and import of the query tasks | {b['saved_to_queries_imported']:.1f} | "
                         f"{b['t_queries_imported']:.1f} |")
        lines += [
            f"| dense masks: predict, RLE-encode and push {r['images']} masks | "
            f"{b['queries_imported_to_masks_pushed']:.1f} | {b['t_masks_pushed']:.1f} |",
            f"| switch the project to the new version | {b['masks_pushed_to_open']:.1f} | {b['t_open']:.1f} |", "",
        ]
    lines += [
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
