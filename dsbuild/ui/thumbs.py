"""Thumbnails of the review app: made once per stored image and size, cached beside the store, served by image id.

The cache is ``thumbs/<size>/<sha256[:2]>/<sha256>.jpg`` beside the catalog: keyed by
the content hash the catalog holds (never by a name from a request), each file a
JPEG of at most ``size`` px a side (a few KB), written atomically. The image is
opened by :func:`dsbuild.render.thumbs.thumbnail`, the reports' one thumbnail
maker (EXIF orientation, alpha on white, decompression-bomb guard).
"""

from __future__ import annotations

import base64
import re
import secrets
from pathlib import Path

from dsbuild.render.thumbs import thumbnail
from dsbuild.store import write_replacing

_SHA256 = re.compile(r"[0-9a-f]{64}")


def thumb_path(cache_dir: Path, sha256: str, size: int) -> Path:
    """Where the ``size`` px thumbnail of content ``sha256`` lives in ``cache_dir`` (ValueError for a bad hash)."""
    if not _SHA256.fullmatch(sha256 or ""):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return Path(cache_dir) / str(int(size)) / sha256[:2] / f"{sha256}.jpg"


def cached_thumbnail(cache_dir: Path, sha256: str, path: str | Path, size: int) -> bytes | None:
    """The JPEG bytes of the ≤``size`` px thumbnail of the stored image ``path`` (content ``sha256``).

    Made on first use and cached (see the module docstring); None when the stored file
    is missing or unreadable (a per-image outcome, not an exception).
    """
    try:
        cached = thumb_path(cache_dir, sha256, size)
    except ValueError:
        return None
    try:
        return cached.read_bytes()
    except OSError:
        pass
    thumb = thumbnail(path, size=size)
    if thumb is None:
        return None
    data = base64.b64decode(thumb.uri.split(",", 1)[1])
    try:
        write_replacing(cached, data, cached.with_name(f".tmp-{secrets.token_hex(4)}-{cached.name}"), fsync=False)
    except OSError:
        pass  # a read-only cache folder: serve the thumbnail uncached
    return data
