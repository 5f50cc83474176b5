"""Benchmark: peak memory (RSS) of `liser predict` on long files, and its speed on short ones.

A 60-minute file is made by concatenating real RAVDESS files (16 kHz mono
FLAC, in a temporary folder); `liser predict` runs on it in a fresh process
at the paper's 0.1 s stride, and the child's peak RSS (the peak of its
process image: VmHWM, all of Python, torch and the student included) is the figure. The
issue's bound is 300 MB for an hour of audio. Also measured: 10 and 1
minute, and the wall time of predicting 100 short RAVDESS files in process,
so that the batching of windows is seen not to slow short files.

The student's weights do not change memory or time: a checkpoint with the
real architecture and random weights is written, so no trained run is
needed (pass --run to use one).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_predict_memory.py

Prints the figures and a markdown row; writes bench/results/predict_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RAVDESS = REPO.parent / "shared" / "data" / "ravdess"
LISER = REPO / ".venv" / "bin" / "liser"

# the peak is VmHWM (this process image's own), not ru_maxrss: Linux carries the parent's peak into ru_maxrss
# across fork + exec, and this benchmark's process has imported torch (about 230 MB) before it starts the child
CHILD = """
import sys, time
from liser.cli import main
t0 = time.perf_counter()
rc = main(sys.argv[1:])
wall = time.perf_counter() - t0
hwm = [line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
print("BENCH", rc, wall, hwm, file=sys.stderr)
"""


def random_checkpoint(path: Path) -> Path:
    """A liser student checkpoint with the real architecture and random weights (8 RAVDESS classes)."""
    import torch

    from liser import __version__
    from liser.data.frontend import SETTINGS
    from liser.student.model import Student

    torch.manual_seed(0)
    model = Student(8, 7)
    classes = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
    torch.save({"format": "liser-student", "liser_version": __version__, "state_dict": model.state_dict(),
                "classes": classes, "video_classes": [f"v{i}" for i in range(7)], "front_end": dict(SETTINGS)}, path)
    return path


def long_file(minutes: float, out: Path) -> Path:
    """A mono 16 kHz FLAC of `minutes` of RAVDESS speech, written in pieces (never held whole)."""
    import soundfile as sf

    files = sorted(RAVDESS.glob("Actor_*/*.flac"))
    need = int(minutes * 60 * 16000)
    with sf.SoundFile(str(out), "w", samplerate=16000, channels=1, format="FLAC", subtype="PCM_16") as f:
        i = 0
        while need > 0:
            x, sr = sf.read(files[i % len(files)], dtype="float32", always_2d=True)
            assert sr == 16000
            x = x.mean(1)[:need]
            f.write(x)
            need -= len(x)
            i += 1
    return out


def predict_rss(model: Path, audio_path: Path, stride: float) -> dict:
    """Peak RSS (MB) and wall time of `liser predict MODEL FILE --stride S` in a fresh process."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    r = subprocess.run([sys.executable, "-c", CHILD, "predict", str(model), str(audio_path), "--stride", str(stride),
                        "--threads", "1"], capture_output=True, text=True, env=env, timeout=3600)
    line = [x for x in r.stderr.splitlines() if x.startswith("BENCH ")]
    if r.returncode != 0 or not line:
        raise SystemExit(f"predict failed on {audio_path}:\n{r.stderr[-2000:]}")
    _, rc, wall, maxrss_kb = line[-1].split()
    return {"rc": int(rc), "wall_s": round(float(wall), 2), "peak_rss_mb": round(int(maxrss_kb) / 1024, 1),
            "label": r.stdout.strip().split("\t")[1]}


def short_files_speed(model: Path, n: int = 100) -> dict:
    """In-process wall time of predict_file on n short RAVDESS files (after one warm-up)."""
    import torch

    import liser

    torch.set_num_threads(1)
    files = sorted(RAVDESS.glob("Actor_1*/*.flac"))[:n]
    m = liser.load(model)
    m.predict_file(files[0])
    t0 = time.perf_counter()
    for f in files:
        m.predict_file(f)
    wall = time.perf_counter() - t0
    import soundfile as sf

    seconds = sum(sf.info(str(f)).duration for f in files)
    return {"files": len(files), "audio_s": round(seconds, 1), "wall_s": round(wall, 2),
            "realtime_factor": round(seconds / wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", help="a trained run / best.pt / .onnx (default: random weights, same architecture)")
    ap.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 60])
    ap.add_argument("--stride", type=float, default=0.1)
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "predict_memory.json"))
    args = ap.parse_args()
    if not RAVDESS.is_dir():
        raise SystemExit(f"{RAVDESS}: RAVDESS not found")
    with tempfile.TemporaryDirectory(prefix="liser-bench-mem-") as d:
        d = Path(d)
        model = Path(args.run) if args.run else random_checkpoint(d / "student.pt")
        rows = {}
        for minutes in args.minutes:
            f = long_file(minutes, d / f"ravdess-{minutes:g}min.flac")
            rows[f"{minutes:g}min"] = {"minutes": minutes, **predict_rss(model, f, args.stride)}
            print(f"{minutes:g} min: peak RSS {rows[f'{minutes:g}min']['peak_rss_mb']} MB, "
                  f"{rows[f'{minutes:g}min']['wall_s']} s", flush=True)
            f.unlink()
        short = short_files_speed(model)
        print(f"100 short files in process: {short['wall_s']} s ({short['realtime_factor']}x real time)")
    hour = rows.get("60min", {})
    result = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "command": "OMP_NUM_THREADS=1 .venv/bin/python bench/bench_predict_memory.py",
        "what": "peak RSS of `liser predict MODEL FILE --stride 0.1 --threads 1` in a fresh process (VmHWM: "
                "Python, torch and the student included) on concatenated RAVDESS files, 16 kHz mono FLAC",
        "model": "random weights, the real architecture" if not args.run else str(args.run),
        "stride_s": args.stride,
        "files": rows,
        "peak_rss_mb_60min": hour.get("peak_rss_mb"),
        "target_mb_60min": 300,
        "short_files": short,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"| {result['date']} | 60 min peak RSS {hour.get('peak_rss_mb')} MB (target 300) | "
          f"{hour.get('wall_s')} s | 100 short files {short['wall_s']} s |")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
