"""The downloader against a real loopback server that misbehaves on purpose (``hostile_server.py``).

No mocks: every test sends real HTTP over 127.0.0.1 (the server is started by
the test) and checks outcomes, reasons, server-side hit counts, timings and
what is left on disk. Non-loopback addresses are only ever checked by the
guard, never contacted.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from urllib.parse import quote, unquote

import pytest
from hostile_server import TLS_CERT, HostileServer, bomb_png, photo

from dsbuild.errors import DsbuildError
from dsbuild.fetch import (
    USER_AGENT,
    FetchRequest,
    FetchResult,
    FetchSettings,
    fetch_all,
    fetch_all_async,
    noai_directive,
    remove_partials,
    retry_after_seconds,
    sniff,
)
from dsbuild.netguard import AddressPolicy, BlockedAddress, literal_ip, make_resolver

pytestmark = pytest.mark.timeout(60)

#: short limits so the hostile routes end fast; loopback allowed (the server is on 127.0.0.1)
FAST = FetchSettings(
    allow_private_hosts=True, connect_timeout=1.0, read_timeout=0.5, deadline=2.0, retries=2,
    backoff_base=0.05, max_bytes=2_000_000,
)


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(urls: list[str], tmp: Path, settings: FetchSettings = FAST, **kw) -> list[FetchResult]:
    return fetch_all([FetchRequest(u) for u in urls], settings=settings, dest_dir=tmp, **kw)


# --------------------------------------------------------------------------- the table

JPEG = photo()
REFUSED = free_port()

# route → (outcome, reason, transient, server hits or None, sniffed format)
TABLE: dict[str, tuple[str, str | None, bool, int | None, str | None]] = {
    # real images, whatever they are called or labelled
    "/img/astronaut.jpg": ("ok", None, False, 1, "jpeg"),
    "/img/coffee.png": ("ok", None, False, 1, "png"),
    "/img/chelsea.gif": ("ok", None, False, 1, "gif"),
    "/img/rocket.webp": ("ok", None, False, 1, "webp"),
    "/img/coffee.bmp": ("ok", None, False, 1, "bmp"),
    "/img/chelsea.tiff": ("ok", None, False, 1, "tiff"),
    "/same/a.jpg": ("ok", None, False, 1, "jpeg"),
    "/same/b.jpg": ("ok", None, False, 1, "jpeg"),
    "/unicode/café/фото 1.jpg": ("ok", None, False, 1, "jpeg"),  # raw non-ASCII (and a space)
    "/unicode/caf%C3%A9/%E5%86%99%E7%9C%9F.jpg": ("ok", None, False, 1, "jpeg"),  # already %-encoded
    "/lies.jpg": ("ok", None, False, 1, "png"),  # PNG served as image/jpeg with a .jpg name
    "/chunked.jpg": ("ok", None, False, 1, "jpeg"),
    "/gzip.jpg": ("ok", None, False, 1, "jpeg"),
    "/redirect/chain/3": ("ok", None, False, 1, "jpeg"),
    "/bomb.png": ("ok", None, False, 1, "png"),  # fetched as bytes; the verify stage rejects it
    "/noai.jpg?tag=" + quote("otherbot: noai"): ("ok", None, False, 1, "jpeg"),  # aimed at another agent
    "/flaky/500/1/x.jpg": ("ok", None, False, 2, "jpeg"),
    "/flaky/503/2/x.jpg": ("ok", None, False, 3, "jpeg"),
    # content that is not an image
    "/html-as-jpeg.jpg": ("rejected", "not an image (html)", False, 1, None),
    "/captcha.jpg": ("rejected", "not an image (html)", False, 1, None),
    "/svg.jpg": ("rejected", "not an image (svg)", False, 1, None),
    "/text.jpg": ("rejected", "not an image (text)", False, 1, None),
    "/empty.jpg": ("rejected", "empty body", False, 1, None),
    # policy
    "/endless.jpg": ("rejected", "too large", False, 1, None),  # 2 GB Content-Length: refused on headers
    "/endless-unsized.jpg": ("rejected", "too large", False, 1, None),  # no length: cut while streaming
    "/gzip-bomb.jpg": ("rejected", "too large", False, 1, None),  # 4 GB once inflated
    "/noai.jpg?tag=noai": ("rejected", "noai", False, 1, None),
    "/noai.jpg?tag=noimageai": ("rejected", "noai", False, 1, None),
    "/noai.jpg?tag=" + quote("dsbuild: noai, noindex"): ("rejected", "noai", False, 1, None),
    "/noai.jpg?tag=" + quote("*: noimageai"): ("rejected", "noai", False, 1, None),
    "/redirect/loop-a": ("failed", "redirect loop", False, 1, None),  # the server's fault: `--retry-failed` tries again
    "/redirect/chain/15": ("rejected", "too many redirects", False, 1, None),  # max_redirects = 10
    "/redirect/to?url=" + quote("file:///etc/passwd"): ("rejected", "bad scheme", False, 1, None),
    "/redirect/to?url=" + quote("ftp://127.0.0.1/x.jpg"): ("rejected", "bad scheme", False, 1, None),
    # HTTP errors: 4xx final, 5xx/429 retried
    "/status/404": ("failed", "http 404", False, 1, None),
    "/status/403": ("failed", "http 403", False, 1, None),
    "/status/410": ("failed", "http 410", False, 1, None),
    "/status/500": ("failed", "http 500", True, 3, None),  # retries=2 → 3 attempts
    "/status/503": ("failed", "http 503", True, 3, None),
    "/status/429?retry_after=3600": ("failed", "http 429", True, 1, None),  # longer than retry_after_max
    # broken servers
    "/stall-headers.jpg": ("failed", "timeout", True, 3, None),
    "/stall-body.jpg": ("failed", "timeout", True, 3, None),
    "/drip.jpg?every=0.05": ("failed", "deadline", True, 1, None),  # every read is in time; the whole is not
    "/short.jpg": ("failed", "truncated body", True, 3, None),
    "/reset.jpg": ("failed", "connection reset", True, 3, None),
    "/garbage.jpg": ("failed", "bad response", False, 1, None),  # not HTTP
    "/huge-header.jpg": ("failed", "bad response", False, 1, None),
}
ABSOLUTE = {  # URLs that are not on the server
    "http://127.0.0.1:{refused}/x.jpg": ("failed", "connection refused", True, None, None),  # port filled in below
    "file:///etc/passwd": ("rejected", "bad scheme", False, None, None),
    "data:image/png;base64,iVBORw0KGgo=": ("rejected", "bad scheme", False, None, None),
    "ftp://127.0.0.1/a.jpg": ("rejected", "bad scheme", False, None, None),
    "http:///nohost.jpg": ("rejected", "bad url", False, None, None),
    "http://127.0.0.1:99999/x.jpg": ("rejected", "bad url", False, None, None),
}


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory):
    """Every hostile route fetched in one concurrent run: (server, results by route, dest_dir, seconds)."""
    dest = tmp_path_factory.mktemp("incoming")
    with HostileServer() as server:
        # The refused port is free at run time; the test id keeps "{refused}" so every pytest-xdist worker
        # collects the same tests.
        urls = {server.url + route: route for route in TABLE} | {u.replace("{refused}", str(REFUSED)): u for u in ABSOLUTE}
        seen: list[FetchResult] = []
        t0 = time.monotonic()
        results = run(list(urls), dest, settings=FAST, on_result=seen.append)
        took = time.monotonic() - t0
        assert [r.url for r in seen] == [r.url for r in results]  # on_result once per URL, same order
        yield server, {urls[r.url]: r for r in results}, dest, took


@pytest.mark.parametrize("route", list(TABLE) + list(ABSOLUTE))
def test_route(table, route: str) -> None:
    server, results, dest, _ = table
    outcome, reason, transient, hits, fmt = {**TABLE, **ABSOLUTE}[route]
    res = results[route]
    assert (res.outcome, res.reason, res.transient) == (outcome, reason, transient), res
    assert res.sniffed_format == fmt
    if hits is not None:
        assert server.hits(unquote(route)) == hits
        assert res.attempts == (1 if route.startswith("/redirect") else hits)
    if outcome == "ok":
        assert res.path is not None and res.path.parent == dest and res.path.name.startswith("dl-")
        assert res.path.suffix == {"jpeg": ".jpg", "tiff": ".tif"}.get(fmt, "." + fmt)  # formats.EXTENSIONS, as in the store
        assert res.bytes == res.path.stat().st_size > 0
        assert res.http_status == 200
    else:
        assert res.path is None
    assert res.fetched_at.endswith("Z") and res.elapsed_s >= 0


def test_table_bodies_are_exact(table) -> None:
    """Stored bodies are byte-identical to what the server meant to send (decoded for gzip)."""
    _, results, _, _ = table
    assert results["/img/astronaut.jpg"].path.read_bytes() == JPEG
    assert results["/gzip.jpg"].path.read_bytes() == JPEG
    assert results["/chunked.jpg"].path.read_bytes() == JPEG
    assert results["/lies.jpg"].path.read_bytes() == photo("coffee", "png")
    assert results["/bomb.png"].path.read_bytes() == bomb_png()
    a, b = results["/same/a.jpg"], results["/same/b.jpg"]
    assert a.path != b.path and a.path.read_bytes() == b.path.read_bytes() == JPEG
    assert results["/redirect/chain/3"].final_url.endswith("/redirect/chain/0")
    assert results["/unicode/café/фото 1.jpg"].final_url.endswith("/unicode/caf%C3%A9/%D1%84%D0%BE%D1%82%D0%BE%201.jpg")


def test_bomb_png_is_a_real_bomb() -> None:
    """The fixture's PNG really is a decompression bomb for Pillow (the downloader must not care)."""
    from PIL import Image

    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(bomb_png()))
    assert len(bomb_png()) < 64_000


def test_nothing_bad_left_in_dest_dir(table) -> None:
    """Only complete images of ok results are left: no partial, rejected or failed body."""
    _, results, dest, _ = table
    ok_paths = {r.path for r in results.values() if r.ok}
    assert set(dest.iterdir()) == ok_paths
    for p in ok_paths:
        fmt, why = sniff(p.read_bytes()[:64])
        assert fmt is not None, (p, why)


def test_limits_cut_bodies_early(table) -> None:
    """Endless bodies and the gzip bomb stop near max_bytes, never read to the end."""
    _, results, _, took = table
    assert results["/endless.jpg"].bytes is None  # refused on its Content-Length, body never read
    for route in ("/endless-unsized.jpg", "/gzip-bomb.jpg"):
        assert FAST.max_bytes < results[route].bytes <= FAST.max_bytes + 256 * 1024
    # 2 GB + 4 GB of hostile bodies and every stall, concurrently, end within the deadline budget
    assert took < (FAST.retries + 1) * FAST.deadline + 5


def test_user_agent_is_truthful(table) -> None:
    server, _, _, _ = table
    assert set(server.user_agents) == {USER_AGENT}
    assert USER_AGENT.startswith("dsbuild/") and "github.com/dsbuild/dsbuild" in USER_AGENT


# --------------------------------------------------------------------------- retries, backoff, deadline


def test_retry_counts(hostile_server: HostileServer, tmp_path: Path) -> None:
    u = hostile_server.url
    settings = FetchSettings(allow_private_hosts=True, retries=4, backoff_base=0.01, read_timeout=2)
    res = {r.url: r for r in run([u + "/status/502", u + "/status/404", u + "/status/400"], tmp_path, settings)}
    assert res[u + "/status/502"].attempts == hostile_server.hits("/status/502") == 5
    assert hostile_server.hits("/status/404") == hostile_server.hits("/status/400") == 1
    no_retry = FetchSettings(allow_private_hosts=True, retries=0)
    [r] = run([u + "/status/500?again"], tmp_path, no_retry)
    assert r.attempts == 1 and hostile_server.hits("/status/500") == 1 and r.transient


def test_backoff_is_exponential_with_jitter(hostile_server: HostileServer, tmp_path: Path) -> None:
    """Gaps between attempts lie in [0.5, 1.5] × base × 2^k (server-side arrival times)."""
    base = 0.1
    settings = FetchSettings(allow_private_hosts=True, retries=3, backoff_base=base, read_timeout=2)
    run([hostile_server.url + "/status/503"], tmp_path, settings)
    times = hostile_server.times["/status/503"]
    assert len(times) == 4
    for k, (a, b) in enumerate(zip(times, times[1:], strict=False)):
        nominal = base * 2**k
        assert 0.5 * nominal - 0.01 <= b - a <= 1.5 * nominal + 0.15, (k, b - a)


def test_retry_after_is_honoured(hostile_server: HostileServer, tmp_path: Path) -> None:
    [r] = run([hostile_server.url + "/flaky/429/1/a.jpg"], tmp_path)
    times = hostile_server.times["/flaky/429/1/a.jpg"]
    assert r.ok and r.attempts == 2
    assert times[1] - times[0] >= 0.95  # Retry-After: 1, although backoff_base is 0.05


def test_deadline_bounds_a_dripping_server(hostile_server: HostileServer, tmp_path: Path) -> None:
    """Every read arrives within read_timeout, yet the download ends at the deadline."""
    settings = FetchSettings(allow_private_hosts=True, read_timeout=5, deadline=0.6, retries=3)
    t0 = time.monotonic()
    [drip, stall] = sorted(run([hostile_server.url + "/drip.jpg?every=0.02", hostile_server.url + "/stall-body.jpg"],
                               tmp_path, settings), key=lambda r: r.url)
    took = time.monotonic() - t0
    assert (drip.outcome, drip.reason, drip.transient, drip.attempts) == ("failed", "deadline", True, 1)
    assert (stall.outcome, stall.reason) == ("failed", "deadline")
    assert 0.55 <= drip.elapsed_s < 1.2 and took < 1.5
    assert 0 < drip.bytes < len(JPEG)
    assert list(tmp_path.iterdir()) == []  # the dripped partial file is gone


# --------------------------------------------------------------------------- concurrency


def test_per_host_limit(hostile_server: HostileServer, tmp_path: Path) -> None:
    settings = FetchSettings(allow_private_hosts=True, concurrency=32, per_host=3)
    urls = [f"{hostile_server.url}/img/coffee.jpg?delay=0.1&i={i}" for i in range(24)]
    t0 = time.monotonic()
    results = run(urls, tmp_path, settings)
    took = time.monotonic() - t0
    assert all(r.ok for r in results) and len(results) == 24
    assert hostile_server.max_inflight == 3
    assert took >= 24 / 3 * 0.1 - 0.05  # 8 waves of 3


def test_global_limit_across_hosts(hostile_server: HostileServer, tmp_path: Path) -> None:
    """Two host names for the same server: per_host would allow 8 + 8, concurrency caps at 5."""
    settings = FetchSettings(allow_private_hosts=True, concurrency=5, per_host=8)
    port = hostile_server.port
    urls = [f"http://{h}:{port}/img/coffee.jpg?delay=0.1&i={i}" for i in range(15) for h in ("127.0.0.1", "localhost")]
    results = run(urls, tmp_path, settings)
    assert len(results) == 30 and all(r.ok for r in results), {r.reason for r in results}
    assert hostile_server.max_inflight == 5


def test_busy_host_does_not_block_others(hostile_server: HostileServer, tmp_path: Path) -> None:
    """Many slow URLs on one host queue behind per_host without holding global slots."""
    settings = FetchSettings(allow_private_hosts=True, concurrency=4, per_host=1)
    port = hostile_server.port
    slow = [f"http://127.0.0.1:{port}/img/coffee.jpg?delay=0.2&i={i}" for i in range(5)]
    fast = [f"http://localhost:{port}/img/coffee.jpg?i={i}" for i in range(5)]
    order = [r.url for r in run(slow + fast, tmp_path, settings)]
    # The five fast ones finish while the slow host is still on its first or second URL.
    assert all(order.index(f) < order.index(slow[2]) for f in fast)


def test_lazy_generator_of_many_urls(hostile_server: HostileServer, tmp_path: Path) -> None:
    settings = FetchSettings(allow_private_hosts=True, concurrency=64, per_host=64)
    gen = (FetchRequest(f"{hostile_server.url}/img/astronaut.jpg?i={i}", key=str(i)) for i in range(400))
    results = fetch_all(gen, settings=settings, dest_dir=tmp_path)
    assert sorted(int(r.key) for r in results) == list(range(400))
    assert all(r.ok for r in results) and len(list(tmp_path.iterdir())) == 400


# --------------------------------------------------------------------------- SSRF guard


PRIVATE_LITERALS = ["127.0.0.1", "2130706433", "0x7f.1", "127.1", "0177.0.0.1", "0.0.0.0", "[::ffff:127.0.0.1]"]


def test_private_hosts_refused_by_default(hostile_server: HostileServer, tmp_path: Path) -> None:
    """Loopback in every spelling, and a name resolving to it, is refused before any connection."""
    port = hostile_server.port
    urls = [f"http://{h}:{port}/img/astronaut.jpg" for h in PRIVATE_LITERALS + ["localhost"]]
    results = run(urls, tmp_path, FetchSettings())
    assert [(r.outcome, r.reason, r.transient) for r in results] == [("rejected", "private address", False)] * len(urls)
    assert hostile_server.requests == []  # the server never saw a request
    assert all(r.attempts == 0 for r in results if "localhost" not in r.url)  # literals: refused before a request


def test_redirect_to_private_host_refused(tmp_path: Path) -> None:
    """A host the policy allows (127.0.0.1 via allowed_networks) redirecting to other private hosts."""
    with HostileServer() as allowed, HostileServer(host="127.0.0.2") as private:
        guarded = FetchSettings(allowed_networks=("127.0.0.1/32",), retries=0)
        targets = [
            f"http://127.0.0.2:{private.port}/img/astronaut.jpg",
            f"http://0.0.0.0:{allowed.port}/img/astronaut.jpg",
            f"http://2130706434:{private.port}/img/astronaut.jpg",  # 127.0.0.2, spelled as a number
            f"http://[::ffff:127.0.0.2]:{private.port}/img/astronaut.jpg",
        ]
        urls = [f"{allowed.url}/redirect/to?url={quote(t)}" for t in targets] + [allowed.url + "/img/coffee.jpg"]
        res = {r.url: r for r in run(urls, tmp_path, guarded)}
        for u in urls[:-1]:
            assert (res[u].outcome, res[u].reason, res[u].http_status) == ("rejected", "private address", 302)
        assert res[urls[-1]].ok  # the allowed host itself is fetched
        assert private.requests == [] and allowed.hits("/img/astronaut.jpg") == 0
        # The same redirect is followed when private hosts are allowed: the refusal was the guard's.
        [ok] = run(urls[:1], tmp_path, FetchSettings(allow_private_hosts=True))
        assert ok.ok and private.hits("/img/astronaut.jpg") == 1


@pytest.mark.parametrize(
    "address, allowed",
    [
        ("127.0.0.1", False), ("127.8.9.10", False), ("10.0.0.1", False), ("172.16.5.4", False),
        ("192.168.1.1", False), ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False),
        ("255.255.255.255", False), ("224.0.0.1", False), ("239.255.255.250", False), ("::1", False), ("::", False),
        ("fe80::1", False), ("fc00::1", False), ("fd12:3456::1", False), ("ff02::1", False),
        ("::ffff:10.0.0.1", False), ("::ffff:169.254.169.254", False), ("2002:7f00:1::1", False),
        ("64:ff9b::a9fe:a9fe", False), ("192.0.2.1", False),
        ("8.8.8.8", True), ("1.1.1.1", True), ("93.184.216.34", True), ("2606:4700::1111", True),
        ("::ffff:8.8.8.8", True), ("64:ff9b::808:808", True),
    ],
)
def test_address_policy(address: str, allowed: bool) -> None:
    assert AddressPolicy().allows(address) is allowed
    assert AddressPolicy(allow_private=True).allows(address) is True


@pytest.mark.parametrize(
    "url, reason",
    [
        ("http://169.254.169.254/latest/meta-data/", "private address"),
        ("http://[fe80::1%25eth0]/x.jpg", "private address"),
        ("http://[::1]:8080/x.jpg", "private address"),
        ("http://0x7f000001/x.jpg", "private address"),
        ("http://user:pw@10.1.2.3/x.jpg", "private address"),
        ("https://8.8.8.8/x.jpg", None),
        ("https://images.example.org/x.jpg", None),  # names are checked at resolve time
        ("HTTPS://EXAMPLE.ORG/x.jpg", None),
        ("file:///etc/passwd", "bad scheme"),
        ("javascript:alert(1)", "bad scheme"),
        ("gopher://example.org/", "bad scheme"),
        ("//example.org/x.jpg", "bad scheme"),
        ("http://", "bad url"),
        ("http://example.org:70000/", "bad url"),
    ],
)
def test_check_url(url: str, reason: str | None) -> None:
    assert AddressPolicy().check_url(url) == reason


def test_allowed_networks_punch_narrow_holes() -> None:
    policy = AddressPolicy(allowed_networks=("10.1.2.0/24", "127.0.0.1"))
    assert policy.allows("10.1.2.200") and policy.allows("127.0.0.1") and policy.allows("::ffff:10.1.2.3")
    assert not policy.allows("10.1.3.1") and not policy.allows("127.0.0.2") and not policy.allows("::1")
    with pytest.raises(DsbuildError, match="allowed_networks: 'intranet' is not an address"):
        FetchSettings(allowed_networks=("intranet",))


def test_literal_ip_spellings() -> None:
    assert str(literal_ip("2130706433")) == str(literal_ip("0x7f.1")) == str(literal_ip("0177.0.0.1")) == "127.0.0.1"
    assert str(literal_ip("[::1]")) == "::1" and literal_ip("example.org") is None and literal_ip("cafe") is None


def test_guarded_resolver_checks_resolved_addresses() -> None:
    """``localhost`` resolves (via the system resolver) to loopback: refused; allowed when asked."""

    async def resolve(policy: AddressPolicy) -> list:
        resolver = make_resolver(policy)
        try:
            return await resolver.resolve("localhost", 80, socket.AF_INET)
        finally:
            await resolver.close()

    with pytest.raises(BlockedAddress, match="localhost resolves to 127.0.0.1"):
        asyncio.run(resolve(AddressPolicy()))
    assert asyncio.run(resolve(AddressPolicy(allow_private=True)))[0]["host"] == "127.0.0.1"


# --------------------------------------------------------------------------- https, proxies


def test_https_certificates_are_verified(tmp_path: Path) -> None:
    """An untrusted certificate fails before any request; trusted via ca_bundle, https works by IP and name."""
    ca = tmp_path / "ca.pem"
    ca.write_text(TLS_CERT)
    dest = tmp_path / "in"
    with HostileServer(tls=True) as server:
        urls = [server.url + "/img/astronaut.jpg", f"https://localhost:{server.port}/redirect/chain/2"]
        untrusted = run(urls, dest, FetchSettings(allow_private_hosts=True))
        assert {(r.outcome, r.reason, r.transient, r.attempts) for r in untrusted} == {("failed", "tls error", False, 1)}
        assert server.requests == []  # the handshake failed: no request was ever sent
        trusting = FetchSettings(allow_private_hosts=True, ca_bundle=str(ca))
        trusted = sorted(run(urls, dest, trusting), key=lambda r: r.url)
        assert [r.outcome for r in trusted] == ["ok", "ok"]
        assert all(r.path.read_bytes() == JPEG for r in trusted)
        assert trusted[1].final_url == f"https://localhost:{server.port}/redirect/chain/0"


def test_environment_proxies_are_ignored(hostile_server: HostileServer, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy would connect on our behalf, past the address checks: requests always go direct."""
    dead = f"http://127.0.0.1:{free_port()}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(name, dead)
    [r] = run([hostile_server.url + "/img/coffee.jpg"], tmp_path)
    assert r.ok and hostile_server.hits("/img/coffee.jpg") == 1


# --------------------------------------------------------------------------- bodies in memory, back-pressure


def test_in_memory_bodies_never_touch_the_disk(hostile_server: HostileServer, tmp_path: Path) -> None:
    """``in_memory``: complete bodies come back as bytes (decoded, exact); failures leave nothing anywhere."""
    u = hostile_server.url
    good = ["/img/astronaut.jpg", "/gzip.jpg", "/chunked.jpg"]
    bad = {"/short.jpg": "failed", "/html-as-jpeg.jpg": "rejected", "/endless-unsized.jpg": "rejected",
           "/gzip-bomb.jpg": "rejected", "/stall-body.jpg": "failed"}
    results = {r.url[len(u):]: r for r in run([u + p for p in good + list(bad)], tmp_path, in_memory=FAST.max_bytes)}
    for route in good:
        res = results[route]
        assert res.ok and res.path is None and res.data == JPEG and res.bytes == len(JPEG), res
    for route, outcome in bad.items():
        assert results[route].outcome == outcome and results[route].data is None, results[route]
    assert list(tmp_path.iterdir()) == []
    assert "data" not in repr(results["/gzip.jpg"])  # a result prints without its body


def test_a_body_past_the_in_memory_limit_spills_to_a_file(hostile_server: HostileServer, tmp_path: Path) -> None:
    u = hostile_server.url
    [exact] = run([u + "/img/astronaut.jpg"], tmp_path / "exact", in_memory=len(JPEG))  # at the limit: memory
    assert exact.data == JPEG and exact.path is None
    [spilled] = run([u + "/img/astronaut.jpg"], tmp_path / "spill", in_memory=len(JPEG) - 1)
    assert spilled.ok and spilled.data is None and spilled.path.read_bytes() == JPEG
    [gz] = run([u + "/gzip.jpg"], tmp_path / "gz", in_memory=1000)  # spilled mid-stream, decoded bytes
    assert gz.path.read_bytes() == JPEG
    assert list((tmp_path / "spill").iterdir()) == [spilled.path] and list((tmp_path / "exact").iterdir()) == []


def test_hold_pauses_new_downloads_until_released(hostile_server: HostileServer, tmp_path: Path) -> None:
    """While ``hold()`` is true no download starts (the caller's consumer lags); released, the rest follow."""
    import dataclasses

    u = hostile_server.url
    urls = [f"{u}/img/coffee.jpg?i={i}" for i in range(6)]
    release = threading.Event()
    seen: list[FetchResult] = []
    out: list[list[FetchResult]] = []
    settings = dataclasses.replace(FAST, concurrency=1)
    hold = lambda: len(seen) >= 2 and not release.is_set()  # noqa: E731
    worker = threading.Thread(target=lambda: out.append(
        run(urls, tmp_path, settings, on_result=seen.append, hold=hold, in_memory=10**6)))
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)  # held: nothing more may start
        assert len(seen) == 2 and hostile_server.hits("/img/coffee.jpg") == 2
    finally:
        release.set()
    worker.join(timeout=10)
    assert not worker.is_alive()
    assert sorted(r.url for r in out[0]) == sorted(urls) and all(r.ok for r in out[0])
    assert hostile_server.hits("/img/coffee.jpg") == 6


# --------------------------------------------------------------------------- interruption


def test_stop_event_cancels_and_cleans(hostile_server: HostileServer, tmp_path: Path) -> None:
    u = hostile_server.url
    urls = [u + "/img/coffee.jpg"] + [f"{u}/drip.jpg?every=0.01&i={i}" for i in range(6)] + [u + "/stall-body.jpg"]
    settings = FetchSettings(allow_private_hosts=True, read_timeout=30, deadline=30)
    stop = threading.Event()
    out: list[list[FetchResult]] = []
    worker = threading.Thread(target=lambda: out.append(run(urls, tmp_path, settings, stop=stop)))
    worker.start()
    deadline = time.monotonic() + 10
    while not list(tmp_path.glob("dl-*.part")) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert list(tmp_path.glob("dl-*.part")), "the drips never started writing"
    t0 = time.monotonic()
    stop.set()
    worker.join(timeout=10)
    assert not worker.is_alive() and time.monotonic() - t0 < 2
    [results] = out
    assert [r.url for r in results] == [u + "/img/coffee.jpg"]  # only what finished is reported
    assert [p for p in tmp_path.iterdir()] == [results[0].path]  # no partial file left behind


def test_ctrl_c_removes_partial_files(hostile_server: HostileServer, tmp_path: Path) -> None:
    """A real SIGINT to a process downloading: it exits with KeyboardInterrupt, no .part file remains."""
    code = textwrap.dedent(f"""
        from pathlib import Path
        from dsbuild.fetch import FetchRequest, FetchSettings, fetch_all
        urls = [f"{hostile_server.url}/drip.jpg?every=0.01&i={{i}}" for i in range(8)]
        fetch_all([FetchRequest(u) for u in urls], dest_dir=Path({str(tmp_path)!r}),
                  settings=FetchSettings(allow_private_hosts=True, read_timeout=30, deadline=30))
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # not an inherited SIG_IGN
    try:
        deadline = time.monotonic() + 20
        while len(list(tmp_path.glob("dl-*.part"))) < 8 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert len(list(tmp_path.glob("dl-*.part"))) == 8
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    assert list(tmp_path.iterdir()) == []


def test_remove_partials(tmp_path: Path) -> None:
    (tmp_path / "dl-abc.part").write_bytes(b"half")
    (tmp_path / "dl-def.jpg").write_bytes(JPEG)
    (tmp_path / "notes.part").write_bytes(b"not ours")
    assert remove_partials(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dl-def.jpg", "notes.part"]


# --------------------------------------------------------------------------- API details


def test_works_inside_a_running_event_loop(hostile_server: HostileServer, tmp_path: Path) -> None:
    async def main() -> tuple[list[FetchResult], list[FetchResult]]:
        sync = fetch_all([FetchRequest(hostile_server.url + "/img/coffee.jpg")], settings=FAST, dest_dir=tmp_path)
        native = await fetch_all_async([hostile_server.url + "/img/rocket.jpg"], settings=FAST, dest_dir=tmp_path)
        return sync, native

    sync, native = asyncio.run(main())
    assert sync[0].ok and native[0].ok and native[0].key is None


def test_on_result_error_stops_the_run(hostile_server: HostileServer, tmp_path: Path) -> None:
    def boom(res: FetchResult) -> None:
        raise RuntimeError("caller bug")

    urls = [f"{hostile_server.url}/img/coffee.jpg?delay=0.2&i={i}" for i in range(4)]
    urls.append(hostile_server.url + "/img/rocket.jpg")
    with pytest.raises(RuntimeError, match="caller bug"):
        run(urls, tmp_path, FetchSettings(allow_private_hosts=True), on_result=boom)
    # The file handed to the failing callback is the caller's; nothing else is left.
    assert len(list(tmp_path.iterdir())) <= 1 and not list(tmp_path.glob("*.part"))


def test_unwritable_dest_dir_is_one_clear_error(hostile_server: HostileServer, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(DsbuildError, match="cannot create download folder .*file"):
        run([hostile_server.url + "/img/coffee.jpg"], not_a_dir)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"concurrency": 0}, "concurrency must be an integer ≥ 1, got 0"),
        ({"per_host": 2.5}, "per_host must be an integer ≥ 1, got 2.5"),
        ({"deadline": 0}, "deadline must be a number of seconds > 0"),
        ({"read_timeout": "10"}, "read_timeout must be a number of seconds > 0, got '10'"),
        ({"retries": -1}, "retries must be an integer ≥ 0"),
        ({"max_bytes": True}, "max_bytes must be an integer ≥ 1"),
        ({"allow_private_hosts": "yes"}, "allow_private_hosts must be true or false"),
        ({"user_agent": " "}, "user_agent must be a non-empty string"),
        ({"ca_bundle": "/nonexistent/ca.pem"}, "ca_bundle must be the path of a PEM file"),
    ],
)
def test_settings_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(DsbuildError, match=message):
        FetchSettings(**kwargs)


def test_settings_from_manifest_values() -> None:
    s = FetchSettings(**{"concurrency": 64, "deadline": 12, "allowed_networks": ["10.0.0.0/8"]})
    assert s.allowed_networks == ("10.0.0.0/8",)
    assert s.policy().allows("10.9.9.9") and not s.policy().allows("127.0.0.1")
    with pytest.raises(TypeError):
        FetchSettings(**{"concurency": 64})  # an unknown key is the manifest layer's to report


@pytest.mark.parametrize(
    "head, expected",
    [
        (JPEG[:64], ("jpeg", None)),
        (photo("coffee", "png")[:64], ("png", None)),
        (b"GIF89a" + b"\x00" * 20, ("gif", None)),
        (b"RIFF\x24\x00\x00\x00WEBPVP8 ", ("webp", None)),
        (b"II*\x00\x08\x00\x00\x00", ("tiff", None)),
        (b"BM" + b"\x00" * 12 + (40).to_bytes(4, "little") + b"\x00" * 10, ("bmp", None)),
        (b"BMW owners club: welcome to our forum page", (None, "not an image (text)")),
        (b"\xef\xbb\xbf  <!DOCTYPE html><html>", (None, "not an image (html)")),
        (b"<?xml version='1.0'?><!-- x --><svg xmlns='http://www.w3.org/2000/svg'>", (None, "not an image (svg)")),
        (b"<?xml version='1.0'?><rss>", (None, "not an image (xml)")),
        (b'{"error": "not found"}', (None, "not an image (json)")),
        (b"%PDF-1.7\n", (None, "not an image (pdf)")),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00", (None, "unsupported image (avif)")),
        (b"\x00\x00\x01\x00\x01\x00\x10\x10", (None, "unsupported image (ico)")),
        (b"\x1f\x8b\x08\x00", (None, "not an image (gzip)")),
        ("Fehler: Bild nicht gefunden – äöü".encode()[:35], (None, "not an image (text)")),  # cut mid-character
        (bytes(range(256))[:64], (None, "not an image (unknown)")),
        (b"", (None, "empty body")),
    ],
)
def test_sniff(head: bytes, expected: tuple) -> None:
    assert sniff(head) == expected


@pytest.mark.parametrize(
    "values, blocked",
    [
        (["noai"], True), (["NoImageAI"], True), (["noindex, noai"], True), (["dsbuild: noai"], True),
        (["*: noimageai"], True), (["googlebot: noindex", "noai"], True), (["otherbot: noai"], False),
        (["noindex, nofollow"], False), (["unavailable_after: 25 Jun 2010 15:00:00 PST"], False), ([], False),
    ],
)
def test_noai_directive(values: list[str], blocked: bool) -> None:
    assert noai_directive(values) is blocked


def test_retry_after_parsing() -> None:
    assert retry_after_seconds("3") == 3.0 and retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    now = 1_700_000_000.0
    assert retry_after_seconds("Tue, 14 Nov 2023 22:14:20 GMT", now=now) == pytest.approx(60.0)
    assert retry_after_seconds("Tue, 14 Nov 2000 22:14:20 GMT", now=now) == 0.0


def test_import_is_cheap() -> None:
    out = subprocess.run([sys.executable, "-c", "import sys, dsbuild.fetch; print('aiohttp' in sys.modules)"],
                         capture_output=True, text=True, check=True, env={**os.environ})
    assert out.stdout.strip() == "False"
