"""Which part of a telephone line changes a student's labels: its log-Mel effect taken apart, band by band.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_phone_parts.py [--model LABEL=PATH ...] \
        [--config configs/default-model.yaml] [--set folds=pooled ...] [--fold 0] [--split val] \
        [--max-per-class 40] [--json bench/results/phone_parts.json]

The telephone channel of bench_robustness.py (liser.data.augment_audio.telephone:
300-3400 Hz band-pass, 8 kHz and back) is measured once as a gain per Mel band:
the mean log-Mel difference it makes to 20 s of seeded white noise (`gain_db`
in the JSON). Each file of a class-balanced, seeded subset of a fold's speakers
(validation by default: this chooses what to try) is then scored clean and
with that gain added to its log-Mel (floored at the front end's -100 dB) in one
part of the spectrum only:

- `below_300Hz`: the bands whose centre is under 300 Hz (the voice's
  fundamental for most male speakers; the line attenuates them 3-16 dB);
- `in_band`: 300 Hz-3.5 kHz (a slope of 1-3 dB);
- `above_3.5kHz`: the bands it cuts (to about -94 dB above 4 kHz);
- `all_bands`: the whole gain curve; `telephone`: the waveform through the
  line itself (what bench_robustness scores as `telephone_8k`).

Per model (`--model LABEL=PATH`, repeatable; default: the shipped default
model's torch weights) and part: UAR and the share of labels changed against
the clean file. A file the model refuses (too little speech) counts as the
pseudo-class "no-speech", as in bench_robustness.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from liser.core.errors import LiserError  # noqa: E402
from machine import describe  # noqa: E402

DEFAULT_MODEL = ROOT / "src" / "liser" / "inference" / "default" / "liser-default.pt"
NOISE_S = 20.0  # seconds of white noise the line's gain is measured on
EDGE_FRAMES = 20  # frames left out at each end of that measurement (the filters' onset)
PARTS = {"below_300Hz": (0.0, 300.0), "in_band": (300.0, 3500.0), "above_3.5kHz": (3500.0, 1e9),
         "all_bands": (0.0, 1e9)}  # part -> Mel band centres it covers, Hz
FLOOR_DB = -100.0  # the front end's log floor
DEFAULT_JSON = ROOT / "bench" / "results" / "phone_parts.json"


def line_gain(seed: int = 0) -> np.ndarray:
    """float32 [64]: what the telephone channel adds to each Mel band, dB (white noise through it, mean over time)."""
    from liser.data import augment_audio as A
    from liser.inference.decode import features

    x = (np.random.default_rng(seed).standard_normal(int(NOISE_S * 16000)) * 0.05).astype(np.float32)
    diff = features(A.telephone(x)) - features(x)  # [frames, 64]
    return diff[EDGE_FRAMES:-EDGE_FRAMES].mean(0).astype(np.float32)


def part_gains(gain: np.ndarray) -> dict[str, np.ndarray]:
    """{part: [64] dB}: `gain` inside the part's bands (PARTS), 0 elsewhere."""
    from liser.data.audio import mel_centres

    c = mel_centres(len(gain))
    return {p: np.where((c >= lo) & (c < hi), gain, 0.0).astype(np.float32) for p, (lo, hi) in PARTS.items()}


def label(model, frames: np.ndarray, name: str) -> str:
    """The model's label for [frames, 64] log-Mel, or bench_robustness's NO_SPEECH when it refuses the file."""
    from bench_robustness import NO_SPEECH

    try:
        return model.classes[int(np.argmax(model.file_logits(frames.astype(np.float32), name)))]
    except LiserError:
        return NO_SPEECH


def score(models: dict, items: list, manifest, parts: dict[str, np.ndarray]) -> dict:
    """{label: {part: condition_metrics}} on items: clean, each part's gain, and the real telephone line."""
    from bench_robustness import condition_metrics

    from liser.data import augment_audio as A
    from liser.data.audio import load_audio
    from liser.inference.decode import features

    preds = {m: {k: [] for k in ("clean", *parts, "telephone")} for m in models}
    for it in items:
        x = load_audio(manifest.abspath(it))
        f = features(x)
        inputs = {"clean": f, **{p: np.maximum(f + g, FLOOR_DB) for p, g in parts.items()},
                  "telephone": features(A.telephone(x))}
        for m, model in models.items():
            for k, v in inputs.items():
                preds[m][k].append(label(model, v, it.id))
    truth = [it.label for it in items]
    return {m: {k: condition_metrics(truth, p[k], p["clean"]) for k in p} for m, p in preds.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", default=[], metavar="LABEL=PATH",
                    help="a model to measure (run dir, best.pt or .onnx); repeatable; default: the shipped one")
    ap.add_argument("--config", default=str(ROOT / "configs" / "default-model.yaml"))
    ap.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                    help="override config keys (folds=pooled: the shipped model's own split)")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--split", choices=("test", "val"), default="val")
    ap.add_argument("--max-per-class", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0, help="seeds the file draw")
    ap.add_argument("--json", default=str(DEFAULT_JSON))
    args = ap.parse_args(argv)

    import liser
    from bench_robustness import fold_test_items, parse_models

    from liser.core.config import Config
    from liser.data.workspace import labeled_manifest

    t0 = time.time()
    paths = parse_models(args.model) if args.model else {"default": str(DEFAULT_MODEL)}
    cfg = Config.load(args.config, overrides=args.set)
    manifest = labeled_manifest(cfg)
    name, items = fold_test_items(cfg, manifest, args.fold, args.max_per_class, args.seed, args.split)
    gain = line_gain()
    results = score({m: liser.load(p, threads=1) for m, p in paths.items()}, items, manifest, part_gains(gain))
    for m, r in results.items():
        print(f"{m} ({name}, {args.split}, {len(items)} files):")
        for k, v in r.items():
            print(f"  {k:14s} UAR {v['uar']:.3f}  labels changed {v['changed_vs_full']:.3f}")
    res = {"what": "labels a student changes under each part of a telephone line's log-Mel effect "
                   "(bench/bench_phone_parts.py)",
           "command": "OMP_NUM_THREADS=1 python bench/bench_phone_parts.py " + " ".join(argv or sys.argv[1:]),
           "date": time.strftime("%Y-%m-%d"), "machine": describe(), "config": args.config, "overrides": args.set,
           "fold": name, "split": args.split, "files": len(items), "models": paths,
           "gain_db": [round(float(g), 2) for g in gain], "parts_hz": PARTS, "results": results,
           "seconds": round(time.time() - t0, 1)}
    from liser.core.atomic import atomic_write_text

    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(args.json), json.dumps(res, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except LiserError as e:
        print(f"bench_phone_parts: {e}", file=sys.stderr)
        sys.exit(2)
