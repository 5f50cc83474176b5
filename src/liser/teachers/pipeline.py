"""From a student config to the soft-label stores it reads: the teachers' side of the pipeline.

- `fit_speech_teachers(cfg)`: one speech teacher per fold, trained on that
  fold's training speakers only (so no test speaker reaches the student
  through the teacher), on the student's classes (labels through
  `class_map`, only `classes`), in `<work>/teachers/<set>/speech-fold<k>/`
  (`teacher_set`: the corpus, or the pool of `labeled` corpora with its
  class count and fold scheme), with `eval.json`: its test UAR (whole
  utterances and 0.5 s pieces averaged per file) and its calibration on the
  fold's validation speakers, and `trained_on.json`: the digest of its
  training items and its classes. A folder fitted on other items or
  classes is refused (`claim_teacher_dir`), never reused.
- `label_speech(cfg)`: the unlabeled pool (`cfg.unlabeled`, merged) labeled
  by each fold's teacher into `cfg.speech_store` ({fold}, {teachers}, {work}
  filled in), and with `teach_views` K its K views too.
- `extract_pool_faces(cfg)`: face tracks of every video in the pool.
- `label_video(cfg)`: the video teacher's store `cfg.video_store`.

Every step skips what is already done, so re-running resumes.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from liser.core.config import Config
from liser.core.errors import LiserError
from liser.teachers.store import store_complete
from liser.core.atomic import atomic_write_text
from liser.data.workspace import (claim_teacher_dir, class_mapped_manifest, faces_dir, fold_indices, fold_items,
                                   fold_pool, labeled_manifest, speech_store, teacher_dir, training_record,
                                   unlabeled_pool, video_store)


def speech_teacher_config(cfg: Config, overrides: list[str] | tuple = ()):
    """SpeechTeacherConfig from the YAML named by cfg.speech_teacher, then `key=value` overrides.

    Read by liser.core.config's one loader: an unknown key or a wrong type
    (`--teacher-set epochs=many`) is a LiserError naming the key, raised here,
    before any data is read. A relative local `backbone` folder is made
    absolute, since runs may change directory.
    """
    from liser.core.config import load_dataclass
    from liser.teachers.speech.teacher import SpeechTeacherConfig

    if cfg.speech_teacher and not Path(cfg.speech_teacher).is_file():
        raise LiserError(f"{cfg.speech_teacher}: no such speech-teacher config (speech_teacher)")
    tcfg = load_dataclass(SpeechTeacherConfig, cfg.speech_teacher or None, overrides, flag="--teacher-set")
    local = Path(tcfg.backbone)
    if cfg.speech_teacher and not local.is_absolute() and local.exists():
        tcfg = dataclasses.replace(tcfg, backbone=str(local.resolve()))
    tcfg.check()  # values no fit can use (utt_weight without train_pieces, ...) fail here too
    return tcfg


def fit_speech_teachers(cfg: Config, folds=None, overrides=(), progress: bool = True) -> list[dict]:
    """Fit (or reuse) each fold's speech teacher and write its eval.json; returns the evals.

    Each teacher is trained on its fold's training items with every labeled
    file (label_fraction 1: the teacher is not what a label-fraction row
    varies), labels through cfg.class_map and only cfg.classes, so its
    classes are the student's. Raises LiserError when a fold's folder holds
    a teacher fitted on other items or classes (claim_teacher_dir).
    """
    import numpy as np

    from liser.teachers.calibration import ece, fit_temperature, plot_reliability, temper
    from liser.teachers.speech.teacher import SpeechTeacher, evaluate_speech_teacher, fit_speech_teacher

    tcfg = speech_teacher_config(cfg, overrides)
    raw = labeled_manifest(cfg)
    evals = []
    for k in fold_indices(cfg, raw, folds):
        fcfg = cfg.replace(fold=k, label_fraction=1.0)
        train, val, test, classes = fold_items(fcfg, raw)
        manifest = class_mapped_manifest(cfg, raw, classes)  # the labels the teacher learns: the student's
        out = teacher_dir(cfg, k)
        claim_teacher_dir(out, training_record(train, classes), speakers={it.speaker for it in train})
        ev_path = out / "eval.json"
        if ev_path.is_file():
            evals.append(json.loads(ev_path.read_text()))
            continue
        if (out / "teacher.json").is_file():
            teacher = SpeechTeacher.load(out)
        else:
            res = fit_speech_teacher(manifest, [it.id for it in train], out, tcfg, progress=progress, classes=classes)
            teacher = res.teacher
        te = evaluate_speech_teacher(teacher, manifest, [it.id for it in test], progress=progress)
        va = evaluate_speech_teacher(teacher, manifest, [it.id for it in val], progress=progress)
        # calibration of what the student is taught from: piece probabilities averaged per file
        ids = [it.id for it in val]
        probs = np.array([va["per_item_probs_pieces"][i] for i in ids])
        y = np.array([classes.index(it.label) for it in val])
        t = fit_temperature(probs, y)
        plot_reliability(probs, y, out / "reliability.png", f"speech teacher fold {k}")
        ev = {"teacher": f"speech:{Path(teacher.backbone).name}:{teacher.mode}", "fold": k, "hash": teacher.hash,
              "uar": te["uar"], "war": te["war"], "uar_pieces": te["uar_pieces"], "war_pieces": te["war_pieces"],
              "val_uar": va["uar"], "n_test": te["n"],
              "calibration": {"ece": ece(probs, y), "temperature": t, "ece_tempered": ece(temper(probs, t), y),
                              "mean_confidence": float(probs.max(1).mean()),
                              "accuracy": float((probs.argmax(1) == y).mean())}}
        atomic_write_text(ev_path, json.dumps(ev, indent=1) + "\n")
        evals.append(ev)
        print(f"speech teacher fold {k}: test UAR {ev['uar']:.3f} (0.5 s pieces {ev['uar_pieces']:.3f}), "
              f"val ECE {ev['calibration']['ece']:.3f}", flush=True)
    return evals


def label_speech(cfg: Config, folds=None, shard=(0, 1), overrides=(), progress: bool = True) -> list[str]:
    """Label the unlabeled pool with each fold's speech teacher; returns the store paths."""
    from liser.data.views import teaching_views
    from liser.teachers.speech.teacher import SpeechTeacher
    from liser.teachers.speech.label import label_with_speech_teacher

    if not speech_store(cfg, 0):
        raise LiserError("speech_store: the config names no store to write (speech_store, or a speech entry of teachers)")
    fit_speech_teachers(cfg, folds, overrides, progress)
    views = teaching_views(cfg)  # teach_views: the teacher labels views of every pool item too
    noise = views.noise(cfg.work) if views is not None else None  # the background noise bank, loaded once
    key = views.tag(noise) if views is not None else ""
    out = []
    for k in fold_indices(cfg, labeled_manifest(cfg), folds):
        pool = fold_pool(cfg, k)  # the pool, and for loco-adapt the fold's unlabeled half of its held-out corpus
        store = speech_store(cfg, k)
        teacher = SpeechTeacher.load(teacher_dir(cfg, k))
        out.append(store)
        if store_complete(store, [it.id for it in pool.items], teacher.hash, views.k if views else 0, key):
            continue
        res = label_with_speech_teacher(teacher, pool, store, shard=shard, progress=progress, views=views,
                                        noise=noise)
        print(f"{store}: {'complete' if res is not None else 'shard done; other shards pending'}", flush=True)
    return out


def extract_pool_faces(cfg: Config, shard=(0, 1), progress: bool = True) -> dict:
    from liser.data.faces import extract_faces_manifest

    return extract_faces_manifest(unlabeled_pool(cfg, videos_only=True), faces_dir(cfg), size=cfg.face_size,
                                  shard=shard, progress=progress)


def label_video(cfg: Config, shard=(0, 1), progress: bool = True) -> str:
    """Faces (if not yet extracted) then the video teacher's store."""
    from liser.teachers.video.teacher import label_with_video_teacher, load_video_teacher

    if not video_store(cfg):
        raise LiserError("video_store: the config names no store to write (video_store, or a video entry of teachers)")
    teacher = load_video_teacher(cfg.video_teacher)
    pool = unlabeled_pool(cfg, videos_only=True)
    store = video_store(cfg)
    if store_complete(store, [it.id for it in pool.items], teacher.hash):
        return store
    extract_pool_faces(cfg, shard, progress)
    res = label_with_video_teacher(teacher, pool, faces_dir(cfg), store, shard=shard, progress=progress)
    print(f"{store}: {'complete' if res is not None else 'shard done; other shards pending'}", flush=True)
    return store
