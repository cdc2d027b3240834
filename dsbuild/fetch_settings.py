"""The downloader's settings: the manifest's ``[datasets.NAME.fetch]`` table, as :class:`FetchSettings`.

Kept apart from :mod:`dsbuild.fetch` so that loading a manifest (every command
does) does not import asyncio and the download machinery.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsbuild import __version__
from dsbuild.errors import Problem, check
from dsbuild.netguard import AddressPolicy

USER_AGENT = f"dsbuild/{__version__} (+https://github.com/dsbuild/dsbuild; dataset builder)"


@dataclass(frozen=True, kw_only=True)
class FetchSettings:
    """Downloader limits and policy (the manifest's ``[datasets.NAME.fetch]`` table).

    concurrency: downloads in flight at most (default 32).
    per_host: downloads in flight per host name at most (default 8).
    connect_timeout: seconds to open a TCP (+TLS) connection (default 5).
    read_timeout: seconds to wait for any next piece of data (default 10).
    deadline: wall-clock seconds per attempt, all redirect hops, headers and body
        included (default 30); a stalled or dripping server ends as "deadline".
    max_bytes: most *decoded* body bytes accepted (default 20 MB); more → "too large".
    max_redirects: redirect hops followed at most (default 10); every hop is re-checked.
    retries: extra attempts after the first for transient failures (default 3).
    backoff_base: seconds before the first retry; doubles each retry, ×0.5–1.5 jitter (default 0.5).
    backoff_max: cap on one backoff wait in seconds (default 8).
    retry_after_max: longest ``Retry-After`` honoured in seconds (default 30); a longer one
        ends the URL as a transient failure (retry later with ``--retry-failed``).
    allow_private_hosts: allow loopback/private/link-local hosts (default False; tests, intranets).
    allowed_networks: addresses/CIDR networks allowed even when private hosts are not (default none).
    respect_noai: reject responses carrying ``X-Robots-Tag: noai``/``noimageai`` (default True).
    ca_bundle: a PEM file of extra CAs to trust for https (intranet mirrors, tests); default:
        the system's trust store only. Certificates are always verified.
    user_agent: the User-Agent header; default names dsbuild truthfully.
    """

    concurrency: int = 32
    per_host: int = 8
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    deadline: float = 30.0
    max_bytes: int = 20_000_000
    max_redirects: int = 10
    retries: int = 3
    backoff_base: float = 0.5
    backoff_max: float = 8.0
    retry_after_max: float = 30.0
    allow_private_hosts: bool = False
    allowed_networks: tuple[str, ...] = ()
    respect_noai: bool = True
    ca_bundle: str | None = None
    user_agent: str = USER_AGENT

    def __post_init__(self) -> None:
        nets = self.allowed_networks
        if isinstance(nets, str):
            nets = (nets,)
        if isinstance(nets, (tuple, list)):
            object.__setattr__(self, "allowed_networks", tuple(str(n) for n in nets))
        if isinstance(self.ca_bundle, os.PathLike):
            object.__setattr__(self, "ca_bundle", str(self.ca_bundle))
        check(self.problems(), table="fetch")

    def problems(self) -> list[Problem]:
        """Every bad value, in field order (empty when the settings are valid)."""
        out: list[Problem] = []

        def need(name: str, ok: bool, what: str) -> None:
            if not ok:
                out.append(Problem(name, f"must be {what}, got {getattr(self, name)!r}"))

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool)

        for name in ("concurrency", "per_host", "max_bytes"):
            need(name, is_int(getattr(self, name)) and getattr(self, name) >= 1, "an integer ≥ 1")
        for name in ("max_redirects", "retries"):
            need(name, is_int(getattr(self, name)) and getattr(self, name) >= 0, "an integer ≥ 0")
        for name in ("connect_timeout", "read_timeout", "deadline"):
            need(name, is_num(getattr(self, name)) and getattr(self, name) > 0, "a number of seconds > 0")
        for name in ("backoff_base", "backoff_max", "retry_after_max"):
            need(name, is_num(getattr(self, name)) and getattr(self, name) >= 0, "a number of seconds ≥ 0")
        for name in ("allow_private_hosts", "respect_noai"):
            need(name, isinstance(getattr(self, name), bool), "true or false")
        need("user_agent", isinstance(self.user_agent, str) and self.user_agent.strip() != "", "a non-empty string")
        if self.ca_bundle is not None:
            need("ca_bundle", isinstance(self.ca_bundle, str) and Path(self.ca_bundle).is_file(), "the path of a PEM file")
        if not isinstance(self.allowed_networks, tuple):
            need("allowed_networks", False, "a list of addresses or CIDR networks")
        else:
            try:
                self.policy()
            except ValueError as exc:
                out.append(Problem("allowed_networks", str(exc).removeprefix("allowed_networks: "), sep=": "))
        return out

    def policy(self) -> AddressPolicy:
        """The :class:`~dsbuild.netguard.AddressPolicy` these settings describe."""
        return AddressPolicy(allow_private=self.allow_private_hosts, allowed_networks=self.allowed_networks)
