"""Benchmark: speech-teacher labeling speed per runtime and thread count, and the runtimes' parity.

A fixed real pool sample (every n-th interview video's audio track, and
every n-th TESS and URDU file with their labels ignored, about equal shares
of `--seconds` in all) is labeled by one speech teacher into a fresh
soft-label store with each runtime ("torch", the reference; "onnx", the
encoder in onnxruntime fp32; "onnx-int8") at each thread count: the whole
`label_with_speech_teacher` job, decoding, the VAD, the encoder, the head
and the store included, with a fresh feature cache and VAD memo each time.
The ONNX export is made (and timed) before the timed runs.

Parity: each runtime's piece soft labels against torch's on the same
pieces: top-1 agreement, mean and max |dp|, and whether the bound of
liser.teachers.speech.onnx holds (top-1 >= 0.98, mean |dp| <= 0.01); and
whether the validity masks are the same.

The teacher: `--teacher DIR`, or a frozen Whisper-base teacher as
configs/teacher-speech-whisper.yaml (concat head, 0.5 s pieces pooled from
the whole file, VAD) fitted here on a RAVDESS subset (6 actors, every 3rd
file, 10 epochs) and kept in --work. Load averages are recorded at the start
and end of every run: on a shared 2-core box they decide what a figure means.

    OMP_NUM_THREADS=2 PYTHONPATH=src .venv/bin/python bench/bench_teacher_speed.py \\
        --json bench/results/teacher_speed.json
    PYTHONPATH=src .venv/bin/python bench/bench_teacher_speed.py --seconds 60 --threads 2   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
POOL = (("videos", SHARED / "data" / "av" / "interviews"), ("tess", SHARED / "data" / "tess"),
        ("urdu", SHARED / "data" / "urdu"))
RUNTIMES = ("torch", "onnx", "onnx-int8")
FIT_ACTORS = ("Actor_01", "Actor_02", "Actor_03", "Actor_04", "Actor_05", "Actor_06")


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def pool_sample(seconds: float):
    """Every n-th item of each pool corpus (equal shares of `seconds`), as one unlabeled manifest under "/"."""
    from liser.data.corpora import prepare
    from liser.data.corpora.base import Manifest

    items, share = [], seconds / len(POOL)
    for name, root in POOL:
        m = prepare(name, root, progress=False)
        mean_s = max(np.mean([it.duration for it in m.items]), 1e-3)
        step = max(1, int(len(m.items) / max(share / mean_s, 1)))
        total = 0.0
        for it in m.items[::step]:
            if total >= share:
                break
            items.append(replace(it, path=str(m.abspath(it).resolve()).lstrip("/"), label=""))
            total += it.duration
    return Manifest(corpus="pool", root=Path("/"), items=items)


def fitted_teacher(work: Path, backbone: str):
    """A frozen Whisper teacher as configs/teacher-speech-whisper.yaml, fitted once on a RAVDESS subset."""
    from liser.data.corpora import prepare
    from liser.data.corpora.base import Manifest
    from liser.teachers.speech.teacher import SpeechTeacher, SpeechTeacherConfig, fit_speech_teacher

    out = work / "teacher-frozen"
    if not (out / "teacher.json").is_file():
        full = prepare("ravdess", SHARED / "data" / "ravdess", progress=False)
        keep = [it for it in full.items if it.speaker in FIT_ACTORS][::3]
        m = Manifest(corpus=full.corpus, root=full.root, items=keep)
        cfg = SpeechTeacherConfig(backbone=backbone, mode="frozen", epochs=10, train_pieces=True, piece_context="whole",
                                  head="concat", vad=True, cache_dir=str(work / "fit-cache"))
        print(f"fitting a frozen teacher on {len(keep)} RAVDESS files ({', '.join(FIT_ACTORS)})", flush=True)
        fit_speech_teacher(m, [it.id for it in keep], out, cfg)
    return SpeechTeacher.load(out)


def label_once(teacher, pool, runtime: str, threads: int, cache: Path) -> dict:
    """One timed labeling job into a fresh store: figures, and the store's (probs, valid)."""
    import torch

    from liser.teachers.store import SoftLabelStore
    from liser.teachers.speech import label as speech_label
    from liser.teachers.speech.label import label_with_speech_teacher

    speech_label._VAD_MEMO.clear()  # the VAD runs again, as it does for a pool's first teacher
    feature_cache = Path(tempfile.mkdtemp(prefix="features-", dir=cache))
    shutil.copytree(cache / "onnx", feature_cache / "onnx", symlinks=True)  # the export, made before
    teacher.cfg = replace(teacher.cfg, runtime=runtime, threads=threads, cache_dir=str(feature_cache))
    torch.set_num_threads(threads)
    store_dir = Path(tempfile.mkdtemp(prefix="store-", dir=cache)) / "store"
    l0, t0 = load(), time.time()
    label_with_speech_teacher(teacher, pool, store_dir, progress=False)
    wall = time.time() - t0
    store = SoftLabelStore(store_dir)
    probs = np.concatenate([np.asarray(store.pieces(it.id)[0], np.float32) for it in pool.items])
    valid = np.concatenate([np.asarray(store.pieces(it.id)[1]) for it in pool.items])
    audio_s = sum(it.duration for it in pool.items)
    row = {"runtime": runtime, "threads": threads, "store_runtime": store.meta.get("runtime"),
           "audio_s": round(audio_s, 1), "wall_s": round(wall, 2), "audio_s_per_s": round(audio_s / wall, 1),
           "load_start": l0, "load_end": load()}
    shutil.rmtree(feature_cache, ignore_errors=True)
    shutil.rmtree(store_dir.parent, ignore_errors=True)
    return row, probs, valid


def _label_shard(teacher_dir: str, pool, runtime: str, cache_dir: str, store_dir: str, shard: tuple) -> None:
    """One shard of a sharded labeling job, in its own process on one thread (`label_sharded`)."""
    import torch

    from liser.teachers.speech.teacher import SpeechTeacher
    from liser.teachers.speech.label import label_with_speech_teacher

    torch.set_num_threads(1)
    teacher = SpeechTeacher.load(teacher_dir)
    teacher.cfg = replace(teacher.cfg, runtime=runtime, threads=1, cache_dir=cache_dir)
    label_with_speech_teacher(teacher, pool, store_dir, shard=shard, progress=False)


def label_sharded(teacher_dir: Path, pool, runtime: str, shards: int, cache: Path) -> tuple[dict, np.ndarray]:
    """The pool labeled by `shards` one-thread processes at once, shard i taking items i, i+n, ... (what
    `liser teacher label --shard i/n` does on a machine's cores): the row and the finished store's probs."""
    import multiprocessing as mp

    from liser.teachers.store import SoftLabelStore

    feature_cache = Path(tempfile.mkdtemp(prefix="features-", dir=cache))
    shutil.copytree(cache / "onnx", feature_cache / "onnx", symlinks=True)  # the export, made before
    store_dir = Path(tempfile.mkdtemp(prefix="store-", dir=cache)) / "store"
    args = [(str(teacher_dir), pool, runtime, str(feature_cache), str(store_dir), (i, shards)) for i in range(shards)]
    l0, t0 = load(), time.time()
    with mp.get_context("spawn").Pool(shards) as workers:  # fresh interpreters: no VAD memo, no torch threads
        workers.starmap(_label_shard, args)
    wall = time.time() - t0
    _label_shard(*args[0])  # every shard's items are in: this finalizes the store (nothing left to label)
    store = SoftLabelStore(store_dir)
    probs = np.concatenate([np.asarray(store.pieces(it.id)[0], np.float32) for it in pool.items])
    audio_s = sum(it.duration for it in pool.items)
    row = {"runtime": runtime, "threads": 1, "shards": shards, "store_runtime": store.meta.get("runtime"),
           "audio_s": round(audio_s, 1), "wall_s": round(wall, 2), "audio_s_per_s": round(audio_s / wall, 1),
           "load_start": l0, "load_end": load()}
    shutil.rmtree(feature_cache, ignore_errors=True)
    shutil.rmtree(store_dir.parent, ignore_errors=True)
    return row, probs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", default=None, help="a speech-teacher folder (default: fit a small frozen one in --work)")
    ap.add_argument("--backbone", default=str(SHARED / "models" / "whisper-base-encoder"))
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "liser-bench-teacher-speed"),
                    help="the fitted teacher and the export cache (kept between runs)")
    ap.add_argument("--seconds", type=float, default=600.0, help="audio-seconds of the pool sample")
    ap.add_argument("--threads", default="1,2", help="thread counts to run, e.g. 1,2")
    ap.add_argument("--runtimes", default=",".join(RUNTIMES))
    ap.add_argument("--shards", type=int, default=0,
                    help="also label with this many one-thread processes at once, each a shard (0 = not)")
    ap.add_argument("--shard-runtimes", default="onnx-int8", help="runtimes of the sharded runs")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import onnxruntime
    import torch

    from liser.teachers.speech import onnx as speech_onnx
    from liser.teachers.speech.teacher import SpeechTeacher

    for _, root in POOL:
        if not root.is_dir():
            sys.exit(f"{root}: pool data absent")
    load_start, t_all = load(), time.time()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    teacher = SpeechTeacher.load(args.teacher) if args.teacher else fitted_teacher(work, args.backbone)
    pool = pool_sample(args.seconds)
    audio_s = sum(it.duration for it in pool.items)
    print(f"pool sample: {len(pool.items)} files, {audio_s:.0f} audio-s; teacher {teacher.hash[:12]} "
          f"({teacher.mode}, head {teacher.cfg.head}, piece_context {teacher.cfg.piece_context}, vad {teacher.cfg.vad})",
          flush=True)

    cache = work / "cache"
    cache.mkdir(exist_ok=True)
    teacher.cfg = replace(teacher.cfg, cache_dir=str(cache))
    t0 = time.time()
    from liser.teachers.speech.label import _check_waves

    folder, meta = speech_onnx.ensure_export(teacher, _check_waves(pool, pool.items))
    export_s = round(time.time() - t0, 1)
    print(f"export: {folder} ({export_s} s, 0 when cached); int8 check at export: {meta.get('int8_parity')}", flush=True)

    rows, ref, ref_valid = [], None, None
    threads = [int(x) for x in args.threads.split(",")]
    runtimes = [r for r in args.runtimes.split(",") if r]
    if runtimes[0] != "torch":
        sys.exit("--runtimes: torch first (it is the reference of the parity figures)")
    for rt in runtimes:
        for n in threads:
            row, probs, valid = label_once(teacher, pool, rt, n, cache)
            if ref is None:
                ref, ref_valid = probs, valid
            if rt != "torch" or ref is not probs:
                row["parity"] = speech_onnx.parity(ref, probs)
                row["valid_same"] = float((valid == ref_valid).mean())
            rows.append(row)
            print(f"{rt:10s} threads {n}: {row['audio_s_per_s']:6.1f} audio-s/s ({row['wall_s']:.1f} s)  "
                  f"load {row['load_start'][0]:.2f}->{row['load_end'][0]:.2f}  {row.get('parity', '')}", flush=True)

    teacher_dir = Path(args.teacher) if args.teacher else work / "teacher-frozen"
    for rt in [r for r in args.shard_runtimes.split(",") if r] if args.shards > 1 else []:
        row, probs = label_sharded(teacher_dir, pool, rt, args.shards, cache)
        row["parity"] = speech_onnx.parity(ref, probs)
        rows.append(row)
        print(f"{rt:10s} {args.shards} shards x 1 thread: {row['audio_s_per_s']:6.1f} audio-s/s ({row['wall_s']:.1f} s)  "
              f"load {row['load_start'][0]:.2f}->{row['load_end'][0]:.2f}  {row['parity']}", flush=True)

    result = {
        "date": date.today().isoformat(), "command": " ".join(["python"] + sys.argv),
        "machine": {"nproc": os.cpu_count(), "cpu": cpu_model(), "python": platform.python_version(),
                    "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        "load_average_start": load_start, "load_average_end": load(),
        "teacher": {"hash": teacher.hash, "mode": teacher.mode, "backbone": Path(teacher.backbone).name,
                    "head": teacher.cfg.head, "piece_context": teacher.cfg.piece_context, "vad": teacher.cfg.vad,
                    "fitted_here": args.teacher is None},
        "pool": {"files": len(pool.items), "audio_s": round(audio_s, 1),
                 "corpora": {name: sum(1 for it in pool.items if it.corpus == name) for name, _ in POOL}},
        "parity_bound": {"top1": speech_onnx.TOP1_BOUND, "mean_abs_dp": speech_onnx.MEAN_DP_BOUND},
        "export_s": export_s, "export_int8_check": meta.get("int8_parity"),
        "runs": rows, "wall_s": round(time.time() - t_all, 1),
    }
    try:
        result["git"] = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                       text=True).stdout.strip()
    except OSError:
        pass
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(args.json).with_name(f".{Path(args.json).name}.tmp")
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
