#!/usr/bin/env bash
# Set up everything the tests need and run them: the import layers (lint-imports, contracts in pyproject.toml),
# then core tests (no Qt), integration tests on the real data in ../shared/data (skipped where absent) and GUI
# tests with a real napari viewer under Xvfb.
set -euo pipefail
cd "$(dirname "$0")/.."

# Xvfb and the libraries Qt's xcb platform needs (Debian/Ubuntu package names).
GUI_PACKAGES="xvfb xauth libgl1 libegl1 libgl1-mesa-dri libglx-mesa0 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0
libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xinerama0 libxcb-xfixes0 libxcb-cursor0
libdbus-1-3 libfontconfig1"
missing=$(for p in $GUI_PACKAGES; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"; done)
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing for the GUI tests: $(echo $missing)"
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo apt-get update -qq >/dev/null && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
    else
        echo "missing $(echo $missing): the GUI tests will be skipped (install them with apt-get as root)" >&2
    fi
fi

bash scripts/setup.sh --test
.venv/bin/lint-imports --no-cache
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
# A worker per core, at most 4 (pytest-xdist; a module at a time, tests/conftest.py). Pass -n 0 for one process.
workers=$(nproc 2>/dev/null || echo 1)
[ "$workers" -gt 4 ] && workers=4
exec .venv/bin/python -m pytest -p no:cacheprovider -ra -n "$workers" "$@"
