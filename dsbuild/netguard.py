"""SSRF guard: which URLs and which resolved addresses the downloader may contact.

Every URL handed to :mod:`dsbuild.fetch` comes from the web (search results,
URL lists, redirects) and is hostile until proven otherwise. The guard works in
two places, for every redirect hop:

1. :meth:`AddressPolicy.check_url` before a request is sent: http/https only,
   a host must be present, and a host written as an IP address (including the
   legacy forms ``2130706433``, ``0x7f.1``, ``127.1`` that ``inet_aton``
   accepts) must be allowed;
2. :class:`GuardedResolver` when a host name is resolved: if *any* address the
   name resolves to is not allowed, the connection is refused. aiohttp then
   connects to exactly the addresses the guard checked, so a DNS answer that
   changes between "check" and "connect" (DNS rebinding) cannot slip through.

What "not allowed" means (unless ``allow_private`` is set): every address that
:attr:`ipaddress.IPv4Address.is_global` rejects — loopback, private
(10/8, 172.16/12, 192.168/16, fc00::/7), link-local (169.254/16 with the cloud
metadata endpoint 169.254.169.254, fe80::/10), shared CGN space, unspecified
(0.0.0.0, ::), reserved and documentation ranges — plus multicast. IPv6
addresses that embed an IPv4 address (``::ffff:127.0.0.1``, 6to4
``2002:7f00:1::``, NAT64 ``64:ff9b::7f00:1``) are judged by the embedded one.

``allowed_networks`` punches narrow holes (an intranet mirror, a test server)
without opening every private address.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOWED_SCHEMES = frozenset({"http", "https"})

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_LEGACY_V4 = re.compile(r"[0-9a-fA-FxX.]+")


class BlockedAddress(OSError):
    """A host resolved to an address the policy refuses (raised inside the resolver).

    It subclasses ``OSError`` because aiohttp wraps resolver ``OSError``\\ s in
    ``ClientConnectorDNSError`` (``.os_error`` is this exception), which is how
    :mod:`dsbuild.fetch` tells a refused address from a DNS failure.
    """

    def __init__(self, host: str, address: str) -> None:
        super().__init__(f"{host} resolves to {address}, a private/loopback/link-local address")
        self.host = host
        self.address = address


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address carried inside an IPv6 one (mapped, 6to4, NAT64), else None."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public_address(ip: IPAddress) -> bool:
    """True when ``ip`` is a globally routable unicast address (see module doc)."""
    inner = embedded_ipv4(ip)
    if inner is not None:
        return is_public_address(inner)
    return bool(ip.is_global) and not ip.is_multicast and not ip.is_unspecified


def literal_ip(host: str) -> IPAddress | None:
    """``host`` as an IP address when it is written as one, else None (it is a name).

    Accepts bracketed IPv6 (``[::1]``), zone ids (``fe80::1%eth0``) and the legacy
    IPv4 spellings ``getaddrinfo`` would turn into an address (``2130706433``,
    ``0x7f.1``, ``0177.0.0.1``, ``127.1``) — a filter that only parsed dotted
    quads would let those reach 127.0.0.1.
    """
    h = host.strip("[]")
    try:
        return ipaddress.ip_address(h.split("%", 1)[0])
    except ValueError:
        pass
    if _LEGACY_V4.fullmatch(h.rstrip(".")):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(h.rstrip(".")))
        except OSError:
            return None
    return None


@dataclass(frozen=True, kw_only=True)
class AddressPolicy:
    """Which addresses may be contacted.

    allow_private: contact any address, private and loopback included (tests,
        intranet sources); default False.
    allowed_networks: networks allowed even when ``allow_private`` is False, as
        CIDR strings or addresses (e.g. ``("10.1.2.0/24", "127.0.0.1")``).
    """

    allow_private: bool = False
    allowed_networks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        nets = []
        for text in self.allowed_networks:
            try:
                nets.append(ipaddress.ip_network(str(text).strip(), strict=False))
            except ValueError as exc:
                raise ValueError(f"allowed_networks: {text!r} is not an address or CIDR network ({exc})") from None
        object.__setattr__(self, "_nets", tuple(nets))

    @property
    def networks(self) -> tuple[Network, ...]:
        """``allowed_networks`` parsed."""
        return self._nets  # type: ignore[attr-defined]

    def allows(self, ip: IPAddress | str) -> bool:
        """True when the downloader may connect to ``ip``."""
        if isinstance(ip, str):
            ip = ipaddress.ip_address(ip.split("%", 1)[0])
        if self.allow_private:
            return True
        inner = embedded_ipv4(ip)
        for candidate in (ip, inner):
            if candidate is not None and any(candidate.version == n.version and candidate in n for n in self.networks):
                return True
        return is_public_address(ip)

    def check_url(self, url: str) -> str | None:
        """The reason ``url`` must not be requested ("bad scheme", "bad url", "private address"), or None.

        Host names are not resolved here; :class:`GuardedResolver` checks them
        at connect time.
        """
        try:
            parts = urlsplit(url)
            host = parts.hostname
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            return "bad url"
        if parts.scheme.lower() not in ALLOWED_SCHEMES:
            return "bad scheme"
        if not host:
            return "bad url"
        ip = literal_ip(host)
        if ip is not None and not self.allows(ip):
            return "private address"
        return None

    def check_addresses(self, host: str, addresses: Iterable[str]) -> None:
        """Raise :class:`BlockedAddress` if any of ``addresses`` (resolved from ``host``) is refused."""
        for addr in addresses:
            if not self.allows(addr):
                raise BlockedAddress(host, addr)


def make_resolver(policy: AddressPolicy) -> Any:
    """An aiohttp resolver that refuses hosts resolving to addresses ``policy`` does not allow.

    Built lazily so that importing this module does not import aiohttp.
    """
    from aiohttp.abc import AbstractResolver
    from aiohttp.resolver import ThreadedResolver

    class GuardedResolver(AbstractResolver):
        """Resolve with the system resolver, then check every address (see module doc)."""

        def __init__(self) -> None:
            self._inner = ThreadedResolver()

        async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list:
            results = await self._inner.resolve(host, port, family)
            # All or nothing: a name with one public and one private address is refused
            # (a rebinding trick), not quietly narrowed to the public one.
            policy.check_addresses(host, (r["host"] for r in results))
            return results

        async def close(self) -> None:
            await self._inner.close()

    return GuardedResolver()
