"""`liser adapt` measured with the adapted protocol: a corpus the student never heard, half of it unlabeled.

    scripts/run_distill_protocols.sh      # (its first step) fits the five leave-one-corpus-out speech teachers
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_adapt.py [--folds 0 1 2 3 4] [--epochs 8]
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_adapt.py --batchnorm --start RUNS/fold{fold}   # no teacher

For fold k (the k-th corpus of configs/default-model-distill.yaml held out):
the start is the field recipe's leave-one-corpus-out student without
distillation (runs/grid-default-model-consistency/speech-views-cons1/default/fold<k>,
restored from its ledger on a fresh clone), the teacher is fold k's speech
teacher (fitted on the other four corpora), and the folder is the held-out
corpus's first half of speakers (folds: loco-adapt), given to `liser adapt`
as a folder of files without labels. Scored on the other half's files
(their labels, used here only), each model through `liser.load` with the
same windows: the start, the adapted int8 student, and the teacher itself.

The issue's bar (its adapted protocol): the adapted student better than the
start on every corpus, and at least half of the way from the start to the
teacher. Writes bench/results/adapt.json (or --json) and prints the table.

With --batchnorm, `liser adapt` runs without a teacher (the start's
BatchNorm statistics re-estimated on the unlabeled half: AdaBN), and the
table is the start and the adapted student, UAR and the largest share of
answers one class takes, in bench/results/adapt_batchnorm.json. With
--whole the folder is every file of the held-out corpus and the test the
files `liser adapt` held out of it (never read): what a user gets who
adapts to the recordings they will label (bench/results/adapt_batchnorm_whole.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from bench_distill_protocols import teacher_uar  # noqa: E402  (bench/ is on sys.path when this runs as a script)
from liser.core.errors import LiserError  # noqa: E402

CONFIG = ROOT / "configs" / "default-model-distill.yaml"
START = "runs/grid-default-model-consistency/speech-views-cons1/default/fold{fold}"
OUT = ROOT / "bench" / "results" / "adapt.json"
OUT_BATCHNORM = ROOT / "bench" / "results" / "adapt_batchnorm.json"
OUT_WHOLE = ROOT / "bench" / "results" / "adapt_batchnorm_whole.json"


def fold_material(cfg, fold: int):
    """(adapt manifest: the unlabeled half, test items: the other half with labels, classes, held-out corpus)."""
    from liser.data.workspace import adapt_manifest, fold_items, labeled_corpora, labeled_manifest

    fcfg = cfg.replace(folds="loco-adapt", fold=fold)
    manifest = labeled_manifest(fcfg)
    _, _, test, classes = fold_items(fcfg, manifest)
    return adapt_manifest(fcfg, fold, manifest), test, classes, labeled_corpora(fcfg)[fold], manifest


def link_folder(manifest, folder: Path) -> Path:
    """A folder of links to the manifest's files, one per item (its id as the name): what a user would hand over."""
    folder.mkdir(parents=True, exist_ok=True)
    for it in manifest.items:
        dst = folder / (it.id.replace("/", "__") + Path(it.path).suffix)
        if not dst.exists():
            dst.symlink_to(Path(it.path).resolve())
    return folder


def student_scores(model_path: str, manifest, items, classes: list[str]) -> tuple[float, float]:
    """(UAR, the largest share of the answers one class takes) of a student (run folder, .pt or .onnx) on
    `items`, each file scored whole (no-speech files too)."""
    import liser
    from liser.core.metrics import uar
    from liser.inference.decode import file_frames

    m = liser.load(model_path, threads=1)
    pred = np.array([int(np.argmax(m.file_logits(file_frames(manifest.abspath(it))[0], strict=False))) for it in items])
    share = np.bincount(pred, minlength=len(classes)).max() / len(pred)
    return uar(np.array([classes.index(it.label) for it in items]), pred, len(classes)), float(share)


def student_uar(model_path: str, manifest, items, classes: list[str]) -> float:
    """UAR of a student on `items` (student_scores)."""
    return student_scores(model_path, manifest, items, classes)[0]


def one_fold(cfg, fold: int, work: Path, start: str, options) -> dict:
    """One held-out corpus adapted with `options` (liser.student.adapt.AdaptOptions) and scored."""
    from liser.data.workspace import teacher_dir
    from liser.inference.adapt import adapt

    pool, test, classes, corpus, manifest = fold_material(cfg, fold)
    folder = link_folder(pool, work / f"fold{fold}" / "recordings")
    t0 = time.time()
    rep = adapt(folder, work / f"fold{fold}" / "out", teacher_dir(cfg, fold), model=start.format(fold=fold),
                options=options, threads=1, progress=False, say=lambda m: None)
    row = {"fold": fold, "corpus": corpus, "adapt_files": rep["files"], "test_files": len(test),
           "adapt_s": round(time.time() - t0),
           "start": round(student_uar(start.format(fold=fold), manifest, test, classes), 4),
           "adapted": round(student_uar(str(work / f"fold{fold}" / "out" / "liser-adapted-int8.onnx"), manifest,
                                        test, classes), 4),
           "teacher": round(teacher_uar(cfg, fold, [it.id for it in test]), 4),
           "agreement_check_before_after": [rep["agreement_before"], rep["agreement_after"]],
           "kept_epoch": rep["kept_epoch"]}
    row["gain_points"] = round(100 * (row["adapted"] - row["start"]), 2)
    row["share_of_gap"] = round((row["adapted"] - row["start"]) / (row["teacher"] - row["start"]), 3) \
        if row["teacher"] > row["start"] else None
    print(f"{corpus}: start {row['start']:.3f} -> adapted {row['adapted']:.3f} (teacher {row['teacher']:.3f}) "
          f"on {len(test)} files", flush=True)
    return row


def whole_corpus(cfg, fold: int):
    """(the held-out corpus as one unlabeled manifest, its items with labels, classes, corpus, manifest): the
    folder a user hands over is every recording of the corpus (folds: loco, fold `fold`)."""
    from liser.data.corpora import Manifest, merge_manifests
    from liser.data.workspace import fold_items, labeled_corpora, labeled_manifest

    fcfg = cfg.replace(folds="loco", fold=fold)
    manifest = labeled_manifest(fcfg)
    _, _, test, classes = fold_items(fcfg, manifest)
    blank = [type(it)(**{**it.__dict__, "label": ""}) for it in test]
    pool = merge_manifests([Manifest(manifest.corpus, manifest.root, blank)], name=f"whole-fold{fold}")
    return pool, test, classes, labeled_corpora(fcfg)[fold], manifest


def held_out_items(out: Path, items: list) -> list:
    """The labeled `items` that `liser adapt` held out of its folder (its manifest's ids, split_ids; the folder's
    files are link_folder's, named by item id)."""
    from liser.data.corpora import Manifest
    from liser.inference.adapt import split_ids

    scanned = Manifest.load(out / "work" / "manifest")
    _, check = split_ids([it.id for it in scanned.items])
    by_id = {it.id: it for it in items}
    return [by_id[Path(i).name.replace("__", "/")] for i in check]


def one_fold_batchnorm(cfg, fold: int, work: Path, start: str, whole: bool = False) -> dict:
    """One held-out corpus adapted without a teacher (`liser adapt` without --teacher: BatchNorm statistics of the
    folder) and scored: UAR and the largest class share, start and adapted. The folder is the unlabeled half of
    the corpus's speakers and the test the other half (the adapted protocol), or with `whole` every file of the
    corpus and the test the files `liser adapt` held out (never read): a user adapting to the recordings to label."""
    from liser.inference.adapt import adapt

    pool, test, classes, corpus, manifest = whole_corpus(cfg, fold) if whole else fold_material(cfg, fold)
    name = "whole" if whole else "half"
    folder = link_folder(pool, work / f"fold{fold}" / f"recordings-{name}")
    out = work / f"fold{fold}" / f"out-batchnorm-{name}"
    t0 = time.time()
    rep = adapt(folder, out, None, model=start.format(fold=fold), threads=1, progress=False, say=lambda m: None)
    adapt_s = round(time.time() - t0)
    test = held_out_items(out, test) if whole else test
    s_uar, s_share = student_scores(start.format(fold=fold), manifest, test, classes)
    a_uar, a_share = student_scores(str(out / "liser-adapted-int8.onnx"), manifest, test, classes)
    row = {"fold": fold, "corpus": corpus, "adapt_files": rep["adapt_files"], "test_files": len(test),
           "adapt_s": adapt_s, "start": round(s_uar, 4), "adapted": round(a_uar, 4),
           "gain_points": round(100 * (a_uar - s_uar), 2),
           "largest_share_start": round(s_share, 3), "largest_share_adapted": round(a_share, 3)}
    print(f"{corpus}: start {s_uar:.3f} -> BatchNorm-adapted {a_uar:.3f} on {len(test)} files "
          f"(largest class share {s_share:.2f} -> {a_share:.2f})", flush=True)
    return row


def main(argv=None) -> int:
    from liser.core.atomic import atomic_write_text
    from liser.core.config import Config

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--epochs", type=int, default=8, help="liser adapt --epochs (default 8, its default)")
    ap.add_argument("--start", default=START, help="the start student per fold ({fold} filled in)")
    ap.add_argument("--work", default="work/bench-adapt", help="where the folders and adapted students go")
    ap.add_argument("--context-s", type=float, default=0.0, help="AdaptOptions.context_s (default 0)")
    ap.add_argument("--speech-crops", action="store_true", help="AdaptOptions.speech_crops")
    ap.add_argument("--batchnorm", action="store_true",
                    help="liser adapt without a teacher: the start's BatchNorm statistics re-estimated on the folder")
    ap.add_argument("--whole", action="store_true",
                    help="with --batchnorm: the folder is every file of the held-out corpus, scored on the files "
                         "liser adapt held out (a user labeling the recordings it adapted to)")
    ap.add_argument("--json", default=None, help=f"default {OUT.relative_to(ROOT)}, with --batchnorm "
                                                 f"{OUT_BATCHNORM.relative_to(ROOT)}, with --whole too "
                                                 f"{OUT_WHOLE.relative_to(ROOT)}")
    args = ap.parse_args(argv)
    if args.whole and not args.batchnorm:
        ap.error("--whole is a --batchnorm protocol (the teacher runs use the two halves)")
    from liser.student.adapt import AdaptOptions

    cfg = Config.load(CONFIG)
    options = AdaptOptions(epochs=args.epochs, context_s=args.context_s, speech_crops=args.speech_crops)
    if args.batchnorm:
        rows = [one_fold_batchnorm(cfg, k, Path(args.work), args.start, args.whole) for k in args.folds]
    else:
        rows = [one_fold(cfg, k, Path(args.work), args.start, options) for k in args.folds]
    args.json = args.json or str(OUT_WHOLE if args.whole else OUT_BATCHNORM if args.batchnorm else OUT)
    keys = ("start", "adapted") + (("largest_share_start", "largest_share_adapted") if args.batchnorm else ("teacher",))
    out = {"what": __doc__.split("\n")[0], "command": "python bench/bench_adapt.py " + " ".join(argv or sys.argv[1:]),
           "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
           "load_average": [round(x, 2) for x in os.getloadavg()], "config": str(CONFIG.relative_to(ROOT)),
           "start": args.start, "method": "batchnorm" if args.batchnorm else "distillation",
           "protocol": "whole corpus, held-out files" if args.whole else "adapted: two halves of the speakers",
           "options": {} if args.batchnorm else dict(options.__dict__), "folds": rows,
           "mean": {k: round(float(np.mean([r[k] for r in rows])), 4) for k in keys},
           "better_on": sum(r["adapted"] > r["start"] for r in rows)}
    print(f"mean: start {out['mean']['start']:.3f} -> adapted {out['mean']['adapted']:.3f}"
          + ("" if args.batchnorm else f" (teacher {out['mean']['teacher']:.3f})")
          + f"; better on {out['better_on']} of {len(rows)}")
    atomic_write_text(args.json, json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except LiserError as e:
        print(f"liser: {e}", file=sys.stderr)
        sys.exit(2)
