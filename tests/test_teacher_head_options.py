"""Speech-teacher head options added for issue 13 (utt_weight, label_smoothing, patience, refit,
ensemble).

The shipped teachers' hashes must not move: a default config leaves the new
options out of the hash, a teacher.json written before they existed loads and
verifies, and the default loss is torch's plain call bit for bit. Each option,
when set, changes the fit and the hash, and a fit is the same twice with one seed.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import ravdess_sample  # noqa: E402
from liser.core.errors import LiserError  # noqa: E402
from liser.teachers.speech.teacher import (  # noqa: E402
    LATER_DEFAULTS,
    SpeechTeacher,
    SpeechTeacherConfig,
    _loss,
    fit_speech_teacher,
    speaker_split,
)

OPTIONS = {"utt_weight": 3.0, "label_smoothing": 0.1, "patience": 1, "refit": True, "ensemble": 2}  # each away from its default


@pytest.fixture(scope="module")
def ravdess():
    """20 real RAVDESS files from 4 actors (5 each, mixed emotions)."""
    return ravdess_sample(5)


@pytest.fixture(scope="module")
def base_cfg(tiny_hubert, tmp_path_factory) -> SpeechTeacherConfig:
    """A concat head on contextual pieces (the shipped teacher's shape), with a shared feature cache."""
    cache = tmp_path_factory.mktemp("cache")
    return SpeechTeacherConfig(backbone=tiny_hubert, mode="frozen", epochs=4, batch_size=16, head="concat",
                               train_pieces=True, seed=3, cache_dir=str(cache), vad=False)


@pytest.fixture(scope="module")
def default_fit(ravdess, base_cfg, tmp_path_factory):
    """base_cfg fitted once (the later options at their defaults)."""
    return _fit(ravdess, base_cfg, tmp_path_factory.mktemp("default") / "t")


def _fit(ravdess, cfg, out):
    return fit_speech_teacher(ravdess, [it.id for it in ravdess.items], out, cfg)


def _untimed(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def test_default_identity_leaves_the_new_options_out():
    ident = SpeechTeacherConfig().identity()
    assert set(LATER_DEFAULTS) == set(OPTIONS)
    assert not set(LATER_DEFAULTS) & set(ident)
    for key, value in OPTIONS.items():
        assert replace(SpeechTeacherConfig(train_pieces=True), **{key: value}).identity()[key] == value


def test_default_loss_is_torchs_plain_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(37, 8, generator=g), torch.randint(0, 8, (37,), generator=g)
    plain = torch.nn.functional.cross_entropy(logits, y)
    assert _loss(logits, y).shape == ()
    assert torch.equal(_loss(logits, y), plain)
    # equal weights give the plain mean; weights move it towards the heavier rows
    assert torch.allclose(_loss(logits, y, torch.full((37,), 2.5)), plain, atol=1e-6)
    per = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    w = torch.ones(37)
    w[:5] = 4.0
    assert torch.allclose(_loss(logits, y, w), (per * w).sum() / w.sum())
    smooth = -(0.9 * torch.log_softmax(logits, -1)[torch.arange(37), y] + 0.1 / 8 * torch.log_softmax(logits, -1).sum(-1))
    assert torch.allclose(_loss(logits, y, label_smoothing=0.1), smooth.mean(), atol=1e-6)


def test_teacher_saved_before_the_options_loads_and_verifies(ravdess, base_cfg, tmp_path):
    res = _fit(ravdess, base_cfg, tmp_path / "t")
    meta_file = tmp_path / "t" / "teacher.json"
    meta = json.loads(meta_file.read_text())
    for key in LATER_DEFAULTS:  # what every teacher.json written before these options holds
        del meta["config"][key]
    meta_file.write_text(json.dumps(meta))
    t = SpeechTeacher.load(tmp_path / "t")
    assert t.hash == res.teacher_hash
    assert t.cfg.utt_weight == 1.0 and t.cfg.label_smoothing == 0.0 and t.cfg.patience == 0


@pytest.mark.parametrize("key", sorted(OPTIONS))
def test_each_option_changes_the_fit_and_is_seeded(ravdess, base_cfg, default_fit, tmp_path, key):
    default = default_fit
    cfg = replace(base_cfg, **{key: OPTIONS[key]})
    a, b = _fit(ravdess, cfg, tmp_path / "a"), _fit(ravdess, cfg, tmp_path / "b")
    assert a.teacher_hash == b.teacher_hash and _untimed(a.history) == _untimed(b.history)
    assert a.teacher_hash != default.teacher_hash
    assert SpeechTeacher.load(tmp_path / "a").hash == a.teacher_hash
    x = torch.randn(5, 3, 32, generator=torch.Generator().manual_seed(1))
    p = a.teacher.probs_from_features(x)
    assert p.shape == (5, len(ravdess.classes)) and np.allclose(p.sum(1), 1, atol=1e-5)
    if key != "patience":  # the weights themselves move (patience may stop at a best epoch the default also kept)
        wa = a.teacher.head.state_dict()["members.1.linear.weight" if key == "ensemble" else "linear.weight"]
        assert not torch.equal(wa, default.teacher.head.state_dict()["linear.weight"])


def test_patience_stops_after_that_many_epochs_without_a_better_one(ravdess, base_cfg, tmp_path):
    cfg = replace(base_cfg, epochs=12, patience=2, lr=3e-2)  # a high rate: validation stalls early
    res = _fit(ravdess, cfg, tmp_path / "p")
    assert len(res.history) == min(cfg.epochs, res.best_epoch + cfg.patience) < cfg.epochs  # stopped early
    scores = [(r["val_uar"] + r["val_uar_pieces"]) / 2 for r in res.history]
    assert max(scores[res.best_epoch:], default=-1) <= scores[res.best_epoch - 1] + 1e-5
    full = _fit(ravdess, replace(cfg, patience=0), tmp_path / "f")
    assert len(full.history) == 12
    assert _untimed(full.history)[: len(res.history)] == _untimed(res.history)


def test_refit_keeps_the_selection_and_trains_on_every_training_speaker(ravdess, base_cfg, default_fit, tmp_path):
    res = _fit(ravdess, replace(base_cfg, refit=True), tmp_path / "r")
    # the epoch is picked exactly as without refit; only the kept head is then trained again, on all of it
    assert _untimed(res.history) == _untimed(default_fit.history) and res.best_epoch == default_fit.best_epoch
    rec = res.teacher.record
    assert rec["refit"] == {"epochs": res.best_epoch, "n_train": len(ravdess.items)}
    assert rec["n_train"] + rec["n_val"] == len(ravdess.items) and rec["n_val"] > 0
    assert not res.teacher.head.training
    loaded = SpeechTeacher.load(tmp_path / "r")
    assert loaded.cfg.refit and loaded.record["refit"] == rec["refit"]
    x = torch.randn(4, 3, 32, generator=torch.Generator().manual_seed(2))
    assert np.allclose(loaded.probs_from_features(x), res.teacher.probs_from_features(x), atol=1e-6)


def test_ensemble_is_the_mean_of_its_members_and_the_first_is_the_single_head(ravdess, base_cfg, default_fit, tmp_path):
    res = _fit(ravdess, replace(base_cfg, ensemble=3), tmp_path / "e")
    heads = res.teacher.head.members
    assert len(heads) == 3
    single = default_fit.teacher.head.state_dict()
    assert all(torch.equal(v, heads[0].state_dict()[k]) for k, v in single.items())  # member 0: the seed-3 fit
    rec = res.teacher.record
    assert [m["best_epoch"] for m in rec["members"]][0] == default_fit.best_epoch
    for k, m in enumerate(rec["members"]):  # each member holds out its own seed's speakers (seeds 3, 4, 5)
        held_out = {it.speaker for it in speaker_split(ravdess.items, base_cfg.val_fraction, base_cfg.seed + k)[1]}
        assert m["val_speakers"] == sorted(held_out)
    assert res.val_uar == pytest.approx(np.mean([m["val_uar"] for m in rec["members"]]))
    x = torch.randn(6, 3, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        members = torch.stack([torch.softmax(h(x), -1) for h in heads]).mean(0).numpy()
    assert np.allclose(res.teacher.probs_from_features(x), members, atol=1e-6)
    loaded = SpeechTeacher.load(tmp_path / "e")
    assert loaded.hash == res.teacher_hash and loaded.cfg.ensemble == 3
    assert np.allclose(loaded.probs_from_features(x), members, atol=1e-6)
    assert len(loaded.layer_weights()) == 3  # the tiny backbone's states, averaged over members


def test_bad_values_are_refused_before_any_data_is_read(tmp_path):
    from liser.core.config import Config
    from liser.teachers.pipeline import speech_teacher_config

    bad = [dict(utt_weight=2.0),  # without train_pieces
           dict(train_pieces=True, utt_weight=0.0), dict(label_smoothing=1.0), dict(patience=-1),
           dict(mode="lora", refit=True), dict(ensemble=0), dict(mode="lora", ensemble=2)]
    for kw in bad:
        with pytest.raises(LiserError, match="speech teacher"):
            SpeechTeacherConfig(**kw).check()
    with pytest.raises(LiserError, match="utt_weight"):
        speech_teacher_config(Config(), ["utt_weight=2"])
    SpeechTeacherConfig(train_pieces=True, **OPTIONS).check()
