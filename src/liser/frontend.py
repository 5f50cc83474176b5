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


def features_from_blocks(blocks, mean: float, n_samples: int, chunk_frames: int = 512) -> np.ndarray:
    """`features` of a long signal given as consecutive mono 16 kHz blocks, in bounded memory.

    `mean` and `n_samples` are the whole signal's (a first pass over it
    knows them); the signal must be at least 3 s long (no zero padding
    here). The result is `features(signal)` up to float rounding: the same
    DC removal, the same centred Hann STFT with reflect padding at both
    ends (rebuilt here: torch.stft's centre=True pads only a whole signal),
    the same Mel filterbank and dB floor, computed `chunk_frames` frames
    at a time ([frames, 64] float16; about 4 MB of spectrum per chunk).
    """
    import torch

    if n_samples < audio.CLIP_SAMPLES:
        raise ValueError(f"features_from_blocks needs at least {audio.CLIP_SAMPLES} samples, got {n_samples}")
    half, n_fft, hop = audio.N_FFT // 2, audio.N_FFT, audio.HOP
    total = 1 + n_samples // hop  # frames of torch.stft(center=True)
    window = torch.hann_window(n_fft)
    mel = torch.from_numpy(audio.mel_filters())
    out = np.empty((total, audio.N_MELS), np.float16)  # filled in place: no list of chunks to concatenate
    done = 0  # frames computed
    buf = np.zeros(0, np.float32)  # the reflect-padded signal from frame `done`'s first sample on
    seen, tail = 0, np.zeros(0, np.float32)  # samples of the signal read; its last half+1 of them

    def emit(buf: np.ndarray, final: bool) -> np.ndarray:
        nonlocal done
        k = (len(buf) - n_fft) // hop + 1 if len(buf) >= n_fft else 0
        k = min(k, total - done) if final else min(k, chunk_frames, total - done)
        if k <= 0:
            return buf
        x = torch.from_numpy(np.ascontiguousarray(buf[: n_fft + (k - 1) * hop]))
        spec = torch.stft(x, n_fft, hop, window=window, center=False, return_complex=True)
        power = spec.real.square() + spec.imag.square()
        db = 10.0 * torch.log10(torch.clamp(torch.matmul(mel, power), min=audio.LOG_FLOOR))
        out[done : done + k] = db.T.numpy()
        done += k
        return buf[k * hop :]

    for block in blocks:
        x = (np.asarray(block, dtype=np.float64) - mean).astype(np.float32)
        if seen == 0:
            if len(x) <= half:
                raise ValueError("features_from_blocks: the first block must hold more than 1024 samples")
            buf = x[1 : half + 1][::-1].copy()  # reflect padding of the start (torch.stft, center=True)
        seen += len(x)
        tail = np.concatenate([tail, x])[-(half + 1) :]
        buf = np.concatenate([buf, x])
        while len(buf) >= n_fft + (chunk_frames - 1) * hop and done < total:
            buf = emit(buf, final=False)
    buf = np.concatenate([buf, tail[:-1][::-1]])  # reflect padding of the end
    while done < total:
        before = done
        buf = emit(buf, final=True)
        if done == before:
            raise ValueError(f"features_from_blocks: got {seen} samples, expected {n_samples}")
    return out
