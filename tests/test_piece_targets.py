"""piece_targets (the paper's open question 2): the student's distillation head learns the teacher's 0.5 s piece
under every LSTM step, not only the mean over the window, and then follows a change inside a window."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from liser.data.audio import HOP_S, PIECE_S
from liser.student.losses import distill_term, step_term
from liser.student.model import TIME_POOL, Student, step_times
from liser.teachers.store import StoreWriter

from conftest import fake_store, tess_pool  # noqa: E402

CLASSES = ["a", "b", "c"]


def _store(path, pieces: dict[str, np.ndarray], valid: dict[str, np.ndarray] | None = None):
    w = StoreWriter(path, "t", CLASSES, "h")
    for item, p in pieces.items():
        v = np.ones(len(p), bool) if valid is None else valid[item]
        w.add(item, p, v, len(p) * PIECE_S)
    return w.finalize(list(pieces))


def test_store_gives_the_piece_under_each_instant(tmp_path):
    onehot = np.eye(3, dtype=np.float32)
    st = _store(tmp_path / "s", {"x": onehot[[0, 1, 2, 0]]}, {"x": np.array([True, True, False, True])})
    p, v = st.at_times("x", np.array([0.0, 0.49, 0.5, 1.2, 1.75, 2.0, -0.1]))
    assert v.tolist() == [True, True, True, False, True, False, False]  # piece 2 has no speech; 2.0 s is past the end
    assert np.array_equal(p[v].argmax(1), [0, 0, 1, 0])
    assert not p[~v].any()


def test_step_times_follow_the_conv_pooling():
    t = step_times(23)  # a 3 s window: 94 frames, pooled by 4
    assert len(t) == 94 // TIME_POOL and t[0] == pytest.approx(1.5 * HOP_S)
    assert np.allclose(np.diff(t), TIME_POOL * HOP_S)


def test_step_term_is_the_mean_over_valid_steps_and_masks_items_without_any():
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(2, 5, 3, generator=g), torch.softmax(torch.randn(2, 5, 3, generator=g), -1)
    valid = torch.tensor([[True, False, True, True, False], [False] * 5])
    term, has = step_term(logits, target, valid, "ce")
    per_step = distill_term(logits[0], target[0], "ce")
    assert torch.allclose(term[0], per_step[valid[0]].mean()) and has.tolist() == [True, False]
    assert term[1] == 0


def test_pool_batch_step_targets_are_the_pieces_under_the_steps(tmp_path):
    """Each step's target is the store's piece at the step's time in the recording (the crop's offset added)."""
    from liser.student.train import Unlabeled, unlabeled_batch

    onehot = np.eye(3, dtype=np.float32)
    labels = np.arange(10) % 3  # 5 s, the class changing every piece
    st = _store(tmp_path / "s", {"x": onehot[labels]})
    frames = np.arange(5 / HOP_S, dtype=np.float32)[:, None].repeat(64, 1)  # a frame's value is its index
    pool = Unlabeled([frames], ["x"], {"sd": st})
    x, targets = unlabeled_batch(pool, np.zeros(8, int), np.random.default_rng(0), steps=True)
    _, _, pieces, valid = targets["sd"]
    assert pieces.shape == (8, 94 // TIME_POOL, 3) and valid.all()
    for k in range(8):
        start_s = float(x[k, 0, 0]) * HOP_S
        want = labels[np.floor((start_s + step_times(94 // TIME_POOL)) / PIECE_S).astype(int)]
        assert np.array_equal(pieces[k].numpy().argmax(1), want)
    x2, plain = unlabeled_batch(pool, np.zeros(8, int), np.random.default_rng(0))
    assert torch.equal(x, x2) and len(plain["sd"]) == 2  # off: the same crops, window targets only


def _two_part_crops(rng, n: int):
    """Synthetic log-Mel crops [n, 64, 94] whose first part is loud in the low Mel bands and whose second part
    (from a random frame) is loud in the high bands, and the class under each step: 0 before, 1 after."""
    x = rng.normal(0, 1, (n, 64, 94)).astype(np.float32)
    cut = rng.integers(20, 75, n)
    for k in range(n):
        x[k, :20, : cut[k]] += 6
        x[k, 44:, cut[k] :] += 6
    times = step_times(94 // TIME_POOL) / HOP_S  # frame of each step
    return x, (times[None, :] >= cut[:, None]).astype(int)


def test_a_student_with_step_targets_follows_a_change_inside_the_window():
    """What piece targets are for: trained on step targets only, the head's step outputs switch class where the
    input switches, on crops it never saw. A student that does not learn (or steps not reaching the loss) fails."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = Student(n_classes=3, heads={"sd": 3})
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        x, cls = _two_part_crops(rng, 16)
        _, _, steps = model.forward_steps(torch.from_numpy(x), ["sd"])
        target = torch.nn.functional.one_hot(torch.from_numpy(cls), 3).float()
        term, _ = step_term(steps["sd"], target, torch.ones(cls.shape, dtype=torch.bool), "ce")
        opt.zero_grad()
        term.mean().backward()
        opt.step()
    model.eval()
    x, cls = _two_part_crops(np.random.default_rng(1), 32)
    with torch.no_grad():
        pred = model.step_probs(torch.from_numpy(x), "sd").argmax(-1).numpy()
    assert (pred == cls).mean() > 0.85


def test_training_with_piece_targets_runs_the_step_term(small_config, small_ravdess, tmp_path, monkeypatch):
    """A real run with piece_targets: the sd term is the step term (logged, > 0), and the checkpoint still
    classifies (g_sup from the last step, as without it)."""
    from liser.student import losses
    from liser.inference.model import load
    from liser.student import train as tr

    m, manifest_dir = tess_pool(tmp_path, small_ravdess.work)
    fake_store(tmp_path / "store", m.items, small_ravdess.manifest.classes, np.random.default_rng(0))
    cfg = small_config.replace(unlabeled=(str(manifest_dir),), lambda_sd=1.0, epochs=1, batch_size=48,
                               unlabeled_batch=12, speech_store=str(tmp_path / "store"), piece_targets=True)
    calls, orig = [], losses.step_term
    monkeypatch.setattr(losses, "step_term", lambda *a, **kw: calls.append(a[0].shape) or orig(*a, **kw))
    run = tr.train(cfg, run_dir=tmp_path / "run", progress=False)
    assert calls and all(s[1:] == (23, 8) for s in calls)  # every step: the pool rows, 23 LSTM steps, 8 classes
    with open(run / "epochs.csv", newline="") as f:
        assert float(next(csv.DictReader(f))["sd"]) > 0
    wave = 0.05 * np.random.default_rng(0).standard_normal(48000).astype(np.float32)
    assert load(run).predict(wave, 16000).label in small_ravdess.manifest.classes


def test_piece_targets_without_a_teacher_is_one_clear_line(small_config):
    from liser.core.errors import LiserError

    with pytest.raises(LiserError, match="piece_targets needs a teacher"):
        small_config.replace(piece_targets=True, lambda_sd=0.0, lambda_vd=0.0).check_choices()
