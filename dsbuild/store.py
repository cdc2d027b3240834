"""Content-addressed image store: one file per sha256, written atomically; and the one atomic file write.

:func:`write_replacing` is how dsbuild writes any file a reader may see half
written: stored images, reports, figures, tables written with ``--out``, the
starter manifest.

Layout: ``<store>/<aa>/<sha256>.<ext>`` where ``aa`` is the first two hex digits
(256 folders keep directories small at a million images). A file appears under
its final name only when complete (temp file in the same folder, fsync, then
``os.replace``), so the catalog never points at a half-written file, and the
same bytes are stored once however many URLs or folders supply them.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from dsbuild.errors import DsbuildError
from dsbuild.formats import extension


def store_path(store_dir: Path, sha256: str, fmt: str | None) -> Path:
    """Where the image with ``sha256`` and format ``fmt`` (a family or a Pillow name: MPO is JPEG) lives in the store.

    The extension is the family's, from the one format table (:func:`dsbuild.formats.extension`).
    """
    return Path(store_dir) / sha256[:2] / f"{sha256}.{extension(fmt)}"


def store_bytes(store_dir: Path, sha256: str, data: bytes, fmt: str | None, *, fsync: bool = True) -> Path:
    """Write ``data`` under its content address unless it is already there; return the path.

    ``fsync=False`` skips the flush to disk (downloads: the same guarantee as a renamed
    download, complete after any crash of dsbuild, not necessarily after a power cut).
    """
    final = store_path(store_dir, sha256, fmt)
    try:
        if os.stat(final).st_size == len(data):
            return final
    except FileNotFoundError:
        pass
    write_replacing(final, data, final.parent / f".tmp-{secrets.token_hex(8)}", fsync=fsync)
    return final


def write_replacing(final: Path, data: bytes, tmp: Path, *, fsync: bool = True) -> None:
    """The one atomic write: ``data`` into a new ``tmp`` beside ``final`` (mode 0666 less the umask, as ``open()``
    gives), then renamed over ``final``.

    A reader sees the old file or the whole new one, never a part. ``tmp`` is removed
    on any failure (its folder is created when missing). ``fsync=False`` skips the
    flush to disk: complete after a crash of this process, not necessarily after a power cut.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(tmp, flags, 0o666)
    except FileNotFoundError:  # the first file in this folder (or a folder removed by hand)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, flags, 0o666)
    try:
        with open(fd, "wb", closefd=True) as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def move_into_store(store_dir: Path, sha256: str, src: Path, fmt: str | None) -> Path:
    """Atomically move a complete, verified temp file ``src`` into the store (same filesystem)."""
    final = store_path(store_dir, sha256, fmt)
    if final.exists():
        src.unlink(missing_ok=True)
        return final
    try:
        os.replace(src, final)
    except FileNotFoundError:  # the first image in this folder (or a store removed by hand)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, final)
    return final


def sweep_temp_files(store_dir: Path) -> int:
    """Remove temp files left by a killed build; return how many were removed."""
    removed = 0
    root = Path(store_dir)
    if not root.exists():
        return 0
    for tmp in root.glob("*/.tmp-*"):
        tmp.unlink(missing_ok=True)
        removed += 1
    # Downloads a killed build left in <store>/.incoming (dsbuild.sources.web): partial bodies (dl-*.part) and
    # complete ones that were never verified and moved into the store. No catalog row points at them.
    for tmp in root.glob(".incoming/dl-*"):
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


def atomic_write(out: Path, data: bytes | str, *, hint: str = "choose another --out") -> Path:
    """Write ``data`` (a str as UTF-8) to the file ``out`` atomically (:func:`write_replacing`, with fsync); return ``out``.

    Raises DsbuildError (ending in ``hint``) when ``out`` is a folder or cannot be written. The file's
    mode is what ``open()`` gives (``0666`` less the umask), never ``mkstemp``'s ``0600``: reports and
    exports are for other people and programs too.
    """
    out = Path(out)
    if out.is_dir():
        raise DsbuildError(f"{out} is a folder — give a file name for the output")
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        write_replacing(out, payload, out.parent / f".{out.name}.{secrets.token_hex(4)}.tmp")
    except OSError as exc:
        raise DsbuildError(f"cannot write {out}: {exc.strerror or exc} — {hint}") from None
    return out
