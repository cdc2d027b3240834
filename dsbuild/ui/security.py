"""The review app's guard: every request is checked here before any route sees it.

A local web app is still a web server: any page the user opens in the same browser
can send requests to ``127.0.0.1``. :class:`Guard` (a plain ASGI middleware) enforces,
in this order, with these status codes:

==========================================  ======  ===========================================
rule                                        status  why
==========================================  ======  ===========================================
``Host`` is one of the server's names       400     DNS rebinding: a hostile name that resolves
(``127.0.0.1:PORT``, ``localhost:PORT``)            to 127.0.0.1 reaches the port but not the app
no token (query ``?token=`` or cookie)      401     every request, static files included
wrong token                                 403     compared in constant time
``?token=`` right                           303     sets the HttpOnly, SameSite=Strict cookie and
                                                    redirects to the same URL without the token
method other than GET/HEAD/POST             405
POST without the right ``X-CSRF-Token``     403     the token is on every page (``<meta>``) and
                                                    sent by the app's script
POST with a foreign ``Origin``              403
==========================================  ======  ===========================================

Every response carries a strict Content-Security-Policy (no inline script or style,
everything from the app itself), ``X-Content-Type-Options: nosniff``,
``X-Frame-Options: DENY``, ``Referrer-Policy: no-referrer`` and
``Cache-Control: no-store`` (pages and thumbnails hold the user's data).
The cookie's name carries the port: two apps on one machine keep their own tokens.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Awaitable, Callable
from urllib.parse import parse_qsl, urlencode

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
"""The Content-Security-Policy of every response: scripts and styles only from the app's own static files."""

SECURITY_HEADERS = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
)
ALLOWED_METHODS = ("GET", "HEAD", "POST")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def new_token() -> str:
    """A random URL-safe token (32 bytes from :mod:`secrets`, 43 characters)."""
    return secrets.token_urlsafe(32)


def csrf_for(token: str) -> str:
    """The CSRF token of session ``token``: HMAC-SHA256(token, "csrf"), hex (a page can show it; it never reveals ``token``)."""
    return hmac.new(token.encode(), b"dsbuild-ui-csrf", hashlib.sha256).hexdigest()


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ``localhost`` and ``::1``."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(host: str, port: int) -> frozenset[str]:
    """``Host`` header values the app answers: the bound host (and the loopback names when it is loopback), with ``:port``."""
    names = {host}
    if is_loopback(host):
        names |= set(LOOPBACK_HOSTS)
    return frozenset(f"[{n}]:{port}" if ":" in n else f"{n}:{port}" for n in names)


@dataclass(frozen=True)
class GuardSettings:
    """What :class:`Guard` checks against: the session ``token``, the allowed ``Host`` values, the cookie name."""

    token: str
    hosts: frozenset[str]
    cookie: str

    @property
    def csrf(self) -> str:
        return csrf_for(self.token)


Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


class Guard:
    """ASGI middleware: the rules of the module docstring, then ``app``; security headers on every response."""

    def __init__(self, app: Callable[..., Awaitable[None]], settings: GuardSettings) -> None:
        self.app = app
        self.settings = settings
        self._origins = frozenset(f"http://{h}" for h in settings.hosts)

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secured(message: dict) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                message = dict(message, headers=[*message.get("headers", []),
                                                 *((k, v) for k, v in SECURITY_HEADERS if k not in names)])
            await send(message)

        headers = _headers(scope)
        s = self.settings
        if headers.get("host", "") not in s.hosts:
            await _plain(send_secured, 400, "Error: unexpected Host header — open the URL that `dsbuild ui` printed")
            return
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))
        cookie = _cookie(headers.get("cookie", ""), s.cookie)
        given = query.get("token")
        if given is not None and _same(given, s.token):
            rest = {k: v for k, v in query.items() if k != "token"}
            location = scope.get("root_path", "") + scope["path"] + (("?" + urlencode(rest)) if rest else "")
            set_cookie = f"{s.cookie}={s.token}; HttpOnly; SameSite=Strict; Path=/"
            await _plain(send_secured, 303, "see other", [(b"location", location.encode()), (b"set-cookie", set_cookie.encode())])
            return
        if given is None and cookie is None:
            await _plain(send_secured, 401, "Error: no token — open the URL with ?token=… that `dsbuild ui` printed")
            return
        if not _same(given if given is not None else cookie, s.token):
            await _plain(send_secured, 403, "Error: wrong token — open the URL that `dsbuild ui` printed (a restarted app has a new token)")
            return
        method = scope["method"]
        if method not in ALLOWED_METHODS:
            await _plain(send_secured, 405, "Error: method not allowed", [(b"allow", b"GET, HEAD, POST")])
            return
        if method == "POST":
            if not _same(headers.get("x-csrf-token", ""), s.csrf):
                await _plain(send_secured, 403, "Error: missing or wrong CSRF token — reload the page")
                return
            origin = headers.get("origin")
            if origin is not None and origin not in self._origins:
                await _plain(send_secured, 403, "Error: request from another site refused")
                return
        await self.app(scope, receive, send_secured)


def _headers(scope: dict) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in scope.get("headers", []):
        name = k.decode("latin-1").lower()
        if name not in out:  # the first of repeated headers counts (a second Host never overrides the first)
            out[name] = v.decode("latin-1")
    return out


def _cookie(header: str, name: str) -> str | None:
    jar = SimpleCookie()
    try:
        jar.load(header)
    except Exception:  # noqa: BLE001 - a malformed Cookie header is no cookie
        return None
    morsel = jar.get(name)
    return morsel.value if morsel is not None else None


def _same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode())


async def _plain(send: Send, status: int, text: str, extra: Iterable[tuple[bytes, bytes]] = ()) -> None:
    body = (text + "\n").encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
                            *extra]})
    await send({"type": "http.response.body", "body": body})

