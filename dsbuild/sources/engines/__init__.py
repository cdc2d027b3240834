"""Link discovery: search engines and URL lists behind one small interface.

>>> from dsbuild.sources.engines import get_engine, EngineOptions
>>> engine = get_engine("bing")                                   # doctest: +SKIP
>>> result = engine.search("person wearing sunglasses", EngineOptions(limit=50))   # doctest: +SKIP
>>> result.outcome.reason, len(result.links)                      # doctest: +SKIP
('limit', 50)

Engines (``ENGINES``, a plain dict name → class):

==================  ===============================================================
``bing``            bing-image-downloader's request + parsing; our paging/stops
``icrawler:bing``   icrawler BingFeeder/BingParser (``.jpg`` links only)
``icrawler:baidu``  icrawler BaiduFeeder/BaiduParser (JSON pages, decoded objURL)
``icrawler:google`` icrawler GoogleFeeder/GoogleParser
``icrawler:flickr`` icrawler FlickrFeeder/FlickrParser; API key from ``FLICKR_API_KEY``
``icrawler:greedy`` icrawler GreedyParser over a site (the query is the site URL)
==================  ===============================================================

Modules: ``types`` (options, outcomes, link streams), ``http`` (the guarded
session, page fetching, the page loop), ``base`` (the :class:`Engine` ABC),
``bing``, ``icrawler_engines``. A new engine subclasses :class:`Engine` and
adds itself to :data:`ENGINES`. URL lists are :mod:`dsbuild.sources.urls`.
Engines only discover links; the build downloads them with :mod:`dsbuild.fetch`.
Importing this package is cheap: bing-image-downloader and icrawler are
imported on first use.
"""

from __future__ import annotations

from dsbuild.errors import DsbuildError, did_you_mean
from dsbuild.sources.engines.base import Engine
from dsbuild.sources.engines.bing import BingEngine
from dsbuild.sources.engines.icrawler_engines import (
    IcrawlerBaiduEngine,
    IcrawlerBingEngine,
    IcrawlerFlickrEngine,
    IcrawlerGoogleEngine,
    IcrawlerGreedyEngine,
)
from dsbuild.sources.engines.types import STOP_REASONS, EngineOptions, FilterSpec, Link, LinkStream, Outcome, SearchResult

ENGINES: dict[str, type[Engine]] = {
    "bing": BingEngine,
    "icrawler:bing": IcrawlerBingEngine,
    "icrawler:baidu": IcrawlerBaiduEngine,
    "icrawler:google": IcrawlerGoogleEngine,
    "icrawler:flickr": IcrawlerFlickrEngine,
    "icrawler:greedy": IcrawlerGreedyEngine,
}


def get_engine(name: str) -> Engine:
    """The engine called ``name``; DsbuildError listing the known engines (with a did-you-mean) otherwise."""
    cls = ENGINES.get(name)
    if cls is None:
        known = ", ".join(sorted(ENGINES))
        raise DsbuildError(f"unknown engine {name!r} — known engines: {known}{did_you_mean(str(name), ENGINES)}")
    return cls()


__all__ = [
    "ENGINES",
    "STOP_REASONS",
    "Engine",
    "EngineOptions",
    "FilterSpec",
    "Link",
    "LinkStream",
    "Outcome",
    "SearchResult",
    "get_engine",
]
