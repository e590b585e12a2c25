"""/health and webhook latency while slow clients hold connections: the old set-up against the new, in one run.

Per set-up (``--setups``): the backend on loopback with ``SERVER_THREADS`` (4) and a set-up project (no Label Studio
is needed: tests/helpers/slowloris.py ``offline_backend``), then ``--header-clients`` slowloris clients (one header line
every ``--interval`` s, never the end of the headers) and ``--body-clients`` slow-body clients (one body byte every
``--interval`` s), each opening a new connection as soon as the server cuts its last one, for ``--seconds``.
Meanwhile a probe sends GET /health and a webhook (Label Studio's ANNOTATION_CREATED shape) in turn, each on a fresh
connection with a ``--probe-timeout`` s limit (a timeout counts as a failure and as that many seconds), one every
0.5 s.

Set-ups: ``old`` = what ``serve`` ran before the front (gunicorn, one gthread worker, bound to the TCP port),
``new`` = ``python -m ovaal_backend serve`` (the buffering front, backend/front.py, before that gunicorn), with the
shipped REQUEST_HEADER_SECONDS / REQUEST_BODY_SECONDS. The candidates that were weighed need packages the backend does
not install (uvicorn-worker, asgiref, gevent): ``uvicorn`` = gunicorn with uvicorn-worker's UvicornWorker around
asgiref's WsgiToAsgi, ``asgi`` = gunicorn 27's own asgi worker around the same, ``gevent`` = gunicorn's gevent worker.

Usage::

    .venv/bin/python benchmarks/slow_clients.py                    # old,new; prints Markdown, updates the docs
    PY_WITH_CANDIDATES benchmarks/slow_clients.py --setups old,new,uvicorn,asgi,gevent --no-docs

Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend_bench import CpuWindow, machine  # noqa: E402
from doc_section import write_section  # noqa: E402

from tests.helpers.fault_kit import percentile  # noqa: E402
from tests.helpers.ls_server import BackendProcess, free_port  # noqa: E402
from tests.helpers.slowloris import offline_backend, start_slow_clients, timed_call, webhook  # noqa: E402

COMMAND = ".venv/bin/python benchmarks/slow_clients.py"
APP = "ovaal_backend.backend.app:create_app()"
CANDIDATE_PACKAGES = {"uvicorn": ("uvicorn-worker 0.4.0", "asgiref 3.13.0"), "asgi": ("asgiref 3.13.0",),
                      "gevent": ("gevent 26.9.0",)}
"""What each candidate set-up needs beside requirements.txt (the versions measured)."""
ASGI_APP = "slow_clients:asgi_app()"
"""The candidates' ASGI app: this module's ``asgi_app`` (PYTHONPATH=benchmarks)."""


def asgi_app() -> Any:
    """The Flask app as ASGI (asgiref's WsgiToAsgi reads a whole body before it calls the app), for the candidates."""
    from asgiref.wsgi import WsgiToAsgi

    from ovaal_backend.backend.app import create_app

    return WsgiToAsgi(create_app())


def server_argv(setup: str, port: int, threads: int) -> list[str] | None:
    """The command of a set-up (None: ``python -m ovaal_backend serve``)."""
    if setup == "new":
        return None
    gunicorn = [sys.executable, "-m", "gunicorn", "--workers", "1", "--timeout", "0", "--no-control-socket",
                "--bind", f"127.0.0.1:{port}"]
    return gunicorn + {
        "old": ["--worker-class", "gthread", "--threads", str(threads), APP],
        "uvicorn": ["--worker-class", "uvicorn_worker.UvicornWorker", ASGI_APP],
        "asgi": ["--worker-class", "asgi", ASGI_APP],
        "gevent": ["--worker-class", "gevent", APP],
    }[setup]


def measure(setup: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """One set-up under slow clients: probe latencies, failures, and how the slow clients' connections ended."""
    folder = tmp / setup
    folder.mkdir()
    port = free_port()
    backend, project_id = offline_backend(folder, server_argv(setup, port, args.threads), PORT=str(port),
                                          SERVER_THREADS=str(args.threads), LOG_LEVEL="WARNING",
                                          PYTHONPATH=str(ROOT / "benchmarks"))
    backend.start()
    stop = threading.Event()
    try:
        clients = start_slow_clients(port, args.header_clients, args.body_clients, args.interval, stop,
                                     reconnect=True)
        window = CpuWindow([backend.proc.pid, os.getpid()])
        probes = probe(backend, project_id, args)
        load = window.stop()
    finally:
        stop.set()
        backend.stop()
    cuts = [cut for client in clients for cut in client.cuts if cut.held > 0]
    return {"setup": setup, "probes": probes, "load": load,
            "cuts": len(cuts), "cut_408": sum(cut.status_line.startswith(b"HTTP/1.1 408") for cut in cuts),
            "held_median": percentile([cut.held for cut in cuts], 50)}


def probe(backend: BackendProcess, project_id: int, args: argparse.Namespace) -> dict[str, list[tuple[int, float]]]:
    """(status, seconds) of /health and /webhook calls in turn, one every 0.5 s, for ``--seconds``."""
    session = backend.session()
    out: dict[str, list[tuple[int, float]]] = {"/health": [], "/webhook": []}
    time.sleep(1.0)  # every slow client has sent more than its first piece
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        out["/health"].append(timed_call(session, "GET", f"{backend.url}/health", args.probe_timeout))
        out["/webhook"].append(timed_call(session, "POST", f"{backend.url}/webhook", args.probe_timeout,
                                          json=webhook(project_id)))
        time.sleep(0.5)
    return out


def stats(calls: list[tuple[int, float]], good: int) -> dict[str, float]:
    seconds = [s for _, s in calls]
    return {"n": len(calls), "failed": sum(status != good for status, _ in calls),
            "p50": percentile(seconds, 50), "p99": percentile(seconds, 99), "max": max(seconds)}


HOW = {
    "old": "a thread takes a connection at its first bytes and then reads the rest of the request blocking",
    "new": "the front reads each request whole under the deadlines; a gunicorn thread only takes complete requests",
    "uvicorn": "asgiref's WsgiToAsgi calls the app through `sync_to_async` with its default `thread_sensitive=True` "
               "(asgiref/wsgi.py), so every request runs on one and the same thread: one /predict computing a mask "
               "holds every webhook, and `MAX_PREDICT_CALLS` means nothing",
    "gevent": "the worker monkey-patches threading, so the projects' training threads become greenlets of the one "
              "event loop, which every torch computation then blocks",
}
"""How each set-up serves (the candidates' catch read in their source, not measured here)."""
HOW["asgi"] = HOW["uvicorn"]


def markdown(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    command = COMMAND + (f" --setups {args.setups}" if args.setups != "old,new" else "")
    extra = set(args.setups.split(",")) - {"old", "new"}
    packages = sorted({package for setup in extra for package in CANDIDATE_PACKAGES[setup]})
    needs = f" (the python of a venv that also has {', '.join(packages)})"
    lines = [
        "## Slow clients (issue 16)",
        "",
        f"`{command}`{needs if extra else ''} ({datetime.date.today()}; {machine()}; the machine was shared: "
        "\"other load\" is the share of its CPU that processes outside this benchmark used meanwhile). The backend "
        f"with `SERVER_THREADS={args.threads}` on loopback; {args.header_clients} slowloris clients (a header line "
        f"every {args.interval:g} s) and {args.body_clients} slow-body clients (a body byte every "
        f"{args.interval:g} s), "
        f"each reconnecting when the server ends its connection, for {args.seconds:g} s; meanwhile /health and a "
        "webhook in turn, each on a fresh connection, one every 0.5 s (a call over "
        f"{args.probe_timeout:g} s fails and counts as {args.probe_timeout:g} s). `new` runs with the shipped "
        "`REQUEST_HEADER_SECONDS` (10) and `REQUEST_BODY_SECONDS` (60). Seconds:",
        "",
        "| set-up | /health p50 / p99 / max | /health failed | webhook p50 / p99 / max | webhook failed | "
        "slow connections the server ended (with a 408) | held (median) | other load |",
        "|---|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for r in results:
        h, w = stats(r["probes"]["/health"], 200), stats(r["probes"]["/webhook"], 201)
        held = f"{r['held_median']:.1f}" if r["cuts"] else "-"
        lines.append(
            f"| {r['setup']} | {h['p50']:.3f} / {h['p99']:.3f} / {h['max']:.3f} | {h['failed']} of {h['n']} | "
            f"{w['p50']:.3f} / {w['p99']:.3f} / {w['max']:.3f} | {w['failed']} of {w['n']} | "
            f"{r['cuts']} ({r['cut_408']}) | {held} | {100 * r['load']['other_share']:.0f} % |")
        calls = r["probes"]["/health"] + r["probes"]["/webhook"]
        late = sum(status not in (200, 201) or seconds >= 1.0 for status, seconds in calls)
        answered = "every call answered within 1 s" if not late else f"{late} of {len(calls)} calls failed or took 1 s+"
        cut = ("slow connections ended with a 408" if r["cut_408"] else "no slow connection ended with a 408 "
               "(nothing times out a slow head or body)")
        verdicts.append(f"- `{r['setup']}`: {answered}; {cut}. {HOW[r['setup']][0].upper()}{HOW[r['setup']][1:]}.")
    by_setup = {r["setup"]: r for r in results}
    if "old" in by_setup and "new" in by_setup:
        old = {k: stats(by_setup["old"]["probes"][k], c) for k, c in (("/health", 200), ("/webhook", 201))}
        new = {k: stats(by_setup["new"]["probes"][k], c) for k, c in (("/health", 200), ("/webhook", 201))}
        ratios = ", ".join(f"{k} p50 {old[k]['p50'] / new[k]['p50']:.0f}x, p99 {old[k]['p99'] / new[k]['p99']:.0f}x"
                           for k in old)
        lines += ["", f"Old / new: {ratios} (the old set-up's failed calls count as {args.probe_timeout:g} s)."]
    return "\n".join(lines + [""] + verdicts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setups", default="old,new", help="comma-separated: old, new, uvicorn, asgi, gevent")
    parser.add_argument("--threads", type=int, default=4, help="SERVER_THREADS")
    parser.add_argument("--header-clients", type=int, default=16)
    parser.add_argument("--body-clients", type=int, default=8)
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between a slow client's pieces")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the probe runs per set-up")
    parser.add_argument("--probe-timeout", type=float, default=5.0)
    parser.add_argument("--no-docs", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="ovaal-slow-") as tmp:
        for setup in args.setups.split(","):
            print(f"measuring {setup} ...", flush=True)
            results.append(measure(setup, args, Path(tmp)))
    text = markdown(results, args)
    print(text)
    if not args.no_docs:
        write_section("SLOW-CLIENTS", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
