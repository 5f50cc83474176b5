"""Timelines with windows shorter than 3 s (`--window`, EmotionModel.timeline(window_s=...)): issue 27's answer
to open question 2 exposed (docs/results/timeline.md)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

import liser
from liser.core.errors import LiserError
from liser.data import audio

from conftest import _real


@pytest.fixture(scope="module")
def model():
    return liser.load(threads=1)


@pytest.fixture(scope="module")
def speech():
    """About 6 s of real, continuous read speech: four EmoDB sentences of speaker 11 joined, their silences cut."""
    from liser.data.vad import speech_samples

    parts = []
    for f in sorted((_real("emodb") / "wav").glob("11a0*.flac"))[:4]:
        x, sr = sf.read(f, dtype="float32")
        assert sr == audio.SAMPLE_RATE
        on = np.flatnonzero(speech_samples(x))
        parts.append(x[on[0] : on[-1] + 1])
    return np.concatenate(parts)


def test_three_seconds_is_the_timeline_as_before(model, speech):
    a = model.timeline(speech, audio.SAMPLE_RATE, 0.5)
    b = model.timeline(speech, audio.SAMPLE_RATE, 0.5, window_s=3.0)
    assert [(w.start, w.end, w.label) for w in a] == [(w.start, w.end, w.label) for w in b]


@pytest.mark.parametrize("window_s", [1.0, 1.5, 2.0])
def test_short_windows_cover_the_recording_and_label_its_speech(model, speech, window_s):
    """Each window is window_s long, they run to the recording's end (not into padding), and in continuous speech
    the detector, reading the 3 s around each window, labels nearly every one (alone, a 1 s window of speech
    has no pause to set its noise floor from: here 9 of 22 1 s windows were refused as no speech)."""
    duration = len(speech) / audio.SAMPLE_RATE
    t = model.timeline(speech, audio.SAMPLE_RATE, 0.25, window_s=window_s)
    assert all(abs((w.end - w.start) - window_s) < 0.05 for w in t[:-1])
    assert t[-1].end == pytest.approx(duration, abs=1e-6) and t[-1].start < duration
    assert len(t) >= int((duration - window_s) / 0.25)
    labeled = [w for w in t if w.label is not None]
    assert len(labeled) == len(t)
    assert all(w.label in model.classes for w in labeled)


def test_windows_of_silence_get_no_label(model, speech):
    quiet = np.concatenate([speech[: 2 * audio.SAMPLE_RATE], np.zeros(3 * audio.SAMPLE_RATE, np.float32)])
    t = model.timeline(quiet, audio.SAMPLE_RATE, 0.5, window_s=1.0)
    assert any(w.label is None for w in t if w.start >= 2.5) and t[0].label is not None


def test_bad_windows_are_one_line(model, speech, tmp_path, capsys):
    from liser.cli import main

    with pytest.raises(LiserError, match="1-3 s"):
        model.timeline(speech, audio.SAMPLE_RATE, 0.5, window_s=0.5)
    f = tmp_path / "s.wav"
    sf.write(f, speech, audio.SAMPLE_RATE)
    assert main(["predict", str(f), "--timeline", "--window", "4"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("liser: timeline window must be 1-3 s")
    assert main(["predict", str(f), "--window", "1.5"]) == 2  # without --timeline it would do nothing: said
    assert "add --timeline" in capsys.readouterr().err
    assert main(["predict", str(f), "--timeline", "--window", "1.5"]) == 0
    rows = [r for r in capsys.readouterr().out.splitlines() if "-" in r.split("\t")[1]]
    assert len(rows) >= 8
