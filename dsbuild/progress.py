"""The progress protocol every long stage reports through, and its silent implementation.

A stage opens ``progress.stage(name, total)`` (a context manager whose
``advance(n, **counts)`` moves the bar and shows counts such as ``ok 12``, and ``skip(n, **counts)`` moves it
for items that took no work — reused, cached — which the per-item rate leaves out) and
may add a line with ``progress.note(text)``. The CLI passes rich progress bars
(:class:`dsbuild.render.console.RichProgress`); the library, tests and
benchmarks pass nothing and get :class:`Progress`, which shows nothing.

A build also passes every stage through :class:`LiveProgress`, which keeps a
small JSON file beside the catalog: ``dsbuild status`` shows it while the build
holds the catalog (a long build on a Ray cluster included).
"""

from __future__ import annotations

from typing import Any


class StageProgress:
    """One stage's bar: ``advance(n, **counts)``; silent here.

    ``ready(note)``: the stage's workers can take work from now on — what came before was start-up (a Ray
    cluster starting or connecting), so the per-item rate is timed from here; ``note`` (None: nothing) says
    the start-up on its own line, once.
    """

    def advance(self, n: int = 1, **counts: int) -> None:
        pass

    def skip(self, n: int = 1, **counts: int) -> None:
        """``n`` items done without work here (reused from an earlier build, cached): the bar moves, the per-item
        rate does not count them (trial 9: a stage reused whole said "1,076,862/s"). Here: :meth:`advance`."""
        self.advance(n, **counts)

    def ready(self, note: str | None = None) -> None:
        pass

    def __enter__(self) -> "StageProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class Progress:
    """Progress callbacks: ``stage(name, total)`` → a :class:`StageProgress`, ``note(text)``. Silent here."""

    def stage(self, name: str, total: int | None) -> StageProgress:
        return StageProgress()

    def note(self, text: str) -> None:
        pass


def silent(progress: Any = None) -> Any:
    """``progress``, or a silent :class:`Progress` when it is None."""
    return progress if progress is not None else Progress()


# --------------------------------------------------------------------------- what a running build shows to `status`

LIVE_INTERVAL_S = 1.0
"""A running build rewrites its live progress file at most this often (and at every stage's end)."""


def live_path(catalog) -> "Path":
    """The live progress file of a build of ``catalog``: ``<catalog>.progress.json``, beside its lock file."""
    from pathlib import Path

    return Path(str(catalog) + ".progress.json")


class LiveProgress(Progress):
    """Passes every call on to ``inner`` and keeps the build's stages in a small JSON file that ``dsbuild status``
    reads while the build holds the catalog (:func:`read_live`).

    The file: ``{"pid", "build_id", "started", "updated", "executor", "stages": [{"name", "total", "done",
    "counts", "finished"}]}``, rewritten through a temp file and a rename at most every
    :data:`LIVE_INTERVAL_S` seconds; :meth:`close` removes it.
    """

    def __init__(self, inner: Progress, path, *, build_id: int, executor: str) -> None:
        import os
        import threading
        import time
        from datetime import datetime, timezone

        self.inner, self.path = inner, path
        self.state: dict[str, Any] = {"pid": os.getpid(), "build_id": build_id, "executor": executor,
                                      "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                      "updated": None, "stages": []}
        self._lock = threading.Lock()
        self._written = 0.0
        self._clock = time.monotonic
        self.write(force=True)

    def stage(self, name: str, total: int | None) -> StageProgress:
        record = {"name": name, "total": total, "done": 0, "counts": {}, "finished": False}
        with self._lock:
            self.state["stages"].append(record)
        return _LiveStage(self, self.inner.stage(name, total), record)

    def note(self, text: str) -> None:
        self.inner.note(text)

    def write(self, *, force: bool = False) -> None:
        """Rewrite the file (at most every LIVE_INTERVAL_S unless ``force``); a failed write is ignored: the
        build never stops because ``status`` cannot be told about it."""
        import json
        import os
        from datetime import datetime, timezone

        now = self._clock()
        if not force and now - self._written < LIVE_INTERVAL_S:
            return
        self._written = now
        with self._lock:
            self.state["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            text = json.dumps(self.state)
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, self.path)
        except OSError:
            pass

    def close(self) -> None:
        import os

        try:
            os.unlink(self.path)
        except OSError:
            pass


class _LiveStage(StageProgress):
    def __init__(self, live: LiveProgress, inner: StageProgress, record: dict) -> None:
        self.live, self.inner, self.record = live, inner, record

    def ready(self, note: str | None = None) -> None:
        self.inner.ready(note)

    def advance(self, n: int = 1, **counts: int) -> None:
        self.inner.advance(n, **counts)
        self._moved(n, counts)

    def skip(self, n: int = 1, **counts: int) -> None:
        self.inner.skip(n, **counts)
        self._moved(n, counts)

    def _moved(self, n: int, counts: dict) -> None:
        self.record["done"] += n
        if counts:
            self.record["counts"] = dict(counts)
        self.live.write()

    def __enter__(self) -> "_LiveStage":
        self.inner.__enter__()
        self.live.write(force=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.record["finished"] = True
        self.live.write(force=True)
        self.inner.__exit__(*exc)


def read_live(catalog) -> dict | None:
    """The live progress of the build running on ``catalog`` (see :class:`LiveProgress`), or None when no
    build of this machine is running (no file, or the process that wrote it is gone)."""
    import json
    import os

    try:
        state = json.loads(live_path(catalog).read_text(encoding="utf-8"))
        os.kill(int(state["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return state
