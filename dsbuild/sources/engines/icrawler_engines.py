"""icrawler engines (pinned ``icrawler==0.6.10``): bing, baidu, google, flickr, greedy.

We use icrawler's Feeder classes to build the results-page URLs (with their
filter rules) and its Parser classes to read the pages, and drive them
ourselves, synchronously, in the calling thread:

* a feeder is instantiated (no thread is started), its output queue replaced
  by an unbounded ``queue.Queue`` and ``feed(...)`` called once to list the
  page URLs; our subclasses quote the keyword, which icrawler's Bing and Baidu
  feeders put into the URL raw (a query with ``&`` or ``#`` broke the URL);
* each page is fetched by our :class:`~dsbuild.sources.engines.http.Crawl` (timeout,
  deadline, retries, endpoint re-basing, private-host guard) and handed to the
  parser's ``parse(response)``; the parser's ``session`` is our session, so the
  requests Flickr's parser makes itself (``flickr.photos.getSizes``) are
  re-based and bounded too;
* no icrawler thread, downloader or storage is ever created: nothing is
  downloaded here, and no ``reach_max_num`` signal is needed to stop.

The endpoint replaces the engine's real origin (``https://www.bing.com``,
``http://image.baidu.com``, ``https://www.google.com``,
``https://api.flickr.com``); for ``icrawler:greedy`` the query is the site
URL and an endpoint replaces the site's origin.

Known parser behaviour kept as is (it is icrawler's): ``icrawler:bing`` keeps
only URLs containing ``.jpg`` and cuts them after it (``murl":"(.*?)\\.jpg``);
``icrawler:google`` reads the first ``<script>`` holding ``http…jpg|png|bmp``
strings; ``icrawler:greedy`` follows in-site links and takes ``<img src>`` /
``href`` URLs ending in an image extension.
"""

from __future__ import annotations

import json
import os
import queue
import time
from collections import deque
from collections.abc import Generator, Iterable, Mapping
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote_plus, urlsplit

from dsbuild.errors import DsbuildError, EngineError
from dsbuild.sources.engines.base import Engine
from dsbuild.sources.engines.bing import BING_FILTERS
from dsbuild.sources.engines.http import Crawl, Page, Stop, check_base_url, crawl_pages
from dsbuild.sources.engines.types import EngineOptions, FilterSpec, Link, Outcome
from dsbuild.sources.urls import normalize_url

_IC: SimpleNamespace | None = None


def _icrawler() -> SimpleNamespace:
    """icrawler's classes plus our thin feeder subclasses (imported on first use: icrawler is heavy)."""
    global _IC
    if _IC is not None:
        return _IC
    from icrawler import Crawler
    from icrawler.builtin.baidu import BaiduFeeder, BaiduParser
    from icrawler.builtin.bing import BingFeeder, BingParser
    from icrawler.builtin.flickr import FlickrFeeder, FlickrParser
    from icrawler.builtin.google import GoogleFeeder, GoogleParser
    from icrawler.builtin.greedy import GreedyParser
    from icrawler.utils import ProxyPool, Signal

    class QuotedBingFeeder(BingFeeder):
        """BingFeeder with the keyword URL-quoted (icrawler formats it into the URL raw)."""

        def feed(self, keyword: str, offset: int, max_num: int, filters: dict | None = None) -> None:
            super().feed(quote_plus(keyword), offset, max_num, filters)

    class QuotedBaiduFeeder(BaiduFeeder):
        """BaiduFeeder with the keyword URL-quoted (icrawler formats it into the URL raw)."""

        def feed(self, keyword: str, offset: int, max_num: int, filters: dict | None = None) -> None:
            super().feed(quote_plus(keyword), offset, max_num, filters)

    # icrawler's own default request headers (Crawler.set_session), taken without building a crawler.
    holder = SimpleNamespace(proxy_pool=ProxyPool())
    Crawler.set_session(holder)  # type: ignore[arg-type]
    headers = dict(holder.session.headers)
    holder.session.close()

    _IC = SimpleNamespace(
        Signal=Signal,
        BingFeeder=QuotedBingFeeder,
        BingParser=BingParser,
        BaiduFeeder=QuotedBaiduFeeder,
        BaiduParser=BaiduParser,
        GoogleFeeder=GoogleFeeder,
        GoogleParser=GoogleParser,
        FlickrFeeder=FlickrFeeder,
        FlickrParser=FlickrParser,
        GreedyParser=GreedyParser,
        headers=headers,
    )
    return _IC


def feeder_urls(feeder_cls: type, session: Any, **feed_kwargs: Any) -> list[str]:
    """Run an icrawler feeder's ``feed`` synchronously and return the page URLs it produced."""
    ic = _icrawler()
    feeder = feeder_cls(1, ic.Signal(), session)
    feeder.out_queue = queue.Queue()  # unbounded: feed() must not block without a parser thread
    feeder.feed(**feed_kwargs)
    return list(feeder.out_queue.queue)


def _parser(name: str, session: Any) -> Any:
    ic = _icrawler()
    return getattr(ic, name)(1, ic.Signal(), session)


def _not_results(page: Page, crawl: Crawl, expected: str) -> Stop:
    marker = page.blocked_marker()
    if marker is not None:
        return Stop("blocked", f"answered page {crawl.pages} with a captcha / robot check ({marker!r})")
    return Stop("error", f"answered page {crawl.pages} with something that is not {expected}")


# --------------------------------------------------------------------------- search engines


class _IcrawlerSearchEngine(Engine):
    """Shared driver: feeder page URLs → our fetch → icrawler parser → ranked links."""

    page_step: int = 20  # results per page as the feeder assumes it
    parser_name: str = ""  # attribute of _icrawler(): the icrawler Parser class

    def _page_urls(self, crawl: Crawl, query: str, options: EngineOptions) -> list[str]:
        raise NotImplementedError

    def _parse(self, page: Page, parser: Any, crawl: Crawl) -> Iterable[str]:
        raise NotImplementedError

    def _discover(self, query: str, options: EngineOptions) -> Generator[Link, None, Outcome]:
        crawl = Crawl(engine=self.name, query=query, options=options, origin=self.origin, headers=_icrawler().headers)
        try:
            urls = iter(self._page_urls(crawl, query, options))
        except BaseException:
            crawl.close()
            raise
        parser = _parser(self.parser_name, crawl.session)
        return (yield from crawl_pages(crawl, lambda: next(urls, None), lambda page: self._parse(page, parser, crawl)))


class IcrawlerBingEngine(_IcrawlerSearchEngine):
    """Bing through icrawler's BingFeeder/BingParser (keeps only ``.jpg`` URLs — icrawler's rule)."""

    name = "icrawler:bing"
    origin = "https://www.bing.com"
    parser_name = "BingParser"
    page_step = 20
    filter_choices: Mapping[str, FilterSpec] = {
        **BING_FILTERS,
        "type": FilterSpec(choices=("photo", "clipart", "linedrawing", "transparent", "animated")),
    }

    def _page_urls(self, crawl: Crawl, query: str, options: EngineOptions) -> list[str]:
        urls = feeder_urls(
            _icrawler().BingFeeder,
            crawl.session,
            keyword=query,
            offset=0,
            max_num=options.limit + self.page_step,
            filters=dict(options.filters) or None,
        )
        adlt = "strict" if options.adult_filter else "off"
        return [f"{u}&adlt={adlt}" for u in urls]

    def _parse(self, page: Page, parser: Any, crawl: Crawl) -> Iterable[str]:
        return [task["file_url"] for task in parser.parse(page)]


class IcrawlerBaiduEngine(_IcrawlerSearchEngine):
    """Baidu through icrawler's BaiduFeeder/BaiduParser (JSON ``acjson`` pages, ``objURL`` decoded).

    Baidu has no adult-filter switch in its image API: ``adult_filter`` has no effect.
    """

    name = "icrawler:baidu"
    origin = "http://image.baidu.com"
    parser_name = "BaiduParser"
    page_step = 30
    supports_adult_filter = False
    filter_choices: Mapping[str, FilterSpec] = {
        "type": FilterSpec(choices=("portrait", "face", "clipart", "linedrawing", "animated", "static")),
        "color": FilterSpec(
            choices=("red", "orange", "yellow", "green", "purple", "pink", "teal", "blue", "brown", "white", "black", "blackandwhite")
        ),
        "size": FilterSpec(choices=("extralarge", "large", "medium", "small"), pattern=r"=\d+x\d+", pattern_help="=WxH (e.g. =800x600)"),
    }

    def _page_urls(self, crawl: Crawl, query: str, options: EngineOptions) -> list[str]:
        return feeder_urls(
            _icrawler().BaiduFeeder,
            crawl.session,
            keyword=query,
            offset=0,
            max_num=options.limit + self.page_step,
            filters=dict(options.filters) or None,
        )

    def _parse(self, page: Page, parser: Any, crawl: Crawl) -> Iterable[str]:
        # The same decoding BaiduParser does; it only logs a failure and would hide a block page.
        try:
            content = json.loads(page.content.decode("utf-8", "ignore").replace("\\'", "'"), strict=False)
        except ValueError:
            raise _not_results(page, crawl, "a Baidu JSON results page") from None
        if not isinstance(content, dict) or not isinstance(content.get("data"), list):
            if isinstance(content, dict) and content.get("antiFlag"):
                msg = str(content.get("message") or "antiFlag")
                raise Stop("blocked", f"answered page {crawl.pages} with its anti-crawler reply ({msg!r})")
            raise Stop("error", f"answered page {crawl.pages} with JSON that has no 'data' list")
        return [task["file_url"] for task in parser.parse(page)]


_GOOGLE_SIZES = ("400x300", "640x480", "800x600", "1024x768", "2mp", "4mp", "6mp", "8mp", "10mp", "12mp", "15mp", "20mp", "40mp", "70mp")


class IcrawlerGoogleEngine(_IcrawlerSearchEngine):
    """Google through icrawler's GoogleFeeder/GoogleParser (``safe=active`` added with the adult filter)."""

    name = "icrawler:google"
    origin = "https://www.google.com"
    parser_name = "GoogleParser"
    page_step = 100
    filter_choices: Mapping[str, FilterSpec] = {
        "type": FilterSpec(choices=("photo", "face", "clipart", "linedrawing", "animated")),
        "color": FilterSpec(
            choices=(
                "color", "blackandwhite", "transparent", "red", "orange", "yellow", "green",
                "teal", "blue", "purple", "pink", "white", "gray", "black", "brown",
            )  # fmt: skip
        ),
        "size": FilterSpec(
            choices=("large", "medium", "icon") + tuple(f">{s}" for s in _GOOGLE_SIZES),
            pattern=r"=\d+x\d+",
            pattern_help="=WxH (e.g. =640x480)",
        ),
        "license": FilterSpec(choices=("noncommercial", "commercial", "noncommercial,modify", "commercial,modify")),
        "date": FilterSpec(choices=("anytime", "pastday", "pastweek", "pastmonth", "pastyear")),
    }

    def _page_urls(self, crawl: Crawl, query: str, options: EngineOptions) -> list[str]:
        urls = feeder_urls(
            _icrawler().GoogleFeeder,
            crawl.session,
            keyword=query,
            offset=0,
            max_num=options.limit + self.page_step,
            language=None,
            filters=dict(options.filters) or None,
        )
        return [f"{u}&safe=active" if options.adult_filter else u for u in urls]

    def _parse(self, page: Page, parser: Any, crawl: Crawl) -> Iterable[str]:
        return [task["file_url"] for task in (parser.parse(page) or [])]


# icrawler FlickrImageCrawler.crawl's default size_preference (best first).
FLICKR_SIZE_ORDER = (
    "original", "large 2048", "large 1600", "large", "medium 800", "medium 640",
    "medium", "small 320", "small", "thumbnail", "large square", "square",
)  # fmt: skip
_FLICKR_LAYOUT = {"square": "square", "wide": "landscape", "tall": "portrait", "panorama": "panorama"}
_FLICKR_TYPE = {"photo": 1, "screenshot": 2, "other": 3}
_FLICKR_DATE_S = {"pastday": 86_400, "pastweek": 604_800, "pastmonth": 2_592_000, "pastyear": 31_536_000}
FLICKR_KEY_URL = "https://www.flickr.com/services/api/misc.api_keys.html"


class IcrawlerFlickrEngine(_IcrawlerSearchEngine):
    """Flickr API search (``text=`` the query) through icrawler's FlickrFeeder/FlickrParser.

    The API key comes from the environment variable ``options.api_key_env``
    (default ``FLICKR_API_KEY``). ``adult_filter`` sends ``safe_search=1``.
    Photos already seen are removed from a page before the parser resolves
    them, so a repeated page (Flickr repeats its last page) costs no
    ``getSizes`` calls; the ``pages`` count of the answer ends the query.
    """

    name = "icrawler:flickr"
    origin = "https://api.flickr.com"
    parser_name = "FlickrParser"
    page_step = 100
    filter_choices: Mapping[str, FilterSpec] = {
        "license": FilterSpec(pattern=r"\d{1,2}(,\d{1,2})*", pattern_help="Flickr license ids, e.g. 4,5,9,10"),
        "layout": FilterSpec(choices=tuple(_FLICKR_LAYOUT)),
        "type": FilterSpec(choices=tuple(_FLICKR_TYPE)),
        "date": FilterSpec(choices=tuple(_FLICKR_DATE_S)),
    }

    def api_key(self, options: EngineOptions) -> str:
        key = os.environ.get(options.api_key_env, "").strip()
        if not key:
            raise DsbuildError(
                f"engine '{self.name}' needs a Flickr API key in the environment variable {options.api_key_env} — "
                f"get one at {FLICKR_KEY_URL} and `export {options.api_key_env}=...`"
            )
        return key

    def validate(self, options: EngineOptions) -> None:
        super().validate(options)
        self.api_key(options)

    def _page_urls(self, crawl: Crawl, query: str, options: EngineOptions) -> list[str]:
        params: dict[str, Any] = {"text": query, "per_page": min(options.limit, 100)}
        if options.adult_filter:
            params["safe_search"] = 1
        f = options.filters
        if "license" in f:
            params["license"] = f["license"]
        if "layout" in f:
            params["orientation"] = _FLICKR_LAYOUT[f["layout"]]
        if "type" in f:
            params["content_type"] = _FLICKR_TYPE[f["type"]]
        if "date" in f:
            params["min_upload_date"] = int(time.time()) - _FLICKR_DATE_S[f["date"]]
        return feeder_urls(_icrawler().FlickrFeeder, crawl.session, apikey=self.api_key(options), max_num=4000, **params)

    def _discover(self, query: str, options: EngineOptions) -> Generator[Link, None, Outcome]:
        # Per-query state lives here, not on the engine: one engine object may serve many queries at once.
        state = SimpleNamespace(key=self.api_key(options), seen_ids=set(), last_page=False)
        crawl = Crawl(engine=self.name, query=query, options=options, origin=self.origin, headers=_icrawler().headers)
        try:
            urls = iter(self._page_urls(crawl, query, options))
        except BaseException:
            crawl.close()
            raise
        parser = _parser(self.parser_name, crawl.session)

        def next_url() -> str | None:
            return None if state.last_page else next(urls, None)

        return (yield from crawl_pages(crawl, next_url, lambda page: self._parse_flickr(page, parser, crawl, state)))

    def _parse_flickr(self, page: Page, parser: Any, crawl: Crawl, state: SimpleNamespace) -> Iterable[str]:
        try:
            content = json.loads(page.content.decode("utf-8", "ignore"))
        except ValueError:
            raise _not_results(page, crawl, "a Flickr API JSON answer") from None
        if not isinstance(content, dict) or "stat" not in content:
            raise Stop("error", f"answered page {crawl.pages} with JSON that is not a Flickr API answer")
        if content["stat"] != "ok":
            code, message = content.get("code"), content.get("message", "")
            if code in (100, "100"):
                raise EngineError(
                    f"Flickr rejected the API key in {crawl.options.api_key_env}: {message} (code 100) — check the key "
                    f"({FLICKR_KEY_URL})"
                )
            raise Stop("error", f"answered page {crawl.pages} with an error: {message} (code {code})")
        photos_info = content.get("photos") if isinstance(content.get("photos"), dict) else {}
        photos = photos_info.get("photo") or []
        fresh = [p for p in photos if isinstance(p, dict) and str(p.get("id")) not in state.seen_ids]
        state.seen_ids.update(str(p.get("id")) for p in fresh)
        try:
            state.last_page = int(photos_info.get("page", 0)) >= int(photos_info.get("pages", 0))
        except (TypeError, ValueError):
            state.last_page = False
        if photos and not fresh:
            raise Stop("repeated_page", "")
        trimmed = Page(
            url=page.url,
            status_code=page.status_code,
            headers=page.headers,
            content=json.dumps({"stat": "ok", "photos": {**photos_info, "photo": fresh}}).encode(),
        )
        # Lazy: getSizes is only called for photos we still need.
        return (
            task["file_url"]
            for task in parser.parse(trimmed, apikey=state.key, size_preference=list(FLICKR_SIZE_ORDER))
        )


# --------------------------------------------------------------------------- greedy


class IcrawlerGreedyEngine(Engine):
    """Greedy site crawl: the query is a site URL (``example.com/gallery``); icrawler's GreedyParser
    reads each page, images are yielded, in-site page links are followed breadth-first.

    Bounded by ``limit`` images and ``max_pages`` pages; each page is fetched once.
    No filters; ``adult_filter`` does not apply (it is not a search engine).
    """

    name = "icrawler:greedy"
    origin = None
    supports_adult_filter = False
    filter_choices: Mapping[str, FilterSpec] = {}

    @staticmethod
    def site_url(query: str, options: EngineOptions) -> str:
        """The site to crawl: ``http://`` added when missing (as icrawler does), endpoint applied, checked."""
        site = query.strip()
        if "://" in site and not site.lower().startswith(("http://", "https://")):
            raise DsbuildError(f"greedy site {query!r} must be an http(s) URL such as https://example.org/gallery")
        if not site.lower().startswith("http"):
            site = "http://" + site
        site = site.rstrip("/")
        if options.endpoint:
            parts = urlsplit(site)
            site = options.endpoint.rstrip("/") + parts.path
        return check_base_url(site, what="greedy site", allow_private_hosts=options.allow_private_hosts)

    def _check_query(self, query: str, options: EngineOptions) -> None:
        self.site_url(query, options)  # refuse a private/non-http site before the stream starts

    def _discover(self, query: str, options: EngineOptions) -> Generator[Link, None, Outcome]:
        site = self.site_url(query, options)
        crawl = Crawl(engine=self.name, query=query, options=options, origin=None, headers=_icrawler().headers)
        crawl.host = urlsplit(site).netloc
        parser = _parser("GreedyParser", crawl.session)
        domains = [site]
        start = normalize_url(site)
        frontier: deque[str] = deque([start])
        queued = {start}
        first_marker: str | None = None
        try:
            while frontier and not crawl.full:
                if crawl.pages >= options.max_pages:
                    return crawl.outcome("max_pages")
                url = frontier.popleft()
                try:
                    page = crawl.fetch(url)
                except Stop as stop:
                    if url == start:
                        return crawl.outcome(stop.reason, stop.detail)  # the site itself fails
                    continue  # one broken page does not end a site crawl
                if url == start:
                    first_marker = page.blocked_marker()
                for task in parser.parse(page, domains):
                    if isinstance(task, dict):
                        link = crawl.accept(task["file_url"], page.url)
                        if link is not None:
                            yield link
                            if crawl.full:
                                return crawl.outcome("limit")
                    elif isinstance(task, str):
                        try:
                            nxt = normalize_url(task)
                        except ValueError:
                            continue
                        if nxt not in queued:
                            queued.add(nxt)
                            frontier.append(nxt)
            if crawl.full:
                return crawl.outcome("limit")
            if crawl.rank == 0 and first_marker is not None:
                return crawl.outcome("blocked", f"answered with a captcha / robot check ({first_marker!r})")
            return crawl.end()
        finally:
            crawl.close()
