"""Shared fixtures: the real data next to the repository, a small RAVDESS subset, a trained run.

Real corpora are read from `../shared/data` (see its README); tests that need
them skip with a clear message when it is absent. Everything heavy (the
subset manifest, its features cache, one 2-epoch training run) is built once
per session and reused, so the whole suite stays fast on a busy 2-core box.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# The small RAVDESS subset: 4 actors (2 male, 2 female), 3 files per emotion = 24 files each.
SMALL_ACTORS = ("Actor_01", "Actor_02", "Actor_03", "Actor_04")
FILES_PER_EMOTION = 3
# Its fold: 2 training actors, 1 validation actor, 1 test actor.
SMALL_FOLD = {"train": ["Actor_01", "Actor_02"], "val": ["Actor_03"], "test": ["Actor_04"]}


def load_bench(name: str):
    """A bench/ script (bench/<name>.py) imported as a module, so tests call its functions directly."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def int8_ties(pt, onnx, files, dp_max: float = 0.05) -> int:
    """Predict each real file with a checkpoint (`pt`) and the int8 ONNX exported from it; assert their
    probabilities are within int8 rounding (`dp_max`) and any label they disagree on is a near tie of fp32's
    top two (closer than twice that file's |dp|). Returns the number of such ties."""
    import numpy as np

    ties = 0
    for f in files:
        a, b = pt.predict_file(f), onnx.predict_file(f)
        pa, pb = np.array(list(a.probabilities.values())), np.array(list(b.probabilities.values()))
        dp, top2 = np.abs(pa - pb).max(), np.sort(pa)[-2:]
        assert dp <= dp_max, (Path(f).name, dp)
        if a.label != b.label:
            assert top2[1] - top2[0] <= 2 * dp, (Path(f).name, a.label, b.label, top2, dp)
            ties += 1
    return ties


def real_root(name: str) -> Path:
    """`../shared/data/<name>`, or skip the test when the real data is not there."""
    root = DATA / name
    if not root.is_dir():
        pytest.skip(f"real data not found at {root} (the tests read ../shared/data next to the repository)")
    return root


def ravdess_sample(per_actor: int):
    """A manifest of `per_actor` real RAVDESS files (every 12th, mixed emotions) from Actor_01..04; skips without data."""
    from liser.data.corpora import Manifest, prepare

    full = prepare("ravdess", real_root("ravdess"), progress=False)
    keep = []
    for actor in ("Actor_01", "Actor_02", "Actor_03", "Actor_04"):
        keep += [it for it in full.items if it.speaker == actor][::12][:per_actor]
    return Manifest(corpus=full.corpus, root=full.root, items=keep)


@pytest.fixture(scope="session")
def tiny_hubert(tmp_path_factory) -> str:
    """A random 2-layer HuBERT (hidden 32) saved as a local backbone folder."""
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    cfg = HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       conv_dim=(16, 16, 16), conv_stride=(5, 4, 4), conv_kernel=(10, 8, 4),
                       num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    d = tmp_path_factory.mktemp("tiny-hubert")
    HubertModel(cfg).save_pretrained(d)
    return str(d)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"real data not found at {DATA}")
    return DATA


@dataclass(frozen=True)
class SmallSet:
    root: Path  # corpus tree of symlinks to the real files
    manifest_dir: Path  # prepared manifest
    manifest: object  # liser.data.corpora.Manifest
    folds: Path  # fold file: 2 / 1 / 1 actors
    work: Path  # shared cache root (features are computed once per session)


def _link_subset(src: Path, dst: Path, actors=SMALL_ACTORS, per_emotion=FILES_PER_EMOTION) -> None:
    for actor in actors:
        files = sorted((src / actor).glob("*.flac"))
        by_emotion: dict[str, list[Path]] = {}
        for f in files:
            by_emotion.setdefault(f.stem.split("-")[2], []).append(f)
        (dst / actor).mkdir(parents=True)
        for emo in sorted(by_emotion):
            for f in by_emotion[emo][:per_emotion]:
                (dst / actor / f.name).symlink_to(f)


@pytest.fixture(scope="session")
def small_ravdess(tmp_path_factory) -> SmallSet:
    """A prepared manifest of 4 RAVDESS actors x 24 real files (all 8 emotions), and a 2/1/1 fold file."""
    from liser.data.corpora import prepare

    src = real_root("ravdess")
    base = tmp_path_factory.mktemp("small_ravdess")
    root = base / "corpus"
    _link_subset(src, root)
    m = prepare("ravdess", root, progress=False)
    manifest_dir = m.save(base / "manifest")
    folds = base / "folds.json"
    folds.write_text(json.dumps({"corpus": "ravdess", "k": 1, "seed": 0, "folds": [SMALL_FOLD]}))
    work = base / "work"
    work.mkdir()
    return SmallSet(root, manifest_dir, m, folds, work)


@pytest.fixture(scope="session")
def small_config(small_ravdess):
    """A fast configuration on the small set (2 epochs, 1 thread, coarse evaluation strides)."""
    from liser.core.config import Config

    return Config(name="small", manifest=str(small_ravdess.manifest_dir), folds=str(small_ravdess.folds),
                  fold=0, work=str(small_ravdess.work), out=str(small_ravdess.work / "runs"), epochs=2,
                  batch_size=25, threads=1, seed=0, val_stride_s=0.5, test_stride_s=0.5)


@pytest.fixture(scope="session")
def trained_run(small_config, tmp_path_factory) -> Path:
    """One finished 2-epoch run of `small_config` (shared by the train and CLI tests; do not modify)."""
    from liser.student.train import train

    return train(small_config, run_dir=tmp_path_factory.mktemp("trained") / "run", progress=False)


# ---------------------------------------------------------------- five small real corpora
# The default model's five labeled corpora (tests/test_default_model.py, tests/test_teachers_pooled.py).
CORPORA = ("ravdess", "cremad", "emodb", "tess", "urdu")
DEFAULT_CLASSES = ["neutral", "happy", "sad", "angry", "fearful", "disgust"]


def interrupt_at_second_validation(monkeypatch):
    """Make training raise KeyboardInterrupt (Ctrl-C) in its second validation (epoch 1's); returns a function
    that puts the real evaluate_items back, so the run can then be resumed."""
    import liser.student.evaluate as ev

    real, calls = ev.evaluate_items, []

    def interrupted(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(ev, "evaluate_items", interrupted)
    return lambda: monkeypatch.setattr(ev, "evaluate_items", real)


def tess_pool(base: Path, work, folders=("OAF_angry", "YAF_happy"), per_folder: int = 3):
    """An unlabeled pool of real TESS files (`per_folder` from each of `folders`, linked under `base`/tess), its
    labels blanked, its features built in `work`; (manifest, saved manifest dir). Skips without the data."""
    from dataclasses import replace

    from liser.data.corpora import prepare
    from liser.data.features import build_features

    src = real_root("tess")
    for folder in folders:
        (base / "tess" / folder).mkdir(parents=True)
        for f in sorted((src / folder).glob("*.opus"))[:per_folder]:
            (base / "tess" / folder / f.name).symlink_to(f)
    m = prepare("tess", base / "tess", progress=False)
    m.items = [replace(it, label="") for it in m.items]  # unlabeled: labels are ignored
    manifest_dir = m.save(base / "manifest")
    build_features(m, work, threads=1, progress=False)
    return m, manifest_dir


def fake_store(path, items, classes, rng, flush_every: int = 64, views: int = 0, views_key: str = "") -> Path:
    """A finished soft-label store at `path`: random (Dirichlet) probabilities for every 0.5 s piece of `items`,
    all valid, from a teacher named fake-speech (hash fakehash); with `views`, on that many views too."""
    import numpy as np

    from liser.teachers.store import StoreWriter, n_pieces

    w = StoreWriter(path, "fake-speech", list(classes), "fakehash", flush_every=flush_every, views=views,
                    views_key=views_key)
    for it in items:
        n = n_pieces(it.duration)
        on_views = rng.dirichlet(np.ones(len(classes)), size=(views, n)) if views else None
        w.add(it.id, rng.dirichlet(np.ones(len(classes)), size=n), np.ones(n, bool), it.duration, on_views)
    w.finalize([it.id for it in items])
    return Path(path)


def _real(name: str) -> Path:
    if not (DATA / name).is_dir():
        pytest.skip(f"real data not found at {DATA / name}")
    return DATA / name


def _link(files, src: Path, dst: Path) -> None:
    for f in files:
        out = dst / f.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.symlink_to(f)


def _first_per(files, key, n: int = 1) -> list[Path]:
    """The first n files of each key(file) group."""
    seen: dict = {}
    out = []
    for f in sorted(files):
        k = key(f)
        if seen.get(k, 0) < n:
            seen[k] = seen.get(k, 0) + 1
            out.append(f)
    return out


def link_five_corpora(dst: Path, n: int = 1) -> dict[str, Path]:
    """Trees of real files: n per (speaker, emotion); 3 speakers per corpus (TESS has 2). {corpus: root}."""
    roots = {}
    src = _real("ravdess")
    files = [f for a in ("Actor_01", "Actor_02", "Actor_03") for f in (src / a).glob("*.flac")]
    _link(_first_per(files, lambda f: (f.parent.name, f.stem.split("-")[2]), n), src, dst / "ravdess")
    src = _real("cremad")
    files = [f for a in ("1001", "1002", "1003") for f in (src / "AudioWAV").glob(f"{a}_*")]
    _link(_first_per(files, lambda f: f.stem.split("_")[0] + f.stem.split("_")[2], n), src, dst / "cremad")
    src = _real("emodb")
    files = [f for s in ("03", "08", "09") for f in (src / "wav").glob(f"{s}*")]
    _link(_first_per(files, lambda f: f.stem[:2] + f.stem[5], n), src, dst / "emodb")
    src = _real("tess")
    _link(_first_per(src.glob("*/*"), lambda f: f.parent.name, n), src, dst / "tess")
    src = _real("urdu")
    files = [f for f in src.glob("*/*") if f.stem.split("_")[0] in ("SM3", "SM5", "SM6")]  # together all 4 classes
    _link(_first_per(files, lambda f: f.stem.split("_")[0] + f.parent.name, n), src, dst / "urdu")
    for c in CORPORA:
        roots[c] = dst / c
    return roots
