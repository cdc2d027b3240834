"""Verification of one image: the per-image unit of work of a build.

:func:`analyze_file` / :func:`analyze_bytes` verify, hash and score one image
from its one decode (:func:`dsbuild.verify.decode.decode`). They are pure
functions of (file bytes, settings) apart from writing an accepted image into
the content-addressed store, so :mod:`dsbuild.executor` runs them in worker
processes (and another executor backend could run them anywhere). They never
raise for a bad image: they return an :class:`ImageRecord` whose ``reason``
says why the image was rejected.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from dsbuild.dedup.settings import DedupSettings
from dsbuild.verify.settings import VerifySettings
from dsbuild.store import store_bytes
from dsbuild.verify.decode import Rejected, decode, pixel_digest


@dataclass(frozen=True, kw_only=True)
class ImageRecord:
    """What verification learned about one file.

    ``ok`` images have every field; rejected ones have ``reason`` (one of
    :data:`REASONS`) and ``detail`` and whatever was known before the failure
    (bytes, the sniffed format, the declared width/height). ``warnings``: what
    decoders said about the file without rejecting it (metadata dropped, EXIF
    ignored, libjpeg's harmless notes), one line each.
    ``store_path`` is where the accepted bytes live in the content-addressed
    store (None when rejected or when no store was given).
    """

    ok: bool
    reason: str | None = None
    detail: str | None = None
    sha256: str | None = None
    bytes: int = 0
    format: str | None = None
    width: int | None = None
    height: int | None = None
    mode: str | None = None
    frames: int = 1
    pixel_sha: str | None = None
    phash: str | None = None
    quality: dict[str, float] = field(default_factory=dict)
    store_path: str | None = None
    warnings: tuple[str, ...] = ()


def _reject(reason: str, detail: str, **known) -> ImageRecord:
    return ImageRecord(ok=False, reason=reason, detail=detail, **known)


def analyze_bytes(
    data: bytes,
    *,
    verify: VerifySettings,
    dedup: DedupSettings,
    store_dir: Path | None = None,
    with_quality: bool = True,
    fsync: bool = True,
) -> ImageRecord:
    """Verify, hash and score one image given as bytes; store it when accepted (``fsync``: see :func:`store_bytes`)."""
    size = len(data)
    if size == 0:
        return _reject("empty file", "0 bytes")
    if size > verify.max_bytes:
        return _reject("too large", f"{size} bytes exceeds max_bytes {verify.max_bytes}", bytes=size)
    sha = hashlib.sha256(data).hexdigest()
    from dsbuild.verify.decoders import TimeLimitExceeded

    info: dict = {}
    try:
        img, info = decode(data, verify)
        from dsbuild.verify import hashing, quality

        gray = hashing.to_gray(img)  # converted once, shared by the hash and the blur score
        ph = hashing.compute_hash(img, kind=dedup.hash, hash_size=dedup.hash_size, gray=gray)
        scores = quality.scores(img, width=info["width"], height=info["height"], gray=gray) if with_quality else {}
        pix = info["exact_key"] if "exact_key" in info else pixel_digest(img)  # see decoders._normalise
    except Rejected as rej:
        return _reject(rej.reason, rej.detail, sha256=sha, bytes=size, **_known(rej.info))
    except TimeLimitExceeded as exc:
        known = _known(info or getattr(exc, "info", {}))
        return _reject("timeout", f"verification took longer than time_limit {verify.time_limit:g} s", sha256=sha,
                       bytes=size, **known)
    except Exception as exc:  # a decoded image that cannot be hashed is unusable
        return _reject("corrupt", f"hashing failed: {type(exc).__name__}: {exc}", sha256=sha, bytes=size, **_known(info))
    if info.get("stored_data") is not None:  # metadata dropped: keep the bytes that were decoded (see decode)
        data = info["stored_data"]
        sha, size = hashlib.sha256(data).hexdigest(), len(data)
    stored = None
    if store_dir is not None:
        stored = str(store_bytes(store_dir, sha, data, info["format"], fsync=fsync))
    return ImageRecord(
        ok=True, sha256=sha, bytes=size, format=info["format"], width=info["width"], height=info["height"],
        mode=info["mode"], frames=info["frames"], pixel_sha=pix, phash=ph, quality=scores, store_path=stored,
        warnings=tuple(info.get("warnings", ())),
    )


def _known(info: dict) -> dict:
    known = {k: info[k] for k in ("format", "width", "height", "mode", "frames") if info.get(k) is not None}
    if info.get("warnings"):
        known["warnings"] = tuple(info["warnings"])
    return known


def analyze_file(
    path: str | os.PathLike,
    *,
    verify: VerifySettings,
    dedup: DedupSettings,
    store_dir: Path | None = None,
    with_quality: bool = True,
) -> ImageRecord:
    """Read ``path`` (refusing files over ``verify.max_bytes`` before reading) and :func:`analyze_bytes` it.

    Only a regular file (or a symlink to one) is read: a named pipe, socket or device is rejected as
    ``not a file`` from its ``stat`` alone, never opened (opening a FIFO waits for a writer, reading a device
    may never end). The file is opened non-blocking and checked again, in case it was swapped meanwhile.
    """
    from dsbuild.formats import Refused, read_regular

    try:
        data = read_regular(path, verify.max_bytes)
    except Refused as refused:
        extra = {"bytes": refused.info["bytes"]} if "bytes" in refused.info else {}
        return _reject(refused.reason, refused.detail, **extra)
    return analyze_bytes(data, verify=verify, dedup=dedup, store_dir=store_dir, with_quality=with_quality)


