"""Training a student for one fold: joint mini-batches, the loop, checkpoints, resume.

`train(cfg)` writes a run directory `<out>/<name>/fold<k>/` (liser.data.workspace.run_dir):

    config.yaml    the resolved configuration
    epochs.csv     one row per epoch (losses, validation UAR/WAR, seconds)
    last.pt        model + optimiser + RNG state after the last finished epoch (resume)
    best.pt        the self-describing student of the best validation-UAR epoch
    metrics.json   test (and validation) UAR, WAR, per-class recall, confusion
    confusion.png  the test confusion matrix

Mini-batches hold `batch_size` labeled items (a random 3 s crop of the cached
log-Mel, or with `windowing: speech` one 0.5-3 s length per batch cropped from
each item's speech span (`Crops`), from the clean features or one of the
`aug_views`; CE through g_sup) and, when distilling, `unlabeled_batch`
unlabeled items (random crops of the same length; targets = mean of the
teacher's 0.5 s pieces inside the same window, from the soft-label stores).
An interrupted run resumes from its last completed epoch; a finished run is
skipped.

Which items and which files a config means is liser.data.workspace's business;
this module is the loop, in named steps that `train` calls in order:

    check_run -> load_data -> build_model -> resume -> run_epoch (x epochs) -> finish
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from liser.data import audio
from liser.core.config import Config
from liser.core.device import resolve_device
from liser.core.errors import LiserError
from liser.core.atomic import atomic_write_text
from liser.student.checkpoint import load, save, student_checkpoint
from liser.data.workspace import fold_items, labeled_manifest, run_dir, store_path, teacher_dir, unlabeled_manifests

# the FER2013 order, used for a video head when no video store is read (the head exists but gets no loss)
DEFAULT_VIDEO_CLASSES = ["angry", "disgust", "fearful", "happy", "sad", "surprised", "neutral"]


def log_fields(cfg: Config) -> tuple[str, ...]:
    """The columns of epochs.csv: one loss part per teacher entry (sd and vd for the paper's two)."""
    names = tuple(e.name for e in cfg.teacher_entries())
    return ("epoch", "stage", "loss", "ce", *names, "consistency", "val_uar", "val_war", "train_s", "epoch_s",
            "samples_per_s")


# ---------------------------------------------------------------- data
@dataclass
class Unlabeled:
    """The unlabeled pool of a run: features plus the stores that give its targets."""

    frames: list  # per item [frames, 64] arrays
    ids: list[str]
    stores: dict  # teacher name -> SoftLabelStore, for the entries the config distils from, in entry order
    maps: dict = field(default_factory=dict)  # teacher name -> its class of each student class (-1: none), for
    #   entries taught through g_sup (head: sup; class_index_map); targets are mapped and renormalised
    views: list = field(default_factory=list)  # teach_views: [view 1..K][item] features of each view, whose
    #   targets are the speech stores' labels on that view (a video teacher's stay the clean ones: faces
    #   do not change with the audio); [] = clean audio only
    align: dict = field(default_factory=dict)  # teacher name -> [items, K_t] factors its targets are multiplied by
    #   (then renormalised): target_prior uniform, `prior_factors`; {} = the teacher's labels as given
    spans: list = field(default_factory=list)  # pool_crops speech: per item (speech span (a, b), extent) in frames
    #   of its clean features, where its crops lie (`speech_crop`); [] = crops anywhere in the recording


def load_unlabeled(cfg: Config, work: Path, progress: bool, labeled=None) -> Unlabeled | None:
    """The pool items that have a soft label in a store the config distils from; None when not distilling.

    `labeled`: (manifest, features cache) of the labeled corpora, whose fold's unlabeled half of its held-out
    corpus (folds: loco-adapt; liser.data.workspace.adapt_manifest) and, with pool_labeled, whose fold's training
    items (labeled_pool_manifest) join the pool, read from that cache.
    """
    from liser.data.features import build_features
    from liser.data.views import build_views, teaching_views
    from liser.data.workspace import adapt_manifest, labeled_pool_manifest

    stores = {e.name: open_store(e, store_path(cfg, e)) for e in cfg.distilling()}
    if not stores:
        return None
    spec = teaching_views(cfg)
    if spec is not None:
        check_store_views(cfg, stores, spec.tag(spec.noise(work)))
    # the fold's half of its held-out corpus (loco-adapt) and its own training items (pool_labeled): labeled audio
    own = [] if labeled is None else [m for m in (adapt_manifest(cfg, cfg.fold, labeled[0]),
                                                  labeled_pool_manifest(cfg, cfg.fold, labeled[0])) if m is not None]
    sources = [(m, build_features(m, work, threads=cfg.threads or 2, progress=progress).load_into_memory())
               for m in unlabeled_manifests(cfg)] + [(m, labeled[1]) for m in own]
    frames, ids, views, source = [], [], [[] for _ in range(cfg.teach_views)], []
    for k, (m, cache) in enumerate(sources):
        view_caches = [c.load_into_memory() for c in build_views(m, work, spec, cfg.threads or 2, progress)] \
            if spec is not None else []
        for it in m.items:
            if any(it.id in st for st in stores.values()):
                frames.append(cache.frames(it.id))
                ids.append(it.id)
                source.append(k)
                for v, c in enumerate(view_caches):
                    views[v].append(c.frames(it.id))
    if not ids:
        raise LiserError(f"no unlabeled item has a soft label in {', '.join(str(st.path) for st in stores.values())}")
    align = {e.name: prior_factors(stores[e.name], ids, np.array(source)) for e in cfg.distilling()
             if e.kind == "speech"} if cfg.target_prior == "uniform" else {}
    return Unlabeled(frames, ids, stores, views=views, align=align,
                     spans=pool_spans(frames) if cfg.pool_crops == "speech" else [])


def pool_spans(frames: list) -> list:
    """Per pool item ((a, b) speech span, extent) in frames (liser.data.windowing; a recording without speech
    frames: all of it). A teaching view keeps its item's timing (liser.data.views.teaching_views), so the clean
    features' span holds for its views too."""
    from liser.data.windowing import extent, speech_span

    out = []
    for fr in frames:
        n = extent(fr)
        out.append((speech_span(fr[:n]) or (0, n), n))
    return out


def prior_factors(store, ids: list[str], source: np.ndarray) -> np.ndarray:
    """[items, K] float32: per pool item, 1 / (K x the teacher's mean label over the item's source), the factor
    of distribution alignment (ReMixMatch, Berthelot et al. 2020) towards a uniform class prior. A file's label
    is the mean of its valid pieces (clean audio); items without a label in the store get factors of 1."""
    k = len(store.classes)
    labels = np.array([store.window(i, 0.0, store.index[i].duration)[0] if i in store else np.zeros(k, np.float32)
                       for i in ids], np.float32).reshape(len(ids), k)
    out = np.ones((len(ids), k), np.float32)
    for s in np.unique(source):
        rows = (source == s) & (labels.sum(1) > 0)
        if rows.any():
            out[source == s] = 1.0 / (k * np.maximum(labels[rows].mean(0), 1e-3))
    return out


def open_store(entry, path: str):
    """A teacher entry's finished store; LiserError naming the command that makes it when there is none."""
    from liser.teachers.store import SoftLabelStore

    if not (Path(path) / "meta.json").is_file():
        raise LiserError(f"{path}: no finished soft-label store of teacher {entry.name!r} yet; make it with "
                         f"liser teacher label {entry.kind} CONFIG")
    return SoftLabelStore(path)


def check_store_views(cfg: Config, stores: dict, key: str) -> None:
    """LiserError, one line, when a speech teacher's store lacks the teacher's labels on the views the config
    teaches on (teach_views): a store of format 1, fewer views, or other chains (key: ViewSpec.tag)."""
    for e in cfg.distilling():
        st = stores[e.name]
        if e.kind != "speech" or (st.views >= cfg.teach_views and st.views_key == key):
            continue
        if not st.views:
            why = "the teacher's labels on the clean audio only"
        elif st.views < cfg.teach_views:
            why = f"the teacher's labels on {st.views} views, teach_views {cfg.teach_views} needs {cfg.teach_views}"
        else:
            why = f"views made another way ({st.views_key}; this config's: {key}, from seed, aug_noise_dir, aug_floor_p)"
        raise LiserError(f"{st.path}: holds {why}; label it with this config (liser teacher label speech CONFIG)")


def class_index_map(teacher_classes: list[str], classes: list[str]) -> np.ndarray:
    """int [K_student]: the teacher's class of each student class by name (canonical spelling: a FER teacher's
    "fear" is "fearful"), -1 where the teacher has none. The paper's open question 3: the video teacher's
    classes distilled through g_sup's space where the names agree, its other classes dropped."""
    from liser.data.corpora import canonical_emotion

    where = {canonical_emotion(c): i for i, c in enumerate(teacher_classes)}
    return np.array([where.get(canonical_emotion(c), -1) for c in classes], dtype=np.int64)


def map_target(p: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, bool]:
    """A teacher's probabilities [K_t] on the student's classes [K]: the matched ones, renormalised; (target, valid)
    with valid False when no matched class holds any probability."""
    out = np.where(index >= 0, p[np.maximum(index, 0)], 0.0).astype(np.float32)
    total = float(out.sum())
    return (out / total, True) if total > 0 else (out, False)


def check_store_teacher(cfg: Config, store) -> None:
    """Refuse a speech store written by another teacher than the fold's own, when the fold's teacher exists.

    The store path is a template the config names freely, so a LOCO fold can
    point at a store the pooled teacher wrote (same classes, but that teacher
    heard the held-out corpus): a leak no class check sees. When
    teacher_dir(cfg, fold) holds a fitted teacher, the store must carry its
    hash. A store with no teacher folder beside it (made elsewhere, or by
    hand) is taken as the config names it.
    """
    meta = teacher_dir(cfg, cfg.fold) / "teacher.json"
    if not meta.is_file():
        return
    want = json.loads(meta.read_text()).get("teacher_hash")
    if want and store.teacher_hash != want:
        raise LiserError(f"{store.path}: written by teacher {store.teacher_hash[:12]}, not by this fold's teacher "
                         f"{meta.parent} ({want[:12]}); label the pool with it (`liser teacher label speech`) "
                         "or name its store (speech_store: {teachers}/...)")


def fitted_temperature(cfg: Config, store) -> float:
    """The temperature fitted on validation for the teacher that wrote `store` (its eval.json, same hash)."""
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


def window_at(frames: np.ndarray, start: int, length: int) -> np.ndarray:
    """Frames [start, start + length) of an item's features [frames, 64] as a window: [64, <= length] float32."""
    return np.asarray(frames[start : start + length], dtype=np.float32).T


def random_crop(frames: np.ndarray, rng: np.random.Generator,
                length: int = audio.CLIP_FRAMES, u: float | None = None) -> tuple[np.ndarray, int]:
    """A random `length`-frame window of an item's features: ([64, length] float32, start frame).

    `u` in [0, 1] places the window at that fraction of the room there is
    instead of drawing it (the paired crops of `Crops.pairs`).
    """
    last = len(frames) - length
    start = (_at(0, last, u) if u is not None else int(rng.integers(0, last + 1))) if last > 0 else 0
    return window_at(frames, start, length), start


def speech_crop(frames: np.ndarray, span: tuple[int, int], extent: int, length: int,
                rng: np.random.Generator, u: float | None = None) -> np.ndarray:
    """A `length`-frame crop of an item for the "speech" windowing: [64, length] float32.

    Inside the speech span [a, b) when it is that long, else the whole span
    with recorded context around it, never past the recording's `extent`
    (its frames before the zero padding) unless the recording is shorter
    than `length`. The crop inference would score (liser.data.windowing). `u` in
    [0, 1] places it at that fraction of the room instead of drawing it.
    """
    return window_at(frames, speech_start(span, extent, len(frames), length, rng, u), length)


def speech_start(span: tuple[int, int], extent: int, n_frames: int, length: int, rng: np.random.Generator,
                 u: float | None = None) -> int:
    """The first frame of `speech_crop`'s crop of a recording of `n_frames` frames (arguments as there)."""
    a, b = span
    if b - a >= length:
        return _at(a, b - length, u) if u is not None else int(rng.integers(a, b - length + 1))
    lo, hi = max(0, b - length), min(a, max(extent, length) - length)
    if hi < lo:
        return max(0, min(a, n_frames - length))
    return _at(lo, hi, u) if u is not None else int(rng.integers(lo, hi + 1))


def _at(lo: int, hi: int, u: float) -> int:
    """The integer at fraction u of [lo, hi]."""
    return lo + int(round(u * (hi - lo)))


def unlabeled_batch(pool: Unlabeled, idx: np.ndarray, rng: np.random.Generator, length: int = audio.CLIP_FRAMES,
                    steps: bool = False, context_s: float = 0.0):
    """Crops and their window targets: x [B, 64, length] and {teacher name: (targets [B, K_t], mask [B] bool)}.
    With teach views each item is drawn clean or as one of its views (uniformly), its targets the stores'
    labels on what was drawn. A target is the mean of the teacher's pieces inside the crop, or with
    `context_s` (Config.target_context_s) inside at least that many seconds around it (SoftLabelStore.context),
    times the pool's alignment factors where it has them (Config.target_prior, renormalised). Crops lie
    anywhere in the recording, or with the pool's spans (Config.pool_crops) inside its speech span.
    With `steps` (Config.piece_targets) a teacher with its own head gets two more:
    the piece under each LSTM step [B, length // TIME_POOL, K_t] and their validity [B, length // TIME_POOL]."""
    import torch

    from liser.student.model import TIME_POOL, step_times

    xs, got = [], {name: ([], []) for name in pool.stores}
    at_steps = {name: ([], []) for name in pool.stores if steps and name not in pool.maps}
    offsets = step_times(length // TIME_POOL)
    length_s = audio.CLIP_S if length == audio.CLIP_FRAMES else length * audio.HOP_S
    for i in idx:
        v = int(rng.integers(0, len(pool.views) + 1)) if pool.views else 0  # 0: the clean audio
        fr = pool.frames[i] if v == 0 else pool.views[v - 1][i]
        if pool.spans:  # pool_crops speech: inside the speech span, as the labeled crops
            start = speech_start(*pool.spans[i], len(fr), length, rng)
            x = window_at(fr, start, length)
        else:
            x, start = random_crop(fr, rng, length)
        xs.append(x)
        t0 = float(audio.frames_to_seconds(start))
        for name, store in pool.stores.items():
            if pool.ids[i] in store:
                p, n = store.window(pool.ids[i], *store.context(pool.ids[i], t0, length_s, context_s),
                                    view=v if store.views else 0)
            else:
                p, n = np.zeros(len(store.classes), np.float32), 0
            valid = n > 0
            if name in pool.align and valid:  # distribution alignment (target_prior: uniform)
                p = p * pool.align[name][i]
                p = p / p.sum()
            if name in pool.maps:
                p, matched = map_target(p, pool.maps[name])
                valid = valid and matched
            got[name][0].append(p)
            got[name][1].append(valid)
            if name in at_steps:
                ps, vs = store.at_times(pool.ids[i], t0 + offsets, v if store.views else 0) \
                    if pool.ids[i] in store else (np.zeros((len(offsets), len(store.classes)), np.float32),
                                                  np.zeros(len(offsets), bool))
                at_steps[name][0].append(ps)
                at_steps[name][1].append(vs)
    targets = {name: (torch.from_numpy(np.stack(t)), torch.tensor(m)) for name, (t, m) in got.items()}
    for name, (ps, vs) in at_steps.items():
        targets[name] += (torch.from_numpy(np.stack(ps)), torch.from_numpy(np.stack(vs)))
    return torch.from_numpy(np.stack(xs)), targets


@dataclass
class Crops:
    """The labeled training items as the loop crops them: frames per view (view 0 = the clean features,
    1..K = liser.data.views), and for the "speech" windowing each one's speech span and extent (frames before
    the zero padding)."""

    views: list  # [view][item] -> [frames, 64]
    windowing: str = "pad"
    spans: list | None = None  # [view][item] -> (a, b)
    extents: list | None = None  # [view][item] -> frames
    full_p: float = 0.0  # "speech": share of batches at the longest length (Config.crop_full_p)

    @classmethod
    def of(cls, views: list, windowing: str, full_p: float = 0.0) -> "Crops":
        """Crops of the given frames; spans and extents computed once (liser.data.windowing)."""
        if windowing != "speech":
            return cls(views, windowing)
        from liser.data.windowing import extent, speech_span

        extents = [[extent(fr) for fr in frames] for frames in views]
        spans = [[speech_span(fr[:n]) or (0, n) for fr, n in zip(frames, ext)] for frames, ext in zip(views, extents)]
        return cls(views, windowing, spans, extents, full_p)

    def _length(self, rng: np.random.Generator) -> int:
        """A batch's crop length in frames: CLIP_FRAMES with probability full_p, else uniform in 0.5-3 s
        (no extra draw when full_p is 0: the draws of runs made before it existed)."""
        from liser.data.windowing import MIN_WINDOW_FRAMES

        if self.full_p and rng.random() < self.full_p:
            return audio.CLIP_FRAMES
        return int(rng.integers(MIN_WINDOW_FRAMES, audio.CLIP_FRAMES + 1))

    def batch(self, idx, rng: np.random.Generator) -> tuple[list, int]:
        """Crops [64, length] of items `idx`, one view drawn per item (the clean one among them), and the length.

        "pad": 94-frame crops anywhere (without views: the paper's draws, bit
        for bit). "speech": one length per batch, uniform in 0.5-3 s and at
        most the batch's shortest recording (3 s in a `full_p` share of the
        batches: `_length`), cropped by `speech_crop`.
        """
        from liser.data.windowing import MIN_WINDOW_FRAMES

        if len(self.views) == 1 and self.windowing == "pad":
            return [random_crop(self.views[0][i], rng)[0] for i in idx], audio.CLIP_FRAMES
        vs = rng.integers(0, len(self.views), len(idx))
        if self.windowing == "pad":
            return [random_crop(self.views[v][i], rng)[0] for v, i in zip(vs, idx)], audio.CLIP_FRAMES
        length = min(self._length(rng), min(max(self.extents[v][i], MIN_WINDOW_FRAMES) for v, i in zip(vs, idx)))
        return [speech_crop(self.views[v][i], self.spans[v][i], self.extents[v][i], length, rng)
                for v, i in zip(vs, idx)], length

    def pairs(self, idx, rng: np.random.Generator) -> tuple[list, int]:
        """Crops of items `idx` twice, clean then as one view each (drawn from 1..K), and the length.

        The two crops of an item have the same length and sit at the same
        fraction of the room their speech span (or, "pad", their frames)
        leaves, so they hold about the same stretch of speech even when the
        view is sped up or has room tone before it. Returns 2 x len(idx)
        crops: the clean ones first, then the views in the same order.
        """
        from liser.data.windowing import MIN_WINDOW_FRAMES

        vs = rng.integers(1, len(self.views), len(idx))
        us = rng.random(len(idx))
        if self.windowing == "pad":
            return ([random_crop(self.views[0][i], rng, u=u)[0] for i, u in zip(idx, us)]
                    + [random_crop(self.views[v][i], rng, u=u)[0] for v, i, u in zip(vs, idx, us)], audio.CLIP_FRAMES)
        shortest = min(min(self.extents[0][i], self.extents[v][i]) for v, i in zip(vs, idx))
        length = min(self._length(rng), max(shortest, MIN_WINDOW_FRAMES))
        crop = lambda v, i, u: speech_crop(self.views[v][i], self.spans[v][i], self.extents[v][i], length, rng, u)
        return [crop(0, i, u) for i, u in zip(idx, us)] + [crop(v, i, u) for v, i, u in zip(vs, idx, us)], length


@dataclass
class Data:
    """Everything a run reads: the fold's labeled items and features, the unlabeled pool, the teachers' settings."""

    train: list
    val: list
    test: list
    classes: list[str]
    cache: object  # FeatureCache of the labeled corpus, in memory
    pool: Unlabeled | None
    temperatures: dict  # teacher name -> its temperature (a speech entry's 0 replaced by its fold teacher's fitted one)
    teacher_classes: dict  # teacher name -> the classes of its head, in entry order
    views: list = field(default_factory=list)  # FeatureCache of each augmented view (liser.data.views); [] = none

    @property
    def labels(self) -> np.ndarray:
        """Class indices of the training items, [N] int."""
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[it.label] for it in self.train])


def load_data(cfg: Config, progress: bool) -> Data:
    """The fold's items and features, the pool and the stores, checked against each other."""
    from liser.data.features import build_features

    manifest = labeled_manifest(cfg)
    train_items, val_items, test_items, classes = fold_items(cfg, manifest)
    cache = build_features(manifest, cfg.work, threads=cfg.threads or 2, progress=progress).load_into_memory()
    pool = load_unlabeled(cfg, Path(cfg.work), progress, (manifest, cache))
    if pool is None and cfg.schedule == "two-stage":
        raise LiserError("schedule two-stage needs unlabeled data with soft labels "
                         "(unlabeled, and a teacher's store with a weight > 0: speech_store/video_store and "
                         "lambda_sd/lambda_vd, or `teachers`)")
    temperatures, teacher_classes = teacher_settings(cfg, pool, classes)
    views = []
    if cfg.aug_views:
        from liser.data.views import build_views, training_views

        views = [v.load_into_memory() for v in build_views(manifest, cfg.work, training_views(cfg), cfg.threads or 2,
                                                           progress)]
    return Data(train_items, val_items, test_items, classes, cache, pool, temperatures, teacher_classes, views)


def teacher_settings(cfg: Config, pool: Unlabeled | None, classes: list[str]) -> tuple[dict, dict]:
    """Each teacher entry's temperature and, for an own head, its classes, its store checked: a speech store
    must hold the student's classes and come from the fold's own teacher (check_store_teacher). An entry taught
    through g_sup gets its class map in pool.maps (LiserError when no class name agrees)."""
    temperatures, teacher_classes = {}, {}
    for e in cfg.teacher_entries():
        store = pool.stores.get(e.name) if pool is not None else None
        if e.kind == "speech" and store is not None:
            if list(store.classes) != list(classes):
                raise LiserError(f"{store.path}: speech teacher classes {store.classes} != the student's {classes}")
            check_store_teacher(cfg, store)
        fitted = e.kind == "speech" and store is not None and e.temperature == 0
        temperatures[e.name] = fitted_temperature(cfg, store) if fitted else e.temperature
        if e.head == "sup":
            if store is not None:
                pool.maps[e.name] = class_index_map(list(store.classes), classes)
                if (pool.maps[e.name] < 0).all():
                    raise LiserError(f"{store.path}: no class of {store.classes} is one of the student's {classes}")
            continue
        teacher_classes[e.name] = list(store.classes) if store is not None else \
            (list(classes) if e.kind == "speech" else DEFAULT_VIDEO_CLASSES)
    return temperatures, teacher_classes


# ---------------------------------------------------------------- checkpoints
def run_dir_of(cfg: Config) -> Path:
    """Kept for callers of the old name: liser.data.workspace.run_dir."""
    return run_dir(cfg)


# ---------------------------------------------------------------- the steps
def check_run(cfg: Config, run: Path) -> bool:
    """True if `run` already holds this config's finished run; LiserError if it holds another config's."""
    if (run / "config.yaml").is_file() and (run / "metrics.json").is_file() or (run / "last.pt").is_file():
        from liser.core.config import stale_keys  # the one comparison of a run directory's config with a config

        diff = stale_keys(cfg, run)
        if diff:
            raise LiserError(f"{run}: holds a run of another config (differs in {', '.join(diff)}); "
                             "remove it or change `name` / `out`")
    return (run / "metrics.json").is_file()


@contextlib.contextmanager
def torch_settings(threads: int):
    """Thread count and deterministic algorithms for the run, restored afterwards (no process-wide change).

    Deterministic mode would also fill every new tensor with NaN before a
    kernel writes it (torch.utils.deterministic.fill_uninitialized_memory), a
    debugging aid: on the CPU it wrote each 38 MB activation of a batch twice,
    about 15 % of a training step and of an evaluation, and no kernel the
    student runs reads memory it has not written (a run's weights, logs and
    metrics are bit for bit those with the fill: tests/test_train_speed.py).
    """
    import torch

    fill = torch.utils.deterministic
    old = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
           torch.is_deterministic_algorithms_warn_only_enabled(), fill.fill_uninitialized_memory)
    if threads:
        torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    fill.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.set_num_threads(old[0])
        torch.use_deterministic_algorithms(old[1], warn_only=old[2])
        fill.fill_uninitialized_memory = old[3]


def build_model(cfg: Config, data: Data):
    """The student (normalised on the training items' frames, channels_last) and its AdamW optimiser."""
    import torch

    from liser.data.features import normalisation_stats
    from liser.student.model import Student

    band = audio.PHONE_BAND_HZ if cfg.input_band == "phone" else None
    level = audio.PHONE_BAND_HZ if cfg.level_band == "phone" else None
    model = Student(len(data.classes), heads={n: len(c) for n, c in data.teacher_classes.items()},
                    level_norm=cfg.level_norm, channel_norm=cfg.channel_norm, band_hz=band, range_db=cfg.input_range_db,
                    level_hz=level)
    center = "band" if cfg.channel_norm else cfg.level_norm
    keep = model.level_bands().numpy() > 0 if band or level else None
    mean, std = normalisation_stats(data.cache, [it.id for it in data.train], center=center, keep=keep,
                                    range_db=cfg.input_range_db)
    model.set_normalisation(torch.from_numpy(mean), torch.from_numpy(std))
    model = model.to(resolve_device(cfg.device), memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return model, opt


@dataclass
class State:
    """What a resumed run needs besides the weights: position in the schedule and every RNG."""

    rng: np.random.Generator
    epoch: int = 0  # the next epoch to train
    best_uar: float = -1.0
    best_epoch: int = -1
    stale: int = 0  # epochs since the best validation UAR
    u_order: np.ndarray = field(default_factory=lambda: np.array([], dtype=np.int64))  # pool permutation
    u_pos: int = 0  # position in u_order
    ema: Any = None  # the moving average of the weights (`averaged`; cfg.ema_decay), None when off

    def judged(self, model):
        """The student that is validated and kept: the moving average when there is one, else `model`."""
        return model if self.ema is None else self.ema.module

    def to_checkpoint(self, model, opt) -> dict:
        import torch

        ema = {} if self.ema is None else {"ema": self.ema.state_dict()}
        return {"model": model.state_dict(), "optimizer": opt.state_dict(), **ema, "epoch": self.epoch,
                "best_uar": self.best_uar, "best_epoch": self.best_epoch, "stale": self.stale,
                "np_rng": self.rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                "u_order": torch.from_numpy(np.asarray(self.u_order, dtype=np.int64)), "u_pos": self.u_pos}


def resume(run: Path, cfg: Config, model, opt) -> State:
    """A fresh State, or the one of last.pt (restoring model, optimiser and RNGs); trims epochs.csv to match."""
    import torch

    state = State(np.random.default_rng(cfg.seed), ema=averaged(model, cfg.ema_decay))
    last = run / "last.pt"
    if last.is_file():  # resume after the last completed epoch
        st = load(last)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        if state.ema is not None:  # (a run directory of another config is refused before: check_run)
            state.ema.load_state_dict(st["ema"])
        state.epoch, state.best_uar, state.best_epoch, state.stale = \
            st["epoch"] + 1, st["best_uar"], st["best_epoch"], st["stale"]
        state.u_order, state.u_pos = st["u_order"].numpy(), int(st["u_pos"])
        state.rng.bit_generator.state = st["np_rng"]
        torch.set_rng_state(st["torch_rng"])
    log_path = run / "epochs.csv"
    if log_path.exists():  # keep only the epochs that last.pt holds (an interruption may have logged one more)
        with open(log_path, newline="") as f:
            kept = [r for r in csv.DictReader(f) if int(r["epoch"]) < state.epoch]
        log_path.unlink()
        for r in kept:
            _append_csv(log_path, r, log_fields(cfg))
    return state


def averaged(model, decay: float):
    """An exponential moving average of `model`'s parameters and buffers (BatchNorm statistics too), updated by
    `.update_parameters(model)` after each step: W_ema <- decay W_ema + (1 - decay) W, the first update a copy
    (torch.optim.swa_utils.AveragedModel with get_ema_multi_avg_fn); None when decay is 0 (off)."""
    if not decay:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def loss_options(cfg: Config, data: Data):
    """The joint loss's settings from the config (and the fold's fitted speech temperature)."""
    from liser.student.losses import LossOptions

    return LossOptions(weighting=cfg.weighting, kind=cfg.distill_loss, consistency=cfg.aug_consistency)


def augment_options(cfg: Config):
    """The crops' augmentations from the config (all off in the paper's recipe)."""
    from liser.data.augment import AugmentOptions

    return AugmentOptions(gain_db=cfg.aug_gain_db, noise_p=cfg.aug_noise_p, freq_masks=cfg.aug_freq_masks,
                          time_masks=cfg.aug_time_masks)


def epochs_for(cfg: Config, n_train: int) -> int:
    """How many epochs a run trains: `epochs`, raised so that the labeled steps (ceil(n_train / batch_size) an
    epoch, after stage 1 in the two-stage schedule) reach `min_steps`. A fixed epoch count gives a fold that holds
    a large corpus out a fraction of the other folds' steps (leave one corpus out: CREMA-D held out leaves a third
    of the training files); a step floor gives every fold the same optimisation budget."""
    if not cfg.min_steps:
        return cfg.epochs
    per_epoch = max(1, math.ceil(n_train / cfg.batch_size))
    first = cfg.stage1_epochs if cfg.schedule == "two-stage" else 0
    return max(cfg.epochs, first + math.ceil(cfg.min_steps / per_epoch))


def lr_factor(cfg: Config, epoch: int, step: int, n_steps: int) -> float:
    """Learning-rate multiplier at a step: linear warm-up over warmup_epochs, then constant or cosine to 0."""
    t = epoch + step / max(n_steps, 1)  # epochs done, fractional
    if cfg.warmup_epochs > 0 and t < cfg.warmup_epochs:
        return (t + 1 / max(n_steps, 1)) / cfg.warmup_epochs
    if cfg.lr_schedule == "cosine":
        span = max(cfg.epochs - cfg.warmup_epochs, 1e-9)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (t - cfg.warmup_epochs) / span)))
    return 1.0


def next_batch(crops: Crops, y: np.ndarray, idx, pool, n_u: int, state: State, paired: bool = False,
               steps: bool = False, context_s: float = 0.0):
    """One mini-batch: crops of the labeled items `idx` (None: none; `Crops.batch`, or `Crops.pairs` when
    `paired`: each item clean, then each as a view, labels repeated), then `n_u` pool items
    (pool None: none) with their window targets (over `context_s`: `unlabeled_batch`), cropped to the same
    length. Returns (x [B, 64, L], labels [N_l] or None, {teacher name: (targets, mask)}; with `steps` the
    per-step pieces too, `unlabeled_batch`).
    The pool is walked in a permutation kept in `state`."""
    import torch

    rng, xs, labels, length = state.rng, [], None, audio.CLIP_FRAMES
    if idx is not None and paired:
        xs, length = crops.pairs(idx, rng)
        labels = torch.from_numpy(np.concatenate([y[idx], y[idx]]))
    elif idx is not None:
        xs, length = crops.batch(idx, rng)
        labels = torch.from_numpy(y[idx])
    targets = {}
    x = None
    if pool is not None:
        if state.u_pos + n_u > len(state.u_order):
            state.u_order, state.u_pos = rng.permutation(len(pool.ids)), 0
        x, targets = unlabeled_batch(pool, state.u_order[state.u_pos : state.u_pos + n_u], rng, length, steps,
                                     context_s)
        state.u_pos += n_u
    if xs:
        x = torch.from_numpy(np.stack(xs)) if x is None else torch.cat([torch.from_numpy(np.stack(xs)), x])
    return x, labels, targets


def run_epoch(cfg: Config, data: Data, model, opt, state: State, stage1: bool, crops: Crops, y: np.ndarray):
    """One epoch of mini-batches: returns (summed loss parts, steps, samples, seconds).

    Stage 1 of the two-stage schedule sees only unlabeled items; otherwise
    each step holds `batch_size` labeled items plus `unlabeled_batch`
    pool items when distilling. Crops are augmented (labeled and unlabeled
    alike) when the config asks for it, the learning rate follows
    `lr_factor` when a schedule is set, and the forward + loss run in
    `cfg.precision` (`step_loss`).
    """
    import torch

    from liser.data.augment import augment_batch, band_limit, equalise

    t0 = time.time()
    aug = augment_options(cfg)
    scheduled = cfg.warmup_epochs > 0 or cfg.lr_schedule != "constant"
    device = next(model.parameters()).device
    pool, rng = data.pool, state.rng
    options = loss_options(cfg, data)
    teachers = [(e.name, e.weight, data.temperatures[e.name], e.head) for e in cfg.distilling()]
    n_u = cfg.unlabeled_batch if pool is not None else 0
    use_l = not stage1
    use_u = pool is not None and (cfg.schedule == "joint" or stage1)
    paired = cfg.aug_consistency > 0 and len(crops.views) > 1
    model.train()
    order = rng.permutation(len(data.train))
    sums: dict[str, float] = {}
    n_samples = 0
    n_steps = int(np.ceil(len(data.train) / cfg.batch_size)) if use_l else int(np.ceil(len(pool.ids) / max(n_u, 1)))
    for s in range(n_steps):
        idx = order[s * cfg.batch_size : (s + 1) * cfg.batch_size] if use_l else None
        pairs = len(idx) if paired and idx is not None else 0  # items taken clean and as a view (Crops.pairs)
        x, labels, targets = next_batch(crops, y, idx, pool if use_u else None, n_u, state, pairs > 0,
                                        cfg.piece_targets, cfg.target_context_s)
        if aug.active:
            x = torch.from_numpy(augment_batch(x.numpy(), aug, rng))
        if (cfg.aug_band_p or cfg.aug_eq_db) and idx is not None:  # the view crops when paired (the clean ones
            a, b = (pairs, 2 * pairs) if pairs else (0, len(idx))  # teach), else all labeled
            if cfg.aug_band_p:
                x[a:b] = torch.from_numpy(band_limit(x[a:b].numpy(), cfg.aug_band_p, rng))
            if cfg.aug_eq_db:
                x[a:b] = torch.from_numpy(equalise(x[a:b].numpy(), cfg.aug_eq_db, rng))
        if scheduled:
            for g in opt.param_groups:
                g["lr"] = cfg.lr * lr_factor(cfg, state.epoch, s, n_steps)
        n_samples += len(x)
        x, labels = x.to(device, non_blocking=True), None if labels is None else labels.to(device)
        targets = {name: _to(t, device) for name, t in targets.items()}
        loss, parts = step_loss(model, x, labels, targets, teachers, options, cfg.precision, pairs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if state.ema is not None:
            state.ema.update_parameters(model)
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v
        sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
    return sums, n_steps, n_samples, time.time() - t0


def step_loss(model, x, labels, targets, teachers, options, precision: str = "fp32", pairs: int = 0):
    """Forward + joint loss of one training mini-batch, in `precision`: (loss, parts for logging).

    With `pairs` > 0 the first 2 x pairs labeled rows are items clean and
    the same items as views (`Crops.pairs`), and the loss adds
    options.consistency x the mean `consistency_term` over the pairs.

    x [B, 64, 94] on the model's device, labeled items first: labels [N_l]
    int (None: no labeled item); `targets` maps a teacher's name to its
    (targets [B - N_l, K_t], mask [B - N_l]), plus (pieces under each LSTM step [B - N_l, T, K_t], valid
    [B - N_l, T]) for piece targets (`unlabeled_batch`; liser.student.losses.step_term), and `teachers` lists (name,
    weight, temperature, head) of the terms, in order (liser.student.losses.Distill;
    head "sup": the term is on g_sup's logits, the targets mapped onto its classes). Under "bf16" the forward runs in
    liser.core.device.training_autocast and the logits are cast back to float32,
    so the loss (softmax, CE, the distillation terms) is summed in float32;
    "fp32" is the plain step bit for bit (`.float()` of a float32 tensor is
    the tensor itself). The backward runs outside, as autocast wants it.
    Raises LiserError for another precision.
    """
    from liser.core.device import training_autocast
    from liser.student.losses import Distill, consistency_term, joint_loss

    stepped = [name for name, t in targets.items() if len(t) == 4]
    with training_autocast(x.device, precision):
        sup, heads, at_steps = model.forward_steps(x, stepped) if stepped else (*model(x), {})
        sup = sup.float()
        n_l = 0 if labels is None else len(labels)
        terms = []
        for name, weight, temperature, head in teachers:
            target, mask, *pieces = targets.get(name, (None, None))
            steps = (at_steps[name][n_l:].float(), *pieces) if pieces else None
            logits = (sup if head == "sup" else heads[name].float())[n_l:]
            terms.append(Distill(name, logits, target, mask, weight, temperature, steps))
        loss, parts = joint_loss(sup[:n_l] if n_l else None, labels, terms, options=options)
        if pairs and options.consistency:
            term = consistency_term(sup[:pairs], sup[pairs : 2 * pairs]).mean()
            loss = loss + options.consistency * term
            parts["consistency"] = float(term.detach())
        return loss, parts


def _to(pair, device):
    """A (targets, mask) pair of tensors (or Nones) on `device`."""
    return tuple(None if t is None else t.to(device, non_blocking=True) for t in pair)


def end_epoch(cfg: Config, data: Data, run: Path, model, opt, state: State, stage1: bool, stats) -> dict:
    """Validate, log the epoch's row, keep best.pt, save last.pt; returns the row and the validation metrics."""
    from liser.student.evaluate import evaluate_items

    sums, n_steps, n_samples, train_s = stats
    t_val = time.time()
    if stage1:  # distillation-only stage: no model selection yet
        val = {"uar": float("nan"), "war": float("nan")}
    else:
        val, _ = evaluate_items(state.judged(model), data.cache, data.val, data.classes, cfg.val_stride_s,
                                cfg.windowing)
    row = {"epoch": state.epoch, "stage": "distil" if stage1 else "train",
           **{k: round(v / n_steps, 5) for k, v in sums.items()},
           "val_uar": round(val["uar"], 5), "val_war": round(val["war"], 5),
           "train_s": round(train_s, 2), "epoch_s": round(train_s + time.time() - t_val, 2),
           "samples_per_s": round(n_samples / max(train_s, 1e-9), 1)}
    _append_csv(run / "epochs.csv", row, log_fields(cfg))
    if not stage1 and val["uar"] > state.best_uar:
        state.best_uar, state.best_epoch, state.stale = val["uar"], state.epoch, 0
        save(student_checkpoint(state.judged(model), data.classes, data.teacher_classes, cfg, state.epoch, val),
             run / "best.pt")
    elif not stage1:
        state.stale += 1
    save(state.to_checkpoint(model, opt), run / "last.pt")
    return row, val


def run_epochs(cfg: Config, data: Data, run: Path, model, opt, state: State, progress: bool) -> None:
    """Epochs from state.epoch to cfg.epochs (or until `patience` epochs bring no better validation UAR)."""
    from tqdm import tqdm

    crops = Crops.of([[c.frames(it.id) for it in data.train] for c in [data.cache, *data.views]], cfg.windowing,
                     cfg.crop_full_p)
    y = data.labels
    bar = tqdm(range(state.epoch, cfg.epochs), desc=f"{cfg.name} fold{cfg.fold}", unit="epoch",
               initial=state.epoch, total=cfg.epochs, disable=None if progress else True, leave=False)
    for epoch in bar:
        state.epoch = epoch
        stage1 = cfg.schedule == "two-stage" and epoch < cfg.stage1_epochs
        stats = run_epoch(cfg, data, model, opt, state, stage1, crops, y)
        row, val = end_epoch(cfg, data, run, model, opt, state, stage1, stats)
        bar.set_postfix(val_uar=f"{val['uar']:.3f}", best=f"{state.best_uar:.3f}@{state.best_epoch}")
        if not progress:  # no bar (logs, CI, parallel workers): one line per epoch instead
            print(f"{cfg.name} fold{cfg.fold} epoch {epoch}: loss {row.get('loss', float('nan')):.4f} "
                  f"val UAR {val['uar']:.3f} (best {state.best_uar:.3f}@{state.best_epoch}) {row['epoch_s']:.1f}s",
                  file=sys.stderr, flush=True)
        if cfg.patience and state.stale >= cfg.patience:
            break
    bar.close()


def finish(cfg: Config, data: Data, run: Path, model, best_epoch: int) -> None:
    """The best epoch on the test (and validation) speakers: metrics.json and confusion.png; drops last.pt."""

    from liser.student.evaluate import evaluate_items, head_by_class, plot_confusion

    if not (run / "best.pt").is_file():
        raise LiserError(f"{run}: no epoch finished a validation (epochs={cfg.epochs}, stage1_epochs={cfg.stage1_epochs})")
    best = load(run / "best.pt")
    model.load_state_dict(best["state_dict"])
    test, test_logits = evaluate_items(model, data.cache, data.test, data.classes, cfg.test_stride_s, cfg.windowing)
    val = best["val"]  # what end_epoch measured on these weights: the same evaluation, not run again
    # what the report shows of the video teacher: its own head's answer per class (none when taught through g_sup)
    video = next((e.name for e in cfg.distilling() if e.kind == "video" and e.head != "sup"), None)
    head = head_by_class(model, data.cache, data.test, data.classes, video) if video else None
    result = {"config": cfg.name, "fold": cfg.fold, "best_epoch": best_epoch, "epochs": cfg.epochs, "classes": data.classes,
              "n_train": len(data.train), "n_val": len(data.val), "n_test": len(data.test),
              "n_unlabeled": 0 if data.pool is None else len(data.pool.ids),
              "temperature_sd": next((data.temperatures[e.name] for e in cfg.teacher_entries() if e.kind == "speech"),
                                     cfg.temperature_sd),
              "test": test, "val": {"uar": val["uar"], "war": val["war"]},
              "video_classes": data.teacher_classes.get(video or "vd", DEFAULT_VIDEO_CLASSES), "video_head_by_class": head,
              "test_ids": [it.id for it in data.test], "test_y": [data.classes.index(it.label) for it in data.test],
              "test_logits": np.round(test_logits, 4).tolist()}
    plot_confusion(test["confusion"], data.classes, run / "confusion.png",
                   f"{cfg.name} fold {cfg.fold}: UAR {test['uar']:.3f} WAR {test['war']:.3f}")
    atomic_write_text(run / "metrics.json", json.dumps(result, indent=1) + "\n")
    (run / "last.pt").unlink(missing_ok=True)  # finished: the resume state is no longer needed


# ---------------------------------------------------------------- the loop
def train(cfg: Config, run_dir: str | Path | None = None, progress: bool = True) -> Path:
    """Train one fold of one configuration; returns the run directory (skips a finished run).

    Raises LiserError for a bad setting, missing data or stores, a run
    directory that holds another config's run, or one that holds anything
    liser did not write there (liser.core.outputs.RUN: it never overwrites a
    user's files). Torch's thread count and deterministic-algorithms flag
    are set for the run and restored after it.
    """
    import torch

    from liser.core.outputs import RUN, check_out_dir

    run = Path(run_dir) if run_dir else run_dir_of(cfg)
    check_out_dir(run, RUN)
    if check_run(cfg, run):
        return run
    cfg.check_choices()
    run.mkdir(parents=True, exist_ok=True)
    cfg.save(run / "config.yaml")
    with torch_settings(cfg.threads):
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        data = load_data(cfg, progress)
        epochs = epochs_for(cfg, len(data.train))
        if epochs != cfg.epochs:  # config.yaml keeps the epochs asked for; metrics.json the epochs run
            print(f"{cfg.name} fold{cfg.fold}: {epochs} epochs instead of {cfg.epochs}, to train at least "
                  f"min_steps {cfg.min_steps} steps on {len(data.train)} files", file=sys.stderr, flush=True)
            cfg = cfg.replace(epochs=epochs)
        model, opt = build_model(cfg, data)
        state = resume(run, cfg, model, opt)
        run_epochs(cfg, data, run, model, opt, state, progress)
        finish(cfg, data, run, model, state.best_epoch)
    return run


def _append_csv(path: Path, row: dict, fields: tuple[str, ...]) -> None:
    """Append a row to epochs.csv (a new file's header: `fields`, log_fields(cfg)); a file begun with fewer
    columns (an older run resumed) keeps its header."""
    new = not path.exists()
    if not new:
        with open(path, newline="") as f:
            fields = next(csv.reader(f), None) or fields
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow(row)
