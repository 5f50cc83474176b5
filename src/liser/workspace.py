"""What a configuration means on disk: its data, its folds, and where every artifact lives.

Every stage (training, the teachers, export, experiments, the report) asks
this module, never another stage, which items and which paths a `Config`
names. So there is one answer to each question:

    labeled_manifest(cfg)        the labeled corpus, prepared into <work>/manifests/<corpus> on first use
    unlabeled_manifests(cfg)     each `unlabeled` entry, prepared once under <work>/manifests
    unlabeled_pool(cfg)          those merged into one manifest (optionally only the videos)
    resolve_folds(cfg, m)        the fold file: cfg.folds, else the corpus's shipped one, else generated
    fold_indices(cfg, m)         which folds exist (0 .. k-1)
    fold_items(cfg, m)           (train, val, test, classes) of cfg.fold, with the label fraction applied

and the paths, all under `cfg.work` or `cfg.out`:

    <work>/manifests/<corpus>/                 labeled manifest (unless cfg.manifest names one)
    <work>/manifests/unlabeled-<adapter>-<h>/  one per unlabeled root
    <work>/features/<corpus>-<key>/            log-Mel cache (liser.features)
    <work>/teachers/<corpus>/speech-fold<k>/   speech teacher of fold k and its eval.json
    <work>/faces/pool-<size>/                  face tracks of the pool's videos
    cfg.speech_store.format(fold=k)            speech soft-label store of fold k
    cfg.video_store                            video soft-label store
    <out>/<name>/fold<k>/                      a student run

This module imports only the config, the corpora and the folds, so any stage
can depend on it without cycles.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from .config import Config
from .errors import LiserError

AUDIO_ONLY_CONTAINERS = {".m4a", ".aac"}  # video suffixes that carry no picture in practice


# ---------------------------------------------------------------- paths
def manifest_dir(cfg: Config) -> Path:
    """The labeled manifest's directory: cfg.manifest, else <work>/manifests/<corpus>."""
    return Path(cfg.manifest) if cfg.manifest else Path(cfg.work) / "manifests" / cfg.corpus


def unlabeled_manifest_dir(cfg: Config, adapter: str, root: str) -> Path:
    """Where an "adapter:root" unlabeled entry is prepared (keyed by the root's absolute path)."""
    key = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:8]
    return Path(cfg.work) / "manifests" / f"unlabeled-{adapter}-{key}"


def features_dir(work: str | Path, corpus: str, key: str) -> Path:
    """A features cache: <work>/features/<corpus>-<key> (key = manifest fingerprint + front end)."""
    return Path(work) / "features" / f"{corpus}-{key}"


def teacher_dir(cfg: Config, fold: int) -> Path:
    """The speech teacher fitted on fold `fold`'s training speakers."""
    return Path(cfg.work) / "teachers" / cfg.corpus / f"speech-fold{fold}"


def faces_dir(cfg: Config) -> Path:
    """Face tracks of the unlabeled pool's videos, at cfg.face_size pixels."""
    return Path(cfg.work) / "faces" / f"pool-{cfg.face_size}"


def speech_store(cfg: Config, fold: int | None = None) -> str:
    """The speech-teacher store of a fold (cfg.fold when None); "" when the config names none."""
    return cfg.speech_store.format(fold=cfg.fold if fold is None else fold) if cfg.speech_store else ""


def video_store(cfg: Config) -> str:
    """The video-teacher store ("" when the config names none); one for every fold."""
    return cfg.video_store


def run_dir(cfg: Config) -> Path:
    """A student run: <out>/<name>/fold<k>."""
    return Path(cfg.out) / cfg.name / f"fold{cfg.fold}"


# ---------------------------------------------------------------- manifests
def labeled_manifest(cfg: Config):
    """The prepared labeled manifest (prepared into <work>/manifests/<corpus> on first use).

    Raises LiserError when cfg.manifest names a directory that holds no manifest.
    """
    from .corpora import Manifest, prepare

    path = manifest_dir(cfg)
    if (path / "meta.json").is_file():
        return Manifest.load(path)
    if cfg.manifest:
        raise LiserError(f"{path}: no such manifest (run `liser prepare`)")
    m = prepare(cfg.corpus, cfg.root)
    m.save(path)
    return m


def unlabeled_manifests(cfg: Config) -> list:
    """Each `unlabeled` entry, "adapter:root" or a manifest dir, prepared once under <work>/manifests.

    Labels of a prepared corpus are blanked: unlabeled data is unlabeled even
    when its adapter knows the emotions.
    """
    from .corpora import Manifest, prepare

    out = []
    for spec in cfg.unlabeled:
        if Path(spec, "meta.json").is_file():
            out.append(Manifest.load(spec))
            continue
        if ":" not in spec:
            raise LiserError(f"unlabeled: {spec!r} is neither a manifest directory nor adapter:root")
        adapter, root = spec.split(":", 1)
        path = unlabeled_manifest_dir(cfg, adapter, root)
        if (path / "meta.json").is_file():
            out.append(Manifest.load(path))
            continue
        m = prepare(adapter, root)
        m.items = [type(it)(**{**it.__dict__, "label": ""}) for it in m.items]
        m.save(path)
        out.append(m)
    return out


def unlabeled_pool(cfg: Config, videos_only: bool = False):
    """The config's unlabeled manifests merged into one (absolute paths), optionally only the videos.

    Raises LiserError when the config has no unlabeled corpora, or (videos_only) no video among them.
    """
    from .audio import VIDEO_SUFFIXES
    from .corpora import merge_manifests

    ms = unlabeled_manifests(cfg)
    if not ms:
        raise LiserError("config has no `unlabeled` corpora to label")
    pool = merge_manifests(ms)
    if videos_only:
        pool.items = [it for it in pool.items
                      if Path(it.path).suffix.lower() in VIDEO_SUFFIXES - AUDIO_ONLY_CONTAINERS]
        if not pool.items:
            raise LiserError(f"no video files among the unlabeled corpora {list(cfg.unlabeled)}")
    return pool


# ---------------------------------------------------------------- folds
def resolve_folds(cfg: Config, manifest):
    """The one fold resolver: the fold file named by cfg.folds (a shipped name or a path), else the
    corpus's shipped file, else folds generated from the manifest's speakers with cfg.seed.

    A fold file the config names explicitly must exist (a typo such as
    `folds: ravdes` is an error, never a silent fallback to generated folds).
    The folds are checked against the manifest (no speaker leak, none unknown or left out).
    """
    from .folds import check_folds, folds_for_manifest, load_folds

    name = cfg.folds or manifest.corpus
    try:
        folds = load_folds(name)
    except LiserError:
        if cfg.folds:
            raise
        folds = folds_for_manifest(manifest, seed=cfg.seed)
    check_folds(folds, manifest, source=name)
    return folds


def fold_indices(cfg: Config, manifest, folds=None) -> list[int]:
    """`folds` when given, else every fold of the config's fold file (0 .. k-1)."""
    if folds is not None:
        return list(folds)
    return list(range(len(resolve_folds(cfg, manifest))))


def fold_items(cfg: Config, manifest):
    """(train, val, test, classes) items of cfg.fold, with classes filtered and the label fraction applied.

    Raises LiserError for an unknown class, a label fraction outside (0, 1] or a bad fold.
    """
    fold = resolve_folds(cfg, manifest)[cfg.fold]
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
    """A class-stratified subset holding `fraction` of each class (at least one file per class), sorted by id."""
    rng = random.Random(seed)
    out = []
    for label in sorted({it.label for it in items}):
        members = [it for it in items if it.label == label]
        rng.shuffle(members)
        out.extend(members[: max(1, round(fraction * len(members)))])
    return sorted(out, key=lambda it: it.id)
