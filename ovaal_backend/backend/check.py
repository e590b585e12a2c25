"""``python -m ovaal_backend check``: what is right and what to fix before the first connection, one line per item.

Items: Label Studio's URL and the API key, the local-files document root and one image read through it, MODEL_DIR
writable, the device (CUDA or CPU) and the training profile, Redis and its workers when REDIS_URL is set, and the
settings in effect after the profile. It reads the same settings as ``serve`` and calls Label Studio the same way
(``LabelStudioClient``), so a line that says ``ok`` here holds for the backend.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..config import TRAIN_PROFILES, Config, redact_url
from .client import LOCAL_FILES_PREFIX, LabelStudioClient, LabelStudioError

CHECK_TIMEOUT_SECONDS = 10.0
"""Longest wait for one Label Studio or Redis call of ``check`` (LABEL_STUDIO_TIMEOUT when that is shorter)."""
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MAX_FILES_LOOKED_AT = 10_000
"""``check`` looks at this many entries of the document root at most when it searches one image to read."""


@dataclass(frozen=True)
class Finding:
    """One line of ``check``: the item, whether it is right, what was found, and how to fix it when it is not."""

    item: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        """``ok   item: detail`` or ``FAIL item: detail -> fix: ...``."""
        text = f"{'ok  ' if self.ok else 'FAIL'} {self.item}: {self.detail}"
        return text + (f" -> fix: {self.fix}" if self.fix else "")


def run_checks(config: Config) -> list[Finding]:
    """Every item, in the order an admin fixes them."""
    findings = check_label_studio(config)
    findings.append(check_document_root(config))
    findings.append(check_model_dir(config))
    device, effective = check_device(config)
    findings.append(device)
    findings.extend(check_redis(config))
    findings.append(effective_settings(config, effective))
    return findings


def report(findings: list[Finding], as_json: bool) -> str:
    """The text ``check`` prints: one line per item, or a JSON object (``ok`` and the items)."""
    if as_json:
        return json.dumps({"ok": all(f.ok for f in findings), "items": [asdict(f) for f in findings]}, indent=2)
    return "\n".join(f.line() for f in findings)


# ---------------------------------------------------------------- Label Studio

def check_label_studio(config: Config) -> list[Finding]:
    """LABEL_STUDIO_URL answers as Label Studio, and LABEL_STUDIO_API_KEY is accepted there."""
    url = config.label_studio_url
    timeout = min(config.label_studio_timeout, CHECK_TIMEOUT_SECONDS)
    try:
        health = LabelStudioClient(url, "", timeout=timeout).request("GET", "/health")
    except LabelStudioError as err:
        return [Finding("label_studio_url", False, f"{url}: {err.cause or err}", "change LABEL_STUDIO_URL"),
                Finding("label_studio_api_key", False, "not checked: Label Studio is not reachable",
                        "fix LABEL_STUDIO_URL first")]
    body = _json(health)
    if "model_class" in body:
        return [Finding("label_studio_url", False, f"{url} is an ML backend ({body['model_class']}), not Label Studio",
                        "set LABEL_STUDIO_URL to Label Studio's address (the page annotators open)"),
                Finding("label_studio_api_key", False, "not checked", "fix LABEL_STUDIO_URL first")]
    found = [Finding("label_studio_url", True, f"{url} answers /health as Label Studio")]
    if not config.label_studio_api_key:
        return [*found, Finding("label_studio_api_key", False, "LABEL_STUDIO_API_KEY is empty",
                                "copy a token from Label Studio's Account & Settings into LABEL_STUDIO_API_KEY")]
    client = LabelStudioClient(url, config.label_studio_api_key, timeout=timeout)
    try:
        user = _json(client.request("GET", "/api/current-user/whoami"))
    except LabelStudioError as err:
        return [*found, Finding("label_studio_api_key", False, err.cause or str(err), "change LABEL_STUDIO_API_KEY")]
    kind = "personal access token" if client.is_personal_access_token else "legacy token"
    return [*found, Finding("label_studio_api_key", True, f"accepted ({kind} of {user.get('email') or 'a user'})")]


def _json(response: Any) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


# ---------------------------------------------------------------- files

def check_document_root(config: Config) -> Finding:
    """LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT: a folder, and one image under it read as the backend reads tasks'."""
    from ..engine.data import load_rgb
    from .images import ImageFetcher

    root = config.label_studio_local_files_document_root
    name = "document_root"
    if not root:
        return Finding(name, True, "not set: images are downloaded from Label Studio with LABEL_STUDIO_API_KEY")
    if not Path(root).is_dir():
        return Finding(name, False, f"{root} is not a folder on this machine",
                       "mount Label Studio's LOCAL_FILES_DOCUMENT_ROOT here and set "
                       "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT to where it is mounted (or leave it empty)")
    image = next(_image_files(Path(root)), None)
    if image is None:
        return Finding(name, True, f"{root} is a folder, but no image was found in it to read")
    url = f"{LOCAL_FILES_PREFIX}?d={quote(image.relative_to(root).as_posix())}"
    client = LabelStudioClient(config.label_studio_url, config.label_studio_api_key)
    fetcher = ImageFetcher(client, cache_dir=config.model_dir, document_root=root)
    path = fetcher.local_path(url)  # as a task's /data/local-files/ URL is resolved: no download
    try:
        if path is None:
            raise ValueError(f"{url} does not resolve under the document root")
        array = load_rgb(path, config.max_image_pixels)
    except Exception as err:  # noqa: BLE001 - any reason the backend would fail on is the finding
        return Finding(name, False, f"{root}: reading {image.name} failed: {type(err).__name__}: {err}",
                       "check the file's permissions and format (the backend reads what Label Studio serves)")
    return Finding(name, True, f"{root}: read {url} ({array.shape[1]}x{array.shape[0]})")


def _image_files(root: Path) -> Iterator[Path]:
    """Image files under ``root``, walking at most MAX_FILES_LOOKED_AT entries (a mount may be huge)."""
    seen = 0
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            seen += 1
            if seen > MAX_FILES_LOOKED_AT:
                return
            if name.lower().endswith(IMAGE_SUFFIXES):
                yield Path(folder) / name


def check_model_dir(config: Config) -> Finding:
    """MODEL_DIR exists (or can be made) and takes a file; its free space."""
    folder = Path(config.model_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".ovaal-check-") as handle:
            handle.write(b"ok")
            handle.flush()
    except OSError as err:
        return Finding("model_dir", False, f"{folder.resolve()} cannot be written: {err.strerror or err}",
                       "set MODEL_DIR to a folder this user can write (a volume in Docker)")
    free_gib = shutil.disk_usage(folder).free / 2**30
    return Finding("model_dir", True, f"{folder.resolve()} is writable ({free_gib:.1f} GiB free)")


# ---------------------------------------------------------------- device, profile, queue

def check_device(config: Config) -> tuple[Finding, Config | None]:
    """The device DEVICE resolves to here, and the training profile; returns the config after the profile (None
    when the workers of a queue decide it)."""
    import torch

    from ..engine.runtime import resolve_device

    build = f"torch {torch.__version__}, " + (f"built for CUDA {torch.version.cuda}" if torch.version.cuda
                                              else "a CPU-only build")
    try:
        device = resolve_device(config.device)
    except RuntimeError:
        return (Finding("device", False, f"DEVICE={config.device} but torch sees no CUDA device ({build})",
                        "install a CUDA build of torch and the NVIDIA driver (nvidia-smi must list the GPU; in "
                        "Docker run with --gpus all), or set DEVICE=auto to train on the CPU"),
                config.for_machine(has_cuda=False))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    if config.redis_url:
        profile = (f"TRAIN_PROFILE={config.train_profile}, applied by each worker" if config.train_profile != "auto"
                   else "TRAIN_PROFILE=auto: each worker picks gpu or cpu by its own CUDA")
        return Finding("device", True, f"{device} ({name}; {build}); round jobs train on the queue's workers, "
                                       f"{profile}"), None
    effective = config.for_machine(device.type == "cuda")
    return Finding("device", True, f"{device} ({name}; {build}); training profile {effective.train_profile}"), \
        effective


def check_redis(config: Config) -> list[Finding]:
    """With REDIS_URL: Redis answers, and at least one worker listens on JOB_QUEUE."""
    if not config.redis_url:
        return [Finding("redis", True, "REDIS_URL not set: round jobs run in the backend's own process")]
    from redis.exceptions import RedisError
    from rq import Queue
    from rq.worker import Worker

    from .queue_origin import connect

    where = redact_url(config.redis_url)
    try:
        redis = connect(config.redis_url, socket_connect_timeout=CHECK_TIMEOUT_SECONDS,
                        socket_timeout=CHECK_TIMEOUT_SECONDS)
        redis.ping()
        workers = Worker.all(connection=redis, queue=Queue(config.job_queue, connection=redis))
    except RedisError as err:
        return [Finding("redis", False, f"{where}: {type(err).__name__}: {err}",
                        "start Redis or set REDIS_URL to where it runs (redis://host:6379/0), or leave it empty "
                        "to train in the backend's process")]
    found = [Finding("redis", True, f"{where} answers")]
    if not workers:
        return [*found, Finding("workers", False, f"no worker listens on queue '{config.job_queue}': round jobs "
                                                  "would wait forever",
                                "start `python -m ovaal_backend worker` with the same REDIS_URL, JOB_QUEUE and "
                                "shared MODEL_DIR (one per GPU)")]
    names = ", ".join(sorted(w.name for w in workers))
    return [*found, Finding("workers", True, f"{len(workers)} on queue '{config.job_queue}': {names}")]


def effective_settings(config: Config, effective: Config | None) -> Finding:
    """The training settings a profile touches, with where each value comes from."""
    if effective is None:
        set_here = {k: getattr(config, k) for k in _profile_fields() if k in config.explicit}
        detail = ("decided on each worker by its profile" +
                  (f"; set here for all: {_pairs(set_here)}" if set_here else ""))
        return Finding("settings", True, detail)
    profile = effective.train_profile
    changed = config.profile_changes(profile)
    parts = []
    for name in _profile_fields():
        source = "set" if name in config.explicit else f"profile {profile}" if name in changed else "default"
        parts.append(f"{name}={getattr(effective, name)} ({source})")
    others = {k: getattr(effective, k) for k in ("classifier", "selection", "semi", "rounds", "pixels_per_round",
                                                 "init_pixels", "batch_size")}
    return Finding("settings", True, f"after profile {profile}: {', '.join(parts)}; {_pairs(others)}")


def _profile_fields() -> list[str]:
    return sorted({name for values in TRAIN_PROFILES.values() for name in values})


def _pairs(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())
