"""The front end ignores a DC offset: the same features, windows and labels with and without it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from liser.data import audio
from liser.data import frontend

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="module")
def waves() -> list[np.ndarray]:
    files = sorted((DATA / "ravdess" / "Actor_07").glob("*.flac"))[::12][:5]
    if len(files) < 5:
        pytest.skip("real RAVDESS data absent")
    return [audio.load_audio(f) for f in files]


def test_dc_offset_leaves_the_features_unchanged(waves):
    for w in waves:
        ref = frontend.features(w).astype(np.float32)
        for dc in (0.005, -0.02):
            shifted = frontend.features(w + dc).astype(np.float32)
            # float16 storage and float32 arithmetic: equal to within a few hundredths of a dB
            assert np.abs(shifted - ref).max() < 0.1, dc


def test_log_mel_removes_each_rows_mean(waves):
    w = waves[0][: audio.CLIP_SAMPLES]
    batch = np.stack([w, w + 0.01, w - 0.3])
    out = audio.log_mel(batch).numpy()
    np.testing.assert_allclose(out[1], out[0], atol=0.05)
    np.testing.assert_allclose(out[2], out[0], atol=0.05)
