"""`liser predict`: files, folders, stdin and live streams through a loaded model.

`liser predict` wraps liser.inference.model for files, folders, stdin (`-`:
the bytes of any file the path reader accepts, liser.inference.decode) and
live streams (`--stream`: a ring buffer of the last 3 s, one prediction per
hop, log-Mel of the buffer). Many files use every core: `--threads N`
(default: all) is the cores used in all, N files at a time on N threads with
one model thread each (onnxruntime, numpy and libsndfile release the GIL),
written in the order given and equal byte for byte to one at a time
(`plan_threads`, `in_order`); numpy's BLAS stays on one thread
(`one_blas_thread`).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import json
import os
import sys
from pathlib import Path

import numpy as np

from liser.data import audio, frontend
from liser.core.errors import LiserError
from liser.inference.decode import Blocks, decode_bytes, features, file_frames, prepare_waveform, stdin_bytes
from liser.inference.default_model import DEFAULT_ONNX
from liser.inference.model import EmotionModel, Prediction, _prediction, load, window_frames

INPUT_SUFFIXES = audio.INPUT_SUFFIXES  # what a folder argument is searched for (with content: audio.folder_files)

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
    for block in Blocks(src, block_s=min(0.1, hop_s), raw=raw):
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
    """Files to predict (folders searched with liser.data.audio.folder_files), and problems.

    A folder gives every file liser reads (by suffix, liser.data.audio.INPUT_SUFFIXES,
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

    Why: the front end's one Mel matmul per file (liser.data.frontend._mel_db) is
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


def _predict_path(model: EmotionModel, f: str, timeline_step: float | None, raw: bool, window_s: float = audio.CLIP_S,
                  band_check: bool = False):
    """(whole-file Prediction, timeline windows or None, narrow-band or not) of one input (a path or - for stdin).

    The windows come with `timeline_step`; narrow-band (a phone call or an 8 kHz recording,
    frontend.high_band_db) is measured only with `band_check`, else False.
    """
    if f == "-":
        sig = decode_bytes(stdin_bytes(), "-", raw=raw)
        frames, duration = features(sig), len(sig) / audio.SAMPLE_RATE
    else:
        frames, duration = file_frames(f)
    p = _prediction(model.file_logits(frames, f), model.classes)
    timeline = model.timeline_frames(frames, duration, timeline_step, window_s) if timeline_step is not None else None
    return p, timeline, band_check and frontend.high_band_db(frames) < frontend.NARROW_BAND_DB


def run_predict(model_path: str, inputs: list[str], fmt: str = "text", timeline: bool = False,
                stream_input: bool = False, stride: float | None = None, threads: int | None = None,
                raw: bool = False, window_s: float = audio.CLIP_S) -> int:
    """`liser predict`: per-file labels on stdout; returns 0 if every input succeeded, 1 if any failed.

    `stride` is the one window step, in seconds: whole-file scoring (default
    0.1 s, the paper's) and the --timeline / --stream step (default 0.5 s).
    `threads`: cores to use in all (None: every core; `plan_threads`):
    files are predicted that many at a time, one per core, and written in
    the order given, each exactly as one at a time would give it; a bad
    file is said in its turn and the rest go on.
    `raw`: stdin (`-`) is headerless 16 kHz mono 16-bit PCM; without it,
    stdin must be a recognisable audio or video file's bytes.
    `window_s`: the --timeline windows' length (1-3 s; EmotionModel.timeline_frames).
    """
    from liser.core.outputs import StdoutError

    if stride is not None and not 0 < stride <= audio.CLIP_S:
        raise LiserError(f"--stride {stride}: must be in (0, {audio.CLIP_S}] seconds")
    step = stride if stride is not None else 0.5
    files, problems = expand_inputs(inputs)
    workers, per_file = plan_threads(threads, len(files), stream_input)
    model = load(model_path, threads=per_file)
    if stream_input and window_s != audio.CLIP_S:  # its ring buffer is 3 s; silently ignoring it would mislead
        raise LiserError(f"--window {window_s:g}: --stream scores the last 3 s every step; for shorter windows "
                         "use --timeline on a file, or liser serve --window for a live stream")
    if timeline:
        window_frames(window_s, model.windowing)  # a bad --window is one line before any file is read
    elif window_s != audio.CLIP_S:
        raise LiserError(f"--window {window_s:g}: the length of --timeline windows; add --timeline")
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
                except (BrokenPipeError, StdoutError):  # stdout's problem, not this stream's (liser.core.outputs)
                    raise
                except Exception as e:  # one bad stream must not stop the rest
                    failed += 1
                    _say_problem(f, e)
            return 1 if failed else 0
        note_band = Path(model_path) == DEFAULT_ONNX  # the narrow-band note is for the default model's users
        work = functools.partial(_predict_path, model, timeline_step=step if timeline else None, raw=raw,
                                 window_s=window_s, band_check=note_band)
        narrow = 0
        with contextlib.closing(in_order(work, files, workers)) as results:
            for f, res, err in results:
                if err is not None:
                    failed += 1
                    _say_problem(f, err)
                    out.refused(f, _problem_line(f, err))
                else:
                    p, windows, is_narrow = res
                    out.file(f, p, windows)
                    narrow += is_narrow
    if narrow:
        print(f"liser: note: {narrow} of {len(files)} input{'s' if len(files) > 1 else ''} "
              f"{'is' if narrow == 1 else 'are'} narrow-band (a phone line or 8 kHz audio). The telephone band "
              "changes about one in five of the default model's labels, so its labels for such files do not compare "
              "well with its labels for full-band audio; `liser predict phone FILE...` labels narrow-band and "
              "full-band audio far more alike (MODEL_CARD_PHONE.md beside the default model)",
              file=sys.stderr, flush=True)
    return 1 if failed else 0
