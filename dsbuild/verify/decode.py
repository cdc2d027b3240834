"""Decoding: every image is decoded once, fully, under limits, or rejected with a reason.

:func:`decode` sniffs the format from the magic bytes, checks the allow-list
and the pixel limits *before* decoding, then decodes and normalises the image
(:func:`normalise`); a bad file raises :class:`Rejected` with a short reason
(one of :data:`REASONS`). :mod:`dsbuild.verify.analyze` builds the per-image
record on top of it.

The one decode is shared by verification, pixel hashing, perceptual hashing
and quality scores. JPEGs are decoded with Pillow's draft mode (DCT scaling)
to at least ``ANALYSIS_SIDE`` pixels: the whole entropy-coded stream is still
read, so truncation and corruption are still detected, but the IDCT and colour
conversion run on a fraction of the pixels.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from contextlib import contextmanager
from typing import Iterator

from dsbuild.manifest import VerifySettings

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
)

ANALYSIS_SIDE = 128
"""Smallest side that JPEG draft decoding keeps; enough for 32×32 hashes and 64 px blur scores.

Measured by ``bench/hashing.py`` on 1024×768…1600×1200 photos: phash vs a full decode p95 2 bits
(the same at 256), and 1.4 ms less per image than at 256."""

_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"%!PS", "EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"8BPS", "PSD"),
    (b"%PDF", "PDF"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG2000"),
    (b"\xff\x4f\xff\x51", "JPEG2000"),
    (b"SIMPLE  =", "FITS"),
    (b"DDS ", "DDS"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x0a\x05\x01", "PCX"),
    (b"\x0a\x03\x01", "PCX"),
    (b"\x0a\x02\x01", "PCX"),
    (b"\x0a\x00\x01", "PCX"),
)


def sniff(head: bytes) -> str | None:
    """The image format named by the magic bytes in ``head``, or None.

    Never trusts extensions or Content-Type. HTML/XML/SVG/text come back as
    ``"HTML"``/``"SVG"``/``"TEXT"`` so that reasons can say what the file was.
    """
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if len(head) >= 3 and head[:1] == b"P" and head[1:2] in b"1234567" and head[2:3] in b" \t\r\n":
        return "PPM"  # netpbm (PBM/PGM/PPM/PAM): an image, just not an allowed one
    if len(head) >= 12 and head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis", b"heic", b"heix", b"mif1"):
        return "AVIF/HEIF"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<script")):
        return "HTML"
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in head.lower()):
        return "SVG"
    if text.startswith((b"<?xml", b"<")):
        return "XML"
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head[:256]):
        return "TEXT"
    return None


def normalise(img):
    """Return ``img`` as RGB or L (8-bit), EXIF orientation applied, alpha composited on white.

    Handles CMYK, P/PA (palettes, incl. transparency), LA, RGBA, 1, I;16, I and F.
    """
    from PIL import Image, ImageOps

    if img.getexif().get(0x0112, 1) not in (None, 1):  # exif_transpose copies the image even when upright
        img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode in ("RGB", "L"):
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") else max(float(arr.max()), 1.0)
        arr = np.clip(arr / hi * 255.0, 0, 255).astype("uint8")
        return Image.fromarray(arr, mode="L")
    if mode == "1":
        return img.convert("L")
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode(data: bytes, settings: VerifySettings, *, analysis_side: int | None = ANALYSIS_SIDE):
    """Decode ``data`` under ``settings``; return ``(image, info)`` or raise ``Rejected``.

    ``image`` is normalised (see :func:`normalise`), possibly reduced by JPEG draft
    mode to at least ``analysis_side`` pixels on its shorter side (None: full size).
    ``info`` has format, width, height (original), mode (original), frames.
    """
    from PIL import Image

    fmt = sniff(data[:512])
    allowed = tuple(f.upper() for f in settings.formats)
    if fmt is None:
        raise Rejected("not an image", "unrecognised content")
    if fmt in ("HTML", "SVG", "XML", "TEXT"):
        raise Rejected("not an image", f"content is {fmt.lower()}")
    if fmt not in allowed:
        raise Rejected("unsupported format", f"{fmt} is not in the allowed formats ({', '.join(allowed)})")

    with warnings.catch_warnings(), _pixel_limit(settings.max_pixels):
        # A DecompressionBombWarning is an error here: never decode a bomb.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            if fmt != "JPEG":  # Pillow's JPEG verify() checks nothing: the full decode below does
                with Image.open(io.BytesIO(data), formats=allowed) as probe:
                    width, height = probe.size
                    _check_pixels(width, height, settings)
                    probe.verify()  # PNG chunk CRCs; for most formats only a header check
            img = Image.open(io.BytesIO(data), formats=allowed)
            width, height = img.size
            _check_pixels(width, height, settings)
            if img.getexif().get(0x0112) in (5, 6, 7, 8):
                width, height = height, width  # EXIF turns it by 90°: record the size as displayed (and normalised)
            info = {"format": img.format, "width": width, "height": height, "mode": img.mode,
                    "frames": int(getattr(img, "n_frames", 1) or 1)}
            if min(width, height) < settings.min_side:
                raise Rejected("too small", f"{width}×{height} is below min_side {settings.min_side}", info)
            ratio = max(width, height) / max(1, min(width, height))
            if ratio > settings.max_aspect_ratio:
                raise Rejected("odd aspect ratio", f"{ratio:.1f}:1 exceeds max_aspect_ratio {settings.max_aspect_ratio}", info)
            if img.format == "JPEG" and analysis_side:
                img.draft("RGB", (analysis_side, analysis_side))
            img.load()  # the full decode: truncation and corrupt data surface here
            return normalise(img), info
        except Rejected:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise Rejected("decompression bomb", str(exc)) from None
        except OSError as exc:
            text = str(exc)
            if "truncated" in text or "premature end" in text.lower():
                raise Rejected("truncated", text) from None
            raise Rejected("corrupt", text or type(exc).__name__) from None
        except Exception as exc:
            # Hostile files raise SyntaxError (bad PNG CRC), ValueError, EOFError, IndexError,
            # struct.error, AssertionError, MemoryError, ... (Pillow's fuzzers list them all).
            raise Rejected("corrupt", f"{type(exc).__name__}: {exc}") from None


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


def _check_pixels(width: int, height: int, settings: VerifySettings) -> None:
    pixels = max(1, width) * max(1, height)
    if pixels > settings.max_pixels:
        raise Rejected("decompression bomb", f"{width}×{height} = {pixels} pixels exceeds max_pixels {settings.max_pixels}")


class Rejected(Exception):
    """A file that fails verification: ``reason`` (one of :data:`REASONS`), ``detail`` and what was known (``info``)."""

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


def load_rgb(path: str | os.PathLike):
    """Open an image for training/prediction: EXIF orientation applied, RGB, first frame."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        out = normalise(img)
    return out.convert("RGB") if out.mode != "RGB" else out
