#!/bin/sh
# The browser tests (tests/test_ui_browser.py) drive Debian's chromium with chromium-driver.
# Install both with apt-get when either is missing (sudo when not root). If that is not
# possible, say so: the browser tests then fail with the same advice (they never skip).
set -u
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
        echo "ensure-chromium: chromium/chromedriver missing and not root (no sudo): install them with" \
             "'apt-get install chromium chromium-driver' — the browser tests will fail until then" >&2
        exit 0
    fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-chromium: no apt-get here: install Chromium and a matching chromedriver at /usr/bin/chromium" \
         "and /usr/bin/chromedriver — the browser tests will fail until then" >&2
    exit 0
fi
echo "ensure-chromium: installing chromium and chromium-driver with apt-get" >&2
$SUDO apt-get update -q >/dev/null && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null \
    || echo "ensure-chromium: apt-get could not install chromium chromium-driver — the browser tests will fail until they are installed" >&2
exit 0
