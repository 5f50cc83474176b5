#!/usr/bin/env bash
# Set up liser in ./.venv: torch first (exactly 2.13.0, the CPU wheel this machine
# keeps on disk; an unpinned torch would pull a multi-GB CUDA build), then the rest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check "torch==2.13.0"
.venv/bin/pip install -q --disable-pip-version-check -e ".[dev]"
