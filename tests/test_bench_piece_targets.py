"""bench/bench_piece_targets.py's causal step readout and its per-piece labels."""

from __future__ import annotations

import numpy as np
import torch

from conftest import load_bench
from liser.data.audio import CLIP_FRAMES, HOP_S
from liser.student.model import Student

bench = load_bench("bench_piece_targets")


def test_causal_readout_takes_each_step_once_with_context_and_within_the_signal():
    torch.manual_seed(0)
    student = Student(n_classes=4, heads={"sd": 4}).eval()
    n_real = int(7.3 / HOP_S)
    frames = np.random.default_rng(0).normal(size=(n_real + 5, 64)).astype(np.float32)
    times, probs = bench.causal_step_probs(student, frames, n_real)
    assert np.all(np.diff(times) > 0) and times[-1] < n_real * HOP_S  # once each, in order, not in the padding
    assert times[-1] > n_real * HOP_S - 4 * 4 * HOP_S  # up to the end
    assert probs.shape == (len(times), 4) and np.allclose(probs.sum(1), 1, atol=1e-5)
    # a step after the first window comes from a window that started at least 3 s - STEP_HOP_S before it
    hop = round(bench.STEP_HOP_S / HOP_S)
    late = times[times > CLIP_FRAMES * HOP_S]
    starts = np.arange(0, n_real, hop) * HOP_S
    first_holding = np.array([starts[starts + CLIP_FRAMES * HOP_S > t][0] for t in late])
    assert np.all(late - first_holding >= 3.0 - bench.STEP_HOP_S - 1e-6)


def test_step_segments_label_each_piece_by_its_steps_mean():
    times = np.arange(0.05, 2.0, 0.128)
    probs = np.zeros((len(times), 2))
    probs[times < 1.0, 0] = 1
    probs[times >= 1.0, 1] = 1
    segs = bench.step_segments(times, probs, ["a", "b"], 0.5, 2.0)
    assert [s[2] for s in segs] == ["a", "a", "b", "b"] and segs[-1][1] == 2.0
