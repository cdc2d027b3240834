"""The catalog's writer lock, and how a process that keeps the catalog open gives it up.

:class:`BuildLock` is one exclusive, PID-stamped lock file beside the catalog
(``dsbuild.duckdb.lock``), taken by every writer before any work.

The lock file names its holder: ``"<pid>"`` and, on a second line, the command that holds
it (``dsbuild mislabels``), so a refused command says who has the catalog and why
(:func:`lock_holder`).

A long-running process that keeps the catalog open between short writes — the review
app, through :class:`~dsbuild.catalog.held.HeldCatalog` — takes the lock with
``yields=True``: the lock file then reads ``"<pid> yields"``. Another dsbuild process
that finds the catalog busy (the lock taken, or DuckDB's file lock held) and sees a
yielding holder asks it to let go by touching ``dsbuild.duckdb.want``
(:func:`ask_holder_to_yield`) and retries for up to :data:`YIELD_WAIT_S`; the holder
watches that file and closes the catalog within a few tens of milliseconds. A holder
that does not yield — a build, a training run — is reported busy at once, as before.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, TypeVar

from dsbuild.errors import CatalogBusy

YIELD_WAIT_S = 5.0
"""How long a process waits for a yielding holder (the review app) to give the catalog up (seconds)."""
RETRY_S = 0.02
"""Pause between attempts while waiting for a yielding holder (seconds)."""
ORPHAN_WAIT_S = 5.0
"""How long :meth:`BuildLock.acquire` waits when the lock is held but the process that took it is gone (seconds).

A killed holder's lock can outlive it briefly: measured on Linux 6.18, a process SIGKILLed while holding the
lock still held it after its parent had reaped it in 3 of 100 kills (up to 2.5 ms; 8 ms once under load), and
in 4 of 100 when it was starting a forkserver pool (up to 7 ms): a child forked and not yet exec'd (how
multiprocessing starts its forkserver and resource tracker) shares the open lock file until its exec closes it.
The next command, started at once (a test, a script, a user's retry), was refused: "locked by PID …" naming a
process no longer running. The lock is not the dead holder's then, and goes within milliseconds."""

YIELDS = "yields"

T = TypeVar("T")


def lock_path(catalog: Path) -> Path:
    """The lock file of ``catalog`` (``<catalog>.lock``)."""
    return Path(str(catalog) + ".lock")


def want_path(catalog: Path) -> Path:
    """The file another process touches to ask a yielding holder for ``catalog`` (``<catalog>.want``)."""
    return Path(str(catalog) + ".want")


def _parse_holder(text: str) -> tuple[str, bool, str | None]:
    """``(pid, yields, command)`` from a lock file's text: ``"<pid>"``, ``"<pid> yields"`` or ``"<pid>\n<command>"``."""
    lines = text.splitlines()
    first = lines[0].split() if lines else []
    command = lines[1].strip() if len(lines) > 1 else ""
    return (first[0] if first else "?"), first[1:] == [YIELDS], command or None


def lock_holder(catalog: Path) -> tuple[str, bool, str | None]:
    """``(pid, yields, command)`` of the last process to take ``catalog``'s lock; ``("?", False, None)`` when unknown.

    ``command``: what it runs (``"dsbuild train"``), None for a holder that did not say
    (a yielding review app, an older dsbuild). The lock file keeps its text after release;
    callers ask only after finding the catalog busy, when the text names the process that
    holds it (or held it last).
    """
    try:
        return _parse_holder(lock_path(catalog).read_text())
    except (OSError, UnicodeDecodeError):
        return "?", False, None


def holder_yields(catalog: Path) -> bool:
    """True when the last process to take ``catalog``'s lock took it as a yielding holder (see :func:`lock_holder`)."""
    return lock_holder(catalog)[1]


def running(command: str | None) -> str:
    """``"dsbuild train is running"`` for a lock holder's command; a neutral phrase when it is not known."""
    return f"{command} is running" if command else "another dsbuild command is running"


def ask_holder_to_yield(catalog: Path) -> None:
    """Touch ``<catalog>.want`` (best effort: a read-only folder only means nobody is asked)."""
    path = want_path(catalog)
    try:
        path.touch()
        os.utime(path)
    except OSError:
        pass


def retry_while_yielding(catalog: Path, attempt: Callable[[], T], *, is_busy: Callable[[BaseException], bool],
                         wait_s: float = YIELD_WAIT_S) -> T:
    """``attempt()``; while it fails busy because a yielding holder has ``catalog``, ask it to let go and retry.

    Any other failure, or a busy holder that does not yield, is raised at once; a yielding
    holder that has not let go after ``wait_s`` seconds raises the last error.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return attempt()
        except Exception as exc:
            if not is_busy(exc) or not holder_yields(catalog) or time.monotonic() > deadline:
                raise
        ask_holder_to_yield(catalog)
        time.sleep(RETRY_S)


class _Orphaned(Exception):
    """The lock is held, but the process that took it has exited (see :data:`ORPHAN_WAIT_S`)."""


def _exited(pid: str) -> bool:
    """Whether ``pid`` (a lock file's) names a process that is gone: none of that number, or a zombie (ended, not
    reaped yet); False when not a number, or alive."""
    if not pid.isdigit() or int(pid) <= 0:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # another user's process: alive
        return False
    try:  # Linux: a zombie's state is Z (after the command name, which may hold spaces and parentheses)
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except (OSError, IndexError):
        return False


class BuildLock:
    """An exclusive, PID-stamped lock file beside the catalog, taken before any work.

    Uses ``fcntl.flock`` so the lock dies with the process (a SIGKILLed build
    never leaves a stale lock behind) — within milliseconds of the process's end, not always before its parent
    reaps it, and only once every process sharing the open lock file (a child forked in the instant of the kill)
    has let go: :meth:`acquire` waits up to :data:`ORPHAN_WAIT_S` while the PID the lock file names is gone.
    ``yields=True`` marks the holder as one that
    gives the catalog up when asked (see the module docstring); :meth:`acquire` waits up
    to :data:`YIELD_WAIT_S` for such a holder and fails at once on any other.
    ``command``: what the holder runs, for other processes' messages (``"dsbuild build"``;
    one line).
    """

    def __init__(self, catalog: Path, *, yields: bool = False, command: str | None = None) -> None:
        self.catalog = Path(catalog)
        self.path = lock_path(catalog)
        self.yields = yields
        self.command = " ".join(command.split()) if command else None
        self._fh = None

    def acquire(self) -> None:
        deadline = time.monotonic() + ORPHAN_WAIT_S
        while True:
            try:
                self._fh = retry_while_yielding(self.catalog, lambda: self._try_acquire(orphan_wait=True),
                                                is_busy=lambda e: isinstance(e, CatalogBusy), wait_s=YIELD_WAIT_S)
                return
            except _Orphaned:
                if time.monotonic() > deadline:
                    self._fh = self._try_acquire(orphan_wait=False)  # the last try: refused with the holder named
                    return
                time.sleep(RETRY_S)

    def _try_acquire(self, *, orphan_wait: bool = False):
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            pid, yields, command = _parse_holder(fh.read())
            fh.close()
            gone = _exited(pid)
            if gone and orphan_wait:
                raise _Orphaned() from None  # acquire waits for what inherited the lock to let go
            if gone:
                locked = (f"catalog {self.catalog} is locked, but PID {pid} that took the lock "
                          f"({command or 'dsbuild'}) is no longer running: a process it started still holds the lock file {self.path}")
                raise CatalogBusy(f"{locked} — wait for that process to end (`fuser -v {self.path}` names it), "
                                  "or use another catalog with --catalog",
                                  in_app=f"{locked} — wait for that process to end") from None
            if yields:
                held = (f"catalog {self.catalog} is held by the review app (`dsbuild ui`, PID {pid}), which did not "
                        f"give it up within {YIELD_WAIT_S:g} s")
                # In a review app the page retries by itself: only the other app is to stop.
                raise CatalogBusy(f"{held} — try again, or stop the app",
                                  in_app=f"{held} — stop that app to go on") from None
            locked = f"catalog {self.catalog} is locked by PID {pid} ({running(command)})"
            raise CatalogBusy(f"{locked} — wait for it to finish, or use another catalog with --catalog",
                              in_app=f"{locked} — wait for it to finish") from None
        fh.seek(0)
        fh.truncate()
        # First line as before ("<pid>" / "<pid> yields"): an older dsbuild still reads the pid and the yield mark.
        if self.yields:
            fh.write(f"{os.getpid()} {YIELDS}")
        else:
            fh.write(f"{os.getpid()}\n{self.command}" if self.command else str(os.getpid()))
        fh.flush()
        return fh

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
