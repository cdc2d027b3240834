"""A fault confined to metadata costs the metadata, never the picture; faults in the pixels are named, not repr'd.

Kind of fault (issue 11, kind 2): Pillow refuses a PNG whose ICC profile or XMP
text inflates past its 1 MB guard, or whose optional chunk has a bad checksum,
and dsbuild filed such intact pictures as ``corrupt``. The picture is what a
dataset needs: accepted, the metadata dropped, a note kept in ``warnings``.
When the pixels themselves are damaged the reason says what is wrong in words,
never a Python object's repr (``<_io.BytesIO object at 0x…>``).

Inputs: real photos as PNG/JPEG with oversized or broken metadata built chunk
by chunk (real zlib streams, real CRCs), and PNGs whose critical chunks are
damaged.
"""

from __future__ import annotations

import re
import struct
import zlib

import pytest

from hostile_kit import Project, encode, photo, png_chunk, png_insert

MB = 1024 * 1024


def _png(name: str = "astronaut") -> bytes:
    return encode(photo(name, (200, 150)), "PNG")


def _big_icc() -> bytes:
    profile = b"\x00" * (3 * MB // 2)  # inflates to 1.5 MB, a few kB on disk
    return png_insert(_png("astronaut"), png_chunk(b"iCCP", b"big profile\x00\x00" + zlib.compress(profile, 9)))


def _big_itxt() -> bytes:
    xmp = b"<x:xmpmeta>" + b" " * (3 * MB) + b"</x:xmpmeta>"
    body = b"XML:com.adobe.xmp\x00\x01\x00\x00\x00" + zlib.compress(xmp, 9)  # compressed iTXt
    return png_insert(_png("coffee"), png_chunk(b"iTXt", body))


def _big_ztxt() -> bytes:
    return png_insert(_png("chelsea"), png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"a" * (2 * MB), 9)))


def _text_bad_crc() -> bytes:
    return png_insert(_png("rocket"), png_chunk(b"tEXt", b"Author\x00someone", crc=0x12345678))


def _time_bad_crc() -> bytes:
    return png_insert(_png("clock"), png_chunk(b"tIME", struct.pack(">HBBBBB", 2024, 1, 2, 3, 4, 5), crc=1))


def _idat_bad_crc() -> bytes:
    data = bytearray(_png("camera"))
    at = data.find(b"IDAT") + 4 + 50  # a byte of compressed pixels: the chunk's CRC no longer matches
    data[at] ^= 0xFF
    return bytes(data)


def _ihdr_bad_crc() -> bytes:
    data = bytearray(_png("coins"))
    data[8 + 8 + 13] ^= 0xFF  # the first byte of IHDR's checksum
    return bytes(data)


def _idat_not_zlib() -> bytes:
    """IDAT holds bytes that are not a zlib stream, under a correct checksum: the pixels cannot be decoded."""
    data = _png("coins")
    at = data.find(b"IDAT") - 4
    length = struct.unpack(">I", data[at : at + 4])[0]
    garbage = bytes((i * 37 + 11) % 256 for i in range(length))
    return data[:at] + png_chunk(b"IDAT", garbage) + data[at + 12 + length :]


def _bad_exif_jpeg() -> bytes:
    exif = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x30\x00" + b"\x12\x01\x03\x00" * 3  # 48 entries announced, 3 present
    return encode(photo("moon", (200, 150)), "JPEG", exif=exif)


def _exif_not_tiff_jpeg() -> bytes:
    return encode(photo("immunohistochemistry", (200, 150)), "JPEG", exif=b"Exif\x00\x00XX garbage, not a TIFF header")


def _icc_garbage_jpeg() -> bytes:
    return encode(photo("astronaut", (200, 150)), "JPEG", icc_profile=b"not an ICC profile at all" * 10)


METADATA_DROPPED = re.compile(r"metadata", re.I)

# name -> (bytes, status, reason, pattern of the detail (rejected) or of a warning (accepted))
CASES = {
    "big_icc.png": (_big_icc, "ok", None, re.compile(r"iCCP", re.I)),
    "big_itxt.png": (_big_itxt, "ok", None, re.compile(r"iTXt", re.I)),
    "big_ztxt.png": (_big_ztxt, "ok", None, re.compile(r"zTXt", re.I)),
    "text_bad_crc.png": (_text_bad_crc, "ok", None, re.compile(r"tEXt.*checksum|checksum.*tEXt", re.I)),
    "time_bad_crc.png": (_time_bad_crc, "ok", None, re.compile(r"tIME.*checksum|checksum.*tIME", re.I)),
    "bad_exif.jpg": (_bad_exif_jpeg, "ok", None, re.compile(r"exif", re.I)),
    "exif_not_tiff.jpg": (_exif_not_tiff_jpeg, "ok", None, None),
    "icc_garbage.jpg": (_icc_garbage_jpeg, "ok", None, None),
    "idat_bad_crc.png": (_idat_bad_crc, "rejected", "corrupt", re.compile(r"IDAT.*checksum|checksum.*IDAT", re.I)),
    "ihdr_bad_crc.png": (_ihdr_bad_crc, "rejected", "corrupt", re.compile(r"IHDR.*checksum", re.I)),
    "idat_not_zlib.png": (_idat_not_zlib, "rejected", "corrupt", re.compile(r"\w")),
}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, dict]:
    proj = Project(tmp_path_factory.mktemp("meta"))
    for name, (make, *_rest) in CASES.items():
        proj.add("a", name, make())
    proj.add("b", "control.png", encode(photo("coffee", (210, 140)), "PNG"))
    proj.set("dedup", near=False)
    code, out, err = proj.build()
    assert code == 0, out + err
    return proj.by_name()


@pytest.mark.parametrize("name", list(CASES))
def test_metadata_faults_cost_only_the_metadata(built, name: str) -> None:
    _make, status, reason, pattern = CASES[name]
    row = built[name]
    assert (row["status"], row["reason"]) == (status, reason), (row["status"], row["reason"], row["detail"])
    if status == "ok":
        assert (row["width"], row["height"]) == (200, 150)
        assert row["detail"] is None
        if pattern is not None:
            assert any(pattern.search(w) for w in row["warnings"]), row["warnings"]
    else:
        assert pattern.search(row["detail"] or ""), row["detail"]
        assert "object at 0x" not in row["detail"]
        assert (row["format"], row["width"], row["height"]) == ("PNG", 200, 150)


def test_dropped_metadata_is_dropped_from_the_stored_file(built) -> None:
    """The stored file is what was decoded: Pillow's default open reads it (it refused the original), same pixels."""
    import hashlib
    import io
    from pathlib import Path

    import numpy as np
    from PIL import Image, UnidentifiedImageError

    for name in ("big_icc.png", "big_itxt.png", "text_bad_crc.png", "time_bad_crc.png"):
        row = built[name]
        data = Path(row["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row["sha256"] and row["bytes"] == len(data)
        original = CASES[name][0]()
        assert len(data) < len(original)
        with Image.open(io.BytesIO(data)) as stored:
            stored.load()
            pixels = np.asarray(stored)
        assert (pixels == np.asarray(photo({"big_icc.png": "astronaut", "big_itxt.png": "coffee",
                                             "text_bad_crc.png": "rocket", "time_bad_crc.png": "clock"}[name],
                                            (200, 150)))).all()
        with pytest.raises((ValueError, SyntaxError, UnidentifiedImageError)):
            with Image.open(io.BytesIO(original)) as im:  # what a loader would have met
                im.load()
    # a JPEG whose only fault is EXIF opens anyway: it is kept byte for byte
    row = built["bad_exif.jpg"]
    assert Path(row["path"]).read_bytes() == CASES["bad_exif.jpg"][0]()


def test_no_detail_is_a_python_repr(built) -> None:
    for name, row in built.items():
        for text in [row["detail"] or "", *row["warnings"]]:
            assert "object at 0x" not in text and "<_io." not in text, (name, text)
