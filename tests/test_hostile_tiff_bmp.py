"""TIFF and BMP structures a decoder reads too little of: tile bombs, deflate strips, RLE streams, cut directories.

Kinds of fault (variant hunt round 3, findings 1, 2, 4, 8, 9, 10):

* a small TIFF whose one tile (or strip) is declared huge: libtiff allocates
  the whole tile before decoding it (a 64×64 image, 16384×16384 tile: 800 MB).
  Every strip and tile is held against ``max_pixels`` and against its page's
  size before any decoder runs: ``decompression bomb`` — in verification and in
  :func:`dsbuild.formats.open_image` (predict, thumbnails);
* a deflate TIFF with damaged bytes in a strip: libtiff inflates only until it
  has the rows, so the zlib checksum is never reached and the picture is
  silently wrong. Every deflate strip/tile is inflated to its end: ``corrupt``;
* an RLE8/RLE4 BMP whose stream is damaged (Pillow clips an overrunning run and
  stops once the picture is full): ``corrupt``; cut, or ended with pixels
  missing: ``truncated`` (Pillow says "not enough image data");
* a TIFF cut inside or before a directory (libtiff writes it last), or whose
  strip/tile data runs past the end of the file: ``truncated``, for every page.

Inputs are real photos encoded by Pillow (tifffile for a tiled TIFF, a small
RLE encoder below for BMP: Pillow writes no RLE), damaged by byte edits. The
same files whole are accepted; each damaged one is rejected with an exact
reason and a detail naming the place.
"""

from __future__ import annotations

import io
import re
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from hostile_kit import Project, encode, photo

BOMB = "decompression bomb"


# --------------------------------------------------------------------------- TIFF builders


def _tiled(tile: int, width: int = 64, pixels: bytes | None = None) -> bytes:
    """A width×width RGB TIFF in one deflate tile declared tile×tile (a valid file for tile ≥ width, any tile)."""
    co = zlib.compressobj(9)
    if pixels is None:
        stream = b"".join(co.compress(b"\0" * (tile * 3)) for _ in range(tile)) + co.flush()
    else:
        stream = co.compress(pixels) + co.flush()
    entries = [(256, 3, 1, width), (257, 3, 1, width), (258, 3, 3, None), (259, 3, 1, 8), (262, 3, 1, 2),
               (277, 3, 1, 3), (284, 3, 1, 1), (322, 4, 1, tile), (323, 4, 1, tile), (324, 4, 1, None),
               (325, 4, 1, len(stream))]
    bits_at = 8 + 2 + 12 * len(entries) + 4
    data_at = bits_at + 6
    out = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        if tag == 258:
            out += struct.pack("<HHII", tag, typ, count, bits_at)
        elif tag == 324:
            out += struct.pack("<HHII", tag, typ, count, data_at)
        elif typ == 3:
            out += struct.pack("<HHIHH", tag, typ, count, value, 0)
        else:
            out += struct.pack("<HHII", tag, typ, count, value)
    return out + struct.pack("<I", 0) + struct.pack("<HHH", 8, 8, 8) + stream


def _real_tile(tile: int = 256) -> bytes:
    """A 64×64 photo in one tile×tile deflate tile (the picture in its top-left corner, as libtiff pads tiles)."""
    img = np.zeros((tile, tile, 3), np.uint8)
    img[:64, :64] = np.asarray(photo("coffee", (64, 64)))
    return _tiled(tile, 64, img.tobytes())


def _strips(data: bytes, page: int = 0) -> list[tuple[int, int]]:
    im = Image.open(io.BytesIO(data))
    im.seek(page)
    return list(zip(im.tag_v2[273], im.tag_v2[279]))


def _deflate_tiff() -> bytes:
    return encode(photo("astronaut", (300, 200)), "TIFF", compression="tiff_adobe_deflate")


def _deflate_damaged(strip: int, whole: bytes | None = None, tags: tuple[int, int] = (273, 279)) -> bytes:
    """The deflate TIFF with 8 bytes XOR 0x5A inside strip (or tile: ``tags`` 324, 325) ``strip``, at the first place
    where Pillow and libtiff decode it without an exception and with other pixels (the damage only the zlib
    checksum sees)."""
    whole = whole or _deflate_tiff()
    ref = np.asarray(Image.open(io.BytesIO(whole)).convert("RGB"))
    im = Image.open(io.BytesIO(whole))
    start, length = list(zip(im.tag_v2[tags[0]], im.tag_v2[tags[1]]))[strip]
    for at in range(start + 100, start + length - 200, 31):
        data = bytearray(whole)
        for i in range(at, at + 8):
            data[i] ^= 0x5A
        try:
            zlib.decompress(bytes(data[start : start + length]))
            continue
        except zlib.error as exc:
            if "incorrect data check" not in str(exc):
                continue
        try:
            im = Image.open(io.BytesIO(bytes(data)))
            im.load()
        except Exception:  # noqa: BLE001 - the decoder saw it: not the case wanted
            continue
        if not np.array_equal(np.asarray(im.convert("RGB")), ref):
            return bytes(data)
    raise AssertionError("no silently damaging position found")


def _two_pages() -> bytes:
    return encode(photo("camera", (200, 150)), "TIFF", compression="tiff_lzw", save_all=True,
                  append_images=[photo("coins", (200, 150))])


def _ifd_offsets(data: bytes) -> list[int]:
    out, offset = [], struct.unpack("<I", data[4:8])[0]
    while offset:
        out.append(offset)
        count = struct.unpack("<H", data[offset : offset + 2])[0]
        offset = struct.unpack("<I", data[offset + 2 + 12 * count : offset + 6 + 12 * count])[0]
    return out


def _strips_tifffile() -> bytes:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, np.asarray(photo("moon", (256, 192)).convert("RGB")), rowsperstrip=64, compression="zlib",
                     predictor=True, photometric="rgb")
    return buf.getvalue()


def _tiled_tifffile(compression, predictor: bool = False, name: str = "rocket") -> bytes:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, np.asarray(photo(name, (256, 192))), tile=(64, 64), compression=compression,
                     photometric="rgb", predictor=predictor or None)
    return buf.getvalue()


# --------------------------------------------------------------------------- BMP builders


def _bmp(width: int, height: int, stream: bytes, palette: list[tuple[int, int, int]], bits: int) -> bytes:
    pal = b"".join(bytes([b, g, r, 0]) for r, g, b in palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bits, 1 if bits == 8 else 2, len(stream), 2835, 2835,
                       len(palette), 0)
    offset = 14 + 40 + len(pal)
    return b"BM" + struct.pack("<IHHI", offset + len(stream), 0, 0, offset) + info + pal + stream


def _rle(indices: np.ndarray, bits: int) -> bytes:
    """RLE8 (bits 8) or RLE4 (bits 4) of a palette image: runs of 3+ equal pixels encoded, other pixels in absolute
    runs (word-padded), an end of line after every row and an end of bitmap last; bottom row first."""
    out = bytearray()

    def literal(values: list[int]) -> None:
        while values:
            part, values = values[:255], values[255:]
            if len(part) < 3:
                for v in part:
                    out.extend([1, v * 17 if bits == 4 else v])
                continue
            if bits == 8:
                body = bytes(part)
            else:
                padded = part + [0] * (len(part) % 2)
                body = bytes((padded[i] << 4) | padded[i + 1] for i in range(0, len(padded), 2))
            out.extend([0, len(part)])
            out.extend(body + b"\0" * (len(body) % 2))

    for y in range(indices.shape[0] - 1, -1, -1):
        row = [int(v) for v in indices[y]]
        x, pending = 0, []
        while x < len(row):
            n = 1
            while x + n < len(row) and row[x + n] == row[x] and n < 255:
                n += 1
            if n >= 3:
                literal(pending)
                pending = []
                out.extend([n, row[x] * 17 if bits == 4 else row[x]])
            else:
                pending.extend(row[x : x + n])
            x += n
        literal(pending)
        out.extend(b"\0\0")
    return bytes(out + b"\0\1")


def _rle_bmp(bits: int) -> tuple[bytes, bytes, int, int, list]:
    """(file, stream, width, height, palette) of a photo as an RLE8 or RLE4 BMP."""
    img = photo("chelsea", (200, 150)).convert("P", palette=Image.Palette.ADAPTIVE, colors=256 if bits == 8 else 16)
    n = 256 if bits == 8 else 16
    flat = img.getpalette()[: 3 * n]
    palette = [tuple(flat[3 * i : 3 * i + 3]) for i in range(n)]
    stream = _rle(np.asarray(img), bits)
    return _bmp(200, 150, stream, palette, bits), stream, 200, 150, palette


def _rle8_padded_rows() -> bytes:
    """A 201-pixel-wide RLE8 BMP whose rows are encoded padded to their 32-bit stride (204 pixels), as ImageMagick
    writes them: the last run of each row covers the padding, which the decoder drops. A valid file."""
    img = photo("coins", (201, 150)).convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    indices = np.zeros((150, 204), np.uint8)
    indices[:, :201] = np.asarray(img)
    indices[:, 201:] = indices[:, 200:201]  # the padding repeats the last pixel: one run crosses the edge
    flat = (img.getpalette() + [0] * 768)[: 3 * 256]
    return _bmp(201, 150, _rle(indices, 8), [tuple(flat[3 * i : 3 * i + 3]) for i in range(256)], 8)


def _rle_damaged(bits: int, how: str) -> bytes:
    _whole, stream, width, height, palette = _rle_bmp(bits)
    mid = len(stream) // 2
    # a pair boundary near the middle: walk the stream to it
    pos = 0
    while pos < mid:
        count, value = stream[pos], stream[pos + 1]
        if count or value in (0, 1):
            pos += 2
        elif value == 2:
            pos += 4
        else:
            size = value if bits == 8 else (value + 1) // 2
            pos += 2 + size + (size & 1)
    if how == "extra_eol":
        stream = stream[:pos] + b"\0\0" + stream[pos:]
    elif how == "delta":
        stream = stream[:pos] + b"\0\2\xff\x40" + stream[pos:]
    elif how == "overrun":
        stream = stream[:pos] + bytes([250, 7]) + stream[pos:]
    elif how == "zeroed":
        stream = stream[:pos] + b"\0" * 40 + stream[pos + 40 :]
    elif how == "early_end":
        stream = stream[:pos] + b"\0\1"
    return _bmp(width, height, stream, palette, bits)


def _cut(data: bytes, fraction: float) -> bytes:
    return data[: int(len(data) * fraction)]


# --------------------------------------------------------------------------- the cases

# name -> (bytes, status, reason, detail pattern)
CASES = {
    # a tile far larger than its page: refused before libtiff allocates it
    "tilebomb_4096.tif": (lambda: _tiled(4096), "rejected", BOMB,
                          r"^TIFF declares tiles of 4096×4096 = 16777216 pixels for a 64×64 image"),
    "tilebomb_16384.tif": (lambda: _tiled(16384), "rejected", BOMB,
                           r"^TIFF declares tiles of 16384×16384 = 268435456 pixels, which exceeds max_pixels"),
    "tile_256.tif": (_real_tile, "ok", None, None),  # a small picture in a common tile size is no bomb
    # deflate strips: the zlib checksum
    "deflate_whole.tif": (_deflate_tiff, "ok", None, None),
    "deflate_strip1.tif": (lambda: _deflate_damaged(0), "rejected", "corrupt",
                           r"^TIFF strip 1 of \d+ \(deflate, \d+ bytes at offset 8\) is damaged: its zlib stream "
                           r"fails its checksum \(Adler-32\)$"),
    "deflate_strip2.tif": (lambda: _deflate_damaged(1), "rejected", "corrupt",
                           r"^TIFF strip 2 of \d+ \(deflate, .*\) is damaged: its zlib stream fails its checksum"),
    # RGBA (the decoded rows are summed, then the stream inflated when they differ)
    "deflate_rgba_strip1.tif": (lambda: _deflate_damaged(0, encode(photo("coins", (300, 200)).convert("RGBA"), "TIFF",
                                                                    compression="tiff_adobe_deflate")),
                                "rejected", "corrupt", r"^TIFF strip 1 of \d+ \(deflate, .*\) is damaged: its zlib "
                                                       r"stream fails its checksum"),
    # horizontal differencing (Predictor 2), in strips: redone on the decoded rows before they are summed
    "predictor_strip2.tif": (lambda: _deflate_damaged(1, _strips_tifffile()), "rejected", "corrupt",
                             r"^TIFF strip 2 of 3 \(deflate, .*\) is damaged: its zlib stream fails its checksum"),
    "predictor_strips_whole.tif": (_strips_tifffile, "ok", None, None),
    # with a predictor, and in tiles: the streams are inflated (no decoded rows to sum)
    "predictor_tile3.tif": (lambda: _deflate_damaged(2, _tiled_tifffile("zlib", predictor=True, name="clock"), (324, 325)),
                            "rejected", "corrupt",
                            r"^TIFF tile 3 of 12 \(deflate, .*\) is damaged: its zlib stream fails its checksum"),
    "predictor_whole.tif": (lambda: _tiled_tifffile("zlib", predictor=True, name="clock"), "ok", None, None),
    # tiled deflate (directory first, as tifffile writes it) cut: the tile extents say so
    "tiled_deflate_whole.tif": (lambda: _tiled_tifffile("zlib"), "ok", None, None),
    "tiled_deflate_cut55.tif": (lambda: _cut(_tiled_tifffile("zlib"), 0.55), "rejected", "truncated",
                                r"^TIFF is truncated: page 1's tile \d+ of 12 \(\d+ bytes at offset \d+\) ends past "
                                r"the end of the file"),
    "tiled_deflate_cut90.tif": (lambda: _cut(_tiled_tifffile("zlib"), 0.90), "rejected", "truncated",
                                r"tile \d+ of 12 .* ends past the end of the file"),
    # directories cut (written last): one page, and the second of two
    "two_pages.tif": (_two_pages, "ok", None, None),
    "one_page_minus30.tif": (lambda: encode(photo("moon", (200, 150)), "TIFF", compression="tiff_lzw")[:-30],
                             "rejected", "truncated",
                             r"^TIFF is cut short: its directory at offset \d+ holds \d+ entries"),
    "one_page_minus4.tif": (lambda: encode(photo("moon", (200, 150)), "TIFF", compression="tiff_lzw")[:-4],
                            "rejected", "truncated",
                            r"^TIFF is cut short: page 1's StripOffsets \(\d+ values at offset \d+\) lies past"),
    "two_pages_in_ifd2.tif": (lambda: _two_pages()[: _ifd_offsets(_two_pages())[1] + 60], "rejected", "truncated",
                              r"^TIFF is cut short: page 2's directory at offset \d+ holds \d+ entries"),
    "two_pages_before_ifd2.tif": (lambda: _two_pages()[: _ifd_offsets(_two_pages())[1]], "rejected", "truncated",
                                  r"^TIFF is cut short: page 2's directory at offset \d+ lies past the end"),
    # RLE BMPs
    "rle8_whole.bmp": (lambda: _rle_bmp(8)[0], "ok", None, None),
    "rle4_whole.bmp": (lambda: _rle_bmp(4)[0], "ok", None, None),
    "rle8_padded_rows.bmp": (_rle8_padded_rows, "ok", None, None),
    "rle8_extra_eol.bmp": (lambda: _rle_damaged(8, "extra_eol"), "rejected", "corrupt",
                           r"^BMP RLE8 data is damaged: a run of \d+ pixels at offset \d+ lies below the last of the "
                           r"150 rows$"),
    "rle8_delta.bmp": (lambda: _rle_damaged(8, "delta"), "rejected", "corrupt",
                       r"^BMP RLE8 data is damaged: a delta \(255, 64\) at offset \d+ moves outside the 200×150 image"),
    "rle8_overrun.bmp": (lambda: _rle_damaged(8, "overrun"), "rejected", "corrupt",
                         r"^BMP RLE8 data is damaged: a run of \d+ pixels at offset \d+ overruns row \d+ "),
    "rle8_zeroed.bmp": (lambda: _rle_damaged(8, "zeroed"), "rejected", "corrupt", r"^BMP RLE8 data is damaged: "),
    "rle4_extra_eol.bmp": (lambda: _rle_damaged(4, "extra_eol"), "rejected", "corrupt",
                           r"^BMP RLE4 data is damaged: a run of \d+ pixels at offset \d+ lies below the last"),
    "rle8_cut55.bmp": (lambda: _cut(_rle_bmp(8)[0], 0.55), "rejected", "truncated",
                       r"^BMP RLE8 data is cut short .*at row \d+ of 150|^BMP RLE8 data is cut short inside"),
    "rle4_cut95.bmp": (lambda: _cut(_rle_bmp(4)[0], 0.95), "rejected", "truncated", r"^BMP RLE4 data is cut short"),
    "rle8_early_end.bmp": (lambda: _rle_damaged(8, "early_end"), "rejected", "truncated",
                           r"^BMP RLE8 data ends \(end-of-bitmap marker at offset \d+\) at row \d+ of 150: rows "
                           r"missing"),
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    proj = Project(tmp_path_factory.mktemp("tiffbmp"))
    for name, (make, *_rest) in CASES.items():
        proj.add("a", name, make())
    proj.add("b", "control.png", encode(photo("immunohistochemistry", (100, 80)), "PNG"))
    proj.set("dedup", near=False)
    assert proj.build()[0] == 0
    return proj.by_name()


@pytest.mark.parametrize("name", list(CASES))
def test_tiff_and_bmp_structure(built, name: str) -> None:
    _make, status, reason, detail = CASES[name]
    row = built[name]
    assert (row["status"], row["reason"]) == (status, reason), row["detail"]
    if detail is not None:
        assert re.search(detail, row["detail"]), row["detail"]
        assert row["path"] is None


def test_the_builders_make_what_they_say() -> None:
    """The whole files decode to the pictures they were made from (the encoders above are right), and each
    damaged BMP decodes silently in Pillow (the fault is one only the stream walk sees)."""
    whole, _stream, _w, _h, _palette = _rle_bmp(8)
    ref = photo("chelsea", (200, 150)).convert("P", palette=Image.Palette.ADAPTIVE, colors=256).convert("RGB")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(whole)).convert("RGB")), np.asarray(ref))
    whole4 = _rle_bmp(4)[0]
    ref4 = photo("chelsea", (200, 150)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).convert("RGB")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(whole4)).convert("RGB")), np.asarray(ref4))
    padded = Image.open(io.BytesIO(_rle8_padded_rows())).convert("RGB")
    ref = photo("coins", (201, 150)).convert("P", palette=Image.Palette.ADAPTIVE, colors=256).convert("RGB")
    assert np.array_equal(np.asarray(padded), np.asarray(ref))
    for how in ("extra_eol", "delta", "zeroed"):
        Image.open(io.BytesIO(_rle_damaged(8, how))).load()  # Pillow says nothing
    tile = Image.open(io.BytesIO(_real_tile()))
    assert np.array_equal(np.asarray(tile.convert("RGB")), np.asarray(photo("coffee", (64, 64))))


def test_a_tile_over_max_pixels_is_a_bomb_under_a_low_limit(tmp_path) -> None:
    """max_pixels holds for a tile as for the image: a 64×64 image in a 2048×2048 tile, under max_pixels 1,000,000."""
    proj = Project(tmp_path)
    proj.add("a", "tile.tif", _tiled(2048))
    proj.add("b", "control.png", encode(photo("immunohistochemistry", (100, 80)), "PNG"))
    proj.set("verify", max_pixels=1_000_000)
    assert proj.build()[0] == 0
    row = proj.by_name()["tile.tif"]
    assert (row["status"], row["reason"]) == ("rejected", BOMB), row["detail"]
    assert row["detail"].startswith("TIFF declares tiles of 2048×2048 = 4194304 pixels, which exceeds max_pixels "
                                    "1000000"), row["detail"]


def test_open_image_refuses_a_tile_bomb(tmp_path) -> None:
    """predict, similar and thumbnails open untrusted files through formats.open_image: the tile is checked there."""
    from dsbuild.formats import Refused, open_image

    path = tmp_path / "bomb.tif"
    path.write_bytes(_tiled(4096))
    with pytest.raises(Refused) as caught:
        open_image(path)
    assert caught.value.reason == BOMB
    assert "tiles of 4096×4096" in caught.value.detail
    fine = tmp_path / "fine.tif"
    fine.write_bytes(_real_tile())
    with open_image(fine) as img:
        img.load()
        assert img.size == (64, 64)
