"""Build orchestration: sources → verify+hash → store → catalog → dedup → split.

``build`` is idempotent and resumable:

* every source (a file, a URL) is one ``items`` row keyed by (dataset, label,
  origin); a source already catalogued and unchanged is not processed again;
* accepted bytes are written to the content-addressed store (atomic rename)
  *before* the rows that point at them are committed, in batches, so a build
  killed at any moment leaves a catalog that only points at complete files, and
  the next build continues where it stopped;
* dedup and splits are recomputed from the catalog at the end of every build
  (cheap), with existing splits kept.

A build takes the catalog's lock file first, so a second build fails fast.
Per-image work runs in worker processes (:func:`dsbuild.verify.analyze_file`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from dsbuild.catalog import BuildLock, Catalog, utcnow
from dsbuild.errors import DsbuildError
from dsbuild.manifest import Dataset, Manifest
from dsbuild.store import sweep_temp_files
from dsbuild.verify import ImageRecord, analyze_bytes, analyze_file

FLUSH_ROWS = 500  # rows per catalog transaction: what a killed build can lose and redo
FLUSH_SECONDS = 2.0
INLINE_LIMIT = 48  # images per verify worker below which fewer workers are started (each costs a fork)


def image_id_for(dataset: str, label: str, origin: str) -> str:
    """Stable id of a source: 16 hex digits of sha1(dataset, label, origin)."""
    return hashlib.sha1(f"{dataset}\0{label}\0{origin}".encode()).hexdigest()[:16]


@dataclass
class DatasetSummary:
    """What a build did to one dataset (counts are of this build's work unless noted)."""

    dataset: str
    sources: int = 0
    new: int = 0
    skipped: int = 0
    ok: int = 0
    rejected: int = 0
    failed: int = 0
    duplicates: int = 0
    dup_groups: int = 0
    conflicts: int = 0
    near_pairs: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    rejects: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


@dataclass
class BuildSummary:
    build_id: int
    catalog: Path
    datasets: list[DatasetSummary]
    seconds: float


# --------------------------------------------------------------------------- progress


class Progress:
    """Progress callbacks; the CLI passes a rich implementation, tests and the library a silent one."""

    def stage(self, name: str, total: int | None) -> "StageProgress":
        return StageProgress()

    def note(self, text: str) -> None:
        pass


class StageProgress:
    def advance(self, n: int = 1, **counts: int) -> None:
        pass

    def __enter__(self) -> "StageProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class FileSource:
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


def _walk(folder: Path) -> Iterator[Path]:
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
        for path in _walk(folder):
            try:
                st = path.stat()
            except OSError:
                continue
            out.append(FileSource(label, path.resolve(), st.st_size, st.st_mtime_ns, split))
    return out


def preflight(manifest: Manifest, datasets: list[Dataset]) -> None:
    """Check everything that can be checked before taking the lock or writing anything."""
    from dsbuild.manifest import label_problem

    problems: list[str] = []
    for ds in datasets:
        if ds.imagefolder is not None:
            key = f"datasets.{ds.name}.imagefolder"
            if not ds.imagefolder.is_dir():
                problems.append(f"{key}: {ds.imagefolder} is not a folder")
            else:
                layout = imagefolder_layout(ds.imagefolder)
                labels = sorted({label for _, label, _ in layout})
                if len(labels) < 2:
                    problems.append(f"{key}: {ds.imagefolder} needs one subfolder per label (at least two), "
                                    "or <split>/<label>/ subfolders")
                for label in labels:
                    why = label_problem(label)
                    if why:
                        problems.append(f"{key}: label folder {label!r} {why}")
        for cls in ds.classes:
            for folder in cls.folders:
                if not folder.exists():
                    hint = " — run `dsbuild demo` to generate it" if "demo_data" in folder.parts else ""
                    problems.append(f"datasets.{ds.name}.classes.{cls.name}.folders: {folder} does not exist{hint}")
                elif not folder.is_dir():
                    problems.append(f"datasets.{ds.name}.classes.{cls.name}.folders: {folder} is not a folder")
            for url_file in cls.urls:
                if not url_file.is_file():
                    problems.append(f"datasets.{ds.name}.classes.{cls.name}.urls: {url_file} does not exist")
        if any(c.queries or c.urls for c in ds.classes):
            from dsbuild.crawl import check_web_settings

            problems.extend(check_web_settings(ds))
    if problems:
        raise DsbuildError("cannot build:\n  " + "\n  ".join(problems), exit_code=2)


# --------------------------------------------------------------------------- rows


def _settings_digest(ds: Dataset) -> str:
    data = {"verify": asdict(ds.verify), "hash": [ds.dedup.hash, ds.dedup.hash_size]}
    return hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


def item_row(
    *, dataset: str, image_id: str, origin: str, source: str, label: str, rec: ImageRecord | None,
    status: str | None = None, reason: str | None = None, detail: str | None = None,
    engine: str | None = None, query: str | None = None, rank: int | None = None, page_url: str | None = None,
    src_size: int | None = None, src_mtime_ns: int | None = None, given_split: str | None = None, build_id: int, now,
) -> dict:
    if rec is not None:
        status = "ok" if rec.ok else "rejected"
        reason, detail = rec.reason, rec.detail
    return {"given_split": given_split,
        "dataset": dataset, "image_id": image_id, "origin": origin, "source": source, "engine": engine,
        "query": query, "rank": rank, "page_url": page_url, "class_label": label,
        "sha256": rec.sha256 if rec else None, "status": status, "reason": reason, "detail": detail,
        "split": None, "dup_group": None, "dup_of": None, "dup_distance": None, "conflict": False,
        "phash": rec.phash if rec else None, "src_size": src_size, "src_mtime_ns": src_mtime_ns,
        "first_seen": now, "updated_at": now, "build_id": build_id,
        # what verification learned (for a rejected file the only record of it), and what decoders said
        "format": rec.format if rec else None, "width": rec.width if rec else None,
        "height": rec.height if rec else None, "bytes": (rec.bytes or None) if rec else None,
        "warnings": list(rec.warnings) if rec else [],
    }


def blob_row(rec: ImageRecord, now) -> dict:
    q = rec.quality or {}
    return {
        "sha256": rec.sha256, "path": rec.store_path, "bytes": rec.bytes, "format": rec.format,
        "width": rec.width, "height": rec.height, "mode": rec.mode, "frames": rec.frames,
        "pixel_sha": rec.pixel_sha,
        "q_dark": q.get("dark"), "q_light": q.get("light"), "q_blurry": q.get("blurry"),
        "q_low_information": q.get("low_information"), "q_grayscale": q.get("grayscale"),
        "q_odd_aspect_ratio": q.get("odd_aspect_ratio"), "created_at": now,
    }


class RowWriter:
    """Buffers item/blob rows and commits them in batches (blobs first, then the items pointing at them)."""

    def __init__(self, cat: Catalog) -> None:
        self.cat = cat
        self.items: list[dict] = []
        self.blobs: list[dict] = []
        self.fetches: list[dict] = []
        self._last = time.monotonic()

    def add(self, item: dict | None = None, blob: dict | None = None, fetch: dict | None = None) -> None:
        if item is not None:
            self.items.append(item)
        if blob is not None:
            self.blobs.append(blob)
        if fetch is not None:
            self.fetches.append(fetch)
        if len(self.items) + len(self.fetches) >= FLUSH_ROWS or time.monotonic() - self._last > FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        import pandas as pd

        if self.blobs:
            self.cat.insert_blobs(pd.DataFrame(self.blobs))
        if self.fetches:
            self.cat.insert_fetches(pd.DataFrame(self.fetches))
        if self.items:
            self.cat.upsert_items(pd.DataFrame(self.items))
        self.items, self.blobs, self.fetches = [], [], []
        self._last = time.monotonic()


# --------------------------------------------------------------------------- analysis


HARD_LIMIT_FACTOR = 2.0
HARD_LIMIT_EXTRA_S = 5.0
"""A worker still busy ``time_limit * 2 + 5`` s after an image began is ended from outside (faulthandler's watchdog
thread needs no GIL: it works while a decoder loops in C); the image is then rejected as ``timeout``."""

_IN_WORKER = {"on": False, "devnull": None}


def _worker_start() -> None:
    """Initializer of every verify worker: C libraries' stderr captured per image, the per-image time limit armed."""
    import signal

    from dsbuild.decoders import capture_stderr_in_this_process

    capture_stderr_in_this_process()
    signal.signal(signal.SIGALRM, _time_up)
    _IN_WORKER["on"] = True
    import multiprocessing
    import threading

    parent = multiprocessing.parent_process()
    if parent is not None:  # a build killed with SIGKILL must not leave its workers waiting for tasks forever
        threading.Thread(target=_exit_with, args=(parent.sentinel,), name="dsbuild-parent-watch", daemon=True).start()
    _IN_WORKER["devnull"] = open(os.devnull, "w")  # noqa: SIM115 - faulthandler's output: a worker's life long


def _exit_with(sentinel: int) -> None:
    from multiprocessing.connection import wait

    wait([sentinel])
    os._exit(0)


def _time_up(signum, frame) -> None:
    from dsbuild.decoders import TimeLimitExceeded

    raise TimeLimitExceeded()


def hard_limit(verify) -> float:
    """Seconds after which a worker busy with one image is ended (see :data:`HARD_LIMIT_FACTOR`)."""
    return verify.time_limit * HARD_LIMIT_FACTOR + HARD_LIMIT_EXTRA_S


def _analyze_job(job: tuple) -> tuple[str, ImageRecord]:
    """(key, path or bytes, verify, dedup, store_dir) → (key, record); accepted images are stored when store_dir is set.

    In a worker process the image gets ``verify.time_limit`` seconds (a SIGALRM
    interrupts Python and Pillow's decode loop) and, should a decoder never give
    control back, the worker is ended at :func:`hard_limit`.
    """
    key, src, verify, dedup, store_dir = job
    guarded = _IN_WORKER["on"]
    if guarded:
        import faulthandler
        import signal

        signal.setitimer(signal.ITIMER_REAL, verify.time_limit)
        faulthandler.dump_traceback_later(hard_limit(verify), exit=True, file=_IN_WORKER["devnull"])
    from dsbuild.decoders import TimeLimitExceeded

    try:
        if isinstance(src, (bytes, bytearray)):  # a downloaded body: stored like a completed download, without fsync
            return key, analyze_bytes(src, verify=verify, dedup=dedup, store_dir=store_dir, fsync=False)
        return key, analyze_file(src, verify=verify, dedup=dedup, store_dir=store_dir)
    except TimeLimitExceeded:  # fired between the analysis and the disarming below
        return key, ImageRecord(ok=False, reason="timeout", detail=timeout_detail(verify))
    finally:
        if guarded:
            signal.setitimer(signal.ITIMER_REAL, 0)
            faulthandler.cancel_dump_traceback_later()


def timeout_detail(verify) -> str:
    return f"verification took longer than time_limit {verify.time_limit:g} s"


def _analyze_chunk(jobs: list[tuple]) -> list[tuple[str, ImageRecord]]:
    from dsbuild.decoders import TimeLimitExceeded

    out = []
    for job in jobs:
        try:
            out.append(_analyze_job(job))
        except TimeLimitExceeded:  # the timer fired while _analyze_job was disarming it: still this image's
            out.append((job[0], ImageRecord(ok=False, reason="timeout", detail=timeout_detail(job[2]))))
    return out


def analyze_many(jobs: list[tuple], *, workers: int | None = None) -> Iterator[tuple[str, ImageRecord]]:
    """Run :func:`analyze_file` over ``jobs`` (key, path, verify, dedup, store_dir), in worker processes.

    Results come back in job order. Every image is analysed in a worker process,
    never in the caller's: there a decoder's stderr is captured per image, the
    time limit can end a decoder that never returns, and a crash costs one
    worker. A worker that dies costs only the file that killed it: the
    unfinished chunks are re-run one file per task, and the file that breaks the
    pool again is rejected (``timeout`` when it ran past the hard limit, else
    ``corrupt``).
    """
    if not jobs:
        return
    workers = max(1, min(workers or os.cpu_count() or 1, (len(jobs) + INLINE_LIMIT - 1) // INLINE_LIMIT))
    chunk = max(1, min(64, len(jobs) // (workers * 8) or 1))
    chunks = [jobs[i : i + chunk] for i in range(0, len(jobs), chunk)]
    retry: list[tuple] = []
    with _spawn_pool(workers) as pool:
        window = workers * 4  # chunks in flight: bounded memory, results in order
        futures = [pool.submit(_analyze_chunk, c) for c in chunks[:window]]
        next_chunk = len(futures)
        for i in range(len(chunks)):
            try:
                results = futures[i].result()
            except BrokenProcessPool:
                retry = [job for c in chunks[i:] for job in c]
                break
            futures[i] = None  # free the results
            if next_chunk < len(chunks):
                futures.append(pool.submit(_analyze_chunk, chunks[next_chunk]))
                next_chunk += 1
            yield from results
    yield from _isolated(retry)


_WORKER_MODULES = ["dsbuild.verify", "dsbuild.decoders", "dsbuild.containers", "dsbuild.formats", "dsbuild.hashing",
                   "dsbuild.quality", "PIL.Image", "PIL.JpegImagePlugin", "PIL.PngImagePlugin", "PIL.ImageFilter",
                   "PIL.ImageOps", "numpy", "simplejpeg", "scipy.fftpack"]  # phash's DCT: ~0.3 s to import, once per worker otherwise


def _spawn_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of verify workers. Never plain fork: the parent holds a DuckDB connection and threads.

    Where available, workers fork from a clean "forkserver" process that imported the
    per-image modules once (Pillow, numpy, dsbuild.verify), so a pool starts in
    milliseconds instead of each worker importing them again; elsewhere, spawn.
    """
    import multiprocessing as mp
    import sys

    main = sys.modules.get("__main__")
    if main is not None and getattr(main, "__spec__", None) is None and getattr(main, "__file__", None):
        # A console script without a main guard (``sys.exit(main())`` at import, as some installers write them)
        # would be run again in every worker — the whole CLI, a second build — when the child prepares its
        # __main__ from that path. Workers need nothing from __main__: name dsbuild's, which they skip.
        import importlib.util

        main.__spec__ = importlib.util.find_spec("dsbuild.__main__")
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(_WORKER_MODULES)
    else:  # pragma: no cover - Windows
        ctx = mp.get_context("spawn")
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_start)


def _isolated(jobs: list[tuple]) -> Iterator[tuple[str, ImageRecord]]:
    """Re-run ``jobs`` in order in a one-worker pool after a crash; the job that crashes it again is rejected.

    With a single worker, jobs run strictly in order, so the first unfinished job
    when the pool breaks is the one that broke it.
    """
    pending = list(jobs)
    while pending:
        with _spawn_pool(1) as pool:
            futures = [pool.submit(_analyze_chunk, [job]) for job in pending]
            began = time.monotonic()  # when the job now running began, near enough: when the one before it ended
            for k, fut in enumerate(futures):
                try:
                    result = fut.result()
                except BrokenProcessPool:
                    verify = pending[k][2]
                    if time.monotonic() - began >= hard_limit(verify) * 0.9:
                        yield pending[k][0], ImageRecord(ok=False, reason="timeout", detail=timeout_detail(verify))
                    else:
                        yield pending[k][0], ImageRecord(ok=False, reason="corrupt", detail="the decoder crashed on this file")
                    pending = pending[k + 1 :]
                    break
                began = time.monotonic()
                yield result[0]
            else:
                pending = []


# --------------------------------------------------------------------------- the build


def build(
    manifest: Manifest,
    names: list[str] | None = None,
    *,
    retry_failed: bool = False,
    progress: Progress | None = None,
    workers: int | None = None,
    catalog_path: Path | None = None,
) -> BuildSummary:
    """Build the named datasets (all when ``names`` is empty); return a summary per dataset."""
    progress = progress or Progress()
    datasets = manifest.select(names)
    preflight(manifest, datasets)
    catalog_path = catalog_path or manifest.catalog
    lock = BuildLock(catalog_path)
    lock.acquire()
    started = time.monotonic()
    try:
        cat = Catalog.open(catalog_path)
        try:
            swept = sweep_temp_files(manifest.store)
            if swept:
                progress.note(f"removed {swept} partial files left by an interrupted build")
            build_id = cat.start_build([d.name for d in datasets])
            summaries: list[DatasetSummary] = []
            try:
                for ds in datasets:
                    summaries.append(
                        build_dataset(cat, manifest, ds, build_id=build_id, retry_failed=retry_failed,
                                      progress=progress, workers=workers)
                    )
            except KeyboardInterrupt:
                cat.finish_build(build_id, "interrupted", {"datasets": [asdict(s) for s in summaries]})
                raise DsbuildError("build interrupted — everything finished so far is saved; run the same command to resume", exit_code=130) from None
            except BaseException as exc:
                cat.finish_build(build_id, "failed", {"error": str(exc)})
                raise
            cat.finish_build(build_id, "ok", {"datasets": [asdict(s) for s in summaries]})
            return BuildSummary(build_id=build_id, catalog=catalog_path, datasets=summaries, seconds=time.monotonic() - started)
        finally:
            cat.close()
    finally:
        lock.release()


def build_dataset(
    cat: Catalog, manifest: Manifest, ds: Dataset, *, build_id: int, retry_failed: bool = False,
    progress: Progress, workers: int | None = None,
) -> DatasetSummary:
    t0 = time.monotonic()
    summary = DatasetSummary(dataset=ds.name)
    store_dir = manifest.store
    digest = _settings_digest(ds)
    changed_settings = cat.get_meta(f"settings:{ds.name}") not in (None, digest)

    known = cat.known_items(ds.name)
    known_by_id = {row.image_id: row for row in known.itertuples(index=False)}
    writer = RowWriter(cat)
    now = utcnow()

    # Local folders.
    files = scan_folders(ds)
    jobs = []
    meta: dict[str, FileSource] = {}
    for src in files:
        origin = str(src.path)
        iid = image_id_for(ds.name, src.label, origin)
        old = known_by_id.get(iid)
        unchanged = old is not None and old.src_size == src.size and old.src_mtime_ns == src.mtime_ns
        if unchanged and not changed_settings and not (retry_failed and old.status == "failed"):
            summary.skipped += 1
            continue
        meta[iid] = src
        jobs.append((iid, str(src.path), ds.verify, ds.dedup, store_dir))
    summary.sources += len(files)

    with progress.stage(f"{ds.name}: verify + hash", len(jobs)) as bar:
        for iid, rec in analyze_many(jobs, workers=workers):
            src = meta[iid]
            writer.add(
                item=item_row(dataset=ds.name, image_id=iid, origin=str(src.path), source="folder", label=src.label,
                              rec=rec, src_size=src.size, src_mtime_ns=src.mtime_ns, given_split=src.given_split,
                              build_id=build_id, now=now),
                blob=blob_row(rec, now) if rec.ok else None,
            )
            summary.new += 1
            if rec.ok:
                summary.ok += 1
            else:
                summary.rejected += 1
                summary.rejects[rec.reason or "?"] = summary.rejects.get(rec.reason or "?", 0) + 1
            bar.advance(1, ok=summary.ok, rejected=summary.rejected)
    writer.flush()

    # Web sources (queries, URL lists) are fetched by dsbuild.crawl.
    if any(c.queries or c.urls for c in ds.classes):
        from dsbuild.crawl import crawl_dataset

        crawl_dataset(cat, manifest, ds, build_id=build_id, retry_failed=retry_failed, progress=progress,
                      summary=summary, writer=writer, workers=workers)
        writer.flush()

    regroup_dataset(cat, ds, summary=summary, progress=progress)
    # Dedup and quality checks have just turned some accepted images into duplicates or rejects:
    # the summary reports this build's images as the catalog now has them, not as they were fetched.
    counts = cat.build_item_counts(ds.name, build_id)
    summary.ok = sum(n for status, _, n in counts if status == "ok")
    summary.rejected = sum(n for status, _, n in counts if status == "rejected")
    summary.failed = sum(n for status, _, n in counts if status == "failed")
    summary.rejects = {}
    for status, reason, n in counts:
        if status in ("rejected", "failed"):
            summary.rejects[reason or "?"] = summary.rejects.get(reason or "?", 0) + n
    cat.set_meta(f"settings:{ds.name}", digest)
    summary.seconds = time.monotonic() - t0
    return summary


def regroup_dataset(cat: Catalog, ds: Dataset, *, summary: DatasetSummary, progress: Progress) -> None:
    """Recompute duplicate groups, conflicts and splits of ``ds`` from the catalog."""
    from dsbuild.groups import regroup

    items = cat.dataset_items(ds.name)
    with progress.stage(f"{ds.name}: dedup + split", len(items)) as bar:
        near = None
        if ds.dedup.near and ds.dedup.threshold > 0:
            near = near_pairs_for(items, ds)
        updates, gs = regroup(items, ds, near_pairs=near)
        cat.update_dedup_and_splits(ds.name, updates)
        bar.advance(len(items))
    summary.duplicates, summary.dup_groups, summary.conflicts, summary.near_pairs = gs.duplicates, gs.groups, gs.conflicts, gs.near_pairs
    if gs.held_apart:
        summary.notes.append(f"{gs.held_apart} near-duplicate links join images that earlier builds put in different "
                             "splits: left as separate groups so that no image moves to another split")
    counts = updates[updates["split"].notna() & (updates["status"] == "ok")]["split"].value_counts()
    summary.splits = {k: int(v) for k, v in counts.items()}


def near_pairs_for(items, ds: Dataset):
    """Near-duplicate pairs (row positions in ``items``) among verified images, by perceptual hash."""
    import numpy as np

    from dsbuild import dedup, hashing

    ok = items["status"].isin(["ok", "duplicate"]) | items["reason"].fillna("").str.startswith("quality:")
    pos = np.flatnonzero(ok.to_numpy() & items["phash"].notna().to_numpy())
    if len(pos) < 2:
        return None
    hexes = items["phash"].to_numpy()[pos]
    keep = np.array([not hashing.is_degenerate(h) for h in hexes], dtype=bool)
    pos, hexes = pos[keep], hexes[keep]
    if len(pos) < 2:
        return None
    if ds.dedup.hash_size == 8:
        values = np.array([hashing.hash_to_int(h) for h in hexes], dtype=np.uint64)
        pairs = dedup.find_pairs(values, ds.dedup.threshold)
    else:
        pairs = dedup.find_pairs_hex(list(hexes), ds.dedup.threshold)
    if len(pairs) == 0:
        return None
    pairs = np.asarray(pairs)
    return np.column_stack([pos[pairs[:, 0]], pos[pairs[:, 1]], pairs[:, 2]])
