"""The ``folders`` source: local class folders and ImageFolder trees.

Every file under a class's ``folders`` (recursively, hidden files skipped) is
one item of that class; an ``imagefolder`` tree gives its labels (and splits)
by its subfolders. A file already catalogued with the same size and mtime, and
verified under the same settings, is skipped. The rest are verified by the
executor (:mod:`dsbuild.executor`) and reported to the build's sink.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from dsbuild.executor import VerifyJob, make_executor
from dsbuild.manifest import Dataset
from dsbuild.rows import blob_row, image_id_for, item_row
from dsbuild.sources import SourceRun, source_removed


@dataclass(frozen=True)
class FileSource:
    """One file of a dataset's folders: its label, path, size, mtime and the split its folder gave (if any)."""

    label: str
    path: Path
    size: int
    mtime_ns: int
    given_split: str | None = None


SPLIT_FOLDERS = {"train": "train", "training": "train", "valid": "valid", "val": "valid", "validation": "valid",
                 "test": "test", "testing": "test"}


def imagefolder_layout(root: Path) -> list[tuple[str | None, str, Path]]:
    """``(split, label, folder)`` of an ImageFolder tree: ``root/<split>/<label>/`` or ``root/<label>/``.

    Split folder names ``train``/``valid``/``val``/``validation``/``test`` keep
    their split (a dataset that arrives already split is never re-split, and
    leakage between its splits is reported instead).
    """
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if subdirs and all(d.name.lower() in SPLIT_FOLDERS for d in subdirs):
        return [(SPLIT_FOLDERS[d.name.lower()], c.name, c) for d in subdirs
                for c in sorted(x for x in d.iterdir() if x.is_dir() and not x.name.startswith("."))]
    return [(None, d.name, d) for d in subdirs]


def walk(folder: Path) -> Iterator[Path]:
    """Files under ``folder``, recursively, sorted, skipping hidden files and folders."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(root) / name


def scan_folders(ds: Dataset) -> list[FileSource]:
    """Every file of the dataset's class folders and imagefolder tree, with its label (and given split)."""
    folders: list[tuple[str | None, str, Path]] = [(None, c.name, f) for c in ds.classes for f in c.folders]
    if ds.imagefolder is not None:
        folders += imagefolder_layout(ds.imagefolder)
    out: list[FileSource] = []
    for split, label, folder in folders:
        for path in walk(folder):
            try:
                st = path.stat()
            except OSError:
                continue
            out.append(FileSource(label, path.resolve(), st.st_size, st.st_mtime_ns, split))
    return out


def ingest(run: SourceRun, *, known: dict[str, Any], changed_settings: bool, now) -> set[str]:
    """Verify the dataset's new or changed files and report them to ``run.sink``; return the image ids of every
    file the folders hold today.

    ``known``: image_id → the catalog's row of every known item of the dataset
    (``src_size``, ``src_mtime_ns``, ``status``, ``reason``); ``changed_settings``: the
    verify/hash settings changed since the last build (every file is verified again). A file set aside
    when it left the folders (:data:`~dsbuild.sources.SOURCE_REMOVED`) is verified again when it is back.
    """
    ds, sink = run.dataset, run.sink
    files = scan_folders(ds)
    jobs: list[VerifyJob] = []
    meta: dict[str, FileSource] = {}
    skipped = 0
    retried: set[str] = set()  # unchanged files verified again because the settings changed
    current: set[str] = set()
    for src in files:
        origin = str(src.path)
        iid = image_id_for(ds.name, src.label, origin)
        current.add(iid)
        old = known.get(iid)
        unchanged = old is not None and old.src_size == src.size and old.src_mtime_ns == src.mtime_ns
        if unchanged and not changed_settings and not (run.retry_failed and old.status == "failed") \
                and not source_removed(old):
            skipped += 1
            continue
        if unchanged and changed_settings:
            retried.add(iid)
        meta[iid] = src
        jobs.append(VerifyJob(iid, str(src.path), ds.verify, ds.dedup, run.store))
    sink.found(len(files), skipped=skipped)

    with run.progress.stage(f"{ds.name}: verify + hash", len(jobs)) as bar, \
            make_executor(len(jobs), workers=run.workers, settings=run.executor) as executor:
        for job, rec in executor.map(jobs, ordered=not executor.remote):
            src = meta[job.key]
            sink.add(
                item=item_row(dataset=ds.name, image_id=job.key, origin=str(src.path), source="folder", label=src.label,
                              rec=rec, src_size=src.size, src_mtime_ns=src.mtime_ns, given_split=src.given_split,
                              build_id=run.build_id, now=now),
                blob=blob_row(rec, now) if rec.ok else None,
                retried=job.key in retried,
            )
            counts = sink.tally()
            bar.advance(1, ok=counts["ok"], rejected=counts["rejected"])
    return current
