"""Engines against loopback fake engines serving pages in each engine's real format.

No mocks: every engine talks HTTP to ``fake_engines.FakeEngineServer`` and parses
its pages with the real bing-image-downloader / icrawler code.
"""

from __future__ import annotations

import inspect
import socket
import time
import urllib.request
import subprocess
import sys
from urllib.parse import parse_qs, urlsplit

import pytest
from fake_engines import FakeEngineServer

from dsbuild.sources.engines import ENGINES, EngineOptions, Link, get_engine
from dsbuild.sources.engines.bing import BING_FILTERS, LIBRARY_TYPES, MURL_PATTERN, BingEngine
from dsbuild.sources.engines.icrawler_engines import (
    IcrawlerBaiduEngine,
    IcrawlerBingEngine,
    IcrawlerGoogleEngine,
)
from dsbuild.errors import DsbuildError, EngineError

SEARCH_ENGINES = ["bing", "icrawler:bing", "icrawler:baidu", "icrawler:google", "icrawler:flickr"]
ALL_ENGINES = SEARCH_ENGINES + ["icrawler:greedy"]
FLICKR_KEY = "fake-flickr-key"
QUERY = "person wearing sunglasses & hat"

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def _flickr_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLICKR_API_KEY", FLICKR_KEY)


def opts(server: FakeEngineServer, **kw) -> EngineOptions:
    return EngineOptions(endpoint=server.url, allow_private_hosts=True, **kw)


def query_for(engine: str, server: FakeEngineServer) -> tuple[str, str]:
    """(query to send, key of the planted results): greedy crawls the fake site."""
    if engine == "icrawler:greedy":
        return f"{server.url}/site", "site"
    return QUERY, QUERY


def engine_path(engine: str) -> str:
    return {
        "bing": "/images/async",
        "icrawler:bing": "/images/async",
        "icrawler:baidu": "/search/acjson",
        "icrawler:google": "/search",
        "icrawler:flickr": "/services/rest/?method=flickr.photos.search",
        "icrawler:greedy": "/site",
    }[engine]


def fetch_bytes(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read()


def page_window(engine: str, page_url: str) -> tuple[int, int]:
    """(first 0-based result index, results per page) that a results page URL asks for."""
    parts = urlsplit(page_url)
    q = {k: v[0] for k, v in parse_qs(parts.query).items()}
    if engine == "bing":
        return int(q["first"]), int(q["count"])
    if engine == "icrawler:bing":
        return int(q["first"]), 35  # no count sent: the fake (like Bing) serves 35
    if engine == "icrawler:baidu":
        return int(q["pn"]), int(q["rn"])
    if engine == "icrawler:google":
        return int(q["start"]), 100
    if engine == "icrawler:flickr":
        return (int(q["page"]) - 1) * int(q["per_page"]), int(q["per_page"])
    tail = parts.path[len("/site") :].strip("/")
    k = int(tail[1:]) if tail else 0
    return k * 5, 5


# --------------------------------------------------------------------------- discovery


# How each engine ends when the fake has 70 results and the limit is larger:
# pages fetched and the stop reason. icrawler's BingFeeder steps 20 results a page
# while Bing serves 35, so its 4th page (first=60) holds only links already seen.
END_OF_RESULTS = {
    "bing": (2, "exhausted"),  # 70 results on page 1 (count=150), then Bing's empty body
    "icrawler:bing": (4, "repeated_page"),
    "icrawler:baidu": (4, "exhausted"),  # pn=0,30,60 then a page with no items
    "icrawler:google": (2, "exhausted"),
    "icrawler:flickr": (1, "exhausted"),  # the answer says pages=1
    "icrawler:greedy": (15, "exhausted"),  # 14 gallery pages + a 404 "about.html" page
}


@pytest.mark.parametrize("engine", ALL_ENGINES)
def test_links_equal_planted_urls_in_order_with_rank_and_page(engine: str) -> None:
    with FakeEngineServer(total=70) as server:
        query, key = query_for(engine, server)
        result = get_engine(engine).search(query, opts(server, limit=500))

        planted = server.planted(key)
        assert [link.url for link in result.links] == planted
        assert [link.rank for link in result.links] == list(range(1, 71))
        assert {link.engine for link in result.links} == {engine}
        assert {link.query for link in result.links} == {query}
        assert all(link.label is None for link in result.links)
        for link in result.links:
            assert link.page_url is not None and link.page_url.startswith(server.url)
            first, size = page_window(engine, link.page_url)
            assert first <= link.rank - 1 < first + size, (link.rank, link.page_url)

        pages, reason = END_OF_RESULTS[engine]
        assert (result.outcome.reason, result.outcome.pages, result.outcome.links) == (reason, pages, 70)
        assert result.outcome.ok
        assert server.hits("/img/") == 0  # engines never download images


@pytest.mark.parametrize("engine", ALL_ENGINES)
def test_limit_stops_mid_page_without_fetching_more(engine: str) -> None:
    with FakeEngineServer(total=70) as server:
        query, key = query_for(engine, server)
        result = get_engine(engine).search(query, opts(server, limit=3))
        assert [link.url for link in result.links] == server.planted(key)[:3]
        assert result.outcome.reason == "limit"
        assert result.outcome.message == "got 3 links in 1 page(s) (the per-query limit)"
        assert server.hits(engine_path(engine)) == 1


@pytest.mark.parametrize(
    ("engine", "pages", "page_size"),
    [
        ("bing", 4, 35),  # Bing returns 35 even when asked for 150: the next offset follows what came
        ("icrawler:bing", 6, 35),  # BingFeeder steps 20 a page: first=100 is the first page reaching 120
        ("icrawler:baidu", 4, 30),
        ("icrawler:google", 2, 100),
        ("icrawler:flickr", 2, 100),
        ("icrawler:greedy", 25, 5),  # 24 gallery pages + the 404 about page
    ],
)
def test_pagination_reaches_the_limit_across_pages(engine: str, pages: int, page_size: int) -> None:
    with FakeEngineServer(total=400, bing_max_count=35) as server:
        query, key = query_for(engine, server)
        result = get_engine(engine).search(query, opts(server, limit=120))
        assert [link.url for link in result.links] == server.planted(key)[:120]
        assert result.outcome.reason == "limit"
        assert result.outcome.pages == pages
        page_urls = list(dict.fromkeys(link.page_url for link in result.links))
        assert len(page_urls) == pages - (1 if engine == "icrawler:greedy" else 0)  # greedy: 404 about page
        firsts = [page_window(engine, u)[0] for u in page_urls]
        assert firsts == sorted(firsts) and firsts[0] == 0
        if engine == "bing":
            assert firsts == [0, 35, 70, 105]


def test_max_pages_bounds_a_query() -> None:
    with FakeEngineServer(total=1000, bing_max_count=35) as server:
        result = get_engine("bing").search(QUERY, opts(server, limit=500, max_pages=3))
        assert len(result.links) == 105
        assert result.outcome.reason == "max_pages"
        assert result.outcome.message == "stopped at max_pages=3 with 105 links"
        assert server.hits("/images/async") == 3


# --------------------------------------------------------------------------- how queries end


# (links expected, reason) per engine when the fake serves the first page again for every offset.
SAME_PAGE = {
    "bing": (70, "repeated_page"),  # page 1 had all 70 (count=150)
    "icrawler:bing": (35, "repeated_page"),
    "icrawler:baidu": (30, "repeated_page"),
    "icrawler:google": (70, "repeated_page"),
    "icrawler:flickr": (70, "repeated_page"),
    "icrawler:greedy": (5, "max_pages"),  # an endless site: new page URLs forever, same images
}


@pytest.mark.timeout(20)
@pytest.mark.parametrize("engine", ALL_ENGINES)
def test_same_page_again_stops(engine: str) -> None:
    with FakeEngineServer(total=70, mode="same_page") as server:
        query, key = query_for(engine, server)
        result = get_engine(engine).search(query, opts(server, limit=500, max_pages=10))
        n, reason = SAME_PAGE[engine]
        assert [link.url for link in result.links] == server.planted(key)[:n]
        assert result.outcome.reason == reason
        if reason == "repeated_page":
            assert result.outcome.pages == 2
            assert "served the same results again on page 2 (no new links)" in result.outcome.message
            assert server.hits(engine_path(engine)) == 2
        else:
            assert result.outcome.pages == 10


@pytest.mark.timeout(20)
@pytest.mark.parametrize("engine", ALL_ENGINES)
def test_zero_results_stops_with_no_results(engine: str) -> None:
    with FakeEngineServer(total=70, mode="zero") as server:
        query, _ = query_for(engine, server)
        result = get_engine(engine).search(query, opts(server))
        assert result.links == ()
        assert result.outcome.reason == "no_results"
        assert result.outcome.ok
        assert result.outcome.message == f"{urlsplit(server.url).netloc} found no images for {query!r}"


@pytest.mark.parametrize(
    ("engine", "reason", "tail"),
    [
        ("bing", "no_results", "bytes but no results in the format this engine reads — if this "
         "persists the engine may have changed its pages; try another engine)"),
        ("icrawler:google", "no_results", "bytes but no results in the format this engine reads — "
         "if this persists the engine may have changed its pages; try another engine)"),
        ("icrawler:baidu", "error", "answered page 1 with something that is not a Baidu JSON results page — "
         "stopped this query after 0 links"),
        ("icrawler:flickr", "error", "answered page 1 with something that is not a Flickr API JSON answer — "
         "stopped this query after 0 links"),
    ],
)  # fmt: skip
def test_changed_page_format_is_told_apart_from_no_images(engine: str, reason: str, tail: str) -> None:
    with FakeEngineServer(mode="changed_format") as server:
        result = get_engine(engine).search(QUERY, opts(server))
        assert result.links == ()
        assert result.outcome.reason == reason
        assert result.outcome.message.endswith(tail)
        if reason == "no_results":
            size = len(fetch_bytes(server.url + engine_path(engine)))  # the page the engine got
            assert f"found no images for {QUERY!r} (page 1 had {size} bytes " in result.outcome.message


# What each engine shows when blocked: Bing and the greedy site answer 200 with a captcha
# page, Google its 429 "unusual traffic" page, Baidu its antiFlag JSON, Flickr 429.
BLOCKED = {
    "bing": "answered page 1 with a captcha / robot check ('captcha')",
    "icrawler:bing": "answered page 1 with a captcha / robot check ('captcha')",
    "icrawler:baidu": "answered page 1 with its anti-crawler reply ('Forbid spider access')",
    "icrawler:google": "answered page 1 with HTTP 429 (rate limited)",
    "icrawler:flickr": "answered page 1 with HTTP 429 (rate limited)",
    "icrawler:greedy": "answered with a captcha / robot check ('captcha')",
}


@pytest.mark.timeout(20)
@pytest.mark.parametrize("engine", ALL_ENGINES)
def test_captcha_page_stops_the_query_as_blocked(engine: str) -> None:
    with FakeEngineServer(total=70, mode="captcha") as server:
        query, _ = query_for(engine, server)
        result = get_engine(engine).search(query, opts(server))
        assert result.links == ()
        assert result.outcome.reason == "blocked"
        assert not result.outcome.ok
        host = urlsplit(server.url).netloc
        assert result.outcome.message == (
            f"{host} {BLOCKED[engine]} instead of results for {query!r} — stopped this query after 0 links; "
            f"try again later, lower `per_query`, or use another engine"
        )
        assert server.hits(engine_path(engine)) == 1


def test_captcha_after_some_pages_keeps_the_links_found() -> None:
    with FakeEngineServer(total=400, bing_max_count=35) as server:
        stream = get_engine("bing").links(QUERY, opts(server, limit=300))
        got: list[Link] = []
        for link in stream:
            got.append(link)
            if len(got) == 35:
                server.mode = "captcha"  # the engine starts blocking after the first page
        assert [link.url for link in got] == server.planted(QUERY)[:35]
        assert stream.outcome is not None and stream.outcome.reason == "blocked"
        assert "answered page 2 with a captcha" in stream.outcome.message
        assert "stopped this query after 35 links" in stream.outcome.message


def test_blocked_query_does_not_stop_the_next_query() -> None:
    with FakeEngineServer(total=10, mode="captcha") as server:
        engine = get_engine("bing")
        first = engine.search("first query", opts(server))
        server.mode = "normal"
        second = engine.search("second query", opts(server))
        assert first.outcome.reason == "blocked" and first.links == ()
        assert [link.url for link in second.links] == server.planted("second query")


def test_rate_limited_is_blocked_not_retried() -> None:
    with FakeEngineServer(total=10, mode="rate_limited") as server:
        result = get_engine("bing").search(QUERY, opts(server))
        assert result.outcome.reason == "blocked"
        assert "HTTP 429 (rate limited)" in result.outcome.message
        assert server.hits("/images/async") == 1


def test_server_error_is_retried_then_reported() -> None:
    with FakeEngineServer(total=10, mode="server_error") as server:
        result = get_engine("icrawler:baidu").search(QUERY, opts(server))
        assert result.outcome.reason == "error"
        assert result.outcome.message == (
            f"{urlsplit(server.url).netloc} page 1 failed after 3 attempts (HTTP 500) — stopped this query after 0 links"
        )
        assert server.hits("/search/acjson") == 3


def test_stalled_engine_page_times_out() -> None:
    with FakeEngineServer(total=10, page_delay=3.0) as server:
        result = get_engine("icrawler:google").search(QUERY, opts(server, timeout=0.2))
        assert result.outcome.reason == "error"
        assert "page 1 failed after 3 attempts" in result.outcome.message
        assert "timed out" in result.outcome.message.lower()
        assert server.hits("/search") == 3


def test_dripping_engine_page_hits_the_wall_clock_deadline() -> None:
    # One byte every 50 ms: each socket read is well within the timeout, the page never is.
    with FakeEngineServer(total=10, page_drip=0.05) as server:
        started = time.monotonic()
        result = get_engine("bing").search(QUERY, opts(server, timeout=0.2))
        elapsed = time.monotonic() - started
        assert result.outcome.reason == "error"
        assert result.outcome.message.endswith(
            "page 1 failed after 3 attempts (page took longer than 0.2 s) — stopped this query after 0 links"
        )
        assert elapsed < 10  # 3 × 0.2 s + 1.5 s backoff, not the ~2 minutes the page would take


def test_link_stream_outcome_and_early_close() -> None:
    with FakeEngineServer(total=400, bing_max_count=35) as server:
        stream = get_engine("bing").links(QUERY, opts(server, limit=300))
        assert stream.outcome is None
        assert next(stream).rank == 1
        stream.close()  # the caller stops early: no further page is fetched
        assert server.hits("/images/async") == 1


# --------------------------------------------------------------------------- URLs from engines


def test_bing_links_are_unescaped_normalised_and_deduplicated() -> None:
    with FakeEngineServer() as server:
        base = server.url
        server.plant(
            QUERY,
            [
                f"{base}/img/café 1.jpg?size=l&id=7",  # non-ASCII + space + & (→ &amp; in the page)
                f"{base}/img/2.jpg#fragment",
                "ftp://files.example.org/3.jpg",  # not http(s): dropped and counted
                f"{base}/img/%E2%82%AC.jpg",  # an existing escape is kept
                f"{base}/img/2.jpg",  # same as the second once the fragment is dropped
                f"HTTP://{urlsplit(base).netloc}/img/4.jpg",
            ],
        )
        result = get_engine("bing").search(QUERY, opts(server))
        assert [link.url for link in result.links] == [
            f"{base}/img/caf%C3%A9%201.jpg?size=l&id=7",
            f"{base}/img/2.jpg",
            f"{base}/img/%E2%82%AC.jpg",
            f"http://{urlsplit(base).netloc}/img/4.jpg",
        ]
        assert [link.rank for link in result.links] == [1, 2, 3, 4]
        assert result.outcome.skipped == 1
        assert result.outcome.message.endswith("; 1 malformed link(s) dropped")


def test_icrawler_bing_keeps_only_jpg_links_as_icrawler_does() -> None:
    with FakeEngineServer() as server:
        base = server.url
        server.plant(QUERY, [f"{base}/img/a.png", f"{base}/img/b.jpg?w=640", f"{base}/img/c.jpg"])
        result = get_engine("icrawler:bing").search(QUERY, opts(server))
        # BingParser's pattern murl":"(.*?)\.jpg drops .png and cuts after ".jpg".
        assert [link.url for link in result.links] == [f"{base}/img/b.jpg", f"{base}/img/c.jpg"]


def test_query_text_is_url_encoded_for_every_engine(fake_engine: FakeEngineServer) -> None:
    query = "chats & chiens #1 café"
    for name in SEARCH_ENGINES:
        result = get_engine(name).search(query, opts(fake_engine, limit=2))
        assert [link.url for link in result.links] == fake_engine.planted(query)[:2], name


# --------------------------------------------------------------------------- options → requests


def last_request(server: FakeEngineServer, prefix: str) -> dict[str, str]:
    path = [r for r in server.requests if r.startswith(prefix)][-1]
    return {k: v[0] for k, v in parse_qs(urlsplit(path).query, keep_blank_values=True).items()}


def test_bing_request_carries_filters_adult_setting_and_count(fake_engine: FakeEngineServer) -> None:
    filters = {"type": "photo", "size": ">800x600", "color": "blackandwhite", "people": "face"}
    get_engine("bing").search(QUERY, opts(fake_engine, limit=5, filters=filters))
    sent = last_request(fake_engine, "/images/async")
    assert sent == {
        "q": QUERY,
        "first": "0",
        "count": "5",
        "adlt": "strict",
        "qft": "+filterui:photo-photo+filterui:imagesize-custom_800_600+filterui:color2-bw+filterui:face-face",
    }
    get_engine("bing").search(QUERY, opts(fake_engine, limit=5, adult_filter=False))
    assert last_request(fake_engine, "/images/async")["adlt"] == "off"


@pytest.mark.parametrize(
    ("engine", "filters", "adult", "prefix", "expected"),
    [
        # icrawler puts qft into the URL unencoded, as Bing's own UI links do: its '+' reads as a space.
        ("icrawler:bing", {"type": "animated", "layout": "wide"}, True, "/images/async",
         {"qft": " filterui:photo-animatedgif filterui:aspect-wide", "adlt": "strict"}),
        ("icrawler:bing", {}, False, "/images/async", {"adlt": "off"}),
        ("icrawler:baidu", {"type": "face", "size": "=640x480"}, True, "/search/acjson",
         {"s": "0", "face": "1", "width": "640", "height": "480", "rn": "30"}),
        ("icrawler:google", {"size": ">640x480", "date": "pastweek"}, True, "/search",
         {"tbs": "isz:lt,islt:vga,qdr:w", "safe": "active", "tbm": "isch"}),
        ("icrawler:flickr", {"layout": "wide", "license": "4,5", "type": "photo"}, True, "/services/rest/?method=flickr.photos.search",
         {"orientation": "landscape", "license": "4,5", "content_type": "1", "safe_search": "1", "api_key": FLICKR_KEY}),
    ],
)  # fmt: skip
def test_icrawler_filters_reach_the_request(
    fake_engine: FakeEngineServer, engine: str, filters: dict, adult: bool, prefix: str, expected: dict
) -> None:
    get_engine(engine).search(QUERY, opts(fake_engine, limit=2, filters=filters, adult_filter=adult))
    sent = last_request(fake_engine, prefix)
    assert {k: sent.get(k) for k in expected} == expected


@pytest.mark.parametrize(
    ("engine", "filters", "message"),
    [
        ("bing", {"sise": "large"},
         "engine 'bing' has no filter 'sise' (did you mean 'size'?) — its filters are: type, size, color, license, "
         "layout, people, date (fix `filters` in the manifest)"),
        ("bing", {"size": "huge"},
         "filter size = 'huge' is not valid for engine 'bing' — allowed: extralarge, large, medium, small, >WxH (e.g. >800x600)"),
        ("bing", {"type": "animated"},
         "filter type = 'animated' is not valid for engine 'bing' (did you mean 'animatedgif'?) — allowed: photo, clipart, "
         "line, linedrawing, gif, animatedgif, transparent"),
        ("icrawler:baidu", {"license": "commercial"},
         "engine 'icrawler:baidu' has no filter 'license' — its filters are: type, color, size (fix `filters` in the manifest)"),
        ("icrawler:baidu", {"size": ">800x600"},
         "filter size = '>800x600' is not valid for engine 'icrawler:baidu' — allowed: extralarge, large, medium, small, =WxH (e.g. =800x600)"),
        ("icrawler:google", {"date": "lastweek"},
         "filter date = 'lastweek' is not valid for engine 'icrawler:google' (did you mean 'pastweek'?) — allowed: anytime, "
         "pastday, pastweek, pastmonth, pastyear"),
        ("icrawler:flickr", {"license": "cc-by"},
         "filter license = 'cc-by' is not valid for engine 'icrawler:flickr' — allowed: Flickr license ids, e.g. 4,5,9,10"),
        ("icrawler:greedy", {"type": "photo"},
         "engine 'icrawler:greedy' has no filter 'type' — its filters are: none (fix `filters` in the manifest)"),
    ],
)  # fmt: skip
def test_invalid_filters_are_refused_before_any_request(
    fake_engine: FakeEngineServer, engine: str, filters: dict, message: str
) -> None:
    with pytest.raises(DsbuildError) as err:
        get_engine(engine).links("anything", opts(fake_engine, filters=filters))
    assert str(err.value) == message
    assert fake_engine.requests == []


def test_unknown_engine_lists_the_known_ones() -> None:
    with pytest.raises(DsbuildError) as err:
        get_engine("bign")
    assert str(err.value) == (
        "unknown engine 'bign' — known engines: bing, icrawler:baidu, icrawler:bing, icrawler:flickr, "
        "icrawler:google, icrawler:greedy (did you mean 'bing'?)"
    )
    with pytest.raises(DsbuildError, match=r"^unknown engine 'duckduckgo' — known engines: bing, .*greedy$"):
        get_engine("duckduckgo")
    assert sorted(ENGINES) == sorted(ALL_ENGINES)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"limit": 0}, "engine limit must be a whole number ≥ 1, not 0 — fix `per_query`"),
        ({"max_pages": 0}, "engine max_pages must be a whole number ≥ 1, not 0"),
        ({"timeout": -1}, "engine timeout must be a positive number of seconds, not -1"),
    ],
)
def test_engine_options_are_validated(kwargs: dict, message: str) -> None:
    with pytest.raises(DsbuildError) as err:
        EngineOptions(**kwargs)
    assert str(err.value) == message


def test_empty_query_is_refused() -> None:
    with pytest.raises(DsbuildError, match="got an empty query"):
        get_engine("bing").links("   ", EngineOptions())


# --------------------------------------------------------------------------- hosts and network


@pytest.mark.parametrize("engine", SEARCH_ENGINES)
def test_private_endpoint_refused_without_allow_private_hosts(fake_engine: FakeEngineServer, engine: str) -> None:
    with pytest.raises(DsbuildError) as err:
        get_engine(engine).links(QUERY, EngineOptions(endpoint=fake_engine.url))
    assert str(err.value) == (
        f"endpoint of engine '{engine}' {fake_engine.url} is a loopback/private address (127.0.0.1) and private hosts "
        f"are refused — set `allow_private_hosts = true` in the dataset's manifest table to allow it (meant for tests "
        f"and intranet sources)"
    )
    assert fake_engine.requests == []


@pytest.mark.parametrize(
    "endpoint",
    ["http://localhost:9", "http://10.1.2.3", "http://169.254.169.254", "http://[::1]:8080", "http://2130706433/"],
)
def test_private_endpoint_forms_are_all_refused(endpoint: str) -> None:
    with pytest.raises(DsbuildError, match=r"is a loopback/private address .* set `allow_private_hosts = true`"):
        get_engine("bing").validate(EngineOptions(endpoint=endpoint))


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        ("ftp://127.0.0.1", "endpoint of engine 'bing' 'ftp://127.0.0.1' must be an http(s) URL with a host, e.g. http://127.0.0.1:8765"),
        ("127.0.0.1:8765", "endpoint of engine 'bing' '127.0.0.1:8765' must be an http(s) URL with a host, e.g. http://127.0.0.1:8765"),
        ("http://127.0.0.1:8765/?x=1", "endpoint of engine 'bing' 'http://127.0.0.1:8765/?x=1' must be a base URL without '?query' or '#fragment'"),
    ],
)  # fmt: skip
def test_bad_endpoint_urls(endpoint: str, message: str) -> None:
    with pytest.raises(DsbuildError) as err:
        get_engine("bing").validate(EngineOptions(endpoint=endpoint, allow_private_hosts=True))
    assert str(err.value) == message


def test_greedy_private_site_refused_and_non_http_site_rejected(fake_engine: FakeEngineServer) -> None:
    with pytest.raises(DsbuildError, match=r"^greedy site http://127\.0\.0\.1:\d+/site is a loopback/private address"):
        get_engine("icrawler:greedy").links(f"{fake_engine.url}/site", EngineOptions())
    with pytest.raises(DsbuildError, match=r"^greedy site 'ftp://example.org' must be an http\(s\) URL such as https://example.org/gallery$"):
        get_engine("icrawler:greedy").links("ftp://example.org", EngineOptions())
    assert fake_engine.requests == []


def test_greedy_endpoint_replaces_the_site_origin(fake_engine: FakeEngineServer) -> None:
    result = get_engine("icrawler:greedy").search("gallery.example.org/site", opts(fake_engine, limit=7))
    assert [link.url for link in result.links] == fake_engine.planted("site")[:7]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("engine", ALL_ENGINES)
def test_connection_refused_is_one_clear_engine_error(engine: str) -> None:
    port = closed_port()
    endpoint = f"http://127.0.0.1:{port}"
    query = f"{endpoint}/site" if engine == "icrawler:greedy" else QUERY
    with pytest.raises(EngineError) as err:
        get_engine(engine).search(query, EngineOptions(endpoint=endpoint, allow_private_hosts=True))
    assert str(err.value) == (
        f"cannot reach 127.0.0.1:{port} (connection refused) — check that the endpoint {endpoint} is running "
        f"or fix `endpoint` in the manifest"
    )


def test_unresolvable_endpoint_is_one_clear_engine_error() -> None:
    with pytest.raises(EngineError) as err:
        get_engine("icrawler:baidu").search(QUERY, EngineOptions(endpoint="http://no-such-engine.invalid"))
    assert str(err.value) == (
        "cannot reach no-such-engine.invalid (host name not found) — check that the endpoint "
        "http://no-such-engine.invalid is running or fix `endpoint` in the manifest"
    )


class OfflineBing(BingEngine):
    """Bing whose real host cannot resolve (``.invalid`` never does): what a machine without network sees."""

    origin = "https://www.bing.invalid"


def test_no_network_message_for_the_real_host() -> None:
    with pytest.raises(EngineError) as err:
        OfflineBing().search(QUERY, EngineOptions())
    assert str(err.value) == "cannot reach www.bing.invalid (no network?) — check your connection or set `endpoint`"


# --------------------------------------------------------------------------- Flickr key


def test_flickr_missing_key_names_the_variable(monkeypatch: pytest.MonkeyPatch, fake_engine: FakeEngineServer) -> None:
    monkeypatch.delenv("DSBUILD_TEST_FLICKR", raising=False)
    with pytest.raises(DsbuildError) as err:
        get_engine("icrawler:flickr").links(QUERY, opts(fake_engine, api_key_env="DSBUILD_TEST_FLICKR"))
    assert str(err.value) == (
        "engine 'icrawler:flickr' needs a Flickr API key in the environment variable DSBUILD_TEST_FLICKR — get one at "
        "https://www.flickr.com/services/api/misc.api_keys.html and `export DSBUILD_TEST_FLICKR=...`"
    )
    assert fake_engine.requests == []


def test_flickr_rejected_key_is_an_engine_error(monkeypatch: pytest.MonkeyPatch, fake_engine: FakeEngineServer) -> None:
    monkeypatch.setenv("FLICKR_API_KEY", "wrong-key")
    with pytest.raises(EngineError, match=r"^Flickr rejected the API key in FLICKR_API_KEY: Invalid API Key \(Key has invalid format\) \(code 100\)"):
        get_engine("icrawler:flickr").search(QUERY, opts(fake_engine))


def test_flickr_resolves_only_the_photos_it_needs(fake_engine: FakeEngineServer) -> None:
    result = get_engine("icrawler:flickr").search(QUERY, opts(fake_engine, limit=4))
    assert [link.url for link in result.links] == fake_engine.planted(QUERY)[:4]
    assert fake_engine.hits("/services/rest/?method=flickr.photos.getSizes") == 4


def test_flickr_parsers_own_requests_do_not_follow_redirects(fake_engine: FakeEngineServer) -> None:
    """icrawler's FlickrParser calls ``session.get`` itself, and requests' ``Session.get`` asks for redirects to be
    followed: the engine session refuses them anyway, so a getSizes answer cannot send the crawl to another host
    (every hop of dsbuild's own fetches is checked; this one would not be)."""
    fake_engine.flickr_sizes_redirect = f"{fake_engine.url}/photo/elsewhere"
    result = get_engine("icrawler:flickr").search(QUERY, opts(fake_engine, limit=4))
    assert fake_engine.hits("/services/rest/?method=flickr.photos.getSizes") > 0
    assert fake_engine.hits("/photo/elsewhere") == 0
    assert list(result.links) == []


# --------------------------------------------------------------------------- the libraries we build on


def test_bing_parsing_is_bing_image_downloaders_own() -> None:
    from bing_image_downloader.bing import Bing

    source = inspect.getsource(Bing.run)
    assert f"re.findall('{MURL_PATTERN}', html)" in source
    assert "_html.unescape(link).replace(' ', '%20')" in source
    bing = Bing("q", 1, ".", "off", 1, verbose=False)
    for shorthand in LIBRARY_TYPES:
        assert bing.get_filter(shorthand).startswith("+filterui:photo-"), shorthand


@pytest.mark.parametrize(
    ("feeder", "ours"),
    [
        ("icrawler.builtin.bing.BingFeeder", IcrawlerBingEngine.filter_choices),
        ("icrawler.builtin.bing.BingFeeder", {k: v for k, v in BING_FILTERS.items() if k != "type"}),
        ("icrawler.builtin.baidu.BaiduFeeder", IcrawlerBaiduEngine.filter_choices),
        ("icrawler.builtin.google.GoogleFeeder", IcrawlerGoogleEngine.filter_choices),
    ],
)
def test_filter_tables_match_the_pinned_icrawler(feeder: str, ours: dict) -> None:
    import importlib

    import icrawler

    assert icrawler.__version__ == "0.6.10"
    module, cls = feeder.rsplit(".", 1)
    rules = getattr(importlib.import_module(module), cls).get_filter(None).rules
    for name, spec in ours.items():
        _fmt, choices = rules[name]
        if choices is not None:
            assert list(spec.choices) == choices, name
        for value in spec.choices:  # every value we allow formats without error in icrawler
            assert isinstance(_fmt(value), str), (name, value)


def test_importing_engines_is_cheap() -> None:
    code = (
        "import sys, dsbuild.sources.engines\n"
        "heavy = [m for m in ('icrawler', 'bing_image_downloader', 'requests', 'bs4', 'PIL') if m in sys.modules]\n"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
