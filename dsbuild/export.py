"""Export a dataset's accepted images: an ImageFolder tree or a CSV index.

``imagefolder``: ``DIR/<split>/<label>/<image_id>.<ext>`` (hard links into the
store when on the same file system, else copies) plus ``DIR/labels.csv``.
``csv``: ``DIR/<dataset>.csv`` with image_id, path, label, split, origin, sha256.

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

import os
import shutil
import secrets
from dataclasses import dataclass
from pathlib import Path

from dsbuild.catalog import Catalog
from dsbuild.errors import DsbuildError

MARKER = ".dsbuild-export"
FORMATS = ("imagefolder", "csv")


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
        rows = []
        skipped: list[tuple[str, str]] = []
        for rec in df.itertuples(index=False):
            src = Path(rec.path)
            why = _not_verified_content(src, rec.format)
            if why is not None:
                skipped.append((rec.image_id, why))
                continue
            if fmt == "imagefolder":
                dest = tmp / rec.split / rec.label / f"{rec.image_id}{src.suffix}"
                dest.parent.mkdir(parents=True, exist_ok=True)
                _link_or_copy(src, dest)
                rel = dest.relative_to(tmp).as_posix()
            else:
                rel = str(src)
            rows.append({"image_id": rec.image_id, "path": rel, "label": rec.label, "split": rec.split,
                         "origin": rec.origin, "sha256": rec.sha256})
        import pandas as pd

        index = pd.DataFrame(rows)
        index.to_csv(tmp / ("labels.csv" if fmt == "imagefolder" else f"{dataset}.csv"), index=False)
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
    kept = df[~df["image_id"].isin({i for i, _ in skipped})]
    per_split = {k: int(v) for k, v in kept["split"].value_counts().items()}
    return ExportSummary(dataset=dataset, out=out, format=fmt, images=len(kept), per_split=per_split,
                         skipped=tuple(skipped))


def _not_verified_content(path: Path, fmt: str | None) -> str | None:
    """Why the store file at ``path`` is not the ``fmt`` image the catalog verified, or None when it is."""
    from dsbuild.formats import family, sniff

    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError as exc:
        return f"store file {path} cannot be read ({exc.strerror or exc})"
    found = sniff(head)
    if found is None or family(found) != family(fmt):
        return f"store file {path} holds {found or 'unrecognised content'}, not the {fmt} image verified"
    return None


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)
