"""Reasons name the cause, whatever the decoder's wording; rejected rows keep what is known.

Kind of fault (issue 11, kind 3): a cut PNG was ``corrupt`` because the check
for "truncated" was case-sensitive; images in formats that Pillow identifies
but the allow-list excludes (TGA, SGI, QOI, …) were "not an image"; a valid
BigTIFF was refused although BigTIFF is TIFF. Reasons must come from what is
known about the file (its sniffed format, its declared size, how it ended),
never from a decoder's phrasing, and a rejected row keeps the bytes, the
sniffed format and the declared width/height.

Inputs: real photos encoded by Pillow in every allowed format and cut at three
points; the same photos in eleven formats outside the allow-list; a BigTIFF;
HTML and text under image names; a header-only decompression bomb.
"""

from __future__ import annotations

import re
import struct
import zlib

import pytest

from hostile_kit import Project, encode, photo

W, H = 240, 180


def _enc(fmt: str, name: str = "astronaut", **kw) -> bytes:
    img = photo(name, (W, H))
    if fmt in ("XBM", "MSP"):
        img = img.convert("1")
    return encode(img, fmt, **kw)


CUT_FORMATS = {
    "jpg": lambda: _enc("JPEG", "astronaut", quality=90),
    "progressive.jpg": lambda: _enc("JPEG", "coffee", progressive=True),
    "png": lambda: _enc("PNG", "chelsea"),
    "rgba.png": lambda: encode(photo("rocket", (W, H)).convert("RGBA"), "PNG"),
    "gif": lambda: _enc("GIF", "camera"),
    "bmp": lambda: _enc("BMP", "coins"),
    "tif": lambda: _enc("TIFF", "moon"),
}
CUT_AT = (0.3, 0.55, 0.9)

# name -> (bytes, sniffed format, declared width, height)
UNSUPPORTED = {
    "photo.tga": (lambda: _enc("TGA"), "TGA", W, H),
    "photo.sgi": (lambda: _enc("SGI"), "SGI", W, H),
    "photo.qoi": (lambda: _enc("QOI"), "QOI", W, H),
    "photo.ppm": (lambda: _enc("PPM"), "PPM", W, H),
    "photo.pcx": (lambda: _enc("PCX"), "PCX", W, H),
    "photo.dds": (lambda: _enc("DDS"), "DDS", W, H),
    "photo.im": (lambda: _enc("IM"), "IM", W, H),
    "photo.msp": (lambda: _enc("MSP"), "MSP", W, H),
    "photo.xbm": (lambda: _enc("XBM"), "XBM", W, H),
    "photo.jp2": (lambda: _enc("JPEG2000"), "JPEG2000", W, H),
    "photo.eps.jpg": (lambda: _enc("EPS"), "EPS", W, H),
}


def _bomb_png() -> bytes:
    """A small PNG whose header declares 20000×20000 pixels: rejected from its header, never decoded."""
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 60001)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def proj(tmp_path_factory) -> Project:
    p = Project(tmp_path_factory.mktemp("reasons"))
    for ext, make in CUT_FORMATS.items():
        data = make()
        for at in CUT_AT:
            p.add("cut", f"cut{int(at * 100)}.{ext}", data[: int(len(data) * at)])
        p.add("whole", f"whole.{ext}", data)
    for name, (make, *_rest) in UNSUPPORTED.items():
        p.add("other", name, make())
    p.add("whole", "big.tif", _enc("TIFF", "clock", big_tiff=True))
    p.add("other", "bomb.png", _bomb_png())
    p.add("other", "page.jpg", b"<!DOCTYPE html><html><body>Not found</body></html>\n")
    p.add("other", "notes.png", b"just some words, not a picture at all\n" * 3)
    p.add("other", "tiny.png", encode(photo("rocket", (20, 12)), "PNG"))
    small = encode(photo("chelsea", (32, 32)), "JPEG")  # trial 10's broken.jpg: half of a 32 px JPEG, cut in its header
    p.add("cut", "half.jpg", small[: len(small) // 2])
    p.set("dedup", near=False)
    code, out, err = p.build()
    assert code == 0, out + err
    return p


@pytest.mark.parametrize("ext", list(CUT_FORMATS))
@pytest.mark.parametrize("at", CUT_AT)
def test_every_cut_file_is_truncated(proj, ext: str, at: float) -> None:
    row = proj.by_name()[f"cut{int(at * 100)}.{ext}"]
    assert (row["status"], row["reason"]) == ("rejected", "truncated"), (row["reason"], row["detail"])
    assert row["detail"] and "object at 0x" not in row["detail"]
    whole = CUT_FORMATS[ext]()
    assert row["bytes"] == int(len(whole) * at)
    fmt = {"jpg": "JPEG", "png": "PNG", "gif": "GIF", "bmp": "BMP", "tif": "TIFF"}[ext.rsplit(".", 1)[-1]]
    assert row["format"] == fmt


@pytest.mark.parametrize("ext", list(CUT_FORMATS))
def test_complete_controls_are_accepted(proj, ext: str) -> None:
    row = proj.by_name()[f"whole.{ext}"]
    assert (row["status"], row["reason"], row["width"], row["height"]) == ("ok", None, W, H), row["detail"]


@pytest.mark.parametrize("name", list(UNSUPPORTED))
def test_an_identified_image_outside_the_allow_list_is_unsupported(proj, name: str) -> None:
    _make, fmt, width, height = UNSUPPORTED[name]
    row = proj.by_name()[name]
    assert (row["status"], row["reason"]) == ("rejected", "unsupported format"), (row["reason"], row["detail"])
    assert row["detail"].startswith(f"{fmt} is not in the allowed formats"), row["detail"]
    assert (row["format"], row["width"], row["height"]) == (fmt, width, height)
    assert row["bytes"] == len(UNSUPPORTED[name][0]())
    assert row["path"] is None  # nothing stored


def test_a_cut_webp_is_rejected(tmp_path) -> None:
    """libwebp gives no sign of truncation beyond failing: ``corrupt`` is as close as it can say."""
    p = Project(tmp_path)
    data = _enc("WEBP", "chelsea")
    p.add("a", "cut.webp", data[: len(data) // 2])
    p.add("b", "whole.webp", data)
    assert p.build()[0] == 0
    rows = p.by_name()
    assert rows["cut.webp"]["status"] == "rejected" and rows["cut.webp"]["reason"] in ("truncated", "corrupt")
    assert rows["cut.webp"]["format"] == "WEBP"
    assert (rows["whole.webp"]["status"], rows["whole.webp"]["format"]) == ("ok", "WEBP")


def test_bigtiff_is_tiff(proj) -> None:
    row = proj.by_name()["big.tif"]
    assert (row["status"], row["format"], row["width"], row["height"]) == ("ok", "TIFF", W, H), row["detail"]
    assert row["path"].endswith(".tif")


@pytest.mark.parametrize("name, reason, detail, fmt, width, height", [
    ("bomb.png", "decompression bomb", r"^20000×20000 = 400000000 pixels exceeds max_pixels", "PNG", 20000, 20000),
    ("page.jpg", "not an image", r"^content is html$", None, None, None),
    ("notes.png", "not an image", r"^content is text$", None, None, None),
    ("tiny.png", "too small", r"^20×12 is below min_side 32$", "PNG", 20, 12),
])
def test_other_rejections_keep_what_is_known(proj, name, reason, detail, fmt, width, height) -> None:
    row = proj.by_name()[name]
    assert (row["status"], row["reason"]) == ("rejected", reason)
    assert re.search(detail, row["detail"]), row["detail"]
    assert (row["format"], row["width"], row["height"]) == (fmt, width, height)
    assert row["bytes"] > 0


def test_reasons_are_the_documented_vocabulary(proj) -> None:
    """Every reason the build gave is listed in the README's verify section, with what it means."""
    from hostile_kit import REPO

    readme = (REPO / "README.md").read_text()
    reasons = {r["reason"] for r in proj.rows("SELECT DISTINCT reason FROM images WHERE reason IS NOT NULL")}
    assert reasons >= {"truncated", "unsupported format", "decompression bomb", "not an image", "too small"}
    for reason in reasons:
        assert re.search(rf"^\| `{re.escape(reason)}` \|", readme, re.M), reason


def test_training_and_predict_open_a_file_with_the_builds_reason(proj) -> None:
    """``load_rgb`` (how train, predict and the app's predictions open a file) refuses each file the build rejected
    with the build's reason and detail: trial 10's cut JPEG was ``truncated`` in the build and the app but
    ``corrupt: JPEG header cannot be read (OSError: Truncated File Read)`` in `dsbuild predict`."""
    from dsbuild.formats import Refused
    from dsbuild.verify.decode import load_rgb

    rows = proj.rows("SELECT origin, reason, detail FROM images WHERE status = 'rejected'")
    assert len(rows) >= 25
    checked = []
    for row in rows:
        if row["reason"] == "too small":  # a rule of the dataset (min_side), not of opening a file
            continue
        with pytest.raises(Refused) as refused:
            load_rgb(row["origin"])
        assert (refused.value.reason, refused.value.detail) == (row["reason"], row["detail"]), row["origin"]
        assert str(refused.value) == f"{row['reason']}: {row['detail']}"  # predict's error column
        checked.append(row["origin"].rsplit("/", 1)[-1])
    assert "half.jpg" in checked and proj.by_name()["half.jpg"]["reason"] == "truncated"
