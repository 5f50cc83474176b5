"""Labeling an unlabeled pool with a speech teacher: the runtime its encoder runs in, the VAD masks, the store.

This module stands above liser.teachers.speech.teacher (the teacher: fitting,
pieces, head) and liser.teachers.speech.onnx (its encoder exported to
onnxruntime, which subclasses speech's Backbone), so neither of those
imports the other back.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from pathlib import Path

import numpy as np

from liser.data.audio import SAMPLE_RATE, load_audio
from liser.data.corpora.base import Item, Manifest
from liser.core.errors import LiserError
from liser.teachers.store import SoftLabelStore, StoreWriter
from liser.data.vad import speech_pieces
from liser.teachers.speech import onnx as speech_onnx
from liser.teachers.speech.teacher import (Backbone, SpeechTeacher, _cached_features_and_wave, _set_threads,
                                           cached_view_features, piece_kind)


def label_encoder(teacher: SpeechTeacher, check_waves=None) -> tuple[Backbone, str]:
    """The encoder that labels the pool under teacher.cfg.runtime, and that runtime: (encoder, "torch" | "onnx"
    | "onnx-int8").

    onnx runtimes export the encoder once (speech_onnx.ensure_export, in
    the feature cache's onnx/ folder) and run it in onnxruntime with
    cfg.threads threads (0 = its default, every core). `check_waves`:
    audio the int8 export is checked on when it is made; an int8 export
    outside the parity bound falls back to fp32 under "auto" and is a
    LiserError when "onnx-int8" was asked for.
    """
    runtime = speech_onnx.resolve_runtime(teacher.cfg.runtime, teacher.encoder.kind, str(teacher.encoder.device))
    if runtime == "torch":
        return teacher.encoder, runtime
    folder, meta = speech_onnx.ensure_export(teacher, check_waves)
    check = meta.get("int8_parity")
    if runtime == "onnx-int8" and check is not None and not check["within_bound"]:
        msg = (f"{folder}: the int8 encoder misses the parity bound on this pool (top-1 {check['top1']:.3f}, "
               f"mean |dp| {check['mean_abs_dp']:.4f})")
        if teacher.cfg.runtime == "onnx-int8":
            raise LiserError(msg + "; use runtime: onnx or torch")
        warnings.warn(msg + "; labeling with the fp32 export", stacklevel=2)
        runtime = "onnx"
    file = folder / (speech_onnx.INT8_FILE if runtime == "onnx-int8" else speech_onnx.FP32_FILE)
    fingerprint = hashlib.sha256(f"{runtime}|{meta['key']}".encode()).hexdigest()
    return speech_onnx.OnnxEncoder(teacher.encoder, file, teacher.cfg.threads, fingerprint), runtime


def _check_waves(manifest: Manifest, items: list[Item], seconds: float | None = None):
    """A callable giving the first readable items' waveforms, up to `seconds` (speech_onnx.CHECK_S) of audio.

    What an int8 export is checked on when it is made (not read otherwise).
    """
    def read() -> list[np.ndarray]:
        out, total = [], 0.0
        for it in items:
            if total >= (seconds or speech_onnx.CHECK_S):
                break
            try:
                out.append(load_audio(manifest.abspath(it)))
            except LiserError:
                continue
            total += len(out[-1]) / SAMPLE_RATE
        return out

    return read


_VAD_MEMO: dict[tuple, np.ndarray] = {}  # one process labels the pool once per fold: VAD runs once per file


def _speech_mask(path: Path, n: int, piece_s: float, wave: np.ndarray | None = None) -> np.ndarray:
    """speech_pieces of a file, remembered by path, size and mtime for the other folds' teachers.

    `wave`: the file's samples when the caller has them already (else it is read again).
    """
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, n, piece_s)
    if key not in _VAD_MEMO:
        _VAD_MEMO[key] = speech_pieces(wave if wave is not None else load_audio(path), n, piece_s)
    return _VAD_MEMO[key]


def label_with_speech_teacher(teacher: SpeechTeacher, manifest: Manifest, store_dir: str | Path,
                              shard: tuple[int, int] = (0, 1), progress: bool = True,
                              views=None, noise: np.ndarray | None = None) -> SoftLabelStore | None:
    """Label every piece of every item of `manifest` (this shard's share) into a soft-label store.

    Resumable (items already in the store are skipped); unreadable items are
    rejected with the reason. Shard i of n takes items i, i+n, ... in manifest
    order. When every item of the manifest (all shards) is done, the store is
    finalized and returned; otherwise the parts are flushed and None returned.

    `views` (liser.data.views.ViewSpec with timing False, or None): the
    teacher labels views 1..k of every item too, piece for piece (a store of
    format 2; teach_views, issue 24 section 1), with `noise` as their
    background (views.noise(work), loaded once by the caller; None = pink).
    A frozen encoder's features of each view are cached like the file's, so
    the other folds' teachers encode no view again.
    """
    from tqdm import tqdm

    i, n = shard
    if n < 1 or not 0 <= i < n:
        raise LiserError(f"shard {i}/{n}: need 0 <= i < n")
    _set_threads(teacher.cfg)
    vad = getattr(teacher.cfg, "vad", False)  # a store made with VAD masks must not be resumed without, and back
    todo_all = [it for k, it in enumerate(manifest.items) if k % n == i]
    if views is not None and views.timing:
        raise LiserError("teacher labels on views need views that keep the pieces in place (ViewSpec timing False)")
    encoder, runtime = label_encoder(teacher, _check_waves(manifest, todo_all))
    key = views.tag(noise) if views is not None else ""  # digests the noise bank: once, not per item
    args = _store_args(teacher, manifest, (i, n), runtime, vad, views, key)
    writer = StoreWriter(store_dir, **args)
    todo = [it for it in todo_all if it.id not in writer.done]
    audio_s, t0 = 0.0, time.time()
    bar = tqdm(todo, desc=f"label speech {i}/{n}", unit="file", disable=not progress)
    for it in bar:
        wave = None
        try:
            if teacher.mode == "frozen":  # the frozen encoder's piece states are cached: every fold's head reuses them
                feats, wave = _cached_features_and_wave(encoder, manifest, it, piece_kind(teacher.cfg),
                                                        teacher.piece_s, teacher.cfg.cache_dir)
                probs, seconds = teacher.probs_from_features(feats), it.duration
            else:
                wave = load_audio(manifest.abspath(it))
                probs, seconds = teacher.predict_pieces(wave, encoder=encoder), len(wave) / SAMPLE_RATE
            view_probs = _view_probs(teacher, encoder, manifest, it, wave, views, noise, key, len(probs)) \
                if views is not None else None
        except LiserError as e:
            writer.reject(it.id, str(e))
            continue
        valid = _speech_mask(manifest.abspath(it), len(probs), teacher.piece_s, wave) if vad \
            else np.ones(len(probs), dtype=bool)
        writer.add(it.id, probs, valid, seconds, view_probs)
        audio_s += seconds
        bar.set_postfix(audio_s_per_s=f"{audio_s / max(time.time() - t0, 1e-9):.1f}")
    bar.close()
    writer.flush()
    # re-read every shard's parts and rejections: finalize only when all items are done
    check = StoreWriter(store_dir, **args)
    ids = [it.id for it in manifest.items]
    if all(x in check.done for x in ids):
        return check.finalize(expected_ids=ids)
    return None


def _store_args(teacher: SpeechTeacher, manifest: Manifest, shard, runtime: str, vad: bool, views, key: str) -> dict:
    """StoreWriter's arguments: the store's identity (teacher, classes, hash, pieces, views) and what it records."""
    return dict(teacher=f"speech:{teacher.backbone}" + ("+silero-vad" if vad else ""), classes=teacher.classes,
                teacher_hash=teacher.hash, piece_s=teacher.piece_s, shard=shard,
                extra={"backbone": teacher.backbone, "mode": teacher.mode, "corpus": manifest.corpus,
                       "runtime": runtime},
                views=views.k if views is not None else 0, views_key=key)


def _view_probs(teacher: SpeechTeacher, encoder, manifest: Manifest, item: Item, wave, views, noise, key: str,
                n: int) -> np.ndarray:
    """The teacher's piece probabilities on views 1..k of an item: [k, n, K] (`key`: views.tag(noise), the views'
    part of the feature cache's key). LiserError when a view's pieces are not the item's n (a view that moved
    the speech: the store could not say which piece is which)."""
    file = manifest.abspath(item)
    clean = {}

    def clean_wave():  # the file is read once, only when some view is not cached yet
        if "x" not in clean:
            clean["x"] = wave if wave is not None else load_audio(file)
        return clean["x"]

    out = []
    for v in range(1, views.k + 1):
        make = lambda v=v: views.wave(clean_wave(), v, item.id, noise)  # noqa: E731
        if teacher.mode == "frozen":
            feats = cached_view_features(encoder, file, make, f"{key}-v{v}", piece_kind(teacher.cfg),
                                         teacher.piece_s, teacher.cfg.cache_dir)
            p = teacher.probs_from_features(feats)
        else:
            p = teacher.predict_pieces(make(), encoder=encoder)
        if len(p) != n:
            raise LiserError(f"{file}: view {v} has {len(p)} pieces, the recording {n}")
        out.append(p)
    return np.stack(out)
