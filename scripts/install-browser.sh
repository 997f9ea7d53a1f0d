#!/usr/bin/env bash
# Installs what tests/test_dashboard.py needs: Debian's headless Chromium and its WebDriver, and Selenium
# from PyPI. Idempotent: does nothing when all three are present. Needs root (or sudo) for apt-get.
set -euo pipefail

PYTHON="${PYTHON:-python3}"
SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
fi

if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    # a partly failed update (an architecture's index mid-sync on the mirror) is not fatal
    $SUDO apt-get update || echo "install-browser: apt-get update reported errors (above); trying the install anyway" >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends chromium chromium-driver fonts-dejavu-core
fi

if ! "$PYTHON" -c "import selenium" >/dev/null 2>&1; then
    "$PYTHON" -m pip install --quiet "selenium>=4.10,<5"
fi

chromium --version
chromedriver --version
"$PYTHON" -c "import selenium; print('selenium', selenium.__version__)"
