"""Shared fixtures of the test suite, and its order: the slow model modules run last.

Fixtures: ``fake_engine`` (a loopback fake search engine, :mod:`fake_engines`),
``hostile_server`` (a loopback server that misbehaves on purpose,
:mod:`hostile_server`), ``wide_terminal`` (rich tables at 200 columns in
captured output). Helper functions live in plain modules beside the tests:
:mod:`helpers` (real photos, the in-process CLI), :mod:`model_data` (tiny
real digit datasets for the model tests).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest-xdist workers on a 2-core machine: each keeps torch's default thread pools at
    # one thread, so that two trainings at once do not oversubscribe the cores (OpenMP threads spin-wait).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest
from fake_engines import FakeEngineServer
from hostile_server import HostileServer


@pytest.fixture
def fake_engine() -> Iterator[FakeEngineServer]:
    """A running :class:`FakeEngineServer` (100 results per query, normal mode)."""
    with FakeEngineServer() as server:
        yield server


@pytest.fixture
def hostile_server() -> Iterator[HostileServer]:
    """A running :class:`HostileServer` on 127.0.0.1 (stopped after the test)."""
    with HostileServer() as server:
        yield server


@pytest.fixture
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich tables in captured output at 200 columns: no wrapped titles or truncated cells."""
    monkeypatch.setenv("COLUMNS", "200")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules with slow (``@pytest.mark.slow``, model training) tests run last, each module kept together
    (their module-scoped fixtures train once); the rest keep their order. Under pytest-xdist (``make test``:
    ``-n 2 --dist loadfile``, one module per worker at a time) they go first instead, with the Ray cluster's
    module: the long modules start early and the short ones fill in beside them."""
    slow_modules = {item.module.__name__ for item in items if item.get_closest_marker("slow") is not None}
    if os.environ.get("PYTEST_XDIST_WORKER"):
        slow_modules |= {item.module.__name__ for item in items if item.get_closest_marker("ray") is not None}
        items.sort(key=lambda item: item.module.__name__ not in slow_modules)
    else:
        items.sort(key=lambda item: item.module.__name__ in slow_modules)
