"""DOWNLOAD_SECONDS bounds one image download in all, against a real loopback server that drips its body.

Before the fix the deadline was checked only between 64 KiB chunks, and one chunk read blocks until the whole chunk
came: a server sending one byte a second held a 2 s download for as long as its body lasted. Asserted here without a
clock: the error names the limit, and the client hung up while the server still had most of the body to send.
"""

from __future__ import annotations

import pytest

from ovaal_backend.backend.client import LabelStudioClient, LabelStudioError
from tests.helpers.drip_server import DripServer

LIMIT = 2.0
BODY = bytes(range(256)) * 2  # 512 bytes: over eight minutes at one byte a second


@pytest.fixture
def drip():
    with DripServer(BODY, interval=1.0) as server:
        yield server


def client(drip: DripServer) -> LabelStudioClient:
    # the per-read timeout (10 s) is far above the drip interval: only the total limit can end the download
    return LabelStudioClient("http://127.0.0.1:9", "a" * 40, timeout=10.0, download_seconds=LIMIT,
                             image_hosts=frozenset({drip.host}))


@pytest.mark.parametrize("path", ["/drip", "/drip-unsized"])
def test_a_dripping_download_ends_at_download_seconds(drip, path):
    with pytest.raises(LabelStudioError, match="not downloaded within 2 s .DOWNLOAD_SECONDS."):
        client(drip).download(drip.url(path))
    assert drip.hung_up.wait(10)  # the server's next byte finds the connection closed
    assert 0 < drip.sent < len(BODY) // 4, drip.sent  # cut off a few bytes in, not when the body ended
    assert drip.hits == [path]


def test_a_download_within_the_limit_is_whole(drip):
    assert client(drip).download(drip.url("/fast")) == BODY
