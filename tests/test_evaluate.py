"""Metrics (UAR, WAR, confusion), the sliding-window file logits, the bootstrap, summaries."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from liser.core import metrics as M
from liser.student import evaluate as ev


# ---------------------------------------------------------------- metrics
def test_uar_differs_from_war_on_imbalanced_classes():
    y_true = [0, 0, 0, 0, 0, 0, 1, 1]
    y_pred = [0, 0, 0, 0, 0, 0, 0, 1]
    # recall(0) = 6/6, recall(1) = 1/2 -> UAR 0.75; accuracy 7/8
    assert M.uar(y_true, y_pred, 2) == pytest.approx(0.75)
    assert M.war(y_true, y_pred) == pytest.approx(0.875)


def test_confusion_rows_are_true_classes():
    cm = M.confusion([0, 0, 1, 2], [1, 1, 1, 0], 3)
    assert cm.tolist() == [[0, 2, 0], [0, 1, 0], [1, 0, 0]]
    assert cm[0, 1] == 2  # two items of true class 0 predicted as 1


def test_class_absent_from_y_true_is_ignored_by_uar():
    y_true = [0, 0, 1, 1]
    y_pred = [0, 2, 1, 1]  # class 2 is predicted but never true
    rec = M.recalls(M.confusion(y_true, y_pred, 3))
    assert rec[0] == 0.5 and rec[1] == 1.0 and math.isnan(rec[2])
    assert M.uar(y_true, y_pred, 3) == pytest.approx(0.75)  # mean of 0.5 and 1, not of 0.5, 1 and 0
    m = M.metrics(y_true, y_pred, ["a", "b", "c"])
    assert m["per_class_recall"] == {"a": 0.5, "b": 1.0, "c": None}
    assert m["uar"] == pytest.approx(0.75) and m["war"] == pytest.approx(0.75) and m["n"] == 4
    assert m["confusion"] == [[1, 0, 1], [0, 2, 0], [0, 0, 0]]
    json.dumps(m)  # plain types only


def test_war_of_nothing_is_nan():
    assert math.isnan(M.war([], []))


def test_bootstrap_ci_brackets_the_point_estimate():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 3, 90)
    y_pred = np.where(rng.random(90) < 0.6, y_true, rng.integers(0, 3, 90))
    u, w = M.uar(y_true, y_pred, 3), M.war(y_true, y_pred)
    ci = ev.bootstrap_ci(y_true, y_pred, 3, n=300, seed=1)
    assert ci["uar"][0] < u < ci["uar"][1]
    assert ci["war"][0] < w < ci["war"][1]
    assert ci["war"][1] - ci["war"][0] < 0.4  # a real interval, not [0, 1]
    assert ci == ev.bootstrap_ci(y_true, y_pred, 3, n=300, seed=1)


def _fold(rng, n: int, acc: float, k: int = 3):
    y = rng.integers(0, k, n)
    return y, np.where(rng.random(n) < acc, y, (y + 1) % k)


def test_fold_mean_ci_brackets_the_mean_of_folds_where_a_pooled_interval_does_not():
    """Leave one corpus out: one big hard fold (CREMA-D-like) and four small easy ones. The table reports the
    mean of the five folds' UARs; the pooled-file interval is dominated by the big fold and misses it."""
    rng = np.random.default_rng(0)
    folds = [_fold(rng, 3000, 0.3)] + [_fold(rng, 200, 0.8) for _ in range(4)]
    mean_u = np.mean([M.uar(t, p, 3) for t, p in folds])
    ci = ev.fold_mean_ci(folds, 3, n=200, seed=0)
    assert ci["uar"][0] < mean_u < ci["uar"][1]
    assert ci["uar"][1] - ci["uar"][0] < 0.1
    pooled = ev.bootstrap_ci(np.concatenate([t for t, _ in folds]), np.concatenate([p for _, p in folds]), 3, n=200)
    assert pooled["uar"][1] < mean_u  # the statistic beside it is outside the pooled interval
    assert ci == ev.fold_mean_ci(folds, 3, n=200, seed=0)


def test_fold_mean_ci_takes_the_seeds_mean_of_a_fold():
    """A fold with two seeds' predictions of the same files counts the mean of their UARs."""
    rng = np.random.default_rng(1)
    y, good = _fold(rng, 400, 0.9)
    bad = np.where(rng.random(400) < 0.5, y, (y + 2) % 3)
    ci = ev.fold_mean_ci([(y, np.stack([good, bad]))], 3, n=200)
    mean_u = (M.uar(y, good, 3) + M.uar(y, bad, 3)) / 2
    assert ci["uar"][0] < mean_u < ci["uar"][1]
    assert ci["uar"][1] < M.uar(y, good, 3)


def test_perfect_predictions_have_a_degenerate_interval():
    y = [0, 1, 2, 0, 1, 2]
    ci = ev.bootstrap_ci(y, y, 3, n=50)
    assert ci == {"uar": [1.0, 1.0], "war": [1.0, 1.0]}


# ---------------------------------------------------------------- file logits
class Stub(nn.Module):
    """classify(x [B, 64, 94]) = [mean of the window, value at (band 0, frame 0), value at (band 5, last frame)]."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def classify(self, x):
        self.calls += 1
        assert x.shape[1:] == (64, 94) and x.dtype == torch.float32
        return torch.stack([x.mean(dim=(1, 2)), x[:, 0, 0], x[:, 5, -1]], dim=1)


def _frames(n: int) -> np.ndarray:
    """[n, 64] features whose value is frame index + band / 100."""
    return (np.arange(n)[:, None] + np.arange(64)[None, :] / 100).astype(np.float16)


def test_file_logits_average_window_logits():
    band_mean = np.arange(64).mean() / 100  # 0.315
    # item 0: 94 frames, one window starting at 0
    # item 1: 200 frames, stride 0.32 s = 10 frames: starts 0, 10, ..., 100 and the flush-with-end 106
    starts1 = list(range(0, 101, 10)) + [106]
    model = Stub().train()
    out = ev.file_logits(model, [_frames(94), _frames(200)], stride_s=0.32, batch=5)
    assert out.shape == (2, 3) and out.dtype == np.float32
    exp0 = [46.5 + band_mean, 0.0, 93.05]
    exp1 = [np.mean([s + 46.5 for s in starts1]) + band_mean, np.mean(starts1), np.mean([s + 93.05 for s in starts1])]
    np.testing.assert_allclose(out[0], exp0, atol=0.05)  # float16 features
    np.testing.assert_allclose(out[1], exp1, atol=0.05)
    assert model.calls == math.ceil((1 + len(starts1)) / 5)  # windows of all items are batched together
    assert model.training  # the mode is restored


def test_windows_of_orientation():
    w = ev.windows_of(_frames(100), stride_s=0.32)  # last start 6: starts 0, 6
    assert w.shape == (2, 64, 94)
    assert w[1, 0, 0] == 6.0 and w[1, 3, 93] == pytest.approx(99.03, abs=0.05)


class _Cache:
    def __init__(self, d):
        self.d = d

    def frames(self, i):
        return self.d[i]


class _It:
    def __init__(self, id, label):
        self.id, self.label = id, label


def test_evaluate_items_predicts_the_argmax_of_mean_logits():
    # classes a, b, c: logits [mean, first, last-frame]; item "x" (94 frames): [46.8, 0, 93.05] -> c
    cache = _Cache({"x": _frames(94), "y": np.full((94, 64), -5.0, np.float16)})  # y: [-5, -5, -5] -> a (first)
    m, logits = ev.evaluate_items(Stub(), cache, [_It("x", "c"), _It("y", "b")], ["a", "b", "c"], stride_s=0.5)
    assert logits.argmax(1).tolist() == [2, 0]
    assert m["confusion"] == [[0, 0, 0], [1, 0, 0], [0, 0, 1]]
    assert m["uar"] == pytest.approx(0.5) and m["war"] == pytest.approx(0.5)


# ---------------------------------------------------------------- plots and summaries
def test_plot_confusion_writes_a_png(tmp_path):
    ev.plot_confusion([[3, 1], [0, 4]], ["a", "b"], tmp_path / "cm.png", "title")
    assert (tmp_path / "cm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*"))  # no temporary left behind


def test_summarize(tmp_path):
    runs = []
    for i, (u, w) in enumerate([(0.5, 0.6), (0.7, 0.8)]):
        d = tmp_path / f"fold{i}"
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps({"test": {"uar": u, "war": w}}))
        runs.append(d)
    (tmp_path / "fold2").mkdir()  # unfinished: ignored
    s = ev.summarize(runs + [tmp_path / "fold2"])
    assert s["folds"] == 2
    assert s["uar_mean"] == pytest.approx(0.6) and s["uar_std"] == pytest.approx(0.1)
    assert s["war_mean"] == pytest.approx(0.7) and s["war_std"] == pytest.approx(0.1)
    assert ev.summarize([tmp_path / "fold2"]) == {"folds": 0}
