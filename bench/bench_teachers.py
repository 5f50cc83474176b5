"""Benchmark the teachers' side (issue: teachers and soft labels), end to end on ../shared/data.

Runs the real pipeline for a student config (default configs/vid-sp-dstl.yaml):
per-fold speech teachers (fit or reuse; test UAR on whole utterances and on
0.5 s pieces), labeling of the unlabeled pool (audio-seconds per second),
faces of every pool video (frames per second, detection + alignment), the
video teacher (frames per second) and the stores (size per audio hour, time
to open, time to read a random 3 s window; also on a synthetic 50 h store).
Prints a markdown table and writes bench/results/teachers.json.

    .venv/bin/python bench/bench_teachers.py

``--speech-eval-only`` refits and relabels nothing: it reads the fitted
teachers' ``eval.json`` (each checked against its ``teacher.json`` hash) and
updates only the speech-teacher figures of the JSON (test UAR on whole files
and on 0.5 s pieces averaged per file, validation ECE before/after
temperature), keeping the other figures with the date they were measured on.

    .venv/bin/python bench/bench_teachers.py --speech-eval-only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def store_figures(path: Path, reads: int = 2000) -> dict:
    """Open time, random 3 s window read time, size per audio hour of a finalized store."""
    from liser.teachers.store import SoftLabelStore

    t0 = time.perf_counter()
    s = SoftLabelStore(path)
    open_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    ids = s.ids
    durs = np.array([s.index[i].duration for i in ids])
    t0 = time.perf_counter()
    for _ in range(reads):
        k = int(rng.integers(len(ids)))
        s.window(ids[k], float(rng.uniform(0, max(durs[k] - 3.0, 0.0))))
    read_ms = (time.perf_counter() - t0) / reads * 1000
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    hours = durs.sum() / 3600
    return {"items": len(ids), "audio_h": round(hours, 3), "open_s": round(open_s, 4),
            "window_read_ms": round(read_ms, 4), "mb_per_audio_h": round(size / 1e6 / max(hours, 1e-9), 3)}


def synthetic_store(hours: float = 50.0, classes: int = 8) -> Path:
    """A store the size of 50 h of audio (9.25 s items, as MSP-Face's mean clip) with random probabilities."""
    from liser.teachers.store import StoreWriter, n_pieces

    d = Path(tempfile.mkdtemp()) / "s50h"
    w = StoreWriter(d, "synthetic", [f"c{i}" for i in range(classes)], "x", flush_every=4096)
    rng = np.random.default_rng(0)
    n_items = int(hours * 3600 / 9.25)
    ids = []
    for i in range(n_items):
        n = n_pieces(9.25)
        w.add(f"synthetic/{i}", rng.dirichlet(np.ones(classes), n), np.ones(n, bool), 9.25)
        ids.append(f"synthetic/{i}")
    w.finalize(ids)
    return d


def speech_eval_figures(cfg) -> dict:
    """Speech-teacher figures of every fold from the fitted teachers' eval.json; nothing is fitted.

    Raises SystemExit naming the file when a fold has no eval.json or its
    hash is not the one in teacher.json (the eval is not of that teacher).
    """
    from liser.data.workspace import fold_indices, labeled_manifest, teacher_dir

    evals = []
    for k in fold_indices(cfg, labeled_manifest(cfg)):
        ev_path, t_path = teacher_dir(cfg, k) / "eval.json", teacher_dir(cfg, k) / "teacher.json"
        if not ev_path.is_file() or not t_path.is_file():
            raise SystemExit(f"{ev_path}: missing (fit the teachers first: liser teacher fit speech CONFIG)")
        ev = json.loads(ev_path.read_text())
        if ev.get("hash") != json.loads(t_path.read_text()).get("teacher_hash"):
            raise SystemExit(f"{ev_path}: its hash is not {t_path}'s teacher_hash (an eval of another teacher)")
        evals.append(ev)
    return speech_figures(evals)


def speech_figures(evals: list[dict]) -> dict:
    """The speech-teacher keys of teachers.json from per-fold evals (pipeline.fit_speech_teachers' eval.json)."""
    mean = lambda key: float(np.mean([e[key] for e in evals]))  # noqa: E731
    cal = lambda key: float(np.mean([e["calibration"][key] for e in evals]))  # noqa: E731
    return {"speech_teacher": evals[0]["teacher"] if evals else None,
            "speech_teacher_hashes": [e["hash"] for e in evals],
            "speech_teacher_uar_per_fold": [round(e["uar"], 4) for e in evals],
            "speech_teacher_piece_uar_per_fold": [round(e["uar_pieces"], 4) for e in evals],
            "speech_teacher_uar_mean": mean("uar"),
            "speech_teacher_piece_uar_mean": mean("uar_pieces"),
            "speech_teacher_uar_pieces_mean": mean("uar_pieces"),  # the older name of the same figure
            "speech_teacher_val_ece_mean": cal("ece"),
            "speech_teacher_val_ece_tempered_mean": cal("ece_tempered")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config", nargs="?", default=str(REPO / "configs" / "vid-sp-dstl.yaml"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "teachers.json"))
    ap.add_argument("--all-stores", action="store_true",
                    help="then also label every fold's store, the pool's faces and the video store (long)")
    ap.add_argument("--speech-eval-only", action="store_true",
                    help="only update the speech-teacher figures from the fitted teachers' eval.json (no fitting)")
    args = ap.parse_args()
    from liser.core.util import absolute_paths

    absolute_paths(args, "json")  # outputs: relative to where the script was run
    os.chdir(REPO)  # the configs' relative paths are relative to the repository

    from liser.core.config import Config
    from liser.teachers import pipeline as tp
    from liser.data.workspace import speech_store, teacher_dir, unlabeled_pool, video_store

    cfg = Config.load(args.config, args.set)
    command = " ".join(["python"] + sys.argv)
    if args.speech_eval_only:
        update_speech_figures(args.json, speech_eval_figures(cfg), args.config, command)
        return
    res: dict = {"config": args.config, "date": date.today().isoformat(),
                 "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
                 "command": command}

    t0 = time.time()
    evals = tp.fit_speech_teachers(cfg, progress=False)
    res["speech_fit_s"] = round(time.time() - t0, 1)
    res.update(speech_figures(evals))

    # labeling throughput with nothing cached: fold 0's teacher on every 20th pool item, a fresh feature cache
    import dataclasses

    from liser.data.corpora import Manifest
    from liser.teachers.speech.teacher import SpeechTeacher
    from liser.teachers.speech.label import label_with_speech_teacher

    pool = unlabeled_pool(cfg)
    teacher = SpeechTeacher.load(teacher_dir(cfg, evals[0]["fold"]))
    tmp = Path(tempfile.mkdtemp())
    teacher.cfg = dataclasses.replace(teacher.cfg, cache_dir=str(tmp / "cache"))
    audio_only = [it for it in pool.items if Path(it.path).suffix.lower() not in (".mp4", ".mkv", ".webm", ".avi", ".mov")]
    sub = Manifest(pool.corpus, pool.root, audio_only[::20])
    t0 = time.time()
    label_with_speech_teacher(teacher, sub, tmp / "store", progress=False)
    res["speech_label_audio_s_per_s"] = round(sum(it.duration for it in sub.items) / (time.time() - t0), 2)
    res["speech_label_note"] = f"{len(sub.items)} pool items ({sum(it.duration for it in sub.items):.0f} s), decoding and encoder included"
    res["pool_audio_h"] = round(sum(it.duration for it in pool.items) / 3600, 3)

    # face throughput on a fixed subset (decode + detect + track + align), then the whole pool (resumable)
    from liser.data.faces import extract_faces

    videos = [Path(it.path) for it in unlabeled_pool(cfg, videos_only=True).items if "interviews" in it.path][:12]
    frames, t0 = 0, time.perf_counter()
    for v in videos:
        frames += len(extract_faces(v, None, size=cfg.face_size, progress=False).times)
    res["face_fps"] = round(frames / (time.perf_counter() - t0), 1)
    res["face_fps_subset"] = f"{len(videos)} pool videos, {frames} frames"

    from liser.teachers.video.teacher import load_video_teacher

    teacher = load_video_teacher(cfg.video_teacher)
    crops = []
    for v in videos[:6]:
        tr = extract_faces(v, None, size=cfg.face_size, progress=False)
        crops.append(tr.crops[tr.valid])
    crops = np.concatenate(crops)[:1024]
    teacher.predict_frames(crops[:64])  # warm-up
    t0 = time.perf_counter()
    teacher.predict_frames(crops)
    res["video_teacher"] = cfg.video_teacher
    res["video_teacher_fps"] = round(len(crops) / (time.perf_counter() - t0), 1)

    tp.label_speech(cfg, folds=[evals[0]["fold"]], progress=False)  # one fold's store, for its figures
    real = store_figures(Path(speech_store(cfg, evals[0]["fold"])))
    res["speech_store"] = real
    syn = synthetic_store()
    res["synthetic_50h_store"] = store_figures(syn)
    res["store_open_s"] = res["synthetic_50h_store"]["open_s"]
    res["store_window_read_ms"] = res["synthetic_50h_store"]["window_read_ms"]

    print(json.dumps(res, indent=1))
    print("| speech teacher | UAR (utt) | UAR (0.5 s pieces) | label audio-s/s | face fps | video teacher fps "
          "| store MB/audio-h | open 50 h store | 3 s window read |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {res['speech_teacher']} | {res['speech_teacher_uar_mean']:.3f} | {res['speech_teacher_uar_pieces_mean']:.3f} "
          f"| {res.get('speech_label_audio_s_per_s', '-')} | {res['face_fps']} | {res['video_teacher_fps']} "
          f"| {real['mb_per_audio_h']} | {res['store_open_s'] * 1000:.1f} ms | {res['store_window_read_ms']:.3f} ms |")
    write(args.json, res)
    if args.all_stores:  # the long tail: every fold's speech store, the pool's faces and the video store
        t0 = time.time()
        tp.label_speech(cfg, progress=False)
        res["speech_label_all_folds_s"] = round(time.time() - t0, 1)
        t0 = time.time()
        tp.label_video(cfg, progress=False)
        res["faces_and_video_label_s"] = round(time.time() - t0, 1)
        res["video_store"] = store_figures(Path(video_store(cfg)))
        write(args.json, res)


def update_speech_figures(path, figures: dict, config: str, command: str) -> None:
    """Replace the speech-teacher figures in the JSON at `path`, keeping (and dating) every other figure."""
    old = json.loads(Path(path).read_text()) if Path(path).is_file() else {}
    res = {k: v for k, v in old.items() if not k.startswith("speech_teacher")}
    if old and "date" in old:
        res["date"] = old["date"]
        res["note"] = (f"the speech_teacher_* figures are from {date.today().isoformat()} ({command}: read from the "
                       f"fitted teachers' eval.json, {config}); every other figure from {old['date']} ({old.get('command')})")
    res["speech_teacher_date"] = date.today().isoformat()
    res["speech_teacher_command"] = command
    res.update(figures)
    print(json.dumps(figures, indent=1))
    write(path, res)


def write(path, res) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_name(f".{Path(path).name}.tmp")
    tmp.write_text(json.dumps(res, indent=1) + "\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
