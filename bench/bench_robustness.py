"""Robustness of the students to the field: UAR, class collapse and label changes under 15 conditions.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_robustness.py \
        --model old=OLD.onnx --model new=runs/default-model-loco/fold{fold} \
        --config configs/default-model.yaml [--set KEY=VALUE ...] [--fold K | --loco] \
        [--max-per-class 40] [--seed 0] [--noise NOISE.wav] [--json bench/results/robustness.json] [--merge]

On the held-out (test) speakers of a fold only (`--loco`: every fold of the
config, fold k = the k-th corpus of `labeled` held out), a class-balanced,
seeded subset of `--max-per-class` files per class, each file is read once
and turned into every condition once (seeded per file and condition, so all
models hear the identical audio):

- `full`: the clip as recorded; `voiced`: first to last speech sample;
  `central_<N>s`: the central N s of speech (0.5, 1.0, 1.5, 2.0; the voiced
  part when it is shorter). Speech is found by silero-vad (liser.data.vad), on
  purpose not by any detector a model carries;
- `room_tone_3s` / `room_tone_15s`: 3 s / 15 s of room tone at −60 dBFS
  before the clip (a recording started early): a seeded stretch of
  `--noise` when given, else seeded pink noise;
- `floor_-60dBFS`: a white noise floor at −60 dBFS RMS;
- `snr_20dB` / `snr_10dB`: background noise at 20 / 10 dB below the clip's
  RMS: a seeded stretch of `--noise` (real background audio) when given,
  else seeded pink noise;
- `telephone_8k`: 300-3400 Hz band at 8 kHz; `mp3_32k`: MP3 at 32 kb/s (FFmpeg's LAME, CBR);
- `speed_0.9` / `speed_1.1`: played slower / faster (pitch and tempo).

Every model (`--model LABEL=PATH`, repeatable; `{fold}` in PATH is the fold
number, so each LOCO fold's model meets its own held-out corpus) predicts
every condition (`model.predict`, whole file). A LiserError from a model
(too little speech) counts as the pseudo-class "no-speech": wrong for UAR
and reported as its own share. Per model, fold and condition: `uar` (over
the classes the fold's files have), `max_class_share` (the largest share of
predictions one class takes, no-speech included) and that `max_class`,
`no_speech_share`, `changed_vs_full` (share of files whose label differs
from the same model's full-clip label) and `n`; per model a summary over folds (mean UAR, worst
shares) with the issue's targets and whether each is met.

Writes bench/results/robustness.json (or --json; `--merge` keeps the other
models already in it) and prints a markdown table per model and fold.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))  # bench/machine.py

from liser.data.audio import SAMPLE_RATE  # noqa: E402
from liser.core.errors import LiserError  # noqa: E402
from machine import describe  # noqa: E402

NO_SPEECH = "no-speech"  # pseudo-class of a file a model refuses (LiserError: not enough speech)
CENTRAL_S = (0.5, 1.0, 1.5, 2.0)  # seconds of central speech kept
ROOM_TONE_S = (3.0, 15.0)  # seconds of room tone put before the clip
ROOM_TONE_DBFS = -60.0  # level of that room tone (RMS)
FLOOR_DBFS = -60.0  # level of the white noise floor (RMS)
SNR_DB = (20.0, 10.0)  # background noise below the clip's RMS
MP3_BITRATE = 32_000  # bits/s
SPEEDS = (0.9, 1.1)
# name -> (kind, setting): the list, in its order
CONDITIONS = {"full": ("full", None), "voiced": ("voiced", None),
              **{f"central_{s}s": ("central", s) for s in CENTRAL_S},
              **{f"room_tone_{s:g}s": ("room_tone", s) for s in ROOM_TONE_S},
              f"floor_{FLOOR_DBFS:g}dBFS": ("floor", FLOOR_DBFS),
              **{f"snr_{s:g}dB": ("snr", s) for s in SNR_DB},
              "telephone_8k": ("telephone", None), f"mp3_{MP3_BITRATE // 1000}k": ("mp3", MP3_BITRATE),
              **{f"speed_{f}": ("speed", f) for f in SPEEDS}}
# the targets
UAR_1S_RATIO_MIN = 0.85  # UAR(central 1.0 s) / UAR(full clip) at least this
MAX_CLASS_SHARE_MAX = 0.35  # no condition may send more than this share of files to one class
CHANGED_MAX = 0.10  # labels changed against the full clip, at most this share, under these conditions:
STABLE_CONDITIONS = ("room_tone_3s", "room_tone_15s", f"floor_{FLOOR_DBFS:g}dBFS", f"mp3_{MP3_BITRATE // 1000}k",
                     "telephone_8k")
DEFAULT_JSON = ROOT / "bench" / "results" / "robustness.json"


# ---------------------------------------------------------------- the conditions
def voiced_span(mask: np.ndarray) -> tuple[int, int]:
    """(first, last + 1) speech sample of a boolean [N] speech mask; (0, N) when it holds no speech."""
    idx = np.flatnonzero(mask)
    return (int(idx[0]), int(idx[-1]) + 1) if idx.size else (0, len(mask))


def central_span(span: tuple[int, int], seconds: float) -> tuple[int, int]:
    """The central `seconds` (at 16 kHz) of a (start, end) sample span; the span itself when it is shorter."""
    a, b = span
    n = int(round(seconds * SAMPLE_RATE))
    if b - a <= n:
        return a, b
    start = a + ((b - a) - n) // 2
    return start, start + n


def condition_rng(seed: int, item_id: str, condition: str) -> np.random.Generator:
    """The Generator of one (file, condition): the same for every model and every run with this seed."""
    return np.random.default_rng([seed, zlib.crc32(item_id.encode()), zlib.crc32(condition.encode())])


def background(n: int, rng: np.random.Generator, noise: np.ndarray | None) -> np.ndarray:
    """[n] samples of background noise: a random stretch of `noise` (tiled when shorter), else pink noise."""
    from liser.data.augment_audio import pink_noise

    if noise is None or len(noise) == 0:
        return pink_noise(n, rng)
    a = int(rng.integers(0, max(1, len(noise) - n)))
    return np.resize(np.asarray(noise[a : a + n], np.float32), n)


def make_condition(name: str, x: np.ndarray, span: tuple[int, int], rng: np.random.Generator,
                   noise: np.ndarray | None = None) -> np.ndarray:
    """One condition (a key of CONDITIONS) of a 16 kHz mono float32 clip x [N], voiced part x[span]. -> [M] float32.

    The result is clipped to full scale (what a file can hold). Raises
    ValueError for an unknown condition.
    """
    from liser.data import augment_audio as A

    if name not in CONDITIONS:
        raise ValueError(f"unknown condition {name!r} (known: {', '.join(CONDITIONS)})")
    kind, v = CONDITIONS[name]
    x = np.asarray(x, np.float32)
    if kind == "full":
        y = x
    elif kind == "voiced":
        y = x[span[0] : span[1]]
    elif kind == "central":
        a, b = central_span(span, v)
        y = x[a:b]
    elif kind == "room_tone":
        y = np.concatenate([A.room_tone(int(round(v * SAMPLE_RATE)), ROOM_TONE_DBFS, rng, noise), x])
    elif kind == "floor":
        y = A.noise_floor(x, v, rng)
    elif kind == "snr":
        y = A.add_noise(x, background(len(x), rng, noise), v)
    elif kind == "telephone":
        y = A.telephone(x)
    elif kind == "mp3":
        y = A.encode_decode(x, "mp3", v)
    else:  # speed
        y = A.speed(x, v)
    return np.clip(y, -1.0, 1.0).astype(np.float32)


def make_conditions(x: np.ndarray, item_id: str, seed: int, noise: np.ndarray | None = None,
                    mask: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], tuple[int, int]]:
    """Every condition of clip x [N] (16 kHz mono float32): ({name: [M] float32}, the voiced span).

    `mask`: its silero speech mask [N] (computed when None); each condition
    is seeded by (seed, item_id, condition).
    """
    if mask is None:
        from liser.data.vad import speech_samples

        mask = speech_samples(x)
    span = voiced_span(mask)
    return {c: make_condition(c, x, span, condition_rng(seed, item_id, c), noise) for c in CONDITIONS}, span


# ---------------------------------------------------------------- scoring
def predict_label(model, wave: np.ndarray) -> str:
    """The model's label for a 16 kHz waveform [N], or NO_SPEECH when the model refuses it (LiserError)."""
    try:
        return model.predict(wave, SAMPLE_RATE).label
    except LiserError:
        return NO_SPEECH


def condition_metrics(labels: list[str], preds: list[str], full: list[str]) -> dict:
    """Scores of one condition from true labels, its predictions and the full-clip predictions (all [n] str).

    uar: mean recall over the classes in `labels` (NO_SPEECH is never right);
    max_class_share: largest share of `preds` one class takes (NO_SPEECH counts as a class), max_class: that
    class (the first by name on a tie);
    no_speech_share; changed_vs_full: share of files whose prediction differs from `full`; n.
    """
    from liser.core.metrics import uar

    n = len(labels)
    if n == 0:
        raise LiserError("no files to score")
    vocab = sorted(set(labels) | set(preds))
    idx = {c: k for k, c in enumerate(vocab)}
    names, counts = np.unique(preds, return_counts=True)
    return {"uar": round(uar([idx[c] for c in labels], [idx[c] for c in preds], len(vocab)), 4),
            "max_class_share": round(float(counts.max()) / n, 4), "max_class": str(names[np.argmax(counts)]),
            "no_speech_share": round(sum(p == NO_SPEECH for p in preds) / n, 4),
            "changed_vs_full": round(float(np.mean([p != f for p, f in zip(preds, full)])), 4), "n": n}


def balanced_subset(items: list, per_class: int, seed: int) -> list:
    """Up to `per_class` items of each label, drawn with a Random seeded by (seed, label); sorted by id."""
    out = []
    for label in sorted({it.label for it in items}):
        members = sorted((it for it in items if it.label == label), key=lambda it: it.id)
        random.Random(f"{seed}:{label}").shuffle(members)
        out += members[:per_class]
    return sorted(out, key=lambda it: it.id)


def score_fold(models: dict, items: list, manifest, seed: int, noise: np.ndarray | None = None,
               progress: bool = True) -> dict:
    """{label: {"conditions": {condition: condition_metrics}, "files", "vad_empty"}} of loaded models on items.

    Each file is read and made into every condition once; every model predicts each condition.
    """
    from liser.data.audio import load_audio
    from liser.data.vad import speech_samples

    preds = {m: {c: [] for c in CONDITIONS} for m in models}
    vad_empty = 0
    for k, it in enumerate(items):
        x = load_audio(manifest.abspath(it))
        mask = speech_samples(x)
        vad_empty += not mask.any()
        waves, _ = make_conditions(x, it.id, seed, noise, mask)
        for m, model in models.items():
            for c, y in waves.items():
                preds[m][c].append(predict_label(model, y))
        if progress and (k + 1) % 10 == 0:
            print(f"  {k + 1}/{len(items)} files", file=sys.stderr, flush=True)
    labels = [it.label for it in items]
    return {m: {"files": len(items), "vad_empty": vad_empty,
                "conditions": {c: condition_metrics(labels, p[c], p["full"]) for c in CONDITIONS}}
            for m, p in preds.items()}


def summary(folds: dict) -> dict:
    """Over a model's folds {fold name: score_fold entry}: mean UAR, worst shares per condition, the targets.

    Targets (`met` each, and `all_met`): uar_1s_ratio = mean UAR(central 1.0 s) / mean UAR(full) >=
    UAR_1S_RATIO_MIN; max_class_share <= MAX_CLASS_SHARE_MAX under every condition and fold;
    changed_vs_full <= CHANGED_MAX under each STABLE_CONDITIONS condition in every fold.
    """
    def worst(key, c):
        return max(f["conditions"][c][key] for f in folds.values())

    mean_uar = {c: round(float(np.mean([f["conditions"][c]["uar"] for f in folds.values()])), 4) for c in CONDITIONS}
    max_share = {c: worst("max_class_share", c) for c in CONDITIONS}
    changed = {c: worst("changed_vs_full", c) for c in CONDITIONS}
    ratio = round(mean_uar["central_1.0s"] / mean_uar["full"], 4) if mean_uar["full"] > 0 else None
    top = max(CONDITIONS, key=lambda c: max_share[c])
    targets = {"uar_1s_ratio": {"value": ratio, "min": UAR_1S_RATIO_MIN,
                                "met": ratio is not None and ratio >= UAR_1S_RATIO_MIN},
               "max_class_share": {"value": max_share[top], "condition": top, "max": MAX_CLASS_SHARE_MAX,
                                   "met": max_share[top] <= MAX_CLASS_SHARE_MAX}}
    for c in STABLE_CONDITIONS:
        targets[f"changed_vs_full:{c}"] = {"value": changed[c], "max": CHANGED_MAX, "met": changed[c] <= CHANGED_MAX}
    return {"folds": list(folds), "uar_mean": mean_uar, "max_class_share_worst": max_share,
            "no_speech_share_worst": {c: worst("no_speech_share", c) for c in CONDITIONS},
            "changed_vs_full_worst": changed,
            "changed_vs_full_mean": {c: round(float(np.mean([f["conditions"][c]["changed_vs_full"]
                                                             for f in folds.values()])), 3) for c in CONDITIONS},
            "targets": targets,
            "all_met": all(t["met"] for t in targets.values())}


# ---------------------------------------------------------------- the run
def fold_test_items(cfg, manifest, fold: int, per_class: int, seed: int, split: str = "test") -> tuple[str, list]:
    """(name, items): a balanced subset of a fold's test (or, split="val", validation) speakers;
    name = the held-out corpus (LOCO), else fold<k>."""
    from liser.data.workspace import fold_items, labeled_corpora

    _, val, test, _ = fold_items(cfg.replace(fold=fold), manifest)
    test = val if split == "val" else test
    if not test:
        raise LiserError(f"fold {fold}: no {split} items")
    name = labeled_corpora(cfg)[fold] if cfg.labeled and cfg.folds in ("loco", "") else f"fold{fold}"
    return name, balanced_subset(test, per_class, seed)


def parse_models(specs: list[str]) -> dict[str, str]:
    """["LABEL=PATH", ...] -> {label: path template}; LiserError for a pair without "=" or a label given twice."""
    out = {}
    for s in specs:
        label, sep, path = s.partition("=")
        if not sep or not label or not path:
            raise LiserError(f"--model {s!r}: expected LABEL=PATH")
        if label in out:
            raise LiserError(f"--model: label {label!r} given twice")
        out[label] = path
    return out


def load_models(templates: dict[str, str], fold: int) -> tuple[dict, dict[str, str]]:
    """({label: loaded model}, {label: path}) with {fold} filled in; one load per distinct path."""
    import liser

    paths = {m: t.replace("{fold}", str(fold)) for m, t in templates.items()}
    loaded = {p: liser.load(p, threads=1) for p in dict.fromkeys(paths.values())}
    return {m: loaded[p] for m, p in paths.items()}, paths


def markdown(label: str, fold: str, entry: dict) -> str:
    """A model's table for one fold: condition rows; UAR, max class share, no-speech share, changed vs full."""
    lines = [f"**{label}**, {fold} ({entry['files']} files)", "",
             "| condition | UAR | max class share | no-speech | changed vs full |", "|---|---|---|---|---|"]
    for c, r in entry["conditions"].items():
        lines.append(f"| {c} | {r['uar']:.3f} | {r['max_class_share']:.3f} ({r['max_class']}) | "
                     f"{r['no_speech_share']:.3f} | {r['changed_vs_full']:.3f} |")
    return "\n".join(lines)


def markdown_targets(label: str, s: dict) -> str:
    """One line per target of a model's summary: value, limit, met."""
    lines = [f"{label} targets over {', '.join(s['folds'])}:"]
    for name, t in s["targets"].items():
        limit = f">= {t['min']}" if "min" in t else f"<= {t['max']}"
        where = f" ({t['condition']})" if "condition" in t else ""
        lines.append(f"  {name}: {t['value']}{where} {limit}: {'met' if t['met'] else 'NOT met'}")
    return "\n".join(lines)


def run(args) -> dict:
    """Score every model on every asked fold; {label: {"folds": {name: entry}, "summary"}}."""
    from liser.data.audio import load_audio
    from liser.core.config import Config
    from liser.data.workspace import fold_indices, labeled_manifest

    templates = parse_models(args.model)
    cfg = Config.load(args.config, overrides=args.set)
    manifest = labeled_manifest(cfg)
    folds = fold_indices(cfg, manifest) if args.loco else [args.fold]  # loco: one per corpus of `labeled`
    noise = load_audio(args.noise) if args.noise else None
    out = {m: {"path": t, "folds": {}} for m, t in templates.items()}
    for k in folds:
        name, items = fold_test_items(cfg, manifest, k, args.max_per_class, args.seed, args.split)
        models, paths = load_models(templates, k)
        print(f"fold {k} ({name}): {len(items)} test files, models {paths}", file=sys.stderr, flush=True)
        for m, entry in score_fold(models, items, manifest, args.seed, noise).items():
            out[m]["folds"][name] = {"fold": k, "model": paths[m], **entry}
            print(markdown(m, name, entry) + "\n", flush=True)
    for m, r in out.items():
        r["summary"] = summary(r["folds"])
        print(markdown_targets(m, r["summary"]), flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True, metavar="LABEL=PATH",
                    help="a model to measure (run dir, best.pt or .onnx; {fold} = the fold number); repeatable")
    ap.add_argument("--config", required=True, help="the config whose folds' test speakers are scored")
    ap.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE", help="override config keys")
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--fold", type=int, default=0, help="the fold to score (default 0)")
    which.add_argument("--loco", action="store_true",
                       help="every fold of the config (folds: loco = 0..len(labeled)-1, one per held-out corpus)")
    ap.add_argument("--split", choices=("test", "val"), default="test",
                    help="score the folds' test speakers (figures) or their validation speakers (choosing settings)")
    ap.add_argument("--max-per-class", type=int, default=40, help="test files per class and fold (seeded draw)")
    ap.add_argument("--seed", type=int, default=0, help="seeds the file draw and every condition's noise")
    ap.add_argument("--noise", default="", help="a WAV/FLAC of background noise for the SNR conditions and room "
                    "tone ('' = seeded pink noise)")
    ap.add_argument("--json", default=str(DEFAULT_JSON), help="where the results go")
    ap.add_argument("--merge", action="store_true", help="keep the other models already in --json")
    args = ap.parse_args(argv)
    t0, load_start = time.time(), os.getloadavg()
    models = run(args)
    for r in models.values():  # each model its own record: --merge keeps older models beside this run's
        r["command"] = "OMP_NUM_THREADS=1 python bench/bench_robustness.py " + " ".join(argv or sys.argv[1:])
        r["date"] = time.strftime("%Y-%m-%d")
        r["machine"] = {**describe(), "load_average_start": [round(x, 2) for x in load_start]}
    path = Path(args.json)
    if args.merge and path.is_file():
        models = {**{m: r for m, r in json.loads(path.read_text()).get("models", {}).items() if m not in models},
                  **models}
    res = {"what": "robustness to field conditions on held-out speakers: UAR, largest class share, labels changed "
                   "against the clean full clip (bench/bench_robustness.py)",
           "command": "OMP_NUM_THREADS=1 python bench/bench_robustness.py " + " ".join(argv or sys.argv[1:]),
           "date": time.strftime("%Y-%m-%d"), "config": args.config, "overrides": list(args.set),
           "max_per_class": args.max_per_class, "seed": args.seed, "noise": args.noise or "pink (seeded)",
           "conditions": list(CONDITIONS),
           "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; models on 1 thread",
           "load_average_start": [round(x, 2) for x in load_start],
           "load_average_end": [round(x, 2) for x in os.getloadavg()],
           "seconds": round(time.time() - t0, 1), "models": models}
    from liser.core.atomic import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(res, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except LiserError as e:
        print(f"bench_robustness: {e}", file=sys.stderr)
        sys.exit(2)
