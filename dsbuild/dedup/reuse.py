"""A dataset's grouping is not computed again while nothing it is computed from changed.

The regrouping of a dataset (:func:`dsbuild.pipeline.regroup_dataset`: near links, duplicate groups, conflicts,
quality flags, splits, neighbours, outlier scores) is a deterministic function of

* the dataset's items as :meth:`~dsbuild.catalog.Catalog.dataset_items` reads them — statuses, reasons, hashes,
  splits, blobs' sizes, signals and quality scores, current labels and removes (review decisions applied);
* the near-duplicate signals (phash views, effective sides, the embeddings from the cache, by value);
* the dataset's settings (its manifest table but its model settings and description) and whether the near links
  came from the signals or from the phash alone;
* the code: dsbuild's own sources and the versions of the libraries that compute.

A near-duplicate link between images of 300 overlapping crops costs a second of pixel alignment, so a rebuild with
nothing new paid a minute for the same groups. After a full regrouping, the build reads the catalog back and
runs the grouping once more on what it wrote (the near links again: they depend only on which images are
verified, their hashes and signals, which a regrouping does not change — checked, else nothing is recorded).
When that gives back exactly what was written, the catalog is a fixed point of the regrouping, and
:func:`record` keeps a :func:`fingerprint` of all it reads and of all it writes (the group columns, splits, flags,
neighbours and outlier scores, :meth:`~dsbuild.catalog.Catalog.grouping_outputs`) in meta ``regroup:NAME``, with
the counts the build reports. A later build whose fingerprint equals it (:func:`reusable`) skips the regrouping:
a full one would write what the catalog already holds. Anything else — a new or changed image, a setting, a
review decision, a write by another command (a review's regrouping of the groups it touched), another dsbuild,
``--resplit`` — gives another fingerprint, or none, and a full regrouping.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from dsbuild.catalog import Catalog
from dsbuild.manifest import Dataset

META = "regroup:{}"
LIBRARIES = ("numpy", "pandas", "scipy", "faiss-cpu", "cleanlab", "pillow", "scikit-learn", "duckdb", "imagehash")
_NOT_READ = ("model", "model_settings", "description", "warnings", "executor")
"""Dataset fields the grouping never reads (the others are fingerprinted, over-cautiously: e.g. the engine)."""
WRITTEN = ("status", "reason", "detail", "dup_group", "dup_of", "dup_distance", "conflict", "split", "quality_flags",
           "q_odd_size", "leak_with")
"""The columns a regrouping writes per item (:meth:`~dsbuild.catalog.Catalog.update_dedup_and_splits`)."""


@dataclass(frozen=True)
class Recorded:
    """What a build recorded with its fingerprint: the grouping's counts and who computed it (``by``: "build 3")."""

    fingerprint: str
    groups: int
    duplicates: int
    conflicts: int
    near_pairs: int
    by: str


@lru_cache(maxsize=1)
def code_digest() -> str:
    """Digest of dsbuild's Python sources and of the versions of the libraries the grouping computes with."""
    from importlib import metadata

    import dsbuild

    h = hashlib.sha1()
    root = Path(dsbuild.__file__).resolve().parent
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    for name in LIBRARIES:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = "-"
        h.update(f"{name}={version};".encode())
    return h.hexdigest()


def settings_text(ds: Dataset) -> str:
    """The dataset's settings the grouping may read, as canonical JSON."""
    data = {k: v for k, v in asdict(ds).items() if k not in _NOT_READ}
    return json.dumps(data, sort_keys=True, default=str)


def _frame_bytes(frame: Any) -> bytes:
    # CSV: floats as their shortest round-trip text, NULL/NaN/None as one marker; equal text <=> equal values.
    return frame.to_csv(index=False, na_rep="\\N", lineterminator="\n").encode()


def fingerprint(cat: Catalog, ds: Dataset, items: Any, *, arrays: dict[str, Any], mode: str) -> str:
    """Digest of what the regrouping of ``ds`` reads and writes: ``items`` (as ``dataset_items`` gave them), the
    catalog's :meth:`~dsbuild.catalog.Catalog.grouping_outputs`, the signal ``arrays`` (name → ndarray or None),
    ``mode`` (which way the near links are found), the settings and the code."""
    out_items, knn = cat.grouping_outputs(ds.name)
    h = hashlib.sha1()
    for part in (code_digest(), settings_text(ds), mode):
        h.update(part.encode())
        h.update(b"\0")
    for frame in (items, out_items, knn):
        h.update(_frame_bytes(frame))
        h.update(b"\0")
    for name in sorted(arrays):
        a = arrays[name]
        h.update(name.encode())
        if a is None:
            h.update(b"none")
        else:
            a = np.ascontiguousarray(a)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(np.nan_to_num(a, nan=-1.0).tobytes() if a.dtype.kind == "f" else a.tobytes())
        h.update(b"\0")
    return h.hexdigest()


def reusable(cat: Catalog, dataset: str, fp: str) -> Recorded | None:
    """The recorded grouping of ``dataset`` when its fingerprint is ``fp`` (else None)."""
    raw = cat.get_meta(META.format(dataset))
    if not raw:
        return None
    try:
        rec = Recorded(**json.loads(raw))
    except (TypeError, ValueError):
        return None
    return rec if rec.fingerprint == fp else None


def forget(cat: Catalog, dataset: str) -> None:
    """Drop the recorded fingerprint: the next build regroups in full."""
    cat.drop_meta(META.format(dataset))


def record(cat: Catalog, dataset: str, fp: str, summary: Any, *, by: str) -> None:
    """Keep ``fp`` with the :class:`~dsbuild.dedup.grouping.GroupSummary` ``summary`` of the regrouping it fixes."""
    rec = Recorded(fingerprint=fp, groups=int(summary.groups), duplicates=int(summary.duplicates),
                   conflicts=int(summary.conflicts), near_pairs=int(summary.near_pairs), by=by)
    cat.set_meta(META.format(dataset), json.dumps(asdict(rec), sort_keys=True))


def _cells(frame: Any, columns: tuple[str, ...]) -> list[tuple]:
    import pandas as pd

    cols = [frame[c].astype(object).where(pd.notna(frame[c]), None).tolist() for c in columns]
    return list(zip(*cols))


def same_writes(a: Any, b: Any) -> bool:
    """Whether two regroupings' updates (:func:`dsbuild.dedup.grouping.regroup`) write the same :data:`WRITTEN`
    values to the same images (NULL, None and NaN alike)."""
    if any(c not in a.columns or c not in b.columns for c in WRITTEN):
        return False
    cols = ("image_id",) + WRITTEN
    return sorted(_cells(a, cols), key=lambda r: r[0]) == sorted(_cells(b, cols), key=lambda r: r[0])


def same_link_inputs(before: Any, after: Any, verified_before: Any, verified_after: Any) -> bool:
    """Whether ``after`` (items read back after a regrouping) gives the near links, neighbours and outlier scores
    that ``before`` gave: the same rows in the same order, with the same hashes, files, labels and removes, and the
    same verified images."""
    cols = ("image_id", "sha256", "phash", "path", "label", "removed", "pixel_sha", "width", "height")
    if len(before) != len(after):
        return False
    if not np.array_equal(np.asarray(verified_before, dtype=bool), np.asarray(verified_after, dtype=bool)):
        return False
    return _cells(before, cols) == _cells(after, cols)
