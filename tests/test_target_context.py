"""target_context_s: a pool crop learns the teacher's answer for the recording around it, not only for the
0.5 s pieces inside it (a crop of an utterance gets the utterance's target, as a labeled crop gets its label)."""

from __future__ import annotations

import numpy as np
import pytest

from liser.data.audio import HOP_S, PIECE_S
from liser.teachers.store import StoreWriter

CLASSES = ["a", "b", "c"]


def _store(path, pieces: dict[str, np.ndarray]):
    w = StoreWriter(path, "t", CLASSES, "h")
    for item, p in pieces.items():
        w.add(item, p, np.ones(len(p), bool), len(p) * PIECE_S)
    return w.finalize(list(pieces))


def test_context_is_centred_on_the_crop_and_stays_inside_the_recording(tmp_path):
    st = _store(tmp_path / "s", {"short": np.eye(3, dtype=np.float32)[[0] * 5],
                                 "long": np.eye(3, dtype=np.float32)[[0] * 40]})  # 2.5 s and 20 s
    assert st.context("short", 1.0, 0.5, 6.0) == (0.0, 2.5)  # shorter than the context: the whole utterance
    assert st.context("long", 10.0, 1.0, 4.0) == (8.5, 4.0)  # centred on the crop
    assert st.context("long", 0.2, 1.0, 4.0) == (0.0, 4.0)  # pushed inside at the start
    assert st.context("long", 19.0, 1.0, 4.0) == (16.0, 4.0)  # and at the end
    assert st.context("long", 3.0, 2.0, 1.0) == (3.0, 2.0)  # a context shorter than the crop: the crop itself


def test_pool_targets_with_context_are_the_utterance_s_whatever_the_crop(tmp_path):
    """A 2.5 s utterance whose pieces say a, a, b, c, c: short crops get the piece under them without a context,
    the utterance's mean with one. Without the context reaching the targets, the crops' targets differ."""
    from liser.student.train import Unlabeled, unlabeled_batch

    pieces = np.eye(3, dtype=np.float32)[[0, 0, 1, 2, 2]]
    st = _store(tmp_path / "s", {"u": pieces})
    frames = np.zeros((int(2.5 / HOP_S), 64), np.float32)
    pool = Unlabeled([frames], ["u"], {"sd": st})
    length = int(0.5 / HOP_S)
    _, local = unlabeled_batch(pool, np.zeros(16, int), np.random.default_rng(0), length)
    _, whole = unlabeled_batch(pool, np.zeros(16, int), np.random.default_rng(0), length, context_s=6.0)
    assert len({tuple(t) for t in local["sd"][0].numpy().round(3)}) > 1  # position decides without a context
    assert np.allclose(whole["sd"][0].numpy(), pieces.mean(0), atol=1e-3) and whole["sd"][1].all()


def test_a_negative_context_is_one_clear_line(small_config):
    from liser.core.errors import LiserError

    with pytest.raises(LiserError, match="target_context_s must be 0"):
        small_config.replace(target_context_s=-1.0).check_choices()


def test_alignment_evens_out_each_source_s_prior_on_its_own(tmp_path):
    """target_prior uniform: a source whose teacher labels lean to class a gets its targets pulled towards an
    equal share; a source whose labels are balanced keeps them (factors of 1), whatever the other source does."""
    from liser.student.train import Unlabeled, prior_factors, unlabeled_batch

    eye = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]], np.float32)
    items = {"a1": eye[[0] * 4], "a2": eye[[0] * 4], "a3": eye[[0] * 4], "a4": eye[[1] * 4],  # leaning to a
             "b1": eye[[0] * 4], "b2": eye[[1] * 4], "b3": eye[[2] * 4]}  # balanced
    st = _store(tmp_path / "s", items)
    ids, source = list(items), np.array([0, 0, 0, 0, 1, 1, 1])
    f = prior_factors(st, ids, source)
    assert np.allclose(f[4:], 1.0, atol=1e-3) and f[0, 0] < 1 < f[0, 2]
    frames = [np.zeros((int(2.0 / HOP_S), 64), np.float32)] * len(ids)
    plain = Unlabeled(frames, ids, {"sd": st})
    aligned = Unlabeled(frames, ids, {"sd": st}, align={"sd": f})
    idx = np.arange(4)
    _, t0 = unlabeled_batch(plain, idx, np.random.default_rng(0), context_s=6.0)
    _, t1 = unlabeled_batch(aligned, idx, np.random.default_rng(0), context_s=6.0)
    before, after = t0["sd"][0].numpy().mean(0), t1["sd"][0].numpy().mean(0)
    assert np.abs(after - 1 / 3).sum() < 0.5 * np.abs(before - 1 / 3).sum()
    assert np.allclose(t1["sd"][0].numpy().sum(1), 1.0, atol=1e-5)


def test_a_run_passes_its_context_and_alignment_to_the_pool(small_config, small_ravdess, tmp_path, monkeypatch):
    """The config reaches the pool batches: every pool batch of a real run gets the run's context, and its pool
    the alignment factors of the speech store (one row of 8 per pool item)."""
    from conftest import fake_store, tess_pool
    from liser.student import train as tr

    m, manifest_dir = tess_pool(tmp_path, small_ravdess.work)
    fake_store(tmp_path / "store", m.items, small_ravdess.manifest.classes, np.random.default_rng(0))
    cfg = small_config.replace(unlabeled=(str(manifest_dir),), lambda_sd=1.0, epochs=1, batch_size=48,
                               unlabeled_batch=12, speech_store=str(tmp_path / "store"), target_context_s=6.0,
                               target_prior="uniform")
    seen, orig = [], tr.unlabeled_batch
    monkeypatch.setattr(tr, "unlabeled_batch", lambda pool, *a: seen.append((a[4], pool.align)) or orig(pool, *a))
    tr.train(cfg, run_dir=tmp_path / "run", progress=False)
    assert seen and all(c == 6.0 for c, _ in seen)
    assert seen[0][1]["sd"].shape == (len(m.items), 8)


def test_pool_crops_inside_the_speech_span_of_a_real_clip(tmp_path):
    """pool_crops speech: 0.5 s pool crops of a real RAVDESS clip (about 1 s of silence, speech, silence) all lie
    inside its speech span, and their targets are the pieces there; crops anywhere also fall in the silence."""
    from conftest import real_root
    from liser.data import audio
    from liser.data.frontend import features_numpy
    from liser.data.windowing import speech_span
    from liser.student.train import Unlabeled, pool_spans, unlabeled_batch

    x = audio.load_audio(real_root("ravdess") / "Actor_01/03-01-05-01-01-01-01.flac")
    frames = features_numpy(x).astype(np.float32)
    a, b = speech_span(frames)
    n = int(np.ceil(len(x) / audio.SAMPLE_RATE / PIECE_S))
    st = _store(tmp_path / "s", {"u": np.full((n, 3), 1 / 3, np.float32)})
    length = int(0.5 / HOP_S)
    starts = {}
    for name, spans in (("speech", pool_spans([frames])), ("any", [])):
        pool = Unlabeled([frames], ["u"], {"sd": st}, spans=spans)
        x_, _ = unlabeled_batch(pool, np.zeros(64, int), np.random.default_rng(0), length)
        starts[name] = [int(np.flatnonzero((frames[:, 0] == c[0, 0]) & (frames[:, 1] == c[1, 0]))[0]) for c in x_.numpy()]
    assert pool_spans([frames])[0][0] == (a, b)
    assert all(a <= s and s + length <= b for s in starts["speech"])
    assert any(s + length <= a or s >= b for s in starts["any"])  # without it: crops of silence alone


def test_adapt_passes_its_context_and_speech_crops_to_the_pool(tmp_path, monkeypatch):
    """liser adapt's options reach the pool batches: the context on every batch, and for a "speech" student the
    pool's speech spans (crops inside them); without them neither."""
    import torch

    from liser.student import train as tr
    from liser.student.adapt import AdaptOptions, adapt_student
    from liser.student.model import Student

    rng = np.random.default_rng(0)
    items = {f"u{k}": rng.dirichlet(np.ones(3), size=6).astype(np.float32) for k in range(4)}
    st = _store(tmp_path / "s", items)
    frames = [rng.normal(-40, 10, (int(3.0 / HOP_S), 64)).astype(np.float32) for _ in items]
    pool = tr.Unlabeled(frames, list(items), {"teacher": st})
    seen, orig = [], tr.unlabeled_batch
    monkeypatch.setattr(tr, "unlabeled_batch", lambda p, *a, **kw: seen.append((kw.get("context_s"), len(p.spans)))
                        or orig(p, *a, **kw))
    torch.manual_seed(0)
    check = (frames[:2], np.array([0, 1]))
    adapt_student(Student(n_classes=3), pool, check, "speech", AdaptOptions(epochs=1, context_s=6.0, speech_crops=True),
                  say=lambda m: None)
    assert seen and all(c == 6.0 and n == len(items) for c, n in seen)
    seen.clear()
    adapt_student(Student(n_classes=3), pool, check, "speech", AdaptOptions(epochs=1), say=lambda m: None)
    assert seen and all(c == 0.0 and n == 0 for c, n in seen)
