"""The backend's connection to Label Studio: is it reachable with LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY, what was
the last error, when did the last call succeed; and the cause of a failure in words an admin can act on.

Why: a wrong URL or key used to look like success (``/setup`` answered 200, Label Studio showed "Connected") while
every call of the backend failed and the error was only in its log. ``LabelStudioClient`` records each call's outcome
here; ``/metrics`` and the dashboard show it; ``/setup`` checks the link (``SetupCheck``) and answers an error whose
HTTP reason phrase carries the cause, because Label Studio 1.23.2 shows only ``str(HTTPError)`` (status, reason
phrase, URL) of a failed ``/setup`` in its Connect dialog and never the body (label_studio/ml/api_connector.py).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any
from urllib.parse import urlparse

import requests

from ..config import is_loopback_host

log = logging.getLogger(__name__)

SETUP_RECHECK_SECONDS = 60.0
"""``/setup`` (Label Studio calls it before every batch of predictions) asks Label Studio again only when no call
succeeded for this long, or the last one failed: a working link costs no extra call."""
AUTH_STATUSES = (401, 403)
"""Answers that mean LABEL_STUDIO_API_KEY is not accepted."""
_RESOLVE_FAILURES = ("Name or service not known", "nodename nor servname", "Temporary failure in name resolution",
                     "No address associated with hostname", "getaddrinfo failed", "Failed to resolve")


class LinkStatus:
    """What the calls to one Label Studio found, thread-safe: the last success, the last failure and its cause."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.Lock()
        self.last_ok: float | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None

    def ok(self) -> None:
        """A call was answered as expected."""
        with self._lock:
            self.last_ok = time.time()

    def failed(self, cause: str) -> None:
        """A call could not reach Label Studio, or its key was refused."""
        with self._lock:
            self.last_error, self.last_error_at = cause, time.time()

    @property
    def reachable(self) -> bool | None:
        """True when the newest outcome is a success, False when it is a failure, None before any call."""
        with self._lock:
            if self.last_error_at is None:
                return None if self.last_ok is None else True
            return self.last_ok is not None and self.last_ok > self.last_error_at

    def fresh(self, now: float | None = None) -> bool:
        """Whether the link is known to work: the newest outcome a success within SETUP_RECHECK_SECONDS."""
        now = time.time() if now is None else now
        return bool(self.reachable) and self.last_ok is not None and now - self.last_ok < SETUP_RECHECK_SECONDS

    def status(self) -> dict[str, Any]:
        """For /metrics and the dashboard: ``url``, ``reachable``, ``last_ok``, ``last_error``, ``last_error_at``."""
        reachable = self.reachable
        with self._lock:
            return {"url": self.url, "reachable": reachable, "last_ok": self.last_ok,
                    "last_error": self.last_error, "last_error_at": self.last_error_at}


def unreachable_cause(err: requests.RequestException, url: str) -> str:
    """Why ``url`` (LABEL_STUDIO_URL) could not be reached, and what to change: unknown host, connection refused
    (``localhost`` inside a container is the container itself), no answer in time, TLS."""
    parsed = urlparse(url)
    host, port = parsed.hostname or "", parsed.port or (443 if parsed.scheme == "https" else 80)
    text = str(err)
    if isinstance(err, requests.exceptions.SSLError):
        return f"TLS with {url} failed ({_clip(text)}): check LABEL_STUDIO_URL's scheme (http or https) and port"
    if isinstance(err, requests.exceptions.ConnectTimeout):
        return (f"no connection to {host}:{port} within the timeout (a firewall, or an address this machine cannot "
                "route to): set LABEL_STUDIO_URL to an address of Label Studio that this machine reaches")
    if isinstance(err, requests.Timeout):
        return f"Label Studio at {url} did not answer in time (LABEL_STUDIO_TIMEOUT): is it overloaded?"
    if any(marker in text for marker in _RESOLVE_FAILURES):
        return (f"unknown host {host!r} (no DNS name resolves): set LABEL_STUDIO_URL to a name or address of Label "
                "Studio that this machine resolves")
    if "Connection refused" in text or "Errno 111" in text:
        hint = (" (inside a container `localhost` is the container itself: use the Label Studio host's name or "
                "address)") if is_loopback_host(host) else ""
        return (f"connection refused at {host}:{port}: nothing listens there{hint}; set LABEL_STUDIO_URL to the "
                "address and port Label Studio serves on")
    return f"cannot reach {url}: {_clip(text)} (check LABEL_STUDIO_URL)"


def rejected_cause(status: int, url: str) -> str:
    """What a 401 or 403 of Label Studio means for the backend's settings."""
    if status == 401:
        return (f"Label Studio at {url} answered 401 to LABEL_STUDIO_API_KEY: the key is wrong, revoked or of "
                "another Label Studio; copy a token from Label Studio's Account & Settings (legacy token or personal "
                "access token) into LABEL_STUDIO_API_KEY")
    return (f"Label Studio at {url} answered {status}: the user of LABEL_STUDIO_API_KEY may not do this (is it a "
            "member of the project's organization?)")


def missing_project_cause(project_id: int, url: str) -> str:
    """What a 404 for the project being connected means."""
    return (f"Label Studio at {url} has no project {project_id} that the user of LABEL_STUDIO_API_KEY can see: "
            "LABEL_STUDIO_URL points to another Label Studio, or the key belongs to a user outside the project's "
            "organization")


class SetupCheck:
    """``/setup``'s look at the link: ask Label Studio for the project being connected, waiting at most
    ``wait_seconds``, and name a definite failure (unreachable, key refused, project missing).

    The request runs in a thread of its own: Label Studio waits only 3 s for ``/setup`` (ML_TIMEOUT_SETUP) and is
    blocked in that wait, so a call back into a Label Studio that serves one request at a time would hang until its
    timeout. The thread goes on after the wait; its outcome still lands in ``LinkStatus``. One check at a time.

    Args:
        get_project: The client's ``get_project`` (any exception it raises is classified by ``failure``).
        link: The status the client records into.
        wait_seconds: SETUP_CHECK_SECONDS.
    """

    def __init__(self, get_project: Any, link: LinkStatus, wait_seconds: float) -> None:
        self.get_project = get_project
        self.link = link
        self.wait_seconds = wait_seconds
        self._lock = threading.Lock()
        self._running: threading.Thread | None = None
        self._started = 0.0  # monotonic start of the running check
        self._outcome: dict[int, str | None] = {}

    def problem(self, project_id: int) -> str | None:
        """The cause that makes the backend unable to work with Label Studio for this project, or None (fine, or
        Label Studio did not answer within ``wait_seconds``: nothing definite, so the connection is not refused)."""
        if self.link.fresh():
            return None
        with self._lock:
            thread = self._running
            if thread is None or not thread.is_alive():
                self._outcome.pop(project_id, None)
                thread = threading.Thread(target=self._ask, args=(project_id,), name="ovaal-setup-check",
                                          daemon=True)
                self._running, self._started = thread, time.monotonic()
                thread.start()
            deadline = self._started + self.wait_seconds  # a check already running is not waited for again
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            log.warning("/setup: Label Studio at %s did not answer within %g s (SETUP_CHECK_SECONDS); connecting "
                        "anyway, the outcome shows in /metrics", self.link.url, self.wait_seconds)
            return None
        with self._lock:
            return self._outcome.get(project_id)

    def _ask(self, project_id: int) -> None:
        try:
            self.get_project(project_id)
            outcome = None
        except Exception as err:  # noqa: BLE001 - classified below; anything else is not the link's fault
            outcome = failure(err, project_id, self.link.url)
            if outcome is None:
                log.warning("/setup: asking Label Studio for project %d failed: %s", project_id, err)
        with self._lock:
            self._outcome[project_id] = outcome


def failure(err: Exception, project_id: int, url: str) -> str | None:
    """The link failure ``err`` of a ``get_project`` call means, or None when it says nothing about URL or key."""
    status = getattr(err, "status", None)
    cause = getattr(err, "cause", None)
    if cause:
        return cause
    if status in AUTH_STATUSES:
        return rejected_cause(status, url)
    if status == 404:
        return missing_project_cause(project_id, url)
    return None


def reason_phrase(message: str, limit: int = 8000) -> str:
    """``message`` as an HTTP reason phrase: one line of printable ASCII (Label Studio shows it, not the body)."""
    text = "".join(c if " " <= c <= "~" else " " for c in message.replace("\r", " ").replace("\n", " "))
    return " ".join(text.split())[:limit] or "error"


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
