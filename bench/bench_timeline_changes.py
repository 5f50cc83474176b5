"""Benchmark: does the timeline's averaging over 3 s windows hide short emotional changes? (issue 27, open question 2)

Material with known change points, from real labeled clips of speakers the
shipped default model (`liser.load()`) never trained on: the test speakers
of its pooled split (`folds: pooled` of configs/default-model-field.yaml,
`liser.data.folds.corpus_folds`: per corpus, seeded by "0:<corpus>", the
first 15 % of the shuffled speakers validate and the next 15 % test) in
EmoDB (2 speakers) and CREMA-D (14). Each clip is cut to its speech
(silero-vad, `liser.data.vad`, not the model's own detector), kept when that
leaves at least MIN_PIECE_S, and given 10 ms fades. A sequence joins 2 or 3
clips of different emotions of one speaker, drawn with a seed per sequence:

- `direct`: the clips back to back; the true change is the first sample
  of the next clip;
- `pause`: PAUSE_S of seeded pink room tone at ROOM_TONE_DBFS between
  them; the true change is the middle of the pause.

Both conditions join the very same clips (paired). The model's timeline
(`EmotionModel.timeline`, "speech" windowing: the speech span inside each
window, no label under 0.5 s of speech) is run with the shipped 3 s windows
every 0.25, 0.5 (the shipped hop) and 1.0 s, and with 1, 1.5 and 2 s
windows (`window_s`, `liser predict --timeline --window S`; their speech
is found on the 3 s around each window) every 0.25 and 0.5 s.

A timeline becomes a label track by giving each instant the label of the
labeled window whose centre is nearest (no-speech windows are skipped);
a predicted change lies halfway between the centres of two consecutive
labeled windows with different labels. Per condition and resolution:

- `per_second_accuracy`: each whole second of a sequence (the last one
  partial) is scored when it holds speech; its true label is the clip that
  covers most of it, its predicted label the track's label covering most
  of it (ties: the earlier label); pooled over all scored seconds;
- `boundary_error_s`: for each true change, the distance to the nearest
  predicted change (inf when the sequence has none): median, mean of the
  finite ones, and `detected_within_<t>s` = share of true changes with a
  predicted change within t s (0.5 and 1.0);
- `false_changes_per_min`: predicted changes left after each true change
  claims its nearest unclaimed predicted change within FALSE_TOL_S, per
  minute of sequence;
- `no_speech_window_share`: windows given no label, and the share of all
  windows where that happened although the same speech detector run on
  the whole signal finds at least 0.5 s of speech in them (the detector's
  local floor, FLOOR_WINDOW_S = 3 s, sees only the 3 s of frames it is
  given: a 3 s window's own, or the 3 s around a shorter window);
- two references: `whole_sequence` (one `model.predict` label over the
  whole sequence for every second: what averaging everything gives) and
  `per_clip` (each clip predicted alone and placed on its own span: the
  boundaries known, only the classifier's errors left).

Each row carries `ci95`: 95 % bootstrap intervals over the sequences
(BOOTSTRAP resamples, the same for every row, so differences are paired),
for per-second accuracy, its difference from the shipped 3 s / 0.5 s row,
detection within 1 s and false changes per minute.

Beside them, the model's UAR on single clips: the cut clips used in the
sequences, and every file of those test speakers as recorded (to compare
with MODEL_CARD.md: CREMA-D 0.529, EmoDB 0.485 int8).

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python bench/bench_timeline_changes.py

Writes bench/results/timeline_changes.json (or --json) atomically and prints a table per condition.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))  # bench/machine.py

from liser.core.errors import LiserError  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
CORPORA = ("emodb", "cremad")  # material corpora (both have test speakers in the shipped model's pooled split)
SPLIT_SEED = 0  # the shipped run's `seed` (configs/default-model-field.yaml): it draws the pooled split
SR = 16_000
SEQUENCES = 60  # per condition; the two conditions join the same clips
CLIPS_PER_SEQUENCE = (2, 3)  # alternating, within each corpus
PAUSE_S = 0.3  # room tone between clips in the "pause" condition
ROOM_TONE_DBFS = -60.0  # its RMS level
MIN_PIECE_S = 1.0  # a clip's speech (silero) must last at least this to be used
FADE_S = 0.01  # raised-cosine fade in and out of each cut clip (no clicks at the joins)
CONDITIONS = {"direct": 0.0, "pause": PAUSE_S}
HOPS_S = (0.25, 0.5, 1.0)  # the library's timeline: 3 s windows every hop
SHIPPED_HOP_S = 0.5  # `liser predict --timeline` and the live page
SHORT_WINDOWS_S = (1.0, 1.5, 2.0)  # the library's shorter windows (window_s) ...
SHORT_HOPS_S = (0.25, 0.5)  # ... every these hops
GRID_S = 0.01  # label tracks are compared on this grid
BOOTSTRAP = 2000  # resamples of the sequences for the 95 % intervals (paired: the same draws for every resolution)
TOLERANCES_S = (0.5, 1.0)  # a true change counts as detected with a predicted change this close
FALSE_TOL_S = 1.0  # a predicted change farther than this from every true change (or a second one near it) is false
NO_SPEECH = "no-speech"  # a whole clip or sequence the model refuses (less than 0.5 s of speech found)
DEFAULT_JSON = ROOT / "bench" / "results" / "timeline_changes.json"


# ---------------------------------------------------------------- material
class Piece(NamedTuple):  # NamedTuples, not dataclasses: tests load this file without a sys.modules entry
    """One clip cut to its speech: 16 kHz mono float32 samples, its label, its item id."""

    wave: np.ndarray
    label: str
    id: str


class Sequence(NamedTuple):
    """Clips joined: the waveform, each clip's (start s, end s, label), the true change times (s)."""

    wave: np.ndarray
    segments: list[tuple[float, float, str]]
    changes: list[float]
    ids: tuple[str, ...] = ()

    @property
    def duration(self) -> float:
        return len(self.wave) / SR


def test_speakers(manifests: dict, seed: int = SPLIT_SEED) -> dict[str, list[str]]:
    """{corpus: its test speakers in the pooled split} for prepared manifests {corpus: Manifest}.

    As `liser.data.workspace.resolve_folds` with `folds: pooled`: speakers
    named "<corpus>/<speaker>" (pooled_manifest) and drawn per corpus by
    `corpus_folds`, whose draw for a corpus depends only on the seed, the
    corpus name and its speakers, so the other pooled corpora are not needed.
    """
    from liser.data.folds import corpus_folds

    speakers = {f"{c}/{it.speaker}": c for c, m in manifests.items() for it in m.items}
    fold = corpus_folds(speakers, list(manifests), "pooled", seed=seed)[0]
    return {c: sorted(s.split("/", 1)[1] for s in fold.test if s.startswith(c + "/")) for c in manifests}


def fade(x: np.ndarray, seconds: float = FADE_S) -> np.ndarray:
    """x [N] with a raised-cosine fade over its first and last `seconds` (a copy, float32)."""
    y = np.array(x, np.float32)
    n = min(int(round(seconds * SR)), len(y) // 2)
    if n > 0:
        ramp = (0.5 - 0.5 * np.cos(np.pi * (np.arange(n) + 0.5) / n)).astype(np.float32)
        y[:n] *= ramp
        y[len(y) - n :] *= ramp[::-1]
    return y


def cut_to_speech(x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """x [N] from its first to its last speech sample (silero-vad; `mask` when given), faded; empty without speech."""
    if mask is None:
        from liser.data.vad import speech_samples

        mask = speech_samples(x)
    on = np.flatnonzero(mask)
    return fade(x[on[0] : on[-1] + 1]) if on.size else np.zeros(0, np.float32)


def join(pieces: list[Piece], pause_s: float, rng: np.random.Generator) -> Sequence:
    """Pieces back to back (pause_s = 0) or with pause_s of room tone between them (seeded by rng).

    Segments are the pieces' exact sample spans in seconds; a true change
    is the next piece's first sample (no pause) or the middle of the pause.
    """
    from liser.data.augment_audio import room_tone

    parts, segments, changes, at = [], [], [], 0
    n_pause = int(round(pause_s * SR))
    for k, p in enumerate(pieces):
        if k:
            end = at  # the previous piece's end, in samples
            if n_pause:
                parts.append(room_tone(n_pause, ROOM_TONE_DBFS, rng))
                at += n_pause
            changes.append((end + at) / 2 / SR)
        parts.append(np.asarray(p.wave, np.float32))
        segments.append((at / SR, (at + len(p.wave)) / SR, p.label))
        at += len(p.wave)
    return Sequence(np.concatenate(parts).astype(np.float32), segments, changes, tuple(p.id for p in pieces))


def draw_plans(by_speaker: dict[str, dict[str, dict[str, list[str]]]], n: int, seed: int,
               corpora=CORPORA, sizes=CLIPS_PER_SEQUENCE) -> list[dict]:
    """n sequence plans {corpus, speaker, candidates: [(label, [item ids shuffled])]}, seeded per sequence.

    `by_speaker`: {corpus: {speaker: {label: [item ids]}}}. Sequence i is
    from corpora[i % len(corpora)] with sizes[(i // len(corpora)) % len(sizes)]
    clips of as many different labels, from one speaker who has them all.
    """
    plans = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        corpus, k = corpora[i % len(corpora)], sizes[(i // len(corpora)) % len(sizes)]
        speakers = sorted(s for s, labels in by_speaker[corpus].items() if len(labels) >= k)
        if not speakers:
            raise LiserError(f"{corpus}: no test speaker with {k} emotions")
        speaker = speakers[rng.integers(len(speakers))]
        labels = sorted(by_speaker[corpus][speaker])
        chosen = [labels[j] for j in rng.choice(len(labels), k, replace=False)]
        plans.append({"corpus": corpus, "speaker": speaker, "index": i,
                      "candidates": [(c, [by_speaker[corpus][speaker][c][j]
                                          for j in rng.permutation(len(by_speaker[corpus][speaker][c]))])
                                     for c in chosen]})
    return plans


# ---------------------------------------------------------------- timelines
Window = tuple[float, float, "str | None"]  # (start s, end s, label or None for no speech)


def api_timeline(model, wave: np.ndarray, window_s: float, hop_s: float) -> list[Window]:
    """The library's timeline (window_s windows every hop_s) as (start, end, label) triples."""
    return [(w.start, w.end, w.label) for w in model.timeline(wave, SR, hop_s=hop_s, window_s=window_s)]


def detector_misses(wave: np.ndarray, windows) -> int:
    """No-speech windows in which the same detector run on the whole signal (liser.data.windowing.speech_frames,
    its local floor seeing past the window's edges) finds at least MIN_WINDOW_FRAMES speech frames."""
    from liser.data.audio import HOP_S
    from liser.data.windowing import MIN_WINDOW_FRAMES, speech_frames
    from liser.inference.decode import features, prepare_waveform

    empty = [(a, b) for a, b, lab in windows if lab is None]
    if not empty:
        return 0
    speech = speech_frames(features(prepare_waveform(wave, SR)))
    return sum(int(speech[int(round(a / HOP_S)) : int(round(b / HOP_S))].sum() >= MIN_WINDOW_FRAMES) for a, b in empty)


# ---------------------------------------------------------------- metrics
def grid(duration: float, step: float = GRID_S) -> np.ndarray:
    """Centres of the step-long cells covering [0, duration)."""
    return (np.arange(int(np.ceil(duration / step - 1e-9))) + 0.5) * step


def segment_track(segments, times: np.ndarray) -> list:
    """The label of the segment (start, end, label) holding each time, None between segments."""
    out = [None] * len(times)
    for a, b, label in segments:
        for i in np.flatnonzero((times >= a) & (times < b)):
            out[i] = label
    return out


def labeled_centres(windows) -> tuple[np.ndarray, list[str]]:
    """Centres and labels of the windows that have a label, in time order."""
    ws = sorted(((a + b) / 2, lab) for a, b, lab in windows if lab is not None)
    return np.array([c for c, _ in ws], np.float64), [lab for _, lab in ws]


def window_track(windows, times: np.ndarray) -> list:
    """Each time's label: that of the labeled window whose centre is nearest (the earlier on a tie);
    all None when no window has a label."""
    centres, labels = labeled_centres(windows)
    if not len(centres):
        return [None] * len(times)
    j = np.searchsorted(centres, times)  # centres[j - 1] < t <= centres[j]
    left = np.clip(j - 1, 0, len(centres) - 1)
    right = np.clip(j, 0, len(centres) - 1)
    pick = np.where(np.abs(times - centres[left]) <= np.abs(centres[right] - times), left, right)
    return [labels[k] for k in pick]


def predicted_changes(windows) -> list[float]:
    """Halfway between the centres of consecutive labeled windows whose labels differ."""
    centres, labels = labeled_centres(windows)
    return [float((centres[k] + centres[k + 1]) / 2) for k in range(len(labels) - 1) if labels[k] != labels[k + 1]]


def segment_changes(segments) -> list[float]:
    """Changes of a track of labeled segments: halfway between consecutive segments whose labels differ."""
    return [(segments[k][1] + segments[k + 1][0]) / 2 for k in range(len(segments) - 1)
            if segments[k][2] != segments[k + 1][2]]


def majority(labels: list) -> str | None:
    """The label most of `labels` carry, None ignored; the earliest on a tie; None when there is none."""
    counts = Counter(lab for lab in labels if lab is not None)
    return counts.most_common(1)[0][0] if counts else None  # most_common keeps first-seen order on ties


def per_second(true: list, pred: list, times: np.ndarray) -> tuple[int, int]:
    """(seconds scored, seconds right): second k = the cells with k <= t < k + 1, scored when a true label
    is in it; right when the predicted majority label equals the true majority label."""
    scored = right = 0
    for k in range(int(np.ceil(times[-1])) if len(times) else 0):
        idx = np.flatnonzero((times >= k) & (times < k + 1))
        t = majority([true[i] for i in idx])
        if t is None:
            continue
        scored += 1
        right += majority([pred[i] for i in idx]) == t
    return scored, right


def boundary_errors(true_changes, pred_changes) -> list[float]:
    """For each true change, the distance (s) to the nearest predicted change; inf when there is none."""
    p = np.asarray(pred_changes, np.float64)
    return [float(np.abs(p - c).min()) if p.size else float("inf") for c in true_changes]


def false_changes(true_changes, pred_changes, tol: float = FALSE_TOL_S) -> int:
    """Predicted changes left over once each true change (in order of the closest pairs) claims its
    nearest unclaimed predicted change within `tol` s."""
    pairs = sorted((abs(p - c), i, j) for i, c in enumerate(true_changes) for j, p in enumerate(pred_changes)
                   if abs(p - c) <= tol + 1e-9)
    used_t, used_p = set(), set()
    for _, i, j in pairs:
        if i not in used_t and j not in used_p:
            used_t.add(i)
            used_p.add(j)
    return len(pred_changes) - len(used_p)


def score_track(seq: Sequence, pred_track: list, pred_changes: list[float]) -> dict:
    """One sequence's raw counts for one resolution: seconds scored/right, boundary errors, false changes."""
    times = grid(seq.duration)
    scored, right = per_second(segment_track(seq.segments, times), pred_track, times)
    return {"seconds": scored, "right": right, "errors": boundary_errors(seq.changes, pred_changes),
            "false": false_changes(seq.changes, pred_changes), "predicted": len(pred_changes),
            "duration": seq.duration}


def summarize(rows: list[dict]) -> dict:
    """Pooled figures of many score_track rows (and their `no_speech`/`windows` counts where present)."""
    errors = np.array([e for r in rows for e in r["errors"]], np.float64)
    minutes = sum(r["duration"] for r in rows) / 60
    finite = errors[np.isfinite(errors)]
    out = {"per_second_accuracy": round(sum(r["right"] for r in rows) / max(1, sum(r["seconds"] for r in rows)), 4),
           "seconds": sum(r["seconds"] for r in rows), "true_changes": int(errors.size),
           "boundary_error_s": {"median": None if not errors.size or not np.isfinite(np.median(errors))
                                else round(float(np.median(errors)), 3),
                                "mean_of_found": round(float(finite.mean()), 3) if finite.size else None,
                                "none_predicted": int((~np.isfinite(errors)).sum())},
           **{f"detected_within_{t:g}s": round(float((errors <= t + 1e-9).mean()), 4) if errors.size else None
              for t in TOLERANCES_S},
           "false_changes_per_min": round(sum(r["false"] for r in rows) / minutes, 3) if minutes else None,
           "predicted_changes_per_min": round(sum(r["predicted"] for r in rows) / minutes, 3) if minutes else None}
    if rows and "windows" in rows[0]:
        windows = max(1, sum(r["windows"] for r in rows))
        out["no_speech_window_share"] = round(sum(r["no_speech"] for r in rows) / windows, 4)
        out["no_speech_but_speech_in_whole_signal_share"] = round(sum(r["missed"] for r in rows) / windows, 4)
    return out


def bootstrap(rows_by: dict[str, list[dict]], base: str, draws: int = BOOTSTRAP, seed: int = 0) -> dict:
    """95 % intervals over sequences resampled with replacement (one draw set for all, so paired):
    {name: {per_second_accuracy, diff_vs_<base>, detected_within_1s, false_changes_per_min}: [lo, hi]}."""
    n = len(next(iter(rows_by.values())))
    idx = np.random.default_rng(seed).integers(0, n, (draws, n))

    def arr(rows, key):
        return np.array([r[key] for r in rows], np.float64)

    def stats(rows):
        right, secs, dur = arr(rows, "right")[idx].sum(1), arr(rows, "seconds")[idx].sum(1), arr(rows, "duration")
        found = np.array([sum(e <= 1.0 + 1e-9 for e in r["errors"]) for r in rows], np.float64)[idx].sum(1)
        changes = np.array([len(r["errors"]) for r in rows], np.float64)[idx].sum(1)
        return {"per_second_accuracy": right / secs, "detected_within_1s": found / changes,
                "false_changes_per_min": arr(rows, "false")[idx].sum(1) / (dur[idx].sum(1) / 60)}

    def ci(x):
        return [round(float(v), 4) for v in np.percentile(x, [2.5, 97.5])]

    ref = stats(rows_by[base])
    out = {}
    for name, rows in rows_by.items():
        st = stats(rows)
        out[name] = {k: ci(v) for k, v in st.items()}
        out[name][f"per_second_accuracy_minus_{base}"] = ci(st["per_second_accuracy"] - ref["per_second_accuracy"])
    return out


# ---------------------------------------------------------------- the run
def resolutions() -> list[tuple[str, float, float]]:
    """(name, window s, hop s): 3 s windows at each hop, then the shorter windows."""
    return ([(f"3s_hop{h:g}", 3.0, h) for h in HOPS_S]
            + [(f"{w:g}s_hop{h:g}", w, h) for w in SHORT_WINDOWS_S for h in SHORT_HOPS_S])


def load_material(data: Path, corpora, classes: list[str]):
    """({corpus: Manifest}, {corpus: test speakers}, {corpus: {speaker: {label: [ids]}}}, {id: item})."""
    from liser.data.corpora import prepare

    manifests = {c: prepare(c, data / c, progress=False) for c in corpora}
    speakers = test_speakers(manifests)
    by_speaker, items = {}, {}
    for c, m in manifests.items():
        by_speaker[c] = {}
        for it in m.items:
            if it.speaker in speakers[c] and it.label in classes:
                by_speaker[c].setdefault(it.speaker, {}).setdefault(it.label, []).append(it.id)
                items[it.id] = (m, it)
    return manifests, speakers, by_speaker, items


def build_sequences(plans: list[dict], items: dict, seed: int) -> tuple[dict, dict, list[dict]]:
    """({condition: [Sequence]}, {id: Piece} of every clip used, plans with their chosen ids).

    Each plan takes, per label, the first candidate whose speech lasts MIN_PIECE_S.
    """
    from liser.data.audio import load_audio

    cache: dict[str, Piece | None] = {}

    def piece(item_id: str) -> Piece | None:
        if item_id not in cache:
            m, it = items[item_id]
            w = cut_to_speech(load_audio(m.abspath(it)))
            cache[item_id] = Piece(w, it.label, item_id) if len(w) >= MIN_PIECE_S * SR else None
        return cache[item_id]

    seqs = {c: [] for c in CONDITIONS}
    for p in plans:
        chosen = []
        for label, ids in p["candidates"]:
            got = next((q for q in map(piece, ids) if q is not None), None)
            if got is None:
                raise LiserError(f"{p['corpus']}/{p['speaker']}: no {label} clip with {MIN_PIECE_S} s of speech")
            chosen.append(got)
        p["ids"] = [q.id for q in chosen]
        for c, pause in CONDITIONS.items():
            seqs[c].append(join(chosen, pause, np.random.default_rng([seed, p["index"], 1])))
    used = {q.id: q for s in seqs["direct"] for q in (cache[i] for i in s.ids)}
    return seqs, used, plans


def label_of(model, wave: np.ndarray, name: str = "waveform") -> str:
    """The model's label for a 16 kHz waveform, or NO_SPEECH when it refuses it (LiserError: too little speech)."""
    try:
        return model.predict(wave, SR, name=name).label
    except LiserError:
        return NO_SPEECH


def single_clip_uar(model, labels: list[str], preds: list[str]) -> dict:
    """UAR (over the classes present), accuracy, refusals and n of predictions against labels (model
    classes; NO_SPEECH is never right)."""
    from liser.core.metrics import uar

    idx = {c: k for k, c in enumerate(model.classes)}
    y = [idx[c] for c in labels]
    p = [idx.get(c, len(idx)) for c in preds]  # NO_SPEECH: one more column, never a true class
    return {"uar": round(uar(y, p, len(idx) + 1), 4), "accuracy": round(float(np.mean(np.equal(y, p))), 4),
            "no_speech": sum(c == NO_SPEECH for c in preds), "n": len(y)}


def score_condition(model, seqs: list[Sequence], clip_preds: dict[str, str], corpora: list[str]) -> dict:
    """Every resolution and both references on one condition's sequences."""
    out, rows_by = {}, {}
    for name, window_s, hop_s in resolutions():
        rows = rows_by[name] = []
        for s in seqs:
            wins = api_timeline(model, s.wave, window_s, hop_s)
            r = score_track(s, window_track(wins, grid(s.duration)), predicted_changes(wins))
            rows.append({**r, "windows": len(wins), "no_speech": sum(w[2] is None for w in wins),
                         "missed": detector_misses(s.wave, wins)})
        out[name] = {"window_s": window_s, "hop_s": hop_s, **summarize(rows),
                     "by_corpus": {c: summarize([r for r, corpus in zip(rows, corpora) if corpus == c])
                                   for c in dict.fromkeys(corpora)}}
    whole, clip = [], []
    for s in seqs:
        label = label_of(model, s.wave)
        times = grid(s.duration)
        whole.append(score_track(s, [label] * len(times), []))
        placed = [(a, b, clip_preds[i]) for (a, b, _), i in zip(s.segments, s.ids)]
        clip.append(score_track(s, segment_track(placed, times), segment_changes(placed)))
    out["whole_sequence"] = {"what": "one model.predict label over the whole sequence for every second",
                             **summarize(whole)}
    out["per_clip"] = {"what": "each clip predicted alone, placed on its own span (boundaries known)",
                       **summarize(clip)}
    rows_by["whole_sequence"], rows_by["per_clip"] = whole, clip
    for name, c in bootstrap(rows_by, f"3s_hop{SHIPPED_HOP_S:g}").items():
        out[name]["ci95"] = c
    return out


def machine() -> dict:
    """CPU model, cores, git commit (and whether tracked files differ from it)."""
    from machine import cpu_model, git

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": 1, "python": platform.python_version(),
            "git_commit": git("rev-parse", "HEAD"),
            "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def run(args) -> dict:
    import liser
    from liser.data.audio import load_audio

    model = liser.load(threads=1)
    if model.windowing != "speech":
        raise LiserError(f"{model.source}: expected the default model's 'speech' windowing, got {model.windowing!r}")
    corpora = tuple(args.corpora.split(","))
    t = time.time()
    _, speakers, by_speaker, items = load_material(Path(args.data), corpora, model.classes)
    print(f"test speakers: {speakers} ({time.time() - t:.0f} s)", file=sys.stderr, flush=True)
    plans = draw_plans(by_speaker, args.sequences, args.seed, corpora)
    seqs, used, plans = build_sequences(plans, items, args.seed)
    seq_corpora = [p["corpus"] for p in plans]
    clip_preds = {i: label_of(model, q.wave, i) for i, q in used.items()}
    print(f"{len(used)} clips in {args.sequences} sequences ({time.time() - t:.0f} s)", file=sys.stderr, flush=True)
    results = {}
    for c in CONDITIONS:
        results[c] = score_condition(model, seqs[c], clip_preds, seq_corpora)
        print(f"{c} scored ({time.time() - t:.0f} s)", file=sys.stderr, flush=True)
    single = {"cut_clips": single_clip_uar(model, [q.label for q in used.values()], list(clip_preds.values())),
              "cut_clips_by_corpus": {}}
    for c in corpora:
        ids = [i for i in used if i.startswith(c + "/")]
        single["cut_clips_by_corpus"][c] = single_clip_uar(model, [used[i].label for i in ids],
                                                           [clip_preds[i] for i in ids])
    if not args.skip_recorded:
        labels, preds, corp = [], [], []
        for i, (m, it) in items.items():
            labels.append(it.label)
            preds.append(label_of(model, load_audio(m.abspath(it)), i))
            corp.append(it.corpus)
        single["test_files_as_recorded"] = single_clip_uar(model, labels, preds)
        single["test_files_as_recorded_by_corpus"] = {
            c: single_clip_uar(model, [lab for lab, k in zip(labels, corp) if k == c],
                               [p for p, k in zip(preds, corp) if k == c]) for c in corpora}
        print(f"test files as recorded scored ({time.time() - t:.0f} s)", file=sys.stderr, flush=True)
    durations = np.array([s.duration for s in seqs["direct"]])
    pieces = np.array([len(q.wave) / SR for q in used.values()])
    return {
        "material": {"corpora": list(corpora), "test_speakers": speakers, "sequences_per_condition": args.sequences,
                     "clips_per_sequence": list(CLIPS_PER_SEQUENCE), "pause_s": PAUSE_S,
                     "room_tone_dbfs": ROOM_TONE_DBFS, "min_piece_s": MIN_PIECE_S, "clips_used": len(used),
                     "piece_s": {"mean": round(float(pieces.mean()), 3), "min": round(float(pieces.min()), 3),
                                 "max": round(float(pieces.max()), 3)},
                     "direct_sequence_s": {"mean": round(float(durations.mean()), 3),
                                           "min": round(float(durations.min()), 3),
                                           "max": round(float(durations.max()), 3)},
                     "sequences": [{"corpus": p["corpus"], "speaker": p["speaker"], "ids": p["ids"]} for p in plans]},
        "single_clips": single, "conditions": results}


def table(res: dict) -> str:
    """A markdown table per condition: resolution rows."""
    lines = []
    for c, rows in res["conditions"].items():
        lines += [f"**{c}**", "", ("| resolution | per-second acc (95 % CI) | median boundary err (s) | within 0.5 s "
                                   "| within 1.0 s | false changes/min |"), "|---|---|---|---|---|---|"]
        for name, r in rows.items():
            med, (lo, hi) = r["boundary_error_s"]["median"], r["ci95"]["per_second_accuracy"]
            lines.append(f"| {name} | {r['per_second_accuracy']:.3f} ({lo:.3f}-{hi:.3f}) | "
                         f"{'-' if med is None else f'{med:.2f}'} | "
                         f"{r['detected_within_0.5s']:.2f} | {r['detected_within_1s']:.2f} | "
                         f"{r['false_changes_per_min']:.1f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DATA), help="the shared data folder (default ../shared/data)")
    ap.add_argument("--corpora", default=",".join(CORPORA), help="material corpora, comma-separated")
    ap.add_argument("--sequences", type=int, default=SEQUENCES, help="sequences per condition")
    ap.add_argument("--seed", type=int, default=0, help="seeds the draw of sequences and the room tone")
    ap.add_argument("--skip-recorded", action="store_true", help="skip the UAR on every test file as recorded")
    ap.add_argument("--json", default=str(DEFAULT_JSON), help="where the results go")
    args = ap.parse_args(argv)
    t0, load_start = time.time(), os.getloadavg()
    res = run(args)
    print(table(res))
    for k, v in res["single_clips"].items():
        print(f"{k}: {v}")
    from liser.core.atomic import atomic_write_text

    out = {"what": "does the timeline's 3 s averaging hide short emotional changes? (issue 27, open question 2; "
                   "bench/bench_timeline_changes.py)",
           "command": ("OMP_NUM_THREADS=1 PYTHONPATH=src python bench/bench_timeline_changes.py "
                       + " ".join(argv or sys.argv[1:])).strip(),
           "date": time.strftime("%Y-%m-%d"), "model": "liser.load() (the shipped default int8 ONNX)",
           "machine": machine(), "load_average_start": [round(x, 2) for x in load_start],
           "load_average_end": [round(x, 2) for x in os.getloadavg()], "seconds": round(time.time() - t0, 1),
           "seed": args.seed, "grid_s": GRID_S, "false_tolerance_s": FALSE_TOL_S, **res}
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(out, indent=1) + "\n")
    print(f"wrote {path} ({out['seconds']} s)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except LiserError as e:
        print(f"bench_timeline_changes: {e}", file=sys.stderr)
        sys.exit(2)
