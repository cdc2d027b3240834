"""The one sniff table: the downloader and verification classify the same bytes the same way."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from skimage import data as skdata

from dsbuild import fetch
from dsbuild.formats import EXTENSIONS, IMAGE_FORMATS, extension, sniff
from dsbuild.manifest import VerifySettings
from dsbuild.verify.decode import Rejected, decode


def encoded(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(skdata.coffee()).resize((64, 48)).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize(
    "head, name, image",
    [
        (encoded("JPEG"), "JPEG", True),
        (encoded("PNG"), "PNG", True),
        (encoded("GIF"), "GIF", True),
        (encoded("WEBP"), "WEBP", True),
        (encoded("BMP"), "BMP", True),
        (encoded("TIFF"), "TIFF", True),
        (encoded("ICO"), "ICO", True),
        (encoded("PPM"), "PPM", True),
        (encoded("EPS"), "EPS", True),
        (b"8BPS\x00\x01" + b"\x00" * 20, "PSD", True),
        (b"\x00\x00\x00\x1cftypheic\x00\x00\x00\x00", "HEIC", True),
        (b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00", "VIDEO", False),
        (b"%PDF-1.7\n", "PDF", False),
        (b"  <html><body>404</body></html>", "HTML", False),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "SVG", False),
        (b"BM is also how a text file may start", "TEXT", False),
        (bytes(range(1, 64)), "UNKNOWN", False),
        (b"", "EMPTY", False),
    ],
)
def test_one_classification_for_fetch_and_verify(head: bytes, name: str, image: bool) -> None:
    found = sniff(head[:64])
    assert (found.name, found.image, found.allowed) == (name, image, image and name in IMAGE_FORMATS)
    fmt, why = fetch.sniff(head[:64])
    if found.allowed:
        assert (fmt, why) == (name.lower(), None)
    elif name == "EMPTY":
        assert (fmt, why) == (None, "empty body")
    else:
        assert fmt is None and why == f"{'unsupported image' if image else 'not an image'} ({name.lower()})"
    if not head or found.allowed:
        return
    with pytest.raises(Rejected) as info:
        decode(head, VerifySettings())
    assert info.value.reason == ("unsupported format" if image else "not an image")
    assert name in info.value.detail.upper() or (name == "UNKNOWN" and info.value.detail == "unrecognised content")


def test_every_allowed_format_has_one_extension() -> None:
    assert set(EXTENSIONS) == set(IMAGE_FORMATS)
    assert extension("tiff") == extension("TIFF") == "tif" and extension(None) == extension("EPS") == "img"
