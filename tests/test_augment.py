"""Augmentations of log-Mel crops (seeded, shape-keeping) and the student's level normalisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from liser.data.augment import AugmentOptions, add_noise, augment_batch, gain, spec_augment

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    """Four real 3 s log-Mel crops of RAVDESS files: [4, 64, 94] dB."""
    from liser.data.audio import CLIP_FRAMES, load_audio, log_mel

    files = sorted((DATA / "ravdess" / "Actor_05").glob("*.flac"))[::15][:4]
    if len(files) < 4:
        pytest.skip("real RAVDESS data absent")
    return np.stack([np.asarray(log_mel(load_audio(f)))[:, :CLIP_FRAMES] for f in files]).astype(np.float32)


def test_augment_is_seeded_and_keeps_shape(crops):
    opts = AugmentOptions(gain_db=6, noise_p=0.5, freq_masks=2, time_masks=2)
    a = augment_batch(crops, opts, np.random.default_rng(3))
    b = augment_batch(crops, opts, np.random.default_rng(3))
    c = augment_batch(crops, opts, np.random.default_rng(4))
    assert a.shape == crops.shape and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.isfinite(a).all()
    np.testing.assert_array_equal(augment_batch(crops, AugmentOptions(), np.random.default_rng(0)), crops)
    with pytest.raises(ValueError, match="expected crops"):
        augment_batch(crops[0], opts, np.random.default_rng(0))


def test_gain_shifts_each_crop_by_one_constant(crops):
    g = gain(crops, 6.0, np.random.default_rng(0))
    shift = (g - crops).reshape(len(crops), -1)
    assert np.allclose(shift, shift[:, :1], atol=1e-4)
    assert (np.abs(shift[:, 0]) <= 6.0).all() and np.ptp(shift[:, 0]) > 0


def test_noise_at_its_snr_raises_quiet_cells_more_than_loud_ones(crops):
    noisy = add_noise(crops, 1.0, (10.0, 10.0), np.random.default_rng(0))
    assert (noisy >= crops - 1e-3).all()  # noise adds power, never removes it
    d = noisy - crops
    quiet = crops < np.percentile(crops, 20)
    loud = crops > np.percentile(crops, 80)
    assert d[quiet].mean() > 5 * d[loud].mean()
    untouched = add_noise(crops, 0.0, (10.0, 10.0), np.random.default_rng(0))
    np.testing.assert_array_equal(untouched, crops)


def test_spec_augment_masks_stripes_with_the_crop_mean(crops):
    out = spec_augment(crops, 2, 8, 2, 10, np.random.default_rng(1))
    for i in range(len(crops)):
        changed = out[i] != crops[i]
        # every changed cell lies on a fully masked row or column, set to the crop's mean
        assert np.allclose(out[i][changed], crops[i].mean(), atol=1e-3)
        full_rows = np.isclose(out[i], crops[i].mean(), atol=1e-3).all(1)
        full_cols = np.isclose(out[i], crops[i].mean(), atol=1e-3).all(0)
        assert (changed <= (full_rows[:, None] | full_cols[None, :])).all()
        assert full_rows.sum() <= 16 and full_cols.sum() <= 20  # 2 masks of at most 8 bands / 10 frames
        assert changed.any()


def test_level_norm_student_ignores_the_recording_level(crops):
    import torch

    from liser.student.model import Student

    torch.manual_seed(0)
    m = Student(8, 7, level_norm=True).eval()
    x = torch.from_numpy(crops)
    with torch.no_grad():
        ref = m.classify(x)
        for db in (-12.0, -6.0, 6.0):  # x0.25, x0.5, x2 in amplitude
            torch.testing.assert_close(m.classify(x + db), ref, atol=1e-4, rtol=1e-4)
    plain = Student(8, 7).eval()
    plain.load_state_dict({k: v for k, v in m.state_dict().items() if k != "level_norm"})  # old checkpoint
    assert float(plain.level_norm) == 0.0
    with torch.no_grad():
        assert not torch.allclose(plain.classify(x + 6.0), plain.classify(x), atol=1e-3)


def test_band_limit_draws_a_phone_band_closer_to_a_real_one():
    """On a real clip, the log-Mel band-limited crop is nearer to the clip sent through the phone band
    (liser.data.augment_audio.telephone) than the clean crop is, in the bands the phone line cuts; p = 0 changes
    nothing, and the speech band is left as it is."""
    from liser.data import audio
    from liser.data import augment_audio as A
    from liser.data.augment import BAND_CUT, band_limit
    from liser.inference.decode import features

    from conftest import real_root

    x = audio.load_audio(real_root("ravdess") / "Actor_03" / "03-01-05-02-01-01-03.flac")
    clean, phone = features(x).T[None], features(A.telephone(x)).T[None]  # [1, 64, T]
    rng = np.random.default_rng(0)
    assert np.array_equal(band_limit(clean, 0.0, rng), clean)
    drawn = band_limit(np.repeat(clean, 8, axis=0), 1.0, rng)
    high = slice(BAND_CUT[1], None)
    assert np.abs(drawn[:, high] - phone[:, high]).mean() < 0.5 * np.abs(clean[:, high] - phone[:, high]).mean()
    np.testing.assert_array_equal(drawn[:, 8:BAND_CUT[0]], np.repeat(clean, 8, axis=0)[:, 8:BAND_CUT[0]])
    assert drawn.min() >= -100.0


def test_equalise_adds_one_smooth_bounded_curve_per_crop(crops):
    """aug_eq_db: each crop gets a gain per Mel band, the same in every frame, within +-range/2 dB, smooth over
    the bands (a straight line between 5 knots), different for each crop, seeded."""
    from liser.data.augment import equalise

    out = equalise(crops, 6.0, np.random.default_rng(0))
    assert out.shape == crops.shape and out.dtype == np.float32
    d = out - crops
    np.testing.assert_allclose(d, d[:, :, :1].repeat(d.shape[2], axis=2), atol=1e-4)  # one gain per band
    curve = d[:, :, 0]
    assert np.abs(curve).max() <= 3.0 + 1e-4 and np.abs(curve).max() > 1.0
    assert np.abs(np.diff(curve, axis=1)).max() < 6.0 / 15  # no step larger than a knot's span allows
    assert not np.allclose(curve[0], curve[1])
    np.testing.assert_array_equal(equalise(crops, 6.0, np.random.default_rng(0)), out)
