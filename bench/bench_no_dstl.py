"""Benchmark: the 5-fold RAVDESS no-dstl run (issue: the labeled path).

Prints, and writes as JSON (default bench/results/ravdess_no_dstl.json):
mean/std test UAR and WAR over the folds, the parameter count, wall time and
peak memory of the whole run, training samples/s, log-Mel extraction speed
(audio-hours per minute) and the achieved GFLOP/s against the student's
FLOPs per sample.

    .venv/bin/python bench/bench_no_dstl.py --jobs 2            # the full protocol
    .venv/bin/python bench/bench_no_dstl.py --epochs 2 --out /tmp/b  # a smoke run
"""

from __future__ import annotations

import argparse
import csv
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

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=str(REPO.parent / "shared" / "data" / "ravdess"))
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--jobs", type=int, default=2, help="folds in parallel (1 thread each when > 1)")
    ap.add_argument("--out", default=str(REPO / "runs" / "bench"), help="runs directory (a fresh one is best)")
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "ravdess_no_dstl.json"))
    args = ap.parse_args()

    from liser.config import Config
    from liser.corpora import prepare
    from liser.experiment import run_folds
    from liser.features import build_features
    from liser.student import Student, count_parameters, flops_per_sample

    # log-Mel extraction speed, on a fresh cache
    manifest = prepare("ravdess", args.root, progress=False)
    tmp = Path(tempfile.mkdtemp())
    t0 = time.time()
    build_features(manifest, tmp, threads=os.cpu_count() or 1, progress=False)
    feat_s = time.time() - t0
    shutil.rmtree(tmp)
    hours = sum(it.duration for it in manifest.items) / 3600
    audio_h_per_min = hours / (feat_s / 60)

    cfg = Config.load(REPO / "configs" / "no-dstl.yaml", [f"root={args.root}", f"epochs={args.epochs}",
                                                          f"out={args.out}", f"work={args.out}/work",
                                                          f"threads={1 if args.jobs > 1 else 0}"])
    t0 = time.time()
    summary = run_folds(cfg, jobs=args.jobs, progress=False)
    wall = time.time() - t0
    peak_mb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024

    sps, train_s = [], 0.0
    for run in summary["runs"]:
        with open(Path(run) / "epochs.csv") as f:
            for row in csv.DictReader(f):
                sps.append(float(row["samples_per_s"]))
                train_s += float(row["train_s"])
    per_process = sum(sps) / len(sps)
    aggregate = per_process * min(args.jobs, len(summary["runs"]))
    flops = flops_per_sample(8, 7)
    gflops = aggregate * 3 * flops / 1e9  # forward + backward ~ 3x forward
    result = {
        "uar_mean": summary["uar_mean"], "uar_std": summary["uar_std"],
        "war_mean": summary["war_mean"], "war_std": summary["war_std"],
        "folds": summary["folds"], "uar_per_fold": summary["uar"], "war_per_fold": summary["war"],
        "params": count_parameters(Student(8, 7)), "epochs": args.epochs, "jobs": args.jobs,
        "wall_s": round(wall, 1), "peak_rss_mb": round(peak_mb, 1),
        "train_samples_per_s": round(aggregate, 1), "train_samples_per_s_per_process": round(per_process, 1),
        "forward_mflop_per_sample": round(flops / 1e6, 1), "train_gflop_per_s": round(gflops, 1),
        "logmel_audio_h_per_min": round(audio_h_per_min, 2), "logmel_s": round(feat_s, 1),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}",
        "date": date.today().isoformat(), "command": " ".join(["python"] + sys.argv),
    }
    print(json.dumps(result, indent=1))
    print("| date | machine | folds | UAR | WAR | params | wall | peak RSS | train samples/s | GFLOP/s | log-Mel audio-h/min |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {result['date']} | {result['machine']} | {result['folds']} | {result['uar_mean']:.3f} ± {result['uar_std']:.3f} "
          f"| {result['war_mean']:.3f} ± {result['war_std']:.3f} | {result['params']} | {wall / 60:.1f} min "
          f"| {peak_mb:.0f} MB | {aggregate:.0f} | {gflops:.1f} | {audio_h_per_min:.1f} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
