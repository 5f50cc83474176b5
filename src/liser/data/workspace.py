"""What a configuration means on disk: its data, its folds, and where every artifact lives.

Every stage (training, the teachers, export, experiments, the report) asks
this module, never another stage, which items and which paths a `Config`
names. So there is one answer to each question:

    labeled_manifest(cfg)        the labeled corpus, prepared into <work>/manifests/<corpus> on first use,
                                 or with cfg.labeled the pool of several labeled corpora (pooled_manifest)
    unlabeled_manifests(cfg)     each `unlabeled` entry, prepared once under <work>/manifests
    unlabeled_pool(cfg)          those merged into one manifest (optionally only the videos)
    resolve_folds(cfg, m)        the fold file: cfg.folds, else the corpus's shipped one, else generated
    fold_indices(cfg, m)         which folds exist (0 .. k-1)
    fold_items(cfg, m)           (train, val, test, classes) of cfg.fold, labels through cfg.class_map,
                                 the label fraction applied

and the paths, all under `cfg.work` or `cfg.out`:

    <work>/manifests/<corpus>/                 labeled manifest (unless cfg.manifest names one)
    <work>/manifests/unlabeled-<adapter>-<h>/  one per unlabeled root
    <work>/features/<corpus>-<key>/            log-Mel cache (liser.data.features)
    <work>/teachers/<set>/speech-fold<k>/      speech teacher of fold k, its eval.json and trained_on.json;
                                               <set> = teacher_set(cfg): the corpus, or pool-<corpora>-<K>cls-<scheme>
    <work>/faces/pool-<size>/                  face tracks of the pool's videos
    cfg.speech_store                           speech soft-label store of fold k ({fold}, {teachers}, {work} filled in)
    cfg.video_store                            video soft-label store ({work} filled in)
    cfg.teachers[i].store                      the store of a named teacher entry (store_path; the same placeholders)
    <out>/<name>/fold<k>/                      a student run

This module imports only the config, the corpora and the folds, so any stage
can depend on it without cycles.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from liser.data.audio import AUDIO_ONLY_CONTAINERS  # noqa: F401  (PyAV-read suffixes that carry no picture in practice)
from liser.core.config import Config
from liser.core.errors import LiserError


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


POOL_NAME_MAX = 64  # longer pool names keep the corpus count and a digest of the corpora instead of every name


def teacher_set(cfg: Config) -> str:
    """The name of the speech teachers' set: what they were trained on, without reading any data.

    One corpus: the corpus name, as before ("ravdess"), so existing teachers
    and stores keep their paths. Several `labeled` corpora: "pool-" + the
    sorted adapters joined with "+" + the class count + the fold scheme, e.g.
    "pool-cremad+emodb+ravdess+tess+urdu-6cls-loco" ("allcls" when `classes`
    is empty; the LOCO and pooled teachers of one pool differ, since a LOCO
    teacher never hears its held-out corpus). Sorted, so the order of
    `labeled` does not make a second set. A name over POOL_NAME_MAX
    characters becomes "pool-<n>corpora-<digest of the corpora>-<K>cls-<scheme>".
    The name does not encode which classes or which class map: two configs
    that differ only there share a name, and the reuse guard
    (check_teacher_record) refuses the second instead of reusing the first.
    """
    if not cfg.labeled:
        return cfg.corpus
    corpora = sorted(labeled_corpora(cfg))
    ncls = f"{len(cfg.classes)}cls" if cfg.classes else "allcls"
    scheme = {"loco-adapt": "loco"}.get(cfg.folds, cfg.folds) or "loco"  # the same training speakers: one set
    name = f"pool-{'+'.join(corpora)}-{ncls}-{scheme}"
    if len(name) > POOL_NAME_MAX:
        digest = hashlib.sha256("+".join(corpora).encode()).hexdigest()[:8]
        name = f"pool-{len(corpora)}corpora-{digest}-{ncls}-{scheme}"
    return name


def teachers_dir(cfg: Config) -> Path:
    """The folder of the config's teacher set: <work>/teachers/<teacher_set(cfg)> (what `{teachers}` stands for)."""
    return Path(cfg.work) / "teachers" / teacher_set(cfg)


def teacher_dir(cfg: Config, fold: int) -> Path:
    """The speech teacher fitted on fold `fold`'s training speakers: <teachers_dir>/speech-fold<k>."""
    return teachers_dir(cfg) / f"speech-fold{fold}"


def faces_dir(cfg: Config) -> Path:
    """Face tracks of the unlabeled pool's videos, at cfg.face_size pixels."""
    return Path(cfg.work) / "faces" / f"pool-{cfg.face_size}"


def fill_path(template: str, key: str, **values) -> str:
    """`template` with its {placeholders} filled from `values`; "" stays "".

    Raises LiserError naming the config key for a placeholder not in `values`
    (a typo such as "{fodl}" must not become a path) or an unbalanced brace.
    """
    if not template:
        return ""
    try:
        return template.format(**values)
    except KeyError as e:
        raise LiserError(f"{key}: unknown placeholder {{{e.args[0]}}} in {template!r} "
                         f"(known: {', '.join('{' + k + '}' for k in values)})") from None
    except (ValueError, IndexError):
        raise LiserError(f"{key}: {template!r} is not a path template (braces must enclose a placeholder name)") from None


def speech_store(cfg: Config, fold: int | None = None) -> str:
    """The store of the config's (first) speech teacher for a fold (cfg.fold when None); "" when it names none.

    Placeholders: {fold} the fold, {teachers} the teacher set's folder
    (teachers_dir: the store then lives beside the teachers that wrote it, so
    a pooled and a single-corpus config cannot share one), {work} cfg.work.
    """
    return _first_store(cfg, "speech", fold)


def video_store(cfg: Config) -> str:
    """The store of the config's (first) video teacher ("" when it names none); one for every fold.

    The video teacher is pretrained and never sees the labeled corpora, so its store needs no {fold}.
    """
    return _first_store(cfg, "video", None)


def _first_store(cfg: Config, kind: str, fold: int | None) -> str:
    entry = next((e for e in cfg.teacher_entries() if e.kind == kind), None)
    return store_path(cfg, entry, fold) if entry is not None else ""


def store_path(cfg: Config, entry, fold: int | None = None) -> str:
    """The soft-label store of one teacher entry (liser.core.config.TeacherEntry) for a fold (cfg.fold when
    None); "" when it names none. Placeholders: a speech teacher's as speech_store's ({fold}, {teachers},
    {work}), a video teacher's as video_store's ({work})."""
    legacy = {"sd": "speech_store", "vd": "video_store"}
    key = legacy[entry.name] if not cfg.teachers and entry.name in legacy else f"teachers.{entry.name}.store"
    if entry.kind == "video":  # pretrained, never sees the labeled corpora: one store for every fold, only {work}
        return fill_path(entry.store, key, work=cfg.work)
    return fill_path(entry.store, key, fold=cfg.fold if fold is None else fold, teachers=str(teachers_dir(cfg)),
                     work=cfg.work)


def run_dir(cfg: Config) -> Path:
    """A student run: <out>/<name>/fold<k>."""
    return Path(cfg.out) / cfg.name / f"fold{cfg.fold}"


# ---------------------------------------------------------------- what a teacher was trained on
TRAINED_ON = "trained_on.json"  # in each fitted teacher's folder: the digest of its training items and its classes


def training_record(items, classes) -> dict:
    """What a teacher is trained on: {"ids_digest", "n_items", "classes"}.

    ids_digest: sha256 (16 hex) over the sorted "id<TAB>label" lines of the
    training items (labels after the class map, so remapping a label is a
    different teacher even when the ids are the same); classes in the head's order.
    """
    lines = sorted(f"{it.id}\t{it.label}" for it in items)
    digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]
    return {"ids_digest": digest, "n_items": len(lines), "classes": list(classes)}


def claim_teacher_dir(out: Path, record: dict, speakers=()) -> None:
    """Refuse a fitted teacher folder that was trained on other items or classes; else record `record` in it.

    A folder counts as fitted once it holds teacher.json or eval.json. Its
    trained_on.json must equal `record`; a folder fitted before these records
    existed is checked on what its teacher.json keeps (classes, and the
    speakers of its training record when present: `speakers` are those of
    the training items) and then given its trained_on.json. An unfitted
    folder is (re)claimed: nothing in it can be reused.

    Raises LiserError, one line naming the folder and what differs, instead
    of letting a fit or a label step reuse a teacher of another training set.
    """
    import json

    from liser.core.atomic import atomic_write_text

    out = Path(out)
    path = out / TRAINED_ON
    fitted = (out / "teacher.json").is_file() or (out / "eval.json").is_file()
    if fitted and path.is_file():
        old = json.loads(path.read_text())
        if old.get("classes") != record["classes"]:
            raise LiserError(f"{out}: this teacher was trained on classes {old.get('classes')}, the config asks for "
                             f"{record['classes']}; remove {out}, or use another `work` (and a `speech_store` under it)")
        if old.get("ids_digest") != record["ids_digest"]:
            raise LiserError(f"{out}: this teacher was trained on other items ({old.get('n_items')} files, digest "
                             f"{old.get('ids_digest')}) than the config's fold ({record['n_items']} files, digest "
                             f"{record['ids_digest']}); remove {out}, or use another `work` (and a `speech_store` under it)")
        return
    if fitted and (out / "teacher.json").is_file():  # fitted before trained_on.json: check what teacher.json keeps
        meta = json.loads((out / "teacher.json").read_text())
        if meta.get("classes") != record["classes"]:
            raise LiserError(f"{out}: this teacher was trained on classes {meta.get('classes')}, the config asks for "
                             f"{record['classes']}; remove {out}, or use another `work` (and a `speech_store` under it)")
        rec = meta.get("record") or {}
        if "train_speakers" in rec and speakers:
            had = set(rec["train_speakers"]) | set(rec.get("val_speakers", ()))
            if had != set(speakers):
                raise LiserError(f"{out}: this teacher was trained on {len(had)} other speakers than the config's fold "
                                 f"({len(set(speakers))}); remove {out}, or use another `work` (and a `speech_store` under it)")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")


# ---------------------------------------------------------------- manifests
def labeled_manifest(cfg: Config):
    """The prepared labeled manifest (prepared into <work>/manifests/<corpus> on first use);
    with cfg.labeled, the pool of those corpora (pooled_manifest).

    Raises LiserError when cfg.manifest names a directory that holds no manifest.
    """
    from liser.data.corpora import Manifest, prepare

    if cfg.labeled:
        return pooled_manifest(cfg)
    path = manifest_dir(cfg)
    if (path / "meta.json").is_file():
        return Manifest.load(path)
    if cfg.manifest:
        raise LiserError(f"{path}: no such manifest (run `liser prepare`)")
    m = prepare(cfg.corpus, cfg.root)
    m.save(path)
    return m


def labeled_specs(cfg: Config) -> list[tuple[str, str]]:
    """(adapter, root) of each labeled corpus: the `labeled` entries in order, else (corpus, root).

    Raises LiserError for an entry that is not "adapter:root" or an adapter named twice.
    """
    if not cfg.labeled:
        return [(cfg.corpus, cfg.root)]
    out = []
    for spec in cfg.labeled:
        adapter, sep, root = str(spec).partition(":")
        if not sep or not adapter or not root:
            raise LiserError(f"labeled: {spec!r} is not adapter:root (e.g. ravdess:../shared/data/ravdess)")
        out.append((adapter, root))
    names = [a for a, _ in out]
    if len(set(names)) < len(names):
        raise LiserError(f"labeled: a corpus is named twice in {names}")
    return out


def prepared(work: str | Path, adapter: str, root: str, progress: bool = True):
    """The manifest of one labeled "adapter:root", prepared once: <work>/manifests/<adapter> when it was
    prepared from the same root (a single-corpus config's), else <work>/manifests/labeled-<adapter>-<hash>."""
    import json

    from liser.data.corpora import Manifest, prepare

    absroot = str(Path(root).resolve())
    key = hashlib.sha256(absroot.encode()).hexdigest()[:8]
    own, mine = Path(work) / "manifests" / adapter, Path(work) / "manifests" / f"labeled-{adapter}-{key}"
    for d in (own, mine):
        if (d / "meta.json").is_file() and json.loads((d / "meta.json").read_text()).get("root") == absroot:
            return Manifest.load(d)
    m = prepare(adapter, root, progress=progress)
    m.save(mine)
    return m


def pooled_manifest(cfg: Config):
    """The corpora of cfg.labeled in one manifest, named by their adapters joined with "+".

    Item ids stay (they start with the corpus), paths become absolute and
    speakers become "<corpus>/<speaker>" (EmoDB's "03" is not RAVDESS's);
    `corpus` of each item still names its own corpus (the LOCO folds read it).
    """
    from liser.data.corpora import merge_manifests

    ms = [prepared(cfg.work, adapter, root) for adapter, root in labeled_specs(cfg)]
    pool = merge_manifests(ms, name="+".join(m.corpus for m in ms))
    pool.items = [type(it)(**{**it.__dict__, "speaker": f"{it.corpus}/{it.speaker}"}) for it in pool.items]
    return pool


def labeled_corpora(cfg: Config) -> list[str]:
    """Names of the corpora a config trains on (its labeled corpus, or each of `labeled`)."""
    return [adapter for adapter, _ in labeled_specs(cfg)]


def unlabeled_manifests(cfg: Config) -> list:
    """Each `unlabeled` entry, "adapter:root" or a manifest dir, prepared once under <work>/manifests.

    Labels of a prepared corpus are blanked: unlabeled data is unlabeled even
    when its adapter knows the emotions.
    """
    from liser.data.corpora import Manifest, prepare

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
    from liser.data.audio import VIDEO_SUFFIXES
    from liser.data.corpora import merge_manifests

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


def adapt_manifest(cfg: Config, fold: int, manifest=None):
    """The unlabeled half of the held-out corpus that fold `fold` adapts to (folds: loco-adapt; Fold.adapt):
    its items with their labels blanked and absolute paths, as one manifest; None when the fold adapts to none.

    The labels are dropped here, once, so that no later stage can read them (issue 24's adapted protocol).
    """
    from liser.data.corpora import Manifest, merge_manifests

    manifest = labeled_manifest(cfg) if manifest is None else manifest
    speakers = set(resolve_folds(cfg, manifest)[fold].adapt)
    if not speakers:
        return None
    items = [type(it)(**{**it.__dict__, "label": ""}) for it in manifest.items if it.speaker in speakers]
    return merge_manifests([Manifest(manifest.corpus, manifest.root, items)], name=f"adapt-fold{fold}")


def labeled_pool_manifest(cfg: Config, fold: int, manifest=None):
    """The fold's labeled training items with their labels blanked and absolute paths, as one manifest, when
    cfg.pool_labeled; else None. They join the pool, so the fold's teacher labels them (and their views, with
    teach_views) and the student distils on them as well as learning their labels (issue 24 section 1)."""
    from liser.data.corpora import Manifest, merge_manifests

    if not cfg.pool_labeled:
        return None
    manifest = labeled_manifest(cfg) if manifest is None else manifest
    train = fold_items(cfg.replace(fold=fold, label_fraction=1.0), manifest)[0]
    items = [type(it)(**{**it.__dict__, "label": ""}) for it in train]
    return merge_manifests([Manifest(manifest.corpus, manifest.root, items)], name=f"labeled-fold{fold}")


def fold_pool(cfg: Config, fold: int):
    """The unlabeled pool a fold's teacher labels and its student distils on: `unlabeled_pool(cfg)` plus, for
    folds: loco-adapt, the fold's unlabeled half of its held-out corpus (adapt_manifest), and with pool_labeled
    the fold's labeled training items (labeled_pool_manifest).

    Raises LiserError when there is none of them.
    """
    from liser.data.corpora import merge_manifests

    extras = [m for m in (adapt_manifest(cfg, fold), labeled_pool_manifest(cfg, fold)) if m is not None]
    if not extras:
        return unlabeled_pool(cfg)
    parts = ([unlabeled_pool(cfg)] if cfg.unlabeled else []) + extras
    return merge_manifests(parts) if len(parts) > 1 else parts[0]


# ---------------------------------------------------------------- folds
def resolve_folds(cfg: Config, manifest):
    """The one fold resolver: the fold file named by cfg.folds (a shipped name or a path), else the
    corpus's shipped file, else folds generated from the manifest's speakers with split_seed(cfg).

    A fold file the config names explicitly must exist (a typo such as
    `folds: ravdes` is an error, never a silent fallback to generated folds).
    The folds are checked against the manifest (no speaker leak, none unknown or left out).
    """
    from liser.data.folds import POOLED_SCHEMES, check_folds, corpus_folds, folds_for_manifest, load_folds

    if cfg.labeled and cfg.folds in POOLED_SCHEMES + ("",):  # several corpora: folds by corpus (default loco)
        speakers = {it.speaker: it.corpus for it in manifest.items}
        return corpus_folds(speakers, labeled_corpora(cfg), cfg.folds or "loco", seed=split_seed(cfg))
    if cfg.folds in POOLED_SCHEMES:
        raise LiserError(f"folds {cfg.folds!r} splits several corpora by corpus: it needs `labeled` (corpus:root, ...)")
    name = cfg.folds or manifest.corpus
    try:
        folds = load_folds(name)
    except LiserError:
        if cfg.folds:
            raise
        folds = folds_for_manifest(manifest, seed=split_seed(cfg))
    check_folds(folds, manifest, source=name)
    return folds


def split_seed(cfg: Config) -> int:
    """The seed of the speaker split liser draws: cfg.split_seed, or cfg.seed when that is None."""
    return cfg.seed if cfg.split_seed is None else cfg.split_seed


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
    items = mapped_items(cfg, manifest)
    present = manifest_classes(items)
    classes = list(cfg.classes) if cfg.classes else present
    unknown = set(classes) - set(present)
    if unknown:
        raise LiserError(f"classes: {sorted(unknown)} not in the {manifest.corpus} labels {present}")
    keep = [it for it in items if it.label in classes]
    train = [it for it in keep if it.speaker in set(fold.train)]
    val = [it for it in keep if it.speaker in set(fold.val)]
    test = [it for it in keep if it.speaker in set(fold.test)]
    if not 0 < cfg.label_fraction <= 1:
        raise LiserError(f"label_fraction must be in (0, 1], got {cfg.label_fraction}")
    if cfg.label_fraction < 1:
        train = stratified_fraction(train, cfg.label_fraction, cfg.seed)
    return train, val, test, classes


def mapped_items(cfg: Config, manifest) -> list:
    """The manifest's items with cfg.class_map applied to their labels ("" drops an item).

    Raises LiserError for a map whose source is no label of the manifest (a
    typo must not silently leave a class unmapped).
    """
    if not cfg.class_map:
        return list(manifest.items)
    labels = set(manifest.classes)
    for src in cfg.class_map:
        if src not in labels:
            raise LiserError(f"class_map: {src!r} is not a label of the {manifest.corpus} manifest {manifest.classes}")
    out = []
    for it in manifest.items:
        label = cfg.class_map.get(it.label, it.label) or ""
        if label:
            out.append(it if label == it.label else type(it)(**{**it.__dict__, "label": label}))
    return out


def class_mapped_manifest(cfg: Config, manifest, classes):
    """The manifest as the student sees it: labels through cfg.class_map, only items of `classes`.

    What a speech teacher is fitted and evaluated on, so its softmax is over
    the student's classes (RAVDESS's calm taught as neutral, surprised and
    boredom never taught). Same corpus name and root, so file paths and the
    feature caches stay those of `manifest`; without a class map and with
    every class it holds the same items.
    """
    import dataclasses

    keep = set(classes)
    return dataclasses.replace(manifest, items=[it for it in mapped_items(cfg, manifest) if it.label in keep])


def manifest_classes(items) -> list[str]:
    """Labels present in items, in the canonical order (liser.data.corpora.EMOTIONS; unknown names after, sorted)."""
    from liser.data.corpora import EMOTIONS

    present = {it.label for it in items if it.label}
    return [e for e in EMOTIONS if e in present] + sorted(present - set(EMOTIONS))


def stratified_fraction(items, fraction: float, seed: int):
    """A class-stratified subset holding `fraction` of each class (at least one file per class), sorted by id."""
    rng = random.Random(seed)
    out = []
    for label in sorted({it.label for it in items}):
        members = [it for it in items if it.label == label]
        rng.shuffle(members)
        out.extend(members[: max(1, round(fraction * len(members)))])
    return sorted(out, key=lambda it: it.id)
