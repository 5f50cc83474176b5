"""The page's "on this device" timeline against the server's (liser serve), window by window, on real speech.

    PYTHONPATH=src python bench/bench_device_timeline.py

Four streams of real speech (4 RAVDESS clips of the browser test's actor;
12 files each of EmoDB, CREMA-D and RAVDESS actor 7 with 0.3-2.5 s of quiet
noise between them, 14-61 s) with the packaged default model, 0.5 s hop:

1. the timeline-window graph (liser.inference.waveform_onnx.build_window) on the very
   segments liser.inference.serve.LiveTimeline cuts, against LiveTimeline's windows
   (16 kHz in: the graph alone);
2. the naive alternative, the shipped whole-file graph on each window's
   own 3 s of samples (its front end, speech detector and windowing then
   see a 3 s clip, not a window of a stream);
3. the page's resampler (device.js's Resampler; `resample` below is its
   numpy twin, equal to it sample for sample in float32) against soxr HQ,
   the server's: LiveTimeline of the 16 kHz samples each gives, from the
   same 44.1 kHz and 48 kHz streams.

For each: windows, labels equal (no-speech windows included), max |dp|
over the windows both label. Prints them and writes
bench/results/device_timeline.json.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import onnxruntime

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "bench" / "results" / "device_timeline.json"
HOP_S = 0.5


def resample(x: np.ndarray, rate: int, out: int = 16_000, stop_db: float = 120.0, passband: float = 0.913) -> np.ndarray:
    """device.js's Resampler in numpy (the same table, the same sums in float64, the same output length)."""
    g = math.gcd(rate, out)
    up, down = out // g, rate // g
    nyq = min(rate, out) / 2
    fc, dw = (1 + passband) / 2 * nyq, (1 - passband) * nyq
    beta = 0.1102 * (stop_db - 8.7)
    half = math.ceil((stop_db - 7.95) / (2.285 * 2 * math.pi * dw / rate) / 2)
    k = np.arange(-half, half + 1)
    tau = np.arange(up)[:, None] / up - k[None, :]
    w = np.where(np.abs(tau) < half, np.i0(beta * np.sqrt(np.clip(1 - (tau / half) ** 2, 0, 1))) / np.i0(beta), 0)
    table = 2 * fc / rate * np.sinc(2 * fc / rate * tau) * w
    n_out = int(np.floor(len(x) * up / down + 0.5))
    xp = np.concatenate([np.zeros(half), x.astype(np.float64), np.zeros(half + 2)])
    y = np.empty(n_out)
    for a in range(0, n_out, 8000):
        j = np.arange(a, min(n_out, a + 8000))
        q, ph = np.divmod(j * down, up)
        y[j] = np.einsum("ij,ij->i", xp[q[:, None] + np.arange(2 * half + 1)], table[ph])
    return y.astype(np.float32)


def streams():
    """(name, 16 kHz float32 signal): the four streams of the module docstring."""
    from liser.data import audio

    r = DATA / "ravdess"
    clips = ("03-01-01-01-01-01-04", "03-01-03-02-01-01-04", "03-01-04-02-01-01-04", "03-01-05-02-01-01-04")
    yield "ravdess4", np.concatenate([audio.load_audio(r / "Actor_04" / f"{c}.flac") for c in clips])
    rng = np.random.default_rng(0)
    for name, files in (("emodb12", sorted((DATA / "emodb" / "wav").glob("*.flac"))[::40][:12]),
                        ("cremad12", sorted((DATA / "cremad" / "AudioWAV").glob("*"))[::600][:12]),
                        ("ravdess-a7", sorted((DATA / "ravdess" / "Actor_07").glob("*.flac"))[::5][:12])):
        parts = []
        for f in files:
            parts += [audio.load_audio(f), (rng.standard_normal(int(rng.uniform(0.3, 2.5) * 16000)) * 1e-3).astype(np.float32)]
        yield name, np.concatenate(parts)


def agreement(ref: list, got: list) -> dict:
    """Windows, labels equal (None included) and max |dp| where both label: ref/got are (label, {class: p})."""
    dp = [max(abs(a[1][c] - b[1][c]) for c in a[1]) for a, b in zip(ref, got) if a[0] is not None and b[0] is not None]
    return {"windows": len(ref), "labels_equal": sum(a[0] == b[0] for a, b in zip(ref, got)),
            "no_speech": sum(a[0] is None for a in ref), "max_dp": float(max(dp, default=0.0))}


def graphs_vs_server(model, window_sess, whole_sess, x: np.ndarray) -> tuple[dict, dict]:
    """(1) and (2) of the module docstring on one 16 kHz stream."""
    from liser.data import audio
    from liser.inference import serve
    from liser.inference import waveform_onnx

    rows = []

    class Spy(serve.LiveTimeline):
        def _features(self, first, stop):
            a = self._segment_start(first)
            self.segment = (a, self.buf[a - self.buf_start : min(self.total, (stop - 1) * audio.HOP + serve.CONTEXT)
                                        - self.buf_start].copy())
            return super()._features(first, stop)

        def _window(self, f, c, frames):  # c: the first frame of the 3 s the window is scored from (= f at 3 s)
            p = super()._window(f, c, frames)
            a, seg = self.segment
            rows.append(((p.label, p.probabilities), _graph(waveform_onnx.run_window(window_sess, seg, c - a // audio.HOP)),
                         _graph(waveform_onnx.run(whole_sess, x[c * audio.HOP : c * audio.HOP + audio.CLIP_SAMPLES]))))
            return p

    def _graph(out):
        p = {c: float(v) for c, v in zip(model.classes, out["probabilities"])}
        return (None, {}) if float(out["speech_s"]) < 0.5 else (model.classes[int(np.argmax(out["logits"]))], p)

    t = Spy(model, 16_000, HOP_S)
    for a in range(0, len(x), 1600):
        t.push(x[a : a + 1600])
    t.finish()
    ref = [r[0] for r in rows]
    return agreement(ref, [r[1] for r in rows]), agreement(ref, [r[2] for r in rows])


def resampler_vs_soxr(model, x16: np.ndarray, rate: int) -> dict:
    """(3) of the module docstring: LiveTimeline on soxr's 16 kHz (the server) vs on the page's resampler's."""
    from liser.data import audio
    from liser.inference import serve

    def timeline(x, r):
        t = serve.LiveTimeline(model, r, HOP_S)
        out = [w for a in range(0, len(x), 4410) for w in t.push(x[a : a + 4410])] + t.finish()
        return [(w.label, w.probabilities) for w in out]

    x = audio.resample(x16, 16_000, rate)
    return agreement(timeline(x, rate), timeline(resample(x, rate), 16_000))


def main() -> int:
    sys.path.insert(0, str(ROOT / "src"))
    import liser
    from liser.inference import waveform_onnx
    from liser.inference.default_model import DEFAULT_DIR, DEFAULT_ONNX

    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    window_sess = onnxruntime.InferenceSession(waveform_onnx.window_graph_bytes(DEFAULT_ONNX), opts,
                                               providers=["CPUExecutionProvider"])
    whole_sess = waveform_onnx.session(DEFAULT_DIR / "liser-default-waveform-int8.onnx")
    model = liser.load(None, threads=1)
    res = {"window_graph": {}, "whole_file_graph_on_3s": {}, "resampler_44100": {}, "resampler_48000": {}}
    for name, x in streams():
        res["window_graph"][name], res["whole_file_graph_on_3s"][name] = graphs_vs_server(model, window_sess, whole_sess, x)
        for rate in (44_100, 48_000):
            res[f"resampler_{rate}"][name] = resampler_vs_soxr(model, x, rate)
    for what, per in res.items():
        total = {"windows": sum(r["windows"] for r in per.values()), "labels_equal": sum(r["labels_equal"] for r in per.values()),
                 "no_speech": sum(r["no_speech"] for r in per.values()), "max_dp": max(r["max_dp"] for r in per.values())}
        per["all"] = total
        print(f"{what}: labels {total['labels_equal']}/{total['windows']} ({total['no_speech']} no-speech windows), "
              f"max |dp| {total['max_dp']:.2e}")
    OUT.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
