"""Benchmark: how fast and how small the deployed student is, next to the speech teachers.

Same process, this CPU, 1 and 2 threads, batch 1, median over many runs, per
3 s clip (48,000 samples at 16 kHz):

- the student: PyTorch fp32, ONNX fp32, ONNX int8; model only (log-Mel
  window in) and end to end (waveform in: `liser.audio.log_mel` + model);
- HuBERT-base built from `transformers.HubertConfig()` defaults (the
  hubert-base-ls960 architecture; random weights: timing does not depend on
  them; nothing is downloaded), raw waveform in;
- the Whisper-base encoder of /work/shared/models/whisper-base-encoder on the
  3 s input (300 Mel frames -> 150 positions; positional embeddings sliced,
  no 30 s padding), Mel features in.

Also: the real-time factor of `liser predict` over a folder of RAVDESS files
(audio seconds / wall seconds, process start, model load and decoding
included), model file sizes, and the int8 UAR delta vs fp32 on the run's
test fold (from `liser export --int8`).

    .venv/bin/python bench/bench_latency.py --run runs/bench/no-dstl/fold0
    .venv/bin/python bench/bench_latency.py          # no run: trains a quick 1-fold run first

Prints a markdown table; writes JSON (default bench/results/latency.json)
with student_ms, teacher_ms, ratio, realtime_factor, onnx_int8_bytes,
int8_uar_delta and the per-thread breakdown.
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
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
RAVDESS = SHARED / "data" / "ravdess"
WHISPER = SHARED / "models" / "whisper-base-encoder"


def median_ms(fn, runs: int, warmup: int) -> float:
    """Median wall time of fn() in milliseconds."""
    for _ in range(warmup):
        fn()
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return float(np.median(t) * 1000)


def quick_run(out: Path, epochs: int, work: str | None) -> Path:
    """A 1-fold RAVDESS no-dstl run (shipped fold 0) with few epochs, for when no trained run is given."""
    from liser.config import Config
    from liser.train import train

    cfg = Config(root=str(RAVDESS), fold=0, epochs=epochs, work=work or str(out / "work"), out=str(out), threads=2)
    return train(cfg, progress=False)


def student_latency(run: Path, onnx32: Path, onnx8: Path, threads: int, runs: int) -> dict:
    import onnxruntime as ort
    import torch

    import liser
    from liser import audio

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal(audio.CLIP_SAMPLES)).astype(np.float32)
    x = audio.log_mel(wave)[None].numpy()  # [1, 64, 94]
    clf = liser.load(run).classifier
    xt = torch.from_numpy(x)

    def torch_model():
        with torch.inference_mode():
            clf(xt)

    def torch_e2e():
        with torch.inference_mode():
            clf(audio.log_mel(wave)[None])

    out = {"front_end": median_ms(lambda: audio.log_mel(wave), runs, 20),
           "torch_fp32": median_ms(torch_model, runs, 20), "torch_fp32_e2e": median_ms(torch_e2e, runs, 20)}
    for name, path in (("onnx_fp32", onnx32), ("onnx_int8", onnx8)):
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as liser.load does
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        out[name] = median_ms(lambda: sess.run(None, {"logmel": x}), runs, 20)
        out[name + "_e2e"] = median_ms(lambda: sess.run(None, {"logmel": audio.log_mel(wave)[None].numpy()}), runs, 20)
    return out


def teacher_latency(threads: int, runs: int) -> dict:
    import torch
    from transformers import HubertConfig, HubertModel

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    out = {}
    hubert = HubertModel(HubertConfig()).eval()  # hubert-base architecture, random weights, no download
    wave = 0.1 * torch.randn(1, 48_000)
    with torch.inference_mode():
        out["hubert_base"] = median_ms(lambda: hubert(wave), runs, 3)
    out["hubert_base_params"] = sum(p.numel() for p in hubert.parameters())
    del hubert
    if (WHISPER / "config.json").is_file():
        from transformers import WhisperForAudioClassification

        from liser.teachers.speech import whisper_encoder_states

        enc = WhisperForAudioClassification.from_pretrained(str(WHISPER), torch_dtype=torch.float32).encoder.eval()
        mel = torch.randn(1, enc.config.num_mel_bins, 300)  # 3 s of Whisper log-Mel (10 ms hop) -> 150 positions
        with torch.inference_mode():
            out["whisper_base_encoder"] = median_ms(lambda: whisper_encoder_states(enc, mel), runs, 3)
        out["whisper_base_encoder_params"] = sum(p.numel() for p in enc.parameters())
    return out


def ravdess_files(n: int) -> list[Path]:
    files = sorted(RAVDESS.rglob("*.flac")) + sorted(RAVDESS.rglob("*.wav"))
    return files[:: max(1, len(files) // n)][:n]


def realtime_factor(model_path: Path, files: list[Path], threads: int, stride: float = 0.1) -> dict:
    """`liser predict MODEL FOLDER` as a user runs it (process start included): audio seconds / wall seconds."""
    import soundfile as sf

    tmp = Path(tempfile.mkdtemp(prefix="liser-rtf-"))
    try:
        for f in files:
            os.symlink(f, tmp / f.name)
        seconds = sum(sf.info(str(f)).duration for f in files)
        cmd = [str(REPO / ".venv" / "bin" / "liser"), "predict", str(model_path), str(tmp), "--threads", str(threads),
               "--stride", str(stride)]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        wall = time.perf_counter() - t0
        if r.returncode != 0 or len(r.stdout.strip().splitlines()) != len(files):
            raise SystemExit(f"liser predict failed ({r.returncode}): {r.stderr[-500:]}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"files": len(files), "audio_s": round(seconds, 2), "wall_s": round(wall, 3),
            "realtime_factor": seconds / wall,
            "command": f"liser predict {model_path.name} <folder of {len(files)} RAVDESS files> --threads {threads} --stride {stride}"}


def realtime_in_process(model_path: Path, files: list[Path], threads: int, stride: float = 0.1) -> dict:
    """The same work without process start and model load: decode + log-Mel + windows every 0.1 s + model."""
    import soundfile as sf
    import torch

    from liser.predict import load

    torch.set_num_threads(threads)
    model = load(model_path, threads=threads)  # liser.load(path) with a thread count
    model.stride_s = stride
    model.predict_file(files[0])  # warm-up
    seconds = sum(sf.info(str(f)).duration for f in files)
    t0 = time.perf_counter()
    for f in files:
        model.predict_file(f)
    wall = time.perf_counter() - t0
    return {"files": len(files), "audio_s": round(seconds, 2), "wall_s": round(wall, 3), "realtime_factor": seconds / wall,
            "ms_per_file": 1000 * wall / len(files)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", help="trained run directory (default: runs/bench/no-dstl/fold0 if finished, else a quick run)")
    ap.add_argument("--quick-epochs", type=int, default=5, help="epochs of the quick run trained when no run is given")
    ap.add_argument("--work", help="quick run: cache root to reuse (e.g. runs/bench/work: its RAVDESS features)")
    ap.add_argument("--threads", default="1,2", help="thread counts to time")
    ap.add_argument("--runs", type=int, default=300, help="timed runs per student measurement")
    ap.add_argument("--teacher-runs", type=int, default=15, help="timed runs per teacher measurement")
    ap.add_argument("--files", type=int, default=100, help="RAVDESS files for the `liser predict` real-time factor")
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "latency.json"))
    args = ap.parse_args()

    from liser.export import export_onnx

    t_start = time.time()
    quick = False
    run = Path(args.run) if args.run else REPO / "runs" / "bench" / "no-dstl" / "fold0"
    if not (run / "metrics.json").is_file():
        if args.run:
            raise SystemExit(f"{run}: not a finished run (no metrics.json)")
        quick = True
        print(f"no finished run at {run}: training a quick RAVDESS fold-0 no-dstl run ({args.quick_epochs} epochs)",
              flush=True)
        run = quick_run(REPO / "runs" / "bench-latency-quick", args.quick_epochs, args.work)
    metrics = json.loads((run / "metrics.json").read_text())

    tmp = Path(tempfile.mkdtemp(prefix="liser-bench-"))
    try:
        onnx32, onnx8 = tmp / "student.onnx", tmp / "student.int8.onnx"
        exp = export_onnx(run, onnx32, int8=onnx8, threads=1, say=lambda m: print("  export: " + m, flush=True))
        sizes = {"best_pt": (run / "best.pt").stat().st_size, "onnx_fp32": onnx32.stat().st_size,
                 "onnx_int8": onnx8.stat().st_size}
        lat = {}
        for n in [int(t) for t in args.threads.split(",")]:
            print(f"timing with {n} thread(s) ...", flush=True)
            lat[n] = {**student_latency(run, onnx32, onnx8, n, args.runs), **teacher_latency(n, args.teacher_runs)}
        print("real-time factor of liser predict ...", flush=True)
        files = ravdess_files(args.files)
        rtf = {"onnx_fp32": realtime_factor(onnx32, files, 1), "torch_fp32": realtime_factor(run, files, 1),
               "onnx_fp32_in_process": realtime_in_process(onnx32, files, 1),
               "torch_fp32_in_process": realtime_in_process(run, files, 1),
               "onnx_fp32_stride3": realtime_factor(onnx32, files, 1, stride=3.0),
               "onnx_fp32_stride3_in_process": realtime_in_process(onnx32, files, 1, stride=3.0)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    one = lat[min(lat)]
    # headline: the deployed path (`liser export` fp32, parity 1e-3 with PyTorch), waveform in, 1 thread
    student_ms = one["onnx_fp32_e2e"]
    teacher_ms = one["hubert_base"]
    res = {
        "date": str(date.today()),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; shared and busy "
                   f"(load average {os.getloadavg()[0]:.1f} at the end)",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "run": str(run), "quick_run": quick, "run_test_uar": metrics["test"]["uar"],
        "student_ms": student_ms,
        "student_definition": "ONNX fp32 (onnxruntime), 1 thread, batch 1, one 3 s clip: log-Mel front end + student",
        "teacher_ms": teacher_ms,
        "teacher_definition": "HuBERT-base (HubertConfig() defaults), 1 thread, batch 1, 3 s raw waveform",
        "ratio": teacher_ms / student_ms,
        "ratio_by_student": {k: teacher_ms / one[k] for k in ("torch_fp32", "torch_fp32_e2e", "onnx_fp32",
                                                               "onnx_fp32_e2e", "onnx_int8", "onnx_int8_e2e")},
        "ratio_whisper_encoder": one.get("whisper_base_encoder", float("nan")) / student_ms,
        "realtime_factor": rtf["onnx_fp32"]["realtime_factor"],
        "realtime_definition": "liser predict student.onnx FOLDER (RAVDESS files, 1 thread), process start, "
                               "model load and decoding included",
        "realtime": rtf,
        "onnx_int8_bytes": sizes["onnx_int8"], "sizes_bytes": sizes,
        "int8_method": exp.get("int8_method"),
        "fp32_uar": exp.get("fp32_uar"), "int8_uar": exp.get("int8_uar"),
        "int8_uar_delta": exp.get("int8_uar_delta"),
        "int8_candidates": exp.get("int8_candidates"),
        "onnx_parity_max_abs_diff": exp.get("max_abs_diff"),
        "latency_ms": {str(k): v for k, v in lat.items()},
        "targets": {},
        "wall_s": round(time.time() - t_start, 1),
    }
    res["targets"] = {
        "ratio>=200": res["ratio"] >= 200,
        "realtime>=500": res["realtime_factor"] >= 500,
        "int8<200KB": sizes["onnx_int8"] < 200_000,
        "int8_uar_within_1pt": res["int8_uar_delta"] is not None and abs(res["int8_uar_delta"]) <= 0.01,
    }

    names = [("front_end", "student log-Mel front end (3 s)"), ("torch_fp32", "student PyTorch fp32 (model)"),
             ("torch_fp32_e2e", "student PyTorch fp32 (waveform in)"), ("onnx_fp32", "student ONNX fp32 (model)"),
             ("onnx_fp32_e2e", "student ONNX fp32 (waveform in)"), ("onnx_int8", "student ONNX int8 (model)"),
             ("onnx_int8_e2e", "student ONNX int8 (waveform in)"), ("hubert_base", "HuBERT-base teacher (waveform in)"),
             ("whisper_base_encoder", "Whisper-base encoder, 150 positions (Mel in)")]
    ks = sorted(lat)
    lines = ["| per 3 s clip, batch 1 | " + " | ".join(f"{k} thread{'s' if k > 1 else ''} (ms)" for k in ks) + " |",
             "|---|" + "---:|" * len(ks)]
    for key, label in names:
        if key in one:
            lines.append(f"| {label} | " + " | ".join(f"{lat[k][key]:.2f}" for k in ks) + " |")
    lines += ["", "| figure | value | target |", "|---|---:|---|",
              f"| HuBERT-base / student ONNX fp32 (waveform in, 1 thread) | {res['ratio']:.0f}x | >= 200x |",
              f"| HuBERT-base / student PyTorch fp32 (waveform in, 1 thread) | {res['ratio_by_student']['torch_fp32_e2e']:.0f}x | |",
              f"| HuBERT-base / student ONNX int8 (waveform in, 1 thread) | {res['ratio_by_student']['onnx_int8_e2e']:.0f}x | |",
              f"| Whisper-base encoder / student ONNX fp32 (1 thread) | {res['ratio_whisper_encoder']:.0f}x | |"]
    for key, label in (("onnx_fp32", "`liser predict student.onnx`"), ("torch_fp32", "`liser predict RUN` (PyTorch)"),
                       ("onnx_fp32_in_process", "ONNX fp32 in process (no start-up)"),
                       ("torch_fp32_in_process", "PyTorch fp32 in process (no start-up)"),
                       ("onnx_fp32_stride3", "`liser predict student.onnx --stride 3` (non-overlapping windows)"),
                       ("onnx_fp32_stride3_in_process", "ONNX fp32 --stride 3 in process")):
        r = rtf[key]
        lines.append(f"| real time: {label}, {r['files']} files, {r['audio_s']:.0f} s audio, 1 thread | "
                     f"{r['realtime_factor']:.0f}x ({r['wall_s']:.1f} s) | " + (">= 500x |" if key == "onnx_fp32" else "|"))
    lines += [
              f"| best.pt / ONNX fp32 / ONNX int8 | {sizes['best_pt'] / 1000:.0f} / {sizes['onnx_fp32'] / 1000:.0f} / "
              f"{sizes['onnx_int8'] / 1000:.0f} KB | int8 < 200 KB |",
              f"| test UAR fp32 -> int8 ({res['int8_method']}) | {res['fp32_uar']:.3f} -> {res['int8_uar']:.3f} "
              f"({res['int8_uar_delta'] * 100:+.1f} pt) | within 1 pt |",
              "", f"run: {run}{' (quick run trained by this benchmark)' if quick else ''}; test UAR {res['run_test_uar']:.3f}",
              f"machine: {res['machine']}"]
    table = "\n".join(lines)
    res["table"] = table
    print(table)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_json = out.with_name(f".{out.name}.tmp")
    tmp_json.write_text(json.dumps(res, indent=1) + "\n")
    os.replace(tmp_json, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
