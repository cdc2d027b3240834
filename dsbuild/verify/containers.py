"""Reading image containers without decoding: chunk checksums, frame sizes, where a file was cut.

Verification (:mod:`dsbuild.verify`) walks the structure of a file before it
lets a decoder at it, for what decoders do not say or say too late:

* :func:`png_scan` — every PNG chunk: a chunk cut short (``truncated``), a
  critical chunk with a bad checksum (``corrupt``), an *ancillary* chunk with a
  bad checksum (metadata only: removed from the bytes handed to the decoder,
  noted), and the frame sizes an APNG declares (``fcTL``).
* :func:`gif_frames` — the extents every GIF image descriptor declares (a frame
  may reach far outside the logical screen: Pillow then grows the image to it).
* :func:`tiff_pages` — the width and height of every TIFF/BigTIFF directory,
  and a first directory that lies past the end of the file (libtiff writes it
  last, so a cut TIFF loses it).
* :func:`strip_png_metadata` — a PNG without its text and ICC chunks, for a
  file whose only fault is metadata the decoder refuses.
* :func:`without_ancillary` — a PNG, JPEG or GIF with every part that only
  carries metadata removed, for a file its decoder refused.

All functions take the whole file as ``bytes``, cost one pass over the chunk
or block headers (no inflating, no decoding) and raise :class:`Damaged` with a
reason (``truncated`` / ``corrupt``) and a detail for a broken structure.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field


class Damaged(Exception):
    """A container whose structure is broken: ``reason`` is ``truncated`` or ``corrupt``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# --------------------------------------------------------------------------- PNG

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
METADATA_CHUNKS = frozenset({b"iCCP", b"iTXt", b"zTXt", b"tEXt", b"eXIf"})


@dataclass
class PngScan:
    """What :func:`png_scan` found: the bytes to decode, notes, and the frames an APNG declares."""

    data: bytes
    notes: list[str] = field(default_factory=list)
    frames: list[tuple[int, int, int, int]] = field(default_factory=list)  # (x, y, width, height) per fcTL


def _chunks(data: bytes):
    pos = len(PNG_SIGNATURE)
    end = len(data)
    while pos < end:
        if pos + 8 > end:
            raise Damaged("truncated", f"PNG is cut short: {end - pos} bytes of a chunk header at offset {pos}")
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if length > 0x7FFFFFFF:
            raise Damaged("corrupt", f"PNG chunk at offset {pos} declares {length} bytes")
        stop = pos + 12 + length
        name = kind.decode("latin-1")
        if stop > end:
            raise Damaged("truncated", f"PNG is cut short: chunk {name} at offset {pos} needs {length + 12} bytes, "
                                       f"{end - pos} left")
        yield pos, kind, length
        if kind == b"IEND":
            return
        pos = stop


def png_scan(data: bytes) -> PngScan:
    """Walk every chunk of a PNG; see the module doc. Raises :class:`Damaged`."""
    out = PngScan(data=data)
    drop: list[tuple[int, int]] = []
    seen_idat = seen_iend = False
    for pos, kind, length in _chunks(data):
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        name = kind.decode("latin-1")
        if zlib.crc32(kind + body) & 0xFFFFFFFF != crc:
            if kind[0] & 0x20:  # ancillary (lower-case first letter): metadata, safe to drop
                drop.append((pos, pos + 12 + length))
                out.notes.append(f"metadata dropped: {name} chunk with a bad checksum")
                continue
            raise Damaged("corrupt", f"PNG {name} chunk at offset {pos} has a bad checksum")
        if kind == b"IDAT":
            seen_idat = True
        elif kind == b"IEND":
            seen_iend = True
        elif kind == b"fcTL" and length >= 20:
            width, height, x, y = struct.unpack(">IIII", body[4:20])
            out.frames.append((x, y, width, height))
    if not seen_idat:
        raise Damaged("truncated", "PNG has no image data (IDAT)")
    if not seen_iend:
        out.notes.append("PNG has no IEND chunk (ends after its image data)")
    if drop:
        parts, last = [], 0
        for start, stop in drop:
            parts.append(data[last:start])
            last = stop
        parts.append(data[last:])
        out.data = b"".join(parts)
    return out


def strip_png_metadata(data: bytes, limit: int) -> tuple[bytes, list[str]]:
    """``data`` without its text, ICC and EXIF chunks, and a note naming each compressed one that inflates past ``limit``.

    For a PNG whose decoder refused its metadata (Pillow's ``MAX_TEXT_CHUNK``
    guard): the picture is kept, the metadata dropped, and the notes say which.
    """
    parts, notes, last = [], [], 0
    for pos, kind, length in _chunks(data):
        if kind not in METADATA_CHUNKS:
            continue
        body = data[pos + 8 : pos + 8 + length]
        parts.append(data[last:pos])
        last = pos + 12 + length
        name = kind.decode("latin-1")
        if kind in (b"iCCP", b"zTXt", b"iTXt"):
            inflated = _inflated_size(kind, body, limit)
            if inflated is None:
                notes.append(f"metadata dropped: {name} chunk does not inflate")
            elif inflated > limit:
                notes.append(f"metadata dropped: {name} chunk inflates past {limit} bytes (the decoder's limit)")
    parts.append(data[last:])
    if not notes:
        notes.append("metadata dropped: text/ICC chunks the decoder refused")
    return b"".join(parts), notes


def _inflated_size(kind: bytes, body: bytes, limit: int) -> int | None:
    """Inflated size of a compressed metadata chunk, at most ``limit + 1`` (None when it does not inflate)."""
    try:
        if kind == b"iTXt":
            key_end = body.index(b"\x00")
            if body[key_end + 1] != 1:
                return 0  # not compressed
            rest = body[key_end + 3 :]
            rest = rest[rest.index(b"\x00") + 1 :]
            rest = rest[rest.index(b"\x00") + 1 :]
        else:
            rest = body[body.index(b"\x00") + 2 :]
        inflater = zlib.decompressobj()
        return len(inflater.decompress(rest, limit + 1))
    except (ValueError, IndexError, zlib.error):
        return None


# --------------------------------------------------------------------------- GIF


def gif_frames(data: bytes) -> list[tuple[int, int, int, int]]:
    """(left, top, width, height) of every image descriptor of a GIF, in order; stops where the file does.

    A file cut inside its block structure returns the frames seen so far (the
    decoder reports the cut). Raises :class:`Damaged` for a block that is
    neither an extension, an image nor the trailer.
    """
    end = len(data)
    if end < 13:
        raise Damaged("truncated", f"GIF is cut short: {end} bytes, less than its header")
    pos = 13
    flags = data[10]
    if flags & 0x80:
        pos += 3 * (2 ** ((flags & 7) + 1))
    frames: list[tuple[int, int, int, int]] = []
    while pos < end:
        kind = data[pos]
        if kind == 0x3B:
            break
        if kind == 0x21:
            pos += 2
        elif kind == 0x2C:
            if pos + 10 > end:
                break
            frames.append(struct.unpack("<HHHH", data[pos + 1 : pos + 9]))
            local = data[pos + 9]
            pos += 10 + (3 * (2 ** ((local & 7) + 1)) if local & 0x80 else 0) + 1
        else:
            raise Damaged("corrupt", f"GIF has an unknown block {kind:#04x} at offset {pos}")
        while pos < end and data[pos]:  # data sub-blocks
            pos += data[pos] + 1
        pos += 1
    return frames


# --------------------------------------------------------------------------- TIFF

_TIFF_MAX_PAGES = 10_000


def tiff_pages(data: bytes) -> list[tuple[int, int]]:
    """(width, height) of every directory (page) of a TIFF or BigTIFF, in order; see the module doc.

    Raises :class:`Damaged` ("truncated") when the first directory lies past the
    end of the file. A later directory that cannot be read ends the list (the
    decoder only reads the first).
    """
    end = len(data)
    order = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\x00", b"\x00+")
    if big:
        if end < 16:
            raise Damaged("truncated", f"TIFF is cut short: {end} bytes, less than its header")
        (offset,) = struct.unpack(order + "Q", data[8:16])
        count_fmt, entry_size, next_fmt, value_at = "Q", 20, "Q", 12
    else:
        if end < 8:
            raise Damaged("truncated", f"TIFF is cut short: {end} bytes, less than its header")
        (offset,) = struct.unpack(order + "I", data[4:8])
        count_fmt, entry_size, next_fmt, value_at = "H", 12, "I", 8
    count_size = struct.calcsize(count_fmt)
    next_size = struct.calcsize(next_fmt)
    if offset + count_size > end:
        raise Damaged("truncated", f"TIFF is cut short: its directory at offset {offset} lies past the end of the file "
                                   f"({end} bytes)")
    pages: list[tuple[int, int]] = []
    seen: set[int] = set()
    while offset and offset not in seen and len(pages) < _TIFF_MAX_PAGES:
        seen.add(offset)
        if offset + count_size > end:
            break
        (count,) = struct.unpack(order + count_fmt, data[offset : offset + count_size])
        table = offset + count_size
        if table + count * entry_size + next_size > end:
            break
        width = height = 0
        for i in range(count):
            at = table + i * entry_size
            tag, typ = struct.unpack(order + "HH", data[at : at + 4])
            if tag in (256, 257):
                raw = data[at + value_at : at + value_at + (8 if big else 4)]
                value = struct.unpack(order + "H", raw[:2])[0] if typ == 3 else struct.unpack(
                    order + ("Q" if big and typ == 16 else "I"), raw[: 8 if big and typ == 16 else 4])[0]
                if tag == 256:
                    width = value
                else:
                    height = value
        pages.append((width, height))
        (offset,) = struct.unpack(order + next_fmt, data[table + count * entry_size : table + count * entry_size + next_size])
    return pages


# --------------------------------------------------------------------------- ancillary parts, for a retry


def without_ancillary(fmt: str, data: bytes, *, keep_exif: bool = False) -> tuple[bytes, list[str]] | None:
    """``data`` with every part that only carries metadata removed, and the names of what was removed.

    For a file the decoder refused: when the copy decodes cleanly, the refusal
    was about metadata, and the picture is kept (see
    :func:`dsbuild.verify.decoders.decode_checked`, rule 4). None when there is
    nothing to remove or the structure cannot be walked to its end (a cut or
    damaged container is never rebuilt: its fault stays the decoder's to name).
    ``keep_exif``: keep the EXIF (JPEG APP1 ``Exif``, PNG eXIf), which says how
    the picture is turned — tried first, so that a fault elsewhere does not
    cost the orientation.

    * PNG — rebuilt from its critical chunks (IHDR, PLTE, IDAT, IEND: upper-case
      first letter), each copied with its own checksum; every ancillary chunk
      (tRNS, gAMA, pHYs, text, ICC, APNG's acTL/fcTL/fdAT …) is dropped.
    * JPEG — the APPn (0xE0–0xEF) and COM segments before the first scan are
      dropped; tables, frame header and scan data are copied as they are. A
      well-formed Adobe APP14 (``Adobe`` + 7 bytes) is *kept*: its colour
      transform tells libjpeg whether 3/4 components are RGB/CMYK or YCbCr/YCCK,
      so dropping it would change the colours. A shorter one is dropped: libjpeg
      ignores an Adobe segment under 12 bytes, so the pixels are those libjpeg
      decodes from the original.
    * GIF — every extension block (graphic control, comment, application, plain
      text) is dropped; header, colour tables, image descriptors and their data
      are copied. Only a GIF walked to its trailer is rebuilt.
    """
    try:
        if fmt == "PNG":
            return _png_critical(data, keep_exif)
        if fmt == "JPEG":
            return _jpeg_without_app(data, keep_exif)
        if fmt == "GIF":
            return _gif_without_extensions(data)
    except Damaged:
        return None
    return None


_PNG_WHAT = {b"tRNS": "tRNS (transparency)", b"acTL": "acTL (animation)", b"fcTL": "fcTL (animation)",
             b"fdAT": "fdAT (animation frame)"}


def _png_critical(data: bytes, keep_exif: bool = False) -> tuple[bytes, list[str]] | None:
    parts, dropped = [data[: len(PNG_SIGNATURE)]], []
    for pos, kind, length in _chunks(data):
        if kind[0] & 0x20 and not (keep_exif and kind == b"eXIf"):
            dropped.append(_PNG_WHAT.get(kind, kind.decode("latin-1")) + " chunk")
        else:
            parts.append(data[pos : pos + 12 + length])
    if not dropped:
        return None
    return b"".join(parts), _counted(dropped)


def _counted(names: list[str]) -> list[str]:
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return [name if n == 1 else f"{n} × {name}" for name, n in counts.items()]


def _jpeg_without_app(data: bytes, keep_exif: bool = False) -> tuple[bytes, list[str]] | None:
    if data[:2] != b"\xff\xd8":
        return None
    end = len(data)
    parts, dropped, pos = [data[:2]], [], 2
    while True:
        while pos < end and data[pos] == 0xFF and pos + 1 < end and data[pos + 1] == 0xFF:
            pos += 1  # fill bytes before a marker
        if pos + 4 > end or data[pos] != 0xFF:
            return None  # cut, or not a marker where one must be: not rebuilt
        marker = data[pos + 1]
        if marker == 0xDA:  # start of scan: the rest (scan data, later tables and scans, EOI) is copied as it is
            parts.append(data[pos:])
            break
        if marker in (0x01, 0xD8, 0xD9) or 0xD0 <= marker <= 0xD7:
            return None  # no segment expected here
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if length < 2 or pos + 2 + length > end:
            return None
        body = data[pos + 4 : pos + 2 + length]
        if marker == 0xFE or 0xE0 <= marker <= 0xEF:
            if marker == 0xEE and body[:5] == b"Adobe" and len(body) >= 12:
                parts.append(data[pos : pos + 2 + length])  # the colour transform: kept (see without_ancillary)
            elif keep_exif and marker == 0xE1 and body[:6] == b"Exif\x00\x00":
                parts.append(data[pos : pos + 2 + length])
            else:
                dropped.append(_jpeg_segment_name(marker, body))
        else:
            parts.append(data[pos : pos + 2 + length])
        pos += 2 + length
    if not dropped:
        return None
    return b"".join(parts), _counted(dropped)


def _jpeg_segment_name(marker: int, body: bytes) -> str:
    if marker == 0xFE:
        return "COM segment"
    ident = body.split(b"\x00", 1)[0][:24]
    label = ident.decode("ascii") if ident and all(32 <= c < 127 for c in ident) else ""
    return f"APP{marker - 0xE0} segment" + (f" ({label})" if label else "")


_GIF_EXTENSIONS = {0xF9: "graphic control extension", 0xFE: "comment extension", 0xFF: "application extension",
                   0x01: "plain text extension"}


def _gif_without_extensions(data: bytes) -> tuple[bytes, list[str]] | None:
    end = len(data)
    if end < 13:
        return None
    pos = 13 + (3 * (2 ** ((data[10] & 7) + 1)) if data[10] & 0x80 else 0)
    parts, dropped = [data[:pos]], []

    def sub_blocks(at: int) -> int:
        while at < end and data[at]:
            at += data[at] + 1
        if at >= end:
            raise Damaged("truncated", "GIF is cut inside a block")
        return at + 1

    while True:
        if pos >= end:
            return None  # no trailer: a cut GIF is not rebuilt
        kind = data[pos]
        if kind == 0x3B:
            parts.append(data[pos : pos + 1])
            break
        if kind == 0x21:
            if pos + 2 > end:
                return None
            dropped.append(_GIF_EXTENSIONS.get(data[pos + 1], f"extension {data[pos + 1]:#04x}"))
            pos = sub_blocks(pos + 2)
        elif kind == 0x2C:
            if pos + 10 > end:
                return None
            local = data[pos + 9]
            start = pos
            pos += 10 + (3 * (2 ** ((local & 7) + 1)) if local & 0x80 else 0) + 1  # descriptor, table, LZW code size
            pos = sub_blocks(pos)
            parts.append(data[start:pos])
        else:
            return None
    if not dropped:
        return None
    return b"".join(parts), _counted(dropped)
