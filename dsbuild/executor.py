"""Per-image work in batches, behind ONE interface: submit a batch of frozen jobs, get its records.

A build turns every image source into a :class:`VerifyJob` (a file path or a
downloaded body, plus the dataset's frozen verify/dedup settings and the store
folder). :func:`run_job` is the pure per-image function — verify, hash, score,
store when accepted (:mod:`dsbuild.verify.analyze`) — and never raises for a
bad image. An :class:`Executor` runs jobs in batches:

* ``executor.submit(jobs)`` → a :class:`Batch`; ``batch.result()`` is one
  :class:`~dsbuild.verify.analyze.ImageRecord` per job, in job order, and
  ``batch.add_done_callback(fn)`` calls ``fn(batch)`` when the batch is done
  (from any thread). ``result()`` never raises for a crashed worker: the
  backend re-runs what the crash took with it, and the one job that crashes a
  worker again gets a ``corrupt`` record.
* ``executor.map(jobs)`` yields ``(job, record)`` in job order (or, with
  ``ordered=False``, as batches finish) with a bounded number of batches in
  flight (memory stays bounded).

A :class:`FetchJob` is a URL instead of a file: the worker downloads it
(:func:`dsbuild.fetch.fetch_all`), then verifies, hashes, scores and stores it
like a :class:`VerifyJob`; its record is a :class:`FetchedImage` (how the download
ended + the image's record). Backends whose workers may sit on other machines
(``remote = True``) get FetchJobs, so that the driver never carries the bodies.

Backends (:data:`BACKENDS`, name → factory): ``local`` — a local process pool
with crash isolation, a per-image time limit and per-image capture of the C
libraries' stderr (:class:`LocalPoolExecutor`; :class:`InlineExecutor` runs in
the calling thread, for tests); ``ray`` — Ray tasks on a cluster, with the same
per-image guarantees (:mod:`dsbuild.ray_backend`, imported only when used).
Jobs and records are plain picklable values.
"""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from typing import TYPE_CHECKING

from dsbuild.dedup.settings import DedupSettings
from dsbuild.executor_settings import ExecutorSettings
from dsbuild.verify.settings import VerifySettings
from dsbuild.verify.analyze import ImageRecord, analyze_bytes, analyze_file

if TYPE_CHECKING:  # pragma: no cover
    from dsbuild.fetch import FetchResult
    from dsbuild.fetch_settings import FetchSettings

INLINE_LIMIT = 48
"""Jobs per local worker below which fewer workers are started (each costs a fork)."""

WORKER_MODULES = ["dsbuild.executor", "dsbuild.verify.analyze", "dsbuild.verify.decoders", "dsbuild.verify.containers",
                  "dsbuild.formats", "simplejpeg", "dsbuild.verify.hashing", "dsbuild.verify.quality",
                  "PIL.Image", "PIL.JpegImagePlugin", "PIL.PngImagePlugin", "PIL.ImageFilter", "PIL.ImageOps", "numpy",
                  "scipy.fftpack"]  # phash's DCT: ~0.3 s to import, once per worker otherwise
"""Modules the forkserver imports once, so that every worker forked from it starts ready."""

CRASH_DETAIL = "the decoder crashed on this file"


# --------------------------------------------------------------------------- jobs


@dataclass(frozen=True)
class VerifyJob:
    """One image to verify: ``source`` is a file path or a downloaded body held in memory.

    ``key`` is the caller's id of the image (echoed, never interpreted). An
    accepted image is written into ``store_dir`` when it is set (an in-memory
    body without fsync: the same guarantee as a renamed download).
    """

    key: str
    source: str | bytes
    verify: VerifySettings
    dedup: DedupSettings
    store_dir: Path | None = None


@dataclass(frozen=True)
class FetchJob:
    """One URL to download, then verify, hash, score and (when accepted) store, all on the worker.

    ``key`` is the caller's id (echoed). ``store_dir`` must be a path every worker
    reaches (a shared filesystem): accepted bodies are written there, and bodies
    too large to keep in memory are downloaded into its ``.incoming`` folder first.
    """

    key: str
    url: str
    fetch: "FetchSettings"
    verify: VerifySettings
    dedup: DedupSettings
    store_dir: Path


@dataclass(frozen=True)
class FetchedImage:
    """The record of a :class:`FetchJob`: how the download ended (``fetch``, its body dropped) and, when a
    body came back, what verification learned (``record``; None when the download failed or was refused)."""

    fetch: "FetchResult"
    record: ImageRecord | None


HARD_LIMIT_FACTOR = 2.0
HARD_LIMIT_EXTRA_S = 5.0
"""A worker still busy ``time_limit * 2 + 5`` s after an image began is ended from outside (faulthandler's watchdog
thread needs no GIL: it works while a decoder loops in C); the image is then rejected as ``timeout``."""

_IN_WORKER = {"on": False, "devnull": None}


def worker_start() -> None:
    """Initializer of every verify worker: C libraries' stderr captured per image, Pillow's plugins loaded, the
    per-image time limit armed, and the worker ends with its parent (a build killed with SIGKILL leaves no worker waiting for tasks)."""
    import multiprocessing
    import signal

    from PIL import Image

    from dsbuild.verify.decoders import capture_stderr_in_this_process

    capture_stderr_in_this_process()
    # Pillow imports its ~45 format plugins at the first image it cannot identify from the five it preloads (~50 ms
    # idle, far more on a loaded machine): done here, so a worker's first image is not charged for it against
    # [verify] time_limit (a 4 ms PNG was rejected as "timeout" at time_limit 0.5 s on a machine at load 7).
    Image.init()
    signal.signal(signal.SIGALRM, _time_up)
    _IN_WORKER["on"] = True
    _IN_WORKER["devnull"] = open(os.devnull, "w")  # noqa: SIM115 - faulthandler's output: a worker's life long
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent.sentinel,), name="dsbuild-parent-watch", daemon=True).start()


def _exit_with(sentinel: int) -> None:
    from multiprocessing.connection import wait

    wait([sentinel])
    os._exit(0)


def _time_up(signum, frame) -> None:
    from dsbuild.verify.decoders import TimeLimitExceeded

    raise TimeLimitExceeded()


def hard_limit(verify: VerifySettings) -> float:
    """Seconds after which a worker busy with one image is ended (see :data:`HARD_LIMIT_FACTOR`)."""
    return verify.time_limit * HARD_LIMIT_FACTOR + HARD_LIMIT_EXTRA_S


def timeout_record(verify: VerifySettings) -> ImageRecord:
    return ImageRecord(ok=False, reason="timeout", detail=f"verification took longer than time_limit {verify.time_limit:g} s")


def run_job(job: VerifyJob) -> ImageRecord:
    """The per-image work: verify, hash and score ``job``'s image; store it when accepted. Never raises for a bad image.

    In a worker process the image gets ``verify.time_limit`` seconds (a SIGALRM
    interrupts Python and Pillow's decode loop) and, should a decoder never give
    control back, the worker is ended at :func:`hard_limit`.
    """
    from dsbuild.verify.decoders import TimeLimitExceeded

    guarded = _IN_WORKER["on"]
    if guarded:
        import faulthandler
        import signal

        signal.setitimer(signal.ITIMER_REAL, job.verify.time_limit)
        faulthandler.dump_traceback_later(hard_limit(job.verify), exit=True, file=_IN_WORKER["devnull"])
    try:
        if isinstance(job.source, (bytes, bytearray)):
            return analyze_bytes(job.source, verify=job.verify, dedup=job.dedup, store_dir=job.store_dir, fsync=False)
        return analyze_file(job.source, verify=job.verify, dedup=job.dedup, store_dir=job.store_dir)
    except TimeLimitExceeded:  # fired between the analysis and the disarming below
        return timeout_record(job.verify)
    finally:
        if guarded:
            signal.setitimer(signal.ITIMER_REAL, 0)
            faulthandler.cancel_dump_traceback_later()


def run_guarded(job: VerifyJob) -> ImageRecord:
    """:func:`run_job`, also when the time limit fires while run_job is disarming it (still this image's)."""
    from dsbuild.verify.decoders import TimeLimitExceeded

    try:
        return run_job(job)
    except TimeLimitExceeded:
        return timeout_record(job.verify)


def run_batch(jobs: Sequence[VerifyJob | FetchJob]) -> list[ImageRecord | FetchedImage]:
    """The records of ``jobs``, in order (what a worker runs per task): an :class:`ImageRecord` per
    :class:`VerifyJob`, a :class:`FetchedImage` per :class:`FetchJob` (a batch's FetchJobs download together)."""
    fetches = [k for k, job in enumerate(jobs) if isinstance(job, FetchJob)]
    out: list = [None] * len(jobs)
    if fetches:
        for k, rec in zip(fetches, run_fetch_batch([jobs[k] for k in fetches])):
            out[k] = rec
    for k, job in enumerate(jobs):
        if out[k] is None:
            out[k] = run_guarded(job)
    return out


def strip_body(res: "FetchResult") -> "FetchResult":
    """``res`` without its body (what travels back to the driver)."""
    import dataclasses

    return dataclasses.replace(res, data=None, path=None) if res.data is not None or res.path is not None else res


def verify_fetched(job: FetchJob, res: "FetchResult") -> FetchedImage:
    """Verify (and store) the body of a finished download ``res`` of ``job``, in this process."""
    import dataclasses

    from dsbuild.store import move_into_store

    if not res.ok or (res.data is None and res.path is None):
        return FetchedImage(strip_body(res), None)
    if res.data is not None:  # in memory: the worker writes it into the store when accepted
        rec = run_guarded(VerifyJob(job.key, res.data, job.verify, job.dedup, job.store_dir))
    else:  # spilled to <store>/.incoming: renamed into the store when accepted
        path = Path(res.path)
        rec = run_guarded(VerifyJob(job.key, str(path), job.verify, job.dedup, None))
        if rec.ok:
            rec = dataclasses.replace(rec, store_path=str(move_into_store(job.store_dir, rec.sha256, path, rec.format)))
        else:
            path.unlink(missing_ok=True)
    return FetchedImage(strip_body(res), rec)


def run_fetch_batch(jobs: Sequence[FetchJob]) -> list[FetchedImage]:
    """Download ``jobs`` concurrently in a helper thread while this (the main) thread verifies each body as it
    arrives — the main thread, so that the per-image time limit and stderr capture work as for files.

    The batch's downloads use the first job's :class:`~dsbuild.fetch_settings.FetchSettings` (a batch holds one
    dataset's URLs) with ``concurrency`` at most the batch size. Raises only when nothing can go on
    (the store's ``.incoming`` folder cannot be written: :class:`~dsbuild.errors.DsbuildError`).
    """
    import dataclasses
    import queue

    from dsbuild.fetch import FetchRequest, fetch_all, in_memory_limit

    if not jobs:
        return []
    settings = jobs[0].fetch
    settings = dataclasses.replace(settings, concurrency=max(1, min(settings.concurrency, len(jobs))))
    arrived: queue.SimpleQueue = queue.SimpleQueue()

    def download() -> None:
        try:
            fetch_all([FetchRequest(job.url, key=str(k)) for k, job in enumerate(jobs)], settings=settings,
                      dest_dir=Path(jobs[0].store_dir) / ".incoming", on_result=arrived.put,
                      in_memory=in_memory_limit(settings.concurrency))
        except BaseException as exc:  # noqa: BLE001 - raised again in the main thread
            arrived.put(exc)
        finally:
            arrived.put(None)

    thread = threading.Thread(target=download, name="dsbuild-fetch", daemon=True)
    thread.start()
    out: list = [None] * len(jobs)
    error: BaseException | None = None
    while (res := arrived.get()) is not None:
        if isinstance(res, BaseException):
            error = res
            continue
        k = int(res.key)
        out[k] = verify_fetched(jobs[k], res)
    thread.join()
    if error is not None:
        raise error
    return out


def crash_record() -> ImageRecord:
    """The record of a job that crashed its worker twice (once in its batch, once alone)."""
    return ImageRecord(ok=False, reason="corrupt", detail=CRASH_DETAIL)


# --------------------------------------------------------------------------- the interface


class Batch:
    """A submitted batch of jobs: ``result()`` gives their records (in order) once done.

    Backends create batches; callers only read ``jobs``, call ``result()`` and
    ``add_done_callback``.
    """

    def __init__(self, jobs: Sequence[VerifyJob], *, collect: Callable[["Batch"], list[ImageRecord]],
                 future: Future | None = None, context: object = None) -> None:
        self.jobs = list(jobs)
        self.future = future  # the backend's handle (None: nothing runs remotely, e.g. in-process or failed to submit)
        self.context = context  # the backend's own state about this batch
        self._collect = collect
        self._records: list[ImageRecord] | None = None
        self._lock = threading.Lock()

    def done(self) -> bool:
        """True when ``result()`` will not wait for a worker."""
        return self.future is None or self.future.done()

    def add_done_callback(self, fn: Callable[["Batch"], None]) -> None:
        """Call ``fn(self)`` when the batch is done (at once if it is; else from a backend thread)."""
        if self.future is None:
            fn(self)
        else:
            self.future.add_done_callback(lambda _f: fn(self))

    def result(self) -> list[ImageRecord]:
        """One record per job, in job order; waits for the batch. Worker crashes are recovered, never raised."""
        with self._lock:
            if self._records is None:
                self._records = self._collect(self)
            return self._records


class Executor(ABC):
    """Runs :class:`VerifyJob` batches. Subclasses implement :meth:`submit` (and :meth:`shutdown` if they hold resources).

    ``workers``: batches that run at once; ``batch_size``: the backend's own batch size (None: sized per call);
    ``remote``: workers may run on other machines (give them URLs to download, not bodies).
    """

    workers: int = 1
    batch_size: int | None = None
    remote: bool = False
    startup_s: float = 0.0  # seconds the backend took to take work when it was made (a Ray cluster starting)

    @abstractmethod
    def submit(self, jobs: Sequence[VerifyJob]) -> Batch:
        """Start ``jobs`` (one batch); return its :class:`Batch`."""

    def startup_note(self) -> str | None:
        """A progress note on the backend's start-up when it was long enough to mention
        (``ray: cluster ready in 6.1 s``), else None. A stage calls ``bar.ready(executor.startup_note())``
        once its executor is made: its per-image rate is timed from there."""
        return None

    def shutdown(self, *, cancel: bool = False) -> None:
        """Release workers; ``cancel``: drop batches not started yet (their results are not wanted)."""

    def map(self, jobs: Iterable[VerifyJob | FetchJob], *, batch_size: int | None = None,
            window: int | None = None, ordered: bool = True) -> Iterator[tuple[VerifyJob | FetchJob, ImageRecord | FetchedImage]]:
        """``(job, record)`` for every job, with at most ``window`` batches in flight.

        ``ordered``: in job order (else batch by batch as they finish: one slow batch holds
        nothing back). ``batch_size`` defaults to the backend's, else ``len(jobs) / (8 × workers)``
        (1…64): enough batches to balance the workers, few enough that IPC stays small;
        ``window`` to 4 × workers.
        """
        import queue

        jobs = list(jobs)
        if not jobs:
            return
        workers = max(1, self.workers)
        size = batch_size or self.batch_size or max(1, min(64, len(jobs) // (workers * 8) or 1))
        chunks = iter([jobs[i : i + size] for i in range(0, len(jobs), size)])
        first = list(islice(chunks, window or workers * 4))
        if ordered:
            pending: deque[Batch] = deque(self.submit(c) for c in first)
            while pending:
                batch = pending.popleft()
                records = batch.result()
                nxt = next(chunks, None)
                if nxt is not None:
                    pending.append(self.submit(nxt))
                yield from zip(batch.jobs, records)
            return
        finished: queue.SimpleQueue = queue.SimpleQueue()
        in_flight = 0
        for chunk in first:
            self.submit(chunk).add_done_callback(finished.put)
            in_flight += 1
        while in_flight:
            batch = finished.get()
            in_flight -= 1
            records = batch.result()
            nxt = next(chunks, None)
            if nxt is not None:
                self.submit(nxt).add_done_callback(finished.put)
                in_flight += 1
            yield from zip(batch.jobs, records)

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


class InlineExecutor(Executor):
    """Runs every batch in the thread that asks for its result (no processes): small jobs, one worker."""

    workers = 1

    def submit(self, jobs: Sequence[VerifyJob]) -> Batch:
        return Batch(jobs, collect=lambda b: run_batch(b.jobs))

    def map(self, jobs: Iterable[VerifyJob | FetchJob], *, batch_size: int | None = None,
            window: int | None = None, ordered: bool = True) -> Iterator[tuple[VerifyJob | FetchJob, ImageRecord | FetchedImage]]:
        for job in jobs:
            yield job, run_batch([job])[0]


def process_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of verify workers. Never plain fork: the parent holds a DuckDB connection and threads.

    Where available, workers fork from a clean "forkserver" process that imported the
    per-image modules once (:data:`WORKER_MODULES`), so a pool starts in milliseconds
    instead of each worker importing them again; elsewhere, spawn.
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
        ctx.set_forkserver_preload(WORKER_MODULES)
    else:  # pragma: no cover - Windows
        ctx = mp.get_context("spawn")
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=worker_start)


class LocalPoolExecutor(Executor):
    """A local process pool (``workers`` processes, default: CPU count) with crash isolation.

    A worker that dies (a decoder crash on a hostile file, the OOM killer) breaks
    the pool and fails every batch in it. Such a batch is re-run once in a fresh
    pool (most batches of a broken pool were innocent), then file by file in a
    one-worker pool, where the job that crashes it again is the guilty one: it
    gets a ``corrupt`` record and the others their real ones.
    """

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or os.cpu_count() or 1
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = process_pool(self.workers)

    @property
    def pool(self) -> ProcessPoolExecutor | None:
        """The current process pool (replaced after a crash; None after shutdown)."""
        return self._pool

    def submit(self, jobs: Sequence[VerifyJob]) -> Batch:
        # context: (the pool the batch went to, whether submitting it failed because that pool was broken)
        pool = self._pool
        try:
            if pool is None:
                raise RuntimeError("the executor was shut down")
            future = pool.submit(run_batch, list(jobs))
        except (BrokenProcessPool, RuntimeError) as exc:
            return Batch(jobs, collect=self._collect, context=(pool, isinstance(exc, BrokenProcessPool)))
        return Batch(jobs, collect=self._collect, future=future, context=(pool, False))

    def _collect(self, batch: Batch) -> list[ImageRecord]:
        pool, broken = batch.context
        if batch.future is None:
            return self.recover(batch.jobs, failed_pool=pool, broken=broken)
        try:
            return batch.future.result()
        except BrokenProcessPool:
            return self.recover(batch.jobs, failed_pool=pool, broken=True)
        except Exception:  # noqa: BLE001 - anything else that failed the batch: recover it the same way
            return self.recover(batch.jobs, failed_pool=pool, broken=False)

    def recover(self, jobs: Sequence[VerifyJob], *, failed_pool: ProcessPoolExecutor | None,
                broken: bool) -> list[ImageRecord]:
        """Records of a batch whose run failed: once more in a (fresh) pool, else job by job in isolation."""
        with self._lock:
            if broken and failed_pool is not None and self._pool is failed_pool:
                failed_pool.shutdown(wait=False, cancel_futures=False)
                self._pool = process_pool(self.workers)
            pool = self._pool
        if pool is not None:
            try:
                return pool.submit(run_batch, list(jobs)).result()
            except Exception:  # noqa: BLE001 - broken again (or shut down): isolate the jobs
                pass
        return list(self.isolate(jobs))

    def isolate(self, jobs: Sequence[VerifyJob]) -> Iterator[ImageRecord]:
        """Records of ``jobs`` run in order in a one-worker pool; a job that crashes it gets a ``corrupt`` record.

        With a single worker, jobs run strictly in order, so the first unfinished job
        when the pool breaks is the one that broke it.
        """
        import time

        pending = list(jobs)
        while pending:
            with process_pool(1) as pool:
                futures = [pool.submit(run_batch, [job]) for job in pending]
                began = time.monotonic()  # when the job now running began, near enough: when the one before it ended
                for k, fut in enumerate(futures):
                    try:
                        record = fut.result()[0]
                    except BrokenProcessPool:
                        # Ended from outside past the hard limit (a decoder that never returned), or crashed.
                        late = time.monotonic() - began >= hard_limit(pending[k].verify) * 0.9
                        yield timeout_record(pending[k].verify) if late else crash_record()
                        pending = pending[k + 1 :]
                        break
                    began = time.monotonic()
                    yield record
                else:
                    pending = []

    def shutdown(self, *, cancel: bool = False) -> None:
        """Stop the pool: wait for the batches submitted (``cancel`` False), or drop them and end the workers
        (``cancel`` True: Ctrl-C, SIGTERM, an error). Ending them is needed, not tidiness: after
        ``shutdown(wait=False, cancel_futures=True)`` on Python 3.11 the workers of a pool with queued batches were
        seen to stay waiting for work, and the interpreter's exit joins them — a build stopped by a SIGINT sent to
        its process alone printed its message and never exited (seen once on 2026-12-02, py-spy: the main thread in
        multiprocessing's exit joining the workers, the pool's manager thread waiting for results; not reproduced in
        five more tries; a terminal's Ctrl-C reaches the workers too)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is None:
            return
        pool.shutdown(wait=not cancel, cancel_futures=cancel)
        if cancel:
            end = getattr(pool, "terminate_workers", None)  # Python ≥ 3.14
            if end is not None:
                end()
                return
            for proc in list((getattr(pool, "_processes", None) or {}).values()):
                if proc.is_alive():
                    proc.terminate()


def local_executor(n_jobs: int, *, workers: int | None = None, settings: ExecutorSettings | None = None) -> Executor:
    """The ``local`` backend: a process pool, one worker per :data:`INLINE_LIMIT` jobs up to ``workers``.

    Never in the caller's process (:class:`InlineExecutor` is for tests and other
    backends): only in a worker can a decoder's stderr be captured per image, a
    decoder that never returns be ended, and a crash cost one worker.
    """
    most = workers or os.cpu_count() or 1
    return LocalPoolExecutor(max(1, min(most, (n_jobs + INLINE_LIMIT - 1) // INLINE_LIMIT)))


BACKENDS: dict[str, Callable[..., Executor] | str] = {"local": local_executor,
                                                     "ray": "dsbuild.ray_backend:ray_executor"}
"""Executor backends: name → ``factory(n_jobs, *, workers, settings) -> Executor``, or ``"module:function"`` of
one, imported on first use (Ray is imported only by a build that asks for it). The names are
:data:`dsbuild.executor_settings.BACKEND_NAMES`."""


def backend_factory(name: str) -> Callable[..., Executor]:
    """The factory of backend ``name`` (a ``"module:function"`` entry is imported now); DsbuildError if unknown."""
    import importlib

    from dsbuild.errors import DsbuildError, did_you_mean

    factory = BACKENDS.get(name)
    if factory is None:
        raise DsbuildError(f"unknown executor backend {name!r}{did_you_mean(name, BACKENDS)} — "
                           f"known: {', '.join(sorted(BACKENDS))}")
    if isinstance(factory, str):
        module, _, attr = factory.partition(":")
        factory = BACKENDS[name] = getattr(importlib.import_module(module), attr)
    return factory


def make_executor(n_jobs: int, *, workers: int | None = None, settings: ExecutorSettings | None = None) -> Executor:
    """An executor of ``settings.backend`` (default: local) sized for ``n_jobs`` jobs."""
    settings = settings or ExecutorSettings()
    return backend_factory(settings.backend)(n_jobs, workers=workers, settings=settings)


def release_backends() -> None:
    """Disconnect from whatever a backend connected to for this process (a build calls it when it ends)."""
    import sys

    ray_backend = sys.modules.get("dsbuild.ray_backend")
    if ray_backend is not None:
        ray_backend.disconnect()
