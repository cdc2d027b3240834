"""The engines' HTTP side: one guarded requests session per query, the page fetcher and the page loop.

Each engine's real host can be replaced by ``EngineOptions.endpoint`` (a base
URL such as ``http://127.0.0.1:8765``): every request to the engine's origin is
re-based onto it, so tests talk to a loopback fake engine serving pages in the
engine's real format. Loopback/private endpoints are refused unless
``allow_private_hosts=True`` (the manifest switch ``allow_private_hosts = true``).

A page is fetched with a wall-clock deadline, a size cap counted after
decompression, manual redirects (each hop re-checked) and retries for
timeouts, resets and 5xx; the engine's own host that cannot be reached at all
before it answered raises :class:`~dsbuild.errors.EngineError`; everything else —
a redirect target or another host that cannot be reached included — ends the
query with an :class:`~dsbuild.sources.engines.types.Outcome` (:class:`Stop`).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from dsbuild.errors import DsbuildError, EngineError, cause_chain
from dsbuild.netguard import AddressPolicy
from dsbuild.sources.engines.types import EngineOptions, Outcome
from dsbuild.sources.urls import Link, normalize_url

if TYPE_CHECKING:  # pragma: no cover
    import requests

# --------------------------------------------------------------------------- hosts


_PUBLIC_ONLY = AddressPolicy()


def private_address_of(host: str) -> str | None:
    """The first address ``host`` resolves to that :mod:`dsbuild.netguard` refuses (private, loopback,
    link-local, reserved, multicast, IPv4 inside IPv6, ...), or None.

    The rule is netguard's, the downloader's. A host that does not resolve returns None
    (the request itself then fails with a clear "cannot reach" message). Numeric forms
    such as ``2130706433`` are resolved by the system resolver and therefore caught.
    """
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError, OSError):
        return None
    for info in infos:
        addr = str(info[4][0])
        if not _PUBLIC_ONLY.allows(addr):
            return addr
    return None


_PRIVATE_HINT = (
    "set `allow_private_hosts = true` in the dataset's manifest table to allow it "
    "(meant for tests and intranet sources)"
)


def check_base_url(url: str, *, what: str, allow_private_hosts: bool) -> str:
    """Validate an http(s) base URL (endpoint or greedy site); return it without a trailing slash.

    Raises DsbuildError for a non-http(s) or host-less URL, and for a
    loopback/private host unless ``allow_private_hosts``.
    """
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as err:
        example = "https://example.org/gallery" if what == "greedy site" else "http://127.0.0.1:8765"
        raise DsbuildError(f"{what} {url!r} is not a valid URL ({err}) — use e.g. {example}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DsbuildError(f"{what} {url!r} must be an http(s) URL with a host, e.g. http://127.0.0.1:8765")
    if parts.query or parts.fragment:
        raise DsbuildError(f"{what} {url!r} must be a base URL without '?query' or '#fragment'")
    if not allow_private_hosts:
        addr = private_address_of(parts.hostname)
        if addr is not None:
            raise DsbuildError(
                f"{what} {url} is a loopback/private address ({addr}) and private hosts are refused — {_PRIVATE_HINT}"
            )
    return url.strip().rstrip("/")


# --------------------------------------------------------------------------- HTTP

MAX_PAGE_BYTES = 16 * 1024 * 1024  # a results page larger than this is not a results page
MAX_REDIRECTS = 5
FORMAT_HINT_BYTES = 16_384  # an empty results page bigger than this gets a "format changed?" hint
RETRIES = 2  # extra attempts for timeouts, resets and 5xx; backoff 0.5 s, 1 s
BACKOFF_S = 0.5

# Lower-case markers of captcha / robot-check / anti-crawler pages (Bing, Google, Baidu, Cloudflare).
BLOCK_MARKERS = (
    "captcha",
    "unusual traffic",
    "verify you are human",
    "are you a robot",
    "not a robot",
    "/sorry/index",
    "antiflag",
    "forbid spider",
    "challenge-form",
    "cf-chl",
)


class _Refused(Exception):
    """A request to a private host without ``allow_private_hosts`` (raised inside the session)."""


class Stop(Exception):
    """Raised inside a crawl to end the query with ``reason`` (turned into an Outcome)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Page:
    """A fetched results page. ``url`` is the final URL actually fetched (after re-basing and redirects).

    It quacks like the ``requests.Response`` the icrawler parsers read
    (``content``, ``url``, ``status_code``, ``headers``, ``text``).
    """

    url: str
    status_code: int
    headers: Mapping[str, str]
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def blocked_marker(self) -> str | None:
        """The captcha/robot-check marker found in the page, or None."""
        head = self.content[:262_144].decode("utf-8", "replace").lower()
        for marker in BLOCK_MARKERS:
            if marker in head:
                return marker
        return None


def _make_session_class() -> type:
    import requests

    class EngineSession(requests.Session):
        """requests.Session that re-bases the engine origin onto the endpoint and guards hosts.

        Every request (also the ones icrawler's parsers make themselves, e.g.
        Flickr's getSizes) goes through :meth:`request`: the URL is re-based,
        its host checked, a timeout set and redirects disabled (our fetch
        follows them hop by hop so each hop is checked too).
        """

        def __init__(self, *, origin: str | None, endpoint: str | None, timeout: float, allow_private: bool) -> None:
            super().__init__()
            self.origin = origin.rstrip("/") if origin else None
            self.endpoint = endpoint.rstrip("/") if endpoint else None
            self.default_timeout = timeout
            self.allow_private = allow_private
            self._host_verdicts: dict[str, str | None] = {}
            if endpoint:
                # A configured endpoint (loopback fake, intranet mirror) is reached directly.
                self.trust_env = False

        def rebase(self, url: str) -> str:
            if self.endpoint and self.origin and (url == self.origin or url.startswith(self.origin + "/")):
                return self.endpoint + url[len(self.origin) :]
            return url

        def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
            url = self.rebase(str(url))
            host = urlsplit(url).hostname or ""
            if not self.allow_private:
                if host not in self._host_verdicts:
                    self._host_verdicts[host] = private_address_of(host)
                if self._host_verdicts[host] is not None:
                    raise _Refused(f"{host} is a loopback/private address ({self._host_verdicts[host]})")
            kwargs.setdefault("timeout", (self.default_timeout, self.default_timeout))
            # Forced, not defaulted: Session.get sets allow_redirects=True before it calls request(), so a
            # parser's own get (Flickr's getSizes) would follow a redirect to any host, unchecked.
            kwargs["allow_redirects"] = False
            return super().request(method, url, *args, **kwargs)

    return EngineSession


_SESSION_CLASS: type | None = None


def make_session(
    *, origin: str | None, endpoint: str | None, timeout: float, allow_private: bool, headers: Mapping[str, str]
) -> requests.Session:
    """A requests session for one query (see ``EngineSession``)."""
    global _SESSION_CLASS
    if _SESSION_CLASS is None:
        _SESSION_CLASS = _make_session_class()
    session = _SESSION_CLASS(origin=origin, endpoint=endpoint, timeout=timeout, allow_private=allow_private)
    session.headers.update(dict(headers))
    session.max_redirects = MAX_REDIRECTS
    return session


def _unreachable_kind(err: BaseException) -> str | None:
    """'dns' / 'refused' / 'connect' / 'timeout' / 'tls' when ``err`` means the host could not be reached at all
    (no HTTP answer came back from it)."""
    import ssl

    import urllib3.exceptions as u3

    for e in cause_chain(err):
        if isinstance(e, (u3.NameResolutionError, socket.gaierror)):
            return "dns"
        if isinstance(e, ConnectionRefusedError):
            return "refused"
    for e in cause_chain(err):
        if isinstance(e, (u3.SSLError, ssl.SSLError)):
            return "tls"
    for e in cause_chain(err):
        if isinstance(e, u3.NewConnectionError):  # (a subclass of ConnectTimeoutError in urllib3 2)
            return "connect"
        if isinstance(e, u3.ConnectTimeoutError):
            return "timeout"
    return None


_WHY = {
    "dns": "host name not found",
    "refused": "connection refused",
    "connect": "no connection",
    "timeout": "connection timed out",
    "tls": "TLS handshake failed",
}


class Crawl:
    """State of one query: session, pages, seen links, ranks; shared by all engines.

    ``fetch`` returns a :class:`Page` or raises :class:`Stop` (blocked/error) or :class:`EngineError`: the
    engine's host (its endpoint, or its real origin) could not be reached before it answered anything in this
    query — no query sent there can succeed. A host that cannot be reached after the engine answered (a redirect
    target, another site, the engine going away mid-query) ends this query only, with a Stop naming it.
    A greedy crawl without an endpoint has no engine host (each query is its own site): its failures are Stops.
    ``accept`` turns raw engine links into ranked :class:`Link` objects.
    """

    def __init__(
        self,
        *,
        engine: str,
        query: str,
        options: EngineOptions,
        origin: str | None,
        headers: Mapping[str, str],
    ) -> None:
        self.engine = engine
        self.query = query
        self.options = options
        self.origin = origin
        endpoint = options.endpoint
        self.session = make_session(
            origin=origin,
            endpoint=endpoint,
            timeout=options.timeout,
            allow_private=options.allow_private_hosts,
            headers=headers,
        )
        self.host = urlsplit(endpoint or origin or "").netloc or "the engine"
        # Whether the engine's own host failing stops every query of this engine (an endpoint or a real origin).
        self.engine_host = bool(endpoint or origin)
        self._hop_url = ""  # the URL of the request in flight (after redirects), for naming a failing host
        self._hop = 0
        self.pages = 0
        self.rank = 0
        self.skipped = 0
        self.reached = False  # did any response come back from the engine host?
        self.seen: set[str] = set()

    # ---------------------------------------------------------------- fetching

    def _unreachable(self, kind: str, url: str) -> EngineError:
        host = urlsplit(url).netloc or self.host
        if self.options.endpoint:
            why = _WHY.get(kind, "no connection")
            return EngineError(
                f"cannot reach {host} ({why}) — check that the endpoint {self.options.endpoint} is running "
                f"or fix `endpoint` in the manifest"
            )
        why = "no network?" if kind in ("dns", "refused", "connect", "timeout") else _WHY.get(kind, "no network?")
        return EngineError(f"cannot reach {host} ({why}) — check your connection or set `endpoint`")

    def _not_reached(self, kind: str, url: str, err: BaseException) -> str:
        """The Stop detail for a host that could not be reached within this query (names the host)."""
        why = _WHY.get(kind, "no connection")
        if kind == "tls":
            why += f": {_tls_reason(err)}"
        if self._hop:
            shown = url if len(url) <= 100 else url[:97] + "..."
            return f"redirected page {self.pages + 1} to {shown}, which cannot be reached ({why})"
        host = urlsplit(url).netloc
        if host == self.host:
            return f"could not be reached ({why})"
        return f"could not reach {host} for page {self.pages + 1} ({why})"

    def _read(self, resp: requests.Response, deadline: float) -> bytes:
        length = resp.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > MAX_PAGE_BYTES:
            raise Stop("error", f"page is {int(length)} bytes, more than {MAX_PAGE_BYTES} — not a results page")
        chunks: list[bytes] = []
        size = 0
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"page took longer than {self.options.timeout:g} s")
            # read1 returns after one socket read: a server dripping bytes cannot hold us past the
            # deadline (read(n) and iter_content would wait for n bytes, each recv within the timeout).
            chunk = resp.raw.read1(65536, decode_content=True)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_PAGE_BYTES:  # counted after decompression: a gzip bomb stops here
                raise Stop("error", f"page is larger than {MAX_PAGE_BYTES} bytes — not a results page")
        return b"".join(chunks)

    def _get_once(self, url: str) -> Page:
        """One GET with manual, checked redirects and a wall-clock deadline."""
        deadline = time.monotonic() + self.options.timeout
        for hop in range(MAX_REDIRECTS + 1):
            self._hop_url, self._hop = self.session.rebase(url), hop
            # allow_redirects=False here: Session.get defaults it to True, and requests would then follow the
            # redirects itself — unchecked, not re-based, and a failing target blamed on the engine.
            resp = self.session.get(url, stream=True, allow_redirects=False)
            try:
                self.reached = True
                if resp.is_redirect and "Location" in resp.headers:
                    from urllib.parse import urljoin

                    target = urljoin(resp.url, resp.headers["Location"])
                    if urlsplit(target).scheme not in ("http", "https"):
                        raise Stop("error", f"redirected to a non-http(s) URL {target[:100]}")
                    url = target
                    continue
                body = self._read(resp, deadline)
                return Page(url=resp.url, status_code=resp.status_code, headers=dict(resp.headers), content=body)
            finally:
                resp.close()
        raise Stop("error", f"more than {MAX_REDIRECTS} redirects")

    def fetch(self, url: str) -> Page:
        """Fetch one results page (retrying timeouts/resets/5xx) and classify its HTTP status."""
        import requests

        last = ""
        for attempt in range(RETRIES + 1):
            if attempt:
                time.sleep(BACKOFF_S * 2 ** (attempt - 1))
            try:
                page = self._get_once(url)
            except _Refused as err:
                raise Stop("error", f"refused to fetch {url[:100]}: {err} — {_PRIVATE_HINT}") from None
            except (requests.RequestException, TimeoutError, OSError) as err:
                kind = _unreachable_kind(err)
                failed = self._hop_url or self.session.rebase(url)
                own = urlsplit(failed).netloc == self.host
                if kind is not None:
                    if own and not self.reached and self.engine_host:
                        # The engine itself cannot be reached: no query sent to it can succeed.
                        raise self._unreachable(kind, failed) from None
                    if not own or self._hop or kind in ("dns", "tls") or not self.engine_host:
                        # Another host (a redirect target, another site), or a site that cannot be reached:
                        # this query ends here, naming that host — trying again would not change it.
                        raise Stop("error", self._not_reached(kind, failed, err)) from None
                last = _short_error(err)
                if not own:
                    last = f"{urlsplit(failed).netloc}: {last}"
                continue
            self.pages += 1
            status = page.status_code
            if status in (403, 429):
                what = "rate limited" if status == 429 else "forbidden"
                raise Stop("blocked", f"answered page {self.pages} with HTTP {status} ({what})")
            if 500 <= status < 600:
                last = f"HTTP {status}"
                self.pages -= 1  # a failed attempt is not a page
                continue
            if status >= 400:
                raise Stop("error", f"answered page {self.pages} with HTTP {status}")
            return page
        raise Stop("error", f"page {self.pages + 1} failed after {RETRIES + 1} attempts ({last})")

    # ---------------------------------------------------------------- links

    def accept(self, raw_url: str, page_url: str | None) -> Link | None:
        """A ranked Link for a new, valid URL; None for a duplicate (or a malformed URL, counted)."""
        try:
            url = normalize_url(raw_url)
        except ValueError:
            self.skipped += 1
            return None
        if url in self.seen:
            return None
        self.seen.add(url)
        self.rank += 1
        return Link(url=url, engine=self.engine, query=self.query, rank=self.rank, page_url=page_url)

    @property
    def full(self) -> bool:
        return self.rank >= self.options.limit

    # ---------------------------------------------------------------- outcomes

    def outcome(self, reason: str, detail: str = "") -> Outcome:
        n, p = self.rank, self.pages
        where = f"{self.host}"
        if reason == "limit":
            msg = f"got {n} links in {p} page(s) (the per-query limit)"
        elif reason == "no_results":
            msg = f"{where} found no images for {self.query!r}"
        elif reason == "exhausted":
            msg = f"{where} has no more results after {n} links ({p} page(s))"
        elif reason == "repeated_page":
            msg = f"{where} served the same results again on page {p} (no new links) — stopped after {n} links"
        elif reason == "max_pages":
            msg = f"stopped at max_pages={self.options.max_pages} with {n} links"
        elif reason == "blocked":
            msg = (
                f"{where} {detail} instead of results for {self.query!r} — stopped this query after {n} links; "
                f"try again later, lower `per_query`, or use another engine"
            )
        else:
            msg = f"{where} {detail} — stopped this query after {n} links"
        if self.skipped:
            msg += f"; {self.skipped} malformed link(s) dropped"
        return Outcome(reason=reason, message=msg, pages=p, links=n, skipped=self.skipped)

    def end(self, page: Page | None = None) -> Outcome:
        """Outcome when the engine has no more results (``page``: the empty results page, if any)."""
        if self.rank == 0 and page is not None and len(page.content) > FORMAT_HINT_BYTES:
            # A big page without a single result is more likely a changed page format than no images.
            out = self.outcome("no_results")
            hint = (
                f" (page {self.pages} had {len(page.content)} bytes but no results in the format this engine reads — "
                f"if this persists the engine may have changed its pages; try another engine)"
            )
            return Outcome(reason=out.reason, message=out.message + hint, pages=out.pages, links=0, skipped=out.skipped)
        return self.outcome("no_results" if self.rank == 0 else "exhausted")

    def close(self) -> None:
        self.session.close()


def _tls_reason(err: BaseException) -> str:
    """The TLS library's own words for a failed handshake (``[SSL: WRONG_VERSION_NUMBER] wrong version number``)."""
    import ssl

    for e in cause_chain(err):
        if isinstance(e, ssl.SSLError) and str(e).strip():
            return _short_error(Exception(" ".join(str(e).split())), 100)
    return _short_error(err, 100)


def _short_error(err: BaseException, width: int = 160) -> str:
    text = str(err).strip() or type(err).__name__
    return text if len(text) <= width else text[: width - 3] + "..."


def crawl_pages(
    crawl: Crawl,
    next_url: Callable[[], str | None],
    parse: Callable[[Page], Iterable[str]],
) -> Generator[Link, None, Outcome]:
    """The shared results-page loop of the search engines.

    ``next_url()`` gives the next results page URL (None: no more pages); it may
    read ``crawl`` (e.g. Bing's next offset). ``parse(page)`` gives the raw
    image URLs on a page in rank order (lazily is fine: Flickr resolves each
    photo with a request); it may raise :class:`Stop` (e.g. "not a results page").
    """
    try:
        while not crawl.full:
            url = next_url()
            if url is None:
                return crawl.end()
            if crawl.pages >= crawl.options.max_pages:
                return crawl.outcome("max_pages")
            page = crawl.fetch(url)
            raw = new = 0
            skipped_before = crawl.skipped
            for raw_url in parse(page):
                raw += 1
                link = crawl.accept(raw_url, page.url)
                if link is not None:
                    new += 1
                    yield link
                    if crawl.full:
                        return crawl.outcome("limit")
            if raw == 0:
                marker = page.blocked_marker()
                if marker is not None:
                    return crawl.outcome("blocked", f"answered page {crawl.pages} with a captcha / robot check ({marker!r})")
                return crawl.end(page)
            if new == 0:
                duplicates = raw - (crawl.skipped - skipped_before)
                # Only links already seen: the engine serves the same page again (Bing's last page).
                return crawl.outcome("repeated_page") if duplicates else crawl.end()
        return crawl.outcome("limit")
    except Stop as stop:
        return crawl.outcome(stop.reason, stop.detail)
    finally:
        crawl.close()
