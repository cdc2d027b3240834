"""Ctrl-C while the catalog's connection runs a statement is a KeyboardInterrupt, whatever the statement.

The suite's Ctrl-C-during-a-build test once ended in a traceback: the SIGINT arrived while ``upsert_items``
unregistered its data frame (``finally: con.unregister(...)``, a DROP VIEW), which went to DuckDB unguarded, so
DuckDB ran the handler itself and raised ``RuntimeError: Query interrupted`` (exit 1, not 130). A real DuckDB file,
a real signal from another thread, many times over.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pandas as pd

from dsbuild.catalog import Catalog


def test_a_ctrl_c_during_register_or_unregister_is_a_keyboard_interrupt(tmp_path: Path) -> None:
    cat = Catalog.open(tmp_path / "c.duckdb")
    rows = pd.DataFrame({"a": range(100_000)})  # registering reads it: the statement takes a while
    outcomes: dict[str, int] = {}
    # Python's own Ctrl-C handler, however pytest was started (a run started in the background by a non-interactive
    # shell has SIGINT ignored: no KeyboardInterrupt came, and the loop below had no end)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        for trial in range(100):
            def shoot(delay: float = 0.001 * (trial % 7)) -> None:
                time.sleep(delay)
                os.kill(os.getpid(), signal.SIGINT)

            shooter = threading.Thread(target=shoot)
            try:
                shooter.start()
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    cat.con.register("_rows", rows)
                    cat.con.unregister("_rows")
                outcome = "no KeyboardInterrupt within 10 s"
            except KeyboardInterrupt:
                outcome = "KeyboardInterrupt"
            except Exception as exc:  # what DuckDB made of the stop: the bug
                outcome = f"{type(exc).__name__}: {exc}".splitlines()[0]
            shooter.join()
            outcomes[outcome] = outcomes.get(outcome, 0) + 1  # noqa: F821 (set on every path above)
    finally:
        signal.signal(signal.SIGINT, before)
        cat.close()
    # On the code before this test: {'RuntimeError: Query interrupted': ~48, 'Error: …': ~42, 'KeyboardInterrupt': ~10}
    assert outcomes == {"KeyboardInterrupt": 100}
