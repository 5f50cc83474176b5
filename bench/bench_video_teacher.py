"""Benchmark the video teacher: frames/s of the FER2013 big and mini Xception teachers on CPU.

Times `predict_frames` (preprocessing: grayscale + resize to 64x64, then the
torch forward pass) on a batch of random 112x112 RGB crops (the size
`liser.data.faces` writes), with 1 and 2 torch threads, after one warm-up call.
Prints a table and a markdown row; writes nothing unless `--json PATH` is given.

    python bench/bench_video_teacher.py
    python bench/bench_video_teacher.py --frames 512 --threads 1 2 4 --json /tmp/video_teacher.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teachers", nargs="+", default=["fer2013-big", "fer2013-mini"], help="specs for load_video_teacher")
    ap.add_argument("--models", type=Path, default=None, help="models folder (default: $LISER_MODELS or ../shared/models)")
    ap.add_argument("--frames", type=int, default=256, help="crops per timed call")
    ap.add_argument("--size", type=int, default=112, help="crop side")
    ap.add_argument("--batch", type=int, default=256, help="frames per forward pass")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts to time")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per setting (the best is kept)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)

    import cv2
    import numpy as np
    import torch

    from liser.core.errors import LiserError
    from liser.teachers.video.teacher import load_video_teacher

    cv2.setNumThreads(1)
    crops = np.random.default_rng(0).integers(0, 256, (args.frames, args.size, args.size, 3), dtype=np.uint8)
    results = []
    print(f"{'teacher':14s} {'threads':>7s} {'frames/s':>9s} {'preproc ms/frame':>16s}")
    for spec in args.teachers:
        try:
            teacher = load_video_teacher(spec, models_dir=args.models, batch=args.batch)
        except LiserError as e:
            print(str(e), file=sys.stderr)
            return 2
        t0 = time.perf_counter()
        teacher.preprocess(crops)
        pre_ms = (time.perf_counter() - t0) * 1000 / len(crops)
        for threads in args.threads:
            torch.set_num_threads(threads)
            teacher.predict_frames(crops[: min(32, len(crops))])  # warm-up
            best = float("inf")
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                teacher.predict_frames(crops)
                best = min(best, time.perf_counter() - t0)
            fps = len(crops) / best
            results.append({"teacher": spec, "threads": threads, "frames_per_s": round(fps, 1),
                            "preprocess_ms_per_frame": round(pre_ms, 3), "frames": len(crops), "crop": args.size,
                            "batch": args.batch})
            print(f"{spec:14s} {threads:7d} {fps:9.1f} {pre_ms:16.3f}")

    row = " | ".join(f"{r['teacher']} {r['threads']}t: {r['frames_per_s']:.0f} fps" for r in results)
    print(f"\n| video teacher (CPU, {args.size}px crops) | {row} |")
    if args.json:
        info = {"results": results, "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                "torch": torch.__version__, "cpus": os.cpu_count()}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_name(f".{args.json.name}.tmp")
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        os.replace(tmp, args.json)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
