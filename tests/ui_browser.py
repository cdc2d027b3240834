"""Helpers of the browser tests: the app as a real subprocess (``dsbuild ui``), headless Chromium via Selenium.

Chromium and chromedriver are Debian's packages (``make test`` runs
``tools/ensure-chromium.sh``, which installs them when missing). When they are missing
the tests FAIL with that advice: they never skip.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,1000")


class UiServer:
    """``dsbuild -m MANIFEST ui digits --port 0 --no-browser`` in a subprocess; ``url`` is the printed URL."""

    def __init__(self, manifest: Path, dataset: str = "digits") -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "dsbuild", "-m", str(manifest), "ui", dataset, "--port", "0",
                                      "--no-browser"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.url = ""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"dsbuild ui exited: {self.proc.stderr.read()}")
            if line.startswith("http://"):
                self.url = line.strip()
                break
        assert self.url.startswith("http://127.0.0.1:"), self.url
        self.base = self.url.split("/?")[0]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def chrome():
    """A headless Chromium driven by Debian's chromedriver, with a fresh profile folder."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(f"{' and '.join(missing)} missing — run `sh tools/ensure-chromium.sh` (or `apt-get install chromium "
                    "chromium-driver`); `make test` runs it", pytrace=False)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        opts.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="dsbuild-chromium-")
    opts.add_argument(f"--user-data-dir={profile}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    driver.set_page_load_timeout(60)
    return driver


def wait_for(condition, timeout: float = 20.0, what: str = "condition"):
    """Poll ``condition()`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = condition()
        except Exception as exc:  # noqa: BLE001 - a stale element while the page changes: try again
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")
