"""The one log-Mel front end: waveform -> the [frames, 64] features the student reads -> 3 s windows.

Training (the features cache), evaluation, `liser predict`, `liser.load`
and `liser export`'s parity check all go through these functions, so a
prediction on a file is exactly what `liser evaluate` scored:

    signal (mono float32, 16 kHz)
      -> its mean (DC offset) removed                     features()
      -> zero-padded to at least 3 s                      liser.audio.pad_to_clip
      -> log-Mel [64, frames] (dB)                        liser.audio.log_mel
      -> [frames, 64] float16 (as the cache stores them)  features()
      -> 3 s windows [W, 64, 94] every stride_s           windows()

The STFT and Mel constants live in liser.audio; `SETTINGS` is what a
checkpoint records of them and `CACHE_SETTINGS` what keys a features cache.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import audio

# what a student checkpoint records (liser.predict refuses a checkpoint whose values differ)
SETTINGS = {"sample_rate": audio.SAMPLE_RATE, "n_mels": audio.N_MELS, "win_s": audio.WIN_S,
            "hop_s": audio.HOP_S, "clip_s": audio.CLIP_S}
# what keys a features cache (a change gives a new cache, never stale features)
CACHE_SETTINGS = {
    "sample_rate": audio.SAMPLE_RATE,
    "n_mels": audio.N_MELS,
    "n_fft": audio.N_FFT,
    "hop": audio.HOP,
    "clip_s": audio.CLIP_S,
    "scale": "dB, slaney mel, hann, centred (reflect)",
    "dc": "mean removed",
}


def features(signal: np.ndarray) -> np.ndarray:
    """[frames, 64] float16 log-Mel of a mono 16 kHz signal (zero-padded to 3 s first)."""
    signal = np.asarray(signal, dtype=np.float32)
    signal = signal - signal.mean(dtype=np.float64) if signal.size else signal  # DC before the zero padding
    return audio.log_mel(audio.pad_to_clip(signal)).T.numpy().astype(np.float16)


def file_features(path: str | Path) -> np.ndarray:
    """`features` of an audio file (or a video's audio track); LiserError names an unreadable file."""
    return features(audio.load_audio(path))


def window_index(n_frames: int, stride_s: float = audio.EVAL_STRIDE_S) -> tuple[np.ndarray, np.ndarray]:
    """Frame indices [W, 94] of the 3 s windows every `stride_s` seconds, and their start frames [W]."""
    starts = audio.window_starts(n_frames, stride_s)
    return starts[:, None] + np.arange(audio.CLIP_FRAMES)[None, :], starts


def windows(frames: np.ndarray, stride_s: float = audio.EVAL_STRIDE_S) -> np.ndarray:
    """All 3 s windows of one item's [frames, 64] features: [W, 64, 94] float32 (a transposed view)."""
    idx, _ = window_index(len(frames), stride_s)
    return np.asarray(frames, dtype=np.float32)[idx].transpose(0, 2, 1)
