#!/usr/bin/env bash
# Set up liser in ./.venv for development: torch first (exactly 2.13.0, the CPU wheel this
# machine keeps on disk; the `train` extra's torch>=2.6 alone would let pip pull a multi-GB
# CUDA build), then liser editable with every extra (docs/install.md): train, serve, ray, dev.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check "torch==2.13.0"
.venv/bin/pip install -q --disable-pip-version-check -e ".[train,serve,ray,dev]"
