"""The review app keeps the catalog open between decisions and gives it up when another process asks.

Real app (Starlette's TestClient in this process, with the HeldCatalog's watcher thread), real
`dsbuild` commands in other processes, a real DuckDB file: `status`, `query`, `review` and
`build` run beside an app that holds the catalog, without an error and without waiting for the
app's idle timeout; a tool that does not ask (plain DuckDB) gets the file once the app is idle; a
holder that never lets go is named in the error after the wait.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

import dsbuild
from dsbuild.catalog import BuildLock, Catalog, lock
from dsbuild.errors import CatalogBusy
from dsbuild.ui.app import UiConfig, create_app
from dsbuild.ui.security import csrf_for
from ui_data import make_project

TOKEN = "t0ken-for-held-tests_" + "y" * 22
PORT = 8766
BASE = f"http://127.0.0.1:{PORT}"
CSRF = {"X-CSRF-Token": csrf_for(TOKEN)}
QUEUE_ID = r'<article class="card[^"]*"[^>]*data-id="([^"]+)"'


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return make_project(tmp_path_factory.mktemp("uiheld"))


def client_for(manifest: Path, idle_s: float):
    app = create_app(UiConfig(manifest=dsbuild.load_manifest(manifest), dataset="digits", host="127.0.0.1", port=PORT,
                              token=TOKEN, catalog_idle_s=idle_s))
    c = TestClient(app, base_url=BASE)
    assert c.get(f"/?token={TOKEN}", follow_redirects=False).status_code == 303
    return app, c


def decide(c: TestClient, image_id: str, action: str = "keep") -> None:
    r = c.post("/api/decide", json={"decisions": [{"image_id": image_id, "action": action}]}, headers=CSRF)
    assert r.status_code == 200, r.text


def queue(c: TestClient) -> list[str]:
    import re

    return re.findall(QUEUE_ID, c.get("/").text)


def dsbuild_cli(manifest: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dsbuild", "-m", str(manifest), *args], capture_output=True, text=True,
                          timeout=timeout)


def ui_events(manifest: Path) -> int:
    with Catalog.open_readonly(manifest.parent / "catalog" / "dsbuild.duckdb") as cat:
        return cat.con.execute("SELECT count(*) FROM label_history WHERE source = 'ui'").fetchall()[0][0]


def test_dsbuild_commands_run_beside_an_app_that_holds_the_catalog(manifest: Path) -> None:
    app, c = client_for(manifest, idle_s=600)  # only asking can make it let go here
    try:
        ids = queue(c)
        decide(c, ids[0])
        assert app.held.held, "after a decision the app keeps the catalog open"
        # another process's reader: the app lets go when asked, the command sees the decision
        r = dsbuild_cli(manifest, "query", "select count(*) AS n from label_history where source = 'ui'", "--format", "csv")
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["n", "1"]
        assert app.held.yielded == 1 and not app.held.held
        decide(c, ids[1])
        assert app.held.held and app.held.opened == 2
        r = dsbuild_cli(manifest, "status")
        assert r.returncode == 0 and "digits" in r.stdout, r.stderr
        assert app.held.yielded == 2
        # another process's writer (the writers' lock, then the file): `review` applies its decisions file
        decide(c, ids[2])
        csv = manifest.parent / "decisions.csv"
        csv.write_text(f"image_id,action,new_label\n{ids[3]},remove,\n")
        r = dsbuild_cli(manifest, "review", "digits", "--decisions", str(csv))
        assert r.returncode == 0, r.stderr
        assert app.held.yielded == 3
        with Catalog.open_readonly(manifest.parent / "catalog" / "dsbuild.duckdb") as cat:
            assert cat.current_states("digits", [ids[3]])["status"].tolist() == ["rejected"]
        decide(c, ids[4])  # and the app opens it again for the next key press
        assert ui_events(manifest) == 4
    finally:
        app.held.close()


def test_a_build_gets_the_catalog_and_the_app_decides_after_it(manifest: Path) -> None:
    app, c = client_for(manifest, idle_s=600)
    try:
        ids = queue(c)
        decide(c, ids[5])
        before = ui_events(manifest)
        r = dsbuild_cli(manifest, "build", "digits", "--workers", "1")
        assert r.returncode == 0, r.stderr
        assert app.held.yielded >= 1
        decide(c, ids[6])
        assert ui_events(manifest) == before + 1
    finally:
        app.held.close()


def test_a_tool_that_does_not_ask_gets_the_file_once_the_app_is_idle(manifest: Path) -> None:
    app, c = client_for(manifest, idle_s=4.0)
    catalog = manifest.parent / "catalog" / "dsbuild.duckdb"
    plain = [sys.executable, "-c", f"import duckdb; duckdb.connect({str(catalog)!r}, read_only=True).close()"]
    try:
        decide(c, queue(c)[7])
        held = subprocess.run(plain, capture_output=True, text=True, timeout=60)
        assert held.returncode != 0 and "lock" in held.stderr.lower(), held.stderr
        deadline = time.monotonic() + 30
        while app.held.held and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not app.held.held and app.held.yielded == 0, "closed for being idle, nobody asked"
        free = subprocess.run(plain, capture_output=True, text=True, timeout=60)
        assert free.returncode == 0, free.stderr
    finally:
        app.held.close()


def test_a_holder_that_never_lets_go_is_named_after_the_wait(manifest: Path, monkeypatch) -> None:
    catalog = manifest.parent / "catalog" / "dsbuild.duckdb"
    # a process that takes the lock as a yielding holder and then never looks at the request (a hung app)
    hung = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from dsbuild.catalog import BuildLock\n"
        f"held = BuildLock({str(catalog)!r}, yields=True); held.acquire(); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert hung.stdout.readline().strip() == "held"
        monkeypatch.setattr(lock, "YIELD_WAIT_S", 0.5)
        start = time.monotonic()
        with pytest.raises(CatalogBusy, match=rf"held by the review app \(`dsbuild ui`, PID {hung.pid}\)"):
            BuildLock(catalog).acquire()
        assert time.monotonic() - start >= 0.5, "it waited for the holder before giving up"
        assert (catalog.parent / "dsbuild.duckdb.want").exists(), "and it asked"
    finally:
        hung.kill()
        hung.wait()
