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
