"""Poison-proofing: a malformed event, a failing disk, an unreadable image or a rotated photo never stops a project
or loses a label."""

from __future__ import annotations

import io
import sqlite3
import time

import numpy as np
import pytest
from PIL import Image

from ovaal_backend.backend.images import ImageFetcher
from ovaal_backend.backend.project.state import Phase
from ovaal_backend.cli import main
from ovaal_backend.engine.data import load_rgb
from tests.helpers.fake_label_studio import P, add_scenes, answer_round, drain, started


@pytest.fixture
def truth(fake) -> dict[int, np.ndarray]:
    return add_scenes(fake, 3)


def test_a_malformed_event_is_quarantined_and_the_round_goes_on(tmp_path, fake, truth, monkeypatch, capsys):
    driver = started(tmp_path, fake)
    bad = {"annotation": {"id": 999, "task": 12345, "result": []}}  # an unknown task and no task data
    assert driver.add_event("ANNOTATION_CREATED", bad) is not None
    answer_round(fake, driver, truth, 0)
    drain(driver)
    assert driver.state().round == 1 and driver.phase == Phase.QUERYING
    (event,) = driver.metrics()["quarantined"]["events"]
    assert event["action"] == "ANNOTATION_CREATED" and "12345" in event["error"]
    assert driver.store.events.pending() == []
    monkeypatch.setenv("MODEL_DIR", str(driver.config.model_dir))
    assert main(["quarantine", "--project", str(P), "--release"]) == 0
    assert "released 1 events" in capsys.readouterr().out
    assert len(driver.store.events.pending()) == 1  # back in the queue; still malformed, so set aside again
    drain(driver)
    assert len(driver.metrics()["quarantined"]["events"]) == 1


def test_a_transient_failure_is_retried_in_order_and_nothing_is_marked_done(tmp_path, fake, truth, monkeypatch):
    driver = started(tmp_path, fake)
    payloads = answer_round(fake, driver, truth, 0, only=2)
    real = driver.events.store_annotation
    failures = iter([sqlite3.OperationalError("database or disk is full")])

    def flaky(*args, **kwargs):
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return real(*args, **kwargs)

    monkeypatch.setattr(driver.events, "store_annotation", flaky)
    assert driver.process_events() == 0  # the first event failed: the queue stops there, in order
    pending = driver.store.events.pending()
    assert [p[2]["annotation"]["id"] for p in pending] == [p["annotation"]["id"] for p in payloads]
    assert driver.store.events.pending(now=time.time()) == []  # none before the first one's backoff
    assert driver.store.clicks.counts()["annotations"] == 0
    later = time.time() + 10
    monkeypatch.setattr(time, "time", lambda: later)
    assert driver.process_events() == 2
    assert driver.store.clicks.counts()["annotations"] == 2 and driver.metrics()["quarantined"]["events"] == []


def test_an_unreadable_image_is_quarantined_and_the_loop_advances(tmp_path, fake, truth):
    broken = fake._new_task(P, {"image": f"/data/upload/{P}/missing.png"})  # 404 from the fake
    fake.files[f"/data/upload/{P}/html.png"] = b"<html>Not found</html>"
    html = fake._new_task(P, {"image": f"/data/upload/{P}/html.png"})
    driver = started(tmp_path, fake)
    assert driver.phase == Phase.QUERYING and len(fake.query_tasks(P, 0)) == 3
    images = {i["item"]: i["reason"] for i in driver.metrics()["quarantined"]["images"]}
    assert set(images) == {broken, html} and "404" in images[broken] and "not an image" in images[html]
    assert not any((driver.root / "images").glob("*")) or all(
        p.read_bytes() != b"<html>Not found</html>" for p in (driver.root / "images").iterdir())
    answer_round(fake, driver, truth, 0)
    drain(driver)
    assert driver.state().round == 1 and driver.model_version == "ovaal-1"


def test_rotated_photos_are_read_upright_and_huge_ones_refused(tmp_path):
    image = np.zeros((20, 40, 3), dtype=np.uint8)
    image[:, :10] = 255  # a white band on the left of the upright image
    stored = Image.fromarray(image).rotate(90, expand=True)  # stored sideways (20 wide, 40 high) ...
    exif = Image.Exif()
    exif[0x0112] = 6  # ... with "rotate 90 clockwise to show"
    path = tmp_path / "photo.jpg"
    stored.save(path, exif=exif, quality=95)
    upright = load_rgb(path)
    assert upright.shape == (20, 40, 3) and upright[:, :8].mean() > 200 and upright[:, 15:].mean() < 50
    with pytest.raises(ValueError, match="MAX_IMAGE_PIXELS"):
        load_rgb(path, max_pixels=100)


def test_the_image_pool_keeps_the_most_recently_used(tmp_path, fake, truth):
    driver = started(tmp_path, fake, image_pool_size=2)
    sources = sorted(truth)
    for task_id in sources:
        driver.ctx.images.image(task_id, driver.ctx.image_url(fake.tasks[task_id]["data"]))
    assert list(driver.ctx.images._images) == sources[1:]


def test_the_image_pool_is_bounded_in_bytes(tmp_path, fake, truth):
    driver = started(tmp_path, fake, image_height=512, image_width=640, image_pool_mb=2)  # 0.94 MiB an image
    sources = sorted(truth)

    def image(task_id: int):
        return driver.ctx.images.image(task_id, driver.ctx.image_url(fake.tasks[task_id]["data"]))

    first = image(sources[0])
    assert image(sources[0]) is first  # kept while it fits
    for task_id in sources[1:3]:
        image(task_id)
    assert list(driver.ctx.images._images) == sources[1:3]
    assert image(sources[0]) is not first  # dropped, read again


def test_a_download_that_is_no_image_is_not_cached(tmp_path, fake):
    fake.files["/data/upload/1/page.png"] = b"<!doctype html><p>login</p>"
    fetcher = ImageFetcher(fake, tmp_path / "cache")
    with pytest.raises(ValueError, match="not an image"):
        fetcher.path("/data/upload/1/page.png")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
    buffer = io.BytesIO()
    Image.new("RGB", (4, 3)).save(buffer, format="PNG")
    fake.files["/data/upload/1/ok.png"] = buffer.getvalue()
    assert fetcher.load("/data/upload/1/ok.png").shape == (3, 4, 3)
