"""A loopback image server that misbehaves on purpose: real images plus every trap a downloader meets.

:class:`HostileServer` is a ``ThreadingHTTPServer`` on ``127.0.0.1`` (random
port) running in a background thread; the ``hostile_server`` fixture starts
one per test. Images are real photos from ``skimage.data`` encoded with
Pillow. Each request is counted (:meth:`HostileServer.hits`) and the number of
requests in flight at once is tracked (:attr:`HostileServer.max_inflight`).

==================================  ==========================================================
``/img/NAME.EXT``                   a real photo (``NAME`` from :data:`PHOTOS`; EXT jpg, png,
                                    gif, webp, bmp, tiff); ``?delay=S`` answers after S seconds
``/same/a.jpg``, ``/same/b.jpg``    the same JPEG bytes at two URLs
``/unicode/…``                      a real JPEG at any path below (raw or %-encoded non-ASCII)
``/lies.jpg``                       a PNG served as ``image/jpeg``
``/chunked.jpg``                    a JPEG with ``Transfer-Encoding: chunked``
``/gzip.jpg``                       a JPEG with ``Content-Encoding: gzip`` (legitimate)
``/html-as-jpeg.jpg``               an HTML page served as ``image/jpeg``
``/captcha.jpg``                    a robot-check page (200, HTML)
``/svg.jpg``, ``/text.jpg``         SVG / plain text served as ``image/jpeg``
``/empty.jpg``                      200 with an empty body
``/status/CODE``                    that status (``?retry_after=S`` adds ``Retry-After``)
``/flaky/CODE/N/ANY.jpg``           CODE for the first N hits of that exact path, then a JPEG
                                    (429 answers carry ``Retry-After: 1``)
``/stall-headers.jpg``              reads the request, never answers
``/stall-body.jpg``                 headers and 100 bytes of a JPEG, then nothing
``/drip.jpg?every=S``               a JPEG one byte every S seconds (default 1)
``/short.jpg``                      Content-Length says N, half of N is sent, then close
``/reset.jpg``                      half a JPEG, then a TCP reset (RST)
``/redirect/loop-a``                302 → loop-b → loop-a → …
``/redirect/chain/N``               N redirects, then a JPEG
``/redirect/to?url=U``              302 to any ``U`` (``file:///etc/passwd``, another port, …)
``/endless.jpg``                    ``Content-Length: 2000000000``, JPEG start then zeros (generated)
``/endless-unsized.jpg``            the same without Content-Length (close-delimited), forever
``/gzip-bomb.jpg``                  ``Content-Encoding: gzip`` inflating to 4 GB (made on the fly)
``/noai.jpg?tag=T``                 a real JPEG with ``X-Robots-Tag: T`` (default ``noai``)
``/bomb.png``                       a valid PNG whose header says 20000×20000 (~48 KB on the wire)
``/garbage.jpg``                    not HTTP at all (an SSH banner)
``/huge-header.jpg``                a response with a 100 KB header line
==================================  ==========================================================

``HostileServer(tls=True)`` serves the same routes over HTTPS with a self-signed certificate
(:data:`TLS_CERT`, for 127.0.0.1 and localhost). ``HostileServer(host="127.0.0.2")`` binds
another loopback address (Linux routes all of 127/8 to loopback).

Nothing large is ever stored: endless bodies and the gzip bomb are generated
while the client reads and stop when it hangs up. Handlers that stall watch
the socket and end as soon as the client disconnects or the server stops.
"""

from __future__ import annotations

import gzip
import io
import select
import socket
import ssl
import struct
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit


PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
FORMATS = {"jpg": "JPEG", "png": "PNG", "gif": "GIF", "webp": "WEBP", "bmp": "BMP", "tiff": "TIFF"}
CONTENT_TYPES = {"jpg": "image/jpeg", "png": "image/png", "gif": "image/gif", "webp": "image/webp",
                 "bmp": "image/bmp", "tiff": "image/tiff"}
ENDLESS_LENGTH = 2_000_000_000
GZIP_BOMB_BYTES = 4 * 1024**3
BOMB_SIDE = 20_000

CAPTCHA_HTML = (
    b"<!DOCTYPE html><html><head><title>Just a moment...</title></head><body>"
    b"<p>Please verify you are a human.</p><form action='/captcha/verify'><div class='g-recaptcha'></div></form>"
    b"</body></html>"
)
HTML_PAGE = b"<html><head><title>Photo of a cat</title></head><body><img src='/img/chelsea.jpg'></body></html>"
SVG = (
    b'<?xml version="1.0"?>\n'
    b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>'
)
TEXT = b"Sorry, this image is no longer available. Please contact the site owner.\n"

# TEST ONLY, not a secret: a self-signed certificate (valid to 2126, CA:TRUE, for IP 127.0.0.1 and
# DNS localhost) and its key, so that ``HostileServer(tls=True)`` can serve HTTPS on loopback. A
# client trusts it only when given TLS_CERT as its CA bundle.
TLS_CERT = """\
-----BEGIN CERTIFICATE-----
MIIB5jCCAYygAwIBAgIUbl/UG90zUb7CEDuf6ZmW6sG878AwCgYIKoZIzj0EAwIw
JjEkMCIGA1UEAwwbZHNidWlsZCBob3N0aWxlIHRlc3Qgc2VydmVyMCAXDTI2MTEy
MjE4MDM0MFoYDzIxMjYxMDI5MTgwMzQwWjAmMSQwIgYDVQQDDBtkc2J1aWxkIGhv
c3RpbGUgdGVzdCBzZXJ2ZXIwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAR9UumA
K2p1Qi5+Wdq92JfW4F85M+W2WYWyeK89n/baPqPMXvRNkL0mr1g/c4n8Gt+YJ8r/
iNL0Fitrf73QvsSVo4GVMIGSMB0GA1UdDgQWBBTcqHUEilRH7vY2uQlDuJqxIiZf
PjAfBgNVHSMEGDAWgBTcqHUEilRH7vY2uQlDuJqxIiZfPjAaBgNVHREEEzARhwR/
AAABgglsb2NhbGhvc3QwDwYDVR0TAQH/BAUwAwEB/zAOBgNVHQ8BAf8EBAMCAoQw
EwYDVR0lBAwwCgYIKwYBBQUHAwEwCgYIKoZIzj0EAwIDSAAwRQIhAPageANDfN8q
OFP5YYAvpmrx+HoINZFzfYN4aiys9K4LAiBUNd43oHUtlW3hfSVKfcC/NR8mH/fG
ZhLy+9iQKJ/TFA==
-----END CERTIFICATE-----
"""
TLS_KEY = """\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgscHBsdFEVMoY7+9z
gXNaVVij0elI7mwmhC8Y+J5CBDehRANCAAR9UumAK2p1Qi5+Wdq92JfW4F85M+W2
WYWyeK89n/baPqPMXvRNkL0mr1g/c4n8Gt+YJ8r/iNL0Fitrf73QvsSV
-----END PRIVATE KEY-----
"""

_cache: dict[tuple, bytes] = {}
_cache_lock = threading.Lock()


def photo(name: str = "astronaut", ext: str = "jpg", size: tuple[int, int] = (160, 120)) -> bytes:
    """A real ``skimage.data`` photo resized to ``size`` (w, h), encoded as ``ext``; cached."""
    key = ("photo", name, ext, size)
    if key in _cache:  # fast path without the lock: handlers must not queue behind an encode
        return _cache[key]
    with _cache_lock:
        if key not in _cache:
            from PIL import Image
            from skimage import data

            img = Image.fromarray(getattr(data, name)()).convert("RGB").resize(size)
            buf = io.BytesIO()
            img.save(buf, format=FORMATS[ext], **({"quality": 85} if ext == "jpg" else {}))
            _cache[key] = buf.getvalue()
        return _cache[key]


def bomb_png(side: int = BOMB_SIDE) -> bytes:
    """A complete, valid 1-bit grayscale PNG of ``side``×``side`` pixels (all black), ~48 KB for 20000."""
    key = ("bomb", side)
    if key in _cache:
        return _cache[key]
    with _cache_lock:
        if key not in _cache:
            def chunk(kind: bytes, payload: bytes) -> bytes:
                return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

            row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
            comp = zlib.compressobj(9)
            idat = b"".join(comp.compress(row * 1000) for _ in range(side // 1000)) + comp.compress(row * (side % 1000))
            idat += comp.flush()
            ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
            _cache[key] = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
        return _cache[key]


def tls_server_context() -> ssl.SSLContext:
    """A server-side TLS context with :data:`TLS_CERT` / :data:`TLS_KEY`."""
    import os
    import tempfile

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as tmp:  # load_cert_chain reads files only
        pem = os.path.join(tmp, "server.pem")
        with open(pem, "w") as f:
            f.write(TLS_CERT + TLS_KEY)
        ctx.load_cert_chain(pem)
    return ctx


def warm() -> None:
    """Encode every served body now (~0.5 s once per process): requests must not wait for Pillow,
    as tests use short read timeouts."""
    for name in PHOTOS:
        for ext in FORMATS:
            photo(name, ext)
    bomb_png()


def gzip_bomb_stream(total: int = GZIP_BOMB_BYTES) -> Iterator[bytes]:
    """A gzip stream of a JPEG start followed by zeros, ``total`` bytes when inflated, made lazily."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    first = photo()[:64]
    out = comp.compress(first)
    if out:
        yield out
    block = b"\x00" * (1 << 20)
    sent = len(first)
    while sent < total:
        n = min(len(block), total - sent)
        out = comp.compress(block[:n])
        sent += n
        if out:
            yield out
    yield comp.flush()


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    tls: ssl.SSLContext | None = None

    def get_request(self) -> tuple[socket.socket, object]:
        sock, addr = super().get_request()
        if self.tls is not None:
            # The handshake runs in the handler thread (setup), so a client that never finishes it
            # cannot block the accept loop.
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients hang up and reset on purpose here (that is the point); keep test output clean.
        import sys

        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class HostileServer:
    """The hostile image server (see module doc). Use as a context manager or via the fixture.

    host: the loopback address to bind (``127.0.0.1``; ``127.0.0.2`` works on Linux too,
        for tests that need a second "private" host).
    Records: ``requests`` (decoded paths in arrival order), ``times`` (path → monotonic
    arrival times), ``user_agents`` (the User-Agent of every request), ``max_inflight``.
    """

    def __init__(self, host: str = "127.0.0.1", *, tls: bool = False) -> None:
        self.host = host
        self.tls = tls
        self.requests: list[str] = []
        self.times: dict[str, list[float]] = {}
        self.user_agents: list[str] = []
        self.inflight = 0
        self.max_inflight = 0  # most requests being answered at once (until their body starts going out)
        self.closing = threading.Event()
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> HostileServer:
        warm()
        handler = type("Handler", (_Handler,), {"server_state": self})
        self._httpd = _QuietServer((self.host, 0), handler)
        if self.tls:
            self._httpd.tls = tls_server_context()
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.closing.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            assert self._thread is not None
            self._thread.join(timeout=5)
            self._httpd = None

    def __enter__(self) -> HostileServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:41234``."""
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def hits(self, path: str) -> int:
        """Requests whose decoded path equals ``path``; with a ``?``, whose decoded path and query do."""
        with self._lock:
            return self._counts[path]

    def _enter(self, path: str, query: str, user_agent: str) -> None:
        with self._lock:
            self.requests.append(path)
            self.times.setdefault(path, []).append(time.monotonic())
            self.user_agents.append(user_agent)
            self._counts[path] += 1
            if query:
                self._counts[f"{path}?{unquote(query)}"] += 1
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)

    def _leave(self) -> None:
        with self._lock:
            self.inflight -= 1


class _Handler(BaseHTTPRequestHandler):
    server_state: HostileServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet tests
        pass

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(5)
            self.request.do_handshake()  # an OSError here (client refused our cert) ends this connection
            self.request.settimeout(None)
        super().setup()

    # ------------------------------------------------------------------ plumbing

    def _head(self, status: int, headers: dict[str, str] | None = None, length: int | None = None,
              content_type: str = "image/jpeg") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if length is not None:
            self.send_header("Content-Length", str(length))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if length is None and "Transfer-Encoding" not in (headers or {}):
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()

    def _send(
        self, status: int, body: bytes, content_type: str = "image/jpeg", headers: dict[str, str] | None = None
    ) -> None:
        self._head(status, headers, len(body), content_type)
        # Out of flight before the body goes out: the client cannot send its next request before
        # it has the whole body, so max_inflight never counts one client slot twice.
        self._leave()
        self.wfile.write(body)

    def _leave(self) -> None:
        if not self._left:
            self._left = True
            self.server_state._leave()

    def _client_gone(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s; True when the client closed the connection (or the server stops)."""
        if self.server_state.closing.is_set():
            return True
        readable, _, _ = select.select([self.connection], [], [], timeout)
        if readable:
            try:
                return self.connection.recv(1, socket.MSG_PEEK) == b""
            except OSError:
                return True
        return False

    def _hold(self, seconds: float = 60.0) -> None:
        """Say nothing until the client hangs up, the server stops, or ``seconds`` pass."""
        end = time.monotonic() + seconds
        while time.monotonic() < end and not self._client_gone(0.05):
            pass
        self.close_connection = True

    def _stream(self, pieces: Iterator[bytes]) -> None:
        try:
            for piece in pieces:
                if self.server_state.closing.is_set():
                    break
                self.wfile.write(piece)
        except OSError:
            pass  # the client hung up, as it should
        self.close_connection = True

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        params = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        self._left = False
        self.server_state._enter(path, parts.query, self.headers.get("User-Agent", ""))
        try:
            self._route(path, params)
        except OSError:
            self.close_connection = True
        finally:
            self._leave()

    # ------------------------------------------------------------------ routes

    def _route(self, path: str, q: dict[str, str]) -> None:  # noqa: C901 - one flat routing table
        jpeg = photo()  # encoded in start(): a dict lookup
        if path.startswith("/img/"):
            name, _, ext = path[5:].rpartition(".")
            if name not in PHOTOS or ext not in FORMATS:
                return self._send(404, b"not found", "text/plain")
            if q.get("delay"):
                time.sleep(float(q["delay"]))
            return self._send(200, photo(name, ext), CONTENT_TYPES[ext])
        if path in ("/same/a.jpg", "/same/b.jpg") or path.startswith("/unicode/"):
            return self._send(200, jpeg)
        if path == "/lies.jpg":
            return self._send(200, photo("coffee", "png"), "image/jpeg")
        if path == "/chunked.jpg":
            self._head(200, {"Transfer-Encoding": "chunked"})
            for i in range(0, len(jpeg), 4096):
                part = jpeg[i : i + 4096]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
            return None
        if path == "/gzip.jpg":
            return self._send(200, gzip.compress(jpeg), headers={"Content-Encoding": "gzip"})
        if path == "/html-as-jpeg.jpg":
            return self._send(200, HTML_PAGE)
        if path == "/captcha.jpg":
            return self._send(200, CAPTCHA_HTML, "text/html; charset=utf-8")
        if path == "/svg.jpg":
            return self._send(200, SVG, "image/svg+xml")
        if path == "/text.jpg":
            return self._send(200, TEXT)
        if path == "/empty.jpg":
            return self._send(200, b"")
        if path.startswith("/status/"):
            code = int(path.rsplit("/", 1)[1])
            headers = {"Retry-After": q["retry_after"]} if "retry_after" in q else {}
            return self._send(code, b"<html><body>status %d</body></html>" % code, "text/html", headers)
        if path.startswith("/flaky/"):
            _, _, code, n, _ = path.split("/", 4)
            if self.server_state.hits(path) <= int(n):
                headers = {"Retry-After": "1"} if code == "429" else {}
                return self._send(int(code), b"<html><body>try again</body></html>", "text/html", headers)
            return self._send(200, jpeg)
        if path == "/stall-headers.jpg":
            return self._hold()
        if path == "/stall-body.jpg":
            self._head(200, length=len(jpeg))
            self.wfile.write(jpeg[:100])
            self.wfile.flush()
            return self._hold()
        if path == "/stall-body-big.jpg":  # past the downloader's in-memory limit (4 MB), then nothing
            big = jpeg + bytes(5_000_000)
            self._head(200, length=len(big) + 1_000_000)
            self.wfile.write(big)
            self.wfile.flush()
            return self._hold()
        if path == "/drip.jpg":
            every = float(q.get("every", "1"))
            self._head(200, length=len(jpeg))

            def drip() -> Iterator[bytes]:
                for i in range(len(jpeg)):
                    yield jpeg[i : i + 1]
                    if self._client_gone(every):
                        return
            return self._stream(drip())
        if path == "/short.jpg":
            self._head(200, length=len(jpeg))
            self.wfile.write(jpeg[: len(jpeg) // 2])
            self.wfile.flush()
            self.close_connection = True
            return None
        if path == "/reset.jpg":
            self._head(200, length=len(jpeg))
            self.wfile.write(jpeg[: len(jpeg) // 2])
            self.wfile.flush()
            time.sleep(0.05)  # let the client read the first half before the RST
            # SO_LINGER with a zero timeout: close() sends RST instead of FIN.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return None
        if path == "/redirect/loop-a":
            return self._send(302, b"", "text/html", {"Location": "/redirect/loop-b"})
        if path == "/redirect/loop-b":
            return self._send(302, b"", "text/html", {"Location": "/redirect/loop-a"})
        if path.startswith("/redirect/chain/"):
            n = int(path.rsplit("/", 1)[1])
            if n <= 0:
                return self._send(200, jpeg)
            return self._send(302, b"", "text/html", {"Location": f"/redirect/chain/{n - 1}"})
        if path == "/redirect/to":
            return self._send(302, b"", "text/html", {"Location": q["url"]})
        if path in ("/endless.jpg", "/endless-unsized.jpg"):
            self._head(200, length=ENDLESS_LENGTH if path == "/endless.jpg" else None)
            zeros = b"\x00" * 65536

            def endless() -> Iterator[bytes]:
                yield jpeg[:64]
                sent = 64
                while sent < ENDLESS_LENGTH:
                    yield zeros
                    sent += len(zeros)
            return self._stream(endless())
        if path == "/gzip-bomb.jpg":
            self._head(200, {"Content-Encoding": "gzip"})
            return self._stream(gzip_bomb_stream())
        if path == "/noai.jpg":
            return self._send(200, jpeg, headers={"X-Robots-Tag": q.get("tag", "noai")})
        if path == "/bomb.png":
            return self._send(200, bomb_png(), "image/png")
        if path == "/garbage.jpg":  # not HTTP at all (another service on an HTTP port)
            self.wfile.write(b"SSH-2.0-OpenSSH_9.6\r\nProtocol mismatch.\r\n")
            self.close_connection = True
            return None
        if path == "/huge-header.jpg":  # one header line of 100 KB
            self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Filler: " + b"a" * 100_000 + b"\r\nContent-Length: 4\r\n\r\nabcd")
            self.close_connection = True
            return None
        return self._send(404, b"<html><body>not found</body></html>", "text/html")
