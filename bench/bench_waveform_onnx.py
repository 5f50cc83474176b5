"""Waveform-in ONNX graphs against `liser predict`: parity on 200 real files, short and long clips, and speed.

    PYTHONPATH=src python bench/bench_waveform_onnx.py [--run CKPT_OR_RUN ...] [--node]

Models: the packaged default (int8, "speech" windowing) and, for each
`--run`, its fp32 and int8 exports (liser.inference.export, checked on the same
files). Each is wrapped by liser.inference.waveform_onnx.write (DFT as MatMul) and
compared with `liser predict`'s EmotionModel on its log-Mel student:

- 200 real files, 40 from each of RAVDESS, CREMA-D, EmoDB, TESS, URDU
  (spread over each corpus's sorted list): labels equal, max |dp|, and
  refusals ("no speech found") against the graph's speech_s;
- short clips: the first 1.0 s and 2.0 s of 20 of them (< 3 s);
- long clips: 4 clips of 61-90 s, real files concatenated.

Speed (1 thread, median per file): the graph in onnxruntime (Python) vs
`liser predict`'s in-process path on the same signal (numpy front end +
log-Mel session), and, with `--node`, the graph in onnxruntime-node
(examples/node/bench.js, after `npm ci` there). Prints the figures and
writes bench/results/waveform_onnx.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "bench" / "results" / "waveform_onnx.json"
PER_CORPUS = 40
CORPORA = {"ravdess": "Actor_*/*.flac", "cremad": "AudioWAV/*", "emodb": "wav/*.flac", "tess": "*/*", "urdu": "*/*"}
SHORT_S = (1.0, 2.0)
SHORT_FILES = 20
LONG_CLIPS = 4
SPEED_FILES = 40


def real_files(data: Path = DATA) -> list[Path]:
    """PER_CORPUS real files of each corpus, spread over its sorted list."""
    out = []
    for corpus, pattern in CORPORA.items():
        files = sorted(p for p in (data / corpus).glob(pattern) if p.is_file())
        out += files[:: max(1, len(files) // PER_CORPUS)][:PER_CORPUS]
    return out


def clips(signals: list[np.ndarray]) -> dict[str, list[np.ndarray]]:
    """Short cuts (< 3 s) and long clips (> 60 s, real files end to end) of the real signals."""
    short = [s[: int(t * 16000)] for s in signals[:: len(signals) // SHORT_FILES][:SHORT_FILES] for t in SHORT_S]
    long, rng = [], np.random.default_rng(0)
    for i in range(LONG_CLIPS):
        target = int((61 + 29 * i / max(1, LONG_CLIPS - 1)) * 16000)
        parts, n = [], 0
        for j in rng.permutation(len(signals)):
            parts.append(signals[j])
            n += len(signals[j])
            if n >= target:
                break
        long.append(np.concatenate(parts)[:target])
    return {"short": short, "long": long}


def compare(sess, model, sig: np.ndarray) -> dict:
    """One signal through the graph and through `liser predict` (EmotionModel.predict)."""
    from liser.inference import waveform_onnx
    from liser.core.errors import LiserError

    out = waveform_onnx.run(sess, sig)
    s = out.get(waveform_onnx.SPEECH_OUTPUT)
    graph_refuses = bool(s is not None and float(s) < waveform_onnx.MIN_SPEECH_S)
    try:
        p = model.predict(sig, 16000)
    except LiserError:
        return {"refused": True, "graph_refuses": graph_refuses}
    ref = np.array([p.probabilities[c] for c in model.classes])
    return {"refused": False, "graph_refuses": graph_refuses, "dp": float(np.abs(ref - out["probabilities"]).max()),
            "same": p.label == model.classes[int(np.argmax(out["probabilities"]))]}


def summary(rows: list[dict]) -> dict:
    scored = [r for r in rows if not r["refused"]]
    return {"n": len(rows), "scored": len(scored), "same_label": sum(r["same"] for r in scored),
            "max_dp": max((r["dp"] for r in scored), default=0.0),
            "median_dp": statistics.median([r["dp"] for r in scored]) if scored else 0.0,
            "refused_by_predict": len(rows) - len(scored),
            "refusals_agree": sum(r["refused"] == r["graph_refuses"] for r in rows)}


def parity(graph: Path, student: Path, sets: dict[str, list[np.ndarray]]) -> dict:
    import liser
    from liser.inference import waveform_onnx

    sess, model = waveform_onnx.session(graph), liser.load(student, threads=1)
    return {name: summary([compare(sess, model, s) for s in sigs]) for name, sigs in sets.items()}


def speed(graph: Path, student: Path, sigs: list[np.ndarray]) -> dict:
    """Median ms per signal on 1 thread: the graph vs `liser predict`'s in-process path (after one warm-up each)."""
    import liser
    from liser.inference import waveform_onnx

    sess, model = waveform_onnx.session(graph), liser.load(student, threads=1)
    g, p = [], []
    for s in sigs:
        waveform_onnx.run(sess, s)
        t = time.perf_counter()
        waveform_onnx.run(sess, s)
        g.append(1000 * (time.perf_counter() - t))
        try:
            model.predict(s, 16000)
            t = time.perf_counter()
            model.predict(s, 16000)
            p.append(1000 * (time.perf_counter() - t))
        except Exception:
            pass
    return {"graph_ms": statistics.median(g), "predict_ms": statistics.median(p) if p else None, "n": len(sigs)}


def node_speed(graph: Path, sigs: list[np.ndarray], tmp: Path) -> dict | None:
    """examples/node/bench.js on the signals as float WAVs; None when node or its node_modules are missing."""
    import soundfile as sf

    example = ROOT / "examples" / "node"
    if not (example / "node_modules" / "onnxruntime-node").is_dir():
        return None
    wavs = []
    for i, s in enumerate(sigs):
        wavs.append(tmp / f"n{i}.wav")
        sf.write(wavs[-1], s, 16000, subtype="FLOAT")
    r = subprocess.run(["node", str(example / "bench.js"), str(graph), *map(str, wavs)], capture_output=True, text=True,
                       timeout=1200, check=True)
    res = json.loads(r.stdout)
    return {"ms_median": res["ms_median"], "files": res["files"],
            "onnxruntime_node": json.loads((example / "package.json").read_text())["dependencies"]["onnxruntime-node"]}


def export_run(label: str, run: str, d: Path, files: list[Path]) -> list[tuple[str, Path]]:
    """fp32 and int8 log-Mel students of a run (liser.inference.export, checked on the first 60 of `files`)."""
    from liser.inference.export import export_onnx

    out = d / f"{label}.onnx"
    export_onnx(run, out, int8=True, check_files=[str(f) for f in files[:60]], say=lambda m: None)
    return [("fp32", out), ("int8", out.with_name(out.stem + ".int8.onnx"))]


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    return {"nproc": os.cpu_count(), "cpu": cpu, "loadavg": os.getloadavg(), "python": platform.python_version()}


def main(argv=None) -> int:
    import onnx
    import onnxruntime

    from liser.inference import decode
    from liser.inference import waveform_onnx
    from liser.inference.default_model import DEFAULT_ONNX

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", action="append", default=[], metavar="[LABEL=]RUN",
                    help="run directory or best.pt: its fp32 and int8 exports (LABEL: their name, default RUN's stem)")
    ap.add_argument("--node", action="store_true", help="also time examples/node (needs npm ci there)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    t0, load0 = time.time(), os.getloadavg()
    files = real_files()
    signals = [decode.read_input(f) for f in files]
    sets = {"real_200": signals, **clips(signals)}
    print(f"{len(files)} real files; {len(sets['short'])} short clips; long clips of "
          f"{', '.join(f'{len(s) / 16000:.0f}' for s in sets['long'])} s", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        models = [("default-int8", DEFAULT_ONNX)]
        for spec in args.run:
            label, run = spec.split("=", 1) if "=" in spec else (Path(spec).stem, spec)
            models += [(f"{label}-{q}", p) for q, p in export_run(label, run, d, files)]
        for name, student in models:
            graph = waveform_onnx.write(student, d / f"{name}-waveform.onnx")
            meta = {p.key: p.value for p in onnx.load(str(student)).metadata_props}
            res = {"student": str(student) if student == DEFAULT_ONNX else name,
                   "windowing": json.loads(meta["front_end"]).get("windowing", "pad"),
                   "quantization": meta.get("quantization"), "bytes": graph.stat().st_size,
                   **parity(graph, student, sets)}
            results[name] = res
            for k in sets:
                r = res[k]
                print(f"{name:>22} {k:>8}: labels {r['same_label']}/{r['scored']}, max |dp| {r['max_dp']:.1e} "
                      f"(median {r['median_dp']:.1e}), refusals agree {r['refusals_agree']}/{r['n']}", flush=True)
        default_graph = d / "default-int8-waveform.onnx"
        speeds = {"3s_files": speed(default_graph, DEFAULT_ONNX, signals[:: len(signals) // SPEED_FILES][:SPEED_FILES]),
                  "long_clips": speed(default_graph, DEFAULT_ONNX, sets["long"])}
        if args.node:
            speeds["node_3s_files"] = node_speed(default_graph, signals[:: len(signals) // SPEED_FILES][:SPEED_FILES], d)
            speeds["node_long_clips"] = node_speed(default_graph, sets["long"], d)
        for k, v in speeds.items():
            print(f"speed {k}: {v}", flush=True)
    report = {"command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
              "machine": {**machine(), "loadavg_start": load0}, "onnxruntime": onnxruntime.__version__,
              "seconds": round(time.time() - t0, 1), "files": {"real": len(files), "per_corpus": PER_CORPUS,
                                                               "short_s": SHORT_S, "long_s": [round(len(s) / 16000, 1) for s in sets["long"]]},
              "dft": "matmul", "parity": results, "speed_ms_1_thread": speeds,
              "note": "dp = max |probability difference| against `liser predict` (EmotionModel.predict on the same "
                      "16 kHz signal, its log-Mel student); speed: medians per file, after one warm-up"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
