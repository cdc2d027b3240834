"""Concurrent, safe downloader: URLs in, complete bodies in temp files out, one result per URL.

>>> results = fetch_all([FetchRequest("https://example.org/a.jpg")],
...                     settings=FetchSettings(), dest_dir=Path("store/.incoming"))  # doctest: +SKIP

Every URL comes from the web and is treated as hostile:

* **Bounded everything.** At most ``concurrency`` downloads in flight and
  ``per_host`` per host (by the request URL's host name; the others wait in a
  per-host queue without holding a slot). Connect and per-read timeouts, plus a
  wall-clock ``deadline`` per attempt covering every redirect hop, connect,
  headers and body — so a server that stalls or drips one byte a second cannot
  hold a worker. ``max_bytes`` is enforced on the *decoded* body while it
  streams (a gzip bomb is cut off after ``max_bytes`` of output, with at most
  256 KiB inflated at a time). A worst case per URL is
  ``(retries + 1) * deadline`` plus the backoff waits.
* **SSRF guard** (:mod:`dsbuild.netguard`): http/https only; every hop's host
  is checked — IP literals before the request, names on the *resolved*
  addresses, and the connection goes to exactly the checked addresses (no DNS
  rebinding). Loopback, private, link-local (cloud metadata 169.254.169.254),
  multicast and unspecified addresses are refused unless ``allow_private_hosts``
  (or ``allowed_networks``) says otherwise. Environment proxies are ignored
  (a proxy would connect on our behalf, unchecked).
* **Content, not labels**: the body is sniffed by its magic bytes (JPEG, PNG,
  GIF, WebP, BMP, TIFF); HTML, SVG, text and anything else is rejected with
  ``"not an image (html)"`` etc. before a byte is written. Extension and
  Content-Type are recorded, never trusted.
* **Opt-outs**: ``X-Robots-Tag: noai`` / ``noimageai`` (bare, ``*:`` or
  ``dsbuild:`` form) rejects the response before its body is read
  (``respect_noai``).
* **Retries** with exponential backoff and jitter for connection errors,
  timeouts, truncated bodies, 408/425/429/5xx; ``Retry-After`` is honoured up
  to ``retry_after_max`` (a longer wait ends the URL as a transient failure
  instead). Other 4xx are final.
* **Complete or nothing.** A body streams into ``dest_dir/dl-<random>.part``
  (a name from a random token, never from the URL), becomes
  ``dl-<random>.<ext>`` only when it is complete (Content-Length honoured,
  gzip stream ended), and is removed on any failure, on cancellation and on
  Ctrl-C. The caller verifies/hashes ``FetchResult.path`` and renames it into
  the store (or deletes it). With ``in_memory=N``, a body of at most N bytes
  never touches the disk: it comes back, complete, as ``FetchResult.data``
  (a larger one spills to a ``.part`` file as above once it passes N).

Per-URL failures are :class:`FetchResult` values (``outcome`` "failed" or
"rejected" with a short ``reason``), never exceptions. ``fetch_all`` raises only
when nothing can go on: ``dest_dir`` cannot be written (:class:`DsbuildError`),
``on_result`` raised, or the run was interrupted.

HTTP stack: aiohttp (C-accelerated parser, custom resolver hook for the SSRF
guard) chosen by measurement — see ``bench/crawl.py`` and the issue note.
"""

from __future__ import annotations

import asyncio
import email.utils
import errno
import os
import random
import secrets
import socket
import sys
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from dsbuild import formats
from dsbuild.errors import DsbuildError, cause_chain
from dsbuild.fetch_settings import USER_AGENT, FetchSettings
from dsbuild.netguard import BlockedAddress, make_resolver

if TYPE_CHECKING:  # pragma: no cover
    import threading

    import aiohttp


OUTCOMES = ("ok", "failed", "rejected")

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_OK_STATUSES = frozenset({200, 203})
_RETRY_STATUSES = frozenset({408, 425, 429})
_SNIFF_BYTES = formats.SNIFF_BYTES
_INFLATE_PIECE = 256 * 1024  # most bytes inflated in one step: bounds memory under a gzip bomb
IN_MEMORY_BODY = 4_000_000  # bodies up to this size never touch .incoming (most web images are far smaller)
IN_FLIGHT_MEMORY = 256_000_000  # ... unless concurrency × that would exceed this: the per-body limit shrinks


def in_memory_limit(concurrency: int) -> int:
    """Largest body kept in memory while downloading: IN_MEMORY_BODY, less at high concurrency (≥ 256 kB)."""
    return max(256_000, min(IN_MEMORY_BODY, IN_FLIGHT_MEMORY // max(1, concurrency)))


# --------------------------------------------------------------------------- settings and results


@dataclass(frozen=True)
class FetchRequest:
    """One URL to download; ``key`` is the caller's own id, echoed in the result."""

    url: str
    key: str | None = None


@dataclass(frozen=True, kw_only=True)
class FetchResult:
    """How one URL ended.

    outcome: "ok" (``path`` or ``data`` holds the complete body), "failed" (no usable
        response: network, timeout, HTTP error, a redirect loop or a redirect to no address) or
        "rejected" (a response that policy refuses: not an image, too large, noai, private
        address, bad scheme, more redirects than ``max_redirects``).
    reason: None when ok, else short and machine-friendly: "http 404", "timeout",
        "connect timeout", "deadline", "connection refused", "connection reset",
        "server disconnected", "truncated body", "dns error", "tls error",
        "too large", "empty body", "not an image (html)", "private address",
        "bad scheme", "bad url", "redirect loop", "too many redirects", "noai", ...
    transient: worth retrying (the downloader retries these within a build): network errors,
        timeouts, deadline, truncated bodies, 408/425/429/5xx.
    http_status / content_type: of the last response seen (None if none).
    bytes: decoded body bytes received in the last attempt (None if no body was read).
    path: the complete body in ``dest_dir`` (None unless ok, or when it came back as ``data``);
        the caller owns it.
    data: the complete body, when ``fetch_all(in_memory=N)`` kept it in memory (at most N bytes).
    sniffed_format: "jpeg", "png", "gif", "webp", "bmp" or "tiff" when ok.
    attempts: requests sent for this URL (0 when refused before any request).
    elapsed_s: wall-clock seconds from first attempt to result, backoff included.
    fetched_at: when the result was decided, UTC ISO 8601 (``...Z``).
    noai: the last response carried ``X-Robots-Tag: noai`` / ``noimageai`` for us (recorded with ``respect_noai``
        off too, so that a stored download is held to it when the setting is turned on).
    redirects: redirects followed to ``final_url`` in the last attempt (a stored download is held to a lower
        ``max_redirects`` set later).
    """

    url: str
    key: str | None = None
    final_url: str | None = None
    outcome: str
    reason: str | None = None
    transient: bool = False
    http_status: int | None = None
    content_type: str | None = None
    bytes: int | None = None
    path: Path | None = None
    data: bytes | None = field(default=None, repr=False)
    sniffed_format: str | None = None
    attempts: int = 0
    elapsed_s: float = 0.0
    fetched_at: str = ""
    noai: bool = False
    redirects: int = 0

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


# --------------------------------------------------------------------------- sniffing and headers


def sniff(head: bytes) -> tuple[str | None, str | None]:
    """(image format, None) for an allowed image, else (None, reject reason), from the first bytes.

    The classification is :func:`dsbuild.formats.sniff`'s, the table verification
    uses; the downloader names formats in lower case. Allowed: the format families
    (JPEG, PNG, GIF, WebP, BMP, TIFF incl. BigTIFF). Everything else gets a
    reason such as ``"not an image (html)"``, ``"not an image (svg)"``, ``"unsupported
    image (avif)"``, ``"empty body"``.
    """
    found = formats.sniff(head)
    if found.allowed:
        return found.name.lower(), None
    if found.name == "EMPTY":
        return None, "empty body"
    return None, f"{'unsupported image' if found.image else 'not an image'} ({found.name.lower()})"


def noai_directive(values: Iterable[str], *, token: str = "dsbuild") -> bool:
    """True when any ``X-Robots-Tag`` value forbids AI use for us: ``noai`` or ``noimageai``.

    Accepts the bare form (``noai, noimageai``) and the user-agent form
    (``dsbuild: noai``, ``*: noimageai``); directives aimed at another agent
    (``otherbot: noai``) do not apply, as in robots rules.
    """
    for value in values:
        ua, sep, rest = value.partition(":")
        agent = ua.strip().lower()
        if sep and agent and " " not in agent and "," not in agent:
            if agent not in ("*", token.lower()):
                continue
            directives = rest
        else:
            directives = value
        if {d.strip().lower() for d in directives.split(",")} & {"noai", "noimageai"}:
            return True
    return False


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delta-seconds or HTTP-date); None if absent/unparsable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def utc_iso() -> str:
    """Now, UTC, ISO 8601 with milliseconds and a ``Z``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def remove_partials(dest_dir: Path) -> int:
    """Delete ``dl-*.part`` files a killed process left in ``dest_dir``; returns how many.

    Call it before a build starts (no download may be running into ``dest_dir``).
    """
    n = 0
    for p in Path(dest_dir).glob("dl-*.part"):
        try:
            p.unlink()
            n += 1
        except FileNotFoundError:
            pass
    return n


# --------------------------------------------------------------------------- decoding


class _Inflater:
    """Streaming gzip/deflate decoder whose output comes in bounded pieces (bomb-safe)."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self._gzip = encoding in ("gzip", "x-gzip")
        self._d = zlib.decompressobj(47 if self._gzip else 15)  # 47: gzip or zlib header, auto
        self._started = False
        self.finished = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Decoded pieces of ``data`` (each ≤ 256 KiB); raises ``zlib.error`` on a corrupt stream."""
        while data:
            if self.finished:
                if not self._gzip:
                    return  # bytes after the end of a deflate stream are ignored
                # Concatenated gzip members are one stream (RFC 1952 §2.2).
                self._d = zlib.decompressobj(47)
                self.finished = False
            try:
                out = self._d.decompress(data, _INFLATE_PIECE)
            except zlib.error:
                if self._started or self._gzip:
                    raise
                # "deflate" is often sent raw, without the zlib header.
                self._d = zlib.decompressobj(-15)
                out = self._d.decompress(data, _INFLATE_PIECE)
            self._started = True
            if out:
                yield out
            if self._d.eof:
                self.finished = True
                data = self._d.unused_data
            else:
                data = self._d.unconsumed_tail

    def close(self) -> bytes:
        """Whatever the decoder still holds (normally nothing)."""
        return b"" if self.finished else self._d.flush()


# --------------------------------------------------------------------------- the engine room


class _StorageError(Exception):
    """``dest_dir`` cannot be written: no download can succeed, the whole run stops."""


@dataclass
class _Try:
    """One attempt's result (internal)."""

    outcome: str
    reason: str | None = None
    transient: bool = False
    retry: bool = False
    retry_after: float | None = None
    final_url: str | None = None
    http_status: int | None = None
    content_type: str | None = None
    bytes: int | None = None
    path: Path | None = None
    fmt: str | None = None
    data: bytes | None = None
    noai: bool = False
    redirects: int = 0


@dataclass
class _Body:
    """Mutable state of one attempt: where the bytes go, so every exit path can clean up."""

    final_url: str
    http_status: int | None = None
    content_type: str | None = None
    part: Path | None = None
    fh: Any = None
    buf: list[bytes] | None = None  # the body's pieces so far while it fits in memory (``in_memory``)
    buffered: int = 0  # bytes in ``buf``
    decoded: int = 0
    started: bool = False
    noai: bool = False  # the response said X-Robots-Tag: noai / noimageai (whatever respect_noai says)
    redirects: int = 0  # redirects followed before the request now under way

    def done(self, outcome: str, reason: str | None = None, *, transient: bool = False, retry: bool = False,
             retry_after: float | None = None, path: Path | None = None, fmt: str | None = None,
             data: bytes | None = None) -> _Try:
        return _Try(outcome, reason, transient, retry, retry_after, self.final_url, self.http_status,
                    self.content_type, self.decoded if self.started else None, path, fmt, data, self.noai,
                    self.redirects)

    def discard(self) -> None:
        self.buf = None
        if self.fh is not None:
            try:
                self.fh.close()
            except OSError:
                pass
            self.fh = None
        if self.part is not None:
            try:
                self.part.unlink()
            except FileNotFoundError:
                pass
            self.part = None


if sys.version_info >= (3, 11):
    _timeout = asyncio.timeout
else:  # pragma: no cover - aiohttp requires async-timeout on 3.10
    from async_timeout import timeout as _timeout


def _classify(exc: BaseException) -> tuple[str, str, bool, bool]:
    """(outcome, reason, transient, retry) for an exception raised by aiohttp/the socket layer."""
    import aiohttp

    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        inner = exc.os_error
        if isinstance(inner, BlockedAddress):
            return "rejected", "private address", False, False
        # EAI_AGAIN ("try again") is a resolver hiccup; NXDOMAIN and friends are final.
        temporary = isinstance(inner, socket.gaierror) and inner.errno == socket.EAI_AGAIN
        return "failed", "dns error", temporary, temporary
    if isinstance(exc, (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError)):
        return "failed", "tls error", False, False
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return "failed", "connect timeout", True, True
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return "failed", "timeout", True, True
    if isinstance(exc, aiohttp.ClientConnectorError):
        code = getattr(exc.os_error, "errno", None)
        if code == errno.ECONNREFUSED:
            return "failed", "connection refused", True, True
        if code in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return "failed", "unreachable", True, True
        return "failed", "connection error", True, True
    if isinstance(exc, aiohttp.InvalidURL):
        return "rejected", "bad url", False, False
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "failed", "server disconnected", True, True
    if isinstance(exc, aiohttp.ClientPayloadError):
        chain = list(cause_chain(exc, limit=8))
        # aiohttp names the socket error only in the message ("... ConnectionResetError(104, ...)").
        if any(isinstance(e, ConnectionResetError) for e in chain) or "ConnectionResetError" in str(exc):
            return "failed", "connection reset", True, True
        return "failed", "truncated body", True, True
    if isinstance(exc, aiohttp.ClientResponseError):
        return "failed", "bad response", False, False  # unparsable status line / headers
    if isinstance(exc, ConnectionResetError):
        return "failed", "connection reset", True, True
    if isinstance(exc, (aiohttp.ClientError, OSError)):
        return "failed", "connection error", True, True
    raise exc


class _Downloader:
    """One run of :func:`fetch_all_async`: a session, the policy, the temp dir."""

    def __init__(self, settings: FetchSettings, dest_dir: Path, session: aiohttp.ClientSession, *,
                 in_memory: int = 0) -> None:
        self.s = settings
        self.dest = dest_dir
        self.in_memory = in_memory
        self.session = session
        self.policy = settings.policy()
        self.rng = random.Random()

    # ---------------------------------------------------------------- one URL

    async def fetch(self, req: FetchRequest) -> FetchResult:
        start = time.monotonic()
        s = self.s
        attempts = 0
        # Checked again at every hop of every attempt; this first check spares refused URLs any retry loop.
        reason = self.policy.check_url(req.url)
        if reason is not None:
            t = _Try("rejected", reason, final_url=req.url)
        else:
            while True:
                attempts += 1
                t = await self._attempt(req.url)
                if not t.retry or attempts > s.retries:
                    break
                wait = min(s.backoff_max, s.backoff_base * 2 ** (attempts - 1)) * self.rng.uniform(0.5, 1.5)
                if t.retry_after is not None:
                    if t.retry_after > s.retry_after_max:
                        break  # the server asks for more patience than we have: try again in a later build
                    wait = max(wait, t.retry_after)
                await asyncio.sleep(wait)
        return FetchResult(
            url=req.url, key=req.key, final_url=t.final_url, outcome=t.outcome, reason=t.reason,
            transient=t.transient, http_status=t.http_status, content_type=t.content_type, bytes=t.bytes,
            path=t.path, data=t.data, sniffed_format=t.fmt, attempts=attempts, elapsed_s=round(time.monotonic() - start, 4),
            fetched_at=utc_iso(), noai=t.noai, redirects=t.redirects,
        )

    async def _attempt(self, url: str) -> _Try:
        body = _Body(final_url=url)
        ok = False
        try:
            try:
                async with _timeout(self.s.deadline):
                    t = await self._hops(url, body)
            except asyncio.TimeoutError:  # our deadline: aiohttp's own timeouts are classified inside
                # Not retried now: the server already had the whole budget once; a later build may.
                t = body.done("failed", "deadline", transient=True)
            ok = t.outcome == "ok"
            return t
        finally:
            if not ok:
                body.discard()

    async def _hops(self, url: str, body: _Body) -> _Try:
        import aiohttp
        from yarl import URL

        seen = set()
        current = url
        for hop in range(self.s.max_redirects + 1):
            body.final_url = current
            body.redirects = hop
            reason = self.policy.check_url(current)
            if reason is not None:
                return body.done("rejected", reason)
            try:
                # encoded=True: the URL goes on the wire byte for byte (yarl would otherwise re-quote its escapes,
                # %7E → ~, %2f → %2F …, which servers that sign URLs reject). normalize_url percent-encodes only
                # what HTTP cannot carry (non-ASCII, spaces) and keeps every existing escape as it is.
                target = URL(_wire_url(current), encoded=True)
            except (ValueError, TypeError):
                return body.done("rejected", "bad url")
            body.final_url = str(target)  # as requested on the wire
            seen.add(body.final_url)
            try:
                async with self.session.get(target, allow_redirects=False) as resp:
                    body.http_status = resp.status
                    body.content_type = resp.headers.get("Content-Type")
                    if resp.status in _REDIRECTS:
                        location = resp.headers.get("Location")
                        if not location:
                            return body.done("failed", f"http {resp.status}")
                        # a server that sends its redirects in a circle or to no address is broken, not refused by
                        # policy: failed, not retried within the build, fetched again by `build --retry-failed`
                        try:
                            nxt = _redirect_target(current, location)
                        except ValueError:
                            return body.done("failed", "bad redirect")
                        if nxt in seen:
                            body.final_url = nxt
                            return body.done("failed", "redirect loop")
                        current = nxt
                        continue
                    return await self._read(resp, body)
            except (aiohttp.ClientError, OSError) as exc:
                outcome, reason, transient, retry = _classify(exc)
                return body.done(outcome, reason, transient=transient, retry=retry)
            except ValueError:  # yarl/aiohttp refusing a malformed URL
                return body.done("rejected", "bad url")
        body.final_url = current
        return body.done("rejected", "too many redirects")

    async def _read(self, resp: aiohttp.ClientResponse, body: _Body) -> _Try:
        s = self.s
        status = resp.status
        if status not in _OK_STATUSES:
            transient = status in _RETRY_STATUSES or 500 <= status <= 599
            after = retry_after_seconds(resp.headers.get("Retry-After")) if status in (429, 503) else None
            return body.done("failed", f"http {status}", transient=transient, retry=transient, retry_after=after)
        body.noai = noai_directive(resp.headers.getall("X-Robots-Tag", ()))  # recorded: a later respect_noai reads it
        if s.respect_noai and body.noai:
            return body.done("rejected", "noai")  # decided on headers: the body is never read
        encoding = resp.headers.get("Content-Encoding", "").strip().lower()
        inflater = None
        if encoding in ("gzip", "x-gzip", "deflate"):
            inflater = _Inflater(encoding)
        elif encoding not in ("", "identity"):
            return body.done("rejected", f"unsupported encoding ({encoding[:20]})")
        length = resp.content_length
        if length is not None and inflater is None and length > s.max_bytes:
            return body.done("rejected", "too large")
        if length == 0:
            return body.done("rejected", "empty body")

        body.started = True
        head = bytearray()
        fmt: str | None = None
        raw = 0
        content = resp.content
        while True:
            chunk = await content.readany()
            if not chunk:
                break
            raw += len(chunk)
            pieces = inflater.feed(chunk) if inflater is not None else (chunk,)
            try:
                for piece in pieces:
                    body.decoded += len(piece)
                    if body.decoded > s.max_bytes:
                        return body.done("rejected", "too large")
                    if fmt is None:
                        if not head and len(piece) >= _SNIFF_BYTES:
                            first = piece  # the usual case: the first piece covers the sniff window, no copy
                        else:
                            head += piece
                            if len(head) < _SNIFF_BYTES:
                                continue
                            first = bytes(head)
                        fmt, why = sniff(first)
                        if fmt is None:
                            return body.done("rejected", why)
                        self._open(body)
                        self._write(body, first)
                    else:
                        self._write(body, piece)
            except zlib.error:
                return body.done("rejected", f"bad encoding ({encoding})")
        if inflater is not None and not inflater.finished:
            return body.done("failed", "truncated body", transient=True, retry=True)  # the gzip stream never ended
        if length is not None and raw != length:
            return body.done("failed", "truncated body", transient=True, retry=True)
        if fmt is None:  # a body shorter than the sniff window
            fmt, why = sniff(bytes(head))
            if fmt is None:
                return body.done("rejected", why)
            self._open(body)
            self._write(body, head)
        if body.buf is not None:
            data, body.buf = b"".join(body.buf), None  # the one copy of an in-memory body
            return body.done("ok", data=data, fmt=fmt)
        return body.done("ok", path=self._finish(body, fmt), fmt=fmt)

    # ---------------------------------------------------------------- files

    def _open(self, body: _Body) -> None:
        if self.in_memory:
            body.buf, body.buffered = [], 0  # spills to a file in _write if it outgrows ``in_memory``
            return
        self._open_file(body)

    def _open_file(self, body: _Body) -> None:
        part = self.dest / f"dl-{secrets.token_hex(12)}.part"
        try:
            body.fh = open(part, "xb")  # noqa: SIM115 - closed by _finish/discard on every path
        except OSError as exc:
            raise _StorageError(f"cannot create a file in {self.dest}: {exc.strerror or exc}") from exc
        body.part = part

    def _write(self, body: _Body, data: bytes | bytearray) -> None:
        if body.buf is not None:
            if body.buffered + len(data) <= self.in_memory:
                body.buf.append(bytes(data))  # a bytearray (the sniffed head) is copied: the caller reuses it
                body.buffered += len(data)
                return
            held, body.buf = body.buf, None
            self._open_file(body)
            for piece in held:
                self._write(body, piece)
        try:
            body.fh.write(data)
        except OSError as exc:
            raise _StorageError(f"cannot write to {self.dest}: {exc.strerror or exc}") from exc

    def _finish(self, body: _Body, fmt: str) -> Path:
        assert body.part is not None and body.fh is not None
        final = body.part.with_suffix("." + formats.extension(fmt))
        try:
            body.fh.close()
            body.fh = None
            os.replace(body.part, final)
        except OSError as exc:
            raise _StorageError(f"cannot write to {self.dest}: {exc.strerror or exc}") from exc
        body.part = None  # now the caller's
        return final


# --------------------------------------------------------------------------- scheduling


_POKE = object()  # a wake-up in fetch_all_async's queue of finished tasks


def _redirect_target(current: str, location: str) -> str:
    """The URL a ``Location`` header sends us to, resolved against ``current``, its escapes kept as the server wrote them."""
    from urllib.parse import urljoin

    return urljoin(current, location.strip())


def _wire_url(url: str) -> str:
    """``url`` as it goes on the wire: :func:`dsbuild.sources.urls.normalize_url` (escapes kept, IRI → URI)."""
    from dsbuild.sources.urls import normalize_url

    return normalize_url(url)


def _host_key(url: str) -> str:
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


async def fetch_all_async(
    requests: Iterable[FetchRequest],
    *,
    settings: FetchSettings,
    dest_dir: Path,
    on_result: Callable[[FetchResult], None] | None = None,
    stop: threading.Event | None = None,
    in_memory: int = 0,
    hold: Callable[[], bool] | None = None,
) -> list[FetchResult]:
    """The coroutine behind :func:`fetch_all` (same contract), for callers already in an event loop."""
    import aiohttp

    dest_dir = Path(dest_dir)
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DsbuildError(
            f"cannot create download folder {dest_dir}: {exc.strerror or exc} — check the path and permissions"
        ) from exc
    s = settings
    tls: Any = True  # aiohttp's default: verify against the system trust store
    if s.ca_bundle is not None:
        import ssl

        tls = ssl.create_default_context()
        tls.load_verify_locations(cafile=s.ca_bundle)
    connector = aiohttp.TCPConnector(
        limit=s.concurrency * 2, limit_per_host=0, resolver=make_resolver(s.policy()), ttl_dns_cache=60,
        enable_cleanup_closed=sys.version_info < (3, 12, 7), ssl=tls,
    )
    session = aiohttp.ClientSession(
        connector=connector,
        # Pool waits are not timed (the scheduler bounds in-flight requests; the deadline bounds the rest).
        timeout=aiohttp.ClientTimeout(
            total=None, connect=None, sock_connect=s.connect_timeout, sock_read=s.read_timeout
        ),
        auto_decompress=False,  # we inflate ourselves, in bounded pieces
        trust_env=False,  # never send our requests through an environment proxy (it would bypass the guard)
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"User-Agent": s.user_agent, "Accept": "image/*,*/*;q=0.5", "Accept-Encoding": "gzip, deflate"},
        raise_for_status=False,
    )
    dl = _Downloader(s, dest_dir, session, in_memory=max(0, int(in_memory)))

    it = iter(requests)
    exhausted = False
    waiting: dict[str, deque[FetchRequest]] = {}
    n_waiting = 0
    max_waiting = max(1000, 64 * s.concurrency)  # buffered behind busy hosts before we stop reading input
    running: dict[str, int] = {}
    ready_hosts: deque[str] = deque()  # hosts that just freed a slot and have requests waiting
    tasks: dict[asyncio.Task, str] = {}
    finished: asyncio.Queue = asyncio.Queue()
    results: list[FetchResult] = []
    reported: set[asyncio.Task] = set()

    def start(req: FetchRequest, host: str) -> None:
        running[host] = running.get(host, 0) + 1
        task = asyncio.ensure_future(dl.fetch(req))
        tasks[task] = host
        task.add_done_callback(finished.put_nowait)

    held = False  # ``hold()`` said wait: nothing new starts until a poke finds it False

    def paused() -> bool:
        nonlocal held
        held = hold is not None and hold()
        return held

    def fill() -> None:
        nonlocal exhausted, n_waiting, held
        held = False
        # Hosts that freed a slot first: their requests have waited longest.
        while len(tasks) < s.concurrency and ready_hosts and not paused():
            host = ready_hosts.popleft()
            queue_ = waiting.get(host)
            if queue_ is None:
                continue
            while queue_ and running.get(host, 0) < s.per_host and len(tasks) < s.concurrency and not paused():
                start(queue_.popleft(), host)
                n_waiting -= 1
            if not queue_:
                del waiting[host]
            elif running[host] < s.per_host:
                ready_hosts.appendleft(host)  # stopped by the global limit or hold(): resume here next time
        while len(tasks) < s.concurrency and not exhausted and n_waiting < max_waiting and not paused():
            try:
                req = next(it)
            except StopIteration:
                exhausted = True
                break
            if isinstance(req, str):
                req = FetchRequest(req)
            host = _host_key(req.url)
            if running.get(host, 0) < s.per_host and host not in waiting:
                start(req, host)
            else:
                waiting.setdefault(host, deque()).append(req)
                n_waiting += 1

    watcher = None
    if stop is not None or hold is not None:
        async def watch() -> None:
            while stop is None or not stop.is_set():
                await asyncio.sleep(0.02)
                if held:
                    finished.put_nowait(_POKE)  # the main loop asks hold() again
            finished.put_nowait(None)

        watcher = asyncio.ensure_future(watch())

    try:
        fill()
        while tasks or held:
            task = await finished.get()
            if task is None:  # stop requested
                break
            if task is _POKE:
                fill()
                continue
            host = tasks.pop(task)
            running[host] -= 1
            if waiting.get(host):
                ready_hosts.append(host)
            exc = task.exception()
            if exc is not None:
                if isinstance(exc, _StorageError):
                    raise DsbuildError(f"{exc} — free disk space or fix permissions, then run the build again") from exc
                raise exc
            res = task.result()
            reported.add(task)
            results.append(res)
            if on_result is not None:
                on_result(res)
            fill()
    finally:
        if watcher is not None:
            watcher.cancel()
        pending = list(tasks)
        for task in pending:
            task.cancel()
        if pending:
            # Cancelled attempts delete their .part files in their finally blocks.
            await asyncio.wait(pending, timeout=5)
        for task in pending:  # finished but never handed to the caller: its file is nobody's
            if task.done() and not task.cancelled() and task.exception() is None and task not in reported:
                path = task.result().path
                if path is not None:
                    Path(path).unlink(missing_ok=True)
        await session.close()
    return results


def fetch_all(
    requests: Iterable[FetchRequest],
    *,
    settings: FetchSettings,
    dest_dir: Path,
    on_result: Callable[[FetchResult], None] | None = None,
    stop: threading.Event | None = None,
    in_memory: int = 0,
    hold: Callable[[], bool] | None = None,
) -> list[FetchResult]:
    """Download every request concurrently; one :class:`FetchResult` per URL, in completion order.

    requests: ``FetchRequest``\\ s (plain URL strings are accepted too), read
        lazily — a generator of millions is fine.
    settings: limits and policy (:class:`FetchSettings`).
    dest_dir: where complete bodies land as ``dl-<random>.<ext>``; created if missing.
        Each ok result's ``path`` belongs to the caller (verify, hash, rename or delete it).
    on_result: called in the downloading thread as each URL ends (keep it quick:
        hand heavy work to a pool). If it raises, the run stops and re-raises.
    stop: a ``threading.Event``; once set, in-flight downloads are cancelled
        (their partial files removed) and the results so far are returned.
    in_memory: bodies of at most this many bytes come back as ``FetchResult.data``
        instead of a file (default 0: every body is a file). Saves a file creation,
        a rename and a read per image when the caller verifies in memory.
    hold: called before new downloads start; while it returns True none starts
        (those in flight go on). Back-pressure: a caller whose consumer lags
        (e.g. bodies held in memory awaiting verification) keeps memory bounded.

    Runs its own event loop (in a helper thread if the caller already has one).
    Ctrl-C cancels cleanly: partial files are removed, then ``KeyboardInterrupt``
    propagates. Raises :class:`DsbuildError` only when ``dest_dir`` cannot be written.
    """
    coro = fetch_all_async(requests, settings=settings, dest_dir=dest_dir, on_result=on_result, stop=stop,
                           in_memory=in_memory, hold=hold)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="dsbuild-fetch") as ex:
        return ex.submit(asyncio.run, coro).result()


__all__ = [
    "FetchRequest",
    "FetchResult",
    "FetchSettings",
    "USER_AGENT",
    "fetch_all",
    "fetch_all_async",
    "in_memory_limit",
    "noai_directive",
    "remove_partials",
    "retry_after_seconds",
    "sniff",
]
