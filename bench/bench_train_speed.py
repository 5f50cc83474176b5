"""Benchmark: how fast the student trains on one CPU core (issue 14 §1 "One machine, lean").

Measured on this machine, each in a fresh child process on one thread:

- peak: a 1024 x 1024 float32 matmul (torch, MKL), 2 n^3 FLOPs over the
  thread's CPU seconds, best and median of --matmul-reps blocks of 10;
- the student's training GFLOP/s on a fold-0 run, `liser train
  configs/no-dstl.yaml --fold 0 --set epochs=2 threads=1` as the command runs
  it (its malloc setting included): FLOPs per training sample (forward x 3
  minus conv1's input gradient, which nothing needs; from
  liser.student.model.flops_per_sample) x the samples the steps saw, over the CPU
  seconds of the training steps (liser.student.train.run_epoch timed with the
  thread's CPU clock: on one thread that is the run's CPU) and over their
  wall seconds (epochs.csv train_s); its ratio to the matmul peak (target
  >= 0.7). Per step too (the thread's CPU clock at each next_batch): min
  and median CPU ms of the full steps, and the best step's GFLOP/s, which
  the other processes' load slowed least;
- user and sys CPU seconds of the whole training child (getrusage), sys /
  user (target <= 0.1);
- per epoch: wall seconds (epochs.csv epoch_s), CPU seconds of the steps and
  of the validation; CPU of the test evaluation at the 0.1 s stride (`finish`)
  and of the start (imports, features, model);
- a projection of the 5-fold 50-epoch no-dstl run on 2 cores at these CPU
  seconds (target <= 15 min): `liser cv --jobs 2` runs folds 0-1, 2-3, then
  4, so 3 folds one after the other on a core, each start + 50 epochs +
  test. CPU seconds on a loaded machine run long, so an idle one does better.

CPU seconds, not wall seconds, are the figures to compare: the machine is
shared with a background experiment grid (load averages are recorded), so a
wall second holds well under one CPU second of this run. The load slows CPU
seconds too (shared caches and memory bandwidth; this virtual machine
reports no steal time): the same step measured 146 ms and 350 ms at
different hours. Compare entries of one invocation, and the best steps.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_train_speed.py
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_train_speed.py --src before=../wt-base/src --src after=src \\
        --epochs 1 --rounds 2
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_train_speed.py --rounds 0 --profile --compare-precision

`--variants` also times training steps done in ways that change the
results (bfloat16 autocast, torch.compile) against the plain path, step by
step in turns, on real crops, and says whether the weights stay the same
(`--rounds 0 --variants`: only those, added to the JSON).

`--turns STEPS` (two --src) runs the two sources' training steps, then their
validations, in two processes that take turns, A B then B A, on the same
real crops: both see the same load, so the paired ratios hold where
separate runs drift; the two must also end with the same weights.

`--profile` (bench/train_profile.py) runs torch.profiler over --profile-steps
training steps of the real student on real crops, in fp32 and in bf16,
after its own matmul peak measurement: each op group's share of the step's
time and of its FLOPs (conv of block 1, convs of blocks 2-3, BatchNorm,
pooling, LSTM, rest), the step's GFLOP/s against the peak, and a ceiling:
the step if every op ran at its own best time over the profiled steps.

`--compare-precision` (bench/train_profile.py) trains an fp32 and a bf16
student on the same crops, step by step in turns as --turns does:
per-step CPU ms and GFLOP/s-equivalent (the fp32 FLOPs over the CPU
seconds) of each, and the 5-fold x 50-epoch wall on 2 cores (2 one-thread
jobs) projected from their CPU seconds per epoch (validation and test are
float32 in both). `--rounds 0 --profile --compare-precision`: only those,
merged into the JSON as `profile` and `precision`.

`--src LABEL=PATH` trains with another checkout's src/ (the code before a
change); the sources run one after the other, each after its own matmul
measurement, --rounds times (A B, then B A, ...). With labels `before` and
`after` the JSON also holds their CPU-second ratios (speedup_cpu). Prints
a table; writes bench/results/train_speed.json (entries of earlier
invocations with other labels are kept).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"ratio_to_matmul": ">= 0.7", "sys_over_user": "<= 0.1", "five_fold_50_epochs_2_cores_min": "<= 15"}

MATMUL = """
import json, statistics, sys, time, torch
torch.set_num_threads(1)
n, reps = 1024, int(sys.argv[1])
a, b, c = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
for _ in range(5):
    torch.mm(a, b, out=c)
cpu, wall = [], []
for _ in range(reps):
    c0, w0 = time.thread_time(), time.perf_counter()
    for _ in range(10):
        torch.mm(a, b, out=c)
    cpu.append((time.thread_time() - c0) / 10)
    wall.append((time.perf_counter() - w0) / 10)
f = 2 * n ** 3 / 1e9
print(json.dumps({"best": f / min(cpu), "median": f / statistics.median(cpu), "best_wall": f / min(wall)}))
"""

# The training child: `liser train` as the command runs it, with the steps, the validation and the test timed
# on the thread's CPU clock (the functions exist in every liser version this benchmark compares).
TRAIN = """
import csv, json, sys, time
import liser, liser.student.train as T
from liser.data import audio
from liser.core.config import Config
from liser.core.device import tune_malloc
from liser.student.model import flops_per_sample

tune_malloc()  # as `liser train` does
cpu = {"run_epoch": [], "end_epoch": [], "finish": []}
seen = {"samples": 0, "steps": 0}
marks = []  # (the thread's CPU clock, samples) at each step's start (next_batch) and at each epoch's end

def timed(name, fn):
    def wrapper(*args, **kwargs):
        c0 = time.thread_time()
        out = fn(*args, **kwargs)
        cpu[name].append(time.thread_time() - c0)
        if name == "run_epoch":
            seen["steps"] += out[1]
            seen["samples"] += out[2]
            marks.append((time.thread_time(), 0))
            marks.append(None)  # an epoch's end: no step spans it
        return out
    return wrapper

next_batch = T.next_batch
def marked(*args, **kwargs):
    t = time.thread_time()
    out = next_batch(*args, **kwargs)
    marks.append((t, len(out[0])))  # a step's start and its samples
    return out

T.next_batch = marked
for name in cpu:
    setattr(T, name, timed(name, getattr(T, name)))
c0 = time.thread_time()
cfg = Config.load(sys.argv[1], overrides=sys.argv[2:])
T.train(cfg, progress=False)
total = time.thread_time() - c0
m = json.loads((T.run_dir(cfg) / "metrics.json").read_text())
with open(T.run_dir(cfg) / "epochs.csv") as f:
    rows = list(csv.DictReader(f))
fwd = flops_per_sample(len(m["classes"]), len(m["video_classes"]))
conv1 = 2 * 64 * 9 * audio.N_MELS * audio.CLIP_FRAMES  # conv1's input gradient: the input needs none
print("BENCH " + json.dumps({"cpu": cpu, "thread_cpu_s": total, **seen, "forward_flops": fwd,
                             "train_flops_per_sample": 3 * fwd - conv1, "liser": liser.__file__,
                             "test_uar": m["test"]["uar"], "rows": rows,
                             "steps_cpu": [(b[0] - a[0], a[1]) for a, b in zip(marks, marks[1:]) if a and b]}))
"""

# --variants: what the student's training step would cost done otherwise (none gives the same bits, so none is
# used): per-step CPU ms (min / median of --variant-steps) on real 3 s crops of the fold's training files, and
# whether the weights after those steps equal the plain path's bit for bit.
VARIANTS = """
import contextlib, json, statistics, sys, time
import numpy as np, torch, torch.nn.functional as F
from liser.core.config import Config
from liser.core.device import tune_malloc
from liser.data.features import build_features
from liser.student.model import Student
from liser.student.train import random_crop
from liser.data.workspace import fold_items, labeled_manifest

tune_malloc()
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True, warn_only=True)
torch.utils.deterministic.fill_uninitialized_memory = False
n_steps, cfg = int(sys.argv[1]), Config.load(sys.argv[2], overrides=sys.argv[3:])
m = labeled_manifest(cfg)
train, _, _, classes = fold_items(cfg, m)
cache = build_features(m, cfg.work, progress=False).load_into_memory()
rng = np.random.default_rng(0)
batches = []
for _ in range(n_steps + 3):
    idx = rng.choice(len(train), cfg.batch_size, replace=False)
    x = np.stack([random_crop(cache.frames(train[i].id), rng)[0] for i in idx])
    batches.append((torch.from_numpy(x), torch.tensor([classes.index(train[i].label) for i in idx])))

def make(compile=False):
    torch.manual_seed(0)
    model = Student(len(classes), 7).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return model, (torch.compile(model) if compile else model), opt

def step(fwd, opt, x, y, autocast):
    with torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext():
        sup = fwd(x)[0]
    loss = F.cross_entropy(sup.float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()

variants = {"plain (channels_last, float32)": (make(), False), "bfloat16 autocast": (make(), True),
            "torch.compile (inductor)": (make(compile=True), False)}
times = {k: [] for k in variants}
for i, (x, y) in enumerate(batches):  # the variants take turns, step by step: the same load for each
    names = list(variants)[i % len(variants):] + list(variants)[: i % len(variants)]
    for name in names:
        (model, fwd, opt), autocast = variants[name]
        c0 = time.thread_time()
        step(fwd, opt, x, y, autocast)
        if i >= 3:  # the first steps warm up (and compile)
            times[name].append(time.thread_time() - c0)
plain = variants["plain (channels_last, float32)"][0][0].state_dict()
out = {k: [times[k], all(torch.equal(v[0][0].state_dict()[n], plain[n]) for n in plain)] for k, v in variants.items()}
print("BENCH " + json.dumps({k: {"step_cpu_ms_min": round(1000 * min(t), 1),
                                 "step_cpu_ms_median": round(1000 * statistics.median(t), 1),
                                 "same_weights": same} for k, (t, same) in out.items()}))
"""

# --turns: two sources train the same student on the same real crops in two processes that take turns, step by
# step (then validation by validation), so that both see the same load; each answer is one step's CPU seconds.
TURNS = """
import hashlib, json, sys, time
import numpy as np, torch, torch.nn.functional as F
from liser.core.config import Config
from liser.core.device import tune_malloc
from liser.student.evaluate import file_logits
from liser.data.features import build_features
from liser.student.model import Student
from liser.student.train import random_crop, torch_settings
from liser.data.workspace import fold_items, labeled_manifest

tune_malloc()
cfg = Config.load(sys.argv[1], overrides=sys.argv[2:])
m = labeled_manifest(cfg)
train, val, _, classes = fold_items(cfg, m)
cache = build_features(m, cfg.work, progress=False).load_into_memory()
rng = np.random.default_rng(0)
with torch_settings(1):  # each source's own settings (deterministic mode, and whatever else it sets)
    torch.manual_seed(0)
    model = Student(len(classes), 7).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    val_frames = [cache.frames(it.id) for it in val]
    print("READY", flush=True)
    for line in sys.stdin:
        c0 = time.thread_time()
        if line.strip() == "step":
            idx = rng.choice(len(train), cfg.batch_size, replace=False)
            x = torch.from_numpy(np.stack([random_crop(cache.frames(train[i].id), rng)[0] for i in idx]))
            y = torch.tensor([classes.index(train[i].label) for i in idx])
            model.train()
            loss = F.cross_entropy(model(x)[0], y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        elif line.strip() == "val":
            file_logits(model, val_frames, cfg.val_stride_s)
        else:  # the weights' digest: both sources must end with the same bits
            h = hashlib.sha256(b"".join(v.numpy().tobytes() for v in model.state_dict().values()))
            print(json.dumps(h.hexdigest()), flush=True)
            break
        print(json.dumps(time.thread_time() - c0), flush=True)
"""


# --profile / --compare-precision: bench/train_profile.py's child_main in a one-thread child (argv: bench folder, mode, ...)
PROFILE = "import sys; sys.path.insert(0, sys.argv.pop(1)); import train_profile; train_profile.child_main()"
PROJECTED_EPOCHS = 50  # the 5-fold run the projections are for: 50 epochs, validation every epoch


def matmul_peak(src: Path, args) -> dict:
    """The 1024^2 float32 matmul's GFLOP/s on one thread (CPU clock): best, median, best by the wall clock."""
    return json.loads(child(MATMUL, [str(args.matmul_reps)], src, 300)[0])


def profiled(src: Path, args) -> dict:
    """--profile: per-group time and FLOP shares of a training step in fp32 and bf16, against the matmul peak."""
    from train_profile import GROUPS

    load_start = os.getloadavg()
    peak = matmul_peak(src, args)["best"]
    sets = [f"fold={args.fold}", f"work={args.work}"]
    stdout, _, _ = child(PROFILE, [str(REPO / "bench"), "profile", str(args.profile_steps), args.config, str(peak),
                                   *sets], src, 3000)
    res = json.loads(next(x for x in stdout.splitlines() if x.startswith("BENCH "))[6:])
    for p, r in res.items():
        c = r.get("ceiling")  # absent when the steps' ops differed (then no per-op minima)
        print(f"profile {p}: step {r['step_ms_mean']} ms (profiler clock), {r['step_gflops']} GFLOP/s = "
              f"{r['step_ratio_to_matmul']} of the float32 matmul peak ({r['matmul_peak_gflops']})"
              + (f"; ceiling {c['step_ms']} ms, {c['gflops']} GFLOP/s = {c['ratio_to_matmul']}" if c else ""))
        for g in GROUPS:
            x = r["groups"][g]
            print(f"  {g:16s} time {x['time_share']:6.1%}  FLOPs {x['flop_share']:6.1%}  "
                  f"{x['ms_per_step']:7.2f} ms  GFLOP/s {x['gflops'] if x['gflops'] is not None else '-'}")
    return {"src": str(src), "commit": commit_of(src), "date": datetime.now().isoformat(timespec="seconds"),
            "load_average_start": [round(x, 2) for x in load_start],
            "load_average_end": [round(x, 2) for x in os.getloadavg()], **res}


def precision_turns(src: Path, args) -> dict:
    """--compare-precision: fp32 and bf16 steps in turns; CPU ms, GFLOP/s-equivalent and the 5-fold projection."""
    load_start = os.getloadavg()
    sets = [f"fold={args.fold}", f"work={args.work}"]
    stdout, _, _ = child(PROFILE, [str(REPO / "bench"), "precision", str(args.precision_steps), args.config,
                                   str(PROJECTED_EPOCHS), *sets], src, 3000)
    res = json.loads(next(x for x in stdout.splitlines() if x.startswith("BENCH "))[6:])
    key = f"five_fold_{PROJECTED_EPOCHS}_epochs_2_cores_min"
    for p in ("fp32", "bf16"):
        r = res[p]
        print(f"{p}: step CPU ms median {r['step_cpu_ms_median']} (min {r['step_cpu_ms_min']}), GFLOP/s-equivalent "
              f"{r['gflops_equivalent_median']} (best {r['gflops_equivalent_best']}), epoch CPU s {r['epoch_cpu_s']}, "
              f"5 folds x {PROJECTED_EPOCHS} epochs on 2 cores {r[key]} min")
    print(f"bf16 / fp32 step CPU, median of pairs: {res['bf16_over_fp32_step_cpu_median']}")
    return {"src": str(src), "commit": commit_of(src), "date": datetime.now().isoformat(timespec="seconds"),
            "load_average_start": [round(x, 2) for x in load_start],
            "load_average_end": [round(x, 2) for x in os.getloadavg()], **res}


def turns(sources: list, args) -> dict:
    """Steps and validations of two sources in turns (A B, B A, ...): CPU ms of each and their paired ratios."""
    sets = [f"fold={args.fold}", f"work={args.work}"]
    procs = {}
    for label, path in sources:
        env = {**os.environ, "PYTHONPATH": str(Path(path).resolve()), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        procs[label] = subprocess.Popen([sys.executable, "-c", TURNS, args.config, *sets], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
    for label, p in procs.items():
        if p.stdout.readline().strip() != "READY":
            sys.exit(f"bench_train_speed: the --turns child of {label} failed")

    def ask(label, what):
        procs[label].stdin.write(what + "\n")
        procs[label].stdin.flush()
        return json.loads(procs[label].stdout.readline())

    load_start = os.getloadavg()
    out = {}
    for what, n in (("step", args.turns), ("val", max(2, args.turns // 10))):
        times = {label: [] for label in procs}
        for i in range(n):
            for label in list(procs)[:: -1 if i % 2 else 1]:
                times[label].append(ask(label, what))
        (a, ta), (b, tb) = times.items()
        ratio = [x / y for x, y in zip(ta, tb)]
        out[what] = {**{f"{k}_cpu_ms_median": round(1000 * statistics.median(v), 1) for k, v in times.items()},
                     **{f"{k}_cpu_ms_min": round(1000 * min(v), 1) for k, v in times.items()},
                     f"ratio_{a}_over_{b}_median": round(statistics.median(ratio), 3), "n": n}
    digests = {label: ask(label, "digest") for label in procs}
    for p in procs.values():
        p.wait(timeout=60)
    return {**out, "same_weights": len(set(digests.values())) == 1, "date": datetime.now().isoformat(timespec="seconds"),
            "load_average_start": [round(x, 2) for x in load_start],
            "load_average_end": [round(x, 2) for x in os.getloadavg()],
            "sources": {label: commit_of(Path(path).resolve()) for label, path in sources}}


def child(code: str, args: list[str], src: Path, timeout: int) -> tuple[str, float, float]:
    """Run `python -c code args` with liser from `src` on one thread; (stdout, user s, sys s) of that child."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                         cwd=REPO, timeout=timeout)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode:
        sys.exit(f"bench_train_speed: child failed ({src}):\n{out.stderr[-3000:]}")
    return out.stdout, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime


def commit_of(src: Path) -> str:
    r = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--", "."], capture_output=True, text=True)
    return (r.stdout.strip() or "?") + ("+changes" if dirty.stdout.strip() else "")


def measure(label: str, src: Path, args) -> dict:
    """One source: the matmul peak, then the training run; the figures of one JSON entry."""
    load_start = os.getloadavg()
    mm = matmul_peak(src, args)
    with tempfile.TemporaryDirectory(prefix="bench-train-speed-") as out:
        sets = [f"fold={args.fold}", f"epochs={args.epochs}", "threads=1", f"work={args.work}", f"out={out}"]
        if "min_steps" in Path(args.config).read_text():  # a step floor would train more epochs than asked
            sets.append("min_steps=0")
        t0 = time.perf_counter()
        stdout, user, sys_s = child(TRAIN, [args.config, *sets], src, 3000)
        wall = time.perf_counter() - t0
        r = json.loads(next(line for line in stdout.splitlines() if line.startswith("BENCH "))[6:])
    rows = r["rows"]
    flops = r["samples"] * r["train_flops_per_sample"]
    steps_cpu, steps_wall = sum(r["cpu"]["run_epoch"]), sum(float(x["train_s"]) for x in rows)
    val_cpu = r["cpu"]["end_epoch"]  # validation, plus best.pt / last.pt (a few ms)
    start_cpu = r["thread_cpu_s"] - steps_cpu - sum(val_cpu) - sum(r["cpu"]["finish"])
    epoch_cpu = steps_cpu / len(rows) + sum(val_cpu) / len(rows)
    fold_50 = start_cpu + 50 * epoch_cpu + sum(r["cpu"]["finish"])
    gflops_cpu = flops / steps_cpu / 1e9
    per_step = sorted(n * r["train_flops_per_sample"] / dt / 1e9 for dt, n in r["steps_cpu"])
    full = sorted(dt for dt, n in r["steps_cpu"] if n == max(n for _, n in r["steps_cpu"]))
    return {
        "label": label, "src": str(src), "commit": commit_of(src), "liser": r["liser"],
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores of a virtual machine shared with other work "
                   "(this guest's load averages below; the host's other guests are not seen)",
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "command": f"liser train {args.config} --fold {args.fold} --set epochs={args.epochs} threads=1 (in a child, "
                   "steps / validation / test timed on the thread's CPU clock)",
        "matmul_gflops": round(mm["best"], 1), "matmul_gflops_median": round(mm["median"], 1),
        "matmul_gflops_wall": round(mm["best_wall"], 1),
        "train_flops_per_sample": r["train_flops_per_sample"], "forward_flops_per_sample": r["forward_flops"],
        "samples": r["samples"], "steps": r["steps"], "train_gflop": round(flops / 1e9, 1),
        "train_gflops_cpu": round(gflops_cpu, 1), "train_gflops_wall": round(flops / steps_wall / 1e9, 1),
        "ratio_to_matmul": round(gflops_cpu / mm["best"], 3),
        "ratio_to_matmul_median": round(gflops_cpu / mm["median"], 3),
        "train_gflops_best_step": round(per_step[-1], 1), "train_gflops_median_step": round(statistics.median(per_step), 1),
        "ratio_best_step_to_matmul": round(per_step[-1] / mm["best"], 3),
        "step_cpu_ms_min": round(1000 * full[0], 1), "step_cpu_ms_median": round(1000 * statistics.median(full), 1),
        "user_s": round(user, 2), "sys_s": round(sys_s, 2), "sys_over_user": round(sys_s / user, 3),
        "wall_s": round(wall, 1),
        "epoch_wall_s": [float(x["epoch_s"]) for x in rows],
        "epoch_cpu_s": round(epoch_cpu, 2),
        "steps_cpu_s_per_epoch": round(steps_cpu / len(rows), 2),
        "step_cpu_ms": round(1000 * steps_cpu / r["steps"], 1),
        "validation_cpu_s_per_epoch": round(sum(val_cpu) / len(rows), 2),
        "test_cpu_s": round(sum(r["cpu"]["finish"]), 2),
        "start_cpu_s": round(start_cpu, 2),
        "five_fold_50_epochs_2_cores_min": round(3 * fold_50 / 60, 1),
        "test_uar": r["test_uar"],
    }


def table(entries: list[dict]) -> str:
    rows = [("matmul 1024^2 peak, GFLOP/s (CPU clock, best / median)", lambda e: f"{e['matmul_gflops']} / {e['matmul_gflops_median']}"),
            ("training GFLOP/s per CPU second / per wall second", lambda e: f"{e['train_gflops_cpu']} / {e['train_gflops_wall']}"),
            ("ratio to the matmul peak (target >= 0.7)", lambda e: f"{e['ratio_to_matmul']}"),
            ("best step: GFLOP/s, ratio to the matmul peak", lambda e: f"{e['train_gflops_best_step']}, {e['ratio_best_step_to_matmul']}"),
            ("training step (25 crops), CPU ms: min / median", lambda e: f"{e['step_cpu_ms_min']} / {e['step_cpu_ms_median']}"),
            ("epoch CPU s: steps + validation", lambda e: f"{e['steps_cpu_s_per_epoch']} + {e['validation_cpu_s_per_epoch']}"),
            ("epoch wall s (loaded machine)", lambda e: " / ".join(f"{x:.1f}" for x in e["epoch_wall_s"])),
            ("test evaluation (0.1 s stride) CPU s", lambda e: f"{e['test_cpu_s']}"),
            ("start (imports, features, model) CPU s", lambda e: f"{e['start_cpu_s']}"),
            ("child user / sys s (sys/user, target <= 0.1)", lambda e: f"{e['user_s']} / {e['sys_s']} ({e['sys_over_user']})"),
            ("5 folds x 50 epochs on 2 cores at these CPU s, min (target <= 15)", lambda e: f"{e['five_fold_50_epochs_2_cores_min']}"),
            ("load average at start / end", lambda e: f"{e['load_average_start'][0]} / {e['load_average_end'][0]}")]
    out = ["| figure | " + " | ".join(f"{e['label']} ({e['commit']})" for e in entries) + " |",
           "|---" * (len(entries) + 1) + "|"]
    out += [f"| {name} | " + " | ".join(f(e) for e in entries) + " |" for name, f in rows]
    return "\n".join(out)


def write_json(path: Path, entries: list, variants: dict | None, turned: dict | None,
               profile: dict | None = None, precision: dict | None = None) -> Path:
    """Merge this invocation's figures into the JSON at `path` (other labels' entries, and the keys this
    invocation did not measure, are kept); returns path."""
    command = " ".join(["OMP_NUM_THREADS=1", "python", "bench/bench_train_speed.py", *sys.argv[1:]])
    for e in entries + [x for x in (variants, turned, profile, precision) if x]:
        e["bench_command"] = command
    old = json.loads(path.read_text()) if path.is_file() else {}
    runs = {**old.get("runs", {}), **{e["label"]: e for e in entries}}
    res = {"what": "student training speed on one CPU thread (issue 14 §1); see bench/bench_train_speed.py",
           "targets": TARGETS, "runs": runs}
    keys = ("step_cpu_ms_min", "step_cpu_ms_median", "step_cpu_ms", "validation_cpu_s_per_epoch", "test_cpu_s",
            "epoch_cpu_s", "user_s", "sys_s")
    pairs = [(runs[k], runs[k.replace("before", "after")]) for k in runs
             if k.startswith("before") and k.replace("before", "after") in runs]
    if pairs:  # before / after of each round, and their geometric mean over the rounds
        res["speedup_cpu"] = {k: round(float(np.exp(np.mean([np.log(b[k] / a[k]) for b, a in pairs]))), 2)
                              for k in keys}
        res["speedup_cpu_by_round"] = [{k: round(b[k] / a[k], 2) for k in keys} for b, a in pairs]
    res["table"] = table(list(runs.values()))
    for key, value in (("variants", variants), ("turns", turned), ("profile", profile), ("precision", precision)):
        if value or key in old:
            res[key] = value or old[key]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(res, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", action="append", default=[], metavar="LABEL=PATH",
                    help="label and src/ folder to train with (repeatable; default after=src of this checkout)")
    ap.add_argument("--config", default="configs/no-dstl.yaml")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--work", default="work", help="work folder holding the manifests and features cache")
    ap.add_argument("--matmul-reps", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=1, help="measure every source this many times, alternating the order")
    ap.add_argument("--variants", action="store_true",
                    help="also time training steps done otherwise (bf16, torch.compile; with the last --src)")
    ap.add_argument("--variant-steps", type=int, default=15)
    ap.add_argument("--turns", type=int, default=0, metavar="STEPS",
                    help="also train two --src in turns, STEPS steps (and STEPS/10 validations) each")
    ap.add_argument("--profile", action="store_true",
                    help="also profile training steps (torch.profiler) per op group, fp32 and bf16 (with the last --src)")
    ap.add_argument("--profile-steps", type=int, default=20)
    ap.add_argument("--compare-precision", action="store_true",
                    help="also time fp32 against bf16 training steps in turns, and project the 5-fold run of each")
    ap.add_argument("--precision-steps", type=int, default=30, metavar="STEPS")
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "train_speed.json"))
    args = ap.parse_args()
    args.work = str(Path(args.work).resolve())
    sources = [s.split("=", 1) for s in (args.src or ["after=src"])]
    entries = []
    for r in range(args.rounds):  # every other round in reverse order (A B B A): a load that drifts favours none
        for label, path in sources[:: -1 if r % 2 else 1]:
            entries.append(measure(label + (f" (round {r + 1})" if r else ""), Path(path).resolve(), args))
    if entries:
        print(table(entries))
    turned = None
    if args.turns:
        if len(sources) != 2:
            sys.exit("bench_train_speed: --turns compares two --src")
        turned = turns(sources, args)
        print(json.dumps(turned, indent=1))
    variants = None
    if args.variants:
        sets = [f"fold={args.fold}", f"work={args.work}"]
        stdout, _, _ = child(VARIANTS, [str(args.variant_steps), args.config, *sets], Path(sources[-1][1]).resolve(), 3000)
        variants = {"src": sources[-1][1], "date": datetime.now().isoformat(timespec="seconds"),
                    "load_average_end": [round(x, 2) for x in os.getloadavg()],
                    "steps": json.loads(next(x for x in stdout.splitlines() if x.startswith("BENCH "))[6:])}
        for name, v in variants["steps"].items():
            print(f"{name:32s} step CPU ms min {v['step_cpu_ms_min']:7.1f} median {v['step_cpu_ms_median']:7.1f}"
                  f"  same weights: {v['same_weights']}")
    last = Path(sources[-1][1]).resolve()
    profile = profiled(last, args) if args.profile else None
    precision = precision_turns(last, args) if args.compare_precision else None
    path = write_json(Path(args.json), entries, variants, turned, profile, precision)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
