"""Checks of docker/: the Dockerfiles build what we ship, the compose files name only real settings and set no
method default of their own, the images share MODEL_DIR, and Label Studio's SSRF protection lets only the backend in.

No Docker engine is needed: the files are parsed, not built. What they say is run where it can be: the images'
entrypoint and the code's file modes under two uids (as root), Label Studio's own SSRF check (with .venv-ls).
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from ovaal_backend.backend.wsgi import check_network_exposure
from ovaal_backend.config import TRAIN_PROFILES, Config, is_loopback_host, setting_fields

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "docker-compose.yml"
COMPOSE_GPU = DOCKER / "docker-compose.gpu.yml"
COMPOSE_BACKEND = DOCKER / "docker-compose.backend.yml"
COMPOSE_FILES = sorted(DOCKER.glob("*.yml"))
DOCKERFILES = ["Dockerfile", "Dockerfile.cuda"]
SETTINGS = list(setting_fields())  # every part's settings, not Config.explicit
CONFIG_VARS = {f.name.upper() for f in SETTINGS}
CODE_DEFAULTS = {f.name: f.default for f in SETTINGS}
LS_PACKAGE = next(iter(ROOT.glob(".venv-ls/lib/python*/site-packages/label_studio")), None)

# Settings that say where and how a service runs, not how the method behaves: compose files and images may give
# them defaults of their own. Everything else they set must default to the code's value (or to "", the code decides).
RUNTIME_SETTINGS = {
    "host": "0.0.0.0 inside a container, so that other containers reach it (basic auth required then)",
    "port": "the port the image exposes",
    "model_dir": "the volume's mount point, /data/models",
    "label_studio_url": "Label Studio's address on the compose network, or the team's",
    "label_studio_local_files_document_root": "where the images folder is mounted, /data/images",
    "device": "the image's: cpu in the CPU image, cuda in the CUDA image and the worker",
    "redis_url": "the compose network's Redis, with its password",
}
# Fields of a training profile (config.TRAIN_PROFILES): a value in the environment counts as set by hand and would
# pin it for every machine, so compose leaves them empty.
PROFILE_FIELDS = set().union(*TRAIN_PROFILES.values())

# Label Studio server settings (read as LABEL_STUDIO_<NAME>, HEARTEX_<NAME> or <NAME>; see
# label_studio/core/settings/base.py and label_studio/server.py of label-studio 1.23.2).
LABEL_STUDIO_VARS = {
    "LABEL_STUDIO_USERNAME", "LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_USER_TOKEN", "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN",
    "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK", "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED",
    "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", "LABEL_STUDIO_ML_BLOCK_LOCAL_IP", "LABEL_STUDIO_SSRF_PROTECTION_ENABLED",
    "LABEL_STUDIO_USE_DEFAULT_BANNED_SUBNETS", "LABEL_STUDIO_USER_ADDITIONAL_BANNED_SUBNETS",
    "LABEL_STUDIO_WEBHOOK_TIMEOUT", "LABEL_STUDIO_BASE_DATA_DIR", "LABEL_STUDIO_HOST", "COLLECT_ANALYTICS",
    "LATEST_VERSION_CHECK",
}
# Read by label_studio_sdk inside the backend (label_studio_tools/core/utils/io.py): where /data/local-files/ lives.
SDK_VARS = {"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"}
CMD = ["python", "-m", "ovaal_backend", "serve"]


# --------------------------------------------------------------------------- parsing helpers

def parse_dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions, buffer = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if buffer and stripped.startswith("#"):
            continue  # comment inside a continued instruction
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        buffer += stripped
        word, _, rest = buffer.partition(" ")
        instructions.append((word.upper(), rest.strip()))
        buffer = ""
    return instructions


def _scalar(text: str):
    text = text.strip()
    if text[:1] in ("'", '"') and text[-1:] == text[:1]:
        return text[1:-1]
    if text.startswith("[") and text.endswith("]"):
        return [_scalar(part) for part in text[1:-1].split(",") if part.strip()]
    if text == "{}":
        return {}
    if text in ("true", "false"):
        return text == "true"
    if text in ("", "null", "~"):
        return None
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    return text


def _strip_comment(text: str) -> str:
    quote = None
    for i, ch in enumerate(text):
        if ch in ("'", '"'):
            quote = None if quote == ch else (quote or ch)
        elif ch == "#" and quote is None and (i == 0 or text[i - 1] in " \t"):
            return text[:i].rstrip()
    return text.rstrip()


def parse_simple_yaml(text: str):
    """The YAML subset our compose files use: block mappings and sequences, flow lists, quoted scalars, comments.

    Used when PyYAML is missing; checked against PyYAML when it is there.
    """
    lines = []
    for raw in text.splitlines():
        content = _strip_comment(raw)
        if content.strip():
            lines.append([len(content) - len(content.lstrip(" ")), content.strip()])

    def block(i: int, indent: int):
        if lines[i][1].startswith("- ") or lines[i][1] == "-":
            out = []
            while i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("-"):
                item = lines[i][1][1:].strip()
                if re.match(r"^[^'\"\[][^:]*:( |$)", item):  # "- key: value" starts a mapping item
                    lines[i] = [indent + 2, item]
                    value, i = block(i, indent + 2)
                else:
                    value, i = _scalar(item), i + 1
                out.append(value)
            return out, i
        out = {}
        while i < len(lines) and lines[i][0] == indent:
            key, _, rest = lines[i][1].partition(":")
            key, rest = _scalar(key), rest.strip()
            i += 1
            if rest:
                out[key] = _scalar(rest)
            elif i < len(lines) and lines[i][0] > indent:
                out[key], i = block(i, lines[i][0])
            elif i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("-"):
                out[key], i = block(i, indent)  # a sequence at the same indent as its key
            else:
                out[key] = None
        return out, i

    return block(0, lines[0][0])[0] if lines else None


def load_yaml(path: Path):
    try:
        import yaml
    except ImportError:
        return parse_simple_yaml(path.read_text())
    return yaml.safe_load(path.read_text())


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # "KEY=value" list form
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


_SUBST = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")


def default_of(value: str, required_value: str = "x") -> str:
    """A compose value with every ${VAR:-default} replaced by its default (${VAR:?msg} by required_value)."""
    return _SUBST.sub(lambda m: m.group(3) if m.group(2) == "-" else required_value, value)


def split_volume(spec: str) -> tuple[str, str, str]:
    """(source, target, mode) of a short-form volume such as ``${IMAGES_DIR:-./images}:/data/images:ro``."""
    m = re.fullmatch(r"(\$\{[^}]*\}|[^:]+):([^:]+)(?::(\w+))?", spec)
    assert m, f"cannot read volume {spec!r}"
    return m.group(1), m.group(2), m.group(3) or "rw"


def referenced_vars(value: str) -> set[str]:
    return {m.group(1) for m in _SUBST.finditer(value)}


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(COMPOSE)


# --------------------------------------------------------------------------- Dockerfiles

@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfile_copies_package_and_serves(name):
    instructions = parse_dockerfile(DOCKER / name)
    kinds = [kind for kind, _ in instructions]
    assert kinds.count("FROM") == 1 and kinds[0] in ("FROM", "ARG")
    copies = [shlex.split(args) for kind, args in instructions if kind == "COPY"]
    sources = {src.rstrip("/") for parts in copies for src in parts[:-1] if not src.startswith("--")}
    assert {"requirements.txt", "ovaal_backend"} <= sources
    for src in sources:
        assert (ROOT / src).exists(), f"{name} copies {src}, which is not in the repository"
    # requirements are installed before the package is copied (layer caching), and from requirements.txt
    runs = [args for kind, args in instructions if kind == "RUN"]
    assert any("pip install" in r and "-r requirements.txt" in r for r in runs)
    first_req = next(i for i, (k, a) in enumerate(instructions) if k == "COPY" and "requirements.txt" in a)
    first_pkg = next(i for i, (k, a) in enumerate(instructions) if k == "COPY" and "ovaal_backend" in a)
    assert first_req < first_pkg
    cmds = [json.loads(args) for kind, args in instructions if kind == "CMD"]
    assert cmds == [CMD], "the image must run the backend with `python -m ovaal_backend serve` (exec form)"
    assert ("EXPOSE", "9090") in instructions
    env_text = " ".join(args for kind, args in instructions if kind == "ENV")
    assert "PORT=9090" in env_text and "MODEL_DIR=/data/models" in env_text
    for var in re.findall(r"(\w+)=", env_text):
        assert var in CONFIG_VARS or not var.isupper() or var.startswith(("PYTHON", "PIP_", "NVIDIA_", "DEBIAN_")) \
            or var == "PATH", f"{name} sets {var}, which is no Config field"
        assert var not in CONFIG_VARS or var.lower() in RUNTIME_SETTINGS, \
            f"{name} sets the method setting {var}: leave it to the code's default"


def test_cpu_dockerfile_uses_slim_python_and_cpu_torch():
    instructions = parse_dockerfile(DOCKER / "Dockerfile")
    assert ("FROM", "python:3.11-slim") in instructions
    text = (DOCKER / "Dockerfile").read_text()
    assert "https://download.pytorch.org/whl/cpu" in text


def test_cuda_dockerfile_uses_a_cuda_base():
    text = (DOCKER / "Dockerfile.cuda").read_text()
    base = re.search(r"^ARG CUDA_IMAGE=(\S+)", text, re.M)
    assert base and base.group(1).startswith("nvidia/cuda:") and "runtime" in base.group(1)
    assert ("FROM", "${CUDA_IMAGE}") in parse_dockerfile(DOCKER / "Dockerfile.cuda")
    assert "DEVICE=cuda" in text


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerignore_keeps_what_is_copied(name):
    """Docker reads <Dockerfile>.dockerignore; it must not exclude what the Dockerfile copies, and must drop venvs."""
    patterns = [p.strip() for p in (DOCKER / f"{name}.dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    assert patterns[0] == "**"  # allow-list: everything else (.venv, .venv-ls, runs) stays out of the context
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied = {src.rstrip("/") for kind, args in parse_dockerfile(DOCKER / name) if kind == "COPY"
              for src in shlex.split(args)[:-1]}
    assert copied <= allowed


# --------------------------------------------------------------------------- compose

def test_compose_services_and_ports(compose):
    services = compose["services"]
    assert set(services) == {"label-studio", "ovaal-backend", "redis", "worker"}
    # The queue's services start only with --profile queue: a plain `up` is Label Studio + the backend, as before.
    assert [name for name, s in services.items() if "queue" in (s.get("profiles") or [])] == ["redis", "worker"]
    assert not services["label-studio"].get("profiles") and not services["ovaal-backend"].get("profiles")
    ls, backend = services["label-studio"], services["ovaal-backend"]
    assert ls["image"] == "heartexlabs/label-studio:1.23.2"
    assert [default_of(p) for p in ls["ports"]] == ["8080:8080"]
    # The backend's port reaches the host's loopback only unless OVAAL_BIND says otherwise (Label Studio uses the
    # compose network).
    assert [default_of(p) for p in backend["ports"]] == ["127.0.0.1:9090:9090"]
    assert is_loopback_host(default_of(backend["ports"][0]).split(":")[0])
    build = backend["build"]
    assert (DOCKER / build["context"]).resolve() == ROOT
    assert (ROOT / build["dockerfile"]).resolve() == (DOCKER / "Dockerfile").resolve()
    assert "label-studio" in backend["depends_on"]


def test_compose_env_names_are_real_settings(compose):
    services = compose["services"]
    ls_env, backend_env = env_of(services["label-studio"]), env_of(services["ovaal-backend"])
    unknown_ls = set(ls_env) - LABEL_STUDIO_VARS
    assert not unknown_ls, f"label-studio service sets unknown variables {sorted(unknown_ls)}"
    unknown_backend = set(backend_env) - CONFIG_VARS - SDK_VARS
    assert not unknown_backend, f"ovaal-backend sets variables that are no Config field: {sorted(unknown_backend)}"


def test_compose_label_studio_variables_exist_in_label_studio():
    """When Label Studio is installed (make install-ls), its settings really read every variable we set."""
    sources = list(ROOT.glob(".venv-ls/lib/python*/site-packages/label_studio"))
    if not sources:
        pytest.skip("Label Studio is not installed in .venv-ls (make install-ls)")
    text = "".join(p.read_text() for p in [sources[0] / "core/settings/base.py", sources[0] / "server.py"])
    for var in LABEL_STUDIO_VARS - {"LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"}:
        name = var.removeprefix("LABEL_STUDIO_")
        assert f"'{name}'" in text, f"Label Studio 1.23.2 reads no setting {name}"
    assert "'LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN'" in text


def test_compose_backend_settings(compose):
    env = env_of(compose["services"]["ovaal-backend"])
    assert env["LABEL_STUDIO_URL"] == "http://label-studio:8080"
    assert env["MODEL_DIR"] == "/data/models" and default_of(env["PORT"]) == "9090"
    for var in ("LABEL_STUDIO_API_KEY", "BASIC_AUTH_USER", "BASIC_AUTH_PASS", "DEVICE", "CLASSIFIER", "SELECTION",
                "PIXELS_PER_ROUND", "INIT_PIXELS", "ROUNDS", "EPOCHS", "ENCODER_WEIGHTS", "TRAIN_AFTER_ANNOTATIONS"):
        assert var in env, f"ovaal-backend should document {var}"
    # The defaults written in the compose file make a valid Config.
    config = Config.from_env({k: default_of(v) for k, v in env.items()})
    assert config.port == 9090 and config.model_dir == "/data/models" and config.device == "cpu"
    assert config.max_request_mb == 16 and config.max_predict_tasks == 100 and config.allowed_projects == ""


def test_compose_backend_is_never_open(compose):
    """Inside the container the backend binds every interface, so compose refuses to start without basic auth."""
    env = env_of(compose["services"]["ovaal-backend"])
    assert env["HOST"] == "0.0.0.0" and "ALLOW_OPEN_NETWORK" not in env
    for var in ("BASIC_AUTH_USER", "BASIC_AUTH_PASS"):
        assert re.fullmatch(rf"\$\{{{var}:\?[^}}]+\}}", env[var]), f"{var} must be required (${{{var}:?...}})"
    config = Config.from_env({k: default_of(v, required_value="set") for k, v in env.items()})
    check_network_exposure(config)  # with the required pair the backend starts
    volumes = [split_volume(v) for v in compose["services"]["ovaal-backend"]["volumes"]]
    assert any(dst == "/data/models" and src in compose["volumes"] for src, dst, _ in volumes), \
        "MODEL_DIR must be a named volume"


def test_compose_wires_label_studio_to_the_backend(compose):
    ls = env_of(compose["services"]["label-studio"])
    backend = env_of(compose["services"]["ovaal-backend"])
    assert ls["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
    # One secret: the admin's legacy token is the key the backend uses.
    assert referenced_vars(ls["LABEL_STUDIO_USER_TOKEN"]) == referenced_vars(backend["LABEL_STUDIO_API_KEY"]) \
        == {"LABEL_STUDIO_API_KEY"}
    # Local files: same document root, same folder mounted in both containers.
    root = ls["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"]
    assert ls["LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED"] == "true"
    assert backend["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"] == root

    def images_mount(service: str) -> str:
        mounts = [split_volume(v) for v in compose["services"][service]["volumes"]]
        sources = [src for src, dst, _ in mounts if dst == root]
        assert len(sources) == 1, f"{service} must mount the images folder at {root}"
        return sources[0]

    assert images_mount("label-studio") == images_mount("ovaal-backend")


def test_compose_queue_worker(compose):
    """The GPU worker runs `python -m ovaal_backend worker` on the backend's Redis queue, with the same MODEL_DIR
    volume and image folder as the backend and a GPU reservation; Redis is not published on the host."""
    services = compose["services"]
    worker, backend, redis = services["worker"], services["ovaal-backend"], services["redis"]
    assert worker["command"] == ["python", "-m", "ovaal_backend", "worker"]
    assert (ROOT / worker["build"]["dockerfile"]).resolve() == (DOCKER / "Dockerfile.cuda").resolve()
    env = env_of(worker)
    assert not set(env) - CONFIG_VARS - SDK_VARS, "the worker sets variables that are no Config field"
    # One REDIS_URL (with Redis's password) for both; empty: the backend trains in-process, the worker refuses.
    backend_env = env_of(backend)
    assert env["REDIS_URL"] == backend_env["REDIS_URL"] == "${REDIS_URL:-}" and "redis" in worker["depends_on"]
    assert default_of(env["JOB_QUEUE"]) == default_of(backend_env["JOB_QUEUE"]) == "ovaal"
    config = Config.from_env({**{k: default_of(v) for k, v in env.items()},
                              "REDIS_URL": "redis://:secret@redis:6379/0"})
    assert config.redis_url and config.model_dir == backend_env["MODEL_DIR"] and config.device == "cuda"
    assert config.label_studio_local_files_document_root == backend_env["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"]
    mounts = {dst: src for src, dst, _ in (split_volume(v) for v in worker["volumes"])}
    backend_mounts = {dst: src for src, dst, _ in (split_volume(v) for v in backend["volumes"])}
    assert mounts == backend_mounts and mounts["/data/models"] in compose["volumes"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert [default_of(d) for d in devices[0]["device_ids"]] == ["0"]
    assert "ports" not in redis and redis["image"].startswith("redis:")


def test_gpu_override():
    """docker-compose.gpu.yml overrides the backend service of both the full and the backend-only file."""
    gpu = load_yaml(COMPOSE_GPU)["services"]["ovaal-backend"]
    for path in (COMPOSE, COMPOSE_BACKEND):
        assert "ovaal-backend" in load_yaml(path)["services"]
    assert (ROOT / gpu["build"]["dockerfile"]).resolve() == (DOCKER / "Dockerfile.cuda").resolve()
    assert default_of(env_of(gpu)["DEVICE"]) == "cuda"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_simple_yaml_parser_agrees_with_pyyaml(path):
    yaml = pytest.importorskip("yaml")
    assert parse_simple_yaml(path.read_text()) == yaml.safe_load(path.read_text())


# --------------------------------------------------------------------------- method defaults

def compose_settings() -> list[tuple[str, str, str, str]]:
    """(file, service, VARIABLE, value) for every Config field any compose file sets."""
    out = []
    for path in COMPOSE_FILES:
        for name, service in (load_yaml(path).get("services") or {}).items():
            out += [(path.name, name, var, value) for var, value in env_of(service).items() if var in CONFIG_VARS]
    return out


def test_compose_files_set_no_method_default_of_their_own():
    """Every `${VAR:-default}` a compose file gives a method setting is the code's default, or empty (the code and
    its training profile decide); only where and how the service runs (RUNTIME_SETTINGS) may differ."""
    checked, wrong = 0, []
    for file, service, var, value in compose_settings():
        field = var.lower()
        if field in RUNTIME_SETTINGS:
            continue
        substitutions = list(_SUBST.finditer(value))
        if not substitutions:
            wrong.append(f"{file}: {service} fixes {var}={value!r}; write ${{{var}:-<the code's default>}}")
            continue
        for m in substitutions:
            if m.group(2) != "-" or m.group(3) == "":
                continue  # required (secrets) or empty: the code's default applies
            checked += 1
            got = getattr(Config.from_env({var: m.group(3)}), field)
            if got != CODE_DEFAULTS[field]:
                wrong.append(f"{file}: {service} defaults {var} to {m.group(3)!r}, "
                             f"the code to {CODE_DEFAULTS[field]!r}")
            if field in PROFILE_FIELDS:
                wrong.append(f"{file}: {service} sets {var}, a training-profile field: leave it empty (${{{var}:-}})")
    assert not wrong, "\n".join(wrong)
    assert checked >= 20  # the full compose file documents most settings with their defaults


def test_runtime_exceptions_are_settings():
    assert set(RUNTIME_SETTINGS) <= set(CODE_DEFAULTS) and PROFILE_FIELDS <= set(CODE_DEFAULTS)


# --------------------------------------------------------------------------- the backend alone

def test_backend_only_compose_for_an_existing_label_studio():
    """docker-compose.backend.yml: the backend alone; Label Studio's URL, the key and basic auth are required, the
    document root is optional (empty = download), every docker/.env setting reaches the backend."""
    compose = load_yaml(COMPOSE_BACKEND)
    assert set(compose["services"]) == {"ovaal-backend"}
    backend = compose["services"]["ovaal-backend"]
    assert (ROOT / backend["build"]["dockerfile"]).resolve() == (DOCKER / "Dockerfile").resolve()
    assert backend["env_file"] == [".env"]
    env = env_of(backend)
    assert not set(env) - CONFIG_VARS - SDK_VARS
    for var in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "BASIC_AUTH_USER", "BASIC_AUTH_PASS"):
        assert re.fullmatch(rf"\$\{{{var}:\?[^}}]+\}}", env[var]), f"{var} must be required (${{{var}:?...}})"
    assert env["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"] == "${LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT:-}"
    config = Config.from_env({k: default_of(v, required_value="set") for k, v in env.items()})
    check_network_exposure(config)
    assert config.model_dir == "/data/models" and config.port == 9090
    assert config.label_studio_local_files_document_root == ""
    assert [default_of(p) for p in backend["ports"]] == ["127.0.0.1:9090:9090"]
    mounts = {dst: src for src, dst, _ in (split_volume(v) for v in backend["volumes"])}
    assert mounts["/data/models"] in compose["volumes"] and "/data/images" in mounts


# --------------------------------------------------------------------------- one user across images

def image_user(name: str) -> dict:
    """What decides who a Dockerfile's processes are: its uid/gid build arguments, the RUN that creates the user,
    USER, and ENTRYPOINT (exec form)."""
    instructions = parse_dockerfile(DOCKER / name)
    args = dict(a.split("=", 1) for kind, a in instructions if kind == "ARG" and a.startswith("OVAAL_"))
    (creates,) = [a for kind, a in instructions if kind == "RUN" and "useradd" in a]
    (user,) = [a for kind, a in instructions if kind == "USER"]
    (entrypoint,) = [json.loads(a) for kind, a in instructions if kind == "ENTRYPOINT"]
    return {"args": args, "creates": creates, "user": user, "entrypoint": entrypoint}


def test_images_run_as_one_user_with_a_shared_group():
    """The backend (CPU image) and the worker (CUDA image) are the same uid and gid, so either reads and replaces
    what the other wrote in the shared MODEL_DIR (issue 16: 1000 vs 1001 failed every queued round)."""
    cpu, cuda = (image_user(name) for name in DOCKERFILES)
    assert cpu == cuda
    assert cpu["args"] == {"OVAAL_UID": "1000", "OVAAL_GID": "1000"}
    assert cpu["user"] == "${OVAAL_UID}:${OVAAL_GID}"
    assert '--uid "$OVAAL_UID" --gid "$OVAAL_GID"' in cpu["creates"]
    assert "chmod 2775 /data/models" in cpu["creates"]  # group-writable, new folders keep the group
    assert cpu["entrypoint"][:2] == ["/bin/sh", "-c"] and "umask 0002" in cpu["entrypoint"][2]


def entrypoint_command(*command: str) -> list[str]:
    """``command`` started the way the images start it: through their ENTRYPOINT."""
    return image_user("Dockerfile")["entrypoint"] + list(command)


def test_entrypoint_sets_umask_002_and_runs_the_command():
    out = subprocess.run(entrypoint_command(sys.executable, "-c", "import os, sys; print(oct(os.umask(0)), "
                                            "sys.argv[1:])", "a b", "c"),
                         capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split(None, 1) == ["0o2", "['a b', 'c']\n"]


# The three steps of a queued round, as the processes' own code does them (write_atomically is what save_checkpoint,
# the image cache and the mask files use); no torch import, to keep the test fast: the parent makes the checkpoints.
WRITE_AS_BACKEND = """
import shutil, sys
from pathlib import Path
from ovaal_backend.files import write_atomically
models, image, png, checkpoint = map(Path, sys.argv[1:5])
write_atomically(image, lambda handle: handle.write(png.read_bytes()))
write_atomically(models / "3" / "model.pt", lambda handle: handle.write(checkpoint.read_bytes()))
"""
TRAIN_AS_WORKER = """
import sys, numpy as np
from pathlib import Path
from PIL import Image
from ovaal_backend.files import write_atomically
models, image, checkpoint = map(Path, sys.argv[1:4])
assert Image.open(image).size == (3, 2)
assert (models / "3" / "model.pt").read_bytes()
write_atomically(models / "3" / "model.pt", lambda handle: handle.write(checkpoint.read_bytes()))
write_atomically(models / "3" / "masks" / "7.npz", lambda handle: np.savez_compressed(handle, m=np.zeros((2, 3))))
"""
READ_AS_BACKEND = """
import sys, numpy as np
from pathlib import Path
project = Path(sys.argv[1]) / "3"
print(np.load(project / "masks" / "7.npz")["m"].shape, len((project / "model.pt").read_bytes()) > 0)
"""


def open_to_everyone(path: Path) -> bool:
    """Whether any uid may run ``path``: it and every folder above it are executable by others."""
    path = path.resolve()
    return all(part.stat().st_mode & 0o001 for part in (path, *path.parents))


def python_for_another_uid() -> tuple[str, dict[str, str]]:
    """An interpreter another uid can start with this environment's packages: ours, or (when ours lies under a
    private home, as pyenv's under /root) the system's of the same minor version with our site-packages."""
    if not open_to_everyone(ROOT):  # e.g. a clone under `mktemp -d` (0700): other uids cannot import the package
        pytest.skip(f"{ROOT} lies under a folder other uids may not enter")
    if open_to_everyone(Path(sys.executable)):
        return sys.executable, {"PYTHONPATH": str(ROOT)}
    system = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    if not system.exists() or not open_to_everyone(system):
        pytest.skip(f"no Python {sys.version_info.major}.{sys.version_info.minor} that other uids may run")
    import site

    return str(system), {"PYTHONPATH": os.pathsep.join([str(ROOT), *site.getsitepackages()])}


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                    reason="needs root to run processes as two other uids (the images' single-host queue set-up)")
def test_a_job_written_by_one_uid_is_read_and_replaced_by_another_of_the_group():
    """The single-host queue set-up, with processes started through the images' entrypoint: the backend (one uid)
    caches an image and saves model.pt; a worker of ANOTHER uid in the same group reads both, replaces model.pt and
    writes a mask; the backend reads what the worker wrote. With mkstemp's 0600 files or 0755 folders this fails."""
    import torch
    from PIL import Image

    from ovaal_backend.backend.images import ImageFetcher

    backend_uid, worker_uid, gid = 47001, 47002, 47000  # no such users: only the numbers count
    shared = Path(tempfile.mkdtemp(prefix="ovaal-uids-", dir="/tmp"))
    try:
        shared.chmod(0o755)
        models = shared / "models"  # as the images' /data/models: owned by the backend, group-writable, setgid
        models.mkdir()
        os.chown(models, backend_uid, gid)
        models.chmod(0o2775)
        png, first, second = shared / "a.png", shared / "v1.pt", shared / "v2.pt"
        Image.new("RGB", (3, 2), (10, 20, 30)).save(png)
        torch.save({"version": 1}, first)  # what save_checkpoint hands write_atomically
        torch.save({"version": 2}, second)
        image = ImageFetcher(None, models / "3" / "images").cached_path("http://label-studio:8080/data/upload/3/a.png")
        python, path = python_for_another_uid()
        env = {**os.environ, "HOME": str(shared), "PYTHONDONTWRITEBYTECODE": "1", **path}

        def run_as(uid: int, script: str, *args: Path) -> str:
            result = subprocess.run(entrypoint_command(python, "-c", script, str(models), *map(str, args)),
                                    user=uid, group=gid, extra_groups=[], env=env, cwd=shared,
                                    capture_output=True, text=True, timeout=120)
            assert result.returncode == 0, f"uid {uid} failed:\n{result.stderr[-3000:]}"
            return result.stdout.strip()

        run_as(backend_uid, WRITE_AS_BACKEND, image, png, first)
        run_as(worker_uid, TRAIN_AS_WORKER, image, second)
        assert run_as(backend_uid, READ_AS_BACKEND) == "(2, 3) True"
        assert torch.load(models / "3" / "model.pt", weights_only=True)["version"] == 2
        assert (models / "3" / "model.pt").stat().st_uid == worker_uid
        for folder in (models / "3", models / "3" / "images", models / "3" / "masks"):
            assert folder.stat().st_gid == gid and folder.stat().st_mode & 0o2070 == 0o2070, folder
        assert image.stat().st_mode & 0o777 == 0o664
    finally:
        shutil.rmtree(shared, ignore_errors=True)


# --------------------------------------------------------------------------- Redis and Label Studio's SSRF guard

def test_redis_has_a_password_and_a_network_without_label_studio(compose):
    services = compose["services"]
    redis = services["redis"]
    assert env_of(redis)["REDIS_PASSWORD"] == "${REDIS_PASSWORD:-}"
    script = redis["command"][-1]
    assert redis["command"][:2] == ["sh", "-c"]
    assert 'test -n "$$REDIS_PASSWORD" || {' in script and '--requirepass "$$REDIS_PASSWORD"' in script
    networks = {name: set(s.get("networks") or ["default"]) for name, s in services.items()}
    assert networks == {"label-studio": {"default"}, "ovaal-backend": {"default", "queue"},
                        "redis": {"queue"}, "worker": {"queue"}}
    assert set(compose["networks"]) == {"default", "queue"}


def test_redis_refuses_to_start_without_a_password(compose):
    """The redis service's shell line (compose turns $$ into $) stops before redis-server when the password is empty."""
    script = compose["services"]["redis"]["command"][-1].replace("$$", "$").replace("exec redis-server", "echo started")
    empty = subprocess.run(["sh", "-c", script], env={"REDIS_PASSWORD": ""}, capture_output=True, text=True)
    assert empty.returncode == 1 and "set REDIS_PASSWORD" in empty.stderr and "started" not in empty.stdout
    given = subprocess.run(["sh", "-c", script], env={"REDIS_PASSWORD": "s3cret"}, capture_output=True, text=True)
    assert given.returncode == 0 and "--requirepass s3cret" in given.stdout


def ssrf_module():
    spec = importlib.util.spec_from_file_location("label_studio_ssrf", DOCKER / "label_studio_ssrf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def backend_address(compose) -> str:
    return compose["services"]["ovaal-backend"]["networks"]["default"]["ipv4_address"]


def test_label_studio_ssrf_guard_stays_on_and_lets_only_the_backend_in(compose):
    """Label Studio's protection stays on; its refused networks are its default list minus the backend's fixed
    address, which lies in the network's subnet and outside the range other containers get addresses from."""
    ls = env_of(compose["services"]["label-studio"])
    address = backend_address(compose)
    expected = ssrf_module().settings([address])
    assert {k: ls[k] for k in expected} == expected
    assert "LABEL_STUDIO_SSRF_PROTECTION_ENABLED" in ls and ls["LABEL_STUDIO_ML_BLOCK_LOCAL_IP"] == "true"
    (ipam,) = compose["networks"]["default"]["ipam"]["config"]
    ip = ipaddress.ip_address(address)
    assert ip in ipaddress.ip_network(ipam["subnet"]) and ip not in ipaddress.ip_network(ipam["ip_range"])
    banned = [ipaddress.ip_network(n) for n in ls["LABEL_STUDIO_USER_ADDITIONAL_BANNED_SUBNETS"].split(",")]
    defaults = [ipaddress.ip_network(n) for n in ssrf_module().LABEL_STUDIO_DEFAULT_BANNED_SUBNETS]
    for probe in (address, "172.31.250.1", "172.31.250.11", "172.17.0.2", "10.0.0.1", "127.0.0.1", "169.254.169.254"):
        refused = any(ipaddress.ip_address(probe) in n for n in banned)
        assert refused == (probe != address), probe
    # exactly the default list's addresses, less one
    assert sum(n.num_addresses for n in banned if n.version == 4) == \
        sum(n.num_addresses for n in defaults if n.version == 4) - 1


LS_SSRF_CHECK = """
import os, re, sys
from pathlib import Path
import label_studio
root = Path(label_studio.__file__).parent
sys.path.insert(0, str(root))
from core.utils.params import get_bool_env, get_env_list
from django.conf import settings
names = ("SSRF_PROTECTION_ENABLED", "USE_DEFAULT_BANNED_SUBNETS", "USER_ADDITIONAL_BANNED_SUBNETS", "ML_BLOCK_LOCAL_IP")
base = (root / "core/settings/base.py").read_text()
lines = [m.group(0) for m in re.finditer(r"^(%s) = .*$" % "|".join(names), base, re.M)]
assert len(lines) == 4, lines
values = {}
exec("\\n".join(lines), {"get_bool_env": get_bool_env, "get_env_list": get_env_list}, values)
settings.configure(**values)
import requests
from core.utils.exceptions import SsrfBlockedUrlError
from core.utils.io import SsrfSafeHTTPAdapter, ssrf_safe_post, validate_url_for_ssrf
print(values["SSRF_PROTECTION_ENABLED"], values["ML_BLOCK_LOCAL_IP"])
for url in sys.argv[2:]:
    try:
        if sys.argv[1] == "check":  # what the Connect dialog and the webhook form run on the URL
            validate_url_for_ssrf(url, block_local_urls=True)
        else:  # what sending does: a webhook (webhooks/utils.py), an ML backend call (ml/api_connector.py)
            ssrf_safe_post(url, json={"action": "PING"}, timeout=10)
            with requests.Session() as ml:
                ml.mount("http://", SsrfSafeHTTPAdapter())
                ml.get(url, timeout=10)
        print(url, "allowed")
    except (SsrfBlockedUrlError, requests.ConnectionError):
        print(url, "refused")
"""


def run_label_studio_ssrf(mode: str, environment: dict[str, str], urls: list[str]) -> list[str]:
    """Label Studio's verdict on ``urls`` under ``environment`` (its own settings parsing and checks, 1.23.2)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LABEL_STUDIO_", "HEARTEX_")) and "proxy" not in k.lower()}
    env.update({**environment, "NO_PROXY": "*", "no_proxy": "*"})
    result = subprocess.run([str(ROOT / ".venv-ls/bin/python"), "-c", LS_SSRF_CHECK, mode, *urls], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0] == "True True"  # protection on, for ML backends too
    return lines[1:]


@pytest.mark.skipif(LS_PACKAGE is None, reason="Label Studio is not installed in .venv-ls (make install-ls)")
def test_label_studio_itself_reaches_the_backend_and_refuses_other_private_addresses(compose):
    """Label Studio 1.23.2's own settings parsing and URL check, with the compose file's environment: the backend's
    /setup and /webhook pass; the host's gateway, Redis's network, loopback and cloud metadata do not."""
    text = (LS_PACKAGE / "core/utils/io.py").read_text()
    listed = re.findall(r"'([0-9a-f:.]+/\d+)'", text[text.index("default_banned_subnets = ["):
                                                   text.index("\n    banned_subnets = [")])
    assert tuple(listed) == ssrf_module().LABEL_STUDIO_DEFAULT_BANNED_SUBNETS
    backend = f"http://{backend_address(compose)}:9090"
    urls = [f"{backend}/setup", f"{backend}/webhook", "http://172.31.250.1:22/", "http://172.31.250.11:9090/",
            "http://172.18.0.2:6379/", "http://127.0.0.1:8080/", "http://169.254.169.254/latest/meta-data/"]
    verdicts = run_label_studio_ssrf("check", env_of(compose["services"]["label-studio"]), urls)
    assert verdicts == [f"{urls[0]} allowed", f"{urls[1]} allowed"] + [f"{u} refused" for u in urls[2:]]


@pytest.mark.skipif(LS_PACKAGE is None, reason="Label Studio is not installed in .venv-ls (make install-ls)")
def test_label_studio_sends_only_to_the_let_through_address():
    """Label Studio's real sending code (webhook post, ML backend session) with the list made for one address: the
    server there gets both requests, a server on another loopback address (refused, like every private one) none."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received = {"127.0.0.1": 0, "127.0.0.2": 0}

    class Count(BaseHTTPRequestHandler):
        def answer(self) -> None:
            received[self.server.server_address[0]] += 1
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = answer

        def log_message(self, *args) -> None:
            pass

    servers = [ThreadingHTTPServer((host, 0), Count) for host in received]
    threads = [threading.Thread(target=server.serve_forever, daemon=True) for server in servers]
    for thread in threads:
        thread.start()
    try:
        urls = [f"http://{host}:{port}/webhook" for host, port in (server.server_address for server in servers)]
        verdicts = run_label_studio_ssrf("send", ssrf_module().settings(["127.0.0.1"]), urls)
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
    assert verdicts == [f"{urls[0]} allowed", f"{urls[1]} refused"]
    assert received == {"127.0.0.1": 2, "127.0.0.2": 0}
