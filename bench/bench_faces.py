"""Benchmark the face pipeline: frames/s of decoding, and of detection + alignment.

For each video (sorted; `--limit` takes the first N) it times one decoding
pass alone (`iter_frames`) and one full `extract_faces` pass (decode, detect,
track, align; nothing saved), and reports frames/s for both and for
detection + alignment alone (full minus decode time), plus the fraction of
frames with a face. Prints a table and a markdown row; writes nothing unless
`--json PATH` is given.

    python bench/bench_faces.py --limit 20
    python bench/bench_faces.py --root ../shared/data/av/demo --backend haar --json /tmp/faces.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

DEFAULT_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "av"
VIDEO_EXTS = (".mp4", ".mkv", ".webm", ".avi", ".mov")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="folder of videos (searched recursively)")
    ap.add_argument("--limit", type=int, default=0, help="only the first N videos (0 = all)")
    ap.add_argument("--size", type=int, default=112, help="crop size")
    ap.add_argument("--fps", type=float, default=None, help="resample frames to this rate first")
    ap.add_argument("--backend", default="auto", choices=("auto", "yunet", "haar"))
    ap.add_argument("--model", type=Path, default=None, help="YuNet .onnx (default: $LISER_YUNET or the shared copy)")
    ap.add_argument("--max-side", type=int, default=None, help="shrink frames to this longer side before everything")
    ap.add_argument("--threads", type=int, default=1, help="OpenCV threads (the decoder uses FFmpeg's choice)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)

    import cv2

    from liser.data.faces import FaceDetector, extract_faces
    from liser.data.video import iter_frames

    cv2.setNumThreads(args.threads)
    if not args.root.is_dir():
        print(f"{args.root}: no such folder (the real data lives in ../shared/data; see its README)", file=sys.stderr)
        return 2
    files = sorted(p for p in args.root.rglob("*") if p.suffix.lower() in VIDEO_EXTS)
    if args.limit:
        files = files[: args.limit]
    if not files:
        print(f"{args.root}: no videos", file=sys.stderr)
        return 2
    detector = FaceDetector(args.model, backend=args.backend)

    rows, frames, with_face, t_dec, t_all = [], 0, 0, 0.0, 0.0
    print(f"{'video':48s} {'frames':>6s} {'face%':>6s} {'decode fps':>10s} {'full fps':>9s}")
    for path in files:
        t0 = time.perf_counter()
        n_dec = sum(1 for _ in iter_frames(path, fps=args.fps, max_side=args.max_side))
        t1 = time.perf_counter()
        tr = extract_faces(path, None, size=args.size, fps=args.fps, detector=detector, progress=False, max_side=args.max_side)
        t2 = time.perf_counter()
        assert n_dec == len(tr)
        frames += len(tr)
        with_face += int(tr.valid.sum())
        t_dec += t1 - t0
        t_all += t2 - t1
        name = str(path.relative_to(args.root))
        rows.append({"video": name, "frames": len(tr), "with_face": int(tr.valid.sum()), "decode_s": t1 - t0, "full_s": t2 - t1})
        print(f"{name[-48:]:48s} {len(tr):6d} {100 * tr.valid.mean():6.1f} {len(tr) / (t1 - t0):10.1f} {len(tr) / (t2 - t1):9.1f}")

    det_s = max(t_all - t_dec, 1e-9)
    result = {
        "videos": len(files),
        "frames": frames,
        "face_fraction": with_face / frames,
        "decode_fps": frames / t_dec,
        "full_fps": frames / t_all,
        "detect_align_fps": frames / det_s,
        "detector": detector.name,
        "size": args.size,
        "fps": args.fps,
        "max_side": args.max_side,
        "opencv_threads": args.threads,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.python_version()}, cv2 {cv2.__version__}",
        "per_video": rows,
    }
    print(
        f"\n{len(files)} videos, {frames} frames, face in {100 * result['face_fraction']:.1f}%: "
        f"decode {result['decode_fps']:.1f} fps, full pipeline {result['full_fps']:.1f} fps, "
        f"detection+alignment {result['detect_align_fps']:.1f} fps ({detector.name})"
    )
    print("\n| detector | videos | frames | face % | decode fps | detect+align fps | full fps |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {detector.name} | {len(files)} | {frames} | {100 * result['face_fraction']:.1f} | "
        f"{result['decode_fps']:.1f} | {result['detect_align_fps']:.1f} | {result['full_fps']:.1f} |"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
