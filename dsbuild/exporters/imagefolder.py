"""The ``imagefolder`` exporter: ``<split>/<label>/<image_id>.<ext>`` (hard links into the store, else copies) + ``labels.csv``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any


def write(df: Any, folder: Path, dataset: str) -> None:
    """Write ``df``'s images (``image_id``, ``path``, ``label``, ``split``, ``origin``, ``sha256``) into ``folder``."""
    import pandas as pd

    rows = []
    for rec in df.itertuples(index=False):
        src = Path(rec.path)
        dest = folder / rec.split / rec.label / f"{rec.image_id}{src.suffix}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        link_or_copy(src, dest)
        rows.append({"image_id": rec.image_id, "path": dest.relative_to(folder).as_posix(), "label": rec.label,
                     "split": rec.split, "origin": rec.origin, "sha256": rec.sha256})
    pd.DataFrame(rows).to_csv(folder / "labels.csv", index=False)


def link_or_copy(src: Path, dest: Path) -> None:
    """A hard link when ``src`` and ``dest`` share a file system, else a copy."""
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)
