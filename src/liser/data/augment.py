"""Augmentations of log-Mel crops for the student (the `liser` recipe; the paper uses none).

Each works on a batch of crops x [B, n_mels, T] in dB (the front end's
`10 log10(power)`), in place of recomputing audio, so it costs next to nothing
per step. All take a numpy Generator: a run stays reproducible for its seed.

- `gain`: a random level change per crop, uniform in +-gain_db (a constant
  added in dB: what scaling the waveform does above the log floor).
- `add_noise`: stationary noise at a random SNR per crop, added in the power
  domain; its spectrum is pink-ish (power falling 3 dB per octave of band index),
  so low bands are not spared as they would be by white noise.
- `spec_augment`: SpecAugment's frequency and time masks (Park et al. 2019,
  without time warping); masked cells take the crop's mean level, not zero dB,
  so a mask never looks like loud sound.
- `band_limit`: a phone band drawn in the log-Mel domain: the bands above a
  random cut-off near 3.4 kHz lose 30-60 dB and the lowest ones a few dB, as
  the telephone channel's log-Mel measurably does (ravdess clips through
  liser.data.augment_audio.telephone: -50 dB above 3.9 kHz, -18 dB in band 0).
- `equalise`: a random smooth equaliser: a gain curve over the Mel bands
  through a few random knots, as a microphone, a phone's speaker path or a
  codec colours a recording (a fixed gain per band, a few dB, slowly varying
  with frequency).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from liser.data.audio import LOG_FLOOR


@dataclass(frozen=True)
class AugmentOptions:
    """What `augment_batch` does; all off = the paper's recipe."""

    gain_db: float = 0.0  # random level change per crop, uniform in [-gain_db, +gain_db] dB; 0 = off
    noise_p: float = 0.0  # probability that a crop gets noise; 0 = off
    noise_snr_db: tuple = (10.0, 30.0)  # SNR range (dB, crop power over noise power) when noise is added
    freq_masks: int = 0  # SpecAugment frequency masks per crop; 0 = off
    freq_width: int = 8  # widest frequency mask, in Mel bands
    time_masks: int = 0  # SpecAugment time masks per crop; 0 = off
    time_width: int = 10  # widest time mask, in frames (32 ms each)

    @property
    def active(self) -> bool:
        return bool(self.gain_db or self.noise_p or self.freq_masks or self.time_masks)


def gain(x: np.ndarray, gain_db: float, rng: np.random.Generator) -> np.ndarray:
    """x [B, F, T] dB plus one uniform(-gain_db, gain_db) offset per crop."""
    return x + rng.uniform(-gain_db, gain_db, size=(len(x), 1, 1)).astype(x.dtype)


def add_noise(x: np.ndarray, p: float, snr_db: tuple, rng: np.random.Generator) -> np.ndarray:
    """x [B, F, T] dB with stationary pink-ish noise added in power to a share p of the crops."""
    out = x.copy()
    n_bands = x.shape[1]
    tilt = -3.0 * np.log2(np.arange(1, n_bands + 1))  # dB per band, relative to the lowest
    for i in np.flatnonzero(rng.random(len(x)) < p):
        power = 10.0 ** (x[i] / 10.0)
        snr = rng.uniform(*snr_db)
        shape = 10.0 ** (tilt / 10.0)
        noise = shape * (power.mean() * n_bands / shape.sum()) * 10.0 ** (-snr / 10.0)
        jitter = rng.exponential(1.0, size=x[i].shape)  # power of Gaussian noise per cell
        out[i] = 10.0 * np.log10(power + noise[:, None] * jitter)
    return out


def spec_augment(x: np.ndarray, freq_masks: int, freq_width: int, time_masks: int, time_width: int,
                 rng: np.random.Generator) -> np.ndarray:
    """x [B, F, T] dB with random frequency / time stripes set to each crop's mean level."""
    out = x.copy()
    b, f, t = x.shape
    for i in range(b):
        fill = out[i].mean()
        for _ in range(freq_masks):
            w = int(rng.integers(0, freq_width + 1))
            a = int(rng.integers(0, max(1, f - w + 1)))
            out[i, a : a + w, :] = fill
        for _ in range(time_masks):
            w = int(rng.integers(0, time_width + 1))
            a = int(rng.integers(0, max(1, t - w + 1)))
            out[i, :, a : a + w] = fill
    return out


BAND_CUT = (44, 54)  # Mel band from which the high bands are cut: centres ~3.0-4.2 kHz (the phone band ends at 3.4)
BAND_DROP_DB = (30.0, 60.0)  # how far the cut bands fall, dB
LOW_BANDS = 4  # the lowest bands (below ~250 Hz) lose up to LOW_DROP_DB, the lowest the most
LOW_DROP_DB = 18.0


def band_limit(x: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """x [B, F, T] dB with a share p of the crops band-limited like a phone line (module docstring).

    The cut bands never fall below the front end's floor (-100 dB). Returns
    a new array; x is left as it is.
    """
    out = x.copy()
    floor = 10.0 * np.log10(LOG_FLOOR)  # the front end's floor, dB
    for i in np.flatnonzero(rng.random(len(x)) < p):
        cut = int(rng.integers(BAND_CUT[0], BAND_CUT[1] + 1))
        out[i, cut:, :] = np.maximum(out[i, cut:, :] - rng.uniform(*BAND_DROP_DB), floor)
        ramp = LOW_DROP_DB * rng.uniform(0.3, 1.0) * np.linspace(1.0, 0.0, LOW_BANDS, endpoint=False)
        out[i, :LOW_BANDS, :] = np.maximum(out[i, :LOW_BANDS, :] - ramp[:, None], floor)
    return out


EQ_KNOTS = 5  # knots of the random equaliser's gain curve, evenly spaced over the Mel bands


def equalise(x: np.ndarray, range_db: float, rng: np.random.Generator) -> np.ndarray:
    """x [B, F, T] dB plus one random smooth gain curve per crop: linear between EQ_KNOTS knots over the F bands,
    each knot uniform in +-range_db / 2 dB. Returns a new float32 array; x is left as it is."""
    knots = rng.uniform(-range_db / 2, range_db / 2, size=(len(x), EQ_KNOTS))
    at = np.linspace(0, x.shape[1] - 1, EQ_KNOTS)
    curve = np.stack([np.interp(np.arange(x.shape[1]), at, k) for k in knots])  # [B, F]
    return (x + curve[:, :, None]).astype(np.float32)


def augment_batch(x: np.ndarray, opts: AugmentOptions, rng: np.random.Generator) -> np.ndarray:
    """All active augmentations, in a fixed order (gain, noise, masks): x [B, F, T] dB -> same shape.

    Raises ValueError if x is not 3-D.
    """
    if x.ndim != 3:
        raise ValueError(f"augment_batch: expected crops [B, n_mels, T], got shape {x.shape}")
    if opts.gain_db:
        x = gain(x, opts.gain_db, rng)
    if opts.noise_p:
        x = add_noise(x, opts.noise_p, opts.noise_snr_db, rng)
    if opts.freq_masks or opts.time_masks:
        x = spec_augment(x, opts.freq_masks, opts.freq_width, opts.time_masks, opts.time_width, rng)
    return x.astype(np.float32, copy=False)
