"""Loopback fake search engines serving pages in each engine's REAL format, plus real JPEGs.

One :class:`FakeEngineServer` (a ``ThreadingHTTPServer`` on ``127.0.0.1``,
random port) answers as every supported engine at once, at the paths the real
engines use, so ``EngineOptions(endpoint=server.url, allow_private_hosts=True)``
points any engine at it:

=========================  ================================================================
``/images/async``          Bing async page: ``<div class="imgpt"><a class="iusc" m="{&quot;murl&quot;:&quot;URL&quot;,…}">``
                           (``first`` = result offset, ``count`` = page size, default 35;
                           past the end an empty body, as Bing does)
``/search/acjson``         Baidu JSON (``pn`` offset, ``rn`` page size): ``data`` items with an
                           encrypted ``objURL`` (icrawler's BaiduParser decodes it) and a final ``{}``
``/search``                Google HTML: an ``AF_initDataCallback`` ``<script>`` with
                           ``["URL",h,w]`` entries (``\\u003d``-escaped), ``start`` offset, 100 a page
``/services/rest/``        Flickr REST JSON: ``flickr.photos.search`` (``page``/``per_page``; past the
                           last page Flickr repeats the last page) and ``flickr.photos.getSizes``
``/site``, ``/site/pN``    a small web site for the greedy crawler (``<img src>`` + in-site links);
                           its images are ``planted("site")``, ``greedy_page_size`` a page
``/img/…``                 real JPEGs made with Pillow from ``skimage.data`` photos
``/photo/NAME``            the bytes given to :meth:`FakeEngineServer.serve` under ``NAME`` (404 otherwise)
=========================  ================================================================

Switches (attributes, may be changed while the server runs):

* ``total`` — N results per query; ``planted(query)`` lists their URLs in rank order,
  ``plant(query, urls)`` replaces them (e.g. URLs with ``&``, spaces, non-ASCII);
* ``mode`` — ``"normal"``; ``"zero"`` (no results); ``"captcha"`` (a robot-check page:
  Bing/greedy 200 HTML, Google 429 "unusual traffic", Baidu ``antiFlag`` JSON, Flickr 429);
  ``"same_page"`` (the first page served again for every offset, forever);
  ``"rate_limited"`` (429); ``"server_error"`` (500); ``"changed_format"`` (a 20 KB HTML page in
  a layout no parser knows, as when an engine redesigns its pages);
* ``bing_page_size`` — Bing results per page when no ``count`` is sent (35); ``bing_max_count`` — the
  most Bing returns whatever ``count`` asks (150);
* ``page_delay`` — seconds before any engine page is answered (a slow or stalled engine);
  ``page_drip`` — seconds between single bytes of an engine page's body (a dripping server);
* ``image_delay`` — seconds of latency per image (benchmarks); ``image_size`` — JPEG size;
* ``flickr_api_key`` — the key the Flickr API accepts (else ``stat: fail``, code 100).
* ``flickr_sizes_redirect`` — when set, ``flickr.photos.getSizes`` answers 302 with this URL as ``Location``.

Every request path is appended to ``requests``; :meth:`hits` counts them by prefix.

For benchmarks run the server in its own process: in the downloader's process its
handler threads compete for the same GIL (one process serving and fetching
640×480 JPEGs with 100 ms latency and 64 client threads tops out near 530 img/s here).
The ``fake_engine`` fixture (tests/conftest.py) runs one for a test.
"""

from __future__ import annotations

import hashlib
import html
import io
import json
import math
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, urlsplit


MODES = ("normal", "zero", "captcha", "same_page", "rate_limited", "server_error", "changed_format")
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")

_JPEG_CACHE: dict[tuple[str, tuple[int, int]], bytes] = {}
_JPEG_LOCK = threading.Lock()


def real_jpeg(index: int, size: tuple[int, int] = (64, 48)) -> bytes:
    """A real photo (``skimage.data``) resized to ``size`` (w, h) and JPEG-encoded; cached."""
    name = PHOTOS[index % len(PHOTOS)]
    key = (name, tuple(size))
    with _JPEG_LOCK:
        if key not in _JPEG_CACHE:
            from PIL import Image
            from skimage import data

            img = Image.fromarray(getattr(data, name)()).convert("RGB").resize(tuple(size))
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=85)
            _JPEG_CACHE[key] = buf.getvalue()
        return _JPEG_CACHE[key]


def baidu_encrypt(url: str) -> str:
    """Inverse of icrawler's ``BaiduParser._decode_url`` (Baidu's ``objURL`` scrambling)."""
    from icrawler.builtin.baidu import BaiduParser

    encoded = _baidu_encode(url)
    assert BaiduParser._decode_url(None, encoded) == url, f"cannot scramble {url!r} reversibly"  # type: ignore[arg-type]
    return encoded


_BAIDU_TOKENS = {":": "_z2C$q", ".": "_z&e3B", "/": "AzdH3F"}
_BAIDU_MAP = {
    "w": "a", "k": "b", "v": "c", "1": "d", "j": "e", "u": "f", "2": "g", "i": "h", "t": "i",
    "3": "j", "h": "k", "s": "l", "4": "m", "g": "n", "5": "o", "r": "p", "q": "q", "6": "r",
    "f": "s", "p": "t", "7": "u", "e": "v", "o": "w", "8": "1", "d": "2", "n": "3", "9": "4",
    "c": "5", "m": "6", "0": "7", "b": "8", "l": "9", "a": "0",
}  # fmt: skip  (icrawler 0.6.10 BaiduParser map2: cipher → plain)
_BAIDU_INV = {plain: cipher for cipher, plain in _BAIDU_MAP.items()}


def _baidu_encode(url: str) -> str:
    return "".join(_BAIDU_TOKENS.get(c) or _BAIDU_INV.get(c, c) for c in url)


CAPTCHA_HTML = (
    "<!DOCTYPE html><html><head><title>Verify you are human</title></head><body>"
    '<form id="challenge-form" action="/captcha/verify" method="post">'
    "<p>Our systems have detected unusual traffic from your network. Please solve the CAPTCHA.</p>"
    '<input type="hidden" name="c" value="x"><button type="submit">Continue</button></form></body></html>'
)
GOOGLE_SORRY_HTML = (
    "<html><head><title>https://www.google.com/search</title></head><body><div>"
    "Our systems have detected unusual traffic from your computer network. This page checks to see "
    "if it's really you sending the requests, and not a robot. "
    '<form action="/sorry/index" method="post"><div class="g-recaptcha"></div></form></div></body></html>'
)


class FakeEngineServer:
    """All fake engines and the image server on one loopback port (see module doc)."""

    def __init__(
        self,
        *,
        total: int = 100,
        mode: str = "normal",
        image_size: tuple[int, int] = (64, 48),
        image_delay: float = 0.0,
        flickr_api_key: str = "fake-flickr-key",
        greedy_page_size: int = 5,
        bing_page_size: int = 35,
        bing_max_count: int = 150,
        page_delay: float = 0.0,
        page_drip: float = 0.0,
        flickr_sizes_redirect: str | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.total = total
        self.mode = mode
        self.image_size = image_size
        self.image_delay = image_delay
        self.flickr_api_key = flickr_api_key
        self.greedy_page_size = greedy_page_size
        self.bing_page_size = bing_page_size
        self.bing_max_count = bing_max_count
        self.page_delay = page_delay
        self.page_drip = page_drip
        self.flickr_sizes_redirect = flickr_sizes_redirect
        self.requests: list[str] = []
        self._planted: dict[str, list[str]] = {}
        self._photos: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeEngineServer:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            assert self._thread is not None
            self._thread.join(timeout=5)
            self._httpd = None

    def __enter__(self) -> FakeEngineServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # ------------------------------------------------------------------ planted results

    @staticmethod
    def slug(query: str) -> str:
        return hashlib.sha1(query.encode("utf-8")).hexdigest()[:10]

    def planted(self, query: str) -> list[str]:
        """The result URLs for ``query`` in rank order (``total`` of them unless planted explicitly)."""
        with self._lock:
            if query in self._planted:
                return list(self._planted[query])
        return [f"{self.url}/img/{self.slug(query)}/{i:04d}.jpg" for i in range(1, self.total + 1)]

    def plant(self, query: str, urls: list[str]) -> None:
        """Serve exactly ``urls`` as the results of ``query``."""
        with self._lock:
            self._planted[query] = list(urls)

    def serve(self, name: str, data: bytes) -> str:
        """Serve ``data`` (a JPEG) at ``/photo/<name>``; return its URL."""
        with self._lock:
            self._photos[name] = data
        return f"{self.url}/photo/{name}"

    def hits(self, prefix: str) -> int:
        """How many requests had a path starting with ``prefix``."""
        with self._lock:
            return sum(1 for r in self.requests if r.startswith(prefix))

    def log(self, path: str) -> None:
        with self._lock:
            self.requests.append(path)


def _q(params: dict[str, list[str]], name: str, default: str = "") -> str:
    return params.get(name, [default])[0]


def _int(params: dict[str, list[str]], name: str, default: int) -> int:
    try:
        return int(_q(params, name, str(default)))
    except ValueError:
        return default


class _Handler(BaseHTTPRequestHandler):
    fake: FakeEngineServer
    protocol_version = "HTTP/1.1"  # keep-alive, as the real engines
    disable_nagle_algorithm = True  # headers and body are separate writes: avoid 40 ms delayed-ACK stalls

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet test output
        pass

    # ------------------------------------------------------------------ plumbing

    def _send(self, status: int, body: bytes | str, content_type: str = "text/html; charset=utf-8") -> None:
        data = body.encode("utf-8") if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if status == 429:
            self.send_header("Retry-After", "1")
        self.end_headers()
        if self.command == "HEAD":
            return
        if self.fake.page_drip and content_type != "image/jpeg":
            for i in range(len(data)):
                self.wfile.write(data[i : i + 1])
                time.sleep(self.fake.page_drip)
                if self.fake._httpd is None:  # server stopped: let the thread end
                    return
            return
        self.wfile.write(data)

    def _json(self, obj: object, status: int = 200) -> None:
        self._send(status, json.dumps(obj, ensure_ascii=False), "application/json; charset=utf-8")

    def _common_modes(self) -> bool:
        """Answer rate_limited / server_error modes; True when answered."""
        if self.fake.mode == "rate_limited":
            self._send(429, "<html><body>Too Many Requests</body></html>")
            return True
        if self.fake.mode == "server_error":
            self._send(500, "<html><body>Internal Server Error</body></html>")
            return True
        return False

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        self.fake.log(self.path)
        params = parse_qs(parts.query, keep_blank_values=True)
        path = parts.path
        if path.startswith("/img/"):
            return self._image(path)
        if path.startswith("/photo/"):
            data = self.fake._photos.get(path[len("/photo/"):])
            return self._send(200, data, "image/jpeg") if data else self._send(404, "<html><body>not found</body></html>")
        if self.fake.page_delay:
            time.sleep(self.fake.page_delay)  # a slow / stalled engine
        if self.fake.mode == "changed_format":
            cards = "".join(f'<div class="card"><span data-src="/photo/{i}"></span></div>' for i in range(400))
            return self._send(200, f"<!doctype html><html><body><main>{cards}</main></body></html>")
        if path == "/images/async":
            return self._bing(params)
        if path == "/search/acjson":
            return self._baidu(params)
        if path == "/search":
            return self._google(params)
        if path.rstrip("/") == "/services/rest":
            return self._flickr(params)
        if path == "/site" or path.startswith("/site/"):
            return self._site(path)
        self._send(404, "<html><body>not found</body></html>")

    # ------------------------------------------------------------------ images

    def _image(self, path: str) -> None:
        if self.fake.image_delay:
            time.sleep(self.fake.image_delay)
        digits = re.findall(r"\d+", path.rsplit("/", 1)[-1])
        index = int(digits[0]) if digits else 0
        self._send(200, real_jpeg(index, self.fake.image_size), "image/jpeg")

    def _window(self, query: str, offset: int, size: int) -> list[tuple[int, str]]:
        """(1-based index, url) of the results served for a page, honouring zero/same_page."""
        urls = self.fake.planted(query)
        if self.fake.mode == "zero":
            return []
        if self.fake.mode == "same_page":
            offset = 0
        offset = max(0, offset)
        return [(i + 1, urls[i]) for i in range(offset, min(len(urls), offset + max(0, size)))]

    # ------------------------------------------------------------------ Bing

    def _bing(self, params: dict[str, list[str]]) -> None:
        if self._common_modes():
            return
        if self.fake.mode == "captcha":
            return self._send(200, CAPTCHA_HTML)
        query = _q(params, "q")
        count = min(_int(params, "count", self.fake.bing_page_size), self.fake.bing_max_count)
        items = self._window(query, _int(params, "first", 0), count)
        if self.fake.mode == "zero":
            return self._send(200, '<div id="mmComponent_images_1"><ul class="dgControl_list"></ul></div>')
        if not items:
            return self._send(200, "")  # Bing's async endpoint past the last result
        self._send(200, "".join(self._bing_item(query, i, url) for i, url in items))

    def _bing_item(self, query: str, i: int, url: str) -> str:
        cid = hashlib.md5(url.encode()).hexdigest()[:8]
        turl = f"https://tse1.mm.bing.net/th?id=OIP.{cid}&pid=15.1"
        meta = {
            "sid": "",
            "cturl": "",
            "cid": cid,
            "purl": f"https://example.org/pages/{i}.html",
            "murl": url,
            "turl": turl,
            "md5": hashlib.md5(url.encode()).hexdigest(),
            "shkey": "",
            "t": f"{query} {i}",
            "mid": "",
            "desc": "",
        }
        m = html.escape(json.dumps(meta, ensure_ascii=False, separators=(",", ":")), quote=True)
        return (
            f'<li data-idx="{i}"><div class="iuscp isv"><div class="imgpt">'
            f'<a class="iusc" style="height:160px;width:240px" m="{m}" '
            f'href="/images/search?view=detailV2&amp;q={quote(query)}&amp;idx={i}">'
            f'<div class="img_cont hoff"><img class="mimg" src="{html.escape(turl)}" alt="{html.escape(query)}"/></div></a>'
            f'<div class="img_info hon"><span class="nowrap">640 x 480 · jpeg</span></div></div></div></li>'
        )

    # ------------------------------------------------------------------ Baidu

    def _baidu(self, params: dict[str, list[str]]) -> None:
        if self._common_modes():
            return
        if self.fake.mode == "captcha":
            return self._json({"antiFlag": 1, "message": "Forbid spider access", "bfe_log_id": "1234567890"})
        query = _q(params, "word")
        items = self._window(query, _int(params, "pn", 0), _int(params, "rn", 30))
        data: list[dict] = [
            {
                "thumbURL": f"https://img0.baidu.com/it/u={i},1&fm=253",
                "middleURL": f"https://img0.baidu.com/it/u={i},2&fm=253",
                "objURL": baidu_encrypt(url),
                "fromURL": "ippr_z2C$qAzdH3FAzdH3Fooo_z&e3Bexample_z&e3BorgAzdH3F",
                "width": 640,
                "height": 480,
                "type": "jpg",
            }
            for i, url in items
        ]
        data.append({})  # Baidu ends its data list with an empty object
        n = 0 if self.fake.mode == "zero" else len(self.fake.planted(query))
        self._json({"queryEnc": quote(query), "queryExt": query, "listNum": n, "displayNum": n, "bdIsClustered": "1", "data": data})

    # ------------------------------------------------------------------ Google

    def _google(self, params: dict[str, list[str]]) -> None:
        if self._common_modes():
            return
        if self.fake.mode == "captcha":
            return self._send(429, GOOGLE_SORRY_HTML)
        query = _q(params, "q")
        items = self._window(query, _int(params, "start", 0), 100)

        def esc(u: str) -> str:  # Google escapes = and & inside its JS data
            return json.dumps(u)[1:-1].replace("=", "\\u003d").replace("&", "\\u0026")

        entries = ",".join(
            f'[1,[0,"id{i}",["https://encrypted-tbn0.gstatic.com/images?q\\u003dtbn:ANd9GcQ{i}",183,275],'
            f'["{esc(url)}",480,640],null,0,"rgb(72,72,72)"]]'
            for i, url in items
        )
        body = (
            f"<!doctype html><html><head><title>{html.escape(query)} - Google Search</title>"
            "<script nonce=\"n1\">window.google={kEI:'abc',kEXPI:'0'};</script></head><body>"
            f'<div id="islrg"></div><script nonce="n2">AF_initDataCallback({{key: \'ds:1\', hash: \'2\', '
            f"data:[null,[{entries}]], sideChannel: {{}}}});</script></body></html>"
        )
        self._send(200, body)

    # ------------------------------------------------------------------ Flickr

    def _flickr(self, params: dict[str, list[str]]) -> None:
        if self._common_modes():
            return
        if self.fake.mode == "captcha":
            return self._send(429, "<html><body>Too Many Requests</body></html>")
        if _q(params, "api_key") != self.fake.flickr_api_key:
            return self._json({"stat": "fail", "code": 100, "message": "Invalid API Key (Key has invalid format)"})
        method = _q(params, "method")
        if method == "flickr.photos.search":
            return self._flickr_search(params)
        if method == "flickr.photos.getSizes":
            if self.fake.flickr_sizes_redirect:
                self.send_response(302)
                self.send_header("Location", self.fake.flickr_sizes_redirect)
                self.send_header("Content-Length", "0")
                return self.end_headers()
            return self._flickr_sizes(_q(params, "photo_id"))
        self._json({"stat": "fail", "code": 112, "message": f'Method "{method}" not found'})

    def _flickr_search(self, params: dict[str, list[str]]) -> None:
        query = _q(params, "text")
        per_page = max(1, _int(params, "per_page", 100))
        page = max(1, _int(params, "page", 1))
        n = 0 if self.fake.mode == "zero" else len(self.fake.planted(query))
        pages = math.ceil(n / per_page)
        served = min(page, pages) if pages else 1  # Flickr repeats its last page past the end
        if self.fake.mode == "same_page":
            served, pages = 1, 10_000
        items = self._window(query, (served - 1) * per_page, per_page)
        photos = [
            {"id": f"{self.fake.slug(query)}-{i}", "owner": "12345678@N00", "secret": "abc", "server": "65535",
             "farm": 66, "title": f"{query} {i}", "ispublic": 1, "isfriend": 0, "isfamily": 0}
            for i, _url in items
        ]  # fmt: skip
        self._json({"photos": {"page": page, "pages": pages, "perpage": per_page, "total": n, "photo": photos}, "stat": "ok"})

    def _flickr_sizes(self, photo_id: str) -> None:
        slug, _, idx = photo_id.rpartition("-")
        query = next((q for q in list(self.fake._planted) if self.fake.slug(q) == slug), None)
        urls = self.fake.planted(query) if query is not None else [
            f"{self.fake.url}/img/{slug}/{i:04d}.jpg" for i in range(1, self.fake.total + 1)
        ]
        if not idx.isdigit() or not 1 <= int(idx) <= len(urls):
            return self._json({"stat": "fail", "code": 1, "message": "Photo not found"})
        original = urls[int(idx) - 1]
        small = f"{self.fake.url}/img/{slug}/{int(idx):04d}_s.jpg"
        sizes = [
            {"label": "Square", "width": 75, "height": 75, "source": small, "media": "photo"},
            {"label": "Thumbnail", "width": 100, "height": 75, "source": small, "media": "photo"},
            {"label": "Medium", "width": 500, "height": 375, "source": small, "media": "photo"},
            {"label": "Large", "width": 1024, "height": 768, "source": small, "media": "photo"},
            {"label": "Original", "width": 2048, "height": 1536, "source": original, "media": "photo"},
        ]
        self._json({"sizes": {"canblog": 0, "canprint": 0, "candownload": 1, "size": sizes}, "stat": "ok"})

    # ------------------------------------------------------------------ greedy site

    def _site(self, path: str) -> None:
        if self._common_modes():
            return
        if self.fake.mode == "captcha":
            return self._send(200, CAPTCHA_HTML)
        tail = path[len("/site") :].strip("/")
        if tail == "":
            k = 0
        elif re.fullmatch(r"p\d+", tail):
            k = int(tail[1:])
        else:
            return self._send(404, "<html><body>not found</body></html>")
        per = self.fake.greedy_page_size
        urls = [] if self.fake.mode == "zero" else self.fake.planted("site")
        start = 0 if self.fake.mode == "same_page" else k * per
        images = urls[start : start + per]
        more = self.fake.mode == "same_page" or (k + 1) * per < len(urls)
        base = self.fake.url
        body = ["<!doctype html><html><head><title>Gallery</title></head><body><h1>Gallery</h1>"]
        body += [f'<img src="{html.escape(u)}" alt="photo">' for u in images]
        body.append('<a href="/site">home</a> <a href="/site/about.html">about</a>')
        body.append('<a href="http://elsewhere.invalid/other.html">elsewhere</a> <a href="#top">top</a>')
        if more:
            body.append(f'<a href="/site/p{k + 1}">next</a>')
        body.append(f'<link rel="canonical" href="{base}/site{"/p%d" % k if k else ""}"></body></html>')
        self._send(200, "".join(body))
