"""Image quality scores with CleanVision's definitions and defaults, on the build's one decode.

Every score is in [0, 1]; for all but ``grayscale``, **low means an issue** and
the image is flagged when its score is below the threshold (CleanVision's
``get_default_params``, the defaults of :class:`~dsbuild.verify.settings.QualitySettings`):

===================  ===========================================================  =========
score                definition (CleanVision ``issue_managers/image_property.py``)  flagged
===================  ===========================================================  =========
dark                 99th percentile of brightness sqrt(.241R²+.691G²+.068B²)/255   < 0.32
light                1 − 5th percentile of that brightness                          < 0.05
blurry               gray thumbnail (longest side 64): 1−exp(−.01·std(FIND_EDGES))  < 0.29
                     + (1−exp(−.01·std(histogram)), zeroed when ≤ 0.18), capped at 1
low_information      0.1 × entropy (bits) of the 8-bit histogram, capped at 1       < 0.3
odd_aspect_ratio     min(w/h, h/w) of the original size                             < 0.35
grayscale            1.0 for a grayscale image, else 0.0                            ≥ 0.5
odd_size             dataset-relative, :func:`odd_size_scores` (IQR rule)           < 0.5
===================  ===========================================================  =========

Where this module departs from CleanVision, and why (measured in
``tests/test_quality.py`` against CleanVision itself on real photos):

* The image is the build's decode, which for JPEGs may be draft-reduced (DCT
  scaling), and brightness percentiles and entropy are taken on a nearest-neighbour
  subsample of about 8k pixels instead of every pixel: a subsample's percentiles
  are unbiased, and it is ~10x cheaper. The thumbnail for ``blurry`` is made from
  the gray image (shared with the phash) with Pillow's ``reducing_gap`` (a box
  reduction, then bicubic) instead of one bicubic pass over the full RGB image.
  Scores stay within a few hundredths of CleanVision's (blurry within 0.02).
* ``grayscale`` is also 1.0 for an RGB image whose three channels are equal (a gray
  photo saved as RGB, common on the web); CleanVision looks only at the mode ("L").
  The score is 1.0 = grayscale so the catalog column reads naturally.
* ``odd_size`` always uses 0.5 as its cut: where CleanVision switches to a 1.0 cut
  (all sizes equal to the median: IQR 0), scores of off-size images are halved, so
  the same images are flagged.
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any, Mapping

import numpy as np

from dsbuild.verify.settings import QUALITY_FLAGS, QualitySettings

SCORE_NAMES = ("dark", "light", "blurry", "low_information", "grayscale", "odd_aspect_ratio")
"""Keys of :func:`scores` (per image). ``odd_size`` comes from :func:`odd_size_scores` (per dataset)."""

FLAG_NAMES = QUALITY_FLAGS
"""Every flag, in listing order: :data:`SCORE_NAMES` + ``odd_size``."""

QualityThresholds = QualitySettings
"""The thresholds are the dataset's quality settings (one class); the old name stays for callers."""

# CleanVision's score constants (image_property_issue_manager.get_default_params).
ENTROPY_NORMALIZING_FACTOR = 0.1
BLURRY_NORMALIZING_FACTOR = 0.01
BLURRY_COLOR_THRESHOLD = 0.18
BLURRY_MAX_RESOLUTION = 64
SAMPLE_PIXELS = 8_192
"""Pixels sampled for brightness percentiles, entropy and the grayscale check."""
GRAYSCALE_MAX_SPREAD = 3
"""An RGB image is grayscale when at most 1 % of sampled pixels have max(R,G,B) − min(R,G,B) above this.

Gray content saved as RGB JPEG decodes with identical channels (constant chroma);
colour photos have spreads of tens of levels (see tests/test_quality.py).
"""

_BRIGHTNESS_WEIGHTS = np.array([0.241, 0.691, 0.068], dtype=np.float32)


def _sample(img):
    """A nearest-neighbour subsample of about SAMPLE_PIXELS pixels (the image itself when smaller)."""
    from PIL import Image

    w, h = img.size
    if w * h <= SAMPLE_PIXELS:
        return img
    step = math.sqrt(w * h / SAMPLE_PIXELS)
    return img.resize((max(1, round(w / step)), max(1, round(h / step))), Image.Resampling.NEAREST)


def _brightness(arr: np.ndarray) -> np.ndarray:
    """CleanVision's per-pixel brightness, flat; float32 (within 1e-7 of float64, 3x faster)."""
    if arr.ndim == 2:
        return arr.ravel() / np.float32(255.0)
    rgb = arr.reshape(-1, 3).astype(np.float32)
    return np.sqrt((rgb * rgb) @ _BRIGHTNESS_WEIGHTS) / np.float32(255.0)


def _is_gray_rgb(arr: np.ndarray) -> bool:
    rgb = arr.reshape(-1, 3)
    r, g, b = (rgb[:, c].astype(np.int16) for c in range(3))
    # max - min over the three channels, without a slow reduction over a length-3 axis.
    spread = np.maximum(np.maximum(np.abs(r - g), np.abs(g - b)), np.abs(r - b))
    return np.count_nonzero(spread > GRAYSCALE_MAX_SPREAD) <= 0.01 * len(spread)


def _blurry(gray) -> float:
    """CleanVision's blur score of an L image (thumbnail of longest side 64, FIND_EDGES, histogram spread)."""
    from PIL import Image, ImageFilter

    w, h = gray.size
    ratio = max(w, h) / BLURRY_MAX_RESOLUTION
    if ratio > 1:
        size = (max(int(w // ratio), 1), max(int(h // ratio), 1))
        gray = gray.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)
    edges = gray.filter(ImageFilter.FIND_EDGES)
    # sqrt of ImageStat's (population) variance, i.e. numpy's std with ddof=0, minus ImageStat's Python loops.
    blur = 1 - math.exp(-float(np.asarray(edges).std()) * BLURRY_NORMALIZING_FACTOR)
    std = 1 - math.exp(-float(np.std(gray.histogram())) * BLURRY_NORMALIZING_FACTOR)
    if std <= BLURRY_COLOR_THRESHOLD:
        std = 0.0
    return min(blur + std, 1.0)


def _percentiles(values: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    """numpy's default ("linear") percentiles, from one sort: np.percentile costs ~5x more on 8k values."""
    v = np.sort(values).astype(np.float64)
    n = len(v)
    out = []
    for q in qs:
        pos = (n - 1) * q / 100.0
        lo = int(math.floor(pos))
        hi = min(lo + 1, n - 1)
        out.append(float(v[lo] + (v[hi] - v[lo]) * (pos - lo)))
    return out


def scores(img, *, width: int | None = None, height: int | None = None, gray=None) -> dict[str, float]:
    """Quality scores of a decoded PIL image (mode RGB or L); keys :data:`SCORE_NAMES`.

    ``width``/``height`` are the original size (``img`` may be draft-reduced);
    they default to ``img.size``. ``gray`` is ``img`` converted to L
    (:func:`dsbuild.verify.hashing.to_gray`) when the caller has it already — the phash
    needs the same conversion. Every value is a float in [0, 1].
    """
    if img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    width = width or img.size[0]
    height = height or img.size[1]
    small = _sample(img)
    arr = np.asarray(small)
    p5, p99 = _percentiles(_brightness(arr), (5, 99))
    is_gray = 1.0 if img.mode == "L" or _is_gray_rgb(arr) else 0.0
    if gray is None:
        gray = img if img.mode == "L" else img.convert("L")
    return {
        "dark": float(p99),
        "light": float(1.0 - p5),
        "blurry": float(_blurry(gray)),
        "low_information": float(min(1.0, ENTROPY_NORMALIZING_FACTOR * small.entropy())),
        "grayscale": is_gray,
        "odd_aspect_ratio": float(min(width / height, height / width)) if width and height else float("nan"),
    }


def odd_size_scores(widths, heights, iqr_factor: float = 3.0) -> np.ndarray:
    """Dataset-relative size scores, shape (n,): < 0.5 means the image's size is an outlier.

    CleanVision's rule: size = sqrt(w·h); with Q1, Q3 of the sizes and IQR = Q3 − Q1,
    the normal range is [Q1 − f·IQR, Q3 + f·IQR]; score = 1 − clip(|size − mid| / (max − min), 0, 1).
    When the range is empty (IQR 0), sizes equal to the median score 1.0 and all
    others are flagged (their score is halved below 0.5). NaN sizes score NaN.
    """
    w = np.asarray(widths, dtype=np.float64)
    h = np.asarray(heights, dtype=np.float64)
    size = np.sqrt(w) * np.sqrt(h)
    out = np.full(size.shape, np.nan)
    ok = np.isfinite(size)
    if not ok.any():
        return out
    q1, q3 = np.percentile(size[ok], [25, 75])
    lo, hi = q1 - iqr_factor * (q3 - q1), q3 + iqr_factor * (q3 - q1)
    mid, gap = (lo + hi) / 2, hi - lo
    if gap > 0:
        out[ok] = 1 - np.clip(np.abs(size[ok] - mid) / gap, 0, 1)
    else:
        raw = 1 - np.clip(np.abs(size[ok] - mid) / max(mid, 1e-12), 0, 1)
        out[ok] = np.where(raw >= 1.0, 1.0, 0.5 * raw)
    return out


def flag_mask(name: str, values: Any, th: QualitySettings = QualitySettings()) -> Any:
    """Which of ``values`` (scores of flag ``name``: a number or a numpy array) are issues under ``th``.

    Below the threshold is an issue; ``grayscale`` ≥ 0.5 and ``odd_size`` < 0.5. NaN is not an issue
    (CleanVision does the same for images it could not load).
    """
    with np.errstate(invalid="ignore"):  # NaN compares False
        if name == "grayscale":
            return values >= 0.5
        if name == "odd_size":
            return values < 0.5
        return values < getattr(th, name)


def flags(scores: Mapping[str, Any], th: QualitySettings | object = QualitySettings()) -> dict[str, bool]:
    """Which issues a score dict shows; keys: those of :data:`FLAG_NAMES` present in ``scores``.

    ``th`` is a :class:`~dsbuild.verify.settings.QualitySettings` or any object with the
    same thresholds. A missing or NaN score is not an issue.
    """
    out = {}
    for name in FLAG_NAMES:
        if name not in scores:
            continue
        value = scores[name]
        out[name] = False if value is None or (isinstance(value, float) and math.isnan(value)) \
            else bool(flag_mask(name, value, th))
    return out


def thresholds_from(obj: Any) -> QualitySettings:
    """``obj`` itself when it is :class:`~dsbuild.verify.settings.QualitySettings`, else settings from its thresholds."""
    if isinstance(obj, QualitySettings):
        return obj
    return QualitySettings(**{f.name: getattr(obj, f.name) for f in fields(QualitySettings)
                              if f.name != "reject" and hasattr(obj, f.name)})
