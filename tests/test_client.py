"""Label Studio REST calls and image fetching, against a mocked HTTP layer (requests-mock)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import requests
import requests_mock
from PIL import Image

from ovaal_backend.backend.client import ImageHostRefused, LabelStudioClient, LabelStudioError
from ovaal_backend.backend.images import ImageFetcher

URL = "http://ls.test:8080"
LEGACY = "a" * 40
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCJ9.c2lnbmF0dXJl"


@pytest.fixture
def http():
    with requests_mock.Mocker() as mock:
        yield mock


def png(height=4, width=6) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 7, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_legacy_token_header(http):
    http.get(f"{URL}/api/projects/3", json={"id": 3})
    assert LabelStudioClient(URL, LEGACY).get_project(3) == {"id": 3}
    assert http.last_request.headers["Authorization"] == f"Token {LEGACY}"


def test_personal_access_token_is_exchanged_and_refreshed_on_401(http):
    http.post(f"{URL}/api/token/refresh/", [{"json": {"access": "A1"}}, {"json": {"access": "A2"}}])
    http.get(f"{URL}/api/projects/3", [{"status_code": 401, "json": {}}, {"json": {"id": 3}}])
    client = LabelStudioClient(URL, JWT)
    assert client.is_personal_access_token
    assert client.get_project(3) == {"id": 3}
    auth = [r.headers.get("Authorization") for r in http.request_history if r.path == "/api/projects/3"]
    assert auth == ["Bearer A1", "Bearer A2"]
    assert http.request_history[0].json() == {"refresh": JWT}


def test_errors_name_the_call_and_hint_at_the_token(http):
    http.get(f"{URL}/api/projects/3", status_code=403, text="forbidden")
    with pytest.raises(LabelStudioError, match="403.*LABEL_STUDIO_API_KEY") as err:
        LabelStudioClient(URL, LEGACY).get_project(3)
    assert err.value.status == 403
    http.get(f"{URL}/api/projects/4", exc=requests.ConnectionError("refused"))
    with pytest.raises(LabelStudioError, match="LABEL_STUDIO_URL"):
        LabelStudioClient(URL, LEGACY).get_project(4)


def test_iter_tasks_pages_by_an_id_cursor(http):
    # Label Studio's total counts the tasks after the cursor (tests/test_source_faults.py runs it for real)
    http.get(f"{URL}/api/tasks", [{"json": {"tasks": [{"id": 1}, {"id": 2}], "total": 3}},
                                  {"json": {"tasks": [{"id": 3}], "total": 1}}])
    tasks = list(LabelStudioClient(URL, LEGACY).iter_tasks(5))
    assert [t["id"] for t in tasks] == [1, 2, 3]
    first, second = http.request_history
    assert first.qs["project"] == ["5"] and first.qs["include"] == ["id,data"] and first.qs["page"] == ["1"]
    assert first.qs["resolve_uri"] == ["false"] and second.qs["page"] == ["1"]
    cursors = [json.loads(r.qs["query"][0])["filters"]["items"][0] for r in (first, second)]
    assert [(c["filter"], c["operator"], c["value"]) for c in cursors] == [("filter:tasks:id", "greater", 0),
                                                                            ("filter:tasks:id", "greater", 2)]


def test_import_tasks_checks_counts(http):
    client = LabelStudioClient(URL, LEGACY)
    tasks = [{"data": {"image": "x"}, "predictions": [{"result": []}]}] * 2
    http.post(f"{URL}/api/projects/5/import", json={"task_ids": [7, 8], "prediction_count": 2}, status_code=201)
    assert client.import_tasks(5, tasks) == [7, 8]
    assert http.last_request.qs["return_task_ids"] == ["true"]
    http.post(f"{URL}/api/projects/5/import", json={"task_ids": [7, 8], "prediction_count": 1}, status_code=201)
    with pytest.raises(LabelStudioError, match="created 2 tasks and 1 predictions"):
        client.import_tasks(5, tasks)
    assert client.import_tasks(5, []) == []


def test_import_predictions_checks_created(http):
    client = LabelStudioClient(URL, LEGACY)
    http.post(f"{URL}/api/projects/5/import/predictions", json={"created": 0}, status_code=201)
    with pytest.raises(LabelStudioError, match="created 0 of 1"):
        client.import_predictions(5, [{"task": 1, "result": []}])
    http.post(f"{URL}/api/projects/5/import/predictions", json={"created": 1}, status_code=201)
    assert client.import_predictions(5, [{"task": 1, "result": []}]) == 1


def test_download_sends_the_token_only_to_label_studio(http):
    client = LabelStudioClient(URL, LEGACY, image_hosts=frozenset({"elsewhere.test"}))
    http.get(f"{URL}/data/upload/1/a.png", content=b"ls")
    http.get("http://elsewhere.test/b.png", content=b"web")
    http.get(f"{URL}/tasks/9/presign/", content=b"cloud")
    assert client.download("/data/upload/1/a.png") == b"ls"
    assert http.last_request.headers["Authorization"] == f"Token {LEGACY}"
    assert client.download("http://elsewhere.test/b.png") == b"web"
    assert "Authorization" not in http.last_request.headers
    assert client.download("s3://bucket/c.png", task_id=9) == b"cloud"
    assert http.last_request.qs["fileuri"] == ["czm6ly9idwnrzxqvyy5wbmc="]  # qs values are lower-cased
    with pytest.raises(LabelStudioError, match="task id"):
        client.download("s3://bucket/c.png")
    sent = len(http.request_history)
    for url in ("http://elsewhere.test:8080/b.png", "http://ls.test:9090/b.png", "file:///etc/passwd"):
        with pytest.raises(ImageHostRefused, match="ALLOWED_IMAGE_HOSTS"):  # another host or port: never asked
            client.download(url)
    assert len(http.request_history) == sent


def test_image_fetcher_reads_local_files_from_disk_and_caches_downloads(tmp_path, http):
    root = tmp_path / "root"
    (root / "imgs").mkdir(parents=True)
    (root / "imgs" / "a.png").write_bytes(png(4, 6))
    (tmp_path / "secret.png").write_bytes(png(2, 2))
    fetcher = ImageFetcher(LabelStudioClient(URL, LEGACY), tmp_path / "cache", str(root))
    assert fetcher.load("/data/local-files/?d=imgs/a.png").shape == (4, 6, 3)
    assert fetcher.local_path("/data/local-files/?d=../secret.png") is None  # never outside the root
    http.get(f"{URL}/data/local-files/?d=imgs/missing.png", content=png(3, 5))
    assert fetcher.load("/data/local-files/?d=imgs/missing.png").shape == (3, 5, 3)  # not on disk: downloaded
    http.get(f"{URL}/data/upload/1/b.png", content=png(5, 7))
    assert fetcher.load("/data/upload/1/b.png").shape == (5, 7, 3)
    assert fetcher.load("/data/upload/1/b.png").shape == (5, 7, 3)
    assert sum(r.path == "/data/upload/1/b.png" for r in http.request_history) == 1  # cached
    assert fetcher.cached_path("/data/upload/1/b.png").suffix == ".png"
    http.get(f"{URL}/data/upload/1/c.png", content=b"not an image")
    with pytest.raises(ValueError, match="not an image"):
        fetcher.load("/data/upload/1/c.png")
