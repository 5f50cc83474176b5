"""Benchmark: speech-teacher heads on RAVDESS's 5 folds, chosen on validation, reported on test.

For every head setting (``--grid``) and fold, a frozen-Whisper teacher is
trained on the fold's training speakers (its own 80/20 inner split by speaker
picks the epoch) and scored on:

- the inner validation split (what picks the setting: never the test set),
- the fold's test speakers: UAR on whole files, and UAR of the 0.5 s piece
  probabilities averaged per file (what the student is taught from),
- the fold's validation speakers: ECE of the piece-averaged probabilities
  before and after a temperature fitted there.

The setting with the best mean inner-validation score is reported as chosen.
Writes the table and the chosen setting to ``--json``.

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_teacher_heads.py \\
        --json bench/results/teacher_heads.json       # ~10 min on 2 cores once the feature cache is warm
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# Each setting overrides SpeechTeacherConfig fields; "whole" pieces are the contextual ones.
GRID = {
    "isolated-weighted": {"piece_context": "isolated"},
    "whole-weighted": {},
    "whole-weighted-drop0.5": {"in_dropout": 0.5, "dropout": 0.5},
    "whole-concat": {"head": "concat"},
    "whole-concat-l3-6": {"head": "concat", "layers": (3, 4, 5, 6)},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(SHARED / "data" / "ravdess"))
    ap.add_argument("--backbone", default=str(SHARED / "models" / "whisper-base-encoder"))
    ap.add_argument("--cache", default=None, help="feature cache (default: $LISER_CACHE)")
    ap.add_argument("--grid", nargs="*", default=list(GRID), help=f"settings to try (known: {', '.join(GRID)})")
    ap.add_argument("--folds", type=int, nargs="*", default=[0, 1, 2, 3, 4])
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch

    from liser.calibration import ece, fit_temperature, temper
    from liser.corpora import prepare
    from liser.folds import load_folds
    from liser.teachers.speech import SpeechTeacherConfig, evaluate_speech_teacher, fit_speech_teacher

    torch.set_num_threads(max(1, torch.get_num_threads()))
    manifest = prepare("ravdess", args.root, progress=False)
    folds = load_folds("ravdess")
    base = SpeechTeacherConfig(backbone=args.backbone, mode="frozen", epochs=args.epochs, train_pieces=True,
                               cache_dir=args.cache)
    rows, t_start = {}, time.time()
    for name in args.grid:
        cfg = replace(base, **GRID[name])
        per = []
        for k in args.folds:
            f = folds[k]
            ids = lambda spk: [it.id for it in manifest.items if it.speaker in set(spk)]  # noqa: E731
            with tempfile.TemporaryDirectory() as tmp:
                res = fit_speech_teacher(manifest, ids(f.train), tmp, cfg)
                te = evaluate_speech_teacher(res.teacher, manifest, ids(f.test))
                va = evaluate_speech_teacher(res.teacher, manifest, ids(f.val))
            y = np.array([manifest.classes.index(it.label) for it in manifest.items if it.id in set(ids(f.val))])
            probs = np.array([va["per_item_probs_pieces"][i] for i in ids(f.val)])
            t = fit_temperature(probs, y)
            per.append({"fold": k, "inner_val": res.val_uar, "test_uar": te["uar"], "test_uar_pieces": te["uar_pieces"],
                        "val_ece": ece(probs, y), "val_ece_tempered": ece(temper(probs, t), y), "temperature": t})
            print(f"{name} fold{k}: inner val {res.val_uar:.3f}  test {te['uar']:.3f}  pieces {te['uar_pieces']:.3f}  "
                  f"ECE {per[-1]['val_ece']:.3f} -> {per[-1]['val_ece_tempered']:.3f}", flush=True)
        mean = {key: float(np.mean([p[key] for p in per])) for key in per[0] if key != "fold"}
        rows[name] = {"settings": {k: list(v) if isinstance(v, tuple) else v for k, v in GRID[name].items()},
                      **{f"{k}_mean": round(v, 4) for k, v in mean.items()}, "per_fold": per}
        print(f"== {name}: inner val {mean['inner_val']:.3f}  test {mean['test_uar']:.3f}  "
              f"pieces {mean['test_uar_pieces']:.3f}", flush=True)
    chosen = max(rows, key=lambda n: rows[n]["inner_val_mean"])
    out = {"date": str(date.today()), "machine": f"{platform.machine()} {len(__import__('os').sched_getaffinity(0))} cores",
           "command": "OMP_NUM_THREADS=2 .venv/bin/python bench/bench_teacher_heads.py --json bench/results/teacher_heads.json",
           "backbone": Path(args.backbone).name, "folds": args.folds, "chosen_on_inner_validation": chosen,
           "wall_s": round(time.time() - t_start, 1), "settings": rows}
    print(f"chosen on inner validation: {chosen}: test {rows[chosen]['test_uar_mean']:.3f}, "
          f"pieces {rows[chosen]['test_uar_pieces_mean']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
