"""Thumbnails for reports: small JPEG ``data:`` URIs of catalog images (never an exception per image)."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsbuild.render.values import is_missing

THUMB_PX = 128


@dataclass(frozen=True)
class Thumb:
    """A JPEG thumbnail as a data URI and the size to show it at (fits a 128 px box; small images upscaled)."""

    uri: str
    width: int
    height: int
    upscaled: bool


def thumbnail(path: str | Path | None, *, size: int = THUMB_PX, quality: int = 80) -> Thumb | None:
    """A ≤``size`` px JPEG thumbnail of the image at ``path`` (EXIF orientation applied, alpha on white).

    Returns None when the file is missing, unreadable, not an allowed image
    format by its content (:func:`dsbuild.formats.open_image`) or over the
    decompression-bomb limit — a per-image outcome, never an exception. JPEGs
    are decoded at reduced scale (draft mode).
    """
    if path is None or is_missing(path) or not str(path):
        return None
    import warnings

    from PIL import Image, ImageOps

    from dsbuild.formats import open_image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # The sniffing and allow-list of verification: a store file replaced by an EPS never reaches Ghostscript.
            with open_image(path) as im:
                im.draft("RGB", (size, size))
                im = ImageOps.exif_transpose(im)
                if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):  # by the depth its data uses, as
                    from dsbuild.verify.decode import normalise  # verification shows it (Pillow would clip at 255)

                    im = normalise(im, orientation=1).convert("RGB")
                elif im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                    rgba = im.convert("RGBA")
                    im = Image.new("RGB", rgba.size, (255, 255, 255))
                    im.paste(rgba, mask=rgba.getchannel("A"))
                else:
                    im = im.convert("RGB")
                im.thumbnail((size, size), Image.Resampling.LANCZOS)
                buf = io.BytesIO()
                im.save(buf, format="JPEG", quality=quality, optimize=True)
                w, h = im.size
    except Exception:  # noqa: BLE001 - any decode failure is this image's outcome
        return None
    scale = min(size / w, size / h) if max(w, h) < size // 2 else 1.0
    return Thumb(uri="data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"),
                 width=max(1, round(w * scale)), height=max(1, round(h * scale)), upscaled=scale > 1.0)


class ThumbCache:
    """Thumbnails by path, each made once per page."""

    def __init__(self) -> None:
        self.cache: dict[str, Thumb | None] = {}

    def get(self, path: Any) -> Thumb | None:
        key = "" if is_missing(path) else str(path)
        if key not in self.cache:
            self.cache[key] = thumbnail(key or None)
        return self.cache[key]
