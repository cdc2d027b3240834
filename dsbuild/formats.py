"""The one format table: magic bytes → format name, format family → file extension, and what Pillow may open.

Everything that takes bytes from outside decides what they are here, from their
content, never from a file name or a Content-Type, and names formats the same
way (Pillow's names: ``"JPEG"``, ``"PNG"``, …): the downloader (:mod:`dsbuild.fetch`)
sniffs the first bytes of a body before writing it, verification
(:mod:`dsbuild.verify`) sniffs before decoding, the store (:mod:`dsbuild.store`)
and the exporters name files with :func:`extension`, predict and thumbnails open
files with :func:`open_image`.

* :data:`FAMILIES` — the formats a manifest may allow (``[verify] formats``,
  :data:`IMAGE_FORMATS`), each with the names Pillow gives its variants and the
  one extension files of that family get (an MPO camera JPEG is JPEG and is
  stored as ``.jpg``; a BigTIFF is TIFF and is stored as ``.tif``).
* :func:`sniff` — what the first bytes are (:class:`Sniffed`): a family, another
  known image format (EPS, PSD, ICO, AVIF, …: parsers dsbuild never runs), or
  what else the bytes are (``HTML``, ``SVG``, ``TEXT``, ``PDF``, ``GZIP``, …),
  so that a rejection can say what the file was.
* :func:`identify` — for content :func:`sniff` does not place among the
  families, Pillow's name and declared size of it, from its header only (so
  that a TGA is "unsupported format: TGA", not "not an image"); nothing is
  decoded and no plugin that starts another program is ever asked.
* :func:`refusal` / :func:`check_content` — the one rule for content outside
  the allow-list, in verification's vocabulary (reason, detail).
* :func:`open_image` — the one way to open an untrusted image file outside a
  build: sniffed, allow-listed, size-checked, opened with its family's Pillow
  reader only; anything else raises :class:`Refused`.
* :func:`read_regular` / :func:`not_regular` / :func:`file_kind` — the one rule for reading a user's file:
  only a regular file (or a symlink to one) is read; a named pipe, socket or device is refused from its
  ``stat`` as ``not a file`` ("a named pipe (FIFO), not a regular file"), never opened (opening a FIFO waits
  for a writer, reading /dev/zero never ends).
"""

from __future__ import annotations

import io
import os
import stat
from dataclasses import dataclass


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
        Family("WEBP", ("WEBP",), "webp"),
        Family("GIF", ("GIF",), "gif"),
        Family("BMP", ("BMP",), "bmp"),
        Family("TIFF", ("TIFF",), "tif"),
    )
}
"""Family name → :class:`Family`; the names are the manifest's ``[verify] formats`` values."""

IMAGE_FORMATS = tuple(FAMILIES)
"""The allow-list: the only formats whose decoders dsbuild runs (a dataset may narrow it with ``verify.formats``)."""

EXTENSIONS = {f.name: f.extension for f in FAMILIES.values()}
"""File extension (no dot) of each allowed format, for stored, downloaded and exported files."""

SNIFF_BYTES = 64
"""Bytes :func:`sniff` needs to classify any content (verification gives it more, for markup and text)."""

TEXTLIKE = ("HTML", "SVG", "XML", "TEXT")
"""Markup and text: never an image, though Pillow identifies a few text formats (XPM, XBM) among them."""

_FAMILY_OF_PILLOW = {name: f.name for f in FAMILIES.values() for name in f.pillow}
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
    (b"II+\x00", "TIFF"),  # BigTIFF
    (b"MM\x00+", "TIFF"),
    (b"%!PS", "EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG2000"),
    (b"\xff\x4f\xff\x51", "JPEG2000"),
    (b"SIMPLE  =", "FITS"),
    (b"DDS ", "DDS"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x00\x00\x02\x00", "CUR"),
    (b"qoif", "QOI"),
    (b"icns", "ICNS"),
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
        """An image of a family (:data:`IMAGE_FORMATS`)."""
        return self.image and self.name in FAMILIES


def sniff(head: bytes) -> Sniffed:
    """Classify ``head`` (the first bytes of a file or body; :data:`SNIFF_BYTES` suffice) by its magic bytes.

    BMP needs ``BM`` and a known header size (text starting with "BM" is text);
    text is UTF-8 of printable characters (a multi-byte character cut at the end
    of ``head`` still counts).
    """
    if not head:
        return Sniffed("EMPTY", False)
    for magic, name in _SIGNATURES:
        if head.startswith(magic):
            return Sniffed(name, True)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return Sniffed("WEBP", True)
    if head[:2] == b"BM" and len(head) >= 18 and int.from_bytes(head[14:18], "little") in _DIB_HEADER_SIZES:
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


def family(fmt: str | None) -> str | None:
    """The family of a sniffed name or of a Pillow format name (``MPO`` → ``JPEG``); None when not a family."""
    if fmt is None:
        return None
    fmt = fmt.upper()
    return fmt if fmt in FAMILIES else _FAMILY_OF_PILLOW.get(fmt)


def extension(fmt: str | None) -> str:
    """The file extension (without dot) of a family or Pillow format name (any case); ``img`` for anything else."""
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
    """Content refused before any decoder runs: ``reason`` (verification's vocabulary) and ``detail``.

    ``info``: what is known of the file — ``format`` (the sniffed or identified
    name) and, when Pillow identified it, its declared ``width`` and ``height``.
    """

    def __init__(self, reason: str, detail: str, info: dict | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.info = info or {}


def refusal(found: Sniffed, allowed: tuple[str, ...], data: bytes | None = None) -> Refused:
    """Why content sniffed as ``found`` and outside ``allowed`` (upper-case family names) is refused.

    ``data``: the whole file, to name an image format :func:`sniff` does not
    place through :func:`identify` (a TGA, an XPM written as text); without it
    unknown content is "not an image". HTML and SVG are never handed to Pillow.
    Returns (does not raise) the :class:`Refused`: ``not an image`` (``content is
    html``, ``unrecognised content``, …) or ``unsupported format`` (``TGA is not
    in the allowed formats (JPEG, PNG)``).
    """
    fmt = found.name
    info: dict = {}
    if fmt not in FAMILIES and fmt not in ("HTML", "SVG") and data is not None:
        known = identify(data)
        if known is not None:
            fmt = known[0]
            info = {"format": known[0], "width": known[1], "height": known[2]}
            return Refused("unsupported format", f"{fmt} is not in the allowed formats ({', '.join(allowed)})", info)
    if not found.image:
        what = "unrecognised content" if fmt in ("UNKNOWN", "EMPTY") else f"content is {fmt.lower()}"
        return Refused("not an image", what)
    return Refused("unsupported format", f"{fmt} is not in the allowed formats ({', '.join(allowed)})",
                   {"format": fmt})


def check_content(head: bytes, allowed: tuple[str, ...], data_for_identify: bytes | None = None) -> str:
    """The family of a file whose first bytes are ``head``, if ``allowed``; else raise :func:`refusal`'s :class:`Refused`."""
    allowed = tuple(a.upper() for a in allowed)
    found = sniff(head)
    if found.allowed and found.name in allowed:
        return found.name
    raise refusal(found, allowed, data_for_identify)


def file_kind(mode: int) -> str:
    """What a file of ``st_mode`` ``mode`` is, in words ("a named pipe (FIFO)", "a socket", ...)."""
    kinds = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"), (stat.S_ISREG, "a regular file"))
    return next((words for test, words in kinds if test(mode)), "a special file")


def not_regular(path: str | os.PathLike) -> str | None:
    """``"a named pipe (FIFO), not a regular file"`` (or socket, device, folder) when ``path`` — followed, if a
    symlink — exists and is not a regular file; None for a regular file or a path that does not exist."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    return None if stat.S_ISREG(mode) else f"{file_kind(mode)}, not a regular file"


def read_regular(path: str | os.PathLike, max_bytes: int) -> bytes:
    """The bytes of the regular file ``path`` (a symlink to one is followed), at most ``max_bytes`` + 1.

    Raises :class:`Refused`: ``not a file`` for a named pipe, socket, device or folder (from its ``stat``: it is
    never opened, or opened non-blocking and checked again in case it was swapped meanwhile), ``too large``
    (``info["bytes"]``: its size) before reading, ``unreadable`` for a missing or unreadable file.
    """
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise Refused("not a file", f"{file_kind(st.st_mode)}, not a regular file")
        if st.st_size > max_bytes:
            raise Refused("too large", f"{st.st_size} bytes exceeds max_bytes {max_bytes}", {"bytes": st.st_size})
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        with open(fd, "rb", closefd=True) as fh:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise Refused("not a file", f"{file_kind(mode)}, not a regular file")
            return fh.read(max_bytes + 1)
    except FileNotFoundError:
        raise Refused("unreadable", "no such file") from None
    except OSError as exc:
        raise Refused("unreadable", exc.strerror or str(exc)) from None


def open_image(path: str | os.PathLike, *, allowed: tuple[str, ...] = IMAGE_FORMATS, max_pixels: int = 89_478_485,
               max_bytes: int = 20_000_000):
    """Open an untrusted image file for reading pixels: sniffed, allow-listed, size-checked, its family's reader only.

    Returns a lazy ``PIL.Image.Image`` (call ``load()`` or convert it; close it
    when done). Raises :class:`Refused` (``reason``, ``detail``) for a missing
    or unreadable file, one that is not a regular file (:func:`read_regular`), content outside ``allowed``, a file over ``max_bytes``
    or a declared size over ``max_pixels`` (and, for TIFF, a strip or tile over it or far larger than its page:
    :func:`dsbuild.verify.containers.tiff_bomb`) — before anything is decoded, and
    without ever handing the file to a reader of another format (an EPS named
    ``.jpg`` never reaches Ghostscript).
    """
    from PIL import Image

    data = read_regular(path, max_bytes)
    if not data:
        raise Refused("empty file", "0 bytes")
    fam = check_content(data[:512], allowed, data)
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # the size is checked below, with the numbers in the message; open reads headers only
    try:
        Image.init()  # Pillow opens MPO through its JPEG reader and registers no "MPO" opener: asking for one fails
        img = Image.open(io.BytesIO(data), formats=[n for n in FAMILIES[fam].pillow if n in Image.OPEN])
    except Exception as exc:  # noqa: BLE001 - the family's reader refused its header
        said = "" if " object at 0x" in str(exc) or not str(exc) else f": {exc}"
        raise Refused("corrupt", f"{fam} header cannot be read ({type(exc).__name__}{said})"[:300]) from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    width, height = img.size
    if width * height > max_pixels:
        img.close()
        raise Refused("decompression bomb", f"{width}×{height} = {width * height} pixels exceeds max_pixels {max_pixels}")
    if fam == "TIFF":
        bomb = _tiff_bomb(data, max_pixels)
        if bomb:
            img.close()
            raise Refused("decompression bomb", bomb)
    return img


def _tiff_bomb(data: bytes, max_pixels: int) -> str | None:
    """Why a TIFF's strips or tiles are a decompression bomb (libtiff allocates a whole one before decoding it:
    a 64×64 page may declare a 16384×16384 tile), or None; a directory that cannot be read is the reader's."""
    from dsbuild.verify import containers

    try:
        pages = containers.tiff_directories(data)
    except containers.Damaged:
        return None
    return containers.tiff_bomb(pages, max_pixels)


def _utf8(data: bytes) -> str | None:
    """``data`` as UTF-8, tolerating a multi-byte character cut at the end; None if not UTF-8."""
    for cut in range(4):
        try:
            return data[: len(data) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return None
