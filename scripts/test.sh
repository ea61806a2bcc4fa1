#!/usr/bin/env bash
# Set up everything the tests need and run them: core tests (no Qt) and
# integration tests on the real data in ../shared/data (skipped where absent).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
exec .venv/bin/python -m pytest -p no:cacheprovider -ra "$@"
