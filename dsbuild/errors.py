"""The one user-facing exception type.

Library code raises :class:`DsbuildError` when a whole command cannot go on
(bad manifest, busy catalog, missing weights, ...). Per-item failures (one bad
URL, one corrupt image) are never exceptions: they become catalog rows with a
``status`` and a ``reason``. The CLI catches ``DsbuildError`` once, prints
``Error: <message>`` to stderr and exits non-zero, with no traceback unless
``--debug`` is given.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


class DsbuildError(Exception):
    """An error the user can act on; ``str(err)`` says what happened and what to do.

    ``exit_code`` is the process exit status the CLI uses (1 by default). ``in_app``: the same error as the
    review app (``dsbuild ui``) says it, where what to do differs there (pick another label, reload the
    page, wait: the page retries) from the command line's "fix it and run again"; None: the message as is.
    """

    exit_code: int = 1
    in_app: str | None = None

    def __init__(self, message: str, *, exit_code: int = 1, in_app: str | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.in_app = in_app


class ManifestError(DsbuildError):
    """The manifest is invalid; the message names the dotted key path and the bad value."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=2)


@dataclass(frozen=True)
class Problem:
    """One bad value of a settings table: ``field`` ("" for the table itself) and what is wrong with it.

    ``message`` reads after the key (``"must be an integer ≥ 1, got 0"``): the manifest
    shows ``datasets.NAME.fetch.concurrency: must be an integer ≥ 1, got 0``.
    """

    field: str
    message: str
    sep: str = " "

    def __str__(self) -> str:
        return f"{self.field}{self.sep}{self.message}" if self.field else self.message


class SettingsError(DsbuildError, ValueError):
    """A stage's frozen settings were given bad values (every problem at once, in ``problems``).

    Raised by the settings classes themselves (:class:`dsbuild.fetch_settings.FetchSettings`,
    :class:`dsbuild.model.settings.ModelSettings`, ...); the manifest catches it at load
    and reports each problem under its dotted key path.
    """

    exit_code = 2

    def __init__(self, problems: list[Problem], *, table: str | None = None) -> None:
        self.problems = list(problems)
        where = f" — fix it in the dataset's [{table}] table" if table else ""
        super().__init__("; ".join(str(p) for p in self.problems) + where, exit_code=2)


def check(problems: list[Problem], *, table: str | None = None) -> None:
    """Raise :class:`SettingsError` when ``problems`` is not empty (a settings class's ``__post_init__`` ends with it)."""
    if problems:
        raise SettingsError(problems, table=table)


class CatalogBusy(DsbuildError):
    """Another process holds the catalog (a build, a training, the review app...; the message names it)."""


class EngineError(DsbuildError):
    """A search engine cannot go on (no network, captcha, endless pages)."""


class Terminated(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM). A :class:`KeyboardInterrupt`, so every stage that keeps
    its finished work and marks itself interrupted on Ctrl-C does the same here."""


_terminated = False


def note_terminated() -> None:
    """Record that SIGTERM arrived (its handler calls this before raising :class:`Terminated`), so that a stop a
    library swallowed and turned into its own error (:func:`lost_stop`) is raised again as what it was."""
    global _terminated
    _terminated = True


def lost_stop() -> KeyboardInterrupt:
    """The stop to raise for one a library caught and reported as its own error (DuckDB's "Query interrupted"):
    :class:`Terminated` once SIGTERM has arrived in this process, else :class:`KeyboardInterrupt` (Ctrl-C)."""
    return Terminated() if _terminated else KeyboardInterrupt()


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice closest to ``word``: one that differs only in case, else :func:`difflib.get_close_matches`'s
    best at its default cut-off (0.6); None when nothing is close."""
    import difflib

    options = sorted({str(c) for c in choices})
    folded = {c.casefold(): c for c in options}
    if word.casefold() in folded and word not in options:
        return folded[word.casefold()]
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(word: str, choices: Iterable[str], *, prefix: str = "") -> str:
    """`` (did you mean 'x'?)`` for the :func:`closest` of ``choices`` to ``word``, else ``""``.

    The one did-you-mean of dsbuild's messages (manifest keys, engines, labels, actions,
    named queries, architectures...). ``prefix`` goes before the suggestion (``@`` for
    named queries).
    """
    close = closest(word, choices)
    return f" (did you mean '{prefix}{close}'?)" if close else ""


def cause_chain(err: BaseException, *, limit: int = 32) -> Iterator[BaseException]:
    """``err`` and every exception behind it: ``__cause__``, ``__context__``, a ``reason`` attribute
    (urllib3's ``MaxRetryError`` keeps the real cause there) and exceptions passed as arguments.

    Each exception once (cycles are possible), at most ``limit``.
    """
    seen: set[int] = set()
    stack: list[BaseException | None] = [err]
    while stack and len(seen) < limit:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        reason = getattr(e, "reason", None)
        stack.extend([e.__cause__, e.__context__, reason if isinstance(reason, BaseException) else None])
        stack.extend(a for a in getattr(e, "args", ()) if isinstance(a, BaseException))
