"""Screenshot a Label Studio task page with headless Chromium (for the README), logged in as a Label Studio user.

Usage::

    .venv/bin/python benchmarks/screenshot_query_task.py --url http://127.0.0.1:8080 --email EMAIL --password PASS \
        --project 1 --task 42 --out docs/images/query-task.png

It logs in through Label Studio's login form (``/user/login/``) with ``requests``, hands the session cookie to
Chromium, opens ``/projects/<project>/data?task=<task>`` (the labeling view of one task) and saves a PNG. Chromium is
driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``), so nothing beyond the standard library,
``requests`` and Pillow (to shrink a large PNG) is needed. Only the given Label Studio URL is reachable: every other
host name fails to resolve inside the browser.

``benchmarks/backend_bench.py --screenshot PATH`` calls this on a round-1 query task of its run.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import io
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--no-default-browser-check", "--disable-sync",
                  "--disable-default-apps", "--disable-extensions", "--disable-dev-shm-usage", "--hide-scrollbars",
                  "--mute-audio", "--no-proxy-server")
READY_JS = """(() => {
  const img = [...document.images].find(i => (i.src || '').includes('/data/') && i.complete && i.naturalWidth > 0);
  const canvas = document.querySelector('.konvajs-content canvas, canvas');
  return Boolean(img && canvas);
})()"""
"""True once the task's image is loaded and the editor's canvas (where regions are drawn) exists."""


def login(url: str, email: str, password: str) -> list[dict[str, str]]:
    """Log in through Label Studio's form; the session's cookies (``sessionid``, ``csrftoken``)."""
    session = requests.Session()
    session.trust_env = False  # loopback only, whatever proxy variables say
    page = f"{url}/user/login/"
    session.get(page, timeout=30).raise_for_status()
    csrf = session.cookies.get("csrftoken", "")
    response = session.post(page, data={"email": email, "password": password, "csrfmiddlewaretoken": csrf},
                            headers={"Referer": page}, allow_redirects=False, timeout=30)
    if response.status_code not in (301, 302) or "sessionid" not in session.cookies:
        raise RuntimeError(f"login as {email} failed: HTTP {response.status_code} without a session cookie")
    return [{"name": c.name, "value": c.value, "path": c.path or "/"} for c in session.cookies]


class Chromium:
    """A headless Chromium driven over ``--remote-debugging-pipe`` (fd 3: commands in, fd 4: replies out)."""

    def __init__(self, binary: str, allowed_host: str) -> None:
        self.profile = tempfile.mkdtemp(prefix="ovaal-chromium-")
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        # The child's ends move to fds >= 10 so that bash can put them on 3 and 4 without clobbering either.
        child_r, child_w = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10), fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        flags = [*CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-pipe",
                 # nothing but the Label Studio host resolves: no analytics, fonts or update checks leave the machine
                 f"--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE {allowed_host}", "about:blank"]
        shell = f'exec "$0" "$@" 3<&{child_r} 4>&{child_w} {child_r}<&- {child_w}>&-'
        self.proc = subprocess.Popen(["/bin/bash", "-c", shell, binary, *flags], pass_fds=(child_r, child_w),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        os.close(child_r)
        os.close(child_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 60.0) -> dict[str, Any]:
        """One DevTools command; its ``result`` (raises on an error reply)."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float) -> bool:
        """Wait for an event (already received ones count); False on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            if any(e.get("method") == method for e in self.events):
                return True
            try:
                self.events.append(self._read(deadline))
            except TimeoutError:
                return False

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_chrome], [], [], left)[0]:
                raise TimeoutError("no answer from Chromium")
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe (did it crash?)")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except Exception:  # noqa: BLE001 - it is going away either way
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(timeout=10)
        for fd in (self._to_chrome, self._from_chrome):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)


def screenshot(url: str, page: str, cookies: list[dict[str, str]], out: Path, binary: str = "chromium",
               width: int = 1400, height: int = 860, settle: float = 3.0, max_bytes: int = 500_000) -> dict[str, Any]:
    """Open ``url + page`` logged in with ``cookies`` and save a PNG; returns what happened (for the caller's log)."""
    host = urlsplit(url).hostname or "127.0.0.1"
    chrome = Chromium(shutil.which(binary) or binary, host)
    try:
        target = chrome.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = chrome.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for name in ("Page.enable", "Network.enable", "Runtime.enable"):
            chrome.send(name, session=session)
        for cookie in cookies:
            chrome.send("Network.setCookie", {**cookie, "url": url}, session=session)
        chrome.send("Emulation.setDeviceMetricsOverride",
                    {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=session)
        started = time.monotonic()
        chrome.send("Page.navigate", {"url": url + page}, session=session)
        chrome.wait_event("Page.loadEventFired", 60)
        ready = False
        while time.monotonic() - started < 90 and not ready:
            value = chrome.send("Runtime.evaluate", {"expression": READY_JS, "returnByValue": True}, session=session)
            ready = bool(value.get("result", {}).get("value"))
            if not ready:
                time.sleep(0.5)
        time.sleep(settle)  # let the editor draw the regions over the image
        location = chrome.send("Runtime.evaluate", {"expression": "location.href", "returnByValue": True},
                               session=session)["result"].get("value")
        data = base64.b64decode(chrome.send("Page.captureScreenshot", {"format": "png"}, session=session)["data"])
    finally:
        chrome.close()
    shrunk = False
    if len(data) > max_bytes:  # a photo in the page makes a big PNG: fewer colours keep it readable and small
        from PIL import Image

        buffer = io.BytesIO()
        Image.open(io.BytesIO(data)).convert("RGB").quantize(colors=256, dither=Image.Dither.NONE).save(
            buffer, format="PNG", optimize=True)
        data, shrunk = buffer.getvalue(), True
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    return {"path": str(out), "bytes": len(data), "ready": ready, "page": location, "quantized": shrunk,
            "seconds": round(time.monotonic() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    """Command line: log in, open one task, save the PNG; prints a JSON summary."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="Label Studio, e.g. http://127.0.0.1:8080")
    p.add_argument("--email", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--project", type=int, required=True)
    p.add_argument("--task", type=int, required=True)
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--chromium", default="chromium", help="the Chromium binary (Debian: apt-get install chromium)")
    p.add_argument("--width", type=int, default=1400)
    p.add_argument("--height", type=int, default=860)
    args = p.parse_args(argv)
    if not shutil.which(args.chromium) and not os.access(args.chromium, os.X_OK):
        print(f"error: no Chromium at {args.chromium!r} (Debian: apt-get install chromium)", file=sys.stderr)
        return 2
    url = args.url.rstrip("/")
    cookies = login(url, args.email, args.password)
    result = screenshot(url, f"/projects/{args.project}/data?task={args.task}", cookies, Path(args.out),
                        args.chromium, args.width, args.height)
    print(json.dumps(result))
    return 0 if result["ready"] else 1


if __name__ == "__main__":
    sys.exit(main())
