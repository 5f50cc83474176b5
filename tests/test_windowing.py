"""The "speech" windowing and the field views (issue 23): predictions come from the speech, not its framing.

Real RAVDESS clips: the speech span is found past their second of silence and
under room tone; a trained "speech" student gives the same answer with or
without digital silence or room tone around a clip, scores a 1 s clip on 1 s
of frames (no zero wall), refuses a clip with no speech, and exports to an
ONNX graph that takes windows of any length.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from liser.data import audio
from liser.data import augment_audio as A
from liser.data import windowing as W
from liser.core.errors import LiserError
from liser.data.frontend import features_numpy

from conftest import real_root

CLIP = "Actor_01/03-01-05-01-01-01-01.flac"  # angry, 3.7 s: about 1 s of silence, speech, silence


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return audio.load_audio(real_root("ravdess") / CLIP)


def _span_s(x: np.ndarray) -> tuple[float, float]:
    a, b = W.speech_span(features_numpy(x).astype(np.float32))
    return a * audio.HOP_S, b * audio.HOP_S


def test_speech_span_skips_silence_and_room_tone(clip):
    a, b = _span_s(clip)
    assert 0.5 < a < 1.3 and 2.0 < b < len(clip) / audio.SAMPLE_RATE  # RAVDESS: about 1 s of silence first
    rng = np.random.default_rng(0)
    for cond in (A.noise_floor(clip, -60, rng), A.telephone(clip), A.mp3(clip)):
        a2, b2 = _span_s(cond)
        assert abs(a2 - a) < 0.15 and abs(b2 - b) < 0.2
    shift = 15 * audio.SAMPLE_RATE
    tone = np.concatenate([A.room_tone(shift, -60, rng), clip])
    a3, b3 = _span_s(tone)
    assert a3 > 13.5 and abs(b3 - 15 - b) < 0.2  # the 15 s of room tone are not speech


def test_no_speech_is_refused_or_scored_whole():
    silent = np.zeros((200, audio.N_MELS), np.float32) + 10 * np.log10(audio.LOG_FLOOR)
    with pytest.raises(LiserError, match="no speech"):
        W.plan(silent, 0.1, W.SPEECH, name="x.wav")
    p = W.plan(silent, 0.1, W.SPEECH, strict=False)
    assert p.starts.tolist() == list(audio.window_starts(200, 0.1)) and p.length == audio.CLIP_FRAMES


def test_pad_plan_is_the_papers_windows(clip):
    fr = features_numpy(clip).astype(np.float32)
    p = W.plan(fr, 0.1, W.PAD)
    assert p.length == 94 and np.array_equal(p.starts, audio.window_starts(len(fr), 0.1))
    np.testing.assert_allclose(p.weights.sum(), 1.0)


def test_short_span_is_one_window_of_its_own_length(clip):
    a, b = _span_s(clip)
    mid = int((a + b) / 2 * audio.SAMPLE_RATE)
    cut = clip[mid - 8000 : mid + 8000]  # 1.0 s of speech
    fr = features_numpy(cut).astype(np.float32)  # padded to 3 s, as everywhere
    p = W.plan(fr, 0.1, W.SPEECH)
    assert len(p.starts) == 1 and W.MIN_WINDOW_FRAMES <= p.length <= 1 + (16000 + audio.N_FFT // 2) // audio.HOP
    x = W.gather(fr, p)
    assert x.shape == (1, audio.N_MELS, p.length)
    assert x.max(axis=1).min() > 10 * np.log10(audio.LOG_FLOOR) + 1  # no frame of the zero padding
    half = features_numpy(clip[mid - 4000 : mid + 4000]).astype(np.float32)  # 0.5 s, all speech: no room to measure
    assert W.plan(half, 0.1, W.SPEECH).length >= W.MIN_WINDOW_FRAMES  # scored, not refused as "no speech"


def test_augment_view_is_seeded_and_finite(clip):
    from liser.data.views import view_rng

    a = A.augment_view(clip, view_rng(0, 1, "ravdess/Actor_01/x"))
    b = A.augment_view(clip, view_rng(0, 1, "ravdess/Actor_01/x"))
    c = A.augment_view(clip, view_rng(0, 2, "ravdess/Actor_01/x"))
    assert np.array_equal(a, b) and a.dtype == np.float32 and np.isfinite(a).all()
    assert not (len(a) == len(c) and np.array_equal(a, c))
    assert 0.5 * len(clip) < len(a) < len(clip) / 0.9 + 2 * A.MAX_PAD_S * audio.SAMPLE_RATE + 1


def test_recorder_floor_fills_the_digital_silence(clip):
    """aug_floor_p: each floor sits in FLOOR_DBFS, and far fewer views keep a second of digital silence (the
    acted corpora's framing the floor is for) when it is drawn; a low-rate codec after it may still gate a
    floor as quiet as -80 dBFS to zeros, as phones do."""
    from liser.data.views import view_rng

    x = np.concatenate([clip, np.zeros(audio.SAMPLE_RATE, np.float32)])  # 1 s of digital silence after the speech

    def keeps_silence(y):  # at least 0.5 s of 32 ms frames under -90 dBFS
        fr = y[: len(y) // audio.HOP * audio.HOP].reshape(-1, audio.HOP)
        return (10 * np.log10(np.mean(fr.astype(np.float64) ** 2, axis=1) + 1e-20) < -90).sum() >= 16

    silent = {p: sum(keeps_silence(A.augment_view(x, view_rng(0, v, "ravdess/Actor_01/x"), floor_p=p))
                     for v in range(16)) for p in (0.0, 1.0)}
    assert silent[0.0] >= 3 and silent[1.0] <= silent[0.0] // 2, silent
    for s in range(20):
        level = A.rms_dbfs(A.recorder_floor(np.zeros(audio.SAMPLE_RATE, np.float32), np.random.default_rng(s)))
        assert A.FLOOR_DBFS[0] - 0.01 <= level <= A.FLOOR_DBFS[1] + 0.01


def test_speech_crops_stay_in_the_recording(small_ravdess):
    from liser.data.features import build_features
    from liser.student.train import Crops

    cache = build_features(small_ravdess.manifest, small_ravdess.work, threads=1, progress=False)
    frames = [cache.frames(it.id) for it in small_ravdess.manifest.items[:30]]
    crops = Crops.of([frames], "speech")
    rng = np.random.default_rng(0)
    lengths = set()
    for _ in range(40):
        idx = rng.choice(len(frames), 8, replace=False)
        xs, length = crops.batch(idx, rng)
        lengths.add(length)
        assert all(x.shape == (audio.N_MELS, length) for x in xs)
        assert W.MIN_WINDOW_FRAMES <= length <= audio.CLIP_FRAMES
        assert all(x.max(axis=0).min() > 10 * np.log10(audio.LOG_FLOOR) + 1 for x in xs)  # never the zero wall
    assert len(lengths) > 10  # lengths vary from batch to batch


@pytest.fixture(scope="module")
def speech_run(small_config, tmp_path_factory):
    from liser.student.train import train

    cfg = small_config.replace(name="speech", windowing="speech", aug_views=1, level_norm=True, epochs=2, lr=1e-3,
                               aug_consistency=1.0, aug_band_p=0.5, aug_eq_db=6.0, level_band="phone")
    return train(cfg, run_dir=tmp_path_factory.mktemp("speech") / "run", progress=False)


def test_full_length_batches_take_the_whole_span(small_ravdess):
    """crop_full_p: that share of batches is cropped at 3 s (capped by the batch's recordings), the rest vary."""
    from liser.data.features import build_features
    from liser.student.train import Crops

    cache = build_features(small_ravdess.manifest, small_ravdess.work, threads=1, progress=False)
    frames = [cache.frames(it.id) for it in small_ravdess.manifest.items[:30]]
    rng = np.random.default_rng(0)
    for p in (0.0, 0.5):
        crops = Crops.of([frames], "speech", full_p=p)
        full = []
        for _ in range(200):
            idx = rng.choice(len(frames), 8, replace=False)
            _, length = crops.batch(idx, rng)
            full.append(length == min(audio.CLIP_FRAMES, min(crops.extents[0][i] for i in idx)))
        assert (np.mean(full) < 0.1) if p == 0 else (0.4 < np.mean(full) < 0.7), (p, np.mean(full))


def test_paired_crops_hold_the_same_speech(small_ravdess):
    """Crops.pairs: each item clean and as a view, the same length, about the same stretch of speech."""
    from liser.data.features import build_features
    from liser.student.train import Crops
    from liser.data.views import ViewSpec, build_views

    items = small_ravdess.manifest.items[:24]
    caches = [build_features(small_ravdess.manifest, small_ravdess.work, threads=1, progress=False),
              *build_views(small_ravdess.manifest, small_ravdess.work, ViewSpec(1), 1, False)]
    crops = Crops.of([[c.frames(it.id) for it in items] for c in caches], "speech")
    rng = np.random.default_rng(0)
    same, other = [], []
    for _ in range(10):
        idx = rng.choice(len(items), 6, replace=False)
        xs, length = crops.pairs(idx, rng)
        assert len(xs) == 12 and all(x.shape == (audio.N_MELS, length) for x in xs)
        contour = [x.mean(axis=0) for x in xs]  # loudness over time, [length]
        for j in range(6):
            same.append(np.corrcoef(contour[j], contour[6 + j])[0, 1])
            other.append(np.corrcoef(contour[j], contour[6 + (j + 1) % 6])[0, 1])
    assert np.mean(same) > np.mean(other) + 0.3, (np.mean(same), np.mean(other))


def test_consistency_term_teaches_the_view_only():
    import torch

    from liser.student.losses import consistency_term

    clean = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]], requires_grad=True)
    view = torch.tensor([[2.0, 0.0, -1.0], [1.0, 0.0, 0.0]], requires_grad=True)
    term = consistency_term(clean, view)
    assert term[0].item() == pytest.approx(0.0, abs=1e-6) and term[1].item() > 0.1
    term.sum().backward()
    assert clean.grad is None and view.grad.abs().sum() > 0  # the clean side is the teacher, not taught


def test_consistency_needs_views(small_config):
    with pytest.raises(LiserError, match="aug_consistency 0.5 needs views"):
        small_config.replace(aug_consistency=0.5).check_choices()


def test_consistency_run_logs_its_term(speech_run):
    import csv

    rows = list(csv.DictReader(open(speech_run / "epochs.csv")))
    terms = [float(r["consistency"]) for r in rows]
    assert all(np.isfinite(terms)) and terms[0] > 0


def test_level_band_travels_with_the_checkpoint(speech_run):
    """level_band phone: the trained student's level bands are the phone band's, in best.pt (the export test
    below checks the ONNX graph against it)."""
    import torch

    from liser.student.model import band_mask

    state = torch.load(speech_run / "best.pt", map_location="cpu", weights_only=False)["state_dict"]
    np.testing.assert_array_equal(state["level_keep"].numpy(), band_mask((300.0, 3400.0)))


def test_speech_student_ignores_silence_around_the_clip(speech_run, clip):
    import liser

    model = liser.load(speech_run)
    assert model.windowing == "speech"
    ref = model.predict(clip, audio.SAMPLE_RATE)
    hop = audio.HOP  # whole hops keep the frame grid: the same frames, up to the DC removal
    for before, after in ((4 * 31 * hop, 0), (0, 2 * 31 * hop), (10 * 31 * hop, 31 * hop)):
        p = model.predict(np.concatenate([np.zeros(before, np.float32), clip, np.zeros(after, np.float32)]),
                          audio.SAMPLE_RATE)
        assert p.label == ref.label
        np.testing.assert_allclose(list(p.probabilities.values()), list(ref.probabilities.values()), atol=0.02)
    with pytest.raises(LiserError, match="no speech"):  # 5 s of steady room tone: no label, one clear line
        model.predict(A.room_tone(5 * audio.SAMPLE_RATE, -40, np.random.default_rng(0)), audio.SAMPLE_RATE)


def test_speech_student_exports_with_a_dynamic_frame_axis(speech_run, clip, tmp_path):
    import liser
    from liser.inference.export import export_onnx

    out = tmp_path / "s.onnx"
    export_onnx(speech_run, out, say=lambda msg: None)
    onnx_model, torch_model = liser.load(out), liser.load(speech_run)
    assert json.loads(onnx_model.session.get_modelmeta().custom_metadata_map["front_end"])["windowing"] == "speech"
    a0 = int(_span_s(clip)[0] * audio.SAMPLE_RATE)
    for n in (16000, 24000, len(clip)):  # 1 s, 1.5 s of speech and the whole clip: windows of other lengths than 94
        seg = clip[a0 : a0 + n] if n < len(clip) else clip
        a, b = onnx_model.predict(seg, 16000), torch_model.predict(seg, 16000)
        np.testing.assert_allclose(list(a.probabilities.values()), list(b.probabilities.values()), atol=1e-4)


def test_channel_norm_ignores_a_fixed_channel_colouring(clip):
    import torch

    from liser.student.model import Student

    torch.manual_seed(0)
    x = torch.from_numpy(W.gather(features_numpy(clip).astype(np.float32),
                                  W.plan(features_numpy(clip).astype(np.float32), 0.5, W.SPEECH)))
    tilt = torch.linspace(-12, 6, audio.N_MELS)[None, :, None]  # a microphone's colouring: dB per Mel band
    cmn, level = Student(6, channel_norm=True).eval(), Student(6, level_norm=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(cmn.classify(x + tilt), cmn.classify(x), atol=1e-4, rtol=0)
        assert (level.classify(x + tilt) - level.classify(x)).abs().max() > 1e-3  # the level centring does not


def test_timeline_says_no_speech_where_there_is_none_live_and_offline(speech_run, clip, capsys):
    """A "speech" model's timeline over 6 s of room tone, a clip, 6 s of room tone: windows in the tone alone
    have no label, windows over the speech have one; the live timeline (serve) and the CLI say the same."""
    import liser
    from liser.cli import main
    from liser.inference.serve import LiveTimeline

    model = liser.load(speech_run)
    rng = np.random.default_rng(0)
    tone = lambda: A.room_tone(6 * audio.SAMPLE_RATE, -55, rng)  # noqa: E731
    x = np.concatenate([tone(), clip, tone()]).astype(np.float32)
    off = model.timeline(x, audio.SAMPLE_RATE, hop_s=0.5)
    speech_at = _span_s(clip)
    for w in off:
        overlap = min(w.end, 6 + speech_at[1]) - max(w.start, 6 + speech_at[0])
        if overlap <= 0:  # the window holds room tone only
            assert w.no_speech and w.to_dict()["label"] is None and w.to_dict()["no_speech"]
        elif overlap >= 1.0:
            assert not w.no_speech and w.label in model.classes
    live = LiveTimeline(model, audio.SAMPLE_RATE, 0.5)
    got = [w for a in range(0, len(x), 4000) for w in live.push(x[a : a + 4000])] + live.finish()
    assert [(w.start, w.label) for w in got] == [(w.start, w.label) for w in off]
    sf = pytest.importorskip("soundfile")
    path = speech_run.parent / "tone-clip-tone.wav"
    sf.write(path, x, audio.SAMPLE_RATE)
    assert main(["predict", str(speech_run), str(path), "--timeline", "--stride", "0.5"]) == 0
    said = [line.split("\t")[2] for line in capsys.readouterr().out.splitlines()[1:]]
    assert said == ["no speech" if w.no_speech else w.label for w in off]
