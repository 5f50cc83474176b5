"""Training one fold end to end on a small real RAVDESS subset (4 actors, 2/1/1), 1-2 epochs, 1 thread."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from liser.student import train as tr
from liser.data import workspace as ws
from liser.core.errors import LiserError
from liser.student.model import Student

from conftest import SMALL_FOLD, fake_store, interrupt_at_second_validation, tess_pool


def _rows(run: Path) -> list[dict]:
    with open(run / "epochs.csv", newline="") as f:
        return list(csv.DictReader(f))


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


TIMING = ("train_s", "epoch_s", "samples_per_s")


def _untimed(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


# ---------------------------------------------------------------- data selection
def test_fold_items_follow_the_fold_file(small_config, small_ravdess):
    train, val, test, classes = ws.fold_items(small_config, small_ravdess.manifest)
    assert classes == ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
    assert {it.speaker for it in train} == set(SMALL_FOLD["train"]) and len(train) == 48
    assert {it.speaker for it in val} == set(SMALL_FOLD["val"]) and len(val) == 24
    assert {it.speaker for it in test} == set(SMALL_FOLD["test"]) and len(test) == 24


def test_fold_items_class_filter_and_errors(small_config, small_ravdess):
    m = small_ravdess.manifest
    train, val, test, classes = ws.fold_items(small_config.replace(classes=("sad", "happy")), m)
    assert classes == ["sad", "happy"]  # the config's order
    assert {it.label for it in train + val + test} == {"sad", "happy"} and len(train) == 2 * 2 * 3
    with pytest.raises(LiserError, match="bored"):
        ws.fold_items(small_config.replace(classes=("bored",)), m)
    with pytest.raises(LiserError, match="label_fraction"):
        ws.fold_items(small_config.replace(label_fraction=0.0), m)
    with pytest.raises(LiserError, match="fold 1"):
        ws.fold_items(small_config.replace(fold=1), m)


def test_stratified_fraction(small_config, small_ravdess):
    train = ws.fold_items(small_config, small_ravdess.manifest)[0]
    per_class = {c: sum(it.label == c for it in train) for c in {it.label for it in train}}
    assert set(per_class.values()) == {6}  # 2 actors x 3 files per emotion
    half = ws.stratified_fraction(train, 0.5, seed=0)
    assert len(half) == 24 and len({it.id for it in half}) == 24
    assert all(sum(it.label == c for it in half) == 3 for c in per_class)
    assert {it.id for it in half} <= {it.id for it in train}
    assert [it.id for it in ws.stratified_fraction(train, 0.5, seed=0)] == [it.id for it in half]
    assert {it.id for it in ws.stratified_fraction(train, 0.5, seed=1)} != {it.id for it in half}
    tiny = ws.stratified_fraction(train, 0.01, seed=0)
    assert len(tiny) == 8 and {it.label for it in tiny} == set(per_class)  # at least one per class


def test_random_crop():
    rng = np.random.default_rng(0)
    frames = np.arange(200 * 64, dtype=np.float16).reshape(200, 64)
    for _ in range(20):
        x, start = tr.random_crop(frames, rng)
        assert x.shape == (64, 94) and x.dtype == np.float32 and 0 <= start <= 106
        assert x[0, 0] == frames[start, 0] and x[3, 93] == frames[start + 93, 3]
    x, start = tr.random_crop(frames[:94], rng)
    assert start == 0


@pytest.mark.parametrize("key,value", [("schedule", "three-stage"), ("distill_loss", "kl"), ("weighting", "max")])
def test_bad_choices_are_refused(small_config, tmp_path, key, value):
    with pytest.raises(LiserError, match=key):
        tr.train(small_config.replace(**{key: value}), run_dir=tmp_path / "r", progress=False)


# ---------------------------------------------------------------- a full run
def test_run_directory(trained_run, small_config, small_ravdess):
    run = trained_run
    for name in ("config.yaml", "epochs.csv", "best.pt", "metrics.json", "confusion.png"):
        assert (run / name).is_file(), name
    assert not (run / "last.pt").exists()  # removed once finished
    from liser.core.config import Config

    assert Config.load(run / "config.yaml") == small_config

    rows = _rows(run)
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    for r in rows:
        assert r["stage"] == "train"
        assert float(r["loss"]) > 0 and float(r["ce"]) > 0 and r["sd"] == "" and r["vd"] == ""
        assert float(r["loss"]) == pytest.approx(float(r["ce"]), abs=1e-4)  # no-dstl: loss = mean CE
        assert 0 <= float(r["val_uar"]) <= 1

    ck = torch.load(run / "best.pt", weights_only=True, map_location="cpu")
    assert ck["classes"] == small_ravdess.manifest.classes and len(ck["classes"]) == 8
    assert len(ck["video_classes"]) == 7
    model = Student(8, 7)
    model.load_state_dict(ck["state_dict"])  # loads strictly
    assert not torch.equal(model.feat_mean, torch.zeros(64))  # normalisation from the training features
    assert ck["epoch"] in (0, 1)
    assert ck["val"]["uar"] == pytest.approx(max(float(r["val_uar"]) for r in rows), abs=1e-4)

    m = _metrics(run)
    t = m["test"]
    assert m["n_train"] == 48 and m["n_val"] == 24 and m["n_test"] == 24 and m["n_unlabeled"] == 0
    assert m["best_epoch"] == ck["epoch"]
    assert set(t["per_class_recall"]) == set(ck["classes"])
    cm = np.array(t["confusion"])
    assert cm.shape == (8, 8) and cm.sum() == 24 and (cm.sum(1) == 3).all()  # 3 test files per emotion
    recalls = np.diag(cm) / cm.sum(1)
    assert t["uar"] == pytest.approx(recalls.mean()) and t["war"] == pytest.approx(np.trace(cm) / 24)
    assert [t["per_class_recall"][c] for c in ck["classes"]] == pytest.approx(recalls.tolist())
    assert len(m["test_ids"]) == 24 and np.array(m["test_logits"]).shape == (24, 8)
    # the confusion matrix is rebuilt from the logged test ids (true labels) and logits (predictions)
    label = {it.id: it.label for it in small_ravdess.manifest.items}
    assert {label[i] for i in m["test_ids"]} == set(ck["classes"])
    assert all(i.split("/")[1] == SMALL_FOLD["test"][0] for i in m["test_ids"])
    # (logits are logged rounded to 4 decimals: near-ties are left out of the comparison)
    rebuilt, clear = np.zeros((8, 8), int), 0
    for i, lg in zip(m["test_ids"], m["test_logits"]):
        top2 = np.sort(lg)[-2:]
        if top2[1] - top2[0] > 2e-4:
            rebuilt[ck["classes"].index(label[i]), int(np.argmax(lg))] += 1
            clear += 1
    assert clear >= 12 and (rebuilt <= cm).all()
    # metrics.json's validation is best.pt's logged one (not evaluated again): the same as re-evaluating it
    from liser.student.evaluate import evaluate_items
    from liser.data.features import build_features

    model.to(memory_format=torch.channels_last)
    cache = build_features(small_ravdess.manifest, small_config.work, progress=False)
    _, val_items, _, _ = tr.fold_items(small_config, small_ravdess.manifest)
    again, _ = evaluate_items(model, cache, val_items, ck["classes"], small_config.val_stride_s)
    assert m["val"] == ck["val"] == {"uar": again["uar"], "war": again["war"]}
    assert (run / "confusion.png").read_bytes()[:4] == b"\x89PNG"


def test_finished_run_is_skipped(trained_run, small_config):
    before = (trained_run / "metrics.json").stat().st_mtime_ns
    assert tr.train(small_config, run_dir=trained_run, progress=False) == trained_run
    assert (trained_run / "metrics.json").stat().st_mtime_ns == before


def test_same_seed_same_run(trained_run, small_config, tmp_path):
    again = tr.train(small_config, run_dir=tmp_path / "again", progress=False)
    assert _metrics(again) == _metrics(trained_run)
    assert _untimed(_rows(again)) == _untimed(_rows(trained_run))


def test_another_seed_another_run(small_config, trained_run, tmp_path):
    other = tr.train(small_config.replace(seed=1, epochs=1), run_dir=tmp_path / "seed1", progress=False)
    assert _rows(other)[0]["loss"] != _rows(trained_run)[0]["loss"]


def test_resume_after_interruption(small_config, trained_run, tmp_path, monkeypatch):
    restore = interrupt_at_second_validation(monkeypatch)  # Ctrl-C during the validation of epoch 1
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        tr.train(small_config, run_dir=run, progress=False)
    assert (run / "last.pt").is_file() and not (run / "metrics.json").exists()
    first = _rows(run)
    assert len(first) == 1
    restore()

    tr.train(small_config, run_dir=run, progress=False)
    rows = _rows(run)
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert rows[0] == first[0]  # epoch 0 is not redone
    # resuming gives exactly the uninterrupted run
    assert _untimed(rows) == _untimed(_rows(trained_run))
    assert _metrics(run) == _metrics(trained_run)
    assert not (run / "last.pt").exists()


def test_label_fraction_halves_the_training_files(small_config, tmp_path):
    run = tr.train(small_config.replace(label_fraction=0.5, epochs=1), run_dir=tmp_path / "half", progress=False)
    m = _metrics(run)
    assert m["n_train"] == 24 and m["n_test"] == 24


def test_two_stage_without_unlabeled_data_is_a_user_error(small_config, tmp_path):
    with pytest.raises(LiserError):
        tr.train(small_config.replace(schedule="two-stage", stage1_epochs=1), run_dir=tmp_path / "r", progress=False)


# ---------------------------------------------------------------- distillation
@pytest.fixture(scope="module")
def speech_pool(small_ravdess, tmp_path_factory):
    """12 real TESS files as an unlabeled pool, their features, and a fake speech-teacher store over them."""
    base = tmp_path_factory.mktemp("pool")
    m, manifest_dir = tess_pool(base, small_ravdess.work, ("OAF_angry", "OAF_Sad", "YAF_happy", "YAF_neutral"))
    classes = small_ravdess.manifest.classes
    rng = np.random.default_rng(0)
    fake_store(base / "store", m.items, classes, rng, flush_every=4)
    fake_store(base / "store2", m.items, ["happy", "sad"], rng)
    return manifest_dir, base / "store", len(m.items)


def test_named_teacher_entries_train_like_the_paper_keys(small_config, speech_pool, tmp_path):
    """`teachers` is the same run as the paper's keys, weight for weight; a renamed teacher logs under its name."""
    manifest_dir, store, _ = speech_pool
    common = dict(unlabeled=(str(manifest_dir),), batch_size=48, unlabeled_batch=12, epochs=1)
    legacy = tr.train(small_config.replace(name="keys", lambda_sd=1.0, speech_store=str(store), **common),
                      run_dir=tmp_path / "keys", progress=False)
    entries = ({"name": "sd", "kind": "speech", "store": str(store), "weight": 1.0},
               {"name": "vd", "kind": "video", "store": "", "weight": 0.0})
    named = tr.train(small_config.replace(name="entries", teachers=entries, **common),
                     run_dir=tmp_path / "entries", progress=False)
    a, b = (torch.load(r / "best.pt", weights_only=True)["state_dict"] for r in (legacy, named))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = tr.train(small_config.replace(name="other", teachers=({"name": "voice", "kind": "speech",
                                                                   "store": str(store), "weight": 1.0},), **common),
                     run_dir=tmp_path / "other", progress=False)
    assert float(_rows(other)[0]["voice"]) > 0
    assert "g_voice.2.weight" in torch.load(other / "best.pt", weights_only=True)["state_dict"]
    with pytest.raises(LiserError, match="teachers\\[0\\]"):
        small_config.replace(teachers=({"name": "x", "kind": "smell", "store": "s", "weight": 1.0},)).check_choices()


def test_class_index_map_matches_teacher_classes_by_name():
    fer = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    ravdess = ["neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"]
    idx = tr.class_index_map(fer, ravdess)
    assert idx.tolist() == [6, -1, 3, 4, 0, 2, 1, 5]  # calm has no FER class
    p = np.array([0.1, 0.1, 0.2, 0.3, 0.1, 0.1, 0.1], np.float32)
    t, ok = tr.map_target(p, tr.class_index_map(fer, ["happy", "sad", "calm"]))  # CREMA-D-like: the rest dropped
    assert ok and t.tolist() == pytest.approx([0.75, 0.25, 0.0])
    assert tr.map_target(np.zeros(7, np.float32), idx)[1] is False


@pytest.mark.parametrize("kind", ["speech", "video"])
def test_a_teacher_taught_through_g_sup_has_no_head_of_its_own(small_config, speech_pool, tmp_path, kind):
    """head: sup distils into the supervised head (the student grows no g_<name>) and the term is logged; a
    video teacher so taught has no head to report on either (metrics.json has no video_head_by_class)."""
    manifest_dir, store, _ = speech_pool
    cfg = small_config.replace(name="via-sup", classes=("happy", "sad"), unlabeled=(str(manifest_dir),), batch_size=48,
                               unlabeled_batch=12, epochs=1,
                               teachers=({"name": "voice", "kind": kind, "store": str(store.parent / "store2"),
                                          "weight": 1.0, "head": "sup"},))
    run = tr.train(cfg, run_dir=tmp_path / f"via-sup-{kind}", progress=False)
    assert float(_rows(run)[0]["voice"]) > 0
    assert _metrics(run)["video_head_by_class"] is None
    state = torch.load(run / "best.pt", weights_only=True)["state_dict"]
    assert not any(k.startswith("g_voice") for k in state)
    with pytest.raises(LiserError, match="head own or sup"):
        small_config.replace(teachers=({"name": "x", "kind": "video", "store": "s", "weight": 1.0, "head": "g"},)
                             ).check_choices()


def test_distillation_run(small_config, speech_pool, tmp_path):
    manifest_dir, store, n_items = speech_pool
    cfg = small_config.replace(name="sp-dstl", lambda_sd=1.0, speech_store=str(store), unlabeled=(str(manifest_dir),),
                               batch_size=48, unlabeled_batch=12, epochs=1)
    run = tr.train(cfg, run_dir=tmp_path / "dstl", progress=False)
    rows = _rows(run)
    assert len(rows) == 1
    r = rows[0]
    sd, ce, loss = float(r["sd"]), float(r["ce"]), float(r["loss"])
    assert 0 < sd < 1 and r["vd"] == ""
    # one step of 48 labeled + 12 unlabeled items: eq. 4 with lambda_sd = 1 and all targets valid
    assert loss == pytest.approx((48 * ce + 12 * sd) / (48 + 12), abs=2e-4)
    m = _metrics(run)
    assert m["n_unlabeled"] == n_items == 12
    ck = torch.load(run / "best.pt", weights_only=True)
    assert ck["config"]["lambda_sd"] == 1.0


def test_distillation_with_mismatched_teacher_classes(small_config, speech_pool, tmp_path):
    manifest_dir, store, _ = speech_pool
    cfg = small_config.replace(classes=("happy", "sad"), lambda_sd=1.0, speech_store=str(store),
                               unlabeled=(str(manifest_dir),), epochs=1)
    with pytest.raises(LiserError, match="classes"):
        tr.train(cfg, run_dir=tmp_path / "r", progress=False)


def test_two_stage_schedule(small_config, speech_pool, tmp_path):
    manifest_dir, store, _ = speech_pool
    cfg = small_config.replace(name="two-stage", schedule="two-stage", stage1_epochs=1, epochs=2, lambda_sd=1.0,
                               speech_store=str(store), unlabeled=(str(manifest_dir),), batch_size=48,
                               unlabeled_batch=12)
    run = tr.train(cfg, run_dir=tmp_path / "two", progress=False)
    rows = _rows(run)
    assert [r["stage"] for r in rows] == ["distil", "train"]
    assert rows[0]["ce"] == "" and float(rows[0]["sd"]) > 0 and math.isnan(float(rows[0]["val_uar"]))
    assert float(rows[0]["loss"]) == pytest.approx(float(rows[0]["sd"]), abs=1e-4)  # only distillation, / N_u
    assert float(rows[1]["ce"]) > 0 and rows[1]["sd"] == ""  # fine-tuning on labeled data only
    m = _metrics(run)
    assert m["best_epoch"] == 1


def test_two_stage_with_no_finetuning_epoch_is_an_error(small_config, speech_pool, tmp_path):
    manifest_dir, store, _ = speech_pool
    cfg = small_config.replace(schedule="two-stage", stage1_epochs=1, epochs=1, lambda_sd=1.0,
                               speech_store=str(store), unlabeled=(str(manifest_dir),), unlabeled_batch=12)
    with pytest.raises(LiserError, match="no epoch"):
        tr.train(cfg, run_dir=tmp_path / "r", progress=False)


def test_resumed_distillation_run_equals_the_uninterrupted_one(small_config, speech_pool, tmp_path, monkeypatch):
    manifest_dir, store, _ = speech_pool
    # 2 classes (12 labeled training files: one step per epoch), 5 of the 12 unlabeled items per step,
    # so epoch 1 continues the permutation drawn in epoch 0
    cfg = small_config.replace(classes=("happy", "sad"), lambda_sd=1.0, speech_store=str(store.parent / "store2"),
                               unlabeled=(str(manifest_dir),), batch_size=25, unlabeled_batch=5, epochs=2)
    whole = tr.train(cfg, run_dir=tmp_path / "whole", progress=False)
    restore = interrupt_at_second_validation(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        tr.train(cfg, run_dir=tmp_path / "resumed", progress=False)
    restore()
    resumed = tr.train(cfg, run_dir=tmp_path / "resumed", progress=False)
    assert _untimed(_rows(resumed)) == _untimed(_rows(whole))


def test_interruption_while_saving_does_not_duplicate_log_rows(small_config, tmp_path, monkeypatch):
    cfg = small_config.replace(classes=("happy", "sad"), epochs=2)
    real, saves = tr.save, []

    def interrupted(obj, path):
        if path.name == "last.pt":
            saves.append(1)
            if len(saves) == 2:  # Ctrl-C while saving the resume state of epoch 1
                raise KeyboardInterrupt
        return real(obj, path)

    monkeypatch.setattr(tr, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tr.train(cfg, run_dir=tmp_path / "r", progress=False)
    monkeypatch.setattr(tr, "save", real)
    tr.train(cfg, run_dir=tmp_path / "r", progress=False)
    assert [int(r["epoch"]) for r in _rows(tmp_path / "r")] == [0, 1]


def test_run_dir_of_another_config_is_refused(trained_run, small_config):
    # same run directory, another learning rate: the old results must not come back as this config's
    with pytest.raises(LiserError, match="lr"):
        tr.train(small_config.replace(lr=small_config.lr * 10), run_dir=trained_run, progress=False)
    # only the thread count differs: same run, skipped
    assert tr.train(small_config.replace(threads=small_config.threads + 1), run_dir=trained_run,
                    progress=False) == trained_run


def test_fitted_teacher_temperature(small_config, speech_pool, tmp_path):
    """temperature_sd 0 takes the temperature fitted on validation for the teacher that wrote the store."""
    import json
    import shutil

    from liser.data.workspace import teacher_dir

    manifest_dir, store, _ = speech_pool
    cfg = small_config.replace(name="conf-fitted", lambda_sd=1.0, speech_store=str(store), unlabeled=(str(manifest_dir),),
                               weighting="confidence", temperature_sd=0.0, epochs=1, work=str(tmp_path / "w"))
    shutil.copytree(small_config.work, cfg.work, symlinks=True)  # the features; the teacher's eval.json goes beside
    d = teacher_dir(cfg, cfg.fold)
    d.mkdir(parents=True)
    with pytest.raises(LiserError, match="eval.json.*liser teacher fit"):
        tr.train(cfg, run_dir=tmp_path / "none", progress=False)
    (d / "eval.json").write_text(json.dumps({"hash": "another", "calibration": {"temperature": 0.5}}))
    with pytest.raises(LiserError, match="another teacher"):
        tr.train(cfg, run_dir=tmp_path / "other", progress=False)
    (d / "eval.json").write_text(json.dumps({"hash": "fakehash", "calibration": {"temperature": 0.5}}))
    run = tr.train(cfg, run_dir=tmp_path / "fitted", progress=False)
    assert _metrics(run)["temperature_sd"] == 0.5
