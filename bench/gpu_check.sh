#!/usr/bin/env bash
# The GPU check (issue 14): student epochs on CUDA vs CPU, LoRA steps of a HuBERT-base-sized
# encoder, teacher labeling speed; writes bench/results/gpu.json (or $OUT/gpu.json when $OUT is set).
# Needs a CUDA torch with transformers and peft; soundfile/soxr/cffi may come as wheels in .whl/.
# Data: a RAVDESS-layout folder with Actor_01..Actor_06 (DATA, default .gpu/ravdess or
# ../shared/data/ravdess) and optionally the Whisper-base encoder (WHISPER). About 4 minutes on an H200.
#
#   bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/src:${PYTHONPATH:-}
PY=${PYTHON:-python3}
DATA=${DATA:-$( [ -d .gpu/ravdess ] && echo .gpu/ravdess || echo ../shared/data/ravdess )}
WHISPER=${WHISPER:-$( [ -d .gpu/whisper-base-encoder ] && echo .gpu/whisper-base-encoder || echo ../shared/models/whisper-base-encoder )}
JSON=${OUT:+$OUT/gpu.json}
JSON=${JSON:-bench/results/gpu.json}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
PYTHONUNBUFFERED=1 timeout 480 "$PY" bench/bench_gpu.py --data "$DATA" --whisper "$WHISPER" --json "$JSON"
