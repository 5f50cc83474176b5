"""Speech teacher: Whisper short-input path, frozen and LoRA training, piece labeling into a store."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import ravdess_sample  # noqa: E402
from liser.data.corpora.base import Item, Manifest  # noqa: E402
from liser.core.errors import LiserError  # noqa: E402
from liser.teachers.speech.teacher import (  # noqa: E402
    Backbone,
    SpeechTeacher,
    SpeechTeacherConfig,
    evaluate_speech_teacher,
    fit_speech_teacher,
    speaker_split,
    whisper_encoder_states,
)
from liser.teachers.speech.label import label_with_speech_teacher  # noqa: E402
from liser.teachers.store import SoftLabelStore, n_pieces  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATA = SHARED / "data"
WHISPER = SHARED / "models" / "whisper-base-encoder"


@pytest.fixture(scope="module")
def ravdess() -> Manifest:
    """20 real RAVDESS files from 4 actors (5 each, mixed emotions)."""
    return ravdess_sample(5)


@pytest.fixture(scope="module")
def frozen_fit(tiny_hubert, ravdess, tmp_path_factory):
    base = tmp_path_factory.mktemp("frozen")
    cfg = SpeechTeacherConfig(backbone=tiny_hubert, mode="frozen", epochs=2, batch_size=8, seed=1,
                              cache_dir=str(base / "cache"), vad=False)
    return fit_speech_teacher(ravdess, [it.id for it in ravdess.items], base / "teacher", cfg)


# ---------------------------------------------------------------- whisper


@pytest.mark.skipif(not WHISPER.is_dir(), reason=f"{WHISPER}: local whisper-base encoder absent")
def test_whisper_short_path_equals_stock_forward():
    bb = Backbone(str(WHISPER))
    rng = np.random.default_rng(0)
    t = np.arange(30 * 16000) / 16000
    wave = (0.1 * np.sin(2 * np.pi * 220 * t * (1 + 0.1 * np.sin(t))) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
    # our feature length (the real input, here 30 s) gives the stock 3000 frames
    mine = bb.feature_extractor(wave, sampling_rate=16000, padding="max_length", max_length=len(wave),
                                truncation=True, return_tensors="pt")["input_features"]
    stock = bb.feature_extractor(wave, sampling_rate=16000, return_tensors="pt")["input_features"]
    assert mine.shape == stock.shape == (1, 80, 3000)
    assert torch.equal(mine, stock)
    with torch.no_grad():
        ref = bb.model(stock).last_hidden_state
        ours = whisper_encoder_states(bb.model, stock)
    assert len(ours) == bb.n_states == 7
    assert torch.allclose(ours[-1], ref, atol=1e-4, rtol=1e-4)
    # a 0.5 s piece: 50 frames, 25 positions; pooled states of every layer
    with torch.no_grad():
        short = bb.pooled([wave[:8000], wave[:4000]])
    assert short.shape == (2, 7, 512) and torch.isfinite(short).all()


# ---------------------------------------------------------------- split, frozen fit


def test_speaker_split_is_deterministic_and_disjoint():
    items = [Item(f"c/s{s}/{k}", f"{s}/{k}.wav", f"s{s}", "happy", 1.0, 16000, 1, "c") for s in range(10) for k in range(3)]
    a_tr, a_va = speaker_split(items, 0.2, seed=3)
    b_tr, b_va = speaker_split(items, 0.2, seed=3)
    assert [i.id for i in a_va] == [i.id for i in b_va]
    assert {i.speaker for i in a_va} & {i.speaker for i in a_tr} == set()
    assert len({i.speaker for i in a_va}) == 2
    with pytest.raises(LiserError):
        speaker_split(items[:3])


def test_frozen_fit_writes_loadable_checkpoint(frozen_fit, ravdess):
    res = frozen_fit
    assert len(res.history) == 2 and 1 <= res.best_epoch <= 2
    assert {Path(i).name for i in res.train_ids}.isdisjoint({Path(i).name for i in res.val_ids})
    out = res.out_dir
    meta = json.loads((out / "teacher.json").read_text())
    assert meta["mode"] == "frozen" and meta["classes"] == ravdess.classes
    assert len(meta["layer_weights"]) == 3 and abs(sum(meta["layer_weights"]) - 1) < 1e-4
    assert meta["teacher_hash"] == res.teacher_hash == res.teacher.hash
    t = SpeechTeacher.load(out)
    assert t.hash == res.teacher_hash and t.classes == ravdess.classes
    wave = np.random.default_rng(0).standard_normal(int(1.3 * 16000)).astype(np.float32) * 0.1
    p = t.predict_pieces(wave)
    assert p.shape == (n_pieces(1.3), len(t.classes)) == (3, len(ravdess.classes))
    assert np.allclose(p.sum(1), 1, atol=1e-5)
    np.testing.assert_allclose(p, res.teacher.predict_pieces(wave), atol=1e-5)
    ev = evaluate_speech_teacher(t, ravdess, [it.id for it in ravdess.items[:4]])
    assert {"uar", "war", "uar_pieces", "war_pieces", "per_item_probs"} <= set(ev)
    assert len(ev["per_item_probs"]) == 4


def test_changed_head_breaks_the_hash(frozen_fit, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    d = tmp_path / "t"
    shutil.copytree(frozen_fit.out_dir, d)
    state = load_file(str(d / "head.safetensors"))
    state["fc2.bias"] = state["fc2.bias"] + 1
    save_file(state, str(d / "head.safetensors"))
    with pytest.raises(LiserError, match="teacher_hash"):
        SpeechTeacher.load(d)


# ---------------------------------------------------------------- lora


def test_lora_wraps_qv_and_trains_only_lora_and_head(tiny_hubert):
    from liser.teachers.speech.teacher import _make_head

    bb = Backbone(tiny_hubert)
    bb.add_lora(r=4, alpha=8, dropout=0.0)
    names = {n for n, _ in bb.model.named_modules()}
    assert any(n.endswith("q_proj.lora_A.default") for n in names)
    assert any(n.endswith("v_proj.lora_B.default") for n in names)
    assert not any("k_proj.lora_" in n for n in names)
    trainable = [n for n, p in bb.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    head = _make_head(bb.n_states, bb.dim, 3)
    params = [p for p in bb.model.parameters() if p.requires_grad] + list(head.parameters())
    before = bb.lora_state()
    opt = torch.optim.AdamW(params, lr=1e-2)
    waves = [np.random.default_rng(k).standard_normal(8000 + 1000 * k).astype(np.float32) for k in range(3)]
    bb.model.train()
    loss = torch.nn.functional.cross_entropy(head(bb.pooled(waves, grad=True)), torch.tensor([0, 1, 2]))
    opt.zero_grad()
    loss.backward()
    opt.step()
    after = bb.lora_state()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any("lora_B" in k for k in changed)  # B starts at 0, so only B gets a gradient on step 1
    frozen = {n: p for n, p in bb.model.named_parameters() if "lora_" not in n}
    assert all(p.grad is None for p in frozen.values())


def test_lora_fit_saves_and_reloads_adapter(tiny_hubert, ravdess, tmp_path):
    cfg = SpeechTeacherConfig(backbone=tiny_hubert, mode="lora", epochs=1, batch_size=8, lora_r=2, lora_alpha=4,
                              max_seconds=2.0, seed=0)
    items = ravdess.items[::2]
    res = fit_speech_teacher(ravdess, [it.id for it in items], tmp_path / "lora", cfg)
    assert (tmp_path / "lora" / "adapter.safetensors").is_file()
    t = SpeechTeacher.load(tmp_path / "lora")
    assert t.hash == res.teacher_hash
    wave = np.random.default_rng(1).standard_normal(16000).astype(np.float32) * 0.1
    np.testing.assert_allclose(t.predict_pieces(wave), res.teacher.predict_pieces(wave), atol=1e-5)


# ---------------------------------------------------------------- labeling


def _pool(ravdess: Manifest, n: int, bad: bool = False) -> Manifest:
    items = [replace(it, label="") for it in ravdess.items[:n]]
    if bad:
        items.append(Item("ravdess/none/missing", "Actor_99/missing.flac", "none", "", 1.0, 16000, 1, "ravdess"))
    return Manifest(corpus="pool", root=ravdess.root, items=items)


def test_label_resume_and_reject(frozen_fit, ravdess, tmp_path):
    t = frozen_fit.teacher
    pool = _pool(ravdess, 3, bad=True)
    store = label_with_speech_teacher(t, pool, tmp_path / "store", progress=False)
    assert isinstance(store, SoftLabelStore)
    assert store.teacher == f"speech:{t.backbone}" and store.teacher_hash == t.hash
    assert len(store) == 3 and "ravdess/none/missing" not in store
    assert "ravdess/none/missing" in (tmp_path / "store" / "rejected.csv").read_text()
    for it in pool.items[:3]:
        probs, valid = store.pieces(it.id)
        assert probs.shape == (n_pieces(it.duration), len(t.classes)) and valid.all()
    parts = sorted((tmp_path / "store" / "parts").glob("*.npz"))
    again = label_with_speech_teacher(t, pool, tmp_path / "store", progress=False)
    assert sorted((tmp_path / "store" / "parts").glob("*.npz")) == parts  # nothing relabeled
    assert len(again) == 3


def test_label_two_shards_then_merge(frozen_fit, ravdess, tmp_path):
    t = frozen_fit.teacher
    pool = _pool(ravdess, 5)
    assert label_with_speech_teacher(t, pool, tmp_path / "s", shard=(1, 2), progress=False) is None
    store = label_with_speech_teacher(t, pool, tmp_path / "s", shard=(0, 2), progress=False)
    assert store is not None and store.ids == [it.id for it in pool.items]
    assert store.probs.shape[0] == sum(n_pieces(it.duration) for it in pool.items)
    from liser.data.audio import load_audio

    wave_probs = t.predict_pieces(load_audio(pool.abspath(pool.items[2])))
    np.testing.assert_allclose(np.asarray(store.pieces(pool.items[2].id)[0], np.float32), wave_probs, atol=2e-3)


def test_class_count_mismatch_with_store_raises(frozen_fit, ravdess, tmp_path):
    from liser.teachers.speech.teacher import _make_head

    t = frozen_fit.teacher
    label_with_speech_teacher(t, _pool(ravdess, 1), tmp_path / "s", progress=False)
    other = SpeechTeacher(t.cfg, t.classes[:4], _make_head(3, 32, 4), t.encoder)
    other.hash = t.hash
    with pytest.raises(LiserError):
        label_with_speech_teacher(other, _pool(ravdess, 2), tmp_path / "s", progress=False)


def test_frozen_fit_on_pieces_too(tiny_hubert, ravdess, tmp_path):
    cfg = SpeechTeacherConfig(backbone=tiny_hubert, mode="frozen", epochs=1, batch_size=16, train_pieces=True,
                              cache_dir=str(tmp_path / "cache"))
    res = fit_speech_teacher(ravdess, [it.id for it in ravdess.items], tmp_path / "t", cfg)
    assert "val_uar_pieces" in res.history[0]
    assert SpeechTeacher.load(tmp_path / "t").hash == res.teacher_hash
    with pytest.raises(LiserError, match="frozen-mode"):
        fit_speech_teacher(ravdess, [it.id for it in ravdess.items], tmp_path / "l", replace(cfg, mode="lora"))


def test_label_with_vad_masks_pieces_without_speech(frozen_fit, ravdess, tmp_path):
    pytest.importorskip("silero_vad")
    from liser.data.audio import load_audio
    from liser.data.vad import speech_pieces

    t = frozen_fit.teacher
    t.cfg = replace(t.cfg, vad=True)  # labeling option only: the trained teacher (and its hash) stay the same
    try:
        pool = _pool(ravdess, 3)
        store = label_with_speech_teacher(t, pool, tmp_path / "store", progress=False)
        assert store.teacher.endswith("+silero-vad") and store.teacher_hash == t.hash
        for it in pool.items:
            probs, valid = store.pieces(it.id)
            np.testing.assert_array_equal(valid, speech_pieces(load_audio(ravdess.abspath(it)), len(probs)))
            assert 0 < valid.sum() < len(valid)  # RAVDESS: silence around each sentence
        with pytest.raises(LiserError, match="another teacher"):  # no resuming a VAD store without VAD
            t.cfg = replace(t.cfg, vad=False)
            label_with_speech_teacher(t, pool, tmp_path / "store", progress=False)
    finally:
        t.cfg = replace(t.cfg, vad=False)
