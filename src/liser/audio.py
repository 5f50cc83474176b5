"""Audio in, log-Mel out: the method's constants and its front end.

Everything the student hears goes through `load_audio` (any libsndfile
format, or a video's audio track through PyAV; mono; 16 kHz; float32) and
`log_mel` (64 Mel bands, 128 ms window, 32 ms hop, computed with torch in
batches). A 3 s window is 94 frames. Files shorter than 3 s are zero-padded
before the transform, so a file always has at least one full window.

Windows are taken on the frame grid of the whole-file spectrogram: a random
94-frame crop in training, and 94-frame windows every 0.1 s (rounded to the
nearest frame) in evaluation. Training, evaluation, `predict` and the ONNX
export all use this same definition.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np

from .errors import LiserError
from .util import pcm_to_float32  # noqa: F401  (liser.audio.pcm_to_float32 stays the public name)

# ---- the method's constants (SPEC "Student", "Protocol"; one place) ----
SAMPLE_RATE = 16_000  # Hz: every signal is resampled to this
N_MELS = 64  # Mel bands of the student's input
WIN_S = 0.128  # STFT window length, seconds
HOP_S = 0.032  # STFT hop, seconds
N_FFT = int(round(WIN_S * SAMPLE_RATE))  # 2048 samples
HOP = int(round(HOP_S * SAMPLE_RATE))  # 512 samples
CLIP_S = 3.0  # the student's input length, seconds
CLIP_SAMPLES = int(CLIP_S * SAMPLE_RATE)  # 48,000
CLIP_FRAMES = 1 + CLIP_SAMPLES // HOP  # 94 frames for 3 s
PIECE_S = 0.5  # teachers label 0.5 s pieces; targets average the pieces in a window
EVAL_STRIDE_S = 0.1  # sliding-window stride for evaluation
F_MIN, F_MAX = 0.0, SAMPLE_RATE / 2  # Mel range
LOG_FLOOR = 1e-10  # power floor before log10 (-100 dB)
MIN_SAMPLES = N_FFT  # shorter than one STFT window is refused
SILENCE_RMS = 1e-5  # a file whose RMS is below this (-100 dBFS) counts as silent

VIDEO_SUFFIXES = {".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".flv", ".mpg", ".mpeg", ".m4a", ".aac"}


def load_audio(path: str | Path, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Read a file as mono float32 at `sr` Hz.

    libsndfile formats (wav, flac, ogg/opus, mp3) are read with soundfile;
    containers it cannot read (mp4, m4a, mkv, ...) go through PyAV's audio
    track. Channels are down-mixed by `downmix`. Raises LiserError naming the
    file if it is missing (or a broken symbolic link), empty (0 bytes),
    cannot be read, has no samples, or holds NaN/inf.
    """
    path = Path(path)
    audio, file_sr = read_file(path)
    audio = downmix(audio, file_sr)
    check_waveform(audio, str(path))
    return resample(audio, file_sr, sr)


def missing_reason(path: Path) -> str | None:
    """Why `path` is not a readable regular file ("broken symbolic link -> target", ...), or None if it is one."""
    if path.is_symlink() and not path.exists():
        import os

        return f"broken symbolic link -> {os.readlink(path)}"
    if not path.exists():
        return "no such file"
    if path.is_dir():
        return "is a directory"
    if not path.is_file():
        return "not a regular file"
    return None


def read_file(path: str | Path) -> tuple[np.ndarray, int]:
    """A file's samples as float32 [samples, channels] at its own rate: soundfile first, then PyAV.

    The one reader behind `load_audio`, `prepare`'s checks and `predict` on
    stdin (whose bytes are written to a temporary file and read through
    this, so a stream is recognised exactly as a path would be). Raises
    LiserError naming the file: missing, broken link, 0 bytes, or a format
    neither library recognises.
    """
    import soundfile as sf

    path = Path(path)
    why = missing_reason(path)
    if why:
        raise LiserError(f"{path}: {why}")
    if path.stat().st_size == 0:  # libsndfile's message for this is a raw errno number
        raise LiserError(f"{path}: empty file (0 bytes)")
    sf_error = None
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        try:
            audio, file_sr = sf.read(str(path), dtype="float32", always_2d=True)
            return audio, int(file_sr)
        except Exception as e:  # libsndfile's message says why; PyAV may still read it
            sf_error = e
    try:
        from .video import read_audio_track

        return read_audio_track(path)
    except LiserError:
        if sf_error is None:
            raise
        raise LiserError(f"{path}: unreadable audio ({_first_line(sf_error)})") from None
    except Exception as e:
        raise LiserError(f"{path}: unreadable audio ({_first_line(sf_error or e)})") from None


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


def downmix(audio: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Mono float32 [samples] from [samples] or [samples, channels].

    1 or 2 channels: the plain mean (what every corpus, cache and benchmark
    figure was made with). 3 or more: the one channel with the most energy
    in the speech band (300-3400 Hz), after removing each channel's DC.
    Why not the mean: a voice that lives in one channel (the centre of 5.1
    film audio, one lapel microphone of a multitrack recorder) would be
    lowered by 20*log10(channels) dB (15.6 dB for 6) and buried under the
    others, and the student's log-Mel input is level dependent. Why not
    ITU-R BS.775 weights: they assume a channel order (L R C LFE Ls Rs)
    that a bare array or a WAV without a channel mask does not say, exist
    only for some layouts, and still lower the centre by 3 dB; the loudest
    speech-band channel needs no layout and keeps the voice at its level.
    """
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        return np.ascontiguousarray(audio)
    if audio.shape[1] <= 2:
        return np.ascontiguousarray(audio.mean(axis=1), dtype=np.float32)
    return np.ascontiguousarray(audio[:, speech_channel(audio, sr)], dtype=np.float32)


def speech_channel(audio: np.ndarray, sr: int) -> int:
    """Index of the channel of [samples, channels] with the most 300-3400 Hz energy.

    Measured on up to 60 one-second excerpts spread over the file (a whole
    hour of 6-channel audio would cost a second copy of it); a 4th-order
    Butterworth band-pass after each excerpt's DC is removed.
    """
    from scipy.signal import butter, sosfilt

    n = audio.shape[0]
    seg = max(1, min(n, sr))
    starts = np.unique(np.linspace(0, n - seg, num=min(60, max(1, n // seg))).astype(np.int64))
    hi = min(3400.0, 0.45 * sr)
    sos = butter(4, [300.0, hi], btype="bandpass", fs=sr, output="sos") if hi > 300.0 else None
    energy = np.zeros(audio.shape[1], np.float64)
    for a in starts:
        x = audio[a : a + seg].astype(np.float64)
        x = x - x.mean(axis=0)
        if sos is not None:
            x = sosfilt(sos, x, axis=0)
        energy += np.square(x).sum(axis=0)
    return int(np.argmax(energy))


def ac_rms(audio: np.ndarray) -> float:
    """RMS of a signal after removing its mean (per channel for [samples, channels]).

    This is what decides silence: a constant (DC) signal is silent however
    large it is, since the front end removes the mean before the STFT.
    """
    x = np.asarray(audio)
    if x.size == 0:
        return 0.0
    return float(np.sqrt(np.mean(np.var(x, axis=0, dtype=np.float64))))


def check_waveform(audio: np.ndarray, name: str) -> None:
    """Refuse empty signals and NaN/inf samples, naming the source."""
    if audio.size == 0:
        raise LiserError(f"{name}: empty audio (0 samples)")
    if not np.isfinite(audio).all():
        raise LiserError(f"{name}: audio holds NaN or inf samples")


def check_not_silent(audio: np.ndarray, name: str) -> None:
    """Refuse a signal whose RMS after removing the mean (`ac_rms`) is below SILENCE_RMS (-100 dBFS)."""
    rms = ac_rms(audio)
    if rms < SILENCE_RMS:
        raise LiserError(f"{name}: silent (RMS {rms:.1e} after removing the mean; all zeros, constant, or below -100 dBFS)")


def resample(audio: np.ndarray, sr_in: int, sr_out: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited resampling (soxr, or scipy's polyphase filter without it)."""
    if sr_in == sr_out:
        return audio.astype(np.float32, copy=False)
    try:
        import soxr

        return soxr.resample(audio, sr_in, sr_out, quality="HQ").astype(np.float32)
    except ImportError:
        from scipy.signal import resample_poly

        g = math.gcd(sr_in, sr_out)
        return resample_poly(audio, sr_out // g, sr_in // g).astype(np.float32)


def pad_to_clip(audio: np.ndarray) -> np.ndarray:
    """Zero-pad a signal shorter than 3 s to 3 s (SPEC: shorter signals are zero-padded)."""
    if audio.shape[-1] >= CLIP_SAMPLES:
        return audio
    pad = [(0, 0)] * (audio.ndim - 1) + [(0, CLIP_SAMPLES - audio.shape[-1])]
    return np.pad(audio, pad)


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's Mel scale (linear below 1 kHz, log above), as librosa's default."""
    f = np.asarray(f, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-12) / min_log_hz) / logstep, f / f_sp)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


@lru_cache(maxsize=4)
def mel_filters(n_mels: int = N_MELS, n_fft: int = N_FFT, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Slaney-normalised triangular Mel filterbank [n_mels, n_fft//2+1] (= librosa.filters.mel)."""
    fft_freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    mel_pts = _mel_to_hz(np.linspace(_hz_to_mel(F_MIN), _hz_to_mel(min(F_MAX, sr / 2)), n_mels + 2))
    fdiff = np.diff(mel_pts)
    ramps = mel_pts[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_pts[2 : n_mels + 2] - mel_pts[:n_mels]))[:, None]
    return weights.astype(np.float32)


def log_mel(audio, device: str = "cpu"):
    """Log-Mel spectrogram in dB, [..., 64, frames], frames = 1 + samples // 512.

    `audio` is a 1-D or batched [B, samples] float array or tensor at 16 kHz.
    Each signal's mean (its DC offset) is removed first: an inaudible offset
    of 0.005 would otherwise lift the lowest Mel band by about 27 dB. Power
    spectrogram (Hann window, centred frames, reflect padding) through the
    Slaney Mel filterbank, then 10*log10 with a -100 dB floor. Returns a
    torch tensor (float32).
    """
    import torch

    x = torch.as_tensor(np.asarray(audio, dtype=np.float32) if not isinstance(audio, torch.Tensor) else audio)
    x = x.to(device=device, dtype=torch.float32)
    squeeze = x.ndim == 1
    if squeeze:
        x = x[None]
    x = x - x.mean(dim=-1, keepdim=True)  # DC offset (the same for training, evaluation, predict and export)
    window = torch.hann_window(N_FFT, device=x.device)
    spec = torch.stft(x, N_FFT, HOP, window=window, center=True, pad_mode="reflect", return_complex=True)
    power = spec.real.square() + spec.imag.square()
    mel = torch.matmul(torch.from_numpy(mel_filters()).to(x.device), power)
    out = 10.0 * torch.log10(torch.clamp(mel, min=LOG_FLOOR))
    return out[0] if squeeze else out


def n_frames(n_samples: int) -> int:
    """Frames of the (3 s-padded) spectrogram of a signal of n_samples."""
    return 1 + max(n_samples, CLIP_SAMPLES) // HOP


def window_starts(total_frames: int, stride_s: float = EVAL_STRIDE_S) -> np.ndarray:
    """Frame offsets of 3 s windows every `stride_s` seconds over `total_frames`.

    Offsets are rounded to the frame grid (32 ms); a last window flush with
    the end is added when the stride does not land there, so the tail of the
    file is always seen.
    """
    last = total_frames - CLIP_FRAMES
    if last <= 0:
        return np.zeros(1, dtype=np.int64)
    step = stride_s / HOP_S
    starts = np.unique(np.round(np.arange(0, last + 1e-9, step)).astype(np.int64))
    starts = starts[starts <= last]
    if starts[-1] != last:
        starts = np.append(starts, last)
    return starts


def frames_to_seconds(frame: int | np.ndarray):
    """Start time (s) of a frame offset on the 32 ms grid."""
    return np.asarray(frame) * HOP_S
