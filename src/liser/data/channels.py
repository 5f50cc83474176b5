"""Channels to one signal: the plain mean of mono and stereo, the speech channel of three or more.

Shared by liser.data.audio (a file's channels) and liser.data.video (a container's
audio tracks, chosen by the same speech-band measure), below both.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16_000  # Hz: liser.data.audio.SAMPLE_RATE (that module imports this one, so the constant is repeated)


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
    """Index of the channel of [samples, channels] with the most 300-3400 Hz energy (`speech_band_power`)."""
    return int(np.argmax(speech_band_power(audio, sr)))


def speech_band_power(audio: np.ndarray, sr: int) -> np.ndarray:
    """Mean 300-3400 Hz power of each channel of [samples, channels] (float64 [channels]).

    Measured on up to 60 one-second excerpts spread over the file (a whole
    hour of 6-channel audio would cost a second copy of it); a 4th-order
    Butterworth band-pass after each excerpt's DC is removed. A mean per
    sample, so signals of other lengths and rates compare: it picks the
    channel of 3+ (`speech_channel`) and the audio track of a video with
    several (liser.data.video.read_audio_track).
    """
    from scipy.signal import butter, sosfilt

    n = audio.shape[0]
    seg = max(1, min(n, sr))
    starts = np.unique(np.linspace(0, n - seg, num=min(60, max(1, n // seg))).astype(np.int64))
    hi = min(3400.0, 0.45 * sr)
    sos = butter(4, [300.0, hi], btype="bandpass", fs=sr, output="sos") if hi > 300.0 else None
    energy, count = np.zeros(audio.shape[1], np.float64), 0
    for a in starts:
        x = audio[a : a + seg].astype(np.float64)
        x = x - x.mean(axis=0)
        if sos is not None:
            x = sosfilt(sos, x, axis=0)
        energy += np.square(x).sum(axis=0)
        count += x.shape[0]
    return energy / max(count, 1)
