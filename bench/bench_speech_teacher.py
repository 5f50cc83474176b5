"""Benchmark: the speech teacher on RAVDESS's 5 speaker-independent folds, and labeling speed.

For each fold a teacher is trained on the fold's training speakers only (its
own 80/20 inner split by speaker picks the epoch) and tested on the fold's
test speakers: UAR/WAR on whole utterances and with the 0.5 s pieces'
probabilities averaged per file (how the teacher is used to label). Then the
fold-0 teacher labels part of the unlabeled pool (TESS + URDU) into a fresh
store: audio-seconds labeled per wall-clock second, audio decoding included.
Feature extraction speed (frozen mode) is measured on a fresh cache.

Prints the figures and a markdown row; `--json PATH` writes them.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_speech_teacher.py --threads 1 \\
        --json bench/results/speech_teacher.json                # the full run (frozen Whisper-base)
    .venv/bin/python bench/bench_speech_teacher.py --folds 0 --epochs 5 --pool-seconds 30  # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def simple_folds(speakers: list[str], k: int = 5):
    """Fallback folds: sorted speakers dealt round-robin into k groups; test f, val f+1, train the rest."""
    groups = [sorted(speakers)[i::k] for i in range(k)]
    out = []
    for f in range(k):
        test, val = groups[f], groups[(f + 1) % k]
        train = [s for j, g in enumerate(groups) if j not in (f, (f + 1) % k) for s in g]
        out.append({"train": train, "val": val, "test": test})
    return out


def get_folds(manifest):
    try:
        from liser.data.folds import load_folds

        return [{"train": list(f.train), "val": list(f.val), "test": list(f.test)} for f in load_folds("ravdess")], "liser.data.folds"
    except ImportError:
        return simple_folds(manifest.speakers), "simple round-robin"


def pool_manifest(roots: list[str], seconds: float):
    """The first items of the unlabeled pool corpora, interleaved, up to `seconds` of audio."""
    from dataclasses import replace

    from liser.data.corpora import prepare
    from liser.data.corpora.base import Manifest

    per = []
    for spec in roots:
        name, root = spec.split("=", 1)
        m = prepare(name, root, progress=False)
        per.append((m, list(m.items)))
    # one manifest over several corpus roots: absolute paths under the root "/"
    items, total, k = [], 0.0, 0
    while total < seconds and any(k < len(lst) for _, lst in per):
        for m, lst in per:
            if k < len(lst) and total < seconds:
                it = lst[k]
                abs_path = str(m.abspath(it).resolve()).lstrip("/")
                items.append(replace(it, path=abs_path, label=""))
                total += it.duration
        k += 1
    return Manifest(corpus="pool", root=Path("/"), items=items), total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=str(SHARED / "data" / "ravdess"))
    ap.add_argument("--backbone", default=str(SHARED / "models" / "whisper-base-encoder"))
    ap.add_argument("--mode", default="frozen", choices=("frozen", "lora"))
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--folds", default="all", help="fold indices to run, e.g. 0,1 (default all)")
    ap.add_argument("--train-pieces", action="store_true", help="frozen: also train on the 0.5 s pieces")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--cache-dir", default=None, help="frozen-feature cache (default ~/.cache/liser/speech-features)")
    ap.add_argument("--out", default=None, help="teacher directories (default: a temporary directory)")
    ap.add_argument("--pool", nargs="*", default=[f"tess={SHARED / 'data' / 'tess'}", f"urdu={SHARED / 'data' / 'urdu'}"],
                    help="unlabeled pool corpora as name=root")
    ap.add_argument("--pool-seconds", type=float, default=300.0, help="audio-seconds of the pool to label")
    ap.add_argument("--extract-files", type=int, default=20, help="files timed for feature extraction (fresh cache)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from liser.data.corpora import prepare
    from liser.teachers.speech.teacher import (Backbone, SpeechTeacherConfig, cached_features, evaluate_speech_teacher,
                                       fit_speech_teacher)
    from liser.teachers.speech.label import label_with_speech_teacher

    if not Path(args.root).is_dir():
        sys.exit(f"{args.root}: RAVDESS absent")
    manifest = prepare("ravdess", args.root, progress=False)
    folds, folds_src = get_folds(manifest)
    run = range(len(folds)) if args.folds == "all" else [int(x) for x in args.folds.split(",")]
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench-speech-"))
    cfg = SpeechTeacherConfig(backbone=args.backbone, mode=args.mode, epochs=args.epochs, threads=args.threads,
                              cache_dir=args.cache_dir, train_pieces=args.train_pieces)
    t_all = time.time()

    # feature extraction speed (frozen path: whole file + 0.5 s pieces), fresh cache
    bb = Backbone(args.backbone, cfg.device)
    tmp_cache = Path(tempfile.mkdtemp(prefix="speech-cache-"))
    sample = manifest.items[:: max(1, len(manifest.items) // args.extract_files)][: args.extract_files]
    t0 = time.time()
    for it in sample:
        cached_features(bb, manifest, it, "utt", cfg.piece_s, tmp_cache)
    t_utt = time.time() - t0
    t0 = time.time()
    for it in sample:
        cached_features(bb, manifest, it, "pieces", cfg.piece_s, tmp_cache)
    t_pcs = time.time() - t0
    shutil.rmtree(tmp_cache)
    sample_s = sum(it.duration for it in sample)
    del bb

    per_fold = []
    for f in run:
        fold = folds[f]
        t0 = time.time()
        train_ids = [it.id for it in manifest.by_speakers(fold["train"])]
        test_ids = [it.id for it in manifest.by_speakers(fold["test"])]
        res = fit_speech_teacher(manifest, train_ids, out / f"fold{f}", cfg, progress=False)
        fit_s = time.time() - t0
        ev = evaluate_speech_teacher(res.teacher, manifest, test_ids)
        row = {"fold": f, "uar": round(ev["uar"], 4), "war": round(ev["war"], 4), "uar_pieces": round(ev["uar_pieces"], 4),
               "war_pieces": round(ev["war_pieces"], 4), "val_uar": round(res.val_uar, 4), "best_epoch": res.best_epoch,
               "n_train": len(res.train_ids), "n_val": len(res.val_ids), "n_test": ev["n"],
               "layer_weights": res.teacher.layer_weights(), "fit_s": round(fit_s, 1), "eval_s": round(time.time() - t0 - fit_s, 1)}
        per_fold.append(row)
        print(f"fold {f}: UAR {row['uar']:.4f}  WAR {row['war']:.4f}  UAR(pieces) {row['uar_pieces']:.4f}  "
              f"val UAR {row['val_uar']:.4f} @ epoch {row['best_epoch']}  ({row['fit_s']:.0f} s fit)", flush=True)

    # labeling throughput on the unlabeled pool with the first fold's teacher
    from liser.teachers.speech.teacher import SpeechTeacher

    teacher = SpeechTeacher.load(out / f"fold{run[0]}")
    pool, pool_s = pool_manifest(args.pool, args.pool_seconds)
    store_dir = Path(tempfile.mkdtemp(prefix="speech-store-"))
    _ = teacher.encoder  # load the backbone outside the timed part
    t0 = time.time()
    store = label_with_speech_teacher(teacher, pool, store_dir, progress=False)
    label_s = time.time() - t0
    n_pieces_total = int(store.probs.shape[0]) if store is not None else 0
    shutil.rmtree(store_dir)

    def mean(k):
        return round(float(np.mean([r[k] for r in per_fold])), 4)

    def std(k):
        return round(float(np.std([r[k] for r in per_fold])), 4)

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "backbone": args.backbone, "mode": args.mode, "train_pieces": args.train_pieces, "epochs": args.epochs, "folds_source": folds_src,
        "folds": list(run), "uar_mean": mean("uar"), "uar_std": std("uar"), "war_mean": mean("war"),
        "uar_pieces_mean": mean("uar_pieces"), "uar_pieces_std": std("uar_pieces"), "war_pieces_mean": mean("war_pieces"),
        "val_uar_mean": mean("val_uar"), "per_fold": per_fold,
        "extract_files": len(sample), "extract_utt_audio_s_per_s": round(sample_s / t_utt, 1),
        "extract_pieces_audio_s_per_s": round(sample_s / t_pcs, 1),
        "label_audio_s": round(pool_s, 1), "label_items": len(pool.items), "label_pieces": n_pieces_total,
        "label_wall_s": round(label_s, 1), "label_audio_s_per_s": round(pool_s / label_s, 1),
        "threads": torch.get_num_threads(), "wall_s": round(time.time() - t_all, 1), "peak_rss_mb": round(peak_mb, 1),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}, torch {torch.__version__}",
        "date": date.today().isoformat(), "command": " ".join(["python"] + sys.argv),
    }
    print(json.dumps(result, indent=1))
    print("| date | backbone | mode | folds | UAR (utt) | UAR (0.5 s pieces) | WAR (utt) | label audio-s/s | extract audio-s/s (utt, pieces) | wall |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {result['date']} | {Path(args.backbone).name} | {args.mode}{' +pieces' if args.train_pieces else ''} | {len(per_fold)} "
          f"| {result['uar_mean']:.3f} ± {result['uar_std']:.3f} | {result['uar_pieces_mean']:.3f} ± {result['uar_pieces_std']:.3f} "
          f"| {result['war_mean']:.3f} | {result['label_audio_s_per_s']:.1f} "
          f"| {result['extract_utt_audio_s_per_s']:.1f}, {result['extract_pieces_audio_s_per_s']:.1f} | {result['wall_s'] / 60:.1f} min |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(args.json).with_name(f".{Path(args.json).name}.tmp")
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        os.replace(tmp, args.json)
    if not args.out:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
