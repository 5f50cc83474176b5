"""Training a student for one fold: joint mini-batches, the loop, checkpoints, resume.

`train(cfg)` writes a run directory `<out>/<name>/fold<k>/`:

    config.yaml    the resolved configuration
    epochs.csv     one row per epoch (losses, validation UAR/WAR, seconds)
    last.pt        model + optimiser + RNG state after the last finished epoch (resume)
    best.pt        the self-describing student of the best validation-UAR epoch
    metrics.json   test (and validation) UAR, WAR, per-class recall, confusion
    confusion.png  the test confusion matrix

Mini-batches hold `batch_size` labeled items (random 3 s crop of the cached
log-Mel, CE through g_sup) and, when distilling, `unlabeled_batch`
unlabeled items (random 3 s crop; targets = mean of the teacher's 0.5 s
pieces inside the same window, from the soft-label stores). An interrupted
run resumes from its last completed epoch; a finished run is skipped.
"""

from __future__ import annotations

import csv
import json
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import audio
from .config import Config
from .errors import LiserError


# ---------------------------------------------------------------- data
def labeled_manifest(cfg: Config):
    """The prepared labeled manifest (prepared into <work>/manifests/<corpus> on first use)."""
    from .corpora import Manifest, prepare

    path = Path(cfg.manifest) if cfg.manifest else Path(cfg.work) / "manifests" / cfg.corpus
    if (path / "meta.json").is_file():
        return Manifest.load(path)
    if cfg.manifest:
        raise LiserError(f"{path}: no such manifest (run `liser prepare`)")
    m = prepare(cfg.corpus, cfg.root)
    m.save(path)
    return m


def unlabeled_manifests(cfg: Config) -> list:
    """Each `unlabeled` entry, "adapter:root" or a manifest dir, prepared once under <work>/manifests."""
    import hashlib

    from .corpora import Manifest, prepare

    out = []
    for spec in cfg.unlabeled:
        if Path(spec, "meta.json").is_file():
            out.append(Manifest.load(spec))
            continue
        if ":" not in spec:
            raise LiserError(f"unlabeled: {spec!r} is neither a manifest directory nor adapter:root")
        adapter, root = spec.split(":", 1)
        key = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:8]
        path = Path(cfg.work) / "manifests" / f"unlabeled-{adapter}-{key}"
        if (path / "meta.json").is_file():
            out.append(Manifest.load(path))
            continue
        m = prepare(adapter, root)
        m.corpus = f"{m.corpus}"
        m.items = [type(it)(**{**it.__dict__, "label": ""}) for it in m.items]  # labels are ignored
        m.save(path)
        out.append(m)
    return out


def fold_items(cfg: Config, manifest):
    """(train, val, test) items of cfg.fold, with classes filtered and the label fraction applied."""
    from .folds import check_folds, folds_for_manifest, load_folds

    name = cfg.folds or manifest.corpus
    try:
        folds = load_folds(name)
    except LiserError:
        if cfg.folds:
            raise
        folds = folds_for_manifest(manifest, seed=cfg.seed)
    check_folds(folds, manifest, source=name)
    fold = folds[cfg.fold]
    classes = list(cfg.classes) if cfg.classes else manifest.classes
    unknown = set(classes) - set(manifest.classes)
    if unknown:
        raise LiserError(f"classes: {sorted(unknown)} not in the {manifest.corpus} labels {manifest.classes}")
    keep = [it for it in manifest.items if it.label in classes]
    train = [it for it in keep if it.speaker in set(fold.train)]
    val = [it for it in keep if it.speaker in set(fold.val)]
    test = [it for it in keep if it.speaker in set(fold.test)]
    if not 0 < cfg.label_fraction <= 1:
        raise LiserError(f"label_fraction must be in (0, 1], got {cfg.label_fraction}")
    if cfg.label_fraction < 1:
        train = stratified_fraction(train, cfg.label_fraction, cfg.seed)
    return train, val, test, classes


def stratified_fraction(items, fraction: float, seed: int):
    """A class-stratified subset holding `fraction` of each class (at least one file per class)."""
    rng = random.Random(seed)
    out = []
    for label in sorted({it.label for it in items}):
        members = [it for it in items if it.label == label]
        rng.shuffle(members)
        out.extend(members[: max(1, round(fraction * len(members)))])
    return sorted(out, key=lambda it: it.id)


@dataclass
class Unlabeled:
    """The unlabeled pool of a run: features plus the stores that give its targets."""

    frames: list  # per item [frames, 64] arrays
    ids: list[str]
    speech: object | None  # SoftLabelStore
    video: object | None  # SoftLabelStore


def load_unlabeled(cfg: Config, work: Path, progress: bool) -> Unlabeled | None:
    from .features import build_features
    from .teachers.store import SoftLabelStore

    use_sd = cfg.lambda_sd > 0 and cfg.speech_store
    use_vd = cfg.lambda_vd > 0 and cfg.video_store
    if not (use_sd or use_vd):
        return None
    speech = SoftLabelStore(cfg.speech_store.format(fold=cfg.fold)) if use_sd else None
    video = SoftLabelStore(cfg.video_store.format(fold=cfg.fold)) if use_vd else None
    frames, ids = [], []
    for m in unlabeled_manifests(cfg):
        cache = build_features(m, work, threads=cfg.threads or 2, progress=progress).load_into_memory()
        for it in m.items:
            if (speech is not None and it.id in speech) or (video is not None and it.id in video):
                frames.append(cache.frames(it.id))
                ids.append(it.id)
    if not ids:
        raise LiserError(f"no unlabeled item has a soft label in {cfg.speech_store or cfg.video_store}")
    return Unlabeled(frames, ids, speech, video)


def fitted_temperature(cfg: Config, store) -> float:
    """The temperature fitted on validation for the teacher that wrote `store` (its eval.json, same hash)."""
    from .teachers.pipeline import teacher_dir

    path = teacher_dir(cfg, cfg.fold) / "eval.json"
    if not path.is_file():
        raise LiserError(f"{path}: temperature_sd 0 (fitted) needs the teacher's evaluation; run `liser teacher fit speech`")
    e = json.loads(path.read_text())
    if e.get("hash") != store.teacher_hash:
        raise LiserError(f"{path}: evaluates another teacher than the one that wrote {store.path}; re-run `liser teacher fit speech`")
    t = (e.get("calibration") or {}).get("temperature")
    if not t or t <= 0:
        raise LiserError(f"{path}: holds no fitted temperature")
    return float(t)


def random_crop(frames: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """A random 94-frame window of an item's features: ([64, 94] float32, start frame)."""
    last = len(frames) - audio.CLIP_FRAMES
    start = int(rng.integers(0, last + 1)) if last > 0 else 0
    return np.asarray(frames[start : start + audio.CLIP_FRAMES], dtype=np.float32).T, start


def unlabeled_batch(pool: Unlabeled, idx: np.ndarray, rng: np.random.Generator):
    """Crops and their window targets: x [B,64,94]; (targets, mask) per teacher."""
    import torch

    xs, sd_t, sd_m, vd_t, vd_m = [], [], [], [], []
    for i in idx:
        x, start = random_crop(pool.frames[i], rng)
        xs.append(x)
        t0 = float(audio.frames_to_seconds(start))
        for store, tl, ml in ((pool.speech, sd_t, sd_m), (pool.video, vd_t, vd_m)):
            if store is None:
                continue
            if pool.ids[i] in store:
                p, n = store.window(pool.ids[i], t0)
            else:
                p, n = np.zeros(len(store.classes), np.float32), 0
            tl.append(p)
            ml.append(n > 0)

    def pack(t, m):
        return (torch.from_numpy(np.stack(t)), torch.tensor(m)) if t else (None, None)

    return torch.from_numpy(np.stack(xs)), pack(sd_t, sd_m), pack(vd_t, vd_m)


# ---------------------------------------------------------------- checkpoints
def student_checkpoint(model, classes, video_classes, cfg: Config, epoch: int, val: dict) -> dict:
    """A self-describing student: plain types and tensors only (loads with weights_only=True)."""
    from . import __version__

    return {
        "format": "liser-student",
        "liser_version": __version__,
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "classes": list(classes),
        "video_classes": list(video_classes),
        "front_end": {"sample_rate": audio.SAMPLE_RATE, "n_mels": audio.N_MELS, "win_s": audio.WIN_S,
                      "hop_s": audio.HOP_S, "clip_s": audio.CLIP_S},
        "config": cfg.to_dict(),
        "epoch": epoch,
        "val": {"uar": val.get("uar"), "war": val.get("war")},
    }


def atomic_save(obj, path: Path) -> None:
    import torch

    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def run_dir_of(cfg: Config) -> Path:
    return Path(cfg.out) / cfg.name / f"fold{cfg.fold}"


# ---------------------------------------------------------------- the loop
def train(cfg: Config, run_dir: str | Path | None = None, progress: bool = True) -> Path:
    """Train one fold of one configuration; returns the run directory (skips a finished run)."""
    import torch
    from tqdm import tqdm

    from .evaluate import evaluate_items, head_by_class, plot_confusion
    from .features import build_features, normalisation_stats
    from .losses import joint_loss
    from .student import Student

    run = Path(run_dir) if run_dir else run_dir_of(cfg)
    if (run / "config.yaml").is_file() and (run / "metrics.json").is_file() or (run / "last.pt").is_file():
        old = Config.load(run / "config.yaml").replace(threads=cfg.threads)
        if old != cfg:
            diff = [k for k, v in cfg.to_dict().items() if old.to_dict().get(k) != v]
            raise LiserError(f"{run}: holds a run of another config (differs in {', '.join(diff)}); "
                             "remove it or change `name` / `out`")
    if (run / "metrics.json").is_file():
        return run
    if cfg.schedule not in ("joint", "two-stage"):
        raise LiserError(f"schedule must be joint or two-stage, got {cfg.schedule!r}")
    if cfg.distill_loss not in ("mae", "ce"):
        raise LiserError(f"distill_loss must be mae or ce, got {cfg.distill_loss!r}")
    if cfg.weighting not in ("none", "confidence", "entropy"):
        raise LiserError(f"weighting must be none, confidence or entropy, got {cfg.weighting!r}")
    run.mkdir(parents=True, exist_ok=True)
    cfg.save(run / "config.yaml")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    work = Path(cfg.work)

    manifest = labeled_manifest(cfg)
    train_items, val_items, test_items, classes = fold_items(cfg, manifest)
    cache = build_features(manifest, work, threads=cfg.threads or 2, progress=progress).load_into_memory()
    pool = load_unlabeled(cfg, work, progress)
    if pool is None and cfg.schedule == "two-stage":
        raise LiserError("schedule two-stage needs unlabeled data with soft labels "
                         "(unlabeled, speech_store/video_store and lambda_sd/lambda_vd > 0)")
    if pool is not None and pool.speech is not None and list(pool.speech.classes) != list(classes):
        raise LiserError(f"{pool.speech.path}: speech teacher classes {pool.speech.classes} != the student's {classes}")
    temperature_sd = fitted_temperature(cfg, pool.speech) if pool is not None and pool.speech is not None \
        and cfg.temperature_sd == 0 else cfg.temperature_sd
    video_classes = list(pool.video.classes) if pool is not None and pool.video is not None else \
        ["angry", "disgust", "fearful", "happy", "sad", "surprised", "neutral"]

    model = Student(len(classes), len(video_classes))
    mean, std = normalisation_stats(cache, [it.id for it in train_items])
    model.set_normalisation(torch.from_numpy(mean), torch.from_numpy(std))
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    cls_index = {c: i for i, c in enumerate(classes)}
    y_train = np.array([cls_index[it.label] for it in train_items])
    train_frames = [cache.frames(it.id) for it in train_items]

    start_epoch, best_uar, best_epoch, stale = 0, -1.0, -1, 0
    u_order, u_pos = np.array([], dtype=np.int64), 0  # the unlabeled pool's permutation and position in it
    rng = np.random.default_rng(cfg.seed)
    last = run / "last.pt"
    if last.is_file():  # resume after the last completed epoch
        st = torch.load(last, weights_only=True, map_location="cpu")
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        start_epoch, best_uar, best_epoch, stale = st["epoch"] + 1, st["best_uar"], st["best_epoch"], st["stale"]
        u_order, u_pos = st["u_order"].numpy(), int(st["u_pos"])
        rng.bit_generator.state = st["np_rng"]
        torch.set_rng_state(st["torch_rng"])
    log_path = run / "epochs.csv"
    if log_path.exists():  # keep only the epochs that last.pt holds (an interruption may have logged one more)
        with open(log_path, newline="") as f:
            kept = [r for r in csv.DictReader(f) if int(r["epoch"]) < start_epoch]
        log_path.unlink()
        for r in kept:
            _append_csv(log_path, r)

    n_u = cfg.unlabeled_batch if pool is not None else 0
    steps = int(np.ceil(len(train_items) / cfg.batch_size))
    epochs_bar = tqdm(range(start_epoch, cfg.epochs), desc=f"{cfg.name} fold{cfg.fold}", unit="epoch",
                      initial=start_epoch, total=cfg.epochs, disable=None if progress else True, leave=False)
    for epoch in epochs_bar:
        t0 = time.time()
        stage1 = cfg.schedule == "two-stage" and epoch < cfg.stage1_epochs
        use_l = not stage1
        use_u = pool is not None and (cfg.schedule == "joint" or stage1)
        model.train()
        order = rng.permutation(len(train_items))
        sums: dict[str, float] = {}
        n_samples = 0
        n_steps = steps if use_l else int(np.ceil(len(pool.ids) / max(n_u, 1)))
        for s in range(n_steps):
            xs, labels = [], None
            if use_l:
                idx = order[s * cfg.batch_size : (s + 1) * cfg.batch_size]
                xs = [random_crop(train_frames[i], rng)[0] for i in idx]
                labels = torch.from_numpy(y_train[idx])
            sd = vd = (None, None)
            if use_u:
                if u_pos + n_u > len(u_order):
                    u_order, u_pos = rng.permutation(len(pool.ids)), 0
                xu, sd, vd = unlabeled_batch(pool, u_order[u_pos : u_pos + n_u], rng)
                u_pos += n_u
            x = torch.from_numpy(np.stack(xs)) if xs else None
            if use_u:
                x = xu if x is None else torch.cat([x, xu])
            n_samples += len(x)
            sup, sd_logits, vd_logits = model(x)
            n_l = 0 if labels is None else len(labels)
            loss, parts = joint_loss(
                sup[:n_l] if n_l else None, labels,
                sd_logits[n_l:], sd[0], sd[1], vd_logits[n_l:], vd[0], vd[1],
                cfg.lambda_sd, cfg.lambda_vd, cfg.weighting, cfg.distill_loss,
                temperature_sd, cfg.temperature_vd,
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
        train_s = time.time() - t0
        if stage1:  # distillation-only stage: no model selection yet
            val = {"uar": float("nan"), "war": float("nan")}
        else:
            val, _ = evaluate_items(model, cache, val_items, classes, cfg.val_stride_s)
        row = {"epoch": epoch, "stage": "distil" if stage1 else "train",
               **{k: round(v / n_steps, 5) for k, v in sums.items()},
               "val_uar": round(val["uar"], 5), "val_war": round(val["war"], 5),
               "train_s": round(train_s, 2), "epoch_s": round(time.time() - t0, 2),
               "samples_per_s": round(n_samples / max(train_s, 1e-9), 1)}
        _append_csv(log_path, row)
        if not stage1 and val["uar"] > best_uar:
            best_uar, best_epoch, stale = val["uar"], epoch, 0
            atomic_save(student_checkpoint(model, classes, video_classes, cfg, epoch, val), run / "best.pt")
        elif not stage1:
            stale += 1
        atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
                     "best_uar": best_uar, "best_epoch": best_epoch, "stale": stale,
                     "np_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                     "u_order": torch.from_numpy(np.asarray(u_order, dtype=np.int64)), "u_pos": u_pos}, last)
        epochs_bar.set_postfix(val_uar=f"{val['uar']:.3f}", best=f"{best_uar:.3f}@{best_epoch}")
        if not progress:  # no bar (logs, CI, parallel workers): one line per epoch instead
            print(f"{cfg.name} fold{cfg.fold} epoch {epoch}: loss {row.get('loss', float('nan')):.4f} "
                  f"val UAR {val['uar']:.3f} (best {best_uar:.3f}@{best_epoch}) {row['epoch_s']:.1f}s",
                  file=sys.stderr, flush=True)
        if cfg.patience and stale >= cfg.patience:
            break
    epochs_bar.close()

    if not (run / "best.pt").is_file():
        raise LiserError(f"{run}: no epoch finished a validation (epochs={cfg.epochs}, stage1_epochs={cfg.stage1_epochs})")
    best = torch.load(run / "best.pt", weights_only=True, map_location="cpu")
    model.load_state_dict(best["state_dict"])
    test, test_logits = evaluate_items(model, cache, test_items, classes, cfg.test_stride_s)
    val, _ = evaluate_items(model, cache, val_items, classes, cfg.val_stride_s)
    result = {"config": cfg.name, "fold": cfg.fold, "best_epoch": best_epoch, "classes": classes,
              "n_train": len(train_items), "n_val": len(val_items), "n_test": len(test_items),
              "n_unlabeled": 0 if pool is None else len(pool.ids), "temperature_sd": temperature_sd,
              "test": test, "val": {"uar": val["uar"], "war": val["war"]},
              "video_classes": video_classes,
              "video_head_by_class": head_by_class(model, cache, test_items, classes, "vd") if cfg.lambda_vd > 0 else None,
              "test_ids": [it.id for it in test_items], "test_y": [cls_index[it.label] for it in test_items],
              "test_logits": np.round(test_logits, 4).tolist()}
    plot_confusion(test["confusion"], classes, run / "confusion.png",
                   f"{cfg.name} fold {cfg.fold}: UAR {test['uar']:.3f} WAR {test['war']:.3f}")
    tmp = run / ".metrics.json.tmp"
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, run / "metrics.json")
    last.unlink(missing_ok=True)  # finished: the resume state is no longer needed
    return run


LOG_FIELDS = ("epoch", "stage", "loss", "ce", "sd", "vd", "val_uar", "val_war", "train_s", "epoch_s", "samples_per_s")


def _append_csv(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=LOG_FIELDS)
        if new:
            w.writeheader()
        w.writerow(row)
