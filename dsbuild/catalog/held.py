"""A read-write catalog connection kept open between short writes, given up when asked.

The review app writes one label event per key press. Opening the DuckDB file for each
(connect, check the schema, close with a checkpoint) costs ≈25 ms on a 10,000-image catalog, as
much as a whole decision on an open connection (bench/ui.py: keypress → committed p95 36 ms held,
198 ms opening the file per decision with the views' reads), so the app keeps one
read-write connection — and the writers' :class:`~dsbuild.catalog.lock.BuildLock`, taken
as a *yielding* holder — while decisions come. DuckDB lets one process hold a file
read-write, so it must not keep other dsbuild processes out: a ``status``, ``query``,
``review`` or ``build`` that finds the file busy touches ``<catalog>.want``
(:func:`~dsbuild.catalog.lock.ask_holder_to_yield`) and retries; a watcher thread here
sees that within :data:`POLL_S` and closes the connection. The next decision opens it
again. With nobody asking, the connection is closed after :data:`IDLE_S` without a
decision anyway, so tools that do not know this protocol (a DuckDB shell, a notebook)
find the file free while the reviewer pauses.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from dsbuild.catalog.db import Catalog, open_for_writing
from dsbuild.catalog.lock import YIELD_WAIT_S, BuildLock, want_path

IDLE_S = 5.0
"""A held connection is closed after this long without use (seconds)."""
POLL_S = 0.02
"""How often the watcher looks for a request to let go (seconds)."""
WANT_FRESH_S = 0.25
"""After letting go, the holder opens again only once nobody has asked for this long (seconds), so a
waiting process gets its turn instead of losing the race to the next decision."""


class HeldCatalog:
    """The catalog at ``path``, opened read-write on first use and kept open until asked for or idle.

    :meth:`writing` yields the open :class:`Catalog` (opening it and taking the lock when not
    held: raises :class:`~dsbuild.errors.CatalogBusy` while a build holds the lock, or a reader
    holds the file for more than :data:`~dsbuild.catalog.db.OPEN_WAIT_S`). :meth:`using` yields the
    held connection or None, for reads. Every use is serialised by one lock, which the watcher
    thread takes too, so a connection is never closed under a caller. Call :meth:`close` at exit.
    """

    def __init__(self, path: Path, *, idle_s: float = IDLE_S, poll_s: float = POLL_S) -> None:
        self.path = Path(path)
        self.idle_s = idle_s
        self.poll_s = poll_s
        self.lock = threading.RLock()
        self._cat: Catalog | None = None
        self._build_lock: BuildLock | None = None
        self._held_since_ns = 0
        self._last_use = 0.0
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self.opened = 0  # how many times the connection was opened (the benchmark and tests read it)
        self.yielded = 0  # how many times it was given up because another process asked

    @property
    def held(self) -> bool:
        return self._cat is not None

    @contextmanager
    def writing(self) -> Iterator[Catalog]:
        """The read-write catalog, held (opened now if it is not)."""
        with self.lock:
            if self._cat is None:
                self._open()
            try:
                yield self._cat
            finally:
                self._last_use = time.monotonic()

    @contextmanager
    def using(self) -> Iterator[Catalog | None]:
        """The held connection (None when not held), under the lock: for reads between decisions."""
        with self.lock:
            try:
                yield self._cat
            finally:
                if self._cat is not None:
                    self._last_use = time.monotonic()

    def release(self) -> None:
        """Close the connection and release the writers' lock now (a no-op when not held)."""
        with self.lock:
            cat, lock, self._cat, self._build_lock = self._cat, self._build_lock, None, None
            try:
                if cat is not None:
                    cat.close()
            finally:
                if lock is not None:
                    lock.release()

    def close(self) -> None:
        """Stop the watcher and release the catalog."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=2)
        self.release()

    # -- inside ------------------------------------------------------------------------------

    def _asked_since(self, ns: int) -> bool:
        try:
            return want_path(self.path).stat().st_mtime_ns > ns
        except OSError:
            return False

    def _open(self) -> None:
        # A process that asked for the file moments ago gets its turn first.
        deadline = time.monotonic() + YIELD_WAIT_S
        while self._asked_since(time.time_ns() - int(WANT_FRESH_S * 1e9)) and time.monotonic() < deadline:
            time.sleep(self.poll_s)
        lock, cat = open_for_writing(self.path, yields=True)
        self._cat, self._build_lock = cat, lock
        self._held_since_ns = time.time_ns()
        self._last_use = time.monotonic()
        self.opened += 1
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name="dsbuild-held-catalog", daemon=True)
            self._watcher.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            if self._cat is None or not self.lock.acquire(blocking=False):
                continue  # nothing held, or a decision is being written: look again soon
            try:
                if self._cat is None:
                    continue
                if self._asked_since(self._held_since_ns):
                    self.yielded += 1
                    self.release()
                elif time.monotonic() - self._last_use > self.idle_s:
                    self.release()
            finally:
                self.lock.release()
