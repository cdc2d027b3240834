"""export/: a registry of exporters that write a dataset's accepted images somewhere else.

``imagefolder`` (:mod:`.imagefolder`): ``DIR/<split>/<label>/<image_id>.<ext>``
(hard links into the store when on the same file system, else copies) plus
``DIR/labels.csv``. ``csv`` (:mod:`.csv`): ``DIR/<dataset>.csv`` with image_id,
path, label, split, origin, sha256. A new format is a module with
``write(df, folder, dataset)`` added to :data:`EXPORTERS`.

Only ``ok`` images are exported (rejected, failed and duplicate ones are not),
with their current (reviewed) labels. The tree is written next to ``DIR`` and
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
from dsbuild.export import csv, imagefolder

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
    return ExportSummary(dataset=dataset, out=out, format=fmt, images=len(df), per_split=per_split)
