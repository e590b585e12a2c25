"""Static checks of docker/: the Dockerfiles build what we ship and the compose file names only real settings.

No Docker engine is needed: the files are parsed, not built.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from pathlib import Path

import pytest

from ovaal_backend.backend.wsgi import check_network_exposure
from ovaal_backend.config import Config, is_loopback_host

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "docker-compose.yml"
COMPOSE_GPU = DOCKER / "docker-compose.gpu.yml"
CONFIG_VARS = {f.name.upper() for f in dataclasses.fields(Config)}

# Label Studio server settings (read as LABEL_STUDIO_<NAME>, HEARTEX_<NAME> or <NAME>; see
# label_studio/core/settings/base.py and label_studio/server.py of label-studio 1.23.2).
LABEL_STUDIO_VARS = {
    "LABEL_STUDIO_USERNAME", "LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_USER_TOKEN", "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN",
    "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK", "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED",
    "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", "LABEL_STUDIO_ML_BLOCK_LOCAL_IP", "LABEL_STUDIO_SSRF_PROTECTION_ENABLED",
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
    # ML backends on the compose network have private IPs: both protections must be off, legacy tokens on.
    assert ls["LABEL_STUDIO_ML_BLOCK_LOCAL_IP"] == "false"
    assert ls["LABEL_STUDIO_SSRF_PROTECTION_ENABLED"] == "false"
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
    assert default_of(env["REDIS_URL"]) == "redis://redis:6379/0" and "redis" in worker["depends_on"]
    backend_env = env_of(backend)
    assert default_of(backend_env["REDIS_URL"]) == ""  # in-process unless REDIS_URL is set
    assert default_of(env["JOB_QUEUE"]) == default_of(backend_env["JOB_QUEUE"]) == "ovaal"
    config = Config.from_env({k: default_of(v) for k, v in env.items()})
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
    gpu = load_yaml(COMPOSE_GPU)["services"]["ovaal-backend"]
    assert (ROOT / gpu["build"]["dockerfile"]).resolve() == (DOCKER / "Dockerfile.cuda").resolve()
    assert default_of(env_of(gpu)["DEVICE"]) == "cuda"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_GPU], ids=lambda p: p.name)
def test_simple_yaml_parser_agrees_with_pyyaml(path):
    yaml = pytest.importorskip("yaml")
    assert parse_simple_yaml(path.read_text()) == yaml.safe_load(path.read_text())
