"""Run a real, headless Label Studio on 127.0.0.1 for end-to-end tests.

Also ``BackendProcess``: our own backend as ``python -m ovaal_backend serve`` beside it, and ``wait_for`` (poll
until a condition holds). Shared by the end-to-end test and benchmarks/backend_bench.py.

Usage::

    with LabelStudioServer(ls_bin, document_root=tmp) as ls:
        client = ls.client()
        ...

The server gets its own temporary data directory (a fresh SQLite database), a user created from environment
variables, and a legacy API token chosen here, so tests can call the API without logging in.
See docs/label-studio-notes.md for what the real server does with the calls our backend makes.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_EMAIL = "ovaal-test@example.com"
DEFAULT_PASSWORD = "ovaal-test-password"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TEST_BACKEND = {  # every real-backend test: CPU, one torch thread, loopback, few server threads
    "DEVICE": "cpu", "NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "SERVER_THREADS": "4",
    "HOST": "127.0.0.1", "LOG_LEVEL": "INFO", "ENCODER_WEIGHTS": "none",
}


def backend_env(label_studio: Any, model_dir: str | os.PathLike, settings: dict[str, str],
                **extra: str) -> dict[str, str]:
    """The environment of a backend under test: this process's (proxies removed), TEST_BACKEND, the test's
    ``settings``, a free port, MODEL_DIR and the Label Studio to call; ``extra`` overrides all of it."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update(TEST_BACKEND, **settings)
    env.update(NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost", PORT=str(free_port()),
               MODEL_DIR=str(model_dir), LABEL_STUDIO_URL=label_studio.url, LABEL_STUDIO_API_KEY=label_studio.token,
               LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(label_studio.document_root))
    env.update(extra)
    return env


class LabelStudioError(RuntimeError):
    """Label Studio did not start or died; the message carries the end of its log."""


class LabelStudioServer:
    """A Label Studio process on a free loopback port, stopped (whole process group) on exit."""

    def __init__(self, ls_bin: str | os.PathLike, document_root: str | os.PathLike | None = None,
                 email: str = DEFAULT_EMAIL, password: str = DEFAULT_PASSWORD,
                 startup_timeout: float = 180.0, keep_data: bool = False,
                 extra_env: dict[str, str] | None = None) -> None:
        self.ls_bin = str(ls_bin)
        self.email = email
        self.password = password
        self.token = secrets.token_hex(20)  # 40 hex chars: the legacy token format
        self.startup_timeout = startup_timeout
        self.keep_data = keep_data
        self.extra_env = dict(extra_env or {})
        self._document_root = Path(document_root) if document_root is not None else None
        self.port: int | None = None
        self.data_dir: Path | None = None
        self.log_path: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.startup_seconds: float | None = None
        self._log_file = None

    # --- public API ---
    @property
    def url(self) -> str:
        if self.port is None:
            raise LabelStudioError("Label Studio is not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def document_root(self) -> Path:
        if self._document_root is None:
            raise LabelStudioError("Label Studio is not started")
        return self._document_root

    def client(self):
        """An SDK client (label_studio_sdk.client.LabelStudio) logged in with the legacy token."""
        from label_studio_sdk.client import LabelStudio
        return LabelStudio(base_url=self.url, api_key=self.token)

    def headers(self) -> dict[str, str]:
        """Headers for plain HTTP calls to the API (legacy token scheme)."""
        return {"Authorization": f"Token {self.token}"}

    def local_files_url(self, path: str | os.PathLike) -> str:
        """The `/data/local-files/?d=...` URL of a file under the document root (for task data)."""
        rel = Path(path).resolve().relative_to(self.document_root.resolve())
        return f"/data/local-files/?d={rel.as_posix()}"

    def log_tail(self, n_chars: int = 4000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace")
        return text[-n_chars:]

    def env(self) -> dict[str, str]:
        """The environment Label Studio runs with (see /work/shared/docs/label-studio.md)."""
        env = dict(os.environ)
        # Never let a proxy setting route loopback traffic elsewhere.
        for key in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
            env.pop(key, None)
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
        env.update({
            "LABEL_STUDIO_BASE_DATA_DIR": str(self.data_dir),
            "LABEL_STUDIO_USERNAME": self.email,
            "LABEL_STUDIO_PASSWORD": self.password,
            "LABEL_STUDIO_USER_TOKEN": self.token,
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
            "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(self.document_root),
            "LABEL_STUDIO_ML_BLOCK_LOCAL_IP": "false",
            "LABEL_STUDIO_SSRF_PROTECTION_ENABLED": "false",
            "SSRF_PROTECTION_ENABLED": "false",
            "ML_BLOCK_LOCAL_IP": "false",
            "COLLECT_ANALYTICS": "false",
            "LATEST_VERSION_CHECK": "false",
        })
        env.pop("LABEL_STUDIO_HOST", None)  # a stray host setting would make LS build wrong absolute URLs
        env.update(self.extra_env)
        return env

    def start(self) -> LabelStudioServer:
        if self.proc is not None:
            return self
        if not (os.path.isfile(self.ls_bin) and os.access(self.ls_bin, os.X_OK)):
            raise LabelStudioError(f"not an executable: {self.ls_bin}")
        self.data_dir = Path(tempfile.mkdtemp(prefix="ovaal-ls-"))
        if self._document_root is None:
            self._document_root = self.data_dir / "files"
        self._document_root.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir / "label-studio.log"
        self.port = free_port()
        self._log_file = open(self.log_path, "wb")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [self.ls_bin, "start", "--no-browser", "--internal-host", "127.0.0.1", "-p", str(self.port)],
            env=self.env(), cwd=str(self.data_dir), stdout=self._log_file, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            self._wait_healthy(t0)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            self._signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=10)
        if proc is not None:
            # Children (e.g. uwsgi/gunicorn workers) can outlive the leader: clean the group up too.
            self._signal_group(proc, signal.SIGKILL)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if not self.keep_data and self.data_dir is not None:
            # Only our own temp dir goes; a caller's document root outside it is left alone.
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> LabelStudioServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- internals ---
    @staticmethod
    def _signal_group(proc: subprocess.Popen, sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)  # start_new_session=True: the group id is the leader's pid
        except (ProcessLookupError, PermissionError):
            pass

    def _wait_healthy(self, t0: float) -> None:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = t0 + self.startup_timeout
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LabelStudioError(f"Label Studio exited with code {self.proc.returncode} during start-up; "
                                       f"log tail:\n{self.log_tail()}")
            try:
                with opener.open(f"{self.url}/health", timeout=5) as resp:
                    if resp.status == 200:
                        return
                    last_error = f"HTTP {resp.status}"
            except urllib.error.HTTPError as e:
                last_error = f"HTTP {e.code}"
            except (urllib.error.URLError, OSError) as e:
                last_error = str(e)
            time.sleep(1.0)
        raise LabelStudioError(f"Label Studio did not answer GET /health with 200 within {self.startup_timeout:.0f} s "
                               f"(last: {last_error}); log tail:\n{self.log_tail()}")


def loopback_session() -> requests.Session:
    """A requests session for 127.0.0.1 only: proxy variables in the environment are ignored."""
    session = requests.Session()
    session.trust_env = False
    return session


class BackendError(RuntimeError):
    """The backend did not start or died; the message carries the end of its log."""


class BackendProcess:
    """``python -m ovaal_backend serve`` in its own process group on 127.0.0.1, logging to a file.

    Shared by the end-to-end test and benchmarks/backend_bench.py; ``env`` must set PORT (and HOST=127.0.0.1).
    ``preexec_fn`` runs in the child before ``exec`` (e.g. a file-size limit that makes the disk look full).
    ``argv`` replaces ``python -m ovaal_backend serve`` (benchmarks/slow_clients.py compares other servers).
    """

    def __init__(self, env: dict[str, str], log_path: str | os.PathLike, startup_timeout: float = 120.0,
                 preexec_fn: Callable[[], None] | None = None, argv: list[str] | None = None) -> None:
        self.env = env
        self.preexec_fn = preexec_fn
        self.argv = argv or [sys.executable, "-m", "ovaal_backend", "serve"]
        self.log_path = Path(log_path)
        self.startup_timeout = startup_timeout
        self.url = f"http://127.0.0.1:{env['PORT']}"
        user, password = env.get("BASIC_AUTH_USER", ""), env.get("BASIC_AUTH_PASS", "")
        self.auth = (user, password) if user else None  # the basic-auth pair the backend was started with
        self.proc: subprocess.Popen | None = None

    def start(self) -> float:
        """Start the server and wait for GET /health; returns the seconds that took."""
        t0 = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, cwd=REPO_ROOT,
                                         env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         preexec_fn=self.preexec_fn)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while time.monotonic() - t0 < self.startup_timeout:
            if self.proc.poll() is not None:
                raise BackendError(f"backend exited with {self.proc.returncode}; log tail:\n{self.log_tail()}")
            try:
                with opener.open(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return time.monotonic() - t0
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        self.stop()
        raise BackendError(f"backend did not answer /health in {self.startup_timeout:.0f} s; "
                           f"log tail:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM the process group (gunicorn's parent and worker), SIGKILL after 30 s."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    def log_tail(self, n_chars: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-n_chars:] if self.log_path.exists() else ""

    def session(self) -> requests.Session:
        """A loopback session that sends the backend's basic-auth pair (if any) with every call."""
        session = loopback_session()
        session.auth = self.auth
        return session

    def metrics(self, project_id: int, session: requests.Session | None = None) -> dict[str, Any]:
        """``/metrics`` of one project (phase, round, model_version, trainings, ...; {} before its /setup)."""
        response = (session or self.session()).get(f"{self.url}/metrics", timeout=30)
        response.raise_for_status()
        return response.json()["projects"].get(str(project_id), {})


class HasLogTail(Protocol):
    """What ``wait_for`` quotes when it gives up: a ``BackendProcess`` or the queue workers (queue_kit.Workers)."""

    def log_tail(self) -> str: ...


def wait_for(what: str, check: Callable[[], Any], timeout: float, logs: HasLogTail | None = None,
             interval: float = 0.5) -> Any:
    """Call ``check`` every ``interval`` s until it returns something truthy, and return that.

    The one polling helper of the tests and benchmarks (a backend, Label Studio, queue workers alike).

    Raises:
        TimeoutError: ``timeout`` s passed; the message carries the log tail of ``logs`` when given.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            tail = logs.log_tail() if logs is not None else ""
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}\n--- log ---\n{tail}")
        time.sleep(interval)
