#!/usr/bin/env bash
# Set up napari-pgps in ./.venv on a fresh Debian/Ubuntu machine with Python 3.10+ and pip.
#   bash scripts/setup.sh          the package, its command line and napari with PyQt6
#   bash scripts/setup.sh --test   the same plus the test tools
# With an NVIDIA GPU (nvidia-smi answers) torch comes from PyPI with CUDA; without one,
# the CPU build of torch is installed (a few hundred MB instead of several GB).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "napari-pgps needs Python 3.10 or newer" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check "$@"; }

TORCH_VERSION=2.13.0
if .venv/bin/python -c 'import torch' 2>/dev/null; then
    echo "torch $(.venv/bin/python -c 'import torch; print(torch.__version__)') already installed"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    pip install -q "torch==$TORCH_VERSION"
else
    # The CPU build: from a local wheel mirror where one is configured, else from PyTorch's CPU index.
    pip install -q "torch==$TORCH_VERSION+cpu" 2>/dev/null \
        || pip install -q "torch==$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cpu
fi

extras="qt"
[ "${1:-}" = "--test" ] && extras="qt,test"
pip install -q -e ".[$extras]"
echo "napari-pgps is installed in $(pwd)/.venv (run .venv/bin/napari-pgps --help)"
