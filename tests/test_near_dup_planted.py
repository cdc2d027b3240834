"""Planted near-duplicates of real photos, end to end: files → the build's analyze_file → pairs → groups.

Every planted copy named in the issue — resize, JPEG re-encode at several qualities,
a 5 % crop, brightness change, a small watermark text, PNG↔JPEG — is written as a
real file, analysed by :func:`dsbuild.verify.analyze_file` (the build's one decode,
which calls :func:`dsbuild.hashing.compute_hash`), searched with
:func:`dsbuild.dedup.find_pairs` at ``DEFAULT_THRESHOLD`` and grouped. Hard
negatives: quadrants of the same photos (same scene, colours and texture) and
solid / near-blank images.
"""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import numpy as np
import pytest
from helpers import skimage_photo
from PIL import Image, ImageDraw, ImageEnhance, ImageFont

from dsbuild.dedup import search as dedup
from dsbuild.verify import hashing
from dsbuild.manifest import DedupSettings, VerifySettings
from dsbuild.verify import analyze_file

SEED = 42
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "clock")
QUADRANTS_OF = ("astronaut", "coffee", "camera")
ROBUST = ("jpeg90", "jpeg70", "jpeg50", "jpeg30", "png_to_jpeg", "jpeg_to_png", "resize50", "resize150",
          "bright120", "bright80")




def _save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


def _watermark(img: Image.Image) -> Image.Image:
    img = img.copy()
    w, h = img.size
    font = ImageFont.load_default(size=max(10, h // 20))
    draw = ImageDraw.Draw(img)
    fill, stroke = (255, 0) if img.mode == "L" else ((255, 255, 255), (0, 0, 0))
    x0, y0, x1, y1 = draw.textbbox((0, 0), "© stockphotos", font=font)
    draw.text((w - (x1 - x0) - w // 40, h - (y1 - y0) - h // 25), "© stockphotos", font=font,
              fill=fill, stroke_width=1, stroke_fill=stroke)
    return img


def write_copies(img: Image.Image, folder: Path, name: str) -> dict[str, Path]:
    """The original (PNG) and 12 planted copies of it as files: variant → path."""
    w, h = img.size
    jpeg_then_png = Image.open(io.BytesIO(_jpeg_bytes(img, 85)))
    dx, dy = round(w * 0.025), round(h * 0.025)
    p = lambda v, ext: folder / f"{name}__{v}.{ext}"  # noqa: E731
    return {
        "orig": _save(img, p("orig", "png")),
        "jpeg90": _save(img, p("jpeg90", "jpg"), quality=90),
        "jpeg70": _save(img, p("jpeg70", "jpg"), quality=70),
        "jpeg50": _save(img, p("jpeg50", "jpg"), quality=50),
        "jpeg30": _save(img, p("jpeg30", "jpg"), quality=30),
        "png_to_jpeg": _save(img, p("png_to_jpeg", "jpg"), quality=85),
        "jpeg_to_png": _save(jpeg_then_png, p("jpeg_to_png", "png")),
        "resize50": _save(img.resize((w // 2, h // 2), Image.Resampling.LANCZOS), p("resize50", "png")),
        "resize150": _save(img.resize((w * 3 // 2, h * 3 // 2), Image.Resampling.BICUBIC), p("resize150", "png")),
        "crop5": _save(img.crop((dx, dy, w - dx, h - dy)), p("crop5", "png")),
        "bright120": _save(ImageEnhance.Brightness(img).enhance(1.2), p("bright120", "png")),
        "bright80": _save(ImageEnhance.Brightness(img).enhance(0.8), p("bright80", "png")),
        "watermark": _save(_watermark(img), p("watermark", "jpg"), quality=90),
    }


def _jpeg_bytes(img: Image.Image, q: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=q)
    return buf.getvalue()


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Files analysed by the build: a list of dicts (picture, variant, path, phash, width, height)."""
    folder = tmp_path_factory.mktemp("planted")
    files = []
    for name in PHOTOS:
        img = skimage_photo(name)
        for variant, path in write_copies(img, folder, name).items():
            files.append((name, variant, path))
        if name in QUADRANTS_OF:
            w, h = img.size
            for qx, qy in itertools.product((0, 1), (0, 1)):
                quad = img.crop((qx * w // 2, qy * h // 2, (qx + 1) * w // 2, (qy + 1) * h // 2))
                files.append((f"{name}_q{qx}{qy}", "orig", _save(quad, folder / f"{name}_q{qx}{qy}.png")))
    for k, colour in enumerate([(0, 0, 0), (255, 255, 255), (128, 128, 128), (200, 30, 40)]):
        files.append((f"solid{k}", "orig", _save(Image.new("RGB", (320, 240), colour), folder / f"solid{k}.png")))
    rng = np.random.default_rng(SEED)
    for k, base in enumerate((40, 235)):
        arr = np.clip(base + rng.normal(0, 2, (240, 320, 3)), 0, 255).astype(np.uint8)
        files.append((f"blank{k}", "orig", _save(Image.fromarray(arr), folder / f"blank{k}.jpg", quality=90)))
    rows = []
    for picture, variant, path in files:
        rec = analyze_file(path, verify=VerifySettings(), dedup=DedupSettings(), with_quality=False)
        assert rec.ok, (path, rec.reason, rec.detail)
        rows.append({"picture": picture, "variant": variant, "path": path, "phash": rec.phash,
                     "width": rec.width, "height": rec.height})
    return rows


def _search(rows, threshold=dedup.DEFAULT_THRESHOLD):
    keep = np.array([not hashing.is_degenerate(r["phash"]) for r in rows])
    idx = np.flatnonzero(keep)
    values = hashing.hashes_to_uint64([rows[i]["phash"] for i in idx])
    pairs = dedup.find_pairs(values, threshold)
    pairs = np.column_stack([idx[pairs[:, 0]], idx[pairs[:, 1]], pairs[:, 2]]) if len(pairs) else pairs
    return keep, pairs


def test_no_false_pair_among_hard_negatives(planted):
    _, pairs = _search(planted)
    assert len(pairs) > 0
    wrong = [(planted[i]["path"].name, planted[j]["path"].name, d) for i, j, d in pairs
             if planted[i]["picture"] != planted[j]["picture"]]
    assert wrong == []


def test_solid_images_are_degenerate_and_never_grouped(planted):
    keep, pairs = _search(planted)
    solid = [k for k, r in enumerate(planted) if r["picture"].startswith("solid")]
    assert not keep[solid].any()
    groups = dedup.group(len(planted), pairs)
    for k, r in enumerate(planted):
        if r["picture"].startswith(("solid", "blank")) or "_q" in r["picture"]:
            assert (groups == groups[k]).sum() == 1, r["path"].name  # alone in its group


def test_expected_groups(planted):
    _, pairs = _search(planted)
    groups = dedup.group(len(planted), pairs)
    by_picture = {}
    for k, r in enumerate(planted):
        by_picture.setdefault(r["picture"], []).append(k)
    for name in PHOTOS:
        members = by_picture[name]
        orig = next(k for k in members if planted[k]["variant"] == "orig")
        # Resize, JPEG at any quality, format change and ±20 % brightness always join the original.
        for k in members:
            if planted[k]["variant"] in ROBUST:
                assert groups[k] == groups[orig], planted[k]["path"].name
        # A group never mixes pictures.
        assert {planted[k]["picture"] for k in np.flatnonzero(groups == groups[orig])} == {name}
    # All transformations, crops and watermarks included: pair recall >= 0.95.
    truth = {(a, b) for m in by_picture.values() for a, b in itertools.combinations(m, 2)}
    found = {(int(i), int(j)) for i, j, _ in pairs}
    assert len(found & truth) / len(truth) >= 0.95


def test_each_group_keeps_its_largest_copy(planted):
    _, pairs = _search(planted)
    groups = dedup.group(len(planted), pairs)
    width = np.array([r["width"] for r in planted])
    height = np.array([r["height"] for r in planted])
    keep = dedup.choose_representatives(groups, width, height, np.arange(len(planted)))
    for name in PHOTOS:
        big = next(k for k, r in enumerate(planted) if r["picture"] == name and r["variant"] == "resize150")
        assert keep[big], name
        assert keep[groups == groups[big]].sum() == 1


def test_incremental_search_finds_new_copies_in_the_old_catalog(planted):
    """Old catalog: the originals and negatives; a new build adds the copies."""
    usable = [r for r in planted if not hashing.is_degenerate(r["phash"])]
    old = [r for r in usable if r["variant"] == "orig"]
    new = [r for r in usable if r["variant"] != "orig"]
    old_v = hashing.hashes_to_uint64([r["phash"] for r in old])
    new_v = hashing.hashes_to_uint64([r["phash"] for r in new])
    inc = dedup.find_pairs_incremental(new_v, old_v, dedup.DEFAULT_THRESHOLD)
    assert (inc[:, 1] >= len(old)).all()  # never an old × old pair
    both = [*old, *new]
    full = dedup.find_pairs(np.concatenate([old_v, new_v]), dedup.DEFAULT_THRESHOLD)
    old_pairs = dedup.find_pairs(old_v, dedup.DEFAULT_THRESHOLD)
    np.testing.assert_array_equal(dedup.sort_pairs(np.concatenate([old_pairs, inc])), full)
    linked = {int(j) - len(old) for i, j, _ in inc if int(i) < len(old)}
    for k, r in enumerate(new):
        if r["variant"] in ROBUST:
            assert k in linked, r["path"].name  # found against the old catalog directly
    assert all(both[i]["picture"] == both[j]["picture"] for i, j, _ in inc)
