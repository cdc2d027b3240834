"""Reading image containers without decoding: chunk checksums, frame sizes, where a file was cut.

Verification (:mod:`dsbuild.verify`) walks the structure of a file before it
lets a decoder at it, for what decoders do not say or say too late:

* :func:`png_scan` — every PNG chunk: a chunk cut short (``truncated``), a
  critical chunk with a bad checksum (``corrupt``), an *ancillary* chunk with a
  bad checksum (metadata only: removed from the bytes handed to the decoder,
  noted) — but an animation's fcTL/fdAT, which are frame data (``corrupt``) —,
  the frame sizes an APNG declares (``fcTL``) and how many frames acTL
  declares; the PLTE length (:func:`palette_entries`).
* :func:`gif_frames` — the extents every GIF image descriptor declares (a frame
  may reach far outside the logical screen: Pillow then grows the image to it).
* :func:`tiff_directories` — every TIFF/BigTIFF directory (page): its size
  and the layout of its strips or tiles; a directory, its tables or a strip's
  or tile's data past the end of the file (``truncated``: libtiff writes the
  directory last, so a cut TIFF loses it). :func:`tiff_bomb` holds every
  strip and tile against the pixel limit; :func:`tiff_check_deflate` inflates
  every deflate strip/tile to the end of its stream (its Adler-32).
* :func:`bmp_check_rle` — the run-length stream of an RLE8/RLE4 BMP, walked
  (not decoded) for runs that overrun a row or the image, and a cut.
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
    # each image's zlib stream: (what, compressed parts, bytes its rows need), for png_check_streams
    streams: list[tuple[str, list[bytes], int | None]] = field(default_factory=list)
    interlaced: bool = False
    palette: int | None = None  # entries in PLTE (its length / 3), None without one
    declared_frames: int | None = None  # acTL's num_frames (an APNG), None for a still PNG
    ended: bool = True  # False when the file stops at a chunk boundary before IEND
    header: bytes | None = None  # IHDR's body; PLTE's and tRNS's (for png_frame_stills)
    plte: bytes | None = None
    trns: bytes | None = None
    # each image's (what, width, height, compressed parts): IDAT, then each fdAT run
    images: list[tuple[str, int, int, list[bytes]]] = field(default_factory=list)


def png_check_streams(scan: PngScan, *, skip_image: bool = False) -> None:
    """Raise :class:`Damaged` ("truncated") when an image's zlib stream holds fewer bytes than its rows need.

    An APNG's frames (fdAT), which nothing decodes, are held to more: their
    zlib streams must inflate without error to their end (the Adler-32 checked;
    a damaged one is ``corrupt``), and the number of frames (fcTL chunks) must
    reach the ``num_frames`` of acTL: fewer in a file without IEND is ``truncated``
    (a download cut at a chunk boundary), otherwise ``corrupt`` (decoders fail
    on the missing frames: Pillow's "Truncated File Read"). More frames than
    declared is only noted (:func:`png_scan`): decoders show the declared ones.

    Call it after the frame sizes are held against the pixel limit: a bomb's
    stream is short of its declared size too, and that is not what is wrong.
    ``skip_image``: leave out the IDAT stream (the caller judges it from the
    decoded rows, see :func:`png_rows_decoded_to_the_end`).
    """
    if scan.declared_frames is not None and scan.declared_frames > len(scan.frames):
        declared, present = scan.declared_frames, len(scan.frames)
        if not scan.ended:
            raise Damaged("truncated", f"APNG is cut short: its animation control chunk (acTL) declares {declared} "
                                       f"frames, the file ends after {present} (no IEND chunk)")
        raise Damaged("corrupt", f"APNG holds {present} frames (fcTL chunks) but its animation control chunk (acTL) "
                                 f"declares {declared}: frames are missing or the header is damaged")
    for what, parts, need in scan.streams:
        if skip_image and what.startswith("image data"):
            continue
        _png_check_inflated(what, parts, need, whole=what.startswith("frame"))


def png_rows_decoded_to_the_end(scan: PngScan, img) -> bool:
    """True when a decoded non-interlaced, non-animated PNG's last row holds a non-zero byte: its stream reached it.

    The decoder writes each row into a zero-filled buffer as it inflates it, in
    order: a last row with any non-zero byte was inflated, so no row is
    missing and the second inflate (:func:`png_check_streams`, about a third of
    Pillow's own decode time) can be skipped. An all-zero last row (black, or
    palette index 0, or never written) says nothing: then the stream is counted.
    """
    if scan.interlaced or scan.frames or img.size[1] == 0:
        return False
    width, height = img.size
    return any(img.crop((0, height - 1, width, height)).tobytes())


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
    animated = seen_actl = False  # a valid acTL was read: fcTL/fdAT are then frame data, not droppable metadata
    header = None  # IHDR: width, height, bit depth, colour type, compression, filter, interlace
    groups: list[tuple[str, int, int, list[bytes]]] = []  # the compressed data of each image: IDAT, then each fdAT run
    for pos, kind, length in _chunks(data):
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        name = kind.decode("latin-1")
        if zlib.crc32(kind + body) & 0xFFFFFFFF != crc:
            frame_data = animated and kind in (b"fcTL", b"fdAT")
            if kind[0] & 0x20 and not frame_data:  # ancillary (lower-case first letter): metadata, safe to drop
                drop.append((pos, pos + 12 + length))
                out.notes.append(f"metadata dropped: {name} chunk with a bad checksum")
                continue
            which = f" (frame {len(out.frames) + (kind == b'fcTL')} of the animation)" if frame_data else ""
            raise Damaged("corrupt", f"PNG {name} chunk at offset {pos}{which} has a bad checksum")
        if kind == b"IHDR" and length >= 13:
            header = struct.unpack(">IIBBBBB", body[:13])
            out.header = body[:13]
        elif kind == b"PLTE":
            out.palette = length // 3
            out.plte = body
        elif kind == b"tRNS":
            out.trns = body
        elif kind == b"acTL" and length >= 8 and not seen_idat:  # after IDAT it is ignored (decoders read it first)
            (declared,) = struct.unpack(">I", body[:4])
            # else (0, past 2^31, or a second acTL) Pillow reads the file as a still PNG ("Invalid APNG"), as we do
            valid = 0 < declared <= 0x80000000 and not seen_actl
            out.declared_frames = declared if valid else None
            animated = valid
            seen_actl = True
        if kind == b"IDAT":
            if not seen_idat:
                groups.append(("image data (IDAT)", header[0], header[1], []))
            seen_idat = True
            groups[-1][3].append(body)
        elif kind == b"IEND":
            seen_iend = True
        elif kind == b"fcTL" and length >= 20:
            width, height, x, y = struct.unpack(">IIII", body[4:20])
            out.frames.append((x, y, width, height))
            if seen_idat:  # a fcTL before IDAT describes the IDAT image itself
                groups.append((f"frame {len(out.frames)} (fdAT)", width, height, []))
        elif kind == b"fdAT" and length >= 4 and groups and groups[-1][0].startswith("frame"):
            groups[-1][3].append(body[4:])
    if not seen_idat:
        raise Damaged("truncated", "PNG has no image data (IDAT)")
    if header is not None:
        out.interlaced = header[6] == 1
        out.streams = [(what, parts, _png_raw_size(width, height, *header[2:4], header[6]))
                       for what, width, height, parts in groups]
    out.ended = seen_iend
    out.images = groups
    if out.declared_frames is not None and len(out.frames) > out.declared_frames:
        out.notes.append(f"APNG holds {len(out.frames)} frames (fcTL chunks) but its animation control chunk (acTL) "
                         f"declares {out.declared_frames}: decoders show only the first {out.declared_frames}")
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


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _png_raw_size(width: int, height: int, depth: int, colour: int, interlace: int) -> int | None:
    """Bytes of filtered scanlines an image of this IHDR inflates to (a filter byte per row, each Adam7 pass apart)."""
    channels = _PNG_CHANNELS.get(colour)
    if channels is None:
        return None  # a colour type the decoder refuses
    bits = channels * depth

    def rows(w: int, h: int) -> int:
        return 0 if w == 0 or h == 0 else h * (1 + (w * bits + 7) // 8)

    if interlace != 1:
        return rows(width, height)
    return sum(rows(max(0, (width - x0 + dx - 1) // dx), max(0, (height - y0 + dy - 1) // dy))
               for x0, y0, dx, dy in _ADAM7)


def _png_check_inflated(what: str, parts: list[bytes], need: int | None, *, whole: bool = False) -> None:
    """Raise :class:`Damaged` ("truncated") when ``parts`` (one zlib stream) inflate to fewer bytes than ``need``.

    zlib can end a stream cleanly (right Adler-32, right CRCs) after only some of
    the rows: Pillow then returns the picture with the rest zero and says
    nothing. Inflated in 1 MB steps and counted, never kept; stops once
    ``need`` is reached. A stream zlib refuses is left to the decoder — unless
    ``whole`` (an APNG frame: no decoder reads it): then zlib's error is
    ``corrupt``, and the stream is inflated on to its end, so that its Adler-32
    is checked too (at most 1 MB past ``need``: extra data is not judged).
    """
    if need is None or need == 0:
        return
    if not parts:
        raise Damaged("truncated", f"PNG {what} has no image data: its frame control chunk (fcTL) is followed by "
                                   f"no fdAT chunk")
    inflater = zlib.decompressobj()
    got = 0
    try:
        at = 0
        for at, part in enumerate(parts):
            pending = part
            while pending and got < need and not inflater.eof:
                got += len(inflater.decompress(pending, 1 << 20))
                pending = inflater.unconsumed_tail
            if got >= need or inflater.eof:
                break
        if got < need and not inflater.eof:
            got += len(inflater.flush())
        if whole and got >= need:  # on to the end of the stream (its checksum), for a frame nothing else decodes
            extra = 0
            for pending in [inflater.unconsumed_tail, *parts[at + 1 :]]:
                while pending and not inflater.eof and extra <= 1 << 20:
                    extra += len(inflater.decompress(pending, 1 << 20))
                    pending = inflater.unconsumed_tail
    except zlib.error as exc:
        if whole:
            raise Damaged("corrupt", f"PNG {what} is damaged: its zlib stream does not inflate ({exc})") from None
        return
    if got < need:
        ended = "ends" if inflater.eof else "is cut"
        raise Damaged("truncated", f"PNG {what} is truncated: its zlib stream {ended} after {got} of the {need} bytes "
                                   f"the image's rows need (rows missing at the bottom)")


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


def png_frame_stills(scan: PngScan) -> list[tuple[int, bytes]]:
    """``(frame number, a still PNG)`` for every APNG frame stored in fdAT chunks, in order: IHDR with the frame's
    size, the file's PLTE and tRNS, the frame's zlib data as IDAT — what a decoder reads for that frame before it
    composes it onto the canvas, so its pixels (a palette image's indices) can be held to the file as the first
    frame's are. Empty for a still PNG."""
    if scan.header is None:
        return []
    out = []
    for what, width, height, parts in scan.images:
        if not what.startswith("frame "):
            continue
        number = int(what.split()[1])
        chunks = [_png_chunk(b"IHDR", struct.pack(">II", width, height) + scan.header[8:13])]
        if scan.plte is not None:
            chunks.append(_png_chunk(b"PLTE", scan.plte))
        if scan.trns is not None:
            chunks.append(_png_chunk(b"tRNS", scan.trns))
        chunks += [_png_chunk(b"IDAT", b"".join(parts)), _png_chunk(b"IEND", b"")]
        out.append((number, PNG_SIGNATURE + b"".join(chunks)))
    return out


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


# --------------------------------------------------------------------------- palettes


def palette_entries(fmt: str, data: bytes, scan: PngScan | None = None) -> int | None:
    """How many colours the palette of the first image holds, as the file declares it; None when not known here.

    * PNG — the entries of PLTE (``scan.palette``, from :func:`png_scan`).
    * GIF — the first image's local colour table when it has one, else the
      global colour table (``3 × 2^(n+1)`` bytes, n the size field); None
      when there is neither (decoders then use a default palette).
    * BMP — ``biClrUsed`` (``bV5ClrUsed``) when not 0, else ``2^bits``; the
      OS/2 core header (12 bytes) has no such field: ``2^bits``. Only for 1–8
      bits per pixel; None otherwise.

    Read without decoding; see :func:`dsbuild.verify.decoders.check_palette_indices` for why it matters.
    """
    if fmt == "PNG":
        return scan.palette if scan is not None else None
    if fmt == "GIF":
        if len(data) < 13:
            return None
        glob = 2 ** ((data[10] & 7) + 1) if data[10] & 0x80 else None
        try:
            frames = _gif_first_local_table(data)
        except (Damaged, IndexError):
            return glob
        return frames if frames is not None else glob
    if fmt == "BMP":
        if len(data) < 30:
            return None
        (header,) = struct.unpack("<I", data[14:18])
        if header == 12:
            bits = struct.unpack("<H", data[24:26])[0]
            used = 0
        elif header >= 40 and len(data) >= 50:
            bits = struct.unpack("<H", data[28:30])[0]
            used = struct.unpack("<I", data[46:50])[0]
        else:
            return None
        if not 1 <= bits <= 8:
            return None
        return used or 1 << bits
    return None


def _gif_first_local_table(data: bytes) -> int | None:
    """Entries of the first image descriptor's local colour table (None when it has none, or there is no image)."""
    end = len(data)
    pos = 13 + (3 * 2 ** ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
    while pos < end:
        kind = data[pos]
        if kind == 0x2C:
            if pos + 10 > end:
                return None
            local = data[pos + 9]
            return 2 ** ((local & 7) + 1) if local & 0x80 else None
        if kind != 0x21:
            return None
        pos += 2
        while pos < end and data[pos]:
            pos += data[pos] + 1
        pos += 1
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


def gif_frame_stills(data: bytes) -> list[bytes | None]:
    """A one-frame GIF for every image descriptor of ``data``, in order: the header, its global colour table, the
    graphic control extension just before the frame (its transparent index), the frame placed at 0, 0 on a screen of
    its own size, and the trailer — the frame's own indices as the decoder reads them, before it composes them onto
    the canvas (so a later frame's palette indices can be held to its colour table as the first frame's are).
    None for a frame whose colour table has 256 entries (every index has a colour: nothing to check). Stops where
    the file does."""
    end = len(data)
    if end < 13:
        return []
    flags = data[10]
    pos = 13 + (3 * (2 ** ((flags & 7) + 1)) if flags & 0x80 else 0)
    head, table = data[:6], data[13:pos]
    control = b""
    out: list[bytes] = []
    while pos < end:
        kind = data[pos]
        start = pos
        if kind == 0x3B:
            break
        if kind == 0x21:
            label = data[pos + 1] if pos + 1 < end else 0
            pos += 2
        elif kind == 0x2C:
            if pos + 10 > end:
                break
            local = data[pos + 9]
            pos += 10 + (3 * (2 ** ((local & 7) + 1)) if local & 0x80 else 0) + 1
        else:
            break
        while pos < end and data[pos]:
            pos += data[pos] + 1
        pos += 1
        if kind == 0x21:
            control = data[start:pos] if label == 0xF9 else control
            continue
        local = data[start + 9] if start + 9 < end else 0
        entries = 2 ** ((local & 7) + 1) if local & 0x80 else 2 ** ((flags & 7) + 1) if flags & 0x80 else 0
        if entries >= 256:
            out.append(None)
            control = b""
            continue
        screen = data[start + 5 : start + 9] + bytes([flags, 0, 0])
        descriptor = b"\x2c" + bytes(4) + data[start + 5 : start + 9] + data[start + 9 : pos]
        out.append(head + screen + table + control + descriptor + b"\x3b")
        control = b""
    return out


# --------------------------------------------------------------------------- TIFF

_TIFF_MAX_PAGES = 10_000
_TIFF_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}
_TIFF_INT_FORMATS = {1: "B", 3: "H", 4: "I", 6: "b", 8: "h", 9: "i", 13: "I", 16: "Q", 17: "q", 18: "Q"}
# tags whose values the pixels need: read, and their out-of-line values must lie inside the file
_TIFF_LAYOUT_TAGS = {256: "ImageWidth", 257: "ImageLength", 258: "BitsPerSample", 259: "Compression",
                     273: "StripOffsets", 277: "SamplesPerPixel", 278: "RowsPerStrip", 279: "StripByteCounts",
                     284: "PlanarConfiguration", 317: "Predictor", 320: "ColorMap", 322: "TileWidth", 323: "TileLength",
                     324: "TileOffsets", 325: "TileByteCounts"}
_TIFF_DEFLATE = (8, 32946)  # Adobe deflate, old-style deflate: zlib streams with an Adler-32


@dataclass
class TiffPage:
    """One TIFF directory's layout: what :func:`tiff_directories` read of the tags the pixels need."""

    number: int  # 1-based
    offset: int  # of the directory
    width: int = 0
    height: int = 0
    bits: tuple[int, ...] = (1,)
    compression: int = 1
    samples: int = 1
    planar: int = 1
    predictor: int = 1
    rows_per_strip: int | None = None
    tile: tuple[int, int] | None = None  # (TileWidth, TileLength) of a tiled page
    offsets: tuple[int, ...] = ()
    counts: tuple[int, ...] = ()

    @property
    def block_name(self) -> str:
        return "tile" if self.tile else "strip"

    def block_size(self, index: int) -> tuple[int, int]:
        """(width, rows) of block ``index``: a tile's full size, a strip's rows (the last one's may be fewer)."""
        if self.tile:
            return self.tile
        rows = min(self.rows_per_strip or self.height, self.height) or self.height
        per_plane = -(-self.height // rows) if rows else 1
        first = (index % per_plane) * rows if per_plane else 0
        return self.width, max(0, min(rows, self.height - first))

    def block_bytes(self, index: int) -> int:
        """Bytes block ``index`` holds once decompressed (one sample per block when planes are separate)."""
        width, rows = self.block_size(index)
        samples = 1 if self.planar == 2 else self.samples
        bits = max(self.bits) if self.bits else 1
        return rows * ((width * samples * bits + 7) // 8)


def tiff_pages(data: bytes) -> list[tuple[int, int]]:
    """(width, height) of every directory (page) of a TIFF or BigTIFF, in order; see :func:`tiff_directories`."""
    return [(page.width, page.height) for page in tiff_directories(data)]


def tiff_directories(data: bytes) -> list[TiffPage]:
    """Every directory (page) of a TIFF or BigTIFF, in order, with the layout of its pixel data.

    Raises :class:`Damaged` ("truncated") when a directory, its entry table,
    the next directory's offset, the out-of-line values of a tag the pixels
    need (strip/tile offsets and byte counts, BitsPerSample, ColorMap) or a
    strip/tile's data lies past the end of the file: libtiff writes the
    directory last, so a cut TIFF loses (part of) it, and a cut page is a cut
    file even when the first page is whole. Other tags' values past the end are
    metadata (libtiff drops them with a warning). A loop back to a directory
    already read ends the list.
    """
    end = len(data)
    order = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\x00", b"\x00+")
    if big:
        if end < 16:
            raise Damaged("truncated", f"TIFF is cut short: {end} bytes, less than its header")
        (offset,) = struct.unpack(order + "Q", data[8:16])
        count_fmt, entry_size, next_fmt, value_at, inline = "Q", 20, "Q", 12, 8
    else:
        if end < 8:
            raise Damaged("truncated", f"TIFF is cut short: {end} bytes, less than its header")
        (offset,) = struct.unpack(order + "I", data[4:8])
        count_fmt, entry_size, next_fmt, value_at, inline = "H", 12, "I", 8, 4
    count_size = struct.calcsize(count_fmt)
    next_size = struct.calcsize(next_fmt)
    value_fmt = "Q" if big else "I"
    pages: list[TiffPage] = []
    seen: set[int] = set()
    while offset and offset not in seen and len(pages) < _TIFF_MAX_PAGES:
        seen.add(offset)
        number = len(pages) + 1
        where = f"page {number}'s directory" if number > 1 else "its directory"
        if offset + count_size > end:
            raise Damaged("truncated", f"TIFF is cut short: {where} at offset {offset} lies past the end of the "
                                       f"file ({end} bytes)")
        (count,) = struct.unpack(order + count_fmt, data[offset : offset + count_size])
        table = offset + count_size
        if table + count * entry_size + next_size > end:
            raise Damaged("truncated", f"TIFF is cut short: {where} at offset {offset} holds {count} entries "
                                       f"({count * entry_size + next_size} bytes), the file ends "
                                       f"{max(0, end - table)} bytes after its start")
        page = TiffPage(number=number, offset=offset)
        values: dict[int, tuple[int, ...]] = {}
        for i in range(count):
            at = table + i * entry_size
            tag, typ = struct.unpack(order + "HH", data[at : at + 4])
            if tag not in _TIFF_LAYOUT_TAGS:
                continue
            (n,) = struct.unpack(order + value_fmt, data[at + 4 : at + 4 + (8 if big else 4)])
            size = _TIFF_TYPE_SIZES.get(typ)
            fmt = _TIFF_INT_FORMATS.get(typ)
            if size is None or fmt is None:
                continue  # not an integer type: libtiff refuses or ignores it
            if n * size <= inline:
                raw = data[at + value_at : at + value_at + n * size]
            else:
                (where_at,) = struct.unpack(order + value_fmt, data[at + value_at : at + value_at + (8 if big else 4)])
                if where_at + n * size > end:
                    raise Damaged("truncated", f"TIFF is cut short: page {number}'s {_TIFF_LAYOUT_TAGS[tag]} "
                                               f"({n} values at offset {where_at}) lies past the end of the file "
                                               f"({end} bytes)")
                if tag == 320:
                    continue  # the colour map: only its extent matters here
                raw = data[where_at : where_at + n * size]
            values[tag] = struct.unpack(f"{order}{n}{fmt}", raw)
        first = {tag: v[0] for tag, v in values.items() if v}
        page.width, page.height = first.get(256, 0), first.get(257, 0)
        page.bits = values.get(258) or (1,)
        page.compression = first.get(259, 1)
        page.samples = max(1, first.get(277, 1))
        page.planar = first.get(284, 1)
        page.predictor = first.get(317, 1)
        page.rows_per_strip = first.get(278)
        if 322 in first and 323 in first:
            page.tile = (first[322], first[323])
            page.offsets, page.counts = values.get(324, ()), values.get(325, ())
        else:
            page.offsets, page.counts = values.get(273, ()), values.get(279, ())
        for k, (start, length) in enumerate(zip(page.offsets, page.counts), start=1):
            if start + length <= end:
                continue
            need = page.block_bytes(k - 1)
            if page.compression == 1:
                length = min(length, need)  # uncompressed: only the bytes its rows need are read
            elif length > 2 * need + 1024 and start < end:
                continue  # a byte count no encoder writes for this block: the decoder reads what is there
            if length and start + length > end:
                raise Damaged("truncated", f"TIFF is truncated: page {number}'s {page.block_name} {k} of "
                                           f"{len(page.offsets)} ({length} bytes at offset {start}) ends past the end "
                                           f"of the file ({end} bytes)")
        pages.append(page)
        (offset,) = struct.unpack(order + next_fmt, data[table + count * entry_size : table + count * entry_size + next_size])
    return pages


def tiff_bomb(pages: list[TiffPage], max_pixels: int) -> str | None:
    """Why a TIFF's strips or tiles are a decompression bomb, or None.

    libtiff allocates a whole strip or tile before it decodes any of it: a
    64×64 page may declare one 16384×16384 tile (a 1 GB buffer from a file of
    under 1 MB). A block is refused when it holds more than ``max_pixels``
    pixels, or more than its page could need: more pixels than 4 × the page (its
    sides rounded up to tiles of 16) and than 2048×2048. A strip's rows count
    up to the page's height (libtiff clamps RowsPerStrip to it).
    """
    for page in pages:
        where = f"TIFF page {page.number}" if len(pages) > 1 else "TIFF"
        if page.tile:
            width, rows = page.tile
        else:
            width, rows = page.block_size(0)
        pixels = width * rows
        if pixels > max_pixels:
            return (f"{where} declares {page.block_name}s of {width}×{rows} = {pixels} pixels, which exceeds "
                    f"max_pixels {max_pixels} (libtiff allocates a whole {page.block_name} before decoding it)")
        padded = (-(-page.width // 16) * 16) * (-(-page.height // 16) * 16)
        if pixels > max(4 * padded, 2048 * 2048):
            return (f"{where} declares {page.block_name}s of {width}×{rows} = {pixels} pixels for a "
                    f"{page.width}×{page.height} image: more than 4 times the image (libtiff allocates a whole "
                    f"{page.block_name} before decoding it)")
    return None


def _tiff_bytewise_predictor(page: TiffPage) -> bool:
    """Horizontal differencing (Predictor 2) on 8-bit samples: the one predictor redone here on decoded rows."""
    return page.predictor == 2 and set(page.bits) == {8}


def _tiff_undo_predictor(decoded: bytes, page: TiffPage, row_bytes: int) -> bytes:
    """The rows as the encoder deflated them under Predictor 2 (8-bit): each sample minus the same sample of the
    pixel to its left, modulo 256 (the first pixel of a row as it is)."""
    import numpy as np

    rows = np.frombuffer(decoded, np.uint8).reshape(page.height, row_bytes)
    out = rows.copy()
    step = page.samples
    out[:, step:] = rows[:, step:] - rows[:, :-step]
    return out.tobytes()


def tiff_check_deflate(data: bytes, pages: list[TiffPage], max_pixels: int, decoded: bytes | None = None) -> None:
    """Raise :class:`Damaged` when a deflate strip or tile is not one whole zlib stream with the right Adler-32.

    libtiff inflates a strip only until it has the strip's rows: damaged bytes
    that leave the rows decodable are never seen (the picture is silently
    wrong), and the stream's checksum is never reached. Each block is inflated
    here to the end of its stream, in 1 MB steps, counted and never kept: a bad
    checksum or a stream zlib refuses is ``corrupt``; a stream that stops
    before its end with fewer bytes than the block's rows need is
    ``truncated``. Pages are checked while their pixels add up to at most
    ``max_pixels`` (the first always); a block that inflates past twice its
    rows' size (plus 1 MB) is not judged further (libtiff ignores the rest).

    ``decoded``: the first page's samples as libtiff decoded them (strips; no
    predictor, or horizontal differencing of 8-bit samples, redone here), when
    the caller has them. A strip whose rows
    there have the Adler-32 its stream ends with is whole (libtiff inflated
    exactly those bytes; damage would change them), and is not inflated again:
    about a millisecond instead of a second inflate. Any other strip (the sums
    differ, or the stream does not end at its byte count) is inflated.
    """
    total = 0
    for page in pages:
        total += page.width * page.height
        if page.number > 1 and total > max_pixels:
            return
        if page.compression not in _TIFF_DEFLATE:
            continue
        blocks = len(page.offsets)
        rows = page.rows_per_strip or page.height
        row_bytes = None
        if (decoded is not None and page.number == 1 and not page.tile and page.planar == 1 and page.height and rows
                and len(decoded) % page.height == 0 and (page.predictor == 1 or _tiff_bytewise_predictor(page))):
            row_bytes = len(decoded) // page.height
            view = memoryview(_tiff_undo_predictor(decoded, page, row_bytes) if page.predictor == 2 else decoded)
        for k, (start, length) in enumerate(zip(page.offsets, page.counts)):
            if not length:
                continue
            if row_bytes is not None and length > 4:
                first_row = k * rows
                stored = int.from_bytes(data[start + length - 4 : start + length], "big")
                part = view[first_row * row_bytes : min(first_row + rows, page.height) * row_bytes]
                if len(part) and zlib.adler32(part) == stored:
                    continue
            need = page.block_bytes(k)
            cap = 2 * need + (1 << 20)
            where = (f"TIFF {'page ' + str(page.number) + ' ' if len(pages) > 1 else ''}"
                     f"{page.block_name} {k + 1} of {blocks} (deflate, {length} bytes at offset {start})")
            inflater = zlib.decompressobj()
            got = 0
            pending = data[start : start + length]
            try:
                while pending and not inflater.eof and got <= cap:
                    got += len(inflater.decompress(pending, 1 << 20))
                    pending = inflater.unconsumed_tail
                if got > cap:
                    continue
                if not inflater.eof:
                    got += len(inflater.flush())
            except zlib.error as exc:
                text = str(exc).split(": ", 1)[-1]
                if "incorrect data check" in text:
                    raise Damaged("corrupt", f"{where} is damaged: its zlib stream fails its checksum (Adler-32)") \
                        from None
                raise Damaged("corrupt", f"{where} is damaged: zlib: {text}") from None
            if not inflater.eof and got < need:
                raise Damaged("truncated", f"{where} is cut short: its zlib stream stops after {got} of the {need} "
                                           f"bytes its rows need")


# --------------------------------------------------------------------------- BMP


def bmp_check_rle(data: bytes) -> None:
    """Walk the run-length stream of an RLE8/RLE4 BMP; raise :class:`Damaged` for one that is broken or cut.

    The stream is pairs: a run (count, value), or an escape — 0/0 end of line,
    0/1 end of bitmap, 0/2 delta (dx, dy), 0/n an absolute run of n pixels
    (padded to a 16-bit word). Pillow's decoder clips a run that overruns its
    row and stops once the picture is full, without reading the rest: a damaged
    stream decodes silently wrong. ``corrupt``: a run that overruns its row
    (past the row's padding to 32 bits, which encoders may fill) or writes
    below the last row, a delta out of the image. ``truncated``: the
    data ends before the end-of-bitmap marker with rows missing, or the stream
    ends (end-of-bitmap) with pixels missing (Pillow: "not enough image data").
    Other BMPs: nothing to do. One pass over the stream, nothing decoded.
    """
    end = len(data)
    if end < 34 or data[:2] != b"BM":
        return
    header = int.from_bytes(data[14:18], "little")
    if header < 40:
        return  # OS/2 1.x: no compression field
    compression = int.from_bytes(data[30:34], "little")
    bit_count = int.from_bytes(data[28:30], "little")
    if (compression, bit_count) not in ((1, 8), (2, 4)):
        return
    kind = "RLE8" if compression == 1 else "RLE4"
    width = abs(int.from_bytes(data[18:22], "little", signed=True))
    height = abs(int.from_bytes(data[22:26], "little", signed=True))
    pos = int.from_bytes(data[10:14], "little")
    if pos > end:
        raise Damaged("truncated", f"BMP is cut short: its {kind} data starts at offset {pos}, past the end of the "
                                   f"file ({end} bytes)")
    # Runs may cover the row's padding (ImageMagick encodes each row padded to its 32-bit stride: a 33-pixel row
    # as 36): the decoder drops those pixels. A run past the padding is damage.
    stride = -(-width * bit_count // 32) * 32 // bit_count
    x = y = 0

    def place(n: int, at: int) -> None:  # a run of n pixels (encoded or absolute) from offset ``at``
        nonlocal x
        if y >= height:
            raise Damaged("corrupt", f"BMP {kind} data is damaged: a run of {n} pixels at offset {at} "
                                     f"lies below the last of the {height} rows")
        if x + n > stride:
            raise Damaged("corrupt", f"BMP {kind} data is damaged: a run of {n} pixels at offset {at} "
                                     f"overruns row {y + 1} (from x {x}, the row is {width} pixels)")
        x += n

    while True:
        if pos + 2 > end:
            if y * width + x >= width * height:
                return  # every row written; only the end-of-bitmap marker is missing
            raise Damaged("truncated", f"BMP {kind} data is cut short at row {y + 1} of {height} (offset {pos}): "
                                       f"the file ends before its end-of-bitmap marker")
        count, value = data[pos], data[pos + 1]
        at = pos
        pos += 2
        if count:  # a run of ``count`` pixels
            place(count, at)
        elif value == 0:  # end of line
            x, y = 0, y + 1
        elif value == 1:  # end of bitmap
            if y * width + x < width * height:
                raise Damaged("truncated", f"BMP {kind} data ends (end-of-bitmap marker at offset {at}) at row "
                                           f"{y + 1} of {height}: rows missing (not enough image data)")
            return
        elif value == 2:  # delta
            if pos + 2 > end:
                raise Damaged("truncated", f"BMP {kind} data is cut short inside a delta at offset {at}")
            dx, dy = data[pos], data[pos + 1]
            pos += 2
            x, y = x + dx, y + dy
            if x > stride or y > height:
                raise Damaged("corrupt", f"BMP {kind} data is damaged: a delta ({dx}, {dy}) at offset {at} moves "
                                         f"outside the {width}×{height} image")
        else:  # an absolute run of ``value`` pixels
            size = value if compression == 1 else (value + 1) // 2
            if pos + size > end:
                raise Damaged("truncated", f"BMP {kind} data is cut short inside a run of {value} pixels at offset "
                                           f"{at}")
            place(value, at)
            pos += size + (size & 1)


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


# --------------------------------------------------------------------------- JPEG



def _jpeg_next_marker(data: bytes, pos: int) -> int:
    """Offset of the next marker at or after ``pos`` that ends entropy-coded data (not FF 00, RSTn or fill), or -1.

    ``bytes.find`` (memchr) jumps from one 0xFF byte to the next: entropy-coded
    data has one about every 256 bytes (FF 00), so a scan costs a few hundred
    Python steps, not one per byte.
    """
    end = len(data) - 1
    while True:
        at = data.find(b"\xff", pos, end)
        if at < 0:
            return -1
        nxt = data[at + 1]
        if nxt == 0 or 0xD0 <= nxt <= 0xD7 or nxt == 0xFF:
            pos = at + (1 if nxt == 0xFF else 2)
            continue
        return at
_SOF_LOSSLESS = frozenset({0xC3, 0xC7, 0xCB, 0xCF})
_SOF_DIFFERENTIAL = frozenset({0xC5, 0xC6, 0xC7, 0xCD, 0xCE, 0xCF})
_SOF_PROGRESSIVE = frozenset({0xC2, 0xC6, 0xCA, 0xCE})


@dataclass
class JpegScans:
    """What :func:`jpeg_scans` read: the frame's components and each scan header, and where the last scan's data ends."""

    progressive: bool = False
    components: list[int] = field(default_factory=list)
    scans: list[tuple[tuple[int, ...], int, int, int, int]] = field(default_factory=list)  # (ids, Ss, Se, Ah, Al)
    data_end: int | None = None  # offset of the marker that ends the last scan's entropy-coded data
    end_marker: int | None = None  # that marker (0xD9 for EOI)


def jpeg_scans(data: bytes, *, full: bool = False) -> JpegScans | None:
    """The frame header and every scan header (SOS) of the first image of a JPEG, up to its EOI.

    One pass over the marker segments; entropy-coded data is skipped from one
    0xFF byte to the next (:func:`_jpeg_next_marker`), nothing is decoded. A
    sequential JPEG whose first scan holds every component stops there (its
    coverage is complete) unless ``full``: then ``data_end`` says where the
    last scan's data ends. Returns
    None for what this does not judge (lossless or hierarchical JPEG, a marker
    segment whose length runs past the file: the decoder reports that).
    """
    out = JpegScans()
    end = len(data)
    pos = 2
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            pos = _jpeg_next_marker(data, pos)
            if pos < 0:
                return out
            continue
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker == 0xD9:
            break
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        seg_end = pos + 2 + length
        if length < 2 or seg_end > end:
            return None
        seg = data[pos + 4 : seg_end]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if marker in _SOF_LOSSLESS or marker in _SOF_DIFFERENTIAL or len(seg) < 6:
                return None
            out.progressive = marker in _SOF_PROGRESSIVE
            out.components = [seg[6 + 3 * i] for i in range(seg[5]) if 6 + 3 * i < len(seg)]
        elif marker == 0xDA and seg:
            ns = seg[0]
            if len(seg) < 4 + 2 * ns:
                return None
            ids = tuple(seg[1 + 2 * i] for i in range(ns))
            ss, se, a = seg[1 + 2 * ns], seg[2 + 2 * ns], seg[3 + 2 * ns]
            out.scans.append((ids, ss, se, a >> 4, a & 15))
            if not full and not out.progressive and set(ids) >= set(out.components):
                return out  # one sequential scan of every component codes them all: nothing after it to judge
            pos = _jpeg_next_marker(data, seg_end)
            if pos < 0:  # the scan runs to the end of the file: cut, which the decoder reports
                out.data_end = out.end_marker = None
                return out
            out.data_end, out.end_marker = pos, data[pos + 1]
            continue
        pos = seg_end
    return out


def jpeg_check_coverage(found: JpegScans) -> None:
    """Raise :class:`Damaged` ("truncated") when the scans do not code every coefficient of every component.

    A progressive JPEG codes its DCT coefficients over several scans: bands of
    coefficients (Ss–Se) per component, and bits of them by successive
    approximation (first scan down to bit Al, refinements Ah → Al). A file whose
    later scans are missing but which still ends with EOI decodes without a
    word from libjpeg (the picture is a blurred approximation); so is a
    sequential JPEG missing a component's scan. Complete means: every
    coefficient 0–63 of every frame component coded down to bit 0.
    """
    if not found.scans or not found.components:
        return
    lowest: dict[int, list[int | None]] = {c: [None] * 64 for c in found.components}
    for ids, ss, se, ah, al in found.scans:
        if not found.progressive:
            ss, se, ah, al = 0, 63, 0, 0
        for c in ids:
            bits = lowest.get(c)
            if bits is None:
                continue
            for k in range(ss, min(se, 63) + 1):
                if ah == 0:
                    bits[k] = al if bits[k] is None else min(bits[k], al)
                elif bits[k] == ah:
                    bits[k] = al
    missing = []
    for n, c in enumerate(found.components, start=1):
        short = [k for k, b in enumerate(lowest[c]) if b != 0]
        if short:
            missing.append(f"component {n} {len(short)} of 64 coefficients")
    if missing:
        kind = "progressive " if found.progressive else ""
        raise Damaged("truncated", f"{kind}JPEG scan data stops early: after its {len(found.scans)} scans "
                                   f"leave {', '.join(missing)} not coded down to bit 0 (later scans missing before the end marker)")
