"""Contextual teacher pieces: pooled from one whole-item encoding; the concat head; long items in chunks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from liser.data.audio import load_audio  # noqa: E402
from conftest import ravdess_sample  # noqa: E402
from liser.data.corpora.base import Manifest  # noqa: E402
from liser.core.errors import LiserError  # noqa: E402
from liser.teachers.store import n_pieces  # noqa: E402
from liser.teachers.speech.teacher import (  # noqa: E402
    FRAME_SAMPLES,
    Backbone,
    SpeechTeacher,
    SpeechTeacherConfig,
    _make_head,
    cached_features,
    fit_speech_teacher,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATA = SHARED / "data"
WHISPER = SHARED / "models" / "whisper-base-encoder"
needs_whisper = pytest.mark.skipif(not WHISPER.is_dir(), reason=f"{WHISPER}: local whisper-base encoder absent")


@pytest.fixture(scope="module")
def whisper() -> Backbone:
    if not WHISPER.is_dir():
        pytest.skip(f"{WHISPER}: local whisper-base encoder absent")
    torch.set_num_threads(1)
    return Backbone(str(WHISPER))


@pytest.fixture(scope="module")
def ravdess() -> Manifest:
    """16 real RAVDESS files from 4 actors (4 each, mixed emotions)."""
    return ravdess_sample(4)


@needs_whisper
def test_context_pieces_are_means_of_the_whole_file_frames(whisper, ravdess):
    wave = load_audio(ravdess.abspath(ravdess.items[0]))
    states = whisper.frame_states(wave)  # [S, T, d]
    pieces, utt = whisper.context_pieces(wave, 0.5)
    assert states.shape[1] == int(np.ceil(len(wave) / FRAME_SAMPLES))
    assert pieces.shape[0] == n_pieces(len(wave) / 16000, 0.5)
    for p in range(pieces.shape[0]):
        frames = states[:, p * 25 : (p + 1) * 25]
        torch.testing.assert_close(pieces[p], frames.mean(1))
    torch.testing.assert_close(utt, states.mean(1))
    torch.testing.assert_close(utt, whisper.pooled([wave])[0])  # one pass gives the utterance vector too


@needs_whisper
def test_context_differs_from_isolated_pieces(whisper, ravdess):
    wave = load_audio(ravdess.abspath(ravdess.items[1]))
    ctx, _ = whisper.context_pieces(wave, 0.5)
    iso = whisper.pieces(wave, 0.5)
    assert ctx.shape == iso.shape
    # the same 0.5 s of audio encoded with and without its context: the deep states differ
    last = ctx[:, -1] - iso[:, -1]
    assert float(last.norm() / iso[:, -1].norm()) > 0.1


@needs_whisper
def test_long_items_are_encoded_in_overlapping_chunks(whisper, ravdess):
    waves = [load_audio(ravdess.abspath(it)) for it in ravdess.items]
    long = np.concatenate(waves * 4)[: 41 * 16000]  # 41 s: past Whisper's 30 s
    states = whisper.frame_states(long)
    assert states.shape[1] == int(np.ceil(len(long) / FRAME_SAMPLES))
    assert torch.isfinite(states).all()
    # the first 20 s come from the first chunk, which saw 25 s: equal to encoding those 25 s alone
    head = whisper.frame_states(long[: 25 * 16000])
    n = 20 * 16000 // FRAME_SAMPLES
    torch.testing.assert_close(states[:, :n], head[:, :n], atol=1e-4, rtol=1e-4)


@needs_whisper
def test_ctx_cache_fills_the_utterance_entry(whisper, ravdess, tmp_path):
    it = ravdess.items[2]
    ctx = cached_features(whisper, ravdess, it, "ctx", 0.5, tmp_path)
    assert ctx.dtype == np.float16 and ctx.shape[1:] == (whisper.n_states, whisper.dim)
    assert len(list(tmp_path.rglob("*.utt.npy"))) == 1  # the same pass wrote the utterance vector
    utt = cached_features(whisper, ravdess, it, "utt", 0.5, tmp_path)
    np.testing.assert_allclose(utt, whisper.pooled([load_audio(ravdess.abspath(it))])[0].numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="unknown feature kind"):
        cached_features(whisper, ravdess, it, "frames", 0.5, tmp_path)


def test_concat_head_reads_only_the_chosen_layers():
    torch.manual_seed(0)
    head = _make_head(4, 8, 3, kind="concat", layers=(1, 3)).eval()
    x = torch.randn(5, 4, 8)
    y = head(x)
    x2 = x.clone()
    x2[:, 0] += 100.0  # layers the head does not read
    x2[:, 2] -= 50.0
    torch.testing.assert_close(head(x2), y)
    assert y.shape == (5, 3)
    with pytest.raises(LiserError, match="layers"):
        _make_head(4, 8, 3, kind="concat", layers=(4,))
    with pytest.raises(LiserError, match="head must be"):
        _make_head(4, 8, 3, kind="attention")


@needs_whisper
def test_whole_context_teacher_fits_saves_and_labels(whisper, ravdess, tmp_path):
    cfg = SpeechTeacherConfig(backbone=str(WHISPER), mode="frozen", epochs=2, batch_size=8, train_pieces=True,
                              head="concat", layers=(3, 4), cache_dir=str(tmp_path / "cache"))
    res = fit_speech_teacher(ravdess, [it.id for it in ravdess.items], tmp_path / "t", cfg)
    back = SpeechTeacher.load(tmp_path / "t")
    assert back.hash == res.teacher_hash and back.cfg.piece_context == "whole"
    wave = load_audio(ravdess.abspath(ravdess.items[0]))
    feats = cached_features(whisper, ravdess, ravdess.items[0], "ctx", 0.5, cfg.cache_dir)
    np.testing.assert_allclose(back.predict_pieces(wave), back.probs_from_features(feats), atol=2e-3)
    with pytest.raises(LiserError, match="piece_context"):
        fit_speech_teacher(ravdess, [it.id for it in ravdess.items], tmp_path / "u",
                           SpeechTeacherConfig(backbone=str(WHISPER), train_pieces=True, piece_context="nearby",
                                               epochs=1, cache_dir=cfg.cache_dir))
