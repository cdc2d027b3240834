"""Width and height in the catalog are the displayed size, for every format and EXIF orientation.

Kind of fault (issue 11, kind 5): Pillow's TIFF plugin already reports the size
as displayed when the EXIF orientation turns the picture by 90°, and dsbuild
swapped it once more, so a TIFF was recorded 802×670 while it displays 670×802
(its JPEG twin was right). The displayed size is what a loader that honours the
orientation (dsbuild's training, ``ImageOps.exif_transpose``) produces.

Inputs: one 240×160 photo written with EXIF orientation 1–8 in JPEG, PNG, WebP
and TIFF (32 files); each must be recorded 240×160 (1–4) or 160×240 (5–8).
"""

from __future__ import annotations

import pytest
from PIL import Image

from hostile_kit import Project, encode, photo

W, H = 240, 160
FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP", "tif": "TIFF"}
PHOTOS = {"jpg": "astronaut", "png": "coffee", "webp": "chelsea", "tif": "rocket"}


def _oriented(ext: str, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    img = photo(PHOTOS[ext], (W, H)).rotate(45 * orientation)  # each file its own picture: no duplicates
    return encode(img, FORMATS[ext], exif=exif)


@pytest.fixture(scope="module")
def proj(tmp_path_factory) -> Project:
    p = Project(tmp_path_factory.mktemp("geometry"))
    for ext in FORMATS:
        for o in range(1, 9):
            p.add("a" if o % 2 else "b", f"o{o}.{ext}", _oriented(ext, o))
    p.set("dedup", near=False)
    code, out, err = p.build()
    assert code == 0, out + err
    return p


@pytest.mark.parametrize("ext", list(FORMATS))
@pytest.mark.parametrize("orientation", range(1, 9))
def test_recorded_size_is_the_displayed_size(proj, ext: str, orientation: int) -> None:
    row = proj.by_name()[f"o{orientation}.{ext}"]
    assert row["status"] == "ok", row["detail"]
    expected = (H, W) if orientation >= 5 else (W, H)
    assert (row["width"], row["height"]) == expected
    with Image.open(row["path"]) as im:
        from PIL import ImageOps

        shown = ImageOps.exif_transpose(im)
        assert shown.size == expected  # what a loader that honours the orientation gets
