"""`liser adapt FOLDER -o OUT`: a student adapted to a folder of the user's own unlabeled recordings.

What it does, all under OUT (resumable: each step keeps what it finished):

    work/manifest     every audio or video file of FOLDER (others listed and skipped: liser.data.corpora.generic)
    work/store        with --teacher: its soft labels of every 0.5 s piece (VAD-masked; liser.teachers.store)
    work/features     the log-Mel cache of the files
    best.pt           the adapted student (liser.student.adapt). With a teacher: its labels through g_sup,
                      anchored to the start, the epoch that agrees best with the teacher on held-out check
                      files. Without one: the start with the folder's BatchNorm statistics (AdaBN)
    liser-adapted.onnx, liser-adapted-int8.onnx    exported and checked on the check files (liser.inference.export)
    adapt.json, MODEL_CARD.md                      what it was adapted on and what could be measured

The start is the model named (`--model`: a run folder or its best.pt), by
default the packaged default model's weights. One file in CHECK_EVERY is held
out (chosen by a hash of its id, so a resumed run holds out the same files):
the adapted student never trains on (or reads) it; with a teacher, its
agreement with the teacher there chooses the epoch and is reported. With no
labels, that agreement, the label shares and the files whose label changed
are what can be measured; the card says so.
"""

from __future__ import annotations

import json
import sys
import zlib
from pathlib import Path

import numpy as np

from liser.core.errors import LiserError
from liser.core.outputs import Kind, check_out_dir

CHECK_EVERY = 5  # one file in 5 is held out for the checks
FEW_CHECK_FILES = 20  # fewer held-out files than this: the card says its figures mean little
FEW_ADAPT_FILES = 20  # BatchNorm statistics of fewer recordings than this: the card says they describe those files
# a finished adapt folder holds adapt.json; an interrupted one only the names below (resumable)
ADAPT = Kind("adapt folder", lambda d: (d / "adapt.json").is_file(),
             ("work", "best.pt", "liser-adapted*.onnx", "adapt.json", "MODEL_CARD.md", ".*tmp*"), resumable=True)


def is_check(item_id: str) -> bool:
    """Whether a file is held out from adaptation (stable across runs: crc32 of its id)."""
    return zlib.crc32(item_id.encode()) % CHECK_EVERY == 0


def split_ids(ids: list[str]) -> tuple[list[str], list[str]]:
    """(adapt, check) ids; with fewer than 2 files the one file is both (nothing to hold out)."""
    check = [i for i in ids if is_check(i)]
    adapt = [i for i in ids if not is_check(i)]
    if len(ids) >= 2 and (not check or not adapt):  # a tiny folder: hold out the last file
        adapt, check = ids[:-1], ids[-1:]
    return (adapt or ids), (check or ids)


def start_checkpoint(model: str | Path | None) -> tuple[Path, dict]:
    """(path, checkpoint) of the student to start from: `model` (a run folder, a best.pt, or a packaged
    model's name: "phone"), or the packaged default model's weights."""
    from liser.inference.default_model import default_checkpoint_path, packaged
    from liser.student.checkpoint import read_checkpoint

    path = Path((packaged(model, "pt") or model) if model else default_checkpoint_path())
    if path.is_dir():
        path = path / "best.pt"
    if not path.is_file():
        raise LiserError(f"{path}: no such checkpoint (--model takes a run folder or its best.pt)")
    return path, read_checkpoint(path)


def scan_folder(folder: str | Path, work: Path, progress: bool):
    """The folder's manifest as it is now (scanned every run: the folder may have changed), kept in work/manifest;
    each file that is not a readable recording is said on stderr, one line, and left out."""
    from liser.data.corpora.generic import prepare_unlabeled

    manifest = prepare_unlabeled(folder, progress=progress)
    manifest.save(work / "manifest")
    for r in manifest.rejected:
        print(f"liser: {Path(folder) / r['path']}: {r['reason']}", file=sys.stderr, flush=True)
    return manifest


def label_folder(folder: str | Path, work: Path, teacher, progress: bool):
    """(manifest, store) of the folder as it is now (scan_folder), labeled by `teacher` (a SpeechTeacher;
    resumable: files already in the store keep their labels, new ones are labeled)."""
    from liser.teachers.speech.label import label_with_speech_teacher
    from liser.teachers.store import SoftLabelStore, store_complete

    manifest = scan_folder(folder, work, progress)
    store = work / "store"
    if not store_complete(str(store), [it.id for it in manifest.items], teacher.hash):
        label_with_speech_teacher(teacher, manifest, store, progress=progress)
    return manifest, SoftLabelStore(store)


def load_teacher(teacher: str | Path | None, classes: list[str]):
    """The speech teacher (None without one); raises LiserError for a teacher of other classes than the student's."""
    if teacher is None:
        return None
    from liser.teachers.speech.teacher import SpeechTeacher

    t = SpeechTeacher.load(teacher)
    if list(t.classes) != list(classes):
        raise LiserError(f"{teacher}: the teacher's classes {t.classes} are not the student's {list(classes)}")
    return t


def adapt(folder: str | Path, out: str | Path, teacher: str | Path | None = None, model: str | Path | None = None,
          options=None, threads: int = 2, progress: bool = True, say=print) -> dict:
    """Adapt a student to the recordings under `folder` (see the module docstring); returns adapt.json's content.

    `teacher`: a speech teacher folder (liser.teachers.speech.teacher.SpeechTeacher.save) whose classes are the
    student's: its soft labels are distilled (liser.student.adapt.adapt_student). None: only the student's
    BatchNorm statistics are re-estimated on the folder (liser.student.adapt.renormalise; no training).
    Raises LiserError for an output folder liser may not write, a teacher of other classes, or a folder with no
    readable recording.
    """
    from liser.core.atomic import atomic_write_text
    from liser.core.util import torch_threads
    from liser.data.features import build_features
    from liser.student.adapt import AdaptOptions, teacher_file_labels
    from liser.student.checkpoint import save, student_checkpoint, student_from_checkpoint

    if Path(folder).resolve() in Path(out).resolve().parents:
        raise LiserError(f"{out}: inside the folder of recordings {folder}; write the adapted model elsewhere")
    out = check_out_dir(out, ADAPT, inputs=[(folder, "folder of recordings")])
    options = options or AdaptOptions()
    start_path, ck = start_checkpoint(model)
    classes = list(ck["classes"])
    t = load_teacher(teacher, classes)  # a wrong teacher is said before the folder is read
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    manifest, store = label_folder(folder, work, t, progress) if t else (scan_folder(folder, work, progress), None)
    cache = build_features(manifest, work, threads=threads, progress=progress).load_into_memory()
    ids = [it.id for it in manifest.items if store is None or it.id in store]
    if not ids:
        raise LiserError(f"{folder}: no recording could be {'labeled' if t else 'read'} (see the skipped files above)")
    adapt_ids, check_ids = split_ids(ids)
    windowing = (ck.get("front_end") or {}).get("windowing", "pad")
    check, frames = [cache.frames(i) for i in check_ids], [cache.frames(i) for i in adapt_ids]
    teacher_labels = teacher_file_labels(store, check_ids) if t else None
    start = student_from_checkpoint(ck, str(start_path))
    with torch_threads(max(1, threads)):  # torch's thread count for this call only
        if t is None:
            adapted, done = _renormalise(start, frames, windowing, say)
        else:
            adapted, done = _distil(start, store, frames, adapt_ids, (check, teacher_labels), windowing, options, say)
            done = {"teacher": str(teacher), "teacher_hash": t.hash, **done}
    heads = ck.get("teacher_classes") or {"sd": classes, "vd": list(ck.get("video_classes") or [])}
    save(student_checkpoint(adapted, classes, heads, _start_config(ck), done.get("kept_epoch", 0), {}), out / "best.pt")
    report = {"method": "distillation" if t else "batchnorm", "folder": str(folder), "files": len(ids),
              "adapt_files": len(adapt_ids), "check_files": len(check_ids), "skipped": len(manifest.rejected),
              "audio_hours": round(sum(it.duration for it in manifest.items) / 3600, 3),
              "start": str(start_path), "start_is_default_model": _is_default(start_path), **done,
              **label_shares(start, adapted, check, windowing, classes, teacher_labels)}
    report["export"] = _export(out, manifest, check_ids, threads, say)
    atomic_write_text(out / "adapt.json", json.dumps(report, indent=1) + "\n")
    atomic_write_text(out / "MODEL_CARD.md", model_card(report))
    return report


def _renormalise(start, frames: list, windowing: str, say) -> tuple[object, dict]:
    """(the start with the folder's BatchNorm statistics, what adapt.json records of it)."""
    from liser.student.adapt import renormalise

    say(f"adapt: BatchNorm statistics of {len(frames)} recordings (no teacher)")
    return renormalise(start, frames, windowing), {}


def _distil(start, store, frames: list, ids: list[str], check: tuple[list, np.ndarray], windowing: str, options,
            say) -> tuple[object, dict]:
    """(the student distilled from the teacher's labels in `store`, what adapt.json records of it); `check`:
    the held-out files' frames and the teacher's labels of them."""
    import copy

    from liser.student.adapt import adapt_student
    from liser.student.train import Unlabeled

    pool = Unlabeled(frames, ids, {"teacher": store})
    adapted, rows = adapt_student(copy.deepcopy(start), pool, check, windowing, options, say)
    kept = max(rows, key=lambda r: r["agreement"])  # the epoch adapt_student kept (the first of the best)
    return adapted, {"kept_epoch": kept["epoch"], "options": dict(options.__dict__), "epochs": rows,
                     "agreement_before": rows[0]["agreement"], "agreement_after": kept["agreement"]}


def _export(out: Path, manifest, check_ids: list[str], threads: int, say) -> dict:
    """The adapted student as fp32 and int8 ONNX, checked on the held-out files (liser.inference.export)."""
    from liser.inference.export import export_onnx

    by_id = {it.id: it for it in manifest.items}
    files = [str(manifest.abspath(by_id[i])) for i in check_ids]
    rep = export_onnx(out, out / "liser-adapted.onnx", int8=out / "liser-adapted-int8.onnx", check_files=files,
                      threads=threads, say=say)
    return {k: rep[k] for k in ("onnx", "int8", "int8_method", "int8_agreement", "int8_ms_per_window",
                                "fp32_ms_per_window") if k in rep}


def model_card(r: dict) -> str:
    """MODEL_CARD.md of an adapted student: what it was adapted on, from what, and what could be measured."""
    taught = r["method"] == "distillation"
    how = (f"with the soft labels of the speech teacher `{r['teacher']}` (hash {r['teacher_hash'][:12]}), epoch "
           f"{r['kept_epoch']} of {r['options']['epochs']} kept" if taught else
           "by re-estimating its BatchNorm statistics on them (AdaBN, Li et al. 2016): no teacher and no training, "
           "the weights are the start's")
    lines = [f"# liser student adapted to {r['folder']}", "",
             f"Started from `{r['start']}`, adapted on {r['adapt_files']} of the folder's {r['files']} files "
             f"({r['audio_hours']} h in all; {r['skipped']} skipped) {how}. `liser predict liser-adapted-int8.onnx "
             f"FILE` runs it{_speed(r.get('export') or {})}.", "",
             "No file of the folder has a label, so its accuracy is not known. What could be measured, on the "
             f"{r['check_files']} held-out files it never {'trained on' if taught else 'read'} (both models in "
             "PyTorch):", "",
             "| | start | adapted |", "|---|---|---|"]
    if taught:
        lines.append(f"| agreement with the teacher (UAR against its labels) | {r['agreement_before']:.3f} | "
                     f"{r['agreement_after']:.3f} |")
    for c in r["label_share_before"]:
        of_teacher = f" (teacher {r['teacher_label_share'][c]:.2f})" if taught else ""
        lines.append(f"| share labelled {c}{of_teacher} | {r['label_share_before'][c]:.2f} | "
                     f"{r['label_share_after'][c]:.2f} |")
    lines += ["", f"{r['changed_vs_start']:.0%} of the held-out files changed label against the start. " + (
        "The teacher is not ground truth: where it is wrong on these recordings, the adapted student learned its "
        "mistakes too (docs/results/adapt.md: on small folders of acted corpora adaptation lowered accuracy). "
        if taught else
        "The statistics are the folder's: use the model on recordings like them (the same microphones, rooms and "
        "voices); on corpora it never heard this raised accuracy on most and lowered it where the folder held "
        "other voices than the test (docs/results/adapt.md). ") + "Check a sample by ear before relying on it."]
    if not taught and r["adapt_files"] < FEW_ADAPT_FILES:
        lines += ["", f"**The statistics come from {r['adapt_files']} recordings only**: they describe those "
                  "recordings more than the place they were made in. Adapt on more of them if you can."]
    if taught and r["kept_epoch"] == 0:
        lines += ["", "**No epoch agreed with the teacher better than the start did: this model is the start, "
                  "unchanged.**"]
    if r["check_files"] < FEW_CHECK_FILES:
        lines += ["", f"Only {r['check_files']} file{'s were' if r['check_files'] != 1 else ' was'} held out: too "
                  "few for the figures above to mean much "
                  f"(a folder of {FEW_CHECK_FILES * CHECK_EVERY} or more recordings gives {FEW_CHECK_FILES})."]
    if r.get("start_is_default_model"):
        lines += ["", "Built from the packaged default model's weights: its licence terms apply to this model too "
                  "(research and non-commercial use; see the default model's card, liser/inference/default/MODEL_CARD.md)."]
    return "\n".join(lines + [""])


def _speed(export: dict) -> str:
    """The int8 file's kind and speed against fp32, as the export measured them ("" when it did not)."""
    if "int8_ms_per_window" not in export:
        return ""
    return (f" (int8 {export['int8_method']}: {export['int8_ms_per_window']:.2f} ms a window on one thread, "
            f"label agreement with fp32 {export['int8_agreement']:.1%}; `liser-adapted.onnx`, fp32: "
            f"{export['fp32_ms_per_window']:.2f} ms)")


def _is_default(path: Path) -> bool:
    from liser.inference.default_model import DEFAULT_PT

    return Path(path).resolve() == DEFAULT_PT.resolve()


def _start_config(ck: dict):
    """The start's Config (windowing and the rest travel into the adapted checkpoint)."""
    from liser.core.config import Config

    return Config.from_dict({k: v for k, v in (ck.get("config") or {}).items()}, "the start's checkpoint")


def label_shares(start, adapted, frames: list, windowing: str, classes: list[str], teacher_labels=None) -> dict:
    """What can be measured without labels, on the check files: each model's (and the teacher's, when given: int
    [N]) share of each label, and the share of files whose label changed against the start."""
    from liser.student.evaluate import file_logits

    a = file_logits(start, frames, 0.5, windowing=windowing).argmax(1)  # each model scored once
    b = file_logits(adapted, frames, 0.5, windowing=windowing).argmax(1)
    share = lambda p: {c: round(float((p == k).mean()), 4) for k, c in enumerate(classes)}
    out = {"label_share_before": share(a), "label_share_after": share(b), "changed_vs_start": round(float((a != b).mean()), 4)}
    if teacher_labels is not None:
        out["teacher_label_share"] = share(np.asarray(teacher_labels))
    return out
