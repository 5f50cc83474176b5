#!/usr/bin/env bash
# The default model's runs (issue 12), one process at a time on one thread, from the repository root:
# the five leave-one-corpus-out folds (runs/default-model-loco/fold0..4), then the shipped model
# (runs/default-model-pooled/fold0: validation and test speakers drawn per corpus).
# Resumable: a finished run is skipped, an interrupted one goes on from its last.pt.
# Then: python bench/bench_default_model.py  (LOCO table)  and the export in the model card.
set -euo pipefail
if [[ -x .venv/bin/liser ]]; then PATH="$PWD/.venv/bin:$PATH"; fi   # the project venv (scripts/setup.sh), when the shell has none active
export OMP_NUM_THREADS=1
for k in 0 1 2 3 4; do
  liser train configs/default-model.yaml --set threads=1 --fold "$k"
done
liser train configs/default-model.yaml --set threads=1 folds=pooled name=default-model-pooled
