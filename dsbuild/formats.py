"""The one format table: magic bytes → format name, format family → file extension, and what Pillow may open.

Every path that reads an image file decides what it is here, from its content,
never from its name or a Content-Type: verification (:mod:`dsbuild.verify`),
the downloader's early reject (:mod:`dsbuild.fetch`), the store and export
(extensions), predict and thumbnails (:func:`open_image`).

* :data:`FAMILIES` — the formats a manifest may allow (``[verify] formats``),
  each with the names Pillow gives its variants and the one extension files of
  that family get (an MPO camera JPEG is JPEG and is stored as ``.jpg``;
  a BigTIFF is TIFF and is stored as ``.tif``).
* :func:`sniff` — the format named by the first bytes: a family, another known
  image format (EPS, PSD, …: never decoded), or ``HTML``/``SVG``/``XML``/``TEXT``.
* :func:`identify` — for content :func:`sniff` does not know, Pillow's name and
  declared size of it, from its header only (so that a TGA is "unsupported
  format: TGA", not "not an image"); nothing is decoded and no plugin that
  starts another program is ever asked.
* :func:`open_image` — the one way to open an untrusted image file outside a
  build: sniffed, allow-listed, size-checked, opened with its family's Pillow
  reader only; anything else raises :class:`Refused` with a reason and detail
  in verification's vocabulary.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

TEXTLIKE = ("HTML", "SVG", "XML", "TEXT")


@dataclass(frozen=True)
class Family:
    """An allowed-able image format: its name, Pillow's names for it and its variants, its file extension."""

    name: str
    pillow: tuple[str, ...]
    extension: str


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("JPEG", ("JPEG", "MPO"), "jpg"),
        Family("PNG", ("PNG",), "png"),
        Family("GIF", ("GIF",), "gif"),
        Family("WEBP", ("WEBP",), "webp"),
        Family("BMP", ("BMP",), "bmp"),
        Family("TIFF", ("TIFF",), "tif"),
    )
}
"""Family name → :class:`Family`; the names are the manifest's ``[verify] formats`` values."""

_FAMILY_OF_PILLOW = {name: f.name for f in FAMILIES.values() for name in f.pillow}

_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),  # BigTIFF
    (b"MM\x00+", "TIFF"),
    (b"%!PS", "EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"8BPS", "PSD"),
    (b"%PDF", "PDF"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG2000"),
    (b"\xff\x4f\xff\x51", "JPEG2000"),
    (b"SIMPLE  =", "FITS"),
    (b"DDS ", "DDS"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x00\x00\x02\x00", "CUR"),
    (b"qoif", "QOI"),
    (b"icns", "ICNS"),
)
_DIB_HEADER_SIZES = (12, 16, 40, 52, 56, 64, 108, 124)
_FTYP = {b"avif": "AVIF", b"avis": "AVIF", b"heic": "HEIF", b"heix": "HEIF", b"mif1": "HEIF", b"msf1": "HEIF"}


def sniff(head: bytes) -> str | None:
    """The format named by the first bytes of a file (give at least 64), or None when unknown.

    Returns a :data:`FAMILIES` name for the allowed-able formats, another image
    format's name (``EPS``, ``PSD``, ``PDF``, ``JPEG2000``, ``ICO``, ``PPM``,
    ``AVIF``, …) or ``HTML``/``SVG``/``XML``/``TEXT`` for markup and text. BMP
    needs ``BM`` and a known header size (text starting with "BM" is text).
    """
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:2] == b"BM" and len(head) >= 18 and int.from_bytes(head[14:18], "little") in _DIB_HEADER_SIZES:
        return "BMP"
    if len(head) >= 3 and head[:1] == b"P" and head[1:2] in b"1234567" and head[2:3] in b" \t\r\n":
        return "PPM"  # netpbm (PBM/PGM/PPM/PAM)
    if head[4:8] == b"ftyp" and head[8:12] in _FTYP:
        return _FTYP[head[8:12]]
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<script", b"<meta", b"<title", b"<div")):
        return "HTML"
    if text.startswith(b"<svg") or (text.startswith((b"<?xml", b"<!--", b"<!doctype svg")) and b"<svg" in text):
        return "SVG"
    if text.startswith((b"<?xml", b"<")):
        return "XML"
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head[:256]):
        return "TEXT"
    return None


def family(fmt: str | None) -> str | None:
    """The family of a sniffed name or of a Pillow format name (``MPO`` → ``JPEG``); None when not a family."""
    if fmt is None:
        return None
    fmt = fmt.upper()
    return fmt if fmt in FAMILIES else _FAMILY_OF_PILLOW.get(fmt)


def extension(fmt: str | None) -> str:
    """The file extension (without dot) of a family or Pillow format name; ``img`` for anything else."""
    fam = family(fmt)
    return FAMILIES[fam].extension if fam else "img"


# Readers identify() never asks (PDF is write-only in Pillow; WMF/EMF hand files to a platform handler on load).
# EPS is asked: its reader parses the header text only; Ghostscript runs on load(), which identify never calls.
_NEVER_IDENTIFY = frozenset({"PDF", "WMF", "EMF"})


def identify(data: bytes) -> tuple[str, int | None, int | None] | None:
    """(Pillow's format name, declared width, declared height) of ``data``, or None when Pillow knows no such file.

    Reads headers only (``Image.open``, never ``load``), for formats outside
    the families; warnings are silenced (the caller only wants a name).
    """
    import warnings

    from PIL import Image

    Image.init()
    names = [name for name in Image.OPEN if name not in _NEVER_IDENTIFY and family(name) is None]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data), formats=names) as im:
                width, height = im.size
                return str(im.format), int(width), int(height)
    except Exception:  # noqa: BLE001 - any reader's failure means "not identified"
        return None


class Refused(Exception):
    """A file that :func:`open_image` will not open: ``reason`` (verification's vocabulary) and ``detail``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def check_content(head: bytes, allowed: tuple[str, ...], data_for_identify: bytes | None = None) -> str:
    """The family of a file whose first bytes are ``head``, if ``allowed``; else raise :class:`Refused`.

    ``data_for_identify``: the whole file, to name an unknown format through
    :func:`identify` (without it an unknown format is "not an image").
    """
    allowed = tuple(a.upper() for a in allowed)
    fmt = sniff(head)
    if fmt in FAMILIES and fmt in allowed:
        return fmt
    if fmt not in FAMILIES and data_for_identify is not None and fmt not in ("HTML", "SVG"):
        known = identify(data_for_identify)
        if known is not None and family(known[0]) is None:
            fmt = known[0]
    if fmt is None:
        raise Refused("not an image", "unrecognised content")
    if fmt in TEXTLIKE:
        raise Refused("not an image", f"content is {fmt.lower()}")
    raise Refused("unsupported format", f"{fmt} is not in the allowed formats ({', '.join(allowed)})")


def open_image(path: str | os.PathLike, *, allowed: tuple[str, ...] = tuple(FAMILIES), max_pixels: int = 89_478_485,
               max_bytes: int = 20_000_000):
    """Open an untrusted image file for reading pixels: sniffed, allow-listed, size-checked, its family's reader only.

    Returns a lazy ``PIL.Image.Image`` (call ``load()`` or convert it; close it
    when done). Raises :class:`Refused` (``reason``, ``detail``) for a missing
    or unreadable file, content outside ``allowed``, a file over ``max_bytes``
    or a declared size over ``max_pixels`` — before anything is decoded, and
    without ever handing the file to a reader of another format (an EPS named
    ``.jpg`` never reaches Ghostscript).
    """
    from PIL import Image

    try:
        size = os.stat(path).st_size
        if size > max_bytes:
            raise Refused("too large", f"{size} bytes exceeds max_bytes {max_bytes}")
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except FileNotFoundError:
        raise Refused("unreadable", "no such file") from None
    except OSError as exc:
        raise Refused("unreadable", exc.strerror or str(exc)) from None
    if not data:
        raise Refused("empty file", "0 bytes")
    fam = check_content(data[:512], allowed, data)
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # the size is checked below, with the numbers in the message; open reads headers only
    try:
        img = Image.open(io.BytesIO(data), formats=FAMILIES[fam].pillow)
    except Exception as exc:  # noqa: BLE001 - the family's reader refused its header
        raise Refused("corrupt", f"{fam} header cannot be read ({type(exc).__name__})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    width, height = img.size
    if width * height > max_pixels:
        img.close()
        raise Refused("decompression bomb", f"{width}×{height} = {width * height} pixels exceeds max_pixels {max_pixels}")
    return img
