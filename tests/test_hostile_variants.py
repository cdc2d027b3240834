"""Format variants are their family: stored, catalogued and exported under the allow-list's names and extensions.

Kind of fault (issue 11, kind 4): Pillow opens many camera JPEGs as ``MPO``;
dsbuild stored and exported them as ``<id>.img``, which ImageFolder-style
loaders skip, so a good photo vanished downstream. Every accepted variant of an
allowed format (MPO, progressive and CMYK JPEG, APNG, 16-bit and palette PNG,
animated GIF and WebP, multi-page TIFF and BigTIFF, BMP versions) must be stored
and exported with its family's extension, and the catalog's ``format`` must be
one of the allow-list's names.

Inputs: real photos written by Pillow in each variant, under names that do not
say the format (``IMG_0001.JPG`` for an MPO, ``.dat`` for others).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hostile_kit import ALLOWED_EXTENSIONS, ALLOWED_FORMATS, Project, encode, photo

W, H = 200, 150


def _p(name: str):
    return photo(name, (W, H))


# file name -> (bytes, catalog format, extension in store and export, frames)
VARIANTS = {
    "IMG_0001.JPG": (lambda: encode(_p("astronaut"), "MPO", save_all=True, append_images=[photo("astronaut", (80, 60))]),
                     "JPEG", ".jpg", 2),
    "camera.mpo": (lambda: encode(_p("camera").convert("RGB"), "MPO", save_all=True,
                                  append_images=[photo("camera", (100, 75))]), "JPEG", ".jpg", 2),
    "prog.dat": (lambda: encode(_p("coffee"), "JPEG", progressive=True), "JPEG", ".jpg", 1),
    "cmyk.jpeg": (lambda: encode(_p("chelsea").convert("CMYK"), "JPEG"), "JPEG", ".jpg", 1),
    "anim.png": (lambda: encode(_p("rocket"), "PNG", save_all=True, append_images=[_p("coins")]), "PNG", ".png", 2),
    "sixteen.png": (lambda: encode(_p("moon").convert("I;16"), "PNG"), "PNG", ".png", 1),
    "palette.bin": (lambda: encode(_p("clock").convert("P"), "PNG"), "PNG", ".png", 1),
    "anim.gif": (lambda: encode(_p("immunohistochemistry"), "GIF", save_all=True,
                                append_images=[_p("astronaut")], duration=100), "GIF", ".gif", 2),
    "anim.webp": (lambda: encode(_p("coffee").rotate(90, expand=False), "WEBP", save_all=True,
                                 append_images=[_p("chelsea")], duration=100), "WEBP", ".webp", 2),
    "pages.tiff": (lambda: encode(_p("camera").rotate(180), "TIFF", save_all=True, append_images=[_p("coins")]),
                   "TIFF", ".tif", 2),
    "big.tif": (lambda: encode(_p("rocket").rotate(180), "TIFF", big_tiff=True), "TIFF", ".tif", 1),
    "v2.bmp": (lambda: encode(_p("moon").rotate(180), "BMP"), "BMP", ".bmp", 1),
}


@pytest.fixture(scope="module")
def proj(tmp_path_factory) -> Project:
    p = Project(tmp_path_factory.mktemp("variants"))
    for i, (name, (make, *_rest)) in enumerate(VARIANTS.items()):
        p.add("a" if i % 2 else "b", name, make())
    p.set("dedup", near=False)
    code, out, err = p.build()
    assert code == 0, out + err
    return p


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_is_stored_under_its_family(proj, name: str) -> None:
    _make, fmt, ext, frames = VARIANTS[name]
    row = proj.by_name()[name]
    assert row["status"] == "ok", (row["reason"], row["detail"])
    assert row["format"] == fmt
    assert row["format"] in ALLOWED_FORMATS
    assert Path(row["path"]).suffix == ext
    assert (row["width"], row["height"]) == (W, H)
    frames_seen = proj.rows("SELECT frames FROM blobs WHERE sha256 = ?", row["sha256"])[0]["frames"]
    assert frames_seen == frames


def test_export_writes_only_extensions_that_loaders_read(proj, tmp_path) -> None:
    out = tmp_path / "export"
    code, stdout, stderr = proj.cli("export", proj.dataset, "--to", str(out))
    assert code == 0, stdout + stderr
    files = [f for f in out.rglob("*") if f.is_file() and f.name not in ("labels.csv", ".dsbuild-export")]
    assert len(files) == len(VARIANTS)
    assert {f.suffix for f in files} <= ALLOWED_EXTENSIONS
    by_id = {r["image_id"]: r for r in proj.rows("SELECT image_id, origin FROM images")}
    for f in files:
        origin = Path(by_id[f.stem]["origin"]).name
        assert f.suffix == VARIANTS[origin][2], (origin, f.name)


def test_store_extension_follows_the_content_not_the_name(proj) -> None:
    """The MPO named IMG_0001.JPG and the JPEG named prog.dat both land as .jpg; nothing is stored as .img."""
    stored = list((proj.root / "cat" / "store").rglob("*.*"))
    assert stored and not [f for f in stored if f.suffix not in ALLOWED_EXTENSIONS]


# --------------------------------------------------------------------------- high bit depth (kind of case 05)
#
# 16-bit containers often hold 8-, 10- or 12-bit data. Scaled by /65535 such a picture is black: two different
# pictures became one "exact duplicate" (and a false label conflict), 12-bit ones were flagged dark.


def _grey16(name: str, scale: int, noise: bool = False):
    import numpy as np

    arr = np.asarray(photo(name, (W, H)).convert("L"), dtype=np.uint16) * scale
    if noise:  # values only in the low 4 bits: another picture at 12 bits, the same one at 8
        arr = arr + (np.arange(arr.size, dtype=np.uint16).reshape(arr.shape) * 7) % 16
    return arr


def _png16(arr) -> bytes:
    from PIL import Image

    return encode(Image.fromarray(arr.astype("uint16")), "PNG")


def _png16_rgb(name: str) -> bytes:
    """A 16-bit RGB PNG (Pillow cannot write one) holding 8-bit data: IHDR bit depth 16, colour type 2."""
    import struct
    import zlib

    import numpy as np

    from hostile_kit import png_chunk

    arr = np.asarray(photo(name, (W, H)), dtype=">u2")  # values 0..255, big-endian 16-bit samples
    raw = b"".join(b"\x00" + row.tobytes() for row in arr)
    ihdr = struct.pack(">IIBBBBB", W, H, 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(raw))
            + png_chunk(b"IEND", b""))


DEEP = {  # file name -> (class, bytes, the 8-bit photo it shows)
    "camera_8in16.png": ("a", lambda: _png16(_grey16("camera", 1)), "camera"),
    "coins_8in16.png": ("b", lambda: _png16(_grey16("coins", 1)), "coins"),
    "moon_12bit.png": ("a", lambda: _png16(_grey16("moon", 16)), "moon"),
    "moon_12bit_low_bits.png": ("b", lambda: _png16(_grey16("moon", 16, noise=True)), "moon"),
    "clock_12bit.png": ("b", lambda: _png16(_grey16("clock", 16)), "clock"),
    "astronaut_rgb16.png": ("a", lambda: _png16_rgb("astronaut"), None),
    "coffee_rgb16.png": ("b", lambda: _png16_rgb("coffee"), None),
}


@pytest.fixture(scope="module")
def deep(tmp_path_factory) -> Project:
    p = Project(tmp_path_factory.mktemp("deep"))
    for name, (label, make, _photo) in DEEP.items():
        p.add(label, name, make())
    p.set("dedup", near=False)
    code, out, err = p.build()
    assert code == 0, out + err
    return p


def test_different_pictures_in_16_bits_are_never_exact_duplicates(deep) -> None:
    rows = deep.by_name()
    for name, row in rows.items():
        assert (row["status"], row["reason"]) == ("ok", None), (name, row["status"], row["reason"], row["dup_of"])
    pix = [r["pixel_sha"] for r in deep.rows("SELECT b.pixel_sha FROM images i JOIN blobs b USING (sha256)")]
    assert len([p for p in pix if p]) == len(set(p for p in pix if p))
    assert not deep.rows("SELECT * FROM conflicts")  # no picture "is" another class's picture


def test_high_bit_depth_is_scaled_by_the_depth_its_data_uses(deep) -> None:
    """8-in-16 and 12-bit greyscale are the photo (not black, not flagged dark), in the build and in the loader
    that training and prediction use; the quality flags come from the picture, not from a scaling choice."""
    import numpy as np

    from dsbuild.verify.decode import load_rgb

    rows = deep.by_name()
    for name in ("camera_8in16.png", "coins_8in16.png", "moon_12bit.png", "clock_12bit.png"):
        row = rows[name]
        assert "dark" not in (row["quality_issues"] or []), (name, row["quality_issues"])
        loaded = np.asarray(load_rgb(row["path"]).convert("L"), dtype=np.float64)
        want = np.asarray(photo(DEEP[name][2], (W, H)).convert("L"), dtype=np.float64)
        assert abs(loaded.mean() - want.mean()) < 2.0, (name, loaded.mean(), want.mean())
        assert np.abs(loaded - want).max() <= 1, name
