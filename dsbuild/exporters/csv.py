"""The ``csv`` exporter: an index of the images with image_id, path (the stored file), label, split, origin, sha256.

``write`` puts ``<dataset>.csv`` into a folder; ``write_file`` writes the index at a path of its own
(``dsbuild export DATASET --format csv --to index.csv``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SUFFIX = ".csv"
COLUMNS = ("image_id", "path", "label", "split", "origin", "sha256")


def write(df: Any, folder: Path, dataset: str) -> None:
    """Write the index of ``df``'s images into ``folder / f"{dataset}.csv"``."""
    write_file(df, folder / f"{dataset}{SUFFIX}")


def write_file(df: Any, path: Path) -> None:
    """Write the index of ``df``'s images (one row per image, :data:`COLUMNS`) to the file ``path``."""
    import pandas as pd

    rows = [{"image_id": rec.image_id, "path": str(Path(rec.path)), "label": rec.label, "split": rec.split,
             "origin": rec.origin, "sha256": rec.sha256} for rec in df.itertuples(index=False)]
    pd.DataFrame(rows, columns=list(COLUMNS)).to_csv(path, index=False)


def is_export(path: Path) -> bool:
    """True when the file at ``path`` starts with this exporter's header row (a previous export to replace)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(",".join(COLUMNS)) + 2)
    except OSError:
        return False
    return head.splitlines()[:1] == [",".join(COLUMNS).encode()]
