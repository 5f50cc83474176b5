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
