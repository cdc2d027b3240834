"""Verification: decode every image once, fully, under limits; reject with a reason.

:func:`analyze_file` is the per-image unit of work of a build. It is a pure
function of (file bytes, settings) apart from writing an accepted image into
the content-addressed store, so it runs in worker processes here and could run
on Ray/Dask later. It never raises for a bad image: it returns an
:class:`ImageRecord` whose ``reason`` says why the image was rejected.

The one decode (:mod:`dsbuild.decoders`: content sniffed, structure checked,
every frame's size, every decoder message) is shared by verification, pixel
hashing, perceptual hashing and quality scores. JPEGs are decoded with DCT
scaling (Pillow's draft mode, bit for bit) to at least ``ANALYSIS_SIDE``
pixels: the whole entropy-coded stream is still read, so truncation and
corruption are still detected, but the IDCT and colour conversion run on a
fraction of the pixels.
"""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from dsbuild.decoders import normalise  # noqa: F401 - public here too: training and predict normalise with it
from dsbuild.manifest import DedupSettings, VerifySettings
from dsbuild.store import store_bytes

# Reasons are short, stable categories (GROUP BY friendly); details go to ``detail``.
REASONS = (
    "empty file",
    "too large",
    "not an image",
    "unsupported format",
    "decompression bomb",
    "corrupt",
    "truncated",
    "too small",
    "odd aspect ratio",
    "unreadable",
    "timeout",
)

ANALYSIS_SIDE = 128
"""Smallest side that JPEG draft decoding keeps; enough for 32×32 hashes and 64 px blur scores.

Measured by ``bench/hashing.py`` on 1024×768…1600×1200 photos: phash vs a full decode p95 2 bits
(the same at 256), and 1.4 ms less per image than at 256."""


def sniff(head: bytes) -> str | None:
    """The format named by the magic bytes in ``head`` (see :func:`dsbuild.formats.sniff`, the one table)."""
    from dsbuild.formats import sniff as _sniff

    return _sniff(head)


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


def decode(data: bytes, settings: VerifySettings, *, analysis_side: int | None = ANALYSIS_SIDE):
    """Decode ``data`` under ``settings``; return ``(image, info)`` or raise ``_Rejected``.

    ``image`` is normalised (see :func:`normalise`), possibly reduced by JPEG draft
    mode to at least ``analysis_side`` pixels on its shorter side (None: full size).
    ``info`` has format (the family: MPO is JPEG), width and height (as displayed,
    at full size), mode (original), frames, warnings. The rules (structure before
    pixels, every frame's size, every decoder message, metadata never costs the
    picture) are :func:`dsbuild.decoders.decode_checked`'s.
    """
    from dsbuild.decoders import Rejected, decode_checked

    try:
        return decode_checked(data, settings, analysis_side=analysis_side)
    except Rejected as rej:
        raise _Rejected(rej.reason, rej.detail, rej.info) from None


@contextmanager
def _pixel_limit(max_pixels: int) -> Iterator[None]:
    """Pillow's bomb limit is a process global: set it for one decode only (training and reports share the process)."""
    from PIL import Image

    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


class _Rejected(Exception):
    def __init__(self, reason: str, detail: str, info: dict | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.info = info or {}


def pixel_digest(img) -> str:
    """sha256 of the decoded pixels (mode, size, raw bytes): equal for the same picture in any lossless encoding."""
    h = hashlib.sha256()
    h.update(f"{img.mode}:{img.size[0]}x{img.size[1]}:".encode())
    h.update(img.tobytes())
    return h.hexdigest()


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
    from dsbuild.decoders import TimeLimitExceeded

    info: dict = {}
    try:
        img, info = decode(data, verify)
        from dsbuild import hashing, quality

        gray = hashing.to_gray(img)  # converted once, shared by the hash and the blur score
        ph = hashing.compute_hash(img, kind=dedup.hash, hash_size=dedup.hash_size, gray=gray)
        scores = quality.scores(img, width=info["width"], height=info["height"], gray=gray) if with_quality else {}
        pix = pixel_digest(img)
    except _Rejected as rej:
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
    """Read ``path`` (refusing files over ``verify.max_bytes`` before reading) and :func:`analyze_bytes` it."""
    try:
        size = os.stat(path).st_size
        if size > verify.max_bytes:
            return _reject("too large", f"{size} bytes exceeds max_bytes {verify.max_bytes}", bytes=size)
        with open(path, "rb") as fh:
            data = fh.read(verify.max_bytes + 1)
    except OSError as exc:
        return _reject("unreadable", exc.strerror or str(exc))
    return analyze_bytes(data, verify=verify, dedup=dedup, store_dir=store_dir, with_quality=with_quality)


def load_rgb(path: str | os.PathLike, *, verify: VerifySettings | None = None):
    """Open an image for training/prediction: EXIF orientation applied, RGB, first frame.

    Through :func:`dsbuild.formats.open_image`: the content is sniffed and must
    be an allowed format (``verify.formats``, default every family) within
    ``verify.max_pixels``/``max_bytes``; anything else raises
    :class:`dsbuild.formats.Refused` before a decoder sees it (an EPS named
    ``.jpg`` never reaches Ghostscript).
    """
    from dsbuild.formats import open_image

    v = verify or VerifySettings()
    with _pixel_limit(v.max_pixels), open_image(path, allowed=v.formats, max_pixels=v.max_pixels,
                                                max_bytes=v.max_bytes) as img:
        img.load()
        out = normalise(img)
    return out.convert("RGB") if out.mode != "RGB" else out
