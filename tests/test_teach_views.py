"""teach_views (issue 24 section 1): the teacher labels what the student hears.

The speech teacher's soft labels on K waveform views of every pool item, kept
piece for piece in the store (format 2), and a student that draws per pool
item its clean audio or a view with the labels for that view.
"""

from __future__ import annotations

import csv
from dataclasses import replace

import numpy as np
import pytest

from conftest import fake_store, ravdess_sample, tess_pool
from liser.core.errors import LiserError
from liser.data.views import ViewSpec, teaching_views
from liser.teachers.store import SoftLabelStore, StoreWriter, n_pieces, store_complete

CLASSES = ["neutral", "happy", "sad"]


def test_store_keeps_each_views_labels_piece_for_piece(tmp_path):
    """A format-2 store gives each view's own window mean; it refuses to be resumed with other views, and
    store_complete tells a store of other views from a finished one."""
    w = StoreWriter(tmp_path / "s", "t", CLASSES, "h", views=2, views_key="-views1-s0-t0", flush_every=1)
    clean = np.tile([1.0, 0.0, 0.0], (6, 1))  # 3 s: 6 pieces
    on_views = np.stack([np.tile([0.0, 1.0, 0.0], (6, 1)), np.tile([0.0, 0.0, 1.0], (6, 1))])
    w.add("a", clean, np.ones(6, bool), 3.0, on_views)
    with pytest.raises(ValueError, match="views"):
        w.add("b", clean, np.ones(6, bool), 3.0)  # a store of views needs every item's views
    st = w.finalize(["a"])
    assert st.views == 2 and st.meta["format"] == 2
    for v, want in enumerate([[1, 0, 0], [0, 1, 0], [0, 0, 1]]):
        p, n = st.window("a", 0.0, 3.0, view=v)
        assert n == 6 and p.tolist() == want
    with pytest.raises(IndexError):
        st.window("a", 0.0, 3.0, view=3)
    with pytest.raises(LiserError, match="other views"):
        StoreWriter(tmp_path / "s", "t", CLASSES, "h")  # the same teacher without views: another store
    assert store_complete(tmp_path / "s", ["a"], "h", 2, "-views1-s0-t0")
    assert not store_complete(tmp_path / "s", ["a"], "h")
    assert not store_complete(tmp_path / "s", ["a"], "h", 2, "-views1-s1-t0")


def test_views_for_teaching_keep_the_pieces_in_place():
    """timing False: a view has its recording's length (so its pieces are the recording's), is seeded, and
    mostly changes the recording (about 1 chain in 6 draws none of reverb, noise or a channel)."""
    from liser.data.audio import load_audio

    m = ravdess_sample(1)
    x = load_audio(m.abspath(m.items[0]))
    spec = ViewSpec(4, seed=0, timing=False)
    ys = [spec.wave(x, v, m.items[0].id, None) for v in range(1, 5)]
    assert all(len(y) == len(x) for y in ys)
    assert np.array_equal(ys[0], spec.wave(x, 1, m.items[0].id, None))
    assert sum(not np.allclose(y, x, atol=1e-4) for y in ys) >= 2
    assert spec.tag(None).endswith("-t0") and ViewSpec(4).tag(None) != spec.tag(None)


@pytest.fixture(scope="module")
def frozen_teacher(tiny_hubert, tmp_path_factory):
    from liser.teachers.speech.teacher import SpeechTeacherConfig, fit_speech_teacher

    m = ravdess_sample(3)
    base = tmp_path_factory.mktemp("teach-views")
    cfg = SpeechTeacherConfig(backbone=tiny_hubert, mode="frozen", epochs=1, batch_size=8, seed=1,
                              cache_dir=str(base / "cache"), vad=False)
    return fit_speech_teacher(m, [it.id for it in m.items], base / "teacher", cfg).teacher, m, base


def test_teacher_labels_each_view_as_it_would_the_waveform(frozen_teacher, tmp_path):
    """The store's view labels are the teacher's predictions on the view's waveform; a second fold's labeling
    encodes no view again (the views' features are cached); views that move speech are refused."""
    from liser.data.audio import load_audio
    from liser.teachers.speech.label import label_with_speech_teacher

    teacher, m, base = frozen_teacher
    pool = replace(m, items=[replace(it, label="") for it in m.items[:3]])
    spec = ViewSpec(2, seed=0, timing=False)
    store = label_with_speech_teacher(teacher, pool, tmp_path / "s", progress=False, views=spec)
    assert store.views == 2 and store.views_key == spec.tag(None)
    it = pool.items[1]
    x = load_audio(pool.abspath(it))
    for v in (1, 2):
        want = teacher.predict_pieces(spec.wave(x, v, it.id, None))
        got = np.asarray(store.view_probs[v - 1][store.index[it.id].row:][: len(want)], np.float32)
        np.testing.assert_allclose(got, want, atol=2e-3)
    assert not np.allclose(np.asarray(store.view_probs[0], np.float32), np.asarray(store.probs, np.float32), atol=1e-3)
    cached = sorted((base / "cache").rglob("*.npy"))
    label_with_speech_teacher(teacher, pool, tmp_path / "s2", progress=False, views=spec)
    assert sorted((base / "cache").rglob("*.npy")) == cached
    with pytest.raises(LiserError, match="in place"):
        label_with_speech_teacher(teacher, pool, tmp_path / "s3", progress=False, views=ViewSpec(2))


def test_pool_batch_targets_follow_the_drawn_view(tmp_path):
    """Each pool crop's target is the store's label on the audio that crop came from: clean or its view."""
    from liser.student.train import Unlabeled, unlabeled_batch

    w = StoreWriter(tmp_path / "s", "t", CLASSES, "h", views=2, views_key="k")
    onehot = np.eye(3, dtype=np.float32)
    w.add("a", np.tile(onehot[0], (8, 1)), np.ones(8, bool), 4.0, np.stack([np.tile(onehot[1], (8, 1)),
                                                                           np.tile(onehot[2], (8, 1))]))
    st = w.finalize(["a"])
    frames = [np.full((125, 64), float(v), np.float32) for v in range(3)]  # 4 s; the value says which audio
    pool = Unlabeled(frames[:1], ["a"], {"sd": st}, views=[frames[1:2], frames[2:3]])
    x, targets = unlabeled_batch(pool, np.zeros(60, int), np.random.default_rng(0))
    drawn = x[:, 0, 0].numpy().astype(int)
    assert set(drawn) == {0, 1, 2}  # clean and both views drawn
    t, mask = targets["sd"]
    assert mask.all() and np.array_equal(t.numpy(), onehot[drawn])


@pytest.fixture(scope="module")
def view_pool(small_ravdess, tmp_path_factory):
    """6 real TESS files as an unlabeled pool, with their features."""
    base = tmp_path_factory.mktemp("view-pool")
    m, manifest_dir = tess_pool(base, small_ravdess.work)
    return m, manifest_dir, base


def test_student_distils_on_teacher_views_and_refuses_a_store_without_them(small_config, small_ravdess, view_pool):
    """teach_views 2 trains on a store with the teacher's labels on those views; a store of the clean audio
    only, or one of other views (another seed), is one clear line before any step."""
    from liser.student import train as tr

    m, manifest_dir, base = view_pool
    cfg = small_config.replace(unlabeled=(str(manifest_dir),), lambda_sd=1.0, batch_size=48, unlabeled_batch=12,
                               epochs=1, teach_views=2)
    classes, rng = small_ravdess.manifest.classes, np.random.default_rng(0)
    fake_store(base / "views", m.items, classes, rng, views=2, views_key=teaching_views(cfg).tag(None))
    fake_store(base / "clean", m.items, classes, rng)
    run = tr.train(cfg.replace(name="views", speech_store=str(base / "views")), run_dir=base / "run", progress=False)
    assert (run / "best.pt").is_file()
    with pytest.raises(LiserError, match="clean audio only"):
        tr.train(cfg.replace(name="c", speech_store=str(base / "clean")), run_dir=base / "c", progress=False)
    with pytest.raises(LiserError, match="views made another way"):
        tr.train(cfg.replace(name="s", speech_store=str(base / "views"), seed=1), run_dir=base / "s", progress=False)
    with pytest.raises(LiserError, match="2 views, teach_views 3 needs 3"):
        tr.train(cfg.replace(name="k", speech_store=str(base / "views"), teach_views=3), run_dir=base / "k",
                 progress=False)
    with pytest.raises(LiserError, match="liser teacher label speech CONFIG"):
        tr.train(cfg.replace(name="m", speech_store=str(base / "missing")), run_dir=base / "m", progress=False)
    assert len(SoftLabelStore(base / "views").pieces(m.items[0].id)[0]) == n_pieces(m.items[0].duration)


def test_labeled_training_items_join_the_pool_for_their_teacher_labels(small_config, small_ravdess, tmp_path):
    """pool_labeled: the fold's training items, labels blanked, are the pool the teacher labels and the student
    distils on (besides learning their labels); no validation or test speaker is among them."""
    from liser.data import workspace as ws
    from liser.student import train as tr

    cfg = small_config.replace(pool_labeled=True, lambda_sd=1.0, epochs=1, batch_size=48, unlabeled_batch=12,
                               speech_store=str(tmp_path / "store"))
    train, val, test, _ = ws.fold_items(cfg, ws.labeled_manifest(cfg))
    pool = ws.fold_pool(cfg, cfg.fold)
    assert {it.id for it in pool.items} == {it.id for it in train} and all(it.label == "" for it in pool.items)
    assert not {it.speaker for it in pool.items} & {it.speaker for it in val + test}
    fake_store(tmp_path / "store", pool.items, small_ravdess.manifest.classes, np.random.default_rng(0))
    data = tr.load_data(cfg, progress=False)
    assert sorted(data.pool.ids) == sorted(it.id for it in train)
    run = tr.train(cfg, run_dir=tmp_path / "run", progress=False)
    with open(run / "epochs.csv", newline="") as f:
        assert float(next(csv.DictReader(f))["sd"]) > 0  # the distillation term ran on them
    with pytest.raises(LiserError, match="unlabeled"):
        ws.fold_pool(cfg.replace(pool_labeled=False), cfg.fold)  # neither a pool nor labeled items: said


def test_views_seed_keeps_the_views_when_the_training_seed_changes(small_config):
    """views_seed: a second training seed reads the first seed's views (training and teaching), so its stores
    and features caches are the ones already made; without it the views follow the seed."""
    from liser.data.views import training_views

    cfg = replace(small_config, aug_views=3, teach_views=2)
    other = replace(cfg, seed=cfg.seed + 1)
    pinned = replace(other, views_seed=cfg.seed)
    for views in (training_views, teaching_views):
        assert views(pinned).tag(None) == views(cfg).tag(None)
        assert views(other).tag(None) != views(cfg).tag(None)
