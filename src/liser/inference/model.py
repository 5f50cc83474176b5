"""The inference model: `liser.load(path)` -> `EmotionModel`, and its `Prediction`s.

`load(path)` takes a run directory (its `best.pt`), a `.pt` student
checkpoint (read with `torch.load(weights_only=True)` only, by
liser.student.checkpoint: plain types and tensors, never arbitrary pickled
objects) or an exported `.onnx` model (class names and front-end settings in
its metadata_props; runs on onnxruntime). All three give the same API:

    model = liser.load("runs/no-dstl/fold0")
    p = model.predict_file("clip.wav")          # Prediction(label, probabilities, logits)
    p = model.predict(waveform, sample_rate)    # any rate, mono or [samples, channels]
    for w in model.timeline(waveform, sr, hop_s=0.5):   # one Prediction per 3 s window
        print(w.start, w.end, w.label)

Features are the training path's: resample to 16 kHz, down-mix, zero-pad
to 3 s, log-Mel of the whole signal, rounded through float16 as the features
cache stores them, 3 s windows every 0.1 s (`liser.data.audio.window_starts`),
mean of the `g_sup` logits, softmax for the probabilities. So `predict_file`
gives what `liser evaluate` scored. The log-Mel is the numpy implementation
(`liser.data.frontend.features_numpy`, equal to the cache's torch one within
float16 rounding) for every model kind, so an `.onnx` model is loaded and
run without importing torch; a run directory or `.pt` needs torch for the
student itself. Files are read by liser.inference.decode.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from liser.data import audio
from liser.core.errors import LiserError
from liser.core.util import softmax
from liser.inference.decode import features, file_frames, prepare_waveform
from liser.student.checkpoint import check_front_end, check_version

# windows per forward pass: the student's conv activations are about 1.5 MB per window, so 512 at once
# peaked near 2 GB on any file of a minute or more; a 3.7 s file at 0.1 s has 8 windows, so short files
# still take one pass (bench/bench_predict_memory.py measures both)
BATCH_WINDOWS = 8

# ---------------------------------------------------------------- results
@dataclass
class Prediction:
    """One prediction: the arg-max label, softmax probabilities by class, raw logits.

    `start`/`end` (seconds) are set for timeline and stream windows; None for a whole file.
    A timeline window of a "speech" model that holds less than 0.5 s of
    speech has no label: label None, no probabilities (`no_speech`).
    """

    label: str | None
    probabilities: dict[str, float]
    logits: np.ndarray = field(repr=False)
    start: float | None = None
    end: float | None = None

    @property
    def no_speech(self) -> bool:
        """True for a window the model gave no label: too little speech in it (liser.data.windowing)."""
        return self.label is None

    @property
    def confidence(self) -> float | None:
        return None if self.label is None else self.probabilities[self.label]

    def to_dict(self) -> dict:
        d = {"label": self.label, "p": None if self.no_speech else round(self.confidence, 6),
             "probabilities": {k: round(v, 6) for k, v in self.probabilities.items()},
             "logits": [round(float(v), 6) for v in self.logits]}
        if self.no_speech:
            d["no_speech"] = True
        if self.start is not None:
            d = {"start": round(self.start, 3), "end": round(self.end, 3), **d}
        return d


def _prediction(logits: np.ndarray, classes: list[str], start=None, end=None) -> Prediction:
    z = np.asarray(logits, dtype=np.float64)
    p = softmax(z)
    k = int(np.argmax(z))
    return Prediction(classes[k], {c: float(v) for c, v in zip(classes, p)}, np.asarray(logits, np.float32), start, end)


def _window_prediction(logits: np.ndarray, classes: list[str], start: float, end: float) -> Prediction:
    """One timeline window's Prediction: a label from its logits, or no label when they are NaN (too little
    speech in the window; EmotionModel._span_logits)."""
    if np.isfinite(logits).all():
        return _prediction(logits, classes, start, end)
    return Prediction(None, {}, np.zeros(0, np.float32), start, end)


# ---------------------------------------------------------------- the model
class EmotionModel:
    """A loaded student (PyTorch or ONNX backend) with the feature pipeline around it."""

    def __init__(self, backend, classes: list[str], source: str, info: dict):
        self.backend = backend  # callable: [W, 64, 94] float32 -> [W, K] logits
        self.classes = list(classes)
        self.source = source
        self.info = info  # liser_version, front_end, kind ("torch" | "onnx"), epoch, ...
        # whole-file stride: 0.1 s is the paper's evaluation (what `liser evaluate` scored);
        # 3.0 gives non-overlapping windows, 30x less compute, for devices
        self.stride_s = audio.EVAL_STRIDE_S

    def __repr__(self) -> str:
        return f"EmotionModel({self.source!r}, {self.info.get('kind')}, classes={self.classes})"

    def window_logits(self, x: np.ndarray) -> np.ndarray:
        """g_sup logits [W, K] of log-Mel windows [W, 64, 94]."""
        out = [self.backend(x[a : a + BATCH_WINDOWS]) for a in range(0, len(x), BATCH_WINDOWS)]
        return np.concatenate(out).astype(np.float32)

    def frames_logits(self, frames: np.ndarray, stride_s: float) -> tuple[np.ndarray, np.ndarray]:
        """Logits [W, K] of every 3 s window of [frames, 64] features, and the windows' start frames [W].

        The windows are cut BATCH_WINDOWS at a time, never all at once (an
        hour at 0.1 s is 36,000 windows: 870 MB as float32), and each
        batch's logits are copied into one array made up front: keeping the
        backend's small outputs (a torch tensor each) alive between the
        batches' freed temporaries pinned the heap, and an hour through a
        run directory grew to 540 MB instead of 260.
        """
        from numpy.lib.stride_tricks import sliding_window_view

        starts = audio.window_starts(len(frames), stride_s)  # as frontend.window_index (whose [W, 94] index
        # is 27 MB for an hour): every 94-frame window as a view, [frames - 93, 64, 94], the student's layout,
        # so a batch is one gather (and a cast, for a long file's float16 frames), not a gather and a transpose
        view = sliding_window_view(frames, audio.CLIP_FRAMES, axis=0)
        out = np.empty((len(starts), len(self.classes)), np.float32)
        for a in range(0, len(starts), BATCH_WINDOWS):
            x = np.ascontiguousarray(view[starts[a : a + BATCH_WINDOWS]], dtype=np.float32)
            out[a : a + len(x)] = self.backend(x)
        return out, starts

    @property
    def windowing(self) -> str:
        """How whole files are scored: "pad" (every 3 s window) or "speech" (the speech span's; liser.data.windowing)."""
        return (self.info.get("front_end") or {}).get("windowing", "pad")

    def file_logits(self, frames: np.ndarray, name: str = "input", strict: bool = True) -> np.ndarray:
        """The file's logits [K] from its [frames, 64] features: mean over every 3 s window ("pad"), or the
        speech-weighted windows of its speech span ("speech"; LiserError naming `name` when it holds too
        little speech, or with strict=False the whole file scored: liser.data.windowing.plan)."""
        if self.windowing == "pad":
            logits, _ = self.frames_logits(frames, self.stride_s)
            return logits.astype(np.float64).mean(0).astype(np.float32)
        from liser.data.windowing import gather, plan

        p = plan(frames, self.stride_s, self.windowing, strict=strict, name=name)
        total = np.zeros(len(self.classes), np.float64)
        for a in range(0, len(p.starts), BATCH_WINDOWS):
            z = self.backend(gather(frames, p, a, BATCH_WINDOWS))
            total += (z.astype(np.float64) * p.weights[a : a + len(z), None]).sum(0)
        return total.astype(np.float32)

    def predict(self, waveform, sample_rate: int, name: str = "waveform") -> Prediction:
        """Whole-signal prediction: mean g_sup logits of 3 s windows every `self.stride_s` (0.1 s) seconds.

        `waveform`: float, or integer PCM (int16/int32 scaled by full scale,
        uint8 centred on 128), 1-D or 2-D; see `prepare_waveform`. Raises
        TypeError for other sample types, LiserError for unusable signals.
        """
        return _prediction(self.file_logits(features(prepare_waveform(waveform, sample_rate, name)), name),
                           self.classes)

    def predict_file(self, path: str | Path) -> Prediction:
        """`predict` on an audio file (or a video's audio track); long files are read in blocks (`file_frames`)."""
        frames, _ = file_frames(path)
        return _prediction(self.file_logits(frames, str(path)), self.classes)

    def timeline(self, waveform, sample_rate: int, hop_s: float = 0.5, name: str = "waveform",
                 window_s: float = audio.CLIP_S) -> list[Prediction]:
        """One prediction per `window_s` window (3 s) every `hop_s` s, with start/end in seconds (end capped
        at the signal's end). Shorter windows (1-3 s, "speech" models) follow changes of emotion more closely
        and change label more often (docs/results/timeline.md)."""
        sig = prepare_waveform(waveform, sample_rate, name)
        return self.timeline_frames(features(sig), len(sig) / audio.SAMPLE_RATE, hop_s, window_s)

    def timeline_file(self, path: str | Path, hop_s: float = 0.5, window_s: float = audio.CLIP_S) -> list[Prediction]:
        frames, duration = file_frames(path)
        return self.timeline_frames(frames, duration, hop_s, window_s)

    def timeline_frames(self, frames: np.ndarray, duration: float, hop_s: float,
                        window_s: float = audio.CLIP_S) -> list[Prediction]:
        """`timeline` of [frames, 64] features of a signal lasting `duration` seconds.

        "pad": the student on every 3 s window. "speech": on the speech span
        inside each window, and no label (`Prediction.no_speech`) for a
        window with less than 0.5 s of it (liser.data.windowing.window_span).
        A 3 s window's speech is found on its own frames, so a live stream
        gives what a file gives; a shorter window's on the 3 s centred on it
        (up to 1 s past its end: a live version would need that look-ahead).
        Raises LiserError for a hop <= 0, a window outside 1-3 s, or a window
        other than 3 s for a "pad" model (it only knows 3 s windows).
        """
        if not hop_s > 0:
            raise LiserError(f"hop must be positive, got {hop_s}")
        length = window_frames(window_s, self.windowing)
        if self.windowing == "pad":
            logits, starts = self.frames_logits(frames, hop_s)
        else:
            # shorter windows stop at the recording's end, not in the zero padding that makes a file 3 s long
            n = len(frames) if length == audio.CLIP_FRAMES else \
                max(length, min(len(frames), int(round(duration / audio.HOP_S)) + 1))
            starts = audio.window_starts(n - length + audio.CLIP_FRAMES, hop_s)
            logits = self._span_logits(frames, starts, length)
        out = []
        for s, z in zip(starts, logits):
            t0 = float(audio.frames_to_seconds(s))
            t1 = min(t0 + length * audio.HOP_S if length < audio.CLIP_FRAMES else t0 + audio.CLIP_S, duration)
            out.append(_window_prediction(z, self.classes, t0, t1))
        return out

    def _span_logits(self, frames: np.ndarray, starts: np.ndarray, length: int = audio.CLIP_FRAMES) -> np.ndarray:
        """Logits [W, K] of the speech span inside each `length`-frame window starting at `starts`; NaN rows
        where a window holds too little speech. Spans of one length go through the backend together."""
        from liser.data.windowing import Plan, gather, window_span

        out = np.full((len(starts), len(self.classes)), np.nan, np.float32)
        by_length: dict[int, list[tuple[int, int]]] = {}
        for i, s in enumerate(starts):
            if length == audio.CLIP_FRAMES:
                span = window_span(frames[s : s + length])
            else:  # the detector reads the 3 s around a shorter window (window_span)
                c0 = int(min(max(0, s + length // 2 - audio.CLIP_FRAMES // 2), len(frames) - audio.CLIP_FRAMES))
                span = window_span(frames[s : s + length], frames[c0 : c0 + audio.CLIP_FRAMES], int(s) - c0)
            if span is not None:
                by_length.setdefault(span[1] - span[0], []).append((i, int(s) + span[0]))
        for n, rows in by_length.items():
            for a in range(0, len(rows), BATCH_WINDOWS):
                part = rows[a : a + BATCH_WINDOWS]
                plan = Plan(np.array([f for _, f in part]), n, np.ones(len(part)))
                out[[i for i, _ in part]] = self.backend(gather(frames, plan))
        return out

def window_frames(window_s: float, windowing: str) -> int:
    """A timeline window of `window_s` seconds in frames; LiserError outside 1-3 s, or other than 3 s for "pad"."""
    if not 1.0 <= window_s <= audio.CLIP_S:
        raise LiserError(f"timeline window must be 1-{audio.CLIP_S:g} s, got {window_s:g}")
    if windowing == "pad" and window_s != audio.CLIP_S:
        raise LiserError(f"this model scores {audio.CLIP_S:g} s windows only (windowing pad); "
                         f"--window {window_s:g} needs a speech-windowing model such as the default one")
    return 1 + int(round(window_s * audio.SAMPLE_RATE)) // audio.HOP  # the front end's frames of window_s (94 for 3 s)


# ---------------------------------------------------------------- loading
def load(path: str | Path | None = None, threads: int | None = None) -> EmotionModel:
    """A trained student from a run directory, a best.pt checkpoint or an exported .onnx;
    None = the packaged default model, "phone" = the packaged phone-call model (liser.inference.default_model;
    an existing path of that name wins).

    `threads` sets torch's (process-wide) or the onnxruntime session's CPU thread count; None leaves the default.
    """
    from liser.inference.default_model import default_model_path, packaged

    path = Path(default_model_path() if path is None else packaged(path) or path)
    if path.is_dir():
        if not (path / "best.pt").is_file():
            raise LiserError(f"{path}: no best.pt (not a finished run directory)")
        path = path / "best.pt"
    if not path.is_file():
        raise LiserError(f"{path}: no such file")
    if path.suffix.lower() == ".onnx":
        return _load_onnx(path, threads)
    return _load_torch(path, threads)


def _load_torch(path: Path, threads: int | None) -> EmotionModel:
    import torch

    from liser.student.model import Classifier

    if threads:
        torch.set_num_threads(threads)
    from liser.student.checkpoint import read_checkpoint, student_from_checkpoint

    ck = read_checkpoint(path)
    # channels_last as in training: the same memory layout (and kernels) `liser evaluate` used, and ~1.5x faster
    clf = Classifier(student_from_checkpoint(ck, str(path))).eval().to(memory_format=torch.channels_last)

    def backend(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return clf(torch.from_numpy(x)).float().numpy()

    info = {"kind": "torch", "liser_version": ck["liser_version"], "front_end": ck.get("front_end"),
            "epoch": ck.get("epoch"), "val": ck.get("val"), "config": ck.get("config")}
    model = EmotionModel(backend, ck["classes"], str(path), info)
    model.classifier = clf  # the torch module, for export and benchmarks
    return model


def _load_onnx(path: Path, threads: int | None) -> EmotionModel:
    from liser.core.onnxrt import session

    try:
        sess = session(path, threads)
    except Exception as e:  # onnxruntime raises its own exception types
        raise LiserError(f"{path}: not a loadable ONNX model ({str(e).strip().splitlines()[0][:160]})") from None
    meta = sess.get_modelmeta().custom_metadata_map
    if meta.get("format") == "liser-waveform-onnx":  # liser.inference.waveform_onnx: samples in, probabilities out
        raise LiserError(f"{path}: a waveform-in graph (liser export --waveform); run it with onnxruntime "
                         "(docs/onnx.md), or load the log-Mel student it was made from")
    if meta.get("format") != "liser-student-onnx" or "classes" not in meta:
        raise LiserError(f"{path}: ONNX model without liser metadata (export it with `liser export`)")
    check_version(meta.get("liser_version", "?"), str(path))
    front_end = json.loads(meta.get("front_end", "{}"))
    check_front_end(front_end, str(path))
    classes = json.loads(meta["classes"])
    name = sess.get_inputs()[0].name

    def backend(x: np.ndarray) -> np.ndarray:
        return sess.run(None, {name: x})[0]

    info = {"kind": "onnx", "liser_version": meta.get("liser_version"), "front_end": front_end,
            "quantization": meta.get("quantization", "none")}
    model = EmotionModel(backend, classes, str(path), info)
    model.session = sess
    return model

