"""The buffering front of ``serve``: whole requests, read under deadlines, before a gunicorn thread sees them.

Why: gunicorn's gthread worker gives a connection to one of its SERVER_THREADS threads as soon as bytes arrive, and
that thread then reads the rest of the request blocking. Sixteen clients sending one header line every 2 s held every
thread, and /health, /metrics and Label Studio's webhooks (sent once, never retried) timed out for as long as they
lasted. This asyncio server holds any number of slow connections at the cost of a few KiB each: it reads the request
line and headers within REQUEST_HEADER_SECONDS and the body within REQUEST_BODY_SECONDS (408 with a JSON reason
otherwise), refuses a body over MAX_REQUEST_MB with 413 before reading it, and only then hands the complete request to
gunicorn over a unix socket in a private folder (mode 0700: other local users cannot bypass basic auth through it).
The answer is read whole from gunicorn and written back under REQUEST_BODY_SECONDS, so a client that reads slowly
holds no thread either. One request per client connection (``Connection: close``): Label Studio opens a connection
per call anyway.

Chosen by measurement (benchmarks/slow_clients.py, docs/benchmarks.md "Slow clients"): gthread alone failed every
call; uvicorn's worker and gunicorn's asgi worker (around asgiref's WsgiToAsgi) answered but never timed out a slow
head or body, and WsgiToAsgi runs every request on one thread (a /predict would hold the webhooks); gevent's worker
let webhooks take up to 2 s and would turn the training threads into greenlets. This front needs no dependency and
keeps gthread's threads, which MAX_PREDICT_CALLS counts on.

Torch-free like gunicorn's parent (wsgi.py): it imports nothing of the app.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import socket
from dataclasses import dataclass

log = logging.getLogger(__name__)

HEAD_LIMIT = 64 * 1024
"""Largest request line plus headers, in bytes (431 above); gunicorn's own limits are stricter per line."""
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te", b"trailer",
                        b"upgrade", b"expect", b"content-length"})
"""Headers about this connection, not the request: dropped, and the request re-framed with Content-Length."""
TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
"""An HTTP header name (RFC 9110 token)."""
STRAY = re.compile(rb"\r(?!\n)|(?<!\r)\n|\x00")
"""A CR or LF outside a CRLF, or a NUL: refused, so that gunicorn cannot read the head differently."""
LINGER_SECONDS = 2.0
"""How long a refused request's remaining bytes are read and dropped, so that its client sees the answer rather than
a reset connection."""
REASONS = {400: "Bad Request", 408: "Request Timeout", 413: "Content Too Large",
           431: "Request Header Fields Too Large", 502: "Bad Gateway", 503: "Service Unavailable"}


class Refused(Exception):
    """A request answered here with ``status`` and a JSON ``{"error": reason}``, never forwarded."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Limits:
    """What the front allows one request (from Config)."""

    header_seconds: float
    body_seconds: float
    max_body: int
    max_request_mb: float


@dataclass(frozen=True)
class Head:
    """A parsed request head: the request line as sent, the end-to-end headers, and how the body is framed."""

    line: bytes
    headers: list[tuple[bytes, bytes]]
    length: int
    chunked: bool
    expects_continue: bool


def error_response(status: int, reason: str) -> bytes:
    """A complete HTTP/1.1 answer with a JSON ``{"error": reason}`` body, closing the connection."""
    body = json.dumps({"error": reason}).encode()
    extra = "Retry-After: 1\r\n" if status == 503 else ""
    head = (f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
            f"\r\n{extra}Connection: close\r\n\r\n")
    return head.encode("latin-1") + body


def parse_head(raw: bytes, limits: Limits) -> Head:
    """The request line and headers of ``raw`` (ending with an empty line).

    Raises:
        Refused: 400 for a malformed line, header or length; 413 for a Content-Length over MAX_REQUEST_MB.
    """
    if STRAY.search(raw[:-4]):
        raise Refused(400, "stray CR, LF or NUL in the request head")
    lines = raw[:-4].split(b"\r\n")
    line = lines[0]
    if len(line.split(b" ")) != 3 or not line.split(b" ")[2].startswith(b"HTTP/1."):
        raise Refused(400, "malformed request line: send 'METHOD /path HTTP/1.1'")
    headers: list[tuple[bytes, bytes]] = []
    lengths: set[bytes] = set()
    chunked = expects_continue = False
    for item in lines[1:]:
        name, colon, value = item.partition(b":")
        if not colon or not TOKEN.fullmatch(name):
            raise Refused(400, "malformed header line")
        key, value = name.lower(), value.strip(b" \t")
        if key == b"content-length":
            lengths.add(value)
        elif key == b"transfer-encoding":
            chunked = value.lower() == b"chunked"
            if not chunked:
                raise Refused(400, "Transfer-Encoding other than chunked is not supported")
        elif key == b"expect":
            expects_continue = value.lower() == b"100-continue"
        if key not in HOP_BY_HOP:
            headers.append((name, value))
    length = 0
    if not chunked and lengths:
        if len(lengths) > 1 or not re.fullmatch(rb"[0-9]{1,18}", next(iter(lengths))):
            raise Refused(400, "Content-Length must be one decimal number")
        length = int(next(iter(lengths)))
    if length > limits.max_body:
        raise Refused(413, f"request body larger than MAX_REQUEST_MB={limits.max_request_mb:g} MiB")
    return Head(line, headers, length, chunked, expects_continue)


async def read_chunked(reader: asyncio.StreamReader, limits: Limits) -> bytes:
    """A chunked body, decoded (trailers dropped).

    Raises:
        Refused: 400 for a malformed chunk size, 413 past MAX_REQUEST_MB.
    """
    parts: list[bytes] = []
    size = 0
    while True:
        field = (await reader.readuntil(b"\r\n")).split(b";")[0].strip()
        if not re.fullmatch(rb"[0-9A-Fa-f]{1,15}", field):
            raise Refused(400, "malformed chunk size in a chunked body")
        chunk = int(field, 16)
        if chunk == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailer fields, then the empty line
                pass
            return b"".join(parts)
        size += chunk
        if size > limits.max_body:
            raise Refused(413, f"request body larger than MAX_REQUEST_MB={limits.max_request_mb:g} MiB")
        parts.append(await reader.readexactly(chunk))
        if await reader.readexactly(2) != b"\r\n":
            raise Refused(400, "malformed chunk in a chunked body")


async def read_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limits: Limits) -> bytes | None:
    """The whole request re-framed for gunicorn, or None when the client closed before sending one.

    Raises:
        Refused: 408 (head or body not complete in time), 400, 413 or 431.
    """
    try:
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), limits.header_seconds)
    except asyncio.TimeoutError:
        raise Refused(408, f"request headers not complete within REQUEST_HEADER_SECONDS={limits.header_seconds:g} "
                           "s") from None
    except asyncio.LimitOverrunError:
        raise Refused(431, f"request line and headers larger than {HEAD_LIMIT // 1024} KiB") from None
    except asyncio.IncompleteReadError as err:
        if err.partial.strip():
            raise Refused(400, "connection closed in the middle of the request headers") from None
        return None
    head = parse_head(raw, limits)
    if head.expects_continue and (head.chunked or head.length):
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    try:
        body = await asyncio.wait_for(read_chunked(reader, limits) if head.chunked else reader.readexactly(head.length),
                                      limits.body_seconds)
    except asyncio.TimeoutError:
        raise Refused(408, f"request body not complete within REQUEST_BODY_SECONDS={limits.body_seconds:g} "
                           "s") from None
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        raise Refused(400, "connection closed in the middle of the request body") from None
    fields = b"".join(name + b": " + value + b"\r\n" for name, value in head.headers)
    return (head.line + b"\r\n" + fields + b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close"
            b"\r\n\r\n" + body)


async def forward(upstream: str, request: bytes) -> bytes:
    """gunicorn's whole answer to a complete request (gunicorn closes the connection after it).

    Raises:
        Refused: 503 while gunicorn's socket is not there (starting or restarting), 502 for an empty answer.
    """
    try:
        reader, writer = await asyncio.open_unix_connection(upstream)
    except OSError:
        raise Refused(503, "the backend is starting or restarting; try again in a second") from None
    try:
        writer.write(request)
        await writer.drain()
        answer = await reader.read()
    finally:
        writer.close()
    if not answer:
        raise Refused(502, "the backend's worker closed the connection without an answer; see its log")
    return answer


class Front:
    """The asyncio server on HOST:PORT that buffers requests for gunicorn on the unix socket ``upstream``."""

    def __init__(self, listeners: list[socket.socket], upstream: str, limits: Limits) -> None:
        self.listeners = listeners
        self.upstream = upstream
        self.limits = limits
        self._tasks: set[asyncio.Task] = set()  # asyncio holds a client's task only while its connection lives

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection, one request: read it whole, forward it, write the answer back, close.

        The task stays referenced until it ends, so a request whose client hung up still gets to gunicorn's answer.
        """
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            try:
                request = await read_request(reader, writer, self.limits)
                if request is None:
                    return
                answer = await forward(self.upstream, request)
            except Refused as refused:
                log.info("%s: %d %s", _peer(writer), refused.status, refused.reason)
                await self._refuse(reader, writer, refused)
                return
            writer.write(answer)
            await asyncio.wait_for(writer.drain(), self.limits.body_seconds)
        except (OSError, asyncio.TimeoutError):
            pass  # the client went away or did not read its answer in time: nothing left to tell it
        finally:
            await _close(writer)

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, refused: Refused) -> None:
        """Send the JSON refusal, then drop what the client still sends for a moment so it can read the answer."""
        writer.write(error_response(refused.status, refused.reason))
        try:
            await asyncio.wait_for(_send_and_drop_the_rest(reader, writer), LINGER_SECONDS)
        except (OSError, asyncio.TimeoutError):
            pass

    async def run(self, gunicorn_pid: int) -> int:
        """Serve until SIGTERM/SIGINT (passed on to gunicorn) or gunicorn's exit; returns gunicorn's exit status."""
        servers = [await asyncio.start_server(self.handle, sock=sock, limit=HEAD_LIMIT) for sock in self.listeners]
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _stop, gunicorn_pid, sig, stopping)
        while (status := _exit_status(gunicorn_pid)) is None:
            if stopping.is_set() and servers:
                for server in servers:
                    server.close()
                servers = []
            await asyncio.sleep(0.2)
        if not stopping.is_set():
            log.error("gunicorn exited with status %d: stopping", status)
        return status


async def _send_and_drop_the_rest(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()
    while await reader.read(65536):
        pass


async def _close(writer: asyncio.StreamWriter) -> None:
    """Close after what is still buffered has gone out, or drop it when the client takes nothing for a moment."""
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), LINGER_SECONDS)
    except (OSError, asyncio.TimeoutError):
        writer.transport.abort()


def _stop(gunicorn_pid: int, sig: int, stopping: asyncio.Event) -> None:
    """Stop accepting and pass the signal on: gunicorn finishes its requests (graceful_timeout), then exits."""
    if not stopping.is_set():
        log.info("%s: stopping (gunicorn finishes the requests it has)", signal.Signals(sig).name)
        stopping.set()
        try:
            os.kill(gunicorn_pid, sig)
        except ProcessLookupError:
            pass


def _exit_status(pid: int) -> int | None:
    """The child's exit status once it has exited, else None (reaps it)."""
    done, status = os.waitpid(pid, os.WNOHANG)
    return os.waitstatus_to_exitcode(status) if done else None


def _peer(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "client"


def listen(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for every address of HOST (bound before gunicorn starts, so a taken port fails first)."""
    addresses = {info[4][:2]: info[0] for info in socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                                      flags=socket.AI_PASSIVE)}
    return [socket.create_server(address, family=family, backlog=1024) for address, family in addresses.items()]
