"""/metrics as Prometheus text (issue 18 item 6): chosen by the Accept header a scraper sends or ``?format=``, behind
the same basic auth, parsed with prometheus_client's own parsers, and the same figures as the JSON."""

from __future__ import annotations

import base64

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from ovaal_backend.backend.app import create_app
from ovaal_backend.backend.prometheus import wants_prometheus
from ovaal_backend.backend.registry import Backend
from ovaal_backend.config import Config
from tests.helpers import fault_kit
from tests.helpers.fake_label_studio import TINY, UID, XML, P, add_scenes, make_fake_project
from tests.helpers.ls_server import BackendProcess, loopback_session, wait_for

PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
                     "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
"""What Prometheus 2.x/3.x sends when it scrapes."""
AUTH = {"Authorization": "Basic " + base64.b64encode(b"ls:secret").decode()}


def samples(text: str, openmetrics: bool) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``(sample name, sorted labels) -> value`` of a scrape, read by prometheus_client's parser for its format."""
    parse = parse_openmetrics if openmetrics else parse_text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in parse(text) for s in family.samples}


@pytest.mark.parametrize("format_arg,accept,text", [
    (None, PROMETHEUS_ACCEPT, True),
    (None, "text/plain;version=0.0.4", True),
    (None, "text/plain", True),
    (None, None, False),
    (None, "*/*", False),  # curl, requests, Label Studio
    (None, "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", False),  # a browser
    (None, "application/json, text/plain, */*", False),  # axios: a tie keeps JSON
    (None, "application/json;q=0.4, text/plain;q=0.5", True),
    ("prometheus", "*/*", True),
    ("json", PROMETHEUS_ACCEPT, False),
])
def test_the_format_follows_format_or_accept(format_arg, accept, text):
    assert wants_prometheus(format_arg, accept) is text


@pytest.fixture
def served(tmp_path):
    """A backend with basic auth and one set-up project whose round 0 is published (worker driven by hand)."""
    fake = make_fake_project()[0]
    add_scenes(fake, 2)
    config = Config(**{**TINY, "model_dir": str(tmp_path / "models"), "basic_auth_user": "ls",
                       "basic_auth_pass": "secret"})
    backend = Backend(config, client_factory=lambda _: fake, start_workers=False)
    client = create_app(config, backend).test_client()
    assert client.post("/setup", json={"project": UID, "schema": XML}, headers=AUTH).status_code == 200
    backend.worker(P).run_pending()
    yield client
    backend.shutdown(timeout=30)


def test_prometheus_text_holds_the_json_figures_behind_the_same_auth(served):
    assert served.get("/metrics", headers={"Accept": PROMETHEUS_ACCEPT}).status_code == 401
    response = served.get("/metrics", headers={"Accept": PROMETHEUS_ACCEPT, **AUTH})
    assert response.status_code == 200 and response.mimetype == "application/openmetrics-text"
    scraped = samples(response.get_data(as_text=True), openmetrics=True)
    old = served.get("/metrics?format=prometheus", headers=AUTH)
    assert old.mimetype == "text/plain" and "version=0.0.4" in old.content_type
    assert samples(old.get_data(as_text=True), openmetrics=False) == scraped
    body = served.get("/metrics", headers=AUTH).get_json()  # JSON stays the default
    project = body["projects"][str(P)]
    p = (("project", str(P)),)
    assert scraped[("ovaal_project_phase", (("phase", "querying"), ("project", "1")))] == 1
    for name in ("round", "query_tasks", "answered_query_tasks", "pending_events", "annotations", "points"):
        assert scraped[(f"ovaal_project_{name}", p)] == project[name], name
    assert scraped[("ovaal_project_source_images", p)] == len(project["labelled_per_image"]) == 2
    assert scraped[("ovaal_project_info", (("device", "cpu"), ("model_version", "ovaal-0"), ("project", "1")))] == 1
    assert scraped[("ovaal_project_worker_last_error", p)] == 0
    assert scraped[("ovaal_project_quarantined", (("kind", "images"), ("project", "1")))] == 0
    assert scraped[("ovaal_label_studio_reachable", ())] == 1 and scraped[("ovaal_label_studio_last_error", ())] == 0
    assert scraped[("ovaal_jobs", (("state", "running"),))] == 0 and scraped[("ovaal_job_slots", ())] == 1
    assert scraped[("ovaal_predict_refused_total", ())] == body["predict"]["refused"] == 0
    assert scraped[("ovaal_info", (("job_runner", "in-process"), ("model_class", "OVAAL"),
                                   ("version", body["version"])))] == 1


def test_an_unknown_format_is_a_400_with_json(served):
    response = served.get("/metrics?format=xml", headers=AUTH)
    assert response.status_code == 400 and "json, prometheus" in response.get_json()["error"]


@pytest.mark.e2e
def test_a_real_backend_serves_prometheus_text_to_a_scraper(label_studio, tmp_path):
    """``serve`` (front, gunicorn) connected to a real Label Studio project: a scrape with Prometheus' Accept header
    and the basic-auth pair reads the project's phase, round, query tasks and the link, as the JSON has them."""
    project = fault_kit.make_project(label_studio, "prometheus", 3)
    backend = BackendProcess(fault_kit.backend_env(label_studio, tmp_path / "models"), tmp_path / "backend.log")
    backend.start()
    try:
        fault_kit.connect_model(label_studio, project.id, backend.url)
        wait_for("round 0 published", lambda: (fault_kit.project_metrics(backend, project.id) or {}).get("phase")
                 == "querying", 300, backend)
        anonymous = loopback_session().get(f"{backend.url}/metrics", headers={"Accept": PROMETHEUS_ACCEPT}, timeout=30)
        assert anonymous.status_code == 401
        response = backend.session().get(f"{backend.url}/metrics", headers={"Accept": PROMETHEUS_ACCEPT}, timeout=30)
        assert response.status_code == 200 and response.headers["Content-Type"].startswith(
            "application/openmetrics-text; version=1.0.0")
        scraped = samples(response.text, openmetrics=True)
        body = backend.session().get(f"{backend.url}/metrics", timeout=30).json()
        figures = body["projects"][str(project.id)]
        p = (("project", str(project.id)),)
        assert scraped[("ovaal_project_phase", (("phase", "querying"),) + p)] == 1
        assert scraped[("ovaal_project_round", p)] == figures["round"] == 0
        assert scraped[("ovaal_project_query_tasks", p)] == figures["query_tasks"] == 3
        assert scraped[("ovaal_project_source_images", p)] == 3
        assert scraped[("ovaal_project_worker_alive", p)] == 1
        assert scraped[("ovaal_label_studio_reachable", ())] == 1
        assert scraped[("ovaal_label_studio_last_ok_timestamp_seconds", ())] <= body["label_studio"]["last_ok"]
        text = backend.session().get(f"{backend.url}/metrics", params={"format": "prometheus"}, timeout=30)
        assert text.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert samples(text.text, openmetrics=False)[("ovaal_project_query_tasks", p)] == 3
    finally:
        backend.stop()


def test_a_redis_queue_and_an_unreachable_label_studio():
    """With REDIS_URL the queue's counts and workers; a Label Studio that failed: reachable 0, its error present."""
    from ovaal_backend.backend.prometheus import prometheus_text

    payload = {"model_class": "OVAAL", "version": "0", "projects": {}, "set_aside": {"3": {"reason": "corrupt"}},
               "label_studio": {"reachable": False, "last_ok": None, "last_error": "connection refused",
                                "last_error_at": 1700000000.0},
               "jobs": {"kind": "rq", "queued": 2, "started": 1, "failed": 0, "workers": 3, "jobs": {}},
               "predict": {"slots": 2, "busy": 0, "refused": 5}}
    text, content_type = prometheus_text(payload, "text/plain;version=0.0.4")
    scraped = samples(text.decode(), openmetrics=False)
    assert content_type.startswith("text/plain; version=0.0.4")
    assert scraped[("ovaal_jobs", (("state", "queued"),))] == 2 and scraped[("ovaal_queue_workers", ())] == 3
    assert scraped[("ovaal_queue_reachable", ())] == 1 and ("ovaal_job_slots", ()) not in scraped
    assert scraped[("ovaal_label_studio_reachable", ())] == 0 and scraped[("ovaal_label_studio_last_error", ())] == 1
    assert scraped[("ovaal_label_studio_last_error_timestamp_seconds", ())] == 1700000000.0
    assert ("ovaal_label_studio_last_ok_timestamp_seconds", ()) not in scraped
    assert scraped[("ovaal_projects_set_aside", ())] == 1 and scraped[("ovaal_predict_refused_total", ())] == 5
    down = dict(payload, jobs={"kind": "rq", "redis": "redis://x", "queue": "ovaal", "error": "ConnectionError"})
    assert samples(prometheus_text(down, "")[0].decode(), openmetrics=False)[("ovaal_queue_reachable", ())] == 0
