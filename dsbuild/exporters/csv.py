"""The ``csv`` exporter: ``<dataset>.csv`` with image_id, path (the stored file), label, split, origin, sha256."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write(df: Any, folder: Path, dataset: str) -> None:
    """Write the index of ``df``'s images into ``folder / f"{dataset}.csv"``."""
    import pandas as pd

    rows = [{"image_id": rec.image_id, "path": str(Path(rec.path)), "label": rec.label, "split": rec.split,
             "origin": rec.origin, "sha256": rec.sha256} for rec in df.itertuples(index=False)]
    pd.DataFrame(rows).to_csv(folder / f"{dataset}.csv", index=False)
