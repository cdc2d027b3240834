"""The one user-facing exception type.

Library code raises :class:`DsbuildError` when a whole command cannot go on
(bad manifest, busy catalog, missing weights, ...). Per-item failures (one bad
URL, one corrupt image) are never exceptions: they become catalog rows with a
``status`` and a ``reason``. The CLI catches ``DsbuildError`` once, prints
``Error: <message>`` to stderr and exits non-zero, with no traceback unless
``--debug`` is given.
"""

from __future__ import annotations


class DsbuildError(Exception):
    """An error the user can act on; ``str(err)`` says what happened and what to do.

    ``exit_code`` is the process exit status the CLI uses (1 by default).
    """

    exit_code: int = 1

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ManifestError(DsbuildError):
    """The manifest is invalid; the message names the dotted key path and the bad value."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=2)


class CatalogBusy(DsbuildError):
    """Another process holds the catalog (a build is running)."""


class EngineError(DsbuildError):
    """A search engine cannot go on (no network, captcha, endless pages)."""
