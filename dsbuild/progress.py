"""The progress protocol every long stage reports through, and its silent implementation.

A stage opens ``progress.stage(name, total)`` (a context manager whose
``advance(n, **counts)`` moves the bar and shows counts such as ``ok 12``) and
may add a line with ``progress.note(text)``. The CLI passes rich progress bars
(:class:`dsbuild.render.console.RichProgress`); the library, tests and
benchmarks pass nothing and get :class:`Progress`, which shows nothing.
"""

from __future__ import annotations

from typing import Any


class StageProgress:
    """One stage's bar: ``advance(n, **counts)``; silent here."""

    def advance(self, n: int = 1, **counts: int) -> None:
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
