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
is listed in ``ExportSummary.skipped``. An output inside a source folder of the
manifest (or one that holds a source folder) is refused: the next build would
import the export.

An export never deletes a file it did not write. A new ``DIR`` (or file) is
written beside its place and renamed in. ``DIR/.dsbuild-export``
(:mod:`.marker`) records each export in the folder — dataset, format, the
top-level entries it owns and every file it wrote — so one folder can hold
several (``pets.csv`` beside ``more.csv``, an ImageFolder tree beside its CSV)
and files of the user's (fastai's ``models/`` and ``export.pkl``). Exporting
the same dataset in the same format again writes the new tree in a work folder
inside ``DIR`` and swaps only the previous export's entries for the new ones
(undone if a step fails, so an interrupted export leaves the previous one as it
was); the summary lists the entries it left untouched. It is refused, with
nothing changed, when a file inside those entries is not one it wrote, when a
name it needs belongs to another export or to the user, or when the marker
cannot be read. A non-empty ``DIR`` without a marker (a folder of the user's)
is never written to by a folder export; a ``csv`` export puts the one file
``DIR/<dataset>.csv`` beside what it holds (no marker). An existing file that
is not a previous dsbuild export is never overwritten.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsbuild.catalog import Catalog
from dsbuild.errors import DsbuildError
from dsbuild.exporters import csv, imagefolder, marker

MARKER = marker.MARKER
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
    replaced: tuple[str, ...] = ()  # the entries of the previous export of this dataset and format that were replaced
    kept: tuple[str, ...] = ()  # the other entries of the folder, left untouched (folders end in /)
    legacy: bool = False  # the previous export's marker was an earlier dsbuild's (the dataset name only)
    swept: tuple[str, ...] = ()  # work entries a killed export had left, deleted
    left_out: tuple[tuple[str, int], ...] = ()  # (what, n): the dataset's images not exported, by why (see below)

    def notes(self) -> list[str]:
        """What the export left out of the dataset (trial 11: duplicates and a removed image went unmentioned), then what
        it did to an existing folder, one line each (none for a new folder or a file)."""
        lines = []
        if self.left_out:
            lines.append("not exported: " + ", ".join(f"{n} {what}" for what, n in self.left_out)
                         + f" (`dsbuild status {self.dataset}` counts them by reason)")
        if self.swept:
            lines.append(f"deleted {len(self.swept)} work entr{'y' if len(self.swept) == 1 else 'ies'} left by an export "
                         f"that was killed before it finished: {_names(self.swept)}")
        if self.legacy:
            lines.append(f"{self.out / MARKER} was written by an earlier dsbuild and names only the dataset: replaced "
                         f"only what that export always writes ({_names(self.replaced)}); it now lists every file "
                         "this export wrote")
        if self.kept:
            shown = _names(self.kept[:8]) + (f" and {len(self.kept) - 8} more" if len(self.kept) > 8 else "")
            lines.append(f"left {len(self.kept)} other entr{'y' if len(self.kept) == 1 else 'ies'} in {self.out} "
                         f"untouched: {shown}")
        return lines


@dataclass(frozen=True)
class Swap:
    """What :func:`_write_folder` did to an existing folder (see :class:`ExportSummary`)."""

    replaced: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()
    legacy: bool = False
    swept: tuple[str, ...] = ()


def _names(entries) -> str:
    return ", ".join(entries) if entries else "nothing"


def export_dataset(catalog_path: Path, dataset: str, out: Path, *, fmt: str = "imagefolder",
                   manifest=None) -> ExportSummary:
    """Write ``dataset``'s ok images to ``out`` in format ``fmt`` (see module doc).

    ``manifest`` (a :class:`~dsbuild.manifest.Manifest`): an ``out`` inside (or equal to, or holding) a source
    folder of any of its datasets is refused (DsbuildError): the next build would import the export as new images.
    """
    if fmt not in FORMATS:
        raise DsbuildError(f"unknown export format '{fmt}' — use one of: {', '.join(FORMATS)}")
    out = Path(out).resolve()
    file_format = _file_format(out, fmt)
    into_folder = file_format is None and fmt in FILE_FORMATS and _unmarked_folder(out)
    if into_folder:
        # --format csv --to DIR where DIR holds files of its own (a project folder, `.`): the index is the one
        # file DIR/DATASET.csv beside them, written as `--to DIR/DATASET.csv` would be (help: "beside whatever DIR
        # holds"); the folder gets no marker and nothing else in it is touched.
        file_format = FILE_FORMATS[fmt]
        out = out / f"{dataset}{file_format.suffix}"
    if manifest is not None:
        _refuse_source_folders(out, manifest, one_file=file_format is not None)
    if file_format is not None:
        if out.exists() and not out.is_file():
            raise DsbuildError(f"{out} exists and is not a file — choose another --to")
        if out.exists() and not file_format.is_export(out) and into_folder:
            raise DsbuildError(f"{out} exists and is not a dsbuild {fmt} export — move it out of {out.parent}, or "
                               f"choose another --to (nothing was changed)")
        if out.exists() and not file_format.is_export(out):
            raise DsbuildError(f"{out} exists and is not a dsbuild {fmt} export — choose a new file, or a folder "
                               f"(--to DIR writes DIR/{dataset}{file_format.suffix})")
    else:
        if out.exists() and not out.is_dir():
            raise DsbuildError(f"{out} exists and is not a folder — choose another --to")
        if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
            raise DsbuildError(f"{out} is not empty and is not a dsbuild export — choose an empty or new folder")
        if out.exists():
            records = marker.read(out)
            _refuse_foreign_files(out, [r for r in records if r.key == (dataset, fmt)])

    with Catalog.open_readonly(catalog_path) as cat:
        every = cat.images(dataset)
    df = every[every["status"] == "ok"].reset_index(drop=True)
    if df.empty:
        raise DsbuildError(f"dataset '{dataset}' has no accepted images in the catalog — run `dsbuild build {dataset}` first")
    skipped = [(rec.image_id, why) for rec in df.itertuples(index=False)
               if (why := _not_verified_content(Path(rec.path), rec.format)) is not None]
    if skipped:
        df = df[~df["image_id"].isin({i for i, _ in skipped})]
    swap = Swap()
    if file_format is not None:
        _write_file(df, out, file_format)
    else:
        swap = _write_folder(df, out, dataset, fmt)
    per_split = {k: int(v) for k, v in df["split"].value_counts().items()}
    return ExportSummary(dataset=dataset, out=out, format=fmt, images=len(df), per_split=per_split,
                         skipped=tuple(skipped), replaced=swap.replaced, kept=swap.kept, legacy=swap.legacy,
                         swept=swap.swept, left_out=left_out(every))


def left_out(images) -> tuple[tuple[str, int], ...]:
    """``(what, n)`` of the images of a dataset (rows of the ``images`` view) an export leaves out: duplicates (a copy
    of an exported image), removed in review, and rejected or failed ones — not the rows a build set aside because
    their source left the manifest (an image relabelled in the source is a new row; its old one is no image lost)."""
    from dsbuild.sources import SOURCE_REMOVED

    status, reason = images["status"].astype(str), images["reason"]
    dup = int((status == "duplicate").sum())
    removed = int(((status == "rejected") & (reason == "removed in review")).sum())
    bad = int((status.isin(["rejected", "failed"]) & ~reason.isin(["removed in review", SOURCE_REMOVED])).sum())
    return tuple((what, n) for what, n in (
        (f"duplicate{'s' if dup != 1 else ''} (copies of exported images)", dup), ("removed in review", removed),
        ("rejected or failed", bad)) if n)


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


def _refuse_source_folders(out: Path, manifest, *, one_file: bool = False) -> None:
    """Raise DsbuildError when the resolved ``out`` is, lies inside, or holds a source folder of ``manifest``.

    ``one_file``: ``out`` is a file (a CSV index): only a file inside a source folder is refused — a folder that
    holds source folders (the project folder) can hold an index, which no build reads as an image.
    """
    for folder, what in source_folders(manifest).items():
        if out == folder or folder in out.parents:
            where = "is" if out == folder else f"is inside {folder},"
        elif out in folder.parents and not one_file:
            where = f"holds {folder},"
        else:
            continue
        raise DsbuildError(f"--to {out} {where} a source folder of {what}: the next build would read the export "
                           "back as new images — choose a --to outside the manifest's source folders")


def _unmarked_folder(out: Path) -> bool:
    """True when ``out`` is an existing, non-empty folder that holds no export marker (the user's own folder)."""
    return out.is_dir() and not (out / MARKER).exists() and any(out.iterdir())


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
    tmp = out.parent / marker.work_name("tmp", prefix=f".{out.name}.")
    try:
        file_format.write(df, tmp)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_folder(df: Any, out: Path, dataset: str, fmt: str) -> Swap:
    """Write :data:`EXPORTERS` ``[fmt]`` into ``out``, replacing only the previous export of ``dataset`` in ``fmt``.

    A new ``out``: the tree is filled beside it and renamed into place. An existing one: the tree is filled in a
    work folder inside ``out``; a name it needs that another export or the user owns is refused (nothing
    changed); the previous export's entries are moved aside, the new ones moved in (undone if anything fails)
    and the marker rewritten; the moved-aside entries are deleted only when every file in them is one the
    previous export wrote. Everything else in ``out`` is left as it was.
    """
    swept = _sweep_stale_work(out)
    if not out.exists():
        tmp = out.parent / marker.work_name("tmp", prefix=f".{out.name}.")
        tmp.mkdir(parents=True)
        try:
            _fill(df, tmp, dataset, fmt, f"nothing was written to {out}")
            marker.write(tmp, [marker.scan(tmp, dataset, fmt)])
            tmp.rename(out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return Swap(swept=swept)
    records = marker.read(out)
    previous = next((r for r in records if r.key == (dataset, fmt)), None)
    others = [r for r in records if r.key != (dataset, fmt)]
    _refuse_foreign_files(out, [previous] if previous else [])
    work = out / marker.work_name("new")
    work.mkdir()
    try:
        _fill(df, work, dataset, fmt, f"{out} is unchanged")
        new = marker.scan(work, dataset, fmt)
        _refuse_taken_names(out, new, previous, others, dataset, fmt)
        old_entries = [e for e in previous.entries if _present(out / e)] if previous else []
        marker.write(out, [*others, previous.merged(new) if previous else new])  # a crash from here on: all ours
        trash = out / marker.work_name("old")
        trash.mkdir()
        moved: list[tuple[Path, Path]] = []
        try:
            for name in old_entries:
                (out / name).rename(trash / name)
                moved.append((out / name, trash / name))
            for name in new.entries:
                (work / name).rename(out / name)
                moved.append((work / name, out / name))
            marker.write(out, [*others, new])
        except BaseException:
            for src, dest in reversed(moved):
                dest.rename(src)
            marker.write(out, records)
            trash.rmdir()
            raise
    finally:
        shutil.rmtree(work, ignore_errors=True)  # only what this export wrote (or nothing, after the swap)
    if previous is None or not marker.foreign_files(trash, previous):
        shutil.rmtree(trash, ignore_errors=True)
    kept = sorted(p.name + ("/" if p.is_dir() and not p.is_symlink() else "") for p in out.iterdir()
                  if p.name != MARKER and p.name not in new.entries and not p.name.startswith(marker.WORK_PREFIX))
    return Swap(replaced=tuple(old_entries), kept=tuple(kept), legacy=bool(previous and previous.legacy), swept=swept)


def _sweep_stale_work(out: Path) -> tuple[str, ...]:
    """Delete the work entries a killed export left (:func:`marker.is_stale`): ``out/.dsbuild-export-new-*`` (a
    whole new tree), ``-old-*`` (the previous export's entries, moved aside before the kill), ``-marker-*``, and
    ``.<out>.tmp-*`` beside a new ``out``. Only dsbuild names these; one a running export uses is left. Returns the
    names deleted."""
    places = [(out.parent, f".{out.name}.", f".{out.name}.tmp-")]
    if out.is_dir():
        places.append((out, marker.WORK_PREFIX, marker.WORK_PREFIX))
    gone = []
    for folder, prefix, start in places:
        if not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir()):
            if not entry.name.startswith(start) or not marker.is_stale(entry.name, prefix=prefix):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            gone.append(entry.name)
    return tuple(gone)


def _fill(df: Any, folder: Path, dataset: str, fmt: str, unchanged: str) -> None:
    """Run the exporter into the empty work ``folder``; a failed write is a DsbuildError saying ``unchanged``."""
    try:
        EXPORTERS[fmt](df, folder, dataset)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise DsbuildError(f"the {fmt} export of '{dataset}' failed: {exc.strerror or exc}{where} — {unchanged}; "
                           "free some space (or fix what the error names) and export again") from exc


def _present(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _refuse_foreign_files(out: Path, records) -> None:
    """Raise DsbuildError when an entry of an export about to be replaced holds a file that export did not write."""
    for rec in records:
        foreign = marker.foreign_files(out, rec)
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise DsbuildError(f"{out} holds {len(foreign)} file{'s' if len(foreign) > 1 else ''} that the previous "
                               f"{rec.format} export of '{rec.dataset}' did not write, inside what it wrote: {shown}"
                               f" — move {'them' if len(foreign) > 1 else 'it'} out of {out} (or export to a new "
                               "folder); nothing was changed")


def _refuse_taken_names(out: Path, new, previous, others, dataset: str, fmt: str) -> None:
    """Raise DsbuildError when an entry the new export writes belongs to another export or to the user."""
    for name in new.entries:
        if previous is not None and name in previous.entries:
            continue
        owner = next((r for r in others if name in r.entries), None)
        if owner is not None:
            raise DsbuildError(f"{out / name} belongs to the {owner.format} export of '{owner.dataset}' in {out}, "
                               f"which the {fmt} export of '{dataset}' would overwrite — choose another --to "
                               "(nothing was changed)")
        if _present(out / name):
            raise DsbuildError(f"{out / name} was not written by dsbuild and the {fmt} export of '{dataset}' would "
                               f"overwrite it — move it out of {out} or choose another --to (nothing was changed)")


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
