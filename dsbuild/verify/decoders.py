"""The one decode of an image under verification: what every decoder said, kept with the file it said it about.

:func:`decode_checked` is verification's decode (:func:`dsbuild.verify.decode`
calls it). Its rules, in order:

1. **The content decides.** :func:`dsbuild.formats.sniff` names the format; a
   family outside the allow-list, another image format (named through
   :func:`dsbuild.formats.identify`: ``unsupported format: TGA``) or text is
   refused before any decoder runs. The file is then opened by its family's
   Pillow reader only.
2. **The structure is read before the pixels** (:mod:`dsbuild.verify.containers`):
   a chunk or directory cut short is ``truncated``; a critical PNG chunk with a
   bad checksum is ``corrupt``; an ancillary one is metadata, dropped with a
   note; the declared size of *every* frame (GIF, APNG, TIFF pages, MPO) is
   held against ``max_pixels`` — nothing is decoded to find a bomb — and so
   is every TIFF strip and tile (libtiff allocates a whole one first); a TIFF
   directory, table or strip past the end is ``truncated``; an RLE BMP's
   run-length stream is walked (overruns ``corrupt``, a cut ``truncated``).
   After a silent decode, every deflate TIFF strip/tile must end with its
   stream's Adler-32 (libtiff stops inflating once it has the rows).
3. **Every decoder message counts.** JPEGs are decoded by libjpeg-turbo through
   ``simplejpeg`` in strict mode (Pillow's own JPEG decoder silences libjpeg's
   warnings, so scan data cut short but closed with an end marker decoded as
   grey without a word); the same DCT scaling and IDCT as Pillow's draft mode,
   bit-identical pixels. A warning that means missing or corrupt data rejects
   the image with libjpeg's words; a harmless one (padding after the complete
   scan data: :func:`_extraneous_is_trailing`; an unknown JFIF revision) is
   kept as a note. The scan headers must code every coefficient (a progressive
   JPEG whose later scans are missing decodes silently). Other formats are
   decoded by Pillow with Python warnings recorded and, in worker processes,
   the C libraries' stderr (libtiff, whose JPEG codec passes libjpeg's messages
   on as ``JPEGLib: …``, classified as libjpeg's) captured per image
   (:func:`captured_stderr`). Every frame of a multi-frame file is decoded
   (:func:`_check_later_frames`); a PNG's zlib streams must hold every row.
4. **Metadata never costs the picture.** A PNG whose text or ICC chunk inflates
   past Pillow's limit is decoded without its metadata; broken EXIF is ignored
   (orientation 1); each case leaves a note in ``warnings``. In general, a
   PNG, JPEG or GIF its decoder refuses is decoded again without its ancillary
   parts (PNG ancillary chunks, JPEG APPn/COM segments but a well-formed Adobe
   APP14, GIF extension blocks; :func:`_without_ancillary`): when that copy
   passes every check the fault was metadata — the picture is kept, the copy is
   the file stored (and exported: the original is the one loaders refuse), and
   ``warnings`` names what was dropped and what the decoder said. When the copy
   fails too, its failure (about the picture data alone) is the one reported.
5. **Reasons come from facts, not wording.** A decoder exception is
   ``truncated`` when its message says the data ended (in any case or
   phrasing) and ``corrupt`` otherwise; the detail is the decoder's own words
   (prefixed ``libjpeg:``/``libtiff:`` for C libraries), never a Python repr.

Returns ``(image, info)`` where ``image`` is normalised (RGB or L, displayed
orientation, possibly DCT-reduced) and ``info`` has ``format`` (the family),
``width``/``height`` (as displayed), ``mode``, ``frames``, ``warnings``
(tuple of notes) and, when metadata had to be dropped to decode the file,
``stored_data``: the bytes decoded, which are the ones to keep (Pillow's
default open refuses the original just as it refused it here). Rejections raise :class:`Rejected` with ``reason``,
``detail`` and ``info`` (what was known: format, declared size, frames).
"""

from __future__ import annotations

import io
import os
import re
import struct
import tempfile
import warnings
from contextlib import contextmanager
from typing import Iterator

from dsbuild import formats
from dsbuild.verify import containers


class TimeLimitExceeded(BaseException):
    """Raised by a worker's SIGALRM handler when one image has taken ``[verify] time_limit`` seconds.

    A BaseException, so that no ``except Exception`` on the way (decoders raise
    anything, and are caught broadly) swallows it. ``info``: what was known.
    """

    info: dict = {}


class Rejected(Exception):
    """A file verification refuses: ``reason`` (one of verify.REASONS), ``detail``, ``info`` (what was known)."""

    def __init__(self, reason: str, detail: str, info: dict | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.info = info or {}


# --------------------------------------------------------------------------- stderr of C libraries, per image

_CAPTURE: dict[str, object] = {"enabled": False, "file": None}


def capture_stderr_in_this_process() -> None:
    """Send file descriptor 2 to a per-image capture from now on (worker processes only: the main one prints there)."""
    _CAPTURE["enabled"] = True


class _Captured:
    """Lines a C library wrote to fd 2 during a :func:`captured_stderr` block (``lines()`` reads them so far)."""

    def __init__(self, fh) -> None:
        self.fh = fh

    def lines(self) -> list[str]:
        if self.fh is None:
            return []
        self.fh.seek(0)
        text = self.fh.read(65536).decode("utf-8", "replace")
        return [line.strip() for line in text.splitlines() if line.strip()]


@contextmanager
def captured_stderr() -> Iterator[_Captured]:
    """What C libraries write to fd 2 inside the block (nothing unless :func:`capture_stderr_in_this_process` ran).

    One temporary file per process, emptied per image: a dup2 there and back
    costs microseconds, and nothing a decoder says reaches the terminal without
    the file it belongs to.
    """
    if not _CAPTURE["enabled"]:
        yield _Captured(None)
        return
    fh = _CAPTURE["file"]
    if fh is None:
        fh = _CAPTURE["file"] = tempfile.TemporaryFile()
    fh.seek(0)
    fh.truncate()
    saved = os.dup(2)
    try:
        os.dup2(fh.fileno(), 2)
        yield _Captured(fh)
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _clean(line: str) -> str:
    return re.sub(r"^(tempfile\.tif|<unknown>|\S+\.tiff?): ", "", line)


# --------------------------------------------------------------------------- what decoders say

_TRUNCATED = re.compile(r"truncat|premature end|unexpected end|end of (file|stream|data)|\beof\b|not enough data|"
                        r"short read|incomplete|no more (data|images)|missing frame data|read error", re.I)
# libjpeg warnings (jerror.h JWRN_*) that leave every pixel as encoded: noted, the image kept
_JPEG_HARMLESS = re.compile(r"unknown JFIF revision|Unknown Adobe color transform|bad ICC marker|too many scanlines",
                            re.I)
# JWRN_EXTRANEOUS_DATA: bytes libjpeg skipped to reach a marker. Harmless only when they follow the complete
# entropy-coded data (see _extraneous_is_trailing); bytes inside it desynchronise the decode.
_JPEG_EXTRANEOUS = re.compile(r"(\d+) extraneous bytes before marker 0x([0-9a-f]{2})", re.I)
# libtiff's JPEG codec passes libjpeg's messages on (tif_jpeg.c: "JPEGLib: <libjpeg's words>"), and its own
# decode functions name themselves: both are the JPEG decoder speaking, classified as libjpeg's messages are.
_TIFF_JPEG = re.compile(r"^(?:JPEGLib|JPEG\w*Decode\w*|JPEGPreDecode|OJPEG\w*):\s*(.*)$", re.I)
# other C-library lines that say the data is damaged (a TIFF tag warning, say, is only a note)
_HARMFUL = re.compile(r"corrupt|truncat|premature|bad (huffman|code)|invalid|read error|not enough data|"
                      r"code not yet in table", re.I)


def _stderr_fault(line: str) -> str | None:
    """The reason (``truncated``/``corrupt``) a C library's stderr line rejects the image for, or None for a note."""
    jpeg = _TIFF_JPEG.match(_clean(line))
    if jpeg:  # libjpeg inside TIFF: every error and warning is damage but the ones that leave the pixels as encoded
        text = jpeg.group(1)
        return None if _JPEG_HARMLESS.search(text) else _reason(text)
    return _reason(line) if _HARMFUL.search(line) else None


def _reason(text: str) -> str:
    return "truncated" if _TRUNCATED.search(text) else "corrupt"


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    if not text or re.search(r"object at 0x|<_io\.", text):
        return type(exc).__name__
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
        return text
    return f"{type(exc).__name__}: {text}"


# --------------------------------------------------------------------------- the decode


def decode_checked(data: bytes, settings, *, analysis_side: int | None = 128):
    """Decode ``data`` under ``settings`` (a VerifySettings); see the module doc. Raises :class:`Rejected`."""
    from PIL import Image

    allowed = tuple(f.upper() for f in settings.formats)
    found = formats.sniff(data[:512])
    if not found.allowed or found.name not in allowed:
        refused = formats.refusal(found, allowed, data)
        raise Rejected(refused.reason, refused.detail, refused.info)
    fmt = found.name
    info: dict = {"format": fmt, "frames": 1}
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as said, captured_stderr() as stderr, pixel_limit(settings.max_pixels):
        warnings.simplefilter("always")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img, info = _decode(fmt, data, settings, analysis_side, info, notes, stderr)
        except Rejected as rej:
            rej.info = {**info, **rej.info}
            raise
        except TimeLimitExceeded as exc:
            exc.info = dict(info)
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise Rejected("decompression bomb", str(exc), info) from None
        except MemoryError:
            raise Rejected("decompression bomb", "decoding needs more memory than there is", info) from None
        except Exception as exc:  # noqa: BLE001 - hostile files raise anything (Pillow's fuzzers list them all)
            text = "; ".join(f"{_lib(fmt)}: {_clean(s)}" for s in stderr.lines()) or _describe(exc)
            reason = "truncated" if isinstance(exc, EOFError) else _reason(text + " " + str(exc))
            raise Rejected(reason, text, info) from None
    seen = []
    for w in said:
        if issubclass(w.category, ResourceWarning):
            continue
        seen.append(f"Pillow: {w.message}")
    for line in stderr.lines():
        text = f"{_lib(fmt)}: {_clean(line)}"
        fault = _stderr_fault(line)
        if fault:
            raise Rejected(fault, text, info)
        seen.append(text)
    info["warnings"] = tuple(dict.fromkeys(notes + seen))
    return img, info


def _lib(fmt: str) -> str:
    return {"TIFF": "libtiff", "JPEG": "libjpeg", "WEBP": "libwebp"}.get(fmt, "decoder")


def _check_pixels(width: int, height: int, settings, what: str = "") -> None:
    pixels = max(1, width) * max(1, height)
    if pixels > settings.max_pixels:
        raise Rejected("decompression bomb", f"{what}{width}×{height} = {pixels} pixels exceeds max_pixels {settings.max_pixels}")


def _header_size(fmt: str, data: bytes) -> tuple[int, int] | None:
    """Width and height from the first header bytes (PNG IHDR, GIF screen), for rejections before Pillow opens the file."""
    import struct

    if fmt == "PNG" and len(data) >= 24 and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    if fmt == "GIF" and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    return None


_TIFF_BYTES_PER_PIXEL = {"L": 1, "P": 1, "LA": 2, "RGB": 3, "RGBA": 4, "CMYK": 4, "I;16": 2, "I;16B": 2, "F": 4, "I": 4}


def _check_tiff_deflate(data: bytes, pages, settings, img) -> None:
    """After libtiff decoded a TIFF without a word: every deflate strip/tile a whole zlib stream with its checksum
    (:func:`containers.tiff_check_deflate`). After, so that what libtiff reports is said in libtiff's words.
    ``img``: the first page as Pillow loaded it. When its bytes are as many as the page's samples (L, RGB, RGBA,
    CMYK, I;16, F … as stored), they are passed on: a strip whose rows there sum to its stream's Adler-32 is not
    inflated again (any other is: the sum is a shortcut, never a verdict)."""
    if not any(page.compression in (8, 32946) for page in pages):
        return
    decoded = None
    first = pages[0] if pages else None
    if img is not None and first is not None and img.size == (first.width, first.height) and len(set(first.bits)) == 1:
        per_pixel = _TIFF_BYTES_PER_PIXEL.get(img.mode)
        if per_pixel and first.samples * first.bits[0] == 8 * per_pixel:
            decoded = img.tobytes()
    try:
        containers.tiff_check_deflate(data, pages, settings.max_pixels, decoded)
    except containers.Damaged as exc:
        raise Rejected(exc.reason, exc.detail) from None


def _open(fmt: str, data: bytes):
    """Open with the family's Pillow reader only; a refused header raises the reader's own exception (not a repr)."""
    from PIL import Image, UnidentifiedImageError

    Image.init()  # every plugin registered: Pillow opens MPO through its JPEG reader, and has no "MPO" opener
    names = tuple(name for name in formats.FAMILIES[fmt].pillow if name in Image.OPEN)
    try:
        return Image.open(io.BytesIO(data), formats=names)
    except UnidentifiedImageError:
        Image.init()
        factory = Image.OPEN[names[0]][0]
        factory(io.BytesIO(data), None)  # raises what the reader found wrong
        raise


def _decode(fmt, data, settings, analysis_side, info, notes, stderr, *, retry=True):
    from PIL import Image

    size = _header_size(fmt, data)
    if size is not None:
        info["width"], info["height"] = size
        _check_pixels(*size, settings)
    decode_data = data
    scan = None  # a PNG's chunk walk (containers.png_scan)
    frames: list[tuple[str, int, int]] = []  # (what, width, height) of every frame whose size is declared apart
    pages: list[tuple[int, int]] = []
    try:
        if fmt == "PNG":
            scan = containers.png_scan(data)
            notes.extend(scan.notes)
            decode_data = scan.data
            for k, (x, y, w, h) in enumerate(scan.frames, start=1):
                frames.append((f"frame {k} declares " if k > 1 else "", x + w, y + h))
            info["frames"] = max(1, len(scan.frames))
        elif fmt == "GIF":
            gif = containers.gif_frames(data)
            for k, (left, top, w, h) in enumerate(gif, start=1):
                frames.append((f"frame {k} extends the image to ", left + w, top + h))
            info["frames"] = max(1, len(gif))
        elif fmt == "TIFF":
            pages = containers.tiff_directories(data)
            if pages:
                info["width"], info["height"] = pages[0].width, pages[0].height
            for page in pages:
                frames.append((f"frame {page.number} (page) declares " if page.number > 1 else "", page.width,
                               page.height))
            info["frames"] = max(1, len(pages))
        elif fmt == "BMP":
            containers.bmp_check_rle(data)
    except containers.Damaged as exc:
        raise Rejected(exc.reason, exc.detail) from None
    for what, w, h in frames:  # before any reader runs: a reader may allocate for a frame's size
        _check_pixels(w, h, settings, what)
    if fmt == "TIFF":
        bomb = containers.tiff_bomb(pages, settings.max_pixels)
        if bomb:
            raise Rejected("decompression bomb", bomb)
    if fmt == "PNG":
        try:
            containers.png_check_streams(scan, skip_image=not scan.interlaced and not scan.frames)
        except containers.Damaged as exc:
            raise Rejected(exc.reason, exc.detail) from None

    mark = len(notes)
    try:
        out, width, height, decode_data = _pixels(fmt, decode_data, settings, analysis_side, info, notes, scan)
    except (Rejected, MemoryError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise
    except Exception as exc:  # noqa: BLE001 - the decoder refused the file: was it only its metadata?
        if not retry:
            raise
        rescued = _without_ancillary(fmt, decode_data, settings, analysis_side, stderr, exc)
        if rescued is None:
            raise
        out, sub_info, sub_notes = rescued
        del notes[mark:]  # what the refused attempt noted is about a file that is not the one kept
        notes.extend(sub_notes)
        return out, sub_info
    info.update(width=width, height=height)
    first_page = info.pop("tiff_decoded", None)  # a TIFF's first page as loaded (see _check_tiff_deflate)
    if info.get("frames", 1) > 1 and fmt in ("GIF", "TIFF", "JPEG", "WEBP"):
        _check_later_frames(fmt, decode_data, settings, notes)
    if fmt == "PNG" and scan is not None and scan.frames:
        _check_apng_palettes(scan, width * height, settings, notes)
    if fmt == "TIFF":
        _check_tiff_deflate(decode_data, pages, settings, first_page)
    if decode_data is not data:
        # Metadata was dropped to decode it: the file kept is the one decoded, so that any loader opens it.
        info["stored_data"] = decode_data
    return out, info


def _without_ancillary(fmt, data, settings, analysis_side, stderr, exc):
    """Rule 4 in general: ``data``, refused by its decoder with ``exc``, decoded again without its ancillary parts.

    The copy (:func:`dsbuild.verify.containers.without_ancillary`: PNG critical
    chunks only, JPEG without APPn/COM, GIF without extension blocks) holds the
    same picture data; when it passes every check of a first decode (structure,
    bombs, strict libjpeg, truncation) the refusal was about metadata, and
    ``(image, info, notes)`` is returned with ``info["stored_data"]`` the copy
    (the file kept and exported: the original is the one Pillow refused, so a
    loader would refuse it too). A first copy keeps the EXIF (JPEG APP1, PNG
    eXIf: how the picture is turned); when that one fails, a copy without it is
    tried. None when there is nothing to drop. When the
    copy fails too, its failure is the one raised: it is about the picture data
    alone (a JPEG with a broken APP0 *and* a cut scan is ``truncated``, not
    refused for its APP0).
    """
    tried: set[bytes] = set()
    failure: BaseException | None = None
    for keep_exif in (True, False):  # the EXIF (orientation) kept if the copy decodes with it, else dropped too
        stripped = containers.without_ancillary(fmt, data, keep_exif=keep_exif)
        if stripped is None or stripped[0] in tried:
            continue
        copy, dropped = stripped
        tried.add(copy)
        info: dict = {"format": fmt, "frames": 1}
        notes: list[str] = [f"metadata dropped: {', '.join(dropped)} (the decoder refused the file with it: "
                            f"{_describe(exc)})"]
        try:
            out, info = _decode(fmt, copy, settings, analysis_side, info, notes, stderr, retry=False)
        except Exception as err:  # noqa: BLE001 - Rejected or a decoder's exception: the next copy, or raised
            failure = err
            continue
        info["stored_data"] = copy
        return out, info, notes
    if failure is not None:
        raise failure
    return None


def _pixels(fmt, decode_data, settings, analysis_side, info, notes, scan=None):
    """Open, check and decode the first frame: ``(normalised image, width, height, bytes decoded)``."""
    try:
        img = _open(fmt, decode_data)
    except ValueError as exc:
        if fmt == "PNG" and "MAX_TEXT" in str(exc):
            img, decode_data = _without_png_metadata(decode_data, notes)
        else:
            raise
    width, height = img.size
    info.update(width=width, height=height, mode=img.mode, bits=_source_bits(fmt, decode_data, img))
    _check_pixels(width, height, settings)
    if fmt in ("JPEG", "WEBP"):
        info["frames"] = int(getattr(img, "n_frames", 1) or 1)
    if fmt == "JPEG" and info["frames"] > 1:  # MPO: each frame has a JPEG header of its own (read, not decoded)
        with pixel_limit(None):  # our check below, with the size in the message; seek() reads headers only
            for k in range(1, info["frames"]):
                try:
                    img.seek(k)
                except Exception as exc:  # noqa: BLE001 - a broken later frame: loaders read the first
                    notes.append(f"frame {k + 1} cannot be read ({_describe(exc)})")
                    break
                _check_pixels(*img.size, settings, f"frame {k + 1} declares ")
            img.seek(0)

    if min(width, height) < settings.min_side:
        raise Rejected("too small", f"{width}×{height} is below min_side {settings.min_side}")
    ratio = max(width, height) / max(1, min(width, height))
    if ratio > settings.max_aspect_ratio:
        raise Rejected("odd aspect ratio", f"{ratio:.1f}:1 exceeds max_aspect_ratio {settings.max_aspect_ratio}")

    if fmt == "JPEG":
        orientation = _orientation(img, notes)  # JPEG's EXIF is read at open: no decode here
        scans = containers.jpeg_scans(decode_data)
        pixels = _jpeg_pixels(decode_data, img, analysis_side, notes, scans)
        if scans is not None:  # libjpeg was silent: do the scans code the whole picture?
            try:
                containers.jpeg_check_coverage(scans)
            except containers.Damaged as exc:
                raise Rejected(exc.reason, exc.detail) from None
        out = _normalise(pixels, orientation, info)
        if orientation in (5, 6, 7, 8):
            width, height = height, width
    else:
        try:
            img.load()  # before any EXIF read: for PNG, reading EXIF would decode the pixels as a side effect
        except ValueError as exc:
            if fmt != "PNG" or "MAX_TEXT" not in str(exc):
                raise
            img, decode_data = _without_png_metadata(decode_data, notes)
            img.load()
        if fmt == "TIFF":
            info["tiff_decoded"] = img  # the first page as libtiff decoded it: _check_tiff_deflate sums its rows
            # (popped by _decode as soon as this returns)
        if fmt == "PNG" and not scan.interlaced and not scan.frames and \
                not containers.png_rows_decoded_to_the_end(scan, img):
            try:
                containers.png_check_streams(scan)
            except containers.Damaged as exc:
                raise Rejected(exc.reason, exc.detail) from None
        check_palette_indices(fmt, decode_data, img, scan)
        loaded = img.size
        if loaded == (height, width) and loaded != (width, height):
            width, height = loaded  # the reader turned it itself (TIFF applies its orientation on load)
        after = _orientation(img, notes)
        out = _normalise(img, after, info)
        if after in (5, 6, 7, 8):
            width, height = height, width
    return out, width, height, decode_data


def check_palette_indices(fmt: str, data: bytes, img, scan=None) -> None:
    """Raise :class:`Rejected` ("corrupt") when a decoded palette image (PNG, GIF, BMP) uses an index past the end
    of its palette.

    A palette image stores, per pixel, an index into its colour table. The
    table's length is declared in the file (PNG: the PLTE entries; GIF: the
    local or global colour table; BMP: ``biClrUsed``, see
    :func:`containers.palette_entries`) and need not be ``2^bits``: a 4-bit PNG
    with 11 PLTE entries is valid as long as no pixel says 11–15. A pixel that
    does has no colour. The PNG specification makes it an error ("It is an
    error if an out-of-range pixel value is found", PLTE); libpng notices it
    only at ``png_read_end`` and only as a *benign* error (a warning unless the
    reader turns benign errors off, "Read palette index exceeding num_palette"),
    and its palette past ``num_palette`` is zero (black), as Pillow's is (for
    PNG, GIF and BMP alike); Chrome's decoder (Skia) instead pads the table
    with the palette's *last* colour. So every reader shows a picture, none
    the one that was encoded, and they disagree with each other: a palette
    shortened by damage (or a writer's bug) turns most of a photo black in
    Pillow, and two such files of different pictures can even become exact
    duplicates of each other. A training set wants the encoded picture or
    nothing, the same picture in every loader: such a
    file is ``corrupt``, with the largest index, the palette's length and the
    share of pixels with no colour in the detail.

    Cost: one histogram of the decoded indices (C, one pass). Indices within
    the palette are never refused, however short the palette; a GIF's
    transparent index is not counted (a transparent pixel needs no colour);
    a palette the reader turned into greys (Pillow's ``L`` for a grey-ramp GIF
    or BMP palette) is not checked.
    """
    if fmt not in ("PNG", "GIF", "BMP") or img.mode != "P":
        return
    entries = containers.palette_entries(fmt, data, scan)
    if not entries or entries >= 256:
        return
    counts = img.histogram()[:256]
    transparent = img.info.get("transparency")
    if isinstance(transparent, int) and 0 <= transparent < 256:
        counts[transparent] = 0
    beyond = sum(counts[entries:])
    if not beyond:
        return
    top = max(i for i in range(entries, 256) if counts[i])
    share = 100.0 * beyond / max(1, sum(counts))
    raise Rejected("corrupt", f"{fmt} pixel index {top} lies beyond its {entries}-colour palette (indices 0–"
                              f"{entries - 1}): {share:.0f} % of the pixels have no colour (readers disagree: "
                              f"Pillow shows them black, browsers other colours); the palette is damaged or cut short — re-export the image from its source")


def _source_bits(fmt: str, data: bytes, img) -> int | None:
    """Bits per sample the file declares (PNG IHDR, TIFF BitsPerSample), None when not read."""
    try:
        if fmt == "PNG" and len(data) > 24:
            return int(data[24])
        if fmt == "TIFF":
            value = img.tag_v2.get(258)
            return int(max(value) if isinstance(value, tuple) else value) if value else None
    except Exception:  # noqa: BLE001 - a hint for the exact-duplicate key only
        return None
    return None


MAX_FRAMES_DECODED = 1000


def _check_later_frames(fmt: str, data: bytes, settings, notes: list[str]) -> None:
    """Decode every frame after the first (GIF frames, TIFF pages, MPO images, WebP animation frames): one cut short
    or damaged rejects the file.

    Loaders read the first frame, but the file stored is the whole file: a GIF
    cut inside frame 5 is a cut file (``truncated``), whatever frame 1 looks
    like. APNG frames are checked without decoding (their zlib streams, in
    :func:`containers.png_check_streams`). A WebP animation's frames are *not*
    checked at open: libwebp's demuxer (WebPAnimDecoderNew) validates only the
    container (chunk sizes, frames within the canvas), so a frame whose VP8/VP8L
    bitstream is damaged or cut short is only found when it is decoded here
    (Pillow: "failed to read next frame").

    The caps, and why: every frame's declared size was already held against
    ``max_pixels`` before anything was decoded, but decoding them all costs
    frames × pixels. So the frames decoded here add up to at most
    ``max_pixels`` pixels (the bomb limit holds for the whole file, not just
    each frame) and at most :data:`MAX_FRAMES_DECODED` frames; the frames past
    either cap are not decoded and a note says from which frame on. The
    per-image ``time_limit`` still bounds the whole verification.
    """
    from PIL import Image

    img = _open(fmt, data)
    total = img.size[0] * img.size[1]  # the first frame, decoded already
    frames = int(getattr(img, "n_frames", 1) or 1)
    stills = containers.gif_frame_stills(data) if fmt == "GIF" else []
    for k in range(1, frames):
        try:
            img.seek(k)
        except EOFError:
            break
        except Exception as exc:  # noqa: BLE001 - an MPO whose index is broken: loaders read the first (noted above)
            if fmt == "JPEG":
                return
            raise Rejected(_reason(str(exc)), f"frame {k + 1}: {_describe(exc)}") from None
        total += img.size[0] * img.size[1]
        if k >= MAX_FRAMES_DECODED or total > settings.max_pixels:
            notes.append(f"frames {k + 1}–{frames} not decoded (more than {MAX_FRAMES_DECODED} frames or "
                         f"{settings.max_pixels} pixels in all)")
            return
        if fmt == "JPEG":
            _check_mpo_frame(img, data, k, frames)
            continue
        try:
            img.load()
        except (Image.DecompressionBombError, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - hostile frames raise anything
            reason = "truncated" if isinstance(exc, EOFError) else _reason(str(exc))
            said = _describe(exc)
            if fmt == "WEBP":  # Pillow's words only: say what libwebp refused
                said = f"libwebp cannot decode this frame's bitstream (damaged or cut short): {said}"
            raise Rejected(reason, f"frame {k + 1} of {frames}: {said}") from None
        if k < len(stills) and stills[k] is not None:
            _check_frame_palette("GIF", stills[k], k + 1, frames)


def _check_frame_palette(fmt: str, still: bytes, number: int, frames: int, scan=None) -> None:
    """:func:`check_palette_indices` for a later frame (``still``: the frame alone, see
    :func:`containers.gif_frame_stills` and :func:`containers.png_frame_stills`), naming the frame. Decoded only
    when its colour table is shorter than its indices can reach (the check can find something)."""
    entries = containers.palette_entries(fmt, still, scan)
    if not entries or entries >= 256:
        return
    if fmt == "PNG" and (still[25] != 3 or entries >= 1 << still[24]):  # not a palette PNG, or every index has a colour
        return
    try:
        img = _open(fmt, still)
        img.load()
    except Exception:  # noqa: BLE001 - the frame's own decode (above, or its zlib stream) judges its data
        return
    try:
        check_palette_indices(fmt, still, img, scan)
    except Rejected as exc:
        raise Rejected(exc.reason, f"frame {number} of {frames}: {exc.detail}") from None


def _check_apng_palettes(scan, first_pixels: int, settings, notes: list[str]) -> None:
    """The palette indices of every APNG frame stored in fdAT (nothing else decodes them), under the caps of
    :func:`_check_later_frames`: at most :data:`MAX_FRAMES_DECODED` frames and ``max_pixels`` pixels in all, the
    first frame's included; a note names the frames past them."""
    if scan.header is None or scan.header[9] != 3 or not scan.palette or scan.palette >= 1 << scan.header[8]:
        return  # not a palette PNG, or every index its depth can hold has a colour
    frames = len(scan.frames)
    total = first_pixels
    for k, (number, still) in enumerate(containers.png_frame_stills(scan), start=1):
        width, height = struct.unpack(">II", still[16:24])
        total += width * height
        if k >= MAX_FRAMES_DECODED or total > settings.max_pixels:
            notes.append(f"frames {number}–{frames} not decoded (more than {MAX_FRAMES_DECODED} frames or "
                         f"{settings.max_pixels} pixels in all)")
            return
        _check_frame_palette("PNG", still, number, frames, containers.png_scan(still))


def _check_mpo_frame(img, data: bytes, k: int, frames: int) -> None:
    """Frame ``k`` (0-based, ``img`` seeked to it) of an MPO decoded by libjpeg in strict mode, as the first frame
    is (Pillow's decoder fills a cut scan with grey and says nothing when an end marker follows): its bytes start
    where Pillow's seek put the frame (``img.offset``, from the MP index) and run the index entry's ``Size``, cut
    at the end of the file. DCT-scaled to ≥ 128 px: every byte of the scan is still read. A warning off the
    harmless list rejects the file, naming the frame."""
    import simplejpeg

    try:
        start = int(img.offset)
        frame = data[start:start + int(img.mpinfo[0xB002][k]["Size"])]
    except (AttributeError, KeyError, IndexError, TypeError, ValueError):
        return  # no readable MP index entry: Pillow's seek read the frame header, loaders read the first frame
    if frame[:2] != b"\xff\xd8":
        return  # not where a JPEG starts: the index is not this file's (loaders read the first frame)
    try:
        simplejpeg.decode_jpeg(frame, strict=True, min_height=128, min_width=128)
    except ValueError as exc:
        text = str(exc)
        if not _JPEG_HARMLESS.search(text):
            raise Rejected(_reason(text), f"frame {k + 1} of {frames}: libjpeg: {text}") from None


def _without_png_metadata(data: bytes, notes: list[str]):
    from PIL import PngImagePlugin

    stripped, dropped = containers.strip_png_metadata(data, PngImagePlugin.MAX_TEXT_CHUNK)
    notes.extend(dropped)
    img = _open("PNG", stripped)
    return img, stripped


def _orientation(img, notes: list[str]) -> int:
    """The EXIF orientation (1–8) of an opened image; broken EXIF counts as 1, with a note."""
    try:
        value = img.getexif().get(0x0112, 1)
    except Exception as exc:  # noqa: BLE001 - EXIF is metadata: its fault never costs the picture
        notes.append(f"EXIF dropped: {_describe(exc)}")
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


_TRANSPOSE = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE", 6: "ROTATE_270",
              7: "TRANSVERSE", 8: "ROTATE_90"}


def _normalise(img, orientation: int, info: dict | None = None):
    """RGB or L, turned as ``orientation`` says (see :func:`dsbuild.verify.normalise`).

    ``info["exact_key"]``: what the exact-duplicate key (``pixel_sha``) is made of when the 8-bit picture does not
    hold every value decoded: the decoded pixels at their own depth (:func:`deep_digest`), or None when the decoder
    already dropped bits (a 16-bit RGB PNG/TIFF, which Pillow reads as 8-bit RGB): then only equal bytes are exact
    duplicates. Absent when the 8-bit picture is the whole picture.
    """
    from PIL import Image

    if orientation in _TRANSPOSE:
        img = img.transpose(getattr(Image.Transpose, _TRANSPOSE[orientation]))
    if info is not None:
        if img.mode in _DEEP_MODES and not _fits_8_bits(img):
            info["exact_key"] = deep_digest(img)
        elif _deeper_source(info.get("format"), img, info.get("bits")):
            info["exact_key"] = None
    return normalise(img, orientation=1)


_DEEP_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_DEPTHS = (8, 10, 12, 14, 16)


def sample_depth(arr) -> int | None:
    """The bits a high-bit-depth image's data really uses: the smallest of 8, 10, 12, 14, 16 whose range holds every
    sample (``max < 2**bits``), or None when the samples are not non-negative integers below 2**16.

    16-bit containers (PNG, TIFF) often hold 8-, 10-, 12- or 14-bit data (scanners, cameras' raw sensor values,
    medical and microscopy images; DICOM says so in BitsStored, PNG may in sBIT, most files say nothing). Readers
    disagree about them: Pillow's ``convert("L"/"RGB")`` clips at 255 (python-pillow/Pillow#1108, #2574, #4044 —
    fastai's ``PILImage.create`` converts so: a full-range 16-bit picture is white), OpenCV's ``imread`` and
    stb_image shift right by 8 (``/256``: 8-bit data in 16 bits is black), ImageJ stretches the display range.
    Scaling by the depth the data uses shows each of them as the picture: 8-in-16 as it is (what Pillow shows),
    12-bit data over the full range, full-range 16-bit as ``/65535``.
    """
    import numpy as np

    if arr.size == 0:
        return 8
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0 or hi >= 65536 or (arr.dtype.kind == "f" and not np.array_equal(arr, np.floor(arr))):
        return None
    return next(bits for bits in _DEPTHS if hi < 2 ** bits)


_BAND_PIXELS = 1 << 20  # pixels per band when a deep image is read band by band (8 MB as float64)


def _bands(img):
    """``(top row, array)`` for horizontal bands of about :data:`_BAND_PIXELS` pixels of ``img``, at its own dtype.

    A 16-bit image is read a band at a time (``img.crop``: one band's copy),
    so that what is made of it (depth, 8-bit picture, digest) never holds
    whole-image 8-byte copies: a 7000×7000 16-bit PNG took 1.26 GB to verify,
    its 8-bit twin 80 MB (hunt3 finding 11).
    """
    import numpy as np

    width, height = img.size
    if width * height <= _BAND_PIXELS:  # one band: the image itself, no crop
        yield 0, np.asarray(img)
        return
    step = max(1, _BAND_PIXELS // max(1, width))
    for top in range(0, height, step):
        yield top, np.asarray(img.crop((0, top, width, min(height, top + step))))


def _image_depth(img) -> int | None:
    """:func:`sample_depth` of a deep-mode image (I;16*, I, F), without a whole-image copy: an integer mode's extrema
    come from Pillow (C, no copy); a float image is read band by band."""
    import numpy as np

    width, height = img.size
    if width == 0 or height == 0:
        return 8
    extrema = None
    if img.mode != "F":
        try:
            extrema = img.getextrema()
        except ValueError:  # Pillow has none for some modes (I;16B: "image has wrong mode"): read by bands
            pass
    if extrema is not None:
        lo, hi = extrema
    else:
        lows, highs = [], []
        for _top, band in _bands(img):
            if band.dtype.kind == "f" and not np.array_equal(band, np.floor(band)):  # fractional, or NaN
                return None
            lows.append(float(band.min()))
            highs.append(float(band.max()))
        lo, hi = min(lows), max(highs)
    if lo < 0 or hi >= 65536:
        return None
    return next(bits for bits in _DEPTHS if hi < 2 ** bits)


def _fits_8_bits(img) -> bool:
    """True when normalising ``img`` (a deep mode) keeps every value: integer samples within 0..255."""
    return _image_depth(img) == 8


def deep_digest(img) -> str:
    """sha256 of a high-bit-depth image's decoded pixels at their own depth (mode, size, values as 64-bit ints or
    floats): the exact-duplicate key when the 8-bit picture would merge values (12-bit data in 8 bits).

    Hashed band by band (:func:`_bands`): the same bytes as the whole image converted at once, never a whole-image
    8-byte copy."""
    import hashlib

    kind = "f" if img.mode == "F" else "i"
    h = hashlib.sha256()
    h.update(f"deep:{img.size[0]}x{img.size[1]}:{kind}:".encode())
    for _top, band in _bands(img):
        h.update(band.astype("<f8" if kind == "f" else "<i8").tobytes())
    return h.hexdigest()


def _deeper_source(fmt: str | None, img, bits: int | None) -> bool:
    """True when the file holds more bits per sample than the decoded 8-bit image (Pillow reads 16-bit RGB/RGBA/LA
    PNGs and 16-bit RGB TIFFs as 8-bit, dropping the low byte)."""
    return bool(bits and bits > 8 and img.mode not in _DEEP_MODES)


def _jpeg_pixels(data: bytes, img, analysis_side: int | None, notes: list[str], scans=None):
    """The JPEG's pixels, decoded by libjpeg-turbo in strict mode exactly as Pillow's draft mode would (see module doc)."""
    import simplejpeg
    from PIL import Image

    width, height = img.size
    scale = 1
    if analysis_side:
        most = min(width // analysis_side, height // analysis_side)
        scale = next((s for s in (8, 4, 2) if most >= s), 1)  # Pillow's draft(): the largest of 8, 4, 2 that fits
    want = ((width + scale - 1) // scale, (height + scale - 1) // scale)
    mode = img.mode
    space = {"L": "GRAY", "RGB": "RGB", "CMYK": "CMYK"}.get(mode)
    if space is None:  # YCbCr-as-is, I;16 lossless …: rare modes stay with Pillow's decoder
        img.draft("RGB", (analysis_side, analysis_side)) if analysis_side else None
        img.load()
        return img
    kw = dict(colorspace=space, fastdct=False, fastupsample=False, min_width=want[0], min_height=want[1])
    try:
        arr = simplejpeg.decode_jpeg(data, strict=True, **kw)
    except ValueError as exc:
        text = str(exc)
        if _JPEG_EXTRANEOUS.search(text):
            arr = simplejpeg.decode_jpeg(data, strict=False, **kw)
            if not _extraneous_is_trailing(data, text, scans, arr, kw):
                raise Rejected("corrupt", f"libjpeg: {text} (inside the scan data: the bytes after them decode out "
                                          f"of step)") from None
        elif not _JPEG_HARMLESS.search(text):  # missing or corrupt data, or an error libjpeg cannot decode past
            raise Rejected(_reason(text), f"libjpeg: {text}") from None
        else:
            arr = simplejpeg.decode_jpeg(data, strict=False, **kw)
        # A warning that leaves every pixel as encoded (strict mode stopped at it): noted, decoded leniently.
        # A later harmful warning in the same file would go unseen: strict mode reports only the first.
        notes.append(f"libjpeg: {text}")
    if space == "GRAY":
        return Image.fromarray(arr[..., 0], "L")
    if space == "CMYK":
        return Image.fromarray(255 - arr, "CMYK")  # Adobe's inverted CMYK, as Pillow reads it
    return Image.fromarray(arr, "RGB")


def _extraneous_is_trailing(data: bytes, text: str, scans, lenient, kw) -> bool:
    """Whether the bytes libjpeg skipped before a marker follow the complete entropy-coded data (harmless junk).

    libjpeg skips bytes it finds after decoding the last block of a scan, and
    reports how many. Junk appended after intact scan data (some encoders pad
    before EOI) leaves every pixel as encoded. Junk *inside* the data is decoded
    as data: the decoder falls out of step, decodes the rest of the picture
    from the wrong bits, and what is left over at the marker is real data.

    The decoder alone cannot tell the two apart: with the leftover bytes removed
    either file decodes silently to the same pixels. What it can tell is where
    the last bit it needed lies, and an intact scan ends there the way T.81
    F.1.2.3 says an encoder ends one: the last code's byte padded with 1-bits. So:

    * before a restart marker (RST0–7), or any marker but the EOI that ends the
      last scan: damage (intervals and scans are written back to back);
    * before that EOI: cut the file byte by byte back to the shortest prefix
      that still decodes strictly without a warning to the same pixels (the last
      byte the decoder needed), then find the bits of that byte the decoder
      never read (setting them changes nothing); harmless only when every one
      of them is 1 (the encoder's padding), and the bytes left over hold no
      stuffed FF 00 pair (how entropy-coded data, and nothing else, writes a
      0xFF byte). Junk inside the data leaves its last code at a random bit with
      random bits after it, and real data left over: of 40 random insertions
      into a photo's scan 33 are caught by the bits alone (none of 40 random
      trailing junks rejected); long leftovers almost always hold an FF 00.
    About 10–20 decodes, only for files with this warning.
    """
    import numpy as np
    import simplejpeg

    found = _JPEG_EXTRANEOUS.search(text)
    count, marker = int(found.group(1)), int(found.group(2), 16)
    if marker != 0xD9 or scans is None:
        return False
    scans = containers.jpeg_scans(data, full=True)  # where the last scan's data ends
    if scans is None or scans.end_marker != 0xD9 or scans.data_end is None:
        return False
    at = scans.data_end
    stop = at - count  # the decoder's last needed byte lies before here

    def same(candidate: bytes) -> bool:
        try:
            arr = simplejpeg.decode_jpeg(candidate, strict=True, **kw)
        except ValueError:
            return False
        return arr.shape == lenient.shape and np.array_equal(arr, lenient)

    tail = data[at:]
    if not same(data[:stop] + tail):
        return False
    lo, hi = 0, 64  # libjpeg reads ahead a few bytes at most: the last needed byte lies within 64 of ``stop``
    while lo < hi:  # largest k with data[:stop - k] still decoding the same
        mid = (lo + hi + 1) // 2
        if same(data[: stop - mid] + tail):
            lo = mid
        else:
            hi = mid - 1
    last = stop - lo - 1  # the last byte the decoder needs
    byte = data[last]
    if byte == 0xFF:
        return False
    unread = 0
    for bits in range(1, 8):  # the low ``bits`` bits of that byte: does the decoder read them?
        flipped = byte ^ ((1 << bits) - 1)
        if flipped == 0xFF or not same(data[:last] + bytes([flipped]) + tail):
            break
        unread = bits
    mask = (1 << unread) - 1
    # and the bytes left over are no entropy-coded data: that writes every 0xFF byte as FF 00, other junk does not
    return byte & mask == mask and b"\xff\x00" not in data[last + 1 : at]


def normalise(img, *, orientation: int | None = None):
    """Return ``img`` as RGB or L (8-bit), EXIF orientation applied, alpha composited on white.

    Handles CMYK, P/PA (palettes, incl. transparency), LA, RGBA, 1, I;16, I and F. High-bit-depth greyscale
    (I;16*, I, F with integer samples in 0..65535) is scaled by the depth its data uses (:func:`sample_depth`:
    ``255 / (2**bits - 1)``, bits the smallest of 8, 10, 12, 14, 16 above the largest sample); other I/F images by
    their own range. Every path that turns a decoded image into pixels goes through here (verification, the
    training and prediction loaders via :func:`dsbuild.verify.decode.load_rgb`, thumbnails).
    ``orientation``: 1 when the caller already turned the image (verification
    does); None reads it from the image's EXIF (broken EXIF counts as upright).
    """
    from PIL import Image, ImageOps

    if orientation is None:
        try:
            orientation = img.getexif().get(0x0112, 1)
        except Exception:  # noqa: BLE001 - broken EXIF is metadata: the picture stays upright
            orientation = 1
    if orientation not in (None, 1):  # exif_transpose copies the image even when upright
        img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode in ("RGB", "L"):
        return img
    if mode in _DEEP_MODES:  # band by band (see _bands): 1 byte per pixel more, not 25
        import numpy as np

        width, height = img.size
        out = np.empty((height, width), dtype=np.uint8)
        bits = _image_depth(img)
        if bits is None:  # negative, fractional or wider than 16 bits (I, F): scaled by the largest value
            top = np.max([np.max(band) for _t, band in _bands(img)]) if width and height else 1.0
            top = max(float(top), 1.0)
        for at, band in _bands(img):
            arr = band.astype(np.float64)
            if bits is None:  # negatives black
                arr = arr / top * 255.0
            elif bits > 8:  # the depth the data uses (see sample_depth): 8-in-16 as it is, 12-bit over the range
                arr = np.rint(arr * (255.0 / float(2 ** bits - 1)))
            out[at : at + len(arr)] = np.clip(arr, 0, 255).astype("uint8")
        return Image.fromarray(out, mode="L")
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


@contextmanager
def pixel_limit(max_pixels: int | None) -> Iterator[None]:
    """Pillow's bomb limit is a process global: set it for one decode only (training and reports share the process)."""
    from PIL import Image

    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous
