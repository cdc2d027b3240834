"""The catalog's writer lock: one exclusive, PID-stamped lock file beside the catalog."""

from __future__ import annotations

import os
from pathlib import Path

from dsbuild.errors import CatalogBusy


class BuildLock:
    """An exclusive, PID-stamped lock file beside the catalog, taken before any work.

    Uses ``fcntl.flock`` so the lock dies with the process (a SIGKILLed build
    never leaves a stale lock behind).
    """

    def __init__(self, catalog: Path) -> None:
        self.path = Path(str(catalog) + ".lock")
        self._fh = None

    def acquire(self) -> None:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            pid = fh.read().strip() or "?"
            fh.close()
            raise CatalogBusy(
                f"catalog {self.path.with_suffix('')} is locked by PID {pid} (a build is running) — "
                "wait for it to finish, or use another catalog with --catalog"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            import fcntl

            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "BuildLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
