"""exporters/: a registry of exporters that write a dataset's accepted images somewhere else.

``imagefolder`` (:mod:`.imagefolder`): ``DIR/<split>/<label>/<image_id>.<ext>``
(hard links into the store when on the same file system, else copies) plus
``DIR/labels.csv``. ``csv`` (:mod:`.csv`): ``DIR/<dataset>.csv`` with image_id,
path, label, split, origin, sha256. A new format is a module with
``write(df, folder, dataset)`` added to :data:`EXPORTERS`.

Only ``ok`` images are exported (rejected, failed and duplicate ones are not),
with their current (reviewed) labels, under their family's extension. Each
store file is sniffed first (:func:`dsbuild.formats.sniff`, the table
verification uses): a file whose content is no longer the format the catalog
verified (a store edited by hand, or by something hostile) is not exported and
is listed in ``ExportSummary.skipped``. The tree is written next to ``DIR`` and
swapped in at the end, so an interrupted export never leaves a half tree; a
non-empty ``DIR`` that is not a previous dsbuild export is never overwritten.
"""

from __future__ import annotations

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
class ExportSummary:
    dataset: str
    out: Path
    format: str
    images: int
    per_split: dict[str, int]
    skipped: tuple[tuple[str, str], ...] = ()  # (image_id, why) of store files that are not their verified image


def export_dataset(catalog_path: Path, dataset: str, out: Path, *, fmt: str = "imagefolder") -> ExportSummary:
    """Write ``dataset``'s ok images to ``out`` in format ``fmt`` (see module doc)."""
    if fmt not in FORMATS:
        raise DsbuildError(f"unknown export format '{fmt}' — use one of: {', '.join(FORMATS)}")
    out = Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise DsbuildError(f"{out} exists and is not a folder — choose another --to")
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise DsbuildError(f"{out} is not empty and is not a dsbuild export — choose an empty or new folder")

    with Catalog.open_readonly(catalog_path) as cat:
        df = cat.images(dataset, statuses=("ok",))
    if df.empty:
        raise DsbuildError(f"dataset '{dataset}' has no accepted images in the catalog — run `dsbuild build {dataset}` first")

    tmp = out.parent / f".{out.name}.tmp-{secrets.token_hex(4)}"
    tmp.mkdir(parents=True)
    try:
        skipped = [(rec.image_id, why) for rec in df.itertuples(index=False)
                   if (why := _not_verified_content(Path(rec.path), rec.format)) is not None]
        if skipped:
            df = df[~df["image_id"].isin({i for i, _ in skipped})]
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
    per_split = {k: int(v) for k, v in df["split"].value_counts().items()}
    return ExportSummary(dataset=dataset, out=out, format=fmt, images=len(df), per_split=per_split,
                         skipped=tuple(skipped))


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
