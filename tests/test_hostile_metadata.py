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

import io
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


def _pic(name: str):
    """A photo turned half a turn: not the pixels of any file above (no exact duplicate among the cases)."""
    return photo(name, (200, 150)).rotate(180)


def _seg(marker: int, body: bytes) -> bytes:
    """One JPEG marker segment (its length counts itself)."""
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


def _adobe_short_jpeg() -> bytes:
    """An Adobe APP14 of 6 bytes (needs 12) first: libjpeg ignores it, Pillow cannot read the header."""
    data = encode(_pic("chelsea"), "JPEG")
    return data[:2] + _seg(0xEE, b"Adobe\x00") + data[2:]


def _jfif_short_jpeg() -> bytes:
    data = encode(_pic("astronaut"), "JPEG")  # Pillow writes SOI + an 18-byte JFIF APP0 first
    assert data[2:4] == b"\xff\xe0"
    return data[:2] + _seg(0xE0, b"JFIF\x00\x01") + data[20:]


def _icc_missing_segment_jpeg() -> bytes:
    """A 256 kB ICC profile in 4 APP2 segments, the 2nd removed: libjpeg's 'bad ICC marker', also in lenient mode."""
    data = encode(_pic("coffee"), "JPEG", icc_profile=bytes(range(256)) * 1000)
    pos, icc = 2, []
    while data[pos + 1] != 0xDA:
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        if data[pos + 1] == 0xE2 and data[pos + 4 : pos + 16] == b"ICC_PROFILE\x00":
            icc.append((pos, pos + 2 + length))
        pos += 2 + length
    assert len(icc) == 4
    start, stop = icc[1]
    return data[:start] + data[stop:]


def _png_chunk_after_ihdr(name: str, chunk: bytes, mode: str = "RGB") -> bytes:
    img = _pic(name)
    return png_insert(encode(img.convert(mode) if mode != "RGB" else img, "PNG"), chunk)


def _palette_trns_300() -> bytes:
    """A palette PNG whose tRNS has 300 entries (the palette at most 256): libpng drops such a tRNS."""
    data = encode(_pic("coins").convert("P"), "PNG")
    at = data.find(b"IDAT") - 4
    return data[:at] + png_chunk(b"tRNS", b"\x00" * 300) + data[at:]


def _gif_gce_size2() -> bytes:
    """A GIF whose graphic control extension declares 2 bytes (needs 4)."""
    data = encode(_pic("chelsea"), "GIF")
    table = 3 * (2 ** ((data[10] & 7) + 1)) if data[10] & 0x80 else 0
    return data[: 13 + table] + b"\x21\xf9\x02\x00\x00\x00" + data[13 + table :]


def _png_idat_cut(data: bytes, fraction: float = 0.6) -> bytes:
    """``data`` (a PNG) whose IDAT holds only the first ``fraction`` of its zlib stream, under a right checksum."""
    at = data.find(b"IDAT") - 4
    length = struct.unpack(">I", data[at : at + 4])[0]
    body = data[at + 8 : at + 8 + length]
    return data[:at] + png_chunk(b"IDAT", body[: int(length * fraction)]) + data[at + 12 + length :]


def _jpeg_cut_scan(data: bytes, fraction: float = 0.6) -> bytes:
    """A JPEG whose scan stops after ``fraction`` of its data, then an end marker."""
    sos = data.index(b"\xff\xda")
    start = sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")
    return data[: start + int((len(data) - 2 - start) * fraction)] + b"\xff\xd9"


def _gif_cut(data: bytes, fraction: float = 0.6) -> bytes:
    return data[: int(len(data) * fraction)] + b"\x00\x3b"


# Metadata faults in a segment, chunk or extension block other than text/ICC size (variants of the cases above):
# the picture is kept without the part the decoder refused, named in a warning.
STRIPPED = {
    "adobe_short.jpg": (_adobe_short_jpeg, "chelsea", re.compile(r"APP14.*Adobe")),
    "jfif_short.jpg": (_jfif_short_jpeg, "astronaut", re.compile(r"APP0.*JFIF")),
    "icc_missing_segment.jpg": (_icc_missing_segment_jpeg, "coffee", re.compile(r"APP2.*ICC_PROFILE.*bad ICC marker")),
    "phys_2_bytes.png": (lambda: _png_chunk_after_ihdr("rocket", png_chunk(b"pHYs", b"\x00\x01")), "rocket",
                         re.compile(r"pHYs")),
    "gama_1_byte.png": (lambda: _png_chunk_after_ihdr("clock", png_chunk(b"gAMA", b"\x00")), "clock",
                        re.compile(r"gAMA")),
    "chrm_2_bytes.png": (lambda: _png_chunk_after_ihdr("moon", png_chunk(b"cHRM", b"\x01\x02")), "moon",
                         re.compile(r"cHRM")),
    "ztxt_method5.png": (lambda: _png_chunk_after_ihdr("camera", png_chunk(b"zTXt", b"K\x00\x05" + zlib.compress(b""))),
                         "camera", re.compile(r"zTXt.*compression method 5")),
    "rgb_trns_2_bytes.png": (lambda: _png_chunk_after_ihdr("immunohistochemistry", png_chunk(b"tRNS", b"\x00\x01")),
                             "immunohistochemistry", re.compile(r"tRNS")),
    "palette_trns_300.png": (_palette_trns_300, "coins", re.compile(r"tRNS")),
    "gif_gce_size2.gif": (_gif_gce_size2, "chelsea", re.compile(r"graphic control extension")),
}

def _exif6_jfif_short() -> bytes:
    """A short JFIF APP0 in a JPEG whose (intact) EXIF says "turned 90°": the EXIF survives the repair."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(_pic("rocket"), "JPEG", exif=exif.tobytes())
    return data[:2] + _seg(0xE0, b"JFIF\x00\x01") + data[20:]


def _cmyk_jfif_short() -> bytes:
    """A CMYK JPEG (Pillow writes an Adobe APP14: its colour transform) with a short JFIF APP0 in front."""
    data = encode(_pic("clock").convert("CMYK"), "JPEG")
    assert data[2:4] == b"\xff\xee"
    return data[:2] + _seg(0xE0, b"JFIF\x00\x01") + data[2:]


KEPT_PARTS = {"exif6_jfif_short.jpg": _exif6_jfif_short, "cmyk_jfif_short.jpg": _cmyk_jfif_short}


# The same metadata faults with the picture data really cut: never rescued into ``ok``.
STILL_CUT = {
    "phys_2_bytes_idat_cut.png": lambda: _png_idat_cut(STRIPPED["phys_2_bytes.png"][0]()),
    "trns_300_idat_cut.png": lambda: _png_idat_cut(_palette_trns_300()),
    "jfif_short_scan_cut.jpg": lambda: _jpeg_cut_scan(_jfif_short_jpeg()),
    "icc_missing_segment_scan_cut.jpg": lambda: _jpeg_cut_scan(_icc_missing_segment_jpeg()),
    "gif_gce_size2_cut.gif": lambda: _gif_cut(_gif_gce_size2()),
}


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
    for name, (make, *_rest) in STRIPPED.items():
        proj.add("a", name, make())
    for name, make in STILL_CUT.items():
        proj.add("a", name, make())
    for name, make in KEPT_PARTS.items():
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


@pytest.mark.parametrize("name", list(STRIPPED))
def test_a_refused_ancillary_part_is_dropped_and_the_picture_kept(built, name: str) -> None:
    """Wrong-length pHYs/gAMA/cHRM/tRNS, an unknown zTXt method, a short JFIF/Adobe segment, an ICC profile missing a
    segment, a short GIF graphic control block: Pillow or libjpeg refuse the file, its pixels are intact. Kept, the
    part named in a warning; the stored file opens with Pillow's default open and holds the photo."""
    import io
    from pathlib import Path

    import numpy as np
    from PIL import Image

    make, photo_name, pattern = STRIPPED[name]
    row = built[name]
    assert (row["status"], row["reason"], row["detail"]) == ("ok", None, None), (row["reason"], row["detail"])
    assert (row["width"], row["height"]) == (200, 150)
    dropped = [w for w in row["warnings"] if w.startswith("metadata dropped")]
    assert dropped and pattern.search(dropped[0]), row["warnings"]
    assert "object at 0x" not in dropped[0]
    data = Path(row["path"]).read_bytes()
    assert data != make() and len(data) < len(make())  # the copy without the refused part is the file kept
    with Image.open(io.BytesIO(data)) as stored:
        stored.load()
        pixels = np.asarray(stored.convert("RGB"), dtype=np.int16)
    fmt = {"jpg": "JPEG", "png": "PNG", "gif": "GIF"}[name.rsplit(".", 1)[1]]
    clean = _pic(photo_name).convert("P") if "palette" in name else _pic(photo_name)
    with Image.open(io.BytesIO(encode(clean, fmt))) as im:  # the same photo encoded without the fault
        want = np.asarray(im.convert("RGB"), dtype=np.int16)
    assert (pixels == want).all()  # the very pixels: only metadata was dropped


@pytest.mark.parametrize("name", list(STILL_CUT))
def test_a_metadata_fault_never_hides_a_cut_picture(built, name: str) -> None:
    row = built[name]
    assert row["status"] == "rejected", (row["status"], row["warnings"])
    assert row["reason"] in ("truncated", "corrupt"), (row["reason"], row["detail"])


def test_the_loader_reads_such_a_file_as_the_build_kept_it(tmp_path) -> None:
    """`dsbuild predict`/`similar` and training load through load_rgb: a file whose only fault is metadata gives its
    picture there too (as the build kept it), while one whose picture data is cut is still refused."""
    import numpy as np
    from PIL import Image

    from dsbuild.verify.decode import load_rgb

    for name in ("jfif_short.jpg", "phys_2_bytes.png", "gif_gce_size2.gif", "palette_trns_300.png"):
        make, photo_name, _pattern = STRIPPED[name]
        path = tmp_path / name
        path.write_bytes(make())
        got = np.asarray(load_rgb(path), dtype=np.int16)
        fmt = {"jpg": "JPEG", "png": "PNG", "gif": "GIF"}[name.rsplit(".", 1)[1]]
        clean = _pic(photo_name).convert("P") if "palette" in name else _pic(photo_name)
        with Image.open(io.BytesIO(encode(clean, fmt))) as im:
            want = np.asarray(im.convert("RGB"), dtype=np.int16)
        assert got.shape == want.shape and np.abs(got - want).max() <= 1, name
    for name in ("jfif_short_scan_cut.jpg", "phys_2_bytes_idat_cut.png"):
        path = tmp_path / name
        path.write_bytes(STILL_CUT[name]())
        with pytest.raises(Exception):
            load_rgb(path)


def test_the_repair_keeps_the_orientation_and_the_colour_transform(built) -> None:
    """Only the refused parts go: an intact EXIF (its orientation) and an Adobe APP14 (whether 4 components are CMYK
    or YCCK: dropping it would change the colours) stay in the stored file."""
    from pathlib import Path

    import numpy as np
    from PIL import Image

    row = built["exif6_jfif_short.jpg"]
    assert (row["status"], row["width"], row["height"]) == ("ok", 150, 200), (row["status"], row["detail"])
    with Image.open(Path(row["path"])) as stored:
        assert stored.getexif().get(0x0112) == 6
    row = built["cmyk_jfif_short.jpg"]
    assert row["status"] == "ok", (row["reason"], row["detail"])
    data = Path(row["path"]).read_bytes()
    assert data[2:4] == b"\xff\xee" and data[6:11] == b"Adobe"
    clean_bytes = encode(_pic("clock").convert("CMYK"), "JPEG")
    with Image.open(io.BytesIO(data)) as stored, Image.open(io.BytesIO(clean_bytes)) as clean:
        assert stored.mode == "CMYK"
        assert (np.asarray(stored.convert("RGB")) == np.asarray(clean.convert("RGB"))).all()
