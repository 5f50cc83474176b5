"""bench/bench_oq3.py: open question 3's tables (paired by fold) and the two heads' gradient cosines."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import bench_oq3 as bench  # noqa: E402

from conftest import fake_store, tess_pool  # noqa: E402
from liser.core.errors import LiserError  # noqa: E402

FER = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


def _metrics(uar, recall, ids=("a", "b")):
    # as metrics.json keeps them: recall by class name (liser.core.metrics)
    return {"test": {"uar": uar, "per_class_recall": dict(zip(["x", "y"], recall))}, "test_ids": list(ids),
            "classes": ["x", "y"]}


def test_tables_pair_the_rows_fold_by_fold(tmp_path):
    """Deltas are means of per-fold differences on the same files; rows tested on other files are refused."""
    base = tmp_path / "base"
    for k, u in enumerate((0.40, 0.50)):
        (base / f"fold{k}").mkdir(parents=True)
        (base / f"fold{k}" / "metrics.json").write_text(json.dumps(_metrics(u, [u, u])))
    runs = {"vid-dstl": {0: (None, _metrics(0.42, [0.5, 0.34])), 1: (None, _metrics(0.46, [0.5, 0.42]))},
            "vid-dstl-sup": {0: (None, _metrics(0.45, [0.6, 0.3])), 1: (None, _metrics(0.49, [0.5, 0.48]))}}
    table = bench.uar_table(runs, base)
    s = bench.summary(table, ["x", "y"])
    assert s["folds"] == 2 and s["vid_dstl_minus_no_dstl_points"] == pytest.approx(-1.0)
    assert s["sup_minus_vid_dstl_points"] == pytest.approx(3.0) and s["sup_better_folds"] == 2
    assert s["recall_mean"]["vid-dstl-sup"]["x"] == pytest.approx(0.55)
    runs["vid-dstl-sup"][1] = (None, _metrics(0.49, [0.5, 0.48], ids=("a", "c")))
    with pytest.raises(LiserError, match="different files"):
        bench.uar_table(runs, base)


@pytest.fixture(scope="module")
def video_run(small_config, small_ravdess, tmp_path_factory):
    """A student trained one epoch with a 7-class video-like teacher (random soft labels) on 6 real TESS files."""
    from liser.student import train as tr

    base = tmp_path_factory.mktemp("oq3")
    m, manifest_dir = tess_pool(base, small_ravdess.work)
    fake_store(base / "store", m.items, FER, np.random.default_rng(0))
    cfg = small_config.replace(unlabeled=(str(manifest_dir),), batch_size=48, unlabeled_batch=12,
                               epochs=1, teachers=({"name": "vd", "kind": "video", "store": str(base / "store"),
                                                    "weight": 1.0},))
    return cfg, tr.train(cfg, run_dir=base / "run", progress=False)


def test_gradient_cosines_compare_every_labeled_class_with_every_teacher_class(video_run, monkeypatch):
    """One cosine per (labeled class, FER class) that peaks in enough pool crops, each in [-1, 1] and not all
    alike; classes that peak too rarely are null."""
    cfg, run = video_run
    monkeypatch.setattr(bench, "MIN_CROPS", 4)
    monkeypatch.setattr(bench, "CROPS_PER_CLASS", 8)
    res = bench.gradient_cosines(cfg, run)
    cos = np.array([[np.nan if v is None else v for v in row] for row in res["cosine"]])
    assert cos.shape == (len(res["labeled_classes"]), 7) and res["teacher_classes"] == FER
    measured = cos[~np.isnan(cos)]
    assert measured.size >= len(res["labeled_classes"]) and np.all(np.abs(measured) <= 1 + 1e-6)
    assert measured.std() > 1e-3
    for j, n in enumerate(res["pool_crops_per_teacher_class"]):
        assert np.isnan(cos[:, j]).all() == (n < 4)
