"""``bing``: Bing image search through bing-image-downloader's ``Bing`` class.

What we reuse from the library (``bing_image_downloader.bing.Bing``): the
request it builds (``/images/async`` with ``q``, ``first``, ``count``,
``adlt``, ``qft``, and its browser headers), its type-filter mapping
(:meth:`Bing.get_filter`) and its page parsing (the ``murl&quot;:&quot;(.*?)&quot;``
regex over the async page, then ``html.unescape`` and spaces → ``%20``).

What we override (:class:`LinkBing`), because the library's ``run`` downloads
sequentially, has no timeout on the search request, takes no base URL and can
loop forever:

* ``run`` requests ``{endpoint or https://www.bing.com}/images/async?...`` with a
  timeout and a wall-clock deadline, *yields links* instead of downloading,
  and stops on the limit, an empty page, a captcha page, a page with no new
  links (Bing repeats its last page forever), or ``max_pages``;
* ``first`` is the result *offset* (the number of results already seen), not
  the page counter the library sends (which made it re-read the same results);
* ``adlt`` is ``strict`` with the adult filter on (safe by default) and ``off``
  otherwise; the library sends ``on``/``off``;
* ``download_image``/``save_image`` refuse: engines never download.

Filters: ``type`` uses the library's mapping; ``size``, ``color``,
``license``, ``layout``, ``people`` and ``date`` use icrawler's Bing filter
rules (same ``qft`` syntax), imported only when such a filter is set.
"""

from __future__ import annotations

import html as _html
import math
import re
from collections.abc import Generator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from dsbuild.sources.engines.base import Engine
from dsbuild.sources.engines.http import Crawl, Page, crawl_pages
from dsbuild.sources.engines.types import EngineOptions, FilterSpec, Link, Outcome

BING_ORIGIN = "https://www.bing.com"
# The exact pattern of bing-image-downloader's Bing.run (checked against the installed source by a test).
MURL_PATTERN = "murl&quot;:&quot;(.*?)&quot;"
MAX_COUNT = 150  # Bing's async endpoint returns at most this many results per request

# bing-image-downloader's Bing.get_filter shorthands (a test checks each maps to a qft string).
LIBRARY_TYPES = ("photo", "clipart", "line", "linedrawing", "gif", "animatedgif", "transparent")

_COLORS = (
    "color", "blackandwhite", "red", "orange", "yellow", "green", "teal",
    "blue", "purple", "pink", "white", "gray", "black", "brown",
)  # fmt: skip
# icrawler 0.6.10 BingFeeder.get_filter rules (a test checks they still match icrawler's).
BING_FILTERS: Mapping[str, FilterSpec] = {
    "type": FilterSpec(choices=LIBRARY_TYPES),
    "size": FilterSpec(choices=("extralarge", "large", "medium", "small"), pattern=r">\d+x\d+", pattern_help=">WxH (e.g. >800x600)"),
    "color": FilterSpec(choices=_COLORS),
    "license": FilterSpec(
        choices=("creativecommons", "publicdomain", "noncommercial", "commercial", "noncommercial,modify", "commercial,modify")
    ),
    "layout": FilterSpec(choices=("square", "wide", "tall")),
    "people": FilterSpec(choices=("face", "portrait")),
    "date": FilterSpec(choices=("pastday", "pastweek", "pastmonth", "pastyear")),
}


def icrawler_bing_qft(filters: Mapping[str, str]) -> str:
    """``qft`` string for the non-type Bing filters via icrawler's BingFeeder rules ('' when none)."""
    if not filters:
        return ""
    from icrawler.builtin.bing import BingFeeder

    # get_filter only builds a rule table; it uses no feeder state, so no threads/queues are made.
    return BingFeeder.get_filter(None).apply(dict(filters))  # type: ignore[arg-type]


_LINK_BING: type | None = None


def _link_bing_class() -> type:
    """``LinkBing``: bing-image-downloader's Bing with ``run`` rewritten for link discovery."""
    global _LINK_BING
    if _LINK_BING is not None:
        return _LINK_BING
    from bing_image_downloader.bing import Bing

    class LinkBing(Bing):
        """Bing that yields :class:`Link` objects from ``run`` and never downloads."""

        def __init__(self, query: str, options: EngineOptions, origin: str = BING_ORIGIN) -> None:
            filters = dict(options.filters)
            type_filter = filters.pop("type", "")
            super().__init__(
                query,
                options.limit,
                Path("."),  # output_dir: never written (nothing is downloaded)
                "strict" if options.adult_filter else "off",
                max(1, math.ceil(options.timeout)),
                filter=type_filter,
                verbose=False,
            )
            self.options = options
            self.origin = origin
            self.qft = self.get_filter(type_filter) + icrawler_bing_qft(filters)
            self.first = 0  # result offset of the next page

        def page_url(self, remaining: int) -> str:
            """The library's async request with our offset and a bounded count."""
            params = urlencode(
                {
                    "q": self.query,
                    "first": self.first,
                    "count": max(1, min(remaining, MAX_COUNT)),
                    "adlt": self.adult,
                    "qft": self.qft,
                }
            )
            return f"{self.origin}/images/async?{params}"

        @staticmethod
        def parse_links(text: str) -> list[str]:
            """The library's parsing: murl regex, HTML entities unescaped, spaces → %20."""
            links = re.findall(MURL_PATTERN, text)
            return [_html.unescape(link).replace(" ", "%20") for link in links]

        def run(self) -> Generator[Link, None, Outcome]:  # type: ignore[override]
            crawl = Crawl(engine=BingEngine.name, query=self.query, options=self.options, origin=self.origin, headers=self.headers)

            def next_url() -> str | None:
                return self.page_url(self.limit - crawl.rank)

            def parse(page: Page) -> list[str]:
                links = self.parse_links(page.text)
                self.first += len(links)
                self.page_counter += 1
                return links

            return (yield from crawl_pages(crawl, next_url, parse))

        def download_image(self, link: Any) -> None:
            raise RuntimeError("dsbuild engines never download images; dsbuild.fetch does")

        def save_image(self, link: Any, file_path: Any) -> None:
            raise RuntimeError("dsbuild engines never download images; dsbuild.fetch does")

    _LINK_BING = LinkBing
    return LinkBing


class BingEngine(Engine):
    """Bing image search (bing-image-downloader's request and parsing; our paging, limits and stops)."""

    name = "bing"
    origin = BING_ORIGIN
    filter_choices = BING_FILTERS

    def _discover(self, query: str, options: EngineOptions) -> Generator[Link, None, Outcome]:
        return _link_bing_class()(query, options, self.origin or BING_ORIGIN).run()
