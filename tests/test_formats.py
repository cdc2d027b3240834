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


def _within(seconds: float, fn):
    """``fn()``'s result or exception, or AssertionError when it is still running after ``seconds`` (opening a
    named pipe for reading waits for a writer: a regression would hang here, not the whole run)."""
    import threading

    box: dict = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds} s (blocked opening a non-regular file?)"
    return box


def test_open_image_refuses_what_is_not_a_regular_file_without_opening_it(tmp_path) -> None:
    """Variant hunt finding 9: the one untrusted-open helper (predict, similar, thumbnails) says "not a regular
    file" for a named pipe, a symlink to /dev/zero or a folder, from its stat — it never waits on a pipe nor
    reads a device."""
    import os

    from dsbuild.formats import Refused, open_image

    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.jpg"
    zero.symlink_to("/dev/zero")
    folder = tmp_path / "folder.jpg"
    folder.mkdir()
    expected = {fifo: "a named pipe (FIFO), not a regular file", zero: "a character device, not a regular file",
                folder: "a folder, not a regular file"}
    for path, detail in expected.items():
        box = _within(10, lambda: open_image(path))
        assert isinstance(box.get("error"), Refused), box
        assert (box["error"].reason, box["error"].detail) == ("not a file", detail)
        assert str(box["error"]) == f"not a file: {detail}"
    from dsbuild.formats import not_regular, read_regular

    for path, detail in expected.items():
        assert not_regular(path) == detail
        assert isinstance(_within(10, lambda: read_regular(path, 100)).get("error"), Refused)
    real = tmp_path / "real.png"
    Image.fromarray(skdata.camera()).save(real)
    assert not_regular(real) is None and not_regular(tmp_path / "missing.png") is None
    with open_image(real) as im:
        assert im.size == (512, 512)
