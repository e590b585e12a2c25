"""Slow clients cannot stop the backend: the real ``python -m ovaal_backend serve`` on loopback.

More slowloris clients (one header line a second, never the end of the headers) and slow-body clients (one byte of
the body a second) than ``SERVER_THREADS=4``: while they hold their connections, ``/health`` and a Label Studio
webhook each answer within 1 s (on the old set-up, gunicorn's gthread worker alone, every thread sat in a slow
client's read and both timed out), and each slow client is cut off with a JSON 408 once REQUEST_HEADER_SECONDS or
REQUEST_BODY_SECONDS has passed. Basic auth, MAX_REQUEST_MB (413) and chunked bodies still work through the front.
No Label Studio is needed: the project is set up beforehand (slowloris.offline_backend), and Label Studio is not
what slow clients reach.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator

import pytest

from tests.helpers.ls_server import BackendProcess, loopback_session
from tests.helpers.slowloris import offline_backend, raw_exchange, start_slow_clients, timed_call, webhook

pytestmark = pytest.mark.slow  # a backend process (gunicorn and its front) for the module

N_HEADER, N_BODY = 16, 8
LIMIT_S = 4.0
"""REQUEST_HEADER_SECONDS and REQUEST_BODY_SECONDS of the backend under test."""
INTERVAL_S = 1.0
"""A slow client sends one piece per interval."""
ANSWER_S = 1.0
"""Label Studio waits 1 s for a webhook's answer."""


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[BackendProcess, int]]:
    """The backend (fault_kit's basic auth) with short request deadlines and MAX_REQUEST_MB=1, and its project's id."""
    backend, project_id = offline_backend(tmp_path_factory.mktemp("slow-clients"), REQUEST_HEADER_SECONDS=str(LIMIT_S),
                                          REQUEST_BODY_SECONDS=str(LIMIT_S), MAX_REQUEST_MB="1")
    backend.start()
    try:
        yield backend, project_id
    finally:
        backend.stop()


def test_slow_clients_hold_no_thread_and_are_cut_off(served):
    backend, project_id = served
    stop = threading.Event()
    try:
        port = int(backend.env["PORT"])
        clients = start_slow_clients(port, N_HEADER, N_BODY, INTERVAL_S, stop)
        time.sleep(1.5)  # each slow client has sent more than its first piece: on gthread each one holds a thread
        session = backend.session()
        answers = []
        for _ in range(3):
            answers.append(("/health",) + timed_call(session, "GET", f"{backend.url}/health", timeout=5))
            answers.append(("/webhook",) + timed_call(session, "POST", f"{backend.url}/webhook", timeout=5,
                                                      json=webhook(project_id)))
        assert [status for _, status, _ in answers] == [200, 201] * 3, answers
        assert max(seconds for _, _, seconds in answers) < ANSWER_S, answers
        assert all(client.is_alive() for client in clients), "a slow client was cut off before its deadline"
        for client in clients:
            client.join(LIMIT_S + 5)
        cuts = [(client.kind, client.cuts[0]) for client in clients if client.cuts]
        assert len(cuts) == len(clients), f"{len(clients) - len(cuts)} slow clients were never cut off"
        for kind, cut in cuts:
            assert cut.status_line.startswith(b"HTTP/1.1 408"), (kind, cut)
            assert LIMIT_S - 0.5 < cut.held < LIMIT_S + 2.0, (kind, cut)
    finally:
        stop.set()


def test_auth_and_size_limit_hold_through_the_front(served):
    backend, project_id = served
    anonymous = loopback_session()
    assert anonymous.get(f"{backend.url}/health", timeout=10).status_code == 200
    refused = anonymous.post(f"{backend.url}/webhook", json=webhook(project_id), timeout=10)
    assert refused.status_code == 401 and "basic auth" in refused.json()["error"]
    too_big = backend.session().post(f"{backend.url}/webhook", data=b"x" * (1024 * 1024 + 1), timeout=10)
    assert too_big.status_code == 413 and "MAX_REQUEST_MB=1" in too_big.json()["error"]
    chunked = backend.session().post(f"{backend.url}/webhook", data=iter([b'{"action": "ANNOTATION_CREATED", ',
                                                                          b'"project": {"id": %d}}' % project_id]),
                                     headers={"Content-Type": "application/json"}, timeout=10)
    assert chunked.status_code == 400 and "annotation" in chunked.json()["error"]  # decoded, checked by the app


def test_the_front_refuses_odd_heads_with_json_and_honours_expect(served):
    backend, project_id = served
    port = int(backend.env["PORT"])
    auth = "Authorization: Basic " + base64.b64encode(":".join(backend.auth).encode()).decode()
    body = json.dumps(webhook(project_id)).encode()
    head = (f"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n").encode()
    answer = raw_exchange(port, head + b"Expect: 100-continue\r\n\r\n" + body)
    assert answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201"), answer[:200]
    for bad, status in ((head + b"X-Smuggled: a\nContent-Length: 0\r\n\r\n" + body, b"400"),
                        (head + b"Content-Length: 3\r\n\r\n" + body, b"400"),
                        (b"GET /health HTTP/1.1\r\nX-Big: " + b"x" * 70_000 + b"\r\n\r\n", b"431"),
                        (b"NONSENSE\r\n\r\n", b"400")):
        answer = raw_exchange(port, bad)
        assert answer.startswith(b"HTTP/1.1 " + status), answer[:200]
        assert "error" in json.loads(answer.split(b"\r\n\r\n", 1)[1])
