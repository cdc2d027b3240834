"""The ``ray`` executor backend: per-image batches as Ray Core tasks on a cluster.

Ray is optional (``pip install 'dsbuild[ray]'``) and imported only here, only when
a build asks for it. Behind the :class:`~dsbuild.executor.Executor` interface:

* **One task per batch** (``[executor] batch_size``, default 64 images): a Ray
  Core task runs :func:`dsbuild.executor.run_batch` on a worker and returns the
  records (paths or URLs go out, records come back; bodies never pass through the
  driver). Core tasks, not Ray Data ``map_batches``: measured by
  ``bench/ray_modes.py`` (see ``docs/scale-out.md``) — the same work at a fraction
  of the driver's CPU, and a batch maps onto one task whose records come back to
  the one writer of the catalog.
* **Same per-image guarantees as the local backend**: every Ray worker process
  arms the per-image time limit and captures the C libraries' stderr per image
  (:func:`dsbuild.executor.worker_start`), so records are identical.
* **Failures cost only the batches in flight**: a task whose worker process or
  node dies is retried by Ray (:data:`TASK_RETRIES`); a batch that fails every
  time is run image by image, one task each, so the image that kills its worker
  again gets a ``corrupt`` record (``timeout`` when it died at the hard time
  limit) and the others their real records. An exception in dsbuild's own code
  on a worker (a store it cannot write) stops the build with one line.
* **Downloads on the workers**: the backend is ``remote``, so web sources send
  :class:`~dsbuild.executor.FetchJob`\\ s; a fetch task takes one CPU
  (:data:`FETCH_TASK_CPUS`): within it the downloads run in a thread while the bodies that
  arrived are verified, so the CPU is busy while the network is slow.
* **Fail fast**: an unreachable ``address`` is one line within
  :data:`CONNECT_TIMEOUT_S` seconds, never a hang.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from dsbuild.errors import DsbuildError
from dsbuild.executor import (WORKER_MODULES, Batch, Executor, FetchedImage, FetchJob, VerifyJob, crash_record, hard_limit,
                              run_batch, strip_body, timeout_record, worker_start)
from dsbuild.executor_settings import DEFAULT_RAY_BATCH, ExecutorSettings, parse_address
from dsbuild.verify.analyze import ImageRecord

INSTALL_HINT = "pip install 'dsbuild[ray]'"
TASK_RETRIES = 2
"""Ray re-runs a batch whose worker or node died this many times before it is run image by image."""
ISOLATED_RETRIES = 1
"""A one-image task is re-run once after its worker died (a node lost meanwhile is not the image's fault)."""
FETCH_TASK_CPUS = 1.0
"""CPUs a download-and-verify task reserves. Measured by ``bench/crawl.py --executor ray`` (2 cores, 500 web
images): 0.5 (two tasks per core) cost +6.2…6.7 CPU ms per image over the local backend, 1.0 cost +1.1; a task
already overlaps its downloads with its verification."""
CONNECT_TIMEOUT_S = 5.0
"""Seconds to open a TCP connection to the cluster's address before the build gives up."""
STARTUP_NOTE_S = 2.0
"""A stage says the cluster's start-up on its own line (``ray: cluster ready in 8.0 s``) when it took this long or
longer, and always when the build started a Ray runtime itself (no address); either way its per-image rate is timed from then. A local runtime took 8 s on 2 cores, and the first line
of a 300-image build said "1/300 … 16.5 s each" where the images then took ~0.01 s each."""

log = logging.getLogger("dsbuild.ray")

_STATE: dict[str, Any] = {"address": None, "ours": False, "remote": None, "download": None, "worker_ready": False}
_LOCK = threading.Lock()


def import_ray():
    """The ``ray`` module, or a DsbuildError naming the install command."""
    try:
        import ray
    except ImportError:
        raise DsbuildError(f"the ray executor needs Ray, which is not installed — {INSTALL_HINT} "
                           "(or use the local backend: --executor local)", exit_code=2) from None
    return ray


# --------------------------------------------------------------------------- connecting


def check_reachable(address: str, *, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Open (and close) a TCP connection to the cluster at ``address``; DsbuildError in one line if it cannot."""
    host_port = parse_address(address)
    if host_port is None:
        return
    host, port = host_port
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except socket.timeout:
        why = f"no answer within {timeout:g} s"
    except socket.gaierror as exc:
        why = f"unknown host ({exc.strerror or exc})"
    except OSError as exc:
        why = (exc.strerror or str(exc)).lower()
    else:
        return
    raise DsbuildError(f"cannot reach the Ray cluster at {address}: {why} — start it (`ray start --head` on the head "
                       "node) or fix [executor] address / --ray-address", exit_code=2)


def _resolve_auto() -> str | None:
    """The address ``auto`` means (RAY_ADDRESS, else the cluster ``ray start`` recorded on this machine), or None."""
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if env and env != "auto":
        return env
    try:
        from ray._private.services import canonicalize_bootstrap_address

        return canonicalize_bootstrap_address("auto")
    except Exception:  # noqa: BLE001 - no recorded cluster (or a Ray without this helper): ray.init says why
        return None


def _quiet_driver() -> None:
    """Send the raylet's notices about dead workers to dsbuild's log instead of the terminal.

    A hostile image that crashes its worker is an expected, recorded event
    (a ``corrupt`` row); Ray's driver would otherwise print a paragraph about it in
    the middle of the progress bars. The notices stay readable with ``--debug``.
    """
    try:
        from ray._private import worker as ray_worker
    except ImportError:  # pragma: no cover - another Ray layout: the notices stay as they are
        return
    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is None or getattr(original, "_dsbuild_quiet", False):
        return

    def quiet(data, ignore_prefix: bool = False, *args, **kwargs):
        if isinstance(data, dict) and data.get("pid") == "raylet":
            for line in data.get("lines", ()):
                log.debug("ray: %s", line)
            return None
        return original(data, ignore_prefix, *args, **kwargs)

    quiet._dsbuild_quiet = True  # type: ignore[attr-defined]
    ray_worker.print_to_stdstream = quiet


def connect(address: str | None, *, workers: int | None = None) -> float:
    """Connect this process to the Ray cluster at ``address`` (None: start a Ray runtime on this machine).

    Idempotent; a different address disconnects first. Returns the seconds it took to have the cluster
    ready (0.0 when this process was connected already). Raises DsbuildError (one line) when Ray is
    missing or the cluster cannot be reached.
    """
    ray = import_ray()
    began = time.monotonic()
    with _LOCK:
        if ray.is_initialized():
            if _STATE["ours"] and _STATE["address"] == address:
                return 0.0
            if not _STATE["ours"]:
                return 0.0  # the caller connected Ray itself: use that connection as it is
            ray.shutdown()
            _STATE.update(address=None, ours=False, remote=None, download=None)
        target = address
        if address == "auto":
            target = _resolve_auto()
            if target is None:
                raise DsbuildError("no running Ray cluster found for address \"auto\" — start one (`ray start --head`) "
                                   "or give its address: --ray-address HOST:6379", exit_code=2)
        if target is not None:
            check_reachable(target)
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        kwargs: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False, "configure_logging": True}
        try:
            if target is None:
                ray.init(num_cpus=workers or os.cpu_count() or 1, include_dashboard=False, **kwargs)
            else:
                ray.init(address=target, **kwargs)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            text = " ".join(str(exc).split())
            raise DsbuildError(f"cannot connect to the Ray cluster at {address or 'a local runtime'}: {text}", exit_code=2) from None
        _quiet_driver()
        _STATE.update(address=address, ours=True, remote=None, download=None)
    return time.monotonic() - began


def disconnect() -> None:
    """Disconnect from the cluster this module connected to (a local runtime it started stops)."""
    with _LOCK:
        if not _STATE["ours"]:
            return
        import ray

        if ray.is_initialized():
            ray.shutdown()
        _STATE.update(address=None, ours=False, remote=None, download=None)


# --------------------------------------------------------------------------- the task


def _ray_task(jobs: list) -> list:
    """What a Ray worker runs per batch: :func:`dsbuild.executor.run_batch`, the worker prepared once."""
    if not _STATE["worker_ready"]:
        import importlib

        for name in WORKER_MODULES:  # as the local forkserver does: no image pays for an import under its time limit
            importlib.import_module(name)
        worker_start()
        _STATE["worker_ready"] = True
    return run_batch(jobs)


def _remote():
    """The Ray remote function of :func:`_ray_task` (made once per connection)."""
    if _STATE["remote"] is None:
        ray = import_ray()
        _STATE["remote"] = ray.remote(_ray_task)
    return _STATE["remote"]


def _task_cpus(jobs: Sequence) -> float:
    return FETCH_TASK_CPUS if any(isinstance(job, FetchJob) for job in jobs) else 1.0


# --------------------------------------------------------------------------- the executor


class RayExecutor(Executor):
    """Batches as Ray Core tasks on the cluster of ``settings.address`` (see the module doc)."""

    remote = True

    def __init__(self, settings: ExecutorSettings, *, workers: int | None = None) -> None:
        self.startup_s = connect(settings.address, workers=workers)
        ray = import_ray()
        self.settings = settings
        self.batch_size = settings.batch_size or DEFAULT_RAY_BATCH
        cpus = int(ray.cluster_resources().get("CPU", 1)) or 1
        self.workers = max(1, int(cpus / min(FETCH_TASK_CPUS, 1.0)))  # task slots: what map() keeps in flight (×4)
        self._refs: set = set()
        self._lock = threading.Lock()

    def startup_note(self) -> str | None:
        started_here = self.startup_s > 0 and self.settings.address is None
        if self.startup_s < STARTUP_NOTE_S and not started_here:
            return None
        return f"ray: cluster ready in {self.startup_s:.1f} s"

    def submit(self, jobs: Sequence[VerifyJob | FetchJob]) -> Batch:
        jobs = list(jobs)
        ref = _remote().options(num_cpus=_task_cpus(jobs), max_retries=TASK_RETRIES,
                                retry_exceptions=False).remote(jobs)
        with self._lock:
            self._refs.add(ref)
        future = ref.future()
        future.add_done_callback(lambda _f, ref=ref: self._forget(ref))
        return Batch(jobs, collect=self._collect, future=future, context=ref)

    def _forget(self, ref) -> None:
        with self._lock:
            self._refs.discard(ref)

    def _collect(self, batch: Batch) -> list:
        ray = import_ray()
        try:
            return batch.future.result()
        except ray.exceptions.RayTaskError as exc:
            raise worker_error(exc) from None
        except ray.exceptions.TaskCancelledError:
            raise DsbuildError("the build was cancelled while Ray tasks were running — run the same command to resume") from None
        except ray.exceptions.RayError as exc:  # the worker or its node died TASK_RETRIES + 1 times: image by image
            log.debug("batch of %d failed on Ray (%s): isolating its images", len(batch.jobs), type(exc).__name__)
            return list(self.isolate(batch.jobs))

    def isolate(self, jobs: Sequence[VerifyJob | FetchJob]) -> Iterator[ImageRecord | FetchedImage]:
        """Records of ``jobs``, each run alone in its own task; one that kills its worker again gets a
        ``corrupt`` record (``timeout`` when it ran to the hard time limit). A FetchJob downloads first,
        in a task that does not decode, so its fetch row is the real one whatever the body does."""
        for job in jobs:
            if isinstance(job, FetchJob):
                yield self._isolate_fetch(job)
            else:
                yield self._isolate_one(job)

    def _isolate_one(self, job: VerifyJob) -> ImageRecord:
        ray = import_ray()
        began = time.monotonic()
        ref = _remote().options(num_cpus=1, max_retries=ISOLATED_RETRIES, retry_exceptions=False).remote([job])
        try:
            return ray.get(ref)[0]
        except ray.exceptions.RayTaskError as exc:
            raise worker_error(exc) from None
        except ray.exceptions.RayError:
            late = time.monotonic() - began >= hard_limit(job.verify) * 0.9
            return timeout_record(job.verify) if late else crash_record()

    def _isolate_fetch(self, job: FetchJob) -> FetchedImage:
        ray = import_ray()
        if _STATE.get("download") is None:
            _STATE["download"] = ray.remote(download_only)
        ref = _STATE["download"].options(num_cpus=FETCH_TASK_CPUS, max_retries=ISOLATED_RETRIES,
                                         retry_exceptions=False).remote(job)
        try:
            res = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            raise worker_error(exc) from None
        if not res.ok or res.data is None:
            return FetchedImage(strip_body(res), None)
        rec = self._isolate_one(VerifyJob(job.key, res.data, job.verify, job.dedup, job.store_dir))
        return FetchedImage(strip_body(res), rec)

    def shutdown(self, *, cancel: bool = False) -> None:
        if not cancel:
            return
        ray = import_ray()
        with self._lock:
            refs, self._refs = list(self._refs), set()
        for ref in refs:
            try:
                ray.cancel(ref)
            except Exception:  # noqa: BLE001 - already finished or its worker gone: nothing to cancel
                pass


def ray_executor(n_jobs: int, *, workers: int | None = None, settings: ExecutorSettings | None = None) -> RayExecutor:
    """The ``ray`` backend's factory (:data:`dsbuild.executor.BACKENDS`): ``n_jobs`` does not size a cluster."""
    return RayExecutor(settings or ExecutorSettings(backend="ray"), workers=workers)


def download_only(job: FetchJob):
    """The download of one FetchJob, body kept in memory up to ``verify.max_bytes`` (isolation: nothing decodes here)."""
    import dataclasses
    from pathlib import Path

    from dsbuild.fetch import FetchRequest, fetch_all

    settings = dataclasses.replace(job.fetch, concurrency=1)
    results = fetch_all([FetchRequest(job.url, key=job.key)], settings=settings,
                        dest_dir=Path(job.store_dir) / ".incoming", in_memory=max(job.verify.max_bytes, settings.max_bytes))
    return results[0]


def worker_error(exc: BaseException) -> DsbuildError:
    """One line for an exception raised by dsbuild's own code on a Ray worker (not by an image: those are records)."""
    cause = getattr(exc, "cause", None) or exc
    if isinstance(cause, DsbuildError):
        return DsbuildError(f"on a Ray worker: {cause}")
    text = " ".join(str(cause).split()) or type(cause).__name__
    if len(text) > 300:
        text = text[:297] + "..."
    return DsbuildError(f"a Ray worker failed: {type(cause).__name__}: {text} — every worker must reach the store "
                        "and the source folders at the same paths as this machine")
