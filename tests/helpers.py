"""Helpers shared by the tests (not fixtures): real photos and the CLI run in-process."""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image

from dsbuild.cli import main


def skimage_photo(name: str) -> Image.Image:
    """A real photo shipped with scikit-image (``skimage.data.<name>()``), as a PIL image in its own mode."""
    import skimage.data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Image.fromarray(getattr(skimage.data, name)())


def photo_quadrant(name: str, k: int, size: int = 128) -> Image.Image:
    """Quarter ``k`` (0–3, row-major) of a :func:`skimage_photo`, RGB, resized to ``size`` px square: same scene and
    colours as its siblings, but not a near duplicate of them."""
    img = skimage_photo(name).convert("RGB")
    w, h = img.size
    box = ((k % 2) * w // 2, (k // 2) * h // 2, (k % 2 + 1) * w // 2, (k // 2 + 1) * h // 2)
    return img.crop(box).resize((size, size), Image.Resampling.LANCZOS)


def run_cli(capsys, manifest: Path, *args: str) -> tuple[int, str, str]:
    """``dsbuild -m MANIFEST ARGS`` in-process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main(["-m", str(manifest), *args])
    out, err = capsys.readouterr()
    return code, out, err


def committed_items(catalog: Path, snap: Path) -> int:
    """Item rows a running build has committed, read from a copy of its catalog (the file and its WAL).

    The build holds the catalog (DuckDB lets no other process open it), and a copy never touches the
    build's file or lock: what the copy holds was committed. 0 before the first commit, or when the copy
    caught a checkpoint half written (the caller asks again).
    """
    import shutil

    import duckdb

    snap.mkdir(exist_ok=True)
    copy = snap / "catalog.duckdb"
    for suffix in ("", ".wal"):
        Path(f"{copy}{suffix}").unlink(missing_ok=True)
        try:
            shutil.copyfile(f"{catalog}{suffix}", f"{copy}{suffix}")
        except FileNotFoundError:
            pass
    try:
        con = duckdb.connect(str(copy), read_only=True)
    except duckdb.Error:
        return 0
    try:
        return int(con.execute("SELECT count(*) FROM items").fetchone()[0])
    except duckdb.Error:  # no items table yet
        return 0
    finally:
        con.close()


def kill_after_first_commit(proc, catalog: Path, snap: Path, deadline: float, *, sig: int | None = None) -> int:
    """SIGKILL a running build (``proc``, its own process group) just after it committed item rows; return them.

    ``sig``: another signal to send instead (SIGINT: Ctrl-C at the terminal); the group is then resumed to handle it.

    The build runs in 50 ms slices (its process group stopped in between) until a copy of its catalog shows
    committed rows (:func:`committed_items`): on any machine the kill lands after a commit and well before the
    end. The store is no measure of commits: workers store files before the build sees their records.
    Fails (AssertionError) when the build ends first or ``deadline`` (``time.monotonic()``) passes.
    """
    import os
    import signal
    import time

    committed = 0
    while committed == 0:
        assert proc.poll() is None and time.monotonic() < deadline, \
            f"the build ended before it committed a row: {proc.stderr.read() if proc.poll() is not None else ''}"
        os.killpg(proc.pid, signal.SIGCONT)
        time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGSTOP)
        committed = committed_items(catalog, snap)
    os.killpg(proc.pid, signal.SIGKILL if sig is None else sig)
    if sig is not None and sig != signal.SIGKILL:
        os.killpg(proc.pid, signal.SIGCONT)
    return committed


def sql(manifest: Path, query: str, params: list | None = None) -> list[tuple]:
    """Rows of a read-only query on the catalog beside ``manifest`` (``catalog/dsbuild.duckdb``)."""
    import duckdb

    con = duckdb.connect(str(manifest.parent / "catalog" / "dsbuild.duckdb"), read_only=True)
    try:
        return con.execute(query, params or []).fetchall()
    finally:
        con.close()
