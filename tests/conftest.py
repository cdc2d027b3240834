"""Shared fixtures of the test suite, and its order: the slow model modules run last.

Fixtures: ``fake_engine`` (a loopback fake search engine, :mod:`fake_engines`),
``hostile_server`` (a loopback server that misbehaves on purpose,
:mod:`hostile_server`), ``wide_terminal`` (rich tables at 200 columns in
captured output). Helper functions live in plain modules beside the tests:
:mod:`helpers` (real photos, the in-process CLI), :mod:`model_data` (tiny
real digit datasets for the model tests).
"""

from __future__ import annotations

from collections.abc import Iterator

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
    (their module-scoped fixtures train once); the rest keep their order."""
    slow_modules = {item.module.__name__ for item in items if item.get_closest_marker("slow") is not None}
    items.sort(key=lambda item: item.module.__name__ in slow_modules)
