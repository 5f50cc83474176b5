"""Which windows of a file the student scores, and how much each counts.

Two windowings, recorded in every checkpoint and ONNX model (`front_end["windowing"]`):

- "pad", the paper's: the file zero-padded to 3 s, 3 s windows every
  stride over all of it, logits averaged with equal weight. A 1 s clip is
  then 1 s of speech and 2 s of digital silence, and 15 s of room tone
  before the speech is five windows of room tone: the label follows the
  framing (issue 23).
- "speech", the `liser` recipe's: the file's speech span is found on its
  own log-Mel frames (`speech_span`); a span up to 3 s long is scored as
  one window of its own length (no padding: the student's CNN and LSTM
  take any length from MIN_WINDOW_S on), a longer one as 3 s windows every
  stride inside it, each weighted by its share of speech frames.
  Training crops come from the same span (liser.student.train), so training and
  inference see the same thing.

The speech detector is an energy gate on the 300-4000 Hz Mel bands against
a local noise floor, not a neural VAD: it needs nothing but the features the
student already has (numpy only, so an ONNX model runs without torch), it
is deterministic, and it only has to find where the talking is. A frame is
speech when its band energy is at least LOCAL_MARGIN_DB above the local
floor and within DYNAMIC_RANGE_DB of the file's peak (99th percentile),
inside a run of at least MIN_RUN frames. The local floor (minimum
statistics: steady room tone, hum or noise never rises that far above its
own minimum; syllables do) is the higher of the lowest energies in the
FLOOR_WINDOW_S / 2 before and after the frame (`local_floor`): room tone
that ends where a quieter recording begins (a recorder started early, a
spliced clip) stays below the floor on its own side.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from liser.data import audio
from liser.core.errors import LiserError

PAD, SPEECH = "pad", "speech"
WINDOWINGS = (PAD, SPEECH)
SPEECH_BANDS = slice(6, 50)  # Mel bands 6..49: centres 325-3905 Hz, the speech band
DYNAMIC_RANGE_DB = 40.0  # frames more than this below the file's peak are never speech
LOCAL_MARGIN_DB = 10.0  # a speech frame stands this far above the local floor
FLOOR_WINDOW_S = 3.0  # the local floor: the lowest energy within half this before, and half after, the frame
MIN_RUN = 3  # frames (~0.1 s): shorter bursts (clicks, door knocks) are not speech
MARGIN_FRAMES = 3  # frames kept on each side of the span (~0.1 s): onsets and decays
MIN_WINDOW_S = 0.5  # the shortest window the student is trained on and scores
MIN_WINDOW_FRAMES = 1 + int(MIN_WINDOW_S * audio.SAMPLE_RATE) // audio.HOP  # 16 frames


def band_energy_db(frames: np.ndarray) -> np.ndarray:
    """Speech-band energy per frame, dB: [T, 64] log-Mel (dB) -> [T] float64."""
    x = np.asarray(frames, dtype=np.float64)[:, SPEECH_BANDS]
    m = x.max(axis=1, keepdims=True)
    return (m[:, 0] + 10.0 * np.log10(np.power(10.0, (x - m) / 10.0).sum(axis=1)))


def speech_frames(frames: np.ndarray, open_ends: bool = False) -> np.ndarray:
    """Which frames hold speech: [T, 64] log-Mel (dB) -> [T] bool (module docstring: the rule).

    `open_ends`: the frames are a window cut from a longer recording
    (`window_span`), so its edges are not the recording's (`local_floor`).
    """
    e = band_energy_db(frames)
    if len(e) == 0:
        return np.zeros(0, bool)
    peak = np.percentile(e, 99)
    if peak <= 10.0 * np.log10(audio.LOG_FLOOR) + DYNAMIC_RANGE_DB / 4:  # digital silence throughout
        return np.zeros(len(e), bool)
    on = (e > local_floor(e, extent(frames), open_ends) + LOCAL_MARGIN_DB) & (e > peak - DYNAMIC_RANGE_DB)
    return _drop_short_runs(on, MIN_RUN)


def local_floor(e: np.ndarray, end: int | None = None, open_ends: bool = False) -> np.ndarray:
    """The local floor of band energies e [T] (dB): [T].

    The higher of min(e) over the FLOOR_WINDOW_S / 2 up to each frame and
    over the same span from it. A side that runs past the recording (before
    frame 0, or from `end` on: the zero padding) tells nothing about the
    room and counts as -inf, so a clip shorter than the window, all speech
    (a 1 s cut), has no floor and only the peak rule applies to it. With
    `open_ends` the frames are a window of a longer recording: a side cut
    by the window's edge (not by zero padding) is the part inside it.
    """
    from numpy.lib.stride_tricks import sliding_window_view

    end = len(e) if end is None else end
    half = int(FLOOR_WINDOW_S / 2 / audio.HOP_S)
    padded = np.pad(e, half, mode="edge")
    mins = sliding_window_view(padded, half + 1).min(axis=1)  # mins[i] = min(padded[i : i + half + 1])
    t = np.arange(len(e))
    before, after = mins[: len(e)], mins[half : half + len(e)]  # the spans ending and starting at the frame
    # ("edge" padding makes them the minima of what is inside the frames); a side past the recording: -inf
    if not open_ends:
        before = np.where(t >= half, before, -np.inf)
    if not open_ends or end < len(e):  # with zero padding in a window, its end is the recording's
        after = np.where(t + half < end, after, -np.inf)
    return np.maximum(before, after)


def _drop_short_runs(on: np.ndarray, min_run: int) -> np.ndarray:
    """`on` with runs of True shorter than `min_run` set to False."""
    out = on.copy()
    edges = np.diff(np.concatenate([[0], on.astype(np.int8), [0]]))
    for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)):
        if b - a < min_run:
            out[a:b] = False
    return out


def speech_span(frames: np.ndarray, speech: np.ndarray | None = None) -> tuple[int, int] | None:
    """Frame range [a, b) from the first to the last speech frame, MARGIN_FRAMES wider on each side
    (never into the zero padding after the recording: `extent`), or None when the file holds no speech
    frame. `speech`: speech_frames(frames)."""
    speech = speech_frames(frames) if speech is None else speech
    on = np.flatnonzero(speech)
    if on.size == 0:
        return None
    return max(0, int(on[0]) - MARGIN_FRAMES), min(extent(frames), int(on[-1]) + 1 + MARGIN_FRAMES)


def extent(frames: np.ndarray) -> int:
    """Frames of a recording before its trailing zero padding (frames at the log floor in every band)."""
    loud = np.flatnonzero(np.asarray(frames).max(axis=1) > 10.0 * np.log10(audio.LOG_FLOOR) + 1.0)
    return int(loud[-1]) + 1 if loud.size else len(frames)


def window_span(window: np.ndarray, context: np.ndarray | None = None, offset: int = 0) -> tuple[int, int] | None:
    """The speech span [a, b) inside one timeline window ([T, 64] log-Mel), or None when it is shorter than
    MIN_WINDOW_FRAMES: that window gets no label (liser.inference.model timelines).

    The detector reads the window's own frames, or, for a window shorter than 3 s, `context`: the 3 s of
    frames around it, the window starting `offset` frames into them. A short window of continuous speech has
    no pause of its own to set the noise floor from (local_floor), so alone it would be refused as no speech.
    """
    if context is None:
        speech = speech_frames(window, open_ends=True)
    else:
        speech = speech_frames(context, open_ends=True)[offset : offset + len(window)]
    span = speech_span(window, speech)
    return span if span is not None and span[1] - span[0] >= MIN_WINDOW_FRAMES else None


@dataclass(frozen=True)
class Plan:
    """The windows of one file: `starts` [W] start frames, all `length` frames long, `weights` [W] (sum 1)."""

    starts: np.ndarray
    length: int
    weights: np.ndarray


def plan(frames: np.ndarray, stride_s: float, windowing: str = PAD, strict: bool = True, name: str = "input") -> Plan:
    """The windows a file is scored on (module docstring), for [T, 64] log-Mel frames.

    "pad": 94-frame windows every `stride_s` (the frames already padded to
    3 s), equal weights. "speech": windows inside `speech_span`. A file
    whose span is shorter than MIN_WINDOW_S raises LiserError naming
    `name` when `strict` (predict: never a confident label for no speech);
    otherwise (evaluation of a labeled corpus, where every file is speech)
    the whole file is the span. Raises LiserError for an unknown windowing.
    """
    if windowing == PAD:
        starts = audio.window_starts(len(frames), stride_s)
        return Plan(starts, audio.CLIP_FRAMES, np.full(len(starts), 1.0 / len(starts)))
    if windowing != SPEECH:
        raise LiserError(f"unknown windowing {windowing!r} (one of {', '.join(WINDOWINGS)})")
    speech = speech_frames(frames)
    span = speech_span(frames, speech)
    if span is None or span[1] - span[0] < MIN_WINDOW_FRAMES:
        if strict:
            got = 0.0 if span is None else (span[1] - span[0]) * audio.HOP_S
            raise LiserError(f"{name}: no speech found (a speech span of {got:.2f} s, margins included; "
                             f"at least {MIN_WINDOW_S} s needed)")
        span = (0, len(frames))
    return span_plan(span, speech, stride_s)


def span_plan(span: tuple[int, int], speech: np.ndarray, stride_s: float) -> Plan:
    """Windows of a speech span [a, b): one window of the span's own length up to 3 s, else 3 s windows
    every `stride_s` from a to b (the last flush with b), weighted by their share of speech frames."""
    a, b = span
    n = b - a
    if n <= audio.CLIP_FRAMES:
        return Plan(np.array([a]), n, np.ones(1))
    starts = a + audio.window_starts(n, stride_s)
    share = np.array([speech[s : s + audio.CLIP_FRAMES].mean() for s in starts]) + 1e-3  # all-pause windows count a little
    return Plan(starts, audio.CLIP_FRAMES, share / share.sum())


def gather(frames: np.ndarray, p: Plan, first: int = 0, count: int | None = None) -> np.ndarray:
    """Windows `first .. first+count` of a plan as the student's input: [w, 64, length] float32 contiguous."""
    starts = p.starts[first : None if count is None else first + count]
    idx = starts[:, None] + np.arange(p.length)[None, :]
    return np.ascontiguousarray(np.asarray(frames, dtype=np.float32)[idx].transpose(0, 2, 1))
