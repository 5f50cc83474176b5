"""Speech teachers for pooled, class-mapped training (the distilled default model, issue 12).

What a teacher folder is named by (`teacher_set`), the guard that refuses a
teacher fitted on other items or classes, the `{teachers}` / `{work}`
placeholders of the store paths, and end to end on real files: the five
small corpora of conftest (a few files per speaker and emotion), a tiny
random HuBERT as the frozen backbone, one real AV interview clip as the
unlabeled pool: LOCO and pooled teachers fitted on the six mapped classes,
the pool labeled into each teacher set's stores, a distilled LOCO student,
and the bench's distilled table.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from liser.core.config import Config
from liser.core.errors import LiserError

from conftest import CORPORA, DATA, DEFAULT_CLASSES, link_five_corpora, load_bench, real_root

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CFG = REPO / "configs" / "default-model.yaml"
DISTILL_CFG = REPO / "configs" / "default-model-distill.yaml"
POOL_NAME = "pool-cremad+emodb+ravdess+tess+urdu-6cls"


# ---------------------------------------------------------------- naming (no data read)
def test_teacher_set_of_one_corpus_is_the_corpus_as_before():
    from liser.data.workspace import teacher_dir, teacher_set, teachers_dir

    cfg = Config(corpus="emodb", work="w")
    assert teacher_set(cfg) == "emodb"
    assert teachers_dir(cfg) == Path("w/teachers/emodb")
    assert teacher_dir(cfg, 3) == Path("w/teachers/emodb/speech-fold3")
    # classes or a class map do not move a single corpus's teachers (existing stores keep their paths)
    assert teacher_dir(cfg.replace(classes=("angry", "sad"), folds="emodb"), 0) == Path("w/teachers/emodb/speech-fold0")


def test_teacher_set_of_a_pool_names_corpora_classes_and_scheme_in_any_order():
    from liser.data.workspace import teacher_dir, teacher_set

    cfg = Config.load(DEFAULT_CFG)
    assert teacher_set(cfg) == f"{POOL_NAME}-loco"
    assert teacher_dir(cfg, 2) == Path("work") / "teachers" / f"{POOL_NAME}-loco" / "speech-fold2"
    assert teacher_set(cfg.replace(folds="pooled")) == f"{POOL_NAME}-pooled"  # the pooled teacher heard every corpus
    shuffled = cfg.replace(labeled=tuple(reversed(cfg.labeled)))
    assert teacher_set(shuffled) == teacher_set(cfg)  # the order of `labeled` is no second set
    assert teacher_set(cfg.replace(classes=())) == "pool-cremad+emodb+ravdess+tess+urdu-allcls-loco"
    assert teacher_set(Config.load(DISTILL_CFG)) == f"{POOL_NAME}-loco"


def test_a_long_pool_name_keeps_a_digest_of_its_corpora():
    from liser.data.workspace import POOL_NAME_MAX, teacher_set

    names = [f"corpus{i:02d}withalongname" for i in range(6)]
    cfg = Config(labeled=tuple(f"{n}:/data/{n}" for n in names), classes=("a", "b", "c"))
    name = teacher_set(cfg)
    assert len(name) <= POOL_NAME_MAX and name.startswith("pool-6corpora-") and name.endswith("-3cls-loco")
    assert teacher_set(cfg.replace(labeled=tuple(reversed(cfg.labeled)))) == name
    other = cfg.replace(labeled=cfg.labeled[:-1] + ("corpus99withalongname:/data/x",))
    assert teacher_set(other) != name  # another corpus, another digest


def test_store_placeholders_teachers_work_and_fold():
    from liser.data.workspace import speech_store, teachers_dir, video_store

    cfg = Config.load(DEFAULT_CFG, extra={"work": "/w", "speech_store": "{teachers}/store-av-fold{fold}",
                                          "video_store": "{work}/stores/video"})
    assert speech_store(cfg, 3) == f"/w/teachers/{POOL_NAME}-loco/store-av-fold3"
    assert speech_store(cfg.replace(fold=1)) == f"/w/teachers/{POOL_NAME}-loco/store-av-fold1"
    assert speech_store(cfg, 0) == str(teachers_dir(cfg) / "store-av-fold0")
    assert video_store(cfg) == "/w/stores/video"
    assert speech_store(cfg.replace(speech_store="{work}/stores/ravdess/speech-fold{fold}"), 2) == \
        "/w/stores/ravdess/speech-fold2"
    # the single-corpus templates of the existing configs are unchanged
    assert speech_store(Config(speech_store="work/stores/ravdess/speech-fold{fold}"), 4) == "work/stores/ravdess/speech-fold4"
    assert speech_store(Config()) == "" and video_store(Config()) == ""
    with pytest.raises(LiserError, match=r"speech_store: unknown placeholder \{fodl\}"):
        speech_store(cfg.replace(speech_store="{teachers}/fold{fodl}"))
    with pytest.raises(LiserError, match=r"video_store: unknown placeholder \{fold\}"):
        video_store(cfg.replace(video_store="{work}/video-{fold}"))


# ---------------------------------------------------------------- the reuse guard, on folders alone
class _It:
    def __init__(self, id, label, speaker="s"):
        self.id, self.label, self.speaker = id, label, speaker


def test_training_record_digest_depends_on_ids_and_labels_not_order():
    from liser.data.workspace import training_record

    a = training_record([_It("x/1", "sad"), _It("x/2", "angry")], ["sad", "angry"])
    assert a == training_record([_It("x/2", "angry"), _It("x/1", "sad")], ["sad", "angry"])
    assert a["n_items"] == 2 and a["classes"] == ["sad", "angry"]
    assert training_record([_It("x/1", "sad")], ["sad", "angry"])["ids_digest"] != a["ids_digest"]
    # the same files under another class map are another teacher
    assert training_record([_It("x/1", "neutral"), _It("x/2", "angry")], ["sad", "angry"])["ids_digest"] != a["ids_digest"]


def test_claim_refuses_a_fitted_folder_of_other_items_or_classes(tmp_path):
    from liser.data.workspace import TRAINED_ON, claim_teacher_dir, training_record

    out = tmp_path / "speech-fold0"
    rec = training_record([_It("x/1", "sad"), _It("x/2", "angry")], ["sad", "angry"])
    claim_teacher_dir(out, rec)  # unfitted: claimed
    assert json.loads((out / TRAINED_ON).read_text()) == rec
    other = training_record([_It("x/1", "sad")], ["sad", "angry"])
    claim_teacher_dir(out, other)  # still unfitted (an interrupted fit): nothing to reuse, re-claimed
    claim_teacher_dir(out, rec)
    (out / "teacher.json").write_text(json.dumps({"classes": ["sad", "angry"]}))
    claim_teacher_dir(out, rec)  # fitted on the same: reused
    with pytest.raises(LiserError, match=rf"^{re.escape(str(out))}: this teacher was trained on other items \(2 files"):
        claim_teacher_dir(out, other)
    with pytest.raises(LiserError, match=rf"^{re.escape(str(out))}: this teacher was trained on classes \['sad', 'angry'\], "
                                         r"the config asks for \['sad', 'happy'\]"):
        claim_teacher_dir(out, training_record([_It("x/1", "sad"), _It("x/2", "happy")], ["sad", "happy"]))


def test_claim_checks_and_adopts_a_folder_fitted_before_records(tmp_path):
    """A teacher fitted before trained_on.json: checked on teacher.json's classes and speakers, then recorded."""
    from liser.data.workspace import TRAINED_ON, claim_teacher_dir, training_record

    out = tmp_path / "speech-fold0"
    out.mkdir()
    (out / "teacher.json").write_text(json.dumps({"classes": ["sad", "angry"], "record": {
        "train_speakers": ["a"], "val_speakers": ["b"]}}))
    rec = training_record([_It("x/1", "sad", "a"), _It("x/2", "angry", "b")], ["sad", "angry"])
    with pytest.raises(LiserError, match="trained on 2 other speakers than the config's fold"):
        claim_teacher_dir(out, rec, speakers={"a", "c"})
    with pytest.raises(LiserError, match="trained on classes"):
        claim_teacher_dir(out, {**rec, "classes": ["angry", "sad"]}, speakers={"a", "b"})
    assert not (out / TRAINED_ON).exists()
    claim_teacher_dir(out, rec, speakers={"a", "b"})
    assert json.loads((out / TRAINED_ON).read_text()) == rec


# ---------------------------------------------------------------- end to end, real files
@pytest.fixture(scope="module")
def pooled(tmp_path_factory, tiny_hubert):
    """The distilled default model's config over the five small corpora, a tiny HuBERT teacher and one AV clip."""
    real_root("av")
    base = tmp_path_factory.mktemp("pooled")
    roots = link_five_corpora(base / "data")
    clip = min((DATA / "av" / "interviews" / "id01").glob("*.mp4"), key=lambda p: p.stat().st_size)
    (base / "av" / "id01").mkdir(parents=True)
    shutil.copy(clip, base / "av" / "id01" / clip.name)
    teacher_yaml = base / "teacher.yaml"
    teacher_yaml.write_text(f"backbone: {tiny_hubert}\nmode: frozen\nepochs: 2\nbatch_size: 16\nvad: false\n"
                            f"cache_dir: {base / 'cache'}\n")
    cfg = Config.load(DISTILL_CFG, extra={
        "labeled": [f"{c}:{roots[c]}" for c in CORPORA], "unlabeled": [f"videos:{base / 'av'}"],
        "speech_teacher": str(teacher_yaml), "work": str(base / "work"), "out": str(base / "runs"),
        "epochs": 1, "threads": 1, "val_stride_s": 1.0, "test_stride_s": 1.0})
    return cfg


@pytest.fixture(scope="module")
def urdu_teacher(pooled):
    """LOCO fold 4 (URDU held out): its teacher fitted and the pool labeled. (evals, store paths)."""
    from liser.teachers import pipeline as tp

    return tp.fit_speech_teachers(pooled, folds=[4], progress=False), tp.label_speech(pooled, folds=[4], progress=False)


def test_pooled_teacher_learns_the_mapped_classes_and_labels_into_its_set(pooled, urdu_teacher):
    from liser.teachers.store import SoftLabelStore
    from liser.data.workspace import (TRAINED_ON, fold_items, labeled_manifest, teacher_dir, training_record,
                                 unlabeled_pool)

    evals, stores = urdu_teacher
    out = teacher_dir(pooled, 4)
    assert out == Path(pooled.work) / "teachers" / f"{POOL_NAME}-loco" / "speech-fold4"
    meta = json.loads((out / "teacher.json").read_text())
    assert meta["classes"] == DEFAULT_CLASSES  # six outputs in the student's order: no calm, surprised, boredom
    train, val, test, classes = fold_items(pooled.replace(fold=4), labeled_manifest(pooled))
    assert json.loads((out / TRAINED_ON).read_text()) == training_record(train, classes)
    assert {it.label for it in train} <= set(DEFAULT_CLASSES) and "urdu" not in {it.corpus for it in train}
    # the teacher trained on every mapped training file (its inner split), calm among them as neutral
    assert meta["record"]["n_train"] + meta["record"]["n_val"] == len(train)
    assert any(it.id.startswith("ravdess/") and it.label == "neutral" for it in train)
    e = evals[0]
    assert e["fold"] == 4 and e["n_test"] == len(test) == sum(1 for it in labeled_manifest(pooled).items
                                                              if it.corpus == "urdu")
    assert 0 <= e["uar"] <= 1
    # the store lives beside the teacher that wrote it, over the student's classes
    assert stores == [str(out.parent / "store-av-fold4")]
    s = SoftLabelStore(stores[0])
    assert s.classes == DEFAULT_CLASSES and s.teacher_hash == e["hash"]
    assert set(s.ids) == {it.id for it in unlabeled_pool(pooled).items}
    probs, _ = s.pieces(s.ids[0])
    assert probs.shape[1] == 6


def test_fit_or_label_refuses_a_teacher_of_other_items_or_classes(pooled, urdu_teacher):
    from liser.teachers import pipeline as tp
    from liser.data.workspace import teacher_dir

    out = teacher_dir(pooled, 4)
    fewer = pooled.replace(class_map={"calm": ""})  # calm dropped instead of joining neutral: other items
    with pytest.raises(LiserError, match=rf"^{re.escape(str(out))}: this teacher was trained on other items"):
        tp.fit_speech_teachers(fewer, folds=[4], progress=False)
    with pytest.raises(LiserError, match=rf"^{re.escape(str(out))}: this teacher was trained on other items"):
        tp.label_speech(fewer, folds=[4], progress=False)
    swapped = pooled.replace(classes=("neutral", "happy", "sad", "angry", "fearful", "surprised"))  # also 6cls
    assert teacher_dir(swapped, 4) == out
    with pytest.raises(LiserError, match=rf"^{re.escape(str(out))}: this teacher was trained on classes \['neutral', 'happy', "
                                         r"'sad', 'angry', 'fearful', 'disgust'\], the config asks for"):
        tp.fit_speech_teachers(swapped, folds=[4], progress=False)
    assert tp.fit_speech_teachers(pooled, folds=[4], progress=False) == urdu_teacher[0]  # the same config reuses it


def test_distilled_loco_student_and_the_bench_table(pooled, urdu_teacher, tmp_path):
    """One epoch of the distilled fold-4 student; a store of the pooled teacher is refused for it (a leak)."""

    from liser.teachers import pipeline as tp
    from liser.student.train import train

    run = train(pooled.replace(fold=4), progress=False)
    m = json.loads((run / "metrics.json").read_text())
    assert m["classes"] == DEFAULT_CLASSES and {i.split("/")[0] for i in m["test_ids"]} == {"urdu"}
    assert run == Path(pooled.out) / "default-model-distill-loco" / "fold4"

    # the pooled teacher (heard URDU's speakers) in its own set; its store named explicitly for a LOCO run
    pooled_cfg = pooled.replace(folds="pooled", name="default-model-distill-pooled")
    (pooled_store,) = tp.label_speech(pooled_cfg, progress=False)
    assert f"{POOL_NAME}-pooled" in pooled_store
    with pytest.raises(LiserError, match="not by this fold's teacher"):
        train(pooled.replace(fold=4, speech_store=pooled_store, name="leak"), progress=False)

    bench = load_bench("bench_default_model")
    cfg_file = tmp_path / "distill.yaml"
    pooled.save(cfg_file)
    d = bench.distill_figures(cfg_file)
    assert d["loco_distill"] == {"urdu": round(m["test"]["uar"], 4)}
    assert d["teachers_loco"]["urdu"]["uar"] == round(urdu_teacher[0][0]["uar"], 4)
    assert set(d["teachers_loco"]) == {"urdu"}  # folds 0-3 have no teacher here
    table = bench.markdown_distill({}, d)
    assert "| urdu |  |" in table
