"""The speech teacher's encoder in onnxruntime: the same soft labels as PyTorch, exported once per encoder.

A tiny random Whisper (2 layers, d=32) checks what does not depend on real
weights: the graph's states at any length, LoRA merged into the export, the
export cache (reused, keyed by the encoder, never replacing a folder liser
did not write), and a store written with the ONNX runtime. The real
Whisper-base encoder on real RAVDESS audio checks the parity bound.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")

from conftest import ravdess_sample  # noqa: E402
from liser.data.audio import load_audio  # noqa: E402
from liser.core.errors import LiserError  # noqa: E402
from liser.teachers.store import SoftLabelStore  # noqa: E402
from liser.teachers.speech import onnx as speech_onnx  # noqa: E402
from liser.teachers.speech.teacher import (  # noqa: E402
    Backbone,
    SpeechTeacher,
    SpeechTeacherConfig,
    _make_head,
)
from liser.teachers.speech.label import label_encoder, label_with_speech_teacher  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
WHISPER = SHARED / "models" / "whisper-base-encoder"
CLASSES = ["angry", "happy", "neutral", "sad"]


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory) -> str:
    """A random 2-layer Whisper encoder (d=32) with Whisper's 80-bin feature extractor, as a local folder."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    torch.manual_seed(0)
    cfg = WhisperConfig(d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80,
                        max_source_positions=1500, vocab_size=64, max_target_positions=16,
                        pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    d = tmp_path_factory.mktemp("tiny-whisper")
    WhisperModel(cfg).save_pretrained(d)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(d)
    return str(d)


def make_teacher(backbone: str, out: Path, mode: str = "frozen", seed: int = 0, runtime: str = "onnx",
                 cache: Path | None = None) -> SpeechTeacher:
    """A saved teacher with a random head (and random LoRA weights in lora mode) on `backbone`."""
    cfg = SpeechTeacherConfig(backbone=backbone, mode=mode, head="concat", vad=False, runtime=runtime,
                              cache_dir=str(cache) if cache else None, threads=1)
    bb = Backbone(backbone, "cpu")
    if mode == "lora":
        bb.add_lora(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
        torch.manual_seed(seed)
        with torch.no_grad():
            for name, p in bb.model.named_parameters():
                if "lora_" in name:
                    p.normal_(0, 0.2)  # lora_B starts at zero: make the adapter change the encoder
        bb.model.eval()
    torch.manual_seed(seed)
    head = _make_head(bb.n_states, bb.dim, len(CLASSES), kind="concat").eval()
    teacher = SpeechTeacher(cfg, CLASSES, head, bb)
    teacher.save(out)
    return SpeechTeacher.load(out)


def waves(seconds=(0.5, 1.3, 2.0)) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.normal(0, 0.1, int(s * 16000)).astype(np.float32) for s in seconds]


def test_graph_gives_pytorch_states_at_any_length(tiny_whisper, tmp_path):
    teacher = make_teacher(tiny_whisper, tmp_path / "t", cache=tmp_path / "cache")
    folder, meta = speech_onnx.ensure_export(teacher)
    enc = speech_onnx.OnnxEncoder(teacher.encoder, folder / speech_onnx.FP32_FILE, threads=1)
    for w in waves((0.32, 0.5, 3.7, 31.0)):  # the trace was 2 s; 31 s goes in chunks with context
        ref = teacher.encoder.frame_states(w)
        got = enc.frame_states(w)
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref, atol=2e-4, rtol=1e-4)


def test_lora_is_merged_into_the_export(tiny_whisper, tmp_path):
    teacher = make_teacher(tiny_whisper, tmp_path / "t", mode="lora", cache=tmp_path / "cache")
    plain = make_teacher(tiny_whisper, tmp_path / "p", mode="frozen", cache=tmp_path / "cache")
    enc, runtime = label_encoder(teacher)
    assert runtime == "onnx"
    for w in waves():
        p_ref = teacher.predict_pieces(w)
        np.testing.assert_allclose(teacher.predict_pieces(w, encoder=enc), p_ref, atol=1e-5)
        assert np.abs(plain.predict_pieces(w) - p_ref).max() > 1e-3  # the adapter does change the labels


def test_export_is_cached_and_keyed_by_the_encoder(tiny_whisper, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    lora = make_teacher(tiny_whisper, tmp_path / "a", mode="lora", seed=1, cache=cache)
    folder, meta = speech_onnx.ensure_export(lora)
    assert meta["teacher_hash"] == lora.hash and folder.parent == cache / "onnx"

    def no_export(*a, **k):
        raise AssertionError("exported again")

    monkeypatch.setattr(speech_onnx, "export_states_graph", no_export)
    assert speech_onnx.ensure_export(SpeechTeacher.load(tmp_path / "a"))[0] == folder  # reused, not re-exported
    monkeypatch.undo()
    other = make_teacher(tiny_whisper, tmp_path / "b", mode="lora", seed=2, cache=cache)  # another adapter
    assert other.hash != lora.hash
    folder_b, _ = speech_onnx.ensure_export(other)
    assert folder_b != folder and sorted(p.name for p in (cache / "onnx").iterdir()) == sorted([folder.name, folder_b.name])
    # frozen teachers (e.g. the folds') share their backbone's export whatever their heads
    f1 = make_teacher(tiny_whisper, tmp_path / "f1", seed=1, cache=cache)
    f2 = make_teacher(tiny_whisper, tmp_path / "f2", seed=2, cache=cache)
    assert f1.hash != f2.hash and speech_onnx.export_key(f1) == speech_onnx.export_key(f2)


def test_a_folder_liser_did_not_write_is_never_replaced(tiny_whisper, tmp_path):
    teacher = make_teacher(tiny_whisper, tmp_path / "t", cache=tmp_path / "cache")
    target = tmp_path / "cache" / "onnx" / speech_onnx.export_key(teacher)[:32]
    target.mkdir(parents=True)
    (target / "encoder.onnx").write_text("someone else's")
    with pytest.raises(LiserError, match="not liser's export"):
        speech_onnx.ensure_export(teacher)
    assert (target / "encoder.onnx").read_text() == "someone else's"
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temporary left behind


def test_runtime_names_and_fallbacks(tiny_hubert):
    assert speech_onnx.resolve_runtime("auto", "whisper", "cpu") == "onnx-int8"
    assert speech_onnx.resolve_runtime("auto", "whisper", "cuda:0") == "torch"
    assert speech_onnx.resolve_runtime("auto", "wave", "cpu") == "torch"
    with pytest.raises(LiserError, match="Whisper"):
        speech_onnx.resolve_runtime("onnx", "wave", "cpu")
    with pytest.raises(LiserError, match="runtime"):
        SpeechTeacherConfig(runtime="tensorrt").check()
    # the runtime is how a teacher runs, not what it is: hashes and stores stay the same
    assert SpeechTeacherConfig(runtime="torch").identity() == SpeechTeacherConfig(runtime="onnx").identity()


def test_onnx_store_is_todays_store(tiny_whisper, tmp_path):
    manifest = ravdess_sample(1)  # 4 real files
    teacher = make_teacher(tiny_whisper, tmp_path / "t", cache=tmp_path / "cache")
    stores = {}
    for runtime in ("torch", "onnx"):
        teacher.cfg = replace(teacher.cfg, runtime=runtime)
        stores[runtime] = label_with_speech_teacher(teacher, manifest, tmp_path / runtime, progress=False)
    a, b = stores["torch"], stores["onnx"]
    assert a.ids == b.ids and a.classes == b.classes and a.teacher == b.teacher and a.teacher_hash == b.teacher_hash
    assert a.probs.dtype == b.probs.dtype and a.probs.shape == b.probs.shape
    np.testing.assert_allclose(np.asarray(b.probs, np.float32), np.asarray(a.probs, np.float32), atol=2e-3)
    assert (np.asarray(a.valid) == np.asarray(b.valid)).all()
    meta_a, meta_b = (json.loads((s.path / "meta.json").read_text()) for s in (a, b))
    assert set(meta_a) == set(meta_b) and meta_b["runtime"] == "onnx" and meta_a["runtime"] == "torch"
    assert sorted(p.name for p in a.path.iterdir()) == sorted(p.name for p in b.path.iterdir())
    assert isinstance(SoftLabelStore(b.path), SoftLabelStore)


@pytest.mark.skipif(not WHISPER.is_dir(), reason=f"{WHISPER}: local whisper-base encoder absent")
def test_onnx_runtimes_hold_the_parity_bound_on_real_audio(tmp_path):
    """Whisper-base, a head standardised on these files' real features: fp32 and int8 exports against PyTorch."""
    manifest = ravdess_sample(3)  # 12 real files (~45 s) from 4 actors
    audio = [load_audio(manifest.abspath(it)) for it in manifest.items]
    teacher = make_teacher(str(WHISPER), tmp_path / "t", runtime="auto", cache=tmp_path / "cache")
    with torch.no_grad():
        feats = torch.cat([teacher.encoder.context_pieces(w)[0] for w in audio])
    teacher.head.set_stats(feats)  # random weights, real standardisation: each class has a say
    teacher.hash = "real-" + teacher.hash  # the head changed: a teacher of its own
    folder, meta = speech_onnx.ensure_export(teacher)
    ref = np.concatenate([teacher.predict_pieces(w) for w in audio])
    for file, strict in ((speech_onnx.FP32_FILE, True), (speech_onnx.INT8_FILE, False)):
        enc = speech_onnx.OnnxEncoder(teacher.encoder, folder / file, threads=1)
        got = np.concatenate([teacher.predict_pieces(w, encoder=enc) for w in audio])
        par = speech_onnx.parity(ref, got)
        assert par["within_bound"], (file, par)
        if strict:  # fp32: the same arithmetic up to summation order
            assert par["top1"] == 1.0 and par["max_abs_dp"] < 1e-3, par
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)
