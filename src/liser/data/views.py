"""Augmented views of a labeled corpus: K seeded field-condition copies of every item, as features caches.

View v of item i is `liser.data.augment_audio.augment_view` of its waveform with
a Generator seeded by (seed, v, crc32(id)), turned into log-Mel frames by the
one front end and stored like the clean features (liser.data.features, keyed by
the manifest, the front end, VIEWS_VERSION, the seed, the view and the noise
bank). Computed once, so a training step costs what it did; a training step
draws, per item, the clean features or one view (liser.student.train).

The background noise of the views is, when a folder is given, the
non-speech audio of its recordings (silero-vad, liser.data.vad): real rooms,
streets and crowds, not synthetic noise (`noise_bank`).
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VIEWS_VERSION = 1  # bump when augment_view changes what a view holds: older caches are then not reused
NOISE_BANK_MAX_S = 1800.0  # at most this much non-speech audio is kept in a noise bank
NOISE_MIN_STRETCH_S = 0.5  # non-speech stretches shorter than this (gaps between words) are not noise


def view_rng(seed: int, view: int, item_id: str) -> np.random.Generator:
    """The Generator of one view of one item: the same (seed, view, id) always give the same view."""
    return np.random.default_rng([seed, view, zlib.crc32(item_id.encode())])


@dataclass(frozen=True)
class ViewSpec:
    """Which views: K seeded augment_view chains of every item, the same for the student's features and a
    teacher's soft labels (teach_views)."""

    k: int  # views 1..k of each item (0 = the clean recording, not a view)
    seed: int = 0  # with the view number and the item id, seeds each view's chain (view_rng)
    noise_dir: str = ""  # recordings whose non-speech audio is the background noise (noise_bank); "" = pink
    floor_p: float = 0.0  # share of views with a recorder's noise floor (aug_floor_p)
    timing: bool = True  # False: no speed change or room tone around the speech, so a view keeps its item's
    #   length and 0.5 s pieces (what a teacher labels per piece needs)

    def tag(self, noise: np.ndarray | None) -> str:
        """The part of a cache's or store's key that names these views (with the noise bank's digest)."""
        return (f"-views{VIEWS_VERSION}-s{self.seed}" + (f"-n{_digest(noise)}" if noise is not None else "")
                + (f"-f{self.floor_p:g}" if self.floor_p else "") + ("" if self.timing else "-t0"))

    def noise(self, work: str | Path) -> np.ndarray | None:
        """The noise bank of noise_dir (built once into <work>/noise), None for pink noise."""
        return noise_bank(self.noise_dir, work) if self.noise_dir else None

    def wave(self, x: np.ndarray, view: int, item_id: str, noise: np.ndarray | None) -> np.ndarray:
        """View `view` (1..k) of an item's 16 kHz waveform x [N] -> [M] (M = N when not timing)."""
        from liser.data.augment_audio import augment_view

        return augment_view(x, view_rng(self.seed, view, item_id), noise, self.floor_p, self.timing)


def build_views(manifest, work: str | Path, spec: ViewSpec, threads: int = 2, progress: bool = True) -> list:
    """The features caches of views 1..spec.k of a manifest (FeatureCache each; built once, then reused)."""
    from liser.data.audio import load_audio
    from liser.data.features import build_features
    from liser.data.frontend import features

    noise = spec.noise(work)
    tag = spec.tag(noise)
    caches = []
    for v in range(1, spec.k + 1):
        def featurize(path, item, v=v):
            return features(spec.wave(load_audio(path), v, item.id, noise))

        caches.append(build_features(manifest, work, threads, progress, featurize, f"{tag}-v{v}", f"view {v}/{spec.k}"))
    return caches


def noise_bank(folder: str | Path, work: str | Path) -> np.ndarray:
    """The non-speech audio of the recordings under `folder`, 16 kHz float32 [N], unit RMS, at most
    NOISE_BANK_MAX_S seconds; cached in <work>/noise/. Raises LiserError when it holds none."""
    from liser.core.errors import LiserError
    from liser.core.atomic import atomic_save_npy

    files = _audio_files(folder)
    key = hashlib.sha256("\n".join(f"{f}:{f.stat().st_size}" for f in files).encode()).hexdigest()[:12]
    path = Path(work) / "noise" / f"{Path(folder).name}-{key}.npy"
    if path.is_file():
        return np.load(path)
    parts, total = [], 0
    for f in files:
        if total >= NOISE_BANK_MAX_S * 16_000:
            break
        part = _non_speech(f)
        parts.append(part)
        total += len(part)
    if not total:
        raise LiserError(f"{folder}: no non-speech audio found for the noise bank")
    bank = np.concatenate(parts)[: int(NOISE_BANK_MAX_S * 16_000)]
    bank = (bank / max(float(np.sqrt(np.mean(bank.astype(np.float64) ** 2))), 1e-9)).astype(np.float32)
    atomic_save_npy(bank, path)
    return bank


def _audio_files(folder) -> list[Path]:
    """Every file under `folder` that liser's readers take (liser.data.audio.folder_files), sorted; the rest is ignored."""
    from liser.data.audio import folder_files

    return [p for p in folder_files(folder)[0] if p.is_file()]


def _non_speech(path: Path) -> np.ndarray:
    """The stretches of a file that silero-vad does not call speech, each at least NOISE_MIN_STRETCH_S long."""
    from liser.data.audio import load_audio
    from liser.core.errors import LiserError
    from liser.data.vad import speech_samples

    try:
        x = load_audio(path)
    except LiserError:
        return np.zeros(0, np.float32)
    quiet = ~speech_samples(x)
    edges = np.diff(np.concatenate([[0], quiet.astype(np.int8), [0]]))
    keep = [x[a:b] for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1))
            if b - a >= NOISE_MIN_STRETCH_S * 16_000]
    return np.concatenate(keep) if keep else np.zeros(0, np.float32)


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:8]


def views_seed(cfg) -> int:
    """The seed of a config's views: `views_seed`, else the run's `seed`."""
    return cfg.seed if cfg.views_seed is None else cfg.views_seed


def training_views(cfg) -> ViewSpec:
    """The views a config's labeled items train on (aug_views; liser.core.config.Config)."""
    return ViewSpec(cfg.aug_views, views_seed(cfg), cfg.aug_noise_dir, cfg.aug_floor_p)


def teaching_views(cfg) -> ViewSpec | None:
    """The views a config's pool is taught on (teach_views): the training views' chain without the steps that
    move speech in time, so a view's pieces are its item's; None when teach_views is 0."""
    return ViewSpec(cfg.teach_views, views_seed(cfg), cfg.aug_noise_dir, cfg.aug_floor_p, timing=False) if cfg.teach_views \
        else None
