"""What engines take and give: options, links, outcomes, link streams, filter specs.

An engine discovers links for a query (:class:`dsbuild.sources.urls.Link`, re-exported
here) under :class:`EngineOptions`, and says how the query ended with an
:class:`Outcome` (one of :data:`STOP_REASONS`).
"""

from __future__ import annotations

import re
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from dsbuild.errors import DsbuildError, did_you_mean
from dsbuild.sources.urls import Link

__all__ = ["STOP_REASONS", "EngineOptions", "FilterSpec", "Link", "LinkStream", "Outcome", "SearchResult",
           "validate_filters"]


@dataclass(frozen=True, kw_only=True)
class EngineOptions:
    """Per-dataset engine settings (from the manifest).

    limit: links wanted per query (default 100, ≥ 1).
    adult_filter: ask the engine for safe results (default True).
    filters: engine filters, e.g. ``{"size": "large", "type": "photo"}``; the
        names and values each engine accepts are in ``Engine.filter_choices``.
    endpoint: base URL that replaces the engine's real host (tests, mirrors).
    timeout: seconds allowed for one results page, connect + read, wall-clock.
    max_pages: results pages fetched per query at most (default 50).
    allow_private_hosts: allow a loopback/private ``endpoint`` (and greedy site).
    api_key_env: environment variable holding the Flickr API key.
    """

    limit: int = 100
    adult_filter: bool = True
    filters: Mapping[str, str] = field(default_factory=dict)
    endpoint: str | None = None
    timeout: float = 10.0
    max_pages: int = 50
    allow_private_hosts: bool = False
    api_key_env: str = "FLICKR_API_KEY"

    def __post_init__(self) -> None:
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1:
            raise DsbuildError(f"engine limit must be a whole number ≥ 1, not {self.limit!r} — fix `per_query`")
        if isinstance(self.max_pages, bool) or not isinstance(self.max_pages, int) or self.max_pages < 1:
            raise DsbuildError(f"engine max_pages must be a whole number ≥ 1, not {self.max_pages!r}")
        if not isinstance(self.timeout, (int, float)) or not self.timeout > 0:
            raise DsbuildError(f"engine timeout must be a positive number of seconds, not {self.timeout!r}")
        if not isinstance(self.filters, Mapping):
            raise DsbuildError(f"engine filters must be a table of name = value, not {self.filters!r}")


# Stop reasons (short, GROUP BY friendly). ``ok`` ones are normal ends of a query.
STOP_REASONS = ("limit", "exhausted", "no_results", "repeated_page", "max_pages", "blocked", "error")
_OK_REASONS = frozenset({"limit", "exhausted", "no_results", "repeated_page", "max_pages"})


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """How one query ended.

    reason: one of :data:`STOP_REASONS`.
    message: one human line saying what happened (and what to do when not ok).
    pages: results pages fetched; links: links yielded; skipped: malformed or
    non-http(s) links the engine returned and that were dropped.
    """

    reason: str
    message: str
    pages: int = 0
    links: int = 0
    skipped: int = 0

    @property
    def ok(self) -> bool:
        """False for ``blocked`` and ``error``: the query ended early for a reason worth showing."""
        return self.reason in _OK_REASONS


@dataclass(frozen=True, kw_only=True)
class SearchResult:
    """All links of one query (in rank order) and how the query ended."""

    links: tuple[Link, ...]
    outcome: Outcome


class LinkStream(Iterator[Link]):
    """An iterator of links; ``outcome`` is set once the iteration has ended.

    >>> stream = engine.links("cats", options)      # doctest: +SKIP
    >>> urls = [link.url for link in stream]        # doctest: +SKIP
    >>> stream.outcome.reason                       # doctest: +SKIP
    'limit'
    """

    def __init__(self, gen: Generator[Link, None, Outcome]) -> None:
        self._gen = gen
        self.outcome: Outcome | None = None

    def __iter__(self) -> LinkStream:
        return self

    def __next__(self) -> Link:
        try:
            return next(self._gen)
        except StopIteration as stop:
            self.outcome = stop.value
            raise

    def close(self) -> None:
        """Stop early (closes the underlying HTTP session)."""
        self._gen.close()


# --------------------------------------------------------------------------- filters


@dataclass(frozen=True)
class FilterSpec:
    """Allowed values of one engine filter: fixed ``choices`` and/or a ``pattern``.

    ``pattern_help`` describes the pattern in error messages (e.g. ``>WxH``).
    """

    choices: tuple[str, ...] = ()
    pattern: str | None = None
    pattern_help: str = ""

    def allows(self, value: str) -> bool:
        return value in self.choices or (self.pattern is not None and re.fullmatch(self.pattern, value) is not None)

    def describe(self) -> str:
        parts = list(self.choices) + ([self.pattern_help] if self.pattern_help else [])
        return ", ".join(parts)


def validate_filters(engine: str, specs: Mapping[str, FilterSpec], filters: Mapping[str, Any]) -> None:
    """Raise DsbuildError naming the allowed filters/values when ``filters`` has a bad entry."""
    for name, value in filters.items():
        if name not in specs:
            allowed = ", ".join(specs) if specs else "none"
            raise DsbuildError(
                f"engine '{engine}' has no filter '{name}'{did_you_mean(name, specs)} — "
                f"its filters are: {allowed} (fix `filters` in the manifest)"
            )
        spec = specs[name]
        if not isinstance(value, str) or not spec.allows(value):
            raise DsbuildError(
                f"filter {name} = {value!r} is not valid for engine '{engine}'"
                f"{did_you_mean(str(value), spec.choices)} — allowed: {spec.describe()}"
            )
