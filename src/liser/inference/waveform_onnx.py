"""A waveform-in ONNX graph: 16 kHz mono samples of any length -> the file's class probabilities.

`liser export --waveform` wraps an exported log-Mel student (fp32 or int8,
`liser.inference.export`) in one graph that holds everything `liser predict` does
after reading and resampling a file, so a runtime that only has onnxruntime
(Node, a browser, C++, mobile) needs no front end of its own:

    waveform [samples] float32, 16 kHz, mono, full scale 1.0
      -> mean removed, zero-padded to 3 s, mean removed     liser.data.frontend.features_numpy
      -> centred (reflect) Hann STFT, 2048 / 512            STFT op, or the DFT as a MatMul (`dft`)
      -> power -> Slaney Mel (64) -> 10 log10, -100 dB floor -> float16 and back (as the cache stores them)
      -> windows: "pad": 3 s every 0.1 s over the file      liser.data.audio.window_starts
                  "speech": the speech span's (its detector in the graph)   liser.data.windowing.plan
      -> the student on 8 windows at a time (a Loop)        liser.inference.model.BATCH_WINDOWS
      -> weighted mean of the logits -> softmax

Outputs: `probabilities` [K], `logits` [K] (the file's), `window_logits`
[W, K], `window_start_s` [W] and `window_weight` [W] (the windows the file
label was computed from), `classes` [K] (strings: the class names, so a
runtime without a metadata API needs nothing else), and for "speech" models
`speech_s` [] (seconds of speech span, margins included). `liser predict` refuses a file with less than
MIN_SPEECH_S of speech ("no speech found"); the graph cannot raise, so it
scores the whole file then (as `liser evaluate` does) and the caller must
check `speech_s < 0.5` and refuse. The caller also resamples to 16 kHz and
mixes down to mono; `liser predict`'s other refusals (shorter than 0.1 s,
silent, NaN) are the caller's too.

Why the graph is built node by node (onnx.helper) and not traced from torch:
the windowing is data-dependent (the speech span, the number of windows),
which tracing freezes; written out, every op is one onnxruntime has on every
platform at opset 17 (no contrib op outside the int8 student's own). The
Mel matrix (262 KB in fp32, more than the int8 student) is computed inside
the graph from its 66 corner frequencies, and the DFT basis too when `dft`
is "matmul", so the file stays small; onnxruntime folds both into constants
when the session is created.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from liser.data import audio
from liser.data import windowing

OPSET = 17  # STFT, and every op here, is in the default onnxruntime builds (CPU, wasm) from this opset
INPUT = "waveform"
OUTPUTS = ("probabilities", "logits", "window_logits", "window_start_s", "window_weight")
SPEECH_OUTPUT = "speech_s"
BATCH = 8  # windows per student call inside the Loop (as liser.inference.model.BATCH_WINDOWS): bounded memory
MIN_SPEECH_S = windowing.MIN_WINDOW_S  # a "speech" model's caller refuses a file with less speech than this
FORMAT = "liser-waveform-onnx"
DFTS = ("stft", "matmul")
CONTRACT = ("waveform: float32 [samples], mono, 16 kHz, full scale 1.0 (int16 / 32768), any length "
            "(at least 0.1 s)")


class _Graph:
    """A list of ONNX nodes and initializers, with fresh names: `op(...)` returns its output's name."""

    def __init__(self, prefix: str = ""):
        self.nodes, self.inits, self.prefix, self.n = [], [], prefix, 0

    def name(self, hint: str) -> str:
        self.n += 1
        return f"{self.prefix}{hint}_{self.n}"

    def op(self, op_type: str, *inputs: str, hint: str | None = None, n_out: int = 1, **attrs):
        """Append a node; its output's name (a list of `n_out` names when n_out > 1)."""
        from onnx import helper

        outs = [self.name(hint or op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, **attrs))
        return outs[0] if n_out == 1 else outs

    def const(self, value, dtype=None, hint: str = "c") -> str:
        from onnx import numpy_helper

        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def i64(self, *values: int) -> str:
        """A 1-D int64 constant (shapes, axes, pads)."""
        return self.const(np.array(values, np.int64), hint="i")

    def f32(self, value: float) -> str:
        """A float32 scalar constant."""
        return self.const(np.float32(value), hint="f")


# ---------------------------------------------------------------- the front end
def _mel_corners() -> np.ndarray:
    """The 66 corner frequencies (Hz) of liser.data.audio.mel_filters' 64 triangles, float32."""
    lo, hi = audio._hz_to_mel(audio.F_MIN), audio._hz_to_mel(min(audio.F_MAX, audio.SAMPLE_RATE / 2))
    return audio._mel_to_hz(np.linspace(lo, hi, audio.N_MELS + 2)).astype(np.float32)


def _mel_matrix(g: _Graph) -> str:
    """liser.data.audio.mel_filters().T computed in the graph: [1025, 64] float32 (Slaney triangles, area-normalised)."""
    pts = _mel_corners()
    n_bins = audio.N_FFT // 2 + 1
    freqs = g.const((np.arange(n_bins) * (audio.SAMPLE_RATE / audio.N_FFT)).astype(np.float32)[:, None])  # [1025, 1]
    lower_pt, centre, upper_pt = (g.const(pts[None, i : i + audio.N_MELS]) for i in range(3))  # [1, 64] each
    rising = g.op("Div", g.op("Sub", freqs, lower_pt), g.op("Sub", centre, lower_pt))
    falling = g.op("Div", g.op("Sub", upper_pt, freqs), g.op("Sub", upper_pt, centre))
    tri = g.op("Max", g.op("Min", rising, falling), g.f32(0.0))
    return g.op("Mul", tri, g.op("Div", g.f32(2.0), g.op("Sub", upper_pt, lower_pt)), hint="mel_t")


def _hann(g: _Graph) -> str:
    """The periodic Hann window of N_FFT samples (torch.hann_window's), [2048] float32."""
    n = np.arange(audio.N_FFT, dtype=np.float64)
    return g.const((0.5 - 0.5 * np.cos(2.0 * np.pi * n / audio.N_FFT)).astype(np.float32), hint="hann")


def _power_stft(g: _Graph, padded: str) -> str:
    """|STFT|^2 [T, 1025] of the reflect-padded signal [n + 2048] with the STFT op (opset 17)."""
    sig = g.op("Unsqueeze", padded, g.i64(0, 2))  # [1, len, 1]
    spec = g.op("STFT", sig, g.const(np.int64(audio.HOP)), _hann(g), g.const(np.int64(audio.N_FFT)), onesided=1)
    sq = g.op("Mul", spec, spec)  # [1, T, 1025, 2]
    return g.op("ReduceSum", g.op("Squeeze", sq, g.i64(0)), g.i64(-1), keepdims=0, hint="power")


def _dft_basis(g: _Graph, fn: str) -> str:
    """cos or sin(2 pi n k / N) [2048, 1025] from exact integer phases (n k mod N), made in the graph."""
    n_bins = audio.N_FFT // 2 + 1
    n = g.const(np.arange(audio.N_FFT, dtype=np.int64)[:, None])
    k = g.const(np.arange(n_bins, dtype=np.int64)[None, :])
    phase = g.op("Mod", g.op("Mul", n, k), g.const(np.int64(audio.N_FFT)))
    angle = g.op("Mul", g.op("Cast", phase, to=1), g.f32(2.0 * math.pi / audio.N_FFT))
    return g.op(fn, angle, hint=fn.lower())


def _power_matmul(g: _Graph, padded: str, frames: str) -> str:
    """|STFT|^2 [T, 1025] with the DFT as two MatMuls on Hann-windowed frames (runtimes without STFT)."""
    starts = g.op("Mul", g.op("Range", g.const(np.int64(0)), frames, g.const(np.int64(1))), g.const(np.int64(audio.HOP)))
    idx = g.op("Add", g.op("Unsqueeze", starts, g.i64(1)), g.const(np.arange(audio.N_FFT, dtype=np.int64)[None, :]))
    windowed = g.op("Mul", g.op("Gather", padded, idx), _hann(g))  # [T, 2048]
    re = g.op("MatMul", windowed, _dft_basis(g, "Cos"))
    im = g.op("MatMul", windowed, _dft_basis(g, "Sin"))
    return g.op("Add", g.op("Mul", re, re), g.op("Mul", im, im), hint="power")


def _log_mel(g: _Graph, wave: str, dft: str) -> tuple[str, str]:
    """Waveform [n] -> (log-Mel frames [T, 64] float32 holding float16 values, T as a 0-d int64):
    liser.data.frontend.features_numpy's steps."""
    x = g.op("Sub", wave, g.op("ReduceMean", wave, keepdims=1))  # DC before the zero padding
    n = g.op("Shape", wave)
    pad = g.op("Max", g.op("Sub", g.i64(audio.CLIP_SAMPLES), n), g.i64(0))
    x = g.op("Pad", x, g.op("Concat", g.i64(0), pad, axis=0), g.f32(0.0))  # zero-padded to 3 s
    x = g.op("Sub", x, g.op("ReduceMean", x, keepdims=1))  # log_mel_numpy removes the mean again
    half = audio.N_FFT // 2
    padded = g.op("Pad", x, g.i64(half, half), mode="reflect")  # centred frames
    total = g.op("Add", g.op("Div", g.op("Squeeze", g.op("Shape", x), g.i64(0)), g.const(np.int64(audio.HOP))),
                 g.const(np.int64(1)), hint="n_frames")
    power = _power_stft(g, padded) if dft == "stft" else _power_matmul(g, padded, total)
    mel = g.op("MatMul", power, _mel_matrix(g))  # [T, 64]
    db = g.op("Mul", g.op("Log", g.op("Max", mel, g.f32(audio.LOG_FLOOR))), g.f32(10.0 / math.log(10.0)))
    return g.op("Cast", g.op("Cast", db, to=10), to=1, hint="logmel"), total  # float16 and back, as cached


# ---------------------------------------------------------------- the speech detector (liser.data.windowing)
def _band_energy(g: _Graph, frames: str) -> str:
    """windowing.band_energy_db: [T, 64] dB -> [T] dB, the power sum of Mel bands 6..49."""
    b = g.op("Slice", frames, g.i64(windowing.SPEECH_BANDS.start), g.i64(windowing.SPEECH_BANDS.stop), g.i64(1))
    m = g.op("ReduceMax", b, axes=[1], keepdims=1)
    lin = g.op("Exp", g.op("Mul", g.op("Sub", b, m), g.f32(math.log(10.0) / 10.0)))
    s = g.op("ReduceSum", lin, g.i64(1), keepdims=1)
    db = g.op("Add", m, g.op("Mul", g.op("Log", s), g.f32(10.0 / math.log(10.0))))
    return g.op("Squeeze", db, g.i64(1), hint="band_db")


def _percentile99(g: _Graph, e: str, total: str) -> str:
    """numpy.percentile(e, 99) (linear interpolation) of e [T]: a 0-d float32."""
    asc, _ = g.op("TopK", e, g.op("Unsqueeze", total, g.i64(0)), largest=0, sorted=1, n_out=2)
    pos = g.op("Mul", g.op("Cast", g.op("Sub", total, g.const(np.int64(1))), to=1), g.f32(0.99))
    lo_f = g.op("Floor", pos)
    lo = g.op("Cast", lo_f, to=7)
    hi = g.op("Min", g.op("Add", lo, g.const(np.int64(1))), g.op("Sub", total, g.const(np.int64(1))))
    a, b = g.op("Gather", asc, lo), g.op("Gather", asc, hi)
    return g.op("Add", a, g.op("Mul", g.op("Sub", b, a), g.op("Sub", pos, lo_f)), hint="peak")


def _running_min(g: _Graph, x3: str, width: int) -> str:
    """min over each run of `width` consecutive values of x3 [1, 1, L]: [1, 1, L - width + 1] (MaxPool of -x)."""
    return g.op("Neg", g.op("MaxPool", g.op("Neg", x3), kernel_shape=[width], strides=[1]))


def _local_floor(g: _Graph, e: str, total: str, end: str) -> str:
    """windowing.local_floor: the higher of min(e) over the half-window up to and from each frame, [T]."""
    half = int(windowing.FLOOR_WINDOW_S / 2 / audio.HOP_S)
    e3 = g.op("Pad", g.op("Unsqueeze", e, g.i64(0, 1)), g.i64(0, 0, half, 0, 0, half), mode="edge")
    mins = g.op("Squeeze", _running_min(g, e3, half + 1), g.i64(0, 1))  # mins[i] = min(padded[i : i + half + 1])
    t = g.op("Range", g.const(np.int64(0)), total, g.const(np.int64(1)))
    h = g.const(np.int64(half))
    neg_inf = g.f32(-np.inf)
    before = g.op("Where", g.op("GreaterOrEqual", t, h),
                  g.op("Slice", mins, g.i64(0), g.op("Unsqueeze", total, g.i64(0)), g.i64(0)), neg_inf)
    after = g.op("Where", g.op("Less", g.op("Add", t, h), end),
                 g.op("Slice", mins, g.i64(half), g.op("Unsqueeze", g.op("Add", total, h), g.i64(0)), g.i64(0)), neg_inf)
    return g.op("Max", before, after, hint="floor")


def _open_runs(g: _Graph, on: str) -> str:
    """windowing._drop_short_runs(on, 3) as a morphological opening: [T] 0/1 float -> [T] 0/1 float."""
    k = windowing.MIN_RUN
    r = k // 2
    x3 = g.op("Pad", g.op("Unsqueeze", on, g.i64(0, 1)), g.i64(0, 0, r, 0, 0, r), g.f32(0.0))
    core = _running_min(g, x3, k)  # frames whose neighbourhood is all speech
    grown = g.op("MaxPool", g.op("Pad", core, g.i64(0, 0, r, 0, 0, r), g.f32(0.0)), kernel_shape=[k], strides=[1])
    return g.op("Squeeze", grown, g.i64(0, 1), hint="speech")


def _extent(g: _Graph, frames: str, total: str) -> str:
    """windowing.extent: frames before the trailing zero padding (any band above -99 dB), a 0-d int64."""
    loud = g.op("Greater", g.op("ReduceMax", frames, axes=[1], keepdims=0), g.f32(10.0 * math.log10(audio.LOG_FLOOR) + 1.0))
    t = g.op("Range", g.const(np.int64(0)), total, g.const(np.int64(1)))
    last = g.op("ReduceMax", g.op("Where", loud, t, g.const(np.int64(-1))), keepdims=0)
    return g.op("Where", g.op("Less", last, g.const(np.int64(0))), total, g.op("Add", last, g.const(np.int64(1))))


def _speech_span(g: _Graph, frames: str, total: str, floor=None) -> tuple[str, str, str, str]:
    """windowing.plan's span for "speech": (a, n, speech [T] 0/1 float, speech_s), a and n 0-d int64.

    A span shorter than MIN_WINDOW_FRAMES (or none) becomes the whole file
    (plan(strict=False)); `speech_s` is the span's length in seconds (0 without speech) for the caller to refuse.
    `floor`: the local floor's graph (default `_local_floor`; a timeline window's is `_window_local_floor`).
    """
    e = _band_energy(g, frames)
    end = _extent(g, frames, total)
    peak = _percentile99(g, e, total)
    local_floor = (floor or _local_floor)(g, e, total, end)
    above_floor = g.op("Greater", e, g.op("Add", local_floor, g.f32(windowing.LOCAL_MARGIN_DB)))
    in_range = g.op("Greater", e, g.op("Sub", peak, g.f32(windowing.DYNAMIC_RANGE_DB)))
    not_silent = g.op("Greater", peak, g.f32(10.0 * math.log10(audio.LOG_FLOOR) + windowing.DYNAMIC_RANGE_DB / 4))
    on = g.op("And", g.op("And", above_floor, in_range), not_silent)
    speech = _open_runs(g, g.op("Cast", on, to=1))
    t = g.op("Range", g.const(np.int64(0)), total, g.const(np.int64(1)))
    is_on = g.op("Greater", speech, g.f32(0.5))
    first = g.op("ReduceMin", g.op("Where", is_on, t, total), keepdims=0)
    last = g.op("ReduceMax", g.op("Where", is_on, t, g.const(np.int64(-1))), keepdims=0)
    m = g.const(np.int64(windowing.MARGIN_FRAMES))
    a = g.op("Max", g.op("Sub", first, m), g.const(np.int64(0)))
    b = g.op("Min", end, g.op("Add", g.op("Add", last, g.const(np.int64(1))), m))
    found = g.op("GreaterOrEqual", last, g.const(np.int64(0)))
    n = g.op("Where", found, g.op("Sub", b, a), g.const(np.int64(0)))
    speech_s = g.op("Mul", g.op("Cast", n, to=1), g.f32(audio.HOP_S))
    ok = g.op("GreaterOrEqual", n, g.const(np.int64(windowing.MIN_WINDOW_FRAMES)))
    return g.op("Where", ok, a, g.const(np.int64(0))), g.op("Where", ok, n, total), speech, speech_s


# ---------------------------------------------------------------- windows
def _window_starts(g: _Graph, n: str, stride_s: float) -> str:
    """liser.data.audio.window_starts(n, stride_s): [W] int64 start frames of 3 s windows over n frames."""
    step = stride_s / audio.HOP_S
    last = g.op("Max", g.op("Sub", n, g.const(np.int64(audio.CLIP_FRAMES))), g.const(np.int64(0)))
    count = g.op("Add", g.op("Cast", g.op("Floor", g.op("Div", g.op("Cast", last, to=11), g.const(np.float64(step)))),
                             to=7), g.const(np.int64(1)))
    k = g.op("Cast", g.op("Range", g.const(np.int64(0)), count, g.const(np.int64(1))), to=11)
    on_grid = g.op("Cast", g.op("Round", g.op("Mul", k, g.const(np.float64(step)))), to=7)  # half to even, as numpy
    last1 = g.op("Unsqueeze", last, g.i64(0))
    tail = g.op("Slice", on_grid, g.i64(-1), g.i64(np.iinfo(np.int64).max), g.i64(0))
    extra = g.op("Cast", g.op("Not", g.op("Equal", tail, last1)), to=7)  # the last window flush with the end
    keep = g.op("Add", g.op("Unsqueeze", count, g.i64(0)), extra)
    return g.op("Slice", g.op("Concat", on_grid, last1, axis=0), g.i64(0), keep, g.i64(0), hint="starts")


def _weights(g: _Graph, starts: str, length: str, speech: str | None) -> str:
    """Each window's weight [W] (sum 1): equal ("pad"), or its share of speech frames + 0.001 (span_plan)."""
    ones = g.op("Cast", g.op("Add", g.op("Mul", starts, g.const(np.int64(0))), g.const(np.int64(1))), to=1)
    if speech is None:
        share = ones
    else:
        cs = g.op("Concat", g.const(np.zeros(1, np.float32)), g.op("CumSum", speech, g.const(np.int64(0))), axis=0)
        inside = g.op("Sub", g.op("Gather", cs, g.op("Add", starts, length)), g.op("Gather", cs, starts))
        share = g.op("Add", g.op("Div", inside, g.op("Cast", length, to=1)), g.f32(1e-3))
    return g.op("Div", share, g.op("ReduceSum", share, keepdims=1), hint="weights")


# ---------------------------------------------------------------- the student
def _student_body(student, frames: str, starts: str, length: str):
    """The Loop body: windows i*BATCH .. +BATCH of `frames` [T, 64] -> the student's logits [BATCH, K].

    `student` is the log-Mel student's onnx.ModelProto (input `logmel`
    [B, 64, L], one output); its nodes and initializers are copied in with
    every name prefixed by "student/", so they cannot meet the outer graph's.
    """
    from onnx import TensorProto, helper

    g = _Graph("body/")
    i, cond = "body/i", "body/cond"
    a = g.op("Mul", i, g.const(np.int64(BATCH)))
    s = g.op("Slice", starts, g.op("Unsqueeze", a, g.i64(0)),
             g.op("Unsqueeze", g.op("Add", a, g.const(np.int64(BATCH))), g.i64(0)), g.i64(0))
    idx = g.op("Add", g.op("Unsqueeze", s, g.i64(1)),
               g.op("Unsqueeze", g.op("Range", g.const(np.int64(0)), length, g.const(np.int64(1))), g.i64(0)))
    windows = g.op("Transpose", g.op("Gather", frames, idx), perm=[0, 2, 1])  # [BATCH, 64, L]
    logits = _inline_student(g, student, windows)
    g.nodes.append(helper.make_node("Identity", [cond], ["body/cond_out"]))
    g.nodes.append(helper.make_node("Identity", [logits], ["body/logits"]))
    inputs = [helper.make_tensor_value_info(i, TensorProto.INT64, []),
              helper.make_tensor_value_info(cond, TensorProto.BOOL, [])]
    outputs = [helper.make_tensor_value_info("body/cond_out", TensorProto.BOOL, []),
               helper.make_tensor_value_info("body/logits", TensorProto.FLOAT, None)]
    return helper.make_graph(g.nodes, "student_windows", inputs, outputs, g.inits)


def _inline_student(g: _Graph, student, windows: str) -> str:
    """The student's nodes and initializers appended to `g`, fed `windows` [B, 64, L]; its logits' name [B, K].

    Every name of the student's is prefixed by "student/", so it cannot meet the graph's own.
    """
    from onnx import helper

    sg = student.graph
    rename = {sg.input[0].name: windows}
    for init in sg.initializer:
        rename[init.name] = "student/" + init.name
    for node in sg.node:
        for o in node.output:
            if o:
                rename[o] = "student/" + o
    for j, node in enumerate(sg.node):
        new = helper.make_node(node.op_type, [rename.get(x, x) if x else "" for x in node.input],
                               [rename[o] if o else "" for o in node.output], name=f"student/{node.name or j}",
                               domain=node.domain or None)
        new.attribute.extend(node.attribute)
        g.nodes.append(new)
    for init in sg.initializer:
        copy = type(init)()
        copy.CopyFrom(init)
        copy.name = rename[init.name]
        g.inits.append(copy)
    return rename[sg.output[0].name]


def _window_logits(g: _Graph, student, frames: str, starts: str, length: str, k: int) -> str:
    """The student's logits [W, K] of the windows at `starts` (each `length` frames), BATCH at a time (Loop)."""
    w = g.op("Shape", starts)
    n_iter = g.op("Div", g.op("Add", w, g.i64(BATCH - 1)), g.i64(BATCH))
    padded = g.op("Pad", starts, g.op("Concat", g.i64(0), g.op("Sub", g.op("Mul", n_iter, g.i64(BATCH)), w), axis=0),
                  mode="edge")  # the last batch filled up with the last window, dropped after the Loop
    body = _student_body(student, frames, padded, length)
    stacked = g.op("Loop", g.op("Squeeze", n_iter, g.i64(0)), g.const(np.bool_(True)), body=body)
    flat = g.op("Reshape", stacked, g.i64(-1, k))  # [n_iter * BATCH, K]
    return g.op("Slice", flat, g.i64(0), w, g.i64(0), hint="window_logits")


def _checked_mode(meta: dict, dft: str) -> str:
    """The student's windowing from its metadata; ValueError for an unknown `dft` or windowing."""
    if dft not in DFTS:
        raise ValueError(f"dft must be one of {DFTS}, got {dft!r}")
    mode = json.loads(meta.get("front_end", "{}")).get("windowing", windowing.PAD)
    if mode not in windowing.WINDOWINGS:
        raise ValueError(f"unknown windowing {mode!r}")
    return mode


def build(student_path: str | Path, meta: dict[str, str], dft: str = "stft"):
    """The waveform graph (an onnx.ModelProto) around the log-Mel student at `student_path`.

    `meta` is the student's metadata_props (liser.inference.export.metadata): its
    `classes` and `front_end["windowing"]` decide the outputs and the
    windows. `dft`: "stft" (the opset-17 STFT op) or "matmul" (the DFT as
    two MatMuls with a basis made in the graph). Raises ValueError for an
    unknown `dft` or windowing.
    """
    import onnx
    from onnx import TensorProto, helper

    mode = _checked_mode(meta, dft)
    student = onnx.load(str(student_path))
    k = len(json.loads(meta["classes"]))
    stride = float(meta.get("eval_stride_s", audio.EVAL_STRIDE_S))
    g = _Graph()
    frames, total = _log_mel(g, INPUT, dft)
    if mode == windowing.SPEECH:
        a, n, speech, speech_s = _speech_span(g, frames, total)
    else:
        a, n, speech, speech_s = g.const(np.int64(0)), total, None, None
    length = g.op("Min", n, g.const(np.int64(audio.CLIP_FRAMES)), hint="window_frames")
    starts = g.op("Add", _window_starts(g, n, stride), a, hint="window_starts")
    weights = _weights(g, starts, length, speech)
    per_window = _window_logits(g, student, frames, starts, length, k)
    file_logits = g.op("ReduceSum", g.op("Mul", per_window, g.op("Unsqueeze", weights, g.i64(1))), g.i64(0), keepdims=0)
    named = {"logits": file_logits, "probabilities": g.op("Softmax", file_logits, axis=-1),
             "window_logits": per_window, "window_weight": weights,
             "window_start_s": g.op("Mul", g.op("Cast", starts, to=1), g.f32(audio.HOP_S))}
    if speech_s is not None:
        named[SPEECH_OUTPUT] = speech_s
    named["classes"] = g.const(np.array(json.loads(meta["classes"]), dtype=object), hint="class_names")
    for out, src in named.items():
        g.nodes.append(helper.make_node("Identity", [src], [out]))
    shapes = {"probabilities": [k], "logits": [k], "window_logits": ["windows", k], "window_weight": ["windows"],
              "window_start_s": ["windows"], SPEECH_OUTPUT: []}
    shapes["classes"] = [k]
    outputs = [helper.make_tensor_value_info(o, TensorProto.STRING if o == "classes" else TensorProto.FLOAT, shapes[o])
               for o in named]
    graph = helper.make_graph(g.nodes, "liser_waveform", [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT,
                              ["samples"])], outputs, g.inits)
    opsets = {o.domain: o.version for o in student.opset_import}
    opsets[""] = max(opsets.get("", OPSET), OPSET)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                              producer_name="liser")
    model.ir_version = student.ir_version
    return model


# ---------------------------------------------------------------- one timeline window (the page's on-device mode)
WINDOW_FORMAT = "liser-timeline-window-onnx"
FIRST_FRAME = "first_frame"
WINDOW_CONTRACT = ("waveform: float32 [samples], mono, 16 kHz: a segment of a stream as liser.inference.serve.LiveTimeline "
                   "cuts it (from CONTEXT samples before the window's first frame, on the frame grid, to where its "
                   "last frame's STFT ends or the stream ends); first_frame: int64 [], the window's first row in "
                   "the segment's frames")


def _window_local_floor(g: _Graph, e: str, total: str, end: str) -> str:
    """windowing.local_floor(e, end, open_ends=True) of a window's energies e [T]: the window's edges are not
    the recording's, so each side's minimum is over the part inside the window; only zero padding (frames from
    `end` on, when end < T) counts as -inf."""
    half = int(windowing.FLOOR_WINDOW_S / 2 / audio.HOP_S)
    e3 = g.op("Pad", g.op("Unsqueeze", e, g.i64(0, 1)), g.i64(0, 0, half, 0, 0, half), mode="edge")
    mins = g.op("Squeeze", _running_min(g, e3, half + 1), g.i64(0, 1))  # mins[i] = min(padded[i : i + half + 1])
    t = g.op("Range", g.const(np.int64(0)), total, g.const(np.int64(1)))
    h = g.const(np.int64(half))
    before = g.op("Slice", mins, g.i64(0), g.op("Unsqueeze", total, g.i64(0)), g.i64(0))
    after_min = g.op("Slice", mins, g.i64(half), g.op("Unsqueeze", g.op("Add", total, h), g.i64(0)), g.i64(0))
    inside = g.op("Or", g.op("Less", g.op("Add", t, h), end), g.op("Equal", end, total))
    return g.op("Max", before, g.op("Where", inside, after_min, g.f32(-np.inf)), hint="window_floor")


def _window_span(g: _Graph, window: str) -> tuple[str, str, str]:
    """windowing.window_span of a [94, 64] window: (a, n, speech_s); a and n 0-d int64, the whole window when
    the span is shorter than MIN_WINDOW_FRAMES (speech_s < MIN_SPEECH_S then: the caller gives no label)."""
    a, n, _, speech_s = _speech_span(g, window, g.const(np.int64(audio.CLIP_FRAMES)), _window_local_floor)
    return a, n, speech_s


def build_window(student_path: str | Path, meta: dict[str, str], dft: str = "matmul"):
    """One timeline window's graph (an onnx.ModelProto): what `EmotionModel.timeline_frames` gives for the
    window of frames first_frame .. first_frame + 93 of a segment's features (LiveTimeline._window).

    Inputs `waveform` (the segment, WINDOW_CONTRACT) and `first_frame`;
    outputs `probabilities` [K], `logits` [K], `classes` [K] and, for a
    "speech" model, `speech_s` [] (the window's speech span, margins
    included; under MIN_SPEECH_S the window has no label). The front end is
    the whole-file graph's (`_log_mel`: features_numpy of the segment); a
    "speech" model scores the span inside the window (windowing.window_span),
    a "pad" model the whole window.
    """
    import onnx
    from onnx import TensorProto, helper

    mode = _checked_mode(meta, dft)
    student = onnx.load(str(student_path))
    classes = json.loads(meta["classes"])
    g = _Graph()
    frames, _ = _log_mel(g, INPUT, dft)
    first = g.op("Unsqueeze", FIRST_FRAME, g.i64(0))
    window = g.op("Slice", frames, first, g.op("Add", first, g.i64(audio.CLIP_FRAMES)), g.i64(0), hint="window")
    named = {}
    if mode == windowing.SPEECH:
        a, n, named[SPEECH_OUTPUT] = _window_span(g, window)
        a1 = g.op("Unsqueeze", a, g.i64(0))
        window = g.op("Slice", window, a1, g.op("Add", a1, g.op("Unsqueeze", n, g.i64(0))), g.i64(0), hint="span")
    x = g.op("Unsqueeze", g.op("Transpose", window, perm=[1, 0]), g.i64(0))  # [1, 64, L]
    logits = g.op("Squeeze", _inline_student(g, student, x), g.i64(0))
    named = {"logits": logits, "probabilities": g.op("Softmax", logits, axis=-1), **named,
             "classes": g.const(np.array(classes, dtype=object), hint="class_names")}
    for out, src in named.items():
        g.nodes.append(helper.make_node("Identity", [src], [out]))
    k = len(classes)
    shapes = {"probabilities": [k], "logits": [k], SPEECH_OUTPUT: [], "classes": [k]}
    outputs = [helper.make_tensor_value_info(o, TensorProto.STRING if o == "classes" else TensorProto.FLOAT, shapes[o])
               for o in named]
    inputs = [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["samples"]),
              helper.make_tensor_value_info(FIRST_FRAME, TensorProto.INT64, [])]
    graph = helper.make_graph(g.nodes, "liser_timeline_window", inputs, outputs, g.inits)
    opsets = {o.domain: o.version for o in student.opset_import}
    opsets[""] = max(opsets.get("", OPSET), OPSET)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                              producer_name="liser")
    model.ir_version = student.ir_version
    meta = {**meta, "format": WINDOW_FORMAT, "student_format": meta.get("format", ""), "input": WINDOW_CONTRACT,
            "student_input": meta.get("input", ""), "dft": dft}
    for key, value in meta.items():
        p = model.metadata_props.add()
        p.key, p.value = key, value
    onnx.checker.check_model(model)
    return model


def window_graph_bytes(student_path: str | Path, dft: str = "matmul") -> bytes:
    """build_window of a log-Mel student .onnx (LiserError when it is not one), serialised: what `liser serve`
    gives its page's on-device mode."""
    return build_window(student_path, student_metadata(student_path), dft).SerializeToString()


def run_window(sess, segment: np.ndarray, first_frame: int) -> dict[str, np.ndarray]:
    """The window graph's outputs by name for one segment [samples] (16 kHz float32) and its window's first row."""
    feed = {INPUT: np.ascontiguousarray(segment, dtype=np.float32), FIRST_FRAME: np.array(first_frame, np.int64)}
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))


# ---------------------------------------------------------------- writing and checking
PARITY_TOLERANCE = 1e-3  # max |probability difference| against `liser predict` an fp32 student may show
CHECK_FILES = 200  # at most this many real files are checked


def metadata(student_meta: dict[str, str], dft: str) -> dict[str, str]:
    """The waveform graph's metadata_props: the student's, with format, input, output and dft said anew."""
    meta = dict(student_meta)
    speech = json.loads(meta.get("front_end", "{}")).get("windowing") == windowing.SPEECH
    meta.update({
        "format": FORMAT,
        "student_format": meta.get("format", ""),  # liser-student-onnx: `liser export` may overwrite this file
        "input": CONTRACT,
        "output": "probabilities [K] (softmax of the file's logits), logits [K], window_logits [W, K], "
                  "window_start_s [W], window_weight [W], classes [K] (strings)" +
                  (f", {SPEECH_OUTPUT} [] (refuse the file when < {MIN_SPEECH_S} s: no speech found)" if speech else ""),
        "front_end_in_graph": f"DC removal, 3 s zero padding, centred Hann STFT ({dft}), Slaney Mel, dB, float16 "
                              f"rounding, {'speech-span' if speech else 'pad'} windows every "
                              f"{meta.get('eval_stride_s', audio.EVAL_STRIDE_S)} s, weighted mean of logits, softmax",
        "dft": dft,
        "student_input": meta.get("input", ""),
    })
    return meta


def student_metadata(path: str | Path) -> dict[str, str]:
    """metadata_props of a log-Mel student .onnx; LiserError when it is not one (`liser export` writes them)."""
    import onnx

    from liser.core.errors import LiserError

    m = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in m.metadata_props}
    if meta.get("format") != "liser-student-onnx":
        said = "already a waveform graph" if meta.get("format") == FORMAT else "no liser log-Mel student metadata"
        raise LiserError(f"{path}: {said} (wrap a log-Mel student exported by `liser export`)")
    return meta


def write(student_path: str | Path, out: str | Path, dft: str = "matmul") -> Path:
    """Build the waveform graph around the log-Mel student at `student_path` and save it (with metadata) to `out`."""
    import onnx

    meta = student_metadata(student_path)
    model = build(student_path, meta, dft)
    for k, v in metadata(meta, dft).items():
        p = model.metadata_props.add()
        p.key, p.value = k, v
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return Path(out)


def session(path: str | Path, threads: int = 1):
    """An onnxruntime CPU session on `threads` threads (liser.core.onnxrt.session)."""
    from liser.core.onnxrt import session as ort_session

    return ort_session(path, threads)


def run(sess, signal: np.ndarray) -> dict[str, np.ndarray]:
    """The graph's outputs by name for one mono 16 kHz float32 signal [samples]."""
    x = np.ascontiguousarray(signal, dtype=np.float32)
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {INPUT: x})))


def compare(sess, model, path: str | Path) -> dict:
    """One file through the graph and through `liser predict`'s EmotionModel `model`: labels, max |dp|, refusals.

    Returns {"file", "seconds", "same_label", "max_dp", "refused", "graph_refuses"}: `refused` when
    predict raised LiserError (no speech), `graph_refuses` when the graph's speech_s says so.
    """
    from liser.core.errors import LiserError
    from liser.inference.decode import read_input

    sig = read_input(path)
    out = run(sess, sig)
    speech_s = out.get(SPEECH_OUTPUT)
    row = {"file": str(path), "seconds": round(len(sig) / audio.SAMPLE_RATE, 3),
           "graph_refuses": bool(speech_s is not None and float(speech_s) < MIN_SPEECH_S)}
    try:
        p = model.predict_file(path)
    except LiserError:
        return {**row, "refused": True, "same_label": None, "max_dp": None}
    ref = np.array([p.probabilities[c] for c in model.classes])
    got = out["probabilities"].astype(np.float64)
    return {**row, "refused": False, "same_label": p.label == model.classes[int(np.argmax(got))],
            "max_dp": float(np.abs(ref - got).max())}


def check(wave_path: str | Path, student_path: str | Path, files: list[str], threads: int = 1) -> dict:
    """Parity of a waveform graph with `liser predict` on its student, over real `files` (at most CHECK_FILES).

    Returns {"files", "same_label", "refusals_agree", "max_dp", "rows"}.
    """
    from liser.inference.model import load

    sess, model = session(wave_path, threads), load(student_path, threads=threads)
    picked = list(files)[:: max(1, len(files) // CHECK_FILES)][:CHECK_FILES]  # spread over the list (its corpora)
    rows = [compare(sess, model, f) for f in picked]
    scored = [r for r in rows if not r["refused"]]
    return {"files": len(rows), "same_label": sum(bool(r["same_label"]) for r in scored), "scored": len(scored),
            "refusals_agree": all(r["refused"] == r["graph_refuses"] for r in rows),
            "max_dp": max((r["max_dp"] for r in scored), default=0.0), "rows": rows}


def export(student_path: str | Path, out: str | Path, files: list[str], dft: str = "matmul",
           tolerance: float | None = PARITY_TOLERANCE, threads: int = 1, say=print) -> dict:
    """Write the waveform graph of a log-Mel student to `out`, checked against `liser predict` on real `files`.

    Fails (LiserError, nothing written at `out`) when a label differs, a
    refusal differs, or (with `tolerance`, None for int8) a probability
    differs by more than it. Returns `check`'s summary without the rows, with "bytes".
    """
    from liser.core.atomic import commit, temp_beside
    from liser.core.errors import LiserError

    out = Path(out)
    tmp = temp_beside(out, suffix=".onnx")
    try:
        write(student_path, tmp, dft)
        res = check(tmp, student_path, files, threads)
        say(f"waveform graph {out.name}: {res['same_label']}/{res['scored']} labels as `liser predict`, max |dp| "
            f"{res['max_dp']:.1e} on {res['files']} real files; refusals (no speech) "
            f"{'agree' if res['refusals_agree'] else 'DIFFER'}")
        bad = res["same_label"] < res["scored"] or not res["refusals_agree"]
        if bad or (tolerance is not None and res["max_dp"] > tolerance):
            raise LiserError(f"{out}: waveform parity check failed (labels {res['same_label']}/{res['scored']}, "
                             f"max |dp| {res['max_dp']:.1e}, limit {tolerance}); nothing written")
        commit(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    summary = {k: v for k, v in res.items() if k != "rows"}
    return {**summary, "bytes": out.stat().st_size, "dft": dft}
