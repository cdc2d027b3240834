"""Palette indices past the palette, and later frames of animated WebP and APNG files, are held to the file.

Kind of fault (hunt 3, findings 3, 5, 6, 7): what the decoder shows is not what the file says.

* A palette image (PNG, GIF, BMP) whose pixels use indices past the end of its
  palette decodes silently with those pixels black (Pillow, libpng, browsers):
  ``corrupt``, naming the index and the palette's length. Palettes shorter than
  ``2^bits`` whose indices stay within are valid and accepted.
* An animated WebP whose later frame is damaged or cut: rejected, as a GIF,
  TIFF or MPO later frame is (the demuxer checks only the container).
* An APNG whose fdAT data is damaged (bad chunk checksum, or a zlib stream that
  does not inflate) is ``corrupt``; one whose frames stop before acTL's
  ``num_frames`` is ``truncated`` (the file ends early) or ``corrupt`` (IEND
  follows: the file says it is whole).

Inputs: real photos (``skimage.data``) encoded by Pillow at test time, then
damaged by byte edits (checksums fixed where the damage must be inside the
data). Every case is checked against its intact original, which is accepted.
"""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from hostile_kit import Project, encode, photo


def _crc_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _png_chunks(data: bytes) -> list[tuple[bytes, int, int]]:
    """(kind, offset, data length) of every chunk of a PNG."""
    pos, out = 8, []
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        out.append((data[pos + 4 : pos + 8], pos, length))
        pos += 12 + length
    return out


# --------------------------------------------------------------------------- palettes


def _quantised(colours: int = 16, name: str = "astronaut") -> Image.Image:
    img = photo(name, (160, 120)).convert("P", palette=Image.Palette.ADAPTIVE, colors=colours)
    assert np.asarray(img).max() == colours - 1
    return img


def _png_short_plte(img: Image.Image, entries: int, bits: int = 4) -> bytes:
    """``img`` as a ``bits``-bit PNG whose PLTE keeps only its first ``entries`` colours (CRC right)."""
    data = encode(img, "PNG", bits=bits)
    out = [data[:8]]
    for kind, pos, length in _png_chunks(data):
        body = data[pos + 8 : pos + 8 + length]
        out.append(_crc_chunk(kind, body[: 3 * entries] if kind == b"PLTE" else body))
    return b"".join(out)


def _bmp8(img: Image.Image, colours_used: int) -> bytes:
    """``img`` (P) as an 8-bit uncompressed BMP whose palette holds ``colours_used`` entries (biClrUsed)."""
    idx = np.asarray(img)
    height, width = idx.shape
    pal = img.getpalette()
    rows = b"".join(idx[y].tobytes() + b"\0" * ((-width) % 4) for y in range(height - 1, -1, -1))
    palette = b"".join(bytes([pal[3 * i + 2], pal[3 * i + 1], pal[3 * i], 0]) for i in range(colours_used))
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 0, len(rows), 2835, 2835, colours_used, 0)
    offset = 14 + 40 + len(palette)
    return b"BM" + struct.pack("<IHHI", offset + len(rows), 0, 0, offset) + info + palette + rows


def _gif_short_table(img: Image.Image, size_field: int) -> bytes:
    """``img`` as a GIF whose global colour table is cut to ``2^(size_field+1)`` entries (its pixels unchanged)."""
    data = encode(img, "GIF")
    flags = data[10]
    assert flags & 0x80
    old = 3 * 2 ** ((flags & 7) + 1)
    new = 3 * 2 ** (size_field + 1)
    return data[:10] + bytes([(flags & 0xF8) | size_field]) + data[11:13] + data[13 : 13 + new] + data[13 + old :]


PALETTE_BAD = {
    "plte4.png": (lambda: _png_short_plte(_quantised(), 4), r"PNG pixel index 15 lies beyond its 4-colour palette"),
    "plte15.png": (lambda: _png_short_plte(_quantised(), 15), r"PNG pixel index 15 lies beyond its 15-colour"),
    "plte8_8bit.png": (lambda: _png_short_plte(_quantised(40, "coffee"), 8, bits=8),
                       r"PNG pixel index 39 lies beyond its 8-colour palette"),
    "clrused4.bmp": (lambda: _bmp8(_quantised(), 4), r"BMP pixel index 15 lies beyond its 4-colour palette"),
    "table4.gif": (lambda: _gif_short_table(_quantised(), 1), r"GIF pixel index 15 lies beyond its 4-colour palette"),
}
PALETTE_GOOD = {  # palettes shorter than 2^bits, every index within: valid
    "plte11_4bit.png": lambda: _png_short_plte(_quantised(11, "chelsea"), 11),
    "plte3_2bit.png": lambda: _png_short_plte(_quantised(3, "rocket"), 3, bits=2),
    "plte40_8bit.png": lambda: _png_short_plte(_quantised(40, "coffee"), 40, bits=8),
    "clrused16.bmp": lambda: _bmp8(_quantised(16, "camera"), 16),
    "clrused5.bmp": lambda: _bmp8(_quantised(5, "coins"), 5),
    "gif16.gif": lambda: encode(_quantised(16, "clock"), "GIF"),
    "gif3.gif": lambda: encode(_quantised(3, "moon"), "GIF"),
    "transparent.gif": lambda: encode(_quantised(7, "immunohistochemistry"), "GIF", transparency=6),
}



def _built(root: Path, files: dict[str, dict[str, bytes]]) -> dict[str, dict]:
    """``files`` (class → file name → bytes) built at default verify settings (near duplicates off: each file is
    judged on its own); the catalog's row of each file, by name."""
    proj = Project(root)
    for label, named in files.items():
        for name, data in named.items():
            proj.add(label, name, data)
    proj.set("dedup", near=False, semantic=False)
    assert proj.build()[0] == 0
    return proj.by_name()


def test_palette_indices_past_the_palette_are_corrupt(tmp_path) -> None:
    """Indices past the palette's end: ``corrupt`` with the index and length; short palettes used within: ``ok``."""
    rows = _built(tmp_path, {"a": {n: make() for n, (make, _detail) in PALETTE_BAD.items()},
                             "b": {n: make() for n, make in PALETTE_GOOD.items()}})
    for name, (_make, detail) in PALETTE_BAD.items():
        row = rows[name]
        assert (row["status"], row["reason"]) == ("rejected", "corrupt"), (name, row["status"], row["detail"])
        assert re.search(detail, row["detail"]), (name, row["detail"])
    for name in PALETTE_GOOD:
        assert rows[name]["status"] == "ok", (name, rows[name]["reason"], rows[name]["detail"])
        assert rows[name]["warnings"] == [], (name, rows[name]["warnings"])


# --------------------------------------------------------------------------- palettes of later frames (GIF, APNG)


def _gif_anim() -> bytes:
    """Three real photos, 16 colours each, as an animated GIF: frame 1 on the global table, frames 2 and 3 on
    16-colour local tables of their own."""
    a, b, c = (_quantised(16, n) for n in ("astronaut", "coffee", "rocket"))
    return encode(a, "GIF", save_all=True, append_images=[b, c], duration=100)


def _gif_cut_local(data: bytes, which: int, size_field: int) -> bytes:
    """``data`` with the local colour table of image ``which`` (0-based) cut to ``2^(size_field+1)`` entries."""
    pos = 13 + (3 * 2 ** ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
    n = 0
    while data[pos] != 0x3B:
        if data[pos] == 0x21:
            pos += 2
        else:
            local = data[pos + 9]
            if n == which:
                assert local & 0x80, "no local colour table"
                old, new = 3 * 2 ** ((local & 7) + 1), 3 * 2 ** (size_field + 1)
                return (data[: pos + 9] + bytes([(local & 0xF8) | size_field]) + data[pos + 10 : pos + 10 + new]
                        + data[pos + 10 + old :])
            n += 1
            pos += 10 + (3 * 2 ** ((local & 7) + 1) if local & 0x80 else 0) + 1
        while data[pos]:
            pos += data[pos] + 1
        pos += 1
    raise AssertionError(f"no image {which}")


def _apng_palette(plte: int) -> bytes:
    """An 8-bit palette APNG of three real photos on one 40-colour palette: frame 1 uses indices 0–15 only, frames
    2 and 3 all 40; its PLTE cut to ``plte`` entries (CRC right)."""
    pal = _quantised(40, "coffee")
    first = Image.fromarray((np.asarray(photo("astronaut", (160, 120)).quantize(palette=pal)) % 16).astype("uint8"), "P")
    first.putpalette(pal.getpalette())
    second = photo("rocket", (160, 120)).quantize(palette=pal)
    assert np.asarray(second).max() == 39
    data = encode(first, "PNG", save_all=True, append_images=[second, pal], duration=100)
    out = [data[:8]]
    for kind, pos, length in _png_chunks(data):
        body = data[pos + 8 : pos + 8 + length]
        out.append(_crc_chunk(kind, body[: 3 * plte] if kind == b"PLTE" else body))
    return b"".join(out)


_NO_COLOUR = (r"lies beyond its 4-colour palette \(indices 0–3\): \d+ % of the pixels have no colour \(readers "
              r"disagree: Pillow shows them black, browsers other colours\); the palette is damaged or cut short — "
              r"re-export the image from its source$")


def test_palette_indices_of_later_gif_and_apng_frames_are_checked(tmp_path) -> None:
    """A later frame whose indices run past its colour table (a GIF's local table cut, an APNG's shared PLTE cut
    below what frames 2–3 use while frame 1 stays within) passed: only the first frame's were counted. Now
    ``corrupt``, naming the frame; the intact animations stay ``ok``."""
    gif, apng = _gif_anim(), _apng_palette(40)
    bad = {
        "gif_f2.gif": (_gif_cut_local(gif, 1, 1), r"^frame 2 of 3: GIF pixel index 15 " + _NO_COLOUR),
        "gif_f3.gif": (_gif_cut_local(gif, 2, 1), r"^frame 3 of 3: GIF pixel index 15 " + _NO_COLOUR),
        "apng_plte16.png": (_apng_palette(16), r"^frame 2 of 3: PNG pixel index 39 lies beyond its 16-colour palette "
                                               r"\(indices 0–15\): 9\d % of the pixels have no colour"),
    }
    rows = _built(tmp_path, {"a": {n: data for n, (data, _detail) in bad.items()},
                             "b": {"gif.gif": gif, "apng.png": apng}})
    for name, (_data, detail) in bad.items():
        row = rows[name]
        assert (row["status"], row["reason"]) == ("rejected", "corrupt"), (name, row["status"], row["detail"])
        assert re.search(detail, row["detail"]), (name, row["detail"])
    for name in ("gif.gif", "apng.png"):
        assert (rows[name]["status"], rows[name]["warnings"]) == ("ok", []), (name, rows[name]["detail"])


def test_later_frames_past_the_decode_caps_are_not_checked_and_a_note_says_so(tmp_path) -> None:
    """The caps of later-frame decoding hold for the palette check: with max_pixels = two frames, frame 3 of a GIF
    (or an APNG) is not decoded — a file whose only damage is there is accepted, with the note naming the frames
    not decoded; damage in frame 2, within the cap, is found."""
    proj = Project(tmp_path)
    proj.add("a", "gif_f3.gif", _gif_cut_local(_gif_anim(), 2, 1))
    proj.add("a", "gif_f2.gif", _gif_cut_local(_gif_anim(), 1, 1))
    proj.add("b", "apng_plte16.png", _apng_palette(16))
    proj.set("dedup", near=False, semantic=False)
    proj.set("verify", max_pixels=2 * 160 * 120)
    assert proj.build()[0] == 0
    rows = proj.by_name()
    assert rows["gif_f3.gif"]["status"] == "ok", rows["gif_f3.gif"]["detail"]
    assert rows["gif_f3.gif"]["warnings"] == ["frames 3–3 not decoded (more than 1000 frames or 38400 pixels in all)"]
    assert (rows["gif_f2.gif"]["reason"], rows["gif_f2.gif"]["detail"][:14]) == ("corrupt", "frame 2 of 3: ")
    assert (rows["apng_plte16.png"]["reason"], rows["apng_plte16.png"]["detail"][:14]) == ("corrupt", "frame 2 of 3: ")


def _riff_chunks(data: bytes, pos: int, end: int) -> list[tuple[bytes, int, int]]:
    out = []
    while pos + 8 <= end:
        (length,) = struct.unpack("<I", data[pos + 4 : pos + 8])
        out.append((data[pos : pos + 4], pos, length))
        pos += 8 + length + (length & 1)
    return out


def _webp_anim(lossless: bool) -> bytes:
    a, b, c = (photo(n, (160, 120)) for n in ("astronaut", "coffee", "rocket"))
    kw = {"lossless": True} if lossless else {"quality": 80}
    return encode(a, "WEBP", save_all=True, append_images=[b, c], duration=100, **kw)


def _webp_frame2(data: bytes, how: str) -> bytes:
    """``data`` (an animated WebP) with frame 2's VP8/VP8L bitstream damaged: 40 bytes flipped in its entropy-code
    header, 12 bytes in (``flip``: libwebp refuses it; flips deep in the coded data mostly decode silently, WebP has
    no checksum), or cut to half its length with every enclosing chunk size fixed (``half``: the container is whole)."""
    out = bytearray(data)
    _k, pos, n = [c for c in _riff_chunks(data, 12, len(data)) if c[0] == b"ANMF"][1]
    kind, bpos, bn = [c for c in _riff_chunks(data, pos + 24, pos + 8 + n) if c[0] in (b"VP8 ", b"VP8L")][0]
    if how == "flip":
        for i in range(bpos + 8 + 12, bpos + 8 + 52):
            out[i] ^= 0x5A
        return bytes(out)
    half = (bn // 2) & ~1
    sub = data[pos + 24 : bpos] + kind + struct.pack("<I", half) + data[bpos + 8 : bpos + 8 + half] + \
        data[bpos + 8 + bn + (bn & 1) : pos + 8 + n]
    new = data[:pos] + b"ANMF" + struct.pack("<I", 16 + len(sub)) + data[pos + 8 : pos + 24] + sub + \
        data[pos + 8 + n + (n & 1) :]
    return new[:4] + struct.pack("<I", len(new) - 8) + new[8:]


def test_a_damaged_later_webp_frame_rejects_the_file(tmp_path) -> None:
    """Frame 2 of an animated WebP damaged or cut: ``corrupt`` naming the frame; the intact animations: ``ok``."""
    lossless, lossy = _webp_anim(True), _webp_anim(False)
    bad = {"lossless_flip.webp": _webp_frame2(lossless, "flip"), "lossless_half.webp": _webp_frame2(lossless, "half"),
           "lossy_flip.webp": _webp_frame2(lossy, "flip"), "lossy_half.webp": _webp_frame2(lossy, "half")}
    rows = _built(tmp_path, {"a": bad, "b": {"lossless.webp": lossless, "lossy.webp": lossy}})
    for name in bad:
        row = rows[name]
        assert (row["status"], row["reason"]) == ("rejected", "corrupt"), (name, row["status"], row["detail"])
        assert row["detail"].startswith("frame 2 of 3: libwebp cannot decode this frame's bitstream"), row["detail"]
    for name in ("lossless.webp", "lossy.webp"):
        assert (rows[name]["status"], rows[name]["warnings"]) == ("ok", []), (name, rows[name]["detail"])


# --------------------------------------------------------------------------- APNG


def _apng(default_image: bool = False) -> bytes:
    a, b, c = (photo(n, (160, 120)) for n in ("astronaut", "coffee", "rocket"))
    if default_image:  # an IDAT image that is not part of the animation, then 3 frames of fdAT
        return encode(photo("chelsea", (160, 120)), "PNG", save_all=True, append_images=[a, b, c], duration=100,
                      default_image=True)
    return encode(a, "PNG", save_all=True, append_images=[b, c], duration=100)


def _apng_flip(data: bytes, which: int, fix_crc: bool) -> bytes:
    """``data`` with 30 bytes flipped in the middle of its ``which``-th fdAT chunk's data (0-based), its chunk CRC
    left bad (damage in transit) or recomputed (damaged before it was written: only the zlib stream can tell)."""
    pos, length = [(p, n) for k, p, n in _png_chunks(data) if k == b"fdAT"][which]
    out = bytearray(data)
    start = pos + 12 + (length - 4) // 2
    for i in range(start, start + 30):
        out[i] ^= 0x5A
    if fix_crc:
        out[pos + 8 + length : pos + 12 + length] = struct.pack(">I", zlib.crc32(bytes(out[pos + 4 : pos + 8 + length]))
                                                                & 0xFFFFFFFF)
    return bytes(out)


def _apng_cut_before(data: bytes, frame: int, iend: bool) -> bytes:
    """``data`` cut right before frame ``frame``'s fcTL (1-based), with IEND appended or not."""
    at = [p for k, p, _n in _png_chunks(data) if k == b"fcTL"][frame - 1]
    return data[:at] + (_crc_chunk(b"IEND", b"") if iend else b"")


def test_apng_frame_data_and_frame_count_are_checked(tmp_path) -> None:
    """A damaged fdAT is ``corrupt`` (bad checksum, or a zlib stream that does not inflate); frames missing against
    acTL's num_frames are ``truncated`` without IEND, ``corrupt`` with it; whole APNGs are accepted."""
    whole, with_default = _apng(), _apng(default_image=True)
    cases = {
        "f2_bad_crc.png": (_apng_flip(whole, 0, False), "corrupt",
                           r"^PNG fdAT chunk at offset \d+ \(frame 2 of the animation\) has a bad checksum$"),
        "f3_bad_crc.png": (_apng_flip(whole, 1, False), "corrupt", r"fdAT chunk at offset \d+ \(frame 3 of the"),
        "f2_crc_fixed.png": (_apng_flip(whole, 0, True), "corrupt",
                             r"^PNG frame 2 \(fdAT\) is damaged: its zlib stream does not inflate \(Error -3"),
        "f3_crc_fixed.png": (_apng_flip(whole, 1, True), "corrupt", r"^PNG frame 3 \(fdAT\) is damaged"),
        "default_f2_crc_fixed.png": (_apng_flip(with_default, 1, True), "corrupt", r"^PNG frame 2 \(fdAT\) is damaged"),
        "cut_before_3.png": (_apng_cut_before(whole, 3, False), "truncated",
                             r"^APNG is cut short: its animation control chunk \(acTL\) declares 3 frames, the file "
                             r"ends after 2 \(no IEND chunk\)$"),
        "cut_before_2.png": (_apng_cut_before(whole, 2, False), "truncated", r"declares 3 frames, the file ends after 1"),
        "cut_before_3_iend.png": (_apng_cut_before(whole, 3, True), "corrupt",
                                  r"^APNG holds 2 frames \(fcTL chunks\) but its animation control chunk \(acTL\) "
                                  r"declares 3"),
    }
    rows = _built(tmp_path, {"a": {n: data for n, (data, _reason, _detail) in cases.items()},
                             "b": {"whole.png": whole, "with_default.png": with_default}})
    for name, (_data, reason, detail) in cases.items():
        row = rows[name]
        assert (row["status"], row["reason"]) == ("rejected", reason), (name, row["status"], row["detail"])
        assert re.search(detail, row["detail"]), (name, row["detail"])
    for name in ("whole.png", "with_default.png"):
        assert (rows[name]["status"], rows[name]["warnings"]) == ("ok", []), (name, rows[name]["detail"])


# --------------------------------------------------------------------------- 16-bit greyscale: memory

_PEAK = r"""
import io, resource, sys
import numpy as np
from PIL import Image
from dsbuild.verify.decoders import decode_checked
from dsbuild.verify.settings import VerifySettings
side, deep = int(sys.argv[1]), sys.argv[2] == "16"
a = np.zeros((side, side), np.uint16 if deep else np.uint8)
a[::97, :] = 60000 if deep else 200
a[:, ::89] = 30000 if deep else 100
buf = io.BytesIO(); Image.fromarray(a).save(buf, "PNG", compress_level=1); data = buf.getvalue(); del a, buf
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
img, info = decode_checked(data, VerifySettings())
assert info["mode"] == ("I;16" if deep else "L") and img.mode == "L", info
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def test_16_bit_greyscale_verifies_in_little_more_memory_than_8_bit() -> None:
    """A 3000×3000 16-bit greyscale PNG: the decode's peak memory stays within 6 bytes per pixel (it was ~25: whole
    float64/int64 copies in normalise, sample_depth and deep_digest); the 8-bit twin is measured beside it."""
    import subprocess
    import sys

    side = 3000
    peak = {}
    for depth in ("8", "16"):
        run = subprocess.run([sys.executable, "-c", _PEAK, str(side), depth], capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 0, run.stderr
        peak[depth] = int(run.stdout.split()[-1]) * 1024  # ru_maxrss is in KiB on Linux
    per_pixel = peak["16"] / side**2
    assert per_pixel < 6, (peak, per_pixel)


def test_deep_images_read_by_bands_give_the_whole_image_result() -> None:
    """The 8-bit picture and the exact-duplicate digest of deep images, read band by band, are those of the whole
    image converted at once (the formulas of before): 12-bit, 8-in-16, full 16-bit, signed 32-bit, float."""
    import hashlib

    from dsbuild.verify import decoders

    rng = np.random.default_rng(7)
    images = [Image.fromarray(rng.integers(0, 4096, (700, 1700)).astype(np.uint16)),
              Image.fromarray(rng.integers(0, 256, (300, 4000)).astype(np.uint16)),
              Image.fromarray(rng.integers(0, 65536, (1100, 1001)).astype(np.uint16)),
              Image.fromarray(rng.integers(-5000, 90000, (400, 3000)).astype(np.int32)),
              Image.fromarray((rng.random((500, 2500)) * 1000).astype(np.float32))]
    for img in images:
        arr = np.asarray(img, dtype=np.float64)
        bits = decoders.sample_depth(arr)
        if bits is not None:
            want = np.rint(arr * (255.0 / float(2**bits - 1))) if bits > 8 else arr
        else:
            want = arr / max(float(arr.max()), 1.0) * 255.0
        want = np.clip(want, 0, 255).astype("uint8")
        assert np.array_equal(np.asarray(decoders.normalise(img, orientation=1)), want), img.mode
        whole = np.asarray(img)
        whole = whole.astype("<f8") if whole.dtype.kind == "f" else whole.astype("<i8")
        digest = hashlib.sha256(f"deep:{img.size[0]}x{img.size[1]}:{whole.dtype.kind}:".encode() + whole.tobytes())
        assert decoders.deep_digest(img) == digest.hexdigest(), img.mode
        assert decoders._fits_8_bits(img) == (bits == 8)


def test_apng_frame_count_follows_what_decoders_accept(tmp_path) -> None:
    """acTL declaring fewer frames than the file holds (decoders show the declared ones: a note), or an acTL Pillow
    calls invalid (num_frames 0 or past 2^31: read as a still PNG) is accepted, as before."""
    def with_num_frames(n: int, whole: bytes) -> bytes:
        pos, length = [(p, ln) for k, p, ln in _png_chunks(whole) if k == b"acTL"][0]
        body = struct.pack(">I", n) + whole[pos + 12 : pos + 8 + length]
        return whole[:pos] + _crc_chunk(b"acTL", body) + whole[pos + 12 + length :]

    rows = _built(tmp_path, {"a": {"low.png": with_num_frames(2, _apng())},
                             "b": {"invalid.png": with_num_frames(0x80000001, _apng(default_image=True))}})
    assert rows["low.png"]["status"] == "ok", rows["low.png"]["detail"]
    assert "APNG holds 3 frames (fcTL chunks) but its animation control chunk (acTL) declares 2: decoders show only " \
           "the first 2" in rows["low.png"]["warnings"], rows["low.png"]["warnings"]
    assert rows["invalid.png"]["status"] == "ok", rows["invalid.png"]["detail"]
