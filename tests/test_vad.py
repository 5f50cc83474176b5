"""Voice activity masks: speech pieces of real recordings, music-like and silent audio marked missing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("silero_vad")

from liser.data.audio import load_audio  # noqa: E402
from liser.data.vad import speech_pieces, speech_samples  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    f = DATA / "ravdess" / "Actor_01" / "03-01-05-02-01-01-01.flac"
    if not f.is_file():
        pytest.skip(f"{f}: real RAVDESS data absent")
    return load_audio(f)


def test_speech_pieces_follow_the_voice(speech):
    n = int(np.ceil(len(speech) / 8000))
    mask = speech_pieces(speech, n)
    assert mask.shape == (n,) and mask.dtype == bool
    assert 0 < mask.sum() < n  # RAVDESS clips: silence before and after the sentence
    # the sentence is one stretch: speech pieces are contiguous, the first piece (leading silence) is not speech
    idx = np.flatnonzero(mask)
    assert not mask[0] and idx[-1] - idx[0] + 1 - len(idx) <= 1


def test_silence_tone_and_noise_are_not_speech(speech):
    rng = np.random.default_rng(0)
    t = np.arange(3 * 16000) / 16000
    for wave in (np.zeros(48000, np.float32), (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32),
                 (0.05 * rng.standard_normal(48000)).astype(np.float32)):
        assert not speech_pieces(wave, 6).any()
    # speech after 3 s of silence: pieces shift with it
    padded = np.concatenate([np.zeros(48000, np.float32), speech])
    n = int(np.ceil(len(padded) / 8000))
    m = speech_pieces(padded, n)
    assert not m[:6].any() and m[6:].any()
    alone = speech_pieces(speech, n - 6)  # the same sentence found (silero's context may widen its edges)
    assert (m[6:] & alone).sum() >= 0.6 * (m[6:] | alone).sum()


def test_speech_samples_and_pieces_past_the_end(speech):
    covered = speech_samples(speech)
    assert covered.shape == speech.shape and covered.any()
    n = int(np.ceil(len(speech) / 8000))
    assert not speech_pieces(speech, n + 3)[n:].any()
