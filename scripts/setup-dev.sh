#!/usr/bin/env bash
# Create .venv with the CPU development/test requirements (CPU torch, onnxruntime, the
# SeaweedFS S3 test server, Playwright), and Debian's headless Chromium for the playground's
# browser tests. Safe to run again: pip skips what is already installed, apt what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
.venv/bin/python -m pip check

# The browser: Debian's chromium (Playwright drives it; it downloads no browser of its own) and
# a font, so that the page renders text in a headless run.
BROWSER_PACKAGES=(chromium fonts-dejavu-core)
installed=$(dpkg-query -W -f='${Status}\n' "${BROWSER_PACKAGES[@]}" 2>/dev/null | grep -c " installed$" || true)
if [ "$installed" -ne "${#BROWSER_PACKAGES[@]}" ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup-dev: no apt-get here: install Chromium yourself (or set CHROMIUM=/path/to/it) for the browser tests" >&2
  else
    as_root=()
    if [ "$(id -u)" -ne 0 ]; then
      as_root=(sudo)
    fi
    echo "setup-dev: installing ${BROWSER_PACKAGES[*]} (Debian packages) for the browser tests"
    "${as_root[@]}" apt-get update -qq
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${BROWSER_PACKAGES[@]}" >/dev/null
  fi
fi
