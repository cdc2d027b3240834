"""The per-image stage's settings: ``[verify]`` limits and ``[quality]`` checks (plain values, no imports of note).

The manifest parses both tables into these frozen dataclasses when it loads;
a bad value raises :class:`~dsbuild.errors.SettingsError` naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dsbuild.errors import Problem, check, did_you_mean
from dsbuild.formats import IMAGE_FORMATS

HASH_KINDS = ("phash", "dhash", "whash", "ahash")
"""Perceptual hash kinds (``dedup.hash``), each computed as imagehash's function of that name (:mod:`dsbuild.verify.hashing`)."""

QUALITY_FLAGS = ("dark", "light", "blurry", "low_information", "grayscale", "odd_aspect_ratio", "odd_size")
"""Quality issues an image can be flagged with, in the order flags are listed (:mod:`dsbuild.verify.quality`)."""


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True, kw_only=True)
class VerifySettings:
    """Limits applied to every image before it is accepted (manifest table ``[datasets.NAME.verify]``).

    ``min_side`` (px, default 32) and ``max_aspect_ratio`` (default 6.0) reject
    thumbnails and banners; ``max_pixels`` (default 89,478,485, Pillow's own bomb
    limit) guards against decompression bombs (an image declaring more pixels is
    rejected before its pixels are decoded); ``max_bytes`` (default 20 MB) caps the
    file size read from disk or the web; ``formats`` is the allow-list of Pillow
    format names (a subset of :data:`dsbuild.formats.IMAGE_FORMATS`; EPS/PSD and
    other risky parsers are never allowed; a family's variants come with it: MPO
    is JPEG, BigTIFF is TIFF); ``time_limit`` is the most seconds verifying one
    image may take (default 30: an 89-megapixel PNG takes ~5 s on a busy core) —
    past it the image is rejected as ``timeout`` and its worker replaced, so a
    decoder that never returns cannot hold a build.
    """

    min_side: int = 32
    max_aspect_ratio: float = 6.0
    max_pixels: int = 89_478_485
    max_bytes: int = 20_000_000
    formats: tuple[str, ...] = IMAGE_FORMATS
    time_limit: float = 30.0

    def __post_init__(self) -> None:
        check(self.problems(), table="verify")

    def problems(self) -> list[Problem]:
        """Every bad value, in field order (empty when the settings are valid)."""
        out = []
        for name, least, what in (("min_side", 1, "at least 1"), ("max_aspect_ratio", 1, "at least 1"),
                                  ("max_pixels", 1, "positive"), ("max_bytes", 1, "positive")):
            value = getattr(self, name)
            if not _number(value) or (name != "max_aspect_ratio" and not _int(value)):
                out.append(Problem(name, f"must be {'a number' if name == 'max_aspect_ratio' else 'an integer'}, not {value!r}"))
            elif value < least:
                out.append(Problem(name, f"must be {what}, not {value}"))
        if not _number(self.time_limit) or not 0 < self.time_limit < float("inf"):
            out.append(Problem("time_limit", f"must be a positive number of seconds, not {self.time_limit!r}"))
        for fmt in self.formats if isinstance(self.formats, (tuple, list)) else [self.formats]:
            if not isinstance(fmt, str) or fmt.upper() not in IMAGE_FORMATS:
                out.append(Problem("formats", f"'{fmt}' is not allowed — allowed formats: {', '.join(IMAGE_FORMATS)}"))
        return out


@dataclass(frozen=True, kw_only=True)
class QualitySettings:
    """CleanVision-style quality checks (manifest table ``[datasets.NAME.quality]``): thresholds and which flags reject.

    A score below its threshold is an issue (CleanVision's ``get_default_params``
    defaults: ``dark`` 0.32, ``light`` 0.05, ``blurry`` 0.29, ``low_information``
    0.3, ``odd_aspect_ratio`` 0.35); ``grayscale`` needs no threshold (score ≥ 0.5
    is flagged); ``odd_size`` is flagged below 0.5, its range set by
    ``odd_size_iqr_factor`` (default 3.0, the IQR rule of
    :func:`dsbuild.verify.quality.odd_size_scores`). A flag listed in ``reject``
    turns the image's status into ``rejected`` with reason ``quality: <flag>``;
    other flags are only reported.
    """

    reject: tuple[str, ...] = ()
    dark: float = 0.32
    light: float = 0.05
    blurry: float = 0.29
    low_information: float = 0.3
    odd_aspect_ratio: float = 0.35
    odd_size_iqr_factor: float = 3.0

    def __post_init__(self) -> None:
        check(self.problems(), table="quality")

    def problems(self) -> list[Problem]:
        """Every bad value (empty when the settings are valid)."""
        out = []
        for flag in self.reject if isinstance(self.reject, (tuple, list)) else [self.reject]:
            if flag not in QUALITY_FLAGS:
                out.append(Problem("reject", f"unknown flag '{flag}'{did_you_mean(str(flag), QUALITY_FLAGS)} — "
                                             f"known: {', '.join(QUALITY_FLAGS)}"))
        for name in ("dark", "light", "blurry", "low_information", "odd_aspect_ratio", "odd_size_iqr_factor"):
            if not _number(getattr(self, name)):
                out.append(Problem(name, f"must be a number, not {getattr(self, name)!r}"))
        return out
