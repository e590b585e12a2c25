"""Task images: read from Label Studio's local-files document root when shared, else downloaded once and cached."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import posixpath
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
from PIL import Image

from ..engine.data import load_rgb
from ..files import write_atomically
from .client import LOCAL_FILES_PREFIX, LabelStudioClient

log = logging.getLogger(__name__)


class ImageFetcher:
    """Task images as RGB arrays: straight from disk when possible, else downloaded once and cached.

    Args:
        client: For downloads.
        cache_dir: Where downloaded files are kept (``MODEL_DIR/<project>/images``).
        document_root: Label Studio's ``LOCAL_FILES_DOCUMENT_ROOT`` as seen by the backend ("" = not shared).
    """

    def __init__(self, client: LabelStudioClient, cache_dir: str | Path, document_root: str = "",
                 max_pixels: int = 0) -> None:
        self.client = client
        self.max_pixels = max_pixels
        self.cache_dir = Path(cache_dir)
        self.document_root = Path(document_root).resolve() if document_root else None

    def local_path(self, url: str) -> Path | None:
        """The file a ``/data/local-files/?d=...`` URL names under the shared document root, if it exists there."""
        if self.document_root is None or LOCAL_FILES_PREFIX not in url:
            return None
        values = parse_qs(urlparse(url).query, keep_blank_values=True).get("d")
        if not values or not values[-1]:
            return None
        relative = posixpath.normpath(values[-1]).lstrip("/")
        path = (self.document_root / relative).resolve()
        if os.path.commonpath([path, self.document_root]) != str(self.document_root):
            log.warning("ignoring local-files path %r: it leaves the document root", values[-1])
            return None
        return path if path.is_file() else None

    def cached_path(self, url: str) -> Path:
        """Where a download of ``url`` is cached (the name keeps the suffix so PIL can guess the format)."""
        suffix = Path(urlparse(url).path).suffix or Path(parse_qs(urlparse(url).query).get("d", [""])[-1]).suffix
        digest = hashlib.sha1(url.encode()).hexdigest()[:20]
        return self.cache_dir / f"{digest}{suffix.lower()[:8]}"

    def path(self, url: str, task_id: int | None = None) -> Path:
        """A file holding the image: under the shared document root, or the cached download (fetched now if needed).

        Raises:
            LabelStudioError: It could not be downloaded.
        """
        path = self.local_path(url)
        if path is None:
            path = self.cached_path(url)
            if not path.is_file():
                data = self.client.download(url, task_id)
                _check_image(data, url)  # an error page must never be cached as the image
                write_atomically(path, lambda handle: handle.write(data))
        return path

    def load(self, url: str, task_id: int | None = None) -> np.ndarray:
        """The image as (H, W, 3) uint8 RGB.

        Raises:
            LabelStudioError: It could not be downloaded.
            ValueError: The bytes are not an image.
        """
        return load_rgb(self.path(url, task_id), self.max_pixels)


def _check_image(data: bytes, url: str) -> None:
    """Raise ValueError unless ``data`` is an image file PIL can identify (its header; decoding comes later)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
    except Exception as err:
        raise ValueError(f"{url}: the download is not an image ({type(err).__name__})") from None
