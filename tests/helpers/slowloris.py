"""Slow clients and latency probes for tests/test_slow_clients.py and benchmarks/slow_clients.py.

A ``SlowClient`` opens a connection to the backend and sends its request a piece at a time: ``header`` clients one
header line per interval and never the empty line that ends the headers (slowloris), ``body`` clients complete
headers announcing a body and then one byte of it per interval. Each records how long the server let it hold its
connection and the status line the server answered with before cutting it off.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import requests

from tests.helpers.fault_kit import backend_env
from tests.helpers.ls_server import BackendProcess, free_port

SLOW_BODY_BYTES = 100_000
"""What a ``body`` client announces in Content-Length (it never gets there)."""


def offline_backend(folder: Path, argv: list[str] | None = None, **settings: str) -> tuple[BackendProcess, int]:
    """A backend (``argv``: another server around the same app) on loopback, not started, whose MODEL_DIR already
    holds a set-up project, and that project's id. No Label Studio runs: the project was set up through the app and
    the in-memory Label Studio of tests/test_server.py, LABEL_STUDIO_URL points at a closed port, and the project's
    worker retries it in the background. ``settings`` override fault_kit's (basic auth, a tiny model)."""
    from tests.helpers.fake_label_studio import P, make_fake_project
    from tests.test_server import make_app, setup_project

    app, backend = make_app(folder, make_fake_project()[0])
    try:
        setup_project(app.test_client())
    finally:
        backend.shutdown(timeout=30)
    no_label_studio = SimpleNamespace(url=f"http://127.0.0.1:{free_port()}", token="0" * 40, document_root=folder)
    return BackendProcess(backend_env(no_label_studio, folder / "models", **settings), folder / "backend.log",
                          argv=argv), P


def webhook(project_id: int) -> dict[str, Any]:
    """An ANNOTATION_CREATED payload in Label Studio's shape, which the backend stores (201) for a set-up project
    (the task is none of its query tasks, so its worker then leaves it aside)."""
    return {"action": "ANNOTATION_CREATED", "project": {"id": project_id},
            "annotation": {"id": 2**31, "task": 2**31, "result": []}, "task": {"id": 2**31, "data": {}}}


@dataclass
class Cut:
    """How a slow client's connection ended: after ``held`` seconds, with ``status_line`` (b"" = no answer)."""

    held: float
    status_line: bytes


class SlowClient(threading.Thread):
    """One slow connection at a time to 127.0.0.1:``port`` until ``stop`` is set; ``reconnect`` opens the next one
    when the server cut the last (an attacker's way), else the thread ends with the first cut."""

    def __init__(self, port: int, kind: str, interval: float, stop: threading.Event, reconnect: bool = False) -> None:
        super().__init__(daemon=True)
        assert kind in ("header", "body")
        self.port, self.kind, self.interval, self.stop, self.reconnect = port, kind, interval, stop, reconnect
        self.cuts: list[Cut] = []
        self.connected = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                cut = self._one_connection()
            except OSError:
                cut = Cut(0.0, b"")  # refused or reset at once
                time.sleep(self.interval)
            if cut is not None:
                self.cuts.append(cut)
            if not self.reconnect:
                return

    def _one_connection(self) -> Cut | None:
        """Hold one connection until the server ends it (its Cut) or ``stop`` is set (None)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            t0 = time.monotonic()
            if self.kind == "header":
                sock.sendall(b"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            else:
                sock.sendall(b"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n{" % SLOW_BODY_BYTES)
            self.connected.set()
            i = 0
            while not self.stop.is_set():
                readable, _, _ = select.select([sock], [], [], self.interval)
                if readable:  # an answer (a 408) or the server closed the connection
                    return Cut(time.monotonic() - t0, _status_line(sock))
                i += 1
                try:
                    sock.sendall(b"X-Slow-%d: x\r\n" % i if self.kind == "header" else b" ")
                except OSError:
                    return Cut(time.monotonic() - t0, b"")
            return None


def _status_line(sock: socket.socket) -> bytes:
    try:
        return sock.recv(4096).split(b"\r\n", 1)[0]
    except OSError:
        return b""


def start_slow_clients(port: int, n_header: int, n_body: int, interval: float, stop: threading.Event,
                       reconnect: bool = False) -> list[SlowClient]:
    """``n_header`` slowloris and ``n_body`` slow-body clients, started and connected."""
    clients = [SlowClient(port, kind, interval, stop, reconnect)
               for kind, n in (("header", n_header), ("body", n_body)) for _ in range(n)]
    for client in clients:
        client.start()
    for client in clients:
        client.connected.wait(10)
    return clients


def raw_exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data`` on a fresh connection to 127.0.0.1:``port`` and return everything the server answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def timed_call(session: requests.Session, method: str, url: str, timeout: float,
               json: Any = None) -> tuple[int, float]:
    """(status, seconds) of one call on a fresh connection; status 0 when it failed or timed out."""
    t0 = time.monotonic()
    try:
        status = session.request(method, url, json=json, timeout=timeout, headers={"Connection": "close"}).status_code
    except requests.RequestException:
        status = 0
    return status, time.monotonic() - t0
