"""The front end: load_audio (mono, 16 kHz, float32, errors), the Slaney Mel filterbank, log_mel, windows."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import real_root
from liser.data import audio
from liser.core.errors import LiserError

SR = 16_000


def _slaney_hz_to_mel(f: float) -> float:
    """Slaney's Mel scale written out from its definition (independent of the library)."""
    if f < 1000.0:
        return f / (200.0 / 3)
    return 1000.0 / (200.0 / 3) + math.log(f / 1000.0) / (math.log(6.4) / 27.0)


def _slaney_mel_to_hz(m: float) -> float:
    if m < 15.0:
        return m * (200.0 / 3)
    return 1000.0 * math.exp((m - 15.0) * (math.log(6.4) / 27.0))


def _band_edges(n_mels: int = 64, sr: int = SR) -> list[float]:
    """The n_mels + 2 Mel-equally-spaced frequencies (Hz) from 0 to sr/2."""
    top = _slaney_hz_to_mel(sr / 2)
    return [_slaney_mel_to_hz(top * i / (n_mels + 1)) for i in range(n_mels + 2)]


# ---------------------------------------------------------------- load_audio
def _stereo_ravdess_file() -> Path:
    root = real_root("ravdess")
    for actor in ("Actor_01", "Actor_05", "Actor_20"):  # the README lists 5 stereo files; look where they are
        for f in sorted((root / actor).glob("*.flac")):
            if sf.info(str(f)).channels == 2:
                return f
    for f in sorted(root.rglob("*.flac")):
        if sf.info(str(f)).channels == 2:
            return f
    pytest.skip("no stereo RAVDESS file found")


def test_stereo_file_is_mixed_down_to_mono_float32():
    f = _stereo_ravdess_file()
    raw, sr = sf.read(str(f), dtype="float32", always_2d=True)
    assert raw.shape[1] == 2 and sr == SR
    assert not np.allclose(raw[:, 0], raw[:, 1])  # the channels differ, so the mean is a real mix
    x = audio.load_audio(f)
    assert x.dtype == np.float32 and x.ndim == 1
    assert len(x) == len(raw)
    np.testing.assert_allclose(x, (raw[:, 0] + raw[:, 1]) / 2, atol=1e-7)


def test_mono_ravdess_file_is_read_unchanged():
    f = real_root("ravdess") / "Actor_01" / "03-01-01-01-01-01-01.flac"
    raw, sr = sf.read(str(f), dtype="float32")
    x = audio.load_audio(f)
    assert sr == SR and x.dtype == np.float32
    np.testing.assert_array_equal(x, raw)


def test_44k1_sine_is_resampled_to_16k(tmp_path):
    sr_in, seconds, freq = 44_100, 2.0, 1000.0
    t = np.arange(int(sr_in * seconds)) / sr_in
    path = tmp_path / "sine.wav"
    sf.write(str(path), (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr_in, subtype="FLOAT")
    x = audio.load_audio(path)
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) - int(seconds * SR)) <= 1
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    peak_hz = np.argmax(spec) * SR / len(x)
    assert abs(peak_hz - freq) <= SR / len(x)  # within one FFT bin (0.5 Hz)
    # amplitude is preserved (band-limited resampling, no gain change), away from the edges
    mid = x[SR // 4 : -SR // 4]
    assert abs(np.sqrt(np.mean(mid.astype(np.float64) ** 2)) - 0.5 / math.sqrt(2)) < 0.01


def test_resample_passthrough_at_16k():
    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    np.testing.assert_array_equal(audio.resample(x, SR, SR), x)


def test_opus_file_loads():
    f = sorted((real_root("tess") / "OAF_angry").glob("*.opus"))[0]
    info = sf.info(str(f))
    x = audio.load_audio(f)
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) - info.frames * SR / info.samplerate) <= 2
    assert np.isfinite(x).all() and np.abs(x).max() > 0.01


def test_nan_file_is_refused_naming_it(tmp_path):
    x = np.zeros(SR, np.float32)
    x[100] = np.nan
    path = tmp_path / "has_nan.wav"
    sf.write(str(path), x, SR, subtype="FLOAT")
    with pytest.raises(LiserError, match="has_nan.wav") as e:
        audio.load_audio(path)
    assert "nan" in str(e.value).lower()


def test_inf_file_is_refused(tmp_path):
    x = np.zeros(SR, np.float32)
    x[5] = np.inf
    path = tmp_path / "has_inf.wav"
    sf.write(str(path), x, SR, subtype="FLOAT")
    with pytest.raises(LiserError, match="has_inf.wav"):
        audio.load_audio(path)


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(str(path), np.zeros(0, np.float32), SR)
    with pytest.raises(LiserError, match="empty.wav"):
        audio.load_audio(path)


def test_zero_byte_and_missing_files_are_refused(tmp_path):
    path = tmp_path / "zero.wav"
    path.write_bytes(b"")
    with pytest.raises(LiserError, match="zero.wav"):
        audio.load_audio(path)
    with pytest.raises(LiserError, match="nothere.wav"):
        audio.load_audio(tmp_path / "nothere.wav")


# ---------------------------------------------------------------- constants and log_mel
def test_constants_match_the_spec():
    assert audio.N_FFT == 2048 and audio.HOP == 512  # 128 ms window, 32 ms hop at 16 kHz
    assert audio.CLIP_SAMPLES == 48_000
    assert audio.CLIP_FRAMES == 1 + 48_000 // 512 == 94


def test_log_mel_of_3s_is_64_by_94():
    x = np.random.default_rng(0).standard_normal(3 * SR).astype(np.float32) * 0.1
    m = audio.log_mel(x)
    assert isinstance(m, torch.Tensor) and m.dtype == torch.float32
    assert tuple(m.shape) == (64, 94)
    assert torch.isfinite(m).all()


def test_log_mel_floor_is_minus_100_db():
    m = audio.log_mel(np.zeros(3 * SR, np.float32))
    assert torch.all(m == -100.0)


def test_log_mel_of_1khz_sine_peaks_in_a_band_containing_1khz():
    t = np.arange(3 * SR) / SR
    m = audio.log_mel((0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32))
    band = int(m[:, 10:-10].mean(1).argmax())
    edges = _band_edges()
    containing = [i for i in range(64) if edges[i] < 1000 < edges[i + 2]]
    assert len(containing) == 2  # triangles overlap: every frequency is in two bands
    assert band in containing
    # and the energy is concentrated there: far bands are >= 40 dB below
    profile = m[:, 10:-10].mean(1)
    far = [i for i in range(64) if abs(i - band) > 4]
    assert float(profile[band] - profile[far].max()) > 40


def test_log_mel_batch_equals_single_calls():
    rng = np.random.default_rng(1)
    a = rng.standard_normal(3 * SR).astype(np.float32) * 0.1
    b = np.sin(np.arange(3 * SR) / SR * 2 * np.pi * 300).astype(np.float32)
    batch = audio.log_mel(np.stack([a, b]))
    assert tuple(batch.shape) == (2, 64, 94)
    torch.testing.assert_close(batch[0], audio.log_mel(a), atol=1e-3, rtol=0)
    torch.testing.assert_close(batch[1], audio.log_mel(b), atol=1e-3, rtol=0)


def test_log_mel_accepts_tensors_and_frame_count_formula():
    x = torch.randn(SR * 5 + 123) * 0.1
    m = audio.log_mel(x)
    assert m.shape[-1] == 1 + (SR * 5 + 123) // 512 == audio.n_frames(SR * 5 + 123)
    assert audio.n_frames(1000) == 94  # shorter signals are padded to 3 s first


def test_pad_to_clip():
    x = np.ones(1000, np.float32)
    p = audio.pad_to_clip(x)
    assert p.shape == (48_000,) and p[:1000].sum() == 1000 and not p[1000:].any()
    long = np.ones(50_000, np.float32)
    assert audio.pad_to_clip(long) is long


# ---------------------------------------------------------------- the Slaney filterbank
def test_mel_filters_shape_and_slaney_centres():
    w = audio.mel_filters()
    assert w.shape == (64, 1025) and w.dtype == np.float32
    edges = _band_edges()
    fft_hz = np.arange(1025) * SR / 2048
    df = SR / 2048
    for i in range(64):
        lo, c, hi = edges[i], edges[i + 1], edges[i + 2]
        peak = int(np.argmax(w[i]))
        # the sampled maximum is one of the two FFT bins around the centre frequency
        assert math.floor(c / df) <= peak <= math.ceil(c / df), (i, peak, c / df)
        # support: zero outside (lo, hi)
        outside = (fft_hz <= lo) | (fft_hz >= hi)
        assert not w[i][outside].any(), i
        # the triangle's height is 2 / (hi - lo) (Slaney area normalisation)
        height = 2.0 / (hi - lo)
        assert w[i].max() <= height * (1 + 1e-5)
        assert w[i].max() >= height * (1 - df / min(c - lo, hi - c)) - 1e-7


def test_mel_filters_equal_triangles_written_out():
    """Each filter is max(0, min(rising, falling)) * 2/(f_{i+2} - f_i), on the FFT grid."""
    w = audio.mel_filters().astype(np.float64)
    edges = _band_edges()
    fft_hz = np.arange(1025) * SR / 2048
    for i in (0, 1, 10, 21, 22, 40, 63):
        lo, c, hi = edges[i], edges[i + 1], edges[i + 2]
        tri = np.maximum(0, np.minimum((fft_hz - lo) / (c - lo), (hi - fft_hz) / (hi - c))) * 2 / (hi - lo)
        np.testing.assert_allclose(w[i], tri, rtol=1e-5, atol=1e-9)


def test_mel_filters_have_unit_area_in_hz():
    w = audio.mel_filters().astype(np.float64)
    df = SR / 2048
    areas = w.sum(1) * df  # the Riemann sum of a piecewise-linear triangle of area 1
    np.testing.assert_allclose(areas, 1.0, atol=0.02)


def test_centres_are_linear_below_1khz_and_log_above():
    edges = np.array(_band_edges())
    low = edges[edges < 1000]
    np.testing.assert_allclose(np.diff(low), np.diff(low)[0], rtol=1e-9)  # equal Hz steps
    high = edges[edges > 1100]
    ratios = high[1:] / high[:-1]
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-9)  # equal ratios
    assert edges[-1] == pytest.approx(8000.0)


# ---------------------------------------------------------------- windows
def test_window_starts_3s_file_has_one_window():
    assert audio.window_starts(audio.n_frames(3 * SR)).tolist() == [0]
    assert audio.window_starts(audio.n_frames(SR)).tolist() == [0]  # padded to 3 s


def test_window_starts_10s_file_every_0_1s():
    total = audio.n_frames(10 * SR)
    assert total == 1 + 160_000 // 512 == 313
    last = total - 94
    s = audio.window_starts(total, 0.1)
    assert s[0] == 0 and s[-1] == last
    assert np.all(np.diff(s) > 0) and np.all((s >= 0) & (s <= last))
    step = 0.1 / 0.032  # 3.125 frames
    on_grid = s[:-1] if s[-1] != round((len(s) - 1) * step) else s
    for k, start in enumerate(on_grid):
        assert abs(start - k * step) <= 0.5
    assert set(np.diff(s[: len(on_grid)]).tolist()) <= {3, 4}
    # every window start k*3.125 <= last is there (plus possibly the flush-with-end one)
    assert len(on_grid) == math.floor(last / step) + 1


def test_window_starts_adds_a_last_window_flush_with_the_end():
    total = 94 + 20  # last start = 20; with a 0.5 s stride (15.625 frames): 0, 16, then 20
    s = audio.window_starts(total, 0.5)
    assert s.tolist() == [0, 16, 20]
    assert audio.frames_to_seconds(16) == pytest.approx(0.512)
