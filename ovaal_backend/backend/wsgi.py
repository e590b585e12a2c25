"""Gunicorn around the Flask app (the counterpart of label-studio-ml's ``_wsgi.py``), behind a buffering front.

``serve`` binds HOST:PORT, forks gunicorn (one gthread worker, SERVER_THREADS threads) onto a unix socket in a private
folder, and runs the asyncio front (front.py) on HOST:PORT in its own process: a gunicorn thread only ever gets a
request that is already complete, so slow clients cannot hold the threads that answer Label Studio's webhooks.

This module imports neither torch nor the app: the front and gunicorn's parent process only supervise the worker, and
importing torch there would cost each about 400 MiB for nothing. The app (and torch) load in the worker, after the
fork, which is also where the per-project training threads must start.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import shutil
import signal
import sys
import tempfile

from ..config import Config, ConfigError
from .front import Front, Limits, listen

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
    """Run the app under gunicorn behind the buffering front until SIGTERM/SIGINT.

    gunicorn: one worker process, ``server_threads`` threads, no request timeout, on a unix socket only the front
    reaches. The front (this process) reads each request whole under REQUEST_HEADER_SECONDS/REQUEST_BODY_SECONDS.

    Raises:
        ConfigError: ``check_network_exposure`` refuses the address (before anything starts).
        OSError: HOST:PORT cannot be bound (before gunicorn starts).
        SystemExit: gunicorn ended with a non-zero status (e.g. its worker failed to boot).
    """
    check_network_exposure(config)
    listeners = listen(config.host, config.port)
    private = tempfile.mkdtemp(prefix="ovaal-serve-")  # mode 0700: only this user can reach gunicorn's socket
    upstream = os.path.join(private, "gunicorn.sock")
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        for sock in listeners:
            sock.close()
        os._exit(_run_gunicorn(config, upstream, parent))
    limits = Limits(header_seconds=config.request_header_seconds, body_seconds=config.request_body_seconds,
                    max_body=int(config.max_request_mb * 1024 * 1024), max_request_mb=config.max_request_mb)
    log.info("serving on %s:%d (model dir %s): buffering front, gunicorn with %d threads on %s", config.host,
             config.port, config.model_dir, config.server_threads, upstream)
    try:
        status = asyncio.run(Front(listeners, upstream, limits).run(pid))
    finally:
        shutil.rmtree(private, ignore_errors=True)
    if status:
        raise SystemExit(status)


def _run_gunicorn(config: Config, upstream: str, parent: int) -> int:
    """gunicorn's arbiter in the forked child, ended with its parent (the front); returns the exit status."""
    _end_with_parent(parent)
    from gunicorn.app.base import BaseApplication

    class _Application(BaseApplication):
        def load_config(self) -> None:
            options = {"bind": f"unix:{upstream}", "workers": 1, "worker_class": "gthread",
                       "threads": config.server_threads, "timeout": 0, "graceful_timeout": 30,
                       "loglevel": config.log_level.lower(), "accesslog": "-" if config.log_level == "DEBUG" else None}
            if "control_socket_disable" in self.cfg.settings:  # gunicorn >= 27: no control socket in $HOME
                options["control_socket_disable"] = True
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self):
            from .app import create_app

            return create_app(config)

    try:
        _Application().run()
    except SystemExit as done:  # gunicorn's arbiter ends with sys.exit
        return done.code if isinstance(done.code, int) else 1
    except Exception:
        log.exception("gunicorn failed")
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return 0


def _end_with_parent(parent: int) -> None:
    """SIGTERM this process when the front dies, however it dies (Linux), so no gunicorn outlives it."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        log.warning("no PR_SET_PDEATHSIG here: gunicorn would outlive a killed front")
    if os.getppid() != parent:  # the front died before the line above
        os._exit(1)
