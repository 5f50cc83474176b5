"""Where a student training step spends its time, and what bf16 changes (bench_train_speed.py --profile,
--compare-precision; issue 14 §1).

Both run in a child process on one thread (`child_main`, started by the
benchmark) on the real path of `liser train`: the fold's data
(liser.student.train.load_data), the normalised channels_last student and AdamW
(build_model), random 3 s crops of the training files (next_batch), and
liser.student.train.step_loss then zero_grad / backward / step, inside
liser.student.train.torch_settings(1).

`profile_steps`: torch.profiler (CPU activities, shapes recorded) over
`steps` training steps after 3 warm-up steps. Every op under a step's
top level (a forward op, an autograd node's backward, the optimiser) is put
in a group: conv of block 1, convs of blocks 2-3, BatchNorm, pooling, LSTM,
rest (ReLU, standardisation, heads, loss, optimiser, casts, Python). Its
time is the op's total (children included) as the profiler's clock saw it:
wall microseconds, so a loaded machine's preemptions are in them, and the
profiler adds a few microseconds per op. FLOPs are counted from the recorded
shapes for the convolutions (stride 1, same padding: the student's), the
LSTM and the linear layers only: forward x 3 for a training step (input and
weight gradients), except conv 1, whose input needs no gradient (x 2);
BatchNorm, pooling and ReLU are counted as 0 FLOPs (they move memory). The
"ceiling" is the step's time if every op ran at its own best time over the
profiled steps: the sum of the per-op minima.

`compare_precision`: an fp32 and a bf16 student (same seed) train on the
same crops, step by step in turns (A B, then B A: the same load for both),
each step timed on the thread's CPU clock; then validations in turns (both
float32: evaluation does not autocast) and one test evaluation, for a
projection of `liser cv --jobs 2` (5 folds x `epochs` on 2 cores: 2
one-thread jobs, so 3 folds one after another on a core).
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time

GROUPS = ("conv block 1", "conv blocks 2-3", "BatchNorm", "pooling", "LSTM", "rest")


def train_flops_per_sample(n_classes: int, n_video_classes: int = 7) -> int:
    """FLOPs of one training sample: the forward (liser.student.model.flops_per_sample) x 3, less conv 1's input gradient."""
    from liser.data import audio
    from liser.student.model import flops_per_sample

    conv1 = 2 * 64 * 9 * audio.N_MELS * audio.CLIP_FRAMES  # conv 1's input gradient: the input needs none
    return 3 * flops_per_sample(n_classes, n_video_classes) - conv1


# ---------------------------------------------------------------- the real training path
def setup(cfg):
    """(data, model, optimiser, state, frames) of `cfg`'s fold, as liser.student.train builds them (call inside torch_settings)."""
    import numpy as np
    import torch

    from liser.student import train as tr

    torch.manual_seed(cfg.seed)
    data = tr.load_data(cfg, progress=False)
    model, opt = tr.build_model(cfg, data)
    model.train()
    frames = [data.cache.frames(it.id) for it in data.train]
    return data, model, opt, tr.State(np.random.default_rng(cfg.seed)), frames


def batch(cfg, data, frames, state):
    """One labeled mini-batch of `cfg.batch_size` random crops: (x [B, 64, 94], labels [B])."""
    from liser.student import train as tr

    idx = state.rng.choice(len(data.train), cfg.batch_size, replace=False)
    x, labels, _ = tr.next_batch(tr.Crops([frames]), data.labels, idx, None, 0, state)
    return x, labels


def step(model, opt, options, x, labels, precision: str) -> float:
    """One training step (liser.student.train's forward + loss, backward, AdamW); returns the loss."""
    from liser.student import train as tr

    loss, _ = tr.step_loss(model, x, labels, {}, [], options, precision)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


# ---------------------------------------------------------------- the profile
def _descendants(e):
    for c in e.cpu_children:
        yield c
        yield from _descendants(c)


def _conv_block(weight_shape) -> str:
    return "conv block 1" if len(weight_shape) == 4 and weight_shape[1] == 1 else "conv blocks 2-3"


def classify(e) -> str:
    """The group of a top-level op of a step (a forward op, an autograd node's backward, the optimiser)."""
    name = e.name
    if name == "aten::conv2d":
        return _conv_block(e.input_shapes[1])
    if "ConvolutionBackward" in name:
        for d in _descendants(e):  # convolution_backward(grad_out, input, weight, ...)
            if d.name == "aten::convolution_backward" and len(d.input_shapes) > 2:
                return _conv_block(d.input_shapes[2])
        return "conv blocks 2-3"
    if "batch_norm" in name or "BatchNorm" in name:
        return "BatchNorm"
    if "pool" in name.lower():
        return "pooling"
    if "lstm" in name.lower() or "Rnn" in name or "rnn" in name:
        return "LSTM"
    return "rest"


def forward_flops(e) -> tuple[str, int]:
    """(group, training FLOPs) of a forward op from its recorded shapes; ("rest", 0) for ops not counted."""
    s = e.input_shapes
    if e.name == "aten::conv2d" and len(s) > 1 and len(s[0]) == 4:
        (n, c_in, h, w), (c_out, _, kh, kw) = s[0], s[1]
        f = 2 * n * c_out * h * w * c_in * kh * kw  # stride 1, same padding: the output is h x w
        return _conv_block(s[1]), f * (2 if c_in == 1 else 3)  # conv 1: no input gradient
    if e.name == "aten::lstm":
        layer = next((d for d in _descendants(e) if d.name == "aten::mkldnn_rnn_layer"), None)
        n, t, i = s[0]
        gates = layer.input_shapes[1][0] if layer is not None else 4 * 64  # weight_ih [4H, I]
        h = gates // 4
        return "LSTM", 3 * 2 * n * t * gates * (i + h)
    if e.name == "aten::linear" and len(s) > 1 and s[0] and s[1]:
        rows, k, out = math.prod(s[0][:-1]), s[0][-1], s[1][0]  # x [..., k] @ weight [out, k]^T
        return "rest", 3 * 2 * rows * k * out
    return "rest", 0


def profile_steps(cfg, steps: int = 20, precision: str = "fp32", peak_gflops: float | None = None) -> dict:
    """Per-group share of a training step's time and FLOPs under torch.profiler; see the module docstring.

    Returns {"groups": {group: {ms_per_step, time_share, gflop_per_step, flop_share, gflops, best_ms,
    best_gflops}}, "step_ms_mean", "step_gflops", "ceiling": {step_ms, gflops, ratio_to_matmul}, ...}; ratios to `peak_gflops` when given. Times in ms
    per step (profiler clock), FLOPs per step. The peak is float32's: bf16 steps may exceed it.
    """
    from torch.profiler import ProfilerActivity, profile, record_function

    from liser.student import train as tr

    with tr.torch_settings(1):
        data, model, opt, state, frames = setup(cfg)
        options = tr.loss_options(cfg, data)
        batches = [batch(cfg, data, frames, state) for _ in range(steps + 3)]
        for x, y in batches[:3]:  # warm-up: oneDNN picks and caches its kernels
            step(model, opt, options, x, y, precision)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for x, y in batches[3:]:
                with record_function("liser_step"):
                    step(model, opt, options, x, y, precision)
    step_events = [e for e in prof.events() if e.name == "liser_step"]
    per_op: list[list[tuple[str, float]]] = []  # per step: (group, ms) of each top-level op, in order
    flops = dict.fromkeys(GROUPS, 0)
    for i, s in enumerate(step_events):
        ops = [(classify(c), c.cpu_time_total / 1e3) for c in s.cpu_children]
        ops.append(("rest", max(s.cpu_time_total / 1e3 - sum(ms for _, ms in ops), 0.0)))  # Python between ops
        per_op.append(ops)
        if i == 0:  # the FLOPs of one step (every step has the same shapes)
            for c in s.cpu_children:
                g, f = forward_flops(c)
                flops[g] += f
    same_ops = len({tuple(g for g, _ in ops) for ops in per_op}) == 1
    n = len(per_op)
    group_ms = {g: sum(ms for ops in per_op for gg, ms in ops if gg == g) / n for g in GROUPS}
    best = [min(ops[k][1] for ops in per_op) for k in range(len(per_op[0]))] if same_ops else None
    best_ms = {g: sum(b for (gg, _), b in zip(per_op[0], best) if gg == g) for g in GROUPS} if best else None
    total_ms, total_flops = sum(group_ms.values()), sum(flops.values())
    groups = {}
    for g in GROUPS:
        groups[g] = {"ms_per_step": round(group_ms[g], 2), "time_share": round(group_ms[g] / total_ms, 3),
                     "gflop_per_step": round(flops[g] / 1e9, 3), "flop_share": round(flops[g] / total_flops, 3),
                     "gflops": round(flops[g] / group_ms[g] / 1e6, 1) if flops[g] and group_ms[g] else None}
        if best_ms:
            groups[g]["best_ms"] = round(best_ms[g], 2)
            groups[g]["best_gflops"] = round(flops[g] / best_ms[g] / 1e6, 1) if flops[g] and best_ms[g] else None
    step_ms = sorted(s.cpu_time_total / 1e3 for s in step_events)
    out = {"precision": precision, "steps": n, "batch": cfg.batch_size,
           "clock": "profiler (wall microseconds per op, profiler overhead included)",
           "train_flops_per_step": total_flops,
           "train_flops_per_step_from_student": train_flops_per_sample(len(data.classes), len(data.video_classes))
           * cfg.batch_size,
           "step_ms_mean": round(total_ms, 1), "step_ms_min": round(step_ms[0], 1),
           "step_ms_median": round(statistics.median(step_ms), 1),
           "step_gflops": round(total_flops / total_ms / 1e6, 1), "groups": groups,
           "rest_top_ops": _top_rest(step_events, n)}
    if best:
        ceiling_ms = sum(best)
        out["ceiling"] = {"what": "each op at its own best time over the profiled steps (sum of per-op minima)",
                          "step_ms": round(ceiling_ms, 1), "gflops": round(total_flops / ceiling_ms / 1e6, 1)}
    if peak_gflops:
        out["matmul_peak_gflops"] = round(peak_gflops, 1)
        out["step_ratio_to_matmul"] = round(total_flops / total_ms / 1e6 / peak_gflops, 3)
        if best:
            out["ceiling"]["ratio_to_matmul"] = round(out["ceiling"]["gflops"] / peak_gflops, 3)
    return out


def _top_rest(step_events, n: int, k: int = 6) -> dict:
    """The `rest` group's largest top-level ops: {name: ms per step}."""
    ms: dict[str, float] = {}
    for s in step_events:
        for c in s.cpu_children:
            if classify(c) == "rest":
                name = c.name.replace("autograd::engine::evaluate_function: ", "backward: ")
                ms[name] = ms.get(name, 0.0) + c.cpu_time_total / 1e3 / n
    return {name: round(v, 2) for name, v in sorted(ms.items(), key=lambda kv: -kv[1])[:k]}


# ---------------------------------------------------------------- fp32 against bf16
def compare_precision(cfg, steps: int = 30, validations: int = 2, epochs: int = 50, t_start: float = 0.0) -> dict:
    """fp32 and bf16 training steps in turns on the same crops: CPU ms per step, GFLOP/s-equivalent, projection.

    GFLOP/s-equivalent: the fp32 step's FLOPs (train_flops_per_sample x batch) over the step's CPU
    seconds, whatever precision computed them. `t_start`: the thread's CPU clock when the child started
    (its imports count in the projection's start). Returns {"fp32": {...}, "bf16": {...}, "bf16_over_fp32": ...}.
    """
    import copy

    import torch

    from liser.student import train as tr
    from liser.student.evaluate import evaluate_items

    precisions = ("fp32", "bf16")
    with tr.torch_settings(1):
        data, model, opt, state, frames = setup(cfg)
        options = tr.loss_options(cfg, data)
        start_cpu = time.thread_time() - t_start
        models = {"fp32": (model, opt)}
        m2 = copy.deepcopy(model)  # the same initial weights
        models["bf16"] = (m2, torch.optim.AdamW(m2.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay))
        times = {p: [] for p in precisions}
        losses = {p: [] for p in precisions}
        for i in range(steps + 3):
            x, y = batch(cfg, data, frames, state)
            for p in precisions[:: -1 if i % 2 else 1]:  # A B, then B A
                c0 = time.thread_time()
                loss = step(*models[p], options, x, y, p)
                if i >= 3:  # warm-up steps: oneDNN picks its kernels
                    times[p].append(time.thread_time() - c0)
                    losses[p].append(loss)
        val = {p: [] for p in precisions}
        for i in range(validations):
            for p in precisions[:: -1 if i % 2 else 1]:
                c0 = time.thread_time()
                evaluate_items(models[p][0], data.cache, data.val, data.classes, cfg.val_stride_s)
                val[p].append(time.thread_time() - c0)
        c0 = time.thread_time()
        evaluate_items(models["fp32"][0], data.cache, data.test, data.classes, cfg.test_stride_s)
        test_cpu = time.thread_time() - c0
    flops = train_flops_per_sample(len(data.classes), len(data.video_classes)) * cfg.batch_size
    steps_per_epoch = math.ceil(len(data.train) / cfg.batch_size)
    out = {}
    for p in precisions:
        med = statistics.median(times[p])
        epoch_cpu = steps_per_epoch * med + statistics.median(val[p])
        fold = start_cpu + epochs * epoch_cpu + test_cpu
        out[p] = {"step_cpu_ms_median": round(1000 * med, 1), "step_cpu_ms_min": round(1000 * min(times[p]), 1),
                  "gflops_equivalent_median": round(flops / med / 1e9, 1),
                  "gflops_equivalent_best": round(flops / min(times[p]) / 1e9, 1),
                  "validation_cpu_s": round(statistics.median(val[p]), 2),
                  "epoch_cpu_s": round(epoch_cpu, 2),
                  f"five_fold_{epochs}_epochs_2_cores_min": round(3 * fold / 60, 1),
                  "mean_loss": round(statistics.mean(losses[p]), 4)}
    ratios = [b / a for a, b in zip(times["fp32"], times["bf16"])]
    out["bf16_over_fp32_step_cpu_median"] = round(statistics.median(ratios), 3)
    out.update({"steps": len(times["fp32"]), "validations": validations, "steps_per_epoch": steps_per_epoch,
                "batch": cfg.batch_size, "train_flops_per_step": flops, "start_cpu_s": round(start_cpu, 2),
                "test_cpu_s": round(test_cpu, 2),
                "projection": f"liser cv --jobs 2, {epochs} epochs: 3 folds one after another on a core, each "
                              "start + epochs x (steps_per_epoch x median step + validation) + test, in CPU s"})
    return out


def child_main(argv=None) -> None:
    """`python -c '... child_main()' MODE N CONFIG [PEAK_GFLOPS|EPOCHS] key=value...`: prints "BENCH <json>".

    MODE profile: N profiled steps in fp32 and in bf16 (the 4th argument: the matmul peak);
    MODE precision: N steps each in turns (the 4th argument: epochs of the projection).
    """
    t_start = time.thread_time()
    from liser.core.config import Config
    from liser.core.device import tune_malloc

    tune_malloc()  # as `liser train` does: a child process of its own
    mode, n, path, extra, *sets = argv if argv is not None else sys.argv[1:]
    cfg = Config.load(path, overrides=sets).replace(threads=1)
    if mode == "profile":
        res = {p: profile_steps(cfg, int(n), p, float(extra)) for p in ("fp32", "bf16")}
    elif mode == "precision":
        res = compare_precision(cfg, int(n), epochs=int(extra), t_start=t_start)
    else:
        raise SystemExit(f"train_profile: unknown mode {mode!r}")
    print("BENCH " + json.dumps(res))


if __name__ == "__main__":
    child_main()
