"""Damaged data that a decoder accepts with only a warning is rejected; every decoder message stays with its file.

Kind of fault (issue 11, kind 1): a JPEG whose scan data stops early but which
still ends with an end-of-image marker decodes without an exception (libjpeg
fills the rest with grey and only warns), so verification that waits for an
exception accepts it. Any decoder report that data is missing or corrupt must
reject the image (``truncated`` / ``corrupt``, the decoder's words as the
detail); harmless reports are kept in the image's ``warnings`` and never printed
on the build's stderr without the file they belong to.

Inputs are real photos encoded by Pillow and then damaged: scan data cut at
several points (baseline and progressive, plain and with restart markers), a
restart marker replaced, junk bytes before the end marker; controls are the
same photos undamaged.

The same kind where the decoder says less (issue: variants 1, 4, 5, 6): junk
bytes *inside* the entropy-coded data, which libjpeg reports only as
"extraneous bytes before marker" (the harmless wording of junk after the data);
a progressive JPEG whose later scans are missing before its EOI (libjpeg is
silent); a PNG whose zlib stream ends cleanly before the rows do (Pillow is
silent); a JPEG-compressed TIFF whose libjpeg error libtiff passes on as
"JPEGLib: …".
"""

from __future__ import annotations

import re

import pytest

from hostile_kit import Project, cut_scan, encode, jpeg_scan_start, photo

PREMATURE = re.compile(r"premature end of data segment", re.I)
EXTRANEOUS = re.compile(r"^libjpeg: Corrupt JPEG data: \d+ extraneous bytes before marker 0xd[0-9]")
STOPS_EARLY = re.compile(r"scan data stops early: after its \d+ scans leave component 1 \d+ of 64 coefficients")
SHORT_ROWS = re.compile(r"PNG image data \(IDAT\) is truncated: its zlib stream ends after \d+ of the \d+ bytes")


def _jpeg(name: str = "astronaut", size=(320, 240), **kw) -> bytes:
    return encode(photo(name, size), "JPEG", quality=90, **kw)


def _restart_marker_swapped() -> bytes:
    """A JPEG written with a restart interval whose third RST marker is replaced by another RST number."""
    data = bytearray(_jpeg("coffee", restart_marker_rows=1))
    start = jpeg_scan_start(bytes(data))
    seen = 0
    for i in range(start, len(data) - 1):
        if data[i] == 0xFF and 0xD0 <= data[i + 1] <= 0xD7:
            seen += 1
            if seen == 3:
                data[i + 1] = 0xD0 + ((data[i + 1] - 0xD0 + 4) % 8)
                return bytes(data)
    raise AssertionError("no restart markers written")


def _extraneous_before_eoi() -> bytes:
    data = _jpeg("rocket")
    return data[:-2] + b"\x00\x11\x22\x33\x44" + data[-2:]


BAD_EXIF = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x05\x01\x0f\x00\x02"  # 5 entries announced, 1/3 of one present


def _tiff_damaged(compression: str, photo_name: str = "coffee") -> bytes:
    """A TIFF whose compressed strip data has 100 bytes flipped: libtiff reports it on stderr, Pillow says 'decoder error'."""
    data = bytearray(encode(photo(photo_name, (200, 150)), "TIFF", compression=compression))
    for i in range(2000, 2100):
        data[i] ^= 0x5A
    return bytes(data)


def _gif_cut_with_trailer() -> bytes:
    """A GIF whose image data stops at 60 %, then a block terminator and the trailer: looks complete."""
    data = encode(photo("moon", (200, 150)), "GIF")
    return data[: int(len(data) * 0.6)] + b"\x00\x3b"


def _png_idat_cut_with_iend() -> bytes:
    """A PNG whose IDAT holds 70 % of its zlib stream under a correct checksum, then IEND: looks complete."""
    from hostile_kit import png_chunk

    data = encode(photo("coins", (200, 150)), "PNG")
    at = data.find(b"IDAT") - 4
    length = int.from_bytes(data[at : at + 4], "big")
    body = data[at + 8 : at + 8 + length]
    return data[:at] + png_chunk(b"IDAT", body[: int(length * 0.7)]) + png_chunk(b"IEND", b"")


JUNK = bytes((i * 73 + 41) % 255 for i in range(20))  # 20 bytes, no 0xFF: nothing libjpeg could take for a marker


def _junk_in_restart_interval() -> bytes:
    """20 junk bytes in the middle of the 3rd restart interval: libjpeg warns only "extraneous bytes before marker 0xd3"."""
    data = _jpeg("coffee", restart_marker_rows=1)
    start = jpeg_scan_start(data)
    rst = [i for i in range(start, len(data) - 1) if data[i] == 0xFF and 0xD0 <= data[i + 1] <= 0xD7]
    mid = (rst[2] + 2 + rst[3]) // 2
    return data[:mid] + JUNK + data[mid:]


def _junk_inside_scan(fraction: float) -> bytes:
    """20 junk bytes inserted into a baseline scan (no restart markers): the rest decodes out of step, silently."""
    data = _jpeg("coffee")
    start = jpeg_scan_start(data)
    at = start + int((len(data) - start) * fraction)
    return data[:at] + JUNK + data[at:]


def _scan_crlf() -> bytes:
    """Every LF byte of the scan data turned into CR LF (a text-mode transfer)."""
    data = _jpeg("coffee")
    start = jpeg_scan_start(data)
    return data[:start] + data[start:].replace(b"\n", b"\r\n")


def _progressive_scans(keep: int) -> bytes:
    """A progressive JPEG with only its first ``keep`` scans, then EOI: libjpeg decodes it without a word."""
    data = _jpeg("coffee", progressive=True)
    sos = [k for k in range(2, len(data) - 1) if data[k] == 0xFF and data[k + 1] == 0xDA]
    assert len(sos) > keep
    return data[: sos[keep]] + b"\xff\xd9"


def _png_short_stream(fraction: float, **kw) -> bytes:
    """A PNG whose one IDAT is a complete, valid zlib stream of only ``fraction`` of the filtered rows, then IEND."""
    import zlib

    from hostile_kit import png_chunk

    data = encode(photo("coins", (200, 150)), "PNG", **kw)
    chunks, pos = [], 8
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        chunks.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    ihdr = dict(chunks)[b"IHDR"]
    row = 1 + 200 * 3  # whole rows: Pillow then says nothing (cut inside a row, it sometimes notices)
    short = raw[: row * int(150 * fraction)]
    return (data[:8] + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(short))
            + png_chunk(b"IEND", b""))


def _png_interlaced() -> bytes:
    """A photo as an Adam7-interlaced PNG (Pillow writes none: the seven passes are laid out here)."""
    import struct
    import zlib

    from hostile_kit import png_chunk

    img = photo("coins", (200, 150))
    px, (w, h) = img.tobytes(), img.size
    raw = bytearray()
    for x0, y0, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)):
        for y in range(y0, h, dy):
            raw.append(0)  # filter type None
            for x in range(x0, w, dx):
                raw += px[(y * w + x) * 3 : (y * w + x) * 3 + 3]
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 1)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(bytes(raw)))
            + png_chunk(b"IEND", b""))


def _png_interlaced_short() -> bytes:
    import zlib

    from hostile_kit import png_chunk

    data = _png_interlaced()
    at = data.find(b"IDAT") - 4
    length = int.from_bytes(data[at : at + 4], "big")
    raw = zlib.decompress(data[at + 8 : at + 8 + length])
    last_pass = 75 * (1 + 200 * 3)  # Adam7's 7th pass: every odd row of the 200×150 picture, whole
    return data[:at] + png_chunk(b"IDAT", zlib.compress(raw[:-last_pass])) + png_chunk(b"IEND", b"")


def _tiff_jpeg(damage_at: int | None = None) -> bytes:
    """A photo as a JPEG-compressed TIFF; ``damage_at``: 100 bytes XOR 0x5A there (libtiff: "JPEGLib: …")."""
    data = bytearray(encode(photo("coffee", (200, 150)), "TIFF", compression="jpeg"))
    if damage_at is not None:
        for i in range(damage_at, damage_at + 100):
            data[i] ^= 0x5A
    return bytes(data)


def _tiff_cut(compression: str) -> bytes:
    data = encode(photo("rocket", (200, 150)), "TIFF", compression=compression)
    return data[: int(len(data) * 0.55)]


# name -> (bytes, status, reason, detail pattern)
CASES = {
    "base_cut10.jpg": (lambda: cut_scan(_jpeg(), 0.10), "rejected", "truncated", PREMATURE),
    "base_cut50.jpg": (lambda: cut_scan(_jpeg(), 0.50), "rejected", "truncated", PREMATURE),
    "base_cut97.jpg": (lambda: cut_scan(_jpeg(), 0.97), "rejected", "truncated", PREMATURE),
    "prog_cut30.jpg": (lambda: cut_scan(_jpeg(progressive=True), 0.30), "rejected", "truncated", PREMATURE),
    "prog_cut90.jpg": (lambda: cut_scan(_jpeg(progressive=True), 0.90), "rejected", "truncated", PREMATURE),
    "gray_cut40.jpg": (lambda: cut_scan(encode(photo("camera").convert("L"), "JPEG"), 0.40), "rejected", "truncated",
                       PREMATURE),
    "rst_cut60.jpg": (lambda: cut_scan(_jpeg(restart_marker_rows=2), 0.60), "rejected", "truncated", PREMATURE),
    "rst_swapped.jpg": (_restart_marker_swapped, "rejected", "corrupt", re.compile(r"found marker 0xd\d instead of RST\d", re.I)),
    "lzw_damaged.tif": (lambda: _tiff_damaged("tiff_lzw"), "rejected", "corrupt", re.compile(r"^libtiff: .*code not yet in table")),
    "zip_damaged.tif": (lambda: _tiff_damaged("tiff_adobe_deflate"), "rejected", "corrupt",
                        re.compile(r"^libtiff: .*invalid distance too far back")),
    "raw_cut.tif": (lambda: _tiff_cut("raw"), "rejected", "truncated", re.compile(r"truncated", re.I)),
    # libtiff writes the directory after the strips: cut, the file has no directory left to read
    "lzw_cut.tif": (lambda: _tiff_cut("tiff_lzw"), "rejected", "truncated", re.compile(r"directory .* past the end")),
    "gif_cut_trailer.gif": (_gif_cut_with_trailer, "rejected", "truncated", re.compile(r"truncated", re.I)),
    "png_idat_cut_iend.png": (_png_idat_cut_with_iend, "rejected", "truncated", re.compile(r"truncated", re.I)),
    "junk_before_eoi.jpg": (_extraneous_before_eoi, "ok", None, None),
    # bytes inside the entropy-coded data: libjpeg only says "extraneous bytes before marker", the picture is garbage
    "junk_in_rst_interval.jpg": (_junk_in_restart_interval, "rejected", "corrupt", EXTRANEOUS),
    "junk_in_scan30.jpg": (lambda: _junk_inside_scan(0.3), "rejected", "corrupt", EXTRANEOUS),
    "junk_in_scan60.jpg": (lambda: _junk_inside_scan(0.6), "rejected", "corrupt", EXTRANEOUS),
    "scan_crlf.jpg": (_scan_crlf, "rejected", "corrupt", EXTRANEOUS),
    # later scans of a progressive JPEG missing, EOI kept: libjpeg is silent
    "prog_1_scan.jpg": (lambda: _progressive_scans(1), "rejected", "truncated", STOPS_EARLY),
    "prog_4_scans.jpg": (lambda: _progressive_scans(4), "rejected", "truncated", STOPS_EARLY),
    # a complete zlib stream of too few rows: Pillow is silent
    "png_rows70.png": (lambda: _png_short_stream(0.7), "rejected", "truncated", SHORT_ROWS),
    "png_rows99.png": (lambda: _png_short_stream(0.99), "rejected", "truncated", SHORT_ROWS),
    "png_interlaced_no_pass7.png": (_png_interlaced_short, "rejected", "truncated", SHORT_ROWS),
    "png_interlaced.png": (_png_interlaced, "ok", None, None),
    # libtiff passes libjpeg's error on as "JPEGLib: …"
    "jpeg_damaged2500.tif": (lambda: _tiff_jpeg(2500), "rejected", "corrupt", re.compile(r"^libtiff: JPEGLib: ")),
    "jpeg_damaged3000.tif": (lambda: _tiff_jpeg(3000), "rejected", "corrupt", re.compile(r"^libtiff: JPEGLib: ")),
    "jpeg.tif": (_tiff_jpeg, "ok", None, None),
    "whole.jpg": (lambda: _jpeg("chelsea"), "ok", None, None),
    "whole_prog.jpg": (lambda: _jpeg("clock", progressive=True), "ok", None, None),
}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, dict]:
    proj = Project(tmp_path_factory.mktemp("warn"))
    for name, (make, *_rest) in CASES.items():
        proj.add("a", name, make())
    proj.add("b", "bad_exif.jpg", _jpeg("coins", exif=BAD_EXIF))
    proj.add("b", "control.png", encode(photo("moon"), "PNG"))
    proj.set("dedup", near=False)
    code, out, err = proj.build()
    assert code == 0, out + err
    return proj.by_name()


@pytest.mark.parametrize("name", list(CASES))
def test_damaged_scan_data_is_rejected_with_the_decoders_words(built, name: str) -> None:
    _make, status, reason, detail = CASES[name]
    row = built[name]
    assert (row["status"], row["reason"]) == (status, reason), row
    if detail is None:
        assert row["detail"] is None
    else:
        assert detail.search(row["detail"] or ""), row["detail"]
        assert "object at 0x" not in row["detail"]


def test_rejected_jpeg_keeps_what_is_known(built) -> None:
    row = built["base_cut50.jpg"]
    assert (row["format"], row["width"], row["height"]) == ("JPEG", 320, 240)
    assert row["bytes"] == len(cut_scan(_jpeg(), 0.50))


def test_a_harmless_decoder_warning_is_kept_with_the_image(built) -> None:
    """Pillow warns about the broken EXIF block of an intact photo: accepted, the warning kept in its row."""
    row = built["bad_exif.jpg"]
    assert row["status"] == "ok", row
    assert any(re.search(r"exif", w, re.I) for w in row["warnings"]), row["warnings"]
    assert built["control.png"]["warnings"] == []
    assert built["whole.jpg"]["warnings"] == []


def test_no_decoder_message_reaches_the_terminal_without_its_file(tmp_path) -> None:
    """A subprocess build of files that make Pillow and libtiff talk: stderr holds no decoder message.

    61 files: enough for the build to verify in worker processes (where C libraries
    write to the inherited stderr), with warnings from Pillow (corrupt EXIF) and
    errors from libtiff (damaged LZW strips) in them.
    """
    proj = Project(tmp_path)
    for i in range(30):
        proj.add("a", f"exif_{i:02d}.jpg", encode(photo(("coffee", "rocket", "clock")[i % 3], (96 + i, 80)), "JPEG",
                                                  exif=BAD_EXIF))
        proj.add("b", f"lzw_{i:02d}.tif", _tiff_damaged("tiff_lzw", ("chelsea", "moon", "camera")[i % 3]))
    proj.add("b", "cut.jpg", cut_scan(_jpeg(), 0.5))
    proj.set("dedup", near=False)
    proj.write_manifest()
    result = proj.run("build", "--workers", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    for line in result.stderr.splitlines():
        assert not re.search(r"warning|exif|corrupt|extraneous|premature|libjpeg|TIFF", line, re.I), line
    rows = proj.by_name()
    assert rows["cut.jpg"]["reason"] == "truncated"
    for i in range(30):
        assert rows[f"exif_{i:02d}.jpg"]["status"] == "ok"
        assert any("exif" in w.lower() for w in rows[f"exif_{i:02d}.jpg"]["warnings"]), rows[f"exif_{i:02d}.jpg"]
        lzw = rows[f"lzw_{i:02d}.tif"]
        assert (lzw["status"], lzw["reason"]) == ("rejected", "corrupt"), lzw
        assert lzw["detail"].startswith("libtiff: "), lzw["detail"]
