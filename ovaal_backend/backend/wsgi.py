"""Gunicorn around the Flask app (the counterpart of label-studio-ml's ``_wsgi.py``).

This module imports neither torch nor the app: gunicorn's parent process only supervises the worker, and importing
torch there would cost it about 400 MiB for nothing. The app (and torch) load in the worker, after the fork, which is
also where the per-project training threads must start.
"""

from __future__ import annotations

import logging

from ..config import Config, ConfigError

log = logging.getLogger(__name__)


def check_network_exposure(config: Config) -> None:
    """Refuse to serve every Label Studio project to anyone who reaches the port.

    A HOST outside 127.0.0.0/8, ::1 and ``localhost`` needs BASIC_AUTH_USER / BASIC_AUTH_PASS, or
    ALLOW_OPEN_NETWORK=true for a network where everyone is trusted. Torch-free: it runs before gunicorn starts.

    Raises:
        ConfigError: One line naming both fixes (``python -m ovaal_backend serve`` prints it and exits with 2).
    """
    if not config.serves_open_network:
        return
    if config.allow_open_network:
        log.warning("HOST=%s without basic auth (ALLOW_OPEN_NETWORK=true): anyone who reaches port %d can set up "
                    "projects, change labels, start trainings and read /metrics", config.host, config.port)
        return
    raise ConfigError(f"refusing to serve on HOST={config.host} without basic auth: anyone who reaches port "
                      f"{config.port} could set up projects, forge labels and start trainings; set BASIC_AUTH_USER "
                      "and BASIC_AUTH_PASS, or ALLOW_OPEN_NETWORK=true on a trusted network "
                      "(or HOST=127.0.0.1 for this machine only)")


def serve(config: Config) -> None:
    """Run the app under gunicorn: one worker process, ``server_threads`` threads, no request timeout.

    Raises:
        ConfigError: ``check_network_exposure`` refuses the address (before gunicorn starts).
    """
    check_network_exposure(config)
    from gunicorn.app.base import BaseApplication

    class _Application(BaseApplication):
        def load_config(self) -> None:
            options = {"bind": f"{config.host}:{config.port}", "workers": 1, "worker_class": "gthread",
                       "threads": config.server_threads, "timeout": 0, "graceful_timeout": 30,
                       "loglevel": config.log_level.lower(), "accesslog": "-" if config.log_level == "DEBUG" else None}
            if "control_socket_disable" in self.cfg.settings:  # gunicorn >= 27: no control socket in $HOME
                options["control_socket_disable"] = True
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self):
            from .app import create_app

            return create_app(config)

    log.info("serving on %s:%d (model dir %s)", config.host, config.port, config.model_dir)
    _Application().run()
