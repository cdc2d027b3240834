"""The engine interface: :class:`Engine`, the base class of every link-discovery engine.

An engine only *discovers* image links for a query; it never downloads an
image (the build pipeline downloads them with :mod:`dsbuild.fetch`).

How a query ends is part of the result, never an endless loop. Every engine
stops on: the per-query ``limit``; an empty results page (``no_results`` /
``exhausted``); a captcha / robot-check / rate-limit page (``blocked``); a
page that brings no new link (``repeated_page``, e.g. Bing serving its last
page forever); ``max_pages``; an HTTP error after retries (``error``). The
reason is an :class:`Outcome` the build records per query, so one blocked
query never stops the others.

Only two situations raise, because no query of the engine can succeed:

* the engine host (its endpoint, or its real origin) cannot be reached at all before it answered anything
  (no network, DNS failure, connection refused, TLS failure) → :class:`~dsbuild.errors.EngineError` with
  one line, e.g. ``cannot reach www.bing.com (no network?) — check your connection or set `endpoint```;
  the build sends no more queries to that endpoint. A host that cannot be reached after the engine
  answered (a redirect target, the engine going away mid-query) or a greedy site (without an endpoint each
  query is its own site) ends that query only, with an ``error`` outcome naming the host;
* the engine is mis-configured (unknown filter, private endpoint without
  ``allow_private_hosts``, missing Flickr API key, rejected API key) →
  :class:`~dsbuild.errors.DsbuildError` / ``EngineError``.

Each engine's real host can be replaced by ``EngineOptions.endpoint`` (a base
URL such as ``http://127.0.0.1:8765``): every request to the engine's origin
is re-based onto it, so tests talk to a loopback fake engine serving pages in
the engine's real format. Loopback/private endpoints are refused unless
``allow_private_hosts=True`` (the manifest switch ``allow_private_hosts = true``).
"""

from __future__ import annotations

import abc
from collections.abc import Generator, Mapping
from typing import ClassVar

from dsbuild.errors import DsbuildError
from dsbuild.sources.engines.http import check_base_url
from dsbuild.sources.engines.types import EngineOptions, FilterSpec, Link, LinkStream, Outcome, SearchResult, validate_filters


class Engine(abc.ABC):
    """A link-discovery engine. Subclasses set ``name``, ``origin``, ``filter_choices`` and ``_discover``.

    ``origin`` is the real engine host's base URL that ``options.endpoint`` replaces.
    """

    name: ClassVar[str]
    origin: ClassVar[str | None] = None
    filter_choices: ClassVar[Mapping[str, FilterSpec]] = {}
    supports_adult_filter: ClassVar[bool] = True

    def validate(self, options: EngineOptions) -> None:
        """Raise DsbuildError if ``options`` cannot work with this engine (filters, endpoint, keys).

        Cheap and offline: the build calls it for every dataset before crawling.
        """
        validate_filters(self.name, self.filter_choices, options.filters)
        if options.endpoint is not None:
            check_base_url(options.endpoint, what=f"endpoint of engine '{self.name}'", allow_private_hosts=options.allow_private_hosts)

    def links(self, query: str, options: EngineOptions) -> LinkStream:
        """Discover up to ``options.limit`` image links for ``query``, in rank order.

        Returns a :class:`LinkStream`; its ``outcome`` says how the query ended.
        Raises DsbuildError for bad options and EngineError when the engine host
        cannot be reached (no network) — both before/at the first page.
        """
        self.validate(options)
        self.check_query(query, options)
        return LinkStream(self._discover(query.strip(), options))

    def check_query(self, query: str, options: EngineOptions) -> None:
        """Raise DsbuildError for a query this engine cannot use (empty; greedy: a site that is no http(s) URL).

        Cheap and offline, like :meth:`validate`: the build calls it for every query before crawling."""
        if not isinstance(query, str) or not query.strip():
            raise DsbuildError(f"engine '{self.name}' got an empty query — give each class a non-empty query")
        self._check_query(query.strip(), options)

    def _check_query(self, query: str, options: EngineOptions) -> None:
        """Raise DsbuildError for a query this engine cannot use (greedy: the site URL)."""

    def search(self, query: str, options: EngineOptions) -> SearchResult:
        """:meth:`links` collected: every link plus the :class:`Outcome`."""
        stream = self.links(query, options)
        links = tuple(stream)
        assert stream.outcome is not None
        return SearchResult(links=links, outcome=stream.outcome)

    @abc.abstractmethod
    def _discover(self, query: str, options: EngineOptions) -> Generator[Link, None, Outcome]:
        """Yield links; return the Outcome."""

    def __repr__(self) -> str:
        return f"<engine {self.name}>"
