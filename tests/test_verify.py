"""Verification of real image files: :func:`dsbuild.verify.analyze_file` and the content-addressed store.

Every case is a real file on disk made with Pillow from ``skimage.data`` photos
(or hand-built bytes where the point is a broken header). Bad files are one
table (file → reason); accepted files with unusual modes are another (file →
format, mode, size, frames). Accepted files land in the store as
``<store>/<sha[:2]>/<sha>.<ext>``; rejected files never do.
"""

from __future__ import annotations

import hashlib
import io
import random
import struct
import time
import warnings
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dsbuild.manifest import DedupSettings, VerifySettings
from dsbuild.store import store_bytes, store_path, sweep_temp_files
from dsbuild.verify import REASONS, ImageRecord, analyze_file

SEED = 42
VERIFY = VerifySettings()
DEDUP = DedupSettings()


# --------------------------------------------------------------------------- real images


@lru_cache(maxsize=None)
def _photo(name: str, size: tuple[int, int] = (300, 200)) -> Image.Image:
    import skimage.data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = Image.fromarray(getattr(skimage.data, name)())
    return img.convert("RGB").resize(size, Image.Resampling.LANCZOS)


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def truncated_jpeg() -> bytes:
    data = _encode(_photo("astronaut"), "JPEG", quality=90)
    return data[: len(data) // 2]


def png_bad_crc() -> bytes:
    data = bytearray(_encode(_photo("coffee"), "PNG"))
    at = data.find(b"IDAT") + 4 + 50  # a byte of compressed pixel data: the chunk CRC no longer matches
    data[at] ^= 0xFF
    return bytes(data)


def one_pixel() -> bytes:
    return _encode(Image.new("RGB", (1, 1), (255, 255, 255)), "PNG")


def too_wide() -> bytes:
    return _encode(_photo("rocket", (700, 70)), "PNG")


def bomb_png() -> bytes:
    """A ~4 KB PNG whose header declares 20000×20000 pixels (400 M, 1.2 GB as RGB once decoded)."""
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    rows = (b"\x00" + bytes(3 * 20000)) * 4
    idat = zlib.compress(rows, 9) + bytes(range(256)) * 12  # a few KB of plausible stream
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def html_page() -> bytes:
    return b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body>Not Found</body></html>\n"


def text_file() -> bytes:
    return b"this is not a picture\nit is a list of URLs someone saved with the wrong name\n"


def ico_file() -> bytes:
    return _encode(_photo("chelsea", (64, 64)), "ICO")


def ppm_file() -> bytes:
    return _encode(_photo("chelsea"), "PPM")


def pcx_file() -> bytes:
    return _encode(_photo("chelsea"), "PCX")


def psd_header() -> bytes:
    # The start of a Photoshop file: version 1, 3 channels, 200×300, 8 bits, RGB.
    return b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, 200, 300, 8, 3) + bytes(64)


def eps_file() -> bytes:
    return b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 300 200\nnewpath 0 0 moveto 300 200 lineto stroke\n%%EOF\n"


def big_jpeg() -> bytes:
    return _encode(_photo("astronaut"), "JPEG", quality=95)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / "in" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _store_files(store: Path) -> list[Path]:
    return sorted(p for p in store.rglob("*") if p.is_file()) if store.exists() else []


# --------------------------------------------------------------------------- rejects: one table


SMALL_MAX_BYTES = VerifySettings(max_bytes=10_000)

# (file name, bytes maker, settings, expected reason, text expected in detail)
REJECTS = [
    ("truncated.jpg", truncated_jpeg, VERIFY, "truncated", "Premature end of JPEG file"),
    ("bad-crc.png", png_bad_crc, VERIFY, "corrupt", "IDAT"),
    ("pixel.png", one_pixel, VERIFY, "too small", "1×1"),
    ("banner.png", too_wide, VERIFY, "odd aspect ratio", "10.0:1"),
    ("bomb.png", bomb_png, VERIFY, "decompression bomb", "400000000"),
    ("error-page.jpg", html_page, VERIFY, "not an image", "html"),
    ("empty.jpg", lambda: b"", VERIFY, "empty file", "0 bytes"),
    ("notes.png", text_file, VERIFY, "not an image", "text"),
    ("favicon.ico", ico_file, VERIFY, "unsupported format", "ICO"),
    ("cat.ppm", ppm_file, VERIFY, "unsupported format", "PPM"),
    ("cat.pcx", pcx_file, VERIFY, "unsupported format", "PCX"),
    ("layers.psd", psd_header, VERIFY, "unsupported format", "PSD"),
    ("drawing.eps", eps_file, VERIFY, "unsupported format", "EPS"),
    ("huge.jpg", big_jpeg, SMALL_MAX_BYTES, "too large", "max_bytes 10000"),
    # The allow-list is the manifest's: PNG is a fine format, but not for this dataset.
    ("photo.png", lambda: _encode(_photo("coffee"), "PNG"), VerifySettings(formats=("JPEG",)), "unsupported format", "PNG"),
]


@pytest.mark.parametrize(("name", "make", "settings", "reason", "detail"), REJECTS, ids=[r[0] for r in REJECTS])
def test_rejects(tmp_path: Path, name: str, make, settings: VerifySettings, reason: str, detail: str) -> None:
    path = _write(tmp_path, name, make())
    store = tmp_path / "store"
    rec = analyze_file(path, verify=settings, dedup=DEDUP, store_dir=store)
    assert isinstance(rec, ImageRecord)
    assert (rec.ok, rec.reason) == (False, reason), rec.detail
    assert reason in REASONS
    assert detail in rec.detail
    assert rec.store_path is None and rec.phash is None and rec.pixel_sha is None
    assert _store_files(store) == []  # nothing of a rejected file reaches the store


def test_bomb_is_rejected_from_its_header(tmp_path: Path) -> None:
    """A 20000×20000 PNG of a few KB is refused before a single row is decoded (1.2 GB of RGB otherwise)."""
    data = bomb_png()
    assert 1_000 < len(data) < 8_000
    path = _write(tmp_path, "bomb.png", data)
    start = time.perf_counter()
    rec = analyze_file(path, verify=VERIFY, dedup=DEDUP)
    assert time.perf_counter() - start < 1.0
    assert rec.reason == "decompression bomb"
    # The limit is the manifest's max_pixels: a 300×200 photo is fine by default, a bomb under 50,000 pixels.
    photo = _write(tmp_path, "photo.png", _encode(_photo("coffee"), "PNG"))
    assert analyze_file(photo, verify=VERIFY, dedup=DEDUP).ok
    before = Image.MAX_IMAGE_PIXELS
    rec = analyze_file(photo, verify=VerifySettings(max_pixels=50_000), dedup=DEDUP)
    assert rec.reason == "decompression bomb" and "60000" in rec.detail
    # ...and that limit stays with the dataset: Pillow's process-wide limit is left as it was.
    assert Image.MAX_IMAGE_PIXELS == before


def test_too_large_is_refused_before_reading(tmp_path: Path) -> None:
    """A file over max_bytes is refused from its size alone: an unreadable one says 'too large', not 'unreadable'."""
    path = _write(tmp_path, "huge.jpg", big_jpeg())
    path.chmod(0)
    try:
        rec = analyze_file(path, verify=SMALL_MAX_BYTES, dedup=DEDUP)
    finally:
        path.chmod(0o644)
    assert rec.reason == "too large" and rec.bytes == path.stat().st_size
    assert analyze_file(tmp_path / "missing.jpg", verify=VERIFY, dedup=DEDUP).reason == "unreadable"


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's TIFF reader warns about mangled tags
def test_hostile_bytes_never_raise(tmp_path: Path) -> None:
    """Seeded mutations of real files (flipped bytes, cuts, junk tails): a record every time, never an exception."""
    rng = random.Random(SEED)
    originals = [
        _encode(_photo("astronaut", (96, 64)), "JPEG", quality=80),
        _encode(_photo("coffee", (96, 64)), "PNG"),
        _encode(_photo("chelsea", (96, 64)).convert("P"), "GIF"),
        _encode(_photo("rocket", (96, 64)), "BMP"),
        _encode(_photo("camera", (96, 64)), "TIFF"),
    ]
    seen = set()
    for k in range(60):
        data = bytearray(originals[k % len(originals)])
        kind = k // len(originals) % 3
        if kind == 0:
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(8, len(data))] = rng.randrange(256)
        elif kind == 1:
            data = data[: rng.randrange(8, len(data))]
        else:
            data[rng.randrange(16, 64)] = 0xFF
            data += bytes(rng.randrange(256) for _ in range(64))
        path = _write(tmp_path, f"mutant-{k}.bin", bytes(data))
        rec = analyze_file(path, verify=VERIFY, dedup=DEDUP, store_dir=tmp_path / "store")
        assert isinstance(rec, ImageRecord)
        assert rec.ok or rec.reason in REASONS, (k, rec)
        seen.add(rec.reason)
    assert {"truncated", "corrupt"} & seen  # the mutations did hit the decoder's error paths


# --------------------------------------------------------------------------- accepted, normalised


def cmyk_jpeg() -> bytes:
    return _encode(_photo("coffee").convert("CMYK"), "JPEG", quality=90)


def png16() -> bytes:
    gray = np.asarray(_photo("camera").convert("L"), dtype=np.uint16) * 257
    return _encode(Image.fromarray(gray), "PNG")


def palette_transparent() -> bytes:
    img = _photo("chelsea").convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    return _encode(img, "PNG", transparency=0)


def la_png() -> bytes:
    img = _photo("astronaut").convert("L")
    alpha = Image.linear_gradient("L").resize(img.size)
    return _encode(Image.merge("LA", (img, alpha)), "PNG")


def rgba_png() -> bytes:
    img = _photo("rocket").convert("RGBA")
    img.putalpha(Image.linear_gradient("L").resize(img.size))
    return _encode(img, "PNG")


def animated_gif() -> bytes:
    frames = [_photo(n, (120, 100)).convert("P", palette=Image.Palette.ADAPTIVE) for n in ("astronaut", "coffee", "chelsea")]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def single_gif_of_first_frame() -> bytes:
    with Image.open(io.BytesIO(animated_gif())) as img:
        return _encode(img.convert("RGB"), "PNG")


# (file name, maker, Pillow format, original mode, width, height, frames)
ACCEPTED = [
    ("cmyk.jpg", cmyk_jpeg, "JPEG", "CMYK", 300, 200, 1),
    ("deep.png", png16, "PNG", "I;16", 300, 200, 1),
    ("palette.png", palette_transparent, "PNG", "P", 300, 200, 1),
    ("gray-alpha.png", la_png, "PNG", "LA", 300, 200, 1),
    ("alpha.png", rgba_png, "PNG", "RGBA", 300, 200, 1),
    ("anim.gif", animated_gif, "GIF", "P", 120, 100, 3),
    ("plain.bmp", lambda: _encode(_photo("coffee"), "BMP"), "BMP", "RGB", 300, 200, 1),
    ("scan.tif", lambda: _encode(_photo("camera").convert("L"), "TIFF"), "TIFF", "L", 300, 200, 1),
    ("photo.webp", lambda: _encode(_photo("astronaut"), "WEBP", quality=80), "WEBP", "RGB", 300, 200, 1),
]


@pytest.mark.parametrize(("name", "make", "fmt", "mode", "width", "height", "frames"), ACCEPTED, ids=[a[0] for a in ACCEPTED])
def test_accepted_and_normalised(tmp_path: Path, name: str, make, fmt: str, mode: str, width: int, height: int, frames: int) -> None:
    data = make()
    path = _write(tmp_path, name, data)
    store = tmp_path / "store"
    rec = analyze_file(path, verify=VERIFY, dedup=DEDUP, store_dir=store)
    assert rec.ok, (rec.reason, rec.detail)
    assert (rec.format, rec.mode, rec.width, rec.height, rec.frames) == (fmt, mode, width, height, frames)
    assert rec.sha256 == _digest(data) and rec.bytes == len(data)
    assert len(rec.phash) == 16 and len(rec.pixel_sha) == 64
    assert set(rec.quality) >= {"dark", "light", "blurry", "low_information"}
    # Stored once, under its content address, complete, with nothing else beside it.
    expected = store / rec.sha256[:2] / f"{rec.sha256}.{Path(rec.store_path).suffix[1:]}"
    assert Path(rec.store_path) == expected == store_path(store, rec.sha256, fmt)
    assert expected.read_bytes() == data
    assert _store_files(store) == [expected]


def test_alpha_is_composited_on_white(tmp_path: Path) -> None:
    """A fully transparent RGBA image and a white one are the same picture once normalised."""
    clear = Image.new("RGBA", (64, 64), (200, 30, 30, 0))
    white = Image.new("RGB", (64, 64), (255, 255, 255))
    a = analyze_file(_write(tmp_path, "clear.png", _encode(clear, "PNG")), verify=VERIFY, dedup=DEDUP)
    b = analyze_file(_write(tmp_path, "white.png", _encode(white, "PNG")), verify=VERIFY, dedup=DEDUP)
    assert a.ok and b.ok and a.pixel_sha == b.pixel_sha


def test_animated_gif_uses_its_first_frame(tmp_path: Path) -> None:
    anim = analyze_file(_write(tmp_path, "anim.gif", animated_gif()), verify=VERIFY, dedup=DEDUP)
    first = analyze_file(_write(tmp_path, "first.png", single_gif_of_first_frame()), verify=VERIFY, dedup=DEDUP)
    assert anim.frames == 3 and first.frames == 1
    assert anim.pixel_sha == first.pixel_sha and anim.phash == first.phash


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    """Orientation 6 (rotate 90° clockwise to display): the record has the displayed size and the rotated picture."""
    img = _photo("astronaut")  # 300×200 stored
    exif = Image.Exif()
    exif[0x0112] = 6
    tagged = _encode(img, "JPEG", quality=90, exif=exif.tobytes())
    rec = analyze_file(_write(tmp_path, "tagged.jpg", tagged), verify=VERIFY, dedup=DEDUP)
    assert rec.ok and (rec.width, rec.height) == (200, 300)

    # The same decoded pixels, physically rotated and stored losslessly, with no EXIF.
    with Image.open(io.BytesIO(tagged)) as raw:
        assert raw.size == (300, 200)
        rotated = raw.convert("RGB").transpose(Image.Transpose.ROTATE_270)
    ref = analyze_file(_write(tmp_path, "rotated.png", _encode(rotated, "PNG")), verify=VERIFY, dedup=DEDUP)
    assert (ref.width, ref.height) == (200, 300)
    assert rec.pixel_sha == ref.pixel_sha
    assert rec.phash == ref.phash
    # And the untagged original is a different picture (it is lying on its side).
    plain = analyze_file(_write(tmp_path, "plain.jpg", _encode(img, "JPEG", quality=90)), verify=VERIFY, dedup=DEDUP)
    assert plain.pixel_sha != rec.pixel_sha and plain.phash != rec.phash


def test_lossless_encodings_share_the_pixel_digest(tmp_path: Path) -> None:
    img = _photo("coffee")
    png = analyze_file(_write(tmp_path, "c.png", _encode(img, "PNG")), verify=VERIFY, dedup=DEDUP)
    bmp = analyze_file(_write(tmp_path, "c.bmp", _encode(img, "BMP")), verify=VERIFY, dedup=DEDUP)
    tif = analyze_file(_write(tmp_path, "c.tif", _encode(img, "TIFF", compression="tiff_lzw")), verify=VERIFY, dedup=DEDUP)
    assert png.sha256 != bmp.sha256 != tif.sha256
    assert png.pixel_sha == bmp.pixel_sha == tif.pixel_sha
    assert png.phash == bmp.phash
    # A one-pixel change is another picture.
    other = img.copy()
    other.putpixel((10, 10), (0, 0, 0) if img.getpixel((10, 10)) != (0, 0, 0) else (255, 255, 255))
    changed = analyze_file(_write(tmp_path, "d.png", _encode(other, "PNG")), verify=VERIFY, dedup=DEDUP)
    assert changed.pixel_sha != png.pixel_sha


# --------------------------------------------------------------------------- the store


def test_store_holds_only_accepted_files_once(tmp_path: Path) -> None:
    """A mixed folder: one file per accepted sha256, none for rejects, no temp files, same bytes twice stored once."""
    store = tmp_path / "store"
    good = {"a.jpg": _encode(_photo("astronaut"), "JPEG", quality=85), "b.png": _encode(_photo("coffee"), "PNG"),
            "c.gif": animated_gif(), "d.bmp": _encode(_photo("rocket"), "BMP")}
    files = {**good, "a-again.jpg": good["a.jpg"], "cut.jpg": truncated_jpeg(), "page.jpg": html_page(),
             "tiny.png": one_pixel(), "empty.png": b""}
    recs = {name: analyze_file(_write(tmp_path, name, data), verify=VERIFY, dedup=DEDUP, store_dir=store)
            for name, data in files.items()}
    assert {n for n, r in recs.items() if r.ok} == set(good) | {"a-again.jpg"}
    assert recs["a.jpg"].store_path == recs["a-again.jpg"].store_path
    stored = _store_files(store)
    assert len(stored) == len(good)
    for name, data in good.items():
        sha = _digest(data)
        path = Path(recs[name].store_path)
        assert path.parent.name == sha[:2] and path.stem == sha
        assert path.suffix == {"a.jpg": ".jpg", "b.png": ".png", "c.gif": ".gif", "d.bmp": ".bmp"}[name]
        assert path.read_bytes() == data
    assert not [p for p in store.rglob(".tmp-*")]


def test_store_replaces_a_partial_file_and_sweeps_temp_files(tmp_path: Path) -> None:
    """A crash can leave a temp file or (from an older writer) a short file under the final name: neither survives."""
    store = tmp_path / "store"
    data = _encode(_photo("chelsea"), "JPEG", quality=85)
    sha = _digest(data)
    final = store_path(store, sha, "JPEG")
    final.parent.mkdir(parents=True)
    final.write_bytes(data[:100])
    leftover = final.parent / ".tmp-0123456789abcdef"
    leftover.write_bytes(data[:50])
    assert store_bytes(store, sha, data, "JPEG") == final
    assert final.read_bytes() == data
    assert sweep_temp_files(store) == 1 and not leftover.exists()
    assert _store_files(store) == [final]
