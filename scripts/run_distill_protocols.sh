#!/usr/bin/env bash
# Issue 24's two protocols for the default model (configs/grid-distill-protocols.yaml), from the repository
# root, one thread a process. Resumable: a fitted teacher, a complete store and a finished run are skipped.
#   1. the five leave-one-corpus-out speech teachers, and the AV pool labeled by each (store-av-fold<k>)
#   2. the same teachers label the pool plus each fold's unlabeled half of its held-out corpus (store-adapt-fold<k>)
#   3. the same teachers label 4 waveform views of each pool item too (teach_views; the views' settings are the
#      grid's: seed 0, the interviews' noise), for the *-views4 rows
#   4. the students of every row, 2 at a time
# Then: python bench/bench_default_model.py ... (the tables; see docs/results/distillation.md when written)
set -euo pipefail
if [[ -x .venv/bin/liser ]]; then PATH="$PWD/.venv/bin:$PATH"; fi
export OMP_NUM_THREADS=1
export LISER_CACHE="${LISER_CACHE:-work/lc}"   # the frozen encoder's features, per file: every fold reuses them
CFG=configs/default-model-distill.yaml
liser teacher label speech "$CFG" --set threads="${THREADS:-1}"
liser teacher label speech "$CFG" --set threads="${THREADS:-1}" folds=loco-adapt 'speech_store={teachers}/store-adapt-fold{fold}'
VIEWS=(teach_views=4 aug_noise_dir=../shared/data/av/interviews)
liser teacher label speech "$CFG" --set threads="${THREADS:-1}" "${VIEWS[@]}" 'speech_store={teachers}/store-av-views4-fold{fold}'
liser teacher label speech "$CFG" --set threads="${THREADS:-1}" "${VIEWS[@]}" folds=loco-adapt \
  'speech_store={teachers}/store-adapt-views4-fold{fold}'
liser teacher label speech "$CFG" --set threads="${THREADS:-1}" teach_views=8 aug_noise_dir=../shared/data/av/interviews \
  'speech_store={teachers}/store-av-views8-fold{fold}'   # K by measurement: views 1-4 are the 4-view stores' own
liser experiment configs/grid-distill-protocols.yaml --set threads=1
