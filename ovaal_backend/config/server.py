"""The server's settings: what only the backend's web process and its project workers read."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .addresses import is_loopback_host, parse_host_names, parse_image_hosts, parse_project_ids
from .part import ConfigError, Part, explicit_field, records_given

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
"""Every ``LOG_LEVEL``."""


@records_given
@dataclass(frozen=True)
class ServerConfig(Part):
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

    explicit: frozenset[str] = explicit_field()

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
        parse_host_names(self.allowed_host_names)
        parse_image_hosts(self.allowed_image_hosts)
        parse_project_ids(self.allowed_projects)
        self._check_explicit()

    @property
    def allowed_project_ids(self) -> frozenset[int]:
        """The project ids of ALLOWED_PROJECTS (empty = every project is served)."""
        return parse_project_ids(self.allowed_projects)

    @property
    def image_hosts(self) -> frozenset[str]:
        """ALLOWED_IMAGE_HOSTS as lower-case ``host`` or ``host:port`` entries (IPv6 hosts in brackets)."""
        return parse_image_hosts(self.allowed_image_hosts)

    @property
    def host_names(self) -> frozenset[str]:
        """ALLOWED_HOST_NAMES as lower-case names."""
        return parse_host_names(self.allowed_host_names)

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
