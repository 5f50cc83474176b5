"""The soft-label store: piece arithmetic, resumable/shardable writing, window targets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from liser.core.errors import LiserError
from liser.teachers.store import SoftLabelStore, StoreWriter, n_pieces, window_pieces

CLASSES = ["neg", "pos"]


def test_n_pieces():
    assert n_pieces(3.0) == 6  # six whole 0.5 s pieces
    assert n_pieces(3.2) == 6  # 0.2 s rest < half a piece: dropped
    assert n_pieces(3.25) == 7  # 0.25 s rest = half a piece: kept
    assert n_pieces(3.3) == 7
    assert n_pieces(0.1) == 1  # never zero
    assert n_pieces(2.0, piece_s=1.0) == 2


def test_window_pieces_centres_inside_the_window():
    # piece p covers [0.5p, 0.5p + 0.5), centre 0.5p + 0.25; window [s, s + 3)
    assert window_pieces(0.0) == (0, 6)  # centres 0.25 .. 2.75
    assert window_pieces(0.1) == (0, 6)  # centres 0.25 .. 2.75 still inside [0.1, 3.1)
    assert window_pieces(0.25) == (0, 6)  # 0.25 in, 3.25 out (half-open)
    assert window_pieces(0.26) == (1, 7)  # centres 0.75 .. 3.25
    assert window_pieces(0.3) == (1, 7)
    assert window_pieces(1.0) == (2, 8)
    assert window_pieces(0.0, length_s=1.0) == (0, 2)


def _a():
    """7 pieces (3.3 s): probs [p/8, 1 - p/8]; piece 2 invalid."""
    p = np.arange(7) / 8
    return np.stack([p, 1 - p], 1), np.array([True, True, False, True, True, True, True]), 3.3


def _b():
    """4 pieces (2.0 s); piece 1 invalid."""
    return np.array([[1, 0], [0, 1], [0.5, 0.5], [0.25, 0.75]]), np.array([True, False, True, True]), 2.0


def _c():
    """2 pieces (1.0 s), all invalid (e.g. no face)."""
    return np.array([[0.5, 0.5], [0.5, 0.5]]), np.array([False, False]), 1.0


def _write_three(path):
    w = StoreWriter(path, "fake", CLASSES, "hash1", flush_every=1)
    for name, (p, v, d) in zip("abc", (_a(), _b(), _c())):
        w.add(name, p, v, d)
    return w


def test_write_resume_finalize_and_windows(tmp_path):
    path = tmp_path / "store"
    w = _write_three(path)
    assert len(list((path / "parts").glob("part-*.npz"))) == 3  # flushed after every item
    w.reject("d", "no face found")
    del w
    w2 = StoreWriter(path, "fake", CLASSES, "hash1", flush_every=1)  # an interrupted job re-opens
    assert w2.done == {"a", "b", "c", "d"}
    assert w2.rejected == {"d": "no face found"}
    store = w2.finalize()
    assert isinstance(store, SoftLabelStore)
    assert len(store) == 3 and set(store.ids) == {"a", "b", "c"} and "d" not in store
    assert store.classes == CLASSES and store.teacher == "fake" and store.teacher_hash == "hash1"
    assert store.meta["rejected"] == 1 and store.meta["pieces"] == 7 + 4 + 2 and store.meta["valid_pieces"] == 6 + 3

    probs, valid = store.pieces("b")
    np.testing.assert_array_equal(probs, _b()[0])
    np.testing.assert_array_equal(valid, _b()[1])

    # a, window at 0.3 s: pieces 1..6, piece 2 invalid -> mean of p/8 over p in {1, 3, 4, 5, 6}
    p, n = store.window("a", 0.3)
    assert n == 5 and p.dtype == np.float32
    np.testing.assert_allclose(p, [19 / 5 / 8, 1 - 19 / 5 / 8], atol=1e-6)
    # a, window at 0: pieces 0..5 less piece 2 -> p in {0, 1, 3, 4, 5}
    p, n = store.window("a", 0.0)
    assert n == 5
    np.testing.assert_allclose(p, [13 / 5 / 8, 1 - 13 / 5 / 8], atol=1e-6)
    # b is shorter than the window: all its valid pieces 0, 2, 3
    p, n = store.window("b", 0.0)
    assert n == 3
    np.testing.assert_allclose(p, [(1 + 0.5 + 0.25) / 3, (0 + 0.5 + 0.75) / 3], atol=1e-6)
    # a window past the end (padding) falls back to the last piece
    p, n = store.window("b", 3.0)
    assert n == 1
    np.testing.assert_allclose(p, [0.25, 0.75])
    # c has no valid piece: no target
    p, n = store.window("c", 0.0)
    assert n == 0 and p.tolist() == [0.0, 0.0]


def test_adding_after_resume_keeps_earlier_items(tmp_path):
    path = tmp_path / "store"
    _write_three(path)
    w = StoreWriter(path, "fake", CLASSES, "hash1", flush_every=64)
    w.add("e", np.array([[0.75, 0.25]]), np.array([True]), 0.5)  # buffered, flushed by finalize
    store = w.finalize()
    assert set(store.ids) == {"a", "b", "c", "e"}
    np.testing.assert_allclose(store.window("e", 0.0)[0], [0.75, 0.25])


def test_shards_are_merged_by_finalize(tmp_path):
    path = tmp_path / "store"
    w0 = StoreWriter(path, "fake", CLASSES, "hash1", shard=(0, 2), flush_every=1)
    w1 = StoreWriter(path, "fake", CLASSES, "hash1", shard=(1, 2), flush_every=1)
    w0.add("x", *_a())
    w1.add("z", *_b())
    w0.add("y", *_c())
    assert {p.name.split("-")[1] for p in (path / "parts").glob("part-*.npz")} == {"0of2", "1of2"}
    with pytest.raises(LiserError, match="not labeled yet"):
        w0.finalize(expected_ids=["z", "x", "y", "missing"])
    assert not (path / "meta.json").exists()  # nothing half-written
    store = StoreWriter(path, "fake", CLASSES, "hash1").finalize(expected_ids=["z", "x", "y"])
    assert store.ids == ["z", "x", "y"]  # ordered by expected_ids
    np.testing.assert_array_equal(store.pieces("z")[0], _b()[0])
    np.testing.assert_array_equal(store.pieces("x")[0], _a()[0])


def test_a_part_still_being_written_is_not_read(tmp_path, monkeypatch):
    """A part is read only once renamed: another shard mid-write (or a job killed mid-write) leaves a
    temporary behind, which neither resume nor finalize may open (CI once hit a shard's temporary
    vanishing, renamed, between another shard's listing and its read)."""
    import liser.teachers.store as store_mod

    path = tmp_path / "store"
    w = StoreWriter(path, "fake", CLASSES, "hash1", shard=(0, 2), flush_every=1)
    w.add("x", *_a())
    seen = {}
    real_savez = np.savez

    def savez_then_look(file, **arrays):  # the temporary as other shards see it, before the rename
        real_savez(file, **arrays)
        seen["tmp"] = Path(file)
        seen["resumed"] = StoreWriter(path, "fake", CLASSES, "hash1", shard=(1, 2)).done

    monkeypatch.setattr(store_mod.np, "savez", savez_then_look)
    w.add("y", *_b())
    monkeypatch.undo()
    assert seen["tmp"].parent == path / "parts" and seen["resumed"] == {"x"}
    (path / "parts" / seen["tmp"].name).write_bytes(b"PK\x03\x04 cut short")  # a dead job's leftover
    w1 = StoreWriter(path, "fake", CLASSES, "hash1", shard=(1, 2), flush_every=1)
    assert w1.done == {"x", "y"}
    store = w1.finalize(expected_ids=["x", "y"])
    assert store.ids == ["x", "y"]
    np.testing.assert_array_equal(store.pieces("y")[0], _b()[0])


def test_rejected_items_count_as_done_for_finalize(tmp_path):
    w = StoreWriter(tmp_path / "s", "fake", CLASSES, "h", flush_every=1)
    w.add("x", *_a())
    w.reject("r", "unreadable")
    store = w.finalize(expected_ids=["x", "r"])
    assert store.ids == ["x"]
    assert "r,unreadable" in (tmp_path / "s" / "rejected.csv").read_text()


def test_another_teacher_is_refused(tmp_path):
    path = tmp_path / "store"
    _write_three(path)
    with pytest.raises(LiserError, match="teacher_hash"):
        StoreWriter(path, "fake", CLASSES, "hash2")
    with pytest.raises(LiserError, match="classes"):
        StoreWriter(path, "fake", ["neg", "pos", "other"], "hash1")


def test_class_count_mismatch_in_add(tmp_path):
    w = StoreWriter(tmp_path / "s", "fake", CLASSES, "h")
    with pytest.raises(LiserError, match="3 classes"):
        w.add("x", np.full((2, 3), 1 / 3), np.ones(2, bool), 1.0)
    with pytest.raises(ValueError):
        w.add("x", np.full((2, 2), 0.5), np.ones(3, bool), 1.0)
    assert "x" not in w.done


def test_not_a_store(tmp_path):
    with pytest.raises(LiserError, match="not a finalized"):
        SoftLabelStore(tmp_path)


def test_a_thousand_items(tmp_path):
    rng = np.random.default_rng(0)
    w = StoreWriter(tmp_path / "big", "fake", CLASSES, "h", flush_every=250)
    for i in range(1000):
        p = rng.dirichlet([1, 1], size=6).astype(np.float16).astype(np.float32)
        w.add(f"item{i:04d}", p, np.ones(6, bool), 3.0)
        if i == 999:
            last = p
    w.finalize()
    store = SoftLabelStore(tmp_path / "big")
    assert len(store) == 1000 and store.probs.shape == (6000, 2)
    p, n = store.window("item0999", 0.0)
    assert n == 6
    np.testing.assert_allclose(p, last.mean(0), atol=1e-3)


def test_finalize_sees_rejections_written_by_another_shard(tmp_path):
    import numpy as np

    from liser.teachers.store import StoreWriter

    a = StoreWriter(tmp_path / "s", "t", ["x", "y"], "h", shard=(0, 2))
    b = StoreWriter(tmp_path / "s", "t", ["x", "y"], "h", shard=(1, 2))
    a.add("i0", np.array([[0.2, 0.8]]), np.array([True]), 0.5)
    b.reject("i1", "unreadable")  # after `a` was opened
    store = a.finalize(["i0", "i1"])
    assert store.ids == ["i0"]
    assert (tmp_path / "s" / "rejected.csv").read_text().count("i1") == 1


def test_finalize_memory_stays_proportional_to_the_store(tmp_path):
    """Merging parts must read each part once: re-reading a part per item made a 50 h store need > 24 GB."""
    import tracemalloc

    rng = np.random.default_rng(0)
    w = StoreWriter(tmp_path / "s", "fake", [f"c{k}" for k in range(8)], "h", flush_every=2000)
    for i in range(2000):
        w.add(f"i{i}", rng.dirichlet(np.ones(8), size=19), np.ones(19, bool), 9.25)
    w.flush()
    size = 2000 * 19 * 8 * 2  # the float16 probabilities, about 0.6 MB
    tracemalloc.start()
    w.finalize()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20 * size, f"finalize peaked at {peak / 1e6:.0f} MB for a {size / 1e6:.1f} MB store"
    assert SoftLabelStore(tmp_path / "s").probs.shape == (2000 * 19, 8)
