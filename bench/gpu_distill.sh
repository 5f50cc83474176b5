#!/usr/bin/env bash
# Issue 24 section 4, on one GPU: the paper's speech teacher (HuBERT-base with LoRA, configs/teacher-speech-hubert-lora.yaml),
# one per held-out corpus, and the unseen-domain and adapted tables with it (configs/grid-distill-protocols-lora.yaml:
# the no-distillation baseline and both distilled rows, students on the same GPU), written to
# $OUT/distill_protocols_lora.json (OUT defaults to bench/results). Never in CI.
#   1. the five leave-one-corpus-out teachers (fitted on the GPU), and the AV pool labeled by each
#   2. the same teachers label the pool plus each fold's unlabeled half of its held-out corpus
#   3. the grid's 15 students; 4. bench/bench_distill_protocols.py --protocols-only on that grid
# Needs a CUDA torch with transformers and peft, facebook/hubert-base-ls960 from the hub (offline: TEACHER=a copy of
# the teacher config whose backbone is a local folder), and ../shared/data (the five labeled corpora, av/ as the pool).
# Resumable: a fitted teacher, a complete store and a finished run are skipped. Not yet run: no GPU has been lent
# to this project's sessions since bench/results/gpu.json (2026-11-30), and the weights cannot reach its device.
# From that JSON's LoRA step (8 crops of 8 s in 0.049 s on an H200), one teacher epoch over a fold's 2-7.7 h of
# speech is 10-25 s of steps; expect well under an hour in all on one H100 or H200.
#   bash bench/gpu_distill.sh [KEY=VALUE ...]    # KEY=VALUE: config overrides for every step (tests: tiny data)
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -x .venv/bin/liser ]]; then PATH="$PWD/.venv/bin:$PATH"; fi
PY=${PYTHON:-$(command -v python3)}
[[ -x .venv/bin/python ]] && PY=${PYTHON:-.venv/bin/python}
GRID=${GRID:-configs/grid-distill-protocols-lora.yaml}
CFG=${CFG:-configs/default-model-distill.yaml}
TEACHER=${TEACHER:-configs/teacher-speech-hubert-lora.yaml}
JSON=${OUT:-bench/results}/distill_protocols_lora.json
SET=("speech_teacher=$TEACHER" "work=${WORK:-work-lora}" "$@")
liser teacher label speech "$CFG" --set "${SET[@]}"
liser teacher label speech "$CFG" --set "${SET[@]}" folds=loco-adapt 'speech_store={teachers}/store-adapt-fold{fold}'
liser experiment "$GRID" --set "${SET[@]}"
BASELINE=$("$PY" -c "import sys; sys.path.insert(0, 'src')
from liser.experiments.grid import expand_grid, load_grid
g = load_grid('$GRID'); c = next(r['cfg'] for r in expand_grid(g, 5) if r['config'] == 'no-dstl'); print(c.out + '/' + c.name)")
"$PY" bench/bench_distill_protocols.py --grid "$GRID" --baseline "$BASELINE" --protocols-only --json "$JSON"
