"""exporters/: a registry of exporters that write a dataset's accepted images somewhere else.

``imagefolder`` (:mod:`.imagefolder`): ``DIR/<split>/<label>/<image_id>.<ext>``
(hard links into the store when on the same file system, else copies) plus
``DIR/labels.csv``. ``csv`` (:mod:`.csv`): ``DIR/<dataset>.csv`` with image_id,
path, label, split, origin, sha256 — or, when the output path ends in ``.csv``
(and is not a folder), that file itself, as users of pandas and img2dataset
expect of ``--to index.csv``. A new format is a module with
``write(df, folder, dataset)`` added to :data:`EXPORTERS`; a format that can be
one file also registers in :data:`FILE_FORMATS`. A folder format refuses an
output path that ends in a file format's suffix (``--to out.csv`` without
``--format csv``) rather than make a folder named ``out.csv``.

Only ``ok`` images are exported (rejected, failed and duplicate ones are not),
with their current (reviewed) labels, under their family's extension. Each
store file is sniffed first (:func:`dsbuild.formats.sniff`, the table
verification uses): a file whose content is no longer the format the catalog
verified (a store edited by hand, or by something hostile) is not exported and
is listed in ``ExportSummary.skipped``. The tree (or file) is written next to
``DIR`` and swapped in at the end, so an interrupted export never leaves a half
tree; a non-empty ``DIR``, or an existing file, that is not a previous dsbuild
export is never overwritten. An output inside a source folder of the manifest (or one
that holds a source folder) is refused: the next build would import the export.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsbuild.catalog import Catalog
from dsbuild.errors import DsbuildError
from dsbuild.exporters import csv, imagefolder

MARKER = ".dsbuild-export"
EXPORTERS: dict[str, Callable[[Any, Path, str], None]] = {"imagefolder": imagefolder.write, "csv": csv.write}
"""Exporters by format name: ``write(df, folder, dataset)`` fills an empty ``folder`` with ``df``'s images."""
FORMATS = tuple(EXPORTERS)


@dataclass(frozen=True)
class FileFormat:
    """A format that can also be written as one file: an output path ending in ``suffix`` is that file."""

    suffix: str
    write: Callable[[Any, Path], None]  # write(df, path)
    is_export: Callable[[Path], bool]  # True for a file a previous export wrote (replaced, not refused)


FILE_FORMATS: dict[str, FileFormat] = {"csv": FileFormat(csv.SUFFIX, csv.write_file, csv.is_export)}
"""Formats by name whose output can be one file (``--to index.csv``)."""


@dataclass(frozen=True)
class ExportSummary:
    dataset: str
    out: Path
    format: str
    images: int
    per_split: dict[str, int]
    skipped: tuple[tuple[str, str], ...] = ()  # (image_id, why) of store files that are not their verified image


def export_dataset(catalog_path: Path, dataset: str, out: Path, *, fmt: str = "imagefolder",
                   manifest=None) -> ExportSummary:
    """Write ``dataset``'s ok images to ``out`` in format ``fmt`` (see module doc).

    ``manifest`` (a :class:`~dsbuild.manifest.Manifest`): an ``out`` inside (or equal to, or holding) a source
    folder of any of its datasets is refused (DsbuildError): the next build would import the export as new images.
    """
    if fmt not in FORMATS:
        raise DsbuildError(f"unknown export format '{fmt}' — use one of: {', '.join(FORMATS)}")
    out = Path(out).resolve()
    if manifest is not None:
        _refuse_source_folders(out, manifest)
    file_format = _file_format(out, fmt)
    if file_format is not None:
        if out.exists() and not out.is_file():
            raise DsbuildError(f"{out} exists and is not a file — choose another --to")
        if out.exists() and not file_format.is_export(out):
            raise DsbuildError(f"{out} exists and is not a dsbuild {fmt} export — choose a new file, or a folder "
                               f"(--to DIR writes DIR/{dataset}{file_format.suffix})")
    else:
        if out.exists() and not out.is_dir():
            raise DsbuildError(f"{out} exists and is not a folder — choose another --to")
        if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
            raise DsbuildError(f"{out} is not empty and is not a dsbuild export — choose an empty or new folder")

    with Catalog.open_readonly(catalog_path) as cat:
        df = cat.images(dataset, statuses=("ok",))
    if df.empty:
        raise DsbuildError(f"dataset '{dataset}' has no accepted images in the catalog — run `dsbuild build {dataset}` first")
    skipped = [(rec.image_id, why) for rec in df.itertuples(index=False)
               if (why := _not_verified_content(Path(rec.path), rec.format)) is not None]
    if skipped:
        df = df[~df["image_id"].isin({i for i, _ in skipped})]
    if file_format is not None:
        _write_file(df, out, file_format)
    else:
        _write_folder(df, out, dataset, fmt)
    per_split = {k: int(v) for k, v in df["split"].value_counts().items()}
    return ExportSummary(dataset=dataset, out=out, format=fmt, images=len(df), per_split=per_split,
                         skipped=tuple(skipped))


def source_folders(manifest) -> dict[Path, str]:
    """Every local source folder of ``manifest``'s datasets (resolved) → what it is (``class 'cat' of dataset 'pets'``)."""
    out: dict[Path, str] = {}
    for name, ds in manifest.datasets.items():
        for cls in ds.classes:
            for folder in cls.folders:
                out.setdefault(Path(folder).resolve(), f"class '{cls.name}' of dataset '{name}'")
        if ds.imagefolder is not None:
            out.setdefault(Path(ds.imagefolder).resolve(), f"the imagefolder of dataset '{name}'")
    return out


def _refuse_source_folders(out: Path, manifest) -> None:
    """Raise DsbuildError when the resolved ``out`` is, lies inside, or holds a source folder of ``manifest``."""
    for folder, what in source_folders(manifest).items():
        if out == folder or folder in out.parents:
            where = "is" if out == folder else f"is inside {folder},"
        elif out in folder.parents:
            where = f"holds {folder},"
        else:
            continue
        raise DsbuildError(f"--to {out} {where} a source folder of {what}: the next build would read the export "
                           "back as new images — choose a --to outside the manifest's source folders")


def _file_format(out: Path, fmt: str) -> FileFormat | None:
    """The one-file format ``out`` is written in (a path ending in its suffix, not a folder), or None for a folder.

    Raises DsbuildError for a folder format asked to write to a path that ends in a file format's suffix
    (``--to out.csv`` without ``--format csv``): a folder named ``out.csv`` is not what anyone means.
    """
    if out.is_dir():
        return None  # an existing folder stays a folder export (a previous export, whatever its name)
    suffix = out.suffix.lower()
    if fmt in FILE_FORMATS and suffix == FILE_FORMATS[fmt].suffix:
        return FILE_FORMATS[fmt]
    if fmt not in FILE_FORMATS:
        for name, ff in FILE_FORMATS.items():
            if suffix == ff.suffix:
                raise DsbuildError(f"--to {out.name} names a {suffix} file, but --format {fmt} writes a folder "
                                   f"({out.name}/<split>/<label>/…) — add --format {name} to write the index to "
                                   f"{out.name}, or give --to a folder path")
    return None


def _write_file(df: Any, out: Path, file_format: FileFormat) -> None:
    """Write ``df`` to the file ``out`` through a temp file beside it and a rename (never a half file)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{secrets.token_hex(4)}"
    try:
        file_format.write(df, tmp)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_folder(df: Any, out: Path, dataset: str, fmt: str) -> None:
    """Fill a new folder beside ``out`` with :data:`EXPORTERS` ``[fmt]`` and swap it in for ``out``."""
    tmp = out.parent / f".{out.name}.tmp-{secrets.token_hex(4)}"
    tmp.mkdir(parents=True)
    try:
        EXPORTERS[fmt](df, tmp, dataset)
        (tmp / MARKER).write_text(f"{dataset}\n")
        if out.exists():
            old = out.parent / f".{out.name}.old-{secrets.token_hex(4)}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _not_verified_content(path: Path, fmt: str | None) -> str | None:
    """Why the store file at ``path`` is not the ``fmt`` image the catalog verified, or None when it is.

    The store file is sniffed with the table verification uses (:func:`dsbuild.formats.sniff`): a file whose
    content is no longer the verified format (a store edited by hand, or by something hostile) is not exported.
    """
    from dsbuild.formats import family, sniff

    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError as exc:
        return f"store file {path} cannot be read ({exc.strerror or exc})"
    found = sniff(head)
    if not found.image or family(found.name) != family(fmt):
        what = found.name if found.image else "unrecognised content" if found.name in ("UNKNOWN", "EMPTY") else found.name.lower()
        return f"store file {path} holds {what}, not the {fmt} image verified"
    return None
