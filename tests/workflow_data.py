"""Real photos for the workflow tests: class-consistent, pairwise distinct crops of ``skimage.data`` photos.

A class is a base photo seen through one *view* (as it is, turned a quarter, upside
down, mirrored, or in negative), so classes differ strongly (a model learns them from
a handful of images) while every image of a class is another crop of the same scene.
:func:`class_photos` picks the crops greedily so that no two images of the whole set are
near duplicates under dsbuild's default perceptual hash (64-bit phash, threshold 10):
the only duplicates a test sees are the ones it plants.
"""

from __future__ import annotations

import io
import warnings
from functools import lru_cache

import numpy as np
from PIL import Image, ImageOps

#: skimage.data photos that load offline (colour first), enough for 50+ classes with the views below.
BASES = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "colorwheel",
         "retina", "camera", "coins", "moon", "page", "text", "horse", "clock", "grass", "gravel", "brick", "cell")
VIEWS = ("plain", "quarter", "upside_down", "mirror", "negative")
#: Smallest phash distance kept between any two generated images (the dedup default threshold is 10).
MIN_DISTANCE = 14


@lru_cache(maxsize=None)
def base_photo(name: str) -> Image.Image:
    """``skimage.data.<name>()`` as an RGB PIL image."""
    import skimage.data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arr = getattr(skimage.data, name)()
    if arr.dtype != np.uint8:
        arr = arr.astype(np.float64)
        arr = (255 * (arr - arr.min()) / max(1e-9, float(arr.max() - arr.min()))).astype(np.uint8)
    img = Image.fromarray(arr).convert("RGB")
    img.thumbnail((320, 320), Image.Resampling.LANCZOS)  # crops of a 48 px image need no more
    return img


def view(img: Image.Image, how: str) -> Image.Image:
    if how == "quarter":
        return img.transpose(Image.Transpose.ROTATE_90)
    if how == "upside_down":
        return img.transpose(Image.Transpose.ROTATE_180)
    if how == "mirror":
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if how == "negative":
        return ImageOps.invert(img)
    return img


def _crop(img: Image.Image, rng: np.random.Generator, size: int) -> Image.Image:
    w, h = img.size
    scale = rng.uniform(0.55, 0.9)
    cw, ch = int(w * scale), int(h * scale)
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return img.crop((x, y, x + cw, y + ch)).resize((size, size), Image.Resampling.LANCZOS)


def _phash(img: Image.Image) -> int:
    from dsbuild.verify.hashing import compute_hash

    return int(compute_hash(img), 16)


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@lru_cache(maxsize=None)
def class_photos(classes: tuple[tuple[str, str, str], ...], per_class: int, size: int = 48) -> dict[str, tuple[bytes, ...]]:
    """``per_class`` JPEGs (``size``² px) for each ``(class, base photo, view)``, no two near duplicates.

    Deterministic (seeded by the class's position). Raises AssertionError if a class cannot get
    enough distinct crops (then use fewer images or another base photo).
    """
    kept: list[int] = []
    out: dict[str, tuple[bytes, ...]] = {}
    for c, (name, base, how) in enumerate(classes):
        src = view(base_photo(base), how)
        rng = np.random.default_rng(1000 + c)
        images: list[bytes] = []
        for _ in range(400):
            if len(images) == per_class:
                break
            img = _crop(src, rng, size)
            h = _phash(img)
            if all(bin(h ^ k).count("1") >= MIN_DISTANCE for k in kept):
                kept.append(h)
                images.append(jpeg(img))
        assert len(images) == per_class, f"only {len(images)} distinct crops for class {name} ({base}, {how})"
        out[name] = tuple(images)
    return out


def many_classes(n: int) -> tuple[tuple[str, str, str], ...]:
    """``n`` classes ``c00 … c{n-1}``: every base photo through each view in turn."""
    specs = [(base, how) for how in VIEWS for base in BASES]
    assert n <= len(specs), f"at most {len(specs)} classes"
    return tuple((f"c{i:02d}-{base}-{how}", base, how) for i, (base, how) in enumerate(specs[:n]))
