"""The settings: ``Config`` composed of frozen parts for the engine, the server and the job queue.

Every field has a default and an environment variable (the field name in upper case, e.g. ``PIXELS_PER_ROUND``).
``Config.from_env()`` runs once, where a program starts; everything else receives the object explicitly, or only the
part it needs (a round job carries ``EngineConfig``: no Label Studio key or basic-auth password travels to workers).
The README's configuration table documents each field.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .engine.classifiers import CLASSIFIERS
from .engine.pseudo_labels import SEMI_RULES, SEMI_TEACHERS
from .engine.schedules import LR_SCHEDULES
from .engine.scorers import SCORERS

IGNORE_INDEX = -1
"""Label of a point that trains nothing: void, "can't tell", or a class the label config no longer has."""

# The names of the engine's choices come from its registries, each a dict name -> implementation beside the
# implementations (torch-free modules, so this file loads no torch): CLASSIFIERS (engine/classifiers.py), SCORERS
# (engine/scorers.py), LR_SCHEDULES (engine/schedules.py), SEMI_RULES and SEMI_TEACHERS (engine/pseudo_labels.py).
RANDOM_SELECTION = "random"
"""The selection that scores nothing: pixels drawn uniformly at random (round 0 always; the random baseline)."""
SELECTIONS = (*SCORERS, RANDOM_SELECTION)
"""Every ``SELECTION``: a scorer's name, or ``random``."""
MULTICLASS_SCORERS = tuple(name for name, scorer in SCORERS.items() if not scorer.per_class)
"""Selections that score a class distribution (margin, entropy, least-confidence), not each class on its own."""
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


MAX_PROJECT_ID = 2**31 - 1
"""The largest Label Studio project id the backend accepts (Label Studio's ids are 32-bit signed integers)."""


def is_loopback_host(host: str) -> bool:
    """Whether a bind address reaches this machine only: 127.0.0.0/8, ::1 or ``localhost``."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # another host name, "" or "0.0.0.0"-like wildcards: assume reachable from outside


def is_ova(classifier: str) -> bool:
    """Whether a classifier kind is One-vs-All (per-class sigmoids) rather than the multi-class softmax baseline."""
    return CLASSIFIERS[classifier].ova


TRAIN_PROFILES: dict[str, dict[str, Any]] = {
    "gpu": {},
    "cpu": {"image_height": 176, "image_width": 240, "epochs": 2, "first_round_epochs": 3, "semi_epochs": 6},
}
"""Training defaults per machine: ``gpu`` = the dataclass defaults (the paper's size, 20 epochs a round); ``cpu`` is
sized so that a round of a 100-image project ends in about 2 minutes on 2 cores (docs/benchmarks.md). Its final phase
runs once per project and is longer (6 epochs): in the CamVid grid 6 final epochs instead of 2 raised every run
measured, both OVA and PixelPick, by about 2 mIoU. The simulator's ``cpu`` and ``converged`` presets take their image
size from ``cpu`` (simulator/presets.py says why their epochs differ). A profile never replaces a setting given
explicitly (environment or overrides, see ``Config.explicit``), whatever its value; ``auto`` picks ``gpu`` where CUDA is
present on the machine that trains (a queue worker decides for itself)."""

ALIASES = {"LABEL_STUDIO_ACCESS_TOKEN": "label_studio_api_key", "LABEL_STUDIO_HOST": "label_studio_url",
           "THREADS": "server_threads", "START_TRAINING_EACH_N_UPDATES": "train_after_annotations"}
"""label-studio-ml's environment names, accepted for ours (ours win when both are set)."""


class ConfigError(ValueError):
    """A setting has a value that cannot work; the message names the setting and what to do."""


class _Part:
    """What the three parts of the settings share: copies, a plain dict, and a record of the names given on purpose.

    Each part is a frozen dataclass whose last field is ``explicit``: the names of its settings given on purpose
    (environment variables, ``from_env`` overrides). A training profile never replaces them. ``explicit`` is not a
    setting itself (no environment variable, no README row); ``setting_fields`` leaves it out.
    """

    explicit: frozenset[str]

    @classmethod
    def names(cls) -> frozenset[str]:
        """The settings this part holds."""
        return frozenset(f.name for f in fields(cls) if f.metadata.get("setting", True))  # type: ignore[arg-type]

    def replace(self, **changes: Any) -> Any:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able settings, secrets removed (for results files and logs)."""
        return {name: getattr(self, name) for name in _ordered(type(self))}

    def _check_explicit(self) -> None:
        unknown = set(self.explicit) - self.names()
        if unknown:
            raise ConfigError(f"explicit names settings that do not exist: {', '.join(sorted(unknown))}")


def _ordered(cls: type) -> list[str]:
    """A part's setting names in declaration order (README order)."""
    return [f.name for f in fields(cls) if f.metadata.get("setting", True)]


def _explicit() -> Any:
    return field(default=frozenset(), metadata={"setting": False})


@dataclass(frozen=True)
class EngineConfig(_Part):
    """What a round's work needs: model, training, acquisition, OVAAL+, and where its files lie.

    The simulator runs on it and a ``RoundJob`` carries it to the process that trains (a thread here, or a queue
    worker through Redis), so it holds no secret: the Label Studio key and the basic-auth pair live in
    ``ServerConfig``, Redis' URL in ``QueueConfig``.
    """

    # --- model ---
    classifier: str = "ova-shared"
    arch: str = "deeplabv3plus"
    encoder: str = "timm-tf_efficientnet_lite0"
    encoder_weights: str = "lite0-offline"
    device: str = "auto"

    # --- training ---
    train_profile: str = "auto"  # auto | gpu | cpu: which training defaults apply (see TRAIN_PROFILES)
    image_height: int = 360
    image_width: int = 480
    epochs: int = 20
    first_round_epochs: int = 20
    retrain: bool = False
    batch_size: int = 8
    lr: float = 5e-4
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 2e-4
    scale_min: float = 0.75
    scale_max: float = 1.5
    color_jitter: float = 0.3
    class_balance: float = 0.5  # 0 = the paper's plain loss, 1 = each class's clicks weigh the same (our departure)
    # most training points a fully labelled image (a corrected mask) gives: a grid of the training size scaled down to
    # at most this many cells (0 = one point per training pixel, which lowered the pool's masks: docs/benchmarks.md)
    correction_points: int = 1000
    lr_schedule: str = "cosine"
    keep_optimizer: bool = False
    # the pretrained encoder's learning rate as a fraction of LR (PixelPick trains its encoder at 0.1 of the head's)
    encoder_lr_ratio: float = 1.0
    # the final phase trains a fresh model (pretrained encoder, new heads) on every label instead of fine-tuning the
    # last round's model (as the paper's Table II and PixelPick train their final models)
    final_from_scratch: bool = False
    amp: bool = True
    num_threads: int = 0
    seed: int = 0

    # --- acquisition ---
    selection: str = "ova"
    init_pixels: int = 22
    pixels_per_round: int = 22
    rounds: int = 4
    diversity_top_fraction: float = 0.05
    exclude_void: bool = False

    # --- OVAAL+ semi-supervised step ---
    semi: bool = False  # OVAAL+ lowered mIoU in the grid so far (docs/benchmarks.md): off until one helps
    semi_alpha: float = 1.0
    semi_top_l: int = 2000
    semi_epochs: int = 10
    semi_rule: str = "wta"
    semi_teacher: str = "ema"
    semi_ema_decay: float = 0.99
    semi_balance: float = 1.0  # like class_balance, for the pseudo-labels of the OVAAL+ loss

    # --- a round job's files: where they lie (a queue worker moves them onto its own mounts) and how they are read ---
    model_dir: str = "model_dir"
    # Label Studio's LOCAL_FILES_DOCUMENT_ROOT as mounted in the backend: /data/local-files/ images are read from
    # disk there ("" = always download them from Label Studio with the token).
    label_studio_local_files_document_root: str = ""
    predict_batch: int = 4
    max_image_pixels: int = 50_000_000  # width x height of an image, checked before it is decoded

    explicit: frozenset[str] = _explicit()

    def __post_init__(self) -> None:
        self.validate()

    @property
    def budget(self) -> int:
        """Pixels per image when every round has been answered."""
        return self.init_pixels + self.rounds * self.pixels_per_round

    def validate(self) -> None:
        """Raise ConfigError for values that cannot work, naming the setting."""
        if self.classifier not in CLASSIFIERS:
            raise ConfigError(f"classifier={self.classifier!r}: choose one of {', '.join(CLASSIFIERS)}")
        if self.selection not in SELECTIONS:
            raise ConfigError(f"selection={self.selection!r}: choose one of {', '.join(SELECTIONS)}")
        for name, value, allowed in (("train_profile", self.train_profile, ("auto", *TRAIN_PROFILES)),
                                     ("lr_schedule", self.lr_schedule, LR_SCHEDULES),
                                     ("semi_rule", self.semi_rule, SEMI_RULES),
                                     ("semi_teacher", self.semi_teacher, SEMI_TEACHERS)):
            if value not in allowed:
                raise ConfigError(f"{name}={value!r}: choose one of {', '.join(allowed)}")
        for name in ("class_balance", "semi_ema_decay", "semi_balance"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.encoder_lr_ratio <= 1.0:
            raise ConfigError(f"encoder_lr_ratio must lie in (0, 1], got {self.encoder_lr_ratio}")
        if self.semi and self.final_from_scratch:
            raise ConfigError("semi=True (OVAAL+) takes its pseudo-labels from the last round's model: "
                              "set FINAL_FROM_SCRATCH=false or SEMI=false")
        if self.semi and not is_ova(self.classifier):
            raise ConfigError("semi=True (OVAAL+) inverts binary OVA predictions: "
                              "use an OVA classifier or set SEMI=false")
        if self.max_image_pixels <= 0:
            raise ConfigError(f"max_image_pixels must be positive, got {self.max_image_pixels}")
        for name in ("image_height", "image_width", "batch_size", "pixels_per_round", "predict_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("epochs", "first_round_epochs", "rounds", "init_pixels", "semi_epochs", "semi_top_l",
                     "num_threads", "correction_points"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}")
        if not 0.0 <= self.diversity_top_fraction <= 1.0:
            raise ConfigError(f"diversity_top_fraction must lie in [0, 1], got {self.diversity_top_fraction}")
        if not 0 < self.scale_min <= self.scale_max:
            raise ConfigError(f"need 0 < scale_min <= scale_max, got {self.scale_min}, {self.scale_max}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device={self.device!r}: use auto, cpu, cuda or cuda:N")
        self._check_explicit()

    def profile_for(self, has_cuda: bool) -> str:
        """The training profile this config gets on a machine with or without CUDA (``auto`` decides by it)."""
        return self.train_profile if self.train_profile != "auto" else ("gpu" if has_cuda else "cpu")

    def profile_changes(self, profile: str) -> dict[str, Any]:
        """The fields ``profile`` sets: those of TRAIN_PROFILES[profile] neither given explicitly nor changed from
        the code default (a ``Config(epochs=7)`` built in code counts as given)."""
        defaults = {f.name: f.default for f in fields(EngineConfig)}
        return {k: v for k, v in TRAIN_PROFILES[profile].items()
                if k not in self.explicit and getattr(self, k) == defaults[k]}

    def for_machine(self, has_cuda: bool) -> EngineConfig:
        """The config with its training profile applied and ``train_profile`` set to the profile it resolved to.

        Call it where the training runs: in the web process without REDIS_URL, in the queue worker with it.
        """
        profile = self.profile_for(has_cuda)
        return self.replace(train_profile=profile, **self.profile_changes(profile))

    def for_worker(self, worker: EngineConfig | Config, has_cuda: bool) -> EngineConfig:
        """A queued round job's config (``self``, from the backend) with the profile of the machine that trains it.

        The backend leaves the profile unapplied for queued jobs. Its TRAIN_PROFILE wins when it names one (gpu,
        cpu); with ``auto`` the worker's own TRAIN_PROFILE decides (``auto`` by default: ``gpu`` when the worker has
        CUDA), so a CPU worker does not train the GPU sizes.
        """
        profile = self.train_profile if self.train_profile != "auto" else worker.train_profile
        return self.replace(train_profile=profile).for_machine(has_cuda)


@dataclass(frozen=True)
class ServerConfig(_Part):
    """What only the backend's web process and its project workers read: Label Studio, HTTP, limits, secrets."""

    label_studio_url: str = "http://localhost:8080"
    label_studio_api_key: str = field(default="", repr=False)  # secrets stay out of reprs and logs
    host: str = "127.0.0.1"  # address gunicorn binds (127.0.0.1 = this machine only; 0.0.0.0 = every interface)
    port: int = 9090
    # Serve a non-loopback HOST without basic auth (only on a network where everyone who reaches the port is trusted).
    allow_open_network: bool = False
    # comma-separated names a request's Host header may carry besides localhost, 127.x, [::1] and HOST, checked on a
    # loopback HOST without basic auth (a web page that rebinds its own name to 127.0.0.1 is refused with 421)
    allowed_host_names: str = ""
    # comma-separated host[:port] images may be downloaded from besides Label Studio's host (no port = 80 and 443)
    allowed_image_hosts: str = ""
    # this backend's URL as Label Studio reaches it (the ML backend URL entered there); "" = learned from the Host
    # of Label Studio's /setup calls. Only that ML backend's webhook gets our basic-auth header
    backend_url: str = ""
    max_classes: int = 256  # most class labels in the label config (400 above; each class is a model output)
    max_label_config_kb: int = 256  # largest label config, in KiB (400 above)
    allowed_projects: str = ""  # comma-separated Label Studio project ids this backend serves ("" = every project)
    max_projects: int = 20  # most projects one backend serves (each has a thread, a model and an image pool)
    max_request_mb: float = 16.0  # largest request body, in MiB (413 above)
    max_predict_tasks: int = 100  # most tasks in one /predict call (400 above)
    server_threads: int = 8  # gunicorn threads of the single worker (requests served at once)
    # /predict calls computing at once; one more is answered 503 at once, so SERVER_THREADS - MAX_PREDICT_CALLS
    # threads always stay free for /webhook, /health and /metrics (Label Studio waits 1 s for a webhook)
    max_predict_calls: int = 2
    # The buffering front (backend/front.py) reads every request whole before a gunicorn thread gets it: request line
    # and headers within REQUEST_HEADER_SECONDS of the connection's start, the body within REQUEST_BODY_SECONDS after
    # them (slower clients get 408); the answer must be taken within REQUEST_BODY_SECONDS too
    request_header_seconds: float = 10.0
    request_body_seconds: float = 60.0
    log_level: str = "INFO"  # DEBUG | INFO | WARNING | ERROR
    basic_auth_user: str = ""
    basic_auth_pass: str = field(default="", repr=False)
    query_from_name: str = ""
    mask_from_name: str = ""
    train_after_annotations: int = 0
    # corrected masks (submitted brush annotations on source tasks) train the next rounds as dense labels, and their
    # images are not queried again
    train_on_corrections: bool = True
    point_size: float = 0.6
    max_download_mb: float = 64.0  # one image download, in MiB
    download_seconds: float = 120.0  # one image download in all (not per read)
    label_studio_timeout: float = 60.0  # seconds one Label Studio API call may take (connect and each read)
    # /setup waits this long for Label Studio when it checks LABEL_STUDIO_URL and the key (Label Studio gives /setup
    # 3 s in all, ML_TIMEOUT_SETUP, and waits blocked meanwhile); no answer by then connects without the check
    setup_check_seconds: float = 1.5
    retry_seconds: float = 30.0  # wait after a project's step failed (Label Studio down) before trying again
    image_pool_size: int = 2000  # source images kept resized in memory (least recently used ones dropped)
    image_pool_mb: int = 256  # and at most this many MiB of them, per project

    explicit: frozenset[str] = _explicit()

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError for values that cannot work, naming the setting."""
        for name in ("max_download_mb", "download_seconds", "image_pool_size", "label_studio_timeout",
                     "setup_check_seconds", "retry_seconds", "request_header_seconds", "request_body_seconds"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.server_threads < 1:
            raise ConfigError(f"server_threads must be at least 1, got {self.server_threads}")
        if self.train_after_annotations < 0:
            raise ConfigError(f"train_after_annotations must not be negative, got {self.train_after_annotations}")
        if self.log_level.upper() not in LOG_LEVELS:
            raise ConfigError(f"log_level={self.log_level!r}: choose one of {', '.join(LOG_LEVELS)}")
        if not 0 < self.port < 65536:
            raise ConfigError(f"port must lie in 1..65535, got {self.port}")
        if self.point_size <= 0:
            raise ConfigError(f"point_size (percent of the image width) must be positive, got {self.point_size}")
        if bool(self.basic_auth_user) != bool(self.basic_auth_pass):
            raise ConfigError("set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither")
        if not 0 < self.max_request_mb < 1e6:
            raise ConfigError(f"max_request_mb must be a positive number of MiB, got {self.max_request_mb}")
        if self.image_pool_mb < 1:
            raise ConfigError(f"image_pool_mb must be at least 1, got {self.image_pool_mb}")
        if self.max_predict_tasks < 1:
            raise ConfigError(f"max_predict_tasks must be at least 1, got {self.max_predict_tasks}")
        if self.max_projects < 1:
            raise ConfigError(f"max_projects must be at least 1, got {self.max_projects}")
        if not 1 <= self.max_predict_calls < self.server_threads:
            raise ConfigError(f"max_predict_calls={self.max_predict_calls} with server_threads={self.server_threads}: "
                              "MAX_PREDICT_CALLS must lie in 1..SERVER_THREADS-1, so that threads stay free for "
                              "/webhook (raise SERVER_THREADS or lower MAX_PREDICT_CALLS)")
        for name in ("max_classes", "max_label_config_kb"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.backend_url and not re.fullmatch(r"https?://[^/\s]+(/\S*)?", self.backend_url):
            raise ConfigError(f"backend_url={self.backend_url!r}: give the URL Label Studio reaches this backend at "
                              "(http://host:port), or leave it empty")
        _host_names(self.allowed_host_names)
        _image_hosts(self.allowed_image_hosts)
        _project_ids(self.allowed_projects)
        self._check_explicit()

    @property
    def allowed_project_ids(self) -> frozenset[int]:
        """The project ids of ALLOWED_PROJECTS (empty = every project is served)."""
        return _project_ids(self.allowed_projects)

    @property
    def image_hosts(self) -> frozenset[str]:
        """ALLOWED_IMAGE_HOSTS as lower-case ``host`` or ``host:port`` entries (IPv6 hosts in brackets)."""
        return _image_hosts(self.allowed_image_hosts)

    @property
    def host_names(self) -> frozenset[str]:
        """ALLOWED_HOST_NAMES as lower-case names."""
        return _host_names(self.allowed_host_names)

    @property
    def serves_open_network(self) -> bool:
        """True when HOST is reachable from other machines and no basic auth protects the routes."""
        return not is_loopback_host(self.host) and not self.basic_auth_user

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able settings, secrets removed (for results files and logs)."""
        out = super().to_dict()
        for secret in ("label_studio_api_key", "basic_auth_pass"):
            if out[secret]:
                out[secret] = "***"
        return out


@dataclass(frozen=True)
class QueueConfig(_Part):
    """How round jobs run: in the backend's process, or through RQ on Redis (backend/queue_worker.py)."""

    redis_url: str = ""  # redis://host:6379/0: round jobs go to RQ workers ("" = they run in this process)
    job_queue: str = "ovaal"  # RQ queue name shared by the backend and its workers
    job_timeout: int = 21600  # seconds one round job may run on a worker before it is stopped (and retried)
    job_retries: int = 2  # re-runs of a job whose worker failed or died before it counts as failed
    worker_heartbeat: int = 30  # seconds between a busy worker's heartbeats; ~2 missed ones = the job is re-run
    # round jobs running at once in the backend's own process (without REDIS_URL); other projects' jobs wait
    max_training_jobs: int = 1

    explicit: frozenset[str] = _explicit()

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError for values that cannot work, naming the setting."""
        if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", self.job_queue):
            raise ConfigError(f"job_queue={self.job_queue!r}: use 1-64 letters, digits, '_', '.', ':' or '-'")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("redis_url must start with redis://, rediss:// or unix:// (or be empty: jobs in-process)")
        for name in ("job_timeout", "worker_heartbeat"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1 second, got {getattr(self, name)}")
        if self.max_training_jobs < 1:
            raise ConfigError(f"max_training_jobs must be at least 1, got {self.max_training_jobs}")
        if self.job_retries < 0:
            raise ConfigError(f"job_retries must not be negative, got {self.job_retries}")
        self._check_explicit()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able settings, the Redis password removed."""
        return {**super().to_dict(), "redis_url": redact_url(self.redis_url)}


PARTS: dict[str, type[_Part]] = {"engine": EngineConfig, "server": ServerConfig, "queue": QueueConfig}
"""The parts of Config by attribute name. Each setting lives in exactly one part (``tests/test_config.py``)."""
_OWNER = {name: part for part, cls in PARTS.items() for name in cls.names()}


@dataclass(frozen=True, init=False)
class Config:
    """Every setting: an engine, a server and a queue part, each a frozen dataclass with its own checks.

    Every setting name is unique across the parts, so ``Config`` also reads and builds them flat:
    ``Config(epochs=7).epochs`` is ``Config(engine=EngineConfig(epochs=7)).engine.epochs``. What crosses a process
    boundary takes only the part it needs: a ``RoundJob`` carries ``config.engine`` (no key, no password).
    """

    engine: EngineConfig
    server: ServerConfig
    queue: QueueConfig

    def __init__(self, engine: EngineConfig | None = None, server: ServerConfig | None = None,
                 queue: QueueConfig | None = None, *, explicit: frozenset[str] | None = None, **settings: Any) -> None:
        unknown = set(settings) - set(_OWNER)
        if unknown:
            raise TypeError(f"Config got unknown settings: {', '.join(sorted(unknown))}")
        if explicit is not None and set(explicit) - set(_OWNER):
            raise ConfigError("explicit names settings that do not exist: "
                              f"{', '.join(sorted(set(explicit) - set(_OWNER)))}")
        given = {"engine": engine, "server": server, "queue": queue}
        for part, cls in PARTS.items():
            mine = {k: v for k, v in settings.items() if _OWNER[k] == part}
            if explicit is not None:
                mine["explicit"] = frozenset(explicit) & cls.names()
            base = given[part]
            object.__setattr__(self, part, base.replace(**mine) if base is not None else cls(**mine))

    def __getattr__(self, name: str) -> Any:
        """A setting read flat (``config.epochs``), from the part that owns it."""
        part = _OWNER.get(name)
        if part is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(object.__getattribute__(self, part), name)

    @property
    def explicit(self) -> frozenset[str]:
        """Names of the settings given on purpose, in all parts (a training profile never replaces them)."""
        return self.engine.explicit | self.server.explicit | self.queue.explicit

    @property
    def budget(self) -> int:
        """Pixels per image when every round has been answered."""
        return self.engine.budget

    @property
    def allowed_project_ids(self) -> frozenset[int]:
        """The project ids of ALLOWED_PROJECTS (empty = every project is served)."""
        return self.server.allowed_project_ids

    @property
    def image_hosts(self) -> frozenset[str]:
        """ALLOWED_IMAGE_HOSTS as lower-case ``host`` or ``host:port`` entries."""
        return self.server.image_hosts

    @property
    def host_names(self) -> frozenset[str]:
        """ALLOWED_HOST_NAMES as lower-case names."""
        return self.server.host_names

    @property
    def serves_open_network(self) -> bool:
        """True when HOST is reachable from other machines and no basic auth protects the routes."""
        return self.server.serves_open_network

    def validate(self) -> None:
        """Raise ConfigError for values that cannot work, naming the setting (each part checks its own)."""
        for part in PARTS:
            getattr(self, part).validate()

    def replace(self, **changes: Any) -> Config:
        """A copy with some settings changed (validated again); ``explicit`` is kept."""
        return Config(self.engine, self.server, self.queue, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Defaults, then environment variables named like the fields in upper case, then ``overrides``."""
        environ = os.environ if environ is None else environ
        types = {f.name: type(f.default) for f in setting_fields()}
        values: dict[str, Any] = {}
        for alias, name in ALIASES.items():
            if environ.get(alias):
                values[name] = _parse(alias, environ[alias], types[name])
        for name, kind in types.items():
            raw = environ.get(name.upper())
            if raw is not None and raw != "":
                values[name] = _parse(name, raw, kind)
        values.update(overrides)
        return cls(**values, explicit=frozenset(values))

    def profile_for(self, has_cuda: bool) -> str:
        """The training profile this config gets on a machine with or without CUDA (``auto`` decides by it)."""
        return self.engine.profile_for(has_cuda)

    def profile_changes(self, profile: str) -> dict[str, Any]:
        """The engine fields ``profile`` sets (``EngineConfig.profile_changes``)."""
        return self.engine.profile_changes(profile)

    def for_machine(self, has_cuda: bool) -> Config:
        """The config with the training profile of this machine applied (``EngineConfig.for_machine``)."""
        return Config(self.engine.for_machine(has_cuda), self.server, self.queue)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able settings of every part, secrets removed (for results files and logs)."""
        return {**self.engine.to_dict(), **self.server.to_dict(), **self.queue.to_dict()}


def engine_part(config: EngineConfig | Config) -> EngineConfig:
    """The engine settings of either a whole Config or an EngineConfig (what a round job may carry)."""
    return config.engine if isinstance(config, Config) else config


def setting_fields() -> tuple[dataclasses.Field, ...]:
    """Every setting's field, part after part (each has an environment variable and a README row)."""
    return tuple(f for cls in PARTS.values() for f in fields(cls) if f.metadata.get("setting", True))


def redact_url(url: str) -> str:
    """A URL with the password of its ``user:password@`` part replaced by ``***`` (for logs and /metrics)."""
    return re.sub(r"(?<=://)([^/@]*?):[^/@]*@", r"\1:***@", url)


_HOST = r"(?:[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9_])?|\[[0-9A-Fa-f:.]{2,45}\])"
"""A DNS name, an IPv4 address or a bracketed IPv6 address."""


def _image_hosts(text: str) -> frozenset[str]:
    """Comma-separated ``host[:port]`` entries as a set; ConfigError naming ALLOWED_IMAGE_HOSTS otherwise."""
    entries = set()
    for part in (p.strip().lower() for p in text.split(",")):
        if not part:
            continue
        match = re.fullmatch(rf"({_HOST})(?::([0-9]{{1,5}}))?", part)
        if match is None or (match.group(2) and not 0 < int(match.group(2)) < 65536):
            raise ConfigError(f"allowed_image_hosts={text!r}: give host or host:port entries (e.g. "
                              "images.example.com,10.0.0.5:9000) separated by commas, or leave it empty")
        entries.add(part)
    return frozenset(entries)


def _host_names(text: str) -> frozenset[str]:
    """Comma-separated host names as a set; ConfigError naming ALLOWED_HOST_NAMES otherwise."""
    names = {p.strip().lower() for p in text.split(",") if p.strip()}
    for name in names:
        if not re.fullmatch(_HOST, name):
            raise ConfigError(f"allowed_host_names={text!r}: give host names (no port, no scheme) separated by "
                              "commas, or leave it empty")
    return frozenset(names)


def _project_ids(text: str) -> frozenset[int]:
    """Comma-separated project ids as a set; ConfigError naming ALLOWED_PROJECTS for anything else."""
    ids = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if not re.fullmatch(r"[0-9]{1,10}", part) or not 0 < int(part) <= MAX_PROJECT_ID:
            raise ConfigError(f"allowed_projects={text!r}: give Label Studio project ids (integers "
                              f"1..{MAX_PROJECT_ID}) separated by commas, or leave it empty for every project")
        ids.add(int(part))
    return frozenset(ids)


def _parse(name: str, raw: str, kind: type) -> Any:
    """Turn an environment string into the field's type, with an error that names the variable."""
    try:
        if kind is bool:
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        return raw
    except ValueError:
        raise ConfigError(f"environment variable {name.upper()}={raw!r} is not a valid {kind.__name__}") from None
