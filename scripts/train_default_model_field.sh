#!/usr/bin/env bash
# The field default model (issue 23), from the repository root: the five leave-one-corpus-out folds
# (runs/default-model-field-steps-loco/fold0..4, JOBS at a time, default 2: the two cores), then the shipped model
# (runs/default-model-field-steps-pooled/fold0: RAVDESS, CREMA-D, EmoDB and URDU pooled, validation and test speakers
# drawn per corpus; TESS is not trained on). One thread a run. Resumable: a finished run is skipped, an
# interrupted one goes on from its last.pt. Then bench/bench_default_model.py and bench/bench_robustness.py.
# `loco-phone` and `pooled-phone` do the same for the phone-call model (configs/default-model-phone.yaml).
set -euo pipefail
if [[ -x .venv/bin/liser ]]; then PATH="$PWD/.venv/bin:$PATH"; fi
export OMP_NUM_THREADS=1
CFG=configs/default-model-field.yaml
case "${1:-all}" in
  loco|all) liser cv "$CFG" --jobs "${JOBS:-2}" --set threads=1 ;;&
  pooled|all) liser train "$CFG" --set threads=1 folds=pooled name=default-model-field-steps-pooled \
      "labeled=[ravdess:../shared/data/ravdess, cremad:../shared/data/cremad, emodb:../shared/data/emodb, urdu:../shared/data/urdu]" ;;
  loco-phone) liser cv configs/default-model-phone.yaml --jobs "${JOBS:-2}" --set threads=1 ;;
  pooled-phone) liser train configs/default-model-phone.yaml --set threads=1 folds=pooled name=default-model-phone-pooled \
      "labeled=[ravdess:../shared/data/ravdess, cremad:../shared/data/cremad, emodb:../shared/data/emodb, urdu:../shared/data/urdu]" ;;
esac
