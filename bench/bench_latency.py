"""Benchmark: how fast and how small the deployed student is, next to the speech teachers (issue 12's targets, one run).

Measured in one run, on this CPU:

- start-up: the wall time a user waits for `liser predict student.onnx
  FILE` on one RAVDESS file (process start, imports, model load, one
  prediction), median of --startup-runs; target <= 0.3 s. The same child
  also says whether torch was imported (it must not be) and its peak RSS;
  and, in another fresh process, the CPU and wall time of each step
  (interpreter, each import, model load, the first file);
- real time over the 100-file RAVDESS set at the paper's 0.1 s stride:
  `liser predict student.onnx FOLDER --stride 0.1` as a user runs it
  (process start, model load, decoding included; no --threads: every core,
  one file per core), audio seconds / wall seconds, median of --repeats
  runs (`realtime_factor`); target >= 500x. Also --threads 1
  (`realtime_factor_threads1`; its stdout must equal the default run's
  byte for byte), the run directory (PyTorch), --stride 3, in process, and
  where one file's time goes, step by step (decoding, checks, resampling,
  front end, windows, onnxruntime, output). Also audio seconds per CPU
  second of the child (user + sys), what one idle core would give. The
  children get a user's environment (`user_env`: no OMP_NUM_THREADS, and
  compiled bytecode as a pip install has);
- peak memory: `liser predict student.onnx HOUR.flac --stride 0.1` on 60
  minutes of concatenated RAVDESS audio in a fresh process (VmHWM);
  target <= 300 MB;
- per 3 s clip, batch 1, 1 and 2 threads, median over many runs: the
  student (PyTorch fp32, ONNX fp32, ONNX int8; model only and waveform in,
  through the numpy front end `liser.data.frontend.features_numpy` that
  `liser predict` uses), next to HuBERT-base built from
  `transformers.HubertConfig()` defaults (the hubert-base-ls960
  architecture; random weights: timing does not depend on them; nothing is
  downloaded), raw waveform in, and the Whisper-base encoder of
  /work/shared/models/whisper-base-encoder on 3 s (Mel in); target: the
  student >= 200x faster than HuBERT-base;
- model sizes, the int8 UAR delta vs fp32 on the run's test fold (from
  `liser export --int8`), and whether the ONNX model and the run directory
  give the same labels on the 100 files.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_latency.py --run RUN_DIR
    .venv/bin/python bench/bench_latency.py          # no run: trains a quick 1-fold run first
    .venv/bin/python bench/bench_latency.py --run RUN_DIR --smoke   # every step on 10 files; a temporary JSON

Prints a markdown table; writes JSON (default bench/results/latency.json)
with startup_s, realtime_factor, peak_rss_mb_60min, ratio, student_ms,
teacher_ms, onnx_int8_bytes, int8_uar_delta, targets and the breakdown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

from bench_predict_memory import long_file  # bench/ is on sys.path when this runs as a script
from liser.inference.predict import cores  # what `liser predict` uses by default: every core this process may run on

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
RAVDESS = SHARED / "data" / "ravdess"
WHISPER = SHARED / "models" / "whisper-base-encoder"
LISER = REPO / ".venv" / "bin" / "liser"
PYCACHE = Path(tempfile.gettempdir()) / "liser-bench-pycache"  # see user_env

# `liser predict ...` in a fresh process, with what the entry point cannot say: peak RSS, torch imported or not.
# The peak is VmHWM (this process image's own), not ru_maxrss: Linux carries the parent's peak into ru_maxrss
# across fork + exec, and this benchmark's process (torch, the export) is larger than the child measured.
CHILD = """
import sys
from liser.cli import main
rc = main(sys.argv[1:])
hwm = [line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
print("BENCH", rc, hwm, int("torch" in sys.modules), file=sys.stderr)
"""


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
    from liser.core.config import Config
    from liser.student.train import train

    cfg = Config(root=str(RAVDESS), fold=0, epochs=epochs, work=work or str(out / "work"), out=str(out), threads=2)
    return train(cfg, progress=False)


def student_latency(run: Path, onnx32: Path, onnx8: Path, threads: int, runs: int) -> dict:
    """Per 3 s clip, batch 1: the front ends, the student's backends model only and waveform in (ms)."""
    import onnxruntime as ort
    import torch

    import liser
    from liser.data import audio
    from liser.data import frontend

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal(audio.CLIP_SAMPLES)).astype(np.float32)

    def numpy_front_end():  # what liser predict does: float16 features, one [1, 64, 94] window
        return np.ascontiguousarray(frontend.features_numpy(wave).T[None], dtype=np.float32)

    x = numpy_front_end()
    clf = liser.load(run).classifier
    xt = torch.from_numpy(x)

    def torch_model():
        with torch.inference_mode():
            clf(xt)

    def torch_e2e():
        with torch.inference_mode():
            clf(torch.from_numpy(numpy_front_end()))

    out = {"front_end": median_ms(numpy_front_end, runs, 20),
           "front_end_torch": median_ms(lambda: audio.log_mel(wave), runs, 20),
           "torch_fp32": median_ms(torch_model, runs, 20), "torch_fp32_e2e": median_ms(torch_e2e, runs, 20)}
    for name, path in (("onnx_fp32", onnx32), ("onnx_int8", onnx8)):
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as liser.load does
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        out[name] = median_ms(lambda: sess.run(None, {"logmel": x}), runs, 20)
        out[name + "_e2e"] = median_ms(lambda: sess.run(None, {"logmel": numpy_front_end()}), runs, 20)
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

        from liser.teachers.speech.teacher import whisper_encoder_states

        enc = WhisperForAudioClassification.from_pretrained(str(WHISPER), torch_dtype=torch.float32).encoder.eval()
        mel = torch.randn(1, enc.config.num_mel_bins, 300)  # 3 s of Whisper log-Mel (10 ms hop) -> 150 positions
        with torch.inference_mode():
            out["whisper_base_encoder"] = median_ms(lambda: whisper_encoder_states(enc, mel), runs, 3)
        out["whisper_base_encoder_params"] = sum(p.numel() for p in enc.parameters())
    return out


def ravdess_files(n: int) -> list[Path]:
    files = sorted(RAVDESS.rglob("*.flac")) + sorted(RAVDESS.rglob("*.wav"))
    return files[:: max(1, len(files) // n)][:n]


def user_env() -> dict:
    """The environment of a user's shell for the `liser` children: no thread-count variables, bytecode cached.

    OMP_NUM_THREADS / OPENBLAS_NUM_THREADS / MKL_NUM_THREADS are dropped (this
    benchmark is started with OMP_NUM_THREADS=1 for its in-process torch
    timings; a user sets none, and `--threads` alone must decide). A pip
    install compiles liser's bytecode; this checkout is an editable install
    and the session may set PYTHONDONTWRITEBYTECODE, which would compile
    liser's modules on every start (about 20 ms of CPU): the children keep
    their bytecode under PYCACHE instead, filled by the first (warm-up) run.
    """
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "PYTHONDONTWRITEBYTECODE")}
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    return env


def run_cli(args: list[str], child: bool = False) -> dict:
    """`liser ARGS` in a fresh process: wall and CPU (user + sys) seconds, stdout; with `child`, peak RSS and torch."""
    env = user_env()
    cmd = [sys.executable, "-c", CHILD, *args] if child else [str(LISER), *args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"liser {' '.join(args)} failed ({r.returncode}): {r.stderr[-1000:]}")
    out = {"wall_s": wall, "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
           "stdout": r.stdout}
    if child:
        _, rc, rss_kb, torch_imported = [x for x in r.stderr.splitlines() if x.startswith("BENCH ")][-1].split()
        out.update(peak_rss_mb=round(int(rss_kb) / 1024, 1), torch_imported=bool(int(torch_imported)))
    return out


def startup(model_path: Path, file: Path, runs: int) -> dict:
    """The wait for `liser predict MODEL FILE --threads 1` on one short file: median wall / CPU of `runs` runs."""
    args = ["predict", str(model_path), str(file), "--threads", "1"]
    run_cli(args)  # page cache and bytecode warm
    rs = [run_cli(args) for _ in range(runs)]
    probe = run_cli(args, child=True)
    walls = sorted(r["wall_s"] for r in rs)
    return {"startup_s": float(np.median(walls)), "cpu_s": float(np.median([r["cpu_s"] for r in rs])),
            "wall_s_runs": [round(w, 3) for w in walls], "runs": runs, "torch_imported": probe["torch_imported"],
            "peak_rss_mb": probe["peak_rss_mb"], "file": file.name,
            "command": f"liser predict {model_path.name} {file.name} --threads 1"}


def realtime_factor(model_path: Path, folder: Path, seconds: float, n_files: int, threads: int | None,
                    stride: float = 0.1, repeats: int = 1) -> dict:
    """`liser predict MODEL FOLDER` as a user runs it (process start included): audio seconds / wall seconds."""
    args = ["predict", str(model_path), str(folder), "--stride", str(stride), "--json"]
    args += ["--threads", str(threads)] if threads else []
    rs = [run_cli(args) for _ in range(repeats)]
    labels = {}
    for line in rs[0]["stdout"].splitlines():
        row = json.loads(line)
        labels[Path(row["path"]).name] = row["label"]
    if len(labels) != n_files:
        raise SystemExit(f"liser predict gave {len(labels)} labels for {n_files} files")
    wall = float(np.median([r["wall_s"] for r in rs]))
    cpu = float(np.median([r["cpu_s"] for r in rs]))
    return {"files": n_files, "audio_s": round(seconds, 2), "wall_s": round(wall, 3),
            "wall_s_runs": [round(r["wall_s"], 3) for r in rs], "cpu_s": round(cpu, 3),
            "realtime_factor": seconds / wall, "realtime_factor_per_cpu_s": seconds / cpu, "labels": labels,
            "stdout": rs[0]["stdout"],
            "threads": threads or cores(), "load_average": round(os.getloadavg()[0], 1),
            "command": f"liser predict {model_path.name} <folder of {n_files} RAVDESS files> --stride {stride}"
                       + (f" --threads {threads}" if threads else f" (default: every core, {cores()})")}


# A fresh process timing each step of `liser predict MODEL FILE --threads 1` on its own (CPU and wall ms), in
# the command's order: liser.cli, its one-BLAS-thread setting, numpy with liser.inference.predict, onnxruntime and the model,
# then one file's steps as predict does them (soundfile is imported by the first read).
PHASES_CHILD = r"""
import json, sys, time
t = [(time.process_time(), time.perf_counter())]
out = {}
def mark(name):
    c, w = time.process_time(), time.perf_counter()
    out[name] = [round(1000 * (c - t[-1][0]), 2), round(1000 * (w - t[-1][1]), 2)]
    t.append((c, w))
model_path, file = sys.argv[1:3]
import liser.cli; mark("import liser.cli (argparse)")
liser.cli._one_blas_thread_at_load()
import numpy; mark("import numpy (one BLAS thread)")
import liser.inference.predict as lp; mark("import liser.inference.predict (audio, frontend, util)")
from liser.inference import model as inference_model
from liser.inference import decode
import onnxruntime; mark("import onnxruntime")
m = liser.load(model_path, threads=1); mark("model load (InferenceSession)")
with lp.one_blas_thread():
    import soundfile; mark("import soundfile")
    frames, d = decode.file_frames(file); mark("first file: decode + front end")
    z = m.file_logits(frames); mark("first file: windows + onnxruntime")
    p = inference_model._prediction(z, m.classes); json.dumps({"path": file, **p.to_dict()}); mark("first file: output")
print("PHASES " + json.dumps(out))
"""


def startup_phases(model_path: Path, file: Path, runs: int) -> dict:
    """Start-up by step (fresh process, `user_env`): median CPU and wall ms of each over `runs` runs.

    "python" is the interpreter's own start (`python -c pass`, site and the
    venv's .pth files), measured apart; the rest are PHASES_CHILD's marks.
    """
    env = user_env()
    subprocess.run([sys.executable, "-c", PHASES_CHILD, str(model_path), str(file)], env=env, capture_output=True)
    rows = []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        row = {"python (interpreter start)": [1000 * (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime),
                                              1000 * wall]}
        r = subprocess.run([sys.executable, "-c", PHASES_CHILD, str(model_path), str(file)], env=env,
                           capture_output=True, text=True)
        line = [x for x in r.stdout.splitlines() if x.startswith("PHASES ")]
        if r.returncode != 0 or not line:
            raise SystemExit(f"start-up phases failed: {r.stderr[-1000:]}")
        row.update(json.loads(line[-1][len("PHASES "):]))
        rows.append(row)
    return {k: {"cpu_ms": round(float(np.median([r[k][0] for r in rows])), 2),
                "wall_ms": round(float(np.median([r[k][1] for r in rows])), 2)} for k in rows[0]}


def _timed(fn, calls: list):
    """fn, appending the (CPU s, wall s) of each call to `calls`."""
    def timed(x):
        c, w = time.thread_time(), time.perf_counter()
        z = fn(x)
        calls.append((time.thread_time() - c, time.perf_counter() - w))
        return z

    return timed


def file_phases(model_path: Path, files: list[Path], stride: float = 0.1) -> dict:
    """Where one file's time goes in `liser predict` (in process, one thread): CPU and wall ms per file by step.

    The steps of `liser.inference.decode.file_frames` and `run_predict` on a short
    file, called one by one: decoding (soundfile / libsndfile, one open),
    down-mix and checks (as liser.data.audio.load_audio, then prepare_waveform's),
    resampling (soxr; none for 16 kHz files), the numpy log-Mel front end,
    cutting the windows, the onnxruntime calls, and the output line
    (softmax, JSON). CPU is this thread's (time.thread_time). The steps'
    features are checked to equal file_frames', so this stays the command's path.
    """
    import liser
    from liser.data import audio
    from liser.inference import decode
    from liser.inference import model as inference_model
    from liser.inference import predict as lp

    model = liser.load(model_path, threads=1)
    model.stride_s = stride
    calls = []  # (CPU s, wall s) of each onnxruntime call
    model.backend = _timed(model.backend, calls)
    names = ["decode (soundfile/libsndfile)", "down-mix + checks", "resample (soxr)",
             "front end (frontend.features_numpy)", "windows (cut, float32)", "onnxruntime (8-window batches)",
             "output (softmax, JSON line)"]
    cpu, wall = np.zeros(len(names)), np.zeros(len(names))
    windows = 0
    with lp.one_blas_thread():
        for i, f in enumerate([files[0], *files]):  # the first file once more first: warm-up, not counted
            t = [(time.thread_time(), time.perf_counter())]
            x, sr = decode._read_short(Path(f))
            t.append((time.thread_time(), time.perf_counter()))
            x = audio.downmix(x, sr)
            audio.check_waveform(x, str(f))
            t.append((time.thread_time(), time.perf_counter()))
            x = audio.resample(x, sr, audio.SAMPLE_RATE)
            t.append((time.thread_time(), time.perf_counter()))
            sig = decode.prepare_waveform(x, audio.SAMPLE_RATE, str(f))  # read_input's checks (16 kHz: no resampling)
            t.append((time.thread_time(), time.perf_counter()))
            frames = decode.features(sig)
            t.append((time.thread_time(), time.perf_counter()))
            calls.clear()
            z = model.file_logits(frames)
            t.append((time.thread_time(), time.perf_counter()))
            json.dumps({"path": str(f), **inference_model._prediction(z, model.classes).to_dict()})
            t.append((time.thread_time(), time.perf_counter()))
            if i == 0:
                if not np.array_equal(frames, decode.file_frames(f)[0]):
                    raise SystemExit("file_phases: its steps no longer give liser.inference.decode.file_frames' features")
                continue
            d = np.diff(np.array(t), axis=0)  # [7 steps, (cpu, wall)]
            ort = np.array(calls).sum(axis=0)  # onnxruntime's part of the file_logits step
            cpu += [d[0, 0], d[1, 0] + d[3, 0], d[2, 0], d[4, 0], d[5, 0] - ort[0], ort[0], d[6, 0]]
            wall += [d[0, 1], d[1, 1] + d[3, 1], d[2, 1], d[4, 1], d[5, 1] - ort[1], ort[1], d[6, 1]]
            windows += len(audio.window_starts(len(frames), stride))
    n = len(files)
    return {"files": n, "windows_per_file": round(windows / n, 2), "threads": 1,
            "cpu_ms_per_file": {k: round(float(1000 * v / n), 3) for k, v in zip(names, cpu)},
            "wall_ms_per_file": {k: round(float(1000 * v / n), 3) for k, v in zip(names, wall)},
            "cpu_share": {k: round(float(v / cpu.sum()), 3) for k, v in zip(names, cpu)},
            "cpu_ms_per_file_total": round(1000 * float(cpu.sum()) / n, 3)}


def hour_memory(model_path: Path, minutes: float, tmp: Path) -> dict:
    """Peak RSS of `liser predict MODEL FILE --stride 0.1 --threads 1` on `minutes` of RAVDESS audio, fresh process."""
    f = long_file(minutes, tmp / f"ravdess-{minutes:g}min.flac")
    try:
        r = run_cli(["predict", str(model_path), str(f), "--stride", "0.1", "--threads", "1"], child=True)
    finally:
        f.unlink()
    return {"minutes": minutes, "peak_rss_mb": r["peak_rss_mb"], "wall_s": round(r["wall_s"], 1),
            "cpu_s": round(r["cpu_s"], 1), "torch_imported": r["torch_imported"],
            "command": f"liser predict {model_path.name} <{minutes:g} min of RAVDESS, 16 kHz mono FLAC> "
                       "--stride 0.1 --threads 1"}


def realtime_in_process(model_path: Path, files: list[Path], threads: int, stride: float = 0.1) -> dict:
    """The same work without process start and model load: decode + log-Mel + windows every 0.1 s + model."""
    import soundfile as sf
    import torch

    from liser.inference.model import load

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


def measure(run: Path, args, tmp: Path) -> dict:
    """Every figure of the run (the export, per-clip latencies, start-up, real time, memory), as one dict."""
    import soundfile as sf

    from liser.inference.export import export_onnx

    onnx32, onnx8 = tmp / "student.onnx", tmp / "student.int8.onnx"
    exp = export_onnx(run, onnx32, int8=onnx8, threads=1, say=lambda m: print("  export: " + m, flush=True))
    sizes = {"best_pt": (run / "best.pt").stat().st_size, "onnx_fp32": onnx32.stat().st_size,
             "onnx_int8": onnx8.stat().st_size}
    files = ravdess_files(args.files)
    folder = tmp / "files"
    folder.mkdir()
    for f in files:
        os.symlink(f, folder / f.name)
    seconds = sum(sf.info(str(f)).duration for f in files)
    print("start-up of liser predict ...", flush=True)
    start = startup(onnx32, files[0], args.startup_runs)
    start["phases"] = startup_phases(onnx32, files[0], args.startup_runs)
    print(f"  {start['startup_s']:.3f} s (CPU {start['cpu_s']:.3f} s), torch imported: {start['torch_imported']}",
          flush=True)
    print("real-time factor of liser predict ...", flush=True)
    rtf, checks = realtime_all(run, onnx32, files, folder, seconds, args.repeats)
    print(f"  {rtf['onnx_fp32_default_threads']['realtime_factor']:.0f}x on {cores()} cores, "
          f"{rtf['onnx_fp32']['realtime_factor']:.0f}x with --threads 1; the same output: "
          f"{checks['parallel_output_identical']}; labels ONNX vs run directory agree on {checks['agreement']:.0%}",
          flush=True)
    print(f"peak memory of liser predict on {args.minutes:g} minutes ...", flush=True)
    mem = hour_memory(onnx32, args.minutes, tmp)
    print(f"  {mem['peak_rss_mb']} MB", flush=True)
    lat = {}
    for n in [int(t) for t in args.threads.split(",")]:
        print(f"timing with {n} thread(s) ...", flush=True)
        lat[n] = {**student_latency(run, onnx32, onnx8, n, args.runs), **teacher_latency(n, args.teacher_runs)}
    return {"exp": exp, "sizes": sizes, "start": start, "rtf": rtf, "agreement": checks["agreement"],
            "parallel_output_identical": checks["parallel_output_identical"], "mem": mem, "lat": lat}


def realtime_all(run: Path, onnx32: Path, files: list[Path], folder: Path, seconds: float, repeats: int):
    """The real-time runs of `liser predict` (fresh processes) and in process, the per-file steps, and two checks:
    the default (every core) run's stdout equals --threads 1's byte for byte; ONNX vs run-directory labels."""
    n = len(files)
    for model in (onnx32, run):  # page cache, and each path's bytecode compiled into PYCACHE once (user_env)
        run_cli(["predict", str(model), str(files[0]), "--threads", "1"])
    rtf = {"onnx_fp32_default_threads": realtime_factor(onnx32, folder, seconds, n, None, repeats=repeats),
           "onnx_fp32": realtime_factor(onnx32, folder, seconds, n, 1, repeats=repeats),
           "torch_fp32": realtime_factor(run, folder, seconds, n, 1),
           "onnx_fp32_stride3": realtime_factor(onnx32, folder, seconds, n, 1, stride=3.0),
           "onnx_fp32_in_process": realtime_in_process(onnx32, files, 1),
           "torch_fp32_in_process": realtime_in_process(run, files, 1),
           "onnx_fp32_stride3_in_process": realtime_in_process(onnx32, files, 1, stride=3.0),
           "onnx_fp32_steps_in_process": file_phases(onnx32, files)}
    out = {k: (rtf[k].pop("labels"), rtf[k].pop("stdout"))
           for k in ("onnx_fp32", "onnx_fp32_default_threads", "torch_fp32", "onnx_fp32_stride3")}
    a, b = out["onnx_fp32"][0], out["torch_fp32"][0]
    return rtf, {"agreement": float(np.mean([a[k] == b[k] for k in a])),
                 "parallel_output_identical": out["onnx_fp32"][1] == out["onnx_fp32_default_threads"][1]}


def table(res: dict, lat: dict, rtf: dict, sizes: dict, run: Path, quick: bool) -> str:
    """The markdown the benchmark prints (and keeps in the JSON)."""
    one = lat[min(lat)]
    names = [("front_end", "student log-Mel front end, numpy (3 s)"), ("front_end_torch", "same, torch (training's)"),
             ("torch_fp32", "student PyTorch fp32 (model)"),
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
    st, mem = res["startup"], res["memory_60min"]
    lines += ["", "| figure | value | target |", "|---|---:|---|",
              f"| start-up: `{st['command']}` (median of {st['runs']}; CPU {st['cpu_s']:.2f} s) | "
              f"{st['startup_s']:.2f} s | <= 0.3 s |",
              f"| torch imported by it | {st['torch_imported']} | no |",
              f"| peak RSS: `{mem['command']}` | {mem['peak_rss_mb']:.0f} MB | <= 300 MB |",
              f"| HuBERT-base / student ONNX fp32 (waveform in, 1 thread) | {res['ratio']:.0f}x | >= 200x |",
              f"| HuBERT-base / student PyTorch fp32 (waveform in, 1 thread) | {res['ratio_by_student']['torch_fp32_e2e']:.0f}x | |",
              f"| HuBERT-base / student ONNX int8 (waveform in, 1 thread) | {res['ratio_by_student']['onnx_int8_e2e']:.0f}x | |",
              f"| Whisper-base encoder / student ONNX fp32 (1 thread) | {res['ratio_whisper_encoder']:.0f}x | |"]
    for key in ("onnx_fp32_default_threads", "onnx_fp32", "torch_fp32", "onnx_fp32_stride3"):
        r = rtf[key]
        runs = f"median of {len(r['wall_s_runs'])}, " if len(r["wall_s_runs"]) > 1 else ""
        lines.append(f"| real time: `{r['command']}`, {r['audio_s']:.0f} s audio ({runs}{r['wall_s']:.2f} s; "
                     f"{r['realtime_factor_per_cpu_s']:.0f}x per CPU second) | {r['realtime_factor']:.0f}x | "
                     + (">= 500x |" if key == "onnx_fp32_default_threads" else "|"))
    lines.append(f"| stdout of the default (every core) run = that of --threads 1, byte for byte | "
                 f"{res['parallel_output_identical']} | yes |")
    for key, label in (("onnx_fp32_in_process", "ONNX fp32 in process (no start-up), 1 thread"),
                       ("torch_fp32_in_process", "PyTorch fp32 in process (no start-up), 1 thread"),
                       ("onnx_fp32_stride3_in_process", "ONNX fp32 --stride 3 in process, 1 thread")):
        r = rtf[key]
        lines.append(f"| real time: {label} | {r['realtime_factor']:.0f}x ({r['wall_s']:.2f} s) | |")
    lines += [f"| labels, ONNX vs run directory, {rtf['onnx_fp32']['files']} files | "
              f"{res['labels_onnx_vs_run_agreement']:.0%} agree | |",
              f"| best.pt / ONNX fp32 / ONNX int8 | {sizes['best_pt'] / 1000:.0f} / {sizes['onnx_fp32'] / 1000:.0f} / "
              f"{sizes['onnx_int8'] / 1000:.0f} KB | int8 < 200 KB |",
              f"| test UAR fp32 -> int8 ({res['int8_method']}) | {res['fp32_uar']:.3f} -> {res['int8_uar']:.3f} "
              f"({res['int8_uar_delta'] * 100:+.1f} pt) | within 1 pt |",
              "", steps_table(res["startup"]["phases"], rtf["onnx_fp32_steps_in_process"]),
              "", f"run: {run}{' (quick run trained by this benchmark)' if quick else ''}; test UAR {res['run_test_uar']:.3f}",
              f"machine: {res['machine']}"]
    return "\n".join(lines)


def steps_table(start: dict, steps: dict) -> str:
    """Markdown: where start-up and one file's time go (CPU and wall ms, medians / means per file)."""
    lines = ["| start-up step (`liser predict student.onnx FILE --threads 1`, fresh process, median) | CPU ms | wall ms |",
             "|---|---:|---:|"]
    lines += [f"| {k} | {v['cpu_ms']:.1f} | {v['wall_ms']:.1f} |" for k, v in start.items()]
    lines += [f"| total | {sum(v['cpu_ms'] for v in start.values()):.1f} | {sum(v['wall_ms'] for v in start.values()):.1f} |",
              "", f"| per file ({steps['files']} RAVDESS files, {steps['windows_per_file']:.1f} windows of 3 s each at "
              "0.1 s, in process, 1 thread) | CPU ms | share | wall ms |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {v:.2f} | {steps['cpu_share'][k]:.0%} | {steps['wall_ms_per_file'][k]:.2f} |"
              for k, v in steps["cpu_ms_per_file"].items()]
    lines.append(f"| total | {steps['cpu_ms_per_file_total']:.2f} | | |")
    return "\n".join(lines)


def main() -> None:  # over 60 lines: the arguments, then the JSON's fields in the order they are written
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", help="trained run directory (default: runs/bench/no-dstl/fold0 if finished, else a quick run)")
    ap.add_argument("--quick-epochs", type=int, default=5, help="epochs of the quick run trained when no run is given")
    ap.add_argument("--work", help="quick run: cache root to reuse (e.g. runs/bench/work: its RAVDESS features)")
    ap.add_argument("--threads", default="1,2", help="thread counts to time per clip")
    ap.add_argument("--runs", type=int, default=300, help="timed runs per student measurement")
    ap.add_argument("--teacher-runs", type=int, default=15, help="timed runs per teacher measurement")
    ap.add_argument("--files", type=int, default=100, help="RAVDESS files for the `liser predict` real-time factor")
    ap.add_argument("--repeats", type=int, default=3, help="runs of `liser predict` over the files (median)")
    ap.add_argument("--startup-runs", type=int, default=7, help="runs of `liser predict` on one file (median)")
    ap.add_argument("--minutes", type=float, default=60, help="length of the file for the peak-memory figure")
    ap.add_argument("--json", default=None, help="output (default bench/results/latency.json; with --smoke, a temporary file)")
    ap.add_argument("--load-note", default="", help="what else ran on the machine, said in the JSON's `machine`")
    ap.add_argument("--smoke", action="store_true",
                    help="a quick check that every measurement runs: 10 files, 1 repeat, 2 start-ups, 1 minute, "
                         "few timed runs, 1 thread; its figures are not the benchmark's")
    args = ap.parse_args()
    if args.smoke:
        args.files, args.repeats, args.startup_runs, args.minutes = 10, 1, 2, 1.0
        args.runs, args.teacher_runs, args.threads = 20, 1, "1"
        args.json = args.json or str(Path(tempfile.gettempdir()) / "liser-latency-smoke.json")
    args.json = args.json or str(REPO / "bench" / "results" / "latency.json")

    t_start = time.time()
    load_start = os.getloadavg()[0]
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
        m = measure(run, args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    exp, sizes, rtf, lat = m["exp"], m["sizes"], m["rtf"], m["lat"]

    one = lat[min(lat)]
    # headline: the deployed path (`liser export` fp32, parity 1e-3 with PyTorch), waveform in, 1 thread
    student_ms = one["onnx_fp32_e2e"]
    teacher_ms = one["hubert_base"]
    res = {
        "date": str(date.today()),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
                   + (f", {args.load_note}" if args.load_note else "")
                   + f" (load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end)",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "run": str(run), "quick_run": quick, "run_test_uar": metrics["test"]["uar"],
        "startup_s": m["start"]["startup_s"],
        "startup_definition": "wall time of `liser predict student.onnx FILE --threads 1` on one RAVDESS file "
                              "(process start, imports, model load, one prediction), median",
        "startup": m["start"],
        # headline: what a user gets by default, `liser predict student.onnx FOLDER --stride 0.1` (no --threads:
        # every core, one file per core); --threads 1 next to it
        "realtime_factor": rtf["onnx_fp32_default_threads"]["realtime_factor"],
        "realtime_definition": f"liser predict student.onnx FOLDER --stride 0.1 ({rtf['onnx_fp32_default_threads']['files']} "
                               f"RAVDESS files), default threads (every core: {cores()} here, one file per core), "
                               "process start, model load and decoding included; audio s / wall s, median of runs",
        "realtime_factor_threads1": rtf["onnx_fp32"]["realtime_factor"],
        "realtime_factor_per_cpu_s": rtf["onnx_fp32_default_threads"]["realtime_factor_per_cpu_s"],
        "cores": cores(),
        "parallel_output_identical": m["parallel_output_identical"],
        "realtime": rtf,
        "labels_onnx_vs_run_agreement": m["agreement"],
        "peak_rss_mb_60min": m["mem"]["peak_rss_mb"],
        "memory_60min": m["mem"],
        "student_ms": student_ms,
        "student_definition": "ONNX fp32 (onnxruntime), 1 thread, batch 1, one 3 s clip: numpy log-Mel front end + student",
        "teacher_ms": teacher_ms,
        "teacher_definition": "HuBERT-base (HubertConfig() defaults), 1 thread, batch 1, 3 s raw waveform",
        "ratio": teacher_ms / student_ms,
        "ratio_by_student": {k: teacher_ms / one[k] for k in ("torch_fp32", "torch_fp32_e2e", "onnx_fp32",
                                                               "onnx_fp32_e2e", "onnx_int8", "onnx_int8_e2e")},
        "ratio_whisper_encoder": one.get("whisper_base_encoder", float("nan")) / student_ms,
        "onnx_int8_bytes": sizes["onnx_int8"], "sizes_bytes": sizes,
        "int8_method": exp.get("int8_method"),
        "fp32_uar": exp.get("fp32_uar"), "int8_uar": exp.get("int8_uar"),
        "int8_uar_delta": exp.get("int8_uar_delta"),
        "int8_candidates": exp.get("int8_candidates"),
        "onnx_parity_max_abs_diff": exp.get("max_abs_diff"),
        "latency_ms": {str(k): v for k, v in lat.items()},
        "wall_s": round(time.time() - t_start, 1),
    }
    res["targets"] = {
        "startup<=0.3s": res["startup_s"] <= 0.3,
        "no_torch": not m["start"]["torch_imported"] and not m["mem"]["torch_imported"],
        "realtime>=500": res["realtime_factor"] >= 500,
        "parallel_output_identical": m["parallel_output_identical"],
        "peak_rss_60min<=300MB": res["peak_rss_mb_60min"] <= 300,
        "ratio>=200": res["ratio"] >= 200,
        "int8<200KB": sizes["onnx_int8"] < 200_000,
        "int8_uar_within_1pt": res["int8_uar_delta"] is not None and abs(res["int8_uar_delta"]) <= 0.01,
    }
    res["table"] = table(res, lat, rtf, sizes, run, quick)
    print(res["table"])
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_json = out.with_name(f".{out.name}.tmp")
    tmp_json.write_text(json.dumps(res, indent=1) + "\n")
    os.replace(tmp_json, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
