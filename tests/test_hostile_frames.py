"""Every frame's declared size is checked against the bomb limit, without decoding any frame.

Kind of fault (issue 11, kind 6): only frame 0 was checked, so a GIF whose second
frame declares 4.3 billion pixels (Pillow's ``decompression_bomb_extents.gif``)
was accepted and stored whole, for the next tool that reads every frame to
allocate. dsbuild checks the declared size of every frame of GIF, APNG, TIFF,
MPO and WebP files (reading headers only) and rejects the file as a
``decompression bomb`` naming the frame.

Inputs: real two- and three-frame files written by Pillow, then one frame's
header patched to declare a huge size (the pixel data is not changed: the file
is rejected before anything is decoded), or written with a large later frame
under a small ``max_pixels``.

A later frame cut short (variant 7): loaders read frame 1, but the stored file
is cut, so it is ``truncated`` — a GIF cut in frame 2 (with or without a
trailer after the cut), an APNG whose last fdAT holds half its data, an MPO and
a two-page TIFF cut at 90 %; the same files whole are accepted without a note.
Decoding every frame is capped (frames and pixels in all): past the cap a note
says which frames were not decoded.
"""

from __future__ import annotations

import re
import struct
import zlib

import pytest

from hostile_kit import Project, encode, gif_set_extents, photo


def _frames(*names: str, size=(100, 80)):
    return [photo(n, size) for n in names]


def _gif(*names: str) -> bytes:
    first, *rest = _frames(*names)
    return encode(first, "GIF", save_all=True, append_images=rest, duration=100)


def _apng_patched(frame: int, width: int, height: int) -> bytes:
    """A real APNG whose ``frame``-th fcTL chunk declares width×height (CRC recomputed)."""
    first, *rest = _frames("coffee", "chelsea", "rocket")
    data = bytearray(encode(first, "PNG", save_all=True, append_images=rest, duration=100))
    pos, seen = 8, -1
    while pos < len(data):
        length = struct.unpack(">I", data[pos : pos + 4])[0]
        kind = bytes(data[pos + 4 : pos + 8])
        if kind == b"fcTL":
            seen += 1
            if seen == frame:
                body = data[pos + 8 : pos + 8 + length]
                body[4:12] = struct.pack(">II", width, height)
                data[pos + 8 : pos + 8 + length] = body
                data[pos + 8 + length : pos + 12 + length] = struct.pack(">I", zlib.crc32(kind + bytes(body)) & 0xFFFFFFFF)
                return bytes(data)
        pos += 12 + length
    raise AssertionError("no such fcTL")


def _tiff_pages(second: tuple[int, int]) -> bytes:
    first = photo("camera", (100, 80))
    return encode(first, "TIFF", save_all=True, append_images=[photo("coins", second)])


def _mpo(second: tuple[int, int]) -> bytes:
    return encode(photo("astronaut", (100, 80)), "MPO", save_all=True, append_images=[photo("astronaut", second)])


def _webp_anim(second: tuple[int, int]) -> bytes:
    return encode(photo("moon", (100, 80)), "WEBP", save_all=True, append_images=[photo("clock", second)], duration=100)


BOMB = "decompression bomb"

# name -> (bytes, max_pixels or None for the default, status, reason, detail pattern)
CASES = {
    "extents.gif": (lambda: gif_set_extents(_gif("astronaut", "coffee"), 1, 0, 0, 65535, 65535), None,
                    "rejected", BOMB, r"frame 2 .*65535×65535"),
    "offset.gif": (lambda: gif_set_extents(_gif("astronaut", "coffee", "rocket"), 2, 60000, 60000, 50, 50), None,
                   "rejected", BOMB, r"frame 3 .*60050×60050"),
    "apng_fctl.png": (lambda: _apng_patched(2, 40000, 40000), None, "rejected", BOMB, r"frame 3 .*40000×40000"),
    "pages.tif": (lambda: _tiff_pages((1200, 1000)), 500_000, "rejected", BOMB, r"frame 2 .*1200×1000"),
    "second.mpo": (lambda: _mpo((1200, 1000)), 500_000, "rejected", BOMB, r"frame 2 .*1200×1000"),
    "ok3.gif": (lambda: _gif("chelsea", "clock", "coins"), None, "ok", None, None),
    "ok.tif": (lambda: _tiff_pages((120, 90)), 500_000, "ok", None, None),
    "ok.mpo": (lambda: _mpo((50, 40)), 500_000, "ok", None, None),
}


@pytest.mark.parametrize("name", list(CASES))
def test_every_frame_is_checked(tmp_path, name: str) -> None:
    make, max_pixels, status, reason, detail = CASES[name]
    proj = Project(tmp_path)
    proj.add("a", name, make())
    proj.add("b", "control.png", encode(photo("immunohistochemistry", (100, 80)), "PNG"))
    if max_pixels is not None:
        proj.set("verify", max_pixels=max_pixels)
    assert proj.build()[0] == 0
    row = proj.by_name()[name]
    assert (row["status"], row["reason"]) == (status, reason), row["detail"]
    if detail is not None:
        assert re.search(detail, row["detail"]), row["detail"]
        assert row["path"] is None
        assert (row["width"], row["height"]) == (100, 80)  # the first frame's size, as declared
    assert proj.by_name()["control.png"]["status"] == "ok"


def test_a_webp_frame_never_exceeds_its_canvas(tmp_path) -> None:
    """libwebp's demuxer refuses frames outside the canvas, so the canvas check covers every frame: accepted."""
    proj = Project(tmp_path)
    proj.add("a", "anim.webp", _webp_anim((100, 80)))
    proj.add("b", "control.png", encode(photo("immunohistochemistry", (100, 80)), "PNG"))
    proj.set("verify", max_pixels=500_000)
    assert proj.build()[0] == 0
    row = proj.by_name()["anim.webp"]
    assert (row["status"], row["width"], row["height"]) == ("ok", 100, 80)


# --------------------------------------------------------------------------- a later frame cut short (variant 7)


def _cut(data: bytes, fraction: float) -> bytes:
    return data[: int(len(data) * fraction)]


def _apng_last_fdat_halved(drop: bool = False) -> bytes:
    """A real APNG whose last fdAT body is halved (CRC recomputed), IEND kept: every chunk is whole.

    ``drop``: the last fdAT left out altogether (its fcTL announces a frame that has no data).
    """
    first, *rest = _frames("chelsea", "rocket", size=(200, 150))
    data = encode(first, "PNG", save_all=True, append_images=rest, duration=100)
    chunks, pos = [], 8
    while pos < len(data):
        length = struct.unpack(">I", data[pos : pos + 4])[0]
        chunks.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    last = max(i for i, (kind, _) in enumerate(chunks) if kind == b"fdAT")
    if drop:
        del chunks[last]
    else:
        chunks[last] = (b"fdAT", chunks[last][1][: len(chunks[last][1]) // 2])
    return data[:8] + b"".join(struct.pack(">I", len(body)) + kind + body
                               + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF) for kind, body in chunks)


def _gif2() -> bytes:
    first, *rest = _frames("astronaut", "coffee", size=(200, 150))
    return encode(first, "GIF", save_all=True, append_images=rest, duration=100)


def _mpo2() -> bytes:
    return encode(photo("camera", (200, 150)), "MPO", save_all=True, append_images=[photo("camera", (100, 75))])


def _tiff2() -> bytes:
    return encode(photo("moon", (200, 150)), "TIFF", save_all=True, append_images=[photo("coins", (200, 150))])


def _second_image_cut(mpo: bytes) -> bytes:
    """``mpo`` with its second image's bytes cut in half and an end marker (FF D9) after them."""
    second = mpo.index(b"\xff\xd8", mpo.index(b"\xff\xd9"))
    return mpo[:second + (len(mpo) - second) // 2] + b"\xff\xd9"


# name -> (bytes, detail pattern); every one is a file whose first frame is whole and a later one cut
LATER_CUT = {
    "gif_cut80.gif": (lambda: _cut(_gif2(), 0.8), r"^frame 2 of 2: .*truncated"),
    "gif_cut80_trailer.gif": (lambda: _cut(_gif2(), 0.8) + b"\x00\x3b", r"^frame 2 of 2: .*truncated"),
    "apng_fdat_halved.png": (_apng_last_fdat_halved, r"^PNG frame 2 \(fdAT\) is truncated"),
    "apng_no_fdat.png": (lambda: _apng_last_fdat_halved(drop=True), r"^PNG frame 2 \(fdAT\) has no image data"),
    "mpo_cut90.jpg": (lambda: _cut(_mpo2(), 0.9), r"^frame 2 of 2: libjpeg: Premature end of JPEG file"),
    # the second image cut in half and closed with an end marker: Pillow fills the rest with grey and says nothing
    # (a probe of stop 30); libjpeg in strict mode says so
    "mpo_second_cut_eoi.jpg": (lambda: _second_image_cut(_mpo2()), r"^frame 2 of 2: libjpeg: .*premature end"),
    # the directory says where page 2's strip ends: past the end of the file, seen before anything is decoded
    "tiff_page2_cut90.tif": (lambda: _cut(_tiff2(), 0.9), r"^TIFF is truncated: page 2's strip 1 of 1 \(90000 bytes "
                                                           r"at offset \d+\) ends past the end of the file"),
}


def test_a_cut_later_frame_rejects_the_file(tmp_path) -> None:
    """Loaders read frame 1, but the stored file is cut: ``truncated``; the same files whole are accepted."""
    proj = Project(tmp_path)
    for name, (make, _detail) in LATER_CUT.items():
        proj.add("a", name, make())
    for name, data in {"whole.gif": _gif2(), "whole.mpo": _mpo2(), "whole.tif": _tiff2(),
                       "whole.png": encode(photo("rocket", (200, 150)), "PNG", save_all=True,
                                           append_images=[photo("clock", (200, 150))], duration=100)}.items():
        proj.add("b", name, data)
    proj.set("dedup", near=False)
    assert proj.build()[0] == 0
    rows = proj.by_name()
    for name, (_make, detail) in LATER_CUT.items():
        row = rows[name]
        assert (row["status"], row["reason"]) == ("rejected", "truncated"), (name, row["status"], row["detail"])
        assert re.search(detail, row["detail"]), (name, row["detail"])
    for name in ("whole.gif", "whole.mpo", "whole.tif", "whole.png"):
        assert rows[name]["status"] == "ok", (name, rows[name]["detail"])
        assert rows[name]["warnings"] == [], rows[name]["warnings"]


def test_frames_past_the_pixel_budget_are_noted_not_decoded(tmp_path) -> None:
    """Every frame within max_pixels, all of them together past it: the decoding stops there, with a note."""
    proj = Project(tmp_path)
    proj.add("a", "three.gif", _gif("chelsea", "clock", "coins"))  # 3 frames of 100×80
    proj.add("b", "control.png", encode(photo("immunohistochemistry", (100, 80)), "PNG"))
    proj.set("verify", max_pixels=20_000)
    assert proj.build()[0] == 0
    row = proj.by_name()["three.gif"]
    assert row["status"] == "ok", row["detail"]
    assert any(re.search(r"frames 3–3 not decoded .*20000 pixels", w) for w in row["warnings"]), row["warnings"]
