"""bench/bench_robustness.py: the field conditions on a real RAVDESS clip, its metrics on hand-made
predictions, and one end-to-end run of the shipped default model under two labels.

Real files come from ../shared/data/ravdess (skipped with a message when absent).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import DEFAULT_CLASSES, load_bench, real_root

bench = load_bench("bench_robustness")

SR = 16_000
CLIP = "Actor_01/03-01-05-01-01-01-01.flac"  # angry, "Kids are talking by the door", 3.9 s with silence around
DEFAULT_ONNX = Path(__file__).resolve().parents[1] / "src" / "liser" / "inference" / "default" / "liser-default-int8.onnx"
PER_CLASS = 2  # test files per class in the end-to-end run
EMOTION_CODES = {"01": "neutral", "02": "calm", "03": "happy", "04": "sad", "05": "angry", "06": "fearful",
                 "07": "disgust", "08": "surprised"}


@pytest.fixture(scope="module")
def clip():
    """(waveform [N] float32 at 16 kHz, its conditions, the voiced span) of one real RAVDESS file."""
    from liser.data.audio import load_audio

    x = load_audio(real_root("ravdess") / CLIP)
    waves, span = bench.make_conditions(x, "ravdess/Actor_01/" + Path(CLIP).stem, seed=0)
    return x, waves, span


def test_every_condition_is_finite_float32_of_the_expected_length(clip):
    x, waves, span = clip
    assert list(waves) == list(bench.CONDITIONS)
    same_length = ("full", "floor_-60dBFS", "snr_20dB", "snr_10dB", "telephone_8k", "mp3_32k")
    for name, y in waves.items():
        assert y.dtype == np.float32 and y.ndim == 1, name
        assert np.isfinite(y).all() and np.abs(y).max() <= 1.0, name
        if name in same_length:
            assert len(y) == len(x), name
    assert len(waves["voiced"]) == span[1] - span[0]
    for f in bench.SPEEDS:  # played f times faster at the same 16 kHz rate: N / f samples
        assert abs(len(waves[f"speed_{f}"]) - len(x) / f) <= 2
    # the perturbed ones really differ from the clip
    for name in ("floor_-60dBFS", "snr_20dB", "telephone_8k", "mp3_32k"):
        assert not np.array_equal(waves[name], x), name


def test_voiced_part_and_central_cuts_lie_inside_the_speech(clip):
    x, waves, span = clip
    a, b = span
    assert 0 < a < b < len(x)  # RAVDESS clips start and end with silence; silero finds it
    assert 1.0 < (b - a) / SR < 3.5
    for s in bench.CENTRAL_S:
        c0, c1 = bench.central_span(span, s)
        assert a <= c0 < c1 <= b
        assert np.array_equal(waves[f"central_{s}s"], x[c0:c1])
    c0, c1 = bench.central_span(span, 1.0)
    assert abs((c1 - c0) / SR - 1.0) <= 0.05
    assert abs((c0 + c1) / 2 - (a + b) / 2) <= 1  # centred on the voiced part
    # a voiced part shorter than the cut is kept whole
    assert bench.central_span((100, 100 + SR // 4), 1.0) == (100, 100 + SR // 4)


def test_room_tone_and_noise_levels(clip):
    from liser.data.augment_audio import rms_dbfs

    x, waves, _ = clip
    for s in bench.ROOM_TONE_S:
        y = waves[f"room_tone_{s:g}s"]
        n = int(s * SR)
        assert len(y) == len(x) + n
        assert abs(rms_dbfs(y[:n]) - bench.ROOM_TONE_DBFS) < 0.5
        assert np.array_equal(y[n:], x)
    assert abs(rms_dbfs(waves["floor_-60dBFS"] - x) - bench.FLOOR_DBFS) < 0.5
    for snr in bench.SNR_DB:
        assert abs(rms_dbfs(x) - rms_dbfs(waves[f"snr_{snr:g}dB"] - x) - snr) < 0.5


def test_conditions_are_seeded_per_file_and_condition(clip):
    x, waves, _ = clip
    again, _ = bench.make_conditions(x, "ravdess/Actor_01/" + Path(CLIP).stem, seed=0)
    other, _ = bench.make_conditions(x, "ravdess/Actor_01/another-file", seed=0)
    for name in ("room_tone_3s", "floor_-60dBFS", "snr_10dB"):
        assert np.array_equal(again[name], waves[name]), name  # every model hears the same audio
        assert not np.array_equal(other[name], waves[name]), name  # another file, other noise
    # each SNR draws its own noise, not one noise rescaled
    assert not np.allclose(waves["snr_20dB"] - x, (waves["snr_10dB"] - x) / 10 ** 0.5, atol=1e-4)


def test_condition_metrics_on_a_hand_made_example():
    ns = bench.NO_SPEECH
    labels = ["a", "a", "b", "b", "c"]
    preds = ["a", "b", "b", ns, "b"]
    full = ["a", "a", "b", "b", "b"]
    m = bench.condition_metrics(labels, preds, full)
    # recalls a 1/2, b 1/2 (no-speech is wrong), c 0 -> UAR 1/3; b takes 3 of 5; files 2 and 4 changed
    assert m == {"uar": 0.3333, "max_class_share": 0.6, "max_class": "b", "no_speech_share": 0.2,
                 "changed_vs_full": 0.4, "n": 5}
    m = bench.condition_metrics(["a", "b"], [ns, ns], ["a", "b"])
    assert m["uar"] == 0 and m["max_class_share"] == 1 and m["max_class"] == ns
    assert m["no_speech_share"] == 1 and m["changed_vs_full"] == 1
    m = bench.condition_metrics(labels, labels, labels)
    assert m["uar"] == 1 and m["max_class_share"] == 0.4 and m["changed_vs_full"] == 0


def test_summary_evaluates_the_targets():
    def entry(uar, share=0.2, changed=0.0):
        c = {n: {"uar": uar, "max_class_share": share, "no_speech_share": 0.0, "changed_vs_full": changed, "n": 10}
             for n in bench.CONDITIONS}
        return {"files": 10, "vad_empty": 0, "conditions": c}

    good = {"x": entry(0.6), "y": entry(0.4)}
    s = bench.summary(good)
    assert s["uar_mean"]["full"] == 0.5 and s["targets"]["uar_1s_ratio"]["value"] == 1.0 and s["all_met"]
    bad = {"x": entry(0.6), "y": entry(0.4, share=0.5, changed=0.2)}
    bad["y"]["conditions"]["central_1.0s"]["uar"] = 0.0  # mean 0.3 of 0.5 = 0.6
    s = bench.summary(bad)
    assert s["targets"]["uar_1s_ratio"] == {"value": 0.6, "min": 0.85, "met": False}
    assert s["targets"]["max_class_share"]["value"] == 0.5 and not s["targets"]["max_class_share"]["met"]
    assert not s["targets"]["changed_vs_full:mp3_32k"]["met"] and not s["all_met"]


def test_balanced_subset_is_seeded_and_balanced():
    from types import SimpleNamespace

    items = [SimpleNamespace(id=f"c/{k:02d}", label="ab"[k % 2]) for k in range(20)]
    a = bench.balanced_subset(items, 3, seed=0)
    assert [it.id for it in a] == [it.id for it in bench.balanced_subset(items, 3, seed=0)]
    assert sorted(it.label for it in a) == ["a"] * 3 + ["b"] * 3
    assert [it.id for it in a] != [it.id for it in bench.balanced_subset(items, 3, seed=1)]


def _tiny_config(tmp_path: Path) -> Path:
    """A RAVDESS config over linked real files: Actor_01 trains, Actor_02 validates, Actor_03 tests
    (PER_CLASS + 1 files per class, so the draw must choose)."""
    src = real_root("ravdess")
    tree = tmp_path / "ravdess"
    for actor in ("Actor_01", "Actor_02", "Actor_03"):
        (tree / actor).mkdir(parents=True)
        per = PER_CLASS + 1 if actor == "Actor_03" else 1
        seen: dict[str, int] = {}
        for f in sorted((src / actor).glob("*.flac")):
            emo = EMOTION_CODES[f.stem.split("-")[2]]
            if emo in DEFAULT_CLASSES and seen.get(emo, 0) < per:
                seen[emo] = seen.get(emo, 0) + 1
                (tree / actor / f.name).symlink_to(f)
    folds = tmp_path / "folds.json"
    folds.write_text(json.dumps({"corpus": "ravdess", "k": 1, "seed": 0,
                                 "folds": [{"train": ["Actor_01"], "val": ["Actor_02"], "test": ["Actor_03"]}]}))
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(f"name: tiny\ncorpus: ravdess\nroot: {tree}\nfolds: {folds}\nwork: {tmp_path / 'work'}\n"
                   f"classes: {json.dumps(DEFAULT_CLASSES)}\n")
    return cfg


def test_main_scores_two_labels_of_one_model_identically(tmp_path, capsys):
    cfg = _tiny_config(tmp_path)
    out = tmp_path / "robustness.json"
    out.write_text(json.dumps({"models": {"older": {"path": "x.onnx", "folds": {}}, "old": {"stale": True}}}))
    assert bench.main(["--model", f"old={DEFAULT_ONNX}", "--model", f"new={DEFAULT_ONNX}", "--config", str(cfg),
                       "--max-per-class", str(PER_CLASS), "--json", str(out), "--merge"]) == 0
    res = json.loads(out.read_text())
    models = res["models"]
    assert set(models) == {"older", "old", "new"} and "stale" not in models["old"]  # --merge keeps only the others
    old, new = models["old"]["folds"]["fold0"], models["new"]["folds"]["fold0"]
    assert old["files"] == PER_CLASS * len(DEFAULT_CLASSES)
    assert old["conditions"]["full"]["changed_vs_full"] == 0
    assert old["conditions"] == new["conditions"]  # the same audio to both labels
    assert models["old"]["summary"] == models["new"]["summary"]
    for name, r in old["conditions"].items():
        assert r["n"] == old["files"] and 0 <= r["uar"] <= 1 and 1 / 7 <= r["max_class_share"] <= 1, name
    assert set(models["old"]["summary"]["targets"]) == {"uar_1s_ratio", "max_class_share",
                                                        *(f"changed_vs_full:{c}" for c in bench.STABLE_CONDITIONS)}
    assert res["load_average_start"] and res["seconds"] > 0 and "--merge" in res["command"]
    printed = capsys.readouterr().out
    assert "| central_1.0s |" in printed and "**old**, fold0" in printed and "**new**, fold0" in printed
