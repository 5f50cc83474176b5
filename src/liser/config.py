"""Run configuration: one frozen dataclass, loadable from YAML, overridable with `--set key=value`.

Every field has a comment saying what it is. Unknown keys are an error that
names the key (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .errors import LiserError


@dataclass(frozen=True)
class Config:
    # ---- what and where ----
    name: str = "no-dstl"  # configuration name (Table 2/3 row); also the run folder's name
    corpus: str = "ravdess"  # labeled corpus adapter (see `liser prepare --help`)
    root: str = "../shared/data/ravdess"  # labeled corpus root (prepared on first use)
    manifest: str = ""  # prepared manifest directory; "" = <work>/manifests/<corpus>
    folds: str = ""  # fold file: a shipped name (ravdess, emodb), a path, or "" = the corpus name
    fold: int = 0  # which fold to train (0-based)
    work: str = "work"  # cache root: manifests, features, stores
    out: str = "runs"  # where run directories go: <out>/<name>/fold<k>
    classes: tuple = ()  # class names to keep, in order; () = every label of the corpus
    label_fraction: float = 1.0  # fraction of the labeled training files used (stratified by class; Fig. 2)
    # ---- optimisation (SPEC "Protocol") ----
    seed: int = 0  # seeds python, numpy and torch; the run is deterministic on CPU for a seed
    epochs: int = 50  # at most this many epochs; the best validation-UAR epoch is kept
    batch_size: int = 25  # labeled items per mini-batch
    lr: float = 1e-4  # AdamW learning rate
    weight_decay: float = 0.01  # AdamW weight decay (PyTorch's default)
    patience: int = 0  # stop after this many epochs without a better validation UAR; 0 = never
    val_stride_s: float = 0.5  # sliding-window stride for the per-epoch validation (coarser = faster)
    test_stride_s: float = 0.1  # sliding-window stride for the final test evaluation (the paper's)
    threads: int = 0  # torch threads; 0 = all cores
    # ---- distillation (SPEC "Losses"); all zero = no-dstl ----
    unlabeled: tuple = ()  # unlabeled corpora as "adapter:root" (or prepared manifest dirs)
    speech_store: str = ""  # speech-teacher soft-label store ("" = none, or "auto" per fold)
    video_store: str = ""  # video-teacher soft-label store ("" = none)
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
    distill_loss: str = "mae"  # mae (the paper's) | ce (Table 3 distill-ce)
    schedule: str = "joint"  # joint (the paper's) | two-stage (Table 3: distil first, then fine-tune)
    stage1_epochs: int = 25  # two-stage only: epochs of distillation before fine-tuning

    # ------------------------------------------------------------------
    def replace(self, **kw) -> "Config":
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "Config":
        known = {f.name: f for f in fields(cls)}
        kw = {}
        for k, v in d.items():
            if k not in known:
                raise LiserError(f"{source}: unknown config key {k!r}")
            kw[k] = _coerce(known[k], v, source)
        return cls(**kw)

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: list[str] | tuple = ()) -> "Config":
        """YAML file (or None for the defaults), then `key=value` overrides in order."""
        import yaml

        data: dict[str, Any] = {}
        if path:
            path = Path(path)
            if not path.is_file():
                raise LiserError(f"{path}: no such config file")
            try:
                data = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as e:
                raise LiserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
            if not isinstance(data, dict):
                raise LiserError(f"{path}: a config must be a mapping of key: value")
        for ov in overrides:
            if "=" not in ov:
                raise LiserError(f"--set {ov!r}: expected key=value")
            k, v = ov.split("=", 1)
            data[k.strip()] = yaml.safe_load(v) if v.strip() else ""
        return cls.from_dict(data, source=str(path) if path else "--set")

    def save(self, path: str | Path) -> None:
        import yaml

        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    def digest(self) -> str:
        import hashlib

        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


def _coerce(f: dataclasses.Field, v: Any, source: str) -> Any:
    t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if t == "tuple":
            if v is None or v == "":
                return ()
            return tuple(v) if isinstance(v, (list, tuple)) else tuple(x.strip() for x in str(v).split(",") if x.strip())
        if t == "int":
            if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
                raise ValueError
            return int(v)
        if t == "float":
            return float(v)
        if t == "str":
            return "" if v is None else str(v)
    except (TypeError, ValueError):
        raise LiserError(f"{source}: {f.name} must be {t}, got {v!r}") from None
    return v
