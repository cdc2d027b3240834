"""The executor's settings: the manifest's ``[executor]`` table (top level or per dataset), as :class:`ExecutorSettings`.

Kept apart from :mod:`dsbuild.executor` so that loading a manifest (every
command does) imports neither the image decoders nor Ray.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dsbuild.errors import Problem, check, did_you_mean

BACKEND_NAMES = ("local", "ray")
"""The executor backends (:data:`dsbuild.executor.BACKENDS` holds one factory per name)."""

DEFAULT_RAY_BATCH = 64
"""Images per Ray task unless ``batch_size`` says otherwise. bench/ray_modes.py: a task costs the driver ~1.4 CPU ms
(0.100 vs 0.078 driver ms per image against the local pool), so 64 images make it ~0.02 ms an image, and a lost
task costs at most 64 images' work."""

_HOST_PORT = re.compile(r"^(?:ray://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):([0-9]{1,5})$")


def parse_address(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a Ray address ``host:port`` or ``ray://host:port``; None for ``auto``."""
    if address == "auto":
        return None
    m = _HOST_PORT.match(address)
    if not m or not 0 < int(m.group(2)) < 65536:
        raise ValueError(address)
    return m.group(1).strip("[]"), int(m.group(2))


@dataclass(frozen=True, kw_only=True)
class ExecutorSettings:
    """Where the per-image work runs (manifest table ``[executor]``, top level or ``[datasets.NAME.executor]``).

    ``backend``: ``"local"`` (default: worker processes on this machine) or ``"ray"``
    (Ray tasks on a cluster). ``address``: the Ray cluster — ``"auto"`` (the cluster
    this machine belongs to, as ``ray start`` recorded it or ``RAY_ADDRESS``),
    ``"host:port"`` (the head node's GCS port, 6379 by default) or
    ``"ray://host:10001"`` (Ray Client, needs ``ray[client]``); unset: start a Ray
    runtime on this machine for the build. ``batch_size``: images per task (default:
    :data:`DEFAULT_RAY_BATCH` on Ray; the local backend sizes its own batches).
    """

    backend: str = "local"
    address: str | None = None
    batch_size: int | None = None

    def __post_init__(self) -> None:
        check(self.problems(), table="executor")

    def problems(self) -> list[Problem]:
        """Every bad value, in field order (empty when the settings are valid)."""
        out = []
        if self.backend not in BACKEND_NAMES:
            out.append(Problem("backend", f"unknown backend {self.backend!r}{did_you_mean(str(self.backend), BACKEND_NAMES)} — "
                                   f"known: {', '.join(BACKEND_NAMES)}"))
        if self.address is not None:
            try:
                if not isinstance(self.address, str):
                    raise ValueError(self.address)
                parse_address(self.address)
            except ValueError:
                out.append(Problem("address", f"must be \"auto\", \"host:port\" or \"ray://host:port\", not {self.address!r}"))
        if self.batch_size is not None and (isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int)
                                            or not 1 <= self.batch_size <= 100_000):
            out.append(Problem("batch_size", f"must be an integer from 1 to 100000, not {self.batch_size!r}"))
        return out

    def describe(self) -> str:
        """``local`` or ``ray (ADDRESS)`` for messages."""
        if self.backend == "ray":
            return f"ray ({self.address or 'a local Ray runtime'})"
        return self.backend
