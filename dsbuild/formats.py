"""Image formats: the one magic-byte sniff table and the format ↔ file extension map.

Everything that takes bytes from outside names formats the same way, Pillow's
format names (``"JPEG"``, ``"PNG"``, ...), and never trusts a file extension or
a Content-Type: the downloader (:mod:`dsbuild.fetch`) sniffs the first bytes of
a body before writing it, verification (:mod:`dsbuild.verify.decode`) sniffs
before decoding and hands Pillow only the allowed formats, the store
(:mod:`dsbuild.store`) and the exporters name files with :data:`EXTENSIONS`.

:func:`sniff` classifies the first bytes (64 are enough) as an image format —
allowed (:data:`IMAGE_FORMATS`) or not (EPS, PSD, ICO, AVIF, ...: formats whose
parsers dsbuild never runs) — or as what else the bytes are (``HTML``, ``SVG``,
``TEXT``, ``PDF``, ...), so that a rejection can say what the file was.
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
"""The allow-list: the only formats whose decoders dsbuild runs (a dataset may narrow it with ``verify.formats``)."""

EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif"}
"""File extension (no dot) of each allowed format, for stored, downloaded and exported files."""

SNIFF_BYTES = 64
"""Bytes :func:`sniff` needs to classify any content (more are ignored, except for the text check)."""

_DIB_HEADER_SIZES = (12, 16, 40, 52, 56, 64, 108, 124)  # a BMP's second header: "BM" alone is also plain text
_FTYP_BRANDS = {b"avif": "AVIF", b"avis": "AVIF", b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF", b"msf1": "HEIF"}

# Image formats by signature, allowed or not: (magic at offset 0, Pillow's format name).
_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"%!PS", "EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG2000"),
    (b"\xff\x4f\xff\x51", "JPEG2000"),
    (b"SIMPLE  =", "FITS"),
    (b"DDS ", "DDS"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x00\x00\x02\x00", "ICO"),  # CUR, the cursor variant
    (b"\x0a\x05\x01", "PCX"),
    (b"\x0a\x03\x01", "PCX"),
    (b"\x0a\x02\x01", "PCX"),
    (b"\x0a\x00\x01", "PCX"),
)
# Other content by signature: (magic, what it is).
_OTHER = (
    (b"%PDF", "PDF"),
    (b"\x1f\x8b", "GZIP"),
    (b"PK\x03\x04", "ARCHIVE"),
    (b"Rar!", "ARCHIVE"),
    (b"7z\xbc\xaf", "ARCHIVE"),
)
_HTML_STARTS = (b"<!doctype html", b"<html", b"<head", b"<body", b"<script", b"<meta", b"<title", b"<div")


@dataclass(frozen=True)
class Sniffed:
    """What the first bytes of some content are.

    ``name``: an image format (Pillow's name: ``JPEG``, ``PNG``, ``EPS``, ``AVIF``, ...)
    when ``image`` is True, else what the content is instead: ``HTML``, ``SVG``,
    ``XML``, ``JSON``, ``TEXT``, ``PDF``, ``GZIP``, ``ARCHIVE``, ``VIDEO``,
    ``UNKNOWN`` or ``EMPTY``.
    """

    name: str
    image: bool

    @property
    def allowed(self) -> bool:
        """An image in :data:`IMAGE_FORMATS`."""
        return self.image and self.name in IMAGE_FORMATS


def sniff(head: bytes) -> Sniffed:
    """Classify ``head`` (the first bytes of a file or body; :data:`SNIFF_BYTES` suffice) by its magic bytes."""
    if not head:
        return Sniffed("EMPTY", False)
    for magic, name in _SIGNATURES:
        if head.startswith(magic):
            return Sniffed(name, True)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return Sniffed("WEBP", True)
    if head[:2] == b"BM" and len(head) >= 26 and int.from_bytes(head[14:18], "little") in _DIB_HEADER_SIZES:
        return Sniffed("BMP", True)
    if len(head) >= 3 and head[:1] == b"P" and head[1:2] in b"1234567" and head[2:3] in b" \t\r\n":
        return Sniffed("PPM", True)  # netpbm (PBM/PGM/PPM/PAM)
    if head[4:8] == b"ftyp":
        brand = _FTYP_BRANDS.get(head[8:12].strip().lower())
        return Sniffed(brand, True) if brand else Sniffed("VIDEO", False)
    for magic, name in _OTHER:
        if head.startswith(magic):
            return Sniffed(name, False)
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(_HTML_STARTS):
        return Sniffed("HTML", False)
    if text.startswith(b"<svg") or (text.startswith((b"<?xml", b"<!--", b"<!doctype svg")) and b"<svg" in text):
        return Sniffed("SVG", False)
    if text.startswith(b"<?xml"):
        return Sniffed("XML", False)
    if text.startswith(b"<"):
        return Sniffed("HTML", False)
    if text[:1] in (b"{", b"["):
        return Sniffed("JSON", False)
    decoded = _utf8(head)
    if decoded is not None and all(c.isprintable() or c in "\r\n\t" for c in decoded):
        return Sniffed("TEXT", False)
    return Sniffed("UNKNOWN", False)


def extension(name: str | None) -> str:
    """The file extension (no dot) of format ``name``; ``img`` for anything not in :data:`EXTENSIONS`."""
    return EXTENSIONS.get((name or "").upper(), "img")


def _utf8(data: bytes) -> str | None:
    """``data`` as UTF-8, tolerating a multi-byte character cut at the end; None if not UTF-8."""
    for cut in range(4):
        try:
            return data[: len(data) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return None
