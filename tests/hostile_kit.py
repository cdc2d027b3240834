"""Shared parts of the hostile-input tests (``tests/test_hostile_*.py``): real photos, real builds, real catalogs.

Everything here goes through dsbuild's public surface only: the command line
(:func:`dsbuild.cli.main`, run in-process, or ``python -m dsbuild`` in a
subprocess) and the DuckDB catalog it writes (read with ``duckdb`` directly,
read-only). No private name of the package is imported, so the tests stay valid
whatever the modules are called.

Images are real: crops of ``skimage.data`` photos encoded by Pillow, then damaged
byte by byte where a test needs a damaged file.
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import textwrap
import warnings
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "clock", "immunohistochemistry")
ALLOWED_EXTENSIONS = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}
ALLOWED_FORMATS = {"JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"}


# --------------------------------------------------------------------------- real images


@lru_cache(maxsize=None)
def _photo(name: str) -> Image.Image:
    import skimage.data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


def photo(name: str = "astronaut", size: tuple[int, int] = (160, 120)) -> Image.Image:
    """A real photo (``skimage.data.<name>``) resized to ``size`` (width, height), RGB."""
    return _photo(name).resize(size, Image.Resampling.LANCZOS)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    """``img`` encoded by Pillow as ``fmt`` (keyword arguments go to ``Image.save``)."""
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes, *, crc: int | None = None) -> bytes:
    """One PNG chunk; ``crc`` overrides the (correct) checksum."""
    value = zlib.crc32(kind + data) & 0xFFFFFFFF if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", value)


def png_insert(png: bytes, *chunks: bytes) -> bytes:
    """``png`` with ``chunks`` inserted right after IHDR (ancillary chunks may go there)."""
    at = 8 + 8 + 13 + 4  # signature + IHDR (length, type, 13 bytes, crc)
    return png[:at] + b"".join(chunks) + png[at:]


def jpeg_scan_start(data: bytes) -> int:
    """Offset of the first byte of entropy-coded data after the first SOS marker."""
    sos = data.index(b"\xff\xda")
    return sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")


def cut_scan(data: bytes, fraction: float) -> bytes:
    """A JPEG whose (first) scan stops after ``fraction`` of its data, followed by an EOI marker: looks complete."""
    start = jpeg_scan_start(data)
    scan = len(data) - 2 - start
    return data[: start + int(scan * fraction)] + b"\xff\xd9"


# --------------------------------------------------------------------------- a project: manifest, build, catalog


@dataclass
class Project:
    """A scratch project folder: class folders of files, a manifest, the CLI and the catalog."""

    root: Path
    dataset: str = "ds"
    classes: dict[str, dict] = field(default_factory=dict)
    tables: dict[str, dict] = field(default_factory=dict)
    top: str = ""

    @property
    def catalog(self) -> Path:
        return self.root / "cat" / "dsbuild.duckdb"

    @property
    def manifest(self) -> Path:
        return self.root / "datasets.toml"

    def add(self, label: str, name: str, data: bytes) -> Path:
        """Write ``data`` as ``<label>/<name>`` and make ``label`` a class reading that folder."""
        folder = self.root / "images" / label
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        path.write_bytes(data)
        self.classes.setdefault(label, {})["folders"] = f"images/{label}"
        return path

    def set(self, table: str, **values) -> None:
        """Set keys of ``[datasets.<dataset>.<table>]`` (``table=""``: the dataset's own table)."""
        self.tables.setdefault(table, {}).update(values)

    def write_manifest(self) -> Path:
        def toml(value) -> str:
            if isinstance(value, bool):
                return "true" if value else "false"
            if isinstance(value, str):
                return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
            if isinstance(value, (list, tuple)):
                return "[" + ", ".join(toml(v) for v in value) + "]"
            return repr(value)

        lines = [self.top, 'catalog = "cat/dsbuild.duckdb"', f"[datasets.{self.dataset}]"]
        lines += [f"{k} = {toml(v)}" for k, v in self.tables.get("", {}).items()]
        for table, values in self.tables.items():
            if table:
                lines.append(f"[datasets.{self.dataset}.{table}]")
                lines += [f"{k} = {toml(v)}" for k, v in values.items()]
        lines.append(f"[datasets.{self.dataset}.classes]")
        for label, spec in self.classes.items():
            inner = ", ".join(f"{k} = {toml(v)}" for k, v in spec.items())
            lines.append(f"{label} = {{ {inner} }}")
        self.root.mkdir(parents=True, exist_ok=True)
        self.manifest.write_text(textwrap.dedent("\n".join(lines)) + "\n")
        return self.manifest

    def cli(self, *args: str) -> tuple[int, str, str]:
        """``dsbuild -m <manifest> ARGS`` in-process; returns (exit code, stdout, stderr)."""
        from contextlib import redirect_stderr, redirect_stdout

        from dsbuild.cli import main

        if not self.manifest.exists():
            self.write_manifest()
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = main(["-m", str(self.manifest), *args])
        return code, out.getvalue(), err.getvalue()

    def run(self, *args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
        """``python -m dsbuild -m <manifest> ARGS`` in a subprocess (stderr as the user sees it)."""
        if not self.manifest.exists():
            self.write_manifest()
        full_env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", **(env or {})}
        return subprocess.run([sys.executable, "-m", "dsbuild", "-m", str(self.manifest), *args], cwd=self.root,
                              capture_output=True, text=True, timeout=timeout, env=full_env)

    def build(self, *args: str) -> tuple[int, str, str]:
        self.write_manifest()
        code, out, err = self.cli("build", *args)
        assert "Traceback" not in out + err, out + err
        return code, out, err

    def rows(self, sql: str = "SELECT * FROM images", *params) -> list[dict]:
        """Rows of a read-only query on the catalog, as dicts."""
        import duckdb

        con = duckdb.connect(str(self.catalog), read_only=True)
        try:
            cur = con.execute(sql, list(params))
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]
        finally:
            con.close()

    def by_name(self) -> dict[str, dict]:
        """``images`` rows of the dataset keyed by the source file's name (``origin``'s last part)."""
        rows = self.rows("SELECT * FROM images WHERE dataset = ?", self.dataset)
        return {Path(r["origin"]).name if "/" in r["origin"] or os.sep in r["origin"] else r["origin"]: r for r in rows}


def gif_descriptors(data: bytes) -> list[int]:
    """Offsets of the image descriptors (0x2C blocks) of a GIF, in frame order (walks the block structure)."""
    pos = 13
    flags = data[10]
    if flags & 0x80:
        pos += 3 * (2 ** ((flags & 7) + 1))
    found = []
    while pos < len(data):
        kind = data[pos]
        if kind == 0x3B:
            break
        if kind == 0x21:
            pos += 2
        elif kind == 0x2C:
            found.append(pos)
            local = data[pos + 9]
            pos += 10 + (3 * (2 ** ((local & 7) + 1)) if local & 0x80 else 0) + 1
        else:
            raise ValueError(f"not a GIF block at {pos}: {kind:#x}")
        while data[pos]:
            pos += data[pos] + 1
        pos += 1
    return found


def gif_set_extents(data: bytes, frame: int, left: int, top: int, width: int, height: int) -> bytes:
    """``data`` (a GIF) with frame ``frame``'s image descriptor declaring these extents (its pixel data unchanged)."""
    at = gif_descriptors(data)[frame]
    out = bytearray(data)
    out[at + 1 : at + 9] = struct.pack("<HHHH", left, top, width, height)
    return bytes(out)
