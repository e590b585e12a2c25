"""Gunicorn around the Flask app (the counterpart of label-studio-ml's ``_wsgi.py``).

This module imports neither torch nor the app: gunicorn's parent process only supervises the worker, and importing
torch there would cost it about 400 MiB for nothing. The app (and torch) load in the worker, after the fork, which is
also where the per-project training threads must start.
"""

from __future__ import annotations

import logging

from ..config import Config

log = logging.getLogger(__name__)


def serve(config: Config) -> None:
    """Run the app under gunicorn: one worker process, ``server_threads`` threads, no request timeout."""
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
