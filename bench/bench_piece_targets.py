"""Benchmark: do per-piece student targets follow changes of emotion better than 3 s window targets? (issue 27, OQ2)

The paper's open question 2 asks whether averaging the teacher over 3 s
windows hides short emotional changes. docs/results/timeline.md measured the
inference side (shorter windows); this bench measures the training side, on
the two students of configs/grid-oq2-pieces.yaml (the default model's
distilled recipe, leave one corpus out), paired by fold:

- `window-targets`: g_sd learns the mean of the teacher's 0.5 s pieces in its crop (the paper's);
- `piece-targets`: g_sd also learns the piece under every LSTM step (`piece_targets: true`).

The material is bench_timeline_changes.py's (clips cut to their speech by
silero-vad, 2 or 3 clips of different emotions of one speaker joined back to
back, `direct`, or with 0.3 s of room tone, `pause`), drawn from *every*
speaker of the fold's held-out corpus (fold 1: CREMA-D, fold 2: EmoDB), which
neither student, nor its teacher, nor its validation ever heard. Each student
is read four ways:

- `3s_hop0.5` and `1.5s_hop0.5`: the library's timeline (`EmotionModel.timeline`, g_sup on 3 s or 1.5 s
  windows every 0.5 s): the shipped reading and the best shorter window of timeline.md;
- `steps`: g_sd at every LSTM step (`Student.step_probs`), read causally: 3 s windows every STEP_HOP_S, each
  step taken from the first window that holds it (so every step after the first window has heard
  3 - STEP_HOP_S s or more, never more than the 3 s the student trained on), averaged per 0.5 s piece;
- `steps_1s`: the same, averaged over 1 s instead.

Scoring is timeline.md's (per-second accuracy, boundary error, detections
within 0.5 / 1 s, false changes per minute, paired bootstrap intervals against
each student's own 3 s row). Beside them: each run's UAR on the held-out
corpus's every file (metrics.json, the fold's test) and on the clips used.

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python bench/bench_piece_targets.py [--runs runs/grid-oq2-pieces]

Writes bench/results/piece_targets.json (or --json) atomically and prints a table per fold and condition.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from liser.core.errors import LiserError

_spec = importlib.util.spec_from_file_location("bench_timeline_changes", ROOT / "bench" / "bench_timeline_changes.py")
tl = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tl)

FOLDS = {1: "cremad", 2: "emodb"}  # configs/grid-oq2-pieces.yaml's folds: the held-out corpus of each
ROWS = ("window-targets", "piece-targets")
SEQUENCES = 60  # per fold and condition
STEP_HOP_S = 0.5  # windows of the step readout start this far apart; each adds its last STEP_HOP_S of steps
READOUTS = {"3s_hop0.5": (3.0, 0.5), "1.5s_hop0.5": (1.5, 0.5), "steps": 0.5, "steps_1s": 1.0}
DEFAULT_JSON = ROOT / "bench" / "results" / "piece_targets.json"


def material(data: Path, corpus: str, classes: list[str]):
    """({speaker: {label: [ids]}} of every speaker of `corpus`, {id: (manifest, item)}) for the given classes."""
    from liser.data.corpora import prepare

    m = prepare(corpus, data / corpus, progress=False)
    by_speaker, items = {}, {}
    for it in m.items:
        if it.label in classes:
            by_speaker.setdefault(it.speaker, {}).setdefault(it.label, []).append(it.id)
            items[it.id] = (m, it)
    return {corpus: by_speaker}, items


def causal_step_probs(student, frames: np.ndarray, n_real: int, head: str = "sd") -> tuple[np.ndarray, np.ndarray]:
    """g_<head>'s probabilities per LSTM step over a whole signal, read causally: (times s [S], probs [S, K]).

    `frames` [T, 64] (T >= 94, zero-padded as the front end gives them), `n_real` the frames of the signal.
    3 s windows start every STEP_HOP_S; a step is taken from the first window that holds it, so after the
    first window every step has heard at least 3 s - STEP_HOP_S of what came before (module docstring).
    """
    import torch

    from liser.data.audio import CLIP_FRAMES, HOP_S
    from liser.student.model import TIME_POOL, step_times

    hop = round(STEP_HOP_S / HOP_S)
    starts = list(range(0, max(n_real - CLIP_FRAMES, 0) + 1, hop))
    if starts[-1] + CLIP_FRAMES < n_real:
        starts.append(n_real - CLIP_FRAMES)
    x = torch.from_numpy(np.stack([frames[s : s + CLIP_FRAMES].T for s in starts]).astype(np.float32))
    with torch.inference_mode():
        probs = student.step_probs(x, head).numpy()  # [W, S, K]
    rel = step_times(CLIP_FRAMES // TIME_POOL)
    times, out, covered = [], [], -1.0
    for s, p in zip(starts, probs):
        t = s * HOP_S + rel
        keep = (t > covered) & (t < n_real * HOP_S)
        times.append(t[keep])
        out.append(p[keep])
        covered = max(covered, float(t[keep].max()) if keep.any() else covered)
    return np.concatenate(times), np.concatenate(out)


def step_segments(times: np.ndarray, probs: np.ndarray, classes: list[str], span_s: float, duration: float):
    """(start s, end s, label) per `span_s` piece of the signal: the label of its steps' mean probabilities."""
    segs = []
    for a in np.arange(0.0, duration, span_s):
        b = min(a + span_s, duration)
        inside = (times >= a) & (times < b)
        if not inside.any():  # a last sliver shorter than a step: the previous label
            inside = np.abs(times - (a + b) / 2) == np.abs(times - (a + b) / 2).min()
        segs.append((float(a), float(b), classes[int(probs[inside].mean(axis=0).argmax())]))
    return segs


def score_steps(student, classes, seqs, span_s: float) -> dict:
    """The step readout's rows (timeline.md's metrics) on one condition's sequences."""
    from liser.data.audio import HOP_S
    from liser.inference.decode import features

    rows = []
    for s in seqs:
        frames = features(s.wave)
        n_real = min(len(frames), round(s.duration / HOP_S) + 1)
        times, probs = causal_step_probs(student, frames, n_real)
        segs = step_segments(times, probs, classes, span_s, s.duration)
        rows.append(tl.score_track(s, tl.segment_track(segs, tl.grid(s.duration)), tl.segment_changes(segs)))
    return rows


def score_row(model, seqs: dict) -> dict:
    """Every readout of one student (a run loaded by liser.load: its torch Student reads the steps) on both
    conditions, with paired intervals against its own 3 s row."""
    student = model.classifier.student
    out = {}
    for cond, ss in seqs.items():
        rows_by, res = {}, {}
        for name, how in READOUTS.items():
            if isinstance(how, tuple):
                rows = []
                for s in ss:
                    wins = tl.api_timeline(model, s.wave, *how)
                    rows.append(tl.score_track(s, tl.window_track(wins, tl.grid(s.duration)),
                                               tl.predicted_changes(wins)))
            else:
                rows = score_steps(student, model.classes, ss, how)
            rows_by[name] = rows
            res[name] = tl.summarize(rows)
        for name, c in tl.bootstrap(rows_by, "3s_hop0.5").items():
            res[name]["ci95"] = c
        out[cond] = res
    return out


def run(args) -> dict:
    import liser

    runs, data, results = Path(args.runs), Path(args.data), {}
    for fold, corpus in FOLDS.items():
        dirs = {r: runs / r / "default" / f"fold{fold}" for r in ROWS}
        missing = [str(d) for d in dirs.values() if not (d / "best.pt").is_file()]
        if missing:
            raise LiserError(f"no finished run in {', '.join(missing)}: liser experiment configs/grid-oq2-pieces.yaml")
        classes = json.loads((dirs[ROWS[0]] / "metrics.json").read_text())["classes"]
        by_speaker, items = material(data, corpus, classes)
        plans = tl.draw_plans(by_speaker, args.sequences, args.seed, (corpus,))
        seqs, used, plans = tl.build_sequences(plans, items, args.seed)
        fold_out = {"held_out": corpus, "speakers": len(by_speaker[corpus]), "clips_used": len(used),
                    "sequences_per_condition": args.sequences, "rows": {}}
        for r, d in dirs.items():
            metrics = json.loads((d / "metrics.json").read_text())
            model = liser.load(d, threads=1)
            preds = {i: tl.label_of(model, q.wave, i) for i, q in used.items()}
            fold_out["rows"][r] = {
                "run": str(d), "test_uar": metrics["test"]["uar"], "val_uar": metrics["val"]["uar"],
                "cut_clips": tl.single_clip_uar(model, [q.label for q in used.values()], list(preds.values())),
                "conditions": score_row(model, seqs)}
            print(f"fold {fold} ({corpus}) {r} scored", file=sys.stderr, flush=True)
        results[f"fold{fold}"] = fold_out
    return results


def table(res: dict) -> str:
    lines = []
    for fold, f in res.items():
        for cond in tl.CONDITIONS:
            lines += [f"**{fold} ({f['held_out']}) {cond}**", "",
                      ("| row | readout | per-second acc (95 % CI) | median boundary err (s) | within 1.0 s | "
                       "false changes/min |"), "|---|---|---|---|---|---|"]
            for r, row in f["rows"].items():
                for name, x in row["conditions"][cond].items():
                    med, (lo, hi) = x["boundary_error_s"]["median"], x["ci95"]["per_second_accuracy"]
                    lines.append(f"| {r} | {name} | {x['per_second_accuracy']:.3f} ({lo:.3f}-{hi:.3f}) | "
                                 f"{'-' if med is None else f'{med:.2f}'} | {x['detected_within_1s']:.2f} | "
                                 f"{x['false_changes_per_min']:.1f} |")
            lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default=str(ROOT / "runs" / "grid-oq2-pieces"), help="the grid's output folder")
    ap.add_argument("--data", default=str(tl.DATA), help="the shared data folder (default ../shared/data)")
    ap.add_argument("--sequences", type=int, default=SEQUENCES, help="sequences per fold and condition")
    ap.add_argument("--seed", type=int, default=0, help="seeds the draw of sequences and the room tone")
    ap.add_argument("--json", default=str(DEFAULT_JSON), help="where the results go")
    args = ap.parse_args(argv)
    t0, load_start = time.time(), os.getloadavg()
    res = run(args)
    print(table(res))
    from liser.core.atomic import atomic_write_text

    out = {"what": "per-piece against 3 s window targets for the student's timeline (issue 27, open question 2; "
                   "bench/bench_piece_targets.py, configs/grid-oq2-pieces.yaml)",
           "command": ("OMP_NUM_THREADS=1 PYTHONPATH=src python bench/bench_piece_targets.py "
                       + " ".join(argv or sys.argv[1:])).strip(),
           "date": time.strftime("%Y-%m-%d"), "machine": tl.machine(),
           "load_average_start": [round(x, 2) for x in load_start],
           "load_average_end": [round(x, 2) for x in os.getloadavg()], "seconds": round(time.time() - t0, 1),
           "seed": args.seed, "step_hop_s": STEP_HOP_S, "folds": res}
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(out, indent=1) + "\n")
    print(f"wrote {path} ({out['seconds']} s)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except LiserError as e:
        print(f"bench_piece_targets: {e}", file=sys.stderr)
        sys.exit(2)
