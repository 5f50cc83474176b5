"""Configuration: every schema is a frozen dataclass with a comment per field, read by ONE loader.

Schemas: `Config` (a student run, below), `Grid` (an experiment grid, below)
and `liser.teachers.speech.teacher.SpeechTeacherConfig` (a speech teacher). All
three go through the same functions:

    load_dataclass(cls, path, overrides, extra)  YAML file, then `extra` (typed values), then overrides
    parse_overrides(["a=1", "b=x"])              `--set` / `--teacher-set` pairs -> {key: YAML value}
    from_dict(cls, d, source)                    unknown keys and wrong types -> LiserError naming the key

Unknown keys are an error that names the key (a typo must not silently
fall back to a default); a value of the wrong type is an error naming the
key and the value, raised when the config is read, not when it is used.

Environment variables (documented in the README as well):
    LISER_MODELS  folder of the shared models (fer2013-xception/, face-detection/, whisper-base-encoder/)
    LISER_YUNET   the YuNet face-detector .onnx file (default: $LISER_MODELS/face-detection/...)
    LISER_CACHE   cache root of the speech teacher's frozen features (default ~/.cache/liser)
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from liser.core.device import PRECISIONS
from liser.core.errors import LiserError


# settings with a fixed set of values (checked before a run starts)
CHOICES = {"schedule": ("joint", "two-stage"), "distill_loss": ("mae", "ce"),
           "weighting": ("none", "confidence", "entropy"), "lr_schedule": ("constant", "cosine"),
           "precision": PRECISIONS, "windowing": ("pad", "speech"), "input_band": ("full", "phone"),
           "level_band": ("full", "phone"),
           "target_prior": ("teacher", "uniform"), "pool_crops": ("any", "speech")}


@dataclass(frozen=True)
class Config:
    """A student run: its data, folds, optimisation and distillation settings (configs/*.yaml)."""

    # ---- what and where ----
    name: str = "no-dstl"  # configuration name (Table 2/3 row); also the run folder's name
    corpus: str = "ravdess"  # labeled corpus adapter (see `liser prepare --help`)
    root: str = "../shared/data/ravdess"  # labeled corpus root (prepared on first use)
    manifest: str = ""  # prepared manifest directory; "" = <work>/manifests/<corpus>
    folds: str = ""  # fold file: a shipped name (ravdess, emodb), a path, "" = the corpus name, or with
    #   `labeled`: loco (fold k tests on the k-th corpus) | pooled (one fold, test speakers of every corpus) |
    #   loco-adapt (loco, but half of the k-th corpus's speakers join the unlabeled pool, unlabeled, and the other
    #   half is the test: how much distillation on a domain's unlabeled audio buys; liser.data.folds)
    fold: int = 0  # which fold to train (0-based)
    work: str = "work"  # cache root: manifests, features, stores
    out: str = "runs"  # where run directories go: <out>/<name>/fold<k>
    classes: tuple = ()  # class names to keep, in order; () = every label of the corpus
    labeled: tuple = ()  # several labeled corpora as "adapter:root", pooled into one set (speakers become
    #   "<corpus>/<speaker>"; the pool is named by its adapters joined with "+"); () = `corpus` and `root`
    class_map: dict = dataclasses.field(default_factory=dict)  # corpus label -> class, applied before
    #   `classes` keeps its classes ({calm: neutral}; "" drops a label); {} = labels as the corpora name them
    label_fraction: float = 1.0  # fraction of the labeled training files used (stratified by class; Fig. 2)
    # ---- optimisation (SPEC "Protocol") ----
    seed: int = 0  # seeds python, numpy and torch; same seed, machine and thread count = the same run
    split_seed: int | None = None  # seeds the speaker split where liser draws one (folds pooled, loco-adapt, or
    #   generated folds); None = `seed`, so a run's seed can change without changing its test speakers
    epochs: int = 50  # at most this many epochs; the best validation-UAR epoch is kept
    min_steps: int = 0  # at least this many labeled optimiser steps: on a small training set `epochs` rises to
    #   what gives them (liser.student.train.epochs_for), so a fold that holds a large corpus out is not under-trained; 0 = off
    batch_size: int = 25  # labeled items per mini-batch
    lr: float = 1e-4  # AdamW learning rate
    weight_decay: float = 0.01  # AdamW weight decay (PyTorch's default)
    patience: int = 0  # stop after this many epochs without a better validation UAR; 0 = never
    val_stride_s: float = 0.5  # sliding-window stride for the per-epoch validation (coarser = faster)
    test_stride_s: float = 0.1  # sliding-window stride for the final test evaluation (the paper's)
    threads: int = 0  # torch threads; 0 = all cores
    precision: str = "fp32"  # student training step: fp32 | bf16 (autocast forward + loss; other weights, deterministic)
    # ---- distillation (SPEC "Losses"); all zero = no-dstl ----
    unlabeled: tuple = ()  # unlabeled corpora as "adapter:root" (or prepared manifest dirs)
    speech_store: str = ""  # speech-teacher soft-label store ("" = none); placeholders: {fold} the fold,
    #   {teachers} the teacher set's folder (<work>/teachers/<corpus or pool-...>: the store beside its teachers),
    #   {work} the `work` folder
    video_store: str = ""  # video-teacher soft-label store ("" = none); {work} = the `work` folder
    speech_teacher: str = ""  # YAML of the speech teacher's settings (SpeechTeacherConfig); "" = HuBERT-base, frozen
    video_teacher: str = "fer2013-big"  # video teacher: fer2013-big | fer2013-mini | a .hdf5 / .onnx path | s2d:<path>
    face_size: int = 112  # aligned face crop size for the video teacher's face cache
    lambda_sd: float = 0.0  # weight of the speech-distillation loss
    lambda_vd: float = 0.0  # weight of the video-distillation loss
    unlabeled_batch: int = 25  # unlabeled items per mini-batch (N_u)
    weighting: str = "none"  # per-item weight of distillation terms: none | confidence (eq. 5) | entropy
    temperature_sd: float = 1.0  # temperature applied to the speech teacher before weighting (calibration);
    #   0 = the fold's teacher's own, fitted on its validation speakers (eval.json of `liser teacher fit`)
    temperature_vd: float = 1.0  # temperature applied to the video teacher before weighting
    teachers: tuple = ()  # named teachers, each {name, kind, store, weight, temperature} (TeacherEntry); the student
    #   grows a head g_<name> per entry and the loss sums their terms. () = the paper's two, from the keys above:
    #   sd (kind speech: speech_store, lambda_sd, temperature_sd) and vd (kind video: video_store, lambda_vd, ...)
    distill_loss: str = "mae"  # mae (the paper's) | ce (Table 3 distill-ce)
    schedule: str = "joint"  # joint (the paper's) | two-stage (Table 3: distil first, then fine-tune)
    stage1_epochs: int = 25  # two-stage only: epochs of distillation before fine-tuning
    # ---- the `liser` recipe (configs/liser-*.yaml); these defaults are the paper's recipe ----
    level_norm: bool = False  # student subtracts each window's mean log-Mel level: labels ignore recording level
    channel_norm: bool = False  # student subtracts each window's mean per Mel band (CMN; replaces level_norm's
    #   centring): labels ignore a fixed channel colouring too; an option to measure (grid-ravdess-field.yaml)
    input_band: str = "full"  # Mel bands the student reads: full (the paper's) | phone (only those inside the
    #   telephone band, 300-3400 Hz; the others read as their training mean, in training and in every export), so
    #   a call and the clean recording look alike to it; an option to measure (grid-default-model-band-input.yaml)
    level_band: str = "full"  # with level_norm, the bands whose mean is the window's level: full (all it reads) |
    #   phone (those inside 300-3400 Hz), so a channel that cuts the bands outside the phone band moves no band it
    #   keeps; an option to measure (configs/grid-default-model-level-band.yaml)
    input_range_db: float = 0.0  # student raises every log-Mel cell of a window to at least its loudest cell minus
    #   this many dB (a dynamic range, as Whisper's 80 dB clamp), in training and in every export: what lies further
    #   below the speech (a recorder's hiss, room tone, what a codec drops) cannot change a label; 0 = off (the
    #   paper's); an option to measure (configs/grid-default-model-range.yaml)
    aug_gain_db: float = 0.0  # random level change per training crop, +- this many dB; 0 = off
    aug_noise_p: float = 0.0  # share of training crops that get noise at 10..30 dB SNR; 0 = off
    aug_freq_masks: int = 0  # SpecAugment frequency masks (<= 8 Mel bands each) per training crop; 0 = off
    aug_time_masks: int = 0  # SpecAugment time masks (<= 10 frames each) per training crop; 0 = off
    lr_schedule: str = "constant"  # constant (the paper's) | cosine (decays to 0 at `epochs`, after the warm-up)
    warmup_epochs: float = 0.0  # learning rate rises linearly from 0 over this many epochs; 0 = off
    windowing: str = "pad"  # pad (the paper's: the file zero-padded to 3 s, 3 s windows over all of it) | speech
    #   (windows of the file's speech span, 0.5-3 s crops in training; liser.data.windowing)
    aug_views: int = 0  # waveform views per labeled training item (codecs, phone band, speed, reverb, noise, room
    #   tone; liser.data.augment_audio), computed once into features caches; a step draws the clean item or a view; 0 = off
    aug_noise_dir: str = ""  # folder of recordings whose non-speech parts are the views' background noise; "" = pink
    aug_floor_p: float = 0.0  # share of views with a recorder's noise floor under the whole recording (white to
    #   pink, -80..-50 dBFS; liser.data.augment_audio.recorder_floor); 0 = off (views as before, bit for bit)
    views_seed: int | None = None  # seeds the views (aug_views, teach_views) instead of `seed`; None = `seed`, so a
    #   run's training seed can change while it reads the same views and the same teacher stores (grid-distill-seeds)
    pool_labeled: bool = False  # distilling: the fold's labeled training items also join the pool (labels blanked),
    #   so the teacher labels them and the student distils on them too; with teach_views, on their views as well
    teach_views: int = 0  # distilling: the speech teachers' soft labels on this many waveform views of each pool
    #   item, in their stores (the views' chain without speed or room tone, so pieces keep their place;
    #   liser.data.views.teaching_views); a step draws per pool item its clean audio or one view, with the
    #   teacher's labels for that view (issue 24 section 1); 0 = the clean audio's labels only (the paper's)
    piece_targets: bool = False  # distilling: each own-head teacher's head also reads every LSTM step and learns the
    #   teacher's 0.5 s piece under that step (the utterance label still from the last step: g_sup), so the student
    #   follows changes inside a window (the paper's open question 2; liser.student.losses.step_term); False = the
    #   window's mean of the pieces only (the paper's)
    target_context_s: float = 0.0  # distilling: each pool crop's target is the teacher's mean over at least this many
    #   seconds of its recording around the crop (centred, inside the recording), so a crop of a short utterance
    #   learns the teacher's answer for the whole utterance, as a labeled crop learns its file's label, and a crop of
    #   a long recording its neighbourhood's; 0 = the pieces inside the crop only (the paper's)
    target_prior: str = "teacher"  # distilling: the class prior of the speech teachers' soft labels on each pool
    #   source (an unlabeled corpus, or the held-out half of loco-adapt): teacher (as given; the paper's) | uniform
    #   (distribution alignment, ReMixMatch (Berthelot et al. 2020): each source's labels are divided by their mean
    #   over the source's files and renormalised, pulling them towards an equal share of each class where the
    #   teacher's prior drifted on a new domain); video teachers' labels, and piece_targets' per-step pieces, stay as given
    pool_crops: str = "any"  # distilling: where a pool item's training crops lie: any (anywhere in the recording;
    #   the paper's) | speech (inside its speech span, as the "speech" windowing crops labeled items, under either
    #   windowing: a short crop is then speech, not the silence before or after it)
    crop_full_p: float = 0.0  # "speech" windowing: share of training batches cropped at the longest length (3 s,
    #   capped by the batch's recordings): each item's whole span with context, as inference scores it; 0 = every
    #   batch's length uniform in 0.5-3 s
    aug_band_p: float = 0.0  # share of training crops band-limited like a phone line in the log-Mel domain
    #   (liser.data.augment.band_limit); with aug_consistency only the view crops, so the clean crop teaches them; 0 = off
    aug_eq_db: float = 0.0  # a random smooth equaliser on training crops (liser.data.augment.equalise): a gain
    #   curve through 5 knots over the Mel bands, each uniform in +- this/2 dB; with aug_consistency only the view
    #   crops, so the clean crop teaches them; 0 = off; an option to measure (configs/grid-default-model-eq.yaml)
    aug_consistency: float = 0.0  # with aug_views: each step takes every item clean and as one view, cropped alike,
    #   and adds this weight x KL(clean || view) to the loss, the clean prediction (no gradient) teaching the view's;
    #   0 = off (a step draws the clean item or a view)
    ema_decay: float = 0.0  # the weights validated, kept (best.pt) and exported are an exponential moving average of
    #   the trained ones, updated after every step with this decay (Polyak averaging; weight averaging for domain
    #   generalisation, SWAD, Cha et al. 2021): the epoch choice reads a smoothed student, not one step's; 0 = off
    # ---- where it runs (not part of what the run is: a run resumes on another device) ----
    device: str = "auto"  # auto (CUDA when torch sees a GPU) | cpu | cuda | cuda:N

    # ------------------------------------------------------------------
    def check_choices(self) -> None:
        """LiserError naming the key when a setting with a fixed set of values holds another."""
        for key, allowed in CHOICES.items():
            if getattr(self, key) not in allowed:
                names = f"{', '.join(allowed[:-1])} or {allowed[-1]}"
                raise LiserError(f"{key} must be {names}, got {getattr(self, key)!r}")
        self.teacher_entries()  # each entry's keys and kind
        if not 0.0 <= self.aug_floor_p <= 1.0 or (self.aug_floor_p and not self.aug_views):
            raise LiserError(f"aug_floor_p must be a share of the views in 0..1 (with aug_views > 0), "
                             f"got {self.aug_floor_p:g} with aug_views {self.aug_views}")
        if self.piece_targets and not any(e.head != "sup" for e in self.distilling()):
            raise LiserError("piece_targets needs a teacher to distil from through its own head "
                             "(lambda_sd or lambda_vd > 0, or a `teachers` entry without head: sup)")
        if self.min_steps < 0:
            raise LiserError(f"min_steps must be 0 (off) or more steps, got {self.min_steps}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise LiserError(f"ema_decay must be in 0..1 (0 = off; e.g. 0.999), got {self.ema_decay:g}")
        if self.target_context_s < 0:
            raise LiserError(f"target_context_s must be 0 (off) or more seconds, got {self.target_context_s:g}")
        if self.teach_views < 0:
            raise LiserError(f"teach_views must be 0 or more views, got {self.teach_views}")
        if self.aug_consistency and not self.aug_views:
            raise LiserError(f"aug_consistency {self.aug_consistency:g} needs views to be consistent across "
                             f"(aug_views > 0)")

    def teacher_entries(self) -> tuple["TeacherEntry", ...]:
        """The teachers this config names, in head order: `teachers`, or the paper's sd and vd from the legacy keys.

        Raises LiserError naming the entry for an unknown key or kind, a missing name, or a repeated name.
        """
        if not self.teachers:
            return (TeacherEntry("sd", "speech", self.speech_store, self.lambda_sd, self.temperature_sd),
                    TeacherEntry("vd", "video", self.video_store, self.lambda_vd, self.temperature_vd))
        entries = tuple(from_dict(TeacherEntry, dict(e) if isinstance(e, dict) else {"?": e}, f"teachers[{i}]")
                        for i, e in enumerate(self.teachers))
        names = [e.name for e in entries]
        for i, e in enumerate(entries):
            if e.kind not in TEACHER_KINDS or not e.name.isidentifier() or names.count(e.name) > 1 \
                    or e.name == "sup" or e.head not in ("own", "sup"):
                raise LiserError(f"teachers[{i}]: needs a unique name (an identifier other than sup; got {e.name!r}), "
                                 f"a kind in {', '.join(TEACHER_KINDS)} (got {e.kind!r}) and a head own or sup "
                                 f"(got {e.head!r})")
        return entries

    def distilling(self) -> tuple["TeacherEntry", ...]:
        """The entries that give a loss term: a store and a weight > 0."""
        return tuple(e for e in self.teacher_entries() if e.weight > 0 and e.store)

    def distils(self) -> bool:
        """Whether any teacher has a weight > 0: a distillation row of a grid (its pool is built and reported)."""
        return any(e.weight > 0 for e in self.teacher_entries())

    def replace(self, **kw) -> "Config":
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "Config":
        return from_dict(cls, d, source)

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: list[str] | tuple = (), extra: dict | None = None) -> "Config":
        """YAML file (or None for the defaults), then `extra` (typed values), then `key=value` overrides in order."""
        return load_dataclass(cls, path, overrides, extra)

    def save(self, path: str | Path) -> None:
        import yaml

        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    def digest(self) -> str:
        import hashlib

        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


TEACHER_KINDS = ("speech", "video")  # speech: targets over the labeled classes; video: over the teacher's own


@dataclass(frozen=True)
class TeacherEntry:
    """One teacher the student distils from (SPEC "Teachers" and eq. 4: one head and one loss term each)."""

    name: str = ""  # the student's head is g_<name>; the paper's two are sd (speech) and vd (video)
    kind: str = "speech"  # speech (its classes are the labeled ones) | video (its own, e.g. the 7 FER classes)
    store: str = ""  # its soft-label store: a path or a template ({fold}, {teachers}, {work}; liser.data.workspace)
    weight: float = 0.0  # lambda of its term in the joint loss; 0 = the head exists but gets no loss
    temperature: float = 1.0  # applied before its confidence weights, not its targets; 0 = the fold's speech
    #   teacher's own, fitted on its validation speakers (speech kind only)
    head: str = "own"  # own: its own head g_<name> (the paper's) | sup: the supervised head g_sup, the teacher's
    #   classes matched to the labeled ones by name (fear = fearful), the others dropped and the target renormalised


def stale_keys(cfg: "Config", ledger_dir: Path) -> list[str]:
    """Config keys in which a run's (or a ledger entry's) config.yaml differs from `cfg` (threads and device ignored:
    they change how a run is computed, not what); [] when equal. A missing config.yaml differs in everything."""
    if not (ledger_dir / "config.yaml").is_file():
        return ["config.yaml missing"]
    old = Config.load(ledger_dir / "config.yaml").replace(threads=cfg.threads, device=cfg.device)
    new = cfg.to_dict()
    return [k for k, v in old.to_dict().items() if new.get(k) != v]


# ---------------------------------------------------------------- an experiment grid
@dataclass(frozen=True)
class Grid:
    """An experiment grid (`liser experiment GRID`): configurations x searched values x fractions x folds."""

    base: str = ""  # the base run config (a path; relative to the grid file, else to the working directory); "" = defaults
    runs: dict = dataclasses.field(default_factory=dict)  # row name: {config key: value, or [values searched on validation]}
    folds: tuple | None = None  # folds to run; None = every fold of the base config's fold file
    fractions: tuple = (1.0,)  # label fractions (Fig. 2) for the rows named in fraction_runs
    fraction_runs: tuple = ()  # rows that sweep `fractions`; the others use every labeled file
    seeds: tuple = ()  # seeds every run of the rows in seed_runs is repeated with; a fold's figure is their mean
    seed_runs: tuple = ()  # rows repeated over `seeds` (the row's own seed keeps its run name); the others run once
    jobs: int = 1  # runs trained in parallel processes
    out: str = ""  # where the runs, grid.json and report.md go; "" = the base config's `out`
    set: dict = dataclasses.field(default_factory=dict)  # base-config keys overridden, values keep their YAML types
    ledger: str = ""  # a git-tracked folder keeping each finished run's config, metrics and epoch log (liser.experiments.ledger), so the grid resumes and collects on a fresh clone; "" = none


# ---------------------------------------------------------------- the one loader
def parse_overrides(pairs, flag: str = "--set") -> dict:
    """`key=value` strings -> {key: value parsed as YAML} in order (a later key wins); "" stays "".

    `--set a=1 b=2` and `--set a=1 --set b=2` both arrive here as ["a=1", "b=2"].
    Raises LiserError naming the flag and the pair when a pair has no "=".
    """
    import yaml

    out: dict[str, Any] = {}
    for ov in pairs or ():
        if "=" not in ov:
            raise LiserError(f"{flag} {ov!r}: expected key=value")
        k, v = ov.split("=", 1)
        try:
            out[k.strip()] = yaml.safe_load(v) if v.strip() else ""
        except yaml.YAMLError:
            out[k.strip()] = v  # not YAML (e.g. an unbalanced bracket): the text itself
    return out


def read_yaml(path: str | Path, what: str = "config") -> dict:
    """A YAML mapping from a file ({} for an empty file); LiserError naming the file otherwise."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise LiserError(f"{path}: no such {what} file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise LiserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise LiserError(f"{path}: a {what} must be a mapping of key: value")
    return data


def from_dict(cls, d: dict, source: str = "config"):
    """An instance of the dataclass `cls` from a mapping, each value checked against its field's type."""
    known = {f.name: f for f in fields(cls)}
    kw = {}
    for k, v in d.items():
        if k not in known:
            raise LiserError(f"{source}: unknown {_schema_name(cls)} key {k!r}{_key_hint(k, known)}")
        kw[k] = _coerce(known[k], v, source)
    return cls(**kw)


def _key_hint(key: str, known) -> str:
    """What an unknown key was probably meant to be: the closest known key, or where `base` belongs."""
    import difflib

    if key == "base":
        return " (base: is a grid file's key, configs/grid-*.yaml; a run config lists all its keys)"
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def load_dataclass(cls, path: str | Path | None = None, overrides=(), extra: dict | None = None,
                   flag: str = "--set"):
    """`cls` from a YAML file (None = the defaults), then `extra` (already typed), then `key=value` overrides."""
    data: dict[str, Any] = dict(read_yaml(path, _schema_name(cls))) if path else {}
    data.update(extra or {})
    ov = parse_overrides(overrides, flag)
    data.update(ov)
    source = str(path) if path else flag
    if ov and path:
        source = f"{path} (with {flag})"
    return from_dict(cls, data, source)


def _schema_name(cls) -> str:
    return {"Config": "config", "Grid": "grid", "SpeechTeacherConfig": "speech-teacher"}.get(cls.__name__, cls.__name__)


def _coerce(f: dataclasses.Field, v: Any, source: str) -> Any:
    """`v` as the field's type: int, float, str, bool, tuple, dict, each optionally `| None`."""
    t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    optional = t.replace(" ", "").endswith("|None")
    base = t.split("|")[0].strip()
    if v is None and optional:
        return None
    try:
        if base == "tuple":
            if v is None or v == "":
                return ()
            return tuple(v) if isinstance(v, (list, tuple)) else tuple(x.strip() for x in str(v).split(",") if x.strip())
        if base == "int":
            if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()) or isinstance(v, (list, dict)):
                raise ValueError
            return int(v)
        if base == "float":
            if isinstance(v, bool) or isinstance(v, (list, dict)):
                raise ValueError
            return float(v)
        if base == "str":
            if isinstance(v, (list, dict)):
                raise ValueError
            return "" if v is None else str(v)
        if base == "bool":
            if not isinstance(v, bool):
                raise ValueError
            return v
        if base == "dict":
            if v is None:
                return {}
            if not isinstance(v, dict):
                raise ValueError
            return dict(v)
    except (TypeError, ValueError):
        raise LiserError(f"{source}: {f.name} must be {t}, got {v!r}") from None
    return v
