"""Inference with a trained student: `liser.load(path)` and `liser predict`.

`load(path)` takes a run directory (its `best.pt`), a `.pt` student
checkpoint (read with `torch.load(weights_only=True)` only: plain types and
tensors, never arbitrary pickled objects) or an exported `.onnx` model (class
names and front-end settings in its metadata_props; runs on onnxruntime).
All three give the same `EmotionModel` API:

    model = liser.load("runs/no-dstl/fold0")
    p = model.predict_file("clip.wav")          # Prediction(label, probabilities, logits)
    p = model.predict(waveform, sample_rate)    # any rate, mono or [samples, channels]
    for w in model.timeline(waveform, sr, hop_s=0.5):   # one Prediction per 3 s window
        print(w.start, w.end, w.label)

Features are the training path's: resample to 16 kHz, down-mix, zero-pad
to 3 s, log-Mel of the whole signal, rounded through float16 as the features
cache stores them, 3 s windows every 0.1 s (`liser.audio.window_starts`),
mean of the `g_sup` logits, softmax for the probabilities. So `predict_file`
gives what `liser evaluate` scored. The log-Mel is the numpy implementation
(`liser.frontend.features_numpy`, equal to the cache's torch one within
float16 rounding) for every model kind, so an `.onnx` model is loaded and
run without importing torch (`liser predict model.onnx` starts in a fraction
of a second); a run directory or `.pt` needs torch for the student itself.

`liser predict` wraps this for files, folders, stdin (`-`: the bytes of
any file the path reader accepts, recognised by their content exactly as a
path would be; raw 16 kHz mono 16-bit PCM only with `--raw`, never as a
guess) and live streams (`--stream`: a ring buffer of the last 3 s, one
prediction per hop, log-Mel of the buffer). Many files use every core:
`--threads N` (default: all) is the cores used in all, N files at a time on
N threads with one model thread each (onnxruntime, numpy and libsndfile
release the GIL), written in the order given and equal byte for byte to
one at a time (`plan_threads`, `in_order`); numpy's BLAS stays on one
thread (`one_blas_thread`).

Memory: files longer than LONG_FILE_S are read in blocks, twice (the mean
first, then the log-Mel in chunks; liser.frontend.features_from_blocks),
and windows go through the student BATCH_WINDOWS at a time, so an hour of
audio stays within about 300 MB; shorter files take the one-read path.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import io
import json
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import audio, frontend
from .errors import LiserError
from .util import softmax

MIN_DURATION_S = 0.1  # shorter input is refused (a 3 s window would be >96 % padding)
# windows per forward pass: the student's conv activations are about 1.5 MB per window, so 512 at once
# peaked near 2 GB on any file of a minute or more; a 3.7 s file at 0.1 s has 8 windows, so short files
# still take one pass (bench/bench_predict_memory.py measures both)
BATCH_WINDOWS = 8
LONG_FILE_S = 300.0  # libsndfile files longer than this are read in blocks (bounded memory), twice
READ_BLOCK_S = 30.0  # block length of that read, seconds
INPUT_SUFFIXES = audio.INPUT_SUFFIXES  # what a folder argument is searched for (with content: audio.folder_files)


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
        """True for a window the model gave no label: too little speech in it (liser.windowing)."""
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


# ---------------------------------------------------------------- features
def prepare_waveform(waveform, sample_rate: int, name: str = "waveform") -> np.ndarray:
    """Mono float32 16 kHz signal from any array input, or LiserError naming `name`.

    Sample types: float arrays are taken as they are (full scale = 1.0);
    integer PCM is scaled to [-1, 1): int8/int16/int32/int64 by their full
    scale (int16 / 32768: what `scipy.io.wavfile.read` returns), uint8
    centred on 128 ((x - 128) / 128: 8-bit WAV). A Python list is read as
    float values. Any other dtype (bool, object, strings, complex,
    uint16/32/64) raises TypeError (liser.audio.pcm_to_float32).
    A 2-D array is [samples, channels] (soundfile's layout) or [channels,
    samples]: the shorter axis is taken as channels, down-mixed by
    liser.audio.downmix (mean of 1-2 channels, the loudest speech-band
    channel of 3 or more). Empty, NaN/inf, beyond 1000 x full scale
    (liser.audio.MAX_AMPLITUDE), shorter than 0.1 s and silent (RMS after
    removing the mean below -100 dBFS: all zeros or constant) input is
    refused with LiserError.
    """
    if isinstance(waveform, (list, tuple)):
        try:
            waveform = np.asarray(waveform, dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"{name}: a list that is not numbers cannot be a waveform") from None
    x = audio.pcm_to_float32(np.asarray(waveform))  # TypeError for non-audio dtypes
    if isinstance(sample_rate, (float, np.floating)) and float(sample_rate).is_integer():
        sample_rate = int(sample_rate)
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise LiserError(f"{name}: sample rate must be a positive integer, got {sample_rate!r}")
    audio.check_rate(int(sample_rate), name)
    if x.ndim == 2:
        x = audio.downmix(x if x.shape[1] <= x.shape[0] else x.T, int(sample_rate))
    elif x.ndim != 1:
        raise LiserError(f"{name}: waveform must be 1-D or [samples, channels], got shape {x.shape}")
    audio.check_waveform(x, name)
    seconds = x.size / sample_rate
    if seconds < MIN_DURATION_S:
        raise LiserError(f"{name}: too short ({seconds:.3f} s; at least {MIN_DURATION_S} s is needed)")
    audio.check_not_silent(x, name)
    return audio.resample(np.ascontiguousarray(x), int(sample_rate), audio.SAMPLE_RATE)


def features(signal: np.ndarray) -> np.ndarray:
    """[frames, 64] float32 log-Mel of a 16 kHz signal: liser.frontend.features_numpy (float16 values, as cached)."""
    return frontend.features_numpy(signal).astype(np.float32)


def windows(frames: np.ndarray, stride_s: float = audio.EVAL_STRIDE_S) -> tuple[np.ndarray, np.ndarray]:
    """3 s windows [W, 64, 94] (contiguous float32) of [frames, 64] features every `stride_s`, and their start frames."""
    idx, starts = frontend.window_index(len(frames), stride_s)
    return np.ascontiguousarray(frames[idx].transpose(0, 2, 1), dtype=np.float32), starts


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
        """How whole files are scored: "pad" (every 3 s window) or "speech" (the speech span's; liser.windowing)."""
        return (self.info.get("front_end") or {}).get("windowing", "pad")

    def file_logits(self, frames: np.ndarray, name: str = "input", strict: bool = True) -> np.ndarray:
        """The file's logits [K] from its [frames, 64] features: mean over every 3 s window ("pad"), or the
        speech-weighted windows of its speech span ("speech"; LiserError naming `name` when it holds too
        little speech, or with strict=False the whole file scored: liser.windowing.plan)."""
        if self.windowing == "pad":
            logits, _ = self.frames_logits(frames, self.stride_s)
            return logits.astype(np.float64).mean(0).astype(np.float32)
        from .windowing import gather, plan

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

    def timeline(self, waveform, sample_rate: int, hop_s: float = 0.5, name: str = "waveform") -> list[Prediction]:
        """One prediction per 3 s window every `hop_s` s, with start/end in seconds (end capped at the signal's end)."""
        sig = prepare_waveform(waveform, sample_rate, name)
        return self.timeline_frames(features(sig), len(sig) / audio.SAMPLE_RATE, hop_s)

    def timeline_file(self, path: str | Path, hop_s: float = 0.5) -> list[Prediction]:
        frames, duration = file_frames(path)
        return self.timeline_frames(frames, duration, hop_s)

    def timeline_frames(self, frames: np.ndarray, duration: float, hop_s: float) -> list[Prediction]:
        """`timeline` of [frames, 64] features of a signal lasting `duration` seconds.

        "pad": the student on every 3 s window. "speech": on the speech span
        inside each 3 s window (found on the window's own frames, so a live
        stream gives what a file gives), and no label (`Prediction.no_speech`)
        for a window with less than 0.5 s of it (liser.windowing.window_span).
        """
        if not hop_s > 0:
            raise LiserError(f"hop must be positive, got {hop_s}")
        if self.windowing == "pad":
            logits, starts = self.frames_logits(frames, hop_s)
        else:
            starts = audio.window_starts(len(frames), hop_s)
            logits = self._span_logits(frames, starts)
        out = []
        for s, z in zip(starts, logits):
            t0 = float(audio.frames_to_seconds(s))
            t1 = min(t0 + audio.CLIP_S, duration)
            out.append(_prediction(z, self.classes, t0, t1) if np.isfinite(z).all()
                       else Prediction(None, {}, np.zeros(0, np.float32), t0, t1))
        return out

    def _span_logits(self, frames: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """Logits [W, K] of the speech span inside each 3 s window starting at `starts`; NaN rows where a
        window holds too little speech. Spans of one length go through the backend together."""
        from .windowing import Plan, gather, window_span

        out = np.full((len(starts), len(self.classes)), np.nan, np.float32)
        by_length: dict[int, list[tuple[int, int]]] = {}
        for i, s in enumerate(starts):
            span = window_span(frames[s : s + audio.CLIP_FRAMES])
            if span is not None:
                by_length.setdefault(span[1] - span[0], []).append((i, int(s) + span[0]))
        for n, rows in by_length.items():
            for a in range(0, len(rows), BATCH_WINDOWS):
                part = rows[a : a + BATCH_WINDOWS]
                plan = Plan(np.array([f for _, f in part]), n, np.ones(len(part)))
                out[[i for i, _ in part]] = self.backend(gather(frames, plan))
        return out


def read_input(path: str | Path) -> np.ndarray:
    """A file as a checked mono 16 kHz signal (LiserError naming the file otherwise)."""
    path = Path(path)
    if path.is_dir():
        raise LiserError(f"{path}: is a directory")
    sig = audio.load_audio(path)
    return prepare_waveform(sig, audio.SAMPLE_RATE, str(path))


def file_frames(path: str | Path) -> tuple[np.ndarray, float]:
    """[frames, 64] features of a file and its duration in seconds, in bounded memory.

    A libsndfile file of 1-2 channels longer than LONG_FILE_S is read in
    READ_BLOCK_S blocks, twice: once for its mean, length and checks, then
    for the log-Mel in chunks (liser.frontend.features_from_blocks). The
    whole signal is never held: an hour at 16 kHz would be 230 MB, and its
    whole-file STFT 0.9 GB. Other files are read whole (`read_input`).
    Both give the same features up to float rounding; the block path keeps
    them float16, as computed and cached (an hour: 14 MB, not 29 MB), the
    other float32.
    """
    path = Path(path)
    got = _read_short(path)
    if got is not None:  # liser.audio.load_audio's steps, then read_input's checks
        x, sr = got
        audio.check_rate(sr, str(path))
        x = audio.downmix(x, sr)
        audio.check_waveform(x, str(path))
        sig = prepare_waveform(audio.resample(x, sr, audio.SAMPLE_RATE), audio.SAMPLE_RATE, str(path))
        return features(sig), len(sig) / audio.SAMPLE_RATE
    info = _long_file_info(path)
    if info is None:
        sig = read_input(path)
        return features(sig), len(sig) / audio.SAMPLE_RATE
    name = str(path)
    n, total, sumsq = 0, 0.0, 0.0
    for block in _read_blocks(path, info):
        audio.check_samples(block, name)
        n += len(block)
        total += float(block.sum(dtype=np.float64))
        sumsq += float(np.square(block, dtype=np.float64).sum())
    mean = total / max(n, 1)
    rms = float(np.sqrt(max(sumsq / max(n, 1) - mean * mean, 0.0)))
    if rms < audio.SILENCE_RMS:
        raise LiserError(f"{name}: silent (RMS {rms:.1e} after removing the mean; all zeros, constant, or below -100 dBFS)")
    frames = frontend.features_from_blocks(_read_blocks(path, info), mean, n)
    return frames, n / audio.SAMPLE_RATE


def _read_short(path: Path) -> tuple[np.ndarray, int] | None:
    """Samples ([n] mono, else [n, channels] float32) and rate of a libsndfile file that is read whole, in one open.

    None for a 1-2 channel file longer than LONG_FILE_S (read in blocks)
    and for whatever soundfile cannot read (video containers; missing,
    empty or broken files): liser.audio.read_file then reads it or says why.
    Why not read_file's own path: its length probe (soundfile.info) opened
    every file twice, 0.5 ms of a 3.7 s file's 14 ms (bench_latency.py's
    file_phases), and its always-2-D read paid a mean over one channel.
    """
    import soundfile as sf

    if not path.is_file() or path.stat().st_size == 0 or audio.reader_for(path) != "soundfile":
        return None
    try:
        with sf.SoundFile(str(path)) as f:
            if f.channels <= 2 and f.frames and f.frames / f.samplerate > LONG_FILE_S:
                return None
            return f.read(dtype="float32", always_2d=f.channels > 1), int(f.samplerate)
    except Exception:  # libsndfile's errors have several types; read_file says which
        return None


def _long_file_info(path: Path):
    """soundfile's info for a 1-2 channel file longer than LONG_FILE_S, else None (read it whole)."""
    import soundfile as sf

    if not path.is_file() or path.stat().st_size == 0 or audio.reader_for(path) != "soundfile":
        return None
    try:
        info = sf.info(str(path))
    except Exception:
        return None
    if info.channels > 2 or not info.frames or info.frames / info.samplerate <= LONG_FILE_S:
        return None
    return info  # its rate is checked by the blocks' _Resampler


def _read_blocks(path: Path, info):
    """Mono 16 kHz float32 blocks of a libsndfile file (1-2 channels: their mean, as liser.audio.downmix)."""
    import soundfile as sf

    rs = _Resampler(int(info.samplerate), str(path))
    with sf.SoundFile(str(path)) as f:
        for block in f.blocks(blocksize=int(READ_BLOCK_S * info.samplerate), dtype="float32", always_2d=True):
            out = rs(audio.downmix(block, int(info.samplerate)), last=False)
            if len(out):
                yield out
    tail = rs(np.zeros(0, np.float32), last=True)
    if len(tail):
        yield tail


# ---------------------------------------------------------------- loading
def _check_version(made_by: str, source: str) -> None:
    from . import __version__

    def major_minor(v: str) -> tuple[str, ...]:
        return tuple(str(v).split(".")[:2])

    if major_minor(made_by) != major_minor(__version__):
        raise LiserError(f"{source}: made by liser {made_by}, this is liser {__version__} "
                         f"(major.minor must match; use liser {'.'.join(major_minor(made_by))}.x or retrain)")


def _check_front_end(fe: dict, source: str) -> None:
    for k, v in frontend.SETTINGS.items():
        if k in fe and float(fe[k]) != float(v):
            raise LiserError(f"{source}: front end {k}={fe[k]} differs from this liser's {v}")


def load(path: str | Path | None = None, threads: int | None = None) -> EmotionModel:
    """A trained student from a run directory, a best.pt checkpoint or an exported .onnx;
    None = the packaged default model (liser.default_model).

    `threads` sets torch's (process-wide) or the onnxruntime session's CPU thread count; None leaves the default.
    """
    if path is None:
        from .default_model import default_model_path

        path = default_model_path()
    path = Path(path)
    if path.is_dir():
        if not (path / "best.pt").is_file():
            raise LiserError(f"{path}: no best.pt (not a finished run directory)")
        path = path / "best.pt"
    if not path.is_file():
        raise LiserError(f"{path}: no such file")
    if path.suffix.lower() == ".onnx":
        return _load_onnx(path, threads)
    return _load_torch(path, threads)


def read_checkpoint(path: Path) -> dict:
    """The checkpoint dict (weights_only=True: tensors and plain types only), checked for format and version."""
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pickle-protocol notes on foreign files
            ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the weights-only unpickler raises many types (UnpicklingError, IndexError, ...)
        why = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise LiserError(f"{path}: not a liser checkpoint (cannot be read with weights_only=True: {why})") from None
    if not isinstance(ck, dict) or ck.get("format") != "liser-student":
        raise LiserError(f"{path}: not a liser student checkpoint (no format='liser-student'; "
                         "last.pt is a resume state, use best.pt or the run directory)")
    for key in ("liser_version", "state_dict", "classes"):
        if key not in ck:
            raise LiserError(f"{path}: liser checkpoint without {key!r}")
    _check_version(ck["liser_version"], str(path))
    _check_front_end(ck.get("front_end") or {}, str(path))
    return ck


def student_from_checkpoint(ck: dict, source: str):
    """A Student in eval mode with the checkpoint's weights (LiserError if they do not fit)."""
    from .student import Student

    classes, video = list(ck["classes"]), list(ck.get("video_classes") or [])
    n_video = len(video) or int(ck["state_dict"]["g_vd.2.weight"].shape[0])
    model = Student(len(classes), n_video)
    try:
        model.load_state_dict(ck["state_dict"])
    except (RuntimeError, KeyError) as e:
        raise LiserError(f"{source}: weights do not fit the student ({str(e).splitlines()[0][:160]})") from None
    return model.eval()


def _load_torch(path: Path, threads: int | None) -> EmotionModel:
    import torch

    from .student import Classifier

    if threads:
        torch.set_num_threads(threads)
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
    from .onnxrt import session

    try:
        sess = session(path, threads)
    except Exception as e:  # onnxruntime raises its own exception types
        raise LiserError(f"{path}: not a loadable ONNX model ({str(e).strip().splitlines()[0][:160]})") from None
    meta = sess.get_modelmeta().custom_metadata_map
    if meta.get("format") == "liser-waveform-onnx":  # liser.waveform_onnx: samples in, probabilities out
        raise LiserError(f"{path}: a waveform-in graph (liser export --waveform); run it with onnxruntime "
                         "(docs/onnx.md), or load the log-Mel student it was made from")
    if meta.get("format") != "liser-student-onnx" or "classes" not in meta:
        raise LiserError(f"{path}: ONNX model without liser metadata (export it with `liser export`)")
    _check_version(meta.get("liser_version", "?"), str(path))
    front_end = json.loads(meta.get("front_end", "{}"))
    _check_front_end(front_end, str(path))
    classes = json.loads(meta["classes"])
    name = sess.get_inputs()[0].name

    def backend(x: np.ndarray) -> np.ndarray:
        return sess.run(None, {name: x})[0]

    info = {"kind": "onnx", "liser_version": meta.get("liser_version"), "front_end": front_end,
            "quantization": meta.get("quantization", "none")}
    model = EmotionModel(backend, classes, str(path), info)
    model.session = sess
    return model


# ---------------------------------------------------------------- stdin and streams
def _stdin_bytes() -> bytes:
    return sys.stdin.buffer.read()


def decode_bytes(data: bytes, name: str = "-", raw: bool = False) -> np.ndarray:
    """Mono 16 kHz signal from a byte stream (stdin).

    The bytes are written to a temporary file and read through
    liser.audio.read_file, the path reader (soundfile, then PyAV), so a
    stream is recognised by its content exactly as the same file given by
    its path would be: WAV, FLAC, Ogg/Opus, MP3, M4A/AAC, MP4, MKV, WebM...
    Bytes neither recognises are an error, never a guess: with `raw=True`
    (the `--raw` flag) and only then, they are headerless 16 kHz mono
    16-bit little-endian PCM.
    """
    import tempfile

    if not data:
        raise LiserError(f"{name}: empty input (0 bytes)")
    if raw:
        if len(data) % 2:
            data = data[:-1]
        x = np.frombuffer(data, dtype="<i2")
        return prepare_waveform(x, audio.SAMPLE_RATE, name)  # int16: scaled by full scale
    with tempfile.TemporaryDirectory(prefix="liser-stdin-") as d:
        tmp = Path(d) / "stdin"
        tmp.write_bytes(data)
        try:
            x, sr = audio.read_file(tmp)
        except LiserError as e:
            why = str(e).replace(f"{tmp}: ", "", 1).replace(f"'{tmp}'", "stdin").replace(str(tmp), "stdin")
            raise LiserError(f"{name}: the stream's format is not recognised ({why}); stdin takes what a file path "
                             "takes (WAV, FLAC, Ogg/Opus, MP3, M4A/AAC, MP4, ...), or headerless 16 kHz mono "
                             "16-bit PCM with --raw") from None
    return prepare_waveform(x, int(sr), name)


class _Blocks:
    """Incremental mono 16 kHz blocks from stdin raw PCM / WAV, or from a file read in blocks."""

    def __init__(self, src: str, block_s: float = 0.1, raw: bool = False):
        self.src, self.block_s, self.raw = src, block_s, raw

    def __iter__(self):
        if self.src == "-":
            yield from self._stdin()
        else:
            yield from self._file(Path(self.src))

    def _stdin(self):
        f = sys.stdin.buffer
        head = f.read(4)
        if head == b"RIFF" and not self.raw:
            yield from self._wav_stream(head + f.read(8), f)
            return
        if not self.raw:  # FLAC, Ogg, M4A, ...: not block-decodable from a pipe; decode all, then feed blocks
            yield from self._split(decode_bytes(head + f.read(), "-"))
            return
        block = int(self.block_s * audio.SAMPLE_RATE) * 2
        buf = head
        while True:
            chunk = f.read(block)
            buf += chunk
            n = len(buf) // 2 * 2
            if n and (n >= block or not chunk):
                yield np.frombuffer(buf[:n], dtype="<i2").astype(np.float32) / 32768.0
                buf = buf[n:]
            if not chunk:
                return

    def _wav_stream(self, head: bytes, f):
        """A PCM/float WAV on a pipe: walk the RIFF chunks to `data`, then read it in blocks."""
        if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            raise LiserError("-: only little-endian RIFF/WAVE streams are supported")
        fmt = None
        while True:
            h = f.read(8)
            if len(h) < 8:
                raise LiserError("-: WAV stream ended before its data chunk")
            cid, size = h[:4], int.from_bytes(h[4:], "little")
            if cid == b"fmt ":
                body = f.read(size + (size & 1))
                tag, ch, sr = int.from_bytes(body[0:2], "little"), int.from_bytes(body[2:4], "little"), int.from_bytes(body[4:8], "little")
                bits = int.from_bytes(body[14:16], "little")
                if tag == 0xFFFE and len(body) >= 26:
                    tag = int.from_bytes(body[24:26], "little")
                fmt = (tag, ch, sr, bits)
            elif cid == b"data":
                break
            else:
                f.read(size + (size & 1))
        if fmt is None:
            raise LiserError("-: WAV stream without a fmt chunk")
        tag, ch, sr, bits = fmt
        dtypes = {(1, 16): "<i2", (1, 32): "<i4", (3, 32): "<f4"}
        if (tag, bits) not in dtypes:
            raise LiserError(f"-: WAV stream format {tag}/{bits}-bit not supported for --stream (use 16-bit PCM)")
        dt = np.dtype(dtypes[(tag, bits)])
        if ch > 2:  # the down-mix picks one channel over the whole signal (liser.audio.downmix): read it all
            data = f.read()
            data = data[: len(data) // (dt.itemsize * ch) * dt.itemsize * ch]
            x = audio.pcm_to_float32(np.frombuffer(data, dtype=dt).reshape(-1, ch))
            yield from self._split(prepare_waveform(x, sr, "-"))
            return
        frame_bytes = dt.itemsize * ch
        block = max(1, int(self.block_s * sr)) * frame_bytes
        rs = _Resampler(sr, "-")
        buf = b""
        while True:
            chunk = f.read(block)
            buf += chunk
            n = len(buf) // frame_bytes * frame_bytes
            if n:
                x = np.frombuffer(buf[:n], dtype=dt).reshape(-1, ch).mean(1).astype(np.float32)
                if dt.kind == "i":
                    x /= float(2 ** (bits - 1))
                buf = buf[n:]
                yield rs(x, last=False)
            if not chunk:
                yield rs(np.zeros(0, np.float32), last=True)
                return

    def _file(self, path: Path):
        import soundfile as sf

        if not path.is_file():
            raise LiserError(f"{path}: no such file")
        try:
            f = sf.SoundFile(str(path))
        except Exception:  # not a libsndfile format (video container, ...): decode whole, then feed in blocks
            yield from self._split(audio.load_audio(path))
            return
        if f.channels > 2:  # the down-mix picks one channel over the whole file (liser.audio.downmix)
            f.close()
            yield from self._split(audio.load_audio(path))
            return
        with f:
            rs = _Resampler(f.samplerate, str(path))
            for block in f.blocks(blocksize=max(1, int(self.block_s * f.samplerate)), dtype="float32", always_2d=True):
                yield rs(block.mean(1), last=False)
            yield rs(np.zeros(0, np.float32), last=True)


    def _split(self, sig: np.ndarray):
        step = max(1, int(self.block_s * audio.SAMPLE_RATE))
        for a in range(0, len(sig), step):
            yield sig[a : a + step]


class _Resampler:
    """Streaming resampler to 16 kHz (soxr's ResampleStream; per-block polyphase without soxr)."""

    def __init__(self, sr_in: int, name: str = "input"):
        audio.check_rate(sr_in, name)  # LiserError: a lying header is never resampled 16,000-fold
        self.sr_in = sr_in
        self.stream = None
        if sr_in != audio.SAMPLE_RATE:
            try:
                import soxr

                self.stream = soxr.ResampleStream(sr_in, audio.SAMPLE_RATE, 1, dtype="float32", quality="HQ")
            except ImportError:
                pass

    def __call__(self, x: np.ndarray, last: bool) -> np.ndarray:
        if self.sr_in == audio.SAMPLE_RATE:
            return np.asarray(x, np.float32)
        if self.stream is not None:
            return self.stream.resample_chunk(np.asarray(x, np.float32), last=last)
        return audio.resample(np.asarray(x, np.float32), self.sr_in, audio.SAMPLE_RATE) if len(x) else x


def stream(model: EmotionModel, src: str, hop_s: float = 0.5, raw: bool = False):
    """Predictions for a live stream: one per `hop_s` of new audio once 3 s are buffered.

    A ring buffer keeps the last 3 s; each prediction is the student on the
    log-Mel of that buffer (one 94-frame window), labelled with the buffer's
    start/end time in the stream. A stream that ends before 3 s gives one
    prediction on its zero-padded audio. `raw`: stdin is headerless 16 kHz
    mono 16-bit PCM (else its format is recognised, as `decode_bytes`).
    """
    if not hop_s > 0:
        raise LiserError(f"hop must be positive, got {hop_s}")
    ring = np.zeros(audio.CLIP_SAMPLES, np.float32)
    hop = max(1, int(round(hop_s * audio.SAMPLE_RATE)))
    total, since = 0, 0  # samples seen; samples since the last prediction
    emitted = False
    for block in _Blocks(src, block_s=min(0.1, hop_s), raw=raw):
        if not len(block):
            continue
        audio.check_samples(block, src)
        pos = 0
        while pos < len(block):
            # feed up to the next prediction point, so every hop is emitted even for large blocks
            need = hop - since if total >= audio.CLIP_SAMPLES else max(audio.CLIP_SAMPLES - total, 1)
            part = block[pos : pos + need]
            pos += len(part)
            n = len(part)
            if n >= audio.CLIP_SAMPLES:
                ring[:] = part[-audio.CLIP_SAMPLES :]
            else:
                ring[:-n] = ring[n:]
                ring[-n:] = part
            total += n
            since += n
            if total >= audio.CLIP_SAMPLES and (not emitted or since >= hop):
                since = 0
                emitted = True
                yield _window_prediction(model, ring, total)
    if not emitted:
        if total == 0:
            raise LiserError(f"{src}: empty audio (no samples)")
        yield _window_prediction(model, ring[-total:], total)


def _window_prediction(model: EmotionModel, buf: np.ndarray, total: int) -> Prediction:
    """The student on one 3 s buffer (a short stream's whole audio is checked and zero-padded)."""
    sig = prepare_waveform(buf, audio.SAMPLE_RATE, "stream") if total < audio.CLIP_SAMPLES else buf
    (p,) = model.timeline_frames(features(sig)[: audio.CLIP_FRAMES], audio.CLIP_S, audio.CLIP_S)  # one window
    end = total / audio.SAMPLE_RATE
    return dataclasses.replace(p, start=max(0.0, end - audio.CLIP_S), end=end)


# ---------------------------------------------------------------- the command
def expand_inputs(args: list[str]) -> tuple[list[str], list[str]]:
    """Files to predict (folders searched with liser.audio.folder_files), and problems.

    A folder gives every file liser reads (by suffix, liser.audio.INPUT_SUFFIXES,
    or by its first bytes); each other file in it is named on stderr as
    skipped (a note, not a failure; past SKIPPED_SAID of them, a count by
    suffix). A broken symbolic link, in a folder or given by name, is a
    problem ("broken symbolic link -> target"), said and counted, never
    skipped without a word.
    """
    files, problems = [], []
    for a in args:
        if a == "-":
            files.append(a)
            continue
        p = Path(a)
        if p.is_dir():
            taken, skipped = audio.folder_files(p)
            found = [q for q in taken if q.exists()]
            problems.extend(f"{q}: {audio.missing_reason(q)}" for q in taken if not q.exists())
            _say_skipped(p, skipped)
            if not taken:
                problems.append(f"{p}: no audio or video files in this folder"
                                + (f" ({len(skipped)} other files skipped)" if skipped else ""))
            files.extend(str(q) for q in found)
        elif p.exists():
            files.append(str(p))
        elif p.is_symlink():
            problems.append(f"{p}: {audio.missing_reason(p)}")
        else:
            problems.append(f"{p}: no such file or folder")
    return files, problems


SKIPPED_SAID = 20  # skipped files of one folder named one per line; the rest are counted by suffix


def _say_skipped(folder: Path, skipped: list[Path]) -> None:
    """Name the files a folder search skipped, on stderr (a line each, then a count by suffix)."""
    for q in skipped[:SKIPPED_SAID]:
        print(f"liser: {q}: {audio.skipped_reason(q)}", file=sys.stderr, flush=True)
    rest = skipped[SKIPPED_SAID:]
    if rest:
        counts: dict[str, int] = {}
        for q in rest:
            counts[q.suffix.lower() or "no suffix"] = counts.get(q.suffix.lower() or "no suffix", 0) + 1
        said = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
        print(f"liser: {folder}: {len(rest)} more files skipped ({said})", file=sys.stderr, flush=True)


def _problem_line(path: str, e: Exception) -> str:
    """The one line that says why `path` got no label: '<path>: <why>'."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if not isinstance(e, LiserError):
        msg = f"{type(e).__name__}: {msg}"
    return msg if msg.startswith(str(path)) else f"{path}: {msg}"


def _say_problem(path: str, e: Exception) -> None:
    print(f"liser: {_problem_line(path, e)}", file=sys.stderr, flush=True)


class _Writer:
    """Plain text, JSON lines or CSV rows on stdout."""

    def __init__(self, fmt: str, classes: list[str], timeline: bool):
        self.fmt, self.classes, self.timeline = fmt, classes, timeline
        self.csv = None
        if fmt == "csv":
            self.csv = csv.writer(sys.stdout, lineterminator="\n")
            head = ["path"] + (["start", "end"] if timeline else []) + ["label", "p"] + list(classes)
            self.csv.writerow(head)

    def file(self, path: str, p: Prediction, windows: list[Prediction] | None = None) -> None:
        if self.fmt == "json":
            d = {"path": path, **p.to_dict()}
            if windows is not None:
                d["timeline"] = [w.to_dict() for w in windows]
            print(json.dumps(d), flush=True)
        elif self.fmt == "csv":
            if windows is None:
                self.csv.writerow([path, p.label, f"{p.confidence:.4f}"] + [f"{p.probabilities[c]:.4f}" for c in self.classes])
            for w in windows or []:
                self.window(path, w)
            sys.stdout.flush()
        else:
            print(f"{path}\t{p.label}\tp={p.confidence:.2f}", flush=True)
            for w in windows or []:
                self.window(path, w)

    def refused(self, path: str, line: str) -> None:
        """JSON lines: a record for a file that got no label, {"path", "error"}, so every input has its line
        (the same line goes to stderr). Text and CSV keep to labels."""
        if self.fmt == "json":
            why = line[len(str(path)) + 2 :] if line.startswith(f"{path}: ") else line
            print(json.dumps({"path": path, "error": why}), flush=True)

    def window(self, path: str, w: Prediction) -> None:
        """One timeline window; a no-speech window is "no speech" in text, an empty label and p in CSV."""
        if self.fmt == "json":
            print(json.dumps({"path": path, **w.to_dict()}), flush=True)
        elif self.fmt == "csv":
            said = [""] * (2 + len(self.classes)) if w.no_speech else \
                [w.label, f"{w.confidence:.4f}"] + [f"{w.probabilities[c]:.4f}" for c in self.classes]
            self.csv.writerow([path, f"{w.start:.3f}", f"{w.end:.3f}"] + said)
            sys.stdout.flush()
        else:
            said = "no speech" if w.no_speech else f"{w.label}\tp={w.confidence:.2f}"
            print(f"{path}\t{w.start:.2f}-{w.end:.2f}\t{said}", flush=True)


def cores() -> int:
    """CPU cores this process may run on: its affinity mask (taskset, a container's cpuset) where the OS has one."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def plan_threads(threads: int | None, n_files: int, stream_input: bool = False) -> tuple[int, int]:
    """`liser predict --threads N` (N = cores in all; None = every core) -> (files at once, threads per file).

    Many files: one file per core, each on one thread (onnxruntime and
    numpy release the GIL, so N worker threads use N cores); fewer files
    than cores: the cores left are shared as intra-op threads of each
    file's model calls. A stream is one file read as it arrives: its
    model calls get all N. Raises LiserError for N < 1.
    """
    total = cores() if threads is None else int(threads)
    if total < 1:
        raise LiserError(f"--threads {threads}: must be at least 1 (cores to use in all)")
    workers = 1 if stream_input else max(1, min(total, n_files))
    return workers, max(1, total // workers)


@contextlib.contextmanager
def one_blas_thread():
    """numpy's BLAS on one thread while the command runs (restored after; threadpoolctl, when installed).

    Why: the front end's one Mel matmul per file (liser.frontend._mel_db) is
    large enough for OpenBLAS to split over every core, and its threads then
    spin-wait between calls: `liser predict` over 100 RAVDESS files took
    3.8 s of CPU instead of 1.6 s (2 loaded cores), and the files are
    spread over the cores anyway. One BLAS thread or two gave the same
    features bit for bit on those files (tests/test_predict_parallel.py
    compares whole runs).
    """
    if os.environ.get("OPENBLAS_NUM_THREADS") == "1":  # so it was when numpy loaded its BLAS (the `liser` command
        yield  # sets it first: liser.cli._one_blas_thread_at_load); asking threadpoolctl costs 3-5 ms of start-up
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _attempt(fn, item):
    """(fn(item), None), or (None, the exception): a bad file is reported by the writer, in its turn."""
    try:
        return fn(item), None
    except Exception as e:  # one bad file must not stop the rest
        return None, e


def in_order(fn, items: list, workers: int):
    """(item, result, error) for every item, in the items' order, `fn` run on `workers` threads.

    workers == 1: each item is done when its turn comes (no thread, no
    read-ahead). More: at most 2 x workers items are in flight, so a long
    folder is never all held; closing the generator early (a broken pipe,
    Ctrl-C) cancels what has not started and waits for what has.
    """
    if workers <= 1:
        for item in items:
            yield (item, *_attempt(fn, item))
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    pending = deque()
    rest = iter(items)
    with ThreadPoolExecutor(workers, thread_name_prefix="liser-predict") as pool:
        try:
            for item in rest:
                pending.append((item, pool.submit(_attempt, fn, item)))
                if len(pending) >= 2 * workers:
                    break
            while pending:
                item, fut = pending.popleft()
                nxt = next(rest, _END)
                if nxt is not _END:
                    pending.append((nxt, pool.submit(_attempt, fn, nxt)))
                yield (item, *fut.result())
        finally:
            for _, fut in pending:
                fut.cancel()


_END = object()


def _predict_path(model: EmotionModel, f: str, timeline_step: float | None, raw: bool):
    """The whole-file Prediction of one input (a path or - for stdin) and, with `timeline_step`, its windows."""
    if f == "-":
        sig = decode_bytes(_stdin_bytes(), "-", raw=raw)
        frames, duration = features(sig), len(sig) / audio.SAMPLE_RATE
    else:
        frames, duration = file_frames(f)
    p = _prediction(model.file_logits(frames, f), model.classes)
    return p, (model.timeline_frames(frames, duration, timeline_step) if timeline_step is not None else None)


def run_predict(model_path: str, inputs: list[str], fmt: str = "text", timeline: bool = False,
                stream_input: bool = False, stride: float | None = None, threads: int | None = None,
                raw: bool = False) -> int:
    """`liser predict`: per-file labels on stdout; returns 0 if every input succeeded, 1 if any failed.

    `stride` is the one window step, in seconds: whole-file scoring (default
    0.1 s, the paper's) and the --timeline / --stream step (default 0.5 s).
    `threads`: cores to use in all (None: every core; `plan_threads`):
    files are predicted that many at a time, one per core, and written in
    the order given, each exactly as one at a time would give it; a bad
    file is said in its turn and the rest go on.
    `raw`: stdin (`-`) is headerless 16 kHz mono 16-bit PCM; without it,
    stdin must be a recognisable audio or video file's bytes.
    """
    from .outputs import StdoutError

    if stride is not None and not 0 < stride <= audio.CLIP_S:
        raise LiserError(f"--stride {stride}: must be in (0, {audio.CLIP_S}] seconds")
    step = stride if stride is not None else 0.5
    files, problems = expand_inputs(inputs)
    workers, per_file = plan_threads(threads, len(files), stream_input)
    model = load(model_path, threads=per_file)
    if stride is not None:
        model.stride_s = stride
    for msg in problems:
        print(f"liser: {msg}", file=sys.stderr, flush=True)
    if files.count("-") > 1:
        raise LiserError("-: stdin can be given only once")
    out = _Writer(fmt, model.classes, timeline or stream_input)
    failed = len(problems)
    with one_blas_thread():
        if stream_input:
            for f in files:
                try:
                    for w in stream(model, f, step, raw=raw):
                        out.window(f, w)
                except (BrokenPipeError, StdoutError):  # stdout's problem, not this stream's (liser.outputs)
                    raise
                except Exception as e:  # one bad stream must not stop the rest
                    failed += 1
                    _say_problem(f, e)
            return 1 if failed else 0
        work = functools.partial(_predict_path, model, timeline_step=step if timeline else None, raw=raw)
        with contextlib.closing(in_order(work, files, workers)) as results:
            for f, res, err in results:
                if err is not None:
                    failed += 1
                    _say_problem(f, err)
                    out.refused(f, _problem_line(f, err))
                else:
                    out.file(f, *res)
    return 1 if failed else 0
