#!/usr/bin/env bash
# The distilled default model's runs (configs/default-model-distill.yaml), one process at a time on one
# thread, from the repository root. Not yet run on the full corpora.
#   teachers: the five leave-one-corpus-out speech teachers (each fitted on the four training corpora,
#             work/teachers/pool-cremad+emodb+ravdess+tess+urdu-6cls-loco/speech-fold0..4) and the pooled
#             one (...-6cls-pooled/speech-fold0), then the AV pool labeled by each (store-av-fold<k> beside it)
#   students: the five LOCO students (runs/default-model-distill-loco/fold0..4), then the pooled one
#             (runs/default-model-distill-pooled/fold0)
#   all:      teachers, then students (the default)
# Resumable: a fitted teacher, a complete store and a finished run are skipped; an interrupted run goes on
# from its last.pt. A teacher folder fitted on other items or classes is refused, never reused.
# Then: python bench/bench_default_model.py --teachers configs/default-model-distill.yaml
set -euo pipefail
if [[ -x .venv/bin/liser ]]; then PATH="$PWD/.venv/bin:$PATH"; fi   # the project venv (scripts/setup.sh), when the shell has none active
export OMP_NUM_THREADS=1
# the frozen encoder's features are cached per file (keyed by its bytes): every fold's teacher reuses them, and
# work/lc is where the RAVDESS teachers cached theirs (README headline commands): RAVDESS and the AV pool, as far as they got
export LISER_CACHE="${LISER_CACHE:-work/lc}"
CFG=configs/default-model-distill.yaml
POOLED=(folds=pooled name=default-model-distill-pooled)
what="${1:-all}"
case "$what" in teachers|students|all) ;; *) echo "usage: $0 [teachers|students|all]" >&2; exit 2 ;; esac

if [[ "$what" == teachers || "$what" == all ]]; then
  liser teacher label speech "$CFG"                       # fits the 5 LOCO teachers first, then labels the pool
  liser teacher label speech "$CFG" --set "${POOLED[@]}"  # the pooled teacher and its store
fi
if [[ "$what" == students || "$what" == all ]]; then
  for k in 0 1 2 3 4; do
    liser train "$CFG" --set threads=1 --fold "$k"
  done
  liser train "$CFG" --set threads=1 "${POOLED[@]}"
fi
