"""What the re-check after an upgrade costs: the build that verifies every catalogued image again (dsbuild's verifier
revision changed) beside a build with nothing to do, on the same catalog, and what it changed.

    python bench/recheck_cost.py                  # 300 photos re-encoded from skimage.data (+ 4 damaged files)
    python bench/recheck_cost.py --old 2aa0093    # the first build by that commit's dsbuild (git archive): its outcomes
    python bench/recheck_cost.py --quick          # 60 photos

The first build is made by this checkout, after which the catalog's recorded verify section is rewritten as an
older dsbuild wrote it (a digest, no revision) — or, with ``--old REV``, by the ``dsbuild`` package of commit REV
in a child process (its real older outcomes: the damaged files it accepted). Then, each timed as ``python -m
dsbuild build`` in a child process (interpreter start included, the same in both): the re-checking build, then a
build with nothing to do. Printed: both times, their difference per image, and the re-check's line.

The damaged files are kinds the checks of revision 2 reject or repair: junk inside a JPEG's scan data, a
progressive JPEG with its later scans missing, a PNG whose zlib stream ends before its rows, a JPEG with a short
JFIF header (repaired now).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "clock", "immunohistochemistry",
          "horse", "page", "text")


def _encode(img, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _scan_start(data: bytes, sos: int | None = None) -> int:
    sos = data.index(b"\xff\xda") if sos is None else sos
    return sos + 2 + int.from_bytes(data[sos + 2: sos + 4], "big")


def damaged(photo) -> dict[str, bytes]:
    """Files revision 1 accepted or rejected and revision 2 decides otherwise."""
    base = _encode(photo.resize((320, 240)), "JPEG", quality=90)
    at = _scan_start(base) + int((len(base) - _scan_start(base)) * 0.4)
    junk = base[:at] + bytes((i * 73 + 41) % 255 for i in range(20)) + base[at:]
    prog = _encode(photo.resize((320, 240)), "JPEG", quality=90, progressive=True)
    scans = [i for i in range(len(prog) - 1) if prog[i:i + 2] == b"\xff\xda"]
    prog_cut = prog[:scans[2]] + b"\xff\xd9"  # two scans, then the end marker
    png = _encode(photo.resize((200, 150)), "PNG")
    ihdr_end = 8 + 25
    raw = zlib.decompress(png[ihdr_end + 8: png.index(b"IEND") - 4 - 4])
    short = zlib.compress(raw[: len(raw) // 2])
    idat = struct.pack(">I", len(short)) + b"IDAT" + short + struct.pack(">I", zlib.crc32(b"IDAT" + short) & 0xFFFFFFFF)
    png_short = png[:ihdr_end] + idat + png[png.index(b"IEND") - 4:]
    jfif = _encode(photo.resize((200, 150)).rotate(180), "JPEG")
    body = b"JFIF\x00\x01"
    jfif_short = jfif[:2] + b"\xff\xe0" + struct.pack(">H", len(body) + 2) + body + jfif[20:]
    return {"junk_in_scan.jpg": junk, "progressive_cut.jpg": prog_cut, "png_short_stream.png": png_short,
            "jfif_short.jpg": jfif_short}


def make_images(root: Path, n: int) -> int:
    """``n`` distinct photos (crops of skimage.data photos, JPEG and PNG) in two class folders, plus the damaged."""
    import numpy as np
    import skimage.data
    from PIL import Image

    photos = [Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in PHOTOS]
    rng = np.random.default_rng(0)
    for k in range(n):
        img = photos[k % len(photos)]
        w, h = img.size
        cw, ch = int(w * rng.uniform(0.35, 0.6)), int(h * rng.uniform(0.35, 0.6))
        x, y = int(rng.integers(0, w - cw)), int(rng.integers(0, h - ch))
        crop = img.crop((x, y, x + cw, y + ch)).resize((int(rng.integers(300, 640)), int(rng.integers(240, 480))))
        folder = root / ("a" if k % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        if k % 5 == 0:
            crop.save(folder / f"p{k:04d}.png")
        else:
            crop.save(folder / f"p{k:04d}.jpg", quality=int(rng.integers(75, 95)))
    for name, data in damaged(photos[0]).items():
        (root / "a" / name).write_bytes(data)
    return n + 4


def dsbuild(manifest: Path, *args: str, pythonpath: Path = REPO) -> tuple[float, str, str]:
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "COLUMNS": "400"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dsbuild", "-m", str(manifest), *args], capture_output=True,
                          text=True, env=env, cwd=manifest.parent)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"dsbuild {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return seconds, proc.stdout, proc.stderr


def stages(stderr: str) -> str:
    """The last progress line of each stage (``NAME: stage n/n … 1.2 s``), joined."""
    import re

    last: dict[str, str] = {}
    for line in stderr.splitlines():
        words = line.split()
        at = next((i for i, w in enumerate(words) if re.fullmatch(r"[\d,]+/[\d,]+", w)), None)
        if at:
            last[" ".join(words[:at])] = " ".join(words)
    return "; ".join(last.values())


def as_older(catalog: Path, dataset: str) -> None:
    """The recorded verify section as an older dsbuild wrote it: the settings' digest, no revision."""
    import duckdb

    con = duckdb.connect(str(catalog))
    try:
        key = f"settings-sections:{dataset}"
        sections = json.loads(con.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()[0])
        verify = json.loads(sections["verify"])
        sections["verify"] = json.dumps(verify["settings"] if isinstance(verify, dict) else verify)
        con.execute("UPDATE meta SET value = ? WHERE key = ?", [json.dumps(sections, sort_keys=True), key])
        con.execute("CHECKPOINT")
    finally:
        con.close()


def outcomes(catalog: Path, names: list[str]) -> dict[str, str]:
    import duckdb

    con = duckdb.connect(str(catalog), read_only=True)
    try:
        rows = con.execute("SELECT origin, status, reason FROM items").fetchall()
    finally:
        con.close()
    return {Path(o).name: (r or s) for o, s, r in rows if Path(o).name in names}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=300, help="photos (default 300)")
    ap.add_argument("--quick", action="store_true", help="60 photos")
    ap.add_argument("--old", metavar="REV", help="make the first build with the dsbuild package of commit REV")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--keep", metavar="DIR", help="work in DIR (kept) instead of a temporary folder")
    args = ap.parse_args()
    n = 60 if args.quick else args.n
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="recheck-"))
    work.mkdir(parents=True, exist_ok=True)
    total = make_images(work / "images", n)
    manifest = work / "datasets.toml"
    manifest.write_text('catalog = "cat/dsbuild.duckdb"\n[datasets.photos]\n[datasets.photos.classes]\n'
                        f'a = {{ folders = "{work / "images" / "a"}" }}\nb = {{ folders = "{work / "images" / "b"}" }}\n')
    workers = ("--workers", str(args.workers)) if args.workers else ()
    names = ["junk_in_scan.jpg", "progressive_cut.jpg", "png_short_stream.png", "jfif_short.jpg"]
    if args.old:
        with tempfile.TemporaryDirectory() as tmp:
            archive = subprocess.run(["git", "-C", str(REPO), "archive", args.old, "dsbuild"], check=True,
                                     capture_output=True)
            subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
            first, _, _ = dsbuild(manifest, "build", *workers, pythonpath=Path(tmp))
        print(f"first build by {args.old}: {total} files, {first:.1f} s")
    else:
        first, _, _ = dsbuild(manifest, "build", *workers)
        as_older(work / "cat" / "dsbuild.duckdb", "photos")
        print(f"first build by this checkout (then recorded as an older dsbuild's): {total} files, {first:.1f} s")
    before = outcomes(work / "cat" / "dsbuild.duckdb", names)
    recheck, out, err = dsbuild(manifest, "build", *workers)
    after = outcomes(work / "cat" / "dsbuild.duckdb", names)
    idle, out2, err2 = dsbuild(manifest, "build", *workers)
    line = " ".join(out.split())
    line = line[line.find("dsbuild's image checks"):] if "dsbuild's image checks" in line else "(no re-check line!)"
    print(f"re-checking build: {recheck:.2f} s   build with nothing to do: {idle:.2f} s   difference: "
          f"{recheck - idle:.2f} s = {1000 * (recheck - idle) / total:.1f} ms per catalogued image")
    print(f"stages of the re-checking build: {stages(err)}")
    print(f"stages of the build with nothing to do: {stages(err2)}")
    print(f"line: {line[:400]}")
    print("damaged files:", ", ".join(f"{k}: {before.get(k)} → {after.get(k)}" for k in names))
    print("then:", "up to date" if "up to date" in out2 else "NOT up to date")


if __name__ == "__main__":
    main()
