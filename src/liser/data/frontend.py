"""The one log-Mel front end: waveform -> the [frames, 64] features the student reads -> 3 s windows.

Training (the features cache), evaluation, `liser predict`, `liser.load`
and `liser export`'s parity check all go through these functions, so a
prediction on a file is what `liser evaluate` scored:

    signal (mono float32, 16 kHz)
      -> its mean (DC offset) removed                     features() / features_numpy()
      -> zero-padded to at least 3 s                      liser.data.audio.pad_to_clip
      -> log-Mel [64, frames] (dB)                        liser.data.audio.log_mel (torch) / log_mel_numpy
      -> [frames, 64] float16 (as the cache stores them)  features() / features_numpy()
      -> 3 s windows [W, 64, 94] every stride_s           windows()

Two implementations of the one definition: `features` (torch, batched on
any device: the features cache and training) and `features_numpy` (numpy
only: `liser.load` and `liser predict`, so that inference with an
ONNX model never imports torch: 2 s and 218 MB of a one-file run). Both read
the same constants and the same Mel filterbank (`liser.data.audio.mel_filters`);
they agree within float16 rounding (tests/test_predict_onnx_notorch.py
measures it on real files).

The STFT and Mel constants live in liser.data.audio; `SETTINGS` is what a
checkpoint records of them and `CACHE_SETTINGS` what keys a features cache.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

from liser.data import audio

# what a student checkpoint records (liser.inference.predict refuses a checkpoint whose values differ)
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
CHUNK_FRAMES = 256  # frames per STFT pass of the numpy front end: 4 MB of windowed frames, 4 MB of spectrum
HIGH_BAND_HZ = 4200.0  # Mel bands above this lie beyond a telephone line's 4 kHz (8 kHz sampling)
# high-band power against the phone band's, dB, below which a file came through a telephone line or an 8 kHz
# recording: clean speech of the five corpora and the interviews measured -19 to -35 dB, the same files through
# the 8 kHz telephone band -69 to -100 dB, and through the GSM codec at 16 kHz (its aliasing left in) -36 to -52
NARROW_BAND_DB = -55.0


def features(signal: np.ndarray) -> np.ndarray:
    """[frames, 64] float16 log-Mel of a mono 16 kHz signal (zero-padded to 3 s first)."""
    signal = np.asarray(signal, dtype=np.float32)
    signal = signal - signal.mean(dtype=np.float64) if signal.size else signal  # DC before the zero padding
    return audio.log_mel(audio.pad_to_clip(signal)).T.numpy().astype(np.float16)


def file_features(path: str | Path) -> np.ndarray:
    """`features` of an audio file (or a video's audio track); LiserError names an unreadable file."""
    return features(audio.load_audio(path))


def high_band_db(frames: np.ndarray) -> float:
    """Power in the Mel bands above HIGH_BAND_HZ against that in the phone band (300-3400 Hz), in dB, over a
    file's [frames, 64] log-Mel frames (dB). Under NARROW_BAND_DB the file is narrow-band: a phone call or an
    8 kHz recording, whose labels the packaged `phone` model keeps close to those of full band
    (liser.inference.default_model)."""
    frames = np.asarray(frames)
    power = np.zeros(frames.shape[1])  # [64], summed over frames a chunk at a time: an hour's frames in float64
    for a in range(0, len(frames), CHUNK_FRAMES):  # would be 58 MB more at predict's peak
        power += (10.0 ** (frames[a : a + CHUNK_FRAMES].astype(np.float64) / 10.0)).sum(axis=0)
    phone = power[audio.band_mask(audio.PHONE_BAND_HZ) > 0].mean()
    high = power[audio.mel_centres() > HIGH_BAND_HZ].mean()
    return float(10.0 * np.log10(max(high, 1e-30) / max(phone, 1e-30)))


def window_index(n_frames: int, stride_s: float = audio.EVAL_STRIDE_S) -> tuple[np.ndarray, np.ndarray]:
    """Frame indices [W, 94] of the 3 s windows every `stride_s` seconds, and their start frames [W]."""
    starts = audio.window_starts(n_frames, stride_s)
    return starts[:, None] + np.arange(audio.CLIP_FRAMES)[None, :], starts


def windows(frames: np.ndarray, stride_s: float = audio.EVAL_STRIDE_S) -> np.ndarray:
    """All 3 s windows of one item's [frames, 64] features: [W, 64, 94] float32 (a transposed view)."""
    idx, _ = window_index(len(frames), stride_s)
    return np.asarray(frames, dtype=np.float32)[idx].transpose(0, 2, 1)


# ---------------------------------------------------------------- the numpy front end (inference)
@lru_cache(maxsize=1)
def _hann() -> np.ndarray:
    """The periodic Hann window of N_FFT samples (torch.hann_window's default), float64."""
    n = np.arange(audio.N_FFT, dtype=np.float64)
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * n / audio.N_FFT)


@lru_cache(maxsize=1)
def _mel_t() -> np.ndarray:
    """liser.data.audio.mel_filters() transposed, [1025, 64] float32 contiguous (frames @ it)."""
    return np.ascontiguousarray(audio.mel_filters().T)


class _Work(threading.local):
    """One thread's work arrays for `_mel_db`, made on first use and reused (about 10 MB).

    Why: `liser predict` returns freed blocks over 1 MB to the system at once
    (its glibc thresholds keep an hour within 300 MB), so fresh temporaries of
    a 3 s file's STFT (1.5 MB each) were page-faulted in on every call: 900
    faults and a median of 23 ms per file on a busy machine, 1.9 ms reused.
    Per thread, so that threads sharing a model never share the arrays.
    """

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Windowed frames [CHUNK, 2048] float64, spectrum [CHUNK, 1025] complex128, two [CHUNK, 1025] float32."""
        if not hasattr(self, "frames"):
            n = audio.N_FFT // 2 + 1
            self.frames = np.empty((CHUNK_FRAMES, audio.N_FFT), np.float64)
            self.spec = np.empty((CHUNK_FRAMES, n), np.complex128)
            self.power = np.empty((CHUNK_FRAMES, n), np.float32)
            self.imag2 = np.empty((CHUNK_FRAMES, n), np.float32)
        return self.frames, self.spec, self.power, self.imag2


_WORK = _Work()


def _mel_db(padded: np.ndarray, out: np.ndarray) -> None:
    """Fill `out` [k, 64] (k <= CHUNK_FRAMES) with the dB log-Mel of the first k frames of `padded`.

    `padded` (float32) already holds the centring (reflect) padding: frame i
    is padded[i*HOP : i*HOP + N_FFT]. Hann window, real FFT, power, the
    Slaney Mel filterbank, 10*log10 with the -100 dB floor: liser.data.audio.log_mel's
    steps. The FFT is numpy's in float64: its float32 transform is 4x slower
    here (6 vs 1.4 ms for a 3.7 s file), and scipy.fft, as fast in float32,
    costs 0.2 s of CPU to import, most of a one-file `liser predict`.
    """
    from numpy.lib.stride_tricks import sliding_window_view

    k = len(out)
    work, spec, power, imag2 = (a[:k] for a in _WORK.arrays())
    frames = sliding_window_view(padded[: (k - 1) * audio.HOP + audio.N_FFT], audio.N_FFT)[:: audio.HOP]
    np.multiply(frames, _hann(), out=work)
    np.fft.rfft(work, axis=1, out=spec)  # [k, 1025] complex128
    np.square(spec.real, out=power, casting="same_kind")
    np.square(spec.imag, out=imag2, casting="same_kind")
    power += imag2
    np.matmul(power, _mel_t(), out=out)
    np.maximum(out, audio.LOG_FLOOR, out=out)
    np.log10(out, out=out)
    out *= 10.0


def log_mel_numpy(signal: np.ndarray, chunk_frames: int = CHUNK_FRAMES) -> np.ndarray:
    """liser.data.audio.log_mel of one signal in numpy, transposed: [frames, 64] float32 dB, frames = 1 + samples // 512.

    `signal`: 1-D, 16 kHz, more than 1024 samples (the reflect padding
    needs them; features_numpy pads to 3 s first). Its mean is removed, as
    log_mel does; the STFT runs `chunk_frames` frames at a time, so a long
    signal costs its own size plus about 10 MB. Raises ValueError for a
    signal that is not 1-D or too short.
    """
    x = np.asarray(signal, dtype=np.float32)
    half = audio.N_FFT // 2
    if x.ndim != 1 or len(x) <= half:
        raise ValueError(f"log_mel_numpy needs a 1-D signal of more than {half} samples, got shape {x.shape}")
    x = x - x.mean(dtype=np.float64).astype(np.float32)
    padded = np.pad(x, half, mode="reflect")  # torch.stft(center=True, pad_mode="reflect")
    total = 1 + len(x) // audio.HOP
    out = np.empty((total, audio.N_MELS), np.float32)
    for a in range(0, total, chunk_frames):
        k = min(chunk_frames, total - a)
        _mel_db(padded[a * audio.HOP :], out[a : a + k])
    return out


def features_numpy(signal: np.ndarray) -> np.ndarray:
    """`features` without torch: [frames, 64] float16 log-Mel of a mono 16 kHz signal (zero-padded to 3 s first).

    Equal to `features` within float16 rounding (float32 FFTs of two
    libraries round differently); what `liser.load` and `liser predict` use.
    """
    signal = np.asarray(signal, dtype=np.float32)
    if signal.size:
        signal = (signal - signal.mean(dtype=np.float64)).astype(np.float32)  # DC before the zero padding
    return log_mel_numpy(audio.pad_to_clip(signal)).astype(np.float16)


def features_from_blocks(blocks, mean: float, n_samples: int, chunk_frames: int = CHUNK_FRAMES) -> np.ndarray:
    """`features_numpy` of a long signal given as consecutive mono 16 kHz blocks, in bounded memory.

    `mean` and `n_samples` are the whole signal's (a first pass over it
    knows them); the signal must be at least 3 s long (no zero padding
    here). The result is `features_numpy(signal)` up to float rounding: the
    same DC removal, the same centred Hann STFT with reflect padding at both
    ends (rebuilt here from the first and last samples), the same Mel
    filterbank and dB floor, computed `chunk_frames` frames at a time
    ([frames, 64] float16; about 10 MB of work arrays per chunk). Raises
    ValueError for fewer than 3 s of samples or a count that differs from
    `n_samples`.
    """
    if n_samples < audio.CLIP_SAMPLES:
        raise ValueError(f"features_from_blocks needs at least {audio.CLIP_SAMPLES} samples, got {n_samples}")
    half, n_fft, hop = audio.N_FFT // 2, audio.N_FFT, audio.HOP
    total = 1 + n_samples // hop  # frames of a centred STFT
    out = np.empty((total, audio.N_MELS), np.float16)  # filled in place: no list of chunks to concatenate
    work = np.empty((chunk_frames, audio.N_MELS), np.float32)
    done = 0  # frames computed
    buf = np.zeros(0, np.float32)  # the reflect-padded signal from frame `done`'s first sample on
    seen, tail = 0, np.zeros(0, np.float32)  # samples of the signal read; its last half+1 of them

    def emit(buf: np.ndarray, final: bool) -> np.ndarray:
        nonlocal done
        k = (len(buf) - n_fft) // hop + 1 if len(buf) >= n_fft else 0
        k = min(k, chunk_frames, total - done)
        if k <= 0:
            return buf
        _mel_db(buf, work[:k])
        out[done : done + k] = work[:k]
        done += k
        return buf[k * hop :]

    for block in blocks:
        x = (np.asarray(block, dtype=np.float64) - mean).astype(np.float32)
        if seen == 0:
            if len(x) <= half:
                raise ValueError("features_from_blocks: the first block must hold more than 1024 samples")
            buf = x[1 : half + 1][::-1].copy()  # reflect padding of the start (a centred STFT)
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
