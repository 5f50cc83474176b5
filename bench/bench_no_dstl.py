"""Benchmark: the 5-fold RAVDESS no-dstl run (issue: the labeled path).

Prints, and writes as JSON (default bench/results/ravdess_no_dstl.json):
mean/std test UAR and WAR over the folds, the parameter count, wall time and
peak memory of the whole run, training samples/s, log-Mel extraction speed
(audio-hours per minute) and the achieved GFLOP/s against the student's
FLOPs per sample.

    .venv/bin/python bench/bench_no_dstl.py --jobs 2            # the full protocol
    .venv/bin/python bench/bench_no_dstl.py --epochs 2 --out /tmp/b  # a smoke run

With --scale-json (issue 14: bench/results/scale.json), the run's figures
against the lean-training targets are merged into that file, every other key
kept: `no_dstl_5fold_wall_s` (`no_dstl_5fold_wall_s_bf16` with --precision
bf16), `sys_over_user` (kernel over user CPU of the whole run, its worker
processes included), and `train_gflops_over_peak` (one process's training
GFLOP/s over a 1024^2 float32 matmul's on one thread, measured just before
the run by bench_train_speed.py's probe).
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
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="the students' training precision")
    ap.add_argument("--scale-json", help="also merge the lean-training figures into this file (bench/results/scale.json)")
    ap.add_argument("--load-note", default="", help="what else ran on the machine (goes into the JSON)")
    args = ap.parse_args()
    peak = matmul_peak() if args.scale_json else None

    from liser.core.config import Config
    from liser.data.corpora import prepare
    from liser.experiments.grid import run_folds
    from liser.data.features import build_features
    from liser.student.model import Student, count_parameters, flops_per_sample

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
                                                          f"threads={1 if args.jobs > 1 else 0}",
                                                          f"precision={args.precision}"])
    load_start = os.getloadavg()
    before = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    t0 = time.time()
    summary = run_folds(cfg, jobs=args.jobs, progress=False)
    wall = time.time() - t0
    peak_mb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    after = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    user = sum(a.ru_utime - b.ru_utime for a, b in zip(after, before))  # the 5-fold run only, its workers included
    sys_s = sum(a.ru_stime - b.ru_stime for a, b in zip(after, before))

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
        "precision": args.precision, "user_s": round(user, 1), "sys_s": round(sys_s, 1),
        "sys_over_user": round(sys_s / user, 3),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}",
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()], "load_note": args.load_note,
        "date": date.today().isoformat(), "command": " ".join(["python"] + sys.argv),
    }
    if peak:
        result["matmul_peak_gflops_1_thread"] = peak
        result["train_gflops_over_peak"] = round(per_process * 3 * flops / 1e9 / peak, 3)
    print(json.dumps(result, indent=1))
    print("| date | machine | folds | UAR | WAR | params | wall | peak RSS | train samples/s | GFLOP/s | log-Mel audio-h/min |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {result['date']} | {result['machine']} | {result['folds']} | {result['uar_mean']:.3f} ± {result['uar_std']:.3f} "
          f"| {result['war_mean']:.3f} ± {result['war_std']:.3f} | {result['params']} | {wall / 60:.1f} min "
          f"| {peak_mb:.0f} MB | {aggregate:.0f} | {gflops:.1f} | {audio_h_per_min:.1f} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if args.scale_json:
        merge_scale(Path(args.scale_json), result, args)


def matmul_peak() -> float:
    """Best GFLOP/s of a 1024^2 float32 matmul on one thread, by bench_train_speed.py's probe (a child process)."""
    sys.path.insert(0, str(REPO / "bench"))
    import bench_train_speed

    return bench_train_speed.matmul_peak(REPO / "src", argparse.Namespace(matmul_reps=15))["best"]


def merge_scale(path: Path, result: dict, args) -> None:
    """Merge this run's lean-training figures into scale.json (every other key kept; temporary name, then rename)."""
    old = json.loads(path.read_text()) if path.is_file() else {}
    tag = "" if args.precision == "fp32" else f"_{args.precision}"
    old[f"no_dstl_5fold_wall_s{tag}"] = result["wall_s"]
    old[f"no_dstl_5fold_uar{tag}"] = [round(result["uar_mean"], 4), round(result["uar_std"], 4)]
    old[f"sys_over_user{tag}"] = result["sys_over_user"]
    if "train_gflops_over_peak" in result:
        old[f"train_gflops_over_peak{tag}"] = result["train_gflops_over_peak"]
        old["matmul_peak_gflops_1_thread"] = result["matmul_peak_gflops_1_thread"]
    old[f"no_dstl_5fold{tag}_measured"] = {k: result[k] for k in ("date", "machine", "command", "load_average_start",
                                                                  "load_average_end", "load_note", "jobs", "epochs")}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(old, indent=1) + "\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
