"""Waveform-level conditions of the field: codecs, telephone band, speed, reverberation, noise, room tone.

The student's log-Mel augmentations (liser.data.augment) cannot imitate what a
phone, a codec or a room does to a recording; these work on the waveform
(16 kHz mono float32 [N], full scale 1.0) and are used twice:

- training (`augment_view`): K seeded random chains per labeled item,
  computed once into features caches ("views", liser.data.views), so a training
  step costs what it did (issue 23, "Training that teaches invariance");
- the robustness benchmark (bench/bench_robustness.py): each condition on
  its own, at fixed settings.

Codecs, filters and the algorithmic reverb are Spotify's pedalboard (a
well-kept C++ library with LAME's MP3 encoder and the GSM 06.10 phone codec
built in, about 1,000x faster than real time here); speed is soxr's
resampling. Every function is pure: the same input and Generator state give
the same output.
"""

from __future__ import annotations

import numpy as np

from liser.data.audio import SAMPLE_RATE

TELEPHONE_BAND_HZ = (300.0, 3400.0)  # the classic narrow-band telephone channel
TELEPHONE_RATE = 8_000  # Hz: narrow-band codecs (GSM, AMR-NB) sample at 8 kHz
ROOM_TONE_DBFS = (-70.0, -45.0)  # level range of the room tone put before / after speech in training views
MAX_PAD_S = 2.0  # longest room tone added before or after an utterance in a training view
FLOOR_DBFS = (-80.0, -50.0)  # level range of a recorder's noise floor under a whole training view (aug_floor_p)
FLOOR_EXPONENT = (0.0, 1.0)  # its spectral slope: power ~ 1 / f^e, from white hiss (0) to pink (1)


def _board(*plugins):
    import pedalboard

    return pedalboard.Pedalboard(list(plugins))


def rms_dbfs(x: np.ndarray) -> float:
    """RMS level of a signal in dBFS (−inf for digital silence)."""
    r = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0
    return 20.0 * np.log10(r) if r > 0 else float("-inf")


def telephone(x: np.ndarray) -> np.ndarray:
    """An 8 kHz narrow-band telephone channel: 300-3400 Hz band-pass, down to 8 kHz and back to 16 kHz. [N] -> [N]."""
    import pedalboard

    lo, hi = TELEPHONE_BAND_HZ
    y = _board(pedalboard.HighpassFilter(lo), pedalboard.LowpassFilter(hi))(np.asarray(x, np.float32), SAMPLE_RATE)
    return _resample_keep_length(y, TELEPHONE_RATE)


def gsm(x: np.ndarray) -> np.ndarray:
    """The GSM 06.10 full-rate phone codec (13 kb/s at 8 kHz; what AMR-NB phone calls sound like). [N] -> [N]."""
    import pedalboard

    return _fit(_board(pedalboard.GSMFullRateCompressor())(np.asarray(x, np.float32), SAMPLE_RATE), len(x))


def mp3(x: np.ndarray, vbr_quality: float = 9.0) -> np.ndarray:
    """An MP3 round trip (LAME, variable bit rate; quality 9 = the lowest, about 24-32 kb/s for 16 kHz mono). [N] -> [N]."""
    import pedalboard

    board = _board(pedalboard.MP3Compressor(vbr_quality=float(vbr_quality)))
    return _fit(board(np.asarray(x, np.float32), SAMPLE_RATE), len(x))


def encode_decode(x: np.ndarray, codec: str = "mp3", bitrate: int = 32_000) -> np.ndarray:
    """A constant-bit-rate round trip through FFmpeg's encoder `codec` ("mp3", "opus", "aac") via PyAV. [N] -> [N].

    What a file sent at `bitrate` bits/s sounds like (the benchmark's
    "MP3 at 32 kb/s"). Opus is encoded at 48 kHz, as its encoder requires,
    and brought back to 16 kHz. Raises ValueError for a codec PyAV lacks.
    """
    import io

    import av

    rate = 48_000 if codec == "opus" else SAMPLE_RATE
    sig = _resample(np.asarray(x, np.float32), SAMPLE_RATE, rate)
    fmt = {"mp3": "mp3", "opus": "ogg", "aac": "adts"}[codec]
    name = {"mp3": "libmp3lame", "opus": "libopus", "aac": "aac"}[codec]
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        try:
            stream = out.add_stream(name, rate=rate, layout="mono")
        except Exception as e:  # noqa: BLE001  (PyAV raises several types for a missing encoder)
            raise ValueError(f"codec {codec}: not available in this PyAV build ({e})") from None
        stream.bit_rate = int(bitrate)
        frame_len = stream.codec_context.frame_size or 1152
        s16 = np.clip(np.round(sig * 32767), -32768, 32767).astype(np.int16)
        for a in range(0, len(s16), frame_len):
            frame = av.AudioFrame.from_ndarray(s16[None, a : a + frame_len], format="s16", layout="mono")
            frame.sample_rate = rate
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    buf.seek(0)
    parts = []
    with av.open(buf, "r") as inp:
        for frame in inp.decode(audio=0):
            a = frame.to_ndarray().astype(np.float32)
            parts.append(a.mean(0) if a.ndim == 2 else a)
    y = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    if y.dtype != np.float32 or np.abs(y).max(initial=0) > 2.0:  # an integer decoder format
        y = y / 32768.0
    return _fit(_resample(y, rate, SAMPLE_RATE), len(x))


def speed(x: np.ndarray, factor: float) -> np.ndarray:
    """Speed perturbation (Ko et al. 2015): played `factor` times faster, pitch and tempo together. [N] -> [N / factor]."""
    return _resample(np.asarray(x, np.float32), int(round(SAMPLE_RATE * factor)), SAMPLE_RATE)


def reverb(x: np.ndarray, room_size: float, wet_level: float) -> np.ndarray:
    """Algorithmic room reverberation (Freeverb; room_size, wet_level in 0..1), dry signal kept at 1. [N] -> [N]."""
    import pedalboard

    board = _board(pedalboard.Reverb(room_size=float(room_size), wet_level=float(wet_level), dry_level=1.0))
    return _fit(board(np.asarray(x, np.float32), SAMPLE_RATE), len(x))


def add_noise(x: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """x plus `noise` (tiled or cut to len(x)) scaled to `snr_db` below x's RMS. [N] -> [N] float32."""
    n = np.resize(np.asarray(noise, np.float32), len(x))
    gain = 10.0 ** ((rms_dbfs(x) - snr_db - rms_dbfs(n)) / 20.0) if rms_dbfs(n) > -np.inf else 0.0
    return (x + gain * n).astype(np.float32)


def noise_floor(x: np.ndarray, level_dbfs: float, rng: np.random.Generator) -> np.ndarray:
    """x plus white noise at an absolute RMS of `level_dbfs` (a recorder's noise floor). [N] -> [N]."""
    return (x + rng.standard_normal(len(x)).astype(np.float32) * 10.0 ** (level_dbfs / 20.0)).astype(np.float32)


def room_tone(n: int, level_dbfs: float, rng: np.random.Generator, noise: np.ndarray | None = None) -> np.ndarray:
    """[n] samples of room tone at RMS `level_dbfs`: a random stretch of `noise` if given, else pink noise."""
    if noise is not None and len(noise) > 0:
        a = int(rng.integers(0, max(1, len(noise) - n)))
        t = np.resize(np.asarray(noise[a : a + n], np.float32), n)
    else:
        t = pink_noise(n, rng)
    level = rms_dbfs(t)
    return (t * 10.0 ** ((level_dbfs - level) / 20.0) if level > -np.inf else t).astype(np.float32)


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """[n] samples of pink (1/f power) noise, unit RMS."""
    return coloured_noise(n, rng, 1.0)


def coloured_noise(n: int, rng: np.random.Generator, exponent: float) -> np.ndarray:
    """[n] samples of noise whose power falls as 1 / f^exponent (0 white, 1 pink, 2 brown), unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(max(n, 2)))
    f = np.arange(len(spec), dtype=np.float64)
    spec /= np.maximum(f, 1.0) ** (exponent / 2.0)
    y = np.fft.irfft(spec, max(n, 2))[:n]
    return (y / max(float(np.sqrt(np.mean(y**2))), 1e-12)).astype(np.float32)


def recorder_floor(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """x plus a recorder's self-noise under all of it: coloured noise (FLOOR_EXPONENT) at an RMS drawn from
    FLOOR_DBFS, whatever x's own level. [N] -> [N]. A microphone and preamp add this to every recording;
    the acted corpora's pauses are near digital silence, so a student that never heard a floor takes
    it for part of the voice (issue 23: a -60 dBFS floor changed 15 % of the default model's labels)."""
    level, exponent = float(rng.uniform(*FLOOR_DBFS)), float(rng.uniform(*FLOOR_EXPONENT))
    return (x + coloured_noise(len(x), rng, exponent) * 10.0 ** (level / 20.0)).astype(np.float32)


def pad_with(x: np.ndarray, before_s: float, after_s: float, level_dbfs: float, rng: np.random.Generator,
             noise: np.ndarray | None = None) -> np.ndarray:
    """x with `before_s` / `after_s` seconds of room tone around it (a recording started early, stopped late)."""
    b, a = int(before_s * SAMPLE_RATE), int(after_s * SAMPLE_RATE)
    return np.concatenate([room_tone(b, level_dbfs, rng, noise), x, room_tone(a, level_dbfs, rng, noise)])


def augment_view(x: np.ndarray, rng: np.random.Generator, noise: np.ndarray | None = None,
                 floor_p: float = 0.0, timing: bool = True) -> np.ndarray:
    """One random field condition chain of a clean utterance (a training "view"). [N] -> [M] float32.

    In order, each drawn independently: speed 0.9-1.1 (p 0.5); reverberation
    (p 0.3); room tone of 0-2 s before and after at -70..-45 dBFS (p 0.5);
    background noise at 5-30 dB SNR, from `noise` (real non-speech audio)
    when given, else pink (p 0.5); a recorder's noise floor under all of it
    (`recorder_floor`, p `floor_p`; with 0 nothing is drawn for it, so the
    other steps' draws are those of a chain without it); then one channel:
    telephone band, GSM, low-rate MP3, or none (p 0.15 / 0.15 / 0.2 / 0.5).
    The recording level is left to the log-Mel gain augmentation. Choices
    follow the issue's list of field conditions (issue 23, section 2).

    `timing` False leaves out the two steps that move the speech in time
    (speed, room tone around it), without drawing for them: the view then has
    x's length and its 0.5 s pieces are x's, which a teacher's soft labels on
    the view need (teach_views; issue 24 section 1).
    """
    y = np.asarray(x, np.float32)
    if timing and rng.random() < 0.5:
        y = speed(y, float(rng.uniform(0.9, 1.1)))
    if rng.random() < 0.3:
        y = reverb(y, float(rng.uniform(0.1, 0.7)), float(rng.uniform(0.1, 0.4)))
    if timing and rng.random() < 0.5:
        y = pad_with(y, float(rng.uniform(0, MAX_PAD_S)), float(rng.uniform(0, MAX_PAD_S)),
                     float(rng.uniform(*ROOM_TONE_DBFS)), rng, noise)
    if rng.random() < 0.5:
        src = noise if noise is not None and len(noise) > len(y) else None
        if src is not None:
            a = int(rng.integers(0, len(src) - len(y)))
            src = src[a : a + len(y)]
        y = add_noise(y, src if src is not None else pink_noise(len(y), rng), float(rng.uniform(5, 30)))
    if floor_p and rng.random() < floor_p:
        y = recorder_floor(y, rng)
    r = rng.random()
    if r < 0.15:
        y = telephone(y)
    elif r < 0.3:
        y = gsm(y)
    elif r < 0.5:
        y = mp3(y, float(rng.uniform(7, 9)))
    return np.clip(y, -1.0, 1.0).astype(np.float32)


def _resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    if sr_in == sr_out:
        return np.asarray(x, np.float32)
    import soxr

    return soxr.resample(np.asarray(x, np.float32), sr_in, sr_out).astype(np.float32)


def _resample_keep_length(x: np.ndarray, mid_rate: int) -> np.ndarray:
    return _fit(_resample(_resample(x, SAMPLE_RATE, mid_rate), mid_rate, SAMPLE_RATE), len(x))


def _fit(y: np.ndarray, n: int) -> np.ndarray:
    """y cut or zero-extended to n samples (codecs add priming delay and padding at the ends)."""
    y = np.asarray(y, np.float32).reshape(-1)
    return y[:n] if len(y) >= n else np.pad(y, (0, n - len(y)))
