"""A loopback HTTP server that serves a body one byte per ``interval`` seconds: the slow-drip image host.

Shared by tests/test_download_limit.py (the client alone) and tests/test_source_faults.py (a real backend and Label
Studio); imported as ``tests.helpers.drip_server``. A real socket and a real thread:
the client under test reads from the kernel exactly as it would from a slow host on the network.

``GET /drip`` sends a Content-Length header and then the body byte by byte; ``GET /drip-unsized`` sends no length
(the body ends when the connection closes); ``GET /fast`` sends the body at once.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class DripServer:
    """``with DripServer(body) as server: server.url("/drip")``; stops its thread and sockets on exit."""

    def __init__(self, body: bytes, interval: float = 1.0) -> None:
        self.body = body
        self.interval = interval
        self.stop_event = threading.Event()
        self.hits: list[str] = []  # paths requested, in order
        self.sent = 0  # body bytes written by the dripping routes
        self.hung_up = threading.Event()  # a client closed its connection before the body ended
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, as ALLOWED_IMAGE_HOSTS names it."""
        return f"127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return f"http://{self.host}{path}"

    def __enter__(self) -> DripServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()  # a dripping handler stops at its next byte
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                server.hits.append(self.path)
                path = self.path.split("?")[0]
                if path not in ("/drip", "/drip-unsized", "/fast"):
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                if path != "/drip-unsized":
                    self.send_header("Content-Length", str(len(server.body)))
                self.send_header("Connection", "close")
                self.end_headers()
                if path == "/fast":
                    self.wfile.write(server.body)
                    return
                try:
                    for i in range(len(server.body)):
                        if server.stop_event.wait(server.interval if i else 0.0):
                            return
                        self.wfile.write(server.body[i:i + 1])
                        self.wfile.flush()
                        server.sent += 1
                except OSError:
                    server.hung_up.set()  # the client hung up: what a cut-off download does

        return Handler
